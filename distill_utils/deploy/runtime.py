"""Running ONNX files in onnxruntime: logits, accuracy, latency, and run-once callables for the
interleaved timer (notebook 09)."""
from __future__ import annotations

import copy
import statistics

import numpy as np
import torch

from distill_utils.deploy.export import DeployError, check_images, fixed_batch, input_shape, session
from distill_utils.deploy.timing import interleaved_ms, run_times

__all__ = ["predict_onnx", "evaluate_onnx", "latency_onnx", "onnx_runner", "torch_runner", "time_models"]


def _run(sess, feed: dict, path) -> np.ndarray:
    """The first output of one session run; onnxruntime's failures as one DeployError line."""
    try:
        return sess.run(None, feed)[0]
    except Exception as err:  # onnxruntime raises its own InvalidArgument / Fail / ... types
        raise DeployError(f"onnxruntime could not run {path}: {str(err).splitlines()[0][:300]}") from None


def predict_onnx(path, x, batch_size: int = 256, threads: int | None = None, sess=None) -> np.ndarray:
    """Logits (N, classes) of the ONNX model at ``path`` for the image tensor ``x``, in batches (notebook 09).
    A model exported with a fixed batch size runs in batches of that size (the last one padded)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DeployError(f"batch_size must be a positive integer, got {batch_size!r}")
    sess = sess or session(path, threads)
    name, shape = input_shape(sess)
    check_images(x, shape, path)
    x = x.detach().cpu().float()
    step = fixed_batch(shape) or batch_size
    out = []
    for i in range(0, len(x), step):
        chunk = x[i:i + step]
        n = len(chunk)
        if n < step and fixed_batch(shape):
            chunk = torch.cat([chunk, chunk.new_zeros(step - n, *chunk.shape[1:])])
        out.append(_run(sess, {name: chunk.contiguous().numpy()}, path)[:n])
    return np.concatenate(out)


def evaluate_onnx(path, split, batch_size: int = 256, threads: int | None = None, sess=None) -> float:
    """Accuracy in [0, 1] of the ONNX model at ``path`` on ``split`` in onnxruntime (notebook 09)."""
    if not hasattr(split, "x") or not hasattr(split, "y"):
        raise DeployError(f"split must be a data Split (e.g. ds.test), got {type(split).__name__}")
    logits = predict_onnx(path, split.x, batch_size, threads, sess)
    return float((logits.argmax(1) == split.y.cpu().numpy()).mean())


def onnx_runner(path, x, threads: int | None = None, sess=None):
    """A callable that runs the ONNX model at ``path`` once on the batch ``x`` in onnxruntime
    (``threads`` intra-op threads, default torch's current count; or in the session ``sess``):
    a contender for ``timing.interleaved_ms`` (notebook 09)."""
    sess = sess or session(path, threads)
    name, shape = input_shape(sess)
    check_images(x, shape, path, whole_batch=True)
    feed = {name: x.detach().cpu().float().contiguous().numpy()}
    _run(sess, feed, path)  # a model that cannot run this batch fails here, in one line, not inside the timer
    return lambda: sess.run(None, feed)


def torch_runner(model, x):
    """A callable that runs a copy of ``model`` once on the batch ``x`` (CPU, eval, inference mode):
    a contender for ``timing.interleaved_ms`` (notebook 09). A float model runs channels-last, as
    ``measure.latency_ms`` runs it; PyTorch's int8 model (an FX ``GraphModule``) keeps its layout."""
    model = copy.deepcopy(model).cpu().eval()
    x = x.detach().cpu()
    if not isinstance(model, torch.fx.GraphModule) and x.dim() == 4:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def run():
        with torch.inference_mode():
            model(x)
    return run


def latency_onnx(path, batch_size: int = 1, repeats: int = 30, warmup: int = 5, threads: int | None = None,
                 example=None) -> dict:
    """Median wall time of one onnxruntime run of a batch, in ms, after ``warmup`` untimed runs
    (notebook 09). ``threads`` intra-op threads (default: torch's current count). Returns the
    keys of ``measure.latency_ms``: latency_ms, latency_iqr_ms, threads, batch_size."""
    if repeats < 1 or warmup < 0 or batch_size < 1:
        raise DeployError(f"need repeats >= 1, warmup >= 0, batch_size >= 1; got {repeats}, {warmup}, {batch_size}")
    threads = threads or torch.get_num_threads()
    sess = session(path, threads)
    if example is None:
        dims = [d if isinstance(d, int) else 1 for d in input_shape(sess)[1][1:]]
        example = torch.randn(batch_size, *dims, generator=torch.Generator().manual_seed(0))
    times = run_times(onnx_runner(path, example[:batch_size], sess=sess), repeats, warmup)
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else times * 3
    return {"latency_ms": statistics.median(times), "latency_iqr_ms": q3 - q1, "threads": threads,
            "batch_size": batch_size}


def time_models(models: dict, batches: dict, rounds: int, repeats: dict | None = None) -> dict:
    """``{(name, batch size): [median ms of each round]}`` for the PyTorch ``models`` (``{name: model}``) on
    each input of ``batches`` (``{batch size: tensor}``), in ``rounds`` interleaved rounds (``interleaved_ms``;
    notebooks 05-07). ``repeats``: timed calls per round for each batch size (default 20 for one
    image, 3 for larger batches)."""
    repeats = repeats or {b: 20 if b == 1 else 3 for b in batches}
    runners = {(name, b): torch_runner(model, x) for name, model in models.items() for b, x in batches.items()}
    return interleaved_ms(runners, rounds, {key: repeats[key[1]] for key in runners})
