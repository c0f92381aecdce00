"""`stella-build devportal verify`: check a devportal:offline bundle before anyone opens it
(docs/devportal.md), offline, in one streamed pass with bounded memory.

PATH is the bundle archive (`devportal-offline-bundle.tar.gz`), a directory holding it (a build's
output directory: the archive is checked, and the unpacked tree beside it too), or an unpacked
bundle (a directory with checksums.txt). Checks, in order:

1. the archive against `<archive>.sha256` when that sidecar is beside it (`devportal-archive-digest`);
2. every member or file: a regular file (no link, device, directory entry: `devportal-member-invalid`), a safe
   relative path (`unsafe-path`), listed once (`path-collision`), the whole inflating to at most
   `max_bytes` and no single header larger than 1 MiB (`size-limit`: gzip and PAX bombs stop early);
3. checksums.txt: its first line `root <sha256>` is the sha256 of the lines after it
   (`devportal-checksums-invalid`), every file matches its line (`digest-mismatch`, naming the file), none is
   missing (`devportal-file-missing`) or unlisted (`devportal-file-unlisted`);
4. manifest.json: the format (`devportal-manifest-invalid`) and every entry's sha256 and size against the file
   (`devportal-manifest-mismatch`); every file but manifest.json, checksums.txt and manifest.dsse.json listed;
5. with `--key`: manifest.dsse.json is a DSSE envelope signed by that key (`signature-invalid`)
   over an in-toto statement whose subject is manifest.json's sha256 (`devportal-signature-subject`);
   an unsigned bundle with `--key` is exit 4 (`devportal-unsigned`).

Errors are MirrorErrors (stella_build/delivery/untrusted.py): exit 3 verification failed, 4 trust
material missing, 2 not a bundle; nothing is ever written.
"""
from __future__ import annotations

import hashlib
import json
import tarfile
import zlib
from pathlib import Path

from stella_build.delivery.untrusted import CHUNK, MirrorError, open_regular, scan_tree
from stella_build.rules.formats import devportal as D

__all__ = ["verify_devportal", "verify_carried", "check_files", "check_signature", "BESIDE", "KEPT", "MAX_BUNDLE_BYTES",
           "MAX_DOC_BYTES"]

MAX_BUNDLE_BYTES = 1 << 30   # inflated bytes of one bundle (a portal is a few MiB)
MAX_DOC_BYTES = 64 << 20     # manifest.json, checksums.txt, manifest.dsse.json, cosign.pub
MAX_MEMBERS = 200_000
_MAX_HEADER = 1 << 20        # tarfile reads a PAX / GNU long-name header whole; anything bigger is refused
_HEADER_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                 tarfile.SOLARIS_XHDTYPE)
_KEPT = (D.MANIFEST, D.CHECKSUMS, D.DSSE, D.PUBLIC_KEY)
# Files a build's output directory holds beside the bundle's own tree.
_BESIDE = (D.ARCHIVE, D.ARCHIVE + ".sha256", D.PROVENANCE)


class _Inflate:
    """The uncompressed stream of a .tar.gz for tarfile ("r|"), inflating on demand with a bounded
    output per call and in total, hashing the compressed bytes as they are read."""

    def __init__(self, raw, limit: int, name: str):
        self.raw, self.limit, self.name = raw, limit, name
        self.sha256 = hashlib.sha256()
        self.inflater = zlib.decompressobj(31)
        self.pending = b""
        self.total = 0
        self.eof = False

    def read(self, n: int = CHUNK) -> bytes:
        n = CHUNK if n is None or n < 0 else n  # tarfile's stream mode reads in fixed-size records
        out = bytearray()
        while len(out) < n:
            if self.pending:
                piece = self.inflater.decompress(self.pending, n - len(out))
                self.pending = self.inflater.unconsumed_tail
            elif self.eof:
                break
            else:
                chunk = self.raw.read(CHUNK)
                self.sha256.update(chunk)
                if not chunk:
                    self.eof = True
                    piece = self.inflater.flush()
                else:
                    piece = self.inflater.decompress(chunk, n - len(out))
                    self.pending = self.inflater.unconsumed_tail
            out += piece
            self.total += len(piece)
            if self.total > self.limit:
                raise MirrorError(f"{self.name} inflates to more than {self.limit} bytes", 3, "size-limit",
                                  file=self.name)
        return bytes(out)

    def drain(self) -> None:
        """Read the rest of the compressed file (so its sha256 covers every byte)."""
        while chunk := self.raw.read(CHUNK):
            self.sha256.update(chunk)


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses an oversized PAX or GNU long-name header before tarfile reads it into memory
    (tarfile has no limit of its own; `_proc_member` is its dispatch hook, where the header's type
    and declared size are known and nothing is read yet; stella_build/delivery/verify does the same)."""

    archive = ""

    def _proc_member(self, tarfile_):
        if self.type in _HEADER_TYPES and self.size > _MAX_HEADER:
            raise MirrorError(f"{self.archive}: a tar header of {self.size} bytes (a PAX header bomb?), more than "
                              f"the {_MAX_HEADER} allowed", 3, "size-limit", file=self.archive)
        return super()._proc_member(tarfile_)


def _stream_member(f, size: int, keep: bool, name: str) -> tuple[str, bytes | None]:
    h, kept, left = hashlib.sha256(), bytearray(), size
    while left:
        chunk = f.read(min(CHUNK, left))
        if not chunk:
            raise MirrorError(f"{name} is cut short", 3, "devportal-archive-invalid", file=name)
        h.update(chunk)
        if keep:
            kept += chunk
        left -= len(chunk)
    return h.hexdigest(), bytes(kept) if keep else None


def _scan_archive(archive: Path, max_bytes: int) -> tuple[dict[str, tuple[str, int]], dict[str, bytes], str]:
    """({member: (sha256, size)}, {kept member: bytes}, sha256 of the archive file)."""
    name = archive.name
    digests: dict[str, tuple[str, int]] = {}
    kept: dict[str, bytes] = {}
    with open_regular(archive) as raw:
        stream = _Inflate(raw, max_bytes, name)
        try:
            bounded = type("_Bounded", (_BoundedTarInfo,), {"archive": name})
            with tarfile.open(fileobj=stream, mode="r|", tarinfo=bounded) as tar:
                for member in tar:
                    where = f"{name}:{member.name}"
                    if not member.isfile():
                        raise MirrorError(f"{where} is not a regular file (links, directories and devices are "
                                          "refused)", 3, "devportal-member-invalid", file=where)
                    if not D.is_safe_path(member.name):
                        raise MirrorError(f"{where}: not a safe relative path", 3, "unsafe-path", file=where)
                    if member.name in digests:
                        raise MirrorError(f"{where} appears twice", 3, "path-collision", file=where)
                    if len(digests) >= MAX_MEMBERS:
                        raise MirrorError(f"{name} holds more than {MAX_MEMBERS} members", 3, "size-limit", file=name)
                    if member.size > max_bytes - stream.total:
                        raise MirrorError(f"{where} declares {member.size} bytes, more than the {max_bytes} a "
                                          "bundle may inflate to", 3, "size-limit", file=where)
                    keep = member.name in _KEPT
                    if keep and member.size > MAX_DOC_BYTES:
                        raise MirrorError(f"{where} has {member.size} bytes (at most {MAX_DOC_BYTES})", 3,
                                          "size-limit", file=where)
                    digest, data = _stream_member(tar.extractfile(member), member.size, keep, where)
                    digests[member.name] = (digest, member.size)
                    if data is not None:
                        kept[member.name] = data
        except (tarfile.TarError, zlib.error, EOFError) as exc:
            raise MirrorError(f"{name} is damaged: {exc}", 3, "devportal-archive-invalid", file=name) from None
        stream.drain()
    return digests, kept, stream.sha256.hexdigest()


def _scan_dir(root: Path, allowed_beside: bool) -> tuple[dict[str, tuple[str, int]], dict[str, bytes]]:
    digests: dict[str, tuple[str, int]] = {}
    kept: dict[str, bytes] = {}
    for rel, path in scan_tree(root).items():  # refuses links, hard links, special files
        if allowed_beside and (rel in _BESIDE or rel.endswith(".keyless.sigstore.json")):
            continue
        if not D.is_safe_path(rel):
            raise MirrorError(f"{path}: not a safe bundle path", 3, "unsafe-path", file=path)
        h, size, data = hashlib.sha256(), 0, bytearray()
        with open_regular(path) as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                size += len(chunk)
                if rel in _KEPT:
                    data += chunk
                    if size > MAX_DOC_BYTES:
                        raise MirrorError(f"{path} is larger than {MAX_DOC_BYTES} bytes", 3, "size-limit", file=path)
        digests[rel] = (h.hexdigest(), size)
        if rel in _KEPT:
            kept[rel] = bytes(data)
    return digests, kept


def _check(digests: dict[str, tuple[str, int]], kept: dict[str, bytes], where: str) -> dict:
    """Checks 3 and 4 on one form of the bundle; returns the parsed manifest."""
    def at(name: str) -> str:
        return f"{where}:{name}" if where else name

    if D.CHECKSUMS not in kept:
        raise MirrorError(f"{at(D.CHECKSUMS)} is missing: not a devportal bundle", 2, "devportal-not-a-bundle", file=at(D.CHECKSUMS))
    try:
        root, listed = D.parse_checksums(kept[D.CHECKSUMS])
    except D.DevportalFormatError as exc:
        raise MirrorError(str(exc), 3, "devportal-checksums-invalid", file=at(D.CHECKSUMS)) from None
    for path in sorted(listed):
        if path not in digests:
            raise MirrorError(f"{path} is listed in checksums.txt but missing", 3, "devportal-file-missing", file=at(path))
        if digests[path][0] != listed[path]:
            raise MirrorError(f"{path} does not match checksums.txt (sha256 {digests[path][0]}, listed "
                              f"{listed[path]})", 3, "digest-mismatch", file=at(path))
    for path in sorted(digests):
        if path != D.CHECKSUMS and path not in listed:
            raise MirrorError(f"{path} is not listed in checksums.txt", 3, "devportal-file-unlisted", file=at(path))
    if D.MANIFEST not in kept:
        raise MirrorError(f"{at(D.MANIFEST)} is missing", 3, "devportal-manifest-invalid", file=at(D.MANIFEST))
    try:
        manifest = D.check_manifest(json.loads(kept[D.MANIFEST]))
    except (ValueError, D.DevportalFormatError) as exc:
        raise MirrorError(f"{D.MANIFEST}: {exc}", 3, "devportal-manifest-invalid", file=at(D.MANIFEST)) from None
    entries = {e["path"]: e for e in manifest["entries"]}
    for path, e in entries.items():
        if path not in digests or digests[path] != (e["sha256"], e["sizeBytes"]):
            raise MirrorError(f"{path}: manifest.json says sha256 {e['sha256']} and {e['sizeBytes']} bytes, the "
                              "file differs" if path in digests else f"{path} is in manifest.json but missing", 3,
                              "devportal-manifest-mismatch", file=at(path))
    for path in sorted(digests):
        if path not in D.UNLISTED and path not in entries:
            raise MirrorError(f"{path} is not listed in manifest.json", 3, "devportal-file-unlisted", file=at(path))
    return {"manifest": manifest, "root": root, "files": len(digests)}


def _check_signature(kept: dict[str, bytes], pub, where: str) -> dict:
    from stella_build.rules.formats.keys import public_key_digest
    from stella_build.rules.formats.signing import IN_TOTO_PAYLOAD_TYPE, SignatureInvalid, verify_dsse_envelope

    name = f"{where}:{D.DSSE}" if where else D.DSSE
    if D.DSSE not in kept:
        raise MirrorError(f"--key was given but the bundle is not signed ({D.DSSE} is missing)", 4,
                          "devportal-unsigned", file=name, field="--key")
    try:
        envelope = json.loads(kept[D.DSSE])
        payload_type, payload = verify_dsse_envelope(envelope, pub, name=D.DSSE)
    except (ValueError, SignatureInvalid) as exc:
        raise MirrorError(str(exc), 3, "signature-invalid", file=name) from None
    try:
        statement = json.loads(payload)
        subjects = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
        predicate_type = statement["predicateType"]
    except (ValueError, KeyError, TypeError) as exc:
        raise MirrorError(f"{D.DSSE}: the signed payload is not an in-toto statement ({exc})", 3,
                          "signature-invalid", file=name) from None
    if payload_type != IN_TOTO_PAYLOAD_TYPE or predicate_type != D.PREDICATE_TYPE:
        raise MirrorError(f"{D.DSSE}: signs a {payload_type} / {predicate_type}, not a devportal manifest", 3,
                          "signature-invalid", file=name)
    actual = hashlib.sha256(kept[D.MANIFEST]).hexdigest()
    if subjects.get(D.MANIFEST) != actual:
        raise MirrorError(f"{D.DSSE} signs a manifest.json with sha256 {subjects.get(D.MANIFEST)}, this one has "
                          f"{actual} (the manifest was changed after signing)", 3, "devportal-signature-subject",
                          file=name)
    return {"checked": True, "publicKeySha256": public_key_digest(pub)}


# What carriers of a portal (`kit verify`: stella_build/delivery/kit_devportal.py) reuse: they hold the
# files' digests from their own streamed pass, so they run the same checks on those.
KEPT = _KEPT
BESIDE = _BESIDE


def check_files(digests: dict[str, tuple[str, int]], kept: dict[str, bytes], where: str) -> dict:
    """checksums.txt and manifest.json of a bundle against its files' {path: (sha256, size)}
    (paths relative to the bundle; `kept` holds the bytes of KEPT files; `where` prefixes the file
    names in errors). Returns {"manifest", "root", "files"}; MirrorError (devportal-* reasons)."""
    return _check(digests, kept, where)


def check_signature(kept: dict[str, bytes], pub, where: str) -> dict:
    """manifest.dsse.json (in `kept`) against the trusted key `pub`: exit 4 `devportal-unsigned`
    when absent, 3 `signature-invalid` / `devportal-signature-subject`. Returns the check's report."""
    return _check_signature(kept, pub, where)


def verify_devportal(path: str | Path, key: str | None = None, *, max_bytes: int = MAX_BUNDLE_BYTES) -> dict:
    """Verify a devportal bundle (see the module docstring); the report (sorted-key JSON-able dict).
    Raises MirrorError (exit 3/4/2) or the StellaError of a bad --key file (4 missing, 2 not a key,
    5 a URL)."""
    pub = None
    if key is not None:
        from stella_build.delivery.verify.core import load_trusted_key

        pub = load_trusted_key(str(key))
    path = Path(path)
    if not path.exists():
        raise MirrorError(f"{path}: no such file or directory", 2, "devportal-not-a-bundle", file=path)
    forms = []
    if path.is_dir():
        archive = path / D.ARCHIVE
        if archive.is_file():
            forms.append(("archive", archive))
            if (path / D.CHECKSUMS).is_file():
                forms.append(("build-tree", path))
        elif (path / D.CHECKSUMS).is_file():
            forms.append(("unpacked", path))
        else:
            raise MirrorError(f"{path} holds neither {D.ARCHIVE} nor {D.CHECKSUMS}: not a devportal bundle", 2,
                              "devportal-not-a-bundle", file=path)
    else:
        forms.append(("archive", path))
    report: dict = {"path": str(path), "forms": [f for f, _ in forms]}
    results = []
    for form, where in forms:
        if form == "archive":
            digests, kept, archive_sha = _scan_archive(where, max_bytes)
            sidecar = where.with_name(where.name + ".sha256")
            if sidecar.is_file():
                line = sidecar.read_text(encoding="ascii", errors="replace").strip()
                if line != f"{archive_sha}  {where.name}":
                    raise MirrorError(f"{where.name} does not match {sidecar.name} (sha256 {archive_sha})", 3,
                                      "devportal-archive-digest", file=where)
            report["archive"] = {"name": where.name, "sha256": archive_sha, "sidecar": sidecar.is_file()}
            label = where.name
        else:
            digests, kept = _scan_dir(where, allowed_beside=form == "build-tree")
            label = ""
        checked = _check(digests, kept, label)
        signature = {"signed": D.DSSE in kept, "checked": False}
        if pub is not None:
            signature.update(_check_signature(kept, pub, label))
        results.append((checked, signature))
    (first, signature) = results[0]
    if len({r[0]["manifest"]["bundleId"] for r in results}) > 1:
        raise MirrorError("the archive and the tree beside it are different bundles", 3, "devportal-manifest-mismatch",
                          file=path)
    manifest = first["manifest"]
    report.update({"ok": True, "bundleId": manifest["bundleId"], "version": manifest["version"],
                   "generatedAt": manifest["generatedAt"], "root": first["root"], "files": first["files"],
                   "entries": manifest["totals"]["entryCount"], "bytes": manifest["totals"]["totalSizeBytes"],
                   "sources": manifest["sources"], "signature": signature})
    return report



def verify_carried(mirror_tree: str | Path, key: str | None = None) -> dict | None:
    """The developer portal a mirror carries (`mirror/devportal/`, a devportal_offline output
    directory; docs/mirror.md), checked as `devportal verify` checks a build's output directory:
    the archive against its .sha256 and its members, the unpacked bundle (checksums.txt,
    manifest.json) and, with `key` and a signed portal, manifest.dsse.json. The mirror's
    export.json already pins every byte (`mirror verify` checks that first); this adds the portal's
    own promises, so a mirror whose list was forged consistently still fails on the portal's.
    Returns {"bundleId", "files", "signed", "checked"}, None when the mirror carries no portal;
    MirrorError (devportal-* reasons, `digest-mismatch`; the file named by its path on disk)."""
    from stella_build.rules.formats.mirror import DEVPORTAL_DIR

    portal = Path(mirror_tree) / DEVPORTAL_DIR
    if not portal.is_dir():
        return None
    try:
        # an unsigned portal in a signed mirror is covered by the mirror's signatures over export.json
        report = verify_devportal(portal, key if (portal / D.DSSE).is_file() else None)
    except MirrorError as exc:
        name = exc.file or ""  # a path in the bundle, "<archive>:<member>", or a path on disk
        where = portal / name if name and not Path(name).is_absolute() else (name or portal)
        raise MirrorError(f"{DEVPORTAL_DIR}: {exc}", exc.exit_code, exc.reason, file=where, field=exc.field) from None
    return {"bundleId": report["bundleId"], "files": report["files"], "signed": report["signature"]["signed"],
            "checked": report["signature"]["checked"]}
