"""Analysis: target patterns → loaded Exportfiles → checked dependency graph → actions.

Each target's rule runs `analyze` once, after its deps, and yields providers plus actions. Errors
(missing package or target, bad label, cycle, provider mismatch) name the Exportfile and line.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from stella_build.engine.encode.archive import library_versions
from stella_build.engine.errors import ErrorInfo, StellaError, UsageError
from stella_build.engine.exportfile import LoadedExportfile, load_exportfile
from stella_build.engine.labels import Label, Pattern, parse_label, parse_pattern
from stella_build.engine.registry import rules as registered_rules
from stella_build.engine.graph import (  # noqa: F401 (BuildGraph, ConfiguredTarget re-exported)
    ActionSpec, BuildGraph, BuildOptions, ConfiguredTarget,
)
from stella_build.engine.rule_api import AnalysisContext, Selectors
from stella_build.engine.workspace import Workspace


class Loader:
    """Loads Exportfiles on demand (each at most once)."""

    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self.files: dict[str, LoadedExportfile] = {}

    def package(self, package: str, referenced_from: ErrorInfo | None = None) -> LoadedExportfile:
        if package not in self.files:
            path = self.workspace.exportfile(package)
            if not path.is_file():
                where = referenced_from or ErrorInfo("")
                raise UsageError(f"package '//{package}' has no Exportfile ({path.relative_to(self.workspace.root) if path.is_relative_to(self.workspace.root) else path})",
                                 file=where.file, line=where.line, field=where.field,
                                 target=where.target, reason="package-missing")
            display = os.path.relpath(path, self.workspace.root)
            self.files[package] = load_exportfile(path, display, package)
        return self.files[package]

    def expand(self, patterns: list[Pattern]) -> list[Label]:
        labels: list[Label] = []
        for pattern in patterns:
            if pattern.recursive:
                packages = self.workspace.packages_under(pattern.package)
                if not packages:
                    raise UsageError(f"no packages match '{pattern}'", reason="no-match")
            else:
                packages = [pattern.package]
            for pkg in packages:
                loaded = self.package(pkg)
                if pattern.name is None:
                    labels += [Label(pkg, name) for name in loaded.targets]
                elif pattern.name in loaded.targets:
                    labels.append(Label(pkg, pattern.name))
                else:
                    known = ", ".join(sorted(loaded.targets)) or "none"
                    raise UsageError(f"no target '{pattern.name}' in package '//{pkg}' (targets: {known})",
                                     file=loaded.display, reason="target-missing")
        seen: dict[Label, None] = {}
        for lbl in labels:
            seen.setdefault(lbl, None)
        return list(seen)


def _source_date_epoch(loaded: LoadedExportfile) -> int | None:
    if loaded.package.source_date_epoch is not None:
        return loaded.package.source_date_epoch
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        try:
            return int(env)
        except ValueError:
            raise UsageError(f"SOURCE_DATE_EPOCH={env!r} is not an integer", reason="bad-source-date-epoch") from None
    return None


@dataclass
class TargetGraph:
    """The loaded (not yet analyzed) graph: what `query` works on."""

    loader: Loader
    requested: list[Label]
    order: list[Label]  # dependency order
    deps_of: dict[Label, list[Label]]

    def rule_of(self, label: Label) -> str:
        return self.loader.package(label.package).targets[label.name].rule


def load_graph(workspace: Workspace, pattern_texts: list[str]) -> TargetGraph:
    loader = Loader(workspace)
    requested = loader.expand([parse_pattern(p) for p in pattern_texts])
    order: list[Label] = []
    state: dict[Label, str] = {}
    deps_of: dict[Label, list[Label]] = {}

    def visit(label: Label, stack: list[Label], ref: ErrorInfo | None) -> None:
        if state.get(label) == "done":
            return
        if state.get(label) == "active":
            cycle = stack[stack.index(label):] + [label]
            loaded = loader.package(stack[-1].package)
            raise UsageError("dependency cycle: " + " -> ".join(map(str, cycle)),
                             file=loaded.display,
                             line=loaded.line_of("targets", stack[-1].name, "deps"),
                             target=str(stack[-1]), field="deps", reason="dependency-cycle")
        loaded = loader.package(label.package, ref)
        params = loaded.targets.get(label.name)
        if params is None:
            known = ", ".join(sorted(loaded.targets)) or "none"
            where = ref or ErrorInfo("", file=loaded.display)
            raise UsageError(f"missing dependency: no target '{label.name}' in package "
                             f"'//{label.package}' (targets: {known})", file=where.file,
                             line=where.line, field=where.field, target=where.target, reason="dependency-missing")
        state[label] = "active"
        deps = []
        for text in params.deps:
            dep_ref = ErrorInfo("", target=str(label), file=loaded.display,
                                line=loaded.line_of("targets", label.name, "deps"), field="deps")
            try:
                dep = parse_label(text, label.package)
            except UsageError as exc:
                raise UsageError(exc.errors[0].message, target=str(label), file=loaded.display,
                                 line=dep_ref.line, field="deps", reason=exc.reason) from None
            visit(dep, stack + [label], dep_ref)
            deps.append(dep)
        deps_of[label] = deps
        state[label] = "done"
        order.append(label)

    for label in requested:
        visit(label, [], None)
    return TargetGraph(loader, requested, order, deps_of)


def analyze(workspace: Workspace, pattern_texts: list[str],
            options: BuildOptions | None = None) -> BuildGraph:
    """Load, check and analyze the targets matching `pattern_texts`; rules see `options`.
    Raises StellaError subclasses naming the Exportfile, line, target and field."""
    tg = load_graph(workspace, pattern_texts)
    loader, order, deps_of, requested = tg.loader, tg.order, tg.deps_of, tg.requested
    rules = registered_rules()
    base_libraries = library_versions()
    targets: dict[Label, ConfiguredTarget] = {}
    actions: dict[str, ActionSpec] = {}
    for label in order:
        loaded = loader.package(label.package)
        params = loaded.targets[label.name]
        rule = rules[params.rule]
        dep_providers = [(d, targets[d].providers) for d in deps_of[label]]
        for dep, provs in dep_providers:
            if rule.accepts and not any(isinstance(p, rule.accepts) for p in provs):
                wanted = " or ".join(t.__name__ for t in rule.accepts)
                raise UsageError(f"dependency {dep} (rule {targets[dep].rule}) provides none of "
                                 f"{wanted}, which rule '{rule.name}' consumes",
                                 target=str(label), file=loaded.display,
                                 line=loaded.line_of("targets", label.name, "deps"), field="deps", reason="provider-mismatch")
        selectors = getattr(params, "selectors", None) or Selectors()
        ctx = AnalysisContext(label=label, rule=rule, workspace=workspace,
                              source_date_epoch=_source_date_epoch(loaded),
                              selectors=selectors.merged_over(loaded.package.selectors),
                              deps=dep_providers, base_libraries=base_libraries,
                              exportfile=loaded.display, options=options,
                              remote_secrets=params.remote_secrets)
        try:
            providers = rule().analyze(ctx, params)
        except StellaError as exc:  # keep the exit code (e.g. 4 for a missing signing key)
            info = exc.errors[0]
            if (info.field or "").startswith("--"):  # a command-line option (--base): no Exportfile line
                raise type(exc)(info.message, target=str(label), file=info.file, line=info.line,
                                field=info.field, reason=info.reason) from None
            raise type(exc)(info.message, target=str(label), file=info.file or loaded.display,
                            line=info.line or loaded.line_of("targets", label.name,
                                                             *(info.field or "").split(".")),
                            field=info.field, reason=info.reason) from None
        providers = [*providers, *(
            dataclasses.replace(pb, file=pb.file or loaded.display,
                                line=pb.line or loaded.line_of("targets", label.name, *(pb.field or "").split(".")))
            for pb in ctx.post_builds)]
        targets[label] = ConfiguredTarget(label, rule.name, deps_of[label], providers, ctx.actions)
        for spec in ctx.actions:
            actions[spec.id] = spec
    return BuildGraph(targets=targets, requested=requested, actions=actions)
