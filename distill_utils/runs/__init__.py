"""Running the notebooks as experiments: parameters, run records, sweeps, reports, verdicts over
seeds (``evidence``), full-size reference runs and the automatic search (taught in notebooks 08 and 10)."""
