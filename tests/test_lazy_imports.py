"""The fixed cost of a build: analysing a workspace whose actions are all cached imports no format
library that only action functions use (issue 15, docs/engine.md "Performance")."""
import json
import os
import subprocess
import sys

from tests.conftest import run_cli

# Libraries and modules only action functions (or a miss) need. Each was imported by a no-op
# build of //profiles/... at some point; now none may be.
HEAVY = [
    # the worker pool: only when an action must run
    "multiprocessing", "concurrent.futures.process", "stella_build.engine.sandbox",
    "stella_build.engine.executors.local",
    # archive and format libraries used inside actions
    "tarfile", "jinja2", "markdown_it", "cryptography", "nacl", "pyrage", "tuf", "securesystemslib",
    "sigstore", "yaml", "semver", "packaging", "univers", "cvss", "packageurl", "debian",
    # our own format modules behind action functions
    "stella_build.rules.formats.trivy.schema", "stella_build.rules.formats.trivy.packaging",
    "stella_build.rules.formats.oci", "stella_build.rules.formats.signing",
    "stella_build.rules.evidence.model", "stella_build.rules.evidence.versions",
]

_PROBE = """
import json, sys
cache, heavy = sys.argv[1], json.loads(sys.argv[2])
sys.argv = ["stella-build", "--cache-dir", cache, "--output", "json", "//profiles/..."]
from stella_build.cli.entry import main
code = main()
print(json.dumps({"code": code, "heavy": [m for m in heavy if m in sys.modules]}))
"""


def _env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("STELLA_") and k not in ("SOURCE_DATE_EPOCH", "COSIGN_PASSWORD")}
    return env


def test_cached_build_of_the_profiles_imports_no_action_only_library(sample_ws, tmp_path):
    cache = tmp_path / "cache"
    run_cli(["-q", "//profiles/..."], cwd=sample_ws, cache=cache, check=True)  # fills the cache
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(cache), json.dumps(HEAVY)], cwd=sample_ws,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary_text, _, probe = proc.stdout.strip().rpartition("\n")
    summary, result = json.loads(summary_text), json.loads(probe)
    assert result["code"] == 0
    # a real analysis and key computation, not the no-op memo: every action looked up, all cached
    assert "noop_memo" not in summary
    assert summary["actions"]["executed"] == 0 and summary["actions"]["cached"] == summary["actions"]["total"] > 40
    assert result["heavy"] == []


def test_the_probe_sees_what_an_executing_build_imports(sample_ws, tmp_path):
    """The check above could pass vacuously if the probe saw no modules at all: a build that must
    execute actions does import the worker pool."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path / "cache"), json.dumps(HEAVY)],
                          cwd=sample_ws, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().rpartition("\n")[2])
    assert result["code"] == 0
    assert {"multiprocessing", "stella_build.engine.executors.local"} <= set(result["heavy"])
