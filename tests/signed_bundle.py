"""Helpers for tests of signed builds: a throwaway key pair and a workspace with a signed target.

Keys are generated per test session in a temporary directory; none is ever committed.
"""
from __future__ import annotations

from pathlib import Path

from stella_build.rules import signing_keys

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
