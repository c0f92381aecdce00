"""The no-op fast path: answer "nothing changed" without loading Exportfiles, pydantic or rules.

After a successful build the CLI writes a *no-op memo* into the cache: the stat signature (size,
mtime, inode, ctime) of every file and directory listing the analysis touched — found with a
`sys.addaudithook` hook on `open`, `os.listdir` and `os.scandir` events, so rules need no
cooperation — plus the engine and rule source files, every input and materialized output, the
relevant environment and the summary that was printed. A later build with the same command line
re-stats those paths; if all match it prints the stored summary (0 executed) and stops. Any
difference, or any doubt (a file modified within the last 2 s), falls back to a real build.
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


def _code_files() -> list[str]:
    """Every source file of the engine and the built-in rules (a change means a real build)."""
    import importlib.util

    roots = [Path(__file__).resolve().parent]
    spec = importlib.util.find_spec("stella_build.rules")
    if spec and spec.submodule_search_locations:
        roots += [Path(p) for p in spec.submodule_search_locations]
    out = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            out += [os.path.join(dirpath, f) for f in filenames if f.endswith(".py")]
            out.append(dirpath + os.sep)
    return out


def _relevant(paths: set[str], exclude: list[str]) -> list[str]:
    keep = []
    prefixes = [sys.prefix, sys.base_prefix, *exclude]
    for p in paths:
        ap = os.path.abspath(p.rstrip(os.sep)) + (os.sep if p.endswith(os.sep) else "")
        if ap.endswith((".pyc", ".so")) or "__pycache__" in ap:
            continue
        if any(ap.startswith(x) for x in prefixes):
            continue
        keep.append(ap)
    return keep


def record(memo: Path, touched: set[str], extra_files: list[str], exclude: list[str],
           summary_json: dict, summary_text: str) -> None:
    """Write the memo, unless some path changed too recently to trust its mtime."""
    now = time.time_ns()
    sigs = {}
    for path in sorted(set(_relevant(touched, exclude)) | set(extra_files) | set(_code_files())):
        sig = _sig(path.rstrip(os.sep) or os.sep)
        if sig is not None and now - max(sig[1], sig[3]) < _RACY_NS:
            return  # racy: a change within the timestamp granularity could go unseen
        sigs[path] = sig
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"paths": sigs, "json": summary_json, "text": summary_text}))
    os.replace(tmp, memo)


def try_noop(memo: Path) -> dict | None:
    """The stored memo when every recorded path still has its recorded signature."""
    try:
        data = json.loads(memo.read_text())
    except (OSError, ValueError):
        return None
    for path, sig in data["paths"].items():
        if _sig(path.rstrip(os.sep) or os.sep) != sig:
            return None
    current = set(_code_files())
    if not current <= set(data["paths"]):
        return None  # a new engine or rule file appeared
    return data


# -- command-line plan --------------------------------------------------------------------------

ACTIVE: dict | None = None  # set by plan() when this process may record a memo
_VALUE_OPTS = {"--workspace", "--cache-dir", "-j", "--jobs", "--output", "--remote-cache", "--sign"}
_FLAG_OPTS = {"-q", "--quiet"}


def _workspace_root(explicit: str | None) -> str | None:
    if explicit:
        return str(Path(explicit).resolve())
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "stella-workspace.toml").is_file():
            return str(d)
        py = d / "pyproject.toml"
        if py.is_file():
            try:
                if "[tool.stella-build]" in py.read_text(encoding="utf-8"):
                    return str(d)
            except OSError:
                return None
    return None


def plan(argv: list[str]) -> dict | None:
    """For a plain `build` command line: where its memo lives and how to print; else None."""
    opts: dict[str, str] = {}
    patterns: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        key, eq, val = a.partition("=")
        if key in _VALUE_OPTS:
            if not eq:
                if i + 1 >= len(argv):
                    return None
                val = argv[i + 1]
                i += 1
            opts[key] = val
        elif a in _FLAG_OPTS:
            pass
        elif a == "build" and not patterns:
            pass
        elif a.startswith("//") or a.startswith(":"):
            patterns.append(a)
        else:
            return None  # anything else (--check, --debug, other commands): the normal path
        i += 1
    if not patterns or opts.get("--output", "text") not in ("text", "json"):
        return None
    root = _workspace_root(opts.get("--workspace"))
    if root is None:
        return None
    cache = opts.get("--cache-dir") or os.environ.get("STELLA_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "stella-build")
    ident = [patterns, opts.get("--sign"), opts.get("--remote-cache") or os.environ.get("STELLA_REMOTE_CACHE")]
    return {"memo": memo_path(Path(cache).resolve(), root, ident), "output": opts.get("--output", "text"),
            "cache": str(Path(cache).resolve()), "root": root}


def fast_main(argv: list[str]) -> int | None:
    """Print the stored summary and return 0 when nothing changed; None to run a real build."""
    global ACTIVE
    started = time.perf_counter()
    p = plan(argv)
    if p is None:
        return None
    data = try_noop(p["memo"])
    if data is None:
        ACTIVE = p
        start_collecting()
        return None
    elapsed = time.perf_counter() - started
    if p["output"] == "json":
        summary = dict(data["json"], duration_s=round(elapsed, 3), noop_memo=True)
        sys.stdout.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(data["text"].replace("{duration}", f"{elapsed:.2f}") + "\n")
    return 0
