"""Which int8 path is both accurate and fast? One model (default: the shipped teacher) in PyTorch
fp32 (the reference), PyTorch fp32 with Conv+BN fused, PyTorch's own x86 int8, onnxruntime
fp32 and several onnxruntime int8 variants: test accuracy, latency at batch 1 and 256 and
bytes on disk. Latencies are measured in interleaved rounds by ``deploy.interleaved_ms`` (every
variant once per round, the median of --repeats runs after warm-up each time; notebook 09 uses the
same timer), and each speed-up is ``deploy.paired_speedup``: the median over rounds of (PyTorch
fp32 time / this time) from the same round, so a busy machine slows both sides.
Usage: python bench/deploy_speed.py [--checkpoint X.safetensors] [--threads 2] [--rounds 5] [--repeats 20]
"""
import argparse
import io
import os
import statistics
import tempfile
from pathlib import Path

import torch

from distill_utils import data, deploy, measure
from distill_utils.provenance.checkpoints import load_checkpoint, load_pretrained

ORT_VARIANTS = {  # name -> quantize_int8 keyword arguments (None: the fp32 export itself)
    "onnxruntime fp32": None,
    "ORT int8 static QDQ u8, first conv fp32 (default)": {},
    "ORT int8 static QDQ u8, every conv int8": {"keep_first_conv": False},
    "ORT int8 static QDQ s8, first conv fp32": {"activations": "s8"},
    "ORT int8 static QDQ u8, ReLU left after the pool": {"move_relu": False},
    "ORT int8 static QOperator u8, first conv fp32": {"quant_format": "qoperator"},
    "ORT int8 static QOperator u8, ReLU left after the pool": {"quant_format": "qoperator", "move_relu": False},
    "ORT int8 dynamic (weights only)": {"method": "dynamic"},
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a .safetensors checkpoint (default: the shipped teacher)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--calibration", type=int, default=512, help="training images for static calibration")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ds = data.load_dataset("fashion_mnist")
    model, _ = load_checkpoint(args.checkpoint) if args.checkpoint else load_pretrained()
    model = model.cpu().eval()
    x = {b: ds.test.x[:b].contiguous() for b in (1, 256)}
    rows, runners = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = deploy.export_onnx(model, Path(tmp) / "fp32.onnx")
        torch_int8 = deploy.quantize_torch_int8(model, ds.train, args.calibration)
        buf = io.BytesIO()
        torch.save(torch_int8.state_dict(), buf)
        for name, net, nbytes in (("PyTorch fp32 (reference)", model, measure.size_on_disk(model)["bytes"]),
                                  ("PyTorch fp32, Conv+BN fused", deploy.fuse_conv_bn(model),
                                   measure.size_on_disk(deploy.fuse_conv_bn(model))["bytes"]),
                                  ("PyTorch int8 (x86, FX)", torch_int8, len(buf.getvalue()))):
            with torch.inference_mode():
                logits = torch.cat([net(xb) for xb, _ in ds.test.batches(256)])
            rows[name] = {"acc": (logits.argmax(1) == ds.test.y).float().mean().item(), "bytes": nbytes}
            runners.update({(name, b): deploy.torch_runner(net, xb) for b, xb in x.items()})
        for name, kwargs in ORT_VARIANTS.items():
            path = fp32 if kwargs is None else deploy.quantize_int8(fp32, Path(tmp) / f"v{len(rows)}.onnx", ds.train,
                                                                   images=args.calibration, **kwargs)
            rows[name] = {"acc": deploy.evaluate_onnx(path, ds.test, threads=args.threads),
                          "bytes": os.path.getsize(path)}
            runners.update({(name, b): deploy.onnx_runner(path, xb, args.threads) for b, xb in x.items()})
        repeats = {(name, b): args.repeats * (5 if b == 1 else 1) for name, b in runners}
        times = deploy.interleaved_ms(runners, args.rounds, repeats)
    ref = "PyTorch fp32 (reference)"
    print(f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}, {args.threads} threads; "
          f"{args.rounds} interleaved rounds, each the median of {args.repeats * 5} (batch 1) / {args.repeats} "
          f"(batch 256) runs; speed-up = median over rounds of the reference's time / this time")
    print(f"{'variant':56} {'accuracy':>8} {'ms @1':>7} {'x @1':>6} {'ms @256':>8} {'x @256':>7} "
          f"{'bytes':>10} {'x smaller':>9}")
    for name, r in rows.items():
        speed = {b: deploy.paired_speedup(times[ref, b], times[name, b]) for b in (1, 256)}
        print(f"{name:56} {100 * r['acc']:7.2f}% {statistics.median(times[name, 1]):7.3f} {speed[1]:5.2f}x "
              f"{statistics.median(times[name, 256]):8.2f} {speed[256]:6.2f}x {r['bytes']:10,} "
              f"{rows[ref]['bytes'] / r['bytes']:8.2f}x")


if __name__ == "__main__":
    main()
