"""Signed checkpoints, lineage and resumable training (README: "Trust and reproducibility")."""
import json

import pytest
import torch
from checkpoint_helpers import rewrite_manifest, tiny_onnx

from distill_utils import __main__ as cli
from distill_utils.data import Split
from distill_utils.distill import distill
from distill_utils.models import build_model
from distill_utils.provenance.checkpoints import (
    CheckpointError,
    load_checkpoint,
    load_pretrained,
    save_checkpoint,
    verify_checkpoint,
)
from distill_utils.provenance.lineage import Lineage, file_ref, format_lineage, lineage_chain
from distill_utils.provenance.pretrained import PRETRAINED, PRETRAINED_DIR
from distill_utils.prune import prune_channels, prune_magnitude
from distill_utils.train import fit

KEY = "test-key-0123456789abcdef"


def tiny_split(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return build_model("student_cnn", width=0.25)


def test_signed_round_trip_and_refusals(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_SIGNING_KEY", KEY)
    path = save_checkpoint(small_cnn(), tmp_path / "m.safetensors")
    manifest = json.loads(path.with_suffix(".json").read_text())
    assert manifest["signature"]["alg"] == "HMAC-SHA256" and len(manifest["signature"]["value"]) == 64
    assert load_checkpoint(path)[1]["verified"] == "signed"
    monkeypatch.setenv("DISTILL_SIGNING_KEY", "another-key-0123456789")
    with pytest.raises(CheckpointError, match="signature of m.safetensors does not match.*another key"):
        load_checkpoint(path)
    assert load_checkpoint(path, allow_unverified=True)[1]["verified"] == "unverified"
    monkeypatch.delenv("DISTILL_SIGNING_KEY")
    assert load_checkpoint(path)[1]["verified"] == "no key"  # nothing to check against


def test_unsigned_refused_with_key_then_signed(tmp_path, monkeypatch):
    path = save_checkpoint(small_cnn(), tmp_path / "m.safetensors")
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    monkeypatch.setenv("DISTILL_SIGNING_KEY_FILE", str(key_file))
    with pytest.raises(CheckpointError, match="is not signed.*python -m distill_utils sign PATH"):
        load_checkpoint(path)
    assert cli.main(["sign", str(path)]) == 0
    assert verify_checkpoint(path)["verified"] == "signed"


def test_manifest_edit_breaks_the_signature(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_SIGNING_KEY", KEY)
    path = save_checkpoint(small_cnn(), tmp_path / "m.safetensors", metadata={"accuracy": 0.5})
    manifest = json.loads(path.with_suffix(".json").read_text())
    manifest["metadata"]["accuracy"] = 0.99  # a flattering edit of the readable copy is ignored
    path.with_suffix(".json").write_text(json.dumps(manifest))
    assert load_checkpoint(path)[1]["metadata"]["accuracy"] == 0.5
    rewrite_manifest(path, metadata={"accuracy": 0.99})  # the same edit inside the file
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(path)


def test_short_key_and_pinned_pretrained(monkeypatch):
    monkeypatch.setenv("DISTILL_SIGNING_KEY", "short")
    with pytest.raises(CheckpointError, match="at least 16 random bytes"):
        load_pretrained()
    monkeypatch.setenv("DISTILL_SIGNING_KEY", KEY)
    model, manifest = load_pretrained()  # unsigned, but its SHA-256 is pinned in the code
    assert manifest["sha256"] == PRETRAINED["teacher_fashion_mnist"]


def test_lineage_records_every_step(tmp_path):
    teacher_path = save_checkpoint(small_cnn(1), tmp_path / "teacher.safetensors")
    teacher, manifest = load_checkpoint(teacher_path)
    student = prune_channels(teacher, 0.5)
    distill(student, teacher, tiny_split(), epochs=1, T=2.0, alpha=0.7, progress=False)
    lineage = Lineage.of(manifest).then("prune_channels", amount=0.5).then(
        "distill", teacher=file_ref(manifest), T=2.0, alpha=0.7, epochs=1)
    kd_path = save_checkpoint(student, tmp_path / "pruned_kd.safetensors", lineage=lineage)
    prune_magnitude(student, 0.5, scope="global")
    sparse_path = save_checkpoint(student, tmp_path / "sparse.safetensors", sparse=True,
                                  lineage=Lineage.of(verify_checkpoint(kd_path)).then("prune_magnitude", amount=0.5))

    chain = lineage_chain(sparse_path)
    assert [(e["depth"], e["role"], e["path"]) for e in chain] == [
        (0, "checkpoint", str(sparse_path)), (1, "from", str(kd_path.resolve())),
        (2, "from and teacher", str(teacher_path.resolve()))]
    assert [s["op"] for s in chain[0]["steps"]] == ["prune_magnitude"]
    ops = chain[1]["steps"]
    assert [s["op"] for s in ops] == ["prune_channels", "distill"]
    assert ops[1]["T"] == 2.0 and ops[1]["alpha"] == 0.7 and ops[1]["teacher"]["sha256"] == chain[2]["sha256"]
    text = format_lineage(chain)
    assert "prune_channels(amount=0.5)" in text and "steps: (none recorded)" in text
    teacher_path.unlink()  # a missing ancestor is reported, not an exception
    assert lineage_chain(sparse_path)[2]["problem"] == "file not found"
    assert cli.main(["lineage", str(sparse_path)]) == 1  # a broken link is a failure


def test_lineage_finds_the_shipped_teacher_after_a_move(tmp_path):
    """Paths in a lineage are absolute; the shipped teacher is found by its pinned hash wherever
    the child was made (another clone, another machine)."""
    teacher, manifest = load_pretrained()
    student = prune_channels(teacher, 0.5)
    child = save_checkpoint(student, tmp_path / "child.safetensors",
                            lineage=Lineage.of(manifest).then("prune_channels", amount=0.5))
    manifest_file = child.with_suffix(".json")
    manifest = json.loads(manifest_file.read_text())
    manifest["lineage"]["parents"][0]["path"] = "/elsewhere/data/pretrained/teacher_fashion_mnist.safetensors"
    manifest_file.write_text(json.dumps(manifest))  # unsigned here, so the edit is allowed
    parent = lineage_chain(child)[1]
    assert parent["problem"] is None and parent["sha256"] == PRETRAINED["teacher_fashion_mnist"]
    assert parent["path"] == str(PRETRAINED_DIR / "teacher_fashion_mnist.safetensors")


def test_lineage_is_a_value(tmp_path):
    """Nothing is attached to the model: the lineage is what the caller passes, and ``then`` leaves
    the value it was called on as it was."""
    path = save_checkpoint(small_cnn(), tmp_path / "m.safetensors")
    model, manifest = load_checkpoint(path)
    start = Lineage.of(manifest)
    longer = start.then("prune_magnitude", amount=0.5, scope=None)
    assert start.steps == () and longer.steps == ({"op": "prune_magnitude", "amount": 0.5},)
    assert start.parents == ({"sha256": manifest["sha256"], "path": str(path.resolve())},)
    assert not hasattr(prune_magnitude(model, 0.5), "lineage")
    assert json.loads(save_checkpoint(model, tmp_path / "plain.safetensors").with_suffix(".json").read_text())[
        "lineage"] == {"parents": [], "steps": []}  # nothing passed, nothing recorded
    with pytest.raises(ValueError, match="lineage step 'prune_channels': a parameter is not JSON-serialisable"):
        start.then("prune_channels", criterion=object())
    with pytest.raises(CheckpointError, match="lineage must be a Lineage"):
        save_checkpoint(model, tmp_path / "x.safetensors", lineage={"parents": []})


def test_lineage_walker_ends_on_a_loop(tmp_path):
    """Two files that name each other as parent: each is listed once more, then the walk stops."""
    a = save_checkpoint(small_cnn(1), tmp_path / "a.safetensors")
    b = save_checkpoint(small_cnn(2), tmp_path / "b.safetensors")
    rewrite_manifest(a, lineage={"parents": [{"sha256": "x", "path": str(b)}], "steps": []})
    rewrite_manifest(b, lineage={"parents": [{"sha256": "y", "path": str(a)}], "steps": []})
    chain = lineage_chain(a)
    assert [(e["depth"], e["path"]) for e in chain] == [(0, str(a)), (1, str(b)), (2, str(a))]
    assert all("not the recorded one" in e["problem"] for e in chain[1:])


def test_lineage_with_an_unusable_key_is_one_clear_error(tmp_path, monkeypatch, capsys):
    path = save_checkpoint(small_cnn(), tmp_path / "m.safetensors")
    monkeypatch.setenv("DISTILL_SIGNING_KEY", "short")
    assert cli.main(["lineage", str(path)]) == 1
    assert capsys.readouterr().err.startswith("FAIL: the signing key is 5 bytes; use at least 16 random bytes")


def test_resumed_training_equals_uninterrupted(tmp_path):
    data = tiny_split(96)
    args = dict(epochs=3, lr=0.01, batch_size=32, seed=0, progress=False)
    straight = small_cnn()
    torch.manual_seed(5)  # dropout draws from the global generator
    fit(straight, data, **args)

    class Stop(Exception):
        pass

    def stop_in_epoch_3(step):
        if step == 7:  # 3 batches per epoch: the first batch of epoch 3
            raise Stop

    state = tmp_path / "train_state.pt"
    interrupted = small_cnn()
    torch.manual_seed(5)
    with pytest.raises(Stop):
        fit(interrupted, data, state_file=state, callback=stop_in_epoch_3, **args)
    assert torch.load(state, weights_only=True)["history"][-1]["epoch"] == 2
    torch.manual_seed(123)  # the state file restores the generator, whatever it is now
    resumed = small_cnn(seed=9)  # different starting weights: they are overwritten
    history = fit(resumed, data, state_file=state, resume=True, **args)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_resume_refuses_a_different_run(tmp_path):
    state = tmp_path / "s.pt"
    fit(small_cnn(), tiny_split(), epochs=1, batch_size=32, progress=False, state_file=state)
    with pytest.raises(ValueError, match="different training run.*epochs: 1 there, 2 now"):
        fit(small_cnn(), tiny_split(), epochs=2, batch_size=32, progress=False, state_file=state, resume=True)
    state.write_bytes(b"not a state")
    with pytest.raises(ValueError, match="not a readable training state.*Delete it"):
        fit(small_cnn(), tiny_split(), epochs=1, batch_size=32, progress=False, state_file=state, resume=True)


def test_onnx_files_are_verified_like_checkpoints(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_SIGNING_KEY", KEY)
    path = tiny_onnx(tmp_path / "m.onnx")
    assert cli.main(["verify", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"OK: {path}: signature matches"
    assert cli.main(["sign", str(path)]) == 1
    assert "is an ONNX file, not a checkpoint: it is signed when written" in capsys.readouterr().err
    monkeypatch.setenv("DISTILL_SIGNING_KEY", "another-key-0123456789")
    assert cli.main(["verify", str(path)]) == 1
    assert "the signature of m.onnx does not match" in capsys.readouterr().err


def test_lineage_says_what_each_training_step_read():
    made = (Lineage().then("prune_channels", amount=0.7).then("fit", images=6000, epochs=2)
            .then("distill", T=4.0, alpha=1.0, images=10000, epochs=1).then("distill", T=4.0, alpha=0.5, images="all",
                                                                              epochs=3))
    assert made.training() == "6,000 x 2 (labels) + 10,000 x 1 (teacher only) + all x 3 (labels)"
    assert Lineage().then("prune_channels", amount=0.5).training() == ""  # no step trained
