"""End-to-end builds of the embedded sample workspace through the real CLI."""
import json
import re

from tests.conftest import REPO, output_digests, run_cli

GOLDEN = json.loads((REPO / "golden" / "digests.json").read_text())


def test_build_prints_bundle_path_then_noop(sample_ws, tmp_path):
    cache = tmp_path / "cache"
    first = run_cli(["//profiles:json-raw"], cwd=sample_ws, cache=cache, check=True)
    assert "stella-out/profiles/json-raw/bundle.tar.gz" in first.stdout
    assert re.search(r"OK: 9 actions \(9 executed, 0 cached\)", first.stdout)
    assert (sample_ws / "stella-out/profiles/json-raw/bundle.tar.gz").is_file()
    second = run_cli(["//profiles:json-raw", "--output", "json"], cwd=sample_ws, cache=cache, check=True)
    summary = second.json()
    assert summary["actions"]["executed"] == 0 and summary["actions"]["cached"] == 9


def test_json_summary_has_the_design_keys(sample_ws, tmp_path):
    res = run_cli(["build", "--output", "json", "//profiles/..."], cwd=sample_ws, cache=tmp_path / "c", check=True)
    data = res.json()
    for key in ("ok", "exit_code", "targets", "actions", "outputs", "errors", "duration_s"):
        assert key in data
    assert data["ok"] is True and data["exit_code"] == 0 and data["errors"] == []
    assert set(data["actions"]) >= {"total", "executed", "cached", "remote_hits"}
    assert "//profiles:json-raw" in data["targets"]
    paths = data["outputs"]["//profiles:json-raw"]
    assert "stella-out/profiles/json-raw/manifests/export.json" in paths
    assert all(not p.startswith("/") for p in paths)
    assert isinstance(data["duration_s"], float)


def test_outputs_match_golden_digests(sample_ws, tmp_path):
    run_cli(["-q", "//profiles:json-raw"], cwd=sample_ws, cache=tmp_path / "c", check=True)
    assert output_digests(sample_ws, "profiles", "json-raw") == GOLDEN["//profiles:json-raw"]


def test_manifest_fields_and_rerun_hash(sample_ws, tmp_path):
    import hashlib

    run_cli(["-q", "//profiles:json-raw"], cwd=sample_ws, cache=tmp_path / "c", check=True)
    out = sample_ws / "stella-out/profiles/json-raw"
    manifest = json.loads((out / "manifests/export.json").read_text())
    assert manifest["profile"] == {"kind": "json", "variant": "raw", "name": "json-raw", "revision": "r1"}
    assert manifest["generatedAt"] == "2025-01-01T00:00:00Z"
    assert re.fullmatch(r"[a-z0-9-]{6,64}", manifest["exportId"])
    paths = [c["path"] for c in manifest["contents"]]
    assert paths == sorted(paths)
    for entry in manifest["contents"]:
        data = (out / entry["path"]).read_bytes()
        assert entry["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data)
    joined = "\n".join(sorted(c["digest"] for c in manifest["contents"]))
    assert manifest["rerunHash"] == "sha256:" + hashlib.sha256(joined.encode()).hexdigest()
    # the withdrawn sample is excluded and counted; 30 files minus 1 withdrawn
    assert manifest["counts"] == {"records": 29, "withdrawnExcluded": 1, "filteredOut": 0}
    index = json.loads((out / "indexes/advisories.index.json").read_text())
    assert index["excluded"]["withdrawn"] == ["STELLA-SAMPLE-2019-9001"]
    prov = json.loads((out / "manifests/provenance.json").read_text())
    assert prov["_type"] == "https://in-toto.io/Statement/v1"
    assert prov["predicateType"] == "https://slsa.dev/provenance/v1"
    subjects = {s["name"]: s["digest"]["sha256"] for s in prov["subject"]}
    assert subjects["bundle.tar.gz"] == hashlib.sha256((out / "bundle.tar.gz").read_bytes()).hexdigest()
    assert subjects["manifests/export.json"] == hashlib.sha256((out / "manifests/export.json").read_bytes()).hexdigest()
    deps = prov["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert len(deps) == 30 and all(d["name"].startswith("profiles/evidence/osv/") for d in deps)
    assert "startedOn" not in json.dumps(prov) and "finishedOn" not in json.dumps(prov)


def test_records_are_canonical_sorted_and_zstd(sample_ws, tmp_path):
    import zstandard

    from stella_build.engine.encode.canonical_json import dumps

    run_cli(["-q", "//profiles:json-raw"], cwd=sample_ws, cache=tmp_path / "c", check=True)
    files = sorted((sample_ws / "stella-out/profiles/json-raw/data/raw/advisories").rglob("*.jsonl.zst"))
    assert files
    for f in files:
        lines = zstandard.ZstdDecompressor().decompressobj().decompress(f.read_bytes()).splitlines()
        recs = [json.loads(l) for l in lines]
        assert [dumps(r) for r in recs] == lines
        assert [(r["id"], r["path"]) for r in recs] == sorted((r["id"], r["path"]) for r in recs)
        assert all(f.parent.name in r["ecosystems"] for r in recs)


def test_selectors_filter_records(sample_ws, tmp_path):
    ef = sample_ws / "profiles" / "Exportfile"
    ef.write_text(ef.read_text() + '\n[targets.py-only]\nrule = "json_raw"\ndeps = [":osv-sample"]\n'
                  'selectors = { ecosystems = ["PyPI"], modified_since = "2024-06-01" }\n')
    run_cli(["-q", "//profiles:py-only"], cwd=sample_ws, cache=tmp_path / "c", check=True)
    manifest = json.loads((sample_ws / "stella-out/profiles/py-only/manifests/export.json").read_text())
    assert manifest["selectors"] == {"ecosystems": ["PyPI"], "modified_since": "2024-06-01"}
    assert all("/PyPI/" in c["path"] for c in manifest["contents"] if c["path"].startswith("data/"))
    assert manifest["counts"]["records"] == 13 and manifest["counts"]["filteredOut"] == 16


def test_query_deps_rdeps_kind_and_graph(sample_ws):
    deps = run_cli(["query", "deps(//profiles:json-raw)"], cwd=sample_ws, check=True)
    assert deps.stdout.split() == ["//profiles:json-raw", "//profiles:osv-sample"]
    # other profiles consume the sample too: assert the known ones and that each result really depends on it
    rdeps = run_cli(["query", "rdeps(//profiles:osv-sample)"], cwd=sample_ws, check=True).stdout.split()
    assert {"//profiles:json-raw", "//profiles:osv-sample"} <= set(rdeps)
    for label in rdeps:
        assert "//profiles:osv-sample" in run_cli(["query", f"deps({label})"], cwd=sample_ws, check=True).stdout
    kind = run_cli(["query", "kind(osv_source, //...)", "--output", "json"], cwd=sample_ws, check=True)
    assert [t["label"] for t in kind.json()["targets"]] == ["//profiles:osv-os-sample", "//profiles:osv-sample"]
    dot = run_cli(["query", "deps(//profiles:json-raw)", "--output", "graph"], cwd=sample_ws, check=True)
    assert dot.stdout.startswith("digraph") and '"//profiles:json-raw" -> "//profiles:osv-sample"' in dot.stdout
    bad = run_cli(["query", "depz(//profiles:json-raw)"], cwd=sample_ws)
    assert bad.code == 2 and "unknown function" in bad.stderr


def test_explain_names_the_changed_input(sample_ws, tmp_path):
    cache = tmp_path / "c"
    run_cli(["-q", "//profiles:json-raw"], cwd=sample_ws, cache=cache, check=True)
    up = run_cli(["explain", "//profiles:json-raw", "--output", "json"], cwd=sample_ws, cache=cache, check=True)
    assert {a["status"] for a in up.json()["actions"]} == {"up to date"}
    victim = sorted((sample_ws / "profiles/evidence/osv").glob("*werkzeug*.json"))[0]
    victim.write_text(victim.read_text().replace("Insufficient randomness", "Weak randomness"))
    before = run_cli(["explain", "//profiles:json-raw"], cwd=sample_ws, cache=cache, check=True)
    assert f"input changed: profiles/evidence/osv/{victim.name}" in before.stdout
    assert "will run" in before.stdout
    run_cli(["-q", "//profiles:json-raw"], cwd=sample_ws, cache=cache, check=True)
    after = run_cli(["explain", "//profiles:json-raw"], cwd=sample_ws, cache=cache, check=True)
    assert f"last re-ran because input changed: profiles/evidence/osv/{victim.name}" in after.stdout


def test_check_reexecutes_and_reports_no_difference(sample_ws, tmp_path):
    res = run_cli(["build", "--check", "--output", "json", "//profiles:json-raw"], cwd=sample_ws,
                  cache=tmp_path / "c", check=True)
    data = res.json()
    assert data["ok"] and data["check"]["differences"] == []


def test_init_scaffolds_a_workspace_that_builds(tmp_path):
    ws = tmp_path / "new"
    run_cli(["init", str(ws)], cwd=tmp_path, check=True)
    adv = ws / "exports" / "advisories"
    src = sorted((REPO / "profiles/evidence/osv").glob("*.json"))[:3]
    for f in src:
        (adv / f.name).write_bytes(f.read_bytes())
    res = run_cli(["//exports:json-raw"], cwd=ws, cache=tmp_path / "c", check=True)
    assert "bundle.tar.gz" in res.stdout
    again = run_cli(["init", str(ws)], cwd=tmp_path)
    assert again.code == 2


def test_help_teaches():
    res = run_cli(["--help"], cwd=REPO, check=True)
    for word in ("build", "query", "explain", "cache", "Exit codes", "stella-out"):
        assert word in res.stdout
    res = run_cli(["query", "--help"], cwd=REPO, check=True)
    assert "rdeps" in res.stdout
