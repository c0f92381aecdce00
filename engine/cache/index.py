"""The LMDB index of the local cache: small, rebuildable records next to the CAS.

Databases in <cache>/index-v1 (one LMDB environment, safe for several processes at once):
  ac    action key → result record (outputs with blake3/sha256/size/mode, stats, action id)
  keys  action key → key record (the canonical preimage, kept for `explain`)
  last  action id  → {"current": key, "previous": key} of the latest builds
  stat  absolute path → [size, mtime_ns, ino, ctime_ns, blake3, sha256] (source digest memo)
  used  action key → last use time (wall clock: only for `cache gc` eviction order)
LMDB runs with sync off: a crash of the machine may lose the last transactions but never corrupts
the environment, and a lost index entry is only a cache miss.

Damage is detected, not trusted (see lmdb_check.py): before liblmdb maps `data.mdb`, its meta
pages and size are checked with plain reads (a truncated file would otherwise be a SIGBUS), and
an LMDB corruption error while reading is caught. A damaged index is replaced by an empty one:
the results it held are forgotten (the next build re-runs those actions, and `Cas.adopt` keeps
the blobs that already exist), blobs are never touched. Check and repair run under an exclusive
`flock` on <cache>/index.lock so two processes never repair at once; a process that still has the
old environment open keeps working on the unlinked copy and only its new results are lost.
A record that does not have the expected shape (hand-edited, truncated JSON, 100,000-digit
numbers, deep nesting) is a miss, never an exception. Write failures (full disk, I/O error)
raise StorageError naming the index; LMDB aborts the transaction, so no partial entry remains.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import lmdb

from stella_build.engine.cache.lmdb_check import DAMAGED, SHORT, deep_verify, inspect_data_file
from stella_build.engine.cache.storage import storage_error
from stella_build.engine.errors import BuildFailed

SCHEMA = 1
_MAP_SIZE = 1 << 36  # address space reservation, not disk use
_DBS = ("ac", "keys", "last", "stat", "used")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
# LMDB errors that mean the environment's pages are not what LMDB wrote: repair, do not retry.
_DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError,
           lmdb.VersionMismatchError, lmdb.PanicError)


def _j(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _load(raw: bytes | None) -> Any:
    """Parsed JSON of a stored value, or None for a value that is not sane JSON (invalid, too
    deep for the parser, integers beyond Python's digit limit)."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def safe_relpath(path: Any) -> bool:
    """Whether `path` is a relative POSIX path that stays below the directory it is joined to
    (no absolute path, no '.'/'..'/empty segment, no NUL or backslash)."""
    return (isinstance(path, str) and bool(path) and not path.startswith("/")
            and "\x00" not in path and "\\" not in path
            and all(seg not in ("", ".", "..") for seg in path.split("/")))


def _valid_output(o: Any) -> bool:
    return (isinstance(o, dict) and safe_relpath(o.get("path"))
            and isinstance(o.get("blake3"), str) and bool(_HEX64.match(o["blake3"]))
            and isinstance(o.get("sha256"), str) and bool(_HEX64.match(o["sha256"]))
            and type(o.get("size")) is int and o["size"] >= 0 and o.get("mode") in (0o644, 0o755))


def valid_result(data: Any) -> bool:
    """Whether `data` has the shape of a result record (outputs with safe paths, well-formed
    digests, sizes and modes; stats an object). Anything else read from the index is a miss."""
    return (isinstance(data, dict) and isinstance(data.get("outputs"), list)
            and all(_valid_output(o) for o in data["outputs"])
            and isinstance(data.get("stats", {}), dict))


_valid_result = valid_result

# The tail of a stat entry as `_j` writes it after the four integers: two lowercase hex digests
# (64 + 3 + 64 + 2 bytes: digest, '","', digest, '"]').
_STAT_TAIL_LEN = 133
_HEX_DIGITS = b"0123456789abcdef"


def stat_match(raw: bytes | None, st: os.stat_result) -> tuple[str, str] | None:
    """(blake3, sha256) from a stored stat entry (`Index.get_stats_raw`) when it was recorded
    for exactly this signature (size, mtime_ns, inode, ctime_ns), else None.

    The entry is `_j([size, mtime_ns, ino, ctime_ns, blake3, sha256])`; comparing its bytes with
    the signature formatted the same way costs one format and a few C slice and translate calls
    per source file, where parsing and checking the JSON cost several times that, and a regex
    over the digests twice this (this runs for every source file of every build: ~1.8 µs against
    ~2.8 µs with the regex, 100k files). Any other bytes (another signature, damage, hand edits)
    are no match: the file is hashed again."""
    if not raw:
        return None
    head = b'[%d,%d,%d,%d,"' % (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    n = len(head)
    if len(raw) != n + _STAT_TAIL_LEN or not raw.startswith(head) \
            or raw[n + 64:n + 67] != b'","' or not raw.endswith(b'"]'):
        return None
    b3, sha = raw[n:n + 64], raw[n + 67:n + 131]
    if b3.translate(None, _HEX_DIGITS) or sha.translate(None, _HEX_DIGITS):
        return None  # a byte that is not a lowercase hex digit
    return b3.decode("ascii"), sha.decode("ascii")


def _valid_stat(entry: Any) -> bool:
    return (isinstance(entry, list) and len(entry) == 6
            and all(type(v) is int for v in entry[:4])
            and all(isinstance(v, str) and _HEX64.match(v) for v in entry[4:]))


def _stderr_warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `lock_path` (released by the kernel if the process dies)."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# LMDB's lock file for max_readers=1024: (1024 - 1) readers of 64 bytes + a 192-byte header.
_LOCK_FILE_BYTES = 1023 * 64 + 192


def _allocate_lock_file(path: Path) -> None:
    """Give `lock.mdb` real blocks before LMDB maps it. LMDB writes its reader table through the
    mapping; on a full disk a store into a sparse page is a SIGBUS, while posix_fallocate fails
    with ENOSPC (raised as OSError, reported as a full disk). Keeps a larger existing file."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, max(_LOCK_FILE_BYTES, os.fstat(fd).st_size))
    finally:
        os.close(fd)


class Index:
    """The index of one cache directory. Raises StorageError (exit 1) when the index cannot be
    written; repairs itself (see the module doc) when it is damaged, calling `warn` once."""

    def __init__(self, root: Path, readonly: bool = False, *,
                 warn: Callable[[str], None] | None = None):
        self.root = Path(root)
        self.path = self.root / f"index-v{SCHEMA}"
        self.warn = warn or _stderr_warn
        self.repaired: str | None = None  # why the index was replaced by an empty one, if it was
        self.env: lmdb.Environment | None = None
        self._ino: int | None = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with _exclusive(self.root / "index.lock"):
                self._open_checked()
        except OSError as exc:
            raise storage_error(exc, self.path, "cache index") from None

    # -- opening, checking, repairing ------------------------------------------------------
    def _open_checked(self) -> None:
        """Open the environment if it is sound, else replace it (caller holds index.lock)."""
        self.path.mkdir(parents=True, exist_ok=True)
        verdict, detail = inspect_data_file(self.path / "data.mdb")
        if verdict == DAMAGED:
            return self._replace(detail)
        try:
            env = self._lmdb_open()
        except _DAMAGE as exc:
            return self._replace(f"LMDB refused it: {exc}")
        if verdict == SHORT:
            # Only a full walk can tell a legal free tail from a truncated file; mapping the
            # environment is safe (only the meta pages are read), walking its trees is not.
            with env.begin(write=True):  # LMDB's writer lock: no commit lands mid-walk
                problems = deep_verify(self.path)
            if problems is None or problems:
                env.close()
                return self._replace(f"{detail}; {problems[0] if problems else 'no verifier'}")
        try:
            self._bind(env)
        except _DAMAGE as exc:
            env.close()
            self._replace(f"LMDB refused it: {exc}")

    def _lmdb_open(self) -> lmdb.Environment:
        _allocate_lock_file(self.path / "lock.mdb")
        try:
            env = lmdb.open(str(self.path), map_size=_MAP_SIZE, max_dbs=8, sync=False,
                            metasync=False, max_readers=1024, readonly=False, lock=True)
            env.reader_check()  # clear reader slots of processes that were killed
            return env
        except _DAMAGE:
            raise
        except lmdb.Error as exc:
            raise storage_error(exc, self.path, "cache index") from None

    def _bind(self, env: lmdb.Environment) -> None:
        """Open the named databases (this reads the main B-tree: only after the checks)."""
        dbs = {}
        try:
            for name in _DBS:
                dbs[name] = env.open_db(name.encode())
        except _DAMAGE:
            raise
        except lmdb.Error as exc:
            raise storage_error(exc, self.path, "cache index") from None
        self.env = env
        self.ac, self.keys, self.last, self.stat, self.used = (dbs[n] for n in _DBS)
        self._ino = os.stat(self.path / "data.mdb").st_ino

    def _replace(self, why: str) -> None:
        """Move the damaged environment aside, delete it and open an empty one."""
        aside = self.path.with_name(f"{self.path.name}.damaged-{os.getpid()}-{time.monotonic_ns()}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.path, aside)
        shutil.rmtree(aside, ignore_errors=True)
        self.path.mkdir(parents=True, exist_ok=True)
        env = self._lmdb_open()
        try:
            self._bind(env)
        except _DAMAGE as exc:  # a brand-new environment cannot be damaged: storage trouble
            env.close()
            raise BuildFailed(f"the cache index {self.path} cannot be recreated: {exc}",
                              file=str(self.path), reason="cache-corrupt") from None
        self.repaired = why
        self.warn(f"the local cache index {self.path} was damaged ({why}); it was replaced by an "
                  "empty one: cached results are forgotten and their actions run again, cached "
                  "blobs are kept")

    def _recover(self, exc: Exception) -> None:
        """After LMDB reported damage while in use: replace the index, unless another process
        already did (then just reopen theirs, with the same checks)."""
        with _exclusive(self.root / "index.lock"):
            if self.env is not None:
                self.env.close()
                self.env = None
            try:
                same = os.stat(self.path / "data.mdb").st_ino == self._ino
            except FileNotFoundError:
                same = False
            if same:
                self._replace(f"LMDB reported: {exc}")
            else:
                self._open_checked()

    def _run(self, op: Callable[[], Any]) -> Any:
        """Run `op` (one transaction); damage → repair and run once more on the fresh index;
        a write failure → StorageError."""
        for attempt in (0, 1):
            try:
                return op()
            except _DAMAGE as exc:
                if attempt:
                    raise BuildFailed(f"the cache index {self.path} is damaged: {exc}",
                                      file=str(self.path), reason="cache-corrupt") from None
                try:
                    self._recover(exc)
                except OSError as os_exc:
                    raise storage_error(os_exc, self.path, "cache index") from None
            except lmdb.Error as exc:
                raise storage_error(exc, self.path / "data.mdb", "cache index") from None

    def verify_structure(self) -> list[str]:
        """Walk the whole environment (py-lmdb's offline verifier, under LMDB's writer lock so no
        commit lands half-way); when it finds problems, replace the index. → the problems ([] for
        a sound index, and also when this py-lmdb is older than 3.0 and has no verifier)."""
        def walk() -> list[str] | None:
            with self.env.begin(write=True):
                return deep_verify(self.path)
        problems = self._run(walk)
        if problems is None:
            return []
        if problems:
            with _exclusive(self.root / "index.lock"):
                self.env.close()
                self.env = None
                self._replace(problems[0])
        return problems

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None

    # -- action cache ---------------------------------------------------------------------
    def get_result(self, key: str, *, checked: bool = True) -> dict | None:
        """The result record stored for `key`, or None (absent or not a well-formed record).

        `checked=False`: any JSON value stored there (None if absent or not JSON), for a caller
        that checks the record more strictly itself (the scheduler's `records.result_problem`)."""
        def op():
            with self.env.begin(db=self.ac) as txn:
                return txn.get(key.encode())
        data = _load(self._run(op))
        if not checked:
            return data
        return data if _valid_result(data) else None

    def get_results(self, keys: Iterable[str]) -> dict[str, dict]:
        keys = list(keys)

        def op():
            with self.env.begin(db=self.ac) as txn:
                return {key: txn.get(key.encode()) for key in keys}
        out = {}
        for key, raw in self._run(op).items():
            data = _load(raw)
            if _valid_result(data):
                out[key] = data
        return out

    def put_result(self, key: str, result: dict, key_record: dict, action_id: str) -> None:
        def op():
            with self.env.begin(write=True) as txn:
                txn.put(key.encode(), _j(result), db=self.ac)
                txn.put(key.encode(), _j(key_record), db=self.keys)
                txn.put(key.encode(), str(time.time()).encode(), db=self.used)
                self._record_last(txn, action_id, key)
        self._run(op)

    def drop_result(self, key: str) -> None:
        def op():
            with self.env.begin(write=True) as txn:
                txn.delete(key.encode(), db=self.ac)
        self._run(op)

    def get_key_record(self, key: str) -> dict | None:
        def op():
            with self.env.begin(db=self.keys) as txn:
                return txn.get(key.encode())
        data = _load(self._run(op))
        return data if isinstance(data, dict) else None

    # -- history for explain ------------------------------------------------------------------
    def _record_last(self, txn, action_id: str, key: str) -> None:
        raw = txn.get(action_id.encode(), db=self.last)
        # Every no-op build rewrites this for every action: when the stored entry (written by _j,
        # keys sorted) already starts with this key as "current", nothing changes; skip parsing.
        if raw is not None and raw.startswith(b'{"current":"%s"' % key.encode()):
            return
        entry = _load(raw)
        entry = entry if isinstance(entry, dict) else {}
        if entry.get("current") != key:
            previous = entry.get("current")
            entry = {"current": key, "previous": previous if isinstance(previous, str) else None}
            txn.put(action_id.encode(), _j(entry), db=self.last)

    def record_used(self, action_keys: dict[str, str]) -> None:
        """Note that these (action id → key) were used by a build: LRU time and explain history."""
        now = str(time.time()).encode()

        def op():
            with self.env.begin(write=True) as txn:
                for action_id, key in action_keys.items():
                    txn.put(key.encode(), now, db=self.used)
                    self._record_last(txn, action_id, key)
        self._run(op)

    def last_keys(self, action_id: str) -> dict:
        def op():
            with self.env.begin(db=self.last) as txn:
                return txn.get(action_id.encode())
        data = _load(self._run(op))
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if k in ("current", "previous") and isinstance(v, str)}

    # -- source digest memo ---------------------------------------------------------------
    def get_stats(self, paths: list[str]) -> dict[str, list]:
        """path → [size, mtime_ns, ino, ctime_ns, blake3, sha256] for the memoized `paths`."""
        def op():
            with self.env.begin(db=self.stat) as txn:
                return {p: txn.get(p.encode()) for p in paths}
        out = {}
        for p, raw in self._run(op).items():
            entry = _load(raw)
            if _valid_stat(entry):
                out[p] = entry
        return out

    def get_stats_raw(self, paths: list[str]) -> dict[str, bytes | None]:
        """path → the stored bytes of its stat entry (None when absent), unparsed: see
        `stat_match`, which checks them against a fresh `os.stat` without decoding JSON."""
        def op():
            with self.env.begin(db=self.stat) as txn:
                get = txn.get
                return {p: get(p.encode()) for p in paths}
        return self._run(op)

    def put_stats(self, entries: dict[str, list]) -> None:
        if not entries:
            return

        def op():
            with self.env.begin(write=True, db=self.stat) as txn:
                for p, v in entries.items():
                    txn.put(p.encode(), _j(v))
        self._run(op)

    # -- maintenance ------------------------------------------------------------------------
    def all_results(self) -> list[tuple[str, dict, float]]:
        """(key, result, last use time) of every well-formed result record."""
        def op():
            with self.env.begin() as txn:
                used = dict(txn.cursor(db=self.used))
                return [(k, v, used.get(k)) for k, v in txn.cursor(db=self.ac)]
        out = []
        for k, raw, used in self._run(op):
            data = _load(raw)
            if not _valid_result(data):
                continue
            try:
                when = float(used) if used else 0.0
            except ValueError:
                when = 0.0
            out.append((k.decode(errors="replace"), data, when if math.isfinite(when) else 0.0))
        return out

    def drop_malformed_results(self) -> list[dict]:
        """Delete the result records every reader ignores as malformed (not JSON, not the record
        shape, unsafe output paths). → [{"key", "action": None, "problem"}] of those deleted."""
        def scan():
            with self.env.begin() as txn:
                return [k for k, v in txn.cursor(db=self.ac) if not _valid_result(_load(v))]
        keys = [k.decode(errors="replace") for k in self._run(scan)]
        self.delete_results(keys)
        return [{"key": k, "action": None, "problem": "the entry is not a well-formed result record"}
                for k in keys]

    def delete_results(self, keys: list[str]) -> None:
        def op():
            with self.env.begin(write=True) as txn:
                for key in keys:
                    for db in (self.ac, self.used):
                        txn.delete(key.encode(), db=db)
        self._run(op)

    def counts(self) -> dict[str, int]:
        def op():
            with self.env.begin() as txn:
                return {name: txn.stat(db)["entries"]
                        for name, db in (("actions", self.ac), ("key_records", self.keys),
                                         ("file_digests", self.stat))}
        return self._run(op)


__all__ = ["Index", "SCHEMA", "safe_relpath"]
