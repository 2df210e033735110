"""Age intervals: split-conformal calibration on validation predictions (functions.fit_interval and
friends), its check when read from a model file, and the interval in inference.py's outputs."""
import csv
import json
import math

import numpy as np
import pytest

import checkpoints
import inference
from conftest import constant_model, detectable_faces, scene, write_rgb
from functions import fit_interval, interval_half_width, interval_metrics, predict_interval


def test_conformal_quantile_golden_values():
    errors = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert interval_half_width(errors, 0.9) == 9       # rank ceil(10 * 0.9) = 9
    assert interval_half_width(errors, 0.5) == 5       # rank ceil(10 * 0.5) = 5
    assert interval_half_width(errors[:8], 0.9) == math.inf  # 8 errors cannot promise 90 %
    with pytest.raises(ValueError):
        interval_half_width(errors, 1.0)


def test_bands_follow_predicted_age_and_thin_bands_are_merged():
    pred = [5.0] * 3 + [25.0] * 60 + [35.0] * 60 + [71.0] * 10
    true = [6.0] * 3 + [27.0] * 60 + [30.0] * 60 + [50.0] * 10
    calibration = fit_interval(pred, true, band=10, min_faces=50)
    # 3 faces at 0-9 join 20-29; 10 faces at 70-79 join 30-39
    assert [b["from"] for b in calibration["bands"]] == [None, 30.0]
    assert [len(b["errors"]) for b in calibration["bands"]] == [63, 70]
    assert calibration["bands"][0]["errors"][:3] == [1.0, 1.0, 1.0]
    low, high = predict_interval([25.0, 31.0, 3.0], calibration, 0.5)
    assert high.tolist() == [27.0, 36.0, 5.0]  # band 1's median error is 2; band 2's is 5
    assert low.tolist() == [23.0, 26.0, 1.0]
    assert predict_interval([1.0], calibration, 0.99)[0][0] == 0.0  # never below age 0


def test_coverage_on_a_fresh_draw_is_the_level():
    rng = np.random.default_rng(0)

    def draw(n):  # errors grow with age, as real ones do
        true = rng.uniform(1, 80, n)
        return true + rng.normal(0, 1 + true / 10), true
    calibration = fit_interval(*draw(3000))
    figures = interval_metrics(*draw(20000), calibration, 0.9)
    assert abs(figures["coverage"] - 0.9) <= 0.02
    assert figures["level"] == 0.9 and set(figures["coverage_per_decade"]) >= {"0-9", "70-79"}
    # banding by predicted age keeps the old faces covered, where one pooled width would not
    assert figures["coverage_per_decade"]["70-79"]["coverage"] >= 0.85
    assert interval_metrics(*draw(20000), calibration, 0.5)["mean_width"] < figures["mean_width"]


def spread_draw(rng, spreads):
    """draw(n) -> (pred, true, spread): the error's size follows a spread the model predicts, not the age."""
    def draw(n):
        true, spread = rng.uniform(20, 50, n), spreads(rng, n)
        return true + rng.normal(0, spread), true, spread
    return draw


def test_spread_intervals_scale_with_each_faces_spread():
    from functions import fit_spread_interval, predict_spread_interval
    golden = fit_spread_interval([10.0, 20.0, 30.0], [12.0, 20.0, 24.0], [0.5, 2.0, 3.0])
    assert golden["scores"] == [0.0, 2.0, 2.0] and golden["floor"] == 1.0  # 2/max(0.5, 1), 0/2, 6/3
    draw = spread_draw(np.random.default_rng(1), lambda rng, n: rng.uniform(1, 10, n))
    calibration = fit_spread_interval(*draw(3000))
    pred, true, spread = draw(20000)
    low, high = predict_spread_interval(pred, spread, calibration, 0.9)
    inside = (true >= low) & (true <= high)
    assert abs(inside.mean() - 0.9) <= 0.02
    narrow, wide = spread < 3, spread > 8  # each face's width follows its spread, so both stay covered
    assert abs(inside[narrow].mean() - 0.9) <= 0.03 and abs(inside[wide].mean() - 0.9) <= 0.03
    bands = fit_interval(*draw(3000)[:2])  # bands of predicted age cannot see the spread: one width for all
    band_low, band_high = predict_interval(pred, bands, 0.9)
    assert ((true >= band_low) & (true <= band_high))[narrow].mean() > 0.97


def test_the_interval_experiment_weighs_both_methods_on_validation():
    from benchmark import interval_experiment
    # spreads from 0.5 to 15 years, evenly on a log scale
    draw = spread_draw(np.random.default_rng(2), lambda rng, n: np.exp(rng.uniform(np.log(0.5), np.log(15), n)))
    result = interval_experiment(draw(2000), draw(2000))
    assert result["val_corr_abs_error_spread"] > 0.3
    for method in ("bands", "spread"):
        for part in ("val_crossfit", "test"):
            assert abs(result[method][part]["coverage"] - 0.9) <= 0.03
    # on these draws the spread carries the information, so its intervals are narrower at the same level
    assert result["spread"]["val_crossfit"]["mean_width"] < 0.9 * result["bands"]["val_crossfit"]["mean_width"]
    assert result["spread"]["test"]["mean_width"] < 0.9 * result["bands"]["test"]["mean_width"]


def test_a_distribution_heads_spread_golden_values():
    import torch
    from model import build_model
    model = build_model("simplecnn", head="distribution", min_age=20, max_age=22)
    logits = torch.tensor([[0.0, 0.0, -1e9], [-1e9, 5.0, -1e9]])  # ages 20/21 evenly; surely 21
    ages, spread = model.ages_and_spread(logits)
    assert torch.allclose(spread, torch.tensor([0.5, 0.0])) and torch.allclose(ages, torch.tensor([20.5, 21.0]))
    assert torch.allclose(ages, model.ages_from_outputs(logits))
    assert build_model("simplecnn").ages_and_spread(torch.zeros(2, 1))[1] is None


@pytest.mark.parametrize("interval", [
    {"method": "m", "bands": []},
    {"method": "m", "bands": [{"from": 10.0, "errors": [1.0]}]},            # first band must be open
    {"method": "m", "bands": [{"from": None, "errors": [2.0, 1.0]}]},       # unsorted
    {"method": "m", "bands": [{"from": None, "errors": [1.0, float("nan")]}]},
    {"method": "m", "bands": [{"from": None, "errors": [1.0]}, {"from": "x", "errors": [1.0]}]},
    "abc",
])
def test_unusable_calibrations_are_refused(interval, tmp_path):
    metadata = {"preprocess": {"image_size": 32}, "interval": interval}
    with pytest.raises(checkpoints.DataError, match="unusable age-interval calibration"):
        checkpoints.check_metadata(tmp_path / "m.onnx", metadata)


def test_inference_writes_and_draws_the_interval(tmp_path, capsys, monkeypatch):
    faces = detectable_faces(1)
    drawn = []
    real_annotate = inference.annotate
    monkeypatch.setattr(inference, "annotate", lambda rgb, boxes, labels, *rest: drawn.extend(labels)
                        or real_annotate(rgb, boxes, labels, *rest))
    calibration = {"method": "test calibration", "bands": [{"from": None, "errors": [float(e) for e in range(1, 20)]}]}
    model = constant_model(tmp_path / "m" / "model.onnx", age=30.0, min_age=1, max_age=90, interval=calibration)
    src = write_rgb(tmp_path / "in" / "one.jpg", scene(faces))
    out = tmp_path / "out"
    inference.main(inference.get_args_parser().parse_args(
        ["--model", str(model), "--image", str(src), "--output-dir", str(out), "--detector", "haar", "--json",
         "--threads", "1", "--interval-level", "0.5"]))
    text = capsys.readouterr().out
    assert "age interval at 50% (test calibration)" in text
    assert "age 30.0 (20.0-40.0)" in text  # rank ceil(20 * 0.5) = 10 -> half width 10
    with open(out / "predictions.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert (row["age_low"], row["age_high"]) == ("20.00", "40.00")
    face = json.loads((out / "predictions.json").read_text())[0]["faces"][0]
    assert (face["age_low"], face["age_high"]) == (20.0, 40.0)
    assert drawn == ["Age: 30 (20-40)"]  # what the annotated copy shows


def test_a_model_without_calibration_gives_no_interval(tmp_path, capsys):
    estimator = inference.AgeEstimator(constant_model(tmp_path / "model.onnx"), whole_image=True)
    face = estimator.predict(np.full((64, 64, 3), 128, np.uint8))[0]
    assert "age_low" not in face and "no age interval" in estimator.describe()


def test_predict_loader_spread_with_the_flip_is_the_mixtures():
    import torch
    from functions import predict_loader
    from model import build_model
    torch.manual_seed(0)
    model = build_model("simplecnn", head="distribution", min_age=0, max_age=30, image_size=32).eval()
    images = (torch.rand(5, 3, 32, 32) * 255).to(torch.uint8)
    loader = [(images, torch.arange(5.0))]
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    ages, true = predict_loader(model, loader, mean, std, tta_flip=True)
    ages_too, _, spread = predict_loader(model, loader, mean, std, tta_flip=True, spread=True)
    assert np.allclose(ages, ages_too, atol=1e-5)
    with torch.no_grad():  # the even mixture of the two predicted distributions, computed directly
        x = (images.float() / 255 - mean[:, None, None]) / std[:, None, None]
        probs = 0.5 * (torch.softmax(model(x), 1) + torch.softmax(model(x.flip(-1)), 1))
        grid = torch.arange(0, 31.0)
        direct = (probs * (grid - (probs @ grid)[:, None]) ** 2).sum(1).sqrt().numpy()
    assert np.allclose(spread, direct, atol=1e-4)
    assert predict_loader(build_model("simplecnn", image_size=32), loader, mean, std, spread=True)[2] is None
