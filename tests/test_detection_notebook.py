"""Notebook 12 writes its distillation losses out in full; they must agree with ``distill_utils.tasks.detection``
(the pattern of ``test_teaching_copies.py``), and the notebook and its worked solutions follow the project's
skeleton (one ``parameters`` cell of typed, commented literals, then ``start_lesson``)."""
import ast
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from distill_utils.tasks.detection import FeatureImitation, encode, heatmap_kd, imitation_mask

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK = NOTEBOOKS / "12_object_detection.ipynb"
SOLUTIONS = NOTEBOOKS / "solutions" / "12_object_detection_solutions.ipynb"


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def notebook_function(name: str):
    """Compile just the function ``name`` defined in a code cell of notebook 12."""
    for cell in cells(NOTEBOOK):
        if cell["cell_type"] != "code" or f"def {name}(" not in source(cell):
            continue
        tree = ast.parse(source(cell))
        node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
        namespace = {"torch": torch, "F": F, "nn": torch.nn}
        exec(compile(ast.Module(body=[node], type_ignores=[]), NOTEBOOK.name, "exec"), namespace)
        return namespace[name]
    raise AssertionError(f"{NOTEBOOK.name} defines no function {name}")


@pytest.mark.parametrize("T", [0.5, 1.0, 4.0])
def test_heatmap_distillation_is_the_packages_and_the_formula(T):
    heatmap_distillation = notebook_function("heatmap_distillation")
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 10, 16, 16, generator=g) * 3, torch.randn(2, 10, 16, 16, generator=g) * 3
    torch.testing.assert_close(heatmap_distillation(s, t, T), heatmap_kd(s, t, T))
    s, t = s.double(), t.double()  # the formula on probabilities, far from log(0) in float64
    q, p = torch.sigmoid(t / T), torch.sigmoid(s / T)
    by_hand = -(q * p.log() + (1 - q) * (1 - p).log()).mean() * T * T
    torch.testing.assert_close(heatmap_distillation(s, t, T), by_hand)
    torch.testing.assert_close(by_hand, F.binary_cross_entropy(p, q) * T * T)


def test_near_objects_is_the_packages_imitation_mask():
    near_objects = notebook_function("near_objects")
    boxes = torch.tensor([[[4.0, 4.0, 20.0, 28.0], [30.0, 30.0, 62.0, 50.0], [0.0, 0.0, 0.0, 0.0]]])
    labels = torch.tensor([[1, 7, -1]])  # two objects and an unused slot
    heat = encode(boxes, labels, 10, 64)["heatmap"]  # (1, 10, 16, 16)
    for threshold in (0.0, 0.01, 0.1, 0.5, 0.99):
        mask = near_objects(heat, threshold)
        assert mask.shape == (1, 1, 16, 16) and mask.dtype == torch.float32
        assert torch.equal(mask, imitation_mask(heat, threshold)), threshold
    assert near_objects(heat, 0.99).sum() == 2  # only the two centre cells reach 1
    assert near_objects(heat, 0.0).sum() == (heat.amax(1) > 0).sum() > 2


def test_imitation_loss_is_the_packages_feature_imitation():
    imitation_loss = notebook_function("imitation_loss")
    g = torch.Generator().manual_seed(1)
    imitation = FeatureImitation(8, 16)
    s, t = torch.randn(3, 8, 16, 16, generator=g), torch.randn(3, 16, 16, 16, generator=g)
    mask = (torch.rand(3, 1, 16, 16, generator=g) < 0.1).float()
    with torch.no_grad():
        adapted = imitation.adapter(s)
        torch.testing.assert_close(imitation_loss(adapted, t, mask), imitation(s, t, mask))
        torch.testing.assert_close(imitation_loss(adapted, t, torch.ones(3, 1, 16, 16)), imitation(s, t, None))
        one = torch.zeros(3, 1, 16, 16)
        one[1, 0, 5, 7] = 1  # a single imitated cell: half its squared distance, summed over channels
        by_hand = 0.5 * (adapted[1, :, 5, 7] - t[1, :, 5, 7]).pow(2).sum()
        torch.testing.assert_close(imitation_loss(adapted, t, one), by_hand)


@pytest.mark.parametrize("path", [NOTEBOOK, SOLUTIONS], ids=["notebook", "solutions"])
def test_one_parameters_cell_of_typed_commented_literals(path):
    tagged = [c for c in cells(path) if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged parameters"
    for line in source(tagged[0]).splitlines():
        assert "  # " in line, f"{path.name}: parameter without a comment: {line}"
        statement = ast.parse(line).body[0]
        assert isinstance(statement, ast.AnnAssign) and isinstance(statement.annotation, ast.Name), line
        value = ast.literal_eval(statement.value)
        assert type(value).__name__ == statement.annotation.id, f"{line}: the value is not a {statement.annotation.id}"


def test_notebook_skeleton():
    all_cells = cells(NOTEBOOK)
    code = [c for c in all_cells if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", [])
    assert 'start_lesson("12_object_detection", globals()' in source(code[1])
    text = "\n".join(source(c) for c in all_cells if c["cell_type"] == "markdown")
    assert source(all_cells[0]).startswith("# 12 · ")
    for heading in ("**What you will learn**", "**Prerequisites:**", "## Summary", "## Exercises",
                    "solutions/12_object_detection_solutions.ipynb"):
        assert heading in text, heading
    assert "run.finish(" in source(code[-1])
    checked = [c for c in code if "NBVAL_CHECK_OUTPUT" in source(c)]
    assert checked and all(source(c).startswith("# NBVAL_CHECK_OUTPUT\n") for c in checked)
    assert all(c.get("id") for c in all_cells) and len({c["id"] for c in all_cells}) == len(all_cells)
