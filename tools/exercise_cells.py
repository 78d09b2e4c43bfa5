"""The self-checking exercises' cells, per notebook: what ``add_exercises.py`` inserts.

Each exercise is a task (markdown), a stub the learner fills in (it raises NotImplementedError until
then), the check that follows it, and a worked solution for ``notebooks/solutions/``. Cell ids are
``ex-<key>-task``, ``ex-<key>-stub``, ``ex-<key>-check`` and ``ex-<key>-solution``: the tool skips a
cell whose id is already in the notebook. ``tests/test_exercise_checks.py`` runs every stub and every
solution here through its check.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Exercise:
    key: str        # cell ids: ex-<key>-...
    title: str
    task: str       # markdown after the title
    function: str   # the learner's function name
    check: str      # the distill_utils.exercises check
    imports: str    # what the stub and the solution need
    signature: str  # def line and docstring
    hint: str       # the stub's comment
    body: str       # the worked solution's body


def _f(text: str) -> str:
    return text.strip("\n")


EXERCISES = {
    "02_soft_targets_and_temperature": (
        Exercise("02-soft-targets", "A. Soft targets at temperature T",
                 "Write `my_soft_targets(logits, T)`, the softmax of `logits` (batch, classes) at temperature `T`, "
                 "without looking at section 1. The check also tries what section 1 did not: `T < 1`, logits of "
                 "`±1000` (where `exp` overflows unless each row's maximum is subtracted first) and a single example.",
                 "my_soft_targets", "check_soft_targets", "import torch",
                 _f('''
def my_soft_targets(logits, T):
    """Softmax of ``logits`` (batch, classes) at temperature ``T``: (batch, classes), each row summing to 1."""'''),
                 "divide by T, subtract each row's maximum, exponentiate, normalise (3 lines)",
                 _f('''
    z = logits / T
    z = z - z.max(-1, keepdim=True).values  # exp(1000) is inf; exp(0) is not, and the result is the same
    return z.exp() / z.exp().sum(-1, keepdim=True)''')),
        Exercise("02-kd-soft-term", "B. The distillation term and its T²",
                 "Write `my_kd_soft_term(student_logits, teacher_logits, T)`: `T² · KL(softmax(t/T) ‖ softmax(s/T))`, "
                 "summed over the classes and averaged over the batch (section 5). The check compares the value "
                 "*and* its gradient with respect to the student's logits with `distill_utils.distill.soft_kl`.",
                 "my_kd_soft_term", "check_kd_soft_term", "import torch\nimport torch.nn.functional as F",
                 _f('''
def my_kd_soft_term(student_logits, teacher_logits, T):
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch: a scalar tensor."""'''),
                 "log_softmax of both at T; KL(p || q) = sum p * (log p - log q) over the classes; mean; times T**2",
                 _f('''
    log_q = F.log_softmax(student_logits / T, dim=1)  # student, (batch, classes)
    log_p = F.log_softmax(teacher_logits / T, dim=1)  # teacher, (batch, classes)
    return (log_p.exp() * (log_p - log_q)).sum(1).mean() * T ** 2''')),
    ),
    "03_knowledge_distillation": (
        Exercise("03-kd-loss", "A. The KD loss from torch functions",
                 "Write `my_kd_loss(student_logits, teacher_logits, labels, T, alpha)` with torch functions only "
                 "(`F.log_softmax`, `F.cross_entropy`; no `soft_kl`): `alpha` weights the soft term, `1 - alpha` the "
                 "cross-entropy on the labels (section 1). The check tries `alpha = 0` and `alpha = 1` too.",
                 "my_kd_loss", "check_kd_loss", "import torch\nimport torch.nn.functional as F",
                 _f('''
def my_kd_loss(student_logits, teacher_logits, labels, T, alpha):
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * cross-entropy(s, labels): a scalar."""'''),
                 "the soft term of notebook 02, the hard term at T = 1, mixed by alpha",
                 _f('''
    log_q = F.log_softmax(student_logits / T, dim=1)
    log_p = F.log_softmax(teacher_logits / T, dim=1)
    soft = (log_p.exp() * (log_p - log_q)).sum(1).mean() * T ** 2
    hard = F.cross_entropy(student_logits, labels)  # on the logits themselves, not softened
    return alpha * soft + (1 - alpha) * hard''')),
        Exercise("03-ece", "B. Expected calibration error",
                 "Write `my_ece(logits, labels, bins)`: each prediction's confidence is its top softmax probability; "
                 "put it in one of `bins` equal-width bins over $[0, 1]$, and add up |accuracy − confidence| of each "
                 "bin weighted by its share of the examples (section 2). A confidence of exactly $1.0$ belongs in the "
                 "last bin.",
                 "my_ece", "check_ece", "import torch",
                 _f('''
def my_ece(logits, labels, bins=15):
    """Expected calibration error of (N, classes) logits against (N,) labels, as a number in [0, 1]."""'''),
                 "confidence and prediction from the softmax; a bin per example; the weighted gaps",
                 _f('''
    confidence, predicted = logits.softmax(1).max(1)  # (N,), (N,)
    correct = (predicted == labels).float()
    which = (confidence * bins).long().clamp(max=bins - 1)  # a confidence of 1.0 goes in the last bin
    ece = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():  # weight: the bin's share of all the examples
            ece += inside.float().mean().item() * (correct[inside].mean() - confidence[inside].mean()).abs().item()
    return ece''')),
    ),
    "04_feature_distillation": (
        Exercise("04-attention-map", "A. The attention map",
                 "Write `my_attention_map(feat)`: (N, C, H, W) -> (N, H·W), the mean over channels of the squared "
                 "activations, flattened, with unit L2 norm per image (section 1). The check includes a block whose "
                 "activations are all zero: its norm is $0$.",
                 "my_attention_map", "check_attention_map", "import torch\nimport torch.nn.functional as F",
                 _f('''
def my_attention_map(feat):
    """(N, C, H, W) -> (N, H*W): channel-mean of squared activations, flattened, unit L2 norm per image."""'''),
                 "square, mean over dim 1, flatten(1), divide by the norm (clamped away from 0)",
                 _f('''
    a = feat.pow(2).mean(1).flatten(1)  # (N, H*W)
    return a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)''')),
        Exercise("04-attention-loss", "B. The attention-transfer loss",
                 "Write `my_attention_loss(student_feat, teacher_feat)`: the mean squared difference of the two "
                 "attention maps (use `my_attention_map`). When the grids differ, resize the *student's* features "
                 "to the teacher's H x W first with bilinear interpolation (`align_corners=False`).",
                 "my_attention_loss", "check_attention_loss", "import torch\nimport torch.nn.functional as F",
                 _f('''
def my_attention_loss(student_feat, teacher_feat):
    """Mean squared difference of the attention maps; the student's features resized to the teacher's grid."""'''),
                 "F.interpolate when the grids differ; then (map_s - map_t) squared, mean",
                 _f('''
    if student_feat.shape[-2:] != teacher_feat.shape[-2:]:
        student_feat = F.interpolate(student_feat, size=teacher_feat.shape[-2:], mode="bilinear", align_corners=False)
    return (my_attention_map(student_feat) - my_attention_map(teacher_feat)).pow(2).mean()''')),
    ),
    "05_magnitude_pruning": (
        Exercise("05-global-threshold", "A. The global magnitude threshold",
                 "Write `my_global_threshold(weights, amount)`: one number, the |w| at or below which the fraction "
                 "`amount` of *all* the weights (a list of tensors, one per layer) lies (section 2). The check keeps "
                 "every weight with |w| > your threshold and compares the masks with `prune_magnitude(..., "
                 "scope=\"global\")`, at `amount = 0` and `amount = 1` too.",
                 "my_global_threshold", "check_global_threshold", "import torch",
                 _f('''
def my_global_threshold(weights, amount):
    """The one |w| at or below which the fraction ``amount`` of all ``weights`` (a list of tensors) lies."""'''),
                 "concatenate every |w|; k = round(amount * n); the k-th smallest (torch.kthvalue); k = 0 removes none",
                 _f('''
    scores = torch.cat([w.detach().abs().flatten() for w in weights])  # (all weights,)
    k = round(amount * scores.numel())  # how many to remove
    if k == 0:
        return -1.0  # below every |w|: nothing is removed
    return torch.kthvalue(scores, k).values.item()''')),
        Exercise("05-cubic-sparsity", "B. The cubic sparsity schedule",
                 "Write `my_cubic_sparsity(step, total_steps, final, initial=0.0)`, Zhu & Gupta's schedule $s = "
                 "\\mathrm{final} + (\\mathrm{initial} - \\mathrm{final})\\,"
                 "(1 - \\mathrm{step} / \\mathrm{total\\_steps})^3$"
                 " (section 3). After `total_steps` the sparsity stays at `final`.",
                 "my_cubic_sparsity", "check_cubic_sparsity", "",
                 _f('''
def my_cubic_sparsity(step, total_steps, final, initial=0.0):
    """The sparsity after ``step`` of ``total_steps`` pruning steps, from ``initial`` to ``final``."""'''),
                 "progress = step / total_steps, kept in [0, 1]; then the formula",
                 _f('''
    progress = min(max(step / total_steps, 0.0), 1.0)  # fraction of the ramp done
    return final + (initial - final) * (1 - progress) ** 3''')),
    ),
    "06_channel_pruning": (
        Exercise("06-l1-ranking", "A. Ranking filters by their L1 norm",
                 "Write `my_l1_filter_ranking(conv)`: the output channels of `conv`, most important first, by the "
                 "L1 norm (sum of |w|) of each filter `conv.weight[c]` (section 1). Return channel indices.",
                 "my_l1_filter_ranking", "check_l1_filter_ranking", "import torch",
                 _f('''
def my_l1_filter_ranking(conv):
    """Output channels of ``conv``, most important first: by the L1 norm of each filter."""'''),
                 "sum |w| over dims 1, 2, 3; argsort, largest first",
                 _f('''
    norms = conv.weight.detach().abs().sum(dim=(1, 2, 3))  # (out_channels,)
    return norms.argsort(descending=True)''')),
        Exercise("06-slice", "B. Slicing conv -> BatchNorm -> next conv",
                 "Write `my_slice_conv_bn_conv(conv, bn, next_conv, keep)`: three *new* modules keeping only "
                 "the output channels `keep` of `conv`: its filters (and bias), the BatchNorm's four per-channel "
                 "tensors, and the next conv's input slices (section 1). The check runs your three modules and "
                 "`prune_channels`' on the same input; `keep` may be unsorted.",
                 "my_slice_conv_bn_conv", "check_slice_conv_bn_conv", "import torch\nfrom torch import nn",
                 _f('''
def my_slice_conv_bn_conv(conv, bn, next_conv, keep):
    """New (conv, bn, next_conv) keeping only output channels ``keep`` of ``conv``; the originals unchanged."""'''),
                 "sort keep; new Conv2d/BatchNorm2d/Conv2d; copy weight[keep], bias[keep], the BN's weight, bias, "
                 "running_mean, running_var [keep], and next_conv.weight[:, keep]",
                 _f('''
    keep = torch.as_tensor(keep).sort().values  # the original channel order
    new_conv = nn.Conv2d(conv.in_channels, len(keep), conv.kernel_size, conv.stride, conv.padding,
                         bias=conv.bias is not None)
    new_conv.weight.data = conv.weight.detach()[keep].clone()  # (kept, in, kh, kw)
    if conv.bias is not None:
        new_conv.bias.data = conv.bias.detach()[keep].clone()
    new_bn = nn.BatchNorm2d(len(keep), eps=bn.eps, momentum=bn.momentum)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(new_bn, name).data = getattr(bn, name).detach()[keep].clone()  # (kept,)
    new_next = nn.Conv2d(len(keep), next_conv.out_channels, next_conv.kernel_size, next_conv.stride,
                         next_conv.padding, bias=next_conv.bias is not None)
    new_next.weight.data = next_conv.weight.detach()[:, keep].clone()  # (out, kept, kh, kw)
    if next_conv.bias is not None:
        new_next.bias.data = next_conv.bias.detach().clone()
    return new_conv, new_bn, new_next''')),
    ),
    "07_prune_and_distill": (
        Exercise("07-keep-counts", "A. How many channels each layer keeps",
                 "Write `my_keep_counts(channels, amount)`: for convs with `channels` output channels each, how "
                 "many each keeps when `prune_channels` removes `amount` of them. `amount` is one ratio for every "
                 "layer or a list with one per layer; a layer of `n` channels loses `round(amount * n)` and always "
                 "keeps at least one.",
                 "my_keep_counts", "check_keep_counts", "",
                 _f('''
def my_keep_counts(channels, amount):
    """Channels each conv keeps: ``channels`` (one count per conv), ``amount`` (a ratio, or one per conv)."""'''),
                 "one ratio per layer; n - round(ratio * n), at least 1",
                 _f('''
    amounts = amount if isinstance(amount, (list, tuple)) else [amount] * len(channels)
    return [max(1, n - round(a * n)) for n, a in zip(channels, amounts)]''')),
        Exercise("07-pareto", "B. The Pareto front",
                 "Write `my_pareto_front(accuracy, cost)`: one `True`/`False` per model, `True` when no other model "
                 "is at least as accurate *and* at most as costly, and better in one of the two (section 2). "
                 "The check includes ties in cost, ties in accuracy and two identical models.",
                 "my_pareto_front", "check_pareto_front", "",
                 _f('''
def my_pareto_front(accuracy, cost):
    """One bool per model: True when no other model dominates it (higher accuracy is better, lower cost)."""'''),
                 "for each model: does any other beat it on one axis and match or beat it on the other?",
                 _f('''
    points = list(zip(accuracy, cost))

    def beats(q, p):  # q dominates p
        return q[0] >= p[0] and q[1] <= p[1] and (q[0] > p[0] or q[1] < p[1])
    return [not any(beats(q, p) for q in points) for p in points]''')),
    ),
    "09_quantize_and_deploy": (
        Exercise("09-scale-zero-point", "A. Scale and zero point",
                 "Write `my_scale_zero_point(lo, hi)`: the uint8 `(scale, zero_point)` for the float range [lo, hi] "
                 "(section 1). Widen the range to include $0$ first, so that $0.0$ is exact; for an all-zero tensor "
                 "(`lo = hi = 0`) use `scale = 1.0` and `zero_point = 0`, as `deploy.int8_params` does.",
                 "my_scale_zero_point", "check_scale_zero_point", "",
                 _f('''
def my_scale_zero_point(lo, hi):
    """uint8 (scale, zero_point) for the float range [lo, hi], widened to include 0."""'''),
                 "widen; scale spreads the range over 255 steps; zero point = the integer that stands for 0.0",
                 _f('''
    lo, hi = min(lo, 0.0), max(hi, 0.0)  # 0.0 must be exact (padding, ReLU outputs)
    if hi == lo:
        return 1.0, 0  # an all-zero tensor: any scale represents it
    scale = (hi - lo) / 255  # 256 levels, 255 steps
    return scale, round(-lo / scale)  # an integer in 0..255, since lo <= 0 <= hi''')),
        Exercise("09-fake-quantize", "B. Fake quantization",
                 "Write `my_fake_quantize(x, scale, zero_point)`: `x` quantized to uint8 and back to floats, the "
                 "round trip int8 inference computes (section 1). Values outside the range saturate.",
                 "my_fake_quantize", "check_fake_quantize", "import torch",
                 _f('''
def my_fake_quantize(x, scale, zero_point):
    """Floats -> uint8 (round, add the zero point, clamp to 0..255) -> floats."""'''),
                 "quantize as section 1 does (round, shift by the zero point, clamp), then dequantize",
                 _f('''
    q = torch.clamp(torch.round(x / scale) + zero_point, 0, 255)  # the uint8 value, held as floats
    return (q - zero_point) * scale''')),
    ),
}


# After the exercises of a notebook: other sections (cell id, "markdown" or "code", source).
SECTIONS = {
    "09_quantize_and_deploy": (
        ("challenge-09-submit-task", "markdown", _f('''
## Submitting to a workshop challenge

In a workshop the leader may run a challenge (README, "Self-checking exercises and the workshop
challenge"): `python -m distill_utils challenge new` writes the task and a signing key for the room.
With `DISTILL_SIGNING_KEY_FILE` set to that key before this notebook ran, every candidate saved in
section 4 is signed, and its lineage goes back to the shipped teacher, so the file alone is a valid
entry. The cell below checks one and, when the leader's shared folder is named in `CHALLENGE_FOLDER`,
copies it there under your name (keep the file's name: the signature covers it). The grader measures
accuracy, size and latency itself: nothing you report is taken on trust.''')),
        ("challenge-09-submit", "code", _f('''
import os
import shutil

entry = out / "final_candidate_0.safetensors"  # section 4's first candidate, its lineage back to the teacher
entry_manifest = verify_checkpoint(entry)  # with the room's key set: its signature is checked too
print(f"{entry.name}: {entry_manifest['bytes']:,} bytes, signature: {entry_manifest['verified']}; lineage: "
      + " -> ".join(step["op"] for step in entry_manifest["lineage"]["steps"]))
if os.environ.get("CHALLENGE_FOLDER"):
    mine = Path(os.environ["CHALLENGE_FOLDER"]) / os.environ.get("USER", "learner")
    mine.mkdir(parents=True, exist_ok=True)
    shutil.copy(entry, mine / entry.name)
    print(f"submitted {mine / entry.name}; the leader grades the folder with `python -m distill_utils challenge grade`")
else:
    print("no CHALLENGE_FOLDER set: in a workshop, set it and DISTILL_SIGNING_KEY_FILE, then run this notebook")''')),
    ),
}
