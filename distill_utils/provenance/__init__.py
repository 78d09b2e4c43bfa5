"""Where a model came from and whether it is the file it claims to be (taught in notebooks 01, 07, 09).

``signing`` (one HMAC key and signature for every file kind), ``format`` (the checkpoint file:
manifest, bounded reading, signature check), ``checkpoints`` (save, load, verify, sign, the
pretrained teacher), ``pretrained`` (the shipped files' pins), ``onnx_meta`` (an ONNX file's
metadata and signature) and ``lineage`` (the ``Lineage`` value and the one walker for both).
"""
