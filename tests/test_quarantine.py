"""Quarantine of malformed evidence files, `strict = true`, and GIT-only records with `versions`.

One bad upstream record must not stop a daily build: it is left out, listed (file, field, reason)
in every bundle built on it and in the build summary (`warnings[]`, `warning:` lines on stderr),
and the build exits 0. `strict = true` on the source target turns it back into a failure (exit 1,
reason `evidence-invalid`).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import make_workspace, run_cli

BROKEN = "profiles/evidence/osv/zz-broken.json"
TARGETS = ["//profiles:json-raw", "//profiles:json-policy", "//profiles:trivy-db", "//profiles:mirror-full"]
EXPECTED = {"path": BROKEN, "field": "modified", "reason": "evidence-invalid",
            "message": "not an RFC 3339 timestamp: 'not a time'"}


def _broken_ws(tmp_path: Path) -> Path:
    ws = make_workspace(tmp_path / "ws")
    (ws / BROKEN).write_text('{"id": "BROKEN-1", "modified": "not a time"}')
    return ws


def _set_strict(ws: Path) -> None:
    exportfile = ws / "profiles/Exportfile"
    text = exportfile.read_text()
    block = '[targets.osv-sample]\nrule = "osv_source"\n'
    assert block in text
    exportfile.write_text(text.replace(block, block + "strict = true\n"))


def _out(ws: Path, target: str, rel: str) -> dict:
    return json.loads((ws / "stella-out/profiles" / target / rel).read_text())


@pytest.fixture(scope="module")
def quarantined_build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quarantine")
    ws = _broken_ws(tmp)
    res = run_cli(["--output", "json", "build", *TARGETS], cwd=ws, cache=tmp / "cache")
    return ws, tmp / "cache", res


def test_malformed_file_is_quarantined_and_the_build_succeeds(quarantined_build):
    ws, _, res = quarantined_build
    assert res.code == 0, res.stderr
    summary = res.json()
    assert summary["ok"] is True and summary["errors"] == []
    assert [(w["file"], w["field"], w["reason"]) for w in summary["warnings"]] == \
        [(BROKEN, "modified", "evidence-invalid")]
    assert summary["warnings"][0]["target"] == "//profiles:osv-sample"
    assert (f"warning: {BROKEN}: field 'modified': quarantined (skipped): "
            "not an RFC 3339 timestamp: 'not a time'") in res.stderr.splitlines()


def test_bundles_list_the_quarantined_file(quarantined_build):
    ws, _, _ = quarantined_build
    for target, rel in (("json-raw", "manifests/export.json"), ("json-policy", "manifests/export.json"),
                        ("mirror-full", "mirror/export.json")):
        manifest = _out(ws, target, rel)
        assert manifest["quarantined"] == [EXPECTED], target
        assert manifest["counts"]["quarantined"] == 1, target
    assert _out(ws, "trivy-db", "mapping.json")["quarantined"] == [EXPECTED]
    assert _out(ws, "json-raw", "indexes/advisories.index.json")["excluded"]["quarantined"] == [EXPECTED]
    assert _out(ws, "json-policy", "indexes/evidence.index.json")["excluded"]["quarantined"] == [EXPECTED]


def test_the_other_records_are_exported(quarantined_build, tmp_path):
    ws, _, _ = quarantined_build
    clean = make_workspace(tmp_path / "clean")
    run_cli(["-q", "build", "//profiles:json-raw"], cwd=clean, cache=tmp_path / "c", check=True)
    got = _out(ws, "json-raw", "indexes/advisories.index.json")
    want = _out(clean, "json-raw", "indexes/advisories.index.json")
    assert got["advisories"] == want["advisories"] and got["records"] == want["records"] > 0
    assert "BROKEN-1" not in json.dumps(got["advisories"])
    # the clean build lists nothing: the key is absent, so bundles without quarantine keep their bytes
    assert "quarantined" not in _out(clean, "json-raw", "manifests/export.json")
    # the data files (and their digests) are the clean build's: the record is only absent
    def data(manifest):
        return [c for c in manifest["contents"] if c["path"].startswith("data/")]
    assert data(_out(ws, "json-raw", "manifests/export.json")) == data(_out(clean, "json-raw", "manifests/export.json"))


def test_a_quarantined_bundle_verifies(quarantined_build):
    ws, _, _ = quarantined_build
    res = run_cli(["--output", "json", "verify", "--allow-unsigned", "stella-out/profiles/json-raw"], cwd=ws)
    assert res.code == 0, res.stdout + res.stderr


def test_a_cached_rebuild_still_warns(quarantined_build):
    ws, cache, _ = quarantined_build
    for _ in range(2):  # the second rebuild would be answered by the no-op memo if one were recorded
        res = run_cli(["--output", "json", "build", "//profiles:json-raw"], cwd=ws, cache=cache)
        assert res.code == 0
        summary = res.json()
        assert summary["actions"]["executed"] == 0
        assert [w["file"] for w in summary["warnings"]] == [BROKEN]
        assert f"warning: {BROKEN}: field 'modified'" in res.stderr


def test_strict_fails_the_build(tmp_path):
    ws = _broken_ws(tmp_path)
    _set_strict(ws)
    res = run_cli(["--output", "json", "build", "//profiles:json-raw"], cwd=ws, cache=tmp_path / "c")
    assert res.code == 1
    errors = res.json()["errors"]
    assert [(e["reason"], e["file"], e["field"]) for e in errors] == \
        [("evidence-invalid", BROKEN, "modified")]
    assert not (ws / "stella-out/profiles/json-raw/manifests/export.json").exists()


def test_strict_is_accepted_by_every_source_rule(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    text = (ws / "profiles/Exportfile").read_text()
    for name in ("sbom-sample", "vex-sample", "osv-os-sample"):
        head = f"[targets.{name}]\n"
        text = text.replace(head, head + "strict = true\n")
    (ws / "profiles/Exportfile").write_text(text)
    res = run_cli(["--output", "json", "query", "//profiles:all"], cwd=ws)
    assert res.code == 0, res.stdout + res.stderr
    (ws / "profiles/Exportfile").write_text(text.replace("strict = true", "strict = 3", 1))
    res = run_cli(["--output", "json", "build", "//profiles:sbom-sample"], cwd=ws, cache=tmp_path / "c")
    assert res.code == 2


def _evidence_shard(tmp_path: Path, fmt: str, files: dict[str, bytes], strict: bool = False) -> tuple[dict, dict]:
    """Run the evidence_shard action function on `files` (logical path → bytes)."""
    from stella_build.rules.sources import evidence_shard

    class Actx:
        def __init__(self):
            self.params = {"format": fmt, "source": {"name": "test"}, **({"strict": True} if strict else {})}
            self.inputs = {}
            self.out = tmp_path / "out"
            self.out.mkdir(parents=True, exist_ok=True)
            for logical, data in files.items():
                p = tmp_path / "in" / logical
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
                self.inputs[logical] = p  # package-relative logical paths are their own input names

        def input(self, name):
            return self.inputs[name]

        def read_input(self, name, limit=None):  # as ActionContext.read_input outside the engine
            from stella_build.engine.rule_api import ActionContext

            return ActionContext.read_input(self, name, limit)

        def output(self, name):
            return self.out / name

        def write_output(self, name, data):
            (self.out / name).write_bytes(data)

    actx = Actx()
    result = evidence_shard(actx)
    return result, json.loads((actx.out / "stats.json").read_bytes())


RUSTSEC_GOOD = b'''```toml
[advisory]
id = "RUSTSEC-2099-0001"
package = "demo"
date = "2099-01-01"
[versions]
patched = [">= 1.0.1"]
```
# A demo
text
'''


def test_rustsec_shard_quarantines_a_bad_file(tmp_path):
    from stella_build.engine.rule_api import ActionError

    files = {"adv/good.md": RUSTSEC_GOOD, "adv/bad.md": b"no front matter at all"}
    result, stats = _evidence_shard(tmp_path / "a", "rustsec", files)
    assert result["records"] == 1 and result["quarantined"] == 1
    assert [q["path"] for q in stats["quarantined"]] == ["adv/bad.md"]
    assert result["warnings"][0]["file"] == "adv/bad.md"
    assert result["warnings"][0]["reason"] == "evidence-invalid"
    with pytest.raises(ActionError) as info:
        _evidence_shard(tmp_path / "b", "rustsec", files, strict=True)
    assert info.value.file == "adv/bad.md" and info.value.reason == "evidence-invalid"


def test_clean_shard_stats_have_no_quarantine_key(tmp_path):
    result, stats = _evidence_shard(tmp_path, "rustsec", {"adv/good.md": RUSTSEC_GOOD})
    assert "quarantined" not in stats and "warnings" not in result


# -- item 9: GIT-only records with a `versions` list -----------------------------------------

GIT_ONLY = {
    "schema_version": "1.6.0", "id": "GIT-ONLY-1", "modified": "2024-01-01T00:00:00Z",
    "affected": [{"ranges": [{"type": "GIT", "repo": "https://example.org/repo.git",
                              "events": [{"introduced": "0"}, {"fixed": "abc123"}]}],
                  "versions": ["v1.0.0", "v1.0.1"]}],
}


def test_git_only_entry_with_versions_is_git_only_not_invalid(tmp_path):
    files = {"osv/git.json": json.dumps(GIT_ONLY).encode()}
    # the osv-raw path normalizes documents from an osv_source shard: build that input by hand
    raw = {"id": "GIT-ONLY-1", "path": "osv/git.json", "sha256": "0" * 64, "document": GIT_ONLY}
    from stella_build.rules.sources import evidence_shard  # noqa: F401

    d = tmp_path / "raw"
    d.mkdir()
    (d / "raw.jsonl").write_text(json.dumps(raw) + "\n")

    class Actx:
        params = {"format": "osv-raw", "source": {"name": "test"}}
        inputs = {"raw.jsonl": d / "raw.jsonl"}

        def input(self, name):
            return self.inputs[name]

        def output(self, name):
            return d / name

        def write_output(self, name, data):
            (d / name).write_bytes(data)

    result = evidence_shard(Actx())
    stats = json.loads((d / "stats.json").read_bytes())
    assert stats["invalid"] == []
    assert [k[:4] for k in stats["git_only"]] == [["GIT-ONLY-1", "GIT", "https://example.org/repo.git",
                                                    "osv/git.json"]]
    assert "not evaluated by version" in stats["git_only"][0][4]
    assert "invalid" not in result and result["records"] == 1
    assert files  # the same document as a file is what the end-to-end test below builds


def test_git_only_entry_in_json_policy_and_trivy(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    (ws / "profiles/evidence/osv/zz-git-only.json").write_text(json.dumps(GIT_ONLY))
    res = run_cli(["--output", "json", "build", "//profiles:json-policy", "//profiles:trivy-db"],
                  cwd=ws, cache=tmp_path / "c")
    assert res.code == 0, res.stdout + res.stderr
    assert res.json()["warnings"] == []
    index = _out(ws, "json-policy", "indexes/evidence.index.json")["notEvaluable"]
    assert [k[0] for k in index["invalid"]] == []
    assert [k[0] for k in index["gitOnly"]] == ["GIT-ONLY-1"]
    mapping = _out(ws, "trivy-db", "mapping.json")
    not_mapped = {i for g in mapping["notMapped"] for i in g["ids"]}
    assert "GIT-ONLY-1" in not_mapped  # Trivy has no bucket for repositories: listed, not evaluated


def test_duplicate_ids_across_files_warn_and_stay_apart(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    original = ws / "profiles/evidence/osv/STELLA-SAMPLE-2019-0001-PyPI-werkzeug.json"
    copy = ws / "profiles/evidence/osv/zz-copy-of-werkzeug.json"
    copy.write_bytes(original.read_bytes())
    res = run_cli(["--output", "json", "build", "//profiles:json-raw"], cwd=ws, cache=tmp_path / "c")
    assert res.code == 0, res.stdout + res.stderr
    warnings = res.json()["warnings"]
    assert [(w["file"], w["field"], w["reason"]) for w in warnings] == \
        [("profiles/evidence/osv/zz-copy-of-werkzeug.json", "id", "duplicate-id")]
    ids = [a[0] for a in _out(ws, "json-raw", "indexes/advisories.index.json")["advisories"]]
    assert ids.count("STELLA-SAMPLE-2019-0001") == 2  # both records kept


def test_a_document_that_does_not_normalize_is_quarantined_downstream(tmp_path):
    """Valid for json:raw (kept verbatim) but not normalizable: json:policy and trivy:db leave it
    out and list it; the one warning is reported once although two actions found it."""
    ws = make_workspace(tmp_path / "ws")
    name = "profiles/evidence/osv/zz-summary-number.json"
    (ws / name).write_text(json.dumps({"id": "BAD-SUMMARY-1", "modified": "2024-01-01T00:00:00Z",
                                       "summary": 5}))
    targets = ["//profiles:json-raw", "//profiles:json-policy", "//profiles:trivy-db"]
    res = run_cli(["--output", "json", "build", *targets], cwd=ws, cache=tmp_path / "c")
    assert res.code == 0, res.stdout + res.stderr
    assert [(w["file"], w["field"], w["reason"]) for w in res.json()["warnings"]] == \
        [(name, "summary", "evidence-invalid")]
    assert "quarantined" not in _out(ws, "json-raw", "manifests/export.json")
    assert [q["path"] for q in _out(ws, "json-policy", "manifests/export.json")["quarantined"]] == [name]
    assert [q["path"] for q in _out(ws, "trivy-db", "mapping.json")["quarantined"]] == [name]
    _set_strict(ws)
    res = run_cli(["--output", "json", "build", "//profiles:trivy-db"], cwd=ws, cache=tmp_path / "c")
    assert res.code == 1
    assert [(e["reason"], e["file"], e["field"]) for e in res.json()["errors"]] == \
        [("evidence-invalid", name, "summary")]
