"""The no-op memo: answer "nothing changed" without loading Exportfiles, pydantic or rules.

After a successful build the CLI writes a *no-op memo* into the cache: the stat signature (size,
mtime, inode, ctime) of every file and directory listing the analysis touched — found with a
`sys.addaudithook` hook on `open`, `os.listdir` and `os.scandir` events, so rules need no
cooperation — plus the engine and rule source files, every input and materialized output, the
relevant environment and the summary that was printed. A later build with the same command line
re-stats those paths; if all match it prints the stored summary (0 executed) and stops. Any
difference, or any doubt (a file modified within the last 2 s), falls back to a real build.

This module keeps the memo (record, check); the command line that decides when to use it is the
product's (stella_build/cli/entry.py). Only a hermetic build (no post-build step) is recorded.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

MEMO_DIR = "noop-memo"
_RACY_NS = 2_000_000_000
_touched: set[str] = set()
_collecting = False


def _hook(event: str, args: tuple) -> None:
    if not _collecting:
        return
    if event == "open":
        path = args[0]
        if isinstance(path, (str, bytes, os.PathLike)) and not isinstance(path, int):
            _touched.add(os.fsdecode(path))
    elif event in ("os.listdir", "os.scandir"):
        path = args[0] if args else "."
        if isinstance(path, (str, bytes, os.PathLike)) and not isinstance(path, int):
            _touched.add(os.fsdecode(path) + os.sep)  # trailing sep: a directory listing


def start_collecting() -> None:
    global _collecting
    if not _collecting:
        sys.addaudithook(_hook)
        _collecting = True


def stop_collecting() -> set[str]:
    global _collecting
    _collecting = False
    return set(_touched)


def _env_fingerprint() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k.startswith("STELLA_") or k in ("SOURCE_DATE_EPOCH", "XDG_CACHE_HOME")}
    if "COSIGN_PASSWORD" in os.environ:
        env["COSIGN_PASSWORD"] = hashlib.sha256(os.environ["COSIGN_PASSWORD"].encode()).hexdigest()
    return env


def memo_path(cache_dir: Path, workspace_root: str, argv: list[str]) -> Path:
    ident = json.dumps([workspace_root, argv, _env_fingerprint(), sys.version], sort_keys=True)
    return cache_dir / MEMO_DIR / (hashlib.sha256(ident.encode()).hexdigest()[:32] + ".json")


def _sig(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def _code_files(roots: list[Path]) -> list[str]:
    """Every source file (and directory) under the given code roots: a change means a real build."""
    out = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            out += [os.path.join(dirpath, f) for f in filenames if f.endswith(".py")]
            out.append(dirpath + os.sep)
    return out


def _relevant(paths: set[str], exclude: list[str]) -> list[str]:
    keep = []
    prefixes = (sys.prefix, sys.base_prefix, *exclude)  # str.startswith takes the tuple: one C call
    for p in paths:
        ap = os.path.abspath(p.rstrip(os.sep)) + (os.sep if p.endswith(os.sep) else "")
        if ap.endswith((".pyc", ".so")) or "__pycache__" in ap:
            continue
        if ap.startswith(prefixes):
            continue
        keep.append(ap)
    return keep


def record(memo: Path, touched: set[str], extra_files: list[str], exclude: list[str],
           summary_json: dict, summary_text: str, code_roots: list[Path]) -> None:
    """Write the memo, unless some path changed too recently to trust its mtime."""
    now = time.time_ns()
    sigs = {}
    for path in sorted(set(_relevant(touched, exclude)) | set(extra_files) | set(_code_files(code_roots))):
        sig = _sig(path.rstrip(os.sep) or os.sep)
        if sig is not None and now - max(sig[1], sig[3]) < _RACY_NS:
            return  # racy: a change within the timestamp granularity could go unseen
        sigs[path] = sig
    tmp = memo.with_suffix(f".tmp-{os.getpid()}")
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"paths": sigs, "json": summary_json, "text": summary_text}))
        os.replace(tmp, memo)
    except OSError:  # a full disk or a read-only cache: the memo is an optimisation, skip it
        tmp.unlink(missing_ok=True)


def try_noop(memo: Path, code_roots: list[Path]) -> dict | None:
    """The stored memo when every recorded path still has its recorded signature."""
    try:
        data = json.loads(memo.read_text())
    except (OSError, ValueError):
        return None
    for path, sig in data["paths"].items():
        if _sig(path.rstrip(os.sep) or os.sep) != sig:
            return None
    current = set(_code_files(code_roots))
    if not current <= set(data["paths"]):
        return None  # a new engine or rule file appeared
    return data
