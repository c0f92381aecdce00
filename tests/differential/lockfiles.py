"""Write the probes as scanner inputs: language lockfiles spread over slot directories (a lockfile
holds one version per package, so probe i of a package goes to ``slot-<i>``), CycloneDX SBOMs
for OS packages (one per Alpine / Ubuntu release: both scanners accept several versions of one
package there), a minimal Alpine rootfs for cross-checking the SBOM path, and the CycloneDX SBOM
json:policy evaluates.

Every writer returns a ``Manifest``: ``{relative file path: {loose name: (Package, version)}}``
so a scanner's answer (file, package name) maps back to the probe it was given.
``loose_name`` folds case and ``-_.`` runs: tools rewrite names (Trivy lower-cases pip names,
osv-scanner PEP 503-normalizes them), and within one file no two probes share a loose name.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from tests.differential.probes import Package, ProbeSet

Manifest = dict[str, dict[str, tuple[Package, str]]]

# ecosystem -> (directory in a slot, lockfile name); the same files feed osv-scanner and Trivy
LOCKFILES = {
    "PyPI": ("pypi", "requirements.txt"),
    "Go": ("go", "go.mod"),
    "crates.io": ("cargo", "Cargo.lock"),
    "npm": ("npm", "package-lock.json"),
    "Maven": ("maven", "gradle.lockfile"),
    "NuGet": ("nuget", "packages.lock.json"),
    "RubyGems": ("gem", "Gemfile.lock"),
    "Packagist": ("composer", "composer.lock"),
    "Pub": ("pub", "pubspec.lock"),
    "Hex": ("hex", "mix.lock"),
    "SwiftURL": ("swift", "Package.resolved"),
}


def loose_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _h(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _requirements(entries: list[tuple[Package, str]]) -> str:
    return "".join(f"{p.spelling}=={v}\n" for p, v in entries)


def _go_mod(entries: list[tuple[Package, str]], slot: int) -> tuple[str, str]:
    text = (f"module example.com/stella/probe{slot}\n\ngo 1.22\n\nrequire (\n"
            + "".join(f"\t{p.spelling} {v}\n" for p, v in entries) + ")\n")
    gosum = "".join(f"{p.spelling} {v} h1:{_h(p.spelling, v)[:43]}=\n"
                    f"{p.spelling} {v}/go.mod h1:{_h(p.spelling, v, 'mod')[:43]}=\n" for p, v in entries)
    return text, gosum


def _cargo(entries: list[tuple[Package, str]]) -> str:
    return "version = 3\n\n" + "".join(
        f'[[package]]\nname = "{p.spelling}"\nversion = "{v}"\n'
        f'source = "registry+https://github.com/rust-lang/crates.io-index"\nchecksum = "{_h(p.spelling, v)}"\n\n'
        for p, v in entries)


def _npm(entries: list[tuple[Package, str]]) -> str:
    packages: dict = {"": {"name": "probe", "version": "1.0.0",
                           "dependencies": {p.spelling: v for p, v in entries}}}
    for p, v in entries:
        packages[f"node_modules/{p.spelling}"] = {
            "version": v, "resolved": f"https://registry.npmjs.org/{p.spelling}/-/{p.spelling.rsplit('/', 1)[-1]}-{v}.tgz"}
    return json.dumps({"name": "probe", "version": "1.0.0", "lockfileVersion": 3, "requires": True,
                       "packages": packages}, indent=1)


def _gradle(entries: list[tuple[Package, str]]) -> str:
    return ("# Gradle dependency lock file (probes)\n"
            + "".join(f"{p.spelling}:{v}=compileClasspath,runtimeClasspath\n" for p, v in entries) + "empty=\n")


def _nuget(entries: list[tuple[Package, str]]) -> str:
    deps = {p.spelling: {"type": "Direct", "requested": f"[{v}, )", "resolved": v,
                         "contentHash": _h(p.spelling, v)[:20]} for p, v in entries}
    return json.dumps({"version": 1, "dependencies": {"net8.0": deps}}, indent=1)


def _gemfile(entries: list[tuple[Package, str]]) -> str:
    return ("GEM\n  remote: https://rubygems.org/\n  specs:\n"
            + "".join(f"    {p.spelling} ({v})\n" for p, v in entries)
            + "\nPLATFORMS\n  ruby\n\nDEPENDENCIES\n" + "".join(f"  {p.spelling}\n" for p, _ in entries)
            + "\nBUNDLED WITH\n   2.4.10\n")


def _composer(entries: list[tuple[Package, str]]) -> str:
    return json.dumps({"packages": [{"name": p.spelling, "version": v, "type": "library",
                                     "dist": {"type": "zip", "url": f"https://example.invalid/{p.spelling}/{v}.zip"}}
                                    for p, v in entries], "packages-dev": []}, indent=1)


def _pubspec(entries: list[tuple[Package, str]]) -> str:
    return ("packages:\n" + "".join(
        f'  {p.spelling}:\n    dependency: "direct main"\n    description:\n      name: {p.spelling}\n'
        f'      sha256: "{_h(p.spelling, v)}"\n      url: "https://pub.dev"\n    source: hosted\n'
        f'    version: "{v}"\n' for p, v in entries) + 'sdks:\n  dart: ">=3.0.0 <4.0.0"\n')


def _mix(entries: list[tuple[Package, str]]) -> str:
    return "%{\n" + "".join(
        f'  "{p.spelling}": {{:hex, :{p.spelling}, "{v}", "{_h(p.spelling, v)}", [:mix], [], "hexpm", '
        f'"{_h(v, p.spelling)}"}},\n' for p, v in entries) + "}\n"


def _swift(entries: list[tuple[Package, str]]) -> str:
    return json.dumps({"pins": [{"identity": p.spelling.rsplit("/", 1)[-1].lower(), "kind": "remoteSourceControl",
                                 "location": f"https://{p.spelling}.git",
                                 "state": {"revision": _h(p.spelling, v)[:40], "version": v}} for p, v in entries],
                       "version": 2}, indent=1)


_WRITERS = {"PyPI": _requirements, "crates.io": _cargo, "npm": _npm, "Maven": _gradle, "NuGet": _nuget,
            "RubyGems": _gemfile, "Packagist": _composer, "Pub": _pubspec, "Hex": _mix, "SwiftURL": _swift}


def in_lockfile(pkg: Package) -> bool:
    """Whether the probes of ``pkg`` go into lockfiles. Go's ``stdlib`` and ``toolchain`` do not:
    neither osv-scanner 2.6 nor Trivy 0.74 reports them from go.mod's go/toolchain directives
    (both do from a golang purl in an SBOM), and OS packages go into per-release SBOMs."""
    return pkg.base in LOCKFILES and not (pkg.base == "Go" and pkg.key in ("stdlib", "toolchain"))


def partition(pkg: Package, parts: int) -> int:
    """Stable partition of a package: osv-scanner's local matcher costs (packages x records of
    the ecosystem), so each partition is scanned against only the records of its own packages."""
    return int(hashlib.sha256(f"{pkg.ecosystem}\0{pkg.key}".encode()).hexdigest()[:8], 16) % parts


def write_lockfiles(root: Path, probes: ProbeSet, parts: int = 1) -> Manifest:
    """``root/part-PP/slot-NNNN/<eco>/<lockfile>`` for every language probe."""
    slots: dict[tuple[int, int, str], list[tuple[Package, str]]] = {}
    for pkg, versions in probes.versions.items():
        if not in_lockfile(pkg):
            continue
        for i, v in enumerate(versions):
            slots.setdefault((partition(pkg, parts), i, pkg.base), []).append((pkg, v))
    manifest: Manifest = {}
    for (part, i, base), entries in sorted(slots.items()):
        rel = f"part-{part:02d}/slot-{i:04d}/{LOCKFILES[base][0]}"
        d = root / rel
        d.mkdir(parents=True, exist_ok=True)
        rel = f"{rel}/{LOCKFILES[base][1]}"
        if base == "Go":
            text, gosum = _go_mod(entries, i)
            (d / "go.sum").write_text(gosum)
        else:
            text = _WRITERS[base](entries)
        (d / LOCKFILES[base][1]).write_text(text)
        manifest[rel] = {loose_name(p.spelling): (p, v) for p, v in entries}
    return manifest


# -- OS packages and the json:policy SBOM -----------------------------------------------------------

def alpine_release(ecosystem: str) -> str:
    """"Alpine:v3.10" -> "3.10"."""
    return ecosystem.split(":", 1)[1].lstrip("v")


_UBUNTU = re.compile(r"^Ubuntu:(\d+\.\d+)(?::LTS)?$")


def ubuntu_release(ecosystem: str) -> str | None:
    """"Ubuntu:22.04:LTS" -> "22.04"; None for Pro ecosystems, which no SBOM or rootfs states."""
    m = _UBUNTU.match(ecosystem)
    return m.group(1) if m else None


def purl(pkg: Package, version: str) -> str:
    """The purl an SBOM generator would write for a probe (Go versions keep their ``v``)."""
    from packageurl import PackageURL

    base, name, ns, quals = pkg.base, pkg.spelling, None, None
    if base in ("Go", "npm", "Packagist", "SwiftURL") and "/" in name:
        ns, name = name.rsplit("/", 1)
    elif base == "Maven":
        ns, name = name.split(":", 1)
    elif base == "Alpine":
        ns, quals = "alpine", {"arch": "x86_64", "distro": f"alpine-{alpine_release(pkg.ecosystem)}.0"}
    elif base == "Ubuntu":
        rel = ubuntu_release(pkg.ecosystem) or pkg.ecosystem.replace("Ubuntu:", "").replace(":", "-")
        ns, quals = "ubuntu", {"arch": "source", "distro": f"ubuntu-{rel}"}
    ptype = {"PyPI": "pypi", "Go": "golang", "crates.io": "cargo", "npm": "npm", "Maven": "maven", "NuGet": "nuget",
             "RubyGems": "gem", "Packagist": "composer", "Pub": "pub", "Hex": "hex", "SwiftURL": "swift",
             "Alpine": "apk", "Ubuntu": "deb"}[base]
    return PackageURL(type=ptype, namespace=ns, name=name, version=version, qualifiers=quals).to_string()


def _cdx(components: list[dict], *, os_component: dict | None = None) -> str:
    comps = ([os_component] if os_component else []) + components
    doc = {"bomFormat": "CycloneDX", "specVersion": "1.5", "version": 1,
           "metadata": {"component": {"type": "application", "name": "stella-differential-probes", "version": "1",
                                      "bom-ref": "root", "purl": "pkg:generic/stella-differential-probes@1"}},
           "components": comps}
    if os_component:
        doc["dependencies"] = [{"ref": "root", "dependsOn": [os_component["bom-ref"]]},
                               {"ref": os_component["bom-ref"], "dependsOn": [c["bom-ref"] for c in components]}]
    return json.dumps(doc, indent=1)


def _component(pkg: Package, version: str, *, trivy_src: bool = False) -> dict:
    comp = {"type": "library", "name": pkg.spelling, "version": version, "purl": purl(pkg, version),
            "bom-ref": f"{pkg.ecosystem}|{pkg.spelling}|{version}"}
    if trivy_src:  # Trivy's OS detectors look packages up by source name (the apk origin)
        comp["properties"] = [{"name": "aquasecurity:trivy:SrcName", "value": pkg.spelling},
                              {"name": "aquasecurity:trivy:SrcVersion", "value": version}]
    return comp


def sbom_file(pkg: Package) -> str | None:
    """The SBOM a probe of ``pkg`` goes into (None: a lockfile, or nothing can state it)."""
    if pkg.base == "Alpine":
        return f"alpine-{alpine_release(pkg.ecosystem)}.cdx.json"
    if pkg.base == "Ubuntu" and ubuntu_release(pkg.ecosystem):
        return f"ubuntu-{ubuntu_release(pkg.ecosystem)}.cdx.json"
    if pkg.base == "Go" and not in_lockfile(pkg):
        return "go-stdlib.cdx.json"
    return None


def write_sboms(root: Path, probes: ProbeSet, parts: int | None = None) -> Manifest:
    """``root/alpine-<rel>.cdx.json`` (with an operating-system component, as Trivy needs),
    ``root/ubuntu-<rel>.cdx.json`` and ``root/go-stdlib.cdx.json``; Ubuntu Pro ecosystems are left
    out (no SBOM or rootfs states them). With ``parts``, under ``root/part-PP/`` per partition.
    Keys of the manifest: ``"<loose name>@<version>"``."""
    groups: dict[str, list[tuple[Package, str]]] = {}
    for pkg, versions in probes.versions.items():
        name = sbom_file(pkg)
        if name:
            if parts is not None:
                name = f"part-{partition(pkg, parts):02d}/{name}"
            groups.setdefault(name, []).extend((pkg, v) for v in versions)
    manifest: Manifest = {}
    for name, entries in sorted(groups.items()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        os_comp = None
        if name.rsplit("/", 1)[-1].startswith("alpine-"):
            rel = name.rsplit("/", 1)[-1][len("alpine-"):-len(".cdx.json")]
            os_comp = {"type": "operating-system", "name": "alpine", "version": f"{rel}.0", "bom-ref": "os"}
        comps = [_component(p, v, trivy_src=os_comp is not None) for p, v in entries]
        (root / name).write_text(_cdx(comps, os_component=os_comp))
        manifest[name] = {f"{loose_name(p.spelling)}@{v}": (p, v) for p, v in entries}
    return manifest


def write_alpine_rootfs(root: Path, release: str, entries: list[tuple[Package, str]]) -> None:
    """A rootfs Trivy recognises as Alpine ``release`` with ``entries`` installed (one version per
    package: apk's database cannot hold two)."""
    (root / "etc" / "apk").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "alpine-release").write_text(f"{release}.0\n")
    (root / "etc" / "apk" / "arch").write_text("x86_64\n")
    (root / "etc" / "os-release").write_text(
        f'NAME="Alpine Linux"\nID=alpine\nVERSION_ID={release}.0\nPRETTY_NAME="Alpine Linux v{release}"\n')
    db = root / "lib" / "apk" / "db"
    db.mkdir(parents=True, exist_ok=True)
    (db / "installed").write_text("".join(
        f"C:Q1{_h(p.spelling, v)[:26]}=\nP:{p.spelling}\nV:{v}\nA:x86_64\nS:1000\nI:4000\nT:{p.spelling}\n"
        f"U:https://alpinelinux.org\nL:MIT\no:{p.spelling}\nt:1560000000\n\n" for p, v in entries))


_UBUNTU_NAMES = {"14.04": "trusty", "16.04": "xenial", "18.04": "bionic", "20.04": "focal", "22.04": "jammy",
                 "23.10": "mantic", "24.04": "noble"}


def write_ubuntu_rootfs(root: Path, release: str, entries: list[tuple[Package, str]]) -> None:
    """A rootfs osv-scanner recognises as Ubuntu ``release`` (os-release says LTS for the LTS
    releases) with ``entries`` installed as dpkg binary packages of the same source (one version
    per package: dpkg's status holds one)."""
    lts = int(release.split(".")[0]) % 2 == 0 and release.endswith(".04")
    name = _UBUNTU_NAMES.get(release, "unknown")
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "os-release").write_text(
        f'PRETTY_NAME="Ubuntu {release}{" LTS" if lts else ""}"\nNAME="Ubuntu"\nVERSION_ID="{release}"\n'
        f'VERSION="{release}{" LTS" if lts else ""} ({name})"\nVERSION_CODENAME={name}\nID=ubuntu\nID_LIKE=debian\n'
        f"UBUNTU_CODENAME={name}\n")
    dpkg = root / "var" / "lib" / "dpkg"
    dpkg.mkdir(parents=True, exist_ok=True)
    (dpkg / "status").write_text("".join(
        f"Package: {p.spelling}\nStatus: install ok installed\nPriority: optional\nSection: libs\n"
        f"Architecture: amd64\nSource: {p.spelling}\nVersion: {v}\nDescription: differential probe\n\n"
        for p, v in entries))


def write_image_tar(rootfs: Path, out: Path) -> None:
    """``rootfs`` as a one-layer ``docker save`` tarball (what ``osv-scanner scan image
    --archive`` reads), with fixed timestamps and owners so the bytes depend only on the files."""
    import io
    import tarfile

    def add_tree(t: tarfile.TarFile) -> None:
        for p in sorted(rootfs.rglob("*")):
            info = t.gettarinfo(str(p), arcname=p.relative_to(rootfs).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if p.is_file():
                with open(p, "rb") as f:
                    t.addfile(info, f)
            else:
                t.addfile(info)

    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as t:
        add_tree(t)
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                         "history": [{"created_by": "stella-build differential probes"}]}).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": ["stella/probes:latest"],
                            "Layers": ["layer.tar"]}]).encode()
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as t:
        for name, data in (("manifest.json", manifest), (config_name, config), ("layer.tar", layer_bytes)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def write_policy_sbom(path: Path, probes: ProbeSet) -> dict[str, list[tuple[Package, str]]]:
    """One CycloneDX SBOM with every probe as a component (Ubuntu Pro left out: no purl states
    it); returns purl -> probes."""
    by_purl: dict[str, list[tuple[Package, str]]] = {}
    comps = []
    for pkg, versions in probes.versions.items():
        if pkg.base == "Ubuntu" and ubuntu_release(pkg.ecosystem) is None:
            continue  # Ubuntu Pro: no purl states the Pro stream
        for v in versions:
            p = purl(pkg, v)
            if p not in by_purl:
                comps.append({"type": "library", "name": pkg.spelling, "version": v, "purl": p, "bom-ref": p})
            by_purl.setdefault(p, []).append((pkg, v))
    path.write_text(_cdx(comps))
    return by_purl
