"""The README's per-notebook minutes, from the records of runs (not typed by hand).

    python -m distill_utils readme --minutes runs/20261130-051500            # print the minutes
    python -m distill_utils readme --minutes runs/a runs/b --write           # notebooks not in a come from b

Each notebook's minutes are the ``wall_s`` of its ``<notebook>.record.json`` in a run folder (a
``make run`` at the workshop defaults writes one per notebook). Only rows of notebooks with an
``ok`` record change; the line under the table names the runs the minutes come from. A notebook
run under load from other processes takes longer: measure on an otherwise idle machine.
"""
from __future__ import annotations

import re
from pathlib import Path

from distill_utils.runs.experiments import read_record

__all__ = ["minutes_from_records", "with_minutes", "gather"]

ROW = re.compile(r"^\| `(?P<notebook>\d\d_[\w]+)\.ipynb` \|(?P<middle>.*)\| (?P<minutes>[\d.]+|—|-) \|$")
# the note under the table: through its own last sentence, so text after it on the same line stays
NOTE = re.compile(r"^Minutes are (?:measured|from the records)(?:[^\n]*?--minutes`\.|[^\n]*)", re.M)


def minutes_from_records(folder) -> dict[str, float]:
    """``{notebook stem: minutes}`` from every ``ok`` record directly in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"no run folder {folder}: give the runs/<timestamp> folder a `make run` wrote")
    out = {}
    for path in sorted(folder.glob("*.record.json")):
        problems = []
        record = read_record(path, problems) or {}
        if problems:
            raise ValueError(f"{path} is not a readable record ({problems[0][1]}); rerun that notebook or pick "
                             "another run")
        if record.get("status") == "ok" and isinstance(record.get("wall_s"), (int, float)):
            out[record["notebook"]] = record["wall_s"] / 60
    if not out:
        raise ValueError(f"no finished notebook records in {folder}: run `make run` and give its "
                         "runs/<timestamp> folder")
    return out


def gather(folders) -> tuple[dict[str, float], list[str]]:
    """Minutes per notebook from several run folders (the first that has a notebook wins) and one
    source description per folder (its name, when it started, and which notebooks it gave)."""
    minutes, sources = {}, []
    for folder in map(Path, folders):
        own = {k: v for k, v in minutes_from_records(folder).items() if k not in minutes}
        minutes.update(own)
        started = sorted((read_record(p) or {}).get("started", "")[:16] for p in folder.glob("*.record.json"))
        source = f"`{folder.name}`"
        if started and started[0]:
            source += f", started {started[0].replace('T', ' ')} UTC"
        if len(folders) > 1:
            source += ": " + ", ".join(sorted(k[:2] for k in own))
        sources.append(source)
    return minutes, sources


def with_minutes(text: str, minutes: dict[str, float], sources: list[str]) -> str:
    """``text`` (the README) with the minutes column of each notebook row replaced and the note
    naming the ``sources`` (one per run folder)."""
    lines = []
    for line in text.splitlines():
        m = ROW.match(line)
        if m and m["notebook"] in minutes:
            line = f"| `{m['notebook']}.ipynb` |{m['middle']}| {minutes[m['notebook']]:.1f} |"
        lines.append(line)
    new = "\n".join(lines) + ("\n" if text.endswith("\n") else "")
    runs = "runs" if len(sources) > 1 else "one run"
    note = (f"Minutes are from the records of {runs} at the workshop defaults ({'; '.join(sources)}: each notebook's "
            "`wall_s`), written by `python -m distill_utils readme --minutes`.")
    return NOTE.sub(note, new, count=1) if NOTE.search(new) else new
