"""Push an OCI image layout to an OCI distribution registry and pull it back, digest for digest.

Plain HTTP(S) with urllib3, no auth helpers (anonymous or a caller-supplied Authorization header):
enough for a loopback or internal mirror registry; use skopeo/oras for token-auth registries.

Push: blobs first (HEAD to skip existing, then POST + monolithic PUT), then manifests children
before parents (registries check that referenced blobs/manifests exist), each PUT by digest and,
when tagged in index.json, also by tag, always with the exact bytes from the layout so digests are
preserved. Referrers: a registry that answers `GET /v2/<name>/referrers/<digest>` maintains the
list itself, so `sha256-<hex>` fallback tags are only pushed when the API is missing (404), as the
distribution spec requires; an existing remote fallback index is merged, not overwritten.

Pull: manifests by tag, blobs by digest, all written into a new layout with every digest checked.
Errors are `RegistryError`s naming the registry URL, repository and digest.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urljoin, urlsplit

import urllib3

from stella_build.engine.encode import canonical_json
from stella_build.engine.rule_api import atomic_file
from stella_build.rules.formats.oci import (
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
    OciLayoutReader,
    OciLayoutWriter,
    fallback_tag,
    verify_layout,
)

_MANIFEST_ACCEPT = ", ".join([MEDIA_TYPE_MANIFEST, MEDIA_TYPE_INDEX])
_FALLBACK_TAG_RE = re.compile(r"^sha256-[0-9a-f]{64}$")
_REPO_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_RETRY_STATUSES = {408, 429, 500, 502, 503, 504}
_CHUNK = 1 << 20


class RegistryError(RuntimeError):
    """A registry request failed; the message names the URL, repository and digest involved."""


@dataclass
class PushResult:
    blobs_uploaded: list[str] = field(default_factory=list)
    blobs_skipped: list[str] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    referrers_api: bool | None = None


class RegistryClient:
    """One repository on one registry. `base_url` like `http://127.0.0.1:5000`."""

    def __init__(
        self,
        base_url: str,
        repository: str,
        *,
        timeout: float = 30.0,
        attempts: int = 3,
        backoff: float = 0.25,
        headers: Mapping[str, str] | None = None,
        pool: urllib3.PoolManager | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise RegistryError(f"registry URL {base_url!r} must be http(s)://host[:port]")
        if not _REPO_RE.match(repository):
            raise RegistryError(f"repository name {repository!r} is not a valid distribution repository name")
        self.base_url = f"{parts.scheme}://{parts.netloc}"
        self.repository = repository
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self._sleep = sleep
        self._headers = dict(headers or {})
        self._timeout = urllib3.Timeout(connect=min(timeout, 10.0), read=timeout)
        # urllib3 retries are off: the retry loop below also covers bad statuses and names the URL.
        self._pool = pool or urllib3.PoolManager(retries=False, timeout=self._timeout)

    # -- HTTP plumbing ------------------------------------------------------------------------
    def url(self, path: str) -> str:
        return f"{self.base_url}/v2/{self.repository}/{path}"

    def where(self, digest: str | None = None) -> str:
        return f"{self.base_url}/{self.repository}" + (f"@{digest}" if digest else "")

    def _request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        body: bytes | Callable[[], Any] | None = None,
        headers: Mapping[str, str] | None = None,
        preload: bool = True,
    ) -> urllib3.BaseHTTPResponse:
        """Send with bounded retries on connection errors and 408/429/5xx; never raises on 4xx."""
        hdrs = {**self._headers, **(headers or {})}
        last: str = ""
        for attempt in range(self.attempts):
            if attempt:
                self._sleep(self.backoff * (2 ** (attempt - 1)))
            try:
                payload = body() if callable(body) else body
                resp = self._pool.request(method, url, body=payload, headers=hdrs, redirect=True,
                                          preload_content=preload, timeout=self._timeout)
            except urllib3.exceptions.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if resp.status in _RETRY_STATUSES:
                last = f"HTTP {resp.status}: {_short(resp)}"
                resp.release_conn()
                continue
            return resp
        raise RegistryError(f"{method} {url} ({what}) failed after {self.attempts} attempts: {last}")

    def _fail(self, resp: urllib3.BaseHTTPResponse, method: str, url: str, what: str) -> RegistryError:
        return RegistryError(f"{method} {url} ({what}): HTTP {resp.status}: {_short(resp)}")

    # -- blobs ----------------------------------------------------------------------------------
    def has_blob(self, digest: str) -> bool:
        url = self.url(f"blobs/{digest}")
        resp = self._request("HEAD", url, what=f"blob {digest} at {self.where()}")
        if resp.status == 200:
            return True
        if resp.status == 404:
            return False
        raise self._fail(resp, "HEAD", url, f"blob {digest} at {self.where()}")

    def upload_blob(self, path: Path, digest: str, size: int) -> bool:
        """Upload a blob file unless present; True if uploaded. POST a session, then one PUT."""
        if self.has_blob(digest):
            return False
        what = f"blob {digest} ({size} bytes) to {self.where()}"
        with open(path, "rb") as stream:
            return self._upload_stream(stream, digest, size, what)

    def _upload_stream(self, stream: Any, digest: str, size: int, what: str) -> bool:
        def body() -> Any:
            stream.seek(0)  # rewind for every retry of the PUT
            return stream

        for attempt in range(self.attempts):
            start = self.url("blobs/uploads/")
            resp = self._request("POST", start, what=what, headers={"Content-Length": "0"})
            if resp.status != 202 or "Location" not in resp.headers:
                raise self._fail(resp, "POST", start, what)
            location = urljoin(start, resp.headers["Location"])
            sep = "&" if "?" in location else "?"
            put_url = f"{location}{sep}digest={digest}"

            resp = self._request("PUT", put_url, what=what, body=body,
                                 headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
            if resp.status == 201:
                return True
            if resp.status == 404 and attempt + 1 < self.attempts:  # upload session expired: start over
                continue
            raise self._fail(resp, "PUT", put_url.split("?")[0], what)
        raise RegistryError(f"upload of {what} did not complete")

    def fetch_blob(self, desc: Descriptor, dest: Path) -> None:
        """Stream a blob to `dest`, checking size and sha256 before it is renamed into place."""
        url = self.url(f"blobs/{desc.digest}")
        what = f"blob {desc.digest} from {self.where()}"
        resp = self._request("GET", url, what=what, preload=False)
        if resp.status != 200:
            raise self._fail(resp, "GET", url, what)
        h, size = hashlib.sha256(), 0
        with atomic_file(dest) as out:  # renamed into place only if the checks below pass
            for chunk in resp.stream(_CHUNK):
                h.update(chunk)
                size += len(chunk)
                out.write(chunk)
            resp.release_conn()
            got = "sha256:" + h.hexdigest()
            if size != desc.size or got != desc.digest:
                raise RegistryError(f"GET {url} ({what}): received {size} bytes with digest {got}, "
                                    f"expected {desc.size} bytes {desc.digest}")

    # -- manifests ------------------------------------------------------------------------------
    def put_manifest(self, data: bytes, media_type: str, reference: str) -> str:
        """PUT exact manifest bytes by digest or tag; returns the digest the registry reports."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        url = self.url(f"manifests/{reference}")
        what = f"manifest {digest} as {reference!r} to {self.where()}"
        resp = self._request("PUT", url, what=what, body=data, headers={"Content-Type": media_type})
        if resp.status != 201:
            raise self._fail(resp, "PUT", url, what)
        reported = resp.headers.get("Docker-Content-Digest")
        if reported and reported != digest:
            raise RegistryError(f"PUT {url} ({what}): registry stored digest {reported}, expected {digest}")
        return digest

    def get_manifest(self, reference: str) -> tuple[bytes, str] | None:
        """(bytes, media type) of a manifest by tag or digest; None if the registry says 404."""
        url = self.url(f"manifests/{reference}")
        what = f"manifest {reference!r} from {self.where()}"
        resp = self._request("GET", url, what=what, headers={"Accept": _MANIFEST_ACCEPT})
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise self._fail(resp, "GET", url, what)
        data = resp.data
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(f"GET {url}: content hashes to {digest}, not {reference}")
        reported = resp.headers.get("Docker-Content-Digest")
        if reported and reported != digest:
            raise RegistryError(f"GET {url} ({what}): content hashes to {digest}, registry says {reported}")
        media_type = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
        try:
            media_type = json.loads(data).get("mediaType") or media_type
        except ValueError:
            raise RegistryError(f"GET {url} ({what}): manifest is not JSON") from None
        return data, media_type

    def list_tags(self) -> list[str]:
        url = self.url("tags/list")
        resp = self._request("GET", url, what=f"tags of {self.where()}")
        if resp.status != 200:
            raise self._fail(resp, "GET", url, f"tags of {self.where()}")
        return sorted(json.loads(resp.data).get("tags") or [])

    # -- referrers ------------------------------------------------------------------------------
    def referrers_api(self, subject_digest: str) -> list[Descriptor] | None:
        """Referrers from `GET /v2/<name>/referrers/<digest>`; None when the API is missing (404)."""
        url = self.url(f"referrers/{subject_digest}")
        what = f"referrers of {subject_digest} at {self.where()}"
        resp = self._request("GET", url, what=what, headers={"Accept": MEDIA_TYPE_INDEX})
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise self._fail(resp, "GET", url, what)
        try:
            doc = json.loads(resp.data)
            if doc.get("mediaType", MEDIA_TYPE_INDEX) != MEDIA_TYPE_INDEX:
                return None  # not a referrers response (some proxies answer 200 with HTML)
            return [Descriptor.from_json(m) for m in doc.get("manifests", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def referrers(self, subject_digest: str) -> list[Descriptor]:
        """Referrers of a subject: the API if present, else the `sha256-<hex>` tag schema."""
        found = self.referrers_api(subject_digest)
        if found is not None:
            return found
        got = self.get_manifest(fallback_tag(subject_digest))
        if got is None:
            return []
        return [Descriptor.from_json(m) for m in json.loads(got[0]).get("manifests", [])]


def _short(resp: urllib3.BaseHTTPResponse) -> str:
    try:
        text = resp.data.decode("utf-8", "replace").strip()
    except Exception:  # noqa: BLE001 - best-effort error text only
        text = ""
    return text[:300] or resp.reason or ""


# -- push -----------------------------------------------------------------------------------------

def push_layout(
    layout_root: Path,
    client: RegistryClient,
    *,
    tags: list[str] | None = None,
) -> PushResult:
    """Push a layout's tagged content (all tags, or `tags`) with every digest preserved.

    The layout is verified first (`verify_layout`); a broken layout is never half-pushed.
    """
    layout_root = Path(layout_root)
    problems = verify_layout(layout_root)
    if problems:
        raise RegistryError(f"refusing to push {layout_root}: " + "; ".join(map(str, problems[:5])))
    reader = OciLayoutReader(layout_root)
    all_tags = reader.tags()
    selected = sorted(all_tags) if tags is None else list(tags)
    missing = [t for t in selected if t not in all_tags]
    if missing:
        raise RegistryError(f"{layout_root}: tags {missing} not in index.json (have {sorted(all_tags)})")
    fallback = [t for t in selected if _FALLBACK_TAG_RE.match(t)]
    normal = [t for t in selected if t not in fallback]

    result = PushResult()
    done: set[str] = set()
    for t in normal:
        _push_tree(reader, client, all_tags[t], done, result)
        result.tags[t] = client.put_manifest(reader.read_blob(all_tags[t]), all_tags[t].media_type, t)

    for t in fallback:
        subject = "sha256:" + t.split("-", 1)[1]
        api = client.referrers_api(subject)
        result.referrers_api = api is not None
        index_desc = all_tags[t]
        _push_tree(reader, client, index_desc, done, result)  # pushes the referrer manifests
        if api is not None:
            continue  # the registry indexes `subject` itself; the tag schema must not be used
        local = reader.read_blob(index_desc)
        remote = client.get_manifest(t)
        data = local if remote is None else _merge_fallback(local, remote[0])
        result.tags[t] = client.put_manifest(data, MEDIA_TYPE_INDEX, t)
    return result


def _push_tree(reader: OciLayoutReader, client: RegistryClient, desc: Descriptor,
               done: set[str], result: PushResult) -> None:
    """Post-order push: blobs and child manifests before the manifest/index that names them."""
    if desc.digest in done:
        return
    if desc.media_type in (MEDIA_TYPE_MANIFEST, MEDIA_TYPE_INDEX):
        data = reader.read_blob(desc)
        for child in reader.children(desc, json.loads(data)):
            _push_tree(reader, client, child, done, result)
        client.put_manifest(data, desc.media_type, desc.digest)
        result.manifests.append(desc.digest)
    else:
        path = reader.blob_path(desc.digest)
        if client.upload_blob(path, desc.digest, desc.size):
            result.blobs_uploaded.append(desc.digest)
        else:
            result.blobs_skipped.append(desc.digest)
    done.add(desc.digest)


def _merge_fallback(local: bytes, remote: bytes) -> bytes:
    """Union of two referrers-tag indexes, sorted by digest; the local bytes if nothing is new."""
    mine = json.loads(local)
    theirs = json.loads(remote)
    have = {m["digest"] for m in mine.get("manifests", [])}
    extra = [m for m in theirs.get("manifests", []) if m.get("digest") not in have]
    if not extra:
        return local
    mine["manifests"] = sorted(mine["manifests"] + extra, key=lambda m: m["digest"])
    return canonical_json.dumps(mine)


# -- pull -----------------------------------------------------------------------------------------

def pull_layout(client: RegistryClient, out_root: Path, *, tags: list[str] | None = None) -> dict[str, str]:
    """Pull `tags` (default: every tag of the repository) into a new OCI layout at `out_root`.

    Manifest and blob bytes are stored exactly as served and checked against their digests.
    Returns {tag: digest}.
    """
    out_root = Path(out_root)
    writer = OciLayoutWriter(out_root)
    wanted = client.list_tags() if tags is None else list(tags)
    result: dict[str, str] = {}
    done: set[str] = set()
    for t in wanted:
        got = client.get_manifest(t)
        if got is None:
            raise RegistryError(f"tag {t!r} not found at {client.where()}")
        data, media_type = got
        desc = Descriptor(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))
        _pull_tree(client, writer, desc, data, done)
        writer.tag(desc, t)
        result[t] = desc.digest
    writer.write_index()
    return result


def _pull_tree(client: RegistryClient, writer: OciLayoutWriter, desc: Descriptor, data: bytes | None, done: set[str]) -> None:
    if desc.digest in done:
        return
    if desc.media_type in (MEDIA_TYPE_MANIFEST, MEDIA_TYPE_INDEX):
        if data is None:
            got = client.get_manifest(desc.digest)
            if got is None:
                raise RegistryError(f"manifest {desc.digest} not found at {client.where()}")
            data = got[0]
        if len(data) != desc.size:
            raise RegistryError(f"manifest {desc.digest} from {client.where()} is {len(data)} bytes, descriptor says {desc.size}")
        stored = writer.add_blob(data, desc.media_type)
        assert stored.digest == desc.digest
        reader = OciLayoutReader(writer.root)
        for child in reader.children(desc, json.loads(data)):
            _pull_tree(client, writer, child, None, done)
    else:
        client.fetch_blob(desc, writer.blob_path(desc.digest))
    done.add(desc.digest)


__all__ = ["RegistryClient", "RegistryError", "PushResult", "push_layout", "pull_layout"]
