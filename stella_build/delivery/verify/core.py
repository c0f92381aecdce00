"""Offline verification of export bundles (`stella-build verify BUNDLE`): a library, no network ever.

A bundle is opened as a `BundleView` (a directory, a `.tar.gz` with its sidecar files, and through
`register_format` later an OCI layout), then checked in this order:

  1. archive-digest        each archive against its `.sha256` sidecar, when present
  2. bundle-key            the bundle's `cosign.pub` is the trusted key (byte-exact)
     manifest-signature    `manifests/export.json.sigstore.json` and `signatures/manifest.sig`
     archive-signature     `<archive>.sigstore.json` and `signatures/export.sig` (other `.sig` files
                           must verify over the manifest or an archive)
  3. contents              every file's size and sha256 against `contents[]`; no unlisted files
  4. rerun-hash            `rerunHash` recomputed from `contents[]`
  5. provenance-subjects   `manifests/provenance.json` subjects = the manifest's and archives' digests,
                           and the recorded signer is the trusted key
  6. provenance-signature  `manifests/provenance.sigstore.json` / `.dsse.json` verify and carry
                           exactly `manifests/provenance.json` as their payload

Signature files are parsed strictly (no unknown fields, canonical base64, the key hint must be the
trusted key's), so flipping any byte of any file of a signed bundle fails some check. Each check
speaks about a `subject` file on the strength of an `evidence` file; when a check fails, the file
blamed is whichever of the two other checks did not vouch for (see `_assign_blame`), so a report
names the file that was actually changed.

Output directories of other profiles (signed trivy DBs, mirrors) are views registered by
rules/verify_profiles.py; their extra files (an OCI layout, mirror.json) go through `extra_checks`.

Trust comes from the caller: a public key (`--key`), or explicitly the bundle's own `cosign.pub`.
Cryptography is delegated to rules/signing.py; this module decides what must be checked.

Everything verify reads comes from elsewhere, so it is read within limits (constants below):
content files and archive members are only streamed through sha256; JSON documents are read
whole only up to MAX_DOCUMENT_BYTES and parsed with the bounded loader of `evidence.bounded`
(nesting, numbers, no NaN); signature files up to MAX_SIGNATURE_BYTES. A bundle archive with a
trusted key is decompressed only after a signature next to it verifies its compressed bytes
(`archive-readable` fails "not unpacked" otherwise); unpacked, its decompressed size, tar headers,
manifest member and member count are capped. Any limit exceeded is a failed check naming the file.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
import posixpath
import re
import tarfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from stella_build.engine.errors import NetworkRequired, TrustMaterialMissing, UsageError

from stella_build.rules.evidence.bounded import DocumentError, load_json, read_capped
from stella_build.rules.formats import signing
from stella_build.delivery.keyless import KEYLESS_SUFFIX
from stella_build.rules.formats.bundle import PROVENANCE_DSSE, PROVENANCE_SIGSTORE, PUBLIC_KEY_FILE, SIGSTORE_SUFFIX
from stella_build.rules.formats.keys import PublicKey, SigningKeyError, encode_public_key, load_public_key, public_key_digest, public_key_hint

MANIFEST = "manifests/export.json"
PROVENANCE = "manifests/provenance.json"
TRUSTED_KEY = "<trusted key>"  # pseudo-file: the key the caller trusts
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.zst", ".tar")
# Legacy detached signatures with a known subject ("archive" = the bundle's archive).
LEGACY_SIGNATURES = {"signatures/manifest.sig": "manifest", "signatures/export.sig": "archive"}
_CHUNK = 1 << 20
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)

# Limits on what verify holds in memory. Everything else (content files, archive members) is only
# streamed through sha256, so a bundle of any size verifies in constant memory; these cover the
# files that are read whole and parsed, and the archive stream itself.
MAX_DOCUMENT_BYTES = 64 << 20   # a JSON document read whole: export.json, provenance, DSSE, OCI JSON
MAX_SIGNATURE_BYTES = 1 << 20   # a Sigstore message bundle, .sig, .sha256 sidecar or cosign.pub
MAX_TAR_HEADER_BYTES = 1 << 20  # one PAX / GNU long-name header (tarfile reads them whole)
# An archive may decompress to at most ARCHIVE_RATIO times its size (at least ARCHIVE_FLOOR bytes):
# bundle archives hold compressed .zst data and JSON (ratios of 1-10), while a gzip bomb of zeros
# reaches ~1,000 and a zstd one far more.
ARCHIVE_RATIO = 100
ARCHIVE_FLOOR = 256 << 20
ZSTD_MAX_WINDOW = 1 << 27       # 128 MiB: zstd's own default cap on a frame's window, made explicit


# -- report ------------------------------------------------------------------------------------

@dataclass
class Check:
    """One check. `ok` is None when skipped. `file` is the file blamed (resolved by `_assign_blame`
    from `subject`/`evidence` unless the check fixed it)."""

    name: str
    ok: bool | None
    message: str
    file: str | None = None
    subject: str | None = None
    evidence: str | None = None

    @property
    def status(self) -> str:
        return {True: "passed", False: "failed", None: "skipped"}[self.ok]

    def to_json(self) -> dict:
        return {"name": self.name, "ok": self.ok is not False, "status": self.status,
                "file": self.file, "message": self.message}


@dataclass
class Report:
    bundle: str
    format: str
    key: dict | None
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok is not False for c in self.checks)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 3

    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.ok is False]

    def to_json(self) -> dict:
        return {"ok": self.ok, "exit_code": self.exit_code, "bundle": self.bundle, "format": self.format,
                "key": self.key, "checks": [c.to_json() for c in self.checks],
                "failed_files": sorted({c.file for c in self.failed() if c.file})}


# -- bundle views ------------------------------------------------------------------------------

class BundleView:
    """Read access to one bundle, whatever its container. Names are bundle-relative posix paths."""

    kind = "?"
    display = ""
    archives: list[str]

    def __init__(self) -> None:
        self.problems: list[Check] = []  # container-level failures found while opening
        self.archives = []

    def has(self, name: str) -> bool:
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        raise NotImplementedError

    def digest(self, name: str) -> tuple[str, int]:
        """(sha256 hex, size) of a file."""
        raise NotImplementedError

    def content_names(self) -> list[str]:
        """Files that must be listed in contents[] unless they are bundle metadata."""
        raise NotImplementedError

    def names(self) -> list[str]:
        raise NotImplementedError

    def show(self, name: str) -> str:
        """How to name `name` in messages."""
        return name

    def size(self, name: str) -> int:
        """Size of a file in bytes (views override this with something cheaper than hashing)."""
        return self.digest(name)[1]

    def read_limited(self, name: str, limit: int) -> bytes:
        """The bytes of `name`; `_Bad` naming the file when it is larger than `limit` bytes, which
        is checked before anything is read."""
        size = self.size(name)
        if size > limit:
            raise _Bad(f"{self.show(name)} is {size} bytes, more than the {limit} bytes verify reads")
        return self.read(name)

    def read_json(self, name: str, limit: int = MAX_DOCUMENT_BYTES):
        """`name` parsed as JSON within the limits of `evidence.bounded` (size, nesting depth,
        integer digits, no NaN/Infinity); `_Bad` naming the file (and field) otherwise. Each file
        is parsed once per view: the manifest is read by several checks."""
        cache = self.__dict__.setdefault("_json_cache", {})
        if name not in cache:
            try:
                cache[name] = load_json(self.read_limited(name, limit), max_bytes=limit)
            except DocumentError as exc:
                field = "" if exc.field == "<document>" else f" (at {exc.field})"
                cache[name] = _Bad(f"{self.show(name)} is not valid JSON: {exc.message}{field}")
            except _Bad as exc:
                cache[name] = exc
        value = cache[name]
        if isinstance(value, _Bad):
            raise _Bad(str(value))
        return value

    # Hooks for profile-specific views (rules/verify_profiles.py).
    def metadata_names(self) -> set[str]:
        """More files that need not be listed in contents[] (checked otherwise)."""
        return set()

    def sealed_names(self) -> set[str]:
        """Files listed in contents[] that are present only encrypted (checked by extra_checks)."""
        return set()

    def provenance_required(self) -> list[str]:
        """Files the provenance must name as subjects."""
        return ([MANIFEST] if self.has(MANIFEST) else []) + list(self.archives)

    def subject_name(self, name: str) -> str:
        """The bundle name of a provenance subject (views may rename files)."""
        return name

    def extra_checks(self, verifier: "_Verifier") -> None:
        """Checks of files the generic steps do not cover (an OCI layout, a summary)."""


def _stream_sha256(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _is_archive_name(name: str) -> bool:
    return "/" not in name and name.endswith(ARCHIVE_SUFFIXES)


class DirectoryView(BundleView):
    """A bundle directory as built (stella-out/<package>/<target>/)."""

    kind = "directory"

    def __init__(self, root: Path):
        super().__init__()
        self.root = root
        self.display = str(root)
        self._files: dict[str, Path] = {}
        self._digests: dict[str, tuple[str, int]] = {}
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for fn in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
                p = Path(dirpath) / fn
                rel = p.relative_to(root).as_posix()
                if p.is_symlink() or not p.is_file():
                    self.problems.append(Check("layout", False, "not a regular file (symlinks are not "
                                               "allowed in bundles)", file=rel))
                    continue
                self._files[rel] = p
        self.archives = sorted(n for n in self._files if _is_archive_name(n))

    def has(self, name: str) -> bool:
        return name in self._files

    def read(self, name: str) -> bytes:
        return self._files[name].read_bytes()

    def digest(self, name: str) -> tuple[str, int]:
        if name not in self._digests:
            self._digests[name] = _stream_sha256(self._files[name])
        return self._digests[name]

    def size(self, name: str) -> int:
        return self._files[name].stat().st_size

    def read_limited(self, name: str, limit: int) -> bytes:
        try:  # reads at most limit + 1 bytes: a file that grows after the size check is caught too
            return read_capped(self._files[name], limit, self.show(name))
        except DocumentError as exc:
            raise _Bad(exc.message) from None

    def names(self) -> list[str]:
        return sorted(self._files)

    def content_names(self) -> list[str]:
        return self.names()


class _LimitExceeded(Exception):
    """An archive over one of verify's limits (never swallowed by tarfile, unlike its TarErrors)."""


# Header types tarfile reads whole into memory before the member they describe.
_HEADER_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                 tarfile.SOLARIS_XHDTYPE)
MAX_ARCHIVE_MEMBERS = 100_000  # tarfile keeps a TarInfo per member; a bundle has hundreds


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses an oversized PAX or GNU long-name header before tarfile reads it.

    tarfile reads these headers whole into memory and has no limit of its own; ``_proc_member`` is
    the one place where a header's type and declared size are known and nothing is read yet (it is
    tarfile's dispatch hook, unchanged since Python 2, so overriding it is the least intrusive way)."""

    def _proc_member(self, tarfile_):
        if self.type in _HEADER_TYPES and self.size > MAX_TAR_HEADER_BYTES:
            raise _LimitExceeded(f"a tar header of {self.size} bytes (type {self.type!r}), more than the "
                                 f"{MAX_TAR_HEADER_BYTES} bytes verify reads")
        return super()._proc_member(tarfile_)


class _CappedStream:
    """A read-only stream that fails once more than `limit` bytes came through it.

    Wraps the decompressed archive stream, so a compression bomb stops after `limit` bytes of
    output; the decompressors themselves already work in bounded chunks (gzip's `max_length`,
    zstandard's stream reader with a capped window)."""

    def __init__(self, raw, limit: int, what: str):
        self.raw, self.limit, self.what, self.total = raw, limit, what, 0

    def read(self, n: int = -1) -> bytes:
        room = self.limit - self.total + 1  # one byte more than allowed: enough to notice
        data = self.raw.read(room if n is None or n < 0 else min(n, room))
        self.total += len(data)
        if self.total > self.limit:
            raise _LimitExceeded(f"{self.what} decompresses to more than {self.limit} bytes "
                                 f"({ARCHIVE_RATIO} times its size, at least {ARCHIVE_FLOOR}): a compression bomb?")
        return data


class TarballView(BundleView):
    """A bundle archive: its members, plus the sidecar files found next to it (signatures, digest,
    provenance, cosign.pub) under the names they have in a bundle directory.

    Members are read by `unpack()` (verify_view calls it once an archive signature verified, or
    `refuse_unpack()` when none does): streamed through sha256, only the manifest kept in memory,
    within the limits above (decompressed size, header sizes, manifest size, member count)."""

    kind = "tarball"
    _KEEP = (MANIFEST,)  # members kept in memory (the rest is only hashed)

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self.display = str(path)
        self.archive = path.name
        self.archives = [self.archive]
        self._members: dict[str, tuple[str, int]] = {}
        self._kept: dict[str, bytes] = {}
        self._sidecars: dict[str, Path] = {}
        self.unpacked = False
        base = path.parent
        candidates = [f"{self.archive}.sha256", f"{self.archive}{SIGSTORE_SUFFIX}", PUBLIC_KEY_FILE,
                      PROVENANCE, PROVENANCE_DSSE, PROVENANCE_SIGSTORE, MANIFEST + SIGSTORE_SUFFIX]
        candidates += [f"signatures/{p.name}" for p in sorted((base / "signatures").glob("*.sig"))]
        for name in candidates:
            if (base / name).is_file():
                self._sidecars[name] = base / name

    def unpack(self) -> None:
        """Read the members (once); a failure becomes an `archive-readable` problem."""
        if not self.unpacked:
            self.unpacked = True
            self._scan()

    def refuse_unpack(self, why: str) -> None:
        """Do not read the members at all (no signature vouches for the archive)."""
        self.unpacked = True
        self.problems.append(Check("archive-readable", False, why, file=self.archive))

    def signature_files(self) -> list[str]:
        """The detached `signatures/*.sig` files next to the archive."""
        return sorted(n for n in self._sidecars if n.startswith("signatures/"))

    def _open_stream(self):
        """The decompressed stream; read to its end so the compressor's checksum is checked too."""
        if self.path.name.endswith((".tar.gz", ".tgz")):
            import gzip
            return gzip.open(self.path, "rb")
        if self.path.name.endswith(".tar.zst"):
            import zstandard
            return zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).stream_reader(
                open(self.path, "rb"), closefd=True)
        return open(self.path, "rb")

    def _scan(self) -> None:
        limit = max(ARCHIVE_FLOOR, ARCHIVE_RATIO * self.path.stat().st_size)
        try:
            with self._open_stream() as raw:
                stream = _CappedStream(raw, limit, self.archive)
                with tarfile.open(fileobj=stream, mode="r|", tarinfo=_BoundedTarInfo) as tar:
                    for count, member in enumerate(tar, 1):
                        if count > MAX_ARCHIVE_MEMBERS:
                            raise _LimitExceeded(f"more than {MAX_ARCHIVE_MEMBERS} members")
                        self._member(tar, member)
                while stream.read(_CHUNK):  # trailing padding, then the gzip CRC and length
                    pass
        except _LimitExceeded as exc:
            self.problems.append(Check("archive-readable", False, f"archive not read to the end: {exc}",
                                       file=self.archive))
        except (tarfile.TarError, OSError, EOFError, ValueError, zlib.error) as exc:
            self.problems.append(Check("archive-readable", False, f"archive cannot be read: {exc}",
                                       file=self.archive))

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        """Hash one member (and keep it when it is the manifest)."""
        name = member.name
        # sparse members are refused too: their holes read as zeros without coming from the stream
        if (not member.isreg() or member.issparse() or name.startswith("/") or ".." in name.split("/")
                or posixpath.normpath(name) != name):
            self.problems.append(Check("layout", False, f"archive member {name!r} is not a "
                                       "plain relative regular file", file=self.archive))
            return
        if name in self._members:
            self.problems.append(Check("layout", False, f"archive member {name!r} appears "
                                       "twice", file=self.archive))
            return
        keep = name in self._KEEP
        if keep and member.size > MAX_DOCUMENT_BYTES:  # checked on the header, before reading
            raise _LimitExceeded(f"member {name} is {member.size} bytes, more than the "
                                 f"{MAX_DOCUMENT_BYTES} bytes verify reads into memory")
        f = tar.extractfile(member)
        h, size, kept = hashlib.sha256(), 0, []
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
            if keep:
                kept.append(chunk)
        self._members[name] = (h.hexdigest(), size)
        if keep:
            self._kept[name] = b"".join(kept)

    def has(self, name: str) -> bool:
        return name in self._members or name in self._sidecars or name == self.archive

    def read(self, name: str) -> bytes:
        if name in self._kept:
            return self._kept[name]
        if name in self._sidecars:
            return self._sidecars[name].read_bytes()
        raise KeyError(name)

    def read_limited(self, name: str, limit: int) -> bytes:
        if name in self._sidecars:
            try:
                return read_capped(self._sidecars[name], limit, name)
            except DocumentError as exc:
                raise _Bad(exc.message) from None
        return super().read_limited(name, limit)

    def size(self, name: str) -> int:
        if name == self.archive:
            return self.path.stat().st_size
        if name in self._members:
            return self._members[name][1]
        return self._sidecars[name].stat().st_size

    def digest(self, name: str) -> tuple[str, int]:
        if name == self.archive:
            if not hasattr(self, "_archive_digest"):
                self._archive_digest = _stream_sha256(self.path)
            return self._archive_digest
        if name in self._members:
            return self._members[name]
        return _stream_sha256(self._sidecars[name])

    def names(self) -> list[str]:
        return sorted(set(self._members) | set(self._sidecars) | {self.archive})

    def content_names(self) -> list[str]:
        return sorted(self._members)

    def show(self, name: str) -> str:
        return f"{self.archive}:{name}" if name in self._members else name

    def inside(self, name: str) -> bool:
        """Whether `name` is (or would be) an archive member rather than a file next to it."""
        return name != self.archive and name not in self._sidecars


# -- trust ---------------------------------------------------------------------------------------

def load_trusted_key(location: str) -> PublicKey:
    """A `--key` public key file. Missing file: exit 4; URL/KMS reference: exit 5; bad file: exit 2."""
    if _URL.match(location):
        raise NetworkRequired(f"--key {location}: remote and KMS keys need the network; pass a local "
                              "cosign.pub", field="--key")
    path = Path(location).expanduser()
    if not path.is_file():
        raise TrustMaterialMissing(f"--key {location}: no such public key file", field="--key")
    try:
        return load_public_key(path.read_bytes(), what=str(path))
    except SigningKeyError as exc:
        hint = " (that is a private key: pass cosign.pub)" if b"PRIVATE KEY" in path.read_bytes() else ""
        raise UsageError(f"--key: {exc}{hint}", field="--key") from None


# -- strict parsing of signature files ----------------------------------------------------------

class _Bad(Exception):
    pass


def _canonical_b64(value, where: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise _Bad(f"{where} is missing or not a string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII characters in the string
        raise _Bad(f"{where} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != value:
        raise _Bad(f"{where} is not canonical base64")
    return raw


def _only_keys(obj, allowed: set[str], where: str, required: Iterable[str] = ()) -> dict:
    if not isinstance(obj, dict):
        raise _Bad(f"{where} is not a JSON object")
    extra = sorted(set(obj) - allowed)
    if extra:
        raise _Bad(f"{where} has unexpected field(s) {', '.join(extra)}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise _Bad(f"{where} lacks field(s) {', '.join(missing)}")
    return obj


def _strict_bundle(data: bytes, hint: str, content: str) -> dict:
    """Parse a key-signed Sigstore bundle strictly (as protojson would, plus canonical base64 and a
    hint that must name the trusted key). `content` is messageSignature or dsseEnvelope."""
    try:
        doc = load_json(data, max_bytes=MAX_DOCUMENT_BYTES)
    except DocumentError as exc:
        raise _Bad(f"not valid JSON ({exc.message})") from None
    _only_keys(doc, {"mediaType", "verificationMaterial", content}, "bundle",
               ("mediaType", "verificationMaterial", content))
    if not isinstance(doc["mediaType"], str) or doc["mediaType"] not in signing.ACCEPTED_BUNDLE_MEDIA_TYPES:
        raise _Bad(f"unsupported mediaType {doc['mediaType']!r}")
    vm = _only_keys(doc["verificationMaterial"], {"publicKey", "tlogEntries"}, "verificationMaterial",
                    ("publicKey",))
    if vm.get("tlogEntries", []) != []:
        raise _Bad("carries transparency-log entries, which offline key verification cannot check")
    pk = _only_keys(vm["publicKey"], {"hint"}, "verificationMaterial.publicKey")
    if "hint" in pk and pk["hint"] != hint:
        raise _Bad(f"publicKey.hint {pk['hint']!r} does not name the trusted key ({hint})")
    if content == "messageSignature":
        ms = _only_keys(doc[content], {"messageDigest", "signature"}, content, ("messageDigest", "signature"))
        md = _only_keys(ms["messageDigest"], {"algorithm", "digest"}, "messageDigest", ("algorithm", "digest"))
        if md["algorithm"] != "SHA2_256":
            raise _Bad(f"unsupported messageDigest.algorithm {md['algorithm']!r}")
        _canonical_b64(md["digest"], "messageDigest.digest")
        _canonical_b64(ms["signature"], "messageSignature.signature")
    else:
        _strict_envelope(doc[content], "dsseEnvelope")
    return doc


def _strict_envelope(env, where: str) -> dict:
    _only_keys(env, {"payload", "payloadType", "signatures"}, where, ("payload", "payloadType", "signatures"))
    _canonical_b64(env["payload"], f"{where}.payload")
    if not isinstance(env["signatures"], list) or len(env["signatures"]) != 1:
        raise _Bad(f"{where} must carry exactly one signature")
    sig = _only_keys(env["signatures"][0], {"sig", "keyid"}, f"{where}.signatures[0]", ("sig",))
    if sig.get("keyid", "") != "":
        raise _Bad(f"{where}.signatures[0].keyid {sig['keyid']!r} is set (stella-build and cosign write none)")
    _canonical_b64(sig["sig"], f"{where}.signatures[0].sig")
    return env


def _verify_digest_signature(pub: PublicKey, sig: bytes, sha256_digest: bytes) -> bool:
    """A raw DER signature over a blob known by its sha256 (ECDSA / RSA keys, as cosign `--key`)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    try:
        if isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(sig, sha256_digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        elif isinstance(pub, rsa.RSAPublicKey):
            pub.verify(sig, sha256_digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        else:
            return False
    except InvalidSignature:
        return False
    return True


# -- the checks ---------------------------------------------------------------------------------

class _Verifier:
    def __init__(self, view: BundleView, key: PublicKey | None):
        self.view = view
        self.key = key
        self.hint = public_key_hint(key) if key is not None else ""
        self.checks: list[Check] = list(view.problems)
        # An unreadable archive: member-level checks would only repeat that failure.
        self.degraded = any(c.name == "archive-readable" for c in view.problems)

    def add(self, name: str, ok: bool | None, message: str, *, file: str | None = None,
            subject: str | None = None, evidence: str | None = None) -> bool:
        self.checks.append(Check(name, ok, message, file=file, subject=subject, evidence=evidence))
        return bool(ok)

    def sha(self, name: str) -> str:
        return self.view.digest(name)[0]

    # 1
    def archive_digests(self) -> None:
        for archive in self.view.archives:
            sidecar = archive + ".sha256"
            if not self.view.has(sidecar):
                continue
            want = f"{self.sha(archive)}  {posixpath.basename(archive)}\n".encode()
            ok = self._small(sidecar) == want
            self.add("archive-digest", ok, f"{archive} matches {sidecar}" if ok else
                     f"{sidecar} does not read '<sha256 of {archive}>  {posixpath.basename(archive)}\\n' "
                     f"(sha256 of {archive} is {self.sha(archive)})", subject=archive, evidence=sidecar)

    # 2
    def signatures(self) -> None:
        view = self.view
        if view.has(PUBLIC_KEY_FILE):
            ok = self._small(PUBLIC_KEY_FILE) == encode_public_key(self.key)
            self.add("bundle-key", ok, f"{PUBLIC_KEY_FILE} is the trusted key" if ok else
                     f"{PUBLIC_KEY_FILE} in the bundle is not the trusted key "
                     f"(sha256 {self._bundle_key_digest()}; trusted {public_key_digest(self.key)}): "
                     "signed by another key, or the file was changed", subject=PUBLIC_KEY_FILE,
                     evidence=TRUSTED_KEY)
        subjects = {"manifest": [MANIFEST] if view.has(MANIFEST) else [], "archive": list(view.archives)}
        found = {"manifest": 0, "archive": 0}
        for role, names in subjects.items():
            for target in names:
                bundle_file = target + SIGSTORE_SUFFIX
                if view.has(bundle_file):
                    found[role] += 1
                    self._message_bundle(f"{role}-signature", target, bundle_file)
        for sig_file in sorted(n for n in view.names() if n.startswith("signatures/") and n.endswith(".sig")):
            role = LEGACY_SIGNATURES.get(sig_file)
            candidates = subjects.get(role, []) if role else subjects["manifest"] + subjects["archive"]
            if role:
                found[role] += 1
            if self.degraded and not candidates:
                self.add("legacy-signature", None, f"skipped {sig_file}: the archive cannot be read")
                continue
            self._legacy(sig_file, candidates)
        # What must be signed: the manifest in a directory, the archive in a tarball.
        needed = "archive" if view.kind == "tarball" else "manifest"
        if not found[needed]:
            target = (subjects[needed] or [MANIFEST])[0]
            self.add(f"{needed}-signature", False, f"no signature over {target} in the bundle "
                     f"(expected {target}{SIGSTORE_SUFFIX} or a signatures/*.sig)",
                     file=target + SIGSTORE_SUFFIX)

    def _small(self, name: str) -> bytes | None:
        """A signature-sized file (at most MAX_SIGNATURE_BYTES), else None: an oversized one then
        matches nothing and the check reading it fails, naming it."""
        try:
            return self.view.read_limited(name, MAX_SIGNATURE_BYTES)
        except _Bad:
            return None

    def _bundle_key_digest(self) -> str:
        data = self._small(PUBLIC_KEY_FILE)
        try:
            return public_key_digest(load_public_key(data)) if data is not None else "unreadable"
        except (SigningKeyError, ValueError):
            return "unreadable"

    def _message_bundle(self, name: str, target: str, bundle_file: str) -> None:
        digest = bytes.fromhex(self.sha(target))
        try:
            data = self.view.read_limited(bundle_file, MAX_SIGNATURE_BYTES)
            _strict_bundle(data, self.hint, "messageSignature")
            signing.verify_sigstore_digest(data, digest, self.key, name=bundle_file)
        except (_Bad, signing.SignatureInvalid) as exc:
            self.add(name, False, f"{bundle_file} does not verify {target}: {exc}", subject=target,
                     evidence=bundle_file)
            return
        self.add(name, True, f"{bundle_file} verifies {target}", subject=target, evidence=bundle_file)

    def _legacy(self, sig_file: str, candidates: list[str]) -> None:
        try:
            sig = _canonical_b64(self.view.read_limited(sig_file, MAX_SIGNATURE_BYTES).decode("ascii"), sig_file)
        except (_Bad, UnicodeDecodeError) as exc:
            self.add("legacy-signature", False, f"{sig_file} is not one canonical base64 line: {exc}",
                     subject=candidates[0] if candidates else None, evidence=sig_file,
                     file=None if candidates else sig_file)
            return
        for target in candidates:
            if _verify_digest_signature(self.key, sig, bytes.fromhex(self.sha(target))):
                self.add("legacy-signature", True, f"{sig_file} verifies {target}", subject=target,
                         evidence=sig_file)
                return
        what = " or ".join(candidates) or "no file it could cover"
        role = LEGACY_SIGNATURES.get(sig_file)
        subject = candidates[0] if len(candidates) == 1 else (MANIFEST if role == "manifest" and not candidates else None)
        self.add("legacy-signature", False, f"{sig_file} does not verify {what} with the trusted key",
                 subject=subject, evidence=sig_file, file=None if subject else sig_file)

    # 3, 4
    def contents(self) -> None:
        view = self.view
        if self.degraded:
            self.add("contents", None, "skipped: the archive cannot be read")
            return
        if not view.has(MANIFEST):
            self.add("manifest", False, f"the bundle has no {MANIFEST}", file=MANIFEST)
            return
        try:
            manifest = view.read_json(MANIFEST)
            entries = manifest["contents"]
            if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
                raise TypeError("contents is not a list of objects")
            listed = {e["path"]: e for e in entries}
        except _Bad as exc:
            self.add("manifest", False, str(exc), file=MANIFEST)
            return
        except (ValueError, KeyError, TypeError) as exc:
            self.add("manifest", False, f"{MANIFEST} is not a valid manifest: {exc}", file=MANIFEST)
            return
        bad = 0
        sealed = view.sealed_names()
        # a path that is not a string (null, a number) is reported below, not allowed to break sorting
        for path, entry in sorted(listed.items(), key=lambda item: (not isinstance(item[0], str), str(item[0]))):
            if not isinstance(path, str) or path.startswith("/") or ".." in path.split("/"):
                self.add("contents", False, f"contents[] lists an unsafe path {path!r}", file=MANIFEST)
                bad += 1
            elif path in sealed:
                continue
            elif not view.has(path):
                self.add("contents", False, f"{view.show(path)} is listed in {MANIFEST} but missing",
                         subject=path, evidence=MANIFEST)
                bad += 1
            else:
                sha, size = view.digest(path)
                if entry.get("digest") != "sha256:" + sha or entry.get("bytes") != size:
                    self.add("contents", False, f"{view.show(path)} has sha256 {sha} ({size} bytes); "
                             f"{MANIFEST} says {entry.get('digest')} ({entry.get('bytes')} bytes)",
                             subject=path, evidence=MANIFEST)
                    bad += 1
        metadata = self._metadata_names()
        for name in view.content_names():
            if name not in listed and name not in metadata:
                self.add("contents", False, f"{view.show(name)} is not listed in {MANIFEST} contents[]",
                         subject=name, evidence=MANIFEST)
                bad += 1
        if not bad:
            self.add("contents", True, f"{len(listed) - len(sealed & set(listed))} files match {MANIFEST} contents[]"
                     + (f"; {len(sealed & set(listed))} are encrypted (checked after decryption)" if sealed else ""))
        digests = sorted(str(e.get("digest", "")) for e in entries)  # str(): any JSON value sorts
        want = "sha256:" + hashlib.sha256("\n".join(digests).encode()).hexdigest()
        ok = manifest.get("rerunHash") == want
        self.add("rerun-hash", ok, "rerunHash matches contents[]" if ok else
                 f"rerunHash {manifest.get('rerunHash')} != {want} recomputed from contents[]",
                 file=None if ok else MANIFEST)

    def _metadata_names(self) -> set[str]:
        names = {MANIFEST, PROVENANCE, PROVENANCE_DSSE, PROVENANCE_SIGSTORE, PUBLIC_KEY_FILE,
                 MANIFEST + SIGSTORE_SUFFIX} | self.view.metadata_names()
        for a in self.view.archives:
            names |= {a, a + ".sha256", a + SIGSTORE_SUFFIX}
        names |= {n for n in self.view.names() if n.startswith("signatures/") and n.endswith(".sig")
                  and n.count("/") == 1}
        # keyless (Fulcio/Rekor) bundles written next to a file after the build: they are checked
        # by identity with cosign/sigstore, not with --key, and are never part of contents[]
        present = set(self.view.names())
        names |= {n for n in present if n.endswith(KEYLESS_SUFFIX) and n[:-len(KEYLESS_SUFFIX)] in present}
        return names

    # 5
    def provenance_subjects(self) -> None:
        view = self.view
        if not view.has(PROVENANCE):
            if view.kind == "directory":
                self.add("provenance-subjects", False, f"the bundle has no {PROVENANCE}", file=PROVENANCE)
            else:
                self.add("provenance-subjects", None, f"skipped: no {PROVENANCE} next to the archive")
            return
        try:
            statement = view.read_json(PROVENANCE)
            if not all(isinstance(s, dict) and isinstance(s.get("name"), str) for s in statement["subject"]):
                raise TypeError("a subject has no string name")
            subjects = {view.subject_name(s["name"]): s["digest"]["sha256"] for s in statement["subject"]}
        except _Bad as exc:
            self.add("provenance-subjects", False, str(exc), file=PROVENANCE)
            return
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.add("provenance-subjects", False, f"{PROVENANCE} is not an in-toto Statement: {exc}",
                     file=PROVENANCE)
            return
        required = view.provenance_required()
        for name in sorted(set(subjects) | set(required)):
            if name not in subjects:
                self.add("provenance-subjects", False, f"{PROVENANCE} has no subject {name}", file=PROVENANCE)
            elif not view.has(name) and self.degraded:
                self.add("provenance-subjects", None, f"skipped {name}: the archive cannot be read")
            elif not view.has(name):
                self.add("provenance-subjects", False, f"{PROVENANCE} names subject {name}, which is "
                         "not in the bundle", subject=name, evidence=PROVENANCE, file=name)
            else:
                ok = subjects[name] == self.sha(name)
                self.add("provenance-subjects", ok, f"subject {name} matches" if ok else
                         f"{name} has sha256 {self.sha(name)}; {PROVENANCE} says {subjects[name]}",
                         subject=name, evidence=PROVENANCE)
        if self.key is not None:
            signer = _dig(statement, "predicate", "buildDefinition", "internalParameters", "signer",
                          "publicKeySha256")
            want = public_key_digest(self.key)
            ok = signer == want
            # A pass does not vouch for the provenance (only its signatures do): no subject then.
            self.add("provenance-signer", ok, "provenance names the trusted key as signer" if ok else
                     f"{PROVENANCE} names signer {signer!r}, not the trusted key {want}",
                     subject=None if ok else PROVENANCE, evidence=TRUSTED_KEY,
                     file=PROVENANCE if ok else None)

    # 6
    def provenance_signatures(self) -> None:
        view = self.view
        if not view.has(PROVENANCE):
            return
        try:
            provenance = view.read_limited(PROVENANCE, MAX_DOCUMENT_BYTES)
        except _Bad as exc:
            self.add("provenance-signature", False, str(exc), file=PROVENANCE)
            return
        found = 0
        if view.has(PROVENANCE_SIGSTORE):
            found += 1
            try:
                data = view.read_limited(PROVENANCE_SIGSTORE, MAX_DOCUMENT_BYTES)
                doc = _strict_bundle(data, self.hint, "dsseEnvelope")
                signing.verify_dsse_bundle(data, self.key, predicate_type=signing.SLSA_PROVENANCE_V1,
                                           name=PROVENANCE_SIGSTORE)
                if base64.b64decode(doc["dsseEnvelope"]["payload"]) != provenance:
                    raise _Bad(f"its payload is not {PROVENANCE}")
                self.add("provenance-signature", True, f"{PROVENANCE_SIGSTORE} verifies {PROVENANCE}",
                         subject=PROVENANCE, evidence=PROVENANCE_SIGSTORE)
            except (_Bad, signing.SignatureInvalid) as exc:
                self.add("provenance-signature", False, f"{PROVENANCE_SIGSTORE}: {exc}",
                         subject=PROVENANCE, evidence=PROVENANCE_SIGSTORE)
        if view.has(PROVENANCE_DSSE):
            found += 1
            try:
                env = view.read_json(PROVENANCE_DSSE)
                _strict_envelope(env, "envelope")
                ptype, payload = signing.verify_dsse_envelope(env, self.key, name=PROVENANCE_DSSE)
                if ptype != signing.IN_TOTO_PAYLOAD_TYPE or payload != provenance:
                    raise _Bad(f"its payload is not {PROVENANCE} ({signing.IN_TOTO_PAYLOAD_TYPE})")
                self.add("provenance-signature", True, f"{PROVENANCE_DSSE} verifies {PROVENANCE}",
                         subject=PROVENANCE, evidence=PROVENANCE_DSSE)
            except (_Bad, signing.SignatureInvalid) as exc:
                self.add("provenance-signature", False, f"{PROVENANCE_DSSE}: {exc}",
                         subject=PROVENANCE, evidence=PROVENANCE_DSSE)
        if not found and view.kind == "directory":
            self.add("provenance-signature", False, f"no signature over {PROVENANCE} (expected "
                     f"{PROVENANCE_SIGSTORE})", file=PROVENANCE_SIGSTORE)


def _dig(obj, *keys):
    """obj[k1][k2]... through JSON objects only; None as soon as a level is missing or not an object."""
    for k in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(k)
    return obj


def _archive_signed(view: TarballView, key: PublicKey) -> bool:
    """Whether a signature next to the archive (its Sigstore bundle or a signatures/*.sig) verifies
    the archive's bytes with the trusted key. Needs only the sha256 of the compressed file."""
    digest = bytes.fromhex(view.digest(view.archive)[0])
    bundle_file = view.archive + SIGSTORE_SUFFIX
    if view.has(bundle_file):
        try:
            data = view.read_limited(bundle_file, MAX_SIGNATURE_BYTES)
            _strict_bundle(data, public_key_hint(key), "messageSignature")
            signing.verify_sigstore_digest(data, digest, key, name=bundle_file)
            return True
        except (_Bad, signing.SignatureInvalid):
            pass
    for sig_file in view.signature_files():
        if LEGACY_SIGNATURES.get(sig_file) == "manifest":
            continue
        try:
            sig = _canonical_b64(view.read_limited(sig_file, MAX_SIGNATURE_BYTES).decode("ascii"), sig_file)
        except (_Bad, UnicodeDecodeError):
            continue
        if _verify_digest_signature(key, sig, digest):
            return True
    return False


def _unpack(view: TarballView, key: PublicKey | None) -> None:
    """Signatures before expensive work: with a trusted key, an archive is decompressed only when a
    signature next to it verifies its (compressed) bytes, so an unsigned or changed archive, bomb
    or not, is never unpacked; the signature checks then say why. Without a key (--allow-unsigned)
    it is unpacked within the limits of TarballView."""
    if key is None or _archive_signed(view, key):
        view.unpack()
    else:
        view.refuse_unpack(f"not unpacked: no signature next to {view.archive} verifies it with the "
                           "trusted key, so its members are not read (see archive-signature)")


def _assign_blame(checks: list[Check]) -> None:
    """Name the file a failed check most likely points at.

    A check says "subject agrees with evidence". If one side is vouched for by another passing
    check, the other side is to blame; otherwise the side that fails more checks is."""
    confirmed = {c.subject for c in checks if c.ok and c.subject} | {TRUSTED_KEY}
    fails = Counter(c.subject for c in checks if c.ok is False and c.subject)
    for c in checks:
        if c.ok is not False or c.file is not None:
            continue
        a, e = c.subject, c.evidence
        if a is None or e is None:
            c.file = a or e
        elif a in confirmed and e not in confirmed:
            c.file = e
        elif e in confirmed:
            c.file = a
        elif fails[a] >= 2 or not fails[e]:
            c.file = a
        else:
            c.file = e


def _blame_archive(view: TarballView, checks: list[Check]) -> None:
    """A changed archive explains every failure about its members: name the archive for them."""
    confirmed = {c.subject for c in checks if c.ok and c.subject}
    if view.archive in confirmed or not any(c.ok is False and c.file == view.archive for c in checks):
        return
    for c in checks:
        if c.ok is False and c.file and view.inside(c.file):
            c.message = f"{c.message} (inside {view.archive}, which does not match its signatures)"
            c.file = view.archive


def verify_view(view: BundleView, key: PublicKey | None) -> list[Check]:
    """Run every check on an opened bundle. `key` None = integrity only (no signature checks)."""
    if isinstance(view, TarballView):
        _unpack(view, key)
    v = _Verifier(view, key)
    v.archive_digests()
    if key is not None:
        v.signatures()
    else:
        v.add("signatures", None, "skipped: --allow-unsigned (integrity only, origin not proven)")
    v.contents()
    v.provenance_subjects()
    if key is not None:
        v.provenance_signatures()
    view.extra_checks(v)
    _assign_blame(v.checks)
    if isinstance(view, TarballView):
        _blame_archive(view, v.checks)
    for c in v.checks:
        if c.ok and c.file is None:
            c.file = c.subject
    for c in v.checks:
        if c.file:
            c.file = view.show(c.file) if c.file != TRUSTED_KEY else c.file
    return v.checks


OCI_DIR = "oci/"


def compare_tree(v: _Verifier, expected: dict[str, str], actual: dict[str, str], prefix: str,
                  what: str) -> None:
    """Every file under `prefix` must be exactly the expected one (sha256 hex by relative path)."""
    bad = 0
    for rel in sorted(set(expected) | set(actual)):
        name = prefix + rel
        if rel not in actual:
            v.add("oci-layout", False, f"{name} is missing from {what}", file=name)
        elif rel not in expected:
            v.add("oci-layout", False, f"{name} is not part of {what}", file=name)
        elif actual[rel] != expected[rel]:
            v.add("oci-layout", False, f"{name} has sha256 {actual[rel]}, the {what} needs {expected[rel]}",
                  file=name)
        else:
            continue
        bad += 1
    if not bad:
        v.add("oci-layout", True, f"{prefix} is exactly the {what} ({len(expected)} files)")


def manifest_entry(view: BundleView, path: str) -> tuple[str, int] | None:
    """(sha256 hex, size) of `path` as the (signed) manifest lists it."""
    try:
        for e in view.read_json(MANIFEST)["contents"]:
            if e["path"] == path:
                return e["digest"].split(":", 1)[1], int(e["bytes"])
    except (_Bad, KeyError, ValueError, TypeError, AttributeError, IndexError):
        pass
    return None
