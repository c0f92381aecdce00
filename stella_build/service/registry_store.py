"""The registry's view of runs: repositories, tags, manifests, blobs and referrers.

A repository is `<tenant>/<profile>`: `acme/trivy-db` is tenant acme's runs of `//profiles:trivy-db`,
`acme/team/x/db` those of `//team/x:db`. Its content is the OCI image layout (`oci/index.json`,
`oci/blobs/sha256/<hex>`) of each of the tenant's *succeeded* runs of that profile, read from the
run's file rows (db.py FileRow) and the content-addressed cache (the blob at `cas.path(blake3)`):
nothing is copied, and only file rows of the repository's own runs can be served.

Tags (docs/api.md "Registry"), for each tag T of a run's `index.json` (`2` for trivy:db, `1` for
trivy:java-db, `sha256-<hex>` for the referrers tag schema):
- `T`: the newest succeeded run that has T (moves with every new run);
- `T-<run id>` (`2-run-0123…`): that run's T, immutable;
- `T-<YYYYMMDD>` (`2-20250101`): the newest run whose T manifest was created that UTC day (the
  `org.opencontainers.image.created` annotation, i.e. the build's SOURCE_DATE_EPOCH): a
  point-in-time DB. `sha256-*` tags get no derived names.

Small JSON documents (index.json, manifests: capped at 4 MiB) are read whole, checked against their
recorded sha256 and cached by content (immutable); blobs are only ever streamed by the caller.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass

from sqlalchemy import select

from stella_build.service.db import FileRow, RunRow

LAYOUT = "oci"
MANIFEST_TYPES = frozenset({
    "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json"})
INDEX_TYPES = frozenset({"application/vnd.oci.image.index.v1+json",
                         "application/vnd.docker.distribution.manifest.list.v2+json"})
MAX_DOCUMENT = 4 << 20  # the OCI distribution spec's suggested manifest size limit
_CREATED = "org.opencontainers.image.created"
_REF_NAME = "org.opencontainers.image.ref.name"
_DAY = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T")
_DERIVED = re.compile(r"^(.+)-(\d{8}|run-[0-9a-f]{24})$")


@dataclass(frozen=True)
class Blob:
    """One stored file: its CAS key, size in bytes and sha256 hex."""

    blake3: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Target:
    """What a reference resolved to: the run and the descriptor (dict) of index.json."""

    run_id: str
    descriptor: dict


class Gone(Exception):
    """A recorded blob is missing from the cache or differs from its record (cache gc, damage)."""


class RepositoryStore:
    """Read-only lookups over the service database and CAS (thread-safe; one per app)."""

    def __init__(self, db, cas, cache_entries: int = 512):
        self.db = db
        self.cas = cas
        self._docs: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        self._cache_entries = cache_entries

    # -- database ---------------------------------------------------------------------------------
    def runs(self, tenant: str, label: str) -> list[str]:
        """The ids of the tenant's succeeded runs of `label`, newest first."""
        with self.db.read() as s:
            return list(s.scalars(select(RunRow.id).where(
                RunRow.tenant == tenant, RunRow.profile == label, RunRow.status == "succeeded")
                .order_by(RunRow.finished_at.desc(), RunRow.id.desc())))

    def blob(self, tenant: str, label: str, hex_digest: str) -> Blob | None:
        """The layout blob `sha256:<hex_digest>` of any succeeded run of the repository, or None."""
        path = f"{LAYOUT}/blobs/sha256/{hex_digest}"
        with self.db.read() as s:
            row = s.execute(select(FileRow.blake3, FileRow.size, FileRow.sha256).join(
                RunRow, RunRow.id == FileRow.run_id).where(
                RunRow.tenant == tenant, RunRow.profile == label, RunRow.status == "succeeded",
                FileRow.path == path).limit(1)).first()
        if row is None or row.sha256 != hex_digest:
            return None
        return Blob(row.blake3, row.size, row.sha256)

    def _index_blob(self, run_id: str) -> Blob | None:
        with self.db.read() as s:
            row = s.get(FileRow, (run_id, f"{LAYOUT}/index.json"))
        return Blob(row.blake3, row.size, row.sha256) if row is not None else None

    # -- documents --------------------------------------------------------------------------------
    def stat(self, blob: Blob) -> os.stat_result:
        """The CAS file's stat; Gone when it left the cache or has another size than recorded."""
        try:
            st = os.stat(self.cas.path(blob.blake3))
        except FileNotFoundError:
            raise Gone(blob.sha256) from None
        if st.st_size != blob.size:
            raise Gone(blob.sha256)
        return st

    def read(self, blob: Blob) -> bytes:
        """A small document's bytes (≤ 4 MiB), checked against its sha256; Gone otherwise."""
        if blob.size > MAX_DOCUMENT:
            raise Gone(blob.sha256)
        try:
            with open(self.cas.path(blob.blake3), "rb") as f:
                data = f.read(MAX_DOCUMENT + 1)
        except FileNotFoundError:
            raise Gone(blob.sha256) from None
        if hashlib.sha256(data).hexdigest() != blob.sha256:
            raise Gone(blob.sha256)
        return data

    def document(self, blob: Blob) -> dict | None:
        """The parsed JSON object of a small document (cached by content), None if not an object."""
        with self._lock:
            if blob.sha256 in self._docs:
                self._docs.move_to_end(blob.sha256)
                return self._docs[blob.sha256]
        try:
            doc = json.loads(self.read(blob))
        except ValueError:
            doc = None
        doc = doc if isinstance(doc, dict) else None
        with self._lock:
            self._docs[blob.sha256] = doc
            while len(self._docs) > self._cache_entries:
                self._docs.popitem(last=False)
        return doc

    # -- tags ---------------------------------------------------------------------------------------
    def run_tags(self, run_id: str) -> dict[str, dict]:
        """tag → descriptor of one run's index.json ({} when the run has no layout)."""
        blob = self._index_blob(run_id)
        if blob is None:
            return {}
        index = self.document(blob) or {}
        tags = {}
        for desc in index.get("manifests") or []:
            name = ((desc.get("annotations") or {}).get(_REF_NAME)) if isinstance(desc, dict) else None
            if isinstance(name, str) and isinstance(desc.get("digest"), str):
                tags.setdefault(name, desc)
        return tags

    def _day(self, tenant: str, label: str, desc: dict) -> str | None:
        """YYYYMMDD of the manifest's created annotation, None when it has none."""
        hexd = desc["digest"].removeprefix("sha256:")
        blob = self.blob(tenant, label, hexd)
        if blob is None:
            return None
        try:
            doc = self.document(blob) or {}
        except Gone:
            return None
        match = _DAY.match(str((doc.get("annotations") or {}).get(_CREATED, "")))
        return "".join(match.groups()) if match else None

    def resolve(self, tenant: str, label: str, tag: str) -> Target | None:
        """The run and descriptor a tag names (see the module docstring), or None."""
        runs = self.runs(tenant, label)
        for run_id in runs:
            desc = self.run_tags(run_id).get(tag)
            if desc is not None:
                return Target(run_id, desc)
        match = _DERIVED.match(tag)
        if not match or match[1].startswith("sha256-"):
            return None
        base, suffix = match[1], match[2]
        if suffix.startswith("run-"):
            if suffix in runs:
                desc = self.run_tags(suffix).get(base)
                return Target(suffix, desc) if desc is not None else None
            return None
        for run_id in runs:
            desc = self.run_tags(run_id).get(base)
            if desc is not None and self._day(tenant, label, desc) == suffix:
                return Target(run_id, desc)
        return None

    def tags(self, tenant: str, label: str) -> list[str]:
        """Every tag of the repository, sorted (lexically, as the spec's tag list)."""
        names: set[str] = set()
        for run_id in self.runs(tenant, label):
            for tag, desc in self.run_tags(run_id).items():
                names.add(tag)
                if tag.startswith("sha256-"):
                    continue
                names.add(f"{tag}-{run_id}")
                day = self._day(tenant, label, desc)
                if day:
                    names.add(f"{tag}-{day}")
        return sorted(names)

    # -- referrers ----------------------------------------------------------------------------------
    def referrers(self, tenant: str, label: str, subject: str) -> list[dict]:
        """Descriptors (mediaType, digest, size, artifactType, annotations) of every manifest of the
        repository whose `subject.digest` is `subject`, sorted by digest. Manifests are those
        index.json names and those one index below (the referrers tag schema's index)."""
        found: dict[str, dict] = {}
        seen: set[str] = set()
        for run_id in self.runs(tenant, label):
            queue = [(desc, 0) for desc in self.run_tags(run_id).values()]  # (descriptor, depth)
            while queue:
                desc, depth = queue.pop()
                digest = desc.get("digest") if isinstance(desc, dict) else None
                if not isinstance(digest, str) or digest in seen or desc.get("mediaType") not in MANIFEST_TYPES:
                    continue
                seen.add(digest)
                blob = self.blob(tenant, label, digest.removeprefix("sha256:"))
                if blob is None:
                    continue
                try:
                    doc = self.document(blob) or {}
                except Gone:
                    continue
                if doc.get("mediaType") in INDEX_TYPES and depth == 0:
                    queue.extend((child, 1) for child in doc.get("manifests") or [])
                if (doc.get("subject") or {}).get("digest") != subject:
                    continue
                entry = {"mediaType": doc.get("mediaType"), "digest": digest, "size": blob.size}
                kind = doc.get("artifactType") or (doc.get("config") or {}).get("mediaType")
                if kind:
                    entry["artifactType"] = kind
                if doc.get("annotations"):
                    entry["annotations"] = doc["annotations"]
                found[digest] = entry
        return [found[d] for d in sorted(found)]
