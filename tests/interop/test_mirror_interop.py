"""Interop: mirrors against skopeo, umoci, a real docker-registry, python-tuf's ngclient and the age CLI."""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from stella_build.rules.formats.oci import OciLayoutReader, verify_layout
from stella_build.delivery.registry import RegistryClient, pull_layout
from stella_build.rules.formats.tuf import generate_key, offline_updater
from tests.conftest import make_workspace, run_cli

from .conftest import require_tool
from .test_oci_tools import registry  # noqa: F401  (the docker-registry fixture)

pytestmark = pytest.mark.interop


def run(args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A TUF-signed mirror and an age-encrypted one (recipient from the real age-keygen)."""
    keygen = require_tool("age-keygen")
    root = tmp_path_factory.mktemp("mirror-interop")
    res = run([keygen, "-o", root / "age.txt"])
    assert res.returncode == 0, res.stderr
    recipient = next(l.split(": ")[1] for l in (root / "age.txt").read_text().splitlines() if "public key" in l)
    key = generate_key(root / "tuf.pem", "ecdsa")
    ws = make_workspace(root / "ws")
    exportfile = ws / "profiles/Exportfile"
    exportfile.write_text(exportfile.read_text() + f"""
[targets.mirror-tuf]
rule = "mirror_full"
deps = [":osv-sample", ":json-policy"]
tuf = {{ key = "{key}", expires_days = {{ root = 7300, targets = 7300, snapshot = 7300, timestamp = 7300 }} }}

[targets.mirror-enc]
rule = "mirror_full"
deps = [":osv-sample"]
encryption = {{ recipients = ["{recipient}"] }}
""")
    run_cli(["-q", "//profiles:mirror-tuf", "//profiles:mirror-enc"], cwd=ws, cache=root / "cache", check=True)
    return {"tuf": ws / "stella-out/profiles/mirror-tuf", "enc": ws / "stella-out/profiles/mirror-enc",
            "identity": root / "age.txt", "root": root}


def _tamper_first_layer(layout: Path) -> None:
    reader = OciLayoutReader(layout)
    manifest = reader.read_json(reader.resolve("mirror"))
    path = reader.blob_path(manifest["layers"][0]["digest"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_skopeo_and_umoci_accept_the_layout_and_detect_tamper(built, tmp_path):
    skopeo, umoci = require_tool("skopeo"), require_tool("umoci")
    layout = built["tuf"] / "oci"
    assert verify_layout(layout) == []
    res = run([skopeo, "--insecure-policy", "copy", "--preserve-digests", f"oci:{layout}:mirror", f"oci:{tmp_path / 'out'}:mirror"])
    assert res.returncode == 0, res.stderr
    assert OciLayoutReader(tmp_path / "out").resolve("mirror").digest == OciLayoutReader(layout).resolve("mirror").digest
    copy = tmp_path / "gc"
    shutil.copytree(layout, copy)
    res = run([umoci, "gc", "--layout", copy])
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (copy / "blobs/sha256").iterdir()) == \
        sorted(p.name for p in (layout / "blobs/sha256").iterdir())  # nothing unreferenced
    _tamper_first_layer(copy)
    assert run([umoci, "gc", "--layout", copy]).returncode != 0
    bad = run([skopeo, "--insecure-policy", "copy", f"oci:{copy}:mirror", f"oci:{tmp_path / 'out2'}:mirror"])
    assert bad.returncode != 0 and "digest" in bad.stderr.lower()


def test_push_through_registry_preserves_every_digest(built, tmp_path, registry):  # noqa: F811
    host = registry.removeprefix("http://")
    res = run_cli(["mirror", "push", str(built["tuf"]), f"{host}/stella/mirror:v1"], cwd=tmp_path)
    assert res.code == 0, res.stderr
    pulled = pull_layout(RegistryClient(registry, "stella/mirror"), tmp_path / "pulled", tags=["v1"])
    local = OciLayoutReader(built["tuf"] / "oci")
    assert pulled["v1"] == local.resolve("mirror").digest
    ours = {d.digest for d in local.walk()}
    theirs = {d.digest for d in OciLayoutReader(tmp_path / "pulled").walk()}
    assert ours == theirs and verify_layout(tmp_path / "pulled") == []
    # every mirror file comes back byte-identical
    manifest = OciLayoutReader(tmp_path / "pulled").read_json(OciLayoutReader(tmp_path / "pulled").resolve("v1"))
    for layer in manifest["layers"]:
        rel = layer["annotations"]["org.opencontainers.image.title"]
        blob = (tmp_path / "pulled/blobs/sha256" / layer["digest"][7:]).read_bytes()
        assert blob == (built["tuf"] / "mirror" / rel).read_bytes()


def test_python_tuf_client_downloads_every_target_and_rejects_tamper(built, tmp_path):
    tree = built["tuf"] / "mirror"
    root_bytes = (tree / "tuf/root.json").read_bytes()
    updater = offline_updater(tree / "tuf", tree, tmp_path / "client", root_bytes)
    updater.refresh()
    targets = json.loads((tree / "tuf/targets.json").read_bytes())["signed"]["targets"]
    assert len(targets) == sum(1 for p in tree.rglob("*") if p.is_file() and "tuf" not in p.relative_to(tree).parts)
    for rel in targets:
        info = updater.get_targetinfo(rel)
        path = updater.download_target(info, str(tmp_path / "dl" / rel.replace("/", "_")))
        assert Path(path).read_bytes() == (tree / rel).read_bytes()
    # tampered target: the real client refuses it
    bad = tmp_path / "bad"
    shutil.copytree(tree, bad)
    victim = next(r for r in sorted(targets) if r.startswith("data/"))
    data = bytearray((bad / victim).read_bytes())
    data[0] ^= 1
    (bad / victim).write_bytes(bytes(data))
    from tuf.api.exceptions import RepositoryError
    updater = offline_updater(bad / "tuf", bad, tmp_path / "client2", root_bytes)
    updater.refresh()
    with pytest.raises(RepositoryError):
        updater.download_target(updater.get_targetinfo(victim), str(tmp_path / "victim"))
    assert run_cli(["mirror", "verify", str(bad)], cwd=tmp_path).code == 3


def test_age_cli_and_our_tool_agree_on_the_wrapped_key(built, tmp_path):
    age, keygen = require_tool("age"), require_tool("age-keygen")
    record = json.loads((built["enc"] / "mirror/encryption.json").read_bytes())
    (tmp_path / "dek.age").write_bytes(base64.b64decode(record["recipients"][0]["wrappedKey"]))
    res = subprocess.run([age, "-d", "-i", str(built["identity"]), str(tmp_path / "dek.age")], capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert len(res.stdout) == 32  # the raw DEK
    # the age CLI's DEK decrypts a data file (nonce || ct || tag, AAD "<runId>:<path>")
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    f = record["files"][0]
    blob = (built["enc"] / "mirror" / f["encryptedPath"]).read_bytes()
    plain = AESGCM(res.stdout).decrypt(blob[:12], blob[12:], f"{record['runId']}:{f['path']}".encode())
    assert len(plain) == f["size"]
    # our tool with the age-keygen identity; a wrong identity is exit 3
    out = tmp_path / "plain"
    ok = run_cli(["mirror", "decrypt", str(built["enc"]), "-i", str(built["identity"]), "-o", str(out)], cwd=tmp_path)
    assert ok.code == 0, ok.stderr
    assert (out / "mirror" / f["path"]).read_bytes() == plain
    assert run_cli(["mirror", "verify", str(out)], cwd=tmp_path).code == 0
    assert run([keygen, "-o", tmp_path / "wrong.txt"]).returncode == 0
    bad = run_cli(["mirror", "decrypt", str(built["enc"]), "-i", str(tmp_path / "wrong.txt"), "-o", str(tmp_path / "x")], cwd=tmp_path)
    assert bad.code == 3 and "matches none" in bad.stderr


def test_signed_mirror_and_delta_travel_through_a_registry_with_their_signatures(tmp_path, registry):  # noqa: F811
    """Push a signed full mirror and a signed delta to docker-registry (no referrers API: the
    tag-schema fallback), pull them back elsewhere, find each signature through the referrers,
    verify it against the pulled export.json / manifest.diff.json, and apply the pulled delta."""
    from stella_build.rules.formats import signing
    from stella_build.rules.formats.keys import load_public_key
    from tests.signed_bundle import PASSWORD, make_keys
    from tests.test_mirror import _edit_sample, same_tree

    skopeo = require_tool("skopeo")
    key, pub = make_keys(tmp_path / "keys")
    env = {"STELLA_SIGNING_KEY": str(key), "COSIGN_PASSWORD": PASSWORD}
    ws = make_workspace(tmp_path / "ws")
    run_cli(["-q", "//profiles:mirror-full"], cwd=ws, cache=tmp_path / "c", check=True, env=env)
    v1 = tmp_path / "v1"
    shutil.copytree(ws / "stella-out/profiles/mirror-full", v1)
    _edit_sample(ws, 2)
    run_cli(["-q", "build", "--base", str(v1), "//profiles:mirror-delta", "//profiles:mirror-full"],
            cwd=ws, cache=tmp_path / "c", check=True, env=env)
    delta, v2 = ws / "stella-out/profiles/mirror-delta", ws / "stella-out/profiles/mirror-full"
    # skopeo accepts the delta layout as it does the mirror's
    res = run([skopeo, "--insecure-policy", "copy", "--preserve-digests", f"oci:{delta / 'oci'}:delta",
               f"oci:{tmp_path / 'skopeo'}:delta"])
    assert res.returncode == 0, res.stderr

    host = registry.removeprefix("http://")
    public = load_public_key(pub.read_bytes())
    for src, repo, tag, signed_file in ((v1, "stella/mirror", "mirror", "export.json"),
                                        (delta, "stella/mirror-delta", "delta", "manifest.diff.json")):
        res = run_cli(["mirror", "push", str(src), f"{host}/{repo}:v2"], cwd=tmp_path)
        assert res.code == 0, res.stderr
        client = RegistryClient(registry, repo)
        assert client.referrers_api(OciLayoutReader(src / "oci").resolve(tag).digest) is None  # fallback used
        pulled = tmp_path / f"pulled-{tag}"
        digests = pull_layout(client, pulled)
        assert verify_layout(pulled) == []
        reader = OciLayoutReader(pulled)
        artifact = reader.resolve(tag)
        assert artifact.digest == OciLayoutReader(src / "oci").resolve(tag).digest == digests["v2"]
        manifest = reader.read_json(artifact)
        layers = {l["annotations"]["org.opencontainers.image.title"]: l["digest"] for l in manifest["layers"]}
        referrers = client.referrers(artifact.digest)
        assert len(referrers) == 1
        bundle_layer = reader.read_json(referrers[0])["layers"][0]
        bundle = (pulled / "blobs/sha256" / bundle_layer["digest"][7:]).read_bytes()
        signed = (pulled / "blobs/sha256" / layers[signed_file][7:]).read_bytes()
        signing.verify_sigstore_bundle(bundle, signed, public)
        with pytest.raises(signing.SignatureInvalid):
            signing.verify_sigstore_bundle(bundle, signed + b" ", public)

    # `mirror pull` lays both out again (verified, re-packaged to the same digests); the pulled
    # delta applies onto v1 with --key and gives v2 byte for byte
    site = tmp_path / "site"
    res = run_cli(["mirror", "pull", f"{host}/stella/mirror:v2", "-o", str(site), "--key", str(pub)], cwd=tmp_path)
    assert res.code == 0, res.stdout + res.stderr
    others = [f"mirror/signatures/{n}" for n in ("cosign.pub", "export.sig", "manifest.sig", "provenance.dsse.json",
                                                 "provenance.sigstore.json", "mirror.tar.zst.sigstore.json")]
    assert same_tree(site, v1, ignore=tuple(others)) == []  # only the referrer bundle comes back
    site_delta = tmp_path / "site-delta"
    res = run_cli(["mirror", "pull", f"{host}/stella/mirror-delta:v2", "-o", str(site_delta), "--key", str(pub)],
                  cwd=tmp_path)
    assert res.code == 0, res.stdout + res.stderr
    assert same_tree(site_delta, delta, ignore=("delta/signatures/cosign.pub", "delta/signatures/manifest.diff.sig")) == []
    res = run_cli(["mirror", "apply", str(site), str(site_delta), "-o", str(site), "--key", str(pub)], cwd=tmp_path)
    assert res.code == 0, res.stdout + res.stderr
    assert same_tree(site, v2, ignore=("appliedExportIds.log",)) == []
    # another key: the pull is refused and nothing is written
    other, other_pub = make_keys(tmp_path / "other")
    res = run_cli(["mirror", "pull", f"{host}/stella/mirror:v2", "-o", str(tmp_path / "x"), "--key", str(other_pub)],
                  cwd=tmp_path)
    assert res.code == 3 and not (tmp_path / "x").exists()
