"""CIFAR-10 as the second built-in dataset, from batch files written in CIFAR's own format."""
import pickle

import numpy as np
import pytest
import torch

from distill_utils import data
from distill_utils.data import DataError, load_dataset
from distill_utils.models import build_model
from distill_utils.train import evaluate, fit

BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def write_cifar(root, n=6, keys=bytes, seed=0, rows=3072, labels=None):
    """CIFAR-10's python batches: pickled dicts of uint8 rows (1024 red, 1024 green, 1024 blue values of a
    32x32 image, row by row) and a list of labels, with bytes keys as in the files on cs.toronto.edu."""
    g = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for i, name in enumerate(BATCHES):
        x = g.integers(0, 256, (n, rows), dtype=np.uint8)
        y = labels if labels is not None else [int(v) for v in g.integers(0, 10, n)]
        batch = {"batch_label": f"batch {i + 1}".encode(), "labels": y, "data": x,
                 "filenames": [f"img_{i}_{j}.png".encode() for j in range(n)]}
        batch = {keys(k, "latin1") if keys is bytes else k: v for k, v in batch.items()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        written[name] = (x, y)
    return written


@pytest.mark.parametrize("keys", [bytes, str])
def test_cifar10_batches_load_with_their_pixels_and_labels(tmp_path, keys):
    written = write_cifar(tmp_path, keys=keys)
    ds = load_dataset("cifar10", root=tmp_path)
    assert ds.input_shape == (3, 32, 32) and ds.classes[0] == "airplane" and ds.num_classes == 10
    assert (len(ds.train), len(ds.test)) == (30, 6) and ds.source == str(tmp_path / "cifar-10-batches-py")
    spec = data.DATASETS["cifar10"]
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    x, y = written["test_batch"]
    raw = torch.from_numpy(x).reshape(6, 3, 32, 32)
    torch.testing.assert_close(ds.test.x, (raw.float() / 255 - mean) / std)
    assert ds.test.y.tolist() == y
    first = torch.from_numpy(written["data_batch_1"][0][0]).reshape(3, 32, 32)
    assert torch.equal(((ds.train.x[0] * std[0] + mean[0]) * 255).round().to(torch.uint8), first)
    assert ds.train.y.tolist() == sum((written[b][1] for b in BATCHES[:5]), [])


def test_cifar10_teacher_and_student_are_sized_for_32x32_rgb_and_train(tmp_path):
    write_cifar(tmp_path, n=8)
    ds = load_dataset("cifar10", root=tmp_path)
    teacher, student = build_model("teacher_cnn", data=ds), build_model("student_cnn", data=ds)
    assert sum(p.numel() for p in teacher.parameters()) == 1_147_690
    assert sum(p.numel() for p in student.parameters()) == 39_570
    assert teacher.spec["kwargs"] == {"num_classes": 10, "in_channels": 3, "image_size": 32, "stem_stride": 1}
    history = fit(student, ds, epochs=2, lr=1e-2, batch_size=8, progress=False, device="cpu", precision="fp32")
    assert len(history) == 2 and 0 <= evaluate(student, ds.test, precision="fp32") <= 1
    assert teacher(ds.test.x).shape == (8, 10)


@pytest.mark.parametrize("present", [[], ["data_batch_1", "data_batch_2"]])
def test_absent_cifar10_says_how_to_get_it(tmp_path, present):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in present:
        (folder / name).write_bytes(b"")
    with pytest.raises(DataError, match=r"(?s)dataset 'cifar10' not found.*cifar-10-batches-py.*make data.*"
                                        r"load_dataset\('cifar10', download=True\)") as err:
        load_dataset("cifar10", root=tmp_path)
    assert "1. put the files in" in str(err.value)


def test_damaged_cifar10_batches_are_named(tmp_path):
    write_cifar(tmp_path, rows=3000)
    with pytest.raises(DataError, match="data_batch_1 is not a valid CIFAR-10 batch"):
        load_dataset("cifar10", root=tmp_path)
    write_cifar(tmp_path, labels=[0, 1, 2, 3, 4, 10])
    with pytest.raises(DataError, match=r"labels in .*data_batch_5 are outside 0..9"):
        load_dataset("cifar10", root=tmp_path)
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(["not", "a", "dict"], protocol=2))
    with pytest.raises(DataError, match="test_batch is not a valid CIFAR-10 batch"):
        load_dataset("cifar10", root=tmp_path)
