"""Setting the tutorial up on a machine: the dataset fetched (``fetch``), an offline workshop kit
(``kit``), and what this CPU offers the precision choice and int8 kernels (``machine``, notebook 00).

A layer above ``runs``: it imports the taught core, provenance and ``runs.experiments``; only the
command line imports it."""
