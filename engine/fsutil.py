"""Atomic file writes: a temp file in the destination's directory, renamed into place.

Readers never see a half-written file, and a failure (or kill -9) leaves at most a `.tmp-*` file.
Modes are set explicitly (0644 by default) because they end up in archives and layouts.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator


@contextlib.contextmanager
def atomic_file(dest: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a binary file; on a clean exit it becomes `dest`, on an exception it vanishes."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_atomic(dest: Path, data: bytes, mode: int = 0o644) -> None:
    with atomic_file(dest, mode) as f:
        f.write(data)
