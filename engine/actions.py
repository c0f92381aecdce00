"""Action keys: the canonical key record of an action and its BLAKE3 digest.

The key record names everything that can change an action's output bytes (design §3). It is
stored beside the result so `explain` can diff two records field by field.
"""
from __future__ import annotations

import functools
import itertools
import json
import operator
import sys
from typing import Any, Sequence

import blake3

from stella_build.engine.closure import import_closure, implementation_digest  # noqa: F401 (re-exported)
from stella_build.engine.encode import canonical_json
from stella_build.engine.graph import ActionSpec

CACHE_SCHEMA = 1
_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def key_record(spec: ActionSpec, input_digests: list[tuple[str, str]]) -> dict[str, Any]:
    """The key record of `spec` whose staged files are `input_digests` [(name, blake3)]."""
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
        "python": _PYTHON,
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


# Pieces of the inputs' JSON: `[["name","digest"],["name","digest"]]`.
_IN_PAIR, _BETWEEN_PAIRS, _LAST = '","', '"],["', '"]]'
_PAIR_TYPES = frozenset({tuple, list})
# Bytes the JSON encoder would escape in a string (ensure_ascii=False): controls, quote, backslash.
# In UTF-8 they occur only as themselves (every byte of a multi-byte sequence is >= 0x80).
_JSON_SPECIAL = bytes(range(0x20)) + b'"\\'


def _inputs_json(pairs: Any) -> bytes | None:
    """`[["name","digest"],...]` for a non-empty list of (str, str) pairs (`_lists_json`); None
    (use the encoder) when any item is not a tuple or list of two str, or when a string holds a
    character JSON escapes."""
    if type(pairs) is not list or not pairs or not _PAIR_TYPES.issuperset(map(type, pairs)) \
            or set(map(len, pairs)) != {2}:
        return None
    names, digests = zip(*pairs)
    return _lists_json(names, digests)


def _lists_json(names: Any, digests: Any, hex_digests: bool = False) -> bytes | None:
    """The JSON of the pairs zip(names, digests) (equal, non-zero lengths), built with one join
    over an interleaved list: C loops only, ~0.05 µs per pair where the encoder spends ~0.3, and
    an action has up to hundreds of inputs (the cache-hit overhead, docs/engine.md
    "Performance"). None when an item is not a str, or when a string holds a character JSON
    escapes: then the special bytes counted below are more than the four quotes per pair that
    the join wrote. `hex_digests`: the caller knows every digest is lowercase hex (the build's
    source digests: hexdigest() or a stored entry that matched `[0-9a-f]{64}`), so only the
    names are searched for such characters (a third of the bytes: ~3 µs per 100 inputs)."""
    n = len(names)
    if hex_digests:
        try:
            joined = "".join(names).encode("utf-8", "surrogatepass")
        except TypeError:  # an item that is not str
            return None
        if len(joined.translate(None, _JSON_SPECIAL)) != len(joined):
            return None
    parts = [_IN_PAIR] * (4 * n)
    parts[0::4] = names
    parts[2::4] = digests
    parts[3::4] = (_BETWEEN_PAIRS,) * n
    parts[-1] = _LAST
    try:
        data = ('[["' + "".join(parts)).encode("utf-8", "surrogatepass")
    except TypeError:  # an item that is not str
        return None
    if not hex_digests and len(data) - len(data.translate(None, _JSON_SPECIAL)) != 4 * n:
        return None
    return data


@functools.lru_cache(maxsize=None)
def _head(fn: str) -> bytes:
    """The key record's bytes up to its inputs: the keys that sort before "inputs" depend only
    on the action function (cache_schema, fn, implementation), so every action of a function
    shares them (64 shard actions, one encoding)."""
    head = _KEY_ENCODER.encode({"cache_schema": CACHE_SCHEMA, "fn": fn,
                                "implementation": implementation_digest(fn)})
    return (head[:-1] + ',"inputs":').encode("utf-8", "surrogatepass")


def action_key_of(spec: ActionSpec, names: Sequence[str], digests: Sequence[str], *,
                  hex_digests: bool = False) -> str:
    """`action_key(key_record(spec, list(zip(names, digests))))` without building the record:
    the scheduler's cache-hit path, where the record itself is needed only on a miss.

    `names` (the staged file names) must be sorted and distinct, as `sorted(spec.inputs)` is;
    `digests` are their BLAKE3 hex digests, in the same order; `hex_digests=True` only when the
    caller knows each is lowercase hex (`_lists_json`). The bytes hashed are exactly
    `record_bytes` of that record (tests/test_cache.py compares them on every action of the
    sample workspace and on random records)."""
    inputs = _lists_json(names, digests, hex_digests) if names else None
    if inputs is None:  # no inputs, or a string JSON escapes: the encoder's bytes
        return action_key(key_record(spec, list(zip(names, digests))))
    # The keys after "inputs", in sorted order (the encoder sorts them again; same bytes).
    tail = _KEY_ENCODER.encode({"libraries": spec.libraries, "mnemonic": spec.mnemonic,
                                "outputs": sorted(spec.outputs), "params": spec.params,
                                "python": _PYTHON, "rule": spec.rule,
                                "rule_version": spec.rule_version,
                                "source_date_epoch": spec.source_date_epoch})
    return blake3.blake3(b"".join((_head(spec.fn), inputs, ("," + tail[1:]).encode(
        "utf-8", "surrogatepass")))).hexdigest()


def record_bytes(record: dict[str, Any]) -> bytes:
    """The key record as `_KEY_ENCODER` encodes it, in UTF-8 (surrogates passed through)."""
    inputs = _inputs_json(record.get("inputs"))
    if inputs is None:
        return _KEY_ENCODER.encode(record).encode("utf-8", "surrogatepass")
    return _around_inputs(record, inputs)


def _around_inputs(record: dict[str, Any], inputs: bytes) -> bytes:
    """Identical bytes, faster: the top-level keys are sorted, so the record is the encoding of
    the keys before "inputs", then the inputs' JSON, then the keys after it."""
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
