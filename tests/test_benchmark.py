"""benchmark.py's pure parts: the benchmark models and experiments, RESULTS.md and the README's results
block (no UTKFace needed)."""
import json
import sys

import numpy as np

import pytest
import torch

import benchmark
import custom_dataset
import train
from conftest import REPO, constant_model
from custom_dataset import DataError


PARSER = train.get_args_parser()


def parsed(extra):
    return vars(PARSER.parse_args(["--splits", "s", "--out-dir", "o", *benchmark.ABLATION_BASE, *extra]))


def test_every_ablation_changes_the_base_and_only_what_it_names():
    base = parsed([])
    assert base["head"] == "distribution" and base["epochs"] == 10 and base["tta_flip"] and base["denoise"]
    for name, (change, extra) in benchmark.ABLATIONS.items():
        changed = {k for k, v in parsed(extra).items() if base[k] != v}
        if name == "base":
            assert changed == set()
        else:
            # every train.py option the experiment passes is one that really differs from the base
            named = {PARSER._option_string_actions[arg].dest for arg in extra if arg.startswith("--")}
            assert changed == named, (name, changed, named)


def test_ablation_table_shows_the_difference_to_the_base():
    results = {"ablations": {
        "base": {"change": "the base", "val_mae": 4.9, "val_mae_no_tta": 4.95, "best_epoch": 10, "epochs": 10, "train_images_per_s": 344.4},
        "simplecnn_bn": {"change": "BatchNorm", "val_mae": 4.65, "val_mae_no_tta": 4.7, "best_epoch": 9, "epochs": 10,
                         "train_images_per_s": 300.0},
    }}
    lines = benchmark.ablation_table(results).splitlines()
    assert lines[2] == "| base: the base | 4.900 |  | 4.950 | 10/10 | 344 |"
    assert lines[3] == "| simplecnn_bn: BatchNorm | 4.650 | -0.250 | 4.700 | 9/10 | 300 |"
    assert benchmark.ablation_table({"protocols": {}}) == ""


def test_with_overrides_replaces_the_base_flag_values_and_appends_new_flags():
    base = ["--model", "simplecnn", "--epochs", "40", "--tta-flip", "--no-denoise", "--lr", "1e-3"]
    merged = benchmark.with_overrides(base, ["--epochs", "20", "--no-tta-flip", "--denoise", "--image-size", "96"])
    assert merged == ["--model", "simplecnn", "--epochs", "20", "--no-tta-flip", "--denoise", "--lr", "1e-3",
                      "--image-size", "96"]
    assert benchmark.with_overrides(base, []) == base


def test_every_benchmark_model_parses_with_train_py_and_keeps_its_overrides():
    for name, overrides in benchmark.MODELS.items():
        args = vars(PARSER.parse_args(["--splits", "s", "--out-dir", "o", *benchmark.model_args(name)]))
        alone = vars(PARSER.parse_args(["--splits", "s", "--out-dir", "o", *benchmark.MODEL_BASE, *overrides]))
        assert args == alone, name  # the merge means what argparse's "last flag wins" means
    assert benchmark.model_args("simplecnn_tuned") == benchmark.MODEL_BASE


def test_the_teachers_placeholder_names_the_protocols_finals_or_says_which_to_train(tmp_path):
    argv = benchmark.model_args("simplecnn_distilled")
    with pytest.raises(DataError, match="train them first .*--protocols F --models simplecnn_tuned,simplecnn_photo"):
        benchmark.with_teachers(argv, tmp_path, "F")
    for name in benchmark.TEACHERS["F"]:
        (tmp_path / "F" / name).mkdir(parents=True)
        (tmp_path / "F" / name / "best.pt").write_bytes(b"")
    resolved = benchmark.with_teachers(argv, tmp_path, "F")
    teachers = resolved[resolved.index("--teacher") + 1].split(",")
    assert teachers == [str(tmp_path / "F" / n / "best.pt") for n in benchmark.TEACHERS["F"]]
    assert "{teachers}" not in resolved and benchmark.with_teachers(["--epochs", "3"], tmp_path, "S") == ["--epochs", "3"]


def synthetic_sources_files(tmp_path):
    """A small results.json and detection.json, as benchmark.py and bench_detection.py write them."""
    entry = {"test_mae": 4.5, "test_rmse": 5.9, "test_cs5": 0.65, "test_mae_per_decade": {"20-29": 3.5, "30-39": 4.5},
             "test_images": 100, "best_val_mae": 4.7, "best_epoch": 9, "epochs": 10, "params": 621857,
             "train_images_per_s": 300.0, "train_minutes": 5.0, "latency_b1_ms": 0.9, "images_per_s_b64": 1200.0,
             "command": "python train.py --splits s --out-dir o --epochs 10"}
    ablation = {"change": "the base", "val_mae": 4.9, "val_mae_flip_tta": 4.9, "val_mae_no_tta": 4.95, "best_epoch": 10,
                "epochs": 10, "train_images_per_s": 344.4, "command": "python train.py --epochs 10"}
    results = {
        "machine": "test machine", "date": "2000-01-01",
        "protocols": {"S": {"simplecnn_seed": entry, "simplecnn_tuned": {**entry, "best_val_mae": 4.2, "test_mae": 4.08}}},
        "data": {"S": {"used": 1000, "splits": {"train": 800, "val": 100, "test": 100},
                       "duplicates": {"duplicate_files_removed": 1, "conflict_groups_dropped": 2, "conflict_files_dropped": 4},
                       "age": {"min": 20, "max": 50, "mean": 31.6, "median": 29.0}, "test_mae_of_train_median": 6.23}},
        "ablations": {"base": ablation, "loss_mse": {**ablation, "change": "MSE", "val_mae": 4.7},
                      "base_seed_2": {**ablation, "change": "another seed", "val_mae": 4.85}},
        "speed": {"loader_uncached_images_per_s": 31.0, "loader_cached_images_per_s": 40000.0,
                  "loader_cache_speedup": 1290.0},
    }
    detection = {"scenes": {"canvas": [640, 480], "face_fraction_of_height": [0.15, 0.8], "max_tilt_degrees": 20.0,
                            "gain": [0.35, 1.8], "seed": 0},
                 "detectors": {"auto": {"scenes": {"n": 30, "detection_rate": 0.9, "false_boxes_per_image": 0.0,
                                                   "ms_per_photo": 38.8},
                                        "faceless": {"n": 30, "false_boxes_per_image": 0.01}}},
                 "end_to_end": {"model": "m.onnx", "n": 30, "ms_per_photo_median": 47.3, "ms_per_photo_mean": 73.7,
                                "ms_per_photo_p90": 127.5}}
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "results.json").write_text(json.dumps(results))
    (tmp_path / "bench" / "detection.json").write_text(json.dumps(detection))
    return results


def test_table_writes_results_md_and_the_readme_block_from_the_figures(tmp_path, capsys):
    synthetic_sources_files(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n\n{benchmark.README_START}\nold figures\n{benchmark.README_END}\n\nafter\n")
    args = benchmark.get_args_parser().parse_args([
        "--table", "--out", str(tmp_path / "bench" / "results.json"), "--detection", str(tmp_path / "bench" / "detection.json"),
        "--results-md", str(tmp_path / "RESULTS.md"), "--readme", str(readme)])
    benchmark.main(args)
    assert "| S | simplecnn_tuned | 4.08 |" in capsys.readouterr().out  # the tables are still printed
    md = (tmp_path / "RESULTS.md").read_text()
    assert md.startswith("# Results") and "test machine" in md
    assert "| S | simplecnn_tuned | 4.08 | 65.0% |" in md            # the protocol table
    assert "python train.py --splits s --out-dir o --epochs 10" in md  # with the command that produced it
    assert "| loss_mse: MSE | 4.700 | -0.200 |" in md                 # the experiments table ...
    assert "`loss_mse` (-0.200)" in md and "differs by 0.050 years" in md  # ... and its write-up, computed
    assert "| `auto` | 90.0% |" in md and "python bench_detection.py --detectors auto --limit 30" in md  # bench_detection's table
    assert "median 47.3 ms per photo" in md
    assert "| loader, reading the preprocessing cache | 40,000 images/s (1,290×) | ≥ 20× — reached |" in md
    text = readme.read_text()
    assert text.startswith("# Title\n\nbefore\n\n" + benchmark.README_START) and text.endswith(benchmark.README_END + "\n\nafter\n")
    assert "old figures" not in text and "test MAE 4.08" in text
    benchmark.main(args)  # a second run leaves the same files
    assert readme.read_text() == text and (tmp_path / "RESULTS.md").read_text() == md


def test_replace_marked_block_rewrites_only_between_the_markers():
    start, end = benchmark.README_START, benchmark.README_END
    text = f"a\n{start}\nold\n{end}\nb\n"
    assert benchmark.replace_marked_block(text, f"{start}\nnew\n{end}") == f"a\n{start}\nnew\n{end}\nb\n"
    assert benchmark.replace_marked_block(f"{start}{end}", f"{start}x{end}") == f"{start}x{end}"
    with pytest.raises(DataError):
        benchmark.replace_marked_block("no markers here", f"{start}\n{end}")
    with pytest.raises(DataError):
        benchmark.replace_marked_block(f"{end}\n{start}", f"{start}\n{end}")


def test_the_headline_block_needs_no_figure_it_lacks():
    block = benchmark.headline_block({"results": {"protocols": {}}, "detection": None, "shipped": None})
    assert block.startswith(benchmark.README_START) and block.endswith(benchmark.README_END)


def test_isotonic_experiment_undoes_a_pull_to_the_middle():
    rng = np.random.default_rng(0)

    def draw(n):  # predictions pulled toward 40: the young look older, the old younger
        true = rng.uniform(1, 80, n)
        return 40 + 0.7 * (true - 40) + rng.normal(0, 2, n), true
    result = benchmark.isotonic_experiment(draw(4000), draw(4000))
    for split in ("val", "test"):
        assert result[f"{split}_worst_decade_before"][0] in ("0-9", "70-79")
        assert result[f"{split}_worst_decade_after"][1] < result[f"{split}_worst_decade_before"][1] - 3
        assert result[f"{split}_mae_after"] < result[f"{split}_mae_before"]
    assert result["keep"] is True
    assert result["signed_error_per_decade_before"]["0-9"] > 5  # estimated too old


def test_isotonic_experiment_is_not_kept_where_there_is_nothing_to_fix():
    rng = np.random.default_rng(1)

    def draw(n):  # unbiased predictions: a map fitted on noise can only add noise
        true = rng.uniform(1, 80, n)
        return true + rng.normal(0, 4, n), true
    assert benchmark.isotonic_experiment(draw(300), draw(300))["keep"] is False


def test_bias_section_reports_interval_groups_and_isotonic():
    entry = {"interval": {"level": 0.9, "coverage": 0.904, "mean_width": 12.3,
                          "coverage_per_decade": {"20-29": {"coverage": 0.93, "n": 10}, "70-79": {"coverage": 0.8, "n": 5}}},
             "groups": {"gender": {"male": {"mae": 5.0, "mean_error": -1.0, "n": 7}}},
             "isotonic": {"val_mae_before": 5.0, "val_mae_after": 5.02, "val_worst_decade_before": ["70-79", 9.0],
                          "val_worst_decade_after": ["70-79", 8.5], "test_mae_before": 5.1, "test_mae_after": 5.1,
                          "test_worst_decade_before": ["70-79", 9.1], "test_worst_decade_after": ["70-79", 8.9],
                          "keep": True}}
    lines = benchmark.bias_section({"results": {"protocols": {"F": {"m": entry}}}})
    text = "\n".join(lines)
    assert "| F/m | 0.904 | 12.3 | 70-79: 0.80 (n = 5) |" in text
    assert "| gender male | 5.00 | -1.00 | 7 |" in text and "meets the rule" in text
    assert benchmark.bias_section({"results": {"protocols": {"F": {"m": {}}}}}) == []


def test_bias_section_gives_the_balanced_sampling_verdict_with_its_reason():
    measured = {"F": {"m": {"interval": {"level": 0.9, "coverage": 0.9, "mean_width": 12.0,
                                     "coverage_per_decade": {"20-29": {"coverage": 0.9, "n": 10}}}}}}

    def verdict(base_val, bal_val, base_worst, bal_worst):
        runs = {"base_rerun": {"val_mae": base_val, "val_worst_decade": ["80-89", base_worst]},
                "balanced": {"val_mae": bal_val, "val_worst_decade": ["80-89", bal_worst], "epochs": 10}}
        line, = [x for x in benchmark.bias_section({"results": {"protocols": measured, "ablations": runs}})
                 if x.startswith("Age-balanced")]
        return line.rsplit(": ", 1)[1]
    assert verdict(5.0, 5.04, 12.0, 11.0) == "kept (it meets the rule)."
    assert verdict(5.0, 5.2, 12.0, 11.0) == "not kept (the overall MAE rises by more than 0.05)."
    assert verdict(5.0, 4.9, 12.0, 12.0) == "not kept (the worst decade does not improve)."


@pytest.mark.slow
def test_calibrating_a_run_with_a_kept_age_map_measures_the_mapped_ages_and_keeps_its_interval(
        splits, tmp_path, monkeypatch):
    import checkpoints
    from custom_dataset import read_split
    # a map that answers 33 for every age stands in for a kept isotonic map (real ones need more faces)
    constant = {"method": "test map", "x": [0.0, 200.0], "y": [33.0, 33.0]}
    import functions
    # cross-fitted ages of a map that a judge, asked again, would not keep: train.py's decision stands
    monkeypatch.setattr(functions, "judge_age_map", lambda pred, true, **kw: {"keep": False,
                                                                              "crossed": np.asarray(pred) + 2.0})
    # as train.py with a kept map: the interval fitted on the cross-fitted ages
    monkeypatch.setattr(train, "calibrate_ages", lambda pred, true, age_map: (
        constant, functions.fit_interval(functions.judge_age_map(pred, true)["crossed"], true), None))
    run = tmp_path / "S" / "mapped"
    train.main(train.get_args_parser().parse_args(
        ["--splits", str(splits), "--out-dir", str(run), "--image-size", "64", "--no-progress", "--threads", "1",
         "--epochs", "1", "--no-tensorboard", "--no-export"]))
    interval = checkpoints.load_checkpoint(run / "best.pt")["interval"]
    figures = benchmark.calibrate_run("S", "mapped", tmp_path)
    assert checkpoints.load_checkpoint(run / "best.pt")["interval"] == interval  # train.py's, fitted after the map
    test_ages = np.array([float(r["age"]) for r in read_split(splits / "test.csv")])
    decades = figures["groups"]["decade"]
    overall = sum(g["mae"] * g["n"] for g in decades.values()) / sum(g["n"] for g in decades.values())
    assert overall == pytest.approx(np.mean(np.abs(33.0 - test_ages)), abs=0.01)


def test_distillation_is_reported_against_the_same_recipe_and_length_with_the_teachers_compute():
    def run(val, test, epochs, minutes, teachers=(), **extra):
        command = "python train.py --splits s --out-dir o" + (
            " --teacher " + ",".join(f"w/S/{t}/best.pt" for t in teachers) if teachers else "")
        return {"best_val_mae": val, "test_mae": test, "epochs": epochs, "train_minutes": minutes,
                "command": command, **extra}
    models = {"simplecnn_tuned": run(4.2, 4.1, 40, 20.0), "simplecnn_tuned_60ep": run(4.1, 4.05, 60, 30.0),
              "simplecnn_tuned_96px": run(4.3, 4.2, 40, 10.0),
              "simplecnn_distilled": run(4.0, 3.95, 60, 31.0, benchmark.TEACHERS["S"], teacher_val_mae=4.05)}
    # a run of the same length but another augmentation, listed first, is not the student's twin
    photo = run(4.0, 4.0, 60, 30.0)
    photo["command"] += " --augment photo"
    (line,) = benchmark.distillation_lines({"S": {"photo_60ep": photo, **models}})
    assert "against `simplecnn_tuned_60ep`" in line and "validation 4.100 → 4.000, test 4.05 → **3.95**" in line
    assert "31.0 min for the student plus 60.0 min for the CPU runs it learnt from" in line and "MAE 4.050" in line
    assert benchmark.distillation_lines({"S": {k: v for k, v in models.items() if k != "simplecnn_distilled"}}) == []
    # a second generation learns from the first student: its cost counts the first student's teachers too,
    # each run once (tuned_60ep teaches both)
    models["gen2"] = run(3.9, 3.85, 60, 32.0, ("simplecnn_distilled", "simplecnn_tuned_60ep"), teacher_val_mae=3.95)
    assert benchmark.teacher_names(models["gen2"]) == ["simplecnn_distilled", "simplecnn_tuned_60ep"]
    assert benchmark.teachers_minutes(models, models["gen2"]) == pytest.approx(31.0 + 60.0)
    assert benchmark.teachers_minutes(models, models["simplecnn_tuned"]) == 0
    assert "`gen2`" in benchmark.distillation_lines({"S": models})[1]
    # compared only with a run of the same input size: a 144 px student has no 144 px run without teachers
    models["big"] = dict(run(3.9, 3.9, 60, 40.0, ("simplecnn_distilled",), teacher_val_mae=3.95))
    models["big"]["command"] += " --image-size 144"
    assert benchmark.recorded_args(models["big"]).image_size == 144 and benchmark.recorded_args(models["gen2"]).image_size == 128
    big = [line for line in benchmark.distillation_lines({"S": models}) if "`big`" in line]
    assert len(big) == 1 and "against" not in big[0]


def test_a_named_teacher_set_resolves_under_the_protocol_or_says_which_runs_to_train(tmp_path):
    argv = ["--epochs", "3", "--teacher", "{runs:a,b}"]
    with pytest.raises(DataError, match=r"train them first \(python benchmark.py --protocols S --models a,b\)"):
        benchmark.with_teachers(argv, tmp_path, "S")
    for name in "ab":
        (tmp_path / "S" / name).mkdir(parents=True)
        (tmp_path / "S" / name / "best.pt").write_bytes(b"")
    assert benchmark.with_teachers(argv, tmp_path, "S")[-1] == f"{tmp_path}/S/a/best.pt,{tmp_path}/S/b/best.pt"


def test_the_shipped_model_is_the_lowest_mean_of_the_three_validation_figures_and_only_protocol_f():
    def entry(colour, gray, scan=None):
        return {"best_val_mae": colour, "val_mae_gray": gray, "test_mae": 1.0,
                **({} if scan is None else {"val_mae_scan": scan})}
    results = {"protocols": {"S": {"s_best": entry(1.0, 1.0, 1.0)},
                             "F": {"colour_best": entry(5.0, 5.6, 6.4), "robust": entry(5.1, 5.2, 5.3),
                                   "unmeasured": entry(4.0, 4.0)}}}
    text = "\n".join(benchmark.shipped_section({"results": results, "shipped": "F/colour_best"}))
    assert "| F/robust (**chosen**) | 5.10 | 5.20 | 5.30 | 5.20 |" in text
    assert "not the rule's choice, F/robust" in text
    assert "s_best" not in text and "unmeasured" not in text  # other protocols and unmeasured runs are no candidates
    assert benchmark.shipped_section({"results": {"protocols": {"F": {"m": entry(5.0, 5.0)}}}, "shipped": None}) == []


def test_grained_copies_are_shown_beside_the_rule_and_do_not_choose():
    def entry(colour, gray, scan, grain=None):
        return {"best_val_mae": colour, "val_mae_gray": gray, "val_mae_scan": scan, "test_mae": 1.0,
                **({} if grain is None else {"val_mae_grain": grain})}
    results = {"protocols": {"F": {"rule_best": entry(5.0, 5.0, 5.0, 6.0), "grain_best": entry(5.1, 5.1, 5.1, 5.2),
                                   "old": entry(5.2, 5.2, 5.2)}}}
    text = "\n".join(benchmark.shipped_section({"results": results, "shipped": None}))
    assert "| F/rule_best (**chosen**) | 5.00 | 5.00 | 5.00 | 5.00 | 1.00 | - | 6.00 |" in text
    assert "| F/grain_best | 5.10 | 5.10 | 5.10 | 5.10 | 1.00 | - | 5.20 |" in text
    assert "| F/old | 5.20 | 5.20 | 5.20 | 5.20 | 1.00 | - | - |" in text


def test_the_model_card_takes_every_figure_from_the_records_and_names_a_distilled_models_teachers():
    entry = {"params": 629332, "best_epoch": 38, "epochs": 40, "test_mae": 4.9712, "test_cs5": 0.6131,
             "test_images": 2312, "test_mae_per_decade": {"0-9": 1.85, "10-19": 5.12}, "train_minutes": 43.71,
             "interval": {"level": 0.9, "coverage": 0.913, "mean_width": 21.4},
             "command": "python train.py --splits s --out-dir o --augment photo"}
    cross = {"mae": 7.034, "cs5": 0.498, "faces_found": 0.996, "n": 998, "mae_per_decade": {"0-9": 5.23},
             "mean_error_per_decade": {"0-9": 5.07, "60-69": -2.2}}
    data = {"splits": {"train": 18488, "val": 2312, "test": 2312}, "test_mae_of_train_median": 14.97}
    metadata = {"min_age": 1, "max_age": 116, "preprocess": {"image_size": 128}, "model_name": "simplecnn",
                "head": "distribution"}
    card = benchmark.model_card("F", "simplecnn_photo", entry, cross, data, metadata, "aligned 200 px chip")
    for text in ("--ship F/simplecnn_photo", "629,332 parameters", "ages\n  1-116", "input 128 px", "covers 91.3%",
                 "21.4 years", "aligned 200 px chip", "18,488 / 2,312 / 2,312", "epoch 38 of 40", "MAE\n  4.97 years",
                 "CS@5 61.3%", "0-9: 1.85, 10-19: 5.12", "MAE 14.97", "MAE 7.03, CS@5 49.8%", "99.6%", "n = 998",
                 "0-9: +5.07, 60-69: -2.2", "43.7 min", entry["command"], "--models simplecnn_photo --no-speed"):
        assert text in card, text
    assert "Distilled" not in card and "bf16" not in card
    in_bf16 = dict(entry, command=entry["command"] + " --amp")
    assert "in bf16 autocast (`--amp`)" in benchmark.model_card("F", "m", in_bf16, cross, data, metadata, "chip")
    assert "SimpleCNN (629,332 parameters, label-distribution head" in card
    # a run whose CPU ignored --amp, and another network and head: said as they are, not as the shipped one's
    ignored = benchmark.model_card("F", "m", dict(in_bf16, bf16=False), cross, data, metadata, "chip")
    assert "in float32: `--amp` was given" in ignored and "bf16 autocast" not in ignored
    other = benchmark.model_card("F", "m", entry, cross, data, {**metadata, "model_name": "resnet18",
                                                                "head": "regression"}, "chip")
    assert "resnet18 (629,332 parameters, regression head" in other
    distilled = dict(entry, command=entry["command"] + " --teacher w/F/a/best.pt,w/F/b/best.pt",
                     teacher_val_mae=4.9461)
    card = benchmark.model_card("F", "simplecnn_distilled", distilled, cross, data, metadata, "chip")
    assert "Distilled: its teachers (validation MAE of their mean distribution 4.946)" in card
    assert "--protocols F --models a,b --no-speed" in card


def test_only_protocol_f_models_are_shipped(tmp_path):
    args = benchmark.get_args_parser().parse_args(["--ship", "S/simplecnn_tuned"])
    with pytest.raises(DataError, match="only Protocol F"):
        benchmark.ship(args, tmp_path, {})
    # a name without a record, or none at all: one line, not a KeyError or an unpacking error
    for ship, words in (("F/never_trained", "records no run F/never_trained"), ("F", "records no run F/NAME")):
        with pytest.raises(DataError, match=words):
            benchmark.ship(benchmark.get_args_parser().parse_args(["--ship", ship]), tmp_path, {"protocols": {"F": {}}})


def test_the_cross_reading_names_the_shipped_models_largest_signed_error():
    fgnet = {"F/m": {"mae": 6.7, "mae_per_decade": {"0-9": 4.8, "10-19": 8.7, "60-69": 8.7},
                     "mean_error_per_decade": {"0-9": 4.5, "10-19": 8.4, "60-69": -8.9}, "faces_found": 0.996}}
    text = "\n".join(benchmark.cross_reading({"cross": {"FGNET": fgnet}}, "F/m"))
    assert "0-9 +4.5, 10-19 +8.4, 60-69 -8.9; the largest bias is -8.9 years, in 60-69." in text
    assert "not reached; the shipped model (`F/m`) has 6.70" in text


def test_the_fgnet_table_names_each_crop_as_the_model_card_and_inference_do():
    import faces
    row = {"detector": "auto", "mae": 6.35, "cs5": 0.525, "faces_found": 0.996, "photos": 1002,
           "mae_per_decade": {"0-9": 4.27}, "mean_error_per_decade": {"0-9": 4.17}}
    rows = {"F/chip": dict(row, crop=faces.UTKFACE_CROP), "F/box": dict(row, crop={"kind": "box", "margin": 0.0})}
    table = benchmark.cross_table({"cross": {"FGNET": rows}})
    assert f"| F/chip | auto, {faces.describe_crop(faces.UTKFACE_CROP)} | 6.35 | 52.5% | 99.6% of 1002 | 4.3 | +4.2 |" in table
    assert "| F/box | auto, square around the detector box, margin 0 |" in table


def test_the_onnx_latency_row_judges_the_input_size_of_the_s_choice():
    def model(val, size):
        return {"best_val_mae": val, "train_images_per_s": 300.0, "latency_b1_ms": 1.0, "images_per_s_b64": 1000.0,
                "command": f"python train.py --splits s --out-dir o --image-size {size}"}
    results = {"protocols": {"S": {"small": model(4.2, 128), "large": model(4.0, 144)}},
               "probes": {"onnx_b1_ms": {"128": 0.6, "144": 1.7}}}
    row = [line for line in benchmark.speed_table(results) if line.startswith("| ONNX Runtime")]
    assert row and "128 px 0.60 ms, 144 px 1.70 ms" in row[0]
    assert "not reached at 144 px" in row[0]  # the S choice (lowest val MAE) is the 144 px model
    results["protocols"]["S"]["small"]["best_val_mae"] = 3.9
    assert "— reached at 128 px" in [line for line in benchmark.speed_table(results) if "ONNX" in line][0]


def test_the_jit_latency_target_is_judged_on_every_run_of_the_chosen_architecture():
    def model(val, ms, size, params=700_000):
        return {"best_val_mae": val, "train_images_per_s": 300.0, "latency_b1_ms": ms, "images_per_s_b64": 1000.0,
                "params": params, "command": f"python train.py --splits s --out-dir o --image-size {size}"}

    def row(runs):
        return [line for line in benchmark.speed_table({"protocols": {"S": runs}}) if "batch-1 latency" in line][0]
    runs = {"chosen": model(3.9, 0.8, 144), "twin": model(4.0, 1.3, 144),
            "other_size": model(4.1, 1.6, 128), "other_width": model(4.1, 1.7, 144, params=500_000)}
    assert row(runs).endswith("— not settled: 1 of 2 measurements of this architecture inside it (0.80–1.30 ms) |")
    assert benchmark.latency_per_face(runs, "chosen").startswith("0.80–1.30 ms per forward pass (2 runs")
    assert benchmark.latency_per_face(runs, "other_size") == "1.60 ms per forward pass"
    runs["twin"]["latency_b1_ms"] = 0.95  # the other shapes' slower figures do not count
    assert row(runs).endswith("≤ 1 ms — reached |")
    runs["chosen"]["latency_b1_ms"] = runs["twin"]["latency_b1_ms"] = 1.2
    assert row(runs).endswith("≤ 1 ms — not reached |")


def test_a_bf16_lever_is_compared_with_the_float32_run_of_the_same_recipe_only():
    def run(val, minutes, extra):
        return {"change": "x", "val_mae": val, "val_mae_no_tta": val, "best_epoch": 50, "epochs": 60,
                "train_minutes": minutes, "command": "python train.py --splits s --out-dir o --epochs 60" + extra}
    results = {"protocols": {"S": {"simplecnn_tuned": {"best_val_mae": 4.2}}},
               "long_ablations": {"f32": run(4.10, 30.0, ""), "bf16": run(4.12, 15.0, " --amp"),
                                  "bf16_light": run(4.30, 14.0, " --amp --augment light")}}
    lines = [line for line in benchmark.long_ablation_lines(results) if line.startswith("bf16 autocast")]
    assert len(lines) == 1 and "`bf16`)" in lines[0] and "4.100 -> 4.120" in lines[0] and "30.0 -> 15.0" in lines[0]


def test_a_long_lever_is_judged_against_the_run_it_changed(monkeypatch):
    def run(val):
        return {"change": "x", "val_mae": val, "val_mae_no_tta": val, "best_epoch": 50, "epochs": 60,
                "train_minutes": 15.0, "command": "python train.py --splits s --out-dir o --epochs 60 --amp"}
    monkeypatch.setattr(benchmark, "LONG_ABLATION_BASES", {"lever": "amp", "orphan": "missing"})
    results = {"protocols": {"S": {"simplecnn_tuned": {"best_val_mae": 4.2}}},
               "long_ablations": {"amp": run(4.10), "lever": run(4.00), "orphan": run(3.0)}}
    rows = {line.split(":")[0].strip("| "): line for line in benchmark.long_ablation_lines(results)
            if line.startswith("| ") and ":" in line}
    assert "| simplecnn_tuned | 4.100 | -0.100 |" in rows["amp"]
    assert "| amp | 4.000 | -0.100 |" in rows["lever"]
    assert "orphan" not in rows  # its base was never run: no comparison to make, but it is named as left out
    assert any(line.startswith("Recorded but not judged") and "`orphan` (`missing`)" in line
               for line in benchmark.long_ablation_lines(results))
    reading = next(line for line in benchmark.long_ablation_lines(results) if line.startswith("Better"))
    assert "`lever` (-0.100)" in reading and "`amp` (-0.100)" in reading
    # a rerun with another seed is the noise the levers are read against, never a lever itself
    monkeypatch.setattr(benchmark, "LONG_ABLATION_BASES", {"lever": "amp", "seed2": "amp"})
    results["long_ablations"]["seed2"] = {**run(4.03), "change": "nothing: amp again with another seed"}
    lines = benchmark.long_ablation_lines(results)
    assert "seed2" not in next(line for line in lines if line.startswith("Better"))
    assert "`seed2` (-0.070)" in next(line for line in lines if line.startswith("The same recipe again"))


def test_refresh_exports_names_and_passes_over_a_run_that_was_never_trained(tmp_path, monkeypatch, capsys):
    out = tmp_path / "results.json"
    args = benchmark.get_args_parser().parse_args(["--refresh-exports", "--out", str(out),
                                                   "--work-dir", str(tmp_path / "work")])
    refreshed = []
    monkeypatch.setattr(benchmark, "refresh_exports", lambda *a: refreshed.append(a[:2]) or {})
    monkeypatch.setattr(benchmark, "table", lambda results: "")
    (tmp_path / "work" / "F" / "ready").mkdir(parents=True)
    (tmp_path / "work" / "F" / "ready" / "best.pt").write_bytes(b"x")
    (tmp_path / "work" / "F" / "ready" / "metrics.json").write_text("{}")  # finished
    out.write_text(json.dumps({"protocols": {"F": {"trained_elsewhere": {}, "ready": {}}}}))
    benchmark.run_refresh(args, ["F"], ["trained_elsewhere", "never_recorded", "ready"])
    printed = capsys.readouterr().out
    assert refreshed == [("F", "ready")]
    assert "skipped F/trained_elsewhere: no best.pt" in printed and "skipped F/never_recorded" in printed
    assert "refreshed all but 2: F/trained_elsewhere, F/never_recorded" in printed


def test_a_denoising_model_meets_the_scan_grain_before_its_denoiser(splits, tmp_path, monkeypatch):
    import dataclasses
    import shutil

    import functions
    from custom_dataset import PreprocessConfig, altered_copies, filter_input, load_split_dataset
    out = tmp_path / "out"
    shutil.copytree(splits.parent / "splits", out / "splits")  # the shared fixture's caches stay untouched
    cfg = PreprocessConfig(image_size=32, denoise=True, deblur=False)
    seen = []
    monkeypatch.setattr(functions, "evaluate", lambda model, loader, *a, **k: seen.append(loader.dataset.images)
                        or {"mae": 1.0})
    figures = benchmark.altered_val_maes({"config": {"splits": str(out / "splits")}}, None, cfg)
    assert figures == {"val_mae_gray": 1.0, "val_mae_scan": 1.0, "val_mae_grain": 1.0}

    def val(settings):
        return load_split_dataset(out / "splits" / "val.csv", settings, out / "cache", progress=False).images
    scanned_then_denoised = np.stack([filter_input(x, cfg) for x in altered_copies(val(
        dataclasses.replace(cfg, denoise=False)), "scan")])
    assert (seen[1] == scanned_then_denoised).all()
    assert not (seen[1] == altered_copies(val(cfg), "scan")).all()  # grain added after the denoiser differs


def test_each_chip_filter_changes_a_textured_face_and_keeps_its_shape():
    rng = np.random.default_rng(0)
    face = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for name, apply in benchmark.chip_filters().items():
        out = apply(face)
        assert out.shape == face.shape and out.dtype == np.uint8, name
        assert (out == face).all() == (name == "as is"), name
    gray = benchmark.chip_filters()["gray"](face)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    blurred = benchmark.chip_filters()["blurred (Gaussian, sigma 2.5 px)"](face)
    assert blurred.astype(float).std() < face.astype(float).std() / 2  # grain mostly gone


def test_the_filter_table_lists_every_filter_with_its_signed_errors_under_50():
    figures = {"as is": {"mae": 6.3, "n": 998, "mean_error_per_decade": {"0-9": 4.2, "10-19": 8.1, "60-69": -1.2}},
               "blurred": {"mae": 6.0, "n": 998, "mean_error_per_decade": {"0-9": 3.6, "10-19": 7.5, "60-69": -3.0}}}
    lines = benchmark.cross_filter_lines({"cross_filters": {"FGNET": {"F/m": figures}}})
    assert "--models m --cross-filters" in "\n".join(lines)
    assert "| face filtered first | FG-NET MAE | signed error 0-9, 10-19 (+: too old) |" in lines
    assert "| as is | 6.30 | +4.2, +8.1 |" in lines and "| blurred | 6.00 | +3.6, +7.5 |" in lines
    assert any(line.startswith("Mean shift") and "blurred -0.6 years" in line for line in lines)
    assert benchmark.cross_filter_lines({}) == []


def test_cross_filters_scores_the_found_faces_under_every_filter(tmp_path, monkeypatch):
    import inference
    from conftest import constant_model
    model = constant_model(tmp_path / "model.onnx", age=30.0, min_age=0, max_age=100)
    rng = np.random.default_rng(0)
    found = [(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), age) for age in (22.0, 24.0, 45.0)]
    given = []  # what the model was given under each filter: a constant model's ages cannot show it
    real_predict = inference.AgeEstimator.predict_inputs
    monkeypatch.setattr(inference.AgeEstimator, "predict_inputs",
                        lambda self, inputs: given.append(inputs.copy()) or real_predict(self, inputs))
    figures = benchmark.cross_filters(model, found)
    assert list(figures) == list(benchmark.chip_filters())
    estimator = inference.AgeEstimator(model, whole_image=True)
    for inputs, apply in zip(given, benchmark.chip_filters().values(), strict=True):
        assert np.array_equal(inputs, estimator.model_inputs([apply(chip) for chip, _ in found]))
    assert len({inputs.tobytes() for inputs in given}) == len(given)  # each filter changed the faces otherwise
    for f in figures.values():  # a constant 30 years: errors +8, +6, -15
        assert f["n"] == 3 and f["mae"] == pytest.approx(29 / 3, abs=1e-3)
        assert f["mean_error_per_decade"] == {"20-29": 7.0, "40-49": -15.0}


def test_the_zoom_probe_records_each_zoom_sets_validation_mae_through_inference(splits, tmp_path, monkeypatch):
    import argparse
    import shutil

    import inference
    from conftest import constant_model
    from custom_dataset import load_split_dataset, parse_zooms
    predicted_with = []  # the zooms in force at each prediction: the constant model's ages cannot show them
    real_predict = inference.AgeEstimator.predict_inputs
    monkeypatch.setattr(inference.AgeEstimator, "predict_inputs",
                        lambda self, inputs: predicted_with.append(self.tta_zoom) or real_predict(self, inputs))
    work = tmp_path / "work"
    shutil.copytree(splits.parent / "splits", work / "S" / "splits")
    model = constant_model(tmp_path / "model.onnx", age=30.0)  # the same age whatever the view
    args = argparse.Namespace(out=str(tmp_path / "results.json"), quick=False, work_dir=str(work),
                              zoom_probe=str(model))
    benchmark.run_zoom_probe(args, ["S"])
    record = json.loads((tmp_path / "results.json").read_text())["zoom_probe"][f"S:{model}"]
    assert list(dict.fromkeys(predicted_with)) == [parse_zooms(z) for z in benchmark.ZOOM_CANDIDATES]
    cfg = inference.AgeEstimator(model, whole_image=True).cfg
    ages = load_split_dataset(work / "S" / "splits" / "val.csv", cfg, work / "S" / "cache", progress=False).ages
    expected = round(float(np.mean(np.abs(30.0 - ages.numpy()))), 3)
    assert record["val_mae"] == {(z or "none"): expected for z in benchmark.ZOOM_CANDIDATES}
    assert record["images"] == len(ages) and record["tta_flip"] is False
    assert record["command"] == f"python benchmark.py --zoom-probe {model} --protocols S"


def test_the_model_card_names_the_test_time_views():
    assert benchmark.views_text({"tta_flip": True}) == "flip test-time averaging"
    assert benchmark.views_text({"tta_flip": False, "tta_zoom": []}) == "no test-time averaging"
    assert benchmark.views_text({"tta_flip": True, "tta_zoom": [0.95, 0.9]}) == (
        "flip test-time averaging over the face and its centred 95%, 90% crops (3 views, each mirrored)")


def test_forward_passes_count_every_zoom_and_its_mirror():
    assert benchmark.forward_passes(benchmark.test_time_views({"tta_flip": True, "tta_zoom": "0.95,0.9"})) == 6
    assert benchmark.forward_passes(benchmark.test_time_views({"tta_flip": False, "tta_zoom": [0.9]})) == 2
    assert benchmark.forward_passes(benchmark.test_time_views({})) == 1


@pytest.mark.slow
def test_results_md_is_the_same_text_whatever_the_hash_seed():
    """RESULTS.md regenerated from the repository's bench/ is one text: no figure depends on the order in
    which a set of strings happens to iterate (PYTHONHASHSEED), as the summed teacher minutes once did."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(benchmark.__file__).resolve().parent
    code = ("import benchmark, sys; args = benchmark.get_args_parser().parse_args([]); "
            "sys.stdout.write(benchmark.results_markdown(benchmark.load_sources(args)))")
    texts = {subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2", "3", "4")}
    assert len(texts) == 1 and "## Models on UTKFace" in texts.pop()


def test_a_rerun_goes_beside_the_recorded_final_into_its_own_folder(tmp_path, monkeypatch):
    out, work = tmp_path / "results.json", tmp_path / "work"
    recorded = {"best_val_mae": 3.975, "best_epoch": 69, "test_mae": 3.951, "teacher_val_mae": 4.118, "command": "c"}
    out.write_text(json.dumps({"protocols": {"S": {"simplecnn_distilled_144px_80ep": recorded}}}))
    args = benchmark.get_args_parser().parse_args(["--rerun", "--out", str(out), "--work-dir", str(work)])
    calls = []
    monkeypatch.setattr(benchmark.eda, "main", lambda eda_args: calls.append(("eda", eda_args.out_dir)))

    def fake_run_model(protocol, name, train_args, splits, work_dir, run_dir=None):
        calls.append(("train", run_dir))
        return {"best_val_mae": 4.009, "best_epoch": 53, "test_mae": 4.02, "test_cs5": 0.691,
                "teacher_val_mae": 4.112, "latency_b1_ms": 1.0, "command": "python train.py ..."}
    monkeypatch.setattr(benchmark, "run_model", fake_run_model)
    run_dir = work / "S" / "rerun" / "simplecnn_distilled_144px_80ep"
    benchmark.run_rerun(args, ["S"], ["simplecnn_distilled_144px_80ep"])
    benchmark.run_rerun(args, ["S"], ["simplecnn_distilled_144px_80ep"])
    assert [c for c in calls if c[0] == "train"] == [("train", run_dir)] * 2  # run_model decides on resuming
    assert [c[0] for c in calls] == ["eda", "train", "eda", "train"]  # the split is made again before each run
    results = json.loads(out.read_text())
    assert results["protocols"]["S"]["simplecnn_distilled_144px_80ep"] == recorded  # the recorded run is kept
    reruns = results["reruns"]["S/simplecnn_distilled_144px_80ep"]
    assert len(reruns) == 2 and set(reruns[0]) == {"date", "machine", "best_val_mae", "best_epoch", "test_mae",
                                                   "test_cs5", "teacher_val_mae", "command"}
    (line,) = benchmark.rerun_lines(results)[:1]
    assert "teachers' validation 4.118 → 4.112, validation 3.975 → 4.009 (best epoch 69 → 53), test 3.95 → **4.02**" \
        in line
    with pytest.raises(DataError, match="no recorded result.*--models simplecnn_tuned"):
        benchmark.run_rerun(args, ["S"], ["simplecnn_tuned"])
    # the README's headline figure for Protocol S says how it came out when trained again
    recorded.update({"test_cs5": 0.7, "train_minutes": 27.0, "latency_b1_ms": 0.65, "params": 763071,
                     "command": "python train.py --splits s --out-dir o"})
    block = benchmark.headline_block({"results": {**results, "protocols": {"S": {
        "simplecnn_distilled_144px_80ep": recorded}}}, "detection": None, "shipped": None})
    assert "test MAE 3.95 (4.02, 4.02 when trained again)" in block


def test_the_target_counts_only_finals_trained_within_the_hour_and_names_a_better_slower_one():
    def entry(val, test, minutes, params=700_000):
        return {"best_val_mae": val, "test_mae": test, "train_minutes": minutes - 5,
                "wall_minutes_incl_eval_export": minutes, "params": params}
    models = {"slow": entry(4.80, 4.55, 85.2), "within": entry(4.85, 4.66, 41.8), "worse": entry(4.90, 4.50, 30.0),
              "big": entry(4.70, 4.40, 20.0, params=2_000_000)}
    [line] = benchmark.target_line("F", models)
    assert "`within` (41.8 min), has test 4.660 — not reached" in line
    assert "`slow` has a lower validation MAE (4.800, test 4.550) but took 85.2 min, so it does not count" in line
    assert "big" not in line and "`worse`" not in line
    models["within"]["wall_minutes_incl_eval_export"] = 62  # its whole run is over the hour, its epochs are not
    assert "`worse` (30.0 min), has test 4.500 — reached" in benchmark.target_line("F", models)[0]
    assert benchmark.target_line("F", {"big": models["big"]}) == []
    # the verdict and the figure it prints agree to the digit
    assert "has test 4.600 — reached" in benchmark.target_line("F", {"m": entry(4.0, 4.6004, 30.0)})[0]
    assert "has test 4.601 — not reached" in benchmark.target_line("F", {"m": entry(4.0, 4.6006, 30.0)})[0]
    # a kept age map: the export's (cross-fitted) validation figure chooses, not the network's
    models = {"mapped": {**entry(4.80, 4.50, 30.0), "age_map": {"keep": True, "val_mae_after": 4.95}},
              "plain": entry(4.90, 4.70, 30.0)}
    assert "`plain`" in benchmark.target_line("F", models)[0]


@pytest.mark.slow
def test_a_benchmark_run_killed_before_its_end_goes_on_and_any_other_is_trained_again(splits, tmp_path, monkeypatch):
    run = tmp_path / "run"
    argv = ["--splits", str(splits), "--out-dir", str(run), "--epochs", "1", "--image-size", "32", "--batch-size",
            "32", "--threads", "1", "--no-tensorboard", "--no-progress", "--no-export"]
    train.main(train.get_args_parser().parse_args(argv))
    same = train.get_args_parser().parse_args(argv)
    assert not benchmark.goes_on(run, same)  # finished: metrics.json is there
    (run / "metrics.json").unlink()  # killed after its last epoch's last.pt
    assert benchmark.goes_on(run, same)
    assert not benchmark.goes_on(run, train.get_args_parser().parse_args(argv[:5] + ["2"] + argv[6:]))  # --epochs 2
    seen = []
    monkeypatch.setattr(benchmark.train, "main", lambda args: seen.append(args.resume) or sys.exit(0))
    with pytest.raises(SystemExit):
        benchmark.run_model("S", "m", argv[4:], splits, tmp_path, run_dir=run)
    assert seen == [True]
    (run / "last.pt").write_bytes(b"cut short")  # an unreadable last.pt: trained over
    assert not benchmark.goes_on(run, same)


@pytest.mark.slow
def test_the_data_check_sets_todays_split_beside_the_one_the_runs_used(tmp_path, monkeypatch):
    import shutil
    from conftest import eda_main
    import demo_data
    data = tmp_path / "data"
    demo_data.generate_dataset(data, min_age=18, max_age=25, per_age=3, size=32, seed=3)
    monkeypatch.setitem(benchmark.PROTOCOLS, "S", ["--min-age", "20", "--max-age", "25"])
    work, out = tmp_path / "work", tmp_path / "results.json"
    eda_main(data, work / "S", "--seed", "42", "--min-age", "20", "--max-age", "25")
    out.write_text(json.dumps({"data": {"S": {"duplicates": {"conflict_groups_dropped": 0}}}}))
    argv = ["--data-check", "--protocols", "S", "--data-dir", str(data), "--work-dir", str(work), "--out", str(out)]
    benchmark.main(benchmark.get_args_parser().parse_args(argv))
    check = json.loads(out.read_text())["data_check"]["S"]
    assert check["same_split"] and check["used"] == check["used_before"]
    assert "makes the very split its runs used" in benchmark.data_check_lines(json.loads(out.read_text()))[0]
    # a copy of a kept face labelled 18 (outside 20-30): today's eda.py drops the pair, the runs' split had it
    kept = next((data / "20").iterdir())
    shutil.copyfile(kept, data / "18" / "twin.jpg")
    benchmark.main(benchmark.get_args_parser().parse_args(argv))
    results = json.loads(out.read_text())
    check = results["data_check"]["S"]
    assert not check["same_split"] and check["used_before"] - check["used"] == 1 == check["faces_only_before"]
    (line,) = benchmark.data_check_lines(results)
    assert "the conflicting-duplicates rule" in line and "(0 → 1 groups)" in line
    assert not list(work.glob(".data_check_*"))  # the temporary split is gone; the runs' split is as it was
    # the runs' split kept no digest and today's differs: a later eda.py run (--rerun) may have rewritten WORK/S
    with pytest.raises(DataError, match="not known to be the split the recorded Protocol S runs used"):
        benchmark.main(benchmark.get_args_parser().parse_args(argv))


def test_the_readings_say_only_what_the_records_show():
    # tuned_light: "confirmed" only where it lost beyond the noise
    def light(val_mae):
        return benchmark.light_check({"protocols": {"S": {"simplecnn_tuned": {"best_val_mae": 4.205}}},
                                      "long_ablations": {"tuned_light": {"val_mae": val_mae}}})
    assert "confirmed it" in light(4.434)
    assert "within the noise" in light(4.23)
    assert "did not confirm" in light(4.10)
    # the validation figure of the export: a kept map's cross-fitted one, else the kept zooms', else the epoch's
    entry = {"best_val_mae": 4.834}
    assert benchmark.exported_val_mae(entry) == 4.834
    entry["zoom_choice"] = {"chosen": "0.95", "val_mae": {"none": 4.834, "0.95": 4.80}}
    assert benchmark.exported_val_mae(entry) == 4.80
    entry["age_map"] = {"keep": True, "val_mae_after": 4.877}
    assert benchmark.exported_val_mae(entry) == 4.877
    # a re-run on a split another eda.py made is not set beside the recorded test figure as "the same"
    recorded = {"best_val_mae": 3.975, "best_epoch": 69, "test_mae": 3.951, "split_faces_digest": "a"}
    results = {"protocols": {"S": {"m": recorded}}, "reruns": {"S/m": [
        {"date": "d", "best_val_mae": 4.0, "best_epoch": 50, "test_mae": 4.1, "split_faces_digest": "b"}]}}
    (line,) = benchmark.rerun_lines(results)
    assert "another split" in line and "not comparable" in line and "the same split" not in line
    results["reruns"]["S/m"][0]["split_faces_digest"] = "a"
    assert "the same split" in benchmark.rerun_lines(results)[0]


def test_a_resumed_final_counts_all_its_epochs_and_old_checks_and_unknown_splits_are_said_so():
    resumed = {"best_val_mae": 4.8, "test_mae": 4.5, "train_minutes": 95.0, "wall_minutes_incl_eval_export": 12.0,
               "params": 700_000}
    assert benchmark.target_line("F", {"resumed": resumed}) == []  # 95 min of epochs: over the hour
    recorded = {"best_val_mae": 3.975, "best_epoch": 69, "test_mae": 3.951}  # recorded before digests existed
    results = {"protocols": {"S": {"m": recorded}}, "reruns": {"S/m": [
        {"date": "d", "best_val_mae": 4.0, "best_epoch": 50, "test_mae": 4.1, "split_faces_digest": "b"}]}}
    (line,) = benchmark.rerun_lines(results)
    assert "not known to be the recorded split" in line and "the same split" not in line
    # ... unless --data-check recorded the split those runs used (their protocol's record keeps no digest)
    results["data_check"] = {"S": {"split_faces_digest": "a"}}
    (line,) = benchmark.rerun_lines(results)
    assert "another split" in line and "not comparable" in line
    results["data"] = {"S": {"split_faces_digest": "c"}}  # a later record: it says nothing of the older runs
    assert "not known to be the recorded split" in benchmark.rerun_lines(results)[0]
    check = {"same_split": True, "date": "d", "command": "c", "split_faces_digest": "old"}
    assert benchmark.data_check_lines({"data": {"S": {"split_faces_digest": "old"}}, "data_check": {"S": check}})
    assert benchmark.data_check_lines({"data": {"S": {"split_faces_digest": "new"}}, "data_check": {"S": check}}) == []


def test_the_mmod_limit_matters_only_where_mmod_runs():
    import bench_detection
    parse = lambda *a: bench_detection.get_args_parser().parse_args(list(a))
    assert bench_detection.checked_detectors(parse("--detectors", "hog,haar", "--mmod-limit", "0")) == ["hog", "haar"]
    with pytest.raises(DataError, match="--mmod-limit must be at least 1"):
        bench_detection.checked_detectors(parse("--detectors", "hog,mmod", "--mmod-limit", "0"))


def test_the_detection_command_gives_the_limit_the_run_was_given():
    import bench_detection
    result = {"scenes": {"seed": 0, "limit": 500}, "detectors": {"auto": {"scenes": {"n": 230}}}}  # 230 UTKFace files
    assert "--limit 500" in bench_detection.command(result)
    del result["scenes"]["limit"]  # a detection.json written before the limit was kept
    assert "--limit 230" in bench_detection.command(result)


def test_sideways_scenes_carry_their_faces_centres_with_them():
    """bench_detection's sideways scenes: each turned a quarter (the two ways in turn), its face's centre where the
    turned pixels put it (a bright dot marks it here), its side unchanged."""
    import bench_detection
    scenes = []
    for cx, cy in ((30, 10), (5, 40)):
        scene = np.zeros((48, 64, 3), np.uint8)
        scene[cy, cx] = 255
        scenes.append((scene, (cx, cy, 20)))
    turned = bench_detection.sideways(scenes)
    assert [t[0].shape for t in turned] == [(64, 48, 3)] * 2
    assert not np.array_equal(turned[0][0], np.rot90(scenes[0][0], 3))  # the first turned one way, the second the other
    for image, (x, y, side) in turned:
        assert side == 20 and image[int(y), int(x)].tolist() == [255, 255, 255]


def test_end_to_end_times_the_detector_inference_chooses_for_the_model(tmp_path):
    import bench_detection
    import faces as face_pipeline
    model = constant_model(tmp_path / "m.onnx", crop={**face_pipeline.UTKFACE_CROP, "detector": "haar"})  # --align --detector haar
    scenes = [(np.full((120, 160, 3), 90, np.uint8), [])] * 2
    assert bench_detection.end_to_end_ms(model, scenes, threads=1)["detector"] == "haar"


def test_a_resumed_final_counts_the_clock_of_its_earlier_sessions():
    history = [{"epoch_seconds": 50, "wall_seconds": 60, "session": 1, "setup_seconds": 30},
               {"epoch_seconds": 50, "wall_seconds": 61, "session": 1},
               {"epoch_seconds": 52, "wall_seconds": 62, "session": 2, "setup_seconds": 20}]
    assert benchmark.earlier_sessions_seconds(history) == 60 + 30 + 61  # the last session is benchmark's own clock
    assert benchmark.earlier_sessions_seconds(history[:2]) == 0  # one session
    # epochs recorded before the clock was kept count their training pass
    assert benchmark.earlier_sessions_seconds([{"epoch_seconds": 40}, {"epoch_seconds": 41, "wall_seconds": 50,
                                                                        "session": 5}]) == 40
    entry = {"wall_minutes_incl_eval_export": 10.0, "earlier_sessions_minutes": 2.5, "train_minutes": 11.0}
    assert benchmark.run_minutes(entry) == 12.5
    assert benchmark.run_minutes({k: v for k, v in entry.items() if k != "earlier_sessions_minutes"}) == 11.0


def test_the_crop_cost_sentence_names_the_larger_cost_from_its_figures():
    def sentence(gap_same_light, gap):
        results = {"crop_consistency": [{"model": "F/m", "gap_same_light": gap_same_light, "gap": gap}]}
        return [line for line in benchmark.cross_reading(results, None) if "crop costs" in line][0]
    assert sentence(0.72, 1.08).endswith("(light adds +0.36); detection and alignment costs more.")
    assert sentence(0.10, 0.90).endswith("(light adds +0.80); light costs more.")


def test_batch_64_throughput_is_judged_on_every_run_of_the_chosen_architecture():
    def model(val, b64):
        return {"best_val_mae": val, "train_images_per_s": 400.0, "latency_b1_ms": 0.5, "images_per_s_b64": b64,
                "params": 700_000, "command": "python train.py --splits s --out-dir o --image-size 144"}

    def row(runs):
        return [line for line in benchmark.speed_table({"protocols": {"S": runs}}) if "batch-64" in line][0]
    runs = {"chosen": model(3.9, 1465.0), "twin": model(4.0, 850.0)}
    assert row(runs).endswith("— not settled: 1 of 2 measurements of this architecture inside it "
                              "(850–1,465 images/s) |")
    runs["twin"]["images_per_s_b64"] = 1200.0
    assert row(runs).endswith("— reached |")


def test_a_new_split_moves_the_recorded_runs_aside_and_the_protocol_starts_afresh(tmp_path, monkeypatch):
    import datetime
    report = {"used": 10, "splits": {"train": 8, "val": 1, "test": 1}, "duplicates": {}, "age": {"min": 20, "max": 50}}
    digest = {"now": "new"}
    monkeypatch.setattr(benchmark.eda, "main", lambda eda_args: report)
    monkeypatch.setattr(benchmark, "median_baseline", lambda splits: 6.0)
    monkeypatch.setattr(benchmark.train, "split_faces_digest", lambda splits: digest["now"])
    monkeypatch.setattr(benchmark, "run_model", lambda protocol, name, *a, **k: {"test_mae": 4.0, "trained": name})
    monkeypatch.setattr(benchmark, "model_args", lambda name: [])
    args = benchmark.get_args_parser().parse_args(["--out", str(tmp_path / "r.json"), "--work-dir", str(tmp_path),
                                                   "--no-speed"])
    old = {"test_mae": 3.95}
    results = {"protocols": {"S": {"a": old}, "F": {"f": {"test_mae": 4.7}}},
               "data": {"S": {"used": 12}, "F": {"used": 20}},  # recorded before splits had digests
               "data_check": {"S": {"same_split": False, "date": "d"}, "F": {"same_split": True, "date": "d"}},
               "reruns": {"S/a": [{"test_mae": 4.0}], "F/f": [{"test_mae": 4.8}]},
               "zoom_probe": {"S:bench/work/S/a/model.onnx": {}},
               "cross": {"FGNET": {"S/a": {"mae": 6.1}, "S/a (Haar box crop)": {"mae": 7.0}, "F/f": {"mae": 6.4}}},
               "cross_filters": {"FGNET": {"S/a": {}}}, "crop_consistency": [{"model": "S/a", "images": 3}],
               "shipped_zooms": {"run": "S/a", "zooms": "0.95", "val_mae": {"0.95": 4.0, "none": 4.1},
                                 "command": "c", "test": {"mae": 4.0}, "fgnet": {"mae": 6.0},
                                 "interval": {"coverage": 0.9, "level": 0.9, "mean_width": 9.0}}}
    benchmark.run_protocol(args, "S", ["b"], results, tmp_path / "r.json")
    label = f"S (earlier split, to {datetime.date.today().isoformat()})"
    assert list(results["protocols"]) == ["S", label, "F"]  # the earlier rows stay where they were
    assert results["protocols"]["S"] == {"b": {"test_mae": 4.0, "trained": "b"}}
    assert results["protocols"][label] == {"a": old}
    assert results["data"][label] == {"used": 12} and results["data"]["S"]["split_faces_digest"] == "new"
    assert set(results["data_check"]) == {label, "F"} and set(results["reruns"]) == {f"{label}/a", "F/f"}
    assert set(results["zoom_probe"]) == {f"{label}:bench/work/S/a/model.onnx"}
    assert set(results["cross"]["FGNET"]) == {f"{label}/a", f"{label}/a (Haar box crop)", "F/f"}
    assert set(results["cross_filters"]["FGNET"]) == {f"{label}/a"}
    assert results["crop_consistency"][0]["model"] == results["shipped_zooms"]["run"] == f"{label}/a"
    assert list(results["data"]) == ["S", label, "F"]
    # the tables read the moved records (they raised KeyError and IndexError on the labels)
    assert "the face alone: 3.95), FG-NET MAE 6.00 (6.10)" in "".join(benchmark.shipped_zooms_lines(results))
    assert benchmark.cross_commands(results) == [f"python benchmark.py --cross {benchmark.CROSS_DIR} --protocols F --models f"]
    benchmark.run_protocol(args, "S", ["c"], results, tmp_path / "r.json")  # the same split again: nothing moves
    assert list(results["protocols"]) == ["S", label, "F"] and set(results["protocols"]["S"]) == {"b", "c"}
    digest["now"] = "newer"  # another change of the split the same day: a label of its own
    benchmark.run_protocol(args, "S", ["d"], results, tmp_path / "r.json")
    second = f"S (earlier split, to {datetime.date.today().isoformat()}, #2)"
    assert list(results["protocols"]) == ["S", second, label, "F"] and set(results["protocols"][second]) == {"b", "c"}
    assert results["data"][second]["split_faces_digest"] == "new"
    # the ablations record no split: they were trained beside the first split's finals
    protocols = {"S": {"simplecnn_tuned": {"v": 3}}, second: {"simplecnn_tuned": {"v": 2}},
                 label: {"simplecnn_tuned": {"v": 1}}}
    assert benchmark.first_split(protocols, "S", "simplecnn_tuned") == label
    assert benchmark.earlier_splits({**protocols, label.replace(")", ", #3)"): {}}, "S") == \
        [label, second, label.replace(")", ", #3)")]
    assert benchmark.protocol_of(second) == "S" and benchmark.protocol_of("F") == "F"
    assert benchmark.latest_runs({"S": {}, second: {"x": 1}, label: {"y": 1}}, "S") == {"x": 1}
    assert benchmark.latest_runs({"S": {"z": 1}, label: {"y": 1}}, "S") == {"z": 1}


def test_runs_whose_split_is_not_known_stay_where_they_are():
    results = {"protocols": {"S": {"a": {}}}, "data": {"S": {"used": 12}}}
    assert benchmark.retire_earlier_split(results, "S", "new", "2026-12-03") is None  # no digest, no check
    results["data_check"] = {"S": {"same_split": True}}
    assert benchmark.retire_earlier_split(results, "S", "new", "2026-12-03") is None
    assert list(results["protocols"]) == ["S"]


def test_a_rerun_on_the_split_a_failed_check_made_is_called_another_split():
    recorded = {"best_val_mae": 4.1, "best_epoch": 50, "test_mae": 4.0}
    rerun = {"date": "2026-12-04", "best_val_mae": 4.2, "best_epoch": 40, "test_mae": 4.1, "split_faces_digest": "b"}
    check = {"same_split": False, "date": "2026-12-03"}  # a check from before checks named their split
    results = {"protocols": {"S": {"m": recorded}}, "data": {"S": {}}, "data_check": {"S": check},
               "reruns": {"S/m": [rerun]}}
    assert "another split" in benchmark.rerun_lines(results)[0]  # made after the check: the dates decide
    rerun["date"] = "2026-12-02"  # made before the check
    assert "not known to be the recorded split" in benchmark.rerun_lines(results)[0]
    rerun["date"] = "2026-12-04"
    del rerun["split_faces_digest"]  # a re-run that kept no digest is not known to be any split
    assert "not known to be the recorded split" in benchmark.rerun_lines(results)[0]
    check["split_faces_digest"] = rerun["split_faces_digest"] = "a"  # a check that names the recorded split
    assert "the same split" in benchmark.rerun_lines(results)[0]
    rerun["split_faces_digest"] = "b"
    assert "another split" in benchmark.rerun_lines(results)[0]


def test_results_md_keeps_an_earlier_splits_runs_apart_from_todays():
    def run(test_mae, val_mae):
        return {"test_mae": test_mae, "best_val_mae": val_mae, "best_epoch": 9, "test_cs5": 0.6, "params": 629_332,
                "train_minutes": 30.0, "epochs": 10, "train_images_per_s": 200.0, "latency_b1_ms": 1.5,
                "images_per_s_b64": 900.0, "test_mae_per_decade": {"20-29": 3.0},
                "command": "python train.py --splits s --out-dir o --epochs 10"}
    label = "S (earlier split, to 2026-12-03)"
    protocols = {"S": {"simplecnn_today": run(4.1, 4.2)},
                 label: {"simplecnn_tuned": run(4.0, 4.1), "simplecnn_old": run(4.3, 4.4)}}
    sources = {"results": {"protocols": protocols}, "detection": None, "mobile": None, "eda_report": None,
               "search": {"lr_sweep": None, "grid": None, "best": None}, "shipped": None}
    text = benchmark.results_markdown(sources)
    assert f"| {label} | simplecnn_old |" in text and f"Rows of **{label}**" in text
    assert "| S | simplecnn_today |" in text
    assert "Protocol S, chosen on validation: `simplecnn_today`" in text  # the earlier split's better run is not
    assert f"Target for Protocol {label}" not in text  # targets are judged on today's split only
    # the ablations record no split: their finals are read from the first split that holds simplecnn_tuned
    assert "- **Final** `simplecnn_tuned`" in "\n".join(benchmark.finals_lines(protocols))


def test_the_speed_table_lists_other_runs_only_where_there_are_others():
    recorded = json.loads((REPO / "bench" / "results.json").read_text())["protocols"]["F"]
    first, second = list(recorded.items())[:2]
    alone = "\n".join(benchmark.speed_table({"protocols": {"S": dict([first])}}))
    assert f"(`{first[0]}`) |" in alone and ";  |" not in alone
    runs = dict([first, second])
    both = "\n".join(benchmark.speed_table({"protocols": {"S": runs}}))
    chosen = benchmark.chosen_on_validation(runs)
    other = next(n for n in runs if n != chosen)
    assert f"(`{chosen}`); {other} " in both


def test_ablations_are_judged_only_against_a_reference_on_their_own_split():
    label = "S (earlier split, to 2026-12-03)"
    first = {"best_val_mae": 4.2}  # before digests: Protocol S's first split
    protocols = {"S": {"simplecnn_tuned": {"best_val_mae": 4.0, "split_faces_digest": "new"}},
                 label: {"simplecnn_tuned": first}}
    split = {"protocols": protocols}
    assert benchmark.tuned_on_split(split, None) is first
    assert benchmark.tuned_on_split(split, "new")["best_val_mae"] == 4.0
    assert benchmark.tuned_on_split(split, "other") == {}

    def lever(val_mae, digest=None):
        return {"change": "one change", "val_mae": val_mae, "val_mae_no_tta": val_mae, "best_epoch": 9,
                "epochs": 40, "train_minutes": 20.0,
                "command": "python train.py --splits s --out-dir o", **({"split_faces_digest": digest} if digest else {})}
    results = {"protocols": protocols, "long_ablations": {"old_lever": lever(4.1), "new_lever": lever(3.9, "new"),
                                                          "stray": lever(3.0, "other")}}
    text = "\n".join(benchmark.long_ablation_lines(results))
    assert "| old_lever: one change | simplecnn_tuned | 4.100 | -0.100 |" in text  # against 4.2, its split's
    assert "| new_lever: one change | simplecnn_tuned | 3.900 | -0.100 |" in text  # against 4.0
    assert "| stray:" not in text and "no record on their split: `stray`" in text
    # the 10-epoch table: a lever trained on another split than its base is named, not compared
    ablations = {"base": lever(4.5), "batch_32": lever(4.4), "moved": lever(1.0, "new")}
    assert set(benchmark.on_the_base_split({"protocols": protocols, "ablations": ablations})) == {"base", "batch_32"}
    # at run time: a reference on an earlier split is refused with the command that trains it again
    results = {"protocols": protocols, "ablations": {"base": lever(4.5)}, "long_ablations": {}}
    assert "python benchmark.py --ablations base" in benchmark.missing_reference(results, "batch_32", ["batch_32"],
                                                                                 "new")
    assert benchmark.missing_reference(results, "batch_32", ["base", "batch_32"], "new") is None
    assert benchmark.missing_reference(results, "tuned_light", ["tuned_light"], "new") is None
    assert "--models simplecnn_tuned" in benchmark.missing_reference(results, "tuned_light", ["tuned_light"], "x")
    del protocols[label]  # no split retired yet: records without a digest are of today's split
    assert benchmark.missing_reference(results, "batch_32", ["batch_32"], "new") is None
    assert set(benchmark.on_the_base_split({"protocols": protocols, "ablations": ablations})) == set(ablations)
    # where the first split's digest is recorded, a record without one is of that split, retired or not
    results["data"] = {"S": {"split_faces_digest": "first"}}
    assert benchmark.missing_reference(results, "batch_32", ["batch_32"], "new") is not None
    assert benchmark.missing_reference(results, "batch_32", ["batch_32"], "first") is None


def test_altered_figures_of_a_chosen_zoom_run_are_measured_as_it_trained():
    chosen = {"config": {"tta_flip": True, "tta_zoom": "0.95,0.9"}, "zoom_choice": {"chosen": "0.95,0.9"}}
    assert benchmark.trained_views(chosen) == {"tta_flip": True, "tta_zoom": ()}  # as its best_val_mae
    trained_with = {"config": {"tta_flip": True, "tta_zoom": "0.95"}}  # zooms given to train.py: its own views
    assert benchmark.trained_views(trained_with) == {"tta_flip": True, "tta_zoom": (0.95,)}


def test_the_int8_write_up_says_what_its_record_cannot_tell():
    record = {"checkpoint": "bench/work/S/x/best.pt"}
    assert "keeps no weights digest" in benchmark.mobile_provenance(record)
    assert benchmark.mobile_provenance({**record, "weights": "0123456789abcdef"}) == (
        " Weights `0123456789ab` (the digest in each export's metadata).")


def test_fgnet_decades_keep_their_columns_where_a_row_lacks_one():
    row = {"crop": {"kind": "box", "margin": 0.0}, "detector": "haar", "mae": 6.0, "cs5": 0.5, "faces_found": 0.9,
           "photos": 10}
    results = {"cross": {"FGNET": {
        "a": {**row, "mae_per_decade": {"0-9": 1.0, "10-19": 2.0, "20-29": 3.0}},
        "b": {**row, "mae_per_decade": {"0-9": 4.0, "20-29": 6.0}, "mean_error_per_decade": {"20-29": -1.0}}}}}
    text = benchmark.cross_table(results)
    assert "MAE per decade (0-9, 10-19, 20-29)" in text
    assert "| 4.0, -, 6.0 | -, -, -1.0 |" in text and "| 1.0, 2.0, 3.0 | not measured |" in text


def test_merged_changes_applies_only_this_process_changes():
    base = {"protocols": {"F": {"a": {"mae": 5}}}, "date": "d1"}
    mine = {"protocols": {"F": {"a": {"mae": 4}}}, "date": "d2"}  # retrained a, new date
    theirs = {"protocols": {"F": {"a": {"mae": 5}, "b": {"mae": 6}}, "S": {}}, "date": "d1", "cross": {"x": 1}}
    assert benchmark.merged_changes(base, mine, theirs) == {
        "protocols": {"F": {"a": {"mae": 4}, "b": {"mae": 6}}, "S": {}}, "date": "d2", "cross": {"x": 1}}
    # a key this process deleted goes; one it never touched stays as the file has it now
    assert benchmark.merged_changes({"k": 1, "j": 2}, {"j": 2}, {"k": 1, "j": 3}) == {"j": 3}
    # a retrained run's record is written whole: no key of the record it replaced survives from the file
    base = {"protocols": {"F": {"a": {"test_mae": 5, "minutes": 1}}}}
    theirs = {"protocols": {"F": {"a": {"test_mae": 5, "minutes": 1, "teachers_minutes": 110}}}}
    mine = {"protocols": {"F": {"a": {"test_mae": 4}}}}
    assert benchmark.merged_changes(base, mine, theirs) == mine
    # a record changed here and there: a retraining wins, figures of an unchanged run join the file's record
    old = {"test_mae": 5, "command": "c1"}
    retrained = {"test_mae": 4, "command": "c1"}
    calibrated = {"test_mae": 5, "command": "c1", "interval": 1}
    wrap = lambda record: {"protocols": {"F": {"a": record}}}
    assert benchmark.merged_changes(wrap(old), wrap(calibrated), wrap(retrained)) == wrap(retrained)
    assert benchmark.merged_changes(wrap(old), wrap(retrained), wrap(calibrated)) == wrap(retrained)
    latency = {"test_mae": 5, "command": "c1", "latency": 2}
    assert benchmark.merged_changes(wrap(old), wrap(latency), wrap(calibrated)) == wrap(
        {"test_mae": 5, "command": "c1", "interval": 1, "latency": 2})
    # order: this process's (a retired split's label before F), then keys only the file has
    mine = {"protocols": {"S": {}, "S (earlier split, to d)": {"a": {}}, "F": {"f": {}}}}
    theirs = {"protocols": {"S": {"a": {}}, "F": {"f": {}}, "X": {}}}
    merged = benchmark.merged_changes({"protocols": {"S": {"a": {}}, "F": {"f": {}}}}, mine, theirs)
    assert list(merged["protocols"]) == ["S", "S (earlier split, to d)", "F", "X"]
    # crop checks merge by (model, images): one process drops a retrained run's, another adds its own meanwhile
    base = {"crop_consistency": [{"model": "F/x", "images": 300}]}
    theirs = {"crop_consistency": [{"model": "F/x", "images": 300}, {"model": "F/y", "images": 300}]}
    assert benchmark.merged_changes(base, {"crop_consistency": []}, theirs) == {
        "crop_consistency": [{"model": "F/y", "images": 300}]}


def test_two_benchmark_processes_keep_each_others_records(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"protocols": {"F": {}}}))
    first = benchmark.load_results(path)  # a chain that loaded hours ago ...
    second = json.loads(path.read_text())
    second["cross"] = {"FGNET": {"F/a": {"mae": 6.0}}}
    path.write_text(json.dumps(second))  # ... while another process recorded an FG-NET figure
    first["protocols"]["F"]["b"] = {"test_mae": 4.5}
    benchmark.save_results(path, first)
    saved = json.loads(path.read_text())
    assert saved["cross"] == {"FGNET": {"F/a": {"mae": 6.0}}} and saved["protocols"]["F"] == {"b": {"test_mae": 4.5}}
    first["protocols"]["F"]["c"] = {"test_mae": 4.4}  # a later save of the same process writes its new change only
    benchmark.save_results(path, first)
    assert set(json.loads(path.read_text())["protocols"]["F"]) == {"b", "c"}


def test_a_retrained_run_forgets_its_earlier_weights_figures():
    results = {"cross": {"FGNET": {"F/a": {}, "F/a (Haar box crop)": {}, "F/a_60ep": {}}},
               "cross_filters": {"FGNET": {"F/a": {}}},
               "crop_consistency": [{"model": "F/a"}, {"model": "F/b"}]}
    benchmark.forget_figures_of(results, "F/a")
    assert results == {"cross": {"FGNET": {"F/a_60ep": {}}}, "cross_filters": {"FGNET": {}},
                       "crop_consistency": [{"model": "F/b"}]}


def test_a_run_that_ignored_amp_is_said_to_have_run_in_float32():
    def run(**extra):
        return {"test_mae": 4.8, "best_val_mae": 4.9, "best_epoch": 99, "test_cs5": 0.6, "params": 629_332,
                "train_minutes": 200.0, "epochs": 100, "train_images_per_s": 170.0, "latency_b1_ms": 1.5,
                "images_per_s_b64": 900.0, "test_mae_per_decade": {"20-29": 3.0},
                "command": "python train.py --splits s --out-dir o --epochs 100 --amp", **extra}
    sources = {"results": {"protocols": {"F": {"simplecnn_photo_scan_100ep": run(bf16=False),
                                               "simplecnn_photo_scan_60ep": run()}}},
               "detection": None, "mobile": None, "eda_report": None,
               "search": {"lr_sweep": None, "grid": None, "best": None}, "shipped": None}
    lines = {line.split(":")[0]: line for line in benchmark.models_section(sources) if line.startswith("- `")}
    assert "ran in float32" in lines["- `simplecnn_photo_scan_100ep`"]
    assert "ran in float32" not in lines["- `simplecnn_photo_scan_60ep`"]  # no --amp in its recipe, no record
    sources["results"]["protocols"]["F"]["simplecnn_photo_scan_100ep"]["bf16"] = True
    assert "ran in float32" not in "\n".join(benchmark.models_section(sources))


def test_a_run_still_training_is_not_measured_into_the_finished_runs_record(tmp_path, capsys, monkeypatch):
    import argparse
    run = tmp_path / "F" / "m"
    run.mkdir(parents=True)
    (run / "best.pt").write_bytes(b"epoch 3 of a run still training")
    monkeypatch.setattr(benchmark, "cross_dataset", lambda *a, **k: pytest.fail("measured an unfinished run"))
    args = argparse.Namespace(protocols="F", models="m", cross="fgnet", cross_compare=False, cross_filters=False)
    results = {"protocols": {"F": {"m": {"test_mae": 4.7}}}}
    benchmark.check_cross(args, tmp_path, results, tmp_path / "results.json")
    assert "skipped F/m" in capsys.readouterr().out and "cross" not in results
    assert "no finished run" in benchmark.why_not_here(results, tmp_path, "F", "m", None)
    (run / "metrics.json").write_text("{}")
    assert benchmark.unfinished(run) is None and benchmark.why_not_here(results, tmp_path, "F", "m", None) is None


def test_a_quick_benchmark_trains_in_its_own_work_folder(tmp_path, monkeypatch):
    seen = []

    def stop_at_selection(args):  # main's first step after choosing the folders
        seen.append(args.work_dir)
        raise SystemExit(0)
    monkeypatch.setattr(benchmark, "selection", stop_at_selection)
    with pytest.raises(SystemExit):
        benchmark.main(benchmark.get_args_parser().parse_args(["--quick", "--work-dir", str(tmp_path)]))
    assert seen == [str(tmp_path / "quick")]  # never WORK/S/NAME, where students and --cross take their runs


def test_a_students_teacher_minutes_are_those_recorded_with_it():
    teacher = {"train_minutes": 100.0, "command": "python train.py --splits w/F/splits --out-dir w/F/t"}
    student = {"train_minutes": 50.0,
               "command": "python train.py --splits w/F/splits --out-dir w/F/s --teacher w/F/t/best.pt"}
    models = {"t": teacher, "s": student}
    assert benchmark.teachers_minutes(models, student) == 100.0
    student["teachers_minutes"] = 80.0  # the teacher that taught it; t was retrained since (100 min)
    assert benchmark.teachers_minutes(models, student) == 80.0


def test_a_detection_run_keeps_the_earlier_figures_it_did_not_measure(tmp_path):
    import bench_detection
    scenes = {"canvas": [640, 480], "seed": 0, "limit": 300}
    out = tmp_path / "detection.json"
    out.write_text(json.dumps({"scenes": scenes, "detectors": {"auto": {"found": 0.99}, "hog": {"found": 0.9}},
                               "end_to_end": {"ms_per_photo_median": 21.0}, "chip_fidelity": {"n": 100}}))
    rerun = {"scenes": dict(scenes), "detectors": {"hog": {"found": 0.91}}}  # --detectors hog, no --model
    merged = bench_detection.with_earlier_figures(rerun, out)
    assert merged["detectors"] == {"hog": {"found": 0.91}, "auto": {"found": 0.99}}
    assert list(merged["detectors"]) == ["auto", "hog"]  # faces.DETECTORS' order: the table reads the same
    assert merged["end_to_end"] == {"ms_per_photo_median": 21.0} and merged["chip_fidelity"] == {"n": 100}
    other = {"scenes": {**scenes, "seed": 1}, "detectors": {"hog": {"found": 0.92}}}  # other scenes: not mixed
    merged = bench_detection.with_earlier_figures(other, out)
    assert merged["detectors"] == {"hog": {"found": 0.92}} and "end_to_end" not in merged
    assert merged["chip_fidelity"] == {"n": 100}  # measured on UTKFace files, not on the scenes
    elsewhere = {"scenes": {**scenes, "data_dir": "/other/UTKFace", "fgnet_limit": 1002}, "fgnet_dir": "/f",
                 "detectors": {"hog": {"found": 0.93}}}  # the file records no data folder: taken at its word
    assert "auto" in bench_detection.with_earlier_figures(elsewhere, out)["detectors"]
    out.write_text(json.dumps({"scenes": {**scenes, "data_dir": "/data/UTKFace", "fgnet_limit": 100},
                               "fgnet_dir": "/f", "detectors": {"auto": {"found": 0.99}}}))
    for changed in ({"data_dir": "/other/UTKFace"}, {"fgnet_limit": 1002}):
        rerun = {"scenes": {**scenes, "data_dir": "/data/UTKFace", "fgnet_limit": 100, **changed}, "fgnet_dir": "/f",
                 "detectors": {"hog": {"found": 0.93}}}
        assert "auto" not in bench_detection.with_earlier_figures(rerun, out)["detectors"]


def test_each_kept_detection_figure_depends_on_what_it_was_measured_on(tmp_path):
    """The end-to-end time needs the same scenes only; the chip check the same UTKFace folder only."""
    import bench_detection
    scenes = {"canvas": [640, 480], "seed": 0, "limit": 300, "data_dir": "/data/UTKFace", "fgnet_limit": 1002}
    out = tmp_path / "detection.json"
    out.write_text(json.dumps({"scenes": scenes, "fgnet_dir": "/f", "detectors": {"auto": {"found": 0.99}},
                               "end_to_end": {"ms_per_photo_median": 21.0}, "chip_fidelity": {"n": 100}}))
    fewer_photos = {"scenes": {**scenes, "fgnet_limit": 0}, "fgnet_dir": None, "detectors": {"hog": {}}}
    merged = bench_detection.with_earlier_figures(fewer_photos, out)
    assert "auto" not in merged["detectors"] and merged["end_to_end"] and merged["chip_fidelity"]
    other_folder = {"scenes": {**scenes, "data_dir": "/other"}, "fgnet_dir": "/f", "detectors": {"hog": {}}}
    merged = bench_detection.with_earlier_figures(other_folder, out)
    assert "end_to_end" not in merged and "chip_fidelity" not in merged
    # the size and light figures (their own pasted faces) need the same UTKFace folder only
    out.write_text(json.dumps({"scenes": scenes, "fgnet_dir": "/f", "detectors": {}, "size_light": {"n": 80}}))
    assert bench_detection.with_earlier_figures({**fewer_photos}, out)["size_light"] == {"n": 80}
    assert "size_light" not in bench_detection.with_earlier_figures(other_folder, out)


def test_mmod_and_a_limited_fgnet_are_measured_on_a_spread_of_the_photos_not_the_first_by_name():
    """UTKFace's first names are ages 10-19 and 100-116 (100_..., 10_...), FG-NET's first photos two people."""
    import bench_detection
    names = [f"{k:03d}A{a:02d}.JPG" for k in range(1, 83) for a in range(12)]
    picked = bench_detection.spread_subset(names, 20, seed=0)
    assert len(picked) == 20 and picked == sorted(picked) and len({p[:3] for p in picked}) > 10
    assert picked == bench_detection.spread_subset(names, 20, seed=0) != bench_detection.spread_subset(names, 20, 1)
    assert bench_detection.spread_subset(names[:5], 20, seed=0) == names[:5]


def test_zoom_cost_is_added_only_beside_the_same_models_time_on_the_same_scenes(tmp_path):
    import bench_detection
    out = tmp_path / "detection.json"
    parse = lambda *a: bench_detection.get_args_parser().parse_args(["--zoom-cost", "--out", str(out), *a])
    base = {"scenes": {"seed": 0, "limit": 300}, "detectors": {"auto": {}}}
    cases = [({**base}, (), "has none"),
             ({**base, "end_to_end": {"model": "a.onnx"}}, (), "not --model"),
             ({**base, "end_to_end": {"model": "m.onnx"}}, ("--limit", "30"), "pass the same")]
    for record, extra, words in cases:
        out.write_text(json.dumps(record))
        with pytest.raises(DataError, match=words):
            bench_detection.add_zoom_cost(parse("--model", "m.onnx", *extra), [], None, out)
    out.write_text(json.dumps({"end_to_end": {"model": "m.onnx"}}))  # not this script's result
    with pytest.raises(DataError, match="no bench_detection.py result"):
        bench_detection.main(bench_detection.get_args_parser().parse_args(["--table", "--out", str(out)]))


def test_size_light_pairs_each_pasted_face_with_its_own_age_and_keeps_the_small_faces(
        utkface_chips, tmp_path, monkeypatch):
    """--size-light: every condition sees the same faces; the MAE is of the faces found against their own ages,
    with no --min-face (a face under the default must still be judged, or the table could not show why the
    default is where it is)."""
    import bench_detection
    import faces
    import inference
    model = constant_model(tmp_path / "m.onnx", age=30.0, crop=dict(faces.UTKFACE_CROP))
    min_faces = []

    class Recording(inference.AgeEstimator):
        def __init__(self, *args, **kwargs):
            min_faces.append(kwargs.get("min_face", "the default"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(inference, "AgeEstimator", Recording)
    floors = []
    monkeypatch.setattr(inference, "lift_dark", lambda rgb, floor, lift=inference.lift_dark:
                        floors.append(floor) or lift(rgb, floor))
    monkeypatch.setattr(bench_detection, "SIZE_SIDES", (inference.DEFAULT_MIN_FACE - 6, 200))
    monkeypatch.setattr(bench_detection, "LIGHT_GAINS", (1.0,))
    monkeypatch.setattr(bench_detection, "random_canvas", lambda rng, width=640, height=480:
                        np.full((height, width, 3), 110, np.uint8))  # plain: nothing but the face to find
    chips = [(utkface_chips[2], 22), (utkface_chips[3], 61)]
    r = bench_detection.size_light_error(model, chips, np.random.default_rng(0), threads=1)
    assert r["n"] == 2 and r["mae_direct"] == pytest.approx((8 + 31) / 2)
    big = r["by_side"]["200"]
    assert big["found"] == 1.0 and big["mae"] == pytest.approx((8 + 31) / 2) and 150 < big["box_side_median"] < 230
    assert r["by_gain"]["1.0"]["found"] == 1.0
    assert set(r["by_side"]) == {str(inference.DEFAULT_MIN_FACE - 6), "200"} and min_faces == [0, 0]
    # the same faces without the dark floor (a constant model: the same ages), the floor recorded
    assert big["mae_without_dark_floor"] == big["mae"] and r["dark_floor"] == inference.DEFAULT_DARK_FLOOR
    assert set(floors) == {inference.DEFAULT_DARK_FLOOR, 0.0}  # each found face also without it
    # a model that sees light, in a dim scene: the column without the floor is the face as it came, darker
    monkeypatch.setattr(bench_detection, "SIZE_SIDES", ())
    monkeypatch.setattr(bench_detection, "LIGHT_GAINS", (0.25,))
    sees_light = constant_model(tmp_path / "light.onnx", age=0.0, slope=0.25, crop=dict(faces.UTKFACE_CROP))
    dim = bench_detection.size_light_error(sees_light, chips, np.random.default_rng(0), threads=1)["by_gain"]["0.25"]
    assert dim["found"] == 1.0 and dim["mae"] < dim["mae_without_dark_floor"] - 2  # brighter: older, nearer 22, 61


def test_an_older_fgnet_figure_names_the_rules_it_was_measured_under():
    """The card and RESULTS.md set the shipped model's FG-NET figures side by side; one measured before the minimum
    face size and the dark floor existed says so, rather than passing for the same pipeline."""
    today = {"mae": 6.07, "min_face": 32, "dark_floor": 63.0}
    assert benchmark.rules_note({"mae": 6.25}, today) == (
        ", measured under the rules inference.py had then: no minimum face size and no dark floor")
    assert benchmark.rules_note({"mae": 6.2, "min_face": 32, "dark_floor": 0.0}, today) == (
        ", measured under the rules inference.py had then: a minimum face of 32 px and no dark floor")
    assert benchmark.rules_note(dict(today, mae=6.3), today) == ""


def test_the_size_light_table_and_its_words_in_results_md():
    import bench_detection
    import inference
    figures = {"model": "models/m.onnx", "n": 80, "light_side": 240, "mae_direct": 3.861, "seed": 0,
               "by_side": {"20": {"found": 0.15, "mae": 7.214, "box_side_median": 19.0},
                           "16": {"found": 0.0, "mae": None, "box_side_median": None}},
               "by_gain": {"0.25": {"found": 1.0, "mae": 5.771, "box_side_median": 223.0}}}
    assert bench_detection.size_light_table({"size_light": figures}).splitlines() == [
        "| pasted face | box side (median, px) | found | MAE |", "|---|---|---|---|",
        "| the files themselves (no detection) | - | - | 3.86 |",
        "| 20 px | 19 | 15% | 7.21 |", "| 16 px | - | 0% | - |", "| 240 px, scene ×0.25 | 223 | 100% | 5.77 |"]
    assert bench_detection.size_light_table({}) == ""
    floored = {**figures, "dark_floor": 64.0, "luma_files": 2000, "luma_percentiles": {"1": 64.1, "5": 80.4},
               "by_gain": {"0.25": {"found": 1.0, "mae": 4.97, "mae_without_dark_floor": 5.771, "box_side_median": 223.0}}}
    table = bench_detection.size_light_table({"size_light": floored}).splitlines()
    assert table[0].endswith("| MAE | MAE with `--dark-floor 0` |") and table[1] == "|---|---|---|---|---|"
    assert table[-3:] == ["| 240 px, scene ×0.25 | 223 | 100% | 4.97 | 5.77 |", "",
                          "Exposure (`custom_dataset.exposure_luma`: the 95th percentile of luma, 0-255) of UTKFace's 2,000 files, "
                          "percentiles: 1%: 64, 5%: 80"]
    assert "| 16 px | - | 0% | - | - |" in table
    lines = benchmark.size_light_lines({"size_light": figures})
    assert "python bench_detection.py --size-light 80 --model models/m.onnx" in lines
    assert any(f"under {inference.DEFAULT_MIN_FACE} px by default" in line for line in lines)
    assert benchmark.size_light_lines({}) == []
    with pytest.raises(DataError, match="pass --model"):
        bench_detection.add_size_light(bench_detection.get_args_parser().parse_args(["--size-light", "5"]), [], None,
                                       None)


def test_a_table_teacher_is_found_under_the_protocols_folder_or_named(tmp_path):
    (tmp_path / "S" / "gpu_teachers").mkdir(parents=True)
    (tmp_path / "S" / "gpu_teachers" / "t.npz").write_bytes(b"x")
    argv = benchmark.with_teachers(["--teacher", "{tables:gpu_teachers/t.npz}"], tmp_path, "S")
    assert argv == ["--teacher", str(tmp_path / "S" / "gpu_teachers" / "t.npz")]
    with pytest.raises(DataError, match="teacher tables .*missing.npz"):
        benchmark.with_teachers(["--teacher", "{tables:gpu_teachers/t.npz,missing.npz}"], tmp_path, "S")


def test_a_student_of_tables_names_the_runs_behind_them_and_its_gpu_table(tmp_path):
    cpu = tmp_path / "S" / "student" / "teacher.npz"
    gpu = tmp_path / "S" / "gpu_teachers" / "S_ensemble.npz"
    for path, sources in ((cpu, [str(tmp_path / "S" / "teacher_run" / "best.pt")]), (gpu, ["/tmp/gpu_runs/S/r18/best.pt"])):
        path.parent.mkdir(parents=True)
        np.savez(path, sources=np.asarray(sources))
    command = f"python train.py --splits s --out-dir o --epochs 40 --teacher {gpu},{cpu}"
    student = {"test_mae": 4.0, "best_val_mae": 4.1, "epochs": 40, "train_minutes": 30.0, "command": command}
    assert benchmark.teacher_names(student) == ["r18", "teacher_run"]
    models = {"teacher_run": {"train_minutes": 74.0, "epochs": 60, "command": "python train.py --splits s --out-dir o"},
              "s_gpu": student}
    line = benchmark.distillation_lines({"S": models})[0]
    assert "and a GPU-trained table)" in line and "plus 74.0 min for the CPU runs" in line
    assert "bench/gpu_teachers.py" in line and "validation MAE" not in line  # a mean of tables has none


def test_the_model_card_is_what_its_generator_writes_from_the_records(tmp_path):
    """models/README.md is never typed by hand: --table writes it again from results.json and the shipped export's
    metadata, so a change of model_card's wording reaches it without measuring the model again."""
    (tmp_path / "models").mkdir()
    onnx = benchmark.SHIPPED.with_suffix(".onnx")
    (tmp_path / onnx).write_bytes((REPO / onnx).read_bytes())
    card = REPO / benchmark.SHIPPED.parent / "README.md"
    stale = card.read_text().replace("at least one face box in", "a face found in")
    (tmp_path / "models" / "README.md").write_text(stale)
    results = json.loads((REPO / "bench" / "results.json").read_text())
    benchmark.refresh_model_card(results, tmp_path)
    assert (tmp_path / "models" / "README.md").read_text() == card.read_text() != stale
    del results["cross"]["FGNET"][results["shipped_zooms"]["run"]]  # a record gone: the card is left alone
    (tmp_path / "models" / "README.md").write_text(stale)
    benchmark.refresh_model_card(results, tmp_path)
    assert (tmp_path / "models" / "README.md").read_text() == stale


def test_the_speed_table_counts_the_zooms_a_chosen_zoom_run_exports():
    """A --choose-zooms run's command names no zooms: the table said 2 forward passes per face for an export
    averaging 6 (the face, its 95 % and 90 % crops, each mirrored)."""
    recorded = json.loads((REPO / "bench" / "results.json").read_text())["protocols"]["F"]
    name, run = next(iter(recorded.items()))
    run = {**run, "command": run["command"].replace(" --tta-zoom", " --tta-zoom-was"),
           "zoom_choice": {"val_mae": {"none": 4.2, "0.95,0.9": 4.1}, "chosen": "0.95,0.9"}}
    assert benchmark.exported_views(run)["tta_zoom"] == (0.95, 0.9)
    assert benchmark.exported_views({**run, "zoom_choice": {"chosen": "none"}})["tta_zoom"] == ()
    text = "\n".join(benchmark.speed_table({"protocols": {"S": {name: run}}}))
    (line,) = [line for line in text.splitlines() if "forward passes per face" in line]
    assert line.endswith("| 6 | |"), line


def test_a_student_whose_teachers_were_trained_again_says_so():
    """gen2's command names its teachers' folders; after they were trained again its figures are no longer what
    that command makes, and the page did not say so."""
    teacher = {"train_minutes": 100.0, "weights": "aaa", "epochs": 40,
               "command": "python train.py --splits w/F/splits --out-dir w/F/t"}
    student = {"train_minutes": 50.0, "best_val_mae": 4.0, "test_mae": 4.1, "epochs": 60, "teachers_weights": "aaa",
               "command": "python train.py --splits w/F/splits --out-dir w/F/s --teacher w/F/t/best.pt"}
    models = {"t": teacher, "s": student}
    assert not benchmark.teachers_retrained(models, student)
    assert "trained again" not in "\n".join(benchmark.distillation_lines({"F": models}))
    teacher["weights"] = "bbb"
    assert benchmark.teachers_retrained(models, student)
    assert benchmark.RETRAINED_NOTE in "\n".join(benchmark.distillation_lines({"F": models}))
    # a record from before weights were kept: told by the teachers' minutes recorded with it
    old = {k: v for k, v in student.items() if k != "teachers_weights"}
    assert not benchmark.teachers_retrained(models, old)  # nothing recorded to compare with
    assert not benchmark.teachers_retrained(models, {**old, "teachers_minutes": 100.0})
    assert benchmark.teachers_retrained(models, {**old, "teachers_minutes": 80.0})
    cross = {"mae": 6.0, "cs5": 0.5, "faces_found": 1.0, "n": 9, "mae_per_decade": {"0-9": 5.0}}
    data = {"splits": {"train": 9, "val": 9, "test": 9}, "test_mae_of_train_median": 14.0}
    entry = {**student, "params": 1, "best_epoch": 1, "test_cs5": 0.5, "test_images": 9,
             "test_mae_per_decade": {"0-9": 1.0}}
    metadata = {"min_age": 1, "max_age": 116, "preprocess": {"image_size": 128}, "model_name": "simplecnn",
                "head": "distribution"}
    assert benchmark.RETRAINED_NOTE in benchmark.model_card("F", "s", entry, cross, data, metadata, "chip", retrained=True)
    assert "trained again" not in benchmark.model_card("F", "s", entry, cross, data, metadata, "chip")


def test_a_run_validated_with_its_zooms_is_marked_in_the_ship_rule():
    def entry(colour, extra=""):
        return {"best_val_mae": colour, "val_mae_gray": colour, "val_mae_scan": colour, "test_mae": 1.0,
                "command": "python train.py --splits s --out-dir o" + extra}
    results = {"protocols": {"F": {"plain": entry(5.0), "zoomed": entry(5.1, " --tta-zoom 0.95,0.9")}}}
    text = "\n".join(benchmark.shipped_section({"results": results, "shipped": None}))
    assert "| F/zoomed ‡ |" in text and "| F/plain (**chosen**) |" in text and "‡ Trained with test-time zooms" in text
    del results["protocols"]["F"]["zoomed"]
    assert "‡" not in "\n".join(benchmark.shipped_section({"results": results, "shipped": None}))


def test_a_run_trained_again_since_its_record_is_not_measured_or_shipped_under_it(tmp_path, capsys, monkeypatch):
    import argparse
    import checkpoints
    run = tmp_path / "F" / "m"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    state = {"w": torch.ones(2)}
    torch.save({"model_state": state}, run / "best.pt")
    monkeypatch.setattr(benchmark, "load_checkpoint", lambda path: torch.load(path, weights_only=True))
    entry = {"test_mae": 4.7, "weights": checkpoints.weights_digest(state)}
    results = {"protocols": {"F": {"m": entry}}}
    assert benchmark.other_weights(entry, run) is None and benchmark.why_not_here(results, tmp_path, "F", "m", None) is None
    torch.save({"model_state": {"w": torch.zeros(2)}}, run / "best.pt")  # trained again, not yet recorded
    assert "other weights" in benchmark.why_not_here(results, tmp_path, "F", "m", None)
    monkeypatch.setattr(benchmark, "cross_dataset", lambda *a, **k: pytest.fail("measured other weights"))
    args = argparse.Namespace(protocols="F", models="m", cross="fgnet", cross_compare=False, cross_filters=False)
    benchmark.check_cross(args, tmp_path, results, tmp_path / "results.json")
    assert "skipped F/m" in capsys.readouterr().out and "cross" not in results
    with pytest.raises(DataError, match="other weights"):
        benchmark.ship(benchmark.get_args_parser().parse_args(["--ship", "F/m"]), tmp_path, results)
    assert benchmark.other_weights({"test_mae": 4.7}, run) is None  # a record from before weights were kept
    monkeypatch.setattr(benchmark, "crop_consistency", lambda *a, **k: pytest.fail("checked other weights' crops"))
    benchmark.check_crops(argparse.Namespace(crop_check=300), tmp_path, "F", "m", results, tmp_path / "r.json")
    assert "--crop-check skipped" in capsys.readouterr().out and "crop_consistency" not in results


def test_ship_puts_the_runs_exports_and_their_card_in_place_together(tmp_path, monkeypatch):
    """--ship copies the run's model.onnx and model.jit to models/ and writes the card; a card that cannot be
    written leaves the earlier model pair in place (they are replaced together)."""
    run = tmp_path / "work" / "F" / "m"
    run.mkdir(parents=True)
    for suffix in (".onnx", ".jit"):
        (run / f"model{suffix}").write_bytes(f"new model{suffix}".encode())
    shipped = tmp_path / "models" / "age_model"
    monkeypatch.setattr(benchmark, "SHIPPED", shipped)
    for name, value in (("other_weights", lambda *a: None), ("reexport_for_shipping", lambda *a: None),
                        ("onnx_metadata", lambda path: {"crop": {"kind": "box", "margin": 0.0}}),
                        ("teachers_retrained", lambda *a: False), ("model_card", lambda *a, **k: "the card\n")):
        monkeypatch.setattr(benchmark, name, value)
    results = {"protocols": {"F": {"m": {"test_mae": 4.7}}}, "cross": {"FGNET": {"F/m": {"mae": 6.0}}},
               "data": {"F": {"splits": {"train": 10}, "age": {"min": 1, "max": 116}}}}
    args = benchmark.get_args_parser().parse_args(["--ship", "F/m", "--out", str(tmp_path / "results.json")])
    benchmark.ship(args, tmp_path / "work", results)
    assert [(shipped.parent / n).read_bytes() for n in ("age_model.onnx", "age_model.jit", "README.md")] == \
        [b"new model.onnx", b"new model.jit", b"the card\n"]
    (run / "model.onnx").write_bytes(b"newer model.onnx")
    monkeypatch.setattr(benchmark, "model_card", lambda *a, **k: "\ud800 not encodable")  # the card fails to encode
    with pytest.raises(UnicodeEncodeError):
        benchmark.ship(args, tmp_path / "work", results)
    assert (shipped.parent / "age_model.onnx").read_bytes() == b"new model.onnx"
    # the card encodes, but the disk refuses it once the models are staged: none of the three is replaced
    monkeypatch.setattr(benchmark, "model_card", lambda *a, **k: "a newer card\n")
    staged = custom_dataset._write_staged

    def full_at_the_card(path, write):
        if path.name == "README.md":
            raise OSError(28, "No space left on device")
        return staged(path, write)
    monkeypatch.setattr(custom_dataset, "_write_staged", full_at_the_card)
    with pytest.raises(OSError):
        benchmark.ship(args, tmp_path / "work", results)
    assert (shipped.parent / "age_model.onnx").read_bytes() == b"new model.onnx"
    assert (shipped.parent / "README.md").read_bytes() == b"the card\n"


def test_the_zooms_of_a_shipped_run_trained_again_since_are_not_chosen(tmp_path):
    results = json.loads((REPO / "bench" / "results.json").read_text())
    protocol, name = results["shipped_zooms"]["run"].split("/")
    results["protocols"][protocol][name]["weights"] = "weights of a later run"
    (tmp_path / protocol / "splits").mkdir(parents=True)
    (tmp_path / protocol / "splits" / "test.csv").write_text("path,age\n")
    args = benchmark.get_args_parser().parse_args(["--ship-zooms"])
    with pytest.raises(DataError, match="trained again after it was shipped"):
        benchmark.ship_zooms(args, tmp_path, results, tmp_path / "r.json")


def test_the_shipped_exports_zoom_probes_are_found_however_their_path_was_written():
    onnx = benchmark.SHIPPED.with_suffix(".onnx")
    probes = {f"F:{onnx}": {}, f"F:./{onnx}": {}, f"F:{onnx.resolve()}": {}, "F:bench/work/F/m/model.onnx": {}}
    assert benchmark.shipped_probes({"zoom_probe": probes}) == list(probes)[:3]


def test_a_card_is_not_rewritten_for_a_shipped_run_trained_again_since(tmp_path, capsys):
    (tmp_path / "models").mkdir()
    onnx = benchmark.SHIPPED.with_suffix(".onnx")
    (tmp_path / onnx).write_bytes((REPO / onnx).read_bytes())
    (tmp_path / "models" / "README.md").write_text("the card as shipped")
    results = json.loads((REPO / "bench" / "results.json").read_text())
    protocol, name = results["shipped_zooms"]["run"].split("/")
    results["protocols"][protocol][name]["weights"] = "weights of a later run"
    benchmark.refresh_model_card(results, tmp_path)
    assert (tmp_path / "models" / "README.md").read_text() == "the card as shipped"
    assert "trained again after it was shipped" in capsys.readouterr().out


def test_the_search_section_reads_a_search_without_overfit_check_or_with_a_final_still_to_come():
    """--skip-overfit writes overfit_check null (--table crashed on it), and best_params.json is written with
    final null before the final run: that search was shown as run with --skip-final."""
    row = {"lr": "0.001", "weight_decay": "0.0001", "val_mae": "5.1", "val_cs5": "0.5", "train_mae": "4.0", "seconds": "9"}
    best = {"model": "simplecnn", "head": "distribution", "loss": "l1", "trial_epochs": 3, "subset_fraction": 0.5,
            "overfit_check": None, "final": None, "skip_final": False, "selected_by": "lowest validation MAE",
            "lr": 0.001, "weight_decay": 0.0001, "val_mae": 5.1}

    def section(best):
        return "\n".join(benchmark.search_section({"search": {"best": best, "lr_sweep": [row], "grid": [row]}}))
    text = section(best)
    assert "Overfit check: skipped" in text and "--skip-overfit" in text and "--skip-final" not in text
    assert "--skip-final" in section({**best, "skip_final": True})
    old = {k: v for k, v in best.items() if k != "skip_final"}  # a record from before skip_final was kept
    assert "--skip-final" in section(old) and "--skip-final" not in section({**old, "final": {"test": {}}})
    checked = section({**best, "overfit_check": {"passed": True, "final_mae": 0.5, "steps": 120}})
    assert "passed, training MAE 0.50 after 120 steps" in checked and "--skip-overfit" not in checked


def test_the_fgnet_commands_remake_each_row_as_it_is_kept():
    """One command named every model with --cross-compare and --crop-check: it would add Haar rows to models that
    have none, and the crop check runs for the last model named only, so the checked model's row was made by no
    command shown. Each row is measured by one command only."""
    figures = {"mae": 6.0}
    results = {"cross": {"FGNET": {"F/a": figures, "F/a (Haar box crop)": figures, "F/b": figures, "F/c": figures,
                                   "S (earlier split, to 2026-12-03)/old": figures}},
               "crop_consistency": [{"model": "F/b", "images": 300, "mae_through_pipeline": 5.0},
                                    {"model": "F/gone", "images": 300, "mae_through_pipeline": 5.0}]}
    cross = f"python benchmark.py --cross {benchmark.CROSS_DIR} --protocols F --models"
    assert benchmark.cross_commands(results) == [f"{cross} c", f"{cross} a --cross-compare", f"{cross} b --crop-check 300"]
    results["cross"]["FGNET"]["F/b (Haar box crop)"] = figures  # each row once: b's Haar row with its crop check
    assert benchmark.cross_commands(results)[1:] == [f"{cross} a --cross-compare",
                                                     f"{cross} b --cross-compare --crop-check 300"]


def test_the_dark_floor_check_counts_the_faces_it_brightens_per_race(tmp_path):
    """--dark-floor-check: the test faces given directly with and without the floor; a dim face is brightened and
    counted, a face in good light is not; per race and overall both ways; the text for RESULTS.md."""
    from conftest import write_rgb
    bright = np.repeat(np.linspace(90, 230, 48)[None, :, None], 48, axis=0).repeat(3, axis=2).astype(np.uint8)
    dim = (bright * 0.25).astype(np.uint8)
    folder = tmp_path / "faces"
    rows = ["path,age,race"]
    for name, image, race in (("a.png", bright, "Black"), ("b.png", dim, "Black"), ("c.png", bright, "White")):
        write_rgb(folder / name, image)
        rows.append(f"{folder / name},40,{race}")
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "test.csv").write_text("\n".join(rows) + "\n")
    results = {}
    # a model that sees light: age 0 + 0.25 per unit of mean pixel value (the dim face: about 10, brightened: more)
    model = constant_model(tmp_path / "m.onnx", age=0.0, slope=0.25)
    record = benchmark.dark_floor_check(splits, results, tmp_path / "results.json", model=model)
    assert (record["n"], record["brightened"], record["dark_floor"]) == (3, 1, 117.0)
    brightened = record["mae_brightened"]
    assert brightened["with"] < brightened["without"] - 5  # the dim face was seen brighter: closer to 40
    black, white = record["mae_per_race"]["Black"], record["mae_per_race"]["White"]
    assert white["with"] == white["without"] and black["with"] < black["without"]  # only the dim face changed
    assert json.loads((tmp_path / "results.json").read_text())["dark_floor_check"] == record == results["dark_floor_check"]
    lines = benchmark.dark_floor_lines(results)
    assert (f"it brightens 1 of the 3 faces ({brightened['with']:.3f} with the floor, {brightened['without']:.3f} "
            "without)") in lines[1] and "Per race: Black: " in lines[1]
    assert benchmark.dark_floor_lines({}) == []
    # another split than the export's own test figure was measured on: refused, not compared
    constant_model(tmp_path / "other.onnx", age=0.0, slope=0.25, extra={"test_mae": 1.0})
    with pytest.raises(DataError, match="not its splits"):
        benchmark.dark_floor_check(splits, {}, tmp_path / "results.json", model=tmp_path / "other.onnx")
