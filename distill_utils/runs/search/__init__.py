"""Automatic compression search: an Optuna multi-objective study over how to compress (notebook 10).

Each trial trains one candidate (a student, or the teacher with channels removed, distilled
from the teacher) and scores it on validation accuracy against a cost (parameters, FLOPs or
latency); NSGA-II proposes the candidates. One concept per module:

- ``space``: the search space file, checked by the project's one rule set (``load_space``);
- ``candidates``: one candidate: build, measure, train (``train_candidate``, ``trial_choice``);
- ``study``: the Optuna study: its options, storage, sampler, early-stop rule, resuming;
- ``workers``: ``search`` and its worker loops (here, in processes or on Dask), killed workers;
- ``results``: the trials table, its Pareto front and the study's summary for the README.
"""
from distill_utils.runs.search.candidates import (
    Context,
    build_candidate,
    complete_choice,
    context,
    measure_cost,
    train_candidate,
    trial_choice,
)
from distill_utils.runs.search.results import dominates, pareto_mask, study_summary, trials_table
from distill_utils.runs.search.space import COSTS, SETTINGS, SPACE, SpaceError, fingerprint, load_space
from distill_utils.runs.search.study import RECORD_NAME, SearchOptions
from distill_utils.runs.search.workers import run_study, search

__all__ = ["SpaceError", "load_space", "fingerprint", "search", "run_study", "SearchOptions", "trials_table",
           "pareto_mask", "dominates", "Context", "context", "complete_choice", "build_candidate", "measure_cost",
           "train_candidate", "trial_choice", "study_summary", "COSTS", "SETTINGS", "SPACE", "RECORD_NAME"]
