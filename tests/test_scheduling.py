"""The test scheduler of `make test` (conftest.py at the repository root)."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
_root_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_root_conftest)
scope = _root_conftest.scope


def test_each_notebook_stays_whole_and_07_runs_after_what_it_reads():
    notebooks = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    scopes = {nb: scope(f"{nb}::Cell 3") for nb in notebooks}
    assert all(scope(f"{nb}::Cell 0") == s for nb, s in scopes.items())  # cells never split
    pipeline = [nb for nb in notebooks if scopes[nb] == scopes["notebooks/07_prune_and_distill.ipynb"]]
    assert [Path(nb).name[:2] for nb in pipeline] == ["03", "05", "06", "07", "09"]  # in this order, on one worker
    others = [s for nb, s in scopes.items() if nb not in pipeline]
    assert len(set(others)) == len(others) == len(notebooks) - 5  # the rest spread over the workers


def test_worked_solutions_run_on_their_own():
    solutions = sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb"))
    assert solutions
    scopes = [scope(f"{p.relative_to(ROOT).as_posix()}::Cell 1") for p in solutions]
    assert len(set(scopes)) == len(solutions) and "tutorial-pipeline" not in scopes


def test_unit_tests_are_scheduled_one_by_one():
    a, b = "tests/test_sparse.py::test_bits_round_trip[1]", "tests/test_sparse.py::test_pack_bits_layout"
    assert scope(a) == a and scope(b) == b
