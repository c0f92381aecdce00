"""Rule discovery through the `stella_build.rules` entry-point group.

The engine never imports a concrete rule: each entry point names either a Rule subclass or a
`register(registry)` callable that adds several (how the built-in rules are published).
"""
from __future__ import annotations

from importlib.metadata import entry_points

from stella_build.engine.errors import UsageError
from stella_build.engine.rule_api import Rule

_RULES: dict[str, type[Rule]] | None = None


class RuleRegistry(dict):
    def add(self, rule: type[Rule]) -> None:
        if rule.name in self and self[rule.name] is not rule:
            raise UsageError(f"two rules are registered under the name {rule.name!r}")
        self[rule.name] = rule


def rules() -> dict[str, type[Rule]]:
    global _RULES
    if _RULES is None:
        registry = RuleRegistry()
        for ep in sorted(entry_points(group="stella_build.rules"), key=lambda e: e.name):
            obj = ep.load()
            if isinstance(obj, type) and issubclass(obj, Rule):
                registry.add(obj)
            else:
                obj(registry)
        _RULES = dict(sorted(registry.items()))
    return _RULES
