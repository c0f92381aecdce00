"""The workspace: its root, its packages, and how source paths are named.

The root is the nearest directory upwards holding `stella-workspace.toml` or a `pyproject.toml` with
a `[tool.stella-build]` table. Source files get *logical paths* that never contain the absolute
location, so action keys are the same in every checkout:
  - `profiles/evidence/x.json`          workspace-relative
  - `@shared-data//osv-go/GO-1.json`    inside a named external root (`external = {name = "dir"}`)
"""
from __future__ import annotations

import errno
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from stella_build.engine.errors import UsageError

WORKSPACE_FILE = "stella-workspace.toml"
EXPORTFILE = "Exportfile"
_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "stella-out", "__pycache__", ".hypothesis",
              ".pytest_cache"}


def _workspace_config(directory: Path) -> dict | None:
    marker = directory / WORKSPACE_FILE
    if marker.is_file():
        return _read_toml(marker).get("workspace", {})
    pyproject = directory / "pyproject.toml"
    if pyproject.is_file():
        text = pyproject.read_text(encoding="utf-8")
        if "[tool.stella-build]" in text:
            return _read_toml(pyproject).get("tool", {}).get("stella-build", {})
    return None


def is_workspace_root(directory: Path) -> bool:
    """Whether `directory` is marked as a workspace root (cheap: no TOML parsing)."""
    if (directory / WORKSPACE_FILE).is_file():
        return True
    try:
        return "[tool.stella-build]" in (directory / "pyproject.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False


def find_root(start: Path | None = None) -> Path | None:
    """The nearest workspace root at or above `start` (default: the current directory), or None."""
    here = (start or Path.cwd()).resolve()
    return next((d for d in (here, *here.parents) if is_workspace_root(d)), None)


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"invalid TOML: {exc}", file=str(path), reason="toml-invalid") from None


@dataclass
class Workspace:
    root: Path
    external: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def find(cls, start: Path | None = None, explicit: Path | None = None) -> "Workspace":
        if explicit is not None:
            root = explicit.resolve()
            config = _workspace_config(root)
            if config is None:
                raise UsageError(f"{root} is not a stella-build workspace (no {WORKSPACE_FILE} and no "
                                 "[tool.stella-build] in pyproject.toml); run 'stella-build init'", reason="workspace-missing")
            return cls._from_config(root, config)
        here = (start or Path.cwd()).resolve()
        root = find_root(here)
        config = _workspace_config(root) if root is not None else None
        if root is not None and config is not None:
            return cls._from_config(root, config)
        raise UsageError(f"no stella-build workspace found at or above {here}; "
                         "run 'stella-build init' or pass --workspace", reason="workspace-missing")

    @classmethod
    def _from_config(cls, root: Path, config: dict) -> "Workspace":
        external = {}
        for name, rel in (config.get("external") or {}).items():
            external[name] = (root / rel).resolve()
        return cls(root=root, external=external)

    # -- packages -------------------------------------------------------------------------
    def package_dir(self, package: str) -> Path:
        return self.root / package if package else self.root

    def exportfile(self, package: str) -> Path:
        return self.package_dir(package) / EXPORTFILE

    def packages_under(self, package: str) -> list[str]:
        """Every package at or below `package`, sorted."""
        base = self.package_dir(package)
        found = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
            if EXPORTFILE in filenames:
                rel = Path(dirpath).relative_to(self.root).as_posix()
                found.append("" if rel == "." else rel)
        return sorted(found)

    # -- sources --------------------------------------------------------------------------
    def resolve_glob(self, pattern: str, package: str) -> tuple[Path, str, str]:
        """(base directory, glob relative to it, logical prefix) for a source pattern."""
        base, rel, prefix, _root = self._resolve(pattern, package)
        return base, rel, prefix

    def _resolve(self, pattern: str, package: str) -> tuple[Path, str, str, Path]:
        """(base directory, glob relative to it, logical prefix, the root the files must stay in:
        the workspace root or the named external root)."""
        if pattern.startswith("@"):
            name, sep, rest = pattern[1:].partition("//")
            if not sep or name not in self.external:
                known = ", ".join(sorted(self.external)) or "none"
                raise UsageError(f"unknown external root in '{pattern}' (known: {known})", reason="unknown-external-root")
            return self.external[name], rest, f"@{name}//", self.external[name]
        if pattern.startswith("//"):
            return self.root, pattern[2:], "", self.root
        prefix = f"{package}/" if package else ""
        return self.package_dir(package), pattern, prefix, self.root

    def glob(self, patterns: list[str], package: str, field: str | None = "srcs") -> list[tuple[str, str]]:
        """Sorted (logical path, absolute path as str) of the regular files matching `patterns`.
        (str, not Path: a build of 500k advisories holds one per file for its whole run, and a
        Path costs ~300 bytes more.)

        Every file is inside its root (the workspace or the declared external root): a symlink
        is followed only when it names a regular file inside that same root (the path returned
        is then the resolved one, which is what gets read), directory symlinks are never
        descended into by a wildcard, and a literal directory in the pattern must also resolve
        inside the root. Anything else is a UsageError (exit 2) naming the link, with `field`
        (the Exportfile key the patterns come from) and a reason: `source-symlink`,
        `source-outside-root`, `source-root-missing`, `source-unreadable`, `glob-invalid`."""
        found: dict[str, str] = {}
        for pattern in patterns:
            base, rel, prefix, root = self._resolve(pattern, package)
            if "\x00" in pattern:
                raise UsageError(f"source pattern {pattern!r} contains a NUL character",
                                 field=field, reason="glob-invalid")
            if ".." in Path(rel).parts or Path(rel).is_absolute():
                raise UsageError(f"source pattern '{pattern}' must stay inside its root", field=field,
                                 reason="source-outside-root")
            if not base.is_dir():
                raise UsageError(f"source root for '{pattern}' does not exist: {base}", field=field,
                                 reason="source-root-missing")
            try:
                matches = _glob_files(base, rel, root=root)
            except GlobError as exc:
                shown = self._display(exc.path, root, prefix if root != self.root else "")
                raise UsageError(f"source pattern '{pattern}': {exc.message}"
                                 + (f": {shown}" if shown else ""), field=field,
                                 reason=exc.reason) from None
            for rel_path, path in matches:
                found[prefix + rel_path] = path
        return sorted(found.items())

    def _display(self, path: str | None, root: Path, external_prefix: str) -> str | None:
        """A path for messages: workspace-relative, or `@name//...` for an external root."""
        if path is None:
            return None
        try:
            rel = Path(path).relative_to(root).as_posix()
        except ValueError:
            return path
        if root == self.root:
            return rel
        name = next((n for n, p in self.external.items() if p == root), None)
        return f"@{name}//{rel}" if name else external_prefix + rel

    def logical_to_path(self, logical: str) -> Path:
        if logical.startswith("@"):
            name, _, rest = logical[1:].partition("//")
            return self.external[name] / rest
        return self.root / logical


class GlobError(Exception):
    """A source pattern that cannot be expanded safely; `path` is the offending file or link."""

    def __init__(self, message: str, reason: str, path: str | None = None):
        super().__init__(message)
        self.message, self.reason, self.path = message, reason, path


# A pattern with more wildcards than this is refused: each `*` adds a level of backtracking to
# the regex, and a hostile Exportfile must not be able to make globbing take hours.
MAX_WILDCARDS = 32


def _glob_regex(pattern: str) -> re.Pattern:
    """Regex for a glob where `*` and `?` stay within a path segment and `**` spans segments.

    `[...]` is a character class as in fnmatch (`[!...]` negates; every other character in it is
    literal except `-` between two characters). Raises GlobError for an invalid class such as
    `[z-a]` or for more than MAX_WILDCARDS wildcards."""
    # Consecutive `**/` mean the same as one and would only add backtracking.
    while "**/**/" in pattern:
        pattern = pattern.replace("**/**/", "**/")
    if pattern.count("*") + pattern.count("?") > MAX_WILDCARDS:
        raise GlobError(f"more than {MAX_WILDCARDS} wildcards", "glob-invalid")
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1:]:
            j = pattern.index("]", i + 1)
            body = pattern[i + 1:j]
            negate = body.startswith("!")
            body = body[1:] if negate else body
            # Escape everything but range dashes, so `^`, `\`, `[`, `&&`, `~~`, `||` are literal
            # (the `re` module would otherwise read them as syntax or warn about nested sets).
            escaped = "".join("-" if c == "-" else re.escape(c) for c in body)
            out.append("[" + ("^" if negate else "") + escaped + "]")
            i = j + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    try:
        return re.compile("".join(out) + r"\Z")
    except re.error as exc:
        raise GlobError(f"invalid glob: {exc.msg}", "glob-invalid") from None


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _glob_files(base: Path, pattern: str, root: Path | None = None) -> list[tuple[str, str]]:
    """Regular files under `base` matching `pattern`, as (relative posix path, absolute path).

    Hand-written because pathlib's glob builds a Path and a stat per file (0.2 s for the 7,000
    corpus files, on every build); this walks with os.scandir from the pattern's literal prefix,
    iteratively (no recursion limit on deep trees). Symlinks: see Workspace.glob; `root`
    (default `base`) is the directory every file must resolve inside. Raises GlobError."""
    root_real = os.path.realpath(root if root is not None else base)
    parts = pattern.split("/")
    literal = []
    for part in parts[:-1]:
        if any(c in part for c in "*?["):
            break
        literal.append(part)
    start = base.joinpath(*literal) if literal else base
    recursive = "**" in pattern
    depth = len(parts) - len(literal)
    regex = _glob_regex(pattern)
    found: list[tuple[str, str]] = []
    prefix = "/".join(literal) + "/" if literal else ""
    # The literal prefix is named by the author, so a symlinked directory there is followed,
    # but only if it resolves inside the root.
    if not _inside(os.path.realpath(start), root_real):
        raise GlobError("a directory of the pattern is a symlink that leaves its root",
                        "source-symlink", _first_symlink(base, literal) or str(start))

    stack = [(str(start), prefix, 0)]
    while stack:
        directory, rel, level = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise GlobError("symlink loop", "source-symlink", directory) from None
            if exc.errno == errno.ENAMETOOLONG:
                continue  # no such directory can exist
            raise GlobError(f"cannot read directory ({exc.strerror})", "source-unreadable",
                            directory) from None
        for entry in entries:
            child = rel + entry.name
            if entry.is_symlink():
                # Never descended into (no loops, no escaping through a directory link); a link
                # matching the pattern must name a regular file inside the same root.
                if not regex.match(child):
                    continue
                target = os.path.realpath(entry.path)
                try:
                    st = os.stat(target)
                except OSError:
                    raise GlobError("dangling symlink (or a symlink loop)", "source-symlink",
                                    entry.path) from None
                if stat.S_ISDIR(st.st_mode):
                    continue  # a directory link: not a file, and never followed
                if not _inside(target, root_real):
                    raise GlobError("symlink to a file outside its root (sources must be regular "
                                    "files inside the workspace or a declared external root)",
                                    "source-symlink", entry.path)
                if not stat.S_ISREG(st.st_mode):
                    raise GlobError("symlink to something that is not a regular file",
                                    "source-symlink", entry.path)
                found.append((child, target))
            elif entry.is_dir(follow_symlinks=False):
                if recursive or level + 1 < depth:
                    stack.append((entry.path, child + "/", level + 1))
            elif entry.is_file(follow_symlinks=False) and regex.match(child):
                found.append((child, entry.path))
    return found


def _first_symlink(base: Path, parts: list[str]) -> str | None:
    path = base
    for part in parts:
        path = path / part
        if path.is_symlink():
            return str(path)
    return None
