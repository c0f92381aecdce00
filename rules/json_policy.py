"""The json:policy bundle: json:raw content + normalized evidence + policy snapshot + findings.

Layout (directory bundle; ``bundle.tar.gz`` holds everything but provenance, as for json:raw):
    data/raw/advisories/<ecosystem>/<source>-<shard>.jsonl.zst   as json:raw (osv_source deps)
    data/raw/vex/<source>-<shard>.jsonl.zst        raw VEX documents {path, sha256, format, document}
    data/raw/sboms/<subject>/sbom.json             each SBOM document (canonical JSON)
    data/normalized/advisories/<source>-<shard>.jsonl.zst   Advisory records (withdrawn excluded)
    data/normalized/vex/<source>-<shard>.jsonl.zst          VexStatement records
    data/normalized/sboms/<source>-<shard>.jsonl.zst        SbomComponent records
    data/policy/snapshot.json          the policy as evaluated, its digest, evaluation time
    data/policy/evaluations.jsonl.zst  findings sorted by (subject, purl, advisory id, path, sbom)
    indexes/advisories.index.json      as json:raw
    indexes/evidence.index.json        normalized counts per source; withdrawn / invalid /
                                       not-evaluable records listed with the reason
    indexes/findings.index.json        counts by decision/rule/subject; components not evaluated
    manifests/export.json, manifests/provenance.json, bundle.tar.gz(.sha256)

Actions: RawShard per raw OSV shard (json:raw's), NormalizeOsv per raw OSV shard, PolicyShard per
normalized advisory shard (select, compress, match against every SBOM component), one Evaluate
(policy + VEX over all matches) and one Bundle assembly. Editing one advisory re-runs its source
shard, its RawShard/NormalizeOsv/PolicyShard, Evaluate and Bundle; editing the policy re-runs
Evaluate and Bundle only.
"""
from __future__ import annotations

import json
import re
from typing import Literal

from pydantic import Field, model_validator

from stella_build.engine.rule_api import canonical_json
from stella_build.engine.rule_api import zstd_bytes
from stella_build.engine.rule_api import sha256_hex
from stella_build.engine.rule_api import parse_rfc3339, rfc3339
from stella_build.engine.rule_api import (
    ActionContext, ActionError, AnalysisContext, DefaultOutputs, Rule, Selectors, TargetParams,
    UsageError,
)

from stella_build.rules import json_raw as json_bundle
from stella_build.rules.sources import normalize_advisory_set
from stella_build.rules.evidence.policy import Policy
from stella_build.rules.providers import AdvisorySet, Bundle, NormalizedAdvisorySet, SbomSet, VexSet
from stella_build.rules.signing import SignParams, add_signing, resolve_signer

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
SNAPSHOT_SCHEMA = "https://stella-build.dev/schemas/policy-snapshot/v1"
# stats.json lists of advisories kept in the data but never matched → evidence index keys
_NOT_EVALUABLE = {"invalid": "invalid", "git_only": "gitOnly", "no_ranges": "noRanges",
                  "unfixed_marker": "unfixedMarker"}


class JsonPolicyParams(TargetParams):
    rule: Literal["json_policy"]
    selectors: Selectors | None = Field(None, description="overrides the package's [package.selectors]")
    tenant: str = Field("default", pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
    revision: str = Field("r1", pattern=r"^r[0-9]+$", description="profile revision recorded in the manifest")
    compression_level: int = Field(19, ge=1, le=22, description="zstd level of the JSONL files")
    policy_file: str | None = Field(None, description="package-relative path of the policy TOML file")
    policy: Policy | None = Field(None, description="the policy inline (instead of policy_file)")
    sign: SignParams | None = Field(None, description="sign the bundle (docs/signing.md); also enabled by STELLA_SIGNING_KEY")

    @model_validator(mode="after")
    def _one_policy(self) -> "JsonPolicyParams":
        if (self.policy_file is None) == (self.policy is None):
            raise ValueError("give exactly one of 'policy_file' and 'policy'")
        return self


def _slug(text: str) -> str:
    return _SAFE.sub("_", text)


class JsonPolicy(Rule):
    name = "json_policy"
    version = "2"
    doc = "json:policy profile: json:raw + normalized evidence + policy snapshot + evaluated findings"
    Params = JsonPolicyParams
    accepts = (AdvisorySet, NormalizedAdvisorySet, VexSet, SbomSet)

    def analyze(self, ctx: AnalysisContext, params: JsonPolicyParams) -> list:
        selectors = params.selectors.merged_over(ctx.selectors) if params.selectors else ctx.selectors
        sel = {k: v for k, v in selectors.model_dump().items() if v is not None}
        level = params.compression_level
        raw_sets, norm_sets = ctx.providers(AdvisorySet), ctx.providers(NormalizedAdvisorySet)
        if not raw_sets and not norm_sets:
            raise UsageError("json_policy needs at least one advisory source in deps", field="deps")
        inputs: dict = {}
        # 1. json:raw content, exactly as json_raw declares it
        for dep_label, aset in raw_sets:
            raw_stats = dict(getattr(aset, "stats", ()))  # osv_source: quarantined files per shard
            for shard, art in aset.shards:
                name = f"{_slug(dep_label.name)}-{shard}"
                spec = ctx.action(mnemonic="RawShard", id=name, fn=json_bundle.raw_shard,
                                  inputs=json_bundle.shard_inputs(art, raw_stats.get(shard)), outputs=["out/"],
                                  params={"selectors": sel, "level": level, "shard": name})
                inputs[f"raw/{name}"] = spec.out("out/")
        # 2. normalized advisories (OSV deps normalized here unless an osv_normalize dep covers them)
        covered = {n.origin for _, n in norm_sets if n.origin}
        normalized = [(str(lbl), n) for lbl, n in norm_sets]
        normalized += [(str(lbl), normalize_advisory_set(ctx, lbl, a)) for lbl, a in raw_sets
                       if str(lbl) not in covered]
        sboms = ctx.providers(SbomSet)
        sbom_inputs = {f"sbom/{_slug(lbl.name)}-{s}.jsonl": art for lbl, st in sboms for s, art in st.shards}
        # 3. one PolicyShard per normalized shard: select, compress, match
        for label, nset in normalized:
            slug = _slug(label.rsplit(":", 1)[-1])
            stats = dict(nset.stats)
            for shard, art in nset.shards:
                name = shard if shard.startswith(slug + "-") else f"{slug}-{shard}"
                spec = ctx.action(
                    mnemonic="PolicyShard", id=name, fn=policy_shard,
                    inputs={"records.jsonl": art, "stats.json": stats[shard], **sbom_inputs},
                    outputs=["out/"], params={"selectors": sel, "level": level, "shard": name,
                                              "source_label": label})
                inputs[f"norm/{name}"] = spec.out("out/")
        # 4. Evaluate: policy + VEX over all matches
        vexes = ctx.providers(VexSet)
        vex_inputs = {f"vex/{_slug(lbl.name)}-{s}.jsonl": art for lbl, v in vexes for s, art in v.shards}
        eval_inputs = {k: v for k, v in inputs.items() if k.startswith("norm/")}
        eval_inputs.update(vex_inputs)
        eval_inputs.update(sbom_inputs)
        eval_params: dict = {"level": level}
        if params.policy_file is not None:
            files = ctx.glob([params.policy_file], field="policy_file")
            if len(files) != 1:
                raise UsageError(f"policy_file {params.policy_file!r} matched {len(files)} files",
                                 field="policy_file")
            eval_inputs["policy.toml"] = files[0]
            eval_params["policy_path"] = files[0].logical
        else:
            eval_params["policy"] = params.policy.model_dump(mode="json")
        evaluate_spec = ctx.action(mnemonic="Evaluate", fn=evaluate,
                                   inputs=eval_inputs, outputs=["out/"], params=eval_params)
        inputs["policy"] = evaluate_spec.out("out/")
        # 5. assembly
        inputs.update(vex_inputs)
        for lbl, v in vexes:
            inputs.update({f"vexdoc/{_slug(lbl.name)}-{s}.jsonl": a for s, a in v.documents})
            inputs.update({f"stats/vex-{_slug(lbl.name)}-{s}.json": a for s, a in v.stats})
        inputs.update(sbom_inputs)
        for lbl, st in sboms:
            inputs.update({f"sbomdoc/{_slug(lbl.name)}-{s}.jsonl": a for s, a in st.documents})
            inputs.update({f"stats/sbom-{_slug(lbl.name)}-{s}.json": a for s, a in st.stats})
        sources = [a.source for _, a in raw_sets] + [n.source for _, n in norm_sets] + \
                  [v.source for _, v in vexes] + [s.source for _, s in sboms]
        unique = sorted({json.dumps(s.to_json(), sort_keys=True) for s in sources})
        profile = {"kind": "json", "variant": "policy", "name": ctx.label.name, "revision": params.revision}
        rules = {"json_policy": self.version, "json_raw": json_bundle.JsonRaw.version, "osv_source": "1"}
        signer = resolve_signer(ctx, params.sign)  # fails here (exit 4) on a missing key or password
        assemble_spec = ctx.action(
            mnemonic="Bundle", fn=assemble, inputs=inputs,
            outputs=["bundle/", "bundle.tar.gz", "bundle.tar.gz.sha256"],
            params={"profile": profile, "tenant": params.tenant, "selectors": sel, "level": level,
                    "target": str(ctx.label), "sources": [json.loads(s) for s in unique],
                    "builder_version": json_bundle.builder_version(), "rules": rules,
                    **({"signer": signer.provenance_params()} if signer else {})})
        files = {"bundle.tar.gz": assemble_spec.out("bundle.tar.gz"),
                 "bundle.tar.gz.sha256": assemble_spec.out("bundle.tar.gz.sha256")}
        tree = assemble_spec.out("bundle/")
        files.update(add_signing(ctx, signer, manifest=(tree, "manifests/export.json"),
                                 archive=files["bundle.tar.gz"], provenance=(tree, "manifests/provenance.json")))
        return [Bundle(profile="json:policy", files=files, manifest=tree, archive=files["bundle.tar.gz"]),
                DefaultOutputs(files=files, trees={"": tree},
                               primary=("bundle.tar.gz", "manifests/export.json"))]


# -- helpers -------------------------------------------------------------------------------------

def _read_jsonl(path) -> list[dict]:
    with open(path, "rb") as f:
        return [json.loads(line) for line in f]


def _selected(adv: dict, sel: dict, since: int | None) -> bool:
    if "ecosystems" in sel:
        wanted = {e.lower() for e in sel["ecosystems"]}
        if adv["ecosystem"].lower() not in wanted and adv["ecosystem"].split(":", 1)[0].lower() not in wanted:
            return False
    if "packages" in sel:
        wanted = {p.lower() for p in sel["packages"]}
        if adv["package"]["name"].lower() not in wanted and adv["package"]["normalized"].lower() not in wanted:
            return False
    stamp = adv.get("modified") or adv.get("published")
    if since is not None and (stamp is None or parse_rfc3339(stamp) < since):
        return False
    return True


def _component_index(actx: ActionContext) -> dict[tuple[str, str], list[dict]]:
    from stella_build.rules.evidence.policy import component_key

    index: dict[tuple[str, str], list[dict]] = {}
    for name in sorted(actx.inputs):
        if name.startswith("sbom/"):
            for comp in _read_jsonl(actx.input(name)):
                key = component_key(comp)
                if key is not None:
                    index.setdefault(key, []).append(comp)
    return index


# -- actions -------------------------------------------------------------------------------------

def policy_shard(actx: ActionContext) -> dict:
    """Select one normalized shard's records, write them (zstd) and match them to components."""
    from stella_build.rules.evidence.policy import advisory_keys, data_release, match_components

    sel, level, shard = actx.params["selectors"], actx.params["level"], actx.params["shard"]
    since = json_bundle._since(sel)
    stats = json.loads(actx.input("stats.json").read_bytes())
    not_evaluable = {tuple(k[:4]) for key in ("invalid", "git_only", "no_ranges", "unfixed_marker")
                     for k in stats.get(key, [])}
    components = _component_index(actx)
    lines, matches, errors, filtered, newest, withdrawn = [], [], [], 0, None, 0
    not_evaluated: set[tuple] = set()
    releases: set[tuple[str, str]] = set()  # distribution releases this shard holds records for
    for adv in _read_jsonl(actx.input("records.jsonl")):
        if adv.get("withdrawn"):
            withdrawn += 1
            continue
        if not _selected(adv, sel, since):
            filtered += 1
            continue
        lines.append(canonical_json.dumps_line(adv))
        stamp = adv.get("modified") or adv.get("published")
        if stamp and (newest is None or parse_rfc3339(stamp) > parse_rfc3339(newest)):
            newest = stamp
        release = data_release(adv["ecosystem"])
        if release is not None:
            releases.add(release)
        marker = (adv["id"], adv["ecosystem"], adv["package"]["normalized"], adv["source_path"])
        if marker in not_evaluable:
            continue
        for key in advisory_keys(adv):
            if key in components:
                found, errs, skipped = match_components(adv, components[key])
                matches += found
                errors += errs
                not_evaluated.update(tuple(t) for t in skipped)
    path = f"data/normalized/advisories/{shard}.jsonl.zst"
    records = {}
    if lines:
        actx.write_output(f"out/{path}", zstd_bytes(b"".join(lines), level))
        records[path] = len(lines)
    with open(actx.output(f"out/matches/{shard}.jsonl"), "wb") as out:
        for m in matches:
            out.write(canonical_json.dumps_line(m))
    meta = {"records": records, "filtered": filtered, "modified": newest, "errors": sorted(errors),
            "not_evaluated": sorted(list(t) for t in not_evaluated), "stats": stats, "withdrawn_excluded": withdrawn, "source_label": actx.params["source_label"],
            "releases": sorted(list(r) for r in releases)}
    actx.write_output(f"out/meta/{shard}.json", canonical_json.dumps(meta))
    return {"records": len(lines), "matches": len(matches)}


def _load_policy(actx: ActionContext) -> tuple[Policy, dict]:
    from stella_build.rules.evidence.policy import PolicyError, load_policy_toml, policy_from_dict

    p = actx.params
    try:
        if "policy_path" in p:
            data = actx.input("policy.toml").read_bytes()
            policy = load_policy_toml(data, p["policy_path"])
            origin = {"path": p["policy_path"], "sha256": sha256_hex(data)}
        else:
            policy = policy_from_dict(p["policy"], "<Exportfile policy>")
            origin = {"path": None, "sha256": sha256_hex(canonical_json.dumps(p["policy"]))}
    except PolicyError as exc:
        raise ActionError(exc.message, file=exc.path, field=exc.field) from None
    return policy, origin


def evaluate(actx: ActionContext) -> dict:
    """Apply the policy and the VEX statements to every match; write snapshot and findings."""
    from stella_build.rules.evidence.policy import component_key, components_without_data, evaluate as run_policy

    policy, origin = _load_policy(actx)
    matches, errors, newest = [], [], None
    skipped: set[tuple] = set()  # components an advisory's release suffix could not be compared with
    releases: set[tuple[str, str]] = set()  # distribution releases the advisories hold data for
    statements, components = [], []
    for name in sorted(actx.inputs):
        if name.startswith("norm/"):
            for rel, path in actx.tree_files(name):
                if rel.startswith("matches/"):
                    matches += _read_jsonl(path)
                elif rel.startswith("meta/"):
                    meta = json.loads(path.read_bytes())
                    errors += meta["errors"]
                    skipped.update(tuple(t) for t in meta.get("not_evaluated", ()))
                    releases.update(tuple(r) for r in meta.get("releases", ()))
                    m = meta["modified"]
                    if m and (newest is None or parse_rfc3339(m) > parse_rfc3339(newest)):
                        newest = m
        elif name.startswith("vex/"):
            statements += _read_jsonl(actx.input(name))
        elif name.startswith("sbom/"):
            components += _read_jsonl(actx.input(name))
    epoch = actx.source_date_epoch
    if epoch is None:  # derived from the evidence, never from the wall clock
        epoch = parse_rfc3339(newest) if newest else 0
    findings = run_policy(policy, matches, statements, epoch)
    body = b"".join(canonical_json.dumps_line(f) for f in findings)
    actx.write_output("out/data/policy/evaluations.jsonl.zst", zstd_bytes(body, actx.params["level"]))
    snapshot = {"schema": SNAPSHOT_SCHEMA, "policy": policy.model_dump(mode="json"),
                "source": origin, "evaluatedAt": rfc3339(epoch),
                "waivers": [{"index": i, "active": epoch < parse_rfc3339(w.expires)}
                            for i, w in enumerate(policy.waivers)]}
    actx.write_output("out/data/policy/snapshot.json", canonical_json.dumps(snapshot))
    not_evaluated = sorted({(c["purl"], c["source_path"],
                             "unsupported purl type" if not c.get("ecosystem") else "no version")
                            for c in components if component_key(c) is None or not c.get("version")}
                           | skipped | {tuple(t) for t in components_without_data(components, releases)})
    decisions = {d: sum(1 for f in findings if f["decision"] == d) for d in ("allow", "block", "warn")}
    index = {
        "schema": "https://stella-build.dev/schemas/findings-index/v1",
        "findings": len(findings), "decisions": decisions,
        "rules": _count(f["rule"] for f in findings),
        "subjects": {s: {"components": n, "findings": sum(1 for f in findings if (f["subject"] or "") == s)}
                     for s, n in _count(c.get("subject") or "" for c in components).items()},
        "componentsNotEvaluated": [list(t) for t in not_evaluated],
        "evaluationErrors": sorted(errors),
    }
    actx.write_output("out/indexes/findings.index.json", canonical_json.dumps(index))
    meta = {"epoch": epoch, "findings": len(findings), "decisions": decisions,
            "components": len(components), "statements": len(statements),
            "policy_material": [origin["path"], origin["sha256"]] if origin["path"] else None}
    actx.write_output("out/meta/policy.json", canonical_json.dumps(meta))
    return {"findings": len(findings), **decisions}


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return dict(sorted(out.items()))


def _sbom_path(doc: dict, used: set[str]) -> str:
    stem = doc["subject"] or doc["path"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
    base = _slug(stem.replace("pkg:", "", 1).replace("/", "_"))[:120]
    path = f"data/raw/sboms/{base}/sbom.json"
    if path in used:
        raise ActionError(f"two SBOMs describe the subject {doc['subject']!r}; give each its own subject",
                          file=doc["path"], field="metadata.component")
    used.add(path)
    return path


def assemble(actx: ActionContext) -> dict:
    """Collect every shard tree and evidence file into the bundle; write indexes and manifests."""
    level = actx.params["level"]
    files: dict[str, bytes] = {}
    raw_records: dict[str, int] = {}
    records: dict[str, int] = {}
    withdrawn, materials, raw_index, filtered, newest = [], set(), [], 0, None
    evidence = {"sources": {}, "withdrawn": [], "invalid": [], "git_only": [], "no_ranges": [],
                "unfixed_marker": [], "filteredOut": 0, "quarantined": []}
    policy_meta: dict = {}
    raw_ids: list[list[str]] = []  # [id, path] of the raw records: duplicate-id warnings
    sbom_paths: set[str] = set()
    counts = {"vexStatements": 0, "sbomComponents": 0}
    for name in sorted(actx.inputs):
        if name.startswith("raw/"):
            for rel, path in actx.tree_files(name):
                data = path.read_bytes()
                if rel.startswith("meta/"):
                    meta = json.loads(data)
                    evidence["quarantined"] += meta.get("quarantined", [])
                    raw_ids += meta.get("ids", [])
                    raw_records.update(meta["records"])
                    withdrawn += meta["withdrawn"]
                    materials.update(tuple(m) for m in meta["materials"])
                    raw_index += meta["index"]
                    filtered += meta["filtered"]
                    if meta["modified"] and (newest is None or meta["modified"] > newest):
                        newest = meta["modified"]
                else:
                    files[rel] = data
        elif name.startswith("norm/"):
            for rel, path in actx.tree_files(name):
                if rel.startswith("matches/"):
                    continue
                data = path.read_bytes()
                if rel.startswith("meta/"):
                    _add_evidence_meta(evidence, json.loads(data), materials, records)
                else:
                    files[rel] = data
        elif name == "policy":
            for rel, path in actx.tree_files(name):
                if rel == "meta/policy.json":
                    policy_meta = json.loads(path.read_bytes())
                else:
                    files[rel] = path.read_bytes()
        elif name.startswith(("vex/", "sbom/")):
            kind = "vex" if name.startswith("vex/") else "sboms"
            data = actx.input(name).read_bytes()
            n = data.count(b"\n")
            counts["vexStatements" if kind == "vex" else "sbomComponents"] += n
            if n:
                out = f"data/normalized/{kind}/{name.split('/', 1)[1][:-len('.jsonl')]}.jsonl.zst"
                files[out] = zstd_bytes(data, level)
                records[out] = n
        elif name.startswith("vexdoc/"):
            data = actx.input(name).read_bytes()
            if data:
                out = f"data/raw/vex/{name.split('/', 1)[1][:-len('.jsonl')]}.jsonl.zst"
                files[out] = zstd_bytes(data, level)
                records[out] = data.count(b"\n")
        elif name.startswith("sbomdoc/"):
            for doc in _read_jsonl(actx.input(name)):
                files[_sbom_path(doc, sbom_paths)] = canonical_json.dumps(doc["document"])
        elif name.startswith("stats/"):
            stats = json.loads(actx.input(name).read_bytes())
            materials.update(tuple(m) for m in stats.get("materials", []))
            evidence["quarantined"] += stats.get("quarantined", [])
    if policy_meta.get("policy_material"):
        materials.add(tuple(policy_meta["policy_material"]))
    epoch = actx.source_date_epoch
    if epoch is None:
        epoch = policy_meta["epoch"]
    quarantined = json_bundle.merge_quarantined(evidence["quarantined"])
    files["indexes/advisories.index.json"] = canonical_json.dumps(
        json_bundle._index(raw_index, raw_records, sorted(set(withdrawn)), filtered, quarantined))
    files["indexes/evidence.index.json"] = canonical_json.dumps({
        "schema": "https://stella-build.dev/schemas/evidence-index/v1",
        "sources": evidence["sources"],
        "excluded": {"withdrawn": sorted(evidence["withdrawn"]), "filteredOut": evidence["filteredOut"],
                     **({"quarantined": quarantined} if quarantined else {})},
        "notEvaluable": {camel: sorted(evidence[key]) for key, camel in _NOT_EVALUABLE.items()},
    })
    records.update(raw_records)
    records["data/policy/evaluations.jsonl.zst"] = policy_meta["findings"]
    manifest_counts = {
        "records": sum(raw_records.values()), "withdrawnExcluded": len(withdrawn), "filteredOut": filtered,
        "normalizedAdvisories": sum(s["records"] for s in evidence["sources"].values()),
        "normalizedWithdrawnExcluded": len(evidence["withdrawn"]), **counts,
        "findings": policy_meta["findings"], "decisions": policy_meta["decisions"],
    }
    result = _finish(actx, files, records, manifest_counts, sorted(materials), epoch, quarantined)
    warnings = json_bundle.duplicate_id_warnings(raw_ids)
    return {**result, **({"warnings": warnings} if warnings else {})}


def _add_evidence_meta(evidence: dict, meta: dict, materials: set, records: dict) -> None:
    stats = meta["stats"]
    src = evidence["sources"].setdefault(meta["source_label"], {"files": 0, "records": 0, "kept": 0})
    src["files"] += stats["files"]
    src["records"] += stats["records"]
    src["kept"] += sum(meta["records"].values())
    records.update(meta["records"])
    evidence["filteredOut"] += meta["filtered"]
    for key in ("withdrawn", "invalid", "git_only", "no_ranges", "unfixed_marker", "quarantined"):
        evidence[key] += stats.get(key, [])
    materials.update(tuple(m) for m in stats.get("materials", []))


def _finish(actx: ActionContext, files: dict[str, bytes], records: dict[str, int], counts: dict,
            materials: list, epoch: int, quarantined: list[dict] | None = None) -> dict:
    """Manifest, archive and provenance exactly as json:raw writes them."""
    contents = json_bundle.write_bundle(actx, files, records, counts, materials, epoch, quarantined)
    return {"records": counts["records"], "findings": counts["findings"], "files": len(contents)}
