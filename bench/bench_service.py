#!/usr/bin/env python3
"""Benchmarks of the Export Center service (`stella-build serve`) on loopback.

    python bench/bench_service.py [--polls 200] [--downloads 20] [--size-mb 200] [--runs 5]

1. 200 concurrent status polls (GET /runs/{id}, 10 each): requests/s, p50/p99 latency.
2. 20 concurrent Range-resumed downloads of a 200 MB archive (each: the first half, then the rest
   with Range + If-Range; sha256 checked): aggregate MB/s, p50/p99 time per download.
3. The server's RSS sampled every 50 ms before, during and after each phase (must stay flat:
   files are streamed from the cache, never read whole).
4. A run through the API (submit → final SSE event) vs the same build on the CLI, warm and cold
   cache, median of --runs: the overhead target is ≤ 5 % + 0.2 s.

Everything runs on 127.0.0.1 in a temporary directory; every loop is bounded; the server is
stopped at the end. Uses the test harness (tests/service/harness.py) for the server process.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402

from tests.conftest import run_cli  # noqa: E402
from tests.service.harness import (  # noqa: E402
    Server, config_text, make_service_workspace, seed_big_run, sse_events, token,
)


class RssSampler:
    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)
        self.samples: list[int] = []
        self._stop = threading.Event()

    def __enter__(self):
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            try:
                self.samples.append(self.proc.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            self._stop.wait(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(2)

    @property
    def peak_mib(self) -> float:
        return max(self.samples) / 2**20 if self.samples else 0.0


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def polls(url: str, run_id: str, clients: int, each: int) -> tuple[float, list[float]]:
    headers = {"Authorization": f"Bearer {token('acme-ci')}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as client:
        async def one():
            for _ in range(each):
                t = time.perf_counter()
                r = await client.get(f"/api/export/runs/{run_id}")
                latencies.append(time.perf_counter() - t)
                assert r.status_code == 200
        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(clients)))
        return time.perf_counter() - started, latencies


async def downloads(url: str, run_id: str, sha: str, size: int, n: int) -> tuple[float, list[float]]:
    headers = {"Authorization": f"Bearer {token('acme-ci')}"}
    times: list[float] = []
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300,
                                 limits=httpx.Limits(max_connections=n)) as client:
        async def one():
            t = time.perf_counter()
            h = hashlib.sha256()
            half = size // 2
            async with client.stream("GET", f"/api/export/runs/{run_id}/archive",
                                     headers={"Range": f"bytes=0-{half - 1}"}) as r:
                assert r.status_code == 206
                async for chunk in r.aiter_bytes(1 << 20):
                    h.update(chunk)
            async with client.stream("GET", f"/api/export/runs/{run_id}/archive",
                                     headers={"Range": f"bytes={half}-", "If-Range": f'"{sha}"'}) as r:
                assert r.status_code == 206
                async for chunk in r.aiter_bytes(1 << 20):
                    h.update(chunk)
            assert h.hexdigest() == sha
            times.append(time.perf_counter() - t)
        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return time.perf_counter() - started, times


def api_run(server: Server, profile: str) -> float:
    with server.client() as c:
        t = time.perf_counter()
        rid = c.post("/api/export/runs", json={"profile": profile}).json()["runId"]
        events = sse_events(c, rid, timeout=300)
        took = time.perf_counter() - t
    assert events[-1][1] == "succeeded", events[-1]
    return took


def cli_build(ws: Path, cache: Path, profile: str, *, full: bool) -> float:
    t = time.perf_counter()
    run_cli((["--debug"] if full else []) + ["-q", "build", profile], cwd=ws, cache=cache, check=True)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--polls", type=int, default=200)
    ap.add_argument("--each", type=int, default=10)
    ap.add_argument("--downloads", type=int, default=20)
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--profile", default="//profiles:json-raw")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        root = Path(tmp) / "srv"
        make_service_workspace(root)
        server = Server(root, config_text(service={"concurrency": 2}))
        server.start()
        try:
            pid = server.proc.pid
            with server.client() as c:
                rid = c.post("/api/export/runs", json={"profile": args.profile}).json()["runId"]
                server.wait_status(c, rid)
            print(f"server RSS at rest: {rss_mib(pid):.1f} MiB")

            sproc, me = psutil.Process(pid), psutil.Process()
            c0, m0 = sproc.cpu_times(), me.cpu_times()
            with RssSampler(pid) as s:
                wall, lat = asyncio.run(polls(server.url, rid, args.polls, args.each))
            c1, m1 = sproc.cpu_times(), me.cpu_times()
            n = len(lat)
            # CPU per request tells the server's capacity apart from this machine's load and from
            # the Python client's own cost (200 asyncio connections in one process)
            server_ms = (c1.user + c1.system - c0.user - c0.system) / n * 1000
            client_ms = (m1.user + m1.system - m0.user - m0.system) / n * 1000
            print(f"status polls: {n} requests from {args.polls} concurrent clients in {wall:.2f} s = "
                  f"{n / wall:.0f} req/s; p50 {pct(lat, .5) * 1000:.1f} ms, p99 {pct(lat, .99) * 1000:.1f} ms; "
                  f"server CPU {server_ms:.2f} ms/request (~{1000 / server_ms:.0f} req/s per core), client CPU "
                  f"{client_ms:.2f} ms/request; server RSS peak {s.peak_mib:.1f} MiB; load average "
                  f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

            size = args.size_mb << 20
            big, sha = seed_big_run(server, size)
            before = rss_mib(pid)
            with RssSampler(pid) as s:
                wall, times = asyncio.run(downloads(server.url, big, sha, size, args.downloads))
            after = rss_mib(pid)
            total = size * args.downloads
            print(f"ranged downloads: {args.downloads} x {args.size_mb} MB (two Range requests each, sha256 "
                  f"checked) in {wall:.2f} s = {total / wall / 2**20:.0f} MiB/s; per download p50 "
                  f"{pct(times, .5):.2f} s, p99 {pct(times, .99):.2f} s; server RSS {before:.1f} -> peak "
                  f"{s.peak_mib:.1f} -> {after:.1f} MiB")

            # API vs CLI, warm cache: the service's own cache; the CLI builds the same workspace
            ws, cache = server.workspace, server.cache
            api_warm = [api_run(server, args.profile) for _ in range(args.runs)]
            cli_warm = [cli_build(ws, cache, args.profile, full=True) for _ in range(args.runs)]
            cli_memo = [cli_build(ws, cache, args.profile, full=False) for _ in range(args.runs)]
            a, c_, m = statistics.median(api_warm), statistics.median(cli_warm), statistics.median(cli_memo)
            print(f"warm cache, {args.profile}: API run (submit -> final event) {a:.3f} s; CLI engine build "
                  f"{c_:.3f} s (overhead {a - c_:+.3f} s, {100 * (a - c_) / c_:+.1f} %); CLI no-op memo {m:.3f} s")
        finally:
            server.stop()

        # cold cache: a fresh server and a fresh CLI cache per repetition
        api_cold, cli_cold = [], []
        for i in range(max(1, args.runs // 2)):
            croot = Path(tmp) / f"cold{i}"
            make_service_workspace(croot)
            cold = Server(croot, config_text())
            cold.start()
            try:
                api_cold.append(api_run(cold, args.profile))
            finally:
                cold.stop()
            cli_cold.append(cli_build(croot / "ws", croot / "cli-cache", args.profile, full=True))
        a, c_ = statistics.median(api_cold), statistics.median(cli_cold)
        budget = 0.05 * c_ + 0.2
        print(f"cold cache, {args.profile}: API run {a:.3f} s; CLI build {c_:.3f} s; overhead {a - c_:+.3f} s "
              f"(budget 5 % + 0.2 s = {budget:.3f} s: {'within' if a - c_ <= budget else 'OVER'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
