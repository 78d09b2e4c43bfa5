"""The Optuna study of a search: its options, storage, sampler, early-stop rule and resuming (notebook 10).

NSGA-II (``optuna.samplers.NSGAIISampler``) with a fixed seed proposes the candidates; each
trial is scored on validation accuracy (maximised) and a cost (minimised).

Per-epoch reports and early stopping: Optuna's ``trial.report`` and its pruners work for
single-objective studies only (``report`` raises ``NotImplementedError`` for two objectives).
So each trial stores its validation accuracy after every epoch in its ``val_acc_curve``
attribute, and ``stop_reason`` stops it early: after an epoch that is not its last, a trial
stops when ``prune_when_beaten_by`` finished trials that cost no more had a validation
accuracy at least ``prune_margin`` higher at that same epoch (it would very likely end
dominated). A stopped trial is ``PRUNED``; 0 turns the rule off.

Storage and resuming: the study is the journal file ``out/study.journal``, or an Optuna
storage URL (e.g. PostgreSQL) for workers on several machines. Running the same search again
continues it: finished trials (complete, pruned or failed with an error) count towards
``trials`` and are never run again; a trial whose worker was killed is marked failed and its
parameters are queued again (``requeue``; the new trial's ``retry_of`` names the killed one).
``search.workers`` finds such trials at once on this machine (lock files). On other machines:
with a URL, Optuna's heartbeat (``RDBStorage(heartbeat_interval=..., grace_period=...,
heartbeat_stale_trial_callback=Requeue(out))``); Optuna's journal file has no heartbeat, so
``search.workers`` keeps one there.

A study folder belongs to one study: ``out/study.json`` keeps its name and its space's fingerprint
(``open_study`` writes it). Running again without ``--study`` continues that study, even in a
renamed folder; another study name or another space in the same folder is refused (they would
write the same ``trial-NNNN`` folders and ``space.yaml``). A storage that cannot be opened (a
damaged journal, a bad URL, a database that does not answer) is one ``StudyError`` line.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from distill_utils.common import rules
from distill_utils.common.files import ReadRefused, atomic_write_json, read_json
from distill_utils.runs.search.space import SPACE, SpaceError, difference, fingerprint

__all__ = ["RECORD_NAME", "IDENTITY", "SearchOptions", "StudyError", "quiet_optuna", "open_study", "suggest",
           "stop_reason", "killed_trials", "counted", "requeue", "sampler_seed"]

RECORD_NAME = "search"  # every trial's record: out/trial-NNNN/search.record.json
IDENTITY = "study.json"  # out/study.json: the one study (name, space fingerprint) a folder belongs to


class StudyError(ValueError):
    """A study folder or storage cannot be used for this study; the message says why and what to do."""


@dataclass(frozen=True)
class SearchOptions:
    """How a search runs (everything but its space): made by ``search``, passed to every worker (notebook 10).

    ``out``: the study folder; ``trials``: finished trials wanted in all; ``workers``: processes
    here (or Dask tasks); ``storage``: an Optuna storage URL (``None``: ``out/study.journal``);
    ``name``: the study's name in it (empty: ``out``'s name); ``progress``: a line per trial;
    ``heartbeat_s`` / ``stale_after_s``: how often a running trial says it is alive, and how long
    a silent one waits before it counts as killed."""
    out: Path
    trials: int = 1
    workers: int = 1
    storage: str | None = None
    name: str = ""
    progress: bool = True
    heartbeat_s: int = 30
    stale_after_s: int = 600

    def __post_init__(self):
        seconds = rules.in_range(1, integer=True, what="seconds")
        for field, rule in (("trials", rules.RULES["trials"]), ("workers", rules.in_range(0, integer=True)),
                            ("heartbeat_s", seconds), ("stale_after_s", seconds)):
            if (msg := rule(getattr(self, field))):
                raise rules.RuleError(f"{field} = {getattr(self, field)!r} {msg}")
        if self.stale_after_s <= self.heartbeat_s:
            raise rules.RuleError(f"stale_after_s = {self.stale_after_s} must be more than heartbeat_s = "
                                  f"{self.heartbeat_s}: a running trial would look killed between its heartbeats")
        if self.storage is not None and not isinstance(self.storage, str):
            raise rules.RuleError(f"storage = {self.storage!r} must be an Optuna storage URL "
                                  "(e.g. postgresql://user@host/db), or None for the journal file in out")
        if not isinstance(self.name, str):
            raise rules.RuleError(f"name = {self.name!r} must be a study name (str), or empty for out's name")
        object.__setattr__(self, "out", Path(self.out).resolve())  # frozen: normalised once, here

    @property
    def study_name(self) -> str:
        return self.name or self.out.name


@contextlib.contextmanager
def quiet_optuna():
    """Optuna logs only errors inside (each trial prints its own line); its verbosity is restored after."""
    import optuna
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats, fail_stale_trials
            yield
    finally:
        optuna.logging.set_verbosity(before)


def _storage(options: SearchOptions):
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend
    if options.storage is None:
        return JournalStorage(JournalFileBackend(str(options.out / "study.journal")))
    return RDBStorage(options.storage, heartbeat_interval=options.heartbeat_s, grace_period=options.stale_after_s,
                      heartbeat_stale_trial_callback=Requeue(options.out))


def _identity(options: SearchOptions, config: dict) -> SearchOptions:
    """``options`` naming the study its folder belongs to (``out/study.json``); StudyError for another study.
    A folder without one (new, or made by an older version) is claimed by ``open_study``."""
    try:
        held = read_json(options.out / IDENTITY, 4096, "study identity")
    except FileNotFoundError:
        return options
    except (OSError, ReadRefused) as err:
        raise StudyError(f"{options.out / IDENTITY} cannot be read ({getattr(err, 'strerror', None) or err}); it "
                         "names the study this folder holds: restore it, or use another --out folder") from None
    name = held.get("name") if isinstance(held, dict) else None
    if not isinstance(name, str) or (options.name and options.name != name):
        raise StudyError(f"{options.out} holds the study {name!r}, not {options.name!r}: a folder holds one study (its "
                         f"trial folders and space.yaml). Use another --out folder, or --study {name} to continue it")
    return dataclasses.replace(options, name=name)


def _create(options: SearchOptions, sampler):
    """``(study, options)``: Optuna's study in ``options``' storage and the options naming it (a journal
    written before ``study.json`` names its one study); StudyError (one line) when the storage cannot be
    opened or the journal holds another study."""
    import optuna
    try:
        with quiet_optuna():
            storage = _storage(options)
            if options.storage is None and not (options.out / IDENTITY).exists():
                names = optuna.get_all_study_names(storage)
                options = dataclasses.replace(options, name=options.name or (names[0] if len(names) == 1 else ""))
                if names and options.study_name not in names:
                    raise StudyError(f"{options.out} holds the study {names[0]!r}, not {options.study_name!r}: a "
                                     "folder holds one study. Use another --out folder, or --study "
                                     f"{names[0]} to continue it")
            return optuna.create_study(storage=storage, study_name=options.study_name, sampler=sampler,
                                       directions=["maximize", "minimize"], load_if_exists=True), options
    except StudyError:
        raise
    except Exception as err:  # Optuna, SQLAlchemy and the database drivers raise many types, some bare
        why = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
        if options.storage is None:
            raise StudyError(f"the study journal {options.out / 'study.journal'} cannot be read ({why}): it is damaged "
                             "(a full disk, an edit). Move it away to start the study again") from None
        shown = re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", options.storage)  # never print a password
        raise StudyError(f"cannot open the study storage {shown} ({why}); check the URL (e.g. "
                         "postgresql://user@host/db), that the database answers, and that its driver is installed") \
            from None


def open_study(config: dict, options: SearchOptions, sampler=None):
    """The study of ``config`` in ``options``' storage (created the first time), named by the folder when
    ``options`` name none; refuses another study's folder or another space's (notebook 10)."""
    study, options = _create(_identity(options, config), sampler)
    old = study.user_attrs.get("space")
    if old is None:
        study.set_user_attr("space", config)
        study.set_user_attr("fingerprint", fingerprint(config))
    elif fingerprint(old) != fingerprint(config):
        out = options.out
        raise SpaceError(f"{out} holds a study of a different search space ({difference(old, config)}). Use another "
                         f"--out folder, or the space it was made with (saved as {out / 'space.yaml'})")
    identity = {"name": options.study_name, "fingerprint": fingerprint(config)}
    if not (options.out / IDENTITY).exists():
        atomic_write_json(options.out / IDENTITY, identity)
    elif read_json(options.out / IDENTITY, 4096, "study identity") != identity:  # e.g. a new journal, another space
        raise SpaceError(f"{options.out} holds a study of a different search space. Use another --out folder, or "
                         f"the space it was made with (saved as {options.out / 'space.yaml'})")
    return study


def sampler_seed(config: dict, worker: int, existing: int, alone: str = "") -> int:
    """The study's seed for a fresh study with one worker; a different one for every other worker and
    every resumption, so no two samplers propose the same candidates. ``alone``: empty when no other
    worker runs, else something unique to this one (two workers started at once both see 0 trials)."""
    if worker == 0 and existing == 0 and not alone:
        return config["seed"]
    key = f"{config['seed']}/{worker}/{existing}" + (f"/{alone}" if alone else "")
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big")


def suggest(trial, space: dict, layers: int) -> dict:
    """The trial's choice for every entry of ``space`` that its model uses (a range, a list or a fixed value)."""
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
                pick = trial.suggest_int if kind is int else trial.suggest_float
                values.append(pick(n, entry["low"], entry["high"], log=entry.get("log", False),
                                   **({"step": entry["step"]} if "step" in entry else {})))
            else:
                values.append(entry)
        choice[name] = values if name == "prune_ratios" else values[0]
    return choice


def stop_reason(trials, cost: float, epoch: int, acc: float, config: dict) -> str | None:
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


def killed_trials(trials) -> set[int]:
    """Numbers of the trials whose worker was killed: each was queued again as a trial with ``retry_of``
    (studies of older versions marked them ``killed`` instead)."""
    return ({t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
            | {t.number for t in trials if t.user_attrs.get("killed")})


def counted(trial, killed: set[int]) -> bool:
    """Finished trials count towards the total; killed ones do not (their parameters run again)."""
    name = trial.state.name
    return name in ("COMPLETE", "PRUNED") or (name == "FAIL" and trial.number not in killed)


class Requeue:
    """Queue a killed trial's parameters again and mark its record failed; Optuna's heartbeat calls
    it as ``heartbeat_stale_trial_callback(study, trial)``, and so does ``search.workers``."""

    def __init__(self, out):
        self.out = Path(out)

    def __call__(self, study, trial) -> None:
        from distill_utils.runs.experiments import mark_failed
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        mark_failed(self.out / f"trial-{trial.number:04d}", RECORD_NAME,
                    "its worker stopped (killed or interrupted) during the trial; its parameters are queued again")


def requeue(study, trial, out) -> bool:
    """Fail ``trial`` (running, its worker gone) and queue its parameters again; False when
    another worker got there first (the trial was already finished)."""
    import optuna
    try:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):  # "Cannot tell a FAIL trial", or a race
        return False
    Requeue(out)(study, trial)
    return True
