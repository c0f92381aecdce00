"""Typed providers passed between the built-in rules."""
from __future__ import annotations

from dataclasses import dataclass

from stella_build.engine.rule_api import Artifact, Provider


@dataclass(frozen=True)
class SourceMeta:
    """Where evidence comes from; carried into manifests for licence attribution."""

    name: str
    url: str | None = None
    license: str | None = None
    attribution: str | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in (("name", self.name), ("url", self.url), ("license", self.license),
                                  ("attribution", self.attribution)) if v is not None}


@dataclass(frozen=True)
class AdvisorySet(Provider):
    """Raw advisory records as sharded canonical JSONL (one `records.jsonl` per shard action).

    Each line: {"id", "modified", "published", "withdrawn", "ecosystems", "packages",
    "source", "path", "sha256", "document"} sorted by (id, path)."""

    source: SourceMeta
    shards: tuple[tuple[str, Artifact], ...]  # (shard name, records.jsonl artifact)
    format: str = "osv"


@dataclass(frozen=True)
class TrivyArtifacts(Provider):
    """A Trivy DB's distributable files (`db.tar.gz` or `javadb.tar.gz`, and `metadata.json`), for
    rules that ship it further (mirrors)."""

    kind: str  # "trivy-db" | "trivy-java-db"
    files: dict[str, Artifact]


@dataclass(frozen=True)
class Bundle(Provider):
    """A finished export bundle: its directory files, manifest and archive."""

    profile: str
    files: dict[str, Artifact]
    manifest: Artifact
    archive: Artifact | None = None


@dataclass(frozen=True)
class NormalizedAdvisorySet(Provider):
    """Normalized advisories (``stella_build.rules.evidence.model.Advisory``) as sharded canonical JSONL.

    Each shard is one action's ``records.jsonl`` (one ``Advisory.to_canonical()`` per line, sorted
    by ``Advisory.sort_key()``, withdrawn records included with ``withdrawn`` set) and its
    ``stats.json`` (``{"files", "records", "materials": [[path, sha256]...], "withdrawn",
    "invalid", "git_only", "no_ranges", "unfixed_marker"}``, each list of [id, ecosystem, package,
    path(, reason)]; see ``stella_build.rules.sources``).
    ``origin`` names the AdvisorySet target it was normalized from, when there is one."""

    source: SourceMeta
    shards: tuple[tuple[str, "Artifact"], ...]  # (shard name, records.jsonl artifact)
    stats: tuple[tuple[str, "Artifact"], ...] = ()  # (shard name, stats.json artifact)
    format: str = "osv"
    origin: str | None = None


@dataclass(frozen=True)
class VexSet(Provider):
    """VEX statements (``VexStatement.to_canonical()``) as sharded canonical JSONL sorted by
    ``VexStatement.sort_key()``, plus per shard ``documents.jsonl``: one raw document per file
    ({"path", "sha256", "format", "document"}) sorted by path."""

    source: SourceMeta
    shards: tuple[tuple[str, "Artifact"], ...]
    documents: tuple[tuple[str, "Artifact"], ...] = ()
    stats: tuple[tuple[str, "Artifact"], ...] = ()


@dataclass(frozen=True)
class SbomSet(Provider):
    """SBOM components (``SbomComponent.to_canonical()``) as sharded canonical JSONL sorted by
    ``SbomComponent.sort_key()``, plus per shard ``documents.jsonl`` ({"path", "sha256",
    "format", "subject", "document"} sorted by path)."""

    source: SourceMeta
    shards: tuple[tuple[str, "Artifact"], ...]
    documents: tuple[tuple[str, "Artifact"], ...] = ()
    stats: tuple[tuple[str, "Artifact"], ...] = ()


@dataclass(frozen=True)
class MirrorTree(Provider):
    """A built mirror: the plaintext mirror/ tree, its summary (mirror.json, describing the layout
    actually shipped) and, when signed, the signature files as (path under mirror/, artifact)."""

    tree: Artifact
    summary: Artifact
    signatures: tuple[tuple[str, Artifact], ...] = ()
    encrypted: bool = False


@dataclass(frozen=True)
class DevPortalBundle(Provider):
    """A built devportal:offline bundle (rules/devportal.py), for rules that carry it further
    (mirror_full, offline_kit) by reference to the devportal action's outputs: never rebuilt,
    never re-rendered, so the carried bytes are the portal's bytes.

    `files`: the output directory's single files by relative path (the archive, its `.sha256`,
    `provenance.json`, `manifest.json`, `checksums.txt`, `instructions-portable.txt`,
    `verify-offline.sh`, and when signed `manifest.dsse.json`, `cosign.pub`); `trees`: its section
    directories (`portal`, `specs`, `sdks`, `changelog`) as tree artifacts. Together they are the
    target's output directory, which `verify-offline.sh` and `stella-build devportal verify` check
    as a build tree (archive + unpacked bundle)."""

    files: dict[str, Artifact]
    trees: dict[str, Artifact]
    archive: Artifact
    manifest: Artifact
    signed: bool = False
