"""Deterministic OCI image layouts (image-spec v1.1): writer, Trivy DB artifact helper, validator.

A layout is `oci-layout`, `index.json` and `blobs/sha256/<hex>`. Every JSON document (manifests,
indexes, index.json) is canonical compact JSON with sorted keys, so equal inputs give equal digests.
Nothing here reads the clock: `org.opencontainers.image.created` is always passed in by the caller
(derived from SOURCE_DATE_EPOCH).

Artifacts use the normal image manifest with `artifactType` and, when there is no config, the OCI
empty descriptor (`{}`). Referrers are manifests with `subject`; for registries without the
referrers API (Debian's distribution 2.8 among them) the layout also carries the referrers *tag
schema*: an image index tagged `sha256-<hex of subject>`. Descriptors inside that index and inside
index.json carry no descriptor-level `artifactType`, because skopeo 1.9 re-serializes (and so
re-digests) indexes that have one.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from stella_build.engine.rule_api import canonical_json, file_sha256, write_atomic
from stella_build.rules.evidence.bounded import load_json, read_capped

MAX_DOCUMENT_BYTES = 4 << 20  # OCI manifests and indexes are small; larger ones are refused

MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_BLOB = b"{}"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CREATED = "org.opencontainers.image.created"
ANNOTATION_TITLE = "org.opencontainers.image.title"

TRIVY_ARTIFACT_TYPE = "application/vnd.aquasec.trivy.config.v1+json"
TRIVY_DB_LAYER = "application/vnd.aquasec.trivy.db.layer.v1.tar+gzip"
TRIVY_JAVADB_LAYER = "application/vnd.aquasec.trivy.javadb.layer.v1.tar+gzip"

LAYOUT_VERSION = "1.0.0"

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
# image-layout.md ref grammar: alphanum components joined by separators [-._:@+] or "--".
_REF_RE = re.compile(r"^[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*$")
# RFC 3339 with whole seconds or fractions and Z / numeric offset.
_RFC3339_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})$")


class OciLayoutError(ValueError):
    """Bad input to the layout writer (bad tag, digest, annotation, duplicate referrers index)."""


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor. `artifact_type` is kept for referrer lists but see `to_json`."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    artifact_type: str | None = None

    def __post_init__(self) -> None:
        if not _DIGEST_RE.match(self.digest):
            raise OciLayoutError(f"descriptor digest {self.digest!r} is not sha256:<64 hex>")
        if self.size < 0:
            raise OciLayoutError(f"descriptor {self.digest} has negative size {self.size}")
        object.__setattr__(self, "annotations", dict(self.annotations))

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]

    def to_json(self, *, with_artifact_type: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if with_artifact_type and self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    def with_annotations(self, annotations: Mapping[str, str]) -> "Descriptor":
        return Descriptor(self.media_type, self.digest, self.size, annotations, self.artifact_type)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Descriptor":
        """A descriptor from its JSON object; KeyError/TypeError/ValueError on a malformed one."""
        if not isinstance(obj, Mapping):
            raise TypeError(f"a descriptor is a JSON object, not {type(obj).__name__}")
        return cls(
            media_type=str(obj["mediaType"]),
            digest=str(obj["digest"]),
            size=int(obj["size"]),
            annotations=dict(obj.get("annotations") or {}),
            artifact_type=obj.get("artifactType"),
        )


EMPTY_DESCRIPTOR = Descriptor(MEDIA_TYPE_EMPTY, EMPTY_DIGEST, len(EMPTY_BLOB))


def _check_annotations(annotations: Mapping[str, str], where: str) -> dict[str, str]:
    out = {}
    for k, v in annotations.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise OciLayoutError(f"{where}: annotation {k!r}={v!r} must map string to string")
        out[k] = v
    created = out.get(ANNOTATION_CREATED)
    if created is not None and not _RFC3339_RE.match(created):
        raise OciLayoutError(f"{where}: {ANNOTATION_CREATED}={created!r} is not RFC 3339")
    return out


class OciLayoutWriter:
    """Builds an OCI image layout under `root` (created if missing).

    Blobs are written immediately; `index.json` and `oci-layout` only by `write_index()`.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._blobs = self.root / "blobs" / "sha256"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._tags: dict[str, Descriptor] = {}
        self._fallback_subjects: set[str] = set()

    # -- blobs ---------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self._blobs / digest.split(":", 1)[1]

    def add_blob(self, data: bytes, media_type: str, annotations: Mapping[str, str] | None = None) -> Descriptor:
        """Store `data` content-addressed; return its descriptor (annotations go on the descriptor)."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not (path.is_file() and path.stat().st_size == len(data)):
            write_atomic(path, data)
        return Descriptor(media_type, digest, len(data), _check_annotations(annotations or {}, media_type))

    def add_blob_file(self, src: Path, media_type: str, annotations: Mapping[str, str] | None = None) -> Descriptor:
        """Like add_blob for a (possibly large) file, copied in 1 MiB chunks."""
        h, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=self._blobs, prefix=".tmp-")
        try:
            with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
                while chunk := fin.read(1 << 20):
                    h.update(chunk)
                    size += len(chunk)
                    fout.write(chunk)
            os.chmod(tmp, 0o644)
            digest = "sha256:" + h.hexdigest()
            os.replace(tmp, self.blob_path(digest))
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return Descriptor(media_type, digest, size, _check_annotations(annotations or {}, str(src)))

    # -- manifests and indexes -----------------------------------------------------------------
    def add_manifest(
        self,
        artifact_type: str | None,
        config: Descriptor | None,
        layers: list[Descriptor],
        annotations: Mapping[str, str] | None = None,
        subject: Descriptor | None = None,
        *,
        created: str | None = None,
    ) -> Descriptor:
        """Write an image manifest; `config=None` means the empty descriptor (then artifact_type is required).

        Layers keep the caller's order (it is meaningful). `created` (RFC 3339, from
        SOURCE_DATE_EPOCH) is stored as `org.opencontainers.image.created`.
        """
        if config is None:
            if not artifact_type:
                raise OciLayoutError("artifact_type is required when the config is the empty descriptor")
            config = self.add_blob(EMPTY_BLOB, MEDIA_TYPE_EMPTY)
        notes = dict(annotations or {})
        if created is not None:
            notes[ANNOTATION_CREATED] = created
        notes = _check_annotations(notes, f"manifest {artifact_type or config.media_type}")
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": config.to_json(),
            "layers": [layer.to_json() for layer in layers],
        }
        if artifact_type:
            manifest["artifactType"] = artifact_type
        if subject is not None:
            manifest["subject"] = subject.to_json()
        if notes:
            manifest["annotations"] = notes
        desc = self.add_blob(canonical_json.dumps(manifest), MEDIA_TYPE_MANIFEST)
        return Descriptor(desc.media_type, desc.digest, desc.size, {}, artifact_type)

    def add_index(
        self,
        manifests: list[Descriptor],
        annotations: Mapping[str, str] | None = None,
        *,
        artifact_type: str | None = None,
        subject: Descriptor | None = None,
        with_artifact_types: bool = False,
    ) -> Descriptor:
        """Write an image index over `manifests` (kept in the caller's order)."""
        index: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_INDEX,
            "manifests": [m.to_json(with_artifact_type=with_artifact_types) for m in manifests],
        }
        if artifact_type:
            index["artifactType"] = artifact_type
        if subject is not None:
            index["subject"] = subject.to_json()
        notes = _check_annotations(annotations or {}, "image index")
        if notes:
            index["annotations"] = notes
        desc = self.add_blob(canonical_json.dumps(index), MEDIA_TYPE_INDEX)
        return Descriptor(desc.media_type, desc.digest, desc.size, {}, artifact_type)

    def add_referrers_fallback(self, subject: Descriptor, referrers: list[Descriptor]) -> Descriptor:
        """Referrers tag schema: an index of `referrers` (sorted by digest) tagged `sha256-<hex>`.

        Pass every referrer of `subject` in one call; a second call for the same subject is an error
        (merging would leave an unreferenced index blob behind).
        """
        if subject.digest in self._fallback_subjects:
            raise OciLayoutError(f"referrers fallback index for {subject.digest} was already written")
        for r in referrers:
            if r.media_type not in (MEDIA_TYPE_MANIFEST, MEDIA_TYPE_INDEX):
                raise OciLayoutError(f"referrer {r.digest} has media type {r.media_type}, not a manifest")
        unique = {r.digest: r for r in referrers}
        ordered = [unique[d] for d in sorted(unique)]
        # Without descriptor-level artifactType so `skopeo copy --all --preserve-digests` accepts it.
        desc = self.add_index(ordered, with_artifact_types=False)
        self._fallback_subjects.add(subject.digest)
        self.tag(desc, fallback_tag(subject.digest))
        return desc

    # -- tags and index.json -------------------------------------------------------------------
    def tag(self, descriptor: Descriptor, ref_name: str) -> None:
        """Name `descriptor` in index.json. Re-tagging the same name to another digest is an error."""
        if not _REF_RE.match(ref_name):
            raise OciLayoutError(f"tag {ref_name!r} is not a valid image-layout ref name")
        if descriptor.media_type not in (MEDIA_TYPE_MANIFEST, MEDIA_TYPE_INDEX):
            raise OciLayoutError(f"tag {ref_name!r}: {descriptor.digest} is {descriptor.media_type}, not a manifest/index")
        old = self._tags.get(ref_name)
        if old is not None and old.digest != descriptor.digest:
            raise OciLayoutError(f"tag {ref_name!r} already points at {old.digest}, not {descriptor.digest}")
        self._tags[ref_name] = descriptor

    @property
    def tags(self) -> dict[str, Descriptor]:
        return dict(self._tags)

    def index_bytes(self) -> bytes:
        entries = [
            d.with_annotations({ANNOTATION_REF_NAME: name}).to_json()
            for name, d in sorted(self._tags.items(), key=lambda kv: (kv[0], kv[1].digest))
        ]
        return canonical_json.dumps({"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": entries})

    def write_index(self) -> Path:
        """Write `oci-layout` and `index.json` (entries sorted by ref name); return index.json's path."""
        write_atomic(self.root / "oci-layout", canonical_json.dumps({"imageLayoutVersion": LAYOUT_VERSION}))
        path = self.root / "index.json"
        write_atomic(path, self.index_bytes())
        return path


class LayoutDigests(OciLayoutWriter):
    """The same layout as OciLayoutWriter would write, computed without writing anything: `files`
    maps each layout-relative path to its sha256 hex. Verification compares a layout on disk
    against this, file by file, so a changed file is named exactly."""

    def __init__(self) -> None:  # no root: nothing touches the disk
        self.root = Path(".")
        self._tags = {}
        self._fallback_subjects = set()
        self.files: dict[str, str] = {}

    def _record(self, digest: str) -> None:
        self.files["blobs/sha256/" + digest.split(":", 1)[1]] = digest.split(":", 1)[1]

    def add_blob(self, data: bytes, media_type: str, annotations: Mapping[str, str] | None = None) -> Descriptor:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self._record(digest)
        return Descriptor(media_type, digest, len(data), _check_annotations(annotations or {}, media_type))

    def add_blob_file(self, src: Path, media_type: str, annotations: Mapping[str, str] | None = None) -> Descriptor:
        h, size = hashlib.sha256(), 0
        with open(src, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
        return self.add_known_blob("sha256:" + h.hexdigest(), size, media_type, annotations)

    def add_known_blob(self, digest: str, size: int, media_type: str,
                       annotations: Mapping[str, str] | None = None) -> Descriptor:
        """A blob known only by digest and size (e.g. an archive verified by its signature)."""
        self._record(digest)
        return Descriptor(media_type, digest, size, _check_annotations(annotations or {}, media_type))

    def write_index(self) -> Path:
        self.files["oci-layout"] = hashlib.sha256(
            canonical_json.dumps({"imageLayoutVersion": LAYOUT_VERSION})).hexdigest()
        self.files["index.json"] = hashlib.sha256(self.index_bytes()).hexdigest()
        return Path("index.json")


def fallback_tag(digest: str) -> str:
    """Referrers tag schema name for a subject digest: `sha256:abc…` → `sha256-abc…`."""
    alg, _, hexpart = digest.partition(":")
    return f"{alg}-{hexpart}"


def trivy_db_artifact(layout: OciLayoutWriter, tar_gz_bytes: bytes, created_rfc3339: str, java: bool = False) -> Descriptor:
    """The artifact Trivy pulls with --db-repository (tag "2") or --java-db-repository (tag "1").

    Same shape as `oras push --artifact-type application/vnd.aquasec.trivy.config.v1+json` but with
    `created` fixed by the caller, so the manifest digest is reproducible.
    """
    title, media_type, tag = ("javadb.tar.gz", TRIVY_JAVADB_LAYER, "1") if java else ("db.tar.gz", TRIVY_DB_LAYER, "2")
    layer = layout.add_blob(tar_gz_bytes, media_type, {ANNOTATION_TITLE: title})
    desc = layout.add_manifest(TRIVY_ARTIFACT_TYPE, None, [layer], created=created_rfc3339)
    layout.tag(desc, tag)
    return desc


BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
ANNOTATION_BUNDLE_CONTENT = "dev.sigstore.bundle.content"
ANNOTATION_BUNDLE_PREDICATE = "dev.sigstore.bundle.predicateType"
COSIGN_SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"


BUNDLE_CONTENT_MESSAGE = "message-signature"
BUNDLE_CONTENT_DSSE = "dsse-envelope"


@dataclass(frozen=True)
class BundleReferrer:
    """One Sigstore bundle to store as a referrer: its bytes, what it holds (`dev.sigstore.bundle.content`:
    "message-signature" or "dsse-envelope") and its predicate type (`dev.sigstore.bundle.predicateType`:
    cosign's sign predicate for a message signature, the in-toto predicateType for an attestation)."""

    bundle: bytes
    content: str
    predicate_type: str


def add_bundle_referrers(layout: OciLayoutWriter, subject: Descriptor, bundles: list[BundleReferrer],
                         created: str) -> list[Descriptor]:
    """Sigstore bundles as referrers of `subject`, each in the shape cosign v3 pushes
    (`cosign sign|attest --new-bundle-format`, pkg/oci/remote/write.go WriteAttestationNewBundleFormat):
    artifactType and the one layer's mediaType = the bundle type, empty config, the
    dev.sigstore.bundle.* annotations and `created` (SOURCE_DATE_EPOCH, where cosign puts the clock).
    Plus ONE referrers tag-schema index `sha256-<hex>` over all of them (sorted by digest) for
    registries without the referrers API. Returns the referrer descriptors in the order given."""
    referrers = []
    for item in bundles:
        blob = layout.add_blob(item.bundle, BUNDLE_MEDIA_TYPE)
        referrers.append(layout.add_manifest(
            BUNDLE_MEDIA_TYPE, None, [blob], subject=subject, created=created,
            annotations={ANNOTATION_BUNDLE_CONTENT: item.content,
                         ANNOTATION_BUNDLE_PREDICATE: item.predicate_type}))
    layout.add_referrers_fallback(subject, referrers)
    return referrers


def add_bundle_referrer(layout: OciLayoutWriter, subject: Descriptor, bundle: bytes, created: str) -> Descriptor:
    """A Sigstore bundle (message signature) as the one referrer of `subject` (see
    `add_bundle_referrers`), plus the referrers tag-schema index `sha256-<hex>`."""
    [referrer] = add_bundle_referrers(
        layout, subject, [BundleReferrer(bundle, BUNDLE_CONTENT_MESSAGE, COSIGN_SIGN_PREDICATE)], created)
    return referrer


def files_artifact(
    layout: OciLayoutWriter,
    files: Mapping[str, Path | bytes],
    artifact_type: str,
    created_rfc3339: str,
    *,
    media_types: Mapping[str, str] | None = None,
    default_media_type: str = "application/octet-stream",
    annotations: Mapping[str, str] | None = None,
) -> Descriptor:
    """One artifact manifest whose layers are files ({relative path: file or bytes}), e.g. a mirror.

    Each layer is titled with its relative path (what `oras pull` restores); layers are ordered by
    (digest, title) as the StellaOps mirror spec asks ("descriptors sorted by digest").
    """
    layers = []
    for rel in sorted(files):
        if rel.startswith("/") or ".." in rel.split("/") or not rel:
            raise OciLayoutError(f"artifact file path {rel!r} must be relative without '..'")
        media_type = (media_types or {}).get(rel, default_media_type)
        src = files[rel]
        notes = {ANNOTATION_TITLE: rel}
        layers.append(layout.add_blob(src, media_type, notes) if isinstance(src, (bytes, bytearray))
                      else layout.add_blob_file(Path(src), media_type, notes))
    layers.sort(key=lambda d: (d.digest, d.annotations[ANNOTATION_TITLE]))
    return layout.add_manifest(artifact_type, None, layers, annotations, created=created_rfc3339)


# -- reading and validation --------------------------------------------------------------------

@dataclass(frozen=True)
class LayoutProblem:
    """One defect found by `verify_layout`: where (a file or digest) and what."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class OciLayoutReader:
    """Read-only access to a layout: tags, blobs (digest-checked), parsed manifests."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def index(self) -> dict[str, Any]:
        return json.loads((self.root / "index.json").read_bytes())

    def tags(self) -> dict[str, Descriptor]:
        out = {}
        for m in self.index().get("manifests", []):
            name = (m.get("annotations") or {}).get(ANNOTATION_REF_NAME)
            if name:
                out[name] = Descriptor.from_json(m)
        return out

    def resolve(self, ref_name: str) -> Descriptor:
        tags = self.tags()
        if ref_name not in tags:
            raise KeyError(f"{self.root}: no tag {ref_name!r} in index.json (have {sorted(tags)})")
        return tags[ref_name]

    def blob_path(self, digest: str) -> Path:
        alg, _, hexpart = digest.partition(":")
        return self.root / "blobs" / alg / hexpart

    def read_blob(self, desc: Descriptor) -> bytes:
        """Blob bytes; raises OciLayoutError if missing or if its size/digest is wrong."""
        path = self.blob_path(desc.digest)
        if not path.is_file():
            raise OciLayoutError(f"{self.root}: blob {desc.digest} is missing")
        data = path.read_bytes()
        if len(data) != desc.size:
            raise OciLayoutError(f"{self.root}: blob {desc.digest} has size {len(data)}, descriptor says {desc.size}")
        if "sha256:" + hashlib.sha256(data).hexdigest() != desc.digest:
            raise OciLayoutError(f"{self.root}: blob {desc.digest} content does not match its digest")
        return data

    def read_json(self, desc: Descriptor) -> dict[str, Any]:
        return json.loads(self.read_blob(desc))

    def children(self, desc: Descriptor, doc: Mapping[str, Any]) -> list[Descriptor]:
        """Descriptors a manifest/index references (subject excluded: it may live elsewhere)."""
        if desc.media_type == MEDIA_TYPE_INDEX:
            return [Descriptor.from_json(m) for m in doc.get("manifests", [])]
        if desc.media_type == MEDIA_TYPE_MANIFEST:
            return [Descriptor.from_json(doc["config"])] + [Descriptor.from_json(x) for x in doc.get("layers", [])]
        return []

    def walk(self) -> list[Descriptor]:
        """Every descriptor reachable from index.json, each once, parents before children."""
        seen: dict[str, Descriptor] = {}
        stack = [Descriptor.from_json(m) for m in reversed(self.index().get("manifests", []))]
        order: list[Descriptor] = []
        while stack:
            d = stack.pop()
            if d.digest in seen:
                continue
            seen[d.digest] = d
            order.append(d)
            if d.media_type in (MEDIA_TYPE_MANIFEST, MEDIA_TYPE_INDEX):
                stack.extend(reversed(self.children(d, self.read_json(d))))
        return order


def _verify_doc(desc: Descriptor, data: bytes, problems: list[LayoutProblem]) -> dict[str, Any] | None:
    try:
        doc = load_json(data, MAX_DOCUMENT_BYTES)  # bounded: depth, number sizes (outside data)
    except ValueError as exc:
        problems.append(LayoutProblem(desc.digest, f"not valid JSON: {exc}"))
        return None
    if not isinstance(doc, dict):
        problems.append(LayoutProblem(desc.digest, "manifest/index is not a JSON object"))
        return None
    if doc.get("schemaVersion") != 2:
        problems.append(LayoutProblem(desc.digest, f"schemaVersion is {doc.get('schemaVersion')!r}, expected 2"))
    if doc.get("mediaType", desc.media_type) != desc.media_type:
        problems.append(LayoutProblem(desc.digest, f"mediaType {doc.get('mediaType')!r} differs from descriptor {desc.media_type!r}"))
    if desc.media_type == MEDIA_TYPE_MANIFEST:
        if not isinstance(doc.get("config"), dict) or not isinstance(doc.get("layers", []), list):
            problems.append(LayoutProblem(desc.digest, "manifest lacks a config object or layers list"))
            return None
        if doc["config"].get("mediaType") == MEDIA_TYPE_EMPTY and not doc.get("artifactType"):
            problems.append(LayoutProblem(desc.digest, "empty config but no artifactType (image-spec 1.1 requires it)"))
    if desc.media_type == MEDIA_TYPE_INDEX and not isinstance(doc.get("manifests"), list):
        problems.append(LayoutProblem(desc.digest, "index lacks a manifests list"))
        return None
    return doc


def verify_layout(root: Path) -> list[LayoutProblem]:
    """Check a layout: oci-layout version, index.json, and size + sha256 of every reachable blob.

    Returns the problems found (empty list = valid). Unknown media types are not an error (the
    spec says so); only manifests and indexes are descended into.
    """
    root = Path(root)
    problems: list[LayoutProblem] = []
    try:
        marker = load_json(read_capped(root / "oci-layout", MAX_DOCUMENT_BYTES, "oci-layout"), MAX_DOCUMENT_BYTES)
        if not isinstance(marker, dict):
            raise ValueError("not a JSON object")
        if marker.get("imageLayoutVersion") != LAYOUT_VERSION:
            problems.append(LayoutProblem("oci-layout", f"imageLayoutVersion is {marker.get('imageLayoutVersion')!r}"))
    except (OSError, ValueError) as exc:
        problems.append(LayoutProblem("oci-layout", f"missing or unreadable: {exc}"))
    try:
        index = load_json(read_capped(root / "index.json", MAX_DOCUMENT_BYTES, "index.json"), MAX_DOCUMENT_BYTES)
        entries = index["manifests"]
        if not isinstance(entries, list):
            raise TypeError("manifests is not a list")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problems.append(LayoutProblem("index.json", f"missing or malformed: {exc}"))
        return problems
    reader = OciLayoutReader(root)
    seen: set[str] = set()
    stack: list[tuple[str, Any]] = [("index.json", e) for e in entries]
    while stack:
        parent, raw = stack.pop()
        try:
            desc = Descriptor.from_json(raw)
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(LayoutProblem(parent, f"bad descriptor {raw!r}: {exc}"))
            continue
        if desc.digest in seen:
            continue
        seen.add(desc.digest)
        path = reader.blob_path(desc.digest)
        if not path.is_file():
            problems.append(LayoutProblem(desc.digest, f"blob missing (referenced from {parent})"))
            continue
        size = path.stat().st_size
        if size != desc.size:
            problems.append(LayoutProblem(desc.digest, f"size {size} != descriptor size {desc.size} (from {parent})"))
            continue
        if "sha256:" + file_sha256(path) != desc.digest:  # streamed: a blob may be large
            problems.append(LayoutProblem(desc.digest, f"content does not hash to its name (from {parent})"))
            continue
        if desc.media_type in (MEDIA_TYPE_MANIFEST, MEDIA_TYPE_INDEX):
            if size > MAX_DOCUMENT_BYTES:
                problems.append(LayoutProblem(desc.digest, f"manifest/index of {size} bytes is over the "
                                                           f"{MAX_DOCUMENT_BYTES}-byte limit"))
                continue
            data = path.read_bytes()
            doc = _verify_doc(desc, data, problems)
            if doc is None:
                continue
            if desc.media_type == MEDIA_TYPE_INDEX:
                stack.extend((desc.digest, m) for m in doc.get("manifests", []))
            else:
                stack.append((desc.digest, doc["config"]))
                stack.extend((desc.digest, layer) for layer in doc.get("layers", []))
    return problems
