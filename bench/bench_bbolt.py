"""Benchmark of the streaming bbolt writer (rules/trivy/bbolt.py) on a Trivy-shaped DB.

Prints wall time, peak RSS, write throughput and, measured in the same run on the same
directory, the raw sequential write speed of the disk (same byte count of zeros, fsync) and the
ratio writer/raw. Usage:

    .venv/bin/python bench/bench_bbolt.py [--keys 500000] [--dir /tmp] [--check]
    .venv/bin/python bench/bench_bbolt.py --shape trivy-500k   # the key mix of a 500k-advisory trivy.db

The generated data is deterministic: ~40 % of the keys go to a flat `vulnerability` bucket with
values of 200..3000 bytes (1 in 500 is 12..40 KB, so overflow pages occur); the rest go to
platform buckets `<os> <n>/<package>/<CVE>` with 1..6 small advisories per package (inline
buckets) and every 50th package holding 40..120 advisories (a regular bucket).

``--shape trivy-500k`` uses the mix measured on the trivy.db that bench_trivy_db.py builds from
the synthetic corpus (100k advisories: 280k keys, 44k buckets, 136 MB), scaled to 500k
advisories: 1.4M keys, 36 % of them `vulnerability` values of 300..1500 bytes, the rest small
advisories, ~690 MB. That DB has twice as many keys per MB as the default mix, so it is the
harder case for a per-key cost.
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile
import time

from stella_build.rules.formats.trivy.bbolt import BboltReader, BboltWriter

_BLOB = random.Random(7).randbytes(1 << 16)
_RNG = random.Random(8)
_FRACTIONS = [_RNG.random() for _ in range(4099)]  # cheap deterministic "randomness"


class _Values:
    """Deterministic values of pseudo-random length, sliced from a fixed blob (cheap to make)."""

    def __init__(self) -> None:
        self.i = 0

    def __call__(self, lo: int, hi: int) -> bytes:
        self.i += 1
        f = _FRACTIONS[self.i % len(_FRACTIONS)]
        n = lo + int(f * (hi - lo))
        if n >= len(_BLOB):
            return (_BLOB * (n // len(_BLOB) + 1))[:n]
        off = int(_FRACTIONS[(self.i * 7) % len(_FRACTIONS)] * (len(_BLOB) - n))
        return _BLOB[off:off + n]


SHAPES = {  # name: (keys, fraction of keys in `vulnerability`, vulnerability value sizes lo, hi)
    "default": (500_000, 0.4, 200, 3000),
    "trivy-500k": (1_400_000, 0.36, 300, 1500),
}


def generate(writer: BboltWriter, total_keys: int, vuln_fraction: float = 0.4,
             vuln_sizes: tuple[int, int] = (200, 3000)) -> tuple[int, int]:
    """Feed the writer; returns (keys, value bytes)."""
    rng = random.Random(42)
    value = _Values()
    n_vuln = int(total_keys * vuln_fraction)
    n_adv = total_keys - n_vuln
    keys = nbytes = 0
    platforms = [b"alpine 3.%d" % i for i in range(10, 20)]
    platforms += [b"debian %d" % i for i in range(8, 13)]
    per_platform = n_adv // len(platforms) + 1
    for plat in sorted(platforms):
        left = min(per_platform, n_adv - keys)
        pkg = 0
        while left > 0:
            pkg += 1
            count = rng.randint(40, 120) if pkg % 50 == 0 else rng.randint(1, 6)
            count = min(count, left)
            items = [(b"CVE-2020-%06d" % i, value(20, 90)) for i in range(count)]
            writer.add_bucket((plat, b"pkg-%07d" % pkg), items)
            left -= count
            keys += count
            nbytes += sum(len(v) for _, v in items)

    def vulns():
        nonlocal nbytes
        for i in range(n_vuln):
            big = i % 500 == 0
            v = value(12000, 40000) if big else value(*vuln_sizes)
            nbytes += len(v)
            yield b"CVE-%04d-%07d" % (1999 + i * 27 // n_vuln, i), v

    writer.add_bucket((b"vulnerability",), vulns())
    writer.close()
    return keys + n_vuln, nbytes


class _NullWriter:
    """Consumes what generate() produces without writing: measures the data generation cost."""

    def add_bucket(self, path, items) -> None:
        for _ in items:
            pass

    def close(self) -> None:
        pass


def raw_write_speed(directory: str, nbytes: int) -> float:
    """Seconds to write ``nbytes`` of zeros sequentially in 8 MiB chunks, then fsync."""
    chunk = bytes(8 << 20)
    fd, path = tempfile.mkstemp(dir=directory, prefix="raw-")
    try:
        t0 = time.perf_counter()
        with os.fdopen(fd, "wb", buffering=0) as f:
            left = nbytes
            while left > 0:
                left -= f.write(chunk[:min(left, len(chunk))])
            os.fsync(f.fileno())
        return time.perf_counter() - t0
    finally:
        os.unlink(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=None, help="default: the shape's key count")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="default")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of the writer run")
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--check", action="store_true", help="also run the Python reader's check()")
    args = ap.parse_args(argv)
    shape_keys, fraction, lo, hi = SHAPES[args.shape]
    args.keys = args.keys or shape_keys
    mix = dict(vuln_fraction=fraction, vuln_sizes=(lo, hi))

    fd, path = tempfile.mkstemp(dir=args.dir, prefix="bench-", suffix=".db")
    try:
        t0 = time.perf_counter()
        c0 = time.process_time()  # CPU of both threads: on a loaded machine wall time is not ours
        prof = None
        if args.profile:
            import cProfile
            prof = cProfile.Profile()
            prof.enable()
        with os.fdopen(fd, "wb") as f:
            keys, value_bytes = generate(BboltWriter(f), args.keys, **mix)
            f.flush()
            os.fsync(f.fileno())
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        if prof is not None:
            import pstats
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)
        size = os.path.getsize(path)
        rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        raw = sorted(raw_write_speed(args.dir, size) for _ in range(3))[1]  # median of 3
        t2 = time.perf_counter()
        c2 = time.process_time()
        generate(_NullWriter(), args.keys, **mix)
        gen = time.perf_counter() - t2
        gen_cpu = time.process_time() - c2
        mbps = size / wall / 1e6
        raw_mbps = size / raw / 1e6
        own_mbps = size / (wall - gen) / 1e6
        print(f"shape            {args.shape}")
        print(f"keys             {keys}")
        print(f"value bytes      {value_bytes / 1e6:.1f} MB")
        print(f"file size        {size / 1e6:.1f} MB ({size // 4096} pages)")
        print(f"wall time        {wall:.2f} s (incl. data generation and fsync)")
        print(f"peak RSS         {rss_mib:.0f} MiB")
        print(f"writer speed     {mbps:.0f} MB/s, {keys / wall / 1e3:.0f} k keys/s")
        print(f"data generation  {gen:.2f} s (measured alone; included in wall time)")
        print(f"writer alone     {own_mbps:.0f} MB/s (wall time minus data generation)")
        print(f"writer CPU       {size / (cpu - gen_cpu) / 1e6:.0f} MB/s ({cpu - gen_cpu:.2f} s CPU, "
              "user+sys of both threads minus data generation; independent of the machine's load)")
        print(f"raw disk write   {raw_mbps:.0f} MB/s ({raw:.2f} s for the same size, fsync, "
              "median of 3)")
        print(f"ratio            {mbps / raw_mbps:.2f} (writer alone: {own_mbps / raw_mbps:.2f})")
        if args.check:
            t1 = time.perf_counter()
            with BboltReader(path) as r:
                errors = r.check()
            print(f"reader check     {time.perf_counter() - t1:.2f} s, {len(errors)} errors")
    finally:
        os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
