#!/usr/bin/env python3
"""The daily update (issue 15): rebuild trivy:db and json:raw after 1 % of the advisories changed.

Prints figures and ratios measured in one run (not a timed test):

1. generate N synthetic advisories (bench/gen_osv_corpus.py, files format) as an ``osv_source``
   with ``--shards`` hash shards feeding ``trivy_db`` and ``json_raw`` (workspace in a temp dir);
2. cold build of each target in its own fresh cache (memo on, the default), and with
   ``--baseline`` also with the per-record memo disabled (``<cache>/memo-v1/DISABLED``), for
   the "cold builds not slower" ratio;
3. rewrite ``--change`` (1 %) of the files with their next version (``gen_osv_corpus.change_corpus``:
   modified date, one reference, some fixed versions; seeded);
4. rebuild each target in its cache: wall and CPU seconds, ratio to its cold build, actions
   executed, peak RSS of the largest process;
5. cold build of the new input in a fresh cache: every output file must be byte-identical to the
   incremental one (the script exits 1 otherwise).

CPU seconds (user + sys of the CLI and its workers) are printed beside wall seconds because the
machine may be shared: the CPU ratio is the one that does not depend on the other tenants.

    /tmp/v/bin/python bench/bench_daily.py --count 100000 [--shards 64] [--jobs 2] [--baseline]
    /tmp/v/bin/python bench/bench_daily.py --corpora   # json:raw after editing one corpora advisory
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
CLI = str(Path(sys.executable).parent / "stella-build")
SNAPSHOT: list[str] = []  # a copy of the package the builds import (PYTHONPATH), when set


def run_build(ws: Path, cache: Path, labels: list[str], jobs: int) -> dict:
    """One CLI build; wall and CPU seconds (CLI + workers, from wait4), peak RSS (MiB) of the
    largest process, and the JSON summary. Fails loudly when the build does."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("STELLA_") and k not in ("SOURCE_DATE_EPOCH", "PYTHONDONTWRITEBYTECODE")}
    # Bytecode caches, as an installed package has them: without, every CLI run and every spawned
    # worker compiles ~250 modules from source (~0.5 s here), which no user pays.
    env["PYTHONPYCACHEPREFIX"] = str(cache.parent / "pycache")
    if SNAPSHOT:  # every build of the run uses the same code, whatever is edited meanwhile
        env["PYTHONPATH"] = SNAPSHOT[0]
    argv = [CLI, "--cache-dir", str(cache), "-j", str(jobs), "--output", "json", *labels]
    log = cache.parent / "build-output"
    with open(log.with_suffix(".out"), "wb") as out, open(log.with_suffix(".err"), "wb") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ws, env=env, stdout=out, stderr=err)
        # wait4: the CLI's own usage plus that of the workers it reaped (CPU, peak RSS)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    text = log.with_suffix(".out").read_text()
    if code != 0:
        raise SystemExit(f"build {labels} failed ({code}): {text[-2000:]}"
                         f"{log.with_suffix('.err').read_text()[-2000:]}")
    summary = json.loads(text)
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mib": usage.ru_maxrss / 1024,
            "actions": summary.get("actions", {})}


def action_seconds(cache: Path, skip: set[str] | None = None) -> tuple[set[str], dict[str, list]]:
    """The cache's result keys, and {mnemonic: [actions, seconds summed, max seconds]} over
    the results whose key is not in `skip` (the actions a build executed): where the time went."""
    from stella_build.engine.cache.index import Index

    idx = Index(cache, readonly=True)
    try:
        results = idx.all_results()
    finally:
        idx.close()
    per: dict[str, list] = {}
    for key, res, _ in results:
        if skip is not None and key in skip:
            continue
        mnemonic = str(res.get("action", "?")).split("#", 1)[-1].split("/", 1)[0]
        row = per.setdefault(mnemonic, [0, 0.0, 0.0])
        seconds = float(res.get("seconds") or 0.0)
        row[0] += 1
        row[1] += seconds
        row[2] = max(row[2], seconds)
    return {key for key, _, _ in results}, per


def print_seconds(label: str, per: dict[str, list]) -> None:
    parts = [f"{m} {n}× {s:.1f} s (max {mx:.2f})" for m, (n, s, mx) in
             sorted(per.items(), key=lambda kv: -kv[1][1])]
    print(f"  {label} action seconds: " + "; ".join(parts))


def digests(ws: Path, target: str) -> dict[str, str]:
    """relative path → sha256 of every file under stella-out/daily/<target>/."""
    root = ws / "stella-out" / "daily" / target
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def fresh_cache(path: Path, memo: bool) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    if not memo:
        (path / "memo-v1").mkdir(parents=True)
        (path / "memo-v1" / "DISABLED").write_text("benchmark baseline: per-record memo off\n")
    return path


def corpora_one_edit(scratch: Path, jobs: int) -> None:
    """//corpora:json-raw over copies of the PyPA and Go corpora: cold, then after editing one
    Go advisory (its summary), as bench/bench_engine.py does; wall and CPU ratios."""
    sys.path.insert(0, str(ROOT))
    from tests.conftest import SHARED_DATA, make_workspace

    data = scratch / "data"
    for sub in ("osv-pypi", "osv-go"):
        shutil.copytree(SHARED_DATA / sub, data / sub)
    ws = make_workspace(scratch / "cws", packages=("corpora",))
    (ws / "stella-workspace.toml").write_text(f'[workspace]\nexternal = {{ shared-data = "{data}" }}\n')
    cache = fresh_cache(scratch / "cache-corpora", True)
    cold = run_build(ws, cache, ["//corpora:json-raw"], jobs)
    time.sleep(2.1)
    victim = sorted((data / "osv-go").glob("GO-2023-*.json"))[5]
    doc = json.loads(victim.read_text())
    doc["summary"] = (doc.get("summary") or "") + " (edited)"
    victim.write_text(json.dumps(doc, indent=2))
    incr = run_build(ws, cache, ["//corpora:json-raw"], jobs)
    print(f"corpora json:raw: cold {cold['wall']:.1f} s wall / {cold['cpu']:.1f} s CPU; after editing one "
          f"advisory {incr['wall']:.2f} s = {incr['wall'] / cold['wall']:.1%} wall, "
          f"{incr['cpu'] / cold['cpu']:.1%} CPU (target <= 5 %); executed "
          f"{incr['actions'].get('executed')}/{incr['actions'].get('total')} actions")
    # The floor of any edit: the same build with nothing changed and no no-op memo (start-up,
    # analysis of every source file, keys and cache hits), min of 3.
    noops = []
    for _ in range(3):
        shutil.rmtree(cache / "noop-memo", ignore_errors=True)
        noops.append(run_build(ws, cache, ["//corpora:json-raw"], jobs))
    floor = min(noops, key=lambda r: r["wall"])
    print(f"  the same build with nothing changed, without the no-op memo: {floor['wall']:.2f} s wall = "
          f"{floor['wall'] / cold['wall']:.1%}, {min(r['cpu'] for r in noops):.2f} s CPU "
          f"(what any edit costs at least); the edit's own work: {incr['wall'] - floor['wall']:.2f} s wall")


def main(argv: list[str] | None = None) -> int:
    from gen_osv_corpus import change_corpus, daily_exportfile
    from gen_osv_corpus import main as gen_main

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--shards", type=int, default=64)
    ap.add_argument("--change", type=float, default=0.01)
    ap.add_argument("--change-seed", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--baseline", action="store_true", help="also time cold builds with the memo off")
    ap.add_argument("--targets", default="trivy-db,json-raw")
    ap.add_argument("--json-raw-level", type=int, default=19,
                    help="json_raw compression_level (default 19, the profile's): the zstd share of a rebuild")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--corpora", action="store_true", help="only the one-edit json:raw figure on the corpora")
    ap.add_argument("--skip-verify", action="store_true",
                    help="skip the final cold build of the new input (the byte-identity check): for 500k runs")
    args = ap.parse_args(argv)
    targets = args.targets.split(",")
    scratch = Path(tempfile.mkdtemp(prefix="bench-daily-", dir=args.dir))
    if args.corpora:
        try:
            sys.path.insert(0, str(ROOT))
            from tests.conftest import assemble_package

            SNAPSHOT.append(str(assemble_package(scratch / "pkg")))
            corpora_one_edit(scratch, args.jobs)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return 0
    failed = False
    sys.path.insert(0, str(ROOT))
    from tests.conftest import assemble_package

    # The memo is scoped by the implementation digest, so an edit of the working tree between the
    # cold build and the rebuild would turn every hit into a miss: build from a snapshot.
    SNAPSHOT.append(str(assemble_package(scratch / "pkg")))
    try:
        corpus = scratch / "corpus"
        t = time.perf_counter()
        gen_main(["--count", str(args.count), "--seed", str(args.seed), "--out", str(corpus)])
        print(f"generate: {args.count} advisories in {time.perf_counter() - t:.1f} s; "
              f"{args.shards} shards, -j{args.jobs}, json:raw zstd level {args.json_raw_level}; "
              f"load {os.getloadavg()[0]:.1f}")
        ws = scratch / "ws"
        (ws / "daily").mkdir(parents=True)
        (ws / "stella-workspace.toml").write_text(f'[workspace]\nexternal = {{ syn = "{corpus}" }}\n')
        exportfile = daily_exportfile("@syn//**/*.json", args.shards, args.json_raw_level)
        (ws / "daily" / "Exportfile").write_text(exportfile)
        cold = {}
        cold_keys: dict[str, set[str]] = {}
        # A daily workspace's Exportfile and corpus directories are not seconds old: wait out the
        # racy-timestamp window, so the cold build records its analysis memo as a real one would.
        time.sleep(2.1)
        for target in targets:
            cold[target] = run_build(ws, fresh_cache(scratch / f"cache-{target}", True),
                                     [f"//daily:{target}"], args.jobs)
            c = cold[target]
            memo = any((scratch / f"cache-{target}" / "analysis-memo").glob("*.json"))
            print(f"cold {target}: {c['wall']:.1f} s wall, {c['cpu']:.1f} s CPU, "
                  f"{c['actions'].get('executed')} actions, peak RSS {c['rss_mib']:.0f} MiB; "
                  f"analysis memo recorded: {'yes' if memo else 'no'}")
            cold_keys[target], per = action_seconds(scratch / f"cache-{target}")
            print_seconds("cold", per)
            if args.baseline:
                b = run_build(ws, fresh_cache(scratch / "cache-baseline", False),
                              [f"//daily:{target}"], args.jobs)
                print(f"cold {target} without the memo: {b['wall']:.1f} s wall, {b['cpu']:.1f} s CPU; "
                      f"with / without = {c['wall'] / b['wall']:.3f} wall, {c['cpu'] / b['cpu']:.3f} CPU "
                      f"(target <= 1.05)")
                shutil.rmtree(scratch / "cache-baseline", ignore_errors=True)
        time.sleep(2.1)  # past the engine's racy-timestamp window for the edited files
        changed = change_corpus(str(corpus), args.count, args.seed, args.change, args.change_seed)
        print(f"change:   {len(changed)} files rewritten ({args.change:.1%}, seed {args.change_seed})")
        incr_digests = {}
        for target in targets:
            r = run_build(ws, scratch / f"cache-{target}", [f"//daily:{target}"], args.jobs)
            c = cold[target]
            a = r["actions"]
            print(f"rebuild {target}: {r['wall']:.1f} s wall = {r['wall'] / c['wall']:.1%} of cold, "
                  f"{r['cpu']:.1f} s CPU = {r['cpu'] / c['cpu']:.1%} of cold; executed "
                  f"{a.get('executed')}/{a.get('total')} actions; peak RSS {r['rss_mib']:.0f} MiB")
            print_seconds("rebuild", action_seconds(scratch / f"cache-{target}", cold_keys[target])[1])
            incr_digests[target] = digests(ws, target)
        if args.skip_verify:
            print("bytes: not compared (--skip-verify)")
            return 0
        n = run_build(ws, fresh_cache(scratch / "cache-new", True),
                      [f"//daily:{t}" for t in targets], args.jobs)
        print(f"cold build of the new input ({' + '.join(targets)}): {n['wall']:.1f} s wall")
        for target in targets:
            same = digests(ws, target) == incr_digests[target]
            failed |= not same
            print(f"bytes {target}: rebuild {'==' if same else '!='} cold build of the new input "
                  f"({len(incr_digests[target])} files)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
