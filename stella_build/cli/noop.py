"""The no-op memo on the command line: which command lines may use it, and answering from it.

A plain build command line (options.parse_plain_build) whose memo (engine/fastpath.py) still
matches prints the stored summary in a few milliseconds, before click, pydantic or any rule is
imported; anything else, or any doubt, runs the normal CLI, whose `build` records a new memo after a
hermetic no-op build (`ACTIVE_PLAN` says where).
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

ACTIVE_PLAN: dict | None = None  # set when this process may record a memo (read by build.py)


def code_roots() -> list[Path]:
    """The source directories of the product, the engine and the rules (a change: a real build)."""
    roots = []
    for name in ("stella_build", "stella_build.engine", "stella_build.rules"):
        spec = importlib.util.find_spec(name)
        if spec and spec.submodule_search_locations:
            roots += [Path(p).resolve() for p in spec.submodule_search_locations]
    return sorted(set(roots))


def plan(argv: list[str]) -> dict | None:
    """Where the memo of a plain build command line lives and how to print; None otherwise."""
    from stella_build.cli.options import parse_plain_build
    from stella_build.engine.cache import default_cache_dir
    from stella_build.engine.fastpath import memo_path
    from stella_build.engine.workspace import find_root, is_workspace_root

    parsed = parse_plain_build(argv)
    if parsed is None:
        return None
    glob, build = parsed["globals"], parsed["build"]
    if glob.get("workspace"):
        root = Path(str(glob["workspace"])).resolve()
        if not is_workspace_root(root):
            return None
    else:
        root = find_root()
        if root is None:
            return None
    cache = Path(str(glob["cache_dir"])).resolve() if glob.get("cache_dir") else default_cache_dir().resolve()
    resolved = {k: (v if v == "keyless" else str(Path(v).expanduser().resolve())) for k, v in sorted(build.items())}
    remote = glob.get("remote_cache") or os.environ.get("STELLA_REMOTE_CACHE")
    ident = [parsed["patterns"], resolved, remote, glob.get("remote_upload"), bool(glob.get("remote_required"))]
    return {"memo": memo_path(cache, str(root), ident), "output": glob.get("output", "text"),
            "cache": str(cache), "root": str(root)}


def fast_main(argv: list[str]) -> int | None:
    """Print the stored summary and return 0 when nothing changed; None to run the full CLI."""
    global ACTIVE_PLAN
    from stella_build.engine import fastpath

    started = time.perf_counter()
    p = plan(argv)
    if p is None:
        return None
    data = fastpath.try_noop(p["memo"], code_roots())
    if data is None:
        ACTIVE_PLAN = p
        fastpath.start_collecting()
        return None
    elapsed = time.perf_counter() - started
    if p["output"] == "json":
        summary = dict(data["json"], duration_s=round(elapsed, 3), noop_memo=True)
        sys.stdout.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(data["text"].replace("{duration}", f"{elapsed:.2f}") + "\n")
    return 0
