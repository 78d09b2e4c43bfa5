"""Reference records (resumable runs) and the README's tables generated from them (tables.py)."""
import json

import pytest

from distill_utils.readme import tables
from distill_utils.runs import reference
from distill_utils.runs.experiments import REPO


def write_record(folder, seeds):
    record = {"notebook": "03_knowledge_distillation", "params_file": "params/full.yaml",
              "parameters": {"student_name": "student_cnn", "student_width": 1.0, "T": 4.0, "alpha": 0.9,
                             "epochs": 15, "augment": True, "train_images": 0, "labelled_images": 3000,
                             "few_epochs": 15},
              "seeds": {str(s): {"metrics": {"teacher_acc": 0.9302, "scratch_test_acc": sc, "distilled_test_acc": kd,
                                             "few_scratch": {str(s): fs}, "few_distilled": {str(s): fk}},
                                 "wall_s": 100.0, "versions": {"torch": "x"}, "finished": "t"}
                        for s, (sc, kd, fs, fk) in seeds.items()}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "03_knowledge_distillation.json").write_text(json.dumps(record))
    return record


def test_per_seed_reads_plain_and_nested_metrics(tmp_path):
    record = write_record(tmp_path, {0: (0.90, 0.91, 0.85, 0.86), 1: (0.91, 0.915, 0.84, 0.86)})
    assert reference.per_seed(record, "scratch_test_acc") == {0: 0.90, 1: 0.91}
    assert reference.per_seed(record, "few_distilled") == {0: 0.86, 1: 0.86}
    assert reference.per_seed(record, "absent") == {}
    assert reference.describe(record) == "params/full.yaml, 2 seeds (0, 1)"


def test_table_rows_come_from_the_records(tmp_path):
    write_record(tmp_path, {0: (0.900, 0.910, 0.850, 0.862), 1: (0.902, 0.913, 0.848, 0.860),
                            2: (0.901, 0.911, 0.852, 0.863)})
    table = tables.kd_table(tmp_path)
    lines = table.splitlines()
    assert lines[0].startswith("Fashion-MNIST, `student_cnn` (width 1.0), T=4.0, alpha=0.9, params/full.yaml, 3 seeds")
    full = next(line for line in lines if line.startswith("| all 60,000 labels, 15 epochs, crop + flip |"))
    # scratch 90.10 ± 0.10, distilled 91.13 ± 0.15; differences 1.0, 1.1, 1.0: 1.03 ± 0.06 of a 2.92-point gap: 35%
    assert "| 93.02% | 90.10 ± 0.10% | 91.13 ± 0.15% | 35% |" in full
    # the verdict's interval: 1.03 ± 4.3027 * 0.0577 / sqrt(3) = 0.89 to 1.18
    assert full.endswith("KD beats scratch by 1.0 points (95% CI +0.9 to +1.2, paired over 3 seeds; every seed) |")
    few = next(line for line in lines if line.startswith("| 3000 labels, 15 epochs |"))
    assert "85.00 ± 0.20%" in few and "86.17 ± 0.15%" in few
    assert not any("transfer set" in line for line in lines)  # records without the metric: no row


def test_transfer_set_row(tmp_path):
    record = write_record(tmp_path, {0: (0.9, 0.91, 0.850, 0.86), 1: (0.9, 0.91, 0.852, 0.86),
                                     2: (0.9, 0.91, 0.848, 0.86)})
    record["parameters"].update(transfer_images=57000, transfer_epochs=15)
    for s, acc in ((0, 0.91), (1, 0.912), (2, 0.905)):
        record["seeds"][str(s)]["metrics"]["transfer"] = {str(s): acc}
    (tmp_path / "03_knowledge_distillation.json").write_text(json.dumps(record))
    row = tables.kd_table(tmp_path).splitlines()[-1]
    # scratch 85.0, 85.2, 84.8; transfer 91.0, 91.2, 90.5: +6.0, +6.0, +5.7 of an 8.02-point gap: 74%
    assert row.startswith("| 3000 labels vs the teacher alone on 60,000 images, labels hidden (a transfer set), "
                          "15 epochs | 93.02% | 85.00 ± 0.20% | 90.90 ± 0.36% | 74% | ")
    assert row.endswith("| the transfer set beats scratch by 5.9 points (95% CI +5.5 to +6.3, paired over 3 seeds; "
                        "every seed) |"), row


def test_missing_records_say_how_to_make_them(tmp_path):
    assert reference.load("03_knowledge_distillation", tmp_path) is None
    assert "python -m distill_utils reference --only 03" in tables.kd_table(tmp_path)
    (tmp_path / "03_knowledge_distillation.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON.*delete it and rerun"):
        reference.load("03_knowledge_distillation", tmp_path)


def test_update_readme_rewrites_only_between_the_markers(tmp_path):
    write_record(tmp_path / "ref", {0: (0.9, 0.91, 0.85, 0.86)})
    readme = tmp_path / "README.md"
    kd_start, kd_end = tables.markers("kd")
    others = "".join("{}\nold\n{}\n".format(*tables.markers(name)) for name in tables.TABLES if name != "kd")
    readme.write_text(f"before\n{kd_start}\nold table\n{kd_end}\nmiddle\n{others}after\n")
    assert tables.update_readme(readme, tmp_path / "ref") is True
    text = readme.read_text()
    last_end = tables.markers(list(tables.TABLES)[-1])[1]
    assert text.startswith("before\n") and text.endswith(f"{last_end}\nafter\n") and "\nold" not in text
    assert f"{kd_end}\nmiddle\n{tables.markers('feature')[0]}\nNo reference record yet" in text
    assert "too few seeds to conclude" in text  # one seed: no verdict
    assert tables.update_readme(readme, tmp_path / "ref") is False  # idempotent
    readme.write_text("no markers here\n")
    with pytest.raises(ValueError, match="README \\(kd table\\) has no markers"):
        tables.update_readme(readme, tmp_path / "ref")


def test_runs_are_resumable_and_one_seed_at_a_time(tmp_path, monkeypatch):
    calls = []

    def fake_run_sequence(notebooks, out, params):
        calls.append(params)
        out.mkdir(parents=True)
        seed = params["seed"]
        (out / "03_knowledge_distillation.record.json").write_text(json.dumps(
            {"parameters": {**params, "out_dir": str(out)}, "versions": {"torch": "x", "host": "h"},
             "metrics": {"teacher_acc": 0.93, "scratch_test_acc": 0.90 + seed / 1000, "distilled_test_acc": 0.91,
                         "few_scratch": {str(seed): 0.85}, "few_distilled": {str(seed): 0.86}}}))
        return out

    monkeypatch.setattr(reference, "run_sequence", fake_run_sequence)
    reference.run_reference(["03"], [0, 1], folder=tmp_path / "ref", work=tmp_path / "work")
    assert [c["seed"] for c in calls] == [0, 1] and all(c["seeds"] == [c["seed"]] for c in calls)
    assert calls[0]["epochs"] == 15 and calls[0]["augment"] is True  # params/full.yaml's section for notebook 03
    reference.run_reference(["03"], [0, 1, 2], folder=tmp_path / "ref", work=tmp_path / "work")
    assert [c["seed"] for c in calls] == [0, 1, 2]  # seeds 0 and 1 were skipped
    record = reference.load("03_knowledge_distillation", tmp_path / "ref")
    assert sorted(record["seeds"]) == ["0", "1", "2"]
    assert "host" not in record["seeds"]["0"]["versions"] and "seed" not in record["parameters"]
    assert reference.per_seed(record, "scratch_test_acc") == {0: 0.90, 1: 0.901, 2: 0.902}
    assert len((tmp_path / "ref" / "03_knowledge_distillation.json").read_bytes()) < 10_000  # compact


def test_readme_tables_match_the_committed_records():
    text = (REPO / "README.md").read_text()
    for name, table in tables.TABLES.items():
        start, end = tables.markers(name)
        assert start in text and end in text, f"README lost the markers of its {name} table"
        shown = text.split(start, 1)[1].split(end, 1)[0].strip()
        assert shown == table().strip(), \
            f"README's {name} table differs from data/reference/: run python -m distill_utils reference --readme"


def write_pruning_records(folder):
    def seeds(metrics_of):
        return {str(s): {"metrics": metrics_of(s), "wall_s": 1.0, "versions": {}, "finished": "t"} for s in (0, 1, 2)}
    magnitude = {"notebook": "05_magnitude_pruning", "params_file": "params/full.yaml",
                 "parameters": {"train_images": 60000, "finetune_epochs": 5},
                 "seeds": seeds(lambda s: {"dense_acc": 0.93, "target": 0.9,
                                           "bytes": {"dense_file": 2_000_000, "sparse_file": 250_000},
                                           "finetuned": {"one-shot": {str(s): 0.92 + s / 1000},
                                                         "gradual": {str(s): 0.931 + s / 1000}}})}
    channels = {"notebook": "06_channel_pruning", "params_file": "params/full.yaml",
                "parameters": {"train_images": 60000, "finetune_epochs": 5, "criterion": "l1", "use_teacher": True},
                "seeds": seeds(lambda s: {"dense_acc": 0.93, "finetuned": {"0.5": {str(s): 0.925 - s / 1000}},
                                          "costs": {"dense": {"flops": 16e6, "params": 688_000},
                                                    "0.5": {"flops": 4e6, "params": 320_000}}})}
    folder.mkdir(parents=True, exist_ok=True)
    for record in (magnitude, channels):
        (folder / f"{record['notebook']}.json").write_text(json.dumps(record))


def test_pruning_table_rows_come_from_the_records(tmp_path):
    assert "--only 05 06" in tables.pruning_table(tmp_path)
    write_pruning_records(tmp_path)
    assert reference.per_seed(reference.load("06_channel_pruning", tmp_path), ("finetuned", "0.5")) == \
        {0: 0.925, 1: 0.924, 2: 0.923}
    lines = tables.pruning_table(tmp_path).splitlines()
    assert "notebook 05: params/full.yaml, 3 seeds (0, 1, 2); notebook 06: params/full.yaml, 3 seeds" in lines[0]
    assert "| dense teacher | 93.00% | | |" in lines
    # one-shot 92.00, 92.10, 92.20: mean 92.10 ± 0.10, vs dense -0.90 ± 0.10; sparse file 8x smaller
    assert ("| 90% of weights zero (global L1), one-shot + fine-tune, 60,000 images x 5 epochs | 92.10 ± 0.10% | "
            "-0.90 ± 0.10 | file 8.0x smaller stored sparse; same FLOPs |") in lines
    gradual = "| 90% of weights zero (global L1), gradual (Zhu & Gupta 2017"
    assert any(line.startswith(gradual) and "| +0.20 ± 0.10 |" in line for line in lines)
    assert ("| channels -50% (L1) + fine-tune with the teacher, 60,000 images x 5 epochs | 92.40 ± 0.10% | "
            "-0.60 ± 0.10 | 4.0x fewer FLOPs, 2.1x fewer parameters |") in lines


def test_final_table_summarises_every_model_over_seeds(tmp_path):
    assert "--only 09" in tables.final_table(tmp_path)

    def row(model, acc, smaller, fast1, fast256, seed):
        return {"model": model, "acc int8": acc + seed / 1000, "points vs teacher": 100 * (acc + seed / 1000 - 0.93),
                "bytes int8": 100_000, "x smaller": smaller, "x faster @1": fast1, "x faster @256": fast256 + seed}
    record = {"notebook": "09_quantize_and_deploy", "params_file": "params/full.yaml",
              "parameters": {"train_images": 60000, "epochs": 10, "T": 4.0, "alpha": 0.5},
              "seeds": {str(s): {"metrics": {"final_model": "small", "chosen_variant": "static QDQ u8",
                                             "final_table": [row("teacher", 0.93, 3.8, 4.0, 1.0, s),
                                                             row("small", 0.92, 20.0, 8.0, 2.0, s)]},
                                 "wall_s": 1.0, "versions": {}, "finished": "t"} for s in (0, 1, 2)}}
    (tmp_path / "09_quantize_and_deploy.json").write_text(json.dumps(record))
    lines = tables.final_table(tmp_path).splitlines()
    assert "seed 0: small; seed 1: small; seed 2: small" in lines[0] and "static QDQ u8" in lines[0]
    # x faster @256 of small: 2, 3, 4 -> seed 0 misses the 3x target, seeds 1 and 2 meet every target
    assert ("| small | 92.10 ± 0.10% | -0.90 ± 0.10 | 100,000 ± 0 | 20.0 ± 0.0x | 8.0 ± 0.0x | 3.0 ± 1.0x "
            "| 2 of 3 |") in lines
    assert lines[-2].startswith("| teacher |") and lines[-2].endswith("| 0 of 3 |")


def test_search_table_sets_the_front_beside_the_hand_made_models(tmp_path):
    assert "--summary data/reference/search_full.json" in tables.search_table(tmp_path)
    study = {"settings": {"cost": "params", "val_images": 10000, "seed": 0},
             "space": {"epochs": {"low": 1, "high": 5}}, "train_images": 50000, "trials": 3,
             "states": {"complete": 2, "pruned": 1}, "trial_seconds": 7200, "image_epochs": 400000,
             "retrain_seconds": 5400,
             "front": [{"trial": 2, "val_acc": 0.9, "test_acc": 0.895, "params": 50000, "flops": 1, "epochs_run": 5,
                        "model": "student_cnn", "student_width": 1.5, "T": 2.0, "alpha": 0.5, "loss": "kd",
                        "lr": 0.003, "test_acc_seeds": {"0": 0.895, "1": 0.897, "2": 0.893}},
                       {"trial": 1, "val_acc": 0.89, "test_acc": 0.899, "params": 60000, "flops": 1, "epochs_run": 5,
                        "model": "student_cnn", "student_width": 1.7, "T": 2.0, "alpha": 0.5, "loss": "kd",
                        "lr": 0.003, "test_acc_seeds": {"0": 0.899, "1": 0.9, "2": 0.9}},
                       {"trial": 0, "val_acc": 0.93, "test_acc": 0.925, "params": 300000, "flops": 1, "epochs_run": 4,
                        "model": "pruned_teacher", "prune_ratio_1": 0.5, "prune_ratio_2": 0.6, "prune_ratio_3": 0.7,
                        "T": 4.0, "alpha": 0.9, "loss": "dkd", "lr": 0.001, "test_acc_seeds": {"0": 0.925}}]}
    (tmp_path / "search_full.json").write_text(json.dumps(study))
    record = {"notebook": "09_quantize_and_deploy", "params_file": "params/full.yaml",
              "parameters": {"train_images": 60000, "epochs": 10},
              "seeds": {str(s): {"metrics": {"final_table": [
                  {"model": "teacher", "params": 688362, "test_acc": 0.93},
                  {"model": "student x2 + KD", "params": 98554, "test_acc": 0.92 + s / 1000},
                  {"model": "channels -50% + KD", "params": 400000, "test_acc": 0.92},
                  {"model": "student x0.5 + KD", "params": 10000, "test_acc": 0.85}]}} for s in (0, 1, 2)}}
    (tmp_path / "09_quantize_and_deploy.json").write_text(json.dumps(record))
    lines = tables.search_table(tmp_path).splitlines()
    assert lines[0].startswith("3 trials (2 complete, 1 pruned), cost `params`, each candidate at most 5 epochs on "
                               "50,000 images")
    assert "2.0 hours of trials" in lines[0] and "8 epochs of 50,000" in lines[0]
    assert "then 1.5 hours to train each front model again with 2 more seeds" in lines[0]
    assert lines[0].endswith("mean ± std over 3 seeds: the trial and its retrainings):")
    assert "| 2 | student x1.50; kd, T=2, alpha=0.50, lr=0.003, 5 epoch(s) | 50,000 | 90.00% | 89.50 ± 0.20% |" in lines
    assert "| 0 | teacher, channels -50%/60%/70%; dkd, T=4, alpha=0.90, lr=0.001, 4 epoch(s) | 300,000 |" \
        " 93.00% | 92.50% |" in lines
    assert ("Validation minus test accuracy of the same model, on average over the front: pruned teachers +0.50 "
            "points (1 model); students -0.20 points (2 models). The shipped teacher was trained") in "\n".join(lines)
    # the front model picked by validation accuracy (trial 2), not by test accuracy (trial 1)
    assert ("| student x2 + KD | 98,554 | 92.10 ± 0.10% | trial 2 (50,000) | 89.50 ± 0.20% | -2.60 ± 0.26 "
            "(3 paired seeds: worse) |") in lines
    assert "| channels -50% + KD | 400,000 | 92.00 ± 0.00% | trial 0 (300,000) | 92.50% | +0.50 " \
        "(1 paired seed: too few seeds) |" in lines
    assert "| student x0.5 + KD | 10,000 | 85.00 ± 0.00% | none this small | | |" in lines
    assert not any(line.startswith("| teacher |") for line in lines)


def _record(per_seed_a: dict, per_seed_b: dict) -> dict:
    return {"notebook": "x", "parameters": {"epochs": 6},
            "seeds": {str(s): {"metrics": {"test_acc": {"a": {str(s): per_seed_a[s]}, "b": {str(s): per_seed_b[s]}}}}
                      for s in per_seed_a}}


def test_beside_says_when_this_run_turns_the_recorded_answer_around():
    from distill_utils.runs.evidence import compare
    record = _record({0: 0.90, 1: 0.91, 2: 0.92}, {0: 0.88, 1: 0.885, 2: 0.89})  # a beats b by 2.5 points
    recorded = reference.compare_recorded(record, ("test_acc", "a"), ("test_acc", "b"), "a", "b")
    assert recorded.verdict == "better" and recorded.diff == pytest.approx(2.5)
    opposite = compare({0: 0.80, 1: 0.81, 2: 0.80}, {0: 0.85, 1: 0.86, 2: 0.86}, "a", "b")
    agreeing = compare({0: 0.90, 1: 0.912, 2: 0.911}, {0: 0.89, 1: 0.90, 2: 0.90}, "a", "b")
    unresolved = compare({0: 0.90, 1: 0.88, 2: 0.91}, {0: 0.89, 1: 0.90, 2: 0.90}, "a", "b")
    text = reference.beside(opposite, recorded, record, "6 epochs")
    assert text.startswith("**Recorded run** (6 epochs; ") and recorded.sentence() in text
    assert "opposite" in text and "agrees" not in text
    assert "This run agrees" in reference.beside(agreeing, recorded, record, "6 epochs")
    differs = reference.beside(unresolved, recorded, record, "6 epochs")
    assert "(no measurable difference) differs" in differs and "opposite" not in differs
    one_seed = reference.compare_recorded(_record({0: 0.90}, {0: 0.88}), ("test_acc", "a"), ("test_acc", "b"), "a", "b")
    incomplete = reference.beside(opposite, one_seed, record, "6 epochs")
    assert "not complete yet" in incomplete and "differs" not in incomplete and "opposite" not in incomplete


def test_this_and_recorded_puts_this_run_first_and_sizes_the_record_from_its_parameters():
    from distill_utils.runs.evidence import compare
    record = _record({0: 0.90, 1: 0.91, 2: 0.92}, {0: 0.88, 1: 0.885, 2: 0.89})
    this_run = compare({0: 0.80, 1: 0.81, 2: 0.80}, {0: 0.85, 1: 0.86, 2: 0.86}, "a", "b")
    text = reference.this_and_recorded(this_run, "1 epoch", record, ("test_acc", "a"), ("test_acc", "b"),
                                       "{epochs} epochs")
    first, second = text.split(" **Recorded run**")
    assert first == f"**This run** (1 epoch): {this_run.sentence()}."
    second = "**Recorded run**" + second
    assert second.startswith("**Recorded run** (6 epochs; ") and "a beats b by 2.5" in second and "opposite" in second
    missing = reference.this_and_recorded(this_run, "1 epoch", None, "a", "b", "{epochs} epochs")
    assert missing.startswith("**This run** (1 epoch)") and "reference --solutions` makes one" in missing


def test_solutions_parameter_file_names_only_what_the_solutions_declare(tmp_path, monkeypatch):
    from distill_utils.runs.experiments import check_parameter_names
    from distill_utils.runs.params import read_parameter_file
    solutions = [REPO / "notebooks" / "solutions" / f"{name}.ipynb" for name in reference.SOLUTIONS]
    check_parameter_names(read_parameter_file(REPO / "params" / "solutions.yaml"), solutions,
                          "params/solutions.yaml")
    calls = []
    monkeypatch.setattr(reference, "run_reference", lambda *args, **kwargs: calls.append((args, kwargs)))
    reference.run_solutions(["03_knowledge_distillation_solutions"], [1])
    (paths, seeds), kwargs = calls[0]
    assert paths == [str(solutions[1])] and seeds == [1]
    assert kwargs["folder"] == reference.SOLUTIONS_DIR and kwargs["params_file"].name == "solutions.yaml"


def test_feature_table_rows_and_verdicts_come_from_the_record(tmp_path):
    accuracy = {"scratch": 0.900, "KD": 0.905, "KD + hints": 0.915, "KD + attention": 0.903}  # no DKD recorded
    seeds = {str(s): {"metrics": {"teacher_acc": 0.93,
                                  **{f"per_seed.{m}": {str(s): a + s / 1000} for m, a in accuracy.items()}}}
             for s in range(3)}
    record = {"notebook": "04_feature_distillation", "params_file": "params/full.yaml", "seeds": seeds,
              "parameters": {"labelled_images": 60000, "epochs": 15, "T": 4.0, "alpha": 0.9, "layer": 1}}
    (tmp_path / "04_feature_distillation.json").write_text(json.dumps(record))
    table = tables.feature_table(tmp_path)
    assert "on 60,000 labelled images x 15 epochs" in table and "3 seeds (0, 1, 2)" in table
    assert "| teacher | 93.00 ± 0.00% | - |" in table and "| scratch | 90.10 ± 0.10% | - |" in table
    assert "| KD | 90.60 ± 0.10% | KD beats scratch by 0.5" in table
    assert "| KD + hints | 91.60 ± 0.10% | KD + hints beats KD by 1.0" in table
    assert "| KD + attention | 90.40 ± 0.10% | KD + attention is worse than KD by 0.2" in table
    assert "DKD" not in table  # no row for a method the record lacks
    assert tables.feature_table(tmp_path / "none").startswith("No reference record yet")


def test_transformer_table_rows_and_verdicts_come_from_the_record(tmp_path):
    names = ["width, activations, KD", "width, activations, labels", "width, magnitudes, KD"]
    accuracy = {"width, activations, KD": 0.86, "width, activations, labels": 0.84, "width, magnitudes, KD": 0.85}
    seeds = {str(s): {"metrics": {"teacher_acc": 0.875,
                                  "recovered": {n: {str(s): accuracy[n] + s / 1000} for n in names},
                                  "one_shot": {"width, activations": {str(s): 0.70},
                                               "width, magnitudes": {str(s): 0.69}}}}
             for s in range(3)}
    record = {"notebook": "11_transformer_compression", "params_file": "params/full.yaml", "seeds": seeds,
              "parameters": {"heads_removed": 0.5, "mlp_removed": 0.5, "blocks_removed": 2, "recover_images": 60000,
                             "recover_epochs": 5, "T": 2.0, "alpha": 1.0}}
    (tmp_path / "11_transformer_compression.json").write_text(json.dumps(record))
    table = tables.transformer_table(tmp_path)
    assert "60,000 images x 5 epochs" in table and "3 seeds (0, 1, 2)" in table
    assert "| ViT teacher (not pruned) | 87.50 ± 0.00% | - | - |" in table
    assert "| width, activations, KD | 86.10 ± 0.10% | 70.00 ± 0.00% | -1.40 ± 0.10 |" in table
    assert "| width, activations, labels | 84.10 ± 0.10% | 70.00 ± 0.00% | -3.40 ± 0.10 |" in table
    assert "- KD beats labels by 2.0" in table and "activation importance beats magnitude by 1.0" in table
    assert "random" not in table  # no verdict for methods the record lacks
    assert tables.transformer_table(tmp_path / "none").startswith("No reference record yet")


def test_detection_table_rows_verdicts_and_goals_come_from_the_record(tmp_path):
    base = {"scratch": 0.20, "heatmap KD": 0.24, "imitation (masked)": 0.21, "both": 0.25, "imitation (unmasked)": 0.20}

    def seed_metrics(s):
        maps = {n: {str(s): v + s / 1000} for n, v in base.items()}
        row = {"mAP (%)": 30.0 + s, "mAP@.5 (%)": 50.0, "ms @1": 0.2 + s / 10, "ms @64": 7.0, "parameters": 1000,
               "MFLOPs": 2.0}
        table = {"teacher": {**row, "mAP (%)": 58.0, "ms @1": 1.5, "ms @64": 36.0, "parameters": 4000, "MFLOPs": 10.0},
                 "student, scratch": row,
                 "pruned, with the teacher": row, "pruned, with the teacher, ONNX int8": row}
        return {"teacher_map": 0.58, "teacher_map50": 0.81, "map": maps, "map50": maps,
                "gap_closed": {n: {str(s): (v - 0.20) / 0.38} for n, v in base.items() if n != "scratch"},
                "pruned_map": 0.0, "recovered": {"with the teacher": {str(s): 0.30 + s / 1000},
                                                 "labels only": {str(s): 0.29 + s / 500}},
                "deployed": "pruned, with the teacher", "table": table,
                "goals": {"smaller": 7.9, "faster": {"1": 7.5, "64": 5.3}, "map50_drop": 28.0}}

    record = {"notebook": "12_object_detection", "params_file": "params/full.yaml",
              "seeds": {str(s): {"metrics": seed_metrics(s)} for s in range(3)},
              "parameters": {"train_scenes": 20000, "test_scenes": 2000, "student_width": 0.5, "amount": 0.5,
                             "epochs": 4, "recover_epochs": 4, "kd_weight": 1.0, "T": 1.0, "feature_weight": 0.01}}
    (tmp_path / "12_object_detection.json").write_text(json.dumps(record))
    table = tables.detection_table(tmp_path)
    assert "20,000 training / 2,000 test" in table and "3 seeds (0, 1, 2)" in table
    assert "| teacher (width 1.0) | 58.00 ± 0.00% | 81.00 ± 0.00% | 1.50 ± 0.00 | 36.00 ± 0.00 |" in table
    assert "| student, heatmap KD | 24.10 ± 0.10% | 24.10 ± 0.10% | - | - |" in table
    assert "| deployed: pruned, with the teacher, ONNX int8 | 31.00 ± 1.00% | 50.00 ± 0.00% | 0.30 ± 0.10 |" in table
    assert "heatmap KD beats scratch by 4.0" in table and "gap to the teacher closed per seed: 11%, 11%, 11%" in table
    # each goal says whether it was reached, and a miss comes with the figures behind it
    assert "on every seed: **not reached** (the best method, both: 13%, 13%, 13%)" in table
    assert ("seed 2: 7.9x smaller (**not reached**), 7.5x / 5.3x faster at batch 1 / 64 (reached), mAP@.5 "
            "28.00 points below the teacher's (**not reached**); it has 4.00x fewer parameters and 5.00x fewer "
            "FLOPs") in table
    assert "weights about 16.0x smaller" in table
    assert tables.detection_table(tmp_path / "none").startswith("No reference record yet")
