"""The layers' import contract (docs/architecture.md), enforced with import-linter.

The package is assembled in a temporary directory as a wheel would lay it out (pyproject's
`package-dir`: engine/ → stella_build/engine, rules/ → stella_build/rules), because import-graph
tools follow directories and the editable install maps packages instead. `lint-imports` then checks
the contracts of `[tool.importlinter]` in pyproject.toml: engine ↛ rules/product, rules ↛ product,
rules → engine only through rule_api, formats/evidence ↛ rule modules, no import circles.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import assemble_package, package_dirs

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(tree: Path) -> subprocess.CompletedProcess:
    assert LINT_IMPORTS.is_file(), f"{LINT_IMPORTS} missing: install the test extra (import-linter)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tree)  # ahead of the editable install's finder
    return subprocess.run([str(LINT_IMPORTS), str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=120)


def test_package_list_matches_the_directories_on_disk():
    """pyproject's hand-kept `packages` is exactly the set of directories holding .py files, so a
    new subpackage cannot silently drop out of the wheel."""
    listed = package_dirs()
    on_disk = set()
    for top, base in SETUPTOOLS["package-dir"].items():
        for init in (ROOT / base).rglob("__init__.py"):
            if "__pycache__" in init.parts or ".egg-info" in str(init):
                continue
            rel = init.parent.relative_to(ROOT / base)
            on_disk.add(".".join([top, *rel.parts]))
            py_dirs = {p.parent for p in (ROOT / base).rglob("*.py") if "__pycache__" not in p.parts}
            for d in py_dirs:
                assert (d / "__init__.py").is_file(), f"{d} holds modules but no __init__.py"
    assert set(listed) == on_disk
    for name, directory in listed.items():
        assert (directory / "__init__.py").is_file(), f"{name}: {directory} is not a package"


def test_import_contracts_hold(tmp_path):
    result = _lint(assemble_package(tmp_path / "pkg"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.lower().replace("0 broken", "")


@pytest.mark.parametrize("module, source, contract", [
    ("engine/_probe.py", "from stella_build.rules import providers\n",
     "The engine imports no rule and no product code"),
    ("rules/_probe.py", "from stella_build.engine import scheduler\n",
     "Rules reach the engine only through engine.rule_api"),
    ("rules/formats/_probe.py", "from stella_build.rules import json_raw\n",
     "Format and evidence libraries import no rule module"),
    ("rules/_probe.py", "import stella_build.delivery.keyless\n", "Rules import no product code"),
])
def test_a_forbidden_import_fails_the_contract(tmp_path, module, source, contract):
    """The check is not vacuous: one added forbidden import breaks the named contract."""
    tree = assemble_package(tmp_path / "pkg")
    (tree / "stella_build" / module).write_text(source)
    result = _lint(tree)
    assert result.returncode != 0
    assert contract in result.stdout and "BROKEN" in result.stdout


def test_an_import_circle_fails_the_contract(tmp_path):
    tree = assemble_package(tmp_path / "pkg")
    # cli.options is imported by cli.main; make it import main back
    options = tree / "stella_build" / "cli" / "options.py"
    options.write_text(options.read_text() + "\nfrom stella_build.cli import main  # noqa\n")
    result = _lint(tree)
    assert result.returncode != 0
    assert "No import circles" in result.stdout
