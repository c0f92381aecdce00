"""Interop: python-tuf's real client (ngclient.Updater) consumes our TUF metadata, offline.

Two transports: the default urllib3 fetcher against `http.server` on 127.0.0.1, and our LocalFetcher.
ngclient checks expiry against *now*, so these tests pass a recent epoch (now - 1 hour).
"""
from __future__ import annotations

import functools
import http.server
import threading
import time
from pathlib import Path

import pytest
from tuf.api.exceptions import (
    LengthOrHashMismatchError,
    DownloadLengthMismatchError,
    ExpiredMetadataError,
    RepositoryError,
    UnsignedMetadataError,
)
from tuf.ngclient import Updater

from stella_build.rules.formats.tuf import TufKeys, build_tuf_repo, generate_key, offline_updater

pytestmark = pytest.mark.interop

TARGETS = {
    "export.json": b'{"exportId":"x"}',
    "data/raw/advisories/osv.jsonl.zst": b"\x28\xb5\x2f\xfd" + bytes(range(256)) * 40,
    "oci/blobs/sha256/abc": b"blob",
    "signatures/export.sig": b"sig",
}


def make_repo(base: Path, epoch: int, key_dir: Path) -> bytes:
    """Mirror tree at base/targets, metadata at base/metadata; returns the bootstrap root."""
    for rel, data in TARGETS.items():
        (base / "targets" / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / "targets" / rel).write_bytes(data)
    keys = TufKeys.from_files({
        "root": generate_key(key_dir / "root.pem", "ecdsa"),
        "targets": generate_key(key_dir / "targets.pem"),
        "snapshot": generate_key(key_dir / "snapshot.pem", "ecdsa"),
        "timestamp": generate_key(key_dir / "timestamp.pem"),
    })
    repo = build_tuf_repo(base / "metadata", {rel: base / "targets" / rel for rel in TARGETS}, keys, epoch)
    return repo.root_bytes


@pytest.fixture
def repo(tmp_path):
    root = make_repo(tmp_path / "repo", int(time.time()) - 3600, tmp_path / "keys")
    return tmp_path / "repo", root


@pytest.fixture
def http_base(repo):
    base, _ = repo
    handler = functools.partial(_QuietHandler, directory=str(base))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


def http_updater(tmp_path: Path, url: str, root: bytes) -> Updater:
    (tmp_path / "cache/metadata").mkdir(parents=True, exist_ok=True)
    (tmp_path / "cache/targets").mkdir(parents=True, exist_ok=True)
    return Updater(str(tmp_path / "cache/metadata"), f"{url}/metadata/", str(tmp_path / "cache/targets"),
                   f"{url}/targets/", bootstrap=root)


def download_all(updater: Updater) -> dict[str, bytes]:
    updater.refresh()
    out = {}
    for rel in TARGETS:
        info = updater.get_targetinfo(rel)
        assert info is not None, rel
        out[rel] = Path(updater.download_target(info)).read_bytes()
    return out


def test_ngclient_over_http_downloads_every_target(tmp_path, repo, http_base):
    _, root = repo
    assert download_all(http_updater(tmp_path, http_base, root)) == TARGETS


def test_ngclient_with_local_fetcher(tmp_path, repo):
    base, root = repo
    updater = offline_updater(base / "metadata", base / "targets", tmp_path / "cache", root)
    assert download_all(updater) == TARGETS
    assert updater.get_targetinfo("not/listed") is None


@pytest.mark.parametrize("same_length", [True, False])
def test_tampered_target_is_rejected(tmp_path, repo, http_base, same_length):
    base, root = repo
    victim = base / "targets" / "data/raw/advisories/osv.jsonl.zst"
    data = bytearray(victim.read_bytes())
    if same_length:
        data[100] ^= 1
    else:
        data += b"!"
    victim.write_bytes(bytes(data))
    updater = http_updater(tmp_path, http_base, root)
    updater.refresh()
    info = updater.get_targetinfo("data/raw/advisories/osv.jsonl.zst")
    with pytest.raises(LengthOrHashMismatchError if same_length else DownloadLengthMismatchError):
        updater.download_target(info)
    assert Path(updater.download_target(updater.get_targetinfo("export.json"))).read_bytes() == TARGETS["export.json"]


def test_tampered_metadata_is_rejected(tmp_path, repo):
    base, root = repo
    path = base / "metadata" / "targets.json"
    original = path.read_bytes()
    tampered = original.replace(b'"length":3', b'"length":4')  # signatures/export.sig
    assert tampered != original
    path.write_bytes(tampered)
    updater = offline_updater(base / "metadata", base / "targets", tmp_path / "cache", root)
    with pytest.raises(RepositoryError):  # snapshot's hash of targets.json no longer matches
        updater.refresh()


def test_foreign_bootstrap_root_is_rejected(tmp_path, repo):
    base, _ = repo
    other_root = make_repo(tmp_path / "other", int(time.time()) - 3600, tmp_path / "other-keys")
    updater = offline_updater(base / "metadata", base / "targets", tmp_path / "cache", other_root)
    with pytest.raises(UnsignedMetadataError):
        updater.refresh()


def test_expired_metadata_is_rejected(tmp_path):
    """Expiry is epoch + duration: an epoch two years back yields metadata the client refuses."""
    base = tmp_path / "old"
    root = make_repo(base, int(time.time()) - 2 * 365 * 86400, tmp_path / "keys")
    updater = offline_updater(base / "metadata", base / "targets", tmp_path / "cache", root)
    with pytest.raises(ExpiredMetadataError):
        updater.refresh()
