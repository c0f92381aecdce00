"""Differential test of advisory semantics over the whole shared corpora (docs/differential.md).

For every affected package of osv-pypi, osv-go, rustsec, alpine-secdb, the GHSA sample and
osv-ubuntu, probe versions are generated from its ranges (every event value, just below and just
above it, pre-releases and Go pseudo-versions of it, listed versions, a far-future version; a
seeded subset here, ``PER_RECORD`` per record and ``PER_PACKAGE`` per package, every probe in
bench/bench_differential.py) and three answers must agree on every probe:

(a) json:policy built by stella-build over an SBOM of the probes;
(b) osv-scanner 2.6.0 (the OSV reference implementation) scanning lockfiles / SBOMs of the
    probes offline against the same records; where it cannot (a record it would drop, a probe no
    lockfile or SBOM states, e.g. Ubuntu Pro), the OSV-schema evaluator in tests/differential/spec.py;
(c) Trivy 0.74.0 scanning the same lockfiles / SBOMs with the trivy:db stella-build writes from the
    same corpora (not Ubuntu: our trivy:db has no Ubuntu buckets yet).

Each failing test prints every disagreement with record id, package, version and each side's
answer, then a count per class. Only entries of the reviewed allow-list
(tests/differential/allowlist.py) are exempt.
"""
from __future__ import annotations

import json
import resource
import subprocess
import time

import pytest

from tests.conftest import require_shared_data
from tests.differential.allowlist import ALLOW
from tests.differential.pipeline import Tools, run

pytestmark = [pytest.mark.interop, pytest.mark.slow]

PER_RECORD = 2          # probes per affected entry in the CI sample (seeded, deterministic)
PER_PACKAGE = 10        # and at most this many per package (comparisons grow with probes x records)
SEED = "stella-diff-1"
ECOSYSTEMS = {"PyPI", "Go", "crates.io", "npm", "Maven", "NuGet", "RubyGems", "Packagist", "Pub", "Hex",
              "SwiftURL", "Alpine", "Ubuntu"}


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@pytest.fixture(scope="module")
def differential(tmp_path_factory):
    from tests.interop.conftest import require_tool

    require_shared_data()
    tools = Tools(osv_scanner=require_tool("osv-scanner"), trivy=require_tool("trivy"))
    work = tmp_path_factory.mktemp("differential")
    cpu0, start = _cpu(), time.monotonic()
    report, times, probes = run(work, tools, per_record=PER_RECORD, per_package=PER_PACKAGE, seed=SEED, allow=ALLOW)
    print(f"\n{report.summary()}\ntimes (wall s): " + ", ".join(f"{k} {v:.1f}" for k, v in times.items())
          + f"; total {time.monotonic() - start:.1f} s wall, {_cpu() - cpu0:.1f} s CPU (with the tools)")
    (work / "disagreements.txt").write_text("".join(ln.text() + "\n" for ln in report.lines))
    return report, probes, work


def _lines(report, pair: str) -> list:
    return [ln for ln in report.lines if ln.pair == pair]


def _fail_listing(report, pair: str, work) -> None:
    lines = _lines(report, pair)
    if not lines:
        return
    for ln in lines:  # every disagreement, in the captured output
        print(ln.text())
    classes = "\n".join(f"  {n:6d}  {klass}" for (p, klass), n in sorted(report.classes().items(), key=lambda kv: -kv[1])
                        if p == pair)
    head = "\n".join(ln.text() for ln in lines[:40])
    pytest.fail(f"{len(lines)} {pair} disagreements over {report.comparisons[pair]} comparisons "
                f"({report.probes} probes); all of them in {work / 'disagreements.txt'} and above.\n"
                f"classes:\n{classes}\nfirst lines:\n{head}", pytrace=False)


def test_every_record_and_every_ecosystem_is_probed(differential) -> None:
    report, probes, _ = differential
    probed = {pkg.base for pkg, versions in probes.versions.items() if versions}
    assert probed == ECOSYSTEMS
    unprobed = [(a.record_id, a.ecosystem, a.name) for pkg, affs in probes.affected.items()
                for a in affs if not probes.versions[pkg]]
    assert unprobed == []
    datasets = {a.dataset for affs in probes.affected.values() for a in affs}
    assert datasets == {"osv-pypi", "osv-go", "ghsa", "osv-ubuntu", "rustsec", "alpine-secdb"}
    for pair in ("policy-vs-reference", "policy-vs-trivy", "spec-vs-osv-scanner"):
        assert report.comparisons[pair] > 100_000, pair


def test_osv_scanner_drops_only_the_records_the_schema_check_predicts(differential) -> None:
    """Records osv-scanner would skip are counted and left to the spec evaluator; one it never
    matched although the spec evaluator says a probe is affected is an unpredicted drop."""
    report, _, _ = differential
    print(f"records left out of osv-scanner's database: {report.dropped_by_osv_scanner}")
    assert report.never_reported == []


def test_spec_evaluator_agrees_with_osv_scanner(differential) -> None:
    """Self-check of the test's own evaluator and RustSec / Alpine converters."""
    report, _, work = differential
    _fail_listing(report, "spec-vs-osv-scanner", work)


def test_trivy_answers_alike_for_an_alpine_rootfs_and_the_sbom(differential) -> None:
    """Alpine probes reach Trivy as SBOMs (apk's database holds one version per package); the
    first probe of every package is also scanned as a real rootfs, and both must agree."""
    report, _, work = differential
    assert report.comparisons["trivy-rootfs-vs-trivy-sbom"] > 0
    _fail_listing(report, "trivy-rootfs-vs-trivy-sbom", work)


def test_osv_scanner_answers_alike_for_an_os_image_and_the_sbom(differential) -> None:
    """Same check for osv-scanner: Alpine and Ubuntu images (``scan image --archive``) against the
    SBOM answers for the first probe of every package."""
    report, _, work = differential
    assert report.comparisons["osv-scanner-image-vs-osv-scanner-sbom"] > 0
    _fail_listing(report, "osv-scanner-image-vs-osv-scanner-sbom", work)


def test_json_policy_agrees_with_the_osv_reference(differential) -> None:
    report, _, work = differential
    _fail_listing(report, "policy-vs-reference", work)


def test_json_policy_agrees_with_trivy_on_our_trivy_db(differential) -> None:
    report, _, work = differential
    _fail_listing(report, "policy-vs-trivy", work)


# -- the reference gaps, re-checked on small fixtures --------------------------------------------

def test_osv_scanner_reference_gaps_still_hold(tool, tmp_path) -> None:
    """REFERENCE_GAPS["go-uppercase-module-path"]: osv-scanner matches the lower-case module and
    not the same record for a module path with an upper-case letter. When this fails, osv-scanner
    closed the gap: remove the entry (and the fallback it causes) from tests/differential/allowlist.py."""
    from tests.differential import osvdb, runners
    from tests.differential.corpus import Record

    scanner = tool("osv-scanner")
    records = []
    for rid, module in (("STELLA-GAP-1", "github.com/stella-gap/lower"), ("STELLA-GAP-2", "github.com/Stella-Gap/Upper")):
        doc = {"id": rid, "modified": "2025-01-01T00:00:00Z", "affected": [{
            "package": {"ecosystem": "Go", "name": module},
            "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}, {"fixed": "1.2.0"}]}]}]}
        records.append(Record(id=rid, dataset="fixture", path=rid, osv=doc, withdrawn=False))
    assert osvdb.write_db(tmp_path / "db", records) == {}
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "go.mod").write_text(
        "module example.com/gap\n\ngo 1.22\n\nrequire (\n\tgithub.com/stella-gap/lower v1.1.0\n"
        "\tgithub.com/Stella-Gap/Upper v1.1.0\n)\n")
    out = tmp_path / "report.json"
    proc = subprocess.run(runners.osv_scanner_cmd(scanner, tmp_path / "db", tmp_path / "src", out),
                          capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    seen = {p["package"]["name"]: {v["id"] for v in p.get("vulnerabilities") or ()}
            for r in json.loads(out.read_text())["results"] for p in r["packages"]}
    assert seen["github.com/stella-gap/lower"] == {"STELLA-GAP-1"}   # the fixture works
    assert seen["github.com/Stella-Gap/Upper"] == set(), "osv-scanner now matches upper-case module paths"


def test_osv_scanner_ubuntu_lts_image_gap_still_holds(tool, tmp_path) -> None:
    """REFERENCE_GAPS["ubuntu-lts-image"], on the shared jammy fixture: an SBOM purl of its curl
    gets the Ubuntu:22.04:LTS records expected.json names, an image of the same rootfs gets none.
    When this fails, remove the entry and cross-check Ubuntu LTS images too."""
    from tests.conftest import SHARED_DATA
    from tests.differential import lockfiles, osvdb, runners
    from tests.differential.corpus import load_osv_file, Record, affected_of

    scanner = tool("osv-scanner")
    fixture = SHARED_DATA / "osv-ubuntu" / "fixtures"
    expected = {p["package"]: p for p in json.loads((fixture / "expected.json").read_text())["packages"]}["curl"]
    assert expected["advisories"]  # the fixture says curl is affected
    records = []
    for f in sorted((SHARED_DATA / "osv-ubuntu").glob("*.json")):
        doc = load_osv_file(f)
        records.append(Record(id=doc["id"], dataset="osv-ubuntu", path=f.name, osv=doc, withdrawn=False,
                              affected=affected_of(doc, "osv-ubuntu", f.name)))
    osvdb.write_db(tmp_path / "db", records)
    lockfiles.write_image_tar(fixture / "jammy-rootfs", tmp_path / "jammy.tar")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    image_out = tmp_path / "image.json"
    proc = subprocess.run(runners.osv_scanner_image_cmd(scanner, tmp_path / "db", tmp_path / "jammy.tar", image_out),
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    image = {(p["package"]["name"], p["package"]["ecosystem"]): {v["id"] for v in p.get("vulnerabilities") or ()}
             for r in json.loads(image_out.read_text())["results"] for p in r["packages"]}
    (tmp_path / "sbom").mkdir()
    (tmp_path / "sbom" / "curl.cdx.json").write_text(json.dumps({
        "bomFormat": "CycloneDX", "specVersion": "1.5", "version": 1, "components": [{
            "type": "library", "name": "curl", "version": expected["source_version"], "bom-ref": "curl",
            "purl": f"pkg:deb/ubuntu/curl@{expected['source_version']}?arch=source&distro=ubuntu-22.04"}]}))
    sbom_out = tmp_path / "sbom.json"
    proc = subprocess.run(runners.osv_scanner_cmd(scanner, tmp_path / "db", tmp_path / "sbom", sbom_out),
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    sbom = {(p["package"]["name"], p["package"]["ecosystem"]): {v["id"] for v in p.get("vulnerabilities") or ()}
            for r in json.loads(sbom_out.read_text())["results"] for p in r["packages"]}
    assert sbom[("curl", "Ubuntu:22.04:LTS")] >= set(expected["advisories"])
    assert image[("curl", "Ubuntu:22.04")] == set(), "osv-scanner now matches Ubuntu LTS records in images"


# -- the test's own evaluators (fast, no tools) ------------------------------------------------------

@pytest.mark.parametrize("a, b, expected", [
    # pairs from apk-tools' test/unit/version.data and src/version.c's rules
    ("1.0.4-r3", "1.0.4-r4", -1), ("1.1", "1.1_alpha1", 1), ("0.1.0_alpha_pre2", "0.1.0_alpha", -1),
    ("1.0_p10-r0", "1.0_p9-r0", 1), ("4.5_p1-r1", "4.5_p1", 1), ("1.2.3-r1", "1.2.3", 1),
    ("1.06-r6", "006", -1), ("0.10.0", "0.10.1_rc1", -1), ("2.5.1-r8", "2.5.1a-r1", -1),
    ("7.51.0_rc1-r0", "7.51.0", -1), ("4.0-r9", "4.0.0-r0", -1), ("0.8.21_p1-r0", "0.8.21-r1", 1),
    ("1.2.3_git20200101-r0", "1.2.3-r5", 1), ("1.3_pre1-r1", "1.3.2", -1),
])
def test_apk_reference_orders_like_apk_tools(a: str, b: str, expected: int) -> None:
    from tests.differential.orderings import compare

    assert compare("Alpine:v3.10", a, b) == expected
    assert compare("Alpine:v3.10", b, a) == -expected


def test_scanner_apk_models_reproduce_the_documented_deviations() -> None:
    """The two deviations the allow-list rules name, in the models of the scanners' comparators."""
    from tests.differential.upstream_models import go_apk_version_cmp, osv_scalibr_apk_cmp

    assert go_apk_version_cmp("7.51.0_rc1-r0", "7.51.0") == 1      # apk-tools: -1
    assert go_apk_version_cmp("1.1_alpha1", "1.1") == -1           # no '.0' before it: as apk-tools
    assert osv_scalibr_apk_cmp("4.0-r9", "4.0.0-r0") == 1          # apk-tools: -1
    assert osv_scalibr_apk_cmp("1.2.3-r1", "1.2.3-r2") == -1


@pytest.mark.parametrize("a, b, expected", [
    ("1", "1.0", 0), ("1.0.RELEASE", "1.0", 0), ("1.0.Final", "1.0", 0), ("1.0-SNAPSHOT", "1.0", -1),
    ("1.0-alpha1", "1.0-beta1", -1), ("1-a1", "1-alpha-1", 0), ("1.0-rc1", "1.0", -1), ("1.0", "1.0-sp1", -1),
    ("1.0-sp1", "1.0-foo", -1), ("2.9.10.8", "2.9.10", 1), ("5.3.0.RELEASE", "5.3.1", -1), ("1.0a", "1.0", 1),
])
def test_maven_reference_orders_like_comparable_version(a: str, b: str, expected: int) -> None:
    from tests.differential.orderings import compare

    assert compare("Maven", a, b) == expected


@pytest.mark.parametrize("a, b, expected", [
    # composer/semver: normalize (v prefix, four parts, stabilities), then PHP's version_compare
    ("1.0", "1.0.0", 0), ("v1.0.0", "1.0.0.0", 0), ("1.0.0-dev", "1.0.0-alpha1", -1), ("1.0.0-alpha1", "1.0.0-b1", -1),
    ("1.0.0-beta1", "1.0.0-RC1", -1), ("1.0.0-RC1", "1.0.0", -1), ("1.0.0", "1.0.0-patch1", -1),
    ("1.0.0-pl1", "1.0.0.1", -1), ("1.0.0-beta1-dev", "1.0.0-beta1", -1), ("1.0.0-beta1", "1.0.0-beta1.1", -1),
    ("7.4.5-rc1", "7.4.5RC1", 0), ("2.9.9.9", "3", -1),
])
def test_composer_reference_orders_like_composer(a: str, b: str, expected: int) -> None:
    from tests.differential.orderings import compare

    assert compare("Packagist", a, b) == expected
    assert compare("Packagist", b, a) == -expected


def test_rustsec_conversion_follows_rustsecs_osv_export() -> None:
    from tests.differential.rustsec_osv import Unconvertible, requirements_to_events

    # RUSTSEC-2018-0003 (smallvec): the gaps between the safe intervals, -0 ends for ^ requirements
    assert requirements_to_events(["< 0.3.2"], [">= 0.6.3", "^0.3.4", "^0.4.5", "^0.5.1"]) == (
        ("introduced", "0.3.2"), ("fixed", "0.3.4"), ("introduced", "0.4.0-0"), ("fixed", "0.4.5"),
        ("introduced", "0.5.0-0"), ("fixed", "0.5.1"), ("introduced", "0.6.0-0"), ("fixed", "0.6.3"))
    assert requirements_to_events([], []) == (("introduced", "0"),)
    assert requirements_to_events([], ["> 1.2.3"]) == (("introduced", "0"), ("fixed", "1.2.4-0"))
    assert requirements_to_events(["<= 0.2.0"], []) == (("introduced", "0.2.1-0"),)
    with pytest.raises(Unconvertible):
        requirements_to_events([], [">= 1.0", ">= 1.5"])  # overlapping: RustSec rejects it


def test_spec_evaluator_follows_the_schema_text() -> None:
    from tests.differential.spec import Unorderable, spec_affected

    def aff(version: str, *events: tuple[str, str], eco: str = "PyPI", listed: tuple = ()) -> bool:
        return spec_affected(eco, version, (("ECOSYSTEM", events),), listed)

    assert aff("1.5", ("introduced", "0"), ("fixed", "2.0")) and not aff("2.0", ("introduced", "0"), ("fixed", "2.0"))
    assert aff("2.0", ("introduced", "1.0"), ("last_affected", "2.0"))
    assert not aff("2.0.1", ("introduced", "1.0"), ("last_affected", "2.0"))
    assert not aff("3.5", ("introduced", "1.0"), ("limit", "3.0"))   # BeforeLimits
    assert aff("2.5", ("introduced", "1.0"), ("limit", "3.0"), ("limit", "*"))
    assert aff("1.5", ("fixed", "2.0"), ("introduced", "1.0"))        # events are sorted first
    # at one version the record's order stands (a stable sort, as osv.dev and osv-scanner sort)
    assert aff("2.5", ("introduced", "1.0"), ("fixed", "2.0"), ("introduced", "2.0"), ("fixed", "3.0"))
    assert not aff("0.13.0", ("introduced", "0.13.0"), ("fixed", "0.14.0rc1"), ("introduced", "0.12.2"),
                   ("fixed", "0.13.0"))
    assert not aff("0.20.0", eco="crates.io", listed=("0.20",))          # listed versions are strings
    assert aff("9.9", ("introduced", "1.0"), ("fixed", "2.0"), listed=("9.9",))
    assert not spec_affected("Go", "1.0.0", (("GIT", (("introduced", "0"),)),), ())
    with pytest.raises(Unorderable):
        aff("not a version!", ("introduced", "1.0"))
