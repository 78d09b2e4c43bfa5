"""ONNX export, safe reading of ONNX files, and onnxruntime sessions (notebook 09).

``export_onnx`` writes a model as an ONNX graph with a dynamic batch axis, checks it with
``onnx.checker`` and checks that onnxruntime gives PyTorch's outputs. Every file written here
carries its lineage and, with a signing key configured, a signature in its metadata
(``provenance.onnx_meta``): ``python -m distill_utils lineage model.onnx`` follows it back.
Files are used the way checkpoints are: ``read_trusted`` checks the signature (with a key
configured) before a session runs a file or the quantizer reads it.
"""
from __future__ import annotations

import copy
import inspect
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from distill_utils import __version__
from distill_utils.models import model_spec
from distill_utils.provenance import onnx_meta
from distill_utils.provenance.lineage import Lineage
from distill_utils.provenance.signing import SigningKeyError

__all__ = ["DeployError", "export_onnx", "onnx_metadata", "session", "session_of", "read_onnx", "read_trusted",
           "write_onnx", "input_shape", "fixed_batch", "check_images", "MAX_ABS_DIFF", "MIN_OPSET"]

MAX_ABS_DIFF = 1e-3   # export check: onnxruntime vs PyTorch logits (fp32 gives ~1e-5)
MIN_OPSET = 18        # torch.onnx's exporter writes opset 18 or later (it converts to older ones badly)


class DeployError(Exception):
    """An export, quantization or ONNX file failed; the message says what and what to do (notebook 09)."""


def read_onnx(path):
    """``(model proto, file bytes)`` of a checked ONNX file; DeployError naming the file if it is not one."""
    try:
        return onnx_meta.load_onnx(path)
    except onnx_meta.OnnxFileError as err:
        raise DeployError(str(err)) from None


def read_trusted(path, allow_unverified: bool = False):
    """``read_onnx``, then the signature check every use of a file makes (``onnx_meta.check_trust``):
    with a signing key configured, an unsigned or tampered file is a DeployError."""
    model, data = read_onnx(path)
    try:
        onnx_meta.check_trust(model, path, allow_unverified=allow_unverified)
    except (onnx_meta.OnnxFileError, SigningKeyError) as err:
        raise DeployError(str(err)) from None
    return model, data


def write_onnx(model, path, meta: dict) -> Path:
    """``onnx_meta.write_onnx`` (metadata, signature, atomic write) with its failures as DeployError."""
    try:
        return onnx_meta.write_onnx(model, path, meta)
    except (onnx_meta.OnnxFileError, SigningKeyError) as err:
        raise DeployError(str(err)) from None


def onnx_metadata(path) -> dict:
    """The ``distill_lab.*`` metadata of an ONNX file written here, JSON values decoded (notebook 09)."""
    return onnx_meta.read_metadata(read_onnx(path)[0])


def session(path, threads: int | None = None, allow_unverified: bool = False):
    """An onnxruntime CPU session for ``path`` with ``threads`` intra-op threads (default: torch's
    current thread count), one inter-op thread, all graph optimizations (notebook 09). With a
    signing key configured the file must be signed (``allow_unverified=True`` runs it anyway)."""
    return session_of(read_trusted(path, allow_unverified)[1], path, threads)


def session_of(data: bytes, path, threads: int | None = None):
    """A session for the ONNX bytes ``data`` (already read and checked from ``path``, named in errors)."""
    import onnxruntime as ort
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


def input_shape(sess):
    """``(name, shape)`` of a session's first input (shape entries: ints, or names for dynamic axes)."""
    return sess.get_inputs()[0].name, sess.get_inputs()[0].shape


def fixed_batch(shape) -> int | None:
    """The batch size an input ``shape`` fixes (an int first axis), or None for a dynamic batch axis."""
    return shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None


def check_images(x, shape, path, what="images", whole_batch: bool = False):
    """DeployError unless the image tensor ``x`` fits an input of ``shape`` (batch first); with
    ``whole_batch``, ``x`` is one batch and must also be the batch size a fixed-batch model takes."""
    if not isinstance(x, torch.Tensor):
        raise DeployError(f"{what} must be an image tensor (e.g. ds.test.x), got {type(x).__name__}")
    want = tuple(d if isinstance(d, int) else None for d in shape[1:])
    got = tuple(x.shape[1:])
    if x.dim() != len(shape) or any(w is not None and w != g for w, g in zip(want, got)):
        raise DeployError(f"{what} of shape {tuple(x.shape)} do not fit {path}, which takes (batch, "
                          f"{', '.join(str(w) for w in want)}); pass a split of the dataset the model was trained on")
    if whole_batch and (fixed := fixed_batch(shape)) is not None and len(x) != fixed:
        raise DeployError(f"{path} takes a fixed batch of {fixed} image(s), not {len(x)}: use batch_size={fixed}, "
                          "or export the model again with a dynamic batch axis (export_onnx does)")


def example_batch(model, example_input=None) -> torch.Tensor:
    """``example_input`` checked, or zeros shaped like one image of the model's dataset."""
    if example_input is not None:
        if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2:
            raise DeployError("example_input must be a batch tensor like torch.zeros(1, 1, 28, 28)")
        return example_input.detach().cpu().float().contiguous()
    kwargs = getattr(model, "spec", {}).get("kwargs", {})
    return torch.zeros(1, kwargs.get("in_channels", 1), kwargs.get("image_size", 28), kwargs.get("image_size", 28))


def _spec(model):
    try:
        return model_spec(model)
    except ValueError:
        return {"name": type(model).__name__, "kwargs": {}}


def _check_opset(opset) -> None:
    import onnx
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise DeployError(f"opset = {opset!r}: the exporter writes ONNX opsets {MIN_OPSET} to {newest} (this onnx "
                          "knows no newer one); pass one of those, e.g. opset=20 (the default)")


def _written_opset(proto) -> int | None:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def _lineage_metadata(lineage, opset: int) -> dict:
    if lineage is not None and not isinstance(lineage, Lineage):
        raise DeployError(f"lineage must be a Lineage (e.g. Lineage.of(manifest) for a loaded checkpoint), "
                          f"got {type(lineage).__name__}")
    try:
        return onnx_meta.lineage_metadata((lineage or Lineage()).then("export_onnx", opset=opset).record())
    except ValueError as err:
        raise DeployError(f"cannot record the lineage: {err}; pass a Lineage with one parent") from None


def _trace(net, x, opset: int):
    """The ``torch.onnx`` (dynamo) export of ``net`` with a dynamic batch axis, as an ONNX proto."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    first_arg = next(iter(inspect.signature(net.forward).parameters))
    try:
        with torch.inference_mode(False), torch.no_grad():
            net(x)  # a model that cannot run on the example fails here, with torch's own message
            program = torch.onnx.export(net, (x,), None, dynamo=True, opset_version=opset, verbose=False,
                                        input_names=["images"], output_names=["logits"],
                                        dynamic_shapes={first_arg: {0: batch}}, external_data=False)
    except Exception as err:  # torch.export raises many types (Unsupported, UserError, TorchExportError, ...)
        why = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise DeployError(f"cannot export {type(net).__name__} to ONNX: {why[:300]}. The forward pass must be "
                          "traceable (no Python control flow on tensor values, no unsupported ops); "
                          "models from distill_utils.models.build_model export") from None
    return program.model_proto


def export_onnx(model, path, example_input=None, opset: int = 20, lineage: Lineage | None = None) -> Path:
    """Write ``model`` as an ONNX graph at ``path`` with a dynamic batch axis (notebook 09).

    Uses the ``torch.export``-based exporter, whose optimizer folds each BatchNorm into the
    convolution before it. The graph is checked with ``onnx.checker``, then run in onnxruntime
    on ``example_input`` (default: zeros shaped like one image of the model's dataset) and on a
    batch of 3 random images; the largest absolute difference from PyTorch's logits is stored
    as ``max_abs_diff`` in the file's metadata (``onnx_metadata(path)``), and more than
    ``MAX_ABS_DIFF`` is an error. The file records ``lineage`` (a ``Lineage``, e.g.
    ``Lineage.of(manifest)`` for a model loaded from a checkpoint) and this export as its last
    step. Written atomically: a failure leaves any file at ``path`` as it was. Returns ``path``.
    """
    import onnx
    path = Path(path)
    if path.suffix != ".onnx":
        raise DeployError(f"{path}: an ONNX path must end in .onnx (e.g. 'model.onnx')")
    if not isinstance(model, torch.nn.Module):
        raise DeployError(f"export_onnx needs a torch.nn.Module, got {type(model).__name__}")
    _check_opset(opset)
    recorded = _lineage_metadata(lineage, opset)
    x = example_batch(model, example_input)
    net = copy.deepcopy(model).cpu().float().eval().to(memory_format=torch.contiguous_format)
    proto = _trace(net, x, opset)
    if (written := _written_opset(proto)) != opset:  # the exporter can fall back silently: record the truth or stop
        raise DeployError(f"asked for opset {opset}, the exporter wrote opset {written}; nothing was written. "
                          "Choose an opset it supports (e.g. the default, 20)")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as err:
        raise DeployError(f"the exported graph of {type(model).__name__} fails onnx.checker: "
                          f"{str(err).splitlines()[0]}") from None
    meta = {"format": "distill-lab-onnx", "version": __version__, "architecture": _spec(model), **recorded,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "max_abs_diff": None}
    with tempfile.TemporaryDirectory() as tmp:
        check = session(write_onnx(proto, Path(tmp) / "check.onnx", meta))
        probe = torch.cat([x, torch.randn(3, *x.shape[1:], generator=torch.Generator().manual_seed(0))])
        with torch.no_grad():
            expected = net(probe).numpy()
        got = check.run(None, {input_shape(check)[0]: probe.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if not diff <= MAX_ABS_DIFF:
        raise DeployError(f"onnxruntime's outputs differ from PyTorch's by up to {diff:.3g} (allowed {MAX_ABS_DIFF}) "
                          f"for the exported {type(model).__name__}; the graph is not faithful, nothing was written")
    meta["max_abs_diff"] = diff
    return write_onnx(proto, path, meta)
