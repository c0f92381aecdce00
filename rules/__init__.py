"""Built-in rules of stella-build, published through the `stella_build.rules` entry point."""
from __future__ import annotations


def register(registry) -> None:
    from .json_bundle import JsonRaw
    from .source_rules import OsvSource

    for rule in (OsvSource, JsonRaw):
        registry.add(rule)

    from .evidence_rules import RULES as EVIDENCE_RULES
    from .json_policy import JsonPolicy

    for rule in (*EVIDENCE_RULES, JsonPolicy):
        registry.add(rule)

    from .trivy_rules import RULES as TRIVY_RULES

    for rule in TRIVY_RULES:
        registry.add(rule)

    from .mirror import RULES as MIRROR_RULES
    from .mirror_delta import RULES as DELTA_RULES

    for rule in (*MIRROR_RULES, *DELTA_RULES):
        registry.add(rule)
