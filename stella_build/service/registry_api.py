"""The OCI Distribution Spec v1.1 pull endpoints under /v2/, served from the runs' OCI layouts.

    GET      /v2/                                       200 `{}` (authenticated or open), else 401
    GET      /v2/token?scope=repository:<name>:pull     bearer tokens (registry_auth.py)
    GET|HEAD /v2/<name>/manifests/<tag|digest>          the manifest, Content-Type = its mediaType
    GET|HEAD /v2/<name>/blobs/<digest>                  streamed from the CAS; Range → 206 / 416
    GET      /v2/<name>/tags/list?n=&last=              lexical order, Link: <…>; rel="next"
    GET      /v2/<name>/referrers/<digest>?artifactType= an image index (OCI-Filters-Applied)

`<name>` is `<tenant>/<profile>` (registry_store.py); it and every reference are checked against the
spec's grammar before anything is looked up, so `..`, `%2F`-tricks and bad digests never reach the
database or the file system, and a blob is only ever the CAS file of a file row of the repository's
own runs. Errors are the spec's `{"errors":[{"code","message","detail"}]}` (NAME_INVALID,
NAME_UNKNOWN, MANIFEST_UNKNOWN, MANIFEST_INVALID, BLOB_UNKNOWN, DIGEST_INVALID, TAG_INVALID,
UNAUTHORIZED, DENIED, UNSUPPORTED, RANGE_INVALID), `detail.reason` being the kebab-case reason. The
registry is read-only: pushes and deletes answer 405 UNSUPPORTED. These routes are outside the
`/api/export` OpenAPI document (docs/api.md "Registry" is their contract).
"""
from __future__ import annotations

import json
import re
import threading
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from stella_build.service.registry_auth import RegistryAuth, RegistryError
from stella_build.service.registry_store import MANIFEST_TYPES, Gone, RepositoryStore

# The distribution spec's grammar (spec.md "Pulling manifests"; reference/regexp.go).
NAME = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$")
TAG = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
DIGEST = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
SHA256 = re.compile(r"^sha256:([a-f0-9]{64})$")
MAX_NAME = 255
API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}
_PATH = re.compile(r"^(?P<name>.+)/(?:(?P<kind>manifests|blobs|referrers)/(?P<ref>[^/]+)|(?P<tags>tags/list))$")
_TENANT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
MAX_TAGS_PAGE = 1000
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

router = APIRouter(include_in_schema=False)


def error_response(exc: RegistryError) -> JSONResponse:
    """The spec's error body for `exc`, with its headers."""
    body = {"errors": [{"code": exc.code, "message": exc.message, "detail": exc.detail}]}
    return JSONResponse(body, status_code=exc.status, headers={**API_VERSION_HEADER, **exc.headers})


_STATE_LOCK = threading.Lock()


def _state(request: Request) -> tuple[RegistryAuth, RepositoryStore]:
    """The app's registry auth and store, made once, on first use, from the service context (under
    a lock: two instances would hold two token keys, and tokens of one would fail on the other)."""
    app = request.app
    with _STATE_LOCK:
        reg = getattr(app.state, "registry", None)
        if reg is None:
            svc = app.state.svc
            reg = (RegistryAuth(svc.config, svc.auth), RepositoryStore(svc.store.db, svc.cas))
            app.state.registry = reg
    return reg


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def repository_label(name: str) -> tuple[str, str]:
    """`<tenant>/<profile>` → (tenant, label): `acme/trivy-db` → ("acme", "//profiles:trivy-db"),
    `acme/team/x/db` → ("acme", "//team/x:db"). RegistryError 400 NAME_INVALID otherwise."""
    if len(name) > MAX_NAME or not NAME.match(name) or "/" not in name:
        raise RegistryError(400, "NAME_INVALID", "invalid repository name (want <tenant>/<profile>)",
                            reason="name-invalid")
    tenant, rest = name.split("/", 1)
    if not _TENANT.match(tenant):
        raise RegistryError(400, "NAME_INVALID", "invalid tenant in repository name", reason="name-invalid")
    package, _, target = rest.rpartition("/")
    return tenant, f"//{package or 'profiles'}:{target}"


def _digest(ref: str, code: str) -> str:
    """The hex of a `sha256:<hex>` reference. 400 DIGEST_INVALID for a malformed digest, 404 `code`
    (…_UNKNOWN) for a well-formed digest of another algorithm (only sha256 is stored)."""
    if not DIGEST.match(ref) or (ref.startswith("sha256:") and not SHA256.match(ref)):
        raise RegistryError(400, "DIGEST_INVALID", "invalid digest", reason="digest-invalid")
    match = SHA256.match(ref)
    if not match:
        raise RegistryError(404, code, "only sha256 digests are stored", reason="digest-unsupported")
    return match[1]


def _name_unknown(name: str) -> RegistryError:
    return RegistryError(404, "NAME_UNKNOWN", f"repository {name} is not known (no succeeded run)",
                         reason="name-unknown")


def _gone(what: str) -> RegistryError:
    return RegistryError(404, what, "the content left the cache (cache gc); run the profile again",
                         reason="blob-missing")


# -- the routes ----------------------------------------------------------------------------------

@router.get("/v2/")
@router.get("/v2")
def base(request: Request) -> Response:
    auth, _ = _state(request)
    try:
        grant = auth.credentials(request.headers.get("authorization"))
        if grant is None:
            raise auth.challenge(_base_url(request), None, "token-missing", "authentication required")
    except RegistryError as exc:
        if exc.status == 401 and "WWW-Authenticate" not in exc.headers:
            exc = auth.challenge(_base_url(request), None, exc.reason, exc.message)
        return error_response(exc)
    return JSONResponse({}, headers=API_VERSION_HEADER)


@router.get("/v2/token")
def token(request: Request) -> Response:
    auth, _ = _state(request)
    try:
        answer = auth.issue(request.headers.get("authorization"), request.query_params.getlist("scope"),
                            _base_url(request))
    except RegistryError as exc:
        return error_response(exc)
    return JSONResponse(answer, headers={"Cache-Control": "no-store"})


@router.api_route("/v2/{path:path}", methods=["GET", "HEAD"])
async def pull(path: str, request: Request) -> Response:
    # The handler is async only to dispatch: lookups (database, CAS reads) run on the thread pool,
    # blobs stream through FileResponse, which reads the file in chunks off the event loop.
    try:
        return await run_in_threadpool(_pull, path, request)
    except RegistryError as exc:
        return error_response(exc)


@router.api_route("/v2/{path:path}", methods=["PUT", "POST", "PATCH", "DELETE"])
def push(path: str) -> Response:
    return error_response(RegistryError(405, "UNSUPPORTED", "this registry is read-only (pull only)",
                                        reason="push-unsupported", headers={"Allow": "GET, HEAD"}))


def _pull(path: str, request: Request) -> Response:
    match = _PATH.match(path)
    if not match:
        raise RegistryError(404, "NAME_INVALID", "no such registry endpoint", reason="no-route")
    name = match["name"]
    tenant, label = repository_label(name)
    auth, store = _state(request)
    auth.check_pull(request.headers.get("authorization"), name, _base_url(request))
    if match["tags"]:
        return _tags(request, store, name, tenant, label)
    kind, ref = match["kind"], match["ref"]
    if kind == "blobs":
        return _blob(request, store, name, tenant, label, _digest(ref, "BLOB_UNKNOWN"))
    if kind == "referrers":
        return _referrers(request, store, tenant, label, ref)
    return _manifest(request, store, name, tenant, label, ref)


def _manifest(request: Request, store: RepositoryStore, name: str, tenant: str, label: str, ref: str) -> Response:
    if ":" in ref:
        hexd = _digest(ref, "MANIFEST_UNKNOWN")
    else:
        if not TAG.match(ref):
            raise RegistryError(400, "TAG_INVALID", "invalid tag", reason="tag-invalid")
        target = store.resolve(tenant, label, ref)
        if target is None:
            if not store.runs(tenant, label):
                raise _name_unknown(name)
            raise RegistryError(404, "MANIFEST_UNKNOWN", f"no tag {ref} in {name}", reason="tag-unknown")
        match = SHA256.match(str(target.descriptor.get("digest")))
        if not match:
            raise RegistryError(404, "MANIFEST_UNKNOWN", "the tag names a digest not stored here",
                                reason="digest-unsupported")
        hexd = match[1]
    blob = store.blob(tenant, label, hexd)
    if blob is None:
        if not store.runs(tenant, label):
            raise _name_unknown(name)
        raise RegistryError(404, "MANIFEST_UNKNOWN", f"no manifest sha256:{hexd} in {name}",
                            reason="manifest-unknown")
    try:
        data = store.read(blob)
    except Gone:
        raise _gone("MANIFEST_UNKNOWN") from None
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    media_type = doc.get("mediaType") if isinstance(doc, dict) else None
    if media_type not in MANIFEST_TYPES:
        # a layer or config blob addressed as a manifest
        raise RegistryError(404, "MANIFEST_UNKNOWN", f"sha256:{hexd} is not a manifest", reason="not-a-manifest")
    headers = {**API_VERSION_HEADER, "Docker-Content-Digest": f"sha256:{hexd}", "ETag": f'"sha256:{hexd}"',
               "Content-Length": str(len(data))}
    body = b"" if request.method == "HEAD" else data
    return Response(body, media_type=media_type, headers=headers)


def _blob(request: Request, store: RepositoryStore, name: str, tenant: str, label: str, hexd: str) -> Response:
    blob = store.blob(tenant, label, hexd)
    if blob is None:
        if not store.runs(tenant, label):
            raise _name_unknown(name)
        raise RegistryError(404, "BLOB_UNKNOWN", f"no blob sha256:{hexd} in {name}", reason="blob-unknown")
    try:
        st = store.stat(blob)
    except Gone:
        raise _gone("BLOB_UNKNOWN") from None
    digest = f"sha256:{hexd}"
    headers = {**API_VERSION_HEADER, "Docker-Content-Digest": digest, "ETag": f'"{digest}"',
               "Cache-Control": "public, max-age=31536000, immutable"}
    # Starlette's FileResponse streams in 64 KiB chunks and implements Range (206 + Content-Range,
    # 416 + `Content-Range: bytes */size`, multipart for several ranges) and HEAD.
    return FileResponse(store.cas.path(blob.blake3), media_type="application/octet-stream",
                        headers=headers, stat_result=st)


def _tags(request: Request, store: RepositoryStore, name: str, tenant: str, label: str) -> Response:
    params = request.query_params
    n_text, last = params.get("n"), params.get("last")
    if n_text is not None and (not n_text.isdigit() or len(n_text) > 6):
        raise RegistryError(400, "PAGINATION_NUMBER_INVALID", "n must be a non-negative integer",
                            reason="bad-page-size")
    if not store.runs(tenant, label):
        raise _name_unknown(name)
    tags = store.tags(tenant, label)
    if last:
        tags = [t for t in tags if t > last]
    n = min(int(n_text), MAX_TAGS_PAGE) if n_text is not None else MAX_TAGS_PAGE
    page = tags[:n]
    headers = dict(API_VERSION_HEADER)
    if len(tags) > len(page) and page:
        headers["Link"] = f'</v2/{name}/tags/list?n={n}&last={quote(page[-1], safe="")}>; rel="next"'
    return JSONResponse({"name": name, "tags": page}, headers=headers)


def _referrers(request: Request, store: RepositoryStore, tenant: str, label: str, ref: str) -> Response:
    hexd = _digest(ref, "MANIFEST_UNKNOWN")
    entries = store.referrers(tenant, label, f"sha256:{hexd}")
    headers = dict(API_VERSION_HEADER)
    wanted = request.query_params.get("artifactType")
    if wanted is not None:
        entries = [e for e in entries if e.get("artifactType") == wanted]
        headers["OCI-Filters-Applied"] = "artifactType"
    body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    return JSONResponse(body, media_type=OCI_INDEX, headers=headers)
