"""Input that train.py and hyperparameter_tunning.py must refuse up front (a split without test.csv, a broken split
CSV, a default cache inside the data set, an empty --teacher, a negative --seed), eda.py's figures after the split
is written, and the teacher table's record of its teachers' test-time views."""
import argparse

import numpy as np
import pytest
import torch

import checkpoints
import hyperparameter_tunning as ht
import train
from conftest import assert_one_line_error, run_script
from custom_dataset import DataError
from model import build_model


def fake_splits(folder, data, names=("train", "val", "test")):
    """Split CSVs naming files under data/20 and data/21 (only their folders are read by these checks)."""
    for age in ("20", "21"):
        (data / age).mkdir(parents=True, exist_ok=True)
        (data / age / "face.jpg").write_bytes(b"a photo")
    folder.mkdir(parents=True)
    for name in names:
        (folder / f"{name}.csv").write_text(f"path,age\n{data / '20' / 'face.jpg'},20\n{data / '21' / 'face.jpg'},21\n")
    return folder


def train_args(splits, out, *extra):
    return train.get_args_parser().parse_args(["--splits", str(splits), "--out-dir", str(out), *extra])


def tuner_args(splits, out, *extra):
    return ht.get_args_parser().parse_args(["--splits", str(splits), "--out-dir", str(out), *extra])


def test_a_search_whose_final_run_has_no_test_split_is_refused_before_it_starts(tmp_path):
    splits = fake_splits(tmp_path / "splits", tmp_path / "data", names=("train", "val"))
    with pytest.raises(DataError, match=r"test\.csv not found .*or pass --skip-final"):
        ht.check_args(tuner_args(splits, tmp_path / "search"))
    ht.check_args(tuner_args(splits, tmp_path / "search", "--skip-final"))  # no final run: no test split needed
    assert not (tmp_path / "search").exists()


def broken_train_csv(splits, data, kind):
    rows = "".join(f"{data / '20' / f'face{i}.jpg'},20\n" for i in range(8000))
    if kind == "stray quote":  # the quote swallows every row after it, over csv's 128 KiB field limit
        text = f'path,age\n"{data / "20" / "face.jpg"},20\n' + rows
    else:
        text = f"path,age\n{data / '20' / ('x' * 200_000)}.jpg,20\n"
    (splits / "train.csv").write_text(text)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["stray quote", "long field"])
def test_a_broken_split_csv_is_one_line_in_every_check_that_reads_it(tmp_path, kind):
    splits = fake_splits(tmp_path / "splits", tmp_path / "data")
    broken_train_csv(splits, tmp_path / "data", kind)
    proc = run_script("train.py", "--splits", splits, "--out-dir", tmp_path / "run", "--no-progress")
    assert_one_line_error(proc, str(splits / "train.csv"), "is not a readable split CSV", "rerun eda.py")
    with pytest.raises(DataError, match="is not a readable split CSV"):
        ht.check_args(tuner_args(splits, tmp_path / "search"))
    with pytest.raises(DataError, match="is not a readable split CSV"):
        train.split_faces_digest(splits)  # export_mobile --quantize's check of the split
    assert not checkpoints.split_is_the_runs({"split_faces": "the run's"}, splits)


class Started(Exception):
    """train.main got past its checks."""


def test_the_default_cache_inside_the_data_set_is_refused_as_an_explicit_one_is(tmp_path, monkeypatch):
    data = tmp_path / "data"
    splits = fake_splits(data / "splits", data)  # a split made by hand inside the data set: its ../cache is too
    monkeypatch.setattr(train, "setup_distributed", lambda args: (_ for _ in ()).throw(Started()))
    with pytest.raises(DataError, match=r"--cache-dir \(default: SPLITS/\.\./cache\) .*holds the data set's images"):
        train.main(train_args(splits, tmp_path / "run"))
    with pytest.raises(DataError, match=r"--cache-dir \(default: SPLITS/\.\./cache\) .*holds the data set's images"):
        ht.check_args(tuner_args(splits, tmp_path / "search"))
    with pytest.raises(Started):  # a cache outside the data set: training starts
        train.main(train_args(splits, tmp_path / "run", "--cache-dir", str(tmp_path / "cache")))
    ht.check_args(tuner_args(splits, tmp_path / "search", "--cache-dir", str(tmp_path / "cache")))
    assert not (data / "cache").exists()


@pytest.mark.parametrize("teacher", [" ", ",", " , "])
def test_a_teacher_naming_no_file_is_refused_before_training(tmp_path, teacher):
    splits = fake_splits(tmp_path / "splits", tmp_path / "data")
    with pytest.raises(DataError, match="--teacher .* names no file"):
        train.check_settings(train_args(splits, tmp_path / "run", "--teacher", teacher))


def test_a_negative_seed_is_refused_before_training_or_searching(tmp_path):
    splits = fake_splits(tmp_path / "splits", tmp_path / "data")
    with pytest.raises(DataError, match=r"--seed must be 0 or more, got -1 \(see train\.py --help\)"):
        train.check_settings(train_args(splits, tmp_path / "run", "--seed", "-1"))
    with pytest.raises(DataError, match=r"--seed must be 0 or more, got -3 \(see hyperparameter_tunning\.py --help\)"):
        ht.check_args(tuner_args(splits, tmp_path / "search", "--seed", "-3"))
    train.check_settings(train_args(splits, tmp_path / "run", "--seed", "0"))


def test_a_figure_that_fails_after_the_split_is_written_is_a_warning(demo_dir, tmp_path, run_eda, monkeypatch,
                                                                       capsys):
    import eda
    out = tmp_path / "out"
    run_eda(demo_dir, out, "--seed", 1)
    assert (out / "pics" / "sample_images.png").is_file()
    capsys.readouterr()

    def unreadable(path, max_side=None):
        raise OSError(f"cannot identify image file {str(path)!r}")
    monkeypatch.setattr(eda, "load_rgb", unreadable)  # a photo gone bad since the scan
    report = run_eda(demo_dir, out, "--seed", 2)
    assert report["seed"] == 2 and '"seed": 2' in (out / "data_report.json").read_text()  # the new split committed
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "sample_images.png" in warnings[0] and "cannot identify image file" in warnings[0]
    assert not (out / "pics" / "sample_images.png").exists()  # not the first split's samples under the second's name
    assert (out / "figs" / "age_distribution.png").is_file()
    assert (out / "figs" / "train_test_valid_age_distri.png").is_file()


def test_a_teacher_table_is_predicted_again_when_the_teachers_test_time_views_change(tmp_path, monkeypatch):
    """--choose-zooms on a resumed teacher rewrites its tta_zoom, not its weights; its table's figures were
    averaged over the views it had."""
    model = build_model("simplecnn", "distribution", 20, 40, 32)
    teacher = tmp_path / "best.pt"
    torch.save({"model_state": model.state_dict(), "config": {"tta_flip": True, "tta_zoom": None}}, teacher)
    table = {"hash": np.asarray(["a"]), "age_grid": np.asarray([20], np.int32), "probs": np.ones((1, 1), np.float32)}
    monkeypatch.setattr(train, "predict_teachers",
                        lambda sources, args, cache_dir, faces: {**table, "split_faces": np.asarray(faces)})
    out = tmp_path / "run"
    out.mkdir()
    args = argparse.Namespace(teacher=str(teacher), splits=str(tmp_path / "splits"))
    train.write_teacher_table(args, tmp_path / "cache", out / "teacher.npz")
    faces = train.split_faces_digest(args.splits)
    assert train.kept_teacher_table(out / "teacher.npz", str(teacher), faces) is not None
    torch.save({"model_state": model.state_dict(), "config": {"tta_flip": True, "tta_zoom": None},
                "interval": {"level": 0.9}}, teacher)  # a --calibrate re-save: the same teacher
    assert not train.teachers_changed(out, str(teacher))
    torch.save({"model_state": model.state_dict(), "config": {"tta_flip": True, "tta_zoom": "0.9"}}, teacher)
    assert train.kept_teacher_table(out / "teacher.npz", str(teacher), faces) is None  # a fresh student predicts
    assert train.teachers_changed(out, str(teacher))  # a resumed one would learn from another teacher
    # a table from before the views were recorded: judged by the weights, as its run began
    kept = dict(np.load(out / "teacher.npz", allow_pickle=False))
    np.savez(out / "teacher.npz", **{k: v for k, v in kept.items() if k != "teachers_views"})
    assert not train.teachers_changed(out, str(teacher))
