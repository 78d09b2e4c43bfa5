"""Datasets found offline and batched in memory.

Taught in notebook 01. ``load_dataset("fashion_mnist")`` looks for the files, in order:
1. ``root/FashionMNIST/raw`` (torchvision's layout; ``.gz`` or not),
2. Debian's ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``),
3. torchvision's download, only when ``download=True``, checked against ``DOWNLOAD_SHA256``.
``python -m distill_utils data`` (``make data``) gets a missing dataset itself (``distill_utils.setup.fetch``).
The whole dataset is normalised once and kept as tensors; ``split.batches(...)``
slices them, with optional on-tensor augmentation. No per-item DataLoader.
``load_dataset("cifar10")`` reads CIFAR-10's python batches from ``root/cifar-10-batches-py``.
``load_dataset("folder:PATH")`` loads a folder of your own images (``distill_utils.folders``).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pickle
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distill_utils.common.files import ReadRefused, open_regular, read_limited

__all__ = ["DATASETS", "DOWNLOAD_SHA256", "DataError", "Dataset", "Split", "load_dataset", "find_files",
           "download_dataset", "missing_message"]

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
MAX_IDX_BYTES = 1 << 30     # an IDX file's body; Fashion-MNIST's largest is 47 MB
MAX_CIFAR_BYTES = 256 << 20  # a CIFAR-10 python batch is 31 MB
# SHA-256 of the files torchvision downloads, as listed in data/README.md (tests/test_setup_data.py keeps them
# equal); files of a dataset not listed here are checked by torchvision's own MD5 sums only
DOWNLOAD_SHA256 = {"fashion_mnist": {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"}}


@dataclass(frozen=True)
class Spec:
    folder: str                 # torchvision's folder under root
    classes: tuple
    input_shape: tuple          # (C, H, W)
    mean: tuple
    std: tuple
    crop_pad: int               # augmentation: random crop after zero-padding by this much
    flip: bool                  # augmentation: random horizontal flip
    debian: str | None = None   # Debian package folder, if one exists
    debian_package: str | None = None


DATASETS = {
    "fashion_mnist": Spec("FashionMNIST", FASHION_CLASSES, (1, 28, 28), (0.2860,), (0.3530,), 2, True,
                          "/usr/share/datasets/fashion-mnist", "dataset-fashion-mnist"),
    "mnist": Spec("MNIST", tuple(str(i) for i in range(10)), (1, 28, 28), (0.1307,), (0.3081,), 2, False),
    "cifar10": Spec("cifar-10-batches-py", ("airplane", "automobile", "bird", "cat", "deer", "dog",
                                             "frog", "horse", "ship", "truck"),
                    (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 4, True),
}


class DataError(Exception):
    """A dataset is missing or a file is damaged; the message says what to do."""


class Split:
    """One split: ``x`` (N, C, H, W) normalised float32, ``y`` (N,) int64, and fast batching."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, crop_pad: int = 0, flip: bool = False):
        if len(x) != len(y):
            raise ValueError(f"a split needs one label per example; got {len(x)} examples and {len(y)} labels")
        if len(y) == 0:
            raise ValueError("a split needs at least one example; this one is empty (an empty dataset file, "
                             "or a subset or filter that kept nothing)")
        self.x, self.y, self.crop_pad, self.flip = x, y, crop_pad, flip

    def __len__(self):
        return len(self.y)

    def __repr__(self):
        return f"Split(x={tuple(self.x.shape)}, y={tuple(self.y.shape)})"

    def to(self, device) -> "Split":
        return Split(self.x.to(device), self.y.to(device), self.crop_pad, self.flip)

    def subset(self, n: int, seed: int = 0) -> "Split":
        """A random subset of ``n`` examples (the same ones for the same seed)."""
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= len(self):
            raise ValueError(f"subset size must be between 1 and {len(self)}, got {n}")
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return Split(self.x[idx], self.y[idx], self.crop_pad, self.flip)

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0,
                augment: bool = False, with_index: bool = False):
        """Yield ``(x, y)`` batches (or ``(x, y, index)``); the order depends only on ``seed``.

        ``augment`` applies the dataset's random crop/flip on the tensors, batch by batch.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self), generator=gen) if shuffle else torch.arange(len(self))
        order = order.to(self.x.device)
        for start in range(0, len(self), batch_size):
            idx = order[start:start + batch_size]
            x = self.x[idx] if shuffle else self.x[start:start + batch_size]
            if augment:
                x = augment_batch(x, self.crop_pad, self.flip, gen)
            y = self.y[idx]
            yield (x, y, idx) if with_index else (x, y)


def augment_batch(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding by ``pad``, then a random window) and random horizontal flip."""
    n, c, h, w = x.shape
    if pad:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (n, 1, h, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (n, 1, 1, w)
        x = padded[torch.arange(n, device=x.device)[:, None, None, None],
                   torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
    if flip:
        mask = (torch.rand(n, generator=gen) < 0.5).to(x.device)[:, None, None, None]
        x = torch.where(mask, x.flip(3), x)
    return x


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    classes: tuple
    input_shape: tuple
    source: str
    val: Split | None = None
    mean: tuple = field(default=())
    std: tuple = field(default=())

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        """One normalised image ``(C, H, W)`` as ``imshow`` takes it, values in [0, 1]: ``(H, W)`` for
        one channel (show it with ``cmap="gray"``), ``(H, W, 3)`` for RGB (notebook 01)."""
        c = x.shape[0]
        mean = torch.tensor(self.mean or (0.0,) * c).view(c, 1, 1)  # a dataset made in memory may have none
        std = torch.tensor(self.std or (1.0,) * c).view(c, 1, 1)
        img = (x.detach().cpu().float() * std + mean).clamp(0, 1)
        return img[0] if c == 1 else img.permute(1, 2, 0)

    def __repr__(self):
        val = f", val={len(self.val)}" if self.val is not None else ""
        return (f"Dataset({self.name!r}: train={len(self.train)}{val}, test={len(self.test)}, "
                f"input_shape={self.input_shape}, classes={self.num_classes}, from {self.source})")


def _damaged(path, err) -> DataError:
    return DataError(f"cannot read {path}: {err}. The file is damaged or truncated; "
                     "delete it and get the dataset again.")


def read_idx(path: Path, ndim: int, trailing: tuple | None = None) -> torch.Tensor:
    """Parse an IDX file (unsigned bytes, ``.gz`` or not) into a uint8 tensor.

    Only a regular file is opened (a FIFO or ``/dev/zero`` is refused). The header is read
    first and checked (``trailing``: the expected sizes after the first dimension); then exactly
    the bytes it announces are read, so a gzip member that inflates to more is refused
    without ever holding more than the header allows."""
    path = Path(path)
    try:
        with open_regular(path) as raw:
            stream = gzip.GzipFile(fileobj=raw) if path.suffix == ".gz" else raw
            head = stream.read(4 + 4 * ndim)
            if len(head) < 4 + 4 * ndim or head[:4] != bytes([0, 0, 8, ndim]):
                raise DataError(f"{path} is not an IDX file with {ndim} dimension(s) (bad header). "
                                "Delete it and get the dataset again.")
            dims = struct.unpack(f">{ndim}I", head[4:])
            expected = 1
            for d in dims:
                expected *= d
            if trailing is not None and tuple(dims[1:]) != tuple(trailing):
                raise DataError(f"{path} holds items of shape {tuple(dims[1:])}, expected {tuple(trailing)}; "
                                "it is not this dataset's file. Get the dataset again.")
            if expected > MAX_IDX_BYTES:
                raise DataError(f"{path}: its header says {dims} = {expected:,} bytes, more than any dataset "
                                f"loaded here ({MAX_IDX_BYTES:,}); the file is corrupt. Get the dataset again.")
            if stream is raw and (size := os.fstat(raw.fileno()).st_size) != len(head) + expected:
                raise DataError(f"{path} is truncated or corrupt: header says {dims} = {expected} bytes, "
                                f"file has {size - len(head)}. Delete it and get the dataset again.")
            body = stream.read(expected)
            if len(body) != expected:
                raise DataError(f"{path} is truncated or corrupt: header says {dims} = {expected} bytes, "
                                f"file has {len(body)}. Delete it and get the dataset again.")
            if stream.read(1):
                raise DataError(f"{path} is corrupt: it holds more than the {expected} bytes its header says "
                                f"{dims}. Delete it and get the dataset again.")
    except ReadRefused as err:
        raise DataError(f"cannot read the dataset file: {err}") from None
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as err:  # zlib: a flipped bit inside the stream
        raise _damaged(path, err) from None
    if not body:
        return torch.zeros(dims, dtype=torch.uint8)
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(dims)


def find_files(name: str, root="data") -> tuple[str, dict] | None:
    """Where the raw files of ``name`` are: ``(description, {split: [paths]})``, or None."""
    spec = DATASETS[name]
    if name == "cifar10":
        folder = Path(root) / spec.folder
        paths = {s: [folder / f for f in files] for s, files in CIFAR_FILES.items()}
        return (str(folder), paths) if all(p.exists() for ps in paths.values() for p in ps) else None
    folders = [Path(root) / spec.folder / "raw"] + ([Path(spec.debian)] if spec.debian else [])
    for folder in folders:
        paths = {}
        for split, stems in IDX_FILES.items():
            found = [next((p for p in (folder / s, folder / f"{s}.gz") if p.exists()), None) for s in stems]
            paths[split] = found
        if all(p is not None for ps in paths.values() for p in ps):
            return str(folder), paths
    return None


class _ArraysOnly(pickle.Unpickler):
    """CIFAR-10's python batches are pickles: allow numpy arrays and nothing else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar(paths) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for path in paths:
        try:
            blob = read_limited(path, MAX_CIFAR_BYTES, "CIFAR-10 batch")
            batch = _ArraysOnly(io.BytesIO(blob), encoding="latin1").load()
            # Python 2's pickles have str keys; one written by Python 3 may have b"data", b"labels"
            batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
            x = torch.as_tensor(batch["data"], dtype=torch.uint8).reshape(-1, 3, 32, 32)
            y = torch.as_tensor(batch["labels"], dtype=torch.int64)
        except ReadRefused as err:
            raise DataError(f"cannot read the dataset file: {err}") from None
        except OSError as err:
            raise _damaged(path, err.strerror or err) from None
        except Exception as err:
            raise DataError(f"{path} is not a valid CIFAR-10 batch ({err}). "
                            "Delete it and get the dataset again.") from None
        if len(x) != len(y):
            raise DataError(f"{path} has {len(x)} images but {len(y)} labels; it is corrupt.")
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def _torchvision_download(name: str, root) -> None:
    import torchvision.datasets as tvd
    cls = {"fashion_mnist": tvd.FashionMNIST, "mnist": tvd.MNIST, "cifar10": tvd.CIFAR10}[name]
    for train in (True, False):
        cls(root, train=train, download=True)


def download_dataset(name: str, root="data", fetch=_torchvision_download) -> None:
    """Download ``name`` with torchvision into ``root`` (its layout), then check each file listed in
    ``DOWNLOAD_SHA256``; a file that differs is deleted, with what it unpacked to, and named in the
    error. ``fetch(name, root)`` does the download (tests pass a fake). Notebook 01."""
    try:
        fetch(name, root)
    except Exception as err:  # no network, a proxy, a mirror down: torchvision raises many kinds
        raise DataError(f"the download of {name!r} failed ({type(err).__name__}: {err}).\n"
                        + missing_message(name, root)) from None
    folder = Path(root) / DATASETS[name].folder / "raw"
    for file, expected in DOWNLOAD_SHA256.get(name, {}).items():
        path = folder / file
        try:
            digest = hashlib.sha256()
            with open_regular(path) as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            actual = digest.hexdigest()
        except (OSError, ReadRefused) as err:
            raise DataError(f"the download of {name!r} left no readable {path} ({err}). "
                            "Delete the folder and run `make data` again.") from None
        if actual != expected:
            for stale in (path, path.with_suffix("")):
                stale.unlink(missing_ok=True)
            raise DataError(f"downloaded {path} has SHA-256 {actual}, not {expected} (data/README.md); it was "
                            "deleted. Run `make data` again, or install the files another way (data/README.md).")


def missing_message(name: str, root) -> str:
    """The error for a dataset found nowhere: every way to get it (notebook 00 shows it)."""
    spec = DATASETS[name]
    ways = [f"  1. put the files in {Path(root) / spec.folder / ('raw' if name != 'cifar10' else '')} "
            "(torchvision's layout),"]
    if spec.debian:
        ways.append(f"  2. on Debian/Ubuntu: sudo apt-get install {spec.debian_package} "
                    f"(installs them in {spec.debian}),")
    checked = ", checked against data/README.md" if name in DOWNLOAD_SHA256 else ""
    if name == "fashion_mnist":
        how = f"`make data` without OFFLINE=1 (apt-get as root, else torchvision's download{checked})"
    else:
        how = (f"`python -m distill_utils data --name {name}` (what `make data` does for Fashion-MNIST: "
               "torchvision's download)")
    ways.append(f"  {len(ways) + 1}. with internet: {how} or load_dataset({name!r}, download=True).")
    return f"dataset {name!r} not found. Get it one of these ways:\n" + "\n".join(ways)


def load_dataset(name: str = "fashion_mnist", root="data", download: bool = False,
                 val_size: int | float = 0, seed: int = 0, folder=None) -> Dataset:
    """Load a dataset into memory, normalised, as ``train``/``test`` (and ``val``) splits.

    ``name``: a built-in dataset (``DATASETS``: fashion_mnist, mnist, cifar10), found under
    ``root``, or ``"folder:PATH"``, a folder of your own images (``distill_utils.folders``;
    ``folder``: its ``FolderOptions``; ``root`` is not used). ``val_size`` (a count, or a
    fraction of train) moves a random part of train, chosen by ``seed``, into ``val``.
    Taught in notebook 01.
    """
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)) or not math.isfinite(val_size):
        raise ValueError(f"val_size must be a count or a fraction of train, got {val_size!r}")
    if isinstance(name, str) and name.startswith("folder:"):
        from distill_utils.folders import load_folder  # folders builds on this module
        return with_val(load_folder(name, folder), val_size, seed)
    if folder is not None:
        raise ValueError(f"folder options are for datasets named folder:PATH, not {name!r}")
    return with_val(_load_builtin(name, root, download), val_size, seed)


def _load_builtin(name: str, root, download: bool) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}, "
                         "or 'folder:PATH' for a folder of your own images")
    spec = DATASETS[name]
    found = find_files(name, root)
    if found is None and download:
        download_dataset(name, root)
        found = find_files(name, root)
    if found is None:
        raise DataError(missing_message(name, root))
    source, paths = found
    splits = {}
    for split, files in paths.items():
        if name == "cifar10":
            x, y = _read_cifar(files)
        else:
            x, y = read_idx(files[0], 3, spec.input_shape[1:]).unsqueeze(1), read_idx(files[1], 1).long()
            if len(x) != len(y):
                raise DataError(f"{files[0]} has {len(x)} images but {files[1]} has {len(y)} labels; "
                                "one of them is corrupt. Get the dataset again.")
        if len(y) == 0:
            raise DataError(f"{files[-1]} holds no examples; the {split} split would be empty. Get the dataset again.")
        if tuple(x.shape[1:]) != spec.input_shape:
            raise DataError(f"{files[0]} holds images of shape {tuple(x.shape[1:])}, "
                            f"expected {spec.input_shape} for {name}.")
        if len(y) and (y.min() < 0 or y.max() >= len(spec.classes)):
            raise DataError(f"labels in {files[-1]} are outside 0..{len(spec.classes) - 1}; the file is corrupt.")
        mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
        std = torch.tensor(spec.std).view(1, -1, 1, 1)
        splits[split] = Split(((x.float() / 255 - mean) / std).contiguous(), y, spec.crop_pad, spec.flip)
    return Dataset(name, splits["train"], splits["test"], spec.classes, spec.input_shape, source,
                   mean=spec.mean, std=spec.std)


def with_val(ds: Dataset, val_size: int | float, seed: int) -> Dataset:
    """``ds`` with ``val_size`` examples (a count, or a fraction) of train moved into ``val`` (notebook 10)."""
    if val_size:
        n_val = round(val_size * len(ds.train)) if isinstance(val_size, float) else int(val_size)
        if not 0 < n_val < len(ds.train):
            raise ValueError(f"val_size must leave both splits non-empty (train has {len(ds.train)}), got {val_size}")
        perm = torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(seed))
        tr = ds.train
        ds.val = Split(tr.x[perm[:n_val]], tr.y[perm[:n_val]], tr.crop_pad, tr.flip)
        ds.train = Split(tr.x[perm[n_val:]], tr.y[perm[n_val:]], tr.crop_pad, tr.flip)
    return ds
