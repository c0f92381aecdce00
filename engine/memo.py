"""Per-record memo: results of one record's work reused by the next run of the same action.

A shard action re-runs when any of its records changed, but the work of its other records
(parse, normalize, map) is the same as last time. ``RecordMemo`` lets an action look each record
up by the digest of its bytes and replay the stored result instead of recomputing it.

Hermetic by construction:

- an entry's lookup key is (namespace, the implementation digest of the action function,
  the action's params, the record's content digest) — the implementation digest and params
  scope the whole pack (header and file name), the record digest (BLAKE3 of the exact bytes the
  result is computed from) names the entry; so an entry can only be found for the same code, the
  same params and the same record bytes, and its value is a pure function of those;
- a pack is one file per action slot (``<cache>/memo-v1/<ns>/<blake3(scope, slot)>.pack``):
  magic, scope digest, zstd(level 1) of the entries, BLAKE3 of all of it. Anything that does not
  check (truncated, flipped byte, wrong scope, not decompressing within the size it declares) is
  deleted and treated as empty: a corrupt or missing pack only costs time, never changes bytes;
- a pack is rewritten after each run with exactly the entries that run used (stale records do
  not accumulate), via a temp file and ``os.replace`` (a concurrent writer of the same slot
  loses, which is harmless: both wrote correct entries);
- ``build --check`` (sandbox mode ``check``) and actions run outside a cache sandbox (benchmarks
  calling action functions directly) get a disabled memo: every lookup misses and nothing is
  written, so ``--check`` compares the real computation with the cached bytes.

The pack is one file per action (not one file per record) because a cold 100k-record build
would otherwise write 100k small files, which costs more than the work it saves.
"""
from __future__ import annotations

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
_MAGIC = b"STELLA-MEMO-1\n"
_DIGEST = 32
_ENTRY = struct.Struct(">32sI")  # record digest, value length in bytes
_SIZE = struct.Struct(">Q")      # uncompressed size of the entries (bounds decompression)
_MAX_PACK = 4 << 30              # a pack larger than this is treated as corrupt (4 GiB)


def record_digest(data: bytes) -> bytes:
    """The 32-byte BLAKE3 digest naming a record by its exact bytes."""
    return blake3.blake3(data).digest()


class RecordMemo:
    """Memo of one action slot. ``get(digest) -> bytes | None``, ``put(digest, value)``,
    ``save()`` once the action's outputs are written; ``stats()`` → {"hits", "misses",
    "corrupt"} (corrupt: 1 when a damaged pack was found and ignored)."""

    def __init__(self, root: Path | None, namespace: str, fn: str, params: Any, slot: str):
        self.enabled = root is not None
        self._old: dict[bytes, bytes] = {}
        self._new: dict[bytes, bytes] = {}
        self.hits = self.misses = self.corrupt = 0
        if not self.enabled:
            self.path = None
            return
        self.scope = blake3.blake3(canonical_json.dumps(
            [MEMO_DIR, namespace, fn, implementation_digest(fn), params])).digest()
        name = blake3.blake3(self.scope + slot.encode("utf-8", "surrogatepass")).hexdigest()
        self.path = Path(root) / MEMO_DIR / namespace / f"{name}.pack"
        self._load()

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except OSError:  # missing (first run) or unreadable: a cold memo
            return
        entries = self._parse(data)
        if entries is None:
            self.corrupt = 1
            try:
                self.path.unlink()
            except OSError:
                pass
            return
        self._old = entries

    def _parse(self, data: bytes) -> dict[bytes, bytes] | None:
        head = len(_MAGIC) + _DIGEST + _SIZE.size
        if len(data) < head + _DIGEST or not data.startswith(_MAGIC):
            return None
        body, check = data[:-_DIGEST], data[-_DIGEST:]
        if blake3.blake3(body).digest() != check or body[len(_MAGIC):len(_MAGIC) + _DIGEST] != self.scope:
            return None
        (size,) = _SIZE.unpack_from(body, len(_MAGIC) + _DIGEST)
        if size > _MAX_PACK:
            return None
        try:  # max_output_size: never inflate more than the size the (checked) header declares
            raw = zstandard.ZstdDecompressor().decompress(body[head:], max_output_size=size)
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
        """Write the pack of the entries this run used. Failures (full disk, read-only cache)
        are ignored: the memo is an optimisation, the action's outputs do not depend on it."""
        if not self.enabled:
            return
        parts = []
        for digest in sorted(self._new):
            value = self._new[digest]
            parts.append(_ENTRY.pack(digest, len(value)))
            parts.append(value)
        raw = b"".join(parts)
        body = (_MAGIC + self.scope + _SIZE.pack(len(raw))
                + zstandard.ZstdCompressor(level=1).compress(raw))
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
