"""The search on a real PostgreSQL server, as on machines without a shared disk: two worker processes
(`python -m distill_utils search --storage postgresql://... --study NAME`) share one study; every trial
runs exactly once, a worker killed mid-trial loses only that trial, the study resumes, `--summary`
reads it. The server is Debian's `postgresql` (`apt-get install postgresql`; .ci/run installs it),
started in a temporary folder on a Unix socket only. Skipped with the reason where PostgreSQL or
psycopg is absent, except in CI (`CI` set), where that fails."""
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import write_search_space

REPO = Path(__file__).resolve().parents[1]
STUDY = "pg-two-workers"


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: this test must run there)")
    pytest.skip(reason)


def _postgres_bin() -> Path | None:
    """The folder holding initdb, pg_ctl and createdb: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    on_path = [Path(p).resolve().parent for p in [shutil.which("pg_ctl")] if p]  # Debian links them from elsewhere
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True) \
        if Path("/usr/lib/postgresql").is_dir() else []
    return next((d for d in on_path + debian if all((d / t).exists() for t in ("initdb", "pg_ctl", "createdb"))), None)


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server (trust auth, Unix socket in a 0700 folder, no TCP); its URL."""
    pg = _postgres_bin()
    if pg is None:
        _unavailable("PostgreSQL is not installed: sudo apt-get install postgresql")
    try:
        import psycopg  # noqa: F401  (SQLAlchemy 2.1 reads postgresql:// URLs with psycopg 3)
    except ImportError:
        _unavailable("psycopg (3) is missing: make setup installs it (requirements.txt)")
    owner = {}
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no 'postgres' user to run the server as")
        owner = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    base = Path(tempfile.mkdtemp(prefix="distill-pg-"))
    if owner:
        os.chown(base, owner["user"], owner["group"])

    def pg_run(*cmd):
        done = subprocess.run([str(pg / cmd[0]), *cmd[1:]], cwd=base, capture_output=True, text=True, timeout=120,
                              **owner)
        assert done.returncode == 0, f"{' '.join(cmd)}: {done.stdout[-1500:]}{done.stderr[-1500:]}"

    try:
        pg_run("initdb", "-D", str(base / "db"), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C",
               "--no-sync")
        pg_run("pg_ctl", "-D", str(base / "db"), "-l", str(base / "server.log"), "-w", "-t", "60",
               "-o", f"-k {base} -c listen_addresses='' -c fsync=off", "start")
        pg_run("createdb", "-h", str(base), "-U", "postgres", "optuna")
        yield f"postgresql://postgres@/optuna?host={base}"
    finally:
        subprocess.run([str(pg / "pg_ctl"), "-D", str(base / "db"), "-m", "immediate", "-w", "stop"], cwd=base,
                       capture_output=True, timeout=60, **owner)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_space(tmp_path_factory):
    """A study of seconds (conftest.write_search_space), on 200 images: a trial takes a few seconds."""
    return write_search_space(tmp_path_factory.mktemp("tiny"), n_train=200)


def trials_in(url):
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=STUDY, storage=url).get_trials(deepcopy=False)


def ran(log: Path) -> list[int]:
    """The trial numbers a worker printed as finished ("trial  3 (student_cnn, 1 s): ...")."""
    return [int(n) for n in re.findall(r"^trial\s+(\d+)\b", log.read_text(), re.M)]


def records(out: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in out.glob("trial-*/search.record.json")}


def test_two_workers_share_a_study_on_postgresql_lose_only_a_killed_trial_and_resume(postgres_url, tiny_space,
                                                                                  tmp_path):
    out, trials = tmp_path / "study", 12  # enough that both workers are up before one could finish alone
    cmd = [sys.executable, "-m", "distill_utils", "search", "--space", str(tiny_space), "--out", str(out),
           "--storage", postgres_url, "--study", STUDY, "--trials"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = {w: tmp_path / f"worker-{w}.log" for w in "ab"}
    workers = {w: subprocess.Popen(cmd + [str(trials)], cwd=REPO, env=env, stdout=logs[w].open("w"),
                                   stderr=subprocess.STDOUT) for w in "ab"}
    start = time.perf_counter()
    # kill worker a while both workers are inside a trial, once two trials have finished. When the database
    # shows that, worker a is paused (SIGSTOP) and the database read again: a trial still running then is
    # still running when a dies
    def a_in_trial() -> bool:
        try:
            trials_now = trials_in(postgres_url)
        except Exception:  # the study does not exist yet
            return False
        states = [t.state.name for t in trials_now]
        return states.count("COMPLETE") >= 2 and states.count("RUNNING") == 2 and any(
            t.state.name == "RUNNING" and t.user_attrs.get("worker", {}).get("pid") == workers["a"].pid
            for t in trials_now)

    deadline, killed_at = time.time() + 240, None
    while time.time() < deadline and workers["a"].poll() is None:
        if a_in_trial():
            workers["a"].send_signal(signal.SIGSTOP)
            if a_in_trial():
                workers["a"].send_signal(signal.SIGKILL)
                killed_at = sum(t.state.name == "COMPLETE" for t in trials_in(postgres_url))
                break
            workers["a"].send_signal(signal.SIGCONT)
        time.sleep(0.05)
    assert workers["a"].wait(timeout=60) == -signal.SIGKILL, \
        f"the two workers were never both in a trial; worker a:\n{logs['a'].read_text()[-3000:]}"
    assert workers["b"].wait(timeout=300) == 0, logs["b"].read_text()[-3000:]
    two_workers_s = time.perf_counter() - start

    done = trials_in(postgres_url)
    failed = [t for t in done if t.state.name == "FAIL"]
    complete = [t for t in done if t.state.name == "COMPLETE"]
    assert len(failed) == 1, [(t.number, t.state.name, t.user_attrs.get("retry_of")) for t in done]
    # the killed trial alone was lost: its candidate was queued again as a new trial and ran to the end once.
    # A worker killed while its trial was still choosing leaves part of a candidate: the retry keeps that part
    retried = [t for t in done if t.user_attrs.get("retry_of") == failed[0].number]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE"
    kept = {k: retried[0].params[k] for k in failed[0].params}
    assert kept == failed[0].params, (failed[0].params, retried[0].params)
    assert trials <= len(complete) <= trials + 1  # worker b may start one beyond --trials while a was in its last
    # exactly once: no trial printed twice, every finished trial printed by one worker. (Two trials may hold
    # the same candidate: NSGA-II's crossover of a population of 2 sometimes copies a parent whole.)
    printed = ran(logs["a"]) + ran(logs["b"])
    assert len(printed) == len(set(printed)) and set(printed) == {t.number for t in complete}, printed
    before = records(out)
    lost = before[f"trial-{failed[0].number:04d}"]
    assert lost["status"] == "failed" and "queued again" in lost["error"]
    assert all(before[f"trial-{t.number:04d}"]["status"] == "ok" for t in complete)

    # the study resumes where it stopped (one more trial), and --summary reads it from the database
    summary = tmp_path / "summary.json"
    again = subprocess.run(cmd + [str(len(complete) + 1), "--summary", str(summary)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    resumed = re.findall(r"^trial\s+(\d+)\b", again.stdout, re.M)
    assert len(resumed) == 1 and int(resumed[0]) not in {t.number for t in done}, again.stdout
    after = records(out)
    assert all(after[run] == record for run, record in before.items())  # nothing finished ran again
    study = json.loads(summary.read_text())
    assert study["trials"] == len(done) + 1 and study["states"] == {"complete": len(complete) + 1, "fail": 1}
    assert study["front"] and all(0 <= e["test_acc"] <= 1 for e in study["front"])
    print(f"\nPostgreSQL study: {len(done)} trials by 2 workers in {two_workers_s:.0f} s (worker a killed after "
          f"{killed_at} finished, trial {failed[0].number} lost and run again); resumed with trial {resumed[0]}; "
          f"summary: {len(study['front'])} front models, states {study['states']}")
