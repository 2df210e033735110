"""Tests of the synthetic face generator: layout, determinism, and a real age signal."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import demo_data
from conftest import run_script
from custom_dataset import DataError

# Big enough for a stable ridge fit, small enough to generate in a couple of seconds.
SIGNAL_AGES = (20, 50)
SIGNAL_PER_AGE = 6
SLOW_FIXTURES = {"two_seeds"}  # ~3 s of generating: the tests that use it are marked slow (conftest)


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in Path(root).rglob("*") if p.is_file())


def _load(root):
    """Images and ages of a folder-per-age data set, as the pipeline reads them."""
    images, ages = [], []
    for path in sorted(Path(root).rglob("*.jpg")):
        images.append(np.asarray(Image.open(path).convert("RGB")))
        ages.append(int(path.parent.name))
    return np.stack(images), np.array(ages, dtype=np.float64)


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    """The same ages drawn with two seeds: fit on one, evaluate on the other."""
    sets = []
    for seed in (0, 1):
        out = tmp_path_factory.mktemp(f"seed{seed}")
        demo_data.generate_dataset(out, *SIGNAL_AGES, per_age=SIGNAL_PER_AGE, seed=seed)
        sets.append(_load(out))
    return sets


def image_statistics(images, grid=6):
    """Pose-agnostic summary statistics on a coarse grid: edge energy, saturation, brightness.

    Wrinkles, spots and grey strands add fine edges and remove colour; nothing here knows
    where the face or its features are.
    """
    feats = []
    for rgb in images:
        gray = cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), 0.8)
        edges = np.abs(cv2.Laplacian(gray, cv2.CV_32F))
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float32)
        greyish = ((hsv[..., 1] < 50) & (hsv[..., 2] > 120)).astype(np.float32)
        maps = [np.log1p(edges), np.log1p(edges / (np.median(edges) + 1)),
                hsv[..., 1], hsv[..., 2], greyish]
        feats.append(np.concatenate(
            [cv2.resize(m, (grid, grid), interpolation=cv2.INTER_AREA).ravel() for m in maps]))
    return np.array(feats)


def ridge_mae(train_x, train_y, test_x, test_y, lam=100.0):
    """Ridge regression by least squares on standardised features; returns test MAE."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / std, (test_x - mean) / std
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ (train_y - train_y.mean()))
    return np.abs(b @ w + train_y.mean() - test_y).mean()


def _gray(images):
    return images.astype(np.float64).mean(axis=-1)


def _corr(x, y):
    return np.corrcoef(x, y)[0, 1]


# ---------------------------------------------------------------- drawing

def test_draw_face_is_rgb_uint8_and_pure():
    a = demo_data.draw_face(33.0, np.random.default_rng(5), size=96)
    b = demo_data.draw_face(33.0, np.random.default_rng(5), size=96)
    c = demo_data.draw_face(33.0, np.random.default_rng(6), size=96)
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.std() > 10  # a picture, not a flat fill


def test_face_roughly_centred():
    # Skin-free corners vs centre: the face sits in the middle like an aligned crop,
    # so the centre differs from the background corners in most images.
    size = 64
    diffs = []
    for i in range(20):
        img = demo_data.draw_face(30, demo_data.image_rng(0, 30, i), size).astype(np.float64)
        centre = img[size // 2 - 4:size // 2 + 4, size // 2 - 4:size // 2 + 4].mean((0, 1))
        corner = img[:6, :6].mean((0, 1))
        diffs.append(np.abs(centre - corner).sum())
    assert np.median(diffs) > 20


# ---------------------------------------------------------------- data set files

def test_layout_count_and_decoding(tmp_path):
    n = demo_data.generate_dataset(tmp_path, min_age=20, max_age=22, per_age=3, size=64, seed=0)
    assert n == 9
    expected = [f"{age}/{age}_{i:04d}.jpg" for age in (20, 21, 22) for i in range(3)]
    assert _files(tmp_path) == expected
    for rel in expected:
        with Image.open(tmp_path / rel) as im:
            assert im.format == "JPEG"
            assert im.size == (64, 64)
            assert im.mode == "RGB"


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        demo_data.generate_dataset(tmp_path / name, 30, 31, per_age=2, size=64, seed=seed)
        runs[name] = {rel: (tmp_path / name / rel).read_bytes() for rel in _files(tmp_path / name)}
    assert runs["a"] == runs["b"]
    assert runs["a"].keys() == runs["c"].keys()
    assert all(runs["a"][rel] != runs["c"][rel] for rel in runs["a"])


def test_image_does_not_depend_on_what_else_is_generated(tmp_path):
    demo_data.generate_dataset(tmp_path / "wide", 20, 30, per_age=3, size=64, seed=7)
    demo_data.generate_dataset(tmp_path / "narrow", 25, 25, per_age=2, size=64, seed=7)
    for rel in ("25/25_0000.jpg", "25/25_0001.jpg"):
        assert (tmp_path / "wide" / rel).read_bytes() == (tmp_path / "narrow" / rel).read_bytes()


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError):
        demo_data.generate_dataset(tmp_path, min_age=40, max_age=30)
    with pytest.raises(ValueError):
        demo_data.generate_dataset(tmp_path, per_age=0)
    assert _files(tmp_path) == []


# ---------------------------------------------------------------- command line

def test_cli_writes_and_summarises(tmp_path, capsys):
    parser = demo_data.get_args_parser()
    args = parser.parse_args(["--out-dir", str(tmp_path), "--min-age", "40", "--max-age", "41",
                              "--per-age", "2", "--size", "48", "--seed", "2"])
    assert demo_data.main(args) == 4
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "4" in out[0] and str(tmp_path) in out[0]
    assert len(_files(tmp_path)) == 4 + 1  # and the manifest


@pytest.mark.parametrize("argv", [["--min-age", "50", "--max-age", "20"], ["--per-age", "0"]])
def test_cli_rejects_bad_arguments_with_one_line(tmp_path, argv):
    proc = run_script("demo_data.py", "--out-dir", tmp_path, *argv, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "error:" in proc.stderr.strip().splitlines()[-1]
    assert _files(tmp_path) == []


# ---------------------------------------------------------------- the age signal

def test_age_is_learnable_across_seeds(two_seeds):
    (train_img, train_age), (test_img, test_age) = two_seeds
    train_x, test_x = image_statistics(train_img), image_statistics(test_img)
    baseline = np.abs(test_age - train_age.mean()).mean()
    mae = ridge_mae(train_x, train_age, test_x, test_age)
    assert mae < 0.8 * baseline, f"MAE {mae:.2f} vs predicting the mean {baseline:.2f}"

    # Negative control: the same fit on shuffled ages must not look good, or the
    # comparison above would prove nothing.
    shuffled = np.random.default_rng(0).permutation(train_age)
    control = ridge_mae(train_x, shuffled, test_x, test_age)
    assert control > 0.9 * baseline


def test_no_single_pixel_gives_the_age(two_seeds):
    images, ages = two_seeds[0]
    gray = _gray(images)
    size = gray.shape[1]
    assert abs(_corr(gray[:, size // 2, size // 2], ages)) < 0.5
    # Nor do a handful of other fixed positions (hair, cheeks, chin, background) or overall brightness.
    for y in (size // 5, size // 2, 4 * size // 5):
        for x in (size // 5, size // 2, 4 * size // 5):
            assert abs(_corr(gray[:, y, x], ages)) < 0.5, (y, x)
    assert abs(_corr(gray.mean(axis=(1, 2)), ages)) < 0.5


def test_a_smaller_second_run_leaves_only_its_own_faces_and_a_data_set_is_refused(tmp_path, capsys):
    """Faces of an earlier run with another range or count would be read by eda.py as more faces."""
    parser = demo_data.get_args_parser()

    def run(*argv):
        return demo_data.main(parser.parse_args(["--out-dir", str(tmp_path / "demo"), "--size", "48", *argv]))
    run("--min-age", "40", "--max-age", "42", "--per-age", "3")
    run("--min-age", "40", "--max-age", "41", "--per-age", "2", "--seed", "1")
    assert _files(tmp_path / "demo") == ["40/40_0000.jpg", "40/40_0001.jpg", "41/41_0000.jpg", "41/41_0001.jpg",
                                         "demo_data.json"]
    assert not (tmp_path / "demo" / "42").exists()
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / ".DS_Store").write_bytes(b"x")  # a file manager's file alone: still an empty folder
    demo_data.main(parser.parse_args(["--out-dir", str(tmp_path / "fresh"), "--size", "48", "--min-age", "40",
                                      "--max-age", "40", "--per-age", "1"]))
    data = tmp_path / "real"  # named as this script names its faces: still refused without the manifest
    (data / "25").mkdir(parents=True)
    (data / "25" / "25_0000.jpg").write_bytes(b"a real face")
    with pytest.raises(DataError, match="did not write"):
        demo_data.main(parser.parse_args(["--out-dir", str(data), "--per-age", "1", "--min-age", "25", "--max-age", "25"]))
    assert (data / "25" / "25_0000.jpg").read_bytes() == b"a real face"


def test_make_demo_never_removes_a_folder_and_ignores_an_out_in_the_environment(tmp_path):
    """It removed $(OUT)/data when that held no demo_data.json, and OUT came from the shell: a user's photos."""
    import os
    import shutil
    import subprocess
    from conftest import REPO
    if shutil.which("make") is None:
        pytest.skip("make is not installed here")
    env = {**os.environ, "OUT": str(tmp_path / "my_project"), "DEMO_OUT": str(tmp_path / "my_project")}
    plan = subprocess.run(["make", "-n", "-W", "requirements.txt", "demo"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60).stdout
    assert "demo_data.py --out-dir outputs/demo/data" in plan and str(tmp_path) not in plan
    assert "rm " not in plan


def test_constraints_pin_every_requirement_at_its_own_version():
    """make setup installs requirements.txt under constraints.txt: a requirement changed without the constraints
    regenerated would leave pip two pins of one package (and a failed install on a clean clone)."""
    import re
    from conftest import REPO

    def pins(name):
        found = {}
        for line in (REPO / name).read_text().splitlines():
            match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s#]+)", line.strip())
            if match:
                found[match.group(1).lower().replace("_", "-")] = match.group(2)
        return found
    requirements, constraints = pins("requirements.txt"), pins("constraints.txt")
    assert requirements and {k: constraints.get(k) for k in requirements} == requirements
