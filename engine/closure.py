"""The implementation digest: BLAKE3 over exactly the code an action function can run.

Used by the action key (engine/actions.py) and by the per-record memo (engine/memo.py, reached
from ``rule_api.ActionContext.memo``); it imports nothing of the engine, so neither import forms a
cycle (actions → rule_api → memo → actions).
"""
from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

import blake3


@functools.lru_cache(maxsize=None)
def _package_locations(name: str) -> tuple[Path, ...]:
    """Directories of a package (import system's answer, so package-dir mappings are followed)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return ()
    if spec is None or spec.submodule_search_locations is None:
        return ()
    return tuple(Path(p) for p in spec.submodule_search_locations)


@functools.lru_cache(maxsize=None)
def _module_path(name: str) -> tuple[Path, bool] | None:
    """(source file, is package) of a module of a package, or None (a name that is not a module:
    an attribute imported with `from m import name`, or a compiled/namespace module)."""
    parent, _, leaf = name.rpartition(".")
    if not parent:
        locations = _package_locations(name)
        init = next((d / "__init__.py" for d in locations if (d / "__init__.py").is_file()), None)
        return (init, True) if init else None
    parent_dirs = _package_locations(parent)
    for directory in parent_dirs:
        if (directory / leaf / "__init__.py").is_file():
            return directory / leaf / "__init__.py", True
        if (directory / f"{leaf}.py").is_file():
            return directory / f"{leaf}.py", False
    if parent_dirs:  # a subpackage mapped elsewhere (setuptools package-dir, editable installs)
        init = next((d / "__init__.py" for d in _package_locations(name) if (d / "__init__.py").is_file()), None)
        if init is not None:
            return init, True
    return None


# `import a.b, c` and `from a.b import (x, y)` / `from .a import x`, at any indentation. A scan, not a
# parse, because it runs on every build; a false match (the word in a docstring) can only add a
# module to the closure, never drop one.
_IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n#]+)"
                     r"|import[ \t]+([^\n#]+))", re.M)


def _import_statements(text: str):
    """The matches `_IMPORT.finditer(text)` gives, found faster: a match starts at a line start
    and its first line holds the word "import", so the regex is tried only at the start of such
    lines (skipping lines inside the previous match, as finditer resumes at its end). Hand-written
    because `^` with re.M makes finditer try every position of the ~1 MB of source a no-op build
    scans (8 ms there, this ~2 ms; tests/test_cache.py compares both on every engine and rule
    module)."""
    end = 0
    pos = text.find("import")
    while pos >= 0:
        start = text.rfind("\n", 0, pos) + 1
        if start >= end:
            m = _IMPORT.match(text, start)
            if m is not None:
                yield m
                end = m.end()
        newline = text.find("\n", pos)
        if newline < 0:
            return
        pos = text.find("import", newline)


@functools.lru_cache(maxsize=None)
def _imports_of(name: str) -> tuple[str, ...]:
    """Modules a module's source may import (module level and inside functions), as absolute names:
    `import a.b`, `from a import b` (b if it is a submodule, else a), relative forms resolved."""
    found = _module_path(name)
    if found is None:
        return ()
    path, is_pkg = found
    package = name if is_pkg else name.rpartition(".")[0]
    out: set[str] = set()
    for m in _import_statements(_source(path).decode("utf-8")):
        if m.group(3):
            out.update(part.split()[0] for part in m.group(3).split(",") if part.strip())
            continue
        module, names = m.group(1), m.group(2).strip("() \t\n")
        level = len(module) - len(module.lstrip("."))
        if level:
            base = package.split(".")
            base = base[: len(base) - (level - 1)] if level > 1 else base
            module = ".".join(base + ([module[level:]] if module[level:] else []))
        out.add(module)
        for part in names.replace("\n", ",").split(","):
            word = part.split("#")[0].strip().split(" ")[0]
            if word and word != "*" and word.isidentifier():
                out.add(f"{module}.{word}")
    return tuple(sorted(out))


@functools.lru_cache(maxsize=None)
def _source(path: Path) -> bytes:
    """A module's source, read once per process: every action function's closure shares most
    modules (a no-op build of //profiles/... hashes 483 closure entries, 66 distinct files). Like
    the other caches here it lives as long as the process, as the digests it feeds do."""
    return path.read_bytes()


@functools.lru_cache(maxsize=None)
def import_closure(module_name: str) -> tuple[tuple[str, Path], ...]:
    """Every module of the action's top-level package that importing `module_name` can execute:
    the module, the modules it imports (transitively, function-local imports included) and their
    parent packages, as sorted (module name, source file). Modules outside that package (the
    standard library, pinned third-party libraries) are covered by the key's `libraries`/`python`."""
    if _module_path(module_name) is None:
        return ()
    seen: dict[str, Path] = {}
    stack = [module_name]
    while stack:
        name = stack.pop()
        if name not in seen:
            seen[name] = _module_path(name)[0]
            stack.extend(_successors(name))
    return tuple(sorted(seen.items()))


@functools.lru_cache(maxsize=None)
def _successors(name: str) -> tuple[str, ...]:
    """The modules a module of the closure adds to it: its parent packages and the names it may
    import, kept when they are modules of its own top-level package. Computed once per module
    and process (the closures of a build's action functions share most modules; the filtering
    of imported names that are not modules was most of their cost)."""
    top = name.split(".", 1)[0]
    parts = name.split(".")
    candidates = [".".join(parts[:i]) for i in range(1, len(parts))]
    candidates += _imports_of(name)
    return tuple(n for n in candidates
                 if (n == top or n.startswith(top + ".")) and _module_path(n) is not None)


@functools.lru_cache(maxsize=None)
def implementation_digest(fn: str) -> str:
    """Digest of exactly the code an action can run: BLAKE3 over the name and bytes of every module
    in `import_closure` of the action function's module. Editing a module no action imports (the
    CLI, verify, mirror apply, the service) changes no key; editing a shared format library
    re-runs every action that imports it."""
    h = blake3.blake3()
    for name, path in import_closure(fn.split(":", 1)[0]):
        h.update(name.encode() + b"\0")
        h.update(_source(path))
        h.update(b"\0")
    return h.hexdigest()
