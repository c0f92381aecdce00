"""The rule API: everything a rule may use, and the only engine module rules import.

A rule (BuildStream's element life cycle, Pants' typed rules) is a class with:
  - `name`, `version` (bump when output bytes change), `doc`
  - `Params`: a pydantic model of its Exportfile keys (validated up front, part of the schema)
  - `accepts`: provider types its `deps` must offer (checked at analysis)
  - `analyze(ctx, params)`: declares actions and returns providers (no I/O beyond ctx.glob)
An action is a plain module-level function `fn(actx: ActionContext) -> dict | None`, passed to
`ctx.action(fn=...)` as the function object (the engine records it as "module:qualname", so a
rename breaks at import time, not in a worker). It runs in a hermetic sandbox, reads only
`actx.input(...)`, writes only `actx.output(...)`, and returns small JSON-able stats (record
counts...) shown in the build summary.

Options of the build request (`--sign`, `--base`) reach rules as `ctx.options` (`BuildOptions`);
work that must happen after the build and outside every action key (keyless signing) is declared
by returning a `PostBuild` provider, which the caller (the CLI, the service) carries out.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Callable, ClassVar, Iterable

from pydantic import BaseModel, ConfigDict, Field, StrictBool

# What rules may use of the engine besides the classes below, re-exported here so that a rule never
# imports another engine module (the import contract in pyproject.toml enforces it): the byte-exact
# encoders, digests, RFC 3339 time, atomic writes and the user-facing errors.
from stella_build.engine.encode import canonical_json  # noqa: F401
from stella_build.engine.encode.archive import (  # noqa: F401
    GZIP_OS_UNKNOWN, TarEntry, gzip_bytes, library_versions, tar_bytes, tar_member_offset, write_tar,
    zstd_bytes, zstd_many,
)
from stella_build.engine.encode.digest import file_digests, file_sha256, sha256_hex  # noqa: F401
from stella_build.engine.encode.timefmt import parse_rfc3339, rfc3339  # noqa: F401
from stella_build.engine.errors import (  # noqa: F401
    ActionError, BuildFailed, InputTooLarge, NetworkRequired, StellaError, TrustMaterialMissing, UsageError,
    VerificationFailed,
)
from stella_build.engine.fsutil import atomic_file, write_atomic  # noqa: F401
from stella_build.engine.labels import Label


# -- Exportfile parameters ---------------------------------------------------------------------

class Selectors(BaseModel):
    """Which evidence a target exports. Per-package defaults merge under per-target values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ecosystems: list[str] | None = Field(None, description="OSV ecosystem names to keep, e.g. ['PyPI', 'Go']")
    packages: list[str] | None = Field(None, description="package names to keep (exact, case-insensitive)")
    modified_since: str | None = Field(
        None, description="keep records modified at or after this RFC 3339 date/time",
        pattern=r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?$")

    def merged_over(self, defaults: "Selectors") -> "Selectors":
        data = defaults.model_dump()
        data.update({k: v for k, v in self.model_dump().items() if v is not None})
        return Selectors(**data)


class TargetParams(BaseModel):
    """Keys every target has. Rules subclass this with `rule: Literal["<rule name>"]`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: str
    deps: list[str] = Field(default_factory=list, description="labels of targets this one consumes")
    description: str | None = None
    tags: list[str] = Field(default_factory=list)
    remote_secrets: StrictBool = Field(
        False, description="allow this target's actions that hold secrets (signing keys, passwords) "
        "to run on a remote executor's workers, their secrets sealed to the workers' age recipient "
        "(docs/scale-out.md); default false: they run on this machine. Changes no output byte")


# -- artifacts, providers, actions: engine/graph.py (no pydantic), re-exported here ----------

from stella_build.engine.graph import (  # noqa: E402,F401
    BASE_OPTION_SCOPE, ActionSpec, Artifact, BuildOptions, DefaultOutputs, PostBuild, Provider,
)



class Rule:
    name: ClassVar[str]
    version: ClassVar[str] = "1"
    doc: ClassVar[str] = ""
    Params: ClassVar[type[TargetParams]]
    accepts: ClassVar[tuple[type[Provider], ...]] = ()
    libraries: ClassVar[dict[str, str]] = {}  # extra byte-affecting library versions (e.g. SQLite)

    def analyze(self, ctx: "AnalysisContext", params: TargetParams) -> list[Provider]:
        raise NotImplementedError


class AnalysisContext:
    """What `Rule.analyze` sees: its label, resolved deps' providers, globbing, and `action()`."""

    def __init__(self, *, label: Label, rule: type[Rule], workspace, source_date_epoch: int | None,
                 selectors: Selectors, deps: list[tuple[Label, list[Provider]]],
                 base_libraries: dict[str, str], exportfile: str,
                 options: BuildOptions | None = None, remote_secrets: bool = False):
        self.label = label
        self.options = options or BuildOptions()
        self.rule = rule
        self.workspace = workspace
        self.source_date_epoch = source_date_epoch
        self.selectors = selectors
        self.deps = deps
        self.exportfile = exportfile
        self.actions: list[ActionSpec] = []
        self.post_builds: list[PostBuild] = []
        self._libraries = {**base_libraries, **rule.libraries}
        self.remote_secrets = remote_secrets  # the target's `remote_secrets` (ActionSpec.secrets_remote)

    @property
    def package(self) -> str:
        return self.label.package

    def providers(self, kind: type) -> list[tuple[Label, Any]]:
        """(dep label, provider) for every dep that offers `kind`, in deps order."""
        return [(lbl, p) for lbl, provs in self.deps for p in provs if isinstance(p, kind)]

    def post_build(self, request: PostBuild) -> None:
        """Ask the caller to carry out `request` on this target's outputs after a successful build
        (added to the target's providers)."""
        if request not in self.post_builds:
            self.post_builds.append(request)

    def glob(self, patterns: Iterable[str], field: str = "srcs") -> list[Artifact]:
        """Source artifacts of the regular files matching `patterns` (package-relative,
        `//`-workspace-relative or `@root//`); `field` is the Exportfile key they come from, named
        in errors (symlink leaving its root, bad glob: exit 2)."""
        return [Artifact(logical=logical, path=path)
                for logical, path in self.workspace.glob(list(patterns), self.package, field=field)]

    def action(self, *, mnemonic: str, fn: Callable[["ActionContext"], dict | None],
               inputs: dict[str, Artifact], outputs: list[str],
               params: dict[str, Any] | None = None, id: str | None = None,
               secrets: dict[str, str] | None = None) -> ActionSpec:
        """Declare one cached action. `fn` is a module-level function; UsageError if it is not."""
        fn = function_reference(fn)
        action_id = f"{self.label}#{mnemonic}" + (f"/{id}" if id else "")
        if any(a.id == action_id for a in self.actions):
            raise UsageError(f"rule {self.rule.name} declared action {action_id} twice")
        spec = ActionSpec(
            id=action_id, label=self.label, rule=self.rule.name, rule_version=self.rule.version,
            mnemonic=mnemonic, fn=fn, inputs=dict(inputs), params=dict(params or {}),
            outputs=list(outputs), source_date_epoch=self.source_date_epoch,
            libraries=self._libraries, secrets=dict(secrets or {}),
            secrets_remote=self.remote_secrets and bool(secrets))
        self.actions.append(spec)
        return spec


def function_reference(fn: Callable | str) -> str:
    """"module:qualname" of a module-level action function (a string is taken as already one).

    Raises UsageError for a lambda, a nested function or a method: a worker process must be able
    to import it by that name."""
    if isinstance(fn, str):
        return fn
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or not qualname or "." in qualname or "<" in qualname:
        raise UsageError(f"action function {fn!r} is not a module-level function")
    return f"{module}:{qualname}"


def record_digest(data: bytes) -> bytes:
    """The 32-byte BLAKE3 digest naming a record by its exact bytes (``ActionContext.memo`` keys)."""
    import blake3

    return blake3.blake3(data).digest()


def input_name(artifact: Artifact) -> str:
    """A stable sandbox-relative name for an artifact (no absolute paths, no '//').

    `@root//a/b` → `@root/a/b`, `pkg/a/b` stays; `logical_from_input_name` reverses it."""
    return artifact.logical.replace("//", "/").lstrip("/")


def logical_from_input_name(name: str) -> str:
    if name.startswith("@"):
        root, _, rest = name.partition("/")
        return f"{root}//{rest}"
    return name


class ActionContext:
    """What an action function sees inside its sandbox."""

    def __init__(self, *, action_id: str, label: str, sandbox: Path, params: dict[str, Any],
                 source_date_epoch: int | None, inputs: Mapping[str, Path],
                 secrets: dict[str, str] | None = None, memo_cache: Path | None = None,
                 libraries: dict[str, str] | None = None):
        self.action_id = action_id
        # The cache directory holding the per-record memo, set by the engine's sandbox for a
        # `build`-mode action only (None: check mode or outside the engine, memo disabled).
        self.memo_cache = memo_cache
        # The action's byte-affecting library versions (ActionSpec.libraries): they scope the memo.
        self.libraries = dict(libraries or {})
        self.label = label
        self.sandbox = sandbox
        self.params = params
        self.source_date_epoch = source_date_epoch
        # name → staged path (a directory for tree inputs); in the engine's sandbox a mapping
        # that stages each input on first access (engine/sandbox.py LazyInputs)
        self.inputs = inputs
        self.secrets = secrets or {}
        self.out_dir = sandbox / "out"

    def input(self, name: str) -> Path:
        """The staged path of input `name` (a directory for a tree input). In the engine's
        sandbox the file is staged and checked against its digest on this first access."""
        try:
            return self.inputs[name]
        except KeyError:
            raise ActionError(f"action reads undeclared input {name!r}") from None

    def read_input(self, name: str, limit: int | None = None) -> bytes:
        """The bytes of file input `name`. In the engine's sandbox they are read from the source
        and checked against the digest the action key names, without staging a copy (a shard
        action reading thousands of files would otherwise create thousands). `limit`: refuse a
        file larger than this many bytes with InputTooLarge (reason ``input-too-large``) before
        holding it in memory. ActionError for an undeclared or tree input."""
        if hasattr(self.inputs, "read"):
            return self._engine_read("read", name, limit)
        path = self.input(name)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read() if limit is None else f.read(limit + 1)
        if limit is not None and max(size, len(data)) > limit:
            raise InputTooLarge(name, max(size, len(data)), limit)
        return data

    def open_input(self, name: str) -> "io.BufferedReader":
        """File input `name` as a binary stream, for inputs too large to hold in memory. In the
        engine's sandbox it is read from its source without a staged copy and its digest is
        checked when the stream ends or closes, at the latest when the action returns: a changed
        input fails the action before any output is recorded. ActionError for an undeclared or
        tree input."""
        if hasattr(self.inputs, "open"):
            return self._engine_read("open", name)
        return open(self.input(name), "rb")

    def _engine_read(self, method: str, name: str, *args):
        """`LazyInputs.<method>(name, *args)` (engine/sandbox.py), its KeyError (an undeclared
        input, or a file input where a tree is wanted and the reverse) as an ActionError."""
        try:
            return getattr(self.inputs, method)(name, *args)
        except KeyError:
            kind = "a tree" if method == "read_tree" else "a file"
            raise ActionError(f"action reads undeclared input {name!r} (or it is not {kind})") from None

    def input_digest(self, name: str) -> bytes:
        """The 32-byte BLAKE3 digest of file input `name`, known from the action's key without
        reading (or staging) the file: what a per-record memo looks an unchanged file up by.
        Outside the engine's sandbox it is computed from the file. ActionError for an undeclared
        input or a tree input."""
        lookup = getattr(self.inputs, "digest", None)
        known = lookup(name) if lookup is not None else None
        if known is not None:
            return bytes.fromhex(known)
        path = self.input(name)
        if path.is_dir():
            raise ActionError(f"input {name!r} is a tree: it has no single digest")
        import blake3

        return blake3.blake3(path.read_bytes()).digest()

    def output(self, name: str) -> Path:
        path = self.out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_output(self, name: str, data: bytes) -> Path:
        path = self.output(name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def memo(self, namespace: str, fn: Callable | str):
        """The per-record memo of this action (``stella_build.engine.memo.RecordMemo``): look a
        record's result up by ``record_digest(bytes)`` with ``get``, ``put`` new results,
        ``save()`` at the end. Scoped by ``namespace``, the implementation digest of ``fn`` (the
        action function: its import closure), ``self.params`` and the byte-affecting library
        versions (the action's and this process's); disabled (always misses) under
        ``build --check`` and outside an engine sandbox. Values must be a pure function of the
        record's bytes and the params (docs/engine.md "Incremental rebuilds")."""
        from stella_build.engine.memo import RecordMemo, memo_root

        return RecordMemo(memo_root(self.memo_cache), namespace, function_reference(fn),
                          self.params, self.action_id, self.libraries)

    def read_tree_files(self, name: str) -> list[tuple[str, bytes]]:
        """Sorted (relative path, bytes) of the files of tree input `name`, as ``tree_files``
        gives them but read without staging copies (each checked against its digest in the
        engine's sandbox). ActionError for an undeclared input or a file input."""
        if hasattr(self.inputs, "read_tree"):
            return self._engine_read("read_tree", name)
        return [(rel, path.read_bytes()) for rel, path in self.tree_files(name)]

    def tree_files(self, name: str) -> list[tuple[str, Path]]:
        """Sorted (relative path, path) of the files of a staged tree input."""
        root = self.input(name)
        out = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for fn in filenames:
                p = Path(dirpath) / fn
                out.append((p.relative_to(root).as_posix(), p))
        return sorted(out, key=lambda t: t[0].encode())
