import gzip
import hashlib
import io
import tarfile
import zlib

import zstandard

from stella_build.engine.encode.archive import (
    TarEntry, gunzip_bytes, gzip_bytes, library_versions, tar_bytes, unzstd_bytes, zstd_bytes,
)

PAYLOAD = b"".join(b"line %d of the stella-build archive test\n" % i for i in range(5000))


def test_tar_is_sorted_pax_and_scrubbed():
    data = tar_bytes([TarEntry("z.txt", b"z"), TarEntry("a/b.json", b"{}", 0o644),
                      TarEntry("bin/run.sh", b"#!/bin/sh\n", 0o755)], mtime=1735689600)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["a/b.json", "bin/run.sh", "z.txt"]
        for m in members:
            assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 1735689600)
        assert members[1].mode == 0o755 and members[0].mode == 0o644
    assert tar_bytes([TarEntry("b", b"2"), TarEntry("a", b"1")], 7) == tar_bytes([TarEntry("a", b"1"), TarEntry("b", b"2")], 7)


def test_gzip_header_is_fixed_and_stdlib_can_read_it():
    out = gzip_bytes(PAYLOAD)
    assert out[:4] == b"\x1f\x8b\x08\x00"          # magic, deflate, no FNAME/FEXTRA flags
    assert out[4:8] == b"\x00\x00\x00\x00"          # mtime 0
    assert out[8] == 2 and out[9] == 255             # XFL for level 9, OS unknown
    assert gzip.decompress(out) == PAYLOAD == gunzip_bytes(out)


# Golden digests of the pinned compressors' output (zlib-ng 2.3.3 level 9, libzstd 1.5.7 level 19).
# They fail if the compressor changes, whatever zlib the host has: that is the point.
GOLDEN_GZIP = "38757e0b94f755b32e5428381243b43f5ecd191d128151849eef1a892d79c856"
GOLDEN_ZSTD = "efed86c72c225555568e5f386599062c0937f3b9b67491525638a3c63ce9aed6"


def test_gzip_bytes_come_from_the_pinned_compressor_not_the_system_zlib():
    out = gzip_bytes(PAYLOAD)
    assert library_versions()["zlib-ng"] == "2.3.3"
    assert hashlib.sha256(out).hexdigest() == GOLDEN_GZIP
    assert zlib.decompress(out, 31) == PAYLOAD  # any inflater reads it


def test_zstd_round_trip_and_pinned_library():
    out = zstd_bytes(PAYLOAD, 19)
    assert unzstd_bytes(out) == PAYLOAD
    assert zstandard.ZstdDecompressor().decompress(out) == PAYLOAD
    assert hashlib.sha256(out).hexdigest() == GOLDEN_ZSTD
    assert library_versions()["zstd"] == "1.5.7"


def test_zstd_bytes_do_not_depend_on_the_worker_count():
    """zstd_bytes uses one worker per core; a body of several jobs (level 3: 8 MiB jobs) must give
    the same frame with 1, 2 or 3 workers, and not the single-threaded mode's (nbWorkers 0)."""
    import random

    rng = random.Random(7)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    body = b" ".join(rng.choices(words, k=3_600_000))  # ~20 MB: three jobs
    frames = {t: zstandard.ZstdCompressor(level=3, threads=t, write_checksum=True).compress(body) for t in (1, 2, 3)}
    assert frames[1] == frames[2] == frames[3] == zstd_bytes(body, 3)
    assert zstandard.ZstdCompressor(level=3, threads=0, write_checksum=True).compress(body) != frames[1]
    assert unzstd_bytes(frames[2]) == body


def test_zstd_many_gives_zstd_bytes_of_each_body_in_order():
    from stella_build.engine.encode.archive import zstd_many

    bodies = [PAYLOAD * n for n in range(7)] + [b""]
    assert zstd_many(bodies, 19) == [zstd_bytes(b, 19) for b in bodies]
    assert zstd_many([], 19) == [] and zstd_many([PAYLOAD], 3) == [zstd_bytes(PAYLOAD, 3)]
