"""Real Trivy (offline) scans with a trivy.db rebuilt from a patch (`stella-build trivy-db patch`).

v1 = the sample profiles' trivy-db; v2 adds one advisory for `requests`. The patch of v2 against
v1 is applied into a Trivy cache's db/ in place; Trivy must then report exactly what it reports
with the fully built v2 DB, including the new advisory it did not report with v1.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import make_workspace, run_cli
from tests.interop.trivy_env import run_trivy, trivy_cache, trivy_findings

pytestmark = pytest.mark.interop

NEW_ID = "STELLA-SAMPLE-2026-0099"
NEW_ADVISORY = {
    "schema_version": "1.6.0", "id": NEW_ID, "modified": "2025-01-01T00:00:00Z",
    "published": "2025-01-01T00:00:00Z", "summary": "requests: advisory added after the base DB",
    "details": "Synthetic advisory for the patch interop test.",
    "affected": [{"package": {"ecosystem": "PyPI", "name": "requests"},
                  "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "2.99.0"}]}]}],
}


def test_trivy_scans_with_the_patched_db(tool, tmp_path):
    trivy = tool("trivy")
    ws = make_workspace(tmp_path / "ws")
    cache = tmp_path / "stella-cache"
    run_cli(["-q", "build", "//profiles:trivy-db"], cwd=ws, cache=cache, check=True)
    out = ws / "stella-out" / "profiles" / "trivy-db"
    v1 = trivy_cache(out, tmp_path / "trivy-v1")
    base_sha = hashlib.sha256((v1 / "db" / "trivy.db").read_bytes()).hexdigest()

    (ws / "profiles" / "evidence" / "osv" / f"{NEW_ID}-PyPI-requests.json").write_text(json.dumps(NEW_ADVISORY))
    with open(ws / "profiles" / "Exportfile", "a") as f:
        f.write(f'\n[targets.trivy-db-patch]\nrule = "trivy_db_patch"\ndeps = [":trivy-db"]\n'
                f'base = {{ db = "{v1 / "db" / "trivy.db"}", sha256 = "{base_sha}" }}\n')
    run_cli(["-q", "build", "//profiles:trivy-db", "//profiles:trivy-db-patch"], cwd=ws, cache=cache, check=True)
    full = trivy_cache(out, tmp_path / "trivy-full")

    patched = tmp_path / "trivy-patched"
    shutil.copytree(v1, patched)
    r = run_cli(["trivy-db", "patch", str(patched / "db"),
                 str(ws / "stella-out" / "profiles" / "trivy-db-patch"), "-o", str(patched / "db")], cwd=ws)
    assert r.code == 0, r.stderr
    assert (patched / "db" / "trivy.db").read_bytes() == (full / "db" / "trivy.db").read_bytes()

    project = tmp_path / "project"
    project.mkdir()
    (project / "requirements.txt").write_text("requests==2.19.0\n")
    before = trivy_findings(run_trivy(trivy, v1, project))
    after = trivy_findings(run_trivy(trivy, patched, project))
    assert after == trivy_findings(run_trivy(trivy, full, project))
    assert ("requirements.txt", NEW_ID, "requests", "2.19.0") in after
    assert ("requirements.txt", NEW_ID, "requests", "2.19.0") not in before
    assert before < after  # v1's findings remain
