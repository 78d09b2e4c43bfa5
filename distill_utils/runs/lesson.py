"""The opening every notebook shares, in one call (notebook 01 shows what it does step by step).

    lesson = start_lesson("03_knowledge_distillation", globals())
    ds, teacher = lesson.data, lesson.teacher

``start_lesson`` prints the library versions, checks the notebook's parameters and starts its run
record (``experiments.start_run``), loads the dataset named by the ``dataset`` / ``data_root``
parameters and, where the notebook has a ``teacher_checkpoint`` parameter, the teacher: that
checkpoint when one is given, else the shipped teacher for the built-in dataset it was trained on,
else the teacher notebook 01 saved for this dataset in ``out_dir``. The run record lists the
teacher's checkpoint as read.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Lesson", "start_lesson", "versions", "find_teacher"]

SHIPPED = {"fashion_mnist": "teacher_fashion_mnist"}  # dataset -> pretrained model name (data/pretrained/)


@dataclass
class Lesson:
    """What a notebook starts from: its run record, its dataset and its teacher (with the teacher's manifest)."""
    run: object
    data: object = None
    teacher: object = None
    teacher_manifest: dict | None = None


def versions(extra=()) -> str:
    """One line: the Python, torch, torchvision, ``extra`` libraries' and distill_utils versions."""
    import importlib

    import distill_utils
    names = ("torch", "torchvision", *extra)
    found = [f"{name} {importlib.import_module(name).__version__}" for name in names]
    return " | ".join([f"python {platform.python_version()}", *found, f"distill_utils {distill_utils.__version__}"])


def find_teacher(dataset: str, teacher_checkpoint: str = "", out_dir="."):
    """``(model, manifest)`` of the teacher a notebook uses: ``teacher_checkpoint`` when given, else the
    shipped teacher of a built-in dataset, else ``out_dir/teacher.safetensors`` that notebook 01 saved for
    ``dataset``. ValueError saying how to get one when there is none."""
    from distill_utils.folders import absolute_name
    from distill_utils.provenance.checkpoints import load_checkpoint, load_pretrained
    if teacher_checkpoint:
        return load_checkpoint(teacher_checkpoint)
    if dataset in SHIPPED:
        return load_pretrained(SHIPPED[dataset])
    saved = Path(out_dir) / "teacher.safetensors"
    if saved.exists():
        model, manifest = load_checkpoint(saved)
        trained_on = (manifest.get("metadata") or {}).get("dataset")
        if absolute_name(trained_on) == absolute_name(dataset):  # a folder:PATH compares by its absolute path
            return model, manifest
        raise ValueError(f"{saved} is a teacher for {trained_on!r}, not {dataset!r}: run notebook 01 with "
                         f"-p dataset {dataset} -p out_dir <another folder>, or set teacher_checkpoint")
    raise ValueError(f"no teacher for dataset {dataset!r}: only {', '.join(SHIPPED)} has a shipped one. Run notebook "
                     f"01 first with the same dataset and out_dir (it saves {saved}), or set teacher_checkpoint")


def start_lesson(notebook: str, namespace: dict, load_data: bool = True, libraries=()) -> Lesson:
    """Versions, parameters checked, run record started, dataset and teacher loaded (every notebook's
    first cell after ``parameters``). Call as ``lesson = start_lesson("03_knowledge_distillation", globals())``;
    ``load_data=False`` leaves the dataset to the notebook (01 teaches loading it); ``libraries``: more
    libraries whose versions matter here (e.g. ``("onnx", "onnxruntime")``)."""
    from distill_utils.data import load_dataset
    from distill_utils.runs.experiments import start_run
    print(versions(libraries))
    run = start_run(notebook, namespace)
    lesson = Lesson(run)
    if load_data and "dataset" in namespace.get("__annotations__", {}):
        lesson.data = load_dataset(namespace["dataset"], root=namespace.get("data_root", "data"))
    if "teacher_checkpoint" in namespace.get("__annotations__", {}):
        lesson.teacher, lesson.teacher_manifest = find_teacher(
            namespace["dataset"], namespace["teacher_checkpoint"], namespace.get("out_dir", "."))
        run.checkpoint("read", lesson.teacher_manifest)
    return lesson
