"""Full-size reference results: per-seed records in ``data/reference/`` and the README's table.

``python -m distill_utils reference [--seeds 0 1 2] [--only 03 04]`` runs each notebook with
``params/full.yaml`` once per seed (``seed``, and ``seeds`` set to that one seed)
and keeps, per notebook, one small JSON file ``data/reference/<notebook>.json``::

    {"notebook": ..., "params_file": "params/full.yaml", "parameters": {...},
     "seeds": {"0": {"metrics": {...}, "wall_s": ..., "versions": {...}, "finished": ...}, ...}}

It is resumable: a seed already in the file is skipped, but only while the parameters the record
was made with are the ones ``params/full.yaml`` gives now (``common.resume``, the rule every
resumable runner follows): a record is never a mix of seeds run with different values. Notebooks
03, 04 and 09 show these numbers beside the workshop run (``load``, ``per_seed``); ``tables`` turns
them into the README's tables.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

from distill_utils.common.files import ReadRefused, atomic_write_json, read_json
from distill_utils.common.resume import check_same
from distill_utils.runs.evidence import Comparison, compare
from distill_utils.runs.experiments import REPO, read_record, record_path, resolve_notebooks, run_sequence

__all__ = ["REFERENCE_DIR", "SOLUTIONS_DIR", "NOTEBOOKS", "MISSING", "load", "per_seed", "describe", "compare_recorded",
           "beside", "this_and_recorded", "run_reference", "run_solutions", "add_seed"]

REFERENCE_DIR = REPO / "data" / "reference"
FULL = REPO / "params" / "full.yaml"
SOLUTIONS_DIR = REFERENCE_DIR / "solutions"  # worked solutions run at their exercises' sizes (params/solutions.yaml)
SOLUTIONS = ("01_teacher_training_solutions", "03_knowledge_distillation_solutions",
             "04_feature_distillation_solutions", "12_object_detection_solutions")  # whose smoke size misleads
NOTEBOOKS = ("03", "04", "05", "06", "09", "11", "12")  # what `make reference` runs
MISSING = ("No full-size reference record for `{notebook}` exists yet. `python -m distill_utils reference "
           "--only {notebook}` makes one per seed (hours on a laptop CPU); until then only this run's numbers "
           "are shown.")
MAX_RECORD = 16 << 20  # bytes: a reference record holds metrics of a few seeds
NOT_PARAMETERS = ("out_dir", "data_root", "seed", "seeds")  # what differs between seeds, or between machines


def load(notebook: str, folder=None) -> dict | None:
    """The reference record of ``notebook`` (its stem, e.g. ``"03_knowledge_distillation"``), or None
    when there is none or it has no seeds yet; ValueError naming the file when it is unreadable or
    malformed."""
    path = Path(folder or REFERENCE_DIR) / f"{Path(notebook).stem}.json"
    fix = f"delete it and rerun python -m distill_utils reference --only {Path(notebook).stem}"
    try:
        record = read_json(path, MAX_RECORD, "reference record")
    except FileNotFoundError:
        return None
    except ReadRefused as err:  # not a regular file, too large, not JSON, nested too deeply
        raise ValueError(f"{err}; {fix}") from None
    except OSError as err:
        raise ValueError(f"reference record {path} is unreadable ({err.strerror or err}); {fix}") from None
    if not isinstance(record, dict) or not isinstance(record.get("seeds"), dict) or not record["seeds"]:
        return None
    problem = _malformed(record)
    if problem:
        raise ValueError(f"reference record {path} is malformed ({problem}); {fix}")
    return record


def _malformed(record: dict) -> str | None:
    """What is wrong with a record's shape, or None."""
    if not isinstance(record.get("parameters", {}), dict):
        return "its parameters are not a mapping"
    for seed, entry in record["seeds"].items():
        try:
            int(seed)
        except ValueError:
            return f"seed {seed!r} is not an integer"
        if not isinstance(entry, dict) or not isinstance(entry.get("metrics"), dict):
            return f"seed {seed} has no metrics mapping"
    return None


def per_seed(record: dict, key: str | tuple) -> dict[int, float]:
    """``{seed: metric}`` of one metric over the record's seeds. A metric that is itself a
    ``{seed: value}`` mapping (a notebook's own seed loop, e.g. ``few_distilled``) is merged.
    A tuple key walks into nested metrics: ``("finetuned", "0.5")``."""
    out = {}
    for seed, entry in record["seeds"].items():
        value = entry["metrics"]
        for part in (key,) if isinstance(key, str) else key:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, dict):
            try:
                out.update({int(s): v for s, v in value.items()})
            except (TypeError, ValueError):
                raise ValueError(f"reference metric {key!r} of seed {seed} maps non-integer seeds") from None
        elif value is not None:
            out[int(seed)] = value
    return out


def describe(record: dict) -> str:
    seeds = sorted(int(s) for s in record["seeds"])
    return (f"{record.get('params_file', 'params/full.yaml')}, {len(seeds)} seed{'s' if len(seeds) != 1 else ''} "
            f"({', '.join(map(str, seeds))})")


def compare_recorded(record: dict, key_a, key_b, name_a: str, name_b: str, **kwargs) -> Comparison:
    """``evidence.compare`` of two metrics of a record (``per_seed`` keys), paired by seed."""
    return compare(per_seed(record, key_a), per_seed(record, key_b), name_a, name_b, **kwargs)


def beside(this_run: Comparison, recorded: Comparison, record: dict, size: str) -> str:
    """Markdown: the recorded run's verdict (``size`` says how big it was) and whether this run agrees.
    Opposite verdicts are said in so many words: the smaller run does not answer the question."""
    text = f"**Recorded run** ({size}; {describe(record)}): {recorded.sentence()}."
    verdicts = {this_run.verdict, recorded.verdict}
    if recorded.verdict == "too few seeds":
        return text + " The recorded run is not complete yet, so it answers nothing so far."
    if this_run.verdict == recorded.verdict:
        return text + " This run agrees with it."
    if verdicts == {"better", "worse"}:
        return (text + " **This run's answer is the opposite.** At this size the runs are too small for the "
                "lesson; the recorded run is the answer to the exercise.")
    return (text + f" This run's verdict ({this_run.verdict}) differs from it: at this size the difference "
            "is not resolved the same way; the recorded run is the answer to the exercise.")


def this_and_recorded(this_run: Comparison, this_size: str, record: dict | None, key_a, key_b, size: str) -> str:
    """Markdown: this run's verdict (``this_size`` says how big it was), then ``beside`` (one paragraph) for the same
    comparison of the record's metrics ``key_a`` and ``key_b``; ``size`` is formatted with the record's
    parameters (e.g. ``"{labelled_images:,} images"``). Without a record, says how to make one."""
    text = f"**This run** ({this_size}): {this_run.sentence()}."
    if record is None:
        return text + (" No recorded run at the exercise's size yet: `python -m distill_utils reference "
                       "--solutions` makes one.")
    recorded = compare_recorded(record, key_a, key_b, this_run.name_a, this_run.name_b)
    return text + " " + beside(this_run, recorded, record, size.format(**record["parameters"]))


def _parameters_for_seed(declared: set, seed: int) -> dict:
    own = {"seed": seed}
    if "seeds" in declared:  # a notebook's own seed loop runs just this seed
        own["seeds"] = [seed]
    return own


def _expected(notebook, declared: dict, full: dict) -> dict:
    """The parameters a run of ``notebook`` with ``full`` records (its defaults, then the file's values),
    as ``add_seed`` keeps them; a default that is not a literal is left out."""
    from distill_utils.runs.experiments import default_values, parameters_for
    values = default_values(declared)
    values.update({k: v for k, v in parameters_for(notebook, full).items() if k in declared})
    return {k: v for k, v in values.items() if k not in NOT_PARAMETERS}


def _shared(record: dict, expected: dict) -> tuple[dict, dict]:
    """The record's parameters and ``expected``, on the names both have (a notebook may since have gained
    or lost a parameter, or have a default that is not a literal)."""
    stored = record.get("parameters", {})
    return {k: v for k, v in stored.items() if k in expected}, {k: v for k, v in expected.items() if k in stored}


def run_reference(notebooks=NOTEBOOKS, seeds=(0, 1, 2), folder=None, work=None, params_file=None) -> dict:
    """Run each notebook at full size once per missing seed; returns {notebook: record}. A record made
    with other parameters than ``params_file`` gives now is refused (``common.resume.ResumeRefused``)."""
    from distill_utils.runs.experiments import declared_parameters, parameters_for
    from distill_utils.runs.params import read_parameter_file
    folder, work = Path(folder or REFERENCE_DIR), Path(work or REPO / "runs" / "reference")
    params_file = Path(params_file or FULL)
    full = read_parameter_file(params_file)
    shown = f"params/{params_file.name}" if params_file.parent.name == "params" else params_file.name
    done = {}
    for nb in resolve_notebooks(list(notebooks)):
        stem, declared = nb.stem, declared_parameters(nb)
        record = load(stem, folder) or {"notebook": stem, "params_file": shown, "parameters": {}, "seeds": {}}
        expected = _expected(nb, declared, full)
        if record["seeds"]:
            check_same(*_shared(record, expected), f"{folder / (stem + '.json')}",
                       f"its seeds {', '.join(record['seeds'])} would be mixed with runs of the new values. Restore "
                       f"{shown}, or move the record away to start it again with the new values")
        for seed in seeds:
            if str(seed) in record["seeds"]:
                print(f"{stem} seed {seed}: already in {folder / (stem + '.json')}, skipped", flush=True)
                continue
            out = work / f"{stem}-seed{seed}"
            start = time.perf_counter()
            run_sequence([str(nb)], out, {**parameters_for(nb, full), **_parameters_for_seed(set(declared), seed)})
            add_seed(record, seed, read_record(record_path(out, nb.name)) or {}, time.perf_counter() - start)
            atomic_write_json(folder / f"{stem}.json", record)  # after every seed: an interrupted run keeps what it did
            print(f"{stem} seed {seed}: recorded in {time.perf_counter() - start:.0f} s", flush=True)
        done[stem] = record
    return done


def run_solutions(names=None, seeds=(0, 1, 2)) -> dict:
    """``run_reference`` for the worked solutions ``names`` (default ``SOLUTIONS``) at their exercises'
    sizes (``params/solutions.yaml``), into ``SOLUTIONS_DIR``; the solutions show them beside their run."""
    paths = [str(REPO / "notebooks" / "solutions" / f"{Path(name).stem}.ipynb") for name in names or SOLUTIONS]
    return run_reference(paths, seeds, folder=SOLUTIONS_DIR, work=REPO / "runs" / "reference-solutions",
                         params_file=REPO / "params" / "solutions.yaml")


def add_seed(record: dict, seed: int, run: dict, wall_s: float) -> dict:
    """Put one finished run record (``<notebook>.record.json``) into ``record`` as ``seed``; a run made
    with other parameters than the seeds already there is refused (``ResumeRefused``)."""
    params = {k: v for k, v in run.get("parameters", {}).items() if k not in NOT_PARAMETERS}
    if record["seeds"]:
        check_same(*_shared(record, params), f"the reference record of {record.get('notebook')}",
                   f"seed {seed} ran with other values, so it is not added")
    record["parameters"] = params
    record["seeds"][str(seed)] = {"metrics": run.get("metrics", {}), "wall_s": round(wall_s, 1),
                                  "versions": {k: v for k, v in run.get("versions", {}).items() if k != "host"},
                                  "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return record
