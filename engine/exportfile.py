"""Exportfiles: TOML → validated pydantic models, with errors that name file, line and key.

    [package]
    source_date_epoch = 1735689600
    [package.selectors]
    ecosystems = ["PyPI"]

    [targets.json-raw]
    rule = "json_raw"
    deps = [":osv"]

The models are the single source of truth for `exportfile.schema.json`
(`python -m stella_build.engine.exportfile --write-schema` regenerates it; a test checks it).
"""
from __future__ import annotations

import json
import math
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Iterator, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from stella_build.engine.errors import ErrorInfo, UsageError
from stella_build.engine.labels import target_name_problem
from stella_build.engine.registry import rules as registered_rules
from stella_build.engine.rule_api import Selectors, TargetParams

SCHEMA_FILE = "exportfile.schema.json"


class PackageConfig(BaseModel):
    """Per-package defaults applied to every target of the Exportfile."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source_date_epoch: int | None = Field(
        None, ge=0, description="fixed build time (seconds since 1970); else derived from the inputs")
    selectors: Selectors = Field(default_factory=Selectors)
    description: str | None = None


_MODEL: type[BaseModel] | None = None


def exportfile_model() -> type[BaseModel]:
    """The Exportfile model: `targets` is a union of every registered rule's Params, by `rule`."""
    global _MODEL
    if _MODEL is None:
        params = [r.Params for r in registered_rules().values()]
        target_type: Any = (Annotated[Union[tuple(params)], Field(discriminator="rule")]
                            if len(params) > 1 else params[0])
        _MODEL = create_model(
            "Exportfile",
            __config__=ConfigDict(extra="forbid", frozen=True, title="stella-build Exportfile"),
            package=(PackageConfig, Field(default_factory=PackageConfig)),
            targets=(dict[str, target_type], Field(default_factory=dict)),
        )
    return _MODEL


def json_schema() -> dict:
    schema = exportfile_model().model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://stella-build.dev/exportfile.schema.json"
    return schema


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# -- locating keys in TOML text -------------------------------------------------------------

_HEADER = re.compile(r"^\s*\[(\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*((?:"[^"]*"|'[^']*'|[A-Za-z0-9_-]+)(?:\s*\.\s*(?:"[^"]*"|'[^']*'|[A-Za-z0-9_-]+))*)\s*=""")


def _split_key(text: str) -> tuple[str, ...]:
    parts = re.findall(r'"([^"]*)"|\'([^\']*)\'|([A-Za-z0-9_-]+)', text)
    return tuple(a or b or c for a, b, c in parts)


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each table header and key path in TOML `text` to its 1-based line number.

    tomllib keeps no positions; this scan is enough to point an error at the right line for the
    table/key shapes Exportfiles use (headers, dotted keys, inline values on one line).
    """
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    array_counts: dict[tuple[str, ...], int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header and not _KEY.match(line):
            path = _split_key(header.group(2))
            if header.group(1):  # [[array]] of tables
                idx = array_counts.get(path, 0)
                array_counts[path] = idx + 1
                path = path + (str(idx),)
            table = path
            lines.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key:
            lines.setdefault(table + _split_key(key.group(1)), number)
    return lines


def _line_for(lines: dict[tuple[str, ...], int], loc: tuple[str, ...]) -> int | None:
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


# -- loading --------------------------------------------------------------------------------

@dataclass
class LoadedExportfile:
    path: Path
    display: str  # workspace-relative path shown in messages
    package: PackageConfig
    targets: dict[str, TargetParams]
    lines: dict[tuple[str, ...], int]

    def line_of(self, *loc: str) -> int | None:
        return _line_for(self.lines, tuple(loc))


def _validation_errors(exc: ValidationError, display: str, lines, rule_names,
                       package: str) -> list[ErrorInfo]:
    infos = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        # Discriminated unions insert the rule name into the location: drop it.
        if len(loc) >= 3 and loc[0] == "targets" and loc[2] in rule_names:
            del loc[2]
        target = f"//{package}:{loc[1]}" if len(loc) >= 2 and loc[0] == "targets" else None
        kind = err["type"]
        key = loc[-1] if loc else None
        reason = "exportfile-invalid"
        if kind == "extra_forbidden":
            message = f"unknown key '{key}'"
            reason = "unknown-key"
        elif kind == "union_tag_invalid":
            given = err.get("input", {}).get("rule") if isinstance(err.get("input"), dict) else None
            message = f"unknown rule '{given}' (known rules: {', '.join(sorted(rule_names))})"
            reason = "unknown-rule"
            key = "rule"
            loc.append("rule")
        elif kind == "union_tag_not_found":
            message = "missing key 'rule' (which rule builds this target?)"
            key = "rule"
            loc.append("rule")
        elif kind == "missing":
            message = f"missing required key '{key}'"
            reason = "missing-key"
        elif kind == "bool_type":  # strict booleans (remote_secrets): "yes" or 1 is not true
            message = f"{'.'.join(loc[2:]) or key}: must be true or false, got {err.get('input')!r}"
        else:
            message = f"{'.'.join(loc[2:]) or key}: {err['msg']}"
        infos.append(ErrorInfo(message, target=target, file=display,
                               line=_line_for(lines, tuple(loc)), field=".".join(loc[2:]) or key,
                               reason=reason))
    return infos


# -- limits tomllib does not enforce ---------------------------------------------------------
# tomllib parses recursively and converts integers with int(): a 5,000-deep array is a
# RecursionError and a 100,000-digit integer a ValueError, neither a TOMLDecodeError. The TOML
# spec itself bounds integers to 64 bits; nesting is bounded here far above any real Exportfile.

MAX_NESTING = 64
MAX_EXPORTFILE_BYTES = 4 << 20
_INT64 = (-(1 << 63), (1 << 63) - 1)


def _nesting_problem(text: str) -> tuple[int, int] | None:
    """(line, depth) where `[`/`{` nesting first exceeds MAX_NESTING, skipping strings and
    comments; None if it never does. Hand-written because tomllib reports no position for it."""
    depth, line, i, n = 0, 1, 0, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif c in "\"'":
            triple = text.startswith(c * 3, i)
            quote = c * 3 if triple else c
            j = i + len(quote)
            while j < n and not text.startswith(quote, j):
                if c == '"' and text[j] == "\\":
                    j += 1
                elif text[j] == "\n" and not triple:
                    break  # an unterminated one-line string: tomllib reports it
                j += 1
            line += text.count("\n", i, j)
            i = j + len(quote) if text.startswith(quote, j) else j + 1
            if j < n and text[j] == "\n":
                line += 1
            continue
        elif c in "[{":
            depth += 1
            if depth > MAX_NESTING:
                return line, depth
        elif c in "]}":
            depth = max(0, depth - 1)
        i += 1
    return None


def _value_problems(data: Any) -> Iterator[tuple[tuple[str, ...], str]]:
    """(key path, problem) of every integer outside 64 bits and every NaN/infinite float:
    TOML allows `nan` and `inf`, but no Exportfile key means anything by them."""
    stack: list[tuple[tuple[str, ...], Any]] = [((), data)]
    while stack:
        loc, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((loc + (str(k),), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((loc, v) for v in value)
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
            yield loc, "integer out of the 64-bit range TOML allows"
        elif isinstance(value, float) and not math.isfinite(value):
            yield loc, f"{value} is not a usable number here"


def _field_of(loc: tuple[str, ...]) -> tuple[str | None, str]:
    """(target label name or None, dotted field) for a key path."""
    if len(loc) >= 2 and loc[0] == "targets":
        return loc[1], ".".join(loc[2:]) or loc[1]
    return None, ".".join(loc)


def _key_at(text: str, line: int | None) -> tuple[str | None, str | None]:
    """(target, dotted field) of the key defined on `line` (the key a value error is about)."""
    if line is None:
        return None, None
    for loc, number in key_lines(text).items():
        if number == line and len(loc) > 1:
            return _field_of(loc)
    return None, None


def _toml_error(message: str, text: str, display: str, package: str, line: int | None) -> UsageError:
    target, fld = _key_at(text, line)
    return UsageError(message, file=display, line=line, field=fld,
                      target=f"//{package}:{target}" if target else None, reason="toml-invalid")


def _parse_toml(text: str, display: str, package: str) -> dict:
    # The scan is only needed when there are enough brackets to nest that deep at all.
    deep = _nesting_problem(text) if text.count("[") + text.count("{") > MAX_NESTING else None
    if deep is not None:
        raise _toml_error(f"invalid TOML: arrays/tables nested more than {MAX_NESTING} levels deep",
                          text, display, package, deep[0])
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        line = int(match.group(1)) if match else None
        if line is None and "end of document" in str(exc):
            line = len(text.splitlines()) or 1
        raise UsageError(f"invalid TOML: {exc}", file=display, line=line, reason="toml-invalid") from None
    except RecursionError:  # nesting the scan above missed (it is a safety net, not the check)
        raise UsageError("invalid TOML: nested too deeply", file=display, reason="toml-invalid") from None
    except ValueError:  # int() of an integer with more digits than Python converts
        digits = re.search(r"[0-9_]{4000,}", text)
        line = text.count("\n", 0, digits.start()) + 1 if digits else None
        raise _toml_error("invalid TOML: integer out of the 64-bit range TOML allows", text,
                          display, package, line) from None


def load_exportfile(path: Path, display: str, package: str = "") -> LoadedExportfile:
    """Read, parse and validate one Exportfile. Raises UsageError (exit 2) naming `display`,
    the line and the key for anything wrong, including what TOML parsers do not bound (nesting
    deeper than MAX_NESTING, integers beyond 64 bits, NaN/infinity, files over 4 MiB)."""
    try:
        size = path.stat().st_size
        if size > MAX_EXPORTFILE_BYTES:
            raise UsageError(f"Exportfile is {size} bytes (at most {MAX_EXPORTFILE_BYTES})",
                             file=display, reason="exportfile-invalid")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError("Exportfile not found", file=display, reason="exportfile-missing") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"Exportfile is not UTF-8: {exc}", file=display, reason="exportfile-encoding") from None
    except OSError as exc:
        raise UsageError(f"Exportfile cannot be read: {exc.strerror}", file=display,
                         reason="exportfile-unreadable") from None
    data = _parse_toml(text, display, package)
    lines = key_lines(text)
    for loc, problem in _value_problems(data):
        target, fld = _field_of(loc)
        raise UsageError(f"{fld}: {problem}", file=display, line=_line_for(lines, loc),
                         target=f"//{package}:{target}" if target else None, field=fld,
                         reason="exportfile-invalid")
    for name in data.get("targets", {}) if isinstance(data.get("targets"), dict) else {}:
        problem = target_name_problem(name)
        if problem is not None:
            shown = name if len(name) <= 120 else f"{name[:100]}…"
            raise UsageError(f"bad target name '{shown}': {problem}",
                             file=display, line=_line_for(lines, ("targets", name)),
                             field=f"targets.{shown}", reason="bad-target-name")
    rule_names = set(registered_rules())
    try:
        model = exportfile_model().model_validate(data)
    except ValidationError as exc:
        infos = _validation_errors(exc, display, lines, rule_names, package)
        raise UsageError(infos[0].message, errors=infos) from None
    return LoadedExportfile(path=path, display=display, package=model.package,
                            targets=dict(model.targets), lines=lines)


def main(argv: list[str]) -> int:
    if argv[1:] == ["--write-schema"]:
        Path(SCHEMA_FILE).write_text(schema_text(), encoding="utf-8")
        print(f"wrote {SCHEMA_FILE}")
        return 0
    if argv[1:] == ["--print-schema"]:
        sys.stdout.write(schema_text())
        return 0
    print("usage: python -m stella_build.engine.exportfile --write-schema|--print-schema")
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
