"""Deterministic synthetic OSV corpus generator for benchmarks and scale tests.

    python bench/gen_osv_corpus.py --count 500000 --seed 1 --out /tmp/osv-500k
    python bench/gen_osv_corpus.py --count 100000 --seed 1 --out /tmp/osv.jsonl --format jsonl

Advisories look like real OSV records of PyPI, Go, npm, crates.io and Maven (package names,
ECOSYSTEM/SEMVER ranges with several introduced/fixed pairs, last_affected, explicit versions,
CVSS v3/v4 vectors, CVE/GHSA aliases, references, withdrawn records). Output depends only on
``--count`` and ``--seed``: the same arguments give byte-identical files (JSON with sorted keys,
timestamps derived from the seed, never the wall clock). Files are sharded as
``<out>/<ecosystem>/<nnn>/<ID>.json`` so that no directory gets too large.

The daily update (bench/bench_daily.py): ``--change 0.01 --change-seed 2`` rewrites a seeded 1 %
of an existing ``--out`` tree (same ``--count`` and ``--seed``) with the next version of each
chosen advisory: ``modified`` 1-30 days later, one more reference, and some ``fixed`` versions
moved to a later patch release.

    python bench/gen_osv_corpus.py --count 100000 --seed 1 --out /tmp/osv-100k --change 0.01 --change-seed 2
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from typing import Any, Iterator

ECOSYSTEMS = [("PyPI", 30), ("Go", 25), ("npm", 25), ("crates.io", 10), ("Maven", 10)]
PREFIX = {"PyPI": "PYSEC", "Go": "GO", "npm": "NPM", "crates.io": "RUSTSEC", "Maven": "MAVEN"}
WORDS = ["http", "json", "yaml", "auth", "crypto", "image", "parse", "net", "log", "xml", "sql", "cache",
         "proxy", "grpc", "tls", "zip", "tar", "config", "template", "session", "jwt", "oauth", "html",
         "markdown", "regex", "socket", "client", "server", "core", "utils"]
CVSS3 = {"AV": "NALP", "AC": "LH", "PR": "NLH", "UI": "NR", "S": "UC", "C": "HLN", "I": "HLN", "A": "HLN"}
CVSS4 = {"AV": "NALP", "AC": "LH", "AT": "NP", "PR": "NLH", "UI": "NPA", "VC": "HLN", "VI": "HLN", "VA": "HLN",
         "SC": "HLN", "SI": "HLN", "SA": "HLN"}
REF_TYPES = ["WEB", "ADVISORY", "FIX", "REPORT", "PACKAGE"]
EPOCH_2015 = 1420070400


def _package(rng: random.Random, eco: str) -> str:
    a, b = rng.choice(WORDS), rng.choice(WORDS)
    if eco == "Go":
        return f"github.com/{a}{rng.randint(1, 999)}/{b}" + rng.choice(["", "", "/v2", "/v3"])
    if eco == "npm":
        return rng.choice(["", "", f"@{a}/"]) + f"{b}-{rng.choice(WORDS)}"
    if eco == "Maven":
        return f"org.{a}.{b}:{b}-{rng.choice(WORDS)}"
    if eco == "crates.io":
        return f"{a}_{b}" if rng.random() < 0.3 else f"{a}-{b}"
    return f"{a}-{b}" if rng.random() < 0.7 else f"{a.capitalize()}_{b}"


def _version(rng: random.Random, eco: str, floor: tuple[int, int, int]) -> tuple[tuple[int, int, int], str]:
    major = floor[0] + rng.choice([0, 0, 0, 1])
    minor = floor[1] + rng.randint(1, 4) if major == floor[0] else rng.randint(0, 5)
    patch = rng.randint(0, 12)
    t = (major, minor, patch)
    text = f"{major}.{minor}.{patch}"
    if eco == "PyPI" and patch == 0 and rng.random() < 0.5:
        text = f"{major}.{minor}"
    return t, text


def _timestamp(rng: random.Random, base: int) -> int:
    return base + rng.randint(0, 3 * 365 * 86400)


def _rfc3339(seconds: int) -> str:
    days, rem = divmod(seconds, 86400)
    import datetime as dt

    d = dt.date(1970, 1, 1) + dt.timedelta(days=days)
    return f"{d.isoformat()}T{rem // 3600:02d}:{rem % 3600 // 60:02d}:{rem % 60:02d}Z"


def _vector(rng: random.Random, metrics: dict[str, str], prefix: str) -> str:
    return prefix + "/".join(f"{k}:{rng.choice(v)}" for k, v in metrics.items())


def advisory(rng: random.Random, index: int) -> dict[str, Any]:
    eco = rng.choices([e for e, _ in ECOSYSTEMS], weights=[w for _, w in ECOSYSTEMS])[0]
    year = 2015 + rng.randint(0, 10)
    vid = f"{PREFIX[eco]}-{year}-{index:07d}"
    name = _package(rng, eco)
    events: list[dict[str, str]] = []
    floor = (0, 0, 0)
    for i in range(rng.choice([1, 1, 1, 2, 3])):
        if i == 0 and rng.random() < 0.6:
            events.append({"introduced": "0"})
        else:
            floor, text = _version(rng, eco, floor)
            events.append({"introduced": text})
        floor, text = _version(rng, eco, floor)
        kind = "fixed" if rng.random() < 0.9 else "last_affected"
        if i == 0 or rng.random() < 0.95:
            events.append({kind: text})
    rtype = "ECOSYSTEM" if eco in ("PyPI", "Maven") else "SEMVER"
    affected: dict[str, Any] = {"package": {"ecosystem": eco, "name": name}, "ranges": [{"type": rtype, "events": events}]}
    if eco == "PyPI" and rng.random() < 0.5:
        affected["versions"] = [f"0.{m}.{p}" for m in range(rng.randint(1, 4)) for p in range(3)]
    if eco == "Go":
        affected["ecosystem_specific"] = {"imports": [{"path": name, "symbols": sorted(rng.sample(WORDS, 2))}]}
    published = _timestamp(rng, EPOCH_2015 + (year - 2015) * 365 * 86400)
    doc: dict[str, Any] = {
        "schema_version": "1.6.0",
        "id": vid,
        "published": _rfc3339(published),
        "modified": _rfc3339(published + rng.randint(0, 400 * 86400)),
        "aliases": sorted({f"CVE-{year}-{rng.randint(1000, 99999)}" for _ in range(rng.choice([0, 1, 1, 2]))}
                          | ({f"GHSA-{rng.randbytes(2).hex()}-{rng.randbytes(2).hex()}-{rng.randbytes(2).hex()}"}
                             if rng.random() < 0.5 else set())),
        "summary": f"{rng.choice(WORDS).capitalize()} {rng.choice(['injection', 'overflow', 'bypass', 'DoS', 'traversal'])} in {name}",
        "details": " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 80))),
        "affected": [affected],
        "references": [{"type": rng.choice(REF_TYPES), "url": f"https://example.org/{vid.lower()}/{k}"}
                       for k in range(rng.randint(1, 5))],
    }
    r = rng.random()
    if r < 0.5:
        doc["severity"] = [{"type": "CVSS_V3", "score": _vector(rng, CVSS3, "CVSS:3.1/")}]
    elif r < 0.6:
        doc["severity"] = [{"type": "CVSS_V4", "score": _vector(rng, CVSS4, "CVSS:4.0/")}]
    if rng.random() < 0.01:
        doc["withdrawn"] = _rfc3339(published + 500 * 86400)
    if rng.random() < 0.3:
        doc["database_specific"] = {"severity": rng.choice(["LOW", "MODERATE", "HIGH", "CRITICAL"]),
                                    "cwe_ids": [f"CWE-{rng.choice([20, 22, 79, 89, 400, 787])}"]}
    return doc


def generate(count: int, seed: int) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    for i in range(count):
        yield advisory(rng, i)


def changed(doc: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """The next version of ``doc`` (a new dict): ``modified`` 1-30 days later, one reference
    added, and each ``fixed`` event moved to a later patch release with probability 1/2 (at
    least the first one, so every changed record changes its Trivy values too)."""
    doc = json.loads(json.dumps(doc))
    days = rng.randint(1, 30)
    mod = doc["modified"]
    import datetime as dt

    when = dt.datetime.strptime(mod, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    doc["modified"] = _rfc3339(int(when.timestamp()) + days * 86400)
    doc["references"].append({"type": "ADVISORY",
                              "url": f"https://example.org/{doc['id'].lower()}/update-{days}"})
    first = True
    for aff in doc["affected"]:
        for rng_ in aff.get("ranges", []):
            for ev in rng_["events"]:
                if "fixed" in ev and (first or rng.random() < 0.5):
                    parts = ev["fixed"].split(".")
                    parts += ["0"] * (3 - len(parts))
                    parts[2] = str(int(parts[2]) + 1)
                    ev["fixed"] = ".".join(parts)
                    first = False
    return doc


def corpus_path(out: str, index: int, doc: dict[str, Any]) -> str:
    """Where the files format writes advisory ``index``: ``<out>/<ecosystem>/<nnn>/<ID>.json``."""
    eco = doc["affected"][0]["package"]["ecosystem"].replace(".", "_")
    return os.path.join(out, eco, f"{index // 1000:04d}", doc["id"] + ".json")


def change_corpus(out: str, count: int, seed: int, fraction: float, change_seed: int) -> list[str]:
    """Rewrite ``round(count * fraction)`` seeded-random advisories of the files-format corpus at
    ``out`` (written with the same ``count`` and ``seed``) with their ``changed`` version;
    returns the paths written, sorted. Same arguments → same files."""
    rng = random.Random(change_seed)
    chosen = set(rng.sample(range(count), round(count * fraction)))
    written = []
    for i, doc in enumerate(generate(count, seed)):
        if i in chosen:
            path = corpus_path(out, i, doc)
            with open(path, "wb") as fh:
                fh.write(encode(changed(doc, rng)))
            written.append(path)
    return sorted(written)


def daily_exportfile(srcs: str, shards: int, json_raw_level: int = 19) -> str:
    """The Exportfile of the daily-update workspace (bench/bench_daily.py, tests/test_incremental.py):
    an ``osv_source`` over `srcs` (a glob) in `shards` hash shards feeding ``json_raw`` (zstd level
    `json_raw_level`) and ``trivy_db``, with a fixed SOURCE_DATE_EPOCH."""
    return f"""[package]
source_date_epoch = 1735689600

[targets.osv]
rule = "osv_source"
srcs = ["{srcs}"]
shards = {shards}
source = {{ name = "Synthetic OSV" }}

[targets.json-raw]
rule = "json_raw"
deps = [":osv"]
compression_level = {json_raw_level}

[targets.trivy-db]
rule = "trivy_db"
deps = [":osv"]
"""


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="directory (files) or file path (jsonl)")
    p.add_argument("--format", choices=["files", "jsonl"], default="files")
    p.add_argument("--change", type=float, metavar="FRACTION", help=(
        "rewrite this fraction of the existing files-format corpus at --out with the next "
        "version of each chosen advisory (the daily update)"))
    p.add_argument("--change-seed", type=int, default=2)
    args = p.parse_args(argv)
    if args.change is not None:
        paths = change_corpus(args.out, args.count, args.seed, args.change, args.change_seed)
        print(f"changed {len(paths)} of {args.count} advisories (change seed {args.change_seed}) "
              f"in {args.out}", file=sys.stderr)
        return 0
    if args.format == "jsonl":
        with open(args.out, "wb") as fh:
            for doc in generate(args.count, args.seed):
                fh.write(encode(doc) + b"\n")
    else:
        made: set[str] = set()
        for i, doc in enumerate(generate(args.count, args.seed)):
            path = corpus_path(args.out, i, doc)
            d = os.path.dirname(path)
            if d not in made:
                os.makedirs(d, exist_ok=True)
                made.add(d)
            with open(path, "wb") as fh:
                fh.write(encode(doc))
    print(f"wrote {args.count} advisories (seed {args.seed}) to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
