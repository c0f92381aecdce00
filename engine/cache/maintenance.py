"""`stella-build cache stats|gc|verify|clean` over the LMDB index and the CAS."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from stella_build.engine.cache.cas import Cas
from stella_build.engine.cache.index import Index
from stella_build.engine.cache.records import drop_bad_results
from stella_build.engine.memo import MEMO_DIR  # per-record memo packs, one per shard action

MEMO_MAX_AGE = 14 * 24 * 3600   # gc drops packs no build rewrote for this long (seconds)


def _memo_packs(cache_dir: Path) -> list[tuple[Path, os.stat_result]]:
    root = cache_dir / MEMO_DIR
    return [(p, p.stat()) for p in sorted(root.rglob("*.pack")) if p.is_file()] if root.is_dir() else []


def stats(cache_dir: Path) -> dict:
    index, cas = Index(cache_dir), Cas(cache_dir)
    try:
        blobs = list(cas.iter_blobs())
        packs = _memo_packs(cache_dir)
        return {"cache_dir": str(cache_dir), **index.counts(), "blobs": len(blobs),
                "blob_bytes": sum(size for _, size, _ in blobs),
                "memo_packs": len(packs), "memo_bytes": sum(st.st_size for _, st in packs)}
    finally:
        index.close()


def gc(cache_dir: Path, max_size: int) -> dict:
    """Evict least recently used action results until blobs fit in `max_size` bytes, then delete
    blobs no remaining result names (temp and sandbox leftovers of killed builds too). Per-record
    memo packs (engine/memo.py) that no build rewrote for MEMO_MAX_AGE are deleted: a build rewrites
    every pack it uses, and a missing pack only costs time."""
    index, cas = Index(cache_dir), Cas(cache_dir)
    try:
        results = sorted(index.all_results(), key=lambda r: r[2], reverse=True)  # newest first
        sizes = {d: s for d, s, _ in cas.iter_blobs()}
        keep_keys, kept_blobs, total = [], set(), 0
        evict = []
        for key, result, _used in results:
            needed = {o["blake3"] for o in result["outputs"]} - kept_blobs
            extra = sum(sizes.get(d, 0) for d in needed)
            if total + extra <= max_size:
                keep_keys.append(key)
                kept_blobs |= needed
                total += extra
            else:
                evict.append(key)
        index.delete_results(evict)
        removed = [d for d in sizes if d not in kept_blobs]
        for digest in removed:
            cas.discard(digest)
        for leftover in ("tmp", "sandbox", "noop-memo", "analysis-memo"):
            shutil.rmtree(cache_dir / leftover, ignore_errors=True)
        cutoff = time.time() - MEMO_MAX_AGE
        stale = [(p, st) for p, st in _memo_packs(cache_dir) if st.st_mtime < cutoff]
        for pack, _ in stale:
            pack.unlink(missing_ok=True)
        # a pack's temp file left by a build killed mid-save (a live save finishes in seconds)
        hour_ago = time.time() - 3600
        memo_root = cache_dir / MEMO_DIR
        for tmp in (sorted(memo_root.rglob(".tmp-*")) if memo_root.is_dir() else []):
            try:
                if tmp.is_file() and tmp.stat().st_mtime < hour_ago:
                    tmp.unlink()
            except OSError:
                pass
        for damaged in cache_dir.glob("index-v*.damaged-*"):  # a repair killed half-way
            shutil.rmtree(damaged, ignore_errors=True)
        return {"evicted_actions": len(evict), "kept_actions": len(keep_keys),
                "removed_blobs": len(removed), "removed_bytes": sum(sizes[d] for d in removed),
                "blob_bytes": total, "removed_memo_packs": len(stale),
                "removed_memo_bytes": sum(st.st_size for _, st in stale)}
    finally:
        index.close()


def verify(cache_dir: Path) -> dict:
    """Check the index's structure (replacing a damaged index by an empty one) and re-hash every
    blob, deleting corrupt ones (their results become misses and rebuild).

    → {"corrupt_blobs_removed": [digest], "results_with_missing_blobs": n,
       "bad_results_removed": [{key, action, problem}] (AC entries not matching their declared outputs),
       "index": {"repaired": why | None, "problems": [str]}}; `repaired` is set when the index
    was damaged (found by the cheap check on opening or by the full structural walk)."""
    notes: list[str] = []
    index, cas = Index(cache_dir, warn=notes.append), Cas(cache_dir)
    try:
        shutil.rmtree(cache_dir / "noop-memo", ignore_errors=True)
        shutil.rmtree(cache_dir / "analysis-memo", ignore_errors=True)
        problems = index.verify_structure()
        corrupt = [d for d, _, _ in cas.iter_blobs() if not cas.verify(d)]
        for digest in corrupt:
            cas.discard(digest)
        # AC entries that do not match their action's declared outputs (damaged, or a bad record
        # copied in from a remote) are deleted: they would be dropped on read anyway.
        bad_results = index.drop_malformed_results() + drop_bad_results(index)
        missing = 0
        for key, result, _ in index.all_results():
            if any(not cas.has(o["blake3"], o["size"]) for o in result["outputs"]):
                missing += 1
        return {"corrupt_blobs_removed": corrupt, "results_with_missing_blobs": missing,
                "bad_results_removed": bad_results,
                "index": {"repaired": index.repaired, "problems": problems[:20]}}
    finally:
        index.close()


def clean(cache_dir: Path) -> dict:
    existed = cache_dir.exists()
    for child in ("cas", "tmp", "sandbox", "noop-memo", "analysis-memo", MEMO_DIR) + tuple(p.name for p in cache_dir.glob("index-v*")):
        shutil.rmtree(cache_dir / child, ignore_errors=True)
    (cache_dir / "index.lock").unlink(missing_ok=True)
    return {"cache_dir": str(cache_dir), "removed": existed}
