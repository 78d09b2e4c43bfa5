"""The floor every layer stands on: bounded reads and atomic writes (``files``), parameter rules (``rules``).

Nothing here imports from the rest of the package."""
