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

A registry is untrusted (docs/security-consumer.md): no response body is ever read whole without
a cap. Manifests, indexes, tag lists and referrer lists are read as a stream up to
`max_manifest_bytes` (4 MiB, the size the distribution spec asks registries to accept; a
Content-Length above it fails before reading) within `body_timeout` seconds; error bodies are read
up to 300 bytes; blobs are streamed to disk, hashed as they arrive and abandoned as soon as they
pass their descriptor's size; a pull first checks that the blobs it is about to fetch fit on the
disk (or in `max_bytes`).
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
MAX_MANIFEST_BYTES = 4 << 20   # distribution spec: registries SHOULD accept manifests up to 4 MiB
_MAX_LIST_BYTES = 16 << 20     # a tags list or a referrers index
_ERROR_TEXT_BYTES = 300


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
        max_manifest_bytes: int = MAX_MANIFEST_BYTES,
        body_timeout: float = 120.0,
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
        self.max_manifest_bytes = max_manifest_bytes
        # urllib3's read timeout bounds each socket read, not a whole body: a registry trickling a
        # byte at a time would never time out, so capped reads also check this overall deadline.
        self.body_timeout = body_timeout
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
    ) -> urllib3.BaseHTTPResponse:
        """Send with bounded retries on connection errors and 408/429/5xx; never raises on 4xx.
        The body is never preloaded: read it with `_read_body` (capped) or let `_done` discard it."""
        hdrs = {**self._headers, **(headers or {})}
        last: str = ""
        for attempt in range(self.attempts):
            if attempt:
                self._sleep(self.backoff * (2 ** (attempt - 1)))
            try:
                payload = body() if callable(body) else body
                resp = self._pool.request(method, url, body=payload, headers=hdrs, redirect=True,
                                          preload_content=False, timeout=self._timeout)
            except urllib3.exceptions.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if resp.status in _RETRY_STATUSES:
                last = f"HTTP {resp.status}: {_short(resp)}"
                continue
            return resp
        raise RegistryError(f"{method} {url} ({what}) failed after {self.attempts} attempts: {last}")

    def _fail(self, resp: urllib3.BaseHTTPResponse, method: str, url: str, what: str) -> RegistryError:
        return RegistryError(f"{method} {url} ({what}): HTTP {resp.status}: {_short(resp)}")

    def _read_body(self, resp: urllib3.BaseHTTPResponse, cap: int, method: str, url: str, what: str) -> bytes:
        """The response body, at most `cap` bytes, within `body_timeout` seconds (RegistryError
        otherwise, before reading when Content-Length already says too much)."""
        length = resp.headers.get("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > cap:
            resp.close()
            raise RegistryError(f"{method} {url} ({what}): response of {int(length)} bytes is larger than the "
                                f"{cap} allowed")
        deadline = time.monotonic() + self.body_timeout
        buf = bytearray()
        try:
            for chunk in resp.stream(1 << 16):
                buf += chunk
                if len(buf) > cap:
                    raise RegistryError(f"{method} {url} ({what}): response is larger than the {cap} bytes allowed")
                if time.monotonic() > deadline:
                    raise RegistryError(f"{method} {url} ({what}): response took longer than {self.body_timeout} s")
        except RegistryError:
            resp.close()
            raise
        except urllib3.exceptions.HTTPError as exc:
            resp.close()
            raise RegistryError(f"{method} {url} ({what}): {type(exc).__name__}: {exc}") from None
        resp.release_conn()
        return bytes(buf)

    # -- blobs ----------------------------------------------------------------------------------
    def has_blob(self, digest: str) -> bool:
        url = self.url(f"blobs/{digest}")
        resp = self._request("HEAD", url, what=f"blob {digest} at {self.where()}")
        if resp.status in (200, 404):
            _done(resp)
            return resp.status == 200
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
            _done(resp)
            location = urljoin(start, resp.headers["Location"])
            sep = "&" if "?" in location else "?"
            put_url = f"{location}{sep}digest={digest}"

            resp = self._request("PUT", put_url, what=what, body=body,
                                 headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
            if resp.status == 201:
                _done(resp)
                return True
            if resp.status == 404 and attempt + 1 < self.attempts:  # upload session expired: start over
                _done(resp)
                continue
            raise self._fail(resp, "PUT", put_url.split("?")[0], what)
        raise RegistryError(f"upload of {what} did not complete")

    def fetch_blob(self, desc: Descriptor, dest: Path) -> None:
        """Stream a blob to `dest`, hashing as it arrives: abandoned as soon as it passes
        `desc.size`; renamed into place only when size and sha256 match."""
        url = self.url(f"blobs/{desc.digest}")
        what = f"blob {desc.digest} from {self.where()}"
        resp = self._request("GET", url, what=what)
        if resp.status != 200:
            raise self._fail(resp, "GET", url, what)
        length = resp.headers.get("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) != desc.size:
            resp.close()
            raise RegistryError(f"GET {url} ({what}): Content-Length {int(length)}, the descriptor says {desc.size}")
        h, size = hashlib.sha256(), 0
        with atomic_file(dest) as out:  # renamed into place only if the checks below pass
            try:
                for chunk in resp.stream(_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    if size > desc.size:
                        raise RegistryError(f"GET {url} ({what}): more than the {desc.size} bytes of its descriptor")
                    out.write(chunk)
            except RegistryError:
                resp.close()
                raise
            except urllib3.exceptions.HTTPError as exc:
                resp.close()
                raise RegistryError(f"GET {url} ({what}): {type(exc).__name__}: {exc}") from None
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
        _done(resp)
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
            _done(resp)
            return None
        if resp.status != 200:
            raise self._fail(resp, "GET", url, what)
        data = self._read_body(resp, self.max_manifest_bytes, "GET", url, what)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(f"GET {url}: content hashes to {digest}, not {reference}")
        reported = resp.headers.get("Docker-Content-Digest")
        if reported and reported != digest:
            raise RegistryError(f"GET {url} ({what}): content hashes to {digest}, registry says {reported}")
        media_type = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
        try:
            doc = json.loads(data)
            media_type = (doc.get("mediaType") if isinstance(doc, dict) else None) or media_type
        except (ValueError, RecursionError):
            raise RegistryError(f"GET {url} ({what}): manifest is not JSON") from None
        if not isinstance(doc, dict) or not isinstance(media_type, str):
            raise RegistryError(f"GET {url} ({what}): manifest is not a JSON object with a string mediaType")
        return data, media_type

    def list_tags(self) -> list[str]:
        url = self.url("tags/list")
        resp = self._request("GET", url, what=f"tags of {self.where()}")
        if resp.status != 200:
            raise self._fail(resp, "GET", url, f"tags of {self.where()}")
        data = self._read_body(resp, _MAX_LIST_BYTES, "GET", url, f"tags of {self.where()}")
        try:
            tags = json.loads(data).get("tags") or []
            if not all(isinstance(t, str) for t in tags):
                raise TypeError("tags must be strings")
        except (ValueError, TypeError, AttributeError, RecursionError) as exc:
            raise RegistryError(f"GET {url}: the tag list is malformed ({exc})") from None
        return sorted(tags)

    # -- referrers ------------------------------------------------------------------------------
    def referrers_api(self, subject_digest: str) -> list[Descriptor] | None:
        """Referrers from `GET /v2/<name>/referrers/<digest>`; None when the API is missing (404)."""
        url = self.url(f"referrers/{subject_digest}")
        what = f"referrers of {subject_digest} at {self.where()}"
        resp = self._request("GET", url, what=what, headers={"Accept": MEDIA_TYPE_INDEX})
        if resp.status == 404:
            _done(resp)
            return None
        if resp.status != 200:
            raise self._fail(resp, "GET", url, what)
        data = self._read_body(resp, _MAX_LIST_BYTES, "GET", url, what)
        try:
            doc = json.loads(data)
            if doc.get("mediaType", MEDIA_TYPE_INDEX) != MEDIA_TYPE_INDEX:
                return None  # not a referrers response (some proxies answer 200 with HTML)
            return [Descriptor.from_json(m) for m in doc.get("manifests", [])]
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return None

    def referrers(self, subject_digest: str) -> list[Descriptor]:
        """Referrers of a subject: the API if present, else the `sha256-<hex>` tag schema."""
        found = self.referrers_api(subject_digest)
        if found is not None:
            return found
        got = self.get_manifest(fallback_tag(subject_digest))
        if got is None:
            return []
        try:
            return [Descriptor.from_json(m) for m in json.loads(got[0]).get("manifests", [])]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RegistryError(f"referrers index {fallback_tag(subject_digest)} at {self.where()} is malformed "
                                f"({exc})") from None


def _short(resp: urllib3.BaseHTTPResponse) -> str:
    """At most 300 bytes of an error body, as text; the rest is never read (the connection closes)."""
    try:
        text = resp.read(_ERROR_TEXT_BYTES).decode("utf-8", "replace").strip()
    except Exception:  # noqa: BLE001 - best-effort error text only
        text = ""
    resp.close()
    return text[:_ERROR_TEXT_BYTES] or resp.reason or ""


def _done(resp: urllib3.BaseHTTPResponse) -> None:
    """Finish with a response whose body is not needed: up to 64 KiB are drained so the connection
    can be reused; a longer body closes the connection instead of being read."""
    try:
        rest = resp.read(1 << 16)
        if rest and resp.read(1):
            resp.close()
            return
        resp.release_conn()
    except Exception:  # noqa: BLE001 - the response is finished with either way
        resp.close()


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

def pull_layout(client: RegistryClient, out_root: Path, *, tags: list[str] | None = None,
                max_bytes: int | None = None) -> dict[str, str]:
    """Pull `tags` (default: every tag of the repository) into a new OCI layout at `out_root`.

    Manifest and blob bytes are stored exactly as served and checked against their digests.
    The blobs a manifest names must fit in `max_bytes` in total (default: the free space of the
    file system holding `out_root`, measured before the pull): checked from their descriptors
    before each is fetched, so a manifest claiming terabytes fails before filling the disk.
    Malformed manifests are RegistryErrors. Returns {tag: digest}.
    """
    import shutil

    out_root = Path(out_root)
    writer = OciLayoutWriter(out_root)
    if max_bytes is None:
        max_bytes = shutil.disk_usage(out_root if out_root.exists() else out_root.parent).free
    budget = [max_bytes]
    wanted = client.list_tags() if tags is None else list(tags)
    result: dict[str, str] = {}
    done: set[str] = set()
    for t in wanted:
        got = client.get_manifest(t)
        if got is None:
            raise RegistryError(f"tag {t!r} not found at {client.where()}")
        data, media_type = got
        desc = Descriptor(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))
        _pull_tree(client, writer, desc, data, done, budget)
        writer.tag(desc, t)
        result[t] = desc.digest
    writer.write_index()
    return result


_MAX_DEPTH = 8  # index → manifest → referrer: real artifacts nest 2-3 deep


def _pull_tree(client: RegistryClient, writer: OciLayoutWriter, desc: Descriptor, data: bytes | None,
               done: set[str], budget: list[int], depth: int = 0) -> None:
    if desc.digest in done:
        return
    if depth > _MAX_DEPTH:
        raise RegistryError(f"{desc.digest} at {client.where()} is nested more than {_MAX_DEPTH} manifests deep")
    if desc.media_type in (MEDIA_TYPE_MANIFEST, MEDIA_TYPE_INDEX):
        if data is None:
            got = client.get_manifest(desc.digest)
            if got is None:
                raise RegistryError(f"manifest {desc.digest} not found at {client.where()}")
            data = got[0]
        if len(data) != desc.size:
            raise RegistryError(f"manifest {desc.digest} from {client.where()} is {len(data)} bytes, descriptor says {desc.size}")
        stored = writer.add_blob(data, desc.media_type)
        if stored.digest != desc.digest:
            raise RegistryError(f"manifest {desc.digest} from {client.where()} hashes to {stored.digest}")
        reader = OciLayoutReader(writer.root)
        try:
            children = reader.children(desc, json.loads(data))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            # OciLayoutError is a ValueError: a bad digest, size or annotation in a descriptor
            raise RegistryError(f"manifest {desc.digest} from {client.where()} is malformed ({exc})") from None
        blobs = [c for c in children if c.media_type not in (MEDIA_TYPE_MANIFEST, MEDIA_TYPE_INDEX)
                 and c.digest not in done]
        need = sum({c.digest: c.size for c in blobs}.values())
        if need > budget[0]:
            raise RegistryError(f"manifest {desc.digest} from {client.where()} names {need} bytes of blobs, more "
                                f"than the {budget[0]} bytes of space left for this pull")
        for child in children:
            _pull_tree(client, writer, child, None, done, budget, depth + 1)
    else:
        if desc.size > budget[0]:
            raise RegistryError(f"blob {desc.digest} from {client.where()} ({desc.size} bytes) does not fit in "
                                f"the {budget[0]} bytes left for this pull")
        client.fetch_blob(desc, writer.blob_path(desc.digest))
        budget[0] -= desc.size
    done.add(desc.digest)


__all__ = ["RegistryClient", "RegistryError", "PushResult", "push_layout", "pull_layout"]
