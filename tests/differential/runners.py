"""Run osv-scanner and Trivy offline and read their JSON back as per-probe answers.

Answer shapes: ``{(file, loose name): Seen}`` where ``Seen`` records the version the tool read and
the vulnerability ids it reported for that package in that file. A probe without a ``Seen`` was
not read by the tool (a lockfile parser rejected it): that is "not scanned", never "not affected".
"""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.differential.lockfiles import loose_name

TIMEOUT = 900  # seconds for one scanner run; the CI sample needs far less


@dataclass
class Seen:
    version: str
    ids: set[str] = field(default_factory=set)


def _env(home: Path) -> dict[str, str]:
    # no proxies, no user config: the tools must not reach the network or read a developer's setup
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "TRIVY_NO_PROGRESS": "true", "NO_COLOR": "1"}


def osv_scanner_cmd(tool: str, db: Path, target: Path, out: Path) -> list[str]:
    """``scan source`` over ``target`` (lockfiles and SBOMs, recursively), offline, every package
    and every vulnerability in the JSON (``--all-vulns``: Ubuntu "negligible" ones too)."""
    return [tool, "scan", "source", "--offline", "--no-call-analysis=all", "--local-db-path", str(db),
            "--format", "json", "--all-packages", "--all-vulns", "--output-file", str(out), "-r", str(target)]


def start(argv: list[str], home: Path, log: Path) -> subprocess.Popen:
    home.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(argv, env=_env(home), stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


def finish(proc: subprocess.Popen, log: Path, ok: tuple[int, ...]) -> int:
    try:
        code = proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"{proc.args[0]} did not finish in {TIMEOUT} s") from None
    if code not in ok:
        raise AssertionError(f"{' '.join(map(str, proc.args))} exited {code}\n{log.read_text(errors='replace')[-4000:]}")
    return code


def read_osv_scanner(report: Path, target: Path) -> dict[tuple[str, str], dict[str, Seen]]:
    """{(file relative to target, loose name): {version: Seen}}; SBOM packages carry several
    versions of one name in one file, hence the inner dict."""
    out: dict[tuple[str, str], dict[str, Seen]] = {}
    doc = json.loads(report.read_text())
    for res in doc.get("results") or ():
        rel = os.path.relpath(res["source"]["path"], target)
        for p in res.get("packages") or ():
            pkg = p["package"]
            seen = out.setdefault((rel, loose_name(pkg["name"])), {}).setdefault(pkg["version"], Seen(pkg["version"]))
            seen.ids.update(v["id"] for v in p.get("vulnerabilities") or ())
    return out


def trivy_cmd(tool: str, cache: Path, command: str, target: Path, out: Path) -> list[str]:
    return [tool, "--cache-dir", str(cache), "--quiet", command, "--skip-db-update", "--skip-java-db-update",
            "--offline-scan", "--scanners", "vuln", "--format", "json", "--list-all-pkgs",
            "--output", str(out), str(target)]


def read_trivy(report: Path, prefix: str = "") -> dict[tuple[str, str], dict[str, Seen]]:
    """Same shape as ``read_osv_scanner``; ``prefix`` is joined to each result's Target (an
    ``sbom``/``rootfs`` scan names the target itself, an ``fs`` scan the file under it)."""
    out: dict[tuple[str, str], dict[str, Seen]] = {}
    doc = json.loads(report.read_text())
    for res in doc.get("Results") or ():
        rel = prefix or res["Target"]
        for p in res.get("Packages") or ():
            if p.get("Version"):  # the go.mod's own module has none: not a probe
                out.setdefault((rel, loose_name(p["Name"])), {}).setdefault(p["Version"], Seen(p["Version"]))
        for v in res.get("Vulnerabilities") or ():
            slot = out.setdefault((rel, loose_name(v["PkgName"])), {})
            slot.setdefault(v["InstalledVersion"], Seen(v["InstalledVersion"])).ids.add(v["VulnerabilityID"])
    return out


def osv_scanner_image_cmd(tool: str, db: Path, archive: Path, out: Path) -> list[str]:
    """``scan image --archive`` (a ``docker save`` tarball), offline, all packages and vulns."""
    return [tool, "scan", "image", "--offline", "--local-db-path", str(db), "--format", "json",
            "--all-packages", "--all-vulns", "--output-file", str(out), "--archive", str(archive)]


def read_osv_scanner_image(report: Path, prefix: str) -> dict[tuple[str, str], dict[str, Seen]]:
    """Same shape as ``read_osv_scanner``, every package under the file name ``prefix``. The
    image scan names a package by its source (the apk origin, dpkg's ``Source:``)."""
    out: dict[tuple[str, str], dict[str, Seen]] = {}
    for res in json.loads(report.read_text()).get("results") or ():
        for p in res.get("packages") or ():
            pkg = p["package"]
            name = pkg["name"]
            seen = out.setdefault((prefix, loose_name(name)), {}).setdefault(pkg["version"], Seen(pkg["version"]))
            seen.ids.update(v["id"] for v in p.get("vulnerabilities") or ())
    return out
