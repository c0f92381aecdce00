"""`stella-build kit …`: verify an Offline Kit and import its Trivy DBs (docs/offline-kit.md).

Exit codes (design §6): 0 ok · 2 usage (not a kit, foreign destination, no DB to import) ·
3 verification failed (a digest, a part, a signature, a downgrade) · 4 trust material missing
(--key given but the kit is unsigned) · 5 a URL was given as the key · 1 I/O error.
The work is done by stella_build/delivery/kit.py; this module only maps its results and errors.
"""
from __future__ import annotations

from pathlib import Path

import click

from stella_build.cli.common import CTX, emit, run_delivery
from stella_build.engine.errors import UsageError


_run = run_delivery  # MirrorError/KitError/OSError → the CLI error of the same exit code


def _max_bytes(value: str | None) -> int:
    from stella_build.delivery.kit import MAX_KIT_BYTES
    from stella_build.rules.formats.kit import parse_size

    if value is None:
        return MAX_KIT_BYTES
    try:
        return parse_size(value)
    except ValueError as exc:
        raise UsageError(str(exc), field="--max-size", reason="bad-size") from None


_KEY_HELP = ("The public key (cosign.pub) the kit must be signed with: its detached signature, "
             "trust/cosign.pub and every signature inside. Without it only digests are checked.")
_MAX_HELP = "Refuse a kit that inflates to more than this (default 32G; e.g. 64G)."


def _signatures(report: dict) -> str:
    sig = report["signatures"]
    if sig["trusted"] is None:
        return "integrity only: no --key"
    archive = "the archive's detached signature and " if sig["archive"] else ""
    return f"{archive}{sig['checked']} signatures verified with key sha256:{sig['trusted']['sha256'][:16]}…"


@click.group(context_settings=CTX)
def kit():
    """Offline Kits built by offline_kit targets: verify, import (docs/offline-kit.md)."""


@kit.command("verify", context_settings=CTX)
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--key", "key", default=None, metavar="COSIGN_PUB", help=_KEY_HELP)
@click.option("--max-size", "max_size", default=None, metavar="SIZE", help=_MAX_HELP)
@click.pass_obj
def kit_verify(settings, path, key, max_size):
    """Verify an Offline Kit offline: PATH is its archive, its parts list, the directory holding
    either (a build's output directory), or an unpacked kit.

    \b
    Checks, in one streamed pass with bounded memory: the parts (missing, changed, reordered),
    the archive against <archive>.sha256, every member (safe path, type, order), every file
    against checksums.txt and offline-manifest.json, the Trivy DBs inside their archives, a
    carried developer portal's own checksums.txt and manifest.json (devportal/), and with --key
    the detached signature and every signature in the kit (the portal's manifest.dsse.json too).
      stella-build kit verify stella-out/profiles/offline-kit --key cosign.pub
    """
    from stella_build.delivery.kit import verify_kit

    report = _run(verify_kit, path, key, max_bytes=_max_bytes(max_size)).report
    form = ""
    if report["form"] == "parts":
        form = f", from {report['archive']['parts']} parts"
    elif report["form"] == "unpacked":
        form = ", unpacked"
    portal = report.get("devportal")
    carried = f" (developer portal {portal['bundleId']} checked)" if portal else ""
    emit(settings, f"OK: {report['kit']} ({report['kitId']}{form}): {report['files']} files, "
                   f"{len(report['exports'])} exports{carried}; {_signatures(report)}", {"ok": True, **report})


@kit.command("import", context_settings=CTX)
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--trivy-cache", "trivy_cache", required=True, type=click.Path(path_type=Path),
              help="Trivy's cache directory (trivy --cache-dir; Trivy's default is ~/.cache/trivy).")
@click.option("--key", "key", default=None, metavar="COSIGN_PUB", help=_KEY_HELP)
@click.option("--force", is_flag=True, help="Install into a non-empty directory that is not a Trivy cache.")
@click.option("--allow-downgrade", is_flag=True, help="Install DBs older than the installed ones.")
@click.option("--max-size", "max_size", default=None, metavar="SIZE", help=_MAX_HELP)
@click.pass_obj
def kit_import(settings, path, trivy_cache, key, force, allow_downgrade, max_size):
    """Verify the kit at PATH (as `kit verify`), then install its Trivy DBs into --trivy-cache:
    db/trivy.db + db/metadata.json and java-db/trivy-java.db + java-db/metadata.json, each
    directory swapped in atomically. Nothing is written before everything verifies; the same kit
    twice changes nothing; an older DB is refused unless --allow-downgrade. A developer portal
    in the kit (devportal/) is not installed: open it in the unpacked kit (docs/offline-kit.md).

    \b
    Then scan offline (the last two flags keep Trivy from calling check.trivy.dev):
      trivy --cache-dir DIR fs --skip-db-update --skip-java-db-update --offline-scan \\
            --skip-version-check --disable-telemetry .
    """
    from stella_build.delivery.kit import import_kit

    report = _run(import_kit, path, trivy_cache, key, force=force, allow_downgrade=allow_downgrade,
                  max_bytes=_max_bytes(max_size))
    done = ", ".join(f"{name} {action}" for name, action in sorted(report["installed"].items()))
    emit(settings, f"{done} into {report['trivyCache']} from {report['kit']} ({_signatures(report)})",
         {"ok": True, **report})
