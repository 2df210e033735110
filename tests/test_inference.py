"""Tests of inference.py: single image, folder, video, tracking helpers and one-line errors."""
import csv
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # plain `pytest` (not `python -m pytest`) leaves the repo root off
    sys.path.insert(0, str(REPO))

import demo_data  # noqa: E402
import inference  # noqa: E402
from custom_dataset import DataError  # noqa: E402

torch.set_num_threads(1)  # the machine is shared; these models are tiny
cv2.setNumThreads(1)


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
def detector():
    return inference.load_detector()


@pytest.fixture(scope="session")
def faces(detector):
    """Generated 160 px faces that the Haar cascade finds on a plain background (deterministic)."""
    found = []
    for index in range(40):
        face = demo_data.draw_face(35, demo_data.image_rng(0, 35, index), size=160)
        if len(inference.detect_faces(scene([face]), detector)) == 1:
            found.append(face)
        if len(found) == 3:
            return found
    pytest.fail("fewer than 3 of 40 generated faces are detectable")


def scene(faces, height=240, gap=40):
    """Faces side by side on a grey background with some texture."""
    width = gap + sum(f.shape[1] + gap for f in faces)
    rng = np.random.default_rng(1)
    canvas = np.clip(rng.normal(100, 8, (height, width, 3)), 0, 255).astype(np.uint8)
    x = gap
    for face in faces:
        y = (height - face.shape[0]) // 2
        canvas[y:y + face.shape[0], x:x + face.shape[1]] = face
        x += face.shape[1] + gap
    return canvas


def write_rgb(path, rgb):
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def run_main(argv):
    return inference.main(inference.get_args_parser().parse_args([*argv, "--threads", "1"]))


# ----------------------------------------------------------------------------------------------
# Single image

def test_single_image_two_faces_one_forward_pass(model_path, faces, tmp_path, capsys, monkeypatch):
    src = write_rgb(tmp_path / "two.jpg", scene(faces[:2]))
    out = tmp_path / "sub" / "two_out.jpg"
    calls, tta = [], []
    real_load = inference.load_model

    def counting_load(path):
        module, metadata, cfg = real_load(path)
        tta.append(bool(metadata.get("tta_flip")))

        def forward(x):
            calls.append(x.shape[0])
            return module(x)
        return forward, metadata, cfg

    monkeypatch.setattr(inference, "load_model", counting_load)
    result = run_main(["--model", str(model_path), "--image", str(src), "--output", str(out)])
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("two.jpg, box ")]
    assert len(lines) == 2 == len(result["boxes"])
    assert result["detected"]
    assert calls == ([2, 2] if tta[0] else [2])  # both faces in one pass (plus its mirror with TTA)
    annotated = cv2.imread(str(out))
    assert annotated is not None and annotated.shape == cv2.imread(str(src)).shape
    assert not np.array_equal(annotated, cv2.imread(str(src)))  # something was drawn
    for line, box, age in zip(lines, result["boxes"], result["ages"]):
        assert line == f"two.jpg, box {','.join(map(str, box))}, age {age:.1f}"


def test_no_face_falls_back_to_whole_image(model_path, tmp_path, capsys):
    noise = np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    src = write_rgb(tmp_path / "noise.png", noise)
    result = run_main(["--model", str(model_path), "--image", str(src), "--output", str(tmp_path / "o.png")])
    out = capsys.readouterr().out
    assert "no face found, using the whole image" in out
    assert "noise.png, box 0,0,200,150, age " in out
    assert result["boxes"] == [(0, 0, 200, 150)] and not result["detected"]
    assert cv2.imread(str(tmp_path / "o.png")).shape == (150, 200, 3)


def test_no_detect_uses_whole_image(model_path, faces, tmp_path, capsys):
    src = write_rgb(tmp_path / "face.jpg", scene(faces[:1]))
    result = run_main(["--model", str(model_path), "--image", str(src), "--output", str(tmp_path / "o.jpg"),
                       "--no-detect"])
    assert result["boxes"] == [(0, 0, 240, 240)]
    assert "--no-detect, using the whole image" in capsys.readouterr().out


def test_output_equal_to_input_is_refused(model_path, faces, tmp_path):
    src = write_rgb(tmp_path / "face.jpg", scene(faces[:1]))
    before = src.read_bytes()
    with pytest.raises(DataError, match="is the input file"):
        run_main(["--model", str(model_path), "--image", str(src), "--output", str(tmp_path / "." / "face.jpg")])
    assert src.read_bytes() == before


def test_unreadable_image_and_bad_output(model_path, faces, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(DataError, match="cannot read"):
        run_main(["--model", str(model_path), "--image", str(bad), "--output", str(tmp_path / "o.jpg")])
    src = write_rgb(tmp_path / "face.jpg", scene(faces[:1]))
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(DataError, match="output folder"):
        run_main(["--model", str(model_path), "--image", str(src), "--output", str(blocker / "o.jpg")])
    with pytest.raises(DataError, match="unknown image type"):
        run_main(["--model", str(model_path), "--image", str(src), "--output", str(tmp_path / "o.xyz")])


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
                       "--batch-size", "2"])
    captured = capsys.readouterr()
    assert "warning: skipping d_corrupt.jpg" in captured.err
    assert "images/s" in captured.out
    with open(out_dir / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["file"], r["face_index"], r["detected"]) for r in rows] == [
        ("a_two.jpg", "0", "true"), ("a_two.jpg", "1", "true"), ("b_one.png", "0", "true"),
        ("c_noise.jpg", "0", "false")]
    assert rows[3]["w"] == "160" and rows[3]["h"] == "120"
    assert all(np.isfinite(float(r["age"])) for r in rows)
    assert result["images"] == 3 and result["skipped"] == 1 and result["faces"] == 3
    for name in ("a_two.jpg", "b_one.png", "c_noise.jpg"):
        assert cv2.imread(str(out_dir / name)).shape == cv2.imread(str(in_dir / name)).shape
    assert not (out_dir / "d_corrupt.jpg").exists()


def test_input_dir_equal_to_output_dir_is_refused(model_path, tmp_path):
    with pytest.raises(DataError, match="input folder"):
        run_main(["--model", str(model_path), "--input-dir", str(tmp_path), "--output-dir", str(tmp_path)])


# ----------------------------------------------------------------------------------------------
# Video

def test_video_same_frame_count(model_path, faces, tmp_path, capsys):
    src, out = tmp_path / "in.mp4", tmp_path / "out.mp4"
    background = scene([], gap=320)  # 240 x 320 textured grey
    frames = []
    for i in range(12):  # the face moves 4 px right and 1 px down per frame
        frame = background.copy()
        frame[30 + i:190 + i, 40 + 4 * i:200 + 4 * i] = faces[0]
        frames.append(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    assert all(f.shape == (240, 320, 3) for f in frames)
    writer = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 240))
    assert writer.isOpened()
    for frame in frames:
        writer.write(np.ascontiguousarray(frame))
    writer.release()
    result = run_main(["--model", str(model_path), "--video", str(src), "--output", str(out)])
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

def test_iou_golden():
    assert inference.iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert inference.iou((0, 0, 10, 10), (5, 5, 10, 10)) == pytest.approx(25 / 175)
    assert inference.iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert inference.iou((0, 0, 10, 10), (10, 0, 10, 10)) == 0.0  # touching
    assert inference.iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert inference.iou((0, 0, 10, 10), (2, 2, 4, 4)) == pytest.approx(16 / 100)
    assert inference.iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


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


def test_non_max_suppression():
    boxes = [(0, 0, 100, 100), (5, 5, 100, 100), (30, 30, 20, 20), (300, 0, 50, 50)]
    # box 2 lies inside the face boxes (an eye hit) and goes whatever its score; 0 and 1 are one face
    assert inference.non_max_suppression(boxes, [1.0, 2.0, 3.0, 0.5]) == [1, 3]
    assert inference.non_max_suppression(boxes, [3.0, 1.0, 2.0, 0.5]) == [0, 3]
    assert inference.non_max_suppression([], []) == []


def test_crop_face_square_with_margin():
    rgb = np.arange(300 * 400 * 3, dtype=np.uint32).reshape(300, 400, 3).astype(np.uint8)
    assert inference.crop_box((150, 100, 40, 40), 0.25, rgb.shape) == (140, 90, 60, 60)
    assert inference.crop_box((150, 100, 40, 30), 0.0, rgb.shape) == (150, 95, 40, 40)  # square on the centre
    assert inference.crop_box((0, 0, 40, 40), 0.25, rgb.shape) == (0, 0, 60, 60)  # moved inside, still square
    assert inference.crop_box((380, 280, 20, 20), 0.5, rgb.shape) == (360, 260, 40, 40)
    assert inference.crop_box((0, 0, 400, 300), 0.25, rgb.shape) == (0, 0, 400, 300)  # bigger than the image
    crop = inference.crop_face(rgb, (150, 100, 40, 40), 0.25)
    assert crop.shape == (60, 60, 3) and np.array_equal(crop, rgb[90:150, 140:200])


def test_annotate_leaves_original_untouched():
    rgb = np.zeros((100, 120, 3), np.uint8)
    out = inference.annotate(rgb, [(10, 10, 50, 50)], [33.4])
    assert out.shape == rgb.shape and out.any() and not rgb.any()


def test_detect_faces_on_generated_face(faces, detector):
    img = scene(faces[:2])
    boxes = inference.detect_faces(img, detector)
    assert len(boxes) == 2
    for x, y, w, h in boxes:
        assert 0 <= x and 0 <= y and x + w <= img.shape[1] and y + h <= img.shape[0]
        assert 60 <= w <= 200


# ----------------------------------------------------------------------------------------------
# Model and batched prediction

def test_batched_equals_per_crop(model_path, faces):
    module, metadata, cfg = inference.load_model(model_path)
    crops = [faces[0], faces[1][10:150, 20:140], np.ascontiguousarray(faces[2][:, ::-1])]
    batched = inference.predict_crops(module, metadata, cfg, crops)
    single = np.concatenate([inference.predict_crops(module, metadata, cfg, [c]) for c in crops])
    assert batched.shape == (3,)
    np.testing.assert_allclose(batched, single, atol=1e-4, rtol=0)
    assert inference.predict_crops(module, metadata, cfg, []).shape == (0,)
    flipped = inference.predict_crops(module, {**metadata, "tta_flip": True}, cfg, crops)
    assert flipped.shape == (3,) and np.isfinite(flipped).all()


def test_load_model_returns_metadata(model_path):
    module, metadata, cfg = inference.load_model(model_path)
    assert cfg.image_size == 64 and len(cfg.mean) == 3
    assert "crop_margin" in metadata and "tta_flip" in metadata


# ----------------------------------------------------------------------------------------------
# One-line errors from the command line

def _cli(*argv):
    return subprocess.run([sys.executable, str(REPO / "inference.py"), *argv, "--threads", "1"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def _assert_one_line_error(proc, *words):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0]


def test_cli_missing_model(tmp_path):
    _assert_one_line_error(_cli("--model", str(tmp_path / "nope.jit"), "--image", "x.jpg"), "model file not found")


def test_cli_text_file_as_model(tmp_path):
    text = tmp_path / "model.jit"
    text.write_text("this is not a model\n")
    _assert_one_line_error(_cli("--model", str(text), "--image", "x.jpg"), "not a TorchScript model")


def test_cli_missing_image(model_path, tmp_path):
    _assert_one_line_error(_cli("--model", str(model_path), "--image", str(tmp_path / "missing.jpg"),
                                "--output", str(tmp_path / "o.jpg")), "image not found")
