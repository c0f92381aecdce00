"""Unit tests for rules/tuf_repo.py: deterministic signed metadata, expiries from the epoch, key handling."""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata

from stella_build.rules.formats.tuf import (
    DAY,
    ROLES,
    DeterministicEcdsaSigner,
    TufKeys,
    TufRepoError,
    build_tuf_repo,
    generate_key,
    load_signer,
)

EPOCH = 1735689600  # 2025-01-01T00:00:00Z


@pytest.fixture(scope="module")
def keyfiles(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    return {
        "root": generate_key(d / "root.pem", "ecdsa"),
        "targets": generate_key(d / "targets.pem"),
        "snapshot": generate_key(d / "snapshot.pem"),
        "timestamp": generate_key(d / "timestamp.pem"),
    }


@pytest.fixture
def targets(tmp_path) -> dict[str, bytes | Path]:
    f = tmp_path / "export.json"
    f.write_bytes(b'{"a":1}')
    return {"data/raw/advisories/osv.jsonl.zst": b"\x28\xb5\x2f\xfd zstd", "export.json": f}


def test_files_are_byte_identical_across_runs(tmp_path, keyfiles, targets):
    a = build_tuf_repo(tmp_path / "a", targets, TufKeys.from_files(keyfiles), EPOCH)
    b = build_tuf_repo(tmp_path / "b", targets, TufKeys.from_files(keyfiles), EPOCH)
    assert a.files == b.files
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["1.root.json", "root.json", "snapshot.json", "targets.json", "timestamp.json"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a.root_bytes == a.files["root.json"]


def test_ecdsa_signer_is_deterministic_and_verifies():
    key = ec.generate_private_key(ec.SECP256R1())
    signer = DeterministicEcdsaSigner(key)
    s1, s2 = signer.sign(b"payload"), signer.sign(b"payload")
    assert s1.signature == s2.signature
    # independent check with cryptography and via securesystemslib's key verification
    key.public_key().verify(bytes.fromhex(s1.signature), b"payload", ec.ECDSA(hashes.SHA256()))
    signer.public_key.verify_signature(s1, b"payload")
    assert signer.public_key.scheme == "ecdsa-sha2-nistp256"
    # stock CryptoSigner ECDSA is randomized (why the custom signer exists)
    stock = CryptoSigner(key)
    assert stock.sign(b"payload").signature != stock.sign(b"payload").signature


def test_metadata_content(tmp_path, keyfiles, targets):
    repo = build_tuf_repo(tmp_path, targets, TufKeys.from_files(keyfiles), EPOCH,
                          {"timestamp": 7 * DAY}, custom={"export.json": {"mediaType": "application/json"}})
    root = Metadata.from_bytes(repo.files["root.json"])
    for role in ROLES:
        md = Metadata.from_bytes(repo.files[f"{role}.json"])
        root.verify_delegate(role, md)  # signed by the right key
        assert md.signed.version == 1
    tg = Metadata.from_bytes(repo.files["targets.json"]).signed
    assert sorted(tg.targets) == ["data/raw/advisories/osv.jsonl.zst", "export.json"]
    osv = tg.targets["data/raw/advisories/osv.jsonl.zst"]
    assert osv.length == len(targets["data/raw/advisories/osv.jsonl.zst"])
    assert osv.hashes == {"sha256": hashlib.sha256(targets["data/raw/advisories/osv.jsonl.zst"]).hexdigest()}
    assert tg.targets["export.json"].hashes["sha256"] == hashlib.sha256(b'{"a":1}').hexdigest()
    assert tg.targets["export.json"].custom == {"mediaType": "application/json"}
    # expiries come from the epoch, not the clock
    ts = Metadata.from_bytes(repo.files["timestamp.json"]).signed
    assert ts.expires == datetime.fromtimestamp(EPOCH + 7 * DAY, tz=timezone.utc)
    assert root.signed.expires == datetime.fromtimestamp(EPOCH + 365 * DAY, tz=timezone.utc)
    # snapshot/timestamp pin the exact bytes of the next file down
    snap = Metadata.from_bytes(repo.files["snapshot.json"]).signed
    snap.meta["targets.json"].verify_length_and_hashes(repo.files["targets.json"])
    ts.snapshot_meta.verify_length_and_hashes(repo.files["snapshot.json"])
    assert root.signed.consistent_snapshot is False


def test_files_are_canonical_json(tmp_path, keyfiles, targets):
    repo = build_tuf_repo(tmp_path, targets, TufKeys.from_files(keyfiles), EPOCH)
    for data in repo.files.values():
        assert data == json.dumps(json.loads(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_tampered_metadata_fails_verification(tmp_path, keyfiles, targets):
    repo = build_tuf_repo(tmp_path, targets, TufKeys.from_files(keyfiles), EPOCH)
    root = Metadata.from_bytes(repo.files["root.json"])
    doc = json.loads(repo.files["targets.json"])
    doc["signed"]["targets"]["export.json"]["length"] += 1
    with pytest.raises(UnsignedMetadataError):
        root.verify_delegate("targets", Metadata.from_dict(doc))


def test_wrong_role_key_fails_verification(tmp_path, keyfiles, targets):
    repo = build_tuf_repo(tmp_path, targets, TufKeys.from_files(keyfiles), EPOCH)
    root = Metadata.from_bytes(repo.files["root.json"])
    with pytest.raises(UnsignedMetadataError):
        root.verify_delegate("timestamp", Metadata.from_bytes(repo.files["targets.json"]))


def test_single_key_and_thresholds(tmp_path, keyfiles, targets):
    single = TufKeys.single(load_signer(keyfiles["targets"]))
    repo = build_tuf_repo(tmp_path / "s", targets, single, EPOCH)
    assert len(Metadata.from_bytes(repo.root_bytes).signed.keys) == 1
    two = TufKeys.from_files({**keyfiles, "targets": [keyfiles["targets"], keyfiles["snapshot"]]})
    two.thresholds["targets"] = 2
    repo = build_tuf_repo(tmp_path / "t", targets, two, EPOCH)
    md = Metadata.from_bytes(repo.files["targets.json"])
    assert [s for s in md.signatures] == sorted(md.signatures)  # signatures ordered by keyid
    assert len(md.signatures) == 2
    two.thresholds["targets"] = 3
    with pytest.raises(TufRepoError, match="threshold 3"):
        build_tuf_repo(tmp_path / "u", targets, two, EPOCH)


@pytest.mark.parametrize("bad", ["/abs", "../up", "a/../b", "a//b", "", "a\\b", "./a"])
def test_bad_target_paths(tmp_path, keyfiles, bad):
    with pytest.raises(TufRepoError, match="relative POSIX path"):
        build_tuf_repo(tmp_path, {bad: b"x"}, TufKeys.from_files(keyfiles), EPOCH)


def test_bad_inputs(tmp_path, keyfiles, targets):
    keys = TufKeys.from_files(keyfiles)
    with pytest.raises(TufRepoError, match="unknown roles"):
        build_tuf_repo(tmp_path, targets, keys, EPOCH, {"mirror": 1})
    with pytest.raises(TufRepoError, match="must be positive"):
        build_tuf_repo(tmp_path, targets, keys, EPOCH, {"root": 0})
    with pytest.raises(TufRepoError, match="cannot read"):
        build_tuf_repo(tmp_path, {"x": tmp_path / "missing"}, keys, EPOCH)
    with pytest.raises(TufRepoError, match="no key file for roles"):
        TufKeys.from_files({"root": keyfiles["root"]})
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(TufRepoError, match="junk.pem: not a usable PEM"):
        load_signer(tmp_path / "junk.pem")
    with pytest.raises(TufRepoError, match="cannot read TUF key"):
        load_signer(tmp_path / "absent.pem")


def test_generate_key_files(tmp_path):
    path = generate_key(tmp_path / "k.pem", "ecdsa", password=b"pw")
    assert path.stat().st_mode & 0o777 == 0o600
    pub = serialization.load_pem_public_key((tmp_path / "k.pem.pub").read_bytes())
    signer = load_signer(path, password=b"pw")
    assert isinstance(signer, DeterministicEcdsaSigner)
    assert signer.public_key._crypto_key().public_numbers() == pub.public_numbers()
    with pytest.raises(TufRepoError, match="not a usable PEM"):
        load_signer(path)  # password required


def test_bytes_independent_of_tz_hashseed_and_cwd(tmp_path, keyfiles, targets):
    """Same keys + inputs in a subprocess with another TZ, hash seed and cwd give the same files."""
    import os
    import subprocess
    import sys

    here = build_tuf_repo(tmp_path / "here", targets, TufKeys.from_files(keyfiles), EPOCH)
    script = (
        "import sys, json; from pathlib import Path\n"
        "from stella_build.rules.formats.tuf import TufKeys, build_tuf_repo\n"
        "keys = TufKeys.from_files(json.loads(sys.argv[1]))\n"
        "t = {k: (Path(v) if k == 'export.json' else bytes.fromhex(v)) for k, v in json.loads(sys.argv[2]).items()}\n"
        f"build_tuf_repo(Path(sys.argv[3]), t, keys, {EPOCH})\n"
    )
    tg = {k: (str(v) if isinstance(v, Path) else v.hex()) for k, v in targets.items()}
    env = {**os.environ, "TZ": "Asia/Tokyo", "PYTHONHASHSEED": "12345", "LC_ALL": "C"}
    subprocess.run([sys.executable, "-c", script, json.dumps({k: str(v) for k, v in keyfiles.items()}),
                    json.dumps(tg), str(tmp_path / "there")], check=True, env=env, cwd=tmp_path)
    for name, data in here.files.items():
        assert (tmp_path / "there" / name).read_bytes() == data


def test_signer_for_cosign_style_key_object(tmp_path, targets):
    """A key object loaded elsewhere (e.g. the cosign key) signs TUF metadata deterministically."""
    from stella_build.rules.formats.tuf import signer_for_key

    key = ec.generate_private_key(ec.SECP256R1())
    a = build_tuf_repo(tmp_path / "a", targets, TufKeys.single(signer_for_key(key)), EPOCH)
    b = build_tuf_repo(tmp_path / "b", targets, TufKeys.single(signer_for_key(key)), EPOCH)
    assert a.files == b.files
    with pytest.raises(TufRepoError, match="not supported"):
        signer_for_key(object())
