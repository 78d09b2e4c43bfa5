"""Parameter sweeps: one notebook over a grid of parameters and seeds (notebook 08).

``sweep(notebook, grid, fixed, seeds, out)`` gives every combination its own folder
``out/<name>--<id>/`` (``T=4_alpha=0.9_seed=0--3f2a9c1b0d2e``) holding the parameters it was
given, the executed notebook and its record. The id is a hash of all of the run's parameters
(fixed, swept and seed), so two different runs never share a folder, and the name beside it
says what was swept. Each run is a separate ``papermill`` process, so a failing or killed
run fails alone. Re-running the same sweep skips runs whose record is ``ok`` (with exactly
these parameters) and retries the others; a sweep returns only its own runs' records.
The runs go through ``runs.harness`` (as the search's workers do): a local thread pool driving
those processes (default), or a Dask distributed cluster (``scheduler="tcp://host:port"``),
whose workers need this repository and its environment at the same path.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from distill_utils.common.files import atomic_write_bytes
from distill_utils.runs.experiments import (
    check_parameter_names,
    check_values,
    declared_parameters,
    default_values,
    mark_failed,
    parameters_for,
    read_record,
    record_path,
    resolve_notebooks,
)
from distill_utils.runs.harness import run_jobs

__all__ = ["expand_grid", "run_name", "run_id", "run_folder", "run_one", "sweep"]


def expand_grid(grid: dict, seeds=None) -> list[dict]:
    """Every combination of ``grid`` (``{name: [values]}``), times each seed, in a stable order;
    a value (or seed) given twice is run once."""
    if grid is not None and not isinstance(grid, dict):
        raise ValueError(f"a sweep grid maps parameter names to lists of values, not a {type(grid).__name__}")
    grid = {k: (v if isinstance(v, list) else [v]) for k, v in (grid or {}).items()}
    if seeds is not None:
        grid["seed"] = list(seeds)
    empty = [k for k, v in grid.items() if not v]
    if empty:
        raise ValueError(f"sweep parameter {empty[0]!r} has no values; give at least one")
    grid = {k: _unique(v) for k, v in grid.items()}
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


def _unique(values: list) -> list:
    first = {}
    for value in values:
        first.setdefault(_canonical(value), value)
    return list(first.values())


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def run_id(params: dict) -> str:
    """A run's identity: a hash of all its parameters (``out_dir`` aside, which is where it goes)."""
    return hashlib.sha256(_canonical({k: v for k, v in params.items() if k != "out_dir"}).encode()).hexdigest()[:12]


def run_name(params: dict) -> str:
    """A readable name for a grid point: ``T=4_alpha=0.9_seed=0`` (unsafe characters become '-',
    at most 80 characters). Two points can share a name; ``run_folder`` adds their ``run_id``."""
    name = "_".join(re.sub(r"[^A-Za-z0-9.+=-]", "-", f"{k}={v}") for k, v in params.items()) or "default"
    return name[:80]


def run_folder(point: dict, params: dict) -> str:
    """``<run_name(point)>--<run_id(params)>``: the swept values to read, all parameters' hash to tell runs apart."""
    return f"{run_name(point)}--{run_id(params)}"


def run_one(notebook: str, run_dir: str, params: dict, threads: int | None = None,
            timeout: float | None = None) -> dict:
    """Execute ``notebook`` with ``params`` into ``run_dir`` in its own papermill process.

    Returns ``{"run", "status", "error"}``; the record in ``run_dir`` says the same. Never raises
    for a failing notebook, so one bad run cannot stop a sweep."""
    notebook, run_dir = Path(notebook), Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    params = {**params, "out_dir": str(run_dir.resolve())}
    params_file = run_dir / "params.yaml"
    atomic_write_bytes(params_file, yaml.safe_dump(params, sort_keys=False).encode())
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "papermill", str(notebook), str(run_dir / notebook.name), "-f", str(params_file),
           "--cwd", str(notebook.parent), "--no-progress-bar", "--log-level", "ERROR"]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        code, output = proc.returncode, proc.stderr + proc.stdout
    except subprocess.TimeoutExpired:
        code, output = "timeout", f"the run took longer than {timeout} s and was stopped"
    record = read_record(record_path(run_dir, notebook.name)) or {}
    if code == 0 and record.get("status") == "ok":
        return {"run": run_dir.name, "status": "ok", "error": None}
    if code == 0:  # the notebook ran but did not finish a record: nothing to collect
        error = "the notebook ran but never called run.finish(...); its last cell should write the record"
    elif isinstance(code, int) and code < 0:
        error = f"killed by signal {-code} (out of memory, or stopped by hand?)"
    else:
        error = _last_error(output)
    mark_failed(run_dir, notebook.name, error, params)
    return {"run": run_dir.name, "status": "failed", "error": error}


def _last_error(output: str) -> str:
    """The notebook's exception line from papermill's output (falls back to the last line)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b.*:", line):
            return re.sub(r"\x1b\[[0-9;]*m", "", line)[:2000]
    return lines[-1][:2000] if lines else "papermill failed without output"


def sweep(notebook, grid: dict | None = None, fixed: dict | None = None, seeds=None, out=None,
          workers: int = 2, scheduler: str | None = None, progress: bool = True):
    """Run ``notebook`` for every point of ``grid`` x ``seeds``; return ``collect(out)``.

    ``fixed`` (e.g. a parameter file) applies to every run; names the notebook does not declare are
    dropped, as in ``run_sequence``, while a swept name it does not declare is an error.
    Finished runs (record ``ok``) are skipped, failed or interrupted ones re-run. With
    ``scheduler`` the runs go to that Dask cluster (an address, or a ``distributed.Client``);
    else ``workers`` run at once here, each with ``cores / workers`` threads. Notebook 08."""
    from tqdm.auto import tqdm

    from distill_utils.runs.experiments import REPO, collect
    from distill_utils.runs.params import did_you_mean
    nb = resolve_notebooks([str(notebook)])[0].resolve()
    points = expand_grid(grid, seeds)
    declared = declared_parameters(nb)
    unknown = sorted(set(points[0]) - set(declared))  # a swept name must exist: a typo would sweep nothing
    if unknown:
        raise ValueError(f"{nb.name} has no parameter {', '.join(map(repr, unknown))}"
                         f"{did_you_mean(unknown[0], declared)}; its parameters are: {', '.join(declared)}")
    if "out_dir" not in declared:
        raise ValueError(f"{nb.name} has no out_dir parameter, so its runs cannot keep separate records")
    check_parameter_names(fixed or {}, [nb], "the fixed parameters")
    fixed = {k: v for k, v in parameters_for(nb, fixed or {}).items() if k in declared}  # files serve many notebooks
    for point in points:  # every value is checked before anything runs
        check_values(nb, {**fixed, **point}, declared)
    out = Path(out or REPO / "runs" / f"sweep-{nb.stem}").resolve()
    todo, skipped, mine = {}, 0, []
    for point in points:
        params = {**fixed, **point}
        run_dir = out / run_folder(point, params)
        mine.append(run_dir.name)
        record = read_record(record_path(run_dir, nb.name)) or {}
        done = {k: v for k, v in (record.get("parameters") or {}).items() if k != "out_dir"}
        if record.get("status") == "ok" and all(k in done and done[k] == v
                                                for k, v in {**_defaults(declared), **params}.items()):
            skipped += 1
        else:
            todo[run_dir.name] = (str(nb), str(run_dir), params)
    bar = tqdm(total=len(points), initial=skipped, desc=f"sweep {nb.stem}", disable=not progress)
    counts = {"done": skipped, "failed": 0}

    def report(result):
        counts["done" if result["status"] == "ok" else "failed"] += 1
        bar.update(1)
        bar.set_postfix(done=counts["done"], failed=counts["failed"], remaining=len(points) - sum(counts.values()))
        if result["status"] != "ok":
            bar.write(f"failed: {result['run']}: {result['error']}")

    for done in run_jobs(run_one, todo, workers, scheduler):
        if done.error is not None:  # run_one never raises: its worker died (e.g. a lost Dask worker)
            error = f"its worker was lost or failed: {type(done.error).__name__}: {done.error}"
            mark_failed(done.args[1], nb.name, error)
            report({"run": Path(done.args[1]).name, "status": "failed", "error": error})
        else:
            report(done.result)
    bar.close()
    df = collect(out, runs=set(mine))
    df.attrs["out"] = str(out)
    return df


def _defaults(declared: dict) -> dict:
    """The notebook's default parameter values (a record lists every parameter, given or not)."""
    values = default_values(declared)
    values.pop("out_dir", None)
    return values
