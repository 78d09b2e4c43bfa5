"""The machine line of notebook 00: which CPU features the precision choice and int8 kernels find."""
import pytest
import torch

from distill_utils.setup.machine import cpu_report
from distill_utils.train import resolve_precision

SAPPHIRE_RAPIDS = {"architecture": "x86_64", "cpu_name": "Intel Xeon Platinum 8480+", "num_physical_cores": 56,
                   "avx2": True, "avx512_bw": True, "avx512_vnni": True, "avx512_bf16": True, "avx_vnni": True,
                   "amx_tile": True, "amx_bf16": True, "amx_int8": True}
ZEN4 = {"architecture": "x86_64", "cpu_name": "AMD Ryzen 7 7840U", "num_physical_cores": 8, "avx2": True,
        "avx512_bw": True, "avx512_vnni": True, "avx512_bf16": True, "amx_tile": False}
ALDER_LAKE = {"architecture": "x86_64", "cpu_name": "12th Gen Intel Core i7-1255U", "num_physical_cores": 10,
              "avx2": True, "avx_vnni": True, "avx512_bw": False}
SKYLAKE_X = {"architecture": "x86_64", "cpu_name": "Intel Xeon Gold 6148", "num_physical_cores": 20, "avx2": True,
             "avx512_bw": True}
HASWELL = {"architecture": "x86_64", "cpu_name": "Intel Core i5-4300U", "num_physical_cores": 2, "avx2": True}
APPLE_M2 = {"architecture": "arm64", "cpu_name": "Apple M2", "num_physical_cores": 8, "neon": True, "dot": True,
            "i8mm": True, "bf16": True}
OLD_ARM = {"architecture": "aarch64", "cpu_name": "Cortex-A72", "num_physical_cores": 4, "neon": True}


@pytest.mark.parametrize("caps, bf16, features, int8", [
    (SAPPHIRE_RAPIDS, True, ("AMX-BF16", "AVX512-BF16"), "AMX-INT8"),
    (ZEN4, True, ("AVX512-BF16",), "AVX512-VNNI"),
    (ALDER_LAKE, False, (), "AVX-VNNI"),
    (SKYLAKE_X, False, (), "AVX512BW (no VNNI)"),
    (HASWELL, False, (), "AVX2 (no VNNI)"),
    (APPLE_M2, True, ("bf16",), "NEON I8MM"),
    (OLD_ARM, False, (), "NEON"),
])
def test_features_name_the_precision_choice_and_the_int8_kernels(caps, bf16, features, int8):
    report = cpu_report(caps, bf16=bf16)
    assert report.bf16 == features and report.int8 == int8
    assert report.precision == ("bf16" if bf16 else "fp32") and report.cores == caps["num_physical_cores"]
    line = str(report)
    assert line.startswith(f"{caps['cpu_name']} ({caps['architecture']}, {caps['num_physical_cores']} cores): ")
    assert f"so precision 'auto' trains in {report.precision}; int8 runs on {int8} kernels" in line
    assert "\n" not in line


def test_a_cpu_without_bf16_says_what_it_lacks():
    assert "no AMX-BF16 or AVX512-BF16 found, so precision 'auto' trains in fp32" in str(cpu_report(HASWELL, False))
    assert "no bf16 instructions found" in str(cpu_report(OLD_ARM, False))
    assert "AMX-BF16 and AVX512-BF16 found, so precision 'auto' trains in bf16" in str(cpu_report(SAPPHIRE_RAPIDS,
                                                                                                  True))


def test_this_machine_reports_what_training_will_do():
    report = cpu_report()
    caps = torch.cpu.get_capabilities()
    assert report.precision == resolve_precision("auto", "cpu")
    assert report.int8_engine == torch.backends.quantized.engine and report.architecture == caps["architecture"].lower()
    if caps["architecture"] == "x86_64":
        assert ("AVX512-BF16" in report.bf16) == bool(caps.get("avx512_bf16"))
        assert report.int8.startswith(("AMX", "AVX", "SSE"))
