"""Test-time views: the centred zoom (golden values), --tta-zoom's parsing, and the same averaged views in
evaluation (functions.predict_loader) and in inference.py."""
import json

import numpy as np
import pytest
import torch

import inference
import train
from conftest import assert_one_line_error, constant_model, run_script
from custom_dataset import normalize, parse_zooms, zoom_batch
from functions import predict_loader
from model import build_model


def test_zoom_keeps_the_centre_and_resizes_it_back_bilinearly():
    image = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4).repeat(3, axis=1)
    zoomed = zoom_batch(image, 0.5)  # the centre 2 x 2 ([[5, 6], [9, 10]]) back to 4 x 4
    golden = np.array([[5, 5.25, 5.75, 6], [6, 6.25, 6.75, 7], [8, 8.25, 8.75, 9], [9, 9.25, 9.75, 10]], np.float32)
    assert zoomed.dtype == np.float32 and zoomed.shape == image.shape
    for channel in zoomed[0]:
        np.testing.assert_allclose(channel, golden, atol=1e-5)
    np.testing.assert_array_equal(zoom_batch(image, 1.0), image)  # the whole side: the image itself
    as_bytes = zoom_batch(image.astype(np.uint8), 0.5)  # uint8 in (a loader's batch): computed in float
    np.testing.assert_allclose(as_bytes, zoomed, atol=1e-5)


def test_parse_zooms_reads_text_and_lists_and_refuses_what_is_not_a_zoom():
    assert parse_zooms("0.95,0.9") == (0.95, 0.9)
    assert parse_zooms("") == parse_zooms(None) == parse_zooms([]) == ()
    assert parse_zooms([0.9]) == (0.9,)
    for bad, words in [("1", "outside [0.5, 1)"), ("0.3", "outside"), ("0.9,x", "'x' is not a number"),
                       (0.9, "not float")]:
        with pytest.raises(ValueError, match=words.replace("[", r"\[").replace(")", r"\)")):
            parse_zooms(bad)


def test_train_refuses_a_zoom_in_one_line():
    proc = run_script("train.py", "--splits", "nowhere", "--out-dir", "nowhere_out", "--tta-zoom", "1.2")
    assert_one_line_error(proc, "--tta-zoom", "outside [0.5, 1)")
    assert train.get_args_parser().parse_args(["--splits", "s", "--out-dir", "o", "--tta-zoom", "0.950, 0.9"]
                                              ).tta_zoom == "0.95,0.9"  # stored as one normalised text


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model("simplecnn", head="distribution", min_age=0, max_age=30, image_size=32).eval()


def test_predict_loader_averages_every_view_and_mixes_their_distributions(tiny_model):
    images = (torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    loader = [(images, torch.arange(5.0))]
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    ages, _, spread = predict_loader(tiny_model, loader, mean, std, tta_flip=True, tta_zoom=(0.75,), spread=True)
    with torch.no_grad():  # the four views by hand: image, its 75 % centre, each mirrored
        x = normalize(images, mean, std)
        z = normalize(torch.from_numpy(zoom_batch(images.numpy(), 0.75)), mean, std)
        probs = sum(torch.softmax(tiny_model(v), 1) for v in (x, x.flip(-1), z, z.flip(-1))) / 4
    grid = torch.arange(0, 31.0)
    direct_ages = probs @ grid
    direct_spread = (probs * (grid - direct_ages[:, None]) ** 2).sum(1).sqrt()
    np.testing.assert_allclose(ages, direct_ages.numpy(), atol=1e-4)
    np.testing.assert_allclose(spread, direct_spread.numpy(), atol=1e-4)
    flip_only = predict_loader(tiny_model, loader, mean, std, tta_flip=True)[0]
    assert np.abs(flip_only - ages).max() > 1e-3  # the zoom really changed the prediction


def test_inference_averages_the_views_evaluation_averages(tiny_model, tmp_path, monkeypatch):
    """A model exported with --tta-zoom predicts in inference.py what training's evaluation measured."""
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    path = constant_model(tmp_path / "model.onnx")
    real_read = inference.read_export
    calls = []

    def torch_forward(path, threads=None, device="cpu"):
        _, metadata = real_read(path, threads, device)
        metadata.update(tta_flip=True, tta_zoom=[0.8, 0.9])  # as checkpoints.export_metadata writes them

        def forward(x):
            calls.append(len(x))
            with torch.no_grad():
                return tiny_model.predict(normalize(torch.from_numpy(x), mean, std)).numpy()
        return forward, metadata

    monkeypatch.setattr(inference, "read_export", torch_forward)
    estimator = inference.AgeEstimator(path, whole_image=True)
    inputs = np.random.default_rng(2).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    predicted = estimator.predict_inputs(inputs)
    batch = torch.from_numpy(np.ascontiguousarray(inputs.transpose(0, 3, 1, 2)))
    evaluated, _ = predict_loader(tiny_model, [(batch, torch.zeros(4))], mean, std, tta_flip=True,
                                  tta_zoom=(0.8, 0.9))
    np.testing.assert_allclose(predicted, evaluated, atol=1e-4)
    assert calls == [24]  # the 4 faces' 6 views each, in one forward pass
    monkeypatch.setattr(inference, "FORWARD_BATCH", 20)
    np.testing.assert_allclose(estimator.predict_inputs(inputs), predicted, atol=1e-5)
    assert calls[1:] == [18, 6]  # whole faces per call: 3 faces' views fit in 20 images, then the 4th
    monkeypatch.setattr(inference, "FORWARD_BATCH", 5)
    np.testing.assert_allclose(estimator.predict_inputs(inputs), predicted, atol=1e-5)
    assert calls[3:] == [6, 6, 6, 6]  # fewer images than one face's views: one face per call


def test_a_model_whose_zoom_metadata_is_broken_is_refused_in_one_line(tmp_path):
    path = constant_model(tmp_path / "model.onnx")
    import onnx
    proto = onnx.load(str(path))
    metadata = json.loads(proto.metadata_props[0].value)
    proto.metadata_props[0].value = json.dumps({**metadata, "tta_zoom": [1.5]})
    onnx.save(proto, str(path))
    proc = run_script("inference.py", "--model", path, "--image", path, "--whole-image")
    assert_one_line_error(proc, "tta_zoom", "re-export")


def test_an_ablation_with_zooms_keeps_them_in_its_without_flip_figure(splits, tmp_path, monkeypatch):
    """run_ablation's "without flip-TTA" column turns the flip off and nothing else: a run with zooms is read
    over the face and its zooms, unmirrored, not over the face alone."""
    import shutil

    import benchmark
    from custom_dataset import load_split_dataset, make_loader
    from functions import evaluate
    work = tmp_path / "work"
    shutil.copytree(splits, work / "S" / "splits")
    monkeypatch.setitem(benchmark.LONG_ABLATIONS, "zoom_check", ("a zoom", ["--tta-zoom", "0.8"]))
    record = benchmark.run_ablation("zoom_check", work / "S" / "splits", work, quick=True)
    best, model, cfg = benchmark.load_best(work / "S" / "ablations" / "zoom_check")
    val = load_split_dataset(work / "S" / "splits" / "val.csv", cfg, work / "S" / "cache", progress=False)
    mean, std = torch.tensor(cfg.mean), torch.tensor(cfg.std)

    def val_mae(**views):
        return round(evaluate(model, make_loader(val, 256, shuffle=False), mean, std, **views)["mae"], 3)
    # as trained, flip and zoom (the run's flip is on, so this is also its val_mae_flip_tta)
    assert record["val_mae"] == pytest.approx(val_mae(tta_flip=True, tta_zoom=(0.8,)), abs=2e-3)
    assert record["val_mae_no_tta"] == val_mae(tta_flip=False, tta_zoom=(0.8,))
    assert record["val_mae_no_tta"] != val_mae(tta_flip=False)  # the zoom changes the figure, so the check can fail
