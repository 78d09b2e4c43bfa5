"""Helpers shared by the checkpoint tests: edit a checkpoint's manifest in place, rewrite a file in
the first format. A helper module, not a test module (tests import it, never each other)."""
import hashlib
import json

from distill_utils.provenance.checkpoints import verify_checkpoint
from distill_utils.provenance.format import META_KEY, split_header, with_manifest


def rewrite_manifest(weights, **changes):
    """Edit the manifest inside a checkpoint (format 3); its tensor table, tensors and their hash stay as they were."""
    blob = weights.read_bytes()
    header, _ = split_header(blob)
    manifest = json.loads(header["__metadata__"][META_KEY])
    weights.write_bytes(with_manifest(blob, {**manifest, **changes}))


def as_format_1(weights):
    """Rewrite a checkpoint in the first format: plain safetensors, the manifest only in the .json."""
    from safetensors.torch import load, save
    manifest = {k: v for k, v in verify_checkpoint(weights).items()
                if k not in ("verified", "path", "content_sha256", "tensor_bytes", "signature")}
    plain = save(load(weights.read_bytes()))
    weights.write_bytes(plain)
    manifest.update(format_version=1, sha256=hashlib.sha256(plain).hexdigest(), bytes=len(plain))
    weights.with_suffix(".json").write_text(json.dumps(manifest))
    return manifest
