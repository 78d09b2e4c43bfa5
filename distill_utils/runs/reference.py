"""Full-size reference results: per-seed records in ``data/reference/`` and the README's table.

``python -m distill_utils reference [--seeds 0 1 2] [--only 03 04]`` runs each notebook with
``params/full.yaml`` once per seed (``seed``, and ``seeds`` set to that one seed)
and keeps, per notebook, one small JSON file ``data/reference/<notebook>.json``::

    {"notebook": ..., "params_file": "params/full.yaml", "parameters": {...},
     "seeds": {"0": {"metrics": {...}, "wall_s": ..., "versions": {...}, "finished": ...}, ...}}

It is resumable: a seed already in the file is skipped. Notebooks 03, 04 and 09 show these numbers
beside the workshop run (``load``, ``per_seed``); ``tables`` turns them into the README's tables.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

from distill_utils.common.files import atomic_write_json
from distill_utils.runs.experiments import REPO, read_record, record_path, resolve_notebooks, run_sequence

__all__ = ["REFERENCE_DIR", "NOTEBOOKS", "MISSING", "load", "per_seed", "describe", "run_reference", "add_seed"]

REFERENCE_DIR = REPO / "data" / "reference"
FULL = REPO / "params" / "full.yaml"
NOTEBOOKS = ("03", "04", "05", "06", "09")  # what `make reference` runs
MISSING = ("No full-size reference record for `{notebook}` exists yet. `python -m distill_utils reference "
           "--only {notebook}` makes one per seed (hours on a laptop CPU); until then only this run's numbers "
           "are shown.")


def load(notebook: str, folder=None) -> dict | None:
    """The reference record of ``notebook`` (its stem, e.g. ``"03_knowledge_distillation"``), or None."""
    path = Path(folder or REFERENCE_DIR) / f"{Path(notebook).stem}.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ValueError(f"reference record {path} is unreadable ({err}); delete it and rerun "
                         f"python -m distill_utils reference --only {Path(notebook).stem}") from None
    if not isinstance(record, dict) or not isinstance(record.get("seeds"), dict) or not record["seeds"]:
        return None
    return record


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
            out.update({int(s): v for s, v in value.items()})
        elif value is not None:
            out[int(seed)] = value
    return out


def describe(record: dict) -> str:
    seeds = sorted(int(s) for s in record["seeds"])
    return (f"{record.get('params_file', 'params/full.yaml')}, {len(seeds)} seed{'s' if len(seeds) != 1 else ''} "
            f"({', '.join(map(str, seeds))})")


def _parameters_for_seed(declared: set, seed: int) -> dict:
    own = {"seed": seed}
    if "seeds" in declared:  # a notebook's own seed loop runs just this seed
        own["seeds"] = [seed]
    return own


def run_reference(notebooks=NOTEBOOKS, seeds=(0, 1, 2), folder=None, work=None, params_file=None) -> dict:
    """Run each notebook at full size once per missing seed; returns {notebook: record}."""
    import yaml

    from distill_utils.runs.experiments import declared_parameters, parameters_for
    folder, work = Path(folder or REFERENCE_DIR), Path(work or REPO / "runs" / "reference")
    params_file = Path(params_file or FULL)
    full = yaml.safe_load(params_file.read_text()) or {}
    done = {}
    for nb in resolve_notebooks(list(notebooks)):
        stem = nb.stem
        shown = f"params/{params_file.name}" if params_file.parent.name == "params" else params_file.name
        record = load(stem, folder) or {"notebook": stem, "params_file": shown, "parameters": {}, "seeds": {}}
        declared = set(declared_parameters(nb))
        for seed in seeds:
            if str(seed) in record["seeds"]:
                print(f"{stem} seed {seed}: already in {folder / (stem + '.json')}, skipped", flush=True)
                continue
            out = work / f"{stem}-seed{seed}"
            start = time.perf_counter()
            run_sequence([str(nb)], out, {**parameters_for(nb, full), **_parameters_for_seed(declared, seed)})
            add_seed(record, seed, read_record(record_path(out, nb.name)) or {}, time.perf_counter() - start)
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(folder / f"{stem}.json", record)  # after every seed: an interrupted run keeps what it did
            print(f"{stem} seed {seed}: recorded in {time.perf_counter() - start:.0f} s", flush=True)
        done[stem] = record
    return done


def add_seed(record: dict, seed: int, run: dict, wall_s: float) -> dict:
    """Put one finished run record (``<notebook>.record.json``) into ``record`` as ``seed``."""
    params = {k: v for k, v in run.get("parameters", {}).items() if k not in ("out_dir", "data_root", "seed")}
    record["parameters"] = {k: v for k, v in params.items() if k != "seeds"}
    record["seeds"][str(seed)] = {"metrics": run.get("metrics", {}), "wall_s": round(wall_s, 1),
                                  "versions": {k: v for k, v in run.get("versions", {}).items() if k != "host"},
                                  "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return record
