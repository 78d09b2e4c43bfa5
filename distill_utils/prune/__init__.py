"""Pruning: magnitude (unstructured) masks in magnitude.py, channel (structured) removal in channels.py."""
from distill_utils.prune.channels import CRITERIA, prune_channels
from distill_utils.prune.magnitude import (
                        cubic_sparsity,
                        make_permanent,
                        prunable_layers,
                        prune_gradually,
                        prune_iteratively,
                        prune_magnitude,
                        sparsity,
)

__all__ = ["prune_magnitude", "make_permanent", "sparsity", "prunable_layers", "cubic_sparsity",
           "prune_iteratively", "prune_gradually", "prune_channels", "CRITERIA"]
