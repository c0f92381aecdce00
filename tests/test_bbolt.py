"""Unit and property tests for the pure-Python bbolt writer/reader (rules/trivy/bbolt.py).

The Go reader cross-check lives in tests/interop/test_bbolt_go.py.
"""
from __future__ import annotations

import hashlib
import io
import struct
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stella_build.rules.formats.trivy.bbolt import (
    BboltError, BboltReader, BboltWriter, fnv1a64, write_tree,
)

PAGE = 4096

# sha256 of aquasecurity/trivy-db pkg/db/testdata/normal.db (git blob e449c289), the file Go
# bbolt's db.init() writes for a new, empty 4 KiB-page DB.
GO_EMPTY_DB_SHA256 = "f80ea184425737cdc7de57b1c8d4797e8a57ccee797991395e3800cd4ed0ac1e"


def _write(tmp_path, tree, name="t.db", **kw):
    path = tmp_path / name
    write_tree(path, tree, **kw)
    return path


def _reference_split(sizes: list[int], page_size: int = PAGE, fill: float = 1.0) -> list[int]:
    """Independent transcription of bbolt node.split()/splitTwo()/splitIndex() (node.go):
    node lengths for element sizes ``sizes`` (16 + len(key) + len(value) each)."""
    threshold = int(page_size * fill)
    out = []
    inodes = list(sizes)
    while True:
        if len(inodes) <= 4 or 16 + sum(inodes) < page_size:
            out.append(len(inodes))
            return out
        sz, index = 16, 0
        for i in range(len(inodes) - 2):
            index = i
            if index >= 2 and sz + inodes[i] > threshold:
                break
            sz += inodes[i]
        out.append(index)
        inodes = inodes[index:]


# ---- fixed facts ---------------------------------------------------------------------------------

def test_empty_db_is_byte_identical_to_go_init(tmp_path) -> None:
    path = _write(tmp_path, {})
    assert hashlib.sha256(path.read_bytes()).hexdigest() == GO_EMPTY_DB_SHA256


def test_fnv1a64_known_vectors() -> None:
    # Published FNV-1a 64 test vectors.
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a64(b"foobar") == 0x85944171F73967E8


def test_meta_and_freelist_layout(tmp_path) -> None:
    path = _write(tmp_path, {b"vulnerability": {b"CVE-1": b"{}"}})
    data = path.read_bytes()
    for txid in (0, 1):
        page = data[txid * PAGE:(txid + 1) * PAGE]
        pid, flags, count, overflow = struct.unpack_from("<QHHI", page)
        assert (pid, flags, count, overflow) == (txid, 0x04, 0, 0)
        magic, version, psize, mflags, root, seq, freelist, hwm, tx = \
            struct.unpack_from("<IIIIQQQQQ", page, 16)
        assert (magic, version, psize, mflags, seq, freelist, tx) == \
            (0xED0CDAED, 2, PAGE, 0, 0, 2, txid)
        assert struct.unpack_from("<Q", page, 72)[0] == fnv1a64(page[16:72])
        assert len(data) == hwm * PAGE and 3 <= root < hwm
        assert not any(page[80:])
    assert struct.unpack_from("<QHHI", data, 2 * PAGE) == (2, 0x10, 0, 0)


def test_inline_bucket_bytes_match_go(tmp_path) -> None:
    # trivy-db-format.md D.6: an empty bucket value is 16 zero bytes + an empty leaf header.
    path = _write(tmp_path, {b"b": {b"empty": {}}})
    with BboltReader(path) as r:
        root_leaf = r.tree_pages((b"b",))
        assert root_leaf[0][2] == "leaf"
        raw = path.read_bytes()
        expected = bytes(16) + struct.pack("<QHHI", 0, 0x02, 0, 0)
        assert raw.count(b"empty" + expected) == 1


# ---- round trips and determinism ---------------------------------------------------------------

def test_trivy_shaped_tree_round_trips(tmp_path) -> None:
    tree = {
        b"vulnerability": {b"CVE-%05d" % i: b"v" * (i % 300) for i in range(3000)},
        b"alpine 3.18": {b"pkg%04d" % i: {b"CVE-%d" % j: b'{"FixedVersion":"1"}'
                                         for j in range(i % 7)} for i in range(2000)},
        b"big": {b"a": b"y" * 20000, b"b": b"z" * 9000, b"c": {}},
        b"data-source": {},
    }
    path = _write(tmp_path, tree)
    with BboltReader(path) as r:
        assert r.check() == []
        assert r.to_tree() == tree
        assert r.buckets() == sorted(tree)
        assert r.get((b"big",), b"a") == b"y" * 20000
        assert r.get((b"alpine 3.18", b"pkg0006"), b"CVE-5") == b'{"FixedVersion":"1"}'
        assert r.get((b"alpine 3.18",), b"pkg0006") is None  # a bucket, not a value
        assert r.get((b"vulnerability",), b"CVE-99999") is None
        assert r.get((b"nope",), b"x") is None
        s = r.stats()
        assert s["inline_buckets"] > 1000 and s["overflow_pages"] > 0 and s["branch_pages"] > 0
        assert s["keys"] == 3000 + sum(i % 7 for i in range(2000)) + 2


def test_streaming_and_tree_apis_give_identical_bytes(tmp_path) -> None:
    tree = {b"a": {b"x": {b"1": b"one"}, b"y": b"why", b"z": {}},
            b"b": {b"k%03d" % i: b"%d" % i for i in range(500)}}
    ref = _write(tmp_path, tree).read_bytes()

    push = io.BytesIO()
    w = BboltWriter(push)
    w.begin_bucket(b"a")
    w.begin_bucket(b"x")
    w.put(b"1", b"one")
    w.end_bucket()
    w.put(b"y", b"why")
    w.begin_bucket(b"z")
    w.end_bucket()
    w.end_bucket()
    w.begin_bucket(b"b")
    for i in range(500):
        w.put(b"k%03d" % i, b"%d" % i)
    w.close()
    assert push.getvalue() == ref

    paths = io.BytesIO()
    with BboltWriter(paths) as w:
        # b"a"'s own item b"y" sorts between its sub-buckets b"x" and b"z": consumed lazily.
        w.add_bucket((b"a",), iter([(b"y", b"why")]))
        w.add_bucket((b"a", b"x"), [(b"1", b"one")])
        w.add_bucket((b"a", b"z"))
        w.add_bucket((b"b",), ((b"k%03d" % i, b"%d" % i) for i in range(500)))
    assert paths.getvalue() == ref


def test_file_object_may_start_at_an_offset(tmp_path) -> None:
    tree = {b"b": {b"k": b"v"}}
    buf = io.BytesIO()
    buf.write(b"HEAD")
    write_tree(buf, tree)
    assert buf.getvalue()[4:] == _write(tmp_path, tree).read_bytes()


keys = st.binary(min_size=1, max_size=40)
values = st.one_of(st.binary(max_size=200),  # large values are cheap runs of one byte
                   st.builds(lambda n, c: bytes([c]) * n, st.integers(1100, 9000),
                             st.integers(0, 255)))
leaf_buckets = st.dictionaries(keys, values, max_size=60)
nested = st.recursive(leaf_buckets, lambda inner: st.dictionaries(
    keys, st.one_of(values, inner), max_size=12), max_leaves=12)
trees = st.dictionaries(keys, nested, max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(tree=trees, page_size=st.sampled_from([1024, 4096, 16384]),
       fill=st.sampled_from([0.5, 1.0]))
def test_random_trees_round_trip(tmp_path_factory, tree, page_size, fill) -> None:
    tmp = tmp_path_factory.mktemp("rt")
    path = _write(tmp, tree, page_size=page_size, fill_percent=fill)
    data = path.read_bytes()
    with BboltReader(path) as r:
        assert r.page_size == page_size
        assert r.check() == []
        assert r.to_tree() == tree
        assert len(data) == r.meta["hwm"] * page_size
    again = _write(tmp, dict(reversed(list(tree.items()))), name="again.db",
                   page_size=page_size, fill_percent=fill)
    assert again.read_bytes() == data  # depends only on the key/value set


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 5000), min_size=0, max_size=400), st.sampled_from([0.5, 1.0]))
def test_leaf_split_follows_bbolt_rule(tmp_path_factory, value_sizes, fill) -> None:
    """Leaf boundaries equal an independent transcription of bbolt's split()."""
    bucket = {b"k%05d" % i: b"v" * n for i, n in enumerate(value_sizes)}
    path = _write(tmp_path_factory.mktemp("split"), {b"b": {b"sub": {}}, b"c": bucket},
                  fill_percent=fill)
    sizes = [16 + 6 + n for n in value_sizes]
    with BboltReader(path) as r:
        pages = r.tree_pages((b"c",))
        leaves = [p for p in pages if p[2] in ("leaf", "inline")]
        expected = _reference_split(sizes, fill=fill)
        assert [len(p[4]) for p in leaves] == [n for n in expected]
        for _depth, _pgid, kind, overflow, ks in leaves:
            size = 16 + sum(16 + len(k) + len(bucket[k]) for k in ks)
            if kind == "leaf":
                assert overflow == (size + PAGE - 1) // PAGE - 1
        # inline exactly when bbolt would: one leaf, no sub-buckets, size <= pageSize/4
        inline = len(expected) == 1 and 16 + sum(sizes) <= PAGE // 4
        assert (leaves[0][2] == "inline") == inline
        assert r.check() == []


def test_inline_threshold_is_exactly_a_quarter_page(tmp_path) -> None:
    # 16 (page header) + 16 (element) + 1 (key) + v == 1024 is inline; one byte more is not.
    tree = {b"t": {b"at": {b"k": b"x" * (1024 - 33)}, b"over": {b"k": b"x" * (1024 - 32)},
                   b"parent": {b"child": {}}}}
    with BboltReader(_write(tmp_path, tree)) as r:
        assert r.tree_pages((b"t", b"at"))[0][2] == "inline"
        assert r.tree_pages((b"t", b"over"))[0][2] == "leaf"
        assert r.tree_pages((b"t", b"parent"))[0][2] == "leaf"  # has a sub-bucket
        assert r.tree_pages((b"t", b"parent", b"child"))[0][2] == "inline"
        assert r.tree_pages((b"t",))[0][2] == "leaf"
        assert r.check() == []


def test_sub_buckets_are_written_before_their_parent_page(tmp_path) -> None:
    tree = {b"p": {b"s%03d" % i: {b"k": b"v" * 2000} for i in range(50)}}
    with BboltReader(_write(tmp_path, tree)) as r:
        parent_leaves = [p for p in r.tree_pages((b"p",)) if p[2] == "leaf"]
        for _d, pgid, _kind, _ov, names in parent_leaves:
            for name in names:
                assert r.tree_pages((b"p", name))[0][1] < pgid


def test_streaming_memory_is_bounded() -> None:
    """Writing 60k keys holds only a page or so of pending data, not the values."""
    class Sink(io.RawIOBase):
        pos = 0

        def write(self, b):
            self.pos += len(b)
            return len(b)

        def seek(self, pos, whence=0):
            self.pos = pos
            return pos

        def tell(self):
            return self.pos

        def writable(self):
            return True

    value = b"x" * 400
    tracemalloc.start()
    try:
        w = BboltWriter(Sink())
        w.add_bucket((b"vulnerability",), ((b"CVE-%08d" % i, value) for i in range(60_000)))
        w.close()
        _cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert w.pages > 6000  # ~25 MB were written
    assert peak < 24 * 2 ** 20  # two 8 MiB output chunks at most, plus small change


# ---- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("action,message", [
    (lambda w: (w.begin_bucket(b"b"), w.put(b"b", b"1"), w.put(b"a", b"2")), "out-of-order"),
    (lambda w: (w.begin_bucket(b"b"), w.put(b"a", b"1"), w.put(b"a", b"2")), "duplicate"),
    (lambda w: (w.begin_bucket(b"b"), w.put(b"", b"1")), "key length"),
    (lambda w: (w.begin_bucket(b"b"), w.put(b"k" * 32769, b"1")), "key length"),
    (lambda w: w.put(b"k", b"v"), "only buckets"),
    (lambda w: (w.begin_bucket(b"b"), w.put(b"k", "str")), "must be bytes"),
    (lambda w: (w.begin_bucket(b"b"), w.end_bucket(), w.begin_bucket(b"a")), "out-of-order"),
    (lambda w: w.end_bucket(), "without a matching"),
    (lambda w: (w.add_bucket((b"b",)), w.add_bucket((b"a",))), "not after"),
    (lambda w: (w.add_bucket((b"b", b"c")), w.add_bucket((b"b",))), "not after"),
    (lambda w: (w.add_bucket((b"b",), [(b"c", b"1")]), w.add_bucket((b"b", b"c"))), "duplicate"),
    (lambda w: w.add_bucket(()), "at least one"),
])
def test_invalid_input_is_rejected_with_a_clear_error(action, message) -> None:
    w = BboltWriter(io.BytesIO())
    with pytest.raises(BboltError, match=message):
        action(w)
        w.close()


def test_reader_validates_meta_pages(tmp_path) -> None:
    path = _write(tmp_path, {b"b": {b"k": b"v"}})
    data = bytearray(path.read_bytes())
    one = bytearray(data)
    one[PAGE + 72] ^= 0xFF  # break meta1's checksum: bbolt falls back to meta0
    p1 = tmp_path / "one.db"
    p1.write_bytes(one)
    with BboltReader(p1) as r:
        assert r.meta["txid"] == 0 and r.get((b"b",), b"k") == b"v"
    both = bytearray(one)
    both[72] ^= 0xFF
    p2 = tmp_path / "both.db"
    p2.write_bytes(both)
    with pytest.raises(BboltError, match="checksum"):
        BboltReader(p2)
    magic = bytearray(data)
    magic[16] ^= 1
    magic[PAGE + 16] ^= 1
    p3 = tmp_path / "magic.db"
    p3.write_bytes(magic)
    with pytest.raises(BboltError, match="magic"):
        BboltReader(p3)


def test_check_detects_corruption(tmp_path) -> None:
    tree = {b"v": {b"k%04d" % i: b"x" * 100 for i in range(200)}}
    path = _write(tmp_path, tree)
    data = bytearray(path.read_bytes())
    with BboltReader(path) as r:
        leaf = [p for p in r.tree_pages((b"v",)) if p[2] == "leaf"][1][1]
    bad_id = bytearray(data)
    struct.pack_into("<Q", bad_id, leaf * PAGE, leaf + 1)
    (tmp_path / "bad_id.db").write_bytes(bad_id)
    with BboltReader(tmp_path / "bad_id.db") as r:
        errs = r.check()
        assert any("self-identifies" in e for e in errs)
        assert any("unreachable unfreed" in e for e in errs)
    # swap the sizes of two keys' elements -> keys out of order
    swapped = bytearray(data)
    off = leaf * PAGE + 16
    k0 = struct.unpack_from("<IIII", swapped, off)
    k1 = struct.unpack_from("<IIII", swapped, off + 16)
    struct.pack_into("<IIII", swapped, off, k0[0], k1[1] + 16, k1[2], k1[3])
    struct.pack_into("<IIII", swapped, off + 16, k1[0], k0[1] - 16, k0[2], k0[3])
    (tmp_path / "swapped.db").write_bytes(swapped)
    with BboltReader(tmp_path / "swapped.db") as r:
        assert any("out of order" in e for e in r.check())
