"""README upkeep: the result tables generated from ``data/reference/`` and the per-notebook minutes.
Not taught; nothing in the package imports it."""
