"""Signing of the Trivy DB profiles (trivy:db, trivy:java-db): added files only, so an unsigned
build keeps its bytes.

Trivy DBs have no manifest of their own, so a signed build adds one in the json:raw format:
    manifests/export.json        contents[]: the DB file, metadata.json and the archive; rerunHash
    manifests/provenance.json    in-toto Statement v1 / SLSA provenance v1; subjects: the manifest
                                 and the archive; resolvedDependencies: the DB action's inputs
plus the Sign action's files (rules/sign_rule.py) with the legacy archive signature under its
StellaOps name (`signatures/trivy-db.sig`, `signatures/trivy-java-db.sig`), and REPLACES the OCI
layout by one that also holds the archive's Sigstore bundle as a referrer of the DB artifact:
    tag "2" ("1" for Java)   the artifact manifest, byte-identical to the unsigned layout's
    referrer manifest        subject = the artifact; artifactType and layer mediaType
                             application/vnd.dev.sigstore.bundle.v0.3+json; empty config;
                             cosign's dev.sigstore.bundle.* annotations
    attestation referrer     subject = the artifact; the same shape with dev.sigstore.bundle.content
                             dsse-envelope: an in-toto Statement (subject: the artifact MANIFEST,
                             predicate: provenance.json's SLSA v1 predicate) DSSE-signed with the
                             same key, so `cosign verify-attestation --key cosign.pub --type
                             slsaprovenance1 --insecure-ignore-tlog=true <registry>/<repo>:2` works
                             (rules/formats/trivy/attestation.py; signed by the TrivyAttestation action)
    tag "sha256-<hex>"       referrers tag schema index over both (registries without the referrers API)
`build_signed_layout` (rules/formats/trivy/attestation.py) is shared by the build and by
`stella-build verify`, which recomputes the expected layout's file digests (rules/formats/oci.py
LayoutDigests) and compares them file by file.
"""
from __future__ import annotations

import json
from pathlib import Path

from stella_build.engine.rule_api import canonical_json
from stella_build.engine.rule_api import library_versions
from stella_build.engine.rule_api import file_sha256, sha256_hex
from stella_build.engine.rule_api import rfc3339
from stella_build.engine.rule_api import ActionContext, ActionError, AnalysisContext, Artifact

from stella_build.rules.formats.oci import (
    ANNOTATION_TITLE, OciLayoutWriter,
)
from stella_build.rules.signing import Signer, add_signing
from stella_build.rules.formats.trivy.attestation import build_signed_layout
from stella_build.rules.formats.trivy.packaging import PROFILES

MANIFEST_SCHEMA = "https://stella-build.dev/schemas/export-manifest/v1"
MANIFEST_VERSION = "1.1.0"
BUILD_TYPE = "https://stella-build.dev/buildtypes/trivy-db/v1"
ATTESTATION_FILE = "oci-attestation.sigstore.json"  # TrivyAttestation's output; only oci/ holds it


def add_trivy_signing(ctx: AnalysisContext, signer: Signer, *, java: bool, files: dict[str, Artifact],
                      materials: dict[str, Artifact], rules: dict[str, str],
                      builder_version: str) -> tuple[dict[str, Artifact], Artifact]:
    """Declare the manifest, Sign and signed-layout actions; returns (files to add, the oci/ tree)."""
    names = PROFILES[java]
    inputs = {"db": files[names["db"]], "metadata.json": files["metadata.json"],
              "archive": files[names["archive"]]}
    if "mapping.json" in files:  # trivy:db's report of what was mapped (not in the archive)
        inputs["mapping"] = files["mapping.json"]
    inputs.update({f"materials/{n}": a for n, a in materials.items()})
    manifest = ctx.action(
        mnemonic="TrivyManifest", fn=trivy_manifest, inputs=inputs,
        outputs=["manifests/export.json", "manifests/provenance.json"],
        params={"java": java, "target": str(ctx.label), "name": ctx.label.name, "rules": rules,
                "builder_version": builder_version, "signer": signer.provenance_params()})
    added = {n: manifest.out(n) for n in ("manifests/export.json", "manifests/provenance.json")}
    added.update(add_signing(ctx, signer, manifest=added["manifests/export.json"],
                             archive=files[names["archive"]], provenance=added["manifests/provenance.json"],
                             archive_name=names["archive"], sig_names={"archive": names["sig"]}))
    # The attestation of the OCI artifact: signed in its own action (the key travels as a secret, as
    # for Sign), so the layout action never sees the key. Not a file of the output: it lives in oci/.
    attestation = ctx.action(
        mnemonic="TrivyAttestation", fn=trivy_attestation,
        inputs={"manifest": added["manifests/export.json"], "provenance": added["manifests/provenance.json"]},
        outputs=[ATTESTATION_FILE],
        params={"java": java, "public_key_sha256": signer.public_key_sha256},
        secrets={"key_path": str(signer.key_path), "password": signer.password})
    layout = ctx.action(
        mnemonic="TrivySignedLayout", fn=signed_layout,
        inputs={"archive": files[names["archive"]], "bundle": added[names["archive"] + ".sigstore.json"],
                "manifest": added["manifests/export.json"], "attestation": attestation.out(ATTESTATION_FILE)},
        outputs=["oci/"], params={"java": java})
    return added, layout.out("oci/")


# -- actions ----------------------------------------------------------------------------------

def _epoch(actx: ActionContext) -> int:
    if actx.source_date_epoch is None:
        raise ActionError("trivy DBs need SOURCE_DATE_EPOCH ([package] source_date_epoch)",
                          field="source_date_epoch")
    return int(actx.source_date_epoch)


def _entry(path: str, src: Path, content_type: str) -> dict:
    return {"path": path, "digest": "sha256:" + file_sha256(src), "bytes": src.stat().st_size,
            "contentType": content_type}


def _materials(actx: ActionContext) -> list[tuple[str, str]]:
    """Every source file behind the DB with its sha256: source files given directly
    (`materials/files/…`), raw OSV record shards (`materials/records/…`: each record names its file)
    and normalized shards' stats (`materials/stats/…`: their `materials` list)."""
    found: set[tuple[str, str]] = set()
    for name in sorted(actx.inputs):
        if name.startswith("materials/files/"):
            found.add((name[len("materials/files/"):], file_sha256(actx.input(name))))
        elif name.startswith("materials/records/"):
            with open(actx.input(name), "rb") as f:
                for line in f:
                    rec = json.loads(line)
                    found.add((rec["path"], rec["sha256"]))
        elif name.startswith("materials/stats/"):
            stats = json.loads(actx.input(name).read_bytes())
            found.update((path, sha) for path, sha in stats.get("materials", []))
    return sorted(found)


def trivy_manifest(actx: ActionContext) -> dict:
    """manifests/export.json and manifests/provenance.json of a signed Trivy DB."""
    from stella_build.rules.formats.bundle import BUILDER_ID, rerun_hash

    p = actx.params
    names = PROFILES[p["java"]]
    epoch = _epoch(actx)
    contents = sorted([_entry(names["db"], actx.input("db"), names["db_type"]),
                       _entry("metadata.json", actx.input("metadata.json"), "application/json"),
                       _entry(names["archive"], actx.input("archive"), names["layer"]),
                       *([_entry("mapping.json", actx.input("mapping"), "application/json")]
                         if "mapping" in actx.inputs else [])],
                      key=lambda e: e["path"])
    rerun = rerun_hash(contents)
    profile = {"kind": "trivy", "variant": names["variant"], "name": p["name"], "revision": "r1"}
    manifest = canonical_json.dumps({
        "schema": MANIFEST_SCHEMA, "version": MANIFEST_VERSION,
        "exportId": "exp-" + sha256_hex(canonical_json.dumps([profile, "default", rerun]))[:24],
        "profile": profile, "tenant": "default", "selectors": {}, "generatedAt": rfc3339(epoch),
        "contents": contents, "rerunHash": rerun, "counts": {"files": len(contents)}, "sources": [],
    })
    archive_entry = next(e for e in contents if e["path"] == names["archive"])
    materials = _materials(actx)
    provenance = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "manifests/export.json", "digest": {"sha256": sha256_hex(manifest)}},
                    {"name": names["archive"], "digest": {"sha256": archive_entry["digest"][7:]}}],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"target": p["target"], "profile": names["profile"]},
                "internalParameters": {"sourceDateEpoch": epoch, "rules": p["rules"],
                                       "libraries": library_versions(), "signer": p["signer"]},
                "resolvedDependencies": [{"name": n, "digest": {"sha256": s}} for n, s in materials],
            },
            "runDetails": {"builder": {"id": BUILDER_ID, "version": {"stella-build": p["builder_version"]}},
                           "metadata": {}},
        },
    }
    actx.write_output("manifests/export.json", manifest)
    actx.write_output("manifests/provenance.json", canonical_json.dumps(provenance))
    return {"files": len(contents), "materials": len(materials)}


def signed_layout(actx: ActionContext) -> dict:
    """The OCI layout of a signed Trivy DB (see the module docstring)."""
    java = actx.params["java"]
    epoch = json.loads(actx.input("manifest").read_bytes())["generatedAt"]
    writer = OciLayoutWriter(actx.output("oci/"))
    layer = writer.add_blob_file(actx.input("archive"), PROFILES[java]["layer"],
                                 {ANNOTATION_TITLE: PROFILES[java]["archive"]})
    artifact, referrers = build_signed_layout(writer, layer, actx.input("bundle").read_bytes(),
                                              actx.input("attestation").read_bytes(), epoch, java)
    return {"artifact": artifact.digest, "referrers": [r.digest for r in referrers]}


def _signing_key(actx: ActionContext):
    """The private key from the action's secrets, checked against the key resolved at analysis."""
    from stella_build.rules.formats.keys import SigningKeyError, load_private_key, public_key_digest

    try:
        key_path, password = actx.secrets["key_path"], actx.secrets["password"]
    except KeyError:
        raise ActionError("the TrivyAttestation action ran without its key (secrets are never cached)",
                          reason="signing-key-missing") from None
    try:
        key = load_private_key(Path(key_path).read_bytes(), password.encode("utf-8"), what=key_path)
    except (OSError, SigningKeyError) as exc:
        raise ActionError(f"cannot load the signing key: {exc}", file=key_path,
                          reason="signing-key-unusable") from None
    if public_key_digest(key) != actx.params["public_key_sha256"]:
        raise ActionError("the signing key changed between analysis and signing", file=key_path,
                          reason="signing-key-unusable")
    return key


def trivy_attestation(actx: ActionContext) -> dict:
    """`oci-attestation.sigstore.json`: the DSSE-signed in-toto statement about the DB artifact manifest
    (rules/formats/trivy/attestation.py), its predicate that of manifests/provenance.json."""
    from stella_build.rules.formats.trivy.attestation import artifact_for, sign_attestation

    java = actx.params["java"]
    manifest = json.loads(actx.input("manifest").read_bytes())
    entry = next(e for e in manifest["contents"] if e["path"] == PROFILES[java]["archive"])
    artifact = artifact_for(entry["digest"].removeprefix("sha256:"), entry["bytes"], manifest["generatedAt"], java)
    predicate = json.loads(actx.input("provenance").read_bytes())["predicate"]
    actx.write_output(ATTESTATION_FILE, sign_attestation(manifest["profile"]["name"], artifact, predicate,
                                                         _signing_key(actx)))
    return {"artifact": artifact.digest}
