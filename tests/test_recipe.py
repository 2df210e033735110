"""The training recipe is defined once (train.add_recipe_args) and reproduced exactly wherever it
travels: the tuner's trials, the resume check, the seeds of an epoch."""
import json

import pytest

import hyperparameter_tunning
import train

REQUIRED = ["--splits", "S", "--out-dir", "O"]


def test_recipe_argv_reproduces_every_recipe_setting():
    args = train.get_args_parser().parse_args(REQUIRED + [
        "--image-size", "96", "--denoise", "--denoise-strength", "7.5", "--augment", "photo", "--model", "resnet18",
        "--head", "regression", "--pretrained", "--weights", "w.pth", "--dropout", "0.25", "--batch-size", "32",
        "--loss", "huber", "--schedule", "constant", "--warmup-epochs", "0.5", "--no-tta-flip",
        "--teacher", "a/best.pt,b/best.pt", "--teacher-weight", "0.3", "--deblur", "--erase", "0.2", "--mixup", "0.3",
        "--balance", "--ema", "0.99", "--label-sigma", "3", "--tta-zoom", "0.95,0.9", "--teacher-online"])
    # every setting away from its default: one that recipe_argv dropped would otherwise come back as the default
    assert [k for k, default in train.recipe_defaults().items() if getattr(args, k) == default] == []
    again = train.get_args_parser().parse_args(REQUIRED + train.recipe_argv(args))
    for key in train.recipe_keys():
        assert getattr(again, key) == getattr(args, key), key
    assert again.tta_flip is False and again.pretrained is True


def test_tuner_accepts_the_whole_recipe_and_passes_it_to_trials():
    args = hyperparameter_tunning.get_args_parser().parse_args(
        REQUIRED + ["--schedule", "constant", "--dropout", "0.1", "--cache-workers", "5"])
    argv = hyperparameter_tunning.trial_argv(args, 1e-3, 0.0, 2, "RUN", "CACHE")
    trial = train.get_args_parser().parse_args(argv)
    assert trial.schedule == "constant" and trial.dropout == 0.1 and trial.workers == 5


def test_settings_hash_of_default_recipe_is_the_one_earlier_searches_wrote():
    # the values the tuner wrote for these command lines (no split files: the data part hashes their absence)
    # since a trial's key holds its data (2026-12-03; before, a split made again reused the old rows): a search
    # folder of that time keeps matching its trials, and a change here makes every search train again
    def settings(*extra):
        return hyperparameter_tunning.settings_hash(hyperparameter_tunning.get_args_parser().parse_args(REQUIRED + list(extra)))
    assert settings() == "923265b0"
    assert settings("--loss", "l1", "--image-size", "96") == "9663a9ff"
    assert settings("--schedule", "constant") != "923265b0"


def test_resume_check_covers_recipe_and_learning_settings_only():
    saved = vars(train.get_args_parser().parse_args(REQUIRED))
    new = train.get_args_parser().parse_args(REQUIRED + ["--schedule", "constant", "--lr", "0.01", "--threads", "1",
                                                         "--cache-workers", "1", "--no-progress"])
    changed = {key for key, _, _ in train.changed_settings(saved, new)}
    assert changed == {"schedule", "lr"}


def test_epoch_seeds_golden_values():
    # the formulas every earlier run used: changing them changes every benchmark figure
    assert train.epoch_seeds(42, 3) == {"shuffle": 42003, "torch": 42003, "augment": 42 * 7919 + 3}
    assert train.epoch_seeds(42, 3, rank=2) == {"shuffle": 42003, "torch": 42003 + 200_006,
                                                "augment": 42 * 7919 + 3 + 200_006}


def test_help_shows_defaults_of_every_flag_with_one():
    text = train.get_args_parser().format_help()
    for flag, default in (("--epochs", "20"), ("--lr", "0.001"), ("--batch-size", "64"), ("--model", "simplecnn"),
                          ("--loss", "mse"), ("--cache-workers", "2")):
        entry = text[text.index("\n  " + flag):]  # the option's own entry, not the usage line
        entry = entry[:entry.index("\n  -", 3)]
        assert f"(default: {default})" in " ".join(entry.split()), flag


def test_exports_describe_their_training_data(tmp_path):
    import checkpoints
    (tmp_path / "splits").mkdir()
    report = {"data_dir": str(tmp_path / "faces"), "layout": "folder_per_age", "used": 123, "age": {"min": 20, "max": 50}}
    (tmp_path / "data_report.json").write_text(json.dumps(report))
    config = {"splits": str(tmp_path / "splits")}
    assert checkpoints.describe_training_data(config) == \
        f"123 images, folder_per_age layout, ages 20-50, from {(tmp_path / 'faces').resolve()}"
    assert checkpoints.describe_training_data({**config, "data_description": "synthetic demo faces"}) == \
        "synthetic demo faces"
    assert checkpoints.describe_training_data({"splits": str(tmp_path / "elsewhere")}) is None


def test_group_metrics_golden_values():
    from functions import group_metrics
    pred = [30.0, 22.0, 40.0, 55.0]
    true = [25.0, 24.0, 41.0, 50.0]
    groups = group_metrics(pred, true, {"gender": ["female", "male", "", "female"]})
    assert groups["gender"] == {"female": {"mae": 5.0, "mean_error": 5.0, "n": 2},
                                "male": {"mae": 2.0, "mean_error": -2.0, "n": 1},
                                "unknown": {"mae": 1.0, "mean_error": -1.0, "n": 1}}
    assert list(groups["decade"]) == ["20-29", "40-49", "50-59"]
    assert groups["decade"]["20-29"] == {"mae": 3.5, "mean_error": 1.5, "n": 2}
    assert set(group_metrics(pred, true)) == {"decade"}


def test_balanced_weights_draw_every_decade_equally():
    import torch
    ages = torch.tensor([21.0, 22.0, 23.0, 25.0, 34.0, 51.0])
    weights = train.balanced_weights(ages)
    assert weights.tolist() == [0.25, 0.25, 0.25, 0.25, 1.0, 1.0]
    share = {decade: float(weights[(ages // 10) == decade].sum() / weights.sum()) for decade in (2, 3, 5)}
    assert share == {2: 1 / 3, 3: 1 / 3, 5: 1 / 3}


def test_group_metrics_are_plain_python_values():
    # they go into checkpoints, which load with weights_only=True (no numpy scalars or strings allowed)
    from functions import group_metrics, regression_metrics
    table = group_metrics([30.0, 22.0], [25.0, 24.0], {"gender": ["female", "male"]})
    assert all(type(label) is str for column in table.values() for label in column)
    assert all(type(label) is str for label in regression_metrics([30.0], [25.0])["mae_per_bin"])


def test_the_weight_average_is_bias_corrected_so_a_short_run_is_not_judged_on_its_first_step():
    """Without the correction, ten updates toward 1 from a first step at 0 left the 0.999 average at 0.01: a short
    tuner trial's validation judged the model after one step."""
    import torch
    model = torch.nn.BatchNorm1d(1)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = train.weight_average(model, 0.999, None)
    ema.update_parameters(model)  # the first update copies
    with torch.no_grad():
        model.weight.fill_(1.0)
    model.num_batches_tracked.fill_(7)
    for _ in range(10):
        ema.update_parameters(model)
    # the normalised exponential average of 11 steps, ten of them at 1: (1 - d^10) / (1 - d^11)
    assert float(ema.module.weight.detach()) == pytest.approx((1 - 0.999 ** 10) / (1 - 0.999 ** 11), abs=1e-6)
    assert float(ema.module.weight.detach()) > 0.9 and int(ema.module.num_batches_tracked) == 7
    # late in a run the decay is the one asked for
    before = float(ema.module.weight.detach())
    ema.n_averaged.fill_(100_000)
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.update_parameters(model)
    assert float(ema.module.weight.detach()) == pytest.approx(before + 0.001 * (2.0 - before), abs=1e-6)
