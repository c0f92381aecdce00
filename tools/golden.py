#!/usr/bin/env python3
"""Rebuild the default targets in a scratch workspace and print or --update golden/digests.json.

Changing a golden digest needs a reason in the commit message: what changed in the bytes and why.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import make_workspace, output_digests, run_cli  # noqa: E402

GOLDEN = ROOT / "golden" / "digests.json"
DEFAULT_TARGETS = ["//profiles:json-raw", "//profiles:json-policy", "//profiles:trivy-db",
                   "//profiles:trivy-java-db", "//profiles:mirror-full", "//profiles:mirror-delta"]
# Locked in digests.json and signed.json too; verified by tests/test_offline_kit.py (`kit verify`),
# not by `stella-build verify` like the bundles above.
KIT_TARGETS = ["//profiles:offline-kit"]
# Locked too; verified by tests/test_devportal.py (`devportal verify`, verify-offline.sh). Its inputs are
# the repository's docs/*.md, docs/openapi.json, exportfile.schema.json and CHANGELOG.md (through
# profiles/devportal/), so editing one of them changes these digests: refresh them with --update.
DEVPORTAL_TARGETS = ["//profiles:devportal-offline"]
# The full shared corpora (../shared/data); locked separately because they take longer to build.
CORPORA = ROOT / "golden" / "corpora.json"
CORPORA_TARGETS = ["//corpora:json-raw", "//corpora:trivy-db"]


# The default targets again, signed with the public test key (tests/signed_bundle.py): locks the
# signature bytes too (deterministic RFC 6979 ECDSA).
SIGNED = ROOT / "golden" / "signed.json"


def compute(targets: list[str], packages: tuple[str, ...], shared: bool, signed: bool = False) -> dict:
    from tests.signed_bundle import PASSWORD, write_public_test_keys

    with tempfile.TemporaryDirectory() as tmp:
        ws = make_workspace(Path(tmp) / "ws", packages=packages, shared=shared)
        env = None
        if signed:
            key, _ = write_public_test_keys(Path(tmp) / "keys")
            env = {"STELLA_SIGNING_KEY": str(key), "COSIGN_PASSWORD": PASSWORD}
        run_cli(["-q", "build", *targets], cwd=ws, cache=Path(tmp) / "cache", check=True, env=env)
        out = {}
        for label in targets:
            pkg, name = label[2:].split(":")
            out[label] = output_digests(ws, pkg, name)
        return out


def main() -> int:
    update = "--update" in sys.argv[1:]
    check = "--check" in sys.argv[1:]
    bad = 0
    for path, targets, packages, shared, signed in (
            (GOLDEN, DEFAULT_TARGETS + KIT_TARGETS + DEVPORTAL_TARGETS, ("profiles",), False, False),
            (CORPORA, CORPORA_TARGETS, ("corpora",), True, False),
            (SIGNED, DEFAULT_TARGETS + KIT_TARGETS + DEVPORTAL_TARGETS, ("profiles",), False, True)):
        if check and not path.exists():
            print(f"{path} missing")
            bad += 1
            continue
        text = json.dumps(compute(targets, packages, shared, signed), indent=2, sort_keys=True) + "\n"
        if update:
            path.write_text(text)
            print(f"wrote {path}")
        elif check:
            old, new = json.loads(path.read_text()), json.loads(text)
            for label in sorted(set(old) | set(new)):
                for f in sorted(set(old.get(label, {})) | set(new.get(label, {}))):
                    if old.get(label, {}).get(f) != new.get(label, {}).get(f):
                        print(f"{label} {f}: {old.get(label, {}).get(f)} -> {new.get(label, {}).get(f)}")
                        bad += 1
        else:
            sys.stdout.write(text)
    if check:
        print("golden digests match" if not bad else f"{bad} golden digests differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
