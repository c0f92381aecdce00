"""Action keys: the canonical key record of an action and its BLAKE3 digest.

The key record names everything that can change an action's output bytes (design §3). It is
stored beside the result so `explain` can diff two records field by field.
"""
from __future__ import annotations

import itertools
import json
import operator
import sys
from typing import Any

import blake3

from stella_build.engine.closure import import_closure, implementation_digest  # noqa: F401 (re-exported)
from stella_build.engine.encode import canonical_json
from stella_build.engine.rule_api import ActionSpec

CACHE_SCHEMA = 1


def key_record(spec: ActionSpec, input_digests: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "cache_schema": CACHE_SCHEMA,
        "rule": spec.rule,
        "rule_version": spec.rule_version,
        "mnemonic": spec.mnemonic,
        "fn": spec.fn,
        "implementation": implementation_digest(spec.fn),
        "params": spec.params,
        "inputs": input_digests if _is_sorted(input_digests) else sorted(input_digests),
        "outputs": sorted(spec.outputs),
        "libraries": spec.libraries,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "source_date_epoch": spec.source_date_epoch,
    }


# The key only has to be a deterministic, injective function of the record, not RFC 8785 text, so
# the C JSON encoder is used directly (floats print with Python's platform-independent shortest
# repr; the Python version is itself in the record). This keeps a cache hit at a few µs.
_KEY_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                allow_nan=False, check_circular=False)


def _is_sorted(items: list) -> bool:
    return all(map(operator.le, items, itertools.islice(items, 1, None)))  # C loops: per hit


def action_key(record: dict[str, Any]) -> str:
    """BLAKE3 (64 hex) of the record's JSON (sorted keys, no whitespace, UTF-8): `record_bytes`."""
    return blake3.blake3(record_bytes(record)).hexdigest()


_PAIR_JOIN = '","'.join
# Bytes the JSON encoder would escape in a string (ensure_ascii=False): controls, quote, backslash.
# In UTF-8 they occur only as themselves (every byte of a multi-byte sequence is >= 0x80).
_JSON_SPECIAL = bytes(range(0x20)) + b'"\\'


def _inputs_json(pairs: Any) -> bytes | None:
    """`[["name","digest"],...]` for a non-empty list of (str, str), built with joins: the
    encoder spends ~0.3 µs per pair, a join ~0.1 µs, and an action has up to hundreds of inputs
    (the cache-hit overhead, docs/engine.md "Performance"). None (use the encoder) when any item
    is not a pair of str, or when a name holds a character JSON escapes: then the quotes
    counted below are more than the four per pair that the joins wrote."""
    if type(pairs) is not list or not pairs or set(map(len, pairs)) != {2}:
        return None
    try:
        data = ('[["' + '"],["'.join(map(_PAIR_JOIN, pairs)) + '"]]').encode("utf-8", "surrogatepass")
    except TypeError:  # an item that is not str
        return None
    if len(data) - len(data.translate(None, _JSON_SPECIAL)) != 4 * len(pairs):
        return None
    return data


def record_bytes(record: dict[str, Any]) -> bytes:
    """The key record as `_KEY_ENCODER` encodes it, in UTF-8 (surrogates passed through).

    Identical bytes, faster: the top-level keys are sorted, so the record is the encoding of the
    keys before "inputs", then the inputs (`_inputs_json`), then the keys after it."""
    inputs = _inputs_json(record.get("inputs"))
    if inputs is None:
        return _KEY_ENCODER.encode(record).encode("utf-8", "surrogatepass")
    head = _KEY_ENCODER.encode({k: v for k, v in record.items() if k < "inputs"})
    tail = _KEY_ENCODER.encode({k: v for k, v in record.items() if k > "inputs"})
    return b"".join((("{" if head == "{}" else head[:-1] + ",").encode("utf-8", "surrogatepass"),
                     b'"inputs":', inputs,
                     ("}" if tail == "{}" else "," + tail[1:]).encode("utf-8", "surrogatepass")))


def diff_records(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two key records, inputs listed file by file."""
    lines = []
    for field in sorted(set(old) | set(new)):
        a, b = old.get(field), new.get(field)
        if a == b:
            continue
        if field == "inputs":
            olds, news = dict(map(tuple, a or [])), dict(map(tuple, b or []))
            for name in sorted(set(olds) | set(news)):
                if name not in olds:
                    lines.append(f"input added: {name}")
                elif name not in news:
                    lines.append(f"input removed: {name}")
                elif olds[name] != news[name]:
                    lines.append(f"input changed: {name} ({olds[name][:12]}… → {news[name][:12]}…)")
        elif isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    lines.append(f"{field}.{k}: {canonical_json.dumps_str(a.get(k))} → "
                                 f"{canonical_json.dumps_str(b.get(k))}")
        else:
            lines.append(f"{field}: {canonical_json.dumps_str(a)} → {canonical_json.dumps_str(b)}")
    return lines
