"""Operating-system distributions in trivy:db and json:policy (issue 14), without real Trivy:
ecosystem → bucket names, package keys and values as Trivy's OS detectors read them, RPM order
against rpm's own rpmvercmp test vectors, release matching of purl ``distro`` qualifiers,
components of releases without data, and records that cannot be mapped (listed, never dropped).
Real Trivy over root file systems: tests/interop/test_os_trivy.py."""
from __future__ import annotations

import json

import pytest

from stella_build.rules.evidence.distros import Release, osv_release, purl_release, distro
from stella_build.rules.evidence.model import SourceInfo
from stella_build.rules.evidence.policy import (
    advisory_keys, component_key, component_version, components_without_data, data_release,
    match_components, release_applies,
)
from stella_build.rules.evidence.sources.osv import normalize_osv
from stella_build.rules.evidence.versions import compare, rpm_compare
from stella_build.rules.formats.trivy.schema import (
    NotMappable, merge_advisories, record_entries, trivy_route,
)
from tests.conftest import make_workspace, run_cli

SRC = SourceInfo(name="OS Test Feed")

# rpm's own version comparison test vectors: rpm-software-management/rpm tests/rpmvercmp.at
# (RPMVERCMP(a, b, result) lines, including the tilde and caret cases), as data.
RPMVERCMP = [
    ('1.0', '1.0', 0), ('1.0', '2.0', -1), ('2.0', '1.0', 1), ('2.0.1', '2.0.1', 0),
    ('2.0', '2.0.1', -1), ('2.0.1', '2.0', 1), ('2.0.1a', '2.0.1a', 0), ('2.0.1a', '2.0.1', 1),
    ('2.0.1', '2.0.1a', -1), ('5.5p1', '5.5p1', 0), ('5.5p1', '5.5p2', -1), ('5.5p2', '5.5p1', 1),
    ('5.5p10', '5.5p10', 0), ('5.5p1', '5.5p10', -1), ('5.5p10', '5.5p1', 1),
    ('10xyz', '10.1xyz', -1), ('10.1xyz', '10xyz', 1), ('xyz10', 'xyz10', 0),
    ('xyz10', 'xyz10.1', -1), ('xyz10.1', 'xyz10', 1), ('xyz.4', 'xyz.4', 0), ('xyz.4', '8', -1),
    ('8', 'xyz.4', 1), ('xyz.4', '2', -1), ('2', 'xyz.4', 1), ('5.5p2', '5.6p1', -1),
    ('5.6p1', '5.5p2', 1), ('5.6p1', '6.5p1', -1), ('6.5p1', '5.6p1', 1), ('6.0.rc1', '6.0', 1),
    ('6.0', '6.0.rc1', -1), ('10b2', '10a1', 1), ('10a2', '10b2', -1), ('1.0aa', '1.0aa', 0),
    ('1.0a', '1.0aa', -1), ('1.0aa', '1.0a', 1), ('10.0001', '10.0001', 0), ('10.0001', '10.1', 0),
    ('10.1', '10.0001', 0), ('10.0001', '10.0039', -1), ('10.0039', '10.0001', 1),
    ('4.999.9', '5.0', -1), ('5.0', '4.999.9', 1), ('20101121', '20101121', 0),
    ('20101121', '20101122', -1), ('20101122', '20101121', 1), ('2_0', '2_0', 0), ('2.0', '2_0', 0),
    ('2_0', '2.0', 0), ('a', 'a', 0), ('a+', 'a+', 0), ('a+', 'a_', 0), ('a_', 'a+', 0),
    ('+a', '+a', 0), ('+a', '_a', 0), ('_a', '+a', 0), ('+_', '+_', 0), ('_+', '+_', 0),
    ('_+', '_+', 0), ('+', '_', 0), ('_', '+', 0), ('1.0~rc1', '1.0~rc1', 0),
    ('1.0~rc1', '1.0', -1), ('1.0', '1.0~rc1', 1), ('1.0~rc1', '1.0~rc2', -1),
    ('1.0~rc2', '1.0~rc1', 1), ('1.0~rc1~git123', '1.0~rc1~git123', 0),
    ('1.0~rc1~git123', '1.0~rc1', -1), ('1.0~rc1', '1.0~rc1~git123', 1), ('1.0^', '1.0^', 0),
    ('1.0^', '1.0', 1), ('1.0', '1.0^', -1), ('1.0^git1', '1.0^git1', 0), ('1.0^git1', '1.0', 1),
    ('1.0', '1.0^git1', -1), ('1.0^git1', '1.0^git2', -1), ('1.0^git2', '1.0^git1', 1),
    ('1.0^git1', '1.01', -1), ('1.01', '1.0^git1', 1), ('1.0^20160101', '1.0^20160101', 0),
    ('1.0^20160101', '1.0.1', -1), ('1.0.1', '1.0^20160101', 1),
    ('1.0^20160101^git1', '1.0^20160101^git1', 0), ('1.0^20160102', '1.0^20160101^git1', 1),
    ('1.0^20160101^git1', '1.0^20160102', -1), ('1.0~rc1^git1', '1.0~rc1^git1', 0),
    ('1.0~rc1^git1', '1.0~rc1', 1), ('1.0~rc1', '1.0~rc1^git1', -1),
    ('1.0^git1~pre', '1.0^git1~pre', 0), ('1.0^git1', '1.0^git1~pre', 1),
    ('1.0^git1~pre', '1.0^git1', -1),
]


def osv(vid: str, eco: str, name: str, events: list[dict] | None, **extra) -> dict:
    aff = {"package": {"ecosystem": eco, "name": name}}
    if events is not None:
        aff["ranges"] = [{"type": "ECOSYSTEM", "events": events}]
    doc = {"id": vid, "modified": "2025-01-01T00:00:00Z", "affected": [aff]}
    doc.update(extra)
    return doc


def advisory(doc: dict, **affected_extra):
    doc["affected"][0].update(affected_extra)
    (adv,) = normalize_osv(doc, f"t/{doc['id']}.json", SRC)
    return adv


def component(purl: str, path: str = "t/app.cdx.json") -> dict:
    from stella_build.rules.evidence.sources.sbom import parse_cyclonedx

    doc = {"bomFormat": "CycloneDX", "specVersion": "1.5",
           "components": [{"type": "library", "name": "x", "purl": purl}]}
    (comp,) = parse_cyclonedx(doc, path)
    return comp.to_canonical()


def value(adv) -> tuple[str, list[str], list[str], dict]:
    """(bucket, package keys, ids, decoded value) trivy:db writes for one distribution record."""
    kind, bucket, d = trivy_route(adv.ecosystem)
    assert kind == "distro"
    entries, _ = record_entries(adv, bucket, d)
    return (bucket, list(dict.fromkeys(e[1] for e in entries)), list(dict.fromkeys(e[2] for e in entries)),
            json.loads(merge_advisories([entries[0][3]])))


# -- version orders ---------------------------------------------------------------------------------

def test_rpm_order_follows_rpms_own_rpmvercmp_vectors():
    assert len(RPMVERCMP) == 91
    wrong = [(a, b, want, compare("Rocky Linux:9", a, b)) for a, b, want in RPMVERCMP
             if compare("Rocky Linux:9", a, b) != want]
    assert wrong == []


@pytest.mark.parametrize("a, b, want", [
    ("1:3.0.7-24.el9", "1:3.0.7-25.el9", -1),   # release decides
    ("2:1.0-1.el9", "1:9.9-1.el9", 1),          # a higher epoch wins whatever the version
    ("3.0.7-24.el9", "0:3.0.7-24.el9", 0),      # no epoch is epoch 0
    ("1.0~rc1-1.el9", "1.0-1.el9", -1),         # ~ sorts before the release
    ("1.0^git1-1.el9", "1.0-1.el9", 1),         # ^ sorts after the base version ...
    ("1.0^git1-1.el9", "1.0.1-1.el9", -1),      # ... and before the next one
    ("8.7p1-38.el9_4.1", "8.7p1-38.el9", 1),
])
def test_rpm_epoch_version_release_order(a, b, want):
    assert rpm_compare(a, b) == want
    assert compare("AlmaLinux:9", a, b) == compare("openSUSE:Leap 15.5", a, b) == want


def test_dpkg_and_apk_orders_for_the_new_distributions():
    assert compare("Debian:12", "2.36-9+deb12u3", "2.36-9+deb12u10") == -1
    assert compare("Debian:12", "1:9.2p1-2+deb12u3", "9.9-1") == 1          # epoch
    assert compare("Ubuntu:22.04:LTS", "1.0~rc1-1", "1.0-1") == -1           # ~
    assert compare("Wolfi", "9.7_p1-r4", "9.8_p1-r0") == -1
    assert compare("Chainguard", "2.38-r10", "2.38-r9") == 1


# -- ecosystems → Trivy buckets ---------------------------------------------------------------------

@pytest.mark.parametrize("eco, bucket", [
    ("Debian:12", "debian 12"), ("Debian:11", "debian 11"),
    ("Ubuntu:22.04:LTS", "ubuntu 22.04"), ("Ubuntu:23.10", "ubuntu 23.10"),
    ("Ubuntu:Pro:16.04:LTS", "ubuntu 16.04-ESM"), ("Ubuntu:14.04:LTS:Pro", "ubuntu 14.04-ESM"),
    ("AlmaLinux:9", "alma 9"), ("AlmaLinux:8", "alma 8"), ("Rocky Linux:9", "rocky 9"),
    ("Wolfi", "wolfi"), ("Chainguard", "chainguard"),
    ("openSUSE:Leap 15.5", "openSUSE Leap 15.5"), ("openSUSE:Tumbleweed", "openSUSE Tumbleweed"),
    ("openSUSE:Leap Micro 5.5", "openSUSE Leap Micro 5.5"),
    ("SUSE:Linux Enterprise Server 15 SP5", "SUSE Linux Enterprise 15.5"),
    ("SUSE:Linux Enterprise Module for Basesystem 15 SP5", "SUSE Linux Enterprise 15.5"),
    ("SUSE:Linux Enterprise Server 12 SP5", "SUSE Linux Enterprise 12.5"),
    ("SUSE:Linux Enterprise Micro 5.5", "SUSE Linux Enterprise Micro 5.5"),
    ("SUSE:Linux Micro 6.0", "SUSE Linux Enterprise Micro 6.0"),
])
def test_distribution_ecosystems_map_to_trivys_buckets(eco, bucket):
    kind, got, d = trivy_route(eco)
    assert (kind, got) == ("distro", bucket)
    assert d.base == eco.split(":", 1)[0]


@pytest.mark.parametrize("eco, code, reason", [
    ("Mageia:9", "no-trivy-bucket", "no Trivy bucket for ecosystem 'Mageia'"),
    ("Amazon Linux:2023", "no-trivy-bucket", "no Trivy bucket for ecosystem 'Amazon Linux'"),
    ("Red Hat:enterprise_linux:9::baseos", "no-trivy-bucket", "no Trivy bucket for ecosystem 'Red Hat'"),
    ("GIT", "git-only", "GIT-only record: Trivy has no commit-range buckets"),
    ("Debian", "unknown-release", "Debian records need a release suffix ('Debian:<release>')"),
    ("Debian:sid", "no-trivy-bucket", "Debian sid has no Trivy bucket (trivy-db maps numbered releases only)"),
    ("Debian:bookworm-backports", "unknown-release", "unrecognized release in ecosystem 'Debian:bookworm-backports'"),
    ("Ubuntu:Pro:FIPS:18.04:LTS", "no-trivy-bucket", "Ubuntu stream 'pro:fips' has no Trivy bucket"),
    ("Ubuntu:LTS", "unknown-release", "unrecognized release in ecosystem 'Ubuntu:LTS'"),
    ("Rocky Linux:nine", "unknown-release", "unrecognized release in ecosystem 'Rocky Linux:nine'"),
    ("Wolfi:2024", "unknown-release", "Wolfi has no releases, got suffix '2024'"),
    ("SUSE:Manager Server 4.3", "unknown-release", "unrecognized SUSE product 'Manager Server 4.3'"),
])
def test_unknown_distributions_and_releases_are_not_mappable_with_a_reason(eco, code, reason):
    with pytest.raises(NotMappable) as exc:
        trivy_route(eco)
    assert (exc.value.code, str(exc.value)) == (code, reason)


# -- values as Trivy's OS detectors read them ------------------------------------------------------

def test_debian_record_is_one_fixed_version_under_its_source_package():
    adv = advisory(osv("DSA-5514-1", "Debian:12", "glibc", [{"introduced": "0"}, {"fixed": "2.36-9+deb12u3"}],
                       aliases=["CVE-2023-4911"]))
    assert value(adv) == ("debian 12", ["glibc"], ["CVE-2023-4911"],
                          {"FixedVersion": "2.36-9+deb12u3", "VendorIDs": ["DSA-5514-1"]})


def test_record_without_fix_is_unfixed_with_status_affected_for_dpkg_distributions():
    adv = advisory(osv("DEB-U", "Debian:12", "zlib", [{"introduced": "0"}]))
    assert value(adv)[3] == {"Status": 2}   # trivy-db StatusAffected; no FixedVersion = unfixed
    adv = advisory(osv("UBU-U", "Ubuntu:22.04:LTS", "zlib", [{"introduced": "0"}]))
    assert value(adv)[3] == {"Status": 2}


@pytest.mark.parametrize("eco", ["Rocky Linux:9", "AlmaLinux:9", "Wolfi", "Chainguard", "SUSE:Linux Enterprise Server 15 SP5"])
def test_record_without_fix_is_not_mappable_for_rpm_and_apk_distributions(eco):
    adv = advisory(osv("X-1", eco, "bash", [{"introduced": "0"}]))
    kind, bucket, d = trivy_route(eco)
    with pytest.raises(NotMappable, match="no fixed version"):
        record_entries(adv, bucket, d)


def test_lower_bound_is_written_as_an_approximation_and_inclusive_tops_are_not_mappable():
    adv = advisory(osv("ALSA-X", "AlmaLinux:9", "openssl", [{"introduced": "1:3.0.0-1.el9"}, {"fixed": "1:3.0.7-25.el9"}]))
    kind, bucket, d = trivy_route(adv.ecosystem)
    entries, note = record_entries(adv, bucket, d)
    assert json.loads(merge_advisories([entries[0][3]]))["FixedVersion"] == "1:3.0.7-25.el9"
    assert note == "affected from 1:3.0.0-1.el9 only; Trivy also reports versions below it"
    # exact: several ranges from the beginning, explicit versions inside them
    adv = advisory(osv("DSA-X", "Debian:12", "a", [{"introduced": "0"}, {"fixed": "1.0-2"}]),
                   versions=["1.0-1"])
    assert record_entries(adv, "debian 12", d)[1] is None
    for events, versions in (([{"introduced": "0"}, {"last_affected": "1.0-1"}], []),
                             ([{"introduced": "0"}, {"fixed": "1.0-1"}], ["1.0-5"])):
        adv = advisory(osv("DSA-Y", "Debian:12", "a", events), versions=versions)
        with pytest.raises(NotMappable, match="not expressible as installed < FixedVersion"):
            record_entries(adv, "debian 12", trivy_route("Debian:12")[2])


def test_rpm_records_are_keyed_by_their_binaries_when_they_list_them():
    doc = osv("SUSE-SU-1", "SUSE:Linux Enterprise Server 15 SP5", "openssl-3",
              [{"introduced": "0"}, {"fixed": "3.0.8-150500.5.8.1"}])
    adv = advisory(doc, ecosystem_specific={"binaries": [{"libopenssl3": "3.0.8-150500.5.8.1",
                                                          "openssl-3": "3.0.8-150500.5.8.1"}]})
    assert value(adv)[:2] == ("SUSE Linux Enterprise 15.5", ["libopenssl3", "openssl-3"])
    assert advisory_keys(adv.to_canonical()) == [("SUSE", "libopenssl3"), ("SUSE", "openssl-3")]
    # dpkg distributions are looked up by source package: Ubuntu's binaries list is not used
    ubu = advisory(osv("USN-1", "Ubuntu:22.04:LTS", "util-linux", [{"introduced": "0"}, {"fixed": "2.37.2-4ubuntu3.4"}]),
                   ecosystem_specific={"binaries": [{"bsdutils": "1:2.37.2-4ubuntu3.4"}]})
    assert value(ubu)[1] == ["util-linux"]
    assert advisory_keys(ubu.to_canonical()) == [("Ubuntu", "util-linux")]


def test_colliding_distribution_records_merge_to_the_highest_fix_and_unfixed_wins():
    member = {"kind": "distro", "ordering": "Debian", "vendor_ids": []}
    assert json.loads(merge_advisories([{**member, "fixed": "1.0-2"}, {**member, "fixed": "1.0-10", "vendor_ids": ["DLA-1"]}])) == \
        {"FixedVersion": "1.0-10", "VendorIDs": ["DLA-1"]}
    assert json.loads(merge_advisories([{**member, "fixed": "1.0-2"}, {**member, "fixed": ""}])) == {"Status": 2}
    # a fix the order cannot parse (never compared inside its own one-event record): deterministic
    rpm = {"kind": "distro", "ordering": "Rocky Linux", "vendor_ids": []}
    members = [{**rpm, "fixed": "1.0-1.el9"}, {**rpm, "fixed": "x:1.0-1.el9"}]
    assert merge_advisories(members) == merge_advisories(members[::-1]) == b'{"FixedVersion":"x:1.0-1.el9"}'


# -- json:policy: components and releases -----------------------------------------------------------

@pytest.mark.parametrize("purl, key, eco, version", [
    # dpkg: the source package (Syft's upstream qualifier) and its version when it names one
    ("pkg:deb/debian/libc6@2.36-9%2Bdeb12u3?arch=amd64&distro=debian-12&upstream=glibc",
     ("Debian", "glibc"), "Debian:12", "2.36-9+deb12u3"),
    ("pkg:deb/ubuntu/bsdutils@1:2.37.2-4ubuntu3.4?distro=ubuntu-22.04&upstream=util-linux%402.37.2-4ubuntu3.4",
     ("Ubuntu", "util-linux"), "Ubuntu:22.04:LTS", "2.37.2-4ubuntu3.4"),
    ("pkg:deb/debian/bash@5.2.15-2%2Bb2?distro=debian-12", ("Debian", "bash"), "Debian:12", "5.2.15-2+b2"),
    # RPM: the RPM's own name (case kept) and epoch:version-release
    ("pkg:rpm/rocky/openssl-libs@3.0.7-24.el9?arch=x86_64&epoch=1&distro=rocky-9.3",
     ("Rocky Linux", "openssl-libs"), "Rocky Linux:9", "1:3.0.7-24.el9"),
    ("pkg:rpm/almalinux/NetworkManager@1.46.0-4.el9?distro=alma-9.4",
     ("AlmaLinux", "NetworkManager"), "AlmaLinux:9", "1.46.0-4.el9"),
    ("pkg:rpm/suse/libopenssl3@3.0.8-150500.5.7.1?distro=sles-15.5", ("SUSE", "libopenssl3"),
     "SUSE:Linux Enterprise Server 15 SP5", "3.0.8-150500.5.7.1"),
    # apk: the origin package
    ("pkg:apk/wolfi/libcrypto3@3.3.0-r0?distro=20230201&upstream=openssl", ("Wolfi", "openssl"), "Wolfi", "3.3.0-r0"),
    ("pkg:apk/chainguard/glibc@2.38-r10", ("Chainguard", "glibc"), "Chainguard", "2.38-r10"),
])
def test_os_components_are_matched_as_trivys_detectors_look_them_up(purl, key, eco, version):
    comp = component(purl)
    assert component_key(comp) == key
    assert component_version(eco, comp) == version


@pytest.mark.parametrize("eco, purl, want", [
    ("AlmaLinux:9", "pkg:rpm/alma/bash@5.1.8-9.el9?distro=alma-9.4", (True, None)),
    ("AlmaLinux:9", "pkg:rpm/almalinux/bash@5.1.8-9.el9?distro=almalinux-9.4", (True, None)),
    ("AlmaLinux:9", "pkg:rpm/alma/bash@4.4.20-4.el8?distro=alma-8.10", (False, None)),
    ("Rocky Linux:9", "pkg:rpm/rocky/bash@5.1.8-9.el9?distro=rocky-9.3", (True, None)),
    ("Rocky Linux:9", "pkg:rpm/rocky/bash@5.1.8-9.el9", (False, "no distro qualifier to match Rocky Linux:9 records")),
    ("SUSE:Linux Enterprise Server 15 SP5", "pkg:rpm/suse/bash@4.4-9.1?distro=sles-15.5", (True, None)),
    ("SUSE:Linux Enterprise Module for Basesystem 15 SP5", "pkg:rpm/suse/bash@4.4-9.1?distro=sles-15.5", (True, None)),
    ("SUSE:Linux Enterprise Server 15 SP5", "pkg:rpm/suse/bash@4.4-9.1?distro=sles-15.4", (False, None)),
    ("openSUSE:Leap 15.5", "pkg:rpm/opensuse/bash@4.4-9.1?distro=opensuse-leap-15.5", (True, None)),
    ("openSUSE:Tumbleweed", "pkg:rpm/opensuse/bash@5.2-1.1?distro=opensuse-tumbleweed-20240101", (True, None)),
    ("Debian:12", "pkg:deb/debian/vim@2:9.0.1378-2?distro=debian-12.5", (True, None)),
])
def test_release_of_rpm_distributions_matches_the_distro_qualifier(eco, purl, want):
    assert release_applies(eco, component(purl)) == want


def test_releases_read_from_osv_suffixes_and_distro_qualifiers():
    assert osv_release("Ubuntu:Pro:18.04:LTS")[1] == Release("Ubuntu", "18.04", "pro")
    assert osv_release("Ubuntu:16.04:LTS:Pro")[1] == Release("Ubuntu", "16.04", "pro")
    assert purl_release(distro("Ubuntu"), "jammy") == Release("Ubuntu", "22.04")
    assert purl_release(distro("Debian"), "bookworm") == Release("Debian", "12")
    assert purl_release(distro("AlmaLinux"), "el9") == Release("AlmaLinux", "9")
    assert purl_release(distro("SUSE"), "opensuse-leap-15.5") is None     # not a SUSE product
    assert purl_release(distro("Wolfi"), "anything") == Release("Wolfi", "")
    assert data_release("Debian:12") == ("Debian", "12") and data_release("Wolfi") == ("Wolfi", "")
    assert data_release("Debian") == ("Debian", "*") and data_release("PyPI") is None


def test_components_of_releases_without_data_are_listed():
    comps = [component(p) for p in (
        "pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1?distro=debian-12&upstream=zlib",
        "pkg:deb/debian/zlib1g@1:1.2.11.dfsg-2?distro=debian-11&upstream=zlib",
        "pkg:rpm/rocky/bash@4.4.20-4.el8?distro=rocky-8.9",
        "pkg:apk/chainguard/glibc@2.38-r10",
        "pkg:pypi/requests@2.19.1",
        "pkg:deb/debian/vim@2:9.0.1378-2")]           # no distro, but Debian data exists: per record
    got = components_without_data(comps, {("Debian", "12"), ("Rocky Linux", "9")})
    assert got == [
        ["pkg:deb/debian/zlib1g@1:1.2.11.dfsg-2?distro=debian-11&upstream=zlib", "t/app.cdx.json",
         "no Debian 11 advisories in the inputs"],
        ["pkg:rpm/rocky/bash@4.4.20-4.el8?distro=rocky-8.9", "t/app.cdx.json", "no Rocky Linux 8 advisories in the inputs"],
        ["pkg:apk/chainguard/glibc@2.38-r10", "t/app.cdx.json", "no Chainguard advisories in the inputs"],
    ]
    # a record without a release suffix covers every release of its distribution
    assert components_without_data(comps[:2], {("Debian", "*")}) == []


def test_policy_matches_rpm_binaries_with_epochs():
    adv = advisory(osv("RLSA-1", "Rocky Linux:9", "openssl", [{"introduced": "0"}, {"fixed": "1:3.0.7-25.el9"}]),
                   ecosystem_specific={"binaries": ["openssl", "openssl-libs"]}).to_canonical()
    comps = [component("pkg:rpm/rocky/openssl-libs@3.0.7-24.el9?epoch=1&distro=rocky-9.3"),
             component("pkg:rpm/rocky/openssl-libs@3.0.7-25.el9?epoch=1&distro=rocky-9.3"),
             component("pkg:rpm/rocky/openssl-libs@3.0.7-26.el9?distro=rocky-9.3")]   # epoch 0: below 1:
    matches, errors, skipped = match_components(adv, comps)
    assert [(m["installed_version"], m["fixed_version"]) for m in matches] == [
        ("1:3.0.7-24.el9", "1:3.0.7-25.el9"), ("3.0.7-26.el9", "1:3.0.7-25.el9")]
    assert errors == skipped == []


# -- builds: the sample profile and bad input ------------------------------------------------------

def test_sample_trivy_db_has_the_os_buckets(tmp_path):
    from stella_build.rules.formats.trivy.bbolt import BboltReader

    ws = make_workspace(tmp_path / "ws")
    run_cli(["-q", "build", "//profiles:trivy-db"], cwd=ws, cache=tmp_path / "c", check=True)
    out = ws / "stella-out/profiles/trivy-db"
    db = BboltReader(out / "trivy.db")
    get = lambda *path: json.loads(db.get(tuple(p.encode() for p in path[:-1]), path[-1].encode()))  # noqa: E731
    assert get("debian 12", "openssh", "CVE-2024-6387") == {"FixedVersion": "1:9.2p1-2+deb12u3",
                                                           "VendorIDs": ["STELLA-SAMPLE-2024-0032"]}
    assert get("ubuntu 22.04", "glibc", "CVE-2023-4911")["FixedVersion"] == "2.35-0ubuntu3.4"
    assert get("alma 9", "glibc", "CVE-2023-4911")["FixedVersion"] == "2.34-60.el9_2.7"
    assert get("rocky 9", "openssh", "CVE-2024-6387")["FixedVersion"] == "8.7p1-38.el9_4.1"
    assert get("wolfi", "openssh", "CVE-2024-6387")["FixedVersion"] == "9.8_p1-r0"
    assert get("data-source", "debian 12") == {"ID": "debian", "Name": "Debian Security Tracker",
                                              "URL": "https://security-tracker.debian.org/tracker/"}
    vuln = get("vulnerability", "CVE-2024-6387")
    assert vuln["VendorSeverity"] == {"debian": 3, "rocky": 3, "ubuntu": 3, "wolfi": 3}
    mapping = json.loads((out / "mapping.json").read_bytes())
    assert {"debian 12", "ubuntu 22.04", "alma 9", "rocky 9", "wolfi", "pip::stella-build sample advisories"} \
        <= set(mapping["buckets"])
    assert mapping["notMapped"] == [] and mapping["approximated"] == []


ODD_EXPORTFILE = """[package]
source_date_epoch = 1735689600

[targets.odd]
rule = "osv_source"
srcs = ["osv/*.json"]
source = { name = "Odd Feed" }

[targets.raw]
rule = "json_raw"
deps = [":odd"]

[targets.trivy-db]
rule = "trivy_db"
deps = [":odd"]
"""

ODD_RECORDS = [
    osv("MGASA-2024-0001", "Mageia:9", "openssh", [{"introduced": "0"}, {"fixed": "9.3p1-2.2.mga9"}]),
    osv("MGASA-2024-0002", "Mageia:9", "glibc", [{"introduced": "0"}, {"fixed": "2.36-53.mga9"}]),
    osv("ALAS-2024-0001", "Amazon Linux:2023", "openssh", [{"introduced": "0"}, {"fixed": "8.7p1-8.amzn2023.0.11"}]),
    osv("DEB-SID-1", "Debian:sid", "glibc", [{"introduced": "0"}, {"fixed": "2.37-12"}]),
    osv("DEB-NONE-1", "Debian:woody-lts", "glibc", [{"introduced": "0"}, {"fixed": "2.2.5-11.8"}]),
    osv("RLSA-NOFIX-1", "Rocky Linux:9", "bash", [{"introduced": "0"}]),
    osv("DEB-APPROX-1", "Debian:12", "openssl", [{"introduced": "3.0.0-1"}, {"fixed": "3.0.11-1~deb12u2"}]),
    osv("DEB-OK-1", "Debian:12", "zlib", [{"introduced": "0"}, {"fixed": "1:1.2.13.dfsg-1"}]),
]


def test_records_of_unknown_distributions_or_releases_are_kept_and_listed_never_dropped(tmp_path):
    ws = make_workspace(tmp_path / "ws", packages=())
    (ws / "odd/osv").mkdir(parents=True)
    (ws / "odd/Exportfile").write_text(ODD_EXPORTFILE)
    for doc in ODD_RECORDS:
        (ws / "odd/osv" / f"{doc['id']}.json").write_text(json.dumps(doc))
    result = run_cli(["--output", "json", "build", "//odd:raw", "//odd:trivy-db"], cwd=ws, cache=tmp_path / "c")
    assert result.code == 0, result.stdout + result.stderr
    summary = result.json()
    assert "stella-out/odd/trivy-db/mapping.json" in summary["outputs"]["//odd:trivy-db"]
    mapping = json.loads((ws / "stella-out/odd/trivy-db/mapping.json").read_bytes())
    assert mapping["records"] == len(ODD_RECORDS)
    assert [(g["ecosystem"], g["code"], g["reason"], g["records"], g["ids"]) for g in mapping["notMapped"]] == [
        ("Amazon Linux:2023", "no-trivy-bucket", "no Trivy bucket for ecosystem 'Amazon Linux'", 1, ["ALAS-2024-0001"]),
        ("Debian:sid", "no-trivy-bucket", "Debian sid has no Trivy bucket (trivy-db maps numbered releases only)",
         1, ["DEB-SID-1"]),
        ("Debian:woody-lts", "unknown-release", "unrecognized release in ecosystem 'Debian:woody-lts'", 1, ["DEB-NONE-1"]),
        ("Mageia:9", "no-trivy-bucket", "no Trivy bucket for ecosystem 'Mageia'", 2, ["MGASA-2024-0001", "MGASA-2024-0002"]),
        ("Rocky Linux:9", "no-fixed-version",
         "no fixed version: Trivy's Rocky Linux detector reports only installed < FixedVersion", 1, ["RLSA-NOFIX-1"]),
    ]
    assert mapping["approximated"] == [{
        "ecosystem": "Debian:12", "id": "DEB-APPROX-1", "package": "openssl", "path": "odd/osv/DEB-APPROX-1.json",
        "note": "affected from 3.0.0-1 only; Trivy also reports versions below it"}]
    assert set(mapping["buckets"]) == {"data-source", "debian 12", "vulnerability"}
    assert mapping["buckets"]["debian 12"] == {"packages": 2, "keys": 2}
    # json:raw keeps every record, the unmapped ones included
    index = json.loads((ws / "stella-out/odd/raw/indexes/advisories.index.json").read_bytes())
    assert sorted(json.dumps(index).count(doc["id"]) > 0 for doc in ODD_RECORDS) == [True] * len(ODD_RECORDS)
