"""The workshop challenge: a simulated room of submissions gives the exact leaderboard and refusals;
grading again measures only new or changed files; the CLI's two verbs; the challenge file's errors."""
import dataclasses
import json
import os
import re
import shutil
from pathlib import Path
from unittest import mock

import pytest
import torch

from distill_utils.__main__ import main
from distill_utils.challenge.grade import GradeOptions, grade
from distill_utils.challenge.task import ChallengeError, Task, load_challenge, new_challenge
from distill_utils.challenge.verify import Submission, verify
from distill_utils.data import load_dataset
from distill_utils.measure import count_params
from distill_utils.models import build_model
from distill_utils.provenance.checkpoints import load_pretrained, save_checkpoint
from distill_utils.provenance.format import split_header, with_manifest
from distill_utils.provenance.lineage import Lineage
from distill_utils.prune import prune_channels
from distill_utils.train import evaluate

ROOT = Path(__file__).resolve().parents[1]
TASK = Task(title="smallest model above 50%", data_root=str(ROOT / "data"), images=300, min_accuracy=0.5,
            rank_by="bytes", latency_rounds=1, latency_repeats=2)


@pytest.fixture(scope="module")
def data():
    return load_dataset("fashion_mnist", root=ROOT / "data")


def _tamper(path: Path) -> None:
    """Change the accuracy claimed in a signed checkpoint's manifest, keeping the file well-formed."""
    blob = path.read_bytes()
    header, _ = split_header(blob)
    manifest = json.loads(header["__metadata__"]["distill_lab_manifest"])
    manifest["metadata"]["accuracy"] = 0.99
    path.write_bytes(with_manifest(blob, manifest))


@pytest.fixture(scope="module")
def workshop(tmp_path_factory, data):
    """A challenge, its room key, and a folder of nine files as a room would copy them."""
    room = tmp_path_factory.mktemp("room")
    challenge, key_file = new_challenge(room / "challenge.json", TASK)
    folder, elsewhere = room / "submissions", room / "laptops"
    teacher, manifest = load_pretrained()
    models = {"alice/pruned20": prune_channels(teacher, 0.2), "bob/pruned30": prune_channels(teacher, 0.3),
              "carol/pruned50": prune_channels(teacher, 0.5)}
    with mock.patch.dict(os.environ, {"DISTILL_SIGNING_KEY_FILE": str(key_file)}):
        for name, model in models.items():
            lineage = Lineage.of(manifest).then("prune_channels", amount=float(name[-2:]) / 100)
            if name.startswith("carol"):  # an ONNX export, its lineage back to the shipped teacher
                from distill_utils import deploy
                (folder / "carol").mkdir(parents=True)
                deploy.export_onnx(model, folder / f"{name}.onnx", lineage=lineage)
            else:
                save_checkpoint(model, folder / f"{name}.safetensors", lineage=lineage, metadata={"by": name})
        save_checkpoint(models["bob/pruned30"], folder / "erin" / "tampered.safetensors",
                        lineage=Lineage.of(manifest).then("prune_channels", amount=0.3))
        _tamper(folder / "erin" / "tampered.safetensors")
        parent = save_checkpoint(models["alice/pruned20"], elsewhere / "own_teacher.safetensors",
                                 lineage=Lineage().then("fit", epochs=1))
        save_checkpoint(prune_channels(models["alice/pruned20"], 0.1), folder / "frank" / "orphan.safetensors",
                        lineage=Lineage.of(_manifest(parent)).then("prune_channels", amount=0.1))
        parent.unlink()  # the lineage's parent is nowhere the grader can find it
    save_checkpoint(models["bob/pruned30"], folder / "dave" / "unsigned.safetensors",
                    lineage=Lineage.of(manifest).then("prune_channels", amount=0.3))  # no key: not signed
    (folder / "gina").mkdir()
    torch.save(models["bob/pruned30"].state_dict(), folder / "gina" / "model.safetensors")  # a pickle, renamed
    (folder / "hank").mkdir()
    shutil.copy(folder / "alice" / "pruned20.safetensors", folder / "hank" / "pruned20.safetensors")
    (folder / "notes.txt").write_text("the room's notes")
    return {"challenge": challenge, "key_file": key_file, "folder": folder, "models": models, "data": data}


def _onnx_params(path) -> int:
    import math

    import onnx
    return sum(math.prod(init.dims) for init in onnx.load(path).graph.initializer)


def _manifest(path):
    from distill_utils.provenance.checkpoints import verify_checkpoint
    return verify_checkpoint(path, allow_unverified=True)


def test_a_simulated_workshop_gives_the_exact_leaderboard_and_refusals(workshop):
    result = grade(GradeOptions(workshop["folder"], workshop["challenge"], data=workshop["data"]))
    split = workshop["data"].test.subset(300, seed=0)
    expected_acc = {name: evaluate(m, split, precision="fp32") for name, m in workshop["models"].items()}
    assert min(expected_acc["alice/pruned20"], expected_acc["bob/pruned30"]) >= 0.5 > expected_acc["carol/pruned50"]
    board = [(r["rank"], r["name"], r["kind"], r["misses"]) for r in result.rows]
    assert board == [(1, "bob/pruned30.safetensors", "checkpoint", []),  # the smaller of the two above 50%
                     (2, "alice/pruned20.safetensors", "checkpoint", []),
                     (None, "carol/pruned50.onnx", "onnx", ["accuracy >= 50.0%"])]
    for r in result.rows:
        name = r["name"].rsplit(".", 1)[0]
        assert r["accuracy"] == pytest.approx(expected_acc[name], abs=1e-6)
        assert r["params"] == (count_params(workshop["models"][name]) if r["kind"] == "checkpoint" else
                               _onnx_params(workshop["folder"] / r["name"]))  # BatchNorm folded into the convs
        assert r["bytes"] == (workshop["folder"] / r["name"]).stat().st_size and r["latency_ms"] > 0
        assert r["speedup"] > 0  # against the shipped teacher, timed in the same rounds
    reasons = {r.name: r.reason for r in result.refused}
    assert sorted(reasons) == ["dave/unsigned.safetensors", "erin/tampered.safetensors", "frank/orphan.safetensors",
                               "gina/model.safetensors", "hank/pruned20.safetensors", "notes.txt"]
    assert reasons["dave/unsigned.safetensors"].startswith("not signed with the room's key")
    assert reasons["erin/tampered.safetensors"].startswith("its signature does not match the room's key")
    assert reasons["frank/orphan.safetensors"].startswith("broken lineage: own_teacher.safetensors: file not found")
    assert reasons["gina/model.safetensors"].startswith("a pickle (torch.save) file, whatever its name")
    assert reasons["hank/pruned20.safetensors"] == ("duplicate of alice/pruned20.safetensors (the same weights): "
                                                    "one entry per model")
    assert reasons["notes.txt"].startswith("not a model file the grader reads")
    md = (workshop["folder"] / "leaderboard.md").read_text()
    assert "| 1 | bob/pruned30.safetensors | checkpoint |" in md and "## Refused (6)" in md
    assert md.index("bob/pruned30") < md.index("alice/pruned20") < md.index("carol/pruned50")
    page = (workshop["folder"] / "leaderboard.html").read_text()
    assert "<svg" in page and "Pareto front" in page and not re.search(r"""(src|href)=["'](?!#)""", page)


def test_grading_again_measures_only_new_or_changed_files(workshop, tmp_path):
    folder = tmp_path / "room"
    shutil.copytree(workshop["folder"], folder, ignore=shutil.ignore_patterns(".challenge-cache.json"))
    options = GradeOptions(folder, workshop["challenge"], data=workshop["data"])
    first = grade(options)
    assert sorted(first.measured) == ["alice/pruned20.safetensors", "bob/pruned30.safetensors", "carol/pruned50.onnx"]
    again = grade(options)
    assert again.measured == [] and sorted(again.cached) == sorted(first.measured)
    assert [(r["name"], r["accuracy"], r["latency_ms"]) for r in again.rows] == \
        [(r["name"], r["accuracy"], r["latency_ms"]) for r in first.rows]
    with mock.patch.dict(os.environ, {"DISTILL_SIGNING_KEY_FILE": str(workshop["key_file"])}):
        teacher, manifest = load_pretrained()
        save_checkpoint(prune_channels(teacher, 0.25), folder / "alice" / "pruned20.safetensors",
                        lineage=Lineage.of(manifest).then("prune_channels", amount=0.25))  # her second try
    changed = grade(options)
    assert changed.measured == ["alice/pruned20.safetensors"]  # a new SHA-256: measured again, the rest cached
    assert sorted(changed.cached) == ["bob/pruned30.safetensors", "carol/pruned50.onnx", "hank/pruned20.safetensors"]


def test_a_file_modified_after_signing_is_refused_before_anything_reads_its_tensors(workshop, tmp_path):
    folder = tmp_path / "room"
    shutil.copytree(workshop["folder"] / "bob", folder / "bob")
    target = folder / "bob" / "pruned30.safetensors"
    blob = bytearray(target.read_bytes())
    blob[-5] ^= 0xFF  # one byte of a tensor
    target.write_bytes(bytes(blob))
    _, key = load_challenge(workshop["challenge"])
    refusal = verify(target, folder, key)
    assert not isinstance(refusal, Submission)
    assert refusal.reason.startswith("damaged or modified:") and "does not match its manifest" in refusal.reason


def test_a_pickle_named_like_a_model_is_refused_and_never_unpickled(workshop, tmp_path):
    import pickle
    folder = tmp_path / "room"
    folder.mkdir()
    state = workshop["models"]["bob/pruned30"].state_dict()
    torch.save(state, folder / "zipped.safetensors")  # torch.save's zip archive
    torch.save(state, folder / "legacy.onnx", _use_new_zipfile_serialization=False)  # a bare pickle stream
    _, key = load_challenge(workshop["challenge"])
    never = mock.Mock(side_effect=AssertionError("something was unpickled"))
    with mock.patch.object(pickle, "Unpickler", never), mock.patch.object(pickle, "loads", never), \
            mock.patch.object(pickle, "load", never), mock.patch.object(torch, "load", never):
        refusals = [verify(p, folder, key) for p in sorted(folder.iterdir())]
    assert [r.reason.split(",")[0] for r in refusals] == ["a pickle (torch.save) file"] * 2 and not never.called


def test_names_a_learner_chose_are_escaped_in_both_leaderboards(workshop, tmp_path):
    folder = tmp_path / "room"
    folder.mkdir()
    (folder / "x<img src=x onerror=alert(1)>|.pt").write_bytes(b"\x80\x04 not really")
    result = grade(GradeOptions(folder, workshop["challenge"], data=workshop["data"]))
    assert result.rows == [] and "pickle" in result.refused[0].reason
    page = (folder / "leaderboard.html").read_text()
    assert "<img" not in page and "x&lt;img src=x onerror=alert(1)&gt;|.pt" in page
    assert "\\|.pt" in (folder / "leaderboard.md").read_text()


def test_the_cli_writes_a_challenge_and_grades_a_folder(workshop, tmp_path, capsys):
    folder = tmp_path / "room"
    shutil.copytree(workshop["folder"] / "bob", folder / "bob")
    challenge = tmp_path / "challenge.json"
    shutil.copy(workshop["key_file"], tmp_path / "room.key")
    assert main(["challenge", "new", "--out", str(challenge), "--data-root", str(ROOT / "data"), "--images", "200",
                 "--min-accuracy", "0.5", "--latency-rounds", "1", "--latency-repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert f"DISTILL_SIGNING_KEY_FILE={(tmp_path / 'room.key').resolve()}" in out  # the existing key is kept
    assert load_challenge(challenge)[0].images == 200
    assert main(["challenge", "grade", str(folder), "--challenge", str(challenge)]) == 0
    out = capsys.readouterr().out
    assert "| 1 | bob/pruned30.safetensors | checkpoint |" in out and "1 measured now, 0 from the cache" in out


def test_challenge_errors_are_one_line_naming_the_fix(workshop, tmp_path, capsys):
    assert main(["challenge", "grade", str(tmp_path), "--challenge", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("FAIL: challenge file") and "challenge new" in err and len(err.splitlines()) == 1
    with pytest.raises(ChallengeError, match="rank_by = 'size' must be one of"):
        new_challenge(tmp_path / "c.json", dataclasses.replace(TASK, rank_by="size"))
    with pytest.raises(ChallengeError, match="reference = 'teacher_cifar10' must be one of"):
        new_challenge(tmp_path / "c.json", dataclasses.replace(TASK, reference="teacher_cifar10"))
    big, _ = new_challenge(tmp_path / "big.json", dataclasses.replace(TASK, images=20000,
                                                                     key_file=str(workshop["key_file"])))
    (tmp_path / "room").mkdir()
    shutil.copy(workshop["folder"] / "bob" / "pruned30.safetensors", tmp_path / "room")
    with pytest.raises(ChallengeError, match="20,000 test images but fashion_mnist's test split has 10,000"):
        grade(GradeOptions(tmp_path / "room", big, data=workshop["data"]))
    record = json.loads(workshop["challenge"].read_text())
    (tmp_path / "other.key").write_text("another key of the room, long enough\n")
    (tmp_path / "c.json").write_text(json.dumps({**record, "key_file": str(tmp_path / "other.key")}))
    with pytest.raises(ChallengeError, match="is not the room's key"):
        load_challenge(tmp_path / "c.json")
    (tmp_path / "c.json").write_text(json.dumps({**record, "min_acuracy": 0.9}))
    with pytest.raises(ChallengeError, match="did you mean 'min_accuracy'"):
        load_challenge(tmp_path / "c.json")


def test_a_model_for_other_images_is_refused_with_the_reason(workshop, tmp_path):
    folder = tmp_path / "room"
    with mock.patch.dict(os.environ, {"DISTILL_SIGNING_KEY_FILE": str(workshop["key_file"])}):
        save_checkpoint(build_model("student_cnn", in_channels=3, image_size=32), folder / "rgb.safetensors",
                        lineage=Lineage().then("fit", epochs=1))
    result = grade(GradeOptions(folder, workshop["challenge"], data=workshop["data"]))
    assert result.rows == [] and result.refused[0].reason.startswith("cannot run on the task's images")



def test_notebook_09s_submitting_cell_puts_a_valid_entry_in_the_shared_folder(workshop, tmp_path, capsys):
    import importlib.util
    import sys
    spec = importlib.util.spec_from_file_location("exercise_cells", ROOT / "tools" / "exercise_cells.py")
    cells = importlib.util.module_from_spec(spec)
    sys.modules["exercise_cells"] = cells
    spec.loader.exec_module(cells)
    source = dict((i, s) for i, _, s in cells.SECTIONS["09_quantize_and_deploy"])["challenge-09-submit"]
    from distill_utils.provenance.checkpoints import verify_checkpoint
    from distill_utils.provenance.lineage import file_ref
    out, shared = tmp_path / "runs", tmp_path / "shared"
    teacher, manifest = load_pretrained()
    env = {"DISTILL_SIGNING_KEY_FILE": str(workshop["key_file"]), "CHALLENGE_FOLDER": str(shared), "USER": "zoe"}
    with mock.patch.dict(os.environ, env):
        save_checkpoint(prune_channels(teacher, 0.25), out / "final_candidate_0.safetensors",  # as section 4 saves it
                        lineage=Lineage().then("distill", teacher=file_ref(manifest), T=4.0, alpha=0.5, epochs=1))
        exec(compile(source, "challenge-09-submit", "exec"), {"out": out, "Path": Path,
                                                             "verify_checkpoint": verify_checkpoint})
    assert "signature: signed; lineage: distill" in capsys.readouterr().out
    result = grade(GradeOptions(shared, workshop["challenge"], data=workshop["data"]))
    assert [r["name"] for r in result.rows] == ["zoe/final_candidate_0.safetensors"] and not result.refused
