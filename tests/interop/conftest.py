"""Shared fixtures for interop tests that drive real third-party clients.

A missing tool skips the test on a developer machine but FAILS it when CI=true: CI must never
go green because an interop tool was not installed.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def tools_dir() -> Path:
    base = os.environ.get("STELLA_TOOLS_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "stella-build-tools"
    )
    return Path(base)


def find_tool(name: str) -> str | None:
    candidate = tools_dir() / "bin" / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which(name)


def require_tool(name: str) -> str:
    """Path of an interop tool; fail under CI=true, skip elsewhere, when it is missing."""
    path = find_tool(name)
    if path:
        return path
    msg = (f"interop tool {name!r} not found in {tools_dir() / 'bin'} or PATH "
           "(run tools/interop/build-go-tools.sh or .ci/run)")
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)
    raise AssertionError("unreachable")


@pytest.fixture
def tool():
    """Usage: def test_x(tool): trivy = tool("trivy")"""
    return require_tool


@pytest.fixture(scope="module")
def verify_js():
    """Run sigstore-js (`@sigstore/verify`, installed by tools/interop/install-node-tools.sh) on a
    bundle: verify_js(bundle, cosign.pub, artifact) -> (exit code, the script's JSON line)."""
    import json
    import subprocess

    node = require_tool("node")
    modules = tools_dir() / "node" / "node_modules"
    if not (modules / "@sigstore" / "verify" / "package.json").is_file():
        msg = f"@sigstore/verify not installed in {modules} (run tools/interop/install-node-tools.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NODE_PATH": str(modules)}
    script = Path(__file__).parent / "js" / "verify_bundle.js"

    def run(bundle: Path, pub: Path, artifact: Path) -> tuple[int, dict]:
        proc = subprocess.run([node, str(script), str(bundle), str(pub), str(artifact)], env=env,
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert proc.stdout.strip(), f"verifier printed nothing; stderr:\n{proc.stderr}"
        return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])
    return run
