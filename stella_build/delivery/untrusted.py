"""Reading what crossed a border: paths, files, sizes and decompression of mirror and delta inputs.

Everything `mirror verify|apply|decrypt|pull` and `verify` read from a mirror, a delta or a
registry is untrusted until its digest or signature is checked, and the checks below come *before*
anything is written, decompressed or read whole:

- `safe_relpath`: a path taken from outside data (a manifest entry, a layer title, a TUF target,
  an encryption record) is a relative, normalized POSIX path: no leading `/`, no empty, `.` or
  `..` part, no backslash, NUL or control character. Joined to a fresh directory it stays inside.
- `check_distinct`: a set of such paths can be laid out as files: no duplicate, no path that is
  also the directory of another (`a` and `a/b`).
- `scan_tree`: the regular files of an input directory, without following links: a symlink, a
  hard-linked file (link count > 1), a device or a FIFO is refused, so no input file can stand for
  a file elsewhere on the machine.
- `read_capped`, `sha256_file`: a file is read whole only under a size cap; digests are streamed.
- `write_new`: a file is created below a directory this process made, with O_EXCL | O_NOFOLLOW:
  it never follows a link and never overwrites.

Errors are `MirrorError`s (exit code + machine-readable reason + the file and field at fault);
`stella_build/cli/mirror.py` maps them to the CLI's StellaErrors.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import stat
from pathlib import Path
from typing import BinaryIO, Iterable

# -- limits (bytes) -------------------------------------------------------------------------------
# One JSON document read whole (export.json, manifest.diff.json, TUF metadata, encryption.json,
# mirror.json, provenance.json). export.json grows with the number of files: about 250 bytes each,
# so 256 MiB is a million files; anything larger is refused before it is read.
MAX_JSON_BYTES = 256 << 20
# appliedExportIds.log: one ~29-byte line per applied delta.
MAX_LOG_BYTES = 16 << 20
# Chunk size of every streamed read.
CHUNK = 1 << 20

_DEFAULT_REASONS = {1: "failed", 2: "usage", 3: "verification-failed", 4: "trust-missing"}


class MirrorError(Exception):
    """A mirror, delta, apply, decrypt or pull failure.

    `exit_code` follows the CLI's table (3 verification failed, 2 usage, 4 trust material missing,
    1 transfer failed); `reason` is a kebab-case word for scripts (default from the exit code);
    `file` and `field` name the input file and the field in it at fault, when there is one."""

    def __init__(self, message: str, exit_code: int = 3, reason: str | None = None, *,
                 file: str | Path | None = None, field: str | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.reason = reason or _DEFAULT_REASONS.get(exit_code, "failed")
        self.file = str(file) if file is not None else None
        self.field = field


# -- paths ------------------------------------------------------------------------------------------

def path_problem(rel: object) -> str | None:
    """Why `rel` is not a safe relative POSIX path, or None when it is one."""
    if not isinstance(rel, str):
        return f"is a {type(rel).__name__}, not a string"
    if not rel:
        return "is empty"
    if len(rel.encode("utf-8", "surrogatepass")) > 4096:
        return "is longer than 4096 bytes"
    if rel.startswith("/"):
        return "is absolute"
    if any(ord(c) < 0x20 or c in "\\\x7f" for c in rel):
        return "contains a backslash or a control character"
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "has an empty, '.' or '..' part"
    if any(len(p.encode("utf-8", "surrogatepass")) > 255 for p in parts):
        return "has a part longer than 255 bytes"
    if posixpath.normpath(rel) != rel:  # belt and braces: the rules above imply it
        return "is not normalized"
    return None


def safe_relpath(rel: object, *, file: str | Path | None = None, field: str | None = None) -> str:
    """`rel` if it is a relative, normalized POSIX path that stays inside any directory it is
    joined to; else MirrorError (exit 3, reason `unsafe-path`) naming `file` and `field`."""
    problem = path_problem(rel)
    if problem is not None:
        raise MirrorError(f"path {rel!r} {problem}: refusing it", 3, "unsafe-path", file=file, field=field)
    return rel  # type: ignore[return-value]


def check_distinct(paths: Iterable[str], *, file: str | Path | None = None, field: str | None = None) -> None:
    """The paths can be files of one tree: no duplicates, and none is a directory of another
    (MirrorError exit 3, reason `path-collision`)."""
    seen: set[str] = set()
    for rel in paths:
        if rel in seen:
            raise MirrorError(f"path {rel!r} appears twice", 3, "path-collision", file=file, field=field)
        seen.add(rel)
    for rel in seen:
        parts = rel.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in seen:
                raise MirrorError(f"{prefix!r} is a file and the directory of {rel!r}", 3, "path-collision",
                                  file=file, field=field)


# -- input files --------------------------------------------------------------------------------------

def _refuse_entry(path: Path, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise MirrorError("a symbolic link: inputs must be regular files", 3, "symlink", file=path)
    if not stat.S_ISREG(st.st_mode):
        raise MirrorError("not a regular file (a device, FIFO or socket)", 3, "not-regular-file", file=path)
    if st.st_nlink > 1:
        # A hard link shares its content with a file elsewhere on the machine: refused like a
        # symlink. Copy the tree without hard links (cp -r, rsync without --link-dest/-H).
        raise MirrorError(f"hard-linked ({st.st_nlink} links): inputs must be plain copies",
                          3, "hardlink", file=path)


def check_dir(path: Path) -> None:
    """`path` is a real directory (not a symlink to one): MirrorError otherwise."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise MirrorError(f"{exc.strerror}", 2, file=path) from None
    if stat.S_ISLNK(st.st_mode):
        raise MirrorError("a symbolic link: inputs must be real directories", 3, "symlink", file=path)
    if not stat.S_ISDIR(st.st_mode):
        raise MirrorError("not a directory", 2, file=path)


def scan_tree(root: Path) -> dict[str, Path]:
    """{relative POSIX path: path} of every file under `root`, sorted, links never followed.

    MirrorError (exit 3) for a symlink (file or directory; reason `symlink`), a hard-linked file
    (`hardlink`), anything that is not a regular file (`not-regular-file`) and a name that is not
    a safe relative path (`unsafe-path`)."""
    root = Path(root)
    check_dir(root)
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in sorted(dirnames):
            if os.path.islink(base / name):  # os.walk lists a symlinked directory as a directory
                raise MirrorError("a symbolic link: inputs must be real directories", 3, "symlink",
                                  file=base / name)
        dirnames.sort()
        for name in sorted(filenames):
            path = base / name
            _refuse_entry(path, os.lstat(path))
            rel = path.relative_to(root).as_posix()
            out[safe_relpath(rel, file=path)] = path
    return dict(sorted(out.items()))


def open_regular(path: Path) -> BinaryIO:
    """Open an input file for reading without following a symlink at its last component, and
    check (on the open descriptor, so nothing can be swapped in between) that it is a regular,
    singly-linked file."""
    # O_NONBLOCK: opening a FIFO put in a file's place returns at once (then fstat refuses it)
    # instead of waiting for a writer; it changes nothing for regular files.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if os.path.islink(path):
            raise MirrorError("a symbolic link: inputs must be regular files", 3, "symlink", file=path) from None
        raise MirrorError(f"cannot be read: {exc.strerror}", 3, "missing-file", file=path) from None
    try:
        _refuse_entry(Path(path), os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_capped(path: Path, cap: int = MAX_JSON_BYTES, *, field: str | None = None) -> bytes:
    """The bytes of a regular input file of at most `cap` bytes (MirrorError `size-limit` when
    larger, checked before reading)."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > cap:
            raise MirrorError(f"{size} bytes, more than the {cap} allowed for it", 3, "size-limit", file=path,
                              field=field)
        data = f.read(cap + 1)
    if len(data) > cap:  # grew while we read it
        raise MirrorError(f"more than the {cap} bytes allowed for it", 3, "size-limit", file=path, field=field)
    return data


def sha256_file(path: Path) -> tuple[str, int]:
    """("sha256:<hex>", size in bytes) of a regular input file, streamed."""
    with open_regular(path) as f:
        h, size = hashlib.sha256(), 0
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


# -- output files -------------------------------------------------------------------------------------

def _open_new(root: Path, rel: str) -> int:
    safe_relpath(rel)
    dest = Path(root) / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(dest, flags, 0o644)
    except FileExistsError:
        raise MirrorError(f"{rel!r} would be written twice", 3, "path-collision") from None


def write_new(root: Path, rel: str, data: bytes) -> Path:
    """Create `root/rel` (a safe relative path) holding `data`; never follows a link, never
    overwrites (MirrorError `path-collision`)."""
    with os.fdopen(_open_new(root, rel), "wb") as f:
        f.write(data)
    return Path(root) / rel


def copy_new(root: Path, rel: str, src: Path) -> Path:
    """Create `root/rel` as a copy of the regular input file `src` (see write_new), streamed."""
    with open_regular(src) as fin, os.fdopen(_open_new(root, rel), "wb") as fout:
        shutil.copyfileobj(fin, fout, CHUNK)
    return Path(root) / rel


__all__ = ["MirrorError", "MAX_JSON_BYTES", "MAX_LOG_BYTES", "CHUNK", "path_problem", "safe_relpath",
           "check_distinct", "check_dir", "scan_tree", "open_regular", "read_capped", "sha256_file",
           "write_new", "copy_new"]
