"""What this CPU offers the two choices that make one laptop's ratios differ from another's.

Training: ``precision="auto"`` trains in bf16 where oneDNN multiplies bfloat16 natively (AMX-BF16 or
AVX512-BF16 on x86; bf16 instructions on ARM), else in fp32 (``train.resolve_precision``).
Deployment: onnxruntime's int8 kernels (MLAS) are picked by the CPU's integer dot-product
instructions: AMX-INT8, AVX512-VNNI or AVX-VNNI multiply u8 x s8 into 32-bit sums in one step;
AVX2 alone needs three instructions and sums pairs in 16 bits (it can saturate), so int8 gains
less there. Notebook 00 prints ``cpu_report()``; notebook 09 measures what it means.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from distill_utils.train import resolve_precision

X86 = ("x86_64", "x86", "amd64", "i686")
# (capability keys that must all be present, name): the first that matches wins
BF16_X86 = ((("amx_bf16", "amx_tile"), "AMX-BF16"), (("avx512_bf16",), "AVX512-BF16"))
INT8_X86 = ((("amx_int8", "amx_tile"), "AMX-INT8"), (("avx512_vnni",), "AVX512-VNNI"), (("avx_vnni",), "AVX-VNNI"),
            (("avx512_bw",), "AVX512BW (no VNNI)"), (("avx2",), "AVX2 (no VNNI)"))
INT8_ARM = ((("i8mm",), "NEON I8MM"), (("dot",), "NEON dot product"), (("neon",), "NEON"))


@dataclass(frozen=True)
class CpuReport:
    """The CPU's name, architecture and cores; ``bf16`` the features behind the precision choice
    found here; ``precision`` what ``precision="auto"`` trains in on the CPU; ``int8`` the family of
    onnxruntime int8 kernels it will run; ``int8_engine`` PyTorch's quantized engine."""
    cpu: str
    architecture: str
    cores: int
    bf16: tuple
    precision: str
    int8: str
    int8_engine: str

    def __str__(self) -> str:
        wanted = "AMX-BF16 or AVX512-BF16" if self.architecture in X86 else "bf16 instructions"
        bf16 = " and ".join(self.bf16) + " found" if self.bf16 else f"no {wanted} found"
        return (f"{self.cpu} ({self.architecture}, {self.cores} cores): {bf16}, so precision 'auto' "
                f"trains in {self.precision}; int8 runs on {self.int8} kernels in onnxruntime "
                f"(PyTorch's quantized engine: {self.int8_engine})")


def _first(capabilities, table, default: str) -> str:
    return next((name for keys, name in table if all(capabilities.get(k) for k in keys)), default)


def cpu_report(capabilities=None, bf16: bool | None = None) -> CpuReport:
    """Which CPU features the precision choice and the int8 kernels find here (notebook 00).

    ``capabilities``: ``torch.cpu.get_capabilities()`` (cpuinfo's flags), or a mapping of them for
    another machine; ``bf16``: whether oneDNN computes bf16 natively (default: asks it, through
    ``train.resolve_precision``, the choice training makes)."""
    caps = dict(torch.cpu.get_capabilities() if capabilities is None else capabilities)
    arch = str(caps.get("architecture", "unknown")).lower()
    if arch in X86:
        found = tuple(name for keys, name in BF16_X86 if all(caps.get(k) for k in keys))
        int8 = _first(caps, INT8_X86, "SSE (no AVX2)")
    else:
        found = ("bf16",) if caps.get("bf16") or caps.get("sve_bf16") else ()
        int8 = _first(caps, INT8_ARM, "generic")
    precision = resolve_precision("auto", "cpu") if bf16 is None else ("bf16" if bf16 else "fp32")
    return CpuReport(cpu=str(caps.get("cpu_name") or "unknown CPU").strip(), architecture=arch,
                     cores=int(caps.get("num_physical_cores") or 0), bf16=found,
                     precision=precision, int8=int8,
                     int8_engine=torch.backends.quantized.engine)
