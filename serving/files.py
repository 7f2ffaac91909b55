"""Replacing a file atomically and durably: the one way Carrara rewrites a file.

`write_atomic` (or `replacing`, for a writer that needs a path): a temporary file in the same
folder (so the rename stays on one file system), its bytes fsynced, renamed over the target,
then the folder fsynced so the rename itself survives a crash. A reader sees the old file or
the new one, never half of either; a failure removes the temporary file and leaves the target
as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def write_atomic(path: Path, data: bytes | str) -> None:
    """Replace `path` with `data` (str is written as UTF-8)."""
    with replacing(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` for the caller to write; on success it is fsynced and
    replaces `path`, on failure it is removed."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_synced(path: Path, data: bytes | str) -> None:
    """Write a new file and fsync it: for files in a folder that is then renamed into place
    (followed by `fsync_dir` of the folder's parent)."""
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    _fsync_file(path)


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
