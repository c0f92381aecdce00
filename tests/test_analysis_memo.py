"""The analysis memo (engine/fastpath.py, engine/graph.py): a build whose Exportfiles, globbed
directories, code and libraries are unchanged reuses the analysed graph, imports neither pydantic
nor a rule module, and still builds exactly what a real analysis would."""
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import zstandard

from stella_build.engine import fastpath
from stella_build.engine.analysis import analyze
from stella_build.engine.graph import ActionSpec, BuildGraph, ConfiguredTarget, graph_from_json, graph_to_json
from stella_build.engine.labels import Label
from stella_build.engine.workspace import Workspace
from tests.conftest import run_cli

RULE_MODULES = ["stella_build.rules.sources", "stella_build.rules.json_raw", "stella_build.rules.trivy_db",
                "stella_build.rules.mirror_full", "stella_build.rules.devportal", "stella_build.rules.providers"]
ANALYSIS, EXPORTFILE = "stella_build.engine.analysis", "stella_build.engine.exportfile"

_PROBE = """
import json, sys
cache, args = sys.argv[1], sys.argv[2:]
sys.argv = ["stella-build", "--cache-dir", cache, "--output", "json", *args]
from stella_build.cli.entry import main
code = main()
print(json.dumps({"code": code, "modules": sorted(m for m in sys.modules if m == "pydantic"
                   or m in ("stella_build.engine.analysis", "stella_build.engine.exportfile")
                   or m.startswith("stella_build.rules."))}))
"""


def _probe(ws: Path, cache: Path, *args: str) -> tuple[dict, dict]:
    """(build summary, {"code", "modules"}) of one CLI build in a fresh interpreter."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("STELLA_") and k not in ("SOURCE_DATE_EPOCH", "COSIGN_PASSWORD")}
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(cache), *(args or ("//profiles/...",))],
                          cwd=ws, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary_text, _, probe = proc.stdout.strip().rpartition("\n")
    return json.loads(summary_text), json.loads(probe)


def _outputs(ws: Path) -> dict[str, str]:
    out = ws / "stella-out"
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and not p.name.endswith(".stella-state.json")}


def _memo_ready(ws: Path, cache: Path, *args: str) -> Path:
    args = args or ("//profiles/...",)
    run_cli(["-q", *args], cwd=ws, cache=cache, check=True)
    time.sleep(2.1)  # files younger than 2 s are never trusted by their mtime (racy timestamps)
    run_cli(["-q", *args], cwd=ws, cache=cache, check=True)  # records both memos
    memos = sorted((cache / fastpath.ANALYSIS_DIR).glob("*.json"), key=lambda m: m.stat().st_mtime_ns)
    assert memos
    return memos[-1]  # this command line's (one memo per command line)


def _plain(art):
    """An artifact with its path as the str the engine reads (`path_str`): analysis gives a Path
    or a str, the JSON form always a str; nothing downstream tells them apart."""
    return dataclasses.replace(art, path=art.path_str) if art.path is not None else art


def _plain_spec(spec):
    return dataclasses.replace(spec, inputs={k: _plain(v) for k, v in spec.inputs.items()})


def _plain_outputs(d):
    return dataclasses.replace(d, files={k: _plain(v) for k, v in d.files.items()},
                               trees={k: _plain(v) for k, v in d.trees.items()})


def test_the_graph_survives_its_json_form_exactly(sample_ws):
    graph = analyze(Workspace(sample_ws), ["//profiles/..."])
    back = graph_from_json(json.loads(json.dumps(graph_to_json(graph))))
    assert back.requested == graph.requested
    assert list(back.actions) == list(graph.actions) and len(back.actions) > 40
    for action_id, spec in graph.actions.items():
        assert back.actions[action_id] == _plain_spec(spec)  # every field: inputs, params (no tuple → list), ...
    for label, target in graph.targets.items():
        assert back.targets[label].default_outputs() == _plain_outputs(target.default_outputs())
        assert [a.id for a in back.targets[label].actions] == [a.id for a in target.actions]
        assert back.targets[label].deps == target.deps
    assert back.actions_for(back.requested) == [_plain_spec(a) for a in graph.actions_for(graph.requested)]


def test_a_memoized_build_imports_no_rule_and_builds_what_a_real_analysis_builds(sample_ws, tmp_path):
    cache = tmp_path / "c"
    _memo_ready(sample_ws, cache)
    shutil.rmtree(cache / fastpath.MEMO_DIR, ignore_errors=True)  # (kept only for warning-free builds)
    summary, probe = _probe(sample_ws, cache)
    assert probe["code"] == 0 and "noop_memo" not in summary
    assert summary["actions"]["cached"] == summary["actions"]["total"] > 40
    # the import closure digests name these packages (find_spec imports a parent package)
    assert probe["modules"] == [m for m in probe["modules"] if m.startswith(("stella_build.rules.evidence",
                                                                             "stella_build.rules.formats"))]
    assert not {"pydantic", ANALYSIS, EXPORTFILE, *RULE_MODULES} & set(probe["modules"])

    # an advisory edited in place (no directory changes): the memo still answers, the changed
    # actions run, and the outputs equal those of a real analysis in an empty cache
    adv = sorted((sample_ws / "profiles/evidence/osv").glob("*.json"))[0]
    adv.write_text(adv.read_text().replace('"summary": "', '"summary": "Edited in place: ', 1))
    summary, probe = _probe(sample_ws, cache)
    assert probe["code"] == 0 and summary["actions"]["executed"] >= 1
    # (running an action imports the sandbox, and with it pydantic; analysis is what must not run)
    assert ANALYSIS not in probe["modules"] and EXPORTFILE not in probe["modules"]
    memoized = _outputs(sample_ws)
    summary, probe = _probe(sample_ws, tmp_path / "fresh-cache")
    assert ANALYSIS in probe["modules"] and summary["actions"]["executed"] == summary["actions"]["total"]
    assert _outputs(sample_ws) == memoized


def test_a_change_the_analysis_depends_on_is_a_real_analysis(sample_ws, tmp_path):
    cache = tmp_path / "c"
    _memo_ready(sample_ws, cache)
    # a new file in a globbed directory: the graph must include it
    (sample_ws / "profiles/evidence/osv/NEW-2.json").write_text(json.dumps(
        {"id": "NEW-2", "modified": "2025-01-01T00:00:00Z"}))
    summary, probe = _probe(sample_ws, cache)
    assert ANALYSIS in probe["modules"] and summary["actions"]["executed"] >= 1

    # an Exportfile edit (a parameter the key depends on)
    ef = sample_ws / "profiles/Exportfile"
    ef.write_text(ef.read_text().replace("source_date_epoch = 1735689600", "source_date_epoch = 1735689602"))
    summary, probe = _probe(sample_ws, cache)
    assert ANALYSIS in probe["modules"] and summary["actions"]["executed"] >= 1


def test_a_damaged_memo_is_a_real_analysis_never_an_error(sample_ws, tmp_path):
    cache = tmp_path / "c"
    memo = _memo_ready(sample_ws, cache)
    good = json.loads(memo.read_text())
    def edited(**change):  # the first action of the graph with `change` applied
        actions = [dict(good["graph"]["actions"][0], **change), *good["graph"]["actions"][1:]]
        return json.dumps(dict(good, graph=dict(good["graph"], actions=actions))).encode()

    broken_graph = dict(good, graph=dict(good["graph"], actions=[{"id": "x"}]))
    for damaged in (b"\x00not json", b"[]", json.dumps({"paths": {}}).encode(),
                    json.dumps(dict(good, graph={"format": 99})).encode(), json.dumps(broken_graph).encode(),
                    edited(fn="os.system"), edited(fn="not a reference"), edited(outputs="xyz"),
                    edited(params=5), edited(libraries={"zstd": 1}), edited(inputs=[["a", [None, None]]]),
                    json.dumps(dict(good, graph=dict(good["graph"], requested=[]))).encode()):
        memo.write_bytes(damaged)
        shutil.rmtree(cache / fastpath.MEMO_DIR, ignore_errors=True)
        summary, probe = _probe(sample_ws, cache)
        assert probe["code"] == 0 and ANALYSIS in probe["modules"]
        assert summary["actions"]["cached"] == summary["actions"]["total"]


def test_a_memo_others_can_write_is_not_used(sample_ws, tmp_path):
    """The graph names the files actions read: a memo file group- or world-writable (a shared
    cache directory) is ignored, as one owned by another user would be."""
    cache = tmp_path / "c"
    memo = _memo_ready(sample_ws, cache)
    memo.chmod(0o666)
    shutil.rmtree(cache / fastpath.MEMO_DIR, ignore_errors=True)
    summary, probe = _probe(sample_ws, cache)
    assert ANALYSIS in probe["modules"] and summary["actions"]["cached"] == summary["actions"]["total"]
    memo.chmod(0o644)
    shutil.rmtree(cache / fastpath.MEMO_DIR, ignore_errors=True)
    summary, probe = _probe(sample_ws, cache)
    assert ANALYSIS not in probe["modules"]


def test_what_the_analysis_only_checks_for_is_part_of_the_memo(sample_ws, tmp_path):
    """mirror_delta asks whether optional base files exist (`is_file`, no open): one appearing
    later must be a real analysis. A `--base` under stella-out/ is an input too (the memos leave
    out the outputs they write there, not what analysis reads)."""
    cache = tmp_path / "c"
    _memo_ready(sample_ws, cache, "//profiles:mirror-delta")
    (sample_ws / "profiles/mirror-base/provenance.json").write_text('{"note": "an optional base file"}\n')
    summary, probe = _probe(sample_ws, cache, "//profiles:mirror-delta")
    assert probe["code"] == 0 and ANALYSIS in probe["modules"]

    base = sample_ws / "stella-out/oldbase"
    base.mkdir()
    export = json.loads((sample_ws / "profiles/mirror-base/export.json").read_text())
    (base / "export.json").write_text(json.dumps(export))
    _memo_ready(sample_ws, cache, "--base", str(base), "//profiles:mirror-delta")
    (base / "export.json").write_text(json.dumps(dict(export, exportId="exp-another-base")))
    summary, probe = _probe(sample_ws, cache, "--base", str(base), "//profiles:mirror-delta")
    assert probe["code"] == 0 and ANALYSIS in probe["modules"], summary.get("errors")


def test_a_stat_probe_records_what_is_there_not_when_it_changed(tmp_path):
    """`realpath` lstats every ancestor (/tmp, the repository root): their times change all the
    time and must not void the memo; that a probed path appears, vanishes or becomes a symlink
    must."""
    d, f = tmp_path / "d", tmp_path / "d" / "optional.json"
    d.mkdir()
    paths = {str(d) + fastpath.PROBE, str(f) + fastpath.PROBE}
    data = {"paths": fastpath._signatures(paths)}
    assert data["paths"] is not None and fastpath._still_valid(data, [])
    (d / "unrelated").write_text("x")  # the directory's mtime and ctime move
    assert fastpath._still_valid(data, [])
    f.write_text("{}")
    assert not fastpath._still_valid(data, [])
    data = {"paths": fastpath._signatures(paths)}
    f.unlink()
    f.symlink_to(d / "unrelated")
    assert not fastpath._still_valid(data, [])


def test_paths_beside_the_interpreter_prefix_and_home_count():
    """A workspace whose path merely starts with the venv's (`/x/venv` vs `/x/venv-ws`) is not
    left out as part of the interpreter; `~` in an Exportfile depends on HOME."""
    prefix = sys.prefix.rstrip("/")
    kept = fastpath._relevant({prefix + "-ws/profiles/Exportfile", prefix + "/lib/x.py"}, [])
    assert kept == [prefix + "-ws/profiles/Exportfile"]
    a = fastpath.memo_path(Path("/c"), "/ws", ["//p:t"])
    old = os.environ.get("HOME")
    os.environ["HOME"] = "/elsewhere"
    try:
        assert fastpath.memo_path(Path("/c"), "/ws", ["//p:t"]) != a
    finally:
        if old is None:
            del os.environ["HOME"]
        else:
            os.environ["HOME"] = old


def test_a_graph_with_secrets_is_never_stored(tmp_path):
    label = Label("p", "t")
    spec = ActionSpec(id="p/t/sign", label=label, rule="r", rule_version="1", mnemonic="Sign", fn="m:f",
                      inputs={}, params={}, outputs=["sig"], source_date_epoch=None, libraries={},
                      secrets={"password": "hunter2"})
    graph = BuildGraph(targets={label: ConfiguredTarget(label, "r", [], [], [spec])}, requested=[label],
                       actions={spec.id: spec})
    memo = tmp_path / "analysis-memo" / "m.json"
    assert fastpath.record_analysis(memo, graph, code_roots=[]) is False
    assert not memo.exists()
    spec.secrets = {}  # the same graph without them is stored
    assert fastpath.record_analysis(memo, graph, code_roots=[]) is True
    assert "hunter2" not in memo.read_text()


def test_loaded_libraries_are_part_of_both_memos():
    files = fastpath.runtime_files()
    assert os.path.abspath(zstandard.__file__) in files
    if Path("/proc/self/maps").exists():
        assert any(f.endswith(".so") or ".so." in f for f in files)
