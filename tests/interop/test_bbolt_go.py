"""Cross-check the pure-Python bbolt writer with the real Go bbolt CLI (go.etcd.io/bbolt v1.5.0).

`bbolt check` runs tx.Check (page ids, types, reachability, key order, freelist); `bbolt
buckets` / `keys` / `get` / `inspect` read back what was written.
"""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from stella_build.rules.formats.trivy.bbolt import BboltReader, BboltWriter, write_tree

from .conftest import require_tool

pytestmark = pytest.mark.interop


def _run(bbolt: str, *args: str) -> str:
    proc = subprocess.run([bbolt, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"bbolt {' '.join(args[:1])} failed: {proc.stderr[-2000:]}"
    return proc.stdout


def _check(bbolt: str, path) -> None:
    assert _run(bbolt, "check", str(path)).strip() == "OK"


def _keys_hex(bbolt: str, path, *bucket: bytes) -> list[str]:
    # bucket names are passed as text (the CLI has no hex input for bucket names)
    out = _run(bbolt, "keys", "--format", "hex", str(path), *(b.decode() for b in bucket))
    return out.split()


def _get_hex(bbolt: str, path, *bucket_then_key: bytes) -> str:
    # `get --parse-format hex` applies to KEY only; bucket names are taken as text
    *buckets, key = bucket_then_key
    return _run(bbolt, "get", "--parse-format", "hex", "--format", "hex", str(path),
                *(b.decode() for b in buckets), key.hex()).strip()


def _inspect_counts(node: dict, prefix: tuple = ()) -> dict[tuple, int]:
    """{bucket path: number of plain keys} from `bbolt inspect` JSON."""
    counts = {}
    for child in node.get("buckets") or []:
        path = prefix + (child["name"],)
        counts[path] = child["keyN"]
        counts.update(_inspect_counts(child, path))
    return counts


def _value(i: int, n: int) -> bytes:
    return (b"%d:" % i + b"abcdefghijklmnopqrstuvwxyz0123456789" * (n // 36 + 1))[:n]


SMALL_TREE = {
    b"vulnerability": {b"CVE-2024-%05d" % i: _value(i, i % 700) for i in range(1500)},
    b"alpine 3.18": {b"pkg-%04d" % i: {b"CVE-%d" % j: b'{"FixedVersion":"1.0-r%d"}' % j
                                      for j in range(i % 9)} for i in range(1200)},
    b"overflow": {b"a": _value(1, 20000), b"b": _value(2, 9000), b"c": _value(3, 4097),
                  b"nested": {b"x": _value(4, 70000)}},
    b"data-source": {},
    b"Red Hat CPE": {b"cpe": {b"%d" % i: b'"cpe:/o:redhat:%d"' % i for i in range(300)},
                     b"nvr": {}, b"repository": {b"rhel-8": b"[1,2,3]"}},
}


def test_go_bbolt_reads_small_trees(tmp_path) -> None:
    bbolt = require_tool("bbolt")
    variants = {"default.db": {}, "fill50.db": {"fill_percent": 0.5},
                "page16k.db": {"page_size": 16384}, "page1k.db": {"page_size": 1024}}
    for name, kw in variants.items():
        path = tmp_path / name
        write_tree(path, SMALL_TREE, **kw)
        _check(bbolt, path)
        assert _run(bbolt, "buckets", str(path)).split("\n")[:-1] == \
            [b.decode() for b in sorted(SMALL_TREE)]
        assert _keys_hex(bbolt, path, b"overflow") == [k.hex() for k in sorted(SMALL_TREE[b"overflow"])]
        assert _keys_hex(bbolt, path, b"alpine 3.18", b"pkg-0017") == \
            [k.hex() for k in sorted(SMALL_TREE[b"alpine 3.18"][b"pkg-0017"])]
        for key in (b"a", b"b", b"c"):
            assert _get_hex(bbolt, path, b"overflow", key) == SMALL_TREE[b"overflow"][key].hex()
        assert _get_hex(bbolt, path, b"overflow", b"nested", b"x") == _value(4, 70000).hex()
        for i in (0, 1, 699, 1499):
            key = b"CVE-2024-%05d" % i
            assert _get_hex(bbolt, path, b"vulnerability", key) == \
                SMALL_TREE[b"vulnerability"][key].hex()
        inspected = _inspect_counts(json.loads(_run(bbolt, "inspect", str(path))))
        assert inspected[("alpine 3.18", "pkg-0008")] == 8
        assert inspected[("vulnerability",)] == 1500
        assert inspected[("data-source",)] == 0
        assert len(inspected) == 5 + 1200 + 1 + 3


def test_go_bbolt_reads_empty_db(tmp_path) -> None:
    bbolt = require_tool("bbolt")
    path = tmp_path / "empty.db"
    write_tree(path, {})
    _check(bbolt, path)
    assert _run(bbolt, "buckets", str(path)) == ""


N_PACKAGES = 60_000  # ~3.75 advisories each: ~225k keys in ~60k mostly inline buckets
N_VULNS = 280_000


def _stream_large(writer: BboltWriter) -> dict[tuple, int]:
    """Feed a Trivy-shaped DB with >= 500k keys; returns {bucket path: key count}."""
    counts: dict[tuple, int] = {}
    for plat in (b"alpine 3.19", b"debian 12"):
        for p in range(N_PACKAGES // 2):
            n = 40 if p % 100 == 0 else 1 + p % 6  # every 100th package is a regular bucket
            path = (plat, b"pkg-%06d" % p)
            writer.add_bucket(path, ((b"CVE-2023-%06d" % j, b'{"FixedVersion":"%d.0"}' % j)
                                     for j in range(n)))
            counts[path] = n
    writer.add_bucket((b"vulnerability",), (
        (b"CVE-%07d" % i, _value(i, 9000 if i % 1000 == 0 else 40 + i % 160))
        for i in range(N_VULNS)))
    counts[(b"vulnerability",)] = N_VULNS
    writer.close()
    return counts


def test_go_bbolt_checks_a_500k_key_db(tmp_path) -> None:
    bbolt = require_tool("bbolt")
    path = tmp_path / "large.db"
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        counts = _stream_large(BboltWriter(f))
    build_s = time.perf_counter() - t0
    total_keys = sum(counts.values())
    assert total_keys >= 500_000
    with BboltReader(path) as r:
        stats = r.stats()
    assert stats["inline_buckets"] > 50_000 and stats["overflow_pages"] > 0
    assert stats["keys"] == total_keys

    t1 = time.perf_counter()
    _check(bbolt, path)
    check_s = time.perf_counter() - t1
    inspected = _inspect_counts(json.loads(_run(bbolt, "inspect", str(path))))
    assert inspected == {tuple(p.decode() for p in k): v for k, v in counts.items()} | {
        ("alpine 3.19",): 0, ("debian 12",): 0}
    for i in (0, 1000, 123_457, N_VULNS - 1):
        key = b"CVE-%07d" % i
        assert _get_hex(bbolt, path, b"vulnerability", key) == \
            _value(i, 9000 if i % 1000 == 0 else 40 + i % 160).hex()
    assert _keys_hex(bbolt, path, b"debian 12", b"pkg-000100") == \
        [(b"CVE-2023-%06d" % j).hex() for j in range(40)]
    assert _get_hex(bbolt, path, b"alpine 3.19", b"pkg-000005", b"CVE-2023-000005") == \
        b'{"FixedVersion":"5.0"}'.hex()
    print(f"\n500k-key DB: {total_keys} keys, {path.stat().st_size / 1e6:.1f} MB, "
          f"python build {build_s:.2f} s, bbolt check {check_s:.2f} s")


def test_go_bbolt_check_rejects_a_corrupted_copy(tmp_path) -> None:
    """Negative control: the same check fails once one page header lies about its id."""
    bbolt = require_tool("bbolt")
    path = tmp_path / "ok.db"
    write_tree(path, SMALL_TREE)
    _check(bbolt, path)
    with BboltReader(path) as r:
        leaf = [p for p in r.tree_pages((b"vulnerability",)) if p[2] == "leaf"][3][1]
    data = bytearray(path.read_bytes())
    data[leaf * 4096] ^= 0x01  # page id field
    bad = tmp_path / "bad.db"
    bad.write_bytes(data)
    proc = subprocess.run([bbolt, "check", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 or "OK" not in proc.stdout
