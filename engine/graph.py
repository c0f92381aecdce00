"""The analysed build graph: artifacts, providers, actions, targets (no pydantic, no rule).

Analysis (engine/analysis.py) produces a `BuildGraph`; the scheduler, materialization and the
build summary consume it. These types live apart from `rule_api` (which re-exports them for
rules) so that a build whose analysis is answered from the analysis memo (engine/fastpath.py)
imports neither pydantic nor any rule module. `graph_to_json` / `graph_from_json` carry a graph
through that memo: plain JSON, never pickle, since the cache directory is only a file store.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stella_build.engine.labels import Label, parse_label


@dataclass(frozen=True)
class Artifact:
    """A file (or a directory tree when `tree`) that an action reads.

    Source artifacts have `producer=None` and an absolute `path`; derived ones name the action id
    that produces them and the output path inside that action's output directory.
    """

    logical: str
    producer: str | None = None
    output: str = ""
    path: Path | str | None = None  # source artifacts: absolute path (a str from glob)
    tree: bool = False

    @property
    def path_str(self) -> str:
        """`path` as a str (sources from glob already hold one). A plain property: the key of
        every action reads it once per source file, and functools.cached_property takes a lock
        per first access (~4 µs; 0.4 s of a 100k-advisory build)."""
        path = self.path
        return path if type(path) is str else str(path)

    def child(self, rel: str) -> "Artifact":
        """One file inside a tree artifact, so an action can read it without staging the tree."""
        if not self.tree or self.producer is None:
            raise ValueError(f"{self.logical} is not a derived tree artifact")
        return Artifact(logical=f"{self.logical}{rel}", producer=self.producer,
                        output=f"{self.output}{rel}", tree=False)


class Provider:
    """Base of typed information passed from a target to the targets depending on it."""


# Advice for errors about `base`: one `build --base` (STELLA_MIRROR_BASE) names the base of every
# base-taking target of the build command (mirror_delta: a mirror; trivy_db_patch: a trivy.db).
BASE_OPTION_SCOPE = ("--base applies to every mirror_delta and trivy_db_patch target of the build: when "
                     "their bases differ, build them in separate commands, each with its own --base.")


@dataclass(frozen=True)
class BuildOptions:
    """Options of one build request that rules read during analysis (typed values, never
    environment variables). The CLI fills them from `build --sign/--base` (or their environment
    variables STELLA_SIGN / STELLA_MIRROR_BASE, read once there); the service from its API."""

    sign: str | None = None   # an absolute cosign.key path, or "keyless"
    base: Path | None = None  # base mirror for mirror_delta targets (export.json, mirror/ or its directory)


@dataclass(frozen=True)
class PostBuild(Provider):
    """Work to carry out after a successful build, on the materialized outputs of the target that
    returned it, outside every action key and never hermetic (so such a build is never answered
    from the no-op memo). `kind` names the handler ("keyless-sign"); `source` and `field` say where
    it was requested, for messages."""

    kind: str
    source: str
    field: str | None = None
    file: str | None = None   # the Exportfile and line of `field`, filled in by analysis
    line: int | None = None


@dataclass(frozen=True)
class DefaultOutputs(Provider):
    """Files materialized under stella-out/<package>/<target>/, keyed by relative path."""

    files: dict[str, Artifact]
    trees: dict[str, Artifact] = field(default_factory=dict)  # relative dir → tree artifact
    primary: tuple[str, ...] = ()  # the paths worth printing after a build (e.g. the archive)


@dataclass
class ActionSpec:
    """One unit of cached work, as declared during analysis."""

    id: str
    label: Label
    rule: str
    rule_version: str
    mnemonic: str
    fn: str
    inputs: dict[str, Artifact]
    params: dict[str, Any]
    outputs: list[str]
    source_date_epoch: int | None  # None: derived from the inputs by the rule, never the wall clock
    libraries: dict[str, str]
    # Values the action needs but that must never reach the key record or the cache (a signing
    # key's path and password). Rules put an identity of the secret (a public key digest) in params.
    secrets: dict[str, str] = field(default_factory=dict)
    # The target allows these secrets on a remote executor's worker, sealed (Exportfile
    # `remote_secrets`, set by the engine, not by rules). Never part of the key record: where an
    # action runs changes no byte. A secret value that is an absolute path of a regular file is
    # sent as that file's bytes, and the worker's action sees the path of its private copy.
    secrets_remote: bool = False

    def out(self, name: str) -> Artifact:
        if name not in self.outputs:
            raise KeyError(f"action {self.id} declares no output {name!r}")
        return Artifact(logical=f"{self.id}/{name}", producer=self.id, output=name,
                        tree=name.endswith("/"))


@dataclass
class ConfiguredTarget:
    label: Label
    rule: str
    deps: list[Label]
    providers: list[Provider] = field(default_factory=list)
    actions: list[ActionSpec] = field(default_factory=list)

    def default_outputs(self) -> DefaultOutputs:
        for p in self.providers:
            if isinstance(p, DefaultOutputs):
                return p
        return DefaultOutputs(files={})


@dataclass
class BuildGraph:
    targets: dict[Label, ConfiguredTarget]  # in dependency order
    requested: list[Label]
    actions: dict[str, ActionSpec]  # in dependency order

    def post_build(self) -> list[tuple[Label, PostBuild]]:
        """The post-build requests of the requested targets, in request order."""
        return [(lbl, p) for lbl in self.requested for p in self.targets[lbl].providers
                if isinstance(p, PostBuild)]

    def actions_for(self, labels: list[Label]) -> list[ActionSpec]:
        """Actions needed for `labels`, transitively through artifacts, in dependency order."""
        needed: set[str] = set()
        stack = [a.id for lbl in labels for a in self.targets[lbl].actions]
        stack += [art.producer for lbl in labels
                  for art in self._outputs(lbl) if art.producer]
        while stack:
            action_id = stack.pop()
            if action_id in needed:
                continue
            needed.add(action_id)
            stack.extend(a.producer for a in self.actions[action_id].inputs.values() if a.producer)
        return [a for a_id, a in self.actions.items() if a_id in needed]

    def _outputs(self, label: Label):
        d = self.targets[label].default_outputs()
        return list(d.files.values()) + list(d.trees.values())


# -- the analysis memo's JSON form -----------------------------------------------------------------

GRAPH_FORMAT = 1


def memoizable(graph: BuildGraph) -> bool:
    """Whether `graph` may be stored: no action holds secrets (a key path or password must never
    reach the cache) and no requested target asks for a post-build step (not hermetic)."""
    return not graph.post_build() and not any(a.secrets for a in graph.actions.values())


def _art(a: Artifact) -> list:
    path = a.path if a.path is None else a.path_str
    if a.producer is None and not a.tree and not a.output:
        return [a.logical, path]  # a source file: the common case, kept short
    return [a.logical, a.producer, a.output, path, a.tree]


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"analysis memo: bad {what}")


def _strs(v, what: str) -> list:
    _need(type(v) is list and all(type(x) is str for x in v), what)
    return v


def _art_from(v: list) -> Artifact:
    if type(v) is list and len(v) == 2 and type(v[0]) is str and type(v[1]) is str:
        return Artifact(logical=v[0], path=v[1])
    _need(type(v) is list and len(v) == 5 and type(v[0]) is str and type(v[2]) is str
          and (v[1] is None or type(v[1]) is str) and (v[3] is None or type(v[3]) is str)
          and type(v[4]) is bool and (v[1] is not None or v[3] is not None), "artifact")
    return Artifact(logical=v[0], producer=v[1], output=v[2], path=v[3], tree=v[4])


def _named_arts(v, what: str) -> dict[str, Artifact]:
    _need(type(v) is list and all(type(x) is list and len(x) == 2 and type(x[0]) is str for x in v), what)
    return {k: _art_from(a) for k, a in v}


_FN = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def graph_to_json(graph: BuildGraph) -> dict:
    """The parts of `graph` a build reads (targets' actions and DefaultOutputs, every action),
    as JSON values. Other providers are dropped: only analysis and rules read them.
    ValueError when the graph is not `memoizable`."""
    if not memoizable(graph):
        raise ValueError("a graph with secrets or post-build steps is not stored")
    actions = [{"id": s.id, "label": str(s.label), "rule": s.rule, "rule_version": s.rule_version,
                "mnemonic": s.mnemonic, "fn": s.fn,
                "inputs": [[k, _art(v)] for k, v in s.inputs.items()],
                "params": s.params, "outputs": s.outputs, "source_date_epoch": s.source_date_epoch,
                "libraries": s.libraries, "secrets_remote": s.secrets_remote}
               for s in graph.actions.values()]
    targets = []
    for t in graph.targets.values():
        d = t.default_outputs()
        targets.append({"label": str(t.label), "rule": t.rule, "deps": [str(x) for x in t.deps],
                        "actions": [s.id for s in t.actions],
                        "files": [[k, _art(v)] for k, v in d.files.items()],
                        "trees": [[k, _art(v)] for k, v in d.trees.items()],
                        "primary": list(d.primary)})
    return {"format": GRAPH_FORMAT, "requested": [str(x) for x in graph.requested],
            "targets": targets, "actions": actions}


def graph_from_json(data: dict) -> BuildGraph:
    """The inverse of `graph_to_json`. ValueError (or KeyError, TypeError) on a value of the
    wrong shape: a type, a function reference that is not `module:qualname`, an action, target
    or producer named but absent (the caller treats any of them as a memo miss)."""
    _need(type(data) is dict, "graph")
    if data.get("format") != GRAPH_FORMAT:
        raise ValueError("unknown graph format")
    labels: dict[str, Label] = {}

    def label(text: str) -> Label:
        lbl = labels.get(text)
        if lbl is None:
            lbl = labels[text] = parse_label(text, "")
        return lbl

    actions: dict[str, ActionSpec] = {}
    _need(type(data.get("actions")) is list and type(data.get("targets")) is list, "graph")
    for a in data["actions"]:
        _need(type(a) is dict and all(type(a.get(k)) is str for k in
                                      ("id", "label", "rule", "rule_version", "mnemonic", "fn")), "action")
        _need(bool(_FN.fullmatch(a["fn"])), "action function reference")
        _need(type(a.get("params")) is dict and type(a.get("libraries")) is dict
              and all(type(v) is str for v in a["libraries"].values())
              and (a.get("source_date_epoch") is None or type(a["source_date_epoch"]) is int)
              and type(a.get("secrets_remote")) is bool, f"action {a['id']}")
        actions[a["id"]] = ActionSpec(
            id=a["id"], label=label(a["label"]), rule=a["rule"], rule_version=a["rule_version"],
            mnemonic=a["mnemonic"], fn=a["fn"], inputs=_named_arts(a.get("inputs"), "inputs"),
            params=a["params"], outputs=_strs(a.get("outputs"), "outputs"),
            source_date_epoch=a["source_date_epoch"], libraries=a["libraries"],
            secrets_remote=a["secrets_remote"])
    targets: dict[Label, ConfiguredTarget] = {}
    for t in data["targets"]:
        _need(type(t) is dict and type(t.get("label")) is str and type(t.get("rule")) is str, "target")
        outputs = DefaultOutputs(files=_named_arts(t.get("files"), "files"),
                                 trees=_named_arts(t.get("trees"), "trees"),
                                 primary=tuple(_strs(t.get("primary"), "primary")))
        lbl = label(t["label"])
        ids = _strs(t.get("actions"), "target actions")
        _need(all(i in actions for i in ids), "target actions")
        targets[lbl] = ConfiguredTarget(lbl, t["rule"], [label(x) for x in _strs(t.get("deps"), "deps")],
                                        [outputs], [actions[i] for i in ids])
    requested = [label(x) for x in _strs(data.get("requested"), "requested")]
    _need(bool(requested) and all(r in targets for r in requested), "requested targets")
    for spec in actions.values():
        _need(all(a.producer is None or a.producer in actions for a in spec.inputs.values()), "inputs")
    for t in targets.values():
        d = t.providers[0]
        _need(all(a.producer is None or a.producer in actions
                  for a in (*d.files.values(), *d.trees.values())), "outputs")
    return BuildGraph(targets=targets, requested=requested, actions=actions)
