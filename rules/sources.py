"""Source rules: read evidence files into sharded canonical JSONL records.

``osv_source`` keeps OSV records as they are (raw); the other source rules normalize RustSec,
Alpine secdb, VEX and SBOMs, and ``osv_normalize`` normalizes an ``osv_source``'s raw shards.

A source's files are split into shards by a hash of their logical path, one action per shard, so
editing one advisory re-runs one small action. The shard of a file never depends on other files.

Every rule shards its files like ``osv_source`` (by a hash of the logical path, one action per
shard), so a changed file re-runs one small action. A shard action parses each file with the
parsers of ``stella_build.rules.evidence.sources`` and writes:

- ``records.jsonl``: one canonical JSON line per normalized record (``Advisory``,
  ``VexStatement`` or ``SbomComponent``), sorted by the model's ``sort_key()``;
- ``stats.json``: files read (``materials``: [path, sha256]) and records written, and the records
  kept but worth listing as [id, ecosystem, package, path(, reason)]: ``withdrawn``, ``invalid``
  (a version the ecosystem cannot order), ``git_only``, ``no_ranges``, ``unfixed_marker``;
- for VEX and SBOMs, ``documents.jsonl``: the raw documents (canonical JSON), one per file.

A malformed file is quarantined: the shard skips it, lists it in ``stats.json`` ``quarantined``
({path, field, reason, message}) and returns it in the action's ``warnings`` (the build summary
prints them; exit 0). With ``strict = true`` on the source target it fails its action instead with
an ``ActionError`` naming the file and the field (reason ``evidence-invalid``). Withdrawn
records are never dropped here: they are kept (``withdrawn`` set) and listed in ``stats.json``;
consumers decide (json:policy excludes them from data and matching and lists them in its index).

``osv_normalize`` turns an ``osv_source`` target's raw shards into normalized advisories with one
action per raw shard, leaving ``osv_source`` itself (and json:raw) untouched.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, ClassVar, Literal

import blake3
from pydantic import BaseModel, ConfigDict, Field

from stella_build.engine.rule_api import canonical_json
from stella_build.engine.rule_api import sha256_hex
from stella_build.engine.rule_api import (
    ActionContext, ActionError, AnalysisContext, Artifact, DefaultOutputs, Rule, TargetParams,
    UsageError, input_name, logical_from_input_name, record_digest,
)

from stella_build.rules.providers import AdvisorySet, NormalizedAdvisorySet, SbomSet, SourceMeta, VexSet


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
    strict: bool = Field(False, description=(
        "fail the build (exit 1, reason evidence-invalid) on a malformed file instead of "
        "quarantining it (skipped, listed in stats.json and the bundles, a warning)"))


@dataclass(frozen=True)
class OsvSourceSet(AdvisorySet):
    """The AdvisorySet of an ``osv_source``, with each shard's ``stats.json`` (files read and
    ``quarantined`` files) and the target's ``strict`` flag, which rules normalizing or mapping
    the raw shards honour too. (Belongs in providers.py as fields of AdvisorySet; kept here
    because that file is shared; consumers read it with ``getattr(aset, "stats", ())``.)"""

    stats: tuple[tuple[str, Artifact], ...] = ()
    strict: bool = False


def strict_params(strict: bool) -> dict:
    """Action params for ``strict``: only when set, so non-strict action keys stay as they were."""
    return {"strict": True} if strict else {}


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
        shards, stats = [], []
        width = len(str(params.shards - 1))
        for idx in sorted(buckets):
            shard = f"{idx:0{width}d}"
            spec = ctx.action(
                mnemonic="OsvShard", id=shard,
                fn=osv_shard,
                inputs={input_name(a): a for a in buckets[idx]},
                outputs=["records.jsonl", "stats.json"],
                params={"source": meta.to_json(), **strict_params(params.strict)},
            )
            shards.append((shard, spec.out("records.jsonl")))
            stats.append((shard, spec.out("stats.json")))
        return [OsvSourceSet(source=meta, shards=tuple(shards), stats=tuple(stats), strict=params.strict),
                DefaultOutputs(files=_shard_files(shards, stats))]


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
    """Parse every OSV file of the shard into one canonical JSONL record per file.

    Writes records.jsonl (sorted by (id, path)) and stats.json {"files", "records",
    "quarantined": [{path, field, reason, message}]}; returns {"records"(, "quarantined",
    "warnings")}. A malformed file is quarantined, or fails the action when params["strict"]."""
    from stella_build.rules.evidence.model import EvidenceError, read_evidence_input
    from stella_build.rules.evidence.sources.osv import load_osv_document

    # Per-file memo (docs/engine.md "Incremental rebuilds"): the record line of a file is a pure
    # function of (logical path, bytes, params), so an unchanged file's line is replayed, not
    # re-parsed. Looked up by the file's BLAKE3 from the action key (input_digest), so an
    # unchanged file is never even staged or read. Malformed files are never memoized (they are
    # re-checked every run).
    memo = actx.memo("osv-shard", osv_shard)
    records, quarantined = [], []  # [(sort key, canonical line)]
    for name in sorted(actx.inputs):
        logical = logical_from_input_name(name)
        digest = record_digest(logical.encode() + b"\0" + actx.input_digest(name))
        hit = memo.get(digest)
        if hit is not None:
            rec_id, _, line = hit.partition(b"\n")  # the id as a JSON string: no raw newline
            # canonical JSON escapes only with a backslash: without one the text is the id
            plain = rec_id[:1] == b'"' and b"\\" not in rec_id
            rec_id = rec_id[1:-1].decode("utf-8") if plain else json.loads(rec_id)
            records.append(((rec_id, logical), line + b"\n"))
            continue
        try:
            data = read_evidence_input(actx, name, logical)  # size-capped, no staged copy
        except EvidenceError as exc:
            _quarantine(actx, exc, quarantined)
            continue
        try:
            doc = load_osv_document(data, logical)
        except EvidenceError as exc:
            _quarantine(actx, exc, quarantined)
            continue
        ecos, pkgs = _ecosystems_and_packages(doc)
        line = canonical_json.dumps_line({
            "id": doc["id"], "modified": doc["modified"], "published": doc.get("published"),
            "withdrawn": doc.get("withdrawn"), "ecosystems": ecos, "packages": pkgs,
            "source": actx.params["source"]["name"], "path": logical, "sha256": sha256_hex(data),
            "document": doc,
        })
        records.append(((doc["id"], logical), line))
        memo.put(digest, canonical_json.dumps(doc["id"]) + b"\n" + line[:-1])
    records.sort(key=itemgetter(0))
    with open(actx.output("records.jsonl"), "wb") as out:
        out.write(b"".join(line for _, line in records))
    quarantined.sort(key=lambda q: (q["path"], q["field"]))
    actx.write_output("stats.json", canonical_json.dumps(
        {"files": len(actx.inputs), "records": len(records), "quarantined": quarantined}))
    memo.save()
    return {"records": len(records), "memo": memo.stats(), **quarantine_summary(quarantined)}


# -- normalized evidence sources ------------------------------------------------------------



# -- parameters --------------------------------------------------------------------------------

class _SourceParams(TargetParams):
    srcs: list[str] = Field(..., min_length=1, description=(
        "globs of input files: package-relative, '//'-workspace-relative or '@root//' external"))
    shards: int = Field(16, ge=1, le=4096, description="number of shard actions the files are split into")
    source: SourceInfoParams | None = Field(None, description="provenance/licence of the data")
    strict: bool = Field(False, description=(
        "fail the build (exit 1, reason evidence-invalid) on a malformed file instead of "
        "quarantining it (skipped, listed in stats.json and the bundles, a warning)"))


class RustsecSourceParams(_SourceParams):
    rule: Literal["rustsec_source"]


class AlpineSecdbSourceParams(_SourceParams):
    rule: Literal["alpine_secdb_source"]


class VexSourceParams(_SourceParams):
    rule: Literal["vex_source"]


class SbomSourceParams(_SourceParams):
    rule: Literal["sbom_source"]


class OsvNormalizeParams(TargetParams):
    rule: Literal["osv_normalize"]


# -- rules -------------------------------------------------------------------------------------

def source_meta(ctx: AnalysisContext, params: _SourceParams) -> SourceMeta:
    if params.source:
        return SourceMeta(**params.source.model_dump())
    return SourceMeta(name=f"//{ctx.package}:{ctx.label.name}")


class _ShardedSource(Rule):
    """A source rule: glob files, one shard action per hash bucket, a typed provider."""

    format: ClassVar[str]
    mnemonic: ClassVar[str]
    documents: ClassVar[bool] = False  # VEX and SBOM shards also keep the raw documents

    def analyze(self, ctx: AnalysisContext, params: _SourceParams) -> list:
        files = ctx.glob(params.srcs)
        if not files:
            raise UsageError(f"srcs {params.srcs} matched no files", field="srcs")
        meta = source_meta(ctx, params)
        buckets: dict[int, list[Artifact]] = {}
        for art in files:
            buckets.setdefault(shard_of(art.logical, params.shards), []).append(art)
        width = len(str(params.shards - 1))
        outputs = ["records.jsonl", "stats.json"] + (["documents.jsonl"] if self.documents else [])
        shards, stats, docs = [], [], []
        for idx in sorted(buckets):
            shard = f"{idx:0{width}d}"
            spec = ctx.action(
                mnemonic=self.mnemonic, id=shard, fn=evidence_shard,
                inputs={input_name(a): a for a in buckets[idx]}, outputs=outputs,
                params={"format": self.format, "source": meta.to_json(), **strict_params(params.strict)})
            shards.append((shard, spec.out("records.jsonl")))
            stats.append((shard, spec.out("stats.json")))
            if self.documents:
                docs.append((shard, spec.out("documents.jsonl")))
        return [self.provider(meta, tuple(shards), tuple(stats), tuple(docs)),
                DefaultOutputs(files=_shard_files(shards, stats))]

    def provider(self, meta, shards, stats, docs):
        return NormalizedAdvisorySet(source=meta, shards=shards, stats=stats, format=self.format)


class RustsecSource(_ShardedSource):
    name = "rustsec_source"
    version = "1"
    doc = "RustSec advisories (Markdown + TOML front matter) → NormalizedAdvisorySet"
    Params = RustsecSourceParams
    format = "rustsec"
    mnemonic = "RustsecShard"


class AlpineSecdbSource(_ShardedSource):
    name = "alpine_secdb_source"
    version = "1"
    doc = "Alpine secdb YAML (secfixes) → NormalizedAdvisorySet, one record per (id, package, release)"
    Params = AlpineSecdbSourceParams
    format = "alpine"
    mnemonic = "AlpineShard"


class VexSource(_ShardedSource):
    name = "vex_source"
    version = "1"
    doc = "OpenVEX 0.2 / CSAF 2.0 VEX JSON → VexSet of statements (and the raw documents)"
    Params = VexSourceParams
    format = "vex"
    mnemonic = "VexShard"
    documents = True

    def provider(self, meta, shards, stats, docs):
        return VexSet(source=meta, shards=shards, documents=docs, stats=stats)


class SbomSource(_ShardedSource):
    name = "sbom_source"
    version = "1"
    doc = "CycloneDX 1.4-1.6 / SPDX 2.2-2.3 JSON SBOMs → SbomSet of components with purls"
    Params = SbomSourceParams
    format = "sbom"
    mnemonic = "SbomShard"
    documents = True

    def provider(self, meta, shards, stats, docs):
        return SbomSet(source=meta, shards=shards, documents=docs, stats=stats)


def normalize_advisory_set(ctx: AnalysisContext, dep_label, aset: AdvisorySet,
                           mnemonic: str = "NormalizeOsv") -> NormalizedAdvisorySet:
    """Declare one normalization action per raw OSV shard of ``aset``; used by ``osv_normalize``
    and by rules (json_policy) that normalize their AdvisorySet deps themselves."""
    if aset.format != "osv":
        raise UsageError(f"{dep_label} provides {aset.format!r} advisories; only 'osv' can be normalized",
                         field="deps")
    slug = dep_label.name
    shards, stats = [], []
    for shard, art in aset.shards:
        spec = ctx.action(
            mnemonic=mnemonic, id=f"{slug}-{shard}", fn=evidence_shard,
            inputs={"raw.jsonl": art}, outputs=["records.jsonl", "stats.json"],
            params={"format": "osv-raw", "source": aset.source.to_json(),
                    **strict_params(getattr(aset, "strict", False))})
        shards.append((f"{slug}-{shard}", spec.out("records.jsonl")))
        stats.append((f"{slug}-{shard}", spec.out("stats.json")))
    return NormalizedAdvisorySet(source=aset.source, shards=tuple(shards), stats=tuple(stats),
                                 format="osv", origin=str(dep_label))


class OsvNormalize(Rule):
    name = "osv_normalize"
    version = "1"
    doc = "normalize the raw shards of osv_source deps → NormalizedAdvisorySet (one action per shard)"
    Params = OsvNormalizeParams
    accepts = (AdvisorySet,)

    def analyze(self, ctx: AnalysisContext, params: OsvNormalizeParams) -> list:
        sets = ctx.providers(AdvisorySet)
        if not sets:
            raise UsageError("osv_normalize needs at least one osv_source dep", field="deps")
        out: list = [normalize_advisory_set(ctx, label, aset) for label, aset in sets]
        files = {k: v for n in out for k, v in _shard_files(n.shards, n.stats).items()}
        return out + [DefaultOutputs(files=files)]


def _shard_files(shards, stats) -> dict[str, Artifact]:
    """stella-out/<pkg>/<target>/shards/<shard>.jsonl and <shard>.stats.json."""
    return {**{f"shards/{name}.jsonl": art for name, art in shards},
            **{f"shards/{name}.stats.json": art for name, art in stats}}


# -- the shard action ------------------------------------------------------------------------

def _evidence_error(exc) -> ActionError:
    """The ActionError for an EvidenceError: file, field and reason (evidence-invalid or
    evidence-too-large) carried over, so the build fails with exit 1 naming the file."""
    return ActionError(exc.message, file=exc.path, field=exc.field, reason=exc.reason)


def _quarantine(actx: ActionContext, exc, quarantined: list) -> None:
    """Record a malformed file (an EvidenceError) in ``quarantined``, or fail the action with it
    when the source target is ``strict``. One bad upstream record must not stop a daily build."""
    if actx.params.get("strict"):
        raise _evidence_error(exc) from None
    quarantined.append({"path": exc.path, "field": exc.field, "reason": exc.reason,
                        "message": exc.message})


def quarantine_summary(quarantined: list[dict]) -> dict:
    """The action stats for quarantined files: a count and the generic ``warnings`` list
    ({file, field, reason, message}) the engine collects into the build summary."""
    if not quarantined:
        return {}
    return {"quarantined": len(quarantined),
            "warnings": [{"file": q["path"], "field": q["field"], "reason": q["reason"],
                          "message": f"quarantined (skipped): {q['message']}"} for q in quarantined]}


def _source_info(params: dict):
    from stella_build.rules.evidence.model import SourceInfo

    return SourceInfo(**params["source"])


def _advisory_notes(adv, notes: dict[str, list]) -> None:
    """List advisories that are kept but cannot match anything, with the reason."""
    from stella_build.rules.evidence.versions import VersionError, compare

    key = [adv.id, adv.ecosystem, adv.package.normalized, adv.source_path]
    if adv.withdrawn:
        notes["withdrawn"].append(key)
    evaluable = [r for r in adv.ranges if r.type != "GIT"]
    # A package-less entry (ecosystem "GIT", the repository as the package) is never evaluated by
    # version, even with the `versions` list the OSV schema asks producers to add (git tags, in no
    # ecosystem's order): it is git_only, not invalid.
    if adv.ecosystem == "GIT" and adv.versions:
        notes["git_only"].append(key + ["GIT-only entry: its versions are repository tags, not "
                                        "evaluated by version (affected commits only)"])
        return
    if not evaluable and not adv.versions:
        reason = ("unfixed_marker" if (adv.database_specific.get("alpine") or {}).get("unfixed_marker")
                  else "git_only" if adv.ranges else "no_ranges")
        notes[reason].append(key)
        return
    probe = [e.version for r in evaluable for e in r.events if e.version not in ("0", "*")]
    probe += list(adv.versions)
    for v in probe:
        try:
            compare(adv.ecosystem, v, "0")  # parses v with the ecosystem's rules
        except VersionError as exc:
            notes["invalid"].append(key + [f"version {v!r}: {exc}"])
            return


def _parse_file(fmt: str, data: bytes, logical: str, source) -> tuple[list, Any]:
    """(normalized records, raw document or None) for one input file."""
    if fmt == "rustsec":
        from stella_build.rules.evidence.sources.rustsec import normalize_rustsec
        return normalize_rustsec(data, logical, source), None
    if fmt == "alpine":
        from stella_build.rules.evidence.sources.alpine import normalize_secdb
        return normalize_secdb(data, logical, source), None
    if fmt == "vex":
        from stella_build.rules.evidence.sources.vex import detect_vex_format, load_vex
        records = load_vex(data, logical)
        doc = json.loads(data)
        return records, {"format": detect_vex_format(doc), "document": doc}
    if fmt == "sbom":
        from stella_build.rules.evidence.sources.sbom import detect_sbom_format, load_sbom
        records = load_sbom(data, logical)
        doc = json.loads(data)
        subject = next((c.subject for c in records if c.subject), None)
        return records, {"format": detect_sbom_format(doc), "subject": subject, "document": doc}
    raise ActionError(f"unknown evidence format {fmt!r}")


def _osv_raw_records(actx: ActionContext, source, quarantined: list) -> tuple[list, list]:
    """Normalize every document of an osv_source shard (records.jsonl with 'document'); a
    document that does not normalize is quarantined (or fails the action when strict)."""
    from stella_build.rules.evidence.model import EvidenceError
    from stella_build.rules.evidence.sources.osv import normalize_osv

    records, materials = [], []
    with open(actx.input("raw.jsonl"), "rb") as f:
        for line in f:
            raw = json.loads(line)
            materials.append([raw["path"], raw["sha256"]])
            try:
                records += normalize_osv(raw["document"], raw["path"], source)
            except EvidenceError as exc:
                _quarantine(actx, exc, quarantined)
    return records, materials


def evidence_shard(actx: ActionContext) -> dict:
    """Parse and normalize one shard of evidence files (see the module docstring)."""
    from stella_build.rules.evidence.model import EvidenceError, read_evidence_input

    fmt = actx.params["format"]
    source = _source_info(actx.params)
    documents: list[dict] = []
    quarantined: list[dict] = []
    if fmt == "osv-raw":
        records, materials = _osv_raw_records(actx, source, quarantined)
    else:
        records, materials = [], []
        for name in sorted(actx.inputs):
            logical = logical_from_input_name(name)
            try:
                data = read_evidence_input(actx, name, logical)  # size-capped, no staged copy
            except EvidenceError as exc:
                _quarantine(actx, exc, quarantined)
                continue
            materials.append([logical, sha256_hex(data)])
            try:
                recs, doc = _parse_file(fmt, data, logical, source)
            except EvidenceError as exc:
                _quarantine(actx, exc, quarantined)
                continue
            records += recs
            if doc is not None:
                documents.append({"path": logical, "sha256": sha256_hex(data), **doc})
    records.sort(key=lambda r: r.sort_key())
    notes: dict[str, list] = {k: [] for k in ("withdrawn", "invalid", "git_only", "no_ranges",
                                               "unfixed_marker")}
    if fmt in ("osv-raw", "rustsec", "alpine"):
        for rec in records:
            _advisory_notes(rec, notes)
    with open(actx.output("records.jsonl"), "wb") as out:
        for rec in records:
            out.write(canonical_json.dumps_line(rec.to_canonical()))
    if fmt in ("vex", "sbom"):
        with open(actx.output("documents.jsonl"), "wb") as out:
            for doc in sorted(documents, key=lambda d: d["path"]):
                out.write(canonical_json.dumps_line(doc))
    stats = {"files": len(materials), "records": len(records), "materials": sorted(materials),
             **{k: sorted(v) for k, v in notes.items() if fmt not in ("vex", "sbom")}}
    if quarantined:  # only when there is one, so the stats (and bundles) of clean shards keep their bytes
        stats["quarantined"] = sorted(quarantined, key=lambda q: (q["path"], q["field"]))
    actx.write_output("stats.json", canonical_json.dumps(stats))
    summary = {"records": len(records), **quarantine_summary(stats.get("quarantined", []))}
    if notes["withdrawn"]:
        summary["withdrawn"] = len(notes["withdrawn"])
    if notes["invalid"]:
        summary["invalid"] = len(notes["invalid"])
    return summary


RULES: tuple[type[Rule], ...] = (OsvSource, RustsecSource, AlpineSecdbSource, VexSource, SbomSource,
                                OsvNormalize)
