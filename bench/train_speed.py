"""Training speed of the default teacher: distill_utils' loop vs a plain DataLoader loop.

Prints samples/s, the training FLOP rate (forward + backward FLOPs counted by
torch.utils.flop_counter), this machine's fp32 GEMM rate and their ratio, for
  ours:  fit() on in-memory normalised tensors, channels-last
  plain: torchvision FashionMNIST + ToTensor/Normalize + DataLoader (0 or 2 worker processes),
         NCHW tensors: the usual tutorial loop
Usage: python bench/train_speed.py [--samples 12800] [--batch-size 128] [--threads N]
"""
import argparse
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from common import gemm_gflops, torchvision_train_set
from distill_utils.data import load_dataset
from distill_utils.models import build_model
from distill_utils.train import fit, set_seed


def train_flops_per_sample(batch_size):
    model = build_model("teacher_cnn")
    x, y = torch.randn(batch_size, 1, 28, 28), torch.randint(0, 10, (batch_size,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / batch_size


def ours(samples, batch_size):
    ds = load_dataset("fashion_mnist")
    set_seed(0)
    model = build_model("teacher_cnn")
    fit(model, ds.train.subset(batch_size * 4), epochs=1, batch_size=batch_size, progress=False, device="cpu")  # warm-up
    history = fit(model, ds.train.subset(samples), epochs=1, batch_size=batch_size, progress=False, device="cpu")
    return samples / history[0]["seconds"]


def plain(samples, batch_size, workers):
    """The PyTorch-tutorial way: PIL images through transforms, one at a time, every epoch."""
    with tempfile.TemporaryDirectory() as root:
        train_set = torchvision_train_set(root)
        loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=workers)
        set_seed(0)
        model = build_model("teacher_cnn")
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
    parser.add_argument("--samples", type=int, default=12_800)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gemm = gemm_gflops()
    flops = train_flops_per_sample(args.batch_size)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch_size}, {args.samples} samples")
    print(f"machine fp32 GEMM: {gemm:.1f} GFLOP/s; teacher_cnn training: {flops / 1e6:.1f} MFLOP per sample")
    rates = {"ours (in-memory, channels-last)": ours(args.samples, args.batch_size),
             "plain DataLoader, 0 workers": plain(args.samples, args.batch_size, 0),
             "plain DataLoader, 2 workers (tutorials)": plain(args.samples, args.batch_size, 2)}
    print(f"{'loop':40} {'samples/s':>10} {'GFLOP/s':>8} {'% of GEMM':>9}")
    for name, rate in rates.items():
        print(f"{name:40} {rate:10.0f} {rate * flops / 1e9:8.1f} {100 * rate * flops / 1e9 / gemm:8.1f}%")
    a, b, c = rates.values()
    print(f"speed-up over the plain loop: {a / b:.2f}x with 0 workers, {a / c:.2f}x with 2 (goal >= 2x); "
          f"share of GEMM rate: {100 * a * flops / 1e9 / gemm:.0f}% (goal >= 40%)")


if __name__ == "__main__":
    main()
