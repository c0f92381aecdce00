"""Signed default targets are byte-identical to golden/signed.json, signatures included.

The key is the *public* test key of tests/signed_bundle.py (derived from a fixed phrase, written at
test time): with deterministic RFC 6979 signatures, every signature byte is reproducible."""
import json

from tests.conftest import REPO, make_workspace, output_digests, run_cli
from tests.signed_bundle import PASSWORD, write_public_test_keys
from tools.golden import DEFAULT_TARGETS

GOLDEN = json.loads((REPO / "golden" / "signed.json").read_text())


def test_signed_outputs_match_golden_and_verify(tmp_path):
    key, pub = write_public_test_keys(tmp_path / "keys")
    ws = make_workspace(tmp_path / "ws")
    run_cli(["-q", "build", *DEFAULT_TARGETS], cwd=ws, cache=tmp_path / "c", check=True,
            env={"STELLA_SIGNING_KEY": str(key), "COSIGN_PASSWORD": PASSWORD})
    for label in DEFAULT_TARGETS:
        pkg, name = label[2:].split(":")
        digests = output_digests(ws, pkg, name)
        assert digests == GOLDEN[label], label
        assert any(p.endswith(".sigstore.json") for p in digests), label  # signatures are locked too
        res = run_cli(["verify", str(ws / "stella-out" / pkg / name), "--key", str(pub)], cwd=tmp_path)
        assert res.code == 0, res.stdout + res.stderr
