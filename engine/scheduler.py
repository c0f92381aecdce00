"""Execution: compute action keys in dependency order, serve hits from the cache, run misses on a
pool of hermetic worker processes (`-j`), and store results.

Keys of derived inputs are known only once their producers finish, so keys are computed as actions
become ready. A hit is served only if its record lists exactly the action's declared outputs
(engine/cache/records.py; a local entry that does not is dropped and the action re-runs) and every
blob it names is present with the right size. A build that signs (an action with secrets, or a
post-build signing step) serves only results this machine executed or a trusted key signed.
"""
from __future__ import annotations

import itertools
import operator
import os
import re
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from stella_build.engine.actions import action_key_of, key_record
from stella_build.engine.cache.cas import Cas
from stella_build.engine.cache.index import Index, stat_match, valid_result
from stella_build.engine.cache.records import (
    ORIGIN_LOCAL, ORIGIN_REMOTE, from_wire, outputs_problem, result_problem, to_wire, vouchable,
)
from stella_build.engine.encode.digest import file_digests
from stella_build.engine.graph import ActionSpec, Artifact
from stella_build.engine.executors.base import ExecutorConfig

if TYPE_CHECKING:  # the process pool (multiprocessing) is loaded only when an action runs
    from concurrent.futures import ProcessPoolExecutor

    from stella_build.engine.executors.local import LocalExecutor

_RACY_SECONDS = 2.0  # files modified this recently are re-hashed next time (racy-git problem)
_PRODUCER = operator.attrgetter("producer")  # C loops over every input of every action
_NO_PRODUCER = frozenset({None})
_PATH_STR = operator.attrgetter("path_str")


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
    worker: str | None = None  # the remote executor's worker that ran it (None: this machine)


class SourceDigests:
    """BLAKE3/SHA-256 of source files, memoized in the index by (size, mtime, inode, ctime)."""

    def __init__(self, index: Index):
        self.index = index
        self.memo: dict[str, tuple[str, str, int]] = {}
        self.blake3: dict[str, str] = {}  # path → blake3 of the memo: what a key reads, one lookup

    def digests(self, paths: list) -> dict[str, tuple[str, str, int]]:
        """path → (blake3, sha256, size) of source files (str or Path)."""
        names = [p if isinstance(p, str) else str(p) for p in paths]
        memo = self.ensure(names)
        return {p: memo[p] for p in names}

    def ensure(self, names: list[str]) -> dict[str, tuple[str, str, int]]:
        """Digest the files among `names` (str paths) that this build has not seen yet; returns
        the memo itself (path → (blake3, sha256, size)), so the cache-hit path reads it without
        building a dict per action."""
        wanted = [p for p in names if p not in self.memo]
        if wanted:
            # Raw stored entries, compared with the file's signature as bytes (index.stat_match):
            # this runs once per source file in every build, so no JSON parsing per file.
            stored = self.index.get_stats_raw(wanted)
            fresh: dict[str, list] = {}
            now = time.time()
            memo, blake3_of, stat_of, match = self.memo, self.blake3, os.stat, stat_match
            for p in wanted:
                st = stat_of(p)
                known = match(stored[p], st)
                if known is not None:
                    memo[p] = (known[0], known[1], st.st_size)
                    blake3_of[p] = known[0]
                    continue
                sig = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
                b3, sha, size = file_digests(p)
                memo[p] = (b3, sha, size)
                blake3_of[p] = b3
                if now - st.st_mtime > _RACY_SECONDS:
                    fresh[p] = sig + [b3, sha]
            self.index.put_stats(fresh)
        return self.memo


# A sandbox left by a killed build (kill -9, power loss) is removed by the next build once its
# process is gone and it is this old. The age guard: a build in another PID namespace (a container
# sharing the cache volume) has a PID this process cannot see, but none runs one action for a day.
STALE_SANDBOX_SECONDS = 24 * 3600
_SANDBOX_PID = re.compile(r"-(?:build|check|remote)-(\d+)-\d+\Z")


def sweep_stale_sandboxes(cache_dir: Path, now: float | None = None) -> list[str]:
    """Remove `<cache>/sandbox/<key>-<mode>-<pid>-<n>` directories whose process no longer exists
    on this host and that are older than STALE_SANDBOX_SECONDS; returns the names removed.
    Never raises (a leftover only costs space; `cache gc` removes the rest)."""
    root = cache_dir / "sandbox"
    removed: list[str] = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    cutoff = (time.time() if now is None else now) - STALE_SANDBOX_SECONDS
    for entry in entries:
        m = _SANDBOX_PID.search(entry.name)
        try:
            if m is None or not entry.is_dir(follow_symlinks=False) or entry.stat(
                    follow_symlinks=False).st_mtime > cutoff:
                continue
            os.kill(int(m.group(1)), 0)
            continue  # its process (or one that reused the PID) is alive: leave it
        except ProcessLookupError:
            pass
        except (OSError, OverflowError, ValueError):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.name)
    return removed


class Executor:
    def __init__(self, cache_dir: Path, jobs: int, *,
                 progress: Callable[[str, Outcome, int, int], None] | None = None,
                 remote=None, warn: Callable[[str], None] | None = None,
                 executor: ExecutorConfig | None = None):
        self.cache_dir = cache_dir
        self.remote = remote  # engine.cache.remote.RemoteCache or None
        self.warn = warn or (lambda msg: None)
        self.remote_hits = 0
        self.dropped: list[dict] = []  # local entries dropped on read: [{action, key, problem}]
        self.upload_skipped = 0  # results the last upload() left out: not vouchable (see upload)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.index = Index(cache_dir)
        self.cas = Cas(cache_dir)
        self.jobs = max(1, jobs)
        self.sources = SourceDigests(self.index)
        self.progress = progress or (lambda *a: None)
        self._sandbox_seq = itertools.count()
        sweep_stale_sandboxes(cache_dir)
        # Misses run on an executor (engine/executors/): this machine's process pool (created,
        # and multiprocessing imported, only when something must run: ~5 ms of a no-op build),
        # or a Dask cluster; --check always re-executes locally.
        self._local: LocalExecutor | None = None
        self._runner = None  # a remote executor; None: the local one
        if executor is not None and executor.remote:
            from stella_build.engine.executors.dask import DaskExecutor
            try:
                self._runner = DaskExecutor(executor, cache_dir=cache_dir, jobs=self.jobs, remote=remote,
                                            local=self.local, cas=self.cas, warn=self.warn)
            except Exception:  # a usage error (no --remote-cache): release the index first
                self.index.close()
                raise

    # -- worker pool (started only when something must run) ----------------------------------
    @property
    def local(self) -> LocalExecutor:
        """This machine's executor (`-j` spawned workers), created on first use."""
        if self._local is None:
            from stella_build.engine.executors.local import LocalExecutor

            self._local = LocalExecutor(self.jobs)
        return self._local

    @property
    def runner(self):
        """Where misses run: the remote executor when one is configured, else `local`."""
        return self._runner if self._runner is not None else self.local

    def _pool_get(self) -> ProcessPoolExecutor:
        return self.local.pool()

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
        if self._local is not None:
            self._local.close()
        self.index.close()

    # -- inputs and keys --------------------------------------------------------------------
    def _staged_inputs(self, spec: ActionSpec, done: dict[str, Outcome]) -> list[list]:
        """[sandbox name, source path, blake3, tree root or None] for every staged file."""
        # Runs for every action of every build, hit or miss: one pass over the inputs, digests
        # read straight from the build's memo (cache-hit overhead, docs/engine.md "Performance").
        staged: list[list] = []
        inputs = spec.inputs
        memo_get = self.sources.memo.get
        todo: list[list] = []  # source entries whose digest this build has not computed yet
        append = staged.append
        for name in sorted(inputs):
            art = inputs[name]
            if art.producer is None:
                path = art.path_str
                known = memo_get(path)
                entry = [name, path, known[0] if known else None, None]
                append(entry)
                if known is None:
                    todo.append(entry)
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
        if todo:  # one batch per action: one index read for all of its new source files
            memo = self.sources.ensure([e[1] for e in todo])
            for entry in todo:
                entry[2] = memo[entry[1]][0]
        return staged

    def _key(self, spec: ActionSpec, done: dict[str, Outcome], sources_only: bool
             ) -> tuple[str, Sequence[str], Sequence[str]]:
        """(action key, staged names, their BLAKE3 digests) of `spec`: the files `_staged_inputs`
        would stage, without the staging entries (CAS paths) that a hit never uses; the key record
        itself is built only when needed (`_record`: a miss, the remote cache).

        `sources_only`: every input is a source file (most actions: shards of advisories); then
        this is a few C loops (map) over the sorted input names, the files' digests read from the
        build's memo (each file digested, or matched with its stored digest, once per build)."""
        inputs = spec.inputs
        if sources_only:
            names = sorted(inputs)
            try:
                digests = list(map(self.sources.blake3.__getitem__,
                                   map(_PATH_STR, map(inputs.__getitem__, names))))
            except KeyError:  # files this build has not digested yet: one index read for all
                paths = list(map(_PATH_STR, map(inputs.__getitem__, names)))
                self.sources.ensure(paths)
                digests = list(map(self.sources.blake3.__getitem__, paths))
            # SourceDigests holds only lowercase hex (hexdigest(), or a stored entry matched by
            # index.stat_match's regex), so only the names need the JSON escape check
            return action_key_of(spec, names, digests, hex_digests=True), names, digests
        pairs = sorted(self._derived_pairs(spec, done))
        names, digests = zip(*pairs) if pairs else ((), ())
        return action_key_of(spec, names, digests), names, digests

    def _derived_pairs(self, spec: ActionSpec, done: dict[str, Outcome]) -> list[tuple[str, str]]:
        """(staged name, blake3) of every file `_staged_inputs` stages, for an action that reads
        outputs of other actions (unsorted: a tree's members may sort after a later input)."""
        pairs: list[tuple[str, str]] = []
        todo: list[tuple[int, str]] = []  # (index in pairs, path) of source files
        for name, art in spec.inputs.items():
            if art.producer is None:
                todo.append((len(pairs), art.path_str))
                pairs.append((name, ""))  # its digest is filled in below, in one index read
                continue
            producer = done[art.producer]
            if art.tree:
                prefix = art.output
                cut = len(prefix)
                pairs += [(f"{name}/{path[cut:]}", rec["blake3"])
                          for path, rec in producer.outputs.items() if path.startswith(prefix)]
            else:
                rec = producer.outputs.get(art.output)
                if rec is None:
                    raise RuntimeError(f"rule bug: action {spec.id} reads {art.output!r}, which "
                                       f"{art.producer} did not produce")
                pairs.append((name, rec["blake3"]))
        if todo:
            memo = self.sources.ensure([path for _, path in todo])
            for i, path in todo:
                pairs[i] = (pairs[i][0], memo[path][0])
        return pairs

    @staticmethod
    def _record(spec: ActionSpec, names: Sequence[str], digests: Sequence[str]) -> dict:
        """The key record (`key_record`) whose action key `_key` computed."""
        return key_record(spec, list(zip(names, digests)))

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
            keep_going: bool = False, signing: bool | None = None) -> dict[str, Outcome]:
        """Run `actions` (hits from the caches, misses on the worker pool); outcome per action id.

        `signing`: this build signs something (default: any action has secrets), so only results
        that were executed here or authenticated by a trusted remote-cache key are served."""
        if signing is None:
            signing = any(a.secrets for a in actions)
        done: dict[str, Outcome] = {}
        pending = {a.id: a for a in actions}
        waiting_on = {a.id: set(map(_PRODUCER, a.inputs.values())) - _NO_PRODUCER for a in actions}
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
                    outcome.key, names, digests = self._key(spec, done, not waiting_on[spec.id])
                    hit = None if force else self._lookup(outcome.key, spec, signing)
                    remote_hit = False
                    if hit is None:  # the key record: stored with a result, sent to a runner
                        outcome.record = self._record(spec, names, digests)
                    if hit is None and not force and self.remote is not None:
                        hit = self._remote_lookup(outcome.key, outcome.record, spec, signing)
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
                    staged = self._staged_inputs(spec, done)  # a miss: only now staged
                    task = self._task(spec, outcome.key, staged, "build")
                    running[self.runner.submit(task, outcome.record, secrets=bool(spec.secrets))] = (
                        outcome, staged)
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
                outcome.worker = result.get("worker")
                self.index.put_result(outcome.key, {"outputs": result["outputs"],
                                                    "stats": outcome.stats,
                                                    "action": outcome.spec.id,
                                                    "seconds": result.get("seconds"),
                                                    "origin": ORIGIN_LOCAL},
                                      outcome.record, outcome.spec.id)
                self.progress("executed", outcome, len(done), total)
        if used:
            self.index.record_used(used)
        if check and not failed:
            self._check(actions, done)
        return done

    def _lookup(self, key: str, spec: ActionSpec | None = None, signing: bool = False) -> dict | None:
        """The local result under `key` when it can be served, else None.

        With `spec`, an entry that does not list exactly the action's declared outputs (a damaged
        or poisoned index entry) is dropped, so the action re-runs and writes a good one. Without
        `spec` (read-only callers such as explain), the declared outputs come from the stored key
        record and nothing is dropped. `signing`: only entries this machine can vouch for."""
        # With `spec`, result_problem below is the stricter check: the index's own check runs
        # only on a record it refuses (a malformed record stays a silent miss, as it always was).
        hit = self.index.get_result(key, checked=spec is None)
        if hit is None:
            return None
        if spec is not None:
            problem = result_problem(hit, spec.outputs)
            if problem is None and not isinstance(hit.get("stats", {}), dict):
                return None
            if problem is not None and not valid_result(hit):
                return None
            if problem is not None:
                self.index.drop_result(key)
                self.dropped.append({"action": spec.id, "key": key, "problem": problem})
                self.warn(f"dropped the local cache entry of {spec.id}: {problem}; the action runs again")
                return None
        else:
            stored = self.index.get_key_record(key)
            if stored is None or result_problem(hit, stored.get("outputs") or []) is not None:
                return None
        if signing and not self._authenticated(hit):
            return None
        for out in hit["outputs"]:
            if not self.cas.has(out["blake3"], out["size"]):
                return None  # an evicted or damaged blob: rebuild rather than fail
        return hit

    def _authenticated(self, result: dict) -> bool:
        """May a signing build use this local entry? Executed here, or adopted from a remote record
        signed by a key that is (still) trusted; not an unauthenticated adoption, not an entry of
        unknown origin (written before origins were recorded)."""
        if result.get("origin") == ORIGIN_LOCAL:
            return True
        if result.get("origin") != ORIGIN_REMOTE or not result.get("signed_by"):
            return False
        remote = self.remote
        return remote is None or not remote.authenticates or result["signed_by"] in remote.trust

    # -- remote cache ---------------------------------------------------------------------------
    def _remote_lookup(self, key: str, record: dict, spec: ActionSpec, signing: bool = False) -> dict | None:
        """A remote AC hit, served only when its record lists exactly the declared outputs, is
        signed by a trusted key (whenever trust is configured, and always in a signing build), and
        every blob is downloaded and verified (sha256 by the transport, BLAKE3 here; blobs already
        in the local CAS are re-hashed against both digests); then stored locally with its origin.
        Anything else is a miss and the action runs here."""
        from stella_build.engine.cache.remote import Outcome as RemoteOutcome, RemoteCacheError

        remote = self.remote
        if not remote.available:
            return None
        if signing and not remote.authenticates:
            remote.warn_once("signing-unauthenticated",
                             "this build signs: remote cache results are not used because no "
                             "--remote-cache-trust key is configured to authenticate them", self.warn)
            return None
        try:
            raw = remote.get_ac(key)
            if raw is None:
                return None
            parsed = from_wire(raw)
            if parsed is None:
                return self._reject(spec, "not a stella-build result record")
            result, signature = parsed
            problem = outputs_problem(result["outputs"], spec.outputs)
            if problem is not None:
                return self._reject(spec, problem)
            signed_by = remote.trust.verify(key, result, signature) if remote.authenticates else None
            if remote.authenticates and signed_by is None:
                return self._reject(spec, _signature_problem(signature, remote.trust))
            blobs: dict[str, dict] = {}
            for o in result["outputs"]:
                seen = blobs.setdefault(o["blake3"], o)
                if (seen["sha256"], seen["size"]) != (o["sha256"], o["size"]):
                    return self._reject(spec, f"outputs {seen['path']!r} and {o['path']!r} have the same "
                                              "BLAKE3 digest but different SHA-256 digests or sizes")
            wanted = []
            for o in blobs.values():
                if not self.cas.has(o["blake3"], o["size"]):
                    wanted.append(o)
                elif file_digests(self.cas.path(o["blake3"]))[:2] != (o["blake3"], o["sha256"]):
                    return self._reject(spec, f"output {o['path']!r}: its SHA-256 digest does not "
                                              "match the content of its BLAKE3 digest")
            temps = {o["blake3"]: self.cas.tmp / f"remote-{o['blake3']}-{os.getpid()}" for o in wanted}
            fetched = remote.fetch_blobs([(o["sha256"], o["size"], str(temps[o["blake3"]]))
                                          for o in wanted])
            errors = [r.error for r in fetched if r.outcome is RemoteOutcome.ERROR and r.error]
            ok = all(r.outcome is RemoteOutcome.HIT for r in fetched)
            for o in wanted:
                tmp = temps[o["blake3"]]
                if ok and tmp.exists() and file_digests(tmp)[0] == o["blake3"]:
                    self.cas.adopt(tmp, o["blake3"], o["size"])
                else:
                    ok = False
                    tmp.unlink(missing_ok=True)
            if errors:
                remote.handle_error(errors[0], self.warn)  # raises when the remote is required
            if not ok:
                return None
            if signed_by is None:
                remote.stats.add(unauthenticated=1)
                remote.warn_once("unauthenticated",
                                 "remote cache results are used without authentication (no "
                                 "--remote-cache-trust key is configured): whoever can write to the "
                                 "cache chooses these outputs; signing builds never use them", self.warn)
            local = dict(result, origin=ORIGIN_REMOTE, signed_by=signed_by)
            self.index.put_result(key, local, record, spec.id)
            return local
        except RemoteCacheError as err:
            remote.handle_error(err, self.warn)
            return None

    def _reject(self, spec: ActionSpec, problem: str) -> None:
        """A remote record that must not be used: counted, reported once per run, a miss."""
        self.remote.stats.add(rejected=1)
        self.remote.warn_once("rejected", f"remote cache record for {spec.id} rejected ({problem}); "
                                          "the action runs locally", self.warn)
        return None

    def upload(self, outcomes: dict[str, Outcome], *, all_cached: bool = False) -> int:
        """Upload executed (or, for push-all, every) result and its blobs; AC entries go last so
        a reader never sees an AC entry whose blobs are not there yet. Records are signed when a
        writer key is configured; a result this machine cannot vouch for (adopted from the remote
        without a trusted signature, or of unknown origin) is never uploaded.

        Returns the number of AC records sent. A failed upload goes through
        `RemoteCache.handle_error`: one warning, or RemoteCacheError when the remote is required."""
        if self.remote is None or not self.remote.upload or not self.remote.available:
            return 0  # before the import: a build without a remote cache never loads remote.py
        from stella_build.engine.cache.remote import Outcome as RemoteOutcome, RemoteCacheError

        chosen = [o for o in outcomes.values()
                  if o.status == "executed" or (all_cached and o.status == "cached")]
        sent = 0
        try:
            results: dict[str, dict] = {}
            for o in chosen:
                result = self.index.get_result(o.key)
                if result is not None and vouchable(result):
                    results[o.key] = result
            self.upload_skipped = len({o.key for o in chosen} - set(results))
            blobs = {}
            for result in results.values():
                for rec in result["outputs"]:
                    blobs[rec["sha256"]] = str(self.cas.path(rec["blake3"]))
            uploaded = self.remote.upload_blobs(sorted(blobs.items()))
            failed = {r.sha256 for r in uploaded if r.outcome is RemoteOutcome.ERROR}
            errors = [r.error for r in uploaded if r.outcome is RemoteOutcome.ERROR and r.error]
            for key, result in results.items():
                if any(rec["sha256"] in failed for rec in result["outputs"]):
                    continue
                self.remote.put_ac(key, to_wire(key, result, self.remote.signer))
                sent += 1
            if errors:
                raise errors[0]
            return sent
        except RemoteCacheError as err:
            self.remote.handle_error(err, self.warn)
            return sent

    def _task(self, spec: ActionSpec, key: str, staged: list, mode: str, expected=None) -> dict[str, Any]:
        return {"id": spec.id, "label": str(spec.label), "fn": spec.fn, "params": spec.params,
                "source_date_epoch": spec.source_date_epoch, "outputs": spec.outputs,
                "cache_dir": str(self.cache_dir), "inputs": staged, "mode": mode,
                # unique per submission: two actions may share a key (same work declared twice)
                "sandbox_name": f"{key[:20]}-{mode}-{os.getpid()}-{next(self._sandbox_seq)}",
                "expected": expected or {},
                "secrets": spec.secrets, "secrets_remote": spec.secrets_remote,
                "libraries": spec.libraries}

    def _check(self, actions: list[ActionSpec], done: dict[str, Outcome]) -> None:
        """Re-execute every action in a fresh sandbox and record byte differences."""
        futures = {}
        for spec in actions:
            outcome = done[spec.id]
            staged = self._staged_inputs(spec, done)
            expected = {p: r["blake3"] for p, r in outcome.outputs.items()}
            task = self._task(spec, outcome.key, staged, "check", expected)
            from stella_build.engine.sandbox import run_action

            futures[self._pool_get().submit(run_action, task)] = outcome
        for fut in futures:
            result = fut.result()
            outcome = futures[fut]
            if "error" in result:
                outcome.differences = [{"path": None, "error": result["error"]["message"]}]
            else:
                outcome.differences = result.get("differences", [])
            self.progress("checked", outcome, 0, 0)


def _signature_problem(signature: dict | None, trust) -> str:
    if signature is None:
        return "it is not signed, and only records signed by a --remote-cache-trust key are accepted"
    if signature.get("keyid") not in trust:
        return f"signed by key {str(signature.get('keyid'))[:16]}…, which is not a --remote-cache-trust key"
    return "its signature does not verify"
