"""The json:raw bundle: canonical evidence JSONL (zstd 19), index, manifest, provenance, archive.

Layout (directory bundle; `bundle.tar.gz` holds everything but provenance, which names the archive's
digest and so cannot be inside it):
    data/raw/advisories/<ecosystem>/<source>-<shard>.jsonl.zst   records sorted by (id, path)
    indexes/advisories.index.json
    manifests/export.json        contents[] sorted by path, rerunHash
    manifests/provenance.json    in-toto Statement v1 + SLSA provenance v1 (no wall-clock fields)
    bundle.tar.gz, bundle.tar.gz.sha256

Actions: one `RawShard` per source shard (filter by selectors, drop withdrawn, compress) and one
`Bundle` assembly, so editing one advisory re-runs its source shard, its RawShard and the assembly.
"""
from __future__ import annotations

import io
import json
import re
from typing import Literal

from pydantic import Field

from stella_build.engine.rule_api import canonical_json
from stella_build.engine.rule_api import TarEntry, gzip_bytes, library_versions, tar_bytes, zstd_bytes
from stella_build.engine.rule_api import record_digest, sha256_hex
from stella_build.engine.rule_api import parse_rfc3339, rfc3339
from stella_build.engine.rule_api import (
    ActionContext, AnalysisContext, DefaultOutputs, Rule, Selectors, TargetParams,
)

from stella_build.rules.providers import AdvisorySet, Bundle
from stella_build.rules.signing import SignParams, add_signing, resolve_signer
from stella_build.rules.formats.bundle import MANIFEST_SCHEMA, MANIFEST_VERSION, BUILDER_ID, BUILD_TYPE, builder_version, manifest_contents, rerun_hash
from stella_build.rules.evidence.select import selected as _selected, since_epoch as _since

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


class JsonRawParams(TargetParams):
    rule: Literal["json_raw"]
    selectors: Selectors | None = Field(None, description="overrides the package's [package.selectors]")
    tenant: str = Field("default", pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
    revision: str = Field("r1", pattern=r"^r[0-9]+$", description="profile revision recorded in the manifest")
    compression_level: int = Field(19, ge=1, le=22, description="zstd level of the JSONL files")
    sign: SignParams | None = Field(None, description="sign the bundle (docs/signing.md); also enabled by STELLA_SIGNING_KEY")


class JsonRaw(Rule):
    name = "json_raw"
    version = "1"
    doc = "json:raw profile: canonical advisory JSONL (zstd), index, manifest, provenance, bundle.tar.gz"
    Params = JsonRawParams
    accepts = (AdvisorySet,)

    def analyze(self, ctx: AnalysisContext, params: JsonRawParams) -> list:
        selectors = (params.selectors.merged_over(ctx.selectors) if params.selectors else ctx.selectors)
        sel = {k: v for k, v in selectors.model_dump().items() if v is not None}
        shard_trees = {}
        for dep_label, aset in ctx.providers(AdvisorySet):
            source_slug = _SAFE.sub("_", dep_label.name)
            stats = dict(getattr(aset, "stats", ()))  # osv_source: quarantined files per shard
            for shard, art in aset.shards:
                spec = ctx.action(
                    mnemonic="RawShard", id=f"{source_slug}-{shard}",
                    fn=raw_shard,
                    inputs=shard_inputs(art, stats.get(shard)), outputs=["out/"],
                    params={"selectors": sel, "level": params.compression_level,
                            "shard": f"{source_slug}-{shard}"})
                shard_trees[f"shards/{source_slug}-{shard}"] = spec.out("out/")
        sources = sorted({json.dumps(a.source.to_json(), sort_keys=True) for _, a in ctx.providers(AdvisorySet)})
        profile = {"kind": "json", "variant": "raw", "name": ctx.label.name, "revision": params.revision}
        signer = resolve_signer(ctx, params.sign)  # fails here (exit 4) on a missing key or password
        bundle = ctx.action(
            mnemonic="Bundle", fn=assemble,
            inputs=shard_trees, outputs=["bundle/", "bundle.tar.gz", "bundle.tar.gz.sha256"],
            params={"profile": profile, "tenant": params.tenant, "selectors": sel,
                    "target": str(ctx.label), "sources": [json.loads(s) for s in sources],
                    "builder_version": builder_version(),
                    "rules": {"json_raw": self.version, "osv_source": "1"},
                    **({"signer": signer.provenance_params()} if signer else {})})
        files = {"bundle.tar.gz": bundle.out("bundle.tar.gz"),
                 "bundle.tar.gz.sha256": bundle.out("bundle.tar.gz.sha256")}
        bundle_tree = bundle.out("bundle/")
        files.update(add_signing(ctx, signer, manifest=(bundle_tree, "manifests/export.json"),
                                 archive=files["bundle.tar.gz"],
                                 provenance=(bundle_tree, "manifests/provenance.json")))
        return [Bundle(profile="json:raw", files=files, manifest=bundle_tree, archive=files["bundle.tar.gz"]),
                DefaultOutputs(files=files, trees={"": bundle_tree},
                               primary=("bundle.tar.gz", "manifests/export.json"))]


def shard_inputs(records, stats=None) -> dict:
    """RawShard inputs: the shard's records.jsonl and, when the source has one, its stats.json
    (which lists the quarantined files)."""
    return {"records.jsonl": records, **({"stats.json": stats} if stats is not None else {})}


def shard_quarantined(actx: ActionContext) -> list[dict]:
    """The shard's quarantined files ({path, field, reason, message}) from its stats.json."""
    if "stats.json" not in actx.inputs:
        return []
    return json.loads(actx.input("stats.json").read_bytes()).get("quarantined") or []


def duplicate_id_warnings(ids: list) -> list[dict]:
    """Build-summary warnings for an advisory id written by more than one file ([id, path] pairs
    from the RawShard metas). The records stay apart (both exported); the warning names each
    file after the first, with reason ``duplicate-id``."""
    paths: dict[str, set[str]] = {}
    for adv_id, path in ids:
        paths.setdefault(adv_id, set()).add(path)
    out = []
    for adv_id, found in sorted(paths.items()):
        first, *others = sorted(found)
        out += [{"file": other, "field": "id", "reason": "duplicate-id",
                 "message": f"advisory id {adv_id!r} is also written by {first}; both records are kept"}
                for other in others]
    return out


def merge_quarantined(*lists) -> list[dict]:
    """Quarantined file entries from several shards, one per (path, field), sorted."""
    out = {(q["path"], q["field"]): q for entries in lists for q in entries}
    return [out[k] for k in sorted(out)]


# -- actions -----------------------------------------------------------------------------


def raw_shard(actx: ActionContext) -> dict:
    """Filter one shard's records, drop withdrawn ones, write one zstd JSONL per ecosystem."""
    sel, level, shard = actx.params["selectors"], actx.params["level"], actx.params["shard"]
    since = _since(sel)
    by_eco: dict[str, list[bytes]] = {}
    meta = {"withdrawn": [], "filtered": 0, "materials": [], "records": {}, "modified": [],
            "index": [], "ids": []}
    # Per-record memo: decoding a record line and encoding it again canonically is ~65 us a
    # record, as much as zstd level 11 of it. What this action needs of a line (the fields below
    # and its canonical bytes) is a pure function of the line's bytes and the params, so a line
    # seen before is replayed from its digest; a new line is decoded and re-encoded as always.
    lines_memo = actx.memo("raw-line", raw_shard)
    # read, not staged: a 2–10 MB copy per shard is a file creation plus a write for nothing
    with io.BytesIO(actx.read_input("records.jsonl")) as f:
        for line in f:
            digest = record_digest(line)
            hit = lines_memo.get(digest)
            if hit is not None:
                path_, sha, rec_id, withdrawn, eco, modified, canonical = json.loads(hit)
                canonical = line if canonical is None else canonical.encode()
            else:
                rec = json.loads(line)
                path_, sha, rec_id = rec["path"], rec["sha256"], rec["id"]
                withdrawn, modified = bool(rec.get("withdrawn")), rec["modified"]
                eco = None  # None: filtered out by the selectors
                if not withdrawn and _selected(rec, sel, since):
                    eco = _SAFE.sub("_", rec["ecosystems"][0]) if rec["ecosystems"] else "_none"
                encoded = canonical_json.dumps_line(rec)
                canonical = line if encoded == line else encoded
                lines_memo.put(digest, canonical_json.dumps(
                    [path_, sha, rec_id, withdrawn, eco, modified,
                     None if canonical is line else canonical.decode()]))
            meta["materials"].append([path_, sha])
            meta["ids"].append([rec_id, path_])
            if withdrawn:
                meta["withdrawn"].append(rec_id)
                continue
            if eco is None:
                meta["filtered"] += 1
                continue
            path = f"data/raw/advisories/{eco}/{shard}.jsonl.zst"
            by_eco.setdefault(path, []).append(canonical)
            meta["modified"].append(modified)
            meta["index"].append([rec_id, eco, path, modified])
    lines_memo.save()
    # Per-file memo (docs/engine.md "Incremental rebuilds"): zstd at level 19 is most of this
    # action's time, and a file's compressed bytes are a pure function of its JSONL bytes and the
    # level (a param, so part of the memo scope): a file none of whose records changed is copied
    # from the memo, only the touched ones are compressed again.
    memo = actx.memo("raw-shard", raw_shard)
    for path, lines in sorted(by_eco.items()):
        data = b"".join(lines)
        digest = record_digest(data)
        packed = memo.get(digest)
        if packed is None:
            packed = zstd_bytes(data, level)
            memo.put(digest, packed)
        actx.write_output(f"out/{path}", packed)
        meta["records"][path] = len(lines)
    memo.save()
    meta["modified"] = max(meta["modified"], default=None)
    quarantined = shard_quarantined(actx)
    if quarantined:  # only then: clean shards keep their bytes
        meta["quarantined"] = quarantined
    actx.write_output(f"out/meta/{shard}.json", canonical_json.dumps(meta))
    return {"records": sum(meta["records"].values()), "withdrawn": len(meta["withdrawn"]),
            "memo": memo.stats(), "line_memo": lines_memo.stats()}


def assemble(actx: ActionContext) -> dict:
    files: dict[str, bytes] = {}
    records: dict[str, int] = {}
    withdrawn, materials, index, filtered, newest = [], [], [], 0, None
    quarantined: list[dict] = []
    ids: list[list[str]] = []
    for name in sorted(actx.inputs):
        for rel, data in actx.read_tree_files(name):
            if rel.startswith("meta/"):
                meta = json.loads(data)
                quarantined += meta.get("quarantined", [])
                ids += meta.get("ids", [])
                records.update(meta["records"])
                withdrawn += meta["withdrawn"]
                materials += meta["materials"]
                index += meta["index"]
                filtered += meta["filtered"]
                if meta["modified"] and (newest is None or meta["modified"] > newest):
                    newest = meta["modified"]
            else:
                files[rel] = data
    epoch = actx.source_date_epoch
    if epoch is None:  # derived from the evidence, never from the wall clock
        epoch = parse_rfc3339(newest) if newest else 0
    quarantined = merge_quarantined(quarantined)
    index_doc = _index(index, records, sorted(set(withdrawn)), filtered, quarantined)
    files["indexes/advisories.index.json"] = canonical_json.dumps(index_doc)
    counts = {"records": sum(records.values()), "withdrawnExcluded": len(withdrawn), "filteredOut": filtered}
    contents = write_bundle(actx, files, records, counts, sorted(materials), epoch, quarantined)
    warnings = duplicate_id_warnings(ids)
    return {"records": counts["records"], "withdrawn": len(withdrawn), "files": len(contents),
            **({"warnings": warnings} if warnings else {})}


def write_bundle(actx: ActionContext, files: dict[str, bytes], records: dict[str, int], counts: dict,
                 materials: list, epoch: int, quarantined: list[dict] | None = None) -> list[dict]:
    """Manifest, archive, provenance and sidecar of a JSON bundle from its data files; every JSON
    profile (raw, policy) ends here so they share one manifest and provenance format.
    ``quarantined``: malformed input files left out ({path, field, reason, message}); listed in
    the manifest (``quarantined``, ``counts.quarantined``) only when there are some."""
    p = actx.params
    contents = manifest_contents(files, records)
    rerun = rerun_hash(contents)
    manifest = {
        "schema": MANIFEST_SCHEMA, "version": MANIFEST_VERSION,
        "exportId": "exp-" + sha256_hex(canonical_json.dumps([p["profile"], p["tenant"], rerun]))[:24],
        "profile": p["profile"], "tenant": p["tenant"], "selectors": p["selectors"],
        "generatedAt": rfc3339(epoch), "contents": contents, "rerunHash": rerun,
        "counts": counts, "sources": p["sources"],
    }
    if quarantined:  # absent otherwise, so bundles without one keep their bytes
        manifest["counts"] = {**counts, "quarantined": len(quarantined)}
        manifest["quarantined"] = quarantined
    manifest_bytes = canonical_json.dumps(manifest)
    files["manifests/export.json"] = manifest_bytes
    archive = gzip_bytes(tar_bytes([TarEntry(path, data) for path, data in files.items()], mtime=epoch))
    archive_sha = sha256_hex(archive)
    provenance = _provenance(p, manifest_bytes, archive_sha, [list(m) for m in materials], epoch)
    files["manifests/provenance.json"] = canonical_json.dumps(provenance)
    for path, data in files.items():
        actx.write_output(f"bundle/{path}", data)
    actx.write_output("bundle.tar.gz", archive)
    actx.write_output("bundle.tar.gz.sha256", f"{archive_sha}  bundle.tar.gz\n".encode())
    return contents


def _index(index: list, records: dict[str, int], withdrawn: list[str], filtered: int,
           quarantined: list[dict] | None = None) -> dict:
    ecosystems: dict[str, dict] = {}
    for path, n in sorted(records.items()):
        eco = path.split("/")[3]
        e = ecosystems.setdefault(eco, {"records": 0, "files": []})
        e["records"] += n
        e["files"].append(path)
    return {"schema": "https://stella-build.dev/schemas/advisories-index/v1",
            "records": sum(records.values()), "ecosystems": ecosystems,
            "advisories": sorted(index), "excluded": {"withdrawn": withdrawn, "filteredOut": filtered,
                                                      **({"quarantined": quarantined} if quarantined else {})}}


def _provenance(p: dict, manifest: bytes, archive_sha: str, materials: list, epoch: int) -> dict:
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "manifests/export.json", "digest": {"sha256": sha256_hex(manifest)}},
                    {"name": "bundle.tar.gz", "digest": {"sha256": archive_sha}}],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"target": p["target"], "profile": p["profile"],
                                       "selectors": p["selectors"], "tenant": p["tenant"]},
                "internalParameters": {"sourceDateEpoch": epoch, "rules": p["rules"],
                                       "libraries": library_versions(),
                                       **({"signer": p["signer"]} if p.get("signer") else {})},
                "resolvedDependencies": [{"name": path, "digest": {"sha256": sha}}
                                         for path, sha in materials],
            },
            "runDetails": {"builder": {"id": BUILDER_ID,
                                       "version": {"stella-build": p["builder_version"]}},
                           "metadata": {}},
        },
    }
