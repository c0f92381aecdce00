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
class Bundle(Provider):
    """A finished export bundle: its directory files, manifest and archive."""

    profile: str
    files: dict[str, Artifact]
    manifest: Artifact
    archive: Artifact | None = None
