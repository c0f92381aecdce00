"""Unit tests for rules/encryption.py: documented on-disk format, AAD binding, recipients, tamper detection."""
from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pyrage
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from stella_build.rules.formats.encryption import (
    DecryptionError,
    EncryptionError,
    EncryptionRecord,
    decrypt_tree,
    encrypt_tree,
)

RUN = "run-2025-01-01"
FILES = {
    "data/raw/advisories/osv.jsonl.zst": b"osv records " * 1000,
    "data/normalized/vex/a.jsonl.zst": b"",
    "data/policy/snapshot.json": b'{"policy":1}',
}


def make_tree(root: Path) -> Path:
    for rel, data in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "manifest.json").write_bytes(b"{}")  # outside data/: never encrypted
    return root


def new_identity(path: Path):
    ident = pyrage.x25519.Identity.generate()
    path.write_text(f"# created: test\n# public key: {ident.to_public()}\n{ident}\n")
    return ident


@pytest.fixture
def ids(tmp_path):
    return [new_identity(tmp_path / f"id{n}.txt") for n in range(3)]


def test_round_trip_in_place(tmp_path, ids):
    root = make_tree(tmp_path / "mirror")
    rec = encrypt_tree(root, run_id=RUN, recipients=[str(ids[0].to_public()), str(ids[1].to_public())])
    assert sorted(f.path for f in rec.files) == sorted(FILES)
    for rel in FILES:
        assert not (root / rel).exists() and (root / (rel + ".enc")).is_file()
    assert (root / "manifest.json").read_bytes() == b"{}"
    record_json = json.loads(json.dumps(rec.to_json()))
    for ident_file in ("id0.txt", "id1.txt"):
        work = tmp_path / ident_file.replace(".txt", "")
        shutil.copytree(root, work)
        assert sorted(decrypt_tree(work, record_json, tmp_path / ident_file)) == sorted(FILES)
        for rel, data in FILES.items():
            assert (work / rel).read_bytes() == data
            assert not (work / (rel + ".enc")).exists()


def test_out_of_tree_leaves_source(tmp_path, ids):
    root = make_tree(tmp_path / "mirror")
    out = tmp_path / "enc"
    rec = encrypt_tree(root, run_id=RUN, recipients=[str(ids[0].to_public())], out_root=out)
    assert all((root / rel).read_bytes() == data for rel, data in FILES.items())
    plain = tmp_path / "plain"
    decrypt_tree(out, rec, tmp_path / "id0.txt", out_root=plain)
    assert all((plain / rel).read_bytes() == data for rel, data in FILES.items())


def test_documented_format_nonce_ct_tag_and_aad(tmp_path, ids):
    """Decode one file by hand from the documented format: nonce || ct || tag, AAD runId:path."""
    root = make_tree(tmp_path / "mirror")
    rec = encrypt_tree(root, run_id=RUN, recipients=[str(ids[0].to_public())])
    dek = pyrage.decrypt(base64.b64decode(rec.recipients[0].wrapped_key), [ids[0]])
    assert len(dek) == 32
    rel = "data/raw/advisories/osv.jsonl.zst"
    blob = (root / (rel + ".enc")).read_bytes()
    assert len(blob) == 12 + len(FILES[rel]) + 16
    assert AESGCM(dek).decrypt(blob[:12], blob[12:], f"{RUN}:{rel}".encode()) == FILES[rel]
    with pytest.raises(Exception):
        AESGCM(dek).decrypt(blob[:12], blob[12:], f"other-run:{rel}".encode())


def test_record_shape_sorted_recipients(tmp_path, ids):
    root = make_tree(tmp_path / "mirror")
    recips = [str(i.to_public()) for i in ids]
    rec = encrypt_tree(root, run_id=RUN, recipients=list(reversed(recips)) + [recips[0]],
                       key_ids={recips[1]: "ops-key-1"})
    doc = rec.to_json()
    assert [r["recipient"] for r in doc["recipients"]] == sorted(recips)  # deduplicated + sorted
    assert {r["recipient"]: r.get("keyId") for r in doc["recipients"]}[recips[1]] == "ops-key-1"
    assert doc["mode"] == "age" and doc["cipher"] == "AES-256-GCM"
    assert doc["aadFormat"] == "{runId}:{relativePath}" and doc["runId"] == RUN
    assert [f["path"] for f in doc["files"]] == sorted(FILES)
    assert EncryptionRecord.from_json(doc) == rec


def test_nonces_and_ciphertexts_are_fresh_per_run(tmp_path, ids):
    a = make_tree(tmp_path / "a")
    b = make_tree(tmp_path / "b")
    r = [str(ids[0].to_public())]
    encrypt_tree(a, run_id=RUN, recipients=r)
    encrypt_tree(b, run_id=RUN, recipients=r)
    rel = "data/policy/snapshot.json.enc"
    assert (a / rel).read_bytes()[:12] != (b / rel).read_bytes()[:12]


def test_wrong_identity_raises_decryption_error(tmp_path, ids):
    root = make_tree(tmp_path / "mirror")
    rec = encrypt_tree(root, run_id=RUN, recipients=[str(ids[0].to_public())])
    with pytest.raises(DecryptionError, match=r"id2\.txt matches none of the 1 recipients"):
        decrypt_tree(root, rec, tmp_path / "id2.txt")
    assert all((root / (rel + ".enc")).is_file() for rel in FILES)  # nothing touched


@pytest.mark.parametrize("attack", ["flip", "truncate", "rename", "run_id"])
def test_tamper_is_detected_all_or_nothing(tmp_path, ids, attack):
    root = make_tree(tmp_path / "mirror")
    rec = encrypt_tree(root, run_id=RUN, recipients=[str(ids[0].to_public())])
    doc = rec.to_json()
    a = root / "data/policy/snapshot.json.enc"
    b = root / "data/raw/advisories/osv.jsonl.zst.enc"
    if attack == "flip":
        data = bytearray(a.read_bytes())
        data[20] ^= 1
        a.write_bytes(bytes(data))
    elif attack == "truncate":
        a.write_bytes(a.read_bytes()[:-1])
    elif attack == "rename":  # swap two files: AAD binds each to its path
        tmp = a.read_bytes()
        a.write_bytes(b.read_bytes())
        b.write_bytes(tmp)
    else:
        doc["runId"] = "another-run"
    with pytest.raises(DecryptionError, match="authentication failed"):
        decrypt_tree(root, doc, tmp_path / "id0.txt")
    assert not any((root / rel).exists() for rel in FILES)  # no partial plaintext left behind


def test_bad_recipients_and_inputs(tmp_path, ids):
    root = make_tree(tmp_path / "mirror")
    with pytest.raises(EncryptionError, match="not an age X25519 recipient"):
        encrypt_tree(root, run_id=RUN, recipients=["ssh-ed25519 AAAA"])
    with pytest.raises(EncryptionError, match="KMS wrapping is not supported"):
        encrypt_tree(root, run_id=RUN, recipients=["kms://export/envelope"])
    with pytest.raises(EncryptionError, match="at least one recipient"):
        encrypt_tree(root, run_id=RUN, recipients=[])
    with pytest.raises(EncryptionError, match="run id"):
        encrypt_tree(root, run_id="a:b", recipients=[str(ids[0].to_public())])
    with pytest.raises(EncryptionError, match="no data/ directory"):
        encrypt_tree(tmp_path / "empty", run_id=RUN, recipients=[str(ids[0].to_public())])
    assert all((root / rel).is_file() for rel in FILES)  # failed calls changed nothing
    (root / "data/stale.json.enc").write_bytes(b"x" * 40)
    with pytest.raises(EncryptionError, match="already holds encrypted files"):
        encrypt_tree(root, run_id=RUN, recipients=[str(ids[0].to_public())])
    (root / "data/stale.json.enc").unlink()
    (tmp_path / "bad.txt").write_text("AGE-SECRET-KEY-1NOTVALID\n")
    rec = encrypt_tree(root, run_id=RUN, recipients=[str(ids[0].to_public())])
    with pytest.raises(DecryptionError, match=r"bad\.txt:1: not an age X25519 identity"):
        decrypt_tree(root, rec, tmp_path / "bad.txt")
    with pytest.raises(DecryptionError, match="cannot read age identity"):
        decrypt_tree(root, rec, tmp_path / "missing.txt")
    (root / "data/policy/snapshot.json.enc").unlink()
    with pytest.raises(DecryptionError, match="is missing"):
        decrypt_tree(root, rec, tmp_path / "id0.txt")
