"""Channel (structured) pruning that returns a physically smaller model (notebook 06).

For our sequential CNNs (``ConvNet``: conv -> BN -> ... blocks, then Flatten -> Linear) this
module does it from scratch: score every output channel of every conv, keep the best, and
rebuild three things per conv: its output channels, the matching BatchNorm entries, and the
next layer's input channels (the next conv, or the Linear after Flatten, where each channel
owns H*W consecutive inputs). Other networks (residual connections, e.g. torchvision's
resnet18) go to Torch-Pruning's dependency graph instead of a home-made graph walker.

``amount`` is the fraction of each conv's output channels removed (``scope="layer"``), or of
all convs' channels together, ranked after normalising each layer's scores by their mean
(``scope="global"``). At least ``min_channels`` stay in every layer.
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
    """|gamma| of the BatchNorm after the conv (network slimming, Liu et al. 2017)."""
    def __call__(self, conv, bn):
        return bn.weight.detach().abs()


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


def _keep_counts(scores, amount, scope, min_channels):
    """How many channels each layer keeps."""
    if scope == "layer":
        amounts = amount if isinstance(amount, (list, tuple)) else [amount] * len(scores)
        if len(amounts) != len(scores):
            raise ValueError(f"amount has {len(amounts)} per-layer ratios but the model has {len(scores)} conv layers")
        return [max(min_channels, len(s) - round(a * len(s))) for s, a in zip(scores, amounts)]
    if scope != "global" or isinstance(amount, (list, tuple)):
        raise ValueError(f"scope must be 'layer' (amount: one ratio or one per conv) or 'global' (one ratio); "
                         f"got scope={scope!r}, amount={amount!r}")
    normalised = torch.cat([s / s.mean().clamp_min(1e-12) for s in scores])
    n_remove = round(amount * len(normalised))
    threshold = normalised.sort().values[n_remove - 1] if n_remove else -float("inf")
    return [max(min_channels, int((s / s.mean().clamp_min(1e-12) > threshold).sum())) for s in scores]


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


def _prune_convnet(model, amount, criterion, scope, min_channels):
    pruned = copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format)
    blocks = list(pruned.features)
    scores = [criterion(b[0], b[1]).float().cpu() for b in blocks]
    keeps = [s.argsort(descending=True)[:k].sort().values  # the best k, in their original order
             for s, k in zip(scores, _keep_counts(scores, amount, scope, min_channels))]
    keep_in = None
    for block, keep in zip(blocks, keeps):
        block[0] = _slice_conv(block[0], keep, keep_in)
        block[1] = _slice_bn(block[1], keep)
        keep_in = keep
    linear_index = next(i for i, m in enumerate(pruned.classifier) if isinstance(m, nn.Linear))
    linear = pruned.classifier[linear_index]
    per_channel = linear.in_features // model.features[-1][0].out_channels
    pruned.classifier[linear_index] = _slice_linear_inputs(linear, keep_in, per_channel)
    if hasattr(model, "spec"):
        kwargs = {**model.spec["kwargs"], "channels": [len(k) for k in keeps]}
        pruned.spec = {"name": model.spec["name"], "kwargs": kwargs}
    return pruned


def _prune_with_torch_pruning(model, amount, criterion, example_input, scope):
    import torch_pruning as tp
    if example_input is None:
        raise ValueError("this model is not a sequential ConvNet, so Torch-Pruning traces it: "
                         "pass example_input, e.g. torch.zeros(1, 3, 224, 224)")
    importance = {"l1": tp.importance.MagnitudeImportance(p=1), "l2": tp.importance.MagnitudeImportance(p=2),
                  "bn": tp.importance.BNScaleImportance(), "random": tp.importance.RandomImportance()}
    if criterion not in importance:
        raise ValueError(f"criterion {criterion!r} has no Torch-Pruning equivalent; choose one of {sorted(importance)}")
    pruned = copy.deepcopy(model).cpu().eval()
    last_linear = [m for m in pruned.modules() if isinstance(m, nn.Linear)][-1:]  # keep the class outputs
    pruner = tp.pruner.MetaPruner(pruned, example_input.cpu(), importance=importance[criterion], pruning_ratio=amount,
                                  global_pruning=scope == "global", ignored_layers=last_linear)
    pruner.step()
    return pruned


def prune_channels(model: nn.Module, amount: float, criterion="l1", example_input=None,
                   scope: str = "layer", min_channels: int = 1) -> nn.Module:
    """A new model with ``amount`` of the conv channels removed; ``model`` is left unchanged.

    ``amount``: one ratio, or with ``scope="layer"`` a list with one ratio per conv layer.
    ``criterion``: ``"l1"``, ``"l2"``, ``"bn"`` (BatchNorm scale), ``"random"``, or a callable
    ``(conv, bn) -> scores`` (one per output channel, higher = keep). Our ``ConvNet`` models are
    pruned by this module; any other network by Torch-Pruning, which needs ``example_input``.
    """
    check_amount(amount, "channels", per_layer=True)
    if min_channels < 1:
        raise ValueError(f"min_channels must be >= 1 so that no layer is emptied; got {min_channels}")
    if isinstance(model, ConvNet):
        pruned = _prune_convnet(model, amount, _criterion(criterion), scope, min_channels)
    else:
        pruned = _prune_with_torch_pruning(model, amount, criterion, example_input, scope)
    return pruned
