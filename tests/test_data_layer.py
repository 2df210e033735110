"""Label discovery (three layouts), age filters, de-duplication and the stratified split."""

import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image

from custom_dataset import (DataError, deduplicate, discover_labels, read_split, scan_images,
                            stratification_bins, stratified_split, write_csv)

FRACTIONS = (0.8, 0.1, 0.1)


def write_jpeg(path, seed, size=(24, 32)):
    """A small random JPEG; a different seed gives different bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "JPEG", quality=90)
    return path


def as_pairs(records):
    return sorted((r["path"], r["age"]) for r in records)


def folder_per_age_truth(root, lo=None, hi=None):
    """(path, age) of every file of a folder-per-age tree, read from the tree itself."""
    pairs = []
    for folder in Path(root).iterdir():
        age = int(folder.name)
        if (lo is None or age >= lo) and (hi is None or age <= hi):
            pairs += [(str(p.absolute()), age) for p in folder.iterdir()]
    return sorted(pairs)


# ---------------------------------------------------------------------------------------------
# Layouts

def test_folder_per_age_layout(demo_dir):
    records, skipped, layout = discover_labels(demo_dir)
    assert layout == "folder_per_age"
    assert as_pairs(records) == folder_per_age_truth(demo_dir)
    assert sum(skipped.values()) == 0


UTK_NAMES = [
    "25_0_1_20170116174525125.jpg.chip.jpg",   # regular
    "26_1_2_2017.jpg.chip.jpg",                # short date
    "39_1_20170116174525125.jpg.chip.jpg",     # missing race field
    "61_1_20170109150557335.jpg.chip.jpg",     # missing race field
    "24_0_1_20170116220224657 .jpg.chip.jpg",  # a space before the extension
    "55_0_0_20170116232725357jpg.chip.jpg",    # missing dot
    "7_0_0.JPG",                               # upper-case extension, one digit
]


def test_utkface_layout(tmp_path):
    for i, name in enumerate(UTK_NAMES):
        write_jpeg(tmp_path / name, seed=i)
    write_jpeg(tmp_path / "holiday.jpg", seed=99)  # an image whose name carries no age
    (tmp_path / "README.txt").write_text("not an image")
    records, skipped, layout = discover_labels(tmp_path)
    assert layout == "utkface"
    expected = sorted((str((tmp_path / n).absolute()), int(n.split("_")[0])) for n in UTK_NAMES)
    assert as_pairs(records) == expected
    assert skipped == Counter({"name_without_age": 1})


@pytest.mark.parametrize("bom, name", [(False, "labels.csv"), (True, "labels.csv"), (False, "LABELS.CSV")],
                         ids=["plain", "utf8-bom", "upper-case-suffix"])
def test_csv_layout_paths_relative_to_csv(tmp_path, bom, name):
    data = tmp_path / "data"
    rows = [("img/a.jpg", 31), ("img/sub/b b.jpg", 45), ("c.jpg", 2)]
    for i, (rel, _) in enumerate(rows):
        write_jpeg(data / rel, seed=i)
    text = "Path,Age,comment\n" + "".join(f"{rel},{age},x\n" for rel, age in rows)
    (data / name).write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    expected = sorted((str((data / rel).absolute()), age) for rel, age in rows)
    for target in (data, data / name):  # the folder or the CSV itself
        records, skipped, layout = discover_labels(target)
        assert layout == "csv"
        assert as_pairs(records) == expected
        assert sum(skipped.values()) == 0


def test_csv_file_without_path_age_columns_is_refused(tmp_path):
    bad = tmp_path / "list.csv"
    bad.write_text("file,label\na.jpg,3\n")
    with pytest.raises(DataError):
        discover_labels(bad)


def test_folder_matching_no_layout_raises(tmp_path):
    write_jpeg(tmp_path / "holiday.jpg", seed=0)
    write_jpeg(tmp_path / "abc" / "x.jpg", seed=1)
    (tmp_path / "notes.csv").write_text("name,value\nx,1\n")  # a CSV without path,age
    with pytest.raises(DataError, match="no labelled images"):
        discover_labels(tmp_path)


def test_empty_and_missing_folders_raise(tmp_path):
    with pytest.raises(DataError):
        discover_labels(tmp_path)
    with pytest.raises(DataError, match="not found"):
        discover_labels(tmp_path / "nope")


def test_min_max_age_filter(demo_dir):
    lo, hi = 22, 25
    records, skipped, _ = discover_labels(demo_dir, min_age=lo, max_age=hi)
    inside = folder_per_age_truth(demo_dir, lo, hi)
    assert as_pairs(records) == inside
    assert skipped == Counter({"outside_min_max_age": len(folder_per_age_truth(demo_dir)) - len(inside)})
    only_min, _, _ = discover_labels(demo_dir, min_age=hi)
    assert as_pairs(only_min) == folder_per_age_truth(demo_dir, lo=hi)


def test_age_folder_outside_0_120_is_skipped(tmp_path):
    write_jpeg(tmp_path / "0" / "newborn.jpg", seed=0)
    write_jpeg(tmp_path / "121" / "typo.jpg", seed=1)
    write_jpeg(tmp_path / "-1" / "minus.jpg", seed=2)
    records, skipped, _ = discover_labels(tmp_path)
    assert [r["age"] for r in records] == [0]
    assert skipped == Counter({"age_out_of_range": 2})


def test_symlink_to_ancestor_is_a_loop_not_a_relabel(tmp_path):
    write_jpeg(tmp_path / "20" / "a.jpg", seed=0)
    write_jpeg(tmp_path / "25" / "b.jpg", seed=1)
    (tmp_path / "25" / "self").symlink_to(tmp_path / "25")
    (tmp_path / "25" / "deeper").mkdir()
    (tmp_path / "25" / "deeper" / "root").symlink_to(tmp_path)  # would relabel 20/a.jpg as 25
    records, skipped, _ = discover_labels(tmp_path)
    assert as_pairs(records) == [(str(tmp_path / "20" / "a.jpg"), 20), (str(tmp_path / "25" / "b.jpg"), 25)]
    assert skipped == Counter({"symlink_loop": 2})


# ---------------------------------------------------------------------------------------------
# Duplicates

def test_deduplicate_keeps_one_of_agreeing_copies_and_drops_conflicts(tmp_path):
    same_age = [tmp_path / "30" / f"copy{i}.jpg" for i in range(3)]
    conflict = [tmp_path / "30" / "clash.jpg", tmp_path / "41" / "clash.jpg"]
    unique = [write_jpeg(tmp_path / "41" / f"u{i}.jpg", seed=10 + i) for i in range(2)]
    write_jpeg(same_age[0], seed=1)
    write_jpeg(conflict[0], seed=2)
    for p in same_age[1:]:
        shutil.copyfile(same_age[0], p)
    shutil.copyfile(conflict[0], conflict[1])

    records, _, _ = discover_labels(tmp_path)
    checked = scan_images(records, workers=1, progress=False)
    kept, stats = deduplicate(checked)
    assert stats == {"duplicate_files_removed": len(same_age) - 1, "conflict_groups_dropped": 1,
                     "conflict_files_dropped": len(conflict)}
    kept_paths = {r["path"] for r in kept}
    assert len(kept_paths & {str(p) for p in same_age}) == 1
    assert not kept_paths & {str(p) for p in conflict}
    assert {str(p) for p in unique} <= kept_paths
    assert len(kept) == len(records) - stats["duplicate_files_removed"] - stats["conflict_files_dropped"]
    assert len({r["hash"] for r in kept}) == len(kept)


# ---------------------------------------------------------------------------------------------
# Strata and the split

def test_stratification_bins_golden():
    # counts per age: 1:2, 2:1, 3:3, 4:1, 5:1. With 3 per bin: {1,2} fills bin 0, {3} fills bin 1,
    # {4,5} holds only 2 and joins bin 1.
    ages = [1, 1, 2, 3, 3, 3, 4, 5]
    assert stratification_bins(ages, min_per_bin=3).tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    shuffled = [5, 1, 3, 1, 3, 2, 3, 4]
    assert stratification_bins(shuffled, min_per_bin=3).tolist() == [1, 0, 1, 0, 1, 0, 1, 1]
    assert stratification_bins([40, 41, 42], min_per_bin=10).tolist() == [0, 0, 0]  # too few: one bin


def skewed_records(n=600, seed=0):
    """Many mid ages, a few rare ones at both ends and in the middle (singletons included)."""
    rng = np.random.default_rng(seed)
    ages = list(np.clip(rng.normal(35, 8, n).round().astype(int), 18, 60)) + [1, 2, 2, 90, 99, 116]
    order = rng.permutation(len(ages))  # paths unrelated to ages
    return [{"path": f"/data/img_{order[i]:05d}.jpg", "age": int(a), "hash": f"h{order[i]}"}
            for i, a in enumerate(ages)]


def test_stratification_merges_rare_ages_into_neighbours():
    records = skewed_records()
    ages = np.array([r["age"] for r in records])
    bins = stratification_bins(ages)
    counts = Counter(bins.tolist())
    assert min(counts.values()) >= 10  # every stratum can give one image to val and to test
    for rare in (1, 2, 90, 99, 116):
        b = bins[ages == rare][0]
        assert (bins[ages == rare] == b).all()
        assert set(ages[bins == b]) != {rare}  # shares its stratum with other ages
    # strata are runs of consecutive ages
    order = np.argsort(ages, kind="stable")
    assert (np.diff(bins[order]) >= 0).all()


def uniform_records(ages=range(20, 30), per_age=20):
    """Every age its own stratum of a size where 80:10:10 is exact."""
    return [{"path": f"/data/{a}_{i:03d}.jpg", "age": a, "hash": f"{a}-{i}"} for a in ages for i in range(per_age)]


@pytest.mark.parametrize("records", [skewed_records(), uniform_records()], ids=["skewed", "uniform"])
def test_stratified_split_proportions_and_coverage(records):
    splits = stratified_split(records, seed=7)
    paths = [[r["path"] for r in s] for s in splits]
    all_paths = sum(paths, [])
    assert sorted(all_paths) == sorted(r["path"] for r in records)  # each record in exactly one split
    for a in range(3):
        for b in range(a + 1, 3):
            assert not {r["hash"] for r in splits[a]} & {r["hash"] for r in splits[b]}
    for rare in {1, 2, 90, 99, 116} & {r["age"] for r in records}:  # never dropped
        assert sum(r["age"] == rare for s in splits for r in s) == sum(r["age"] == rare for r in records)

    ages = [r["age"] for r in records]
    bin_of_age = dict(zip(ages, stratification_bins(ages).tolist()))
    per_bin = Counter(bin_of_age[a] for a in ages)
    for split, fraction in zip(splits, FRACTIONS):
        got = Counter(bin_of_age[r["age"]] for r in split)
        for b, n in per_bin.items():
            assert abs(got.get(b, 0) - n * fraction) <= 1, (b, n, fraction, got.get(b, 0))
            if all(float(n * f).is_integer() for f in FRACTIONS):  # exact when it can be
                assert got.get(b, 0) == n * fraction, (b, n, fraction, got.get(b, 0))


def test_stratified_split_is_seeded_and_order_independent():
    records = skewed_records()
    names = lambda splits: [sorted(r["path"] for r in s) for s in splits]  # noqa: E731
    first = names(stratified_split(records, seed=3))
    assert names(stratified_split(records, seed=3)) == first
    assert names(stratified_split(list(reversed(records)), seed=3)) == first
    other = names(stratified_split(records, seed=4))
    assert other != first
    assert other[1] != first[1] and other[2] != first[2]


def test_write_csv_read_split_round_trip(tmp_path):
    rows = [{"path": "/d/visage été 1.jpg", "age": 3, "hash": "x"}, {"path": "/d/a,b.jpg", "age": 40, "hash": "y"}]
    write_csv(tmp_path / "s" / "train.csv", rows, ["path", "age", "hash"])
    assert read_split(tmp_path / "s" / "train.csv") == rows
    assert not list((tmp_path / "s").glob("*.tmp"))
    with pytest.raises(DataError):
        read_split(tmp_path / "s" / "missing.csv")
    for age in (-5, 500):  # a hand-edited split: eda.py keeps 0..120
        write_csv(tmp_path / "s" / "edited.csv", [{"path": "/d/a.jpg", "age": age}], ["path", "age"])
        with pytest.raises(DataError, match=f"age '{age}' is not a whole number of years in 0..120 \\(row 2\\)"):
            read_split(tmp_path / "s" / "edited.csv")


def test_grayscale_augmentation_turns_the_chosen_share_gray():
    from custom_dataset import AugmentConfig, augment_batch
    x = torch.rand(400, 3, 8, 8) * 255
    out = augment_batch(x, AugmentConfig(flip=False, max_rotate=0, max_shift=0, max_scale=0, brightness=0, contrast=0,
                                         grayscale=0.25), torch.Generator().manual_seed(0))
    gray = (out[:, 0] == out[:, 1]).all(dim=(1, 2)) & (out[:, 1] == out[:, 2]).all(dim=(1, 2))
    assert 0.18 < gray.float().mean() < 0.32
    expected = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    torch.testing.assert_close(out[gray, 0], expected[gray])
    torch.testing.assert_close(out[~gray], x[~gray])  # the others untouched


def test_film_grain_is_luminance_noise_in_blobs_on_the_chosen_share():
    from custom_dataset import GRAIN_SIGMA, AugmentConfig, augment_batch
    x = torch.full((400, 3, 24, 24), 128.0)  # mid-gray: no clamping, so the grain is seen as drawn
    out = augment_batch(x, AugmentConfig(flip=False, max_rotate=0, max_shift=0, max_scale=0, brightness=0, contrast=0,
                                         grain=0.25), torch.Generator().manual_seed(0))
    grain = out - x
    hit = grain.abs().amax(dim=(1, 2, 3)) > 0
    assert 0.18 < hit.float().mean() < 0.32
    assert (grain[~hit] == 0).all()  # the others untouched
    assert (grain[hit, 0] == grain[hit, 1]).all() and (grain[hit, 1] == grain[hit, 2]).all()  # luminance only
    sd = grain[hit, 0].std(dim=(1, 2))
    assert sd.max() <= GRAIN_SIGMA * 1.05 and sd.min() < GRAIN_SIGMA / 2  # sigma drawn up to GRAIN_SIGMA
    # blobs: neighbouring pixels move together (white noise would give a correlation near 0)
    g = grain[hit, 0]
    corr = ((g[:, :, 1:] * g[:, :, :-1]).mean() / (g * g).mean()).item()
    assert corr > 0.2
    # grain 0 draws nothing, so the presets without it keep their random streams (and recorded figures)
    generator = torch.Generator().manual_seed(0)
    augment_batch(x, AugmentConfig(flip=False, max_rotate=0, max_shift=0, max_scale=0, brightness=0, contrast=0,
                                   grain=0.0), generator)
    assert torch.rand(1, generator=generator) == torch.rand(1, generator=torch.Generator().manual_seed(0))


def test_altered_copies_are_all_gray_or_all_degraded_and_the_same_again():
    from custom_dataset import altered_copies
    rng = np.random.default_rng(0)
    # smooth faces-like images: a gradient plus a little texture, so resampling changes little but not nothing
    ramp = np.linspace(40, 220, 32)[None, :, None, None] * np.ones((1, 1, 32, 3))
    images = np.clip(ramp.transpose(0, 2, 1, 3) + rng.normal(0, 20, (6, 32, 32, 3)), 0, 255).astype(np.uint8)
    before = images.copy()
    gray = altered_copies(images, "gray")
    assert gray.dtype == np.uint8 and gray.shape == images.shape
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    luma = images.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(gray[..., 0] - luma).max() <= 0.51  # rounded, not truncated
    scan = altered_copies(images, "scan")
    assert (scan == altered_copies(images, "scan")).all()
    assert not (scan == altered_copies(images, "scan", seed=1)).all()
    diff = np.abs(scan.astype(int) - images).mean(axis=(1, 2, 3))
    assert (diff > 1).all()  # every face altered, none left as it was
    assert np.abs(scan.astype(float).mean() - images.astype(float).mean()) < 3  # lowered detail, not brightness
    assert (images == before).all()  # the source is only read


def test_altered_copies_read_a_read_only_cache_without_warning():
    import warnings
    from custom_dataset import altered_copies
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    read_only = images.copy()
    read_only.flags.writeable = False  # as the preprocessing cache's memory map is opened
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scan = altered_copies(read_only, "scan")
    assert (scan == altered_copies(images, "scan")).all()


def test_csv_ages_written_as_whole_floats_are_read_and_others_are_not(tmp_path):
    data = tmp_path / "data"
    for i in range(5):
        write_jpeg(data / f"{i}.jpg", seed=i)
    # pandas writes 25.0 where the column has a gap; 25.5 and nan are no whole age; nor are 5000 digits, on
    # which int() raises (Python's limit) and stopped the whole scan
    (data / "labels.csv").write_text("path,age\n0.jpg,25.0\n1.jpg,7\n2.jpg,25.5\n3.jpg,nan\n4.jpg," + "9" * 5000 + "\n")
    records, skipped, _ = discover_labels(data)
    assert sorted(r["age"] for r in records) == [7, 25] and skipped == Counter(bad_age_label=3)


def test_csv_paths_written_on_windows_are_found(tmp_path):
    data = tmp_path / "data"
    write_jpeg(data / "img" / "a.jpg", seed=0)
    (data / "labels.csv").write_text("path,age\nimg\\a.jpg,30\n")
    records, skipped, _ = discover_labels(data)
    assert as_pairs(records) == [(str((data / "img" / "a.jpg").absolute()), 30)] and not skipped


def test_an_unreadable_csv_beside_the_images_is_passed_over_and_one_given_is_one_line(tmp_path):
    for age in (20, 21):
        write_jpeg(tmp_path / str(age) / "a.jpg", seed=age)
    notes = tmp_path / "notes.csv"
    notes.write_text("x" * 200_000 + ",y\n")  # a first field over csv's 128 KiB limit
    records, _, layout = discover_labels(tmp_path)
    assert layout == "folder_per_age" and len(records) == 2
    with pytest.raises(DataError, match="not a readable CSV"):
        discover_labels(notes)


@pytest.mark.slow
def test_a_copy_left_out_by_the_age_filter_still_drops_its_conflicting_twin(tmp_path, run_eda):
    import shutil
    data = tmp_path / "data"
    for age in range(20, 26):
        for k in range(2):
            write_jpeg(data / str(age) / f"{k}.jpg", seed=100 * age + k)
    (data / "18").mkdir()
    shutil.copyfile(data / "20" / "0.jpg", data / "18" / "twin.jpg")  # one photo labelled 20 and 18
    outside = []
    records, _, _ = discover_labels(data, min_age=20, outside_filter=outside)
    assert [Path(r["path"]).name for r in outside] == ["twin.jpg"] and len(records) == 12
    report = run_eda(data, tmp_path / "out", "--min-age", 20)
    assert report["duplicates"]["conflict_groups_dropped"] == 1 and report["used"] == 11
    assert report["found"] == report["used"] + sum(report["skipped"].values()) + 1
    labels = (tmp_path / "out" / "labels.csv").read_text()
    assert str(data / "20" / "0.jpg") not in labels and str(data / "20" / "1.jpg") in labels


def test_labelled_folder_above_counts_age_0_and_not_a_phones_file_names(tmp_path):
    from custom_dataset import labelled_folder_above
    phone = tmp_path / "phone"
    write_jpeg(phone / "20230805_101010.jpg", seed=0)  # a date, not an age
    assert labelled_folder_above(phone / "annotated") is None
    ages = tmp_path / "ages"
    for age in ("0", "1"):
        (ages / age).mkdir(parents=True)
    assert labelled_folder_above(ages / "out") is None  # numbered folders holding no photo: no ages
    for age in ("0", "1"):
        write_jpeg(ages / age / "face.jpg", seed=int(age))
    assert labelled_folder_above(ages / "out") == ages
    write_jpeg(phone / "34_1_0_20170116.jpg", seed=1)
    assert labelled_folder_above(phone / "annotated") == phone


def test_month_and_day_folders_under_a_year_are_no_age_folders(tmp_path):
    """inference.py run inside Pictures/2024/03 was refused: the month folders 01-12 beside it read as ages."""
    from custom_dataset import labelled_folder_above
    year = tmp_path / "Pictures" / "2024"
    for month in ("01", "02", "03"):
        write_jpeg(year / month / "IMG_1.jpg", seed=int(month))
    for day in ("05", "17"):
        write_jpeg(year / "03" / day / "IMG_2.jpg", seed=int(day))
    assert labelled_folder_above(year / "03" / "annotated") is None
    assert labelled_folder_above(year / "03" / "17" / "annotated") is None
    write_jpeg(year / "45" / "face.jpg", seed=45)  # a number no month or day has: ages after all
    assert labelled_folder_above(year / "03" / "annotated") == year
    ages = tmp_path / "ages"  # numbers under no year's name stay ages, however small
    for age in ("1", "2"):
        write_jpeg(ages / age / "face.jpg", seed=int(age))
    assert labelled_folder_above(ages / "out") == ages


def test_numbered_run_folders_are_no_age_folders(tmp_path):
    """runs/1, runs/2 of train.py (or eda.py outputs named by number) read as ages: a third run was refused."""
    from custom_dataset import labelled_folder_above
    runs = tmp_path / "runs"
    for k, name in ((1, "last.pt"), (2, ".lock"), (3, "data_report.json"), (4, "best_params.json")):
        (runs / str(k)).mkdir(parents=True)
        (runs / str(k) / name).write_bytes(b"")
        write_jpeg(runs / str(k) / "learning_curves.jpg", seed=k)  # a run's figures are no faces
    (runs / "7").mkdir()  # left empty by a run stopped before it wrote anything
    assert labelled_folder_above(runs / "4") is None
    deep = tmp_path / "deep"  # photos two folders below their age, as eda.py reads them too
    for age in ("25", "26"):
        write_jpeg(deep / age / "person" / "session1" / "face.jpg", seed=int(age))
    assert labelled_folder_above(deep / "25" / "out") == deep
    write_jpeg(runs / "5" / "face.jpg", seed=5)
    write_jpeg(runs / "6" / "face.jpg", seed=6)  # two folders of faces beside them: an age data set
    assert labelled_folder_above(runs / "4") == runs


def test_a_semicolon_or_tab_separated_labels_csv_is_read(tmp_path):
    """Excel saves path;age where the decimal mark is a comma: it was 'not a CSV with path,age columns'."""
    for k in range(3):
        write_jpeg(tmp_path / "img" / f"{k}.jpg", seed=k)
    (tmp_path / "semi.csv").write_text("path;age\nimg/0.jpg;25\nimg/1.jpg;30,0\nimg/2.jpg;x\n")
    records, skipped, layout = discover_labels(tmp_path / "semi.csv")
    assert layout == "csv" and [(Path(r["path"]).name, r["age"]) for r in records] == [("0.jpg", 25), ("1.jpg", 30)]
    assert skipped["bad_age_label"] == 1
    (tmp_path / "tabs.csv").write_text("path\tage\nimg/2.jpg\t41\n")
    records, _, _ = discover_labels(tmp_path / "tabs.csv")
    assert [(Path(r["path"]).name, r["age"]) for r in records] == [("2.jpg", 41)]


def test_subfolders_on_a_mount_without_inodes_are_all_read(tmp_path, monkeypatch):
    """Network and FUSE mounts may give every folder inode 0: each subfolder after the first read as seen."""
    import custom_dataset
    for age, sub in (("25", "session1"), ("25", "session2"), ("26", "a")):
        write_jpeg(tmp_path / age / sub / "face.jpg", seed=len(sub) + int(age))
    real_stat = os.stat

    def no_inodes(path, *args, **kwargs):
        st = real_stat(path, *args, **kwargs)
        fields = list(st[:10])
        fields[1] = 0
        return os.stat_result(fields)
    monkeypatch.setattr(custom_dataset.os, "stat", no_inodes)
    records, _, _ = discover_labels(tmp_path)
    assert len(records) == 3


def test_a_live_process_is_asked_of_windows_itself_there(monkeypatch):
    """os.kill(pid, 0) on Windows sends Ctrl+C (CTRL_C_EVENT is 0), and raises for a process that is gone."""
    import custom_dataset
    asked = []
    monkeypatch.setattr(custom_dataset.os, "kill", lambda *a: pytest.fail("os.kill used on Windows"))
    monkeypatch.setattr(custom_dataset, "_windows_process_alive", lambda pid: asked.append(pid) or False)
    monkeypatch.setattr(custom_dataset.os, "name", "nt")
    alive = custom_dataset.process_alive(4242)
    monkeypatch.undo()
    assert alive is False and asked == [4242]


def test_numbered_photos_and_this_tools_own_outputs_are_no_labelled_data_set(tmp_path):
    """Scans named 001.jpg annotate to 001_age.jpg, and a second run into the same folder was refused; so
    was a folder of 1_beach.jpg, 2_party.jpg. UTKFace's own naming (age_gender_race_date) still marks one."""
    from custom_dataset import labelled_folder_above
    photos = tmp_path / "photos"
    for k, name in enumerate(("1_beach.jpg", "2_party.jpg", "001_age.jpg", "34_1_0_20170116_age.jpg")):
        write_jpeg(photos / name, seed=k)
    assert labelled_folder_above(photos / "out") is None
    write_jpeg(photos / "35_0_3_20170117.jpg.chip.jpg", seed=9)
    assert labelled_folder_above(photos / "out") == photos
    # and eda.py passes over annotated copies written among loosely named faces, in either layout
    records, skipped, _ = discover_labels(photos)
    assert "1_beach_age.jpg" not in {Path(r["path"]).name for r in records} and skipped["annotated_copy"] == 2
    write_jpeg(tmp_path / "ages" / "25" / "anna.jpg", seed=1)
    write_jpeg(tmp_path / "ages" / "25" / "anna_age.jpg", seed=2)
    records, skipped, _ = discover_labels(tmp_path / "ages")
    assert [Path(r["path"]).name for r in records] == ["anna.jpg"] and skipped["annotated_copy"] == 1


# ---------------------------------------------------------------------------------------------- odd data sets

def test_thumbnail_and_hidden_folders_in_age_folders_are_no_faces(tmp_path):
    """A NAS (@eaDir), macOS (__MACOSX) or a viewer (.thumbnails) keeps resized copies beside the photos: read as
    faces they put one photo in two splits, and as copies that are not byte-identical, no duplicate check sees it."""
    for age in ("20", "21"):
        write_jpeg(tmp_path / age / "IMG_0.jpg", seed=int(age))
        write_jpeg(tmp_path / age / "@eaDir" / "IMG_0.jpg" / "SYNOPHOTO_THUMB_M.jpg", seed=100 + int(age))
    write_jpeg(tmp_path / "20" / ".thumbnails" / "IMG_0.jpg", seed=7)
    write_jpeg(tmp_path / "21" / "__MACOSX" / "._IMG_0.jpg", seed=8)
    write_jpeg(tmp_path / "20" / "@eaDir" / "IMG_0.jpg" / "SYNOPHOTO_THUMB_S.jpg", seed=9)
    for name in ("HEAD", "config", "objects/ab/cdef", "annex/objects/face.jpg"):  # beside the age folders: not
        (tmp_path / ".git" / name).parent.mkdir(parents=True, exist_ok=True)  # read as a folder named ".git"
        (tmp_path / ".git" / name).write_text("x")
    (tmp_path / "empty").mkdir()
    records, skipped, layout = discover_labels(tmp_path)
    assert layout == "folder_per_age" and sorted(Path(r["path"]).parent.name for r in records) == ["20", "21"]
    assert skipped == Counter(system_folder=5 + 1)  # images, not folders; the empty folder holds none


def test_a_filter_that_is_off_ignores_the_strength_it_stored():
    from custom_dataset import PreprocessConfig
    assert PreprocessConfig.from_dict({"denoise": False, "denoise_strength": 0}).denoise_strength == 5.0
    with pytest.raises(ValueError, match="denoise_strength must be a number in"):
        PreprocessConfig.from_dict({"denoise": True, "denoise_strength": 0})


def test_numbered_batch_folders_of_utkface_files_are_refused_not_read_as_ages(tmp_path):
    for batch in ("1", "2", "3"):
        for k in range(3):
            write_jpeg(tmp_path / "H" / batch / f"{20 + k}_0_0_2017011{batch}{k}.jpg.chip.jpg", seed=k)
    with pytest.raises(DataError, match="UTKFace names with other ages"):
        discover_labels(tmp_path / "H")
    flat = tmp_path / "G"  # a flat UTKFace folder with one stray year folder: still the UTKFace layout
    for k in range(4):
        write_jpeg(flat / f"{30 + k}_1_2_2017011{k}.jpg.chip.jpg", seed=k)
    write_jpeg(flat / "2019" / "holiday.jpg", seed=9)
    records, skipped, layout = discover_labels(flat)
    assert layout == "utkface" and len(records) == 4 and skipped["image_in_subfolder"] == 1


def test_several_label_csvs_are_refused_and_images_a_csv_does_not_list_are_counted(tmp_path):
    for k in range(4):
        write_jpeg(tmp_path / "imgs" / f"{k}.jpg", seed=k)
    (tmp_path / "labels.csv").write_text("path,age\nimgs/0.jpg,20\nimgs/1.jpg,30\n")
    records, skipped, layout = discover_labels(tmp_path)
    assert layout == "csv" and len(records) == 2 and skipped["image_not_in_csv"] == 2
    (tmp_path / "test.csv").write_text("path,age\nimgs/2.jpg,40\n")  # eda's own split files, say
    with pytest.raises(DataError, match=r"2 CSVs with path,age columns \(labels.csv, test.csv\)"):
        discover_labels(tmp_path)
    assert len(discover_labels(tmp_path / "labels.csv")[0]) == 2  # the one to use, named


def test_a_quote_left_open_in_a_csv_is_an_error_not_the_rest_of_the_file_gone(tmp_path):
    for k in range(6):
        write_jpeg(tmp_path / f"{k}.jpg", seed=k)
    notes = ['"best shot' if k == 2 else "ok" for k in range(6)]  # row 2's quote is never closed
    rows = [f"{k}.jpg,{20 + k},{notes[k]}" for k in range(6)]
    (tmp_path / "labels.csv").write_text("path,age,note\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match="labels.csv: the row ending on line 7 runs over several lines"):
        discover_labels(tmp_path)
    # a space after a closing quote, which csv's strict mode refuses, still reads
    (tmp_path / "labels.csv").write_text('path,age\n"0.jpg" ,20\n1.jpg,21\n')
    assert len(discover_labels(tmp_path)[0]) == 2


def test_an_excel_csv_in_windows_encoding_finds_its_accented_files(tmp_path):
    names = ["José_0.png", "Chloé_1.png", "Zoë_2.png"]
    for k, name in enumerate(names):
        write_jpeg(tmp_path / name, seed=k)
    text = "path,age\r\n" + "".join(f"{n},{25 + k}\r\n" for k, n in enumerate(names))
    (tmp_path / "labels.csv").write_bytes(text.encode("cp1252"))
    records, skipped, _ = discover_labels(tmp_path)
    assert sorted(Path(r["path"]).name for r in records) == sorted(names) and not skipped
    # UTF-8 with one stray Windows byte in a note: still UTF-8, its accented paths found
    text = "path,age,note\n" + "".join(f"{n},{25 + k},ok\n" for k, n in enumerate(names))
    (tmp_path / "labels.csv").write_bytes(text.encode("utf-8") + "x,30,caf\xe9\n".encode("cp1252"))
    records, skipped, _ = discover_labels(tmp_path)
    assert len(records) == 3 and skipped == {"missing_file": 1}


def test_odd_entries_beside_and_in_a_csv_are_passed_over_or_counted(tmp_path):
    write_jpeg(tmp_path / "a.jpg", seed=0)
    (tmp_path / "export.csv").mkdir()  # a folder named like a CSV
    (tmp_path / "gone.csv").symlink_to(tmp_path / "nowhere.csv")  # a broken link
    (tmp_path / "labels.csv").write_text("path,age\na.jpg,20\n" + "x" * 300 + ".jpg,30\n")  # a name over 255
    records, skipped, _ = discover_labels(tmp_path)
    assert len(records) == 1 and skipped["missing_file"] == 1
    linked = tmp_path / "elsewhere"
    linked.mkdir()
    (linked / "labels.csv").symlink_to(tmp_path / "labels.csv")  # rows relative to the file it points to
    assert [Path(r["path"]).name for r in discover_labels(linked / "labels.csv")[0]] == ["a.jpg"]


def test_a_damaged_exif_block_leaves_the_pixels_as_stored():
    import io
    from custom_dataset import load_rgb, to_rgb
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", exif=b"Exif\x00\x00garbagegarbage")
    buffer.seek(0)
    with Image.open(buffer) as img:
        np.testing.assert_array_equal(np.asarray(to_rgb(img)), pixels)


def test_a_truncated_photo_with_an_exif_turn_raises_instead_of_coming_out_half_decoded(tmp_path):
    """to_rgb applies the EXIF turn inside an except that keeps the pixels as stored where the EXIF block is
    damaged, and so also swallows the decoder's error raised in the turn. What keeps a half-decoded image from being
    handed on is Pillow's own rule (13.x: a failed load decodes again, and raises again, at the next use): held here,
    so that a Pillow that changed it shows up."""
    import io
    from custom_dataset import load_rgb
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(
        buffer, "JPEG", exif=exif.tobytes(), quality=90)
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
    with pytest.raises(OSError, match="truncated"):
        load_rgb(tmp_path / "cut.jpg")


def test_names_composed_or_decomposed_split_alike():
    import unicodedata
    from custom_dataset import stratified_split
    names = [f"{w}_{k}.jpg" for k in range(30) for w in ("José", "Josf", "Zoë")]
    def split(form):
        records = [{"path": unicodedata.normalize(form, f"/d/{n}"), "age": 20 + k % 7, "hash": n}
                   for k, n in enumerate(names)]
        return [[r["hash"] for r in part] for part in stratified_split(records, seed=3)]
    assert split("NFC") == split("NFD")


def test_a_data_set_splits_alike_under_windows_separators(monkeypatch):
    import custom_dataset
    from custom_dataset import stratified_split
    names = [f"p{person}/{k}.jpg" for person in (1, 2, 10, 11, 100) for k in range(12)]

    def split(sep):
        monkeypatch.setattr(custom_dataset.os, "sep", sep)
        records = [{"path": "C:" + sep + "d" + sep + n.replace("/", sep), "age": 20 + k % 7, "hash": n}
                   for k, n in enumerate(names)]
        return [[r["hash"] for r in part] for part in stratified_split(records, seed=3)]
    # "\\" sorts after the digits and "/" before them: p1/ and p10/ would change places
    assert sorted(["p1\\x", "p10\\x"]) == ["p10\\x", "p1\\x"] and sorted(["p1/x", "p10/x"]) == ["p1/x", "p10/x"]
    assert split("\\") == split("/")


def test_the_strength_of_a_filter_that_is_off_does_not_key_another_cache():
    from custom_dataset import PreprocessConfig, cache_key
    plain = PreprocessConfig(denoise=False, deblur=False)
    assert cache_key(["a.png"], plain) == cache_key(["a.png"], PreprocessConfig(denoise=False, denoise_strength=10,
                                                                                deblur=False, deblur_amount=0.9))
    assert cache_key(["a.png"], PreprocessConfig(denoise_strength=10)) != cache_key(["a.png"], PreprocessConfig())
    assert cache_key(["a.png"], PreprocessConfig(deblur_amount=0.9)) != cache_key(["a.png"], PreprocessConfig())


def test_bytes_changed_under_the_same_size_and_time_are_preprocessed_again_once_split_again(tmp_path):
    """exiftool -P rewrites a file and keeps its date: the cache key (path, size, time) cannot see it, the
    new split's content hashes do."""
    from custom_dataset import PreprocessConfig, content_hash, load_split_dataset
    path = tmp_path / "faces" / "0.bmp"  # uncompressed: other pixels, the same size
    path.parent.mkdir()
    rows = []
    for k in range(2):
        Image.fromarray(np.full((40, 40, 3), 60 + 100 * k, np.uint8)).save(tmp_path / "faces" / f"{k}.bmp")
        rows.append({"path": str(tmp_path / "faces" / f"{k}.bmp"), "age": 20 + k,
                     "hash": content_hash((tmp_path / "faces" / f"{k}.bmp").read_bytes())})
    write_csv(tmp_path / "s" / "train.csv", rows, ["path", "age", "hash"])
    cfg = PreprocessConfig(image_size=32, denoise=False, deblur=False)
    before = load_split_dataset(tmp_path / "s" / "train.csv", cfg, tmp_path / "cache", workers=1, progress=False)
    assert before.images[0].max() == 60
    stat = path.stat()
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    rows[0]["hash"] = content_hash(path.read_bytes())  # eda.py run again
    write_csv(tmp_path / "s" / "train.csv", rows, ["path", "age", "hash"])
    after = load_split_dataset(tmp_path / "s" / "train.csv", cfg, tmp_path / "cache", workers=1, progress=False)
    assert after.ages.tolist() == [20, 21] and after.images[0].min() == 200


def test_a_file_whose_bytes_changed_since_the_split_is_skipped_until_split_again(tmp_path):
    from custom_dataset import PreprocessConfig, content_hash, load_split_dataset, preprocess_file, read_split
    faces = tmp_path / "faces"
    rows = []
    for k in range(3):
        path = faces / f"{k}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((40, 40, 3), 60 * k, np.uint8)).save(path)
        rows.append({"path": str(path), "age": 20 + k, "hash": content_hash(path.read_bytes())})
    write_csv(tmp_path / "s" / "train.csv", rows, ["path", "age", "hash"])
    Image.fromarray(np.full((40, 40, 3), 250, np.uint8)).save(faces / "1.png")  # re-exported after eda.py
    cfg, warnings_ = PreprocessConfig(image_size=32, denoise=False, deblur=False), []
    data = load_split_dataset(tmp_path / "s" / "train.csv", cfg, tmp_path / "cache", workers=1, progress=False,
                              log=warnings_.append)
    assert data.ages.tolist() == [20, 22] and "changed_since_split: 1" in warnings_[0]
    # the skipped file's row is left out by index: the rest still read from the cache's memory map, not copied
    assert isinstance(data.images.base, np.memmap) and len(data.images) == 2 and data.images.shape == (2, 32, 32, 3)
    assert [int(data.images[k].max()) for k in range(2)] == [0, 120] == [int(x.max()) for x in np.asarray(data.images)]
    assert data.batch([1, 0])[0][:, 0, 0, 0].tolist() == [120, 0]
    assert data.subset([1]).images.shape == (1, 32, 32, 3)
    rows[1]["hash"] = content_hash((faces / "1.png").read_bytes())  # eda.py run again: the new bytes are split
    write_csv(tmp_path / "s" / "train.csv", rows, ["path", "age", "hash"])
    data = load_split_dataset(tmp_path / "s" / "train.csv", cfg, tmp_path / "cache", workers=1, progress=False)
    assert data.ages.tolist() == [20, 21, 22]
    # hashed and decoded from one read: the same pixels as decoding the file
    assert all(np.array_equal(data.images[k], preprocess_file(rows[k]["path"], cfg)) for k in range(3))
    # an aligned set's hash is its source photo's, not the chip's: not checked
    write_csv(tmp_path / "a" / "train.csv", [{**r, "hash": "source", "source": "x"} for r in rows],
              ["path", "age", "hash", "source"])
    assert "hash" not in read_split(tmp_path / "a" / "train.csv")[0]


def test_a_jpeg_over_the_pixel_limit_is_decoded_smaller_and_other_formats_refused(tmp_path, monkeypatch):
    """A 108 Mpx phone photo was refused by inference.py ("image too large"); JPEG decodes at 1/2 its size for
    free, within the same bound on memory."""
    import custom_dataset
    from PIL import Image as PILImage
    # scaled down as the module sets them: Pillow's own guard at ours
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", PILImage.MAX_IMAGE_PIXELS * 10_000 // custom_dataset.MAX_IMAGE_PIXELS)
    monkeypatch.setattr(custom_dataset, "MAX_IMAGE_PIXELS", 10_000)
    pixels = np.random.default_rng(0).integers(0, 256, (121, 161, 3), dtype=np.uint8)  # 19,481 px, odd sides
    PILImage.fromarray(pixels).save(tmp_path / "big.jpg", quality=95)
    PILImage.fromarray(pixels).save(tmp_path / "big.png")
    assert custom_dataset.load_rgb(tmp_path / "big.jpg").shape == (61, 81, 3)
    assert custom_dataset.load_rgb_shrunk(tmp_path / "big.jpg")[1] == 2  # boxes found on it are doubled
    assert custom_dataset.load_rgb_shrunk(tmp_path / "big.jpg", max_side=40)[1] == 1  # a preview
    with pytest.raises(DataError, match="too large"):
        custom_dataset.load_rgb(tmp_path / "big.png")
    # 30 times the limit (a 200 Mpx photo is twice 100): Pillow refused it before its size could be read
    huge = np.random.default_rng(1).integers(0, 256, (401, 751, 3), dtype=np.uint8)
    PILImage.fromarray(huge).save(tmp_path / "huge.jpg", quality=90)
    PILImage.fromarray(huge).save(tmp_path / "huge.png")
    rgb, shrink = custom_dataset.load_rgb_shrunk(tmp_path / "huge.jpg")
    assert rgb.shape == (51, 94, 3) and shrink == 8
    with pytest.raises(DataError, match="too large"):
        custom_dataset.load_rgb(tmp_path / "huge.png")
    assert custom_dataset.check_image(tmp_path / "huge.jpg")["reason"] == "too_large"  # never a training face
    assert PILImage.MAX_IMAGE_PIXELS == 10_000  # lifted for that one file only: every other caller keeps the guard
    # a progressive JPEG decodes at full size in memory whatever the scale: over twice the limit it is refused
    PILImage.fromarray(huge).save(tmp_path / "huge_progressive.jpg", quality=90, progressive=True)
    with pytest.raises(DataError, match="too large"):
        custom_dataset.load_rgb(tmp_path / "huge_progressive.jpg")
    PILImage.fromarray(pixels).save(tmp_path / "big_progressive.jpg", quality=95, progressive=True)
    assert custom_dataset.load_rgb_shrunk(tmp_path / "big_progressive.jpg")[0].shape == (61, 81, 3)


def test_a_killed_runs_temporary_files_go_even_where_its_pid_is_this_process(tmp_path):
    """In a container every run is PID 1: a killed run's .x.npy.1.tmp carried a live PID (ours) and stayed. One
    of our PID written since we started may be another container's in a shared folder: it stays."""
    import os
    import subprocess
    import sys
    import custom_dataset
    from custom_dataset import remove_orphans
    killed = tmp_path / f".part.npy.{os.getpid()}.tmp"
    killed.write_bytes(b"left by a killed run of the same PID")
    os.utime(killed, (custom_dataset.PROCESS_STARTED - 60, custom_dataset.PROCESS_STARTED - 60))
    shared = tmp_path / f".other.npy.{os.getpid()}.tmp"
    shared.write_bytes(b"being written by another container's PID 1")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        theirs = tmp_path / f".part.npy.{alive.pid}.tmp"
        theirs.write_bytes(b"being written by a live process")
        remove_orphans(tmp_path)
        assert not killed.exists() and shared.exists() and theirs.exists()
    finally:
        alive.kill()
        alive.wait()


def test_an_embedded_colour_profile_is_converted_to_srgb(tmp_path):
    """A photo in another colour space (Display P3, Adobe RGB, here a linear-light profile) is read as the colours it
    shows, not as raw numbers: mid-gray in linear light is sRGB's 188. Without a profile, or with a damaged one, the
    pixels are read as stored; an RGBA image keeps its alpha (transparent pixels black, the rule for every file); a
    PIL image handed to inference goes the same way (to_rgb)."""
    from conftest import rgb_icc_profile
    from custom_dataset import load_rgb, to_rgb
    gray = Image.new("RGB", (8, 8), (128, 128, 128))
    for name, icc, expected in (("linear.png", rgb_icc_profile(1.0, "linear"), 188), ("plain.png", None, 128),
                                ("damaged.png", b"not a profile", 128), ("linear.jpg", rgb_icc_profile(1.0), 188)):
        gray.save(tmp_path / name, **({"icc_profile": icc} if icc else {}))
        assert abs(int(load_rgb(tmp_path / name)[0, 0, 0]) - expected) <= 1, name
    rgba = Image.new("RGBA", (8, 8), (128, 128, 128, 255))
    rgba.putpixel((0, 0), (128, 128, 128, 0))
    rgba.save(tmp_path / "alpha.png", icc_profile=rgb_icc_profile(1.0))
    read = load_rgb(tmp_path / "alpha.png")
    assert read[0, 0].tolist() == [0, 0, 0] and abs(int(read[4, 4, 0]) - 188) <= 1
    with Image.open(tmp_path / "linear.png") as opened:
        assert abs(int(np.asarray(to_rgb(opened))[0, 0, 0]) - 188) <= 1
    # a gray scan with its own gray profile; an RGB PNG with a tRNS colour keeps it transparent; a profile that is
    # sRGB already changes nothing
    Image.new("L", (8, 8), 128).save(tmp_path / "gray.png", icc_profile=rgb_icc_profile(1.0, gray=True))
    assert abs(int(load_rgb(tmp_path / "gray.png")[0, 0, 1]) - 188) <= 1
    keyed = Image.new("RGB", (8, 8), (128, 128, 128))
    keyed.putpixel((0, 0), (10, 20, 30))
    keyed.save(tmp_path / "keyed.png", icc_profile=rgb_icc_profile(1.0), transparency=(10, 20, 30))
    read = load_rgb(tmp_path / "keyed.png")
    assert read[0, 0].tolist() == [0, 0, 0] and abs(int(read[4, 4, 0]) - 188) <= 1
    gray.save(tmp_path / "srgb.png", icc_profile=rgb_icc_profile(2.2, "sRGB IEC61966-2.1 (as a camera names it)"))
    assert load_rgb(tmp_path / "srgb.png")[0, 0].tolist() == [128, 128, 128]
