"""Join the three answers per probe and list every disagreement.

Units of comparison:
- json:policy (a) vs the OSV reference (b): per (probe, affected entry). (b) is osv-scanner when it
  read the probe and has the record, otherwise the spec evaluator (``spec.py``); a probe neither
  can answer (spec: version not orderable in the ecosystem) is counted, not compared.
- json:policy (a) vs Trivy (c): per (probe, Trivy vulnerability id). Trivy reports the id its DB
  keys the advisory under (trivy-db's rule: every CVE among the record's id and aliases, else the
  record id), and records sharing such an id are merged in the DB, so (a) for an id is "some
  record keyed under it has a finding". Ubuntu is left out: our trivy:db has no Ubuntu buckets.
- spec evaluator vs osv-scanner: per (probe, affected entry), a self-check of the test's own
  evaluator and converters.

(a) is "json:policy wrote a finding"; when it did not, the reason json:policy gave (record listed
as not evaluable, evaluation error, component not evaluated) is attached to the line.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from tests.differential.corpus import Affected
from tests.differential.probes import Package

YES, NO = "affected", "not affected"


@dataclass(frozen=True)
class Line:
    """One disagreement: who says what about which probe."""

    pair: str                 # "policy-vs-osv", "policy-vs-trivy", "spec-vs-osv-scanner"
    ecosystem: str
    package: str
    version: str
    record: str               # record id (policy-vs-trivy: the Trivy id and its records)
    answers: tuple[tuple[str, str], ...]   # ((side, answer), ...) all known answers
    note: str = ""            # json:policy's reason when it wrote no finding
    klass: str = ""

    def text(self) -> str:
        said = "; ".join(f"{side}: {ans}" for side, ans in self.answers)
        note = f" [{self.note}]" if self.note else ""
        return f"{self.pair}: {self.record} {self.ecosystem} {self.package} {self.version}: {said}{note}"


@dataclass
class Report:
    probes: int = 0
    comparisons: Counter = field(default_factory=Counter)     # pair -> number of comparisons
    fallback: Counter = field(default_factory=Counter)        # why (b) came from the spec evaluator
    unanswered: Counter = field(default_factory=Counter)      # why a comparison could not be made
    lines: list[Line] = field(default_factory=list)
    allowed: list[tuple[Line, dict]] = field(default_factory=list)
    dropped_by_osv_scanner: dict[str, str] = field(default_factory=dict)
    never_reported: list[str] = field(default_factory=list)   # records osv-scanner never matched
    policy_notes: Counter = field(default_factory=Counter)

    def classes(self) -> Counter:
        return Counter((ln.pair, ln.klass) for ln in self.lines)

    def summary(self) -> str:
        out = [f"probes: {self.probes}",
               "comparisons: " + ", ".join(f"{k} {v}" for k, v in sorted(self.comparisons.items())),
               "reference from the spec evaluator (osv-scanner could not answer): "
               + (", ".join(f"{k} {v}" for k, v in sorted(self.fallback.items())) or "none"),
               "not compared: " + (", ".join(f"{k} {v}" for k, v in sorted(self.unanswered.items())) or "none"),
               f"records osv-scanner would drop: {len(self.dropped_by_osv_scanner)} "
               + str(dict(Counter(r.split(':')[0] for r in self.dropped_by_osv_scanner.values()))),
               f"json:policy gave no answer (listed reasons): {dict(self.policy_notes)}",
               f"disagreements: {len(self.lines)} (allowed by the reviewed list: {len(self.allowed)})"]
        allowed = Counter(entry.get("rule") or entry.get("record") for _, entry in self.allowed)
        for name, n in sorted(allowed.items()):
            example = next(ln for ln, e in self.allowed if (e.get("rule") or e.get("record")) == name)
            out.append(f"  allowed by {name}: {n}; e.g. {example.text()}")
        for (pair, klass), n in sorted(self.classes().items(), key=lambda kv: (-kv[1], kv[0])):
            example = next(ln for ln in self.lines if (ln.pair, ln.klass) == (pair, klass))
            out.append(f"  class {pair} / {klass}: {n}; e.g. {example.text()}")
        return "\n".join(out)


def trivy_ids(aff: Affected) -> list[str]:
    """The ids Trivy reports for a record (trivy-db groupVulnIDs: CVE ids, else the record id)."""
    cves = sorted({x for x in (aff.record_id, *aff.aliases) if x.startswith("CVE-")})
    return cves or [aff.record_id]


_PRE = re.compile(r"(?i)(-|_|\.)?(rc|alpha|beta|pre|dev|a|b|snapshot|m)\.?\d*(?![a-z])|-0(?:$|\.)|~")


def classify(pkg: Package, version: str, aff: Affected | None, note: str, a: str, b: str) -> str:
    """A coarse class for grouping lines in the report (direction, ecosystem, what is special)."""
    direction = "policy misses" if a == NO else "policy extra"
    if aff is not None and _invalid(aff, version):
        kind = "a version of the record or the probe is invalid in the ecosystem"
    elif note:
        kind = "policy: " + re.sub(r"['\"].*", "", note)[:60]
    elif aff is not None and any(k == "limit" for _, evs in aff.ranges for k, _ in evs):
        kind = "range with limit"
    elif aff is not None and any(k == "last_affected" for _, evs in aff.ranges for k, _ in evs):
        kind = "range with last_affected"
    elif aff is not None and version in aff.versions:
        kind = "explicit versions list"
    elif re.search(r"-0\.\d{14}-[0-9a-f]{12}", version):
        kind = "Go pseudo-version"
    elif aff is not None and _unsorted(aff):
        kind = "events not in version order"
    elif _PRE.search(version.split("+")[0][1:]):
        kind = "pre-release probe"
    else:
        kind = "release probe"
    return f"{pkg.base}: {direction}: {kind}"


def _invalid(aff: Affected, version: str) -> bool:
    from tests.differential.spec import Unorderable, spec_affected

    try:
        spec_affected(aff.ecosystem, version, aff.ranges, aff.versions)
        return False
    except Unorderable:
        return True


def _unsorted(aff: Affected) -> bool:
    from tests.differential.orderings import Unorderable, compare

    for rtype, events in aff.ranges:
        vs = [v for k, v in events if rtype != "GIT" and v != "0" and k != "limit"]
        try:
            if any(compare(aff.ecosystem, x, y) > 0 for x, y in zip(vs, vs[1:])):
                return True
        except Unorderable:
            return False
    return False


def allowed_by(line: Line, allow: list[dict]) -> dict | None:
    """The reviewed per-record allow-list entry covering ``line`` (same pair, record and
    package), if any; rule entries are applied where their model is evaluated (pipeline.py)."""
    for entry in allow:
        if "record" in entry and entry["pair"] == line.pair and entry["record"] == line.record.split(" ", 1)[0] \
                and entry["package"] == line.package and entry.get("version") in (None, line.version):
            return entry
    return None
