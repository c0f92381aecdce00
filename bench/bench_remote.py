#!/usr/bin/env python3
"""Remote-cache benchmark (issue: shared remote cache). Not run by the tests.

json:raw over the full shared OSV corpora, three ways, each in a fresh workspace copy:
  local-cold   empty local cache, no remote
  remote-warm  empty local cache, a bazel-remote on 127.0.0.1 that a previous build filled
  local-warm   warm local cache (a real no-op build; the no-op memo is disabled by a new path)
Prints seconds and the remote-warm speed-up over local-cold (target >= 5x).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.conftest import CLI, make_workspace  # noqa: E402
from tests.interop.cache_servers import start_bazel_remote  # noqa: E402
from tests.interop.conftest import find_tool  # noqa: E402

TARGET = "//corpora:json-raw"


def build(ws: Path, cache: Path, *extra: str) -> float:
    t = time.perf_counter()
    subprocess.run([CLI, "--cache-dir", str(cache), "-q", *extra, TARGET], cwd=ws, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> int:
    binary = find_tool("bazel-remote")
    if not binary:
        print("bazel-remote not found: run tools/interop/build-go-tools.sh bazel-remote")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="stella-remote-bench-"))
    server = start_bazel_remote(binary, tmp / "server")
    try:
        url = server.url
        seed = make_workspace(tmp / "seed", packages=("corpora",), shared=True)
        cold = build(seed, tmp / "cache-seed", "--remote-cache", url)  # local-cold + upload
        cold_plain = build(make_workspace(tmp / "plain", packages=("corpora",), shared=True), tmp / "cache-plain")
        remote_warm = build(make_workspace(tmp / "b", packages=("corpora",), shared=True), tmp / "cache-b",
                            "--remote-cache", url, "--remote-upload=false")
        local_warm = build(make_workspace(tmp / "c", packages=("corpora",), shared=True), tmp / "cache-b")
        print(f"local-cold (no remote):        {cold_plain:6.2f} s")
        print(f"local-cold + upload to remote: {cold:6.2f} s")
        print(f"remote-warm (empty local):     {remote_warm:6.2f} s  = {cold_plain / remote_warm:.1f}x faster than local-cold (target >= 5x)")
        print(f"local-warm:                    {local_warm:6.2f} s")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
