"""The one check of a pruning ``amount``: a fraction of what the function names.

Weights may all be zeroed (``amount=1``, as ``torch.nn.utils.prune`` allows); channels may not
(a layer needs at least one), so their fractions are in [0, 1). Both callers use this helper.
"""
from __future__ import annotations


def check_amount(amount, of: str, per_layer: bool = False) -> None:
    """Raise ValueError unless ``amount`` (or, with ``per_layer``, each item of a list of them) is a
    number in [0, 1] for ``of="weights"``, or in [0, 1) for ``of="channels"``."""
    closed = of != "channels"
    values = amount if per_layer and isinstance(amount, (list, tuple)) else [amount]
    for a in values:
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not (0 <= a <= 1 if closed else 0 <= a < 1):
            raise ValueError(f"amount is the fraction of {of} to remove and must be in [0, 1{']' if closed else ')'}"
                             f"{'' if closed else ' (a layer keeps at least one channel)'}; got {a!r}")
