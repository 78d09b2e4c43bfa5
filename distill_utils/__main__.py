"""Command line: ``python -m distill_utils data | run | pretrained`` (used by the Makefile)."""
from __future__ import annotations

import argparse
import json
import shutil
import sys

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


def _parameters(args) -> dict:
    params = {}
    for f in args.file or []:
        params.update(yaml.safe_load(open(f)) or {})
    for key, value in args.param or []:
        params[key] = yaml.safe_load(value)
    return params


def cmd_run(args) -> int:
    from .experiments import load_metrics, run_sequence
    out = run_sequence(args.notebooks, args.out, _parameters(args))
    print(f"\nresults in {out}")
    for name, metrics in load_metrics(out).items():
        print(f"  {name}: {json.dumps(metrics)}")
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
    p = sub.add_parser("pretrained", help="retrain the shipped teacher with params/full.yaml")
    p.set_defaults(func=cmd_pretrained)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
