import pytest
import torch

from distill_utils.measure import count_params
from distill_utils.models import build_model
from distill_utils.provenance.checkpoints import load_checkpoint, save_checkpoint
from distill_utils.prune import prune_channels
from distill_utils.train import set_seed


def teacher(seed=0):
    set_seed(seed)
    m = build_model("teacher_cnn").eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics and scales
        for block in m.features:
            bn = block[1]
            bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.2, 0.2)
    return m


def convnet_params(channels, hidden=512, classes=10, size=28, c_in=1):
    """Parameter count of teacher_cnn's architecture, written out."""
    n, spatial = 0, size
    for c in channels:
        n += c_in * c * 9 + 2 * c  # conv (no bias) + BN weight and bias
        c_in, spatial = c, spatial // 2
    return n + (c_in * spatial * spatial * hidden + hidden) + (hidden * classes + classes)


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn", "random"])
def test_smaller_model_with_exact_parameter_count(criterion):
    model = teacher()
    pruned = prune_channels(model, 0.5, criterion=criterion)
    assert [b[0].out_channels for b in pruned.features] == [16, 32, 64]
    assert count_params(pruned) == convnet_params((16, 32, 64))
    assert pruned(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert count_params(model) == convnet_params((32, 64, 128))  # the input model is unchanged


def test_zero_amount_changes_nothing():
    model = teacher()
    x = torch.randn(4, 1, 28, 28)
    pruned = prune_channels(model, 0.0).eval()
    torch.testing.assert_close(pruned(x), model(x))


def test_removing_dead_channels_keeps_outputs():
    model = teacher()
    dead = {0: [3, 7], 1: [0, 10, 63], 2: list(range(0, 128, 4))}
    with torch.no_grad():  # a dead channel: zero filter, zero BN scale and shift -> outputs exactly 0
        for i, channels in dead.items():
            block = model.features[i]
            block[0].weight[channels], block[1].weight[channels], block[1].bias[channels] = 0, 0, 0
    amounts = [len(dead[i]) / model.features[i][0].out_channels for i in range(3)]
    pruned = prune_channels(model, amounts, criterion="l1").eval()
    assert [b[0].out_channels for b in pruned.features] == [30, 61, 96]
    x = torch.randn(5, 1, 28, 28)
    torch.testing.assert_close(pruned(x), model(x), rtol=1e-5, atol=1e-5)


def test_global_scope_and_floor():
    model = teacher()
    pruned = prune_channels(model, 0.6, scope="global")
    counts = [b[0].out_channels for b in pruned.features]
    assert abs(sum(counts) - round(0.4 * 224)) <= 2 and len(set(c / o for c, o in zip(counts, (32, 64, 128)))) > 1
    floor = prune_channels(model, 0.95, min_channels=4)  # 32 channels - round(0.95 * 32) = 2 < 4
    assert [b[0].out_channels for b in floor.features] == [4, 4, 6]  # 64 -> 3 and 128 -> 6 before the floor


def test_pruned_checkpoint_rebuilds(tmp_path):
    pruned = prune_channels(teacher(), 0.5)
    loaded, manifest = load_checkpoint(save_checkpoint(pruned, tmp_path / "p.safetensors"))
    assert manifest["architecture"]["kwargs"]["channels"] == [16, 32, 64]
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x), pruned.eval()(x))


def test_same_channels_as_torch_pruning():
    tp = pytest.importorskip("torch_pruning")
    model = teacher()
    ours = prune_channels(model, 0.5, criterion="l1")
    ref = teacher()
    imp = tp.importance.MagnitudeImportance(p=1, normalizer=None, group_reduction="first")
    tp.pruner.MetaPruner(ref, torch.zeros(1, 1, 28, 28), importance=imp, pruning_ratio=0.5,
                         ignored_layers=[ref.classifier[1], ref.classifier[4]]).step()  # we prune conv channels only
    for a, b in zip(ours.state_dict().items(), ref.state_dict().items()):
        assert a[0] == b[0] and torch.equal(a[1], b[1]), a[0]


def test_resnet18_through_torch_pruning():
    pytest.importorskip("torch_pruning")
    from torchvision.models import resnet18
    model = resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    pruned = prune_channels(model, 0.5, example_input=x)
    assert pruned(x).shape == (1, 10)
    assert count_params(pruned) < 0.4 * count_params(model)
    assert count_params(model) == sum(p.numel() for p in resnet18(num_classes=10).parameters())
    with pytest.raises(ValueError, match="pass example_input"):
        prune_channels(model, 0.5)


def test_bad_arguments():
    model = teacher()
    for amount in (-0.1, 1.0, [0.5, 1.2, 0.1]):
        with pytest.raises(ValueError, match="amount = .* must be >= 0 and < 1 \\(the fraction of channels removed"):
            prune_channels(model, amount)
    with pytest.raises(ValueError, match="unknown criterion 'taylor'"):
        prune_channels(model, 0.5, criterion="taylor")
    with pytest.raises(ValueError, match="2 per-layer ratios but the model has 3"):
        prune_channels(model, [0.1, 0.2])
    with pytest.raises(ValueError, match="min_channels"):
        prune_channels(model, 0.5, min_channels=0)
