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
from checkpoint_helpers import as_format_1, rewrite_manifest

from conftest import make_idx_dataset, write_notebook
from distill_utils import data
from distill_utils.common import files as _io
from distill_utils.data import DataError, Split
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
