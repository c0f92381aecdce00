#!/usr/bin/env python3
"""Bootstrap a virtual environment from requirements.lock and run stella-build or the tests.

    python3 tools/dev.py build [LABEL...]   build (default: //profiles/...) on the sample evidence
    python3 tools/dev.py test [PYTEST ARGS] run the whole test suite

Needs only python3 >= 3.11 and git. The venv lives in .venv/ and is refreshed when
requirements.lock or pyproject.toml change.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("STELLA_VENV", ROOT / ".venv"))
BIN = VENV / "bin"


def _fingerprint() -> str:
    h = hashlib.sha256()
    for name in ("requirements.lock", "pyproject.toml"):
        h.update((ROOT / name).read_bytes())
    h.update(sys.version.encode())
    return h.hexdigest()


def bootstrap() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"stella-build needs Python 3.11 or newer (this is {sys.version.split()[0]})")
    stamp = VENV / ".stella-bootstrap"
    fingerprint = _fingerprint()
    if stamp.is_file() and stamp.read_text() == fingerprint and (BIN / "stella-build").exists():
        return
    print(f"bootstrapping {VENV} from requirements.lock ...", file=sys.stderr)
    if not (BIN / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run(pip + ["-c", str(ROOT / "requirements.lock"), "-e", f"{ROOT}[test]"], check=True)
    stamp.write_text(fingerprint)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("build", "test"):
        print(__doc__.strip())
        return 2
    bootstrap()
    # Bytecode caches outside the checkout (none in engine/, rules/, stella_build/): every CLI
    # process and spawned worker of a test run then loads compiled modules instead of compiling
    # the project's ~150 modules again (~0.08 s CPU a process, thousands of processes a run).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(VENV / "pycache")
    if argv[0] == "build":
        args = argv[1:] or ["//profiles/..."]
        return subprocess.call([str(BIN / "stella-build"), *args], cwd=ROOT, env=env)
    args = argv[1:]
    if not any(a == "-n" or a.startswith(("-n", "--numprocesses")) for a in args):
        # one worker per core (pytest-xdist), a test file per worker: most tests drive the real CLI
        # in subprocesses, so two files at once keep both cores busy
        args = ["-n", str(max(1, min(os.cpu_count() or 1, 4))), "--dist", "loadfile", *args]
    return subprocess.call([str(BIN / "python"), "-m", "pytest", *args], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
