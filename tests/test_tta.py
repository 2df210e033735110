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
from functions import lowest_mae_zoom_set, predict_loader
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
                       (0.9, "not float"), ([0.9] * 10_000, "at most 4 test-time zooms, got 10000")]:
        with pytest.raises(ValueError, match=words.replace("[", r"\[").replace(")", r"\)")):
            parse_zooms(bad)


def test_the_zoom_set_with_the_lowest_mae_is_kept_and_a_tie_goes_to_the_first_listed():
    true = [11.0, 20.0]
    chosen, figures = lowest_mae_zoom_set({"none": [10, 20], "0.95": [11, 21], "0.9": [11, 20.5]}, true)
    assert chosen == "0.9" and figures == {"none": 0.5, "0.95": 0.5, "0.9": 0.25}
    assert lowest_mae_zoom_set({"none": [10, 20], "0.95": [11, 21]}, true)[0] == "none"  # the cheaper set
    with pytest.raises(ValueError, match="no zoom set"):
        lowest_mae_zoom_set({}, true)


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

    def torch_forward(path, threads=None, device="cpu", trust_code=False):
        _, metadata = real_read(path, threads, device, trust_code)
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


@pytest.mark.slow
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


# ---------------------------------------------------------------------------------------------- zooms after training

@pytest.fixture(scope="module")
def shipped_run(tmp_path_factory):
    """A one-epoch Protocol-F-like run under WORK/F/m (splits in WORK/F/splits) with its exports."""
    import shutil
    from conftest import make_splits
    root = tmp_path_factory.mktemp("ship_zooms")
    make_splits(root, min_age=20, max_age=40, per_age=4, size=64, seed=5)
    work = root / "work"
    work.mkdir()
    shutil.move(root / "out", work / "F")
    train.main(train.get_args_parser().parse_args([
        "--splits", str(work / "F" / "splits"), "--out-dir", str(work / "F" / "m"), "--epochs", "1",
        "--image-size", "32", "--batch-size", "32", "--threads", "1", "--no-tensorboard", "--no-progress"]))
    return work


@pytest.mark.slow
def test_new_metadata_is_written_into_both_exports_and_the_weights_stay(shipped_run, tmp_path):
    import shutil
    from checkpoints import read_export, rewrite_export_metadata
    faces = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    for suffix in (".onnx", ".jit"):
        path = tmp_path / f"model{suffix}"
        shutil.copy(shipped_run / "F" / "m" / f"model{suffix}", path)
        before = inference.AgeEstimator(path, whole_image=True, threads=1, trust_code=True)
        metadata = dict(before.metadata, tta_zoom=[0.9], val_mae=1.5)
        rewrite_export_metadata(path, metadata)
        after = inference.AgeEstimator(path, whole_image=True, threads=1, trust_code=True)
        assert read_export(path, trust_code=True)[1] == metadata and after.tta_zoom == (0.9,)
        after.tta_zoom = ()
        np.testing.assert_allclose(after.predict_inputs(faces), before.predict_inputs(faces), atol=1e-5)
        assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_ship_zooms_chooses_on_validation_and_rewrites_the_exports_the_record_and_the_card(shipped_run, tmp_path,
                                                                                          monkeypatch):
    import shutil
    import benchmark
    from checkpoints import read_export
    shipped = tmp_path / "models" / "age"
    shipped.parent.mkdir()
    for suffix in (".onnx", ".jit"):
        shutil.copy(shipped_run / "F" / "m" / f"model{suffix}", shipped.with_suffix(suffix))
    (shipped.parent / "README.md").write_text("Written by `python benchmark.py --ship F/m` from results\n")
    monkeypatch.setattr(benchmark, "SHIPPED", shipped)
    monkeypatch.setattr(benchmark, "ZOOM_CANDIDATES", ("", "0.9", "0.75"))
    seen = {}

    def fake_fgnet(model_path, data_dir, zooms=None, **_):  # FG-NET itself is not in a test
        seen.update(model=model_path, data=data_dir, zooms=zooms)
        return {"mae": 6.1, "cs5": 0.5, "n": 3, "photos": 3, "faces_found": 1.0, "mae_per_decade": {"0-9": 3.0},
                "mean_error_per_decade": {"0-9": 2.0}}
    monkeypatch.setattr(benchmark, "cross_dataset", fake_fgnet)
    entry = {"params": 1000, "best_epoch": 1, "epochs": 1, "test_mae": 9.87, "test_cs5": 0.1, "test_images": 20,
             "test_mae_per_decade": {"20-29": 9.0}, "train_minutes": 0.1, "command": "python train.py --splits s --out-dir o",
             "interval": {"level": 0.9, "coverage": 0.9, "mean_width": 30.0}}
    results = {"protocols": {"F": {"m": entry}}, "cross": {"FGNET": {"F/m": {**fake_fgnet(None, None), "mae": 6.54}}},
               "data": {"F": {"splits": {"train": 60, "val": 20, "test": 20}, "test_mae_of_train_median": 5.0}}}
    out = tmp_path / "results.json"
    args = benchmark.get_args_parser().parse_args(["--ship-zooms", "--cross", "FGNET_DIR", "--out", str(out)])
    record = benchmark.ship_zooms(args, shipped_run, results, out)

    assert record["zooms"] == min(record["val_mae"], key=record["val_mae"].get)
    assert set(record["val_mae"]) == {"none", "0.9", "0.75"}
    zooms = parse_zooms("" if record["zooms"] == "none" else record["zooms"])
    assert seen == {"model": shipped.with_suffix(".onnx"), "data": "FGNET_DIR", "zooms": zooms}
    for suffix in (".onnx", ".jit"):
        metadata = read_export(shipped.with_suffix(suffix), trust_code=True)[1]
        assert tuple(metadata["tta_zoom"]) == zooms
        assert metadata["val_mae"] == pytest.approx(record["val_mae"][record["zooms"]], abs=5e-4)
        assert metadata["test_mae"] == pytest.approx(record["test"]["mae"], abs=5e-4)
        assert metadata["interval"]["method"].startswith("split-conformal")
    assert json.loads(out.read_text())["shipped_zooms"] == record
    card = (shipped.parent / "README.md").read_text()
    assert "--ship F/m" in card and "Test-time zooms" in card
    assert "Without them: test MAE 9.87, FG-NET MAE 6.54" in card and "MAE 6.10" in card
    again = benchmark.ship_zooms(args, shipped_run, json.loads(out.read_text()), out)  # the zoomed export, again
    assert again["zooms"] == record["zooms"] and again["test"] == record["test"]


@pytest.mark.slow
def test_ship_zooms_refuses_splits_the_model_was_not_validated_on(shipped_run, tmp_path, monkeypatch):
    import shutil
    import benchmark
    from checkpoints import rewrite_export_metadata
    shipped = tmp_path / "models" / "age"
    shipped.parent.mkdir()
    shutil.copy(shipped_run / "F" / "m" / "model.onnx", shipped.with_suffix(".onnx"))
    metadata = inference.AgeEstimator(shipped.with_suffix(".onnx"), whole_image=True, threads=1).metadata
    rewrite_export_metadata(shipped.with_suffix(".onnx"), dict(metadata, val_mae=metadata["val_mae"] + 1.0,
                                                               val_mae_views=metadata["val_mae_views"] + 1.0))
    (shipped.parent / "README.md").write_text("Written by `python benchmark.py --ship F/m` from results\n")
    monkeypatch.setattr(benchmark, "SHIPPED", shipped)
    args = benchmark.get_args_parser().parse_args(["--ship-zooms", "--out", str(tmp_path / "r.json")])
    with pytest.raises(benchmark.DataError, match="no FG-NET figure for the shipped F/m"):
        benchmark.ship_zooms(args, shipped_run, {"protocols": {"F": {"m": {}}}}, tmp_path / "r.json")
    with pytest.raises(benchmark.DataError, match="these are not its splits"):
        benchmark.ship_zooms(args, shipped_run, {"protocols": {"F": {"m": {}}}, "cross": {"FGNET": {"F/m": {}}}},
                             tmp_path / "r.json")
    rewrite_export_metadata(shipped.with_suffix(".onnx"), dict(metadata, age_map={"x": [0, 100], "y": [0, 100]}))
    with pytest.raises(benchmark.DataError, match="age map fitted on the validation split"):
        benchmark.ship_zooms(args, shipped_run, {"protocols": {"F": {"m": {}}}, "cross": {"FGNET": {"F/m": {}}}},
                             tmp_path / "r.json")


def test_the_readme_and_results_give_the_shipped_files_figures_with_its_zooms():
    import benchmark
    fgnet = {"mae": 6.25, "cs5": 0.53, "faces_found": 0.996, "photos": 1002, "n": 998, "mae_per_decade": {"0-9": 3.9},
             "mean_error_per_decade": {"0-9": 3.7}}
    entry = {"test_mae": 4.75, "test_cs5": 0.649, "test_images": 2312, "test_mae_per_decade": {"0-9": 1.55},
             "interval": {"level": 0.9, "coverage": 0.913, "mean_width": 20.5}}
    zoomed = {"run": "F/m", "zooms": "0.95,0.9", "val_mae": {"none": 4.851, "0.95,0.9": 4.792},
              "test": {"mae": 4.7, "cs5": 0.66, "n": 2312, "mae_per_decade": {"0-9": 1.5}},
              "interval": {"level": 0.9, "coverage": 0.905, "mean_width": 19.9}, "fgnet": dict(fgnet, mae=6.08),
              "command": "python benchmark.py --ship-zooms"}
    results = {"protocols": {"F": {"m": entry}}, "cross": {"FGNET": {"F/m": fgnet}}, "shipped_zooms": zoomed,
               "data": {"F": {"age": {"min": 1, "max": 116}}}}
    block = benchmark.headline_block({"results": results, "detection": None, "shipped": "F/m"})
    assert "test MAE **4.70**" in block and "MAE 6.08" in block and "covers 90.5%" in block
    reading = "\n".join(benchmark.cross_reading(results, "F/m"))
    assert "has 6.08 with its test-time zooms 0.95,0.9 (6.25 without)" in reading
    # another shipped run: the record is not its own, and its own figures stand
    other = dict(results, protocols={"F": {"m": entry, "n": entry}}, cross={"FGNET": {"F/m": fgnet, "F/n": fgnet}})
    assert "MAE 6.25" in benchmark.headline_block({"results": other, "detection": None, "shipped": "F/n"})
    lines = "\n".join(benchmark.shipped_zooms_lines(results))
    assert "`0.95,0.9` (4.792 against 4.851" in lines and "test MAE 4.70 (the face alone: 4.75)" in lines


@pytest.mark.slow
def test_choose_zooms_keeps_the_validation_best_set_for_the_test_split_and_the_exports(shipped_run, tmp_path,
                                                                                      monkeypatch):
    import checkpoints
    from custom_dataset import load_split_dataset
    monkeypatch.setattr(train, "ZOOM_CANDIDATES", ("", "0.75"))
    splits = shipped_run / "F" / "splits"
    train.main(train.get_args_parser().parse_args([
        "--splits", str(splits), "--out-dir", str(tmp_path / "run"), "--epochs", "1", "--image-size", "32",
        "--batch-size", "32", "--threads", "1", "--no-tensorboard", "--no-progress", "--choose-zooms"]))
    best = checkpoints.load_checkpoint(tmp_path / "run" / "best.pt")
    choice = best["zoom_choice"]
    assert set(choice["val_mae"]) == {"none", "0.75"}
    assert choice["chosen"] == min(choice["val_mae"], key=choice["val_mae"].get)
    zooms = parse_zooms("" if choice["chosen"] == "none" else choice["chosen"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert parse_zooms(best["config"]["tta_zoom"]) == tuple(metrics["tta_zoom"]) == zooms
    estimator = inference.AgeEstimator(tmp_path / "run" / "model.onnx", whole_image=True, threads=1)
    assert estimator.tta_zoom == zooms
    test = load_split_dataset(splits / "test.csv", estimator.cfg, splits.parent / "cache", progress=False)
    exported = np.mean(np.abs(estimator.predict_inputs(np.asarray(test.images)) - test.ages.numpy()))
    assert metrics["mae"] == pytest.approx(exported, abs=1e-3)  # the test figure is the export's, zooms and all
    val = load_split_dataset(splits / "val.csv", estimator.cfg, splits.parent / "cache", progress=False)
    own = np.mean(np.abs(estimator.predict_inputs(np.asarray(val.images)) - val.ages.numpy()))
    # the export records its own validation figure (the kept set's), not the image alone's that chose the epoch
    assert estimator.metadata["val_mae"] == pytest.approx(choice["val_mae"][choice["chosen"]], abs=1e-6)
    assert estimator.metadata["val_mae"] == estimator.metadata["val_mae_views"] == pytest.approx(own, abs=2e-3)


def test_choose_zooms_and_tta_zoom_together_are_one_line_error(tmp_path):
    proc = run_script("train.py", "--splits", tmp_path, "--out-dir", tmp_path / "run", "--choose-zooms",
                      "--tta-zoom", "0.9")
    assert_one_line_error(proc, "--choose-zooms", "--tta-zoom")


@pytest.mark.slow
def test_a_finished_run_resumed_with_choose_zooms_gets_them_without_training_again(shipped_run, tmp_path,
                                                                                   monkeypatch):
    import shutil
    import checkpoints
    monkeypatch.setattr(train, "ZOOM_CANDIDATES", ("", "0.75"))
    run = tmp_path / "run"
    shutil.copytree(shipped_run / "F" / "m", run)
    weights = checkpoints.load_checkpoint(run / "best.pt")["model_state"]
    train.main(train.get_args_parser().parse_args([
        "--splits", str(shipped_run / "F" / "splits"), "--out-dir", str(run), "--epochs", "1", "--image-size", "32",
        "--batch-size", "32", "--threads", "1", "--no-tensorboard", "--no-progress", "--resume", "--choose-zooms"]))
    best = checkpoints.load_checkpoint(run / "best.pt")
    assert all(torch.equal(weights[k], v) for k, v in best["model_state"].items())  # no epoch ran again
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["zoom_choice"] == best["zoom_choice"] and set(best["zoom_choice"]["val_mae"]) == {"none", "0.75"}
    assert metrics["tta_zoom"] == list(parse_zooms(best["config"]["tta_zoom"]))


@pytest.mark.slow
def test_a_finished_student_resumed_asks_no_teacher_and_keeps_its_table(shipped_run, tmp_path, monkeypatch):
    """Its teacher trained again since: the finish predicted the new teacher's table (minutes) and wrote it over
    RUN/teacher.npz, which then no longer said what the student learnt from."""
    import shutil
    monkeypatch.setattr(train, "ZOOM_CANDIDATES", ("", "0.75"))
    splits = shipped_run / "F" / "splits"
    common = ["--splits", str(splits), "--epochs", "1", "--image-size", "32", "--batch-size", "32", "--threads", "1",
              "--no-tensorboard", "--no-progress"]
    (tmp_path / "teacher").mkdir()
    shutil.copy(shipped_run / "F" / "m" / "best.pt", tmp_path / "teacher" / "best.pt")
    student = ["--out-dir", str(tmp_path / "student"), "--teacher", str(tmp_path / "teacher" / "best.pt")]
    train.main(train.get_args_parser().parse_args(common + student))
    table = (tmp_path / "student" / "teacher.npz").read_bytes()
    train.main(train.get_args_parser().parse_args(common + ["--out-dir", str(tmp_path / "other"), "--seed", "2"]))
    shutil.copy(tmp_path / "other" / "best.pt", tmp_path / "teacher" / "best.pt")  # the teacher trained again
    monkeypatch.setattr(train, "teacher_targets", lambda *a, **k: pytest.fail("asked the teacher"))
    train.main(train.get_args_parser().parse_args(common + student + ["--resume", "--choose-zooms"]))
    assert (tmp_path / "student" / "teacher.npz").read_bytes() == table
    assert "zoom_choice" in json.loads((tmp_path / "student" / "metrics.json").read_text())


@pytest.mark.slow
def test_a_finished_run_finished_again_replaces_its_scores_in_tensorboard(shipped_run, tmp_path, monkeypatch):
    """The finish's scores were logged at step 0: a --resume --choose-zooms showed two test/mae values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    monkeypatch.setattr(train, "ZOOM_CANDIDATES", ("", "0.75"))
    argv = ["--splits", str(shipped_run / "F" / "splits"), "--out-dir", str(tmp_path / "run"), "--epochs", "1",
            "--image-size", "32", "--batch-size", "32", "--threads", "1", "--no-progress"]
    train.main(train.get_args_parser().parse_args(argv))
    train.main(train.get_args_parser().parse_args(argv + ["--resume", "--choose-zooms"]))
    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    finish_tags = [t for t in events.Tags()["scalars"] if t.startswith("test")]
    assert finish_tags
    for tag in finish_tags:
        assert [e.step for e in events.Scalars(tag)] == [2], tag  # once, after the last epoch
    assert [e.step for e in events.Scalars("mae/val")] == [1]


@pytest.mark.slow
def test_the_zoom_cost_times_each_scene_with_and_without_the_zooms(shipped_run, tmp_path, monkeypatch):
    import shutil
    import bench_detection
    import benchmark
    from checkpoints import rewrite_export_metadata
    from custom_dataset import DataError
    model = tmp_path / "model.onnx"
    shutil.copy(shipped_run / "F" / "m" / "model.onnx", model)
    scenes = [(np.full((120, 160, 3), 90 + 10 * i, np.uint8), None) for i in range(4)]
    with pytest.raises(DataError, match="no test-time zooms"):
        bench_detection.zoom_cost_ms(model, scenes, threads=1)
    metadata = inference.AgeEstimator(model, whole_image=True, threads=1).metadata
    rewrite_export_metadata(model, dict(metadata, tta_zoom=[0.9]))
    zooms_seen = []
    real = inference.AgeEstimator.estimate
    monkeypatch.setattr(inference.AgeEstimator, "estimate",
                        lambda self, rgb: zooms_seen.append(self.tta_zoom) or real(self, rgb))
    cost = bench_detection.zoom_cost_ms(model, scenes, threads=1)
    assert zooms_seen[1:] == [(), (0.9,), (0.9,), (), (), (0.9,), (0.9,), ()]  # after one warm-up: alternating order
    assert cost["n"] == 4 and cost["zooms"] == [0.9] and cost["ms_per_photo_median_with"] > 0
    e2e = {"model": "m.onnx", "n": 300, "ms_per_photo_median": 20.9, "zoom_cost": dict(
        cost, ms_per_photo_median_with=74.3, ms_per_photo_median_without=66.4, paired_difference_median_ms=7.1)}
    text = benchmark.zoom_cost_text(e2e)
    assert "measured without test-time zooms" in text and "74.3 against 66.4" in text and "(+11%)" in text
    assert "measured with the zooms 0.9" in benchmark.zoom_cost_text(dict(e2e, tta_zoom=[0.9]))
