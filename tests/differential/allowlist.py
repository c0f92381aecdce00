"""Reviewed exceptions, each with its reason and the upstream behaviour behind it.

``REFERENCE_GAPS``: cases where osv-scanner 2.6.0 cannot serve as the OSV reference, so the spec
evaluator (tests/differential/spec.py) answers instead. Each gap is demonstrated by a small
osv-scanner run in tests/interop/test_differential.py (``test_osv_scanner_reference_gaps_still_hold``):
when an osv-scanner upgrade closes a gap, that test fails and the entry must go.

``ALLOW``: disagreements that are upstream behaviour, not a fault of stella-build. An entry
names the comparison (``pair``), the record, the package (optionally one probe ``version``), the
``reason`` and the ``upstream`` behaviour with where it is documented; it silences exactly the
lines it names. Keep it short: a disagreement the project can fix does not belong here.
"""
from __future__ import annotations

import re

REFERENCE_GAPS = [
    {
        "id": "go-uppercase-module-path",
        "applies": "Go module paths with an upper-case letter (github.com/Azure/..., github.com/0xERR0R/blocky)",
        "reason": "osv-scanner 2.6.0 offline matches no record for such a module, whether go.mod and the "
                  "record spell it alike or not (a record for github.com/Foo/bar never matches "
                  "`require github.com/Foo/bar v0.28.0`; the same record with a lower-case path does)",
        "upstream": "observed with osv-scanner 2.6.0 / osv-scalibr 0.5.2 and the --offline local "
                    "database; Go module paths are case-sensitive (go.dev/ref/mod#module-path)",
    },
    {
        "id": "ubuntu-lts-image",
        "applies": "osv-scanner `scan image` of an Ubuntu LTS system (the image cross-check of the SBOM path)",
        "reason": "osv-scanner 2.6.0 names the packages of an Ubuntu image `Ubuntu:22.04`, without the `:LTS` "
                  "that every Ubuntu LTS record's ecosystem carries (`Ubuntu:22.04:LTS`), so an LTS image "
                  "matches no record (the shared jammy fixture: curl 7.81.0-1ubuntu1.10 gets none of "
                  "USN-6237-1, USN-6429-1, USN-6718-1); from an SBOM purl (`distro=ubuntu-22.04`) it names "
                  "them `Ubuntu:22.04:LTS` and matches. The Ubuntu reference is the SBOM path; images are "
                  "cross-checked for the non-LTS releases only",
        "upstream": "observed with osv-scanner 2.6.0 / osv-scalibr 0.5.2 (dpkg extractor, os-release "
                    "VERSION_ID); OSV ecosystems: 'Ubuntu:<RELEASE>' with a mandatory ':LTS' suffix for LTS",
    },
]


def ubuntu_lts(ecosystem: str) -> bool:
    return ecosystem.startswith("Ubuntu:") and ecosystem.endswith(":LTS") and ":Pro" not in ecosystem


def osv_scanner_gap(base_ecosystem: str, name: str) -> str | None:
    """The id of the reference gap that applies to a package, or None."""
    if base_ecosystem == "Go" and re.search(r"[A-Z]", name):
        return "go-uppercase-module-path"
    return None


ALLOW: list[dict] = [
    # Rule entries: a disagreement is allowed only when re-evaluating the records with a model of
    # the scanner's own ordering (upstream_models.py) reproduces the scanner's answer exactly.
    {
        "pair": "policy-vs-trivy",
        "rule": "trivy-apk-ordering",
        "reason": "Trivy orders apk versions with go-apk-version, a port of apk-tools 2.x whose "
                  "leading-zero path skips the separator after a '.0' component: 7.51.0_rc1-r0 sorts "
                  "above 7.51.0, so a pre-release of a fixed '.0' release is reported fixed; apk-tools' "
                  "current src/version.c (test/unit/version.data) orders it below",
        "upstream": "github.com/knqyf263/go-apk-version version.go getToken (tokenDigitOrZero branch), "
                    "used by Trivy v0.74.0 pkg/detector/ospkg/alpine",
    },
    {
        "pair": "spec-vs-osv-scanner",
        "rule": "osv-scanner-apk-ordering",
        "reason": "osv-scanner compares apk number components padded with zeros (4.0-r9 == 4.0.0-r9, so "
                  "above 4.0.0-r0) and pads a missing suffix with the weight of 'cvs'; apk-tools orders "
                  "4.0-r9 below 4.0.0-r0. The apk-tools answer (spec evaluator) stays the reference",
        "upstream": "github.com/google/osv-scalibr semantic/version-alpine.go (compareComponents, "
                    "fetchSuffix), osv-scanner 2.6.0",
    },
]


def rule(name: str) -> dict:
    return next(e for e in ALLOW if e.get("rule") == name)
