"""Built-in rules of stella-build, published through the `stella_build.rules` entry point."""
from __future__ import annotations


def register(registry) -> None:
    from .json_bundle import JsonRaw
    from .source_rules import OsvSource

    for rule in (OsvSource, JsonRaw):
        registry.add(rule)
