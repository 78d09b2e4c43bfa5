"""Teacher and student models, built by name so a checkpoint can rebuild them.

Taught in notebook 01 (teacher) and 03 (students).

Every model here is a plain sequence of blocks, which keeps channel pruning
(notebook 06) readable: ``model.features`` is an ``nn.Sequential`` of blocks and
``model.classifier`` an ``nn.Sequential`` starting with ``nn.Flatten``.
``model(x, return_features=True)`` returns ``(logits, [one tensor per block])``
for feature distillation (notebook 04).

Models follow the data: ``build_model(name, data=ds)`` takes the input shape and the class
count from a ``Dataset``. An input larger than 32x32 gets a stem: the first conv strides by
``stem_stride`` (for the MLP, an average pool) so the blocks see at most about 32x32 and a
96x96 image costs about what a 32x32 one does. 28x28 and 32x32 inputs get none (stride 1):
today's Fashion-MNIST and CIFAR-10 models are unchanged.
"""
from __future__ import annotations

from torch import nn

__all__ = ["ConvNet", "MLP", "build_model", "build_from", "MODELS", "data_kwargs", "model_spec", "stem_stride_for"]

STEM_TARGET = 32  # the blocks see at most about this many pixels per side


def stem_stride_for(image_size: int) -> int:
    """The stride of the stem for square inputs of ``image_size``: 1 up to 63 pixels, then
    ``image_size // 32`` (64 -> 2, 96 -> 3, 224 -> 7). Notebook 01."""
    return max(1, int(image_size) // STEM_TARGET)


def _checked_stride(stem_stride, image_size) -> int:
    stride = stem_stride_for(image_size) if stem_stride is None else stem_stride
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= max(1, image_size):
        raise ValueError(f"stem_stride must be an integer from 1 to image_size ({image_size}), got {stride!r}")
    return stride


def _conv_block(c_in: int, c_out: int, pool: bool, stride: int = 1) -> nn.Sequential:
    # stride 1: a 3x3 conv; stride s > 1: a (2s-1)x(2s-1) conv, so every input pixel is seen
    kernel = 3 if stride == 1 else 2 * stride - 1
    layers = [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out)]
    if pool:  # max-pool before ReLU: the same result (both are monotone), ReLU on 4x fewer values
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.ReLU(inplace=True))


def _through(blocks: nn.Sequential, x):
    """``x`` through each block: the last output and every block's output (for feature distillation)."""
    feats = []
    for block in blocks:
        x = block(x)
        feats.append(x)
    return x, feats


class ConvNet(nn.Module):
    """Conv-BN-MaxPool-ReLU blocks, then Flatten -> Linear -> ReLU -> Dropout -> Linear.

    ``stem_stride``: the first conv's stride (1: none, the blocks see the whole image)."""

    def __init__(self, channels=(32, 64, 128), hidden=512, num_classes=10,
                 in_channels=1, image_size=28, dropout=0.25, stem_stride=1):
        super().__init__()
        blocks, c_in, size = [], in_channels, -(-image_size // stem_stride)  # the stem's output side
        for i, c_out in enumerate(channels):
            blocks.append(_conv_block(c_in, c_out, pool=True, stride=stem_stride if i == 0 else 1))
            c_in, size = c_out, size // 2
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c_in * size * size, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, x, return_features: bool = False):
        x, feats = _through(self.features, x)
        logits = self.classifier(x)  # (batch, classes)
        return (logits, feats) if return_features else logits


class MLP(nn.Module):
    """(AvgPool ->) Flatten -> (Linear -> ReLU) per hidden layer -> Linear.

    ``stem_stride`` > 1 average-pools the input by that factor first (no parameters)."""

    def __init__(self, hidden=(256,), num_classes=10, in_channels=1, image_size=28, stem_stride=1):
        super().__init__()
        side = image_size // stem_stride
        sizes = [in_channels * side * side, *hidden]
        self.pool = nn.AvgPool2d(stem_stride) if stem_stride > 1 else nn.Identity()
        self.flatten = nn.Flatten()
        self.features = nn.Sequential(*[nn.Sequential(nn.Linear(a, b), nn.ReLU(inplace=True))
                                        for a, b in zip(sizes, sizes[1:])])
        self.head = nn.Linear(sizes[-1], num_classes)

    def forward(self, x, return_features: bool = False):
        x, feats = _through(self.features, self.flatten(self.pool(x)))
        logits = self.head(x)  # (batch, classes)
        return (logits, feats) if return_features else logits


def _scaled(values, width):
    return tuple(max(1, round(v * width)) for v in values)


def teacher_cnn(num_classes=10, in_channels=1, image_size=28, width=1.0, dropout=0.25, channels=None,
                stem_stride=None):
    """The default teacher: about 0.7M parameters on 28x28 inputs, 1.1M on 32x32 RGB (notebook 01).

    ``channels`` (one count per block) overrides the width-scaled ones; channel pruning
    (notebook 06) records its result this way. ``stem_stride`` None: ``stem_stride_for(image_size)``."""
    return ConvNet(tuple(channels or _scaled((32, 64, 128), width)), round(512 * width), num_classes,
                   in_channels, image_size, dropout, _checked_stride(stem_stride, image_size))


def student_cnn(num_classes=10, in_channels=1, image_size=28, width=1.0, dropout=0.0, channels=None,
                stem_stride=None):
    """A small CNN; ``width`` scales every layer (width=1: 8-16-32 channels, 64 hidden). Notebook 03."""
    return ConvNet(tuple(channels or _scaled((8, 16, 32), width)), max(1, round(64 * width)), num_classes,
                   in_channels, image_size, dropout, _checked_stride(stem_stride, image_size))


def student_mlp(num_classes=10, in_channels=1, image_size=28, width=1.0, hidden=(128,), stem_stride=None):
    """An MLP student; ``width`` scales the hidden sizes (width=1: one layer of 128). Notebook 03."""
    return MLP(_scaled(hidden, width), num_classes, in_channels, image_size, _checked_stride(stem_stride, image_size))


MODELS = {"teacher_cnn": teacher_cnn, "student_cnn": student_cnn, "student_mlp": student_mlp}


def data_kwargs(data) -> dict:
    """``num_classes``, ``in_channels``, ``image_size`` and ``stem_stride`` for a ``Dataset`` (notebook 01)."""
    shape = getattr(data, "input_shape", None)
    if not isinstance(shape, (tuple, list)) or len(shape) != 3 or not hasattr(data, "num_classes"):
        raise TypeError(f"data must be a Dataset (with input_shape (C, H, W) and classes), got {type(data).__name__}")
    c, h, w = shape
    if h != w:
        raise ValueError(f"the models here take square images; this dataset's are {h}x{w}")
    return {"num_classes": data.num_classes, "in_channels": c, "image_size": h, "stem_stride": stem_stride_for(h)}


def build_model(name: str, data=None, **kwargs) -> nn.Module:
    """Build a registered model by name; the name and kwargs are kept on the model.

    ``data`` (a ``Dataset``) fills in what is not given: the class count, the input channels and
    size, and the stem (``data_kwargs``). ``model_spec(model)`` returns the name and every kwarg
    used, and checkpoints store them so that ``load_checkpoint`` can rebuild the same
    architecture (notebook 01).
    """
    return build_from(MODELS, name, data, **kwargs)


def build_from(builders: dict, name: str, data=None, **kwargs) -> nn.Module:
    """``build_model`` over another registry of builders (``distill_utils.tasks`` has its own)."""
    if name not in builders:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(builders)}")
    if data is not None:
        kwargs = {**data_kwargs(data), **kwargs}
    try:
        model = builders[name](**kwargs)
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
