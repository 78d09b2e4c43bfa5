"""The on-disk cache of an image folder's decoded images (notebook 01).

One file per folder and settings, ``images-<settings hash>.bin``: an 8-byte magic, the format
version and the header's length (two little-endian uint32), a JSON header, the uint8 images
``(N, C, S, S)`` (train first), then the labels (int32). The header records the format, Pillow's
and torchvision's versions, the settings, a SHA-256 of the folder's file list (each file's path,
class, split, size and modification time), the classes, shapes, mean/std and the skipped files.
A cache whose header or length differs in any way is not used (it is rebuilt and replaced whole:
``atomic_write_bytes``); a valid one is memory-mapped, not read into memory.

The cache goes in ``PATH/.distill_cache/`` (or ``cache_dir``); when that cannot be written (a
read-only folder), in ``$XDG_CACHE_HOME/distill_utils/folders/<hash of PATH>/`` (``~/.cache``),
and the caller is told where.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill_utils.common.files import ReadRefused, atomic_write_bytes, open_regular

__all__ = ["CacheFiles", "FORMAT", "cache_dirs", "cache_name", "fingerprint", "read_cache", "write_cache"]

MAGIC = b"DLIMGDIR"
FORMAT = 1
MAX_HEADER = 16 << 20  # bytes of JSON: the skipped-file list is the only long part


@dataclass(frozen=True)
class CacheFiles:
    """What a cache must match: the settings, the folder's file-list fingerprint, the classes."""
    settings: dict
    files: str
    classes: tuple


def versions() -> dict:
    import PIL
    import torchvision
    return {"format": FORMAT, "pillow": PIL.__version__, "torchvision": torchvision.__version__}


def fingerprint(root: Path, files) -> str:
    """SHA-256 of ``(split, label, path relative to root, size, mtime)`` of every file, in order."""
    digest, prefix = hashlib.sha256(), len(os.path.join(str(root), ""))
    for path, label, split in files:
        try:
            st = os.stat(path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:  # a broken link: it is skipped when decoded; its appearing later changes this
            size = mtime = -1
        digest.update(f"{split}\t{label}\t{path[prefix:]}\t{size}\t{mtime}\n".encode())  # path below root
    return digest.hexdigest()


def cache_name(settings: dict) -> str:
    return "images-" + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16] + ".bin"


def cache_dirs(root: Path, cache_dir=None) -> list[Path]:
    """Where the cache may be, in order: ``cache_dir`` or ``root/.distill_cache``, then a per-user folder."""
    first = Path(cache_dir) if cache_dir else root / ".distill_cache"
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    second = home / "distill_utils" / "folders" / hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return [first] if first == second else [first, second]


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _header_ok(meta, want: CacheFiles) -> bool:
    shape = meta.get("shape") if isinstance(meta, dict) else None
    return (isinstance(shape, list) and len(shape) == 4
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)
            and meta.get("versions") == versions() and meta.get("settings") == want.settings
            and meta.get("files") == want.files and meta.get("classes") == list(want.classes)
            and isinstance(meta.get("n_train"), int) and 0 < meta["n_train"] < shape[0])


def _read(path: Path, want: CacheFiles) -> dict | None:
    with open_regular(path) as f:
        head = f.read(16)
        if len(head) < 16 or head[:8] != MAGIC:
            return None
        fmt, n = struct.unpack("<II", head[8:])
        if fmt != FORMAT or n > MAX_HEADER:
            return None
        meta = json.loads(f.read(n))
        if not _header_ok(meta, want):
            return None
        count, body = meta["shape"][0], int(np.prod(meta["shape"]))
        if os.fstat(f.fileno()).st_size != 16 + n + body + 4 * count:  # before anything is mapped
            return None
        x = np.memmap(f, dtype=np.uint8, mode="r", offset=16 + n, shape=tuple(meta["shape"]))
        f.seek(16 + n + body)
        y = np.frombuffer(f.read(4 * count), dtype="<i4").astype(np.int64)
    if len(y) != count or (count and (y.min() < 0 or y.max() >= len(want.classes))):
        return None
    return {**{k: meta[k] for k in ("n_train", "mean", "std", "size", "channels", "skipped")}, "x": x, "y": y}


def read_cache(dirs, want: CacheFiles) -> tuple[dict | None, Path | None]:
    """``(cached, its path)`` from the first folder of ``dirs`` holding a valid cache, else ``(None, None)``."""
    name = cache_name(want.settings)
    for folder in dirs:
        try:
            cached = _read(folder / name, want)
        except (OSError, ReadRefused, ValueError, KeyError, TypeError):  # missing, unreadable, damaged
            cached = None
        if cached is not None:
            return cached, folder / name
    return None, None


def write_cache(dirs, want: CacheFiles, built: dict) -> tuple[Path | None, str | None]:
    """Write ``built`` into the first writable folder of ``dirs``: ``(path or None, a note for the learner)``."""
    x, y = np.ascontiguousarray(built["x"]), np.asarray(built["y"], dtype="<i4")
    meta = {"versions": versions(), "settings": want.settings, "files": want.files, "classes": list(want.classes),
            "shape": list(x.shape), **{k: built[k] for k in ("n_train", "mean", "std", "size", "channels")},
            "skipped": built["skipped"][:10_000]}
    head = json.dumps(meta).encode()
    blob = b"".join([MAGIC, struct.pack("<II", FORMAT, len(head)), head, x.tobytes(), y.tobytes()])
    problems = []
    for i, folder in enumerate(dirs):
        if not _writable(folder):
            problems.append(f"{folder} is not writable")
            continue
        try:
            path = atomic_write_bytes(folder / cache_name(want.settings), blob)
        except OSError as err:
            problems.append(f"{folder}: {err.strerror or err}")
            continue
        return path, (None if i == 0 else f"{'; '.join(problems)}, so the decoded images are cached in {path}")
    return None, f"the decoded images could not be cached ({'; '.join(problems)}); the next load decodes them again"
