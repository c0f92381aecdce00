"""The bounded scratch directory of one dask worker process (worker.py).

A worker keeps the blobs it fetched or produced in its own CAS (`<dir>/cas/`), so that the next
action needing them does not download them again, and the per-record memo packs of the actions it
ran (`<dir>/memo-v1/`). Without a bound that directory grows with every build for the worker's
whole life. `WorkerScratch` keeps it under a size cap (`STELLA_WORKER_CAS_MAX`, default 2 GiB) by
least-recently-used eviction after each action, never evicting a blob of an action that is still
running on this worker (its inputs are pinned before they are looked up, its outputs until they are
uploaded). Everything in the directory is a cache: evicting it only costs a download (a CAS blob,
refetched from the shared store by SHA-256 and re-verified) or a recomputation (a memo pack).

Recency: a CAS blob is "used" when an action of this process reads it as an input or produces it
(kept in memory; the filesystem's atime is unreliable under relatime/noatime); any other file (memo
packs, which an action rewrites after each run) by its mtime. Both are wall-clock seconds, so the
two kinds are evicted in one LRU order. The cap bounds what stays between actions; a running
action needs room for its own inputs, outputs and sandbox on top of it (the transient `tmp/` and
`sandbox/` are not counted: they are emptied when each action ends).
"""
from __future__ import annotations

import heapq
import os
import shutil
import stat
import threading
import time
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Iterable

CAP_ENV = "STELLA_WORKER_CAS_MAX"
DEFAULT_CAP = 2 << 30  # 2 GiB: ample for the corpora (docs/scale-out.md "Sizing")
_TRANSIENT = ("tmp", "sandbox")  # emptied after every action, never counted


class ScratchConfigError(ValueError):
    """STELLA_WORKER_CAS_MAX is not a size."""


def cap_from_env(environ: dict[str, str] | None = None) -> int:
    """The cap in bytes from STELLA_WORKER_CAS_MAX: an integer number of bytes or a size with a
    unit as Dask writes them ("512MiB", "2GiB", "500MB" = 500·10⁶); DEFAULT_CAP when unset or
    empty. 0 keeps nothing between actions. Raises ScratchConfigError for anything else."""
    text = (os.environ if environ is None else environ).get(CAP_ENV, "").strip()
    if not text:
        return DEFAULT_CAP
    # dask's parser: the same units the `dask worker --memory-limit` option takes on this worker
    from dask.utils import parse_bytes
    try:
        value = parse_bytes(text)
    except (ValueError, TypeError):
        value = None
    if not isinstance(value, int) or value < 0:
        raise ScratchConfigError(f"{CAP_ENV}={text!r} is not a size (bytes, or e.g. '512MiB', '2GiB')")
    return value


class WorkerScratch:
    """LRU bookkeeping of one per-process scratch directory `root` (`root/cas/<2 hex>/<blake3>`).

    Thread-safe: a worker with several threads runs several actions at once. Use:
    `pin(digests)` before looking up an action's inputs, `used(digests)` for its inputs and outputs
    once they are in `root/cas/` and uploaded, `unpin(digests)`, then `settle()` to evict down to
    `cap` bytes. (Outputs are not pinned: until `used` names them this object does not know them,
    so no eviction can choose them; an output that had the digest of a known blob and was evicted
    by another thread before its upload makes the upload fail, `executor-upload-failed`, and the
    client resubmits the action.) `stats()` → {"bytes", "files", "evicted_files",
    "evicted_bytes", "actions", "cap"} (bytes: what stays now, counted as `settle` counts)."""

    def __init__(self, root: Path, cap: int):
        self.root = Path(root)
        self.cap = cap
        self._cas = self.root / "cas"
        self._lock = threading.Lock()
        # blake3 → (last used, wall s; size), least recently used first: eviction walks it from
        # the front and stops at the cap, so its cost is the number of blobs evicted, not kept
        self._blobs: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._bytes = 0  # sum of the sizes in _blobs
        self._pins: Counter[str] = Counter()
        self.evicted_files = 0
        self.evicted_bytes = 0
        self.actions = 0
        self._scan_cas()

    def adopt_directory(self) -> list[Path]:
        """Claim `root` for this process (owner.json) and remove the directories that earlier
        processes on this host left next to it (`remove_stale_siblings`); returns those."""
        claim(self.root)
        return remove_stale_siblings(self.root)

    def _scan_cas(self) -> None:
        """Adopt blobs already on disk (a directory left by an earlier process with the same pid,
        or written by an action that failed half-way), oldest mtime first."""
        found = []
        for path in _files(self._cas):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            found.append((st.st_mtime, st.st_size, path.name))
        with self._lock:
            unknown = sorted(f for f in found if f[2] not in self._blobs)
            # not used by this process yet: older than everything it used (front of the order)
            for mtime, size, digest in reversed(unknown):
                self._blobs[digest] = (mtime, size)
                self._blobs.move_to_end(digest, last=False)
                self._bytes += size

    def pin(self, digests: Iterable[str]) -> None:
        """Protect these blobs from eviction until `unpin` (counted: two actions may share one)."""
        with self._lock:
            self._pins.update(digests)

    def unpin(self, digests: Iterable[str]) -> None:
        with self._lock:
            self._pins.subtract(digests)
            self._pins += Counter()  # drop the zero counts

    def used(self, digests: Iterable[str]) -> None:
        """Mark these blobs (blake3) as used now (inputs read, outputs produced); one not in
        `root/cas/` (an action that failed before fetching it) is left out."""
        now = time.time()
        sizes = {}
        for digest in set(digests):
            try:
                sizes[digest] = (self._cas / digest[:2] / digest).stat().st_size
            except (FileNotFoundError, NotADirectoryError):
                continue
        with self._lock:
            for digest, size in sizes.items():
                old = self._blobs.pop(digest, None)
                self._bytes += size - (old[1] if old else 0)
                self._blobs[digest] = (now, size)

    def settle(self, rescan: bool = False) -> None:
        """One action ended: evict least-recently-used files until at most `cap` bytes stay.
        `rescan`: also look for CAS blobs this object was not told about (after a failed action,
        which may have stored some of its outputs)."""
        if rescan:
            self._scan_cas()
        others = []  # files outside cas/ (memo packs): few, one per action slot, so listed each time
        for top in _children(self.root):
            if top.name in ("cas",) + _TRANSIENT:
                continue
            for path in _files(top):
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                others.append((st.st_mtime, st.st_size, path))
        others.sort(key=lambda o: o[0])
        with self._lock:
            self.actions += 1
            total = self._bytes + sum(s for _t, s, _p in others)
            if total <= self.cap:
                return
            # One LRU order over both kinds: the blobs' (already in order) merged with the others'
            # (sorted). Chosen first, removed after: _blobs may not change while it is iterated.
            blobs = ((t, size, digest) for digest, (t, size) in self._blobs.items()
                     if self._pins[digest] <= 0)  # pinned: an input of a running action
            files = ((t, size, path) for t, size, path in others)
            victims = []
            for _t, size, what in heapq.merge(blobs, files, key=lambda v: v[0]):
                if total <= self.cap:
                    break
                victims.append((size, what))
                total -= size
            for size, what in victims:
                path = self._cas / what[:2] / what if isinstance(what, str) else what
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass  # already gone: it no longer takes room either
                except OSError:
                    continue  # cannot remove it now (read-only mount?): it stays counted
                if isinstance(what, str):
                    del self._blobs[what]
                    self._bytes -= size
                self.evicted_files += 1
                self.evicted_bytes += size

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"bytes": self._bytes, "files": len(self._blobs), "evicted_files": self.evicted_files,
                    "evicted_bytes": self.evicted_bytes, "actions": self.actions, "cap": self.cap}

    def remove(self) -> None:
        """Delete the whole directory (worker teardown). Sandboxes make their `in/` read-only, so
        permissions are restored on the way (shutil.rmtree alone would stop at them)."""
        remove_tree(self.root)


OWNER = "owner.json"  # at the top of a scratch directory: which process made it (never evicted)


def claim(root: Path) -> None:
    """Record in `root/owner.json` the process that owns this scratch directory: host name, the
    host's boot time and this process's pid and start time (so a later process with the same pid
    is not taken for it). Uses psutil, which `distributed` requires; without it, nothing."""
    import json
    import socket
    try:
        import psutil
    except ImportError:  # pragma: no cover - every dask worker has psutil
        return
    me = psutil.Process()
    try:
        root.mkdir(parents=True, exist_ok=True)
        (root / OWNER).write_text(json.dumps({"host": socket.gethostname(), "boot": psutil.boot_time(),
                                              "pid": me.pid, "started": me.create_time()}))
    except OSError:  # a full disk: the directory stays unclaimed (no later process removes it)
        pass


def remove_stale_siblings(root: Path) -> list[Path]:
    """Remove the scratch directories next to `root` whose owner (owner.json, see `claim`) ran on
    this host since its last boot and no longer runs: a worker killed with SIGKILL, or one whose
    close timed out before its teardown finished. A directory without owner.json, or owned by
    another host (a TMPDIR shared between machines or containers with other host names), is left
    alone. Returns the directories removed; never raises."""
    import json
    import socket
    try:
        import psutil
        host, boot = socket.gethostname(), psutil.boot_time()
    except ImportError:  # pragma: no cover - every dask worker has psutil
        return []
    removed = []
    for sibling in _children(root.parent):
        if sibling == root:
            continue
        try:
            owner = json.loads((sibling / OWNER).read_text())
            if owner["host"] != host or owner["boot"] != boot:
                continue
            alive = psutil.Process(int(owner["pid"])).create_time() == owner["started"]
        except psutil.NoSuchProcess:
            alive = False
        except (OSError, ValueError, KeyError, TypeError, psutil.Error):
            continue  # not ours to judge (no or unreadable owner.json, no permission)
        if not alive:
            remove_tree(sibling)
            removed.append(sibling)
    return removed


def remove_tree(path: Path) -> None:
    """`shutil.rmtree(path)`, making read-only directories writable first; never raises."""
    def onerror(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, stat.S_IRWXU)
            func(p)
        except OSError:
            pass
    if os.path.isdir(path):
        shutil.rmtree(path, onerror=onerror)


def _children(path: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _files(top: Path):
    """Regular files under `top` (symlinks neither followed nor listed)."""
    for dirpath, _dirs, names in os.walk(top):
        for name in names:
            p = Path(dirpath) / name
            if not p.is_symlink():
                yield p
