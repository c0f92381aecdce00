"""Hermetic execution of one action in a worker process.

Each action gets a fresh directory `<cache>/sandbox/<id>/` with its declared inputs copied in
read-only (`in/`), an empty `out/`, and a scrubbed process state: TZ=UTC, LC_ALL=C.UTF-8, umask
022, HOME pointing nowhere, PYTHONHASHSEED=0, cwd = sandbox. Inputs are re-hashed while staged, so
a source edited mid-build or a corrupt cache blob fails the action instead of poisoning the cache.
Outputs are hashed and moved into the CAS by the worker; the parent writes the index entry.

Inputs are staged lazily (`LazyInputs`): a file is copied and re-hashed the first time the action
asks for it (a tree input: all its files at once), so an action that replays most of its records
from the per-record memo by their digests (`ActionContext.input_digest`) never reads the
unchanged ones. That keeps the hermetic guarantee: the action sees only declared inputs, every byte
it reads is checked against the digest its key names, and a result it computes from a digest
alone is by construction the result for those bytes. Staging failures are raised as
`InputChanged` / `CorruptInput` / `StorageError`, never as OSError, so a rule that handles OSError
for its own reasons cannot swallow them.
"""
from __future__ import annotations

import errno
import importlib
import io
import os
import shutil
import stat
import time
import traceback
from pathlib import Path
from collections.abc import Iterator, Mapping
from typing import Any

import blake3

from stella_build.engine.cache.cas import Cas
from stella_build.engine.cache.storage import StorageError, is_storage_errno, storage_error
from stella_build.engine.encode.digest import file_digests
from stella_build.engine.errors import ActionError, InputTooLarge
from stella_build.engine.rule_api import ActionContext

SCRUBBED_ENV = {
    "TZ": "UTC",
    "LC_ALL": "C.UTF-8",
    "LANG": "C.UTF-8",
    "PYTHONHASHSEED": "0",
    "HOME": "/nonexistent",
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "PYTHONDONTWRITEBYTECODE": "1",
}
_CHUNK = 1 << 20


def worker_init() -> None:
    """Process initializer: pin the state every action would otherwise inherit; Ctrl-C (SIGINT to
    the terminal's process group) ends the worker quietly (`_interrupted`)."""
    import signal

    os.environ.clear()
    os.environ.update(SCRUBBED_ENV)
    time.tzset()
    os.umask(0o022)
    signal.signal(signal.SIGINT, _interrupted)


def _interrupted(signum, frame) -> None:
    """SIGINT in a worker: SystemExit, not KeyboardInterrupt. In an action it unwinds the same
    way (sandbox cleanup in `finally`, the pool hands it to the parent, which is stopping on its
    own Ctrl-C); in an idle worker it ends the process with status 130 and no traceback (the CLI
    promises none without --debug)."""
    raise SystemExit(130)


class InputChanged(Exception):
    pass


class CorruptInput(Exception):
    """A cache blob staged as input does not hash to its name (bit rot, tampering)."""


def _open_source(src: str) -> int:
    """A read-only descriptor of `src`; InputChanged / StorageError, never OSError."""
    try:
        # O_NOFOLLOW: a source replaced by a symlink after analysis checked it is never followed
        # O_NONBLOCK: a FIFO swapped in would otherwise block open() (and the build) forever
        fd = os.open(src, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputChanged(f"{src} became a symbolic link") from None
        if is_storage_errno(exc):
            raise storage_error(exc, Path(src), "action input") from None
        # vanished or unreadable since analysis hashed it: the input changed under the build
        raise InputChanged(f"{src} ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InputChanged(f"{src} is no longer a regular file")
    os.set_blocking(fd, True)
    return fd


def _digest_mismatch(src: str, expected: str, cas_root: Path | None) -> Exception:
    if cas_root is not None and Path(src).parent.parent == cas_root:
        Path(src).unlink(missing_ok=True)  # never serve it again
        return CorruptInput(expected)
    return InputChanged(src)


def _read_file(name: str, src: str, expected: str, cas_root: Path | None, limit: int | None) -> bytes:
    """The bytes of `src` once they hash to `expected`, without a copy in the sandbox. A file
    larger than `limit` is hashed in chunks (bounded memory) and refused with InputTooLarge."""
    fd = _open_source(src)
    try:
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            h = blake3.blake3()
            if limit is None or size <= limit:
                data = f.read() if limit is None else f.read(limit + 1)
                if limit is None or len(data) <= limit:
                    if blake3.blake3(data).hexdigest() != expected:
                        raise _digest_mismatch(src, expected, cas_root)
                    return data
                h.update(data)  # it grew past the limit while being read
                size = len(data)
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as exc:  # a rule must never see (and perhaps swallow) an OSError of reading
        if is_storage_errno(exc):
            raise storage_error(exc, Path(src), "action input") from None
        raise InputChanged(f"{src} ({exc.strerror})") from None
    if h.hexdigest() != expected:
        raise _digest_mismatch(src, expected, cas_root)
    raise InputTooLarge(name, size, limit)


class _VerifiedStream(io.RawIOBase):
    """A file input read as a stream from its source, hashed as it goes; the digest is compared
    with the key's when the stream reaches its end or is closed (the rest is read and hashed
    then), raising InputChanged / CorruptInput. An action whose input changed therefore fails
    before its outputs are recorded, whatever part of the stream it used."""

    def __init__(self, name: str, src: str, expected: str, cas_root: Path | None, on_fail=None):
        self._src, self._expected, self._cas_root = src, expected, cas_root
        self._on_fail = on_fail or (lambda exc: exc)
        self._f = os.fdopen(_open_source(src), "rb", buffering=0)
        self._h = blake3.blake3()
        self._checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            n = self._f.readinto(buffer)
        except OSError as exc:  # never an OSError a rule might catch for its own reasons
            if is_storage_errno(exc):
                raise storage_error(exc, Path(self._src), "action input") from None
            raise self._on_fail(InputChanged(f"{self._src} ({exc.strerror})")) from None
        if n and self._checked:  # the source grew past the end its digest was checked at
            raise self._on_fail(InputChanged(f"{self._src} grew while read"))
        if n:
            self._h.update(memoryview(buffer)[:n])
        else:
            self._check()
        return n

    def _check(self) -> None:
        if not self._checked:
            self._checked = True
            if self._h.hexdigest() != self._expected:
                raise self._on_fail(_digest_mismatch(self._src, self._expected, self._cas_root))

    def close(self) -> None:
        if self.closed:
            return
        try:
            if not self._checked:
                while self.readinto(bytearray(_CHUNK)):
                    pass
                self._check()
        finally:
            self._f.close()
            super().close()


def _stage_file(src: str, dest: Path, expected: str, cas_root: Path | None = None) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, dest.parent, "action sandbox") from None
    h = blake3.blake3()
    fd = _open_source(src)
    try:
        with os.fdopen(fd, "rb") as f, open(dest, "wb") as out:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
    except OSError as exc:  # a rule must never see (and perhaps swallow) an OSError of staging
        if is_storage_errno(exc):
            raise storage_error(exc, dest, "action sandbox") from None
        raise InputChanged(f"{src} ({exc.strerror})") from None
    if h.hexdigest() != expected:
        raise _digest_mismatch(src, expected, cas_root)
    os.chmod(dest, 0o444)


class LazyInputs(Mapping[str, Path]):
    """name → staged path of an action's inputs, each staged (copied, re-hashed, made read-only)
    on first access; a tree input (its root name) stages all its member files at once.

    `entries`: (sandbox name, source path, blake3 hex, tree root or None) as in the task;
    `digest(name)` → the BLAKE3 hex of a file input without staging it (None for a tree)."""

    def __init__(self, sandbox: Path, entries: list, cas_root: Path | None):
        self._in = sandbox / "in"
        self._cas_root = cas_root
        self._pending: dict[str, list[tuple[str, str, str]]] = {}
        self._digests: dict[str, str] = {}
        self._ready: dict[str, Path] = {}
        for name, src, digest, tree_root in entries:
            self._pending.setdefault(tree_root or name, []).append((name, src, digest))
            if not tree_root:
                self._digests[name] = digest
        self._order = list(self._pending)
        self._streams: list[io.BufferedReader] = []
        # the first InputChanged/CorruptInput any read raised: an action that caught it (a broad
        # `except`, a generator finalized by GC) must still fail (close_all re-raises it)
        self._failure: Exception | None = None
        self._staged: dict[str, list[tuple[str, str, str]]] = {}  # key → its members once staged

    def _fail(self, exc: Exception) -> Exception:
        if self._failure is None:
            self._failure = exc
        return exc

    def __getitem__(self, key: str) -> Path:
        path = self._ready.get(key)
        if path is not None:
            return path
        files = self._pending.pop(key)  # KeyError: not a declared input
        self._staged[key] = files
        try:
            for name, src, digest in files:
                _stage_file(src, self._in / name, digest, self._cas_root)
        except (InputChanged, CorruptInput) as exc:
            raise self._fail(exc) from None
        path = self._ready[key] = self._in / key
        return path

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, key: object) -> bool:
        return key in self._pending or key in self._ready

    def digest(self, name: str) -> str | None:
        return self._digests.get(name)

    def read(self, name: str, limit: int | None = None) -> bytes:
        """The bytes of file input `name`, checked against its digest, read from its source
        without staging a copy (creating a file costs 0.1–1 ms, a shard action reads thousands);
        the staged copy when it was staged already. InputTooLarge past `limit` bytes;
        KeyError for an undeclared or tree input."""
        if name not in self._digests:
            raise KeyError(name)
        if name in self._ready:  # staged already: the checked copy (its source may change since)
            src, digest, cas_root = str(self._ready[name]), self._digests[name], None
        else:
            (_, src, digest), = self._pending[name]
            cas_root = self._cas_root
        try:
            return _read_file(name, src, digest, cas_root, limit)
        except (InputChanged, CorruptInput) as exc:
            raise self._fail(exc) from None

    def open(self, name: str, buffer_size: int = 1 << 16) -> io.BufferedReader:
        """File input `name` as a buffered binary stream read from its source without a staged
        copy; its digest is checked at its end, at `close()`, and at the latest by `close_all`
        when the action returns (InputChanged / CorruptInput). KeyError for a tree or an
        undeclared input."""
        if name not in self._digests:
            raise KeyError(name)
        if name in self._ready:
            src, cas_root = str(self._ready[name]), None
        else:
            (_, src, _), = self._pending[name]
            cas_root = self._cas_root
        try:
            raw = _VerifiedStream(name, src, self._digests[name], cas_root, self._fail)
        except (InputChanged, CorruptInput) as exc:  # sticky, as for every other read
            raise self._fail(exc) from None
        stream = io.BufferedReader(raw, buffer_size)
        self._streams.append(stream)
        return stream

    def close_all(self) -> None:
        """Close (and so check) every stream `open` gave that the action left open."""
        streams, self._streams = self._streams, []
        for stream in streams:
            try:
                stream.close()
            except (InputChanged, CorruptInput) as exc:
                self._fail(exc)
        if self._failure is not None:
            raise self._failure

    def read_tree(self, key: str) -> list[tuple[str, bytes]]:
        """Sorted (path relative to the tree, bytes) of tree input `key`, each file checked
        against its digest and read without a staged copy (the staged copies when it was
        staged already). KeyError when `key` is not a tree input."""
        if key in self._digests:
            raise KeyError(key)
        # the declared members only, each checked (a staged tree's directory may have gained files)
        members = ([(name, str(self._in / name), digest, None) for name, _, digest in self._staged[key]]
                   if key in self._ready else [(n, src, d, self._cas_root) for n, src, d in self._pending[key]])
        try:
            found = [(name[len(key):].lstrip("/"), _read_file(name, src, digest, cas_root, None))
                     for name, src, digest, cas_root in members]
        except (InputChanged, CorruptInput) as exc:
            raise self._fail(exc) from None
        return sorted(found, key=lambda t: t[0].encode())

    def stage_all(self) -> None:
        """Stage every input not staged yet (benchmarks and tests that want the eager layout)."""
        for key in list(self._pending):
            self[key]


def _collect_outputs(out_dir: Path) -> list[tuple[str, Path]]:
    found = []
    for dirpath, dirnames, filenames in os.walk(out_dir):
        dirnames.sort()
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                raise ActionError(f"output {path.relative_to(out_dir)} is not a regular file")
            found.append((path.relative_to(out_dir).as_posix(), path))
    return sorted(found)


def _check_declared(outputs: list[tuple[str, Path]], declared: list[str]) -> None:
    files = {name for name, _ in outputs}
    for name in files:
        if name not in declared and not any(d.endswith("/") and name.startswith(d) for d in declared):
            raise ActionError(f"action wrote undeclared output {name!r}")
    for d in declared:
        if not d.endswith("/") and d not in files:
            raise ActionError(f"action did not write its declared output {d!r}")


def run_action(task: dict[str, Any]) -> dict[str, Any]:
    """Execute one action; returns {"outputs": [...], "stats": {...}} or {"error": {...}}.

    task keys: id, label, fn, params, source_date_epoch, outputs, cache_dir, sandbox_name,
    inputs: list of [sandbox name, source path, blake3, is_tree_member], mode: "build"|"check",
    expected (check mode): {output name: blake3}.
    """
    cache_dir = Path(task["cache_dir"])
    sandbox = cache_dir / "sandbox" / task["sandbox_name"]
    if sandbox.exists():
        shutil.rmtree(sandbox, ignore_errors=True)
    started = time.perf_counter()
    try:
        (sandbox / "out").mkdir(parents=True)
        os.chdir(sandbox)
        inputs = LazyInputs(sandbox, task["inputs"], cache_dir / "cas")
        module_name, _, func_name = task["fn"].partition(":")
        fn = getattr(importlib.import_module(module_name), func_name)
        actx = ActionContext(action_id=task["id"], label=task["label"], sandbox=sandbox,
                             params=task["params"], source_date_epoch=task["source_date_epoch"],
                             inputs=inputs, secrets=task.get("secrets") or {},
                             memo_cache=cache_dir if task.get("mode", "build") == "build" else None,
                             libraries=task.get("libraries") or {})
        try:
            stats = fn(actx) or {}
        finally:
            inputs.close_all()  # an input stream the action did not finish is checked now
        outputs = _collect_outputs(sandbox / "out")
        _check_declared(outputs, task["outputs"])
        records = []
        cas = Cas(cache_dir)
        for name, path in outputs:
            b3, sha, size = file_digests(path)
            mode = 0o755 if os.stat(path).st_mode & 0o111 else 0o644
            records.append({"path": name, "blake3": b3, "sha256": sha, "size": size, "mode": mode})
            if task["mode"] == "build":
                cas.adopt(path, b3, size)
        result: dict[str, Any] = {"outputs": records, "stats": stats,
                                  "seconds": round(time.perf_counter() - started, 4)}
        if task["mode"] == "check":
            result["differences"] = _differences(cas, task["expected"], records, sandbox / "out")
        return result
    except ActionError as exc:
        return {"error": {"message": exc.message, "file": exc.file, "field": exc.field,
                          "reason": exc.reason or "action-failed"}}
    except CorruptInput as exc:
        return {"error": {"message": f"cached input blob {str(exc)[:16]}… was corrupt and has been "
                                     "removed", "file": None, "field": None, "corrupt_blob": str(exc),
                          "reason": "cache-corrupt"}}
    except InputChanged as exc:
        return {"error": {"message": f"input changed while the build was running: {exc}",
                          "file": str(exc), "field": None, "reason": "input-changed"}}
    except StorageError as exc:  # the cache's filesystem is full or failing: not a rule bug
        return {"error": _storage_error_dict(exc)}
    except Exception as exc:
        if is_storage_errno(exc):  # ENOSPC/EIO while staging or while the rule wrote its outputs
            return {"error": _storage_error_dict(storage_error(exc, sandbox, "action sandbox"))}
        # a rule bug: keep the traceback for --debug
        return {"error": {"message": f"{type(exc).__name__}: {exc}", "file": None, "field": None,
                          "traceback": traceback.format_exc(), "reason": "rule-bug"}}
    finally:
        os.chdir(cache_dir)
        _remove_tree(sandbox)


def _storage_error_dict(exc: StorageError) -> dict[str, Any]:
    info = exc.errors[0]
    return {"message": info.message, "file": info.file, "field": None, "reason": info.reason}


def _differences(cas: Cas, expected: dict[str, str], records: list[dict], out_dir: Path) -> list[dict]:
    diffs = []
    got = {r["path"]: r["blake3"] for r in records}
    for name in sorted(set(expected) | set(got)):
        if expected.get(name) == got.get(name):
            continue
        entry = {"path": name, "expected": expected.get(name), "actual": got.get(name), "offset": None}
        if name in expected and name in got:
            try:
                old = cas.read_verified(expected[name])
                new = (out_dir / name).read_bytes()
                entry["offset"] = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b),
                                       min(len(old), len(new)))
            except Exception:  # the cached blob is gone or corrupt: report without an offset
                pass
        diffs.append(entry)
    return diffs


def _remove_tree(path: Path) -> None:
    def onerror(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o755)
            os.chmod(p, 0o755)
            func(p)
        except OSError:
            pass
    for dirpath, _, _ in os.walk(path):
        try:
            os.chmod(dirpath, 0o755)
        except OSError:
            pass
    shutil.rmtree(path, onerror=onerror)
