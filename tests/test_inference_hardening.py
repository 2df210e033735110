"""inference.py after review: a re-run stopped early keeps the earlier predictions of the photos it did not reach,
no stale predictions.json beside a new CSV, two photos of one stem never share an annotated copy, empty path flags
and flags that would do nothing are refused in one line, a .ONNX model is a model.onnx, and an ONNX Runtime
allocation failure on a crowd photo skips that photo instead of stopping the run.

The models are the tiny constant ONNX graphs of conftest (no training)."""
import json
from pathlib import Path

import numpy as np
import pytest

import inference
from conftest import assert_one_line_error, constant_model, read_rows, run_script, scene, write_rgb
from custom_dataset import DataError
from test_inference_cli import faces, run_main, stopping_at_b  # noqa: F401 (faces: the fixture, shared)


def files_and_ages(rows):
    return [(r["file"], r["age"]) for r in rows]


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), inference.ModelFailed("the model failed")])
@pytest.mark.parametrize("json_again", [True, False])
def test_a_rerun_stopped_early_keeps_the_earlier_predictions_of_the_photos_it_did_not_reach(
        faces, tmp_path, monkeypatch, capsys, stop, json_again):
    """`--input-dir photos` once, then again stopped at the 2nd photo (Ctrl-C, `| head -1`, a model failing):
    predictions.csv and .json held the photos done, while the other annotated copies of the first run remained."""
    in_dir, out = tmp_path / "in", tmp_path / "out"
    for name in ("a.png", "b.png", "c.png"):
        write_rgb(in_dir / name, faces[0])
    run = lambda age, *extra: run_main(["--model", str(constant_model(tmp_path / f"{age}.onnx", age=age)),
                                        "--input-dir", str(in_dir), "--output-dir", str(out), "--whole-image", *extra])
    run(30, "--json")
    real = inference.process_image
    stopping_at_b(monkeypatch, stop)
    with pytest.raises(type(stop)):
        run(35, *(["--json"] if json_again else []))
    assert files_and_ages(read_rows(out / "predictions.csv")[1]) == [("a.png", "35.00"), ("b.png", "30.00"),
                                                                      ("c.png", "30.00")]
    # without --json the earlier object of a.png would give another age than the CSV: taken out
    objects = json.loads((out / "predictions.json").read_text())
    expected = [("a.png", 35.0)] * json_again + [("b.png", 30.0), ("c.png", 30.0)]
    assert [(o["file"], o["faces"][0]["age"]) for o in objects] == expected
    assert "with the earlier run's predictions of the 2 image(s) not reached" in capsys.readouterr().err
    # a complete run replaces them whole: a photo gone from the folder drops out
    monkeypatch.setattr(inference, "process_image", real)
    (in_dir / "c.png").unlink()
    run(35, "--json")
    assert files_and_ages(read_rows(out / "predictions.csv")[1]) == [("a.png", "35.00"), ("b.png", "35.00")]


@pytest.mark.parametrize("stop_at", ["a.png", "b.png"])
def test_a_rerun_stopped_after_a_photos_new_drawing_drops_its_earlier_row(faces, tmp_path, monkeypatch, stop_at):
    """Ctrl-C after a photo's new annotated copy was written but before its row was recorded (the first photo's
    too): the earlier run's row of it (another age) is not kept beside the new drawing; the photos not reached
    keep theirs."""
    in_dir, out = tmp_path / "in", tmp_path / "out"
    for name in ("a.png", "b.png", "c.png"):
        write_rgb(in_dir / name, faces[0])
    run = lambda age: run_main(["--model", str(constant_model(tmp_path / f"{age}.onnx", age=age)), "--input-dir",
                                str(in_dir), "--output-dir", str(out), "--whole-image"])
    run(30)
    real = inference.process_image

    def drawn_then_stopped(estimator, path, *rest, **kwargs):
        result = real(estimator, path, *rest, **kwargs)
        if Path(path).name == stop_at:
            raise KeyboardInterrupt
        return result
    monkeypatch.setattr(inference, "process_image", drawn_then_stopped)
    with pytest.raises(KeyboardInterrupt):
        run(35)
    expected = [("a.png", "35.00"), ("c.png", "30.00")] if stop_at == "b.png" else [("b.png", "30.00"), ("c.png", "30.00")]
    assert files_and_ages(read_rows(out / "predictions.csv")[1]) == expected


def test_a_rerun_where_no_image_is_done_replaces_the_earlier_predictions_only_where_it_redrew(faces, tmp_path,
                                                                                             monkeypatch):
    """No photo readable any more: the earlier predictions stay, as their drawings do. Every photo skipped after its
    new annotated copy was written (an error past the drawing): the earlier ages would disagree with the new
    drawings, so they go."""
    in_dir, out = tmp_path / "in", tmp_path / "out"
    for name in ("a.png", "b.png"):
        write_rgb(in_dir / name, faces[0])
    argv = ["--model", str(constant_model(tmp_path / "m.onnx")), "--input-dir", str(in_dir), "--output-dir", str(out),
            "--whole-image"]
    run_main(argv)
    before = (out / "predictions.csv").read_bytes()
    for name in ("a.png", "b.png"):
        (in_dir / name).rename(in_dir / f"{name}.kept")
        (in_dir / name).write_bytes(b"not an image any more")
    with pytest.raises(DataError, match="none of the 2 images .* earlier outputs are left as they were"):
        run_main(argv)
    assert (out / "predictions.csv").read_bytes() == before
    for name in ("a.png", "b.png"):
        (in_dir / f"{name}.kept").replace(in_dir / name)
    real = inference.process_image

    def drawn_then_failed(*args, **kwargs):
        real(*args, **kwargs)
        raise ValueError("failed after the drawing")
    monkeypatch.setattr(inference, "process_image", drawn_then_failed)
    with pytest.raises(DataError, match=r"none of the 2 images .*could be annotated \(warnings above\)$"):
        run_main(argv)
    assert read_rows(out / "predictions.csv")[1] == []


def test_a_rerun_without_json_leaves_no_stale_predictions_json(faces, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = constant_model(tmp_path / "m.onnx")
    for name in ("a.png", "b.png"):
        write_rgb(tmp_path / "in" / name, faces[0])
    folder = ["--model", str(model), "--input-dir", "in", "--output-dir", "out", "--whole-image"]
    run_main([*folder, "--json"])
    run_main(folder)
    assert not (tmp_path / "out" / "predictions.json").exists()
    # single photos into one folder: the re-run photo's object goes, the other's stays
    for name, extra in (("a.png", ["--json"]), ("b.png", ["--json"]), ("a.png", [])):
        run_main(["--model", str(model), "--image", f"in/{name}", "--output-dir", "singles", "--whole-image", *extra])
    assert [o["file"] for o in json.loads((tmp_path / "singles" / "predictions.json").read_text())] == ["b.png"]
    # a predictions.json this tool did not write (the manifest names no writer of one) is not its to remove
    theirs = '[{"file": "a.png", "faces": []}]\n'  # an object of a file this run replaces: would go, were it ours
    (tmp_path / "out" / "predictions.json").write_text(theirs)
    run_main(folder)
    assert (tmp_path / "out" / "predictions.json").read_text() == theirs


def test_two_photos_of_one_stem_never_share_an_annotated_copy(faces, tmp_path, monkeypatch):
    """IMG_1.jfif (as .heic and .heif) is annotated as IMG_1_age.jpg, the name IMG_1.jpg's copy has."""
    monkeypatch.chdir(tmp_path)
    model = constant_model(tmp_path / "m.onnx")
    write_rgb(tmp_path / "a" / "IMG_1.jpg", faces[0])
    (tmp_path / "a" / "IMG_1.jfif").write_bytes((tmp_path / "a" / "IMG_1.jpg").read_bytes())
    run_main(["--model", str(model), "--image", "a/IMG_1.jfif", "--whole-image"])
    drawn = tmp_path / "inference_outputs" / "IMG_1" / "IMG_1_age.jpg"
    before = drawn.read_bytes()
    with pytest.raises(DataError, match=r"annotated copy of .*IMG_1.jfif \(IMG_1_age.jpg\)"):
        run_main(["--model", str(model), "--image", "a/IMG_1.jpg", "--whole-image"])
    assert drawn.read_bytes() == before
    run_main(["--model", str(model), "--image", "a/IMG_1.jfif", "--whole-image"])  # its own re-run
    # --output FILE: the user's choice of name, beside the other's outputs
    run_main(["--model", str(model), "--image", "a/IMG_1.jpg", "--whole-image", "--output", str(drawn.with_name("x.jpg"))])
    assert drawn.read_bytes() == before
    # an earlier image's copy of --output's own name leaves the default name free
    mine = tmp_path / "mine"
    run_main(["--model", str(model), "--image", "a/IMG_1.jpg", "--whole-image", "--output", str(mine / "mine.jpg")])
    run_main(["--model", str(model), "--image", "a/IMG_1.jfif", "--whole-image", "--output-dir", str(mine)])
    assert (mine / "mine.jpg").is_file() and (mine / "IMG_1_age.jpg").is_file()


@pytest.mark.parametrize("flags", [["--image", ""], ["--input-dir", ""], ["--video", ""], ["--model", ""],
                                   ["--output", ""], ["--output-dir", ""], ["--save-crops", ""]])
def test_an_empty_path_flag_is_refused(faces, tmp_path, monkeypatch, flags):
    """An unset shell variable: --image "" was Path(None)'s traceback, an empty --output-dir silently ignored."""
    monkeypatch.chdir(tmp_path)
    photo = write_rgb(tmp_path / "in" / "face.png", faces[0])
    source = [] if flags[0] in ("--image", "--input-dir", "--video") else ["--image", str(photo)]
    model = [] if flags[0] == "--model" else ["--model", str(constant_model(tmp_path / "m.onnx"))]
    with pytest.raises(DataError, match=f"{flags[0]} is empty"):
        run_main([*model, *source, *flags])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "m.onnx"][:1 + bool(model)]


@pytest.mark.slow
def test_an_empty_image_flag_is_one_line(tmp_path):
    assert_one_line_error(run_script("inference.py", "--image", ""), "--image is empty")


def test_flags_that_would_do_nothing_with_this_model_are_refused(faces, tmp_path):
    photo = write_rgb(tmp_path / "in" / "face.png", faces[0])
    model = constant_model(tmp_path / "m.onnx")  # no interval calibration
    base = ["--model", str(model), "--image", str(photo), "--output-dir", str(tmp_path / "out"), "--whole-image"]
    with pytest.raises(DataError, match="--trust-model is for a model.jit"):
        run_main([*base, "--trust-model"])
    with pytest.raises(DataError, match="--whole-image finds none"):
        run_main([*base, "--detector", "hog"])
    for level in ("0.5", "0.9"):  # the default's value given too: a flag, not a value, that does nothing
        with pytest.raises(DataError, match="carries no interval calibration"):
            run_main([*base, "--interval-level", level])
    assert not (tmp_path / "out").exists()


def test_a_model_file_named_in_capitals_is_read_by_its_kind(tmp_path):
    from checkpoints import read_export, rewrite_export_metadata
    model = constant_model(tmp_path / "AgeModel.ONNX", age=33.0)
    forward, metadata = read_export(model)
    assert np.asarray(forward(np.zeros((1, 3, 32, 32), np.float32))).ravel().tolist() == [33.0]
    rewrite_export_metadata(model, {**metadata, "data": "renamed"})
    assert read_export(model)[1]["data"] == "renamed"
    jit = tmp_path / "AgeModel.JIT"
    jit.write_bytes(b"not vouched for")
    with pytest.raises(DataError, match="is TorchScript, which runs code from the file"):
        read_export(jit)


def test_onnx_runtime_out_of_memory_on_a_crowd_photo_skips_that_photo(faces, tmp_path, monkeypatch, capsys):
    """A crowd's faces fill ONNX Runtime's arena: that photo's problem (as TorchScript's out of memory is), not a
    failed model stopping the folder run."""
    import onnxruntime
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException
    real = onnxruntime.InferenceSession

    class CrowdedSession:
        def __init__(self, *args, **kwargs):
            self.session = real(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self.session, name)

        def run(self, outputs, feed):
            if len(next(iter(feed.values()))) > 1:
                raise RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned "
                                       "while running Conv node.\nFailed to allocate memory for requested buffer of "
                                       "size 8589934592")
            return self.session.run(outputs, feed)
    monkeypatch.setattr(onnxruntime, "InferenceSession", CrowdedSession)
    in_dir = tmp_path / "in"
    write_rgb(in_dir / "crowd.png", scene(faces))
    write_rgb(in_dir / "one.png", scene(faces[:1]))
    result = run_main(["--model", str(constant_model(tmp_path / "m.onnx")), "--input-dir", str(in_dir),
                       "--output-dir", str(tmp_path / "out")])
    assert result["images"] == 1 and result["skipped"] == 1
    assert "skipping crowd.png: MemoryError: Failed to allocate memory" in capsys.readouterr().err
    assert [r["file"] for r in read_rows(tmp_path / "out" / "predictions.csv")[1]] == ["one.png"]
