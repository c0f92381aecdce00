"""Execution: compute action keys in dependency order, serve hits from the cache, run misses on a
pool of hermetic worker processes (`-j`), and store results.

Keys of derived inputs are known only once their producers finish, so keys are computed as actions
become ready. A hit is served only if every blob it names is present with the right size.
"""
from __future__ import annotations

import itertools
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from stella_build.engine.actions import action_key, key_record
from stella_build.engine.cache.cas import Cas
from stella_build.engine.cache.index import Index
from stella_build.engine.encode.digest import file_digests
from stella_build.engine.rule_api import ActionSpec, Artifact
from stella_build.engine.sandbox import SCRUBBED_ENV, run_action, worker_init

_RACY_SECONDS = 2.0  # files modified this recently are re-hashed next time (racy-git problem)


@dataclass
class Outcome:
    spec: ActionSpec
    key: str | None = None
    record: dict | None = None
    outputs: dict[str, dict] = field(default_factory=dict)  # output path → record
    stats: dict = field(default_factory=dict)
    status: str = "pending"  # cached | executed | failed | skipped
    remote: bool = False  # served by the remote cache
    error: dict | None = None
    differences: list[dict] = field(default_factory=list)


class SourceDigests:
    """BLAKE3/SHA-256 of source files, memoized in the index by (size, mtime, inode, ctime)."""

    def __init__(self, index: Index):
        self.index = index
        self.memo: dict[str, tuple[str, str, int]] = {}

    def digests(self, paths: list) -> dict[str, tuple[str, str, int]]:
        names = [p if isinstance(p, str) else str(p) for p in paths]
        wanted = [p for p in names if p not in self.memo]
        if wanted:
            stored = self.index.get_stats(wanted)
            fresh: dict[str, list] = {}
            now = time.time()
            for p in wanted:
                st = os.stat(p)
                sig = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
                old = stored.get(p)
                if old and old[:4] == sig:
                    self.memo[p] = (old[4], old[5], st.st_size)
                    continue
                b3, sha, size = file_digests(p)
                self.memo[p] = (b3, sha, size)
                if now - st.st_mtime > _RACY_SECONDS:
                    fresh[p] = sig + [b3, sha]
            self.index.put_stats(fresh)
        return {p: self.memo[p] for p in names}


class Executor:
    def __init__(self, cache_dir: Path, jobs: int, *,
                 progress: Callable[[str, Outcome, int, int], None] | None = None,
                 remote=None, warn: Callable[[str], None] | None = None):
        self.cache_dir = cache_dir
        self.remote = remote  # engine.cache.remote.RemoteCache or None
        self.warn = warn or (lambda msg: None)
        self.remote_hits = 0
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.index = Index(cache_dir)
        self.cas = Cas(cache_dir)
        self.jobs = max(1, jobs)
        self.sources = SourceDigests(self.index)
        self.progress = progress or (lambda *a: None)
        self._pool: ProcessPoolExecutor | None = None
        self._sandbox_seq = itertools.count()
        self._saved_env: dict[str, str | None] = {}

    # -- worker pool (started only when something must run) ----------------------------------
    def _pool_get(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # Spawned workers inherit the environment at spawn time: PYTHONHASHSEED must be set
            # before the interpreter starts, so it is set here for the pool's lifetime.
            for k in ("PYTHONHASHSEED",):
                self._saved_env[k] = os.environ.get(k)
                os.environ[k] = SCRUBBED_ENV[k]
            self._pool = ProcessPoolExecutor(max_workers=self.jobs,
                                             mp_context=multiprocessing.get_context("spawn"),
                                             initializer=worker_init)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            for k, v in self._saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.index.close()

    # -- inputs and keys --------------------------------------------------------------------
    def _staged_inputs(self, spec: ActionSpec, done: dict[str, Outcome]) -> list[list]:
        """[sandbox name, source path, blake3, tree root or None] for every staged file."""
        staged: list[list] = []
        sources = [a.path_str for a in spec.inputs.values() if a.producer is None]
        digests = self.sources.digests(sources) if sources else {}
        for name, art in sorted(spec.inputs.items()):
            if art.producer is None:
                path = art.path_str
                staged.append([name, path, digests[path][0], None])
                continue
            producer = done[art.producer]
            if art.tree:
                prefix = art.output
                for path, rec in sorted(producer.outputs.items()):
                    if path.startswith(prefix):
                        staged.append([f"{name}/{path[len(prefix):]}",
                                       self.cas.path_str(rec["blake3"]), rec["blake3"], name])
            else:
                rec = producer.outputs.get(art.output)
                if rec is None:
                    raise RuntimeError(f"rule bug: action {spec.id} reads {art.output!r}, which "
                                       f"{art.producer} did not produce")
                staged.append([name, self.cas.path_str(rec["blake3"]), rec["blake3"], None])
        return staged

    def artifact_files(self, art: Artifact, done: dict[str, Outcome]) -> dict[str, dict]:
        """relative path → {blake3, sha256, size, mode, src} for a (tree) artifact."""
        if art.producer is None:
            b3, sha, size = self.sources.digests([art.path])[str(art.path)]
            return {"": {"blake3": b3, "sha256": sha, "size": size, "mode": 0o644, "src": str(art.path)}}
        outs = done[art.producer].outputs
        if art.tree:
            return {p[len(art.output):]: dict(r, src=None) for p, r in outs.items()
                    if p.startswith(art.output)}
        return {"": dict(outs[art.output], src=None)}

    # -- the run loop -----------------------------------------------------------------------
    def run(self, actions: list[ActionSpec], *, force: bool = False, check: bool = False,
            keep_going: bool = False) -> dict[str, Outcome]:
        done: dict[str, Outcome] = {}
        pending = {a.id: a for a in actions}
        waiting_on = {a.id: {i.producer for i in a.inputs.values() if i.producer} for a in actions}
        running: dict[Future, tuple[Outcome, list]] = {}
        total = len(actions)
        failed = False
        used: dict[str, str] = {}

        def ready() -> list[ActionSpec]:
            return [pending[a] for a in list(pending)
                    if all(p in done and done[p].status in ("cached", "executed") for p in waiting_on[a])]

        while pending or running:
            progressed = False
            if not failed or keep_going:
                for spec in ready():
                    del pending[spec.id]
                    progressed = True
                    outcome = Outcome(spec)
                    staged = self._staged_inputs(spec, done)
                    outcome.record = key_record(spec, [(s[0], s[2]) for s in staged])
                    outcome.key = action_key(outcome.record)
                    hit = None if force else self._lookup(outcome.key)
                    remote_hit = False
                    if hit is None and not force and self.remote is not None:
                        hit = self._remote_lookup(outcome.key, outcome.record, spec.id)
                        remote_hit = hit is not None
                    if hit is not None:
                        outcome.outputs = {o["path"]: o for o in hit["outputs"]}
                        outcome.stats = hit.get("stats", {})
                        outcome.status = "cached"
                        outcome.remote = remote_hit
                        self.remote_hits += remote_hit
                        done[spec.id] = outcome
                        used[spec.id] = outcome.key
                        self.progress("cached", outcome, len(done), total)
                        continue
                    task = self._task(spec, outcome.key, staged, "build")
                    running[self._pool_get().submit(run_action, task)] = (outcome, staged)
                    self.progress("started", outcome, len(done), total)
            # drop actions that can never run because an input failed
            for a_id in list(pending):
                if any(p in done and done[p].status in ("failed", "skipped") for p in waiting_on[a_id]):
                    done[a_id] = Outcome(pending.pop(a_id), status="skipped")
                    progressed = True
            if failed and not keep_going and not running:
                for a_id in list(pending):
                    done[a_id] = Outcome(pending.pop(a_id), status="skipped")
                break
            if not running:
                if not progressed and pending:
                    raise RuntimeError(f"scheduler stuck on {sorted(pending)[:3]}")
                continue
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                outcome, _staged = running.pop(fut)
                result = fut.result()
                done[outcome.spec.id] = outcome
                if "error" in result:
                    outcome.status, outcome.error = "failed", result["error"]
                    failed = True
                    self.progress("failed", outcome, len(done), total)
                    continue
                outcome.outputs = {o["path"]: o for o in result["outputs"]}
                outcome.stats = result.get("stats", {})
                outcome.status = "executed"
                self.index.put_result(outcome.key, {"outputs": result["outputs"],
                                                    "stats": outcome.stats,
                                                    "action": outcome.spec.id,
                                                    "seconds": result.get("seconds")},
                                      outcome.record, outcome.spec.id)
                self.progress("executed", outcome, len(done), total)
        if used:
            self.index.record_used(used)
        if check and not failed:
            self._check(actions, done)
        return done

    def _lookup(self, key: str) -> dict | None:
        hit = self.index.get_result(key)
        if hit is None:
            return None
        for out in hit["outputs"]:
            if not self.cas.has(out["blake3"], out["size"]):
                return None  # an evicted or damaged blob: rebuild rather than fail
        return hit

    # -- remote cache ---------------------------------------------------------------------------
    def _remote_lookup(self, key: str, record: dict, action_id: str) -> dict | None:
        """A remote AC hit, trusted only once every blob is downloaded and verified (sha256 by the
        transport, BLAKE3 here); then stored locally. Missing or bad blobs make it a miss."""
        from stella_build.engine.cache.remote import Outcome as RemoteOutcome, RemoteCacheError

        if not self.remote.available:
            return None
        try:
            raw = self.remote.get_ac(key)
            if raw is None:
                return None
            result = _parse_remote_record(raw)
            if result is None:
                return None
            wanted = [o for o in result["outputs"] if not self.cas.has(o["blake3"], o["size"])]
            temps = {o["sha256"]: self.cas.tmp / f"remote-{o['sha256']}-{os.getpid()}" for o in wanted}
            fetched = self.remote.fetch_blobs([(o["sha256"], o["size"], str(temps[o["sha256"]]))
                                               for o in wanted])
            ok = all(r.outcome is RemoteOutcome.HIT for r in fetched)
            for o in wanted:
                tmp = temps[o["sha256"]]
                if ok and tmp.exists() and file_digests(tmp)[0] == o["blake3"]:
                    self.cas.adopt(tmp, o["blake3"], o["size"])
                else:
                    ok = False
                    tmp.unlink(missing_ok=True)
            if not ok:
                return None
            self.index.put_result(key, result, record, action_id)
            return result
        except RemoteCacheError as err:
            self.remote.handle_error(err, self.warn)
            return None

    def upload(self, outcomes: dict[str, Outcome], *, all_cached: bool = False) -> int:
        """Upload executed (or, for push-all, every) result and its blobs; AC entries go last so
        a reader never sees an AC entry whose blobs are not there yet."""
        from stella_build.engine.cache.remote import Outcome as RemoteOutcome, RemoteCacheError

        if self.remote is None or not self.remote.upload or not self.remote.available:
            return 0
        chosen = [o for o in outcomes.values()
                  if o.status == "executed" or (all_cached and o.status == "cached")]
        try:
            blobs = {}
            for o in chosen:
                for rec in o.outputs.values():
                    blobs[rec["sha256"]] = str(self.cas.path(rec["blake3"]))
            results = self.remote.upload_blobs(sorted(blobs.items()))
            failed = {r.sha256 for r in results if r.outcome is RemoteOutcome.ERROR}
            sent = 0
            for o in chosen:
                if any(rec["sha256"] in failed for rec in o.outputs.values()):
                    continue
                record = self.index.get_result(o.key)
                if record is not None:
                    self.remote.put_ac(o.key, _remote_record(record))
                    sent += 1
            return sent
        except RemoteCacheError as err:
            self.remote.handle_error(err, self.warn)
            return 0

    def _task(self, spec: ActionSpec, key: str, staged: list, mode: str, expected=None) -> dict[str, Any]:
        return {"id": spec.id, "label": str(spec.label), "fn": spec.fn, "params": spec.params,
                "source_date_epoch": spec.source_date_epoch, "outputs": spec.outputs,
                "cache_dir": str(self.cache_dir), "inputs": staged, "mode": mode,
                # unique per submission: two actions may share a key (same work declared twice)
                "sandbox_name": f"{key[:20]}-{mode}-{os.getpid()}-{next(self._sandbox_seq)}",
                "expected": expected or {},
                "secrets": spec.secrets}

    def _check(self, actions: list[ActionSpec], done: dict[str, Outcome]) -> None:
        """Re-execute every action in a fresh sandbox and record byte differences."""
        futures = {}
        for spec in actions:
            outcome = done[spec.id]
            staged = self._staged_inputs(spec, done)
            expected = {p: r["blake3"] for p, r in outcome.outputs.items()}
            task = self._task(spec, outcome.key, staged, "check", expected)
            futures[self._pool_get().submit(run_action, task)] = outcome
        for fut in futures:
            result = fut.result()
            outcome = futures[fut]
            if "error" in result:
                outcome.differences = [{"path": None, "error": result["error"]["message"]}]
            else:
                outcome.differences = result.get("differences", [])
            self.progress("checked", outcome, 0, 0)


def _remote_record(result: dict) -> bytes:
    """The AC value shared through the remote: outputs and stats only (no local paths)."""
    import json

    keep = {"outputs": result["outputs"], "stats": result.get("stats", {}), "action": result.get("action")}
    return json.dumps(keep, sort_keys=True, separators=(",", ":")).encode()


def _parse_remote_record(raw: bytes) -> dict | None:
    """Validate a remote AC value's shape; anything odd is a miss, never an error."""
    import json
    import re

    try:
        data = json.loads(raw)
        outs = data["outputs"]
        for o in outs:
            if not (isinstance(o["path"], str) and re.fullmatch(r"[0-9a-f]{64}", o["blake3"])
                    and re.fullmatch(r"[0-9a-f]{64}", o["sha256"]) and isinstance(o["size"], int)
                    and o["size"] >= 0 and o["mode"] in (0o644, 0o755)):
                return None
            if o["path"].startswith("/") or ".." in o["path"].split("/"):
                return None
        return {"outputs": outs, "stats": data.get("stats") or {}, "action": data.get("action")}
    except (ValueError, KeyError, TypeError):
        return None
