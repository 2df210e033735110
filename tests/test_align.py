"""eda.py --align end to end: un-aligned photos are cut into chips once, the split and the model
carry the crop recipe, and inference.py cuts a new photo the same way."""
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

import faces
from conftest import REPO

pytestmark = pytest.mark.slow  # runs eda.py on generated and real faces; one test trains a model


def test_utkface_and_plain_folders_record_their_crop(demo_dir, run_eda, tmp_path):
    report = run_eda(demo_dir, tmp_path / "out")
    assert report["crop"] == faces.BOX_CROP and report["align"] is None
    assert faces.read_split_crop(tmp_path / "out" / "splits") == faces.BOX_CROP
    utk = tmp_path / "utk"
    utk.mkdir()
    for i, path in enumerate(sorted(demo_dir.rglob("*.jpg"))[:12]):
        (utk / f"{path.parent.name}_0_0_2017010{i:02d}.jpg.chip.jpg").write_bytes(path.read_bytes())
    report = run_eda(utk, tmp_path / "utk_out", "--align")  # UTKFace files are chips already: not re-cut
    assert report["layout"] == "utkface" and report["crop"] == faces.UTKFACE_CROP and report["align"] is None
    assert not (tmp_path / "utk_out" / "chips").exists()
    assert faces.read_split_crop(tmp_path / "utk_out" / "splits") == faces.UTKFACE_CROP


def test_the_crop_recipe_follows_the_files_not_the_layout(demo_dir, run_eda, tmp_path, capsys):
    """UTKFace's in-the-wild photos carry its names without ".chip": whole photos, cut by the detector at
    inference, not chips; its aligned chips sorted into folders by age are chips all the same."""
    demo = sorted(demo_dir.rglob("*.jpg"))[:12]
    wild, by_age = tmp_path / "wild", tmp_path / "by_age"
    for i, path in enumerate(demo):
        wild.mkdir(exist_ok=True)
        (wild / f"{path.parent.name}_0_0_2017010{i:02d}.jpg").write_bytes(path.read_bytes())
        (by_age / path.parent.name).mkdir(parents=True, exist_ok=True)
        (by_age / path.parent.name / f"{path.parent.name}_0_0_2017010{i:02d}.jpg.chip.jpg").write_bytes(
            path.read_bytes())
    report = run_eda(wild, tmp_path / "wild_out")
    assert report["layout"] == "utkface" and report["crop"] == faces.BOX_CROP
    assert "do not end in .chip.jpg" in capsys.readouterr().out
    report = run_eda(by_age, tmp_path / "by_age_out", "--align")
    assert report["layout"] == "folder_per_age" and report["crop"] == faces.UTKFACE_CROP and report["align"] is None


def test_align_trains_on_chips_and_inference_cuts_the_same_chip(utkface_chips, paste_face, run_eda, tmp_path):
    data = tmp_path / "photos"
    for i, chip in enumerate(utkface_chips[:6] * 2):
        folder = data / str(25 + i % 3)
        folder.mkdir(parents=True, exist_ok=True)
        scene, _ = paste_face(chip, 150 + 20 * (i % 4), tilt=(-10, 0, 10)[i % 3], at=(0.45, 0.5), seed=i)
        cv2.imwrite(str(folder / f"{i}.jpg"), cv2.cvtColor(scene, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(data / "25" / "blank.jpg"), np.full((300, 400, 3), 120, np.uint8))
    out = tmp_path / "out"
    report = run_eda(data, out, "--align")
    assert report["skipped"].get("no_face") == 1 and report["align"]["chipped"] == 12
    cut = {**faces.UTKFACE_CROP, "detector": "auto"}  # the recipe names the detector the chips were cut after
    assert report["crop"] == cut
    rows = (out / "splits" / "train.csv").read_text().splitlines()
    assert rows[0] == "path,age,hash,source"
    assert all(str(out / "chips") in r and str(data) in r for r in rows[1:])
    assert faces.read_split_crop(out / "splits") == cut
    again = run_eda(data, tmp_path / "out", "--align")
    assert again["align"]["from_cache"] == 13 and again["splits"] == report["splits"]

    run = out / "run"
    subprocess.run([sys.executable, "train.py", "--splits", out / "splits", "--out-dir", run, "--epochs", "1",
                    "--image-size", "64", "--batch-size", "8", "--threads", "1", "--no-progress", "--no-tensorboard"],
                   cwd=REPO, check=True, capture_output=True, timeout=300)
    import onnx
    props = {p.key: p.value for p in onnx.load(str(run / "model.onnx")).metadata_props}
    assert json.loads(props["metadata.json"])["crop"] == cut

    photo = data / "26" / "1.jpg"
    crops = tmp_path / "crops"
    proc = subprocess.run([sys.executable, "inference.py", "--model", run / "model.onnx", "--image", photo,
                           "--output", tmp_path / "annotated.jpg", "--save-crops", crops, "--threads", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "auto detector, aligned 200 px chip from 68 landmarks" in proc.stdout
    seen = cv2.imread(str(crops / "1_0.png"))
    trained = cv2.resize(cv2.imread(next(r.split(",")[0] for r in (out / "labels.csv").read_text().splitlines()[1:]
                                         if r.endswith(str(photo)))), (64, 64), interpolation=cv2.INTER_AREA)
    assert seen.shape == (64, 64, 3)
    assert np.abs(seen.astype(float) - trained).mean() < 3  # the very crop training saw
