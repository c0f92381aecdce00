"""Is an LMDB data file safe to map? Checked with plain reads, before liblmdb ever maps it.

LMDB maps `data.mdb` and follows page numbers into the mapping; a page past the end of a
truncated file is not an error it can return but a SIGBUS that kills the process (no Python
handler can recover from it). So the index is inspected first, with read(2) only:

- `inspect_data_file` (microseconds, on every open): both meta pages parse (magic, data version,
  P_META flag, a plausible page size, the same on both), the committed meta (higher txnid, as
  `mdb_env_pick_meta` chooses) has its B-tree roots inside its page range, and the file is long
  enough to hold every page up to `mm_last_pg`. The on-disk layout is LMDB's own (`MDB_page`
  header then `MDB_meta`, host byte order, 64-bit fields), for the 0.9 engine (16-byte page
  header, data version 1) and the 1.0 engine (24-byte header, version 3).
- `deep_verify` (a full structural walk, milliseconds per MB): py-lmdb's own offline verifier
  (`lmdb.verify`, py-lmdb >= 3.0), for `cache verify` and for the one case the quick check
  cannot decide: a file shorter than `mm_last_pg`, which LMDB allows when the missing tail pages
  are free (a page freed in the transaction that allocated it is never written).
"""
from __future__ import annotations

import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

MAGIC = 0xBEEFC0DE
P_META = 0x08
P_INVALID = (1 << 64) - 1
_ENGINES = {16: (1, 0x8000), 24: (3, 0x10000)}  # page header size → (data version, max page size)
_E = "<" if sys.byteorder == "little" else ">"
# MDB_meta: magic, version, address, mapsize, then two MDB_db (pad, flags, depth, branch, leaf,
# overflow, entries, root), then last_pg, txnid. 136 bytes + last_pg/txnid = 152.
_META = struct.Struct(_E + "IIQQ" + "IHHQQQQQ" * 2 + "QQ")
_FLAGS = struct.Struct(_E + "H")

OK, DAMAGED, SHORT = "ok", "damaged", "short"


@dataclass(frozen=True)
class _Meta:
    magic: int
    version: int
    psize: int        # mm_psize is stored in the free DB's md_pad
    roots: tuple[int, int]
    last_pg: int
    txnid: int
    is_meta: bool


def _meta(buf: bytes, hdr: int) -> _Meta | None:
    if len(buf) < hdr + _META.size:
        return None
    f = _META.unpack_from(buf, hdr)
    (flags,) = _FLAGS.unpack_from(buf, hdr - 6)
    return _Meta(magic=f[0], version=f[1], psize=f[4], roots=(f[11], f[19]), last_pg=f[20],
                 txnid=f[21], is_meta=bool(flags & P_META))


def inspect_data_file(path: Path) -> tuple[str, str | None]:
    """(verdict, detail) for an LMDB `data.mdb`: (OK, None) when it is safe to map (a missing or
    empty file is a new environment), (DAMAGED, why) when it is not, (SHORT, why) when only a
    full walk (`deep_verify`) can tell. Raises OSError when the file cannot be read at all."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return OK, None
    with f:
        head = f.read(64)
        if not head:
            return OK, None  # LMDB writes fresh meta pages into an empty file
        hdr = next((off for off in _ENGINES if len(head) >= off + 4
                    and struct.unpack_from(_E + "I", head, off)[0] == MAGIC), None)
        if hdr is None:
            return DAMAGED, "not an LMDB data file (no magic number in its first meta page)"
        version, max_psize = _ENGINES[hdr]
        f.seek(0)
        m0 = _meta(f.read(hdr + _META.size), hdr)
        if m0 is None:
            return DAMAGED, "the file is shorter than its first meta page"
        psize = m0.psize
        if psize < 256 or psize > max_psize or psize & (psize - 1):
            return DAMAGED, f"implausible page size {psize} in meta page 0"
        f.seek(psize)
        m1 = _meta(f.read(hdr + _META.size), hdr)
        if m1 is None:
            return DAMAGED, "the file is shorter than its second meta page"
        for idx, m in enumerate((m0, m1)):
            if m.magic != MAGIC or m.version != version or not m.is_meta:
                return DAMAGED, f"meta page {idx} is not a valid LMDB meta page"
        if m1.psize != psize:
            return DAMAGED, f"the meta pages disagree on the page size ({psize} vs {m1.psize})"
        meta = m1 if m0.txnid < m1.txnid else m0  # what mdb_env_pick_meta chooses
        if meta.last_pg < 1:
            return DAMAGED, f"the committed meta page claims last page {meta.last_pg}"
        for root in meta.roots:
            if root != P_INVALID and not 2 <= root <= meta.last_pg:
                return DAMAGED, f"a B-tree root (page {root}) lies outside pages 2..{meta.last_pg}"
        # Size after the metas: a writer extends the file before it writes the meta that
        # refers to the new pages, so a concurrent commit cannot make a sound file look short.
        size = os.fstat(f.fileno()).st_size
    needed = (meta.last_pg + 1) * psize
    if size < needed:
        return SHORT, (f"the file has {size} bytes but its committed meta page refers to "
                       f"{meta.last_pg + 1} pages of {psize} bytes ({needed} bytes)")
    return OK, None


def deep_verify(env_dir: Path) -> list[str] | None:
    """Every structural problem py-lmdb's offline verifier finds in `env_dir`/data.mdb ([] when
    sound), or None when this py-lmdb has no verifier (older than 3.0). Reads with read(2), never
    maps; run it while holding LMDB's writer lock so no commit lands half-way through the walk."""
    try:
        from lmdb import verify as lmdb_verify
    except ImportError:  # py-lmdb < 3.0
        return None
    try:
        return list(lmdb_verify.verify(str(env_dir), subdir=True))
    except lmdb_verify.VerifyError as exc:
        return [str(exc)]
