"""mirror:full: evidence mirrors for air-gapped sites (deltas: rules/mirror_delta.py).

A full mirror (target outputs under stella-out/<pkg>/<target>/):
    mirror/                      the plain-directory view (StellaOps layout)
      README.md                  what the files are (content)
      export.json                manifest: contents[] of every content file, rerunHash, sharding
      provenance.json            in-toto Statement v1 + SLSA provenance v1 (subject: export.json)
      indexes/<kind>.index.json  per evidence kind: groups, files, records, the sharding rule
      data/raw/advisories/<ecosystem>/<chunk>.jsonl.zst     raw OSV records
      data/normalized/{advisories,vex,sboms}/<group>/<chunk>.jsonl.zst (normalized evidence deps)
      data/policy/…              copied from json:policy bundles in deps
      trivy/<target>/{db.tar.gz|javadb.tar.gz, metadata.json}   Trivy DBs in deps, as built
      devportal/                 a devportal_offline dep's output directory, as built (the bundle
                                 archive, its .sha256, provenance.json and the unpacked bundle)
      tuf/{root,1.root,targets,snapshot,timestamp}.json  when `tuf` is configured
      signatures/                when signed (SIGNATURE_FILES): over export.json, mirror.tar.zst and
                                 the provenance; never packaged into the tar or the OCI artifact
    oci/                         OCI image layout: one artifact manifest (tag "mirror") whose layers
                                 are every other mirror/ file, titled by path; when signed, the
                                 export.json Sigstore bundle is its referrer (+ fallback tag)
    mirror.tar.zst(.sha256)      deterministic PAX tar of mirror/ (zstd)
    mirror.json                  summary: exportId, manifest/archive/OCI digests (used by deltas)

Sharding (docs/mirror.md): records are ordered by a stable key (ecosystem, package, id, path) and cut
into chunks by content: a chunk ends after a record whose blake3(id) is 0 mod `chunk_records`
(and at every group change). A chunk's file name is a hash of its first record's key, so changing a
record rewrites only its chunk, whatever else changes. Package-hash buckets alone do not work:
tensorflow-gpu alone has 297 PyPI advisories, so 1 % of changes touches 33 % of bucketed bytes.

Encryption (optional) is the only randomized step. It is a separate `MirrorEncrypt` action after
the deterministic assembly; rerunHash, TUF targets and golden digests cover the plaintext.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Literal, Mapping

import blake3
from pydantic import BaseModel, ConfigDict, Field

from stella_build.engine.rule_api import canonical_json
from stella_build.engine.rule_api import library_versions, zstd_many
from stella_build.engine.rule_api import sha256_hex
from stella_build.engine.rule_api import parse_rfc3339, rfc3339
from stella_build.engine.rule_api import TrustMaterialMissing
from stella_build.engine.rule_api import (
    ActionContext, ActionError, AnalysisContext, Artifact, DefaultOutputs, Rule, Selectors,
    TargetParams, UsageError,
)

from stella_build.rules.formats.bundle import BUILDER_ID, builder_version, manifest_contents, rerun_hash
from stella_build.rules.evidence.select import selected as _selected, since_epoch as _since
from stella_build.rules.providers import (
    AdvisorySet, Bundle, DevPortalBundle, NormalizedAdvisorySet, SbomSet, TrivyArtifacts, VexSet,
)
from stella_build.rules.signing import SignParams, add_signing, resolve_signer
from stella_build.rules.formats.mirror import ENCRYPTION_FILE, SIGNATURE_FILES, MANIFEST_BUNDLE, media_type, mirror_layout, package_tree
from stella_build.rules.formats.mirror import DEVPORTAL_DIR
from stella_build.rules.providers import MirrorTree

MANIFEST_SCHEMA = "https://stella-build.dev/schemas/export-manifest/v1"
MANIFEST_VERSION = "1.1.0"
INDEX_SCHEMA = "https://stella-build.dev/schemas/mirror-index/v1"
BUILD_TYPE = "https://stella-build.dev/buildtypes/mirror/v1"
_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_DAY = 86400

# evidence kind → (directory under mirror/, key fields in the index)
KINDS: dict[str, tuple[str, list[str]]] = {
    "raw-advisories": ("data/raw/advisories", ["ecosystem", "package (lower case)", "id", "path"]),
    "normalized-advisories": ("data/normalized/advisories", ["ecosystem", "package.normalized", "id", "source_path"]),
    "vex": ("data/normalized/vex", ["vulnerability", "product", "component", "source_path", "status"]),
    "sboms": ("data/normalized/sboms", ["purl", "subject", "source_path"]),
}


# -- parameters ------------------------------------------------------------------------------------

class TufParams(BaseModel):
    """`tuf = { key = "keys/tuf.pem" }` or one key per role; expiries in days from SOURCE_DATE_EPOCH."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str | None = Field(None, description="PEM private key (Ed25519 or ECDSA P-256) signing every role")
    keys: dict[Literal["root", "targets", "snapshot", "timestamp"], str] | None = Field(
        None, description="PEM private key per role (overrides `key` for the roles given)")
    password_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                     description="environment variable holding the keys' password")
    expires_days: dict[Literal["root", "targets", "snapshot", "timestamp"], int] = Field(
        default_factory=dict, description="days after SOURCE_DATE_EPOCH each role expires (default 365)")
    root_expires: str | None = Field(
        None, pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$",
        description="pin the root's expiry to this UTC time (e.g. 2030-01-01T00:00:00Z) instead of "
                    "SOURCE_DATE_EPOCH + expires_days.root, so the root (the trust anchor) stays the same "
                    "across builds and deltas between builds with different epochs can be applied")


class EncryptionParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    recipients: list[str] = Field(..., min_length=1, description="age X25519 recipients (age1…)")


class MirrorFullParams(TargetParams):
    rule: Literal["mirror_full"]
    selectors: Selectors | None = Field(None, description="overrides the package's [package.selectors]")
    tenant: str = Field("default", pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
    revision: str = Field("r1", pattern=r"^r[0-9]+$")
    compression_level: int = Field(19, ge=1, le=22)
    chunk_records: int = Field(2, ge=1, le=4096, description=(
        "average records per data file; smaller = smaller deltas, more files (docs/mirror.md)"))
    tuf: TufParams | None = Field(None, description="sign TUF metadata over every mirror file")
    encryption: EncryptionParams | None = Field(None, description="encrypt data/ for these age recipients")
    sign: SignParams | None = Field(None, description=(
        "sign export.json, mirror.tar.zst and the provenance into mirror/signatures/ (docs/signing.md); "
        "also enabled by STELLA_SIGNING_KEY"))


# -- mirror:full -------------------------------------------------------------------------------------

def _slug(text: str) -> str:
    return _SAFE.sub("_", text)


def _resolve_key(ctx: AnalysisContext, path: str, field: str) -> str:
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = ctx.workspace.root / p
    if not p.is_file():
        raise TrustMaterialMissing(f"TUF key {p} does not exist", field=field)
    return str(p.resolve())


def _tuf_config(ctx: AnalysisContext, tuf: TufParams) -> tuple[dict, dict]:
    """(params naming the keys by public identity, secrets with paths and password)."""
    from stella_build.rules.formats.tuf import ROLES, TufRepoError, load_signer

    files: dict[str, str] = {}
    for role in ROLES:
        given = (tuf.keys or {}).get(role) or tuf.key
        if not given:
            raise TrustMaterialMissing(f"tuf: no key for role {role!r} (set tuf.key or tuf.keys.{role})",
                                       field="tuf.key")
        files[role] = _resolve_key(ctx, given, f"tuf.keys.{role}" if (tuf.keys or {}).get(role) else "tuf.key")
    password = None
    if tuf.password_env:
        if tuf.password_env not in os.environ:
            raise TrustMaterialMissing(f"{tuf.password_env} is not set (password of the TUF keys)",
                                       field="tuf.password_env")
        password = os.environ[tuf.password_env]
    keyids = {}
    for role, path in files.items():
        try:
            keyids[role] = load_signer(Path(path), password.encode() if password else None).public_key.keyid
        except TufRepoError as exc:
            raise TrustMaterialMissing(str(exc), field="tuf.key") from None
    durations = {r: tuf.expires_days.get(r, 365) * _DAY for r in ROLES}
    secrets = {f"tuf_{r}": p for r, p in files.items()}
    if password is not None:
        secrets["tuf_password"] = password
    config: dict[str, Any] = {"keyids": keyids, "durations": durations}
    if tuf.root_expires is not None:
        try:
            config["root_expires"] = parse_rfc3339(tuf.root_expires)
        except ValueError as exc:
            raise UsageError(f"tuf.root_expires: {exc}", field="tuf.root_expires") from None
        if ctx.source_date_epoch is not None and config["root_expires"] <= ctx.source_date_epoch:
            raise UsageError(f"tuf.root_expires {tuf.root_expires} is not after SOURCE_DATE_EPOCH "
                             f"{rfc3339(ctx.source_date_epoch)}", field="tuf.root_expires")
    _warn_if_expired(ctx, config)
    return config, secrets


def _warn_if_expired(ctx: AnalysisContext, config: Mapping[str, Any]) -> None:
    """A warning (stderr) when the TUF metadata this build writes is already expired, or expires
    within a week, by the wall clock: its expiry is SOURCE_DATE_EPOCH + expires_days, and clients
    (python-tuf's ngclient) refuse expired metadata. The clock is read for this warning only,
    never for bytes. Unknown epoch (derived from the inputs in the action): no warning."""
    import sys
    import time

    from stella_build.rules.formats.tuf import earliest_expiry

    if ctx.source_date_epoch is None:
        return
    first = earliest_expiry(ctx.source_date_epoch, config["durations"], config.get("root_expires"))
    now = time.time()
    if first <= now + 7 * _DAY:
        state = "is already expired" if first <= now else "expires within a week"
        print(f"warning: {ctx.label}: the TUF metadata of this mirror {state} ({rfc3339(first)}: "
              f"SOURCE_DATE_EPOCH {rfc3339(ctx.source_date_epoch)} + tuf.expires_days); clients such as "
              "`stella-build mirror verify` and python-tuf refuse expired metadata. Raise tuf.expires_days "
              "or build with a later SOURCE_DATE_EPOCH.", file=sys.stderr)


class MirrorFull(Rule):
    name = "mirror_full"
    version = "1"
    doc = "mirror:full profile: content-chunked evidence mirror as a tree, OCI layout and tar.zst, with TUF"
    Params = MirrorFullParams
    accepts = (AdvisorySet, NormalizedAdvisorySet, VexSet, SbomSet, Bundle, TrivyArtifacts, DevPortalBundle)

    def analyze(self, ctx: AnalysisContext, params: MirrorFullParams) -> list:
        selectors = params.selectors.merged_over(ctx.selectors) if params.selectors else ctx.selectors
        sel = {k: v for k, v in selectors.model_dump().items() if v is not None}
        inputs: dict[str, Artifact] = {}
        sources = []
        for kind, ptype in (("raw-advisories", AdvisorySet), ("normalized-advisories", NormalizedAdvisorySet),
                            ("vex", VexSet), ("sboms", SbomSet)):
            for dep, prov in ctx.providers(ptype):
                sources.append(prov.source.to_json())
                # each source shard's stats.json lists its quarantined files (export.json)
                stats = dict(getattr(prov, "stats", ()))
                for shard, art in prov.shards:
                    sid = f"{kind}-{_slug(dep.name)}-{shard}"
                    shard_stats = {"stats.json": stats[shard]} if shard in stats else {}
                    spec = ctx.action(mnemonic="MirrorShard", id=sid, fn=mirror_shard,
                                      inputs={"records.jsonl": art, **shard_stats},
                                      outputs=["entries.jsonl", "meta.json"],
                                      # the label keeps keys distinct per target: the engine names
                                      # sandboxes by key, so two same-key actions collide when run at once
                                      params={"kind": kind, "selectors": sel, "target": str(ctx.label)})
                    inputs[f"shards/{sid}/entries.jsonl"] = spec.out("entries.jsonl")
                    inputs[f"shards/{sid}/meta.json"] = spec.out("meta.json")
        for dep, bundle in ctx.providers(Bundle):
            inputs[f"bundles/{_slug(dep.name)}"] = bundle.manifest
        for dep, trivy in ctx.providers(TrivyArtifacts):  # shipped as-is under trivy/<target>/
            for name, art in sorted(trivy.files.items()):
                inputs[f"trivy/{_slug(dep.name)}/{name}"] = art
        if not inputs:
            raise UsageError("mirror_full needs evidence in deps (osv_source, vex_source, sbom_source, "
                             "osv_normalize or json_policy targets)", field="deps")
        inputs.update(devportal_inputs(ctx))
        params_out: dict[str, Any] = {
            "profile": {"kind": "mirror", "variant": "full", "name": ctx.label.name, "revision": params.revision},
            "tenant": params.tenant, "selectors": sel, "level": params.compression_level,
            "chunk_records": params.chunk_records, "target": str(ctx.label),
            "sources": sorted({json.dumps(s, sort_keys=True) for s in sources}),
            "builder_version": builder_version(), "rules": {"mirror_full": self.version},
        }
        params_out["sources"] = [json.loads(s) for s in params_out["sources"]]
        signer = resolve_signer(ctx, params.sign)  # exit 4 here on a missing key or password
        if signer is not None:  # recorded in the provenance; unsigned params (and bytes) unchanged
            params_out["signer"] = signer.provenance_params()
        secrets: dict[str, str] = {}
        if params.tuf is not None:
            params_out["tuf"], secrets = _tuf_config(ctx, params.tuf)
        if params.encryption is not None:
            from stella_build.rules.formats.encryption import EncryptionError, wrap_dek
            try:  # validate recipients now (exit 2), not in the action
                wrap_dek(bytes(32), params.encryption.recipients)
            except EncryptionError as exc:
                raise UsageError(str(exc), field="encryption.recipients") from None
            params_out["encryption"] = {"recipients": sorted(set(params.encryption.recipients))}
        assemble = ctx.action(
            mnemonic="MirrorAssemble", fn=mirror_assemble, inputs=inputs,
            outputs=["mirror/", "oci/", "mirror.tar.zst", "mirror.tar.zst.sha256", "mirror.json"],
            params=params_out, secrets=secrets)
        tree, summary = assemble.out("mirror/"), assemble.out("mirror.json")
        if params.encryption is None:
            files = {n: assemble.out(n) for n in ("mirror.tar.zst", "mirror.tar.zst.sha256", "mirror.json")}
            trees = {"mirror": tree, "oci": assemble.out("oci/")}
        else:
            enc = ctx.action(
                mnemonic="MirrorEncrypt", fn=mirror_encrypt,
                inputs={"mirror": tree}, outputs=["mirror/", "oci/", "mirror.tar.zst", "mirror.tar.zst.sha256"],
                params={"recipients": params_out["encryption"]["recipients"],
                        "nondeterministic": "randomized by design: DEK, nonces, age ephemeral keys"})
            files = {n: enc.out(n) for n in ("mirror.tar.zst", "mirror.tar.zst.sha256")}
            files["mirror.json"] = summary
            trees = {"mirror": enc.out("mirror/"), "oci": enc.out("oci/")}
        signatures = add_signing(ctx, signer, manifest=(tree, "export.json"), archive=files["mirror.tar.zst"],
                                 provenance=(tree, "provenance.json"), names=SIGNATURE_FILES)
        files.update(signatures)
        if signatures:  # the OCI layout gains the export.json bundle as the artifact's referrer
            plain = params.encryption is None
            layout = ctx.action(
                mnemonic="MirrorSignedLayout", fn=mirror_signed_layout,
                inputs={"tree": trees["mirror"], "bundle": signatures[SIGNATURE_FILES["manifest_bundle"]],
                        **({"summary": summary} if plain else {})},
                outputs=["oci/", *(["mirror.json"] if plain else [])], params={})
            trees["oci"] = layout.out("oci/")
            if plain:  # encrypted mirrors keep the plaintext summary (what decrypt rebuilds)
                files["mirror.json"] = summary = layout.out("mirror.json")
        provider = MirrorTree(tree=tree, summary=summary, encrypted=params.encryption is not None,
                              signatures=tuple(sorted((rel.removeprefix("mirror/"), art)
                                                      for rel, art in signatures.items())))
        return [provider, DefaultOutputs(files=files, trees=trees,
                                         primary=("mirror.tar.zst", "mirror/export.json"))]


def devportal_inputs(ctx: AnalysisContext) -> dict[str, Artifact]:
    """Action inputs carrying a devportal_offline dep (at most one) by reference to its outputs:
    `devportal/f/<file>` and `devportal/t/<section>` (trees), placed under mirror/devportal/ by
    mirror_assemble. UsageError `devportal-dep-duplicate` (exit 2) for a second one."""
    portals = ctx.providers(DevPortalBundle)
    if len(portals) > 1:
        raise UsageError(f"mirror_full carries one developer portal; deps name {len(portals)} "
                         f"({', '.join(str(dep) for dep, _ in portals)})", field="deps",
                         reason="devportal-dep-duplicate")
    inputs: dict[str, Artifact] = {}
    for _dep, portal in portals:
        inputs.update({f"devportal/f/{rel}": art for rel, art in sorted(portal.files.items())})
        inputs.update({f"devportal/t/{tree}": art for tree, art in sorted(portal.trees.items())})
    return inputs


# -- actions: shard -----------------------------------------------------------------------------------

def _entry(kind: str, rec: dict) -> tuple[str, list[str], str]:
    """(group, stable sort key, chunk id) of one record."""
    if kind == "raw-advisories":
        pkgs = sorted((e, n.lower()) for e, n in rec.get("packages") or [])
        eco, pkg = pkgs[0] if pkgs else ((rec.get("ecosystems") or ["_none"])[0], "")
        return eco, [eco, pkg, rec["id"], rec["path"]], rec["id"]
    if kind == "normalized-advisories":
        eco = rec.get("ecosystem") or "_none"
        pkg = (rec.get("package") or {}).get("normalized") or ""
        return eco.split(":", 1)[0], [eco, pkg, rec["id"], rec.get("source_path") or ""], rec["id"]
    if kind == "vex":
        key = [rec.get(f) or "" for f in ("vulnerability", "product", "component", "source_path", "status")]
        return "all", key, key[0]
    key = [rec.get(f) or "" for f in ("purl", "subject", "source_path")]
    return rec.get("ecosystem") or "_none", key, key[0]


def mirror_shard(actx: ActionContext) -> dict:
    """Filter one input shard and tag each record with its group, stable key and chunk id."""
    kind, sel = actx.params["kind"], actx.params["selectors"]
    since = _since(sel)
    meta: dict[str, Any] = {"withdrawn": [], "filtered": 0, "materials": [], "modified": None}
    entries = []
    # read, not staged: a 2–10 MB copy per shard is a file creation plus a write for nothing
    with io.BytesIO(actx.read_input("records.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if kind == "raw-advisories":
                meta["materials"].append([rec["path"], rec["sha256"]])
                if not _selected(rec, sel, since):
                    if not rec.get("withdrawn"):
                        meta["filtered"] += 1
                        continue
            if rec.get("withdrawn"):
                meta["withdrawn"].append(rec.get("id"))
                continue
            if kind == "normalized-advisories" and "ecosystems" in sel:
                if (rec.get("ecosystem") or "").split(":")[0].lower() not in {e.lower() for e in sel["ecosystems"]}:
                    meta["filtered"] += 1
                    continue
            group, key, chunk_id = _entry(kind, rec)
            entries.append((key, {"g": group, "k": key, "c": chunk_id, "r": rec}))
            modified = rec.get("modified")
            if isinstance(modified, str) and (meta["modified"] is None or modified > meta["modified"]):
                meta["modified"] = modified
    entries.sort(key=lambda t: t[0])
    with open(actx.output("entries.jsonl"), "wb") as out:
        for _, e in entries:
            out.write(canonical_json.dumps_line(e))
    meta["withdrawn"] = sorted(w for w in meta["withdrawn"] if w)
    if "stats.json" in actx.inputs:
        quarantined = json.loads(actx.input("stats.json").read_bytes()).get("quarantined")
        if quarantined:  # only then: clean shards keep their bytes
            meta["quarantined"] = quarantined
    actx.write_output("meta.json", canonical_json.dumps(meta))
    return {"records": len(entries)}


# -- actions: assemble -------------------------------------------------------------------------------

def _boundary(chunk_id: str, every: int) -> bool:
    return int.from_bytes(blake3.blake3(chunk_id.encode()).digest()[:8], "big") % every == 0


def chunk_entries(entries: list[dict], every: int) -> list[tuple[str, str, list[dict]]]:
    """Content-defined chunks of key-sorted entries: (group, name, entries)."""
    chunks: list[tuple[str, str, list[dict]]] = []
    current: list[dict] = []
    for e in entries:
        if current and current[0]["g"] != e["g"]:
            chunks.append(_close(current))
            current = []
        current.append(e)
        if _boundary(e["c"], every):
            chunks.append(_close(current))
            current = []
    if current:
        chunks.append(_close(current))
    return chunks


def _close(entries: list[dict]) -> tuple[str, str, list[dict]]:
    name = blake3.blake3(canonical_json.dumps(entries[0]["k"])).hexdigest()[:16]
    return entries[0]["g"], name, entries


README = """# stella-build evidence mirror

- `export.json`: manifest; `contents[]` lists every content file with sha256, size and records.
- `provenance.json`: in-toto Statement v1 (SLSA provenance v1) whose subject is export.json.
- `indexes/<kind>.index.json`: files and record counts per group, and how records are sharded.
- `data/raw/advisories/<ecosystem>/<chunk>.jsonl.zst`: raw OSV records, one canonical JSON per line,
  ordered by (ecosystem, package, id, path) and cut into content-defined chunks.
- `tuf/`: TUF metadata over every other file (when the mirror is signed with TUF).

Verify and update with `stella-build mirror verify|apply` (docs/mirror.md).
"""


def mirror_assemble(actx: ActionContext) -> dict:
    p = actx.params
    by_kind: dict[str, list[dict]] = {}
    withdrawn: list[str] = []
    materials: list[list[str]] = []
    quarantined: dict[tuple[str, str], dict] = {}
    filtered, newest = 0, None
    files: dict[str, bytes] = {}
    for name in sorted(actx.inputs):
        if name.startswith("shards/") and name.endswith("/meta.json"):
            meta = json.loads(actx.input(name).read_bytes())
            withdrawn += meta["withdrawn"]
            materials += meta["materials"]
            quarantined.update({(q["path"], q["field"]): q for q in meta.get("quarantined", ())})
            filtered += meta["filtered"]
            if meta["modified"] and (newest is None or meta["modified"] > newest):
                newest = meta["modified"]
        elif name.startswith("shards/"):
            kind = next(k for k in KINDS if name.split("/")[1].startswith(k + "-"))
            with open(actx.input(name), "rb") as f:
                by_kind.setdefault(kind, []).extend(json.loads(line) for line in f)
        elif name.startswith("bundles/"):
            for rel, path in actx.tree_files(name):
                if rel.startswith("data/policy/"):
                    files[rel] = path.read_bytes()
        elif name.startswith("trivy/"):
            files[name] = actx.input(name).read_bytes()
        elif name.startswith("devportal/f/"):  # the portal's bytes, read from its action's outputs
            files[f"{DEVPORTAL_DIR}/{name.removeprefix('devportal/f/')}"] = actx.input(name).read_bytes()
        elif name.startswith("devportal/t/"):
            section = name.removeprefix("devportal/t/")
            for rel, path in actx.tree_files(name):
                files[f"{DEVPORTAL_DIR}/{section}/{rel}"] = path.read_bytes()
    epoch = actx.source_date_epoch
    if epoch is None:
        epoch = parse_rfc3339(newest) if newest else 0
    records: dict[str, int] = {}
    indexes = {}
    for kind in sorted(by_kind):
        prefix, key_fields = KINDS[kind]
        entries = sorted(by_kind[kind], key=lambda e: e["k"])
        groups: dict[str, dict] = {}
        chunks = chunk_entries(entries, p["chunk_records"])
        bodies = zstd_many((b"".join(canonical_json.dumps_line(e["r"]) for e in chunk) for _, _, chunk in chunks),
                           p["level"])
        for (group, name, chunk), body in zip(chunks, bodies):
            rel = f"{prefix}/{_slug(group)}/{name}.jsonl.zst"
            if rel in files:  # two chunks whose first keys collide in 64 bits: keep both, distinctly
                raise ActionError(f"chunk name collision at {rel}; change chunk_records")
            files[rel] = body
            records[rel] = len(chunk)
            g = groups.setdefault(group, {"directory": f"{prefix}/{_slug(group)}", "files": 0, "records": 0})
            g["files"] += 1
            g["records"] += len(chunk)
        indexes[kind] = {
            "schema": INDEX_SCHEMA, "kind": kind, "records": len(entries), "groups": groups,
            "sharding": {"order": key_fields, "chunkRecords": p["chunk_records"],
                         "boundary": "after a record whose blake3(chunk id) first 8 bytes (big endian) "
                                     "mod chunkRecords == 0, and at every group change",
                         "fileName": "first 16 hex of blake3(canonical JSON of the chunk's first key)"},
        }
    if "raw-advisories" in indexes:
        indexes["raw-advisories"]["excluded"] = {"withdrawn": sorted(set(withdrawn)), "filteredOut": filtered}
    for kind, doc in indexes.items():
        files[f"indexes/{kind}.index.json"] = canonical_json.dumps(doc)
    files["README.md"] = README.encode()
    contents = manifest_contents(files, records)
    for c in contents:
        c["contentType"] = media_type(c["path"])
    rh = rerun_hash(contents)
    manifest = {
        "schema": MANIFEST_SCHEMA, "version": MANIFEST_VERSION,
        "exportId": "exp-" + sha256_hex(canonical_json.dumps([p["profile"], p["tenant"], rh]))[:24],
        "profile": p["profile"], "tenant": p["tenant"], "selectors": p["selectors"],
        "generatedAt": rfc3339(epoch), "contents": contents, "rerunHash": rh,
        "counts": {"records": sum(records.values()), "files": len(contents),
                   "withdrawnExcluded": len(set(withdrawn)), "filteredOut": filtered},
        "sources": p["sources"],
    }
    if quarantined:  # malformed input files left out; absent otherwise, so clean mirrors keep their bytes
        manifest["counts"]["quarantined"] = len(quarantined)
        manifest["quarantined"] = [quarantined[k] for k in sorted(quarantined)]
    files["export.json"] = canonical_json.dumps(manifest)
    files["provenance.json"] = canonical_json.dumps(_provenance(p, files["export.json"], sorted(materials), epoch))
    if "tuf" in p:
        files.update(_tuf_files(actx, files, epoch))
    out = actx.out_dir
    for rel, data in files.items():
        actx.write_output(f"mirror/{rel}", data)
    summary = package_tree(files, out / "oci", out / "mirror.tar.zst", epoch)
    summary.update({"exportId": manifest["exportId"], "manifestDigest": "sha256:" + sha256_hex(files["export.json"]),
                    "rerunHash": rh, "sourceDateEpoch": epoch})
    actx.write_output("mirror.json", canonical_json.dumps(summary))
    return {"records": manifest["counts"]["records"], "files": len(files)}


def _tuf_files(actx: ActionContext, files: Mapping[str, bytes], epoch: int) -> dict[str, bytes]:
    import tempfile

    from stella_build.rules.formats.tuf import (
        ROLES, TufKeys, TufRepoError, build_tuf_repo, load_signer, version_for_epoch,
    )

    p = actx.params["tuf"]
    password = actx.secrets.get("tuf_password")
    try:
        signers = {r: [load_signer(Path(actx.secrets[f"tuf_{r}"]), password.encode() if password else None)]
                   for r in ROLES}
    except KeyError:
        raise ActionError("TUF keys were not passed to the action (secrets are never cached)") from None
    except TufRepoError as exc:
        raise ActionError(str(exc)) from None
    for role in ROLES:
        if signers[role][0].public_key.keyid != p["keyids"][role]:
            raise ActionError(f"TUF {role} key changed between analysis and the build")
    # Versions follow SOURCE_DATE_EPOCH: they grow with every publication whose epoch grows (consumers
    # refuse a mirror going backwards) and stay reproducible (docs/mirror.md "TUF").
    try:
        with tempfile.TemporaryDirectory(dir=actx.sandbox) as tmp:
            repo = build_tuf_repo(Path(tmp), dict(files), TufKeys(**signers), epoch, p["durations"],
                                  custom={rel: {"mediaType": media_type(rel)} for rel in files},
                                  version=version_for_epoch(epoch), root_expires=p.get("root_expires"))
    except TufRepoError as exc:
        raise ActionError(str(exc), field="tuf") from None
    return {f"tuf/{name}": data for name, data in repo.files.items()}


def _provenance(p: dict, manifest: bytes, materials: list, epoch: int) -> dict:
    external = {"target": p["target"], "profile": p["profile"], "selectors": p["selectors"],
                "tenant": p["tenant"], "chunkRecords": p["chunk_records"]}
    if "encryption" in p:
        from stella_build.rules.formats.encryption import AAD_FORMAT, CIPHER, MODE, NONCE_FORMAT
        external["encryption"] = {"mode": MODE, "cipher": CIPHER, "aadFormat": AAD_FORMAT,
                                  "nonceFormat": NONCE_FORMAT, "subtree": "data/",
                                  "recipients": [{"recipient": r} for r in p["encryption"]["recipients"]]}
    internal: dict[str, Any] = {"sourceDateEpoch": epoch, "rules": p["rules"], "libraries": library_versions()}
    if "signer" in p:
        internal["signer"] = p["signer"]
    if "tuf" in p:
        internal["tuf"] = {"keyids": p["tuf"]["keyids"], "expiresSeconds": p["tuf"]["durations"]}
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "export.json", "digest": {"sha256": sha256_hex(manifest)}}],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {"buildType": BUILD_TYPE, "externalParameters": external,
                                "internalParameters": internal,
                                "resolvedDependencies": [{"name": n, "digest": {"sha256": s}} for n, s in materials]},
            "runDetails": {"builder": {"id": BUILDER_ID, "version": {"stella-build": p["builder_version"]}},
                           "metadata": {}},
        },
    }


def mirror_signed_layout(actx: ActionContext) -> dict:
    """The OCI layout of a signed mirror (the shipped tree + the export.json bundle as referrer) and,
    for an unencrypted mirror, mirror.json updated to describe it."""
    files = dict(actx.tree_files("tree"))
    files[MANIFEST_BUNDLE] = actx.input("bundle")
    export = json.loads(files["export.json"].read_bytes())
    got = mirror_layout(files, actx.out_dir / "oci", parse_rfc3339(export["generatedAt"]))
    if "summary" in actx.inputs:
        summary = json.loads(actx.input("summary").read_bytes())
        if summary["ociManifestDigest"] != got["ociManifestDigest"]:
            raise ActionError("the signed layout's mirror manifest differs from the unsigned one")
        actx.write_output("mirror.json", canonical_json.dumps({**summary, **got}))
    return got


def mirror_encrypt(actx: ActionContext) -> dict:
    """The randomized step: encrypt data/ of the plaintext tree (AES-256-GCM, DEK wrapped per age
    recipient) and package the encrypted view. runId = exportId, so AAD = "<exportId>:<path>"."""
    from stella_build.rules.formats.encryption import encrypt_tree

    src = actx.input("mirror")
    work = actx.sandbox / "work"
    shutil.copytree(src, work)
    export = json.loads((work / "export.json").read_bytes())
    record = encrypt_tree(work, run_id=export["exportId"], recipients=actx.params["recipients"])
    (work / ENCRYPTION_FILE).write_bytes(canonical_json.dumps(record.to_json()))
    files = {p.relative_to(work).as_posix(): p for p in sorted(work.rglob("*")) if p.is_file()}
    for rel, path in files.items():
        actx.write_output(f"mirror/{rel}", path.read_bytes())
    package_tree(files, actx.out_dir / "oci", actx.out_dir / "mirror.tar.zst", parse_rfc3339(export["generatedAt"]))
    return {"encrypted_files": len(record.files)}


RULES = (MirrorFull,)
