"""File helpers shared by the package: atomic writes, bounded reads of regular files only, safe parsing of
untrusted YAML and JSON, a lock."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import stat
import tempfile
from pathlib import Path

import yaml

__all__ = ["ReadRefused", "open_regular", "read_limited", "loads_json", "read_json", "YamlLoader", "loads_yaml",
           "read_yaml", "locked", "atomic_write_bytes", "atomic_write_json", "atomic_write_files", "move_into_place",
           "DISK_FULL",
           "MAX_DEPTH"]

MAX_DEPTH = 64  # levels of nesting in a JSON or YAML file from a user: parameters and records need a handful
DISK_FULL = "disk full: nothing was changed"


class ReadRefused(ValueError):
    """A file is not a regular file, is larger than the reader allows, or its contents cannot be parsed
    safely; the message (one line) says which."""


# ---------------------------------------------------------------- reading

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
    try:
        f = open_regular(path)
    except ReadRefused as err:
        raise ReadRefused(f"{what} {err}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            article = "an" if what[:1].lower() in "aeio" or what.startswith("ONNX") else "a"
            raise ReadRefused(f"{path} is {size:,} bytes, more than {article} {what} can be ({limit:,}); "
                              "it is not the file it should be")
        chunks, total, want = [], 0, size + 1  # read what fstat says (a read(limit) would allocate the limit)
        while chunk := f.read(min(want, limit + 1 - total)):
            chunks.append(chunk)
            total, want = total + len(chunk), 1 << 20
            if total > limit:  # it grew while we read
                raise ReadRefused(f"{path} grew past {limit:,} bytes while being read; it is not a {what}")
    return b"".join(chunks)


def _too_deep(value, limit: int) -> bool:
    """Whether lists and dicts in ``value`` nest more than ``limit`` levels (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _one_line(err) -> str:
    return " ".join(str(err).split())[:300]


def loads_json(text, what: str = "JSON text", max_depth: int = MAX_DEPTH):
    """``json.loads`` for untrusted text: ReadRefused (one line) when it is not JSON or nests more
    than ``max_depth`` levels (Python's own parser would raise RecursionError, or its callers would)."""
    try:
        value = json.loads(text)
    except RecursionError:
        value = None
        deep = True
    except (ValueError, UnicodeDecodeError) as err:
        raise ReadRefused(f"{what} is not valid JSON ({_one_line(err)})") from None
    else:
        deep = _too_deep(value, max_depth)
    if deep:
        raise ReadRefused(f"{what} nests lists or objects more than {max_depth} levels deep; "
                          "it is not a file this project wrote")
    return value


def read_json(path, limit: int, what: str = "JSON file", max_depth: int = MAX_DEPTH):
    """The JSON value of the regular file ``path`` (at most ``limit`` bytes, ``max_depth`` levels)."""
    return loads_json(read_limited(path, limit, what), f"{what} {path}", max_depth)


class YamlLoader(yaml.SafeLoader):
    """YAML from users: safe tags only, no aliases (``*name``: a 400-byte file could expand to
    gigabytes), at most ``MAX_DEPTH`` levels, and ``1e-3`` read as a float (YAML 1.1 reads a string)."""

    depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"an alias (*{event.anchor}) is not allowed here; "
                                              "write the value out", event.start_mark)
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$"
               r"|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."))


def loads_yaml(text, what: str = "YAML text"):
    """``text`` parsed with ``YamlLoader``; ReadRefused (one line, naming ``what``) if it is not valid YAML."""
    try:
        return yaml.load(text, Loader=YamlLoader)  # noqa: S506 (YamlLoader is a SafeLoader)
    except yaml.YAMLError as err:
        mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None) or err
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ReadRefused(f"{what} is not valid YAML: {_one_line(problem)}{where}") from None
    except RecursionError:  # the scanner of a pathological flow collection
        raise ReadRefused(f"{what} nests more than {MAX_DEPTH} levels deep") from None


def read_yaml(path, limit: int, what: str = "YAML file"):
    """The YAML value of the regular UTF-8 file ``path`` (at most ``limit`` bytes), read with ``YamlLoader``."""
    raw = read_limited(path, limit, what)
    try:
        text = raw.decode()
    except UnicodeDecodeError as err:
        raise ReadRefused(f"{what} {path} is not UTF-8 text ({_one_line(err)})") from None
    return loads_yaml(text, f"{what} {path}")


# ---------------------------------------------------------------- writing

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


def _write_temp(path: Path, data: bytes) -> str:
    """``data`` in a new temporary file beside ``path``, flushed to disk; its name."""
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{path} is a folder; name a file to write", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def atomic_write_files(files: dict) -> list[Path]:
    """Write every ``{path: bytes}`` so that each reader sees the old file or the new one, never half:
    each goes to a temporary file in its own folder, is flushed to disk (fsync), then renamed over the
    old one. All are written before the first rename, so a full disk (``ENOSPC``, ``EDQUOT``) changes
    nothing, and the error says so: its ``strerror`` is ``DISK_FULL``."""
    written, renamed = {}, 0
    try:
        for path, data in files.items():
            written[Path(path)] = _write_temp(Path(path), data)
        for path, tmp in written.items():
            os.replace(tmp, path)
            renamed += 1
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT) and not renamed:
            raise OSError(err.errno, DISK_FULL, str(next(iter(files)))) from None
        raise
    finally:
        for tmp in written.values():
            Path(tmp).unlink(missing_ok=True)  # those renamed are gone already
    return list(written)


def move_into_place(tmp, path) -> Path:
    """Flush the finished file ``tmp`` (written by another library, in ``path``'s folder) to disk and rename
    it over ``path``: readers see the old file or the whole new one."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return Path(path)


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half
    (``atomic_write_files`` for one file)."""
    return atomic_write_files({Path(path): data})[0]


def atomic_write_json(path, obj) -> Path:
    """Keys stay in the order written, so a table's columns survive a round trip."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())
