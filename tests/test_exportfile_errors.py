"""Bad Exportfiles give exit 2 and a message naming the file, line and key (design §6)."""
import json

import pytest

from stella_build.engine.exportfile import SCHEMA_FILE, key_lines, schema_text
from tests.conftest import REPO, run_cli


def _ws(tmp_path, exportfile: str):
    (tmp_path / "stella-workspace.toml").write_text("[workspace]\n")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "Exportfile").write_text(exportfile)
    (tmp_path / "p" / "adv").mkdir()
    (tmp_path / "p" / "adv" / "A-1.json").write_text('{"id": "A-1", "modified": "2024-01-01T00:00:00Z"}')
    return tmp_path


CASES = {
    "unknown key": ('[targets.a]\nrule = "osv_source"\nsrcs = ["adv/*.json"]\nshardz = 3\n',
                    4, "unknown key 'shardz'"),
    "unknown rule": ('[package]\n\n[targets.a]\nrule = "osv_sourse"\n', 4, "unknown rule 'osv_sourse'"),
    "bad label": ('[targets.a]\nrule = "osv_source"\nsrcs = ["adv/*.json"]\n\n[targets.b]\nrule = "json_raw"\ndeps = ["a"]\n',
                  7, "bad label 'a'"),
    "cycle": ('[targets.a]\nrule = "json_raw"\ndeps = [":b"]\n\n[targets.b]\nrule = "json_raw"\ndeps = [":a"]\n',
              None, "dependency cycle: //p:a -> //p:b -> //p:a"),
    "missing dependency": ('[targets.a]\nrule = "json_raw"\ndeps = [":nothere"]\n', 3, "no target 'nothere'"),
    "missing source file": ('[targets.a]\nrule = "osv_source"\nsrcs = ["adv/*.yaml"]\n', 3, "matched no files"),
    "invalid TOML": ('[targets.a]\nrule = "osv_source"\nsrcs = ["adv/*.json"\n', 3, "invalid TOML"),
    "wrong type": ('[targets.a]\nrule = "osv_source"\nsrcs = ["adv/*.json"]\nshards = "many"\n', 4, "shards"),
    "missing required key": ('[targets.a]\nrule = "osv_source"\n', 1, "missing required key 'srcs'"),
    "provider mismatch": ('[targets.a]\nrule = "json_raw"\ndeps = [":b"]\n[targets.b]\nrule = "json_raw"\ndeps = [":c"]\n'
                          '[targets.c]\nrule = "osv_source"\nsrcs = ["adv/*.json"]\n', 3, "provides none of AdvisorySet"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_exportfile_exit_2_with_file_and_line(tmp_path, case):
    text, line, needle = CASES[case]
    ws = _ws(tmp_path, text)
    res = run_cli(["//p:all"], cwd=ws, cache=tmp_path / "cache")
    assert res.code == 2, res.stderr
    assert "Traceback" not in res.stderr
    first = res.stderr.splitlines()[0]
    assert needle in first
    assert first.startswith("error: p/Exportfile" + (f":{line}" if line else ""))
    if case == "cycle":
        assert ":3:" in first or ":7:" in first  # the deps line of a target on the cycle
    # machine-readable form names the same file/line/field
    data = run_cli(["--output", "json", "//p:all"], cwd=ws, cache=tmp_path / "cache")
    assert data.code == 2
    err = data.json()["errors"][0]
    assert err["file"] == "p/Exportfile" and needle.split("'")[0] in err["message"]
    if line:
        assert err["line"] == line
    assert not (ws / "stella-out").exists()  # nothing half-written


def test_missing_package_is_exit_2(tmp_path):
    ws = _ws(tmp_path, '[targets.a]\nrule = "osv_source"\nsrcs = ["adv/*.json"]\n')
    res = run_cli(["//nope:a"], cwd=ws, cache=tmp_path / "cache")
    assert res.code == 2 and "package '//nope' has no Exportfile" in res.stderr


def test_key_lines_tracks_tables_and_dotted_keys():
    lines = key_lines('[package]\nsource_date_epoch = 1\n[targets.a]\nrule = "x"\nsource.name = "n"\n[[x]]\nk=1\n[[x]]\nk=2\n')
    assert lines[("package", "source_date_epoch")] == 2
    assert lines[("targets", "a", "rule")] == 4
    assert lines[("targets", "a", "source", "name")] == 5
    assert lines[("x", "1", "k")] == 9


def test_committed_schema_is_current():
    committed = (REPO / SCHEMA_FILE).read_text()
    assert committed == schema_text(), "run: python -m stella_build.engine.exportfile --write-schema"
    schema = json.loads(committed)
    assert set(schema["properties"]) == {"package", "targets"}
    assert schema["additionalProperties"] is False


def test_schema_rejects_what_the_loader_rejects():
    from stella_build.engine.exportfile import exportfile_model

    model = exportfile_model()
    with pytest.raises(Exception):
        model.model_validate({"targets": {"a": {"rule": "osv_source", "srcs": ["x"], "bogus": 1}}})
