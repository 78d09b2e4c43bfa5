"""Scenes of Fashion-MNIST items: the detection dataset of notebook 12.

``make_scenes(ds, "train", 2000, seed=0)`` places 1-4 items of ``ds.train`` on a black canvas
(64x64 by default), each scaled by 0.7-1.4x with ``torch.nn.functional.interpolate``; no two
items' boxes overlap by more than ``max_iou``. Training scenes take items only from the training
split and test scenes only from the test split; ``scenes.source`` records which image each item
is. A box is the tight extent of its item's own non-zero pixels after placement, ``(x1, y1, x2,
y2)`` in pixel edges (a pixel ``(row r, col c)`` spans ``[c, c + 1] x [r, r + 1]``), as COCO
expects. Pixels are kept as uint8 (20,000 scenes of 64x64 are 82 MB) and normalised per batch
with the source dataset's mean and std, like the classification splits.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from distill_utils.common import rules

__all__ = ["SceneConfig", "Scenes", "SceneDataset", "make_scenes", "scene_dataset", "scene_config", "scale_item",
           "raw_pixels"]

SPLITS = ("train", "val", "test")
CANDIDATES = 32  # random positions an item tries per layout, all checked in one box_iou call


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """How scenes are made (notebook 12): ``canvas`` side in pixels; ``min_items``-``max_items``
    items per scene; each scaled by a factor drawn uniformly from ``min_scale``-``max_scale``;
    ``max_iou``: the largest IoU allowed between two items' boxes; ``clutter``: the standard
    deviation of Gaussian noise added to every pixel, as a fraction of full brightness (0: none);
    ``tries``: random layouts tried per scene (each item tries ``CANDIDATES`` positions per layout)
    before giving up with an error."""
    canvas: int = 64
    min_items: int = 1
    max_items: int = 4
    min_scale: float = 0.7
    max_scale: float = 1.4
    max_iou: float = 0.3
    clutter: float = 0.0
    tries: int = 20

    def __post_init__(self):
        count, scale = rules.in_range(1, 64, integer=True), rules.in_range(0, 16, low_open=True)
        rules_of = {"canvas": rules.in_range(8, 1024, integer=True, what="pixels per side"),
                    "min_items": count, "max_items": count, "min_scale": scale, "max_scale": scale,
                    "max_iou": rules.in_range(0, 1, high_open=True), "clutter": rules.in_range(0, 1),
                    "tries": rules.in_range(1, 100_000, integer=True)}
        for name, rule in rules_of.items():
            if (msg := rule(getattr(self, name))):
                raise ValueError(f"{name} = {getattr(self, name)!r} {msg}")
        if self.min_items > self.max_items:
            raise ValueError(f"min_items ({self.min_items}) must not exceed max_items ({self.max_items})")
        if self.min_scale > self.max_scale:
            raise ValueError(f"min_scale ({self.min_scale}) must not exceed max_scale ({self.max_scale})")

    def sides(self, item_side: int) -> tuple[int, int]:
        """The smallest and largest side in pixels of a scaled item whose source is ``item_side``."""
        return max(1, round(item_side * self.min_scale)), max(1, round(item_side * self.max_scale))

    def check_fits(self, item_side: int) -> None:
        """ValueError unless items of ``item_side`` pixels, scaled, can go on the canvas."""
        small, large = self.sides(item_side)
        if large > self.canvas:
            raise ValueError(f"items scaled by up to {self.max_scale} are {large} pixels wide, larger than the "
                             f"{self.canvas}-pixel canvas; lower max_scale or raise canvas")
        if self.max_items > (self.canvas // small) ** 2:
            raise ValueError(f"{self.max_items} items do not fit a {self.canvas}-pixel canvas: at most "
                             f"{(self.canvas // small) ** 2} squares of the smallest item ({small} pixels) fit side "
                             "by side; lower max_items or raise canvas")


def raw_pixels(x: torch.Tensor, mean=(), std=()) -> torch.Tensor:
    """Normalised images (N, C, H, W) back to uint8 pixels; ``mean``/``std`` as in the Dataset (notebook 12)."""
    c = x.shape[1]
    m = torch.tensor(mean or (0.0,) * c).view(1, c, 1, 1)
    s = torch.tensor(std or (1.0,) * c).view(1, c, 1, 1)
    return (x.cpu() * s + m).mul(255).round().clamp(0, 255).to(torch.uint8)


def scale_item(pixels: torch.Tensor, side: int) -> torch.Tensor:
    """uint8 items (K, C, h, w) resized to (K, C, side, side): bilinear with antialiasing, rounded to
    uint8 (notebook 12)."""
    x = F.interpolate(pixels.float(), size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8)


def _extents(items: torch.Tensor) -> torch.Tensor:
    """Tight boxes (K, 4) of each item's non-zero pixels inside its own square, pixel edges."""
    mask = items.amax(1) > 0  # (K, side, side)
    rows, cols = mask.any(2), mask.any(1)
    if not rows.any(1).all():
        raise ValueError("a source image has no non-zero pixel after scaling, so it has no box; "
                         "use a dataset whose items stand on a black (zero) background, like Fashion-MNIST")
    side = mask.shape[-1]

    def first_last(m):
        return m.float().argmax(1), side - m.flip(1).float().argmax(1)
    (y1, y2), (x1, x2) = first_last(rows), first_last(cols)
    return torch.stack([x1, y1, x2, y2], 1).float()


@dataclasses.dataclass(repr=False, eq=False)
class Scenes:
    """Detection scenes (notebook 12): ``pixels`` uint8 (N, C, S, S); ``boxes`` float32 (N, M, 4) xyxy
    in pixels; ``labels`` int64 (N, M); ``source`` int64 (N, M): the index of each item in the split
    named ``split``; ``placement`` int64 (N, M, 3): each item's scaled side, top row and left column.
    ``M`` is the most items a scene may have; unused slots have label, source and placement -1.
    ``mean`` and ``std`` are the source dataset's, for normalising."""
    pixels: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    source: torch.Tensor
    placement: torch.Tensor
    split: str
    classes: tuple
    mean: tuple = ()
    std: tuple = ()

    def __post_init__(self):
        n, m = self.labels.shape
        if self.pixels.dtype != torch.uint8 or self.pixels.dim() != 4 or len(self.pixels) != n:
            raise ValueError(f"pixels must be uint8 (N, C, S, S) with N = {n}, "
                             f"got {self.pixels.dtype} {tuple(self.pixels.shape)}")
        if self.boxes.shape != (n, m, 4) or self.source.shape != (n, m) or self.placement.shape != (n, m, 3):
            raise ValueError(f"boxes must be (N, M, 4), source (N, M) and placement (N, M, 3) with (N, M) = {(n, m)}")
        self.classes, self.mean, self.std = tuple(self.classes), tuple(self.mean), tuple(self.std)

    def __len__(self):
        return len(self.labels)

    def __repr__(self):
        items = int((self.labels >= 0).sum())
        return f"Scenes({self.split}: {len(self)} scenes of {self.image_size}x{self.image_size}, {items} items)"

    @property
    def image_size(self) -> int:
        return self.pixels.shape[-1]

    def inputs(self, index=None) -> torch.Tensor:
        """Normalised float32 images (n, C, S, S) of the scenes at ``index`` (default: all)."""
        p = self.pixels if index is None else self.pixels[index]
        c = p.shape[1]
        mean = torch.tensor(self.mean or (0.0,) * c).view(1, c, 1, 1)
        std = torch.tensor(self.std or (1.0,) * c).view(1, c, 1, 1)
        return (p.float() / 255 - mean) / std

    def targets(self, i: int) -> dict:
        """Scene ``i``'s objects: ``{"boxes": (k, 4), "labels": (k,)}`` without the unused slots."""
        keep = self.labels[i] >= 0
        return {"boxes": self.boxes[i][keep], "labels": self.labels[i][keep]}

    def to_image(self, i: int) -> torch.Tensor:
        """Scene ``i`` as ``imshow`` takes it, values in [0, 1]: (S, S) or (S, S, 3)."""
        img = self.pixels[i].float() / 255
        return img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0):
        """Yield ``(x, boxes, labels)`` batches: normalised images and the padded targets."""
        rules.check("batch_size", batch_size)
        order = (torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)) if shuffle
                 else torch.arange(len(self)))
        for start in range(0, len(self), batch_size):
            idx = order[start:start + batch_size]
            yield self.inputs(idx), self.boxes[idx], self.labels[idx]

    def subset(self, n: int, seed: int = 0) -> "Scenes":
        """``n`` scenes chosen at random (the same ones for the same seed)."""
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= len(self):
            raise ValueError(f"subset size must be between 1 and {len(self)}, got {n!r}")
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return Scenes(self.pixels[idx], self.boxes[idx], self.labels[idx], self.source[idx], self.placement[idx],
                      self.split, self.classes, self.mean, self.std)


@dataclasses.dataclass
class SceneDataset:
    """Training and test scenes with what ``build_detector(data=...)`` reads: ``classes`` and
    ``input_shape`` (C, S, S) (notebook 12)."""
    train: Scenes
    test: Scenes
    classes: tuple
    input_shape: tuple
    name: str = "scenes"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self):
        return (f"SceneDataset({self.name!r}: train={len(self.train)}, test={len(self.test)}, "
                f"input_shape={self.input_shape}, classes={self.num_classes})")


def _try_layouts(extents, sides, counts, cfg: SceneConfig, gen) -> tuple[torch.Tensor, torch.Tensor]:
    """One layout attempt for every scene at once: ``(corners (n, m, 2) top/left, failed (n,))``.

    ``extents`` (n, m, 4): each item's tight box inside its own square. Item ``j`` of every scene
    draws ``CANDIDATES`` random corners and takes the first whose box keeps an IoU of at most
    ``max_iou`` with the items ``0..j-1`` already placed (``box_iou`` on batches of boxes)."""
    n, m = sides.shape
    corners, boxes = torch.zeros(n, m, 2, dtype=torch.long), torch.zeros(n, m, 4)
    failed = torch.zeros(n, dtype=torch.bool)
    for j in range(m):
        span = (cfg.canvas - sides[:, j] + 1).view(n, 1, 1)
        tl = (torch.rand(n, CANDIDATES, 2, generator=gen) * span).floor()  # (n, CANDIDATES, 2): top, left
        candidates = extents[:, j, None] + tl[..., [1, 0, 1, 0]]  # (n, CANDIDATES, 4)
        ok = (box_iou(candidates, boxes[:, :j]).amax(2) <= cfg.max_iou if j
              else torch.ones(n, CANDIDATES, dtype=torch.bool))
        first = ok.int().argmax(1)  # the first candidate that fits (0 when none does)
        active = counts > j
        failed |= active & ~ok.any(1)
        pick = torch.arange(n)
        corners[:, j], boxes[:, j] = tl[pick, first].long(), candidates[pick, first]
    return corners, failed


def _layouts(extents, sides, counts, cfg: SceneConfig, gen) -> torch.Tensor:
    """Corners (n, m, 2) for every scene, trying a scene's whole layout again (up to ``tries``)."""
    corners = torch.zeros(*sides.shape, 2, dtype=torch.long)
    pending = torch.arange(len(sides))
    for _ in range(cfg.tries):
        got, failed = _try_layouts(extents[pending], sides[pending], counts[pending], cfg, gen)
        corners[pending[~failed]] = got[~failed]
        pending = pending[failed]
        if len(pending) == 0:
            return corners
    k = int(counts[pending[0]])
    raise ValueError(f"could not lay out the {k} items of scene {int(pending[0])} in {cfg.tries} tries with "
                     f"max_iou={cfg.max_iou}; lower max_items or max_scale, or raise max_iou, canvas or tries")


def _paste(pixels, scaled, where, corners) -> None:
    """Put items ``scaled`` (k, C, s, s) on scenes ``where`` (k,) at ``corners`` (k, 2), keeping the
    brighter pixel; each scene appears at most once in ``where``."""
    s = scaled.shape[-1]
    rows = (corners[:, 0, None] + torch.arange(s))[:, None, :, None]  # (k, 1, s, 1)
    cols = (corners[:, 1, None] + torch.arange(s))[:, None, None, :]  # (k, 1, 1, s)
    chans = torch.arange(scaled.shape[1])[None, :, None, None]
    scene = where[:, None, None, None]
    pixels[scene, chans, rows, cols] = torch.maximum(pixels[scene, chans, rows, cols], scaled)


def scene_config(config: SceneConfig | None = None, **settings) -> SceneConfig:
    """``config`` (or the defaults) with ``settings`` replaced; an unknown name is a ValueError (notebook 12)."""
    names = [f.name for f in dataclasses.fields(SceneConfig)]
    if (unknown := sorted(set(settings) - set(names))):
        raise ValueError(f"unknown scene setting(s) {', '.join(unknown)}; scenes accept {', '.join(names)}")
    return dataclasses.replace(config or SceneConfig(), **settings)


def _check_request(data, split: str, n) -> object:
    if not hasattr(data, "train") or not hasattr(data, "classes"):
        raise TypeError(f"data must be a Dataset from distill_utils.data.load_dataset, got {type(data).__name__}")
    if split not in SPLITS or getattr(data, split, None) is None:
        raise ValueError(f"split must be one of the dataset's splits {[s for s in SPLITS if getattr(data, s, None)]}, "
                         f"got {split!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of scenes must be a positive integer, got {n!r}")
    source = getattr(data, split)
    if source.x.dim() != 4 or source.x.shape[-1] != source.x.shape[-2]:
        raise ValueError(f"scenes need square source images (N, C, H, W), got {tuple(source.x.shape)}")
    return source


def make_scenes(data, split: str = "train", n: int = 1000, seed: int = 0, config: SceneConfig | None = None,
                **settings) -> Scenes:
    """``n`` scenes from the items of ``data``'s ``split`` only (notebook 12).

    ``data``: a ``Dataset`` (``load_dataset("fashion_mnist")``); settings as in ``SceneConfig``
    (``canvas=96``, ``max_items=3``, ``clutter=0.1``, ...). The same ``seed`` gives identical
    scenes. Items are composed by the brighter pixel where they overlap. Every parameter is
    checked before anything is allocated; a scene whose items find no layout in ``tries``
    random tries is a ValueError naming the scene.
    """
    cfg = scene_config(config, **settings)
    source = _check_request(data, split, n)
    c, side = source.x.shape[1], source.x.shape[-1]
    cfg.check_fits(side)
    gen = torch.Generator().manual_seed(seed)
    m = cfg.max_items
    counts = torch.randint(cfg.min_items, m + 1, (n,), generator=gen)
    src = torch.randint(0, len(source), (n, m), generator=gen)
    scale = cfg.min_scale + (cfg.max_scale - cfg.min_scale) * torch.rand(n, m, generator=gen)
    sides = (side * scale).round().long().clamp(min=1)
    used = torch.arange(m) < counts[:, None]  # (n, m)
    src = torch.where(used, src, -1)
    extents = torch.zeros(n, m, 4)
    pixels = torch.zeros(n, c, cfg.canvas, cfg.canvas, dtype=torch.uint8)
    scaled = {}
    for j, s in torch.unique(torch.stack([torch.arange(m).expand(n, m)[used], sides[used]], 1), dim=0).tolist():
        sel = used[:, j] & (sides[:, j] == s)  # slot j of the scenes whose item there has side s
        raw = raw_pixels(source.x[src[sel, j]], getattr(data, "mean", ()), getattr(data, "std", ()))
        scaled[j, s] = (sel, scale_item(raw, s))
        extents[sel, j] = _extents(scaled[j, s][1])
    corners = _layouts(extents, sides, counts, cfg, gen)
    for (j, _), (sel, items) in scaled.items():
        _paste(pixels, items, sel.nonzero()[:, 0], corners[sel, j])
    boxes = torch.where(used[..., None], extents + corners[..., [1, 0, 1, 0]].float(), 0.0)
    if cfg.clutter:
        for start in range(0, n, 1024):  # chunks bound the float copy
            chunk = pixels[start:start + 1024]
            noise = torch.randn(chunk.shape, generator=gen) * (cfg.clutter * 255)
            pixels[start:start + 1024] = (chunk.float() + noise).round().clamp(0, 255).to(torch.uint8)
    labels = torch.where(used, source.y.cpu()[src.clamp(min=0)], -1)
    placement = torch.where(used[..., None], torch.cat([sides[..., None], corners], 2), -1)
    return Scenes(pixels, boxes, labels, src, placement, split, data.classes, getattr(data, "mean", ()),
                  getattr(data, "std", ()))


def scene_dataset(data, train: int = 2000, test: int = 500, seed: int = 0, config: SceneConfig | None = None,
                  **settings) -> SceneDataset:
    """Training scenes from ``data.train`` and test scenes from ``data.test`` (notebook 12): the
    training scenes use ``seed``, the test scenes ``seed + 1``; settings as in ``SceneConfig``."""
    cfg = scene_config(config, **settings)
    for split, n in (("train", train), ("test", test)):
        source = _check_request(data, split, n)
        cfg.check_fits(source.x.shape[-1])
    tr = make_scenes(data, "train", train, seed, cfg)
    te = make_scenes(data, "test", test, seed + 1, cfg)
    return SceneDataset(tr, te, tuple(data.classes), (tr.pixels.shape[1], cfg.canvas, cfg.canvas),
                        f"scenes of {getattr(data, 'name', 'a dataset')}")
