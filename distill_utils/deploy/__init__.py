"""Deployment (notebook 09): the int8 arithmetic (``int8``), ONNX export and safe reading
(``export``), int8 quantization (``quantize``), onnxruntime accuracy and latency (``runtime``) and
one interleaved timer (``timing``). Everything public is importable from here:
``from distill_utils import deploy; deploy.export_onnx(model, "model.onnx")``."""
from distill_utils.deploy.export import DeployError, export_onnx, onnx_metadata, session
from distill_utils.deploy.int8 import int8_params, quantize_tensor
from distill_utils.deploy.quantize import (
    Int8Options,
    calibration_images,
    fuse_conv_bn,
    quantization_params,
    quantize_int8,
    quantize_torch_int8,
    relu_before_pool,
)
from distill_utils.deploy.runtime import (
    evaluate_onnx,
    latency_onnx,
    onnx_runner,
    predict_onnx,
    time_models,
    torch_runner,
)
from distill_utils.deploy.timing import interleaved_ms, median_ms, paired_speedup, run_times

__all__ = [
    "DeployError",
    "export_onnx",
    "onnx_metadata",
    "session",
    "int8_params",
    "quantize_tensor",
    "Int8Options",
    "quantize_int8",
    "calibration_images",
    "quantization_params",
    "relu_before_pool",
    "fuse_conv_bn",
    "quantize_torch_int8",
    "evaluate_onnx",
    "predict_onnx",
    "latency_onnx",
    "onnx_runner",
    "torch_runner",
    "interleaved_ms",
    "time_models",
    "paired_speedup",
    "median_ms",
    "run_times",
]
