"""distill_utils: the reusable helpers behind the distill-lab notebooks."""
__version__ = "0.1.0"
