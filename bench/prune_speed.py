"""What pruning really buys on a CPU: the default teacher dense, masked to 90% sparsity (with the
masks attached, and folded into plain weights), and channel-pruned at several ratios. Latency at
batch 1 and 256 with a fixed thread count (median of repeats after warm-up), parameters,
non-zeros, FLOPs and bytes on disk.
Usage: python bench/prune_speed.py [--threads 2] [--repeats 50]
"""
import argparse
import copy

import torch

from distill_utils.measure import count_flops, count_nonzero, count_params, latency_ms, size_on_disk
from distill_utils.provenance.checkpoints import load_pretrained
from distill_utils.prune import make_permanent, prune_channels, prune_magnitude


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    teacher, _ = load_pretrained()
    masked = prune_magnitude(copy.deepcopy(teacher), 0.9, scope="global")
    models = {"dense": teacher, "masked 90% (global L1)": masked,
              "90%, masks made permanent": make_permanent(copy.deepcopy(masked))}
    for ratio in (0.5, 0.7):
        models[f"channels -{int(ratio * 100)}% (L1)"] = prune_channels(teacher, ratio)
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats} runs after warm-up")
    print(f"{'model':24} {'params':>9} {'nonzero':>9} {'MFLOP/img':>9} {'ms @1':>7} {'ms @256':>8} "
          f"{'speed-up @256':>13} {'bytes':>10} {'zlib':>10} {'sparse':>10}")
    base = None
    for name, model in models.items():
        model.eval()
        lat = [latency_ms(model, torch.randn(b, 1, 28, 28), repeats=args.repeats, threads=args.threads)["latency_ms"]
               for b in (1, 256)]
        base = base or lat[1]
        size = size_on_disk(model)
        print(f"{name:24} {count_params(model):9,} {count_nonzero(model):9,} "
              f"{count_flops(model, torch.zeros(1, 1, 28, 28)) / 1e6:9.2f} {lat[0]:7.3f} {lat[1]:8.2f} "
              f"{base / lat[1]:12.2f}x {size['bytes']:10,} {size['compressed_bytes']:10,} {size['sparse_bytes']:10,}")


if __name__ == "__main__":
    main()
