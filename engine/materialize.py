"""Materialize target outputs into stella-out/<package>/<target>/, atomically.

The new tree is assembled next to the old one, from the CAS with every blob re-hashed, then swapped
in by rename, so readers never see a half-written output directory. A small state file lets a
no-op build skip the copy when every file is still what the cache says it is.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from stella_build.engine.cache.cas import Cas
from stella_build.engine.labels import Label

OUT_DIR = "stella-out"


def out_dir(root: Path, label: Label) -> Path:
    return root / OUT_DIR / label.package / label.name


def _state_path(root: Path, label: Label) -> Path:
    return root / OUT_DIR / label.package / f".{label.name}.stella-state.json"


def _unchanged(dest: Path, state_file: Path, files: dict[str, dict]) -> bool:
    try:
        state = json.loads(state_file.read_text())
    except (FileNotFoundError, ValueError):
        return False
    if set(state) != set(files):
        return False
    for rel, rec in files.items():
        try:
            st = os.stat(dest / rel)
        except FileNotFoundError:
            return False
        if state[rel] != [rec["blake3"], st.st_size, st.st_mtime_ns, st.st_ino] or st.st_size != rec["size"]:
            return False
    return True


def materialize(root: Path, label: Label, files: dict[str, dict], cas: Cas) -> list[str]:
    """Write `files` (rel path → {blake3, size, mode, src}) and return workspace-relative paths."""
    dest = out_dir(root, label)
    state_file = _state_path(root, label)
    rels = sorted(files)
    if not _unchanged(dest, state_file, files):
        parent = dest.parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".{label.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        for rel in rels:
            rec = files[rel]
            target = tmp / rel
            if rec.get("src"):  # a source file passed through unchanged
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(rec["src"], target)
                os.chmod(target, rec.get("mode", 0o644))
            else:
                cas.copy_out(rec["blake3"], target, rec.get("mode", 0o644))
        old = parent / f".{label.name}.old-{os.getpid()}"
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
        state = {}
        for rel in rels:
            st = os.stat(dest / rel)
            state[rel] = [files[rel]["blake3"], st.st_size, st.st_mtime_ns, st.st_ino]
        state_file.write_text(json.dumps(state, sort_keys=True))
    return [os.path.join(OUT_DIR, label.package, label.name, rel).replace(os.sep, "/") for rel in rels]
