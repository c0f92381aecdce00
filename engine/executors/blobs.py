"""Blob stores the dask executor moves inputs and outputs through, keyed by SHA-256 as in the
Remote Execution API: the shared HTTP remote cache (engine/cache/remote.py: bazel-remote, nginx),
or, for `--executor dask-local` without `--remote-cache`, a directory on this machine that the
LocalCluster's workers share (`DirectoryStore`).

Both offer `put(sha256, path)` (raises BlobStoreError) and `get(sha256, size, dest) -> bool`
(False on a miss or a body that fails verification; raises BlobStoreError on transport failure),
plus `url`, the location a worker is told (never credentials: an HTTP worker takes its own from
STELLA_REMOTE_CACHE_TOKEN / _USER / _PASSWORD / _CA in its environment).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Sequence

_CHUNK = 1 << 20


class BlobStoreError(Exception):
    """The store could not be reached or refused a transfer."""


class RemoteStore:
    """The HTTP remote cache of the build (an engine.cache.remote.RemoteCache)."""

    def __init__(self, remote):
        self.remote = remote
        self.url = remote.base_url  # scheme://host[:port]/prefix/, credentials already removed

    def put_many(self, items: Sequence[tuple[str, str]]) -> None:
        """Upload [(sha256, path)] (parallel, bounded by the client's max_parallel)."""
        from stella_build.engine.cache.remote import Outcome
        if not items:
            return
        if not self.remote.upload or not self.remote.available:
            raise BlobStoreError(f"remote cache {self.url} is read-only or unavailable")
        for r in self.remote.upload_blobs(list(items)):
            if r.outcome is Outcome.ERROR:
                raise BlobStoreError(str(r.error))

    def get_many(self, items: Sequence[tuple[str, int, str]]) -> list[bool]:
        """Download [(sha256, size, dest)]; per item True on a verified hit, False on a miss."""
        from stella_build.engine.cache.remote import Outcome
        if not items:
            return []
        results = self.remote.fetch_blobs(list(items))
        errors = [r.error for r in results if r.outcome is Outcome.ERROR]
        if errors:
            raise BlobStoreError(str(errors[0]))
        return [r.outcome is Outcome.HIT for r in results]

    def close(self) -> None:
        pass  # the build owns (and closes) its RemoteCache


class DirectoryStore:
    """`<root>/<sha256>` files on a filesystem every worker can read (one machine: dask-local).
    Written atomically (temp file + rename), verified (size and SHA-256) on every read."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = self.root.resolve().as_uri()

    @classmethod
    def from_url(cls, url: str) -> "DirectoryStore":
        from urllib.parse import unquote, urlsplit
        return cls(Path(unquote(urlsplit(url).path)))

    def put_many(self, items: Sequence[tuple[str, str]]) -> None:
        for sha, path in items:
            dest = self.root / sha
            if dest.exists():
                continue
            try:
                fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".put-")
                h = hashlib.sha256()
                with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                if h.hexdigest() != sha:
                    os.unlink(tmp)
                    raise BlobStoreError(f"{path} does not hash to {sha}")
                os.replace(tmp, dest)
            except OSError as exc:
                raise BlobStoreError(f"cannot write {dest}: {exc}") from None

    def get_many(self, items: Sequence[tuple[str, int, str]]) -> list[bool]:
        return [self._get(sha, size, Path(dest)) for sha, size, dest in items]

    def _get(self, sha: str, size: int, dest: Path) -> bool:
        src = self.root / sha
        try:
            if src.stat().st_size != size:
                return False
            h = hashlib.sha256()
            with open(src, "rb") as f, open(dest, "wb") as out:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise BlobStoreError(f"cannot read {src}: {exc}") from None
        if h.hexdigest() != sha:
            dest.unlink(missing_ok=True)
            return False
        return True

    def close(self) -> None:
        pass


def store_for_url(url: str, timeout: float = 10.0):
    """The store a worker uses for `url` (file:// or http[s]://); HTTP credentials and CA come
    from the worker's own environment (engine/cache/remote.py from_url)."""
    if url.startswith("file://"):
        return DirectoryStore.from_url(url)
    from stella_build.engine.cache.remote import RemoteCache
    return RemoteStore(RemoteCache.from_url(url, upload=True, required=False, timeout=timeout,
                                            fsync=False))
