"""Labels (`//pkg/path:target`) and target patterns (`//pkg:all`, `//pkg/...`, `//...`)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from stella_build.engine.errors import UsageError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_PKG = re.compile(r"^(|[A-Za-z0-9_][A-Za-z0-9._+-]*(/[A-Za-z0-9_][A-Za-z0-9._+-]*)*)$")

# Length limits, so that every file name derived from a label fits the filesystem's 255-byte
# NAME_MAX: the longest is `.<target>.stella-state.json` (+19) next to `stella-out/<pkg>/<target>/`,
# and `.<target>.tmp-<pid>` (+13). Package segments are directory names (255); the whole package
# path is kept well under PATH_MAX (4096) so that `stella-out/<package>/<target>/<output>` fits.
MAX_TARGET_NAME = 200
MAX_PACKAGE_SEGMENT = 255
MAX_PACKAGE = 1024


def target_name_problem(name: str) -> str | None:
    """Why `name` is not a valid target name, or None."""
    if len(name) > MAX_TARGET_NAME:
        return f"target name is {len(name)} characters long (at most {MAX_TARGET_NAME})"
    if not _NAME.match(name):
        return f"target name '{name}' is not valid (letters, digits, '.', '_', '+', '-')"
    return None


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


def _short(text: str) -> str:
    """`text` for a message: a 5,000-character label is shown by its start and its length."""
    return text if len(text) <= 120 else f"{text[:100]}… ({len(text)} characters)"


def _check_package(pkg: str, text: str) -> str:
    if len(pkg) > MAX_PACKAGE or any(len(seg) > MAX_PACKAGE_SEGMENT for seg in pkg.split("/")):
        raise UsageError(f"bad label '{_short(text)}': package path is too long (at most "
                         f"{MAX_PACKAGE} characters, {MAX_PACKAGE_SEGMENT} per directory)",
                         reason="bad-label")
    if not _PKG.match(pkg):
        raise UsageError(f"bad label '{_short(text)}': package path '{_short(pkg)}' is not valid", reason="bad-label")
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
                raise UsageError(f"bad label '{_short(text)}': the root package needs an explicit ':name'", reason="bad-label")
    elif text.startswith(":"):
        if current_package is None:
            raise UsageError(f"bad label '{_short(text)}': a relative label needs a package (use //pkg{_short(text)})", reason="bad-label")
        pkg, name = current_package, text[1:]
    else:
        raise UsageError(f"bad label '{_short(text)}': labels look like //package:target or :target", reason="bad-label")
    if len(name) > MAX_TARGET_NAME:
        raise UsageError(f"bad label '{_short(text)}': target name is {len(name)} characters long "
                         f"(at most {MAX_TARGET_NAME})", reason="bad-label")
    if not _NAME.match(name):
        raise UsageError(f"bad label '{_short(text)}': target name '{_short(name)}' is not valid", reason="bad-label")
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
            raise UsageError(f"bad pattern '{_short(text)}'", reason="bad-label")
        return Pattern(_check_package(pkg, text))
    label = parse_label(stripped, current_package)
    return Pattern(label.package, label.name)
