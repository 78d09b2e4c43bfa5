"""The result tables generated from the reference records (``data/reference/``, see ``reference``).

``python -m distill_utils reference --readme`` rewrites each table of ``TABLES`` in the README
between its two marker comments (``markers``), and ``tests/test_reference.py`` fails when the
README and the records disagree. Notebook 09 shows ``final_table`` beside its own run.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from distill_utils.readme.writer import between_markers, rewrite
from distill_utils.runs.evidence import compare
from distill_utils.runs.reference import REFERENCE_DIR, describe, load, per_seed

__all__ = ["kd_table", "feature_table", "pruning_table", "final_table", "search_table", "transformer_table",
           "detection_table", "TABLES", "markers", "update_readme"]


def _pm(values, fmt: str = ".2f", unit: str = "") -> str:
    """``mean ± std{unit}`` of ``values`` (just the value for one)."""
    values = list(values)
    spread = f" ± {statistics.stdev(values):{fmt.lstrip('+')}}" if len(values) > 1 else ""
    return f"{statistics.mean(values):{fmt}}{spread}{unit}"


def _percent(values) -> str:
    return _pm((100 * v for v in values), unit="%")


def _points(fractions) -> str:
    return _pm((100 * v for v in fractions), "+.2f")


def kd_table(folder=None) -> str:
    """The README's KD result table, from ``data/reference/03_knowledge_distillation.json``."""
    record = load("03_knowledge_distillation", folder)
    if record is None:
        return ("No reference records yet: `python -m distill_utils reference --only 03` writes "
                "`data/reference/03_knowledge_distillation.json`, then `--readme` fills this table.")
    p, rows = record["parameters"], []
    teacher = [e["metrics"].get("teacher_acc") for e in record["seeds"].values()]
    settings = (("scratch_test_acc", "distilled_test_acc",
                 f"all {'60,000' if not p.get('train_images') else p['train_images']} labels, {p.get('epochs')} epochs"
                 + (", crop + flip" if p.get("augment") else "")),
                ("few_scratch", "few_distilled", f"{p.get('labelled_images')} labels, {p.get('few_epochs')} epochs"),
                ("few_scratch", "transfer", f"{p.get('labelled_images')} labels vs the teacher alone on "
                 f"{p.get('labelled_images', 0) + p.get('transfer_images', 0):,} images, labels hidden "
                 f"(a transfer set), {p.get('transfer_epochs')} epochs"))
    for scratch_key, kd_key, label in settings:
        scratch, kd = per_seed(record, scratch_key), per_seed(record, kd_key)
        if not scratch or not kd:
            continue
        c = compare(kd, scratch, "the transfer set" if kd_key == "transfer" else "KD", "scratch")
        gap = 100 * teacher[0] - c.mean_b
        rows.append(f"| {label} | {100 * teacher[0]:.2f}% | {_percent(scratch.values())} | {_percent(kd.values())} | "
                    f"{100 * c.diff / gap:.0f}% | {c.sentence()} |")
    head = (f"Fashion-MNIST, `{p.get('student_name', 'student_cnn')}` (width {p.get('student_width', 1.0)}), "
            f"T={p.get('T')}, alpha={p.get('alpha')}, {describe(record)}:\n\n"
            "| setting | teacher | student from scratch | distilled student | gap closed | verdict |\n"
            "|---|---|---|---|---|---|")
    return "\n".join([head, *rows])


FEATURE_METHODS = ("KD + hints", "KD + attention", "DKD")  # notebook 04's methods judged against KD


def feature_table(folder=None) -> str:
    """The README's feature-distillation table (notebook 04), from ``04_feature_distillation.json``:
    each method over the seeds, with KD judged against scratch and every other method against KD."""
    record = load("04_feature_distillation", folder)
    if record is None:
        return ("No reference record yet: `python -m distill_utils reference --only 04` writes "
                "`data/reference/04_feature_distillation.json`, then `--readme` fills this table.")
    acc = {m: per_seed(record, f"per_seed.{m}") for m in ("scratch", "KD", *FEATURE_METHODS)}
    teacher = per_seed(record, "teacher_acc")
    rows = [f"| teacher | {_percent(teacher.values())} | - |"]
    for method, values in acc.items():
        if not values:
            continue
        base = "scratch" if method == "KD" else "KD"
        verdict = "-" if method == "scratch" else compare(values, acc[base], method, base).sentence()
        rows.append(f"| {method} | {_percent(values.values())} | {verdict} |")
    p = record["parameters"]
    head = (f"Fashion-MNIST, `{p.get('student_name', 'student_cnn')}` (width {p.get('student_width', 1.0)}) on "
            f"{p.get('labelled_images'):,} labelled images x {p.get('epochs')} epochs, T={p.get('T')}, "
            f"alpha={p.get('alpha')}, features of block {p.get('layer')}; {describe(record)}:\n\n"
            "| method | test accuracy | verdict |\n|---|---|---|")
    return "\n".join([head, *rows])


SCHEDULES = {"one-shot": "one-shot + fine-tune", "iterative": "iterative (Han et al. 2015)",
             "gradual": "gradual (Zhu & Gupta 2017, cubic schedule)",
             "one-shot, teacher": "one-shot + fine-tune with the teacher"}


def pruning_table(folder=None) -> str:
    """The README's pruning table, from the records of notebooks 05 (magnitude) and 06 (channels)."""
    magnitude, channels = load("05_magnitude_pruning", folder), load("06_channel_pruning", folder)
    if magnitude is None and channels is None:
        return ("No reference records yet: `python -m distill_utils reference --only 05 06` writes them, "
                "then `--readme` fills this table.")
    rows, dense = [], None
    if magnitude is not None:
        m, p = next(iter(magnitude["seeds"].values()))["metrics"], magnitude["parameters"]
        dense = m["dense_acc"]
        shrank = (f"file {m['bytes']['dense_file'] / m['bytes']['sparse_file']:.1f}x smaller stored sparse; "
                  "same FLOPs")
        for schedule in m.get("finetuned", {}):
            acc = per_seed(magnitude, ("finetuned", schedule))
            rows.append(f"| {m['target']:.0%} of weights zero (global L1), {SCHEDULES.get(schedule, schedule)}, "
                        f"{p.get('train_images'):,} images x {p.get('finetune_epochs')} epochs | "
                        f"{_percent(acc.values())} | {_points(v - dense for v in acc.values())} | {shrank} |")
    if channels is not None:
        m, p = next(iter(channels["seeds"].values()))["metrics"], channels["parameters"]
        dense, costs = m["dense_acc"], m["costs"]
        how = "with the teacher" if p.get("use_teacher", True) else "on labels"
        for ratio in m.get("finetuned", {}):
            acc, c = per_seed(channels, ("finetuned", ratio)), costs[ratio]
            rows.append(f"| channels -{float(ratio):.0%} ({p.get('criterion', 'l1').upper()}) + fine-tune {how}, "
                        f"{p.get('train_images'):,} images x {p.get('finetune_epochs')} epochs | "
                        f"{_percent(acc.values())} | {_points(v - dense for v in acc.values())} | "
                        f"{costs['dense']['flops'] / c['flops']:.1f}x fewer FLOPs, "
                        f"{costs['dense']['params'] / c['params']:.1f}x fewer parameters |")
    sources = "; ".join(f"notebook {r['notebook'][:2]}: {describe(r)}" for r in (magnitude, channels) if r)
    head = (f"Fashion-MNIST, the shipped teacher pruned and fine-tuned ({sources}); accuracy is mean ± std "
            "over seeds, *vs dense* in percentage points:\n\n"
            "| model | test accuracy | vs dense | what shrank |\n|---|---|---|---|\n"
            f"| dense teacher | {100 * dense:.2f}% | | |")
    return "\n".join([head, *rows])


def _rows_by_model(record: dict) -> dict:
    """``{model: {seed: its row of notebook 09's final table}}``."""
    rows = {}
    for seed, entry in record["seeds"].items():
        for row in entry["metrics"].get("final_table", []):
            rows.setdefault(row["model"], {})[int(seed)] = row
    return rows


TARGETS = (("x smaller", 10.0), ("x faster @1", 3.0), ("x faster @256", 3.0), ("points vs teacher", -1.5))


def final_table(folder=None) -> str:
    """The README's final-model table: every model of notebook 09 as int8 in onnxruntime, over seeds."""
    record = load("09_quantize_and_deploy", folder)
    if record is None:
        return ("No reference records yet: `python -m distill_utils reference --only 09` writes "
                "`data/reference/09_quantize_and_deploy.json`, then `--readme` fills this table.")
    rows = _rows_by_model(record)
    picks = [f"seed {s}: {e['metrics'].get('final_model')}" for s, e in sorted(record["seeds"].items())]
    p, variants = record["parameters"], sorted({e["metrics"].get("chosen_variant") for e in record["seeds"].values()})
    lines = [f"Notebook 09 with {describe(record)}: each candidate trained on {p.get('train_images'):,} images for "
             f"{p.get('epochs')} epochs (T={p.get('T')}, alpha={p.get('alpha')}); every model int8 "
             f"({' / '.join(map(str, variants))}) in "
             "onnxruntime against the fp32 teacher in PyTorch, speed-ups paired by timing round; mean ± std over "
             f"seeds. Final model picked per seed: {'; '.join(picks)}.", "",
             "| model (int8, onnxruntime) | test accuracy | vs teacher (points) | bytes | x smaller | x faster @1 "
             "| x faster @256 | seeds meeting every target |", "|---|---|---|---|---|---|---|---|"]
    for model, by_seed in rows.items():
        runs = list(by_seed.values())
        met = sum(all(r[k] >= goal for k, goal in TARGETS) for r in runs)
        lines.append(f"| {model} | {_percent(r['acc int8'] for r in runs)} | "
                     f"{_pm((r['points vs teacher'] for r in runs), '+.2f')} | "
                     f"{_pm((r['bytes int8'] for r in runs), ',.0f')} | "
                     + " | ".join(_pm((r[k] for r in runs), ".1f", "x") for k, _ in TARGETS[:3])
                     + f" | {met} of {len(runs)} |")
    return "\n".join(lines)


def _settings(entry: dict) -> str:
    if entry.get("model") == "pruned_teacher":
        ratios = [entry[k] for k in sorted(entry) if k.startswith("prune_ratio_")]
        what = "teacher, channels -" + "/".join(f"{r:.0%}" for r in ratios)
    else:
        what = f"student x{entry.get('student_width', 1.0):.2f}"
    return (f"{what}; {entry.get('loss')}, T={entry.get('T'):.2g}, alpha={entry.get('alpha'):.2f}, "
            f"lr={entry.get('lr'):.2g}, {entry.get('epochs_run')} epoch(s)")


def _test_acc(entry: dict) -> dict[int, float]:
    """A front model's test accuracy per seed: the trial's own, and any retrained ones."""
    return {int(s): a for s, a in entry["test_acc_seeds"].items()}


def _validation_gap(study: dict) -> list[str]:
    """A sentence on validation minus test accuracy (same model, the trial's seed) per kind of front model."""
    gaps = {}
    for e in study["front"]:
        kind = "pruned teachers" if e["model"] == "pruned_teacher" else "students"
        gaps.setdefault(kind, []).append(100 * (e["val_acc"] - e["test_acc"]))
    if len(gaps) < 2:
        return []
    said = "; ".join(f"{kind} {statistics.mean(g):+.2f} points ({len(g)} model{'s' * (len(g) > 1)})"
                     for kind, g in sorted(gaps.items()))
    why = (" The shipped teacher was trained on all 60,000 training images, the validation split included, so a "
           "pruned teacher's validation accuracy is flattered by what the teacher learnt from those images."
           if not study["settings"].get("teacher") else "")
    return ["", f"Validation minus test accuracy of the same model, on average over the front: {said}.{why}"]


def search_table(folder=None) -> str:
    """The README's search result: the full-size study's Pareto front (``search_full.json``, written
    by ``search --summary``) beside the hand-made models of notebook 09's reference record."""
    path = Path(folder or REFERENCE_DIR) / "search_full.json"
    if not path.exists():
        return ("No full-size study summary yet: `python -m distill_utils search --space params/search.yaml "
                "--trials 36 --out runs/search-full --summary data/reference/search_full.json "
                "--retrain-seeds 1 2` writes it.")
    study = json.loads(path.read_text())
    states = ", ".join(f"{n} {s}" for s, n in sorted(study["states"].items()))
    epochs, n = study["space"]["epochs"], study["train_images"]
    seeds = max(len(_test_acc(e)) for e in study["front"])
    retrained = (f", then {study['retrain_seconds'] / 3600:.1f} hours to train each front model again with "
                 f"{seeds - 1} more seeds" if seeds > 1 else "")
    lines = [f"{study['trials']} trials ({states}), cost `{study['settings']['cost']}`, each candidate at most "
             f"{epochs['high'] if isinstance(epochs, dict) else epochs} epochs on {n:,} images, scored on "
             f"{study['settings']['val_images']:,} held-out images; compute: {study['trial_seconds'] / 3600:.1f} "
             f"hours of trials on a 2-core CPU, {study['image_epochs'] / n:.0f} epochs of {n:,} images in all"
             f"{retrained}. The front (test accuracy evaluated afterwards, "
             + (f"mean ± std over {seeds} seeds: the trial and its retrainings):" if seeds > 1
                else "one training run per model, the search's seed):"), "",
             "| trial | model and settings | parameters | validation accuracy | test accuracy |",
             "|---|---|---|---|---|"]
    lines += [f"| {e['trial']} | {_settings(e)} | {e['params']:,} | {100 * e['val_acc']:.2f}% | "
              f"{_percent(_test_acc(e).values())} |" for e in study["front"]]
    lines += _validation_gap(study)
    record = load("09_quantize_and_deploy", folder)
    if record is None:
        return "\n".join(lines)
    p = record["parameters"]
    lines += ["", f"Against the hand-made models of notebook 09 ({describe(record)}; {p.get('epochs')} epochs on "
              f"{p.get('train_images'):,} images, fp32 test accuracy, mean ± std over seeds), each beside the front "
              "model with no more parameters and the best validation accuracy, paired by seed:", "",
              "| hand-made model | parameters | test accuracy | front model | its test accuracy "
              "| difference (points) |",
              "|---|---|---|---|---|---|"]
    for model, by_seed in _rows_by_model(record).items():
        if "+ KD" not in model:
            continue
        n_params, hand = by_seed[min(by_seed)]["params"], {s: r["test_acc"] for s, r in by_seed.items()}
        cheaper = [e for e in study["front"] if e["params"] <= n_params]
        if not cheaper:
            lines.append(f"| {model} | {n_params:,} | {_percent(hand.values())} | none this small | | |")
            continue
        best = max(cheaper, key=lambda e: e["val_acc"])
        c = compare(_test_acc(best), hand, f"trial {best['trial']}", model)
        diff = _pm(c.differences, "+.2f")  # points, per paired seed
        lines.append(f"| {model} | {n_params:,} | {_percent(hand.values())} | trial {best['trial']} "
                     f"({best['params']:,}) | {_percent(_test_acc(best).values())} | "
                     f"{diff} ({c.n} paired seed{'s' * (c.n > 1)}: {c.verdict}) |")
    return "\n".join(lines)


VIT_VERDICTS = (("width, activations, KD", "width, activations, labels", "KD", "labels"),
                ("width, activations, KD", "width, magnitudes, KD", "activation importance", "magnitude"),
                ("width, activations, KD", "width, random, KD", "activation importance", "random"),
                ("width, activations, KD", "depth, Block Influence, KD", "width pruning", "depth pruning"),
                ("width, activations, KD", "scratch (width-pruned shape), KD", "pruned + KD", "scratch + KD"))


def transformer_table(folder=None) -> str:
    """The README's ViT table (notebook 11), from ``data/reference/11_transformer_compression.json``:
    each recovered model over the seeds, its accuracy before recovery, and the notebook's verdicts."""
    record = load("11_transformer_compression", folder)
    if record is None:
        return ("No reference record yet: `python -m distill_utils reference --only 11` writes "
                "`data/reference/11_transformer_compression.json`, then `--readme` fills this table.")
    teacher = per_seed(record, "teacher_acc")
    rows = [f"| ViT teacher (not pruned) | {_percent(teacher.values())} | - | - |"]
    for name in next(iter(record["seeds"].values()))["metrics"].get("recovered", {}):
        acc = per_seed(record, ("recovered", name))
        before = per_seed(record, ("one_shot", ", ".join(name.split(", ")[:2])))
        rows.append(f"| {name} | {_percent(acc.values())} | {_percent(before.values()) if before else '-'} | "
                    f"{_points(a - teacher[s] for s, a in acc.items())} |")
    results = {a: per_seed(record, ("recovered", a)) for pair in VIT_VERDICTS for a in pair[:2]}
    verdicts = [compare(results[a], results[b], name_a, name_b).sentence()
                for a, b, name_a, name_b in VIT_VERDICTS if results[a] and results[b]]
    p = record["parameters"]
    head = (f"Fashion-MNIST, the shipped ViT teacher; heads and MLP neurons removed per block: {p.get('heads_removed')}"
            f" and {p.get('mlp_removed')} (depth: {p.get('blocks_removed')} blocks); recovery on "
            f"{p.get('recover_images'):,} images x {p.get('recover_epochs')} epochs, T={p.get('T')}, "
            f"alpha={p.get('alpha')}; {describe(record)}:\n\n"
            "| model | test accuracy | before recovery | vs teacher (points) |\n|---|---|---|---|")
    return "\n".join([head, *rows, "", *(f"- {v}" for v in verdicts)])


DETECTION_METHODS = ("heatmap KD", "imitation (masked)", "both", "imitation (unmasked)")


def detection_table(folder=None) -> str:
    """The README's detection table (notebook 12), from ``data/reference/12_object_detection.json``: teacher,
    students, pruned and recovered models, the deployed int8 model, mAP over seeds, and the verdicts."""
    record = load("12_object_detection", folder)
    if record is None:
        return ("No reference record yet: `python -m distill_utils reference --only 12` writes "
                "`data/reference/12_object_detection.json`, then `--readme` fills this table.")
    seeds = {int(s): e["metrics"] for s, e in record["seeds"].items()}
    deployed = {s: f"{m['deployed']}, ONNX int8" for s, m in seeds.items()}

    def timed(row) -> str:  # latencies at batch 1 and 64 (ms) of a deployed-table row, mean ± std over seeds
        return " | ".join(_pm([seeds[s]["table"][row(s)][f"ms @{b}"] for s in seeds]) for b in (1, 64))

    def line(name, maps, maps50, row=None) -> str:
        return (f"| {name} | {_percent(maps.values())} | {_percent(maps50.values()) if maps50 else '-'} | "
                + (timed(row) if row else "- | -") + " |")

    teacher = per_seed(record, "teacher_map")
    rows = [line("teacher (width 1.0)", teacher, per_seed(record, "teacher_map50"), lambda s: "teacher")]
    rows += [line(f"student, {name}", per_seed(record, ("map", name)), per_seed(record, ("map50", name)),
                  (lambda s: "student, scratch") if name == "scratch" else None)
             for name in ("scratch", *DETECTION_METHODS)]
    rows.append(line("teacher pruned, before recovery", per_seed(record, "pruned_map"), {}))
    rows += [line(f"pruned, recovered {name}", per_seed(record, ("recovered", name)), {},
                  (lambda s: "pruned, with the teacher") if name == "with the teacher" else None)
             for name in ("with the teacher", "labels only")]
    rows.append(line("deployed: " + " / ".join(sorted(set(deployed.values()))),
                     {s: seeds[s]["table"][deployed[s]]["mAP (%)"] / 100 for s in seeds},
                     {s: seeds[s]["table"][deployed[s]]["mAP@.5 (%)"] / 100 for s in seeds}, deployed.get))
    def verdict(key_a, key_b, name_a, name_b) -> str:
        return compare(per_seed(record, key_a), per_seed(record, key_b), name_a, name_b).sentence()

    verdicts = [f"{verdict(('map', name), ('map', 'scratch'), name, 'scratch')}; gap to the teacher closed per seed: "
                + ", ".join(f"{100 * g:.0f}%" for g in per_seed(record, ("gap_closed", name)).values())
                for name in DETECTION_METHODS]
    verdicts += [verdict(("map", "imitation (masked)"), ("map", "imitation (unmasked)"), "masked imitation",
                         "unmasked imitation"),
                 verdict(("recovered", "with the teacher"), ("recovered", "labels only"), "recovery with the teacher",
                         "recovery from labels")]
    p = record["parameters"]
    head = (f"Fashion-MNIST scenes: {p.get('train_scenes'):,} training / {p.get('test_scenes'):,} test; students of "
            f"width {p.get('student_width')} and the teacher pruned by {p.get('amount')} of its channels, each trained "
            f"{p.get('epochs')} epochs (recovery {p.get('recover_epochs')}), heatmap KD weight {p.get('kd_weight')} at "
            f"T={p.get('T')}, imitation weight {p.get('feature_weight')}; latencies in PyTorch except the ONNX row, "
            f"{describe(record)}:\n\n"
            "| model | mAP@[.5:.95] | mAP@.5 | ms @1 | ms @64 |\n|---|---|---|---|---|")
    return "\n".join([head, *rows, "", *(f"- {v}" for v in verdicts), "", *_detection_goals(record, seeds, deployed)])


def _detection_goals(record: dict, seeds: dict, deployed: dict) -> list[str]:
    """The README's lines on notebook 12's goals: each reached or not, per seed, and the figures behind a miss."""
    def mark(ok) -> str:
        return "reached" if ok else "**not reached**"

    best = max(DETECTION_METHODS, key=lambda n: statistics.mean(per_seed(record, ("map", n)).values() or [0]))
    closed = per_seed(record, ("gap_closed", best))
    lines = [f"Goals at this size: detection KD closes at least 40% of the teacher-student mAP gap on every seed: "
             f"{mark(closed and all(g >= 0.4 for g in closed.values()))} (the best method, {best}: "
             + ", ".join(f"{100 * g:.0f}%" for g in closed.values()) + "). The deployed model against the fp32 "
             "teacher (10x smaller, 3x faster at batch 1 and 64, within 2 points of its mAP@.5):", ""]
    for s, m in seeds.items():
        g, table = m["goals"], m["table"]
        ratio = {k: table["teacher"][k] / table[deployed[s]][k] for k in ("parameters", "MFLOPs")}
        lines.append(f"- seed {s}: {g['smaller']}x smaller ({mark(g['smaller'] >= 10)}), {g['faster']['1']}x / "
                     f"{g['faster']['64']}x faster at batch 1 / 64 ({mark(min(g['faster'].values()) >= 3)}), mAP@.5 "
                     f"{g['map50_drop']:.2f} points below the teacher's ({mark(g['map50_drop'] <= 2)}); it has "
                     f"{ratio['parameters']:.2f}x fewer parameters and {ratio['MFLOPs']:.2f}x fewer FLOPs than the "
                     f"teacher, so one byte per weight instead of four would make its weights about "
                     f"{4 * ratio['parameters']:.1f}x smaller")
    return lines


TABLES = {"kd": kd_table, "feature": feature_table, "pruning": pruning_table, "final": final_table,
          "search": search_table, "transformer": transformer_table,
          "detection": detection_table}  # README marker name -> table


def markers(name: str) -> tuple[str, str]:
    return (f"<!-- reference {name}: start (python -m distill_utils reference --readme) -->",
            f"<!-- reference {name}: end -->")


def with_tables(text: str, folder=None) -> str:
    """``text`` (the README) with each table of ``TABLES`` rewritten between its markers."""
    for name, table in TABLES.items():
        text = between_markers(text, *markers(name), table(folder), where=f"the README ({name} table)")
    return text


def update_readme(readme=None, folder=None) -> bool:
    """Rewrite each table between its README markers; returns whether anything changed."""
    return rewrite(lambda text: with_tables(text, folder), readme)
