"""Tests of inference.py's everyday use: the Python API, --json, where outputs go, --min-face/--min-score,
the out-of-training-range flag, --video 0 without a camera and --device cuda without CUDA.

The model is a tiny ONNX graph built here in milliseconds (no training): it answers one fixed age for
every face and carries the metadata train.py writes, with a training range chosen per test.
"""
import csv
import json
import os
import re
import time
from pathlib import Path
from shlex import quote as shlex_quote

import cv2
import numpy as np
import pytest

import inference
from conftest import REPO, assert_one_line_error, constant_model, detectable_faces, run_script, scene, write_rgb
from custom_dataset import DataError, labels_faces_inside

cv2.setNumThreads(1)

ORANGE = np.array(inference.RANGE_COLOUR)


# ----------------------------------------------------------------------------------------------
# Helpers



@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """Age 30, trained on 20-40: inside the range."""
    return constant_model(tmp_path_factory.mktemp("models") / "model.onnx")


@pytest.fixture(scope="module")
def faces():
    return detectable_faces(2)


def run_main(argv):
    detector = [] if "--whole-image" in argv else ["--detector", "haar"]  # the generated faces are Haar's to find
    return inference.main(inference.get_args_parser().parse_args([*argv, "--threads", "1", *detector]))


def photos(folder, faces):
    """folder/two.jpg (two faces) and folder/none.png (no face)."""
    write_rgb(folder / "two.jpg", scene(faces))
    write_rgb(folder / "none.png", np.full((120, 160, 3), 90, np.uint8))
    return folder


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------------------------
# Python API

def test_api_on_a_path_an_array_and_a_batch(model, faces, tmp_path):
    rgb = scene(faces)
    path = write_rgb(tmp_path / "two.png", rgb)
    estimator = inference.AgeEstimator(model, detector="haar")
    from_path = estimator.predict(path)
    assert len(from_path) == 2
    assert set(from_path[0]) == {"box", "score", "detector", "age", "outside_training_range"}
    assert from_path[0]["age"] == pytest.approx(30.0) and from_path[0]["outside_training_range"] is False
    assert all(len(f["box"]) == 4 and all(isinstance(v, int) for v in f["box"]) for f in from_path)
    assert estimator.predict(rgb) == from_path
    batch = estimator.predict([path, rgb, np.full((100, 100, 3), 90, np.uint8)])
    assert batch[:2] == [from_path, from_path] and batch[2] == []


def test_readme_example(tmp_path, faces, capsys, monkeypatch):
    """The README's example, read from the README, with the shipped model (a photo path swapped in)."""
    if not inference.DEFAULT_MODEL.is_file():
        pytest.skip("the shipped model is not in models/")
    photo = write_rgb(tmp_path / "photo.jpg", scene(faces))
    monkeypatch.chdir(REPO)
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Use it from Python"):]
    start = section.index("```python\n") + len("```python\n")
    example = section[start:section.index("\n```", start)]
    assert "AgeEstimator(" in example and "predict(\"photo.jpg\")" in example
    exec(example.replace('"photo.jpg"', repr(str(photo))), {})
    out = capsys.readouterr().out
    assert "training ages 1-116" in out and "training data: UTKFace" in out
    faces_printed = re.findall(r"^\(\d+, \d+, \d+, \d+\) \d+\.\d (?:True|False)$", out, re.M)
    assert len(faces_printed) == len(faces)  # one line per face of the scene


def test_describe_names_the_training_ages_and_data(tmp_path):
    described = inference.AgeEstimator(constant_model(tmp_path / "a.onnx"), whole_image=True).describe()
    assert "training ages 20-40" in described and "training data: generated faces for the tests" in described
    assert "views" not in described  # one view: nothing averaged, nothing said
    averaged = inference.AgeEstimator(constant_model(tmp_path / "a.onnx"), whole_image=True)
    averaged.metadata["tta_flip"], averaged.tta_zoom = True, (0.95, 0.9)
    assert "mean of 6 views per face (mirror and centred 95%, 90% crops)" in averaged.describe()
    old = inference.AgeEstimator(constant_model(tmp_path / "b.onnx", min_age=None, max_age=None, data=None),
                                 whole_image=True)
    assert "training data: not recorded in this model" in old.describe()
    assert old.predict(np.zeros((64, 64, 3), np.uint8))[0]["outside_training_range"] is None  # unknown


# ----------------------------------------------------------------------------------------------
# --json

def test_json_file_and_json_lines_on_stdout(model, faces, tmp_path, capsys):
    in_dir = photos(tmp_path / "in", faces)
    result = run_main(["--model", str(model), "--input-dir", str(in_dir), "--output-dir", str(tmp_path / "out"),
                       "--json"])
    assert result["json"] == str(tmp_path / "out" / "predictions.json")
    saved = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [(o["file"], o["face_found"], len(o["faces"])) for o in saved] == [("none.png", False, 0), ("two.jpg", True, 2)]
    face = saved[1]["faces"][0]
    assert face["age"] == 30.0 and face["outside_training_range"] is False and face["detector"] == "haar"
    assert len(face["box"]) == 4 and 0 <= face["score"]
    assert len(read_csv(tmp_path / "out" / "predictions.csv")) == 3  # the CSV stays
    capsys.readouterr()

    run_main(["--model", str(model), "--input-dir", str(in_dir), "--output-dir", str(tmp_path / "out2"), "--json", "-"])
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [json.loads(line) for line in lines] == saved  # stdout: the JSON lines and nothing else
    assert "training ages" in captured.err and "images/s" in captured.err
    assert not (tmp_path / "out2" / "predictions.json").exists()


def test_json_takes_no_other_value(model, tmp_path):
    with pytest.raises(DataError, match="--json takes no value"):
        run_main(["--model", str(model), "--image", str(tmp_path / "x.jpg"), "--json", "out.json"])


# ----------------------------------------------------------------------------------------------
# Where outputs go

def test_default_output_folder_is_in_the_current_folder(model, faces, tmp_path, monkeypatch):
    in_dir = photos(tmp_path / "photos", faces)
    before = sorted(p.name for p in in_dir.iterdir())
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = run_main(["--model", str(model), "--input-dir", str(in_dir)])
    out = work / "inference_outputs" / "photos"
    assert sorted(p.name for p in out.iterdir()) == ["none_age.png", "predictions.csv",
                                                   "predictions_source.json", "two_age.jpg"]
    assert result["output_dir"] == str(Path("inference_outputs") / "photos")
    assert sorted(p.name for p in in_dir.iterdir()) == before  # nothing written among the inputs

    image = run_main(["--model", str(model), "--image", str(in_dir / "two.jpg"), "--json"])
    assert image["output"] == str(Path("inference_outputs") / "two" / "two_age.jpg")
    assert sorted(p.name for p in (work / "inference_outputs" / "two").iterdir()) == [
        "predictions.csv", "predictions.json", "predictions_source.json", "two_age.jpg"]

    # the outputs are never read as photos: not the output folder, not annotated copies among the photos
    with pytest.raises(DataError, match="inference_outputs folder"):
        run_main(["--model", str(model), "--input-dir", str(out), "--output-dir", str(tmp_path / "again")])
    (in_dir / "two_age.jpg").write_bytes((out / "two_age.jpg").read_bytes())
    run_main(["--model", str(model), "--input-dir", str(in_dir), "--output-dir", str(tmp_path / "again")])
    assert [r["file"] for r in read_csv(tmp_path / "again" / "predictions.csv")] == ["none.png", "two.jpg", "two.jpg"]


def test_outputs_among_the_inputs_are_refused(model, faces, tmp_path, monkeypatch):
    in_dir = photos(tmp_path / "photos", faces)
    monkeypatch.chdir(in_dir)
    for argv, words in ((["--input-dir", ".", "--output-dir", "sub"], "inside it"),
                        (["--image", "two.jpg", "--output-dir", "annotated"], "the folder of the input file"),
                        (["--image", str(in_dir / "two.jpg"), "--output", str(tmp_path / "o.jpg"),
                          "--save-crops", "crops"], "--save-crops")):
        with pytest.raises(DataError, match=words):  # refused before the model is read: this one is not there
            run_main(["--model", str(tmp_path / "never_read.onnx"), *argv])
    assert sorted(p.name for p in in_dir.iterdir()) == ["none.png", "two.jpg"]
    # the README's first command, run in the photo's folder: the default folder is allowed there, and a later
    # --input-dir of that folder reads the photos alone
    run_main(["--model", str(model), "--image", "two.jpg"])
    assert sorted(p.name for p in (in_dir / "inference_outputs" / "two").iterdir()) == [
        "predictions.csv", "predictions_source.json", "two_age.jpg"]
    run_main(["--model", str(model), "--input-dir", "."])
    assert [r["file"] for r in read_csv(in_dir / "inference_outputs" / "photos" / "predictions.csv")] == [
        "none.png", "two.jpg", "two.jpg"]
    (in_dir / "inference_outputs" / "two" / "predictions.csv").unlink()
    assert sorted(p.name for p in in_dir.iterdir()) == ["inference_outputs", "none.png", "two.jpg"]
    # an explicit --output file is the user's choice, even beside the input (never the input itself)
    run_main(["--model", str(model), "--image", "two.jpg", "--output", "two_age.jpg"])
    assert sorted(p.name for p in in_dir.iterdir()) == ["inference_outputs", "none.png", "predictions.csv",
                                                        "predictions_source.json", "two.jpg", "two_age.jpg"]
    with pytest.raises(DataError, match="is the input file"):
        run_main(["--model", str(model), "--image", "two.jpg", "--output", "two.jpg"])


def test_paths_that_are_not_utf8_are_one_line_before_opencv_sees_them(model, faces, tmp_path):
    import os
    odd = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9"))  # as Python hands such a name over
    photo = write_rgb(tmp_path / "caf.png", scene(faces[:1]))
    os.link(photo, os.fsencode(odd + ".png"))  # by bytes: cv2.imwrite itself would crash on the name
    for argv, flag in ((["--image", odd + ".png", "--output-dir", str(tmp_path / "out")], "--image"),
                       (["--image", str(photo), "--output-dir", odd], "--output-dir"),
                       (["--video", odd + ".mp4"], "--video")):
        with pytest.raises(DataError, match=f"{flag} .*not UTF-8"):  # OpenCV would crash (a segfault) on them
            run_main(["--model", str(model), *argv])


def test_inputs_sharing_a_stem_keep_apart_outputs(model, faces, tmp_path):
    in_dir = tmp_path / "in"
    for name in ("photo.jpg", "photo.png", "a.JPG", "a.jpg", "b.png"):
        write_rgb(in_dir / name, scene(faces[:1]))
    result = run_main(["--model", str(model), "--input-dir", str(in_dir), "--output-dir", str(tmp_path / "out"),
                       "--save-crops", str(tmp_path / "crops"), "--whole-image"])
    assert result["images"] == 5 and result["faces"] == 5
    # a.JPG and a.jpg differ in case alone, so on a case-blind file system (macOS, Windows) too: a number parts them
    assert sorted(p.name for p in (tmp_path / "crops").iterdir()) == [
        "a.JPG_0.png", "a.jpg~2_0.png", "b_0.png", "photo.jpg_0.png", "photo.png_0.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a.JPG_age.jpg", "a.jpg~2_age.jpg", "b_age.png", "photo.jpg_age.jpg", "photo.png_age.png", "predictions.csv",
        "predictions_source.json"]
    assert inference.output_stems([Path("x/b.png"), Path("x/B.jpg"), Path("x/c.png")]) == {
        Path("x/b.png"): "b.png", Path("x/B.jpg"): "B.jpg", Path("x/c.png"): "c"}  # any case: one stem
    # a.jpg and a.png take their names, which a.jpg.jpg's stem is too: a number keeps it apart
    assert inference.output_stems([Path("a.jpg"), Path("a.png"), Path("a.jpg.jpg"), Path("a.jpg~2.png")]) == {
        Path("a.jpg"): "a.jpg", Path("a.png"): "a.png", Path("a.jpg.jpg"): "a.jpg~2", Path("a.jpg~2.png"): "a.jpg~2~2"}


def test_an_image_whose_outputs_cannot_be_written_is_skipped_and_the_rest_are_kept(model, faces, tmp_path, capsys):
    in_dir = tmp_path / "in"
    long_name = "家" * 83 + ".png"  # 253 bytes, a legal name; NAME_age.png is not (257)
    for name in ("a.png", "家族写真" * 19 + ".png", long_name):
        write_rgb(in_dir / name, scene(faces[:1]))
    result = run_main(["--model", str(model), "--input-dir", str(in_dir), "--output-dir", str(tmp_path / "out"),
                       "--whole-image"])
    assert result["images"] == 2 and result["skipped"] == 1
    assert f"skipping {long_name}" in capsys.readouterr().err
    assert sorted(r["file"] for r in read_csv(tmp_path / "out" / "predictions.csv")) == sorted(
        ["a.png", "家族写真" * 19 + ".png"])  # 228 bytes: written, although its temporary name once was not


def test_a_full_disk_stops_a_folder_run_instead_of_skipping_every_image(model, faces, tmp_path, monkeypatch):
    import custom_dataset
    in_dir = tmp_path / "in"
    for name in ("a.png", "b.png"):
        write_rgb(in_dir / name, scene(faces[:1]))

    def full(path, write):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(custom_dataset, "atomic_write", full)
    with pytest.raises(DataError, match="No space left on device"):
        run_main(["--model", str(model), "--input-dir", str(in_dir), "--output-dir", str(tmp_path / "out"),
                  "--whole-image"])


def three_photos_stopping_at_b(tmp_path, faces, monkeypatch, stop):
    """in/a.png, b.png, c.png, with process_image raising stop at b.png; the folder."""
    in_dir = tmp_path / "in"
    for name in ("a.png", "b.png", "c.png"):
        write_rgb(in_dir / name, scene(faces[:1]))
    stopping_at_b(monkeypatch, stop)
    return in_dir


def stopping_at_b(monkeypatch, stop):
    """process_image raising stop at b.png from now on."""
    real = inference.process_image

    def stop_at_b(estimator, path, *rest, **kwargs):
        if Path(path).name == "b.png":
            raise stop
        return real(estimator, path, *rest, **kwargs)
    monkeypatch.setattr(inference, "process_image", stop_at_b)


def test_ctrl_c_in_a_folder_run_keeps_the_predictions_of_the_images_already_annotated(model, faces, tmp_path,
                                                                                        monkeypatch, capsys):
    in_dir = three_photos_stopping_at_b(tmp_path, faces, monkeypatch, KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        run_main(["--model", str(model), "--input-dir", str(in_dir), "--output-dir", str(tmp_path / "out"),
                  "--whole-image", "--json"])
    assert [r["file"] for r in read_csv(tmp_path / "out" / "predictions.csv")] == ["a.png"]
    assert [o["file"] for o in json.loads((tmp_path / "out" / "predictions.json").read_text())] == ["a.png"]
    assert "interrupted after 1 of 3 images" in capsys.readouterr().err


def test_a_gray_or_mirrored_frame_gets_the_same_faces_and_ages_as_its_rgb_copy(model, faces):
    estimator = inference.AgeEstimator(model, detector="haar", threads=1)
    rgb = scene(faces[:1])
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    for image, same in ((gray, np.repeat(gray[..., None], 3, 2)), (rgb[:, ::-1], np.ascontiguousarray(rgb[:, ::-1]))):
        got = estimator.analyse(image).faces  # the API's own entry, without predict()'s as_rgb
        want = estimator.analyse(same).faces
        assert len(got) == 1 and got == want


def test_a_tiny_or_empty_array_is_one_error_as_a_tiny_file_is():
    from PIL import Image
    for image in (np.zeros((0, 0, 3), np.uint8), np.zeros((10, 40, 3), np.uint8), Image.new("RGB", (40, 12))):
        with pytest.raises(DataError, match="too small to hold a face"):
            inference.as_rgb(image)
    assert inference.as_rgb(np.zeros((16, 16), np.uint8)).shape == (16, 16, 3)


def test_a_video_rate_that_is_a_time_base_is_written_at_25_frames_a_second(capsys):
    assert [inference.frame_rate(r) for r in (30.0, 59.94, 480.0, 0.0, float("nan"), 90000.0)] == [
        30.0, 59.94, 480.0, 25.0, 25.0, 25.0]  # 480: a high-speed camera's own rate
    assert capsys.readouterr().err.count("not a frame rate") == 2  # nan and 90000; 0 is "none reported"


def test_a_later_box_is_drawn_under_an_earlier_faces_label():
    blank = np.full((400, 400, 3), 120, np.uint8)
    first, second = (100, 200, 60, 60), (130, 150, 200, 200)  # the second's left side runs through the first's label
    alone = inference.annotate(blank, [first], ["Age: 34"])
    label = (alone != blank).any(-1)
    label[200:] = False  # the first face's label band, above its box
    ys, xs = np.nonzero(label)
    assert (inference.annotate(blank, [second], ["Age: 50"])[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
            != blank[0, 0]).any()  # the second box does cross it
    both = inference.annotate(blank, [first, second], ["Age: 34", "Age: 50"])
    np.testing.assert_array_equal(both[label], alone[label])


def test_pil_images_and_rgba_arrays_are_decoded_as_files_are(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turn 90 degrees to show
    Image.fromarray(rng.integers(0, 256, (60, 100, 3), dtype=np.uint8)).save(rotated, exif=exif)
    rgba = rng.integers(0, 256, (40, 50, 4), dtype=np.uint8)
    rgba[0, 0, 3] = 0  # transparent: black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(np.full((30, 40), 4000, np.uint16)).save(tmp_path / "deep.png")  # 16-bit gray
    for name in ("rotated.jpg", "alpha.png", "deep.png"):
        from_file = inference.as_rgb(tmp_path / name)
        with Image.open(tmp_path / name) as image:
            np.testing.assert_array_equal(inference.as_rgb(image), from_file)
    assert inference.as_rgb(tmp_path / "rotated.jpg").shape == (100, 60, 3)
    from_array = inference.as_rgb(rgba)
    np.testing.assert_array_equal(from_array, inference.as_rgb(tmp_path / "alpha.png"))
    assert from_array[0, 0].tolist() == [0, 0, 0]


def test_an_interval_without_an_upper_bound_is_null_in_json_and_empty_in_the_csv():
    face = {"box": (1, 2, 30, 30), "score": 1.0, "detector": "haar", "age": 65.0, "age_low": 50.0,
            "age_high": float("inf"), "outside_training_range": False}
    result = inference.ImageResult("p.jpg", [face])
    saved = json.loads(json.dumps(result.to_json(), allow_nan=False))  # strict JSON: no Infinity
    assert saved["faces"][0]["age_low"] == 50.0 and saved["faces"][0]["age_high"] is None
    assert result.csv_rows()[0]["age_high"] == "" and result.csv_rows()[0]["age_low"] == "50.00"
    assert result.lines()[0].endswith("age 65.0 (>50.0)")
    assert inference._labels([65.0], [False], [(50.0, float("inf"))]) == ["Age: 65 (>50)"]


def test_a_frame_time_is_the_decoders_timestamp_where_there_is_one():
    class Capture:  # a variable-rate stream: frame 3 shown at 0.412 s, not 3 / 25
        def __init__(self, msec):
            self.msec = msec

        def get(self, prop):
            assert prop == cv2.CAP_PROP_POS_MSEC
            return self.msec
    assert inference.frame_seconds(Capture(412.0), 3, 25.0) == pytest.approx(0.412)
    assert inference.frame_seconds(Capture(0.0), 3, 25.0) == pytest.approx(0.12)  # no timestamp: index / rate
    assert inference.frame_seconds(Capture(float("nan")), 0, 25.0) == 0.0
    assert 0 <= inference.frame_seconds(Capture(412.0), 3, 25.0, camera_start=time.perf_counter()) < 1


def test_a_video_face_is_flagged_by_the_age_it_shows(model, faces):
    estimator = inference.AgeEstimator(model, detector="haar", threads=1)  # always 30, trained on 20-40
    rgb = scene(faces[:1])
    box = estimator.analyse(rgb, "f").faces[0]["box"]
    tracker = inference.Tracker(alpha=0.3)
    tracker.update([box], [10.0])  # the track so far: 10 years; 0.3 * 30 + 0.7 * 10 = 16 is shown
    written = []
    video = type("Video", (), {"fps": 10.0, "write": lambda self, frame, seconds=0.0: written.append(frame)})()
    result = inference._annotate_frame(estimator, tracker, rgb, 1, "f", 0.1, video)
    assert result.faces[0]["outside_training_range"] is False and result.faces[0]["age_smoothed"] == 16.0
    assert (np.abs(written[0].astype(int) - ORANGE).sum(axis=2) == 0).any()  # drawn in orange: "16?"


def test_an_age_map_without_its_method_name_is_described(tmp_path):
    model = constant_model(tmp_path / "model.onnx", age_map={"x": [0.0, 100.0], "y": [0.0, 100.0]})
    assert "ages corrected by an age map" in inference.AgeEstimator(model, whole_image=True).describe()


# ----------------------------------------------------------------------------------------------
# Filters and the training-range flag

def test_a_box_min_face_drops_does_not_suppress_the_face_around_it(model, monkeypatch):
    """--min-face is applied before duplicate boxes go: a strong 20 px box inside a 60 px face made the face
    a duplicate, and --min-face 40 then dropped the 20 px box: no face at all."""
    import faces as face_pipeline
    monkeypatch.setattr(face_pipeline, "hog_faces", lambda gray, *a, **k: [((100, 100, 20, 20), 2.0),
                                                                          ((80, 80, 60, 60), 1.0),
                                                                          ((200, 20, 20, 20), 1.5)])
    estimator = inference.AgeEstimator(model, detector="hog", min_face=40)
    kept, dropped = estimator.detect(np.full((240, 320, 3), 100, np.uint8))
    assert [tuple(f.box) for f in kept] == [(80, 80, 60, 60)]
    # a small face elsewhere is dropped and counted; the small box inside the kept face is part of it
    assert [(tuple(f.box), reason) for f, reason in dropped] == [((200, 20, 20, 20), "min_face")]
    # judged on the box as reported: 60 px tall but 30 px inside the photo is narrower than 40
    monkeypatch.setattr(face_pipeline, "hog_faces", lambda gray, *a, **k: [((-30, 80, 60, 60), 1.0)])
    kept, dropped = estimator.detect(np.full((240, 320, 3), 100, np.uint8))
    assert kept == [] and [(tuple(f.box), reason) for f, reason in dropped] == [((0, 80, 30, 60), "min_face")]


def test_faces_under_the_default_min_face_are_dropped_and_counted_unless_it_is_0(model, monkeypatch):
    """Faces under DEFAULT_MIN_FACE px are left out by default (bench_detection.py --size-light: their age error
    rises by half or more); --min-face 0 keeps them, from Python and from the command line."""
    import faces as face_pipeline
    small = inference.DEFAULT_MIN_FACE - 4
    monkeypatch.setattr(face_pipeline, "hog_faces", lambda gray, *a, **k: [((20, 20, 80, 80), 1.0),
                                                                          ((200, 40, small, small), 1.5)])
    photo = np.full((240, 320, 3), 100, np.uint8)
    kept, dropped = inference.AgeEstimator(model, detector="hog").detect(photo)
    assert [tuple(f.box) for f in kept] == [(20, 20, 80, 80)]
    assert [(tuple(f.box), reason) for f, reason in dropped] == [((200, 40, small, small), "min_face")]
    kept, dropped = inference.AgeEstimator(model, detector="hog", min_face=0).detect(photo)
    assert len(kept) == 2 and dropped == []
    # a --whole-image input is a crop of any size, not a detector's box: no default filter
    assert inference.AgeEstimator(model, whole_image=True).detect(np.full((24, 24, 3), 100, np.uint8))[0]


def test_min_face_and_min_score_drop_and_count(model, faces, tmp_path, capsys):
    src = write_rgb(tmp_path / "in" / "two.jpg", scene(faces))
    kept = run_main(["--model", str(model), "--image", str(src), "--output-dir", str(tmp_path / "a"), "--min-face", "100"])
    assert len(kept["boxes"]) == 2 and kept["min_face"] == 0
    capsys.readouterr()
    result = run_main(["--model", str(model), "--image", str(src), "--output-dir", str(tmp_path / "b"),
                       "--min-face", "400", "--json"])
    out = capsys.readouterr().out
    assert result["boxes"] == [] and result["min_face"] == 2
    assert "2 faces dropped by --min-face 400" in out and "no face found (2 dropped" in out
    row = read_csv(tmp_path / "b" / "predictions.csv")[0]
    assert (row["face_found"], row["faces_dropped"]) == ("false", "2")  # not a photo without a face
    assert [r["faces_dropped"] for r in read_csv(tmp_path / "a" / "predictions.csv")] == ["0", "0"]
    saved = json.loads((tmp_path / "b" / "predictions.json").read_text())[0]
    assert saved["faces"] == [] and [d["reason"] for d in saved["dropped"]] == ["min_face", "min_face"]
    result = run_main(["--model", str(model), "--image", str(src), "--output-dir", str(tmp_path / "c"),
                       "--min-score", "1e9"])
    assert result["boxes"] == [] and result["min_score"] == 2
    assert "2 faces dropped by --min-score 1e+09" in capsys.readouterr().out
    with pytest.raises(DataError, match="--whole-image uses no detector"):  # it would drop every image
        run_main(["--model", str(model), "--image", str(src), "--output-dir", str(tmp_path / "d"), "--whole-image",
                  "--min-score", "1.5"])


def test_outside_training_range_rule():
    rule = inference.outside_training_range
    assert [rule(a, (20, 40)) for a in (19.0, 20.5, 20.6, 30.0, 39.4, 39.5, 45.0)] == [
        True, True, False, False, False, True, True]
    assert rule(30.0, None) is None


def test_an_age_outside_the_training_range_is_flagged(faces, tmp_path, capsys):
    model = constant_model(tmp_path / "m" / "model.onnx", age=30.0, min_age=50, max_age=60)
    src = write_rgb(tmp_path / "in" / "two.jpg", scene(faces))
    out = tmp_path / "out"
    result = run_main(["--model", str(model), "--image", str(src), "--output-dir", str(out), "--json"])
    assert result["outside"] == 2
    printed = capsys.readouterr().out
    assert "2 faces (2 outside the training ages 50-60)" in printed and "(outside the training ages)" in printed
    assert [r["outside_training_range"] for r in read_csv(out / "predictions.csv")] == ["true", "true"]
    assert all(f["outside_training_range"] is True
               for f in json.loads((out / "predictions.json").read_text())[0]["faces"])
    annotated = cv2.cvtColor(cv2.imread(str(out / "two_age.jpg")), cv2.COLOR_BGR2RGB).astype(int)
    assert (np.abs(annotated - ORANGE).max(axis=2) < 40).sum() > 200  # orange boxes and labels
    assert inference._labels([30.2, 41.0], [False, True]) == ["Age: 30", "Age: 41?"]


# ----------------------------------------------------------------------------------------------
# Video, camera and device

def test_video_json_frames_and_default_output(model, faces, tmp_path, monkeypatch, capsys):
    src = tmp_path / "clips" / "clip.mp4"
    src.parent.mkdir()
    background = scene([], gap=320)
    writer = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 240))
    for i in range(5):
        frame = background.copy()
        frame[30:190, 40 + 4 * i:200 + 4 * i] = faces[0]
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    monkeypatch.chdir(tmp_path)
    left = tmp_path / "inference_outputs" / "clip" / ".clip_age.999999999.tmp.mp4"  # a killed run's
    left.parent.mkdir(parents=True)
    left.write_bytes(b"partial")
    result = run_main(["--model", str(model), "--video", str(src), "--json", "--max-frames", "4"])
    assert not left.exists()
    assert result["frames"] == 4 and result["output"] == str(Path("inference_outputs") / "clip" / "clip_age.mp4")
    frames = json.loads((tmp_path / "inference_outputs" / "clip" / "predictions.json").read_text())
    assert [f["frame"] for f in frames] == [0, 1, 2, 3]
    assert [f["time"] for f in frames] == [0.0, 0.1, 0.2, 0.3]  # the decoder's time of the frame just read
    assert sum(len(f["faces"]) for f in frames) >= 3  # the face was found, so the next line checks something
    assert all(face["track"] == 1 and face["age_smoothed"] == 30.0 for f in frames for face in f["faces"])
    assert "frame" in capsys.readouterr().err  # the progress bar
    run_main(["--model", str(model), "--video", str(src), "--output-dir", str(tmp_path / "quiet"), "--no-progress"])
    assert capsys.readouterr().err == ""


def test_a_video_never_replaces_another_inputs_outputs_nor_they_its(model, faces, tmp_path, monkeypatch):
    """cardA/clip.mp4 then cardB/clip.mp4, or IMG_1.jpg then IMG_1.mp4 (a phone's motion photo), share the
    default folder: the video replaced the other's predictions.json and annotated copy without a word."""
    monkeypatch.chdir(tmp_path)
    for card in ("cardA", "cardB"):
        src = tmp_path / card / "clip.mp4"
        src.parent.mkdir()
        writer = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 240))
        for _ in range(2):
            writer.write(cv2.cvtColor(scene(faces[:1], gap=320)[:240, :320], cv2.COLOR_RGB2BGR))
        writer.release()
    video = lambda card, *extra: run_main(["--model", str(model), "--video", str(tmp_path / card / "clip.mp4"),
                                           "--json", "--no-progress", *extra])
    video("cardA")
    video("cardA")  # the same video again: its own outputs, replaced
    before = (tmp_path / "inference_outputs" / "clip" / "predictions.json").read_bytes()
    with pytest.raises(DataError, match="predictions.json of .*cardA"):
        video("cardB")
    with pytest.raises(DataError, match="annotated video of .*cardA"):  # without --json: its clip_age.mp4
        run_main(["--model", str(model), "--video", str(tmp_path / "cardB" / "clip.mp4"), "--no-progress"])
    write_rgb(tmp_path / "cardB" / "clip.png", scene(faces[:1]))
    with pytest.raises(DataError, match="a video's predictions.json"):  # a photo of the video's name, --json
        run_main(["--model", str(model), "--image", str(tmp_path / "cardB" / "clip.png"), "--json"])
    assert (tmp_path / "inference_outputs" / "clip" / "predictions.json").read_bytes() == before
    # a photo of the video's name without --json replaces nothing of the video's: both stay named
    run_main(["--model", str(model), "--image", str(tmp_path / "cardB" / "clip.png")])
    names = json.loads((tmp_path / "inference_outputs" / "clip" / "predictions_source.json").read_text())["inputs"]
    assert sorted(i["kind"] for i in names) == ["image", "video"]
    write_rgb(tmp_path / "photos" / "IMG_1.png", scene(faces[:1]))
    run_main(["--model", str(model), "--image", str(tmp_path / "photos" / "IMG_1.png"), "--json",
              "--output-dir", str(tmp_path / "shared")])
    with pytest.raises(DataError, match="predictions.json of .*IMG_1.png"):
        video("cardA", "--output-dir", str(tmp_path / "shared"))
    for card in ("cardA", "cardB"):  # --output FILE: the user's choice of place, each its own file
        run_main(["--model", str(model), "--video", str(tmp_path / card / "clip.mp4"), "--no-progress",
                  "--output", str(tmp_path / "desktop" / f"{card}.mp4")])


def test_a_camera_recording_plays_in_real_time(tmp_path):
    """A camera's frames arrive as fast as they are annotated (here 4 in 1.5 s), not at its reported rate: the
    annotated video shows each frame from its own time until the next (16 slots of 0.1 s for 1.5 s), not all four
    in 0.4 s. A video file's frames are written once each, whatever their timestamps."""
    shades = (0, 80, 160, 240)  # one grey per frame, told apart after mp4's compression
    for realtime, expected in ((True, [0, 0, 0, 80, 160] + [160] * 10 + [240]), (False, list(shades))):
        video = inference._VideoFile(tmp_path / f"camera_{realtime}.mp4", 10.0, realtime=realtime)
        for shade, seconds in zip(shades, (0.0, 0.35, 0.4, 1.5)):
            video.write(np.full((48, 64, 3), shade, np.uint8), seconds)
        video.close(keep=True, frames=4)
        cap = cv2.VideoCapture(str(tmp_path / f"camera_{realtime}.mp4"))
        shown = []
        while (read := cap.read())[0]:
            shown.append(min(shades, key=lambda shade: abs(float(read[1].mean()) - shade)))
        cap.release()
        assert shown == expected


@pytest.mark.slow
def test_camera_that_is_not_there_is_one_line(model):
    if Path("/dev/video0").exists():
        pytest.skip("this machine has a camera 0")
    proc = run_script("inference.py", "--model", model, "--video", "0", "--threads", "1")
    assert_one_line_error(proc, "no camera 0 found")
    assert not (REPO / "inference_outputs" / "camera0").exists()


def test_device_cuda_without_cuda_is_one_error(model):
    import onnxruntime
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA")
    with pytest.raises(DataError, match="--device cuda"):
        inference.AgeEstimator(model, device="cuda")


def test_a_folder_reads_gif_and_jfif_and_names_the_types_it_ignores(model, faces, tmp_path, capsys):
    from PIL import Image
    in_dir = tmp_path / "in"
    write_rgb(in_dir / "a.png", scene(faces[:1]))
    Image.open(in_dir / "a.png").save(in_dir / "b.gif")
    Image.open(in_dir / "a.png").save(in_dir / "c.jfif", "JPEG")
    (in_dir / "a.png").unlink()
    (in_dir / "d.psd").write_bytes(b"a format no reader here knows")
    (in_dir / "notes.txt").write_text("x")
    result = run_main(["--model", str(model), "--input-dir", str(in_dir), "--output-dir", str(tmp_path / "out"),
                       "--whole-image"])
    assert result["images"] == 2 and result["faces"] == 2
    assert "ignored 2 file(s) of other types (.psd, .txt;" in capsys.readouterr().out


HEIC_FIXTURES = Path(__file__).parent / "fixtures"  # made by tests/fixtures/make_heic.py (pillow-heif's encoder)


def test_an_iphone_heic_photo_is_read_upright_and_annotated_as_a_jpeg(model, faces, tmp_path, capsys):
    """HEIC (an iPhone's default) is decoded by pi-heif: the same pixels as the scene it was made from (lossy
    codec), the one stored turned with its rotation in the file comes out upright (not turned twice by its EXIF
    tag), and the annotated copy is a JPEG (nothing here writes HEIC)."""
    from custom_dataset import load_rgb
    expected = scene(faces[:1]).astype(float)
    for name in ("face.heic", "face_turned.heic"):
        rgb = load_rgb(HEIC_FIXTURES / name)
        assert rgb.shape == expected.shape, name
        assert np.abs(rgb - expected).mean() < 6, name
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    (in_dir / "IMG_0001.HEIC").write_bytes((HEIC_FIXTURES / "face_turned.heic").read_bytes())
    result = run_main(["--model", str(model), "--input-dir", str(in_dir), "--output-dir", str(tmp_path / "out")])
    assert result["images"] == 1 and result["faces"] == 1 and "ignored" not in capsys.readouterr().out
    assert (tmp_path / "out" / "IMG_0001_age.jpg").is_file()


def test_the_detector_the_training_chips_were_cut_after_is_the_default(tmp_path, capsys):
    import faces as face_pipeline
    recorded = constant_model(tmp_path / "haar.onnx", crop={**face_pipeline.UTKFACE_CROP, "detector": "haar"})
    estimator = inference.AgeEstimator(recorded)
    assert estimator.pipeline.detector == "haar" and not estimator.detector_note
    assert "haar detector" in estimator.describe() and "cut after the haar detector" in estimator.describe()
    chosen = inference.AgeEstimator(recorded, "hog")
    assert chosen.pipeline.detector == "hog" and "--detector hog may cut these faces" in chosen.detector_note
    plain = inference.AgeEstimator(constant_model(tmp_path / "plain.onnx", crop=face_pipeline.UTKFACE_CROP))
    assert plain.pipeline.detector == face_pipeline.DEFAULT_DETECTOR and not plain.detector_note
    with pytest.raises(DataError, match="crop detector 'yolo'"):
        face_pipeline.check_crop({**face_pipeline.UTKFACE_CROP, "detector": "yolo"})


def test_text_from_a_model_file_reaches_the_terminal_printable_only(tmp_path):
    path = constant_model(tmp_path / "m.onnx", data="\x1b[2J\x1b]0;owned\x07faces\nfake line " + "x" * 500)
    described = inference.AgeEstimator(path, whole_image=True).describe()
    assert "\x1b" not in described and "\x07" not in described and "fake line" in described
    assert len(described.splitlines()) == 3 and len(described.splitlines()[1]) < 260


# ----------------------------------------------------------------------------------------------
# Foreign and broken models, broken pipes, a video that does not read back

def test_a_model_whose_graph_refuses_its_own_input_size_is_one_line(tmp_path, faces):
    from custom_dataset import PreprocessConfig
    wrong = constant_model(tmp_path / "wrong.onnx", preprocess=PreprocessConfig(image_size=48, denoise=False,
                                                                                deblur=False))  # the graph takes 32
    write_rgb(tmp_path / "in" / "face.png", faces[0])
    proc = run_script("inference.py", "--model", wrong, "--image", tmp_path / "in" / "face.png", "--whole-image",
                      "--output-dir", tmp_path / "out", "--threads", "1")
    assert_one_line_error(proc, "wrong.onnx failed on a batch of shape (1, 3, 48, 48)")


def test_a_model_that_returns_no_finite_age_stops_even_a_folder_run(tmp_path, faces, capsys):
    broken = constant_model(tmp_path / "nan.onnx", age=float("nan"))
    estimator = inference.AgeEstimator(broken, whole_image=True, threads=1)
    with pytest.raises(DataError, match="returned nan as an age"):
        estimator.analyse(faces[0], "face")
    in_dir = tmp_path / "in"
    for name in ("a.png", "b.png"):
        write_rgb(in_dir / name, faces[0])
    with pytest.raises(DataError, match="returned nan as an age"):  # the model's fault: not one skip per photo
        run_main(["--model", str(broken), "--input-dir", str(in_dir), "--output-dir", str(tmp_path / "out"),
                  "--whole-image"])
    assert "skipping" not in capsys.readouterr().err


def test_an_unexpected_error_on_one_photo_skips_it_and_keeps_the_others(model, faces, tmp_path, monkeypatch, capsys):
    in_dir = tmp_path / "in"
    for name in ("a.png", "b.png"):
        write_rgb(in_dir / name, faces[0])
    real = inference.AgeEstimator.analyse

    def fails_on_b(self, rgb, name="", shrink=1):
        if str(name).endswith("b.png"):
            raise MemoryError("a 90-megapixel panorama")
        return real(self, rgb, name, shrink)
    monkeypatch.setattr(inference.AgeEstimator, "analyse", fails_on_b)
    result = run_main(["--model", str(model), "--input-dir", str(in_dir), "--output-dir", str(tmp_path / "out"),
                       "--whole-image"])
    assert result["images"] == 1 and result["skipped"] == 1
    assert "skipping b.png: MemoryError" in capsys.readouterr().err
    assert [r["file"] for r in read_csv(tmp_path / "out" / "predictions.csv")] == ["a.png"]


def test_json_lines_into_a_pipe_closed_early_stop_quietly(model, faces, tmp_path):
    import subprocess
    import sys
    in_dir = tmp_path / "in"
    for k in range(3):
        write_rgb(in_dir / f"{k}.png", faces[0])
    command = (f"{shlex_quote(sys.executable)} inference.py --model {shlex_quote(str(model))} --input-dir "
               f"{shlex_quote(str(in_dir))} --output-dir {shlex_quote(str(tmp_path / 'out'))} --whole-image --json - "
               "--threads 1 | head -c 0")
    proc = subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert "Broken pipe" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    assert proc.returncode == 141 and "error" not in proc.stderr, proc.stderr


def test_an_output_that_is_the_input_under_another_name_is_refused(model, faces, tmp_path, monkeypatch):
    import functions
    in_dir = photos(tmp_path / "photos", faces)
    os.link(in_dir / "two.jpg", tmp_path / "TWO.jpg")  # one file, two names, as IMG_1.JPG and img_1.jpg on an SD card
    with pytest.raises(DataError, match="is the input file"):
        run_main(["--model", str(model), "--image", str(in_dir / "two.jpg"), "--output", str(tmp_path / "TWO.jpg")])
    # a folder named another way than its path (a case-blind disk): found by identity, not by name
    (tmp_path / "Photos").symlink_to(in_dir)
    monkeypatch.setattr(Path, "resolve", lambda self, strict=False: Path(os.path.abspath(self)))  # names only
    assert functions.same_or_inside(tmp_path / "Photos" / "new" / "x", in_dir)
    assert not functions.same_or_inside(tmp_path / "elsewhere", in_dir)
    real_stat = Path.stat
    monkeypatch.setattr(Path, "stat", lambda self, **kw: os.stat_result((*real_stat(self)[:1], 0, *real_stat(self)[2:])))
    assert not functions.same_or_inside(tmp_path / "Photos" / "new" / "x", in_dir)  # a mount without inodes
    monkeypatch.setattr(Path, "stat", real_stat)
    with pytest.raises(DataError, match="inside it"):
        run_main(["--model", str(model), "--input-dir", str(in_dir), "--output-dir", str(tmp_path / "Photos" / "a")])


def test_an_output_folder_inside_a_csv_data_set_is_refused(model, faces, tmp_path):
    data = tmp_path / "data"
    write_rgb(data / "imgs" / "a.png", faces[0])
    (data / "labels.csv").write_text("path,age\nimgs/a.png,30\n")
    with pytest.raises(DataError, match="holds a labelled face data set"):
        run_main(["--model", str(model), "--image", str(data / "imgs" / "a.png"), "--output-dir",
                  str(data / "annotated")])
    # eda.py's own output folder names its faces by absolute path, elsewhere: outputs may go there
    out = tmp_path / "eda_out"
    out.mkdir()
    (out / "labels.csv").write_text(f"path,age,hash\n{data / 'imgs' / 'a.png'},30,x\n")
    assert labels_faces_inside(data) and not labels_faces_inside(out)
    for name in ("train.csv", "val.csv"):  # eda.py's splits: several path,age CSVs, absolute paths
        (out / name).write_text(f"path,age,hash\n{data / 'imgs' / 'a.png'},30,x\n")
    assert not labels_faces_inside(out)
    (data / "more.csv").write_text("path,age\nimgs/b.png,40\n")
    assert labels_faces_inside(data)


def test_a_video_that_does_not_read_back_is_not_put_in_place(tmp_path, monkeypatch):
    video = inference._VideoFile(tmp_path / "clip_age.mp4", 10.0)
    video.write(np.zeros((64, 64, 3), np.uint8))
    monkeypatch.setattr(inference._VideoFile, "readable", lambda self: False)  # a disk that filled up
    with pytest.raises(DataError, match="do not read back"):
        video.close(keep=True, frames=1)
    assert list(tmp_path.iterdir()) == []
    video = inference._VideoFile(tmp_path / "clip_age.mp4", 10.0)
    video.write(np.zeros((64, 64, 3), np.uint8))
    monkeypatch.undo()
    video.close(keep=True, frames=1)
    assert [p.name for p in tmp_path.iterdir()] == ["clip_age.mp4"]


def test_a_jpeg_read_at_half_size_reports_its_boxes_in_the_files_pixels(model, faces, tmp_path, monkeypatch, capsys):
    """A JPEG over the pixel limit is read at 1/2 of its size: its boxes were reported in the half-size pixels,
    so the CSV's boxes fell on the wrong part of the user's photo."""
    import custom_dataset
    big = cv2.resize(scene(faces), None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    write_rgb(tmp_path / "big.jpg", big)
    full = run_main(["--image", str(tmp_path / "big.jpg"), "--output", str(tmp_path / "full" / "a.jpg"),
                     "--model", str(model)])
    monkeypatch.setattr(custom_dataset, "MAX_IMAGE_PIXELS", big.shape[0] * big.shape[1] - 1)
    half = run_main(["--image", str(tmp_path / "big.jpg"), "--output", str(tmp_path / "half" / "a.jpg"),
                     "--model", str(model)])
    assert len(full["boxes"]) == len(half["boxes"]) == 2
    for want, got in zip(sorted(full["boxes"]), sorted(half["boxes"])):
        assert np.abs(np.subtract(want, got)).max() <= 12, (want, got)  # one detector, one face, two scales
    assert "read at 1/2 of its size" in capsys.readouterr().out
    rows = read_csv(tmp_path / "half" / "predictions.csv")
    assert [tuple(int(r[k]) for k in "xywh") for r in rows] == [tuple(b) for b in half["boxes"]]
    assert [f["box"] for f in half["result"].to_json()["faces"]] == [list(b) for b in half["boxes"]]
    assert cv2.imread(str(tmp_path / "half" / "a.jpg")).shape[:2] == (big.shape[0] // 2, big.shape[1] // 2)
    estimator = inference.AgeEstimator(model, detector="haar", threads=1)
    assert [f["box"] for f in estimator.predict(str(tmp_path / "big.jpg"))] == [tuple(b) for b in half["boxes"]]
    # --min-face is in the file's pixels too: a 200 px face read at 100 px is no face under 150 px
    side = min(min(b[2], b[3]) for b in half["boxes"])
    kept = run_main(["--image", str(tmp_path / "big.jpg"), "--output", str(tmp_path / "min" / "a.jpg"),
                     "--model", str(model), "--min-face", str(side - 20)])
    assert len(kept["boxes"]) == 2


def test_a_file_without_read_permission_says_so(model, faces, tmp_path, monkeypatch):
    import checkpoints
    photo = write_rgb(tmp_path / "in" / "a.png", faces[0])

    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(inference, "load_rgb_shrunk", denied)
    with pytest.raises(DataError, match="a.png: permission denied"):
        inference._read_image(photo)
    monkeypatch.setattr(checkpoints.os, "access", lambda path, mode: False)  # as for a user without the right
    with pytest.raises(DataError, match="model.onnx: permission denied"):
        checkpoints.onnx_forward(model)


def test_a_model_with_several_outputs_per_face_stops_a_folder_run_instead_of_skipping_each_photo(
        tmp_path, faces, monkeypatch, capsys):
    onnx_path = constant_model(tmp_path / "m.onnx")
    in_dir = tmp_path / "in"
    for name in ("a.png", "b.png"):
        write_rgb(in_dir / name, faces[0])
    real = inference.read_export
    monkeypatch.setattr(inference, "read_export", lambda *a, **k: (
        lambda x: np.zeros((len(x), 116), np.float32), real(*a, **k)[1]))  # a graph of 116 logits per face
    with pytest.raises(DataError, match="116 numbers per image"):
        run_main(["--model", str(onnx_path), "--input-dir", str(in_dir), "--output-dir", str(tmp_path / "out"),
                  "--whole-image"])
    assert "skipping" not in capsys.readouterr().err


def test_a_folder_run_where_no_image_could_be_annotated_fails(tmp_path):
    onnx_path = constant_model(tmp_path / "m.onnx")
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    for name in ("a.jpg", "b.png"):
        (in_dir / name).write_bytes(b"not an image at all")
    proc = run_script("inference.py", "--model", onnx_path, "--input-dir", in_dir, "--output-dir", tmp_path / "out",
                      "--threads", "1")
    assert proc.returncode == 2 and "none of the 2 images" in proc.stderr


def test_a_reader_that_closes_stdout_early_still_gets_the_predictions_written(tmp_path, faces):
    onnx_path = constant_model(tmp_path / "m.onnx")
    import os
    import subprocess
    import sys
    in_dir = tmp_path / "in"
    for i in range(6):
        write_rgb(in_dir / f"{i}.png", faces[i % len(faces)])
    out = tmp_path / "out"
    # unbuffered: each line reaches the pipe at once, as a long run's do once its buffer fills (`| head -1`)
    proc = subprocess.Popen([sys.executable, "inference.py", "--model", str(onnx_path), "--input-dir", str(in_dir),
                             "--output-dir", str(out), "--whole-image", "--threads", "1"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in iter(proc.stdout.readline, b""):  # past the model's description, at the first photo's line
        if b".png" in line:
            break
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "stdout closed after" in err and "Traceback" not in err
    rows = (out / "predictions.csv").read_text().splitlines()
    annotated = [p for p in out.iterdir() if p.suffix == ".png"]
    assert 1 <= len(annotated) < 6 and len(rows) == 1 + len(annotated)  # each annotated copy has its row


@pytest.mark.parametrize("flags, named", [(["--alpha", "0.5"], "--alpha is for --video"),
                                          (["--max-frames", "10"], "--max-frames is for --video"),
                                          (["--no-progress"], "--no-progress is for --video")])
def test_a_flag_that_would_do_nothing_is_refused_in_one_line(tmp_path, faces, flags, named):
    write_rgb(tmp_path / "in" / "face.png", faces[0])
    with pytest.raises(DataError, match=named):
        run_main(["--model", str(constant_model(tmp_path / "m.onnx")), "--image", str(tmp_path / "in" / "face.png"),
                  "--output-dir", str(tmp_path / "out"), *flags])
    assert not (tmp_path / "out").exists()


def test_a_predictions_csv_of_another_input_is_never_replaced(tmp_path, faces, monkeypatch):
    model = constant_model(tmp_path / "m.onnx")
    for card in ("cardA", "cardB"):  # two cameras' photos of one name
        write_rgb(tmp_path / card / "IMG_0001.jpg", faces[0])
    write_rgb(tmp_path / "cardB" / "IMG_0002.jpg", faces[1])
    monkeypatch.chdir(tmp_path)
    run_main(["--model", str(model), "--image", "cardA/IMG_0001.jpg", "--whole-image"])
    out = tmp_path / "inference_outputs" / "IMG_0001"
    before = (out / "predictions.csv").read_bytes()
    with pytest.raises(DataError, match=r"holds the predictions of .*cardA.IMG_0001.jpg"):
        run_main(["--model", str(model), "--image", "cardB/IMG_0001.jpg", "--whole-image"])
    assert (out / "predictions.csv").read_bytes() == before
    run_main(["--model", str(model), "--image", "cardA/IMG_0001.jpg", "--whole-image"])  # the same input: a re-run
    assert (out / "predictions.csv").read_bytes() == before
    # single photos into one folder: each keeps its rows (a re-run replaces its own)
    for image in ("cardA/IMG_0001.jpg", "cardB/IMG_0002.jpg", "cardB/IMG_0002.jpg"):
        run_main(["--model", str(model), "--image", image, "--output-dir", "singles", "--whole-image", "--json"])
    assert [r["file"] for r in read_csv(tmp_path / "singles" / "predictions.csv")] == ["IMG_0001.jpg", "IMG_0002.jpg"]
    assert [o["file"] for o in json.loads((tmp_path / "singles" / "predictions.json").read_text())] == [
        "IMG_0001.jpg", "IMG_0002.jpg"]
    # a folder run's predictions are not replaced by a one-photo run into its folder, nor by another folder's
    run_main(["--model", str(model), "--input-dir", "cardB", "--output-dir", "batch", "--whole-image"])
    for _ in range(2):  # re-runs (make demo run three times)
        run_main(["--model", str(model), "--input-dir", "cardB", "--output-dir", "batch", "--whole-image"])
    assert len(json.loads((tmp_path / "batch" / "predictions_source.json").read_text())["inputs"]) == 1
    for other in (["--image", "cardA/IMG_0001.jpg"], ["--input-dir", "cardA"]):
        with pytest.raises(DataError, match="holds the predictions of"):
            run_main(["--model", str(model), *other, "--output-dir", "batch", "--whole-image"])
    # an earlier version's folder (no predictions_source.json) of this very input is re-run; a CSV of others is not
    (tmp_path / "batch" / "predictions_source.json").unlink()
    run_main(["--model", str(model), "--input-dir", "cardB", "--output-dir", "batch", "--whole-image"])
    for _ in range(2):  # an earlier version's one-photo folder (no predictions_source.json): its rows not doubled
        run_main(["--model", str(model), "--image", "cardB/IMG_0002.jpg", "--output-dir", "old", "--whole-image"])
        (tmp_path / "old" / "predictions_source.json").unlink()
    assert [r["file"] for r in read_csv(tmp_path / "old" / "predictions.csv")] == ["IMG_0002.jpg"]
    (tmp_path / "batch" / "predictions_source.json").unlink()
    with pytest.raises(DataError, match="predictions of other inputs"):
        run_main(["--model", str(model), "--input-dir", "cardA", "--output-dir", "batch", "--whole-image"])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "predictions.csv").write_text("my own spreadsheet\n")
    with pytest.raises(DataError, match="this tool did not write"):
        run_main(["--model", str(model), "--image", "cardA/IMG_0001.jpg", "--output-dir", "mine", "--whole-image"])


def test_a_run_stopped_by_a_full_disk_keeps_the_predictions_of_the_images_done(model, faces, tmp_path, monkeypatch,
                                                                             capsys):
    """Only Ctrl-C and a closed stdout wrote predictions.csv; a disk filling up at image 2 left hours of annotated
    copies without one."""
    in_dir = three_photos_stopping_at_b(tmp_path, faces, monkeypatch, inference.OutputFailed(
        "cannot write b_age.png (No space left on device); check the output folder"))
    with pytest.raises(DataError, match="No space left"):
        run_main(["--model", str(model), "--input-dir", str(in_dir), "--output-dir", str(tmp_path / "out"),
                  "--whole-image"])
    assert [r["file"] for r in read_csv(tmp_path / "out" / "predictions.csv")] == ["a.png"]
    assert "stopped after 1 of 3 images" in capsys.readouterr().err


def test_a_name_the_output_disk_refuses_skips_that_image_alone(model, faces, tmp_path, monkeypatch, capsys):
    """exFAT and FAT refuse ':' in a name (EINVAL): that image's problem, not every image's."""
    import errno
    in_dir = tmp_path / "in"
    for name in ("a.png", "party 12_30.png"):
        write_rgb(in_dir / name, scene(faces[:1]))
    real = inference.write_image

    def fat_disk(path, rgb, *a):
        if "party" in Path(path).name:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(path, rgb, *a)
    monkeypatch.setattr(inference, "write_image", fat_disk)
    run_main(["--model", str(model), "--input-dir", str(in_dir), "--output-dir", str(tmp_path / "out"),
              "--whole-image"])
    assert [r["file"] for r in read_csv(tmp_path / "out" / "predictions.csv")] == ["a.png"]
    assert "skipping party 12_30.png" in capsys.readouterr().err


def test_the_annotated_copy_says_faces_were_left_out_not_that_none_was_found(monkeypatch):
    drawn = []
    monkeypatch.setattr(inference, "annotate", lambda rgb, boxes, labels, *a: drawn.append(labels) or rgb)
    result = inference.ImageResult("group.jpg", faces=[], dropped=[{"box": [0, 0, 10, 10]}, {"box": [20, 0, 10, 10]}])
    result.draw(np.zeros((40, 40, 3), np.uint8))
    result.dropped = []
    result.draw(np.zeros((40, 40, 3), np.uint8))
    assert drawn == [["2 face(s) left out by --min-face/--min-score"], ["no face found"]]


def test_a_label_shrunk_to_fit_the_photo_gets_thinner_strokes(monkeypatch):
    strokes = []
    real = inference.cv2.putText
    monkeypatch.setattr(inference.cv2, "putText", lambda img, text, org, font, scale, colour, thickness, *a:
                        strokes.append((scale, thickness)) or real(img, text, org, font, scale, colour, thickness, *a))
    inference._label(np.zeros((400, 300, 3), np.uint8), "Age: 34 (29-40)", 0, 0, 2.35, 7, (0, 255, 0), box_height=400)
    (scale, thickness), = strokes
    assert scale < 2.35 and thickness < 7 and thickness / scale == pytest.approx(7 / 2.35, rel=0.25)


def test_labels_of_neighbouring_faces_do_not_cover_each_other(monkeypatch):
    """A label is wider than a small face's box: in a group photo the next label's band hid the interval."""
    bands = []
    real = inference.cv2.rectangle
    monkeypatch.setattr(inference.cv2, "rectangle", lambda img, p1, p2, colour, thickness, *a:
                        (bands.append((*p1, *p2)) if thickness == -1 else None) or real(img, p1, p2, colour,
                                                                                         thickness, *a))
    rgb = np.zeros((400, 600, 3), np.uint8)
    inference.annotate(rgb, [(100, 200, 100, 100), (220, 200, 100, 100), (340, 200, 100, 100)],
                       ["Age: 34 (29-40)", "Age: 35 (30-41)", "Age: 36 (31-42)"])
    assert len(bands) == 3
    overlap = lambda a, b: a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
    assert not any(overlap(a, b) for i, a in enumerate(bands) for b in bands[i + 1:])


def test_a_rerun_is_refused_only_by_outputs_another_input_would_lose(model, faces, tmp_path, monkeypatch):
    """A folder, a video beside it and re-runs of each: none replaces the other's; clip.mp4 and clip.MOV write one
    annotated name."""
    monkeypatch.chdir(tmp_path)
    card = tmp_path / "card"
    write_rgb(card / "a.png", scene(faces[:1]))
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("clip.mp4", "clip.MOV"):
        writer = cv2.VideoWriter(str(videos / name), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 240))
        for _ in range(2):
            writer.write(cv2.cvtColor(scene(faces[:1], gap=320)[:240, :320], cv2.COLOR_RGB2BGR))
        writer.release()
    base = ["--model", str(model), "--output-dir", str(tmp_path / "out")]
    run_main([*base, "--input-dir", str(card), "--whole-image", "--json"])
    run_main([*base, "--video", str(videos / "clip.mp4"), "--no-progress"])  # no --json: the photos' JSON stays
    run_main([*base, "--input-dir", str(card), "--whole-image", "--json"])  # the folder again: its own outputs
    run_main([*base, "--video", str(videos / "clip.mp4"), "--no-progress"])  # the video again
    with pytest.raises(DataError, match="annotated video of .*clip.mp4"):
        run_main([*base, "--video", str(videos / "clip.MOV"), "--no-progress"])
    with pytest.raises(DataError, match="predictions.json of .*card"):
        run_main([*base, "--video", str(videos / "clip.mp4"), "--no-progress", "--json"])


def test_a_model_failing_on_the_first_photo_leaves_the_earlier_runs_predictions_as_they_were(model, faces, tmp_path,
                                                                                            monkeypatch):
    """The stop handler wrote the CSV of the images done: none, so an earlier run's 500 rows became a header."""
    in_dir = three_photos_stopping_at_b(tmp_path, faces, monkeypatch, inference.ModelFailed("the model failed"))
    argv = ["--model", str(model), "--input-dir", str(in_dir), "--output-dir", str(tmp_path / "out"), "--whole-image"]
    with pytest.raises(DataError):
        run_main(argv)
    rows = (tmp_path / "out" / "predictions.csv").read_bytes()
    (in_dir / "a.png").rename(in_dir / "z.png")  # b.png now comes first: the model fails before any image is done
    with pytest.raises(DataError):
        run_main(argv)
    assert (tmp_path / "out" / "predictions.csv").read_bytes() == rows


def test_a_folder_run_whose_first_images_all_fail_stops_instead_of_skipping_them_all(model, faces, tmp_path,
                                                                                    monkeypatch):
    """A mount refusing every fsync with EINVAL looked like one bad name per image: hours of images skipped."""
    import errno
    in_dir = tmp_path / "in"
    for k in range(inference.FIRST_FAILURES_STOP + 3):
        write_rgb(in_dir / f"{k:02d}.png", scene(faces[:1]))
    seen = []

    def refusing_mount(path, rgb, *a):
        seen.append(path)
        raise OSError(errno.EINVAL, "Invalid argument")
    monkeypatch.setattr(inference, "write_image", refusing_mount)
    for k in range(12):  # unreadable inputs first (a Mac's ._IMG files): skipped, never a stop
        (in_dir / f"._{k:02d}.png").write_bytes(b"AppleDouble")
    with pytest.raises(DataError, match=f"first {inference.FIRST_FAILURES_STOP} images .* were all refused"):
        run_main(["--model", str(model), "--input-dir", str(in_dir), "--output-dir", str(tmp_path / "out"),
                  "--whole-image"])
    assert len(seen) == inference.FIRST_FAILURES_STOP
