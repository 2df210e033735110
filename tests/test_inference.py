"""Tests of inference.py: single image, folder, video, tracking helpers and one-line errors."""
import csv
import json
import re

import cv2
import numpy as np
import pytest
import torch

import demo_data
import faces as face_pipeline
import inference
from conftest import (assert_one_line_error, constant_model, detectable_faces, run_script, scene,
                      small_face_beside_a_large_dim_one, write_rgb)
from custom_dataset import DataError

torch.set_num_threads(1)  # the machine is shared; these models are tiny
cv2.setNumThreads(1)
SLOW_FIXTURES = {"model_path"}  # trains a model: the tests that use it (or onnx_path) are marked slow (conftest)


# ----------------------------------------------------------------------------------------------
# Fixtures

@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    """A one-epoch SimpleCNN model.jit trained on generated faces (outside the repo)."""
    import train
    root = tmp_path_factory.mktemp("inference_model")
    data = root / "data"
    demo_data.generate_dataset(data, min_age=20, max_age=40, per_age=4, size=64, seed=0)
    files = sorted(data.rglob("*.jpg"))
    splits = root / "splits"
    splits.mkdir()
    for name, part in (("train", files[0::3] + files[1::3]), ("val", files[2::3]), ("test", files[2::3])):
        with open(splits / f"{name}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "age"])
            writer.writerows([str(p), p.parent.name] for p in part)
    run = root / "run"
    train.main(train.get_args_parser().parse_args([
        "--splits", str(splits), "--epochs", "1", "--out-dir", str(run), "--image-size", "64",
        "--batch-size", "32", "--threads", "1", "--workers", "1", "--no-tensorboard", "--no-progress"]))
    assert (run / "model.jit").is_file()
    return run / "model.jit"


@pytest.fixture(scope="session")
def onnx_path(model_path):
    return model_path.with_name("model.onnx")


@pytest.fixture(scope="session")
def faces():
    return detectable_faces(3)


def run_main(argv):
    return inference.main(inference.get_args_parser().parse_args([*argv, "--threads", "1"]))


# ----------------------------------------------------------------------------------------------
# Single image

def test_single_image_two_faces_one_forward_pass(onnx_path, faces, tmp_path, capsys, monkeypatch):
    src = write_rgb(tmp_path / "in" / "two.jpg", scene(faces[:2]))
    out = tmp_path / "sub" / "two_out.jpg"
    calls, tta = [], []
    real_load = inference.read_export

    def counting_load(path, threads=None, device="cpu", trust_code=False):
        forward, metadata = real_load(path, threads, device, trust_code)
        tta.append(bool(metadata.get("tta_flip")))

        def counted(x):
            calls.append(x.shape[0])
            return forward(x)
        return counted, metadata

    monkeypatch.setattr(inference, "read_export", counting_load)
    result = run_main(["--model", str(onnx_path), "--image", str(src), "--output", str(out), "--detector", "haar"])
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("two.jpg, face ")]
    assert len(lines) == 2 == len(result["boxes"])
    assert calls == ([4] if tta[0] else [2])  # both faces, and their mirrors with TTA, in one pass
    annotated = cv2.imread(str(out))
    assert annotated is not None and annotated.shape == cv2.imread(str(src)).shape
    assert not np.array_equal(annotated, cv2.imread(str(src)))  # something was drawn
    for k, (line, box, age) in enumerate(zip(lines, result["boxes"], result["ages"])):
        assert line.startswith(f"two.jpg, face {k}, box {','.join(map(str, box))}, haar score ")
        # a model written by train.py carries its interval calibration: "age 29.8 (19.5-40.1)"
        assert re.search(rf", age {age:.1f} \(\d+\.\d-\d+\.\d\)$", line), line


def test_no_face_says_so_and_guesses_nothing(onnx_path, tmp_path, capsys):
    noise = np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    src = write_rgb(tmp_path / "in" / "noise.png", noise)
    result = run_main(["--model", str(onnx_path), "--image", str(src), "--output", str(tmp_path / "o.png"),
                       "--detector", "haar"])
    out = capsys.readouterr().out
    assert "noise.png: no face found" in out and ", age " not in out
    assert result["boxes"] == [] and result["ages"] == []
    assert result["rows"] == [{"file": "noise.png", "face_index": "", "x": "", "y": "", "w": "", "h": "", "score": "",
                               "detector": "", "age": "", "age_low": "", "age_high": "", "outside_training_range": "",
                               "face_found": "false", "faces_dropped": 0}]
    annotated = cv2.imread(str(tmp_path / "o.png"))
    assert annotated.shape == (150, 200, 3) and not np.array_equal(annotated, cv2.imread(str(src)))  # says so


def test_whole_image_uses_the_whole_image(onnx_path, faces, tmp_path, capsys):
    src = write_rgb(tmp_path / "in" / "face.jpg", scene(faces[:1]))
    result = run_main(["--model", str(onnx_path), "--image", str(src), "--output", str(tmp_path / "o.jpg"),
                       "--whole-image"])
    assert result["boxes"] == [(0, 0, 240, 240)]
    assert "whole image (--whole-image)" in capsys.readouterr().out


def test_save_crops_writes_what_the_model_saw(onnx_path, faces, tmp_path):
    src = write_rgb(tmp_path / "in" / "two.png", scene(faces[:2]))
    crops = tmp_path / "crops"
    result = run_main(["--model", str(onnx_path), "--image", str(src), "--output", str(tmp_path / "o.png"),
                       "--detector", "haar", "--save-crops", str(crops)])
    assert sorted(p.name for p in crops.iterdir()) == ["two_0.png", "two_1.png"]
    estimator = inference.AgeEstimator(onnx_path, "haar")
    found, inputs, ages = estimator.estimate(cv2.cvtColor(cv2.imread(str(src)), cv2.COLOR_BGR2RGB))
    for k in range(2):
        saved = cv2.cvtColor(cv2.imread(str(crops / f"two_{k}.png")), cv2.COLOR_BGR2RGB)
        assert saved.shape == (64, 64, 3) and np.array_equal(saved, inputs[k])  # RGB, model size, not normalised
    np.testing.assert_allclose(ages, result["ages"], atol=0.01)


def test_output_equal_to_input_is_refused(onnx_path, faces, tmp_path):
    src = write_rgb(tmp_path / "face.jpg", scene(faces[:1]))
    before = src.read_bytes()
    with pytest.raises(DataError, match="is the input file"):
        run_main(["--model", str(onnx_path), "--image", str(src), "--output", str(tmp_path / "." / "face.jpg")])
    assert src.read_bytes() == before


def test_unreadable_image_and_bad_output(onnx_path, faces, tmp_path):
    (tmp_path / "in").mkdir()
    bad = tmp_path / "in" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(DataError, match="cannot read"):
        run_main(["--model", str(onnx_path), "--image", str(bad), "--output", str(tmp_path / "o.jpg")])
    src = write_rgb(tmp_path / "in" / "face.jpg", scene(faces[:1]))
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(DataError, match="output folder"):
        run_main(["--model", str(onnx_path), "--image", str(src), "--output", str(blocker / "o.jpg")])
    with pytest.raises(DataError, match="unknown image type"):
        run_main(["--model", str(onnx_path), "--image", str(src), "--output", str(tmp_path / "o.xyz")])


# ----------------------------------------------------------------------------------------------
# Folder

def test_input_dir_writes_csv_and_skips_corrupt(model_path, faces, tmp_path, capsys):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    write_rgb(in_dir / "a_two.jpg", scene(faces[:2]))
    write_rgb(in_dir / "b_one.png", scene(faces[2:3]))
    write_rgb(in_dir / "c_noise.jpg", np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8))
    (in_dir / "d_corrupt.jpg").write_bytes(b"not an image at all")
    (in_dir / "notes.txt").write_text("ignored")
    result = run_main(["--model", str(model_path), "--input-dir", str(in_dir), "--output-dir", str(out_dir),
                       "--detector", "haar", "--trust-model"])
    captured = capsys.readouterr()
    assert "warning: skipping d_corrupt.jpg" in captured.err
    assert "images/s" in captured.out
    with open(out_dir / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["file"], r["face_index"], r["face_found"]) for r in rows] == [
        ("a_two.jpg", "0", "true"), ("a_two.jpg", "1", "true"), ("b_one.png", "0", "true"),
        ("c_noise.jpg", "", "false")]
    assert rows[3]["age"] == "" and rows[3]["w"] == ""
    assert all(np.isfinite(float(r["age"])) and r["detector"] == "haar" for r in rows[:3])
    assert result["images"] == 3 and result["skipped"] == 1 and result["faces"] == 3 and result["no_face"] == 1
    for name in ("a_two.jpg", "b_one.png", "c_noise.jpg"):  # annotated copies: <stem>_age.<ext>
        assert cv2.imread(str(out_dir / inference.annotated_name(name))).shape == cv2.imread(str(in_dir / name)).shape
    assert not (out_dir / "d_corrupt_age.jpg").exists()
    assert not list(out_dir.glob(".*"))  # no temporary file left


def test_input_dir_equal_to_output_dir_is_refused(onnx_path, tmp_path):
    with pytest.raises(DataError, match="input folder"):
        run_main(["--model", str(onnx_path), "--input-dir", str(tmp_path), "--output-dir", str(tmp_path)])


# ----------------------------------------------------------------------------------------------
# Video

def test_video_same_frame_count(onnx_path, faces, tmp_path, capsys):
    src, out = tmp_path / "in" / "in.mp4", tmp_path / "out.mp4"
    src.parent.mkdir()
    background = scene([], gap=320)  # 240 x 320 textured grey
    frames = []
    for i in range(12):  # the face moves 4 px right and 1 px down per frame
        frame = background.copy()
        frame[30 + i:190 + i, 40 + 4 * i:200 + 4 * i] = faces[0]
        frames.append(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 240))
    assert writer.isOpened()
    for frame in frames:
        writer.write(np.ascontiguousarray(frame))
    writer.release()
    result = run_main(["--model", str(onnx_path), "--video", str(src), "--output", str(out), "--detector", "haar"])
    cap = cv2.VideoCapture(str(out))
    count = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (240, 320, 3)
        count += 1
    cap.release()
    assert count == 12 == result["frames"]
    assert result["faces"] >= 6 and 1 <= result["tracks"] <= 2  # one face moving slowly: one track
    assert "12 frames" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# Pure helpers: golden values

def test_smooth_golden():
    assert inference.smooth(None, 30) == 30.0
    assert inference.smooth(30, 40, 0.3) == pytest.approx(33.0)
    assert inference.smooth(30, 40, 1.0) == pytest.approx(40.0)
    value = None
    for age in (20, 30, 30):
        value = inference.smooth(value, age, 0.3)
    assert value == pytest.approx(0.3 * 30 + 0.7 * (0.3 * 30 + 0.7 * 20))  # 25.1
    assert value == pytest.approx(25.1)


def test_match_tracks_golden():
    tracks = [(0, 0, 10, 10), (100, 100, 10, 10), (50, 50, 10, 10)]
    dets = [(101, 100, 10, 10), (1, 0, 10, 10), (300, 300, 10, 10)]
    assert inference.match_tracks(tracks, dets) == ([(0, 1), (1, 0)], [2], [2])
    # greedy: the best pair is taken first, the other track gets nothing at IoU < 0.3
    tracks = [(0, 0, 10, 10), (4, 0, 10, 10)]
    dets = [(5, 0, 10, 10)]
    assert inference.match_tracks(tracks, dets) == ([(1, 0)], [0], [])
    assert inference.match_tracks([], dets) == ([], [], [0])
    assert inference.match_tracks(tracks, []) == ([], [0, 1], [])
    # threshold is inclusive: IoU exactly 1/3 matches at 0.3, not at 0.34
    assert inference.match_tracks([(0, 0, 10, 10)], [(5, 0, 10, 10)])[0] == [(0, 0)]
    assert inference.match_tracks([(0, 0, 10, 10)], [(5, 0, 10, 10)], threshold=0.34)[0] == []


def test_tracker_smooths_per_track():
    tracker = inference.Tracker(alpha=0.5)
    assert tracker.update([(0, 0, 10, 10)], [20.0]) == ([1], [20.0])
    ids, shown = tracker.update([(200, 0, 10, 10), (1, 0, 10, 10)], [50.0, 30.0])
    assert ids == [2, 1] and shown == [50.0, 25.0]
    assert tracker.created == 2


def test_annotate_leaves_original_untouched():
    rgb = np.zeros((100, 120, 3), np.uint8)
    out = inference.annotate(rgb, [(10, 10, 50, 50)], ["Age: 33"])
    assert out.shape == rgb.shape and out.any() and not rgb.any()


def _drawn_rows(image):
    return int((image.any(axis=(1, 2))).sum())


def test_drawing_scales_with_the_face_box():
    """A label on a 2000 px face is as legible as on a 100 px face: its band grows with the box."""
    small = inference.annotate(np.zeros((400, 400, 3), np.uint8), [(150, 200, 100, 100)], ["Age: 34"])
    big = inference.annotate(np.zeros((4000, 4000, 3), np.uint8), [(1000, 2000, 1000, 1000)], ["Age: 34"])
    band_small = _drawn_rows(small[:200])   # rows above the box: the label band
    band_big = _drawn_rows(big[:2000])
    assert 5 * band_small < band_big < 20 * band_small
    line_small = int(small[250, 150:170].any(axis=1).sum())  # the box's left edge, crossed horizontally
    line_big = int(big[2500, 1000:1100].any(axis=1).sum())
    assert line_big >= 5 * line_small


def test_no_face_note_is_written_across_the_photo():
    out = inference.annotate(np.zeros((300, 500, 3), np.uint8), [], ["no face found"])
    assert out[:60].any() and not out[150:].any()
    assert not inference.annotate(np.zeros((30, 50, 3), np.uint8), [], []).any()


# ----------------------------------------------------------------------------------------------
# The Python API and the model formats

def test_api_takes_paths_pil_images_and_arrays(onnx_path, faces, tmp_path):
    from PIL import Image
    rgb = scene(faces[:2])
    path = write_rgb(tmp_path / "two.png", rgb)
    estimator = inference.AgeEstimator(onnx_path, detector="haar")
    from_path = estimator.predict(path)
    assert len(from_path) == 2 and {"box", "score", "detector", "age"} <= set(from_path[0])
    from_pil = estimator.predict(Image.fromarray(rgb))
    from_array, from_gray = estimator.predict([rgb, cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)])
    assert [f["box"] for f in from_pil] == [f["box"] for f in from_path] == [f["box"] for f in from_array]
    assert [f["age"] for f in from_array] == pytest.approx([f["age"] for f in from_path], abs=1e-4)
    assert len(from_gray) == 2
    with pytest.raises(DataError, match="uint8"):
        estimator.predict(rgb.astype(np.float32))


def test_a_pil_image_turned_by_hand_is_not_turned_again_by_its_exif_tag():
    """A phone photo stored landscape with Orientation 6: opened, converted, turned by the caller's own hand
    (which keeps the tag) or turned and shrunk, the API sees it upright once; without the EXIF pixel size nothing
    tells a turned image from a stored one, and the tag is applied as for files."""
    import io
    from PIL import Image, ImageOps
    stored = np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)

    def jpeg(with_size):
        exif = Image.Exif()
        exif[0x0112] = 6
        if with_size:
            exif.get_ifd(0x8769).update({0xA002: 200, 0xA003: 120})
        buffer = io.BytesIO()
        Image.fromarray(stored).save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
        return buffer.getvalue()

    data = jpeg(True)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert upright.shape == (200, 120, 3)
    by_hand = Image.open(io.BytesIO(data)).rotate(-90, expand=True)
    for image in (Image.open(io.BytesIO(data)), Image.open(io.BytesIO(data)).convert("RGB"), by_hand):
        np.testing.assert_array_equal(inference.as_rgb(image), upright)
    assert by_hand.getexif().get(0x0112) == 6  # the caller's image is not changed
    assert inference.as_rgb(by_hand.resize((60, 100))).shape == (100, 60, 3)
    assert inference.as_rgb(ImageOps.exif_transpose(Image.open(io.BytesIO(data)))).shape == (200, 120, 3)
    assert inference.as_rgb(Image.open(io.BytesIO(jpeg(False))).rotate(-90, expand=True)).shape == (120, 200, 3)


def test_onnx_and_torchscript_give_the_same_ages(model_path, onnx_path):
    inputs = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    from_onnx = inference.AgeEstimator(onnx_path, whole_image=True).predict_inputs(inputs)
    from_jit = inference.AgeEstimator(model_path, whole_image=True, trust_code=True).predict_inputs(inputs)
    np.testing.assert_allclose(from_onnx, from_jit, atol=1e-4, rtol=0)
    assert from_onnx.shape == (5,)


def test_model_metadata_carries_its_crop(onnx_path):
    estimator = inference.AgeEstimator(onnx_path, detector="haar")
    assert estimator.cfg.image_size == 64
    assert estimator.crop == face_pipeline.BOX_CROP  # demo faces were used as they are: no chip


def test_a_model_with_two_outputs_per_image_is_refused(onnx_path, monkeypatch):
    estimator = inference.AgeEstimator(onnx_path, whole_image=True)
    monkeypatch.setattr(estimator, "_forward", lambda x: np.zeros((len(x), 2), np.float32))
    with pytest.raises(DataError, match="2 numbers per image"):
        estimator.predict_inputs(np.zeros((3, 64, 64, 3), np.uint8))


def test_real_face_in_a_photo_reaches_the_model_as_its_training_chip(onnx_path, utkface_chips, paste_face):
    """A UTKFace face pasted small and tilted into a photo: what the model sees is the file itself,
    preprocessed, as training saw it."""
    from custom_dataset import preprocess_rgb
    estimator = inference.AgeEstimator(onnx_path)
    estimator.crop = face_pipeline.UTKFACE_CROP
    estimator.pipeline = face_pipeline.FacePipeline(face_pipeline.UTKFACE_CROP, "auto")
    chip = utkface_chips[1]
    photo, _ = paste_face(chip, 260, tilt=12.0, at=(0.6, 0.5))
    found, inputs, ages = estimator.estimate(photo)
    assert len(found) == 1 and ages.shape == (1,)
    inner = slice(13, 51)  # the face itself: the chip's corners lay outside the pasted disc
    as_trained = preprocess_rgb(chip, estimator.cfg)[inner, inner].astype(float)
    seen = inputs[0][inner, inner].astype(float)
    assert np.abs(seen - as_trained).mean() < 4
    square = preprocess_rgb(face_pipeline.crop_face(photo, found[0].box, 0.0), estimator.cfg)[inner, inner]
    assert np.abs(square.astype(float) - as_trained).mean() > 2 * np.abs(seen - as_trained).mean()


def test_inference_feeds_the_model_the_very_pixels_training_cached_for_a_denoising_model(tmp_path):
    """Denoise and deblur on (every other inference test's model has them off): the pixels inference gives
    the model are byte for byte those of the training cache, so no filter is skipped or done twice."""
    from custom_dataset import PreprocessConfig, build_cache, load_rgb
    cfg = PreprocessConfig(image_size=32, denoise=True, deblur=True)
    rng = np.random.default_rng(3)
    gradient = np.linspace(40, 200, 70)[None, :, None]
    photo = write_rgb(tmp_path / "photos" / "a.png",
                      np.clip(gradient + rng.normal(0, 25, (50, 70, 3)), 0, 255).astype(np.uint8))
    estimator = inference.AgeEstimator(constant_model(tmp_path / "m.onnx", preprocess=cfg), whole_image=True)
    _, inputs, _ = estimator.estimate(load_rgb(photo))
    cached, ok, _ = build_cache([str(photo)], cfg, tmp_path / "cache", workers=1, progress=False)
    assert ok.all() and np.array_equal(inputs[0], cached[0])
    plain = build_cache([str(photo)], PreprocessConfig(image_size=32, denoise=False, deblur=False),
                        tmp_path / "cache", workers=1, progress=False)[0]
    assert np.abs(inputs[0].astype(int) - plain[0]).mean() > 1  # the filters did change the pixels


def _cli(*argv):
    return run_script("inference.py", *argv, "--threads", "1")


def _a_photo(tmp_path):
    """An image that is there, so that the error under test is the model's (a missing input is named first)."""
    path = tmp_path / "photo.png"
    write_rgb(path, np.full((64, 64, 3), 128, np.uint8))
    return str(path)


@pytest.mark.slow
def test_cli_missing_model(tmp_path):
    assert_one_line_error(_cli("--model", str(tmp_path / "nope.jit"), "--image", _a_photo(tmp_path)),
                          "model file not found")


@pytest.mark.slow
def test_cli_text_file_as_model(tmp_path):
    photo = _a_photo(tmp_path)
    text = tmp_path / "model.jit"
    text.write_text("this is not a model\n")
    assert_one_line_error(_cli("--model", str(text), "--image", photo, "--trust-model"), "not a TorchScript model")
    text = tmp_path / "model.onnx"
    text.write_text("this is not a model\n")
    assert_one_line_error(_cli("--model", str(text), "--image", photo), "not an ONNX model")
    other = tmp_path / "model.pkl"
    other.write_text("x")
    assert_one_line_error(_cli("--model", str(other), "--image", photo), "pass a model.onnx")


@pytest.mark.slow
def test_cli_missing_image(model_path, tmp_path):
    proc = _cli("--model", str(model_path), "--image", str(tmp_path / "missing.jpg"), "--output", str(tmp_path / "o.jpg"))
    assert_one_line_error(proc, "image not found")
    assert "training ages" not in proc.stdout  # named before the model was read, not seconds later
    for flag, missing in (("--input-dir", "no_such_folder"), ("--video", "missing.mp4")):
        proc = _cli("--model", str(model_path), flag, str(tmp_path / missing))
        assert_one_line_error(proc, "not found", flag)
        assert "training ages" not in proc.stdout


def test_tiny_images_and_odd_names_get_the_same_rule_in_both_modes(onnx_path, faces, tmp_path, capsys):
    import os
    tiny = write_rgb(tmp_path / "tiny.png", np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(DataError, match="too small to hold a face"):
        run_main(["--model", str(onnx_path), "--image", str(tiny), "--output", str(tmp_path / "o.png")])
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    write_rgb(in_dir / "tiny.png", np.zeros((1, 1, 3), np.uint8))
    write_rgb(in_dir / "face.png", scene(faces[:1]))
    os.link(in_dir / "face.png", os.path.join(os.fsencode(in_dir), b"caf\xe9.png"))
    result = run_main(["--model", str(onnx_path), "--input-dir", str(in_dir), "--output-dir", str(tmp_path / "out"),
                       "--detector", "haar"])
    err = capsys.readouterr().err
    assert "skipping tiny.png: " in err and "too small" in err and "not UTF-8" in err
    assert result["images"] == 1 and result["skipped"] == 2
    assert (tmp_path / "out" / "predictions.csv").read_text(encoding="utf-8").count("face.png") == 1


def test_output_dir_inside_the_input_folder_is_refused(onnx_path, tmp_path):
    with pytest.raises(DataError, match="inside it"):
        run_main(["--model", str(onnx_path), "--input-dir", str(tmp_path), "--output-dir", str(tmp_path / "annotated")])
    assert not (tmp_path / "annotated").exists()


@pytest.mark.parametrize("size", ["abc", 0, 128.5, True])
def test_unusable_image_size_in_the_metadata_is_one_error(onnx_path, tmp_path, size):
    import json as json_module
    import onnx
    proto = onnx.load(str(onnx_path))
    meta = next(p for p in proto.metadata_props if p.key == "metadata.json")
    data = json_module.loads(meta.value)
    data["preprocess"]["image_size"] = size
    meta.value = json_module.dumps(data)
    bad = tmp_path / "model.onnx"
    onnx.save(proto, str(bad))
    with pytest.raises(DataError, match="image_size"):
        inference.AgeEstimator(bad, whole_image=True)


HUGE = "1" + "0" * 400  # a whole number json reads exactly, and math.isfinite cannot take


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["preprocess"].update(denoise="false"), "denoise must be true or false"),  # text: would switch it on
    (lambda m: m["preprocess"].update(deblur=True, deblur_amount="0.5"), "deblur_amount"),  # failed at a photo
    (lambda m: m["preprocess"].update(deblur=True, deblur_amount=float("nan")), "deblur_amount"),
    (lambda m: m["preprocess"].update(std=[0, 0, 0]), "std must be positive"),
    (lambda m: m["preprocess"].update(mean=[0.5]), "mean must be 3 numbers"),
    (lambda m: m.update(tta_flip="no"), "tta_flip"),  # text: would mirror every face
    (lambda m: m.update(tta_zoom=[None]), "tta_zoom"),
    (lambda m: m.update(tta_zoom=["HUGE"]), "tta_zoom"),
    (lambda m: m.update(min_age="HUGE"), "min_age"),
    (lambda m: m.update(age_map={"x": [1, "HUGE"], "y": [1, 2]}), "age map"),
    (lambda m: m.update(interval={"method": "split conformal", "bands": [{"from": None, "errors": [1.0]},
                                                                         {"from": float("nan"), "errors": [2.0]}]}),
     "age-interval"),
    (lambda m: m.update(crop={"kind": "chip", "landmarks": 5, "size": 64, "template": [[1, 2], [3]]}), "template"),
])
def test_a_model_file_with_metadata_of_the_wrong_kind_is_one_error(tmp_path, edit, message):
    """A model from elsewhere is read, never trusted: each of these once gave a traceback, a silent
    mistake (a filter switched on, every face mirrored), or an interval from the wrong band."""
    import onnx
    path = constant_model(tmp_path / "model.onnx")
    proto = onnx.load(str(path))
    entry = next(p for p in proto.metadata_props if p.key == "metadata.json")
    metadata = json.loads(entry.value)
    edit(metadata)
    entry.value = json.dumps(metadata).replace('"HUGE"', HUGE)
    onnx.save(proto, str(path))
    with pytest.raises(DataError, match=message) as caught:
        inference.AgeEstimator(path, whole_image=True)
    assert len(str(caught.value)) < 400  # the 400 digits are not echoed


@pytest.mark.parametrize("text, message", [("{", "unreadable metadata"), ("[" * 100000, "unreadable metadata"),
                                           ("[1]", "no JSON object")])
def test_model_metadata_that_is_no_json_object_is_one_error_naming_the_file(tmp_path, text, message):
    import onnx
    path = constant_model(tmp_path / "model.onnx")
    proto = onnx.load(str(path))
    next(p for p in proto.metadata_props if p.key == "metadata.json").value = text
    onnx.save(proto, str(path))
    with pytest.raises(DataError, match=message) as caught:
        inference.AgeEstimator(path, whole_image=True)
    assert str(path) in str(caught.value)


def test_outputs_inside_a_labelled_data_set_are_refused(onnx_path, faces, tmp_path):
    data = tmp_path / "DATA"
    for age in (25, 26):
        write_rgb(data / str(age) / "face.png", scene(faces[:1]))
    src = write_rgb(tmp_path / "src" / "face.png", scene(faces[:1]))
    photos = tmp_path / "photos"
    photos.mkdir()
    write_rgb(photos / "a.png", scene(faces[:1]))
    for argv in (["--input-dir", str(photos), "--output-dir", str(data / "26" / "annotated")],
                 ["--image", str(src), "--output", str(data / "25" / "face_age.png")],
                 ["--image", str(src), "--output", str(tmp_path / "o.png"), "--save-crops", str(data / "crops")]):
        with pytest.raises(DataError, match="holds a labelled face data set"):
            run_main(["--model", str(onnx_path), *argv])
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*")) == ["25", "25/face.png", "26", "26/face.png"]


def test_a_torchscript_model_runs_only_where_it_is_vouched_for(model_path, onnx_path, tmp_path, monkeypatch):
    """A model.jit is a program: refused without --trust-model (the ONNX file beside it named instead), loaded
    with it, and loaded without it where it is the shipped file, not another saved beside it."""
    import shutil
    import checkpoints
    from checkpoints import SHIPPED_MODELS, read_export
    proc = _cli("--model", str(model_path), "--image", _a_photo(tmp_path))
    assert_one_line_error(proc, "is TorchScript, which runs code from the file", "--trust-model", "model.onnx")
    with pytest.raises(DataError, match="runs code from the file"):
        inference.AgeEstimator(model_path)
    assert read_export(model_path, trust_code=True)[1] == read_export(onnx_path)[1]
    assert read_export(next(SHIPPED_MODELS.glob("*.jit")))[1]["model_name"]
    shipped_folder = tmp_path / "models"
    shipped_folder.mkdir()
    monkeypatch.setattr(checkpoints, "SHIPPED_TORCHSCRIPT", shipped_folder / "shipped.jit")
    for name in ("shipped.jit", "downloaded.jit"):
        shutil.copy(model_path, shipped_folder / name)
    assert read_export(shipped_folder / "shipped.jit")[1] == read_export(onnx_path)[1]
    with pytest.raises(DataError, match="runs code from the file"):
        read_export(shipped_folder / "downloaded.jit")


def test_a_model_whose_pixels_another_preprocessing_version_made_is_noted(tmp_path):
    """An export records custom_dataset.PREPROCESS_VERSION of its training pixels: one of another version gets a
    note (inference.py prints it), one of this version or from before the record none."""
    from custom_dataset import PREPROCESS_VERSION
    note = lambda extra: inference.AgeEstimator(constant_model(tmp_path / "m.onnx", extra=extra),
                                                whole_image=True).preprocess_note
    assert f"preprocessing version {PREPROCESS_VERSION - 1}, and this code makes version {PREPROCESS_VERSION}" \
        in note({"preprocess_version": PREPROCESS_VERSION - 1})
    assert note({"preprocess_version": PREPROCESS_VERSION}) == note(None) == ""


def test_a_face_under_min_face_does_not_hide_a_larger_dim_one(utkface_chips, tmp_path):
    """inference.py's --min-face is a size filter the detector's cascade knows: a 72 px face the first pass finds
    under --min-face 120 lets the contrast pass find the dim 200 px face, and is reported as dropped; with
    --min-score the first pass's face, dropped, ends the search."""
    scene = small_face_beside_a_large_dim_one(utkface_chips)
    model = constant_model(tmp_path / "m.onnx")
    found, dropped = inference.AgeEstimator(model, detector="auto", min_face=120).detect(scene)
    assert [f.source for f in found] == ["hog_contrast"] and [r for _, r in dropped] == ["min_face"]
    found, dropped = inference.AgeEstimator(model, detector="auto", min_score=5).detect(scene)
    assert found == [] and [(f.source, r) for f, r in dropped] == [("hog", "min_score")]


def test_lift_dark_golden():
    """One gain brings a face's exposure (the 95th percentile of its luma) up to the floor; a face exposed enough
    already, or floor 0, is left as is."""
    from custom_dataset import MAX_LIFT, exposure_luma, lift_dark
    dark = np.array([[[20, 40, 60], [40, 80, 120]]], np.uint8)  # luma 36.3 and 72.6: 95th percentile 70.785
    assert exposure_luma(dark) == pytest.approx(36.3 + 0.95 * 36.3, abs=1e-3)
    lifted = lift_dark(dark, 100.0)
    assert lifted.tolist() == np.clip(np.floor(dark * (100.0 / 70.785) + 0.5), 0, 255).astype(np.uint8).tolist()
    assert lifted.tolist() == [[[28, 57, 85], [57, 113, 170]]]
    assert lift_dark(dark, 70.0) is dark and lift_dark(dark, 0) is dark
    bright = lift_dark(np.array([[[200, 10, 10], [10, 10, 10]]], np.uint8), 120.0)  # clipped at 255, not wrapped
    assert bright.tolist() == [[[255, 19, 19], [19, 19, 19]]] and bright.dtype == np.uint8
    # at most MAX_LIFT: a nearly black face is not stretched into noise
    assert lift_dark(np.full((8, 8, 3), 5, np.uint8), 117.0).max() == round(5 * MAX_LIFT)
    # a dark-skinned face in good light (dark on the whole, bright in its highlights) is not a dim photo; its mean
    # luma (80) would have taken it for one
    skin = np.full((40, 40, 3), 50, np.uint8)
    skin[:8] = 200  # a fifth of it bright: eyes, highlights, background
    assert lift_dark(skin, 117.0) is skin
    # a non-contiguous view (a mirrored frame) is read as it looks
    assert np.array_equal(lift_dark(dark[:, ::-1], 100.0), lifted[:, ::-1])


def test_a_face_darker_than_the_floor_is_brightened_before_the_model_sees_it(tmp_path):
    """The default floor (or the model's own dark_floor) brightens a dim face's model input; a face bright
    enough passes unchanged; --dark-floor 0 turns it off; a bad value is one line."""
    from custom_dataset import exposure_luma as luma
    model = constant_model(tmp_path / "m.onnx")
    face = np.repeat(np.linspace(100, 220, 64)[None, :, None], 64, axis=0).repeat(3, axis=2).astype(np.uint8)  # smooth:
    # its 95th percentile survives the resize to the model's 32 px
    dim = (face * 0.2).astype(np.uint8)
    default = inference.AgeEstimator(model, whole_image=True)
    assert default.dark_floor == inference.DEFAULT_DARK_FLOOR and "brightened" in default.describe()
    assert luma(default.model_inputs([dim])[0]) == pytest.approx(inference.DEFAULT_DARK_FLOOR, abs=3)
    assert np.array_equal(default.model_inputs([face]), inference.AgeEstimator(
        model, whole_image=True, dark_floor=0).model_inputs([face]))
    off = inference.AgeEstimator(model, whole_image=True, dark_floor=0)
    assert luma(off.model_inputs([dim])[0]) == pytest.approx(luma(dim), abs=3) and "brightened" not in off.describe()
    own = inference.AgeEstimator(constant_model(tmp_path / "own.onnx", extra={"dark_floor": 100.0}), whole_image=True)
    assert own.dark_floor == 100.0
    assert inference.AgeEstimator(tmp_path / "own.onnx", whole_image=True, dark_floor=30).dark_floor == 30.0
    for bad in (255, True, "dim", float("nan")):
        with pytest.raises(DataError, match="--dark-floor must be"):
            inference.AgeEstimator(model, whole_image=True, dark_floor=bad)
    for bad in ("dim", True):  # True is an int to Python: not a luma of 1
        constant_model(tmp_path / "bad.onnx", extra={"dark_floor": bad})
        with pytest.raises(DataError, match="dark_floor"):
            inference.AgeEstimator(tmp_path / "bad.onnx", whole_image=True)
