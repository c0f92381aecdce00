"""json:raw over the full shared OSV corpora (~6,950 advisories) is byte-identical however it is
built, and incremental: editing one advisory re-runs only that advisory's shard actions."""
import json
import shutil

import pytest

from tests.conftest import REPO, SHARED_DATA, make_workspace, output_digests, require_shared_data, run_cli

pytestmark = pytest.mark.slow
GOLDEN = json.loads((REPO / "golden" / "corpora.json").read_text())["//corpora:json-raw"]
TARGET = "//corpora:json-raw"


def _build(ws, cache, *args, env=None, shell_umask=None):
    require_shared_data()
    return run_cli(["-q", "--output", "json", *args, TARGET], cwd=ws, cache=cache, env=env, check=True).json()


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """One cold -j2 build shared by the tests that only need a built workspace."""
    root = tmp_path_factory.mktemp("corpora")
    ws = make_workspace(root / "ws", packages=("corpora",), shared=True)
    summary = _build(ws, root / "cache", "-j2")
    return ws, root / "cache", summary


def test_cold_build_matches_golden(baseline):
    ws, _, summary = baseline
    assert summary["actions"]["executed"] == summary["actions"]["total"] == 129
    assert output_digests(ws, "corpora", "json-raw") == GOLDEN
    manifest = json.loads((ws / "stella-out/corpora/json-raw/manifests/export.json").read_text())
    assert manifest["counts"]["records"] + manifest["counts"]["withdrawnExcluded"] == 2661 + 4291


def test_warm_cache_gives_same_bytes(baseline, tmp_path):
    ws, cache, _ = baseline
    other = make_workspace(tmp_path / "warm", packages=("corpora",), shared=True)
    summary = _build(other, cache)
    assert summary["actions"]["executed"] == 0
    assert output_digests(other, "corpora", "json-raw") == GOLDEN


def test_build_check_reexecutes_everything_identically(baseline):
    ws, cache, _ = baseline
    summary = _build(ws, cache, "build", "--check") if False else run_cli(
        ["-q", "--output", "json", "build", "--check", TARGET], cwd=ws, cache=cache, check=True).json()
    assert summary["ok"] and summary["check"]["differences"] == []


def test_other_jobs_path_environment_and_a_copy_of_the_data_give_same_bytes_then_one_edit_reruns_one_shard(tmp_path):
    """One cold build that differs from the baseline in every way that must not matter: -j1
    (the baseline is -j2), a private copy of the corpora at another path, a deeper workspace
    path, TZ, locale, umask, hash seed and HOME. Then one advisory of the copy is edited: only
    its shard actions re-run. (One cold build for all of these keeps the suite's time down.)"""
    require_shared_data()
    import os
    data = tmp_path / "data"
    shutil.copytree(SHARED_DATA / "osv-pypi", data / "osv-pypi")
    shutil.copytree(SHARED_DATA / "osv-go", data / "osv-go")
    ws = make_workspace(tmp_path / "some" / "deeper" / "place", packages=("corpora",))
    (ws / "stella-workspace.toml").write_text(f'[workspace]\nexternal = {{ shared-data = "{data}" }}\n')
    cache = tmp_path / "cache"
    env = {"TZ": "Pacific/Kiritimati", "LC_ALL": "POSIX", "LANG": "de_DE.UTF-8",
           "PYTHONHASHSEED": "4242", "HOME": str(tmp_path)}
    old = os.umask(0o077)
    try:
        first = _build(ws, cache, "-j1", env=env)
    finally:
        os.umask(old)
    assert first["actions"]["executed"] == first["actions"]["total"] == 129
    assert output_digests(ws, "corpora", "json-raw") == GOLDEN
    victim = sorted((data / "osv-go").glob("GO-2023-*.json"))[5]
    doc = json.loads(victim.read_text())
    doc["summary"] = (doc.get("summary") or "") + " (edited)"
    victim.write_text(json.dumps(doc, indent=2))
    second = _build(ws, cache)
    # its OsvShard, the RawShard reading that shard, and the Bundle assembly: nothing else
    assert second["actions"]["executed"] == 3, second["actions"]
    assert second["actions"]["total"] == first["actions"]["total"]
    explain = run_cli(["explain", TARGET], cwd=ws, cache=cache, check=True).stdout
    assert f"input changed: @shared-data/osv-go/{victim.name}" in explain, explain
    changed = [k for k, v in output_digests(ws, "corpora", "json-raw").items() if GOLDEN.get(k) != v]
    assert any(k.startswith("data/raw/advisories/Go/") for k in changed)
    assert not any(k.startswith("data/raw/advisories/PyPI/") for k in changed)
