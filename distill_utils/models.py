"""Teacher and student models, built by name so a checkpoint can rebuild them.

Taught in notebook 01 (teacher) and 03 (students).

Every model here is a plain sequence of blocks, which keeps channel pruning
(notebook 06) readable: ``model.features`` is an ``nn.Sequential`` of blocks and
``model.classifier`` an ``nn.Sequential`` starting with ``nn.Flatten``.
``model(x, return_features=True)`` returns ``(logits, [one tensor per block])``
for feature distillation (notebook 04).
"""
from __future__ import annotations

from torch import nn

__all__ = ["ConvNet", "MLP", "build_model", "MODELS", "model_spec"]


def _conv_block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)]
    if pool:  # max-pool before ReLU: the same result (both are monotone), ReLU on 4x fewer values
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.ReLU(inplace=True))


class ConvNet(nn.Module):
    """Conv-BN-MaxPool-ReLU blocks, then Flatten -> Linear -> ReLU -> Dropout -> Linear."""

    def __init__(self, channels=(32, 64, 128), hidden=512, num_classes=10,
                 in_channels=1, image_size=28, dropout=0.25):
        super().__init__()
        blocks, c_in, size = [], in_channels, image_size
        for c_out in channels:
            blocks.append(_conv_block(c_in, c_out, pool=True))
            c_in, size = c_out, size // 2
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c_in * size * size, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, x, return_features: bool = False):
        feats = []
        for block in self.features:
            x = block(x)
            feats.append(x)
        logits = self.classifier(x)  # (batch, classes)
        return (logits, feats) if return_features else logits


class MLP(nn.Module):
    """Flatten -> (Linear -> ReLU) per hidden layer -> Linear."""

    def __init__(self, hidden=(256,), num_classes=10, in_channels=1, image_size=28):
        super().__init__()
        sizes = [in_channels * image_size * image_size, *hidden]
        self.flatten = nn.Flatten()
        self.features = nn.Sequential(*[nn.Sequential(nn.Linear(a, b), nn.ReLU(inplace=True))
                                        for a, b in zip(sizes, sizes[1:])])
        self.head = nn.Linear(sizes[-1], num_classes)

    def forward(self, x, return_features: bool = False):
        x = self.flatten(x)
        feats = []
        for block in self.features:
            x = block(x)
            feats.append(x)
        logits = self.head(x)  # (batch, classes)
        return (logits, feats) if return_features else logits


def _scaled(values, width):
    return tuple(max(1, round(v * width)) for v in values)


def teacher_cnn(num_classes=10, in_channels=1, image_size=28, width=1.0, dropout=0.25, channels=None):
    """The default teacher: about 0.7M parameters on 28x28 inputs (notebook 01).

    ``channels`` (one count per block) overrides the width-scaled ones; channel pruning
    (notebook 06) records its result this way."""
    return ConvNet(tuple(channels or _scaled((32, 64, 128), width)), round(512 * width), num_classes,
                   in_channels, image_size, dropout)


def student_cnn(num_classes=10, in_channels=1, image_size=28, width=1.0, dropout=0.0, channels=None):
    """A small CNN; ``width`` scales every layer (width=1: 8-16-32 channels, 64 hidden)."""
    return ConvNet(tuple(channels or _scaled((8, 16, 32), width)), max(1, round(64 * width)), num_classes,
                   in_channels, image_size, dropout)


def student_mlp(num_classes=10, in_channels=1, image_size=28, width=1.0, hidden=(128,)):
    """An MLP student; ``width`` scales the hidden sizes (width=1: one layer of 128)."""
    return MLP(_scaled(hidden, width), num_classes, in_channels, image_size)


MODELS = {"teacher_cnn": teacher_cnn, "student_cnn": student_cnn, "student_mlp": student_mlp}


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name; the name and kwargs are kept on the model.

    ``model_spec(model)`` returns them, and checkpoints store them so that
    ``load_checkpoint`` can rebuild the same architecture (notebook 01).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    try:
        model = MODELS[name](**kwargs)
    except TypeError as err:
        raise TypeError(f"bad arguments for model {name!r}: {err}") from None
    model.spec = {"name": name, "kwargs": dict(kwargs)}
    return model


def model_spec(model: nn.Module) -> dict:
    """The ``{"name", "kwargs"}`` a model was built with, or an error saying how to get one."""
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError(f"{type(model).__name__} was not made by build_model(), so a checkpoint "
                         "cannot record how to rebuild it; build it with distill_utils.models.build_model")
    return spec
