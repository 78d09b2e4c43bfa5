import pickle

import pytest
import torch

from conftest import make_idx_dataset, write_idx
from distill_utils import data
from distill_utils.data import DataError, load_dataset

FM = data.DATASETS["fashion_mnist"]


def expected_x(raw, spec=FM):
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return (raw.float() / 255 - mean) / std


@pytest.mark.parametrize("gz", [False, True])
def test_torchvision_layout(tmp_path, no_debian, gz):
    raw = make_idx_dataset(tmp_path / "FashionMNIST" / "raw", gz=gz)
    ds = load_dataset("fashion_mnist", root=tmp_path)
    assert ds.source == str(tmp_path / "FashionMNIST" / "raw")
    assert ds.train.x.shape == (40, 1, 28, 28) and ds.test.x.shape == (20, 1, 28, 28)
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    torch.testing.assert_close(ds.train.x, expected_x(raw["train"][0].unsqueeze(1)))
    assert torch.equal(ds.test.y, raw["t10k"][1].long())
    assert ds.num_classes == 10 and ds.classes[6] == "Shirt" and ds.input_shape == (1, 28, 28)


def test_debian_folder(tmp_path, monkeypatch):
    import dataclasses
    raw = make_idx_dataset(tmp_path / "debian", gz=True)
    monkeypatch.setitem(data.DATASETS, "fashion_mnist", dataclasses.replace(FM, debian=str(tmp_path / "debian")))
    ds = load_dataset("fashion_mnist", root=tmp_path / "empty")
    assert ds.source == str(tmp_path / "debian")
    assert torch.equal(ds.train.y, raw["train"][1].long())


def test_root_wins_over_debian(tmp_path, monkeypatch):
    import dataclasses
    make_idx_dataset(tmp_path / "debian", seed=1)
    raw = make_idx_dataset(tmp_path / "root" / "FashionMNIST" / "raw", seed=2)
    monkeypatch.setitem(data.DATASETS, "fashion_mnist", dataclasses.replace(FM, debian=str(tmp_path / "debian")))
    ds = load_dataset("fashion_mnist", root=tmp_path / "root")
    assert torch.equal(ds.train.y, raw["train"][1].long())


def test_mnist_same_call(tmp_path):
    raw = make_idx_dataset(tmp_path / "MNIST" / "raw")
    ds = load_dataset("mnist", root=tmp_path)
    assert ds.classes == tuple("0123456789")
    torch.testing.assert_close(ds.test.x, expected_x(raw["t10k"][0].unsqueeze(1), data.DATASETS["mnist"]))


def test_cifar10_same_call(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    np = pytest.importorskip("numpy")
    g = np.random.default_rng(0)
    images = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = g.integers(0, 256, (4, 3072), dtype=np.uint8)
        images[name] = x
        (folder / name).write_bytes(pickle.dumps({"data": x, "labels": [0, 1, 2, 9]}))
    ds = load_dataset("cifar10", root=tmp_path)
    assert ds.train.x.shape == (20, 3, 32, 32) and ds.test.x.shape == (4, 3, 32, 32)
    torch.testing.assert_close(ds.test.x, expected_x(torch.from_numpy(images["test_batch"]).reshape(4, 3, 32, 32),
                                                     data.DATASETS["cifar10"]))


def test_cifar10_refuses_other_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(DataError, match="data_batch_1.*not a valid CIFAR-10"):
        load_dataset("cifar10", root=tmp_path)


def test_corrupt_gzip_names_it(tmp_path, no_debian):
    raw_dir = tmp_path / "FashionMNIST" / "raw"
    make_idx_dataset(raw_dir, gz=True)
    path = raw_dir / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset("fashion_mnist", root=tmp_path)


def test_bad_header_and_label_mismatch(tmp_path, no_debian):
    raw_dir = tmp_path / "FashionMNIST" / "raw"
    make_idx_dataset(raw_dir)
    (raw_dir / "train-images-idx3-ubyte").write_bytes(b"not an idx file at all")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*bad header"):
        load_dataset("fashion_mnist", root=tmp_path)
    make_idx_dataset(raw_dir)
    write_idx(raw_dir / "train-labels-idx1-ubyte", torch.zeros(39, dtype=torch.uint8))
    with pytest.raises(DataError, match="40 images.*39 labels"):
        load_dataset("fashion_mnist", root=tmp_path)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*fashion_mnist"):
        load_dataset("imagenet")


def test_validation_split_is_deterministic(tmp_path, no_debian):
    make_idx_dataset(tmp_path / "FashionMNIST" / "raw", n_train=50)
    a = load_dataset("fashion_mnist", root=tmp_path, val_size=10, seed=3)
    b = load_dataset("fashion_mnist", root=tmp_path, val_size=10, seed=3)
    c = load_dataset("fashion_mnist", root=tmp_path, val_size=0.2, seed=4)
    full = load_dataset("fashion_mnist", root=tmp_path)
    assert len(a.val) == 10 and len(a.train) == 40 and len(c.val) == 10
    assert torch.equal(a.val.x, b.val.x) and not torch.equal(a.val.x, c.val.x)
    # train and val partition the original training set
    together = torch.cat([a.train.x, a.val.x]).flatten(1)
    assert sorted(map(tuple, together.tolist())) == sorted(map(tuple, full.train.x.flatten(1).tolist()))
    with pytest.raises(ValueError, match="val_size"):
        load_dataset("fashion_mnist", root=tmp_path, val_size=50)


def test_batches_cover_each_example_once():
    split = data.Split(torch.arange(10.).view(10, 1, 1, 1), torch.arange(10))
    seen = torch.cat([y for _, y in split.batches(3, shuffle=True, seed=1)])
    assert sorted(seen.tolist()) == list(range(10))
    again = torch.cat([y for _, y in split.batches(3, shuffle=True, seed=1)])
    assert torch.equal(seen, again)
    x, y, idx = next(split.batches(4, shuffle=True, seed=2, with_index=True))
    assert torch.equal(split.y[idx], y) and torch.equal(split.x[idx], x)
    assert [len(y) for _, y in split.batches(4)] == [4, 4, 2]


def test_augmentation_crops_and_flips():
    g = torch.Generator().manual_seed(0)
    img = torch.arange(1, 17.).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    out = data.augment_batch(img, pad=1, flip=True, gen=g)
    assert out.shape == img.shape
    flipped = img.flip(3)
    # every output is a shifted (maybe flipped) copy: its centre 2x2 comes from the original or mirror
    for o in out:
        windows = [torch.nn.functional.pad(src, (1, 1, 1, 1))[0, 0, dy:dy + 4, dx:dx + 4]
                   for src in (img[:1], flipped[:1]) for dy in range(3) for dx in range(3)]
        assert any(torch.equal(o[0], w) for w in windows)
    assert not all(torch.equal(o, img[0]) for o in out)  # something changed
    assert torch.equal(data.augment_batch(img, pad=0, flip=False, gen=g), img)
