"""The bad-input matrix: every failure a user can meet gives a specific message naming the
problem and the fix, and loses nothing already written. One test per case."""
import errno
import json
import os
import pickle

import pytest
import torch

from conftest import make_idx_dataset, write_notebook
from distill_utils import _io, data
from distill_utils.checkpoints import CheckpointError, load_checkpoint, load_pretrained, save_checkpoint
from distill_utils.data import DataError, Split
from distill_utils.experiments import read_record, record_path, start_run
from distill_utils.models import build_model
from distill_utils.params import ParameterError, validate
from distill_utils.sweeps import sweep
from distill_utils.train import fit

KEY = "matrix-key-0123456789abcdef"


def model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return build_model("student_cnn", width=0.25, **kwargs).eval()


def saved(tmp_path, name="m", **kwargs):
    return save_checkpoint(model(**kwargs), tmp_path / f"{name}.safetensors")


def split(n=64):
    g = torch.Generator().manual_seed(0)
    return Split(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


def bad_params(**values):
    kinds = {"epochs": int, "alpha": float, "criterion": str}
    ns = {"__annotations__": kinds, "epochs": 3, "alpha": 0.9, "criterion": "l1", **values}
    with pytest.raises(ParameterError) as err:
        validate(ns)
    return str(err.value)


# 1-3: notebook parameters
def test_01_parameter_of_wrong_type():
    msg = bad_params(epochs="3")
    assert "epochs = '3' must be int, got str" in msg and "-p/-f values given to papermill" in msg


def test_02_parameter_out_of_range():
    assert "alpha = 2 must be >= 0 and <= 1 (the weight of the distillation term)" in bad_params(alpha=2)


def test_03_unknown_parameter_name():
    msg = bad_params(alhpa=0.5, criterion="l3")
    assert "alhpa = 0.5 is not a parameter of this notebook; its parameters are: epochs, alpha, criterion" in msg
    assert "criterion = 'l3' must be one of bn, l1, l2, random" in msg


# 4-6: the dataset
def test_04_missing_dataset(tmp_path, no_debian):
    with pytest.raises(DataError) as err:
        data.load_dataset("fashion_mnist", root=tmp_path)
    msg = str(err.value)
    assert "not found" in msg and "FashionMNIST" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "download=True" in msg


def test_05_truncated_dataset_file(tmp_path, no_debian):
    raw = tmp_path / "FashionMNIST" / "raw"
    make_idx_dataset(raw)
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*truncated"):
        data.load_dataset("fashion_mnist", root=tmp_path)


def test_06_corrupted_gzip_dataset_file(tmp_path, no_debian):
    raw = tmp_path / "FashionMNIST" / "raw"
    make_idx_dataset(raw, gz=True)
    path = raw / "t10k-labels-idx1-ubyte.gz"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob[:len(blob) - 4]))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        data.load_dataset("fashion_mnist", root=tmp_path)


# 7-14: checkpoints
def test_07_truncated_checkpoint_is_refused_and_kept(tmp_path):
    path = saved(tmp_path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="does not match its manifest.*truncated.*re-save"):
        load_checkpoint(path)
    assert path.stat().st_size == 1000  # evidence is not deleted


def test_08_bit_flipped_checkpoint(tmp_path):
    path = saved(tmp_path)
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="SHA-256 of .*m.safetensors .* does not match"):
        load_checkpoint(path)


def rewrite_manifest(path, **changes):
    manifest_path = path.with_suffix(".json")
    manifest = json.loads(manifest_path.read_text())
    manifest["architecture"].update(changes)
    manifest_path.write_text(json.dumps(manifest))


def test_09_wrong_architecture(tmp_path):
    path = saved(tmp_path)
    rewrite_manifest(path, name="teacher_cnn", kwargs={})
    with pytest.raises(CheckpointError, match="do not fit teacher_cnn.*shape mismatches"):
        load_checkpoint(path)


def test_10_wrong_number_of_classes(tmp_path):
    path = saved(tmp_path)
    rewrite_manifest(path, kwargs={"width": 0.25, "num_classes": 5})
    with pytest.raises(CheckpointError, match=r"checkpoint \(10, .*\) vs model \(5, .*re-save"):
        load_checkpoint(path)


def test_11_pickle_renamed_to_safetensors_is_never_unpickled(tmp_path):
    path = saved(tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    blob = pickle.dumps(Payload())
    path.write_bytes(blob)
    manifest = json.loads(path.with_suffix(".json").read_text())
    import hashlib
    manifest.update(sha256=hashlib.sha256(blob).hexdigest(), bytes=len(blob))  # even with a matching hash
    path.with_suffix(".json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="not a valid safetensors file.*never unpickled"):
        load_checkpoint(path)
    assert not marker.exists()


def test_12_manifest_missing(tmp_path):
    path = saved(tmp_path)
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="manifest .*m.json for m.safetensors not found.*Keep the .json"):
        load_checkpoint(path)
    assert path.exists()


def test_13_wrong_signature(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_SIGNING_KEY", KEY)
    path = saved(tmp_path)
    monkeypatch.setenv("DISTILL_SIGNING_KEY", KEY[::-1])
    with pytest.raises(CheckpointError, match="signature of m.safetensors does not match.*allow_unverified=True"):
        load_checkpoint(path)


def test_14_unsigned_checkpoint_with_a_key_configured(tmp_path, monkeypatch):
    path = saved(tmp_path)
    monkeypatch.setenv("DISTILL_SIGNING_KEY", KEY)
    with pytest.raises(CheckpointError, match="m.safetensors is not signed.*distill_utils sign PATH"):
        load_checkpoint(path)
    assert load_checkpoint(path, allow_unverified=True)[1]["verified"] == "unverified"


def test_15_missing_pretrained_teacher(tmp_path):
    with pytest.raises(CheckpointError, match="make pretrained.*git checkout"):
        load_pretrained(root=tmp_path)


# 16-18: training
def test_16_nan_loss_stops_with_epoch_batch_and_keeps_the_last_good_state(tmp_path):
    state = tmp_path / "state.pt"
    net = model()

    def poison(step):  # in epoch 2 (2 batches per epoch), the weights become NaN
        if step == 3:
            with torch.no_grad():
                net.classifier[-1].weight.fill_(float("nan"))

    with pytest.raises(FloatingPointError) as err:
        fit(net, split(), epochs=3, batch_size=32, progress=False, state_file=state, callback=poison)
    msg = str(err.value)
    assert "at epoch 2, batch 2" in msg and "lower learning rate (lr=" in msg and "temperature T" in msg
    assert f"end of epoch 1) is in {state}" in msg
    kept = torch.load(state, weights_only=True)
    assert kept["history"][-1]["epoch"] == 1 and all(torch.isfinite(t).all() for t in kept["params"])
    state.unlink()
    net = model()  # broken by the last update of epoch 1: caught before a bad state is written
    with pytest.raises(FloatingPointError, match="weights became NaN/inf during epoch 1"):
        fit(net, split(), epochs=3, batch_size=32, progress=False, state_file=state,
            callback=lambda step: step == 2 and net.classifier[-1].weight.data.fill_(float("nan")))
    assert not state.exists()


def test_17_interrupted_training_resumes(tmp_path):
    state = tmp_path / "state.pt"

    def interrupt(step):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(model(), split(), epochs=2, batch_size=32, progress=False, state_file=state, callback=interrupt)
    history = fit(model(), split(), epochs=2, batch_size=32, progress=False, state_file=state, resume=True)
    assert [r["epoch"] for r in history] == [1, 2]


def test_18_disk_full_when_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = saved(tmp_path)
    before = path.read_bytes(), path.with_suffix(".json").read_text()

    def full(fd, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_io.os, "fsync", full)
    with pytest.raises(CheckpointError, match="No space left on device. Free some space.*left as it was"):
        save_checkpoint(model(seed=1), path)
    assert (path.read_bytes(), path.with_suffix(".json").read_text()) == before
    assert not list(tmp_path.glob(".*.tmp"))
    load_checkpoint(path)


def test_19_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(CheckpointError, match="cannot save .*choose a writable folder"):
        save_checkpoint(model(), blocker / "m.safetensors")
    ns = {"__annotations__": {"out_dir": str}, "out_dir": str(blocker / "run")}
    with pytest.raises(OSError, match="cannot write the run record .*Set the out_dir parameter to a writable folder"):
        start_run("00_setup", ns)
    assert blocker.read_text() == "a file where a folder should be"


# 20: a sweep worker killed mid-run
def test_20_sweep_worker_killed_mid_run(tmp_path):
    path = write_notebook(
        tmp_path / "killer.ipynb",
        "x: int = 1  # a number\nout_dir: str = '.'  # where the record goes",
        "import os, signal\nfrom pathlib import Path\n"
        "if x == 2 and not (Path(out_dir).parent / 'allow').exists():\n"
        "    os.kill(os.getppid(), signal.SIGKILL)  # the papermill process running this notebook\n"
        "    import time; time.sleep(30)",
        "run.finish({'y': x})")
    out = tmp_path / "sweep"
    df = sweep(path, {"x": [1, 2, 3]}, out=out, workers=2, progress=False).set_index("run")
    assert df.loc["x=2", "status"] == "failed" and "killed by signal 9" in df.loc["x=2", "error"]
    assert (df.loc[["x=1", "x=3"], "status"] == "ok").all()
    finished = (out / "x=1" / "killer.record.json").read_text()
    (out / "allow").touch()
    df = sweep(path, {"x": [1, 2, 3]}, out=out, workers=2, progress=False)
    assert (df.status == "ok").all()
    assert (out / "x=1" / "killer.record.json").read_text() == finished  # finished runs are not redone
    assert read_record(record_path(out / "x=2", "killer"))["metrics"] == {"y": 2}
