"""`stella-build mirror …`: verify, apply deltas, decrypt, push/pull mirrors and deltas, build deltas.

Exit codes (design §6): 0 ok · 2 usage (not a mirror, bad reference, missing base, an output
directory that is not empty and not an earlier output) · 3 verification failed (digest, unsafe path,
link, size limit, TUF, tombstones, out-of-order, replayed or rollback delta, wrong age identity) ·
4 trust material missing · 1 push or pull failed. Every failure carries a reason (docs/mirror.md).
"""
from __future__ import annotations

import re
from pathlib import Path

import click

from stella_build.cli.build import build_options, run_build_command
from stella_build.cli.common import CTX, CommandFailed, emit, run_delivery
from stella_build.engine.errors import UsageError


_run = run_delivery  # MirrorError/KitError/OSError → the CLI error of the same exit code


def _force_option(f):
    return click.option("--force", is_flag=True, default=False,
                        help="Replace OUT even when it is a non-empty directory that is not an earlier "
                             "output of this command (everything in it is deleted).")(f)


@click.group(context_settings=CTX)
def mirror():
    """Consume mirror:full / mirror:delta outputs: verify, apply, decrypt, push, pull (docs/mirror.md)."""


@mirror.command("verify", context_settings=CTX)
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--key", "key", default=None, metavar="COSIGN_PUB",
              help="Also verify the signatures in mirror/signatures/ with this public key.")
@click.pass_obj
def mirror_verify(settings, path, key):
    """Verify a mirror directory: no links, contents, rerunHash, provenance subject, TUF, OCI layout
    and mirror.json, and with --key its signatures (signatures/export.sig over mirror.tar.zst,
    signatures/manifest.sig, …). A carried developer portal (mirror/devportal/) is then checked
    as `devportal verify` checks it (with --key, its manifest.dsse.json when signed).

    PATH may also be a delta: its structure, paths, blobs and OCI layout, and with --key the
    signature over manifest.diff.json (its patches are decoded by `mirror apply`, which needs the
    base).
    """
    from stella_build.delivery.verify.mirror import is_delta, verify_delta_dir, verify_mirror

    if is_delta(path):
        data = _run(verify_delta_dir, path, key)
        emit(settings, f"OK: delta {data['baseExportId']} → {data['exportId']} ({data['blobs']} blobs"
                       + (", signature verified" if key else "") + ")", {"ok": True, **data})
        return
    data = _run(verify_mirror, path, key)
    from stella_build.delivery.devportal import verify_carried
    from stella_build.delivery.verify.mirror import mirror_root

    portal = _run(verify_carried, mirror_root(path), key)  # mirror/devportal/, when carried
    if portal is not None:  # absent otherwise: reports of mirrors without a portal keep their shape
        data["devportal"] = portal
    emit(settings, f"OK: mirror {data['exportId']} ({data['files']} files"
                   + (", TUF verified" if data["tuf"] else "")
                   + (f", {data['signatures']} signatures verified" if key else "")
                   + (f", developer portal {portal['bundleId']} ({portal['files']} files) verified" if portal else "")
                   + ")", {"ok": True, **data})


@mirror.command("apply", context_settings=CTX)
@click.argument("base", type=click.Path(file_okay=False, path_type=Path))  # checked after recovery
@click.argument("delta", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the new mirror: new, empty, a mirror output, or BASE itself (replaced "
                   "atomically). Anything else: exit 2 unless --force.")
@click.option("--key", "key", default=None, metavar="COSIGN_PUB",
              help="Require signatures: the delta's over manifest.diff.json before applying, and the new "
                   "mirror's (signatures/) before it replaces anything. Unsigned: exit 4.")
@_force_option
@click.pass_obj
def mirror_apply(settings, base, delta, out, key, force):
    """Verify BASE and DELTA, apply DELTA, write the new mirror to OUT atomically.

    The result is byte-identical to a fresh mirror:full build of the new inputs (signatures and
    signed OCI layout included), plus appliedExportIds.log. Out-of-order, already-applied and
    rollback deltas are refused (exit 3); nothing is written before every path and the whole
    delta are checked.

    \b
      stella-build mirror apply mirrors/current stella-out/profiles/mirror-delta -o mirrors/current --key cosign.pub
    """
    from stella_build.delivery.mirror_apply import apply_delta

    data = _run(apply_delta, base, delta, out, key, force=force)
    emit(settings, f"applied {data['exportId']} onto {data['baseExportId']}: +{data['added']} "
                   f"~{data['changed']} -{data['removed']} files → {out}", {"ok": True, **data})


@mirror.command("decrypt", context_settings=CTX)
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-i", "--identity", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="age identity file (AGE-SECRET-KEY-1…, as written by age-keygen).")
@click.option("-o", "--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the plaintext mirror: new, empty or a mirror output (exit 2 otherwise, "
                   "unless --force).")
@click.option("--key", "key", default=None, metavar="COSIGN_PUB",
              help="Verify the encrypted mirror's signatures with this public key before decrypting.")
@_force_option
@click.pass_obj
def mirror_decrypt(settings, path, identity, out, key, force):
    """Decrypt an encrypted mirror into OUT: the plaintext tree, archive and OCI layout exactly as
    the producer built them before encrypting (checked against mirror.json). The signatures over
    export.json and the provenance are kept; those over the encrypted archive are left out.
    Wrong identity or bad signature: exit 3."""
    from stella_build.delivery.mirror_apply import decrypt_mirror

    data = _run(decrypt_mirror, path, identity, out, key, force=force)
    emit(settings, f"decrypted {data['files']} files of {data['exportId']} → {out}", {"ok": True, **data})


_REF = re.compile(r"^(?P<host>[^/]+)/(?P<repo>[a-z0-9][a-z0-9._/-]*?)(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]{0,127}))?$")


def parse_reference(ref: str, plain_http: bool | None) -> tuple[str, str, str | None]:
    """REGISTRY/REPO[:TAG] → (base URL, repository, tag). Loopback hosts default to plain HTTP."""
    m = _REF.match(ref.removeprefix("docker://"))
    if not m:
        raise UsageError(f"bad registry reference {ref!r} (expected HOST[:PORT]/REPO[:TAG])", field="REFERENCE")
    host = m["host"]
    loopback = host.split(":")[0] in ("localhost", "127.0.0.1", "[::1]")
    scheme = "http" if (plain_http if plain_http is not None else loopback) else "https"
    return f"{scheme}://{host}", m["repo"], m["tag"]


@mirror.command("push", context_settings=CTX)
@click.argument("layout", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("reference")
@click.option("--plain-http/--https", default=None, help="Default: plain HTTP for loopback registries only.")
@click.pass_obj
def mirror_push(settings, layout, reference, plain_http):
    """Push a mirror's or a delta's OCI layout (LAYOUT = its output directory or oci/) to
    REGISTRY/REPO[:TAG].

    Digests are preserved; signature referrers are pushed with the tag-schema fallback when the
    registry has no referrers API. With :TAG, the mirror (or delta) manifest is also tagged TAG.
    Trivy DB layouts are not pushed by this command: use skopeo (docs/trivy-db.md).

    \b
      stella-build mirror push stella-out/profiles/mirror-delta registry:5000/mirrors/delta:v2
    """
    from stella_build.rules.formats.mirror import MIRROR_TAG
    from stella_build.rules.formats.mirror import DELTA_TAG
    from stella_build.rules.formats.oci import OciLayoutReader
    from stella_build.delivery.registry import RegistryClient, RegistryError, push_layout

    root = layout / "oci" if (layout / "oci" / "index.json").is_file() else layout
    if not (root / "index.json").is_file():
        raise UsageError(f"{layout}: no OCI layout (index.json) here or in oci/")
    base_url, repo, tag = parse_reference(reference, plain_http)
    reader = OciLayoutReader(root)
    main = next((t for t in (MIRROR_TAG, DELTA_TAG) if t in reader.tags()), None)
    if main is None:
        raise UsageError(f"{root}: neither a mirror nor a delta layout (no '{MIRROR_TAG}' or '{DELTA_TAG}' tag)")
    try:
        client = RegistryClient(base_url, repo)
        result = push_layout(root, client)
        if tag:
            desc = reader.resolve(main)
            result.tags[tag] = client.put_manifest(reader.read_blob(desc), desc.media_type, tag)
    except (RegistryError, KeyError) as exc:
        raise CommandFailed(f"push to {reference} failed: {exc}", 1, reason="push-failed") from None
    emit(settings, f"pushed {len(result.blobs_uploaded)} blobs ({len(result.blobs_skipped)} already there), "
                   f"{len(result.manifests)} manifests; tags: "
                   + ", ".join(f"{t}={d[:19]}…" for t, d in sorted(result.tags.items())),
         {"ok": True, "blobs_uploaded": result.blobs_uploaded, "blobs_skipped": result.blobs_skipped,
          "manifests": result.manifests, "tags": result.tags})


@mirror.command("pull", context_settings=CTX)
@click.argument("reference")
@click.option("-o", "--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write the mirror (or delta) output directory to (replaced atomically): new, "
                   "empty or a mirror/delta output (exit 2 otherwise, unless --force).")
@click.option("--key", "key", default=None, metavar="COSIGN_PUB",
              help="Require the signature referrer and verify it against export.json / manifest.diff.json.")
@click.option("--plain-http/--https", default=None, help="Default: plain HTTP for loopback registries only.")
@_force_option
@click.pass_obj
def mirror_pull(settings, reference, out, key, plain_http, force):
    """Pull a mirror or a delta pushed by `mirror push` (REGISTRY/REPO:TAG) into OUT.

    Files come back from the artifact's layers, the signature from its referrer; everything is
    verified and re-packaged, and the rebuilt artifact must be the pulled one. Then use OUT with
    `mirror apply` (and `mirror verify`; a pulled mirror keeps only the signature referrer, so
    its signatures are checked by `pull --key`, not by `mirror verify --key`).

    \b
      stella-build mirror pull registry:5000/mirrors/delta:v2 -o delta/ --key cosign.pub
    """
    from stella_build.delivery.mirror_pull import pull_mirror
    from stella_build.delivery.registry import RegistryClient, RegistryError

    base_url, repo, tag = parse_reference(reference, plain_http)
    if not tag:
        raise UsageError(f"{reference}: name the tag to pull (REGISTRY/REPO:TAG)", field="REFERENCE")
    try:
        client = RegistryClient(base_url, repo)
    except RegistryError as exc:
        raise UsageError(str(exc), field="REFERENCE") from None
    data = _run(pull_mirror, client, tag, out, key, force=force)
    emit(settings, f"pulled {data['kind']} {data['digest'][:19]}… ({data['files']} files"
                   + (", signature verified" if key else ", signed" if data["signed"] else "") + f") → {out}",
         {"ok": True, **data})


@mirror.command("delta", context_settings=CTX)
@click.argument("patterns", nargs=-1, required=True)
@click.option("--base", "base", required=True, type=click.Path(path_type=Path),
              help="The base mirror: its export.json, its mirror/ tree or its output directory.")
@click.pass_obj
def mirror_delta(settings, patterns, base):
    """Build mirror_delta targets against --base (overrides the Exportfile's `base`);
    the same as `stella-build build --base BASE PATTERN...`."""
    run_build_command(settings, list(patterns), build_options(None, base))
