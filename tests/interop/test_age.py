"""Interop: our age-wrapped DEKs against the real `age` / `age-keygen` CLIs (Debian age 1.1)."""
from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from stella_build.rules.formats.encryption import DecryptionError, decrypt_tree, encrypt_tree
from .conftest import require_tool

pytestmark = pytest.mark.interop

RUN = "run-42"
FILES = {"data/raw/advisories/osv.jsonl.zst": b"advisories" * 500, "data/policy/snapshot.json": b"{}"}


def keygen(path: Path) -> str:
    """age-keygen an identity file; return its recipient (age1…)."""
    res = subprocess.run([require_tool("age-keygen"), "-o", str(path)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    pub = subprocess.run([require_tool("age-keygen"), "-y", str(path)], capture_output=True, text=True, timeout=30)
    assert pub.returncode == 0, pub.stderr
    return pub.stdout.strip()


def make_tree(root: Path) -> Path:
    for rel, data in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_age_cli_unwraps_our_dek_and_it_decrypts_the_documented_format(tmp_path):
    age = require_tool("age")
    recipient = keygen(tmp_path / "key.txt")
    root = make_tree(tmp_path / "mirror")
    rec = encrypt_tree(root, run_id=RUN, recipients=[recipient])
    (tmp_path / "dek.age").write_bytes(base64.b64decode(rec.recipients[0].wrapped_key))
    res = subprocess.run([age, "-d", "-i", str(tmp_path / "key.txt"), str(tmp_path / "dek.age")],
                         capture_output=True, timeout=30)
    assert res.returncode == 0, res.stderr
    dek = res.stdout
    assert len(dek) == 32
    for rel, data in FILES.items():
        blob = (root / (rel + ".enc")).read_bytes()
        assert AESGCM(dek).decrypt(blob[:12], blob[12:], f"{RUN}:{rel}".encode()) == data


def test_we_decrypt_with_an_age_keygen_identity(tmp_path):
    recipient = keygen(tmp_path / "key.txt")
    root = make_tree(tmp_path / "mirror")
    rec = encrypt_tree(root, run_id=RUN, recipients=[recipient])
    assert sorted(decrypt_tree(root, rec.to_json(), tmp_path / "key.txt")) == sorted(FILES)
    assert all((root / rel).read_bytes() == data for rel, data in FILES.items())


def test_dek_wrapped_by_age_cli_is_accepted_by_our_unwrap(tmp_path):
    """Reverse direction: a wrappedKey produced by `age -r` (not pyrage) unwraps in our code."""
    age = require_tool("age")
    recipient = keygen(tmp_path / "key.txt")
    root = make_tree(tmp_path / "mirror")
    rec = encrypt_tree(root, run_id=RUN, recipients=[recipient])
    ours = base64.b64decode(rec.recipients[0].wrapped_key)
    dek = subprocess.run([age, "-d", "-i", str(tmp_path / "key.txt")], input=ours, capture_output=True, timeout=30).stdout
    rewrapped = subprocess.run([age, "-r", recipient], input=dek, capture_output=True, timeout=30)
    assert rewrapped.returncode == 0, rewrapped.stderr
    doc = rec.to_json()
    doc["recipients"][0]["wrappedKey"] = base64.b64encode(rewrapped.stdout).decode()
    decrypt_tree(root, doc, tmp_path / "key.txt")
    assert all((root / rel).read_bytes() == data for rel, data in FILES.items())


def test_wrong_identity_is_a_decryption_error_for_us_and_for_age(tmp_path):
    age = require_tool("age")
    recipient = keygen(tmp_path / "right.txt")
    keygen(tmp_path / "wrong.txt")
    root = make_tree(tmp_path / "mirror")
    rec = encrypt_tree(root, run_id=RUN, recipients=[recipient])
    with pytest.raises(DecryptionError, match=r"wrong\.txt matches none of the 1 recipients"):
        decrypt_tree(root, rec, tmp_path / "wrong.txt")
    (tmp_path / "dek.age").write_bytes(base64.b64decode(rec.recipients[0].wrapped_key))
    res = subprocess.run([age, "-d", "-i", str(tmp_path / "wrong.txt"), str(tmp_path / "dek.age")],
                         capture_output=True, timeout=30)
    assert res.returncode != 0
