"""The compression search: space validation, options, resuming a killed study, failing trials, Dask, records."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import yaml

from conftest import write_search_space
from distill_utils import __main__ as cli
from distill_utils.provenance.lineage import lineage_chain
from distill_utils.runs import search as S
from distill_utils.runs.experiments import REPO, collect, read_record
from distill_utils.runs.report import write_report
from distill_utils.runs.search import candidates
from distill_utils.runs.search.study import SearchOptions, sampler_seed, stop_reason
from distill_utils.runs.search.workers import WorkerLock, work, worker_gone


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny fake dataset and a tiny untrained teacher; the space of a study on them (conftest)."""
    return write_search_space(tmp_path_factory.mktemp("tiny"))


def states(df) -> dict:
    return df.state.value_counts().to_dict()


def test_the_project_space_file_is_valid():
    config = S.load_space(REPO / "params" / "search.yaml")
    assert config["cost"] == "params" and config["space"]["epochs"] == {"low": 1, "high": 5}
    assert list(config)[-1] == "space" and set(config) == {*S.SETTINGS, "space"}


def test_space_errors_name_every_problem_in_one_message(tmp_path):
    bad = {"tarin_images": 10, "cost": "speed", "seed": "zero",
           "space": {"temperture": {"low": 1, "high": 2}, "T": {"low": 8.0, "high": 1.0},
                     "alpha": {"low": 0.0, "high": 1.5}, "epochs": {"low": 1.5, "high": 3}, "loss": ["kd", "kld"],
                     "model": {"low": 1, "high": 2}, "lr": {"low": 0.001, "hi": 0.01}}}
    with pytest.raises(S.SpaceError) as err:
        S.load_space(bad)
    lines = str(err.value).splitlines()
    assert lines[0] == "bad search space (the search space):" and "params/search.yaml" in lines[-1]
    text = str(err.value)
    for expected in ["tarin_images: unknown setting (did you mean 'train_images'?); settings are: dataset,",
                     "cost = 'speed' must be one of flops, latency_ms, params",
                     "seed = 'zero' must be int, got str",
                     "space.temperture: unknown name; searchable names are: model,",
                     "space.T: low = 8.0 is greater than high = 1.0; swap them",
                     "space.alpha.high = 1.5 must be >= 0 and <= 1 (the weight of the distillation term)",
                     "space.epochs.low = 1.5 must be int, got float",
                     "space.loss = 'kld' must be one of dkd, kd",
                     "space.model: a range makes no sense for names",
                     "space.lr.hi: unknown key (did you mean 'high'?); a range has low, high"]:
        assert expected in text, expected
    assert len(lines) == 12  # a title, one line per problem, the fix
    with pytest.raises(S.SpaceError, match="give prune_ratio .* or prune_ratios .*, not both"):
        S.load_space({"space": {"prune_ratio": 0.5, "prune_ratios": 0.5}})
    with pytest.raises(S.SpaceError, match="a log range needs low > 0"):
        S.load_space({"space": {"alpha": {"low": 0.0, "high": 1.0, "log": True}}})
    (tmp_path / "s.yaml").write_text("space: [1, 2")
    with pytest.raises(S.SpaceError, match="cannot read the search space"):
        S.load_space(tmp_path / "s.yaml")
    assert cli.main(["search", "--space", str(tmp_path / "s.yaml"), "--trials", "1", "--out", str(tmp_path / "o")]) == 2


def test_complete_choice_fills_fixed_values_and_per_layer_ratios():
    config = S.load_space({"space": {"model": ["student_cnn", "pruned_teacher"], "T": 2.0,
                                     "prune_ratio": {"low": 0.1, "high": 0.5}}})
    pruned = S.complete_choice({"model": "pruned_teacher", "prune_ratio": 0.3}, config)
    assert pruned["prune_ratios"] == [0.3, 0.3, 0.3] and pruned["T"] == 2.0 and pruned["student_width"] is None
    student = S.complete_choice({"model": "student_cnn", "student_width": 0.5}, config)
    assert student["prune_ratios"] is None and student["student_width"] == 0.5 and student["alpha"] == 0.9
    per_layer = S.complete_choice({"model": "pruned_teacher", "prune_ratios": [0.1, 0.2, 0.3]}, config)
    assert per_layer["prune_ratios"] == [0.1, 0.2, 0.3]


def test_stop_rule_and_pareto_front():
    config = {"prune_when_beaten_by": 2, "prune_margin": 0.02}
    done = lambda n, cost, curve: SimpleNamespace(number=n, state=SimpleNamespace(name="COMPLETE"),  # noqa: E731
                                                  values=[curve[-1], cost], user_attrs={"val_acc_curve": curve})
    trials = [done(0, 100, [0.80, 0.85]), done(1, 200, [0.81, 0.86]), done(2, 500, [0.90, 0.92])]
    reason = stop_reason(trials, 200, 1, 0.70, config)
    assert reason.startswith("stopped after epoch 1 (val_acc 0.7000): 2 finished trials") and "trials 0, 1" in reason
    assert stop_reason(trials, 150, 1, 0.70, config) is None  # only one trial costs no more than 150
    assert stop_reason(trials, 200, 1, 0.79, config) is None  # within the margin of both
    assert stop_reason(trials, 200, 3, 0.10, config) is None  # nobody ran a third epoch
    assert stop_reason(trials, 200, 1, 0.10, {**config, "prune_when_beaten_by": 0}) is None
    assert S.pareto_mask([0.8, 0.9, 0.85, 0.9], [1, 2, 3, 2]) == [True, True, False, True]


def test_failing_trial_is_recorded_and_the_study_goes_on_then_resumes(tiny, tmp_path, monkeypatch):
    out, calls = tmp_path / "study", []
    real = candidates.train_candidate

    def sometimes_nan(choice, ctx, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise FloatingPointError("loss became nan at epoch 1, batch 1; training stopped.")
        return real(choice, ctx, **kwargs)

    monkeypatch.setattr(candidates, "train_candidate", sometimes_nan)
    df = S.search(tiny, 4, out, progress=False)
    assert states(df) == {"complete": 3, "fail": 1} and len(calls) == 4
    failed = df[df.state == "fail"].iloc[0]
    assert failed.note == "FloatingPointError: loss became nan at epoch 1, batch 1; training stopped."
    records = collect(out)
    assert sorted(records.run) == [f"trial-{i:04d}" for i in range(4)] and set(records.notebook) == {"search"}
    assert records.set_index("run").loc[f"trial-{failed.trial:04d}", "error"] == failed.note
    ok = records[records.status == "ok"]
    assert ok["metric.val_acc"].between(0, 1).all() and (ok["metric.params"] > 0).all()
    assert "param.T" in records and "param.model" in records and (out / "trial-0000" / "model.safetensors").exists()
    # a trial's model names where it came from: the teacher it was distilled from (and pruned, for a pruned teacher)
    done = df[df.state == "complete"].iloc[0]
    chain = lineage_chain(out / f"trial-{done.trial:04d}" / "model.safetensors")
    assert [step["op"] for step in chain[0]["steps"]][-1] == "distill" and len(chain) == 2
    assert chain[1]["path"] == str(tiny.parent / "teacher.safetensors") and "teacher" in chain[1]["role"]
    assert chain[0]["steps"][-1]["T"] == done["T"] and all(e["problem"] is None for e in chain)
    html, md = write_report(out)
    text = md.read_text()
    table = text.split("## Sweep of search: val_acc\n\n")[1].split("\n\n")[0].splitlines()
    assert "4 runs: 1 failed, 3 ok" in text and len(table) == 2 + 3  # every finished trial, whatever its model
    # the same search again: nothing left to do; more trials: only the new ones run
    calls.clear()
    assert len(S.search(tiny, 4, out, progress=False)) == 4 and calls == []
    df = S.search(tiny, 5, out, progress=False)
    assert states(df) == {"complete": 4, "fail": 1} and len(calls) == 1
    # the summary for the README: the front (cheapest first), each model's test accuracy, the compute
    summary = json.loads(json.dumps(S.study_summary(out)))  # JSON-ready
    front = df[df.pareto].sort_values("params")
    assert summary["trials"] == 5 and summary["states"] == {"complete": 4, "fail": 1}
    assert [e["trial"] for e in summary["front"]] == list(front.trial)
    assert [e["params"] for e in summary["front"]] == list(front.params)
    assert all(0 <= e["test_acc"] <= 1 and e["model"] in ("student_cnn", "pruned_teacher") for e in summary["front"])
    assert summary["image_epochs"] == int(df.epochs_run.fillna(0).sum()) * summary["train_images"]
    assert all(e["test_acc_seeds"] == {"0": e["test_acc"]} for e in summary["front"])
    assert summary["retrain_seconds"] == 0 and not list(out.glob("trial-*/seeds.json"))
    # a folder made by another space is refused, with the difference
    other = yaml.safe_load(tiny.read_text())
    other["space"]["T"] = {"low": 1.0, "high": 8.0, "log": True}
    with pytest.raises(S.SpaceError, match=r"a different search space \(space\.T\.high: 4\.0 there, 8\.0 now\)"):
        S.search(other, 5, out, progress=False)


def test_a_trials_line_is_printed_only_once_the_study_holds_its_result(tiny, tmp_path, monkeypatch):
    # a worker killed between printing a trial and storing its result would print a trial that then fails
    from distill_utils.runs.search import workers
    out, seen = tmp_path / "study", []

    def checked_print(line, **kwargs):
        trial = int(line.split()[1])
        state = S.trials_table(out).set_index("trial").loc[trial, "state"]
        seen.append((trial, state))

    monkeypatch.setattr(workers, "print", checked_print, raising=False)
    S.search(tiny, 2, out, progress=True)
    assert [t for t, _ in seen] == [0, 1] and all(state == "complete" for _, state in seen), seen


def test_summary_trains_the_front_again_with_more_seeds_and_keeps_what_it_trained(tiny, tmp_path, monkeypatch):
    out = tmp_path / "seeds"
    df = S.search(tiny, 3, out, progress=False)
    ctx = S.context(df.attrs["config"])
    # a trial's row gives back its candidate: trained again with the trial's seed, it scores the same
    row = df[df.state == "complete"].iloc[0]
    again = S.train_candidate(S.trial_choice(row, ctx.config, ctx.teacher), ctx)
    assert again["val_acc"] == row.val_acc and again["params"] == row.params
    summary = json.loads(json.dumps(S.study_summary(out, seeds=[0, 1, 2])))
    for entry in summary["front"]:
        accs = entry["test_acc_seeds"]
        assert list(accs) == ["0", "1", "2"] and accs["0"] == entry["test_acc"]
        assert all(0 <= a <= 1 for a in accs.values())
        kept = json.loads((out / f"trial-{entry['trial']:04d}" / "seeds.json").read_text())
        assert {s: r["test_acc"] for s, r in kept.items()} == {"1": accs["1"], "2": accs["2"]}
    assert summary["retrain_seconds"] == round(sum(
        r["seconds"] for p in out.glob("trial-*/seeds.json") for r in json.loads(p.read_text()).values()))
    # again: nothing is trained twice; a damaged file is redone, only for the seeds it lost
    calls = []
    real = candidates.train_candidate
    monkeypatch.setattr(candidates, "train_candidate", lambda *a, **k: calls.append(k["seed"]) or real(*a, **k))
    assert S.study_summary(out, seeds=[0, 1, 2])["front"] == summary["front"] and calls == []
    first = out / f"trial-{summary['front'][0]['trial']:04d}" / "seeds.json"
    first.write_text('{"1": "lost", "2": {"test_acc": 0.5, "seconds": 1.0}, "x": 3}')
    assert S.study_summary(out, seeds=[1, 2])["front"][0]["test_acc_seeds"]["2"] == 0.5 and calls == [1]
    first.write_text("not json")
    S.study_summary(out, seeds=[2])
    assert calls == [1, 2]


def test_retrain_seeds_needs_a_summary_and_seeds_of_0_or_more(capsys):
    assert cli.main(["search", "--trials", "1", "--retrain-seeds", "1"]) == 2
    assert capsys.readouterr().err == "FAIL: --retrain-seeds is for the summary: add --summary FILE\n"
    assert cli.main(["search", "--trials", "1", "--summary", "s.json", "--retrain-seeds", "-1"]) == 2
    assert capsys.readouterr().err == "FAIL: --retrain-seeds takes seeds of 0 or more, got [-1]\n"


def test_resume_after_a_kill_never_reruns_finished_trials(tiny, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "distill_utils", "search", "--space", str(tiny), "--trials", "6", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        records = {p.parent.name: read_record(p) for p in out.glob("trial-*/search.record.json")}
        statuses = [r["status"] for r in records.values() if r]
        if statuses.count("ok") >= 2 and "running" in statuses:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait(timeout=30) == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    before = {p.parent.name: p.read_text() for p in out.glob("trial-*/search.record.json")}
    finished = {run for run, text in before.items() if json.loads(text)["status"] == "ok"}
    killed = [run for run, text in before.items() if json.loads(text)["status"] == "running"]
    assert len(killed) == 1 and len(finished) >= 2

    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    after = {p.parent.name: p.read_text() for p in out.glob("trial-*/search.record.json")}
    assert all(after[run] == before[run] for run in finished)  # finished trials untouched: not run again
    killed_record = json.loads(after[killed[0]])
    assert killed_record["status"] == "failed" and "queued again" in killed_record["error"]
    df = S.trials_table(out)
    assert states(df) == {"complete": 6, "fail": 1} and "killed" in df[df.state == "fail"].note.iloc[0]
    sampled = [c for c in df.columns if c in S.SPACE or c.startswith("prune_ratio_")]
    killed_params = df[df.trial == int(killed[0].split("-")[1])][sampled].dropna(axis=1).iloc[0]
    same = df[(df.state == "complete") & (df[killed_params.index] == killed_params).all(axis=1)]
    assert len(same) == 1  # the killed trial's parameters ran once more, to the end
    assert "Pareto front (validation accuracy vs params)" in result.stdout


def test_dask_local_cluster_workers_share_the_study(tiny, tmp_path):
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        df = S.search(tiny, 4, tmp_path / "dask", scheduler=client, progress=False)
    assert 4 <= (df.state == "complete").sum() <= 5  # two workers may each start a last trial
    records = collect(tmp_path / "dask")
    assert (records.status == "ok").all() and records.run.is_unique and len(records) == len(df)
    workers = set(df.worker)
    assert 1 <= len(workers) <= 2 and not any(w.endswith(f":{os.getpid()}") for w in workers)  # run by Dask's processes


def test_search_options_refuse_a_bad_value_in_one_line(tmp_path, capsys):
    for kwargs, message in [({"trials": 0}, "trials = 0 must be >= 1"),
                            ({"trials": 2.5}, "trials = 2.5 must be an integer, got float"),
                            ({"workers": -1}, "workers = -1 must be >= 0"),
                            ({"heartbeat_s": 5, "stale_after_s": 5}, "stale_after_s = 5 must be more than heartbeat_s"),
                            ({"storage": 3}, "storage = 3 must be an Optuna storage URL")]:
        with pytest.raises(ValueError) as err:
            SearchOptions(out=tmp_path, **kwargs)
        assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)
    options = SearchOptions(out=tmp_path / "x" / ".." / "study")
    assert options.out == (tmp_path / "study").resolve() and options.study_name == "study"
    space = str(REPO / "params" / "search.yaml")
    assert cli.main(["search", "--space", space, "--trials", "0", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == "FAIL: trials = 0 must be >= 1\n" and not (tmp_path / "o").exists()


def test_a_worker_lock_tells_a_running_worker_from_a_stopped_one(tmp_path):
    with WorkerLock(tmp_path) as lock:
        assert not worker_gone(lock.path)  # held, even when asked from the same process
    assert worker_gone(lock.path) and not lock.path.exists()
    code = ("import os, sys; from distill_utils.runs.search.workers import WorkerLock; "
            "lock = WorkerLock(sys.argv[1]).__enter__(); print(lock.path, flush=True); sys.stdin.read(); os._exit(9)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    path = proc.stdout.readline().strip()
    assert not worker_gone(path)  # another process holds it
    proc.stdin.close()  # the worker dies without letting go: its file stays, the OS frees its lock
    assert proc.wait(timeout=30) == 9 and os.path.exists(path)
    assert worker_gone(path) and not os.path.exists(path)
    # two workers started at once on a fresh study: both see no trial, each seeds its sampler its own way
    with WorkerLock(tmp_path) as a, WorkerLock(tmp_path) as b:
        assert a.others() == b.others() == 1
        seeds = {sampler_seed({"seed": 0}, 0, 0, lock.token) for lock in (a, b)}
    assert len(seeds) == 2 and sampler_seed({"seed": 0}, 0, 0) == 0  # alone: the space's seed, reproducible


def test_a_killed_worker_of_a_database_study_is_found_by_optunas_heartbeat(tiny, tmp_path, monkeypatch):
    import optuna
    import torch
    out, url = tmp_path / "db", f"sqlite:///{tmp_path / 'study.db'}"
    config = S.load_space(tiny)
    options = SearchOptions(out=out, trials=4, storage=url, heartbeat_s=1, stale_after_s=5, progress=False)
    code = ("import pickle, sys; from distill_utils.runs.search import run_study; "
            "run_study(*pickle.loads(sys.stdin.buffer.read()))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc.stdin.write(pickle.dumps((config, options)))
    proc.stdin.close()
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        statuses = [r["status"] for p in out.glob("trial-*/search.record.json") if (r := read_record(p))]
        if statuses.count("ok") >= 1 and "running" in statuses:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait(timeout=30) == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    # as if the killed worker ran on another machine: only Optuna's heartbeat can tell it stopped
    monkeypatch.setattr("socket.gethostname", lambda: "another-machine")
    time.sleep(options.stale_after_s + 1)  # its last heartbeat is older than the grace period
    threads, verbosity = torch.get_num_threads(), optuna.logging.get_verbosity()
    assert work(config, options, threads=1) >= 1
    assert torch.get_num_threads() == threads and optuna.logging.get_verbosity() == verbosity  # both restored
    df = S.trials_table(out, url)
    assert states(df) == {"complete": 4, "fail": 1}, df[["trial", "state", "note"]]
    killed = df[df.state == "fail"].iloc[0]
    assert killed.note == "killed; queued again"
    assert "queued again" in read_record(out / f"trial-{killed.trial:04d}" / "search.record.json")["error"]
    sampled = [c for c in df.columns if c in S.SPACE or c.startswith("prune_ratio_")]
    again = df[(df.state == "complete") & (df[sampled].fillna(-1) == killed[sampled].fillna(-1)).all(axis=1)]
    assert len(again) == 1 and again.trial.iloc[0] > killed.trial  # its parameters ran once more, to the end
