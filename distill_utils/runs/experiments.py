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

import ast
import json
import platform
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from distill_utils.common.files import atomic_write_json, loads_json, move_into_place, read_limited
from distill_utils.folders import absolute_name
from distill_utils.runs.params import did_you_mean, validate

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
SEQUENCE = ("00_setup.ipynb", "01_teacher_training.ipynb", "02_soft_targets_and_temperature.ipynb",
            "03_knowledge_distillation.ipynb", "04_feature_distillation.ipynb",
            "05_magnitude_pruning.ipynb", "06_channel_pruning.ipynb", "07_prune_and_distill.ipynb",
            "09_quantize_and_deploy.ipynb", "11_transformer_compression.ipynb", "12_object_detection.ipynb")
RECORD = ".record.json"
MAX_RECORD = 64 << 20  # bytes: a record holds parameters and metrics, never data

__all__ = ["start_run", "Run", "NotebookFailed", "parameters_for", "record_path", "read_record", "mark_failed",
           "collect", "run_sequence", "resolve_notebooks", "declared_parameters", "check_parameter_names",
           "check_values", "SEQUENCE"]


class NotebookFailed(RuntimeError):
    """A notebook stopped with an error; ``out_dir`` holds its executed copy and its failed record."""

    def __init__(self, notebook: str, out_dir, error: str):
        super().__init__(f"{notebook} failed: {error}")
        self.notebook, self.out_dir, self.error = notebook, Path(out_dir), error


def record_path(out_dir, notebook: str) -> Path:
    return Path(out_dir) / f"{Path(notebook).stem}{RECORD}"


def read_record(path, problems: list | None = None) -> dict | None:
    """The record at ``path``, or None if there is none or it is unreadable or malformed (then, with
    ``problems`` given, ``(path, why)`` is appended to it)."""
    try:
        record = loads_json(read_limited(path, MAX_RECORD, "run record"), f"run record {path}")
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        for name, kind in (("parameters", dict), ("metrics", dict), ("checkpoints", dict), ("status", str)):
            if name in record and not isinstance(record[name], kind):
                raise ValueError(f"its {name!r} is not a {kind.__name__}")
        return record
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UnicodeDecodeError) as err:  # ReadRefused and JSON errors are ValueErrors
        if problems is not None:
            problems.append((str(path), f"{getattr(err, 'strerror', None) or err}"))
        return None


def _versions() -> dict:
    import torch

    from distill_utils.provenance.checkpoints import library_versions
    versions = {**library_versions(), "platform": platform.platform(), "host": socket.gethostname(),
                "threads": torch.get_num_threads()}
    try:
        versions["numpy"] = __import__("numpy").__version__
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
    """One notebook run's record; ``finish(metrics)`` completes it (every notebook's last cell).

    Checkpoints the run reads or writes are listed in the record when the notebook says so, with
    the manifest ``load_checkpoint`` / ``load_pretrained`` / ``verify_checkpoint`` return:
    ``run.checkpoint("read", manifest)``, ``run.checkpoint("written", verify_checkpoint(path))``."""

    def __init__(self, notebook: str, out_dir, parameters: dict):
        self.path = record_path(out_dir, notebook)
        self._start = time.perf_counter()
        self.record = {"notebook": Path(notebook).stem, "status": "running", "parameters": _json_safe(parameters),
                       "seed": parameters.get("seed"),
                       "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "versions": _versions(), "metrics": {}, "checkpoints": {"read": [], "written": []}}
        self._write()

    def _write(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.path, self.record)
        except OSError as err:
            raise OSError(f"cannot write the run record {self.path}: {err.strerror or err}. Set the out_dir "
                          "parameter to a writable folder with free space (e.g. -p out_dir runs/mine)") from None

    def checkpoint(self, op: str, manifest: dict) -> None:
        """Note a checkpoint this run ``"read"`` or ``"written"``: ``manifest`` as ``load_checkpoint``,
        ``load_pretrained`` or ``verify_checkpoint`` return it (its file's ``path`` and ``sha256``);
        the record lists each file once per operation (notebook 01)."""
        if op not in ("read", "written"):
            raise ValueError(f"op must be 'read' or 'written', got {op!r}")
        if not isinstance(manifest, dict) or not manifest.get("path") or not manifest.get("sha256"):
            raise ValueError("run.checkpoint needs the manifest that load_checkpoint, load_pretrained or "
                             f"verify_checkpoint return (with 'path' and 'sha256'); got {type(manifest).__name__}")
        entry = {"path": str(Path(manifest["path"]).resolve()), "sha256": manifest["sha256"]}
        if entry not in self.record["checkpoints"][op]:
            self.record["checkpoints"][op].append(entry)

    def finish(self, metrics: dict, main: str | None = None) -> Path:
        """Write the record with ``metrics`` (JSON-friendly values) and status ``ok``.

        ``main`` names the headline metric that reports plot (default: the first)."""
        self.record.update(status="ok", metrics=_json_safe(metrics), main_metric=main or next(iter(metrics), None),
                           wall_s=round(time.perf_counter() - self._start, 1))
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


def collect(path, runs=None):
    """All records under ``path`` (searched recursively) as a pandas DataFrame, one row per run.

    Columns: ``run`` (the record's folder relative to ``path``), ``notebook``, ``status``,
    ``wall_s``, ``seed``, ``error``, then ``param.<name>`` and ``metric.<name>`` (nested
    metrics flattened with dots, lists as JSON text). A record that cannot be read gives a row
    with status ``unreadable`` and the reason in ``error``. ``runs`` (folder names) keeps only those."""
    import pandas as pd
    root, rows = Path(path), []
    for file in sorted(root.rglob(f"*{RECORD}")):
        run = str(file.parent.relative_to(root)) or "."
        if runs is not None and run not in runs:
            continue
        problems = []
        record = read_record(file, problems)
        if record is None:
            if problems:
                rows.append({"run": run, "notebook": file.name[:-len(RECORD)], "status": "unreadable", "wall_s": None,
                             "seed": None, "error": f"{file}: {problems[0][1]}", "main_metric": None})
            continue
        row = {"run": run, "notebook": record.get("notebook"),
               "status": record.get("status"), "wall_s": record.get("wall_s"), "seed": record.get("seed"),
               "error": record.get("error"), "main_metric": record.get("main_metric")}
        _flatten("param", record.get("parameters", {}), row)
        _flatten("metric", record.get("metrics", {}), row)
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["run", "notebook", "status", "wall_s", "seed", "error",
                                                         "main_metric"])


def _available() -> str:
    return ", ".join(p.name for p in sorted(NOTEBOOKS.glob("*.ipynb")))


def resolve_notebooks(names=None) -> list[Path]:
    """Notebook paths from names, paths or two-digit numbers (``"01"``); all of SEQUENCE by default.

    A name must pick exactly one notebook: ``"0"`` (which would match ten) or ``""`` is an error."""
    if names is None or (isinstance(names, (list, tuple)) and not names):
        return [NOTEBOOKS / n for n in SEQUENCE]
    paths = []
    for name in names:
        name = str(name)
        if not name.strip():
            raise FileNotFoundError(f"an empty notebook name was given; name one of: {_available()}")
        if Path(name).suffix == ".ipynb":
            matches = [p for p in (Path(name), NOTEBOOKS / name) if p.is_file()][:1]
        else:
            matches = sorted(p for p in NOTEBOOKS.glob("*.ipynb")
                             if p.stem == name or p.stem.split("_", 1)[0] == name or p.stem.startswith(f"{name}_"))
        if len(matches) > 1:
            listed = ", ".join(p.name for p in matches)
            raise FileNotFoundError(f"{name!r} matches {len(matches)} notebooks ({listed}); "
                                    "give its two-digit number (e.g. 03) or its name")
        if not matches:
            close = did_you_mean(name, [p.stem for p in NOTEBOOKS.glob("*.ipynb")])
            raise FileNotFoundError(f"no notebook matches {name!r}{close}; "
                                    f"available: {_available()}")
        paths.append(matches[0])
    return paths


def declared_parameters(notebook) -> dict:
    """``{name: {"default": ..., "help": ...}}`` of the notebook's ``parameters`` cell (papermill)."""
    import papermill as pm
    return pm.inspect_notebook(str(notebook))


def default_values(declared: dict) -> dict:
    """``{name: value}`` of the defaults in ``declared_parameters``' result that are literals (a default
    computed from code is left out)."""
    values = {}
    for name, info in declared.items():
        try:
            values[name] = ast.literal_eval(str(info.get("default")))
        except (ValueError, SyntaxError):
            pass
    return values


def _section_of(key: str, stem: str) -> bool:
    return key == stem or stem.startswith(f"{key}_")


def parameters_for(notebook, parameters: dict) -> dict:
    """The parameters a parameter file gives ``notebook``: the top-level values, then those of a
    section named after the notebook (``04_feature_distillation:`` or ``"04":``), which win."""
    stem = Path(notebook).stem
    own = {k: v for k, v in parameters.items() if not isinstance(v, dict)}
    for key, section in parameters.items():
        if isinstance(section, dict) and _section_of(str(key), stem):
            own.update(section)
    return own


def check_parameter_names(parameters: dict, notebooks=(), source: str = "the parameter file") -> None:
    """Refuse names in a parameter file that no notebook declares (top level), sections named after
    no notebook, and names a section's notebook does not declare, with the allowed names and a
    "did you mean". The repository's notebooks and ``notebooks`` (paths) are the ones known."""
    known = {p.resolve(): None for p in [*sorted(NOTEBOOKS.glob("*.ipynb")), *map(Path, notebooks)]}
    declared = {p: declared_parameters(p) for p in known}
    every = sorted(set().union(*declared.values())) if declared else []
    stems = [p.stem for p in declared]
    for key, value in parameters.items():
        key = str(key)
        if key in every and not isinstance(value, dict):
            continue
        targets = [p for p in declared if _section_of(key, p.stem)]
        if isinstance(value, dict) and targets:
            for name in value:
                if not any(name in declared[p] for p in targets):
                    names = sorted(set().union(*(declared[p] for p in targets)))
                    raise ValueError(f"{source}: section {key!r} sets {name!r}, which {targets[0].stem} does not "
                                     f"declare{did_you_mean(name, names)}; its parameters are: {', '.join(names)}")
            continue
        if isinstance(value, dict):
            raise ValueError(f"{source}: {key!r} is not a notebook section{did_you_mean(key, stems)}; "
                             f"sections are named after notebooks: {', '.join(stems)}")
        raise ValueError(f"{source}: no notebook has a parameter named {key!r}{did_you_mean(key, every)}; "
                         f"the parameters are: {', '.join(every)}")


_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}


def check_values(notebook, values: dict, declared: dict | None = None) -> None:
    """Validate ``values`` with the notebook's own rules (``params.validate``) before anything runs:
    its parameters cell's types and defaults, overridden by ``values``. Raises ParameterError."""
    declared = declared_parameters(notebook) if declared is None else declared
    namespace = {"__annotations__": {}}
    for name, info in declared.items():
        kind = _TYPES.get(str(info.get("inferred_type_name")), object)
        namespace["__annotations__"][name] = kind
        try:
            namespace[name] = ast.literal_eval(str(info.get("default")))
        except (ValueError, SyntaxError):
            namespace["__annotations__"][name] = object  # a default that is not a literal: nothing to check
    namespace.update({k: v for k, v in values.items() if k in declared})
    validate(namespace)


def _refuse_sources(out: Path, notebooks) -> None:
    """ValueError when ``out`` is the tutorial's notebooks folder, or an executed copy would land on its source."""
    over = [nb.name for nb in notebooks if (out / nb.name).resolve() == Path(nb).resolve()]
    if over or out == NOTEBOOKS.resolve():
        what = f"the executed copy of {over[0]} would replace the notebook itself" if over else \
            "it is the tutorial's own notebooks folder"
        raise ValueError(f"output folder {out}: {what}; choose another folder with --out (default runs/<timestamp>)")


def run_sequence(notebooks=None, out_dir=None, parameters=None, progress=True, strict=()) -> Path:
    """Execute notebooks in order with papermill into ``out_dir`` (default ``runs/<timestamp>``).

    Each gets ``out_dir`` (absolute) plus those of ``parameters_for(nb, parameters)`` it declares
    (so one parameter file serves every notebook); a name in ``strict`` (those typed with ``-p``) that no
    notebook declares is an error, as it is likely a typo. Every notebook's values are validated
    before the first one runs. They run with ``notebooks/`` as the working directory, like in
    JupyterLab. Stops at the first failing notebook, whose executed copy (with the error) is kept
    and whose record is marked failed, by raising ``NotebookFailed`` (which carries the folder).
    An unknown notebook is a FileNotFoundError, an unwritable ``out_dir`` an OSError, an ``out_dir``
    where an executed copy would replace its source notebook a ValueError, all before anything runs.
    Each executed copy replaces an older one at once, when papermill has finished writing it.
    """
    import papermill as pm

    paths = resolve_notebooks(notebooks)
    declared = {nb: declared_parameters(nb) for nb in paths}
    given = parameters or {}
    every = sorted(set().union(*declared.values()))
    unknown = sorted(set(strict) - set(every))
    if unknown:
        raise ValueError(f"no notebook in this run has a parameter named {', '.join(unknown)}"
                         f"{did_you_mean(unknown[0], every)}; their parameters are: {', '.join(every)}")
    for nb in paths:
        check_values(nb, parameters_for(nb, given), declared[nb])
    out = Path(out_dir or REPO / "runs" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    _refuse_sources(out, paths)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{time.time_ns()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise OSError(f"cannot write to the output folder {out}: {err.strerror or err}; "
                      "choose a writable folder with --out") from None
    for nb in paths:
        start = time.perf_counter()
        print(f"running {nb.name} ...", flush=True)
        mine = {k: v for k, v in {**parameters_for(nb, given), "out_dir": str(out)}.items() if k in declared[nb]}
        if "dataset" in mine:  # notebooks run in notebooks/: a folder:PATH given here is made absolute
            mine["dataset"] = absolute_name(mine["dataset"])
        running = out / f".{nb.stem}.running.ipynb"  # the executed copy replaces an older one only when whole
        try:
            pm.execute_notebook(str(nb), str(running), cwd=str(nb.parent), parameters=mine, progress_bar=progress)
        except Exception as err:  # papermill's execution error, a dead kernel, ...
            error = papermill_error(err)
            if running.exists():
                move_into_place(running, out / nb.name)  # the copy shows where it failed
            mark_failed(out, nb.name, error, mine)
            raise NotebookFailed(nb.name, out, error) from err
        move_into_place(running, out / nb.name)
        print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return out
