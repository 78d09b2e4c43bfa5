"""Where a model came from and whether it is the file it claims to be: the checkpoint format,
signing, and lineage (taught in notebooks 01 and 07)."""
