"""The notebooks write some concepts out in full; they must agree with the package."""
import ast
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from distill_utils.distill import soft_kl

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def notebook_function(notebook: str, name: str):
    """Compile just the function ``name`` defined in a code cell of ``notebook``."""
    cells = json.loads((NOTEBOOKS / notebook).read_text())["cells"]
    for cell in cells:
        if cell["cell_type"] != "code" or f"def {name}(" not in "".join(cell["source"]):
            continue
        tree = ast.parse("".join(cell["source"]))
        node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
        namespace = {"torch": torch, "F": F}
        exec(compile(ast.Module(body=[node], type_ignores=[]), notebook, "exec"), namespace)
        return namespace[name]
    raise AssertionError(f"{notebook} defines no function {name}")


@pytest.mark.parametrize("T", [1.0, 2.5, 8.0])
def test_kd_soft_term_matches_package(T):
    kd_soft_term = notebook_function("02_soft_targets_and_temperature.ipynb", "kd_soft_term")
    softmax_t = notebook_function("02_soft_targets_and_temperature.ipynb", "softmax_t")
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(16, 10, generator=g) * 4, torch.randn(16, 10, generator=g) * 4
    torch.testing.assert_close(kd_soft_term(s, t, T), soft_kl(s, t, T))
    torch.testing.assert_close(softmax_t(s, T), F.softmax(s / T, 1))
