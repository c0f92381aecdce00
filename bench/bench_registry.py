#!/usr/bin/env python3
"""Benchmark of the service's registry (/v2/): N Trivy clients started together pull the Trivy DB.

    python bench/bench_registry.py [--clients 50] [--pad-mb 0]

1. A server (tests/service/harness.py) with a signed trivy-db run for tenant acme.
2. With --pad-mb M > 0, a second, seeded run of the same profile whose DB layer is the real
   db.tar.gz's files plus M MiB of incompressible padding (a valid Trivy DB archive: Trivy
   extracts it and opens trivy.db), so the layer is big enough for streaming to matter. It is the
   newest run, so tag `2` points at it.
3. N `trivy image --download-db-only --db-repository 127.0.0.1:PORT/acme/trivy-db` processes, each
   with its own cache dir and Basic credentials (bearer flow), started at once: wall time from the
   first start to the last exit, every client's trivy.db checked against the served one, and the
   GET 200s of the pull route (exactly 2 per client: manifest + blob, so each downloaded once).
4. The server process's RSS sampled every 50 ms (psutil) before and during the pulls: its peak.

Everything runs on 127.0.0.1 in a temporary directory; the server is stopped at the end.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.bench_service import RssSampler, rss_mib  # noqa: E402
from tests.interop.conftest import find_tool  # noqa: E402
from tests.service.harness import token  # noqa: E402
from tests.service.test_registry import start_registry_server  # noqa: E402

TOKEN = token("acme-ci")
DB_LAYER = "application/vnd.aquasec.trivy.db.layer.v1.tar+gzip"


def _canonical(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def seed_padded_run(server, db_tar_gz: bytes, pad_mib: int) -> str:
    """A succeeded trivy-db run of tenant acme whose OCI layout's layer is `db_tar_gz`'s members plus
    `pad_mib` MiB of random bytes; stored as the service stores outputs (CAS + file rows). Returns
    the layer's sha256 hex."""
    from stella_build.engine.cache.cas import Cas
    from stella_build.engine.encode.digest import file_digests
    from stella_build.service.db import Database, FileRow, RunRow
    from stella_build.service.store import new_run_id

    cas = Cas(server.cache)
    fd, layer_path = tempfile.mkstemp(dir=cas.tmp)
    with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w") as out, tarfile.open(fileobj=io.BytesIO(db_tar_gz), mode="r:gz") as src:
        for member in src.getmembers():
            out.addfile(member, src.extractfile(member))
        pad = tarfile.TarInfo("padding.bin")
        pad.size = pad_mib << 20
        out.addfile(pad, _RandomReader(pad.size))
    files: dict[str, tuple[str, str, int]] = {}
    b3, sha, size = file_digests(layer_path)
    cas.adopt(Path(layer_path), b3, size)
    files[f"oci/blobs/sha256/{sha}"] = (b3, sha, size)
    layer_sha = sha
    config = b"{}"
    manifest = _canonical({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.aquasec.trivy.config.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": "sha256:" + hashlib.sha256(config).hexdigest(), "size": 2},
        "layers": [{"mediaType": DB_LAYER, "digest": "sha256:" + layer_sha, "size": size,
                    "annotations": {"org.opencontainers.image.title": "db.tar.gz"}}],
        "annotations": {"org.opencontainers.image.created": "2025-01-01T00:00:00Z"}})
    index = _canonical({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                       "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
                                       "size": len(manifest),
                                       "annotations": {"org.opencontainers.image.ref.name": "2"}}]})
    for path, data in ((f"oci/blobs/sha256/{hashlib.sha256(config).hexdigest()}", config),
                       (f"oci/blobs/sha256/{hashlib.sha256(manifest).hexdigest()}", manifest),
                       ("oci/index.json", index)):
        fd, tmp = tempfile.mkstemp(dir=cas.tmp)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        b3, sha, n = file_digests(tmp)
        cas.adopt(Path(tmp), b3, n)
        files[path] = (b3, sha, n)
    db = Database(f"sqlite:///{server.cache}/service/export-center.sqlite3")
    now = dt.datetime.now(dt.timezone.utc)
    run_id = new_run_id()
    try:
        with db.write() as s:
            s.add(RunRow(id=run_id, tenant="acme", profile="//profiles:trivy-db", kind="trivy:db",
                         status="succeeded", trigger="api", selectors=None, sign=None, request_hash="seeded",
                         attempt=1, cancel_requested=False, created_at=now, started_at=now, finished_at=now,
                         items_completed=1, items_total=1, total_bytes=sum(v[2] for v in files.values()),
                         event_seq=0, exit_code=0, errors=[]))
            s.flush()
            for path, (b3, sha, n) in sorted(files.items()):
                s.add(FileRow(run_id=run_id, path=path, sha256=sha, blake3=b3, size=n, mode=0o644))
    finally:
        db.dispose()
    return layer_sha


class _RandomReader:
    """A file-like source of `size` random bytes read in 1 MiB pieces (never held whole)."""

    def __init__(self, size: int):
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return os.urandom(n)


def pull_200s(url: str) -> int:
    text = httpx.get(url + "/metrics", timeout=10).text
    match = re.search(r'^export_http_requests_total\{method="GET",route="/v2/\{path:path\}",status="200"\} (\S+)$',
                      text, re.M)
    return int(float(match[1])) if match else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--pad-mb", type=int, default=0, help="MiB of padding in a seeded, bigger DB layer")
    args = ap.parse_args()
    trivy = find_tool("trivy")
    if not trivy:
        print("trivy not found (tools/interop/build-go-tools.sh trivy)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp:
        root = Path(tmp)
        srv, ids, _pub = start_registry_server(root / "srv", runs=(("acme-ci", "//profiles:trivy-db"),))
        try:
            run_id = ids[("acme-ci", "//profiles:trivy-db")][0]
            auth = {"Authorization": f"Bearer {TOKEN}"}
            db_tar_gz = httpx.get(f"{srv.url}/api/export/runs/{run_id}/files/db.tar.gz", headers=auth).content
            if args.pad_mb:
                seed_padded_run(srv, db_tar_gz, args.pad_mb)
            manifest = httpx.get(f"{srv.url}/v2/acme/trivy-db/manifests/2", auth=("acme", TOKEN)).json()
            layer = manifest["layers"][0]
            host = srv.url.removeprefix("http://")
            before_rss = rss_mib(srv.proc.pid)
            before = pull_200s(srv.url)

            def one(i: int) -> subprocess.CompletedProcess:
                home = root / f"home/{i}"
                home.mkdir(parents=True)
                return subprocess.run(
                    [trivy, "--cache-dir", str(root / f"cache/{i}"), "--quiet", "image", "--download-db-only",
                     "--db-repository", f"{host}/acme/trivy-db", "--username", "acme", "--password", TOKEN,
                     "--skip-version-check", "--disable-telemetry"],
                    capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
                    env={"PATH": "/usr/bin:/bin", "HOME": str(home), "TRIVY_NO_PROGRESS": "true", "TMPDIR": str(home)})

            with RssSampler(srv.proc.pid) as sampler:
                started = time.monotonic()
                with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
                    results = list(pool.map(one, range(args.clients)))
                wall = time.monotonic() - started
            failed = [r for r in results if r.returncode != 0]
            for r in failed[:3]:
                print(r.stderr[-1500:], file=sys.stderr)
            served_db = {hashlib.sha256((root / f"cache/{i}/db/trivy.db").read_bytes()).hexdigest()
                         for i in range(args.clients) if (root / f"cache/{i}/db/trivy.db").is_file()}
            gets = pull_200s(srv.url) - before
            load = os.getloadavg()
            print(f"{args.clients} Trivy clients, layer {layer['size'] / 2**20:.2f} MiB: wall {wall:.2f} s, "
                  f"{len(failed)} failed, {len(served_db)} distinct trivy.db, {gets} GET 200s of the pull route "
                  f"(want {2 * args.clients}); server RSS {before_rss:.1f} MiB -> peak {sampler.peak_mib:.1f} MiB; "
                  f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
            return 0 if not failed and len(served_db) == 1 and gets == 2 * args.clients else 1
        finally:
            srv.stop()


if __name__ == "__main__":
    sys.exit(main())
