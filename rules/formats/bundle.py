"""The export bundle format every profile shares: `manifests/export.json` contents, `rerunHash`,
the builder identity of the provenance, and the names of the signature files beside a bundle.

Producers (the bundle rules) and consumers (verify, mirror apply/pull) both read these facts here.
`export.json` is canonical JSON (RFC 8785); `rerunHash` = sha256 over the sorted content digests
joined by newlines; provenance is an in-toto Statement v1 with SLSA provenance v1 (docs/json-bundle.md).
"""
from __future__ import annotations

import functools
from importlib.metadata import version as dist_version

from stella_build.engine.rule_api import sha256_hex


MANIFEST_SCHEMA = "https://stella-build.dev/schemas/export-manifest/v1"


MANIFEST_VERSION = "1.1.0"


BUILDER_ID = "https://stella-build.dev/builder/v1"


BUILD_TYPE = "https://stella-build.dev/buildtypes/export/v1"


JSONL_ZSTD = "application/x-ndjson+zstd"


@functools.lru_cache(maxsize=None)  # parsed package metadata: ~0.3 ms a call, several per analysis
def builder_version() -> str:
    try:
        return dist_version("stella-build")
    except Exception:  # running from a tree that is not installed
        return "0+unknown"


def _content_type(path: str) -> str:
    return JSONL_ZSTD if path.endswith(".jsonl.zst") else "application/json"


def manifest_contents(files: dict[str, bytes], records: dict[str, int]) -> list[dict]:
    out = []
    for path in sorted(files):
        entry = {"path": path, "digest": "sha256:" + sha256_hex(files[path]), "bytes": len(files[path]),
                 "contentType": _content_type(path)}
        if path in records:
            entry["records"] = records[path]
        out.append(entry)
    return out


def rerun_hash(contents: list[dict]) -> str:
    """sha256 over the sorted content digests ("sha256:<hex>") joined by newlines."""
    return "sha256:" + sha256_hex("\n".join(sorted(c["digest"] for c in contents)).encode())


PUBLIC_KEY_FILE = "cosign.pub"


PROVENANCE_DSSE = "manifests/provenance.dsse.json"


PROVENANCE_SIGSTORE = "manifests/provenance.sigstore.json"


SIGSTORE_SUFFIX = ".sigstore.json"


# StellaOps Export Center names of the legacy detached signatures.
DEFAULT_SIG_NAMES = {"manifest": "signatures/manifest.sig", "archive": "signatures/export.sig"}
