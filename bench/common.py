"""Shared pieces of the benchmarks: the machine's GEMM rate and a torchvision copy of the data."""
import gzip
import shutil
import time
from pathlib import Path

import torch

from distill_utils.data import find_files


def gemm_gflops(n=2048, repeats=10):
    """Measured fp32 matrix-multiply rate of this machine, in GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def torchvision_train_set(root):
    """Fashion-MNIST's training set the tutorial way: a torchvision dataset with
    ToTensor/Normalize, its files copied un-gzipped into ``root`` (torchvision's layout)."""
    from torchvision import datasets, transforms
    raw = Path(root) / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for path in sum(find_files("fashion_mnist", "data")[1].values(), []):
        target = raw / path.name.removesuffix(".gz")
        with (gzip.open(path) if path.suffix == ".gz" else open(path, "rb")) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))])
    return datasets.FashionMNIST(root, train=True, download=False, transform=tf)
