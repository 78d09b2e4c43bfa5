"""One candidate of the search: build it, measure its cost, distill it, score it (notebook 10).

A **candidate** is a way to get a small model from the teacher: a fresh student of some width,
or the teacher with some of its conv channels removed (one ratio, or one per layer), then
distilled from the unpruned teacher with a temperature ``T``, a weight ``alpha``, a loss
(``kd``/``dkd``) and a number of epochs. It is scored on a **validation split held out from the
training images** (never on the test set), against its cost: parameters, FLOPs or latency.
"""
from __future__ import annotations

from dataclasses import dataclass

from distill_utils.runs.search.space import SPACE

__all__ = ["Context", "context", "complete_choice", "build_candidate", "measure_cost", "train_candidate",
           "trial_choice", "load_model", "save_model", "lineage_of"]


# The calls into provenance, kept here so that one place follows the checkpoint format.
def load_model(path) -> tuple:
    """``(model, manifest)`` of a checkpoint file (a teacher, or a trial's model)."""
    from distill_utils.provenance.checkpoints import load_checkpoint
    return load_checkpoint(path)


def save_model(model, path, trial: int, lineage=None) -> None:
    """Save a trial's trained model as a checkpoint that names its trial (and, with ``lineage``, its origin)."""
    from distill_utils.provenance.checkpoints import save_checkpoint
    save_checkpoint(model, path, metadata={"trial": trial}, lineage=lineage)


def lineage_of(choice: dict, ctx: Context):
    """Where a trained candidate comes from: the teacher (pruned, or a fresh student), then distillation."""
    from distill_utils.provenance.lineage import Lineage, file_ref
    teacher = file_ref(ctx.teacher_manifest)
    if choice["model"] == "pruned_teacher":
        start = Lineage.of(ctx.teacher_manifest).then("prune_channels", amount=list(choice["prune_ratios"]),
                                                      criterion=choice["criterion"])
    else:
        start = Lineage().then("build_model", name=choice["model"], width=choice["student_width"])
    return start.then("distill", teacher=teacher, loss=choice["loss"], T=choice["T"], alpha=choice["alpha"],
                      epochs=choice["epochs"], lr=choice["lr"], batch_size=ctx.config["batch_size"],
                      images=len(ctx.train), seed=ctx.config["seed"])


@dataclass
class Context:
    """What every trial of one space shares: the data splits and the teacher."""
    config: dict
    train: object
    val: object
    test: object
    teacher: object
    num_classes: int
    teacher_manifest: dict | None = None  # the teacher file's manifest: what a trial's lineage names


def context(config: dict) -> Context:
    """Load the data (train minus a validation split, and test) and the teacher of a space (notebook 10).

    Each call loads them again (about a second): a search worker loads them once and passes
    its ``Context`` to every trial it runs."""
    from distill_utils.data import load_dataset
    from distill_utils.provenance.checkpoints import load_pretrained
    from distill_utils.runs.experiments import REPO
    ds = load_dataset(config["dataset"], root=config["data_root"] or REPO / "data",
                      val_size=config["val_images"], seed=config["seed"])
    train = ds.train
    if config["train_images"] and config["train_images"] < len(train):
        train = train.subset(config["train_images"], seed=config["seed"])
    teacher, manifest = load_model(config["teacher"]) if config["teacher"] else load_pretrained()
    return Context(config, train, ds.val, ds.test, teacher.eval(), ds.num_classes, manifest)


def complete_choice(choice: dict, config: dict, teacher=None) -> dict:
    """``choice`` with every searchable name filled in: the space's fixed values, then defaults.
    ``prune_ratio`` becomes the per-layer list ``prune_ratios`` (one per conv of the teacher). Notebook 10."""
    fixed = {k: v for k, v in config["space"].items() if not isinstance(v, (dict, list))}
    full = {name: default for name, (_, _, default) in SPACE.items()}
    full.update(fixed)
    full.update(choice)
    layers = len(teacher.features) if teacher is not None else 3
    ratios, ratio = full.pop("prune_ratios"), full.pop("prune_ratio")
    if "prune_ratios" in choice or ("prune_ratio" not in choice and ratios is not None):
        ratio = ratios
    full["prune_ratios"] = list(ratio) if isinstance(ratio, list) else [ratio] * layers
    if full["model"] == "pruned_teacher":
        full["student_width"] = None  # not used: recorded as empty
    else:
        full["prune_ratios"] = full["criterion"] = None
    return full


def trial_choice(row, config: dict, teacher=None) -> dict:
    """A trial's full choice (``complete_choice``'s form) from its ``trials_table`` row: what
    ``train_candidate`` needs to train the same candidate again, e.g. with another seed. Notebook 10."""
    picked = {k: v for k, v in row.items() if (k in SPACE or k.startswith("prune_ratio_")) and v is not None and v == v}
    layers = sorted((k for k in picked if k.startswith("prune_ratio_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    if layers:
        picked["prune_ratios"] = [float(picked.pop(k)) for k in layers]
    if "epochs" in picked:
        picked["epochs"] = int(picked["epochs"])
    return complete_choice(picked, config, teacher)


def build_candidate(choice: dict, ctx: Context):
    """The untrained candidate: a fresh student, or the teacher with channels removed (notebooks 03, 06, 10)."""
    from distill_utils.models import build_model
    from distill_utils.prune import prune_channels
    from distill_utils.train import set_seed
    if choice["model"] == "pruned_teacher":
        return prune_channels(ctx.teacher, list(choice["prune_ratios"]), criterion=choice["criterion"])
    set_seed(choice.get("seed", ctx.config["seed"]))
    return build_model(choice["model"], width=choice["student_width"], num_classes=ctx.num_classes,
                       in_channels=ctx.train.x.shape[1], image_size=ctx.train.x.shape[-1])


def measure_cost(model, ctx: Context) -> dict:
    """Parameters, FLOPs per image and the median latency of a batch (ms), on this machine (notebook 10)."""
    from distill_utils.measure import count_flops, count_params, latency_ms
    x = ctx.val.x[:ctx.config["latency_batch"]]
    return {"params": count_params(model), "flops": count_flops(model, x[:1]),
            "latency_ms": round(latency_ms(model, x, repeats=ctx.config["latency_repeats"], warmup=2)["latency_ms"], 3)}


def train_candidate(choice: dict, ctx: Context, seed: int | None = None, on_epoch=None, model=None,
                    cost: dict | None = None, test: bool = False) -> dict:
    """Build ``choice`` (``complete_choice``'s form), distill it from the teacher, score it (notebook 10).

    ``on_epoch(epoch, val_acc)`` runs after every epoch (it may raise to stop). Returns the
    model, its cost, ``val_acc`` (what the search optimises) and its curve; with ``test`` also
    ``test_acc``, which the search never computes (notebook 10 uses it to judge the winners
    afterwards). ``model`` and ``cost``: already built and measured."""
    from distill_utils.distill import distill
    from distill_utils.train import evaluate, set_seed
    seed = ctx.config["seed"] if seed is None else seed
    model = model if model is not None else build_candidate({**choice, "seed": seed}, ctx)
    cost = cost or measure_cost(model, ctx)
    set_seed(seed)  # batch order, dropout
    n_batches = -(-len(ctx.train) // ctx.config["batch_size"])
    curve = []

    def after_step(step):
        if step % n_batches == 0:  # the end of an epoch
            curve.append(evaluate(model, ctx.val))
            if on_epoch is not None:
                on_epoch(len(curve), curve[-1])

    distill(model, ctx.teacher, ctx.train, epochs=choice["epochs"], loss=choice["loss"], T=choice["T"],
            alpha=choice["alpha"],
            loss_kwargs={"nckd_weight": choice["dkd_nckd_weight"]} if choice["loss"] == "dkd" else None,
            lr=choice["lr"], batch_size=ctx.config["batch_size"], seed=seed, progress=False, callback=after_step)
    result = {"model": model, **cost, "val_acc": curve[-1], "val_acc_curve": curve}
    return {**result, "test_acc": evaluate(model, ctx.test)} if test else result
