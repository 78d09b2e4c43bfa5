"""Dynamic int8 of the Linear layers, in PyTorch and in onnxruntime (notebook 11,
``11_transformer_compression.ipynb``; the int8 arithmetic is notebook 09's).

Dynamic quantization stores each Linear weight in int8 once and quantizes its input per batch
at run time (the range of that batch's activations): no calibration set. It suits transformers,
whose time goes into Linears (the attention products of two activations stay in float in both
runtimes). PyTorch: ``torch.ao.quantization.quantize_dynamic`` (deprecated in favour of torchao,
still working in torch 2.14; its warning is silenced here). onnxruntime: ``quantize_int8`` with
``method="dynamic"`` on an ``export_onnx`` file (MatMul/Gemm with constant weights become
MatMulInteger; the patch convolution stays fp32), with the lineage and signing of every file.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch

from distill_utils.deploy.export import DeployError, export_onnx
from distill_utils.deploy.quantize import quantize_int8
from distill_utils.deploy.runtime import onnx_runner, torch_runner

__all__ = ["quantize_dynamic_torch", "dynamic_int8", "dynamic_runners"]


def quantize_dynamic_torch(model, per_channel: bool = True):
    """A CPU copy of ``model`` whose ``nn.Linear`` layers are dynamic int8 (int8 weights, per output
    channel with ``per_channel``; inputs quantized per batch at run time); everything else stays
    fp32 (notebook 11). The copy is in eval mode; ``model`` is left as it was. Note that
    ``measure.count_params`` / ``count_flops`` do not see the int8 Linears (their weights are packed,
    not parameters): measure the fp32 model for those."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic
    if not isinstance(model, torch.nn.Module):
        raise DeployError(f"quantize_dynamic_torch needs a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(per_channel, bool):
        raise DeployError(f"per_channel must be True or False, got {per_channel!r}")
    net = copy.deepcopy(model).cpu().float().eval().to(memory_format=torch.contiguous_format)
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(net, {torch.nn.Linear: qconfig}, dtype=torch.qint8)


def dynamic_int8(model, folder, name: str = "model", per_channel: bool = True, reduce_range: bool = True,
                 lineage=None) -> dict:
    """Every dynamic-int8 form of ``model`` for the notebook to compare (notebook 11): writes
    ``folder/<name>.onnx`` (``export_onnx``) and ``folder/<name>_int8.onnx`` (onnxruntime's dynamic
    int8 of it), and returns ``{"torch_fp32": model, "torch_int8": quantize_dynamic_torch(model),
    "onnx_fp32": path, "onnx_int8": path}``. ``lineage`` as in ``export_onnx``.

    ``reduce_range``: 7-bit weights in the onnxruntime file. On CPUs without VNNI (AVX2 only)
    onnxruntime multiplies uint8 activations by int8 weights with 16-bit pair sums that saturate:
    a small ViT's logits were 18% off with 8-bit weights, 1.5% with 7-bit. PyTorch's x86 backend
    reduces the range by itself."""
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise DeployError(f"name = {name!r} must be a plain file name without a folder, e.g. 'vit'")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch_int8 = quantize_dynamic_torch(model, per_channel)
    fp32 = export_onnx(model, folder / f"{name}.onnx", lineage=lineage)
    int8 = quantize_int8(fp32, folder / f"{name}_int8.onnx", method="dynamic", per_channel=per_channel,
                         reduce_range=reduce_range)
    return {"torch_fp32": model, "torch_int8": torch_int8, "onnx_fp32": fp32, "onnx_int8": int8}


def dynamic_runners(forms: dict, x: torch.Tensor, threads: int | None = None) -> dict:
    """``{key: callable that runs once on the batch x}`` for each entry of ``dynamic_int8``'s dict
    (models via ``torch_runner``, ONNX paths via ``onnx_runner`` with ``threads``): contenders for
    ``timing.interleaved_ms`` (notebook 11)."""
    if not isinstance(forms, dict) or not forms:
        raise DeployError("forms must be the dict dynamic_int8 returns ({'torch_fp32': model, 'onnx_int8': path, ...})")
    return {key: torch_runner(value, x) if isinstance(value, torch.nn.Module) else onnx_runner(value, x, threads)
            for key, value in forms.items()}
