"""Automatic compression search: an Optuna multi-objective study over how to compress (notebook 10).

A **candidate** is a way to get a small model from the teacher: a fresh student of some width,
or the teacher with some of its conv channels removed (one ratio, or one per layer), then
distilled from the unpruned teacher with a temperature ``T``, a weight ``alpha``, a loss
(``kd``/``dkd``) and a number of epochs. The search space (``params/search.yaml``) says which
of these vary and how; ``load_space`` checks it like notebook parameters. Each trial trains one
candidate on training images and is scored on a **validation split held out from the training
images** (never on the test set), against its cost: parameters, FLOPs or measured latency.
NSGA-II (``optuna.samplers.NSGAIISampler``) with a fixed seed proposes the candidates.

Per-epoch reports and early stopping: Optuna's ``trial.report`` and its pruners work for
single-objective studies only (``report`` raises ``NotImplementedError`` for two objectives).
So each trial stores its validation accuracy after every epoch in its ``val_acc_curve``
attribute, and this module's own rule stops it early: after an epoch that is not its last, a
trial stops when ``prune_when_beaten_by`` finished trials that cost no more had a validation
accuracy at least ``prune_margin`` higher at that same epoch (it would very likely end
dominated). A stopped trial is ``PRUNED``; 0 turns the rule off.

Storage and resuming: the study is the journal file ``out/study.journal`` (or any Optuna
storage URL, e.g. PostgreSQL, for workers on several machines). Running the same search again
continues it: finished trials (complete, pruned or failed with an error) count towards
``trials`` and are never run again; a trial whose worker was killed is marked failed and its
parameters are queued again. A folder made with a different space is refused. Every trial
leaves ``out/trial-NNNN/search.record.json`` in the format of notebook runs, so
``experiments.collect(out)`` and ``python -m distill_utils report out`` read a search folder
(a parameter a kind of model does not use, e.g. a pruned teacher's width, is recorded as "-").
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

from distill_utils.common.files import atomic_write_bytes, atomic_write_json
from distill_utils.runs.params import RULES, fraction, positive

__all__ = ["SpaceError", "load_space", "fingerprint", "search", "trials_table", "pareto_mask", "dominates", "context",
           "complete_choice", "build_candidate", "measure_cost", "train_candidate", "trial_choice", "study_summary",
           "COSTS", "RECORD_NAME"]

RECORD_NAME = "search"  # every trial's record: out/trial-NNNN/search.record.json
COSTS = ("params", "flops", "latency_ms")
MODELS = ("student_cnn", "student_mlp", "pruned_teacher")


class SpaceError(ValueError):
    """A search space file has an unknown name, a bad type or an empty range."""


def _choice(*names):
    return lambda v: None if v in names else f"must be one of {', '.join(names)}"


def _count(low):
    return lambda v: None if v >= low else f"must be >= {low}"


# Fixed settings: name -> (type, default, rule or None, what it is)
SETTINGS = {
    "dataset": (str, "fashion_mnist", RULES["dataset"], "the teacher's dataset"),
    "data_root": (str, "", None, "dataset folder; empty: the project's data/ (Debian's copy is found too)"),
    "teacher": (str, "", None, "teacher .safetensors; empty: the shipped teacher"),
    "train_images": (int, 10000, _count(0), "training images per trial (0: all left after validation)"),
    "val_images": (int, 5000, _count(1), "held out from the training images; trials are scored on them"),
    "batch_size": (int, 128, _count(1), "training batch size"),
    "cost": (str, "params", _choice(*COSTS), "the objective minimised beside validation accuracy"),
    "seed": (int, 0, _count(0), "seeds the sampler, the validation split and every trial"),
    "population": (int, 8, _count(2), "NSGA-II population size (its first generation is random)"),
    "prune_margin": (float, 0.02, fraction, "accuracy (0-1) by which finished trials must lead to stop one"),
    "prune_when_beaten_by": (int, 2, _count(0), "finished trials that must lead to stop one early (0: never)"),
    "latency_batch": (int, 256, _count(1), "batch size of the latency measurement"),
    "latency_repeats": (int, 10, _count(1), "timed forward passes (median)"),
}

# Searchable names -> (kind, rule for each value, default when the space leaves it out)
SPACE = {
    "model": ("choice", _choice(*MODELS), "student_cnn"),
    "student_width": ("float", positive, 1.0),
    "prune_ratio": ("float", RULES["amount"], 0.5),
    "prune_ratios": ("float", RULES["amount"], None),
    "criterion": ("choice", RULES["criterion"], "l1"),
    "T": ("float", RULES["T"], 4.0),
    "alpha": ("float", RULES["alpha"], 0.9),
    "loss": ("choice", RULES["loss"], "kd"),
    "dkd_nckd_weight": ("float", RULES["dkd_nckd_weight"], 1.0),
    "epochs": ("int", RULES["epochs"], 2),
    "lr": ("float", RULES["lr"], 0.003),
}


def _did_you_mean(name, names) -> str:
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def _type_error(value, kind) -> str | None:
    if isinstance(value, bool) or not isinstance(value, {"int": int, "float": (int, float), "choice": str}[kind]):
        what = {"float": "a number", "int": "an integer", "choice": "a name"}[kind]
        return f"must be {what}, got {value!r}"
    return None


def _check_entry(name, entry) -> list[str]:
    kind, rule, _ = SPACE[name]
    where = f"space.{name}"
    if isinstance(entry, dict):
        if kind == "choice":
            return [f"{where}: a range makes no sense for names; give one value or a list, e.g. [kd, dkd]"]
        unknown = set(entry) - {"low", "high", "log", "step"}
        if unknown:
            u = sorted(unknown)[0]
            return [f"{where}.{u}: unknown key; {_did_you_mean(u, ['low', 'high', 'log', 'step'])}"
                    "a range has low, high and optionally log (true/false) or step"]
        if "low" not in entry or "high" not in entry:
            return [f"{where}: a range needs both low and high, e.g. {{low: 1.0, high: 8.0}}"]
        problems = [f"{where}.{k} = {entry[k]!r} {msg}" for k in ("low", "high")
                    if (msg := _type_error(entry[k], kind) or rule(entry[k]))]
        if not problems and entry["low"] > entry["high"]:
            problems.append(f"{where}: low = {entry['low']} is greater than high = {entry['high']}; swap them")
        if not isinstance(entry.get("log", False), bool):
            problems.append(f"{where}.log = {entry['log']!r} must be true or false")
        elif entry.get("log") and not problems and entry["low"] <= 0:
            problems.append(f"{where}: a log range needs low > 0, got {entry['low']}")
        if "step" in entry and (_type_error(entry["step"], kind) or entry["step"] <= 0):
            problems.append(f"{where}.step = {entry['step']!r} must be a positive {kind}")
        return problems
    values = entry if isinstance(entry, list) else [entry]
    if not values:
        return [f"{where}: an empty list; give at least one value"]
    return [f"{where} = {v!r} {msg}" for v in values if (msg := _type_error(v, kind) or rule(v))][:1]


def load_space(source, **overrides) -> dict:
    """The validated search space: ``{**settings, "space": {name: entry}}`` (notebook 10).

    ``source`` is a YAML file or a dict; ``overrides`` replace settings (the notebook's sizes).
    A space entry is a fixed value (``T: 4.0``), a list of choices (``loss: [kd, dkd]``) or a
    range (``T: {low: 1.0, high: 8.0, log: true}``; ``epochs: {low: 1, high: 3}``). Raises
    ``SpaceError`` naming every problem (unknown names with a close match, bad types, low > high).
    """
    where = str(source) if not isinstance(source, dict) else "the search space"
    if isinstance(source, dict):
        raw = source
    else:
        try:
            raw = yaml.safe_load(Path(source).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise SpaceError(f"cannot read the search space {source}: {err}") from None
    if not isinstance(raw, dict):
        raise SpaceError(f"{where} must be a mapping of settings plus a 'space:' section, got {type(raw).__name__}")
    raw = {**raw, **overrides}
    problems, config = [], {}
    for name, value in raw.items():
        if name == "space":
            continue
        if name not in SETTINGS:
            problems.append(f"{name}: unknown setting; {_did_you_mean(name, [*SETTINGS, 'space'])}"
                            f"settings are: {', '.join(SETTINGS)}, and the 'space' section")
            continue
        kind, _, rule, _ = SETTINGS[name]
        bad = isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind)
        if msg := (f"must be {kind.__name__}, got {value!r}" if bad else rule(value) if rule else None):
            problems.append(f"{name} = {value!r} {msg}")
        config[name] = float(value) if kind is float and not bad else value
    space = raw.get("space")
    if not isinstance(space, dict) or not space:
        problems.append("space: missing or empty; list what varies, e.g. space: {T: {low: 1.0, high: 8.0}}")
        space = {}
    for name, entry in space.items():
        if name not in SPACE:
            problems.append(f"space.{name}: unknown name; {_did_you_mean(name, SPACE)}"
                            f"searchable names are: {', '.join(SPACE)}")
        else:
            problems += _check_entry(name, entry)
    if "prune_ratio" in space and "prune_ratios" in space:
        problems.append("space: give prune_ratio (one ratio for every layer) or prune_ratios (one per layer), not both")
    if problems:
        raise SpaceError(f"bad search space ({where}):\n  " + "\n  ".join(problems)
                         + "\nFix the file (params/search.yaml shows every name), then run again.")
    config = {name: config.get(name, default) for name, (_, default, _, _) in SETTINGS.items()}
    config["space"] = {name: space[name] for name in SPACE if name in space}  # a fixed order: a stable fingerprint
    return config


def fingerprint(config: dict) -> str:
    """SHA-256 of the validated space: a study folder belongs to exactly one space."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _flat(config, prefix="") -> dict:
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _difference(old: dict, new: dict) -> str:
    a, b = _flat(old), _flat(new)
    diffs = [f"{k}: {a.get(k, '(none)')!r} there, {b.get(k, '(none)')!r} now" for k in sorted(set(a) | set(b))
             if a.get(k, "(none)") != b.get(k, "(none)")]
    return "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")


# ---------------------------------------------------------------- one candidate: build, measure, train

@dataclass
class Context:
    """What every trial of one space shares: the data splits and the teacher."""
    config: dict
    train: object
    val: object
    test: object
    teacher: object
    num_classes: int


_CONTEXTS: dict = {}


def context(config: dict) -> Context:
    """Load the data (train minus a validation split, and test) and the teacher, once per process."""
    from distill_utils.provenance.checkpoints import load_checkpoint, load_pretrained
    from distill_utils.data import load_dataset
    from distill_utils.runs.experiments import REPO
    key = json.dumps({k: config[k] for k in ("dataset", "data_root", "teacher", "train_images", "val_images", "seed")})
    if key not in _CONTEXTS:
        ds = load_dataset(config["dataset"], root=config["data_root"] or REPO / "data",
                          val_size=config["val_images"], seed=config["seed"])
        train = ds.train
        if config["train_images"] and config["train_images"] < len(train):
            train = train.subset(config["train_images"], seed=config["seed"])
        teacher = load_checkpoint(config["teacher"])[0] if config["teacher"] else load_pretrained()[0]
        _CONTEXTS.clear()  # one space at a time: the data is large
        _CONTEXTS[key] = Context(config, train, ds.val, ds.test, teacher.eval(), ds.num_classes)
    return _CONTEXTS[key]


def complete_choice(choice: dict, config: dict, teacher=None) -> dict:
    """``choice`` with every searchable name filled in: the space's fixed values, then defaults.
    ``prune_ratio`` becomes the per-layer list ``prune_ratios`` (one per conv of the teacher)."""
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


def build_candidate(choice: dict, ctx: Context):
    """The untrained candidate: a fresh student, or the teacher with channels removed (notebook 06)."""
    from distill_utils.models import build_model
    from distill_utils.prune import prune_channels
    from distill_utils.train import set_seed
    if choice["model"] == "pruned_teacher":
        return prune_channels(ctx.teacher, list(choice["prune_ratios"]), criterion=choice["criterion"])
    set_seed(choice.get("seed", ctx.config["seed"]))
    return build_model(choice["model"], width=choice["student_width"], num_classes=ctx.num_classes,
                       in_channels=ctx.train.x.shape[1], image_size=ctx.train.x.shape[-1])


def measure_cost(model, ctx: Context) -> dict:
    """Parameters, FLOPs per image and the median latency of a batch (ms), on this machine."""
    from distill_utils.measure import count_flops, count_params, latency_ms
    x = ctx.val.x[:ctx.config["latency_batch"]]
    return {"params": count_params(model), "flops": count_flops(model, x[:1]),
            "latency_ms": round(latency_ms(model, x, repeats=ctx.config["latency_repeats"], warmup=2)["latency_ms"], 3)}


def train_candidate(choice: dict, ctx: Context, seed: int | None = None, on_epoch=None, model=None,
                    cost: dict | None = None, test: bool = False) -> dict:
    """Build ``choice`` (``complete_choice``'s form), distill it from the teacher, score it.

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


# ---------------------------------------------------------------- the study

def _suggest(trial, space: dict, layers: int) -> dict:
    choice = {}
    for name, entry in space.items():
        kind = SPACE[name][0]
        pruned = choice.get("model", SPACE["model"][2]) == "pruned_teacher"  # model comes first
        pruning = name in ("prune_ratio", "prune_ratios", "criterion")
        if (name == "student_width" and pruned) or (pruning and not pruned):
            continue  # conditional: a pruned teacher has no width, a student no pruning
        names = [f"prune_ratio_{i + 1}" for i in range(layers)] if name == "prune_ratios" else [name]
        values = []
        for n in names:
            if isinstance(entry, list):
                values.append(trial.suggest_categorical(n, entry))
            elif isinstance(entry, dict):
                suggest = trial.suggest_int if kind == "int" else trial.suggest_float
                values.append(suggest(n, entry["low"], entry["high"], log=entry.get("log", False),
                                      **({"step": entry["step"]} if "step" in entry else {})))
            else:
                values.append(entry)
        choice[name] = values if name == "prune_ratios" else values[0]
    return choice


def dominates(a, b) -> bool:
    """``a`` = (accuracy, cost) is at least as accurate and as cheap as ``b`` and better in one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def pareto_mask(acc, cost) -> list[bool]:
    """Which points no other point dominates (higher accuracy, lower cost)."""
    points = list(zip(acc, cost))
    return [not any(dominates(q, p) for q in points) for p in points]


def _stop_reason(trials, cost: float, epoch: int, acc: float, config: dict) -> str | None:
    """The early-stopping rule (see the module docstring); None to go on."""
    need = config["prune_when_beaten_by"]
    if not need:
        return None
    leaders = [t.number for t in trials if t.state.name == "COMPLETE" and t.values[1] <= cost
               and len(curve := t.user_attrs.get("val_acc_curve", [])) >= epoch
               and curve[epoch - 1] >= acc + config["prune_margin"]]
    if len(leaders) < need:
        return None
    return (f"stopped after epoch {epoch} (val_acc {acc:.4f}): {len(leaders)} finished trials that cost no more "
            f"led by >= {config['prune_margin']:.3f} at that epoch (trials {', '.join(map(str, leaders[:5]))})")


def _process_token(pid: int) -> str | None:
    """pid plus its start time (Linux), so a reused pid is not mistaken for the same process."""
    try:
        return f"{pid}:{Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[19]}"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
            return str(pid)
        except ProcessLookupError:
            return None
        except OSError:
            return str(pid)


_ACTIVE: set = set()  # the worker tokens running in this process
HEARTBEAT_S, STALE_S = 30.0, 600.0


def _is_stale(trial) -> bool:
    worker = trial.user_attrs.get("worker")
    if not worker:  # asked but never started (killed in between)
        return time.time() - trial.datetime_start.timestamp() > STALE_S if trial.datetime_start else False
    if worker["host"] == socket.gethostname():
        if worker["pid"] == os.getpid():
            return worker["token"] not in _ACTIVE  # an interrupted run of this process (a notebook kernel)
        return _process_token(worker["pid"]) != worker["process"]
    return time.time() - trial.user_attrs.get("alive_at", 0) > STALE_S  # another machine: its heartbeat


def _fail_stale(study, out: Path) -> None:
    """Mark trials whose worker died as failed, and queue their parameters again."""
    import optuna

    from distill_utils.runs.experiments import mark_failed
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if not _is_stale(t):
            continue
        try:  # (Optuna has no public call to finish another process's trial)
            study._storage.set_trial_user_attr(t._trial_id, "killed", True)  # a finished trial takes no attributes
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        mark_failed(out / f"trial-{t.number:04d}", RECORD_NAME,
                    "its worker stopped (killed or interrupted) during the trial; its parameters are queued again")


def _counted(trial) -> bool:
    """Finished trials count towards the total; killed ones do not (their parameters run again)."""
    name = trial.state.name
    return name in ("COMPLETE", "PRUNED") or (name == "FAIL" and not trial.user_attrs.get("killed"))


def _open_study(config: dict, out: Path, storage, name: str, sampler=None):
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage is None:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend
        storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
    study = optuna.create_study(storage=storage, study_name=name, directions=["maximize", "minimize"],
                                sampler=sampler, load_if_exists=True)
    old = study.user_attrs.get("space")
    if old is None:
        study.set_user_attr("space", config)
        study.set_user_attr("fingerprint", fingerprint(config))
    elif fingerprint(old) != fingerprint(config):
        raise SpaceError(f"{out} holds a study of a different search space ({_difference(old, config)}). Use another "
                         f"--out folder, or the space it was made with (saved as {out / 'space.yaml'})")
    return study


def _heartbeat(study, trial_id, stop: threading.Event):
    while not stop.wait(HEARTBEAT_S):
        study._storage.set_trial_user_attr(trial_id, "alive_at", time.time())


def _run_trial(study, trial, config, ctx, out: Path, token: str, progress: bool):
    import optuna

    from distill_utils.provenance.checkpoints import save_checkpoint
    from distill_utils.runs.experiments import Run, mark_failed
    choice = _suggest(trial, config["space"], len(ctx.teacher.features))
    full = complete_choice(choice, config, ctx.teacher)
    run_dir = out / f"trial-{trial.number:04d}"
    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid(), "token": token,
                                   "process": _process_token(os.getpid())})
    trial.set_user_attr("alive_at", time.time())
    settings = {k: config[k] for k in ("dataset", "train_images", "val_images", "batch_size", "cost", "seed")}
    recorded = {k: "-" if v is None else v for k, v in full.items()}  # "-": not used by this kind of model
    run = Run(RECORD_NAME, run_dir, {"trial": trial.number, **recorded, **settings, "out_dir": str(run_dir)})
    stop = threading.Event()
    threading.Thread(target=_heartbeat, args=(study, trial._trial_id, stop), daemon=True).start()
    start = time.perf_counter()

    curve, cost = [], {}

    def on_epoch(epoch, acc):
        curve.append(acc)
        trial.set_user_attr("val_acc_curve", curve)
        if epoch < full["epochs"]:
            reason = _stop_reason(study.get_trials(deepcopy=False), cost[config["cost"]], epoch, acc, config)
            if reason:
                raise optuna.TrialPruned(reason)

    try:
        model = build_candidate({**full, "seed": config["seed"]}, ctx)
        cost.update(measure_cost(model, ctx))  # known before training: the stop rule needs it
        for k, v in cost.items():
            trial.set_user_attr(k, v)
        result = train_candidate(full, ctx, on_epoch=on_epoch, model=model, cost=cost)
        save_checkpoint(result["model"], run_dir / "model.safetensors", metadata={"trial": trial.number})
        metrics = {k: result[k] for k in ("val_acc", "val_acc_curve")}
        metrics.update(cost, epochs_run=len(result["val_acc_curve"]))
        for k, v in metrics.items():
            trial.set_user_attr(k, v)
        run.finish(metrics, main="val_acc")
        study.tell(trial, [result["val_acc"], cost[config["cost"]]])
        status = f"val_acc {result['val_acc']:.4f}, {config['cost']} {cost[config['cost']]:,}"
    except optuna.TrialPruned as err:
        atomic_write_json(run.path, {**run.record, "status": "pruned", "error": str(err),
                                     "metrics": {"val_acc": curve[-1], "val_acc_curve": curve, **cost},
                                     "main_metric": "val_acc", "wall_s": round(time.perf_counter() - start, 1)})
        trial.set_user_attr("stopped", str(err))
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        status = str(err)
    except Exception as err:  # NaN loss, a bad combination, ...: this trial fails, the study goes on
        error = f"{type(err).__name__}: {err}"
        mark_failed(run_dir, RECORD_NAME, error)
        trial.set_user_attr("error", error)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        status = f"FAILED: {error}"
    except KeyboardInterrupt:  # stopped by hand: not counted, its parameters run again next time
        mark_failed(run_dir, RECORD_NAME, "interrupted; its parameters are queued again")
        trial.set_user_attr("killed", True)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        raise
    finally:
        stop.set()
    if progress:
        print(f"trial {trial.number:3d} ({full['model']}, {time.perf_counter() - start:.0f} s): {status}", flush=True)


def _seed_for(config, worker: int, existing: int) -> int:
    """The study's seed for a fresh single-worker study; a different one for every other worker
    and every resumption, so no two samplers propose the same candidates."""
    if worker == 0 and existing == 0:
        return config["seed"]
    return int.from_bytes(hashlib.sha256(f"{config['seed']}/{worker}/{existing}".encode()).digest()[:4], "big")


def _work(config: dict, out: str, storage, name: str, trials: int, worker: int = 0, threads: int | None = None,
          progress: bool = True) -> int:
    """One worker: run trials until the study has ``trials`` finished ones. Returns how many it ran."""
    import optuna
    import torch
    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    study = _open_study(config, out, storage, name)
    existing = len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.NSGAIISampler(population_size=config["population"],
                                                  seed=_seed_for(config, worker, existing))
    ctx = context(config)
    token = uuid.uuid4().hex
    _ACTIVE.add(token)
    ran = 0
    try:
        while True:
            _fail_stale(study, out)
            all_trials = study.get_trials(deepcopy=False)
            running = sum(t.state.name == "RUNNING" for t in all_trials)
            if sum(map(_counted, all_trials)) + running >= trials:
                return ran
            _run_trial(study, study.ask(), config, ctx, out, token, progress)
            ran += 1
    finally:
        _ACTIVE.discard(token)


def search(space, trials: int, out, workers: int = 1, scheduler=None, storage: str | None = None,
           name: str | None = None, progress: bool = True, **overrides):
    """Run (or continue) a study until it has ``trials`` finished trials; returns ``trials_table``.

    ``space``: a YAML file or dict for ``load_space`` (``overrides`` replace its settings).
    ``out``: the study folder (``study.journal``, ``space.yaml``, ``trial-NNNN/``); running
    again continues it, and a folder of another space is refused. ``workers`` processes on this
    machine (1: in this process), each with ``cores / workers`` threads; ``scheduler`` (a Dask
    address ``tcp://host:8786`` or a ``distributed.Client``) runs ``workers`` of them (default:
    one per Dask thread) on a cluster, which needs ``out`` on a shared disk or an RDB ``storage``
    URL (e.g. ``postgresql://user@host/db``) that every machine reaches. Notebook 10.
    """
    from distill_utils.runs.sweeps import threads_per_worker
    config = load_space(space, **overrides)
    if not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be a whole number >= 1, got {trials!r}")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    name = name or out.name
    _open_study(config, out, storage, name)  # refuses another space's folder before any work
    atomic_write_bytes(out / "space.yaml", yaml.safe_dump(config, sort_keys=False).encode())
    if scheduler is not None:
        _search_dask(scheduler, config, out, storage, name, trials, workers, progress)
    elif workers <= 1:
        _work(config, str(out), storage, name, trials, 0, None, progress)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            threads = threads_per_worker(workers)
            jobs = [pool.submit(_work, config, str(out), storage, name, trials, i, threads, progress)
                    for i in range(workers)]
            for job in jobs:
                job.result()
    return trials_table(out, storage, name)


def _on_dask_worker(host_threads: dict, *args, progress: bool = True):
    """``_work`` on a Dask worker, with this host's cores shared among the workers it hosts."""
    from distributed import get_worker

    from distill_utils.runs.sweeps import threads_per_worker
    host = get_worker().address.rsplit(":", 1)[0]
    return _work(*args, threads=threads_per_worker(host_threads.get(host, 1)), progress=progress)


def _search_dask(scheduler, config, out, storage, name, trials, workers, progress):
    """``workers`` worker loops as Dask tasks (as ``sweeps`` sends runs); they share the storage."""
    from collections import Counter

    from distributed import Client
    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    try:
        host_threads = Counter()
        for address, n in client.nthreads().items():
            host_threads[address.rsplit(":", 1)[0]] += n
        n = workers if workers and workers > 1 else sum(host_threads.values())
        futures = [client.submit(_on_dask_worker, dict(host_threads), config, str(out), storage, name, trials, i,
                                 progress=progress, pure=False,
                                 key=f"distill-search-{out.name}-{i}-{uuid.uuid4().hex[:8]}")
                   for i in range(n)]
        client.gather(futures)
    finally:
        if not isinstance(scheduler, Client):
            client.close()


def _param_order(name: str):
    """Table columns in the order of SPACE, per-layer ratios where prune_ratios stands."""
    base = "prune_ratios" if name.startswith("prune_ratio_") else name
    return (list(SPACE).index(base) if base in SPACE else len(SPACE), name)


def trials_table(out, storage=None, name: str | None = None):
    """One row per trial: number, state, ``pareto`` (on the validation front), ``val_acc``, the
    costs, ``epochs_run``, the sampled parameters, a note (why it failed or stopped), its
    seconds and its worker (host:pid); ``df.attrs["config"]`` is the space."""
    import pandas as pd
    out = Path(out).resolve()
    config = yaml.safe_load((out / "space.yaml").read_text())
    study = _open_study(config, out, storage, name or out.name)
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        row = {"trial": t.number, "state": t.state.name.lower(), "pareto": False}
        row.update({k: attrs.get(k) for k in ("val_acc", "params", "flops", "latency_ms", "epochs_run")})
        row.update(t.params)
        killed = "killed; queued again" if attrs.get("killed") else ""
        row["note"] = attrs.get("error") or attrs.get("stopped") or killed
        row["seconds"] = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        row["worker"] = "{host}:{pid}".format(**attrs["worker"]) if "worker" in attrs else None
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        fixed = [c for c in rows[0] if c in ("trial", "state", "pareto", "val_acc", *COSTS, "epochs_run")]
        rest = ("note", "seconds", "worker")
        sampled = sorted((c for c in df.columns if c not in fixed and c not in rest), key=_param_order)
        df = df[fixed + sampled + ["note", "seconds", "worker"]]
    done = df["state"] == "complete" if len(df) else []
    if len(df) and done.any():
        df.loc[done, "pareto"] = pareto_mask(list(df.loc[done, "val_acc"]), list(df.loc[done, config["cost"]]))
    df.attrs.update(config=config, out=str(out))
    return df


def trial_choice(row, config: dict, teacher=None) -> dict:
    """A trial's full choice (``complete_choice``'s form) from its ``trials_table`` row: what
    ``train_candidate`` needs to train the same candidate again, e.g. with another seed."""
    picked = {k: v for k, v in row.items() if (k in SPACE or k.startswith("prune_ratio_")) and v is not None and v == v}
    layers = sorted((k for k in picked if k.startswith("prune_ratio_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    if layers:
        picked["prune_ratios"] = [float(picked.pop(k)) for k in layers]
    if "epochs" in picked:
        picked["epochs"] = int(picked["epochs"])
    return complete_choice(picked, config, teacher)


def _kept_seeds(file: Path) -> dict:
    """``{seed: {"test_acc", "seconds"}}`` kept by ``_retrain``; anything else there is ignored (and redone)."""
    from distill_utils.common.files import ReadRefused, read_limited
    try:
        data = json.loads(read_limited(file, 64 * 1024, "file of retrained seeds"))
    except (OSError, ReadRefused, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {seed: v for seed, v in data.items() if seed.isdigit() and isinstance(v, dict)
            and all(isinstance(v.get(k), float) for k in ("test_acc", "seconds"))}


def _retrain(row, ctx: Context, run_dir: Path, seeds) -> dict:
    """The trial's candidate trained again with each of ``seeds``: ``{seed: {"test_acc" (fp32),
    "seconds"}}``, kept in ``run_dir/seeds.json`` after each one, so a stopped summary continues."""
    from distill_utils.train import evaluate
    file = run_dir / "seeds.json"
    done = _kept_seeds(file)  # {} when there is none yet
    for seed in seeds:
        if str(seed) not in done:
            start = time.perf_counter()
            model = train_candidate(trial_choice(row, ctx.config, ctx.teacher), ctx, seed=seed)["model"]
            done[str(seed)] = {"test_acc": round(evaluate(model, ctx.test, precision="fp32"), 4),
                               "seconds": round(time.perf_counter() - start, 1)}
            atomic_write_json(file, done)
    return {str(s): done[str(s)] for s in seeds}


def study_summary(out, storage=None, name: str | None = None, seeds=()) -> dict:
    """A compact, JSON-ready record of a study for the README (``--summary``): its settings and
    space, how many trials ended how, the compute it took, and its Pareto front, each front
    model with its test accuracy (evaluated here, fp32; the search itself never sees the test set).

    ``test_acc_seeds`` {seed: test accuracy} holds the trial's own (the space's ``seed``) and,
    with ``seeds``, the front model trained again with each of them (resumable, see ``_retrain``;
    ``retrain_seconds`` is what that took)."""
    from distill_utils.provenance.checkpoints import load_checkpoint
    from distill_utils.train import evaluate
    df = trials_table(out, storage, name)
    config = df.attrs["config"]
    ctx = context(config)
    params = [c for c in df.columns if c in SPACE or c.startswith("prune_ratio_")]
    front, retrain_seconds = [], 0.0
    for _, row in df[df.pareto].sort_values(config["cost"]).iterrows():
        trial_dir = Path(df.attrs["out"]) / f"trial-{int(row.trial):04d}"
        model = load_checkpoint(trial_dir / "model.safetensors")[0]
        entry = {"trial": int(row.trial), "val_acc": round(float(row.val_acc), 4),
                 "test_acc": round(evaluate(model, ctx.test, precision="fp32"), 4),
                 **{k: int(row[k]) for k in ("params", "flops", "epochs_run")}}
        entry.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row[params].items() if v == v})
        again = _retrain(row, ctx, trial_dir, [s for s in seeds if s != config["seed"]])
        entry["test_acc_seeds"] = {str(config["seed"]): entry["test_acc"],
                                   **{s: r["test_acc"] for s, r in again.items()}}
        retrain_seconds += sum(r["seconds"] for r in again.values())
        front.append(entry)
    return {"settings": {k: v for k, v in config.items() if k != "space"}, "space": config["space"],
            "train_images": len(ctx.train), "trials": len(df),
            "states": {k: int(v) for k, v in df.state.value_counts().items()},
            "trial_seconds": round(float(df.seconds.fillna(0).sum())),
            "image_epochs": int(df.epochs_run.fillna(0).sum() * len(ctx.train)),
            "retrain_seconds": round(retrain_seconds), "front": front}
