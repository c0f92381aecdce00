"""The Export Center API against a real `stella-build serve` on 127.0.0.1, driven with httpx and curl.

Submit → events → download for every default profile, byte-compared with golden/digests.json
(the outputs of `stella-build build`); the reproducibility audit; idempotency under 20 concurrent
POSTs; quota 429; cancel; tenants (404 across), tokens (401), scopes (403); download path
traversal (404); Range/ETag/416 with curl; Last-Event-ID and the heartbeat; the metrics page
parsed by prometheus-client and matched to the runs; the committed OpenAPI document.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import shutil
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, make_workspace, run_cli
from tests.service.harness import GOLDEN, PROFILES, sha256_tree, sse_events, token

CURL = shutil.which("curl")


def _submit(client, profile, **body):
    r = client.post("/api/export/runs", json={"profile": profile, **body})
    assert r.status_code == 202, r.text
    return r.json()


def _error(r, status: int, code: str, reason: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"code", "message", "details", "traceId", "timestamp"}, body
    assert body["code"] == code, body
    assert len(body["traceId"]) == 32 and body["timestamp"].endswith("Z")
    if reason is not None:
        assert reason in [d.get("reason") for d in body["details"]], body
    return body


@pytest.fixture(scope="module")
def cli_trees(tmp_path_factory) -> dict[str, dict[str, str]]:
    """sha256 trees of `stella-build build` of every default profile (fresh workspace and cache)."""
    root = tmp_path_factory.mktemp("cli")
    ws = make_workspace(root / "ws")
    run_cli(["-q", "build", *PROFILES], cwd=ws, cache=root / "cache", check=True)
    return {label: sha256_tree(ws / "stella-out" / label[2:].replace(":", "/")) for label in PROFILES}


@pytest.mark.parametrize("profile", PROFILES)
def test_submit_events_download_every_profile_matches_golden(server, cli_trees, profile, tmp_path):
    """The downloaded tree is byte-identical to `stella-build build` of the target, and to the
    golden digests (what `tools/golden.py --check` holds the CLI to)."""
    from stella_build.service.client import Client

    with server.client() as c:
        accepted = _submit(c, profile)
        assert accepted["status"] == "queued" and accepted["runId"].startswith("run-")
        assert accepted["links"]["events"] == f"/api/export/runs/{accepted['runId']}/events"
        events = sse_events(c, accepted["runId"])
        run = c.get(accepted["links"]["status"]).json()
    kinds = [e for _, e, _ in events]
    assert kinds[0] == "queued" and kinds[1] == "started" and kinds[-1] == "succeeded", kinds
    assert "progress" in kinds
    ids = [int(i) for i, _, _ in events]
    assert ids == list(range(1, len(ids) + 1))
    ready = {d["path"]: d["sha256"] for _, e, d in events if e == "artifact_ready"}
    assert ready == cli_trees[profile]
    assert run["status"] == "succeeded" and run["exitCode"] == 0 and run["errors"] == []
    assert run["progress"] == {"percent": 100, "itemsCompleted": run["actions"]["total"],
                               "itemsTotal": run["actions"]["total"]}
    assert {o["path"]: o["sha256"] for o in run["outputs"]} == cli_trees[profile]
    client = Client(server.url, token=token("acme-ci"))
    try:
        stats = client.download(run, tmp_path / "dl")
    finally:
        client.close()
    assert stats["downloaded"] == len(cli_trees[profile])
    downloaded = sha256_tree(tmp_path / "dl")
    assert downloaded == cli_trees[profile]
    assert downloaded == GOLDEN[profile]


def test_reproducibility_audit_same_manifest_digest(server):
    """Two runs of the same inputs: the same manifest digest (the golden one)."""
    with server.client() as c:
        runs = [server.wait_status(c, _submit(c, "//profiles:json-raw")["runId"]) for _ in range(2)]
        manifest = c.get(f"/api/export/runs/{runs[1]['runId']}/manifest")
    assert runs[0]["manifestSha256"] == runs[1]["manifestSha256"] == GOLDEN["//profiles:json-raw"]["manifests/export.json"]
    assert runs[1]["actions"]["executed"] == 0  # the second run is all cache hits
    assert manifest.status_code == 200 and manifest.headers["content-type"] == "application/json"
    assert hashlib.sha256(manifest.content).hexdigest() == runs[0]["manifestSha256"]
    assert manifest.headers["etag"] == f'"{runs[0]["manifestSha256"]}"'


def test_selectors_run_equals_a_cli_build_declaring_them(server, tmp_path):
    with server.client() as c:
        run = server.wait_status(c, _submit(c, "profiles:json-raw", selectors={"ecosystems": ["PyPI"]})["runId"])
    assert run["status"] == "succeeded", run
    assert run["selectors"] == {"ecosystems": ["PyPI"]}
    ws = make_workspace(tmp_path / "cli-ws")
    exportfile = ws / "profiles" / "Exportfile"
    exportfile.write_text(exportfile.read_text().replace(
        'rule = "json_raw"\n', 'rule = "json_raw"\nselectors = { ecosystems = ["PyPI"] }\n', 1))
    run_cli(["-q", "build", "//profiles:json-raw"], cwd=ws, cache=tmp_path / "cache", check=True)
    cli = sha256_tree(ws / "stella-out" / "profiles" / "json-raw")
    assert {o["path"]: o["sha256"] for o in run["outputs"]} == cli
    assert cli != GOLDEN["//profiles:json-raw"]  # the selectors did change the bundle


def test_bad_requests(server):
    with server.client() as c:
        _error(c.post("/api/export/runs", json={"profile": "//profiles:nope"}), 404,
               "ERR_EXPORT_PROFILE_NOT_FOUND", "target-missing")
        _error(c.post("/api/export/runs", json={"profile": "//nowhere:x"}), 404,
               "ERR_EXPORT_PROFILE_NOT_FOUND", "package-missing")
        _error(c.post("/api/export/runs", json={"profile": "//profiles:trivy-db", "selectors": {"ecosystems": ["Go"]}}),
               422, "ERR_EXPORT_VALIDATION", "selectors-unsupported")
        _error(c.post("/api/export/runs", json={"profile": "//profiles:json-raw",
                                                "selectors": {"modified_since": "yesterday"}}),
               422, "ERR_EXPORT_VALIDATION", "selectors-invalid")
        _error(c.post("/api/export/runs", json={"profile": "//profiles:json-raw", "sign": True}), 422,
               "ERR_EXPORT_VALIDATION", "signing-not-configured")
        _error(c.post("/api/export/runs", json={"profile": "//profiles:json-raw", "bogus": 1}), 422,
               "ERR_EXPORT_VALIDATION", "invalid")
        _error(c.get("/api/export/nothing-here"), 404, "ERR_EXPORT_NOT_FOUND", "no-route")
        _error(c.get("/api/export/runs/run-doesnotexist"), 404, "ERR_EXPORT_NOT_FOUND", "run-not-found")


def test_idempotency_20_concurrent_posts_make_one_run(server):
    key = "idem-" + hashlib.sha256(str(time.time()).encode()).hexdigest()[:16]

    def post(_):
        with server.client() as c:
            r = c.post("/api/export/runs", json={"profile": "//profiles:trivy-db"}, headers={"Idempotency-Key": key})
            return r.status_code, r.json()["runId"], r.headers.get("idempotent-replayed")

    with server.client() as c:
        before = {r["runId"] for r in c.get("/api/export/runs", params={"limit": 200}).json()["items"]}
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(post, range(20)))
    assert {code for code, _, _ in results} == {202}
    assert len({run_id for _, run_id, _ in results}) == 1
    assert sorted(r for _, _, r in results if r) == ["true"] * 19  # one original, 19 replays
    with server.client() as c:
        after = {r["runId"] for r in c.get("/api/export/runs", params={"limit": 200}).json()["items"]}
        assert after - before == {results[0][1]}
        # the same key with another body is refused, not silently replayed
        _error(c.post("/api/export/runs", json={"profile": "//profiles:json-raw"}, headers={"Idempotency-Key": key}),
               422, "ERR_EXPORT_IDEMPOTENCY_MISMATCH", "idempotency-key-reused")
        server.wait_status(c, results[0][1])


def test_quota_429_and_cancel_of_queued_runs(server):
    """With the queue paused nothing finishes: the third active run of tenant quota (quota 2) is
    refused with 429 + Retry-After; cancelling one frees a slot."""
    with server.client("admin") as admin:
        assert admin.post("/api/export/admin/queue", json={"paused": True}).json() == {"paused": True}
    try:
        with server.client("quota-ci") as c:
            first = _submit(c, "//profiles:json-raw")
            second = _submit(c, "//profiles:json-policy")
            r = c.post("/api/export/runs", json={"profile": "//profiles:trivy-db"})
            body = _error(r, 429, "ERR_EXPORT_QUOTA", "quota-exceeded")
            assert r.headers["retry-after"] == "5" and r.headers["x-stella-quota-limit"] == "2"
            assert body["details"][0]["active"] == 2
            cancelled = c.post(f"/api/export/runs/{first['runId']}/cancel")
            assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
            _error(c.post(f"/api/export/runs/{first['runId']}/cancel"), 409, "ERR_EXPORT_CONFLICT", "run-finished")
            third = _submit(c, "//profiles:trivy-db")
            _error(c.get(f"/api/export/runs/{first['runId']}/archive"), 409, "ERR_EXPORT_NOT_READY",
                   "run-not-succeeded")
            events = sse_events(c, first["runId"])
            assert [e for _, e, _ in events] == ["queued", "cancelled"]
    finally:
        with server.client("admin") as admin:
            admin.post("/api/export/admin/queue", json={"paused": False})
    with server.client("quota-ci") as c:
        assert server.wait_status(c, second["runId"])["status"] == "succeeded"
        assert server.wait_status(c, third["runId"])["status"] == "succeeded"


def test_tokens_tenants_scopes(server):
    with server.client("acme-ci") as acme:
        run = server.wait_status(acme, _submit(acme, "//profiles:trivy-java-db")["runId"])
    rid = run["runId"]
    with server.client(None) as anon:
        r = anon.get(f"/api/export/runs/{rid}")
        _error(r, 401, "ERR_EXPORT_UNAUTHENTICATED", "token-missing")
        assert r.headers["www-authenticate"].startswith("Bearer")
        _error(anon.get("/api/export/profiles", headers={"Authorization": "Bearer wrong-token"}), 401,
               "ERR_EXPORT_UNAUTHENTICATED", "token-invalid")
        _error(anon.get("/api/export/profiles", headers={"Authorization": "Basic abc"}), 401,
               "ERR_EXPORT_UNAUTHENTICATED", "token-malformed")
    with server.client("globex-ci") as globex:  # another tenant: 404, never 403
        for path in ("", "/events", "/manifest", "/archive", "/files/db.tar.gz".replace("db", "javadb")):
            _error(globex.get(f"/api/export/runs/{rid}{path}"), 404, "ERR_EXPORT_NOT_FOUND", "run-not-found")
        _error(globex.post(f"/api/export/runs/{rid}/cancel"), 404, "ERR_EXPORT_NOT_FOUND", "run-not-found")
        assert rid not in [r["runId"] for r in globex.get("/api/export/runs").json()["items"]]
    with server.client("acme-reader") as reader:  # read only
        assert reader.get(f"/api/export/runs/{rid}").status_code == 200
        _error(reader.get(f"/api/export/runs/{rid}/archive"), 403, "ERR_EXPORT_FORBIDDEN", "scope-missing")
        _error(reader.post("/api/export/runs", json={"profile": "//profiles:json-raw"}), 403,
               "ERR_EXPORT_FORBIDDEN", "scope-missing")
        _error(reader.post("/api/export/admin/queue", json={"paused": True}), 403, "ERR_EXPORT_FORBIDDEN",
               "scope-missing")
    with server.client("multi") as multi:  # several tenants: X-Stella-Tenant decides
        _error(multi.get("/api/export/runs"), 400, "ERR_EXPORT_TENANT_REQUIRED", "tenant-required")
        assert multi.get(f"/api/export/runs/{rid}", headers={"X-Stella-Tenant": "acme"}).status_code == 200
        _error(multi.get(f"/api/export/runs/{rid}", headers={"X-Stella-Tenant": "globex"}), 404,
               "ERR_EXPORT_NOT_FOUND")
        _error(multi.get("/api/export/runs", headers={"X-Stella-Tenant": "initech"}), 403,
               "ERR_EXPORT_FORBIDDEN", "tenant-not-granted")


def test_download_path_traversal_is_404(server):
    with server.client() as c:
        rid = server.wait_status(c, _submit(c, "//profiles:json-raw")["runId"])["runId"]
        assert c.get(f"/api/export/runs/{rid}/files/manifests/export.json").status_code == 200
        # httpx removes literal dot segments before sending (curl --path-as-is below sends them);
        # the encoded forms reach the server and are decoded there
        for path in ("..%2F..%2Fetc%2Fpasswd", "%2e%2e/%2e%2e/etc/passwd", "manifests/%2e%2e/manifests/export.json",
                     "manifests/%2e/export.json", "%2Fetc%2Fpasswd", "manifests%5c..%5cexport.json",
                     "manifests//export.json", "manifests/export.json%00", "nope.json"):
            r = c.get(f"/api/export/runs/{rid}/files/{path}")
            _error(r, 404, "ERR_EXPORT_NOT_FOUND")
    assert CURL, "curl is needed"
    auth = ["-H", f"Authorization: Bearer {token('acme-ci')}"]
    for raw in ("/files/../../../../etc/passwd", "/files/..%2f..%2f..%2fetc%2fpasswd", "/files//etc/passwd",
                "/files/%2e%2e%2f%2e%2e%2fservice.toml", "/files/manifests/../manifests/export.json",
                "/files/manifests/./export.json", "/files/manifests/..%2fmanifests%2fexport.json"):
        out = subprocess.run([CURL, "-s", "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}", *auth,
                              f"{server.url}/api/export/runs/{rid}{raw}"], capture_output=True, text=True, timeout=30)
        assert out.stdout == "404", (raw, out.stdout)


def test_range_etag_and_416_with_curl(server, tmp_path):
    with server.client() as c:
        run = server.wait_status(c, _submit(c, "//profiles:mirror-full")["runId"])
    archive = next(o for o in run["outputs"] if o["path"] == "mirror.tar.zst")
    url = f"{server.url}/api/export/runs/{run['runId']}/archive"
    auth = ["-H", f"Authorization: Bearer {token('acme-ci')}"]
    half = archive["bytes"] // 2
    part = tmp_path / "mirror.tar.zst"
    # a first partial download, then `curl -C -` resumes it with Range (206)
    subprocess.run([CURL, "-sf", *auth, "-r", f"0-{half - 1}", "-o", str(part), url], check=True, timeout=30)
    assert part.stat().st_size == half
    head = subprocess.run([CURL, "-sf", *auth, "-C", "-", "-D", "-", "-o", str(part), url], check=True,
                          capture_output=True, text=True, timeout=30).stdout.lower()
    assert head.startswith("http/1.1 206") and f"content-range: bytes {half}-{archive['bytes'] - 1}/{archive['bytes']}" in head
    assert f'etag: "{archive["sha256"]}"' in head
    assert "content-type: application/vnd.stella-build.mirror.v1.tar+zstd" in head
    assert hashlib.sha256(part.read_bytes()).hexdigest() == archive["sha256"] == GOLDEN["//profiles:mirror-full"]["mirror.tar.zst"]
    # past the end: 416 with the size (RFC 9110 §15.5.17)
    r = subprocess.run([CURL, "-s", *auth, "-r", f"{archive['bytes'] + 10}-", "-D", "-", "-o", "/dev/null", url],
                       capture_output=True, text=True, timeout=30).stdout.lower()
    assert r.startswith("http/1.1 416") and f"content-range: bytes */{archive['bytes']}" in r
    # If-Range with another validator: the whole file (200), never a wrong splice
    with server.client() as c:
        full = c.get(url, headers={"Range": "bytes=10-", "If-Range": '"0000"'})
        assert full.status_code == 200 and len(full.content) == archive["bytes"]
        ranged = c.get(url, headers={"Range": "bytes=10-19", "If-Range": f'"{archive["sha256"]}"'})
        assert ranged.status_code == 206 and ranged.content == full.content[10:20]
        assert ranged.headers["content-length"] == "10"


def test_last_event_id_resumes_and_heartbeat(server):
    with server.client() as c:
        rid = _submit(c, "//profiles:json-policy")["runId"]
        events = sse_events(c, rid)
        resumed = sse_events(c, rid, last_event_id=events[2][0])
        assert resumed == events[3:]
        assert sse_events(c, rid, last_event_id=events[-1][0]) == []  # after the end: nothing, closed
        _error(c.get(f"/api/export/runs/{rid}/events", headers={"Last-Event-ID": "x"}), 422, "ERR_EXPORT_VALIDATION")
    with server.client("admin") as admin:
        admin.post("/api/export/admin/queue", json={"paused": True})
    try:
        with server.client() as c:
            rid = _submit(c, "//profiles:json-raw")["runId"]
            with c.stream("GET", f"/api/export/runs/{rid}/events") as r:
                assert r.headers["content-type"].startswith("text/event-stream")
                seen = b""
                deadline = time.monotonic() + 10
                for chunk in r.iter_raw():
                    seen += chunk
                    if b": heartbeat" in seen or time.monotonic() > deadline:
                        break
            assert b": heartbeat\n\n" in seen  # heartbeat_seconds = 0.5 in this server's config
            c.post(f"/api/export/runs/{rid}/cancel")
    finally:
        with server.client("admin") as admin:
            admin.post("/api/export/admin/queue", json={"paused": False})


def test_profiles_and_last_successful_run(server):
    with server.client() as c:
        run = server.wait_status(c, _submit(c, "//profiles:json-raw")["runId"])
        items = c.get("/api/export/profiles").json()["items"]
        one = c.get("/api/export/profiles/profiles:json-raw").json()
        encoded = c.get("/api/export/profiles/%2F%2Fprofiles%3Ajson-raw").json()
        _error(c.get("/api/export/profiles/profiles:missing"), 404, "ERR_EXPORT_PROFILE_NOT_FOUND")
    labels = [p["label"] for p in items]
    assert set(PROFILES) <= set(labels) and labels == sorted(labels)
    assert one == encoded
    assert one["rule"] == "json_raw" and one["kind"] == "json:raw" and one["deps"] == ["//profiles:osv-sample"]
    assert one["archive"] == "bundle.tar.gz"
    assert one["lastSuccessfulRun"]["manifestSha256"] == run["manifestSha256"]
    with server.client("globex-ci") as g:  # per tenant
        other = g.get("/api/export/profiles/profiles:json-raw").json()["lastSuccessfulRun"]
        assert other is None or other["runId"] != run["runId"]


def test_list_runs_pages_with_cursor(server):
    with server.client() as c:
        listed, cursor = [], None
        while True:
            page = c.get("/api/export/runs", params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
            listed += page["items"]
            cursor = page["nextCursor"]
            if not cursor:
                break
        everything = c.get("/api/export/runs", params={"limit": 200}).json()["items"]
        only = c.get("/api/export/runs", params={"status": "succeeded", "profile": "profiles:json-raw"}).json()["items"]
    assert [r["runId"] for r in listed] == [r["runId"] for r in everything] and len(listed) > 3
    assert {r["tenant"] for r in everything} == {"acme"}
    assert only and {(r["status"], r["profile"]) for r in only} == {("succeeded", "//profiles:json-raw")}


def test_metrics_parse_and_match_the_runs(server):
    with server.client() as c:
        server.wait_status(c, _submit(c, "//profiles:trivy-db")["runId"])
    text = __import__("httpx").get(server.url + "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    counted: dict[tuple[str, str, str], float] = {}
    for s in families["export_runs"].samples:
        if s.name == "export_runs_total":
            counted[(s.labels["tenant"], s.labels["profile"], s.labels["status"])] = s.value
    actual: dict[tuple[str, str, str], float] = {}
    for name in ("acme-ci", "quota-ci", "globex-ci"):
        with server.client(name) as c:
            for r in c.get("/api/export/runs", params={"limit": 200}).json()["items"]:
                if r["status"] in ("succeeded", "failed"):  # cancelled-while-queued runs never started
                    k = (r["tenant"], r["profile"], r["status"])
                    actual[k] = actual.get(k, 0) + 1
    assert {k: v for k, v in counted.items() if k[2] != "cancelled"} == actual
    hist = {s.labels.get("profile_kind"): s.value for s in families["export_run_duration_seconds"].samples
            if s.name == "export_run_duration_seconds_count"}
    assert sum(hist.values()) == sum(counted.values())
    assert hist.get("trivy:db", 0) >= 1
    artifacts = {s.labels["type"]: s.value for s in families["export_artifacts"].samples if s.name == "export_artifacts_total"}
    with server.client() as c:
        archived = {p["label"] for p in c.get("/api/export/profiles").json()["items"] if p["archive"]}
    with_archive = sum(v for k, v in actual.items() if k[2] == "succeeded" and k[1] in archived)
    assert artifacts["archive"] == with_archive  # one per succeeded run of a kind with an archive
    assert families["export_bytes"].samples[0].value > 0
    assert "export_cache_hits" in families and "export_failures" in families
    active = {s.labels["status"]: s.value for s in families["export_runs_active"].samples}
    assert set(active) == {"queued", "running"}


def test_openapi_document_is_committed_and_etagged(server):
    import httpx

    r = httpx.get(server.url + "/.well-known/openapi")
    assert r.status_code == 200 and r.headers["x-export-oas-version"] == "v1"
    assert r.headers["cache-control"] == "private, must-revalidate"
    assert r.headers["etag"] == '"sha256:' + hashlib.sha256(r.content).hexdigest() + '"'
    assert r.content == (REPO / "docs" / "openapi.json").read_bytes(), \
        "docs/openapi.json is stale: python -m stella_build.service.openapi > docs/openapi.json"
    assert httpx.get(server.url + "/.well-known/openapi", headers={"If-None-Match": r.headers["etag"]}).status_code == 304
    doc = json.loads(r.content)
    assert {"/api/export/runs", "/api/export/runs/{run_id}/events", "/api/export/runs/{run_id}/files/{path}"} <= set(doc["paths"])


def test_health(server):
    import httpx

    assert httpx.get(server.url + "/healthz").json() == {"status": "ok", "checks": {}}
    ready = httpx.get(server.url + "/readyz").json()
    assert ready["checks"]["database"] == "ok" and ready["checks"]["schema"] == "0001_initial"


def test_retention_prune_endpoint_needs_admin(server):
    with server.client() as c:
        _error(c.post("/api/export/admin/retention"), 403, "ERR_EXPORT_FORBIDDEN", "scope-missing")
    with server.client("admin") as admin:
        r = admin.post("/api/export/admin/retention")
        assert r.status_code == 200 and r.json() == {"prunedRuns": 0}  # nothing is 30 days old


def test_downloads_stream_server_rss_stays_flat(server):
    """Four concurrent downloads of a 64 MiB file: the server's RSS grows by far less than one
    copy of the file (it streams from the cache in 64 KiB chunks, never reads a file whole)."""
    import threading

    import httpx
    import psutil

    from tests.service.harness import seed_big_run

    size = 64 << 20
    rid, sha = seed_big_run(server, size, seed=3)
    proc = psutil.Process(server.proc.pid)
    before = proc.memory_info().rss
    peak = [before]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            stop.wait(0.02)

    def download(_):
        h = hashlib.sha256()
        with httpx.stream("GET", f"{server.url}/api/export/runs/{rid}/archive", timeout=120,
                          headers={"Authorization": f"Bearer {token('acme-ci')}"}) as r:
            assert r.status_code == 200 and r.headers["content-length"] == str(size)
            for chunk in r.iter_bytes(1 << 20):
                h.update(chunk)
        return h.hexdigest()

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            digests = list(pool.map(download, range(4)))
    finally:
        stop.set()
        t.join(5)
    assert digests == [sha] * 4
    grew = (peak[0] - before) / 2**20
    assert grew < 24, f"server RSS grew {grew:.1f} MiB while serving 4 x 64 MiB"
