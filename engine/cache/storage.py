"""Storage failures (full disk, I/O errors) of the cache and of `stella-out/`, as user errors.

A full disk or a failing device is not a bug of the build: it must end the build with one clear
line naming the path that could not be written, the errno text and how much space is left, with
exit 1 and a machine-readable reason, never a traceback. Callers wrap their writes with
`storage_error(exc, path, what)` and raise what it returns; nothing half-written is kept (every
writer in the cache and in materialize writes to a temp file or directory first).
"""
from __future__ import annotations

import errno
import os
import resource
from pathlib import Path

from stella_build.engine.errors import BuildFailed

# errno values that mean "no room": ENOSPC (disk full), EDQUOT (quota), EFBIG (file size limit,
# e.g. RLIMIT_FSIZE with SIGXFSZ ignored).
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# errno values that mean the storage itself failed or refuses writes. (EACCES/EPERM are left out:
# inside a sandbox they are what a rule gets for writing into its read-only inputs, a rule bug.)
_IO = frozenset({errno.EIO, errno.EROFS, errno.ENXIO, errno.ENODEV})
STORAGE_ERRNOS = _FULL | _IO

# Below this much free space a failure without an errno (LMDB reports a short write as EIO)
# is reported as a full disk.
_NEARLY_FULL = 1 << 20


class StorageError(BuildFailed):
    """A write to the cache or to `stella-out/` failed for lack of space or an I/O error (exit 1).

    reason: `disk-full` (ENOSPC, EDQUOT, EFBIG, or a short write on a filesystem with < 1 MiB
    free or under a file size limit) or `io-error` (EIO, EROFS, any other write failure); `file`
    is the path that could not be written."""


def free_bytes(path: Path | str) -> int | None:
    """Bytes available to this user on the filesystem holding `path` (or its nearest existing
    parent); None when it cannot be told."""
    p = Path(path)
    for candidate in (p, *p.parents):
        try:
            st = os.statvfs(candidate)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize
    return None


def _file_size_limit() -> int | None:
    """This process's RLIMIT_FSIZE in bytes when one is set (writes past it fail with EFBIG)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


def is_storage_errno(exc: BaseException) -> bool:
    """Whether `exc` is an OSError caused by the storage (full, read-only, failing), as opposed
    to a missing file or a bad argument (those are bugs or races, reported elsewhere)."""
    return isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS


def storage_error(exc: BaseException, path: Path | str, what: str) -> StorageError:
    """A StorageError for a failed write of `what` (e.g. "cache blob") at `path`.

    `exc` is the OSError (its errno picks the reason) or another library error (an LMDB error:
    the reason then depends on the free space left)."""
    where = str(getattr(exc, "filename", None) or path)
    free = free_bytes(where)
    code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    if code in _FULL:
        reason = "disk-full"
    elif code in _IO:
        reason = "io-error"
    else:  # no errno (LMDB reports a short write as EIO): the free space and limits decide
        reason = "disk-full" if (free is not None and free < _NEARLY_FULL) or _file_size_limit() else "io-error"
    detail = (os.strerror(code) if code else str(exc)) or type(exc).__name__
    room = f"; {free} bytes free on that filesystem" if free is not None else ""
    if _file_size_limit() and reason == "disk-full" and code != errno.ENOSPC:
        room += f"; file size limit (ulimit -f) {_file_size_limit()} bytes"
    return StorageError(f"could not write the {what} {where}: {detail}{room}",
                        file=where, reason=reason)
