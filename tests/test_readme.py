"""README upkeep: the per-notebook minutes come from a run's records; the one writer changes only what it should."""
import json

import pytest

from distill_utils import __main__ as cli
from distill_utils.readme import minutes as readme_minutes
from distill_utils.readme.writer import between_markers, rewrite

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
    new = readme_minutes.with_minutes(README, minutes, ["`20261130-050000`"])
    assert "| `00_setup.ipynb` | environment check | 0.3 |" in new
    assert "| `05_magnitude_pruning.ipynb` | weights | masks | 4.3 |" in new  # a '|' inside the description survives
    assert "| `06_channel_pruning.ipynb` | channels | 1.2 |" in new  # unchanged
    assert "Minutes are from the records of one run at the workshop defaults (`20261130-050000`" in new
    assert "written by `python -m distill_utils readme --minutes`" in new


def test_the_note_is_rewritten_and_text_after_it_on_its_line_stays():
    text = README.replace("on a 2-core CPU.", "on a 2-core CPU.\nThe CPU trains in fp32.")
    once = readme_minutes.with_minutes(text, {"00_setup": 0.5}, ["`a`"])
    assert once.count("Minutes are from the records") == 1 and "The CPU trains in fp32." in once
    joined = once.replace("--minutes`.\nThe CPU", "--minutes`. The CPU")  # the next sentence on the note's line
    twice = readme_minutes.with_minutes(joined, {"00_setup": 0.5}, ["`b`"])
    assert "(`b`: each notebook's `wall_s`)" in twice and "--minutes`. The CPU trains in fp32." in twice


def test_the_command_prints_then_writes(tmp_path, capsys):
    run = tmp_path / "run"
    write(run, "00_setup", wall_s=30.0)
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert cli.main(["readme", "--minutes", str(run), "--file", str(readme)]) == 0
    assert "00_setup" in capsys.readouterr().out and readme.read_text() == README  # printing changes nothing
    assert cli.main(["readme", "--minutes", str(run), "--write", "--file", str(readme)]) == 0
    assert "| `00_setup.ipynb` | environment check | 0.5 |" in readme.read_text()


def test_bad_run_folders_say_what_to_give(tmp_path, capsys):
    with pytest.raises(ValueError, match="no run folder .*nope"):
        readme_minutes.minutes_from_records(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no finished notebook records"):
        readme_minutes.minutes_from_records(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "00_setup.record.json").write_text("{not json")
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert cli.main(["readme", "--minutes", str(bad), "--write", "--file", str(readme)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("FAIL: ") and "is not a readable record" in err and err.count("\n") == 1
    assert readme.read_text() == README  # nothing lost


def test_several_runs_first_one_wins_and_each_is_named(tmp_path):
    quiet, extra = tmp_path / "quiet-run", tmp_path / "dev"
    write(quiet, "00_setup", wall_s=12.0)
    write(extra, "00_setup", wall_s=600.0)  # the first folder's record wins
    write(extra, "06_channel_pruning", wall_s=120.0)
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert cli.main(["readme", "--minutes", str(quiet), str(extra), "--write", "--file", str(readme)]) == 0
    text = readme.read_text()
    assert "| `00_setup.ipynb` | environment check | 0.2 |" in text and "| channels | 2.0 |" in text
    assert ("Minutes are from the records of runs at the workshop defaults (`quiet-run`, started 2026-11-30 05:00 "
            "UTC: 00; `dev`, started 2026-11-30 05:00 UTC: 06: each notebook's") in text


def test_the_writer_replaces_between_markers_and_keeps_the_file_on_failure(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- s -->\nold\n<!-- e -->\nb\n")
    assert rewrite(lambda t: between_markers(t, "<!-- s -->", "<!-- e -->", "new"), readme) is True
    assert readme.read_text() == "a\n<!-- s -->\nnew\n<!-- e -->\nb\n"
    assert rewrite(lambda t: t, readme) is False
    with pytest.raises(ValueError, match="no markers"):
        between_markers("text", "<!-- s -->", "<!-- e -->", "new")
    from distill_utils.common import files

    def full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(OSError):
        rewrite(lambda t: t + "more\n", readme)
    assert readme.read_text() == "a\n<!-- s -->\nnew\n<!-- e -->\nb\n"  # the old README whole
