"""Oracle tests for distill_utils.measure: every count is checked against an explicit formula."""
import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from distill_utils.measure import count_flops, count_nonzero, count_params, latency_ms, size_on_disk, summary
from distill_utils.models import build_model

# Conv2d(1, 4, 3) on 28x28 -> 4x26x26, then Linear(4*26*26, 10)
CONV_PARAMS = 1 * 4 * 3 * 3 + 4
LINEAR_PARAMS = 4 * 26 * 26 * 10 + 10


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))


def test_params_and_nonzero_match_formula():
    net = small_net()
    assert count_params(net) == CONV_PARAMS + LINEAR_PARAMS == 27090
    assert count_nonzero(net) == CONV_PARAMS + LINEAR_PARAMS  # random init has no exact zeros


def test_teacher_params_match_zoo_and_formula():
    model = build_model("teacher_cnn")
    conv = 1 * 32 * 9 + 32 * 64 * 9 + 64 * 128 * 9  # 3x3 convs, bias=False
    bn = 2 * (32 + 64 + 128)  # weight + bias per channel
    fc = (128 * 3 * 3 * 512 + 512) + (512 * 10 + 10)  # 28 -> 14 -> 7 -> 3 after three pools
    assert count_params(model) == sum(p.numel() for p in model.parameters()) == conv + bn + fc


def test_shared_parameter_counted_once():
    lin = nn.Linear(8, 8)
    net = nn.Sequential(lin, nn.ReLU(), lin)
    assert count_params(net) == 8 * 8 + 8
    assert size_on_disk(net)["bytes"] <= 4 * (8 * 8 + 8) + 10_000  # stored once, no error


def test_nonzero_after_zeroing_known_weights():
    net = small_net()
    with torch.no_grad():
        net[3].weight[:, :100] = 0  # 10 rows x 100 columns
    assert count_nonzero(net) == CONV_PARAMS + LINEAR_PARAMS - 10 * 100


def test_nonzero_after_prune_counts_effective_weight_not_orig_or_mask():
    torch.manual_seed(0)
    layer = nn.Linear(20, 10)
    params_before, nonzero_before = count_params(layer), count_nonzero(layer)
    assert nonzero_before == 20 * 10 + 10
    prune.l1_unstructured(layer, "weight", amount=0.5)
    assert hasattr(layer, "weight_orig") and hasattr(layer, "weight_mask")
    pruned = int((layer.weight_mask == 0).sum())
    assert pruned == 100
    expected = int((layer.weight != 0).sum()) + int((layer.bias != 0).sum())
    assert count_nonzero(layer) == expected == nonzero_before - pruned
    assert count_params(layer) == params_before  # weight_orig replaces weight; masks are buffers


@pytest.mark.parametrize("batch", [1, 3])
def test_flops_match_hand_count(batch):
    net = small_net()
    # FlopCounterMode counts 2 FLOPs per multiply-add of conv and matmul ops and ignores
    # bias adds and ReLU, so each layer is 2 * MACs * batch.
    conv = 2 * 1 * 4 * 3 * 3 * 26 * 26 * batch  # c_in * c_out * k * k * H_out * W_out
    linear = 2 * (4 * 26 * 26) * 10 * batch  # in * out
    assert count_flops(net, torch.zeros(batch, 1, 28, 28)) == conv + linear


def test_flops_scale_linearly_with_batch_and_restore_training_flag():
    model = build_model("student_cnn")
    model.train()
    one = count_flops(model, torch.zeros(1, 1, 28, 28))
    assert one > 0 and count_flops(model, torch.zeros(4, 1, 28, 28)) == 4 * one
    assert model.training


def test_latency_reports_and_restores_state():
    model = build_model("student_cnn")
    model.train()
    model.features[0].eval()  # a mixed state must survive too
    threads_before = torch.get_num_threads()
    out = latency_ms(model, torch.zeros(2, 1, 28, 28), repeats=3, warmup=1, threads=1)
    assert set(out) == {"latency_ms", "latency_iqr_ms", "threads", "batch_size"}
    assert out["latency_ms"] > 0 and out["latency_iqr_ms"] >= 0
    assert out["threads"] == 1 and out["batch_size"] == 2
    assert torch.get_num_threads() == threads_before
    assert model.training and model.classifier.training and not model.features[0].training
    assert latency_ms(model, torch.zeros(1, 1, 28, 28), repeats=1, warmup=0)["threads"] == threads_before


def test_latency_rejects_bad_repeats():
    with pytest.raises(ValueError, match="repeats"):
        latency_ms(small_net(), torch.zeros(1, 1, 28, 28), repeats=0)


def test_size_on_disk_dense_is_4_bytes_per_param_plus_header():
    for model in (small_net(), build_model("teacher_cnn")):
        n = count_params(model)  # teacher also stores BN running stats (< 2 KB)
        size = size_on_disk(model)
        assert 4 * n <= size["bytes"] <= 4 * n + 10_000
        assert 0 < size["compressed_bytes"] <= size["bytes"] * 1.01


def test_size_on_disk_masks_resolved_and_sparsity_compresses():
    dense = small_net()
    sparse = copy.deepcopy(dense)
    for layer in (sparse[0], sparse[3]):
        prune.l1_unstructured(layer, "weight", amount=0.9)
    d, s = size_on_disk(dense), size_on_disk(sparse)
    assert s["bytes"] == d["bytes"]  # masks change values, not dense storage
    assert s["compressed_bytes"] < 0.5 * d["compressed_bytes"]
    assert d["sparse_bytes"] == d["bytes"]  # nothing sparse to pack in a dense model
    # the big layer (27,040 weights, 90% zeros) is stored as 2,704 float values + 3,380 mask bytes
    assert s["sparse_bytes"] < d["bytes"] - 27_040 * 4 + 2_704 * 4 + 3_380 + 1_000
    assert count_nonzero(sparse) == count_nonzero(dense) - (36 * 9 // 10 + 27040 * 9 // 10)


def test_summary_keys_and_plain_types():
    row = summary(build_model("student_mlp"), torch.zeros(1, 1, 28, 28), repeats=2, threads=1)
    assert list(row) == ["params", "nonzero", "flops", "latency_ms", "latency_iqr_ms",
                         "threads", "batch_size", "bytes", "compressed_bytes", "sparse_bytes"]
    for key, value in row.items():
        assert type(value) is (float if key.startswith("latency") else int), key
    assert row["params"] == 784 * 128 + 128 + 128 * 10 + 10 == row["nonzero"]
    assert row["flops"] == 2 * (784 * 128 + 128 * 10)
    assert row["threads"] == 1 and row["batch_size"] == 1


@pytest.mark.parametrize("shape", [(1, 3, 28, 28), (1, 1, 32, 32)])
def test_wrong_shape_raises_helpful_value_error(shape):
    model = build_model("teacher_cnn")
    with pytest.raises(ValueError, match=r"\(1, 1, 28, 28\)") as info:
        summary(model, torch.zeros(shape), repeats=1)
    assert str(shape) in str(info.value) and "does not fit" in str(info.value)


def test_non_tensor_input_and_scalar_rejected():
    with pytest.raises(TypeError, match="torch.Tensor"):
        count_flops(small_net(), [[0.0] * 28] * 28)
    with pytest.raises(ValueError, match="scalar tensor"):
        latency_ms(small_net(), torch.tensor(1.0), repeats=1)


def test_calibration_against_explicit_bins():
    from distill_utils.measure import agreement, calibration
    # confidences 0.9, 0.9, 0.6, 0.6 (two classes)
    p = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = torch.tensor([0, 0, 0, 0])  # the last prediction (class 1) is wrong
    result = calibration(p.log(), labels, bins=10)
    # bin 0.9: accuracy 1, confidence 0.9 (2 examples); bin 0.6: accuracy 0.5, confidence 0.6 (2)
    assert result["count"] == [2, 2]
    assert result["ece"] == pytest.approx((2 * 0.1 + 2 * 0.1) / 4)
    perfect = calibration(torch.tensor([[10.0, -10.0]] * 3), torch.zeros(3, dtype=torch.long))
    assert perfect["ece"] == pytest.approx(0, abs=1e-6)
    assert agreement(p.log(), torch.tensor([[1.0, 0], [0, 1.0], [1.0, 0], [1.0, 0]])) == 0.5


def test_measuring_and_predicting_leave_the_callers_model_as_it_was():
    """latency_ms, predict, evaluate and teacher_outputs work on copies: layout, mode and weights stay."""
    from distill_utils.data import Split
    from distill_utils.distill import teacher_outputs
    from distill_utils.train import evaluate, predict, uses_channels_last
    model = build_model("student_cnn", width=0.5).train()
    prune.l1_unstructured(model.features[0][0], "weight", amount=0.5)  # a masked layer: weight is computed
    before = {k: v.clone() for k, v in model.state_dict().items()}
    split = Split(torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    latency_ms(model, split.x[:2], repeats=1, warmup=0)
    logits = predict(model, split, precision="fp32")
    evaluate(model, split, precision="fp32")
    cached, _ = teacher_outputs(model, split, precision="fp32", device="cpu")
    assert not uses_channels_last(model) and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert logits.shape == (8, 10) and torch.allclose(cached.cpu(), logits, atol=1e-5)
