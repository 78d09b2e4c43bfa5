"""Running the notebooks with papermill, and the record each run leaves behind.

Every notebook starts with ``run = start_run("NN_topic", globals())`` (its parameters are
validated, a record marked ``running`` is written) and ends with ``run.finish(metrics)``
(the record becomes ``ok``). The record sits beside the executed notebook in ``out_dir``:
``<notebook>.record.json`` with parameters, metrics, seed, library versions, wall time and
the checkpoints read and written (with their SHA-256). A runner that sees papermill fail
marks the record ``failed`` with the error; a killed run stays ``running``. ``collect``
turns a folder of records into a DataFrame. Sweeps: ``sweeps.py``; reports: ``report.py``.
"""
from __future__ import annotations

import json
import platform
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from ._io import atomic_write_json
from .params import validate

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
SEQUENCE = ("00_setup.ipynb", "01_teacher_training.ipynb", "02_soft_targets_and_temperature.ipynb",
            "03_knowledge_distillation.ipynb", "04_feature_distillation.ipynb",
            "05_magnitude_pruning.ipynb", "06_channel_pruning.ipynb", "07_prune_and_distill.ipynb",
            "09_quantize_and_deploy.ipynb")
RECORD = ".record.json"

__all__ = ["start_run", "Run", "parameters_for", "record_path", "read_record", "mark_failed", "collect", "run_sequence",
           "resolve_notebooks", "declared_parameters", "SEQUENCE"]


def record_path(out_dir, notebook: str) -> Path:
    return Path(out_dir) / f"{Path(notebook).stem}{RECORD}"


def read_record(path) -> dict | None:
    """The record at ``path``, or None if there is none (or it is unreadable)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _versions() -> dict:
    import torch
    from . import __version__
    versions = {"python": platform.python_version(), "torch": torch.__version__, "distill_utils": __version__,
                "platform": platform.platform(), "host": socket.gethostname(), "threads": torch.get_num_threads()}
    for name in ("torchvision", "numpy"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    return versions


def _json_safe(value):
    """Numbers, strings, lists and dicts as JSON; tensors and numpy scalars as plain numbers."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


class Run:
    """One notebook run's record; ``finish(metrics)`` completes it (every notebook's last cell)."""

    def __init__(self, notebook: str, out_dir, parameters: dict):
        from .checkpoints import ACCESS_LOG
        self.path = record_path(out_dir, notebook)
        self._log, self._log_start, self._start = ACCESS_LOG, len(ACCESS_LOG), time.perf_counter()
        self.record = {"notebook": Path(notebook).stem, "status": "running", "parameters": _json_safe(parameters),
                       "seed": parameters.get("seed"), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "versions": _versions(), "metrics": {}, "checkpoints": {"read": [], "written": []}}
        self._write()

    def _write(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.path, self.record)
        except OSError as err:
            raise OSError(f"cannot write the run record {self.path}: {err.strerror or err}. Set the out_dir "
                          "parameter to a writable folder with free space (e.g. -p out_dir runs/mine)") from None

    def finish(self, metrics: dict, main: str | None = None) -> Path:
        """Write the record with ``metrics`` (JSON-friendly values) and status ``ok``.

        ``main`` names the headline metric that reports plot (default: the first)."""
        entries = self._log[self._log_start:]
        files = lambda op: [{"path": e["path"], "sha256": e["sha256"]} for e in entries if e["op"] == op]  # noqa: E731
        self.record.update(status="ok", metrics=_json_safe(metrics), main_metric=main or next(iter(metrics), None),
                           wall_s=round(time.perf_counter() - self._start, 1),
                           checkpoints={"read": files("read"), "written": files("write")})
        self._write()
        return self.path


def start_run(notebook: str, namespace: dict) -> Run:
    """Validate the notebook's parameters (``params.validate``) and start its record.

    Call as ``run = start_run("03_knowledge_distillation", globals())`` in the cell after
    ``parameters``; the record goes to the ``out_dir`` parameter."""
    parameters = validate(namespace)
    return Run(notebook, parameters.get("out_dir", "."), parameters)


def mark_failed(out_dir, notebook: str, error: str, parameters: dict | None = None) -> Path:
    """Mark a run's record ``failed`` with ``error`` (creating it if the notebook never started one)."""
    path = record_path(out_dir, notebook)
    record = read_record(path) or {"notebook": Path(notebook).stem, "parameters": _json_safe(parameters or {}),
                                   "seed": (parameters or {}).get("seed"), "metrics": {}}
    record.update(status="failed", error=error)
    return atomic_write_json(path, record)


def papermill_error(err: Exception) -> str:
    """A short error text from papermill's exception: the notebook's exception, not the traceback."""
    ename, evalue = getattr(err, "ename", None), getattr(err, "evalue", None)
    return f"{ename}: {evalue}" if ename else f"{type(err).__name__}: {err}"


def _flatten(prefix: str, value, row: dict):
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, row)
    else:
        row[prefix] = value if not isinstance(value, list) else json.dumps(value)


def collect(path):
    """All records under ``path`` (searched recursively) as a pandas DataFrame, one row per run.

    Columns: ``run`` (the record's folder relative to ``path``), ``notebook``, ``status``,
    ``wall_s``, ``seed``, ``error``, then ``param.<name>`` and ``metric.<name>`` (nested
    metrics flattened with dots, lists as JSON text)."""
    import pandas as pd
    root, rows = Path(path), []
    for file in sorted(root.rglob(f"*{RECORD}")):
        record = read_record(file)
        if record is None:
            continue
        row = {"run": str(file.parent.relative_to(root)) or ".", "notebook": record.get("notebook"),
               "status": record.get("status"), "wall_s": record.get("wall_s"), "seed": record.get("seed"),
               "error": record.get("error"), "main_metric": record.get("main_metric")}
        _flatten("param", record.get("parameters", {}), row)
        _flatten("metric", record.get("metrics", {}), row)
        rows.append(row)
    return pd.DataFrame(rows)


def resolve_notebooks(names=None) -> list[Path]:
    """Notebook paths from names or number prefixes (``"01"``); all of SEQUENCE by default."""
    if not names:
        return [NOTEBOOKS / n for n in SEQUENCE]
    paths = []
    for name in names:
        if Path(name).suffix == ".ipynb":
            matches = [p for p in (Path(name), NOTEBOOKS / name) if p.exists()]
        else:
            matches = sorted(NOTEBOOKS.glob(f"{name}*.ipynb"))
        if not matches:
            raise FileNotFoundError(f"no notebook matches {name!r}; available: "
                                    f"{', '.join(p.name for p in sorted(NOTEBOOKS.glob('*.ipynb')))}")
        paths.append(matches[0])
    return paths


def declared_parameters(notebook) -> dict:
    """``{name: {"default": ..., "help": ...}}`` of the notebook's ``parameters`` cell (papermill)."""
    import papermill as pm
    return pm.inspect_notebook(str(notebook))


def parameters_for(notebook, parameters: dict) -> dict:
    """The parameters a parameter file gives ``notebook``: the top-level values, then those of a
    section named after the notebook (``04_feature_distillation:`` or ``"04":``), which win."""
    stem = Path(notebook).stem
    own = {k: v for k, v in parameters.items() if not isinstance(v, dict)}
    for key, section in parameters.items():
        if isinstance(section, dict) and (key == stem or stem.startswith(f"{key}_")):
            own.update(section)
    return own


def run_sequence(notebooks=None, out_dir=None, parameters=None, progress=True, strict=()) -> Path:
    """Execute notebooks in order with papermill into ``out_dir`` (default ``runs/<timestamp>``).

    Each gets ``out_dir`` (absolute) plus those of ``parameters_for(nb, parameters)`` it declares
    (so one parameter file serves every notebook); a name in ``strict`` (those typed with ``-p``) that no
    notebook declares is an error, as it is likely a typo. They run with ``notebooks/`` as the working
    directory, like in JupyterLab. Stops at the first failing notebook, whose executed copy
    (with the error) is kept and whose record is marked failed.
    """
    import papermill as pm

    paths = resolve_notebooks(notebooks)
    declared = {nb: declared_parameters(nb) for nb in paths}
    given = parameters or {}
    unknown = sorted(set(strict) - set().union(*declared.values()))
    if unknown:
        raise ValueError(f"no notebook in this run has a parameter named {', '.join(unknown)}; "
                         f"their parameters are: {', '.join(sorted(set().union(*declared.values())))}")
    out = Path(out_dir or REPO / "runs" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for nb in paths:
        start = time.perf_counter()
        print(f"running {nb.name} ...", flush=True)
        mine = {k: v for k, v in {**parameters_for(nb, given), "out_dir": str(out)}.items() if k in declared[nb]}
        try:
            pm.execute_notebook(str(nb), str(out / nb.name), cwd=str(nb.parent), parameters=mine,
                                progress_bar=progress)
        except Exception as err:  # papermill's execution error, a dead kernel, ...
            mark_failed(out, nb.name, papermill_error(err), mine)
            err.out_dir = str(out)  # so that callers can point at the executed copy
            raise
        print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return out

