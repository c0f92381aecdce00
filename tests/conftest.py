"""Shared test helpers: temporary workspaces and running the real `stella-build` CLI."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()
CLI = str(Path(sys.executable).parent / "stella-build")


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        return json.loads(self.stdout)


def run_cli(args: list[str], *, cwd: Path, cache: Path | None = None, env: dict | None = None,
            check: bool = False, timeout: float = 600) -> Result:
    full_env = dict(os.environ)
    # tests are hermetic: a developer's signing key, remote cache or cache dir must not leak in
    for var in list(full_env):
        if var.startswith("STELLA_") or var in ("SOURCE_DATE_EPOCH", "COSIGN_PASSWORD"):
            del full_env[var]
    if env:
        full_env.update(env)
    argv = [CLI] + (["--cache-dir", str(cache)] if cache else []) + args
    proc = subprocess.run(argv, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    result = Result(proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return result


def make_workspace(root: Path, *, packages: tuple[str, ...] = ("profiles",), shared: bool = False) -> Path:
    """A workspace at `root` with copies of the repo's packages (and @shared-data when asked)."""
    root.mkdir(parents=True, exist_ok=True)
    external = f'external = {{ shared-data = "{SHARED_DATA}" }}\n' if shared else "external = {}\n"
    (root / "stella-workspace.toml").write_text("[workspace]\n" + external)
    for pkg in packages:
        shutil.copytree(REPO / pkg, root / pkg, ignore=shutil.ignore_patterns("stella-out"))
    return root


def package_dirs() -> dict[str, Path]:
    """Every package listed in pyproject → its source directory, following `package-dir` as
    setuptools does (engine/ → stella_build.engine, rules/ → stella_build.rules)."""
    import tomllib

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = setuptools["package-dir"]
    out = {}
    for name in setuptools["packages"]:
        base = max((k for k in mapping if name == k or name.startswith(k + ".")), key=len)
        rest = name[len(base):].lstrip(".")
        out[name] = REPO / mapping[base] / Path(*rest.split(".")) if rest else REPO / mapping[base]
    return out


def assemble_package(dest: Path) -> Path:
    """Copy the package's .py files to dest/stella_build/... as a wheel lays them out, for tools
    that follow directories (import-linter) and for runs of edited copies (PYTHONPATH=dest)."""
    import tomllib

    for name, directory in package_dirs().items():
        target = dest / Path(*name.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for src in directory.glob("*.py"):
            shutil.copyfile(src, target / src.name)
    # package data (templates, assets) as pyproject's [tool.setuptools.package-data] lists it
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = package_dirs()
    for name, globs in setuptools.get("package-data", {}).items():
        for pattern in globs:
            for src in dirs[name].glob(pattern):
                if src.is_file() and "__pycache__" not in src.parts:
                    target = dest / Path(*name.split(".")) / src.relative_to(dirs[name])
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, target)
    return dest


def output_digests(workspace: Path, package: str, target: str) -> dict[str, str]:
    """sha256 of every file in stella-out/<package>/<target>/."""
    import hashlib

    base = workspace / "stella-out" / package / target
    return {p.relative_to(base).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(base.rglob("*")) if p.is_file()}


@pytest.fixture
def sample_ws(tmp_path) -> Path:
    return make_workspace(tmp_path / "ws")


def require_shared_data() -> None:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared corpora missing at {SHARED_DATA}")
