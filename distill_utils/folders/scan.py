"""Finding an image folder's classes and files, and decoding one image (``distill_utils.folders``).

torchvision finds the files (``find_classes``, ``make_dataset``, its image extensions); names that
start with ``.`` are not looked at. Pillow, through torchvision, decodes each image: the header is
read first and an image over ``max_pixels`` is never decoded; then the shorter side is resized to
``size``, centre-cropped to ``size x size``, converted to 1 (L) or 3 (RGB) channels.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from distill_utils.common.files import ReadRefused, open_regular
from distill_utils.data import DATASETS, DataError

__all__ = ["PREFIX", "BadImage", "Scan", "absolute_name", "dataset_problem", "decode_image", "folder_path",
           "probe_image", "scan_folder"]

PREFIX = "folder:"
SHOWN = 5               # file and class names shown in one message


@dataclass
class Scan:
    """What is in a folder: its layout, classes, image files ``(path, label, split)``, other files."""
    root: Path
    layout: str                                  # "train/test" or "one tree"
    classes: tuple
    files: list = field(default_factory=list)
    ignored: list = field(default_factory=list)  # files without an image extension


class BadImage(Exception):
    """One image file that cannot be decoded; the message says why."""


def folder_path(name: str) -> Path:
    return Path(os.path.expanduser(name[len(PREFIX):]))


def absolute_name(name, base=None) -> str:
    """``folder:PATH`` with PATH made absolute against ``base`` (default: the current folder); any other
    name unchanged. A runner that starts notebooks in another folder passes the learner's path so."""
    if not isinstance(name, str) or not name.startswith(PREFIX):
        return name
    path = folder_path(name)
    return PREFIX + str(path if path.is_absolute() else Path(base or Path.cwd()).absolute() / path)


def dataset_problem(value) -> str | None:
    """The notebook parameter rule for ``dataset``: a built-in name or ``folder:PATH`` of an
    existing folder (notebook 01)."""
    if not isinstance(value, str):
        return f"must be a string (a dataset name or folder:PATH), got {type(value).__name__}"
    if value.startswith(PREFIX):
        path = folder_path(value)
        if not value[len(PREFIX):].strip():
            return "names no folder: write folder:PATH, e.g. folder:~/my_photos"
        return None if path.is_dir() else f"names {path}, which is not a folder (relative to {Path.cwd()})"
    return None if value in DATASETS else (f"must be one of {', '.join(sorted(DATASETS))} "
                                           "or folder:PATH (a folder of your own images)")


def _class_folders(directory: Path) -> list[str]:
    from torchvision.datasets.folder import find_classes
    try:
        classes, _ = find_classes(directory)
    except FileNotFoundError:  # torchvision: no sub-folder at all
        return []
    except OSError as err:
        raise DataError(f"cannot read {directory}: {err.strerror or err}; check its permissions") from None
    return [c for c in classes if not c.startswith(".")]


def _check_no_loop(directory: Path) -> None:
    """Refuse a folder that a symlink leads back into (os.walk would follow it ~40 times)."""
    seen = {}
    for here, _, _ in os.walk(directory, followlinks=True):
        st = os.stat(here)
        if (st.st_dev, st.st_ino) in seen:
            raise DataError(f"{here} is {seen[(st.st_dev, st.st_ino)]} again (a symlink loop or a folder linked "
                            "twice); remove the link")
        seen[(st.st_dev, st.st_ino)] = here


def _images(directory: Path, classes: list[str], ignored: list) -> list[tuple[str, int]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension, make_dataset

    prefix = len(os.path.join(str(directory), ""))  # paths below it start here

    def is_image(path: str) -> bool:
        if any(part.startswith(".") for part in path[prefix:].split(os.sep)):
            return False  # hidden files and folders (.DS_Store, .ipynb_checkpoints)
        if has_file_allowed_extension(path, IMG_EXTENSIONS):
            return True
        ignored.append(path)
        return False

    for c in classes:
        _check_no_loop(directory / c)
    samples = make_dataset(str(directory), {c: i for i, c in enumerate(classes)}, is_valid_file=is_image,
                           allow_empty=True)
    counts = np.bincount([label for _, label in samples], minlength=len(classes))
    if (empty := [c for c, n in zip(classes, counts) if n == 0]):
        raise DataError(f"class folder {directory / empty[0]} holds no image files ({len(empty)} empty: "
                        f"{', '.join(empty[:SHOWN])}); add images ({', '.join(IMG_EXTENSIONS)}) or delete it")
    return samples


def scan_folder(root) -> Scan:
    """The layout, classes and image files of an image folder; ``DataError`` when it is not one."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder (relative to {Path.cwd()})")
    test_dir = next((root / t for t in ("test", "val") if (root / t).is_dir()), None)
    if (root / "train").is_dir() != (test_dir is not None):
        have, miss = ("train/", "test/ (or val/)") if test_dir is None else (f"{test_dir.name}/", "train/")
        raise DataError(f"{root} has {have} but no {miss}; give it both, or put the class folders directly in it")
    dirs = {"train": root / "train", "test": test_dir} if test_dir else {"all": root}
    classes = {split: _class_folders(d) for split, d in dirs.items()}
    first = next(iter(classes.values()))
    if "test" in classes and set(classes["test"]) != set(first):
        extra = sorted(set(first) ^ set(classes["test"]))
        where = {c: "train/" if c in first else f"{test_dir.name}/" for c in extra}
        raise DataError(f"{root}: class folder(s) {', '.join(f'{c!r} only in {w}' for c, w in where.items())}; "
                        "train/ and test/ need the same class folders")
    if len(first) < 2:
        what = f"1 class folder ({first[0]!r})" if first else "no class folders"
        raise DataError(f"{dirs.get('train', root)} has {what}; classification needs at least 2: put each class's "
                        f"images in {dirs.get('train', root)}/<class>/")
    scan = Scan(root, "train/test" if test_dir else "one tree", tuple(first))
    for split, d in dirs.items():
        scan.files += [(path, label, split) for path, label in _images(d, first, scan.ignored)]
    return scan


def _opened(f, max_pixels: int) -> Image.Image:
    with warnings.catch_warnings():  # Pillow's DecompressionBombWarning: our own limit decides
        warnings.simplefilter("ignore")
        image = Image.open(f)
    w, h = image.size
    if w * h > max_pixels:
        raise BadImage(f"{w}x{h} = {w * h:,} pixels, more than max_pixels={max_pixels:,} (a decompression bomb?)")
    if w < 1 or h < 1:
        raise BadImage(f"an image of {w}x{h} pixels")
    return image


def _reason(err: Exception, what: str) -> BadImage:
    if isinstance(err, BadImage):
        return err
    if isinstance(err, ReadRefused):
        return BadImage("not a regular file")
    if isinstance(err, FileNotFoundError):
        return BadImage("missing (a broken link?)")
    if isinstance(err, Image.DecompressionBombError):
        return BadImage(f"a decompression bomb ({err})")
    if isinstance(err, UnidentifiedImageError):
        return BadImage("not an image (Pillow cannot identify it)")
    return BadImage(f"{what} ({type(err).__name__}: {err})")


def probe_image(path, max_pixels: int) -> tuple[int, int, str]:
    """``(width, height, mode)`` from the file's header, without decoding its pixels (notebook 01)."""
    try:
        with open_regular(path) as f:
            image = _opened(f, max_pixels)
            return image.size[0], image.size[1], image.mode
    except Exception as err:  # Pillow raises many kinds for a file that is not an image
        raise _reason(err, "cannot read its header") from None


def decode_image(path, size: int, channels: int, max_pixels: int) -> np.ndarray:
    """One image as uint8 ``(channels, size, size)``: its shorter side resized to ``size`` (bilinear,
    antialiased), centre-cropped, converted to L or RGB (an alpha channel is dropped). Notebook 01."""
    import torchvision.transforms.functional as TF
    mode = "L" if channels == 1 else "RGB"
    try:
        with open_regular(path) as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. palette transparency notes
            image = _opened(f, max_pixels)
            image.draft(mode, (2 * size, 2 * size))  # JPEG: decode at a reduced scale when that is enough
            image = TF.center_crop(TF.resize(image.convert(mode), size), size)
            return TF.pil_to_tensor(image).numpy()
    except Exception as err:
        raise _reason(err, "truncated or corrupt") from None
