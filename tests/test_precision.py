"""Mixed precision: the choice of precision, its effect, and refusing to resume a different run."""
import pytest
import torch

from conftest import tiny_dataset
from distill_utils import train
from distill_utils.distill import distill, teacher_outputs
from distill_utils.models import build_model
from distill_utils.train import TrainConfig, evaluate, fit, predict, resolve_precision


def linear_dtypes(model):
    """Record the dtype every Linear layer computes in, during the next forward passes."""
    seen = set()
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            m.register_forward_hook(lambda mod, inp, out: seen.add(out.dtype))
    return seen


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_forced_precision_is_used_and_recorded(tmp_path, precision, dtype):
    model = build_model("student_cnn", width=0.5)
    seen = linear_dtypes(model)
    state = tmp_path / "state.pt"
    fit(model, tiny_dataset(32).train, epochs=1, batch_size=16, progress=False, device="cpu", precision=precision,
        state_file=state)
    assert seen == {dtype}
    assert torch.load(state, weights_only=True)["config"]["precision"] == precision  # what a resume must match


@pytest.mark.parametrize("native, expected", [(False, "fp32"), (True, "bf16")])
def test_auto_follows_the_hardware_check(tmp_path, monkeypatch, native, expected):
    monkeypatch.setattr(train, "bf16_native", lambda device: native)
    assert resolve_precision("auto", "cpu") == expected
    model = build_model("student_mlp")
    seen = linear_dtypes(model)
    state = tmp_path / "state.pt"
    fit(model, tiny_dataset(32).train, epochs=1, batch_size=16, progress=False, device="cpu", state_file=state)
    assert seen == {torch.bfloat16 if native else torch.float32}
    assert torch.load(state, weights_only=True)["config"]["precision"] == expected


def test_bad_precision_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown precision 'fp8'; choose 'auto'.*'fp32', 'bf16'"):
        fit(build_model("student_mlp"), tiny_dataset(16).train, epochs=1, progress=False, precision="fp8")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        evaluate(build_model("student_mlp"), tiny_dataset(16).test, precision="fp8")
    with pytest.raises(ValueError, match="'fp16' needs a CUDA GPU, not cpu"):
        resolve_precision("fp16", "cpu")


def test_bf16_inference_agrees_with_fp32():
    data = tiny_dataset(64)
    model = build_model("student_cnn")
    fit(model, data, epochs=2, batch_size=16, progress=False, device="cpu", precision="fp32")
    full, half = predict(model, data.test, precision="fp32"), predict(model, data.test, precision="bf16")
    assert half.dtype == torch.float32  # logits come back in float32 whatever the compute precision
    assert not torch.equal(full, half)  # bf16 really ran...
    torch.testing.assert_close(half, full, atol=0.1, rtol=0.05)  # ...with bf16's ~3 significant digits


def test_teacher_outputs_follow_precision():
    teacher = build_model("student_cnn")
    split = tiny_dataset(16).train
    full, _ = teacher_outputs(teacher, split, precision="fp32", device="cpu")
    half, _ = teacher_outputs(teacher, split, precision="bf16", device="cpu")
    assert full.dtype == half.dtype == torch.float32 and not torch.equal(full, half)


def test_settings_are_checked_up_front():
    with pytest.raises(ValueError, match="unknown training setting.*epoch\\b.*fit accepts epochs"):
        TrainConfig.make(epoch=3)
    for bad, message in [(dict(batch_size=32.5), "batch_size = 32.5 must be an integer"),
                         (dict(lr=float("inf")), "lr = inf must be a finite number"),
                         (dict(seed=2**64), "seed = 18446744073709551616 must be below 2\\*\\*63"),
                         (dict(epochs=True), "epochs = True must be an integer")]:
        with pytest.raises(ValueError, match=message):
            TrainConfig.make(**bad)


def test_distill_resume_refuses_a_different_distillation(tmp_path):
    """Every setting that changes the result must match to resume: T, the teacher, the data."""
    data = tiny_dataset(64)
    teacher = build_model("student_cnn", width=0.5)
    state = tmp_path / "state.pt"
    args = dict(epochs=2, batch_size=32, progress=False, device="cpu", state_file=state)
    distill(build_model("student_mlp"), teacher, data.train, T=4.0, **args)
    with pytest.raises(ValueError, match="different training run.*T: 4.0 there, 2.0 now"):
        distill(build_model("student_mlp"), teacher, data.train, T=2.0, resume=True, **args)
    other = build_model("student_cnn", width=0.5)
    with pytest.raises(ValueError, match="different training run.*teacher: .*weights"):
        distill(build_model("student_mlp"), other, data.train, T=4.0, resume=True, **args)
    shuffled = data.train.subset(64, seed=1)  # the same images in another order: another run
    with pytest.raises(ValueError, match="different training run.*data: '[0-9a-f]{16}' there"):
        distill(build_model("student_mlp"), teacher, shuffled, T=4.0, resume=True, **args)
    with pytest.raises(ValueError, match="different training run.*op: 'distill' there, 'fit' now"):
        fit(build_model("student_mlp"), data.train, resume=True, **args)
    history = distill(build_model("student_mlp"), teacher, data.train, T=4.0, resume=True, **args)
    assert [r["epoch"] for r in history] == [1, 2]  # the same run resumes (here: nothing left to do)
