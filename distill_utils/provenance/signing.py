"""Signing: one HMAC-SHA256 key and one signature shape for every file kind (notebook 01).

The key is the one given, else ``$DISTILL_SIGNING_KEY``, else the contents of the file named by
``$DISTILL_SIGNING_KEY_FILE``; with none configured nothing is signed or checked. A signature is
``{"alg": "HMAC-SHA256", "key_id": ..., "value": ...}`` over bytes each file kind chooses: a
checkpoint signs its canonical manifest and file name (``format.py``), an ONNX file its
serialized model without the signature entry (``onnx_meta.py``).
"""
from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from distill_utils.common.files import ReadRefused, read_limited

__all__ = ["SigningKeyError", "signing_key", "key_id", "sign", "matches", "ALG"]

ALG = "HMAC-SHA256"
MAX_KEY_FILE = 4096  # bytes of a signing key file
NEW_KEY = "python -c 'import secrets; print(secrets.token_hex(32))'"


class SigningKeyError(ValueError):
    """The configured signing key cannot be used; the message says why and how to fix it (notebook 01)."""


def signing_key(key=None) -> bytes | None:
    """The HMAC key: ``key`` if given, else ``$DISTILL_SIGNING_KEY``, else the contents of the file
    named by ``$DISTILL_SIGNING_KEY_FILE``; None when none is configured. A key that is set but
    empty or only whitespace is an error, not "no key" (notebook 01)."""
    source = "the key given"
    if key is None and "DISTILL_SIGNING_KEY" in os.environ:
        key, source = os.environ["DISTILL_SIGNING_KEY"], "DISTILL_SIGNING_KEY"
    elif key is None and "DISTILL_SIGNING_KEY_FILE" in os.environ:
        key = _key_file(os.environ["DISTILL_SIGNING_KEY_FILE"])
        source = "the key file named by DISTILL_SIGNING_KEY_FILE"
    if key is None:
        return None
    key = key.encode() if isinstance(key, str) else bytes(key)
    if not key.strip():
        raise SigningKeyError(f"the signing key ({source}) is empty or only whitespace; set a real key "
                              f"({NEW_KEY}) or unset it")
    if len(key) < 16:
        raise SigningKeyError(f"the signing key is {len(key)} bytes; use at least 16 random bytes, e.g. {NEW_KEY}")
    return key


def _key_file(name: str) -> bytes:
    if not name.strip():
        raise SigningKeyError("DISTILL_SIGNING_KEY_FILE is set but empty; name a key file or unset the variable")
    try:
        return read_limited(Path(name), MAX_KEY_FILE, "signing key file").strip()
    except (OSError, ReadRefused) as err:
        why = getattr(err, "strerror", None) or err
        raise SigningKeyError(f"cannot read the signing key file {name} (DISTILL_SIGNING_KEY_FILE): "
                              f"{why}; fix the path or unset the variable") from None


def key_id(key: bytes) -> str:
    """A short public name of ``key`` (the first 16 hex digits of its SHA-256), to tell keys apart."""
    return hashlib.sha256(key).hexdigest()[:16]


def sign(body: bytes, key: bytes) -> dict:
    """The signature of ``body`` with ``key``: ``{"alg", "key_id", "value"}``."""
    return {"alg": ALG, "key_id": key_id(key), "value": hmac.new(key, body, hashlib.sha256).hexdigest()}


def matches(signature, body: bytes, key: bytes) -> bool:
    """Whether ``signature`` (as stored: possibly malformed) is ``key``'s signature of ``body``."""
    if not isinstance(signature, dict):
        return False  # compared as bytes: compare_digest refuses str with non-ASCII characters
    return hmac.compare_digest(str(signature.get("value")).encode(), sign(body, key)["value"].encode())
