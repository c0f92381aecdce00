"""Profiles: the workspace's targets as the API shows them, and what each kind publishes.

A profile is any target of the service's workspace (`//pkg:name`). Its *kind* (json:raw,
trivy:db, ...) comes from its rule and says which of its output files are the manifest, the
provenance and the bundle archive, and the archive's media type (GET /runs/{id}/manifest,
/provenance, /archive). Targets of other rules (sources) have a kind equal to their rule name and
no manifest, provenance or archive.
"""
from __future__ import annotations

import mimetypes
from dataclasses import dataclass

from stella_build.engine.errors import StellaError, UsageError
from stella_build.engine.labels import parse_label
from stella_build.service.errors import ERR_PROFILE, ERR_WORKSPACE, ApiError


@dataclass(frozen=True)
class Kind:
    name: str
    manifest: str | None = None
    provenance: str | None = None
    archive: str | None = None
    archive_media_type: str | None = None


# Media types: Trivy's own layer types for the Trivy DBs (what `oras`/Trivy expect), the project's
# vendor types for the others (rules/formats/mirror.py uses the same vendor tree).
KINDS: dict[str, Kind] = {
    "json_raw": Kind("json:raw", "manifests/export.json", "manifests/provenance.json", "bundle.tar.gz",
                     "application/vnd.stella-build.export.v1.tar+gzip"),
    "json_policy": Kind("json:policy", "manifests/export.json", "manifests/provenance.json",
                        "bundle.tar.gz", "application/vnd.stella-build.export.v1.tar+gzip"),
    "trivy_db": Kind("trivy:db", "metadata.json", None, "db.tar.gz",
                     "application/vnd.aquasec.trivy.db.layer.v1.tar+gzip"),
    "trivy_java_db": Kind("trivy:java-db", "metadata.json", None, "javadb.tar.gz",
                          "application/vnd.aquasec.trivy.javadb.layer.v1.tar+gzip"),
    "mirror_full": Kind("mirror:full", "mirror/export.json", "mirror/provenance.json", "mirror.tar.zst",
                        "application/vnd.stella-build.mirror.v1.tar+zstd"),
    "mirror_delta": Kind("mirror:delta", "delta/manifest.diff.json", None, None, None),
}

_SUFFIX_TYPES = {".json": "application/json", ".zst": "application/zstd", ".gz": "application/gzip",
                 ".sha256": "text/plain; charset=utf-8", ".sig": "text/plain; charset=utf-8",
                 ".md": "text/markdown; charset=utf-8", ".pub": "application/x-pem-file",
                 ".jsonl": "application/jsonl", ".db": "application/octet-stream"}


def kind_of(rule: str) -> Kind:
    """The kind of a profile whose target has rule `rule`."""
    return KINDS.get(rule) or Kind(rule)


def kind_named(name: str) -> Kind:
    """The kind called `name` ("json:raw"; a rule name for rules without a kind of their own)."""
    return next((k for k in KINDS.values() if k.name == name), None) or Kind(name)


def media_type(path: str, kind: Kind) -> str:
    """The media type a run file is served with: the kind's archive type for its archive, else by
    suffix (application/octet-stream when unknown, e.g. OCI blobs)."""
    if kind.archive is not None and path == kind.archive:
        return kind.archive_media_type or "application/octet-stream"
    name = path.rsplit("/", 1)[-1]
    for suffix, mt in _SUFFIX_TYPES.items():
        if name.endswith(suffix):
            return mt
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


@dataclass(frozen=True)
class ProfileInfo:
    label: str
    package: str
    name: str
    rule: str
    kind: Kind
    description: str | None
    selectors: dict
    deps: list[str]
    accepts_selectors: bool


def normalize_label(text: str) -> str:
    """"profiles:json-raw" or "//profiles:json-raw" → "//profiles:json-raw" (ApiError 404 for
    anything that is not a label: profiles are addressed by label only)."""
    text = text.strip()
    if not text.startswith("//"):
        text = "//" + text
    try:
        label = parse_label(text, "")
    except StellaError:
        raise ApiError(404, ERR_PROFILE, f"no such profile: {text!r} is not a label like //pkg:target",
                       details=[{"reason": "bad-label", "field": "profile"}]) from None
    return str(label)


def _info(loader, tg, label) -> ProfileInfo:
    from stella_build.engine.rule_api import Selectors

    loaded = loader.package(label.package)
    params = loaded.targets[label.name]
    accepts = "selectors" in type(params).model_fields
    own = getattr(params, "selectors", None) or Selectors()
    effective = own.merged_over(loaded.package.selectors) if accepts else Selectors()
    return ProfileInfo(label=str(label), package=label.package, name=label.name, rule=params.rule,
                       kind=kind_of(params.rule), description=params.description,
                       selectors={k: v for k, v in effective.model_dump().items() if v is not None},
                       deps=[str(d) for d in tg.deps_of.get(label, [])], accepts_selectors=accepts)


def _workspace_error(exc: StellaError) -> ApiError:
    return ApiError(500, ERR_WORKSPACE, "the service's workspace does not load",
                    details=[e.to_json() | {"reason": e.reason or "usage"} for e in exc.errors])


def list_profiles(workspace) -> list[ProfileInfo]:
    """Every target of the workspace, in label order. ApiError 500 ERR_EXPORT_WORKSPACE when an
    Exportfile is broken (details carry the engine's file/line/field/reason)."""
    from stella_build.engine.analysis import load_graph

    try:
        tg = load_graph(workspace, ["//..."])
        return sorted((_info(tg.loader, tg, lbl) for lbl in tg.requested), key=lambda p: p.label)
    except StellaError as exc:
        raise _workspace_error(exc) from None


def get_profile(workspace, label_text: str) -> ProfileInfo:
    """The profile named `label_text`; ApiError 404 ERR_EXPORT_PROFILE_NOT_FOUND when the package
    or target does not exist, 500 ERR_EXPORT_WORKSPACE when its Exportfile is broken."""
    from stella_build.engine.analysis import load_graph

    text = normalize_label(label_text)
    if text.endswith(":all") or "..." in text:
        raise ApiError(404, ERR_PROFILE, f"{text} is a pattern, not a profile",
                       details=[{"reason": "bad-label", "field": "profile"}])
    try:
        tg = load_graph(workspace, [text])
    except UsageError as exc:
        if exc.reason in ("package-missing", "target-missing", "no-match", "bad-label"):
            raise ApiError(404, ERR_PROFILE, f"no such profile: {text}",
                           details=[{"reason": exc.reason, "field": "profile"}]) from None
        raise _workspace_error(exc) from None
    except StellaError as exc:
        raise _workspace_error(exc) from None
    return _info(tg.loader, tg, tg.requested[0])
