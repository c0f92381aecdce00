"""`stella-build mirror pull`: fetch a mirror or a delta from an OCI registry and lay it out as a
mirror (or delta) directory again, checked end to end.

The artifact's layers are the files (titled by path); the signature referrer, when the registry has
one (referrers API or the `sha256-<hex>` tag schema), is the export.json / manifest.diff.json
Sigstore bundle and goes back to signatures/. The directory is then re-packaged with the build's own
code (rules/mirror.py package_tree, rules/mirror_delta.py delta_layout) and the rebuilt artifact
manifest must be the pulled one, so what lands on disk is exactly what was pushed. Written
atomically (temporary sibling, then rename). Other signature files are not layers and are not
restored: with `key`, the referrer bundle is verified against the pulled manifest instead.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from stella_build.rules.formats.mirror import ARTIFACT_TYPE, MANIFEST_BUNDLE
from stella_build.delivery.verify.mirror import SUMMARY, MirrorError, _files, verify_delta, verify_tree
from stella_build.delivery.mirror_apply import _finish, _swap
from stella_build.rules.formats.mirror import DELTA_ARTIFACT_TYPE, DELTA_BUNDLE, DIFF_FILE, delta_layout
from stella_build.rules.formats.oci import ANNOTATION_TITLE, BUNDLE_MEDIA_TYPE, Descriptor, OciLayoutReader
from stella_build.delivery.registry import RegistryClient, RegistryError, pull_layout

KINDS = {ARTIFACT_TYPE: ("mirror", "export.json", MANIFEST_BUNDLE),
         DELTA_ARTIFACT_TYPE: ("delta", DIFF_FILE, DELTA_BUNDLE)}


def _safe(title: str) -> str:
    if not title or title.startswith("/") or ".." in title.split("/") or "\\" in title:
        raise MirrorError(f"layer title {title!r} is not a safe relative path")
    return title


def _referrer_bundle(client: RegistryClient, subject: str) -> bytes | None:
    """The Sigstore bundle referring to `subject`, if the registry has one."""
    for ref in client.referrers(subject):
        got = client.get_manifest(ref.digest)
        if got is None:
            continue
        manifest = json.loads(got[0])
        if manifest.get("artifactType") != BUNDLE_MEDIA_TYPE or not manifest.get("layers"):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            layer = Descriptor.from_json(manifest["layers"][0])
            client.fetch_blob(layer, Path(tmp) / "bundle")
            return (Path(tmp) / "bundle").read_bytes()
    return None


def pull_mirror(client: RegistryClient, tag: str, out: Path, key: str | None = None) -> dict[str, Any]:
    """Pull `tag` (a mirror or a delta artifact) into `out` as an output directory."""
    out = Path(out)
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        try:
            digest = pull_layout(client, tmp / "pulled", tags=[tag])[tag]
            reader = OciLayoutReader(tmp / "pulled")
            manifest = reader.read_json(reader.resolve(tag))
            kind, signed_name, bundle_name = KINDS.get(manifest.get("artifactType"), (None, None, None))
            if kind is None:
                raise MirrorError(f"{client.where()}:{tag} is not a stella-build mirror or delta "
                                  f"(artifactType {manifest.get('artifactType')!r})", 2)
            bundle = _referrer_bundle(client, digest)
        except RegistryError as exc:
            raise MirrorError(f"pull of {client.where()}:{tag} failed: {exc}", 1) from None
        root = tmp / kind
        for layer in manifest["layers"]:
            dest = root / _safe(layer["annotations"][ANNOTATION_TITLE])
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(reader.blob_path(layer["digest"]), dest)
        if bundle is not None:
            (root / bundle_name).parent.mkdir(parents=True, exist_ok=True)
            (root / bundle_name).write_bytes(bundle)
        if key is not None:
            _verify_bundle(bundle, (root / signed_name).read_bytes(), key, f"{client.where()}:{tag}")
        shutil.rmtree(tmp / "pulled")
        rebuilt = _repackage(kind, root, tmp)
        if rebuilt != digest:
            raise MirrorError(f"the pulled {kind} re-packages to {rebuilt}, not the pulled {digest}")
        _swap(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"kind": kind, "digest": digest, "files": len(manifest["layers"]), "signed": bundle is not None,
            "signatureVerified": key is not None}


def _repackage(kind: str, root: Path, out: Path) -> str:
    """Verify the laid-out files and write the OCI layout (and archive) again; the manifest digest."""
    if kind == "mirror":
        verify_tree(root)
        _finish(root, out, {}, None)  # oci/, mirror.tar.zst(.sha256), mirror.json as the build writes them
        return json.loads((out / SUMMARY).read_bytes())["ociManifestDigest"]
    diff = json.loads((root / DIFF_FILE).read_bytes())
    verify_delta(root, diff)
    return delta_layout(_files(root), out / "oci")["ociManifestDigest"]


def _verify_bundle(bundle: bytes | None, data: bytes, key: str, where: str) -> None:
    from stella_build.rules.formats import signing
    from stella_build.rules.formats.keys import SigningKeyError, load_public_key

    if bundle is None:
        raise MirrorError(f"--key given but {where} has no signature referrer", 4)
    try:
        pub = load_public_key(Path(key).read_bytes(), what=key)
    except (OSError, SigningKeyError) as exc:
        raise MirrorError(f"cannot use the public key {key}: {exc}", 4) from None
    try:
        signing.verify_sigstore_bundle(bundle, data, pub, name="referrer bundle")
    except signing.SignatureInvalid as exc:
        raise MirrorError(f"{where}: the signature referrer does not verify: {exc}") from None
