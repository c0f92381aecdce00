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

The *analysis memo* (`analysis-memo/`, same file names) is the step below it: when the no-op memo
misses (a source file changed, an output was removed), the analysed graph of the same command line
is reloaded from JSON (engine/graph.py) if every file and directory listing the analysis touched,
the engine and rule sources and the interpreter's loaded modules are unchanged. Keys are then
computed and cache hits checked as in any build, so a changed source file still runs its actions;
only Exportfile loading, pydantic validation and the rules' `analyze` are skipped (and with them
the import of pydantic and every rule module). A graph with secrets or a post-build step is never
stored (`graph.memoizable`).

Both memos also record the stat signature of every loaded module file and (on Linux) every mapped
shared library, so upgrading a byte-affecting library (zstandard, zlib-ng, SQLite) is a miss: its
version is part of the action keys.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import time
from pathlib import Path

MEMO_DIR = "noop-memo"
ANALYSIS_DIR = "analysis-memo"
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


class probing_stats:
    """Within this block, also collect the paths given to `os.stat` / `os.lstat` (and so to
    `os.path.exists`, `Path.is_file`...): analysis asks "is there a file here?" without opening
    it (mirror_delta's base candidates, optional base files), and a file that appears there later
    must be a real analysis. No audit event covers a stat, so the two functions are wrapped for
    the duration of the analysis only (the keys stat every source file afterwards)."""

    def __enter__(self) -> "probing_stats":
        self._saved = os.stat, os.lstat
        if _collecting:
            os.stat, os.lstat = _probe(os.stat), _probe(os.lstat)
        return self

    def __exit__(self, *exc) -> None:
        os.stat, os.lstat = self._saved


def _probe(fn):
    def probe(path, *args, **kwargs):
        if isinstance(path, (str, bytes, os.PathLike)) and not kwargs.get("dir_fd"):
            _touched.add(os.fsdecode(path) + PROBE)
        return fn(path, *args, **kwargs)
    return probe


# A path recorded only because it was stat'ed ends with PROBE (NUL is never in a path). What a
# stat answers in analysis is whether something is there and what it is, so such a path keeps
# only that (`_probe_sig`): `realpath` lstats every ancestor directory (/tmp, the repository
# root), whose times change with every file created beside the workspace.
PROBE = "\0"


def _probe_sig(path: str) -> list[int]:
    """[-1, lstat file type, stat file type] (0: absent); -1 marks it as a probe's signature."""
    try:
        lmode = stat.S_IFMT(os.lstat(path).st_mode)
    except OSError:
        return [-1, 0, 0]
    try:
        mode = stat.S_IFMT(os.stat(path).st_mode)
    except OSError:
        mode = 0
    return [-1, lmode, mode]


def _sig_of(path: str) -> list[int] | None:
    """The recorded signature of an entry: a probe's (`PROBE` suffix) or the full one."""
    if path.endswith(PROBE):
        return _probe_sig(path[:-1])
    return _sig(path.rstrip(os.sep) or os.sep)


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
           if k.startswith("STELLA_") or k in ("SOURCE_DATE_EPOCH", "XDG_CACHE_HOME", "HOME")}
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


def runtime_files() -> list[str]:
    """The files the interpreter runs: every loaded module's file and, where /proc/self/maps
    exists, every mapped shared library (SQLite, zstd, libz). A reinstalled package or an upgraded
    system library changes their signatures, and with them possibly the action keys."""
    files = {m.__file__ for m in list(sys.modules.values()) if isinstance(getattr(m, "__file__", None), str)}
    # the import path's directories themselves: installing or removing a distribution (a rule
    # plugin's entry point, an upgrade's new .dist-info) changes their listing
    files |= {p + os.sep for p in sys.path if p and os.path.isdir(p)}
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.rstrip("\n").split(maxsplit=5)[5:]
                if path and path[0].startswith("/") and ".so" in path[0] and not path[0].endswith(" (deleted)"):
                    files.add(path[0])
    except OSError:
        pass
    return sorted(os.path.abspath(f) + (os.sep if f.endswith(os.sep) else "") for f in files)


def _relevant(paths: set[str], exclude: list[str]) -> list[str]:
    keep = []
    # str.startswith takes the tuple: one C call; /proc and /dev are not files whose stat means anything
    # (each with its trailing separator: a workspace at /x/venv-data is not inside /x/venv)
    prefixes = tuple(p.rstrip(os.sep) + os.sep for p in (sys.prefix, sys.base_prefix, *exclude)) + ("/proc/", "/dev/")
    for p in paths:
        mark = PROBE if p.endswith(PROBE) else os.sep if p.endswith(os.sep) else ""
        ap = os.path.abspath(p.rstrip(PROBE).rstrip(os.sep) or os.sep)
        ap = ap + mark if ap != os.sep or mark == PROBE else ap
        if ap.endswith((".pyc", ".so")) or "__pycache__" in ap:
            continue
        if ap.startswith(prefixes):
            continue
        keep.append(ap)
    return keep


def _signatures(paths: set[str]) -> dict[str, list[int] | None] | None:
    """{path: signature} of `paths`, or None when one changed too recently to trust its mtime."""
    now = time.time_ns()
    sigs = {}
    for path in sorted(paths):
        sig = _sig_of(path)
        if sig is not None and sig[0] != -1 and now - max(sig[1], sig[3]) < _RACY_NS:
            return None  # racy: a change within the timestamp granularity could go unseen
        sigs[path] = sig
    return sigs


def _write(memo: Path, data: dict) -> None:
    tmp = memo.with_suffix(f".tmp-{os.getpid()}")
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        # 0600 whatever the umask: load_analysis ignores a memo others could have written
        tmp.unlink(missing_ok=True)  # (a leftover of a killed run with this pid)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, separators=(",", ":")))
        os.replace(tmp, memo)
    except OSError:  # a full disk or a read-only cache: the memo is an optimisation, skip it
        tmp.unlink(missing_ok=True)


def record(memo: Path, touched: set[str], extra_files: list[str], exclude: list[str],
           summary_json: dict, summary_text: str, code_roots: list[Path]) -> None:
    """Write the memo, unless some path changed too recently to trust its mtime."""
    sigs = _signatures(set(_relevant(touched, exclude)) | set(extra_files) | analysis_paths
                       | set(_code_files(code_roots)) | set(runtime_files()))
    if sigs is not None:
        _write(memo, {"paths": sigs, "json": summary_json, "text": summary_text})


def _still_valid(data: dict, code_roots: list[Path]) -> bool:
    for path, sig in data["paths"].items():
        if _sig_of(path) != sig:
            return False
    return set(_code_files(code_roots)) <= data["paths"].keys()  # else: a new engine or rule file


def _read_own(memo: Path) -> dict:
    """The memo's JSON, if this user wrote it and nobody else can change it (a cache directory
    may be shared: a graph names the files actions read and the functions they run, a summary
    says what is up to date). ValueError otherwise; OSError when unreadable."""
    with open(memo, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise ValueError(f"{memo}: not this user's, or writable by others")
        return json.loads(f.read())


def try_noop(memo: Path, code_roots: list[Path]) -> dict | None:
    """The stored memo when every recorded path still has its recorded signature."""
    try:
        data = _read_own(memo)
        return data if _still_valid(data, code_roots) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def analysis_memo_path(noop_memo: Path) -> Path:
    """The analysis memo of the command line whose no-op memo is `noop_memo`."""
    return noop_memo.parent.parent / ANALYSIS_DIR / noop_memo.name


# The paths the analysis of this build depends on (absolute; set by `note_analysis` or by
# `load_analysis`): both memos record them, and nothing under stella-out/ or the cache is left
# out of them (a `--base` may live there).
analysis_paths: set[str] = set()


def note_analysis(cache_dir: Path) -> set[str]:
    """Call right after a real analysis: what it touched so far becomes `analysis_paths` (but
    the memos themselves, which this process read and is about to rewrite)."""
    analysis_paths.clear()
    analysis_paths.update(_relevant(_touched, [str(cache_dir / MEMO_DIR), str(cache_dir / ANALYSIS_DIR)]))
    return analysis_paths


def record_analysis(memo: Path, graph, code_roots: list[Path]) -> bool:
    """Store `graph` (an engine.graph.BuildGraph) with the signatures of what its analysis
    touched (`note_analysis`); False when it may not be stored (secrets, post-build, a racy
    path)."""
    from stella_build.engine.graph import graph_to_json, memoizable

    if not memoizable(graph):
        return False
    sigs = _signatures(analysis_paths | set(_code_files(code_roots)) | set(runtime_files()))
    if sigs is None:
        return False
    _write(memo, {"paths": sigs, "graph": graph_to_json(graph)})
    return True


def load_analysis(memo: Path, code_roots: list[Path]):
    """The stored BuildGraph when nothing its analysis touched changed; None otherwise (no memo,
    a changed path, an unreadable or malformed file: every doubt is a real analysis)."""
    from stella_build.engine.errors import StellaError
    from stella_build.engine.graph import graph_from_json

    try:
        data = _read_own(memo)
        if not _still_valid(data, code_roots):
            return None
        graph = graph_from_json(data["graph"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, StellaError):
        return None
    # the analysis did not run in this process, so its reads were not collected: a no-op memo
    # recorded after this build must depend on the same paths (a new file in a globbed directory
    # must be seen by both memos)
    analysis_paths.clear()
    analysis_paths.update(data["paths"])
    return graph
