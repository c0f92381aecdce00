"""The Offline Kit format (docs/offline-kit.md): layout, `offline-manifest.json`, `checksums.txt`,
`signatures.txt`, the parts list, the deterministic kit archive, and the path rules both sides use.

The `offline_kit` rule (rules/offline_kit.py) writes kits with these functions and
`stella-build kit verify|import` (stella_build/delivery/kit.py) reads them with the same ones, so
the producer and the consumer share one definition. Everything here is pure (bytes in, bytes out)
except `write_kit_archive` and `split_archive`, which stream files.

Kit tree (inside `stella-offline-kit-<YYYYMMDD>.tar.gz`, under one directory of the same name):

    offline-manifest.json      every other file (but checksums.txt) with sha256 and size, the kit
                               version, the source exports and their ids, the Trivy DBs' members,
                               the signatures, cliExample / importExample
    checksums.txt              "root <sha256>" (sha256 of the lines after it), then
                               "<sha256>  <path>" for every other file, sorted by path (bytes)
    signatures.txt             "<kind> <signature> <subject>" per signature (bundle, sig,
                               attestation, dsse), sorted; empty for an unsigned kit
    verify-kit.sh import-kit.sh README.md
    trivy/db/                  the trivy_db target's output but the raw trivy.db: db.tar.gz,
                               metadata.json, oci/ (tag 2), and when signed its manifests/ and
                               signature files
    trivy/java-db/             the same for trivy_java_db (javadb.tar.gz, oci/ tag 1)
    mirror/ | mirror-delta/    a mirror_full (or mirror_delta) output directory, unchanged
    devportal/                 a devportal_offline output directory, unchanged: the bundle archive,
                               its .sha256, provenance.json and the unpacked bundle (portal/ ...)
    trust/                     cosign.pub (signed kits), tuf-root.json (a mirror with TUF),
                               sigstore-trusted-root.json (keyless signing)
    attestations/<export>/     statement.json (the in-toto statement), attestation.dsse.json,
                               attestation.sigstore.json and export.json (its subject), all copied
                               unchanged, plus metadata.json; attestations/checksums.txt and
                               attestations/verify-attestations.sh

Identical files are stored once: a later member with the same bytes is a tar hard link to the
first (an OCI layout's layer blob is the db.tar.gz beside it), so the kit costs no more than its
distinct content.
"""
from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterable, Mapping

from stella_build.engine.rule_api import canonical_json, sha256_hex
from stella_build.rules.formats import checksums as C
from stella_build.rules.formats.kit_scripts import IMPORT_KIT_SH, VERIFY_ATTESTATIONS_SH, VERIFY_KIT_SH

if TYPE_CHECKING:
    import tarfile

KIT_SCHEMA = "https://stella-build.dev/schemas/offline-kit/v1"
KIT_FORMAT_VERSION = "1.0.0"
KIT_PREFIX = "stella-offline-kit-"

MANIFEST = "offline-manifest.json"
CHECKSUMS = "checksums.txt"
SIGNATURES = "signatures.txt"
VERIFY_SCRIPT = "verify-kit.sh"
IMPORT_SCRIPT = "import-kit.sh"
README = "README.md"
ATTESTATIONS = "attestations"
ATTESTATION_CHECKSUMS = "attestations/checksums.txt"
ATTESTATION_SCRIPT = "attestations/verify-attestations.sh"
TRUST_KEY = "trust/cosign.pub"
TRUST_TUF_ROOT = "trust/tuf-root.json"
TRUST_SIGSTORE_ROOT = "trust/sigstore-trusted-root.json"
PARTS_DIR = "parts"
PARTS_SUFFIX = ".parts"
EXECUTABLE = frozenset({VERIFY_SCRIPT, IMPORT_SCRIPT, ATTESTATION_SCRIPT})

# Export kinds a kit carries → the directory of the kit they go to (one export per kind).
SECTIONS: dict[str, str] = {
    "trivy-db": "trivy/db",
    "trivy-java-db": "trivy/java-db",
    "mirror-full": "mirror",
    "mirror-delta": "mirror-delta",
    "devportal": "devportal",
}
# Files of an export's output directory a kit leaves out: the raw DBs are inside the archives.
EXCLUDED = {"trivy-db": frozenset({"trivy.db"}), "trivy-java-db": frozenset({"trivy-java.db"})}
# Trivy DB kinds → (archive, DB file inside it, cache directory, metadata Version Trivy expects)
TRIVY_DBS: dict[str, tuple[str, str, str, int]] = {
    "trivy-db": ("db.tar.gz", "trivy.db", "db", 2),
    "trivy-java-db": ("javadb.tar.gz", "trivy-java.db", "java-db", 1),
}

# Where the Trivy DB archives sit in a kit: always regular tar members (never hard links), so that
# a consumer can inflate them as they stream by.
DB_ARCHIVES: dict[str, str] = {f"{SECTIONS[kind]}/{archive}": kind for kind, (archive, *_rest) in TRIVY_DBS.items()}

# Paths a kit may hold: relative, normalized, from a conservative character set (every path the
# exports produce fits; anything else in a kit is refused before it touches a disk): the rule of
# rules/formats/checksums.py, shared with devportal bundles.
MAX_PATH = C.MAX_PATH
_HEX64 = C.HEX64
_SIZE = re.compile(r"^([0-9]+)([KMG]?)$")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
MAX_PARTS = 1000
MIN_PART = 1 << 10
SIGNATURE_KINDS = ("attestation", "bundle", "dsse", "sig")


class KitFormatError(ValueError):
    """A kit file that does not follow this format; `str()` says what and where."""


# -- names and paths ------------------------------------------------------------------------------

def kit_name(epoch: int) -> str:
    """`stella-offline-kit-<YYYYMMDD>` of SOURCE_DATE_EPOCH (UTC): the archive stem and top directory."""
    import time

    return KIT_PREFIX + time.strftime("%Y%m%d", time.gmtime(int(epoch)))


def archive_name(epoch: int) -> str:
    return kit_name(epoch) + ".tar.gz"


def part_name(archive: str, index: int) -> str:
    return f"{archive}.part-{index:03d}"


is_safe_path = C.is_safe_path  # may `path` name a file of a kit (rules/formats/checksums.py)


def check_path(path: object, where: str) -> str:
    """`path` when is_safe_path, else KitFormatError naming `where`."""
    return C.check_path(path, where, error=KitFormatError, noun="kit")


def parse_size(text: str) -> int:
    """Bytes in "700M", "4G", "64K" or "1048576" (binary units)."""
    m = _SIZE.match(text.strip().upper().removesuffix("IB").removesuffix("B")) if text else None
    if not m:
        raise ValueError(f"not a size like '700M', '4G' or '65536': {text!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


# -- checksums.txt and the other lists --------------------------------------------------------------

_sorted_paths = C.sorted_paths


def checksums_txt(digests: Mapping[str, str]) -> bytes:
    """`root <sha256 of the rest>` then `<sha256>  <path>` per file, sorted by path bytes."""
    return C.checksums_txt(digests, where="checksums", error=KitFormatError, noun="kit")


def parse_checksums(data: bytes, name: str = CHECKSUMS) -> tuple[str, dict[str, str]]:
    """(root, {path: sha256}) of a checksums.txt, checked strictly: the root matches, every line is
    `<64 hex>  <safe path>`, paths strictly ascending (sorted, no duplicate). KitFormatError."""
    return C.parse_checksums(data, name, error=KitFormatError, noun="kit")


def signatures_txt(relations: Iterable[tuple[str, str, str]]) -> bytes:
    return "".join(f"{k} {s} {t}\n" for k, s, t in sorted(set(relations))).encode()


def parse_signatures(data: bytes, name: str = SIGNATURES) -> list[tuple[str, str, str]]:
    out = []
    for n, line in enumerate(data.decode("ascii", "replace").splitlines(), 1):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] not in SIGNATURE_KINDS:
            raise KitFormatError(f"{name} line {n}: not '<kind> <signature> <subject>'")
        out.append((parts[0], check_path(parts[1], f"{name} line {n}"), check_path(parts[2], f"{name} line {n}")))
    if data and not data.endswith(b"\n") or out != sorted(set(out)):
        raise KitFormatError(f"{name}: lines are not sorted, unique and newline-terminated")
    return out


def parts_list(parts: list[tuple[str, str]]) -> bytes:
    """`<sha256>  <part name>` per part, in joining order."""
    return "".join(f"{digest}  {name}\n" for name, digest in parts).encode()


def parse_parts_list(data: bytes, archive: str, name: str) -> list[tuple[str, str]]:
    """[(part name, sha256)] in order; each must be `<archive>.part-NNN` with NNN = its position."""
    out = []
    for n, line in enumerate(data.decode("ascii", "replace").splitlines()):
        digest, sep, part = line.partition("  ")
        if not sep or not _HEX64.match(digest):
            raise KitFormatError(f"{name} line {n + 1}: not '<sha256>  <part>'")
        if part != part_name(archive, n):
            raise KitFormatError(f"{name} line {n + 1}: expected {part_name(archive, n)}, found {part!r} "
                                 "(parts out of order, or not parts of this archive)")
        out.append((part, digest))
    if not out or len(out) > MAX_PARTS:
        raise KitFormatError(f"{name}: lists {len(out)} parts (1 to {MAX_PARTS})")
    return out


# -- what signs what --------------------------------------------------------------------------------

def signature_relations(kind: str, section: str, present: set[str] | frozenset[str]) -> list[tuple[str, str, str]]:
    """(kind, signature path, subject path) of every signature an export of `kind`, placed at
    `section` in the kit, carries (only those whose files are `present`). Kinds: `bundle` (Sigstore
    messageSignature bundle), `sig` (cosign --signature file), `attestation` (DSSE Sigstore bundle),
    `dsse` (bare DSSE envelope); attestations name their first subject."""
    candidates: list[tuple[str, str, str]] = []
    if kind in ("trivy-db", "trivy-java-db"):
        from stella_build.rules.formats.trivy.packaging import PROFILES

        names = PROFILES[kind == "trivy-java-db"]
        archive, manifest = names["archive"], "manifests/export.json"
        candidates = [("bundle", f"{archive}.sigstore.json", archive),
                      ("bundle", f"{manifest}.sigstore.json", manifest),
                      ("sig", names["sig"], archive),
                      ("sig", "signatures/manifest.sig", manifest),
                      ("attestation", "manifests/provenance.sigstore.json", manifest),
                      ("dsse", "manifests/provenance.dsse.json", manifest)]
    elif kind == "mirror-full":
        from stella_build.rules.formats.mirror import SIGNATURE_FILES as S

        candidates = [("bundle", S["manifest_bundle"], "mirror/export.json"),
                      ("bundle", S["archive_bundle"], "mirror.tar.zst"),
                      ("sig", S["manifest_sig"], "mirror/export.json"),
                      ("sig", S["archive_sig"], "mirror.tar.zst"),
                      ("attestation", S["provenance_bundle"], "mirror/export.json"),
                      ("dsse", S["provenance_dsse"], "mirror/export.json")]
    elif kind == "mirror-delta":
        from stella_build.rules.formats.mirror import DELTA_SIGNATURE_FILES as D

        candidates = [("bundle", D["manifest_bundle"], "delta/manifest.diff.json"),
                      ("sig", D["manifest_sig"], "delta/manifest.diff.json")]
    out = []
    for k, sig, subject in candidates:
        sig, subject = f"{section}/{sig}", f"{section}/{subject}"
        if sig in present and subject in present:
            out.append((k, sig, subject))
    return sorted(out)


def attestation_sources(kind: str) -> tuple[str, str, str, str] | None:
    """(statement, DSSE envelope, DSSE Sigstore bundle, first subject) of an export kind, relative
    to its output directory; None for kinds without provenance (deltas)."""
    if kind in ("trivy-db", "trivy-java-db"):
        return ("manifests/provenance.json", "manifests/provenance.dsse.json",
                "manifests/provenance.sigstore.json", "manifests/export.json")
    if kind == "mirror-full":
        from stella_build.rules.formats.mirror import SIGNATURE_FILES as S

        return "mirror/provenance.json", S["provenance_dsse"], S["provenance_bundle"], "mirror/export.json"
    return None


def attestation_dir(kind: str) -> str:
    """attestations/<name> of an export kind (trivy-db, trivy-java-db, mirror)."""
    return f"{ATTESTATIONS}/{SECTIONS[kind].replace('/', '-')}"


# -- offline-manifest.json ----------------------------------------------------------------------------

def file_entries(digests: Mapping[str, tuple[str, int]]) -> list[dict]:
    """[{"path", "sha256", "size"}] sorted by path bytes."""
    return [{"path": p, "sha256": digests[p][0], "size": digests[p][1]} for p in _sorted_paths(digests)]


def kit_id(entries: list[dict]) -> str:
    """`kit-<24 hex>`: a hash of the kit's files (paths and digests), so equal kits share an id."""
    return "kit-" + sha256_hex(canonical_json.dumps([[e["path"], e["sha256"]] for e in entries]))[:24]


def offline_manifest(*, name: str, generated_at: str, files: list[dict], exports: list[dict],
                     trivy: dict, relations: list[tuple[str, str, str]], trust: dict,
                     signer: dict | None) -> dict:
    """The offline-manifest.json document (canonical JSON when written)."""
    archive = name + ".tar.gz"
    key = " --key cosign.pub" if signer or relations else ""
    return {
        "schema": KIT_SCHEMA, "version": KIT_FORMAT_VERSION, "kitVersion": name[len(KIT_PREFIX):],
        "kitId": kit_id(files), "name": name, "archive": archive, "generatedAt": generated_at,
        "exports": exports, "exportIds": sorted(e["exportId"] for e in exports if e.get("exportId")),
        "trivy": trivy, "signatures": [{"kind": k, "signature": s, "subject": t} for k, s, t in relations],
        "trust": trust, "signer": signer, "files": files,
        "cliExample": f"sh verify-kit.sh{key.replace('--key', '-k')} && stella-build kit verify {archive}{key}",
        "importExample": f"stella-build kit import {archive}{key} --trivy-cache ~/.cache/trivy",
    }


REQUIRED_MANIFEST_KEYS = ("schema", "version", "kitVersion", "kitId", "name", "archive", "generatedAt",
                          "exports", "exportIds", "trivy", "signatures", "trust", "signer", "files",
                          "cliExample", "importExample")


def check_manifest(doc: object) -> dict:
    """The parts of offline-manifest.json a consumer relies on, type-checked; KitFormatError if not."""
    if not isinstance(doc, dict):
        raise KitFormatError(f"{MANIFEST}: not a JSON object")
    missing = [k for k in REQUIRED_MANIFEST_KEYS if k not in doc]
    if missing:
        raise KitFormatError(f"{MANIFEST}: missing {', '.join(missing)}")
    if doc["schema"] != KIT_SCHEMA or not str(doc["version"]).startswith("1."):
        raise KitFormatError(f"{MANIFEST}: schema {doc['schema']!r} version {doc['version']!r} is not a "
                             f"format this stella-build reads ({KIT_SCHEMA} 1.x)")
    files = doc["files"]
    if not isinstance(files, list) or not all(
            isinstance(e, dict) and set(e) == {"path", "sha256", "size"} and is_safe_path(e["path"])
            and isinstance(e["sha256"], str) and _HEX64.match(e["sha256"])
            and type(e["size"]) is int and e["size"] >= 0 for e in files):
        raise KitFormatError(f"{MANIFEST}: files[] entries must be {{path, sha256, size}} with safe paths")
    for key, fields in (("exports", ("kind", "path")), ("signatures", ("kind", "signature", "subject"))):
        if not isinstance(doc[key], list) or not all(
                isinstance(e, dict) and all(isinstance(e.get(f), str) for f in fields) for e in doc[key]):
            raise KitFormatError(f"{MANIFEST}: {key}[] entries must be objects with {', '.join(fields)}")
    if not isinstance(doc["name"], str) or not isinstance(doc["exportIds"], list):
        raise KitFormatError(f"{MANIFEST}: name or exportIds has the wrong type")
    trivy = doc["trivy"]
    if not isinstance(trivy, dict):
        raise KitFormatError(f"{MANIFEST}: trivy is not an object")
    for kind, db in trivy.items():
        if kind not in TRIVY_DBS or not isinstance(db, dict) or not isinstance(db.get("members"), dict) \
                or db.get("archive") != f"{SECTIONS[kind]}/{TRIVY_DBS[kind][0]}":
            raise KitFormatError(f"{MANIFEST}: trivy.{kind} is not a Trivy DB entry")
        for member, info in db["members"].items():
            if member not in (TRIVY_DBS[kind][1], "metadata.json") or not isinstance(info, dict) \
                    or not _HEX64.match(str(info.get("sha256"))) or type(info.get("size")) is not int:
                raise KitFormatError(f"{MANIFEST}: trivy.{kind}.members.{member} is not {{sha256, size}}")
    return doc


# -- the archive -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class KitFile:
    """One file of a kit: its bytes or a file holding them, their sha256 and size."""

    sha256: str
    size: int
    data: bytes | None = None
    source: Path | None = None

    @classmethod
    def of_bytes(cls, data: bytes) -> "KitFile":
        return cls(sha256_hex(data), len(data), data=data)

    @classmethod
    def of_file(cls, path: Path) -> "KitFile":
        h, size = hashlib.sha256(), 0
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
        return cls(h.hexdigest(), size, source=Path(path))

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data) if self.data is not None else open(self.source, "rb")  # type: ignore[arg-type]


class _HashingWriter:
    """Passes writes to `raw` and hashes them (the archive's sha256 without reading it back)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.sha256, self.size = raw, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.raw.write(data)


def _info(name: str, size: int, mode: int, mtime: int) -> tarfile.TarInfo:
    # The engine's tar entries (engine.encode.archive._tarinfo), plus hard links for repeats.
    import tarfile  # in the actions only: analysis of every build imports this module

    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, int(mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def write_kit_archive(dest: Path, top: str, files: Mapping[str, KitFile], mtime: int,
                      level: int = 6) -> tuple[str, int]:
    """Write the kit archive: gzip (pinned zlib-ng, fixed header) of a PAX tar of `files` under
    `top/`, sorted by path bytes, mtime SOURCE_DATE_EPOCH, uid/gid 0, mode 0755 for the scripts and
    0644 otherwise, no directory entries; a non-empty file whose bytes an earlier member already
    holds is a hard link to it (but the Trivy DB archives, DB_ARCHIVES, which are always stored). Streams; returns (sha256 hex, size) of the archive."""
    import tarfile

    from stella_build.rules.formats.trivy.packaging import GzipWriter

    first: dict[str, str] = {}
    with open(dest, "wb") as raw:
        out = _HashingWriter(raw)
        gz = GzipWriter(out, level)
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
            for path in _sorted_paths(files):
                kf = files[check_path(path, "kit archive")]
                mode = 0o755 if path in EXECUTABLE else 0o644
                info = _info(f"{top}/{path}", kf.size, mode, mtime)
                if kf.size and kf.sha256 in first and path not in DB_ARCHIVES:
                    info.type, info.size, info.linkname = tarfile.LNKTYPE, 0, f"{top}/{first[kf.sha256]}"
                    tar.addfile(info)
                    continue
                first.setdefault(kf.sha256, path)
                with kf.open() as f:
                    tar.addfile(info, f)
        gz.close()
    return out.sha256.hexdigest(), out.size


def split_archive(archive: Path, out_dir: Path, part_size: int) -> list[tuple[str, str]]:
    """Cut `archive` into `<name>.part-000`… of `part_size` bytes (the last one shorter) in
    `out_dir`; returns [(part name, sha256)] in order. Streams in 1 MiB reads."""
    total = archive.stat().st_size
    count = max(1, -(-total // part_size))
    if count > MAX_PARTS:
        raise ValueError(f"{archive.name} ({total} bytes) would need {count} parts of {part_size} bytes "
                         f"(at most {MAX_PARTS}); choose a larger split_size")
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    with open(archive, "rb") as src:
        for index in range(count):
            name = part_name(archive.name, index)
            h, left = hashlib.sha256(), part_size
            with open(out_dir / name, "wb") as dst:
                while left and (chunk := src.read(min(left, 1 << 20))):
                    h.update(chunk)
                    dst.write(chunk)
                    left -= len(chunk)
            parts.append((name, h.hexdigest()))
    return parts


# -- the texts a kit carries ----------------------------------------------------------------------------

def verify_script() -> bytes:
    return VERIFY_KIT_SH.encode()


def import_script() -> bytes:
    return IMPORT_KIT_SH.encode()


def attestations_script() -> bytes:
    return VERIFY_ATTESTATIONS_SH.encode()


def readme(name: str, signed: bool, devportal: bool = False) -> bytes:
    """README.md of a kit; the devportal paragraph only when the kit carries a portal (so a kit
    without one keeps its bytes)."""
    key = " -k cosign.pub" if signed else ""
    portal = """
devportal/ is the developer portal (API and Exportfile references, formats, SDKs), checked with
the rest: open devportal/portal/index.html from an unpacked kit (`sh verify-kit.sh -o DIR`), or
check it on its own with `sh devportal/verify-offline.sh` or `stella-build devportal verify devportal`.
""" if devportal else ""
    return f"""# {name}: a stella-build Offline Kit

Everything an air-gapped Trivy needs, checked without the network (docs/offline-kit.md):

    sh verify-kit.sh{key}                 # every file against checksums.txt; signatures with cosign
    sh import-kit.sh{key} ~/.cache/trivy  # install db/ and java-db/ into a Trivy cache, atomically
    trivy --cache-dir ~/.cache/trivy fs --skip-db-update --skip-java-db-update --offline-scan \\
          --skip-version-check --disable-telemetry .   # the last two: no call to check.trivy.dev

With stella-build: `stella-build kit verify|import` (stricter; see offline-manifest.json for the
exact commands). trivy/ holds the DBs as archives and OCI layouts (`skopeo copy oci:trivy/db/oci:2
docker://REGISTRY/trivy-db:2`), mirror/ the evidence mirror (`stella-build mirror verify`),
trust/ the keys and roots to check them with, attestations/ each export's provenance.
{portal}""".encode()
