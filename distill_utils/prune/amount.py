"""The one check of a pruning ``amount``: a fraction of what the function names (notebooks 05 and 06).

Weights may all be zeroed (``amount=1``, as ``torch.nn.utils.prune`` allows); channels may not
(a layer needs at least one), so their fractions are in [0, 1). The rules are the project's
(``common/rules.py``), the same that check the notebooks' parameters.
"""
from __future__ import annotations

from distill_utils.common import rules


def check_amount(amount, of: str, per_layer: bool = False) -> None:
    """Raise ``rules.RuleError`` (a ValueError) unless ``amount`` (or, with ``per_layer``, each item of a
    list of them) is a fraction of weights in [0, 1] (``of="weights"``) or of channels in [0, 1)."""
    rule = rules.channel_fraction if of == "channels" else rules.weight_fraction
    values = amount if per_layer and isinstance(amount, (list, tuple)) else [amount]
    for a in values:
        if (msg := rule(a)):
            raise rules.RuleError(f"amount = {a!r} {msg}")
