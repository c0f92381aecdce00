"""`stella-build trivy-db …`: consume Trivy DB patches built by trivy_db_patch targets (docs/trivy-db.md).

Exit codes: 0 ok · 2 usage (BASE missing, OUT not empty and not an earlier output) · 3 verification
failed (base-mismatch, patch-result-mismatch, digest-mismatch, schema-invalid, size-limit,
patch-invalid, signature-invalid) · 4 --key on an unsigned patch (signature-missing) · 1 I/O error. The work is done by stella_build/delivery/trivy_patch.py.
"""
from __future__ import annotations

from pathlib import Path

import click

from stella_build.cli.common import CTX, emit, run_delivery


_run = run_delivery  # MirrorError/KitError/OSError → the CLI error of the same exit code


@click.group("trivy-db", context_settings=CTX)
def trivy_db():
    """Trivy DB patches built by trivy_db_patch targets (docs/trivy-db.md, "Patches")."""


@trivy_db.command("patch", context_settings=CTX)
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("patch", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the new trivy.db and metadata.json: new, empty, an earlier output, or "
                   "BASE's own directory (e.g. a Trivy cache's db/), replaced atomically. Anything else: "
                   "exit 2 unless --force.")
@click.option("--force", is_flag=True, default=False,
              help="Replace OUT even when it is a non-empty directory that is not an earlier output "
                   "(or a symbolic link: the link is replaced, its target left alone), and apply a "
                   "patch whose DB is older than the one in OUT (rollback).")
@click.option("--key", "key", default=None, metavar="COSIGN_PUB",
              help="Trusted public key: patch.json must carry a signature by it (signatures/, made by a "
                   "signed trivy_db_patch target), checked before anything else (exit 4 unsigned, "
                   "exit 3 signature-invalid). Without it the patch proves integrity, not origin.")
@click.pass_obj
def trivy_db_patch(settings, base, patch, out, force, key):
    """Apply the patch directory PATCH (trivy.db.zst, metadata.json, patch.json) to BASE (the
    trivy.db a site holds, or the directory holding it) and write OUT/trivy.db and
    OUT/metadata.json.

    \b
    Nothing is written unless BASE has the digest patch.json names (else exit 3, base-mismatch)
    and the result has the promised digest (else exit 3, patch-result-mismatch).
      stella-build trivy-db patch ~/.cache/trivy/db stella-out/profiles/trivy-db-patch -o ~/.cache/trivy/db
      stella-build trivy-db patch --key cosign.pub BASE PATCH -o OUT   # a signed patch: origin too
    """
    from stella_build.delivery.trivy_patch import apply_patch_dir

    data = _run(apply_patch_dir, base, patch, out, force=force, key=key)
    if data.get("unchanged"):
        text = (f"trivy.db in {out} already is the patch's result {data['result'][:12]}…: nothing "
                "written")
    else:
        text = (f"patched trivy.db {data['base'][:12]}… → {data['result'][:12]}… ({data['bytes']} bytes "
                f"from a {data['patchBytes']}-byte patch) → {out}")
    emit(settings, text, {"ok": True, **data})
