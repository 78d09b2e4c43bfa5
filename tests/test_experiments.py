import json
import time
from pathlib import Path

import nbformat
import pytest

from conftest import write_notebook
from distill_utils import __main__ as cli
from distill_utils.runs.experiments import (
    NOTEBOOKS,
    SEQUENCE,
    NotebookFailed,
    collect,
    read_record,
    record_path,
    resolve_notebooks,
    run_sequence,
    start_run,
)
from distill_utils.runs.harness import run_jobs, threads_per_worker
from distill_utils.runs.params import ParameterError, validate
from distill_utils.runs.report import summarise_sweep, swept_parameters, write_report
from distill_utils.runs.sweeps import expand_grid, run_name, sweep


def namespace(**values):
    """What a notebook's globals look like after its parameters cell: annotations + values."""
    return {"__annotations__": {k: type(v) for k, v in values.items()}, **values}


@pytest.mark.parametrize("name, value, kind, message", [
    ("epochs", -1, int, "epochs = -1 must be >= 1"),
    ("alpha", 2, float, "alpha = 2 must be >= 0 and <= 1 (the weight of the distillation term)"),
    ("loss", "kld", str, "loss = 'kld' must be one of dkd, kd"),
    ("criterion", "l3", str, "criterion = 'l3' must be one of bn, l1, l2, random"),
    ("dataset", "fashion", str, "dataset = 'fashion' must be one of cifar10, fashion_mnist, mnist"),
    ("target", 1.5, float, "target = 1.5 must be >= 0 and <= 1 (the fraction of weights removed)"),
    ("ratio", 1.0, float, "ratio = 1.0 must be >= 0 and < 1 (the fraction of channels removed; a layer keeps one)"),
    ("sparsities", [0.5, 1.5], list, "sparsities = [0.5, 1.5] item 1 (1.5) must be >= 0 and <= 1"),
    ("T", 0.0, float, "T = 0.0 must be > 0 (the temperature)"),
    ("epochs", "three", int, "epochs = 'three' must be int, got str"),
    ("epochs", 2.5, int, "epochs = 2.5 must be int, got float"),
    ("augment", 1, bool, "augment = 1 must be bool, got int"),
])
def test_bad_parameter_names_value_and_rule(name, value, kind, message):
    ns = {"__annotations__": {name: kind, "out_dir": str}, name: value, "out_dir": "."}
    with pytest.raises(ParameterError) as err:
        validate(ns)
    assert message in str(err.value) and "papermill" in str(err.value)


def test_validate_accepts_good_values_and_reports_all_problems():
    ns = namespace(epochs=3, T=4.0, alpha=0.9, dataset="fashion_mnist", criterion="l1")
    ns["T"] = 4  # papermill -p T 4 passes an int to a float parameter
    params = validate(ns)
    assert params == {"epochs": 3, "T": 4.0, "alpha": 0.9, "dataset": "fashion_mnist", "criterion": "l1"}
    assert isinstance(params["T"], float)
    ns = {**namespace(epochs=0, alpha=-1.0), "alhpa": 0.5, "torch": pytest}  # modules are not parameters
    with pytest.raises(ParameterError) as err:
        validate(ns)
    text = str(err.value)
    assert "epochs = 0" in text and "alpha = -1.0" in text
    assert ("alhpa = 0.5 is not a parameter of this notebook (did you mean 'alpha'?); "
            "its parameters are: epochs, alpha") in text
    with pytest.raises(ParameterError, match="no parameters found"):
        validate({})


def test_every_notebook_validates_right_after_parameters_and_finishes_a_record():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        cells = [c for c in nbformat.read(path, 4).cells if c.cell_type == "code"]
        i = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
        opening = cells[i + 1].source  # one prologue call: versions, parameters checked, run record, data, teacher
        assert (f'start_run("{path.stem}", globals())' in opening if path.stem.startswith("00_")
                else f'start_lesson("{path.stem}", globals()' in opening), path.name
        assert any("run.finish(" in c.source for c in cells[i + 2:]), path.name
        for line in cells[i].source.splitlines():  # typed, commented literals
            assert ": " in line.split("=")[0] and "  # " in line, f"{path.name}: {line}"


def test_papermill_surfaces_a_bad_parameter(tmp_path):
    import papermill as pm
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(NOTEBOOKS / "03_knowledge_distillation.ipynb"), str(tmp_path / "03.ipynb"),
                            parameters={"alpha": 2.0, "out_dir": str(tmp_path)}, cwd=str(NOTEBOOKS), progress_bar=False)
    assert err.value.ename == "ParameterError" and "alpha = 2.0 must be >= 0 and <= 1" in err.value.evalue
    assert "ParameterError" in (tmp_path / "03.ipynb").read_text()  # the executed copy keeps the error


def test_resolve_by_number_prefix():
    assert [p.name for p in resolve_notebooks(["01", "00"])] == ["01_teacher_training.ipynb", "00_setup.ipynb"]
    assert [p.name for p in resolve_notebooks()] == list(SEQUENCE)
    with pytest.raises(FileNotFoundError, match="no notebook matches '99'.*00_setup.ipynb"):
        resolve_notebooks(["99"])


def tiny_notebook(folder: Path) -> Path:
    """A notebook with a record, a checkpoint, and a failure when x == fail_on and seed == 0 (unless 'allow' exists)."""
    return write_notebook(
        folder / "tiny.ipynb",
        "x: int = 1  # a number\nfail_on: int = -1  # fail when x equals this\n"
        "seed: int = 0  # a seed\nout_dir: str = '.'  # where the record goes",
        "from pathlib import Path\n"
        "from distill_utils.models import build_model\n"
        "from distill_utils.provenance.checkpoints import save_checkpoint, verify_checkpoint\n"
        "with open(Path(out_dir).parent / 'executions.log', 'a') as f:\n"
        "    f.write(Path(out_dir).name + '\\n')\n"
        "if x == fail_on and seed == 0 and not (Path(out_dir).parent / 'allow').exists():\n"
        "    raise RuntimeError('forced failure')\n"
        "path = save_checkpoint(build_model('student_mlp', width=0.05), Path(out_dir) / 'model.safetensors')\n"
        "run.checkpoint('written', verify_checkpoint(path))",
        "run.finish({'y': x * 10 + seed, 'nested': {'z': x}}, main='y')")


def test_record_in_process(tmp_path):
    run = start_run("tiny", {**namespace(seed=3, out_dir=str(tmp_path))})
    assert read_record(record_path(tmp_path, "tiny"))["status"] == "running"
    time.sleep(0.01)
    path = run.finish({"acc": 0.9})
    record = json.loads(path.read_text())
    assert record["status"] == "ok" and record["metrics"] == {"acc": 0.9} and record["main_metric"] == "acc"
    assert record["seed"] == 3 and record["parameters"]["out_dir"] == str(tmp_path)
    assert {"python", "torch", "distill_utils"} <= set(record["versions"]) and record["wall_s"] >= 0
    assert not list(tmp_path.glob("*.tmp"))


def test_tables_in_records_keep_their_column_order(tmp_path):
    """Notebook 07's final table goes through a record to `make run` and the report: columns
    must come back in the notebook's order, not sorted by name."""
    table = [{"model": "teacher", "test_acc": 0.93, "params": 688362, "bytes": 2757176}]
    start_run("tiny", namespace(seed=0, out_dir=str(tmp_path))).finish({"zeta": 1, "final_table": table})
    row = collect(tmp_path).iloc[0]
    assert list(json.loads(row["metric.final_table"])[0]) == ["model", "test_acc", "params", "bytes"]
    assert row["main_metric"] == "zeta"


def test_run_sequence_records_and_marks_failures(tmp_path):
    nb = tiny_notebook(tmp_path)
    out = run_sequence([str(nb)], tmp_path / "ok", {"x": 5, "not_declared": 1}, progress=False)
    record = read_record(record_path(out, "tiny"))
    assert record["status"] == "ok" and record["metrics"] == {"y": 50, "nested": {"z": 5}}
    written = record["checkpoints"]["written"]
    import hashlib
    assert written[0]["sha256"] == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert "not_declared" not in (out / "tiny.ipynb").read_text()
    with pytest.raises(ValueError, match="no notebook in this run has a parameter named typo"):
        run_sequence([str(nb)], tmp_path / "typo", {"typo": 1}, progress=False, strict=["typo"])
    with pytest.raises(NotebookFailed) as err:
        run_sequence([str(nb)], tmp_path / "bad", {"x": 2, "fail_on": 2}, progress=False)
    assert err.value.out_dir == (tmp_path / "bad").resolve() and "forced failure" in err.value.error
    failed = read_record(record_path(tmp_path / "bad", "tiny"))
    assert failed["status"] == "failed" and "forced failure" in failed["error"]
    assert "forced failure" in (tmp_path / "bad" / "tiny.ipynb").read_text()


def test_grid_and_names():
    points = expand_grid({"T": [1, 4], "alpha": [0.5]}, seeds=[0, 1])
    assert points == [{"T": 1, "alpha": 0.5, "seed": 0}, {"T": 1, "alpha": 0.5, "seed": 1},
                      {"T": 4, "alpha": 0.5, "seed": 0}, {"T": 4, "alpha": 0.5, "seed": 1}]
    assert run_name(points[0]) == "T=1_alpha=0.5_seed=0"
    assert run_name({"path": "a/b c"}) == "path=a-b-c"
    with pytest.raises(ValueError, match="'T' has no values"):
        expand_grid({"T": []})


def names(runs) -> list:
    """Run folders (``<name>--<id>``) without their id."""
    return [r.split("--")[0] for r in runs]


def check_sweep(df, out, executions_before):
    assert len(df) == 4 and sorted(df.status) == ["failed", "ok", "ok", "ok"]
    bad = df[df.status == "failed"].iloc[0]
    assert names([bad.run]) == ["x=2_seed=0"] and "forced failure" in bad.error
    ok = df[df.status == "ok"].assign(run=lambda d: names(d.run)).set_index("run")
    assert ok.loc["x=1_seed=1", "metric.y"] == 11 and ok.loc["x=2_seed=1", "metric.nested.z"] == 2
    runs = (out / "executions.log").read_text().split()
    assert len(runs) == executions_before + 4


def test_sweep_with_a_failure_then_retry_and_report(tmp_path):
    nb = tiny_notebook(tmp_path)
    out = tmp_path / "sweep"
    df = sweep(nb, {"x": [1, 2]}, {"fail_on": 2}, seeds=[0, 1], out=out, workers=2, progress=False)
    check_sweep(df, out, 0)
    (out / "allow").touch()
    df = sweep(nb, {"x": [1, 2]}, {"fail_on": 2}, seeds=[0, 1], out=out, workers=2, progress=False)
    assert (df.status == "ok").all()
    assert names((out / "executions.log").read_text().split()[4:]) == ["x=2_seed=0"]  # only the failed run again
    assert swept_parameters(df) == ["x"]
    table = summarise_sweep(df, "y")
    assert table.to_dict("list") == {"x": [1, 2], "mean": [10.5, 20.5], "std": pytest.approx([0.7071] * 2, abs=1e-4),
                                     "count": [2, 2]}
    html, md = write_report(out)
    assert "<img" in html.read_text() and "Sweep of tiny: y" in md.read_text() and "| 1 | 10.5000" in md.read_text()


def test_sweep_summary_keeps_runs_whose_swept_value_is_unset():
    import pandas as pd
    df = pd.DataFrame({"status": ["ok"] * 4, "param.width": [1.0, None, 1.0, None],
                       "param.seed": [0, 0, 1, 1], "metric.acc": [0.8, 0.9, 0.82, 0.92]})
    table = summarise_sweep(df, "acc")  # e.g. search trials: pruned teachers have no student width
    assert table["count"].tolist() == [2, 2] and table["mean"].tolist() == pytest.approx([0.81, 0.91])


def test_report_of_runs_whose_swept_value_is_sometimes_unset(tmp_path):
    for i, (width, seed, acc) in enumerate([(1.0, 0, 0.8), (None, 0, 0.9), (1.0, 1, 0.82), (None, 1, 0.92)]):
        run = tmp_path / f"trial-{i}"
        run.mkdir()
        params = {"seed": seed, **({"width": width} if width is not None else {})}
        (run / "search.record.json").write_text(json.dumps(
            {"notebook": "search", "status": "ok", "parameters": params, "seed": seed, "metrics": {"acc": acc},
             "main_metric": "acc", "wall_s": 1.0}))
    html, md = write_report(tmp_path)  # pandas 3: nullable columns and missing labels in the plot
    assert "| 1.0000 | 0.8100 | 0.0141 | 2 |" in md.read_text() and "<img" in html.read_text()


def test_sweep_rejects_unknown_parameter(tmp_path):
    with pytest.raises(ValueError, match="has no parameter 'alhpa'; its parameters are: x, fail_on, seed, out_dir"):
        sweep(tiny_notebook(tmp_path), {"alhpa": [1]}, out=tmp_path / "s", progress=False)


def test_sweep_on_a_dask_local_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    nb = tiny_notebook(tmp_path)
    out = tmp_path / "dask"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        df = sweep(nb, {"x": [1, 2]}, {"fail_on": 2}, seeds=[0, 1], out=out, scheduler=client, progress=False)
    check_sweep(df, out, 0)


def times_ten(x, threads=None):
    """A harness job: ``x * 10`` and the threads it was given; x == 2 breaks."""
    if x == 2:
        raise RuntimeError("job 2 broke")
    return x * 10, threads


@pytest.mark.parametrize("processes", [False, True])
def test_harness_runs_every_job_and_reports_a_failing_one_without_stopping(processes):
    done = {d.name: d for d in run_jobs(times_ten, {"a": (1,), "b": (2,), "c": (3,)}, workers=2, processes=processes)}
    assert set(done) == {"a", "b", "c"}
    assert done["a"].result == (10, threads_per_worker(2)) and done["c"].result == (30, threads_per_worker(2))
    assert done["b"].result is None and str(done["b"].error) == "job 2 broke" and done["b"].args == (2,)
    assert done["a"].error is None and threads_per_worker(10**6) == 1


def test_cli_sweep_and_report(tmp_path, capsys):
    nb = tiny_notebook(tmp_path)
    out = tmp_path / "cli"
    assert cli.main(["sweep", str(nb), "-p", "x", "1", "3", "--seeds", "0", "--workers", "1", "--out", str(out)]) == 0
    assert "2 runs ok, 0 failed" in capsys.readouterr().out and (out / "report.html").exists()
    assert sorted(names(collect(out).run)) == ["x=1_seed=0", "x=3_seed=0"]
    assert cli.main(["sweep", str(nb), "-p", "nope", "1", "--out", str(out)]) == 2
    assert "has no parameter 'nope'" in capsys.readouterr().err
    assert cli.main(["report", str(tmp_path / "empty")]) == 1


def test_cli_data_reports_missing_dataset(tmp_path, no_debian, capsys, monkeypatch):
    monkeypatch.setenv("OFFLINE", "1")  # only look: no apt-get, no download (tests/test_setup_data.py tests those)
    assert cli.main(["data", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("FAIL: dataset 'fashion_mnist' not found") and "apt-get install" in err


def test_parameter_files_name_real_parameters_and_workshop_equals_the_defaults():
    import ast

    import yaml

    from distill_utils.runs.experiments import REPO, declared_parameters, parameters_for
    declared = {p.stem: declared_parameters(p) for p in sorted(NOTEBOOKS.glob("*.ipynb"))}
    everything = set().union(*declared.values())
    for name in ("smoke", "workshop", "full"):
        params = yaml.safe_load((REPO / "params" / f"{name}.yaml").read_text())
        for key, value in params.items():
            if isinstance(value, dict):
                assert key in declared and set(value) <= set(declared[key]), (name, key)
            else:
                assert key in everything, (name, key)
    workshop = yaml.safe_load((REPO / "params" / "workshop.yaml").read_text())
    for stem, params in declared.items():
        defaults = {k: ast.literal_eval(p["default"]) for k, p in params.items() if k not in ("out_dir", "data_root")}
        assert parameters_for(stem + ".ipynb", workshop) == defaults, stem


def test_parameters_for_sections():
    from distill_utils.runs.experiments import parameters_for
    params = {"epochs": 1, "04_feature_distillation": {"epochs": 2}, "05": {"lr": 0.1}}
    assert parameters_for("04_feature_distillation.ipynb", params) == {"epochs": 2}
    assert parameters_for("notebooks/05_magnitude_pruning.ipynb", params) == {"epochs": 1, "lr": 0.1}
    assert parameters_for("01_teacher_training.ipynb", params) == {"epochs": 1}


def test_cli_run_reports_a_failing_notebook_and_bad_files(tmp_path, capsys):
    nb = tiny_notebook(tmp_path)
    out = tmp_path / "run"
    assert cli.main(["run", str(nb), "-p", "x", "2", "-p", "fail_on", "2", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "FAIL: notebook tiny.ipynb failed: RuntimeError: forced failure" in err and str(out) in err
    assert read_record(record_path(out, "tiny"))["status"] == "failed" and (out / "report.html").exists()
    assert cli.main(["run", str(nb), "-f", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read parameter file" in capsys.readouterr().err


def test_old_parameter_names_are_told_their_new_name(tmp_path):
    """One name per concept: a parameter file written for an older version names the new spelling."""
    from distill_utils.runs.experiments import check_parameter_names
    with pytest.raises(ValueError, match="section '03_knowledge_distillation' sets 'few_labels'.*"
                                         "renamed: it is now 'labelled_images'"):
        check_parameter_names({"03_knowledge_distillation": {"few_labels": 3000}}, source="old.yaml")
    with pytest.raises(ValueError, match="no notebook has a parameter named 'grid_T' \\(renamed: it is now "
                                         "'temperatures'\\)"):
        check_parameter_names({"grid_T": [1, 2]}, source="old.yaml")
