"""What a search found: the trials table, its Pareto front, and the study's summary for the README (notebook 10).

The front is judged on validation accuracy (the search never sees the test set); the summary
evaluates each front model on the test set afterwards, and with ``seeds`` trains it again with
other seeds (kept in its ``trial-NNNN/seeds.json``, so a stopped summary continues).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from distill_utils.common.files import ReadRefused, atomic_write_json, read_limited
from distill_utils.runs.search import candidates
from distill_utils.runs.search.space import COSTS, SPACE
from distill_utils.runs.search.study import SearchOptions, killed_trials, open_study

__all__ = ["dominates", "pareto_mask", "trials_table", "study_summary"]


def dominates(a, b) -> bool:
    """``a`` = (accuracy, cost) is at least as accurate and as cheap as ``b`` and better in one (notebook 10)."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def pareto_mask(acc, cost) -> list[bool]:
    """Which points no other point dominates (higher accuracy, lower cost); notebook 10."""
    points = list(zip(acc, cost))
    return [not any(dominates(q, p) for q in points) for p in points]


def _param_order(name: str):
    """Table columns in the order of SPACE, per-layer ratios where prune_ratios stands."""
    base = "prune_ratios" if name.startswith("prune_ratio_") else name
    return (list(SPACE).index(base) if base in SPACE else len(SPACE), name)


def _row(trial, killed: set) -> dict:
    attrs = trial.user_attrs
    row = {"trial": trial.number, "state": trial.state.name.lower(), "pareto": False}
    row.update({k: attrs.get(k) for k in ("val_acc", "params", "flops", "latency_ms", "epochs_run")})
    row.update(trial.params)
    killed_note = "killed; queued again" if trial.number in killed else ""
    row["note"] = attrs.get("error") or attrs.get("stopped") or killed_note
    row["seconds"] = ((trial.datetime_complete - trial.datetime_start).total_seconds()
                      if trial.datetime_complete else None)
    row["worker"] = "{host}:{pid}".format(**attrs["worker"]) if "worker" in attrs else None
    return row


def trials_table(out, storage=None, name: str | None = None):
    """One row per trial: number, state, ``pareto`` (on the validation front), ``val_acc``, the
    costs, ``epochs_run``, the sampled parameters, a note (why it failed or stopped), its
    seconds and its worker (host:pid); ``df.attrs["config"]`` is the space. Notebook 10."""
    import pandas as pd
    out = Path(out).resolve()
    config = yaml.safe_load((out / "space.yaml").read_text())
    trials = open_study(config, SearchOptions(out=out, storage=storage, name=name or "")).get_trials(deepcopy=False)
    killed = killed_trials(trials)
    rows = [_row(t, killed) for t in trials]
    df = pd.DataFrame(rows)
    if len(df):
        fixed = [c for c in rows[0] if c in ("trial", "state", "pareto", "val_acc", *COSTS, "epochs_run")]
        rest = ("note", "seconds", "worker")
        sampled = sorted((c for c in df.columns if c not in fixed and c not in rest), key=_param_order)
        df = df[fixed + sampled + list(rest)]
    done = df["state"] == "complete" if len(df) else []
    if len(df) and done.any():
        df.loc[done, "pareto"] = pareto_mask(list(df.loc[done, "val_acc"]), list(df.loc[done, config["cost"]]))
    df.attrs.update(config=config, out=str(out))
    return df


def _kept_seeds(file: Path) -> dict:
    """``{seed: {"test_acc", "seconds"}}`` kept by ``_retrain``; anything else there is ignored (and redone)."""
    try:
        data = json.loads(read_limited(file, 64 * 1024, "file of retrained seeds"))
    except (OSError, ReadRefused, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {seed: v for seed, v in data.items() if seed.isdigit() and isinstance(v, dict)
            and all(isinstance(v.get(k), float) for k in ("test_acc", "seconds"))}


def _retrain(row, ctx, run_dir: Path, seeds) -> dict:
    """The trial's candidate trained again with each of ``seeds``: ``{seed: {"test_acc" (fp32),
    "seconds"}}``, kept in ``run_dir/seeds.json`` after each one, so a stopped summary continues."""
    from distill_utils.train import evaluate
    file = run_dir / "seeds.json"
    done = _kept_seeds(file)  # {} when there is none yet
    for seed in seeds:
        if str(seed) not in done:
            start = time.perf_counter()
            choice = candidates.trial_choice(row, ctx.config, ctx.teacher)
            model = candidates.train_candidate(choice, ctx, seed=seed)["model"]
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
    ``retrain_seconds`` is what that took). Notebook 10 shows the README's table made from it."""
    from distill_utils.train import evaluate
    df = trials_table(out, storage, name)
    config = df.attrs["config"]
    ctx = candidates.context(config)
    params = [c for c in df.columns if c in SPACE or c.startswith("prune_ratio_")]
    front, retrain_seconds = [], 0.0
    for _, row in df[df.pareto].sort_values(config["cost"]).iterrows():
        trial_dir = Path(df.attrs["out"]) / f"trial-{int(row.trial):04d}"
        model = candidates.load_model(trial_dir / "model.safetensors")[0]
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
