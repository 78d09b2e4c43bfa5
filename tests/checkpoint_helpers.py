"""Helpers shared by the tests of model files: edit a checkpoint's manifest in place, rewrite a file in
the first format, write a tiny ONNX model. A helper module, not a test module (tests import it, never
each other)."""
import hashlib
import json

from distill_utils.provenance.checkpoints import verify_checkpoint
from distill_utils.provenance.format import META_KEY, split_header, with_manifest


def rewrite_manifest(weights, **changes):
    """Edit the manifest inside a checkpoint (format 3); its tensor table, tensors and their hash stay as they were."""
    blob = weights.read_bytes()
    header, _ = split_header(blob)
    manifest = json.loads(header["__metadata__"][META_KEY])
    weights.write_bytes(with_manifest(blob, {**manifest, **changes}))


def as_format_1(weights):
    """Rewrite a checkpoint in the first format: plain safetensors, the manifest only in the .json."""
    from safetensors.torch import load, save
    manifest = {k: v for k, v in verify_checkpoint(weights).items()
                if k not in ("verified", "path", "content_sha256", "tensor_bytes", "signature")}
    plain = save(load(weights.read_bytes()))
    weights.write_bytes(plain)
    manifest.update(format_version=1, sha256=hashlib.sha256(plain).hexdigest(), bytes=len(plain))
    weights.with_suffix(".json").write_text(json.dumps(manifest))
    return manifest


def tiny_onnx(path, batch="batch", int8=False, meta=None, key=None):
    """A tiny ONNX classifier (images (batch, 1, 2, 2) -> logits (batch, 3)) written by ``onnx_meta.write_onnx``
    with ``meta`` (default: no parent, one export step) and, with ``key`` or the environment's, a signature;
    ``batch`` an int fixes the batch size, ``int8`` puts a QuantizeLinear / DequantizeLinear pair in front."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from distill_utils.provenance import onnx_meta
    weights = [numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "w")]
    nodes, flat = [helper.make_node("Flatten", ["images"], ["flat"])], "flat"
    if int8:
        weights += [helper.make_tensor("s", TensorProto.FLOAT, [], [0.05]),
                    helper.make_tensor("z", TensorProto.UINT8, [], [128])]
        nodes += [helper.make_node("QuantizeLinear", ["flat", "s", "z"], ["q"]),
                  helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"])]
        flat = "dq"
    nodes.append(helper.make_node("MatMul", [flat, "w"], ["logits"]))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                            [batch, 1, 2, 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    meta = {"format": "distill-lab-onnx", "parent": None, "steps": [{"op": "export_onnx", "opset": 20}]} \
        if meta is None else meta
    return onnx_meta.write_onnx(model, path, meta, key)
