"""HTTP client for a shared remote cache in the Bazel HTTP cache layout.

Two namespaces under one base URL (which may carry a path prefix such as ``/cache/``):

- ``{base}/ac/<64 hex>``: action key -> our result record (opaque bytes, JSON, built by the caller);
- ``{base}/cas/<sha256 hex>``: blobs, keyed by SHA-256 so stock servers (bazel-remote) can verify them.

Any HTTP/1.1 server with GET/HEAD/PUT works: bazel-remote (``--disable_http_ac_validation``), nginx
with WebDAV PUT, object stores behind a proxy. What this module guarantees:

- A blob is written to its destination only after its size and SHA-256 were checked while it streamed
  into a temp file next to the destination. Truncated, corrupted or wrong-size bodies are a miss.
- A compressed (zstd) body is decoded through a bounded stream reader, so a small "zstd bomb" costs at
  most the expected size plus one chunk of memory and time, never the size it claims to expand to.
- 404 is a miss, never an error. Connection errors, timeouts, 5xx and 429 are retried a bounded number
  of times with exponential backoff; other statuses fail at once. A failure raises
  :class:`RemoteCacheError` naming the URL (credentials redacted); the caller decides whether to
  degrade (`handle_error`).
- Every request, retries included, has a total deadline (`deadline` seconds plus the transfer at
  `min_rate` bytes/s for a blob of known size), enforced by a watchdog that shuts the socket down:
  urllib3's read timeout bounds each socket read only, so a server dripping one byte every few
  seconds would otherwise hold a build forever. A deadline overrun is not retried.
- A circuit breaker stops talking to the server (every later call fails at once) after a
  connection-level failure, a deadline overrun, `max_failures` failed requests in a row, or
  `error_budget` failed requests in all: a dead or broken server costs a bounded time per build,
  not one timeout budget per action.
- Read-only mode (``upload=False``) never sends a PUT.
- zstd content encoding: downloads always offer ``Accept-Encoding: zstd`` (bazel-remote answers CAS
  reads compressed); uploads are compressed (``Content-Encoding: zstd`` + ``X-Digest-SizeBytes``, as
  bazel-remote expects) only after a one-time probe proved the server decodes them, because a plain
  WebDAV server would store the compressed bytes verbatim.

urllib3 and zstandard are imported lazily: importing this module costs only the standard library.
"""
from __future__ import annotations

import base64
import enum
import hashlib
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

if TYPE_CHECKING:  # pragma: no cover
    import urllib3

ENV_URL = "STELLA_REMOTE_CACHE"
ENV_TOKEN = "STELLA_REMOTE_CACHE_TOKEN"
ENV_USER = "STELLA_REMOTE_CACHE_USER"
ENV_PASSWORD = "STELLA_REMOTE_CACHE_PASSWORD"
ENV_CA = "STELLA_REMOTE_CACHE_CA"

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 16
_MAX_AC_BYTES = 64 << 20            # result records are small; refuse to buffer anything absurd
_ZSTD_MIN_UPLOAD = 1024             # below this, compression saves nothing worth a CPU call
_HEAD_BEFORE_PUT = 1 << 20          # large blobs: ask first, many CI runners upload the same outputs
_ZSTD_LEVEL = 3
_MIN_RATE = float(1 << 20)         # bytes/s a blob transfer may take before its deadline passes
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_PUT_OK = frozenset({200, 201, 204})
# Constant content for the zstd-upload probe (a real, verifiable CAS blob, harmless to keep).
_PROBE_DATA = b"stella-build remote cache: zstd upload probe v1\n" * 32

T = TypeVar("T")
_RAISE: Any = object()  # _with_retries: a body that keeps breaking off raises
_BROKEN: Any = object()


class RemoteCacheError(Exception):
    """A remote cache operation failed; the message names the operation and the (redacted) URL."""

    def __init__(self, message: str, *, url: str = "", status: int | None = None,
                 connection: bool = False, deadline: bool = False) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.connection = connection  # True when the server could not be reached at all
        self.deadline = deadline      # True when the request's total deadline passed


class Outcome(enum.Enum):
    """Per-blob result of a transfer."""

    HIT = "hit"            # downloaded and verified
    MISS = "miss"          # 404
    CORRUPT = "corrupt"    # body did not match the expected size/sha256 (or broke off): a miss
    UPLOADED = "uploaded"
    PRESENT = "present"    # upload skipped: the server already had it
    SKIPPED = "skipped"    # upload skipped: read-only mode
    ERROR = "error"        # transport failure, see BlobResult.error


@dataclass(frozen=True)
class BlobResult:
    sha256: str
    outcome: Outcome
    error: RemoteCacheError | None = None


@dataclass
class RemoteStats:
    """Counters since the client was made. Byte counts are on the wire unless named *_raw."""

    ac_hits: int = 0
    ac_misses: int = 0
    cas_hits: int = 0
    cas_misses: int = 0
    corrupt: int = 0
    bytes_down: int = 0
    bytes_down_raw: int = 0
    bytes_up: int = 0
    bytes_up_raw: int = 0
    ac_uploads: int = 0
    cas_uploads: int = 0
    cas_present: int = 0
    zstd_downloads: int = 0
    zstd_uploads: int = 0
    retries: int = 0
    errors: int = 0
    deadlines: int = 0         # requests stopped by their total deadline
    breaker_open: int = 0      # 1 once the circuit breaker disabled the remote for this run
    rejected: int = 0          # AC records refused (shape, declared outputs, signature)
    unauthenticated: int = 0   # AC hits used without a trusted signature (no trust configured)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def hits(self) -> int:
        return self.ac_hits + self.cas_hits

    @property
    def misses(self) -> int:
        return self.ac_misses + self.cas_misses + self.corrupt

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            out = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        out["hits"] = out["ac_hits"] + out["cas_hits"]
        out["misses"] = out["ac_misses"] + out["cas_misses"] + out["corrupt"]
        return out


class _Transient(Exception):
    """One attempt failed in a way worth retrying. `body` = the response broke off mid-body."""

    def __init__(self, reason: str, *, connection: bool = False, body: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.connection = connection
        self.body = body
        self.retry_after = retry_after


class _Corrupt(Exception):
    """The body arrived but is not the blob we asked for."""


@dataclass(frozen=True)
class _Endpoint:
    base: str                    # scheme://host[:port]/prefix/ without credentials
    auth_header: str | None
    ca_file: str | None


def _parse_url(url: str, env: os._Environ[str] | dict[str, str]) -> _Endpoint:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RemoteCacheError(f"remote cache URL must be http:// or https:// with a host, got {url!r}",
                               url=_redact(url))
    if parts.query or parts.fragment:
        raise RemoteCacheError(f"remote cache URL must not have a query or fragment: {_redact(url)}",
                               url=_redact(url))
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    base = urlunsplit((parts.scheme, netloc, path, "", ""))

    # Precedence: bearer token, then user/password from the environment, then user:pass in the URL.
    auth = None
    if env.get(ENV_TOKEN):
        auth = "Bearer " + env[ENV_TOKEN]
    elif env.get(ENV_USER):
        auth = _basic(env[ENV_USER], env.get(ENV_PASSWORD, ""))
    elif parts.username is not None:
        auth = _basic(unquote(parts.username), unquote(parts.password or ""))

    ca = env.get(ENV_CA) or None
    if ca and not os.path.isfile(ca):
        raise RemoteCacheError(f"{ENV_CA}={ca!r} is not a file (expected a PEM CA bundle)", url=base)
    return _Endpoint(base=base, auth_header=auth, ca_file=ca)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, "***@" + host, parts.path, parts.query, parts.fragment))


def _check_hex64(value: str, what: str) -> None:
    if not isinstance(value, str) or not _HEX64.match(value):
        raise ValueError(f"{what} must be 64 lowercase hex characters, got {value!r}")


class RemoteCache:
    """Client for one remote cache. Thread-safe; batch transfers run on a bounded thread pool."""

    def __init__(self, endpoint: _Endpoint, *, upload: bool, required: bool, timeout: float,
                 retries: int, max_parallel: int, compression: str, backoff: float,
                 backoff_max: float, fsync: bool = True, deadline: float | None = None,
                 min_rate: float = _MIN_RATE, max_failures: int = 3, error_budget: int = 10,
                 signer: Any = None, trust: Any = None) -> None:
        import urllib3  # lazy: only builds with a remote cache pay for it

        if compression not in ("auto", "zstd", "off"):
            raise ValueError(f"compression must be 'auto', 'zstd' or 'off', got {compression!r}")
        if timeout <= 0 or retries < 0 or max_parallel < 1:
            raise ValueError("timeout must be > 0, retries >= 0, max_parallel >= 1")
        deadline = timeout if deadline is None else deadline
        if deadline <= 0 or min_rate <= 0 or max_failures < 1 or error_budget < 1:
            raise ValueError("deadline and min_rate must be > 0, max_failures and error_budget >= 1")
        self.base_url = endpoint.base
        self.upload = upload
        self.required = required
        self.timeout = timeout
        self.retries = retries
        self.max_parallel = max_parallel
        self.compression = compression
        self.fsync = fsync
        self.deadline = deadline
        self.min_rate = min_rate
        self.max_failures = max_failures
        self.error_budget = error_budget
        # Authentication of AC records (engine/cache/records.py): `signer` (RecordSigner) signs
        # uploads; `trust` (TrustedKeys) are the keys whose records are accepted. The writer's own
        # key is trusted too: it can produce those records anyway.
        self.signer = signer
        if trust is None:
            from stella_build.engine.cache.records import TrustedKeys
            trust = TrustedKeys()
        if signer is not None and signer.keyid not in trust:
            trust.add(signer.public_key)
        self.trust = trust
        self.stats = RemoteStats()
        self._warned = False
        self._warned_kinds: set[str] = set()
        self._failures_in_a_row = 0
        self._failures = 0
        self._breaker_lock = threading.Lock()
        self._backoff = backoff
        self._backoff_max = backoff_max
        self._headers = {"User-Agent": "stella-build-remote-cache"}
        if endpoint.auth_header:
            self._headers["Authorization"] = endpoint.auth_header
        pool_kw: dict[str, Any] = {}
        if endpoint.ca_file:
            pool_kw["ca_certs"] = endpoint.ca_file
        self._http = urllib3.PoolManager(
            num_pools=2, maxsize=max_parallel, block=False, retries=False,
            timeout=urllib3.Timeout(connect=timeout, read=timeout), **pool_kw)
        # Connections that let the watchdog find the socket of a request past its deadline.
        http_pool, https_pool = _watched_pools()
        self._http.pool_classes_by_scheme = {"http": http_pool, "https": https_pool}
        self._watchdog = _Watchdog()
        self._down: RemoteCacheError | None = None
        self._zstd_upload: bool | None = {"zstd": True, "off": False}.get(compression)
        self._probe_lock = threading.Lock()
        self._executor = None
        self._executor_lock = threading.Lock()

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, *, upload: bool = True, required: bool = False,
                 timeout: float = 10.0, retries: int = 3, max_parallel: int = 8,
                 compression: str = "auto", backoff: float = 0.1, backoff_max: float = 2.0,
                 fsync: bool = True, env: dict[str, str] | None = None,
                 deadline: float | None = None, min_rate: float = _MIN_RATE, max_failures: int = 3,
                 error_budget: int = 10, signer: Any = None, trust: Any = None) -> "RemoteCache":
        """Client for `url` (http[s]://[user:pass@]host[:port][/prefix/]).

        Auth comes from STELLA_REMOTE_CACHE_TOKEN (bearer), else STELLA_REMOTE_CACHE_USER/_PASSWORD
        (basic), else user:pass in the URL; STELLA_REMOTE_CACHE_CA names a PEM CA bundle for https.
        `timeout` bounds connecting and each socket read; `retries` is the number of extra attempts on
        connection errors, timeouts, 5xx and 429 (backoff doubles from `backoff` up to `backoff_max`
        seconds). `compression`: "auto" (zstd when the server proves it decodes it), "zstd", "off".
        `fsync`: fsync each downloaded blob before renaming it into place (about half the cost of a
        small-blob download on loopback; turn off only if the caller syncs in bulk). `env` replaces
        os.environ for the auth/CA variables (tests).
        `deadline` (seconds, default `timeout`) bounds each whole request, retries and backoff
        included; a blob transfer of known size gets size / `min_rate` (bytes/s, default 1 MiB/s)
        more. The circuit breaker disables the client after `max_failures` failed requests in a
        row or `error_budget` in all (and at once on a connection failure or deadline overrun).
        `signer` (records.RecordSigner) signs uploaded AC records; `trust` (records.TrustedKeys)
        are the keys whose AC records readers accept (the signer's own key is added).
        """
        endpoint = _parse_url(url, os.environ if env is None else env)
        return cls(endpoint, upload=upload, required=required, timeout=timeout, retries=retries,
                   max_parallel=max_parallel, compression=compression, backoff=backoff,
                   backoff_max=backoff_max, fsync=fsync, deadline=deadline, min_rate=min_rate,
                   max_failures=max_failures, error_budget=error_budget, signer=signer, trust=trust)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._watchdog.stop()
        self._http.clear()

    def __enter__(self) -> "RemoteCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-write" if self.upload else "read-only"
        return f"RemoteCache({self.base_url!r}, {mode})"

    def handle_error(self, err: RemoteCacheError, warn: Callable[[str], None]) -> None:
        """The degrade policy in one place: re-raise when the remote is required, otherwise call
        `warn` for the first error only (later ones are counted in stats) and carry on locally."""
        if self.required:
            raise err
        with self._probe_lock:
            first, self._warned = not self._warned, True
        if first:
            warn(f"remote cache unavailable, continuing with the local cache only: {err}")

    def warn_once(self, kind: str, message: str, warn: Callable[[str], None]) -> None:
        """Call `warn(message)` the first time only for each `kind` (one line per kind per run)."""
        with self._probe_lock:
            first = kind not in self._warned_kinds
            self._warned_kinds.add(kind)
        if first:
            warn(message)

    @property
    def available(self) -> bool:
        """False once the circuit breaker made the client stop contacting the server."""
        return self._down is None

    @property
    def authenticates(self) -> bool:
        """True when AC records are accepted only with a trusted signature (trust configured)."""
        return bool(self.trust)

    # ---- action cache ------------------------------------------------------------------------

    def get_ac(self, key: str) -> bytes | None:
        """The result record stored under action key `key`, or None on a miss."""
        _check_hex64(key, "action key")
        url = self._url("ac", key)

        def attempt() -> bytes | None:
            resp = self._send("GET", url, {"Accept-Encoding": "identity"})
            try:
                if resp.status == 404:
                    return None
                self._expect(resp, {200}, "GET", url)
                data = self._read_all(resp, _MAX_AC_BYTES, url)
            finally:
                _release(resp)
            self.stats.add(bytes_down=len(data), bytes_down_raw=len(data))
            return data

        data = self._with_retries("GET", url, attempt, body_failure=_BROKEN)
        if data is _BROKEN:  # body kept breaking off: a miss
            self.stats.add(corrupt=1)
            return None
        self.stats.add(**({"ac_misses": 1} if data is None else {"ac_hits": 1}))
        return data

    def put_ac(self, key: str, data: bytes) -> bool:
        """Store `data` under action key `key`. False (and nothing sent) in read-only mode."""
        _check_hex64(key, "action key")
        if not self.upload:
            return False
        url = self._url("ac", key)
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))}

        def attempt() -> None:
            resp = self._send("PUT", url, headers, body=data)
            try:
                self._expect(resp, _PUT_OK, "PUT", url, hint=_AC_HINT)
            finally:
                _release(resp)

        self._with_retries("PUT", url, attempt, size=len(data))
        self.stats.add(ac_uploads=1, bytes_up=len(data), bytes_up_raw=len(data))
        return True

    # ---- content-addressed storage -----------------------------------------------------------

    def has_cas(self, sha256: str) -> bool:
        _check_hex64(sha256, "sha256")
        url = self._url("cas", sha256)

        def attempt() -> bool:
            resp = self._send("HEAD", url, {})
            try:
                if resp.status == 404:
                    return False
                self._expect(resp, {200}, "HEAD", url)
                return True
            finally:
                _release(resp)

        return self._with_retries("HEAD", url, attempt)

    def get_cas(self, sha256: str, size: int, dest: str | os.PathLike[str]) -> bool:
        """Download blob `sha256` of `size` bytes to `dest`. True on a verified hit; False on a miss
        or a body that failed verification (dest is then untouched). Raises RemoteCacheError on
        transport failure."""
        return self._fetch(sha256, size, Path(dest)) is Outcome.HIT

    def put_cas(self, sha256: str, path: str | os.PathLike[str]) -> Outcome:
        """Upload the file at `path` as blob `sha256`: UPLOADED, PRESENT (server had it; checked
        first for large blobs) or SKIPPED (read-only). The file is hashed while it is sent and a
        mismatch with `sha256` raises RemoteCacheError."""
        _check_hex64(sha256, "sha256")
        if not self.upload:
            return Outcome.SKIPPED
        path = Path(path)
        size = path.stat().st_size
        if size >= _HEAD_BEFORE_PUT and self.has_cas(sha256):
            self.stats.add(cas_present=1)
            return Outcome.PRESENT
        use_zstd = size >= _ZSTD_MIN_UPLOAD and self._zstd_upload_ok()
        self._put_blob(sha256, size, lambda: _FileSource(path), use_zstd)
        return Outcome.UPLOADED

    def fetch_blobs(self, items: Sequence[tuple[str, int, str | os.PathLike[str]]]) -> list[BlobResult]:
        """get_cas for many (sha256, size, dest) at once, at most max_parallel in flight. Results are
        in input order; transport failures come back as Outcome.ERROR instead of raising."""
        return self._map(lambda it: self._fetch(it[0], it[1], Path(it[2])), items)

    def upload_blobs(self, items: Sequence[tuple[str, str | os.PathLike[str]]]) -> list[BlobResult]:
        """put_cas for many (sha256, path) at once; same conventions as fetch_blobs."""
        return self._map(lambda it: self.put_cas(it[0], it[1]), items)

    # ---- internals: blob transfer ------------------------------------------------------------

    def _fetch(self, sha256: str, size: int, dest: Path) -> Outcome:
        _check_hex64(sha256, "sha256")
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        url = self._url("cas", sha256)
        accept = "identity" if self.compression == "off" else "zstd, identity"

        def attempt() -> Outcome:
            resp = self._send("GET", url, {"Accept-Encoding": accept})
            try:
                if resp.status == 404:
                    return Outcome.MISS
                self._expect(resp, {200}, "GET", url)
                self._download(resp, sha256, size, dest, url)
                return Outcome.HIT
            except _Corrupt:
                return Outcome.CORRUPT
            finally:
                _release(resp)

        outcome = self._with_retries("GET", url, attempt, body_failure=Outcome.CORRUPT, size=size)
        counter = {Outcome.HIT: "cas_hits", Outcome.MISS: "cas_misses"}.get(outcome, "corrupt")
        self.stats.add(**{counter: 1})
        return outcome

    def _download(self, resp: "urllib3.BaseHTTPResponse", sha256: str, size: int, dest: Path,
                  url: str) -> None:
        """Stream the body into a temp file beside `dest`, verify, then rename into place."""
        encoding = (resp.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding not in ("identity", "zstd"):
            raise _Corrupt(f"unsupported Content-Encoding {encoding!r}")
        declared = resp.headers.get("Content-Length")
        if encoding == "identity" and declared is not None and declared.isdigit() and int(declared) != size:
            raise _Corrupt(f"Content-Length {declared} != expected size {size}")
        wire = _WireReader(resp)
        if encoding == "zstd":
            import zstandard
            # A stream reader, not decompressobj(): decompress(chunk) returns everything one chunk
            # expands to (64 KiB of zstd can expand to GiBs), read(n) returns at most n bytes.
            reader = zstandard.ZstdDecompressor().stream_reader(
                wire, read_size=_CHUNK, read_across_frames=True, closefd=False)
            self.stats.add(zstd_downloads=1)
        else:
            reader = wire

        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".remote-", suffix=".tmp", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                digest, got = hashlib.sha256(), 0
                try:
                    # Never read more than one byte past the expected size: an endless or
                    # oversized body costs at most size + 1 bytes.
                    while data := reader.read(min(_CHUNK, size - got + 1)):
                        got += len(data)
                        if got > size:
                            raise _Corrupt(f"body longer than expected size {size}")
                        digest.update(data)
                        out.write(data)
                except _Corrupt:
                    raise
                except Exception as e:  # noqa: BLE001 - zstd errors, urllib3 protocol/timeouts
                    if encoding == "zstd" and _is_zstd_error(e):
                        raise _Corrupt(f"bad zstd stream: {e}") from e
                    raise _Transient(f"body broke off after {wire.count} bytes: {_describe(e)}",
                                     body=True) from e
                finally:
                    self.stats.add(bytes_down=wire.count)
                if got != size:
                    raise _Corrupt(f"got {got} bytes, expected {size}")
                if digest.hexdigest() != sha256:
                    raise _Corrupt(f"sha256 mismatch: got {digest.hexdigest()}")
                out.flush()
                os.fchmod(out.fileno(), 0o644)  # fixed mode, independent of umask
                if self.fsync:
                    os.fsync(out.fileno())
            os.replace(tmp, dest)
            tmp = ""
            self.stats.add(bytes_down_raw=size)
        finally:
            if tmp:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass

    def _put_blob(self, sha256: str, size: int, open_source: Callable[[], "_FileSource"],
                  use_zstd: bool) -> None:
        url = self._url("cas", sha256)
        sources: list[_FileSource] = []

        def attempt() -> None:
            src = open_source()
            sources.append(src)
            try:
                if use_zstd:
                    headers = {"Content-Type": "application/octet-stream", "Content-Encoding": "zstd",
                               "X-Digest-SizeBytes": str(size)}
                    body: Any = src.zstd_chunks()   # no length known up front: chunked encoding
                else:
                    headers = {"Content-Type": "application/octet-stream",
                               "Content-Length": str(size)}
                    body = src
                resp = self._send("PUT", url, headers, body=body)
                try:
                    if resp.status not in _PUT_OK and src.complete and src.sha256() != sha256:
                        raise _local_mismatch(src, sha256, url)
                    self._expect(resp, _PUT_OK, "PUT", url)
                finally:
                    _release(resp)
            finally:
                src.close()

        self._with_retries("PUT", url, attempt, size=size)
        src = sources[-1]
        if src.complete and src.sha256() != sha256:
            raise _local_mismatch(src, sha256, url)
        self.stats.add(cas_uploads=1, bytes_up=src.wire_bytes, bytes_up_raw=src.raw_bytes,
                       zstd_uploads=1 if use_zstd else 0)

    def _zstd_upload_ok(self) -> bool:
        if self._zstd_upload is not None:
            return self._zstd_upload
        with self._probe_lock:
            if self._zstd_upload is None:
                self._zstd_upload = self._probe_zstd_upload()
        return self._zstd_upload

    def _probe_zstd_upload(self) -> bool:
        """PUT a constant blob zstd-encoded and read it back as identity. Only a server that decoded
        it returns the original bytes; a plain file server returns the compressed bytes, which are
        then overwritten with an identity upload so no reader ever sees them."""
        import zstandard

        sha = hashlib.sha256(_PROBE_DATA).hexdigest()
        url = self._url("cas", sha)
        packed = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(_PROBE_DATA)
        headers = {"Content-Type": "application/octet-stream", "Content-Encoding": "zstd",
                   "X-Digest-SizeBytes": str(len(_PROBE_DATA)), "Content-Length": str(len(packed))}
        def put_zstd() -> bool:
            resp = self._send("PUT", url, headers, body=packed)
            try:
                if resp.status in (401, 403):  # not about zstd: the plain PUT would fail alike
                    self._expect(resp, _PUT_OK, "PUT", url)
                return resp.status in _PUT_OK
            finally:
                _release(resp)

        def put_plain() -> None:
            plain = {"Content-Type": "application/octet-stream", "Content-Length": str(len(_PROBE_DATA))}
            resp = self._send("PUT", url, plain, body=_PROBE_DATA)
            try:
                self._expect(resp, _PUT_OK, "PUT", url)
            finally:
                _release(resp)

        try:
            # Failed PUTs raise inside the attempt, so the circuit breaker counts them as failures.
            if self._with_retries("PUT", url, put_zstd):
                def read_back() -> tuple[int, str, bytes]:
                    r = self._send("GET", url, {"Accept-Encoding": "identity"})
                    try:
                        enc = (r.headers.get("Content-Encoding") or "identity").lower()
                        body = self._read_all(r, 1 << 20, url) if r.status == 200 else b""
                        return r.status, enc, body
                    finally:
                        _release(r)

                status, enc, body = self._with_retries("GET", url, read_back)
                if status == 200 and enc == "identity" and body == _PROBE_DATA:
                    return True
            # Not understood: make sure the probe key holds the right bytes.
            self._with_retries("PUT", url, put_plain)
        except RemoteCacheError:
            if self._down is not None:
                raise
        return False

    # ---- internals: HTTP plumbing ------------------------------------------------------------

    def _url(self, kind: str, key: str) -> str:
        return f"{self.base_url}{kind}/{quote(key)}"

    def _send(self, method: str, url: str, headers: dict[str, str], body: Any = None
              ) -> "urllib3.BaseHTTPResponse":
        """One HTTP exchange (headers only; the body is left to stream). Connection-level failures
        and retryable statuses become _Transient."""
        import urllib3

        all_headers = dict(self._headers)
        all_headers.update(headers)
        try:
            resp = self._http.request(method, url, headers=all_headers, body=body,
                                      preload_content=False, decode_content=False,
                                      redirect=False, retries=False)
        except urllib3.exceptions.SSLError as e:
            raise RemoteCacheError(f"remote cache {method} {url}: TLS error: {e} "
                                   f"(set {ENV_CA} to a CA bundle for a private CA)",
                                   url=url, connection=True) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise _Transient(_describe(e), connection=True) from e
        if resp.status in _RETRY_STATUSES or resp.status >= 500 and resp.status not in (501, 505, 507):
            retry_after = _retry_after(resp.headers.get("Retry-After"))
            reason = f"HTTP {resp.status} {resp.reason or ''}".strip()
            _release(resp)
            raise _Transient(reason, retry_after=retry_after)
        return resp

    def _expect(self, resp: "urllib3.BaseHTTPResponse", ok: set[int] | frozenset[int],
                method: str, url: str, hint: str = "") -> None:
        if resp.status in ok:
            return
        try:
            detail = resp.read(512, decode_content=False).decode("utf-8", "replace").strip()
        except Exception:  # noqa: BLE001 - best effort only
            detail = ""
        msg = f"remote cache {method} {url}: HTTP {resp.status} {resp.reason or ''}".rstrip()
        if resp.status in (401, 403):
            msg += (f" (check {ENV_TOKEN} or {ENV_USER}/{ENV_PASSWORD}"
                    + ("; a read-only server: use --remote-upload=false" if method == "PUT" else "")
                    + ")")
        if detail:
            msg += f": {detail.splitlines()[0][:200]}"
        if hint and resp.status == 400:
            msg += f" ({hint})"
        raise RemoteCacheError(msg, url=url, status=resp.status)

    def _read_all(self, resp: "urllib3.BaseHTTPResponse", limit: int, url: str) -> bytes:
        buf = bytearray()
        try:
            for chunk in resp.stream(_CHUNK, decode_content=False):
                buf += chunk
                if len(buf) > limit:
                    raise RemoteCacheError(f"remote cache GET {url}: body larger than {limit} bytes",
                                           url=url)
        except RemoteCacheError:
            raise
        except Exception as e:  # noqa: BLE001 - urllib3 protocol errors and timeouts
            raise _Transient(f"body broke off after {len(buf)} bytes: {_describe(e)}", body=True) from e
        return bytes(buf)

    def _with_retries(self, method: str, url: str, attempt: Callable[[], T],
                      body_failure: Any = _RAISE, size: int = 0) -> T:
        """Run `attempt` up to 1 + retries times within one total deadline (`deadline` + `size` /
        `min_rate` seconds, backoff included). A body that keeps breaking off returns
        `body_failure` when given (a download miss); otherwise exhaustion raises RemoteCacheError.
        Every failure is counted by the circuit breaker; a success resets its run of failures."""
        if self._down is not None:
            raise self._down
        limit = self.deadline + size / self.min_rate
        slot = self._watchdog.arm(limit)
        last: _Transient | None = None
        tries = 0
        try:
            for n in range(self.retries + 1):
                if n:
                    delay = min(self._backoff_max, self._backoff * (2 ** (n - 1)))
                    if last is not None and last.retry_after is not None:
                        delay = min(self._backoff_max, max(delay, last.retry_after))
                    if slot.remaining() <= delay:  # no time left for another attempt
                        break
                    self.stats.add(retries=1)
                    time.sleep(delay)
                    if self._down is not None:  # another thread found the server dead meanwhile
                        raise self._down
                tries += 1
                try:
                    result = attempt()
                except _Transient as e:
                    if slot.expired:
                        raise self._deadline_error(method, url, limit) from None
                    last = e
                    continue
                except RemoteCacheError as e:
                    if slot.expired:
                        raise self._deadline_error(method, url, limit) from None
                    self.stats.add(errors=1)
                    raise self._failed(e) from None
                if slot.expired:  # answered, but only because the watchdog cut the body short
                    raise self._deadline_error(method, url, limit)
                with self._breaker_lock:
                    self._failures_in_a_row = 0
                return result
        finally:
            self._watchdog.disarm(slot)
        assert last is not None
        self.stats.add(errors=1)
        err = RemoteCacheError(
            f"remote cache {method} {url}: {last} (after {tries} attempt{'s' if tries > 1 else ''})",
            url=url, connection=last.connection)
        # A server we cannot reach at all is not asked again (trip at once).
        err = self._failed(err, trip=last.connection and not last.body)
        if last.body and body_failure is not _RAISE:
            return body_failure
        raise err

    def _deadline_error(self, method: str, url: str, limit: float) -> RemoteCacheError:
        self.stats.add(errors=1, deadlines=1)
        err = RemoteCacheError(f"remote cache {method} {url}: timed out: no complete answer within "
                               f"{limit:.1f} s (the total deadline of a request; the server is too "
                               "slow or stalls)", url=url, deadline=True)
        return self._failed(err, trip=True)

    def _failed(self, err: RemoteCacheError, trip: bool = False) -> RemoteCacheError:
        """Count a failed request for the circuit breaker; returns the error to raise (the
        breaker's own error, naming the cause, when this failure opened it)."""
        with self._breaker_lock:
            self._failures_in_a_row += 1
            self._failures += 1
            if not (trip or self._failures_in_a_row >= self.max_failures
                    or self._failures >= self.error_budget):
                return err
            if self._down is None:
                why = ("" if trip else f" ({self._failures_in_a_row} failed requests in a row)"
                       if self._failures_in_a_row >= self.max_failures
                       else f" ({self._failures} failed requests)")
                self._down = RemoteCacheError(f"{err}{why} [remote cache disabled for the rest of this run]",
                                              url=err.url, status=err.status,
                                              connection=err.connection, deadline=err.deadline)
                self.stats.add(breaker_open=1)
            return self._down

    def _map(self, fn: Callable[[Any], Outcome], items: Sequence[Any]) -> list[BlobResult]:
        def one(item: Any) -> BlobResult:
            try:
                return BlobResult(item[0], fn(item))
            except RemoteCacheError as e:
                return BlobResult(item[0], Outcome.ERROR, e)

        if len(items) <= 1 or self.max_parallel == 1:
            return [one(it) for it in items]
        return list(self._pool().map(one, items))

    def _pool(self) -> Any:
        with self._executor_lock:
            if self._executor is None:
                from concurrent.futures import ThreadPoolExecutor
                self._executor = ThreadPoolExecutor(max_workers=self.max_parallel,
                                                    thread_name_prefix="stella-remote")
            return self._executor


_AC_HINT = "bazel-remote must run with --disable_http_ac_validation to store stella-build records"


class _WireReader:
    """File-like view of a response body (as sent, still encoded) that counts what it read."""

    def __init__(self, resp: "urllib3.BaseHTTPResponse") -> None:
        self._resp = resp
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._resp.read(n if n and n > 0 else _CHUNK, decode_content=False)
        self.count += len(data)
        return data


# ---- total deadline per request ----------------------------------------------------------------
#
# Hand-written because urllib3 has none: its Timeout(read=...) bounds each socket operation (the
# time between bytes) and Timeout(total=...) only shortens that per-operation bound, so a server
# dripping one byte every few seconds holds a request forever. A watchdog thread shuts down the
# socket of a request past its deadline, which makes the blocked read fail at once in the
# requesting thread; this is what urllib3's HTTPResponse.shutdown() does, but that exists only
# once the headers arrived, and a stalling server may never send them.

_local = threading.local()   # the deadline slot of the request running on this thread


class _Slot:
    __slots__ = ("deadline", "conn", "expired", "previous")

    def __init__(self, deadline: float, previous: "_Slot | None") -> None:
        self.deadline = deadline
        self.conn: Any = None        # the connection the request runs on (set by _Watched.request)
        self.expired = False
        self.previous = previous

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


class _Watchdog:
    """One daemon thread per client, started on first use, sleeping until the nearest deadline."""

    _RECHECK = 0.05  # a slot whose request has no socket yet (connecting) is looked at again

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._slots: set[_Slot] = set()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def arm(self, seconds: float) -> _Slot:
        slot = _Slot(time.monotonic() + seconds, getattr(_local, "slot", None))
        _local.slot = slot
        with self._cond:
            self._slots.add(slot)
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name="stella-remote-deadline",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()
        return slot

    def disarm(self, slot: _Slot) -> None:
        _local.slot = slot.previous
        with self._cond:
            self._slots.discard(slot)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                for slot in [s for s in self._slots if s.deadline <= now]:
                    slot.expired = True
                    if _shut_down(slot):
                        self._slots.discard(slot)
                    else:
                        slot.deadline = now + self._RECHECK
                nearest = min((s.deadline for s in self._slots), default=None)
                self._cond.wait(None if nearest is None else max(0.0, nearest - time.monotonic()))


def _shut_down(slot: _Slot) -> bool:
    """Shut down the socket of the slot's request; False when it has none (yet)."""
    import socket

    conn = slot.conn
    sock = getattr(conn, "sock", None)
    if sock is None or getattr(conn, "_stella_slot", None) is not slot:
        return False
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: the request fails (or has finished) anyway
    return True


_POOLS: tuple[Any, Any] | None = None


def _watched_pools() -> tuple[Any, Any]:
    """urllib3 pool classes whose connections tell the running request's slot which socket to
    shut down (pool classes are chosen per scheme by PoolManager.pool_classes_by_scheme)."""
    global _POOLS
    if _POOLS is None:
        import urllib3
        from urllib3.connection import HTTPConnection as _Plain, HTTPSConnection as _TLS

        class _Watched:
            def request(self, *args: Any, **kwargs: Any) -> Any:
                slot = getattr(_local, "slot", None)
                self._stella_slot = slot  # a reused connection belongs to its newest request only
                if slot is not None:
                    slot.conn = self
                return super().request(*args, **kwargs)  # type: ignore[misc]

        # Named as urllib3's own classes: their names appear in connection error messages.
        class HTTPConnection(_Watched, _Plain):
            pass

        class HTTPSConnection(_Watched, _TLS):
            pass

        class _HTTPPool(urllib3.HTTPConnectionPool):
            ConnectionCls = HTTPConnection

        class _HTTPSPool(urllib3.HTTPSConnectionPool):
            ConnectionCls = HTTPSConnection

        _POOLS = (_HTTPPool, _HTTPSPool)
    return _POOLS


class _FileSource:
    """A file read for upload: hashes (and counts) what it reads, as a file object or zstd chunks."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, "rb")
        self._h = hashlib.sha256()
        self.raw_bytes = 0
        self.wire_bytes = 0
        self.complete = False

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n if n and n > 0 else _CHUNK)
        if data:
            self._h.update(data)
            self.raw_bytes += len(data)
            self.wire_bytes += len(data)
        else:
            self.complete = True
        return data

    def zstd_chunks(self) -> Iterator[bytes]:
        import zstandard

        comp = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compressobj()
        while data := self._f.read(1 << 20):
            self._h.update(data)
            self.raw_bytes += len(data)
            out = comp.compress(data)
            if out:
                self.wire_bytes += len(out)
                yield out
        out = comp.flush()
        self.wire_bytes += len(out)
        self.complete = True
        yield out

    def sha256(self) -> str:
        return self._h.hexdigest()

    def close(self) -> None:
        self._f.close()


def _local_mismatch(src: _FileSource, sha256: str, url: str) -> RemoteCacheError:
    return RemoteCacheError(f"remote cache PUT {url}: local file content has sha256 {src.sha256()}, "
                            f"not {sha256} (the local blob is corrupt or changed while uploading)",
                            url=url)


def _release(resp: "urllib3.BaseHTTPResponse") -> None:
    """Return the connection to the pool. A small unread body (a 404 page) is drained to keep the
    connection alive; a large or unknown-length unread body closes it instead of being read."""
    try:
        if not resp.closed:
            remaining = resp.length_remaining
            if remaining is not None and remaining <= _CHUNK:
                resp.drain_conn()
            else:
                resp.close()
    except Exception:  # noqa: BLE001 - cleanup only
        resp.close()
    resp.release_conn()


def _retry_after(value: str | None) -> float | None:
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


def _is_zstd_error(e: BaseException) -> bool:
    return type(e).__name__ == "ZstdError"


def _describe(e: BaseException) -> str:
    """Short reason for urllib3's nested exceptions (the innermost cause is the informative one)."""
    reason = getattr(e, "reason", None)
    if isinstance(reason, BaseException):
        return f"{type(reason).__name__}: {reason}"
    return f"{type(e).__name__}: {e}"
