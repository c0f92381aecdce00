"""Benchmark of shipping only the change of a Trivy DB: trivy_db_patch and mirror:delta's DB patches.

    /tmp/v/bin/python bench/bench_trivy_patch.py --count 100000 [--change 0.01] [--dir /tmp]
    /tmp/v/bin/python bench/bench_trivy_patch.py --corpora          # the shared OSV corpora (PyPI + Go)

1. the input: N synthetic OSV advisories (bench/gen_osv_corpus.py; `--corpora`: a private copy of
   the shared osv-pypi and osv-go corpora) in a scratch workspace;
2. build //synth:trivy-db and //synth:mirror-db (a mirror_full carrying that DB) = v1; keep v1's
   trivy.db as the base the sites hold and v1's mirror as the base mirror;
3. edit a seeded random `--change` fraction of the advisory files (modified date, one more
   reference, the first fixed version bumped; the generator has no "changed version" option yet),
   build v2, //synth:trivy-db-patch and the mirror delta //synth:mirror-db-delta against v1;
4. apply both at a "site" (`stella-build trivy-db patch`, `stella-build mirror apply`) and compare
   with v2's full build byte for byte (trivy.db; the whole mirror, db.tar.gz included).
Prints one JSON object: sizes (bytes), the patch / db.tar.gz ratios, the mirror delta's size
with the DB carried as a patch and as the whole archive (what the delta shipped before
blobPatches: the same delta with the patch replaced by the archive), wall times (s) of each step.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "stella-build")
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()
sys.path.insert(0, str(REPO / "bench"))

EXPORTFILE = """[package]
source_date_epoch = 1735689600

{sources}

[targets.trivy-db]
rule = "trivy_db"
deps = [{deps}]

[targets.mirror-db]
rule = "mirror_full"
deps = [":trivy-db"]

[targets.mirror-db-delta]
rule = "mirror_delta"
deps = [":mirror-db"]
"""
SYNTH_SOURCE = """[targets.osv]
rule = "osv_source"
srcs = ["osv/**/*.json"]
shards = {shards}
source = {{ name = "synthetic", license = "CC0-1.0" }}"""
CORPORA_SOURCES = """[targets.osv-pypi]
rule = "osv_source"
srcs = ["@data//osv-pypi/vulns/**/*.yaml"]
shards = {shards}

[targets.osv-go]
rule = "osv_source"
srcs = ["@data//osv-go/*.json"]
shards = {shards}"""
PATCH = """
[targets.trivy-db-patch]
rule = "trivy_db_patch"
deps = [":trivy-db"]
base = {{ db = "base/trivy.db", sha256 = "{sha}" }}
compression_level = {level}
"""


def _cli(args: list[str], ws: Path) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STELLA_")}
    start = time.monotonic()
    subprocess.run([CLI, "--cache-dir", str(ws / ".cache"), "-q", *args], cwd=ws, env=env, check=True,
                   stdout=sys.stderr)  # stdout is the JSON report alone
    return time.monotonic() - start


def _edit(doc: dict, stamp: str) -> dict:
    """A daily-update style edit: new modified date, one more reference, the first fixed version
    bumped (so the DB's version ranges change too, not only its texts)."""
    doc = copy.deepcopy(doc)  # YAML documents hold datetimes: no JSON round trip
    doc["modified"] = stamp
    doc.setdefault("references", []).append({"type": "WEB", "url": f"https://example.org/{doc['id']}/update"})
    for aff in doc.get("affected", []):
        for rng in aff.get("ranges", []):
            for ev in rng.get("events", []):
                if "fixed" in ev and re.search(r"\d+$", ev["fixed"]):  # 1.2.3 → 1.2.4: still valid semver
                    ev["fixed"] = re.sub(r"\d+$", lambda m: str(int(m.group()) + 1), ev["fixed"])
                    return doc
    return doc


def _synthetic(pkg: Path, count: int, seed: int) -> list[Path]:
    from gen_osv_corpus import encode, generate

    files = []
    for i, doc in enumerate(generate(count, seed)):
        d = pkg / "osv" / f"{i // 1000:04d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{doc['id']}.json").write_bytes(encode(doc))
        files.append(d / f"{doc['id']}.json")
    return files


def _change(files: list[Path], fraction: float, seed: int) -> int:
    import yaml

    chosen = random.Random(seed).sample(sorted(files), max(1, round(len(files) * fraction)))
    for path in chosen:
        if path.suffix == ".json":
            path.write_text(json.dumps(_edit(json.loads(path.read_text()), "2025-06-01T00:00:00Z")))
        else:
            path.write_text(yaml.safe_dump(_edit(yaml.safe_load(path.read_text()), "2025-06-01T00:00:00Z")))
    return len(chosen)


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _same_tree(a: Path, b: Path, ignore: tuple[str, ...]) -> bool:
    fa = {p.relative_to(a).as_posix(): p for p in a.rglob("*") if p.is_file()}
    fb = {p.relative_to(b).as_posix(): p for p in b.rglob("*") if p.is_file()}
    keys = set(fa) - set(ignore)
    return keys == set(fb) - set(ignore) and all(fa[k].read_bytes() == fb[k].read_bytes() for k in keys)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=100000)
    p.add_argument("--corpora", action="store_true", help="the shared OSV corpora (PyPI + Go) instead of --count")
    p.add_argument("--data", default=str(SHARED_DATA), help="where the shared corpora are (default: %(default)s)")
    p.add_argument("--change", type=float, default=0.01, help="fraction of advisories changed (0.01 = 1 %%)")
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--level", type=int, default=19)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dir", default=None)
    p.add_argument("--keep", action="store_true", help="keep the scratch workspace (its path is printed)")
    args = p.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="bench-trivy-patch-", dir=args.dir))
    try:
        ws = scratch / "ws"
        pkg = ws / "synth"
        pkg.mkdir(parents=True)
        t0 = time.monotonic()
        if args.corpora:
            data = scratch / "data"
            for name in ("osv-pypi", "osv-go"):
                shutil.copytree(Path(args.data) / name, data / name)
            files = [f for f in data.rglob("*") if f.suffix in (".json", ".yaml") and f.name != "LICENSE"]
            (ws / "stella-workspace.toml").write_text(f'[workspace]\nexternal = {{ data = "{data}" }}\n')
            sources, deps = CORPORA_SOURCES.format(shards=args.shards), '":osv-pypi", ":osv-go"'
        else:
            files = _synthetic(pkg, args.count, args.seed)
            (ws / "stella-workspace.toml").write_text("[workspace]\nexternal = {}\n")
            sources, deps = SYNTH_SOURCE.format(shards=args.shards), '":osv"'
        (pkg / "Exportfile").write_text(EXPORTFILE.format(sources=sources, deps=deps))
        times = {"generate": time.monotonic() - t0,
                 "build_v1": _cli(["build", "//synth:trivy-db", "//synth:mirror-db"], ws)}
        out = ws / "stella-out" / "synth"
        base = ws / "base" / "trivy.db"
        base.parent.mkdir()
        shutil.copyfile(out / "trivy-db" / "trivy.db", base)
        base_mirror = scratch / "mirror-v1"
        shutil.copytree(out / "mirror-db", base_mirror)
        changed = _change(files, args.change, args.seed)
        times["build_v2"] = _cli(["build", "//synth:trivy-db", "//synth:mirror-db"], ws)
        with open(pkg / "Exportfile", "a") as f:
            f.write(PATCH.format(sha=hashlib.sha256(base.read_bytes()).hexdigest(), level=args.level))
        times["build_patch"] = _cli(["build", "//synth:trivy-db-patch"], ws)
        times["build_mirror_delta"] = _cli(["mirror", "delta", "--base", str(base_mirror),
                                            "//synth:mirror-db-delta"], ws)
        patch_dir, delta = out / "trivy-db-patch", out / "mirror-db-delta"
        times["apply_patch"] = _cli(["trivy-db", "patch", str(base), str(patch_dir), "-o", str(scratch / "out")], ws)
        times["apply_mirror_delta"] = _cli(["mirror", "apply", str(base_mirror), str(delta), "-o",
                                            str(scratch / "applied")], ws)
        identical = (scratch / "out" / "trivy.db").read_bytes() == (out / "trivy-db" / "trivy.db").read_bytes()
        mirror_identical = _same_tree(scratch / "applied", out / "mirror-db", ignore=("appliedExportIds.log",))
        patch_bytes = (patch_dir / "trivy.db.zst").stat().st_size
        archive = (out / "trivy-db" / "db.tar.gz").stat().st_size
        diff = json.loads((delta / "delta" / "manifest.diff.json").read_bytes())
        carried = diff.get("blobPatches", [])
        delta_bytes, oci_bytes = _tree_bytes(delta / "delta"), _tree_bytes(delta / "oci")
        # Before blobPatches the delta carried each patched archive whole (same delta otherwise).
        swap = sum(e["bytes"] - e["patchBytes"] for e in carried)
        print(json.dumps({
            "input": "corpora (osv-pypi + osv-go)" if args.corpora else f"synthetic {args.count}",
            "advisory_files": len(files), "changed": changed, "level": args.level,
            "trivy_db_bytes": (out / "trivy-db" / "trivy.db").stat().st_size, "db_tar_gz_bytes": archive,
            "trivy_db_patch": {"patch_bytes": patch_bytes, "patch_vs_db_tar_gz": round(patch_bytes / archive, 5),
                               "identical": identical},
            "mirror_delta": {
                "db_patch_bytes": [e["patchBytes"] for e in carried],
                "db_patch_vs_db_tar_gz": [round(e["patchBytes"] / e["bytes"], 5) for e in carried],
                "delta_bytes": delta_bytes, "delta_bytes_db_whole": delta_bytes + swap,
                "oci_bytes": oci_bytes, "oci_bytes_db_whole": oci_bytes + swap,
                "applied_identical_to_full_v2": mirror_identical},
            "seconds": {k: round(v, 2) for k, v in times.items()},
        }, indent=2))
        return 0 if identical and mirror_identical and carried else 1
    finally:
        if args.keep:
            print(f"kept {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
