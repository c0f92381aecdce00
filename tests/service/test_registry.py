"""The registry (/v2/, OCI Distribution Spec v1.1 pull side) against a real `stella-build serve`.

One server (module scope) with signed runs of trivy-db and trivy-java-db for tenant acme (trivy-db
twice, so tags move and per-run tags differ) and trivy-java-db for globex, whose repositories are
anonymous (`[registry] anonymous_pull = ["globex/*"]`). Every endpoint, every error code, Range,
pagination, Basic / bearer / anonymous access and hostile names and digests (sent raw with
http.client, which does not normalize `..`). Real clients are in
tests/interop/test_service_registry.py.
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.service.harness import Server, config_text, make_service_workspace, token
from tests.signed_bundle import PASSWORD, write_public_test_keys

ACME = ("acme", token("acme-ci"))
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
REGISTRY_CONFIG = '\n[registry]\nanonymous_pull = ["globex/*"]\ntoken_ttl_seconds = 60\n'


def start_registry_server(root: Path, *, runs=(("acme-ci", "//profiles:trivy-db"),
                                               ("acme-ci", "//profiles:trivy-java-db")),
                          extra: str = REGISTRY_CONFIG, timeout: float = 300.0,
                          prepare=None) -> tuple[Server, dict, Path]:
    """A started server with a signing key and `runs` ((token name, profile) submitted with
    sign=true, one after the other) succeeded; `prepare(workspace)` may add evidence first.
    Returns (server, {(token name, profile): [run ids]}, the cosign.pub path). Shared with
    tests/interop/test_service_registry.py and bench/bench_registry.py."""
    ws = make_service_workspace(root)
    if prepare is not None:
        prepare(ws)
    key, pub = write_public_test_keys(root / "keys")
    srv = Server(root, config_text(extra=f'[signing]\nkey = "{key}"\n' + extra), env={"COSIGN_PASSWORD": PASSWORD})
    srv.start()
    ids: dict = {}
    try:
        for name, profile in runs:
            with srv.client(name) as c:
                r = c.post("/api/export/runs", json={"profile": profile, "sign": True})
                assert r.status_code == 202, r.text
                run = srv.wait_status(c, r.json()["runId"], timeout=timeout)
                assert run["status"] == "succeeded", run
                ids.setdefault((name, profile), []).append(run["runId"])
    except BaseException:
        srv.stop()
        raise
    return srv, ids, pub


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    srv, ids, pub = start_registry_server(root, runs=(
        ("acme-ci", "//profiles:trivy-db"), ("acme-ci", "//profiles:trivy-java-db"),
        ("acme-ci", "//profiles:trivy-db"), ("globex-ci", "//profiles:trivy-java-db")))
    yield {"srv": srv, "ids": ids, "pub": pub, "root": root}
    srv.stop()


def _client(reg, auth=ACME) -> httpx.Client:
    return httpx.Client(base_url=reg["srv"].url, auth=auth, timeout=30.0)


def _oci_error(r: httpx.Response, status: int, code: str, reason: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert list(body) == ["errors"] and len(body["errors"]) == 1, body
    err = body["errors"][0]
    assert err["code"] == code and err["message"], body
    if reason is not None:
        assert err["detail"]["reason"] == reason, body
    return err


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _raw_get(reg, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """GET `path` exactly as written (no dot-segment removal, no re-encoding)."""
    u = urlsplit(reg["srv"].url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _artifact(c: httpx.Client, repo: str = "acme/trivy-db", tag: str = "2") -> tuple[bytes, dict]:
    r = c.get(f"/v2/{repo}/manifests/{tag}")
    assert r.status_code == 200, r.text
    return r.content, r.json()


# -- /v2/ and authentication -------------------------------------------------------------------

def test_base_endpoint_challenges_and_accepts_basic_and_api_bearer(reg):
    url = reg["srv"].url
    r = httpx.get(url + "/v2/")
    err = _oci_error(r, 401, "UNAUTHORIZED", "token-missing")
    assert r.headers["www-authenticate"] == f'Bearer realm="{url}/v2/token",service="stella-export"'
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"
    assert err["detail"] == {"reason": "token-missing"}
    with _client(reg) as c:
        r = c.get("/v2/")
        assert (r.status_code, r.json()) == (200, {})
    r = httpx.get(url + "/v2/", headers={"Authorization": f"Bearer {token('acme-ci')}"})
    assert r.status_code == 200
    _oci_error(httpx.get(url + "/v2/", auth=("acme", "not-a-token")), 401, "UNAUTHORIZED", "token-invalid")
    _oci_error(httpx.get(url + "/v2/", headers={"Authorization": "Basic !!!"}), 401, "UNAUTHORIZED",
               "token-malformed")
    _oci_error(httpx.get(url + "/v2/", headers={"Authorization": "Digest x"}), 401, "UNAUTHORIZED",
               "token-malformed")


def test_pull_without_credentials_is_a_bearer_challenge_with_the_repository_scope(reg):
    url = reg["srv"].url
    r = httpx.get(url + "/v2/acme/trivy-db/manifests/2")
    _oci_error(r, 401, "UNAUTHORIZED", "token-missing")
    assert r.headers["www-authenticate"] == (
        f'Bearer realm="{url}/v2/token",service="stella-export",scope="repository:acme/trivy-db:pull"')
    # not-yet-authenticated callers learn nothing about which repositories exist
    _oci_error(httpx.get(url + "/v2/acme/no-such-profile/manifests/2"), 401, "UNAUTHORIZED")


def test_bearer_flow_token_endpoint_grants_only_what_the_credentials_allow(reg):
    url = reg["srv"].url
    scopes = [("scope", "repository:acme/trivy-db:pull"), ("scope", "repository:acme/trivy-java-db:pull,push"),
              ("scope", "repository:quota/trivy-db:pull"), ("scope", "repository:globex/trivy-java-db:pull"),
              ("scope", "repository:acme/json-raw:push")]
    r = httpx.get(url + "/v2/token", params=[("service", "stella-export"), *scopes], auth=ACME)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["token"] == answer["access_token"] and answer["expires_in"] == 60
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", answer["issued_at"])
    claims = json.loads(base64.urlsafe_b64decode(answer["token"].split(".")[1] + "=="))
    # acme's repositories and globex's anonymous one; not quota's (another tenant), not a push
    assert claims["acc"] == ["acme/trivy-db", "acme/trivy-java-db", "globex/trivy-java-db"]
    assert claims["sub"] == "acme-ci" and claims["exp"] - claims["iat"] == 60
    bearer = {"Authorization": f"Bearer {answer['token']}"}
    assert httpx.get(url + "/v2/acme/trivy-db/manifests/2", headers=bearer).status_code == 200
    # a token for acme/trivy-db only does not open acme/trivy-java-db
    only = httpx.get(url + "/v2/token", params={"scope": "repository:acme/trivy-db:pull"}, auth=ACME).json()
    r = httpx.get(url + "/v2/acme/trivy-java-db/manifests/1", headers={"Authorization": f"Bearer {only['token']}"})
    _oci_error(r, 403, "DENIED", "repository-not-granted")
    # a tampered token is unknown: 401 with the challenge, so the client can fetch a new one
    body = answer["token"].split(".")
    forged = json.dumps({"acc": ["acme/trivy-db"], "exp": 4102444800, "iat": 0, "sub": "x"}).encode()
    body[1] = base64.urlsafe_b64encode(forged).decode().rstrip("=")
    r = httpx.get(url + "/v2/acme/trivy-db/manifests/2", headers={"Authorization": "Bearer " + ".".join(body)})
    _oci_error(r, 401, "UNAUTHORIZED", "token-invalid")
    assert r.headers["www-authenticate"].startswith(f'Bearer realm="{url}/v2/token"')
    # the token endpoint refuses bad credentials
    _oci_error(httpx.get(url + "/v2/token", params={"scope": "repository:acme/trivy-db:pull"},
                         auth=("acme", "wrong")), 401, "UNAUTHORIZED", "token-invalid")


def test_bearer_token_is_scoped_to_repository_not_just_tenant(reg):
    """A token granted for globex's anonymous repository does not open acme's."""
    url = reg["srv"].url
    anon = httpx.get(url + "/v2/token", params=[("scope", "repository:globex/trivy-java-db:pull"),
                                                 ("scope", "repository:acme/trivy-db:pull")]).json()
    claims = json.loads(base64.urlsafe_b64decode(anon["token"].split(".")[1] + "=="))
    assert claims["acc"] == ["globex/trivy-java-db"] and claims["sub"] == "anonymous"
    r = httpx.get(url + "/v2/acme/trivy-db/manifests/2", headers={"Authorization": f"Bearer {anon['token']}"})
    _oci_error(r, 403, "DENIED", "repository-not-granted")


def test_basic_credentials_name_the_tenant_and_need_the_download_scope(reg):
    url = reg["srv"].url
    # user = tenant: acme's token cannot claim the tenant quota
    _oci_error(httpx.get(url + "/v2/quota/trivy-db/tags/list", auth=("quota", token("acme-ci"))),
               403, "DENIED", "tenant-not-granted")
    # acme's credentials on another tenant's (non-anonymous) repository
    _oci_error(httpx.get(url + "/v2/quota/trivy-db/tags/list", auth=ACME), 403, "DENIED",
               "repository-not-granted")
    # a read-only API token may not pull
    _oci_error(httpx.get(url + "/v2/acme/trivy-db/manifests/2", auth=("acme", token("acme-reader"))),
               403, "DENIED", "scope-missing")
    # the multi-tenant token pulls as any of its tenants, and only those
    assert httpx.get(url + "/v2/acme/trivy-db/manifests/2", auth=("acme", token("multi"))).status_code == 200
    _oci_error(httpx.get(url + "/v2/quota/trivy-db/manifests/2", auth=("quota", token("multi"))),
               403, "DENIED", "tenant-not-granted")


def test_anonymous_pull_is_per_repository(reg):
    url = reg["srv"].url
    r = httpx.get(url + "/v2/globex/trivy-java-db/manifests/1")
    assert r.status_code == 200 and r.headers["content-type"] == MANIFEST
    layer = r.json()["layers"][0]
    blob = httpx.get(url + f"/v2/globex/trivy-java-db/blobs/{layer['digest']}")
    assert blob.status_code == 200 and _sha(blob.content) == layer["digest"]
    _oci_error(httpx.get(url + "/v2/acme/trivy-java-db/manifests/1"), 401, "UNAUTHORIZED")
    # anonymous, but nothing built there: NAME_UNKNOWN
    _oci_error(httpx.get(url + "/v2/globex/trivy-db/manifests/2"), 404, "NAME_UNKNOWN", "name-unknown")


# -- manifests ------------------------------------------------------------------------------------

def test_manifest_by_tag_and_by_digest_get_and_head(reg):
    with _client(reg) as c:
        data, doc = _artifact(c)
        r = c.get("/v2/acme/trivy-db/manifests/2")
        digest = r.headers["docker-content-digest"]
        assert digest == _sha(data) and r.headers["content-type"] == doc["mediaType"] == MANIFEST
        assert doc["artifactType"] == "application/vnd.aquasec.trivy.config.v1+json"
        assert doc["layers"][0]["mediaType"] == "application/vnd.aquasec.trivy.db.layer.v1.tar+gzip"
        by_digest = c.get(f"/v2/acme/trivy-db/manifests/{digest}")
        assert by_digest.content == data and by_digest.headers["docker-content-digest"] == digest
        head = c.head("/v2/acme/trivy-db/manifests/2")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(data))
        assert head.headers["docker-content-digest"] == digest and head.headers["content-type"] == MANIFEST
        java = c.get("/v2/acme/trivy-java-db/manifests/1")
        assert java.json()["layers"][0]["mediaType"] == "application/vnd.aquasec.trivy.javadb.layer.v1.tar+gzip"
        # the referrers tag-schema index is served with the index media type
        fallback = "sha256-" + digest[7:]
        r = c.get(f"/v2/acme/trivy-db/manifests/{fallback}")
        assert r.status_code == 200 and r.headers["content-type"] == INDEX == r.json()["mediaType"]


def test_manifest_errors(reg):
    with _client(reg) as c:
        data, doc = _artifact(c)
        _oci_error(c.get("/v2/acme/trivy-db/manifests/3"), 404, "MANIFEST_UNKNOWN", "tag-unknown")
        _oci_error(c.get("/v2/acme/json-raw/manifests/2"), 404, "NAME_UNKNOWN", "name-unknown")
        _oci_error(c.get("/v2/acme/trivy-db/manifests/.hidden"), 400, "TAG_INVALID", "tag-invalid")
        _oci_error(c.get("/v2/acme/trivy-db/manifests/" + "x" * 129), 400, "TAG_INVALID")
        _oci_error(c.get("/v2/acme/trivy-db/manifests/sha256:abc"), 400, "DIGEST_INVALID", "digest-invalid")
        _oci_error(c.get("/v2/acme/trivy-db/manifests/sha256:" + "A" * 64), 400, "DIGEST_INVALID")
        _oci_error(c.get("/v2/acme/trivy-db/manifests/sha512:" + "a" * 128), 404, "MANIFEST_UNKNOWN",
                   "digest-unsupported")
        _oci_error(c.get("/v2/acme/trivy-db/manifests/sha256:" + "0" * 64), 404, "MANIFEST_UNKNOWN",
                   "manifest-unknown")
        # a layer addressed as a manifest is not one
        _oci_error(c.get(f"/v2/acme/trivy-db/manifests/{doc['layers'][0]['digest']}"), 404,
                   "MANIFEST_UNKNOWN", "not-a-manifest")


# -- blobs ----------------------------------------------------------------------------------------

def test_blob_get_head_and_ranges(reg):
    with _client(reg) as c:
        _, doc = _artifact(c)
        layer = doc["layers"][0]
        r = c.get(f"/v2/acme/trivy-db/blobs/{layer['digest']}")
        assert r.status_code == 200 and len(r.content) == layer["size"] and _sha(r.content) == layer["digest"]
        assert r.headers["docker-content-digest"] == layer["digest"]
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["accept-ranges"] == "bytes"
        whole = r.content
        head = c.head(f"/v2/acme/trivy-db/blobs/{layer['digest']}")
        assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(len(whole))
        part = c.get(f"/v2/acme/trivy-db/blobs/{layer['digest']}", headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == whole[10:20]
        assert part.headers["content-range"] == f"bytes 10-19/{len(whole)}"
        tail = c.get(f"/v2/acme/trivy-db/blobs/{layer['digest']}", headers={"Range": "bytes=-7"})
        assert tail.status_code == 206 and tail.content == whole[-7:]
        rest = c.get(f"/v2/acme/trivy-db/blobs/{layer['digest']}", headers={"Range": f"bytes={len(whole) - 5}-"})
        assert rest.status_code == 206 and rest.content == whole[-5:]
        bad = c.get(f"/v2/acme/trivy-db/blobs/{layer['digest']}", headers={"Range": f"bytes={len(whole)}-"})
        assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{len(whole)}"
        config = c.get(f"/v2/acme/trivy-db/blobs/{doc['config']['digest']}")
        assert config.content == b"{}"


def test_blob_errors_and_repository_isolation(reg):
    with _client(reg) as c:
        _oci_error(c.get("/v2/acme/trivy-db/blobs/sha256:" + "0" * 64), 404, "BLOB_UNKNOWN", "blob-unknown")
        _oci_error(c.get("/v2/acme/trivy-db/blobs/sha256:zz"), 400, "DIGEST_INVALID", "digest-invalid")
        _oci_error(c.get("/v2/acme/trivy-db/blobs/md5:" + "0" * 32), 404, "BLOB_UNKNOWN", "digest-unsupported")
        _oci_error(c.get("/v2/acme/nothing-here/blobs/sha256:" + "0" * 64), 404, "NAME_UNKNOWN")
        # the Java DB's layer exists (in acme/trivy-java-db) but is not a blob of acme/trivy-db
        _, java = _artifact(c, "acme/trivy-java-db", "1")
        _oci_error(c.get(f"/v2/acme/trivy-db/blobs/{java['layers'][0]['digest']}"), 404, "BLOB_UNKNOWN")
        # files of the run outside its OCI layout are never blobs (db.tar.gz has the layer's
        # sha256 but trivy.db, metadata.json do not live under oci/blobs)
        run_id = reg["ids"][("acme-ci", "//profiles:trivy-db")][0]
        meta = httpx.get(f"{reg['srv'].url}/api/export/runs/{run_id}/files/metadata.json",
                         headers={"Authorization": f"Bearer {token('acme-ci')}"})
        assert meta.status_code == 200
        _oci_error(c.get(f"/v2/acme/trivy-db/blobs/{_sha(meta.content)}"), 404, "BLOB_UNKNOWN")


# -- tags -----------------------------------------------------------------------------------------

def test_tags_list_scheme_and_pagination(reg):
    runs = reg["ids"][("acme-ci", "//profiles:trivy-db")]
    with _client(reg) as c:
        data, _ = _artifact(c)
        r = c.get("/v2/acme/trivy-db/tags/list")
        assert r.status_code == 200 and "link" not in r.headers
        body = r.json()
        want = sorted(["2", "2-20250101", *(f"2-{run}" for run in runs), "sha256-" + _sha(data)[7:]])
        assert body == {"name": "acme/trivy-db", "tags": want}
        pages, url = [], "/v2/acme/trivy-db/tags/list?n=2"
        for _ in range(10):
            r = c.get(url)
            pages.append(r.json()["tags"])
            if "link" not in r.headers:
                break
            match = re.fullmatch(r'<(/v2/acme/trivy-db/tags/list\?n=2&last=[^>]+)>; rel="next"', r.headers["link"])
            assert match, r.headers["link"]
            url = match[1]
        assert [len(p) for p in pages] == [2, 2, 1] and sum(pages, []) == want
        assert c.get("/v2/acme/trivy-db/tags/list", params={"last": "2-20250101"}).json()["tags"] == want[2:]
        assert c.get("/v2/acme/trivy-db/tags/list", params={"n": "0"}).json()["tags"] == []
        _oci_error(c.get("/v2/acme/trivy-db/tags/list", params={"n": "-1"}), 400, "PAGINATION_NUMBER_INVALID")
        _oci_error(c.get("/v2/acme/nothing/tags/list"), 404, "NAME_UNKNOWN")


def test_immutable_tags_per_run_and_per_source_date(reg):
    runs = reg["ids"][("acme-ci", "//profiles:trivy-db")]
    with _client(reg) as c:
        data, _ = _artifact(c)
        for tag in (f"2-{runs[0]}", f"2-{runs[1]}", "2-20250101"):
            r = c.get(f"/v2/acme/trivy-db/manifests/{tag}")
            # the sample builds are reproducible: every run's artifact is the same bytes
            assert r.status_code == 200 and r.content == data, tag
        _oci_error(c.get("/v2/acme/trivy-db/manifests/2-20240101"), 404, "MANIFEST_UNKNOWN", "tag-unknown")
        other = reg["ids"][("acme-ci", "//profiles:trivy-java-db")][0]
        _oci_error(c.get(f"/v2/acme/trivy-db/manifests/2-{other}"), 404, "MANIFEST_UNKNOWN")
        java = reg["ids"][("acme-ci", "//profiles:trivy-java-db")][0]
        assert c.get(f"/v2/acme/trivy-java-db/manifests/1-{java}").status_code == 200


# -- referrers ------------------------------------------------------------------------------------

def test_referrers_api_with_artifact_type_filter(reg):
    with _client(reg) as c:
        data, _ = _artifact(c)
        subject = _sha(data)
        r = c.get(f"/v2/acme/trivy-db/referrers/{subject}")
        assert r.status_code == 200 and r.headers["content-type"] == INDEX
        assert "oci-filters-applied" not in r.headers
        index = r.json()
        assert index["schemaVersion"] == 2 and index["mediaType"] == INDEX
        # the archive's signature and the artifact's attestation (rules/formats/trivy/attestation.py)
        by_content = {e["annotations"]["dev.sigstore.bundle.content"]: e for e in index["manifests"]}
        assert len(index["manifests"]) == 2 and set(by_content) == {"message-signature", "dsse-envelope"}
        assert [e["digest"] for e in index["manifests"]] == sorted(e["digest"] for e in index["manifests"])
        assert by_content["dsse-envelope"]["annotations"]["dev.sigstore.bundle.predicateType"] == \
            "https://slsa.dev/provenance/v1"
        entry = by_content["message-signature"]
        assert entry["mediaType"] == MANIFEST and entry["artifactType"] == BUNDLE
        referrer = c.get(f"/v2/acme/trivy-db/manifests/{entry['digest']}")
        assert _sha(referrer.content) == entry["digest"] and len(referrer.content) == entry["size"]
        assert referrer.json()["subject"]["digest"] == subject
        bundle = c.get(f"/v2/acme/trivy-db/blobs/{referrer.json()['layers'][0]['digest']}").json()
        assert bundle["mediaType"] == BUNDLE and "messageSignature" in bundle
        r = c.get(f"/v2/acme/trivy-db/referrers/{subject}", params={"artifactType": BUNDLE})
        assert r.headers["oci-filters-applied"] == "artifactType" and r.json()["manifests"] == index["manifests"]
        r = c.get(f"/v2/acme/trivy-db/referrers/{subject}", params={"artifactType": "application/x-none"})
        assert r.headers["oci-filters-applied"] == "artifactType" and r.json()["manifests"] == []
        # an unknown subject has no referrers (200, empty index, as the spec says)
        r = c.get("/v2/acme/trivy-db/referrers/sha256:" + "1" * 64)
        assert r.status_code == 200 and r.json()["manifests"] == []
        _oci_error(c.get("/v2/acme/trivy-db/referrers/latest"), 400, "DIGEST_INVALID")


# -- hostile requests -----------------------------------------------------------------------------

@pytest.mark.parametrize("path, status, code", [
    ("/v2/acme/../globex/trivy-java-db/manifests/1", 400, "NAME_INVALID"),
    ("/v2/acme/%2e%2e/globex/trivy-java-db/manifests/1", 400, "NAME_INVALID"),
    ("/v2/acme/trivy-db%2F..%2F..%2Fx/manifests/2", 400, "NAME_INVALID"),
    ("/v2/ACME/trivy-db/manifests/2", 400, "NAME_INVALID"),
    ("/v2/trivy-db/manifests/2", 400, "NAME_INVALID"),
    ("/v2/acme//trivy-db/manifests/2", 400, "NAME_INVALID"),
    ("/v2/acme/trivy-db/blobs/sha256:..%2F..%2F..%2Fetc%2Fpasswd", 404, "NAME_INVALID"),
    ("/v2/acme/trivy-db/blobs/sha256%3A..", 400, "DIGEST_INVALID"),
    ("/v2/acme/trivy-db/manifests/..", 400, "TAG_INVALID"),
    ("/v2/acme/trivy-db/nothing/2", 404, "NAME_INVALID"),
    ("/v2/" + "a" * 250 + "/b/manifests/2", 400, "NAME_INVALID"),
])
def test_hostile_names_and_references_are_refused_before_any_lookup(reg, path, status, code):
    basic = "Basic " + base64.b64encode(f"{ACME[0]}:{ACME[1]}".encode()).decode()
    got, headers, body = _raw_get(reg, path, {"Authorization": basic})
    assert got == status, (path, got, body)
    assert json.loads(body)["errors"][0]["code"] == code


def test_the_registry_is_read_only(reg):
    with _client(reg) as c:
        for method in ("PUT", "POST", "PATCH", "DELETE"):
            r = c.request(method, "/v2/acme/trivy-db/manifests/2")
            _oci_error(r, 405, "UNSUPPORTED", "push-unsupported")
        _oci_error(c.post("/v2/acme/trivy-db/blobs/uploads/"), 405, "UNSUPPORTED")


def test_registry_routes_stay_out_of_the_openapi_document(reg):
    doc = httpx.get(reg["srv"].url + "/.well-known/openapi").json()
    assert not [p for p in doc["paths"] if p.startswith("/v2")]


def test_a_blob_gone_from_the_cache_is_unknown_not_a_crash(reg):
    """Last in the module: removes a CAS file (the config blob, shared by every artifact)."""
    from stella_build.engine.cache.cas import Cas
    from stella_build.service.db import Database, FileRow

    with _client(reg) as c:
        _, doc = _artifact(c, "acme/trivy-java-db", "1")
        layer = doc["layers"][0]["digest"]
        db = Database(f"sqlite:///{reg['srv'].cache}/service/export-center.sqlite3")
        try:
            with db.read() as s:
                row = s.query(FileRow).filter(FileRow.path == f"oci/blobs/sha256/{layer[7:]}").first()
                blake3 = row.blake3
        finally:
            db.dispose()
        os.unlink(Cas(reg["srv"].cache).path(blake3))
        _oci_error(c.get(f"/v2/acme/trivy-java-db/blobs/{layer}"), 404, "BLOB_UNKNOWN", "blob-missing")
        assert c.get("/v2/acme/trivy-java-db/manifests/1").status_code == 200


# -- in-process: config, token keys and expiry ------------------------------------------------------

def _auth(extra: str = ""):
    """A RegistryAuth over one token ("secret-token": tenant acme, export:download) and the
    `[registry]` section given as JSON."""
    import hashlib as _h

    from stella_build.service.auth import Authenticator
    from stella_build.service.config import ServiceConfig
    from stella_build.service.registry_auth import RegistryAuth

    data = {"tokens": [{"name": "t", "sha256": _h.sha256(b"secret-token").hexdigest(), "tenants": ["acme"],
                        "scopes": ["export:download"]}], "registry": json.loads(extra or "{}")}
    config = ServiceConfig.model_validate(data)
    return RegistryAuth(config, Authenticator(config))


def test_registry_config_is_validated(tmp_path):
    from stella_build.engine.errors import UsageError
    from stella_build.service.config import load_config

    for bad, field in (('realm = "ftp://x/token"', "registry.realm"),
                       ("token_ttl_seconds = 5", "registry.token_ttl_seconds"),
                       ('service = "a b"', "registry.service"), ("anonymous = []", "registry.anonymous")):
        path = tmp_path / "service.toml"
        path.write_text(f"[registry]\n{bad}\n")
        with pytest.raises(UsageError) as info:
            load_config(path)
        assert (info.value.reason, info.value.errors[0].field) == ("service-config-invalid", field), bad
    path.write_text('[registry]\nanonymous_pull = ["acme/*"]\nrealm = "https://x.example/v2/token"\n')
    config = load_config(path)
    assert config.registry.anonymous_pull == ["acme/*"] and config.registry.token_ttl_seconds == 300


def test_bearer_tokens_expire_and_are_bound_to_the_key(monkeypatch):
    import time as _time

    from stella_build.service.registry_auth import RegistryError

    basic = "Basic " + base64.b64encode(b"acme:secret-token").decode()
    one, two = _auth(), _auth()
    answer = one.issue(basic, ["repository:acme/trivy-db:pull"], "http://h")
    grant = one.credentials("Bearer " + answer["token"])
    assert grant.may_pull("acme/trivy-db") and not grant.may_pull("acme/other")
    # another process (another random key) does not accept it
    with pytest.raises(RegistryError) as info:
        two.credentials("Bearer " + answer["token"])
    assert (info.value.status, info.value.reason) == (401, "token-invalid")
    # a shared key (token_key_env) makes every node accept every node's tokens
    monkeypatch.setenv("REG_KEY", "a shared random key")
    a, b = _auth('{"token_key_env": "REG_KEY"}'), _auth('{"token_key_env": "REG_KEY"}')
    shared = a.issue(basic, ["repository:acme/trivy-db:pull"], "http://h")["token"]
    assert b.credentials("Bearer " + shared).may_pull("acme/trivy-db")
    # expired: refused
    real = _time.time
    monkeypatch.setattr("stella_build.service.registry_auth.time.time", lambda: real() + 301)
    with pytest.raises(RegistryError) as info:
        one.credentials("Bearer " + answer["token"])
    assert (info.value.status, info.value.reason) == (401, "token-invalid")
