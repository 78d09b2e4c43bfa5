"""How `make test` shares 2 cores: two pytest-xdist workers, each with half the CPU threads.

Measured here: two one-thread processes train 1.2x (teacher) to 1.7x (student) as many images
per second as one two-thread process, and the kernel start-ups, plots and papermill launches
of one worker overlap the other's arithmetic: `make test` went from 19 to 13 minutes.

Each notebook runs whole, in order, on one worker. Notebooks 07 and 09 read what 03, 05 and 06
saved, so those five run together, in that order, and first: they are the longest stretch.
(xdist's ``--dist loadgroup`` marks cannot do this under pytest 9.2, which ignores the node
ids xdist rewrites, so this file gives xdist its own scheduler.)
"""
import os
import sys
from pathlib import Path

import pytest

PIPELINE = ("03_", "05_", "06_", "07_", "09_")  # 07 and 09 need the models the others save in runs/dev


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pytest_configure(config):
    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers:  # an xdist worker: its notebook kernels and subprocesses inherit the environment
        threads = str(max(1, _cores() // workers))
        os.environ.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(int(threads))


def scope(nodeid: str) -> str:
    """xdist's unit of work for a test: a notebook's cells are one, 03/05/06/07/09 share one
    (the worked solutions in notebooks/solutions/ read nothing they save: each is its own),
    and each unit test is its own."""
    path = Path(nodeid.split("::", 1)[0])
    if path.suffix != ".ipynb":
        return nodeid
    in_pipeline = path.name.startswith(PIPELINE) and path.parent.name == "notebooks"
    return "tutorial-pipeline" if in_pipeline else path.as_posix()


@pytest.hookimpl(optionalhook=True)  # `-p no:xdist` runs without the plugin
def pytest_xdist_make_scheduler(config, log):
    """Load-balance by ``scope``. Scopes with more tests go first, so the pipeline starts at once."""
    from xdist.scheduler import LoadScopeScheduling

    class NotebookScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return scope(nodeid)

    return NotebookScheduling(config, log)
