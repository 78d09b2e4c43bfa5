"""Object detection (notebook 12): scenes, CenterNet encode/decode, COCO mAP, detection KD, training, ONNX.

Scenes are made from a small in-memory dataset of items on a black background whose training
items have labels 0-4 and test items labels 5-9, so a leak between splits shows in the labels.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from distill_utils.data import Dataset, Split
from distill_utils.tasks.detection import (
    MODELS,
    FeatureImitation,
    build_detector,
    coco_map,
    decode,
    detection_loss,
    distill_detection_loss,
    encode,
    evaluate_detector,
    heatmap_kd,
    imitation_mask,
    make_scenes,
    scene_dataset,
    split_heads,
    train_detector,
)
from distill_utils.tasks.detection.losses import focal_loss
from distill_utils.tasks.detection.scenes import raw_pixels, scale_item

MEAN, STD = (0.2860,), (0.3530,)
CLASSES = tuple(f"c{i}" for i in range(10))


def _items(n, labels, g, full=False):
    """``n`` 28x28 items: a random bright rectangle with a dark hole, on black (values k / 255)."""
    x = torch.zeros(n, 1, 28, 28)
    for i in range(n):
        h, w = (28, 28) if full else torch.randint(8, 22, (2,), generator=g).tolist()
        top, left = (0, 0) if full else torch.randint(0, 28 - max(h, w) + 1, (2,), generator=g).tolist()
        x[i, 0, top:top + h, left:left + w] = torch.randint(60, 256, (h, w), generator=g) / 255
        if not full:
            x[i, 0, top + h // 2, left + 1:left + w - 1] = 0  # a gap inside: the box is still the outer extent
    return Split((x - MEAN[0]) / STD[0], labels)


def item_dataset(n_train=60, n_test=30, seed=0, full=False):
    g = torch.Generator().manual_seed(seed)
    train = _items(n_train, torch.randint(0, 5, (n_train,), generator=g), g, full)
    test = _items(n_test, torch.randint(5, 10, (n_test,), generator=g), g, full)
    return Dataset("items", train, test, CLASSES, (1, 28, 28), "memory", mean=MEAN, std=STD)


@pytest.fixture(scope="module")
def ds():
    return item_dataset()


@pytest.fixture(scope="module")
def scenes(ds):
    return scene_dataset(ds, train=96, test=24, seed=0)


# --- scenes -------------------------------------------------------------------------------------------------


def test_same_seed_same_scenes_other_seed_other_scenes(ds):
    a, b, c = (make_scenes(ds, "train", 40, seed=s, clutter=0.05) for s in (1, 1, 2))
    for field in ("pixels", "boxes", "labels", "source", "placement"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.pixels, c.pixels) and not torch.equal(a.boxes, c.boxes)


def _tight_box(mask):
    rows, cols = mask.nonzero(as_tuple=True)
    return torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=torch.float32)


def test_each_box_bounds_exactly_its_items_own_pixels(ds):
    sc = make_scenes(ds, "train", 30, seed=3, canvas=64)
    raw = raw_pixels(ds.train.x, MEAN, STD)
    checked = 0
    for i in range(len(sc)):
        for j in range((sc.labels[i] >= 0).sum()):
            side, top, left = sc.placement[i, j].tolist()
            alone = torch.zeros(64, 64, dtype=torch.uint8)  # the item by itself, where the scene put it
            alone[top:top + side, left:left + side] = scale_item(raw[sc.source[i, j]][None], side)[0, 0]
            assert torch.equal(sc.boxes[i, j], _tight_box(alone > 0))
            assert (sc.pixels[i, 0] >= alone).all()  # composed by the brighter pixel: the item is all there
            assert sc.labels[i, j] == ds.train.y[sc.source[i, j]]
            checked += 1
        union = torch.zeros(64, 64, dtype=torch.bool)  # every lit pixel of the scene is inside some box
        for x1, y1, x2, y2 in sc.targets(i)["boxes"].long().tolist():
            union[y1:y2, x1:x2] = True
        assert not ((sc.pixels[i, 0] > 0) & ~union).any()
    assert checked == int((sc.labels >= 0).sum()) > 30


def test_disjoint_boxes_are_tight_on_the_scene_itself(ds):
    sc = make_scenes(ds, "test", 20, seed=4, max_iou=0.0, max_items=3)
    for i in range(len(sc)):
        for x1, y1, x2, y2 in sc.targets(i)["boxes"].long().tolist():
            crop = torch.zeros(64, 64, dtype=torch.bool)
            crop[y1:y2, x1:x2] = sc.pixels[i, 0, y1:y2, x1:x2] > 0
            assert _tight_box(crop).tolist() == [x1, y1, x2, y2]


def test_training_scenes_hold_only_training_items(scenes, ds):
    train, test = scenes.train, scenes.test
    assert (train.split, test.split) == ("train", "test")
    used_train, used_test = train.labels >= 0, test.labels >= 0
    assert set(train.labels[used_train].tolist()) <= {0, 1, 2, 3, 4}  # training labels only
    assert set(test.labels[used_test].tolist()) <= {5, 6, 7, 8, 9}
    assert int(train.source.max()) < len(ds.train) and int(test.source.max()) < len(ds.test)
    assert torch.equal(train.labels[used_train], ds.train.y[train.source[used_train]])
    assert torch.equal(test.labels[used_test], ds.test.y[test.source[used_test]])
    counts = used_train.sum(1)
    assert counts.min() >= 1 and counts.max() <= 4
    ious = [box_iou(b, b)[~torch.eye(len(b), dtype=torch.bool)] for b in (train.targets(i)["boxes"] for i in range(96))]
    assert max(float(v.max()) for v in ious if len(v)) <= 0.3


def test_batches_are_normalised_tensors(scenes):
    x, boxes, labels = next(scenes.train.batches(16))
    assert x.shape == (16, 1, 64, 64) and boxes.shape == (16, 4, 4) and labels.shape == (16, 4)
    torch.testing.assert_close(x[3], (scenes.train.pixels[3].float() / 255 - MEAN[0]) / STD[0])


@pytest.mark.parametrize("settings, message", [
    ({"max_items": 12}, "12 items do not fit a 64-pixel canvas"),
    ({"canvas": 32, "max_scale": 1.4}, "larger than the 32-pixel canvas"),
    ({"canvas": -64}, "canvas = -64 must be >= 8"),
    ({"min_scale": -0.5}, "min_scale = -0.5 must be > 0"),
    ({"min_items": 3, "max_items": 2}, "min_items (3) must not exceed max_items (2)"),
    ({"min_scale": 1.2, "max_scale": 0.8}, "min_scale (1.2) must not exceed max_scale (0.8)"),
    ({"max_iou": 1.5}, "max_iou = 1.5 must be >= 0 and < 1"),
    ({"n": -5}, "number of scenes must be a positive integer, got -5"),
    ({"split": "val"}, "split must be one of the dataset's splits ['train', 'test'], got 'val'"),
    ({"colour": 1}, "unknown scene setting(s) colour"),
])
def test_bad_scene_parameters(ds, settings, message):
    settings = {"split": "train", "n": 10, **settings}
    with pytest.raises(ValueError) as err:
        make_scenes(ds, **settings)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_layout_that_cannot_be_met_is_an_error_naming_the_scene():
    full = item_dataset(8, 8, full=True)  # every item fills its 28x28 square
    with pytest.raises(ValueError, match=r"could not lay out the 4 items of scene \d+ in 2 tries with max_iou=0.0"):
        make_scenes(full, "train", 5, canvas=56, min_items=4, max_items=4, min_scale=1.0, max_scale=1.0,
                    max_iou=0.0, tries=2)


# --- encode / decode / mAP ------------------------------------------------------------------------------------


def _as_outputs(targets):
    """Targets as if a perfect detector had predicted them (heatmap probabilities -> logits)."""
    return torch.cat([torch.logit(targets["heatmap"], eps=1e-6), targets["size"], targets["offset"]], 1)


def test_encode_then_decode_gives_back_the_boxes(scenes):
    sc = scenes.test
    dets = decode(_as_outputs(encode(sc.boxes, sc.labels, 10, 64)))
    for i, d in enumerate(dets):
        t = sc.targets(i)
        key = lambda b: (b[:, 0] * 1000 + b[:, 1]).argsort()  # noqa: E731  (order by position)
        torch.testing.assert_close(d["boxes"][key(d["boxes"])], t["boxes"][key(t["boxes"])], atol=1e-4, rtol=0)
        assert torch.equal(d["labels"][key(d["boxes"])], t["labels"][key(t["boxes"])])
    result = coco_map(dets, [sc.targets(i) for i in range(len(sc))], 64, CLASSES)
    assert result["map"] == pytest.approx(1.0) and result["map50"] == pytest.approx(1.0)
    assert all(math.isnan(v) for k, v in result["per_class"].items() if k in CLASSES[:5])  # no test object has 0-4
    assert all(v == pytest.approx(1.0) for k, v in result["per_class"].items() if k in CLASSES[5:])


def test_encode_draws_centernets_gaussian_on_a_hand_made_box():
    # box (16, 16)-(40, 36) px = cells (4, 4)-(10, 9): w = 6, h = 5, centre (7, 6.5) -> cell x 7, y 6, offset (0, 0.5)
    # CenterNet's radius: a3 = 4 * 0.7 = 2.8, b3 = -2 * 0.7 * 11 = -15.4, c3 = -0.3 * 30 = -9,
    # r3 = (-15.4 + sqrt(15.4^2 + 4 * 2.8 * 9)) / 2 = 1.49 (r1 = 10.5, r2 = 20.2) -> radius 1, sigma 3 / 6 = 0.5
    t = encode(torch.tensor([[[16.0, 16, 40, 36]]]), torch.tensor([[3]]), 10, 64)
    heat = t["heatmap"][0, 3]
    assert heat[6, 7] == 1 and t["heatmap"].sum() == pytest.approx(1 + 4 * math.exp(-2) + 4 * math.exp(-4), rel=1e-5)
    assert heat[5, 7] == pytest.approx(math.exp(-1 / (2 * 0.25))) and heat[5, 6] == pytest.approx(math.exp(-4))
    assert heat[6, 9] == 0  # two cells away: beyond the radius
    assert t["size"][0, :, 6, 7].tolist() == [6.0, 5.0] and t["offset"][0, :, 6, 7].tolist() == [0.0, 0.5]
    assert t["mask"].sum() == 1 and t["mask"][0, 0, 6, 7] == 1
    # imitation mask: exp(-2) = 0.135 > 0.1 > exp(-4) = 0.018: the centre and its 4 neighbours
    mask = imitation_mask(t["heatmap"], 0.1)[0, 0]
    assert mask.shape == (16, 16) and mask.sum() == 5
    assert {tuple(c) for c in mask.nonzero().tolist()} == {(6, 7), (5, 7), (7, 7), (6, 6), (6, 8)}
    assert imitation_mask(t["heatmap"], 0.01).sum() == 9 and imitation_mask(t["heatmap"], 0.5).sum() == 1


def test_imitation_mask_takes_any_class_over_the_threshold():
    heat = torch.zeros(1, 2, 2, 3)
    heat[0, 0, 0, 0], heat[0, 1, 1, 2], heat[0, 1, 0, 1] = 0.5, 0.2, 0.05
    assert imitation_mask(heat, 0.1)[0, 0].tolist() == [[1, 0, 0], [0, 0, 1]]


def _box_result(pred_box, gt_box=(10.0, 10, 30, 30)):
    pred = [{"boxes": torch.tensor([pred_box]), "scores": torch.tensor([0.9]), "labels": torch.tensor([2])}]
    return coco_map(pred, [{"boxes": torch.tensor([gt_box]), "labels": torch.tensor([2])}], 64, CLASSES)


@pytest.mark.parametrize("dx", [0, 2, 4, 8])
def test_a_shifted_prediction_counts_at_the_thresholds_its_iou_reaches(dx):
    pred = (10.0 + dx, 10, 30 + dx, 30)
    iou = float(box_iou(torch.tensor([pred]), torch.tensor([[10.0, 10, 30, 30]])))  # 1, 0.818, 0.667, 0.429
    thresholds = np.linspace(0.5, 0.95, 10)  # COCO's
    result = _box_result(pred)
    assert result["map"] == pytest.approx(float((iou >= thresholds).mean()))
    assert result["map50"] == pytest.approx(1.0 if iou >= 0.5 else 0.0)
    assert result["per_class"]["c2"] == pytest.approx(result["map"])


def test_a_wrong_class_or_a_false_detection_ranked_first_costs_precision():
    gt = [{"boxes": torch.tensor([[10.0, 10, 30, 30], [40, 40, 60, 60]]), "labels": torch.tensor([1, 2])}]
    wrong = [{"boxes": torch.tensor([[10.0, 10, 30, 30], [40, 40, 60, 60]]), "scores": torch.tensor([0.9, 0.8]),
              "labels": torch.tensor([1, 3])}]
    result = coco_map(wrong, gt, 64, CLASSES)
    assert result["per_class"]["c1"] == pytest.approx(1.0) and result["per_class"]["c2"] == 0.0
    assert result["map"] == pytest.approx(0.5)  # the mean over the two classes that have objects
    assert math.isnan(result["per_class"]["c3"])  # no object of class 3: AP undefined, left out of the mean
    # class 1: a box at IoU 0.43 (a false positive at every threshold) scores above the exact one:
    # precision 1/2 at recall 1, so AP = 0.5 at every threshold
    ranked = [{"boxes": torch.tensor([[18.0, 10, 38, 30], [10, 10, 30, 30]]), "scores": torch.tensor([0.95, 0.9]),
               "labels": torch.tensor([1, 1])}]
    result = coco_map(ranked, gt[:1], 64, CLASSES)
    assert result["per_class"]["c1"] == pytest.approx(0.5) and result["per_class"]["c2"] == 0.0


def test_no_detection_at_all_scores_zero(scenes):
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}]
    targets = [scenes.test.targets(i) for i in range(3)]
    result = coco_map(empty * 3, targets, 64, CLASSES)
    assert result["map"] == 0.0 and result["map50"] == 0.0
    present = {CLASSES[k] for t in targets for k in t["labels"].tolist()}
    assert all(result["per_class"][c] == 0.0 if c in present else math.isnan(result["per_class"][c]) for c in CLASSES)


@pytest.mark.parametrize("box, message", [
    ((10.0, 10, 70, 30), "lies outside the 64x64 image"),
    ((-1.0, 10, 30, 30), "lies outside the 64x64 image"),
    ((30.0, 10, 30, 30), "is degenerate (x2 <= x1 or y2 <= y1)"),
    ((10.0, 30, 30, 20), "is degenerate (x2 <= x1 or y2 <= y1)"),
])
def test_bad_boxes_are_refused(box, message):
    with pytest.raises(ValueError, match="prediction 0: box") as err:
        _box_result(box)
    assert message in str(err.value)
    with pytest.raises(ValueError, match="target 0: box"):
        _box_result((10.0, 10, 30, 30), gt_box=box)


def test_a_prediction_list_of_the_wrong_length_is_refused(scenes):
    targets = [scenes.test.targets(i) for i in range(3)]
    pred = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    with pytest.raises(ValueError, match="got predictions for 2 images but targets for 3; pass one dict per image"):
        coco_map([pred, pred], targets, 64, CLASSES)


def test_evaluating_a_classifier_is_refused(scenes):
    from distill_utils.models import build_model
    for classifier in (build_model("student_cnn", image_size=64), build_model("student_cnn")):  # 64 px, 28 px
        with pytest.raises(ValueError, match="ConvNet has no detection heads .a classifier, or a classifier's checkp"):
            evaluate_detector(classifier, scenes.test)
    with pytest.raises(ValueError, match="the detector has 3 classes, the scenes 10"):
        evaluate_detector(build_detector(data=scenes, num_classes=3, width=0.25), scenes.test)


def test_decode_peaks_and_nms():
    out = torch.full((1, 14, 16, 16), 0.0)
    out[0, :10] = -10.0  # heatmap logits: nothing ...
    out[0, 4, 5, 5], out[0, 4, 5, 6] = 3.0, 2.0  # ... but a peak and its lower neighbour (not a 3x3 maximum)
    out[0, 7, 12, 3] = 1.0
    out[0, 10:12] = 2.0  # every size: 2 x 2 cells = 8 x 8 px; offsets 0
    dets = decode(out, threshold=0.5)[0]
    assert dets["labels"].tolist() == [4, 7]
    torch.testing.assert_close(dets["scores"], torch.sigmoid(torch.tensor([3.0, 1.0])))
    torch.testing.assert_close(dets["boxes"], torch.tensor([[16.0, 16, 24, 24], [8, 44, 16, 52]]))
    assert len(decode(out, threshold=0.8)[0]["boxes"]) == 1
    with pytest.raises(ValueError, match="k .the most detections per image. must be a positive integer, got 0"):
        decode(out, k=0)
    with pytest.raises(ValueError, match="expected a detector's output .N, classes . 4, h, w., got .1, 10."):
        split_heads(torch.zeros(1, 10))


# --- losses -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_heatmap_kd_is_per_location_bce_on_soft_targets(T):
    s, t = torch.tensor([[[[0.5, -1.0], [2.0, 0.0]]]]), torch.tensor([[[[1.5, -2.0], [0.0, 3.0]]]])
    expected = 0.0
    for sv, tv in zip(s.flatten().tolist(), t.flatten().tolist()):
        p, q = 1 / (1 + math.exp(-tv / T)), 1 / (1 + math.exp(-sv / T))
        expected += -(p * math.log(q) + (1 - p) * math.log(1 - q)) / 4
    assert heatmap_kd(s, t, T).item() == pytest.approx(expected * T * T, rel=1e-6)
    with pytest.raises(ValueError, match="must have the same shape"):
        heatmap_kd(s, t[..., :1], T)


def test_focal_loss_by_hand():
    logits, target = torch.tensor([[[[2.0, -1.0, 0.5]]]]), torch.tensor([[[[1.0, 0.5, 0.0]]]])
    p = [1 / (1 + math.exp(-v)) for v in (2.0, -1.0, 0.5)]
    pos = (1 - p[0]) ** 2 * math.log(p[0])
    neg = (1 - 0.5) ** 4 * p[1] ** 2 * math.log(1 - p[1]) + p[2] ** 2 * math.log(1 - p[2])
    assert focal_loss(logits, target).item() == pytest.approx(-(pos + neg), rel=1e-6)  # one centre


def test_feature_imitation_by_hand():
    imitation = FeatureImitation(2, 2)
    with torch.no_grad():  # adapter = identity, so the loss compares the maps themselves
        imitation.adapter.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        imitation.adapter.bias.zero_()
    s = torch.tensor([[[[1.0, 2.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2)
    t = torch.tensor([[[[0.0, 2.0]], [[2.0, 4.0]]]])
    # squared differences summed over channels: location 0: 1 + 4 = 5, location 1: 0 + 9 = 9
    assert imitation(s, t).item() == pytest.approx((5 + 9) / (2 * 2))
    assert imitation(s, t, torch.tensor([[[[0.0, 1.0]]]])).item() == pytest.approx(9 / 2)
    assert imitation(s, t, torch.tensor([[[[1.0, 0.0]]]])).item() == pytest.approx(5 / 2)


def test_detection_loss_and_the_weighted_combination(scenes):
    torch.manual_seed(0)
    student, teacher = build_detector(data=scenes, width=0.25), build_detector(data=scenes, width=0.5)
    x, boxes, labels = next(scenes.train.batches(4))
    targets = encode(boxes, labels, 10, 64)
    s, t = student(x, return_features=True), teacher(x, return_features=True)
    imitation = FeatureImitation(s[1][-1].shape[1], t[1][-1].shape[1])
    parts = distill_detection_loss(s, t, targets, imitation, T=2.0, kd=0.7, feature=0.3, mask_threshold=0.1)
    task = detection_loss(split_heads(s[0]), targets)
    kd = heatmap_kd(s[0][:, :10], t[0][:, :10], 2.0)
    feat = imitation(s[1][-1], t[1][-1], imitation_mask(targets["heatmap"], 0.1))
    torch.testing.assert_close(parts["loss"], task["loss"] + 0.7 * kd + 0.3 * feat)
    heads, n = split_heads(s[0]), 2 * targets["mask"].sum()
    size = F.l1_loss(heads["size"] * targets["mask"], targets["size"] * targets["mask"], reduction="sum") / n
    torch.testing.assert_close(task["size"], size)
    torch.testing.assert_close(task["loss"], task["heatmap"] + 0.1 * size + task["offset"])
    unmasked = distill_detection_loss(s, t, targets, imitation, kd=0.0, feature=1.0, mask_threshold=None)
    torch.testing.assert_close(unmasked["feature"], imitation(s[1][-1], t[1][-1]))


# --- the model, training, export ------------------------------------------------------------------------------


def test_builder_records_a_spec_that_rebuilds_the_model(scenes):
    model = build_detector(data=scenes, width=0.5)
    assert model.spec == {"name": "centernet", "kwargs": {"num_classes": 10, "in_channels": 1, "image_size": 64,
                                                          "width": 0.5}}
    again = MODELS[model.spec["name"]](**model.spec["kwargs"])
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    out, feats = model(torch.zeros(2, 1, 64, 64), return_features=True)
    assert out.shape == (2, 14, 16, 16) and feats[-1].shape == (2, 32, 16, 16)
    with pytest.raises(ValueError, match="image_size must be a multiple of the output stride 4, got 30"):
        build_detector(num_classes=10, image_size=30)


def test_a_tiny_training_run_lowers_the_loss(scenes):
    torch.manual_seed(0)
    model = build_detector(data=scenes, width=0.25)
    history = train_detector(model, scenes.train, epochs=3, lr=5e-3, batch_size=16, progress=False)
    losses = [row["loss"] for row in history]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2] and losses[2] < 0.85 * losses[0]
    assert history[0]["kd"] == 0.0 and history[0]["feature"] == 0.0


def test_distilled_training_runs_and_leaves_the_teacher_as_it_was(scenes):
    torch.manual_seed(0)
    teacher, student = build_detector(data=scenes, width=0.5), build_detector(data=scenes, width=0.25)
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    history = train_detector(student, scenes.train, epochs=2, batch_size=16, teacher=teacher, kd=1.0, feature=1.0,
                             progress=False)
    assert history[0]["kd"] > 0 and history[0]["feature"] > 0 and history[-1]["loss"] < history[0]["loss"]
    assert teacher.training and all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    with pytest.raises(ValueError, match="kd = 1.0 and feature = 0.0 need a teacher detector"):
        train_detector(student, scenes.train, kd=1.0)
    with pytest.raises(ValueError, match="a teacher was given but kd and feature are both 0"):
        train_detector(student, scenes.train, teacher=teacher)
    with pytest.raises(ValueError, match="unknown training setting.s. temperature"):
        train_detector(student, scenes.train, temperature=2.0)


def test_the_detector_exports_to_onnx_and_runs_the_same(tmp_path, scenes):
    pytest.importorskip("onnxruntime")
    from distill_utils.deploy.export import export_onnx, onnx_metadata, session
    torch.manual_seed(0)
    model = build_detector(data=scenes, width=0.25).eval()
    path = export_onnx(model, tmp_path / "detector.onnx")
    x = scenes.test.inputs(slice(0, 5))
    sess = session(path)
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        expected = model(x)
    assert got.shape == (5, 14, 16, 16)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert onnx_metadata(path)["architecture"] == model.spec
