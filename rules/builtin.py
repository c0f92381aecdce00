"""Publishes the built-in rules through the `stella_build.rules` entry point."""
from __future__ import annotations

from stella_build.rules.devportal import RULES as DEVPORTAL_RULES
from stella_build.rules.json_policy import JsonPolicy
from stella_build.rules.json_raw import JsonRaw
from stella_build.rules.mirror_delta import RULES as DELTA_RULES
from stella_build.rules.mirror_full import RULES as MIRROR_RULES
from stella_build.rules.offline_kit import RULES as KIT_RULES
from stella_build.rules.sources import RULES as SOURCE_RULES
from stella_build.rules.trivy_db import RULES as TRIVY_RULES
from stella_build.rules.trivy_db_patch import RULES as TRIVY_PATCH_RULES


def register(registry) -> None:
    """Add every built-in rule to `registry` (engine.registry.RuleRegistry)."""
    for rule in (*SOURCE_RULES, JsonRaw, JsonPolicy, *TRIVY_RULES, *TRIVY_PATCH_RULES, *MIRROR_RULES, *DELTA_RULES, *KIT_RULES, *DEVPORTAL_RULES):
        registry.add(rule)
