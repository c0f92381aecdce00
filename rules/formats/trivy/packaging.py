"""Packaging of a built Trivy DB: metadata.json, the ``.tar.gz`` and the OCI artifact Trivy pulls.

Everything streams from files (a vulnerability DB can be ~1 GB), and the bytes equal what the
in-memory encoders of ``stella_build.engine.encode.archive`` would give: deterministic PAX tar
(``write_tar``) compressed by the pinned zlib-ng deflate, block-parallel (``GzipWriter``), with
the same fixed gzip header as ``gzip_bytes`` (mtime 0, no name, OS byte 255). The OCI manifest has the shape of ``oras push
--artifact-type application/vnd.aquasec.trivy.config.v1+json`` with ``created`` fixed by the caller
(see ``stella_build.rules.formats.oci.trivy_db_artifact``, which does the same from bytes).
"""
from __future__ import annotations

import struct
from pathlib import Path

from zlib_ng import zlib_ng

from stella_build.engine.rule_api import GZIP_OS_UNKNOWN, TarEntry, tar_member_offset, write_tar
from stella_build.rules.formats.oci import (
    ANNOTATION_TITLE, TRIVY_ARTIFACT_TYPE, TRIVY_DB_LAYER, TRIVY_JAVADB_LAYER, Descriptor,
    OciLayoutWriter, add_bundle_referrer,
)
from stella_build.rules.formats.trivy.gojson import go_time, trivy_metadata_json
from stella_build.rules.formats.trivy.gzip_ahead import deflate_block
from stella_build.rules.formats.trivy.interval import parse_interval  # noqa: F401 (re-exported)

__all__ = ["GzipWriter", "write_db_archive", "write_oci_layout", "metadata_json",
           "parse_interval"]



def metadata_json(version: int, epoch: int, interval_s: int) -> bytes:
    """metadata.json: UpdatedAt = DownloadedAt = SOURCE_DATE_EPOCH, NextUpdate = + interval.

    A non-zero DownloadedAt keeps Trivy from treating the DB as hand-placed and re-downloading
    it; NextUpdate in the past only matters without ``--skip-db-update``.
    """
    go_time(epoch)  # validates the range
    return trivy_metadata_json(version, updated_at=epoch, next_update=epoch + interval_s,
                               downloaded_at=epoch)


class GzipWriter:
    """A write-only file object writing one gzip member whose bytes depend only on the data
    written and ``level`` (not on how it is cut into writes, nor on ``threads``).

    Block-parallel, as pigz does: the data is cut into ``BLOCK``-byte blocks; each is compressed
    by its own zlib-ng deflate stream primed with the previous block's last 32 KiB (``zdict``)
    and ended with a sync flush (the last block with ``Z_FINISH``), and the raw segments are
    concatenated into one DEFLATE stream (RFC 1951 §3.2.3: a sync flush ends on a byte boundary
    with an empty stored block, not a final one). zlib-ng releases the GIL while compressing, so
    ``threads`` blocks compress at once; the last step of a trivy:db build runs alone on the
    machine, this halves its gzip time on two cores, for +0.03 % bytes. Header: mtime 0, no
    name, XFL by level, OS 255; trailer: CRC-32 and size mod 2**32 (RFC 1952).

    Hand-written: ``zlib_ng.gzip_ng_threaded`` works the same way but cuts blocks at the caller's
    write boundaries (so bytes depend on the write pattern: a streamed archive and its
    re-creation by ``patch.regzip`` would differ) and swaps the header's XFL and OS bytes."""

    BLOCK = 1 << 20
    _WINDOW = 32 * 1024
    _IN_FLIGHT = 4  # blocks compressing or waiting to be written, per thread: bounds memory

    def __init__(self, raw, level: int = 9, threads: int = 2, ahead=None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._raw = raw
        self._level = level
        self._ahead = ahead  # gzip_ahead.GzipAhead: blocks deflated while the source was written
        self._index = 0
        self._crc = 0
        self._size = 0
        self._buf = bytearray()
        self._previous = b""
        self._pending: list = []
        self._threads = max(1, threads)
        self._pool = ThreadPoolExecutor(self._threads) if self._threads > 1 else None
        xfl = 2 if level == 9 else 4 if level == 1 else 0
        raw.write(b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + bytes([xfl, GZIP_OS_UNKNOWN]))

    def _deflate(self, block: bytes, zdict: bytes, final: bool) -> bytes:
        return deflate_block(self._level, block, zdict, final)

    def _submit(self, block: bytes, final: bool) -> None:
        zdict = self._previous[-self._WINDOW:]
        self._previous = block
        index, self._index = self._index, self._index + 1
        done = self._ahead.take(index, zdict, block) if self._ahead is not None and not final else None
        if self._pool is None:
            self._raw.write(done if done is not None else self._deflate(block, zdict, final))
            return
        self._pending.append(_Done(done) if done is not None
                             else self._pool.submit(self._deflate, block, zdict, final))
        while len(self._pending) > self._IN_FLIGHT * self._threads:
            self._raw.write(self._pending.pop(0).result())

    def write(self, data) -> int:
        data = bytes(data)
        self._crc = zlib_ng.crc32(data, self._crc)
        self._size += len(data)
        self._buf += data
        if len(self._buf) >= self.BLOCK:
            whole = len(self._buf) - len(self._buf) % self.BLOCK
            view = memoryview(self._buf)
            for start in range(0, whole, self.BLOCK):
                self._submit(bytes(view[start:start + self.BLOCK]), final=False)
            view.release()
            del self._buf[:whole]
        return len(data)

    def tell(self) -> int:  # tarfile asks for the position of the uncompressed stream
        return self._size

    def close(self) -> None:
        try:
            self._submit(bytes(self._buf), final=True)
            self._buf = bytearray()
            for fut in self._pending:
                self._raw.write(fut.result())
            self._pending = []
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
        self._raw.write(struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF))


class _Done:
    """A block deflated ahead, queued beside the pool's futures."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def result(self) -> bytes:
        return self._data


# gzip level of db.tar.gz / javadb.tar.gz: 7. The archive is gzipped again on every rebuild and
# is the largest serial part of TrivyDb after the merge. On a 25k-advisory trivy.db (36 MB) level
# 7 takes ~60 % of level 9's time for 0.7 % more bytes. (zlib-ng's levels 1, 5 and 6 give bytes
# that depend on how the input is cut into compress() calls; GzipWriter always hands each block
# over in one call, but 7-9 do not depend on it at all: tests/test_trivy_db.py checks both.)
DB_ARCHIVE_GZIP_LEVEL = 7


def _entries(members: dict[str, Path | bytes | None]) -> list[TarEntry]:
    return [TarEntry(name, data=src if src is not None else b"") if not isinstance(src, (str, Path))
            else TarEntry(name, source=Path(src)) for name, src in members.items()]


def write_db_archive(dest: Path, members: dict[str, Path | bytes], mtime: int, ahead=None) -> None:
    """``dest`` = gzip level ``DB_ARCHIVE_GZIP_LEVEL`` (PAX tar of ``members`` sorted by name),
    streamed from files. ``ahead``: a `gzip_ahead.GzipAhead` (stopped) whose blocks are used
    where their digests match (`start_ahead`); the bytes are the same with or without it."""
    with open(dest, "wb") as raw:
        gz = GzipWriter(raw, DB_ARCHIVE_GZIP_LEVEL, ahead=ahead)
        write_tar(gz, _entries(members), mtime)
        gz.close()


def start_ahead(members: dict[str, Path | bytes | None], mtime: int, db_name: str, db_path: Path,
                rewritten: int):
    """Start deflating ``db_name``'s blocks of the archive `write_db_archive` will write, while
    the DB is written to ``db_path`` (its first ``rewritten`` bytes are rewritten at the end).
    ``members`` as for `write_db_archive`, the DB's value not used (None). → GzipAhead or None."""
    from stella_build.rules.formats.trivy import gzip_ahead

    offset = tar_member_offset(_entries({**members, db_name: None}), mtime, db_name)
    return gzip_ahead.start(db_path, offset, rewritten, DB_ARCHIVE_GZIP_LEVEL)


def write_oci_layout(root: Path, archive: Path, created_rfc3339: str, java: bool = False) -> Descriptor:
    """OCI layout at ``root`` holding the Trivy (Java) DB artifact, tagged ``2`` (``1`` for Java)."""
    title, media_type, tag = (("javadb.tar.gz", TRIVY_JAVADB_LAYER, "1") if java
                              else ("db.tar.gz", TRIVY_DB_LAYER, "2"))
    layout = OciLayoutWriter(root)
    layer = layout.add_blob_file(archive, media_type, {ANNOTATION_TITLE: title})
    desc = layout.add_manifest(TRIVY_ARTIFACT_TYPE, None, [layer], created=created_rfc3339)
    layout.tag(desc, tag)
    layout.write_index()
    return desc


# java → names of one profile
PROFILES = {
    False: {"profile": "trivy:db", "variant": "db", "db": "trivy.db", "archive": "db.tar.gz",
            "sig": "signatures/trivy-db.sig", "layer": TRIVY_DB_LAYER, "tag": "2",
            "db_type": "application/vnd.stella-build.bbolt"},
    True: {"profile": "trivy:java-db", "variant": "java-db", "db": "trivy-java.db", "archive": "javadb.tar.gz",
           "sig": "signatures/trivy-java-db.sig", "layer": TRIVY_JAVADB_LAYER, "tag": "1",
           "db_type": "application/vnd.sqlite3"},
}


def build_layout(writer: OciLayoutWriter, layer: Descriptor, bundle: bytes, created: str,
                 java: bool) -> tuple[Descriptor, Descriptor]:
    """The signed layout: artifact (tagged "2"/"1"), its bundle referrer, the fallback index.
    `layer` must already be in `writer` (add_blob_file / add_known_blob)."""
    artifact = writer.add_manifest(TRIVY_ARTIFACT_TYPE, None, [layer], created=created)
    writer.tag(artifact, PROFILES[java]["tag"])
    referrer = add_bundle_referrer(writer, artifact, bundle, created)
    writer.write_index()
    return artifact, referrer
