"""Real `stella-build serve` processes on 127.0.0.1 for the service tests (and the PostgreSQL
interop test): a workspace, a config with tokens, start / kill -9 / restart, bounded waits.

Every wait is bounded (`deadline`), every server listens on loopback only, every process is
killed by pid at the end (never by name).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.conftest import CLI, REPO, make_workspace

GOLDEN = json.loads((REPO / "golden" / "digests.json").read_text())
PROFILES = sorted(GOLDEN)  # the six default profiles with golden digests

# name → (token, tenants, scopes). The tokens are test-only strings; the config stores sha256.
TOKENS = {
    "acme-ci": ("tok-acme-0a1b2c3d4e5f", ["acme"], ["export:read", "export:run", "export:download"]),
    "globex-ci": ("tok-globex-9f8e7d6c5b4a", ["globex"], ["export:read", "export:run", "export:download"]),
    "acme-reader": ("tok-reader-11223344", ["acme"], ["export:read"]),
    "multi": ("tok-multi-55667788", ["acme", "globex"], ["export:read", "export:run", "export:download"]),
    "quota-ci": ("tok-quota-99aabbcc", ["quota"], ["export:read", "export:run", "export:download"]),
    "admin": ("tok-admin-ddeeff00", ["acme"], ["export:admin"]),
    "ops-reader": ("tok-ops-12345678", ["ops"], ["export:read"]),
}


def token(name: str) -> str:
    return TOKENS[name][0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_slow_package(ws: Path, count: int = 500, seed: int = 7) -> None:
    """A package whose json-raw build takes seconds (a synthetic OSV corpus, bench/gen_osv_corpus.py):
    what the crash and cancel tests interrupt mid-run."""
    pkg = ws / "slow"
    subprocess.run([sys.executable, str(REPO / "bench" / "gen_osv_corpus.py"), "--count", str(count),
                    "--seed", str(seed), "--out", str(pkg / "osv")], check=True, capture_output=True, timeout=120)
    (pkg / "Exportfile").write_text(
        '[package]\nsource_date_epoch = 1735689600\n\n'
        '[targets.osv]\nrule = "osv_source"\nsrcs = ["osv/**/*.json"]\nshards = 8\n\n'
        '[targets.json-raw]\nrule = "json_raw"\ndeps = [":osv"]\n')


def config_text(*, extra: str = "", service: dict | None = None, tokens: bool = True) -> str:
    svc = {"concurrency": 2, "heartbeat_seconds": 15, "lease_seconds": 6, **(service or {})}
    lines = ["[service]"] + [f"{k} = {json.dumps(v)}" for k, v in svc.items()]
    lines += ["", "[tenants.quota]", "max_concurrent_runs = 2", ""]
    if tokens:
        for name, (tok, tenants, scopes) in TOKENS.items():
            lines += ["[[tokens]]", f'name = "{name}"', f'sha256 = "{hashlib.sha256(tok.encode()).hexdigest()}"',
                      f"tenants = {json.dumps(tenants)}", f"scopes = {json.dumps(scopes)}", ""]
    return "\n".join(lines) + "\n" + extra


def hermetic_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("STELLA_") and k not in ("SOURCE_DATE_EPOCH", "COSIGN_PASSWORD")}
    env.update(extra or {})
    return env


@dataclass
class Server:
    """One `stella-build serve` process and everything it owns (workspace, cache, database)."""

    root: Path
    config: str
    database: str | None = None
    jobs: int = 2
    port: int = field(default_factory=free_port)
    env: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    starts: int = 0

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.cache = self.root / "cache"
        self.config_path = self.root / "service.toml"
        self.config_path.write_text(self.config)
        self.log = self.root / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def workspace(self) -> Path:
        return self.root / "ws"

    def argv(self) -> list[str]:
        argv = [CLI, "--cache-dir", str(self.cache), "-j", str(self.jobs), "serve", "--workspace",
                str(self.workspace), "--listen", f"127.0.0.1:{self.port}", "--config", str(self.config_path)]
        if self.database:
            argv += ["--database", self.database]
        return argv

    def start(self, timeout: float = 30.0) -> "Server":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        log = open(self.log, "a")
        log.write(f"\n===== start {self.starts}\n")
        log.flush()
        self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                     env=hermetic_env(self.env), cwd=self.root)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.kill9()
        raise AssertionError(f"server not ready in {timeout} s:\n{self.log.read_text()[-4000:]}")

    def kill9(self) -> None:
        """SIGKILL the server process only (its build workers notice and kill themselves)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()

    def client(self, name: str | None = "acme-ci", tenant: str | None = None, timeout: float = 30.0) -> httpx.Client:
        headers = {}
        if name is not None:
            headers["Authorization"] = f"Bearer {token(name)}"
        if tenant:
            headers["X-Stella-Tenant"] = tenant
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def wait_status(self, client: httpx.Client, run_id: str, statuses=("succeeded", "failed", "cancelled"),
                    timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = client.get(f"/api/export/runs/{run_id}").json()
            if run["status"] in statuses:
                return run
            time.sleep(0.1)
        raise AssertionError(f"{run_id} not in {statuses} after {timeout} s: {run}\n{self.log.read_text()[-3000:]}")


def make_service_workspace(root: Path, *, slow: bool = False) -> Path:
    ws = make_workspace(root / "ws")
    if slow:
        write_slow_package(ws)
    return ws


def sse_events(client: httpx.Client, run_id: str, last_event_id: str | None = None,
               timeout: float = 60.0) -> list[tuple[str, str, dict]]:
    """(id, event, data) of a run's SSE stream until it ends (httpx-sse, bounded by `timeout`)."""
    from httpx_sse import connect_sse

    out = []
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    deadline = time.monotonic() + timeout
    with connect_sse(client, "GET", f"/api/export/runs/{run_id}/events", headers=headers) as source:
        assert source.response.status_code == 200, source.response.read()
        for sse in source.iter_sse():
            if not sse.data:
                continue  # a comment-only block (heartbeat): no event
            out.append((sse.id, sse.event, json.loads(sse.data) if sse.data else {}))
            assert time.monotonic() < deadline, "event stream did not end in time"
    return out


def sha256_tree(base: Path) -> dict[str, str]:
    return {p.relative_to(base).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(base.rglob("*")) if p.is_file()}


def seed_big_run(server: Server, size: int, *, tenant: str = "acme", seed: int = 1) -> tuple[str, str]:
    """A succeeded run whose archive is `size` random bytes, stored as the service stores outputs
    (the blob in the CAS, the run and its file row in the database): for download tests and
    benchmarks that need files larger than the sample profiles make. Returns (run id, sha256)."""
    import datetime as dt
    import random
    import tempfile

    from stella_build.engine.cache.cas import Cas
    from stella_build.engine.encode.digest import file_digests
    from stella_build.service.db import Database, FileRow, RunRow
    from stella_build.service.store import new_run_id

    cas = Cas(server.cache)
    fd, tmp = tempfile.mkstemp(dir=cas.tmp)
    rng = random.Random(seed)
    with os.fdopen(fd, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(rng.randbytes(n))
            left -= n
    b3, sha, n = file_digests(tmp)
    cas.adopt(Path(tmp), b3, n)
    db = Database(server.database or f"sqlite:///{server.cache}/service/export-center.sqlite3")
    now = dt.datetime.now(dt.timezone.utc)
    run_id = new_run_id()
    try:
        with db.write() as s:
            s.add(RunRow(id=run_id, tenant=tenant, profile="//profiles:json-raw", kind="json:raw", status="succeeded",
                         trigger="api", selectors=None, sign=None, request_hash="seeded", attempt=1,
                         cancel_requested=False, created_at=now, started_at=now, finished_at=now,
                         items_completed=1, items_total=1, total_bytes=n, event_seq=0, exit_code=0, errors=[]))
            s.flush()
            s.add(FileRow(run_id=run_id, path="bundle.tar.gz", sha256=sha, blake3=b3, size=n, mode=0o644))
    finally:
        db.dispose()
    return run_id, sha
