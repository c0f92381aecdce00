"""Timestamps derived from SOURCE_DATE_EPOCH, never from the wall clock."""
from __future__ import annotations

import calendar
import time


def rfc3339(epoch_seconds: int) -> str:
    """RFC 3339 UTC with a 'Z' suffix and whole seconds, e.g. 2025-01-01T00:00:00Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch_seconds)))


def parse_rfc3339(text: str) -> int:
    """Seconds since the epoch of an RFC 3339 timestamp (fractions dropped, offsets honoured)."""
    from datetime import datetime

    value = text.strip().replace("z", "Z")
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        return calendar.timegm(dt.timetuple())
    return int(dt.timestamp())
