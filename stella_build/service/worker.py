"""The build process of one run: `python -m stella_build.service.worker` (started by runner.py).

Why a process per run: a build is CPU- and memory-heavy and may crash; in its own process group
it can be cancelled (killpg) without touching the server, the server's memory stays flat, and
`materialize`'s per-process temp names never collide between runs.

Protocol: one JSON line on stdin (the spec), JSON lines on stdout (the protocol fd; fd 1 is
pointed at stderr so no library print can corrupt it):
    {"type": "progress", "done": 3, "total": 9}
    {"type": "result", "status": "succeeded"|"failed", "exit_code": 0, "errors": [...],
     "actions": {...}, "files": [{path, sha256, blake3, size, mode}], "manifest_sha256": ...,
     "verify_failed": false}
The spec: {run_id, workspace, label, selectors, sign (absolute key path or null), public_key,
cache_dir, jobs, overlay_root, manifest, executor (null: local), remote_cache (URL or null)}.

Stdin stays open for the run's lifetime: when it reaches EOF the server is gone (even `kill -9`),
and the worker kills its whole process group (itself and the engine's action workers) at once,
so a crashed server never leaves builds running; the restarted server resumes the run.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

PROGRESS_INTERVAL = 0.2  # seconds between progress lines (the last one always goes out)


def _watch_parent(stdin) -> None:
    """Kill the process group when the server's end of stdin closes."""
    try:
        while stdin.read(1 << 16):
            pass
    finally:
        os.killpg(os.getpgid(0), signal.SIGKILL)


class _Protocol:
    def __init__(self, fd: int):
        self.out = os.fdopen(fd, "w", buffering=1, encoding="utf-8")
        self.last = 0.0

    def send(self, obj: dict) -> None:
        self.out.write(json.dumps(obj, sort_keys=True) + "\n")
        self.out.flush()

    def progress(self, event: str, _outcome, done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - self.last >= PROGRESS_INTERVAL:
            self.last = now
            self.send({"type": "progress", "done": done, "total": total})


def collect_files(out: Path, cache_dir: Path) -> list[dict]:
    """Every regular file under the target's output directory, hashed once (sha256 for the API's
    ETag, BLAKE3 for the cache), each made sure to be in the CAS so the service serves it from
    there (source files passed through unchanged are copied in)."""
    from stella_build.engine.cache.cas import Cas
    from stella_build.engine.encode.digest import file_digests

    cas = Cas(cache_dir)
    files = []
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        b3, sha, size = file_digests(path)
        if not cas.has(b3, size):
            fd, tmp = tempfile.mkstemp(dir=cas.tmp, prefix="service-")
            os.close(fd)
            shutil.copyfile(path, tmp)
            cas.adopt(Path(tmp), b3, size)
        mode = 0o755 if os.stat(path).st_mode & 0o111 else 0o644
        files.append({"path": path.relative_to(out).as_posix(), "sha256": sha, "blake3": b3,
                      "size": size, "mode": mode})
    return files


def _errors(infos, overlay_display: str | None, real_display: str) -> list[dict]:
    out = []
    for info in infos:
        data = info.to_json()
        if overlay_display and data.get("file") == overlay_display:
            data["file"] = real_display  # the overlay stands for the package's Exportfile
        data["reason"] = data.get("reason") or "build-failed"
        out.append(data)
    return out


def _remote(url: str | None):
    """The RemoteCache of `[service] remote_cache` (credentials from the server's environment)."""
    if not url:
        return None
    from stella_build.engine.cache.remote import RemoteCache, RemoteCacheError
    from stella_build.engine.errors import UsageError
    try:
        return RemoteCache.from_url(url)
    except (ValueError, RemoteCacheError) as exc:
        raise UsageError(f"bad remote cache URL: {exc}", field="remote_cache",
                         reason="bad-remote-cache-url") from None


def run(spec: dict, proto: _Protocol) -> dict:
    """Build the spec's label; the result message (see the module docstring)."""
    from stella_build import buildrun
    from stella_build.engine.errors import StellaError
    from stella_build.engine.executors import parse_executor
    from stella_build.engine.labels import parse_label
    from stella_build.engine.materialize import out_dir
    from stella_build.engine.rule_api import BuildOptions, Selectors
    from stella_build.engine.workspace import Workspace
    from stella_build.service.overlay import with_selectors

    label = parse_label(spec["label"])
    base = Workspace.find(explicit=Path(spec["workspace"]))
    real_display = os.path.relpath(base.exportfile(label.package), base.root)
    overlay_display = None
    try:
        selectors = Selectors(**(spec.get("selectors") or {})).model_dump(exclude_none=True)
        workspace, overlay_display = with_selectors(base, label.package, label.name, selectors,
                                                    Path(spec["overlay_root"]))
        # None: the server's STELLA_EXECUTOR, else local (buildrun.executor_from_env)
        executor = parse_executor(spec["executor"], field="executor") if spec.get("executor") else None
        remote = _remote(spec.get("remote_cache"))
        request = buildrun.BuildRequest(patterns=[str(label)], options=BuildOptions(sign=spec.get("sign")),
                                        cache_dir=Path(spec["cache_dir"]), jobs=int(spec["jobs"]),
                                        executor=executor, remote=remote)
        try:
            _graph, summary = buildrun.execute(workspace, request, progress=proto.progress,
                                               warn=lambda m: print(f"warning: {m}", file=sys.stderr))
        finally:
            if remote is not None:
                remote.close()
        counts = summary.counts()
        if not summary.ok:
            return {"status": "failed", "exit_code": summary.exit_code, "actions": counts,
                    "errors": _errors(summary.errors, overlay_display, real_display), "files": []}
        if summary.post_build:
            buildrun.carry_out_post_build(summary, workspace)
    except StellaError as exc:
        return {"status": "failed", "exit_code": exc.exit_code, "actions": None, "files": [],
                "errors": _errors(exc.errors, overlay_display, real_display)}
    out = out_dir(workspace.root, label)
    files = collect_files(out, Path(spec["cache_dir"]))
    result = {"status": "succeeded", "exit_code": 0, "actions": counts, "errors": [], "files": files,
              "manifest_sha256": next((f["sha256"] for f in files if f["path"] == spec.get("manifest")), None)}
    if spec.get("sign"):
        problem = _verify_signed(out, spec.get("public_key"))
        if problem is not None:
            result.update(status="failed", exit_code=3, verify_failed=True, files=[],
                          errors=[{"reason": "verification-failed", "target": str(label), "file": problem[0],
                                   "message": f"the signed outputs do not verify: {problem[1]}"}])
    return result


def _verify_signed(out: Path, public_key: str | None) -> tuple[str | None, str] | None:
    """Verify a signed run's outputs before publishing them (delivery.verify, offline): None when
    they verify, else (file, message) of the first failed check."""
    from stella_build.delivery.verify import verify_bundle
    from stella_build.engine.errors import StellaError

    try:
        if public_key and Path(public_key).is_file():
            report = verify_bundle(out, key=public_key)
        else:
            report = verify_bundle(out, trust_bundle_key=True)
    except StellaError as exc:
        return None, str(exc)
    if report.ok:
        return None
    bad = report.failed()[0]
    return bad.file, f"{bad.name}: {bad.message}"


def main() -> int:
    # The protocol gets a private copy of stdout; fd 1 becomes stderr for everything else.
    proto = _Protocol(os.dup(1))
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # Import the engine and load the rules before waiting: a standby worker (runner.py) is then
    # ready to build the moment its spec arrives.
    import stella_build.buildrun  # noqa: F401
    import stella_build.engine.build  # noqa: F401
    from stella_build.engine.registry import rules

    rules()
    stdin = os.fdopen(os.dup(0), "r", encoding="utf-8")
    line = stdin.readline()
    if not line:  # the server went away before giving us a run
        return 0
    spec = json.loads(line)
    threading.Thread(target=_watch_parent, args=(stdin,), daemon=True).start()
    try:
        result = run(spec, proto)
    except Exception as exc:  # a bug: the run fails with a reason, the traceback goes to the log
        traceback.print_exc()
        result = {"status": "failed", "exit_code": 1, "actions": None, "files": [],
                  "errors": [{"reason": "internal-error", "target": spec.get("label"),
                              "message": f"{type(exc).__name__}: {exc}"}]}
    proto.send({"type": "result", **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
