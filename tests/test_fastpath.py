"""The no-op fast path answers only when nothing the build depends on changed."""
import json
import time

from tests.conftest import run_cli


def _noop_memo_ready(ws, cache):
    run_cli(["-q", "//profiles:json-raw"], cwd=ws, cache=cache, check=True)
    time.sleep(2.1)  # files younger than 2 s are never trusted by mtime (racy timestamps)
    run_cli(["-q", "//profiles:json-raw"], cwd=ws, cache=cache, check=True)  # records the memo
    assert list((cache / "noop-memo").glob("*.json"))


def _served_from_memo(ws, cache, env=None) -> bool:
    res = run_cli(["--output", "json", "//profiles:json-raw"], cwd=ws, cache=cache, env=env)
    return res.code == 0 and res.json().get("noop_memo") is True


def test_fast_path_serves_a_true_noop_and_notices_every_kind_of_change(sample_ws, tmp_path):
    cache = tmp_path / "c"
    _noop_memo_ready(sample_ws, cache)
    fast = run_cli(["//profiles:json-raw"], cwd=sample_ws, cache=cache, check=True)
    assert "stella-out/profiles/json-raw/bundle.tar.gz" in fast.stdout and "0 executed" in fast.stdout
    assert _served_from_memo(sample_ws, cache)

    # an edited advisory: a real build runs (and executes)
    adv = sorted((sample_ws / "profiles/evidence/osv").glob("*.json"))[0]
    adv.write_text(adv.read_text().replace('"summary": "', '"summary": "Edited: ', 1))
    res = run_cli(["--output", "json", "//profiles:json-raw"], cwd=sample_ws, cache=cache, check=True)
    assert res.json()["actions"]["executed"] >= 1

    # a new file matching a glob
    _noop_memo_ready(sample_ws, cache)
    (sample_ws / "profiles/evidence/osv/NEW-1.json").write_text(json.dumps(
        {"id": "NEW-1", "modified": "2025-01-01T00:00:00Z"}))
    res = run_cli(["--output", "json", "//profiles:json-raw"], cwd=sample_ws, cache=cache, check=True)
    assert res.json()["actions"]["executed"] >= 1

    # a deleted output file is materialized again
    _noop_memo_ready(sample_ws, cache)
    out = sample_ws / "stella-out/profiles/json-raw/bundle.tar.gz"
    out.unlink()
    run_cli(["-q", "//profiles:json-raw"], cwd=sample_ws, cache=cache, check=True)
    assert out.is_file()

    # an Exportfile edit
    _noop_memo_ready(sample_ws, cache)
    ef = sample_ws / "profiles/Exportfile"
    ef.write_text(ef.read_text().replace("source_date_epoch = 1735689600", "source_date_epoch = 1735689601"))
    res = run_cli(["--output", "json", "//profiles:json-raw"], cwd=sample_ws, cache=cache, check=True)
    assert res.json()["actions"]["executed"] >= 1


def test_environment_and_code_that_shape_the_build_are_part_of_the_memo(sample_ws, tmp_path):
    cache = tmp_path / "c"
    _noop_memo_ready(sample_ws, cache)
    assert _served_from_memo(sample_ws, cache)
    assert not _served_from_memo(sample_ws, cache, env={"SOURCE_DATE_EPOCH": "1"})
    assert not _served_from_memo(sample_ws, cache, env={"STELLA_SIGN": "keyless"})
    run_cli(["cache", "clean"], cwd=sample_ws, cache=cache, check=True)
    assert not _served_from_memo(sample_ws, cache)  # the memo lives in the cache
