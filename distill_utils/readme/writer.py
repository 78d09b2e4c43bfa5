"""The one README writer: ``rewrite(readme, change)`` reads README.md, applies ``change`` (text -> text)
and writes the result atomically, or not at all when nothing changed.

Both README upkeep commands go through it: ``python -m distill_utils reference --readme`` (the result
tables, ``tables.py``) and ``python -m distill_utils readme --minutes RUN`` (``minutes.py``). A full
disk or a crash leaves the old README whole (``common.files.atomic_write_bytes``).
"""
from __future__ import annotations

from pathlib import Path

from distill_utils.common.files import atomic_write_bytes, read_limited

README = Path(__file__).resolve().parents[2] / "README.md"
MAX_README = 4 << 20  # bytes; ours is ~40 kB


def rewrite(change, readme=None) -> bool:
    """Apply ``change`` to the README's text; write it (atomically) only if it differs. Returns whether it did."""
    readme = Path(readme or README)
    text = read_limited(readme, MAX_README, "README").decode()
    new = change(text)
    if new != text:
        atomic_write_bytes(readme, new.encode())
    return new != text


def between_markers(text: str, start: str, end: str, body: str, where: str = "README") -> str:
    """``text`` with what lies between the lines ``start`` and ``end`` replaced by ``body``."""
    if start not in text or end not in text:
        raise ValueError(f"{where} has no markers for this section; put the lines\n{start}\n{end}\n"
                         "where it belongs")
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    return f"{before}{start}\n{body}\n{end}{after}"
