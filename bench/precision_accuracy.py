"""Does bf16 training reach fp32's accuracy? The same runs in both precisions, paired by seed.

  teacher:  teacher_cnn, `epochs` epochs on all 60,000 training images (notebook 01's defaults)
  student:  student_cnn distilled from the shipped teacher with few labels (notebook 03's
            few-label regime: `labels` images, `student_epochs` epochs, T=4, alpha=0.9)
Each row: test accuracy mean ± std over the seeds in fp32 and bf16, and the paired verdict of
distill_utils.runs.evidence (bf16 vs fp32). Training time is printed too (read it as a ratio).
Usage: python bench/precision_accuracy.py [--seeds 0 1 2] [--epochs 3] [--labels 3000] [--student-epochs 15]
"""
import argparse

from distill_utils.data import load_dataset
from distill_utils.distill import distill
from distill_utils.models import build_model
from distill_utils.provenance.checkpoints import load_pretrained
from distill_utils.runs.evidence import compare
from distill_utils.train import evaluate, fit, set_seed


def run(kind, ds, seed, precision, args):
    set_seed(seed)
    common = dict(seed=seed, progress=False, device="cpu", precision=precision)
    if kind == "teacher":
        model = build_model("teacher_cnn")
        history = fit(model, ds.train, epochs=args.epochs, **common)
    else:
        model = build_model("student_cnn")
        teacher, _ = load_pretrained()
        history = distill(model, teacher, ds.train.subset(args.labels, seed=seed), epochs=args.student_epochs,
                          T=4.0, alpha=0.9, **common)
    return evaluate(model, ds.test, precision=precision), sum(r["seconds"] for r in history)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3, help="teacher epochs")
    parser.add_argument("--labels", type=int, default=3000, help="labelled images of the student")
    parser.add_argument("--student-epochs", type=int, default=15)
    parser.add_argument("--only", choices=["teacher", "student"], help="run one of the two")
    args = parser.parse_args()
    ds = load_dataset("fashion_mnist")
    for kind in [args.only] if args.only else ["teacher", "student"]:
        acc, secs = {"fp32": {}, "bf16": {}}, {"fp32": 0.0, "bf16": 0.0}
        for seed in args.seeds:
            for precision in acc:
                acc[precision][seed], s = run(kind, ds, seed, precision, args)
                secs[precision] += s
                print(f"{kind} seed {seed} {precision}: {100 * acc[precision][seed]:.2f}% in {s:.0f} s", flush=True)
        c = compare(acc["bf16"], acc["fp32"], "bf16", "fp32")
        print(f"{kind}: fp32 {c.mean_b:.2f} ± {c.std_b:.2f}%, bf16 {c.mean_a:.2f} ± {c.std_a:.2f}% "
              f"({c.n} seeds); training time bf16/fp32 = {secs['bf16'] / secs['fp32']:.2f}; {c.sentence()}", flush=True)


if __name__ == "__main__":
    main()
