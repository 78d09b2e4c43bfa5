"""An image folder as a ``Dataset``: decoded once, cached, normalised (``distill_utils.folders``)."""
from __future__ import annotations

import os
import statistics
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from distill_utils.data import DataError, Dataset, Split
from distill_utils.folders import scan as folder_scan
from distill_utils.folders.cache import CacheFiles, cache_dirs, fingerprint, read_cache, write_cache
from distill_utils.folders.scan import BadImage, Scan

__all__ = ["FolderOptions", "FolderWarning", "load_folder"]

DEFAULT_MAX_SIZE = 64   # the default size: the images' median shorter side, at most this
MIN_SIZE = 8            # three 2x2 pools need 8 pixels
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


class FolderWarning(UserWarning):
    """Something about an image folder the learner should know: skipped files, where the cache went."""


@dataclass(frozen=True)
class FolderOptions:
    """How a folder becomes a dataset. ``size``/``channels`` None: from the images (the median
    shorter side, between 8 and 64; 1 channel if every image is grayscale, else 3)."""
    size: int | None = None
    channels: int | None = None
    test_fraction: float = 0.2       # one-tree layout: the part of each class held out for test
    split_seed: int = 0              # one-tree layout: which images are held out
    skip_bad: bool = True            # False: an unreadable image is an error
    max_pixels: int = Image.MAX_IMAGE_PIXELS  # an image with more (a decompression bomb) is not decoded
    max_bytes: int = 8 << 30         # the decoded dataset in memory (float32 + uint8) may take this much
    cache_dir: str | None = None     # None: PATH/.distill_cache, else a per-user cache folder
    flip: bool = True                # augmentation: random horizontal flips
    crop_pad: int | None = None      # augmentation: random crops after padding by this (None: size // 8)

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        def whole(v, low):
            return not isinstance(v, bool) and isinstance(v, int) and v >= low
        fraction = self.test_fraction
        rules = [(self.size is None or whole(self.size, MIN_SIZE), f"size must be an integer >= {MIN_SIZE} or None"),
                 (self.channels in (None, 1, 3) and not isinstance(self.channels, bool),
                  "channels must be 1, 3 or None"),
                 (not isinstance(fraction, bool) and isinstance(fraction, (int, float)) and 0 < fraction < 1,
                  "test_fraction must be a number between 0 and 1 (both excluded)"),
                 (whole(self.split_seed, 0), "split_seed must be an integer >= 0"),
                 (whole(self.max_pixels, 1), "max_pixels must be a positive integer"),
                 (whole(self.max_bytes, 1), "max_bytes must be a positive integer"),
                 (self.crop_pad is None or whole(self.crop_pad, 0), "crop_pad must be an integer >= 0 or None")]
        problems = [msg for ok, msg in rules if not ok]
        if problems:
            raise ValueError(f"FolderOptions: {'; '.join(problems)}; got {self}")


def _headers(scan: Scan, opts: FolderOptions, bad: list) -> list:
    kept = []
    for path, label, split in scan.files:
        try:
            kept.append((path, label, split, folder_scan.probe_image(path, opts.max_pixels)))
        except BadImage as err:
            _bad(scan, opts, bad, path, err)
    return kept


def _bad(scan: Scan, opts: FolderOptions, bad: list, path, err) -> None:
    rel = os.path.relpath(path, scan.root)
    if not opts.skip_bad:
        raise DataError(f"{path}: {err}; delete or replace it (or skip unreadable images: skip_bad=True)")
    bad.append([rel, str(err)])


def _check_memory(n: int, c: int, size: int, opts: FolderOptions) -> None:
    need = n * c * size * size * 5  # uint8 decoded + float32 normalised
    if need > opts.max_bytes:
        raise DataError(f"{n:,} images of {c}x{size}x{size} need {need / 2**30:.1f} GiB in memory, more than "
                        f"max_bytes={opts.max_bytes / 2**30:.1f} GiB; choose a smaller size or fewer images")


def _held_out(labels: np.ndarray, classes, opts: FolderOptions, root) -> np.ndarray:
    """Stratified: in each class, ``test_fraction`` of its images (at least 1) go to test, by ``split_seed``."""
    test = np.zeros(len(labels), dtype=bool)
    gen = torch.Generator().manual_seed(opts.split_seed)
    for label, name in enumerate(classes):
        idx = np.flatnonzero(labels == label)
        if len(idx) < 2:
            raise DataError(f"{root}: class {name!r} has {len(idx)} readable image(s); a train/test split needs "
                            "at least 2 per class: add images")
        n_test = min(len(idx) - 1, max(1, round(opts.test_fraction * len(idx))))
        test[idx[torch.randperm(len(idx), generator=gen)[:n_test].numpy()]] = True
    return test


def _build(scan: Scan, opts: FolderOptions) -> dict:
    """Decode every image once: ``{"x": uint8 (N, C, S, S) train first, "y", "n_train", ...}``."""
    bad = []
    found = _headers(scan, opts, bad)
    size = opts.size or (min(DEFAULT_MAX_SIZE, max(MIN_SIZE, int(statistics.median(
        min(w, h) for *_, (w, h, _) in found)))) if found else MIN_SIZE)
    channels = opts.channels or (1 if all(mode in GRAY_MODES for *_, (_, _, mode) in found) else 3)
    _check_memory(len(found), channels, size, opts)
    x = np.empty((len(found), channels, size, size), dtype=np.uint8)
    labels, splits, k = [], [], 0
    for path, label, split, _ in found:
        try:
            x[k] = folder_scan.decode_image(path, size, channels, opts.max_pixels)
        except BadImage as err:
            _bad(scan, opts, bad, path, err)
            continue
        labels.append(label)
        splits.append(split)
        k += 1
    bad.sort()
    y, splits = np.asarray(labels, dtype=np.int64), np.asarray(splits)
    test = _held_out(y, scan.classes, opts, scan.root) if scan.layout == "one tree" else splits == "test"
    for part, mask in (("train", ~test), ("test", test)):
        missing = [c for i, c in enumerate(scan.classes) if not np.any(y[mask] == i)]
        if missing:
            raise DataError(f"{scan.root}: class {missing[0]!r} has no readable image in {part} "
                            f"({len(bad)} file(s) skipped); add images")
    order = np.concatenate([np.flatnonzero(~test), np.flatnonzero(test)])
    x, y = x[:k][order], y[order]
    n_train = int((~test).sum())
    mean, std = _stats(x[:n_train])
    return {"x": x, "y": y, "n_train": n_train, "mean": mean, "std": std, "size": size, "channels": channels,
            "skipped": bad}


def _stats(x: np.ndarray, chunk: int = 4096) -> tuple[list, list]:
    """Per-channel mean and std of uint8 images, in [0, 1] units (float64 sums, in chunks)."""
    total, squares, count = 0.0, 0.0, 0
    for i in range(0, len(x), chunk):
        part = torch.from_numpy(np.array(x[i:i + chunk])).double() / 255  # (n, C, S, S)
        total = total + part.sum(dim=(0, 2, 3))
        squares = squares + (part * part).sum(dim=(0, 2, 3))
        count += part.numel() // part.shape[1]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt().clamp_min(1 / 255)  # a blank channel: no /0
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def _normalised(x, mean, std, chunk: int = 4096) -> torch.Tensor:
    out = torch.empty(x.shape, dtype=torch.float32)
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    for i in range(0, len(x), chunk):  # in place, the built-in datasets' formula: (x / 255 - mean) / std
        out[i:i + chunk].copy_(torch.from_numpy(np.array(x[i:i + chunk]))).div_(255).sub_(m).div_(s)
    return out


def _warn_skipped(scan: Scan, skipped: list) -> None:
    parts = []
    if skipped:
        named = ", ".join(f"{rel} ({why})" for rel, why in skipped[:folder_scan.SHOWN])
        more = ", ..." if len(skipped) > folder_scan.SHOWN else ""
        parts.append(f"skipped {len(skipped)} unreadable image file(s): {named}{more}; delete or fix them")
    if scan.ignored:
        names = ", ".join(os.path.relpath(p, scan.root) for p in scan.ignored[:folder_scan.SHOWN])
        parts.append(f"ignored {len(scan.ignored)} file(s) without an image extension: {names}"
                     f"{', ...' if len(scan.ignored) > folder_scan.SHOWN else ''}")
    if parts:
        warnings.warn(f"{scan.root}: " + "; ".join(parts), FolderWarning, stacklevel=4)


def load_folder(name, options: FolderOptions | None = None) -> Dataset:
    """An image folder as a ``Dataset`` (same API as the built-in ones), from its cache when the
    folder and the settings are unchanged. ``name``: ``"folder:PATH"`` or a path. Notebook 01."""
    opts = options or FolderOptions()
    if not isinstance(opts, FolderOptions):
        raise TypeError(f"options must be a FolderOptions, got {type(opts).__name__}")
    name = str(name) if str(name).startswith(folder_scan.PREFIX) else folder_scan.PREFIX + str(name)
    scan = folder_scan.scan_folder(folder_scan.folder_path(name))
    settings = {"layout": scan.layout, "size": opts.size, "channels": opts.channels, "skip_bad": opts.skip_bad,
                "max_pixels": opts.max_pixels}
    if scan.layout == "one tree":
        settings.update(test_fraction=opts.test_fraction, split_seed=opts.split_seed)
    files = CacheFiles(settings, fingerprint(scan.root, scan.files), scan.classes)
    dirs = cache_dirs(scan.root, opts.cache_dir)
    cached, where = read_cache(dirs, files)
    if cached is None:
        cached = _build(scan, opts)
        where, note = write_cache(dirs, files, cached)
        if note:
            warnings.warn(f"{scan.root}: {note}", FolderWarning, stacklevel=3)
        state = f"decoded {len(cached['y'])} images, " + (f"cached in {where}" if where else "not cached")
    else:
        state = f"from the cache {where}"
    _warn_skipped(scan, cached["skipped"])
    size, channels, n_train = cached["size"], cached["channels"], cached["n_train"]
    _check_memory(len(cached["y"]), channels, size, opts)
    crop_pad = size // 8 if opts.crop_pad is None else opts.crop_pad
    x, y = cached["x"], torch.from_numpy(np.asarray(cached["y"], dtype=np.int64))
    train = Split(_normalised(x[:n_train], cached["mean"], cached["std"]), y[:n_train], crop_pad, opts.flip)
    test = Split(_normalised(x[n_train:], cached["mean"], cached["std"]), y[n_train:], crop_pad, opts.flip)
    return Dataset(name, train, test, scan.classes, (channels, size, size), f"{scan.root} ({state})",
                   mean=tuple(cached["mean"]), std=tuple(cached["std"]))
