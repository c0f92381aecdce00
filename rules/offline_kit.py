"""offline_kit: everything an air-gapped scanner needs, in one signed, reproducible archive.

    [targets.offline-kit]
    rule = "offline_kit"
    deps = [":trivy-db", ":trivy-java-db", ":mirror-full"]   # or a mirror_delta
    # deps may also name a devportal_offline target: its output directory goes to devportal/
    split_size = "700M"        # optional: also cut the archive into parts (removable media)

The kit depends on the export targets (never on their sources): it packages their outputs as
built, signatures and attestations included and never re-signed, in the layout of
rules/formats/kit.py (docs/offline-kit.md). Target outputs (stella-out/<pkg>/<target>/):

    stella-offline-kit-<YYYYMMDD>.tar.gz(.sha256)   the kit; the date is SOURCE_DATE_EPOCH's
    offline-manifest.json, verify-kit.sh            the same bytes as inside the kit, for reading
                                                    and checking before unpacking
    provenance.json                                 in-toto statement (SLSA provenance v1) whose
                                                    subjects are the archive and the manifest
    parts/<archive>.part-NNN, parts/<archive>.parts with `split_size`
    signed (a key): <archive>.sig and <archive>.sigstore.json (the detached signature),
    offline-manifest.json.sig/.sigstore.json, provenance.dsse.json, provenance.sigstore.json,
    cosign.pub. Keyless: the kit ships Sigstore's trusted root, and its provenance subjects are
    signed after the build like every keyless target (stella_build/delivery/keyless.py).

One `KitAssemble` action reads the exports' outputs and writes the archive in one pass; the Sign
action (rules/signing.py) adds the signatures, so an unsigned kit keeps its bytes.
"""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from stella_build.engine.rule_api import canonical_json, library_versions, rfc3339, sha256_hex
from stella_build.engine.rule_api import (
    ActionContext, ActionError, AnalysisContext, Artifact, DefaultOutputs, PostBuild, Rule,
    TargetParams, TrustMaterialMissing, UsageError,
)
from stella_build.rules.formats import devportal as D
from stella_build.rules.formats import kit as K
from stella_build.rules.formats.bundle import BUILDER_ID, builder_version
from stella_build.rules.providers import DevPortalBundle, MirrorTree, TrivyArtifacts
from stella_build.rules.signing import KEYLESS, SignParams, Signer, add_signing, resolve_signer

BUILD_TYPE = "https://stella-build.dev/buildtypes/offline-kit/v1"
SIGSTORE_PRODUCTION_TUF = "https://tuf-repo-cdn.sigstore.dev"
# Largest JSON document of an export the action reads whole (export.json of a big mirror).
_MAX_JSON = 256 << 20


class OfflineKitParams(TargetParams):
    rule: Literal["offline_kit"]
    split_size: str | None = Field(None, description=(
        "also cut the archive into parts of this size for removable media, e.g. '700M', '4G' "
        "(binary units; at most 1000 parts)"))
    compression_level: int = Field(6, ge=1, le=9, description="gzip level of the kit archive")
    sign: SignParams | None = Field(None, description=(
        "sign the kit archive, offline-manifest.json and the kit's provenance (docs/signing.md); also "
        "enabled by STELLA_SIGNING_KEY and `build --sign`"))
    sigstore_trusted_root: str | None = Field(None, description=(
        "trusted_root.json to ship in trust/ when keyless signing is used (workspace-relative); "
        "default: the production root embedded in sigstore-python"))

    @field_validator("split_size")
    @classmethod
    def _check_size(cls, value: str | None) -> str | None:
        if value is not None and K.parse_size(value) < K.MIN_PART:
            raise ValueError(f"split_size must be at least {K.MIN_PART} bytes")
        return value


def _kind(providers) -> str | None:
    """The export kind of a dep from the providers it returns."""
    for p in providers:
        if isinstance(p, TrivyArtifacts):
            return p.kind
        if isinstance(p, MirrorTree):
            return "mirror-full"
        if isinstance(p, DevPortalBundle):
            return "devportal"
    outputs = next((p for p in providers if isinstance(p, DefaultOutputs)), None)
    if outputs is not None and "delta" in outputs.trees:
        return "mirror-delta"
    return None


_PUBLIC_KEYS: dict[tuple, bytes] = {}


def _public_key_pem(signer: Signer) -> bytes:
    """The signer's public key (PEM), for trust/cosign.pub: the kit is packed before the Sign action
    runs, and the key is no secret. Decrypted once per key file and process (scrypt is slow)."""
    from stella_build.rules.formats.keys import SigningKeyError, encode_public_key, load_private_key

    st = signer.key_path.stat()
    memo = (str(signer.key_path), st.st_mtime_ns, st.st_size, signer.public_key_sha256)
    if memo not in _PUBLIC_KEYS:
        try:
            key = load_private_key(signer.key_path.read_bytes(), signer.password.encode("utf-8"))
        except SigningKeyError as exc:
            raise TrustMaterialMissing(str(exc), reason="signing-key-unusable") from None
        _PUBLIC_KEYS[memo] = encode_public_key(key.public_key())
    return _PUBLIC_KEYS[memo]


def _trusted_root(ctx: AnalysisContext, given: str | None) -> Artifact:
    """The Sigstore trusted root shipped with a keyless kit, as a source artifact (its bytes are in
    the action key). TrustMaterialMissing (exit 4) when there is none."""
    if given:
        path = Path(given).expanduser()
        if not path.is_absolute():
            path = ctx.workspace.root / path
        field = "sigstore_trusted_root"
    else:  # the root sigstore-python ships, found without importing it
        import importlib.util
        from urllib.parse import quote

        spec = importlib.util.find_spec("sigstore")
        base = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
        path = base / "_store" / quote(SIGSTORE_PRODUCTION_TUF, safe="") / "trusted_root.json" if base else Path("/nonexistent")
        field = None
    if not path.is_file():
        raise TrustMaterialMissing(
            f"keyless signing is used, so the kit must carry a Sigstore trusted root, and {path} does not "
            "exist: set sigstore_trusted_root (a trusted_root.json) or install sigstore-python",
            field=field, reason="kit-trusted-root-missing")
    return Artifact(logical=f"sigstore/{path.name}", path=path.resolve())


class OfflineKit(Rule):
    name = "offline_kit"
    version = "1"
    doc = "offline kit: Trivy DBs, mirror, trust material and attestations as one reproducible archive"
    Params = OfflineKitParams
    accepts = (TrivyArtifacts, MirrorTree, DevPortalBundle, DefaultOutputs)

    def analyze(self, ctx: AnalysisContext, params: OfflineKitParams) -> list:
        if ctx.source_date_epoch is None:
            raise UsageError("offline_kit needs SOURCE_DATE_EPOCH ([package] source_date_epoch): it names "
                             "and dates the kit", field="source_date_epoch", reason="kit-epoch-missing")
        exports: list[dict] = []
        inputs: dict[str, Artifact] = {}
        keyless = (ctx.options.sign or "").strip() == "keyless" or bool(params.sign and params.sign.keyless)
        for label, providers in ctx.deps:
            kind = _kind(providers)
            if kind is None:
                raise UsageError(f"{label} is not a trivy_db, trivy_java_db, mirror_full, mirror_delta or "
                                 "devportal_offline target", field="deps", reason="kit-dep-unsupported")
            if any(e["kind"] == kind for e in exports):
                raise UsageError(f"{label}: the kit already has a {kind} export (one of each kind)",
                                 field="deps", reason="kit-dep-duplicate")
            outputs = next(p for p in providers if isinstance(p, DefaultOutputs))
            if kind == "devportal":  # carried by reference to the devportal action's outputs
                outputs = next(p for p in providers if isinstance(p, DevPortalBundle))
            keyless |= any(isinstance(p, PostBuild) and p.kind == KEYLESS for p in providers)
            files = sorted(rel for rel in outputs.files if rel not in K.EXCLUDED.get(kind, ()))
            inputs.update({f"in/{kind}/f/{rel}": outputs.files[rel] for rel in files})
            inputs.update({f"in/{kind}/t/{tree}": art for tree, art in outputs.trees.items()})
            exports.append({"kind": kind, "target": str(label), "files": files, "trees": sorted(outputs.trees)})
        if not any(e["kind"] != "devportal" for e in exports):
            raise UsageError("offline_kit needs deps: trivy_db, trivy_java_db, mirror_full or mirror_delta "
                             "targets (a devportal_offline target only goes with them)", field="deps",
                             reason="kit-dep-unsupported")
        exports.sort(key=lambda e: list(K.SECTIONS).index(e["kind"]))
        signer = resolve_signer(ctx, params.sign)  # exit 4 here on a missing key or password
        if keyless:
            inputs[K.TRUST_SIGSTORE_ROOT] = _trusted_root(ctx, params.sigstore_trusted_root)
        name = K.kit_name(ctx.source_date_epoch)
        archive = name + ".tar.gz"
        split = K.parse_size(params.split_size) if params.split_size else None
        spec = ctx.action(
            mnemonic="KitAssemble", fn=kit_assemble, inputs=inputs,
            outputs=[archive, archive + ".sha256", K.MANIFEST, K.VERIFY_SCRIPT, "provenance.json",
                     *(["parts/"] if split else [])],
            params={"name": name, "exports": exports, "split_size": split, "level": params.compression_level,
                    "keyless": keyless, "target": str(ctx.label), "builder_version": builder_version(),
                    "rules": {self.name: self.version},
                    "signer": None if signer is None else {
                        **signer.provenance_params(), "publicKey": _public_key_pem(signer).decode()}})
        files = {n: spec.out(n) for n in (archive, archive + ".sha256", K.MANIFEST, K.VERIFY_SCRIPT,
                                          "provenance.json")}
        files.update(add_signing(
            ctx, signer, manifest=files[K.MANIFEST], archive=files[archive], provenance=files["provenance.json"],
            names={"manifest_bundle": K.MANIFEST + ".sigstore.json", "manifest_sig": K.MANIFEST + ".sig",
                   "archive_bundle": archive + ".sigstore.json", "archive_sig": archive + ".sig",
                   "provenance_dsse": "provenance.dsse.json", "provenance_bundle": "provenance.sigstore.json",
                   "public_key": "cosign.pub"}))
        trees = {"parts": spec.out("parts/")} if split else {}
        return [DefaultOutputs(files=files, trees=trees, primary=(archive,))]


RULES = (OfflineKit,)


# -- the action ---------------------------------------------------------------------------------------

def _read_json(path: Path, what: str) -> dict:
    if path.stat().st_size > _MAX_JSON:
        raise ActionError(f"{what} is larger than {_MAX_JSON} bytes", file=what)
    try:
        doc = json.loads(path.read_bytes())
    except ValueError as exc:
        raise ActionError(f"{what} is not JSON: {exc}", file=what) from None
    if not isinstance(doc, dict):
        raise ActionError(f"{what} is not a JSON object", file=what)
    return doc


def _db_members(archive: Path, kind: str, where: str) -> tuple[dict, bytes]:
    """sha256/size of the DB file and metadata.json inside a Trivy DB archive (streamed), and the
    metadata.json bytes: what `kit import` checks after unpacking."""
    import hashlib

    db_name = K.TRIVY_DBS[kind][1]
    members: dict[str, dict] = {}
    metadata = b""
    import tarfile  # in the action only: analysis of every build imports this module

    with tarfile.open(archive, mode="r|gz") as tar:
        for member in tar:
            if member.name not in (db_name, "metadata.json") or not member.isfile() or member.name in members:
                raise ActionError(f"{where} holds {member.name!r}; a Trivy DB archive holds {db_name} and "
                                  "metadata.json", file=where, reason="kit-input-invalid")
            h = hashlib.sha256()
            f = tar.extractfile(member)
            while chunk := f.read(1 << 20):
                h.update(chunk)
                if member.name == "metadata.json":
                    metadata += chunk
            members[member.name] = {"sha256": h.hexdigest(), "size": member.size}
    if set(members) != {db_name, "metadata.json"}:
        raise ActionError(f"{where} lacks {db_name} or metadata.json", file=where, reason="kit-input-invalid")
    return members, metadata


def _trivy_entry(kind: str, section: str, files: dict[str, K.KitFile]) -> dict:
    archive_name, db_name, cache_dir, version = K.TRIVY_DBS[kind]
    archive = f"{section}/{archive_name}"
    if archive not in files:
        raise ActionError(f"{kind} export has no {archive_name}", file=archive, reason="kit-input-invalid")
    members, metadata = _db_members(files[archive].source, kind, archive)
    beside = files.get(f"{section}/metadata.json")
    if beside is not None and beside.sha256 != members["metadata.json"]["sha256"]:
        raise ActionError(f"{section}/metadata.json differs from the one inside {archive_name}",
                          file=f"{section}/metadata.json", reason="kit-input-invalid")
    try:
        meta = json.loads(metadata)
    except ValueError:
        raise ActionError(f"{archive_name}: metadata.json is not JSON", file=archive, reason="kit-input-invalid") from None
    if meta.get("Version") != version:
        raise ActionError(f"{archive_name}: metadata.json Version {meta.get('Version')!r}, Trivy expects {version}",
                          file=archive, field="Version", reason="kit-input-invalid")
    from stella_build.rules.formats.trivy.packaging import PROFILES

    return {"archive": archive, "members": members, "cacheDir": cache_dir, "oci": f"{section}/oci",
            "ociTag": PROFILES[kind == "trivy-java-db"]["tag"],
            "metadata": {k: meta.get(k) for k in ("Version", "UpdatedAt", "NextUpdate", "DownloadedAt")}}


def _main_file(kind: str, section: str) -> str:
    return {"trivy-db": f"{section}/db.tar.gz", "trivy-java-db": f"{section}/javadb.tar.gz",
            "mirror-full": f"{section}/mirror.tar.zst", "mirror-delta": f"{section}/delta/manifest.diff.json",
            "devportal": f"{section}/{D.ARCHIVE}"}[kind]


def _export_id(kind: str, section: str, files: dict[str, K.KitFile]) -> str | None:
    """The export's id from its manifest (unsigned Trivy DBs have no manifest, hence no id)."""
    manifest = {"mirror-full": "mirror/export.json", "mirror-delta": "delta/manifest.diff.json"}.get(
        kind, "manifests/export.json")
    kf = files.get(f"{section}/{manifest}")
    if kf is None:
        return None
    value = _read_json(kf.source, f"{section}/{manifest}").get("exportId")
    return value if isinstance(value, str) else None


def _devportal_entry(section: str, files: dict[str, K.KitFile]) -> dict:
    """What offline-manifest.json says of a carried portal beyond the common export fields: its
    bundleId (from its manifest.json) and whether it is signed (manifest.dsse.json, which the
    kit's signatures.txt does not list: `kit verify --key` checks it, like `devportal verify`)."""
    kf = files.get(f"{section}/{D.MANIFEST}")
    if kf is None:
        raise ActionError(f"the devportal export has no {D.MANIFEST}", file=f"{section}/{D.MANIFEST}",
                          reason="kit-input-invalid")
    bundle_id = _read_json(kf.source, f"{section}/{D.MANIFEST}").get("bundleId")
    return {"bundleId": bundle_id if isinstance(bundle_id, str) else None,
            "signed": f"{section}/{D.DSSE}" in files}


def _key_files(kind: str, section: str) -> str:
    return {"mirror-full": f"{section}/mirror/signatures/cosign.pub",
            "mirror-delta": f"{section}/delta/signatures/cosign.pub"}.get(kind, f"{section}/cosign.pub")


def _attestation(kind: str, section: str, export_id: str | None, files: dict[str, K.KitFile]) -> dict[str, K.KitFile]:
    """attestations/<export>/ of one export: its statement, DSSE envelope and bundle copied unchanged
    (the envelope's payload must be the statement's exact bytes), the first subject, metadata.json."""
    sources = K.attestation_sources(kind)
    if sources is None or f"{section}/{sources[0]}" not in files:
        return {}
    statement_rel, dsse_rel, bundle_rel, subject_rel = (f"{section}/{s}" for s in sources)
    adir = K.attestation_dir(kind)
    statement = files[statement_rel].source.read_bytes()
    out = {f"{adir}/statement.json": files[statement_rel]}
    signed = dsse_rel in files and bundle_rel in files
    if signed:
        envelope = _read_json(files[dsse_rel].source, dsse_rel)
        bundle = _read_json(files[bundle_rel].source, bundle_rel)
        for what, env in ((dsse_rel, envelope), (bundle_rel, bundle.get("dsseEnvelope") or {})):
            try:
                payload = base64.b64decode(env.get("payload", ""), validate=True)
            except (ValueError, TypeError):
                payload = None
            if payload != statement:
                raise ActionError(f"{what}: its DSSE payload is not {statement_rel}", file=what,
                                  reason="kit-input-invalid")
        out[f"{adir}/attestation.dsse.json"] = files[dsse_rel]
        out[f"{adir}/attestation.sigstore.json"] = files[bundle_rel]
        out[f"{adir}/export.json"] = files[subject_rel]
    doc = json.loads(statement)
    meta = {"exportId": export_id, "kind": kind, "export": section, "signed": signed,
            "predicateType": doc.get("predicateType"),
            "statement": {"path": "statement.json", "sha256": files[statement_rel].sha256,
                          "copiedFrom": statement_rel},
            "subjects": [{"name": s.get("name"), "sha256": (s.get("digest") or {}).get("sha256")}
                         for s in doc.get("subject") or [] if isinstance(s, dict)]}
    if signed:
        meta["dsseEnvelope"] = {"path": "attestation.dsse.json", "sha256": files[dsse_rel].sha256,
                                "copiedFrom": dsse_rel}
    out[f"{adir}/metadata.json"] = K.KitFile.of_bytes(canonical_json.dumps(meta))
    return out


def _collect(actx: ActionContext) -> dict[str, K.KitFile]:
    files: dict[str, K.KitFile] = {}
    for e in actx.params["exports"]:
        section = K.SECTIONS[e["kind"]]
        staged = [(rel, actx.input(f"in/{e['kind']}/f/{rel}")) for rel in e["files"]]
        for tree in e["trees"]:
            staged += [(f"{tree}/{rel}", src) for rel, src in actx.tree_files(f"in/{e['kind']}/t/{tree}")]
        for rel, src in staged:
            path = f"{section}/{rel}"
            if not K.is_safe_path(path):
                raise ActionError(f"{e['target']}: output {rel!r} cannot go into a kit (unsafe path)",
                                  file=rel, reason="kit-input-invalid")
            if path in files:
                raise ActionError(f"{e['target']}: {rel} is both a file and part of a tree", file=rel,
                                  reason="kit-input-invalid")
            files[path] = K.KitFile.of_file(src)
    return files


def _trust(actx: ActionContext, files: dict[str, K.KitFile]) -> tuple[dict[str, K.KitFile], dict]:
    """trust/: the one public key every signature of the kit verifies with, the mirror's TUF root,
    the Sigstore trusted root (keyless)."""
    out: dict[str, K.KitFile] = {}
    keys = {}
    for e in actx.params["exports"]:
        path = _key_files(e["kind"], K.SECTIONS[e["kind"]])
        if path in files:
            keys[path] = files[path].source.read_bytes()
    signer = actx.params["signer"]
    if signer is not None:
        keys["(the kit's signing key)"] = signer["publicKey"].encode()
    if len(set(keys.values())) > 1:
        raise ActionError("the exports and the kit are signed with different keys; a kit ships one trust "
                          f"root (trust/cosign.pub): sign them with one key ({', '.join(sorted(keys))})",
                          reason="kit-mixed-keys")
    if keys:
        out[K.TRUST_KEY] = K.KitFile.of_bytes(next(iter(keys.values())))
    tuf = files.get(f"{K.SECTIONS['mirror-full']}/mirror/tuf/root.json")
    if tuf is not None:
        out[K.TRUST_TUF_ROOT] = tuf
    if K.TRUST_SIGSTORE_ROOT in actx.inputs:
        out[K.TRUST_SIGSTORE_ROOT] = K.KitFile.of_file(actx.input(K.TRUST_SIGSTORE_ROOT))
    info = {"cosignPub": K.TRUST_KEY if K.TRUST_KEY in out else None,
            "tufRoot": K.TRUST_TUF_ROOT if K.TRUST_TUF_ROOT in out else None,
            "sigstoreTrustedRoot": K.TRUST_SIGSTORE_ROOT if K.TRUST_SIGSTORE_ROOT in out else None,
            "publicKeySha256": None}
    if K.TRUST_KEY in out:
        from stella_build.rules.formats.keys import load_public_key, public_key_digest

        info["publicKeySha256"] = public_key_digest(load_public_key(out[K.TRUST_KEY].source.read_bytes()
                                                                    if out[K.TRUST_KEY].data is None
                                                                    else out[K.TRUST_KEY].data))
    return out, info


def kit_assemble(actx: ActionContext) -> dict:
    """Lay out the kit (rules/formats/kit.py), write its archive, sidecars, provenance and parts."""
    p = actx.params
    epoch = int(actx.source_date_epoch)
    files = _collect(actx)
    exports, trivy, relations = [], {}, []
    for e in p["exports"]:
        kind, section = e["kind"], K.SECTIONS[e["kind"]]
        export_id = _export_id(kind, section, files)
        if kind in K.TRIVY_DBS:
            trivy[kind] = _trivy_entry(kind, section, files)
        rels = K.signature_relations(kind, section, frozenset(files))
        relations += rels
        main = _main_file(kind, section)
        if main not in files:
            raise ActionError(f"{e['target']} has no {main.removeprefix(section + '/')}", file=main,
                              reason="kit-input-invalid")
        entry = {"kind": kind, "target": e["target"], "path": section, "exportId": export_id,
                 "signed": bool(rels), "artifact": {"path": main, "sha256": files[main].sha256}}
        if kind == "devportal":
            entry.update(_devportal_entry(section, files))
        exports.append(entry)
        files.update(_attestation(kind, section, export_id, files))
    trust_files, trust = _trust(actx, files)
    files.update(trust_files)
    attest = {path.removeprefix(K.ATTESTATIONS + "/"): kf.sha256 for path, kf in files.items()
              if path.startswith(K.ATTESTATIONS + "/")}
    if attest:
        script = K.KitFile.of_bytes(K.attestations_script())
        files[K.ATTESTATION_SCRIPT] = script
        attest["verify-attestations.sh"] = script.sha256
        files[K.ATTESTATION_CHECKSUMS] = K.KitFile.of_bytes(K.checksums_txt(attest))
    signed = bool(relations) or p["signer"] is not None
    files[K.SIGNATURES] = K.KitFile.of_bytes(K.signatures_txt(relations))
    files[K.VERIFY_SCRIPT] = K.KitFile.of_bytes(K.verify_script())
    files[K.IMPORT_SCRIPT] = K.KitFile.of_bytes(K.import_script())
    files[K.README] = K.KitFile.of_bytes(K.readme(p["name"], signed, any(e["kind"] == "devportal" for e in exports)))
    entries = K.file_entries({path: (kf.sha256, kf.size) for path, kf in files.items()})
    signer = None if p["signer"] is None else {k: v for k, v in p["signer"].items() if k != "publicKey"}
    manifest = canonical_json.dumps(K.offline_manifest(
        name=p["name"], generated_at=rfc3339(epoch), files=entries, exports=exports, trivy=trivy,
        relations=sorted(set(relations)), trust=trust, signer=signer))
    files[K.MANIFEST] = K.KitFile.of_bytes(manifest)
    files[K.CHECKSUMS] = K.KitFile.of_bytes(K.checksums_txt({path: kf.sha256 for path, kf in files.items()}))

    archive = p["name"] + ".tar.gz"
    digest, size = K.write_kit_archive(actx.output(archive), p["name"], files, epoch, p["level"])
    actx.write_output(archive + ".sha256", f"{digest}  {archive}\n".encode())
    actx.write_output(K.MANIFEST, manifest)
    actx.write_output(K.VERIFY_SCRIPT, K.verify_script())
    os.chmod(actx.output(K.VERIFY_SCRIPT), 0o755)
    actx.write_output("provenance.json", canonical_json.dumps(_provenance(p, epoch, archive, digest, manifest, exports)))
    parts = 0
    if p["split_size"]:
        try:
            listed = K.split_archive(actx.output(archive), actx.output("parts/"), p["split_size"])
        except ValueError as exc:
            raise ActionError(str(exc), field="split_size", reason="kit-split-invalid") from None
        actx.write_output(f"parts/{archive}{K.PARTS_SUFFIX}", K.parts_list(listed))
        parts = len(listed)
    return {"files": len(files), "bytes": size, "parts": parts}


def _provenance(p: dict, epoch: int, archive: str, digest: str, manifest: bytes, exports: list[dict]) -> dict:
    from stella_build.rules.formats.signing import SLSA_PROVENANCE_V1, in_toto_statement

    internal = {"sourceDateEpoch": epoch, "rules": p["rules"], "libraries": library_versions()}
    if p["signer"] is not None:
        internal["signer"] = {k: v for k, v in p["signer"].items() if k != "publicKey"}
    predicate = {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {"target": p["target"], "splitSize": p["split_size"], "keyless": p["keyless"]},
            "internalParameters": internal,
            "resolvedDependencies": [{"name": f"{e['target']}/{e['artifact']['path'].removeprefix(e['path'] + '/')}",
                                      "digest": {"sha256": e["artifact"]["sha256"]}} for e in exports],
        },
        "runDetails": {"builder": {"id": BUILDER_ID, "version": {"stella-build": p["builder_version"]}},
                       "metadata": {}},
    }
    subjects = sorted([(archive, digest), (K.MANIFEST, sha256_hex(manifest))])
    return in_toto_statement(subjects, SLSA_PROVENANCE_V1, predicate)
