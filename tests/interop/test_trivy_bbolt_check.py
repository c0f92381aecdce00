"""`bbolt check` (the real Go bbolt v1.5.0 CLI) on every trivy.db these tests build, and Go's
reading of a few values. (A >= 500k-key DB with overflow pages and inline buckets is checked by
tests/interop/test_bbolt_go.py, which exercises the same writer.)"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from stella_build.rules.formats.trivy.bbolt import BboltReader
from tests.conftest import make_workspace, run_cli
from tests.interop.trivy_env import corpora_trivy_db  # noqa: F401  (fixture)
from tests.test_trivy_db import COLLIDING_EXPORTFILE, colliding_workspace

pytestmark = pytest.mark.interop


def bbolt_check(bbolt: str, db: Path) -> None:
    proc = subprocess.run([bbolt, "check", str(db)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stdout + proc.stderr


def bbolt_get(bbolt: str, db: Path, *path: str) -> str:
    proc = subprocess.run([bbolt, "get", str(db), *path], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.rstrip("\n")


def test_bbolt_check_on_the_sample_profile_db(tool, tmp_path) -> None:
    bbolt = tool("bbolt")
    ws = make_workspace(tmp_path / "ws")
    run_cli(["-q", "//profiles:trivy-db"], cwd=ws, cache=tmp_path / "c", check=True)
    db = ws / "stella-out/profiles/trivy-db/trivy.db"
    bbolt_check(bbolt, db)
    ours = BboltReader(db).get((b"pip::stella-build sample advisories", b"werkzeug"), b"CVE-2019-14806")
    assert bbolt_get(bbolt, db, "pip::stella-build sample advisories", "werkzeug",
                     "CVE-2019-14806") == ours.decode()


def test_bbolt_check_on_the_corpora_db(tool, corpora_trivy_db) -> None:
    bbolt = tool("bbolt")
    db = corpora_trivy_db / "trivy.db"
    bbolt_check(bbolt, db)
    reader = BboltReader(db)
    assert reader.check() == []
    assert sum(1 for _ in reader.items((b"vulnerability",))) > 5_000


def test_bbolt_check_on_a_db_with_merged_collisions(tool, tmp_path) -> None:
    bbolt = tool("bbolt")
    ws = colliding_workspace(tmp_path / "ws", COLLIDING_EXPORTFILE)
    run_cli(["-q", "//merge:trivy-db"], cwd=ws, cache=tmp_path / "c", check=True)
    bbolt_check(bbolt, ws / "stella-out/merge/trivy-db/trivy.db")


def test_corpora_db_matches_golden(corpora_trivy_db) -> None:
    """The corpora DB (trivy.db, db.tar.gz, OCI manifest) is byte-identical to golden/corpora.json."""
    import json

    from tests.conftest import REPO, output_digests

    golden = json.loads((REPO / "golden" / "corpora.json").read_text())["//corpora:trivy-db"]
    ws = corpora_trivy_db.parents[2]
    assert output_digests(ws, "corpora", "trivy-db") == golden
