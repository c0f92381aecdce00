"""Materialize target outputs into stella-out/<package>/<target>/, atomically.

The new tree is assembled next to the old one (`.<target>.tmp-<pid>`), from the CAS with every
blob re-hashed, then swapped in by rename (the old tree goes to `.<target>.old-<pid>` for the
moment of the swap), so readers never see a half-written output directory. On every error path
(a corrupt blob, a full disk, an interrupt) the temp tree is removed and the previous output is
left in place; leftovers of a process killed mid-swap are removed by the next materialize of the
same target. A small state file lets a no-op build skip the copy when every file is still what
the cache says it is.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from stella_build.engine.cache.cas import Cas
from stella_build.engine.cache.index import safe_relpath
from stella_build.engine.cache.storage import storage_error
from stella_build.engine.errors import BuildFailed
from stella_build.engine.fsutil import write_atomic
from stella_build.engine.labels import Label

OUT_DIR = "stella-out"


def out_dir(root: Path, label: Label) -> Path:
    return root / OUT_DIR / label.package / label.name


def _state_path(root: Path, label: Label) -> Path:
    return root / OUT_DIR / label.package / f".{label.name}.stella-state.json"


def _unchanged(dest: Path, state_file: Path, files: dict[str, dict]) -> bool:
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError, RecursionError):  # missing, unreadable or not sane JSON
        return False
    if not isinstance(state, dict) or set(state) != set(files):
        return False
    base = f"{dest}{os.sep}"  # string joins: a no-op build checks every output file (~900)
    for rel, rec in files.items():
        try:
            st = os.stat(base + rel)
        except OSError:
            return False
        if state[rel] != [rec["blake3"], st.st_size, st.st_mtime_ns, st.st_ino] or st.st_size != rec["size"]:
            return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _sweep_leftovers(parent: Path, name: str) -> None:
    """Remove `.<name>.tmp-<pid>` / `.<name>.old-<pid>` of processes that no longer run (killed
    between assembling and swapping); a live process's are its own business."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for entry in entries:
        for kind in (".tmp-", ".old-"):
            prefix = f".{name}{kind}"
            if entry.name.startswith(prefix) and entry.name[len(prefix):].isdigit():
                pid = int(entry.name[len(prefix):])
                if pid == os.getpid() or not _pid_alive(pid):
                    shutil.rmtree(entry.path, ignore_errors=True)


def _assemble(tmp: Path, files: dict[str, dict], rels: list[str], cas: Cas) -> None:
    for rel in rels:
        rec = files[rel]
        target = tmp / rel
        if rec.get("src"):  # a source file passed through unchanged
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copyfile(rec["src"], target)
            except FileNotFoundError:
                if os.path.exists(rec["src"]):
                    raise
                raise BuildFailed(f"input changed while the build was running: {rec['src']} is gone",
                                  file=rec["src"], reason="input-changed") from None
            os.chmod(target, rec.get("mode", 0o644))
        else:
            cas.copy_out(rec["blake3"], target, rec.get("mode", 0o644))


def materialize(root: Path, label: Label, files: dict[str, dict], cas: Cas) -> list[str]:
    """Write `files` (rel path → {blake3, size, mode, src}) to stella-out/<package>/<target>/ and
    return their workspace-relative paths.

    Raises CorruptBlob (a blob failed its re-hash and was removed: the caller rebuilds it),
    StorageError (full disk / I/O error, naming the path) or BuildFailed (`output-path-invalid`:
    a path that would leave the output directory). Whatever it raises, no `.tmp-*`/`.old-*`
    directory is left and the previous output directory is still in place."""
    for rel in files:
        if not safe_relpath(rel):
            raise BuildFailed(f"refusing to write output {rel!r}: it would leave {out_dir(root, label)}",
                              target=str(label), field="outputs", reason="output-path-invalid")
    dest = out_dir(root, label)
    state_file = _state_path(root, label)
    rels = sorted(files)
    if not _unchanged(dest, state_file, files):
        parent = dest.parent
        tmp = parent / f".{label.name}.tmp-{os.getpid()}"
        old = parent / f".{label.name}.old-{os.getpid()}"
        try:
            parent.mkdir(parents=True, exist_ok=True)
            _sweep_leftovers(parent, label.name)
            _assemble(tmp, files, rels, cas)
            if dest.exists():
                os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
            state = {}
            for rel in rels:
                st = os.stat(dest / rel)
                state[rel] = [files[rel]["blake3"], st.st_size, st.st_mtime_ns, st.st_ino]
            write_atomic(state_file, json.dumps(state, sort_keys=True).encode())
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if old.exists() and not dest.exists():  # failed between the two renames: undo
                os.replace(old, dest)
            shutil.rmtree(old, ignore_errors=True)
            # No rule code runs here: any other OSError is the output filesystem refusing a write.
            if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
                raise storage_error(exc, exc.filename or parent, "output") from None
            raise
    return [os.path.join(OUT_DIR, label.package, label.name, rel).replace(os.sep, "/") for rel in rels]
