"""Models follow the data: build_model(name, data=ds), a stem for large inputs, Fashion-MNIST models unchanged."""
import pytest
import torch

from distill_utils.data import Dataset, Split
from distill_utils.models import build_model, stem_stride_for
from distill_utils.provenance.checkpoints import load_checkpoint, load_pretrained, save_checkpoint


def dataset(shape, classes=4, n=6):
    """A random in-memory dataset of images of ``shape`` (C, H, W)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, *shape, generator=g), torch.arange(n) % classes
    return Dataset("random", Split(x, y), Split(x, y), tuple(map(str, range(classes))), shape, "memory")


def test_fashion_mnist_models_are_unchanged_and_the_shipped_teacher_loads():
    counts = {name: sum(p.numel() for p in build_model(name).parameters())
              for name in ("teacher_cnn", "student_cnn", "student_mlp")}
    assert counts == {"teacher_cnn": 688_362, "student_cnn": 25_090, "student_mlp": 101_770}
    shipped, _ = load_pretrained("teacher_fashion_mnist")
    fresh = build_model("teacher_cnn", data=dataset((1, 28, 28), classes=10))
    assert {k: v.shape for k, v in shipped.state_dict().items()} == {k: v.shape for k, v in fresh.state_dict().items()}
    assert fresh.features[0][0].stride == (1, 1) and fresh.features[0][0].kernel_size == (3, 3)
    assert [m.__class__.__name__ for m in build_model("student_mlp").modules()][:3] == ["MLP", "Identity", "Flatten"]


def test_the_stem_stride_grows_with_the_image():
    assert [stem_stride_for(s) for s in (28, 32, 40, 63, 64, 96, 128, 224)] == [1, 1, 1, 1, 2, 3, 4, 7]


@pytest.mark.parametrize("name", ["teacher_cnn", "student_cnn", "student_mlp"])
def test_models_built_from_the_data_record_what_rebuilds_them(tmp_path, name):
    ds = dataset((3, 96, 96), classes=5)
    model = build_model(name, data=ds, width=0.5).eval()
    assert model.spec == {"name": name, "kwargs": {"num_classes": 5, "in_channels": 3, "image_size": 96,
                                                   "stem_stride": 3, "width": 0.5}}
    assert model(ds.test.x).shape == (6, 5)
    again, _ = load_checkpoint(save_checkpoint(model, tmp_path / f"{name}.safetensors"))
    torch.testing.assert_close(again(ds.test.x), model(ds.test.x))


def test_a_large_input_costs_about_what_a_32x32_one_does():
    big = build_model("teacher_cnn", data=dataset((3, 96, 96)))
    small = build_model("teacher_cnn", data=dataset((3, 32, 32)))
    _, feats = big(torch.zeros(1, 3, 96, 96), return_features=True)
    assert [tuple(f.shape[1:]) for f in feats] == [(32, 16, 16), (64, 8, 8), (128, 4, 4)]
    assert big.features[0][0].kernel_size == (5, 5) and big.features[0][0].stride == (3, 3)
    extra = sum(p.numel() for p in big.parameters()) - sum(p.numel() for p in small.parameters())
    assert extra == 32 * 3 * (25 - 9)  # only the stem's larger kernel
    mlp = build_model("student_mlp", data=dataset((3, 64, 64)))
    assert mlp.features[0][0].in_features == 3 * 32 * 32 and mlp(torch.zeros(2, 3, 64, 64)).shape == (2, 4)


def test_given_settings_win_over_the_data_and_bad_requests_are_named():
    model = build_model("student_cnn", data=dataset((3, 64, 64)), stem_stride=1, num_classes=7)
    assert model.spec["kwargs"]["stem_stride"] == 1 and model(torch.zeros(1, 3, 64, 64)).shape == (1, 7)
    with pytest.raises(TypeError, match="data must be a Dataset"):
        build_model("student_cnn", data=[1, 28, 28])
    with pytest.raises(ValueError, match="square images; this dataset's are 32x48"):
        build_model("student_cnn", data=dataset((3, 32, 48)))
    with pytest.raises(ValueError, match="stem_stride must be an integer from 1 to image_size"):
        build_model("teacher_cnn", stem_stride=0)
