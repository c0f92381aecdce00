"""Bounded parsing of outside data: JSON, YAML and TOML with limits on size, nesting, numbers and
YAML aliases.

Evidence files, and the JSON documents ``stella-build verify`` reads from a bundle, are written by
someone else. Python's parsers trust their input: ``json`` raises RecursionError on deep nesting
and ValueError past 4,300-digit integers and accepts NaN and Infinity; ``tomllib`` recurses the
same way; PyYAML shares a node between every use of an alias, so a 441-byte "billion laughs" file
becomes a graph that any walk (``jsonable``, canonical JSON) expands to gigabytes. The loaders here
refuse such input up front with one ``DocumentError`` saying what was exceeded and where; callers
add the file name (``EvidenceError`` in build actions, a failed check in ``verify``).

Limits (documented in docs/evidence.md "Limits"):

==================== ================================================================
``MAX_JSON_BYTES``   64 MiB for a JSON document (large SBOMs are tens of MiB)
``MAX_YAML_BYTES``   16 MiB for a YAML document (Alpine secdb files are ~1 MiB)
``MAX_TOML_BYTES``    4 MiB for a RustSec advisory (the largest real one is 10 KiB)
``MAX_DEPTH``        100 nested arrays/objects (the shared corpora need at most 9); also keeps
                     every recursive consumer (jsonable, canonical JSON, pydantic) far from
                     Python's recursion limit
``MAX_INT_DIGITS``   1,000 digits in an integer (JSON numbers past 2**64 have no use in evidence)
``MAX_NUMBER_CHARS`` 1,000 characters in a JSON float literal; the value must be finite
YAML aliases         refused (``*name``): no real feed uses anchors (0 of the 2,679 YAML files
                     of the shared corpora), and refusing them removes alias expansion entirely
==================== ================================================================
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = [
    "DocumentError", "MAX_JSON_BYTES", "MAX_YAML_BYTES", "MAX_TOML_BYTES", "MAX_DEPTH",
    "MAX_INT_DIGITS", "MAX_NUMBER_CHARS", "NoAliasesMixin", "check_tree", "load_json", "load_toml",
    "load_yaml", "read_capped",
]

MAX_JSON_BYTES = 64 << 20
MAX_YAML_BYTES = 16 << 20
MAX_TOML_BYTES = 4 << 20
MAX_DEPTH = 100
MAX_INT_DIGITS = 1000
MAX_NUMBER_CHARS = 1000
# ~ bits of a MAX_INT_DIGITS-digit integer: checks parsed ints without formatting them (which is
# itself limited to 4,300 digits by Python).
_MAX_INT_BITS = math.ceil(MAX_INT_DIGITS * math.log2(10))


class DocumentError(ValueError):
    """A document that is invalid or exceeds a limit.

    ``field`` is the dotted path of the offending value ("<document>" when the whole document is
    at fault); ``too_large`` is True when a size limit (bytes) was exceeded, so callers can give a
    distinct reason.
    """

    def __init__(self, message: str, field: str = "<document>", *, too_large: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.too_large = too_large

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across worker processes
        return (_rebuild, (self.message, self.field, self.too_large))


def _rebuild(message: str, field: str, too_large: bool) -> DocumentError:
    return DocumentError(message, field, too_large=too_large)


def _size(n: int, limit: int, what: str) -> None:
    if n > limit:
        raise DocumentError(f"{what} is {n} bytes, more than the {limit} bytes allowed", too_large=True)


def read_capped(path: str | Path, limit: int, what: str = "file") -> bytes:
    """The bytes of ``path``, refusing (DocumentError, too_large) a file larger than ``limit`` bytes
    before reading it. Reads at most ``limit + 1`` bytes, so a file that grows meanwhile is caught
    too. OSError propagates."""
    with open(path, "rb") as f:
        _size(os.fstat(f.fileno()).st_size, limit, what)
        data = f.read(limit + 1)
    _size(len(data), limit, what)
    return data


# -- the tree check --------------------------------------------------------------------------------

def _where(chain: tuple | None, keep: int = 12) -> str:
    """Dotted path of a (parent chain, key) linked list built by ``check_tree``; a deep path keeps
    its first ``keep`` steps and says how many more there are."""
    parts: list[str] = []
    while chain is not None:
        chain, key = chain
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
    parts.reverse()
    more = f"…({len(parts) - keep} more levels)" if len(parts) > keep else ""
    text = "".join(parts[:keep]).lstrip(".") + more
    return text or "<document>"


def check_tree(doc: Any, max_depth: int = MAX_DEPTH) -> None:
    """Check a parsed document: at most ``max_depth`` nested containers, integers of at most
    MAX_INT_DIGITS digits, finite floats. Iterative, so it is safe on any depth. Raises
    DocumentError naming the field (e.g. ``affected[0].ranges``)."""
    # (value, depth, path chain); the chain is a linked list so no string is built unless needed
    stack: list[tuple[Any, int, tuple | None]] = [(doc, 1, None)]
    while stack:
        value, depth, chain = stack.pop()
        if isinstance(value, dict):
            if depth > max_depth:
                raise DocumentError(f"nested deeper than {max_depth} levels", _where(chain))
            stack.extend((v, depth + 1, (chain, k)) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            if depth > max_depth:
                raise DocumentError(f"nested deeper than {max_depth} levels", _where(chain))
            stack.extend((v, depth + 1, (chain, i)) for i, v in enumerate(value))
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int):
            if value.bit_length() > _MAX_INT_BITS:
                raise DocumentError(f"integer with more than {MAX_INT_DIGITS} digits", _where(chain))
        elif isinstance(value, float) and not math.isfinite(value):
            raise DocumentError(f"non-finite number {value!r} (JSON has no NaN or Infinity)", _where(chain))


# -- JSON --------------------------------------------------------------------------------------------

def _json_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS + 1:  # + 1: the sign
        raise DocumentError(f"integer with more than {MAX_INT_DIGITS} digits ({text[:20]}…)")
    return int(text)


def _json_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise DocumentError(f"number literal longer than {MAX_NUMBER_CHARS} characters ({text[:20]}…)")
    value = float(text)
    if not math.isfinite(value):
        raise DocumentError(f"number {text[:40]} is out of range (it would be {value})")
    return value


def _json_constant(name: str) -> Any:
    raise DocumentError(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")


def load_json(data: bytes | str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Parse one JSON document (bytes: UTF-8/16/32 as ``json.loads`` detects) within the limits.

    Raises DocumentError for: more than ``max_bytes`` bytes (too_large), invalid UTF-8 or JSON
    (with line and column), NaN/Infinity, numbers out of range, integers of more than
    MAX_INT_DIGITS digits, nesting deeper than MAX_DEPTH.
    """
    _size(len(data), max_bytes, "the document")
    try:
        doc = json.loads(data, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant)
    except UnicodeDecodeError as exc:
        raise DocumentError(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise DocumentError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:  # the C scanner's own guard, around 1,000 levels
        raise DocumentError(f"nested deeper than {MAX_DEPTH} levels") from None
    check_tree(doc)
    return doc


def _short(exc: Exception) -> str:
    """First clause of a library's message ("Exceeds the limit (4300 digits) for integer string
    conversion: value has 100000 digits", without the advice to raise the limit)."""
    return str(exc).split(";")[0][:200]


# -- YAML --------------------------------------------------------------------------------------------

class NoAliasesMixin:
    """Mix into a PyYAML loader (before the loader class) to refuse aliases.

    PyYAML's composer returns the anchored node again for each ``*alias`` (C and Python loaders
    alike), and the constructor remembers what it built per node; a node reached a second time is
    therefore exactly an alias, refused here before anything is expanded. Anchors that are never
    referenced are harmless and accepted.
    """

    def construct_object(self, node, deep=False):  # noqa: D102 (PyYAML's hook)
        if node in self.constructed_objects or node in self.recursive_objects:
            import yaml

            raise yaml.constructor.ConstructorError(
                None, None, "the node anchored here is used again through an alias (*name); aliases "
                "are not allowed in evidence files", node.start_mark)
        return super().construct_object(node, deep)


def load_yaml(data: bytes, loader: type, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """Parse one YAML document with ``loader`` (a NoAliasesMixin loader) within the limits.

    Raises DocumentError for: more than ``max_bytes`` bytes (too_large), invalid YAML (with line
    and column), aliases, integers of more than MAX_INT_DIGITS digits, non-finite floats (.inf,
    .nan), nesting deeper than MAX_DEPTH (libyaml itself stops at 1,000).
    """
    import yaml

    if not issubclass(loader, NoAliasesMixin):
        raise TypeError(f"{loader.__name__} must mix in NoAliasesMixin")
    _size(len(data), max_bytes, "the document")
    try:
        doc = yaml.load(data, Loader=loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DocumentError(f"invalid YAML{where}: {problem}") from None
    except RecursionError:  # the pure-Python composer recurses per level
        raise DocumentError(f"nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, TypeError) as exc:  # int() past 4,300 digits, and the like, in constructors
        raise DocumentError(f"invalid YAML value: {_short(exc)}") from None
    check_tree(doc)
    return doc


# -- TOML --------------------------------------------------------------------------------------------

def load_toml(text: str, max_bytes: int = MAX_TOML_BYTES) -> dict[str, Any]:
    """Parse a TOML document with ``tomllib`` within the limits (size counted in characters).

    Raises DocumentError for: too large, invalid TOML, integers of more than MAX_INT_DIGITS digits,
    nan/inf, nesting deeper than MAX_DEPTH.
    """
    import tomllib

    _size(len(text), max_bytes, "the TOML document")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DocumentError(f"invalid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses per nested array / inline table
        raise DocumentError(f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # int() past 4,300 digits
        raise DocumentError(f"invalid TOML value: {_short(exc)}") from None
    check_tree(doc)
    return doc
