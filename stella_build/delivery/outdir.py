"""The output directory of `mirror apply|decrypt|pull -o OUT`: guarded, built aside, swapped in.

1. **Guard.** OUT may be missing, empty, or an earlier output of these commands (a mirror output
   directory: mirror/ with export.json, oci/, mirror.tar.zst(.sha256), mirror.json,
   appliedExportIds.log; a delta output directory: delta/ with manifest.diff.json, oci/). Anything
   else is the user's and is refused (MirrorError exit 2, reason `output-not-empty`) unless
   `force`. OUT must not contain an input nor lie inside one (`output-overlaps-input`), except
   that `mirror apply` may write to BASE itself.
2. **Lock.** One command at a time per parent directory (flock on the parent, released by the
   kernel when the process dies, kill -9 included), so the leftovers below are never a live
   command's.
3. **Recover.** A command killed during the swap may have left `.OUT.new-<pid>` (a complete,
   verified new tree), `.OUT.old-<pid>` (the previous tree) or `.OUT.tmp-<pid>` (unfinished work)
   next to OUT. Before anything else: if OUT is missing, `.new-*` is renamed to OUT (the swap had
   committed), else `.old-*` is renamed back; then the leftovers are removed. By hand: the same
   two renames.
4. **Build aside** in `.OUT.tmp-<pid>` (created empty, mode 0755), verify there, then **commit**:
   rename it to `.OUT.new-<pid>` (complete), and exchange it with OUT in one `renameat2
   (RENAME_EXCHANGE)` where the kernel and file system support it, so OUT is never missing; else
   rename OUT to `.OUT.old-<pid>` and `.OUT.new-<pid>` to OUT (step 3 repairs a kill in between).
   The old tree is then removed.

A failure before the commit removes the temporary tree and leaves OUT as it was.
"""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
from pathlib import Path

from stella_build.delivery.untrusted import MirrorError

APPLIED_LOG = "appliedExportIds.log"
# Top-level entries of each kind of output directory, and the file that marks it.
OUTPUT_KINDS = {
    "mirror": (frozenset({"mirror", "oci", "mirror.tar.zst", "mirror.tar.zst.sha256", "mirror.json", APPLIED_LOG}),
               "mirror/export.json"),
    "delta": (frozenset({"delta", "oci"}), "delta/manifest.diff.json"),
}


def is_output(path: Path, kind: str) -> bool:
    """`path` is a real directory shaped like an output directory of `kind` ("mirror" / "delta")."""
    names, marker = OUTPUT_KINDS[kind]
    try:
        entries = os.listdir(path)
    except OSError:
        return False
    if os.path.islink(path) or not set(entries) <= names:
        return False
    first = marker.split("/")[0]
    return not os.path.islink(Path(path) / first) and os.path.isfile(Path(path) / marker) and \
        not os.path.islink(Path(path) / marker)


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


class OutputDir:
    """`with OutputDir(out, kinds=("mirror",), inputs=[...], force=False) as od:` … `od.begin()`
    returns the empty temporary directory, `od.commit()` swaps it in (see the module docstring).

    `inputs` are the directories the command reads; `same_ok` is the one OUT may equal (apply's
    BASE). Usage problems raise MirrorError exit 2 before anything is written."""

    def __init__(self, out: Path, *, kinds: tuple[str, ...], inputs: list[Path] = (), force: bool = False,
                 same_ok: Path | None = None):
        self.out = Path(os.path.abspath(Path(out).expanduser()))
        if self.out.parent == self.out:
            raise MirrorError(f"{out}: the file system root cannot be an output directory", 2,
                              "output-not-empty", field="--out")
        self.kinds = kinds
        self.inputs = [Path(os.path.realpath(p)) for p in inputs]
        self.same_ok = Path(os.path.realpath(same_ok)) if same_ok is not None else None
        self.force = force
        self.parent = self.out.parent
        self.tmp: Path | None = None
        self._lock_fd: int | None = None

    # -- context --------------------------------------------------------------------------------
    def __enter__(self) -> "OutputDir":
        if os.path.lexists(self.out) and not os.path.isdir(self.out) and not os.path.islink(self.out):
            raise MirrorError(f"{self.out} exists and is not a directory", 2, "output-not-empty",
                              file=self.out, field="--out")
        self.parent.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            recover(self.out)
            self._guard()
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self.tmp is not None and exc_type is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
        finally:
            self._unlock()

    def _lock(self) -> None:
        # Best effort: a file system without flock (some network mounts) still gets the guard and
        # the atomic swap, just not the mutual exclusion.
        try:
            import fcntl

            fd = os.open(self.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        except (ImportError, OSError):
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            os.close(fd)
            return
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _guard(self) -> None:
        out_real = Path(os.path.realpath(self.out))
        for src in self.inputs:
            if self.same_ok is not None and src == self.same_ok and out_real == src:
                continue
            if _inside(out_real, src) or _inside(src, out_real):
                raise MirrorError(f"the output {self.out} overlaps the input {src}: write the result elsewhere",
                                  2, "output-overlaps-input", file=self.out, field="--out")
        if self.force or not os.path.lexists(self.out):
            return
        if os.path.islink(self.out):
            raise MirrorError(
                f"{self.out} is a symbolic link: refusing to write through it or replace it (name "
                "the directory it points to, or pass --force to replace the link itself with a new "
                "directory; the link's target is never touched)",
                2, "output-not-empty", file=self.out, field="--out")
        if os.listdir(self.out) and not any(is_output(self.out, k) for k in self.kinds):
            shapes = " or ".join(f"{k} output directory" for k in self.kinds)
            what = f" and is not a {shapes}" if shapes else ""
            raise MirrorError(
                f"{self.out} is not empty{what}: refusing to replace it (choose an "
                "empty or new directory, or pass --force to replace it and everything in it)",
                2, "output-not-empty", file=self.out, field="--out")

    # -- build and commit -----------------------------------------------------------------------
    def begin(self) -> Path:
        """The fresh, empty temporary directory to build the new output in."""
        self.tmp = self.parent / f".{self.out.name}.tmp-{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        os.mkdir(self.tmp, 0o755)
        return self.tmp

    def commit(self) -> None:
        """Swap the finished temporary tree in as OUT; OUT is never missing where the kernel can
        exchange two paths atomically."""
        assert self.tmp is not None
        new = self.parent / f".{self.out.name}.new-{os.getpid()}"
        os.rename(self.tmp, new)  # from here on the new tree is complete (recover() rolls forward)
        self.tmp = None
        if not os.path.lexists(self.out):
            os.rename(new, self.out)
            return
        if _exchange(new, self.out):
            _remove(new)  # `new` now holds the previous tree (or the link --force replaced)
            return
        old = self.parent / f".{self.out.name}.old-{os.getpid()}"
        os.rename(self.out, old)
        os.rename(new, self.out)
        _remove(old)


def _remove(path: Path) -> None:
    """Remove a replaced OUT: a tree, or a symbolic link (never what it points to)."""
    if os.path.islink(path):
        os.unlink(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _leftovers(out: Path, kind: str) -> list[Path]:
    prefix = f".{out.name}.{kind}-"
    try:
        names = os.listdir(out.parent)
    except OSError:
        return []
    return sorted(out.parent / n for n in names if n.startswith(prefix) and n[len(prefix):].isdigit())


def recover(out: Path) -> str | None:
    """Repair what a killed command left next to `out` (see the module docstring); returns
    "forward", "back" or None. Call it only while holding the lock."""
    out = Path(out)
    done = None
    if not os.path.lexists(out):
        news, olds = _leftovers(out, "new"), _leftovers(out, "old")
        if news:
            os.rename(news[-1], out)
            done = "forward"
        elif olds:
            os.rename(olds[-1], out)
            done = "back"
    for kind in ("new", "old", "tmp"):
        for path in _leftovers(out, kind):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
    return done


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths with Linux renameat2(RENAME_EXCHANGE); False when the
    platform, libc or file system cannot (then the caller does two renames). Python's os module
    has no renameat2, hence ctypes."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


__all__ = ["OutputDir", "recover", "is_output", "OUTPUT_KINDS", "APPLIED_LOG"]
