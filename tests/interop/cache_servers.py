"""Start and stop real remote-cache servers for interop tests: nginx (WebDAV PUT) and bazel-remote.

Each server binds 127.0.0.1 on a free port, keeps every file (config, pid, logs, temp, storage) in
a private work directory, runs in the foreground as a child process and is stopped by its fixture.
Both write an access log the tests read to see which requests really reached the server.

Fixtures (import them into a test module: ``from tests.interop.cache_servers import nginx_cache``):
``nginx_cache``, ``bazel_remote_cache`` (zstd storage), ``bazel_remote_uncompressed``.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

PREFIX = "/cache/"
_START_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class CacheServer:
    """A running server. `url` is the cache base URL (with the /cache/ prefix, trailing slash)."""

    kind: str
    url: str
    workdir: Path
    storage: Path
    proc: subprocess.Popen
    access_log: Path
    _parse: Callable[[str], tuple[str, str, int] | None] = field(repr=False)
    _ssl: object = field(default=None, repr=False)
    _sync_seq: int = field(default=0, repr=False)

    def _logged(self) -> list[tuple[str, str, int]]:
        if not self.access_log.exists():
            return []
        out = []
        for line in self.access_log.read_text(errors="replace").splitlines():
            parsed = self._parse(line)
            if parsed:
                out.append(parsed)
        return out

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request the server has answered, oldest first.

        Servers log a request after sending the response, so a client may be ahead of the log: send
        a marker request and wait until it is logged (a running server only; sync markers are not
        returned)."""
        if self.proc.poll() is None:
            self._sync_seq += 1
            marker = f"{self._sync_seq:064x}"
            try:
                urllib.request.urlopen(self.url + "ac/" + marker,
                                       timeout=2, context=self._ssl)
            except (urllib.error.URLError, OSError):
                pass
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and not any(marker in p for _, p, _ in self._logged()):
                time.sleep(0.02)
            time.sleep(0.02)  # bazel-remote logs from concurrent goroutines
        return [r for r in self._logged() if f"ac/{'0' * 40}" not in r[1]]

    def count(self, method: str, fragment: str = "") -> int:
        return sum(1 for m, p, _ in self.requests() if m == method and fragment in p)

    def stored_files(self, kind: str, key: str) -> list[Path]:
        """Files in the server's storage holding object `key` of `kind` ("ac" or "cas")."""
        if self.kind == "nginx":
            p = self.storage / PREFIX.strip("/") / kind / key
            return [p] if p.exists() else []
        # bazel-remote: ac (validation off) -> raw.v2/<xx>/<key>-<rand>, cas -> cas.v2/<xx>/<key>-...
        sub = "raw.v2" if kind == "ac" else "cas.v2"
        return sorted((self.storage / sub / key[:2]).glob(f"{key}-*"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if self.kind == "bazel-remote" else signal.SIGQUIT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def _wait_ready(proc: subprocess.Popen, probe_url: str, ok: set[int], log: Path,
                context: object = None) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(probe_url, timeout=1, context=context) as r:
                if r.status in ok:
                    return
        except urllib.error.HTTPError as e:
            if e.code in ok:
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server did not answer {probe_url} within {_START_TIMEOUT}s")


# ---- nginx ---------------------------------------------------------------------------------------

_NGINX_LOG = re.compile(r"^(\S+) (\S+) (\d{3})\b")


def nginx_conf(workdir: Path, storage: Path, port: int, *, tls: tuple[Path, Path] | None = None,
               basic: tuple[str, str] | None = None, bearer: str | None = None) -> str:
    """A self-contained nginx.conf: a WebDAV PUT/GET/HEAD cache under /cache/ rooted at `storage`."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must be able to write the temp dirs
    tmp = workdir / "tmp"
    listen = f"listen 127.0.0.1:{port}{' ssl' if tls else ''};"
    tls_conf = f"ssl_certificate {tls[0]};\n        ssl_certificate_key {tls[1]};" if tls else ""
    auth = ""
    if basic:
        (workdir / "htpasswd").write_text(f"{basic[0]}:{{PLAIN}}{basic[1]}\n")
        auth = f'auth_basic "stella-build cache";\n            auth_basic_user_file {workdir / "htpasswd"};'
    if bearer:
        auth = f'if ($http_authorization != "Bearer {bearer}") {{ return 401; }}'
    return f"""# generated by tests/interop/cache_servers.py
{user}daemon off;
master_process on;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format stella '$request_method $uri $status $request_length $bytes_sent';
    access_log {workdir}/access.log stella;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000;
    server {{
        {listen}
        {tls_conf}
        root {storage};
        client_max_body_size 0;
        location {PREFIX} {{
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
            {auth}
        }}
    }}
}}
"""


def start_nginx(nginx: str, workdir: Path, **conf: object) -> CacheServer:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
    storage = workdir / "storage"
    (storage / PREFIX.strip("/")).mkdir(parents=True, exist_ok=True)
    for attempt in range(3):  # the free port may be taken between probe and bind
        port = free_port()
        conf_path = workdir / "nginx.conf"
        conf_path.write_text(nginx_conf(workdir, storage, port, **conf))  # type: ignore[arg-type]
        log = workdir / "nginx.out"
        proc = subprocess.Popen([nginx, "-p", str(workdir), "-c", str(conf_path), "-e", str(workdir / "error.log")],
                                stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        scheme = "https" if conf.get("tls") else "http"
        url = f"{scheme}://127.0.0.1:{port}{PREFIX}"
        ctx = None
        if conf.get("tls"):
            import ssl
            ctx = ssl.create_default_context(cafile=str(conf["tls"][0]))  # type: ignore[index]
        try:
            _wait_ready(proc, url + "ac/" + "0" * 64, {404, 401}, workdir / "error.log", ctx)
        except RuntimeError:
            if attempt == 2:
                raise
            continue
        return CacheServer("nginx", url, workdir, storage, proc, workdir / "access.log",
                           _nginx_parse, ctx)
    raise AssertionError("unreachable")


def _nginx_parse(line: str) -> tuple[str, str, int] | None:
    m = _NGINX_LOG.match(line)
    return (m.group(1), m.group(2), int(m.group(3))) if m else None


# ---- bazel-remote --------------------------------------------------------------------------------

# e.g. "2025/01/01 00:00:00  GET 200       127.0.0.1 /cache/cas/<hash>"
_BR_LOG = re.compile(r"\b(GET|PUT|HEAD)\s+(\d{3})\s+\S+\s+(/\S*)")


def bazel_remote_args(binary: str, storage: Path, port: int, storage_mode: str = "zstd") -> list[str]:
    return [binary, "--dir", str(storage), "--max_size", "1",
            "--http_address", f"127.0.0.1:{port}", "--grpc_address", "none",
            "--disable_http_ac_validation", "--storage_mode", storage_mode,
            "--access_log_level", "all"]


def start_bazel_remote(binary: str, workdir: Path, storage_mode: str = "zstd",
                       extra_args: tuple[str, ...] = ()) -> CacheServer:
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    log = workdir / "bazel-remote.log"
    for attempt in range(3):
        port = free_port()
        proc = subprocess.Popen(bazel_remote_args(binary, storage, port, storage_mode) + list(extra_args),
                                stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            _wait_ready(proc, f"http://127.0.0.1:{port}/status", {200}, log)
        except RuntimeError:
            if attempt == 2:
                raise
            continue
        return CacheServer("bazel-remote", f"http://127.0.0.1:{port}{PREFIX}", workdir, storage,
                           proc, log, _br_parse)
    raise AssertionError("unreachable")


def htpasswd_sha(user: str, password: str) -> str:
    """An htpasswd line in the {SHA} scheme, which both nginx and bazel-remote accept (no bcrypt
    tool needed in tests; use `htpasswd -B` for real servers)."""
    import base64
    import hashlib
    return f"{user}:{{SHA}}{base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()}\n"


def _br_parse(line: str) -> tuple[str, str, int] | None:
    m = _BR_LOG.search(line)
    return (m.group(1), m.group(3), int(m.group(2))) if m else None


# ---- fixtures ------------------------------------------------------------------------------------

@pytest.fixture
def nginx_cache(tmp_path: Path, tool) -> Iterator[CacheServer]:
    server = start_nginx(tool("nginx"), tmp_path / "nginx")
    yield server
    server.stop()


@pytest.fixture
def bazel_remote_cache(tmp_path: Path, tool) -> Iterator[CacheServer]:
    server = start_bazel_remote(tool("bazel-remote"), tmp_path / "bazel-remote", "zstd")
    yield server
    server.stop()


@pytest.fixture
def bazel_remote_uncompressed(tmp_path: Path, tool) -> Iterator[CacheServer]:
    server = start_bazel_remote(tool("bazel-remote"), tmp_path / "bazel-remote", "uncompressed")
    yield server
    server.stop()
