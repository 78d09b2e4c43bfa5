"""Training speed: distill_utils' fit (fp32 and precision="auto") vs a plain DataLoader loop.

Prints samples/s, the training FLOP rate (forward + backward FLOPs counted by
torch.utils.flop_counter), this machine's fp32 GEMM rate and their ratio, for
  fit fp32 / fit auto:  fit() on in-memory normalised tensors, the model's faster layout,
                        fused AdamW; auto = bf16 autocast where the hardware computes bf16
  plain:  torchvision FashionMNIST + ToTensor/Normalize + DataLoader (0 or 2 worker processes),
          NCHW fp32 tensors: the usual tutorial loop
Each loop runs --rounds times, interleaved, and the median is shown: on a shared machine the
ratios within one run are what to read. Goals (issue 11): teacher fit >= 3x the plain loop,
and >= 50% of the fp32 GEMM rate.
Usage: python bench/train_speed.py [--model teacher_cnn] [--samples 12800] [--batch-size 128] [--rounds 3]
"""
import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from common import gemm_gflops, torchvision_train_set
from torch.utils.flop_counter import FlopCounterMode

from distill_utils.data import load_dataset
from distill_utils.models import build_model
from distill_utils.train import fit, resolve_precision, set_seed


def train_flops_per_sample(name, batch_size):
    model = build_model(name)
    x, y = torch.randn(batch_size, 1, 28, 28), torch.randint(0, 10, (batch_size,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / batch_size


def ours(ds, name, samples, batch_size, precision):
    set_seed(0)
    model = build_model(name)
    args = dict(epochs=1, batch_size=batch_size, progress=False, device="cpu", precision=precision)
    fit(model, ds.train.subset(batch_size * 4), **args)  # warm-up
    history = fit(model, ds.train.subset(samples), **args)
    return samples / history[0]["seconds"]


def plain(train_set, name, samples, batch_size, workers):
    """The PyTorch-tutorial way: PIL images through transforms, one at a time, every epoch."""
    loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=workers)
    set_seed(0)
    model = build_model(name)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    model.train()
    seen, start = 0, None
    for i, (x, y) in enumerate(loader):
        if i == 4:  # after warm-up
            seen, start = 0, time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
        if start and seen >= samples:
            break
    return seen / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="teacher_cnn", help="teacher_cnn or student_cnn")
    parser.add_argument("--samples", type=int, default=12_800)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the median is shown")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gemm = gemm_gflops()
    flops = train_flops_per_sample(args.model, args.batch_size)
    auto = resolve_precision("auto", "cpu")
    print(f"torch {torch.__version__}, {args.threads} threads, {args.model}, batch {args.batch_size}, "
          f"{args.samples} samples, median of {args.rounds} interleaved rounds; precision 'auto' = {auto}")
    print(f"machine fp32 GEMM: {gemm:.1f} GFLOP/s; {args.model} training: {flops / 1e6:.1f} MFLOP per sample")
    ds = load_dataset("fashion_mnist")
    loops = {"fit, fp32": lambda: ours(ds, args.model, args.samples, args.batch_size, "fp32"),
             f"fit, auto ({auto})": lambda: ours(ds, args.model, args.samples, args.batch_size, "auto")}
    with tempfile.TemporaryDirectory() as root:
        train_set = torchvision_train_set(root)
        loops["plain DataLoader, 0 workers"] = lambda: plain(train_set, args.model, args.samples, args.batch_size, 0)
        loops["plain DataLoader, 2 workers"] = lambda: plain(train_set, args.model, args.samples, args.batch_size, 2)
        runs = {name: [] for name in loops}
        for _ in range(args.rounds):
            for name, loop in loops.items():
                runs[name].append(loop())
    rates = {name: statistics.median(r) for name, r in runs.items()}
    base = rates["plain DataLoader, 0 workers"]
    print(f"{'loop':30} {'samples/s':>10} {'GFLOP/s':>8} {'% of GEMM':>9} {'x plain':>8}")
    for name, rate in rates.items():
        print(f"{name:30} {rate:10.0f} {rate * flops / 1e9:8.1f} {100 * rate * flops / 1e9 / gemm:8.1f}% "
              f"{rate / base:7.2f}x")
    fp32, mixed = rates["fit, fp32"], rates[f"fit, auto ({auto})"]
    print(f"auto vs fp32: {mixed / fp32:.2f}x; fit auto vs the plain loop: {mixed / base:.2f}x with 0 workers, "
          f"{mixed / rates['plain DataLoader, 2 workers']:.2f}x with 2 (goal >= 3x); "
          f"share of the fp32 GEMM rate: {100 * mixed * flops / 1e9 / gemm:.0f}% (goal >= 50%)")


if __name__ == "__main__":
    main()
