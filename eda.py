"""Explore a labelled face folder and write the seeded 80:10:10 split, stratified by age.

    python eda.py --data-dir DATA --out-dir OUT [--min-age 20] [--max-age 50] [--seed 42] [--align]

Byte-identical files are merged before the split, so one photo never lands in two splits. A CSV
with a person column (subject, person, identity, subject_id, person_id, identity_id or celeb_id;
FG-NET's labels.csv has `subject`) is split by person:
all photos of one person go to the same split. Without such a column (folders per age, UTKFace
names) the split is per image, and photos of one person may fall in several splits; the report
and the summary say so.

Writes OUT/labels.csv, OUT/data_report.json, OUT/splits/{train,val,test}.csv and crop.json (how the faces
were cut),
OUT/pics/sample_images.png, OUT/figs/age_distribution.png, OUT/figs/train_test_valid_age_distri.png,
each atomically. The CSVs carry `subject`, `gender` and `race` where the data gives them (UTKFace
names; a CSV's own columns); data_report.json counts those groups per split. The data folder is
only read.
"""
import contextlib
import functools
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

from cli import ArgumentParser, run_cli  # first: cli._missing_package_hook
import numpy as np

from custom_dataset import (GROUP_COLUMNS, DataError, deduplicate, discover_labels, drop_conflicts_outside_filter,
                            labelled_folder_above, load_rgb, scan_images, share_like_a_new_file, source_subject_column, stratified_split,
                            write_csv)
from faces import BOX_CROP, CROPS, DEFAULT_DETECTOR, DETECTORS, UTKFACE_CROP, chip_dataset, write_split_crop
from functions import atomic_write, folder_lock, pyplot, same_or_inside
SPLITS = ("train", "val", "test")
MIN_IMAGES = 10  # age strata hold at least 10 images (stratification_bins), so 10 % of each is >= 1 image
NO_SUBJECT_NOTE = ("no person column (subject, person, identity, subject_id, person_id, identity_id, celeb_id): "
                   "the split is per image, so photos of one person may fall in several splits")


def get_args_parser():
    p = ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", required=True,
                   help="folder per age, UTKFace folder, or CSV with path,age (optional person column: subject, "
                        "person, identity, subject_id, person_id, identity_id or celeb_id, which makes the split keep "
                        "each person in one split; gender, race columns)")
    p.add_argument("--out-dir", required=True, help="where labels, report, splits and figures go")
    p.add_argument("--min-age", type=int, default=None, help="drop images younger than this")
    p.add_argument("--max-age", type=int, default=None, help="drop images older than this")
    p.add_argument("--seed", type=int, default=42, help="split seed: same seed and data -> same split")
    p.add_argument("--align", action="store_true",
                   help="un-aligned photos: cut each face once, as inference.py will (detect, landmarks, chip), "
                        "cache the chips under OUT/chips and train on them (UTKFace files are chips already)")
    # None: left out (refused without --align, which alone uses them); check_paths fills in the defaults
    p.add_argument("--align-crop", choices=("utkface", "utkface5"), default=None,
                   help="--align only (refused without it): UTKFace's 68-landmark chip (default), or the 5-landmark one for commercial use "
                        "(README)")
    p.add_argument("--detector", choices=DETECTORS, default=None, help=f"--align only (refused without it): face detector (default "
                   f"{DEFAULT_DETECTOR}), recorded in crop.json: inference.py's default for the models trained on "
                   "this split")
    p.add_argument("--workers", type=int, default=2, help="processes that check images")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


def age_stats(ages):
    ages = np.asarray(ages)
    return {"min": int(ages.min()), "max": int(ages.max()), "mean": round(float(ages.mean()), 2),
            "median": float(np.median(ages))}


def plot_age_distribution(ages, path):
    plt = pyplot()
    ages = np.asarray(ages)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.hist(ages, bins=np.arange(ages.min(), ages.max() + 2) - 0.5, color="#4c72b0")
    ax.set(xlabel="age (years)", ylabel="images", title=f"Age distribution ({len(ages)} images)")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def plot_split_distributions(split_ages: dict, path):
    plt = pyplot()
    all_ages = np.concatenate([np.asarray(a) for a in split_ages.values()])
    bins = np.arange(all_ages.min(), all_ages.max() + 2) - 0.5
    fig, ax = plt.subplots(figsize=(8, 4))
    # distinct line styles: a good stratified split makes the three outlines coincide
    styles = (("#4c72b0", "-", 2.4), ("#dd8452", "--", 1.8), ("#55a868", ":", 1.8))
    for (name, ages), (color, style, width) in zip(split_ages.items(), styles):
        ax.hist(ages, bins=bins, density=True, histtype="step", linewidth=width, linestyle=style, color=color,
                label=f"{name} ({len(ages)})")
    ax.set(xlabel="age (years)", ylabel="share of split", title="Age distribution per split (normalised)")
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def plot_samples(records, path, seed=0, n=24, cols=8):
    plt = pyplot()
    rng = np.random.default_rng(seed)
    picks = [records[i] for i in rng.choice(len(records), size=min(n, len(records)), replace=False)]
    picks.sort(key=lambda r: r["age"])
    rows = max(1, int(np.ceil(len(picks) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.85))
    try:  # a file that fails to decode leaves no open figure behind (write_outputs goes on without this one)
        for ax in np.ravel(axes):
            ax.axis("off")
        for ax, rec in zip(np.ravel(axes), picks):
            ax.imshow(load_rgb(rec["path"], max_side=256))  # a thumbnail: fast even for huge photos
            ax.set_title(f"age {rec['age']}", fontsize=9)
        fig.tight_layout()
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)


def print_summary(report):
    rows = [("layout", report["layout"]), ("files found", report["found"]), ("used", report["used"])]
    rows += [(f"skipped: {k}", v) for k, v in sorted(report["skipped"].items())]
    d = report["duplicates"]
    rows += [("duplicates merged (files)", d["duplicate_files_removed"]),
             ("conflicting-age groups dropped", f"{d['conflict_groups_dropped']} ({d['conflict_files_dropped']} files)")]
    a = report["age"]
    rows += [("age min / max", f"{a['min']} / {a['max']}"), ("age mean / median", f"{a['mean']} / {a['median']}")]
    rows += [(f"split {k}", v) for k, v in report["splits"].items()]
    rows += [("split by", split_by_line(report))]
    for column, per_split in report["groups"].items():
        rows += [(f"{column} per split", " | ".join(
            f"{name}: " + ", ".join(f"{g} {n}" for g, n in counts.items()) for name, counts in per_split.items()))]
    rows += [("scan seconds", report["scan_seconds"])]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def split_by_line(report) -> str:
    subjects = report["subjects"]
    if report["split_by"] == "image":
        return f"image ({subjects['note']})"
    counts = " / ".join(str(n) for n in subjects["per_split"].values())
    shared = subjects["in_two_splits"]
    return (f"subject (column {subjects['column']!r}: {counts} people in train / val / test, "
            f"{'none' if not shared else shared} in two splits)")


def subject_report(column, parts) -> dict:
    """data_report.json "subjects": the column used, people per split, and the check that none is shared."""
    if column is None:
        return {"column": None, "note": NO_SUBJECT_NOTE}
    people = [{r["subject"] for r in rows if r.get("subject")} for rows in parts]
    shared = in_two_splits(people)
    return {"column": column, "per_split": {n: len(p) for n, p in zip(SPLITS, people)},
            "images_without_subject": sum(not r.get("subject") for rows in parts for r in rows),
            "in_two_splits": len(shared), "no_subject_in_two_splits": not shared}


def group_counts(columns, parts) -> dict:
    """{column: {split: {label: images}}} for gender/race; a blank label counts as "unknown"."""
    return {c: {n: dict(sorted(Counter(r.get(c) or "unknown" for r in rows).items())) for n, rows in zip(SPLITS, parts)}
            for c in columns}


def in_two_splits(keys_per_split) -> set:
    """The keys (people, file hashes) found in more than one of the splits' key sets."""
    return set.union(*(a & b for i, a in enumerate(keys_per_split) for b in keys_per_split[i + 1:]))


def files_in_two_splits(parts) -> int:
    """Identical files (same content hash) found in more than one split: 0 after deduplicate()."""
    return len(in_two_splits([{r["hash"] for r in rows} for rows in parts]))


def write_split_folder(folder, parts, columns, crop, crop_note):
    """The three CSVs and crop.json as one set: written into a fresh folder that then replaces the
    old one, so a run killed half-way leaves the previous split or none, never a mix of two."""
    import shutil
    import tempfile
    folder = Path(folder)
    fresh = Path(tempfile.mkdtemp(prefix=".splits.", dir=folder.parent))
    share_like_a_new_file(fresh, 0o777)  # mkdtemp's 0700 would hide the splits from other users
    try:
        for name, rows in zip(SPLITS, parts):
            write_csv(fresh / f"{name}.csv", rows, columns)
        write_split_crop(fresh, crop, crop_note)
        if folder.exists():
            # a name no earlier run can have left (a container's PID is often the same every run)
            old = folder.with_name(f".splits.old.{os.getpid()}.{fresh.name.rsplit('.', 1)[-1]}")
            os.replace(folder, old)
            os.replace(fresh, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(fresh, folder)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    for stale in folder.parent.glob(".splits.*"):  # left by a run killed between the two renames
        shutil.rmtree(stale, ignore_errors=True)


def face_crop(args, layout, records, out_dir, progress):
    """(crop recipe, why, align stats with the chipped records or None) for this data set."""
    # UTKFace's aligned set is named *.jpg.chip.jpg, in any layout; its in-the-wild set (the same names without
    # ".chip") and photos named 25_beach.jpg are whole photos: a chip recipe there would feed inference's tight
    # chips to a model that learnt whole photos
    chips = sum(Path(r["path"]).name.lower().endswith(".chip.jpg") for r in records)
    if chips * 2 > len(records):
        note = ("UTKFace files are dlib face chips already (68 landmarks, 200 px, padding 0.2): used as they are"
                + (f"; {len(records) - chips} file(s) not named *.chip.jpg among them are taken as chips too"
                   if chips < len(records) else ""))
        if args.align:
            print("--align: " + note + ", not re-chipped")
        return dict(UTKFACE_CROP), note, None
    if layout == "utkface":
        print("note: these UTKFace-style names do not end in .chip.jpg: read as whole photos, not UTKFace's "
              "aligned chips" + ("" if args.align else " (eda.py --align cuts aligned chips from them)"))
    if not args.align:
        return dict(BOX_CROP), ("images used as they are; inference crops a square around the detector's box "
                                "(eda.py --align cuts aligned chips instead)"), None
    start = time.perf_counter()
    chipped, stats = chip_dataset(records, out_dir / "chips", CROPS[args.align_crop], args.detector, progress)
    print(f"aligned: {stats['chipped']} faces cut ({stats['from_cache']} from the cache), {stats['no_face']} photos "
          f"without a face dropped, {stats['several_faces_largest_used']} with several faces (largest used)"
          + (f", {stats['unreadable_file']} unreadable now (skipped; read again next run)" if stats["unreadable_file"] else "")
          + (f", {stats['align_failed']} on which finding the face failed (skipped; tried again next run)"
             if stats["align_failed"] else ""))
    if not chipped:
        failed = f" (on {stats['align_failed']} of them finding the face failed)" if stats["align_failed"] else ""
        raise DataError(f"--align found no face in any of the {len(records)} images of {args.data_dir}{failed}")
    stats = {**stats, "seconds": round(time.perf_counter() - start, 1), "records": chipped}
    # the detector travels with the recipe: inference.py then finds faces as these chips were found
    return ({**stats["crop"], "detector": args.detector},
            f"faces cut by eda.py --align ({args.align_crop}, {args.detector} detector)", stats)


def usable_images(records, skipped, workers, progress):
    """(records that decode, skipped counts with the reasons of those that do not)."""
    checked = scan_images(records, workers=workers, progress=progress)
    skipped = Counter(skipped)
    good = []
    for rec in checked:
        if rec["reason"] is None:
            good.append(rec)
        else:
            skipped[rec["reason"]] += 1
    return good, skipped


SPLIT_FILES = {f"{name}.csv" for name in SPLITS} | {"crop.json"}  # what OUT/splits holds, all of it eda.py's


def check_paths(args):
    data_dir, out_dir = Path(args.data_dir), Path(args.out_dir)
    if same_or_inside(out_dir, data_dir.parent if data_dir.is_file() else data_dir):  # a CSV: its folder
        raise DataError(f"--out-dir {out_dir} is inside the data folder; choose a folder outside {data_dir}")
    if (labelled := labelled_folder_above(out_dir, csv_sets=False)) is not None:  # a CSV set reads what it lists
        raise DataError(f"--out-dir {out_dir} is inside {labelled}, which holds a labelled face data set: its "
                        "figures and chips would be read as faces by eda.py there; choose a folder outside it")
    try:  # the split folder is replaced whole: a file of the user's there would go with it
        foreign = sorted(p.name for p in (out_dir / "splits").iterdir()
                         if p.name not in SPLIT_FILES and not p.name.startswith("."))
    except OSError:  # no split folder yet
        foreign = []
    if foreign:
        raise DataError(f"{out_dir / 'splits'} holds files eda.py did not write ({', '.join(foreign[:3])}"
                        f"{', ...' if len(foreign) > 3 else ''}), which replacing the split would delete; move "
                        "them, or choose another --out-dir")
    if args.min_age is not None and args.max_age is not None and args.min_age > args.max_age:
        raise DataError(f"--min-age {args.min_age} is above --max-age {args.max_age}")
    if args.seed < 0:  # numpy's seeds are 0 or more: said now, not after the scan
        raise DataError(f"--seed must be 0 or more, got {args.seed}")
    given = [flag for flag, value in (("--align-crop", args.align_crop), ("--detector", args.detector)) if value]
    if given and not args.align:  # the whole photos would be used as they are, the choice lost in silence
        raise DataError(f"{' and '.join(given)} choose how --align cuts faces; add --align, or leave "
                        f"{'them' if len(given) > 1 else 'it'} out")
    args.align_crop, args.detector = args.align_crop or "utkface", args.detector or DEFAULT_DETECTOR
    return data_dir, out_dir


def refuse_output_among_images(out_dir, records):
    """--out-dir inside a folder of the labelled images (a CSV's images may lie outside the CSV's own folder):
    chips and figures written there would come back as faces."""
    for folder in sorted({Path(r["path"]).parent for r in records}):
        if same_or_inside(out_dir, folder):
            raise DataError(f"--out-dir {out_dir} is inside {folder}, which holds labelled images; choose a folder "
                            "outside the data")


def write_outputs(out_dir, kept, parts, report, extra_columns):
    """labels.csv, the split folder, data_report.json and the figures, each written atomically.
    labels.csv and the report are written under staged names before the split folder is replaced, and renamed
    right after it: a run that fails writing them (a full disk, Ctrl-C) leaves the last run's set whole, never a
    new split beside the old report, which every export of a model trained on the split would quote. A figure that
    fails after that is a warning, and the earlier run's copy of it is removed."""
    for sub in ("figs", "pics"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".*.staged.*"):  # left by a run killed before its renames (the lock is ours)
        stale.unlink(missing_ok=True)
    report_path, labels_path = out_dir / "data_report.json", out_dir / "labels.csv"
    staged = {path: path.with_name(f".{path.name}.staged.{os.getpid()}") for path in (report_path, labels_path)}
    try:
        write_csv(staged[labels_path], kept, ["path", "age", "hash", "width", "height", *extra_columns])
        text = json.dumps(report, indent=2) + "\n"
        atomic_write(staged[report_path], lambda f: f.write(text.encode()))
        write_split_folder(out_dir / "splits", parts, ["path", "age", "hash", *extra_columns], report["crop"],
                           report["crop_note"])
        for path, staged_path in staged.items():  # the report first: exports read it
            os.replace(staged_path, path)
    finally:
        for staged_path in staged.values():
            staged_path.unlink(missing_ok=True)
    split_ages = {n: [r["age"] for r in rows] for n, rows in zip(SPLITS, parts)}
    figures = {"pics/sample_images.png": functools.partial(plot_samples, kept, seed=report["seed"]),
               "figs/age_distribution.png": functools.partial(plot_age_distribution, [r["age"] for r in kept]),
               "figs/train_test_valid_age_distri.png": functools.partial(plot_split_distributions, split_ages)}
    for name, plot in figures.items():
        try:
            plot(out_dir / name)
        except Exception as exc:  # the split is written: a figure (a photo that no longer decodes) cannot undo it
            (out_dir / name).unlink(missing_ok=True)  # the earlier run's would pass for this split's
            print(f"warning: figure {out_dir / name} not written ({type(exc).__name__}: {exc}); the split, "
                  "labels.csv and data_report.json are written", file=sys.stderr)


def main(args):
    data_dir, out_dir = check_paths(args)
    start = time.perf_counter()
    outside_filter = []  # records --min-age/--max-age left out: a copy of a kept file there is a conflict
    records, skipped, layout = discover_labels(data_dir, args.min_age, args.max_age, outside_filter)
    refuse_output_among_images(out_dir, records)
    existed = out_dir.exists()
    try:
        with folder_lock(out_dir, "eda.py"):  # a second eda.py into OUT would mix its split and report with ours
            return split_and_write(args, data_dir, out_dir, records, skipped, layout, outside_filter, start)
    except BaseException:
        if not existed:  # a first run that failed (too few images, say) leaves no empty OUT behind
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise


def split_and_write(args, data_dir, out_dir, records, skipped, layout, outside_filter, start):
    """Check, deduplicate, (align,) split and write the discovered records: main's work under OUT's lock."""
    found = len(records) + sum(skipped.values())
    # progress bars only on a terminal: in a log or a pipe they would bury the one-line error
    progress = not args.no_progress and sys.stderr.isatty()
    good, skipped = usable_images(records, skipped, args.workers, progress)
    scan_seconds = round(time.perf_counter() - start, 1)
    if not good:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "no image files"
        raise DataError(f"no usable images in {data_dir} ({reasons}); check the folder and the age filters")
    kept, dup_stats = deduplicate(good)
    kept, dup_stats = drop_conflicts_outside_filter(kept, outside_filter, dup_stats)
    crop, crop_note, align_stats = face_crop(args, layout, kept, out_dir, progress)
    if align_stats:
        kept = align_stats.pop("records")
        skipped["no_face"] += align_stats["no_face"]
        for reason in ("unreadable_file", "align_failed"):  # passing faults: tried again by the next run
            if align_stats[reason]:
                skipped[reason] += align_stats[reason]
    if len(kept) < MIN_IMAGES:
        raise DataError(f"only {len(kept)} usable unique images in {data_dir}; the 80:10:10 split needs at least "
                        f"{MIN_IMAGES}, so that validation and test get at least one image each")
    subject = source_subject_column(data_dir) if any("subject" in r for r in kept) else None
    parts = stratified_split(kept, seed=args.seed, group_key="subject" if subject else None)
    groups = [c for c in GROUP_COLUMNS if any(c in r for r in kept)]
    report = {
        "data_dir": str(data_dir.absolute()), "layout": layout, "min_age_filter": args.min_age,
        "max_age_filter": args.max_age, "seed": args.seed, "found": found, "used": len(kept),
        "skipped": dict(sorted(skipped.items())), "duplicates": dup_stats, "age": age_stats([r["age"] for r in kept]),
        "splits": {n: len(rows) for n, rows in zip(SPLITS, parts)}, "split_by": "subject" if subject else "image",
        "subjects": subject_report(subject, parts), "identical_files_in_two_splits": files_in_two_splits(parts),
        "groups": group_counts(groups, parts), "scan_seconds": scan_seconds,
        "crop": crop, "crop_note": crop_note, "align": align_stats,
    }
    extra = (["subject"] if subject else []) + groups + (["source"] if align_stats else [])
    write_outputs(out_dir, kept, parts, report, extra)
    print(f"eda: {data_dir}")
    print_summary(report)
    print(f"wrote {out_dir}/labels.csv, data_report.json, splits/, figs/, pics/")
    return report


if __name__ == "__main__":
    run_cli(main, get_args_parser())
