"""Tests for distill_utils.provenance.checkpoints: round trips, tampering, pickles, atomic writes."""
import hashlib
import json
import os
import pickle

import pytest
import torch
from checkpoint_helpers import as_format_1, rewrite_manifest

from distill_utils.models import build_model
from distill_utils.provenance import pretrained
from distill_utils.provenance.checkpoints import (
    CheckpointError,
    load_checkpoint,
    load_pretrained,
    save_checkpoint,
    verify_checkpoint,
)

SPECS = [("teacher_cnn", {}), ("student_cnn", {"width": 0.5}), ("student_mlp", {"hidden": (64, 32)})]


def _model(name="student_cnn", **kwargs):
    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    # give BatchNorm non-default running stats so buffers are checked too
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 1, 28, 28))
    return model.eval()


@pytest.mark.parametrize("name,kwargs", SPECS, ids=[s[0] for s in SPECS])
def test_round_trip(tmp_path, name, kwargs):
    model = _model(name, **kwargs)
    meta = {"dataset": "fashion_mnist", "metrics": {"accuracy": 0.91}, "seed": 0}
    path = save_checkpoint(model, tmp_path / "m.safetensors", metadata=meta)
    assert path == tmp_path / "m.safetensors" and path.with_suffix(".json").is_file()

    loaded, manifest = load_checkpoint(path)
    assert not loaded.training
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key

    data = path.read_bytes()
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["bytes"] == len(data)
    assert manifest["format"] == "distill-lab-checkpoint" and manifest["format_version"] == 3
    assert manifest["architecture"]["name"] == name
    assert manifest["architecture"]["kwargs"] == json.loads(json.dumps(kwargs))
    assert manifest["metadata"] == meta
    assert {"python", "torch", "distill_utils"} <= set(manifest["versions"])
    assert manifest["created"].endswith("+00:00")
    # loading through the manifest path gives the same model, and verify returns the manifest
    assert load_checkpoint(path.with_suffix(".json"))[1] == manifest
    assert verify_checkpoint(path) == manifest
    # the .json beside it is a readable copy of the manifest inside the file
    copy_ = json.loads(path.with_suffix(".json").read_text())
    assert copy_ == {k: v for k, v in manifest.items() if k not in ("verified", "path")}
    assert manifest["path"] == str(path.resolve())  # where it was read: for Lineage.of and run.checkpoint


@pytest.mark.parametrize("name,kwargs", SPECS[1:], ids=[s[0] for s in SPECS[1:]])
def test_first_format_still_loads(tmp_path, name, kwargs):
    model = _model(name, **kwargs)
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    as_format_1(path)
    loaded, manifest = load_checkpoint(path)
    assert manifest["format_version"] == 1 and manifest["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_rebuilt_model_can_be_saved_again(tmp_path):
    # tuples in kwargs come back from JSON as lists; the rebuilt model must still save and load
    first = save_checkpoint(_model("student_mlp", hidden=(64, 32)), tmp_path / "a.safetensors")
    model, _ = load_checkpoint(first)
    assert [block[0].out_features for block in model.features] == [64, 32]
    second = save_checkpoint(model, tmp_path / "b.safetensors")
    assert load_checkpoint(second)[1]["content_sha256"] == load_checkpoint(first)[1]["content_sha256"]


def test_tampered_weights_fail_sha(tmp_path):
    path = save_checkpoint(_model(), tmp_path / "m.safetensors")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256") as err:
        load_checkpoint(path)
    assert "m.safetensors" in str(err.value) and "corrupted" in str(err.value)
    with pytest.raises(CheckpointError, match="SHA-256"):
        verify_checkpoint(path)


def test_truncated_weights(tmp_path):
    path = save_checkpoint(_model(), tmp_path / "m.safetensors")
    data = path.read_bytes()[:-100]
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)
    # even with a (first-format) manifest whose hash matches, a truncated file is not valid safetensors
    path = save_checkpoint(_model(), tmp_path / "m1.safetensors")
    manifest = as_format_1(path)
    data = path.read_bytes()[:-100]
    path.write_bytes(data)
    manifest.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    path.with_suffix(".json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(path)


class _Trap:
    """Unpickling this creates a file: proof of code execution."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_renamed_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled.flag"
    payload = pickle.dumps({"features.0.0.weight": _Trap(marker)})
    path = tmp_path / "evil.safetensors"
    path.write_bytes(payload)
    path.with_suffix(".json").write_text(json.dumps({
        "format": "distill-lab-checkpoint", "format_version": 1,
        "architecture": {"name": "student_cnn", "kwargs": {}},
        "sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload), "metadata": {}}))
    assert verify_checkpoint(path)["sha256"] == hashlib.sha256(payload).hexdigest()
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(path)
    assert not marker.exists()
    # the trap is live: plain unpickling would have run code
    pickle.loads(payload)["features.0.0.weight"].close()
    assert marker.exists()


def test_wrong_num_classes_names_mismatched_keys(tmp_path):
    path = save_checkpoint(_model("student_cnn"), tmp_path / "m.safetensors")
    rewrite_manifest(path, architecture={"name": "student_cnn", "kwargs": {"num_classes": 5}})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "classifier.4.weight" in msg and "(10, 64)" in msg and "(5, 64)" in msg


def test_wrong_model_name_names_missing_keys(tmp_path):
    path = save_checkpoint(_model("student_cnn"), tmp_path / "m.safetensors")
    rewrite_manifest(path, architecture={"name": "student_mlp", "kwargs": {}})
    with pytest.raises(CheckpointError, match="missing keys") as err:
        load_checkpoint(path)
    assert "head.weight" in str(err.value) and "unexpected keys" in str(err.value)


def test_unknown_architecture(tmp_path):
    path = save_checkpoint(_model(), tmp_path / "m.safetensors")
    rewrite_manifest(path, architecture={"name": "resnet9000", "kwargs": {}})
    with pytest.raises(CheckpointError, match="unknown architecture 'resnet9000'") as err:
        load_checkpoint(path)
    assert "student_cnn" in str(err.value)


def test_missing_files_and_bad_manifest(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing.safetensors")
    path = save_checkpoint(_model(), tmp_path / "m.safetensors")
    path.with_suffix(".json").unlink()
    assert load_checkpoint(path)[1]["format_version"] == 3  # the file holds its manifest
    as_format_1(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="manifest") as err:
        load_checkpoint(path)
    assert "architecture" in str(err.value) and "save_checkpoint" in str(err.value)
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)
    path.with_suffix(".json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a distill-lab checkpoint manifest"):
        load_checkpoint(path)


def test_metadata_must_be_json(tmp_path):
    with pytest.raises(CheckpointError, match="'accuracy'"):
        save_checkpoint(_model(), tmp_path / "m.safetensors", metadata={"seed": 0, "accuracy": torch.tensor(0.9)})
    assert list(tmp_path.iterdir()) == []


def test_model_not_from_build_model(tmp_path):
    with pytest.raises(CheckpointError, match="build_model"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "m.safetensors")


def test_failed_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(_model(), tmp_path / "m.safetensors")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(CheckpointError, match="cannot save .*disk full.*nothing was replaced.*as it was"):
        save_checkpoint(_model("student_cnn", width=0.5), path)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp files either
    assert load_checkpoint(path)[0].classifier[1].out_features == 64


def test_load_pretrained_unknown_name():
    with pytest.raises(CheckpointError, match="unknown pretrained model 'nope'") as err:
        load_pretrained("nope")
    assert "teacher_fashion_mnist" in str(err.value)


def test_load_pretrained_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="make pretrained"):
        load_pretrained("teacher_fashion_mnist", root=tmp_path)


def test_load_pretrained_from_root(tmp_path, monkeypatch):
    model = _model("student_cnn", width=0.5)
    path = save_checkpoint(model, tmp_path / "teacher_fashion_mnist.safetensors")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(pretrained.PRETRAINED, "teacher_fashion_mnist", sha)
    monkeypatch.setitem(pretrained.PRETRAINED_MANIFESTS, "teacher_fashion_mnist",
                        hashlib.sha256(path.with_suffix(".json").read_bytes()).hexdigest())
    loaded, manifest = load_pretrained(root=tmp_path)
    assert manifest["sha256"] == sha
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    monkeypatch.setitem(pretrained.PRETRAINED, "teacher_fashion_mnist", "0" * 64)
    with pytest.raises(CheckpointError, match="not the expected file"):
        load_pretrained(root=tmp_path)


def test_the_recorded_hash_covers_the_tensor_table_and_the_tensors(tmp_path):
    """Format 3: the manifest's content_sha256 is the hash of the header's tensor table and of the tensor
    bytes, and the header is exactly what the table and the manifest give: no byte the loader reads is
    left out."""
    from distill_utils.provenance.format import content_sha256, split_header, with_manifest
    path = save_checkpoint(_model(), tmp_path / "m.safetensors")
    blob = path.read_bytes()
    header, start = split_header(blob)
    table = {k: v for k, v in header.items() if k != "__metadata__"}
    manifest = verify_checkpoint(path)
    assert manifest["content_sha256"] == content_sha256(table, blob[start:])
    assert manifest["tensor_bytes"] == len(blob) - start and "tensors_sha256" not in manifest
    stored = json.loads(header["__metadata__"]["distill_lab_manifest"])
    assert with_manifest(blob, stored) == blob  # the header is the canonical one for its table and manifest


def test_a_pruned_vision_transformer_round_trips_through_a_checkpoint(tmp_path):
    """The tasks layer's models are rebuilt from their manifest too (per-block widths of a pruned ViT)."""
    from distill_utils.tasks.transformer import build_vit
    model = build_vit(dim=24, depth=3, heads=[3, 1, 2], head_dim=8, mlp=[40, 7, 16]).eval()
    path = save_checkpoint(model, tmp_path / "vit.safetensors")
    loaded, manifest = load_checkpoint(path)
    x = torch.randn(2, 1, 28, 28)
    assert manifest["architecture"]["name"] == "vit" and manifest["architecture"]["kwargs"]["heads"] == [3, 1, 2]
    assert torch.equal(loaded.eval()(x), model(x))
