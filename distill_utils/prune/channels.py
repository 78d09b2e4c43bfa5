"""Channel (structured) pruning that returns a physically smaller model (notebook 06).

For our sequential CNNs (``ConvNet``: conv -> BN -> ... blocks, then Flatten -> Linear) this
module does it from scratch: score every output channel of every conv, keep the best, and
rebuild three things per conv: its output channels, the matching BatchNorm entries, and the
next layer's input channels (the next conv, or the Linear after Flatten, where each channel
owns H*W consecutive inputs). The detector of notebook 12 is the same trunk (``features``)
read by conv heads ``Sequential(conv, ReLU, conv)``: each head's hidden conv is pruned too
(all heads keep one width), and each head's output conv keeps every output channel (they are
the heatmap classes, sizes and offsets). Other networks (residual connections, e.g.
torchvision's resnet18) go to Torch-Pruning's dependency graph instead of a home-made graph walker.

``amount`` is the fraction of each conv's output channels removed (``scope="layer"``), or of
all convs' channels together, ranked after normalising each layer's scores by their mean
(``scope="global"``). At least ``min_channels`` stay in every layer; the convs in ``ignored``
keep all of theirs.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from distill_utils.models import ConvNet
from distill_utils.prune.amount import check_amount


class L1Norm:
    """Sum of |w| of each output channel's filter."""
    def __call__(self, conv, bn):
        return conv.weight.detach().abs().sum((1, 2, 3))


class L2Norm:
    """Euclidean norm of each output channel's filter."""
    def __call__(self, conv, bn):
        return conv.weight.detach().pow(2).sum((1, 2, 3)).sqrt()


class BNScale:
    """|gamma| of the BatchNorm after the conv (network slimming, Liu et al. 2017); a conv without
    one (a detector head's hidden conv) is scored by its filters' L1 norm."""
    def __call__(self, conv, bn):
        return conv.weight.detach().abs().sum((1, 2, 3)) if bn is None else bn.weight.detach().abs()


class RandomScore:
    """Random scores: the baseline every criterion must beat."""
    def __init__(self, seed: int = 0):
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, conv, bn):
        return torch.rand(conv.out_channels, generator=self.gen)


CRITERIA = {"l1": L1Norm, "l2": L2Norm, "bn": BNScale, "random": RandomScore}


def _criterion(criterion):
    if callable(criterion):
        return criterion
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {sorted(CRITERIA)} "
                         "or pass a callable(conv, bn)")
    return CRITERIA[criterion]()


def _keep_counts(scores, amount, scope, min_channels, kept=()):
    """How many channels each layer keeps; the layers at the indices ``kept`` keep all."""
    if scope == "layer":
        amounts = amount if isinstance(amount, (list, tuple)) else [amount] * len(scores)
        return [len(s) if i in kept else max(min_channels, len(s) - round(a * len(s)))
                for i, (s, a) in enumerate(zip(scores, amounts))]
    if scope != "global" or isinstance(amount, (list, tuple)):
        raise ValueError(f"scope must be 'layer' (amount: one ratio or one per conv) or 'global' (one ratio); "
                         f"got scope={scope!r}, amount={amount!r}")
    normalised = [s / s.mean().clamp_min(1e-12) for s in scores]
    pool = torch.cat([n for i, n in enumerate(normalised) if i not in kept] or [torch.zeros(0)])
    n_remove = round(amount * len(pool))
    threshold = pool.sort().values[n_remove - 1] if n_remove else -float("inf")
    return [len(s) if i in kept else max(min_channels, int((n > threshold).sum()))
            for i, (s, n) in enumerate(zip(scores, normalised))]


def _slice_conv(conv, keep_out=None, keep_in=None):
    w = conv.weight.detach()
    keep_out = torch.arange(w.shape[0]) if keep_out is None else keep_out
    keep_in = torch.arange(w.shape[1]) if keep_in is None else keep_in
    new = nn.Conv2d(len(keep_in), len(keep_out), conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, bias=conv.bias is not None)
    new.weight.data = w[keep_out][:, keep_in].clone()
    if conv.bias is not None:
        new.bias.data = conv.bias.detach()[keep_out].clone()
    return new


def _slice_bn(bn, keep):
    new = nn.BatchNorm2d(len(keep), bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(new, name).data = getattr(bn, name).detach()[keep].clone()
    new.num_batches_tracked = bn.num_batches_tracked.clone()
    return new


def _slice_linear_inputs(linear, keep_channels, per_channel):
    """A Linear after Flatten: channel c owns inputs c*per_channel ... (c+1)*per_channel - 1."""
    cols = (keep_channels[:, None] * per_channel + torch.arange(per_channel)).flatten()
    new = nn.Linear(len(cols), linear.out_features, bias=linear.bias is not None)
    new.weight.data = linear.weight.detach()[:, cols].clone()
    if linear.bias is not None:
        new.bias.data = linear.bias.detach().clone()
    return new


def _trunk_and_heads(model):
    """``(blocks, heads)`` of a detector of notebook 12: ``features`` conv-BN blocks and, as every
    other child, conv heads ``Sequential(conv, ReLU, conv)`` of one hidden width reading the last
    block; None for any other network."""
    features = getattr(model, "features", None)
    blocks = list(features) if isinstance(features, nn.Sequential) else []
    if not blocks or not all(isinstance(b, nn.Sequential) and len(b) >= 2 and isinstance(b[0], nn.Conv2d)
                             and b[0].groups == 1 and isinstance(b[1], nn.BatchNorm2d) for b in blocks):
        return None
    heads = [m for name, m in model.named_children() if name != "features"]
    if not heads or not all(isinstance(h, nn.Sequential) and len(h) == 3 and isinstance(h[0], nn.Conv2d)
                            and isinstance(h[2], nn.Conv2d) and h[0].groups == h[2].groups == 1
                            and not list(h[1].parameters()) for h in heads):
        return None
    if {h[0].in_channels for h in heads} != {blocks[-1][0].out_channels} or len({h[0].out_channels for h in heads}) > 1:
        return None
    return blocks, heads


def _layer_amounts(amount, n_blocks, n_heads):
    """One ratio per scored conv: the blocks', then every head's hidden conv (one ratio for all heads)."""
    if not isinstance(amount, (list, tuple)):
        return amount
    want = n_blocks + (1 if n_heads else 0)
    if len(amount) != want:
        layers = f"{n_blocks} conv layers" + (" and the heads' hidden convs (one ratio for all)" if n_heads else "")
        raise ValueError(f"amount has {len(amount)} per-layer ratios but the model has {want}: {layers}")
    return list(amount[:n_blocks]) + [amount[-1]] * n_heads if n_heads else list(amount)


def _prune_trunk(model, amount, criterion, scope, min_channels, ignored):
    """A ConvNet (with its Linear after Flatten) or a detector (with its heads), channels removed."""
    pruned = copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format)
    blocks, heads = _trunk_and_heads(pruned) or (list(pruned.features), [])
    layers = [(b[0], b[1]) for b in blocks] + [(h[0], None) for h in heads]
    original = _trunk_and_heads(model) or (list(model.features), [])
    convs = [b[0] for b in original[0]] + [h[0] for h in original[1]]  # ``ignored`` names the model's own modules
    kept = {i for i, conv in enumerate(convs) if any(conv is m for m in ignored)}
    if kept & set(range(len(blocks), len(layers))):
        kept |= set(range(len(blocks), len(layers)))  # the heads share one hidden width
    scores = [criterion(conv, bn).float().cpu() for conv, bn in layers]
    counts = _keep_counts(scores, _layer_amounts(amount, len(blocks), len(heads)), scope, min_channels, kept)
    if heads:  # one hidden width for every head
        counts[len(blocks):] = [round(sum(counts[len(blocks):]) / len(heads))] * len(heads)
    keeps = [s.argsort(descending=True)[:k].sort().values  # the best k, in their original order
             for s, k in zip(scores, counts)]
    keep_in = None
    for block, keep in zip(blocks, keeps):
        block[0] = _slice_conv(block[0], keep, keep_in)
        block[1] = _slice_bn(block[1], keep)
        keep_in = keep
    for head, keep in zip(heads, keeps[len(blocks):]):
        head[0], head[2] = _slice_conv(head[0], keep, keep_in), _slice_conv(head[2], None, keep)
    if not heads:
        linear_index = next(i for i, m in enumerate(pruned.classifier) if isinstance(m, nn.Linear))
        linear = pruned.classifier[linear_index]
        per_channel = linear.in_features // model.features[-1][0].out_channels
        pruned.classifier[linear_index] = _slice_linear_inputs(linear, keep_in, per_channel)
    if hasattr(model, "spec"):
        kwargs = {**model.spec["kwargs"], "channels": [len(k) for k in keeps[:len(blocks)]]}
        if heads:
            kwargs["head_channels"] = counts[-1]
        pruned.spec = {"name": model.spec["name"], "kwargs": kwargs}
    return pruned


def _prune_with_torch_pruning(model, amount, criterion, example_input, scope, ignored):
    import torch_pruning as tp
    if example_input is None:
        raise ValueError("this model is not one of our ConvNets or detectors, so Torch-Pruning traces it: "
                         "pass example_input, e.g. torch.zeros(1, 3, 224, 224)")
    importance = {"l1": tp.importance.MagnitudeImportance(p=1), "l2": tp.importance.MagnitudeImportance(p=2),
                  "bn": tp.importance.BNScaleImportance(), "random": tp.importance.RandomImportance()}
    if criterion not in importance:
        raise ValueError(f"criterion {criterion!r} has no Torch-Pruning equivalent; choose one of {sorted(importance)}")
    names = {id(m): name for name, m in model.named_modules()}
    pruned = copy.deepcopy(model).cpu().eval()
    copies = dict(pruned.named_modules())
    keep = [copies[names[id(m)]] for m in ignored]  # the same modules in the copy
    keep += [m for m in pruned.modules() if isinstance(m, nn.Linear)][-1:]  # keep the class outputs
    pruner = tp.pruner.MetaPruner(pruned, example_input.cpu(), importance=importance[criterion], pruning_ratio=amount,
                                  global_pruning=scope == "global", ignored_layers=keep)
    pruner.step()
    return pruned


def _check_ignored(model, ignored) -> list:
    ignored = [ignored] if isinstance(ignored, nn.Module) else list(ignored)
    own = {id(m) for m in model.modules()}
    for m in ignored:
        if not isinstance(m, nn.Module) or id(m) not in own:
            raise ValueError(f"ignored must list modules of the model being pruned (e.g. model.features[0][0]), "
                             f"got {type(m).__name__}")
    return ignored


def prune_channels(model: nn.Module, amount: float, criterion="l1", example_input=None,
                   scope: str = "layer", min_channels: int = 1, ignored=()) -> nn.Module:
    """A new model with ``amount`` of the conv channels removed; ``model`` is left unchanged
    (notebooks 06 and 12).

    ``amount``: one ratio, or with ``scope="layer"`` a list with one ratio per conv layer (for a
    detector, one per backbone block and then one for the heads' hidden convs).
    ``criterion``: ``"l1"``, ``"l2"``, ``"bn"`` (BatchNorm scale), ``"random"``, or a callable
    ``(conv, bn) -> scores`` (one per output channel, higher = keep; ``bn`` is None for a
    detector head's hidden conv). ``ignored``: modules of ``model`` whose output channels all stay
    (a detector's head outputs always do). Our ``ConvNet`` models and the detector of notebook 12
    are pruned by this module, and the new model's ``spec`` records its ``channels`` (and
    ``head_channels``), so its checkpoint rebuilds it; any other network goes to Torch-Pruning,
    which needs ``example_input``.
    """
    check_amount(amount, "channels", per_layer=True)
    if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 1:
        raise ValueError(f"min_channels must be >= 1 so that no layer is emptied; got {min_channels}")
    ignored = _check_ignored(model, ignored)
    if isinstance(model, ConvNet) or _trunk_and_heads(model):
        return _prune_trunk(model, amount, _criterion(criterion), scope, min_channels, ignored)
    return _prune_with_torch_pruning(model, amount, criterion, example_input, scope, ignored)
