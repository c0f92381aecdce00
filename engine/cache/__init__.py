"""The local cache: an LMDB index (index.py) plus a content-addressed blob store (cas.py)."""
from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    if os.environ.get("STELLA_CACHE_DIR"):
        return Path(os.environ["STELLA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "stella-build"
