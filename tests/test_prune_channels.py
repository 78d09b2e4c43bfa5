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


# --- the detector of notebook 12: a conv trunk read by three conv heads --------------------------------------

def detector(seed=0, width=1.0):
    from distill_utils.tasks.detection import build_detector
    set_seed(seed)
    m = build_detector("centernet", num_classes=10, in_channels=1, image_size=32, width=width).eval()
    with torch.no_grad():
        for block in m.features:
            bn = block[1]
            bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.2, 0.2)
        for head in (m.heatmap, m.size, m.offset):
            head[0].bias.uniform_(-0.2, 0.2)
    return m


def centernet_params(channels, head, classes=10, c_in=1):
    """Parameter count of the CenterNet, written out: conv (no bias) + BN per block, three heads."""
    n = 0
    for c in channels:
        n += c_in * c * 9 + 2 * c
        c_in = c
    return n + sum(c_in * head * 9 + head + head * out + out for out in (classes, 2, 2))


def test_detector_loses_channels_but_never_a_head_output():
    model = detector()
    pruned = prune_channels(model, 0.5)
    assert [b[0].out_channels for b in pruned.features] == [8, 16, 32, 32, 32]
    assert {h[0].out_channels for h in (pruned.heatmap, pruned.size, pruned.offset)} == {16}
    assert [h[2].out_channels for h in (pruned.heatmap, pruned.size, pruned.offset)] == [10, 2, 2]
    assert count_params(pruned) == centernet_params((8, 16, 32, 32, 32), 16)
    assert count_params(model) == centernet_params((16, 32, 64, 64, 64), 32)  # the input model is unchanged
    assert pruned(torch.randn(2, 1, 32, 32)).shape == (2, 14, 8, 8)
    assert pruned.spec["kwargs"]["channels"] == [8, 16, 32, 32, 32] and pruned.spec["kwargs"]["head_channels"] == 16


def test_removing_a_detectors_dead_channels_keeps_its_outputs():
    model = detector()
    with torch.no_grad():  # dead: zero filter, zero BN scale and shift (blocks); zero filter and bias (head hidden)
        for i, channels in {0: [1, 5], 2: [0, 9, 33, 63], 4: list(range(0, 64, 8))}.items():
            block = model.features[i]
            block[0].weight[channels], block[1].weight[channels], block[1].bias[channels] = 0, 0, 0
        for head in (model.heatmap, model.size, model.offset):
            head[0].weight[[3, 30]], head[0].bias[[3, 30]] = 0, 0
    amounts = [2 / 16, 0.0, 4 / 64, 0.0, 8 / 64, 2 / 32]
    pruned = prune_channels(model, amounts, criterion="l1").eval()
    assert [b[0].out_channels for b in pruned.features] == [14, 32, 60, 64, 56] and pruned.size[0].out_channels == 30
    x = torch.randn(3, 1, 32, 32)
    torch.testing.assert_close(pruned(x), model(x), rtol=1e-5, atol=1e-5)


def test_pruned_detector_saves_loads_and_gives_the_same_outputs(tmp_path):
    pruned = prune_channels(detector(), 0.3, criterion="bn", scope="global")
    loaded, manifest = load_checkpoint(save_checkpoint(pruned, tmp_path / "det.safetensors"))
    kwargs = manifest["architecture"]["kwargs"]
    assert kwargs["channels"] == [b[0].out_channels for b in pruned.features]
    assert kwargs["head_channels"] == pruned.heatmap[0].out_channels == pruned.offset[0].out_channels
    assert type(loaded).__name__ == "CenterNet" and count_params(loaded) == count_params(pruned)
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(loaded(x), pruned.eval()(x))


def test_detector_same_channels_as_torch_pruning_with_head_outputs_ignored():
    tp = pytest.importorskip("torch_pruning")
    ours = prune_channels(detector(), 0.5, criterion="l1")
    ref = detector()
    imp = tp.importance.MagnitudeImportance(p=1, normalizer=None, group_reduction="first")
    tp.pruner.MetaPruner(ref, torch.zeros(1, 1, 32, 32), importance=imp, pruning_ratio=0.5,
                         ignored_layers=[ref.heatmap[2], ref.size[2], ref.offset[2]]).step()
    assert list(ours.state_dict()) == list(ref.state_dict())
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name


def test_ignored_layers_keep_their_channels():
    model = detector()
    pruned = prune_channels(model, 0.5, ignored=[model.features[1][0], model.size[0]])
    assert [b[0].out_channels for b in pruned.features] == [8, 32, 32, 32, 32]
    assert pruned.heatmap[0].out_channels == 32  # the heads share one hidden width, so all keep it
    glob = prune_channels(model, 0.5, scope="global", ignored=[model.features[4][0]])
    assert glob.features[4][0].out_channels == 64
    removed = sum(c - b[0].out_channels for c, b in zip((16, 32, 64, 64), glob.features))
    assert abs(removed + 3 * (32 - glob.heatmap[0].out_channels) - round(0.5 * (176 + 96))) <= 3
    with pytest.raises(ValueError, match="ignored must list modules of the model being pruned"):
        prune_channels(model, 0.5, ignored=[torch.nn.Conv2d(1, 1, 1)])
    with pytest.raises(ValueError, match="5 per-layer ratios but the model has 6: 5 conv layers and the heads"):
        prune_channels(model, [0.1] * 5)
