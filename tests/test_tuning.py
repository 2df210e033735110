"""Tests of hyperparameter_tunning.py on a tiny synthetic data set: the overfit check, one CSV row per
trial, resuming without retraining, and a search that never opens the test split."""

import csv
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import custom_dataset
import hyperparameter_tunning as ht
import train
from conftest import make_splits
from custom_dataset import CustomDataset, DataError, PreprocessConfig, load_split_dataset
from cli import run_cli

IMAGE_SIZE = 64
# 2 lrs x 2 weight decays, 1 epoch each: the sweep trains 2 trials, the grid reuses 2 and trains 2.
SEARCH = ["--model", "simplecnn", "--image-size", str(IMAGE_SIZE), "--no-denoise", "--lrs", "1e-3,3e-3",
          "--weight-decays", "0,1e-3", "--top-lrs", "2", "--epochs-per-trial", "1", "--subset-fraction", "1",
          "--batch-size", "32", "--skip-overfit", "--no-progress", "--threads", "2"]
SLOW_FIXTURES = {"search"}  # trains the trials: the tests that use it are marked slow (conftest)


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """Synthetic faces (ages 20-50, 6 per age) and the splits eda.py writes for them."""
    root = tmp_path_factory.mktemp("tuning")
    splits = make_splits(root, min_age=20, max_age=50, per_age=6, size=IMAGE_SIZE, seed=0)
    return {"root": root, "splits": splits, "cache": root / "out" / "cache"}


@pytest.fixture(scope="session")
def train_set(demo):
    cfg = PreprocessConfig(image_size=IMAGE_SIZE, denoise=False)
    return load_split_dataset(demo["splits"] / "train.csv", cfg, demo["cache"], workers=1, progress=False)


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def count_train_calls(monkeypatch, change=None):
    """Replace train.main with a wrapper that records every call's arguments."""
    calls, real_main = [], train.main

    def counting_main(args):
        if change:
            change(args)
        calls.append(args)
        return real_main(args)

    monkeypatch.setattr(train, "main", counting_main)
    return calls


# ----------------------------------------------------------------------------------------------
# Overfit check

@pytest.mark.slow
def test_overfit_check_memorises_synthetic_faces(train_set):
    # 32 images instead of the default 64 keeps this under ~5 s (the default takes ~130 steps)
    result = ht.overfit_check("simplecnn", train_set, n_images=32, threshold=1.0, max_steps=300)
    assert result["passed"], result["final_mae"]
    assert result["final_mae"] < 1.0 and result["steps"] <= 300 and result["images"] == 32
    assert result["curve"][0][0] == 0 and result["curve"][-1] == [result["steps"], result["final_mae"]]


@pytest.mark.slow
def test_overfit_check_fails_when_identical_images_carry_different_ages(train_set):
    # every image twice, once aged a and once a + 10: for identical inputs the prediction is identical,
    # so the MAE of each pair is at least 5 years whatever the network learns; 1 year is unreachable
    images, ages = train_set.batch(range(8))
    nhwc = images.permute(0, 2, 3, 1).numpy()
    records = [{"path": f"img{i}", "age": int(a)} for i, a in enumerate(ages)]
    records += [{"path": f"img{i}", "age": int(a) + 10} for i, a in enumerate(ages)]
    contradictory = CustomDataset(records, train_set.cfg, np.concatenate([nhwc, nhwc]))
    result = ht.overfit_check("simplecnn", contradictory, n_images=16, threshold=1.0, max_steps=25)
    assert not result["passed"]
    assert result["steps"] == 25
    assert min(mae for _, mae in result["curve"]) >= 5.0 - 1e-3


def test_failed_overfit_check_exits_2_with_one_line(demo, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = [a for a in SEARCH if a != "--skip-overfit"] + [
        "--splits", str(demo["splits"]), "--out-dir", str(out), "--overfit-images", "8", "--overfit-steps", "2",
        "--overfit-threshold", "0"]
    assert "--skip-overfit" not in argv
    calls = count_train_calls(monkeypatch)
    monkeypatch.setattr(sys, "argv", ["hyperparameter_tunning.py", *argv])
    with pytest.raises(SystemExit) as exc:
        run_cli(ht.main, ht.get_args_parser())
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "cannot overfit 8 images (MAE" in err and "after 2 steps): the pipeline or model is broken" in err
    assert (out / "overfit.json").exists() and (out / "overfit.png").exists()
    assert not calls  # the search does not start


# ----------------------------------------------------------------------------------------------
# Search

def test_lr_options():
    parser = ht.get_args_parser()
    default = parser.parse_args(["--splits", "s", "--out-dir", "o"]).lrs
    assert len(default) == 5 and default[0] == pytest.approx(1e-4) and default[-1] == pytest.approx(3e-3)
    assert all(b / a == pytest.approx(default[1] / default[0], rel=0.02) for a, b in zip(default, default[1:]))
    args = parser.parse_args(["--splits", "s", "--out-dir", "o", "--lrs", "1e-4,3e-4,1e-3"])
    assert args.lrs == [1e-4, 3e-4, 1e-3]
    assert args.weight_decays == [0.0, 1e-4, 1e-3]


@pytest.fixture(scope="module")
def search(demo, tmp_path_factory):
    """A --skip-final search on splits without test.csv, with any attempt to read test.csv failing."""
    root = tmp_path_factory.mktemp("search")
    splits = root / "splits"
    splits.mkdir()
    for name in ("train.csv", "val.csv", "crop.json"):  # test.csv left behind on purpose
        shutil.copy(demo["splits"] / name, splits / name)
    argv = SEARCH + ["--splits", str(splits), "--cache-dir", str(demo["cache"]), "--out-dir", str(root / "run"),
                     "--skip-final"]
    opened, real_read_split = [], custom_dataset.read_split

    def guarded_read_split(path):
        opened.append(Path(path).name)
        if Path(path).name == "test.csv":
            raise AssertionError("the search opened the test split")
        return real_read_split(path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(custom_dataset, "read_split", guarded_read_split)
        calls = count_train_calls(mp)
        best = ht.main(ht.get_args_parser().parse_args(argv))
    return {"run": root / "run", "splits": splits, "argv": argv, "calls": calls, "best": best, "opened": opened}


def test_search_never_reads_the_test_split(search):
    assert search["opened"] and set(search["opened"]) <= {"train.csv", "val.csv"}
    assert all(args.no_test and args.no_export and args.no_tensorboard for args in search["calls"])
    assert search["best"]["final"] is None
    # what the trials measured, for the user to train: the recipe flags too, not only the chosen pair
    final = train.get_args_parser().parse_args(shlex.split(search["best"]["final_command"])[2:])
    assert final.image_size == IMAGE_SIZE != 128 and final.batch_size == 32 and final.lr == search["best"]["lr"]
    assert not final.no_test and final.epochs == ht.get_args_parser().parse_args(search["argv"]).final_epochs


def test_one_csv_row_per_trial_and_pairs_reused(search):
    run = search["run"]
    sweep, grid = rows(run / "lr_sweep.csv"), rows(run / "grid_search.csv")
    assert [float(r["lr"]) for r in sweep] == [1e-3, 3e-3]
    assert len(grid) == 4
    assert {(float(r["lr"]), float(r["weight_decay"])) for r in grid} == {(1e-3, 0), (1e-3, 1e-3), (3e-3, 0), (3e-3, 1e-3)}
    for r in sweep + grid:
        assert set(ht.COLUMNS) <= set(r) and r["status"] == "ok" and float(r["val_mae"]) > 0
        assert r["epochs"] == "1" and r["model"] == "simplecnn"
    # (lr, 0) pairs were trained in the sweep and reused in the grid: 2 + 2 trials, not 2 + 4
    assert sorted(r["source"] for r in grid) == ["lr_sweep", "lr_sweep", "trained", "trained"]
    assert len(search["calls"]) == 4
    assert len(list((run / "trials").iterdir())) == 4
    assert len([d for d in (run / "tb_hparams").iterdir() if d.is_dir()]) == 4
    for name in ("lr_sweep.png", "grid_search.png", "best_params.json"):
        assert (run / name).exists(), name
    best = min(sweep + grid, key=lambda r: float(r["val_mae"]))
    assert search["best"]["val_mae"] == pytest.approx(float(best["val_mae"]))
    assert search["best"]["lr"] == pytest.approx(float(best["lr"]))


def test_rerun_skips_finished_trials(search, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(search["run"], run)
    argv = [a if a != str(search["run"]) else str(run) for a in search["argv"]]
    before = {n: (run / n).read_text() for n in ("lr_sweep.csv", "grid_search.csv")}
    calls = count_train_calls(monkeypatch)
    ht.main(ht.get_args_parser().parse_args(argv))
    assert calls == []
    assert {n: (run / n).read_text() for n in before} == before
    # a search interrupted before its last grid row: only that trial runs again
    lines = before["grid_search.csv"].splitlines(keepends=True)
    (run / "grid_search.csv").write_text("".join(lines[:-1]))
    ht.main(ht.get_args_parser().parse_args(argv))
    assert len(calls) == 1 and calls[0].resume  # from its last.pt: same settings, same split
    assert len(rows(run / "grid_search.csv")) == 4
    # a last row cut short inside its text columns (an older version appended in place): not taken as a whole row
    rows_before = rows(run / "grid_search.csv")
    (run / "grid_search.csv").write_text("".join(lines[:-1]) + lines[-1].rstrip("\r\n")[:-30])
    ht.main(ht.get_args_parser().parse_args(argv))
    whole = rows(run / "grid_search.csv")
    assert len(whole) == 4 and whole[-1]["trial"] == rows_before[-1]["trial"] and whole[-1]["source"]
    assert len(calls) == 2  # that trial run again, not taken as finished


@pytest.mark.slow
def test_final_run_trains_the_best_pair_with_test_metrics(search, demo, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(search["run"], run)
    argv = SEARCH + ["--splits", str(demo["splits"]), "--cache-dir", str(demo["cache"]), "--out-dir", str(run),
                     "--final-epochs", "1"]

    def no_export(args):  # exports are train.py's concern and slow; everything else stays on
        args.no_export = True

    calls = count_train_calls(monkeypatch, no_export)
    best = ht.main(ht.get_args_parser().parse_args(argv))
    assert len(calls) == 1  # every trial was reused; only the final run trains
    final_args = calls[0]
    assert final_args.lr == pytest.approx(search["best"]["lr"])
    assert final_args.weight_decay == pytest.approx(search["best"]["weight_decay"])
    assert final_args.epochs == 1 and not final_args.no_test and final_args.subset_fraction == 1.0
    assert not final_args.no_tensorboard
    assert Path(final_args.out_dir) == run / "final"
    assert (run / "final" / "metrics.json").exists()
    assert best["final"]["test"]["n"] > 0
    saved = ht.json.loads((run / "best_params.json").read_text())
    assert saved["final"]["test"]["mae"] == pytest.approx(best["final"]["test"]["mae"])


def test_a_split_made_again_gives_new_trials_wherever_the_folder_is_named(demo, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(demo["splits"], copy)
    parse = lambda splits: ht.get_args_parser().parse_args(SEARCH + ["--splits", str(splits), "--out-dir", "o"])
    assert ht.settings_hash(parse(copy)) == ht.settings_hash(parse(demo["splits"]))  # same contents
    lines = (copy / "val.csv").read_text().splitlines(keepends=True)
    (copy / "val.csv").write_text("".join(lines[:-1]))  # eda.py run again: another validation split
    assert ht.settings_hash(parse(copy)) != ht.settings_hash(parse(demo["splits"]))


@pytest.mark.parametrize("flags, words", [(["--image-size", "8"], "--image-size must be between 16"),
                                          (["--warmup-epochs", "2"], "--epochs-per-trial 1"),
                                          (["--final-epochs", "1", "--warmup-epochs", "1.5"], "the final run")])
def test_settings_no_trial_could_run_are_one_line_before_anything_is_written(demo, tmp_path, flags, words):
    out = tmp_path / "r"
    argv = [a for a in SEARCH if a != "--skip-overfit"] + ["--splits", str(demo["splits"]), "--out-dir", str(out)]
    if "--final-epochs" in flags:  # trials of 2 epochs can warm up 1.5; the final run of 1 cannot
        argv[argv.index("--epochs-per-trial") + 1] = "2"
    with pytest.raises(DataError, match=words):
        ht.main(ht.get_args_parser().parse_args(argv + flags))
    assert not out.exists()  # refused before the overfit check built anything


def test_a_setting_error_names_the_tuners_help_and_the_run_only_where_the_epochs_matter(demo, tmp_path):
    argv = SEARCH + ["--splits", str(demo["splits"]), "--out-dir", str(tmp_path / "r"), "--dropout", "1.5"]
    with pytest.raises(DataError) as error:
        ht.main(ht.get_args_parser().parse_args(argv))
    assert "--dropout must be" in str(error.value) and "hyperparameter_tunning.py --help" in str(error.value)
    assert "in a trial" not in str(error.value)


def test_an_out_dir_among_the_images_is_refused_before_anything_is_written(demo):
    out = demo["root"] / "data" / "30" / "search"
    with pytest.raises(DataError, match="holds the data set's images"):
        ht.main(ht.get_args_parser().parse_args(SEARCH + ["--splits", str(demo["splits"]), "--out-dir", str(out)]))
    assert not out.exists()


def test_a_second_search_into_a_busy_out_dir_stops_before_any_trial(demo, tmp_path):
    """Both would rewrite the trials' CSVs (rows lost) and best_params.json."""
    import functions
    pytest.importorskip("fcntl", reason="a lock this process holds refuses it only through flock")
    out = tmp_path / "r"
    with functions.folder_lock(out, "hyperparameter_tunning.py"):
        with pytest.raises(DataError, match="in use by another hyperparameter_tunning.py"):
            ht.main(ht.get_args_parser().parse_args(SEARCH + ["--splits", str(demo["splits"]), "--out-dir", str(out)]))
    assert sorted(p.name for p in out.iterdir()) == []


def test_missing_val_split_is_a_data_error(demo, tmp_path):
    splits = tmp_path / "splits"
    splits.mkdir()
    shutil.copy(demo["splits"] / "train.csv", splits / "train.csv")
    with pytest.raises(DataError, match="val.csv"):
        ht.main(ht.get_args_parser().parse_args(SEARCH + ["--splits", str(splits), "--out-dir", str(tmp_path / "r")]))


@pytest.mark.slow
@pytest.mark.parametrize("online", [False, True])
def test_a_search_with_teachers_predicts_them_once_for_all_trials(demo, tmp_path, monkeypatch, online):
    teacher = tmp_path / "teacher"
    train.main(train.get_args_parser().parse_args(
        ["--splits", str(demo["splits"]), "--cache-dir", str(demo["cache"]), "--out-dir", str(teacher),
         "--image-size", str(IMAGE_SIZE), "--epochs", "1", "--no-progress", "--threads", "2", "--no-test",
         "--no-export", "--no-tensorboard"]))
    predicted, real_predict = [], train.predict_teachers
    monkeypatch.setattr(train, "predict_teachers", lambda *a: predicted.append(a[0]) or real_predict(*a))
    calls = count_train_calls(monkeypatch)
    argv = [a if a != "1e-3,3e-3" else "1e-3" for a in SEARCH] + [
        "--weight-decays", "0", "--top-lrs", "1", "--splits", str(demo["splits"]), "--cache-dir", str(demo["cache"]),
        "--out-dir", str(tmp_path / "run"), "--skip-final", "--teacher", str(teacher / "best.pt")] + (
        ["--teacher-online"] if online else [])
    ht.main(ht.get_args_parser().parse_args(argv))
    assert predicted == [[str(teacher / "best.pt")]] and calls  # the teachers' table once, before the trials
    table = tmp_path / "run" / "teacher.npz"
    # online: every trial runs the checkpoints on its batches, and reads the table (the split check) kept for them
    assert table.is_file() and all(args.teacher == str(teacher / "best.pt" if online else table) for args in calls)


def test_a_search_with_online_teachers_passes_the_checkpoints_to_every_trial(tmp_path, monkeypatch):
    teacher = tmp_path / "best.pt"
    teacher.write_bytes(b"checkpoint bytes")  # only hashed here: the trials load it
    (splits := tmp_path / "splits").mkdir()
    for name in ("train.csv", "val.csv"):
        (splits / name).write_text("path,age\n")
    tables = []
    monkeypatch.setattr(train, "write_teacher_table", lambda args, cache, path: tables.append(path) or
                        path.write_bytes(b"the table"))
    args = ht.get_args_parser().parse_args(SEARCH + ["--splits", str(splits), "--out-dir", str(tmp_path / "run"),
                                                     "--teacher", str(teacher), "--teacher-online"])
    ready = ht.with_teacher_table(args, tmp_path, tmp_path / "cache")
    assert ready.teacher == str(teacher) and tables == [tmp_path / "teacher.npz"]
    trial = train.get_args_parser().parse_args(ht.trial_argv(ready, 1e-3, 0.0, 1, tmp_path / "t", "cache"))
    train.check_settings(trial)  # train.py refused --teacher TABLE with --teacher-online, after the overfit check
    assert trial.teacher == str(teacher) and trial.teacher_online
    ht.place_teacher_table(ready, tmp_path, tmp_path / "t")  # the trial finds the table made from its teachers
    assert (tmp_path / "t" / "teacher.npz").read_bytes() == b"the table"
    assert (tmp_path / "t" / "teacher.npz").stat().st_ino == (tmp_path / "teacher.npz").stat().st_ino  # shared
    monkeypatch.setattr(ht.os, "link", lambda *a: (_ for _ in ()).throw(OSError("no hard links here")))
    ht.place_teacher_table(ready, tmp_path, tmp_path / "t2")
    assert (tmp_path / "t2" / "teacher.npz").read_bytes() == b"the table"
    teacher.write_bytes(b"other checkpoint")  # other teachers: other trials
    assert ht.settings_hash(ht.with_teacher_table(args, tmp_path, tmp_path / "cache")) != ht.settings_hash(ready)


def test_a_trial_or_the_final_run_is_resumed_only_on_the_split_it_started_with(tmp_path, monkeypatch):
    (splits := tmp_path / "splits").mkdir()
    for name in ("train.csv", "val.csv", "test.csv"):
        (splits / name).write_text("path,age\n")
    args = ht.get_args_parser().parse_args(SEARCH + ["--splits", str(splits), "--out-dir", str(tmp_path)])
    argv = ht.trial_argv(args, 1e-3, 0.0, 3, tmp_path / "final", "cache", final=True)
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "last.pt").touch()
    saved = {"config": vars(train.get_args_parser().parse_args(argv)), "split_digest": train.split_digest(splits)}
    monkeypatch.setattr(ht, "load_checkpoint", lambda path: saved)
    assert ht.should_resume(tmp_path / "final", argv)
    (splits / "test.csv").write_text("path,age\na.jpg,30\n")  # eda.py made the split again
    assert not ht.should_resume(tmp_path / "final", argv)  # train.py --resume would refuse the new split


def test_a_final_run_is_not_resumed_on_teacher_tables_rewritten_since(tmp_path):
    """train.py --resume refuses them, and the tuner has no --overwrite to pass: the search died."""
    import torch
    (splits := tmp_path / "splits").mkdir()
    for name in ("train.csv", "val.csv", "test.csv"):
        (splits / name).write_text("path,age\n")
    table = tmp_path / "teacher.npz"
    table.write_bytes(b"the teachers' table")
    args = ht.get_args_parser().parse_args(SEARCH + ["--splits", str(splits), "--out-dir", str(tmp_path),
                                                     "--teacher", str(table)])
    argv = ht.trial_argv(args, 1e-3, 0.0, 3, tmp_path / "final", "cache", final=True)
    (tmp_path / "final").mkdir()
    torch.save({"config": vars(train.get_args_parser().parse_args(argv)), "split_digest": train.split_digest(splits),
                "model_state": {}, "epoch": 1, "teachers_digest": train.teachers_digest(str(table))},
               tmp_path / "final" / "last.pt")
    assert ht.should_resume(tmp_path / "final", argv)
    table.write_bytes(b"the table of teachers trained again")
    assert not ht.should_resume(tmp_path / "final", argv)


def test_every_teacher_table_of_a_search_is_in_its_trials_key(tmp_path):
    (splits := tmp_path / "splits").mkdir()
    for name in ("train.csv", "val.csv", "crop.json"):
        (splits / name).write_text(f"{name}\n")
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "teacher.npz").write_bytes(f"table {name}".encode())
    teachers = f"{tmp_path / 'a' / 'teacher.npz'},{tmp_path / 'b' / 'teacher.npz'}"
    args = ht.get_args_parser().parse_args(["--splits", str(splits), "--out-dir", str(tmp_path / "out"),
                                            "--teacher", teachers])
    before = ht.data_digest(args)
    (tmp_path / "b" / "teacher.npz").write_bytes(b"table b, predicted by other teachers")
    assert ht.data_digest(args) != before


@pytest.mark.slow
def test_a_failing_final_run_leaves_the_chosen_pair_in_best_params(search, demo, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(search["run"], run)
    (run / "best_params.json").write_text('{"lr": 0.5, "note": "an earlier search"}')
    argv = [a for a in search["argv"] if a != "--skip-final"]
    argv[argv.index("--out-dir") + 1] = str(run)
    argv[argv.index("--splits") + 1] = str(demo["splits"])

    def diverging(args):
        raise DataError("the loss became NaN at epoch 3")
    monkeypatch.setattr(train, "main", diverging)
    with pytest.raises(DataError, match="NaN"):
        ht.main(ht.get_args_parser().parse_args(argv))
    saved = ht.json.loads((run / "best_params.json").read_text())
    assert saved["lr"] == pytest.approx(search["best"]["lr"]) and saved["final"] is None
    assert saved["final_command"].startswith("python train.py ") and "note" not in saved
    assert saved["skip_final"] is False and search["best"]["skip_final"] is True  # a final that failed, not one skipped


def test_a_search_stops_where_its_split_was_replaced_meanwhile(tmp_path):
    splits = tmp_path / "splits"
    splits.mkdir()
    for name in ("train.csv", "val.csv", "crop.json"):
        (splits / name).write_text(f"{name}\n")
    args = ht.get_args_parser().parse_args(["--splits", str(splits), "--out-dir", str(tmp_path / "out")])
    data = ht.data_digest(args)
    ht.same_split_as_the_search(args, data)  # unchanged: goes on
    (splits / "test.csv").write_text("another test split\n")  # trials never read it: still the same search
    ht.same_split_as_the_search(args, data)
    (splits / "val.csv").write_text("other faces\n")
    with pytest.raises(DataError, match="changed while the search ran"):
        ht.same_split_as_the_search(args, data)


def test_a_split_replaced_while_a_trial_read_it_keeps_no_row(demo, tmp_path, monkeypatch):
    """The check before each trial cannot see an eda.py run during it (the last trial of a --skip-final search
    had no later check at all): its figures would be ranked as this search's."""
    splits = tmp_path / "splits"
    shutil.copytree(demo["splits"], splits)
    args = ht.get_args_parser().parse_args(SEARCH + ["--splits", str(splits), "--out-dir", str(tmp_path / "out")])
    search = ht.Search(args, tmp_path / "out", tmp_path / "cache")

    def eda_meanwhile(train_args):
        (splits / "val.csv").write_text((splits / "val.csv").read_text() + (splits / "train.csv").read_text()
                                        .splitlines()[1] + "\n")
        return {}
    monkeypatch.setattr(train, "main", eda_meanwhile)
    try:
        with pytest.raises(DataError, match="changed while the search ran"):
            search.run("lr_sweep", 1e-3, 0.0, "lr sweep 1/1")
    finally:
        search.close()
    assert not (tmp_path / "out" / "lr_sweep.csv").exists()
