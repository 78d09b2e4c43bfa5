"""The notebooks' prologue: versions, the run record, the dataset and the right teacher."""
import json

import pytest

from distill_utils.models import build_model
from distill_utils.provenance.checkpoints import save_checkpoint
from distill_utils.runs.lesson import find_teacher, start_lesson, versions


def test_versions_name_every_library_asked_for():
    line = versions(("onnx",))
    assert line.startswith("python ") and " | torch " in line and " | onnx " in line and "distill_utils" in line


def test_the_teacher_is_the_checkpoint_given_or_the_one_saved_for_this_dataset(tmp_path):
    with pytest.raises(ValueError, match="no teacher for dataset 'mnist'.*Run notebook 01 first"):
        find_teacher("mnist", "", tmp_path)
    model = build_model("student_cnn", width=0.25)
    path = save_checkpoint(model, tmp_path / "teacher.safetensors", metadata={"dataset": "cifar10"})
    with pytest.raises(ValueError, match="is a teacher for 'cifar10', not 'mnist'"):
        find_teacher("mnist", "", tmp_path)
    loaded, manifest = find_teacher("cifar10", "", tmp_path)
    assert manifest["metadata"]["dataset"] == "cifar10"
    assert all((a == b).all() for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    _, given = find_teacher("mnist", str(path), tmp_path / "elsewhere")  # an explicit checkpoint wins
    assert given["sha256"] == manifest["sha256"]
    _, shipped = find_teacher("fashion_mnist", "", tmp_path)
    assert shipped["architecture"]["name"] == "teacher_cnn"


def test_start_lesson_checks_parameters_and_records_the_teacher_read(tmp_path, capsys):
    model = build_model("student_cnn", width=0.25)
    path = save_checkpoint(model, tmp_path / "t.safetensors", metadata={"dataset": "fashion_mnist"})
    ns = {"__annotations__": {"teacher_checkpoint": str, "dataset": str, "out_dir": str},
          "teacher_checkpoint": str(path), "dataset": "fashion_mnist", "out_dir": str(tmp_path)}
    lesson = start_lesson("tiny", ns, load_data=False)
    assert lesson.data is None and lesson.teacher is not None and "torch" in capsys.readouterr().out
    lesson.run.finish({})
    record = json.loads((tmp_path / "tiny.record.json").read_text())
    assert record["checkpoints"]["read"][0]["sha256"] == lesson.teacher_manifest["sha256"]
    from distill_utils.runs.params import ParameterError
    with pytest.raises(ParameterError, match="dataset = 'fashion' must be one of"):
        start_lesson("tiny", {**ns, "dataset": "fashion"}, load_data=False)
