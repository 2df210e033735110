"""Shared test helpers, importable as `from conftest import ...` (pytest puts tests/ on sys.path):

REPO (also put on sys.path here), make_splits and the `splits` fixture (a small generated data set and the
splits eda.py writes for it), ways to run eda.py and the scripts, assert_one_line_error (how every script must
fail), snapshot / set_writable for the read-only tests, and the real-face helpers.

Slow tests (pytest.ini's `slow` marker; `make test-fast` leaves them out) are marked in three ways: a whole
file with `pytestmark = pytest.mark.slow`, one test with `@pytest.mark.slow`, and every test that uses a
costly fixture (one that trains a model, say) by naming the fixture in the file's `SLOW_FIXTURES`.
"""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # plain `pytest` (not `python -m pytest`) leaves the repo root off
    sys.path.insert(0, str(REPO))


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(items):
    """Mark `slow` every test that uses (directly or through another fixture) a fixture named in its
    module's SLOW_FIXTURES."""
    for item in items:
        costly = set(getattr(getattr(item, "module", None), "SLOW_FIXTURES", ()))
        if costly & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# ---------------------------------------------------------------------------------------------- running things

def run_script(*args, timeout=120):
    """`python ARGS` from the repo root, as a user runs it -> CompletedProcess (text)."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def eda_main(data_dir, out_dir, *extra):
    """eda.main in this process, without progress bars -> the report dict."""
    import eda
    args = eda.get_args_parser().parse_args(
        ["--data-dir", str(data_dir), "--out-dir", str(out_dir), "--no-progress", *map(str, extra)])
    return eda.main(args)


def assert_one_line_error(proc, *words):
    """How every script fails (cli.run_cli, README): exit code 2, stderr one line "error: ..." that
    holds each of `words`, and no traceback anywhere."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="session")
def run_eda():
    """eda.main in this process: run_eda(data_dir, out_dir, *extra_args) -> the report dict."""
    return eda_main


@pytest.fixture(scope="session")
def eda_cli():
    """`python eda.py ARGS` as a user runs it: eda_cli(*args) -> CompletedProcess (text)."""
    def run(*args, timeout=120):
        return run_script("eda.py", *args, timeout=timeout)
    return run


# ---------------------------------------------------------------------------------------------- data sets

def make_splits(root, *, min_age=20, max_age=50, per_age=5, size=96, seed=1):
    """Generated faces under root/data and the splits eda.py writes for them; returns root/out/splits
    (training's default cache then goes to root/out/cache)."""
    import demo_data
    demo_data.generate_dataset(root / "data", min_age=min_age, max_age=max_age, per_age=per_age, size=size,
                               seed=seed)
    eda_main(root / "data", root / "out")
    return root / "out" / "splits"


@pytest.fixture(scope="session")
def splits(tmp_path_factory):
    """Splits of ages 20-50, 5 faces of 96 px each, shared by the training and torchrun tests (copy the
    folder before changing it)."""
    return make_splits(tmp_path_factory.mktemp("train_data"))


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """A small folder-per-age set: ages 20-29, 6 images of 64 px each (read-only for tests)."""
    import demo_data
    root = tmp_path_factory.mktemp("demo") / "data"
    demo_data.generate_dataset(root, min_age=20, max_age=29, per_age=6, size=64, seed=0)
    return root


# ---------------------------------------------------------------------------------------------- file trees

def snapshot(root):
    """(path, kind, size, mtime) of everything under root, links not followed."""
    items = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames + ["."]:
            st = os.lstat(os.path.join(dirpath, name))
            items.append((os.path.join(dirpath, name), stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns))
    return sorted(items)


def set_writable(root, writable):
    """Give (or take away) the write permission of every folder and file under root, links left alone."""
    for dirpath, dirnames, filenames in os.walk(root):
        for p in [dirpath] + [os.path.join(dirpath, n) for n in filenames]:
            if not os.path.islink(p):
                mode = os.lstat(p).st_mode
                os.chmod(p, mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


# ---------------------------------------------------------------------------------------------- real faces

SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def utkface_chips():
    """Eight real UTKFace files (read in place from ../shared/data; skipped in a clone without it)."""
    folder = SHARED_DATA / "UTKFace"
    if not folder.is_dir():
        pytest.skip(f"real faces not available: {folder} is absent (CI and the dev machines have it)")
    from custom_dataset import load_rgb
    # adults and a child, frontal enough for HOG; fixed names so the test is the same everywhere
    names = sorted(p.name for p in folder.iterdir())[::2900][:8]
    return [load_rgb(folder / n) for n in names]


def paste(chip, side, tilt=0.0, canvas=(480, 640), at=(0.5, 0.5), seed=0):
    """A chip resized to `side`, turned by `tilt` degrees (round mask, no square edges) and pasted
    into a textured grey canvas with its centre at `at` (fractions of width, height).
    Returns (scene, (centre x, centre y, side))."""
    import cv2
    import numpy as np
    height, width = canvas
    rng = np.random.default_rng(seed)
    scene = np.clip(rng.normal(110, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    face = cv2.resize(chip, (side, side), interpolation=cv2.INTER_AREA)
    m = cv2.getRotationMatrix2D((side / 2, side / 2), tilt, 1.0)
    face = cv2.warpAffine(face, m, (side, side), borderMode=cv2.BORDER_REPLICATE)
    mask = np.zeros((side, side), np.uint8)
    cv2.circle(mask, (side // 2, side // 2), side // 2, 1, -1)
    x, y = int(at[0] * width - side / 2), int(at[1] * height - side / 2)
    region = scene[y:y + side, x:x + side]
    region[mask > 0] = face[mask > 0]
    return scene, (x + side / 2, y + side / 2, side)


@pytest.fixture(scope="session")
def paste_face():
    return paste


def small_face_beside_a_large_dim_one(chips):
    """A 640 x 480 scene: a 200 px face (chips[7]) in a dim left part, which only the contrast pass finds, and a
    72 px face (chips[2]) that the first pass finds (the cascade's size-filter tests)."""
    import cv2
    import numpy as np
    scene, _ = paste(chips[7], 200, at=(0.3, 0.5))
    scene[:, :380] = np.clip(scene[:, :380] * 0.22, 0, 255).astype(np.uint8)
    scene[200:272, 480:552] = cv2.resize(chips[2], (72, 72), interpolation=cv2.INTER_AREA)
    return scene


# ----------------------------------------------------------------------------------------------
# Generated faces in scenes (inference tests)

def detectable_faces(count):
    """`count` generated 160 px faces that the Haar cascade finds on a plain background
    (deterministic). Cartoon faces: dlib's HOG detector is for photos, so these tests use haar."""
    import demo_data
    import faces as face_pipeline
    pipe = face_pipeline.FacePipeline(face_pipeline.BOX_CROP, "haar")
    found = []
    for index in range(40):
        face = demo_data.draw_face(35, demo_data.image_rng(0, 35, index), size=160)
        if len(pipe.detect(scene([face]))) == 1:
            found.append(face)
        if len(found) == count:
            return found
    pytest.fail(f"fewer than {count} of 40 generated faces are detectable")


def scene(faces, height=240, gap=40):
    """Faces side by side on a grey background with some texture."""
    import numpy as np
    width = gap + sum(f.shape[1] + gap for f in faces)
    canvas = np.clip(np.random.default_rng(1).normal(100, 8, (height, width, 3)), 0, 255).astype(np.uint8)
    x = gap
    for face in faces:
        y = (height - face.shape[0]) // 2
        canvas[y:y + face.shape[0], x:x + face.shape[1]] = face
        x += face.shape[1] + gap
    return canvas


def write_rgb(path, rgb):
    """An RGB array as an image file, in a folder of its own (no output may go there)."""
    import cv2
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def constant_model(path, age=30.0, min_age=20, max_age=40, data="generated faces for the tests", interval=None,
                   age_map=None, preprocess=None, crop=None, extra=None, slope=0.0):
    """model.onnx that predicts `age` for every input, with export metadata (range min_age..max_age;
    None leaves the key out, as older models do; preprocess: a PreprocessConfig of 32 px, default plain; extra:
    more metadata keys; slope: years added per unit of the input's mean pixel value, for a model that sees light)."""
    import onnx
    from onnx import TensorProto, helper

    import faces as face_pipeline
    from custom_dataset import PreprocessConfig
    size = 32
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2, 3], keepdims=0),
         helper.make_node("Mul", ["m", "zero"], ["z"]),
         helper.make_node("Add", ["z", "age"], ["ages"])],
        "constant_age",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("ages", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor("zero", TensorProto.FLOAT, [], [float(slope)]),
         helper.make_tensor("age", TensorProto.FLOAT, [], [float(age)])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    metadata = {"format_version": 1, "model_name": "constant", "head": "regression", "min_age": min_age,
                "max_age": max_age, "crop": dict(crop or face_pipeline.BOX_CROP), "tta_flip": False, "data": data,
                "interval": interval, "age_map": age_map,
                "preprocess": (preprocess or PreprocessConfig(image_size=size, denoise=False, deblur=False)).to_dict()}
    metadata = {**{k: v for k, v in metadata.items() if v is not None}, **(extra or {})}
    entry = proto.metadata_props.add()
    entry.key, entry.value = "metadata.json", json.dumps(metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path


def read_rows(path):
    """(header, rows as dicts) of a CSV the scripts wrote."""
    import csv
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def write_noise_image(path, seed, size=24):
    """A tiny noise JPEG; a different seed gives different bytes."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, quality=90)


def rgb_icc_profile(gamma: float, name: str = "test", gray: bool = False) -> bytes:
    """A minimal ICC v2 display profile (sRGB's primaries adapted to D50, one pure gamma curve; gray: a gray
    profile with that curve), built here so the tests need no profile file: gamma 1.0 makes a linear-light
    profile, whose mid-gray is sRGB's 188."""
    import struct

    def s15(x):
        return struct.pack(">i", int(round(x * 65536)))

    def xyz(x, y, z):
        return b"XYZ " + bytes(4) + s15(x) + s15(y) + s15(z)

    curve = b"curv" + bytes(4) + struct.pack(">IH", 1, int(round(gamma * 256))) + bytes(2)
    text = name.encode() + b"\0"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(8) + bytes(3) + bytes(67)
    tags = [(b"desc", desc), (b"cprt", b"text" + bytes(4) + b"none\0"), (b"wtpt", xyz(0.9642, 1.0, 0.8249))]
    tags += [(b"kTRC", curve)] if gray else [
        (b"rXYZ", xyz(0.4361, 0.2225, 0.0139)), (b"gXYZ", xyz(0.3851, 0.7169, 0.0971)),
        (b"bXYZ", xyz(0.1431, 0.0606, 0.7141)), (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for sig, body in tags:
        data += bytes(-(offset + len(data)) % 4)  # tags start on 4-byte boundaries
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    body = struct.pack(">I", len(tags)) + table + data
    header = (struct.pack(">I", 128 + len(body)) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"mntr"
              + (b"GRAY" if gray else b"RGB ") + b"XYZ " + bytes(12)
              + b"acspAPPL" + bytes(24) + s15(0.9642) + s15(1.0) + s15(0.8249) + bytes(48))
    return header + body
