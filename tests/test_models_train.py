import pytest
import torch

from conftest import tiny_dataset
from distill_utils.models import MODELS, build_model, model_spec
from distill_utils.train import choose_device, evaluate, fast_layout, fit, predict, set_seed


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_models_build_and_shapes(name, shape):
    model = build_model(name, num_classes=7, in_channels=shape[0], image_size=shape[1])
    x = torch.randn(5, *shape)
    assert model(x).shape == (5, 7)
    logits, feats = model(x, return_features=True)
    assert logits.shape == (5, 7) and len(feats) >= 1 and all(f.shape[0] == 5 for f in feats)
    assert model_spec(model) == {"name": name, "kwargs": {"num_classes": 7, "in_channels": shape[0],
                                                          "image_size": shape[1]}}


def test_teacher_size_and_feature_shapes():
    teacher = build_model("teacher_cnn")
    n = sum(p.numel() for p in teacher.parameters())
    assert 500_000 <= n <= 1_000_000
    _, feats = teacher(torch.randn(2, 1, 28, 28), return_features=True)
    assert [tuple(f.shape[1:]) for f in feats] == [(32, 14, 14), (64, 7, 7), (128, 3, 3)]


def test_width_knob_scales_students():
    sizes = [sum(p.numel() for p in build_model("student_cnn", width=w).parameters()) for w in (0.5, 1, 2)]
    assert sizes[0] < sizes[1] < sizes[2]
    mlp = build_model("student_mlp", width=0.25, hidden=(128, 64))
    assert [b[0].out_features for b in mlp.features] == [32, 16]


def test_bad_model_requests():
    with pytest.raises(ValueError, match="unknown model 'resnet'.*student_cnn"):
        build_model("resnet")
    with pytest.raises(TypeError, match="bad arguments for model 'student_cnn'"):
        build_model("student_cnn", depth=3)
    with pytest.raises(ValueError, match="build_model"):
        model_spec(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("name", ["student_cnn", "student_mlp"])
def test_fit_overfits_a_tiny_batch(name):
    set_seed(0)
    data = tiny_dataset()
    model = build_model(name, width=2.0)
    history = fit(model, data, epochs=40, lr=1e-2, batch_size=32, weight_decay=0, progress=False, device="cpu")
    assert history[-1]["train_loss"] < 0.1 * history[0]["train_loss"]
    assert evaluate(model, data.train) == 1.0
    assert history[-1]["test_acc"] == 1.0
    assert set(history[0]) == {"epoch", "train_loss", "train_acc", "lr", "seconds", "test_acc"}


def test_fit_is_reproducible_and_uses_val():
    data = tiny_dataset()
    data.val = data.test
    weights = []
    for _ in range(2):
        set_seed(1)
        model = build_model("student_cnn")
        history = fit(model, data, epochs=2, batch_size=16, progress=False, device="cpu", seed=5)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])
    assert "val_acc" in history[0] and "test_acc" not in history[0]


def test_fit_on_a_split_and_predict_order():
    data = tiny_dataset(40)
    model = build_model("student_mlp")
    history = fit(model, data.train, epochs=1, progress=False, device="cpu")
    assert "test_acc" not in history[0]
    logits = predict(model, data.test, batch_size=7, precision="fp32")
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(logits, model(data.test.x))


def test_fit_rejects_bad_arguments_and_nan():
    data = tiny_dataset(16)
    model = build_model("student_mlp")
    with pytest.raises(ValueError, match="epochs"):
        fit(model, data, epochs=0, progress=False)
    with pytest.raises(ValueError, match="optimizer = 'adam' must be one of adamw, sgd"):
        fit(model, data, optimizer="adam", progress=False)
    with pytest.raises(ValueError, match="schedule = 'step' must be one of"):
        fit(model, data, schedule="step", progress=False)

    def nan_step(model, x, y, index):
        logits = model(x)
        return logits.sum() * float("nan"), logits
    with pytest.raises(FloatingPointError, match="epoch 1, batch 1.*lower learning rate"):
        fit(model, data, step=nan_step, progress=False, device="cpu")


def test_choose_device(monkeypatch):
    monkeypatch.delenv("DISTILL_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else None
    if expected:
        assert choose_device().type == "cuda"
    assert choose_device("cpu").type == "cpu"
    monkeypatch.setenv("DISTILL_DEVICE", "cpu")
    assert choose_device().type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            choose_device("cuda")


@pytest.mark.parametrize("n", [16, 64, 160])  # 1, 4 and 10 steps
def test_fit_handles_very_short_runs(n):
    history = fit(build_model("student_mlp"), tiny_dataset(n).train, epochs=1, batch_size=16, progress=False)
    assert len(history) == 1 and history[0]["train_loss"] > 0


def test_fast_layout_changes_layout_not_outputs():
    model = build_model("student_cnn").eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        before = model(x)
        assert fast_layout(model) is model
        assert model.features[1][0].weight.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)


def test_model_trains_after_evaluate():
    model, data = build_model("student_cnn", width=0.25), tiny_dataset()
    evaluate(model, data.test)  # changes the layout; parameters must stay normal tensors
    assert not any(p.is_inference() for p in model.parameters())
    fit(model, data, epochs=1, progress=False)
