
import pytest
import torch
from torch.nn.utils import prune

from conftest import tiny_dataset
from distill_utils.models import build_model
from distill_utils.provenance.checkpoints import load_checkpoint, save_checkpoint
from distill_utils.prune import (
    cubic_sparsity,
    make_permanent,
    prunable_layers,
    prune_gradually,
    prune_iteratively,
    prune_magnitude,
    sparsity,
)
from distill_utils.train import set_seed


def model(seed=0):
    set_seed(seed)
    return build_model("student_cnn", width=2.0)


def masks(m):
    return {name: mod.weight_mask.clone() for name, mod in prunable_layers(m)}


@pytest.mark.parametrize("amount", [0.0, 0.3, 0.9, 1.0])
def test_layer_masks_match_torch(amount):
    ours, ref = model(), model()
    prune_magnitude(ours, amount, scope="layer")
    for _, mod in prunable_layers(ref):
        prune.l1_unstructured(mod, "weight", amount=amount)
    for (name, a), b in zip(masks(ours).items(), masks(ref).values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("amount", [0.25, 0.9])
def test_global_masks_match_torch_and_sparsity_is_exact(amount):
    ours, ref = model(), model()
    prune_magnitude(ours, amount, scope="global")
    prune.global_unstructured([(m, "weight") for _, m in prunable_layers(ref)],
                              pruning_method=prune.L1Unstructured, amount=amount)
    for a, b in zip(masks(ours).values(), masks(ref).values()):
        assert torch.equal(a, b)
    total = sum(m.weight.numel() for _, m in prunable_layers(ours))
    zeros = sum(int((m.weight == 0).sum()) for _, m in prunable_layers(ours))
    assert zeros == round(amount * total)
    assert sparsity(ours)["global"] == pytest.approx(zeros / total)
    # global scope prunes layers unevenly; layer scope does not
    assert len({round(v, 2) for k, v in sparsity(ours).items() if k != "global"}) > 1


def test_amount_is_total_not_incremental():
    m = model()
    prune_magnitude(m, 0.5)
    prune_magnitude(m, 0.8)
    for name, value in sparsity(m).items():
        if name != "global":
            n = dict(prunable_layers(m))[name].weight.numel()
            assert value == pytest.approx(round(0.8 * n) / n)
    prune_magnitude(m, 0.8, scope="global")  # nothing more to do
    assert sparsity(m)["global"] == pytest.approx(0.8, abs=1e-3)


def test_layer_type_choice():
    m = model()
    prune_magnitude(m, 0.5, layer_types=("linear",))
    s = sparsity(m)
    assert s["features.0.0"] == 0 and s["classifier.1"] == pytest.approx(0.5, abs=1e-3)
    assert set(sparsity(m, layer_types=("linear",))) == {"classifier.1", "classifier.4", "global"}


def test_zeros_survive_permanent_save_and_load(tmp_path):
    m = prune_magnitude(model(), 0.7, scope="global")
    x = torch.randn(4, 1, 28, 28)
    m.eval()
    before = m(x)
    make_permanent(m)
    assert not any(hasattr(mod, "weight_orig") for _, mod in prunable_layers(m))
    torch.testing.assert_close(m(x), before)
    assert sparsity(m)["global"] == pytest.approx(0.7, abs=1e-3)
    loaded, _ = load_checkpoint(save_checkpoint(m, tmp_path / "pruned.safetensors"))
    assert sparsity(loaded) == sparsity(m)


@pytest.mark.parametrize("teacher", [False, True])
def test_masked_weights_stay_zero_while_fine_tuning(teacher):
    from distill_utils.train import fit
    data = tiny_dataset(64)
    m = prune_magnitude(model(), 0.8, scope="global")
    zero = {name: mod.weight_mask == 0 for name, mod in prunable_layers(m)}
    if teacher:
        from distill_utils.distill import distill
        distill(m, model(seed=1).eval(), data, epochs=2, batch_size=16, progress=False, device="cpu")
    else:
        fit(m, data, epochs=2, batch_size=16, progress=False, device="cpu")
    for name, mod in prunable_layers(m):
        assert (mod.weight[zero[name]] == 0).all()
        assert (mod.weight[~zero[name]] != 0).any()


def test_bad_arguments():
    m = model()
    for amount, message in ((-0.1, "must be >= 0 and <= 1 \\(the fraction of weights removed\\)"),
                            (1.5, "must be >= 0 and <= 1"), ("half", "must be a number, got str")):
        with pytest.raises(ValueError, match=f"amount = {amount!r} {message}"):
            prune_magnitude(m, amount)
    with pytest.raises(ValueError, match="unknown layer types \\['lstm'\\]"):
        prune_magnitude(m, 0.5, layer_types=("lstm",))
    with pytest.raises(ValueError, match="scope must be 'layer' or 'global'"):
        prune_magnitude(m, 0.5, scope="channel")


def test_cubic_schedule():
    assert cubic_sparsity(0, 10, 0.9) == 0.0
    assert cubic_sparsity(10, 10, 0.9) == pytest.approx(0.9)
    assert cubic_sparsity(20, 10, 0.9) == pytest.approx(0.9)
    assert cubic_sparsity(5, 10, 0.8) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    values = [cubic_sparsity(t, 10, 0.9) for t in range(11)]
    steps = [b - a for a, b in zip(values, values[1:])]
    assert all(s > 0 for s in steps) and steps == sorted(steps, reverse=True)  # fast first, then slower


def test_iterative_and_gradual_reach_the_target():
    data = tiny_dataset(64)
    m = model()
    rows = prune_iteratively(m, data, 0.75, rounds=3, epochs_per_round=1, batch_size=16, progress=False, device="cpu")
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert rows[0]["sparsity"] < rows[1]["sparsity"] < rows[2]["sparsity"] == pytest.approx(0.75, abs=1e-3)
    g = model()
    history = prune_gradually(g, data, 0.6, epochs=4, prune_every=2, batch_size=16, progress=False, device="cpu")
    assert len(history) == 4 and sparsity(g)["global"] == pytest.approx(0.6, abs=1e-3)
