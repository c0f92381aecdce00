"""Consumer side of Offline Kits: `stella-build kit verify` and `stella-build kit import`.

A kit (rules/formats/kit.py, docs/offline-kit.md) arrives as its archive
`stella-offline-kit-<date>.tar.gz` (with `.sha256` and, when signed, `.sig` / `.sigstore.json`
beside it), as that archive's parts (`parts/<archive>.part-NNN` + `<archive>.parts`), or unpacked.
Everything in it is hostile until checked, so both commands read it in ONE streamed pass and write
nothing outside a private staging directory until every check has passed:

- parts: the list is parsed strictly (names `<archive>.part-NNN` in order), every listed part must
  exist before reading starts, each is hashed as it streams by (a changed or reordered part fails
  at its end), no unlisted part may sit beside them;
- gzip is inflated here with zlib's `max_length` (never more output than asked for) and the total
  inflated size is capped (`max_bytes`, default 32 GiB), so a gzip bomb fails fast in bounded
  memory; tar is read in stream mode by `tarfile` with a TarInfo that refuses, before reading
  them, PAX/GNU headers over 1 MiB and every member type but regular files and hard links;
- members: one top directory `<kit name>/`, relative normalized paths of a safe character set,
  strictly ascending (sorted, unique), no file that is also a directory, hard links only to an
  earlier regular member, Trivy DB archives only as regular members; member data is hashed in
  1 MiB chunks, only small metadata files (lists, JSON, signatures, keys) are kept in memory;
- the Trivy DB archives inside are inflated while they stream by (same bounds): exactly the DB
  file and metadata.json, hashed and, for `import`, written into the staging directory (this
  stream pass is stella_build/delivery/kit_scan.py);
- then: the archive against `.sha256` and (with `--key`) its detached signature; every file
  against checksums.txt (root line, missing, extra, changed) and offline-manifest.json; the
  signatures list against what the exports carry; the DBs' members against the manifest; with
  `--key`, trust/cosign.pub must be that key and every signature in the kit must verify with it.

`import` then installs each DB directory (`db/`, `java-db/` of Trivy's cache layout) by renaming
the staged directory into place (an atomic exchange where the kernel offers one), so a Trivy
reading the cache sees the old DB or the new one. Installing the same kit again changes nothing;
a DB older than the installed one is refused unless `allow_downgrade`; a non-empty directory that
is not a Trivy cache is refused unless `force`.

Errors are `KitError`s (a MirrorError: exit code of the CLI's table, a kebab-case reason, the file
at fault): 3 verification failed, 2 usage, 4 trust material missing.
"""
from __future__ import annotations

import base64
import binascii
import ctypes
import errno
import json
import os
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from zlib_ng import zlib_ng

from stella_build.delivery.kit_scan import (  # noqa: F401  (KitError, MAX_KIT_BYTES: this module's API too)
    MAX_KIT_BYTES, HashReader, KitError, PartsReader, Scan, Scanner, scan_archive, scan_tree,
)
from stella_build.delivery.kit_devportal import check_devportal
from stella_build.rules.formats import kit as K

MAX_LIST = 1 << 20            # a parts list or a .sha256 sidecar
# Top-level entries of a Trivy cache directory (Trivy's own, and this module's staging names).
TRIVY_CACHE_ENTRIES = frozenset({"db", "java-db", "fanal", "policy", "checks", "vex"})
_STAGING = ".stella-kit-import-"
_OLD = ".stella-kit-old-"


# -- locating a kit ---------------------------------------------------------------------------------

@dataclass
class KitSource:
    """Where a kit is: its archive (or parts), or an unpacked tree; `directory` holds the sidecars."""

    directory: Path
    archive: str | None = None            # archive file name
    parts: Path | None = None             # the parts list
    tree: Path | None = None              # an unpacked kit

    @property
    def name(self) -> str:
        if self.tree is not None:
            return self.tree.name
        return self.archive.removesuffix(".tar.gz")


def _one(directory: Path, pattern: str) -> Path | None:
    matches = sorted(directory.glob(pattern)) if directory.is_dir() else []
    if len(matches) > 1:
        raise KitError(f"{directory} holds several kits ({', '.join(m.name for m in matches)}): name one",
                       2, "kit-ambiguous", file=directory)
    return matches[0] if matches else None


def locate(path: str | Path) -> KitSource:
    """A kit from what the user named: an unpacked kit (checksums.txt inside), a directory holding
    the archive or its parts (a target's output directory), the archive, or its parts list."""
    p = Path(path)
    if p.is_dir() and (p / K.CHECKSUMS).is_file():
        return KitSource(directory=p, tree=p)
    if p.is_dir():
        archive = _one(p, f"{K.KIT_PREFIX}*.tar.gz")
        if archive is not None:
            return KitSource(directory=p, archive=archive.name)
        parts = _one(p / K.PARTS_DIR, f"{K.KIT_PREFIX}*.tar.gz{K.PARTS_SUFFIX}") or _one(
            p, f"{K.KIT_PREFIX}*.tar.gz{K.PARTS_SUFFIX}")
        if parts is not None:
            return KitSource(directory=p, archive=parts.name.removesuffix(K.PARTS_SUFFIX), parts=parts)
        raise KitError(f"{p}: neither an unpacked kit nor a directory holding {K.KIT_PREFIX}*.tar.gz or its "
                       "parts", 2, "kit-missing", file=p)
    if p.is_file() and p.name.startswith(K.KIT_PREFIX) and p.name.endswith(".tar.gz" + K.PARTS_SUFFIX):
        top = p.parent.parent if p.parent.name == K.PARTS_DIR else p.parent
        return KitSource(directory=top, archive=p.name.removesuffix(K.PARTS_SUFFIX), parts=p)
    if p.is_file() and p.name.startswith(K.KIT_PREFIX) and p.name.endswith(".tar.gz"):
        return KitSource(directory=p.parent, archive=p.name)
    if not p.exists():
        raise KitError(f"{p}: no such file or directory", 2, "kit-missing", file=p)
    raise KitError(f"{p} is not an Offline Kit ({K.KIT_PREFIX}<date>.tar.gz, its parts list, or an unpacked kit)",
                   2, "kit-missing", file=p)


def _read_small(path: Path, what: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KitError(f"{what} is missing", reason="kit-file-missing", file=path) from None
    except OSError as exc:
        raise KitError(f"{what}: {exc.strerror}", reason="kit-file-missing", file=path) from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_LIST + 1)
    if len(data) > MAX_LIST:
        raise KitError(f"{what} is larger than {MAX_LIST} bytes", reason="kit-parts-invalid", file=path)
    return data


def _parts(source: KitSource) -> list[tuple[str, str]]:
    """The parts list, checked: strict format, every part present, no unlisted part."""
    try:
        parts = K.parse_parts_list(_read_small(source.parts, source.parts.name), source.archive, source.parts.name)
    except K.KitFormatError as exc:
        raise KitError(str(exc), reason="kit-parts-invalid", file=source.parts) from None
    directory = source.parts.parent
    for name, _ in parts:
        path = directory / name
        if not path.is_file() or path.is_symlink():
            raise KitError(f"part {name} is missing", reason="kit-part-missing", file=path)
    listed = {name for name, _ in parts}
    extra = sorted(p.name for p in directory.glob(f"{source.archive}.part-*") if p.name not in listed)
    if extra:
        raise KitError(f"{', '.join(extra)} beside {source.parts.name} but not in it", reason="kit-part-unlisted",
                       file=directory / extra[0])
    return parts


def _sidecar(source: KitSource) -> str | None:
    """The sha256 `<archive>.sha256` records, or None when there is none."""
    for directory in (source.directory, source.parts.parent if source.parts else None):
        if directory is None or not (directory / f"{source.archive}.sha256").is_file():
            continue
        path = directory / f"{source.archive}.sha256"
        text = _read_small(path, path.name).decode("ascii", "replace")
        digest, sep, name = text.rstrip("\n").partition("  ")
        if not sep or name != source.archive or len(digest) != 64 or text.count("\n") != 1 \
                or any(c not in "0123456789abcdef" for c in digest):
            raise KitError(f"{path.name} is not '<sha256>  {source.archive}'", reason="kit-sidecar-invalid", file=path)
        return digest
    return None


def _root_cause(source: KitSource, stream: HashReader, recorded: str | None) -> None:
    """After the scan failed part-way: read the rest of the archive (bounded by its size on disk)
    so that a changed or reordered part, or an archive that is not the one its .sha256 names, is
    reported as such rather than as the tar or gzip error it caused. Returns when neither holds."""
    stream.drain()  # a part that does not match its list entry raises kit-part-mismatch here
    if recorded is not None and stream.sha256.hexdigest() != recorded:
        raise KitError(f"{source.archive} has sha256 {stream.sha256.hexdigest()}, {source.archive}.sha256 says "
                       f"{recorded}", reason="kit-archive-digest", file=source.archive) from None


# -- checks after the scan ---------------------------------------------------------------------------

def _json(data: bytes | None, rel: str) -> dict:
    if data is None:
        raise KitError(f"{rel} is missing (or too large to be a kit metadata file)", reason="kit-file-missing", file=rel)
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise KitError(f"{rel} is not JSON ({exc})", reason="kit-manifest-invalid", file=rel) from None
    if not isinstance(doc, dict):
        raise KitError(f"{rel} is not a JSON object", reason="kit-manifest-invalid", file=rel)
    return doc


def _check_lists(scan: Scan) -> dict:
    """checksums.txt, offline-manifest.json, signatures.txt and attestations/checksums.txt against
    the files found; returns the manifest."""
    members = scan.members
    if K.CHECKSUMS not in scan.kept:
        raise KitError("checksums.txt is missing", reason="kit-checksums-missing", file=K.CHECKSUMS)
    try:
        root, listed = K.parse_checksums(scan.kept[K.CHECKSUMS])
    except K.KitFormatError as exc:
        raise KitError(str(exc), reason="kit-checksums-invalid", file=K.CHECKSUMS) from None
    for rel in sorted(listed):
        if rel not in members:
            raise KitError(f"{rel} is listed in checksums.txt but missing", reason="kit-file-missing", file=rel)
        if members[rel][0] != listed[rel]:
            raise KitError(f"{rel} has sha256 {members[rel][0]}, checksums.txt says {listed[rel]}",
                           reason="kit-checksum-mismatch", file=rel)
    unlisted = sorted(set(members) - set(listed) - {K.CHECKSUMS})
    if unlisted:
        raise KitError(f"{unlisted[0]} is not in checksums.txt" + (f" (and {len(unlisted) - 1} more)" if len(unlisted) > 1 else ""),
                       reason="kit-file-unlisted", file=unlisted[0])
    try:
        manifest = K.check_manifest(_json(scan.kept.get(K.MANIFEST), K.MANIFEST))
    except K.KitFormatError as exc:
        raise KitError(str(exc), reason="kit-manifest-invalid", file=K.MANIFEST) from None
    described = {e["path"]: (e["sha256"], e["size"]) for e in manifest["files"]}
    expected = {rel: d for rel, d in members.items() if rel not in (K.MANIFEST, K.CHECKSUMS)}
    if described != expected:
        diff = sorted(set(described.items()) ^ set(expected.items()))
        raise KitError(f"offline-manifest.json files[] do not describe the kit ({diff[0][0]})",
                       reason="kit-manifest-mismatch", file=diff[0][0])
    try:
        relations = K.parse_signatures(scan.kept.get(K.SIGNATURES, b""))
    except K.KitFormatError as exc:
        raise KitError(str(exc), reason="kit-manifest-mismatch", file=K.SIGNATURES) from None
    recomputed = []
    for export in manifest["exports"]:
        kind = export.get("kind") if isinstance(export, dict) else None
        if kind not in K.SECTIONS or export.get("path") != K.SECTIONS[kind]:
            raise KitError(f"offline-manifest.json: export {export!r} is not one this format knows",
                           reason="kit-manifest-invalid", file=K.MANIFEST)
        recomputed += K.signature_relations(kind, K.SECTIONS[kind], frozenset(members))
    listed_rel = [(s["kind"], s["signature"], s["subject"]) for s in manifest["signatures"]]
    if sorted(recomputed) != relations or listed_rel != relations:
        raise KitError("signatures.txt, offline-manifest.json signatures[] and the signature files in the kit "
                       "disagree", reason="kit-manifest-mismatch", file=K.SIGNATURES)
    for kind, db in manifest["trivy"].items():
        got = scan.inner.get(kind)
        want = {m: (v["sha256"], v["size"]) for m, v in db["members"].items()}
        if got != want:
            raise KitError(f"{db['archive']} holds other files than offline-manifest.json describes",
                           reason="kit-db-mismatch", file=db["archive"])
    if set(scan.inner) != set(manifest["trivy"]):
        raise KitError("offline-manifest.json trivy{} does not list the kit's Trivy DBs", reason="kit-manifest-mismatch",
                       file=K.MANIFEST)
    if K.ATTESTATION_CHECKSUMS in members:
        try:
            _, attested = K.parse_checksums(scan.kept.get(K.ATTESTATION_CHECKSUMS, b""), K.ATTESTATION_CHECKSUMS)
        except K.KitFormatError as exc:
            raise KitError(str(exc), reason="kit-checksums-invalid", file=K.ATTESTATION_CHECKSUMS) from None
        here = {rel[len(K.ATTESTATIONS) + 1:]: d[0] for rel, d in members.items()
                if rel.startswith(K.ATTESTATIONS + "/") and rel != K.ATTESTATION_CHECKSUMS}
        if attested != here:
            raise KitError("attestations/checksums.txt does not match attestations/", reason="kit-checksum-mismatch",
                           file=K.ATTESTATION_CHECKSUMS)
    return manifest


def _digest_signature(pub, signature: bytes, digest: bytes, what: str) -> None:
    """A cosign `--signature` file (base64 DER) over a blob known by its sha256: ECDSA or RSA keys
    verify prehashed, so a 1 GiB archive is never read into memory."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    try:
        raw = base64.b64decode(signature.strip(), validate=True)
    except binascii.Error:
        raw = signature
    try:
        if isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(raw, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        elif isinstance(pub, rsa.RSAPublicKey):
            pub.verify(raw, digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        else:
            raise KitError(f"{what}: the key type cannot check a signature by digest (ECDSA or RSA keys)",
                           reason="kit-signature-invalid", file=what)
    except InvalidSignature:
        raise KitError(f"{what} does not verify with the given key", reason="kit-signature-invalid", file=what) from None


def _check_signature(kind: str, sig: str, subject: str, scan: Scan, pub) -> None:
    from stella_build.rules.formats import signing

    data = scan.kept.get(sig)
    if data is None:
        raise KitError(f"{sig} is missing or too large to be a signature", reason="kit-signature-invalid", file=sig)
    digest = scan.members[subject][0]
    try:
        if kind == "bundle":
            signing.verify_sigstore_digest(data, bytes.fromhex(digest), pub, name=sig)
        elif kind == "sig":
            _digest_signature(pub, data, bytes.fromhex(digest), sig)
        elif kind == "attestation":
            signing.verify_dsse_bundle(data, pub, artifact_sha256=digest, name=sig)
        else:  # dsse: a bare envelope
            envelope = json.loads(data)
            payload_type, payload = signing.verify_dsse_envelope(envelope, pub, name=sig)
            statement = json.loads(payload)
            subjects = {(s.get("digest") or {}).get("sha256") for s in statement.get("subject") or []
                        if isinstance(s, dict)}
            if payload_type != signing.IN_TOTO_PAYLOAD_TYPE or digest not in subjects:
                raise signing.SignatureInvalid(f"{sig}: not an in-toto statement about {subject}")
    except signing.SignatureInvalid as exc:
        raise KitError(f"{exc}", reason="kit-signature-invalid", file=sig) from None
    except (ValueError, TypeError, AttributeError) as exc:
        raise KitError(f"{sig} is not a signature file ({exc})", reason="kit-signature-invalid", file=sig) from None


_EXPORT_MANIFESTS = {"trivy-db": "manifests/export.json", "trivy-java-db": "manifests/export.json",
                     "mirror-full": "mirror/export.json", "mirror-delta": "delta/manifest.diff.json"}


def _check_signed_manifests(manifest: dict, scan: Scan) -> None:
    """In an unpacked kit (no archive signature to cover every byte), every export must carry a
    signature over its manifest (checked later with the key), and what those manifests say about
    their files must hold: the Trivy manifests' contents (the DB file inside the archive included)
    and the mirror's export.json contents."""
    for export in manifest["exports"]:
        kind, section = export["kind"], export["path"]
        if kind == "devportal":  # its manifest.dsse.json: check_devportal (kit_devportal.py)
            continue
        rel = f"{section}/{_EXPORT_MANIFESTS[kind]}"
        if not any(s["kind"] == "bundle" and s["subject"] == rel for s in manifest["signatures"]):
            raise KitError(f"{section} is not signed: with --key an unpacked kit must carry signed exports "
                           "(or verify the signed archive instead)", 4, "kit-unsigned", file=section)
        if kind in K.TRIVY_DBS:
            inner = scan.inner.get(kind, {})
            for entry in _json(scan.kept[rel], rel).get("contents") or []:
                path = entry.get("path") if isinstance(entry, dict) else None
                got = inner.get(path) if path == K.TRIVY_DBS[kind][1] else scan.members.get(f"{section}/{path}")
                if got is None or "sha256:" + got[0] != entry.get("digest"):
                    raise KitError(f"{section}/{path} does not match the signed {rel}", reason="kit-checksum-mismatch",
                                   file=f"{section}/{path}")
        elif kind == "mirror-full":
            rel = f"{section}/mirror/export.json"
            for entry in _json(scan.kept.get(rel), rel).get("contents") or []:
                path = f"{section}/mirror/{entry.get('path')}" if isinstance(entry, dict) else ""
                got = scan.members.get(path)
                if got is None or "sha256:" + got[0] != entry.get("digest"):
                    raise KitError(f"{path} does not match the signed {rel}", reason="kit-checksum-mismatch", file=path)


def _check_trust(manifest: dict, scan: Scan, pub, key_path: str, archive_signed: bool) -> int:
    """With --key: trust/cosign.pub is that key, every signature of the kit verifies with it, the
    attestations are the statements their envelopes carry. Returns the signatures checked."""
    from stella_build.rules.formats.keys import SigningKeyError, load_public_key, public_key_digest

    relations = [(s["kind"], s["signature"], s["subject"]) for s in manifest["signatures"]]
    if K.TRUST_KEY in scan.members:
        try:
            shipped = load_public_key(scan.kept[K.TRUST_KEY], what=K.TRUST_KEY)
        except (SigningKeyError, KeyError) as exc:
            raise KitError(f"trust/cosign.pub is not a public key ({exc})", reason="kit-key-mismatch",
                           file=K.TRUST_KEY) from None
        if public_key_digest(shipped) != public_key_digest(pub):
            raise KitError(f"trust/cosign.pub is not the key given with --key ({key_path})", reason="kit-key-mismatch",
                           file=K.TRUST_KEY)
    elif not archive_signed:
        raise KitError("the kit is not signed (no trust/cosign.pub, no signatures)", 4, "kit-unsigned")
    for kind, sig, subject in relations:
        _check_signature(kind, sig, subject, scan, pub)
    for rel in sorted(scan.kept):
        if rel.startswith(K.ATTESTATIONS + "/") and rel.endswith("/attestation.sigstore.json"):
            from stella_build.rules.formats import signing

            adir = rel.rsplit("/", 1)[0]
            try:
                bundle = json.loads(scan.kept[rel])
                statement = base64.b64decode(bundle["dsseEnvelope"]["payload"], validate=True)
                signing.verify_dsse_bundle(scan.kept[rel], pub, name=rel)
            except (ValueError, KeyError, TypeError, binascii.Error, signing.SignatureInvalid) as exc:
                raise KitError(f"{rel} does not verify ({exc})", reason="kit-signature-invalid", file=rel) from None
            if scan.kept.get(f"{adir}/statement.json") != statement:
                raise KitError(f"{adir}/statement.json is not the statement its envelope signs",
                               reason="kit-signature-invalid", file=f"{adir}/statement.json")
    return len(relations)


def _check_archive_signature(source: KitSource, digest: str, pub) -> int:
    """The detached signature(s) beside the archive over its sha256; 0 when there is none."""
    from stella_build.rules.formats import signing

    checked = 0
    bundle = source.directory / f"{source.archive}.sigstore.json"
    if bundle.is_file():
        try:
            signing.verify_sigstore_digest(_read_small(bundle, bundle.name), bytes.fromhex(digest), pub, name=bundle.name)
        except signing.SignatureInvalid as exc:
            raise KitError(str(exc), reason="kit-signature-invalid", file=bundle) from None
        checked += 1
    legacy = source.directory / f"{source.archive}.sig"
    if legacy.is_file():
        _digest_signature(pub, _read_small(legacy, legacy.name), bytes.fromhex(digest), str(legacy))
        checked += 1
    return checked


# -- verify ---------------------------------------------------------------------------------------------

@dataclass
class Verified:
    """A verified kit: the report (JSON-able) and, when importing, the staged DB directories."""

    report: dict
    manifest: dict
    staged: dict[str, Path] = field(default_factory=dict)


def _load_key(key: str | None):
    if key is None:
        return None
    from stella_build.delivery.verify.core import load_trusted_key

    return load_trusted_key(key)  # exit 4 (missing), 5 (URL), 2 (not a public key)


def verify_kit(path: str | Path, key: str | None = None, *, max_bytes: int = MAX_KIT_BYTES,
               stage: Path | None = None) -> Verified:
    """Verify a kit (see the module docstring). With `stage` (an empty directory this process made),
    the Trivy DBs are also unpacked there, as `<cache dir name>/<file>`. Raises KitError."""
    pub = _load_key(key)
    source = locate(path)
    scanner = Scanner(max_bytes, stage)
    archive: dict | None = None
    if source.tree is not None:
        scan_tree(source.tree, scanner)
    else:
        parts = _parts(source) if source.parts is not None else None
        archive_path = source.directory / source.archive
        if parts is None and not archive_path.is_file():
            raise KitError(f"{archive_path} is missing", 2, "kit-missing", file=archive_path)
        raw = PartsReader(source.parts.parent, parts) if parts is not None else open(archive_path, "rb")
        recorded = _sidecar(source)
        stream = HashReader(raw)
        try:
            try:
                scan_archive(stream, source.name, scanner, source.archive)
            except KitError:
                _root_cause(source, stream, recorded)
                raise
            except (tarfile.TarError, EOFError, ValueError, UnicodeError, zlib_ng.error) as exc:
                _root_cause(source, stream, recorded)
                raise KitError(f"{source.archive}: {exc}", reason="kit-archive-invalid", file=source.archive) from None
            if stream.drain():  # the end of the last part is checked here too
                raise KitError(f"{source.archive}: data after the gzip stream", reason="kit-archive-invalid",
                               file=source.archive)
        except OSError as exc:
            raise KitError(f"{exc.filename or source.archive}: {exc.strerror or exc}", 1, "kit-io-error",
                           file=exc.filename) from None
        finally:
            raw.close()
        digest = stream.sha256.hexdigest()
        if recorded is not None and recorded != digest:
            raise KitError(f"{source.archive} has sha256 {digest}, {source.archive}.sha256 says {recorded}",
                           reason="kit-archive-digest", file=source.archive)
        if recorded is None and pub is None:
            raise KitError(f"{source.archive}.sha256 is missing: without it (or --key and a signature) nothing "
                           "anchors the archive", reason="kit-sidecar-missing", file=f"{source.archive}.sha256")
        archive = {"name": source.archive, "sha256": digest, "size": stream.size,
                   "parts": len(parts) if parts else 0, "sidecar": recorded is not None}
    scan = scanner.scan
    manifest = _check_lists(scan)
    if manifest["name"] != source.name and source.tree is None:
        raise KitError(f"offline-manifest.json names the kit {manifest['name']}, the archive is {source.archive}",
                       reason="kit-manifest-mismatch", file=K.MANIFEST)
    signatures = {"checked": 0, "archive": 0, "trusted": None}
    if pub is not None:
        from stella_build.rules.formats.keys import public_key_digest

        if archive is not None:
            signatures["archive"] = _check_archive_signature(source, archive["sha256"], pub)
            if not signatures["archive"]:
                raise KitError(f"{source.archive} has no detached signature ({source.archive}.sig or .sigstore.json) "
                               "to check with --key", 4, "kit-unsigned", file=source.archive)
        else:
            _check_signed_manifests(manifest, scan)
        signatures["checked"] = _check_trust(manifest, scan, pub, key, archive is not None)
        signatures["trusted"] = {"source": key, "sha256": public_key_digest(pub)}
    portals = [check_devportal(e, scan, pub, archive is None) for e in manifest["exports"] if e["kind"] == "devportal"]
    report = {
        "kit": manifest["name"], "kitId": manifest["kitId"], "kitVersion": manifest["kitVersion"],
        "form": "unpacked" if source.tree is not None else ("parts" if archive and archive["parts"] else "archive"),
        "archive": archive, "files": len(scan.members), "hardLinks": scan.links, "bytes": scan.total,
        "exports": [{k: e.get(k) for k in ("kind", "target", "path", "exportId", "signed")} for e in manifest["exports"]],
        "exportIds": manifest["exportIds"], "trivy": {k: v["metadata"] for k, v in manifest["trivy"].items()},
        "signatures": signatures,
    }
    if portals:  # absent otherwise: reports of kits without a portal keep their shape
        report["devportal"] = portals[0]
    staged = {kind: stage / K.TRIVY_DBS[kind][2] for kind in scan.inner} if stage is not None else {}
    return Verified(report, manifest, staged)


# -- import ----------------------------------------------------------------------------------------------

def _sweep(cache: Path) -> None:
    """Remove staging and old directories of imports that no longer run (killed mid-way)."""
    for entry in cache.iterdir() if cache.is_dir() else ():
        for prefix in (_STAGING, _OLD):
            if entry.name.startswith(prefix):
                pid = entry.name[len(prefix):].split("-", 1)[0]
                if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
                    shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_destination(cache: Path, force: bool) -> None:
    if cache.exists() and not cache.is_dir():
        raise KitError(f"{cache} is not a directory", 2, "destination-invalid", file=cache)
    if not cache.exists():
        return
    foreign = sorted(e.name for e in cache.iterdir()
                     if e.name not in TRIVY_CACHE_ENTRIES and not e.name.startswith((_STAGING, _OLD)))
    if foreign and not force:
        raise KitError(f"{cache} is not empty and not a Trivy cache directory (it holds {', '.join(foreign[:5])}); "
                       "pass --force to install into it anyway", 2, "destination-not-trivy-cache", file=cache)


def _metadata(path: Path, what: str) -> dict:
    try:
        doc = json.loads(_read_small(path, what))
    except ValueError as exc:
        raise KitError(f"{what} is not JSON ({exc})", reason="kit-metadata-invalid", file=what) from None
    if not isinstance(doc, dict):
        raise KitError(f"{what} is not a JSON object", reason="kit-metadata-invalid", file=what)
    return doc


def _updated_at(meta: dict, what: str) -> int:
    from stella_build.engine.encode.timefmt import parse_rfc3339

    try:
        return parse_rfc3339(meta["UpdatedAt"])
    except (KeyError, ValueError, TypeError, AttributeError):
        raise KitError(f"{what}: UpdatedAt is missing or not a time", reason="kit-metadata-invalid", file=what) from None


def _same_files(a: Path, b: Path, names: tuple[str, ...]) -> bool:
    from stella_build.engine.encode.digest import file_sha256

    return all((b / n).is_file() and not (b / n).is_symlink() and file_sha256(a / n) == file_sha256(b / n)
               for n in names)


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step with renameat2(RENAME_EXCHANGE) (Linux 3.15+, glibc 2.28+):
    no moment without a DB directory. False where the kernel, libc or file system lacks it. The
    standard library has no binding for it, hence ctypes."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    if ctypes.get_errno() in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(a))


def _install(staged: Path, dest: Path) -> None:
    """Put the staged DB directory at `dest`: exchanged atomically when possible, else the old
    directory is moved aside and the new one renamed in (a crash between leaves no `dest`, never a
    mix; the next import installs it)."""
    os.chmod(staged, 0o755)
    for f in staged.iterdir():
        os.chmod(f, 0o644)
    fd = os.open(staged, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if dest.is_dir() and not dest.is_symlink() and _exchange(staged, dest):
        shutil.rmtree(staged)  # now the old DB
        return
    old = dest.parent / f"{_OLD}{os.getpid()}-{dest.name}"
    if dest.exists() or dest.is_symlink():
        os.replace(dest, old)
    os.replace(staged, dest)
    shutil.rmtree(old, ignore_errors=True)


def import_kit(path: str | Path, trivy_cache: str | Path, key: str | None = None, *, force: bool = False,
               allow_downgrade: bool = False, max_bytes: int = MAX_KIT_BYTES) -> dict:
    """Verify the kit, then install its Trivy DBs into `trivy_cache` (Trivy's --cache-dir layout:
    db/trivy.db, db/metadata.json, java-db/trivy-java.db, java-db/metadata.json). Nothing is
    installed unless everything verifies and no DB would be a downgrade. Returns the report with
    `installed` / `unchanged` per DB. Raises KitError."""
    cache = Path(trivy_cache).resolve()  # the directory the user named, wherever a link takes it
    _check_destination(cache, force)
    cache.mkdir(parents=True, exist_ok=True)
    _sweep(cache)
    stage = cache / f"{_STAGING}{os.getpid()}"
    stage.mkdir(mode=0o700)
    try:
        verified = verify_kit(path, key, max_bytes=max_bytes, stage=stage)
        if not verified.staged:
            raise KitError("the kit carries no Trivy DB to import", 2, "kit-no-db")
        plan = []
        for kind, staged in sorted(verified.staged.items()):
            _archive, db_name, cache_dir, version = K.TRIVY_DBS[kind]
            what = f"{verified.manifest['trivy'][kind]['archive']}:metadata.json"
            meta = _metadata(staged / "metadata.json", what)
            if meta.get("Version") != version:
                raise KitError(f"{what}: Version {meta.get('Version')!r}, Trivy expects {version}",
                               reason="kit-metadata-invalid", file=what, field="Version")
            new = _updated_at(meta, what)
            dest = cache / cache_dir
            names = (db_name, "metadata.json")
            if _same_files(staged, dest, names):
                plan.append((kind, staged, dest, "unchanged"))
                continue
            if (dest / "metadata.json").is_file() and not allow_downgrade:
                current = _updated_at(_metadata(dest / "metadata.json", str(dest / "metadata.json")),
                                      str(dest / "metadata.json"))
                if new < current:
                    raise KitError(f"{cache_dir}: the kit's DB (UpdatedAt {meta['UpdatedAt']}) is older than the "
                                   f"installed one; pass --allow-downgrade to install it anyway", 3, "kit-downgrade",
                                   file=dest / "metadata.json")
            plan.append((kind, staged, dest, "installed"))
        for kind, staged, dest, action in plan:
            if action == "installed":
                _install(staged, dest)
        report = dict(verified.report)
        report["trivyCache"] = str(cache)
        report["installed"] = {K.TRIVY_DBS[k][2]: action for k, _s, _d, action in plan}
        return report
    finally:
        shutil.rmtree(stage, ignore_errors=True)
