"""Insert the self-checking exercises into the notebooks and their worked solutions (idempotent).

    .venv/bin/python tools/add_exercises.py                 # notebooks/ and notebooks/solutions/
    .venv/bin/python tools/add_exercises.py --notebooks DIR  # another copy (DIR/solutions/ for the solutions)
    .venv/bin/python tools/add_exercises.py --check          # only say what is missing (exit 1 if anything)

In each notebook the cells go right after its "## Exercises" cell (at the end if there is none): a
header, then per exercise its task, a stub raising NotImplementedError and a check (in notebook 09
then a short section on submitting to a workshop challenge). In the
solutions notebook they go at the end: a header, then per exercise its task, the worked solution
and the same check. A cell whose id is already in the notebook is left as it is and not added
again, so running this twice changes nothing. The cells themselves are in ``exercise_cells.py``.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exercise_cells import EXERCISES, SECTIONS  # noqa: E402 (the cells live beside this script)

ROOT = Path(__file__).resolve().parents[1]


def _present(nb) -> set[str]:
    """Every line of ``nb``'s code cells, stripped: the imports it already has."""
    return {line.strip() for c in nb.cells if c.cell_type == "code" for line in c.source.splitlines()}


def _imports(ex, have: set, code: str | None = None) -> str:
    """The import lines of ``ex`` that are not in ``have`` yet (only those ``code`` uses, when given);
    they join ``have``. A stub's imports are for the learner's code, unused until then (noqa)."""
    lines = [line for line in ex.imports.splitlines()
             if line and line not in have and (code is None or re.search(rf"\b{line.split()[-1]}\.", code))]
    have.update(lines)
    note = "  # noqa: F401 (for your code below)" if code is None else ""
    return "".join(f"{line}{note}\n" for line in lines) + ("\n\n" if lines else "")


def notebook_cells(name: str, nb) -> list:
    """The exercise cells of notebook ``name`` (its stem), in order."""
    number = name[:2]
    cells = [new_markdown_cell(
        "## Write it yourself: self-checking exercises\n\n"
        "Two functions of this notebook, now yours to write. Each stub below raises `NotImplementedError`: "
        "replace its body, run the cell, then run the check after it. The check calls your function on random "
        "inputs and edge cases, compares the answers with the package's (within a tolerance) and shows "
        "`correct`, `not attempted yet`, or what is wrong, naming the likely mistake when it recognises one.\n\n"
        f"Worked solutions: `solutions/{name}_solutions.ipynb`, section \"Write it yourself\".",
        id=f"ex-{number}-header")]
    have = _present(nb)
    for ex in EXERCISES[name]:
        stub = (_imports(ex, have) + ex.signature
                + f"\n    # your code here: {ex.hint}\n    raise NotImplementedError")
        cells += [new_markdown_cell(f"### {ex.title}\n\n{ex.task}", id=f"ex-{ex.key}-task"),
                  new_code_cell(stub, id=f"ex-{ex.key}-stub"),
                  new_code_cell(_check(ex), id=f"ex-{ex.key}-check")]
    for cell_id, kind, source in SECTIONS.get(name, ()):  # e.g. notebook 09's "Submitting to a workshop challenge"
        cells.append((new_code_cell if kind == "code" else new_markdown_cell)(source, id=cell_id))
    return cells


def solution_cells(name: str, nb) -> list:
    """The worked solutions of notebook ``name``'s exercises, for its solutions notebook."""
    cells = [new_markdown_cell(
        "## Write it yourself: worked solutions\n\n"
        f"The self-checking exercises of `{name}.ipynb`, each solved and followed by its check, which says "
        "`correct`.", id=f"ex-{name[:2]}-solutions-header")]
    have = _present(nb)
    for ex in EXERCISES[name]:
        solution = _imports(ex, have, ex.body) + ex.signature + "\n" + ex.body
        cells += [new_markdown_cell(f"### {ex.title}\n\n{ex.task}", id=f"ex-{ex.key}-solution-task"),
                  new_code_cell(solution, id=f"ex-{ex.key}-solution"),
                  new_code_cell(_check(ex), id=f"ex-{ex.key}-solution-check")]
    return cells


def _check(ex) -> str:
    return f"from distill_utils.exercises import {ex.check}\n\n{ex.check}({ex.function})"


def _anchor(nb) -> int:
    """Index of the last "## Exercises" markdown cell, or of the last cell."""
    found = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and "## Exercises" in c.source]
    return found[-1] if found else len(nb.cells) - 1


def insert(nb, cells, after: int) -> int:
    """Insert ``cells`` in order after index ``after``, skipping those whose id ``nb`` has; how many were added."""
    ids = {c.get("id"): i for i, c in enumerate(nb.cells)}
    added, at = 0, after
    for cell in cells:
        if cell.id in ids:
            at = ids[cell.id]  # already there: the next new cell goes after it
            continue
        nb.cells.insert(at + 1, cell)
        at, added = at + 1, added + 1
        ids = {c.get("id"): i for i, c in enumerate(nb.cells)}
    return added


def update(path: Path, make, last: bool, write: bool) -> int:
    """Add ``make(name, nb)``'s cells to the notebook at ``path``; how many were (or would be) added."""
    nb = nbformat.read(path, as_version=4)
    name = path.stem.removesuffix("_solutions")
    added = insert(nb, make(name, nb), len(nb.cells) - 1 if last else _anchor(nb))
    if added and write:
        nbformat.validate(nb)
        nbformat.write(nb, path)
    return added


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", type=Path, default=ROOT / "notebooks",
                        help="folder of the notebooks (default: the project's notebooks/); solutions in its solutions/")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if any cell is missing")
    args = parser.parse_args(argv)
    missing = 0
    for name in EXERCISES:
        for path, make, last in ((args.notebooks / f"{name}.ipynb", notebook_cells, False),
                                 (args.notebooks / "solutions" / f"{name}_solutions.ipynb", solution_cells, True)):
            if not path.is_file():
                print(f"FAIL: {path} not found; give the notebooks folder with --notebooks", file=sys.stderr)
                return 2
            added = update(path, make, last, write=not args.check)
            missing += added
            verb = "missing" if args.check else "added"
            print(f"{path.relative_to(args.notebooks)}: " + (f"{added} cells {verb}" if added else "up to date"))
    return 1 if args.check and missing else 0


if __name__ == "__main__":
    sys.exit(main())
