"""Canonical JSON: UTF-8, sorted keys, no insignificant whitespace, RFC 8785 numbers.

Every JSON file stella-build writes (manifests, key records, JSONL evidence) goes through here, so
that equal values always give equal bytes. Strings use JSON.stringify escaping (only `"`, `\\` and
control characters are escaped), which is what `json.dumps(ensure_ascii=False)` produces.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

_encode = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


class CanonicalJSONError(ValueError):
    """A value that has no canonical JSON form (NaN, infinity, non-string keys, bytes...)."""


def format_number(x: float) -> str:
    """ECMAScript Number::toString, as RFC 8785 requires (shortest round-trip digits)."""
    if not math.isfinite(x):
        raise CanonicalJSONError(f"non-finite number {x!r} has no JSON form")
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    text = repr(abs(x))
    mantissa, _, exp_text = text.partition("e")
    exponent = int(exp_text) if exp_text else 0
    int_part, _, frac_part = mantissa.partition(".")
    digits = (int_part + frac_part).lstrip("0")
    # n = position of the decimal point relative to the first significant digit.
    point = len(int_part) + exponent - (len(int_part + frac_part) - len((int_part + frac_part).lstrip("0")))
    digits = digits.rstrip("0") or "0"
    k, n = len(digits), point
    if k <= n <= 21:
        out = digits + "0" * (n - k)
    elif 0 < n <= 21:
        out = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        exp = ("+" if e >= 0 else "-") + str(abs(e))
        out = digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + exp
    return sign + out


# The C encoder formats floats with float.__repr__, which is not RFC 8785. Non-integral floats are
# swapped for placeholder strings built around a lone surrogate (which no encodable string can
# contain) and replaced by their RFC 8785 text after encoding, keeping the fast C encoder.
_MARK = "\udfff"
_PLACEHOLDER = re.compile('"' + _MARK + r"(\d+)" + _MARK + '"')


def _prepare(obj: Any, numbers: list[str]) -> Any:
    """Copy of `obj` ready for the C encoder: floats become placeholders; keys are checked."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise CanonicalJSONError(f"object key {k!r} is not a string")
            if not k.isascii() and any(ord(c) > 0xFFFF for c in k):
                # RFC 8785 sorts by UTF-16 code units; code-point order differs only for astral
                # characters, which no format we write uses as keys. Refuse rather than mis-sort.
                raise CanonicalJSONError(f"object key {k!r} contains a non-BMP character")
            out[k] = _prepare(v, numbers)
        return out
    if isinstance(obj, (list, tuple)):
        return [_prepare(v, numbers) for v in obj]
    if isinstance(obj, float):
        if obj.is_integer() and abs(obj) < 2**53:
            return int(obj)
        numbers.append(format_number(obj))
        return f"{_MARK}{len(numbers) - 1}{_MARK}"
    if isinstance(obj, str):
        if _MARK in obj:
            raise CanonicalJSONError("string contains a lone surrogate and is not valid Unicode")
        return obj
    if obj is None or isinstance(obj, (int, bool)):
        return obj
    raise CanonicalJSONError(f"value of type {type(obj).__name__} has no JSON form")


def dumps(obj: Any) -> bytes:
    """Canonical JSON bytes of `obj`."""
    numbers: list[str] = []
    text = _encode(_prepare(obj, numbers))
    if numbers:
        text = _PLACEHOLDER.sub(lambda m: numbers[int(m.group(1))], text)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalJSONError(f"string is not valid Unicode: {exc}") from None


def dumps_line(obj: Any) -> bytes:
    """Canonical JSON plus a newline: one JSONL record."""
    return dumps(obj) + b"\n"


def dumps_str(obj: Any) -> str:
    return dumps(obj).decode("utf-8")
