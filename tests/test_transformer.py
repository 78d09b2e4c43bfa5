"""The ViT, its importance scores, width and depth pruning, and dynamic int8 (distill_utils.tasks.transformer,
distill_utils.deploy.dynamic; notebook 11)."""
import copy
import math

import numpy as np
import onnx
import pytest
import torch

from conftest import tiny_dataset
from distill_utils import measure
from distill_utils.common.rules import RuleError
from distill_utils.data import Dataset, Split
from distill_utils.deploy import DeployError, predict_onnx
from distill_utils.deploy.dynamic import dynamic_int8, dynamic_runners, quantize_dynamic_torch
from distill_utils.distill import distill
from distill_utils.tasks.transformer import MODELS, build_vit, vit
from distill_utils.tasks.transformer.importance import (
    activation_scores,
    block_influence,
    magnitude_scores,
    random_scores,
)
from distill_utils.tasks.transformer.prune import keep_best, prune_depth, prune_width
from distill_utils.train import fit


def tiny_vit(pool="cls", seed=0, **kwargs):
    torch.manual_seed(seed)
    model = build_vit(**{"dim": 16, "depth": 3, "heads": 4, "mlp": 24, "pool": pool, **kwargs}).eval()
    with torch.no_grad():  # non-zero biases and LayerNorm affines, so every copied tensor matters
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or name in ("cls",):
                p.add_(torch.randn_like(p) * 0.3)
    return model


def images(n=6, seed=1, shape=(1, 28, 28)):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- the model

def test_vit_shapes_features_and_registry():
    model = tiny_vit()
    logits, feats = model(images(), return_features=True)
    assert logits.shape == (6, 10) and len(feats) == 3
    assert all(f.shape == (6, 17, 16) for f in feats)  # 4x4 patches of 7 pixels + the class token
    assert tiny_vit(pool="mean")(images(), return_features=True)[1][0].shape == (6, 16, 16)
    assert MODELS == {"vit": vit}
    rgb = build_vit(Dataset("rgb", Split(images(2, shape=(3, 32, 32)), torch.zeros(2, dtype=torch.long)),
                            Split(images(2, shape=(3, 32, 32)), torch.zeros(2, dtype=torch.long)),
                            tuple("ab"), (3, 32, 32), "memory"), dim=8, depth=1)
    assert rgb.patch.kernel_size == (4, 4) and rgb.pos.shape == (1, 65, 8) and rgb.head.out_features == 2
    assert build_vit(image_size=96, in_channels=3, stem_stride=3, dim=8, depth=1).patch.kernel_size == (12, 12)


def test_vit_refuses_bad_sizes():
    with pytest.raises(ValueError, match=r"heads has 2 entries but depth is 3: give one number or one per block"):
        vit(depth=3, heads=[2, 2])
    with pytest.raises(ValueError, match=r"mlp = \[4, 0\]: every entry must be an integer >= 1"):
        vit(depth=2, mlp=[4, 0])
    with pytest.raises(ValueError, match=r"patch = 40 is larger than the image \(28x28\)"):
        vit(patch=40)


def test_fit_distill_and_measure_run_on_the_vit():
    ds = tiny_dataset(32)
    teacher, student = tiny_vit(), build_vit(ds, dim=8, depth=1, heads=2)
    assert len(fit(teacher, ds, epochs=1, batch_size=16, progress=False)) == 1
    assert len(distill(student, teacher, ds, epochs=1, batch_size=16, progress=False)) == 1
    g = torch.Generator().manual_seed(0)  # RGB: fit puts the patch conv channels-last, the tokens still work
    x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
    rgb = Dataset("rgb", Split(x, y), Split(x, y), tuple("0123456789"), (3, 32, 32), "memory")
    assert math.isfinite(fit(build_vit(rgb, dim=8, depth=1), rgb, epochs=1, progress=False)[0]["train_loss"])
    model = tiny_vit()
    assert measure.count_params(model) == sum(p.numel() for p in model.parameters())
    # an explicit count, 2 FLOPs per multiply-add: qkv, proj, fc1, fc2 on 17 tokens, the patch conv, the head
    dense = 2 * (17 * 3 * (16 * 48 + 16 * 16 + 16 * 24 + 24 * 16) + 16 * 49 * 16 + 16 * 10)
    attention = 2 * 3 * 2 * (4 * 17 * 17 * 4)  # QK^T and AV, per block: heads x tokens x tokens x head_dim
    assert measure.count_flops(model, images(1)) == dense + attention  # measure registers attention's formula


# ---------------------------------------------------------------- pruning

def zeroed(model, scores, heads, mlp):
    """A copy of ``model`` with the heads and neurons that pruning removes zeroed (their outputs: proj
    columns and fc2 columns)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for block, s_heads, s_mlp in zip(out.blocks, scores["heads"], scores["mlp"]):
            hd = block.attn.head_dim
            for h in set(range(block.attn.heads)) - set(keep_best(s_heads, heads).tolist()):
                block.attn.proj.weight[:, h * hd:(h + 1) * hd] = 0
            removed = sorted(set(range(len(s_mlp))) - set(keep_best(s_mlp, mlp).tolist()))
            block.mlp[2].weight[:, removed] = 0
    return out


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_width_pruning_equals_zeroing_the_removed_units(pool):
    model = tiny_vit(pool)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = random_scores(model, seed=3)
    pruned = prune_width(model, scores, heads=0.5, mlp=0.25)
    assert [b.attn.heads for b in pruned.blocks] == [2, 2, 2]
    assert [b.mlp[0].out_features for b in pruned.blocks] == [18, 18, 18]
    assert pruned.blocks[0].attn.head_dim == 4 and pruned.head.in_features == 16
    x = images()
    with torch.no_grad():
        got, full, reference = pruned(x), model(x), zeroed(model, scores, 0.5, 0.25)(x)
    torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-5)
    assert (got - full).abs().max() > 1e-2  # the removed units did contribute
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the input model is untouched


def test_embedding_pruning_keeps_the_best_channels():
    model = tiny_vit()
    scores = activation_scores(model, images(8))
    pruned = prune_width(model, scores, heads=0.0, mlp=0.0, embed=0.25)
    keep = keep_best(scores["embed"], 0.25)
    assert len(keep) == 12 and torch.equal(keep, scores["embed"].argsort(descending=True)[:12].sort().values)
    # LayerNorm normalises over the kept channels only, so outputs change: check shapes and the copied values
    assert pruned.patch.weight.shape == (12, 1, 7, 7) and pruned.pos.shape == (1, 17, 12)
    assert pruned.blocks[0].attn.qkv.weight.shape == (48, 12) and pruned.head.weight.shape == (10, 12)
    torch.testing.assert_close(pruned.patch.weight, model.patch.weight[keep])
    torch.testing.assert_close(pruned.blocks[1].mlp[0].weight, model.blocks[1].mlp[0].weight[:, keep])
    torch.testing.assert_close(pruned.blocks[2].attn.proj.weight, model.blocks[2].attn.proj.weight[keep])
    assert pruned(images()).shape == (6, 10)


def test_depth_pruning_equals_skipping_blocks():
    model = tiny_vit()
    pruned = prune_depth(model, {"blocks": torch.tensor([0.3, 0.1, 0.5])}, drop=1)  # block 1 scores lowest
    assert len(pruned.blocks) == 2
    x = images()
    with torch.no_grad():
        tokens = model.embed(x)
        for i in (0, 2):
            tokens = model.blocks[i](tokens)
        expected = model.head(model.norm(tokens)[:, 0])
        torch.testing.assert_close(pruned(x), expected, atol=1e-6, rtol=1e-6)


def test_spec_round_trip():
    model = tiny_vit(heads=[4, 2, 4])
    scores = magnitude_scores(model)
    for pruned in (prune_width(model, scores, heads=0.5, mlp=0.5, embed=0.5), prune_depth(model, scores, drop=2)):
        rebuilt = build_vit(**pruned.spec["kwargs"])
        assert shapes(rebuilt) == shapes(pruned)
        rebuilt.load_state_dict(pruned.state_dict())
        torch.testing.assert_close(rebuilt.eval()(images()), pruned(images()))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"heads": -0.1}, "heads = -0.1 must be >= 0 and < 1 (the fraction of heads removed per block; at least one"),
    ({"mlp": 1.0}, "mlp = 1.0 must be >= 0 and < 1 (the fraction of hidden neurons removed per block; at least"),
    ({"embed": "half"}, "embed = 'half' must be a number, got str"),
    ({"heads": None}, "heads = None must be a number, got NoneType"),
])
def test_bad_width_amounts_are_refused(kwargs, message):
    model = tiny_vit()
    with pytest.raises(RuleError) as err:
        prune_width(model, magnitude_scores(model), **kwargs)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize(("drop", "message"), [
    (3, "drop = 3 must be >= 0 and < 3 (blocks removed of 3; one is kept)"),
    (-1, "drop = -1 must be >= 0 and < 3 (blocks removed of 3; one is kept)"),
    (1.5, "drop = 1.5 must be an integer, got float"),
])
def test_bad_depth_amounts_are_refused(drop, message):
    model = tiny_vit()
    with pytest.raises(RuleError) as err:
        prune_depth(model, magnitude_scores(model), drop=drop)
    assert str(err.value) == message


def test_scores_of_another_model_are_refused():
    with pytest.raises(ValueError, match=r"scores\['heads'\] has sizes \[4, 4, 4\], this model has \[2, 2, 2\]"):
        prune_width(tiny_vit(heads=2), magnitude_scores(tiny_vit()))


# ---------------------------------------------------------------- importance

def hand_set_vit():
    """One 7x7 patch, no class token (1 token), dim 2, 2 heads of width 1, 2 hidden neurons: every value by hand.
    The token is the patch bias [3, 1] for any image; attention over one token returns v."""
    model = build_vit(image_size=7, num_classes=3, dim=2, depth=1, heads=2, head_dim=1, mlp=2, pool="mean")
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.patch.bias.copy_(torch.tensor([3.0, 1.0]))
        block = model.blocks[0]
        block.norm1.weight.copy_(torch.tensor([2.0, 0.5]))      # LN([3, 1]) = [1, -1] -> [2, -0.5]
        block.attn.qkv.weight.copy_(torch.tensor([[0, 2], [0, 0], [0, 0], [0, 0], [1, 0], [0, 1.0]]))  # q0; v0, v1
        block.norm2.weight.copy_(torch.tensor([1.0, 3.0]))      # proj = 0: LN([3, 1]) -> [1, -3]
        block.mlp[0].weight.copy_(torch.tensor([[1, 0], [0, 2.0]]))  # hidden pre-activations [1, -6]
        block.mlp[2].bias.copy_(torch.tensor([-2.0, 2.0]))      # fc2 weight 0: block output [3, 1] + [-2, 2] = [1, 3]
        model.norm.weight.fill_(1.0)                            # LN([1, 3]) = [-1, 1]
    return model


def gelu(v):
    return v * 0.5 * (1 + math.erf(v / math.sqrt(2)))


def test_activation_scores_by_hand():
    scores = activation_scores(hand_set_vit(), images(5, shape=(1, 7, 7)), batch_size=2)
    close = dict(atol=1e-4, rtol=1e-4)  # LayerNorm's eps shifts the hand values by ~1e-5
    torch.testing.assert_close(scores["heads"][0], torch.tensor([2.0, 0.5]), **close)  # |v0| = 2, |v1| = 0.5
    torch.testing.assert_close(scores["mlp"][0], torch.tensor([gelu(1.0), abs(gelu(-6.0))]), **close)
    # embed: |norm1| + |norm2| + |norm| per channel
    torch.testing.assert_close(scores["embed"], torch.tensor([2 + 1 + 1, 0.5 + 3 + 1.0]), **close)
    torch.testing.assert_close(scores["blocks"], torch.tensor([1 - 6 / 10]), **close)  # cos([3, 1], [1, 3]) = 0.6
    assert float(block_influence(torch.ones(1, 2, 4), torch.ones(1, 2, 4) * 5)) == pytest.approx(0.0, abs=1e-6)


def test_magnitude_scores_by_hand():
    scores = magnitude_scores(hand_set_vit())
    torch.testing.assert_close(scores["heads"][0], torch.tensor([math.sqrt(4 + 1), 1.0]))  # q0 and v0 rows; v1 row
    torch.testing.assert_close(scores["mlp"][0], torch.tensor([1.0, 2.0]))
    # channel 0: patch bias 3, norm1 2, qkv column 1, norm2 1, fc1 column 1, fc2 bias -2, norm 1
    torch.testing.assert_close(scores["embed"], torch.tensor([math.sqrt(9 + 4 + 1 + 1 + 1 + 4 + 1),
                                                              math.sqrt(1 + 0.25 + 5 + 9 + 4 + 4 + 1)]))
    torch.testing.assert_close(scores["blocks"], torch.tensor([math.sqrt(4.25 + 6 + 10 + 5 + 8)]))


def test_random_scores_are_seeded_and_shaped_like_the_others():
    model = tiny_vit(heads=[4, 2, 1])
    a, b, c = random_scores(model, seed=1), random_scores(model, seed=1), random_scores(model, seed=2)
    m = magnitude_scores(model)
    for kind in ("heads", "mlp"):
        assert [s.shape for s in a[kind]] == [s.shape for s in m[kind]]
        assert all(torch.equal(x, y) for x, y in zip(a[kind], b[kind]))
    assert a["embed"].shape == m["embed"].shape == (16,) and a["blocks"].shape == m["blocks"].shape == (3,)
    assert not torch.equal(a["embed"], c["embed"]) and 0 <= float(a["embed"].min()) <= float(a["embed"].max()) < 1
    with pytest.raises(ValueError, match=r"seed = -1 must be an integer >= 0"):
        random_scores(model, seed=-1)


# ---------------------------------------------------------------- ONNX and dynamic int8

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_vit(depth=2)
    return model, dynamic_int8(model, tmp_path_factory.mktemp("vit"), name="vit")


def test_onnx_export_matches_pytorch(exported):
    model, forms = exported
    x = images(9)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(predict_onnx(forms["onnx_fp32"], x), expected, atol=1e-4, rtol=1e-4)


def test_dynamic_int8_quantizes_the_linears_only(exported):
    model, forms = exported
    x = images(9)
    with torch.no_grad():
        expected = model(x).numpy()
        torch_int8 = forms["torch_int8"](x).numpy()
    onnx_int8 = predict_onnx(forms["onnx_int8"], x)
    scale = np.abs(expected).max()
    for got in (torch_int8, onnx_int8):  # 8-bit weights and activations: a few percent of the logits' range
        assert np.abs(got - expected).max() <= 0.05 * scale
        assert np.abs(got - expected).max() > 0  # it really is quantized
    linears = 4 * 2 + 1  # qkv, proj, fc1, fc2 per block, and the head
    ops = [n.op_type for n in onnx.load(forms["onnx_int8"]).graph.node]
    assert ops.count("MatMulInteger") == linears and ops.count("MatMul") == 2 * 2  # QK^T and AV stay float
    modules = list(forms["torch_int8"].modules())
    assert sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in modules) == linears
    assert not any(type(m) is torch.nn.Linear for m in modules)
    runners = dynamic_runners(forms, x)
    assert sorted(runners) == ["onnx_fp32", "onnx_int8", "torch_fp32", "torch_int8"]


def test_dynamic_refuses_bad_inputs():
    with pytest.raises(DeployError, match=r"quantize_dynamic_torch needs a torch.nn.Module, got str"):
        quantize_dynamic_torch("model.pt")
    with pytest.raises(DeployError, match=r"name = 'a/b' must be a plain file name"):
        dynamic_int8(tiny_vit(), "/nonexistent-never-created", name="a/b")
