"""One severity precedence for every output (json:policy findings and trivy:db values).

An advisory's ``severity`` list (``model.Severity``: CVSS vectors with their computed base score
and rating, and vendor labels from ``database_specific.severity`` or an ecosystem's qualitative
``{type: Ubuntu, score: medium}``) gives one effective severity:

1. the newest CVSS version present wins: CVSS v4.0 > v3.1 > v3.0 > v2 (a vector's version comes
   from its prefix: ``CVSS:4.0/``, ``CVSS:3.1/``, ``CVSS:3.0/``, none = v2);
2. among vectors of that version, the highest base score (ties: the lexically last vector);
   the level is the rating the ``cvss`` library computed for it (NONE, LOW, MEDIUM, HIGH,
   CRITICAL);
3. without any CVSS vector, the highest textual label (CRITICAL > HIGH/IMPORTANT > MEDIUM/MODERATE
   > LOW/NEGLIGIBLE > NONE); labels outside that list (``unmaintained``, ``unknown``) are ignored;
4. nothing left: no severity (json:policy then applies ``severity.unknown_as``; trivy:db writes
   no ``VendorSeverity`` for the source).

``rules/evidence/policy.py`` (finding severity) and ``rules/formats/trivy/schema.py``
(``VendorSeverity`` and ``Severity``) both call ``effective_severity``, so a finding's level in
json:policy equals what Trivy reports for the same record.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional

__all__ = ["LEVELS", "LABEL_LEVELS", "effective_severity", "level_rank"]

LEVELS: tuple[str, ...] = ("none", "low", "medium", "high", "critical")
LABEL_LEVELS = {"CRITICAL": "critical", "HIGH": "high", "IMPORTANT": "high", "MODERATE": "medium",
                "MEDIUM": "medium", "LOW": "low", "NEGLIGIBLE": "low", "NONE": "none"}


def _field(s: Any, name: str) -> Any:
    return s.get(name) if isinstance(s, dict) else getattr(s, name, None)


def _cvss_rank(kind: str, vector: Optional[str]) -> int:
    """Precedence of a CVSS entry: 4 = v4.0, 3 = v3.1, 2 = v3.0, 1 = v2, 0 = not CVSS."""
    if kind == "CVSS_V4":
        return 4
    if kind == "CVSS_V3":
        return 2 if (vector or "").startswith("CVSS:3.0/") else 3
    if kind == "CVSS_V2":
        return 1
    return 0


def level_rank(level: str) -> int:
    """Position of a level in ``LEVELS`` (none = 0 ... critical = 4)."""
    return LEVELS.index(level)


def effective_severity(severities: Iterable[Any]) -> Optional[dict]:
    """The effective severity of one advisory, or None when it carries none.

    ``severities``: ``model.Severity`` objects or their canonical dicts (``type``, ``vector``,
    ``score``, ``label``). Returns ``{"level", "score", "type", "vector"}``: ``level`` one of
    ``LEVELS``; ``score`` the CVSS base score (float) or None for a label; ``type`` CVSS_V4 /
    CVSS_V3 / CVSS_V2 / vendor.
    """
    best_cvss: Optional[tuple] = None
    best_label: Optional[str] = None
    for s in severities:
        kind = _field(s, "type")
        score = _field(s, "score")
        rank = _cvss_rank(kind, _field(s, "vector"))
        if rank and score is not None:
            key = (rank, score, _field(s, "vector") or "")
            if best_cvss is None or key > best_cvss[0]:
                best_cvss = (key, s)
        elif kind == "vendor":
            level = LABEL_LEVELS.get((_field(s, "label") or "").upper())
            if level is not None and (best_label is None or level_rank(level) > level_rank(best_label)):
                best_label = level
    if best_cvss is not None:
        s = best_cvss[1]
        return {"level": (_field(s, "label") or "none").lower(), "score": _field(s, "score"),
                "type": _field(s, "type"), "vector": _field(s, "vector")}
    if best_label is not None:
        return {"level": best_label, "score": None, "type": "vendor", "vector": None}
    return None

