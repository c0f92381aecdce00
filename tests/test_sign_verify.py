"""Signed builds and offline `stella-build verify`: keys, reproducibility, tampering, exit codes."""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from stella_build.cli.main import main as cli_main
from stella_build.engine.encode.archive import TarEntry, gzip_bytes, tar_bytes
from stella_build.rules.formats import keys as signing_keys, signing

from tests.conftest import CLI, REPO, make_workspace, output_digests, run_cli
from tests.signed_bundle import (PASSWORD, SIGNED_TARGET, build_signed, make_keys, signed_out,
                                 signed_workspace)

GOLDEN = json.loads((REPO / "golden" / "digests.json").read_text())
SIGNATURE_FILES = {"bundle.tar.gz.sigstore.json", "manifests/export.json.sigstore.json",
                   "manifests/provenance.dsse.json", "manifests/provenance.sigstore.json",
                   "signatures/export.sig", "signatures/manifest.sig", "cosign.pub"}


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    make_keys(d)
    return d


@pytest.fixture(scope="module")
def signed(tmp_path_factory, keys) -> Path:
    """A signed //profiles:signed build; returns its workspace (do not modify it in tests)."""
    root = tmp_path_factory.mktemp("signed")
    ws = signed_workspace(root / "ws", keys)
    build_signed(ws, root / "cache")
    return ws


def verify(capsys, *args: str) -> tuple[int, dict]:
    """Run `stella-build verify ... --output json` in-process; (exit code, report)."""
    capsys.readouterr()
    code = cli_main(["verify", *args, "--output", "json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def failed_files(report: dict) -> set[str]:
    return {c["file"] for c in report.get("checks", []) if not c["ok"]}


# -- keys --------------------------------------------------------------------------------------

def test_keys_generate_round_trip(tmp_path):
    out = tmp_path / "k"
    res = run_cli(["keys", "generate", "--output-dir", str(out), "--output", "json"], cwd=tmp_path,
                  env={"COSIGN_PASSWORD": "s3cret"}, check=True)
    info = res.json()
    key_pem, pub_pem = (out / "cosign.key").read_bytes(), (out / "cosign.pub").read_bytes()
    assert stat.S_IMODE(os.stat(out / "cosign.key").st_mode) == 0o600
    assert key_pem.startswith(b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n")
    key = signing_keys.load_private_key(key_pem, b"s3cret")
    pub = signing_keys.load_public_key(pub_pem)
    assert signing_keys.public_key_digest(key) == signing_keys.public_key_digest(pub) == info["public_key_sha256"]
    sig = signing.legacy_signature(b"data", key)
    signing.verify_legacy_signature(sig, b"data", pub)
    with pytest.raises(signing_keys.SigningKeyError):
        signing_keys.load_private_key(key_pem, b"wrong")
    again = run_cli(["keys", "generate", "--output-dir", str(out)], cwd=tmp_path, env={"COSIGN_PASSWORD": "x"})
    assert again.code == 2 and "refusing to overwrite" in again.stderr
    assert (out / "cosign.key").read_bytes() == key_pem
    env = {k: v for k, v in os.environ.items() if k != "COSIGN_PASSWORD"}
    nopw = subprocess.run([CLI, "keys", "generate", "--output-dir", str(tmp_path / "k2")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert nopw.returncode == 4 and "COSIGN_PASSWORD" in nopw.stderr
    assert not (tmp_path / "k2" / "cosign.key").exists()


# -- signed builds -----------------------------------------------------------------------------

def test_signed_build_writes_signatures_and_leaves_unsigned_outputs_alone(signed, keys, tmp_path):
    out = signed_out(signed)
    files = set(output_digests(signed, "profiles", SIGNED_TARGET))
    assert SIGNATURE_FILES <= files
    assert (out / "cosign.pub").read_bytes() == (keys / "cosign.pub").read_bytes()
    prov = json.loads((out / "manifests/provenance.json").read_text())
    pub = signing_keys.load_public_key((keys / "cosign.pub").read_bytes())
    signer = prov["predicate"]["buildDefinition"]["internalParameters"]["signer"]
    assert signer["publicKeySha256"] == signing_keys.public_key_digest(pub)
    assert "startedOn" not in json.dumps(prov)
    # The DSSE payload is exactly provenance.json; both DSSE files carry the same envelope.
    envelope = json.loads((out / "manifests/provenance.dsse.json").read_bytes())
    bundle = json.loads((out / "manifests/provenance.sigstore.json").read_bytes())
    assert bundle["dsseEnvelope"] == envelope
    assert signing.verify_dsse_envelope(envelope, pub)[1] == (out / "manifests/provenance.json").read_bytes()
    assert "keyid" not in envelope["signatures"][0]
    # The unsigned target of the same workspace still matches its golden digests.
    run_cli(["-q", "//profiles:json-raw"], cwd=signed, cache=tmp_path / "c", check=True)
    assert output_digests(signed, "profiles", "json-raw") == GOLDEN["//profiles:json-raw"]


def test_signed_build_is_reproducible_and_keeps_secrets_out_of_the_cache(signed, keys, tmp_path):
    ws2 = signed_workspace(tmp_path / "ws2", keys)
    cache2 = tmp_path / "cache2"
    build_signed(ws2, cache2)
    assert output_digests(ws2, "profiles", SIGNED_TARGET) == output_digests(signed, "profiles", SIGNED_TARGET)
    # Neither the password nor the key's path reaches the cache (index, key records, blobs).
    needles = [PASSWORD.encode(), str(ws2 / "keys").encode()]
    for path in cache2.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(n in data for n in needles), f"secret leaked into {path}"
    # The same key under another password is the same signer: everything is a cache hit.
    key = signing_keys.load_private_key((ws2 / "keys/cosign.key").read_bytes(), PASSWORD.encode())
    (ws2 / "keys/cosign.key").write_bytes(signing_keys.encode_private_key(key, b"another password"))
    res = run_cli(["--output", "json", f"//profiles:{SIGNED_TARGET}"], cwd=ws2, cache=cache2,
                  env={"COSIGN_PASSWORD": "another password"}, check=True)
    assert res.json()["actions"]["executed"] == 0
    # Another key is another signer: Bundle (provenance names the signer) and Sign re-run.
    make_keys(tmp_path / "other")
    shutil.copy(tmp_path / "other/cosign.key", ws2 / "keys/cosign.key")
    res = run_cli(["--output", "json", f"//profiles:{SIGNED_TARGET}"], cwd=ws2, cache=cache2,
                  env={"COSIGN_PASSWORD": PASSWORD}, check=True)
    assert res.json()["actions"]["executed"] == 2


def test_signing_from_environment_and_cli_flag(keys, tmp_path):
    ws = make_workspace(tmp_path / "ws")
    env = {"STELLA_SIGNING_KEY": str(keys / "cosign.key"), "COSIGN_PASSWORD": PASSWORD}
    run_cli(["-q", "//profiles:json-raw"], cwd=ws, cache=tmp_path / "c", env=env, check=True)
    assert SIGNATURE_FILES <= set(output_digests(ws, "profiles", "json-raw"))
    shutil.rmtree(ws / "stella-out")
    run_cli(["-q", "build", "--sign", str(keys / "cosign.key"), "//profiles:json-raw"], cwd=ws,
            cache=tmp_path / "c", env={"COSIGN_PASSWORD": PASSWORD}, check=True)
    assert SIGNATURE_FILES <= set(output_digests(ws, "profiles", "json-raw"))
    code = cli_main(["verify", str(ws / "stella-out/profiles/json-raw"), "--key", str(keys / "cosign.pub")])
    assert code == 0


def _exportfile_with(ws: Path, sign: str) -> int:
    ef = ws / "profiles" / "Exportfile"
    text = ef.read_text() + f'\n[targets.s]\nrule = "json_raw"\ndeps = [":osv-sample"]\nsign = {sign}\n'
    ef.write_text(text)
    return len(text.splitlines())  # the sign line is the last one


@pytest.mark.parametrize("sign, env, code, needle", [
    ('{ key = "keys/cosign.key", password_env = "STELLA_TEST_UNSET_PW" }', {}, 4,
     "STELLA_TEST_UNSET_PW is not set"),
    ('{ key = "keys/cosign.key" }', {"COSIGN_PASSWORD": "wrong"}, 4, "wrong password"),
    ('{ key = "keys/missing.key" }', {"COSIGN_PASSWORD": PASSWORD}, 4, "does not exist"),
    ("{}", {}, 4, "no key"),
    ("{ keyless = true }", {}, 4, "keyless signing requested (sign.keyless = true)"),
    ('{ keyless = true, key = "keys/cosign.key" }', {}, 2, "not both"),
])
def test_signing_errors_fail_early_and_name_the_exportfile_line(keys, tmp_path, sign, env, code, needle):
    ws = signed_workspace(tmp_path / "ws", keys)
    line = _exportfile_with(ws, sign)
    res = run_cli(["//profiles:s"], cwd=ws, cache=tmp_path / "c", env={"STELLA_SIGNING_KEY": "", **env})
    assert res.code == code, res.stderr
    assert needle in res.stderr
    assert f"profiles/Exportfile:{line}" in res.stderr and "//profiles:s" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (ws / "stella-out/profiles/s").exists()  # failed at analysis, before any work


def test_keyless_flag_fails_offline_with_exit_4(sample_ws, tmp_path):
    res = run_cli(["build", "--sign", "keyless", "//profiles:json-raw"], cwd=sample_ws, cache=tmp_path / "c")
    assert res.code == 4 and "keyless signing requested (--sign keyless)" in res.stderr
    assert "docs/signing.md" in res.stderr


# -- verify ------------------------------------------------------------------------------------

def test_verify_directory_and_tarball(signed, keys, capsys):
    out = signed_out(signed)
    code, report = verify(capsys, str(out), "--key", str(keys / "cosign.pub"), "--offline")
    assert code == 0 and report["ok"] and report["format"] == "directory"
    names = [c["name"] for c in report["checks"]]
    order = ["archive-digest", "manifest-signature", "contents", "rerun-hash", "provenance-subjects",
             "provenance-signature"]
    assert [n for n in dict.fromkeys(names) if n in order] == order
    assert all(c["status"] == "passed" for c in report["checks"])
    code, report = verify(capsys, str(out / "bundle.tar.gz"), "--key", str(keys / "cosign.pub"))
    assert code == 0 and report["format"] == "tarball"
    assert "archive-signature" in {c["name"] for c in report["checks"]}
    code, _ = verify(capsys, str(out), "--trust-bundle-key")
    assert code == 0


def test_verify_exit_codes(signed, keys, tmp_path, capsys):
    out = str(signed_out(signed))
    make_keys(tmp_path / "other")
    code, report = verify(capsys, out, "--key", str(tmp_path / "other/cosign.pub"))
    assert code == 3 and not report["ok"] and "cosign.pub" in failed_files(report)
    assert cli_main(["verify", out]) == 4                                     # no trust root
    assert cli_main(["verify", out, "--key", str(tmp_path / "nope.pub")]) == 4  # key file missing
    assert cli_main(["verify", "https://example.com/bundle.tar.gz", "--offline", "--key", str(keys / "cosign.pub")]) == 5
    assert cli_main(["verify", out, "--key", "https://example.com/cosign.pub"]) == 5
    assert cli_main(["verify", str(tmp_path / "missing"), "--key", str(keys / "cosign.pub")]) == 2
    assert cli_main(["verify", out, "--key", str(keys / "cosign.key")]) == 2  # a private key


def test_unsigned_bundle_needs_allow_unsigned(sample_ws, keys, tmp_path, capsys):
    run_cli(["-q", "//profiles:json-raw"], cwd=sample_ws, cache=tmp_path / "c", check=True)
    out = str(sample_ws / "stella-out/profiles/json-raw")
    code, report = verify(capsys, out, "--key", str(keys / "cosign.pub"))
    assert code == 3 and "manifests/export.json.sigstore.json" in failed_files(report)
    code, report = verify(capsys, out, "--allow-unsigned")
    assert code == 0 and {c["status"] for c in report["checks"]} == {"passed", "skipped"}
    (sample_ws / "stella-out/profiles/json-raw/extra.json").write_text("{}")
    code, report = verify(capsys, out, "--allow-unsigned")
    assert code == 3 and failed_files(report) == {"extra.json"}


def _flip(path: Path, rng: random.Random) -> int:
    data = bytearray(path.read_bytes())
    offset = rng.randrange(len(data))
    data[offset] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return offset


def test_tampering_any_file_of_the_signed_directory_fails_naming_it(signed, keys, tmp_path, capsys):
    src = signed_out(signed)
    rng = random.Random(20250101)
    files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    assert len(files) >= 20
    for rel in files:
        work = tmp_path / "t"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(src, work)
        offset = _flip(work / rel, rng)
        code, report = verify(capsys, str(work), "--key", str(keys / "cosign.pub"))
        assert code == 3, f"flipping {rel}@{offset} was not detected"
        assert report["failed_files"] == [rel], f"{rel}@{offset}: blamed {report['failed_files']}"


def test_tampering_the_tarball_fails_naming_it(signed, keys, tmp_path, capsys):
    src = signed_out(signed)
    work = tmp_path / "t"
    shutil.copytree(src, work)
    original = (src / "bundle.tar.gz").read_bytes()
    rng = random.Random(7)
    for _ in range(12):
        (work / "bundle.tar.gz").write_bytes(original)
        offset = _flip(work / "bundle.tar.gz", rng)
        code, report = verify(capsys, str(work / "bundle.tar.gz"), "--key", str(keys / "cosign.pub"))
        assert code == 3, f"flipping bundle.tar.gz@{offset} was not detected"
        assert report["failed_files"] == ["bundle.tar.gz"], (offset, report["failed_files"])
    # A re-packed archive with one record changed and a matching .sha256 still fails (signatures).
    with tarfile.open(src / "bundle.tar.gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    victim = sorted(n for n in members if n.startswith("data/"))[0]
    members[victim] = members[victim][:-1] + bytes([members[victim][-1] ^ 1])
    forged = gzip_bytes(tar_bytes([TarEntry(n, d) for n, d in members.items()], mtime=1735689600))
    (work / "bundle.tar.gz").write_bytes(forged)
    (work / "bundle.tar.gz.sha256").write_text(f"{hashlib.sha256(forged).hexdigest()}  bundle.tar.gz\n")
    code, report = verify(capsys, str(work / "bundle.tar.gz"), "--key", str(keys / "cosign.pub"))
    assert code == 3 and "bundle.tar.gz" in report["failed_files"]
    assert f"bundle.tar.gz:{victim}" in json.dumps(report) or "bundle.tar.gz" in report["failed_files"]


def test_text_report_names_the_file(signed, keys, tmp_path, capsys):
    work = tmp_path / "t"
    shutil.copytree(signed_out(signed), work)
    (work / "indexes/advisories.index.json").write_bytes(b"{}")
    capsys.readouterr()
    assert cli_main(["verify", str(work), "--key", str(keys / "cosign.pub")]) == 3
    text = capsys.readouterr().out
    assert "FAIL contents" in text and "indexes/advisories.index.json" in text.splitlines()[-1]


def test_tarball_member_outside_bundle_is_rejected(keys, tmp_path, capsys):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../evil")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    (tmp_path / "bundle.tar.gz").write_bytes(buf.getvalue())
    code, report = verify(capsys, str(tmp_path / "bundle.tar.gz"), "--key", str(keys / "cosign.pub"))
    assert code == 3 and "bundle.tar.gz" in report["failed_files"]



def test_keyless_bundles_next_to_files_do_not_break_key_verification(tmp_path):
    """A `*.keyless.sigstore.json` written by the post-build keyless step sits beside key-signed
    files; `verify --key` leaves it to identity-based verifiers, but a stray one is still refused."""
    from tests.signed_bundle import build_signed, make_keys, signed_out, signed_workspace

    key_dir = tmp_path / "keys"
    _, pub = make_keys(key_dir)
    ws = signed_workspace(tmp_path / "w", key_dir)
    build_signed(ws, tmp_path / "c")
    out = signed_out(ws)
    (out / "manifests/export.json.keyless.sigstore.json").write_text("{}")
    ok = run_cli(["verify", str(out), "--key", str(pub)], cwd=tmp_path)
    assert ok.code == 0, ok.stdout + ok.stderr
    (out / "data/unlisted.keyless.sigstore.json").write_text("{}")
    bad = run_cli(["verify", str(out), "--key", str(pub)], cwd=tmp_path)
    assert bad.code == 3 and "unlisted.keyless.sigstore.json" in bad.stdout + bad.stderr
