"""Signing commands: `keys generate`, `verify BUNDLE`, and the `--sign` option of `build`.

The work is done by the signing rules' libraries (stella_build.rules.formats.keys, .verify), imported
lazily so the CLI starts fast and the engine keeps no import-time dependency on a concrete rule.
Exit codes (design §6): 0 ok · 2 usage · 3 a check failed · 4 key/password/trust root missing ·
5 the request needs the network (a URL) — verify never touches it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from stella_build.engine.errors import TrustMaterialMissing, UsageError
from stella_build.cli.common import emit

_HELP = {"help_option_names": ["-h", "--help"]}
PASSWORD_ENV = "COSIGN_PASSWORD"


@click.group(context_settings=_HELP)
def keys():
    """Signing keys in cosign's formats (ECDSA P-256)."""


@keys.command("generate", context_settings=_HELP)
@click.option("--output-dir", required=True, type=click.Path(file_okay=False),
              help="Directory for cosign.key and cosign.pub (created if needed).")
@click.option("--output", type=click.Choice(["text", "json"]), default=None)
@click.pass_obj
def keys_generate(settings, output_dir, output):
    """Write cosign.key (encrypted with $COSIGN_PASSWORD) and cosign.pub into --output-dir.

    \b
    The key files are the ones `cosign generate-key-pair` writes: cosign signs and verifies
    with them, and stella-build reads keys cosign made. Never overwrites an existing key.
      COSIGN_PASSWORD=... stella-build keys generate --output-dir keys/
    """
    from stella_build.rules.formats.keys import (SigningKeyError, load_public_key, public_key_digest,
                                                 write_keypair)

    if output:
        settings.output = output
    password = os.environ.get(PASSWORD_ENV)
    if password is None:
        raise TrustMaterialMissing(f"set {PASSWORD_ENV} to the password that will encrypt cosign.key "
                                   "(it may be empty; there is no prompt)", field=PASSWORD_ENV)
    try:
        key_path, pub_path = write_keypair(Path(output_dir), password.encode("utf-8"))
    except SigningKeyError as exc:
        raise UsageError(str(exc), file=output_dir, field="--output-dir") from None
    except OSError as exc:
        raise UsageError(f"cannot write the key pair into {output_dir}: {exc.strerror or exc}",
                         file=output_dir, field="--output-dir", reason="io-error") from None
    digest = public_key_digest(load_public_key(pub_path.read_bytes()))
    emit(settings, f"wrote {key_path} (private, mode 0600, encrypted with ${PASSWORD_ENV})\n"
                   f"wrote {pub_path} (public key sha256 {digest})",
         {"ok": True, "private_key": str(key_path), "public_key": str(pub_path), "public_key_sha256": digest})


@click.command(context_settings=_HELP)
@click.argument("bundle")
@click.option("--key", "key", metavar="cosign.pub", help="Public key that must have signed the bundle.")
@click.option("--trust-bundle-key", is_flag=True,
              help="Trust the bundle's own cosign.pub (proves integrity, not who signed it).")
@click.option("--allow-unsigned", is_flag=True, help="Check digests only; no signature is required.")
@click.option("--offline", is_flag=True,
              help="Refuse anything that would need the network (verify never uses it anyway).")
@click.option("--output", type=click.Choice(["text", "json"]), default=None)
@click.pass_obj
def verify(settings, bundle, key, trust_bundle_key, allow_unsigned, offline, output):
    """Verify a bundle offline: a bundle directory (the output directory of json:raw, json:policy,
    a signed trivy:db or trivy:java-db, mirror:full or mirror:delta), or a bundle.tar.gz with its
    sidecar files. Unsigned Trivy DBs carry no manifest to verify (build with --sign); Offline Kits:
    `stella-build kit verify`; developer portals: `stella-build devportal verify`.

    \b
    Checks, in order: archive vs .sha256 sidecar; signatures over manifests/export.json and the
    archive (Sigstore bundles and .sig files) with --key; every file's sha256 against contents[]
    and no unlisted files; rerunHash; provenance subjects; the provenance DSSE signatures; for
    trivy DBs and mirrors also oci/ (and mirror.json) file by file.
      stella-build verify stella-out/profiles/json-raw --key cosign.pub
      stella-build verify stella-out/profiles/json-raw/bundle.tar.gz --key cosign.pub --output json
    Exit 0 verified, 2 not a bundle or bad arguments, 3 a check failed (the file is named), 4 no key /
    trust root, 5 a URL was given.
    """
    from stella_build.delivery.verify import verify_bundle

    if output:
        settings.output = output
    del offline  # nothing here reads the network; URLs are refused with exit 5 either way
    report = verify_bundle(bundle, key=key, trust_bundle_key=trust_bundle_key, allow_unsigned=allow_unsigned)
    emit(settings, _text_report(report), report.to_json(), exit_code=report.exit_code,
         errors=[{"check": c.name, "file": c.file or str(bundle), "message": c.message} for c in report.failed()])
    if not report.ok and settings.output == "json":
        for check in report.failed():
            click.echo(f"error: {check.file or bundle}: {check.message}", err=True)
    sys.exit(report.exit_code)


def _text_report(report) -> str:
    lines = []
    for c in report.checks:
        mark = {"passed": "ok  ", "failed": "FAIL", "skipped": "skip"}[c.status]
        lines.append(f"{mark} {c.name:<21} {c.message}")
    if report.ok:
        key = f" with key sha256:{report.key['sha256'][:16]}…" if report.key else " (digests only, unsigned)"
        lines.append(f"verified: {report.bundle} ({report.format}){key}")
    else:
        files = sorted({c.file for c in report.failed() if c.file})
        lines.append(f"FAILED: {len(report.failed())} check(s) failed in {report.bundle}; "
                     f"file(s): {', '.join(files) or '?'}")
    return "\n".join(lines)
