"""Write the README's per-notebook minutes from the records of one run (not by hand).

    python bench/readme_minutes.py runs/20261130-051500            # print what would change
    python bench/readme_minutes.py runs/20261130-051500 --write    # rewrite README.md
    python bench/readme_minutes.py runs/a runs/b --write           # notebooks not in a come from b

Each notebook's minutes are the ``wall_s`` of its ``<notebook>.record.json`` in that folder (a
``make run`` at the workshop defaults writes one per notebook). Only rows of notebooks with an
``ok`` record change; the line under the table names the run the minutes come from. A notebook
run under load from other processes takes longer: measure on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| `(?P<notebook>\d\d_[\w]+)\.ipynb` \|(?P<middle>.*)\| (?P<minutes>[\d.]+|—|-) \|$")
NOTE = re.compile(r"^Minutes are (measured|from the records).*$", re.M)


def minutes_from_records(folder) -> dict[str, float]:
    """``{notebook stem: minutes}`` from every ``ok`` record directly in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SystemExit(f"no run folder {folder}: give the runs/<timestamp> folder a `make run` wrote")
    out = {}
    for path in sorted(folder.glob("*.record.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise SystemExit(f"{path} is not a readable record ({err}); rerun that notebook or pick "
                             "another run") from None
        if record.get("status") == "ok" and isinstance(record.get("wall_s"), (int, float)):
            out[record["notebook"]] = record["wall_s"] / 60
    if not out:
        raise SystemExit(f"no finished notebook records in {folder}: run `make run` and give its "
                         "runs/<timestamp> folder")
    return out


def update_readme(text: str, minutes: dict[str, float], sources: list[str]) -> str:
    """``text`` with the minutes column of each notebook row replaced and the note naming the
    ``sources`` (one per run folder)."""
    lines = []
    for line in text.splitlines():
        m = ROW.match(line)
        if m and m["notebook"] in minutes:
            line = f"| `{m['notebook']}.ipynb` |{m['middle']}| {minutes[m['notebook']]:.1f} |"
        lines.append(line)
    new = "\n".join(lines) + ("\n" if text.endswith("\n") else "")
    runs = "runs" if len(sources) > 1 else "one run"
    note = (f"Minutes are from the records of {runs} at the workshop defaults ({'; '.join(sources)}: each notebook's "
            "`wall_s`), written by `bench/readme_minutes.py`.")
    return NOTE.sub(note, new, count=1) if NOTE.search(new) else new


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="runs/<timestamp> folders written by `make run` (or single "
                        "notebook runs); a notebook's minutes come from the first folder that has it")
    parser.add_argument("--write", action="store_true", help="rewrite README.md (default: print the new rows)")
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    args = parser.parse_args(argv)
    minutes, sources = {}, []
    for folder in map(Path, args.folders):
        own = {k: v for k, v in minutes_from_records(folder).items() if k not in minutes}
        minutes.update(own)
        started = sorted(json.loads(p.read_text()).get("started", "")[:16] for p in folder.glob("*.record.json"))
        source = f"`{folder.name}`"
        if started and started[0]:
            source += f", started {started[0].replace('T', ' ')} UTC"
        if len(args.folders) > 1:
            source += ": " + ", ".join(sorted(k[:2] for k in own))
        sources.append(source)
    readme = Path(args.readme)
    text = readme.read_text()
    new = update_readme(text, minutes, sources)
    for name, value in minutes.items():
        print(f"{name:40} {value:5.1f} min")
    if args.write:
        readme.write_text(new)
        print(f"wrote {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
