"""Per-record memo: results of one record's work reused by the next run of the same action.

A shard action re-runs when any of its records changed, but the work of its other records
(parse, normalize, map) is the same as last time. ``RecordMemo`` lets an action look each record
up by the digest of its bytes and replay the stored result instead of recomputing it.

Hermetic by construction:

- an entry's lookup key is (namespace, the implementation digest of the action function,
  the action's params, the byte-affecting library versions, the record's content digest) — the
  first four scope the whole pack (header and file name), the record digest (BLAKE3 of the exact
  bytes the result is computed from) names the entry; so an entry can only be found for the same
  code, params, libraries (zstd, zlib-ng...) and record bytes, and its value is a pure function
  of those;
- a pack is one file per action slot (``<cache>/memo-v1/<ns>/<blake3(scope, slot)>.pack``):
  magic, scope digest, a base and a delta frame of zstd(level 1) entries, BLAKE3 of all of it
  (``RecordMemo``). Anything that does not check (truncated, flipped byte, wrong scope, not
  decompressing within the size it declares) is deleted and treated as empty: a corrupt or
  missing pack only costs time, never changes bytes;
- a pack is rewritten after each run via a temp file and ``os.replace`` (a concurrent writer of
  the same slot loses, which is harmless: both wrote correct entries), keeping its base frame
  while at most a quarter of it went unused, else with exactly the entries that run used (stale
  records do not accumulate beyond that);
- ``build --check`` (sandbox mode ``check``) and actions run outside a cache sandbox (benchmarks
  calling action functions directly) get a disabled memo: every lookup misses and nothing is
  written, so ``--check`` compares the real computation with the cached bytes.

The pack is one file per action (not one file per record) because a cold 100k-record build
would otherwise write 100k small files, which costs more than the work it saves.
"""
from __future__ import annotations

import functools
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import blake3
import zstandard

from stella_build.engine.closure import implementation_digest
from stella_build.engine.encode import canonical_json

MEMO_DIR = "memo-v1"
_MAGIC = b"STELLA-MEMO-2\n"
_DIGEST = 32
_ENTRY = struct.Struct(">32sI")  # record digest, value length in bytes
_FRAME = struct.Struct(">QQ")    # a frame's uncompressed size (bounds decompression), its length
_MAX_PACK = 4 << 30              # a frame larger than this is treated as corrupt (4 GiB)
# A save keeps the pack's base frame as it is (no recompression) while at most this fraction of
# its entries went unused and the delta stays at most this fraction of it; else it compacts.
_STALE = 0.25


@functools.lru_cache(maxsize=1)
def _process_libraries() -> dict[str, str]:
    """This process's byte-affecting library versions (`encode.archive.library_versions`)."""
    from stella_build.engine.encode.archive import library_versions

    return library_versions()


def record_digest(data: bytes) -> bytes:
    """The 32-byte BLAKE3 digest naming a record by its exact bytes."""
    return blake3.blake3(data).digest()


def _entries_bytes(entries: dict[bytes, bytes]) -> bytes:
    parts = []
    for digest in sorted(entries):
        value = entries[digest]
        parts.append(_ENTRY.pack(digest, len(value)))
        parts.append(value)
    return b"".join(parts)


def _frame(entries: dict[bytes, bytes]) -> bytes:
    raw = _entries_bytes(entries)
    # with the frame checksum (XXH64), checked on decompression: a damaged frame whose pack
    # checksum was recomputed still fails instead of giving other values
    packed = zstandard.ZstdCompressor(level=1, write_checksum=True).compress(raw) if raw else b""
    return _FRAME.pack(len(raw), len(packed)) + packed


class RecordMemo:
    """Memo of one action slot. ``get(digest) -> bytes | None``, ``put(digest, value)``,
    ``save()`` once the action's outputs are written; ``stats()`` → {"hits", "misses",
    "corrupt"} (corrupt: 1 when a damaged pack was found and ignored).

    Pack layout (``STELLA-MEMO-2``): magic, scope digest, a *base* frame and a *delta* frame
    (each: uncompressed size, length, zstd level 1 of the sorted entries ``digest, value length,
    value``), BLAKE3 of everything before it. A daily rebuild changes ~1 % of the records: the
    save then copies the base frame's compressed bytes as they are and compresses only the new
    entries into the delta, instead of recompressing the whole pack (most of a replay's cost at
    100k records). Unused entries stay in the base until more than ``_STALE`` of it is unused,
    or the delta outgrows ``_STALE`` of it: then the pack is rewritten with exactly the entries
    the run used. Either way an entry is a pure function of its digest, so an old one is never
    wrong, only space."""

    def __init__(self, root: Path | None, namespace: str, fn: str, params: Any, slot: str,
                 libraries: dict[str, str] | None = None):
        self.enabled = root is not None
        self._old: dict[bytes, bytes] = {}
        self._new: dict[bytes, bytes] = {}
        self._base: dict[bytes, bytes] = {}
        self._base_frame = b""  # the loaded pack's base frame, as stored (header and zstd bytes)
        self.hits = self.misses = self.corrupt = 0
        if not self.enabled:
            self.path = None
            return
        # The byte-affecting library versions (zstd, zlib-ng, SQLite...) scope the pack as they
        # scope the action key: a value such as RawShard's zstd bytes is a function of the
        # library too, so after an upgrade a memo hit must not give the old library's bytes
        # where a cold build gives the new one's. Both the versions the action key was computed
        # with (`libraries`, from analysis) and this process's own (a remote worker may differ).
        self.scope = blake3.blake3(canonical_json.dumps(
            [MEMO_DIR, namespace, fn, implementation_digest(fn), params,
             {"action": dict(libraries or {}), "process": _process_libraries()}])).digest()
        name = blake3.blake3(self.scope + slot.encode("utf-8", "surrogatepass")).hexdigest()
        self.path = Path(root) / MEMO_DIR / namespace / f"{name}.pack"
        self._load()

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except OSError:  # missing (first run) or unreadable: a cold memo
            return
        parsed = self._parse(data)
        if parsed is None:
            self.corrupt = 1
            try:
                self.path.unlink()
            except OSError:
                pass
            return
        self._base, delta, self._base_frame = parsed
        self._old = dict(self._base)
        self._old.update(delta)

    def _parse(self, data: bytes) -> tuple[dict[bytes, bytes], dict[bytes, bytes], bytes] | None:
        """(base entries, delta entries, the base frame as stored), or None if anything does not
        check: magic, BLAKE3, scope, each frame's declared sizes and entries."""
        head = len(_MAGIC) + _DIGEST
        if len(data) < head + 2 * _FRAME.size + _DIGEST or not data.startswith(_MAGIC):
            return None
        body, check = data[:-_DIGEST], data[-_DIGEST:]
        if blake3.blake3(body).digest() != check or body[len(_MAGIC):head] != self.scope:
            return None
        frames, pos = [], head
        for _ in range(2):
            if pos + _FRAME.size > len(body):
                return None
            size, length = _FRAME.unpack_from(body, pos)
            end = pos + _FRAME.size + length
            if size > _MAX_PACK or end > len(body):
                return None
            entries = self._entries(body[pos + _FRAME.size:end], size)
            if entries is None:
                return None
            frames.append((entries, body[pos:end]))
            pos = end
        if pos != len(body):
            return None
        return frames[0][0], frames[1][0], frames[0][1]

    @staticmethod
    def _entries(packed: bytes, size: int) -> dict[bytes, bytes] | None:
        if not packed:
            return {} if size == 0 else None
        try:  # max_output_size: never inflate more than the size the (checked) header declares
            raw = zstandard.ZstdDecompressor().decompress(packed, max_output_size=size)
        except zstandard.ZstdError:
            return None
        if len(raw) != size:
            return None
        entries, pos = {}, 0
        while pos < len(raw):
            if pos + _ENTRY.size > len(raw):
                return None
            digest, length = _ENTRY.unpack_from(raw, pos)
            pos += _ENTRY.size
            if pos + length > len(raw):
                return None
            entries[digest] = raw[pos:pos + length]
            pos += length
        return entries

    def get(self, digest: bytes) -> bytes | None:
        """The stored value for the record with this digest, or None (a miss)."""
        value = self._old.get(digest) if self.enabled else None
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._new[digest] = value
        return value

    def put(self, digest: bytes, value: bytes) -> None:
        """Remember ``value`` (the record's result, bytes) for the next run of this slot."""
        if self.enabled:
            self._new[digest] = value

    def save(self) -> None:
        """Write the pack of the entries this run used (plus, while few, unused ones of the base
        frame it kept; see the class docstring). Failures (full disk, read-only cache) are
        ignored: the memo is an optimisation, the action's outputs do not depend on it."""
        if not self.enabled:
            return
        base = self._base
        extra = {d: v for d, v in self._new.items() if d not in base}
        stale = len(base) - (len(self._new) - len(extra))
        if base and stale <= _STALE * len(base) and len(extra) <= _STALE * len(base):
            frames = self._base_frame + _frame(extra)
        else:  # compact: exactly what this run used
            frames = _frame(self._new) + _frame({})
        body = _MAGIC + self.scope + frames
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(body + blake3.blake3(body).digest())
            os.replace(tmp, self.path)
            tmp = None
        except OSError:
            pass
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "corrupt": self.corrupt}


def memo_root(cache_dir: Path | None) -> Path | None:
    """The cache directory the engine's sandbox passed for a ``build``-mode action
    (``ActionContext.memo_cache``), or None (check mode, outside the engine, or disabled by
    ``<cache>/memo-v1/DISABLED``, which benchmarks use to compare builds with and without it)."""
    if cache_dir is None:
        return None
    root = Path(cache_dir)
    if (root / MEMO_DIR / "DISABLED").exists():
        return None
    return root
