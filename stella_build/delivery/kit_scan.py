"""Reading an Offline Kit as a hostile stream: the one pass `kit verify` and `kit import` share
(stella_build/delivery/kit.py does the checks after it, docs/offline-kit.md).

- `_Gunzip` inflates with zlib's `max_length` (never more output than asked for) under a total
  bound, so a gzip bomb fails fast in bounded memory; `PartsReader` joins split parts, checking
  each against its list entry at its end; `HashReader` hashes what passes (the archive digest in
  the same pass);
- `_BoundedTarInfo` makes tarfile refuse, before reading them, PAX headers over MAX_HEADER and
  every member type but regular files and hard links;
- `scan_archive` / `scan_tree` check every member (one top directory, safe sorted unique paths,
  hard links only to earlier regular members) and hand it to `Scanner`, which hashes it in 1 MiB
  pieces, keeps small metadata files in memory, and inflates the Trivy DB archives as they stream
  by (writing their two files to a staging directory when importing).

Errors are `KitError`s (a MirrorError with the CLI's exit code, a kebab-case reason, the file).
"""
from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

from zlib_ng import zlib_ng

from stella_build.delivery.verify.mirror import MirrorError
from stella_build.rules.formats import kit as K

MAX_KIT_BYTES = 32 << 30      # default cap on the inflated size of a kit (every tar byte counted)
MAX_MEMBERS = 1_000_000       # members of one kit (a big mirror has tens of thousands of files)
MAX_HEADER = 1 << 20          # one PAX header (long names take a few hundred bytes)
MAX_KEPT = 64 << 20           # one metadata file kept in memory (manifests take ~0.25 KiB per file listed)
MAX_KEPT_TOTAL = 256 << 20    # all metadata files kept in memory
CHUNK = 1 << 20
_ALLOWED_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.LNKTYPE, tarfile.XHDTYPE, tarfile.XGLTYPE)
_HEADER_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE)


class KitError(MirrorError):
    """A kit verify/import failure: `exit_code` (3 verification, 2 usage, 4 trust missing), a
    kebab-case `reason`, and the `file` at fault (a path inside the kit, or on disk)."""

    def __init__(self, message: str, exit_code: int = 3, reason: str | None = None, *,
                 file: str | os.PathLike | None = None, field: str | None = None):
        super().__init__(message, exit_code, reason)
        self.file = None if file is None else str(file)
        self.field = field


# -- streams -------------------------------------------------------------------------------------

class HashReader:
    """Reads from `src`, hashing what passes (the archive's sha256 in the same pass)."""

    def __init__(self, src: BinaryIO) -> None:
        self.src, self.sha256, self.size = src, hashlib.sha256(), 0

    def read(self, n: int = CHUNK) -> bytes:
        data = self.src.read(n if n is not None and n >= 0 else CHUNK)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def drain(self) -> int:
        """Read what is left (hashing it); returns how many bytes that was."""
        left = 0
        while data := self.read(CHUNK):
            left += len(data)
        return left


class PartsReader:
    """The parts of a split archive as one stream; each part is hashed as it is read and checked
    against the parts list at its end (a changed or reordered part fails there)."""

    def __init__(self, directory: Path, parts: list[tuple[str, str]]) -> None:
        self.directory, self.parts, self.index = directory, parts, -1
        self.file: BinaryIO | None = None
        self.sha256 = hashlib.sha256()
        self._next()

    def _next(self) -> None:
        if self.file is not None:
            self.file.close()
            name, want = self.parts[self.index]
            if self.sha256.hexdigest() != want:
                raise KitError(f"part {name} does not match the parts list (changed, or parts swapped)",
                               reason="kit-part-mismatch", file=self.directory / name)
        self.index += 1
        self.file = None
        if self.index < len(self.parts):
            self.file = open(self.directory / self.parts[self.index][0], "rb")
            self.sha256 = hashlib.sha256()

    def read(self, n: int = CHUNK) -> bytes:
        while self.file is not None:
            data = self.file.read(n)
            if data:
                self.sha256.update(data)
                return data
            self._next()
        return b""

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class _Gunzip:
    """A gzip stream inflated with a bound: `read(n)` never inflates more than n bytes at a time
    (zlib's max_length) and the total may not pass `limit`. One gzip member, CRC and size checked."""

    def __init__(self, raw, limit: int, what: str, reason: str = "kit-archive-invalid") -> None:
        self.raw, self.limit, self.what, self.reason = raw, limit, what, reason
        self.inflate = zlib_ng.decompressobj(wbits=31)
        self.total = 0
        self.eof = False

    def _error(self, message: str, reason: str | None = None) -> KitError:
        return KitError(f"{self.what}: {message}", reason=reason or self.reason, file=self.what)

    def read(self, n: int = CHUNK) -> bytes:
        n = CHUNK if n is None or n < 0 else n
        out = bytearray()
        while len(out) < n and not self.eof:
            data = self.inflate.unconsumed_tail or self.raw.read(64 << 10)
            if not data:
                raise self._error("truncated gzip stream")
            try:
                chunk = self.inflate.decompress(data, n - len(out))
            except zlib_ng.error as exc:
                raise self._error(f"not a valid gzip stream ({exc})") from None
            self.total += len(chunk)
            if self.total > self.limit:
                raise self._error(f"inflates to more than {self.limit} bytes (raise --max-size if that is "
                                  "expected)", "kit-too-large")
            out += chunk
            if self.inflate.eof:
                self.eof = True
                if self.inflate.unused_data:
                    raise self._error("data after the gzip stream")
        return bytes(out)

    def finish(self) -> None:
        """Inflate (and discard) the rest: the tar's end blocks; checks the gzip trailer."""
        while not self.eof:
            self.read(CHUNK)


class _BoundedTarInfo(tarfile.TarInfo):
    """TarInfo that refuses a member type the kit format does not use, and a PAX header larger
    than MAX_HEADER, BEFORE tarfile reads it: tarfile reads a PAX header whole into memory, so a
    forged 4 GiB header (a gzip bomb of zeros) would otherwise exhaust memory. `_proc_member` is
    where `fromtarfile` (and every chained header) dispatches on the type; overriding it through
    the documented `tarinfo=` class is the only hook tarfile offers."""

    def _proc_member(self, tar):
        if self.type not in _ALLOWED_TYPES:
            raise KitError(f"member {self.name!r} is of tar type {self.type!r}; a kit holds only regular "
                           "files and hard links", reason="kit-member-invalid", file=self.name)
        if self.type in _HEADER_TYPES and self.size > MAX_HEADER:
            raise KitError(f"a PAX header of {self.size} bytes (at most {MAX_HEADER})",
                           reason="kit-member-invalid", file=self.name)
        return super()._proc_member(tar)


def _open_tar(stream, what: str) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=stream, mode="r|", tarinfo=_BoundedTarInfo)
    except tarfile.TarError as exc:
        raise KitError(f"{what}: not a tar archive ({exc})", reason="kit-archive-invalid", file=what) from None


def _members(tar: tarfile.TarFile, what: str):
    """Iterate a stream-mode tar, turning tarfile's errors into KitErrors."""
    while True:
        try:
            member = tar.next()
        except KitError:
            raise
        except (tarfile.TarError, EOFError, ValueError, UnicodeError) as exc:
            raise KitError(f"{what}: unreadable tar header ({exc})", reason="kit-archive-invalid",
                           file=what) from None
        if member is None:
            return
        yield member


def _write_new(path: Path, read: Callable[[int], bytes], size: int, what: str) -> str:
    """Create `path` (never following or replacing anything) with `size` bytes from `read`; fsync;
    returns their sha256."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        left = size
        while left:
            data = read(min(left, CHUNK))
            if not data:
                raise KitError(f"{what}: truncated", reason="kit-archive-invalid", file=what)
            h.update(data)
            out.write(data)
            left -= len(data)
        out.flush()
        os.fsync(out.fileno())
    return h.hexdigest()


def _hash(read: Callable[[int], bytes], size: int, what: str, keep: bool) -> tuple[str, bytes | None]:
    h, kept, left = hashlib.sha256(), bytearray() if keep else None, size
    while left:
        data = read(min(left, CHUNK))
        if not data:
            raise KitError(f"{what}: truncated", reason="kit-archive-invalid", file=what)
        h.update(data)
        if kept is not None:
            kept += data
        left -= len(data)
    return h.hexdigest(), None if kept is None else bytes(kept)


# -- scanning ------------------------------------------------------------------------------------

def _db_kind(rel: str) -> str | None:
    """The Trivy DB kind whose archive lives at `rel` in a kit, if any."""
    return K.DB_ARCHIVES.get(rel)


def _keep(rel: str) -> bool:
    """Files kept in memory for the checks after the scan: lists, the manifest, trust material,
    attestations, signatures and the export manifests they sign."""
    return (rel in (K.MANIFEST, K.CHECKSUMS, K.SIGNATURES) or rel.startswith(("trust/", K.ATTESTATIONS + "/"))
            or rel.endswith((".sigstore.json", ".sig", ".dsse.json", "cosign.pub", "export.json",
                             "manifest.diff.json"))
            or _keep_devportal(rel))


def _keep_devportal(rel: str) -> bool:
    """A carried portal's small top files: lists, manifest, signature, key, the archive's sidecar
    (stella_build/delivery/kit_devportal.py checks them); never the archive or the pages."""
    section = K.SECTIONS["devportal"] + "/"
    return rel.startswith(section) and rel.count("/") == 1 and not rel.endswith(".tar.gz")


@dataclass
class Scan:
    """What one pass found: every file's (sha256, size), the metadata files' bytes, the members
    of each Trivy DB archive, and counters for the bounds."""

    members: dict[str, tuple[str, int]] = field(default_factory=dict)   # rel → (sha256, size)
    kept: dict[str, bytes] = field(default_factory=dict)
    inner: dict[str, dict[str, tuple[str, int]]] = field(default_factory=dict)  # DB kind → member → digest
    links: int = 0
    kept_bytes: int = 0
    total: int = 0
    _dirs: set[str] = field(default_factory=set)

    def add(self, rel: str, digest: tuple[str, int], data: bytes | None) -> None:
        parts = rel.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in self.members:
                raise KitError(f"{rel}: {prefix} is a file, not a directory", reason="kit-member-invalid", file=rel)
            self._dirs.add(prefix)
        if rel in self._dirs:
            raise KitError(f"{rel} is both a file and a directory", reason="kit-member-invalid", file=rel)
        if len(self.members) >= MAX_MEMBERS:
            raise KitError(f"more than {MAX_MEMBERS} files", reason="kit-too-large", file=rel)
        self.members[rel] = digest
        if data is not None:
            self.kept_bytes += len(data)
            if self.kept_bytes > MAX_KEPT_TOTAL:
                raise KitError(f"more than {MAX_KEPT_TOTAL} bytes of metadata files", reason="kit-too-large", file=rel)
            self.kept[rel] = data


class Scanner:
    """One pass over a kit's files (from its archive or an unpacked tree)."""

    def __init__(self, max_bytes: int, stage: Path | None) -> None:
        self.max_bytes, self.stage, self.scan = max_bytes, stage, Scan()
        self._checksums: dict[str, str] | None = None

    def _listed(self, rel: str) -> str | None:
        """The sha256 checksums.txt gives `rel`, when checksums.txt came first (it sorts before
        trivy/) and parses; used to name a changed DB archive as such."""
        if self._checksums is None and K.CHECKSUMS in self.scan.kept:
            try:
                self._checksums = K.parse_checksums(self.scan.kept[K.CHECKSUMS])[1]
            except K.KitFormatError:
                self._checksums = {}
        return (self._checksums or {}).get(rel)

    def _budget(self, rel: str, size: int) -> None:
        self.scan.total += size
        if self.scan.total > self.max_bytes:
            raise KitError(f"the kit holds more than {self.max_bytes} bytes (raise --max-size if that is "
                           "expected)", reason="kit-too-large", file=rel)

    def file(self, rel: str, size: int, read: Callable[[int], bytes]) -> None:
        """One regular file of the kit: hashed, kept if small metadata, DB archives inflated."""
        self._budget(rel, size)
        kind = _db_kind(rel)
        if kind is not None:
            digest = self._db(kind, rel, size, read)
            self.scan.add(rel, (digest, size), None)
            return
        keep = _keep(rel) and size <= MAX_KEPT
        digest, data = _hash(read, size, rel, keep)
        self.scan.add(rel, (digest, size), data)

    def _db(self, kind: str, rel: str, size: int, read: Callable[[int], bytes]) -> str:
        """Inflate a Trivy DB archive as it streams by: exactly the DB file and metadata.json,
        hashed, and written to the staging directory when importing. Returns the archive's sha256."""
        archive_reader = HashReader(_Limited(read, size, rel))
        try:
            return self._db_members(kind, rel, archive_reader)
        except (KitError, tarfile.TarError, EOFError, ValueError, UnicodeError) as exc:
            if isinstance(exc, KitError) and exc.reason == "kit-too-large":
                raise  # no draining past the bound
            archive_reader.drain()  # a changed archive is reported as changed, not as the error it causes
            digest = archive_reader.sha256.hexdigest()
            listed = self._listed(rel)
            if listed is not None and listed != digest:
                raise KitError(f"{rel} has sha256 {digest}, checksums.txt says {listed}",
                               reason="kit-checksum-mismatch", file=rel) from None
            if isinstance(exc, KitError):
                raise
            raise KitError(f"{rel}: {exc}", reason="kit-db-invalid", file=rel) from None

    def _db_members(self, kind: str, rel: str, archive_reader: "HashReader") -> str:
        gz = _Gunzip(archive_reader, self.max_bytes - self.scan.total, rel, "kit-db-invalid")
        tar = _open_tar(gz, rel)
        db_name = K.TRIVY_DBS[kind][1]
        target = None
        if self.stage is not None:
            target = self.stage / K.TRIVY_DBS[kind][2]
            target.mkdir(mode=0o700)
        found: dict[str, tuple[str, int]] = {}
        for member in _members(tar, rel):
            if member.name not in (db_name, "metadata.json") or not member.isfile() or member.name in found:
                raise KitError(f"{rel} holds {member.name!r}: a Trivy DB archive holds exactly {db_name} and "
                               "metadata.json", reason="kit-db-invalid", file=rel)
            source = tar.extractfile(member)
            if target is not None:
                digest = _write_new(target / member.name, source.read, member.size, f"{rel}:{member.name}")
            else:
                digest, _ = _hash(source.read, member.size, f"{rel}:{member.name}", False)
            found[member.name] = (digest, member.size)
        gz.finish()
        self.scan.total += gz.total  # the inflated DB counts against the same bound
        if archive_reader.drain():
            raise KitError(f"{rel}: data after the gzip stream", reason="kit-db-invalid", file=rel)
        if set(found) != {db_name, "metadata.json"}:
            raise KitError(f"{rel} lacks {db_name} or metadata.json", reason="kit-db-invalid", file=rel)
        self.scan.inner[kind] = found
        return archive_reader.sha256.hexdigest()


class _Limited:
    """The first `size` bytes of a reader (a member's data)."""

    def __init__(self, read: Callable[[int], bytes], size: int, what: str) -> None:
        self._read, self.left, self.what = read, size, what

    def read(self, n: int = CHUNK) -> bytes:
        if not self.left:
            return b""
        data = self._read(min(n, self.left))
        if not data:
            raise KitError(f"{self.what}: truncated", reason="kit-archive-invalid", file=self.what)
        self.left -= len(data)
        return data


def scan_archive(stream, top: str, scanner: Scanner, what: str) -> None:
    """Every member of the kit archive (a gzip stream), checked and handed to `scanner`."""
    gz = _Gunzip(stream, scanner.max_bytes + (64 << 20), what)  # + room for tar headers and padding
    tar = _open_tar(gz, what)
    previous = b""
    regular: set[str] = set()
    for member in _members(tar, what):
        name = member.name
        if not name.startswith(top + "/") or not K.is_safe_path(name[len(top) + 1:]):
            raise KitError(f"member {name!r} is not a safe path under {top}/", reason="kit-member-invalid",
                           file=name)
        rel = name[len(top) + 1:]
        if rel.encode() <= previous:
            raise KitError(f"member {rel} is out of order or repeated", reason="kit-member-invalid", file=rel)
        previous = rel.encode()
        if member.islnk():
            target = member.linkname
            source = target[len(top) + 1:] if target.startswith(top + "/") else None
            if source not in regular or _db_kind(rel) is not None:
                raise KitError(f"{rel} is a hard link to {target!r}, which is not an earlier regular file of "
                               "the kit", reason="kit-member-invalid", file=rel)
            scanner.scan.add(rel, scanner.scan.members[source], scanner.scan.kept.get(source) if _keep(rel) else None)
            scanner.scan.links += 1
        elif member.isreg():
            data = tar.extractfile(member)
            scanner.file(rel, member.size, data.read)
            regular.add(rel)
        else:
            raise KitError(f"member {rel} is not a regular file or a hard link", reason="kit-member-invalid", file=rel)
    gz.finish()


def scan_tree(root: Path, scanner: Scanner) -> None:
    """Every file of an unpacked kit, without following links: links and special files refused."""
    found: list[tuple[str, Path]] = []
    stack = [(root, "")]
    while stack:
        directory, prefix = stack.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                rel = prefix + entry.name
                if entry.is_dir(follow_symlinks=False):
                    stack.append((Path(entry.path), rel + "/"))
                elif entry.is_file(follow_symlinks=False):
                    if not K.is_safe_path(rel):
                        raise KitError(f"{rel} is not a safe kit path", reason="kit-member-invalid", file=rel)
                    found.append((rel, Path(entry.path)))
                else:
                    raise KitError(f"{rel} is a link or a special file; a kit holds regular files only",
                                   reason="kit-member-invalid", file=rel)
    for rel, path in sorted(found, key=lambda t: t[0].encode()):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            scanner.file(rel, os.fstat(f.fileno()).st_size, f.read)
