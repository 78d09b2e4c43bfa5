"""Pruning: magnitude (unstructured) pruning with masks; channel pruning comes in channels.py."""
from .magnitude import (cubic_sparsity, make_permanent, prunable_layers, prune_gradually, prune_iteratively,
                        prune_magnitude, sparsity)

__all__ = ["prune_magnitude", "make_permanent", "sparsity", "prunable_layers", "cubic_sparsity",
           "prune_iteratively", "prune_gradually"]
