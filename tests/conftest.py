import gzip
import struct

import pytest
import torch


def tiny_dataset(n=64, seed=0):
    """A random in-memory dataset shaped like Fashion-MNIST (test split = a copy of the training split)."""
    from distill_utils.data import Dataset, Split
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    return Dataset("tiny", Split(x, y), Split(x.clone(), y.clone()), tuple("0123456789"), (1, 28, 28), "memory")


def write_idx(path, tensor: torch.Tensor, gz: bool = False):
    """Write a uint8 tensor as an IDX file (the format of MNIST and Fashion-MNIST)."""
    header = bytes([0, 0, 8, tensor.dim()]) + struct.pack(f">{tensor.dim()}I", *tensor.shape)
    data = header + tensor.to(torch.uint8).numpy().tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def make_idx_dataset(folder, n_train=40, n_test=20, gz=False, seed=0):
    """Tiny fake IDX files in ``folder``; returns the tensors written."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        y = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
        write_idx(folder / f"{split}-images-idx3-ubyte", x, gz)
        write_idx(folder / f"{split}-labels-idx1-ubyte", y, gz)
        out[split] = (x, y)
    return out


def write_search_space(root, n_train=60):
    """A search space of seconds in ``root``: fake IDX data, a tiny untrained teacher, one epoch per
    trial (tests of the search, on the journal file or a database); returns its YAML file."""
    import yaml

    from distill_utils.models import build_model
    from distill_utils.provenance.checkpoints import save_checkpoint
    make_idx_dataset(root / "FashionMNIST" / "raw", n_train=n_train, n_test=20)
    teacher = save_checkpoint(build_model("teacher_cnn", width=0.125), root / "teacher.safetensors")
    space = {"data_root": str(root), "teacher": str(teacher), "val_images": 20, "batch_size": 20, "population": 2,
             "latency_batch": 4, "latency_repeats": 1,
             "space": {"model": ["student_cnn", "pruned_teacher"], "student_width": {"low": 0.25, "high": 0.5},
                       "prune_ratios": {"low": 0.1, "high": 0.6}, "T": {"low": 1.0, "high": 4.0, "log": True},
                       "alpha": {"low": 0.1, "high": 0.9}, "loss": ["kd", "dkd"], "epochs": 1}}
    file = root / "space.yaml"
    file.write_text(yaml.safe_dump(space))
    return file


def write_notebook(path, parameters: str, *cells: str):
    """A notebook at ``path``: a ``parameters`` cell, then ``start_run(<its name>)``, then ``cells``."""
    from nbformat import write
    from nbformat.v4 import new_code_cell, new_notebook
    nb = new_notebook(cells=[
        new_code_cell(parameters, metadata={"tags": ["parameters"]}),
        new_code_cell("from distill_utils.runs.experiments import start_run\n"
                      f"run = start_run({path.stem!r}, globals())"),
        *map(new_code_cell, cells)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    write(nb, path)
    return path


@pytest.fixture
def no_debian(monkeypatch):
    """Hide Debian's Fashion-MNIST so a test sees only its own files."""
    import dataclasses

    from distill_utils import data
    spec = dataclasses.replace(data.DATASETS["fashion_mnist"], debian="/nonexistent/fashion-mnist")
    monkeypatch.setitem(data.DATASETS, "fashion_mnist", spec)


@pytest.fixture(autouse=True)
def _restore_environ():
    """Tests must not leak environment changes: a Dask LocalCluster sets OMP_NUM_THREADS=1 in this
    process, which would make every notebook kernel started later single-threaded."""
    import os
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
