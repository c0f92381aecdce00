"""Trivy's operating-system buckets for distribution OSV records (Debian, Ubuntu, AlmaLinux,
Rocky Linux, openSUSE / SUSE, Wolfi, Chainguard).

Facts (trivy-db ``pkg/vulnsrc/<distro>`` and ``pkg/vulnsrc/bucket``, Trivy v0.74.0
``pkg/detector/ospkg/<distro>``; read, not copied):

| OSV ecosystem | bucket | package key Trivy looks up | installed version compared |
| --- | --- | --- | --- |
| ``Debian:<n>`` | ``debian <n>`` | dpkg ``Source:`` (else the binary name) | source version |
| ``Ubuntu:<r>[:LTS]`` | ``ubuntu <r>`` | dpkg ``Source:`` | source version |
| ``Ubuntu:Pro:<r>:LTS`` / ``Ubuntu:<r>:LTS:Pro`` | ``ubuntu <r>-ESM`` (read by Trivy for an ESM-enabled system once ``<r>`` is past standard support) | dpkg ``Source:`` | source version |
| ``AlmaLinux:<n>`` | ``alma <n>`` (major) | RPM name | ``[epoch:]version-release`` |
| ``Rocky Linux:<n>`` | ``rocky <n>`` (major) | RPM name | ``[epoch:]version-release`` |
| ``openSUSE:<product>`` / ``SUSE:<product>`` | ``openSUSE Leap 15.5``, ``openSUSE Tumbleweed``, ``SUSE Linux Enterprise 15.5``, ``SUSE Linux Enterprise Micro 5.5`` (trivy-db's SUSE product lines) | RPM name | ``[epoch:]version-release`` |
| ``Wolfi`` / ``Chainguard`` | ``wolfi`` / ``chainguard`` | apk origin (``o:``), else the name | apk version |

Every one of these detectors reports a package when ``installed < FixedVersion`` in its order
(go-deb-version, go-rpm-version, go-apk-version) and reads nothing else of the value but
``VendorIDs`` and, for Debian, ``Status``/``Severity``. Debian and Ubuntu also report a value
with an empty ``FixedVersion`` (unfixed, shown with status ``affected``); the RPM and apk
detectors never report one (an empty fixed version never compares above an installed one).

So one record becomes one ``FixedVersion`` per (bucket, package, id) (``os_fixed_version``): the
upper bound of the OSV intervals (``versions.vulnerable_intervals``) when they start at the
beginning (exact); an interval with a lower bound is written the same way and listed as
*approximated* (Trivy then also reports versions below that bound); a record whose highest
affected version is inclusive (``last_affected``, an explicit ``versions`` entry at the top) or,
for RPM and apk distributions, a record without any fix, cannot be written and is listed as not
mapped with the reason. Records colliding on one key merge to the highest fix (unfixed wins).
"""
from __future__ import annotations

import functools
from typing import Any, Iterable, Optional

from stella_build.rules.evidence.distros import Distro, DistroError, osv_release, record_binaries
from stella_build.rules.evidence.versions import (
    Interval, VersionError, compare, vulnerable_intervals,
)

__all__ = ["NotMappable", "OS_DATA_SOURCES", "os_bucket", "os_fixed_version", "os_package_keys",
           "merge_os_fixed", "STATUS_AFFECTED", "unfixed_representable"]

# trivy-db types.Status: the integer stored as "Status" in OS advisory values.
STATUS_AFFECTED = 2

# (ID, Name, URL) of each distribution's data source. The ID is trivy-db's source id for that
# distribution (the VendorSeverity key Trivy's severity selection reads for these buckets); name
# and URL are the upstream feeds whose OSV exports the records come from.
OS_DATA_SOURCES: dict[str, tuple[str, str, str]] = {
    "Debian": ("debian", "Debian Security Tracker", "https://security-tracker.debian.org/tracker/"),
    "Ubuntu": ("ubuntu", "Ubuntu Security Notices", "https://ubuntu.com/security/notices"),
    "AlmaLinux": ("alma", "AlmaLinux Product Errata", "https://errata.almalinux.org/"),
    "Rocky Linux": ("rocky", "Rocky Linux Security Advisories", "https://errata.rockylinux.org/"),
    "openSUSE": ("suse-cvrf", "SUSE CVRF", "https://ftp.suse.com/pub/projects/security/cvrf/"),
    "SUSE": ("suse-cvrf", "SUSE CVRF", "https://ftp.suse.com/pub/projects/security/cvrf/"),
    "Wolfi": ("wolfi", "Wolfi Secdb", "https://packages.wolfi.dev/os/security.json"),
    "Chainguard": ("chainguard", "Chainguard Security Data", "https://packages.cgr.dev/chainguard/security.json"),
}


class NotMappable(ValueError):
    """A record (or ecosystem) that has no bucket or no safe form in Trivy's DB: the message is
    the reason listed in the build's mapping report, ``code`` its machine-readable kind:
    ``no-trivy-bucket`` (an ecosystem, distribution or release stream Trivy has no bucket for),
    ``unknown-release`` (a distribution release missing or not recognized), ``git-only``,
    ``no-fixed-version`` (RPM / apk records without a fix), ``inclusive-upper-bound``,
    ``unorderable-version``."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def os_bucket(ecosystem: str) -> tuple[str, Distro]:
    """(Trivy bucket, distribution) of a distribution OSV ecosystem (see the module table).

    Raises NotMappable for an unknown distribution, an unrecognized release, or a release
    stream Trivy has no bucket for (Debian sid, Ubuntu FIPS / Realtime streams)."""
    try:
        d, rel = osv_release(ecosystem)
    except DistroError as exc:
        unknown = str(exc).startswith("unknown distribution")
        raise NotMappable(str(exc), "no-trivy-bucket" if unknown else "unknown-release") from None
    base = d.base
    if base == "Alpine":  # handled by schema.alpine_bucket before this is called
        raise NotMappable("Alpine records use the alpine mapping", "no-trivy-bucket")
    if base == "Debian":
        if not rel.version.isdigit():
            raise NotMappable(f"Debian {rel.version} has no Trivy bucket (trivy-db maps numbered releases only)",
                              "no-trivy-bucket")
        return f"debian {rel.version}", d
    if base == "Ubuntu":
        if rel.stream == "":
            return f"ubuntu {rel.version}", d
        if rel.stream == "pro":
            return f"ubuntu {rel.version}-ESM", d
        raise NotMappable(f"Ubuntu stream {rel.stream!r} has no Trivy bucket", "no-trivy-bucket")
    if base == "AlmaLinux":
        return f"alma {rel.version}", d
    if base == "Rocky Linux":
        return f"rocky {rel.version}", d
    if base in ("openSUSE", "SUSE"):
        return rel.version, d
    return base.lower(), d  # Wolfi, Chainguard: one bucket, no release


def unfixed_representable(d: Distro) -> bool:
    """Can the distribution's Trivy detector report a record without a fix? (dpkg ones only.)"""
    return d.ordering == "dpkg"


def os_package_keys(d: Distro, name: str, ecosystem_specific: Iterable[Any] = ()) -> list[str]:
    """The package keys a record is written under: the OSV name for source-lookup distributions;
    for RPM distributions (Trivy looks RPM names up) the binaries the record lists in
    ``ecosystem_specific.binaries``, else its name."""
    if d.lookup == "binary":
        binaries = record_binaries(ecosystem_specific)
        if binaries:
            return binaries
    return [name]


def _top(ecosystem: str, spans: list[Interval]) -> Interval:
    cmp = functools.partial(compare, ecosystem)

    def order(a: Interval, b: Interval) -> int:
        if a.upper is None or b.upper is None:
            return (a.upper is None) - (b.upper is None)
        r = cmp(a.upper, b.upper)
        return r if r else a.upper_inclusive - b.upper_inclusive

    return max(spans, key=functools.cmp_to_key(order))


def os_fixed_version(ecosystem: str, d: Distro, ranges: list[dict],
                     versions: Iterable[str]) -> Optional[tuple[str, Optional[str]]]:
    """(FixedVersion, approximation note or None) for one record, or None when it can match
    nothing (no evaluable range and no versions). ``FixedVersion`` "" means unfixed.

    Raises NotMappable when the record cannot be written (see the module docstring)."""
    spans: list[Interval] = []
    try:
        for r in ranges:
            if r["type"] != "GIT":
                spans += vulnerable_intervals(ecosystem, r)
        spans += [Interval(v, v, True) for v in versions]
        if not spans:
            return None
        top = _top(ecosystem, spans)
    except VersionError as exc:
        raise NotMappable(f"a version cannot be ordered: {exc}", "unorderable-version") from None
    if top.upper is None:
        if not unfixed_representable(d):
            raise NotMappable(f"no fixed version: Trivy's {d.base} detector reports only installed < FixedVersion",
                              "no-fixed-version")
        fixed = ""
    elif top.upper_inclusive:
        raise NotMappable(f"affected up to and including {top.upper}: not expressible as installed < FixedVersion",
                          "inclusive-upper-bound")
    else:
        fixed = top.upper
    note = None
    if top.lower is not None:
        note = f"affected from {top.lower} only; Trivy also reports versions below it"
    return fixed, note


def merge_os_fixed(ordering_ecosystem: str, fixed: Iterable[str]) -> str:
    """One FixedVersion from colliding records: "" (unfixed) if any is unfixed, else the highest."""
    values = list(fixed)
    if any(f == "" for f in values):
        return ""
    try:
        return max(values, key=functools.cmp_to_key(functools.partial(compare, ordering_ecosystem)))
    except VersionError:
        # a fixed version the order cannot parse was never compared inside its own record (a lone
        # "fixed" event); keep the output deterministic rather than fail the whole DB
        return max(values)
