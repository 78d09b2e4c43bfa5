"""Command line: ``python -m distill_utils data | run | sweep | report | lineage | sign | verify | pretrained | reference``."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import yaml


def cmd_data(args) -> int:
    from .data import DataError, load_dataset
    try:
        ds = load_dataset(args.name, root=args.root, download=args.download)
    except DataError as err:
        print(f"FAIL: {err}", file=sys.stderr)
        return 1
    print(f"OK: {ds}")
    return 0


def _files(paths) -> dict:
    """The merged contents of YAML parameter files."""
    params = {}
    for f in paths or []:
        try:
            params.update(yaml.safe_load(open(f)) or {})
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"cannot read parameter file {f}: {err}") from None
    return params


def _final_table(out) -> None:
    from .experiments import collect
    df = collect(out)
    print(df[["notebook", "status", "wall_s", "main_metric"]].to_string(index=False))
    final = df[(df.notebook == "07_prune_and_distill") & (df.status == "ok")]
    if len(final) and "metric.final_table" in final:
        import pandas as pd
        print("\nfinal comparison:\n" + pd.DataFrame(json.loads(final["metric.final_table"].iloc[0])).to_string(index=False))


def cmd_run(args) -> int:
    from .experiments import papermill_error, run_sequence
    from .report import write_report
    start, failed = time.perf_counter(), None
    try:
        params = {**_files(args.file), **{k: yaml.safe_load(v) for k, v in args.param or []}}
        out = run_sequence(args.notebooks, args.out, params, strict=[k for k, _ in args.param or []])
    except ValueError as err:  # an unreadable parameter file or an unknown parameter name
        print(f"FAIL: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # a notebook failed: its executed copy and failed record are kept
        failed, out = papermill_error(err), Path(getattr(err, "out_dir", "") or args.out or ".")
    html, _ = write_report(out) if list(Path(out).glob("*.record.json")) else (None, None)
    print(f"\nfinished in {time.perf_counter() - start:.0f} s; results in {out}" + (f"\nreport: {html}" if html else ""))
    if failed:
        print(f"FAIL: a notebook failed: {failed}; its executed copy in {out} shows where", file=sys.stderr)
        return 1
    _final_table(out)
    return 0


def cmd_sweep(args) -> int:
    from .report import write_report
    from .sweeps import sweep
    try:
        grid = _files(args.grid)
        grid.update({name: [yaml.safe_load(v) for v in values] for name, *values in args.param or []})
        df = sweep(args.notebook, grid, _files(args.file), args.seeds, args.out, args.workers, args.scheduler)
    except (ValueError, FileNotFoundError) as err:
        print(f"FAIL: {err}", file=sys.stderr)
        return 2
    failed = int((df.status != "ok").sum())
    html, _ = write_report(df.attrs["out"])
    print(f"{len(df) - failed} runs ok, {failed} failed; report: {html}")
    return 1 if failed else 0


def cmd_report(args) -> int:
    from .report import write_report
    try:
        html, md = write_report(args.path)
    except FileNotFoundError as err:
        print(f"FAIL: {err}", file=sys.stderr)
        return 1
    print(f"wrote {html} and {md}")
    return 0


def cmd_lineage(args) -> int:
    from .checkpoints import format_lineage, lineage_chain
    chain = lineage_chain(args.checkpoint)
    print(format_lineage(chain))
    return 1 if chain[0]["problem"] else 0


def cmd_sign(args) -> int:
    from .checkpoints import CheckpointError, sign_checkpoint, verify_checkpoint
    try:
        if args.command == "sign":
            manifest = sign_checkpoint(args.checkpoint)
            print(f"signed {args.checkpoint} (key id {manifest['signature']['key_id']})")
        else:
            manifest = verify_checkpoint(args.checkpoint)
            how = {"signed": "SHA-256 and signature match", "pinned": "SHA-256 matches the hash pinned in the code",
                   "no key": "SHA-256 matches (no signing key configured)"}
            print(f"OK: {args.checkpoint}: {how[manifest['verified']]}")
    except CheckpointError as err:
        print(f"FAIL: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_pretrained(args) -> int:
    """Train the shipped teacher with params/full.yaml and copy it to data/pretrained/."""
    from .checkpoints import PRETRAINED_DIR, verify_checkpoint
    from .experiments import REPO, run_sequence
    out = run_sequence(["01"], REPO / "runs" / "pretrained",
                       yaml.safe_load(open(REPO / "params" / "full.yaml")))
    PRETRAINED_DIR.mkdir(parents=True, exist_ok=True)
    for suffix in (".safetensors", ".json"):
        shutil.copy(out / f"teacher{suffix}", PRETRAINED_DIR / f"teacher_fashion_mnist{suffix}")
    manifest = verify_checkpoint(PRETRAINED_DIR / "teacher_fashion_mnist.safetensors")
    print(f"shipped teacher: sha256 {manifest['sha256']}, metrics {manifest['metadata'].get('metrics')}")
    print("update PRETRAINED in distill_utils/checkpoints.py with this sha256")
    return 0


def cmd_reference(args) -> int:
    """Full-size reference records in data/reference/ (resumable), or the README table from them."""
    from .reference import run_reference, update_readme
    try:
        if args.readme:
            changed = update_readme()
            print("README.md: reference table " + ("rewritten" if changed else "already up to date"))
            return 0
        run_reference(args.only or ("03", "04"), args.seeds)
    except (ValueError, FileNotFoundError) as err:
        print(f"FAIL: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # a notebook failed: the seeds done so far are kept
        from .experiments import papermill_error
        print(f"FAIL: a reference run failed: {papermill_error(err)}; finished seeds are kept, "
              "rerun the same command to continue", file=sys.stderr)
        return 1
    print("done; python -m distill_utils reference --readme updates the README's table")
    return 0


def cmd_search(args) -> int:
    """An Optuna study over compression settings (params/search.yaml); the same command continues it."""
    from .checkpoints import CheckpointError
    from .data import DataError
    from .report import write_report
    from .search import search
    out = args.out or f"runs/search-{Path(args.space).stem}"
    try:
        df = search(args.space, args.trials, out, args.workers, args.scheduler, args.storage, args.study)
    except (ValueError, FileNotFoundError, DataError, CheckpointError) as err:  # SpaceError is a ValueError
        print(f"FAIL: {err}", file=sys.stderr)
        return 2
    cost = df.attrs["config"]["cost"]
    counts = ", ".join(f"{n} {s}" for s, n in sorted(df.state.value_counts().items()))
    print(f"\n{len(df)} trials ({counts}) in {df.attrs['out']}")
    front = df[df.pareto].sort_values(cost)
    if not len(front):
        print("FAIL: no trial finished; see the notes above", file=sys.stderr)
        return 1
    print(f"Pareto front (validation accuracy vs {cost}):\n" + front.drop(columns=["pareto", "state"]).to_string(index=False))
    html, _ = write_report(df.attrs["out"])
    print(f"report: {html}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distill_utils")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data", help="check that a dataset can be found (or download it)")
    p.add_argument("--name", default="fashion_mnist")
    p.add_argument("--root", default="data")
    p.add_argument("--download", action="store_true", help="allow torchvision's download")
    p.set_defaults(func=cmd_data)
    p = sub.add_parser("run", help="execute notebooks in order with papermill into runs/<timestamp>")
    p.add_argument("notebooks", nargs="*", help="names or number prefixes (default: the whole sequence)")
    p.add_argument("--out", help="output folder (default runs/<timestamp>)")
    p.add_argument("-f", "--file", action="append", help="YAML parameter file (as in papermill)")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"))
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("sweep", help="run one notebook over a grid of parameters and seeds")
    p.add_argument("notebook", help="name, number prefix or path of the notebook")
    p.add_argument("-f", "--file", action="append", help="YAML file of fixed parameters (as in papermill)")
    p.add_argument("-p", "--param", nargs="+", action="append", metavar="NAME VALUE",
                   help="a swept parameter and its values, e.g. -p T 1 2 4 8")
    p.add_argument("--grid", action="append", help="YAML file of {name: [values]} to sweep")
    p.add_argument("--seeds", nargs="+", type=int, help="run every grid point once per seed")
    p.add_argument("--workers", type=int, default=2, help="runs at once on this machine (default 2)")
    p.add_argument("--scheduler", help="Dask scheduler address (tcp://host:port) instead of local workers")
    p.add_argument("--out", help="sweep folder (default runs/sweep-<notebook>); re-running skips finished runs")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("report", help="write report.html and report.md for a folder of runs")
    p.add_argument("path")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("lineage", help="print the chain of checkpoints a checkpoint came from")
    p.add_argument("checkpoint")
    p.set_defaults(func=cmd_lineage)
    for name, text in (("sign", "sign a checkpoint's manifest with $DISTILL_SIGNING_KEY"),
                       ("verify", "check a checkpoint's SHA-256 and, with a key configured, its signature")):
        p = sub.add_parser(name, help=text)
        p.add_argument("checkpoint")
        p.set_defaults(func=cmd_sign)
    p = sub.add_parser("pretrained", help="retrain the shipped teacher with params/full.yaml")
    p.set_defaults(func=cmd_pretrained)
    p = sub.add_parser("reference", help="full-size reference runs (params/full.yaml, per seed) into data/reference/")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds to run (default 0 1 2); recorded ones are skipped")
    p.add_argument("--only", nargs="+", help="notebooks (names or number prefixes; default 03 04)")
    p.add_argument("--readme", action="store_true", help="rewrite the README's result table from the records, run nothing")
    p.set_defaults(func=cmd_reference)
    p = sub.add_parser("search", help="Optuna search of compression settings (accuracy vs cost); rerun to continue")
    p.add_argument("--space", default="params/search.yaml", help="the search space (default params/search.yaml)")
    p.add_argument("--trials", type=int, required=True, help="finished trials the study should have in all")
    p.add_argument("--out", help="study folder (default runs/search-<space>); the same folder continues the study")
    p.add_argument("--workers", type=int, default=1, help="worker processes here, or Dask tasks with --scheduler")
    p.add_argument("--scheduler", help="Dask scheduler address (tcp://host:port); workers share the storage")
    p.add_argument("--storage", help="Optuna storage URL shared by several machines (e.g. postgresql://...); "
                                     "default: the journal file <out>/study.journal")
    p.add_argument("--study", help="study name in a shared storage (default: the --out folder's name)")
    p.set_defaults(func=cmd_search)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
