"""JSON bytes exactly as Go's ``encoding/json`` writes them (Go >= 1.22, as used by trivy-db).

Facts: /work/shared/docs/reference/trivy-db-format.md §A.4, checked against Go 1.26 output.
- No whitespace; strings are UTF-8 (non-ASCII raw), with Go's HTML-safe escaping: ``<`` ``>``
  ``&`` become ``\\u003c`` ``\\u003e`` ``\\u0026``; U+2028/U+2029 become ``\\u2028``/``\\u2029``;
  ``\\b \\f \\n \\r \\t`` use the short escapes (Go < 1.22 wrote \\u0008 and \\u000c; trivy-db
  builds with Go >= 1.23); other control characters become ``\\u00XX``; DEL (0x7f) stays raw;
  unpaired surrogates (Python's stand-in for invalid UTF-8) become ``\\ufffd``.
- float64 uses the shortest round-trip digits; exponent form only for |x| < 1e-6 or >= 1e21,
  written ``1e-7`` / ``1e+21`` (Go trims ``e-07`` to ``e-7``); -0.0 is ``-0``; NaN/Inf are errors.
- A Python dict is a Go *struct*: its insertion order is the field order. ``sort_keys=True``
  treats every dict as a Go map (keys sorted bytewise, i.e. by code point); a ``GoMap`` is
  always sorted. ``float64_numbers=True`` formats ints as float64, reproducing a value that went
  through ``map[string]any`` (trivy-db marshals advisories that way, §A.4 "marshalled twice").
- ``bytes`` are base64 (Go ``[]byte``); ``datetime`` is RFC 3339 with trimmed nanoseconds.
"""
from __future__ import annotations

import base64
import math
import re
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from typing import Any

__all__ = ["GoMap", "go_marshal", "go_float", "go_string", "go_time", "omit_empty",
           "trivy_metadata_json", "ZERO_TIME"]

ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's time.Time{} in JSON
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_NS = 10 ** 9


class GoMap(dict):
    """A dict that is always encoded like a Go map: keys sorted, whatever ``sort_keys`` says."""


_ESCAPES = {
    '"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
    "<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029",
}
for _c in range(0x20):
    _ESCAPES.setdefault(chr(_c), f"\\u{_c:04x}")
_NEEDS_ESCAPE = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029\ud800-\udfff]')


def _escape(m: re.Match) -> str:
    c = m.group()
    return _ESCAPES.get(c, "\\ufffd")  # only unpaired surrogates are missing from the table


def go_string(s: str) -> str:
    """A Go JSON string literal (with quotes) for ``s``."""
    if _NEEDS_ESCAPE.search(s) is None:
        return f'"{s}"'
    return '"' + _NEEDS_ESCAPE.sub(_escape, s) + '"'


def go_float(f: float) -> str:
    """``f`` formatted like Go's encoding/json float64 encoder."""
    if math.isnan(f) or math.isinf(f):
        raise ValueError(f"json: unsupported value: {f!r} (Go cannot encode NaN or Inf)")
    if f == 0:
        return "-0" if math.copysign(1.0, f) < 0 else "0"
    d = Decimal(repr(float(f))).normalize()  # shortest round-trip digits, exactly
    a = abs(f)
    if 1e-6 <= a < 1e21:
        return format(d, "f")
    sign, digits, exp = d.as_tuple()
    mant = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
    e = exp + len(digits) - 1
    return ("-" if sign else "") + mant + "e" + ("+" if e >= 0 else "-") + \
        (f"{abs(e):02d}" if e >= 0 else str(abs(e)))


def go_time(t: int | float | Decimal | Fraction | datetime) -> str:
    """RFC 3339 UTC with nanoseconds, trailing zeros trimmed (Go time.Time JSON, RFC3339Nano).

    ``t`` is seconds since the Unix epoch (floats are taken at their shortest decimal value and
    rounded to whole nanoseconds) or a datetime (naive means UTC).
    """
    if isinstance(t, datetime):
        if t.tzinfo is not None:
            t = t.astimezone(timezone.utc).replace(tzinfo=None)
        delta = t - datetime(1970, 1, 1)
        total_ns = (delta.days * 86400 + delta.seconds) * _NS + delta.microseconds * 1000
    elif isinstance(t, bool):
        raise TypeError("go_time() takes seconds or a datetime, not bool")
    elif isinstance(t, int):
        total_ns = t * _NS
    else:
        exact = Decimal(repr(t)) if isinstance(t, float) else Decimal(t) if isinstance(
            t, Decimal) else Decimal(t.numerator) / Decimal(t.denominator)
        if not exact.is_finite():
            raise ValueError(f"go_time(): not a finite time: {t!r}")
        total_ns = int((exact * _NS).to_integral_value(rounding=ROUND_HALF_EVEN))
    secs, ns = divmod(total_ns, _NS)
    try:
        dt = _EPOCH + timedelta(seconds=secs)
    except OverflowError:
        raise ValueError(f"go_time(): year outside [1, 9999]: {t!r}") from None
    if not 1 <= dt.year <= 9999:  # Go's MarshalJSON refuses years outside [0, 9999]
        raise ValueError(f"go_time(): year outside [1, 9999]: {t!r}")
    frac = f".{ns:09d}".rstrip("0") if ns else ""
    return (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T"
            f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}{frac}Z")


def _map_key(k: Any) -> str:
    if isinstance(k, str):
        return k
    if isinstance(k, int) and not isinstance(k, bool):  # Go map[int]T keys become strings
        return str(k)
    raise TypeError(f"json: unsupported map key type {type(k).__name__}")


def go_marshal(obj: Any, sort_keys: bool = False, float64_numbers: bool = False) -> bytes:
    """``json.Marshal(obj)`` bytes; see the module docstring for the Python ↔ Go mapping."""
    out: list[str] = []
    _encode(obj, out, sort_keys, float64_numbers)
    return "".join(out).encode("utf-8")


def _encode(o: Any, out: list[str], sort_keys: bool, f64: bool) -> None:
    t = type(o)
    if t is str:
        out.append(go_string(o))
    elif o is None:
        out.append("null")
    elif o is True:
        out.append("true")
    elif o is False:
        out.append("false")
    elif t is int:
        out.append(go_float(float(o)) if f64 else str(o))
    elif t is float:
        out.append(go_float(o))
    elif isinstance(o, dict):
        out.append("{")
        if sort_keys or isinstance(o, GoMap):
            pairs = sorted((_map_key(k), v) for k, v in o.items())
        else:
            pairs = [(_map_key(k), v) for k, v in o.items()]
        first = True
        for k, v in pairs:
            if not first:
                out.append(",")
            first = False
            out.append(go_string(k))
            out.append(":")
            _encode(v, out, sort_keys, f64)
        out.append("}")
    elif isinstance(o, (list, tuple)):
        out.append("[")
        for i, v in enumerate(o):
            if i:
                out.append(",")
            _encode(v, out, sort_keys, f64)
        out.append("]")
    elif isinstance(o, (bytes, bytearray, memoryview)):
        out.append('"' + base64.b64encode(bytes(o)).decode("ascii") + '"')
    elif isinstance(o, datetime):
        out.append('"' + go_time(o) + '"')
    elif isinstance(o, str):
        out.append(go_string(str(o)))
    elif isinstance(o, int):  # int subclasses (IntEnum)
        out.append(go_float(float(o)) if f64 else str(int(o)))
    elif isinstance(o, float):
        out.append(go_float(float(o)))
    else:
        raise TypeError(f"json: unsupported type {t.__name__}")


def omit_empty(fields: dict) -> dict:
    """Drop Go-``omitempty`` values (None, False, 0, 0.0, "", empty list/tuple/dict).

    The result keeps the insertion (struct field) order; a GoMap stays a GoMap.
    """
    kept = ((k, v) for k, v in fields.items()
            if not (v is None or v is False or (type(v) in (int, float) and v == 0)
                    or (isinstance(v, (str, list, tuple, dict)) and len(v) == 0)))
    return GoMap(kept) if isinstance(fields, GoMap) else dict(kept)


def trivy_metadata_json(version: int, updated_at: int, next_update: int,
                        downloaded_at: int | None = None) -> bytes:
    """metadata.json as trivy-db / trivy-java-db write it (json.Encoder: trailing newline).

    Struct order Version (omitempty), NextUpdate, UpdatedAt, DownloadedAt; times in seconds since
    the epoch (UTC); ``downloaded_at=None`` is Go's zero time.
    """
    meta: dict = {}
    if version:
        meta["Version"] = int(version)
    meta["NextUpdate"] = go_time(next_update)
    meta["UpdatedAt"] = go_time(updated_at)
    meta["DownloadedAt"] = ZERO_TIME if downloaded_at is None else go_time(downloaded_at)
    return go_marshal(meta) + b"\n"
