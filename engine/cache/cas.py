"""Content-addressed blob store: <cache>/cas/<2 hex>/<blake3 hex>, files made read-only.

Blobs are written to a temp file in the same filesystem, fsynced, then renamed into place, so a
reader never sees a partial blob and `kill -9` leaves at worst an orphan temp file. Content is
re-hashed whenever a blob is copied out; a mismatch deletes the blob and raises CorruptBlob so
the caller rebuilds instead of serving wrong bytes. A write that fails for lack of space or an
I/O error removes its temp file and raises StorageError (storage.py) naming the path: nothing
half-written is ever adopted under a digest.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import blake3

from stella_build.engine.cache.storage import is_storage_errno, storage_error

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
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, root, "cache directory") from None

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def path_str(self, digest: str) -> str:
        return f"{self._root_str}/{digest[:2]}/{digest}"

    def has(self, digest: str, size: int) -> bool:
        try:
            return os.stat(self.path_str(digest)).st_size == size
        except (FileNotFoundError, NotADirectoryError):
            return False

    def adopt(self, src: Path, digest: str, size: int) -> None:
        """Move a finished file (same filesystem) into the store under `digest`.

        Raises StorageError when it cannot be made durable (fsync EIO, full disk); `src` is then
        removed, so a failed adopt leaves neither a blob nor a temp file."""
        dest = self.path(digest)
        if self.has(digest, size):
            src.unlink()
            return
        try:
            dest.parent.mkdir(exist_ok=True)
            os.chmod(src, 0o444)
            fd = os.open(src, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(src, dest)
        except OSError as exc:
            if not is_storage_errno(exc):
                raise
            src.unlink(missing_ok=True)
            raise storage_error(exc, dest, "cache blob") from None

    def put_bytes(self, data: bytes) -> str:
        digest = blake3.blake3(data).hexdigest()
        if self.has(digest, len(data)):
            return digest
        try:
            fd, tmp = tempfile.mkstemp(dir=self.tmp, prefix="put-")
        except OSError as exc:
            raise storage_error(exc, self.tmp, "cache temp file") from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except OSError as exc:
            os.unlink(tmp)
            if not is_storage_errno(exc):
                raise
            raise storage_error(exc, tmp, "cache temp file") from None
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
        """Copy a blob to `dest` (atomically), verifying its content on the way.

        Raises CorruptBlob (missing or wrong content: the blob is removed) or StorageError (the
        destination's filesystem is full or failing); either way no temp file is left."""
        try:
            src = open(self.path(digest), "rb")
        except FileNotFoundError:
            raise CorruptBlob(digest, "missing") from None
        with src:
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".stella-")
            except OSError as exc:
                if not is_storage_errno(exc):
                    raise
                raise storage_error(exc, dest.parent, "output directory") from None
            h = blake3.blake3()
            try:
                with os.fdopen(fd, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                if h.hexdigest() != digest:
                    self.discard(digest)
                    raise CorruptBlob(digest, "content does not match its digest")
                os.chmod(tmp, mode)
                os.replace(tmp, dest)
            except OSError as exc:
                if not is_storage_errno(exc):
                    raise
                raise storage_error(exc, dest, "output file") from None
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)

    def verify(self, digest: str) -> bool:
        # Read in chunks rather than blake3's update_mmap: a blob truncated while it is being
        # hashed must give a mismatch, not a SIGBUS.
        h = blake3.blake3()
        try:
            with open(self.path(digest), "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
        except FileNotFoundError:
            return False
        return h.hexdigest() == digest

    def discard(self, digest: str) -> None:
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            pass

    def iter_blobs(self):
        """(digest, size, atime) of every blob; entries removed meanwhile (gc) are skipped."""
        try:
            shards = sorted(self.root.iterdir()) if self.root.exists() else []
        except FileNotFoundError:
            return
        for shard in shards:
            if not shard.is_dir() or shard.is_symlink():
                continue
            try:
                blobs = sorted(shard.iterdir())
            except FileNotFoundError:
                continue
            for blob in blobs:
                try:
                    st = blob.lstat()
                except FileNotFoundError:
                    continue
                yield blob.name, st.st_size, st.st_atime

