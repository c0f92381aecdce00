"""Benchmark of trivy:db on the synthetic OSV corpus (bench/gen_osv_corpus.py).

Runs the rule's own action functions (stella_build.rules.trivy_db.map_shard / build_db) on
sandbox-like directories, each phase in a fresh worker process so that its peak RSS is its own:

1. generate:  N synthetic OSV advisories → S raw shard files (the osv_source record format);
2. map:       one TrivyShard action per shard (normalize + map to sorted Trivy key/values),
              run on ``--jobs`` worker processes like the engine's scheduler;
3. db:        the TrivyDb action: k-way merge → bbolt (trivy.db), then metadata.json,
              db.tar.gz and the OCI layout; the bbolt write (merge + writer) is timed alone;
4. disk:      raw sequential write speed of the same directory (same byte count as trivy.db,
              1 MiB blocks of zeros, fsync), for the "writer MB/s vs disk MB/s" ratio.

    .venv/bin/python bench/bench_trivy_db.py --count 500000 [--shards 64] [--jobs 2] [--dir /tmp]
    .venv/bin/python bench/bench_trivy_db.py --count 100000 --check   # also runs `bbolt check`
    .venv/bin/python bench/bench_trivy_db.py --count 100000 --aqua /path/to/trivy-db

``--aqua`` also runs Aqua's Go builder (``trivy-db build`` from github.com/aquasecurity/trivy-db,
built with ``go install github.com/aquasecurity/trivy-db/cmd/trivy-db@latest``) on the same
advisories: its GHSA source reads OSV JSON files from ``<cache>/ghsa/advisories/github-reviewed``
(the github/advisory-database layout), which is what the generator writes. The Go builder needs
the Go toolchain at run time (it lists the standard library packages), so ``go`` must be on PATH.
Its time excludes the ``bbolt compact`` step of Aqua's release pipeline.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _actx(sandbox: Path, params: dict, inputs: dict[str, Path]):
    from stella_build.engine.rule_api import ActionContext

    (sandbox / "out").mkdir(parents=True, exist_ok=True)
    return ActionContext(action_id="bench", label="//bench:trivy-db", sandbox=sandbox, params=params,
                         source_date_epoch=1735689600, inputs=inputs)


def generate(count: int, shards: int, seed: int, raw_dir: str) -> dict:
    """Write the corpus as ``shards`` raw record files (osv_source's records.jsonl lines)."""
    from gen_osv_corpus import generate as gen

    t = time.perf_counter()
    files = [open(Path(raw_dir) / f"raw-{i:04d}.jsonl", "wb") for i in range(shards)]
    for i, doc in enumerate(gen(count, seed)):
        rec = {"id": doc["id"], "path": f"synthetic/{doc['id']}.json", "withdrawn": doc.get("withdrawn"),
               "document": doc}
        files[i % shards].write(json.dumps(rec, separators=(",", ":")).encode() + b"\n")
    for f in files:
        f.close()
    return {"seconds": time.perf_counter() - t, "rss_mib": _rss_mib()}


def map_one(raw: str, out_dir: str, dep: int) -> dict:
    from stella_build.rules.trivy_db import map_shard

    t = time.perf_counter()
    actx = _actx(Path(out_dir), {"format": "osv-raw", "dep": dep,
                                 "data_source": {"id": "osv", "name": "Synthetic OSV", "url": ""},
                                 "os_data_source": {"id": "alpine", "name": "Alpine Secdb", "url": ""},
                                 "source": {"name": "Synthetic OSV"}},
                 {"records.jsonl": Path(raw)})
    stats = map_shard(actx)
    return {"seconds": time.perf_counter() - t, "rss_mib": _rss_mib(), **stats}


def build(kv_files: list[str], out_dir: str) -> dict:
    from stella_build.rules import trivy_db as trivy_rules

    actx = _actx(Path(out_dir), {"update_interval": "24h"},
                 {f"kv/{i:04d}.jsonl": Path(p) for i, p in enumerate(kv_files)})
    t = time.perf_counter()
    stats = trivy_rules.write_trivy_db(actx.output("trivy.db"), [Path(p) for p in kv_files])
    write_s = time.perf_counter() - t
    t = time.perf_counter()
    trivy_rules._package(actx, "trivy.db", "db.tar.gz", 2, java=False)
    package_s = time.perf_counter() - t
    db = actx.output("trivy.db")
    return {"write_seconds": write_s, "package_seconds": package_s, "rss_mib": _rss_mib(),
            "db_bytes": db.stat().st_size, "tar_gz_bytes": actx.output("db.tar.gz").stat().st_size,
            **stats}


def aqua_build(binary: str, count: int, seed: int, scratch: Path) -> dict:
    """Run ``trivy-db build --only-update ghsa`` on the same corpus written as OSV files."""
    from gen_osv_corpus import encode, generate as gen

    root = scratch / "aqua-cache" / "ghsa" / "advisories" / "github-reviewed"
    # The GHSA source also walks CocoaPods specs (an empty tree is enough) and unmarshals the
    # top-level database_specific of every record (GHSA records always have one).
    (scratch / "aqua-cache" / "cocoapods-specs" / "Specs").mkdir(parents=True)
    for i, doc in enumerate(gen(count, seed)):
        doc.setdefault("database_specific", {})
        d = root / doc["affected"][0]["package"]["ecosystem"].replace(".", "_") / f"{i // 1000:04d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{doc['id']}.json").write_bytes(encode(doc))
    out = scratch / "aqua-out"
    out.mkdir()
    argv = [binary, "build", "--cache-dir", str(scratch / "aqua-cache"), "--output-dir", str(out),
            "--update-interval", "24h", "--only-update", "ghsa"]
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    secs = time.perf_counter() - t
    err = proc.stderr.read().decode(errors="replace")
    proc.returncode = os.waitstatus_to_exitcode(status)
    db = out / "trivy.db"
    return {"seconds": secs, "rss_mib": usage.ru_maxrss / 1024, "code": proc.returncode,
            "db_bytes": db.stat().st_size if db.exists() else 0, "stderr": err[-2000:]}


def disk_speed(directory: str, nbytes: int) -> float:
    """MB/s of a sequential write of ``nbytes`` zeros in 1 MiB blocks, fsync included."""
    block = bytes(1 << 20)
    path = Path(directory) / "disk-speed.bin"
    t = time.perf_counter()
    with open(path, "wb") as f:
        left = nbytes
        while left > 0:
            f.write(block[:min(left, len(block))])
            left -= len(block)
        f.flush()
        os.fsync(f.fileno())
    secs = time.perf_counter() - t
    path.unlink()
    return nbytes / secs / 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=500_000)
    p.add_argument("--shards", type=int, default=64)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    p.add_argument("--check", action="store_true", help="run `bbolt check` on the result")
    p.add_argument("--aqua", metavar="TRIVY_DB_BINARY", help="also time Aqua's `trivy-db build`")
    args = p.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="bench-trivy-", dir=args.dir))
    try:
        raw_dir = scratch / "raw"
        raw_dir.mkdir()
        with ProcessPoolExecutor(1) as ex:
            gen = ex.submit(generate, args.count, args.shards, args.seed, str(raw_dir)).result()
        print(f"generate: {args.count} advisories in {gen['seconds']:.1f} s")
        t = time.perf_counter()
        raws = sorted(raw_dir.iterdir())
        with ProcessPoolExecutor(args.jobs) as ex:
            futs = [ex.submit(map_one, str(r), str(scratch / "map" / r.stem), 0) for r in raws]
            maps = [f.result() for f in futs]
        map_wall = time.perf_counter() - t
        entries = sum(m["entries"] for m in maps)
        print(f"map:      {len(maps)} TrivyShard actions, wall {map_wall:.1f} s on {args.jobs} workers "
              f"(CPU sum {sum(m['seconds'] for m in maps):.1f} s), {entries} advisory keys, "
              f"peak RSS per action {max(m['rss_mib'] for m in maps):.0f} MiB")
        shutil.rmtree(raw_dir)
        kv = [str(scratch / "map" / r.stem / "out" / "kv.jsonl") for r in raws]
        kv_bytes = sum(os.path.getsize(k) for k in kv)
        with ProcessPoolExecutor(1) as ex:
            db = ex.submit(build, kv, str(scratch / "db")).result()
        mb = db["db_bytes"] / 1e6
        print(f"db:       trivy.db {mb:.1f} MB ({db['keys']} keys, {db['buckets']} buckets) from "
              f"{kv_bytes / 1e6:.0f} MB of shard output; merge+bbolt write {db['write_seconds']:.1f} s "
              f"= {mb / db['write_seconds']:.1f} MB/s; tar.gz+OCI {db['package_seconds']:.1f} s "
              f"(db.tar.gz {db['tar_gz_bytes'] / 1e6:.1f} MB); peak RSS {db['rss_mib']:.0f} MiB")
        disk = disk_speed(str(scratch), db["db_bytes"])
        print(f"disk:     raw sequential write {disk:.0f} MB/s (same size, fsync); "
              f"bbolt step / disk = {mb / db['write_seconds'] / disk:.1%}")
        total = map_wall + db["write_seconds"] + db["package_seconds"]
        print(f"total:    map + db = {total:.1f} s wall for {args.count} advisories "
              f"({args.count / total:.0f} advisories/s); max RSS of any step "
              f"{max(db['rss_mib'], max(m['rss_mib'] for m in maps)):.0f} MiB")
        if args.check:
            from shutil import which
            bbolt = os.path.expanduser("~/.cache/stella-build-tools/bin/bbolt")
            bbolt = bbolt if os.path.exists(bbolt) else which("bbolt")
            if bbolt:
                t = time.perf_counter()
                res = subprocess.run([bbolt, "check", str(scratch / "db/out/trivy.db")],
                                     capture_output=True, text=True)
                print(f"bbolt check: {res.stdout.strip() or res.stderr.strip()} "
                      f"({time.perf_counter() - t:.1f} s)")
        if args.aqua:
            shutil.rmtree(scratch / "map", ignore_errors=True)
            aqua = aqua_build(args.aqua, args.count, args.seed, scratch)
            if aqua["code"] != 0:
                print(f"aqua:     trivy-db build failed ({aqua['code']}): {aqua['stderr']}")
            else:
                print(f"aqua:     trivy-db build (GHSA source, same {args.count} advisories as OSV files): "
                      f"{aqua['seconds']:.1f} s, peak RSS {aqua['rss_mib']:.0f} MiB, trivy.db "
                      f"{aqua['db_bytes'] / 1e6:.1f} MB; stella-build map + db / aqua = "
                      f"{total / aqua['seconds']:.2f}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
