"""Action keys: the canonical key record of an action and its BLAKE3 digest.

The key record names everything that can change an action's output bytes (design §3). It is
stored beside the result so `explain` can diff two records field by field.
"""
from __future__ import annotations

import functools
import importlib
import json
import sys
from pathlib import Path
from typing import Any

import blake3

from .encode import canonical_json
from .rule_api import ActionSpec

CACHE_SCHEMA = 1


@functools.lru_cache(maxsize=None)
def _package_files_digest(top: str) -> str:
    """BLAKE3 over every .py file of a top-level package dir (sorted, path + content)."""
    h = blake3.blake3()
    root = Path(top)
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def implementation_digest(fn: str) -> str:
    """Digest of the code that can shape an action's bytes.

    That is the whole package holding the action function (for built-ins: all of `rules/`, since
    rules share helpers), plus the engine's encoders and rule API. Conservative on purpose: a code
    change re-runs actions rather than risking a stale hit.
    """
    module_name = fn.split(":", 1)[0]
    module = importlib.import_module(module_name)
    parts = module_name.split(".")
    # stella_build.rules.x → the rules package directory; third-party → its top-level package
    package_name = ".".join(parts[:2]) if parts[0] == "stella_build" else parts[0]
    package = sys.modules.get(package_name) or importlib.import_module(package_name)
    rules_dir = Path(package.__file__).parent
    engine_dir = Path(__file__).parent
    h = blake3.blake3()
    for d in (rules_dir, engine_dir / "encode"):
        h.update(_package_files_digest(str(d)).encode())
    h.update((engine_dir / "rule_api.py").read_bytes())
    del module
    return h.hexdigest()


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
    return all(items[i] <= items[i + 1] for i in range(len(items) - 1))


def action_key(record: dict[str, Any]) -> str:
    return blake3.blake3(_KEY_ENCODER.encode(record).encode("utf-8", "surrogatepass")).hexdigest()


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
