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


# Notebook 09: int8 scale and zero point by hand, against the package (which matches onnxruntime: tests/test_deploy.py)

@pytest.mark.parametrize("lo, hi", [(-1.0, 3.0), (-7.25, 11.5), (0.5, 2.0), (-3.0, -0.1), (-0.8102, 2.0227)])
def test_int8_scale_zero_point_matches_package(lo, hi):
    from distill_utils.deploy import int8_params, quantize_tensor
    int8_scale_zero_point = notebook_function("09_quantize_and_deploy.ipynb", "int8_scale_zero_point")
    quantize = notebook_function("09_quantize_and_deploy.ipynb", "quantize")
    scale, zero_point = int8_scale_zero_point(lo, hi)
    assert scale == pytest.approx(int8_params(lo, hi)[0], rel=1e-6) and zero_point == int8_params(lo, hi)[1]
    x = torch.linspace(lo - 1, hi + 1, 1001)
    assert torch.equal(quantize(x, scale, zero_point), torch.from_numpy(quantize_tensor(x.numpy(), scale, zero_point)))
