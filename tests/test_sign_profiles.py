"""Signed builds of every profile (json-raw, json-policy, trivy-db, trivy-java-db, mirror-full) and
`stella-build verify` on each: clean output verifies; one flipped byte in ANY file fails with exit 3
naming that file; a wrong key gives 3, no key 4; signed builds are byte-identical across caches.

The five targets are built once per module (signed with a throwaway key, STELLA_SIGNING_KEY).
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import pytest

from stella_build.delivery.verify import verify_bundle

from tests.conftest import make_workspace, output_digests, run_cli
from tests.signed_bundle import PASSWORD, make_keys

PROFILES = ["json-raw", "json-policy", "trivy-db", "trivy-java-db", "mirror-full"]
# Files each signed profile must have beyond the unsigned build (docs/signing.md).
SIGNED_FILES = {
    "json-raw": ["signatures/export.sig", "signatures/manifest.sig", "bundle.tar.gz.sigstore.json"],
    "json-policy": ["signatures/export.sig", "signatures/manifest.sig", "bundle.tar.gz.sigstore.json"],
    "trivy-db": ["signatures/trivy-db.sig", "signatures/manifest.sig", "db.tar.gz.sigstore.json",
                 "manifests/export.json", "manifests/provenance.json", "manifests/provenance.dsse.json",
                 "manifests/provenance.sigstore.json", "cosign.pub"],
    "trivy-java-db": ["signatures/trivy-java-db.sig", "signatures/manifest.sig",
                      "javadb.tar.gz.sigstore.json", "manifests/export.json", "cosign.pub"],
    "mirror-full": ["mirror/signatures/export.sig", "mirror/signatures/manifest.sig",
                    "mirror/signatures/export.json.sigstore.json",
                    "mirror/signatures/mirror.tar.zst.sigstore.json",
                    "mirror/signatures/provenance.dsse.json", "mirror/signatures/provenance.sigstore.json",
                    "mirror/signatures/cosign.pub"],
}


def _build(root: Path, keys: Path, cache: Path) -> Path:
    ws = make_workspace(root)
    run_cli(["-q", "build", *(f"//profiles:{p}" for p in PROFILES)], cwd=ws, cache=cache, check=True,
            env={"COSIGN_PASSWORD": PASSWORD, "STELLA_SIGNING_KEY": str(keys / "cosign.key")})
    return ws


@pytest.fixture(scope="module")
def signed(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sign-profiles")
    make_keys(root / "keys")
    ws = _build(root / "ws", root / "keys", root / "cache")
    return {"root": root, "ws": ws, "pub": root / "keys" / "cosign.pub",
            "out": {p: ws / "stella-out" / "profiles" / p for p in PROFILES}}


def _verify_cli(signed: dict, profile: str, *extra: str):
    return run_cli(["verify", str(signed["out"][profile]), *extra, "--output", "json"], cwd=signed["root"])


@pytest.mark.parametrize("profile", PROFILES)
def test_signed_profile_verifies(signed, profile):
    out = signed["out"][profile]
    for rel in SIGNED_FILES[profile]:
        assert (out / rel).is_file(), f"{profile}: signed build lacks {rel}"
    res = _verify_cli(signed, profile, "--key", str(signed["pub"]))
    assert res.code == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] and not report["failed_files"]
    assert any(c["name"] == "manifest-signature" and c["status"] == "passed" for c in report["checks"])


@pytest.mark.parametrize("profile", PROFILES)
def test_flipping_any_byte_of_any_file_fails_naming_it(signed, profile, tmp_path):
    work = tmp_path / profile
    shutil.copytree(signed["out"][profile], work)
    files = sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file())
    assert len(files) >= 10
    missed = []
    for rel in files:
        path = work / rel
        original = path.read_bytes()
        rng = random.Random(f"{profile}:{rel}")  # seeded: a failure is reproducible
        offset = rng.randrange(len(original))
        flipped = bytearray(original)
        flipped[offset] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(flipped))
        try:
            report = verify_bundle(work, key=str(signed["pub"]))
            failed = {c.file for c in report.failed()}
            if report.exit_code != 3 or rel not in failed:
                missed.append((rel, offset, report.exit_code, sorted(f for f in failed if f)))
        finally:
            path.write_bytes(original)
    assert not missed, f"{profile}: flips not detected / not named: {missed[:5]}"
    assert verify_bundle(work, key=str(signed["pub"])).ok  # restored copy verifies again


@pytest.mark.parametrize("profile", PROFILES)
def test_wrong_key_fails_and_missing_key_is_exit_4(signed, profile, tmp_path):
    make_keys(tmp_path / "other")
    assert _verify_cli(signed, profile, "--key", str(tmp_path / "other" / "cosign.pub")).code == 3
    assert _verify_cli(signed, profile).code == 4
    assert _verify_cli(signed, profile, "--key", str(tmp_path / "absent.pub")).code == 4


def test_signed_builds_are_byte_identical_across_caches(signed, tmp_path):
    other = _build(tmp_path / "ws", signed["root"] / "keys", tmp_path / "cache")
    for profile in PROFILES:
        a = output_digests(signed["ws"], "profiles", profile)
        b = output_digests(other, "profiles", profile)
        assert a == b, f"{profile}: {sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))[:5]}"


def test_signing_only_adds_files(signed, tmp_path):
    """An unsigned build's files are byte-identical inside the signed output, except the OCI layout
    of a Trivy DB (which gains the referrer) and, where it records the signer, the provenance."""
    ws = make_workspace(tmp_path / "ws")
    run_cli(["-q", "build", *(f"//profiles:{p}" for p in PROFILES)], cwd=ws, cache=tmp_path / "cache",
            check=True)
    for profile in PROFILES:
        unsigned = output_digests(ws, "profiles", profile)
        signed_d = output_digests(signed["ws"], "profiles", profile)
        changed = {k for k, v in unsigned.items() if signed_d.get(k) != v}
        # The carried developer portal is itself signed (manifest.dsse.json inside its archive),
        # so a signed mirror's portal files and the export.json listing them change too.
        allowed = {k for k in changed if k.startswith("oci/") or "provenance" in k
                   or k.startswith("mirror/devportal/")
                   or (profile == "mirror-full" and k == "mirror/export.json")
                   or k in ("bundle.tar.gz", "bundle.tar.gz.sha256", "mirror.tar.zst", "mirror.tar.zst.sha256",
                            "mirror.json")}
        assert changed == allowed, f"{profile}: signing changed {sorted(changed - allowed)}"
    # The Trivy artifact manifest (what Trivy pulls with tag "2") is the unsigned one.
    for profile, tag in (("trivy-db", "2"), ("trivy-java-db", "1")):
        tags = [{m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
                 for m in json.loads((base / "stella-out/profiles" / profile / "oci/index.json").read_text())["manifests"]}
                for base in (ws, signed["ws"])]
        assert tags[0][tag] == tags[1][tag]
        assert set(tags[1]) == {tag, "sha256-" + tags[0][tag].split(":")[1]}


def test_trivy_referrer_manifest_has_cosign_shape(signed):
    out = signed["out"]["trivy-db"]
    index = json.loads((out / "oci/index.json").read_text())
    tags = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in index["manifests"]}
    artifact = tags["2"]
    blob = lambda d: json.loads((out / "oci/blobs/sha256" / d["digest"].split(":")[1]).read_bytes())  # noqa: E731
    fallback = blob(tags["sha256-" + artifact["digest"].split(":")[1]])
    # two referrers, as cosign v3 pushes them: the archive's signature and the artifact's attestation
    refs = {blob(d)["annotations"]["dev.sigstore.bundle.content"]: blob(d) for d in fallback["manifests"]}
    assert len(fallback["manifests"]) == 2 and set(refs) == {"message-signature", "dsse-envelope"}
    bundle_type = "application/vnd.dev.sigstore.bundle.v0.3+json"
    for ref in refs.values():
        assert ref["artifactType"] == bundle_type and ref["layers"][0]["mediaType"] == bundle_type
        assert ref["subject"]["digest"] == artifact["digest"]
        assert ref["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    assert refs["message-signature"]["annotations"]["dev.sigstore.bundle.predicateType"] == \
        "https://sigstore.dev/cosign/sign/v1"
    assert refs["dsse-envelope"]["annotations"]["dev.sigstore.bundle.predicateType"] == "https://slsa.dev/provenance/v1"
    layer = (out / "oci/blobs/sha256" / refs["message-signature"]["layers"][0]["digest"].split(":")[1]).read_bytes()
    assert layer == (out / "db.tar.gz.sigstore.json").read_bytes()
    db_layer = blob(artifact)["layers"][0]["digest"]
    assert db_layer == "sha256:" + hashlib.sha256((out / "db.tar.gz").read_bytes()).hexdigest()


def test_mirror_verify_checks_signatures_with_key(signed, tmp_path):
    out = signed["out"]["mirror-full"]
    ok = run_cli(["mirror", "verify", str(out), "--key", str(signed["pub"])], cwd=signed["root"])
    assert ok.code == 0, ok.stdout + ok.stderr
    work = tmp_path / "m"
    shutil.copytree(out, work)
    sig = work / "mirror/signatures/export.sig"
    sig.write_bytes(sig.read_bytes()[:-3] + b"AA\n")
    bad = run_cli(["mirror", "verify", str(work), "--key", str(signed["pub"])], cwd=signed["root"])
    assert bad.code == 3 and "export.sig" in bad.stdout + bad.stderr
    # Without --key, mirror verify checks integrity only (signatures are metadata, not content).
    assert run_cli(["mirror", "verify", str(work)], cwd=signed["root"]).code == 0
    shutil.rmtree(work / "mirror/signatures")
    unsigned = run_cli(["mirror", "verify", str(work), "--key", str(signed["pub"])], cwd=signed["root"])
    assert unsigned.code == 4, unsigned.stdout + unsigned.stderr


@pytest.mark.parametrize("profile,prefix,count", [("trivy-db", ("profiles/evidence/osv/", "profiles/evidence/os/"), 37),
                                                  ("trivy-java-db", ("profiles/evidence/maven/",), 5)])
def test_trivy_provenance_lists_the_source_evidence(signed, profile, prefix, count):
    """Materials are the evidence files (with sha256), not intermediate shard files."""
    import hashlib

    out = signed["ws"] / "stella-out" / "profiles" / profile
    prov = json.loads((out / "manifests/provenance.json").read_bytes())
    deps = prov["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert len(deps) == count and all(d["name"].startswith(prefix) for d in deps)
    for d in deps:
        assert d["digest"]["sha256"] == hashlib.sha256((signed["ws"] / d["name"]).read_bytes()).hexdigest()
