"""`stella-build mirror pull`: fetch a mirror or a delta from an OCI registry and lay it out as a
mirror (or delta) directory again, checked end to end.

The artifact's layers are the files (titled by path); the signature referrer, when the registry has
one (referrers API or the `sha256-<hex>` tag schema), is the export.json / manifest.diff.json
Sigstore bundle and goes back to signatures/. The directory is then re-packaged with the build's own
code (rules/formats/mirror.py package_tree, delta_layout) and the rebuilt artifact manifest must be
the pulled one, so what lands on disk is exactly what was pushed. Other signature files are not
layers and are not restored: with `key`, the referrer bundle is verified against the pulled
manifest instead.

The registry is untrusted: manifests are size-capped and blobs checked against their digests as
they stream (registry.py); every layer must carry a title that is a safe relative path, distinct
from the others and outside signatures/ (a delta's titles must be its own file names), all checked
before the first file is laid out. OUT is guarded and swapped in like `mirror apply`'s (outdir.py).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from stella_build.rules.formats.mirror import ARTIFACT_TYPE, MANIFEST_BUNDLE, SIGNATURES_DIR
from stella_build.rules.formats.mirror import DELTA_ARTIFACT_TYPE, DELTA_BUNDLE, DIFF_FILE, delta_layout
from stella_build.rules.formats.oci import ANNOTATION_TITLE, BUNDLE_MEDIA_TYPE, Descriptor, OciLayoutReader
from stella_build.delivery.mirror_apply import _finish
from stella_build.delivery.outdir import OutputDir
from stella_build.delivery.registry import RegistryClient, RegistryError, pull_layout
from stella_build.delivery.untrusted import MirrorError, check_distinct, copy_new, safe_relpath, write_new
from stella_build.delivery.verify.mirror import SUMMARY, _files, load_delta, verify_delta, verify_tree

KINDS = {ARTIFACT_TYPE: ("mirror", "export.json", MANIFEST_BUNDLE),
         DELTA_ARTIFACT_TYPE: ("delta", DIFF_FILE, DELTA_BUNDLE)}
_MAX_BUNDLE_BYTES = 1 << 20  # a Sigstore bundle is a few KiB


def _safe(title: object, field: str = "title") -> str:
    """A layer title as a relative path inside the output (see untrusted.safe_relpath)."""
    return safe_relpath(title, file="the pulled artifact manifest", field=field)


def layer_files(manifest: Any, kind: str) -> list[tuple[str, str]]:
    """[(title, digest)] of an artifact manifest's layers, validated before anything is written:
    every layer is an object with a sha256 digest and an `org.opencontainers.image.title`
    annotation that is a safe relative path, titles are distinct and none is a directory of
    another, none lies in signatures/ (the referrer bundle goes there), and a delta's titles are
    the names of delta files. MirrorError exit 3 naming the field otherwise."""
    where = "the pulled artifact manifest"
    layers = manifest.get("layers") if isinstance(manifest, dict) else None
    if not isinstance(layers, list) or not layers:
        raise MirrorError("it has no layers", 3, "schema-invalid", file=where, field="layers")
    out = []
    for i, layer in enumerate(layers):
        field = f"layers[{i}]"
        notes = layer.get("annotations") if isinstance(layer, dict) else None
        if not isinstance(notes, dict) or ANNOTATION_TITLE not in notes:
            raise MirrorError(f"{field} has no {ANNOTATION_TITLE} annotation: not a stella-build {kind}", 3,
                              "schema-invalid", file=where, field=f"{field}.annotations")
        title = _safe(notes[ANNOTATION_TITLE], f"{field}.annotations[{ANNOTATION_TITLE}]")
        if title.startswith(SIGNATURES_DIR):
            raise MirrorError(f"{field} is titled {title!r}: signatures are never layers", 3, "unsafe-path",
                              file=where, field=f"{field}.annotations")
        if kind == "delta" and not (title == DIFF_FILE or title.startswith(("blobs/sha256/", "patches/"))):
            raise MirrorError(f"{field} is titled {title!r}, which is not a delta file", 3, "unsafe-path",
                              file=where, field=f"{field}.annotations")
        try:
            digest = Descriptor.from_json(layer).digest
        except (KeyError, TypeError, ValueError) as exc:
            raise MirrorError(f"{field} is not a valid descriptor ({exc})", 3, "schema-invalid", file=where,
                              field=field) from None
        out.append((title, digest))
    check_distinct([t for t, _ in out], file=where, field="layers")
    return out


def _referrer_bundle(client: RegistryClient, subject: str) -> bytes | None:
    """The Sigstore bundle referring to `subject`, if the registry has one."""
    for ref in client.referrers(subject):
        got = client.get_manifest(ref.digest)
        if got is None:
            continue
        manifest = json.loads(got[0])  # get_manifest made sure it is a JSON object
        if manifest.get("artifactType") != BUNDLE_MEDIA_TYPE or not isinstance(manifest.get("layers"), list) \
                or not manifest["layers"]:
            continue
        try:
            layer = Descriptor.from_json(manifest["layers"][0])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RegistryError(f"referrer {ref.digest} at {client.where()} is malformed ({exc})") from None
        if layer.size > _MAX_BUNDLE_BYTES:
            raise RegistryError(f"referrer {ref.digest} at {client.where()} has a {layer.size}-byte bundle "
                                f"(at most {_MAX_BUNDLE_BYTES})")
        with tempfile.TemporaryDirectory() as tmp:
            client.fetch_blob(layer, Path(tmp) / "bundle")
            return (Path(tmp) / "bundle").read_bytes()
    return None


def pull_mirror(client: RegistryClient, tag: str, out: Path, key: str | None = None, *,
                force: bool = False) -> dict[str, Any]:
    """Pull `tag` (a mirror or a delta artifact) into `out` as an output directory.
    `out` is guarded (exit 2 for a non-empty directory that is not a mirror or delta output,
    unless `force`) and replaced atomically."""
    import shutil

    with OutputDir(out, kinds=("mirror", "delta"), force=force) as od:
        tmp = od.begin()
        try:
            digest = pull_layout(client, tmp / "pulled", tags=[tag])[tag]
            reader = OciLayoutReader(tmp / "pulled")
            manifest = reader.read_json(reader.resolve(tag))
            kind, signed_name, bundle_name = KINDS.get(manifest.get("artifactType"), (None, None, None))
            if kind is None:
                raise MirrorError(f"{client.where()}:{tag} is not a stella-build mirror or delta "
                                  f"(artifactType {manifest.get('artifactType')!r})", 2, "not-a-mirror")
            files = layer_files(manifest, kind)
            bundle = _referrer_bundle(client, digest)
        except RegistryError as exc:
            raise MirrorError(f"pull of {client.where()}:{tag} failed: {exc}", 1, "pull-failed") from None
        root = tmp / kind
        for title, layer_digest in files:
            copy_new(root, title, reader.blob_path(layer_digest))
        if bundle is not None:
            write_new(root, bundle_name, bundle)
        if key is not None:
            _verify_bundle(bundle, (root / signed_name).read_bytes() if (root / signed_name).is_file() else b"",
                           key, f"{client.where()}:{tag}")
        shutil.rmtree(tmp / "pulled")
        rebuilt = _repackage(kind, root, tmp)
        if rebuilt != digest:
            raise MirrorError(f"the pulled {kind} re-packages to {rebuilt}, not the pulled {digest}", 3,
                              "digest-mismatch")
        od.commit()
    return {"kind": kind, "digest": digest, "files": len(files), "signed": bundle is not None,
            "signatureVerified": key is not None}


def _repackage(kind: str, root: Path, out: Path) -> str:
    """Verify the laid-out files and write the OCI layout (and archive) again; the manifest digest."""
    if kind == "mirror":
        verify_tree(root)
        _finish(root, out, {}, None)  # oci/, mirror.tar.zst(.sha256), mirror.json as the build writes them
        return json.loads((out / SUMMARY).read_bytes())["ociManifestDigest"]
    root, diff = load_delta(root)
    verify_delta(root, diff)
    return delta_layout(_files(root), out / "oci")["ociManifestDigest"]


def _verify_bundle(bundle: bytes | None, data: bytes, key: str, where: str) -> None:
    from stella_build.rules.formats import signing
    from stella_build.rules.formats.keys import SigningKeyError, load_public_key

    if bundle is None:
        raise MirrorError(f"--key given but {where} has no signature referrer", 4, "signature-missing")
    try:
        pub = load_public_key(Path(key).read_bytes(), what=key)
    except (OSError, SigningKeyError) as exc:
        raise MirrorError(f"cannot use the public key {key}: {exc}", 4, field="--key") from None
    try:
        signing.verify_sigstore_bundle(bundle, data, pub, name="referrer bundle")
    except signing.SignatureInvalid as exc:
        raise MirrorError(f"{where}: the signature referrer does not verify: {exc}", 3, "signature-invalid") from None
