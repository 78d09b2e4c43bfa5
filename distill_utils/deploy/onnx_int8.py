"""Deployment: ONNX export, int8 quantization, onnxruntime accuracy and latency.

Taught in notebook 09. ``export_onnx`` writes a model as an ONNX graph with a dynamic batch
axis, checks it with ``onnx.checker`` and checks that onnxruntime gives PyTorch's outputs;
``quantize_int8`` turns that graph into an int8 one (static: QDQ with activation ranges
calibrated on training images; or dynamic: weights only, activation ranges per batch at run
time); ``evaluate_onnx`` and ``latency_onnx`` measure it in onnxruntime.

Every ONNX file written here carries its lineage in ``metadata_props`` (``distill_lab.*``):
the checkpoint (or ONNX file) it came from, by SHA-256 and path, and every step since, as a
checkpoint manifest does. ``python -m distill_utils lineage model.onnx`` follows it back. With
a signing key configured (``$DISTILL_SIGNING_KEY``) the file is signed too: an HMAC-SHA256 of
the whole serialized model, its signature entry left out.

Int8 in brief: a tensor ``x`` is stored as ``q = clip(round(x / scale) + zero_point)`` with
one ``scale`` (float) and ``zero_point`` (integer) per tensor, or per output channel for
weights; ``x ~ (q - zero_point) * scale``.
"""
from __future__ import annotations

import copy
import hashlib
import hmac
import json
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from distill_utils import __version__
from distill_utils.common.files import atomic_write_bytes
from distill_utils.models import model_spec
from distill_utils.provenance import lineage
from distill_utils.provenance.checkpoints import lineage_chain as checkpoint_chain
from distill_utils.provenance.checkpoints import signing_key

__all__ = ["DeployError", "export_onnx", "quantize_int8", "evaluate_onnx", "predict_onnx", "latency_onnx",
           "onnx_metadata", "onnx_lineage_chain", "int8_params", "quantize_tensor", "session", "fuse_conv_bn",
           "quantize_torch_int8", "calibration_images", "quantization_params"]

PREFIX = "distill_lab."
MAX_ABS_DIFF = 1e-3   # export check: onnxruntime vs PyTorch logits (fp32 gives ~1e-5)


class DeployError(Exception):
    """An export, quantization or ONNX file failed; the message says what and what to do (notebook 09)."""


# ---------------------------------------------------------------- int8 arithmetic (taught by hand in notebook 09)

def int8_params(lo: float, hi: float, signed: bool = False) -> tuple[float, int]:
    """``(scale, zero_point)`` mapping the float range [lo, hi] (widened to include 0) onto
    uint8 (0..255), as onnxruntime's MinMax calibration does for activations; or, ``signed``,
    symmetrically onto -127..127 with zero point 0, as it does for weights (scale = max|x| / 127)."""
    qmin, qmax = (-127, 127) if signed else (0, 255)
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if signed:  # symmetric: zero_point 0, the range +-max|x|
        hi = max(abs(lo), abs(hi))
        lo = -hi
    scale = (hi - lo) / (qmax - qmin) if hi > lo else 1.0
    zero_point = 0 if signed else int(round(qmin - lo / scale))
    return float(np.float32(scale)), int(np.clip(zero_point, qmin, qmax))


def quantize_tensor(x, scale: float, zero_point: int, signed: bool = False) -> np.ndarray:
    """``clip(round(x / scale) + zero_point)`` as int8/uint8 (round half to even, as ONNX does)."""
    qmin, qmax, dtype = (-128, 127, np.int8) if signed else (0, 255, np.uint8)
    x = np.asarray(x, dtype=np.float32)
    return np.clip(np.rint(x / np.float32(scale)) + zero_point, qmin, qmax).astype(dtype)


# ---------------------------------------------------------------- reading ONNX files safely

def _load_proto(path):
    """Parse and check an ONNX file; every failure is one DeployError naming the file."""
    import onnx
    from google.protobuf.message import DecodeError
    path = Path(path)
    if not path.is_file():
        raise DeployError(f"ONNX file {path} not found; write one with export_onnx(model, path)")
    data = path.read_bytes()  # the file's own size, nothing read from its contents, sizes this
    hint = (f"{path} is not a readable ONNX model ({{why}}): it may be truncated, corrupted or another kind "
            "of file. Export it again with export_onnx(model, path)")
    if not data:
        raise DeployError(hint.format(why="the file is empty"))
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as err:
        raise DeployError(hint.format(why=f"protobuf: {err}")) from None
    if not model.graph.node or not model.opset_import:
        raise DeployError(hint.format(why="no graph or no opset"))
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        raise DeployError(hint.format(why=f"onnx.checker: {str(err).splitlines()[0]}")) from None
    return model, data


def session(path, threads: int | None = None):
    """An onnxruntime CPU session for ``path`` with ``threads`` intra-op threads (default: torch's
    current thread count), one inter-op thread, all graph optimizations."""
    import onnxruntime as ort
    _, data = _load_proto(path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own Fail / InvalidGraph / ... types
        raise DeployError(f"onnxruntime cannot load {path}: {str(err).splitlines()[0]}; "
                          "export it again with export_onnx(model, path)") from None


def _input_shape(sess):
    return sess.get_inputs()[0].name, sess.get_inputs()[0].shape


def _check_images(x, shape, path, what="images"):
    want = tuple(d if isinstance(d, int) else None for d in shape[1:])
    got = tuple(x.shape[1:])
    if x.dim() != len(shape) or any(w is not None and w != g for w, g in zip(want, got)):
        raise DeployError(f"{what} of shape {tuple(x.shape)} do not fit {path}, which takes (batch, "
                          f"{', '.join(str(w) for w in want)}); pass a split of the dataset the model was trained on")


# ---------------------------------------------------------------- metadata: lineage and signature

def onnx_metadata(path) -> dict:
    """The ``distill_lab.*`` metadata of an ONNX file written here, JSON values decoded (notebook 09)."""
    model, _ = _load_proto(path)
    return _metadata(model)


def _metadata(model) -> dict:
    out = {}
    for p in model.metadata_props:
        if p.key.startswith(PREFIX):
            key = p.key[len(PREFIX):]
            try:
                out[key] = json.loads(p.value)
            except ValueError:
                out[key] = p.value
    return out


def _write(model, path, meta: dict) -> Path:
    """Set ``meta`` as metadata (replacing earlier ``distill_lab.*`` entries), sign with the
    configured key, write atomically."""
    keep = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    for k, v in keep:
        model.metadata_props.add(key=k, value=v)
    for k, v in meta.items():
        model.metadata_props.add(key=PREFIX + k, value=json.dumps(v))
    if (key := signing_key()) is not None:
        body = model.SerializeToString(deterministic=True)
        sig = {"alg": "HMAC-SHA256", "key_id": hashlib.sha256(key).hexdigest()[:16],
               "value": hmac.new(key, body, hashlib.sha256).hexdigest()}
        model.metadata_props.add(key=PREFIX + "signature", value=json.dumps(sig))
    data = model.SerializeToString(deterministic=True)
    try:
        return atomic_write_bytes(path, data)
    except OSError as err:
        raise DeployError(f"cannot write {path}: {err.strerror or err}. Free some space or choose a writable "
                          "folder; an existing file at that path was left as it was") from None


def _verify(model, key=None) -> str:
    """'signed', 'no key' or 'unverified' (unsigned or a wrong signature)."""
    if (key := signing_key(key)) is None:
        return "no key"
    props = list(model.metadata_props)
    sig = next((p for p in props if p.key == PREFIX + "signature"), None)
    if sig is None:
        return "unverified"
    unsigned = copy.deepcopy(model)
    del unsigned.metadata_props[:]
    for p in props:
        if p.key != PREFIX + "signature":
            unsigned.metadata_props.add(key=p.key, value=p.value)
    expected = hmac.new(key, unsigned.SerializeToString(deterministic=True), hashlib.sha256).hexdigest()
    return "signed" if hmac.compare_digest(str(json.loads(sig.value).get("value")), expected) else "unverified"


def onnx_lineage_chain(path, key=None) -> list[dict]:
    """Like ``checkpoints.lineage_chain`` for an ONNX file: the file, the ONNX file or checkpoint it
    was made from, and so on back (``python -m distill_utils lineage model.onnx``)."""
    path = Path(path)
    entry = {"depth": 0, "role": "checkpoint", "path": str(path), "sha256": None, "created": None, "steps": [],
             "verified": None, "problem": None}
    try:
        model, data = _load_proto(path)
    except DeployError as err:
        entry["problem"] = str(err)
        return [entry]
    meta = _metadata(model)
    entry.update(sha256=hashlib.sha256(data).hexdigest(), created=meta.get("created"),
                 steps=meta.get("steps", []), verified=_verify(model, key))
    if "parent" not in meta:
        entry["problem"] = "no distill_lab lineage in this file's metadata (not written by distill_utils.deploy)"
        return [entry]
    parent = meta["parent"]
    if parent is None:
        return [entry]
    found = next((p for p in (Path(parent["path"]), path.parent / Path(parent["path"]).name) if p.is_file()), None)
    if found is None:
        rest = [{"depth": 1, "role": "from", "path": parent["path"], "sha256": parent["sha256"], "created": None,
                 "steps": [], "verified": None, "problem": "file not found"}]
    elif found.suffix == ".onnx":
        rest = onnx_lineage_chain(found, key)
        if rest[0]["sha256"] and rest[0]["sha256"] != parent["sha256"]:
            rest[0]["problem"] = f"this file's SHA-256 is {rest[0]['sha256'][:12]}..., not the recorded one"
    else:
        rest = checkpoint_chain(found, key)
        if rest[0]["sha256"] and rest[0]["sha256"] != parent["sha256"] and not rest[0]["problem"]:
            rest[0]["problem"] = f"this file's SHA-256 is {rest[0]['sha256'][:12]}..., not the recorded one"
    for e in rest:
        e["depth"] += 1
    rest[0]["role"] = "from"
    return [entry, *rest]


# ---------------------------------------------------------------- export

def _example(model, example_input):
    if example_input is not None:
        if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2:
            raise DeployError("example_input must be a batch tensor like torch.zeros(1, 1, 28, 28)")
        return example_input.detach().cpu().float().contiguous()
    kwargs = getattr(model, "spec", {}).get("kwargs", {})
    return torch.zeros(1, kwargs.get("in_channels", 1), kwargs.get("image_size", 28), kwargs.get("image_size", 28))


def export_onnx(model, path, example_input=None, opset: int = 20) -> Path:
    """Write ``model`` as an ONNX graph at ``path`` with a dynamic batch axis (notebook 09).

    Uses the ``torch.export``-based exporter, whose optimizer folds each BatchNorm into the
    convolution before it. The graph is checked with ``onnx.checker``, then run in onnxruntime
    on ``example_input`` (default: zeros shaped like one image of the model's dataset) and on a
    batch of 3 random images; the largest absolute difference from PyTorch's logits is stored
    as ``max_abs_diff`` in the file's metadata (``onnx_metadata(path)``), and more than
    ``MAX_ABS_DIFF`` is an error. The file records its lineage (the model's source checkpoint
    by SHA-256, and the steps since). Written atomically: a failure leaves any file at
    ``path`` as it was. Returns ``path``.
    """
    import onnx
    path = Path(path)
    if path.suffix != ".onnx":
        raise DeployError(f"{path}: an ONNX path must end in .onnx (e.g. 'model.onnx')")
    if not isinstance(model, torch.nn.Module):
        raise DeployError(f"export_onnx needs a torch.nn.Module, got {type(model).__name__}")
    x = _example(model, example_input)
    net = copy.deepcopy(model).cpu().float().eval().to(memory_format=torch.contiguous_format)
    batch = torch.export.Dim("batch", min=1, max=65536)
    first_arg = next(iter(__import__("inspect").signature(net.forward).parameters))
    try:
        with torch.inference_mode(False), torch.no_grad():
            net(x)  # a model that cannot run on the example fails here, with torch's own message
            program = torch.onnx.export(net, (x,), None, dynamo=True, opset_version=opset, verbose=False,
                                        input_names=["images"], output_names=["logits"],
                                        dynamic_shapes={first_arg: {0: batch}}, external_data=False)
    except Exception as err:  # torch.export raises many types (Unsupported, UserError, TorchExportError, ...)
        why = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise DeployError(f"cannot export {type(model).__name__} to ONNX: {why[:300]}. The forward pass must be "
                          "traceable (no Python control flow on tensor values, no unsupported ops); "
                          "models from distill_utils.models.build_model export") from None
    proto = program.model_proto
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as err:
        raise DeployError(f"the exported graph of {type(model).__name__} fails onnx.checker: "
                          f"{str(err).splitlines()[0]}") from None
    record = lineage.get(model)
    parent = record["parents"][0] if record["parents"] else None
    meta = {"format": "distill-lab-onnx", "version": __version__, "architecture": _spec(model),
            "parent": parent, "steps": [*record["steps"], {"op": "export_onnx", "opset": opset}],
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "max_abs_diff": None}
    with tempfile.TemporaryDirectory() as tmp:
        check = _write(proto, Path(tmp) / "check.onnx", meta)
        g = torch.Generator().manual_seed(0)
        probe = torch.cat([x, torch.randn(3, *x.shape[1:], generator=g)])
        with torch.no_grad():
            expected = net(probe).numpy()
        got = predict_onnx(check, probe)
    diff = float(np.abs(got - expected).max())
    if not diff <= MAX_ABS_DIFF:
        raise DeployError(f"onnxruntime's outputs differ from PyTorch's by up to {diff:.3g} (allowed {MAX_ABS_DIFF}) "
                          f"for the exported {type(model).__name__}; the graph is not faithful, nothing was written")
    meta["max_abs_diff"] = diff
    return _write(proto, path, meta)


def _spec(model):
    try:
        return model_spec(model)
    except ValueError:
        return {"name": type(model).__name__, "kwargs": {}}


# ---------------------------------------------------------------- quantization

class _Calibration:
    """onnxruntime's CalibrationDataReader protocol: ``get_next()`` -> {input: batch} or None."""

    def __init__(self, name, x, batch_size=64):
        self.batches = iter([{name: x[i:i + batch_size].numpy()} for i in range(0, len(x), batch_size)])

    def get_next(self):
        return next(self.batches, None)


def calibration_images(calibration, images: int = 512) -> torch.Tensor:
    """The images ``quantize_int8`` calibrates on: a fixed random subset (seed 0) of ``images``
    images of ``calibration`` (a Split or an image tensor) (notebook 09)."""
    return _calibration_images(calibration, images, None, "the model")


def _calibration_images(calibration, images, shape, path):
    x = getattr(calibration, "x", calibration)
    if not isinstance(x, torch.Tensor):
        raise DeployError(f"calibration must be a data Split (e.g. ds.train) or an image tensor, got "
                          f"{type(calibration).__name__}")
    if shape is not None:
        _check_images(x, shape, path, "calibration images")
    if not 1 <= images <= len(x):
        raise DeployError(f"images={images} calibration images asked for, the split has {len(x)}; "
                          f"use 1 to {len(x)} (a few hundred are enough)")
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:images]
    return x[idx].detach().cpu().float().contiguous()


def _first_conv(model) -> list[str]:
    """The name of the graph's first Conv node, when it reads the model input."""
    first = model.graph.input[0].name
    return [n.name for n in model.graph.node if n.op_type == "Conv" and first in n.input][:1]


def relu_before_pool(model, fp32_nodes=()) -> int:
    """Move each ReLU that directly follows a MaxPool in front of it, in place; returns how many moved.

    Exact: max-pooling commutes with ReLU (a non-decreasing function), so the float model
    computes the same values. The models here pool first (ReLU on 4x fewer values), and
    onnxruntime's QOperator quantizer then drops the ReLU while the pool passes on the
    convolution's int8 range, negative values included: the next layer sees them (measured in
    notebook 09). Moved in front, the ReLU is fused into the convolution's int8 output.
    A pool reading a node of ``fp32_nodes`` keeps its ReLU after it: there the ReLU stays in
    float and is right, and with a ReLU before it onnxruntime ran that pool outside its blocked
    memory layout, 5x slower (a per-node profile of the teacher at batch 256)."""
    from onnx import NodeProto
    graph = model.graph
    users, made_by = {}, {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
        made_by.update(dict.fromkeys(node.output, node.name))
    outputs = {o.name for o in graph.output}
    moved = 0
    for pool in [n for n in graph.node if n.op_type == "MaxPool" and len([o for o in n.output if o]) == 1]:
        after = users.get(pool.output[0], [])
        if (pool.output[0] in outputs or len(after) != 1 or after[0].op_type != "Relu"
                or made_by.get(pool.input[0]) in fp32_nodes):
            continue
        relu, (x, mid, y) = after[0], (pool.input[0], pool.output[0], after[0].output[0])
        relu.input[0], relu.output[0], pool.input[0], pool.output[0] = x, mid, mid, y
        first = NodeProto()
        first.CopyFrom(relu)
        relu.CopyFrom(pool)  # the pool takes the ReLU's later place in the list, the ReLU the pool's
        pool.CopyFrom(first)
        moved += 1
        stale = [v for v in graph.value_info if v.name == mid]  # its shape is now the unpooled one
        for v in stale:
            graph.value_info.remove(v)
    return moved


def quantize_int8(onnx_path, out_path, calibration=None, method: str = "static", images: int = 512,
                  keep_first_conv: bool = True, per_channel: bool = True, quant_format: str = "qdq",
                  activations: str = "u8", reduce_range: bool = False, move_relu: bool = True) -> Path:
    """Post-training int8 quantization with onnxruntime of an ``export_onnx`` file (notebook 09).

    ``method="static"``: weights int8 (per output channel with ``per_channel``), activation
    ranges calibrated (MinMax) on ``images`` images of ``calibration`` (a Split such as
    ``ds.train``, or an image tensor; a fixed random subset), stored as QuantizeLinear /
    DequantizeLinear pairs (``quant_format="qdq"``) that onnxruntime fuses into int8 kernels, or
    as QLinear operators (``"qoperator"``). ``activations``: "u8" or "s8". ``keep_first_conv``
    leaves the first convolution in fp32: with one input channel it has almost no arithmetic to
    speed up, and quantizing it only adds conversions (measured in notebook 09 and
    ``bench/deploy_speed.py``). ``reduce_range``: 7-bit weights, for CPUs whose int8 kernels
    can saturate. ``move_relu`` (static): ``relu_before_pool`` first, which QOperator needs to stay
    accurate. ``method="dynamic"``: weights only; activation ranges are
    computed per batch at run time, no calibration needed.
    Writes ``out_path`` atomically with its lineage (the fp32 file as parent). Returns it.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_dynamic,
        quantize_static,
    )
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if method not in ("static", "dynamic"):
        raise DeployError(f"method must be 'static' or 'dynamic', got {method!r}")
    if quant_format not in ("qdq", "qoperator") or activations not in ("u8", "s8"):
        raise DeployError(f"quant_format must be 'qdq' or 'qoperator' and activations 'u8' or 's8'; "
                          f"got {quant_format!r}, {activations!r}")
    if out_path.suffix != ".onnx":
        raise DeployError(f"{out_path}: an ONNX path must end in .onnx (e.g. 'model_int8.onnx')")
    source, data = _load_proto(onnx_path)
    meta = _metadata(source)
    sess = session(onnx_path)
    name, shape = _input_shape(sess)
    x = _calibration_images(calibration, images, shape, onnx_path) if method == "static" else None
    step = {"op": "quantize_int8", "method": method}
    with tempfile.TemporaryDirectory() as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        prepared = onnx.load(str(pre))
        keep = _first_conv(prepared) if keep_first_conv else []
        if method == "static" and move_relu:
            step["relu_moved_before_pool"] = relu_before_pool(prepared, keep) or None
            onnx.save(prepared, str(pre))
        if method == "static":
            quantize_static(str(pre), str(out), _Calibration(name, x), per_channel=per_channel,
                            quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
                            activation_type=QuantType.QUInt8 if activations == "u8" else QuantType.QInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=keep,
                            calibrate_method=CalibrationMethod.MinMax, reduce_range=reduce_range)
            step.update(format=quant_format, activations=activations, per_channel=per_channel, images=images,
                        reduce_range=reduce_range or None, fp32_nodes=keep)
        else:
            quantize_dynamic(str(pre), str(out), per_channel=per_channel, weight_type=QuantType.QInt8,
                             nodes_to_exclude=keep, reduce_range=reduce_range)
            step.update(per_channel=per_channel, fp32_nodes=keep)
        model = onnx.load(str(out))
    step = {k: v for k, v in step.items() if v is not None}
    meta.update(parent={"sha256": hashlib.sha256(data).hexdigest(), "path": str(onnx_path.resolve())},
                steps=[*meta.get("steps", []), step], created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    meta.pop("signature", None)
    return _write(model, out_path, meta)


def quantization_params(path) -> dict:
    """``{tensor name: (scale, zero_point)}`` of every activation a QDQ file quantizes (notebook 09)."""
    from onnx import numpy_helper
    model, _ = _load_proto(path)
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: (float(consts[n.input[1]]), int(consts[n.input[2]]))
            for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[1] in consts}


# ---------------------------------------------------------------- PyTorch's own paths, for comparison

def fuse_conv_bn(model):
    """A copy of ``model`` in eval mode with every Conv2d folded into the BatchNorm2d after it
    (the BatchNorm becomes Identity): the same outputs, one op fewer per block (notebook 09)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    fused = copy.deepcopy(model).eval()
    for seq in [m for m in fused.modules() if isinstance(m, torch.nn.Sequential)]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], torch.nn.Conv2d) and isinstance(seq[i + 1], torch.nn.BatchNorm2d):
                seq[i], seq[i + 1] = fuse_conv_bn_eval(seq[i], seq[i + 1]), torch.nn.Identity()
    lineage.inherit(fused, model)
    return fused


class _Logits(torch.nn.Module):
    """``model(x)`` only, so FX traces the default ``return_features=False`` branch."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


def quantize_torch_int8(model, calibration, images: int = 512):
    """PyTorch's own post-training int8 (FX graph mode, x86/oneDNN backend): the onnxruntime
    path's rival in notebook 09. Static, per-channel weights, calibrated like ``quantize_int8``.
    Returns a new CPU model (fp32 in, fp32 logits out)."""
    import warnings

    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    x = _calibration_images(calibration, images, ["batch", *_example(model, None).shape[1:]], type(model).__name__)
    torch.backends.quantized.engine = "x86"
    net = _Logits(copy.deepcopy(model).cpu().float().eval().to(memory_format=torch.contiguous_format))
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        prepared = prepare_fx(net, get_default_qconfig_mapping("x86"), (x[:1],))
        with torch.no_grad():
            for i in range(0, len(x), 64):
                prepared(x[i:i + 64])
        return convert_fx(prepared).eval()


# ---------------------------------------------------------------- running

def predict_onnx(path, x, batch_size: int = 256, threads: int | None = None, sess=None) -> np.ndarray:
    """Logits (N, classes) of the ONNX model at ``path`` for the image tensor ``x``, in batches."""
    sess = sess or session(path, threads)
    name, shape = _input_shape(sess)
    _check_images(x, shape, path)
    x = x.detach().cpu().float()
    return np.concatenate([sess.run(None, {name: x[i:i + batch_size].contiguous().numpy()})[0]
                           for i in range(0, len(x), batch_size)])


def evaluate_onnx(path, split, batch_size: int = 256, threads: int | None = None) -> float:
    """Accuracy in [0, 1] of the ONNX model at ``path`` on ``split`` in onnxruntime (notebook 09)."""
    if not hasattr(split, "x") or not hasattr(split, "y"):
        raise DeployError(f"split must be a data Split (e.g. ds.test), got {type(split).__name__}")
    logits = predict_onnx(path, split.x, batch_size, threads)
    return float((logits.argmax(1) == split.y.cpu().numpy()).mean())


def latency_onnx(path, batch_size: int = 1, repeats: int = 30, warmup: int = 5, threads: int | None = None,
                 example=None) -> dict:
    """Median wall time of one onnxruntime run of a batch, in ms, after ``warmup`` untimed runs
    (notebook 09). ``threads`` intra-op threads (default: torch's current count). Returns the
    keys of ``measure.latency_ms``: latency_ms, latency_iqr_ms, threads, batch_size."""
    if repeats < 1 or warmup < 0 or batch_size < 1:
        raise DeployError(f"need repeats >= 1, warmup >= 0, batch_size >= 1; got {repeats}, {warmup}, {batch_size}")
    threads = threads or torch.get_num_threads()
    sess = session(path, threads)
    name, shape = _input_shape(sess)
    if example is None:
        dims = [d if isinstance(d, int) else 1 for d in shape[1:]]
        example = torch.randn(batch_size, *dims, generator=torch.Generator().manual_seed(0))
    _check_images(example, shape, path)
    feed = {name: example[:batch_size].detach().cpu().float().contiguous().numpy()}
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        sess.run(None, feed)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000.0)
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else times * 3
    return {"latency_ms": statistics.median(times), "latency_iqr_ms": q3 - q1, "threads": threads,
            "batch_size": batch_size}
