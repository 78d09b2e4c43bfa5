"""Image folders: load time of a folder of PNGs (first decode, then from the cache), and the accuracy of a
teacher and a distilled student on it beside the built-in Fashion-MNIST on the same images.

The folder is made from Fashion-MNIST: the first --train images of its training split and the first --test
of its test split, each resized to --size x --size (bilinear) and tinted by a random RGB colour per image (so
the three channels differ), saved as PNG in ``folder/train/<class>/`` and ``folder/test/<class>/``.
Load times: ``load_dataset("folder:...")`` with no cache (each image decoded), again (the cache is read),
and after one file's modification time changed (decoded again). Wall-clock seconds, --rounds repetitions
(each first load starts from a deleted cache), the median and the range are printed.
With --seeds N (0: skip), the teacher (teacher_cnn, --epochs) and a student distilled from it (student_cnn,
KD T=4 alpha=0.9, --epochs) are trained on the folder and on the same images of the built-in dataset
(28x28 grayscale), for seeds 0..N-1, and their test accuracies printed with the mean and std.
Usage: nice python bench/folder_load.py [--folder /tmp/fm_folder] [--size 40] [--train 8000] [--test 2000]
       [--rounds 3] [--seeds 3] [--epochs 4]
"""
import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional  # noqa: F401 (imported before the first timed load)
from PIL import Image

from distill_utils.data import Dataset, Split, load_dataset
from distill_utils.distill import distill
from distill_utils.models import build_model
from distill_utils.train import evaluate, fit, set_seed


def write_folder(folder: Path, size: int, n_train: int, n_test: int) -> None:
    fm = load_dataset("fashion_mnist")
    g = np.random.default_rng(0)
    mean, std = fm.mean[0], fm.std[0]
    for split, part, n in (("train", fm.train, n_train), ("test", fm.test, n_test)):
        gray = ((part.x[:n, 0] * std + mean) * 255).round().clamp(0, 255).to(torch.uint8).numpy()  # (n, 28, 28)
        for i, (img, label) in enumerate(zip(gray, part.y[:n].tolist())):
            big = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
            tint = g.uniform(0.5, 1.0, 3).astype(np.float32)
            rgb = (big[:, :, None] * tint).round().astype(np.uint8)  # (size, size, 3)
            out = folder / split / fm.classes[label].replace("/", "-")
            out.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(out / f"{i:05d}.png")


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def load_times(folder: Path, rounds: int) -> dict:
    times = {"first (decode)": [], "cached": [], "one file changed": []}
    some_file = next((folder / "train").rglob("*.png"))
    for _ in range(rounds):
        shutil.rmtree(folder / ".distill_cache", ignore_errors=True)
        t, ds = timed(lambda: load_dataset(f"folder:{folder}"))
        times["first (decode)"].append(t)
        times["cached"].append(timed(lambda: load_dataset(f"folder:{folder}"))[0])
        os.utime(some_file)
        times["one file changed"].append(timed(lambda: load_dataset(f"folder:{folder}"))[0])
    return times, ds


def accuracies(ds, seeds: int, epochs: int) -> list[tuple[float, float]]:
    out = []
    for seed in range(seeds):
        set_seed(seed)
        teacher = build_model("teacher_cnn", data=ds)
        fit(teacher, ds, epochs=epochs, seed=seed, augment=True, progress=False, device="cpu")
        set_seed(seed)
        student = build_model("student_cnn", data=ds)
        distill(student, teacher, ds, epochs=epochs, seed=seed, T=4.0, alpha=0.9, progress=False, device="cpu")
        out.append((evaluate(teacher, ds.test), evaluate(student, ds.test)))
        print(f"  {ds.name} seed {seed}: teacher {100 * out[-1][0]:.2f}%, student {100 * out[-1][1]:.2f}%", flush=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default="/tmp/fm_folder")
    parser.add_argument("--size", type=int, default=40)
    parser.add_argument("--train", type=int, default=8000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    folder = Path(args.folder)
    if not (folder / "test").is_dir():
        t, _ = timed(lambda: write_folder(folder, args.size, args.train, args.test))
        print(f"wrote {args.train + args.test} PNGs ({args.size}x{args.size} RGB) into {folder} in {t:.1f} s")
    files = [p for p in folder.rglob("*.png") if ".distill_cache" not in p.parts]
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    print(f"folder: {len(files)} PNG files, {megabytes:.1f} MB; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    times, ds = load_times(folder, args.rounds)
    cache = sum(p.stat().st_size for p in (folder / ".distill_cache").glob("*.bin")) / 1e6
    print(f"{ds}\ncache: {cache:.1f} MB")
    for what, values in times.items():
        print(f"load, {what:17}: median {statistics.median(values):6.2f} s "
              f"(min {min(values):.2f}, max {max(values):.2f}, {len(values)} rounds)")
    if args.seeds:
        fm = load_dataset("fashion_mnist")
        same = Dataset("fashion_mnist (same images)", Split(fm.train.x[:args.train], fm.train.y[:args.train], 2, True),
                       Split(fm.test.x[:args.test], fm.test.y[:args.test], 2, True), fm.classes, fm.input_shape,
                       fm.source, mean=fm.mean, std=fm.std)
        print(f"accuracy, {args.seeds} seeds, {args.epochs} epochs each (teacher with augmentation, KD T=4 a=0.9):")
        for data in (same, ds):
            acc = np.array(accuracies(data, args.seeds, args.epochs)) * 100
            print(f"{data.name} {tuple(data.input_shape)}: teacher {acc[:, 0].mean():.2f} +- {acc[:, 0].std():.2f}%, "
                  f"student {acc[:, 1].mean():.2f} +- {acc[:, 1].std():.2f}%")


if __name__ == "__main__":
    main()
