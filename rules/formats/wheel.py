"""Reproducible Python distributions: a wheel (PEP 427/491) and an sdist (PEP 517/625), bytes in,
bytes out, no network, no build backend.

Why hand-written on the standard library: `wheel`/`build`/`setuptools` run a build backend in a
subprocess (pip would fetch it from the network) and deflate with the host's zlib, whose output
differs between zlib builds. Here:

- the wheel is a zip written by `zipfile` with every ZipInfo field fixed: STORED members (no
  compressor, so no zlib version in the bytes; an SDK is a few KiB), DOS time = SOURCE_DATE_EPOCH
  (clamped to 1980, the zip epoch), Unix mode 0644, members in path order with the `.dist-info`
  directory last and RECORD the very last member (PEP 427), RECORD lines sorted;
- the sdist is the engine's deterministic PAX tar (sorted, mtime SOURCE_DATE_EPOCH, uid/gid 0)
  compressed by the pinned zlib-ng gzip with a fixed header, holding `<name>-<version>/PKG-INFO`,
  `pyproject.toml` and the sources.

The same inputs give the same bytes on every machine (the Python minor version is in the action key).
"""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import time
import zipfile

from stella_build.engine.rule_api import TarEntry, gzip_bytes, tar_bytes

__all__ = ["normalize", "metadata", "wheel_name", "sdist_name", "wheel_bytes", "sdist_bytes", "record_hash"]

_ZIP_EPOCH = 315532800  # 1980-01-01T00:00:00Z: the earliest time a zip entry can carry


def normalize(name: str) -> str:
    """The distribution name as wheel and sdist file names spell it (PEP 503 + `_`)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_name(name: str, version: str, tag: str = "py3-none-any") -> str:
    return f"{normalize(name)}-{version}-{tag}.whl"


def sdist_name(name: str, version: str) -> str:
    return f"{normalize(name)}-{version}.tar.gz"


def metadata(*, name: str, version: str, summary: str, requires_python: str, license: str,
             classifiers: list[str], readme: str) -> bytes:
    """Core metadata 2.1 (METADATA in the wheel, PKG-INFO in the sdist), README as the description."""
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", f"Summary: {summary}",
             f"License: {license}", f"Requires-Python: {requires_python}",
             *(f"Classifier: {c}" for c in classifiers), "Description-Content-Type: text/markdown", ""]
    return ("\n".join(lines) + "\n" + readme).encode("utf-8")


def record_hash(data: bytes) -> str:
    """`sha256=<urlsafe base64, no padding>` as RECORD lines carry it."""
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _zipinfo(path: str, epoch: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(path, date_time=time.gmtime(max(int(epoch), _ZIP_EPOCH))[:6])
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 3  # Unix, so external_attr carries the mode
    info.external_attr = (0o100644 & 0xFFFF) << 16
    return info


def wheel_bytes(*, name: str, version: str, files: dict[str, bytes], meta: bytes, generator: str,
                epoch: int, tag: str = "py3-none-any") -> bytes:
    """A pure-Python wheel of `files` (package-relative paths → bytes) with METADATA `meta`."""
    dist_info = f"{normalize(name)}-{version}.dist-info"
    wheel = (f"Wheel-Version: 1.0\nGenerator: {generator}\nRoot-Is-Purelib: true\nTag: {tag}\n").encode()
    members = [(p, files[p]) for p in sorted(files, key=lambda p: p.encode())]
    members += [(f"{dist_info}/METADATA", meta), (f"{dist_info}/WHEEL", wheel)]
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for path, data in sorted(members, key=lambda m: m[0].encode()):
        writer.writerow([path, record_hash(data), len(data)])
    writer.writerow([f"{dist_info}/RECORD", "", ""])
    members.append((f"{dist_info}/RECORD", record.getvalue().encode()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path, data in members:
            zf.writestr(_zipinfo(path, epoch), data)
    return buf.getvalue()


def sdist_bytes(*, name: str, version: str, files: dict[str, bytes], pkg_info: bytes, epoch: int,
                level: int = 9) -> bytes:
    """A `.tar.gz` sdist: `<name>-<version>/` holding PKG-INFO and `files` (pyproject.toml, README,
    the package), deterministic (see the module docstring)."""
    top = f"{normalize(name)}-{version}"
    entries = [TarEntry(f"{top}/PKG-INFO", data=pkg_info)]
    entries += [TarEntry(f"{top}/{path}", data=data) for path, data in files.items()]
    return gzip_bytes(tar_bytes(entries, mtime=int(epoch)), level)
