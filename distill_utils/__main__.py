"""Command line: ``python -m distill_utils data | kit | run | sweep | report | lineage | sign | verify | pretrained |
readme | reference | search | challenge``."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def fail(message, code: int = 1) -> int:
    """Print one line (``FAIL: ...``) to stderr and return the exit code."""
    print("FAIL: " + " ".join(str(message).split()), file=sys.stderr)
    return code


def cmd_data(args) -> int:
    """Find the dataset, else install or download it (``setup.fetch``), then load it to check every file."""
    from distill_utils.data import DataError, load_dataset
    from distill_utils.setup.fetch import get_dataset, offline_requested
    try:
        get_dataset(args.name, args.root, offline=args.offline or offline_requested(), download_only=args.download)
        ds = load_dataset(args.name, root=args.root)
    except (DataError, ValueError) as err:
        return fail(err)
    print(f"OK: {ds}")
    return 0


def cmd_kit(args) -> int:
    """A workshop kit for laptops with no internet (``setup.kit``); prints its size per platform."""
    from distill_utils.provenance.checkpoints import CheckpointError
    from distill_utils.setup.kit import PLATFORMS, KitError, KitOptions, build_kit, size_lines
    platforms = tuple(PLATFORMS) if args.platform == ["all"] else tuple(args.platform or ())
    options = KitOptions(out=Path(args.out), platforms=platforms, python=args.python, torch_index=args.torch_index,
                         tarballs=not args.no_tarball)
    try:
        record = build_kit(options)
    except (KitError, CheckpointError) as err:
        return fail(err, 2)
    except OSError as err:
        return fail(f"cannot write the kit into {args.out}: {err.strerror or err}; choose a writable folder "
                    "with free space (--out)", 2)
    print("\n".join(size_lines(record)))
    return 0


def _files(paths, notebooks=()) -> dict:
    """The merged contents of YAML parameter files, every name checked against the notebooks'."""
    from distill_utils.runs.experiments import check_parameter_names
    from distill_utils.runs.params import read_parameter_file
    params = {}
    for f in paths or []:
        values = read_parameter_file(f)
        check_parameter_names(values, notebooks, f"parameter file {f}")
        params.update(values)
    return params


def _final_table(out) -> None:
    from distill_utils.runs.experiments import collect
    df = collect(out)
    print(df[["notebook", "status", "wall_s", "main_metric"]].to_string(index=False))
    from distill_utils.runs.report import final_rows
    rows = final_rows(df[(df.notebook == "07_prune_and_distill") & (df.status == "ok")])
    if rows:
        import pandas as pd
        print("\nfinal comparison:\n" + pd.DataFrame(rows).to_string(index=False))


def cmd_run(args) -> int:
    from distill_utils.runs.experiments import NotebookFailed, resolve_notebooks, run_sequence
    from distill_utils.runs.params import parse_value
    from distill_utils.runs.report import write_report
    start, failed = time.perf_counter(), None
    try:
        notebooks = resolve_notebooks(args.notebooks)
        params = {**_files(args.file, notebooks), **{k: parse_value(v, k) for k, v in args.param or []}}
        out = run_sequence(notebooks, args.out, params, strict=[k for k, _ in args.param or []])
    except FileNotFoundError as err:  # an unknown notebook
        return fail(err, 2)
    except ValueError as err:  # a bad parameter file, name or value (ParameterError is a ValueError)
        return fail(err, 2)
    except NotebookFailed as err:  # its executed copy and failed record are kept
        failed, out = err, err.out_dir
    except OSError as err:  # an unwritable --out
        return fail(err, 2)
    try:
        html, _ = write_report(out) if list(Path(out).glob("*.record.json")) else (None, None)
    except OSError as err:
        html = None
        print(f"could not write the report in {out}: {err.strerror or err}", file=sys.stderr)
    print(f"\nfinished in {time.perf_counter() - start:.0f} s; results in {out}"
          + (f"\nreport: {html}" if html else ""))
    if failed:
        return fail(f"notebook {failed.notebook} failed: {failed.error}; its executed copy in {out} shows where")
    _final_table(out)
    return 0


def _launch_problem(address: str | None, workers: int) -> str | None:
    """Why the Dask scheduler at ``address`` cannot be reached (found in seconds, not after a 30 s timeout);
    with no scheduler, a warning when more workers are asked for than this machine has CPU cores."""
    import socket
    from urllib.parse import urlsplit
    if not address and workers > (cores := os.cpu_count() or 1):
        print(f"warning: --workers {workers} on {cores} CPU cores: the runs compete for them and each is slower; "
              f"--workers {cores} or fewer finishes as soon", file=sys.stderr)
    try:
        if not address:
            return None
        url = urlsplit(address if "://" in address else f"tcp://{address}")
        socket.create_connection((url.hostname, url.port or 8786), timeout=5).close()
    except (OSError, ValueError, TypeError) as err:
        return (f"cannot reach the Dask scheduler at {address!r} ({getattr(err, 'strerror', None) or err}); start "
                "one there (dask scheduler) or give its address as --scheduler tcp://host:8786")
    return None


def cmd_sweep(args) -> int:
    from distill_utils.runs.experiments import resolve_notebooks
    from distill_utils.runs.params import parse_value, read_parameter_file
    from distill_utils.runs.report import write_report
    from distill_utils.runs.sweeps import sweep
    if problem := _launch_problem(args.scheduler, args.workers):
        return fail(problem, 2)
    try:
        notebook = resolve_notebooks([args.notebook])
        grid = {}
        for f in args.grid or []:
            grid.update(read_parameter_file(f))
        for name, *values in args.param or []:
            if not values:
                raise ValueError(f"-p {name} has no values; give at least one (e.g. -p {name} 1 2)")
            grid[name] = [parse_value(v, name) for v in values]
        df = sweep(notebook[0], grid, _files(args.file, notebook), args.seeds, args.out, args.workers, args.scheduler)
    except (ValueError, FileNotFoundError) as err:
        return fail(err, 2)
    except OSError as err:
        return fail(f"cannot write the sweep's runs: {err.strerror or err} ({getattr(err, 'filename', '')}); "
                    "choose a writable folder with --out", 2)
    failed = int((df.status != "ok").sum())
    html, _ = write_report(df.attrs["out"])
    print(f"{len(df) - failed} runs ok, {failed} failed; report: {html}")
    return 1 if failed else 0


def cmd_report(args) -> int:
    from distill_utils.runs.report import write_report
    try:
        html, md = write_report(args.path)
    except FileNotFoundError as err:
        return fail(err)
    except OSError as err:
        return fail(f"cannot write the report into {args.path}: {err.strerror or err}")
    print(f"wrote {html} and {md}")
    from distill_utils.runs.experiments import collect
    unreadable = collect(args.path).query("status == 'unreadable'")
    if len(unreadable):
        return fail(f"{len(unreadable)} record(s) could not be read and are listed as unreadable in the report: "
                    + "; ".join(unreadable.error))
    return 0


def cmd_lineage(args) -> int:
    from distill_utils.provenance.lineage import broken_links, format_lineage, lineage_chain
    from distill_utils.provenance.signing import SigningKeyError
    try:  # a checkpoint or an .onnx file: one walker reads both
        chain = lineage_chain(args.checkpoint)
    except SigningKeyError as err:  # e.g. a malformed signing key
        return fail(err)
    print(format_lineage(chain))
    broken = broken_links(chain)
    if broken:
        return fail(f"{len(broken)} link(s) of the lineage are broken (marked !)")
    return 0


def cmd_sign(args) -> int:
    from distill_utils.provenance.checkpoints import CheckpointError, sign_checkpoint, verify_checkpoint
    from distill_utils.provenance.onnx_meta import OnnxFileError, verify_onnx
    try:
        if args.command == "sign":
            manifest = sign_checkpoint(args.checkpoint)
            print(f"signed {args.checkpoint} (key id {manifest['signature']['key_id']})")
        else:  # an ONNX file has no hash to check, only its signature
            onnx = Path(args.checkpoint).suffix.lower() == ".onnx"
            verified = verify_onnx(args.checkpoint) if onnx else verify_checkpoint(args.checkpoint)["verified"]
            how = {"signed": "SHA-256 and signature match", "pinned": "SHA-256 matches the hash pinned in the code",
                   "no key": "SHA-256 matches (no signing key configured)"}
            print(f"OK: {args.checkpoint}: " + ({"signed": "signature matches", "no key": "no signing key configured"}
                                                 if onnx else how)[verified])
    except (CheckpointError, OnnxFileError) as err:
        return fail(err)
    return 0


def cmd_pretrained(args) -> int:
    """Train a shipped model again (the CNN teacher; --vit: notebook 11's ViT; --detector: notebook 12's) into
    data/pretrained/."""
    from distill_utils.provenance.pretrained import PRETRAINED_DIR
    from distill_utils.runs.experiments import REPO
    from distill_utils.setup.pretrained import cnn_teacher, detector_teacher, replace_shipped, vit_teacher
    name, make = (("vit_fashion_mnist", vit_teacher) if args.vit else ("detector_fashion_mnist", detector_teacher)
                  if args.detector else ("teacher_fashion_mnist", cnn_teacher))
    made = make(REPO)
    try:  # both files written in full before either replaces the shipped one: a full disk changes nothing
        manifest, json_sha = replace_shipped(made, name, PRETRAINED_DIR)
    except OSError as err:
        return fail(f"cannot replace the shipped {name} in {PRETRAINED_DIR}: {err.strerror or err}; new one: {made}")
    print(f"shipped {name}: sha256 {manifest['sha256']}, metrics {manifest['metadata'].get('metrics')}")
    print(f"update PRETRAINED (weights) and PRETRAINED_MANIFESTS ({json_sha}) in "
          "distill_utils/provenance/pretrained.py")
    return 0


def cmd_readme(args) -> int:
    """The README's per-notebook minutes from run records (printed; rewritten with --write)."""
    from distill_utils.readme.minutes import gather, with_minutes
    from distill_utils.readme.writer import rewrite
    try:
        minutes, sources = gather(args.minutes)
        for name, value in minutes.items():
            print(f"{name:40} {value:5.1f} min")
        if args.write:
            changed = rewrite(lambda text: with_minutes(text, minutes, sources), args.file)
            print("README.md: minutes " + ("rewritten" if changed else "already up to date"))
    except (OSError, ValueError) as err:
        return fail(str(err))
    return 0


def cmd_reference(args) -> int:
    """Full-size reference records in data/reference/ (resumable), or the README table from them."""
    from distill_utils.readme.tables import update_readme
    from distill_utils.runs.reference import NOTEBOOKS, run_reference, run_solutions
    try:
        if args.readme:
            changed = update_readme()
            print("README.md: reference table " + ("rewritten" if changed else "already up to date"))
            return 0
        run_solutions(args.only, args.seeds) if args.solutions else run_reference(args.only or NOTEBOOKS, args.seeds)
    except (ValueError, FileNotFoundError) as err:  # a malformed record, parameters that changed, a bad name
        return fail(err, 2)
    except OSError as err:  # README.md or a record could not be written: the atomic writer changed nothing
        return fail(f"cannot write {getattr(err, 'filename', None) or 'the file'}: {err.strerror or err}", 1)
    except Exception as err:  # a notebook failed: the seeds done so far are kept
        from distill_utils.runs.experiments import papermill_error
        print(f"FAIL: a reference run failed: {papermill_error(err)}; finished seeds are kept, "
              "rerun the same command to continue", file=sys.stderr)
        return 1
    print("done; python -m distill_utils reference --readme updates the README's table")
    return 0


def cmd_search(args) -> int:
    """An Optuna study over compression settings (params/search.yaml); the same command continues it."""
    from distill_utils.data import DataError
    from distill_utils.provenance.checkpoints import CheckpointError
    from distill_utils.runs.report import write_report
    from distill_utils.runs.search import search, study_summary
    out = args.out or f"runs/search-{Path(args.space).stem}"
    if args.retrain_seeds and not args.summary:
        return fail("--retrain-seeds is for the summary: add --summary FILE", 2)
    if any(s < 0 for s in args.retrain_seeds):
        return fail(f"--retrain-seeds takes seeds of 0 or more, got {args.retrain_seeds}", 2)
    if args.summary and Path(args.summary).is_dir():  # found now, not after the study's hours
        return fail(f"--summary {args.summary} is a folder; name the JSON file to write in it", 2)
    if problem := _launch_problem(args.scheduler, args.workers):
        return fail(problem, 2)
    try:
        df = search(args.space, args.trials, out, args.workers, args.scheduler, args.storage, args.study)
    except (ValueError, FileNotFoundError, DataError, CheckpointError) as err:  # SpaceError is a ValueError
        return fail(err, 2)
    except OSError as err:  # the study folder or its journal cannot be written
        return fail(f"cannot write the study in {out}: {err.strerror or err}; choose a writable folder with --out", 2)
    cost = df.attrs["config"]["cost"]
    counts = ", ".join(f"{n} {s}" for s, n in sorted(df.state.value_counts().items()))
    print(f"\n{len(df)} trials ({counts}) in {df.attrs['out']}")
    front = df[df.pareto].sort_values(cost)
    if not len(front):
        print("FAIL: no trial finished; see the notes above", file=sys.stderr)
        return 1
    print(f"Pareto front (validation accuracy vs {cost}):\n"
          + front.drop(columns=["pareto", "state"]).to_string(index=False))
    html, _ = write_report(df.attrs["out"])
    print(f"report: {html}")
    if args.summary:
        from distill_utils.common.files import atomic_write_json
        try:
            atomic_write_json(args.summary, study_summary(out, args.storage, args.study, args.retrain_seeds))
        except OSError as err:
            return fail(f"cannot write the summary {args.summary}: {err.strerror or err}")
        print(f"summary of the study (its front with test accuracies): {args.summary}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distill_utils")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data", help="find the dataset; else install it (apt-get, as root on Debian/Ubuntu) or "
                                     "download it (torchvision, checked against data/README.md)")
    p.add_argument("--name", default="fashion_mnist")
    p.add_argument("--root", default="data")
    p.add_argument("--offline", action="store_true",
                   help="only look, never install or download (also: environment variable OFFLINE=1)")
    p.add_argument("--download", action="store_true", help="skip apt-get: torchvision's download only")
    p.set_defaults(func=cmd_data)
    p = sub.add_parser("kit", help="a workshop kit: wheels, dataset, pretrained teacher and install scripts "
                                    "for laptops with no internet")
    p.add_argument("--out", default="kit", help="kit folder (default kit/); tarballs kit-<platform>.tar beside it")
    p.add_argument("--platform", nargs="+", metavar="NAME",
                   help="linux-x86_64, macos-arm64, windows-x86_64, or all (default: this machine's)")
    p.add_argument("--python", default=f"{sys.version_info[0]}.{sys.version_info[1]}",
                   help="the laptops' Python version, e.g. 3.11 (default: this one's)")
    p.add_argument("--torch-index", metavar="URL", help="also this index of CPU-only torch wheels for Linux, "
                                                        "e.g. https://download.pytorch.org/whl/cpu (never required)")
    p.add_argument("--no-tarball", action="store_true", help="only the folder")
    p.set_defaults(func=cmd_kit)
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
    p = sub.add_parser("lineage", help="print the chain of checkpoints a checkpoint (or .onnx file) came from")
    p.add_argument("checkpoint")
    p.set_defaults(func=cmd_lineage)
    for name, text in (("sign", "sign a checkpoint's manifest with $DISTILL_SIGNING_KEY"),
                       ("verify", "check a checkpoint's SHA-256 and, with a key configured, its signature")):
        p = sub.add_parser(name, help=text)
        p.add_argument("checkpoint")
        p.set_defaults(func=cmd_sign)
    p = sub.add_parser("pretrained", help="retrain the shipped teacher with params/full.yaml")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--vit", action="store_true", help="notebook 11's Vision Transformer teacher instead")
    which.add_argument("--detector", action="store_true", help="notebook 12's detector teacher instead")
    p.set_defaults(func=cmd_pretrained)
    p = sub.add_parser("reference", help="full-size reference runs (params/full.yaml, per seed) into data/reference/")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default 0 1 2); recorded: skipped")
    p.add_argument("--only", nargs="+", help="notebooks (names or number prefixes; default 03 04 05 06 09 11)")
    p.add_argument("--readme", action="store_true", help="only rewrite the README's table from the records")
    p.add_argument("--solutions", action="store_true", help="worked solutions at their exercises' sizes instead "
                   "(params/solutions.yaml, into data/reference/solutions/)")
    p.set_defaults(func=cmd_reference)
    p = sub.add_parser("readme", help="the README's per-notebook minutes from run records (workshop defaults)")
    p.add_argument("--minutes", nargs="+", required=True, metavar="RUN",
                   help="runs/<timestamp> folders written by `make run` (or single notebook runs); a notebook's "
                        "minutes come from the first folder that has it")
    p.add_argument("--write", action="store_true", help="rewrite README.md (default: print the minutes)")
    p.add_argument("--file", default=None, help="the README to rewrite (default: the project's README.md)")
    p.set_defaults(func=cmd_readme)
    p = sub.add_parser("search", help="Optuna search of compression settings (accuracy vs cost); rerun to continue")
    p.add_argument("--space", default="params/search.yaml", help="the search space (default params/search.yaml)")
    p.add_argument("--trials", type=int, required=True, help="finished trials the study should have in all")
    p.add_argument("--summary", help="then write a compact JSON of the study and its front, with each front model's "
                                     "test accuracy (e.g. data/reference/search_full.json for the README)")
    p.add_argument("--retrain-seeds", nargs="+", type=int, default=[], metavar="SEED",
                   help="with --summary: train each front model again with these seeds too, for its test accuracy "
                        "over seeds (resumable: kept in each trial's seeds.json)")
    p.add_argument("--out", help="study folder (default runs/search-<space>); the same folder continues the study")
    p.add_argument("--workers", type=int, default=1, help="worker processes here, or Dask tasks with --scheduler")
    p.add_argument("--scheduler", help="Dask scheduler address (tcp://host:port); workers share the storage")
    p.add_argument("--storage", help="Optuna storage URL shared by several machines (e.g. postgresql://...); "
                                     "default: the journal file <out>/study.journal")
    p.add_argument("--study", help="study name in a shared storage (default: the --out folder's name)")
    p.set_defaults(func=cmd_search)
    from distill_utils.challenge.cli import add_parser  # challenge new | grade FOLDER (its cmd_challenge is there)
    add_parser(sub, fail)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return fail("interrupted; finished runs and files are kept", 130)
    except Exception as err:  # a bug, not a user's mistake: still one line; DISTILL_DEBUG=1 shows the traceback
        if os.environ.get("DISTILL_DEBUG"):
            raise
        return fail(f"unexpected {type(err).__name__}: {err} (this is a bug in distill_utils; "
                    "rerun with DISTILL_DEBUG=1 for the traceback and report it)", 3)


if __name__ == "__main__":
    sys.exit(main())
