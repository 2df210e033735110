"""Gender and race groups: parsed from UTKFace names or a CSV, carried by the CSVs, counted per split."""

import json

import pytest

import eda  # imported while collecting, so no test pays for it
from conftest import read_rows, write_noise_image
from custom_dataset import discover_labels, read_split, utkface_groups, write_csv
from eda import SPLITS


# the README's irregular names included: a missing field, a space, a missing dot
GOLDEN = {
    "25_0_1_20170116174525125.jpg.chip.jpg": ("male", "Black"),
    "1_1_0_20161219140530307.jpg.chip.jpg": ("female", "White"),
    "33_0_2_20170104201937011.jpg.chip.jpg": ("male", "Asian"),
    "47_1_3_20170109132517209.jpg.chip.jpg": ("female", "Indian"),
    "8_0_4_20170103200805553.jpg.chip.jpg": ("male", "Others"),
    "26_1_2_2017.jpg.chip.jpg": ("female", "Asian"),            # short date
    "39_1_20170116174525125.jpg.chip.jpg": ("female", ""),      # missing race field
    "61_1_20170109142408075.jpg.chip.jpg": ("female", ""),      # missing race field
    "24_0_1_20170116220224657 .jpg.chip.jpg": ("male", "Black"),  # a space before the extension
    "55_0_0_20170116232725357jpg.chip.jpg": ("male", "White"),  # missing dot
    "30_1_7_20170116174525125.jpg.chip.jpg": ("", ""),          # a race code outside 0-4: not guessed
    "30_2_0_20170116174525125.jpg.chip.jpg": ("", ""),          # a gender code outside 0-1
    "30_x.jpg": ("", ""),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_utkface_name_groups_golden(name):
    assert tuple(utkface_groups(name).values()) == GOLDEN[name]


def test_utkface_layout_records_carry_groups(tmp_path):
    names = [n for n in GOLDEN if n != "30_x.jpg"]
    for i, name in enumerate(names):
        write_noise_image(tmp_path / name, seed=i)
    records, _, layout = discover_labels(tmp_path)
    assert layout == "utkface" and len(records) == len(names)
    by_name = {r["path"].rsplit("/", 1)[1]: (r["gender"], r["race"]) for r in records}
    assert by_name == {n: GOLDEN[n] for n in names}


def test_csv_gender_and_race_columns_are_kept_as_text(tmp_path):
    for i in range(3):
        write_noise_image(tmp_path / f"{i}.jpg", seed=i)
    (tmp_path / "labels.csv").write_text(
        "path,age,Gender,race\n0.jpg,30,woman , Pacific Islander\n1.jpg,40,,\n2.jpg,50,nonbinary,\n")
    records, _, layout = discover_labels(tmp_path)
    assert layout == "csv"
    assert [(r["gender"], r["race"]) for r in records] == [("woman", "Pacific Islander"), ("", ""),
                                                           ("nonbinary", "")]
    assert all("subject" not in r for r in records)


def test_csv_without_group_columns_has_no_group_keys(tmp_path):
    write_noise_image(tmp_path / "a.jpg", seed=0)
    (tmp_path / "labels.csv").write_text("path,age\na.jpg,30\n")
    records, _, _ = discover_labels(tmp_path)
    assert records and set(records[0]) == {"path", "age"}


@pytest.fixture(scope="module")
def utk_run(tmp_path_factory, run_eda):
    """24 UTKFace-named images (genders and races in turn, one name without race) through eda.py."""
    root = tmp_path_factory.mktemp("groups")
    data = root / "data"
    data.mkdir()
    for i in range(24):
        name = f"{20 + i % 6}_{i % 2}_{i % 5}_2017011{i:03d}.jpg.chip.jpg"
        if i == 23:
            name = f"{20 + i % 6}_1_2017011{i:03d}.jpg.chip.jpg"
        write_noise_image(data / name, seed=i)
    with pytest.MonkeyPatch.context() as mp:
        for fig in ("plot_samples", "plot_age_distribution", "plot_split_distributions"):  # test_eda checks them
            mp.setattr(eda, fig, lambda *args, **kwargs: None)
        report = run_eda(data, root / "out", "--seed", 1)
    return data, root / "out", report


def test_labels_and_split_csvs_carry_groups(utk_run):
    _, out, _ = utk_run
    columns, labels = read_rows(out / "labels.csv")
    assert columns == ["path", "age", "hash", "width", "height", "gender", "race"]
    for row in labels:
        assert (row["gender"], row["race"]) == tuple(utkface_groups(row["path"].rsplit("/", 1)[1]).values())
    for s in SPLITS:
        columns, rows = read_rows(out / "splits" / f"{s}.csv")
        assert columns == ["path", "age", "hash", "gender", "race"] and rows
        assert read_split(out / "splits" / f"{s}.csv") == [
            {"path": r["path"], "age": int(r["age"]), "gender": r["gender"], "race": r["race"], "hash": r["hash"]}
            for r in rows]


def test_report_counts_groups_per_split(utk_run):
    _, out, report = utk_run
    assert json.loads((out / "data_report.json").read_text()) == json.loads(json.dumps(report))
    assert set(report["groups"]) == {"gender", "race"}
    for column in ("gender", "race"):
        for s in SPLITS:
            _, rows = read_rows(out / "splits" / f"{s}.csv")
            expected = {}
            for r in rows:
                label = r[column] or "unknown"
                expected[label] = expected.get(label, 0) + 1
            assert report["groups"][column][s] == expected
            assert sum(report["groups"][column][s].values()) == report["splits"][s]
    total_unknown_race = sum(report["groups"]["race"][s].get("unknown", 0) for s in SPLITS)
    assert total_unknown_race == 1


def test_folder_per_age_has_no_group_columns(tmp_path, monkeypatch, run_eda):
    for age in range(20, 25):
        (tmp_path / "data" / str(age)).mkdir(parents=True)
        for k in range(3):
            write_noise_image(tmp_path / "data" / str(age) / f"{k}.jpg", seed=age * 10 + k)
    for fig in ("plot_samples", "plot_age_distribution", "plot_split_distributions"):
        monkeypatch.setattr(eda, fig, lambda *args, **kwargs: None)
    report = run_eda(tmp_path / "data", tmp_path / "out")
    assert report["groups"] == {}
    assert read_rows(tmp_path / "out" / "labels.csv")[0] == ["path", "age", "hash", "width", "height"]


def test_read_split_tolerates_old_and_extra_columns(tmp_path):
    old = tmp_path / "old.csv"
    old.write_text("path,age,hash\n/a.jpg,30,h1\n")
    assert read_split(old) == [{"path": "/a.jpg", "age": 30, "hash": "h1"}]
    new = tmp_path / "new.csv"
    new.write_text("path,age,hash,subject,gender,race,source,something_else\n/a.jpg,30,h1,007,,Asian,/s.jpg,x\n")
    assert read_split(new) == [{"path": "/a.jpg", "age": 30, "subject": "007", "gender": "", "race": "Asian"}]


def test_write_csv_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "labels.csv"
    write_csv(target, [{"path": "/a.jpg", "age": 3}], ["path", "age"])
    before = target.read_bytes()

    class Broken(dict):
        def get(self, *args):
            raise OSError(28, "No space left on device")
    with pytest.raises(OSError):  # a failure half-way through the rows
        write_csv(target, [{"path": "/b.jpg", "age": 4}, Broken()], ["path", "age"])
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["labels.csv"]  # no temporary file left behind


def test_files_written_together_are_replaced_together_or_not_at_all(tmp_path):
    """benchmark.py --ship's model and card: where the card's write fails, the model written before it is not put in
    place either (one atomic write after another left a new model beside the old card)."""
    from custom_dataset import atomic_write_together
    model, card = tmp_path / "model.onnx", tmp_path / "README.md"
    atomic_write_together({model: lambda f: f.write(b"model 1"), card: lambda f: f.write(b"card 1")})
    assert (model.read_bytes(), card.read_bytes()) == (b"model 1", b"card 1")

    def full_disk(f):
        f.write(b"card 2, half of it")
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError):
        atomic_write_together({model: lambda f: f.write(b"model 2"), card: full_disk})
    assert (model.read_bytes(), card.read_bytes()) == (b"model 1", b"card 1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "model.onnx"]  # no temporary file left


def test_write_image_round_trips_and_refuses_an_unknown_type(tmp_path):
    import cv2
    import numpy as np
    from custom_dataset import load_rgb, write_image
    rgb = np.zeros((8, 12, 3), np.uint8)
    rgb[..., 0] = 200  # red in RGB: a swapped channel order would read back as blue
    write_image(tmp_path / "a.png", rgb)
    assert np.array_equal(load_rgb(tmp_path / "a.png"), rgb)
    write_image(tmp_path / "b.jpg", rgb, (cv2.IMWRITE_JPEG_QUALITY, 95))
    assert np.abs(load_rgb(tmp_path / "b.jpg").astype(int) - rgb).max() <= 3
    with pytest.raises(ValueError, match="unsupported type '.xyz'"):
        write_image(tmp_path / "c.xyz", rgb)
    with pytest.raises(ValueError, match="70000x2 image as .jpg .*65500 pixels a side; use .png"):
        write_image(tmp_path / "pano.jpg", np.zeros((2, 70000, 3), np.uint8))  # a type JPEG has, a size it has not
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.jpg"]  # nothing half-written left
