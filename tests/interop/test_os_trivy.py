"""Real Trivy v0.74.0 (offline, ``trivy rootfs``) over operating-system root file systems built
by the test, against one trivy:db built from every source at once (a language feed, Alpine secdb,
Debian, Ubuntu, AlmaLinux, Rocky Linux, openSUSE, Wolfi and Chainguard OSV records), and json:policy over
an SBOM of the same packages: finding for finding, the two agree, and both equal what the test
data says.

- Debian 12: ``var/lib/dpkg/status``, ``etc/os-release`` and ``etc/debian_version`` copied from
  this (Debian 12) machine; Debian OSV records written here for a spread of its source packages
  (fixed above the installed source version, fixed exactly at it, fixed below it, no fix).
- Ubuntu 22.04: ``../shared/data/osv-ubuntu`` (real Canonical records) and its jammy rootfs
  fixture; Trivy's findings equal the fixture's independently computed ``expected.json``.
- AlmaLinux 9, Rocky Linux 9 and openSUSE Leap 15.5: ``rpmdb.sqlite`` written by Debian's ``rpm``
  from empty noarch packages ``rpmbuild`` makes here (epochs, ``~`` and ``^`` versions, a subpackage
  whose name differs from its source RPM, SUSE-style ``ecosystem_specific.binaries``).
- Wolfi and Chainguard: ``lib/apk/db/installed`` with origins (``o:``) and ``_p`` versions.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, make_workspace, require_shared_data, run_cli
from tests.interop.trivy_env import run_trivy, trivy_cache

pytestmark = pytest.mark.interop

EXPORTFILE = """[package]
source_date_epoch = 1735689600

[targets.lang]
rule = "osv_source"
srcs = ["lang/*.json"]
source = { name = "OS Test Language Feed" }

[targets.alpine]
rule = "alpine_secdb_source"
srcs = ["@shared-data//alpine-secdb/v3.10/main.yaml"]
source = { name = "Alpine Linux secdb" }

[targets.debian]
rule = "osv_source"
srcs = ["debian/*.json"]
source = { name = "Debian OSV (test records)" }

[targets.ubuntu]
rule = "osv_source"
srcs = ["@shared-data//osv-ubuntu/*.json"]
source = { name = "Ubuntu Security Notices (OSV)", license = "CC-BY-SA-4.0" }

[targets.rpm]
rule = "osv_source"
srcs = ["rpm/*.json"]
source = { name = "RPM OSV (test records)" }

[targets.apk]
rule = "osv_source"
srcs = ["apk/*.json"]
source = { name = "apk OSV (test records)" }

[targets.sbom]
rule = "sbom_source"
srcs = ["sbom/*.json"]
source = { name = "OS SBOMs" }

[targets.trivy-db]
rule = "trivy_db"
deps = [":lang", ":alpine", ":debian", ":ubuntu", ":rpm", ":apk"]

[targets.policy]
rule = "json_policy"
deps = [":debian", ":ubuntu", ":rpm", ":apk", ":sbom"]
policy = { name = "os", severity = { block_at = "critical", warn_at = "medium", unknown_as = "medium" } }
"""

V_HIGH = "CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:H/A:H"       # 8.1 HIGH
V_CRITICAL = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"   # 9.8 CRITICAL


def osv(vid: str, eco: str, name: str, events: list[dict], **extra) -> dict:
    doc = {"id": vid, "modified": "2025-01-01T00:00:00Z", "summary": f"{vid} summary",
           "affected": [{"package": {"ecosystem": eco, "name": name},
                         "ranges": [{"type": "ECOSYSTEM", "events": events}]}]}
    doc.update(extra)
    return doc


def trivy_id(doc: dict) -> str:
    """The id Trivy reports for a test record (trivy-db's rule: a CVE alias, else the id)."""
    return next((a for a in doc.get("aliases", ()) if a.startswith("CVE-")), doc["id"])


# -- Debian 12: this machine's package set ---------------------------------------------------------

def installed_debs(status: str) -> list[dict]:
    """{name, version, arch, source, source_version} of every installed dpkg package, read with
    python-debian (the source version is the one in ``Source: x (v)``, else the binary's)."""
    from debian.deb822 import Deb822

    out = []
    for para in Deb822.iter_paragraphs(status.splitlines(keepends=True)):
        if para.get("Status", "").split()[-1:] != ["installed"] or "Version" not in para:
            continue
        src_field = para.get("Source", para["Package"]).strip()
        src, _, rest = src_field.partition(" ")
        src_version = rest.strip().strip("()") or para["Version"]
        out.append({"name": para["Package"], "version": para["Version"], "arch": para.get("Architecture", ""),
                    "source": src, "source_version": src_version})
    return out


def debian_records(pkgs: list[dict]) -> tuple[list[dict], set[tuple[str, str]]]:
    """Debian:12 records for a spread of the installed source packages, and the expected
    (binary package, id) findings computed with python-debian's Version order."""
    from debian.debian_support import Version

    by_source: dict[str, list[dict]] = {}
    for p in pkgs:
        by_source.setdefault(p["source"], []).append(p)
    sources = sorted(by_source)
    step = max(1, len(sources) // 16)
    chosen = list(dict.fromkeys([s for s in ("glibc", "util-linux", "openssl") if s in by_source] + sources[::step]))[:20]
    records, expected = [], set()
    for i, src in enumerate(chosen):
        versions = sorted({p["source_version"] for p in by_source[src]}, key=Version)
        kind = i % 4
        if kind == 0:    # fixed above every installed version: vulnerable
            events = [{"introduced": "0"}, {"fixed": versions[-1] + "+stella1"}]
        elif kind == 1:  # fixed exactly at the lowest installed version: not vulnerable
            events = [{"introduced": "0"}, {"fixed": versions[0]}]
        elif kind == 2:  # no fix: every version, Status "affected"
            events = [{"introduced": "0"}]
        else:            # fixed below the installed versions: not vulnerable
            events = [{"introduced": "0"}, {"fixed": versions[0] + "~"}]
        extra = {"aliases": [f"CVE-2099-{7000 + i}"]} if i % 2 == 0 else {}
        if i % 3 == 0:
            extra["severity"] = [{"type": "CVSS_V3", "score": V_CRITICAL if i % 6 == 0 else V_HIGH}]
        doc = osv(f"DEB-TEST-{i:04d}", "Debian:12", src, events, **extra)
        records.append(doc)
        fixed = next((e["fixed"] for e in events if "fixed" in e), None)
        for p in by_source[src]:
            if fixed is None or Version(p["source_version"]) < Version(fixed):
                expected.add((p["name"], trivy_id(doc)))
    return records, expected


# -- AlmaLinux / Rocky Linux: RPMs built here -------------------------------------------------------

# (source RPM, epoch, version, release, binary RPMs)
RPMS = [
    ("openssl", 1, "3.0.7", "24.el9", ("openssl", "openssl-libs")),
    ("zlib", None, "1.2.11", "40.el9", ("zlib",)),
    ("bash", None, "5.1.8", "9.el9", ("bash",)),
    ("tildepkg", None, "1.0~rc1", "1.el9", ("tildepkg",)),
    ("caretpkg", None, "1.0^git1", "1.el9", ("caretpkg",)),
    ("epochpkg", 2, "1.0", "1.el9", ("epochpkg",)),
]
VENDORS = {"AlmaLinux:9": "AlmaLinux", "Rocky Linux:9": "Rocky Enterprise Software Foundation",
           "openSUSE:Leap 15.5": "openSUSE"}


def rpm_records(eco: str, prefix: str) -> tuple[list[dict], set[tuple[str, str]]]:
    """Records for the RPMs above, with the expected findings written out by hand (rpm order:
    1.0~rc1 < 1.0 < 1.0^git1; a higher epoch wins whatever the version)."""
    r = [
        osv(f"{prefix}-0001", eco, "openssl", [{"introduced": "0"}, {"fixed": "1:3.0.7-25.el9"}],
            aliases=["CVE-2099-8001"], severity=[{"type": "CVSS_V3", "score": V_HIGH}],
            affected=[{"package": {"ecosystem": eco, "name": "openssl"},
                       "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1:3.0.7-25.el9"}]}],
                       "ecosystem_specific": {"binaries": [{"openssl": "1:3.0.7-25.el9",
                                                            "openssl-libs": "1:3.0.7-25.el9"}]}}]),
        osv(f"{prefix}-0002", eco, "zlib", [{"introduced": "0"}, {"fixed": "1.2.11-40.el9"}]),   # at the fix
        osv(f"{prefix}-0003", eco, "bash", [{"introduced": "0"}, {"fixed": "5.1.8-10.el9"}]),
        osv(f"{prefix}-0004", eco, "tildepkg", [{"introduced": "0"}, {"fixed": "1.0-1.el9"}]),    # ~rc1 below
        osv(f"{prefix}-0005", eco, "caretpkg", [{"introduced": "0"}, {"fixed": "1.0-1.el9"}]),    # ^git1 above
        osv(f"{prefix}-0006", eco, "epochpkg", [{"introduced": "0"}, {"fixed": "1:9.9-1.el9"}]),  # epoch 2 wins
    ]
    expected = {("openssl", "CVE-2099-8001"), ("openssl-libs", "CVE-2099-8001"),
                ("bash", f"{prefix}-0003"), ("tildepkg", f"{prefix}-0004")}
    return r, expected


def build_rpmdb(root: Path, work: Path, vendor: str) -> None:
    """``root/var/lib/rpm/rpmdb.sqlite`` with RPMS installed (``--justdb``) by Debian's rpm."""
    from tests.interop.conftest import require_tool

    rpmbuild, rpm = require_tool("rpmbuild"), require_tool("rpm")
    top = work / "rpmbuild"
    (top / "SPECS").mkdir(parents=True, exist_ok=True)
    for src, epoch, version, release, binaries in RPMS:
        lines = [f"Name: {src}", *([f"Epoch: {epoch}"] if epoch is not None else []), f"Version: {version}",
                 f"Release: {release}", "Summary: stella-build test package", "License: MIT", f"Vendor: {vendor}",
                 "BuildArch: noarch", "%description", "test package"]
        for b in binaries:
            if b != src:
                lines += [f"%package -n {b}", "Summary: stella-build test subpackage", f"%description -n {b}",
                          "test subpackage", f"%files -n {b}"]
        if src in binaries:
            lines.append("%files")
        spec = top / "SPECS" / f"{src}.spec"
        spec.write_text("\n".join(lines) + "\n")
        subprocess.run([rpmbuild, "--define", f"_topdir {top}", "-bb", str(spec)], check=True,
                       capture_output=True, timeout=120)
    dbopts = ["--root", str(root), "--dbpath", "/var/lib/rpm", "--define", "_db_backend sqlite"]
    subprocess.run([rpm, *dbopts, "--initdb"], check=True, capture_output=True, timeout=60)
    rpms = sorted(str(p) for p in (top / "RPMS").rglob("*.rpm"))
    subprocess.run([rpm, *dbopts, "-i", "--justdb", "--nodeps", "--noscripts", "--notriggers", *rpms],
                   check=True, capture_output=True, timeout=120)
    for leftover in (root / "var/lib/rpm").glob("*"):
        if leftover.name != "rpmdb.sqlite":
            leftover.unlink()
    shutil.rmtree(top / "RPMS")


def rpm_purl(family: str, distro: str, src: str, epoch, version: str, release: str, binary: str) -> str:
    q = f"arch=noarch&distro={distro}" + (f"&epoch={epoch}" if epoch else "")
    return f"pkg:rpm/{family}/{binary}@{version}-{release}?{q}".replace("^", "%5E")


# -- Wolfi / Chainguard -----------------------------------------------------------------------------

# (package, version, origin)
APKS = [("openssl", "3.3.0-r0", "openssl"), ("libcrypto3", "3.3.0-r0", "openssl"),
        ("glibc", "2.38-r10", "glibc"), ("openssh-client", "9.7_p1-r4", "openssh"),
        ("busybox", "1.36.1-r5", "busybox")]


def apk_records() -> tuple[dict[str, list[dict]], dict[str, set]]:
    wolfi = [osv("CGA-TEST-0001", "Wolfi", "openssl", [{"introduced": "0"}, {"fixed": "3.3.1-r1"}],
                 aliases=["CVE-2099-9001"]),
             osv("CGA-TEST-0002", "Wolfi", "glibc", [{"introduced": "0"}, {"fixed": "2.38-r10"}]),
             osv("CGA-TEST-0003", "Wolfi", "openssh", [{"introduced": "0"}, {"fixed": "9.8_p1-r0"}]),
             osv("CGA-TEST-0004", "Wolfi", "busybox", [{"introduced": "0"}, {"fixed": "1.36.1-r2"}])]
    chainguard = [osv("CGA-TEST-0101", "Chainguard", "glibc", [{"introduced": "0"}, {"fixed": "2.38-r11"}]),
                  osv("CGA-TEST-0102", "Chainguard", "openssl", [{"introduced": "0"}, {"fixed": "3.2.0-r0"}])]
    expected = {"wolfi": {("openssl", "CVE-2099-9001"), ("libcrypto3", "CVE-2099-9001"),
                          ("openssh-client", "CGA-TEST-0003")},
                "chainguard": {("glibc", "CGA-TEST-0101")}}
    return {"wolfi": wolfi, "chainguard": chainguard}, expected


def apk_rootfs(root: Path, os_id: str) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text(f'ID={os_id}\nNAME="{os_id.title()}"\nPRETTY_NAME="{os_id.title()}"\n'
                                         'VERSION_ID="20230201"\n')
    (root / "lib/apk/db").mkdir(parents=True)
    (root / "lib/apk/db/installed").write_text("".join(
        f"C:Q1{hashlib.sha1(f'{n}{v}'.encode()).hexdigest()[:26]}=\nP:{n}\nV:{v}\nA:x86_64\nS:1000\nI:4000\nT:{n}\n"
        f"U:https://example.org\nL:MIT\no:{o}\nm:test\nt:1700000000\n\n" for n, v, o in APKS))


# -- the fixture ------------------------------------------------------------------------------------

def _sbom(name: str, purls: list[str]) -> str:
    return json.dumps({"bomFormat": "CycloneDX", "specVersion": "1.5",
                       "metadata": {"component": {"type": "operating-system", "name": name, "version": "1",
                                                  "purl": f"pkg:generic/{name}@1"}},
                       "components": [{"type": "library", "name": p.split("/")[-1].split("@")[0], "purl": p}
                                      for p in purls]})


def deb_purl(ns: str, distro: str, p: dict) -> str:
    from packageurl import PackageURL

    upstream = p["source"] if p["source_version"] == p["version"] else f"{p['source']}@{p['source_version']}"
    q = {"arch": p["arch"], "distro": distro}
    if p["source"] != p["name"] or p["source_version"] != p["version"]:
        q["upstream"] = upstream
    return PackageURL(type="deb", namespace=ns, name=p["name"], version=p["version"], qualifiers=q).to_string()


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> dict:
    """The workspace (built), the root file systems and what each should report."""
    from tests.interop.conftest import require_tool

    require_shared_data()
    require_tool("trivy")
    if not Path("/var/lib/dpkg/status").is_file() or "ID=debian" not in Path("/etc/os-release").read_text():
        pytest.fail("the Debian test needs this Debian 12 machine's /var/lib/dpkg/status and /etc/os-release")
    tmp = tmp_path_factory.mktemp("os")
    ws = make_workspace(tmp / "ws", packages=(), shared=True)
    pkg = ws / "os"
    for sub in ("lang", "debian", "rpm", "apk", "sbom"):
        (pkg / sub).mkdir(parents=True)
    (pkg / "Exportfile").write_text(EXPORTFILE)
    (pkg / "lang/PYSEC-TEST-1.json").write_text(json.dumps(
        osv("PYSEC-TEST-1", "PyPI", "requests", [{"introduced": "0"}, {"fixed": "2.20.0"}])))
    roots, expected, sboms = {}, {}, {}

    # Debian 12 from this machine
    root = tmp / "debian12"
    (root / "etc").mkdir(parents=True)
    (root / "var/lib/dpkg").mkdir(parents=True)
    for rel in ("etc/os-release", "etc/debian_version", "var/lib/dpkg/status"):
        shutil.copyfile("/" + rel, root / rel)
    debs = installed_debs((root / "var/lib/dpkg/status").read_text(encoding="utf-8"))
    records, expected["debian"] = debian_records(debs)
    for doc in records:
        (pkg / "debian" / f"{doc['id']}.json").write_text(json.dumps(doc))
    roots["debian"] = root
    sboms["debian"] = [deb_purl("debian", "debian-12", p) for p in debs] + [
        "pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1?arch=amd64&distro=debian-11&upstream=zlib"]

    # Ubuntu 22.04: the shared fixture
    fixture = SHARED_DATA / "osv-ubuntu/fixtures"
    shutil.copytree(fixture / "jammy-rootfs", tmp / "jammy")
    roots["ubuntu"] = tmp / "jammy"
    exp = json.loads((fixture / "expected.json").read_text())
    expected["ubuntu"] = {(p["package"], a) for p in exp["packages"] for a in p["advisories"]}
    ubuntu_debs = installed_debs((tmp / "jammy/var/lib/dpkg/status").read_text(encoding="utf-8"))
    sboms["ubuntu"] = [deb_purl("ubuntu", "ubuntu-22.04", p) for p in ubuntu_debs]

    # AlmaLinux 9 and Rocky Linux 9
    for key, eco, family, os_release, prefix in (
            ("alma", "AlmaLinux:9", "alma", 'NAME="AlmaLinux"\nID="almalinux"\nVERSION_ID="9.4"\n'
                                            'PRETTY_NAME="AlmaLinux 9.4 (Seafoam Ocelot)"\n', "ALSA-TEST"),
            ("rocky", "Rocky Linux:9", "rocky", 'NAME="Rocky Linux"\nID="rocky"\nVERSION_ID="9.4"\n'
                                                'PRETTY_NAME="Rocky Linux 9.4 (Blue Onyx)"\n', "RLSA-TEST"),
            ("opensuse", "openSUSE:Leap 15.5", "opensuse", 'NAME="openSUSE Leap"\nID="opensuse-leap"\n'
                                                           'VERSION_ID="15.5"\nPRETTY_NAME="openSUSE Leap 15.5"\n',
             "SUSE-TEST")):
        root = tmp / key
        (root / "etc").mkdir(parents=True)
        (root / "etc/os-release").write_text(os_release)
        build_rpmdb(root, tmp / f"{key}-build", VENDORS[eco])
        roots[key] = root
        records, expected[key] = rpm_records(eco, prefix)
        for doc in records:
            (pkg / "rpm" / f"{doc['id'].replace(':', '_')}.json").write_text(json.dumps(doc))
        distro = "opensuse-leap-15.5" if key == "opensuse" else f"{family}-9.4"
        sboms[key] = [rpm_purl(family, distro, s, e, v, r, b) for s, e, v, r, bins in RPMS for b in bins]
    sboms["rocky"].append(rpm_purl("rocky", "rocky-8.9", "bash", None, "4.4.20", "4.el8", "bash"))

    # Wolfi and Chainguard
    apk, apk_expected = apk_records()
    for key in ("wolfi", "chainguard"):
        apk_rootfs(tmp / key, key)
        roots[key] = tmp / key
        expected[key] = apk_expected[key]
        for doc in apk[key]:
            (pkg / "apk" / f"{doc['id']}.json").write_text(json.dumps(doc))
        sboms[key] = [f"pkg:apk/{key}/{n}@{v}?arch=x86_64&distro=20230201" + (f"&upstream={o}" if o != n else "")
                      for n, v, o in APKS]

    for key, purls in sboms.items():
        (pkg / "sbom" / f"{key}.cdx.json").write_text(_sbom(key, purls))
    start = time.monotonic()
    run_cli(["-q", "build", "//os:trivy-db", "//os:policy"], cwd=ws, cache=tmp / "cache", check=True, timeout=300)
    return {"ws": ws, "tmp": tmp, "roots": roots, "expected": expected, "build_s": time.monotonic() - start}


@pytest.fixture(scope="module")
def trivy_results(scene) -> dict:
    """{distro: {(package, vulnerability id): vulnerability entry}} from `trivy rootfs`."""
    from tests.interop.conftest import require_tool

    trivy = require_tool("trivy")
    cache = trivy_cache(scene["ws"] / "stella-out/os/trivy-db", scene["tmp"] / "trivy-cache")
    out = {}
    for key, root in scene["roots"].items():
        report = run_trivy(trivy, cache, root, command="rootfs")
        families = {r.get("Type") for r in report.get("Results") or ()}
        assert {"debian": "debian", "ubuntu": "ubuntu", "alma": "alma", "rocky": "rocky", "opensuse": "opensuse-leap",
                "wolfi": "wolfi", "chainguard": "chainguard"}[key] in families, (key, report.get("Metadata", {}).get("OS"))
        out[key] = {(v["PkgName"], v["VulnerabilityID"]): v
                    for r in report.get("Results") or () for v in r.get("Vulnerabilities") or ()}
    return out


def policy_findings(scene) -> dict:
    """{distro (the SBOM's subject): {(package, Trivy's id): finding}} from json:policy."""
    import zstandard
    from packageurl import PackageURL

    data = (scene["ws"] / "stella-out/os/policy/data/policy/evaluations.jsonl.zst").read_bytes()
    out: dict = {}
    for line in zstandard.ZstdDecompressor().decompressobj().decompress(data).splitlines():
        f = json.loads(line)
        vid = next((a for a in f["aliases"] if a.startswith("CVE-")), f["advisory_id"])
        subject = f["subject"].split("/")[-1].split("@")[0]
        out.setdefault(subject, {})[(PackageURL.from_string(f["purl"]).name, vid)] = f
    return out


@pytest.mark.parametrize("distro", ["debian", "ubuntu", "alma", "rocky", "opensuse", "wolfi", "chainguard"])
def test_trivy_reports_exactly_the_expected_findings(scene, trivy_results, distro):
    got, want = set(trivy_results[distro]), scene["expected"][distro]
    assert want, f"{distro}: the test data must expect some findings"
    assert got == want, f"{distro}: only Trivy: {sorted(got - want)}\nonly expected: {sorted(want - got)}"


@pytest.mark.parametrize("distro", ["debian", "ubuntu", "alma", "rocky", "opensuse", "wolfi", "chainguard"])
def test_json_policy_agrees_with_trivy_finding_for_finding(scene, trivy_results, distro):
    policy = policy_findings(scene).get(distro, {})
    assert set(policy) == set(trivy_results[distro])
    for key, f in policy.items():
        v = trivy_results[distro][key]
        # the same fixed version (Trivy shows "" for a record without a fix) and, where the record
        # rates it, the same severity
        assert (v.get("FixedVersion") or None) == f["fixed_version"], key
        if f["severity"]["type"] != "unknown":
            assert v["Severity"] == f["severity"]["level"].upper(), key


def test_unfixed_debian_records_show_as_affected(scene, trivy_results):
    unfixed = [v for v in trivy_results["debian"].values() if not v.get("FixedVersion")]
    assert unfixed, "the Debian records include unfixed ones"
    assert {v["Status"] for v in unfixed} == {"affected"}
    assert {v["Status"] for v in trivy_results["debian"].values() if v.get("FixedVersion")} == {"fixed"}
    assert {v["DataSource"]["ID"] for v in trivy_results["debian"].values()} == {"debian"}


def test_components_of_releases_without_data_are_not_evaluated(scene):
    index = json.loads((scene["ws"] / "stella-out/os/policy/indexes/findings.index.json").read_bytes())
    reasons = {(purl.split("?")[0], reason) for purl, _, reason in index["componentsNotEvaluated"]}
    assert ("pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1", "no Debian 11 advisories in the inputs") in reasons
    assert ("pkg:rpm/rocky/bash@4.4.20-4.el8", "no Rocky Linux 8 advisories in the inputs") in reasons
    assert len(reasons) == 2, reasons


def test_one_db_from_every_source_passes_bbolt_check_and_rebuilds_identically(scene, tmp_path):
    from tests.interop.conftest import require_tool
    from tests.interop.test_trivy_bbolt_check import bbolt_check

    out = scene["ws"] / "stella-out/os/trivy-db"
    bbolt_check(require_tool("bbolt"), out / "trivy.db")
    mapping = json.loads((out / "mapping.json").read_bytes())
    assert {"pip::OS Test Language Feed", "alpine 3.10", "debian 12", "ubuntu 22.04", "ubuntu 20.04",
            "alma 9", "rocky 9", "openSUSE Leap 15.5", "wolfi", "chainguard"} <= set(mapping["buckets"])
    # Ubuntu Pro records go to the ESM buckets Trivy reads for ESM-enabled systems
    assert {"ubuntu 14.04-ESM", "ubuntu 16.04-ESM", "ubuntu 18.04-ESM"} <= set(mapping["buckets"])
    assert mapping["notMapped"] == [] and mapping["approximated"] == []   # every record is exact
    # a second workspace in another directory, with its own cache: the same bytes
    ws2 = make_workspace(tmp_path / "ws2", packages=(), shared=True)
    shutil.copytree(scene["ws"] / "os", ws2 / "os", ignore=shutil.ignore_patterns("stella-out"))
    run_cli(["-q", "build", "//os:trivy-db"], cwd=ws2, cache=tmp_path / "cache2", check=True, timeout=300)
    for name in ("trivy.db", "db.tar.gz", "metadata.json", "mapping.json"):
        assert (ws2 / "stella-out/os/trivy-db" / name).read_bytes() == (out / name).read_bytes(), name


def test_rpm_order_matches_rpms_own_rpmvercmp(tool):
    """univers' rpmvercmp (what json:policy and the mapping use) against the real rpm's, on rpm's
    own test vectors (tests/test_os_distros.py RPMVERCMP) plus epoch/release forms."""
    from stella_build.rules.evidence.versions import rpm_compare
    from tests.test_os_distros import RPMVERCMP

    rpm = tool("rpm")
    pairs = [(a, b) for a, b, _ in RPMVERCMP] + [("1:3.0.7-24.el9", "1:3.0.7-25.el9"), ("2:1.0-1", "1:9.9-1")]
    # rpm's Lua print() adds no separator inside one macro expansion: write one
    lua = "%{lua: " + " ".join(
        f'print(tostring(rpm.vercmp("{a}", "{b}")) .. " ")' for a, b in pairs) + "}"
    proc = subprocess.run([rpm, "--eval", lua], capture_output=True, text=True, timeout=60, check=True)
    theirs = [int(x) for x in proc.stdout.split()]
    assert len(theirs) == len(pairs)
    ours = [rpm_compare(a, b) for a, b in pairs]
    assert ours == theirs, [(p, o, t) for p, o, t in zip(pairs, ours, theirs) if o != t]
