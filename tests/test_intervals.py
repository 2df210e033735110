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
