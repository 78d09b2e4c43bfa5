"""A folder of one's own images as a dataset: load_dataset("folder:PATH") (distill_utils.folders)."""
import json
import os
import struct
import zlib

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from distill_utils.data import DataError, load_dataset
from distill_utils.folders import FolderOptions, FolderWarning
from distill_utils.folders import scan as folder_scan
from distill_utils.models import build_model
from distill_utils.runs.params import ParameterError, validate


def save(path, array, mode=None, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path, **kw) if mode else Image.fromarray(array).save(path, **kw)
    return path


def noise_tree(root, classes=("cat", "dog"), n=4, shape=(16, 16, 3), seed=0, ext="png"):
    """``root/<class>/<i>.<ext>`` of random pixels; returns {relative path: pixels}."""
    g = np.random.default_rng(seed)
    out = {}
    for c in classes:
        for i in range(n):
            arr = g.integers(0, 256, shape, dtype=np.uint8)
            save(root / c / f"{i}.{ext}", arr)
            out[f"{c}/{i}.{ext}"] = arr
    return out


def pattern_tree(root, n=16, size=24, seed=0):
    """Three learnable classes: a bright square in a class's corner, on noise."""
    g = np.random.default_rng(seed)
    for label, c in enumerate(("left", "middle", "right")):
        for i in range(n):
            arr = g.integers(0, 90, (size, size, 3), dtype=np.uint8)
            x0 = label * size // 3
            arr[size // 3: 2 * size // 3, x0: x0 + size // 3] = 250
            save(root / c / f"{i}.png", arr)


def pixels(ds, split):
    """The uint8 images a split was normalised from, (N, H, W, C)."""
    mean, std = torch.tensor(ds.mean).view(1, -1, 1, 1), torch.tensor(ds.std).view(1, -1, 1, 1)
    return ((split.x * std + mean) * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def every_image(ds):
    return sorted(img.tobytes() for split in (ds.train, ds.test) for img in pixels(ds, split))


def cache_files(root):
    return sorted((root / ".distill_cache").glob("*.bin"))


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    """A read-only folder's cache goes to $XDG_CACHE_HOME: keep it inside the test's folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def test_train_test_layout_keeps_png_pixels_exactly_and_jpeg_as_pillow_decodes(tmp_path):
    train = noise_tree(tmp_path / "train")
    test = noise_tree(tmp_path / "test", n=2, seed=1)
    g = np.random.default_rng(2)
    smooth = np.repeat(np.repeat(g.integers(0, 256, (4, 4, 3), dtype=np.uint8), 4, 0), 4, 1)
    jpeg = save(tmp_path / "train" / "dog" / "9.jpg", smooth, quality=95, subsampling=0)
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.classes == ("cat", "dog") and ds.input_shape == (3, 16, 16) and ds.num_classes == 2
    assert (len(ds.train), len(ds.test)) == (9, 4) and "decoded 13 images" in ds.source
    got = pixels(ds, ds.train)
    order = sorted(train) + ["dog/9.jpg"]  # torchvision's order: class, then file name
    order = sorted(order, key=lambda p: (p.split("/")[0], p.split("/")[1]))
    for i, rel in enumerate(order):
        if rel.endswith(".png"):
            assert np.array_equal(got[i], train[rel]), rel
        else:
            assert np.array_equal(got[i], np.asarray(Image.open(jpeg).convert("RGB")))
            assert np.abs(got[i].astype(int) - smooth).mean() < 4  # JPEG at quality 95 stays near its source
    assert np.array_equal(pixels(ds, ds.test), np.stack([test[k] for k in sorted(test)]))
    assert ds.train.y.tolist() == [0] * 4 + [1] * 5 and ds.test.y.tolist() == [0, 0, 1, 1]
    raw = np.stack([Image.open(tmp_path / "train" / p).convert("RGB") for p in order]) / 255
    np.testing.assert_allclose(ds.mean, raw.mean(axis=(0, 1, 2)), atol=1e-5)
    np.testing.assert_allclose(ds.std, raw.std(axis=(0, 1, 2)), atol=1e-5)
    torch.testing.assert_close(ds.to_image(ds.test.x[0]), torch.from_numpy(test["cat/0.png"]) / 255, atol=1e-6, rtol=0)
    x, y = next(ds.train.batches(4, shuffle=True, augment=True))  # the Split API of the built-in datasets
    assert x.shape == (4, 3, 16, 16) and y.shape == (4,)


def test_one_tree_is_split_per_class_by_a_seed(tmp_path):
    noise_tree(tmp_path, classes=("a", "b", "c"), n=10, shape=(12, 12))  # grayscale: one channel
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.input_shape == (1, 12, 12) and ds.to_image(ds.train.x[0]).shape == (12, 12)  # imshow, cmap="gray"
    assert torch.bincount(ds.test.y).tolist() == [2, 2, 2] and torch.bincount(ds.train.y).tolist() == [8, 8, 8]
    again = load_dataset(f"folder:{tmp_path}")
    other = load_dataset(f"folder:{tmp_path}", folder=FolderOptions(split_seed=1))
    assert torch.equal(again.test.x, ds.test.x) and not torch.equal(other.test.x, ds.test.x)
    assert every_image(ds) == every_image(other)  # the same images, held out differently
    half = load_dataset(f"folder:{tmp_path}", folder=FolderOptions(test_fraction=0.5), val_size=3)
    assert torch.bincount(half.test.y).tolist() == [5, 5, 5] and len(half.val) == 3 and len(half.train) == 12


def test_mixed_sizes_and_modes_become_one_shape(tmp_path):
    g = np.random.default_rng(0)
    save(tmp_path / "a" / "wide.png", g.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    save(tmp_path / "a" / "tall.png", g.integers(0, 256, (40, 12), dtype=np.uint8))
    save(tmp_path / "b" / "alpha.png", g.integers(0, 256, (25, 25, 4), dtype=np.uint8))
    save(tmp_path / "b" / "palette.png", g.integers(0, 256, (16, 16), dtype=np.uint8), mode="P")
    ds = load_dataset(f"folder:{tmp_path}", folder=FolderOptions(test_fraction=0.5))
    assert ds.input_shape == (3, 18, 18)  # the median shorter side of 20, 12, 25, 16; RGB as some are colour
    wide = TF.pil_to_tensor(TF.center_crop(TF.resize(Image.open(tmp_path / "a" / "wide.png").convert("RGB"), 18), 18))
    both = np.concatenate([pixels(ds, ds.train), pixels(ds, ds.test)])
    assert any(np.array_equal(img, wide.permute(1, 2, 0).numpy()) for img in both)
    gray = load_dataset(f"folder:{tmp_path}", folder=FolderOptions(size=8, channels=1, test_fraction=0.5))
    assert gray.input_shape == (1, 8, 8) and gray.train.x.shape[1:] == (1, 8, 8)


def test_second_load_reads_the_cache_and_a_changed_folder_is_decoded_again(tmp_path, monkeypatch):
    noise_tree(tmp_path, n=5)
    first = load_dataset(f"folder:{tmp_path}")
    decoded = []
    real = folder_scan.decode_image
    monkeypatch.setattr(folder_scan, "decode_image", lambda *a: decoded.append(a[0]) or real(*a))
    second = load_dataset(f"folder:{tmp_path}")
    assert decoded == [] and "from the cache" in second.source
    assert torch.equal(first.train.x, second.train.x) and torch.equal(first.test.y, second.test.y)
    new = np.full((16, 16, 3), 7, dtype=np.uint8)
    save(tmp_path / "cat" / "0.png", new)
    os.utime(tmp_path / "cat" / "0.png", ns=(1, 1))  # a new modification time, whatever the clock
    changed = load_dataset(f"folder:{tmp_path}")
    assert len(decoded) == 10 and "decoded 10 images" in changed.source
    assert np.full((16, 16, 3), 7, np.uint8).tobytes() in every_image(changed)
    save(tmp_path / "dog" / "5.png", new)
    grown = load_dataset(f"folder:{tmp_path}")
    assert (len(grown.train), len(grown.test)) == (9, 2)
    small = load_dataset(f"folder:{tmp_path}", folder=FolderOptions(size=8))  # other settings: another cache
    assert small.input_shape == (3, 8, 8) and len(cache_files(tmp_path)) == 2
    decoded.clear()
    assert load_dataset(f"folder:{tmp_path}").input_shape == (3, 16, 16) and decoded == []


@pytest.mark.parametrize("damage", ["format", "pillow version", "truncated", "labels", "garbage"])
def test_a_cache_from_another_version_or_damaged_is_rebuilt(tmp_path, monkeypatch, damage):
    noise_tree(tmp_path)
    first = load_dataset(f"folder:{tmp_path}")
    [path] = cache_files(tmp_path)
    blob = bytearray(path.read_bytes())
    n = struct.unpack("<I", blob[12:16])[0]
    if damage == "format":
        blob[8:12] = struct.pack("<I", 99)
    elif damage == "pillow version":
        head = json.loads(blob[16:16 + n])
        head["versions"]["pillow"] = "0." + head["versions"]["pillow"]
        new = json.dumps(head).encode()
        blob = blob[:12] + struct.pack("<I", len(new)) + new + blob[16 + n:]
    elif damage == "truncated":
        blob = blob[: len(blob) - 7]
    elif damage == "labels":
        blob[-4:] = struct.pack("<i", 5)  # a class that does not exist
    else:
        blob = bytearray(b"\0" * len(blob))
    path.write_bytes(bytes(blob))
    decoded = []
    real = folder_scan.decode_image
    monkeypatch.setattr(folder_scan, "decode_image", lambda *a: decoded.append(a[0]) or real(*a))
    again = load_dataset(f"folder:{tmp_path}")
    assert len(decoded) == 8 and torch.equal(again.train.x, first.train.x)
    assert cache_files(tmp_path) == [path] and load_dataset(f"folder:{tmp_path}").source.count("from the cache")


def test_unreadable_images_are_skipped_counted_and_named(tmp_path):
    noise_tree(tmp_path, n=4)
    good = (tmp_path / "cat" / "0.png").read_bytes()
    (tmp_path / "cat" / "text.png").write_text("not an image")
    (tmp_path / "cat" / "short.png").write_bytes(good[: len(good) // 2])
    jpeg = save(tmp_path / "dog" / "photo.jpg", np.zeros((32, 32, 3), np.uint8)).read_bytes()
    (tmp_path / "dog" / "short.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    os.mkfifo(tmp_path / "dog" / "pipe.png")
    (tmp_path / "dog" / "notes.txt").write_text("labels were checked")
    (tmp_path / "dog" / ".DS_Store").write_bytes(b"\0")
    pattern = (r"skipped 4 unreadable image file\(s\): cat/short.png \(truncated or corrupt.*cat/text.png \(not an "
               r"image.*dog/pipe.png \(not a regular file\).*dog/short.jpg \(cannot read its header.*Truncated.*"
               r"ignored 1 file\(s\) without an image extension: dog/notes.txt")
    with pytest.warns(FolderWarning, match=pattern):
        ds = load_dataset(f"folder:{tmp_path}")
    assert len(ds.train) + len(ds.test) == 9
    with pytest.warns(FolderWarning, match="skipped 4"):  # a cached load says so again
        load_dataset(f"folder:{tmp_path}")
    with pytest.raises(DataError, match=r"cat/text.png: not an image .*skip_bad=True"):
        load_dataset(f"folder:{tmp_path}", folder=FolderOptions(skip_bad=False))
    assert len(cache_files(tmp_path)) == 1  # the refused load wrote nothing


def png_header_only(path, width, height):
    """A PNG whose header claims width x height, with almost no pixel data: a decompression bomb's shape."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_never_decoded(tmp_path, monkeypatch):
    noise_tree(tmp_path)
    png_header_only(tmp_path / "cat" / "bomb.png", 60_000, 60_000)
    png_header_only(tmp_path / "dog" / "big.png", 5_000, 5_000)
    decoded = []
    real = folder_scan.decode_image
    monkeypatch.setattr(folder_scan, "decode_image", lambda *a: decoded.append(a[0]) or real(*a))
    with pytest.warns(FolderWarning, match=r"skipped 2 .*cat/bomb.png \(a decompression bomb .*dog/big.png \(5000x5000"
                                           r" = 25,000,000 pixels, more than max_pixels=1,000,000"):
        load_dataset(f"folder:{tmp_path}", folder=FolderOptions(max_pixels=1_000_000))
    assert not any(os.path.basename(p) in ("bomb.png", "big.png") for p in decoded) and len(decoded) == 8


def loop(root):
    noise_tree(root)
    (root / "cat" / "again").symlink_to(root / "cat", target_is_directory=True)


def empty_class(root):
    noise_tree(root / "train")
    noise_tree(root / "test")
    (root / "train" / "bird").mkdir()
    (root / "test" / "bird").mkdir()
    (root / "train" / "bird" / "readme.txt").write_text("todo")


def missing_from_test(root):
    noise_tree(root / "train", classes=("cat", "dog", "owl"))
    noise_tree(root / "test")


def no_class_folders(root):
    save(root / "0.png", np.zeros((8, 8), np.uint8))
    (root / ".ipynb_checkpoints").mkdir()


def unreadable_class(root):
    noise_tree(root / "train")
    noise_tree(root / "test", classes=("cat",))
    (root / "test" / "dog").mkdir()
    (root / "test" / "dog" / "0.png").write_text("no")


BAD_FOLDERS = {
    "missing": (lambda r: None, "x does not exist or is not a folder", {}),
    "no classes": (lambda r: no_class_folders(r / "x"), "has no class folders; classification needs at least 2", {}),
    "one class": (lambda r: noise_tree(r / "x", classes=("cat",)), r"has 1 class folder \('cat'\)", {}),
    "empty class": (lambda r: empty_class(r / "x"), r"class folder .*train/bird holds no image files", {}),
    "missing from test": (lambda r: missing_from_test(r / "x"), r"'owl' only in train/; train/ and test/ need", {}),
    "train without test": (lambda r: noise_tree(r / "x" / "train"), "has train/ but no test/", {}),
    "symlink loop": (lambda r: loop(r / "x"), r"cat/again is .*cat again \(a symlink loop", {}),
    "one image in a class": (lambda r: noise_tree(r / "x", n=1), "'cat' has 1 readable image.*2 per class", {}),
    "unreadable class": (lambda r: unreadable_class(r / "x"), "'dog' has no readable image in test", {}),
    "too big": (lambda r: noise_tree(r / "x"), r"8 images of 3x16x16 need .* GiB.*max_bytes", {"max_bytes": 1000}),
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_a_folder_that_is_no_dataset_is_one_clear_line(tmp_path, case):
    make, message, options = BAD_FOLDERS[case]
    make(tmp_path)
    with pytest.raises(DataError, match=message) as err:
        load_dataset(f"folder:{tmp_path / 'x'}", folder=FolderOptions(**options))
    assert "\n" not in str(err.value)
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.tmp"))  # nothing half-written


@pytest.mark.parametrize("how", ["cache folder unwritable", "chmod"])
def test_a_read_only_folder_is_cached_elsewhere_and_says_where(tmp_path, how):
    noise_tree(tmp_path / "photos")
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders; the other case covers it")
        for folder in (tmp_path / "photos", tmp_path / "photos" / "cat", tmp_path / "photos" / "dog"):
            folder.chmod(0o555)
    else:
        (tmp_path / "photos" / ".distill_cache").write_text("a file where the cache folder would go")
    with pytest.warns(FolderWarning, match=r"photos/.distill_cache is not writable.*so the decoded images are "
                                           r"cached in .*xdg/distill_utils/folders/"):
        first = load_dataset(f"folder:{tmp_path / 'photos'}")
    second = load_dataset(f"folder:{tmp_path / 'photos'}")
    assert "from the cache" in second.source and str(tmp_path / "xdg") in second.source
    assert torch.equal(first.train.x, second.train.x)


def test_models_follow_the_folder_and_a_teacher_and_student_learn_it(tmp_path):
    from distill_utils.distill import distill
    from distill_utils.train import evaluate, fit, set_seed
    pattern_tree(tmp_path)
    ds = load_dataset(f"folder:{tmp_path}", folder=FolderOptions(test_fraction=0.25))
    assert ds.input_shape == (3, 24, 24) and len(ds.test) == 12
    set_seed(0)
    teacher = build_model("teacher_cnn", data=ds, width=0.25)
    assert teacher.spec["kwargs"] == {"num_classes": 3, "in_channels": 3, "image_size": 24, "stem_stride": 1,
                                      "width": 0.25}
    fit(teacher, ds, epochs=4, lr=1e-2, batch_size=16, progress=False, device="cpu", precision="fp32")
    student = build_model("student_cnn", data=ds)
    distill(student, teacher, ds, epochs=4, lr=1e-2, batch_size=16, progress=False, device="cpu", precision="fp32")
    chance = 1 / 3
    assert evaluate(teacher, ds.test, precision="fp32") > chance + 0.3
    assert evaluate(student, ds.test, precision="fp32") > chance + 0.3


def test_a_large_image_gets_a_stem_and_prunes_and_measures(tmp_path):
    from distill_utils.measure import count_flops
    from distill_utils.prune import prune_channels
    noise_tree(tmp_path, n=3, shape=(96, 96, 3))
    ds = load_dataset(f"folder:{tmp_path}", folder=FolderOptions(size=96, test_fraction=0.34))
    teacher = build_model("teacher_cnn", data=ds)
    assert teacher.spec["kwargs"]["stem_stride"] == 3
    _, feats = teacher(ds.train.x[:2], return_features=True)
    assert [tuple(f.shape[1:]) for f in feats] == [(32, 16, 16), (64, 8, 8), (128, 4, 4)]
    small = build_model("teacher_cnn", num_classes=2, in_channels=3, image_size=32)
    assert count_flops(teacher, ds.train.x[:1]) < 1.2 * count_flops(small, torch.zeros(1, 3, 32, 32))
    pruned = prune_channels(teacher, 0.5)
    assert pruned(ds.test.x).shape == (len(ds.test), 2) and pruned.spec["kwargs"]["stem_stride"] == 3


def test_the_dataset_parameter_takes_a_folder(tmp_path):
    noise_tree(tmp_path / "pics")
    params = {"__annotations__": {"dataset": str}}
    assert validate({**params, "dataset": f"folder:{tmp_path / 'pics'}"}) == {"dataset": f"folder:{tmp_path / 'pics'}"}
    assert validate({**params, "dataset": "cifar10"}) == {"dataset": "cifar10"}
    for value, message in ((f"folder:{tmp_path / 'nope'}", "nope, which is not a folder"),
                           ("folder:", "names no folder"), ("fashion", "must be one of cifar10.*or folder:PATH"),
                           (["cifar10"], "must be str")):
        with pytest.raises(ParameterError, match=message):
            validate({**params, "dataset": value})


def test_a_relative_folder_is_made_absolute_for_a_runner_in_another_folder(tmp_path, monkeypatch):
    from distill_utils.folders import absolute_name
    monkeypatch.chdir(tmp_path)
    assert absolute_name("folder:pics") == f"folder:{tmp_path / 'pics'}"
    assert absolute_name("folder:pics", base="/data") == "folder:/data/pics"
    assert absolute_name("folder:/abs/pics") == "folder:/abs/pics" and absolute_name("cifar10") == "cifar10"
    assert absolute_name("folder:~/pics") == f"folder:{os.path.expanduser('~/pics')}"


def test_bad_folder_options_are_named():
    with pytest.raises(ValueError, match="FolderOptions: size must be an integer >= 8 or None; channels must be 1"):
        FolderOptions(size=4, channels=2)
    with pytest.raises(ValueError, match="test_fraction must be a number between 0 and 1"):
        FolderOptions(test_fraction=1.0)
    with pytest.raises(ValueError, match="folder options are for datasets named folder:PATH, not 'mnist'"):
        load_dataset("mnist", folder=FolderOptions())
