"""The HTTP client of `stella-build remote` (httpx; SSE parsed by httpx-sse).

Failures are RemoteError(message, exit_code, reason) with the CLI's exit codes: 1 the run failed
(or the server failed), 2 usage (bad profile, bad request, not found), 3 a downloaded file does not
match its sha256 (verification failed), 4 missing/unknown token or scope not granted (trust
material), 5 the server cannot be reached. A failed run exits with the run's own exit code (what
`stella-build build` would have exited with).
"""
from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import httpx

_CHUNK = 1 << 20
# Network retries of one download or event stream (a restarting server): attempts and pause.
RETRIES = 20
RETRY_PAUSE = 0.5
_STATUS_EXIT = {400: 2, 401: 4, 403: 4, 404: 2, 405: 2, 409: 2, 410: 1, 422: 2, 429: 1}


class RemoteError(Exception):
    def __init__(self, message: str, exit_code: int, reason: str, *, file: str | None = None,
                 details: list | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.reason = reason
        self.file = file
        self.details = details or []


def _error_from(response: httpx.Response) -> RemoteError:
    try:
        body = response.json()
        details = body.get("details") or []
        reason = next((d.get("reason") for d in details if d.get("reason")), None) or body.get("code")
        message = f"{body.get('code')}: {body.get('message')}"
    except ValueError:
        details, reason, message = [], f"http-{response.status_code}", response.text[:200]
    code = _STATUS_EXIT.get(response.status_code, 1)
    return RemoteError(f"HTTP {response.status_code} {message}", code, reason or f"http-{response.status_code}",
                       details=details)


def safe_relpath(path: str) -> PurePosixPath:
    """A server-given output path as a relative path that stays inside the download directory;
    RemoteError exit 3 (reason unsafe-path) for absolute paths, `..`, backslashes or NUL."""
    p = PurePosixPath(path)
    if (not path or p.is_absolute() or any(part in ("..", ".") for part in p.parts) or "\\" in path
            or "\x00" in path or str(p) != path):
        raise RemoteError(f"the server named an unsafe output path {path!r}", 3, "unsafe-path", file=path)
    return p


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class Client:
    def __init__(self, server: str, token: str | None = None, tenant: str | None = None,
                 timeout: float = 60.0, transport: httpx.BaseTransport | None = None):
        headers = {"User-Agent": "stella-build-remote/1"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if tenant:
            headers["X-Stella-Tenant"] = tenant
        self.server = server.rstrip("/")
        self.http = httpx.Client(base_url=self.server, headers=headers, transport=transport,
                                 timeout=httpx.Timeout(timeout, connect=5.0))

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise RemoteError(f"cannot reach {self.server}: {type(exc).__name__}: {exc}", 5,
                              "server-unreachable") from None
        if response.status_code >= 400:
            raise _error_from(response)
        return response

    # -- runs ---------------------------------------------------------------------------------
    def submit(self, profile: str, *, selectors: dict | None = None, sign: bool = False,
               idempotency_key: str | None = None) -> dict:
        """POST /runs; the 202 body. A fresh Idempotency-Key is sent when none is given, so a
        retried submit never makes two runs."""
        body = {"profile": profile, "sign": sign}
        if selectors:
            body["selectors"] = selectors
        key = idempotency_key or str(uuid.uuid4())
        return self._call("POST", "/api/export/runs", json=body, headers={"Idempotency-Key": key}).json()

    def run(self, run_id: str) -> dict:
        return self._call("GET", f"/api/export/runs/{run_id}").json()

    def cancel(self, run_id: str) -> dict:
        return self._call("POST", f"/api/export/runs/{run_id}/cancel").json()

    def runs(self, *, status: str | None = None, profile: str | None = None, limit: int = 50) -> list[dict]:
        """Up to `limit` runs, newest first (following cursors)."""
        items: list[dict] = []
        cursor = None
        while len(items) < limit:
            params = {"limit": min(200, limit - len(items))}
            params.update({k: v for k, v in (("status", status), ("profile", profile), ("cursor", cursor)) if v})
            page = self._call("GET", "/api/export/runs", params=params).json()
            items += page["items"]
            cursor = page.get("nextCursor")
            if not cursor:
                break
        return items

    def events(self, run_id: str, last_event_id: str | None = None) -> Iterator[tuple[str, str, dict]]:
        """(id, event, data) of the run's events until its final one, reconnecting with
        Last-Event-ID when the connection drops (RETRIES times)."""
        import json

        from httpx_sse import connect_sse

        failures = 0
        while True:
            headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
            try:
                with connect_sse(self.http, "GET", f"/api/export/runs/{run_id}/events", headers=headers,
                                 timeout=httpx.Timeout(60.0, connect=5.0)) as source:
                    if source.response.status_code >= 400:
                        source.response.read()
                        raise _error_from(source.response)
                    for sse in source.iter_sse():
                        if not sse.data:
                            continue  # a comment-only block (heartbeat): no event
                        failures = 0
                        if sse.id:
                            last_event_id = sse.id
                        data = json.loads(sse.data) if sse.data else {}
                        yield sse.id, sse.event, data
                        if sse.event in ("succeeded", "failed", "cancelled"):
                            return
                return  # the server ended the stream (the run is over)
            except httpx.TransportError as exc:
                failures += 1
                if failures > RETRIES:
                    raise RemoteError(f"lost the event stream of {run_id}: {exc}", 5, "server-unreachable") from None
                time.sleep(RETRY_PAUSE)

    # -- downloads ----------------------------------------------------------------------------
    def download(self, run: dict, out_dir: Path, *, on_file: Callable[[str, str], None] | None = None) -> dict:
        """Download every output of a succeeded `run` (its GET /runs/{id} body) into `out_dir`,
        resuming `.part` files with Range + If-Range, verifying each file's sha256 (the ETag).
        Returns {"downloaded": n, "resumed": n, "skipped": n, "bytes": n}. RemoteError 3 on a
        digest mismatch (the partial file is removed), 5 when the server stays unreachable."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        root = out_dir.resolve()
        stats = {"downloaded": 0, "resumed": 0, "skipped": 0, "bytes": 0}
        for f in run["outputs"]:
            rel = safe_relpath(f["path"])
            dest = out_dir.joinpath(*rel.parts)
            if not dest.resolve().is_relative_to(root):
                raise RemoteError(f"{f['path']} would leave {out_dir}", 3, "unsafe-path", file=f["path"])
            if dest.is_file() and dest.stat().st_size == f["bytes"] and sha256_file(dest) == f["sha256"]:
                stats["skipped"] += 1
                if on_file:
                    on_file(f["path"], "present")
                continue
            resumed = self._fetch(f, dest, stats)
            stats["resumed" if resumed else "downloaded"] += 1
            if on_file:
                on_file(f["path"], "resumed" if resumed else "downloaded")
        return stats

    def _fetch(self, f: dict, dest: Path, stats: dict) -> bool:
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        resumed = part.is_file() and part.stat().st_size > 0
        failures = 0
        while True:
            offset = part.stat().st_size if part.is_file() else 0
            if offset > f["bytes"]:
                part.unlink()
                offset = 0
            try:
                if offset < f["bytes"] or f["bytes"] == 0:
                    self._stream_into(f, part, offset, stats)
                break
            except httpx.TransportError as exc:
                failures += 1
                if failures > RETRIES:
                    raise RemoteError(f"download of {f['path']} kept failing: {exc}", 5,
                                      "server-unreachable", file=f["path"]) from None
                resumed = True
                time.sleep(RETRY_PAUSE)
        got = sha256_file(part)
        if got != f["sha256"]:
            part.unlink(missing_ok=True)
            raise RemoteError(f"{f['path']}: sha256 {got} does not match the run's {f['sha256']}", 3,
                              "digest-mismatch", file=f["path"])
        os.replace(part, dest)
        return resumed

    def _stream_into(self, f: dict, part: Path, offset: int, stats: dict) -> None:
        etag = f'"{f["sha256"]}"'
        headers = {"Range": f"bytes={offset}-", "If-Range": etag} if offset else {}
        with self.http.stream("GET", f["url"], headers=headers) as r:
            if r.status_code >= 400:
                r.read()
                raise _error_from(r)
            served = (r.headers.get("etag") or "").strip()
            if served != etag:
                raise RemoteError(f"{f['path']}: the server's ETag {served} is not the run's sha256", 3,
                                  "etag-mismatch", file=f["path"])
            if r.status_code == 206:
                start = int(r.headers["content-range"].split()[1].split("-")[0])
                if start != offset:
                    raise RemoteError(f"{f['path']}: asked for byte {offset}, got {start}", 3,
                                      "range-mismatch", file=f["path"])
                mode = "ab"
            else:
                mode = "wb"  # a full answer: start over
            with open(part, mode) as out:
                for chunk in r.iter_bytes(_CHUNK):
                    out.write(chunk)
                    stats["bytes"] += len(chunk)
                out.flush()
                os.fsync(out.fileno())
