"""Running the notebooks with papermill and keeping their metrics.

``make run`` calls ``run_sequence``: every notebook is executed in order into a fresh
``runs/<timestamp>/`` folder, and each notebook writes its metrics beside its executed copy
with ``save_metrics`` (its last cell).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ._io import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
SEQUENCE = ("00_setup.ipynb", "01_teacher_training.ipynb", "02_soft_targets_and_temperature.ipynb",
            "03_knowledge_distillation.ipynb", "04_feature_distillation.ipynb")


def save_metrics(out_dir, notebook: str, metrics: dict) -> Path:
    """Write ``<out_dir>/<notebook>.metrics.json`` atomically; values must be JSON-friendly."""
    return atomic_write_json(Path(out_dir) / f"{Path(notebook).stem}.metrics.json", metrics)


def load_metrics(out_dir) -> dict:
    """``{notebook stem: metrics}`` for every metrics file in ``out_dir``."""
    return {p.name.removesuffix(".metrics.json"): json.loads(p.read_text())
            for p in sorted(Path(out_dir).glob("*.metrics.json"))}


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


def run_sequence(notebooks=None, out_dir=None, parameters=None, progress=True) -> Path:
    """Execute notebooks in order with papermill into ``out_dir`` (default ``runs/<timestamp>``).

    Each gets ``out_dir`` (absolute) plus those of ``parameters`` it declares; they run with ``notebooks/`` as the
    working directory, like in JupyterLab. Stops at the first failing notebook, whose
    executed copy (with the error) is kept.
    """
    import papermill as pm

    out = Path(out_dir or REPO / "runs" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    given = {**(parameters or {}), "out_dir": str(out)}
    for nb in resolve_notebooks(notebooks):
        start = time.perf_counter()
        print(f"running {nb.name} ...", flush=True)
        declared = pm.inspect_notebook(str(nb))  # pass each notebook only the parameters it has
        pm.execute_notebook(str(nb), str(out / nb.name), cwd=str(NOTEBOOKS),
                            parameters={k: v for k, v in given.items() if k in declared},
                            progress_bar=progress)
        print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return out
