import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_dataset
from distill_utils.distill import HintLoss, attention_loss, attention_map, distill, dkd_loss, kd_loss, teacher_outputs
from distill_utils.models import build_model
from distill_utils.train import set_seed


def logits(seed, n=6, k=5):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(n, k, generator=g) * 3, torch.randn(n, k, generator=g) * 3
    return s, t, torch.randint(0, k, (n,), generator=g)


@pytest.mark.parametrize("T", [0.5, 1.0, 4.0, 20.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_kd_matches_kl_div_reference(T, alpha):
    s, t, y = logits(0)
    ref = alpha * F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T * T \
        + (1 - alpha) * F.cross_entropy(s, y)
    torch.testing.assert_close(kd_loss(s, t, y, T=T, alpha=alpha), ref)


def test_kd_hand_computed():
    # two classes, student uniform, teacher p = [0.75, 0.25] at T = 1
    s, t, y = torch.zeros(1, 2), torch.tensor([[math.log(3), 0.0]]), torch.tensor([0])
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_loss(s, t, y, T=1, alpha=1).item() == pytest.approx(kl, rel=1e-6)
    # at T = 2 the teacher softens to p0 = sqrt(3) / (sqrt(3) + 1), and the loss is scaled by T^2 = 4
    p0 = math.sqrt(3) / (math.sqrt(3) + 1)
    kl2 = p0 * math.log(2 * p0) + (1 - p0) * math.log(2 * (1 - p0))
    assert kd_loss(s, t, y, T=2, alpha=1).item() == pytest.approx(4 * kl2, rel=1e-6)
    # alpha = 0.5 mixes in half of the cross-entropy, ln 2 for a uniform student
    assert kd_loss(s, t, y, T=1, alpha=0.5).item() == pytest.approx(0.5 * kl + 0.5 * math.log(2), rel=1e-6)


@pytest.mark.parametrize("T", [1.0, 3.0, 8.0])
def test_kd_gradient_is_T_times_probability_gap(T):
    s, t, y = logits(1)
    s.requires_grad_(True)
    kd_loss(s, t, y, T=T, alpha=1.0).backward()
    expected = T * (F.softmax(s.detach() / T, 1) - F.softmax(t / T, 1)) / len(s)
    torch.testing.assert_close(s.grad, expected)


def test_kd_extreme_temperatures_stay_finite():
    s, t, y = logits(2)
    for T in (1e-3, 1e3):
        assert torch.isfinite(kd_loss(s, t, y, T=T, alpha=0.5))


@pytest.mark.parametrize("loss", [kd_loss, dkd_loss])
def test_bad_arguments(loss):
    s, t, y = logits(3)
    with pytest.raises(ValueError, match="T = 0 must be > 0"):
        loss(s, t, y, T=0)
    with pytest.raises(ValueError, match="alpha = 1.5 must be >= 0 and <= 1"):
        loss(s, t, y, alpha=1.5)
    with pytest.raises(ValueError, match="same shape"):
        loss(s, t[:, :4], y)
    with pytest.raises(ValueError, match="labels must have shape"):
        loss(s, t, y[:3])


def dkd_by_hand(s, t, y, T):
    """TCKD and NCKD from the paper's definitions, one example at a time."""
    tckd = nckd = 0.0
    for si, ti, yi in zip(s.tolist(), t.tolist(), y.tolist()):
        ps = [math.exp(v / T) for v in si]
        pt = [math.exp(v / T) for v in ti]
        ps, pt = [v / sum(ps) for v in ps], [v / sum(pt) for v in pt]
        bs, bt = [ps[yi], 1 - ps[yi]], [pt[yi], 1 - pt[yi]]
        tckd += sum(a * math.log(a / b) for a, b in zip(bt, bs))
        qs = [v / (1 - ps[yi]) for i, v in enumerate(ps) if i != yi]
        qt = [v / (1 - pt[yi]) for i, v in enumerate(pt) if i != yi]
        nckd += sum(a * math.log(a / b) for a, b in zip(qt, qs))
    return tckd / len(y), nckd / len(y)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_matches_paper_formula(T):
    s, t, y = logits(4)
    tckd, nckd = dkd_by_hand(s, t, y, T)
    got = dkd_loss(s, t, y, T=T, alpha=1.0, tckd_weight=1.0, nckd_weight=8.0).item()
    assert got == pytest.approx((tckd + 8 * nckd) * T * T, rel=1e-5)
    ce = F.cross_entropy(s, y).item()
    got = dkd_loss(s, t, y, T=T, alpha=0.25, tckd_weight=2.0, nckd_weight=0.5).item()
    assert got == pytest.approx(0.25 * (2 * tckd + 0.5 * nckd) * T * T + 0.75 * ce, rel=1e-5)


def test_dkd_recovers_kd_with_the_papers_weights():
    # KD = TCKD + (1 - p_t[target]) * NCKD, per example (Zhao et al. 2022, eq. 7)
    s, t, y = logits(5, n=1)
    w = 1 - F.softmax(t, 1)[0, y[0]].item()
    kd = kd_loss(s, t, y, T=1.0, alpha=1.0).item()
    assert dkd_loss(s, t, y, T=1.0, alpha=1.0, tckd_weight=1.0, nckd_weight=w).item() == pytest.approx(kd, rel=1e-5)


def test_dkd_gradients_flow_and_finite():
    s, t, y = logits(6)
    s.requires_grad_(True)
    dkd_loss(s, t, y).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_hint_loss():
    s_feat, t_feat = torch.randn(4, 3, 7, 7), torch.randn(4, 5, 7, 7)
    hint = HintLoss(3, 5)
    assert hint(s_feat, t_feat).item() == pytest.approx(F.mse_loss(hint.regressor(s_feat), t_feat).item())
    same = HintLoss(3, 3)
    with torch.no_grad():
        same.regressor.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
    assert same(s_feat, s_feat).item() == 0
    hint(torch.randn(4, 3, 14, 14), t_feat).backward()  # pooled to 7x7
    assert hint.regressor.weight.grad is not None
    vec = HintLoss(16, 32, spatial=False)
    assert vec(torch.randn(4, 16), torch.randn(4, 32)).dim() == 0


def test_attention_transfer():
    f = torch.rand(2, 4, 3, 3)
    assert attention_loss(f, f).item() == 0
    assert attention_loss(f, 3 * f).item() == pytest.approx(0, abs=1e-12)  # scale-invariant
    a = torch.zeros(1, 1, 2, 2)
    a[0, 0, 0, 0] = 1.0  # attention all in one corner
    b = torch.ones(1, 1, 2, 2)  # spread evenly: normalised map = 0.5 everywhere
    expected = ((1 - 0.5) ** 2 + 3 * 0.5 ** 2) / 4
    assert attention_loss(a, b).item() == pytest.approx(expected)
    torch.testing.assert_close(attention_map(b), torch.full((1, 4), 0.5))


def make_pair(seed=0):
    set_seed(seed)
    teacher = build_model("student_cnn", width=2.0).eval()
    student = build_model("student_cnn", width=0.5)
    return teacher, student


def test_cached_teacher_gives_the_same_training():
    data = tiny_dataset(96)
    runs = []
    for cache in (True, False):
        teacher, student = make_pair()
        history = distill(student, teacher, data, epochs=2, batch_size=32, cache=cache, progress=False,
                          device="cpu", T=3.0, alpha=0.7)
        runs.append((history, torch.cat([p.detach().flatten() for p in student.parameters()])))
    (h1, w1), (h2, w2) = runs
    for a, b in zip(h1, h2):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    torch.testing.assert_close(w1, w2, rtol=1e-4, atol=1e-5)


def test_teacher_outputs_in_order():
    data = tiny_dataset(20)
    teacher, _ = make_pair()
    out, feats = teacher_outputs(teacher, data.train, layer=1, batch_size=7, precision="fp32")
    with torch.no_grad():
        ref, maps = teacher(data.train.x, return_features=True)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(feats, maps[1], rtol=1e-4, atol=1e-5)


def test_distill_alpha_zero_is_plain_training():
    from distill_utils.train import fit
    data = tiny_dataset(64)
    teacher, student = make_pair()
    h_kd = distill(student, teacher, data, epochs=1, alpha=0.0, batch_size=32, progress=False, device="cpu")
    _, plain = make_pair()
    h_ce = fit(plain, data, epochs=1, batch_size=32, progress=False, device="cpu")
    assert h_kd[0]["train_loss"] == pytest.approx(h_ce[0]["train_loss"], rel=1e-5)


@pytest.mark.parametrize("feature", ["hint", "attention"])
@pytest.mark.parametrize("augment", [False, True])
def test_feature_distillation_runs(feature, augment):
    data = tiny_dataset(64)
    teacher, student = make_pair()
    before = [p.detach().clone() for p in student.parameters()]
    history = distill(student, teacher, data, epochs=1, feature=feature, feature_weight=2.0, augment=augment,
                      student_layer=1, teacher_layer=1, batch_size=32, progress=False, device="cpu")
    assert math.isfinite(history[0]["train_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


def test_distill_rejects_unknown_names():
    data = tiny_dataset(16)
    teacher, student = make_pair()
    with pytest.raises(ValueError, match="unknown distillation loss 'fitnet'.*dkd"):
        distill(student, teacher, data, loss="fitnet", progress=False)
    with pytest.raises(ValueError, match="unknown feature loss 'at'"):
        distill(student, teacher, data, feature="at", progress=False)
    mlp = build_model("student_mlp")
    with pytest.raises(ValueError, match="attention transfer needs feature maps"):
        distill(mlp, teacher, data, feature="attention", progress=False, device="cpu")


def test_feature_probe_leaves_batchnorm_statistics_alone():
    data = tiny_dataset(32)
    teacher, student = make_pair()
    before = {k: v.clone() for k, v in student.state_dict().items() if "running" in k}
    distill(student, teacher, data, epochs=1, feature="hint", student_layer=1, teacher_layer=1,
            batch_size=32, progress=False, device="cpu", lr=1e-12, precision="fp32")  # lr ~ 0: only BN statistics
    one_batch = build_model("student_cnn", width=0.5)
    one_batch.load_state_dict({**student.state_dict(), **before})
    one_batch.train()
    with torch.no_grad():
        x, _ = next(data.train.batches(32, shuffle=True, seed=0 * 100_003))
        one_batch(x)  # the single training batch updates the statistics exactly once
    for k in before:
        torch.testing.assert_close(student.state_dict()[k], one_batch.state_dict()[k])


def test_hints_between_two_vision_transformers_map_each_token():
    """Token features (N, T, D) get a Linear regressor on D (notebook 11's ViT); widths may differ."""
    from distill_utils.tasks.transformer import build_vit
    data = tiny_dataset(32)
    teacher, student = build_vit(data=data, dim=16, depth=2, heads=2), build_vit(data=data, dim=8, depth=1, heads=2)
    history = distill(student, teacher, data, feature="hint", epochs=1, batch_size=16, progress=False)
    assert math.isfinite(history[0]["train_loss"])
    hint = HintLoss(8, 16, spatial=False)
    s, t = torch.randn(3, 17, 8), torch.randn(3, 17, 16)
    torch.testing.assert_close(hint(s, t), F.mse_loss(s @ hint.regressor.weight.T, t))
