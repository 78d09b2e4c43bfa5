"""File helpers shared by the package: atomic writes, bounded reads of regular files only, a lock."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import tempfile
from pathlib import Path


class ReadRefused(ValueError):
    """A file is not a regular file, or is larger than the reader allows; the message says which."""


def open_regular(path):
    """Open ``path`` for reading in binary mode, refusing anything but a regular file.

    A FIFO would block ``open`` forever and ``/dev/zero`` never ends, so the file is opened
    non-blocking and checked with ``fstat`` (no race between the check and the read)."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                    else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
            raise ReadRefused(f"{path} is {kind}, not a regular file; replace it with the real file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_limited(path, limit: int, what: str = "file") -> bytes:
    """The bytes of the regular file ``path``, refusing it (before reading) if it is over ``limit`` bytes."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise ReadRefused(f"{path} is {size:,} bytes, more than a {what} can be ({limit:,}); "
                              "it is not the file it should be")
        data = f.read(limit + 1)
    if len(data) > limit:  # it grew while we read
        raise ReadRefused(f"{path} grew past {limit:,} bytes while being read; it is not a {what}")
    return data


@contextlib.contextmanager
def locked(path):
    """Hold an exclusive lock tied to ``path`` (a hidden ``.<name>.lock`` beside it) while writing it,
    so that two processes saving the same file take turns instead of mixing their files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path, obj) -> Path:
    """Keys stay in the order written, so a table's columns survive a round trip."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())
