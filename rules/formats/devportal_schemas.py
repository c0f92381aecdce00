"""JSON Schemas (draft 2020-12) of the documents stella-build writes, shipped in a devportal
bundle's specs/ so that consumers can validate what they receive without stella-build:

    specs/export.schema.json               manifests/export.json, mirror/export.json (docs/json-bundle.md)
    specs/provenance.schema.json           provenance.json: in-toto Statement v1, SLSA provenance v1
    specs/offline-manifest.schema.json     the Offline Kit's offline-manifest.json (docs/offline-kit.md)
    specs/devportal-manifest.schema.json   the devportal bundle's own manifest.json

They describe what a consumer may rely on: required fields and their types, and the patterns of
digests and paths; producers may add fields (`additionalProperties` is open where the formats say
"may grow"), except in the small fixed records (digests, entries). tests/test_devportal.py
validates the golden outputs against them with the `jsonschema` library.
"""
from __future__ import annotations

__all__ = ["SCHEMAS", "schema_documents"]

_DRAFT = "https://json-schema.org/draft/2020-12/schema"
_BASE = "https://stella-build.dev/schemas/"
_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_PREFIXED_SHA256 = {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"}
_RFC3339 = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$"}
_RELPATH = {"type": "string", "minLength": 1, "pattern": r"^(?!/)(?!.*(^|/)\.\.?(/|$)).+$"}
_COUNT = {"type": "integer", "minimum": 0}


def _doc(name: str, title: str, description: str, body: dict) -> dict:
    return {"$schema": _DRAFT, "$id": f"{_BASE}{name}", "title": title, "description": description, **body}


EXPORT = _doc("export.schema.json", "stella-build export manifest (export.json)",
              "manifests/export.json of json:raw and json:policy bundles, mirror/export.json of mirrors "
              "and manifests/export.json of signed Trivy DBs (docs/json-bundle.md).", {
    "type": "object",
    "required": ["schema", "version", "exportId", "generatedAt", "profile", "contents", "rerunHash"],
    "properties": {
        "schema": {"const": "https://stella-build.dev/schemas/export-manifest/v1"},
        "version": {"type": "string", "pattern": r"^1\.\d+\.\d+$"},
        "exportId": {"type": "string", "pattern": "^exp-[0-9a-f]{24}$"},
        "generatedAt": _RFC3339,
        "tenant": {"type": "string"},
        "profile": {"type": "object", "required": ["kind", "name", "variant"],
                    "properties": {"kind": {"type": "string"}, "name": {"type": "string"},
                                   "variant": {"type": "string"}, "revision": {"type": "string"}}},
        "selectors": {"type": "object"},
        "sources": {"type": "array", "items": {"type": "object", "required": ["name"],
                                               "properties": {"name": {"type": "string"},
                                                              "license": {"type": "string"}}}},
        "counts": {"type": "object", "additionalProperties": {"anyOf": [_COUNT, {"type": "object"}]}},
        "rerunHash": _PREFIXED_SHA256,
        "contents": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["path", "digest", "bytes", "contentType"],
            "properties": {"path": _RELPATH, "digest": _PREFIXED_SHA256, "bytes": _COUNT,
                           "contentType": {"type": "string"}, "records": _COUNT}}},
    },
})

PROVENANCE = _doc("provenance.schema.json", "stella-build provenance (in-toto Statement v1, SLSA v1)",
                  "provenance.json of every bundle: its subjects are the bundle's manifest and archive, "
                  "its predicate a SLSA provenance v1 (https://slsa.dev/provenance/v1).", {
    "type": "object", "additionalProperties": False,
    "required": ["_type", "subject", "predicateType", "predicate"],
    "properties": {
        "_type": {"const": "https://in-toto.io/Statement/v1"},
        "subject": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "required": ["name", "digest"],
            "properties": {"name": {"type": "string", "minLength": 1},
                           "digest": {"type": "object", "required": ["sha256"],
                                      "properties": {"sha256": _SHA256}}}}},
        "predicateType": {"const": "https://slsa.dev/provenance/v1"},
        "predicate": {"type": "object", "required": ["buildDefinition", "runDetails"], "properties": {
            "buildDefinition": {"type": "object", "required": ["buildType", "externalParameters"], "properties": {
                "buildType": {"type": "string", "pattern": "^https://"},
                "externalParameters": {"type": "object"},
                "internalParameters": {"type": "object"},
                "resolvedDependencies": {"type": "array", "items": {
                    "type": "object", "required": ["name", "digest"],
                    "properties": {"name": {"type": "string"},
                                   "digest": {"type": "object", "properties": {"sha256": _SHA256}}}}}}},
            "runDetails": {"type": "object", "required": ["builder"], "properties": {
                "builder": {"type": "object", "required": ["id"],
                            "properties": {"id": {"type": "string"}, "version": {"type": "object"}}},
                "metadata": {"type": "object"}}}}},
    },
})

OFFLINE_MANIFEST = _doc("offline-manifest.schema.json", "stella-build Offline Kit manifest (offline-manifest.json)",
                        "offline-manifest.json of an Offline Kit (docs/offline-kit.md): every file of the kit "
                        "but checksums.txt, the exports it carries, their Trivy DBs and signatures.", {
    "type": "object",
    "required": ["schema", "version", "kitVersion", "kitId", "name", "archive", "generatedAt", "exports",
                 "exportIds", "trivy", "signatures", "trust", "signer", "files", "cliExample", "importExample"],
    "properties": {
        "schema": {"const": "https://stella-build.dev/schemas/offline-kit/v1"},
        "version": {"type": "string", "pattern": r"^1\.\d+\.\d+$"},
        "kitVersion": {"type": "string", "pattern": r"^\d{8}$"},
        "kitId": {"type": "string", "pattern": "^kit-[0-9a-f]{24}$"},
        "name": {"type": "string"}, "archive": {"type": "string"}, "generatedAt": _RFC3339,
        "exports": {"type": "array", "items": {"type": "object", "required": ["kind", "path"],
                                               "properties": {"kind": {"type": "string"},
                                                              "path": _RELPATH}}},
        "exportIds": {"type": "array", "items": {"type": "string"}},
        "trivy": {"type": "object", "additionalProperties": {"type": "object", "required": ["archive", "members"]}},
        "signatures": {"type": "array", "items": {
            "type": "object", "required": ["kind", "signature", "subject"],
            "properties": {"kind": {"enum": ["attestation", "bundle", "dsse", "sig"]},
                           "signature": _RELPATH, "subject": _RELPATH}}},
        "trust": {"type": "object"}, "signer": {"type": ["object", "null"]},
        "files": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["path", "sha256", "size"],
            "properties": {"path": _RELPATH, "sha256": _SHA256, "size": _COUNT}}},
        "cliExample": {"type": "string"}, "importExample": {"type": "string"},
    },
})

DEVPORTAL_MANIFEST = _doc("devportal-manifest.schema.json", "stella-build devportal:offline manifest (manifest.json)",
                          "manifest.json of a devportal:offline bundle (docs/devportal.md): every file but itself, "
                          "checksums.txt and manifest.dsse.json.", {
    "type": "object", "additionalProperties": False,
    "required": ["version", "bundleId", "generatedAt", "metadata", "sources", "totals", "entries"],
    "properties": {
        "version": {"const": "devportal-offline/v1"},
        "bundleId": {"type": "string", "format": "uuid",
                     "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"},
        "generatedAt": _RFC3339,
        "metadata": {"type": "object"},
        "sources": {"type": "object", "additionalProperties": False,
                    "required": ["portalIncluded", "specsIncluded", "sdkNames", "changelogIncluded"],
                    "properties": {"portalIncluded": {"type": "boolean"}, "specsIncluded": {"type": "boolean"},
                                   "sdkNames": {"type": "array", "items": {"type": "string"}},
                                   "changelogIncluded": {"type": "boolean"}}},
        "totals": {"type": "object", "additionalProperties": False, "required": ["entryCount", "totalSizeBytes"],
                   "properties": {"entryCount": _COUNT, "totalSizeBytes": _COUNT}},
        "entries": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["category", "path", "sha256", "sizeBytes", "contentType"],
            "properties": {"category": {"enum": ["bundle", "portal", "specs", "sdks", "changelog"]},
                           "path": _RELPATH, "sha256": _SHA256, "sizeBytes": _COUNT,
                           "contentType": {"type": "string"}}}},
    },
})

# specs/ file name → schema document, in the order the portal lists them.
SCHEMAS: dict[str, dict] = {
    "export.schema.json": EXPORT,
    "provenance.schema.json": PROVENANCE,
    "offline-manifest.schema.json": OFFLINE_MANIFEST,
    "devportal-manifest.schema.json": DEVPORTAL_MANIFEST,
}


def schema_documents() -> dict[str, dict]:
    """specs/<name> → schema (fresh copies a caller may change)."""
    import copy

    return copy.deepcopy(SCHEMAS)
