"""The age map (train.py --age-map auto): an isotonic correction of the pull toward the middle ages,
fitted and judged on validation, carried in exports and applied by inference.py."""
import numpy as np
import pytest

import checkpoints
import inference
from conftest import constant_model
from custom_dataset import DataError
from functions import (apply_age_map, calibrate_ages, fit_age_map, lowers_worst_decade, worst_decade,
                       worst_decade_rule_failures)


def pulled_to_the_middle(n=2000, seed=0):
    """Validation-like predictions that shrink every age toward 40, as the trained models do."""
    rng = np.random.default_rng(seed)
    true = rng.uniform(1, 90, n)
    return 40 + 0.6 * (true - 40) + rng.normal(0, 3, n), true


def test_isotonic_map_golden_values():
    violating = fit_age_map([10, 20, 30], [20, 10, 30])  # the first two are pooled to their mean
    assert (violating["x"], violating["y"]) == ([10.0, 20.0, 30.0], [15.0, 15.0, 30.0])
    age_map = fit_age_map([10, 20, 30, 40], [12, 18, 35, 45])
    # between knots linear, flat beyond the ends
    assert apply_age_map([5, 25, 50], age_map).tolist() == [12.0, 26.5, 45.0]
    assert apply_age_map([5, 25], None).tolist() == [5.0, 25.0]


def test_isotonic_map_knots_stay_increasing_when_rounding_joins_two():
    # two predictions 3e-5 years apart round to one knot (a 70-epoch run's map was refused by its own export)
    age_map = fit_age_map([1.00001, 1.00004, 5, 6], [1, 3, 5, 6])
    assert (age_map["x"], age_map["y"]) == ([1.0, 5.0, 6.0], [1.0, 5.0, 6.0])
    assert checkpoints.age_map_is_usable(age_map)


def test_worst_decade_ignores_decades_too_small_to_judge():
    pred, true = [0, 0, 0, 10, 60], [1, 2, 3, 12, 90]
    assert worst_decade(pred, true, min_faces=1) == ("90-99", 30.0)
    assert worst_decade(pred, true, min_faces=3) == ("0-9", 2.0)
    assert worst_decade(pred, true, min_faces=10) == ("90-99", 30.0)  # none that large: all are judged


def test_keep_rule_golden_values():
    assert lowers_worst_decade(4.00, 4.05, 8.0, 7.9)          # +0.05 is within the noise
    assert not lowers_worst_decade(4.00, 4.06, 8.0, 7.9)      # beyond it
    assert not lowers_worst_decade(4.00, 3.90, 8.0, 8.0)      # the worst decade must improve


def test_worst_decade_rule_names_each_failed_condition():
    assert worst_decade_rule_failures(4.00, 4.05, 8.0, 7.9) == []
    assert worst_decade_rule_failures(4.00, 4.06, 8.0, 7.9) == ["the overall MAE rises by more than 0.05"]
    assert worst_decade_rule_failures(4.00, 3.90, 8.0, 8.0) == ["the worst decade does not improve"]
    assert worst_decade_rule_failures(4.00, 4.20, 8.0, 8.5) == ["the overall MAE rises by more than 0.05",
                                                                "the worst decade does not improve"]


def test_a_pulled_model_keeps_its_map_and_the_interval_is_fitted_on_unseen_residuals():
    pred, true = pulled_to_the_middle()
    age_map, interval, judgement = calibrate_ages(pred, true)
    assert judgement["keep"] and age_map is not None
    assert judgement["val_mae_after"] < judgement["val_mae_before"] - 1
    mapped = apply_age_map(pred, age_map)
    assert np.mean(np.abs(mapped - true)) < np.mean(np.abs(pred - true)) - 1
    # cross-fitted residuals are larger than the in-sample ones of the map fitted on all of them
    errors = sorted(e for band in interval["bands"] for e in band["errors"])
    assert np.mean(errors) > np.mean(np.abs(mapped - true))
    off_map, off_interval, off_judgement = calibrate_ages(pred, true, age_map="off")
    assert off_map is None and off_judgement is None and off_interval["bands"]


def test_too_few_validation_faces_give_no_map_and_say_why():
    pred, true = pulled_to_the_middle(n=40)
    age_map, interval, judgement = calibrate_ages(pred, true)
    assert age_map is None and judgement["keep"] is False and "too few validation faces" in judgement["reason"]
    assert sum(len(b["errors"]) for b in interval["bands"]) == 40


def test_inference_reports_ages_through_the_models_map(tmp_path):
    path = constant_model(tmp_path / "model.onnx", age=30.0, min_age=1, max_age=90,
                          age_map={"method": "test map", "x": [0.0, 60.0], "y": [10.0, 70.0]})
    estimator = inference.AgeEstimator(path, whole_image=True)
    assert estimator.predict(np.full((64, 64, 3), 128, np.uint8))[0]["age"] == pytest.approx(40.0)
    assert "test map" in estimator.describe()


@pytest.mark.parametrize("age_map", [{"x": [0, 1], "y": [5]}, {"x": [1, 0], "y": [0, 1]}, {"x": [0, 1], "y": [2, 1]},
                                     {"x": [0, float("nan")], "y": [0, 1]}, "isotonic"])
def test_unusable_age_maps_are_refused(age_map, tmp_path):
    with pytest.raises(DataError, match="unusable age map"):
        checkpoints.check_metadata(tmp_path / "m.onnx", {"preprocess": {"image_size": 64}, "age_map": age_map})


def test_an_export_with_a_kept_map_records_the_cross_fitted_validation_mae(monkeypatch):
    import argparse
    import torch
    import train
    pred, true = pulled_to_the_middle()
    monkeypatch.setattr(train, "make_loader", lambda *a, **k: None)
    monkeypatch.setattr(train, "predict_loader", lambda *a, **k: (pred, true))
    best = {"config": {}}
    cfg = argparse.Namespace(mean=[0.0] * 3, std=[1.0] * 3)
    judgement = train.calibrate(argparse.Namespace(age_map="auto", batch_size=64), torch.nn.Linear(1, 1), cfg, None, best)
    in_sample = np.mean(np.abs(apply_age_map(pred, best["age_map"]) - true))
    assert best["export_val_mae"] == judgement["val_mae_after"] > in_sample  # the honest figure, not the fitted one
    assert best["export_val_mae_views"] == pytest.approx(in_sample)  # what the export gives on these faces
    metadata = checkpoints.export_metadata(argparse.Namespace(to_dict=lambda: {}), {
        **best, "model_name": "m", "head": "distribution", "min_age": 1, "max_age": 90, "crop": {"kind": "box"},
        "model_state": torch.nn.Linear(1, 1).state_dict()})
    assert metadata["val_mae"] == judgement["val_mae_after"] and metadata["val_mae_views"] == pytest.approx(in_sample)


def test_an_export_of_last_pt_does_not_claim_the_test_mae_measured_through_best_pts_map(tmp_path):
    """A run whose last epoch was its best: last.pt has best.pt's weights, but not the age map (nor the zooms
    chosen after training) its metrics.json's test MAE was measured through."""
    import json

    import torch
    from custom_dataset import PreprocessConfig
    state = {"w": torch.arange(4.0)}
    age_map = {"method": "isotonic", "x": [1.0, 80.0], "y": [2.0, 78.0]}
    common = {"model_state": state, "epoch": 7, "model_name": "simplecnn", "head": "regression", "min_age": 1,
              "max_age": 80, "crop": {"kind": "box", "margin": 0.0}}
    best = {**common, "age_map": age_map, "config": {"tta_flip": True, "tta_zoom": "0.9"}}
    last = {**common, "config": {"tta_flip": True, "tta_zoom": ""}}
    saved = {"mae": 4.4, "best_epoch": 7, "weights": checkpoints.weights_digest(state), "age_map_applied": age_map,
             "tta_flip": True, "tta_zoom": [0.9]}
    (tmp_path / "metrics.json").write_text(json.dumps(saved))
    cfg = PreprocessConfig()
    assert checkpoints.metadata_for(best, cfg, tmp_path / "best.pt")["test_mae"] == 4.4
    assert checkpoints.metadata_for(last, cfg, tmp_path / "last.pt")["test_mae"] is None
    other = {**best, "model_state": {"w": torch.zeros(4)}}  # another run's weights under the same epoch
    assert checkpoints.metadata_for(other, cfg, tmp_path / "best.pt")["test_mae"] is None
    old = {k: v for k, v in saved.items() if k not in ("weights", "age_map_applied")}  # before the digest: by epoch
    (tmp_path / "metrics.json").write_text(json.dumps(old))
    assert checkpoints.metadata_for(best, cfg, tmp_path / "best.pt")["test_mae"] == 4.4


def test_an_export_of_last_pt_states_its_own_epochs_validation_mae_not_the_best_epochs():
    import torch
    from custom_dataset import PreprocessConfig
    last = {"model_state": {"w": torch.ones(2)}, "epoch": 80, "model_name": "simplecnn", "head": "regression",
            "min_age": 1, "max_age": 80, "crop": {"kind": "box", "margin": 0.0}, "config": {},
            "best_val_mae": 4.81, "metrics": {"val": {"mae": 4.97}}}  # the best was epoch 62's
    metadata = checkpoints.export_metadata(PreprocessConfig(), last)
    assert metadata["val_mae"] == metadata["val_mae_views"] == 4.97


def test_an_export_does_not_describe_a_split_made_again_since_training(tmp_path):
    """eda.py re-run on 20-50 after a run on all ages: a later export said 'ages 20-50' of a model of 1-116."""
    import json

    import torch
    import train
    from custom_dataset import PreprocessConfig
    splits = tmp_path / "out" / "splits"
    splits.mkdir(parents=True)
    for name in ("train", "val", "test"):
        (splits / f"{name}.csv").write_text(f"path,age,hash\n/d/{name}.jpg,30,h{name}\n")
    (tmp_path / "out" / "data_report.json").write_text(json.dumps(
        {"used": 3, "layout": "utkface", "age": {"min": 1, "max": 116}, "data_dir": "/d"}))
    run = {"model_state": {"w": torch.ones(2)}, "epoch": 3, "model_name": "simplecnn", "head": "regression",
           "min_age": 1, "max_age": 116, "crop": {"kind": "box", "margin": 0.0}, "best_val_mae": 5.0,
           "config": {"splits": str(splits)}, "split_faces": train.split_faces_digest(splits)}
    assert "ages 1-116" in checkpoints.export_metadata(PreprocessConfig(), run)["data"]
    (splits / "val.csv").write_text("path,age,hash\n/d/other.jpg,25,hother\n")  # eda.py made again
    (tmp_path / "out" / "data_report.json").write_text(json.dumps(
        {"used": 3, "layout": "utkface", "age": {"min": 20, "max": 50}, "data_dir": "/d"}))
    assert checkpoints.export_metadata(PreprocessConfig(), run)["data"] is None
