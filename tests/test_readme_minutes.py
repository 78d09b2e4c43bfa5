"""bench/readme_minutes.py: the README's per-notebook minutes come from a run's records."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("readme_minutes", ROOT / "bench" / "readme_minutes.py")
readme_minutes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_minutes)

README = """| notebook | what you learn | CPU minutes (2 cores) |
|---|---|---|
| `00_setup.ipynb` | environment check | 0.3 |
| `05_magnitude_pruning.ipynb` | weights | masks | 2.2 |
| `06_channel_pruning.ipynb` | channels | 1.2 |

Minutes are measured with the default (workshop) parameters on a 2-core CPU.
"""


def write(folder, notebook, status="ok", wall_s=None):
    folder.mkdir(exist_ok=True)
    (folder / f"{notebook}.record.json").write_text(json.dumps(
        {"notebook": notebook, "status": status, "wall_s": wall_s, "started": "2026-11-30T05:00:00+00:00"}))


def test_minutes_come_from_ok_records_and_only_their_rows_change(tmp_path):
    run = tmp_path / "20261130-050000"
    write(run, "00_setup", wall_s=18.0)
    write(run, "05_magnitude_pruning", wall_s=261.0)
    write(run, "06_channel_pruning", status="failed", wall_s=5.0)  # a failed run says nothing about time
    minutes = readme_minutes.minutes_from_records(run)
    assert minutes == {"00_setup": pytest.approx(0.3), "05_magnitude_pruning": pytest.approx(4.35)}
    new = readme_minutes.update_readme(README, minutes, ["`20261130-050000`"])
    assert "| `00_setup.ipynb` | environment check | 0.3 |" in new
    assert "| `05_magnitude_pruning.ipynb` | weights | masks | 4.3 |" in new  # a '|' inside the description survives
    assert "| `06_channel_pruning.ipynb` | channels | 1.2 |" in new  # unchanged
    assert "Minutes are from the records of one run at the workshop defaults (`20261130-050000`" in new
    assert "measured with the default" not in new


def test_cli_writes_the_readme_and_names_the_run(tmp_path, capsys):
    run = tmp_path / "20261130-050000"
    write(run, "06_channel_pruning", wall_s=90.0)
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert readme_minutes.main([str(run), "--write", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "| `06_channel_pruning.ipynb` | channels | 1.5 |" in text and "started 2026-11-30 05:00 UTC" in text


def test_missing_or_empty_run_folder_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no run folder"):
        readme_minutes.minutes_from_records(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no finished notebook records"):
        readme_minutes.minutes_from_records(tmp_path / "empty")


def test_several_runs_first_one_wins_and_each_is_named(tmp_path):
    quiet, extra = tmp_path / "quiet-run", tmp_path / "dev"
    write(quiet, "00_setup", wall_s=12.0)
    write(extra, "00_setup", wall_s=600.0)  # the first folder's record wins
    write(extra, "06_channel_pruning", wall_s=120.0)
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert readme_minutes.main([str(quiet), str(extra), "--write", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "| `00_setup.ipynb` | environment check | 0.2 |" in text and "| channels | 2.0 |" in text
    assert ("Minutes are from the records of runs at the workshop defaults (`quiet-run`, started 2026-11-30 05:00 "
            "UTC: 00; `dev`, started 2026-11-30 05:00 UTC: 06: each notebook's") in text
