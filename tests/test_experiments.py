import json

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from distill_utils import __main__ as cli
from distill_utils.experiments import load_metrics, resolve_notebooks, run_sequence, save_metrics


def test_metrics_round_trip(tmp_path):
    save_metrics(tmp_path, "01_teacher_training.ipynb", {"test_acc": 0.9, "params": 3})
    assert load_metrics(tmp_path) == {"01_teacher_training": {"test_acc": 0.9, "params": 3}}
    assert not list(tmp_path.glob("*.tmp"))


def test_resolve_by_number_prefix():
    assert [p.name for p in resolve_notebooks(["01", "00"])] == ["01_teacher_training.ipynb", "00_setup.ipynb"]
    try:
        resolve_notebooks(["99"])
    except FileNotFoundError as err:
        assert "no notebook matches '99'" in str(err) and "00_setup.ipynb" in str(err)
    else:
        raise AssertionError("an unknown notebook must raise")


def test_run_sequence_passes_declared_parameters_only(tmp_path):
    nb = new_notebook(cells=[
        new_code_cell("x: int = 1  # a number\nout_dir: str = '.'", metadata={"tags": ["parameters"]}),
        new_code_cell("from distill_utils.experiments import save_metrics\n"
                      "save_metrics(out_dir, 'tiny', {'x': x})"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nb, path)
    out = run_sequence([str(path)], tmp_path / "out", {"x": 5, "not_declared": 1}, progress=False)
    assert load_metrics(out) == {"tiny": {"x": 5}}
    executed = json.loads((out / "tiny.ipynb").read_text())
    assert "not_declared" not in "".join("".join(c["source"]) for c in executed["cells"])


def test_cli_data_reports_missing_dataset(tmp_path, no_debian, capsys):
    assert cli.main(["data", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("FAIL: dataset 'fashion_mnist' not found") and "apt-get install" in err
