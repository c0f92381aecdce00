"""Operating-system distributions: what an OSV ecosystem or a purl says about a distro release.

One table (``DISTROS``) names, for every distribution whose OSV feed stella-build understands:
- ``base``: the OSV ecosystem base spelling ("Debian", "Ubuntu", "AlmaLinux", "Rocky Linux",
  "Wolfi", "Chainguard", "openSUSE", "SUSE", "Alpine");
- ``ordering``: the version order its records use (``dpkg``, ``rpm``, ``apk``; versions.py);
- ``purl_type`` / ``namespaces``: how SBOMs name its packages (``pkg:deb/debian/...``,
  ``pkg:rpm/alma/...``; the first namespace is Trivy's own spelling, the others are other tools');
- ``lookup``: which package name its scanners look a record up by: ``source`` (dpkg's
  ``Source:``, apk's origin ``o:``; OSV's ``name`` is the source package there) or ``binary``
  (the RPM name; OSV's ``name`` is the source RPM, its ``ecosystem_specific.binaries`` list the
  RPMs built from it when the feed gives them).

Releases. ``osv_release`` reads the release an ecosystem's ``:<suffix>`` names and
``purl_release`` the one a purl's ``distro`` qualifier names, both into one canonical
``Release(distro, version, stream)``: Debian ``12`` (``Debian:12``, ``debian-12.5``,
``bookworm``), Ubuntu ``22.04`` (``Ubuntu:22.04:LTS``, ``ubuntu-22.04``, ``jammy``; ``Pro``
and other streams such as ``FIPS`` kept in ``stream``), Alpine ``v3.18``, AlmaLinux and Rocky
Linux the major version (``AlmaLinux:9``, ``alma-9.3``), openSUSE / SUSE the product line as
SUSE's own CVRF and OSV data name it (``openSUSE Leap 15.5``, ``openSUSE Tumbleweed``,
``SUSE Linux Enterprise 15.5`` for every SLE 15 SP5 product and module, ``SUSE Linux
Enterprise Micro 5.5``), Wolfi and Chainguard no release (rolling). Anything not recognized
raises ``DistroError`` with a reason; nothing is guessed.

Codename tables come from Debian's distro-info-data (debian.csv, ubuntu.csv), written here so
that outputs never depend on the build machine's /usr/share/distro-info.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional

__all__ = [
    "Distro", "Release", "DistroError", "DISTROS", "distro", "distro_for_purl", "osv_release",
    "purl_release", "suse_product_release", "record_binaries", "source_from_purl",
    "DEBIAN_CODENAMES", "UBUNTU_CODENAMES",
]


class DistroError(ValueError):
    """An ecosystem or ``distro`` qualifier whose distribution or release is not recognized."""


@dataclass(frozen=True)
class Distro:
    base: str
    ordering: str
    purl_type: str
    namespaces: tuple[str, ...]
    lookup: str
    has_release: bool = True


DISTROS: dict[str, Distro] = {d.base: d for d in (
    Distro("Debian", "dpkg", "deb", ("debian",), "source"),
    Distro("Ubuntu", "dpkg", "deb", ("ubuntu",), "source"),
    Distro("Alpine", "apk", "apk", ("alpine",), "source"),
    Distro("AlmaLinux", "rpm", "rpm", ("alma", "almalinux"), "binary"),
    Distro("Rocky Linux", "rpm", "rpm", ("rocky", "rockylinux", "rocky-linux"), "binary"),
    Distro("openSUSE", "rpm", "rpm", ("opensuse",), "binary"),
    Distro("SUSE", "rpm", "rpm", ("suse", "sles"), "binary"),
    Distro("Wolfi", "apk", "apk", ("wolfi",), "source", has_release=False),
    Distro("Chainguard", "apk", "apk", ("chainguard",), "source", has_release=False),
)}

# debian.csv / ubuntu.csv of distro-info-data
DEBIAN_CODENAMES = {"wheezy": "7", "jessie": "8", "stretch": "9", "buster": "10", "bullseye": "11",
                    "bookworm": "12", "trixie": "13", "forky": "14", "duke": "15",
                    "sid": "sid", "unstable": "sid"}
UBUNTU_CODENAMES = {"trusty": "14.04", "xenial": "16.04", "bionic": "18.04", "cosmic": "18.10",
                    "disco": "19.04", "eoan": "19.10", "focal": "20.04", "groovy": "20.10",
                    "hirsute": "21.04", "impish": "21.10", "jammy": "22.04", "kinetic": "22.10",
                    "lunar": "23.04", "mantic": "23.10", "noble": "24.04", "oracular": "24.10",
                    "plucky": "25.04", "questing": "25.10"}


@dataclass(frozen=True, order=True)
class Release:
    """A canonical distribution release: ``version`` "" for rolling distributions; ``stream``
    "" for the standard one, "pro" for Ubuntu Pro (ESM), otherwise the stream's lower-case name
    (Ubuntu "fips", "fips-updates", "realtime"...)."""

    distro: str
    version: str
    stream: str = ""

    def __str__(self) -> str:
        text = f"{self.distro} {self.version}".strip()
        return f"{text} ({self.stream})" if self.stream else text


def distro(base: str) -> Optional[Distro]:
    """The distribution of an OSV ecosystem base spelling ("Rocky Linux"), or None."""
    return DISTROS.get(base)


def distro_for_purl(purl_type: str, namespace: Optional[str]) -> Optional[Distro]:
    """The distribution of a ``pkg:<type>/<namespace>/...`` purl, or None (an unknown namespace;
    ``pkg:deb/...`` without a namespace is Debian, ``pkg:apk/...`` without one Alpine)."""
    t, ns = purl_type.lower(), (namespace or "").lower()
    for d in DISTROS.values():
        if d.purl_type == t and ns in d.namespaces:
            return d
    if not ns:
        return {"deb": DISTROS["Debian"], "apk": DISTROS["Alpine"]}.get(t)
    return None


_DEBIAN = re.compile(r"^(\d+)(?:\.\d+)*$")
_UBUNTU = re.compile(r"^(\d\d\.\d\d)(?:\.\d+)*$")
_ALPINE = re.compile(r"^v?(\d+\.\d+)(?:\.\d+)*$")
_MAJOR = re.compile(r"^(\d+)(?:\.\d+)*$")


def _debian(text: str) -> Optional[str]:
    t = text.removeprefix("debian-")
    m = _DEBIAN.match(t)
    return str(int(m.group(1))) if m else DEBIAN_CODENAMES.get(t)


def _ubuntu(text: str) -> Optional[tuple[str, str]]:
    """(version, stream) from "22.04:lts", "pro:18.04:lts", "18.04:lts:pro", "ubuntu-22.04",
    "jammy"."""
    tokens = [x for x in text.split(":") if x and x != "lts"]
    version, streams = None, []
    for tok in tokens:
        tok = tok.removeprefix("ubuntu-")
        m = _UBUNTU.match(tok)
        if m and version is None:
            version = m.group(1)
        elif tok in UBUNTU_CODENAMES and version is None:
            version = UBUNTU_CODENAMES[tok]
        else:
            streams.append(tok)
    if version is None:
        return None
    return version, ":".join(streams)


def _alpine(text: str) -> Optional[str]:
    t = text.removeprefix("alpine-")
    if t == "edge":
        return "edge"
    m = _ALPINE.match(t)
    return "v" + m.group(1) if m else None


def _major(text: str, prefixes: Iterable[str]) -> Optional[str]:
    for p in prefixes:
        if text.startswith(p + "-"):
            text = text[len(p) + 1:]
            break
    text = text.removeprefix("el")  # "el9", as RPM dist tags write it
    m = _MAJOR.match(text)
    return str(int(m.group(1))) if m else None


_SUSE_NUM = re.compile(r"^(?:sp)?(\d+)$", re.IGNORECASE)


def suse_product_release(product: str) -> Optional[str]:
    """The release line of a SUSE / openSUSE product name, as trivy-db's SUSE CVRF parser reads
    product names (``getOSVersion``): "openSUSE Leap 15.5", "openSUSE Leap Micro 5.5",
    "openSUSE Tumbleweed", "SUSE Linux Enterprise Micro 5.5" (and "SUSE Linux Micro 6.0"),
    "SUSE Linux Enterprise <anything> 15 SP5" → "SUSE Linux Enterprise 15.5"; None for products
    without a release line there (SUSE Manager, SUSE Linux Enterprise Storage) or no version."""
    p = " ".join(product.split())
    if "SUSE Manager" in p or p.startswith("SUSE Linux Enterprise Storage"):
        return None
    if p.startswith("openSUSE Tumbleweed"):
        return "openSUSE Tumbleweed"
    for prefix, out in (("openSUSE Leap Micro ", "openSUSE Leap Micro"), ("openSUSE Leap ", "openSUSE Leap"),
                        ("SUSE Linux Enterprise Micro ", "SUSE Linux Enterprise Micro"),
                        ("SUSE Linux Micro ", "SUSE Linux Enterprise Micro")):
        if p.startswith(prefix):
            version = p[len(prefix):].split(" ", 1)[0]
            return f"{out} {version}" if re.fullmatch(r"\d+(?:\.\d+)*", version) else None
    if "SUSE Linux Enterprise" in p:
        # "15 SP5", "15-SP5", "12 SP5", "16.0": the last two numbers, read backwards
        numbers: list[str] = []
        for tok in reversed(p.replace("-", " ").replace(".", " ").split()[1:]):
            m = _SUSE_NUM.match(tok)
            if m:
                numbers.append(str(int(m.group(1))))
                if len(numbers) == 2:
                    break
        if not numbers:
            return None
        return "SUSE Linux Enterprise " + (numbers[0] if len(numbers) == 1 else f"{numbers[1]}.{numbers[0]}")
    return None


def _suse_purl(d: Distro, text: str) -> Optional[str]:
    """SUSE lines from Trivy's purl ``distro`` values: "opensuse-leap-15.5", "opensuse-tumbleweed-…",
    "opensuse-leap-micro-5.5", "sles-15.5", "slem-5.5" / "sle-micro-5.5"."""
    rules = (("opensuse-tumbleweed", "openSUSE Tumbleweed", False),
             ("opensuse-leap-micro-", "openSUSE Leap Micro", True), ("opensuse-leap-", "openSUSE Leap", True),
             ("opensuse-", "openSUSE Leap", True), ("sles-", "SUSE Linux Enterprise", True),
             ("slem-", "SUSE Linux Enterprise Micro", True), ("sle-micro-", "SUSE Linux Enterprise Micro", True),
             ("sl-micro-", "SUSE Linux Enterprise Micro", True))
    for prefix, line, versioned in rules:
        if text.startswith(prefix):
            if not versioned:
                out = line
            else:
                version = text[len(prefix):]
                m = re.fullmatch(r"(\d+)(?:\.(\d+))?(?:\.\d+)*", version)
                if not m:
                    return None
                out = f"{line} {int(m.group(1))}" + (f".{int(m.group(2))}" if m.group(2) is not None else "")
            opensuse = out.startswith("openSUSE")
            return out if opensuse == (d.base == "openSUSE") else None
    return None


def osv_release(ecosystem: str) -> tuple[Distro, Release]:
    """(distribution, release) an OSV ecosystem names ("Debian:12", "Ubuntu:Pro:18.04:LTS",
    "AlmaLinux:9", "Wolfi", "SUSE:Linux Enterprise Server 15 SP5").

    Raises DistroError when the distribution is not one of ``DISTROS`` or the release is
    missing or not recognized (the message is the reason reported for the record)."""
    base, sep, suffix = ecosystem.partition(":")
    d = DISTROS.get(base)
    if d is None:
        raise DistroError(f"unknown distribution {base!r}")
    if not d.has_release:
        if sep:
            raise DistroError(f"{base} has no releases, got suffix {suffix!r}")
        return d, Release(base, "")
    if not sep or not suffix.strip():
        raise DistroError(f"{base} records need a release suffix ('{base}:<release>')")
    text = suffix.strip()
    if base in ("openSUSE", "SUSE"):
        line = suse_product_release(f"{base} {text}")
        if line is None:
            raise DistroError(f"unrecognized {base} product {text!r}")
        return d, Release(base, line)
    version, stream = _parse(d, text.lower())
    if version is None:
        raise DistroError(f"unrecognized release in ecosystem {ecosystem!r}")
    return d, Release(base, version, stream)


def _parse(d: Distro, t: str) -> tuple[Optional[str], str]:
    if d.base == "Debian":
        return _debian(t), ""
    if d.base == "Ubuntu":
        parsed = _ubuntu(t)
        return (None, "") if parsed is None else parsed
    if d.base == "Alpine":
        return _alpine(t), ""
    return _major(t, d.namespaces), ""


def purl_release(d: Distro, distro_qualifier: str) -> Optional[Release]:
    """The release a purl ``distro`` qualifier names for distribution ``d`` ("debian-12.5",
    "bookworm", "ubuntu-22.04", "jammy", "3.18.4", "alma-9.3", "sles-15.5"), or None when it is
    not recognized. Rolling distributions have one release whatever the qualifier says."""
    if not d.has_release:
        return Release(d.base, "")
    t = distro_qualifier.strip().lower()
    if d.base in ("openSUSE", "SUSE"):
        line = _suse_purl(d, t)
        return None if line is None else Release(d.base, line)
    version, _ = _parse(d, t)
    return None if version is None else Release(d.base, version)


def record_binaries(ecosystem_specific: Iterable[Any]) -> list[str]:
    """Binary package names an OSV record lists in ``ecosystem_specific.binaries`` (SUSE and
    openSUSE: a list of names or ``{name: version}`` maps; Ubuntu: ``[{name: version}]``), in
    order of appearance, without duplicates."""
    out: list[str] = []
    for spec in ecosystem_specific:
        if not isinstance(spec, dict):
            continue
        binaries = spec.get("binaries")
        items = binaries if isinstance(binaries, list) else [binaries] if isinstance(binaries, dict) else []
        for item in items:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, dict):
                out += [k for k in item if isinstance(k, str)]
    return [n for n in dict.fromkeys(out) if n]


def source_from_purl(purl_type: str, name: str, version: Optional[str],
                     qualifiers: dict) -> tuple[str, Optional[str]]:
    """(source package name, source version or None) of an OS package purl: the ``upstream``
    qualifier as Syft writes it (deb ``upstream=util-linux`` or ``util-linux@2.37.2-4``, apk
    ``upstream=<origin>``), else the binary's own name; the version only when the qualifier
    names one (otherwise the caller keeps the binary version, as Trivy does for SBOM packages
    without a source version)."""
    upstream = (qualifiers or {}).get("upstream")
    if not upstream or purl_type.lower() not in ("deb", "apk"):
        return name, None
    src, sep, src_version = upstream.partition("@")
    return (src or name), (src_version if sep and src_version else None)
