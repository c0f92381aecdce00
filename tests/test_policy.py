"""json:policy: findings checked against hand-derived expectations, policy semantics, determinism."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import zstandard

from stella_build.engine.encode.canonical_json import dumps
from tests.conftest import CLI, REPO, SHARED_DATA, make_workspace, output_digests, require_shared_data, run_cli

GOLDEN = json.loads((REPO / "golden" / "digests.json").read_text())
OUT = "stella-out/profiles/json-policy"


def _findings(ws: Path, target: str = "json-policy") -> list[dict]:
    data = (ws / "stella-out/profiles" / target / "data/policy/evaluations.jsonl.zst").read_bytes()
    return [json.loads(l) for l in zstandard.ZstdDecompressor().decompressobj().decompress(data).splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("policy")
    ws = make_workspace(root / "ws")
    run_cli(["-q", "//profiles:json-policy"], cwd=ws, cache=root / "cache", check=True)
    return ws


# -- findings vs. expectations derived by hand ------------------------------------------------------
# Read off profiles/evidence/osv/<id>-*.json (ranges, CVSS vector), the SBOM
# profiles/evidence/sbom/stella-sample-app.cdx.json, the OpenVEX document and profiles/policy/policy.toml
# (block at high, warn at medium; waiver for CVE-2020-26160 active until 2025-06-30, lxml waiver
# expired 2024-06-30; SOURCE_DATE_EPOCH is 2025-01-01). Tuple: (advisory, fixed version, level,
# decision, rule). An empty set means the installed version is outside every range.
EXPECTED = {
    # STELLA-SAMPLE-2018-0003 (CVE-2018-18074): fixed 2.20.0; 2.19.1 is inside; AV:N/AC:L/C:H → 7.5 high
    "pkg:pypi/requests@2.19.1": {("STELLA-SAMPLE-2018-0003", "2.20.0", "high", "block", "severity.block_at")},
    # STELLA-SAMPLE-2018-0006 (CVE-2018-1000656): fixed 0.12.3; installed exactly at the fix
    "pkg:pypi/flask@0.12.3": set(),
    # STELLA-SAMPLE-2019-0001: fixed 0.15.3; at the fix
    "pkg:pypi/werkzeug@0.15.3": set(),
    # STELLA-SAMPLE-2019-0008 (CVE-2019-14234): introduced 2.2, fixed 2.2.4; 2.2.3 inside; 9.8 critical
    "pkg:pypi/django@2.2.3": {("STELLA-SAMPLE-2019-0008", "2.2.4", "critical", "block", "severity.block_at")},
    # STELLA-SAMPLE-2019-0002 (fixed 2.10.1) and STELLA-SAMPLE-2021-9002 (YAML, fixed 2.11.3): both medium
    "pkg:pypi/jinja2@2.10": {("STELLA-SAMPLE-2019-0002", "2.10.1", "medium", "warn", "severity.warn_at"),
                             ("STELLA-SAMPLE-2021-9002", "2.11.3", "medium", "warn", "severity.warn_at")},
    # STELLA-SAMPLE-2019-0004 fixed 1.24.2 (medium); STELLA-SAMPLE-2019-9001 is withdrawn: no finding
    "pkg:pypi/urllib3@1.24.1": {("STELLA-SAMPLE-2019-0004", "1.24.2", "medium", "warn", "severity.warn_at")},
    # STELLA-SAMPLE-2019-0012: fixed 1.3.0; at the fix
    "pkg:pypi/sqlalchemy@1.3.0": set(),
    # STELLA-SAMPLE-2020-0009 (CVE-2020-25659): fixed 3.2; 3.1 inside; 3.7 low → below warn_at
    "pkg:pypi/cryptography@3.1": {("STELLA-SAMPLE-2020-0009", "3.2", "low", "allow", "severity.below_warn")},
    # STELLA-SAMPLE-2020-0010: fixed 4.6.2, medium; the package waiver expired → still warn
    "pkg:pypi/lxml@4.6.1": {("STELLA-SAMPLE-2020-0010", "4.6.2", "medium", "warn", "severity.warn_at")},
    # STELLA-SAMPLE-2020-0005 fixed 5.3.1 / STELLA-SAMPLE-2020-0007 fixed 6.2.2 / 2018-0011 fixed 2.4.2: critical
    "pkg:pypi/pyyaml@5.3": {("STELLA-SAMPLE-2020-0005", "5.3.1", "critical", "block", "severity.block_at")},
    "pkg:pypi/pillow@6.2.1": {("STELLA-SAMPLE-2020-0007", "6.2.2", "critical", "block", "severity.block_at")},
    "pkg:pypi/paramiko@2.4.1": {("STELLA-SAMPLE-2018-0011", "2.4.2", "critical", "block", "severity.block_at")},
    # STELLA-SAMPLE-2021-0023 (CVE-2021-32640): introduced 5.0.0, fixed 5.2.3; 3.3.3 is below the range
    "pkg:npm/ws@3.3.3": set(),
    # STELLA-SAMPLE-2020-0021: fixed 0.21.1; at the fix
    "pkg:npm/axios@0.21.1": set(),
    # STELLA-SAMPLE-2019-0019 (CVE-2019-10744): fixed 4.17.12; 9.1 critical
    "pkg:npm/lodash@4.17.11": {("STELLA-SAMPLE-2019-0019", "4.17.12", "critical", "block", "severity.block_at")},
    # STELLA-SAMPLE-2021-0020 (CVE-2021-44906): fixed 1.2.6, critical; OpenVEX not_affected → allow
    "pkg:npm/minimist@1.2.5": {("STELLA-SAMPLE-2021-0020", "1.2.6", "critical", "allow", "vex.known_not_affected")},
    # STELLA-SAMPLE-2022-0022 (CVE-2022-0235): fixed 2.6.7, high; OpenVEX fixed → allow
    "pkg:npm/node-fetch@2.6.1": {("STELLA-SAMPLE-2022-0022", "2.6.7", "high", "allow", "vex.fixed")},
    # STELLA-SAMPLE-2020-0013: fixed 0.3.3 (Go, no "v"); v0.3.2 inside; VEX under_investigation changes nothing
    "pkg:golang/golang.org/x/text@v0.3.2": {("STELLA-SAMPLE-2020-0013", "0.3.3", "high", "block", "severity.block_at")},
    # STELLA-SAMPLE-2020-0015: fixed 1.7.0; 5.9 medium
    "pkg:golang/github.com/gin-gonic/gin@v1.6.3": {("STELLA-SAMPLE-2020-0015", "1.7.0", "medium", "warn", "severity.warn_at")},
    # STELLA-SAMPLE-2020-0016 (CVE-2020-26160): introduced 0, no fix; waiver on the CVE alias is active
    "pkg:golang/github.com/dgrijalva/jwt-go@v3.2.0%2Bincompatible": {
        ("STELLA-SAMPLE-2020-0016", None, "high", "allow", "waiver.advisory")},
    # STELLA-SAMPLE-2020-0017: fixed 1.4.1; 1.4.2 is above
    "pkg:golang/github.com/gorilla/websocket@v1.4.2": set(),
    # STELLA-SAMPLE-2020-0018 fixed 1.6.4 / STELLA-SAMPLE-2022-0014 fixed 0.7.0: at the fix
    "pkg:golang/github.com/tidwall/gjson@v1.6.4": set(),
    "pkg:golang/golang.org/x/net@v0.7.0": set(),
    # STELLA-SAMPLE-2020-0027: introduced 0.2.7, fixed 0.2.23; 0.1.45 below the range
    "pkg:cargo/time@0.1.45": set(),
    # STELLA-SAMPLE-2021-0024: introduced 0.6.3, fixed 0.6.14; 1.6.1 above the range
    "pkg:cargo/smallvec@1.6.1": set(),
    # STELLA-SAMPLE-2021-0028: fixed 1.8.4; at the fix
    "pkg:cargo/tokio@1.8.4": set(),
    # STELLA-SAMPLE-2021-0025 fixed 0.14.10 (medium) / STELLA-SAMPLE-2022-0026 fixed 1.5.5 (high)
    "pkg:cargo/hyper@0.14.9": {("STELLA-SAMPLE-2021-0025", "0.14.10", "medium", "warn", "severity.warn_at")},
    "pkg:cargo/regex@1.5.4": {("STELLA-SAMPLE-2022-0026", "1.5.5", "high", "block", "severity.block_at")},
}


def test_findings_agree_with_hand_derived_expectations(built):
    findings = _findings(built)
    got: dict[str, set] = {}
    for f in findings:
        got.setdefault(f["purl"], set()).add(
            (f["advisory_id"], f["fixed_version"], f["severity"]["level"], f["decision"], f["rule"]))
    for purl, expected in EXPECTED.items():
        assert got.get(purl, set()) == expected, purl
    # nothing beyond the expectations: the other 22 components have no advisory in the sample
    assert set(got) <= set(EXPECTED)
    assert sum(len(v) for v in EXPECTED.values()) == len(findings) == 18


def test_finding_records_carry_the_required_fields(built):
    findings = _findings(built)
    for f in findings:
        assert f["subject"] == "pkg:generic/stella-sample-app@1.0.0"
        assert f["sbom"] == "profiles/evidence/sbom/stella-sample-app.cdx.json"
        assert f["decision"] in ("block", "warn", "allow")
        assert f["installed_version"] and f["advisory_id"] and isinstance(f["aliases"], list)
    text = next(f for f in findings if f["purl"].startswith("pkg:golang/golang.org/x/text@"))
    assert text["vex_status"] == "under_investigation" and text["aliases"] == ["CVE-2020-14040"]
    lxml = next(f for f in findings if f["purl"].startswith("pkg:pypi/lxml@"))
    assert lxml["waiver"] == {"index": 1, "kind": "package", "active": False, "expires": "2024-06-30T00:00:00Z",
                              "reason": "HTML cleaner not used in production (waiver lapsed, kept to show expiry)"}
    minimist = next(f for f in findings if f["purl"].startswith("pkg:npm/minimist@"))
    assert minimist["vex"]["justification"] == "vulnerable_code_not_in_execute_path"
    assert [dumps(f) for f in findings] == sorted(
        (dumps(f) for f in findings),
        key=lambda b: (lambda f: (f["subject"], f["purl"], f["advisory_id"], f["advisory_path"], f["sbom"]))(json.loads(b)))


def test_bundle_layout_snapshot_and_indexes(built):
    out = built / OUT
    snapshot = json.loads((out / "data/policy/snapshot.json").read_bytes())
    assert snapshot["evaluatedAt"] == "2025-01-01T00:00:00Z"
    assert snapshot["policy"]["severity"] == {"block_at": "high", "warn_at": "medium", "unknown_as": "medium"}
    assert snapshot["source"]["path"] == "profiles/policy/policy.toml"
    assert [w["active"] for w in snapshot["waivers"]] == [True, False]
    assert (out / "data/policy/snapshot.json").read_bytes() == dumps(snapshot)
    # json:raw content is included byte for byte
    raw = {k: v for k, v in GOLDEN["//profiles:json-raw"].items() if k.startswith("data/")}
    assert {k: v for k, v in output_digests(built, "profiles", "json-policy").items() if k in raw} == raw
    sbom = json.loads((out / "data/raw/sboms/generic_stella-sample-app_1.0.0/sbom.json").read_bytes())
    assert sbom["bomFormat"] == "CycloneDX" and len(sbom["components"]) == 50
    index = json.loads((out / "indexes/findings.index.json").read_bytes())
    assert index["decisions"] == {"allow": 4, "block": 8, "warn": 6}
    assert index["componentsNotEvaluated"] == [
        ["pkg:generic/openssl@1.1.1t", "profiles/evidence/sbom/stella-sample-app.cdx.json", "unsupported purl type"]]
    evidence = json.loads((out / "indexes/evidence.index.json").read_bytes())
    assert [w[0] for w in evidence["excluded"]["withdrawn"]] == ["STELLA-SAMPLE-2019-9001"]
    manifest = json.loads((out / "manifests/export.json").read_bytes())
    assert manifest["profile"]["variant"] == "policy"
    assert manifest["counts"]["findings"] == 18 and manifest["counts"]["sbomComponents"] == 50
    assert manifest["counts"]["vexStatements"] == 3
    paths = {c["path"] for c in manifest["contents"]}
    assert {"data/policy/evaluations.jsonl.zst", "data/policy/snapshot.json", "data/raw/vex/vex-sample-0.jsonl.zst",
            "data/normalized/vex/vex-sample-0.jsonl.zst"} <= paths
    prov = json.loads((out / "manifests/provenance.json").read_bytes())
    names = {d["name"] for d in prov["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert {"profiles/policy/policy.toml", "profiles/evidence/sbom/stella-sample-app.cdx.json",
            "profiles/evidence/vex/stella-sample-app.openvex.json"} <= names


def test_snapshot_of_findings(built, snapshot):
    picked = [f for f in _findings(built) if f["package"] in ("jinja2", "minimist", "github.com/dgrijalva/jwt-go")]
    assert len(picked) == 4
    assert [dumps(f).decode() for f in picked] == snapshot


def test_golden_digests_cover_json_policy(built):
    assert output_digests(built, "profiles", "json-policy") == GOLDEN["//profiles:json-policy"]


# -- determinism -------------------------------------------------------------------------------------

def _build(ws: Path, cache: Path, *args: str, env: dict | None = None, umask: int | None = None) -> None:
    full_env = dict(os.environ)
    full_env.pop("SOURCE_DATE_EPOCH", None)
    full_env.update(env or {})
    argv = [CLI, "--cache-dir", str(cache), "-q", *args, "//profiles:json-policy"]
    proc = subprocess.run(argv, cwd=ws, env=full_env, capture_output=True, text=True, timeout=300,
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)
    assert proc.returncode == 0, proc.stderr


def test_byte_identical_across_cache_jobs_paths_and_environment(tmp_path):
    golden = GOLDEN["//profiles:json-policy"]
    a = make_workspace(tmp_path / "a")
    _build(a, tmp_path / "ca", "-j2")  # cold
    assert output_digests(a, "profiles", "json-policy") == golden
    shutil.rmtree(a / "stella-out")
    _build(a, tmp_path / "ca", "-j2")  # warm: every action a cache hit
    assert output_digests(a, "profiles", "json-policy") == golden
    b = make_workspace(tmp_path / "elsewhere" / "deeper path" / "b")
    _build(b, tmp_path / "cb", "-j1", umask=0o077,
           env={"TZ": "Pacific/Kiritimati", "LC_ALL": "tr_TR.UTF-8", "LANG": "tr_TR.UTF-8",
                "PYTHONHASHSEED": "12345"})
    assert output_digests(b, "profiles", "json-policy") == golden
    c = make_workspace(tmp_path / "c")
    _build(c, tmp_path / "cc", "-j2", env={"TZ": "America/St_Johns", "PYTHONHASHSEED": "0", "LC_ALL": "C"})
    assert output_digests(c, "profiles", "json-policy") == golden


# -- policy semantics through the CLI -----------------------------------------------------------------

def test_editing_the_policy_reruns_only_evaluate_and_bundle(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    cache = tmp_path / "c"
    run_cli(["-q", "//profiles:json-policy"], cwd=ws, cache=cache, check=True)
    pol = ws / "profiles/policy/policy.toml"
    pol.write_text(pol.read_text().replace('block_at = "high"', 'block_at = "critical"'))
    res = run_cli(["--output", "json", "//profiles:json-policy"], cwd=ws, cache=cache, check=True).json()
    assert res["actions"]["executed"] == 2
    by = {f["purl"]: f for f in _findings(ws)}
    assert by["pkg:pypi/requests@2.19.1"]["decision"] == "warn"  # high is no longer blocked
    assert by["pkg:pypi/django@2.2.3"]["decision"] == "block"


def test_inline_policy_gives_the_same_findings_as_the_file(tmp_path, built):
    ws = make_workspace(tmp_path / "ws")
    ef = ws / "profiles/Exportfile"
    ef.write_text(ef.read_text() + '''
[targets.inline]
rule = "json_policy"
deps = [":osv-sample", ":sbom-sample", ":vex-sample"]
policy = { name = "stella-sample-policy", version = "2025.01", description = "Block high and critical findings, warn on medium, honour VEX, two waivers.", severity = { block_at = "high", warn_at = "medium" }, waivers = [
  { advisory = "CVE-2020-26160", reason = "jwt-go only verifies tokens from our own issuer; the move to golang-jwt is tracked in APP-142", expires = "2025-06-30" },
  { package = "pkg:pypi/lxml", reason = "HTML cleaner not used in production (waiver lapsed, kept to show expiry)", expires = "2024-06-30" } ] }
''')
    run_cli(["-q", "//profiles:inline"], cwd=ws, cache=tmp_path / "c", check=True)
    assert _findings(ws, "inline") == _findings(built)
    snap = json.loads((ws / "stella-out/profiles/inline/data/policy/snapshot.json").read_bytes())
    assert snap["source"]["path"] is None
    assert snap["policy"] == json.loads((built / OUT / "data/policy/snapshot.json").read_bytes())["policy"]


def test_bad_policy_file_fails_with_file_and_field(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    pol = ws / "profiles/policy/policy.toml"
    pol.write_text(pol.read_text().replace('block_at = "high"', 'block_at = "severe"'))
    res = run_cli(["--output", "json", "//profiles:json-policy"], cwd=ws, cache=tmp_path / "c")
    assert res.code == 1
    (err,) = res.json()["errors"]
    assert err["file"] == "profiles/policy/policy.toml" and err["field"] == "severity.block_at"


def test_policy_and_policy_file_together_is_a_usage_error(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    ef = ws / "profiles/Exportfile"
    ef.write_text(ef.read_text().replace('policy_file = "policy/policy.toml"',
                                         'policy_file = "policy/policy.toml"\npolicy = { name = "x" }'))
    res = run_cli(["//profiles:json-policy"], cwd=ws, cache=tmp_path / "c")
    assert res.code == 2 and "policy" in res.stderr and "Traceback" not in res.stderr


def test_rustsec_and_osv_records_of_one_cve_are_cross_linked(tmp_path):
    """RUSTSEC-2021-0124 (patched ">= 1.8.4, < 1.9.0", ">= 1.13.1"; unaffected "< 0.1.14"; no CVSS)
    and STELLA-SAMPLE-2021-0028 (introduced 0.1.14, fixed 1.8.4) both name CVE-2021-45710."""
    require_shared_data()
    ws = make_workspace(tmp_path / "ws")
    (ws / "profiles/extra").mkdir()
    shutil.copy(SHARED_DATA / "rustsec/crates/tokio/RUSTSEC-2021-0124.md", ws / "profiles/extra/")
    comps = [{"type": "library", "name": "tokio", "version": v, "purl": f"pkg:cargo/tokio@{v}"}
             for v in ("0.1.13", "0.1.14", "1.8.3", "1.10.0", "1.13.1")]
    (ws / "profiles/extra/bom.json").write_text(json.dumps({
        "bomFormat": "CycloneDX", "specVersion": "1.6", "version": 1,
        "metadata": {"component": {"type": "application", "name": "svc", "version": "2", "purl": "pkg:generic/svc@2"}},
        "components": comps}))
    ef = ws / "profiles/Exportfile"
    ef.write_text(ef.read_text() + '''
[targets.rs]
rule = "rustsec_source"
srcs = ["extra/*.md"]
[targets.bom]
rule = "sbom_source"
srcs = ["extra/bom.json"]
[targets.tokio]
rule = "json_policy"
deps = [":osv-sample", ":rs", ":bom"]
policy_file = "policy/policy.toml"
''')
    run_cli(["-q", "//profiles:tokio"], cwd=ws, cache=tmp_path / "c", check=True)
    got = {(f["installed_version"], f["advisory_id"], f["fixed_version"], f["severity"]["level"], f["decision"],
            tuple(f["related"])) for f in _findings(ws, "tokio")}
    assert got == {
        # 0.1.14: first vulnerable version of both
        ("0.1.14", "RUSTSEC-2021-0124", "1.8.4", "medium", "warn", ("STELLA-SAMPLE-2021-0028",)),
        ("0.1.14", "STELLA-SAMPLE-2021-0028", "1.8.4", "high", "block", ("RUSTSEC-2021-0124",)),
        ("1.8.3", "RUSTSEC-2021-0124", "1.8.4", "medium", "warn", ("STELLA-SAMPLE-2021-0028",)),
        ("1.8.3", "STELLA-SAMPLE-2021-0028", "1.8.4", "high", "block", ("RUSTSEC-2021-0124",)),
        # 1.10.0: outside the sample's range, inside RustSec's second gap (1.9.0 .. 1.13.1); no CVSS → medium
        ("1.10.0", "RUSTSEC-2021-0124", "1.13.1", "medium", "warn", ()),
    }  # 0.1.13 (unaffected) and 1.13.1 (patched) give nothing


# -- policy functions --------------------------------------------------------------------------------

def test_waiver_is_active_strictly_before_its_expiry():
    from stella_build.engine.encode.timefmt import parse_rfc3339
    from stella_build.rules.evidence.policy import Policy, evaluate

    policy = Policy(name="p", waivers=[{"advisory": "CVE-1", "reason": "r", "expires": "2025-01-01"}])
    match = {"subject": None, "sbom": "b.json", "purl": "pkg:npm/a@1.0.0", "ecosystem": "npm", "package": "a",
             "installed_version": "1.0.0", "advisory_id": "GHSA-x", "aliases": ["CVE-1"], "advisory_source": "s",
             "advisory_path": "a.json", "fixed_version": None, "fixed_versions": [], "summary": None,
             "severities": [{"type": "vendor", "label": "CRITICAL", "score": None, "vector": None}]}
    expiry = parse_rfc3339("2025-01-01T00:00:00Z")
    (before,) = evaluate(policy, [match], [], expiry - 1)
    (at,) = evaluate(policy, [match], [], expiry)
    assert (before["decision"], before["rule"]) == ("allow", "waiver.advisory")
    assert (at["decision"], at["rule"], at["waiver"]["active"]) == ("block", "severity.block_at", False)
    assert at["severity"] == {"level": "critical", "score": None, "type": "vendor", "vector": None}


def test_vex_not_honoured_and_unknown_severity():
    from stella_build.rules.evidence.policy import Policy, evaluate

    match = {"subject": "pkg:generic/app@1", "sbom": "b.json", "purl": "pkg:pypi/a@1.0", "ecosystem": "PyPI",
             "package": "a", "installed_version": "1.0", "advisory_id": "PYSEC-1", "aliases": [],
             "advisory_source": "s", "advisory_path": "a.yaml", "fixed_version": "1.1", "fixed_versions": ["1.1"],
             "summary": None, "severities": []}
    vex = [{"vulnerability": "PYSEC-1", "aliases": [], "product": "pkg:generic/app@1", "component": "pkg:pypi/a",
            "status": "known_not_affected", "justification": "component_not_present", "impact": None,
            "action": None, "timestamp": None, "document_id": "d", "source_path": "v.json"}]
    honoured = evaluate(Policy(name="p", severity={"unknown_as": "high", "block_at": "high"}), [match], vex, 0)
    assert (honoured[0]["decision"], honoured[0]["rule"]) == ("allow", "vex.known_not_affected")
    ignored = evaluate(Policy(name="p", vex={"honour": False}, severity={"unknown_as": "high", "block_at": "high"}),
                       [match], vex, 0)
    assert (ignored[0]["decision"], ignored[0]["rule"], ignored[0]["vex_status"]) == (
        "block", "severity.block_at", "known_not_affected")
    assert ignored[0]["severity"]["type"] == "unknown"
    other = dict(vex[0], component="pkg:pypi/b")  # a statement about another component does not apply
    assert evaluate(Policy(name="p"), [match], [other], 0)[0]["vex"] is None


def test_policy_validation_names_the_field():
    from stella_build.rules.evidence.policy import PolicyError, load_policy_toml

    with pytest.raises(PolicyError) as exc:
        load_policy_toml(b'name = "p"\n[severity]\nblock_at = "medium"\nwarn_at = "high"\n', "p.toml")
    assert exc.value.path == "p.toml" and "warn_at" in exc.value.message
    with pytest.raises(PolicyError) as exc:
        load_policy_toml(b'name = "p"\n[[waivers]]\nadvisory = "X"\nexpires = 2025-01-01\n', "p.toml")
    assert exc.value.field == "waivers[0].reason"
    with pytest.raises(PolicyError) as exc:
        load_policy_toml(b'name = "p"\n[[waivers]]\nreason = "r"\nexpires = 2025-01-01\n', "p.toml")
    assert exc.value.field == "waivers[0]"
