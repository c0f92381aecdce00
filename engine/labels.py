"""Labels (`//pkg/path:target`) and target patterns (`//pkg:all`, `//pkg/...`, `//...`)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from stella_build.engine.errors import UsageError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_PKG = re.compile(r"^(|[A-Za-z0-9_][A-Za-z0-9._+-]*(/[A-Za-z0-9_][A-Za-z0-9._+-]*)*)$")


@dataclass(frozen=True, order=True)
class Label:
    package: str  # workspace-relative directory, "" for the root package
    name: str

    def __str__(self) -> str:
        return f"//{self.package}:{self.name}"


@dataclass(frozen=True)
class Pattern:
    """A set of targets: one label, all targets of a package, or every package below a path."""

    package: str
    name: str | None = None  # None with recursive=False means ":all"
    recursive: bool = False

    def __str__(self) -> str:
        if self.recursive:
            return f"//{self.package + '/' if self.package else ''}..."
        return f"//{self.package}:{self.name or 'all'}"

    def matches_package(self, package: str) -> bool:
        if self.recursive:
            return not self.package or package == self.package or package.startswith(self.package + "/")
        return package == self.package


def _check_package(pkg: str, text: str) -> str:
    if not _PKG.match(pkg):
        raise UsageError(f"bad label '{text}': package path '{pkg}' is not valid", reason="bad-label")
    return pkg


def parse_label(text: str, current_package: str | None = None) -> Label:
    """Parse `//pkg:name`, `//pkg` (= `//pkg:pkg`) or `:name` (relative to current_package)."""
    text = text.strip()
    if text.startswith("//"):
        body = text[2:]
        pkg, sep, name = body.partition(":")
        _check_package(pkg, text)
        if not sep:
            name = pkg.rsplit("/", 1)[-1]
            if not name:
                raise UsageError(f"bad label '{text}': the root package needs an explicit ':name'", reason="bad-label")
    elif text.startswith(":"):
        if current_package is None:
            raise UsageError(f"bad label '{text}': a relative label needs a package (use //pkg{text})", reason="bad-label")
        pkg, name = current_package, text[1:]
    else:
        raise UsageError(f"bad label '{text}': labels look like //package:target or :target", reason="bad-label")
    if not _NAME.match(name):
        raise UsageError(f"bad label '{text}': target name '{name}' is not valid", reason="bad-label")
    return Label(pkg, name)


def parse_pattern(text: str, current_package: str | None = None) -> Pattern:
    """Parse a target pattern: a label, `//pkg:all`, `//pkg/...` or `//...`."""
    stripped = text.strip()
    if stripped.startswith("//") and (stripped.endswith("/...") or stripped == "//..."):
        pkg = stripped[2:-4] if stripped != "//..." else ""
        return Pattern(_check_package(pkg, text), recursive=True)
    if stripped.endswith(":all") or stripped.endswith(":*"):
        pkg = stripped[2:].rpartition(":")[0] if stripped.startswith("//") else current_package
        if pkg is None:
            raise UsageError(f"bad pattern '{text}'", reason="bad-label")
        return Pattern(_check_package(pkg, text))
    label = parse_label(stripped, current_package)
    return Pattern(label.package, label.name)
