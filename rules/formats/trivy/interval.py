"""Durations of Trivy's metadata.json (``update_interval = "24h"``).

Its own module because the Exportfile validator of trivy_db params runs at every build's analysis:
importing ``packaging.py`` there (OCI layouts, Go JSON, zlib-ng) cost ~8 ms of each no-op build.
"""
from __future__ import annotations

import re

_INTERVAL = re.compile(r"^(\d+)(s|m|h|d)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_interval(text: str) -> int:
    """Seconds in a duration such as ``"24h"``, ``"6h"``, ``"30m"`` or ``"7d"``; ValueError for
    anything else (zero included)."""
    m = _INTERVAL.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"not a positive duration like '24h' or '7d': {text!r}")
    return int(m.group(1)) * _UNIT[m.group(2)]
