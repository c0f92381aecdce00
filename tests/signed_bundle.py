"""Helpers for tests of signed builds: a throwaway key pair and a workspace with a signed target.

Keys are generated per test session in a temporary directory; none is ever committed.
"""
from __future__ import annotations

from pathlib import Path

from stella_build.rules.formats import keys as signing_keys

from tests.conftest import make_workspace, run_cli

PASSWORD = "stella-test-pw-7f3a9c"  # unique, so a test can grep the cache for leaks
SIGNED_TARGET = "signed"
SIGNED_EXPORTFILE = (f'\n[targets.{SIGNED_TARGET}]\nrule = "json_raw"\ndeps = [":osv-sample"]\n'
                     'sign = { key = "keys/cosign.key" }\n')


def make_keys(directory: Path, password: str = PASSWORD) -> tuple[Path, Path]:
    return signing_keys.write_keypair(directory, password.encode())


def signed_workspace(root: Path, key_dir: Path) -> Path:
    """A sample workspace whose //profiles:signed target signs with key_dir/cosign.key."""
    ws = make_workspace(root)
    (ws / "keys").mkdir()
    for name in ("cosign.key", "cosign.pub"):
        (ws / "keys" / name).write_bytes((key_dir / name).read_bytes())
    ef = ws / "profiles" / "Exportfile"
    ef.write_text(ef.read_text() + SIGNED_EXPORTFILE)
    return ws


def build_signed(ws: Path, cache: Path, *, password: str = PASSWORD, extra_env: dict | None = None):
    env = {"COSIGN_PASSWORD": password, **(extra_env or {})}
    return run_cli(["-q", f"//profiles:{SIGNED_TARGET}"], cwd=ws, cache=cache, env=env, check=True)


def signed_out(ws: Path) -> Path:
    return ws / "stella-out" / "profiles" / SIGNED_TARGET


# A *public* test key, derived from a fixed phrase so signed outputs can be locked by golden digests
# (RFC 6979 signatures are deterministic). Anyone can derive it: it proves reproducibility, nothing
# else, and must never sign anything real. No key file is committed; it is written at test time.
PUBLIC_TEST_KEY_PHRASE = b"stella-build public golden test key - never trust signatures made with it"


def write_public_test_keys(directory: Path, password: str = PASSWORD) -> tuple[Path, Path]:
    import hashlib

    from cryptography.hazmat.primitives.asymmetric import ec

    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256 group order
    scalar = int.from_bytes(hashlib.sha256(PUBLIC_TEST_KEY_PHRASE).digest(), "big") % (order - 1) + 1
    key = ec.derive_private_key(scalar, ec.SECP256R1())
    directory.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = directory / "cosign.key", directory / "cosign.pub"
    key_path.write_bytes(signing_keys.encode_private_key(key, password.encode()))
    pub_path.write_bytes(signing_keys.encode_public_key(key.public_key()))
    return key_path, pub_path
