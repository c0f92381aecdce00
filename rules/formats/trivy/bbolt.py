"""Deterministic, streaming writer and a small reader for bbolt (etcd-io/bbolt) database files.

Format facts: /work/shared/docs/reference/trivy-db-format.md section D (bbolt format version 2,
little-endian, native Go structs cast onto pages).

Layout the writer produces (the "canonical layout", D.11):
- page 0 / page 1: meta pages with txid 0 / 1 (identical apart from txid and FNV-1a checksum);
- page 2: an empty freelist page, so a read-write opener has nothing to rebuild or rewrite;
- pages 3..hwm-1: leaf, branch and overflow pages allocated strictly sequentially, never freed,
  so there are no gaps and the file is exactly ``hwm * page_size`` bytes;
- fill percent 1.0 with bbolt's own ``splitTwo``/``splitIndex`` rule (the one ``bbolt compact``
  uses for nested buckets); buckets are inlined exactly when bbolt would (single leaf root, no
  sub-buckets, serialised size <= page_size / 4); bucket sequences are 0.
The bytes depend only on the set of buckets/keys/values (and page size / fill percent).

Streaming API (bounded memory: one page worth of pending elements per B+tree level of each *open*
bucket, plus a few bytes per open bucket; nothing is kept for finished buckets)::

    with open(tmp, "wb") as f:
        w = BboltWriter(f)
        w.add_bucket((b"alpine 3.18", b"musl"), [(b"CVE-1", b"{...}"), ...])  # sorted path order
        w.add_bucket((b"vulnerability",), generator_of_sorted_items)
        w.close()

- ``add_bucket(path, items)`` must be called in strictly increasing path order (tuple order of
  byte strings, which is depth-first order). Missing ancestors are created. ``items`` is consumed
  lazily: entries whose key sorts before a later sub-bucket of the same bucket are written just
  before that sub-bucket is opened, so a bucket may mix key/values and sub-buckets.
- The lower-level push API ``begin_bucket(key)`` / ``put(key, value)`` / ``end_bucket()`` does the
  same thing event by event; keys must be strictly increasing within each bucket.
- ``write_tree(path_or_file, tree)`` writes a nested ``{bytes: bytes | dict}`` in one call.
Pages of a sub-bucket are always written before the parent leaf page that references it.
The top level (the DB root bucket) may hold only buckets, as in every bbolt DB.
Finished pages are written in ~8 MiB chunks by one background thread (in order, one chunk in
flight), so file I/O overlaps page building; ``close()`` waits for it and then writes pages 0-2.

Reader: ``BboltReader(path)`` validates magic/version/checksum like bbolt's ``meta.Validate`` and
offers ``buckets``, ``items``, ``get``, ``to_tree``, ``stats`` and ``check`` (a re-implementation of
the structural checks of bbolt's ``tx.Check``).
"""
from __future__ import annotations

import mmap
import os
import struct
from bisect import bisect_right
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Iterable, Iterator, Mapping
from itertools import chain
from typing import BinaryIO

__all__ = [
    "BboltError", "BboltWriter", "BboltReader", "write_tree", "fnv1a64",
    "DEFAULT_PAGE_SIZE", "MAX_KEY_SIZE", "MAX_VALUE_SIZE",
]

DEFAULT_PAGE_SIZE = 4096
HEAD_PAGES = 3  # meta 0, meta 1, freelist: the only pages written again (by close)
MAGIC = 0xED0CDAED
VERSION = 2
PGID_NO_FREELIST = 0xFFFFFFFFFFFFFFFF

BRANCH_PAGE, LEAF_PAGE, META_PAGE, FREELIST_PAGE = 0x01, 0x02, 0x04, 0x10
BUCKET_LEAF_FLAG = 0x01

PAGE_HEADER_SIZE = 16
ELEMENT_SIZE = 16  # leaf and branch elements are both 16 bytes
BUCKET_HEADER_SIZE = 16
MIN_KEYS_PER_PAGE = 2
MAX_KEY_SIZE = 32768
MAX_VALUE_SIZE = (1 << 31) - 2

_PAGE_HDR = struct.Struct("<QHHI")
_LEAF_ELEM = struct.Struct("<IIII")
_BRANCH_ELEM = struct.Struct("<IIQ")
_META = struct.Struct("<IIIIQQQQQ")  # magic..txid (56 bytes); checksum follows
_U64 = struct.Struct("<Q")
_BUCKET_HDR = struct.Struct("<QQ")

_FLUSH_AT = 8 << 20  # write the output buffer in ~8 MiB chunks


class BboltError(ValueError):
    """Invalid input for the writer, or an invalid / corrupt file for the reader."""


def fnv1a64(data: bytes) -> int:
    """FNV-1a 64-bit hash (Go's hash/fnv New64a), used for the meta page checksum."""
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------

class _Level:
    """Elements of one B+tree level of a bucket that are not yet assigned to a page.

    Implements bbolt's node.split() incrementally: a prefix is cut off as soon as bbolt's
    splitIndex choice for it can no longer change when more elements arrive.
    """

    __slots__ = ("keys", "vals", "flags", "sizes", "total", "prefix", "brk", "emitted",
                 "is_leaf")

    def __init__(self, is_leaf: bool) -> None:
        self.is_leaf = is_leaf
        self.keys: list[bytes] = []
        self.vals: list = []       # leaf: value bytes; branch: child pgid
        self.flags: list[int] = []  # leaf only
        self.sizes: list[int] = []  # element size: 16 + len(key) (+ len(value))
        self.total = PAGE_HEADER_SIZE  # serialised size of all pending elements
        self.prefix = PAGE_HEADER_SIZE  # splitIndex running size before `brk`
        self.brk = -1  # first index >= 2 where splitIndex would break, or -1
        self.emitted = 0  # nodes already written from this level

    def cut(self, n: int) -> tuple[list, list, list, int]:
        """Remove and return the first ``n`` elements and their serialised node size."""
        keys, vals, flags = self.keys[:n], self.vals[:n], self.flags[:n]
        size = PAGE_HEADER_SIZE + sum(self.sizes[:n])
        del self.keys[:n], self.vals[:n], self.sizes[:n]
        if self.is_leaf:
            del self.flags[:n]
        return keys, vals, flags, size


class _Bucket:
    __slots__ = ("name", "levels", "has_sub", "last_key", "pending", "peek")

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.levels: list[_Level] = [_Level(True)]
        self.has_sub = False
        self.last_key: bytes | None = None
        self.pending: Iterator | None = None  # add_bucket() items not yet written
        self.peek: tuple[bytes, bytes] | None = None


class BboltWriter:
    """Streaming bulk loader producing a canonical bbolt file; see the module docstring.

    ``fileobj`` must be a seekable binary file opened for writing, positioned where the DB starts
    (normally offset 0 of an empty file). Nothing is written after ``close()``; the caller fsyncs
    and renames.
    """

    def __init__(self, fileobj: BinaryIO, *, page_size: int = DEFAULT_PAGE_SIZE,
                 fill_percent: float = 1.0) -> None:
        if page_size < 1024 or page_size & (page_size - 1):
            raise BboltError(f"page size must be a power of two >= 1024, got {page_size}")
        self._f = fileobj
        self._base = fileobj.tell()
        self._ps = page_size
        fill = min(max(fill_percent, 0.1), 1.0)  # bbolt clamps to [minFillPercent, maxFillPercent]
        self._threshold = int(page_size * fill)
        self._max_inline = page_size // 4
        self._zero = bytes(page_size)
        self._parts: list = []  # bytes of whole pages not yet handed to the file
        self._queued = 0
        # One background thread does the file writes so that the syscalls overlap with page
        # building; chunks are written strictly in order, at most one in flight.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bbolt-write")
        self._inflight: Future | None = None
        self._next_pgid = 3  # 0, 1: meta; 2: freelist
        self._root = _Bucket(b"")
        self._stack: list[_Bucket] = [self._root]
        self._last_path: tuple[bytes, ...] | None = None
        self._closed = False
        # Placeholders for the meta and freelist pages; filled in by close().
        self._parts.append(bytes(HEAD_PAGES * page_size))
        self._queued = HEAD_PAGES * page_size

    # ---- push API ---------------------------------------------------------------------------

    def begin_bucket(self, key: bytes) -> None:
        """Open a sub-bucket named ``key`` in the current bucket (the DB root at first)."""
        self._check_open()
        top = self._stack[-1]
        if top.pending is not None:
            self._drain(top, key)
        self._check_key(top, key)
        self._stack.append(_Bucket(bytes(key)))

    def put(self, key: bytes, value: bytes) -> None:
        """Add a key/value to the current bucket; keys strictly increasing within a bucket."""
        top = self._stack[-1]
        if top.pending is not None:
            self._drain(top, key)
        self._put(top, key, value)

    def _put(self, top: _Bucket, key: bytes, value: bytes) -> None:
        # Hot path (once per key): validation and bbolt's incremental split, inlined.
        if type(key) is not bytes or type(value) is not bytes:
            key, value = self._coerce(key, value)
        last = top.last_key
        klen = len(key)
        if last is None or key > last:
            if not 0 < klen <= MAX_KEY_SIZE:
                raise BboltError(f"key length must be 1..{MAX_KEY_SIZE}, got {klen}")
        else:
            self._check_key(top, key)  # raises with a precise message
        if top is self._root:
            raise BboltError(f"key {key!r}: the DB root may contain only buckets")
        vlen = len(value)
        if vlen > MAX_VALUE_SIZE:
            raise BboltError(f"key {key!r}: value larger than {MAX_VALUE_SIZE} bytes")
        top.last_key = key
        # Inlined copy of _append's leaf case: this runs once per key (~1M times for a real
        # DB) and the call overhead is measurable; keep the two in step.
        lv = top.levels[0]
        size = ELEMENT_SIZE + klen + vlen
        lv.keys.append(key)
        lv.vals.append(value)
        lv.flags.append(0)
        lv.sizes.append(size)
        lv.total += size
        if lv.brk < 0:
            if len(lv.keys) > MIN_KEYS_PER_PAGE and lv.prefix + size > self._threshold:
                lv.brk = len(lv.keys) - 1
            else:
                lv.prefix += size
                return
        self._maybe_cut(top, 0)

    @staticmethod
    def _coerce(key, value) -> tuple[bytes, bytes]:
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise BboltError(f"key must be bytes, got {type(key).__name__}")
        key = bytes(key)
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise BboltError(f"key {key!r}: value must be bytes, got {type(value).__name__}")
        return key, bytes(value)

    def end_bucket(self) -> None:
        """Close the current bucket and record it in its parent."""
        self._check_open()
        if len(self._stack) == 1:
            raise BboltError("end_bucket() without a matching begin_bucket()")
        top = self._stack[-1]
        if top.pending is not None:
            self._drain(top, None)
        self._stack.pop()
        value = self._finish_bucket(top)
        parent = self._stack[-1]
        parent.has_sub = True
        self._append(parent, 0, top.name, value, BUCKET_LEAF_FLAG)

    # ---- path API ---------------------------------------------------------------------------

    def add_bucket(self, path: Iterable[bytes], items: Iterable[tuple[bytes, bytes]] = ()) -> None:
        """Add the bucket at ``path`` with its key/values ``items`` (sorted by key).

        Calls must come in strictly increasing ``path`` order; ``items`` is consumed lazily.
        """
        self._check_open()
        path = tuple(path)
        if not all(type(p) is bytes for p in path):
            path = tuple(bytes(p) for p in path)
        if not path:
            raise BboltError("add_bucket(): the path must name at least one bucket")
        if self._last_path is not None and path <= self._last_path:
            raise BboltError(f"add_bucket(): path {path!r} is not after {self._last_path!r}")
        self._last_path = path
        stack = self._stack
        common = 0
        limit = min(len(stack) - 1, len(path))
        while common < limit and stack[common + 1].name == path[common]:
            common += 1
        for _ in range(len(stack) - 1 - common):
            self.end_bucket()
        for name in path[common:]:
            self.begin_bucket(name)
        top = self._stack[-1]
        top.pending = iter(items)
        top.peek = next(top.pending, None)
        if top.peek is None:
            top.pending = None

    def close(self) -> None:
        """Finish all open buckets, write the root, the meta and the freelist pages."""
        self._check_open()
        while len(self._stack) > 1:
            self.end_bucket()
        root = self._stack.pop()
        root_pgid = self._finish_root(root)
        try:
            self._flush(wait=True)
        finally:
            self._pool.shutdown(wait=True)
        hwm = self._next_pgid
        head = bytearray(HEAD_PAGES * self._ps)
        for txid in (0, 1):
            off = txid * self._ps
            _PAGE_HDR.pack_into(head, off, txid, META_PAGE, 0, 0)
            _META.pack_into(head, off + 16, MAGIC, VERSION, self._ps, 0, root_pgid, 0, 2, hwm, txid)
            _U64.pack_into(head, off + 72, fnv1a64(head[off + 16:off + 72]))
        _PAGE_HDR.pack_into(head, 2 * self._ps, 2, FREELIST_PAGE, 0, 0)
        end = self._f.tell()
        self._f.seek(self._base)
        self._f.write(head)
        self._f.seek(end)
        self._closed = True

    def __enter__(self) -> "BboltWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif not self._closed:  # abandon: stop the write thread, leave the file incomplete
            self._closed = True
            self._pool.shutdown(wait=True)

    @property
    def pages(self) -> int:
        """Pages allocated so far (the final high-water mark after close())."""
        return self._next_pgid

    # ---- internals ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BboltError("writer is closed")

    @staticmethod
    def _check_key(bucket: _Bucket, key: bytes) -> None:
        if not isinstance(key, bytes):
            if not isinstance(key, (bytearray, memoryview)):
                raise BboltError(f"key must be bytes, got {type(key).__name__}")
            key = bytes(key)
        if not key or len(key) > MAX_KEY_SIZE:
            raise BboltError(f"key length must be 1..{MAX_KEY_SIZE}, got {len(key)}")
        last = bucket.last_key
        if last is not None and key <= last:
            what = "duplicate" if key == last else "out-of-order"
            raise BboltError(f"{what} key {key!r} after {last!r} in bucket {bucket.name!r}")
        bucket.last_key = key

    def _drain(self, bucket: _Bucket, limit: bytes | None) -> None:
        """Write add_bucket() items of ``bucket`` that sort before ``limit`` (all if None)."""
        pending = bucket.pending
        peek = bucket.peek
        put = self._put
        if limit is None:
            while peek is not None:
                put(bucket, peek[0], peek[1])
                peek = next(pending, None)
        else:
            while peek is not None and (type(peek[0]) is not bytes or peek[0] < limit):
                put(bucket, peek[0], peek[1])
                peek = next(pending, None)
        bucket.peek = peek
        bucket.pending = pending if peek is not None else None

    def _append(self, bucket: _Bucket, depth: int, key: bytes, val, flags: int) -> None:
        """Append an element to level ``depth`` of ``bucket``; cut pages whose split is final."""
        lv = bucket.levels[depth]
        size = ELEMENT_SIZE + len(key) + (len(val) if lv.is_leaf else 0)
        lv.keys.append(key)
        lv.vals.append(val)
        if lv.is_leaf:
            lv.flags.append(flags)
        lv.sizes.append(size)
        lv.total += size
        if lv.brk < 0:
            if len(lv.keys) > MIN_KEYS_PER_PAGE and lv.prefix + size > self._threshold:
                lv.brk = len(lv.keys) - 1
            else:
                lv.prefix += size
                return
        self._maybe_cut(bucket, depth)

    def _maybe_cut(self, bucket: _Bucket, depth: int) -> None:
        # bbolt splits a node only when it has > 4 inodes and size >= pageSize; the prefix
        # [0, brk) is then final once brk <= n-3 (splitIndex keeps >= 2 for the rest).
        lv = bucket.levels[depth]
        while lv.brk >= 0 and len(lv.keys) > 2 * MIN_KEYS_PER_PAGE \
                and lv.brk <= len(lv.keys) - 3 and lv.total >= self._ps:
            self._emit(bucket, depth, lv.brk)
            self._rescan(lv)

    def _rescan(self, lv: _Level) -> None:
        """Recompute total / prefix / brk after a prefix was cut off (few elements remain)."""
        lv.total = PAGE_HEADER_SIZE + sum(lv.sizes)
        lv.brk = -1
        prefix = PAGE_HEADER_SIZE
        for i, size in enumerate(lv.sizes):
            if i >= MIN_KEYS_PER_PAGE and prefix + size > self._threshold:
                lv.brk = i
                break
            prefix += size
        lv.prefix = prefix

    def _emit(self, bucket: _Bucket, depth: int, n: int) -> None:
        """Write the first ``n`` pending elements of level ``depth`` as one page."""
        lv = bucket.levels[depth]
        keys, vals, flags, size = lv.cut(n)
        lv.emitted += 1
        pgid = self._write_node(lv.is_leaf, keys, vals, flags, size)
        if depth + 1 == len(bucket.levels):
            bucket.levels.append(_Level(False))
        self._append(bucket, depth + 1, keys[0], pgid, 0)

    def _final_split(self, lv: _Level) -> list[int]:
        """Sizes of the nodes bbolt's split() makes of the remaining elements of a level."""
        cuts = []
        sizes = lv.sizes
        start = 0
        while True:
            rest = sizes[start:]
            n = len(rest)
            if n <= 2 * MIN_KEYS_PER_PAGE or PAGE_HEADER_SIZE + sum(rest) < self._ps:
                cuts.append(n)
                return cuts
            prefix = PAGE_HEADER_SIZE
            index = 0
            for i in range(n - MIN_KEYS_PER_PAGE):
                index = i
                if i >= MIN_KEYS_PER_PAGE and prefix + rest[i] > self._threshold:
                    break
                prefix += rest[i]
            cuts.append(index)
            start += index

    def _finish_levels(self, bucket: _Bucket) -> tuple[int, _Level, tuple[list, list, list, int]]:
        """Write every node of ``bucket`` except its root; return (depth, level, elements) of
        the root node, which the caller writes as a page or inlines."""
        depth = 0
        while True:
            lv = bucket.levels[depth]
            cuts = self._final_split(lv)
            if lv.emitted == 0 and len(cuts) == 1:
                return depth, lv, lv.cut(len(lv.keys))
            for n in cuts:
                if n:
                    self._emit(bucket, depth, n)
            depth += 1

    def _finish_bucket(self, bucket: _Bucket) -> bytes:
        """Bucket value for the parent leaf: inline bucket bytes or a 16-byte header."""
        lv = bucket.levels[0]
        if len(bucket.levels) == 1 and not bucket.has_sub and lv.emitted == 0 \
                and lv.total <= self._max_inline:  # fast path: small buckets are inlined
            return b"".join([bytes(BUCKET_HEADER_SIZE),
                             *self._encode_node(0, True, lv.keys, lv.vals, lv.flags)])
        depth, lv, (keys, vals, flags, size) = self._finish_levels(bucket)
        if depth == 0 and not bucket.has_sub and size <= self._max_inline:
            return b"".join([bytes(BUCKET_HEADER_SIZE),
                             *self._encode_node(0, True, keys, vals, flags)])
        pgid = self._write_node(lv.is_leaf, keys, vals, flags, size)
        return _BUCKET_HDR.pack(pgid, 0)

    def _finish_root(self, root: _Bucket) -> int:
        _depth, lv, (keys, vals, flags, size) = self._finish_levels(root)
        return self._write_node(lv.is_leaf, keys, vals, flags, size)

    @staticmethod
    def _encode_node(pgid: int, is_leaf: bool, keys: list, vals: list, flags: list,
                     overflow: int = 0) -> list:
        """The node as a list of byte strings: header + elements, then keys (and values)."""
        n = len(keys)
        head = bytearray(PAGE_HEADER_SIZE + ELEMENT_SIZE * n)
        _PAGE_HDR.pack_into(head, 0, pgid, LEAF_PAGE if is_leaf else BRANCH_PAGE, n, overflow)
        pos = ELEMENT_SIZE * n  # data offset relative to the element's own address
        off = PAGE_HEADER_SIZE
        if is_leaf:
            pack = _LEAF_ELEM.pack_into
            for k, v, fl in zip(keys, vals, flags):
                kl = len(k)
                vl = len(v)
                pack(head, off, fl, pos, kl, vl)
                pos += kl + vl - ELEMENT_SIZE
                off += ELEMENT_SIZE
            parts = [head]
            parts += chain.from_iterable(zip(keys, vals))
            return parts
        pack = _BRANCH_ELEM.pack_into
        for k, child in zip(keys, vals):
            kl = len(k)
            pack(head, off, pos, kl, child)
            pos += kl - ELEMENT_SIZE
            off += ELEMENT_SIZE
        return [head, *keys]

    def _write_node(self, is_leaf: bool, keys: list, vals: list, flags: list, size: int) -> int:
        """Allocate the next ceil(size / page size) pages and queue the node's bytes."""
        ps = self._ps
        npages = (size + ps - 1) // ps
        pgid = self._next_pgid
        self._next_pgid += npages
        self._parts += self._encode_node(pgid, is_leaf, keys, vals, flags, npages - 1)
        pad = npages * ps - size
        if pad:
            self._parts.append(self._zero[:pad])
        self._queued += npages * ps
        if self._queued >= _FLUSH_AT:
            self._flush()
        return pgid

    def _flush(self, wait: bool = False) -> None:
        """Hand the queued bytes to the background writer (at most one chunk in flight)."""
        if self._parts:
            data = b"".join(self._parts)
            self._parts = []
            self._queued = 0
            if self._inflight is not None:
                self._inflight.result()
            self._inflight = self._pool.submit(self._f.write, data)
        if wait and self._inflight is not None:
            self._inflight.result()
            self._inflight = None


def write_tree(target: str | os.PathLike | BinaryIO, tree: Mapping, *,
               page_size: int = DEFAULT_PAGE_SIZE, fill_percent: float = 1.0) -> None:
    """Write a nested ``{bytes: bytes | Mapping}`` (top level: buckets only) as a bbolt file.

    ``target`` is a path (written to ``<path>.tmp``, fsynced, renamed over ``path``) or a
    seekable binary file object.
    """
    def emit(w: BboltWriter, bucket: Mapping) -> None:
        for key in sorted(bucket):
            value = bucket[key]
            if isinstance(value, Mapping):
                w.begin_bucket(key)
                emit(w, value)
                w.end_bucket()
            else:
                w.put(key, value)

    if isinstance(target, (str, os.PathLike)):
        tmp = f"{os.fspath(target)}.tmp"
        try:
            with open(tmp, "wb") as f:
                write_tree(f, tree, page_size=page_size, fill_percent=fill_percent)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    w = BboltWriter(target, page_size=page_size, fill_percent=fill_percent)
    emit(w, tree)
    w.close()


# --------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------

# The reader reads files it did not write (`stella-build inspect trivy-db`, tests, Go-written DBs),
# so every page id, element and nesting level is checked before it is followed: a page id must lie
# in [2, hwm) and inside the file, a page must name itself, elements must lie inside their page,
# and a walk never visits a page twice (a self-referencing branch used to loop forever). Errors
# name the page.
MAX_TREE_DEPTH = 64    # B+tree levels under one bucket root (branch pages hold >= 2 keys: log2(hwm))
MAX_BUCKET_DEPTH = 64  # nested buckets (Trivy DBs nest 3 deep)
MAX_NESTING = 200      # tree levels + buckets along one path of check(): bounds its recursion
_MIN_PAGE_SIZE, _MAX_PAGE_SIZE = 512, 1 << 24  # bbolt probes page sizes 1 KiB << 0..14


class BboltReader:
    """Read-only access to a bbolt file (any page size, little-endian).

    Bucket paths are tuples of byte strings; ``()`` is the DB root. Every query raises
    ``BboltError`` naming the page for a structure it cannot follow (out-of-range page id, a
    cycle, elements outside their page, too deep); ``check()`` lists such problems instead.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 2 * 1024:
                raise BboltError(f"{self.path}: file too small for a bbolt DB ({size} bytes)")
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.size = size
        try:
            self.meta = self._load_meta()
        except BboltError:
            self._mm.close()
            raise
        self.page_size = self.meta["page_size"]
        # pages a query may follow: below the high-water mark and inside the file
        self._pages = min(self.meta["hwm"], self.size // self.page_size)

    def close(self) -> None:
        self._mm.close()

    def __enter__(self) -> "BboltReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- meta ---------------------------------------------------------------------------------

    def _parse_meta(self, off: int) -> dict | str:
        if off + 80 > self.size:
            return "truncated"
        _id, flags, _count, _overflow = _PAGE_HDR.unpack_from(self._mm, off)
        magic, version, page_size, mflags, root, seq, freelist, hwm, txid = \
            _META.unpack_from(self._mm, off + 16)
        checksum, = _U64.unpack_from(self._mm, off + 72)
        if magic != MAGIC:
            return "invalid magic"
        if version != VERSION:
            return f"version mismatch ({version})"
        if checksum != fnv1a64(self._mm[off + 16:off + 72]):
            return "checksum error"
        if flags != META_PAGE:
            return f"meta page has flags {flags:#x}"
        if not _MIN_PAGE_SIZE <= page_size <= _MAX_PAGE_SIZE or page_size & (page_size - 1):
            return f"invalid page size {page_size}"
        return {"page_size": page_size, "flags": mflags, "root": root, "sequence": seq,
                "freelist": freelist, "hwm": hwm, "txid": txid}

    def _load_meta(self) -> dict:
        m0 = self._parse_meta(0)
        if isinstance(m0, dict):
            ps = m0["page_size"]
        else:  # like bbolt getPageSize: probe for meta1 at 1 KiB * 2^i
            ps = next((1024 << i for i in range(15)
                       if isinstance(self._parse_meta(1024 << i), dict)), DEFAULT_PAGE_SIZE)
        m1 = self._parse_meta(ps)
        valid = [m for m in (m0, m1) if isinstance(m, dict)]
        if not valid:
            raise BboltError(f"{self.path}: not a valid bbolt file (meta0: {m0}; meta1: {m1})")
        return max(valid, key=lambda m: m["txid"])

    # ---- pages --------------------------------------------------------------------------------

    def _page(self, pgid: int) -> tuple[mmap.mmap, int, int, str]:
        """(buffer, offset, end, name) of the data page ``pgid`` after checking that it can be
        read: 2 <= pgid < hwm, inside the file with its overflow pages, and self-identifying."""
        name = f"page {pgid}"
        if not 2 <= pgid < self._pages:
            raise BboltError(f"{self.path}: {name} is out of range (data pages are 2..{self._pages - 1})")
        off = pgid * self.page_size
        pid, _flags, _count, overflow = _PAGE_HDR.unpack_from(self._mm, off)
        if pid != pgid:
            raise BboltError(f"{self.path}: {name} self-identifies as page {pid}")
        if pgid + overflow >= self._pages:
            raise BboltError(f"{self.path}: {name}: {overflow} overflow pages run past the last page")
        return self._mm, off, off + (overflow + 1) * self.page_size, name

    def _node(self, root: int, inline: bytes | None) -> tuple[object, int, int, str]:
        if inline is not None:
            return inline, 0, len(inline), "inline page"
        return self._page(root)

    def _elements(self, buf, off: int, end: int, name: str) -> tuple[int, list[tuple]]:
        """(page flags, elements) of the page at ``off`` (ending at ``end``).

        Leaf elements are (flags, key, value), branch elements (key, child pgid). Raises
        BboltError when the element headers or the keys and values they point at are not inside
        the page, or take more room than it has: what a page can make the reader copy is bounded
        by its size."""
        if end - off < PAGE_HEADER_SIZE:
            raise BboltError(f"{self.path}: {name}: truncated page header")
        _id, pflags, count, _ov = _PAGE_HDR.unpack_from(buf, off)
        room = end - off
        out: list[tuple] = []
        if pflags not in (LEAF_PAGE, BRANCH_PAGE):
            return pflags, out
        if PAGE_HEADER_SIZE + ELEMENT_SIZE * count > room:
            raise BboltError(f"{self.path}: {name}: {count} elements overflow the page")
        used = 0
        e = off + PAGE_HEADER_SIZE
        for i in range(count):
            if pflags == LEAF_PAGE:
                fl, pos, ks, vs = _LEAF_ELEM.unpack_from(buf, e)
            else:
                pos, ks, child = _BRANCH_ELEM.unpack_from(buf, e)
                vs = 0
            k = e + pos
            used += ks + vs
            if k + ks + vs > end or used > room:
                raise BboltError(f"{self.path}: {name}: element {i} lies outside the page")
            key = bytes(buf[k:k + ks])
            out.append((fl, key, bytes(buf[k + ks:k + ks + vs])) if pflags == LEAF_PAGE else (key, child))
            e += ELEMENT_SIZE
        return pflags, out

    def _bucket(self, path: tuple[bytes, ...]) -> tuple[int, bytes | None]:
        """(root pgid, inline page bytes or None) of the bucket at ``path``."""
        root, inline = self.meta["root"], None
        for name in path:
            entry = self._lookup(root, inline, bytes(name))
            if entry is None or not entry[0] & BUCKET_LEAF_FLAG:
                raise KeyError(f"no bucket {tuple(path)!r}")
            value = entry[1]
            if len(value) < BUCKET_HEADER_SIZE:
                raise BboltError(f"{self.path}: bucket {bytes(name)!r}: value of {len(value)} bytes")
            root, _seq = _BUCKET_HDR.unpack_from(value, 0)
            inline = value[BUCKET_HEADER_SIZE:] if root == 0 else None
            if inline is not None and len(inline) < PAGE_HEADER_SIZE:
                raise BboltError(f"{self.path}: bucket {bytes(name)!r}: truncated inline page")
        return root, inline

    def _lookup(self, root: int, inline: bytes | None, key: bytes) -> tuple[int, bytes] | None:
        buf, off, end, name = self._node(root, inline)
        seen = {root} if inline is None else set()
        for _depth in range(MAX_TREE_DEPTH + 1):
            pflags, elems = self._elements(buf, off, end, name)
            if pflags == BRANCH_PAGE:
                if not elems:
                    raise BboltError(f"{self.path}: {name}: empty branch page")
                keys = [k for k, _ in elems]
                child = elems[max(bisect_right(keys, key) - 1, 0)][1]
                if child in seen:
                    raise BboltError(f"{self.path}: {name}: child page {child} is already on the path "
                                     "(a cycle)")
                seen.add(child)
                buf, off, end, name = self._page(child)
                continue
            if pflags != LEAF_PAGE:
                raise BboltError(f"{self.path}: {name}: not a branch or leaf page (flags {pflags:#x})")
            for fl, k, v in elems:
                if k == key:
                    return fl, v
            return None
        raise BboltError(f"{self.path}: {name}: B+tree deeper than {MAX_TREE_DEPTH} levels")

    def _iter(self, root: int, inline: bytes | None) -> Iterator[tuple[int, bytes, bytes]]:
        """Leaf elements of one bucket in key order; iterative, each page visited at most once."""
        seen: set[int] = set()
        stack: list[tuple[int, bytes | None, int]] = [(root, inline, 0)]
        while stack:
            pgid, page, depth = stack.pop()
            if page is None:
                if pgid in seen:
                    raise BboltError(f"{self.path}: page {pgid} is reached twice (a cycle)")
                seen.add(pgid)
            if depth > MAX_TREE_DEPTH:
                raise BboltError(f"{self.path}: page {pgid}: B+tree deeper than {MAX_TREE_DEPTH} levels")
            buf, off, end, name = self._node(pgid, page)
            pflags, elems = self._elements(buf, off, end, name)
            if pflags == BRANCH_PAGE:
                stack.extend((child, None, depth + 1) for _k, child in reversed(elems))
            elif pflags == LEAF_PAGE:
                yield from elems
            else:
                raise BboltError(f"{self.path}: {name}: not a branch or leaf page (flags {pflags:#x})")

    # ---- public queries -------------------------------------------------------------------------

    def items(self, bucket_path: Iterable[bytes] = ()) -> Iterator[tuple[bytes, bytes | None]]:
        """(key, value) in key order; value is None for nested buckets (like bbolt ForEach)."""
        root, inline = self._bucket(tuple(bucket_path))
        for fl, k, v in self._iter(root, inline):
            yield k, (None if fl & BUCKET_LEAF_FLAG else v)

    def buckets(self, bucket_path: Iterable[bytes] = ()) -> list[bytes]:
        """Names of the nested buckets of ``bucket_path`` (the top-level buckets by default)."""
        root, inline = self._bucket(tuple(bucket_path))
        return [k for fl, k, _v in self._iter(root, inline) if fl & BUCKET_LEAF_FLAG]

    def get(self, bucket_path: Iterable[bytes], key: bytes) -> bytes | None:
        """Value of ``key``; None when missing or when ``key`` names a nested bucket."""
        try:
            root, inline = self._bucket(tuple(bucket_path))
        except KeyError:
            return None
        entry = self._lookup(root, inline, bytes(key))
        if entry is None or entry[0] & BUCKET_LEAF_FLAG:
            return None
        return entry[1]

    def tree_pages(self, bucket_path: Iterable[bytes] = ()
                   ) -> list[tuple[int, int, str, int, list]]:
        """Pages of one bucket's B+tree in depth-first order: (depth, pgid, "branch" | "leaf" |
        "inline", overflow, keys). Used by tests and inspection tools."""
        root, inline = self._bucket(tuple(bucket_path))
        out: list = []
        seen: set[int] = set()
        stack: list[tuple[int, int]] = [(root, 0)]
        while stack:
            pgid, depth = stack.pop()
            page = inline if depth == 0 else None
            if page is None:
                if pgid in seen:
                    raise BboltError(f"{self.path}: page {pgid} is reached twice (a cycle)")
                seen.add(pgid)
            if depth > MAX_TREE_DEPTH:
                raise BboltError(f"{self.path}: page {pgid}: B+tree deeper than {MAX_TREE_DEPTH} levels")
            buf, off, end, name = self._node(pgid, page)
            _id, pflags, _count, overflow = _PAGE_HDR.unpack_from(buf, off)
            _f, elems = self._elements(buf, off, end, name)
            if pflags == BRANCH_PAGE:
                out.append((depth, pgid, "branch", overflow, [k for k, _ in elems]))
                stack.extend((child, depth + 1) for _k, child in reversed(elems))
            else:
                kind = "inline" if page is not None else "leaf"
                out.append((depth, pgid, kind, overflow, [k for _fl, k, _v in elems]))
        return out

    def to_tree(self, bucket_path: Iterable[bytes] = ()) -> dict:
        """The bucket as a nested dict {key: bytes | dict}."""
        path = tuple(bucket_path)
        if len(path) > MAX_BUCKET_DEPTH:
            raise BboltError(f"{self.path}: buckets nested deeper than {MAX_BUCKET_DEPTH} levels at "
                             f"{path[:3]!r}…")
        out: dict = {}
        for k, v in self.items(path):
            out[k] = self.to_tree(path + (k,)) if v is None else v
        return out

    # ---- structural check -----------------------------------------------------------------------

    def stats(self) -> dict:
        """Counts gathered by walking the whole file (see check())."""
        return self._walk()[1]

    def check(self) -> list[str]:
        """Structural errors (empty when the file is consistent), like bbolt's tx.Check."""
        return self._walk()[0]

    def _walk(self) -> tuple[list[str], dict]:
        errors: list[str] = []
        stats = {"leaf_pages": 0, "branch_pages": 0, "overflow_pages": 0, "buckets": 0,
                 "inline_buckets": 0, "keys": 0, "max_depth": 0}
        ps, hwm = self.page_size, self.meta["hwm"]
        if hwm * ps > self.size:
            errors.append(f"file size {self.size} < hwm {hwm} * page size {ps}")
            return errors, stats
        if not 2 <= self.meta["root"] < hwm:
            errors.append(f"root page {self.meta['root']} is out of range (hwm {hwm})")
            return errors, stats
        reachable: dict[int, str] = {0: "meta0", 1: "meta1"}
        free: set[int] = set()
        fl_pgid = self.meta["freelist"]
        if fl_pgid != PGID_NO_FREELIST:
            if not 2 <= fl_pgid < hwm:
                errors.append(f"freelist page {fl_pgid} is out of range (hwm {hwm})")
            else:
                free = self._freelist(fl_pgid, errors)
                _id, _f, _c, ov = _PAGE_HDR.unpack_from(self._mm, fl_pgid * ps)
                for i in range(min(ov, hwm - fl_pgid - 1) + 1):
                    reachable[fl_pgid + i] = "freelist"

        def mark(pgid: int, overflow: int, owner: str) -> bool:
            if pgid + overflow >= hwm:
                errors.append(f"page {pgid} ({owner}): {overflow} overflow pages run beyond hwm {hwm}")
                return False
            for p in range(pgid, pgid + overflow + 1):
                if p in reachable:
                    errors.append(f"page {p}: multiple references ({owner}, {reachable[p]})")
                    return False
                if p in free:
                    errors.append(f"page {p} ({owner}): reachable but freed")
                reachable[p] = owner
            return True

        def walk_node(buf, off: int, pgid: int | None, lo: bytes | None, hi: bytes | None,
                      owner: str, depth: int, level: int) -> None:
            if level > MAX_NESTING:
                errors.append(f"page {pgid} ({owner}): nested deeper than {MAX_NESTING} levels")
                return
            pid, pflags, count, overflow = _PAGE_HDR.unpack_from(buf, off)
            if pgid is not None:
                if pid != pgid:
                    errors.append(f"page {pgid}: self-identifies as {pid}")
                    return
                if not mark(pgid, overflow, owner):
                    return
            if pflags not in (LEAF_PAGE, BRANCH_PAGE):
                errors.append(f"page {pgid}: invalid type {pflags:#x} in bucket {owner}")
                return
            if count == 0 and pflags == BRANCH_PAGE:
                errors.append(f"page {pgid}: empty branch page")
                return
            end = off + (overflow + 1) * ps if pgid is not None else len(buf)
            try:
                _flags, elems = self._elements(buf, off, end, f"page {pgid}")
            except BboltError as exc:
                errors.append(str(exc).removeprefix(f"{self.path}: "))
                return
            keys = [e[0] if pflags == BRANCH_PAGE else e[1] for e in elems]
            for i in range(1, len(keys)):
                if keys[i] <= keys[i - 1]:
                    errors.append(f"page {pgid} ({owner}): keys out of order at {i}")
            if keys and lo is not None and keys[0] < lo:
                errors.append(f"page {pgid} ({owner}): first key below parent key")
            if keys and hi is not None and keys[-1] >= hi:
                errors.append(f"page {pgid} ({owner}): key beyond next parent key")
            if pflags == BRANCH_PAGE:
                stats["branch_pages"] += 1
                stats["overflow_pages"] += overflow
                for i, (k, child) in enumerate(elems):
                    nxt = elems[i + 1][0] if i + 1 < len(elems) else hi
                    if child >= hwm or child < 2:
                        errors.append(f"page {pgid} ({owner}): child {child} out of range")
                        continue
                    walk_node(self._mm, child * ps, child, k, nxt, owner, depth, level + 1)
                return
            if pgid is not None:
                stats["leaf_pages"] += 1
                stats["overflow_pages"] += overflow
            for fl, k, v in elems:
                if fl & BUCKET_LEAF_FLAG:
                    walk_bucket(v, owner + "/" + k.decode("utf-8", "replace"), depth + 1, level + 1)
                else:
                    stats["keys"] += 1

        def walk_bucket(value: bytes, owner: str, depth: int, level: int) -> None:
            stats["buckets"] += 1
            stats["max_depth"] = max(stats["max_depth"], depth)
            if len(value) < BUCKET_HEADER_SIZE:
                errors.append(f"bucket {owner}: value of {len(value)} bytes")
                return
            root, _seq = _BUCKET_HDR.unpack_from(value, 0)
            if root == 0:
                stats["inline_buckets"] += 1
                page = value[BUCKET_HEADER_SIZE:]
                if len(page) < PAGE_HEADER_SIZE:
                    errors.append(f"bucket {owner}: truncated inline page")
                    return
                _id, pflags, _c, _o = _PAGE_HDR.unpack_from(page, 0)
                if pflags != LEAF_PAGE:
                    errors.append(f"bucket {owner}: inline page is not a leaf")
                    return
                walk_node(page, 0, None, None, None, owner, depth, level)
                return
            if root >= hwm or root < 2:
                errors.append(f"bucket {owner}: root page {root} out of range")
                return
            walk_node(self._mm, root * ps, root, None, None, owner, depth, level)

        root = self.meta["root"]
        walk_node(self._mm, root * ps, root, None, None, "", 0, 0)
        for p in range(hwm):
            if p not in reachable and p not in free:
                errors.append(f"page {p}: unreachable unfreed")
        return errors, stats

    def _freelist(self, pgid: int, errors: list[str]) -> set[int]:
        ps, hwm = self.page_size, self.meta["hwm"]
        off = pgid * ps
        pid, flags, count, ov = _PAGE_HDR.unpack_from(self._mm, off)
        if pid != pgid or flags != FREELIST_PAGE:
            errors.append(f"freelist page {pgid}: bad header (id {pid}, flags {flags:#x})")
            return set()
        start = off + PAGE_HEADER_SIZE
        if count == 0xFFFF:
            count, = _U64.unpack_from(self._mm, start)
            start += 8
        if start + 8 * count > min(off + (ov + 1) * ps, hwm * ps):
            errors.append(f"freelist page {pgid}: {count} ids overflow the page")
            return set()
        ids = struct.unpack_from(f"<{count}Q", self._mm, start) if count else ()
        free = set(ids)
        if len(free) != len(ids):
            errors.append("freelist: page freed twice")
        return free
