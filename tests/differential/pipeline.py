"""The differential run, shared by tests/interop/test_differential.py (seeded sample) and
bench/bench_differential.py (every probe).

``run(work, tools, per_record=..., per_package=...)`` does, under ``work/``:

1. read the corpora (``corpus.py``) and generate probes (``probes.py``);
2. build ``//diff:policy`` (json:policy over all six datasets and an SBOM of every probe) and
   ``//diff:trivy-db`` (the same datasets minus Ubuntu) with stella-build in a temporary
   workspace, while osv-scanner scans the probes (lockfiles + SBOMs), one partition of the
   packages at a time, against sanitized copies of the records in its offline layout;
3. run Trivy on the lockfiles (``fs``) and the Alpine / Go stdlib SBOMs (``sbom``) and, as checks
   of the SBOM shortcut for OS packages, Trivy on an Alpine rootfs and osv-scanner on an Alpine /
   Ubuntu (non-LTS) image per release, each holding the first probe of every package;
4. join everything in a ``compare.Report`` (see compare.py for the units of comparison).

Wall-clock seconds per step are returned with the report. Every process started here is waited
for (or killed, with its workers, when a step fails); each has a timeout (runners.TIMEOUT, the
build BUILD_TIMEOUT).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.differential import lockfiles, osvdb, runners
from tests.differential.compare import NO, YES, Line, Report, allowed_by, classify, trivy_ids
from tests.differential.corpus import Affected, load_corpora
from tests.differential.probes import Package, ProbeSet, build_probes
from tests.differential.spec import Unorderable, spec_affected

EXPORTFILE = """\
# Written by tests/differential/pipeline.py: every shared corpus, json:policy over an SBOM of the
# differential probes, and trivy:db over the same advisories (Ubuntu has no trivy:db mapping yet).
[package]
source_date_epoch = 1735689600

[targets.osv-pypi]
rule = "osv_source"
srcs = ["@shared-data//osv-pypi/vulns/**/*.yaml"]
shards = 8
source = { name = "Python Packaging Advisory Database" }

[targets.osv-go]
rule = "osv_source"
srcs = ["@shared-data//osv-go/*.json"]
shards = 8
source = { name = "Go Vulnerability Database" }

[targets.ghsa]
rule = "osv_source"
srcs = ["@shared-data//ghsa/**/*.json"]
shards = 1
source = { name = "GitHub Advisory Database" }

[targets.osv-ubuntu]
rule = "osv_source"
srcs = ["@shared-data//osv-ubuntu/*.json"]
shards = 1
source = { name = "Ubuntu Security Notices" }

[targets.rustsec]
rule = "rustsec_source"
srcs = ["@shared-data//rustsec/**/*.md"]
shards = 4
source = { name = "RustSec Advisory Database" }

[targets.alpine]
rule = "alpine_secdb_source"
srcs = ["@shared-data//alpine-secdb/**/*.yaml"]
shards = 4
source = { name = "Alpine secdb" }

[targets.probes]
rule = "sbom_source"
srcs = ["probes.cdx.json"]
shards = 1
source = { name = "differential probes" }

[targets.policy]
rule = "json_policy"
deps = [":osv-pypi", ":osv-go", ":ghsa", ":osv-ubuntu", ":rustsec", ":alpine", ":probes"]
policy = { name = "differential" }
# The answers do not depend on the zstd level; level 19 of the ~60 MB of findings alone costs
# ~30 s CPU (golden/ and the determinism tests check the default level's bytes).
compression_level = 3

[targets.trivy-db]
rule = "trivy_db"
deps = [":osv-pypi", ":osv-go", ":ghsa", ":rustsec", ":alpine"]
update_interval = "24h"
"""


@dataclass(frozen=True)
class Tools:
    osv_scanner: str
    trivy: str


def _purl_key(text: str) -> str:
    from packageurl import PackageURL

    return PackageURL.from_string(text).to_string()


def _zstd_lines(path: Path) -> list[dict]:
    import zstandard

    with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as r:
        return [json.loads(line) for line in io.TextIOWrapper(r, encoding="utf-8") if line.strip()]


@dataclass
class PolicyAnswers:
    """json:policy's bundle, indexed for the join."""

    findings: set[tuple[str, str, str]]          # (advisory id, advisory path, purl)
    not_evaluable: dict[tuple[str, str], str]    # (id, path) -> reason list name (+ reason)
    errors: dict[tuple[str, str], str]           # (purl, advisory id) -> reason
    components: dict[str, str]                   # purl -> reason it was not evaluated

    @classmethod
    def read(cls, out: Path) -> "PolicyAnswers":
        findings = {(f["advisory_id"], f["advisory_path"], _purl_key(f["purl"]))
                    for f in _zstd_lines(out / "data/policy/evaluations.jsonl.zst")}
        evidence = json.loads((out / "indexes/evidence.index.json").read_bytes())
        not_eval = {}
        for kind, rows in evidence["notEvaluable"].items():
            for row in rows:
                not_eval[(row[0], row[3])] = f"{kind}: {row[4]}" if len(row) > 4 else kind
        for row in evidence["excluded"]["withdrawn"]:
            not_eval[(row[0], row[3])] = "withdrawn"
        index = json.loads((out / "indexes/findings.index.json").read_bytes())
        errors = {(_purl_key(p), a): r for p, a, r in index["evaluationErrors"]}
        comps = {_purl_key(p): r for p, _, r in index["componentsNotEvaluated"]}
        return cls(findings, not_eval, errors, comps)

    def answer(self, aff: Affected, purl: str) -> tuple[str, str]:
        if (aff.record_id, aff.path, purl) in self.findings:
            return YES, ""
        note = (self.not_evaluable.get((aff.record_id, aff.path)) or self.errors.get((purl, aff.record_id))
                or self.components.get(purl) or "")
        return NO, note


def _cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("STELLA_") and k not in ("SOURCE_DATE_EPOCH", "COSIGN_PASSWORD")}
    return env


def _start_build(ws: Path, cache: Path, jobs: int, log: Path) -> subprocess.Popen:
    from tests.conftest import CLI

    argv = [CLI, "--cache-dir", str(cache), "-q", "build", "-j", str(jobs), "//diff:policy", "//diff:trivy-db"]
    # its own session, so that a failed step can end the build's worker processes with it
    return subprocess.Popen(argv, cwd=ws, env=_cli_env(), stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)


# json:policy over every probe (about 100,000 SBOM components) takes longer than a scanner run
BUILD_TIMEOUT = 4 * runners.TIMEOUT


def _stop_build(build: subprocess.Popen) -> None:
    """End the build and its workers (its process group, started by ``_start_build``)."""
    import signal

    if build.poll() is None:
        try:
            os.killpg(build.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        build.wait()


def _trivy(tools: Tools, db: Path, work: Path, name: str, command: str, target: Path, reuse: bool = False) -> Path:
    """One Trivy run with its own cache dir (parallel runs must not share Trivy's cache lock)."""
    if reuse:
        return work / "trivy" / name / "report.json"
    cache = work / "trivy" / name / "cache"
    (cache / "db").mkdir(parents=True, exist_ok=True)
    for f in ("trivy.db", "metadata.json"):
        shutil.copyfile(db / f, cache / "db" / f)
    out, log = work / "trivy" / name / "report.json", work / "trivy" / name / "log.txt"
    proc = runners.start(runners.trivy_cmd(tools.trivy, cache, command, target, out), cache.parent, log)
    runners.finish(proc, log, (0,))
    return out


def _write_partitioned_dbs(root: Path, records: list, probes: ProbeSet, parts: int) -> dict[str, str]:
    """One osv-scanner database per partition holding the records of that partition's packages."""
    from tests.differential.lockfiles import partition

    of_key = {(pkg.ecosystem, pkg.key): partition(pkg, parts) for pkg in probes.versions}
    per_part: dict[int, list] = {i: [] for i in range(parts)}
    for rec in records:
        for part in sorted({of_key[a.key] for a in rec.affected if a.key in of_key}):
            per_part[part].append(rec)
    dropped: dict[str, str] = {}
    for part, recs in per_part.items():
        dropped.update(osvdb.write_db(root / f"part-{part:02d}", recs))
    for rec in records:  # records with no probe at all (e.g. only a withdrawn one) still count
        if rec.id not in dropped:
            reason = osvdb.drop_reason(osvdb.sanitize(rec.osv))
            if reason:
                dropped[rec.id] = reason
    return dropped


def _osv_scanner_step(work: Path, tools: Tools, records: list, probes: ProbeSet, jobs: int,
                      reuse: frozenset[str]) -> tuple:
    """Write the lockfiles and SBOMs, the partitioned databases, and scan every partition
    (``jobs`` at a time). Returns (lockfile manifest, Trivy SBOM manifest, osv-scanner SBOM
    manifest, dropped records, osv-scanner's answers)."""
    scan = work / "scan"
    parts = max(1, min(64, probes.count() // 400))
    lock_manifest = lockfiles.write_lockfiles(scan / "lock", probes, parts)
    sbom_manifest = lockfiles.write_sboms(scan / "sbom", probes)
    osv_sbom_manifest = lockfiles.write_sboms(scan / "osv-sbom", probes, parts)
    dropped = _write_partitioned_dbs(work / "osvdb", records, probes, parts)
    osv_seen: dict[tuple[str, str], dict[str, runners.Seen]] = {}

    def scan_part(part: int) -> dict:
        name = f"part-{part:02d}"
        targets = [d for d in (scan / "lock" / name, scan / "osv-sbom" / name) if d.is_dir()]
        if not targets:
            return {}
        report_path = work / "osv-scanner" / f"{name}.json"
        report_path.parent.mkdir(parents=True, exist_ok=True)
        argv = runners.osv_scanner_cmd(tools.osv_scanner, work / "osvdb" / name, targets[0], report_path)
        argv[-1:] = [str(t) for t in targets]
        if "osv-scanner" not in reuse:
            proc = runners.start(argv, work / "osv-home" / name, report_path.with_suffix(".log"))
            runners.finish(proc, report_path.with_suffix(".log"), (0, 1))
        return runners.read_osv_scanner(report_path, scan)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for seen in pool.map(scan_part, range(parts)):
            osv_seen.update(seen)
    return lock_manifest, sbom_manifest, osv_sbom_manifest, dropped, osv_seen


def _single(seen: dict[str, runners.Seen] | None, version: str) -> runners.Seen | None:
    """The tool's view of a probe: the one package of that name in a lockfile, or the package
    with that version in an SBOM (tools drop a Go ``v`` or keep it)."""
    if not seen:
        return None
    if version in seen:
        return seen[version]
    alt = version[1:] if version[:1] == "v" else f"v{version}"
    if alt in seen:
        return seen[alt]
    return next(iter(seen.values())) if len(seen) == 1 else None


def run(work: Path, tools: Tools, *, per_record: int | None, per_package: int | None = None,
        seed: str = "stella-diff-1", jobs: int = 2,
        allow: list[dict] = (), rootfs_check: bool = True,
        reuse: frozenset[str] = frozenset()) -> tuple[Report, dict[str, float], ProbeSet]:
    """The whole run under ``work`` (see the module doc). ``reuse`` names steps ("build",
    "osv-scanner", "trivy") whose outputs an earlier run left in ``work`` are read again instead of
    running the tool (for iterating on the join; never used by the test)."""
    from tests.conftest import SHARED_DATA, make_workspace

    times: dict[str, float] = {}
    t0 = time.monotonic()
    records = load_corpora(SHARED_DATA)
    probes = build_probes(records, per_record=per_record, per_package=per_package, seed=seed)
    times["corpora + probes"] = time.monotonic() - t0

    # -- stella-build: json:policy + trivy:db (background) --------------------------------------
    t = time.monotonic()
    ws = work / "ws"
    if "build" not in reuse:
        make_workspace(ws, packages=(), shared=True)
        (ws / "diff").mkdir()
        (ws / "diff" / "Exportfile").write_text(EXPORTFILE)
        lockfiles.write_policy_sbom(ws / "diff" / "probes.cdx.json", probes)
        build = _start_build(ws, work / "stella-cache", jobs, work / "build.log")

    try:
        lock_manifest, sbom_manifest, osv_sbom_manifest, dropped, osv_seen = _osv_scanner_step(
            work, tools, records, probes, jobs, reuse)
        times["osv-scanner"] = time.monotonic() - t
        code = 0 if "build" in reuse else build.wait(timeout=BUILD_TIMEOUT)
    except BaseException:
        if "build" not in reuse:  # never leave our build (or its workers) running
            _stop_build(build)
        raise
    if code != 0:
        raise AssertionError(f"stella-build exited {code}:\n{(work / 'build.log').read_text()[-4000:]}")
    times["stella-build (json:policy + trivy:db)"] = time.monotonic() - t
    out = ws / "stella-out" / "diff"
    policy = PolicyAnswers.read(out / "policy")
    scan = work / "scan"

    # -- Trivy -----------------------------------------------------------------------------------
    t = time.monotonic()
    jobs_list = [("fs", "fs", scan / "lock", "lock")]
    jobs_list += [(f"sbom-{name}", "sbom", scan / "sbom" / name, f"sbom/{name}")
                  for name in sorted(sbom_manifest) if not name.startswith("ubuntu-")]
    from tests.differential.allowlist import ubuntu_lts

    report_gaps: Counter = Counter()
    rootfs_probes: dict[str, list[tuple[Package, str]]] = {}  # "alpine-3.10" / "ubuntu-23.10" -> probes
    if rootfs_check:
        for pkg, versions in probes.versions.items():
            if pkg.base == "Alpine":
                rootfs_probes.setdefault(f"alpine-{lockfiles.alpine_release(pkg.ecosystem)}", []).append((pkg, versions[0]))
            elif pkg.base == "Ubuntu" and lockfiles.ubuntu_release(pkg.ecosystem):
                if ubuntu_lts(pkg.ecosystem):  # REFERENCE_GAPS "ubuntu-lts-image": nothing to compare
                    report_gaps["Ubuntu LTS: osv-scanner gap ubuntu-lts-image (no image cross-check)"] += 1
                    continue
                rootfs_probes.setdefault(f"ubuntu-{lockfiles.ubuntu_release(pkg.ecosystem)}", []).append((pkg, versions[0]))
        for name, entries in sorted(rootfs_probes.items()):
            distro, rel = name.split("-", 1)
            (lockfiles.write_alpine_rootfs if distro == "alpine" else lockfiles.write_ubuntu_rootfs)(
                scan / "rootfs" / name, rel, entries)
            lockfiles.write_image_tar(scan / "rootfs" / name, scan / f"image-{name}.tar")
            if distro == "alpine":
                jobs_list.append((f"rootfs-{name}", "rootfs", scan / "rootfs" / name, f"rootfs/{name}"))
        osvdb.write_db(work / "osvdb" / "os", [r for r in records if r.dataset in ("alpine-secdb", "osv-ubuntu")])
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {prefix: pool.submit(_trivy, tools, out / "trivy-db", work, name, cmd, target, "trivy" in reuse)
                   for name, cmd, target, prefix in jobs_list}
        images = {name: pool.submit(_osv_image, tools, work, scan / f"image-{name}.tar", name, "osv-scanner" in reuse)
                  for name in sorted(rootfs_probes)}
    trivy_seen: dict[tuple[str, str], dict[str, runners.Seen]] = {}
    for prefix, fut in futures.items():
        seen = runners.read_trivy(fut.result(), prefix="" if prefix == "lock" else prefix)
        trivy_seen.update({((f"lock/{f}" if prefix == "lock" else f), n): v for (f, n), v in seen.items()})
    for name, fut in images.items():
        osv_seen.update(runners.read_osv_scanner_image(fut.result(), f"image/{name}"))
    times["trivy (+ osv-scanner image scans)"] = time.monotonic() - t

    # -- join --------------------------------------------------------------------------------------
    t = time.monotonic()
    where_osv: dict[tuple[Package, str], str] = {}
    where_trivy: dict[tuple[Package, str], str] = {}
    for rel, entries in lock_manifest.items():
        for pkg, v in entries.values():
            where_osv[(pkg, v)] = where_trivy[(pkg, v)] = f"lock/{rel}"
    for name, entries in sbom_manifest.items():
        for pkg, v in entries.values():
            where_trivy[(pkg, v)] = f"sbom/{name}"
    for name, entries in osv_sbom_manifest.items():
        for pkg, v in entries.values():
            where_osv[(pkg, v)] = f"osv-sbom/{name}"
    report = _join(probes, where_osv, where_trivy, policy, osv_seen, trivy_seen, dropped, list(allow))
    if rootfs_check:
        _rootfs_vs_sbom(report, rootfs_probes, trivy_seen, osv_seen, where_osv)
        report.unanswered.update(report_gaps)
    times["join"] = time.monotonic() - t
    return report, times, probes


def _join(probes: ProbeSet, where_osv: dict, where_trivy: dict, policy: PolicyAnswers, osv_seen: dict, trivy_seen: dict,
          dropped: dict[str, str], allow: list[dict]) -> Report:
    """Compare the answers (see compare.py). The OSV reference for (probe, record) is osv-scanner
    when it read the probe, has the record and no reviewed gap applies, else the spec evaluator;
    when the spec evaluator finds a version involved invalid in the ecosystem there is no
    reference (any answer is a guess) and the comparison is counted as not made."""
    from tests.differential.allowlist import osv_scanner_gap, rule
    from tests.differential.lockfiles import loose_name, purl as make_purl

    report = Report(probes=probes.count(), dropped_by_osv_scanner=dropped)
    osv_hits: set[str] = set()
    lines: list[Line] = []
    for pkg, versions in probes.versions.items():
        affs = probes.affected[pkg]
        groups: dict[str, list[Affected]] = {}
        for aff in affs:
            for tid in trivy_ids(aff):
                groups.setdefault(tid, []).append(aff)
        known_ids = {a.record_id for a in affs}
        gap = osv_scanner_gap(pkg.base, pkg.spelling)
        for v in versions:
            p = _purl_key(make_purl(pkg, v))
            loc = where_osv.get((pkg, v))
            o = _single(osv_seen.get((loc, loose_name(pkg.spelling))), v) if loc else None
            tloc = where_trivy.get((pkg, v))
            tv = _single(trivy_seen.get((tloc, loose_name(pkg.spelling))), v) if tloc and pkg.base != "Ubuntu" else None
            a_of: dict[int, tuple[str, str]] = {}
            ref_of: dict[int, str | None] = {}
            if pkg.base == "Ubuntu" and lockfiles.ubuntu_release(pkg.ecosystem) is None:
                # Ubuntu Pro: no purl, SBOM or rootfs states it (json:policy and osv-scanner read the
                # release from the distro qualifier / os-release, never the Pro stream)
                report.unanswered["Ubuntu Pro: no SBOM or rootfs can state the probe"] += len(affs)
                continue
            for aff in affs:
                a, note = policy.answer(aff, p)
                a_of[id(aff)] = (a, note)
                if note:
                    report.policy_notes[note.split(":")[0]] += 1
                try:
                    s = YES if spec_affected(pkg.ecosystem, v, aff.ranges, aff.versions) else NO
                except Unorderable:
                    s = None
                osv_b = None
                if o is not None and aff.record_id not in dropped:
                    osv_b = YES if aff.record_id in o.ids else NO
                    if osv_b == YES:
                        osv_hits.add(aff.record_id)
                if s is None:
                    ref_of[id(aff)] = None
                    report.unanswered[f"{pkg.base}: a version is invalid in the ecosystem (json:policy said {a})"] += 1
                    continue
                if osv_b is not None and not gap:
                    b, src = osv_b, "osv-scanner"
                    report.comparisons["spec-vs-osv-scanner"] += 1
                    if s != osv_b:
                        line = Line("spec-vs-osv-scanner", pkg.ecosystem, pkg.spelling, v, aff.record_id,
                                    (("spec", s), ("osv-scanner", osv_b), ("json:policy", a)), "",
                                    classify(pkg, v, aff, "", s, osv_b).replace("policy", "spec"))
                        if _model_answer("osv-scanner", pkg, v, [aff]) == osv_b:
                            # osv-scanner's own apk ordering explains it: apk-tools' answer is the reference
                            report.allowed.append((line, rule("osv-scanner-apk-ordering")))
                            b, src = s, "spec"
                        else:
                            lines.append(line)
                else:
                    reason = (f"osv-scanner gap {gap}" if gap and osv_b is not None
                              else "record dropped by osv-scanner" if aff.record_id in dropped
                              else "no lockfile or SBOM states the probe" if loc is None
                              else "probe not read by osv-scanner")
                    report.fallback[f"{pkg.base}: {reason}"] += 1
                    b, src = s, "spec"
                ref_of[id(aff)] = b
                report.comparisons["policy-vs-reference"] += 1
                if a != b:
                    said = [("json:policy", a), (src, b)]
                    if tv is not None:
                        said.append(("trivy", YES if set(trivy_ids(aff)) & tv.ids else NO))
                    lines.append(Line("policy-vs-reference", pkg.ecosystem, pkg.spelling, v, aff.record_id,
                                      tuple(said), note, classify(pkg, v, aff, note, a, b)))
            if o is not None and not gap:
                for extra in sorted(o.ids - known_ids):
                    lines.append(Line("policy-vs-reference", pkg.ecosystem, pkg.spelling, v, extra,
                                      (("json:policy", NO), ("osv-scanner", YES)), "no record of this package has this id",
                                      f"{pkg.base}: osv-scanner matched another package's record"))
            if pkg.base == "Ubuntu":
                continue  # no Ubuntu buckets in our trivy:db yet
            if tv is None:
                report.unanswered[f"{pkg.base}: probe not read by Trivy"] += 1
                continue
            for tid, members in sorted(groups.items()):
                a = YES if any(a_of[id(m)][0] == YES for m in members) else NO
                refs = [ref_of.get(id(m)) for m in members]
                ref = YES if YES in refs else (NO if refs and None not in refs else "unknown")
                c = YES if tid in tv.ids else NO
                report.comparisons["policy-vs-trivy"] += 1
                if a != c:
                    note = next((a_of[id(m)][1] for m in members if a_of[id(m)][1]), "")
                    recs = ", ".join(sorted({m.record_id for m in members}))
                    line = Line("policy-vs-trivy", pkg.ecosystem, pkg.spelling, v, f"{tid} ({recs})",
                                (("json:policy", a), ("trivy", c), ("reference", ref)), note,
                                classify(pkg, v, members[0] if len(members) == 1 else None, note, a, c))
                    if a == ref and _model_answer("trivy", pkg, v, members) == c:
                        report.allowed.append((line, rule("trivy-apk-ordering")))
                    else:
                        lines.append(line)
            for extra in sorted(tv.ids - groups.keys()):
                lines.append(Line("policy-vs-trivy", pkg.ecosystem, pkg.spelling, v, extra,
                                  (("json:policy", NO), ("trivy", YES)), "no record of this package has this id",
                                  f"{pkg.base}: Trivy matched another package's record"))
    for line in lines:
        entry = allowed_by(line, allow)
        if entry:
            report.allowed.append((line, entry))
        else:
            report.lines.append(line)
    # a record osv-scanner never matched although the spec evaluator says some probe is affected
    # is a drop the schema check in osvdb.drop_reason did not predict
    spec_yes = {ln.record for ln in lines if ln.pair == "spec-vs-osv-scanner" and dict(ln.answers)["spec"] == YES}
    report.never_reported = sorted(spec_yes - osv_hits)
    return report


def _model_answer(scanner: str, pkg: Package, version: str, members: list[Affected]) -> str | None:
    """What ``scanner`` would answer if only its own apk ordering differed from apk-tools
    (upstream_models.py); None outside Alpine or when the model cannot evaluate."""
    from tests.differential.upstream_models import MODELS

    if pkg.base != "Alpine":
        return None
    model = MODELS[scanner]
    try:
        hit = any(spec_affected(m.ecosystem, version, m.ranges, m.versions, compare=lambda _e, x, y: model(x, y))
                  for m in members)
    except Exception:  # noqa: BLE001 - a model that cannot read a version explains nothing
        return None
    return YES if hit else NO


def _osv_image(tools: Tools, work: Path, archive: Path, name: str, reuse: bool) -> Path:
    out = work / "osv-scanner" / f"image-{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not reuse:
        proc = runners.start(runners.osv_scanner_image_cmd(tools.osv_scanner, work / "osvdb" / "os", archive, out),
                             work / "osv-home" / f"image-{name}", out.with_suffix(".log"))
        runners.finish(proc, out.with_suffix(".log"), (0, 1))
    return out


def _rootfs_vs_sbom(report: Report, rootfs_probes: dict, trivy_seen: dict, osv_seen: dict, where_osv: dict) -> None:
    """OS probes reach the scanners as SBOMs (a package database holds one version per package);
    the first probe of every package is also scanned as a real image / rootfs, and each scanner must
    answer alike both ways (Trivy: Alpine rootfs; osv-scanner: Alpine and Ubuntu images)."""
    from tests.differential.lockfiles import loose_name

    for name, entries in rootfs_probes.items():
        for pkg, v in entries:
            loose = loose_name(pkg.spelling)
            pairs = [("osv-scanner-image-vs-osv-scanner-sbom", osv_seen.get((f"image/{name}", loose)),
                      osv_seen.get((where_osv.get((pkg, v)), loose)))]
            if name.startswith("alpine-"):
                pairs.append(("trivy-rootfs-vs-trivy-sbom", trivy_seen.get((f"rootfs/{name}", loose)),
                              trivy_seen.get((f"sbom/{name}.cdx.json", loose))))
            for pair, fs_seen, sb_seen in pairs:
                fs, sb = _single(fs_seen, v), _single(sb_seen, v)
                report.comparisons[pair] += 1
                fs_ids = sorted(fs.ids) if fs else "not read"
                sb_ids = sorted(sb.ids) if sb else "not read"
                if fs_ids != sb_ids:
                    report.lines.append(Line(pair, pkg.ecosystem, pkg.spelling, v, "-",
                                             (("image/rootfs", str(fs_ids)), ("sbom", str(sb_ids))), "",
                                             f"{pkg.base}: the SBOM shortcut differs from an image scan"))
