"""Property-based fuzzing of every reader of untrusted input (issue 24): checkpoint headers and manifests,
IDX and CIFAR-10 files, parameter files, search spaces, run and reference records, ONNX files and their
metadata. Whatever the bytes, a reader gives a result or the project's own error, whose message is one
clear line; it stays within a memory cap and a time bound; and no file changes but those it was asked
to write (it is asked to write none).

A few examples per reader in the normal test run (seconds); ``make fuzz`` runs many more
(``FUZZ_PROFILE=long``). A failure prints the example (and ``@reproduce_failure``) to replay it.
"""
import gzip
import hashlib
import json
import os
import pickle
import resource
import signal
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from checkpoint_helpers import tiny_onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distill_utils import data
from distill_utils.common.files import ReadRefused, loads_json, loads_yaml
from distill_utils.models import build_model
from distill_utils.provenance.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from distill_utils.provenance.format import META_KEY
from distill_utils.provenance.lineage import lineage_chain
from distill_utils.provenance.onnx_meta import OnnxFileError, read_onnx_lineage
from distill_utils.runs import reference
from distill_utils.runs.experiments import read_record
from distill_utils.runs.params import read_parameter_file
from distill_utils.runs.search.space import SETTINGS, SPACE, SpaceError, load_space

_common = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                      HealthCheck.data_too_large])
settings.register_profile("quick", max_examples=6, **_common)
settings.register_profile("long", max_examples=2000, **_common)
settings.load_profile(os.environ.get("FUZZ_PROFILE", "quick"))

MEMORY_CAP = 2 << 30   # bytes a reader may add to this process
TIME_BOUND = 30        # seconds one read may take (a 2-core machine shared with other work)


class Hung(BaseException):
    """A reader ran past the time bound (a BaseException, so no reader's ``except Exception`` hides it)."""


@pytest.fixture
def bounded():
    """Run the test under an address-space cap (this process's size plus ``MEMORY_CAP``), restored after."""
    size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = size + MEMORY_CAP if hard == resource.RLIM_INFINITY else min(size + MEMORY_CAP, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


def one_clear_line(err) -> None:
    text = " ".join(str(err).split())
    assert text and len(text) < 10_000 and "Traceback" not in text, repr(err)


def read_within_bounds(folder: Path, read, errors, bound: float = TIME_BOUND):
    """``read()``: its result, or None when it raised one of ``errors`` with one clear line; within ``bound``
    seconds, and leaving every file under ``folder`` as it was."""
    before = snapshot(folder)

    def hung(*_):
        raise Hung(f"a read took more than {bound} s")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, bound)
    start = time.perf_counter()
    try:
        result = read()
    except errors as err:
        one_clear_line(err)
        result = None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.perf_counter() - start < bound
    assert snapshot(folder) == before, "a reader changed a file it was not asked to write"
    return result


def fresh(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# ---------------------------------------------------------------- strategies

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)


@st.composite
def mutated(draw, blob: bytes):
    """``blob`` truncated, with bytes flipped, inserted or overwritten, or random bytes."""
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "overwrite", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=512))
    out = bytearray(blob)
    if kind == "truncate":
        return bytes(out[:draw(st.integers(0, len(out)))])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(out) - 1))
        if kind == "flip":
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            piece = draw(st.binary(min_size=1, max_size=16))
            out[at:at + len(piece)] = piece
    return bytes(out)


def yaml_texts():
    """YAML: dumped from JSON-like values, with anchors and aliases, deep nesting, or random text."""
    dumped = json_values.map(lambda v: yaml.safe_dump(v))
    aliased = st.integers(1, 12).map(lambda n: "a: &a [x, x]\n" + "".join(
        f"k{i}: &k{i} [*{'a' if i == 0 else f'k{i - 1}'}, *{'a' if i == 0 else f'k{i - 1}'}]\n" for i in range(n)))
    deep = st.integers(1, 3000).map(lambda n: "x: " + "[" * n + "]" * n + "\n")
    return dumped | aliased | deep | st.text(max_size=200)


# ---------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    path = save_checkpoint(build_model("student_mlp", hidden=[8]), folder / "m.safetensors")
    return {"weights": path.read_bytes(), "manifest": json.loads(path.with_suffix(".json").read_text())}


@given(draw=st.data())
def test_any_checkpoint_file_loads_or_is_one_checkpoint_error(tmp_path_factory, checkpoint_bytes, bounded, draw):
    blob = checkpoint_bytes["weights"]
    if draw.draw(st.booleans()):  # the header's JSON (the tensor table, the manifest) is the target
        n = struct.unpack("<Q", blob[:8])[0]
        header = json.loads(blob[8:8 + n])
        key = draw.draw(st.sampled_from(sorted(header)))
        header[key] = draw.draw(json_values) if key != "__metadata__" else {META_KEY: json.dumps(
            {**json.loads(header[key][META_KEY]), draw.draw(st.text(max_size=12)): draw.draw(json_values)})}
        text = json.dumps(header).encode()
        blob = struct.pack("<Q", len(text)) + text + blob[8 + n:]
    else:
        blob = draw.draw(mutated(blob))
    folder = fresh(tmp_path_factory)
    (folder / "m.safetensors").write_bytes(blob)
    read_within_bounds(folder, lambda: load_checkpoint(folder / "m.safetensors"), CheckpointError)


@given(edit=st.dictionaries(st.sampled_from(["format", "format_version", "architecture", "sparse", "bytes",
                                              "sha256", "metadata", "lineage", "signature"]), json_values, max_size=4),
       raw=st.none() | st.binary(max_size=300))
def test_any_first_format_manifest_loads_or_is_one_checkpoint_error(tmp_path_factory, checkpoint_bytes, bounded,
                                                                   edit, raw):
    from safetensors.torch import load, save
    plain = save(load(checkpoint_bytes["weights"]))  # the first format: plain safetensors, the manifest beside it
    manifest = {**checkpoint_bytes["manifest"], "format_version": 1, "sha256": hashlib.sha256(plain).hexdigest(),
                "bytes": len(plain), **edit}
    folder = fresh(tmp_path_factory)
    (folder / "m.safetensors").write_bytes(plain)
    (folder / "m.json").write_bytes(raw if raw is not None else json.dumps(manifest).encode())
    read_within_bounds(folder, lambda: load_checkpoint(folder / "m.safetensors"), CheckpointError)


# ---------------------------------------------------------------- datasets

def idx(dims, body: bytes, magic=None) -> bytes:
    return (magic or bytes([0, 0, 8, len(dims)])) + struct.pack(f">{len(dims)}I", *dims) + body


@given(dims=st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 30), min_size=1, max_size=3),
       body=st.binary(max_size=2000), magic=st.none() | st.binary(min_size=4, max_size=4), gz=st.booleans(),
       noise=st.none() | st.binary(max_size=200))
def test_any_idx_file_parses_or_is_one_data_error(tmp_path_factory, bounded, dims, body, magic, gz, noise):
    blob = noise if noise is not None else idx(dims, body, magic)
    folder = fresh(tmp_path_factory)
    path = folder / ("f.gz" if gz else "f")
    path.write_bytes(gzip.compress(blob) if gz and noise is None else blob)
    out = read_within_bounds(folder, lambda: data.read_idx(path, len(dims)), data.DataError)
    assert out is None or out.numel() == len(body) == int(np.prod(dims))


def cifar_batch(n: int) -> bytes:
    return pickle.dumps({"data": np.zeros((n, 3072), dtype=np.uint8), "labels": [0] * n}, protocol=2)


@given(draw=st.data())
def test_any_cifar_batch_loads_or_is_one_data_error(tmp_path_factory, bounded, draw):
    good = cifar_batch(2)
    blob = draw.draw(mutated(good) | st.builds(lambda v: pickle.dumps(v, protocol=2), json_values)
                     | st.builds(lambda n: cifar_batch(n)[:-1] + b".", st.integers(0, 3)))
    folder = fresh(tmp_path_factory)
    batches = folder / "cifar-10-batches-py"
    batches.mkdir()
    for name in [*data.CIFAR_FILES["train"], *data.CIFAR_FILES["test"]]:
        (batches / name).write_bytes(good)
    (batches / "data_batch_1").write_bytes(blob)
    ds = read_within_bounds(folder, lambda: data.load_dataset("cifar10", root=folder), data.DataError)
    assert ds is None or ds.train.x.shape[1:] == (3, 32, 32)


# ---------------------------------------------------------------- parameter files and search spaces

@given(text=yaml_texts())
def test_any_parameter_file_reads_or_is_one_value_error(tmp_path_factory, bounded, text):
    folder = fresh(tmp_path_factory)
    (folder / "p.yaml").write_text(text)
    params = read_within_bounds(folder, lambda: read_parameter_file(folder / "p.yaml"), ValueError)
    assert params is None or isinstance(params, dict)


names = st.sampled_from([*SETTINGS, "space", "tarin_images"]) | st.text(max_size=8) | st.integers() | st.booleans()
entries = json_values | st.fixed_dictionaries({"low": json_values, "high": json_values},
                                              optional={"log": json_values, "step": json_values})


@given(settings_=st.dictionaries(names, json_values, max_size=4),
       space=st.dictionaries(st.sampled_from(sorted(SPACE)) | names, entries, max_size=4),
       text=st.none() | yaml_texts())
def test_any_search_space_loads_or_is_one_space_error(tmp_path_factory, bounded, settings_, space, text):
    folder = fresh(tmp_path_factory)
    body = text if text is not None else yaml.safe_dump({**settings_, "space": space})
    (folder / "space.yaml").write_text(body)
    config = read_within_bounds(folder, lambda: load_space(folder / "space.yaml"), SpaceError)
    assert config is None or set(config["space"]) <= set(SPACE)


# ---------------------------------------------------------------- records

@given(value=json_values | st.fixed_dictionaries({"seeds": st.dictionaries(st.text(max_size=3), json_values)},
                                                 optional={"parameters": json_values}),
       raw=st.none() | st.binary(max_size=200) | st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n))
def test_any_record_reads_or_is_refused_in_one_line(tmp_path_factory, bounded, value, raw):
    folder = fresh(tmp_path_factory)
    body = raw if raw is not None else json.dumps(value).encode()
    (folder / "03_knowledge_distillation.json").write_bytes(body)
    (folder / "x.record.json").write_bytes(body)
    record = read_within_bounds(folder, lambda: reference.load("03_knowledge_distillation", folder), ValueError)
    if record is not None:  # what load returns, per_seed reads (or names the problem)
        read_within_bounds(folder, lambda: reference.per_seed(record, "acc"), ValueError)
    problems = []
    run = read_within_bounds(folder, lambda: read_record(folder / "x.record.json", problems), ())
    assert run is None or isinstance(run, dict)
    assert all(len(" ".join(why.split())) < 10_000 for _, why in problems)


@given(text=st.text(max_size=100) | st.integers(1, 5000).map(lambda n: "{\"a\": " * n + "1" + "}" * n))
def test_json_and_yaml_text_parse_or_are_refused(text):
    for parse in (loads_json, loads_yaml):
        try:
            parse(text)
        except ReadRefused as err:
            one_clear_line(err)


# ---------------------------------------------------------------- ONNX files

@pytest.fixture(scope="module")
def onnx_bytes(tmp_path_factory) -> bytes:
    return tiny_onnx(tmp_path_factory.mktemp("onnx") / "m.onnx").read_bytes()


@given(draw=st.data())
def test_any_onnx_file_reads_or_is_one_onnx_error(tmp_path_factory, onnx_bytes, bounded, draw):
    folder = fresh(tmp_path_factory)
    (folder / "m.onnx").write_bytes(draw.draw(mutated(onnx_bytes)))
    found = read_within_bounds(folder, lambda: read_onnx_lineage(folder / "m.onnx"), OnnxFileError)
    assert found is None or len(found["sha256"]) == 64


@given(meta=st.dictionaries(st.sampled_from(["parent", "steps", "created", "format", "signature"])
                            | st.text(max_size=8), json_values, max_size=4),
       raw=st.none() | st.text(max_size=50) | st.integers(1, 5000).map(lambda n: "[" * n + "]" * n))
def test_any_onnx_metadata_gives_a_lineage_never_an_exception(tmp_path_factory, bounded, meta, raw):
    import onnx
    folder = fresh(tmp_path_factory)
    path = tiny_onnx(folder / "m.onnx", meta=meta)
    if raw is not None:  # a value that is not even JSON
        proto = onnx.load(path)
        proto.metadata_props.add(key="distill_lab.steps", value=raw)
        path.write_bytes(proto.SerializeToString())
    chain = read_within_bounds(folder, lambda: lineage_chain(folder / "m.onnx"), ())
    assert chain[0]["path"] == str(folder / "m.onnx")
    assert all(e["problem"] is None or len(e["problem"]) < 10_000 for e in chain)


def test_the_fuzz_harness_catches_a_hang_and_a_changed_file(tmp_path):
    """The harness itself: a reader that writes a file, or one that hangs, fails the property."""
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(AssertionError, match="changed a file"):
        read_within_bounds(tmp_path, lambda: (tmp_path / "f").write_bytes(b"y"), ())
    with pytest.raises(Hung):
        read_within_bounds(tmp_path, lambda: time.sleep(5), (), bound=0.2)
