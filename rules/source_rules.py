"""Source rules: read evidence files into sharded canonical JSONL records.

A source's files are split into shards by a hash of their logical path, one action per shard, so
editing one advisory re-runs one small action. The shard of a file never depends on other files.
"""
from __future__ import annotations

from typing import Literal

import blake3
from pydantic import BaseModel, ConfigDict, Field

from stella_build.engine.encode import canonical_json
from stella_build.engine.encode.digest import sha256_hex
from stella_build.engine.rule_api import (
    ActionContext, ActionError, AnalysisContext, DefaultOutputs, Rule, TargetParams, UsageError,
    input_name, logical_from_input_name,
)

from .providers import AdvisorySet, SourceMeta


class SourceInfoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., description="source name shown in manifests, e.g. 'Python Packaging Advisory Database'")
    url: str | None = None
    license: str | None = Field(None, description="SPDX licence id of the data, e.g. CC-BY-4.0")
    attribution: str | None = Field(None, description="attribution text required by the licence")


class OsvSourceParams(TargetParams):
    rule: Literal["osv_source"]
    srcs: list[str] = Field(..., min_length=1, description=(
        "globs of OSV JSON/YAML files: package-relative, '//'-workspace-relative or '@root//' external"))
    shards: int = Field(16, ge=1, le=4096, description="number of shard actions the files are split into")
    source: SourceInfoParams | None = Field(None, description="provenance/licence of the data")


def shard_of(logical_path: str, shards: int) -> int:
    return int.from_bytes(blake3.blake3(logical_path.encode()).digest()[:8], "big") % shards


class OsvSource(Rule):
    name = "osv_source"
    version = "1"
    doc = "OSV advisories (JSON or YAML) → AdvisorySet of sharded canonical JSONL"
    Params = OsvSourceParams

    def analyze(self, ctx: AnalysisContext, params: OsvSourceParams) -> list:
        files = ctx.glob(params.srcs)
        if not files:
            raise UsageError(f"srcs {params.srcs} matched no files", field="srcs")
        meta = (SourceMeta(**params.source.model_dump()) if params.source
                else SourceMeta(name=f"//{ctx.package}:{ctx.label.name}"))
        buckets: dict[int, list] = {}
        for art in files:
            buckets.setdefault(shard_of(art.logical, params.shards), []).append(art)
        shards = []
        width = len(str(params.shards - 1))
        for idx in sorted(buckets):
            shard = f"{idx:0{width}d}"
            spec = ctx.action(
                mnemonic="OsvShard", id=shard,
                fn="stella_build.rules.source_rules:osv_shard",
                inputs={input_name(a): a for a in buckets[idx]},
                outputs=["records.jsonl"],
                params={"source": meta.to_json()},
            )
            shards.append((shard, spec.out("records.jsonl")))
        return [AdvisorySet(source=meta, shards=tuple(shards)),
                DefaultOutputs(files={f"shards/{name}.jsonl": art for name, art in shards})]


def _ecosystems_and_packages(doc: dict) -> tuple[list[str], list[list[str]]]:
    ecos, pkgs = [], []
    for aff in doc.get("affected") or []:
        pkg = aff.get("package") or {}
        eco, name = pkg.get("ecosystem"), pkg.get("name")
        if eco and eco not in ecos:
            ecos.append(eco)
        if eco and name and [eco, name] not in pkgs:
            pkgs.append([eco, name])
    return ecos, pkgs


def osv_shard(actx: ActionContext) -> dict:
    """Parse every OSV file of the shard into one canonical JSONL record per file."""
    from .evidence import EvidenceError
    from .sources.osv import load_osv_document

    records = []
    for name in sorted(actx.inputs):
        logical = logical_from_input_name(name)
        data = actx.input(name).read_bytes()
        try:
            doc = load_osv_document(data, logical)
        except EvidenceError as exc:
            raise ActionError(exc.message, file=exc.path, field=exc.field) from None
        ecos, pkgs = _ecosystems_and_packages(doc)
        records.append({
            "id": doc["id"], "modified": doc["modified"], "published": doc.get("published"),
            "withdrawn": doc.get("withdrawn"), "ecosystems": ecos, "packages": pkgs,
            "source": actx.params["source"]["name"], "path": logical, "sha256": sha256_hex(data),
            "document": doc,
        })
    records.sort(key=lambda r: (r["id"], r["path"]))
    with open(actx.output("records.jsonl"), "wb") as out:
        for rec in records:
            out.write(canonical_json.dumps_line(rec))
    return {"records": len(records)}
