"""Self-checking exercises: ``check_*`` compares a function you wrote with the package's (notebooks 02-07, 09).

Each notebook's "Write it yourself" section has a stub that raises ``NotImplementedError``; the
cell after it calls a check, which shows one line: ``correct: ...``, ``not attempted yet: ...`` or
``wrong: ...`` naming the likely mistake when it recognises one. The checks try random inputs and
edge cases, compare within tolerances, and never raise, so a notebook runs with the stubs in place.

| notebook | checks |
|---|---|
| 02 | ``check_soft_targets``, ``check_kd_soft_term`` |
| 03 | ``check_kd_loss``, ``check_ece`` |
| 04 | ``check_attention_map``, ``check_attention_loss`` |
| 05 | ``check_global_threshold``, ``check_cubic_sparsity`` |
| 06 | ``check_l1_filter_ranking``, ``check_slice_conv_bn_conv`` |
| 07 | ``check_keep_counts``, ``check_pareto_front`` |
| 09 | ``check_scale_zero_point``, ``check_fake_quantize`` |
"""
from distill_utils.exercises.channels import check_keep_counts, check_l1_filter_ranking, check_slice_conv_bn_conv
from distill_utils.exercises.core import Verdict
from distill_utils.exercises.distillation import check_kd_loss, check_kd_soft_term, check_soft_targets
from distill_utils.exercises.features import check_attention_loss, check_attention_map
from distill_utils.exercises.magnitude import check_cubic_sparsity, check_global_threshold
from distill_utils.exercises.measuring import check_ece, check_pareto_front
from distill_utils.exercises.quantization import check_fake_quantize, check_scale_zero_point

__all__ = ["Verdict", "check_soft_targets", "check_kd_soft_term", "check_kd_loss", "check_ece", "check_attention_map",
           "check_attention_loss", "check_global_threshold", "check_cubic_sparsity", "check_l1_filter_ranking",
           "check_slice_conv_bn_conv", "check_keep_counts", "check_pareto_front", "check_scale_zero_point",
           "check_fake_quantize"]

CHECKS = {"02": ("check_soft_targets", "check_kd_soft_term"), "03": ("check_kd_loss", "check_ece"),
          "04": ("check_attention_map", "check_attention_loss"),
          "05": ("check_global_threshold", "check_cubic_sparsity"),
          "06": ("check_l1_filter_ranking", "check_slice_conv_bn_conv"),
          "07": ("check_keep_counts", "check_pareto_front"), "09": ("check_scale_zero_point", "check_fake_quantize")}
