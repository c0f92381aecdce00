"""`stella-build devportal verify`: check a devportal:offline bundle offline (docs/devportal.md).

Exit codes (design §6): 0 ok · 2 not a bundle, or --key is not a public key · 3 verification failed
(a digest, the checksums root, the manifest, the signature, an unsafe member) · 4 trust material
missing (--key file missing, or --key given and the bundle is unsigned) · 5 a URL was given as the
key · 1 I/O error. The work is done by stella_build/delivery/devportal.py; this module only maps its
results and errors (the same mapping as `mirror`).
"""
from __future__ import annotations

from pathlib import Path

import click

from stella_build.cli.common import CTX, emit, output_option, run_delivery


_run = run_delivery  # MirrorError/KitError/OSError → the CLI error of the same exit code


@click.group(context_settings=CTX)
def devportal():
    """devportal:offline bundles: verify one before opening it (docs/devportal.md)."""


@devportal.command("verify", context_settings=CTX)
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--key", "key", default=None, metavar="COSIGN_PUB",
              help="The publisher's public key: manifest.dsse.json must be its signature over manifest.json. "
                   "Without it only integrity is checked.")
@output_option
@click.pass_obj
def devportal_verify(settings, bundle, key):
    """Verify a devportal:offline bundle: BUNDLE is devportal-offline-bundle.tar.gz, the directory
    holding it (a build's output directory), or an unpacked bundle.

    \b
    Checks, streaming with bounded memory and writing nothing: the archive against its .sha256,
    every member (regular file, safe path), checksums.txt (root and every file), manifest.json
    (format, every entry), and with --key the DSSE signature over manifest.json.
      stella-build devportal verify devportal-offline-bundle.tar.gz --key publisher.pub
    """
    from stella_build.delivery.devportal import verify_devportal

    report = _run(verify_devportal, bundle, key)
    sig = report["signature"]
    if sig["checked"]:
        signed = f"signature verified (key sha256:{sig['publicKeySha256'][:16]}…)"
    elif sig["signed"]:
        signed = "signed, signature not checked (no --key)"
    else:
        signed = "unsigned"
    emit(settings, f"OK: devportal bundle {report['bundleId']} ({', '.join(report['forms'])}): {report['files']} "
                   f"files match checksums.txt (root {report['root'][:16]}…) and manifest.json; {signed}", report)
