"""Content-addressed blob store: <cache>/cas/<2 hex>/<blake3 hex>, files made read-only.

Blobs are written to a temp file in the same filesystem, fsynced, then renamed into place, so a
reader never sees a partial blob and `kill -9` leaves at worst an orphan temp file. Content is
re-hashed whenever a blob is copied out; a mismatch deletes the blob and raises CorruptBlob so
the caller rebuilds instead of serving wrong bytes.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import blake3

_CHUNK = 1 << 20


class CorruptBlob(Exception):
    def __init__(self, digest: str, reason: str):
        super().__init__(f"cache blob {digest[:16]}… is corrupt ({reason}); it was removed")
        self.digest = digest


class Cas:
    def __init__(self, root: Path):
        self.root = root / "cas"
        self._root_str = str(self.root)
        self.tmp = root / "tmp"
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def path_str(self, digest: str) -> str:
        return f"{self._root_str}/{digest[:2]}/{digest}"

    def has(self, digest: str, size: int) -> bool:
        try:
            return os.stat(self.path_str(digest)).st_size == size
        except FileNotFoundError:
            return False

    def adopt(self, src: Path, digest: str, size: int) -> None:
        """Move a finished file (same filesystem) into the store under `digest`."""
        dest = self.path(digest)
        if self.has(digest, size):
            src.unlink()
            return
        dest.parent.mkdir(exist_ok=True)
        os.chmod(src, 0o444)
        fd = os.open(src, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(src, dest)

    def put_bytes(self, data: bytes) -> str:
        digest = blake3.blake3(data).hexdigest()
        if self.has(digest, len(data)):
            return digest
        fd, tmp = tempfile.mkstemp(dir=self.tmp, prefix="put-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        self.adopt(Path(tmp), digest, len(data))
        return digest

    def read_verified(self, digest: str) -> bytes:
        try:
            data = self.path(digest).read_bytes()
        except FileNotFoundError:
            raise CorruptBlob(digest, "missing") from None
        if blake3.blake3(data).hexdigest() != digest:
            self.discard(digest)
            raise CorruptBlob(digest, "content does not match its digest")
        return data

    def copy_out(self, digest: str, dest: Path, mode: int = 0o644) -> None:
        """Copy a blob to `dest` (atomically), verifying its content on the way."""
        src = self.path(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".stella-")
        h = blake3.blake3()
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
            if h.hexdigest() != digest:
                self.discard(digest)
                raise CorruptBlob(digest, "content does not match its digest")
            os.chmod(tmp, mode)
            os.replace(tmp, dest)
        except FileNotFoundError:
            raise CorruptBlob(digest, "missing") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def verify(self, digest: str) -> bool:
        h = blake3.blake3()
        try:
            size = self.path(digest).stat().st_size
            if size:
                h.update_mmap(str(self.path(digest)))
        except FileNotFoundError:
            return False
        return h.hexdigest() == digest

    def discard(self, digest: str) -> None:
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            pass

    def iter_blobs(self):
        """(digest, size, atime) of every blob."""
        for shard in sorted(self.root.iterdir()) if self.root.exists() else []:
            if not shard.is_dir():
                continue
            for blob in sorted(shard.iterdir()):
                st = blob.stat()
                yield blob.name, st.st_size, st.st_atime
