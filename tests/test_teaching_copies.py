"""The notebooks write some concepts out in full; they must agree with the package."""
import ast
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from distill_utils.distill import soft_kl

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def notebook_function(notebook: str, name: str):
    """Compile just the function ``name`` defined in a code cell of ``notebook``."""
    cells = json.loads((NOTEBOOKS / notebook).read_text())["cells"]
    for cell in cells:
        if cell["cell_type"] != "code" or f"def {name}(" not in "".join(cell["source"]):
            continue
        tree = ast.parse("".join(cell["source"]))
        node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
        namespace = {"torch": torch, "F": F, "nn": torch.nn}
        exec(compile(ast.Module(body=[node], type_ignores=[]), notebook, "exec"), namespace)
        return namespace[name]
    raise AssertionError(f"{notebook} defines no function {name}")


@pytest.mark.parametrize("T", [1.0, 2.5, 8.0])
def test_kd_soft_term_matches_package(T):
    kd_soft_term = notebook_function("02_soft_targets_and_temperature.ipynb", "kd_soft_term")
    softmax_t = notebook_function("02_soft_targets_and_temperature.ipynb", "softmax_t")
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(16, 10, generator=g) * 4, torch.randn(16, 10, generator=g) * 4
    torch.testing.assert_close(kd_soft_term(s, t, T), soft_kl(s, t, T))
    torch.testing.assert_close(softmax_t(s, T), F.softmax(s / T, 1))


# Notebooks 05 and 06: the global magnitude threshold, the cubic schedule, L1 filter ranking and
# slicing conv -> BatchNorm -> next conv by hand, each against the package.

def _teacher(seed=0):
    from distill_utils.models import build_model
    torch.manual_seed(seed)
    model = build_model("teacher_cnn")
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so slicing them matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5), m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.3), m.bias.normal_(0, 0.3)
    return model.eval()


@pytest.mark.parametrize("amount", [0.0, 0.3, 0.9, 0.99])
def test_global_threshold_gives_the_package_masks(amount):
    from distill_utils.prune import prunable_layers, prune_magnitude
    global_threshold = notebook_function("05_magnitude_pruning.ipynb", "global_threshold")
    model = _teacher()
    weights = [m.weight.detach().clone() for _, m in prunable_layers(model)]
    threshold = global_threshold(weights, amount)
    prune_magnitude(model, amount, scope="global")
    for w, (name, m) in zip(weights, prunable_layers(model)):
        assert torch.equal(w.abs() > threshold, m.weight_mask.bool()), name
    removed = sum(int((w.abs() <= threshold).sum()) for w in weights)
    assert removed == round(amount * sum(w.numel() for w in weights))


def test_cubic_sparsity_matches_package():
    from distill_utils.prune import cubic_sparsity as package
    cubic_sparsity = notebook_function("05_magnitude_pruning.ipynb", "cubic_sparsity")
    for total, final, initial in ((100, 0.9, 0.0), (37, 0.5, 0.2)):
        for step in range(total + 1):
            expected = package(step, total, final, initial)
            assert cubic_sparsity(step, total, final, initial) == pytest.approx(expected, abs=1e-12)
    assert cubic_sparsity(0, 100, 0.9) == 0.0 and cubic_sparsity(100, 100, 0.9) == pytest.approx(0.9)
    assert cubic_sparsity(25, 100, 0.9) > 0.25 * 0.9  # fast at first: more than linear


def test_l1_filter_ranking_matches_package_criterion():
    from distill_utils.prune.channels import L1Norm
    l1_filter_ranking = notebook_function("06_channel_pruning.ipynb", "l1_filter_ranking")
    model = _teacher(1)
    for block in model.features:
        ranking = l1_filter_ranking(block[0])
        scores = L1Norm()(block[0], block[1])
        assert sorted(ranking.tolist()) == list(range(block[0].out_channels))
        assert torch.all(scores[ranking][:-1] >= scores[ranking][1:])  # most important first


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_slicing_by_hand_gives_the_package_model(ratio):
    import copy

    from distill_utils.prune import prune_channels
    l1_filter_ranking = notebook_function("06_channel_pruning.ipynb", "l1_filter_ranking")
    slice_conv_bn_conv = notebook_function("06_channel_pruning.ipynb", "slice_conv_bn_conv")
    model = _teacher(2)
    conv, bn, next_conv = model.features[0][0], model.features[0][1], model.features[1][0]
    keep = l1_filter_ranking(conv)[:conv.out_channels - round(ratio * conv.out_channels)]
    by_hand = copy.deepcopy(model)
    sliced = slice_conv_bn_conv(conv, bn, next_conv, keep)
    by_hand.features[0][0], by_hand.features[0][1], by_hand.features[1][0] = sliced
    package = prune_channels(model, [ratio, 0.0, 0.0], criterion="l1")
    assert by_hand.features[0][0].out_channels == package.features[0][0].out_channels == len(keep)
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(by_hand.eval()(x), package.eval()(x))
        assert not torch.allclose(by_hand(x), model(x), atol=1e-3)  # pruning changed something


# Notebook 04: the hint loss, the attention map and loss, and DKD's TCKD/NCKD split, against the package.

def _maps(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 8, 7, 7, generator=g), torch.randn(4, 16, 7, 7, generator=g).abs()


def test_hint_loss_matches_package():
    from distill_utils.distill import HintLoss
    hint_loss = notebook_function("04_feature_distillation.ipynb", "hint_loss")
    s, t = _maps()
    torch.manual_seed(0)
    package = HintLoss(8, 16)
    torch.testing.assert_close(hint_loss(s, t, package.regressor), package(s, t))
    big = torch.randn(4, 8, 14, 14)  # a finer student grid is pooled to the teacher's
    torch.testing.assert_close(hint_loss(big, t, package.regressor), package(big, t))


def test_attention_map_and_loss_match_package():
    from distill_utils.distill import attention_loss as package_loss
    from distill_utils.distill import attention_map as package_map
    attention_map = notebook_function("04_feature_distillation.ipynb", "attention_map")
    attention_loss = notebook_function("04_feature_distillation.ipynb", "attention_loss")
    attention_loss.__globals__["attention_map"] = attention_map  # the notebook's loss calls its own map
    s, t = _maps(1)
    torch.testing.assert_close(attention_map(t), package_map(t))
    assert torch.allclose(attention_map(t).norm(dim=1), torch.ones(4))
    torch.testing.assert_close(attention_loss(s, t), package_loss(s, t))
    big = torch.randn(4, 8, 14, 14, generator=torch.Generator().manual_seed(3))  # resized to the teacher's grid
    torch.testing.assert_close(attention_loss(big, t), package_loss(big, t))
    assert attention_loss(t, t).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("T, beta", [(1.0, 1.0), (4.0, 8.0)])
def test_tckd_nckd_split_matches_package_dkd(T, beta):
    from distill_utils.distill import dkd_loss
    tckd_nckd = notebook_function("04_feature_distillation.ipynb", "tckd_nckd")
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(32, 10, generator=g) * 3, torch.randn(32, 10, generator=g) * 3
    y = torch.randint(0, 10, (32,), generator=g)
    tckd, nckd = tckd_nckd(s, t, y, T)
    torch.testing.assert_close(dkd_loss(s, t, y, T=T, alpha=1.0, tckd_weight=1.0, nckd_weight=beta),
                               (tckd + beta * nckd) * T * T, rtol=1e-4, atol=1e-6)
    # KD's KL is exactly TCKD + (1 - p_target) * NCKD, example by example (Zhao et al. 2022, eq. 7)
    for i in range(5):
        one_t, one_n = tckd_nckd(s[i:i + 1], t[i:i + 1], y[i:i + 1], T)
        p_target = F.softmax(t[i] / T, 0)[y[i]]
        torch.testing.assert_close(soft_kl(s[i:i + 1], t[i:i + 1], T) / T**2, one_t + (1 - p_target) * one_n,
                                   rtol=1e-4, atol=1e-6)


# Notebook 09: int8 scale and zero point by hand, against the package (which matches onnxruntime: tests/test_deploy.py)

@pytest.mark.parametrize("lo, hi", [(-1.0, 3.0), (-7.25, 11.5), (0.5, 2.0), (-3.0, -0.1), (-0.8102, 2.0227)])
def test_int8_scale_zero_point_matches_package(lo, hi):
    from distill_utils.deploy import int8_params, quantize_tensor
    int8_scale_zero_point = notebook_function("09_quantize_and_deploy.ipynb", "int8_scale_zero_point")
    quantize = notebook_function("09_quantize_and_deploy.ipynb", "quantize")
    scale, zero_point = int8_scale_zero_point(lo, hi)
    assert scale == pytest.approx(int8_params(lo, hi)[0], rel=1e-6) and zero_point == int8_params(lo, hi)[1]
    x = torch.linspace(lo - 1, hi + 1, 1001)
    assert torch.equal(quantize(x, scale, zero_point), torch.from_numpy(quantize_tensor(x.numpy(), scale, zero_point)))


# Notebook 11: the activation-importance rules written out, against distill_utils.tasks.transformer.importance

def test_vit_importance_rules_match_package():
    from distill_utils.tasks.transformer.importance import block_influence, head_score, neuron_score
    nb = "11_transformer_compression.ipynb"
    g = torch.Generator().manual_seed(0)
    attn_out, hidden = torch.randn(5, 17, 4 * 8, generator=g), torch.randn(5, 17, 64, generator=g)
    x_in, x_out = torch.randn(5, 17, 32, generator=g), torch.randn(5, 17, 32, generator=g)
    torch.testing.assert_close(notebook_function(nb, "head_importance")(attn_out, 4), head_score(attn_out, 4))
    torch.testing.assert_close(notebook_function(nb, "neuron_importance")(hidden), neuron_score(hidden))
    torch.testing.assert_close(notebook_function(nb, "block_influence")(x_in, x_out), block_influence(x_in, x_out))
    # and by definition: head h's score is the mean over images and tokens of the norm of its own slice
    by_definition = torch.stack([attn_out[..., 8 * h:8 * (h + 1)].norm(dim=-1).mean() for h in range(4)])
    torch.testing.assert_close(head_score(attn_out, 4), by_definition)
