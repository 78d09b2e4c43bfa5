"""A workshop challenge graded from signed files (issue 29; notebook 09's last section shows a learner submitting).

``task`` (the challenge file and the room's key), ``verify`` (which files can be trusted: signature,
hash, lineage; never unpickled), ``measure`` (accuracy, size, parameters, interleaved latency, and the
cache by SHA-256), ``board`` (ranking, Markdown, HTML with a Pareto plot), ``grade`` (all of it for a
folder) and ``cli`` (``python -m distill_utils challenge new | grade FOLDER``).
"""
