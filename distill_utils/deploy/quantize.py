"""Post-training int8 quantization: onnxruntime's (static QDQ / QOperator, or dynamic) and, for
comparison, PyTorch's own (FX graph mode, x86) (notebook 09).

``quantize_int8`` turns an ``export_onnx`` file into an int8 one: static (weights int8,
activation ranges calibrated on training images) or dynamic (weights only, activation ranges
per batch at run time). Its settings are one ``Int8Options``.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

from distill_utils.deploy.export import (
    DeployError,
    check_images,
    example_batch,
    fixed_batch,
    input_shape,
    read_onnx,
    read_trusted,
    session_of,
)
from distill_utils.deploy.export import write_onnx as write_onnx_file
from distill_utils.provenance.lineage import Lineage, file_ref
from distill_utils.provenance.onnx_meta import lineage_metadata, read_metadata

__all__ = ["Int8Options", "quantize_int8", "calibration_images", "relu_before_pool", "quantization_params",
           "fuse_conv_bn", "quantize_torch_int8"]


@dataclasses.dataclass(frozen=True)
class Int8Options:
    """The settings of ``quantize_int8`` (notebook 09).

    ``method``: "static" (weights int8, per output channel with ``per_channel``; activation ranges
    calibrated (MinMax) on ``images`` images) or "dynamic" (weights only; activation ranges per
    batch at run time, no calibration). Static files store QuantizeLinear / DequantizeLinear
    pairs (``quant_format="qdq"``) that onnxruntime fuses into int8 kernels, or QLinear operators
    (``"qoperator"``); ``activations``: "u8" or "s8". ``keep_first_conv`` leaves the first
    convolution in fp32: with one input channel it has almost no arithmetic to speed up, and
    quantizing it only adds conversions (measured in notebook 09 and ``bench/deploy_speed.py``).
    ``reduce_range``: 7-bit weights, for CPUs whose int8 kernels can saturate. ``move_relu``
    (static): ``relu_before_pool`` first, which QOperator needs to stay accurate.
    """
    method: str = "static"
    images: int = 512
    keep_first_conv: bool = True
    per_channel: bool = True
    quant_format: str = "qdq"
    activations: str = "u8"
    reduce_range: bool = False
    move_relu: bool = True

    def __post_init__(self):
        if isinstance(self.images, bool) or not isinstance(self.images, int) or self.images < 1:
            raise DeployError(f"images must be a positive integer (calibration images, e.g. 512), got {self.images!r}")
        flags = [f for f in ("keep_first_conv", "per_channel", "reduce_range", "move_relu")
                 if not isinstance(getattr(self, f), bool)]
        if flags:
            raise DeployError(f"{flags[0]} must be True or False, got {getattr(self, flags[0])!r}")
        if self.method not in ("static", "dynamic"):
            raise DeployError(f"method must be 'static' or 'dynamic', got {self.method!r}")
        if self.quant_format not in ("qdq", "qoperator") or self.activations not in ("u8", "s8"):
            raise DeployError(f"quant_format must be 'qdq' or 'qoperator' and activations 'u8' or 's8'; "
                              f"got {self.quant_format!r}, {self.activations!r}")

    @classmethod
    def make(cls, options: Int8Options | None = None, **settings) -> Int8Options:
        """``options`` (default: the defaults) with ``settings`` replacing some of them."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise DeployError(f"unknown quantize_int8 setting(s) {unknown}; the settings are {known}")
        return dataclasses.replace(options or cls(), **settings)


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol: ``get_next()`` -> {input: batch} or None."""

    def __init__(self, name, x, batch_size=64, whole=False):
        starts = range(0, len(x) - batch_size + 1 if whole else len(x), batch_size)  # whole: full batches only
        self.batches = iter([{name: x[i:i + batch_size].numpy()} for i in starts])

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
        check_images(x, shape, path, "calibration images")
    if not 1 <= images <= len(x):
        raise DeployError(f"images={images} calibration images asked for, the split has {len(x)}; "
                          f"use 1 to {len(x)} (a few hundred are enough)")
    if shape is not None and (fixed := fixed_batch(shape)) is not None and images < fixed:
        raise DeployError(f"{path} takes a fixed batch of {fixed} images; calibrate on at least that many "
                          f"(images={fixed})")
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


INT8_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
            "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul", "QLinearAveragePool",
            "QLinearGlobalAveragePool"}


def _refuse_int8(source, meta: dict, path: Path) -> None:
    """DeployError when ``source`` is already quantized: onnxruntime's quantizer would write a graph that
    onnx.checker rejects (and quantizing twice only loses accuracy)."""
    ops = sorted({n.op_type for n in source.graph.node} & INT8_OPS)
    steps = meta.get("steps") if isinstance(meta.get("steps"), list) else []
    if ops or any(isinstance(s, dict) and s.get("op") == "quantize_int8" for s in steps):
        parent = meta.get("parent") if isinstance(meta.get("parent"), dict) else {}
        fp32 = f" ({parent['path']})" if isinstance(parent.get("path"), str) else ""
        raise DeployError(f"{path} is already int8 ({', '.join(ops) or 'quantize_int8'} in it); quantize its fp32 "
                          f"file{fp32} instead")


def _quantize(pre: Path, out: Path, x, name: str, opts: Int8Options, fixed: int | None) -> dict:
    """Run onnxruntime's quantizer on the prepared file ``pre`` into ``out``; returns the lineage step."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    prepared = onnx.load(str(pre))
    keep = _first_conv(prepared) if opts.keep_first_conv else []
    step = {"method": opts.method}
    if opts.method == "static" and opts.move_relu:
        step["relu_moved_before_pool"] = relu_before_pool(prepared, keep) or None
        onnx.save(prepared, str(pre))
    if opts.method == "static":
        calibration = _Calibration(name, x, fixed or 64, whole=fixed is not None)  # a fixed batch takes whole batches
        quantize_static(str(pre), str(out), calibration, per_channel=opts.per_channel,
                        quant_format=QuantFormat.QDQ if opts.quant_format == "qdq" else QuantFormat.QOperator,
                        activation_type=QuantType.QUInt8 if opts.activations == "u8" else QuantType.QInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=keep,
                        calibrate_method=CalibrationMethod.MinMax, reduce_range=opts.reduce_range)
        step.update(format=opts.quant_format, activations=opts.activations, per_channel=opts.per_channel,
                    images=opts.images, reduce_range=opts.reduce_range or None, fp32_nodes=keep)
    else:
        quantize_dynamic(str(pre), str(out), per_channel=opts.per_channel, weight_type=QuantType.QInt8,
                         nodes_to_exclude=keep, reduce_range=opts.reduce_range)
        step.update(per_channel=opts.per_channel, fp32_nodes=keep)
    return step


def quantize_int8(onnx_path, out_path, calibration=None, options: Int8Options | None = None, **settings) -> Path:
    """Post-training int8 quantization with onnxruntime of an ``export_onnx`` file (notebook 09).

    ``options`` (an ``Int8Options``) and/or its fields as keywords (``method``, ``images``,
    ``keep_first_conv``, ``per_channel``, ``quant_format``, ``activations``, ``reduce_range``,
    ``move_relu``) choose how; see ``Int8Options``. Static quantization calibrates on a fixed
    random subset of ``images`` images of ``calibration`` (a Split such as ``ds.train``, or an
    image tensor). Writes ``out_path`` atomically with its lineage (the fp32 file as parent, its
    steps and this one). Returns it.
    """
    import onnx
    from onnxruntime.quantization import quant_pre_process
    opts = Int8Options.make(options, **settings)
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if out_path.suffix != ".onnx":
        raise DeployError(f"{out_path}: an ONNX path must end in .onnx (e.g. 'model_int8.onnx')")
    if out_path.resolve() == onnx_path.resolve():
        raise DeployError(f"{out_path} is the fp32 file being quantized; write the int8 model to another file "
                          "(e.g. model_int8.onnx) so the fp32 one is kept")
    source, data = read_trusted(onnx_path)  # with a key: a tampered or unsigned file is never re-signed as int8
    meta = read_metadata(source)
    _refuse_int8(source, meta, onnx_path)
    name, shape = input_shape(session_of(data, onnx_path))
    x = _calibration_images(calibration, opts.images, shape, onnx_path) if opts.method == "static" else None
    try:
        lineage = Lineage.from_record({"parents": [], "steps": meta.get("steps", [])})
    except ValueError as err:
        raise DeployError(f"{onnx_path}: {err}; export it again with export_onnx(model, path)") from None
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(data)  # the bytes checked above, not whatever is at onnx_path now
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            step = _quantize(pre, out, x, name, opts, fixed_batch(shape))
            model = onnx.load(str(out))
            onnx.checker.check_model(model)
        except Exception as err:  # onnxruntime's quantizer and onnx raise many types
            why = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
            raise DeployError(f"cannot quantize {onnx_path}: {why[:300]}; nothing was written") from None
    parent = file_ref({"sha256": hashlib.sha256(data).hexdigest(), "path": str(onnx_path.resolve())})
    lineage = Lineage((parent,), lineage.steps).then("quantize_int8", **step)
    meta.update(lineage_metadata(lineage.record()), created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    meta.pop("signature", None)
    return write_onnx_file(model, out_path, meta)


def quantization_params(path) -> dict:
    """``{tensor name: (scale, zero_point)}`` of every activation a QDQ file quantizes (notebook 09)."""
    from onnx import numpy_helper
    model, _ = read_onnx(path)  # only looks at the file's constants
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
    Returns a new CPU model (fp32 in, fp32 logits out). PyTorch's process-wide quantized engine
    is set to "x86" while it quantizes and restored afterwards."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    x = _calibration_images(calibration, images, ["batch", *example_batch(model).shape[1:]], type(model).__name__)
    net = _Logits(copy.deepcopy(model).cpu().float().eval().to(memory_format=torch.contiguous_format))
    engine = torch.backends.quantized.engine
    torch.backends.quantized.engine = "x86"
    try:
        with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
            warnings.simplefilter("ignore")
            prepared = prepare_fx(net, get_default_qconfig_mapping("x86"), (x[:1],))
            with torch.no_grad():
                for i in range(0, len(x), 64):
                    prepared(x[i:i + 64])
            return convert_fx(prepared).eval()
    finally:
        torch.backends.quantized.engine = engine
