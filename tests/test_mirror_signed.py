"""Signed mirror deltas: the delta signs its manifest.diff.json, carries the new mirror's signatures,
and apply(signed full v1, signed delta) == signed full v2 byte for byte (signatures, signed OCI
layout and mirror.json included), checked with `--key` at every step; a chain of three too."""
from __future__ import annotations

import json
import shutil

import pytest

from stella_build.rules.formats.oci import OciLayoutReader, fallback_tag
from tests.conftest import make_workspace, run_cli
from tests.signed_bundle import PASSWORD, make_keys
from tests.test_mirror import FULL, _edit_sample, same_tree

DELTA = "//profiles:mirror-delta"


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Signed full mirrors v1..v4 and signed deltas v1→v2→v3→v4 (v3 removes files)."""
    root = tmp_path_factory.mktemp("mirror-signed")
    key, pub = make_keys(root / "keys")
    env = {"STELLA_SIGNING_KEY": str(key), "COSIGN_PASSWORD": PASSWORD}
    ws = make_workspace(root / "ws")
    cache = root / "cache"
    run_cli(["-q", FULL], cwd=ws, cache=cache, check=True, env=env)
    fulls, deltas = {1: root / "full-v1"}, {}
    shutil.copytree(ws / "stella-out/profiles/mirror-full", fulls[1])
    for v in (2, 3, 4):
        _edit_sample(ws, v)
        run_cli(["-q", "build", "--base", str(fulls[v - 1]), DELTA, FULL], cwd=ws, cache=cache, check=True, env=env)
        fulls[v], deltas[v] = root / f"full-v{v}", root / f"delta-v{v}"
        shutil.copytree(ws / "stella-out/profiles/mirror-full", fulls[v])
        shutil.copytree(ws / "stella-out/profiles/mirror-delta", deltas[v])
    return {"root": root, "pub": pub, "full": fulls, "delta": deltas}


def test_signed_delta_layout(chain):
    d = chain["delta"][2]
    sigs = sorted(p.name for p in (d / "delta/signatures").iterdir())
    assert sigs == ["cosign.pub", "manifest.diff.json.sigstore.json", "manifest.diff.sig"]
    diff = json.loads((d / "delta/manifest.diff.json").read_bytes())
    # the new mirror's signatures travel as metadata patches
    meta = {m["path"] for m in diff["metadata"]}
    assert {"signatures/export.sig", "signatures/manifest.sig", "signatures/cosign.pub",
            "signatures/export.json.sigstore.json"} <= meta
    # the delta is an OCI artifact whose referrer is the manifest.diff.json bundle
    reader = OciLayoutReader(d / "oci")
    artifact = reader.resolve("delta")
    manifest = reader.read_json(artifact)
    titles = {layer["annotations"]["org.opencontainers.image.title"] for layer in manifest["layers"]}
    expected = {p.relative_to(d / "delta").as_posix() for p in (d / "delta").rglob("*") if p.is_file()}
    expected = {rel for rel in expected if not rel.startswith("signatures/")}
    assert titles == expected
    fallback_desc = reader.resolve(fallback_tag(artifact.digest))
    ref_manifest = reader.read_json(reader.children(fallback_desc, reader.read_json(fallback_desc))[0])
    bundle = (d / "oci/blobs/sha256" / ref_manifest["layers"][0]["digest"][7:]).read_bytes()
    assert bundle == (d / "delta/signatures/manifest.diff.json.sigstore.json").read_bytes()
    assert ref_manifest["subject"]["digest"] == artifact.digest


def test_verify_delta_with_key(chain, tmp_path):
    d, pub = chain["delta"][2], str(chain["pub"])
    ok = run_cli(["--output", "json", "mirror", "verify", str(d), "--key", pub], cwd=tmp_path)
    assert ok.code == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)["kind"] == "delta"
    # a changed manifest.diff.json no longer matches its signature
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    path = bad / "delta/manifest.diff.json"
    path.write_bytes(path.read_bytes().replace(b'"resetBaseline":false', b'"resetBaseline":true '))
    res = run_cli(["mirror", "verify", str(bad), "--key", pub], cwd=tmp_path)
    assert res.code == 3, res.stdout + res.stderr
    assert run_cli(["verify", str(bad), "--key", pub], cwd=tmp_path).code == 3  # the generic command too
    assert run_cli(["verify", str(d), "--key", pub], cwd=tmp_path).code == 0
    # a tampered OCI blob is caught even without a key
    shutil.rmtree(bad)
    shutil.copytree(d, bad)
    blob = max((bad / "oci/blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)
    blob.write_bytes(blob.read_bytes()[:-1] + bytes([blob.read_bytes()[-1] ^ 1]))
    res = run_cli(["mirror", "verify", str(bad)], cwd=tmp_path)
    assert res.code == 3 and "OCI layout" in res.stderr
    # another key: 3; an unsigned delta with --key: 4
    other, other_pub = make_keys(tmp_path / "other")
    assert run_cli(["mirror", "verify", str(d), "--key", str(other_pub)], cwd=tmp_path).code == 3
    shutil.rmtree(bad)
    shutil.copytree(d, bad)
    shutil.rmtree(bad / "delta/signatures")
    assert run_cli(["mirror", "verify", str(bad), "--key", pub], cwd=tmp_path).code == 4


def test_apply_signed_chain_equals_signed_full(chain, tmp_path):
    out, pub = tmp_path / "site", str(chain["pub"])
    shutil.copytree(chain["full"][1], out)
    for v in (2, 3, 4):
        res = run_cli(["mirror", "apply", str(out), str(chain["delta"][v]), "-o", str(out), "--key", pub],
                      cwd=tmp_path)
        assert res.code == 0, res.stdout + res.stderr
        assert same_tree(out, chain["full"][v], ignore=("appliedExportIds.log",)) == []
        assert (out / "mirror/signatures/export.sig").is_file()
        res = run_cli(["verify", str(out), "--key", pub], cwd=tmp_path)
        assert res.code == 0, res.stdout + res.stderr


def test_apply_with_key_refuses_bad_signatures(chain, tmp_path):
    pub = str(chain["pub"])
    # a delta signed by someone else: refused before anything is written
    other, other_pub = make_keys(tmp_path / "other")
    res = run_cli(["mirror", "apply", str(chain["full"][1]), str(chain["delta"][2]), "-o", str(tmp_path / "a"),
                   "--key", str(other_pub)], cwd=tmp_path)
    assert res.code == 3 and not (tmp_path / "a").exists()
    # a carried mirror signature replaced by another one: it no longer decodes to its recorded digest
    bad = tmp_path / "bad"
    shutil.copytree(chain["delta"][2], bad)
    diff_path = bad / "delta/manifest.diff.json"
    diff = json.loads(diff_path.read_bytes())
    export_sig = next(m for m in diff["metadata"] if m["path"] == "signatures/export.sig")
    manifest_sig = next(m for m in diff["metadata"] if m["path"] == "signatures/manifest.sig")
    (bad / "delta" / export_sig["patch"]).write_bytes((bad / "delta" / manifest_sig["patch"]).read_bytes())
    res = run_cli(["mirror", "apply", str(chain["full"][1]), str(bad), "-o", str(tmp_path / "b")], cwd=tmp_path)
    assert res.code == 3 and not (tmp_path / "b").exists()
    # without signatures and with --key: exit 4
    shutil.rmtree(bad)
    shutil.copytree(chain["delta"][2], bad)
    shutil.rmtree(bad / "delta/signatures")
    res = run_cli(["mirror", "apply", str(chain["full"][1]), str(bad), "-o", str(tmp_path / "c"), "--key", pub],
                  cwd=tmp_path)
    assert res.code == 4 and not (tmp_path / "c").exists()


def test_encrypted_mirror_gets_no_delta(tmp_path):
    import pyrage

    recipient = str(pyrage.x25519.Identity.generate().to_public())
    ws = make_workspace(tmp_path / "ws")
    text = (ws / "profiles/Exportfile").read_text()
    text = text.replace('[targets.mirror-full]\nrule = "mirror_full"\n',
                        f'[targets.mirror-full]\nrule = "mirror_full"\nencryption = {{ recipients = ["{recipient}"] }}\n')
    (ws / "profiles/Exportfile").write_text(text)
    res = run_cli(["build", "--base", str(tmp_path), DELTA], cwd=ws, cache=tmp_path / "c")
    assert res.code == 2 and "encrypted" in res.stderr and "plaintext" in res.stderr


def test_encrypted_signed_mirror_verifies_before_and_after_decryption(tmp_path):
    """Signatures cover what is shipped (the encrypted archive; export.json and the provenance are
    clear), so `verify --key` works before decryption and binds every encrypted file through the
    archive; `mirror decrypt --key` checks them first and its plaintext output verifies too."""
    import pyrage

    identity = pyrage.x25519.Identity.generate()
    (tmp_path / "age.txt").write_text(f"{identity}\n")
    key, pub = make_keys(tmp_path / "keys")
    ws = make_workspace(tmp_path / "ws")
    text = (ws / "profiles/Exportfile").read_text()
    (ws / "profiles/Exportfile").write_text(text.replace(
        '[targets.mirror-full]\nrule = "mirror_full"\n',
        f'[targets.mirror-full]\nrule = "mirror_full"\nencryption = {{ recipients = ["{identity.to_public()}"] }}\n'))
    run_cli(["-q", FULL], cwd=ws, cache=tmp_path / "c", check=True,
            env={"STELLA_SIGNING_KEY": str(key), "COSIGN_PASSWORD": PASSWORD})
    out = ws / "stella-out/profiles/mirror-full"
    assert (out / "mirror/encryption.json").is_file() and (out / "mirror/signatures/export.sig").is_file()
    res = run_cli(["--output", "json", "verify", str(out), "--key", str(pub)], cwd=tmp_path)
    assert res.code == 0, res.stdout + res.stderr
    checks = {c["name"]: c for c in json.loads(res.stdout)["checks"]}
    assert checks["archive-tree"]["ok"] and checks["encryption"]["ok"]
    # one flipped byte in an encrypted file: named, exit 3
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    victim = sorted((bad / "mirror/data").rglob("*.enc"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 1
    victim.write_bytes(bytes(data))
    res = run_cli(["--output", "json", "verify", str(bad), "--key", str(pub)], cwd=tmp_path)
    assert res.code == 3
    assert victim.relative_to(bad).as_posix() in json.loads(res.stdout)["failed_files"]
    # decrypt: signatures first (another key: 3), then the plaintext mirror verifies with the key
    other, other_pub = make_keys(tmp_path / "other")
    res = run_cli(["mirror", "decrypt", str(out), "-i", str(tmp_path / "age.txt"), "-o", str(tmp_path / "x"),
                   "--key", str(other_pub)], cwd=tmp_path)
    assert res.code == 3 and not (tmp_path / "x").exists()
    plain = tmp_path / "plain"
    res = run_cli(["mirror", "decrypt", str(out), "-i", str(tmp_path / "age.txt"), "-o", str(plain),
                   "--key", str(pub)], cwd=tmp_path)
    assert res.code == 0, res.stdout + res.stderr
    assert not (plain / "mirror/encryption.json").exists()
    assert not (plain / "mirror/signatures/export.sig").exists()  # it signed the encrypted archive
    recorded = json.loads((out / "mirror.json").read_bytes())
    assert recorded["archiveSha256"] == json.loads((plain / "mirror.json").read_bytes())["archiveSha256"]
    for cmd in (["verify", str(plain), "--key", str(pub)], ["mirror", "verify", str(plain), "--key", str(pub)]):
        res = run_cli(cmd, cwd=tmp_path)
        assert res.code == 0, res.stdout + res.stderr
