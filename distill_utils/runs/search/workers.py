"""Running a search: ``search`` and its workers, each a loop of trials on one shared study (notebook 10).

A worker opens the study, loads the data and the teacher once, and runs trials through
``study.optimize`` until the study has ``trials`` finished ones (running trials count, so two
workers do not both start the last one). Each trial leaves ``out/trial-NNNN/search.record.json``
in the format of notebook runs, so ``experiments.collect(out)`` and ``python -m distill_utils
report out`` read a search folder (a parameter a kind of model does not use, e.g. a pruned
teacher's width, is recorded as "-"). Workers run here (this process, or ``workers`` spawned
processes) or as Dask tasks, through ``runs.harness`` as sweeps do.

Killed workers: each worker holds a lock file ``out/.workers/<token>.lock`` while it runs (the
OS frees it when the process dies), so a running trial of this machine whose worker's lock is
free lost its worker (a killed process, an interrupted notebook run), at once. A trial of
another machine: with a storage URL, Optuna's heartbeat judges it (``search.study``); with the
journal file, which has no heartbeat in Optuna, its ``alive_at`` attribute, set every
``heartbeat_s``, older than ``stale_after_s``.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import yaml

from distill_utils.common.files import atomic_write_bytes, atomic_write_json
from distill_utils.runs.harness import cluster_threads, dask_client, run_jobs
from distill_utils.runs.search import candidates
from distill_utils.runs.search.results import trials_table
from distill_utils.runs.search.space import load_space
from distill_utils.runs.search.study import (
    RECORD_NAME,
    SearchOptions,
    counted,
    killed_trials,
    open_study,
    quiet_optuna,
    requeue,
    sampler_seed,
    stop_reason,
    suggest,
)

__all__ = ["search", "run_study", "work", "WorkerLock", "worker_gone", "is_stale", "fail_stale", "enough"]


class WorkerLock:
    """``out/.workers/<token>.lock``, locked while a worker runs (the OS frees it when the process dies)."""

    def __init__(self, out):
        self.token = uuid.uuid4().hex
        self.path = Path(out) / ".workers" / f"{self.token}.lock"
        self._file = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        part = self.path.with_suffix(".new")
        self._file = open(part, "w")
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(part, self.path)  # appears locked: nobody can take a new worker's file for a dead one's
        return self

    def __exit__(self, *exc):
        self._file.close()  # closing releases the lock
        self.path.unlink(missing_ok=True)

    def others(self) -> int:
        """How many other workers of this folder run now (their lock files are held)."""
        return sum(not worker_gone(p) for p in self.path.parent.glob("*.lock") if p != self.path)


def worker_gone(lock_file) -> bool:
    """Whether the worker that holds ``lock_file`` (on this machine) has stopped: the file is gone or free."""
    path = Path(lock_file)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # held: its worker runs (in this process or another)
    else:
        path.unlink(missing_ok=True)  # a dead worker's file
        return True
    finally:
        os.close(fd)


def is_stale(trial, options: SearchOptions, now: float) -> bool:
    """Whether a running trial lost its worker (see the module docstring)."""
    worker = trial.user_attrs.get("worker")
    if worker and worker["host"] == socket.gethostname():
        return worker_gone(worker.get("lock") or options.out / ".workers" / f"{worker['token']}.lock")
    if options.storage is not None:
        return False  # another machine's trial in a database: Optuna's heartbeat judges it
    if not worker:  # asked but never started (killed in between)
        return bool(trial.datetime_start) and now - trial.datetime_start.timestamp() > options.stale_after_s
    return now - trial.user_attrs.get("alive_at", 0) > options.stale_after_s  # another machine: its heartbeat


def fail_stale(study, options: SearchOptions) -> None:
    """Fail the running trials whose worker died and queue their parameters again."""
    import optuna
    if options.storage is not None:  # Optuna's heartbeat (its callback is study.Requeue)
        optuna.storages.fail_stale_trials(study)
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if is_stale(trial, options, now):
            requeue(study, trial, options.out)


def enough(study, options: SearchOptions) -> bool:
    """After failing stale trials: whether finished plus running trials reach ``options.trials``."""
    fail_stale(study, options)
    trials = study.get_trials(deepcopy=False)
    killed = killed_trials(trials)
    return sum(counted(t, killed) for t in trials) + sum(t.state.name == "RUNNING" for t in trials) >= options.trials


@contextlib.contextmanager
def _heartbeat(trial, options: SearchOptions):
    """Set the trial's ``alive_at`` every ``heartbeat_s`` while it runs (the journal file only)."""
    import optuna
    stop = threading.Event()

    def beat():
        while not stop.wait(options.heartbeat_s):
            try:
                trial.set_user_attr("alive_at", time.time())
            except optuna.exceptions.UpdateFinishedTrialError:
                return
    thread = threading.Thread(target=beat, daemon=True)
    if options.storage is None:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread.is_alive():
            thread.join()


class TrialFailed(Exception):
    """A trial's training failed (NaN loss, a bad combination, ...): it is marked failed and the study goes on."""


class Objective:
    """What ``study.optimize`` runs for each trial of one worker: train the trial's candidate, record it."""

    def __init__(self, study, config: dict, ctx, options: SearchOptions, lock: WorkerLock):
        self.study, self.config, self.ctx, self.options = study, config, ctx, options
        self.worker = {"token": lock.token, "lock": str(lock.path)}  # what tells whether this worker still runs
        self.ran, self.said = 0, {}  # said: trial number -> its line, printed once the database holds its result

    def __call__(self, trial):
        import optuna

        from distill_utils.runs.experiments import Run
        self.ran += 1
        config, run_dir, start = self.config, self.options.out / f"trial-{trial.number:04d}", time.perf_counter()
        try:  # first, so a worker killed from here on leaves a trial that names it
            trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid(), **self.worker})
            full = candidates.complete_choice(suggest(trial, config["space"], len(self.ctx.teacher.features)),
                                              config, self.ctx.teacher)
            trial.set_user_attr("alive_at", time.time())
            settings = {k: config[k] for k in ("dataset", "train_images", "val_images", "batch_size", "cost", "seed")}
            recorded = {k: "-" if v is None else v for k, v in full.items()}  # "-": not used by this kind of model
            run = Run(RECORD_NAME, run_dir, {"trial": trial.number, **recorded, **settings, "out_dir": str(run_dir)})
            with _heartbeat(trial, self.options):
                return self._run(trial, full, run, start)
        except (optuna.TrialPruned, TrialFailed):
            raise
        except BaseException:  # interrupted by hand, or this worker cannot go on: not counted, run again next time
            self.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            raise

    def _run(self, trial, full: dict, run, start: float) -> tuple:
        import optuna

        from distill_utils.runs.experiments import mark_failed
        curve, cost = [], {}
        try:
            metrics = self._train(trial, full, curve, cost)
            run.finish(metrics, main="val_acc")
        except optuna.TrialPruned as err:
            atomic_write_json(run.path, {**run.record, "status": "pruned", "error": str(err),
                                         "metrics": {"val_acc": curve[-1], "val_acc_curve": curve, **cost},
                                         "main_metric": "val_acc", "wall_s": round(time.perf_counter() - start, 1)})
            trial.set_user_attr("stopped", str(err))
            self._say(trial, full, start, str(err))
            raise
        except Exception as err:  # NaN loss, a bad combination, ...: this trial fails, the study goes on
            error = f"{type(err).__name__}: {err}"
            mark_failed(run.path.parent, RECORD_NAME, error)
            trial.set_user_attr("error", error)
            self._say(trial, full, start, f"FAILED: {error}")
            raise TrialFailed(error) from err
        except KeyboardInterrupt:
            mark_failed(run.path.parent, RECORD_NAME, "interrupted; its parameters are queued again")
            raise
        values = metrics["val_acc"], cost[self.config["cost"]]
        self._say(trial, full, start, f"val_acc {values[0]:.4f}, {self.config['cost']} {values[1]:,}")
        return values

    def _train(self, trial, full: dict, curve: list, cost: dict) -> dict:
        """Build, measure, train and save the trial's candidate; ``curve`` and ``cost`` fill in as it goes."""
        import optuna
        config, ctx = self.config, self.ctx

        def on_epoch(epoch, acc):
            curve.append(acc)
            trial.set_user_attr("val_acc_curve", curve)
            if epoch < full["epochs"]:
                reason = stop_reason(self.study.get_trials(deepcopy=False), cost[config["cost"]], epoch, acc, config)
                if reason:
                    raise optuna.TrialPruned(reason)

        model = candidates.build_candidate({**full, "seed": config["seed"]}, ctx)
        cost.update(candidates.measure_cost(model, ctx))  # known before training: the stop rule needs it
        for k, v in cost.items():
            trial.set_user_attr(k, v)
        result = candidates.train_candidate(full, ctx, on_epoch=on_epoch, model=model, cost=cost)
        candidates.save_model(result["model"], self.options.out / f"trial-{trial.number:04d}" / "model.safetensors",
                              trial.number, candidates.lineage_of(full, ctx))
        metrics = {"val_acc": result["val_acc"], "val_acc_curve": result["val_acc_curve"], **cost,
                   "epochs_run": len(result["val_acc_curve"])}
        for k, v in metrics.items():
            trial.set_user_attr(k, v)
        return metrics

    def _say(self, trial, full: dict, start: float, status: str) -> None:
        seconds = time.perf_counter() - start
        self.said[trial.number] = f"trial {trial.number:3d} ({full['model']}, {seconds:.0f} s): {status}"

    def after(self, study, trial) -> None:
        """``study.optimize``'s callback, run once the trial's result is stored: print its line, stop when enough.
        Printed only now, so a worker killed before its result is stored has printed nothing for that trial."""
        line = self.said.pop(trial.number, None)
        if line and self.options.progress:
            print(line, flush=True)
        if enough(study, self.options):
            study.stop()


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """``threads`` CPU threads for torch inside (none given: unchanged); the previous number after."""
    import torch
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def work(config: dict, options: SearchOptions, worker: int = 0, threads: int | None = None) -> int:
    """One worker: run trials until the study has ``options.trials`` finished ones; how many it ran (notebook 10)."""
    import optuna
    with _torch_threads(threads), quiet_optuna(), WorkerLock(options.out) as lock:
        study = open_study(config, options)
        existing = len(study.get_trials(deepcopy=False))
        seed = sampler_seed(config, worker, existing, lock.token if lock.others() else "")
        study.sampler = optuna.samplers.NSGAIISampler(population_size=config["population"], seed=seed)
        if enough(study, options):
            return 0
        objective = Objective(study, config, candidates.context(config), options, lock)
        study.optimize(objective, catch=(TrialFailed,), callbacks=[objective.after])
        return objective.ran


def run_study(config: dict, options: SearchOptions, scheduler=None) -> None:
    """Run (or continue) the study of ``config`` with ``options``: here, in processes, or on Dask (notebook 10)."""
    options.out.mkdir(parents=True, exist_ok=True)
    open_study(config, options)  # refuses another space's folder before any work
    atomic_write_bytes(options.out / "space.yaml", yaml.safe_dump(config, sort_keys=False).encode())
    if scheduler is None and options.workers <= 1:
        work(config, options)
        return
    with contextlib.ExitStack() as stack:
        n = options.workers
        if scheduler is not None:
            scheduler = stack.enter_context(dask_client(scheduler))
            n = n if n > 1 else sum(cluster_threads(scheduler).values())  # default: one per Dask thread
        jobs = {f"search-{options.out.name}-{i}": (config, options, i) for i in range(n)}
        errors = [done.error for done in run_jobs(work, jobs, n, scheduler, processes=True) if done.error]
    if errors:
        raise errors[0]


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
    config = load_space(space, **overrides)
    options = SearchOptions(out=out, trials=trials, workers=workers, storage=storage, name=name or "",
                            progress=progress)
    run_study(config, options, scheduler)
    return trials_table(options.out, storage, name)
