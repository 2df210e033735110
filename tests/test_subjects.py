"""Person-aware splits: every photo of one subject in one split, and the report that says so."""

import csv
import json
from collections import Counter

import numpy as np
import pytest

import eda  # imported while collecting, so no test pays for it
from conftest import read_rows, write_noise_image
from custom_dataset import DataError, discover_labels, group_split, read_split, source_subject_column, stratified_split
from eda import SPLITS

FIGURES = ("plot_samples", "plot_age_distribution", "plot_split_distributions")


def skip_figures(mp):
    """eda without its three figures (test_eda.py checks them): keeps each test here well under 2 s."""
    for name in FIGURES:
        mp.setattr(eda, name, lambda *args, **kwargs: None)


def people(n_subjects=30, seed=0):
    """Records of n_subjects people, 1-9 photos each over a span of ages (no files)."""
    rng = np.random.default_rng(seed)
    records = []
    for s in range(n_subjects):
        first = int(rng.integers(0, 60))
        for k in range(int(rng.integers(1, 10))):
            records.append({"path": f"/d/{s:03d}_{k}.jpg", "age": first + 3 * k, "subject": f"{s:03d}"})
    return records


def subjects_of(rows):
    return {r["subject"] for r in rows}


def assert_person_disjoint(parts):
    sets = [subjects_of(p) for p in parts]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


def test_no_subject_in_two_splits_and_every_image_kept_once():
    records = people()
    parts = stratified_split(records, seed=3, group_key="subject")
    assert_person_disjoint(parts)
    assert sorted(r["path"] for p in parts for r in p) == sorted(r["path"] for r in records)
    assert all(parts), "val and test each get at least one person"
    share = [len(p) / len(records) for p in parts]
    assert share[0] > 0.6 and 0.03 < share[1] < 0.2 and 0.03 < share[2] < 0.2, share


def test_subject_split_is_seeded_and_order_independent():
    records = people()
    names = lambda parts: [[r["path"] for r in p] for p in parts]  # noqa: E731
    first = names(group_split(records, "subject", seed=11))
    assert names(group_split(records, "subject", seed=11)) == first
    assert names(group_split(list(reversed(records)), "subject", seed=11)) == first
    assert any(names(group_split(records, "subject", seed=s)) != first for s in (12, 13, 14))


def test_subject_split_follows_the_age_mix():
    """Stratified as far as whole people allow: each split's mean age near the overall mean."""
    records = people(n_subjects=120, seed=1)
    parts = group_split(records, "subject", seed=0)
    assert_person_disjoint(parts)
    overall = np.mean([r["age"] for r in records])
    for part in parts:
        # the split gives at most 1.8 years here; balancing the sizes alone (no age strata) gives 6.0
        assert abs(np.mean([r["age"] for r in part]) - overall) < 3


def test_blank_subject_is_a_person_of_its_own_and_too_few_people_is_refused():
    records = [{"path": f"/d/{i}.jpg", "age": 20 + i, "subject": ""} for i in range(12)]
    parts = group_split(records, "subject", seed=0)
    assert sum(map(len, parts)) == 12 and all(parts)
    two = [{"path": f"/d/{i}.jpg", "age": 20 + i, "subject": str(i % 2)} for i in range(12)]
    with pytest.raises(DataError, match="at least 3"):
        group_split(two, "subject", seed=0)


def make_csv_set(root, column="subject", n_subjects=12, per_subject=5):
    """Photos of n_subjects people (ages spread per person) listed in labels.csv with a person column;
    plus one byte-identical copy of a photo filed under another person (same age)."""
    root.mkdir(parents=True)
    rows = []
    for s in range(n_subjects):
        for k in range(per_subject):
            name = f"{s:03d}A{k}.jpg"
            write_noise_image(root / name, seed=s * 100 + k)
            rows.append((name, 10 + 2 * s + 5 * k, f"{s:03d}"))
    (root / "copy.jpg").write_bytes((root / "000A0.jpg").read_bytes())
    rows.append(("copy.jpg", rows[0][1], f"{n_subjects - 1:03d}"))
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "age", column])
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def subject_run(tmp_path_factory, run_eda):
    root = tmp_path_factory.mktemp("subjects")
    data = make_csv_set(root / "data")
    with pytest.MonkeyPatch.context() as mp:
        skip_figures(mp)
        report = run_eda(data, root / "out", "--seed", 4)
    return data, root / "out", report


def test_eda_keeps_each_subject_in_one_split(subject_run):
    _, out, report = subject_run
    parts = [read_rows(out / "splits" / f"{s}.csv") for s in SPLITS]
    assert all(columns == ["path", "age", "hash", "subject"] for columns, _ in parts)
    assert_person_disjoint([rows for _, rows in parts])
    _, labels = read_rows(out / "labels.csv")
    assert sorted(r["path"] for _, rows in parts for r in rows) == sorted(r["path"] for r in labels)
    assert report["used"] == len(labels) == 60 and report["duplicates"]["duplicate_files_removed"] == 1
    hashes = Counter(r["hash"] for _, rows in parts for r in rows)
    assert max(hashes.values()) == 1 and report["identical_files_in_two_splits"] == 0


def test_report_names_the_subject_column_and_counts_people(subject_run):
    _, out, report = subject_run
    assert json.loads((out / "data_report.json").read_text()) == json.loads(json.dumps(report))
    assert report["split_by"] == "subject"
    subjects = report["subjects"]
    assert subjects["column"] == "subject" and subjects["in_two_splits"] == 0
    assert subjects["no_subject_in_two_splits"] is True and subjects["images_without_subject"] == 0
    per_split = {s: len(subjects_of(read_split(out / "splits" / f"{s}.csv"))) for s in SPLITS}
    assert subjects["per_split"] == per_split and sum(per_split.values()) == 12


def test_same_seed_same_subject_split(subject_run, run_eda, tmp_path, monkeypatch):
    data, out, _ = subject_run
    skip_figures(monkeypatch)
    run_eda(data, tmp_path / "again", "--seed", 4)
    for s in SPLITS:
        assert (tmp_path / "again" / "splits" / f"{s}.csv").read_bytes() == (out / "splits" / f"{s}.csv").read_bytes()


@pytest.mark.parametrize("column", ["person", "identity"])
def test_person_and_identity_columns_are_subjects(tmp_path, column):
    data = make_csv_set(tmp_path / "data", column=column, n_subjects=4, per_subject=2)
    records, _, layout = discover_labels(data)
    assert layout == "csv" and {r["subject"] for r in records} == {"000", "001", "002", "003"}
    assert source_subject_column(data) == column


def test_without_a_subject_column_the_report_and_summary_warn(demo_dir, run_eda, tmp_path, capsys, monkeypatch):
    skip_figures(monkeypatch)
    report = run_eda(demo_dir, tmp_path / "out")
    assert report["split_by"] == "image" and report["subjects"]["column"] is None
    assert "may fall in several splits" in report["subjects"]["note"]
    printed = capsys.readouterr().out
    assert "split by" in printed and "may fall in several splits" in printed
    columns, _ = read_rows(tmp_path / "out" / "splits" / "train.csv")
    assert columns == ["path", "age", "hash"]
