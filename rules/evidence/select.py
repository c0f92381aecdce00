"""Selectors (Exportfile `selectors = {...}`) applied to raw OSV record summaries.

A record summary is the dict a source shard writes per record: `ecosystems`, `packages`
([ecosystem, name] pairs) and `modified` (RFC 3339). Matching is case-insensitive on ecosystems and
package names; `modified_since` accepts a date (midnight UTC) or an RFC 3339 date-time.
"""
from __future__ import annotations

from stella_build.engine.rule_api import parse_rfc3339


def selected(rec: dict, sel: dict, since: int | None) -> bool:
    """Whether a record summary passes the selectors `sel` (a Selectors dump) and `since`."""
    if "ecosystems" in sel:
        wanted = {e.lower() for e in sel["ecosystems"]}
        if not any(e.lower() in wanted for e in rec["ecosystems"]):
            return False
    if "packages" in sel:
        wanted = {p.lower() for p in sel["packages"]}
        if not any(name.lower() in wanted for _, name in rec["packages"]):
            return False
    if since is not None and parse_rfc3339(rec["modified"]) < since:
        return False
    return True


def since_epoch(sel: dict) -> int | None:
    """`modified_since` of a Selectors dump as epoch seconds, or None."""
    value = sel.get("modified_since")
    if not value:
        return None
    return parse_rfc3339(value if "T" in value else value + "T00:00:00Z")
