"""eda.py end to end on a small generated set, and its one-line errors."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import assert_one_line_error, read_rows
from eda import SPLITS

FIGURES = ("pics/sample_images.png", "figs/age_distribution.png", "figs/train_test_valid_age_distri.png")


@pytest.fixture(scope="module")
def eda_run(tmp_path_factory, demo_dir, run_eda):
    """The demo set plus one same-age duplicate, one cross-age conflict pair and one broken file."""
    data = tmp_path_factory.mktemp("eda") / "data"
    shutil.copytree(demo_dir, data)
    ages = sorted(int(p.name) for p in data.iterdir())
    dup_src = next((data / str(ages[0])).iterdir())
    shutil.copyfile(dup_src, dup_src.with_name("dup_" + dup_src.name))
    clash = sorted((data / str(ages[1])).iterdir())[0]
    shutil.copyfile(clash, data / str(ages[2]) / ("clash_" + clash.name))
    (data / str(ages[3]) / "broken.jpg").write_bytes(b"")
    (data / str(ages[3]) / "notes.txt").write_text("not an image")
    injected = {"duplicate_files_removed": 1, "conflict_groups_dropped": 1, "conflict_files_dropped": 2,
                "skipped": {"empty_file": 1, "not_an_image_name": 1}}
    out = data.parent / "out"
    report = run_eda(data, out, "--seed", 5)
    return data, out, report, injected


def test_all_outputs_exist_and_figures_decode(eda_run):
    _, out, _, _ = eda_run
    for name in ("labels.csv", "data_report.json", *(f"splits/{s}.csv" for s in SPLITS)):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in FIGURES:
        with Image.open(out / name) as img:
            img.load()
            assert img.width > 0 and img.height > 0, name
    assert json.loads((out / "data_report.json").read_text()) == json.loads(json.dumps(eda_run[2]))


def test_labels_csv(eda_run):
    data, out, report, _ = eda_run
    columns, rows = read_rows(out / "labels.csv")
    assert columns == ["path", "age", "hash", "width", "height"]
    assert len(rows) == report["used"]
    for row in rows:
        path = Path(row["path"])
        assert path.is_file() and data in path.parents
        assert int(row["age"]) == int(path.parent.name)
        with Image.open(path) as img:
            assert (int(row["width"]), int(row["height"])) == img.size
    assert len({r["hash"] for r in rows}) == len(rows)


def test_report_counts_add_up(eda_run):
    data, out, report, injected = eda_run
    files = [p for p in data.rglob("*") if p.is_file()]
    assert report["found"] == len(files)
    d = report["duplicates"]
    assert report["found"] == (report["used"] + sum(report["skipped"].values()) + d["duplicate_files_removed"]
                               + d["conflict_files_dropped"])
    assert report["skipped"] == injected["skipped"]
    assert d == {k: injected[k] for k in d}
    _, rows = read_rows(out / "labels.csv")
    ages = [int(r["age"]) for r in rows]
    assert (report["age"]["min"], report["age"]["max"]) == (min(ages), max(ages))
    assert report["layout"] == "folder_per_age" and report["seed"] == 5


def test_splits_cover_used_images_once(eda_run):
    _, out, report, _ = eda_run
    _, labels = read_rows(out / "labels.csv")
    split_rows = {s: read_rows(out / "splits" / f"{s}.csv")[1] for s in SPLITS}
    assert {s: len(r) for s, r in split_rows.items()} == report["splits"]
    paths = [r["path"] for rows in split_rows.values() for r in rows]
    assert sorted(paths) == sorted(r["path"] for r in labels)
    hashes = [set(r["hash"] for r in rows) for rows in split_rows.values()]
    assert not (hashes[0] & hashes[1] or hashes[0] & hashes[2] or hashes[1] & hashes[2])
    assert all(len(rows) > 0 for rows in split_rows.values())


@pytest.mark.slow
def test_same_seed_same_split(eda_run, run_eda, tmp_path):
    data, out, _, _ = eda_run
    run_eda(data, tmp_path / "again", "--seed", 5)
    for s in SPLITS:
        assert (tmp_path / "again" / "splits" / f"{s}.csv").read_bytes() == (out / "splits" / f"{s}.csv").read_bytes()


@pytest.mark.slow
def test_cli_only_bad_files(tmp_path, eda_cli):
    data = tmp_path / "data"
    (data / "30").mkdir(parents=True)
    (data / "30" / "empty.jpg").write_bytes(b"")
    (data / "30" / "text.jpg").write_text("not a picture")
    (data / "31").mkdir()
    (data / "31" / "half.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00")
    proc = eda_cli("--data-dir", data, "--out-dir", tmp_path / "out")  # progress bars left on
    assert_one_line_error(proc)
    assert "empty_file" in proc.stderr
    assert not (tmp_path / "out" / "labels.csv").exists()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["out_inside_data", "out_is_data", "missing_data", "empty_folder",
                                  "out_next_to_csv"])
def test_cli_refuses_bad_folders(tmp_path, demo_dir, eda_cli, case):
    data = tmp_path / "data"
    if case == "missing_data":
        out = tmp_path / "out"
    elif case == "empty_folder":
        data.mkdir()
        out = tmp_path / "out"
    elif case == "out_next_to_csv":
        data.mkdir()
        (data / "labels.csv").write_text("path,age\n")
        out = data / "out"
        data = data / "labels.csv"
    else:
        shutil.copytree(demo_dir, data)
        out = data / "eda_out" if case == "out_inside_data" else data
    before = sorted(p for p in tmp_path.rglob("*"))
    proc = eda_cli("--data-dir", data, "--out-dir", out)
    assert_one_line_error(proc)
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere


def test_out_dir_among_a_csvs_images_outside_its_folder_is_refused(tmp_path, run_eda):
    from conftest import write_rgb
    import numpy as np
    from custom_dataset import DataError
    rng = np.random.default_rng(0)
    for k in range(12):
        write_rgb(tmp_path / "img" / f"{k}.png", rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "labels.csv").write_text("path,age\n" + "".join(f"../img/{k}.png,{20 + k}\n" for k in range(12)))
    with pytest.raises(DataError, match="holds labelled images"):
        run_eda(meta / "labels.csv", tmp_path / "img" / "out")
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == [f"{k}.png" for k in sorted(range(12), key=str)]


@pytest.mark.slow
def test_a_split_folder_left_by_an_earlier_run_with_the_same_pid_does_not_block_the_next(eda_run, run_eda):
    import os
    data, out, report, _ = eda_run
    stale = out / f".splits.old.{os.getpid()}"  # what a run killed while removing the old split left
    stale.mkdir()
    (stale / "train.csv").write_text("x")
    again = run_eda(data, out, "--seed", 5)
    assert again["splits"] == report["splits"] and not list(out.glob(".splits*"))


def test_a_failure_writing_labels_leaves_the_last_runs_split_and_report_together(eda_run, run_eda, tmp_path,
                                                                                   monkeypatch):
    """The split folder was replaced first: a run that then failed left the new split beside the old report,
    which every export of a model trained on it quotes."""
    import eda
    data, out, _, _ = eda_run
    run = tmp_path / "out"
    shutil.copytree(out, run)
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.suffix != ".png"}
    real_write_csv = eda.write_csv

    def disk_full_at_labels(path, *args, **kwargs):
        if "labels.csv" in Path(path).name:
            raise OSError(28, "No space left on device")
        return real_write_csv(path, *args, **kwargs)
    monkeypatch.setattr(eda, "write_csv", disk_full_at_labels)
    with pytest.raises(OSError):
        run_eda(data, run, "--seed", 6, "--max-age", "27")
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.suffix != ".png"}
    assert after == before  # no staged file left, nothing replaced


def test_a_split_folder_holding_the_users_files_is_not_replaced(eda_run, run_eda, tmp_path):
    from custom_dataset import DataError
    data, out, _, _ = eda_run
    run = tmp_path / "out"
    shutil.copytree(out, run)
    (run / "splits" / "fgnet_holdout.csv").write_text("path,age\n")
    with pytest.raises(DataError, match="fgnet_holdout.csv"):
        run_eda(data, run, "--seed", 6)
    assert (run / "splits" / "fgnet_holdout.csv").is_file()


def test_an_out_dir_inside_another_labelled_data_set_is_refused(demo_dir, run_eda, tmp_path):
    """Its figures would be read as age-30 faces by the next eda.py run on that set."""
    from custom_dataset import DataError
    other = tmp_path / "other"
    shutil.copytree(demo_dir, other)
    with pytest.raises(DataError, match="labelled face data set"):
        run_eda(demo_dir, other / "25" / "eda_out")
    assert not (other / "25" / "eda_out").exists()


@pytest.mark.parametrize("flags", [["--align-crop", "utkface5"], ["--detector", "mmod"]])
def test_align_settings_without_align_are_refused(demo_dir, run_eda, tmp_path, flags):
    """The whole photos were used as they are and the chosen recipe or detector lost without a word."""
    from custom_dataset import DataError
    with pytest.raises(DataError, match="add --align"):
        run_eda(demo_dir, tmp_path / "out", *flags)
    assert not (tmp_path / "out").exists()
