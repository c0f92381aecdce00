"""Deterministic archive encoders: PAX tar, gzip and zstd with pinned, bundled compressors.

- gzip: raw deflate from zlib-ng bundled in the `zlib-ng` wheel (never the host's libz, whose
  output differs between zlib and zlib-ng builds), wrapped in a header we write ourselves:
  mtime 0, no file name, XFL by level, OS byte 255.
- zstd: libzstd bundled in `zstandard`, in its multi-threaded mode with one worker per core (up to
  2): multi-threaded output does not depend on the worker count (single-threaded mode would
  differ), and a large body compresses its jobs in parallel.
- tar: PAX, entries sorted by path, mtime = SOURCE_DATE_EPOCH, uid/gid 0, empty owner names.

`library_versions()` is recorded in the action key and in provenance of every action using these.
"""
from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterable

from zlib_ng import zlib_ng
import zstandard

if TYPE_CHECKING:
    import tarfile

GZIP_OS_UNKNOWN = 255
# zstd's multi-threaded mode (nbWorkers >= 1) cuts the input into jobs whose size comes from the
# compression parameters, never from the number of workers, so its frame is byte-identical for any
# nbWorkers >= 1 (nbWorkers = 0, the single-threaded mode, writes other bytes; we never use it
# here). More workers only compress the jobs of a large body at once: a 61 MB findings file at
# level 19 takes 29 s with one worker and 15 s with two. tests/test_archive.py checks the bytes
# across worker counts; golden/ locks them.
# At most 2: each worker holds its own level-19 context (a 140 MiB body: 208 MiB RSS with one
# worker, 462 MiB with four), and a build already runs -j actions at once.


def _zstd_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux, or the call is refused: count the CPUs
        cores = os.cpu_count() or 1
    return max(1, min(2, cores))


_ZSTD_THREADS = _zstd_workers()


@dataclass(frozen=True)
class TarEntry:
    """One regular file in a tar: either in-memory `data` or a `source` file path."""

    path: str
    data: bytes | None = None
    mode: int = 0o644
    source: Path | None = None

    def size(self) -> int:
        return len(self.data) if self.data is not None else Path(self.source).stat().st_size


def library_versions() -> dict[str, str]:
    return {
        "zlib-ng": zlib_ng.ZLIBNG_VERSION,
        "zstd": ".".join(map(str, zstandard.ZSTD_VERSION)),
        "zstandard": zstandard.__version__,
    }


def gzip_bytes(data: bytes, level: int = 9) -> bytes:
    """gzip member of `data` with a fixed header; bytes depend only on data, level and zlib-ng."""
    comp = zlib_ng.compressobj(level, zlib_ng.DEFLATED, -15, 8, zlib_ng.Z_DEFAULT_STRATEGY)
    body = comp.compress(data) + comp.flush()
    xfl = 2 if level == 9 else 4 if level == 1 else 0
    header = b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + bytes([xfl, GZIP_OS_UNKNOWN])
    trailer = struct.pack("<II", zlib_ng.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)
    return header + body + trailer


def gunzip_bytes(data: bytes) -> bytes:
    return zlib_ng.decompress(data, 31)


def zstd_bytes(data: bytes, level: int = 19) -> bytes:
    cctx = zstandard.ZstdCompressor(level=level, threads=_ZSTD_THREADS, write_checksum=True)
    return cctx.compress(data)


def zstd_many(bodies: Iterable[bytes], level: int = 19) -> list[bytes]:
    """`[zstd_bytes(b, level) for b in bodies]`, the same bytes, compressed on every core: libzstd
    releases the GIL, so small bodies (one job each, where the multi-threaded mode cannot split
    them) still compress in parallel. For an action that writes thousands of small files (a
    mirror's 3,547 chunks: 5.9 s on one core)."""
    items = list(bodies)
    if _ZSTD_THREADS == 1 or len(items) < 2:
        return [zstd_bytes(b, level) for b in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=_ZSTD_THREADS) as pool:
        return list(pool.map(lambda b: zstd_bytes(b, level), items))


def unzstd_bytes(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def _tarinfo(entry: TarEntry, mtime: int) -> tarfile.TarInfo:
    import tarfile  # here, not at import: every build imports this module, few write a tar (~3 ms)

    info = tarfile.TarInfo(entry.path)
    info.size = entry.size()
    info.mtime = int(mtime)  # an int: a float mtime would add a PAX mtime record
    info.mode = entry.mode
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def write_tar(out: BinaryIO, entries: Iterable[TarEntry], mtime: int) -> None:
    """Stream a deterministic PAX tar of `entries` (sorted by path) into `out`."""
    ordered = sorted(entries, key=lambda e: e.path.encode("utf-8"))
    paths = [e.path for e in ordered]
    if len(set(paths)) != len(paths):
        raise ValueError("duplicate paths in tar entries")
    import tarfile

    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
        for entry in ordered:
            info = _tarinfo(entry, mtime)
            if entry.data is not None:
                tar.addfile(info, io.BytesIO(entry.data))
            else:
                with open(entry.source, "rb") as f:
                    tar.addfile(info, f)


def tar_member_offset(entries: Iterable[TarEntry], mtime: int, path: str) -> int:
    """Where the content of member `path` starts in `write_tar`'s stream of `entries` (bytes
    from the stream's start): the same headers, in the same order, as `write_tar` writes.
    KeyError when no entry has that path. A member's header length does not depend on its size
    below 8 GiB (the ustar size field), so a placeholder entry of size 0 gives the offset of a
    file not written yet."""
    import tarfile

    offset = 0
    for entry in sorted(entries, key=lambda e: e.path.encode("utf-8")):
        info = _tarinfo(entry, mtime)
        offset += len(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        if entry.path == path:
            return offset
        offset += -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    raise KeyError(path)


def tar_bytes(entries: Iterable[TarEntry], mtime: int = 0) -> bytes:
    buf = io.BytesIO()
    write_tar(buf, entries, mtime)
    return buf.getvalue()
