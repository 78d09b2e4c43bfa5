"""The bad-input matrix: every failure a user can meet gives a specific message naming the
problem and the fix, and loses nothing already written. One test per case."""
import errno
import gzip
import hashlib
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from checkpoint_helpers import as_format_1, rewrite_manifest, tiny_onnx

from conftest import make_idx_dataset, write_notebook
from distill_utils import data
from distill_utils.common import files as _io
from distill_utils.data import DataError, Split
from distill_utils.deploy import DeployError
from distill_utils.models import build_model
from distill_utils.provenance import pretrained
from distill_utils.provenance.checkpoints import CheckpointError, load_checkpoint, load_pretrained, save_checkpoint
from distill_utils.runs.experiments import read_record, record_path, start_run
from distill_utils.runs.params import ParameterError, validate
from distill_utils.runs.sweeps import sweep
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
    assert ("alhpa = 0.5 is not a parameter of this notebook (did you mean 'alpha'?); "
            "its parameters are: epochs, alpha, criterion") in msg
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


def rewrite_architecture(path, **changes):
    """Edit the architecture in the manifest inside the file (its tensors' hash still matches)."""
    manifest = json.loads(path.with_suffix(".json").read_text())
    rewrite_manifest(path, architecture={**manifest["architecture"], **changes})


def test_09_wrong_architecture(tmp_path):
    path = saved(tmp_path)
    rewrite_architecture(path, name="teacher_cnn", kwargs={})
    with pytest.raises(CheckpointError, match="do not fit teacher_cnn.*shape mismatches"):
        load_checkpoint(path)


def test_10_wrong_number_of_classes(tmp_path):
    path = saved(tmp_path)
    rewrite_architecture(path, kwargs={"width": 0.25, "num_classes": 5})
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
    assert load_checkpoint(path)[1]["format_version"] == 3  # the file holds its manifest; the .json is a copy
    as_format_1(path)  # the first format needs its .json
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
    with pytest.raises(CheckpointError, match="disk full: nothing was changed. Free some space.*nothing was replaced"):
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
def test_a_sweep_run_killed_mid_run_fails_alone_and_runs_again(tmp_path):
    path = write_notebook(
        tmp_path / "killer.ipynb",
        "x: int = 1  # a number\nout_dir: str = '.'  # where the record goes",
        "import os, signal\nfrom pathlib import Path\n"
        "if x == 2 and not (Path(out_dir).parent / 'allow').exists():\n"
        "    os.kill(os.getppid(), signal.SIGKILL)  # the papermill process running this notebook\n"
        "    import time; time.sleep(30)",
        "run.finish({'y': x})")
    out = tmp_path / "sweep"
    df = sweep(path, {"x": [1, 2, 3]}, out=out, workers=2, progress=False)
    df = df.assign(name=[r.split("--")[0] for r in df.run]).set_index("name")
    assert df.loc["x=2", "status"] == "failed" and "killed by signal 9" in df.loc["x=2", "error"]
    assert (df.loc[["x=1", "x=3"], "status"] == "ok").all()
    finished = (out / df.loc["x=1", "run"] / "killer.record.json").read_text()
    (out / "allow").touch()
    again = sweep(path, {"x": [1, 2, 3]}, out=out, workers=2, progress=False)
    assert (again.status == "ok").all() and sorted(again.run) == sorted(df.run)
    assert (out / df.loc["x=1", "run"] / "killer.record.json").read_text() == finished  # finished runs are not redone
    assert read_record(record_path(out / df.loc["x=2", "run"], "killer"))["metrics"] == {"y": 2}


# ---------------------------------------------------------------------------------------------
# Round 2 (issue 16): each class below is a family of cases. Memory bombs run in a child process
# under an address-space cap (a regression fails there instead of exhausting the machine); cases
# that could hang run with a timeout.

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "data" / "pretrained" / "teacher_fashion_mnist"


def capped(code: str, cap_mib: int = 1024, timeout: int = 120) -> str:
    """Run ``code`` in a fresh Python whose address space may grow by only ``cap_mib`` after
    importing torch and distill_utils; return its stdout (it must exit 0, else the test fails)."""
    prelude = textwrap.dedent(f"""
        import re, resource
        import torch
        from distill_utils.provenance import checkpoints
        from distill_utils import data
        vm = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + {cap_mib} * 2**20, resource.RLIM_INFINITY))
        """)
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def state_of(path):
    return {k: v.clone() for k, v in load_checkpoint(path)[0].state_dict().items()}


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# Class 1: a save never destroys the previous good checkpoint
@pytest.mark.parametrize("killed_at", [1, 2], ids=["during-the-weights-rename", "between-weights-and-manifest-copy"])
def test_killed_save_leaves_a_checkpoint_that_loads(tmp_path, killed_at):
    path = saved(tmp_path)
    old = state_of(path)
    code = f"""
        import os, torch
        from distill_utils.common import files as _io
        from distill_utils.provenance.checkpoints import save_checkpoint
        from distill_utils.models import build_model
        calls, real = [], os.replace
        def replace(a, b):
            calls.append(b)
            if len(calls) == {killed_at}:
                os._exit(9)  # the process dies here, as with kill -9
            real(a, b)
        _io.os.replace = replace
        torch.manual_seed(1)
        save_checkpoint(build_model("student_cnn", width=0.25), {str(path)!r})
        """
    assert subprocess.run([sys.executable, "-c", textwrap.dedent(code)], timeout=120).returncode == 9
    new = state_of(path)  # loads either way: the old checkpoint, or the whole new one
    assert same_state(new, old) == (killed_at == 1)
    assert same_state(new, {k: v for k, v in model(seed=1).state_dict().items()}) == (killed_at == 2)


def test_concurrent_writers_leave_one_whole_checkpoint(tmp_path):
    path = tmp_path / "m.safetensors"
    code = """
        import sys, torch
        from distill_utils.provenance.checkpoints import save_checkpoint
        from distill_utils.models import build_model
        torch.manual_seed(int(sys.argv[1]))
        net = build_model("student_cnn", width=0.25)
        for _ in range(15):
            save_checkpoint(net, sys.argv[2], metadata={"writer": int(sys.argv[1])})
        """
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(seed), str(path)]) for seed in (1, 2)]
    assert [p.wait(timeout=180) for p in procs] == [0, 0]
    net, manifest = load_checkpoint(path)
    writer = manifest["metadata"]["writer"]
    assert same_state(net.state_dict(), model(seed=writer).state_dict())
    copy = json.loads(path.with_suffix(".json").read_text())  # the readable copy is of the same save
    assert copy["sha256"] == manifest["sha256"] and copy["metadata"]["writer"] == writer
    assert not list(tmp_path.glob(".*.tmp"))


def test_full_disk_on_the_manifest_copy_tells_the_truth(tmp_path, monkeypatch):
    path = saved(tmp_path)
    calls, real = [], os.fsync

    def second_fails(fd):  # the weights are written, then the disk is full
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(_io.os, "fsync", second_fails)
    with pytest.warns(UserWarning, match="was saved and loads on its own.*could not be written: the disk is full"):
        save_checkpoint(model(seed=1), path)
    monkeypatch.undo()
    assert same_state(state_of(path), model(seed=1).state_dict())
    assert not path.with_suffix(".json").exists() and not list(tmp_path.glob(".*.tmp"))  # no stale copy


def test_the_shipped_first_format_teacher_still_loads_and_is_untouched():
    before = {s: hashlib.sha256(SHIPPED.with_suffix(s).read_bytes()).hexdigest() for s in (".safetensors", ".json")}
    net, manifest = load_pretrained()
    assert manifest["format_version"] == 1 and manifest["sha256"] == pretrained.PRETRAINED["teacher_fashion_mnist"]
    assert before == {".safetensors": pretrained.PRETRAINED["teacher_fashion_mnist"],
                      ".json": pretrained.PRETRAINED_MANIFESTS["teacher_fashion_mnist"]}


# Class 2: untrusted metadata never sizes an allocation or a read
@pytest.mark.parametrize("edit, message", [
    ({"sparse": {"classifier.4.weight": [100000, 100000]}}, "does not fit its mask"),
    ({"sparse": {"classifier.4.weight": "x" * 10}}, "cannot rebuild"),
    ({"architecture": {"name": "teacher_cnn", "kwargs": {"width": 3000.0}}}, "do not fit teacher_cnn"),
    ({"architecture": {"name": "student_mlp", "kwargs": {"hidden": [2**40]}}}, "do not fit student_mlp"),
], ids=["sparse-shape-10G", "sparse-shape-malformed", "width-3000", "hidden-2**40"])
def test_manifest_cannot_size_an_allocation(tmp_path, edit, message):
    net = model()
    with torch.no_grad():
        net.classifier[4].weight[:, 1:] = 0  # mostly zeros: stored as values + bitmask
    path = save_checkpoint(net, tmp_path / "m.safetensors", sparse=True)
    assert "classifier.4.weight" in load_checkpoint(path)[1]["sparse"]
    rewrite_manifest(path, **edit)
    before = path.read_bytes()
    out = capped(f"""
        try:
            checkpoints.load_checkpoint({str(path)!r})
        except checkpoints.CheckpointError as err:
            print(err)
        """)
    assert message in out and path.read_bytes() == before


def test_weights_size_is_checked_before_reading(tmp_path):
    path = saved(tmp_path)
    as_format_1(path)
    with open(path, "r+b") as f:  # a 64 GiB sparse file: reading it whole would need 64 GiB
        f.truncate(64 << 30)
    out = capped(f"""
        try:
            checkpoints.verify_checkpoint({str(path)!r})
        except checkpoints.CheckpointError as err:
            print(err)
        """)
    assert "is 68,719,476,736 bytes but its manifest says" in out


def test_gzip_bomb_is_read_only_as_far_as_its_header_says(tmp_path, no_debian):
    raw = tmp_path / "FashionMNIST" / "raw"
    make_idx_dataset(raw, gz=True)
    bomb = raw / "train-labels-idx1-ubyte.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as f:  # header: 40 labels; body: 1.5 GiB of zeros
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 40))
        zeros = bytes(16 << 20)
        for _ in range(96):
            f.write(zeros)
    out = capped(f"""
        import dataclasses
        data.DATASETS["fashion_mnist"] = dataclasses.replace(data.DATASETS["fashion_mnist"], debian="/nonexistent")
        try:
            data.load_dataset("fashion_mnist", root={str(tmp_path)!r})
        except data.DataError as err:
            print(err)
        """, timeout=300)
    assert "train-labels-idx1-ubyte.gz is corrupt: it holds more than the 40 bytes its header says" in out
    huge = raw / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(huge, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 2**32 - 1))
    with pytest.raises(DataError, match="header says .* more than any dataset"):
        data.read_idx(huge, 1)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_only_regular_files_are_read(tmp_path, kind):
    raw = tmp_path / "FashionMNIST" / "raw"
    make_idx_dataset(raw)
    ckpt = saved(tmp_path)
    as_format_1(ckpt)
    targets = [raw / "train-images-idx3-ubyte", ckpt, ckpt.with_suffix(".json")]
    for target in targets:
        target.unlink()
        os.mkfifo(target) if kind == "fifo" else target.symlink_to("/dev/zero")
    out = capped(f"""
        import dataclasses
        data.DATASETS["fashion_mnist"] = dataclasses.replace(data.DATASETS["fashion_mnist"], debian="/nonexistent")
        for call in (lambda: data.load_dataset("fashion_mnist", root={str(tmp_path)!r}),
                     lambda: checkpoints.load_checkpoint({str(ckpt)!r})):
            try:
                call()
            except (data.DataError, checkpoints.CheckpointError) as err:
                print(err)
        """, timeout=60)  # a FIFO would block forever and /dev/zero never ends: a timeout fails the test
    what = "a FIFO (named pipe)" if kind == "fifo" else "a device"
    assert out.count(f"is {what}, not a regular file") == 2, out


# Class 3: the trust chain covers what builds the model
def shipped_copy(tmp_path):
    for suffix in (".safetensors", ".json"):
        shutil.copy(SHIPPED.with_suffix(suffix), tmp_path / f"teacher_fashion_mnist{suffix}")
    return tmp_path / "teacher_fashion_mnist.safetensors"


def test_edited_manifest_beside_pinned_weights_is_refused(tmp_path, monkeypatch):
    path = shipped_copy(tmp_path)
    manifest = json.loads(path.with_suffix(".json").read_text())
    manifest["architecture"]["kwargs"]["num_classes"] = 10
    manifest["metadata"]["metrics"]["test_acc"] = 0.99  # a flattering edit; the weights stay pinned
    path.with_suffix(".json").write_text(json.dumps(manifest))
    monkeypatch.setenv("DISTILL_SIGNING_KEY", KEY)
    with pytest.raises(CheckpointError, match="teacher_fashion_mnist.safetensors is not signed"):
        load_checkpoint(path)
    monkeypatch.delenv("DISTILL_SIGNING_KEY")
    with pytest.raises(CheckpointError, match="is not the shipped manifest .*edited.*git checkout"):
        load_pretrained(root=tmp_path)
    shipped_copy(tmp_path)
    assert load_pretrained(root=tmp_path)[1]["verified"] == "no key"  # the untouched pair loads


def test_signature_binds_the_file_name_and_its_contents(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_SIGNING_KEY", KEY)
    a, b = saved(tmp_path, "a"), saved(tmp_path, "b", seed=1)
    shutil.copy(a, tmp_path / "renamed.safetensors")
    with pytest.raises(CheckpointError, match="renamed.safetensors carries a valid signature for a file named 'a.saf"):
        load_checkpoint(tmp_path / "renamed.safetensors")
    b_bytes = b.read_bytes()
    b.write_bytes(a.read_bytes())  # b's name, a's (signed) contents
    with pytest.raises(CheckpointError, match="b.safetensors carries a valid signature for a file named 'a.safe"):
        load_checkpoint(b)
    b.write_bytes(b_bytes)
    assert load_checkpoint(b)[1]["verified"] == "signed"


@pytest.mark.parametrize("setting", ["env-empty", "env-spaces", "file-empty", "file-name-empty"])
def test_empty_or_whitespace_key_is_an_error(tmp_path, monkeypatch, setting):
    path = saved(tmp_path)
    key_file = tmp_path / "key"
    key_file.write_text(" \n")
    variable, value = {"env-empty": ("DISTILL_SIGNING_KEY", ""), "env-spaces": ("DISTILL_SIGNING_KEY", "   "),
                       "file-empty": ("DISTILL_SIGNING_KEY_FILE", str(key_file)),
                       "file-name-empty": ("DISTILL_SIGNING_KEY_FILE", "")}[setting]
    monkeypatch.setenv(variable, value)
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(path)
    from distill_utils import __main__ as cli
    assert cli.main(["sign", str(path)]) == 1 and cli.main(["verify", str(path)]) == 1


def test_lineage_fails_on_a_broken_link_and_escapes_control_characters(tmp_path, capsys):
    from distill_utils import __main__ as cli
    from distill_utils.provenance.lineage import Lineage
    parent = saved(tmp_path, "parent")
    child_model, manifest = load_checkpoint(parent)
    lineage = Lineage.of(manifest).then("fit\x1b[2J", note="evil\rtext\x07")
    child = save_checkpoint(child_model, tmp_path / "child.safetensors", lineage=lineage)
    assert cli.main(["lineage", str(child)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and "\x07" not in out and "fit\\x1b[2J(note=evil\\rtext\\x07)" in out
    parent.unlink()
    assert cli.main(["lineage", str(child)]) == 1
    captured = capsys.readouterr()
    assert "! file not found" in captured.out and captured.err.strip() == \
        "FAIL: 1 link(s) of the lineage are broken (marked !)"


# Class 4: inputs are strict
def tiny(tmp_path):
    return write_notebook(
        tmp_path / "tiny.ipynb",
        "epochs: int = 1  # epochs\nlr: float = 0.1  # learning rate\nT: float = 4.0  # temperature\n"
        "seed: int = 0  # a seed\nbatch_size: int = 8  # batch size\nout_dir: str = '.'  # where the record goes",
        "run.finish({'lr': lr, 'lr_type': type(lr).__name__})")


@pytest.mark.parametrize("text, message", [
    ("epochz: 2\n", "no notebook has a parameter named 'epochz' (did you mean 'epochs'?)"),
    ("04_feature_distilation:\n  epochs: 2\n", "'04_feature_distilation' is not a notebook section "
                                              "(did you mean '04_feature_distillation'?)"),
    ("04_feature_distillation:\n  epohcs: 2\n", "section '04_feature_distillation' sets 'epohcs', which "
                                               "04_feature_distillation does not declare (did you mean 'epochs'?)"),
    ("- epochs\n", "must map parameter names to values"),
    ("epochs: [1,\n", "is not valid YAML"),
], ids=["top-level-typo", "section-typo", "key-typo-in-section", "a-list", "broken-yaml"])
def test_typos_in_parameter_files_are_refused(tmp_path, capsys, text, message):
    from distill_utils import __main__ as cli
    params = tmp_path / "p.yaml"
    params.write_text(text)
    out = tmp_path / "out"
    assert cli.main(["run", str(tiny(tmp_path)), "-f", str(params), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()


def test_numbers_are_read_as_numbers_and_checked_up_front(tmp_path, capsys):
    from distill_utils import __main__ as cli
    from distill_utils.runs.params import parse_value
    nb = tiny(tmp_path)
    assert parse_value("1e-3") == 0.001 and parse_value("3") == 3 and parse_value("abc") == "abc"
    out = tmp_path / "ok"
    assert cli.main(["run", str(nb), "-p", "lr", "1e-3", "--out", str(out)]) == 0
    assert read_record(record_path(out, "tiny"))["metrics"] == {"lr": 0.001, "lr_type": "float"}
    capsys.readouterr()
    for name, value, message in [("lr", ".inf", "lr = inf must be a finite number"),
                                 ("T", ".nan", "T = nan must be a finite number"),
                                 ("seed", str(2**63), f"seed = {2**63} must be below 2**63"),
                                 ("batch_size", "32.5", "batch_size = 32.5 must be int, got float")]:
        bad = tmp_path / f"bad-{name}"
        assert cli.main(["run", str(nb), "-p", name, value, "--out", str(bad)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.startswith("FAIL: bad notebook parameter") and not bad.exists(), err


def test_empty_splits_and_non_integer_batch_sizes(tmp_path, no_debian):
    with pytest.raises(ValueError, match="a split needs at least one example"):
        Split(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="subset size must be between 1 and 64, got 0"):
        split().subset(0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 32.5"):
        next(split().batches(32.5))
    raw = tmp_path / "FashionMNIST" / "raw"
    make_idx_dataset(raw, n_test=0)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte holds no examples; the test split would be empty"):
        data.load_dataset("fashion_mnist", root=tmp_path)


# Class 5: every CLI error is one clear line and a non-zero exit
def cli_cases(tmp_path):
    nb = tiny(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    broken = tmp_path / "records"
    broken.mkdir()
    (broken / "x.record.json").write_text('{"status": "ok", "parameters": ')
    lineage_bad = saved(tmp_path, "lin")
    rewrite_manifest(lineage_bad, lineage="not a record")
    sig_bad = saved(tmp_path, "sig")
    rewrite_manifest(sig_bad, signature="not a signature")
    grid = tmp_path / "grid.yaml"
    grid.write_text("[1, 2]\n")
    return {
        "run-unknown-notebook": (["run", "nope"], "no notebook matches 'nope'"),
        "run-0": (["run", "0"], "no notebook matches '0'"),
        "run-empty-name": (["run", ""], "an empty notebook name was given"),
        "run-unwritable-out": (["run", str(nb), "--out", str(blocker / "out")], "cannot write to the output folder"),
        "run-bad-yaml-value": (["run", str(nb), "-p", "epochs", "[1,"], "-p epochs '[1,' is not a valid value"),
        "data-unknown-name": (["data", "--name", "imagenet"], "unknown dataset 'imagenet'"),
        "sweep-bad-value": (["sweep", str(nb), "-p", "lr", "{a"], "-p lr '{a' is not a valid value"),
        "sweep-grid-not-a-mapping": (["sweep", str(nb), "--grid", str(grid)], "must map parameter names to values"),
        "sweep-unknown-notebook": (["sweep", "99"], "no notebook matches '99'"),
        "report-malformed-record": (["report", str(broken)], "could not be read"),
        "lineage-malformed-manifest": (["lineage", str(lineage_bad)], "link(s) of the lineage are broken"),
        "lineage-missing-file": (["lineage", str(tmp_path / "none.safetensors")], "link(s) of the lineage are broken"),
        "verify-malformed-signature": (["verify", str(sig_bad)], "signature of sig.safetensors does not match"),
        "sign-short-key": (["sign", str(sig_bad)], "the signing key is 5 bytes"),
    }, [blocker, broken / "x.record.json", lineage_bad, sig_bad]


CLI_CASES = ["run-unknown-notebook", "run-0", "run-empty-name", "run-unwritable-out", "run-bad-yaml-value",
             "data-unknown-name", "sweep-bad-value", "sweep-grid-not-a-mapping", "sweep-unknown-notebook",
             "report-malformed-record", "lineage-malformed-manifest", "lineage-missing-file",
             "verify-malformed-signature", "sign-short-key"]


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_errors_are_one_line_and_non_zero(tmp_path, capsys, monkeypatch, case):
    from distill_utils import __main__ as cli
    cases, kept = cli_cases(tmp_path)
    argv, message = cases[case]
    monkeypatch.setenv("DISTILL_SIGNING_KEY", "short") if case == "sign-short-key" else None
    monkeypatch.setenv("DISTILL_SIGNING_KEY", KEY) if case == "verify-malformed-signature" else None
    before = {p: p.read_bytes() for p in kept}
    code = cli.main(argv)
    err = capsys.readouterr().err
    fails = [line for line in err.splitlines() if line.startswith("FAIL: ")]
    assert code != 0 and len(fails) == 1 and message in fails[0] and "Traceback" not in err, err
    assert {p: p.read_bytes() for p in kept} == before  # nothing already written is lost


# Class 6: sweeps keep every result and never return stale ones
def test_sweep_runs_are_keyed_by_all_their_parameters(tmp_path):
    nb = write_notebook(
        tmp_path / "names.ipynb",
        "name: str = 'a'  # any text\nk: int = 1  # a fixed parameter\nseed: int = 0  # a seed\n"
        "out_dir: str = '.'  # where the record goes",
        "from pathlib import Path\n"
        "with open(Path(out_dir).parent / 'executions.log', 'a') as f:\n"
        "    f.write(f'{name} {k} {seed}\\n')",
        "run.finish({'name': name, 'k': k})")
    out = tmp_path / "sweep"
    df = sweep(nb, {"name": ["a/b", "a_b"]}, {"k": 1}, seeds=[0, 0], out=out, workers=2, progress=False)
    assert sorted(df["metric.name"]) == ["a/b", "a_b"] and len(set(df.run)) == 2  # same readable name, two runs
    assert sorted((out / "executions.log").read_text().splitlines()) == ["a/b 1 0", "a_b 1 0"]  # seed 0 once
    first = {run: (out / run / "names.record.json").read_text() for run in df.run}
    df2 = sweep(nb, {"name": ["a/b", "a_b"]}, {"k": 2}, seeds=[0], out=out, workers=2, progress=False)
    assert sorted(df2["metric.k"]) == [2, 2] and not set(df2.run) & set(df.run)  # no stale k=1 records
    assert {run: (out / run / "names.record.json").read_text() for run in df.run} == first  # the old runs are kept
    df3 = sweep(nb, {"name": ["a/b", "a_b"]}, {"k": 1}, seeds=[0], out=out, workers=2, progress=False)
    assert sorted(df3.run) == sorted(df.run) and len((out / "executions.log").read_text().splitlines()) == 4


# ---------------------------------------------------------------------------------------------
# Round 3 (issue 24). Every case checks the one clear message and that no file already there
# changed (its bytes before and after).

def snapshot(*paths):
    """``{path: bytes}`` of every file under ``paths`` (files or folders): to show that nothing changed."""
    files = [f for p in map(Path, paths) for f in ([p] if p.is_file() else sorted(p.rglob("*")) if p.is_dir() else [])]
    return {f: f.read_bytes() for f in files if f.is_file() and not f.name.endswith(".lock")}


def disk_full(monkeypatch, after: int = 0):
    """Every fsync after the first ``after`` fails as a full disk does."""
    calls, real = [], os.fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) > after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)
    monkeypatch.setattr(_io.os, "fsync", fsync)


def header_of(path):
    blob = path.read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def with_header(path, header, body, pad=True):
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8 if pad else 0)
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)


# Class 1: the hash and the signature cover every byte the loader interprets
def signed(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_SIGNING_KEY", KEY)
    net = model()
    with torch.no_grad():
        net.classifier[4].bias.copy_(torch.arange(10.0))
    return save_checkpoint(net, tmp_path / "m.safetensors")


def swap_two_tensors(header):
    a, b = "classifier.4.bias", "features.0.1.bias"  # the same dtype and shape, different values
    header[a]["data_offsets"], header[b]["data_offsets"] = header[b]["data_offsets"], header[a]["data_offsets"]


def change_a_dtype(header):
    header["classifier.4.bias"]["dtype"] = "I32"


@pytest.mark.parametrize("edit", [swap_two_tensors, change_a_dtype], ids=["swapped-byte-ranges", "changed-dtype"])
def test_an_edited_tensor_table_of_a_signed_file_is_refused(tmp_path, monkeypatch, edit):
    path = signed(tmp_path, monkeypatch)
    header, body = header_of(path)
    edit(header)
    with_header(path, header, body)
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match="SHA-256 of the tensor table and tensors in .*m.safetensors .*modified"):
        load_checkpoint(path)
    from distill_utils import __main__ as cli
    assert cli.main(["verify", str(path)]) == 1
    assert snapshot(tmp_path) == before


def test_a_recomputed_content_hash_breaks_the_signature(tmp_path, monkeypatch):
    from distill_utils.provenance.format import META_KEY, content_sha256
    path = signed(tmp_path, monkeypatch)
    header, body = header_of(path)
    swap_two_tensors(header)
    manifest = json.loads(header.pop("__metadata__")[META_KEY])
    manifest["content_sha256"] = content_sha256(header, body)  # a forger who knows the format, not the key
    header["__metadata__"] = {META_KEY: json.dumps(manifest, sort_keys=True, separators=(",", ":"))}
    with_header(path, header, body)
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match="the signature of m.safetensors does not match"):
        load_checkpoint(path)
    assert snapshot(tmp_path) == before


def test_extra_bytes_in_a_header_are_refused(tmp_path, monkeypatch):
    path = signed(tmp_path, monkeypatch)
    header, body = header_of(path)
    header["__metadata__"]["note"] = "not written by save_checkpoint"
    with_header(path, header, body)
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match="header of .*m.safetensors is not the one save_checkpoint writes"):
        load_checkpoint(path)
    assert snapshot(tmp_path) == before


def as_format_2(path):
    """Rewrite a (format 3) checkpoint as format 2 wrote it: the hash of the tensor bytes only."""
    from distill_utils.provenance.format import META_KEY
    header, body = header_of(path)
    manifest = json.loads(header.pop("__metadata__")[META_KEY])
    for k in ("content_sha256", "signature"):
        manifest.pop(k, None)
    manifest.update(format_version=2, tensors_sha256=hashlib.sha256(body).hexdigest())
    header["__metadata__"] = {META_KEY: json.dumps(manifest, sort_keys=True, separators=(",", ":"))}
    with_header(path, header, body)
    path.with_suffix(".json").unlink()


def test_a_format_2_file_loads_without_a_key_and_is_re_saved_to_be_signed(tmp_path, monkeypatch):
    from distill_utils import __main__ as cli
    path = saved(tmp_path)
    as_format_2(path)
    net, manifest = load_checkpoint(path)  # old files still load
    assert manifest["format_version"] == 2 and manifest["verified"] == "no key"
    monkeypatch.setenv("DISTILL_SIGNING_KEY", KEY)
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match="format-2 checkpoint.*leave out the tensor table.*utils sign PATH"):
        load_checkpoint(path)
    assert load_checkpoint(path, allow_unverified=True)[1]["verified"] == "unverified"
    assert snapshot(tmp_path) == before
    assert cli.main(["sign", str(path)]) == 0
    again, manifest = load_checkpoint(path)
    assert manifest["format_version"] == 3 and manifest["verified"] == "signed"
    assert same_state(again.state_dict(), net.state_dict())


def test_a_non_ascii_signature_value_is_a_mismatch_not_a_crash(tmp_path, monkeypatch):
    path = signed(tmp_path, monkeypatch)
    rewrite_manifest(path, signature={"alg": "HMAC-SHA256", "key_id": "x", "value": "é" * 64})
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match="the signature of m.safetensors does not match"):
        load_checkpoint(path)
    assert snapshot(tmp_path) == before


# Class 2: what a user already has is never lost
def test_a_full_disk_leaves_the_readme_whole_and_says_so(tmp_path, monkeypatch, capsys):
    from distill_utils import __main__ as cli
    from distill_utils.readme import writer
    readme = tmp_path / "README.md"
    start, end = "<!-- reference kd: start (python -m distill_utils reference --readme) -->", \
        "<!-- reference kd: end -->"
    text = (REPO / "README.md").read_text()
    assert start in text and end in text
    readme.write_text(text.split(start)[0] + start + "\nstale table\n" + end + text.split(end)[1])
    monkeypatch.setattr(writer, "README", readme)
    before = snapshot(tmp_path)
    disk_full(monkeypatch)
    assert cli.main(["reference", "--readme"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"FAIL: cannot write {readme}: disk full: nothing was changed") and err.count("\n") == 1
    assert snapshot(tmp_path) == before and not list(tmp_path.glob(".*.tmp"))


def test_a_full_disk_leaves_the_shipped_teacher_whole(tmp_path, monkeypatch, capsys):
    from distill_utils import __main__ as cli
    from distill_utils.runs import experiments
    shipped = tmp_path / "pretrained"
    shipped.mkdir()
    shipped_copy(shipped)
    made = tmp_path / "made"
    save_checkpoint(model(), made / "teacher.safetensors")
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", shipped)
    monkeypatch.setattr(experiments, "run_sequence", lambda *args, **kwargs: made)  # notebook 01 has run
    before = snapshot(shipped)
    disk_full(monkeypatch, after=1)  # the new weights are written; the disk fills with the manifest
    assert cli.main(["pretrained"]) == 1
    assert "disk full: nothing was changed" in capsys.readouterr().err
    assert snapshot(shipped) == before and not list(shipped.glob(".*.tmp"))


def test_outputs_never_land_on_a_source_notebook(tmp_path, capsys):
    from distill_utils import __main__ as cli
    nb = tiny(tmp_path)
    before = snapshot(REPO / "notebooks", tmp_path)
    assert cli.main(["run", "00", "--out", str(REPO / "notebooks")]) == 2
    assert "the executed copy of 00_setup.ipynb would replace the notebook itself" in capsys.readouterr().err
    assert cli.main(["run", str(nb), "--out", str(tmp_path)]) == 2
    assert "the executed copy of tiny.ipynb would replace the notebook itself" in capsys.readouterr().err
    assert snapshot(REPO / "notebooks", tmp_path) == before


def test_several_files_are_replaced_together_or_not_at_all(tmp_path, monkeypatch):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text("old a")
    b.write_text("old b")
    disk_full(monkeypatch, after=1)
    with pytest.raises(OSError, match="disk full: nothing was changed") as err:
        _io.atomic_write_files({a: b"new a", b: b"new b"})
    assert err.value.errno == errno.ENOSPC
    assert (a.read_text(), b.read_text()) == ("old a", "old b") and not list(tmp_path.glob(".*.tmp"))


def test_a_folder_where_a_file_goes_is_named(tmp_path):
    state = tmp_path / "state.pt"
    (state / "keep").mkdir(parents=True)
    with pytest.raises(OSError, match="state.pt is a folder; name a file to write"):
        fit(model(), split(), epochs=1, batch_size=32, progress=False, state_file=state)
    assert (state / "keep").is_dir()


# Class 3: a record or a folder is continued only with the values it was made with
def fake_reference_run(notebooks, out, params):
    out.mkdir(parents=True)
    (out / "03_knowledge_distillation.record.json").write_text(json.dumps(
        {"parameters": {**params, "out_dir": str(out)}, "metrics": {"distilled_test_acc": 0.9}}))
    return out


def test_reference_resumed_after_the_parameter_file_changed_is_refused(tmp_path, monkeypatch):
    from distill_utils.runs import reference
    monkeypatch.setattr(reference, "run_sequence", fake_reference_run)
    full = tmp_path / "full.yaml"
    full.write_text("epochs: 15\n")
    folder = tmp_path / "ref"
    reference.run_reference(["03"], [0], folder=folder, work=tmp_path / "work", params_file=full)
    full.write_text("epochs: 20\n")
    before = snapshot(folder)
    with pytest.raises(ValueError, match=r"03_knowledge_distillation.json was made with other values than now "
                                         r"\(epochs: 15 there, 20 now\); its seeds 0 would be mixed"):
        reference.run_reference(["03"], [0, 1], folder=folder, work=tmp_path / "work", params_file=full)
    assert snapshot(folder) == before
    record = reference.load("03_knowledge_distillation", folder)
    with pytest.raises(ValueError, match="epochs: 15 there, 20 now.*seed 1 ran with other values"):
        reference.add_seed(record, 1, {"parameters": {"epochs": 20}, "metrics": {}}, 1.0)


# Class 4: every file a user gives is read within bounds
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, capsys):
    from distill_utils import __main__ as cli
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)  # 9**9 = 387 million strings once expanded
    before = snapshot(tmp_path)
    out = capped(f"""
        import time
        from distill_utils.runs.params import read_parameter_file
        start = time.perf_counter()
        try:
            read_parameter_file({str(bomb)!r})
        except ValueError as err:
            print(err, time.perf_counter() - start < 5)
        """, cap_mib=256, timeout=60)
    assert "bomb.yaml is not valid YAML: an alias (*a) is not allowed here" in out and out.strip().endswith("True")
    assert cli.main(["run", "00", "-f", str(bomb), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "an alias (*a) is not allowed here" in err and err.count("\n") == 1 and len(err) < 300
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("text, message", [
    ("x: " + "[" * 200 + "]" * 200 + "\n", "nested more than 64 levels deep"),
    ("x: !!python/object/apply:os.system ['touch pwned']\n", "could not determine a constructor"),
], ids=["deep-nesting", "python-tag"])
def test_parameter_files_are_parsed_safely(tmp_path, text, message):
    from distill_utils.runs.params import read_parameter_file
    params = tmp_path / "p.yaml"
    params.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_parameter_file(params)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "folder"])
def test_records_are_regular_files_only(tmp_path, kind):
    folder = tmp_path / "ref"
    folder.mkdir()
    record = folder / "03_knowledge_distillation.json"
    if kind == "fifo":
        os.mkfifo(record)
    elif kind == "dev-zero":
        record.symlink_to("/dev/zero")
    else:
        record.mkdir()
    out = capped(f"""
        from distill_utils.runs import reference, experiments
        try:
            reference.load("03_knowledge_distillation", {str(folder)!r})
        except ValueError as err:
            print(err)
        problems = []
        print(experiments.read_record({str(record)!r}, problems), problems)
        """, timeout=60)
    what = {"fifo": "a FIFO (named pipe)", "dev-zero": "a device", "folder": "a folder"}[kind]
    assert out.count(f"is {what}, not a regular file") == 2, out
    assert "reference record" in out and "delete it and rerun" in out


def test_a_malformed_reference_record_is_named(tmp_path):
    from distill_utils.runs import reference
    record = tmp_path / "03_knowledge_distillation.json"
    record.write_text(json.dumps({"seeds": {"0": {"metrics": [0.9]}}}))
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=f"reference record {record} is malformed \\(seed 0 has no metrics mapping\\)"):
        reference.load("03_knowledge_distillation", tmp_path)
    assert snapshot(tmp_path) == before


def test_deeply_nested_json_in_a_manifest_is_one_line(tmp_path):
    path = saved(tmp_path)
    as_format_1(path)
    manifest = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps(manifest)[:-1] + ', "deep": ' + "[" * 100000 + "]" * 100000 + "}")
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match="nests lists or objects more than 64 levels deep"):
        load_checkpoint(path)
    assert snapshot(tmp_path) == before


def test_an_onnx_file_is_sized_before_it_is_read(tmp_path):
    big = tmp_path / "big.onnx"
    with open(big, "wb") as f:
        f.truncate(3 << 30)  # sparse: 3 GiB that nothing should read
    out = capped(f"""
        from distill_utils import deploy
        try:
            deploy.predict_onnx({str(big)!r}, torch.zeros(1, 1, 2, 2))
        except deploy.DeployError as err:
            print(err)
        """, cap_mib=512, timeout=60)
    assert "big.onnx is 3,221,225,472 bytes, more than an ONNX file can be" in out


def test_deeply_nested_json_in_onnx_metadata_is_a_broken_link(tmp_path, capsys):
    from distill_utils import __main__ as cli
    path = tiny_onnx(tmp_path / "m.onnx", meta={"parent": json.loads("[" * 500 + "]" * 500)})
    before = snapshot(tmp_path)
    assert cli.main(["lineage", str(path)]) == 1
    captured = capsys.readouterr()
    assert "its lineage record is malformed" in captured.out and "Traceback" not in captured.err
    assert snapshot(tmp_path) == before


# Class 5: ONNX files are checked like checkpoints
def test_onnx_files_naming_each_other_end_the_lineage_walk(tmp_path, capsys):
    from distill_utils import __main__ as cli
    from distill_utils.provenance.lineage import lineage_chain
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    tiny_onnx(a, meta={"parent": {"sha256": "x", "path": str(b)}, "steps": []})
    tiny_onnx(b, meta={"parent": {"sha256": "y", "path": str(a)}, "steps": []})
    before = snapshot(tmp_path)
    assert [e["path"] for e in lineage_chain(a)] == [str(a), str(b), str(a)]
    assert cli.main(["lineage", str(a)]) == 1 and "link(s) of the lineage are broken" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def tamper(path):
    import onnx
    proto = onnx.load(path)
    proto.graph.initializer[0].raw_data = bytes(len(proto.graph.initializer[0].raw_data))  # zero weights
    onnx.save(proto, path)


def test_a_tampered_signed_onnx_file_is_not_run_or_quantized(tmp_path, monkeypatch, capsys):
    from distill_utils import __main__ as cli
    from distill_utils import deploy
    monkeypatch.setenv("DISTILL_SIGNING_KEY", KEY)
    path = tiny_onnx(tmp_path / "m.onnx")
    assert deploy.predict_onnx(path, torch.ones(1, 1, 2, 2)).shape == (1, 3)  # signed: it runs
    tamper(path)
    before = snapshot(tmp_path)
    for call in (lambda: deploy.predict_onnx(path, torch.ones(1, 1, 2, 2)),
                 lambda: deploy.evaluate_onnx(path, Split(torch.ones(2, 1, 2, 2), torch.zeros(2, dtype=torch.long))),
                 lambda: deploy.quantize_int8(path, tmp_path / "m_int8.onnx", method="dynamic")):
        with pytest.raises(DeployError, match="the signature of m.onnx does not match: the file changed after signing"):
            call()
    assert cli.main(["verify", str(path)]) == 1 and "signature of m.onnx does not match" in capsys.readouterr().err
    assert snapshot(tmp_path) == before  # no int8 file re-signed from it
    sess = deploy.session(path, allow_unverified=True)  # the caller's choice, said out loud
    assert deploy.predict_onnx(path, torch.ones(1, 1, 2, 2), sess=sess).tolist() == [[0.0, 0.0, 0.0]]


def test_an_unsigned_onnx_file_with_a_key_configured_is_refused(tmp_path, monkeypatch):
    from distill_utils import deploy
    path = tiny_onnx(tmp_path / "m.onnx")
    monkeypatch.setenv("DISTILL_SIGNING_KEY", KEY)
    before = snapshot(tmp_path)
    with pytest.raises(DeployError, match="m.onnx is not signed, and a signing key is configured: export it again"):
        deploy.predict_onnx(path, torch.ones(1, 1, 2, 2))
    assert snapshot(tmp_path) == before


def test_quantizing_an_int8_file_or_onto_its_source_is_refused(tmp_path):
    from distill_utils import deploy
    fp32 = tiny_onnx(tmp_path / "m.onnx")
    good = deploy.quantize_int8(fp32, tmp_path / "m_int8.onnx", method="dynamic")
    int8 = tiny_onnx(tmp_path / "q.onnx", int8=True)
    before = snapshot(tmp_path)
    with pytest.raises(DeployError, match="q.onnx is already int8 \\(DequantizeLinear, QuantizeLinear in it\\)"):
        deploy.quantize_int8(int8, good, method="dynamic")
    with pytest.raises(DeployError, match="m_int8.onnx is already int8 .*quantize its fp32 file .*m.onnx"):
        deploy.quantize_int8(good, tmp_path / "twice.onnx", method="dynamic")
    with pytest.raises(DeployError, match="m.onnx is the fp32 file being quantized; write the int8 model to another"):
        deploy.quantize_int8(fp32, fp32, method="dynamic")
    assert snapshot(tmp_path) == before


def test_an_opset_the_exporter_does_not_write_is_refused(tmp_path):
    from distill_utils import deploy
    old = tiny_onnx(tmp_path / "m.onnx")
    before = snapshot(tmp_path)
    for opset in (99, "20", 17):
        with pytest.raises(DeployError, match=f"opset = {opset!r}: the exporter writes ONNX opsets 18 to"):
            deploy.export_onnx(model(), old, opset=opset)
    assert snapshot(tmp_path) == before


# Class 6: evidence never states a verdict it cannot compute
@pytest.mark.parametrize("a, b, kwargs, message", [
    ({0: 1e308, 1: -1e308, 2: 1e308}, {0: -1e308, 1: 1e308, 2: -1e308}, {"scale": 1.0}, None),
    ({0: 0.9, 1: 0.9, 2: 0.9}, {0: 0.8, 1: 0.8, 2: 0.8}, {"higher_is_better": "no"},
     "higher_is_better must be True or False, got 'no'"),
    ({0: 0.9, "0": 0.5, 1: 0.9}, {0: 0.8, 1: 0.8}, {}, "seed 0 is given twice \\(as 0 and '0'\\); give each seed once"),
    ({0: 1e307, 1: 0.9}, {0: 0.8, 1: 0.8}, {}, "seed 0 has the non-finite value inf"),
], ids=["overflow", "higher-is-better-a-string", "seed-0-and-'0'", "overflow-once-scaled"])
def test_evidence_refuses_what_it_cannot_compare(a, b, kwargs, message):
    from distill_utils.runs.evidence import compare
    given = (dict(a), dict(b))
    if message is None:
        result = compare(a, b, "A", "B", **kwargs)
        assert result.verdict == "cannot compare" and "nan" not in result.sentence()
        assert result.sentence().startswith("cannot compare A with B: their seed differences overflow")
    else:
        with pytest.raises(ValueError, match=message):
            compare(a, b, "A", "B", **kwargs)
    assert (a, b) == given


# Class 7: each case the issue saw is one clear line
def test_a_fixed_batch_onnx_model_is_evaluated_in_its_own_batches(tmp_path):
    from distill_utils import deploy
    path = tiny_onnx(tmp_path / "fixed.onnx", batch=2)
    dynamic = tiny_onnx(tmp_path / "dynamic.onnx")
    x = torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    np_close = deploy.predict_onnx(path, x) - deploy.predict_onnx(dynamic, x)
    assert abs(np_close).max() < 1e-6  # 5 images in batches of 2, the last one padded
    with pytest.raises(DeployError, match="fixed.onnx takes a fixed batch of 2 image\\(s\\), not 5: use batch_size=2"):
        deploy.latency_onnx(path, batch_size=5, repeats=1, warmup=0)


def test_quantize_settings_of_the_wrong_type_are_named(tmp_path):
    from distill_utils import deploy
    path = tiny_onnx(tmp_path / "m.onnx")
    before = snapshot(tmp_path)
    with pytest.raises(DeployError, match="images must be a positive integer .*got '64'"):
        deploy.quantize_int8(path, tmp_path / "q.onnx", split(), images="64")
    with pytest.raises(DeployError, match="per_channel must be True or False, got 'yes'"):
        deploy.quantize_int8(path, tmp_path / "q.onnx", method="dynamic", per_channel="yes")
    assert snapshot(tmp_path) == before


def test_lineage_reads_an_onnx_file_whatever_its_suffix_case(tmp_path, capsys):
    from distill_utils import __main__ as cli
    path = tiny_onnx(tmp_path / "M.ONNX")
    assert cli.main(["lineage", str(path)]) == 0
    assert "export_onnx(opset=20)" in capsys.readouterr().out


def test_workers_beyond_the_cores_warn_and_an_unreachable_scheduler_is_found_at_once(tmp_path, capsys):
    import time

    from distill_utils import __main__ as cli
    nb = tiny(tmp_path)
    cores = os.cpu_count()
    out = tmp_path / "sweep"
    assert cli.main(["sweep", str(nb), "-p", "lr", "{a", "--workers", str(cores + 62), "--out", str(out)]) == 2
    assert f"warning: --workers {cores + 62} on {cores} CPU cores" in capsys.readouterr().err
    start = time.perf_counter()
    for command in (["sweep", str(nb), "--scheduler", "tcp://127.0.0.1:1"],
                    ["search", "--trials", "1", "--scheduler", "tcp://127.0.0.1:1", "--out", str(out)]):
        assert cli.main(command) == 2
        err = capsys.readouterr().err
        assert err.startswith("FAIL: cannot reach the Dask scheduler at 'tcp://127.0.0.1:1'") and err.count("\n") == 1
    assert time.perf_counter() - start < 10 and not out.exists()


def test_a_summary_path_that_is_a_folder_is_refused_before_the_study(tmp_path, capsys):
    from distill_utils import __main__ as cli
    out = tmp_path / "study"
    assert cli.main(["search", "--trials", "1", "--summary", str(tmp_path), "--out", str(out)]) == 2
    assert f"--summary {tmp_path} is a folder" in capsys.readouterr().err and not out.exists()


# Class 3 and 7 for the search: a study folder belongs to one study; its storage errors are one line
SPACE = {"space": {"T": [1.0, 2.0]}}


def search_cli(capsys, *argv):
    from distill_utils import __main__ as cli
    code = cli.main(["search", "--trials", "1", *map(str, argv)])
    err = capsys.readouterr().err
    fails = [line for line in err.splitlines() if line.startswith("FAIL: ")]
    assert code == 2 and len(fails) == 1 and "Traceback" not in err, err
    return fails[0]


def test_a_study_folder_holds_one_study_and_follows_a_rename(tmp_path, capsys):
    from distill_utils.runs.search.space import load_space
    from distill_utils.runs.search.study import SearchOptions, open_study
    config = load_space(SPACE)
    first = tmp_path / "first"
    first.mkdir()
    open_study(config, SearchOptions(out=first))
    (tmp_path / "space.yaml").write_text("space: {T: [1.0, 2.0]}\n")
    before = snapshot(first)
    message = search_cli(capsys, "--space", tmp_path / "space.yaml", "--out", first, "--study", "second")
    assert f"{first} holds the study 'first', not 'second': a folder holds one study" in message
    assert "--study first to continue it" in message and snapshot(first) == before
    renamed = first.rename(tmp_path / "renamed")
    study = open_study(config, SearchOptions(out=renamed))
    assert study.study_name == "first" and study.user_attrs["space"] == config  # the same study continues
    assert (renamed / "study.json").read_bytes() == before[first / "study.json"]


def test_a_journal_from_before_study_json_keeps_its_study(tmp_path, capsys):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    old = tmp_path / "old"
    old.mkdir()
    optuna.create_study(storage=JournalStorage(JournalFileBackend(str(old / "study.journal"))), study_name="mine",
                        directions=["maximize", "minimize"])
    capsys.readouterr()  # Optuna's own log line
    (tmp_path / "space.yaml").write_text("space: {T: [1.0, 2.0]}\n")
    before = snapshot(old)
    message = search_cli(capsys, "--space", tmp_path / "space.yaml", "--out", old, "--study", "other")
    assert f"{old} holds the study 'mine', not 'other'" in message and snapshot(old) == before


@pytest.mark.parametrize("journal", [b"\x00\xff garbage\n", b'{"a": 1}\n', b"[" * 100000 + b"\n"],
                         ids=["garbage", "not-an-operation", "deep-nesting"])
def test_a_damaged_study_journal_is_named(tmp_path, capsys, journal):
    out = tmp_path / "study"
    out.mkdir()
    (out / "study.journal").write_bytes(journal)
    (tmp_path / "space.yaml").write_text("space: {T: [1.0, 2.0]}\n")
    before = snapshot(out)
    message = search_cli(capsys, "--space", tmp_path / "space.yaml", "--out", out)
    assert f"the study journal {out / 'study.journal'} cannot be read" in message and "is damaged" in message
    assert snapshot(out) == before


def test_a_bad_storage_url_is_one_line_without_its_password(tmp_path, capsys):
    (tmp_path / "space.yaml").write_text("space: {T: [1.0, 2.0]}\n")
    for url, message in [("nonsense", "cannot open the study storage nonsense (ArgumentError"),
                         ("postgresql://me:secret@127.0.0.1:1/db", "cannot open the study storage "
                                                                    "postgresql://me:***@127.0.0.1:1/db")]:
        fail_line = search_cli(capsys, "--space", tmp_path / "space.yaml", "--out", tmp_path / "o", "--storage", url)
        assert message in fail_line and "secret" not in fail_line


@pytest.mark.parametrize("text, message", [
    ("space:\n  1: [a]\n  T: [2.0]\n", "space.1: a name must be text"),
    ("yes: 1\nspace: {T: [1.0]}\n", "True: a name must be text"),
    ("space: {T: {low: 1.0, high: 8.0, log: true, step: 1.0}}\n", "space.T: log and step together are not possible"),
    (BOMB.replace("i: &i", "space: &i"), "an alias (*a) is not allowed here"),
    ("space: " + "{a: " * 100 + "1" + "}" * 100 + "\n", "nested more than 64 levels deep"),
], ids=["number-as-name", "yes-as-name", "log-and-step", "alias-bomb", "deep-nesting"])
def test_search_spaces_are_read_safely_and_checked(tmp_path, capsys, text, message):
    space = tmp_path / "space.yaml"
    space.write_text(text)
    before = snapshot(tmp_path)
    assert message in search_cli(capsys, "--space", space, "--out", tmp_path / "o")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_search_space_is_a_regular_file(tmp_path, kind):
    space = tmp_path / "space.yaml"
    os.mkfifo(space) if kind == "fifo" else space.symlink_to("/dev/zero")
    out = capped(f"""
        from distill_utils.runs.search.space import SpaceError, load_space
        try:
            load_space({str(space)!r})
        except SpaceError as err:
            print(err)
        """, timeout=60)
    assert f"is {'a FIFO (named pipe)' if kind == 'fifo' else 'a device'}, not a regular file" in out
