"""The evidence source rules end to end: real corpora, malformed files, sharding, snapshots."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from stella_build.engine.encode.canonical_json import dumps
from tests.conftest import SHARED_DATA, make_workspace, require_shared_data, run_cli


def _stats(ws: Path, package: str, target: str) -> list[dict]:
    return [json.loads(p.read_bytes())
            for p in sorted((ws / "stella-out" / package / target / "shards").glob("*.stats.json"))]


def _records(ws: Path, package: str, target: str) -> list[dict]:
    out = []
    for p in sorted((ws / "stella-out" / package / target / "shards").glob("*.jsonl")):
        lines = p.read_bytes().splitlines()
        out += [json.loads(line) for line in lines]
    return out


# -- the shared corpora ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpora_ws(tmp_path_factory) -> Path:
    """One build of the corpora's normalized source targets (~15 s on 2 cores)."""
    require_shared_data()
    root = tmp_path_factory.mktemp("corpora")
    ws = make_workspace(root / "ws", packages=("corpora",), shared=True)
    res = run_cli(["-j2", "--output", "json", "//corpora:rustsec", "//corpora:alpine",
                   "//corpora:osv-normalized"], cwd=ws, cache=root / "cache")
    summary = res.json()
    assert res.code == 0 and summary["errors"] == [], res.stderr
    return ws


def test_every_shared_file_is_ingested_with_zero_errors(corpora_ws):
    expected = {
        "rustsec": {str(p.relative_to(SHARED_DATA)) for p in SHARED_DATA.glob("rustsec/**/*.md")},
        "alpine": {str(p.relative_to(SHARED_DATA)) for p in SHARED_DATA.glob("alpine-secdb/**/*.yaml")},
        "osv-normalized": {str(p.relative_to(SHARED_DATA)) for p in
                           [*SHARED_DATA.glob("osv-pypi/vulns/**/*.yaml"), *SHARED_DATA.glob("osv-go/*.json")]},
    }
    total = 0
    for target, files in expected.items():
        stats = _stats(corpora_ws, "corpora", target)
        read = {m[0].removeprefix("@shared-data//") for s in stats for m in s["materials"]}
        assert read == files, target
        assert sum(s["files"] for s in stats) == len(files)
        total += len(files)
    assert total >= 8000  # 2,661 PyPI + 4,291 Go + 1,225 RustSec + 18 secdb files


def test_normalized_records_are_canonical_and_sorted(corpora_ws):
    from stella_build.rules.evidence.model import Advisory

    for target in ("rustsec", "alpine", "osv-normalized"):
        shard = sorted((corpora_ws / "stella-out/corpora" / target / "shards").glob("*.jsonl"))[0]
        lines = shard.read_bytes().splitlines()
        models = [Advisory.model_validate(json.loads(line)) for line in lines]
        assert [dumps(m.to_canonical()) for m in models] == lines
        keys = [m.sort_key() for m in models]
        assert keys == sorted(keys)


def test_withdrawn_records_are_kept_and_listed(corpora_ws):
    # independent count: documents that carry a withdrawn field, read from the files themselves
    pypi = {p for p in SHARED_DATA.glob("osv-pypi/vulns/**/*.yaml")
            if re.search(rb"^withdrawn:", p.read_bytes(), re.M)}
    go = {p for p in SHARED_DATA.glob("osv-go/*.json") if "withdrawn" in json.loads(p.read_bytes())}
    rust = {p for p in SHARED_DATA.glob("rustsec/**/*.md") if re.search(rb"^withdrawn\s*=", p.read_bytes(), re.M)}
    listed = {t: {w[3].removeprefix("@shared-data//") for s in _stats(corpora_ws, "corpora", t) for w in s["withdrawn"]}
              for t in ("osv-normalized", "rustsec")}
    assert listed["osv-normalized"] == {str(p.relative_to(SHARED_DATA)) for p in pypi | go}
    assert listed["rustsec"] == {str(p.relative_to(SHARED_DATA)) for p in rust}
    assert pypi and rust
    kept = [r for r in _records(corpora_ws, "corpora", "rustsec") if r["withdrawn"]]
    assert len(kept) == len(rust)  # kept in the data with `withdrawn` set, not dropped


def test_alpine_cve_records_match_an_independent_scan(corpora_ws):
    scan = set()
    for f in SHARED_DATA.glob("alpine-secdb/*/*.yaml"):
        doc = yaml.load(f.read_bytes(), Loader=yaml.BaseLoader)
        for p in doc.get("packages") or []:
            for entries in (p["pkg"].get("secfixes") or {}).values():
                for entry in entries or []:
                    for y, n in re.findall(r"CVE[-_ ](\d{4})-(\d{4,})", entry):
                        scan.add((f"Alpine:{doc['distroversion']}", p["pkg"]["name"], f"CVE-{y}-{n}"))
    got = {(r["ecosystem"], r["package"]["name"], r["id"]) for r in _records(corpora_ws, "corpora", "alpine")
           if r["id"].startswith("CVE-")}
    assert got == scan
    markers = [m for s in _stats(corpora_ws, "corpora", "alpine") for m in s["unfixed_marker"]]
    assert markers and all(m[1].startswith("Alpine:") for m in markers)


# -- malformed files -------------------------------------------------------------------------------

RUSTSEC_OK = (SHARED_DATA / "rustsec/crates/tokio/RUSTSEC-2021-0124.md")

MALFORMED = {
    # name: (rule, file name, content, expected field, words in the message)
    "rustsec-missing-id": ("rustsec_source", "RUSTSEC-X.md",
                           '```toml\n[advisory]\npackage = "x"\ndate = "2021-01-01"\n[versions]\npatched = []\n```\n# t\n',
                           "advisory.id", "missing"),
    "rustsec-bad-range": ("rustsec_source", "RUSTSEC-Y.md",
                          '```toml\n[advisory]\nid = "RUSTSEC-0000-0001"\npackage = "x"\ndate = "2021-01-01"\n'
                          '[versions]\npatched = [">= banana"]\n```\n# t\n', "versions.patched[0]", ""),
    "alpine-bad-yaml": ("alpine_secdb_source", "main.yaml", "distroversion: v3.11\nreponame: main\npackages:\n  - pkg: [\n",
                        "<document>", "invalid YAML"),
    "alpine-bad-distro": ("alpine_secdb_source", "main.yaml", "distroversion: 3.11\nreponame: main\npackages: []\n",
                          "distroversion", "vX.Y"),
    "vex-bad-status": ("vex_source", "doc.json", json.dumps({
        "@context": "https://openvex.dev/ns/v0.2.0", "@id": "x", "timestamp": "2024-01-01T00:00:00Z",
        "statements": [{"vulnerability": {"name": "CVE-1"}, "products": [{"@id": "pkg:npm/a"}], "status": "maybe"}]}),
        "statements[0].status", "maybe"),
    "sbom-truncated": ("sbom_source", "bom.json", '{"bomFormat": "CycloneDX", "specVersion": "1.5", "compo',
                       "<document>", "invalid JSON"),
    "sbom-bad-purl": ("sbom_source", "bom.json", json.dumps({
        "bomFormat": "CycloneDX", "specVersion": "1.5", "components": [{"name": "a", "purl": "not-a-purl"}]}),
        "components[0].purl", "purl"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_fails_its_action_with_file_and_field(case, tmp_path):
    rule, name, content, field, words = MALFORMED[case]
    ws = tmp_path / "ws"
    (ws / "ev" / "in").mkdir(parents=True)
    (ws / "stella-workspace.toml").write_text("[workspace]\nexternal = {}\n")
    (ws / "ev" / "in" / name).write_text(content)
    if rule == "rustsec_source":  # a good file beside the bad one: only the bad one is named
        shutil.copy(RUSTSEC_OK, ws / "ev" / "in" / RUSTSEC_OK.name)
    (ws / "ev" / "Exportfile").write_text(f'[targets.src]\nrule = "{rule}"\nsrcs = ["in/*"]\nshards = 1\nstrict = true\n')
    res = run_cli(["--output", "json", "//ev:src"], cwd=ws, cache=tmp_path / "c")
    assert res.code == 1, res.stdout + res.stderr
    (err,) = res.json()["errors"]
    assert err["file"] == f"ev/in/{name}"
    assert err["field"] == field
    assert words in err["message"]
    assert err["target"] == "//ev:src"
    assert "Traceback" not in res.stderr
    text = run_cli(["//ev:src"], cwd=ws, cache=tmp_path / "c")
    assert text.code == 1 and f"ev/in/{name}" in text.stderr and field in text.stderr


# -- sharding ------------------------------------------------------------------------------------

def test_one_changed_file_reruns_one_shard_action(tmp_path):
    require_shared_data()
    ws = tmp_path / "ws"
    (ws / "ev" / "rs").mkdir(parents=True)
    (ws / "stella-workspace.toml").write_text("[workspace]\nexternal = {}\n")
    files = sorted(SHARED_DATA.glob("rustsec/crates/*/*.md"))[:24]
    for f in files:
        shutil.copy(f, ws / "ev" / "rs" / f"{f.parent.name}-{f.name}")
    (ws / "ev" / "Exportfile").write_text('[targets.rs]\nrule = "rustsec_source"\nsrcs = ["rs/*.md"]\nshards = 6\n')
    cache = tmp_path / "c"
    first = run_cli(["--output", "json", "//ev:rs"], cwd=ws, cache=cache, check=True).json()
    assert first["actions"]["executed"] == first["actions"]["total"] >= 4
    victim = sorted((ws / "ev" / "rs").glob("*.md"))[3]
    text = victim.read_text()
    edited = re.sub(r"(```\s*\n\s*# )", r"\1Edited: ", text, count=1)
    assert edited != text
    victim.write_text(edited)
    second = run_cli(["--output", "json", "//ev:rs"], cwd=ws, cache=cache, check=True).json()
    assert second["actions"]["executed"] == 1
    assert second["actions"]["cached"] == first["actions"]["total"] - 1
    titles = [r["summary"] for r in _records(ws, "ev", "rs")]
    assert sum(1 for t in titles if t and t.startswith("Edited: ")) == 1


# -- snapshots of canonical records ----------------------------------------------------------------

@pytest.fixture(scope="module")
def sample_records(tmp_path_factory) -> dict[str, list[dict]]:
    """Normalized records of the sample workspace plus one RustSec and one secdb file."""
    require_shared_data()
    root = tmp_path_factory.mktemp("snap")
    ws = make_workspace(root / "ws")
    (ws / "profiles" / "extra").mkdir()
    shutil.copy(RUSTSEC_OK, ws / "profiles" / "extra" / RUSTSEC_OK.name)
    shutil.copy(SHARED_DATA / "alpine-secdb/v3.11/main.yaml", ws / "profiles" / "extra" / "main.yaml")
    ef = ws / "profiles" / "Exportfile"
    ef.write_text(ef.read_text() + '\n[targets.rs]\nrule = "rustsec_source"\nsrcs = ["extra/*.md"]\nshards = 1\n'
                  '\n[targets.apk]\nrule = "alpine_secdb_source"\nsrcs = ["extra/*.yaml"]\nshards = 1\n'
                  '\n[targets.osv-n]\nrule = "osv_normalize"\ndeps = [":osv-sample"]\n')
    run_cli(["-q", "//profiles:rs", "//profiles:apk", "//profiles:osv-n", "//profiles:vex-sample",
             "//profiles:sbom-sample"], cwd=ws, cache=root / "c", check=True)
    return {t: _records(ws, "profiles", t) for t in ("rs", "apk", "osv-n", "vex-sample", "sbom-sample")}


def _pick(records, **where):
    return [r for r in records if all(r.get(k) == v for k, v in where.items())]


def test_snapshot_normalized_rustsec_and_alpine(sample_records, snapshot):
    (rust,) = sample_records["rs"]
    musl = [r for r in sample_records["apk"] if r["package"]["name"] == "musl"]
    assert dumps(rust).decode() == snapshot(name="rustsec-tokio")
    assert [dumps(r).decode() for r in musl] == snapshot(name="alpine-v3.11-musl")


def test_snapshot_normalized_osv_vex_sbom(sample_records, snapshot):
    jinja = [r for r in sample_records["osv-n"] if r["package"]["normalized"] == "jinja2"]
    assert len(jinja) == 2
    assert [dumps(r).decode() for r in jinja] == snapshot(name="osv-jinja2")
    assert [dumps(r).decode() for r in sample_records["vex-sample"]] == snapshot(name="openvex-statements")
    comps = [r for r in sample_records["sbom-sample"] if "jwt-go" in r["purl"] or "%40babel" in r["purl"]]
    assert [dumps(r).decode() for r in comps] == snapshot(name="cyclonedx-components")


def test_rustsec_ranges_follow_the_versions_table(sample_records):
    # RUSTSEC-2021-0124: patched ">= 1.8.4, < 1.9.0" and ">= 1.13.1"; unaffected "< 0.1.14"
    (rust,) = sample_records["rs"]
    events = [(e["kind"], e["version"]) for e in rust["ranges"][0]["events"]]
    assert events == [("introduced", "0.1.14"), ("fixed", "1.8.4"), ("introduced", "1.9.0"), ("fixed", "1.13.1")]
    assert rust["aliases"] == ["CVE-2021-45710", "GHSA-fg7r-2g4j-5cgr"]
