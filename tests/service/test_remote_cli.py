"""`stella-build remote` against a real server: submit --wait, watch, download (verify, resume),
list, cancel, and the CLI's exit codes and reasons; signed runs (`sign: true`) against the golden
signed digests; a failing build reports the CLI's target/file/reason."""
from __future__ import annotations

import json
import os

import pytest

from tests.conftest import REPO, run_cli
from tests.service.harness import Server, config_text, free_port, make_service_workspace, sha256_tree, token
from tests.signed_bundle import PASSWORD, write_public_test_keys

SIGNED_GOLDEN = json.loads((REPO / "golden" / "signed.json").read_text())


@pytest.fixture(scope="module")
def rserver(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote")
    ws = make_service_workspace(root)
    bad = ws / "bad"
    (bad / "osv").mkdir(parents=True)
    (bad / "osv" / "BAD-1.json").write_text('{"id": "BAD-1", "modified": "not a date", "affected": 7}')
    (bad / "Exportfile").write_text('[targets.osv]\nrule = "osv_source"\nsrcs = ["osv/*.json"]\nstrict = true\n\n'
                                    '[targets.json-raw]\nrule = "json_raw"\ndeps = [":osv"]\n')
    key, _pub = write_public_test_keys(root / "keys")
    schedule = ('[profiles."//profiles:trivy-java-db"]\nschedule = "* * * * * */2"\n'  # every 2 s
                'schedule_tenant = "ops"\n')
    srv = Server(root, config_text(extra=f'[signing]\nkey = "{key}"\n' + schedule), env={"COSIGN_PASSWORD": PASSWORD})
    srv.start()
    yield srv
    srv.stop()


def remote(server, *args, name="acme-ci", output_json=True, cwd=None):
    argv = ["remote", "--server", server.url]
    if name:
        argv += ["--token", token(name)]
    argv += list(args) + (["--output", "json"] if output_json else [])
    return run_cli(argv, cwd=cwd or server.root, timeout=120)


def test_submit_wait_watch_download_list(rserver, tmp_path):
    r = remote(rserver, "runs", "submit", "//profiles:json-raw", "--wait")
    assert r.code == 0, r.stderr
    run = r.json()["run"]
    assert run["status"] == "succeeded"
    w = remote(rserver, "runs", "watch", run["runId"], output_json=False)
    assert w.code == 0
    lines = w.stderr.splitlines()  # not a TTY: one line per event
    assert lines[0] == "queued" and lines[-1] == "succeeded"
    assert any(ln.startswith("progress ") for ln in lines)
    assert sum(ln.startswith("artifact_ready ") for ln in lines) == len(run["outputs"])
    d = remote(rserver, "runs", "download", run["runId"], "-o", str(tmp_path / "out"))
    assert d.code == 0, d.stderr
    assert d.json()["downloaded"] == len(run["outputs"])
    assert sha256_tree(tmp_path / "out") == {o["path"]: o["sha256"] for o in run["outputs"]}
    again = remote(rserver, "runs", "download", run["runId"], "-o", str(tmp_path / "out"))
    assert again.json()["skipped"] == len(run["outputs"]) and again.json()["bytes"] == 0
    # a damaged partial file is never accepted: exit 3, the .part is removed, a retry heals it
    target = tmp_path / "out" / "bundle.tar.gz"
    size = target.stat().st_size
    target.unlink()
    (tmp_path / "out" / "bundle.tar.gz.part").write_bytes(b"\0" * size)
    bad = remote(rserver, "runs", "download", run["runId"], "-o", str(tmp_path / "out"))
    assert bad.code == 3 and bad.json()["errors"][0]["reason"] == "digest-mismatch"
    assert not (tmp_path / "out" / "bundle.tar.gz.part").exists()
    healed = remote(rserver, "runs", "download", run["runId"], "-o", str(tmp_path / "out"))
    assert healed.code == 0 and healed.json()["downloaded"] == 1
    listed = remote(rserver, "runs", "list")
    assert run["runId"] in [i["runId"] for i in listed.json()["items"]]


def test_failed_build_reports_target_file_reason(rserver):
    r = remote(rserver, "runs", "submit", "//bad:json-raw", "--wait")
    assert r.code == 1, r.stdout + r.stderr
    run = r.json()["run"]
    assert run["status"] == "failed" and run["exitCode"] == 1
    err = run["errors"][0]
    assert err["target"] == "//bad:osv" and err["file"] and "BAD-1.json" in err["file"]
    assert err["reason"] and run["errorCode"] == err["reason"]
    assert f"error: {err['file']}" in r.stderr
    d = remote(rserver, "runs", "download", run["runId"], "-o", str(rserver.root / "nothing"))
    assert d.code == 1


def test_exit_codes(rserver):
    r = remote(rserver, "runs", "submit", "//profiles:missing")
    assert r.code == 2 and r.json()["errors"][0]["reason"] == "target-missing"
    r = remote(rserver, "runs", "list", name=None)
    assert r.code == 4 and r.json()["errors"][0]["reason"] == "token-missing"
    r = run_cli(["remote", "--server", rserver.url, "--token", "nope", "runs", "list", "--output", "json"],
                cwd=rserver.root)
    assert r.code == 4 and r.json()["errors"][0]["reason"] == "token-invalid"
    r = remote(rserver, "runs", "submit", "//profiles:json-raw", name="acme-reader")
    assert r.code == 4 and r.json()["errors"][0]["reason"] == "scope-missing"
    r = remote(rserver, "runs", "watch", "run-doesnotexist")
    assert r.code == 2 and r.json()["errors"][0]["reason"] == "run-not-found"
    r = run_cli(["remote", "--server", f"http://127.0.0.1:{free_port()}", "runs", "list", "--output", "json"],
                cwd=rserver.root)
    assert r.code == 5 and r.json()["errors"][0]["reason"] == "server-unreachable"
    assert "Traceback" not in r.stderr


def test_signed_run_matches_the_signed_golden_and_verifies(rserver, tmp_path):
    r = remote(rserver, "runs", "submit", "//profiles:json-raw", "--sign", "--wait")
    assert r.code == 0, r.stderr
    run = r.json()["run"]
    assert run["signed"] is True
    assert {o["path"]: o["sha256"] for o in run["outputs"]} == SIGNED_GOLDEN["//profiles:json-raw"]
    out = tmp_path / "signed"
    assert remote(rserver, "runs", "download", run["runId"], "-o", str(out)).code == 0
    v = run_cli(["verify", str(out), "--key", str(rserver.root / "keys" / "cosign.pub"), "--output", "json"],
                cwd=tmp_path)
    assert v.code == 0, v.stdout
    # the server's environment never signs on its own: an unsigned request stays unsigned
    plain = remote(rserver, "runs", "submit", "//profiles:json-raw", "--wait").json()["run"]
    assert not any(o["path"].endswith(".sig") for o in plain["outputs"])


def test_cancel_command(rserver):
    with rserver.client("admin") as admin:
        admin.post("/api/export/admin/queue", json={"paused": True})
    try:
        rid = remote(rserver, "runs", "submit", "//profiles:trivy-db").json()["runId"]
        c = remote(rserver, "runs", "cancel", rid)
        assert c.code == 0 and c.json()["run"]["status"] == "cancelled"
        w = remote(rserver, "runs", "watch", rid)
        assert w.code == 1 and w.json()["run"]["status"] == "cancelled"
    finally:
        with rserver.client("admin") as admin:
            admin.post("/api/export/admin/queue", json={"paused": False})


def test_serve_refuses_open_non_loopback_and_bad_config(tmp_path):
    ws = make_service_workspace(tmp_path)
    r = run_cli(["--cache-dir", str(tmp_path / "c"), "serve", "--workspace", str(ws), "--listen", "0.0.0.0:1",
                 "--output", "json"], cwd=tmp_path)
    assert r.code == 2 and r.json()["errors"][0]["reason"] == "service-tokens-missing"
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[service]\nconcurrency = 0\n')
    r = run_cli(["serve", "--workspace", str(ws), "--config", str(cfg), "--output", "json"], cwd=tmp_path)
    assert r.code == 2 and r.json()["errors"][0]["field"] == "service.concurrency"
    r = run_cli(["serve", "--workspace", str(ws), "--database", "postgresql+psycopg://nobody@127.0.0.1:1/x",
                 "--migrate-only", "--output", "json"], cwd=tmp_path)
    assert r.code == 2 and r.json()["errors"][0]["reason"] == "database-unavailable"
    m = run_cli(["--cache-dir", str(tmp_path / "c"), "serve", "--workspace", str(ws), "--migrate-only",
                 "--output", "json"], cwd=tmp_path)
    assert m.code == 0 and m.json() == {"ok": True, "exit_code": 0, "errors": [], "revision": "0001_initial"}
    assert os.path.isfile(tmp_path / "c" / "service" / "export-center.sqlite3")


def test_schedule_enqueues_runs_itself_never_two_at_once(rserver):
    """A profile with a cron schedule (every 2 s here) gets runs without any request, as its
    schedule_tenant, with trigger `schedule`; its runs never overlap."""
    import time

    deadline = time.monotonic() + 30
    with rserver.client("ops-reader") as c:
        while time.monotonic() < deadline:
            runs = c.get("/api/export/runs", params={"limit": 200}).json()["items"]
            if len([r for r in runs if r["status"] == "succeeded"]) >= 2:
                break
            time.sleep(0.2)
        assert len([r for r in runs if r["status"] == "succeeded"]) >= 2, runs
        assert {(r["trigger"], r["profile"], r["tenant"]) for r in runs} == {
            ("schedule", "//profiles:trivy-java-db", "ops")}
        spans = []
        for r in runs:
            if r["status"] == "succeeded":
                full = c.get(f"/api/export/runs/{r['runId']}").json()
                spans.append((full["startedAt"], full["finishedAt"]))
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans  # never two at once
    with rserver.client("acme-ci") as acme:  # other tenants do not see them
        assert all(r["trigger"] == "api" for r in acme.get("/api/export/runs").json()["items"])
