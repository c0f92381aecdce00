"""Deflate the blocks of a Trivy DB archive while the DB file is still being written.

``GzipWriter`` (packaging.py) cuts the archive's tar stream into ``BLOCK``-byte blocks and
deflates each with the previous 32 KiB as its dictionary. The bbolt writer (bbolt.py) appends
pages strictly in order and rewrites only its first three pages when it closes, so every block
that lies past those pages is final as soon as the file has grown beyond it. A child process
(``python -m stella_build.rules.formats.trivy.gzip_ahead``) deflates those blocks on the other
core while this process merges and writes the DB (Python, one core), and hands back
``(block index, BLAKE3 of dictionary + block, deflated bytes)``. ``GzipWriter`` takes a block
from the child only when that digest equals the digest of the bytes it is about to compress, so
the archive is byte-identical whatever the child did, did not do, or got wrong: a missing or
mismatching block is simply compressed in this process.

Why a process: a thread here would wait for the GIL the Python writer holds after every
deflate call (measured: no gain, docs/engine.md). The child is started with the running
interpreter and no shell; a failure to start it, a crash or garbage on its pipe only cost time.

Record on the child's stdout: u64 block index, 32-byte BLAKE3, u32 length, deflated bytes.
"""
from __future__ import annotations

import os
import select
import struct
import subprocess
import sys
import threading
from pathlib import Path

import blake3
from zlib_ng import zlib_ng

BLOCK = 1 << 20  # GzipWriter.BLOCK
WINDOW = 32768  # GzipWriter._WINDOW: the dictionary of a block
_HEAD = struct.Struct("<Q32sI")
_POLL_S = 0.02  # how often the child looks at the file's size while nothing new is there


def deflate_block(level: int, block: bytes, zdict: bytes, final: bool) -> bytes:
    """One block of ``GzipWriter``'s DEFLATE stream: a raw deflate of ``block`` primed with
    ``zdict`` and ended by a sync flush (``Z_FINISH`` for the last block)."""
    args = (level, zlib_ng.DEFLATED, -15, 8, zlib_ng.Z_DEFAULT_STRATEGY)
    comp = zlib_ng.compressobj(*args, zdict=zdict) if zdict else zlib_ng.compressobj(*args)
    return comp.compress(block) + comp.flush(zlib_ng.Z_FINISH if final else zlib_ng.Z_SYNC_FLUSH)


def block_digest(zdict: bytes, block: bytes) -> bytes:
    h = blake3.blake3(zdict)
    h.update(block)
    return h.digest()


class GzipAhead:
    """The parent's side: a child deflating the blocks of ``path`` as the file grows.

    ``path``'s byte 0 is byte ``offset`` of the tar stream; its first ``rewritten`` bytes are
    written again before the file is complete, so no block touching them is deflated ahead."""

    def __init__(self, path: Path, offset: int, rewritten: int, level: int) -> None:
        self._blocks: dict[int, tuple[bytes, bytes]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self._proc = subprocess.Popen(
            [sys.executable, "-m", __name__, str(path), str(offset), str(rewritten), str(level)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True)
        self._reader = threading.Thread(target=self._read, name="gzip-ahead", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        out = self._proc.stdout
        try:
            while True:
                head = out.read(_HEAD.size)
                if len(head) < _HEAD.size:
                    return
                index, digest, length = _HEAD.unpack(head)
                if length > 2 * BLOCK + 1024:  # deflate never grows a block that much: not ours
                    return
                data = out.read(length)
                if len(data) < length:
                    return
                with self._lock:
                    self._blocks[index] = (digest, data)
        except (OSError, ValueError):
            return

    def stop(self, timeout: float = 30.0) -> None:
        """Tell the child to stop after its current block, and collect what it sent."""
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout)
        self._proc.stdout.close()

    def take(self, index: int, zdict: bytes, block: bytes) -> bytes | None:
        """The deflated bytes of block ``index`` if the child produced them from exactly
        ``zdict`` + ``block``; else None (the caller deflates it)."""
        with self._lock:
            got = self._blocks.pop(index, None)
        if got is None or got[0] != block_digest(zdict, block):
            return None
        self.hits += 1
        return got[1]


def start(path: Path, offset: int, rewritten: int, level: int) -> GzipAhead | None:
    """A running `GzipAhead`, or None when no child can be started (then nothing is ahead)."""
    try:
        return GzipAhead(path, offset, rewritten, level)
    except OSError:
        return None


def _stop_requested() -> bool:
    readable, _, _ = select.select([sys.stdin.buffer], [], [], 0)
    return bool(readable)  # the parent only ever closes stdin: readable means EOF


def _child(path: str, offset: int, rewritten: int, level: int) -> int:
    out = sys.stdout.buffer
    # the first block whose dictionary starts past the tar header and the rewritten pages
    index = -(-(offset + rewritten + WINDOW) // BLOCK)
    fd = None
    while not _stop_requested():
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                select.select([sys.stdin.buffer], [], [], _POLL_S)
                continue
        size = os.fstat(fd).st_size
        if (index + 1) * BLOCK > offset + size:
            select.select([sys.stdin.buffer], [], [], _POLL_S)
            continue
        start = index * BLOCK - WINDOW - offset
        buf = os.pread(fd, WINDOW + BLOCK, start)
        if len(buf) != WINDOW + BLOCK:
            continue
        zdict, block = buf[:WINDOW], buf[WINDOW:]
        data = deflate_block(level, block, zdict, False)
        out.write(_HEAD.pack(index, block_digest(zdict, block), len(data)) + data)
        out.flush()
        index += 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(_child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
    except (BrokenPipeError, KeyboardInterrupt):
        sys.exit(0)
