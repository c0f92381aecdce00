"""The devportal:offline bundle format (docs/devportal.md): layout, `manifest.json`, `checksums.txt`,
the in-toto statement `manifest.dsse.json` signs, and the rules both sides use.

The `devportal_offline` rule (rules/devportal.py) writes bundles with these functions and
`stella-build devportal verify` (stella_build/delivery/devportal.py) reads them with the same ones,
so the producer and the consumer share one definition. Everything here is pure (bytes in, bytes out).

Bundle tree (the members of `devportal-offline-bundle.tar.gz`, no top directory, and the target's
output directory):

    manifest.json              version "devportal-offline/v1", bundleId, generatedAt, metadata,
                               sources, totals, entries[] (every other file but checksums.txt and
                               manifest.dsse.json: category, path, sha256, sizeBytes, contentType)
    checksums.txt              "root <sha256>" (sha256 of the lines after it), then
                               "<sha256>  <path>" for every other file, sorted by path (bytes)
    manifest.dsse.json         signed bundles: DSSE envelope (in-toto statement whose subject is
                               manifest.json) that `cosign verify-blob-attestation` checks
    cosign.pub                 signed bundles: the public key (proves integrity, not origin)
    instructions-portable.txt  verify-offline.sh (POSIX sh, tar + sha256sum/shasum only)
    portal/ specs/ sdks/<name>/ changelog/
"""
from __future__ import annotations

import uuid
from typing import Mapping

from stella_build.engine.rule_api import canonical_json, sha256_hex
from stella_build.rules.formats import checksums as C

__all__ = ["VERSION", "ARCHIVE", "MANIFEST", "CHECKSUMS", "DSSE", "PUBLIC_KEY", "INSTRUCTIONS",
           "VERIFY_SCRIPT", "SECTIONS", "EXECUTABLE", "UNLISTED", "PREDICATE_TYPE", "DevportalFormatError",
           "category", "content_type", "entries", "bundle_id", "manifest", "check_manifest",
           "manifest_statement", "statement_bytes", "checksums_txt", "parse_checksums", "is_safe_path",
           "check_path"]

VERSION = "devportal-offline/v1"
ARCHIVE = "devportal-offline-bundle.tar.gz"
MANIFEST = "manifest.json"
CHECKSUMS = "checksums.txt"
DSSE = "manifest.dsse.json"
PUBLIC_KEY = "cosign.pub"
INSTRUCTIONS = "instructions-portable.txt"
VERIFY_SCRIPT = "verify-offline.sh"
PROVENANCE = "provenance.json"  # beside the archive (target output), never inside it
# Top-level directories of a bundle; an entry's category is its first path segment, "bundle" for
# the files at the root (instructions, the script, the public key).
SECTIONS = ("portal", "specs", "sdks", "changelog")
EXECUTABLE = frozenset({VERIFY_SCRIPT})
# Files of a bundle that manifest.json cannot list: itself, the checksums over it, its signature.
UNLISTED = frozenset({MANIFEST, CHECKSUMS, DSSE})
# predicateType of the statement manifest.dsse.json carries (`cosign verify-blob-attestation --type`).
PREDICATE_TYPE = "https://stella-build.dev/attestations/devportal-offline/v1"
# bundleId = uuid5(this namespace, sha256 of the sorted "path sha256" listing): equal content,
# equal id, whatever machine or time built it (the StellaOps manifest asks for a UUID).
_BUNDLE_NAMESPACE = uuid.UUID("8a3c6f0e-5b1d-5d2e-9f4a-6d2b7c1e0a93")
_HEX64 = C.HEX64
# Paths a bundle may hold: relative, normalized, from a conservative character set (every path the
# rule writes fits; anything else in a bundle is refused before it is trusted): the rule of
# rules/formats/checksums.py, shared with Offline Kits.
MAX_PATH = C.MAX_PATH
_CONTENT_TYPES = (
    (".tar.gz", "application/gzip"), (".whl", "application/zip"),
    (".html", "text/html; charset=utf-8"), (".css", "text/css; charset=utf-8"),
    (".js", "text/javascript; charset=utf-8"), (".json", "application/json"),
    (".md", "text/markdown; charset=utf-8"), (".txt", "text/plain; charset=utf-8"),
    (".sh", "text/x-shellscript; charset=utf-8"), (".svg", "image/svg+xml"),
    (".pub", "application/x-pem-file"), (".py", "text/x-python; charset=utf-8"),
)
REQUIRED_KEYS = ("version", "bundleId", "generatedAt", "metadata", "sources", "totals", "entries")


class DevportalFormatError(ValueError):
    """A bundle file that does not follow this format; `str()` says what and where."""


# -- paths and checksums.txt ------------------------------------------------------------------------

def is_safe_path(path: object) -> bool:
    """Whether `path` may name a file of a bundle: relative POSIX, normalized (no '', '.', '..'
    segment), at most MAX_PATH characters, segments from [A-Za-z0-9._+@=-]."""
    return C.is_safe_path(path)


def check_path(path: object, where: str) -> str:
    """`path` when is_safe_path, else DevportalFormatError naming `where`."""
    return C.check_path(path, where, error=DevportalFormatError, noun="bundle")


_sorted_paths = C.sorted_paths


def checksums_txt(digests: Mapping[str, str]) -> bytes:
    """`root <sha256 of the rest>` then `<sha256>  <path>` per file, sorted by path bytes (the
    lines `sha256sum -c` reads)."""
    return C.checksums_txt(digests, where=CHECKSUMS, error=DevportalFormatError, noun="bundle")


def parse_checksums(data: bytes, name: str = CHECKSUMS) -> tuple[str, dict[str, str]]:
    """(root, {path: sha256}) of a checksums.txt, checked strictly: the root matches, every line is
    `<64 hex>  <safe path>`, paths strictly ascending (sorted, no duplicate). DevportalFormatError."""
    return C.parse_checksums(data, name, error=DevportalFormatError, noun="bundle")


# -- manifest.json ----------------------------------------------------------------------------------


def category(path: str) -> str:
    """The manifest category of a bundle path: its top directory, or "bundle" at the root."""
    top = path.split("/", 1)[0]
    return top if "/" in path and top in SECTIONS else "bundle"


def content_type(path: str) -> str:
    """The media type of a bundle path, by suffix (application/octet-stream when unknown)."""
    return next((ct for suffix, ct in _CONTENT_TYPES if path.endswith(suffix)), "application/octet-stream")


def entries(files: Mapping[str, tuple[str, int]]) -> list[dict]:
    """manifest entries[] of {path: (sha256 hex, size)}: sorted by path bytes; the UNLISTED files
    are left out. Raises DevportalFormatError for an unsafe path."""
    out = []
    for path in _sorted_paths(files):
        if path in UNLISTED:
            continue
        if not is_safe_path(path):
            raise DevportalFormatError(f"{path!r} is not a safe bundle path")
        digest, size = files[path]
        out.append({"category": category(path), "path": path, "sha256": digest, "sizeBytes": size,
                    "contentType": content_type(path)})
    return out


def bundle_id(listed: list[dict]) -> str:
    """The bundleId of these entries: a UUID derived from their paths and digests only."""
    listing = "".join(f"{e['path']} {e['sha256']}\n" for e in listed)
    return str(uuid.uuid5(_BUNDLE_NAMESPACE, sha256_hex(listing.encode())))


def manifest(*, listed: list[dict], generated_at: str, sdk_names: list[str], metadata: dict) -> dict:
    """The manifest.json document (canonical JSON when written). `sources` says which sections the
    bundle holds, from the entries themselves."""
    cats = {e["category"] for e in listed}
    return {
        "version": VERSION,
        "bundleId": bundle_id(listed),
        "generatedAt": generated_at,
        "metadata": metadata,
        "sources": {"portalIncluded": "portal" in cats, "specsIncluded": "specs" in cats,
                    "sdkNames": sorted(sdk_names), "changelogIncluded": "changelog" in cats},
        "totals": {"entryCount": len(listed), "totalSizeBytes": sum(e["sizeBytes"] for e in listed)},
        "entries": listed,
    }


def check_manifest(doc: object) -> dict:
    """The parts of manifest.json a consumer relies on, checked strictly (types, safe sorted unique
    paths, categories and totals consistent with the entries); DevportalFormatError if not."""
    if not isinstance(doc, dict):
        raise DevportalFormatError(f"{MANIFEST}: not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in doc]
    if missing:
        raise DevportalFormatError(f"{MANIFEST}: missing {', '.join(missing)}")
    if doc["version"] != VERSION:
        raise DevportalFormatError(f"{MANIFEST}: version {doc['version']!r} is not {VERSION!r}")
    listed = doc["entries"]
    if not isinstance(listed, list):
        raise DevportalFormatError(f"{MANIFEST}: entries is not a list")
    previous = b""
    for i, e in enumerate(listed):
        where = f"{MANIFEST} entries[{i}]"
        if not (isinstance(e, dict) and set(e) == {"category", "path", "sha256", "sizeBytes", "contentType"}):
            raise DevportalFormatError(f"{where}: must be {{category, path, sha256, sizeBytes, contentType}}")
        if not is_safe_path(e["path"]) or e["path"] in UNLISTED:
            raise DevportalFormatError(f"{where}: {e['path']!r} is not a path a manifest may list")
        if e["path"].encode() <= previous:
            raise DevportalFormatError(f"{where}: {e['path']} is out of order or repeated")
        previous = e["path"].encode()
        if not (isinstance(e["sha256"], str) and _HEX64.match(e["sha256"])):
            raise DevportalFormatError(f"{where}: sha256 is not 64 lowercase hex digits")
        if type(e["sizeBytes"]) is not int or e["sizeBytes"] < 0:
            raise DevportalFormatError(f"{where}: sizeBytes is not a non-negative integer")
        if e["category"] != category(e["path"]):
            raise DevportalFormatError(f"{where}: category {e['category']!r} does not match {e['path']}")
    totals = doc["totals"]
    want = {"entryCount": len(listed), "totalSizeBytes": sum(e["sizeBytes"] for e in listed)}
    if totals != want:
        raise DevportalFormatError(f"{MANIFEST}: totals {totals!r} do not match the entries ({want!r})")
    if doc["bundleId"] != bundle_id(listed):
        raise DevportalFormatError(f"{MANIFEST}: bundleId does not derive from the entries")
    sources = doc["sources"]
    if not (isinstance(sources, dict) and isinstance(sources.get("sdkNames"), list)):
        raise DevportalFormatError(f"{MANIFEST}: sources.sdkNames is missing")
    return doc


def manifest_statement(manifest_bytes: bytes, manifest_doc: dict) -> dict:
    """The in-toto Statement v1 manifest.dsse.json signs: subject manifest.json (its sha256),
    predicate the bundle's identity. `cosign verify-blob-attestation --type PREDICATE_TYPE
    --signature manifest.dsse.json manifest.json` checks the subject against the file."""
    predicate = {"version": manifest_doc["version"], "bundleId": manifest_doc["bundleId"],
                 "generatedAt": manifest_doc["generatedAt"], "totals": manifest_doc["totals"]}
    return {"_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": MANIFEST, "digest": {"sha256": sha256_hex(manifest_bytes)}}],
            "predicateType": PREDICATE_TYPE, "predicate": predicate}


def statement_bytes(statement: dict) -> bytes:
    """The exact payload bytes of the DSSE envelope (canonical JSON)."""
    return canonical_json.dumps(statement)
