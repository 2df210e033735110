"""Reproduce every accuracy and speed figure of RESULTS.md (and the README's headline block) with one command.

    python benchmark.py                       # Protocols S and F, the --models default (hours on a CPU)
    python benchmark.py --protocols S --models simplecnn_dldl
    python benchmark.py --quick               # smoke version: minutes
    python benchmark.py --table               # write RESULTS.md and README.md's results block from bench/

Data: UTKFace (../shared/data/UTKFace by default), byte-identical duplicates merged, conflicting-age
groups dropped, stratified 80:10:10 with seed 42 (all by eda.py). Protocol S: ages 20-50 (the seed
data set's range); Protocol F: all ages. Each model is trained by train.py (selection on validation,
test split read once, by the best epoch). Figures are merged into bench/results.json, so one protocol
or one model can be rerun without losing the others. Run it with nothing else on the machine: two
torch processes on two cores slow each other several-fold.
"""
import contextlib
import copy
import dataclasses
import datetime
import functools
import json
import os
import platform
import re
import shlex
import statistics
import time
from pathlib import Path

from cli import ArgumentParser, lazy_import, run_cli  # first: cli._missing_package_hook
import numpy as np

import eda
import train
from custom_dataset import (DARK_FLOOR_PERCENTILE, GRAIN_BLOB, GRAIN_SIGMA, MAX_LIFT, SCAN_GRAIN, SCAN_SCALE,
                            UTKFACE_NAME, CustomDataset, DataError, PreprocessConfig, atomic_write_together, build_cache,
                            exposure_luma, make_loader, read_split)
from checkpoints import (export_best, load_checkpoint, load_torchscript, model_from_checkpoint, onnx_metadata,
                         rewrite_export_metadata, save_checkpoint, SHIPPED_NAME)
from functions import (INTERVAL_LEVEL, MAE_NOISE, SPREAD_FLOOR, WORST_DECADE_MIN_FACES, ZOOM_CANDIDATES, atomic_write,
                       keep_freed_memory, lowest_mae_zoom_set, test_time_views, time_runs,
                       worst_decade_rule_failures, worst_of_table)

torch = lazy_import("torch")  # imported on first use: --help answers without it
PROTOCOLS = {"S": ["--min-age", "20", "--max-age", "50"], "F": []}
# Every benchmark model is MODEL_BASE with its own overrides (with_overrides). MODEL_BASE is train.py's
# default recipe spelled out (at 40 epochs, not its 20), so that a changed default cannot change a benchmark figure.
MODEL_BASE = ["--model", "simplecnn", "--head", "distribution", "--loss", "mse", "--epochs", "40", "--lr", "1e-3",
              "--augment", "default", "--tta-flip", "--no-denoise", "--no-deblur"]
# the teachers of F's second generation (gen2 and the film-grain run); the third generation adds those two
F_GEN2_TEACHERS = "simplecnn_photo_scan_100ep,simplecnn_photo_scan_distilled_100ep,simplecnn_photo_scan_distilled_144px_70ep"
MODELS = {  # name -> train.py arguments that replace MODEL_BASE's (beyond splits/out-dir)
    # the seed's recipe as the seed ran it
    "simplecnn_seed": ["--head", "regression", "--loss", "l1", "--epochs", "20", "--schedule", "constant",
                       "--warmup-epochs", "0", "--augment", "light", "--no-tta-flip", "--denoise", "--deblur"],
    "simplecnn": ["--head", "regression", "--loss", "l1", "--epochs", "20", "--denoise", "--deblur"],
    "simplecnn_dldl": ["--loss", "l1", "--epochs", "20", "--denoise", "--deblur"],
    "simplecnn_bn_dldl": ["--model", "simplecnn_bn", "--loss", "l1", "--epochs", "20", "--denoise", "--deblur"],
    # the base of the ablation table plus each lever that beat it by more than the seed-to-seed noise
    # (RESULTS.md, "Experiments"), trained 40 epochs; 96 px is the same recipe at the smaller input size
    "simplecnn_tuned": [],
    "simplecnn_tuned_96px": ["--image-size", "96"],
    # the one 40-epoch lever that won on validation (LONG_ABLATIONS: tuned_60_epochs)
    "simplecnn_tuned_60ep": ["--epochs", "60"],
    # simplecnn_tuned plus 20 % gray training images (--augment photo), for scanned and old photos
    "simplecnn_photo": ["--augment", "photo"],
    # simplecnn_tuned_96px plus 30 % of training images made to look scanned (--augment scan), for FG-NET
    "simplecnn_scan_96px": ["--image-size", "96", "--augment", "scan"],
    # simplecnn_photo plus the scan degradation: the two real-photo levers together, at 128 px
    "simplecnn_photo_scan": ["--augment", "photo_scan"],
    # the same at 60 epochs (the schedule that won on Protocol S: LONG_ABLATIONS tuned_60_epochs)
    "simplecnn_photo_scan_60ep": ["--augment", "photo_scan", "--epochs", "60"],
    # the same at 100 epochs, in bf16 autocast (--amp), which makes 100 epochs cost what 60 did in float32
    "simplecnn_photo_scan_100ep": ["--augment", "photo_scan", "--epochs", "100", "--amp"],
    # simplecnn_photo_scan_100ep again, distilled from that run (one teacher, its own recipe and length)
    "simplecnn_photo_scan_distilled_100ep": ["--augment", "photo_scan", "--epochs", "100", "--amp",
                                              "--teacher", "{runs:simplecnn_photo_scan_100ep}"],
    # simplecnn_photo_scan_60ep with the denoiser back on (the seed's non-local means, without its sharpening),
    # in bf16: does removing a scan's grain before the model help on real photos, and what does it cost on UTKFace?
    "simplecnn_photo_scan_denoise_60ep": ["--augment", "photo_scan", "--epochs", "60", "--amp", "--denoise"],
    # the S student's levers on Protocol F: 144 px, taught by the mean of F's two 100-epoch runs; 70 epochs keep
    # the final inside the hour at 144 px
    "simplecnn_photo_scan_distilled_144px_70ep": [
        "--augment", "photo_scan", "--epochs", "70", "--image-size", "144", "--amp",
        "--teacher", "{runs:simplecnn_photo_scan_100ep,simplecnn_photo_scan_distilled_100ep}"],
    # the same student with one change, a third teacher: that student itself (a second generation)
    "simplecnn_photo_scan_distilled_gen2_144px_70ep": [
        "--augment", "photo_scan", "--epochs", "70", "--image-size", "144", "--amp", "--teacher",
        "{runs:" + F_GEN2_TEACHERS + "}"],
    # simplecnn_photo_scan_distilled_gen2_144px_70ep with one change: film grain in 30 % of training images
    "simplecnn_photo_scan_grain_gen2_144px_70ep": [
        "--augment", "photo_scan_grain", "--epochs", "70", "--image-size", "144", "--amp", "--teacher",
        "{runs:" + F_GEN2_TEACHERS + "}"],
    # gen2 with one change: its test-time zooms chosen on validation once, after training (--choose-zooms), so the
    # zooms' gain (-0.059 on F validation for the shipped weights) costs no epoch time and the final fits the hour
    "simplecnn_photo_scan_distilled_gen2_144px_70ep_cz": [
        "--augment", "photo_scan", "--epochs", "70", "--image-size", "144", "--amp", "--choose-zooms", "--teacher",
        "{runs:" + F_GEN2_TEACHERS + "}"],
    # a third generation: taught by F's five photo_scan finals (all but the denoising run, whose inputs differ)
    # for 80 epochs instead of 70; two changes at once, so beside gen2 it isolates neither
    "simplecnn_photo_scan_distilled_gen3_144px_80ep": [
        "--augment", "photo_scan", "--epochs", "80", "--image-size", "144", "--amp", "--teacher",
        "{runs:" + F_GEN2_TEACHERS + ",simplecnn_photo_scan_distilled_gen2_144px_70ep,"
        "simplecnn_photo_scan_grain_gen2_144px_70ep}"],
    # F's first final with test-time zooms, and no teacher: F's teachers were not kept, and on F distillation bought
    # little on validation (simplecnn_photo_scan_100ep 4.89 alone, its students 4.85-4.94). simplecnn_photo_scan at
    # gen3's size and length (144 px, 80 epochs, bf16) whose every prediction also averages two centred zooms
    "simplecnn_photo_scan_144px_80ep_zoom": ["--augment", "photo_scan", "--epochs", "80", "--image-size", "144",
                                             "--amp", "--tta-zoom", "0.95,0.9"],
    "resnet18_dldl": ["--model", "resnet18", "--epochs", "15", "--image-size", "112"],
    # simplecnn_tuned_60ep in bf16 autocast (--amp): a teacher in 15 minutes instead of 35
    "simplecnn_tuned_60ep_amp": ["--epochs", "60", "--amp"],
    # the same teacher with another seed, so that a student can learn from two (amp60_seed2 as a final)
    "simplecnn_tuned_60ep_amp_seed2": ["--epochs", "60", "--amp", "--seed", "2"],
    # one teacher, a longer schedule at 144 px, all in bf16: what the faster training buys for distillation
    "simplecnn_distilled_144px_80ep": ["--epochs", "80", "--image-size", "144", "--amp",
                                        "--teacher", "{runs:simplecnn_tuned_60ep_amp}"],
    # a second generation in bf16: the same student, 100 epochs, from the first student and its teacher
    "simplecnn_distilled_gen2_144px_100ep": ["--epochs", "100", "--image-size", "144", "--amp", "--teacher",
                                              "{runs:simplecnn_distilled_144px_80ep,simplecnn_tuned_60ep_amp}"],
    # simplecnn_distilled_144px_80ep with one change: a second teacher, its teacher's recipe with another seed
    "simplecnn_distilled_144px_80ep_2t": ["--epochs", "80", "--image-size", "144", "--amp", "--teacher",
                                          "{runs:simplecnn_tuned_60ep_amp,simplecnn_tuned_60ep_amp_seed2}"],
    # simplecnn_distilled_144px_80ep taught by function matching (Beyer et al. 2022): its teacher predicts every
    # batch as the student sees it (--teacher-online) and the batches are C-Mixup blends, which only an online
    # teacher can label consistently (C-Mixup with labels alone lost: amp60_mixup)
    "simplecnn_distilled_144px_80ep_fm": ["--epochs", "80", "--image-size", "144", "--amp", "--teacher-online",
                                          "--mixup", "0.2", "--teacher", "{runs:simplecnn_tuned_60ep_amp}"],
    # simplecnn_distilled_144px_80ep with one change: its teacher is that run itself (a born-again student)
    "simplecnn_distilled_144px_80ep_self": ["--epochs", "80", "--image-size", "144", "--amp",
                                             "--teacher", "{runs:simplecnn_distilled_144px_80ep}"],
    # simplecnn_distilled_144px_80ep with one change, the lever that won at 60 epochs (amp60_sigma3)
    "simplecnn_distilled_144px_80ep_sigma3": ["--epochs", "80", "--image-size", "144", "--amp", "--label-sigma", "3",
                                              "--teacher", "{runs:simplecnn_tuned_60ep_amp}"],
    # simplecnn_distilled_144px_80ep with one change: 70 % of every target the teacher's instead of half
    "simplecnn_distilled_144px_80ep_tw07": ["--epochs", "80", "--image-size", "144", "--amp", "--teacher-weight", "0.7",
                                            "--teacher", "{runs:simplecnn_tuned_60ep_amp}"],
    # simplecnn_distilled_144px_80ep with one change: its predictions also average two centred zooms of each face
    # (--tta-zoom 0.95,0.9; chosen on the validation split of the ablation amp60_deep). Same recipe and seed, but its
    # training did not match the recorded run's on another day's machine; the paired check is --zoom-probe
    "simplecnn_distilled_144px_80ep_zoom": ["--epochs", "80", "--image-size", "144", "--amp", "--tta-zoom", "0.95,0.9",
                                            "--teacher", "{runs:simplecnn_tuned_60ep_amp}"],
    # simplecnn_distilled_144px_80ep (Protocol S's validation choice) with one change: its test-time zooms chosen on
    # validation once after training (--choose-zooms), as gen2_144px_70ep_cz does on F; for S's new split
    "simplecnn_distilled_144px_80ep_cz": ["--epochs", "80", "--image-size", "144", "--amp", "--choose-zooms",
                                          "--teacher", "{runs:simplecnn_tuned_60ep_amp}"],
    # simplecnn_distilled_144px_80ep_cz cut to what trains within the hour on a 2-core CPU without bf16 (2026-12-03:
    # about 70 s per 128 px epoch there, against 20 s at 144 px with bf16 on the machine of the earlier runs); the
    # hour is the student's, its teacher trained first on the same split (train.py refuses another split's)
    "simplecnn_distilled_40ep_cz": ["--epochs", "40", "--amp", "--choose-zooms",
                                    "--teacher", "{runs:simplecnn_tuned_60ep_amp}"],
    # simplecnn_distilled_40ep_cz with one change: its teacher is the mean of two tables, the ResNet-18 + ResNet-34
    # pair trained from scratch on an H200 (bench/gpu_teachers.py, val 4.125) and its CPU teacher's (val 4.163)
    "simplecnn_distilled_40ep_cz_gpu": ["--epochs", "40", "--amp", "--choose-zooms", "--teacher",
                                        "{tables:gpu_teachers/S_ensemble.npz,simplecnn_distilled_40ep_cz/teacher.npz}"],
    # simplecnn_tuned_60ep distilled from the ensemble of the protocol's three best finals (TEACHERS)
    "simplecnn_distilled": ["--epochs", "60", "--teacher", "{teachers}"],
    # a second generation: the same student distilled from a stronger ensemble, the first student among them
    "simplecnn_distilled_gen2": ["--epochs", "60",
                                 "--teacher", "{runs:simplecnn_distilled,simplecnn_tuned_60ep,simplecnn_tuned}"],
    # the same at 144 px: the one change, judged against simplecnn_distilled_gen2 on validation
    "simplecnn_distilled_gen2_144px": ["--epochs", "60", "--image-size", "144",
                                       "--teacher", "{runs:simplecnn_distilled,simplecnn_tuned_60ep,simplecnn_tuned}"],
}
# Distillation teachers: finals of the same protocol and split, averaged (train.py --teacher); "{teachers}" in
# an argument list stands for them, under the protocol's run folder
TEACHERS = {"S": ("simplecnn_tuned_60ep", "simplecnn_tuned", "simplecnn_tuned_96px"),
            "F": ("simplecnn_tuned", "simplecnn_photo", "simplecnn_tuned_96px")}


def with_teachers(argv, work, protocol):
    """argv with each teacher placeholder replaced by checkpoints under the protocol's run folder: "{teachers}"
    stands for the protocol's TEACHERS, "{runs:a,b}" for the runs a and b (refused if one is missing)."""
    resolved = []
    for arg in argv:
        if arg == "{teachers}":
            names = TEACHERS[protocol]
        elif arg.startswith("{tables:") and arg.endswith("}"):  # teacher.npz files under the protocol's folder
            tables = [work / protocol / name for name in arg[len("{tables:"):-1].split(",")]
            missing = [str(p) for p in tables if not p.is_file()]
            if missing:
                raise DataError(f"distillation needs the teacher tables {', '.join(missing)} (bench/gpu_teachers.py "
                                "writes GPU teachers' tables; a student run writes its teachers' as teacher.npz)")
            resolved.append(",".join(map(str, tables)))
            continue
        elif arg.startswith("{runs:") and arg.endswith("}"):
            names = tuple(arg[len("{runs:"):-1].split(","))
        else:
            resolved.append(arg)
            continue
        paths = [work / protocol / name / "best.pt" for name in names]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise DataError(f"distillation needs the teachers {', '.join(missing)}; train them first "
                            f"(python benchmark.py --protocols {protocol} --models {','.join(names)})")
        resolved.append(",".join(map(str, paths)))
    return resolved


@functools.lru_cache(maxsize=None)
def _train_parser():
    return train.get_args_parser()


def recorded_args(entry):
    """train.py's settings of a recorded run, its "command" read by train.py's own parser (defaults filled
    in, the last of a repeated flag winning, as when it ran)."""
    return _train_parser().parse_args(shlex.split(entry.get("command", "python train.py"))[2:])


def teacher_names(entry) -> list:
    """The runs a recorded model was distilled from (the folders of its --teacher checkpoints), in order."""
    teacher = recorded_args(entry).teacher
    return [name for path in teacher.split(",") for name in table_runs(Path(path))] if teacher else []


def table_runs(path: Path) -> list:
    """The runs behind one --teacher source: a checkpoint's folder, or the checkpoints a teacher.npz was predicted
    from (its "sources"; a table trained elsewhere names none that is here, and none is counted)."""
    if path.suffix.lower() != ".npz":
        return [path.parent.name]
    try:
        with np.load(path, allow_pickle=False) as table:
            return [Path(str(s)).parent.name for s in table["sources"]] if "sources" in table.files else []
    except (OSError, ValueError):
        return []


def with_overrides(base, overrides):
    """base's arguments with every flag that overrides gives replaced, values and all (--x and --no-x
    are one flag; --x=v is --x); flags new to base are appended, in order."""
    def groups(argv):
        out = []
        for token in argv:
            if token.startswith("--"):
                out.append([token])
            elif out:
                out[-1].append(token)
            else:
                raise ValueError(f"an argument list must start with a flag: {argv}")
        return out

    def key(flag):
        return "--" + flag[2:].split("=")[0].removeprefix("no-")

    new = {key(g[0]): g for g in groups(overrides)}
    merged = [new.pop(key(g[0]), g) for g in groups(base)]
    return [token for g in merged + list(new.values()) for token in g]


def model_args(name):
    """train.py arguments of a MODELS entry (beyond splits/out-dir)."""
    return with_overrides(MODEL_BASE, MODELS[name])


# One-lever-at-a-time experiments on Protocol S, judged on validation only (the test split is not read):
# each run is ABLATION_BASE with one change. 10 epochs keeps the set affordable on 2 cores (~7 min a
# run); it favours levers that pay off early, which RESULTS.md says next to the table.
ABLATION_BASE = ["--model", "simplecnn", "--head", "distribution", "--loss", "l1", "--epochs", "10",
                 "--lr", "1e-3", "--batch-size", "64", "--augment", "default", "--tta-flip", "--denoise", "--deblur"]
ABLATIONS = {  # name -> (what changes, train.py arguments that override the base)
    "balanced": ("age-balanced sampling: every decade of age drawn equally often", ["--balance"]),
    "base_rerun": ("nothing: the base again, same seed, trained by the code that trained `balanced`", []),
    "base": ("SimpleCNN, label-distribution head, L1, default augmentation, cosine, flip-TTA", []),
    "simplecnn_bn": ("BatchNorm after each conv, dropout 0.3 before the FC layers",
                     ["--model", "simplecnn_bn"]),
    "no_denoise_deblur": ("seed's denoise and deblur off", ["--no-denoise", "--no-deblur"]),
    "augment_strong": ("strong augmentation", ["--augment", "strong"]),
    "augment_light": ("light augmentation (flips only)", ["--augment", "light"]),
    "batch_32": ("batch 32 instead of 64", ["--batch-size", "32"]),
    "regression_head": ("regression head (one output) instead of label distribution", ["--head", "regression"]),
    "loss_huber": ("Huber (delta 5) instead of L1 on the expected age", ["--loss", "huber"]),
    "loss_mse": ("MSE instead of L1 on the expected age", ["--loss", "mse"]),
    "constant_lr": ("constant learning rate, no warm-up, instead of warm-up + cosine",
                    ["--schedule", "constant", "--warmup-epochs", "0"]),
    "image_size_96": ("96 px input instead of 128", ["--image-size", "96"]),
    "dropout_0.3": ("dropout 0.3 before the fully connected layers", ["--dropout", "0.3"]),
    "base_seed_2": ("nothing: the base again with another seed (run-to-run noise)", ["--seed", "2"]),
}
# Levers judged at the finals' length: MODEL_BASE (simplecnn_tuned's recipe, 40 epochs) with one change, compared
# with the validation MAE of the run they change (LONG_ABLATION_BASES; same seed and split, the test split unread)
AMP60 = ["--epochs", "60", "--amp"]  # tuned_60_epochs_amp's change to MODEL_BASE, the amp60_ levers' start
LONG_ABLATIONS = {
    "tuned_light": ("light augmentation (flips only): the open check of the 10-epoch table", ["--augment", "light"]),
    "tuned_ema": ("an exponential moving average of the weights (decay 0.999, about 6 epochs) is evaluated and kept",
                  ["--ema", "0.999"]),
    "tuned_60_epochs": ("60 epochs instead of 40 (its best epoch was 38 of 40)", ["--epochs", "60"]),
    "tuned_gap": ("simplecnn_gap: a fifth conv block and global average pooling instead of the 8192 -> 64 layer",
                  ["--model", "simplecnn_gap"]),
    "tuned_bn": ("simplecnn_bn: BatchNorm after every conv, with its dropout 0.3 (it lost at 10 epochs; judged at 40)",
                 ["--model", "simplecnn_bn"]),
    "tuned_60_epochs_amp": ("tuned_60_epochs with bf16 autocast in the training step (--amp; this CPU has AVX-512 "
                            "BF16): the same recipe, to see whether it learns as well in less time",
                            AMP60),
    # levers for #15, each judged against LONG_ABLATION_BASES[name] (one change to it)
    "amp60_wd": ("tuned_60_epochs_amp with AdamW weight decay 0.05 instead of 0",
                 [*AMP60, "--weight-decay", "0.05"]),
    "amp60_sigma3": ("tuned_60_epochs_amp with the label's Gaussian 3 years wide instead of 2 (--label-sigma 3)",
                     [*AMP60, "--label-sigma", "3"]),
    "amp60_mixup": ("tuned_60_epochs_amp with C-Mixup: each image blended with one of a similar age, "
                    "Beta(0.2, 0.2) weights (--mixup 0.2)", [*AMP60, "--mixup", "0.2"]),
    "amp60_erase": ("tuned_60_epochs_amp with random erasing: half the training images get one rectangle "
                    "of noise (--erase 0.5)", [*AMP60, "--erase", "0.5"]),
    "amp60_seed2": ("nothing: tuned_60_epochs_amp again with another seed (run-to-run noise at 60 epochs)",
                    [*AMP60, "--seed", "2"]),
    # the shape of the network within 1M weights (#15): more depth where it is cheap, the 8x8 map
    "amp60_deep": ("tuned_60_epochs_amp on simplecnn_deep: a fifth 3x3 conv (128 -> 128) on the last map, "
                   "before the fully connected layers (+147,584 weights)", [*AMP60, "--model", "simplecnn_deep"]),
}
# the long ablation each lever changed one setting of; the levers not named here changed simplecnn_tuned
LONG_ABLATION_BASES = {**{name: "tuned_60_epochs_amp" for name in LONG_ABLATIONS if name.startswith("amp60_")},
                       "tuned_60_epochs_amp": "tuned_60_epochs"}  # bf16 is its one change; 60 epochs is the other run's


def get_args_parser():
    p = ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", default="../shared/data/UTKFace", help="UTKFace folder (read only)")
    p.add_argument("--work-dir", default="bench/work", help="splits, caches and runs")
    p.add_argument("--out", default="bench/results.json", help="results file (merged, not overwritten)")
    p.add_argument("--protocols", default="S,F", help="comma-separated: S (ages 20-50), F (all ages)")
    p.add_argument("--models", default="simplecnn_seed,simplecnn_dldl", help=f"comma-separated from {', '.join(MODELS)}")
    p.add_argument("--epochs", type=int, default=None, help="override every model's epoch count")
    p.add_argument("--quick", action="store_true", help="smoke run: Protocol S, 2 epochs on 10 %% of train")
    p.add_argument("--no-speed", action="store_true", help="skip the loader speed measurement")
    p.add_argument("--crop-check", type=int, default=0,
                   help="also compare test MAE of UTKFace's files directly vs found again in N photo-like scenes, "
                        "for the last of --models (with --cross or --refresh-exports: of the last protocol); "
                        "skipped, said, where its run is unfinished or its best.pt holds other weights than its "
                        "record (records made from 2026-12-04 on keep their weights)")
    p.add_argument("--table", action="store_true",
                   help="only write --results-md and the results block of --readme from --out, --detection and "
                        "the other records in bench/ (and print the main tables)")
    p.add_argument("--detection", default="bench/detection.json", help="bench_detection.py's figures, for --table")
    p.add_argument("--results-md", default="RESULTS.md", help="--table: the generated results page")
    p.add_argument("--readme", default="README.md",
                   help="--table: rewrite its block between <!-- results:start --> and <!-- results:end -->")
    p.add_argument("--probes", action="store_true",
                   help="only run the speed probes behind the speed choices (about 2 minutes)")
    p.add_argument("--refresh-exports", action="store_true",
                   help="re-export the listed models' existing runs and re-measure model.jit (no training)")
    p.add_argument("--cross", metavar="DIR", default=None,
                   help="only test the listed protocols' models on another labelled data set (e.g. "
                        "../shared/data/FGNET) through inference.py's pipeline -> results['cross']['FGNET']")
    p.add_argument("--cross-filters", action="store_true",
                   help="with --cross: also run each model with every face filtered first (chip_filters): what in a "
                        "scanned photo moves its estimate (a diagnosis; no filter is part of the pipeline)")
    p.add_argument("--cross-compare", action="store_true",
                   help="with --cross: also run each model with the old Haar box crop, for comparison")
    p.add_argument("--ship", metavar="PROTOCOL/NAME", default=None,
                   help="only export that Protocol F run again from its best.pt (with its interval), copy the "
                        "exports to models/ and write the model card (needs --cross first); drops the earlier "
                        "shipped zooms and zoom probes (run --ship-zooms again); refused where best.pt holds other "
                        "weights than its record (records made from 2026-12-04 on keep their weights)")
    p.add_argument("--ablations", default=None,
                   help="comma-separated one-lever experiments on Protocol S, validation only: "
                        f"{', '.join(ABLATIONS)}; at 40 epochs on simplecnn_tuned's recipe: {', '.join(LONG_ABLATIONS)}")
    p.add_argument("--calibrate", action="store_true",
                   help="only measure the listed models' existing runs again: age interval (calibrated on val, "
                        "coverage on test), error per gender/race/decade, a post-hoc isotonic calibration "
                        "fitted on val, val MAE on gray and scanned-looking copies -> "
                        "results['protocols'][P][NAME]['interval', 'groups', 'isotonic', 'val_mae_gray', ...]")
    p.add_argument("--rerun", action="store_true",
                   help="only train --models' recorded finals again (fresh split, into WORK/P/rerun/NAME, teachers as "
                        "they are under WORK/P) and record the figures beside the recorded ones -> results['reruns']")
    p.add_argument("--zoom-probe", metavar="MODEL.onnx", default=None,
                   help="only measure an export's validation MAE (on --protocols' last protocol) under each "
                        f"test-time zoom set ({', '.join(z or 'none' for z in ZOOM_CANDIDATES)}), through "
                        "inference.py's own averaging -> results['zoom_probe']; the test split is not read")
    p.add_argument("--ship-zooms", action="store_true",
                   help="give the shipped model (models/) the test-time zoom set of the --zoom-probe list that lowers "
                        "its Protocol F validation MAE most, refit its interval on validation with it, and measure "
                        "its test split and FG-NET (--cross DIR, default ../shared/data/FGNET) once with it -> the "
                        "exports' metadata, results['shipped_zooms'] and the model card")
    p.add_argument("--dark-floor-check", action="store_true",
                   help="the shipped model (models/) on Protocol F's test faces, given directly, with and without "
                        "inference.py's dark floor: overall, per race, and the faces it brightens -> "
                        "results['dark_floor_check'] (whether the floor changes faces in good light, dark skin among them)")
    p.add_argument("--data-check", action="store_true",
                   help="only make each --protocols split again with today's eda.py (in a temporary folder; WORK is "
                        "left alone) and set it beside the split under WORK/P/splits, which the recorded runs used "
                        "-> results['data_check']")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


def jit_speed(jit_path, image_size, runs_b1=300, runs_b64=20):
    """Median batch-1 latency (ms) and batch-64 throughput (images/s) of an exported model.jit."""
    keep_freed_memory()  # as inference.py runs it (configure_threads)
    module, _ = load_torchscript(jit_path)
    x1 = torch.rand(1, 3, image_size, image_size) * 255
    x64 = torch.rand(64, 3, image_size, image_size) * 255
    b1 = time_runs(module, x1, runs=runs_b1, warmup=20)
    b64 = time_runs(module, x64, runs=runs_b64, warmup=3)
    return 1000 * statistics.median(b1), 64 * runs_b64 / sum(b64)


def loader_speed(splits, cache_dir, n=192):
    """Images/s of a training pass's data side: preprocessing per item vs reading the cache."""
    cfg = PreprocessConfig()
    records = read_split(Path(splits) / "train.csv")[:n]
    images, ok, _ = build_cache([r["path"] for r in records], cfg, cache_dir, workers=1, progress=False,
                                name="speedcheck")
    result = {}
    for label, ds in (("uncached", CustomDataset(records, cfg)), ("cached", CustomDataset(records, cfg, images))):
        loader = make_loader(ds, 64, shuffle=True, seed=0)
        t = time.perf_counter()
        passes = 1 if label == "uncached" else 20
        for _ in range(passes):
            for batch, _ages in loader:
                batch.float()
        result[f"loader_{label}_images_per_s"] = passes * len(ds) / (time.perf_counter() - t)
    result["loader_cache_speedup"] = result["loader_cached_images_per_s"] / result["loader_uncached_images_per_s"]
    result["loader_images_measured"] = len(records)
    return result


def crop_consistency(run_dir, splits, n, seed=0):
    """Test MAE of UTKFace's own files directly vs after pasting each into a larger, tilted scene
    (bench_detection's scenes) and finding it again with inference.py's pipeline; once with the
    scenes' random brightness, once at the original brightness, to tell the cost of detection and
    alignment from the model's sensitivity to light."""
    import inference
    from bench_detection import is_hit, make_scene
    from custom_dataset import load_rgb
    direct_model = inference.AgeEstimator(run_dir / "model.onnx", whole_image=True)
    photo_model = inference.AgeEstimator(run_dir / "model.onnx")
    rng = np.random.default_rng(seed)
    records = read_split(Path(splits) / "test.csv")
    records = [records[i] for i in rng.choice(len(records), size=min(n, len(records)), replace=False)]
    errors = {"direct": [], "scene": [], "scene_same_light": []}
    found = 0
    for rec in records:
        face = load_rgb(rec["path"])
        hits = {}
        for key, gain in (("scene", None), ("scene_same_light", 1.0)):
            scene, truth = make_scene(face, rng, gain)
            faces_found, _, ages = photo_model.estimate(scene)
            hits[key] = [a for f, a in zip(faces_found, ages) if is_hit(f.box, truth)]
        if all(hits.values()):  # the same faces in every column
            found += 1
            errors["direct"].append(abs(direct_model.estimate(face)[2][0] - rec["age"]))
            for key, ages in hits.items():
                errors[key].append(abs(ages[0] - rec["age"]))
    mae = {k: float(np.mean(v)) for k, v in errors.items()}
    return {"images": len(records), "found": found, "crop": photo_model.crop, "detector": photo_model.pipeline.detector,
            "min_face": photo_model.min_face, "dark_floor": photo_model.dark_floor,
            "mae_direct": mae["direct"], "mae_through_pipeline": mae["scene"],
            "mae_through_pipeline_same_light": mae["scene_same_light"], "gap": mae["scene"] - mae["direct"],
            "gap_same_light": mae["scene_same_light"] - mae["direct"]}


def cross_dataset(model_path, data_dir, detector=None, crop=None, faces_out=None, zooms=None):
    """The model (an export) on another data set's photos through inference.py's own pipeline (AgeEstimator):
    the largest face of each photo is taken as the labelled person; photos without a face are
    counted (faces_found), not guessed. crop/detector override the model's for comparisons, zooms its
    test-time zooms. faces_out: a list that receives (aligned face, true age) of every photo with a face
    (cross_filters)."""
    import faces
    import inference
    from custom_dataset import discover_labels, load_rgb
    estimator = inference.AgeEstimator(model_path, detector)  # None: the model's own (its crop's, else auto)
    if zooms is not None:
        estimator.tta_zoom = zooms
    if crop is not None:
        estimator.crop = faces.check_crop(crop)
        estimator.pipeline = faces.FacePipeline(estimator.crop, estimator.pipeline.detector)
    records, _, _ = discover_labels(data_dir)
    from functions import group_metrics, regression_metrics
    predicted, ages_true, seconds = [], [], []
    for rec in records:
        rgb = load_rgb(rec["path"])
        start = time.perf_counter()
        found, _, ages = estimator.estimate(rgb)
        seconds.append(time.perf_counter() - start)
        if found:
            predicted.append(float(ages[0]))
            ages_true.append(rec["age"])
            if faces_out is not None:
                faces_out.append((np.ascontiguousarray(found[0].chip), rec["age"]))
    figures = regression_metrics(predicted, ages_true)
    decades = group_metrics(predicted, ages_true)["decade"]
    return {"mae": round(figures["mae"], 3), "cs5": round(figures["cs5"], 4), "n": figures["n"],
            "photos": len(records), "faces_found": round(figures["n"] / len(records), 4),
            "mae_per_decade": {k: round(v["mae"], 2) for k, v in figures["mae_per_bin"].items()},
            "mean_error_per_decade": {k: round(v["mean_error"], 2) for k, v in decades.items()},
            "crop": estimator.crop, "detector": estimator.pipeline.detector, "min_face": estimator.min_face,
            "dark_floor": estimator.dark_floor,
            "ms_per_photo_median": round(1000 * statistics.median(seconds), 1)}


def chip_filters() -> dict:
    """name -> filter of an aligned RGB face, for --cross-filters: which property of a scanned photo (colour,
    grain, detail, contrast) moves the estimate, and in which direction. Diagnosis only: no filter is part of
    the pipeline."""
    import cv2
    from custom_dataset import altered_copies, filter_input
    denoiser = PreprocessConfig(denoise=True, deblur=False)  # the pipeline's --denoise, at its default strength

    def unsharp(chip):  # stronger and wider than --deblur's mask (sigma 1.0, amount 0.5), to show the direction
        return cv2.addWeighted(chip, 1.8, cv2.GaussianBlur(chip, (0, 0), 1.5), -0.8, 0)

    def gray(chip):  # the gray of the rule's gray copies and of --augment photo (GRAY_WEIGHTS)
        return altered_copies(chip[None], "gray")[0]

    def local_contrast(chip):
        lab = cv2.cvtColor(chip, cv2.COLOR_RGB2LAB)
        lab[..., 0] = cv2.createCLAHE(2.0, (8, 8)).apply(lab[..., 0])
        return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    return {"as is": lambda chip: chip,
            "gray": gray,
            "blurred (Gaussian, sigma 2.5 px)": lambda chip: cv2.GaussianBlur(chip, (0, 0), 2.5),
            f"denoised (non-local means, h {denoiser.denoise_strength:g})": lambda chip: filter_input(chip, denoiser),
            "sharpened (unsharp mask)": unsharp,
            "local contrast (CLAHE)": local_contrast}


def cross_filters(model_path, found_faces):
    """The model on the (aligned face, true age) pairs cross_dataset found, each face put through every
    chip_filters() filter first: MAE and signed error per decade per filter."""
    import inference
    from functions import group_metrics, regression_metrics
    estimator = inference.AgeEstimator(model_path, whole_image=True)  # the faces are cut out already
    chips, ages_true = [chip for chip, _ in found_faces], [age for _, age in found_faces]
    figures = {}
    for name, apply in chip_filters().items():
        predicted = estimator.predict_inputs(estimator.model_inputs([apply(chip) for chip in chips]))
        decades = group_metrics(predicted, ages_true)["decade"]
        figures[name] = {"mae": round(regression_metrics(predicted, ages_true)["mae"], 3), "n": len(chips),
                         "mean_error_per_decade": {k: round(v["mean_error"], 2) for k, v in decades.items()}}
    return figures


def run_model(protocol, name, train_args, splits, work, epochs=None, quick=False, run_dir=None):
    """Train one benchmark model (into WORK/P/NAME unless run_dir says otherwise) and return its figures."""
    run_dir = run_dir or work / protocol / name
    if epochs is not None:  # replaced in place, so the recorded command names one epoch count
        train_args = with_overrides(train_args, ["--epochs", str(epochs)])
    if quick:
        train_args = with_overrides(train_args, ["--epochs", "2", "--subset-fraction", "0.1"])
    argv = ["--splits", str(splits), "--out-dir", str(run_dir), *with_teachers(train_args, work, protocol),
            "--no-progress"]
    args = train.get_args_parser().parse_args(argv)
    args.resume = args.resume or goes_on(run_dir, args)  # not in the recorded command: the recipe's own
    args.overwrite = not args.resume  # a finished run, or one of other settings, is trained again from epoch 1
    start = time.perf_counter()
    summary = train.main(args)
    wall = time.perf_counter() - start
    test = summary["test"]
    history = json.loads((run_dir / "history.json").read_text())
    latency, b64 = jit_speed(run_dir / "model.jit", args.image_size)
    best = load_checkpoint(run_dir / "best.pt")
    return {
        "test_mae": round(test["mae"], 3), "test_rmse": round(test["rmse"], 3), "test_cs5": round(test["cs5"], 4),
        "test_mae_per_decade": {k: round(v["mae"], 2) for k, v in test["mae_per_bin"].items()},
        "test_images": test["n"], "best_val_mae": round(summary["best_val_mae"], 3), "best_epoch": test["best_epoch"],
        "epochs": args.epochs, "params": summary["params"],
        "train_images_per_s": round(float(np.median([h["train_images_per_s"] for h in history])), 1),
        "train_minutes": round(sum(h["epoch_seconds"] for h in history) / 60, 2),
        "wall_minutes_incl_eval_export": round(wall / 60, 2),
        "earlier_sessions_minutes": round(earlier_sessions_seconds(history) / 60, 2),
        "model_jit_bytes": (run_dir / "model.jit").stat().st_size,
        "model_onnx_bytes": (run_dir / "model.onnx").stat().st_size,
        "latency_b1_ms": round(latency, 3), "images_per_s_b64": round(b64, 1),
        # the views the run trained with, as for best_val_mae: zooms chosen after training (--choose-zooms) would
        # lend the gray and scanned figures a gain the colour figure lacks
        **altered_val_maes(*load_best(run_dir), views=test_time_views(vars(args))),
        **({"interval": rounded(test["interval"])} if "interval" in test else {}),
        **({"groups": rounded(test["groups"])} if "groups" in test else {}),
        **({"age_map": rounded(test["age_map"])} if test.get("age_map") else {}),
        **({"zoom_choice": rounded(test["zoom_choice"])} if test.get("zoom_choice") else {}),
        "split_faces_digest": train.split_faces_digest(splits),  # which faces each split held
        # the precision the steps ran in: --amp is ignored on a CPU without bf16, so the command cannot tell
        **({"bf16": bool(best["bf16"])} if "bf16" in best else {}),
        **({"teacher_val_mae": teacher_val_mae(run_dir / "teacher.npz")}
           if args.teacher and (run_dir / "teacher.npz").is_file()
           and teacher_val_mae(run_dir / "teacher.npz") is not None else {}),
        # which weights: a student tells by them whether a teacher was trained again after it learnt from it
        **({"weights": test["weights"]} if "weights" in test else {}),
        **({"teachers_weights": train.teachers_weights(args.teacher)}
           if args.teacher and not train.teacher_is_table(args.teacher) else {}),
        "command": "python train.py " + shlex.join(argv),
    }


def teacher_val_mae(table_path):
    """The validation MAE of a distillation run's teachers (their mean distribution), from RUN/teacher.npz."""
    with np.load(table_path, allow_pickle=False) as table:  # a mean of tables has none (train.read_teacher_tables)
        return round(float(table["val_mae"]), 3) if "val_mae" in table.files else None


def rounded(value, digits=3):
    """JSON-ready copy with floats rounded (results.json stays readable)."""
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return round(value, digits) if isinstance(value, float) else value


def forward_passes(tta) -> int:
    """Forward passes per face under test_time_views(...): the face and each zoom, each mirrored with the flip."""
    return (1 + len(tta["tta_zoom"])) * (2 if tta["tta_flip"] else 1)


def views_text(metadata) -> str:
    """The model card's words for an export's test-time averaging."""
    tta = test_time_views(metadata)
    zooms, flip = tta["tta_zoom"], "flip " if tta["tta_flip"] else ""
    if not zooms:
        return f"{flip}test-time averaging" if flip else "no test-time averaging"
    return (f"{flip}test-time averaging over the face and its centred {', '.join(f'{z:.0%}' for z in zooms)} "
            f"crops ({len(zooms) + 1} views{', each mirrored' if flip else ''})")


def split_predictions(model, cfg, splits, split, tta):
    """(predicted ages, true ages, dataset, predicted spread or None) of one split, as evaluation sees it
    (tta: test_time_views)."""
    from custom_dataset import load_split_dataset
    from functions import predict_loader
    data = load_split_dataset(Path(splits) / f"{split}.csv", cfg, Path(splits).parent / "cache", progress=False)
    pred, true, spread = predict_loader(model, make_loader(data, 256, shuffle=False), torch.tensor(cfg.mean),
                                        torch.tensor(cfg.std), **tta, spread=True)
    return pred, true, data, spread


def interval_experiment(val, test, level=INTERVAL_LEVEL, seed=0) -> dict:
    """The issue's two ways to an interval, weighed on validation: residual bands of predicted age (what
    models carry, functions.fit_interval) vs |error| / the distribution head's predicted spread
    (functions.fit_spread_interval). Each is cross-fitted on val's two halves (what decides: coverage,
    width, the decades' coverage range) and then fitted on all of val and measured on test (reported)."""
    from functions import coverage_of, fit_interval, fit_spread_interval, predict_interval, predict_spread_interval

    def intervals(method, fit, apply):  # fit, apply: (pred, true, spread)
        if method == "bands":
            return predict_interval(apply[0], fit_interval(fit[0], fit[1]), level)
        return predict_spread_interval(apply[0], apply[2], fit_spread_interval(*fit), level)

    def summary(report):
        judged = [d["coverage"] for d in report["coverage_per_decade"].values() if d["n"] >= WORST_DECADE_MIN_FACES]
        return {"coverage": report["coverage"], "mean_width": report["mean_width"],
                "decade_coverage_min": min(judged, default=None), "decade_coverage_max": max(judged, default=None)}

    val, test = tuple(np.asarray(a, np.float64) for a in val), tuple(np.asarray(a, np.float64) for a in test)
    halves = np.array_split(np.random.default_rng(seed).permutation(len(val[0])), 2)
    result = {"level": level, "val_corr_abs_error_spread": float(np.corrcoef(np.abs(val[0] - val[1]), val[2])[0, 1])}
    for method in ("bands", "spread"):
        low, high = np.empty(len(val[0])), np.empty(len(val[0]))
        for fit_part, apply_part in ((halves[0], halves[1]), (halves[1], halves[0])):
            low[apply_part], high[apply_part] = intervals(method, [a[fit_part] for a in val],
                                                          [a[apply_part] for a in val])
        result[method] = {"val_crossfit": summary(coverage_of(val[1], low, high)),
                          "test": summary(coverage_of(test[1], *intervals(method, val, test)))}
    return rounded(result)


def groups_of(data) -> dict:
    """The split's gender/race labels; for UTKFace splits written before eda.py kept them, from the names."""
    from custom_dataset import utkface_groups
    if data.groups or not all(UTKFACE_NAME.match(Path(p).name) for p in data.paths):
        return data.groups
    labels = [utkface_groups(Path(p).name) for p in data.paths]
    return {name: [label[name] for label in labels] for name in ("gender", "race")}


def isotonic_experiment(val, test) -> dict:
    """functions.judge_age_map on the validation split (it decides), and the test figures of the map
    fitted on all of val (reported once, deciding nothing)."""
    from functions import apply_age_map, fit_age_map, group_metrics, judge_age_map, worst_decade
    result = {k: v for k, v in judge_age_map(val[0], val[1]).items() if k != "crossed"}
    test_mapped = apply_age_map(test[0], fit_age_map(val[0], val[1]))
    for when, pred in (("before", test[0]), ("after", test_mapped)):
        result[f"test_mae_{when}"] = float(np.mean(np.abs(np.asarray(pred) - test[1])))
        result[f"test_worst_decade_{when}"] = list(worst_decade(pred, test[1]))
        result[f"signed_error_per_decade_{when}"] = {k: v["mean_error"]
                                                     for k, v in group_metrics(pred, test[1])["decade"].items()}
    return rounded(result)


def calibrate_run(protocol, name, work, level=INTERVAL_LEVEL) -> dict:
    """The interval calibration train.py now fits on the validation split, for a run trained before it
    did (written into its best.pt for the next export), measured on the test split; per-group errors;
    the isotonic experiment (the age map train.py --age-map auto keeps where it passes). The map is
    judged and reported, not added to an existing run: its metrics.json and exports stay the network's own.
    A run whose map train.py kept reports mapped ages: its interval is fitted around them as train.py fits it."""
    from functions import apply_age_map, fit_interval, group_metrics, interval_metrics, judge_age_map
    run_dir = work / protocol / name
    best, model, cfg = load_best(run_dir)
    splits, tta = best["config"]["splits"], test_time_views(best["config"])
    val = split_predictions(model, cfg, splits, "val", tta)
    test = split_predictions(model, cfg, splits, "test", tta)
    age_map = best.get("age_map")
    # with a kept map, train.py fits the interval on the cross-fitted mapped ages (calibrate_ages); the map is
    # kept as train.py decided, not judged again here (another batch size's predictions could tip the rule)
    # (a split too small to judge a map has no cross-fitted ages; train.py keeps no map there)
    best["interval"] = fit_interval(judge_age_map(val[0], val[1]).get("crossed", val[0]) if age_map else val[0],
                                    val[1])
    save_checkpoint(run_dir / "best.pt", best)  # travels into the run's next export (--ship, --refresh-exports)
    reported = apply_age_map(test[0], age_map)
    return {"interval": rounded(interval_metrics(reported, test[1], best["interval"], level)),
            "interval_bands": [{"from": b["from"], "n": len(b["errors"])} for b in best["interval"]["bands"]],
            "groups": rounded(group_metrics(reported, test[1], groups_of(test[2]))),
            "isotonic": isotonic_experiment(val, test),
            **({} if val[3] is None else {"interval_methods": interval_experiment(
                (val[0], val[1], val[3]), (test[0], test[1], test[3]), level)}),
            **altered_val_maes(best, model, cfg, views=trained_views(best)),
            "calibrate_command": f"python benchmark.py --calibrate --protocols {protocol} --models {name}"}


def refresh_exports(protocol, name, work, results):
    """Re-export an existing run's best.pt with the current exporter and re-measure its model.jit."""
    run_dir = work / protocol / name
    best = load_checkpoint(run_dir / "best.pt")
    model, cfg, val = reexport(run_dir, best)
    latency, b64 = jit_speed(run_dir / "model.jit", cfg.image_size)
    entry = results["protocols"][protocol][name]
    entry.update({"latency_b1_ms": round(latency, 3), "images_per_s_b64": round(b64, 1),
                  "model_jit_bytes": (run_dir / "model.jit").stat().st_size,
                  "model_onnx_bytes": (run_dir / "model.onnx").stat().st_size,
                  **altered_val_maes(best, model, cfg, val, views=trained_views(best))})
    return entry


def trained_views(best) -> dict:
    """The test-time views a run's best_val_mae was measured with, for its gray, scanned and grained figures:
    a --choose-zooms run's zooms were chosen after training, on the colour faces, and would lend the altered
    figures a gain the colour figure lacks (run_model measures them as trained too)."""
    config = best["config"]
    return test_time_views({**config, "tta_zoom": ""} if best.get("zoom_choice") else config)


def exported_views(entry) -> dict:
    """The test-time views of a recorded run's export: its command's, with the zooms --choose-zooms chose
    after training in place of none (train.py writes the chosen set into the exported config)."""
    config = vars(recorded_args(entry))
    chosen = (entry.get("zoom_choice") or {}).get("chosen")
    if chosen is not None:
        config = {**config, "tta_zoom": "" if chosen == "none" else chosen}
    return test_time_views(config)


def probe_train_step(batch, channels_last, image_size, steps=12, seed_order=False, amp=False):
    """Training-step images/s of a random SimpleCNN on random data, augmentation included; amp: the forward
    pass under bf16 autocast, as train.py --amp runs it (model.AutocastModel)."""
    import torch.nn.functional as F
    from custom_dataset import AugmentConfig, augment_batch, normalize
    from model import AgeModel, AutocastModel, SimpleCNN, build_model
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    torch.manual_seed(0)
    if seed_order:  # the seed's Conv, ReLU, MaxPool instead of model.py's Conv, MaxPool, ReLU
        model = AgeModel(SimpleCNN(image_size=image_size, pool_before_relu=False), "regression", 0, 100)
    else:
        model = build_model("simplecnn", image_size=image_size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    net = AutocastModel(model, "cpu") if amp else model
    images = (torch.rand(batch, 3, image_size, image_size) * 255).to(torch.uint8)
    ages = torch.rand(batch) * 30 + 20
    generator = torch.Generator().manual_seed(0)

    def step(_):
        with torch.enable_grad():  # time_runs times under no_grad
            x = normalize(augment_batch(images.float(), AugmentConfig(), generator), mean, std)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = F.l1_loss(model.ages_from_outputs(net(x)), ages)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    times = time_runs(step, None, runs=steps, warmup=3)
    return round(batch * steps / sum(times), 1)


def jit_variants(image_size):
    """A random SimpleCNN export wrapper as eager, traced, frozen and optimised TorchScript."""
    from model import ExportedAgeModel, build_model
    wrapper = ExportedAgeModel(build_model("simplecnn", image_size=image_size).eval(), [0.5] * 3, [0.25] * 3)
    x1 = torch.rand(1, 3, image_size, image_size) * 255
    with torch.no_grad():
        traced = torch.jit.trace(wrapper.eval(), x1)
    return {"eager": wrapper, "traced": traced, "frozen": torch.jit.freeze(traced),
            "optimize_for_inference": torch.jit.optimize_for_inference(torch.jit.freeze(traced))}


def probe_inference(module, image_size):
    """Batch-1 median ms and batch-64 images/s of one module."""
    x1 = torch.rand(1, 3, image_size, image_size) * 255
    x64 = torch.rand(64, 3, image_size, image_size) * 255
    b1 = time_runs(module, x1, runs=200, warmup=20)
    b64 = time_runs(module, x64, runs=15, warmup=3)
    return {"b1_ms": round(1000 * statistics.median(b1), 3), "b64_images_per_s": round(64 * 15 / sum(b64), 1)}


def probe_augment(image_size):
    """Whole-batch augmentation images/s (batch 64)."""
    from custom_dataset import AugmentConfig, augment_batch
    x64 = torch.rand(64, 3, image_size, image_size) * 255
    generator = torch.Generator().manual_seed(0)
    times = time_runs(lambda b: augment_batch(b, AugmentConfig(), generator), x64, runs=10, warmup=2)
    return round(64 * 10 / sum(times), 1)


# (batch, channels_last, keep freed memory): the training-step probes, glibc's default allocator first
# because keep_freed_memory() cannot be undone inside a process
TRAIN_PROBES = [(64, False, False), (64, True, False), (32, True, False),
                (64, False, True), (64, True, True), (32, True, True), (16, True, True), (8, True, True)]


def speed_probes(image_size=128, threads=2):
    """The measurements behind the speed choices (random weights and data: speed does not depend on them).

    Training step images/s for memory format, batch size and allocator setting (glibc default vs
    functions.keep_freed_memory), whole-batch augmentation images/s, and TorchScript batch-1/batch-64
    speed as traced, frozen, and optimised for inference.
    """
    torch.set_num_threads(threads)
    variants = jit_variants(image_size)
    probes = {"threads": threads, "train_images_per_s": {}, "inference": {}}

    def record(group, key, value):
        probes[group][key] = value
        print("probe", key, value, flush=True)

    record("inference", "optimize_for_inference_glibc_default",
           probe_inference(variants["optimize_for_inference"], image_size))
    for batch, channels_last, keep in TRAIN_PROBES:
        if keep:
            keep_freed_memory()
        key = (f"batch{batch}_{'channels_last' if channels_last else 'contiguous'}_"
               f"{'keep_freed' if keep else 'glibc_default'}")
        record("train_images_per_s", key, probe_train_step(batch, channels_last, image_size, max(12, 512 // batch)))
    # the layer order, measured back to back (repeated runs of one probe vary by ~PROBE_NOISE)
    for key, seed_order in (("batch64_channels_last_keep_freed_relu_then_pool", True),
                            ("batch64_channels_last_keep_freed_pool_then_relu", False)):
        record("train_images_per_s", key, probe_train_step(64, True, image_size, 16, seed_order))
    from model import bf16_autocast_pays
    if bf16_autocast_pays("cpu"):  # float32 and bf16 autocast back to back (train.py --amp)
        for key, amp in (("batch64_channels_last_keep_freed_float32", False),
                         ("batch64_channels_last_keep_freed_bf16_autocast", True)):
            record("train_images_per_s", key, probe_train_step(64, True, image_size, 16, amp=amp))
    probes["augment_images_per_s"] = probe_augment(image_size)
    for name, module in variants.items():  # all with the allocator as train.py and inference.py set it
        record("inference", name, probe_inference(module, image_size))
    probes["onnx_b1_ms"] = {}
    for size in ONNX_PROBE_SIZES:
        probes["onnx_b1_ms"][str(size)] = probe_onnx_latency(size)
        print("probe onnx_b1_ms", size, probes["onnx_b1_ms"][str(size)], flush=True)
    return probes


PROBE_NOISE = 0.10  # repeated runs of one speed probe vary by about this share
ONNX_PROBE_SIZES = (96, 128, 144)  # the input sizes of the benchmark's SimpleCNN models


def probe_onnx_latency(image_size, threads=1):
    """Median batch-1 ms of a random SimpleCNN (distribution head, ages 20-50 as Protocol S) exported to ONNX and
    run by ONNX Runtime on 1 thread, timed as export_mobile.py times it: a dense CNN's speed does not depend on
    its weights, so every input size is measured the same day, without a trained run of it."""
    import tempfile
    from checkpoints import export_onnx
    from export_mobile import benchmark_folder
    from model import ExportedAgeModel, build_model
    torch.manual_seed(0)
    wrapper = ExportedAgeModel(build_model("simplecnn", "distribution", 20, 50, image_size), [0.5] * 3, [0.25] * 3)
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(wrapper.eval(), torch.rand(2, 3, image_size, image_size) * 255, Path(tmp) / "model.onnx", {})
        row = benchmark_folder(tmp, image_size, threads=threads, only={"model.onnx"})["rows"][0]
    return round(row["latency_ms_median"], 3)


def median_baseline(splits):
    """Test MAE of always predicting the training split's median age: the floor any model must beat."""
    train_ages = np.array([r["age"] for r in read_split(Path(splits) / "train.csv")], dtype=float)
    test_ages = np.array([r["age"] for r in read_split(Path(splits) / "test.csv")], dtype=float)
    return round(float(np.abs(test_ages - np.median(train_ages)).mean()), 3)


def load_best(run_dir):
    """(checkpoint, its model in channels_last, its preprocessing settings) of a run's best epoch."""
    best = load_checkpoint(run_dir / "best.pt")
    model, cfg = model_from_checkpoint(best)
    return best, model.to(memory_format=torch.channels_last), cfg


def altered_val_maes(best, model, cfg, val=None, views=None) -> dict:
    """Validation MAE of a run's best epoch (load_best) on gray, scanned-looking and grained copies of
    the validation faces (custom_dataset.altered_copies): how the model copes with old and scanned photos,
    judged without touching any test set. val: the validation set, if the caller has it loaded (not used
    for a model that denoises or sharpens: its faces are read again unfiltered, see below).

    A photo is gray or scanned before the pipeline sees it, so for a model that denoises or sharpens its
    input the faces are altered at the input size first and filtered after (custom_dataset.filter_input):
    its denoiser meets the scan's grain as it would in a real photo. views: the test-time views (default: the
    best epoch's config's)."""
    from custom_dataset import ALTERATIONS, CustomDataset, altered_copies, filter_input, load_split_dataset
    from functions import evaluate
    splits = Path(best["config"]["splits"])
    filters = cfg.denoise or cfg.deblur
    if filters:
        unfiltered = dataclasses.replace(cfg, denoise=False, deblur=False)
        val = load_split_dataset(splits / "val.csv", unfiltered, splits.parent / "cache", progress=False)
    elif val is None:
        val = load_split_dataset(splits / "val.csv", cfg, splits.parent / "cache", progress=False)
    records = [{"path": p, "age": float(a)} for p, a in zip(val.paths, val.ages)]
    figures = {}
    for kind in ALTERATIONS:
        images = altered_copies(val.images, kind)
        if filters:
            images = np.stack([filter_input(image, cfg) for image in images])
        loader = make_loader(CustomDataset(records, cfg, images=images), 256, shuffle=False)
        figures[f"val_mae_{kind}"] = round(evaluate(model, loader, torch.tensor(cfg.mean), torch.tensor(cfg.std),
                                                    **(views or test_time_views(best["config"])))["mae"], 3)
    return figures


def run_ablation(name, splits, work, quick=False):
    """Train ABLATION_BASE with one change; validation MAE of the best epoch, with and without flip-TTA."""
    from custom_dataset import load_split_dataset
    from functions import evaluate
    change, extra = ABLATIONS[name] if name in ABLATIONS else LONG_ABLATIONS[name]
    base = ABLATION_BASE if name in ABLATIONS else MODEL_BASE
    run_dir = work / "S" / "ablations" / name
    argv = ["--splits", str(splits), "--out-dir", str(run_dir), *with_teachers(with_overrides(base, extra), work, "S"),
            "--no-test", "--no-export", "--no-tensorboard", "--no-progress"]
    if quick:
        argv = with_overrides(argv, ["--epochs", "2", "--subset-fraction", "0.1"])
    args = train.get_args_parser().parse_args(argv)
    args.overwrite = True  # an ablation asked for again is trained again
    train.main(args)
    best, model, cfg = load_best(run_dir)
    val = load_split_dataset(Path(splits) / "val.csv", cfg, Path(splits).parent / "cache", progress=False)
    loader = make_loader(val, 256, shuffle=False)
    # the checkpoint holds the validation MAE as trained (with or without flip-TTA); only the other
    # flip setting is evaluated here, with the run's zooms kept, so the column changes the flip alone
    as_trained = best["metrics"]["val"]["mae"]
    per_decade = {k: round(v["mae"], 2) for k, v in best["metrics"]["val"]["mae_per_bin"].items()}
    other = evaluate(model, loader, torch.tensor(cfg.mean), torch.tensor(cfg.std), tta_flip=not args.tta_flip,
                     tta_zoom=test_time_views(best["config"])["tta_zoom"])["mae"]
    flip, plain = (as_trained, other) if args.tta_flip else (other, as_trained)
    history = json.loads((run_dir / "history.json").read_text())
    return {"change": change, "val_mae": round(as_trained, 3),
            "val_mae_flip_tta": round(flip, 3), "val_mae_no_tta": round(plain, 3),
            "best_epoch": best["epoch"], "epochs": args.epochs, "val_mae_per_decade": per_decade,
            "val_worst_decade": list(worst_of_table(best["metrics"]["val"]["mae_per_bin"])),
            "train_images_per_s": round(float(np.median([h["train_images_per_s"] for h in history])), 1),
            "train_minutes": round(sum(h["epoch_seconds"] for h in history) / 60, 2),
            "split_faces_digest": train.split_faces_digest(splits),  # a lever is judged on its reference's split
            "command": "python train.py " + shlex.join(argv)}


def same_split(a, b, results) -> bool:
    """Whether two Protocol S records' faces digests (None: a record from before records kept one) name one
    split. Such a record was trained on the first split: by its recorded digest where there is one, else as
    long as no split has been retired (retire_earlier_split), one split is all there has been."""
    earlier = earlier_splits(results.get("protocols", {}), "S")
    first = results.get("data", {}).get((earlier or ["S"])[0], {}).get("split_faces_digest")
    a, b = a or first, b or first
    return a == b if a is not None and b is not None else (a == b or not earlier)


def on_the_base_split(results) -> dict:
    """The 10-epoch ablations trained on the split of their base."""
    runs = results.get("ablations", {})
    base = runs.get("base", {}).get("split_faces_digest")
    return {n: r for n, r in runs.items() if same_split(r.get("split_faces_digest"), base, results)}


def tuned_on_split(results, digest) -> dict:
    """simplecnn_tuned's record on the split of this faces digest (same_split), the reference of the long
    ablations; {} where that split has none."""
    return next((runs["simplecnn_tuned"] for key, runs in results.get("protocols", {}).items()
                 if protocol_of(key) == "S" and "simplecnn_tuned" in runs
                 and same_split(runs["simplecnn_tuned"].get("split_faces_digest"), digest, results)), {})


def ablation_table(results) -> str:
    runs = on_the_base_split(results)
    if not runs:
        return ""
    base = runs.get("base", {}).get("val_mae")
    lines = ["| experiment (one change to the base) | val MAE | vs base | without flip-TTA | best epoch | train img/s |",
             "|---|---|---|---|---|---|"]
    for name, r in runs.items():
        delta = f"{r['val_mae'] - base:+.3f}" if base is not None and name != "base" else ""
        lines.append(f"| {name}: {r['change']} | {r['val_mae']:.3f} | {delta} | {r['val_mae_no_tta']:.3f} | "
                     f"{r['best_epoch']}/{r['epochs']} | {r['train_images_per_s']:.0f} |")
    return "\n".join(lines)


def unfinished(run_dir) -> str | None:
    """Why a run folder holds no finished run to measure (None where it does): a run still training, or one
    killed, has a best.pt of some epoch whose figures must not go into the finished run's record."""
    if not (Path(run_dir) / "metrics.json").is_file():
        return f"{run_dir} holds no finished run (no metrics.json: still training, killed, or never trained)"
    return None


def check_crops(args, work, protocol, name, results, out_path):
    entry = results.get("protocols", {}).get(protocol, {}).get(name, {})
    if why := unfinished(work / protocol / name) or other_weights(entry, work / protocol / name):
        print(f"--crop-check skipped: {why}")
        return
    fresh = {"model": f"{protocol}/{name}", **crop_consistency(work / protocol / name, work / protocol / "splits",
                                                                args.crop_check)}
    # other models' checks are kept; a repeated (model, images) check is replaced
    results["crop_consistency"] = [r for r in results.get("crop_consistency", [])
                                   if (r["model"], r.get("images")) != (fresh["model"], fresh["images"])] + [fresh]
    print("crop consistency:", json.dumps(fresh))
    save_results(out_path, results)


def check_cross(args, work, results, out_path):
    """--cross: each listed model of each listed protocol on FG-NET, with its own crop, and once
    with the crop inference.py used before (Haar box, square crop) for comparison."""
    import faces
    for protocol in [p.strip() for p in args.protocols.split(",") if p.strip()]:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            run_dir = work / protocol / name
            entry = results.get("protocols", {}).get(protocol, {}).get(name, {})
            if why := unfinished(run_dir) or other_weights(entry, run_dir):
                print(f"--cross skipped {protocol}/{name}: {why}")
                continue
            variants = {f"{protocol}/{name}": {}}
            if args.cross_compare:
                variants[f"{protocol}/{name} (Haar box crop)"] = {"detector": "haar", "crop": faces.BOX_CROP}
            found_faces = [] if args.cross_filters else None  # the model's own crop's faces, for cross_filters
            for key, override in variants.items():
                figures = cross_dataset(run_dir / "model.onnx", args.cross, **override,
                                        faces_out=found_faces if key == f"{protocol}/{name}" else None)
                results.setdefault("cross", {}).setdefault("FGNET", {})[key] = figures
                print(f"FG-NET, {key}: MAE {figures['mae']:.2f}, CS@5 {figures['cs5']:.1%}, a face box in "
                      f"{figures['faces_found']:.1%} of {figures['photos']} photos", flush=True)
                save_results(out_path, results)
            if args.cross_filters:
                figures = cross_filters(run_dir / "model.onnx", found_faces)
                results.setdefault("cross_filters", {}).setdefault("FGNET", {})[f"{protocol}/{name}"] = figures
                print(f"FG-NET, {protocol}/{name}, faces filtered first: " + ", ".join(
                    f"{k} {v['mae']:.2f}" for k, v in figures.items()), flush=True)
                save_results(out_path, results)


SHIPPED = Path("models") / SHIPPED_NAME


def ship(args, work, results):
    """--ship PROTOCOL/NAME: copy that run's exports to models/ and write the model card from
    bench/results.json (no figure typed by hand)."""
    import faces
    protocol, _, name = args.ship.partition("/")
    if protocol != "F":
        raise DataError(f"only Protocol F models are shipped (the shipped model serves every age); got {args.ship}")
    run_dir = work / protocol / name
    entry = results.get("protocols", {}).get(protocol, {}).get(name)
    if entry is None:
        raise DataError(f"--ship {args.ship}: {args.out} records no run F/{name or 'NAME'}; train it with "
                        f"benchmark.py --protocols F --models {name or 'NAME'} (or pass --ship F/NAME of a recorded run)")
    if why := other_weights(entry, run_dir):
        raise DataError(f"--ship {args.ship}: {why}; run benchmark.py --protocols {protocol} --models {name} again")
    cross = results.get("cross", {}).get("FGNET", {}).get(f"{protocol}/{name}")
    if cross is None:
        raise DataError(f"no FG-NET figure for {args.ship} in {args.out}; run benchmark.py --cross first")
    data = results["data"][protocol]
    reexport_for_shipping(run_dir, f"UTKFace aligned & cropped faces (Zhang, Song, Qi, CVPR 2017), Protocol {protocol}: "
                                   f"{data['splits']['train']:,} training images, ages {data['age']['min']}-"
                                   f"{data['age']['max']}; non-commercial research use only")
    metadata = onnx_metadata(run_dir / "model.onnx")
    if metadata is None:
        raise DataError(f"{run_dir / 'model.onnx'} has no preprocessing metadata; export it with train.py")
    blobs = {SHIPPED.with_suffix(suffix): (run_dir / f"model{suffix}").read_bytes() for suffix in (".onnx", ".jit")}
    card = model_card(protocol, name, entry, cross, data, metadata, faces.describe_crop(metadata["crop"]),
                      retrained=teachers_retrained(results["protocols"][protocol], entry))
    card_path = SHIPPED.parent / "README.md"
    blobs[card_path] = card.encode()
    # the three replaced together: a kill while one was written left a new model beside an old one or its old card
    atomic_write_together({path: lambda f, blob=blob: f.write(blob) for path, blob in blobs.items()})
    probes = shipped_probes(results)
    for key in probes:  # measured on the exports just replaced
        del results["zoom_probe"][key]
    if results.pop("shipped_zooms", None) or probes:  # they were chosen for the exports just replaced
        save_results(args.out, results)
    print(f"shipped {run_dir} -> {SHIPPED}.onnx, {SHIPPED}.jit, {card_path}")


def shipped_probes(results) -> list:
    """The --zoom-probe records of the shipped export, however its path was written (./models/..., absolute)."""
    return [k for k in results.get("zoom_probe", {})
            if Path(k.split(":", 1)[1]).resolve() == SHIPPED.with_suffix(".onnx").resolve()]


def model_card(protocol, name, entry, cross, data, metadata, crop_text, zooms=None, retrained=False) -> str:
    """models/README.md for the run PROTOCOL/NAME, every figure from its results.json entry, its FG-NET
    figures (cross), the protocol's data record and the export's metadata; zooms: the shipped_zooms record
    (benchmark.py --ship-zooms), whose figures then replace the run's, which are given beside them;
    retrained: teachers_retrained of the entry."""
    plain_test, plain_fgnet = entry["test_mae"], cross["mae"]
    rules = "" if not zooms else rules_note(cross, zooms["fgnet"])
    if zooms:
        entry, cross = zoomed_entry(entry, zooms), zooms["fgnet"]
    decades = ", ".join(f"{k}: {v}" for k, v in entry["test_mae_per_decade"].items())
    fg_decades = ", ".join(f"{k}: {v}" for k, v in cross["mae_per_decade"].items())
    fg_signed = "" if "mean_error_per_decade" not in cross else (
        "\n  Signed error per decade (predicted - true): "
        + ", ".join(f"{k}: {v:+}" for k, v in cross["mean_error_per_decade"].items()) + ".")
    teacher_mae = entry.get("teacher_val_mae")
    teachers_note = "" if not teacher_names(entry) else (
        "\n  Distilled: its teachers"
        + (f" (validation MAE of their mean distribution {teacher_mae:.3f})" if teacher_mae is not None else "") + " "
        f"were trained first by\n  `python benchmark.py --protocols {protocol} --models {','.join(teacher_names(entry))} "
        "--no-speed`." + (f"\n  Note: {RETRAINED_NOTE}." if retrained else ""))
    precision = ("" if not recorded_args(entry).amp else
                 ", in float32: `--amp` was given, but that CPU has no bf16" if entry.get("bf16") is False else
                 ", in bf16 autocast (`--amp`), which this CPU computes natively (AVX-512 BF16)")
    model_name = {"simplecnn": "SimpleCNN"}.get(metadata["model_name"], metadata["model_name"])
    head = "label-distribution head" if metadata["head"] == "distribution" else f"{metadata['head']} head"
    return f"""# Shipped model: `{SHIPPED.name}.onnx` (and `.jit`)

Written by `python benchmark.py --ship {protocol}/{name}` from `bench/results.json`; do not edit by hand.

- **What**: {model_name} ({entry['params']:,} parameters, {head} over ages
  {metadata['min_age']}-{metadata['max_age']}), input {metadata['preprocess']['image_size']} px, {views_text(metadata)}.
  `inference.py` uses it when no `--model` is given. `model.onnx` runs in ONNX Runtime (no Python code
  inside); the `.jit` (TorchScript) is a program: load it only from this repository.
- **Age interval**: {interval_line(entry)}
- **Face crop** (inside the metadata, applied by `inference.py`): {crop_text}
  — UTKFace's own dlib face chip, cut from any photo by `faces.py`.
- **Data**: UTKFace, "aligned & cropped" faces, Protocol F: all ages, byte-identical duplicates
  merged, conflicting-age groups dropped, stratified 80:10:10 with seed 42
  ({data['splits']['train']:,} / {data['splits']['val']:,} / {data['splits']['test']:,} images).
- **Licence**: UTKFace is available for non-commercial research purposes only (the copyright of
  each image stays with its owner), so this model is for non-commercial research use; the 68-point
  landmark model it needs at inference was trained on iBUG 300-W, whose terms also exclude
  commercial use. Cite Zhang, Song, Qi, "Age Progression/Regression by Conditional Adversarial
  Autoencoder", CVPR 2017.
- **Test split** (read once, best validation epoch {entry['best_epoch']} of {entry['epochs']}): MAE
  {entry['test_mae']:.2f} years, CS@5 {entry['test_cs5']:.1%}, n = {entry['test_images']:,}. Per decade: {decades}.
  Predicting the training median instead: MAE {data['test_mae_of_train_median']:.2f}.{zooms_note(zooms, plain_test, plain_fgnet, rules)}
- **FG-NET** (another data set: 1,002 scanned photos of 82 people, ages 0-69, through `inference.py`'s
  own pipeline, largest face per photo): MAE {cross['mae']:.2f}, CS@5 {cross['cs5']:.1%}, at least one face box in
  {cross['faces_found']:.1%} of the photos (n = {cross['n']}). Per decade: {fg_decades}.{fg_signed}
- **Trained by** (on a 2-core CPU{precision}; {entry['train_minutes']:.1f} min of epochs as recorded, see the
  RESULTS.md's "Models on UTKFace" for what else ran on the machine):

      python eda.py --data-dir ../shared/data/UTKFace --out-dir bench/work/F --seed 42
      {entry['command']}

  (both run by `python benchmark.py --protocols F --models {name} --no-speed`).{teachers_note}
"""


def zoomed_entry(entry, zooms) -> dict:
    """A run's results entry with the test figures and interval its export has with the zooms --ship-zooms chose."""
    return {**entry, "interval": zooms["interval"], "test_mae": zooms["test"]["mae"], "test_cs5": zooms["test"]["cs5"],
            "test_mae_per_decade": zooms["test"]["mae_per_decade"]}


def shipped_figures(results, shipped):
    """(results entry, FG-NET figures) of the shipped run as inference.py runs the shipped file: with the
    test-time zooms --ship-zooms gave it, where it did; None for what is not recorded."""
    protocol, name = shipped.split("/")
    entry = results.get("protocols", {}).get(protocol, {}).get(name)
    fgnet = results.get("cross", {}).get("FGNET", {}).get(shipped)
    zoomed = results.get("shipped_zooms")
    if entry and zoomed and zoomed["run"] == shipped:
        return zoomed_entry(entry, zoomed), zoomed["fgnet"]
    return entry, fgnet


def rules_note(older, newer) -> str:
    """Words for an FG-NET record measured under other rules of inference.py than a newer one ("" where the same):
    the rules each face went through (min_face, dark_floor), recorded since 2026-12-04; a record without them
    was made before either rule existed."""
    rules = lambda r: (r.get("min_face", 0), r.get("dark_floor", 0))
    if rules(older) == rules(newer):
        return ""
    size, floor = rules(older)
    return (", measured under the rules inference.py had then: " + (f"a minimum face of {size} px" if size else
            "no minimum face size") + " and " + (f"a dark floor of {floor:g}" if floor else "no dark floor"))


def zooms_note(zooms, plain_test, plain_fgnet, rules="") -> str:
    """The model card's words for test-time zooms chosen after training (--ship-zooms); "" without them. rules:
    rules_note of the FG-NET figure without them."""
    if not zooms:
        return ""
    tried = ", ".join(f"{z} {mae:.3f}" for z, mae in zooms["val_mae"].items())
    return (f"\n- **Test-time zooms** (`{zooms['command']}`, after training): the set with the lowest validation MAE "
            f"among the face alone and its centred crops ({tried}), `{zooms['zooms']}`; the interval was refitted on "
            f"validation with them. The test split and FG-NET were then read once more, with the zooms: the figures "
            f"above and below. Without them: test MAE {plain_test:.2f}, FG-NET MAE {plain_fgnet:.2f}{rules}.")


def interval_line(entry) -> str:
    if "interval" not in entry:
        return "none measured"
    iv = entry["interval"]
    return (f"split-conformal, calibrated on the validation split and carried in the metadata; at "
            f"{iv['level']:.0%} it covers {iv['coverage']:.1%} of the test ages, {iv['mean_width']:.1f} years wide on "
            "average (`inference.py --interval-level` picks another level)")


def reexport(run_dir, best):
    """The run's model.onnx/model.jit written again by the current exporter from `best` (its loaded best.pt,
    perhaps amended; the weights as they were). Returns (model, preprocessing settings, validation set)."""
    from custom_dataset import load_split_dataset
    model, cfg = model_from_checkpoint(best)
    splits = Path(best["config"]["splits"])
    val = load_split_dataset(splits / "val.csv", cfg, splits.parent / "cache", progress=False)
    export_best(model, cfg, best, run_dir, val, json.loads((run_dir / "metrics.json").read_text()))
    return model, cfg, val


def reexport_for_shipping(run_dir, description):
    """model.onnx/model.jit of the run again, with the data description (and the interval calibration
    of --calibrate, if run) in their metadata."""
    best = load_checkpoint(run_dir / "best.pt")
    if "interval" not in best:
        raise DataError(f"{run_dir / 'best.pt'} has no interval calibration; run benchmark.py --calibrate first")
    best["config"]["data_description"] = description
    reexport(run_dir, best)


# results.json as this process last read or wrote it, per file: save_results writes only what changed since
_SAVED = {}
_UNSET = object()


def load_results(path):
    path = Path(path)
    results = json.loads(path.read_text()) if path.exists() else {"protocols": {}}
    _SAVED[str(path.resolve())] = copy.deepcopy(results)
    return results


# how deep results.json's containers go before a record (protocols.P.NAME, cross.DS.KEY, data.P, ...) starts:
# a changed record is written whole, so a retrained run keeps no key of the run it replaced
RECORD_DEPTH = {"protocols": 2, "cross": 2, "cross_filters": 2, "reruns": 1, "zoom_probe": 1, "data": 1,
                "data_check": 1, "ablations": 1, "long_ablations": 1}


def merged_changes(base, mine, theirs, depth=0, section=None):
    """theirs (the file now) with this process's changes since base applied: a benchmark that ran for hours does
    not write back the records another process saved meanwhile. Containers merge key by key in mine's order
    (keys only the file has follow); records, lists and values are replaced whole where this process changed
    them; crop_consistency merges by (model, images)."""
    if section == "crop_consistency" and depth == 1:
        key = lambda rows: {json.dumps([r.get("model"), r.get("images")]): r for r in rows if isinstance(r, dict)}
        merged = merged_changes(key(base or []), key(mine), key(theirs or []), 2, "crop_rows")
        return list(merged.values())
    limit = {None: 0, "crop_rows": 2}.get(section, RECORD_DEPTH.get(section, 0))
    container = all(isinstance(v, dict) for v in (mine, theirs)) and depth <= limit
    if not container:
        if mine == base:
            return theirs
        if depth > limit and all(isinstance(v, dict) for v in (base, mine, theirs)) and theirs != base:
            return record_conflict(base, mine, theirs)
        return mine
    base = base if isinstance(base, dict) else {}
    out = {}
    for key in list(mine) + [k for k in theirs if k not in mine]:
        old, new = base.get(key, _UNSET), mine.get(key, _UNSET)
        there = theirs.get(key, _UNSET)
        if new == old:  # untouched here: the file's version (or its deletion) stands
            if there is not _UNSET:
                out[key] = there
        elif new is not _UNSET:  # changed or added here
            out[key] = new if there is _UNSET else merged_changes(old if old is not _UNSET else None, new, there,
                                                                  depth + 1, section if depth else key)
        # deleted here: left out
    return out


def record_conflict(base: dict, mine: dict, theirs: dict) -> dict:
    """One record changed here and, since this process read it, in the file too. A retraining (another test MAE or
    command) replaces the record whole, here or there; figures added to an unchanged run (--calibrate,
    --refresh-exports) join the file's record; such figures of a run retrained meanwhile are dropped, said."""
    def retrained(record):
        return any(record.get(k) != base.get(k) for k in ("test_mae", "command"))
    if retrained(mine):
        return mine
    if retrained(theirs):
        print(f"note: a record this process updated was retrained meanwhile ({theirs.get('command', '?')[:80]}); "
              "its update is dropped: run it again for the new weights")
        return theirs
    merged = {k: v for k, v in theirs.items() if k in mine or k not in base}  # keys deleted here go
    merged.update({k: v for k, v in mine.items() if base.get(k, _UNSET) != v})
    return merged


def save_results(path, results):
    """Write this process's changes into results.json, re-read under a lock (atomic, like every output)."""
    path = Path(path)
    key = str(path.resolve())
    with results_lock(path):
        theirs = json.loads(path.read_text()) if path.exists() else {"protocols": {}}
        merged = merged_changes(_SAVED.get(key, {}), results, theirs)
        text = json.dumps(merged, indent=2) + "\n"
        atomic_write(path, lambda f: f.write(text.encode()))
    _SAVED[key] = copy.deepcopy(results)


@contextlib.contextmanager
def results_lock(path: Path):
    """flock on PATH.lock beside the results (none where the system has no flock: one writer then)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # a file system without locks (NFS without lockd)
            pass
        yield


def forget_figures_of(results, key: str):
    """Drop the figures measured on a run's earlier weights (FG-NET, its filters and crop checks), keyed
    "P/NAME": a retrained run must not sit beside figures its new weights never made. The shipped model's
    own figures stay: they describe the files in models/."""
    for section in ("cross", "cross_filters"):
        for rows in results.get(section, {}).values():
            for row in [k for k in rows if k == key or k.startswith(key + " (")]:
                del rows[row]
    if "crop_consistency" in results:
        results["crop_consistency"] = [r for r in results["crop_consistency"] if r.get("model") != key]


def table(results) -> str:
    lines = ["| protocol | model | test MAE | CS@5 | params | train img/s | train min | epochs | jit b1 ms | jit b64 img/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for protocol, models in results.get("protocols", {}).items():
        for name, r in models.items():
            lines.append(f"| {protocol} | {name} | {r['test_mae']:.2f} | {r['test_cs5']:.1%} | {r['params']:,} | "
                         f"{r['train_images_per_s']:.0f} | {r['train_minutes']:.1f} | {r['epochs']} | "
                         f"{r['latency_b1_ms']:.2f} | {r['images_per_s_b64']:.0f} |")
    return "\n".join(lines)


def cross_table(results) -> str:
    """FG-NET through inference.py's pipeline, and the crop-consistency checks, as Markdown tables."""
    import faces
    rows = results.get("cross", {}).get("FGNET", {})
    # one column order for every row, by name: a row without a decade shows "-" there instead of shifting the rest
    order = sorted({d for r in rows.values() for d in r["mae_per_decade"]}, key=lambda d: int(d.split("-")[0]))
    lines = [f"| model | detector, crop | FG-NET MAE | CS@5 | photos with a face box | MAE per decade "
             f"({', '.join(order)}) | signed error per decade (+: too old) |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        crop = faces.describe_crop(faces.check_crop(r["crop"]))
        decades = ", ".join(f"{r['mae_per_decade'][d]:.1f}" if d in r["mae_per_decade"] else "-" for d in order)
        signed_of = r.get("mean_error_per_decade", {})
        signed = (", ".join(f"{signed_of[d]:+.1f}" if d in signed_of else "-" for d in order) if signed_of
                  else "not measured")
        lines.append(f"| {name} | {r['detector']}, {crop} | {r['mae']:.2f} | {r['cs5']:.1%} | "
                     f"{r['faces_found']:.1%} of {r['photos']} | {decades} | {signed} |")
    checks = [c for c in results.get("crop_consistency", []) if "mae_through_pipeline" in c]
    if checks:
        lines += ["", "| model | UTKFace test faces | MAE as files | found in scenes | gap | scenes at the original "
                  "brightness | gap |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {c['model']} | {c['found']} of {c['images']} found in both | {c['mae_direct']:.2f} | "
                  f"{c['mae_through_pipeline']:.2f} | {c['gap']:+.2f} | {c['mae_through_pipeline_same_light']:.2f} | "
                  f"{c['gap_same_light']:+.2f} |" for c in checks if "gap_same_light" in c]
    return "\n".join(lines) if rows or checks else ""


# ---------------------------------------------------------------------------------------------------
# RESULTS.md and the README's results block: template text, every figure read from bench/ (never typed).

README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"
TARGETS = {"cache_speedup": 20, "train_images_per_s": 320, "jit_b1_ms": 1.0, "jit_b64_images_per_s": 1000,
           "onnx_b1_ms": 1.5, "end_to_end_ms": 60, "fgnet_mae": 6.0, "test_mae": {"S": 3.9, "F": 4.6},
           "final_minutes": 60}  # the project's targets (#15: a final's training on this CPU within the hour)
MODEL_NOTES = {
    "simplecnn_seed": "the seed's recipe: regression head, L1, constant learning rate, flips only, no flip-TTA, "
                      "the seed's denoise and deblur",
    "simplecnn": "the seed's network and head with the default augmentation, warm-up + cosine and flip-TTA",
    "simplecnn_dldl": "label-distribution head, L1, default augmentation (flip, rotation, shift, scale, "
                      "brightness/contrast), warm-up + cosine, flip-TTA, the seed's denoise and deblur",
    "simplecnn_bn_dldl": "`simplecnn_dldl` with BatchNorm after each conv and dropout 0.3",
    "simplecnn_tuned": "the experiments' base plus the levers that won on validation (MSE on the expected age, "
                       "denoise and deblur off): `train.py`'s defaults, at 40 epochs",
    "simplecnn_tuned_96px": "`simplecnn_tuned` at 96 px input",
    "simplecnn_tuned_60ep": "`simplecnn_tuned` trained 60 epochs (the lever `tuned_60_epochs` won on validation)",
    "simplecnn_photo": "`simplecnn_tuned` with 20 % of the training images turned gray (`--augment photo`: "
                       "scanned and old photos are often gray)",
    "resnet18_dldl": "ResNet-18 from scratch at 112 px (meant for a GPU)",
    "simplecnn_scan_96px": "`simplecnn_tuned_96px` with 30 % of the training images lowered in resolution and "
                           "grained (`--augment scan`: old scans look so)",
    "simplecnn_photo_scan": "`simplecnn_photo` plus the scan degradation: 20 % of the training images gray, 30 % "
                            "lowered in resolution and grained (`--augment photo_scan`)",
    "simplecnn_photo_scan_60ep": "`simplecnn_photo_scan` trained 60 epochs",
    "simplecnn_photo_scan_100ep": "`simplecnn_photo_scan` trained 100 epochs under bf16 autocast (`--amp`; "
                                  "the long ablation `tuned_60_epochs_amp` checks that it learns as float32 does)",
    "simplecnn_distilled": "`simplecnn_tuned` distilled from the mean age distribution of the protocol's "
                           "finals (`TEACHERS`; S: tuned_60ep, tuned, tuned_96px; F: tuned, photo, tuned_96px), "
                           "half of every target theirs (`--teacher`, `--teacher-weight 0.5`)",
    "simplecnn_distilled_gen2": "`simplecnn_distilled` again, from a stronger ensemble: the first student, "
                                "`simplecnn_tuned_60ep` and `simplecnn_tuned` (a second generation)",
    "simplecnn_photo_scan_distilled_100ep": "`simplecnn_photo_scan_100ep` distilled from that run: the same "
                                            "recipe and length, one teacher",
    "simplecnn_photo_scan_denoise_60ep": "`simplecnn_photo_scan_60ep` in bf16 (`--amp`) with the seed's "
                                         "denoiser on (`--denoise`, non-local means at the input size; no sharpening)",
    "simplecnn_photo_scan_distilled_144px_70ep": "`simplecnn_photo_scan_100ep` at 144 px, 70 epochs, distilled "
                                                 "from the mean of F's two 100-epoch runs (it and its student)",
    "simplecnn_photo_scan_grain_gen2_144px_70ep": "`simplecnn_photo_scan_distilled_gen2_144px_70ep` with film "
                                                  "grain in 30 % of its training images (`--augment photo_scan_grain`)",
    "simplecnn_photo_scan_distilled_gen2_144px_70ep": "`simplecnn_photo_scan_distilled_144px_70ep` distilled from "
                                                      "the mean of three: its two teachers and that student",
    "simplecnn_photo_scan_distilled_gen2_144px_70ep_cz": "`simplecnn_photo_scan_distilled_gen2_144px_70ep` whose "
                                                         "test-time zooms are chosen on validation after training "
                                                         "(`--choose-zooms`), taught by its three teachers as trained "
                                                         "again on 2026-12-04 (gen2 learnt from their earlier runs)",
    "simplecnn_photo_scan_distilled_gen3_144px_80ep": "`simplecnn_photo_scan_distilled_gen2_144px_70ep` at 80 "
                                                      "epochs, distilled from the mean of five: its three teachers, "
                                                      "it and the film-grain run",
    "simplecnn_photo_scan_144px_80ep_zoom": "`simplecnn_photo_scan` at 144 px, 80 epochs in bf16 (`--amp`), no "
                                            "teacher, every prediction the mean over the face and its centred 95 % "
                                            "and 90 % crops, each also mirrored (`--tta-zoom 0.95,0.9`)",
    "simplecnn_tuned_60ep_amp": "`simplecnn_tuned_60ep` trained in bf16 autocast (`--amp`)",
    "simplecnn_distilled_144px_80ep": "`simplecnn_tuned` at 144 px, 80 epochs in bf16 autocast (`--amp`), distilled "
                                       "from one teacher, `simplecnn_tuned_60ep_amp`",
    "simplecnn_distilled_gen2_144px_100ep": "`simplecnn_distilled_144px_80ep` at 100 epochs, distilled from "
                                            "the mean of two: that student and its teacher",
    "simplecnn_tuned_60ep_amp_seed2": "`simplecnn_tuned_60ep_amp` with seed 2 instead of 42 (a second teacher)",
    "simplecnn_distilled_144px_80ep_2t": "`simplecnn_distilled_144px_80ep` distilled from the mean of two teachers: "
                                         "its own and that recipe with another seed (`simplecnn_tuned_60ep_amp_seed2`)",
    "simplecnn_distilled_144px_80ep_fm": "`simplecnn_distilled_144px_80ep` taught by function matching: its teacher "
                                         "predicts every training batch as the student sees it (`--teacher-online`), "
                                         "and the batches are C-Mixup blends (`--mixup 0.2`); trained on the same day and "
                                         "machine as the re-run of `simplecnn_distilled_144px_80ep` (Experiments), "
                                         "the fair comparison",
    "simplecnn_distilled_144px_80ep_self": "`simplecnn_distilled_144px_80ep` distilled from that run itself "
                                           "instead of its teacher",
    "simplecnn_distilled_144px_80ep_sigma3": "`simplecnn_distilled_144px_80ep` with the label's Gaussian 3 years "
                                             "wide instead of 2 (`--label-sigma 3`, the lever `amp60_sigma3`)",
    "simplecnn_distilled_144px_80ep_tw07": "`simplecnn_distilled_144px_80ep` with 70 % of every target its "
                                           "teacher's (`--teacher-weight 0.7`) instead of half",
    "simplecnn_distilled_144px_80ep_zoom": "`simplecnn_distilled_144px_80ep` whose every prediction (validation, "
                                           "test, exports) is the mean over the face and its centred 95 % and 90 % "
                                           "crops, each also mirrored (`--tta-zoom 0.95,0.9`): six views instead of two",
    "simplecnn_distilled_144px_80ep_cz": "`simplecnn_distilled_144px_80ep` whose test-time zooms are chosen on "
                                         "validation after training (`--choose-zooms`: none, 97.5 %, 95 %, 90 % or "
                                         "95 % and 90 %), the test split then read once with them",
    "simplecnn_distilled_40ep_cz": "`simplecnn_distilled_144px_80ep_cz` at 128 px and 40 epochs, to train within "
                                   "the hour on a CPU without bf16 (`--amp` is then ignored)",
    "simplecnn_distilled_40ep_cz_gpu": "`simplecnn_distilled_40ep_cz` taught by the mean of two tables: two ResNets "
                                       "trained from scratch on a GPU (`bench/gpu_teachers.py`; GPU-trained teachers, "
                                       "as issue #15 allows) and its own CPU teacher's",
    "simplecnn_distilled_gen2_144px": "`simplecnn_distilled_gen2` at 144 px input (96 px lost at 40 epochs: does "
                                      "more resolution pay?); its 8192 -> 64 layer becomes 10368 -> 64",
}
PROBE_LABELS = {
    "batch64_contiguous_glibc_default": "training step, batch 64, contiguous, glibc default",
    "batch64_channels_last_glibc_default": "training step, batch 64, channels_last, glibc default",
    "batch32_channels_last_glibc_default": "training step, batch 32, channels_last, glibc default",
    "batch64_contiguous_keep_freed": "training step, batch 64, contiguous, freed memory kept",
    "batch64_channels_last_keep_freed": "training step, batch 64, channels_last, freed memory kept (**kept**)",
    "batch32_channels_last_keep_freed": "training step, batch 32, channels_last, freed memory kept",
    "batch16_channels_last_keep_freed": "training step, batch 16, channels_last, freed memory kept",
    "batch8_channels_last_keep_freed": "training step, batch 8, channels_last, freed memory kept",
    "batch64_channels_last_keep_freed_relu_then_pool": "training step, batch 64, the seed's order ReLU → MaxPool",
    "batch64_channels_last_keep_freed_pool_then_relu": "the same, right after, MaxPool → ReLU (**kept**)",
    "batch64_channels_last_keep_freed_float32": "training step, batch 64, channels_last, float32",
    "batch64_channels_last_keep_freed_bf16_autocast": "the same, right after, bf16 autocast (`train.py --amp`)",
    "optimize_for_inference_glibc_default": "frozen + `optimize_for_inference`, glibc default allocator",
    "eager": "eager", "traced": "traced", "frozen": "frozen",
    "optimize_for_inference": "frozen + `optimize_for_inference`, freed memory kept (**kept**, applied at load time)",
}
FIGURES = {  # figures written by the runs, copied next to RESULTS.md
    "data": [("sample faces", "pics/sample_images.png"), ("age distribution", "figs/age_distribution.png"),
             ("split distributions", "figs/train_test_valid_age_distri.png")],
    "final": [("simplecnn_tuned learning curves", "figs/utkface_S_simplecnn_tuned_learning_curves.png"),
              ("simplecnn_tuned predicted vs true age, test split", "figs/utkface_S_simplecnn_tuned_pred_vs_true.png")],
    "search": [("overfit check", "figs/utkface_overfit.png"), ("learning-rate sweep", "figs/utkface_lr_sweep.png"),
               ("weight-decay grid", "figs/utkface_grid_search.png")],
}
EDA_REPORT = Path("figs") / "utkface_20_50_report.json"  # Protocol S's data_report.json, copied
CROSS_DIR = "../shared/data/FGNET"
# not recorded in best_params.json: train.py's defaults when the UTKFace search ran, spelled out
SEARCH_RECIPE = ["--denoise", "--deblur"]


def read_json(path):
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def read_csv(path):
    import csv
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def shipped_run(card):
    """The PROTOCOL/NAME the model card in models/ was written from (benchmark.py --ship), or None."""
    import re
    card = Path(card)
    found = re.search(r"benchmark\.py --ship (\S+?)`", card.read_text()) if card.is_file() else None
    return found.group(1) if found else None


def load_sources(args) -> dict:
    """Everything RESULTS.md is made from: results.json, detection.json, and the search, export and data
    records in bench/ and figs/ (paths of the last two relative to RESULTS.md's folder)."""
    bench, root = Path(args.out).parent, Path(args.results_md).parent
    mobile = sorted(bench.glob("mobile_exports_*.json"))
    return {"results": load_results(args.out), "detection": read_json(args.detection),
            "search": {"lr_sweep": read_csv(bench / "lr_sweep.csv"), "grid": read_csv(bench / "grid_search.csv"),
                       "best": read_json(bench / "best_params.json")},
            "mobile": read_json(mobile[0]) if mobile else None, "eda_report": read_json(root / EDA_REPORT),
            "shipped": shipped_run(root / SHIPPED.parent / "README.md")}


def exported_val_mae(entry) -> float:
    """Validation MAE of a run's model as exported, the figure runs are compared and chosen by: with the zooms
    --choose-zooms kept, and through a kept age map (its 2-fold cross-fitted figure: the map was fitted on
    those faces); else the best epoch's. The test figures are the export's too, so both sides match."""
    age_map = entry.get("age_map") or {}
    if age_map.get("keep") and "val_mae_after" in age_map:
        return age_map["val_mae_after"]
    choice = entry.get("zoom_choice") or {}
    if choice.get("chosen") in choice.get("val_mae", {}):
        return round(choice["val_mae"][choice["chosen"]], 3)
    return entry["best_val_mae"]


def chosen_on_validation(models):
    """The name of the entry with the lowest validation MAE as exported (None for none)."""
    return min(models, key=lambda n: exported_val_mae(models[n]), default=None)


def code_block(lines):
    return ["```bash", *lines, "```"]


def details(summary, lines):
    return ["<details><summary>" + summary + "</summary>", "", *code_block(lines), "", "</details>"]


def figures(key):
    return [" ".join(f"![{alt}]({path})" for alt, path in FIGURES[key])]


def data_section(sources):
    results, report = sources["results"], sources["eda_report"]
    data = results.get("data", {})
    if not data:
        return []
    defaults = get_args_parser().parse_args([])
    lines = ["## Data", "",
             f"UTKFace (`{defaults.data_dir}`, read in place) through `eda.py`: byte-identical duplicates merged, "
             "duplicate groups with conflicting ages dropped, stratified 80:10:10 with seed 42. Selection of the "
             "best epoch, and of the recipe, uses validation only; the test split is read once per final model.", "",
             "| protocol | ages | used | train / val / test | duplicate files merged | conflicting groups dropped "
             "| age mean / median | test MAE of predicting the training median |", "|---|---|---|---|---|---|---|---|"]
    for protocol, d in data.items():
        s, dup, age = d["splits"], d["duplicates"], d["age"]
        lines.append(f"| {protocol} | {age['min']}–{age['max']} | {d['used']:,} | {s['train']:,} / {s['val']:,} / "
                     f"{s['test']:,} | {dup['duplicate_files_removed']:,} | {dup['conflict_groups_dropped']:,} "
                     f"({dup['conflict_files_dropped']:,} files) | {age['mean']:.1f} / {age['median']:g} | "
                     f"{d['test_mae_of_train_median']:.2f} |")
    check = data_check_lines(results)
    if check:
        lines += ["", "Each split made again by today's code:", "", *check]
    lines += ["", "Made by (each run by `python benchmark.py --protocols P`):", ""]
    lines += code_block(["python " + shlex.join(["eda.py", *eda_argv(defaults.data_dir, defaults.work_dir, p)])
                         for p in data if p in PROTOCOLS])
    if report:
        lines += ["", f"Protocol S's `data_report.json` (copied to `{EDA_REPORT}`): {report['found']:,} files found, "
                  f"{report['skipped'].get('outside_min_max_age', 0):,} outside "
                  f"{report['min_age_filter']}–{report['max_age_filter']}, scanned (discover, decode-check, hash) in "
                  f"{report['scan_seconds']} s."]
    return lines + ["", *figures("data")]


def model_commands(results):
    out = []
    for protocol, models in results.get("protocols", {}).items():
        for name, r in models.items():
            if "command" in r:
                out += [f"# {protocol}/{name}" + (f" ({r['command_note']})" if r.get("command_note") else ""),
                        r["command"]]
    return out


def earlier_split_note(protocols) -> list:
    """What the rows of a protocol's earlier split are (retire_earlier_split)."""
    earlier = [k for p in PROTOCOLS for k in earlier_splits(protocols, p)]
    if not earlier:
        return []
    return [f"Rows of {', '.join(f'**{k}**' for k in earlier)} were trained and tested on the split their protocol "
            "had until that day (Data): other test faces than today's split, so they are compared and chosen "
            "among themselves only, and the accuracy targets are judged on today's split.", ""]


def models_section(sources):
    results = sources["results"]
    protocols = results.get("protocols", {})
    if not any(protocols.values()):
        return []
    lines = ["## Models on UTKFace", "",
             "Each row is one `train.py` run, started by `python benchmark.py --protocols P --models NAME` "
             "(its exact command below). **Protocol S**: ages 20–50 (the seed data set's range); **Protocol F**: "
             "all ages. train img/s and train min are as recorded during each run: they depend on the code of "
             "the day and on what else ran on the machine (Speed has the controlled figures).", "",
             *earlier_split_note(protocols),
             table(results), "", *details("The train.py command of each row (from bench/results.json)",
                                          model_commands(results)), "",
             "The models (each is `MODEL_BASE` in `benchmark.py` with the flags shown):", ""]
    for name in MODELS:
        ran = [p for p, models in protocols.items() if name in models]
        flags = f"`{shlex.join(MODELS[name])}`" if MODELS[name] else "`MODEL_BASE` itself"
        teachers = "; ".join(f"validation MAE of the teachers' mean distribution {protocols[p][name]['teacher_val_mae']:.3f} "
                             f"(Protocol {p})" for p in ran if protocols[p][name].get("teacher_val_mae") is not None)
        float32 = [p for p in ran if "--amp" in MODELS[name] and protocols[p][name].get("bf16") is False]
        if float32:
            teachers += ("; " if teachers else "") + "its recorded run ran in float32 (`--amp` is ignored on a CPU " \
                f"without bf16; Protocol {', '.join(float32)})"
        lines.append(f"- `{name}`: {MODEL_NOTES.get(name, '')}; {flags}"
                     + ("" if ran else " (no result yet)") + (f"; {teachers}" if teachers else "") + ".")
    data = results.get("data", {})
    lines += ["", "- Predicting the training split's median age instead: test MAE "
              + ", ".join(f"{d['test_mae_of_train_median']:.2f} (Protocol {p})" for p, d in data.items()) + "."]
    for protocol, models in protocols.items():
        best = chosen_on_validation(models)
        if best:
            decades = ", ".join(f"{k}: {v}" for k, v in models[best]["test_mae_per_decade"].items())
            lines.append(f"- Protocol {protocol}, chosen on validation: `{best}` (validation "
                         f"{exported_val_mae(models[best]):.2f}, test {models[best]['test_mae']:.2f}). "
                         f"Test MAE per decade: {decades}.")
    return lines


def validated_with_zooms(entry) -> bool:
    """Whether a run was trained with test-time zooms (--tta-zoom), which its every validation figure then averages."""
    return "command" in entry and bool(recorded_args(entry).tta_zoom)


SHIP_RULE = ("best_val_mae", "val_mae_gray", "val_mae_scan")  # validation figures whose mean chooses the shipped model


def shipped_section(sources):
    results, shipped = sources["results"], sources["shipped"]
    # the shipped model serves every age, so only Protocol F (all ages) models are candidates
    candidates = {f"F/{n}": r for n, r in results.get("protocols", {}).get("F", {}).items()
                  if all(k in r for k in SHIP_RULE)}
    if not candidates:
        return []
    fgnet = results.get("cross", {}).get("FGNET", {})
    mean = {k: sum(r[f] for f in SHIP_RULE) / len(SHIP_RULE) for k, r in candidates.items()}
    chosen = min(mean, key=mean.get)
    lines = ["## Choosing the shipped model", "",
             "The model in `models/` is chosen by a rule that reads validation only: among the Protocol F models "
             "(all ages), the lowest mean of the validation MAE on the colour faces, on gray copies of them and on "
             f"scanned-looking copies (each face resampled down to {SCAN_SCALE[0]:.0%}–{SCAN_SCALE[1]:.0%} of its "
             f"side and back, plus grain of σ up to {SCAN_GRAIN:g}: `custom_dataset.altered_copies`), because real "
             "photos include gray and scanned prints. The test split and FG-NET play no part in the choice. The scanned copies joined the rule on 2026-12-01, "
             "after the scan augmentation had lowered FG-NET's MAE at 96 px; so FG-NET told us which alteration "
             "matters, though no candidate is chosen on its FG-NET figure.",
             "",
             f"Grained copies (film grain: luminance blobs of {GRAIN_BLOB[0]:g}–{GRAIN_BLOB[1]:g} px, σ up to "
             f"{GRAIN_SIGMA:g}) are measured beside the rule, not in it: they were added on 2026-12-02 together with "
             "the first model trained on grain, and a rule changed for the candidate it would favour would choose "
             "by that experiment. A dash: measured before that (`--calibrate` adds it).", "",
             "| model | val MAE, colour | gray copies | scanned copies | mean | test MAE | FG-NET MAE | grained copies |",
             "|---|---|---|---|---|---|---|---|"]
    for key, r in candidates.items():
        fg = f"{fgnet[key]['mae']:.2f}" if key in fgnet else "-"
        grained = f"{r['val_mae_grain']:.2f}" if "val_mae_grain" in r else "-"
        mark = ((" (**chosen**)" if key == chosen else "") + (" †" if (r.get("age_map") or {}).get("keep") else "")
                + (" ‡" if validated_with_zooms(r) else ""))
        lines.append(f"| {key}{mark} | {r['best_val_mae']:.2f} | {r['val_mae_gray']:.2f} | {r['val_mae_scan']:.2f} | "
                     f"{mean[key]:.2f} | {r['test_mae']:.2f} | {fg} | {grained} |")
    if any((r.get("age_map") or {}).get("keep") for r in candidates.values()):
        lines += ["", "† The run kept an age map: its validation figures here are its network's (the rule compares "
                      "networks alike), its test MAE the export's, map included."]
    if any(validated_with_zooms(r) for r in candidates.values()):
        lines += ["", "‡ Trained with test-time zooms (`--tta-zoom`): its validation figures are those of the face, its "
                      "zooms and their mirrors, where the others' are of the face and its mirror alone (zooms chosen "
                      "after training, by `--choose-zooms` or `--ship-zooms`, play no part in the rule)."]
    lines += ["", f"Shipped: `{shipped or 'none yet'}`" + ("" if shipped in (None, chosen) else
                                                            f" (not the rule's choice, {chosen})") + ", by:", ""]
    zoomed = (results.get("shipped_zooms") or {}).get("run") == shipped and shipped is not None
    return lines + code_block([f"python benchmark.py --ship {shipped or chosen}   # copies the exports to "
                               "models/ and writes models/README.md, the model card"]
                              + (["python benchmark.py --ship-zooms   # its test-time zooms, chosen on validation"]
                                 if zoomed else []))


def light_check(results) -> str:
    """What the 40-epoch flips-only run (tuned_light) says of keeping the default augmentation."""
    light = results.get("long_ablations", {}).get("tuned_light")
    tuned_val = tuned_on_split(results, light.get("split_faces_digest")).get("best_val_mae") if light else None
    if tuned_val is None:
        return "a 40-epoch flips-only run is the open check."
    verdict = ("confirmed it" if light["val_mae"] > tuned_val + MAE_NOISE else
               "did not confirm it" if light["val_mae"] < tuned_val - MAE_NOISE else "left it within the noise")
    return (f"the 40-epoch flips-only run (`tuned_light`, below) {verdict} (validation {light['val_mae']:.3f} against "
            f"{tuned_val:.3f}).")


def ablation_reading(runs, results):
    """The generated "how to read it" of the experiments table (runs on the base's split; results: for the
    40-epoch flips-only check against simplecnn_tuned)."""
    base = runs["base"]["val_mae"]
    delta = {n: r["val_mae"] - base for n, r in runs.items() if n != "base"}
    noise = abs(delta.get("base_seed_2", 0.0))
    lever = {n: d for n, d in delta.items() if n != "base_seed_2"}

    def listing(names):
        return ", ".join(f"`{n}` ({lever[n]:+.3f})" for n in sorted(names, key=lever.get)) or "none"
    tta = {n: r["val_mae_no_tta"] - r["val_mae_flip_tta"] for n, r in runs.items() if "val_mae_flip_tta" in r}
    helped = [v for v in tta.values() if v > 0]
    hurt = [f"`{n}` ({-v:+.3f})" for n, v in tta.items() if v <= 0]
    return ["How to read it:", "",
            f"- **Noise.** The base trained again with another seed (`base_seed_2`) differs by {noise:.3f} years, so "
            "differences of about that size are not evidence (one pair of seeds is a rough estimate, not an error bar).",
            f"- **Better than the base beyond that noise:** {listing(n for n, d in lever.items() if d < -noise)}.",
            f"- **Worse beyond the noise:** {listing(n for n, d in lever.items() if d > noise)}.",
            f"- **Within the noise:** {listing(n for n, d in lever.items() if abs(d) <= noise)}.",
            f"- **Flip-TTA** lowered the validation MAE in {len(helped)} of {len(tta)} runs"
            + (f" (by {min(helped):.3f}–{max(helped):.3f})" if helped else "")
            + (f"; it raised it in {', '.join(hurt)}" if hurt else "") + ".",
            "- **Kept** in the finals (`simplecnn_tuned*`, 40 epochs): MSE on the expected age and denoise/deblur "
            "off; the 96 px input as a separate final, because it changes the model's size and speed. Light "
            "augmentation was not kept: 10-epoch runs favour levers that pay off early, and with flips only the "
            "training MAE falls below validation sooner (each run's `history.json`); "
            + light_check(results)]


def finals_lines(protocols, reruns=()):
    s = protocols.get(first_split(protocols, "S", "simplecnn_tuned"), {})  # the finals of the ablations' split
    lines = []
    if "simplecnn_seed" in s and "simplecnn_dldl" in s:
        a, b = s["simplecnn_seed"], s["simplecnn_dldl"]
        lines.append(f"- Before the one-lever runs, not one at a time: the seed recipe → `simplecnn_dldl`: validation "
                     f"{exported_val_mae(a):.2f} → {exported_val_mae(b):.2f}, test {a['test_mae']:.2f} → "
                     f"{b['test_mae']:.2f}.")
    finals = {n: s[n] for n in ("simplecnn_tuned", "simplecnn_tuned_96px", "simplecnn_tuned_60ep",
                                "simplecnn_distilled") if n in s}
    for name, r in finals.items():
        lines.append(f"- **Final** `{name}`: validation {exported_val_mae(r):.2f} (best epoch {r['best_epoch']} of "
                     f"{r['epochs']}), **test {r['test_mae']:.2f}** (CS@5 {r['test_cs5']:.1%}), "
                     f"{r['train_minutes']:.1f} min of training at {r['train_images_per_s']:.0f} images/s, "
                     f"`model.jit` {r['latency_b1_ms']:.2f} ms per forward pass.")
    if len(finals) >= 2:
        chosen = chosen_on_validation(finals)
        fast = "simplecnn_tuned_96px" if chosen != "simplecnn_tuned_96px" and "simplecnn_tuned_96px" in finals else None
        lines.append(f"- Chosen on validation: `{chosen}`"
                     + (f"; `{fast}` is the choice when speed matters more." if fast else "."))
    lines += distillation_lines(protocols) + list(reruns)
    for protocol, models in protocols.items():
        if protocol in TARGETS["test_mae"]:
            lines += target_line(protocol, models)
    return lines + ([""] + figures("final") if "simplecnn_tuned" in s else [])


def earlier_sessions_seconds(history) -> float:
    """The clock time of a resumed run's sessions before its last (each epoch with its validation, and each
    session's set-up), from history.json: benchmark's own clock saw the last session alone. Epochs recorded
    before history kept their clock count their training pass."""
    last = history[-1].get("session") if history else None
    return sum(h.get("wall_seconds", h["epoch_seconds"]) + h.get("setup_seconds", 0.0)
               for h in history if h.get("session") != last)


def run_minutes(entry) -> float:
    """The minutes a final's train.py run took: every epoch with its validation, the teacher table, the test
    split and the exports, over all its sessions where it was resumed (the training passes alone where an
    old record lacks the whole)."""
    whole = entry.get("wall_minutes_incl_eval_export", 0.0) + entry.get("earlier_sessions_minutes", 0.0)
    return max(whole, entry["train_minutes"])


def target_line(protocol, models):
    """#15's verdict for one protocol: among the models under 1M weights whose train.py run took at most
    TARGETS['final_minutes'] here (its teachers are not counted, and are listed with their cost under
    Distillation), the one chosen on validation; better ones that took longer are named, not counted. The
    figures a verdict judges are printed with the digits it judges them by."""
    limit, target = TARGETS["final_minutes"], TARGETS["test_mae"][protocol]
    small = {n: m for n, m in models.items() if m["params"] < 1_000_000}
    within = {n: m for n, m in small.items() if run_minutes(m) <= limit}
    chosen = chosen_on_validation(within)
    if not chosen:
        return []
    slower = [n for n, m in small.items() if n not in within and exported_val_mae(m) < exported_val_mae(within[chosen])]
    return [f"- Target for Protocol {protocol} (a model under 1M weights whose train.py run takes at most {limit} min "
            f"here, its teachers not counted; test MAE ≤ {target}): the one chosen on validation, `{chosen}` "
            f"({run_minutes(within[chosen]):.1f} min), has test {within[chosen]['test_mae']:.3f} — "
            f"{reached(round(within[chosen]['test_mae'], 3) <= target)}."
            + "".join(f" `{n}` has a lower validation MAE ({exported_val_mae(small[n]):.3f}, test "
                      f"{small[n]['test_mae']:.3f}) but took {run_minutes(small[n]):.1f} min, so it does not count."
                      for n in slower)]


def teachers_minutes(models, entry) -> float:
    """Training minutes of every run a distilled model needed first: its teachers, their teachers and so on,
    each counted once (runs without a result add nothing). The figure recorded with the student wins: a
    teacher retrained since (other weights, other minutes) taught no epoch of it."""
    if "teachers_minutes" in entry:
        return entry["teachers_minutes"]
    needed, todo = set(), teacher_names(entry)
    while todo:
        name = todo.pop()
        if name in models and name not in needed:
            needed.add(name)
            todo += teacher_names(models[name])
    return sum(models[n]["train_minutes"] for n in sorted(needed))  # a fixed order: the same rounding every run


def teachers_retrained(models, entry) -> bool:
    """Whether a run recorded in models was trained again after this distilled entry learnt from it, so that
    the entry's command now teaches from other weights: told by the teachers' weights where the entry records
    them, else by the teachers' minutes recorded with it (a record from before weights were kept)."""
    names = teacher_names(entry)
    if "teachers_weights" in entry and len(entry["teachers_weights"].split(",")) == len(names):
        return any(models.get(n, {}).get("weights") not in (None, w)
                   for n, w in zip(names, entry["teachers_weights"].split(",")))
    if "teachers_minutes" not in entry or not all(n in models for n in names):
        return False  # nothing recorded to compare with
    now = teachers_minutes(models, {k: v for k, v in entry.items() if k != "teachers_minutes"})
    return abs(now - entry["teachers_minutes"]) > 0.01


RETRAINED_NOTE = ("one or more of its teachers' runs were trained again after it learnt from them, so its command now "
                  "teaches from other weights: its figures are those of the student of the earlier runs")


def recipe_of(entry, without=("teacher", "teacher_weight")) -> dict:
    """What a recorded run learnt with: its recipe (train.recipe_keys), epochs, learning rate, weight decay and
    seed, less the `without` settings; two runs with the same recipe_of differ only in those."""
    settings = vars(recorded_args(entry))
    return {"epochs": entry["epochs"], **{k: settings[k] for k in (*train.recipe_keys(), "lr", "weight_decay", "seed")
                                          if k not in without}}


def distillation_lines(protocols) -> list:
    """Each distilled final against the same recipe and length without teachers, with what its teachers cost."""
    lines = []
    for protocol, models in protocols.items():
        for name, student in models.items():
            if not teacher_names(student):
                continue
            alone = next((n for n, m in models.items() if not teacher_names(m)
                          and recipe_of(m) == recipe_of(student)), None)
            teachers = teacher_names(student)
            compare = "" if alone is None else (
                f" against `{alone}` (the same recipe, input and {student['epochs']} epochs without teachers): validation "
                f"{exported_val_mae(models[alone]):.3f} → {exported_val_mae(student):.3f}, test "
                f"{models[alone]['test_mae']:.2f} → **{student['test_mae']:.2f}**")
            teacher_mae = student.get("teacher_val_mae")
            gpu = "gpu_teachers" in (recorded_args(student).teacher or "")
            lines.append(f"- **Distillation** `{name}`, Protocol {protocol}{compare}. Its teachers "
                         f"({', '.join(f'`{t}`' for t in teachers)}" + (", and a GPU-trained table" if gpu else "")
                         + ("): their mean distribution has validation MAE " + f"{teacher_mae:.3f}. "
                            if teacher_mae is not None else "). ")
                         + f"Compute on a CPU: {student['train_minutes']:.1f} min for the student plus "
                         f"{teachers_minutes(models, student):.1f} min for the CPU runs it learnt from (its teachers "
                         "and theirs)" + ("; the GPU teachers: `bench/gpu_teachers.py`." if gpu else ".")
                         + (f" Note: {RETRAINED_NOTE}." if teachers_retrained(models, student) else ""))
    return lines


def experiments_section(sources):
    results = sources["results"]
    runs = on_the_base_split(results)
    if "base" not in runs:
        return []
    elsewhere = [n for n in results["ablations"] if n not in runs]
    base_args = train.get_args_parser().parse_args(["--splits", "s", "--out-dir", "o", *ABLATION_BASE])
    lines = ["## Experiments", "",
             f"One lever at a time on Protocol S: a **base** recipe ({runs['base']['change']}, batch "
             f"{base_args.batch_size}, {base_args.epochs} epochs) and, for each lever, the base with that one change. "
             "Each run's best epoch is judged on the validation split (the test split is not read); \"without "
             "flip-TTA\" is the same checkpoint evaluated without the mirrored image.", ""]
    lines += code_block([f"python benchmark.py --ablations {','.join(runs)}"])
    lines += ["", ablation_table(results), "",
              *details("The train.py command of each run (from bench/results.json)",
                       [c for n, r in runs.items() if "command" in r for c in (f"# {n}", r["command"])]), ""]
    if elsewhere:
        lines += [f"Recorded on another split than the base, so not in the table: "
                  f"{', '.join(f'`{n}`' for n in elsewhere)}.", ""]
    return (lines + ablation_reading(runs, results) + [""]
            + finals_lines(results.get("protocols", {}), rerun_lines(results)) + long_ablation_lines(results)
            + zoom_probe_lines(results))


def zoom_probe_lines(results) -> list:
    """benchmark.py --zoom-probe: one export's validation MAE under each test-time zoom set."""
    probes = results.get("zoom_probe", {})
    if not probes:
        return []
    sets = [z or "none" for z in ZOOM_CANDIDATES]
    lines = ["", "### Test-time zooms", "",
             "The same weights, predicting the validation faces as the mean over more views (`train.py --tta-zoom`): "
             "the face and its centred crops of the listed shares of the side, resized back, each also mirrored "
             "where the model averages the flip. Measured through `inference.py`'s own averaging; the test split "
             "is not read.", ""]
    lines += code_block([r["command"] for r in probes.values()])
    lines += ["", "| export | val faces | " + " | ".join(f"zooms {z}" for z in sets) + " |",
              "|---|---|" + "---|" * len(sets)]
    for key, r in probes.items():
        protocol, model = key.split(":", 1)
        lines.append(f"| {protocol}: `{model}` | {r['images']} | "
                     + " | ".join(f"{r['val_mae'][z]:.3f}" if z in r["val_mae"] else "-" for z in sets) + " |")
    changes = [f"{r['val_mae'][sets[-1]] - r['val_mae']['none']:+.3f} ({key.split(':', 1)[0]})"
               for key, r in probes.items() if sets[-1] in r["val_mae"] and "none" in r["val_mae"]]
    if changes:
        lines += ["", f"Zooms {sets[-1]} (`train.py`'s `--tta-zoom {sets[-1]}`) against the face alone, same weights: "
                      f"{', '.join(changes)} years of validation MAE, for "
                      f"{forward_passes(test_time_views({'tta_zoom': sets[-1]}))}x the forward passes per face."]
    return lines + shipped_zooms_lines(results)


def shipped_zooms_lines(results) -> list:
    """What the zooms chosen for the shipped model after training (--ship-zooms) did to its test and FG-NET figures."""
    zoomed = results.get("shipped_zooms")
    if not zoomed:
        return []
    protocol, name = zoomed["run"].rsplit("/", 1)  # "F (earlier split, to DATE)/NAME" too
    # the run's own figures for the face alone, where still recorded (a retrained run's FG-NET row is dropped)
    plain_test = results["protocols"].get(protocol, {}).get(name, {}).get("test_mae")
    plain_record = results.get("cross", {}).get("FGNET", {}).get(zoomed["run"], {})
    plain_fgnet = plain_record.get("mae")
    plain_test, plain_fgnet = (f"{v:.2f}" if v is not None else "not recorded" for v in (plain_test, plain_fgnet))
    if plain_record:
        plain_fgnet += rules_note(plain_record, zoomed["fgnet"])
    iv = zoomed["interval"]
    return ["", f"The shipped model (`{zoomed['run']}`) carries the set its own validation MAE chooses among these, "
                f"`{zoomed['zooms']}` ({zoomed['val_mae'][zoomed['zooms']]:.3f} against {zoomed['val_mae']['none']:.3f} "
                f"for the face alone; `{zoomed['command']}`). The test split and FG-NET, read once more with the zooms: "
                f"test MAE {zoomed['test']['mae']:.2f} (the face alone: {plain_test}), FG-NET MAE "
                f"{zoomed['fgnet']['mae']:.2f} ({plain_fgnet}). Its interval, refitted on validation with the zooms, "
                f"covers {iv['coverage']:.1%} of the test ages at {iv['level']:.0%}, {iv['mean_width']:.1f} years wide "
                "on average."]


def long_ablation_lines(results) -> list:
    """The levers judged at 40 epochs or longer, each against the validation MAE of the run it changed one
    setting of: simplecnn_tuned (a longer schedule is itself one change) or its LONG_ABLATION_BASES entry."""
    runs = results.get("long_ablations", {})
    if not runs:
        return []
    bases = {n: LONG_ABLATION_BASES.get(n, "simplecnn_tuned") for n in runs}

    def reference_of(name):  # the changed run's validation MAE on this run's split; None where it has none there
        digest, base = runs[name].get("split_faces_digest"), bases[name]
        if base == "simplecnn_tuned":
            return tuned_on_split(results, digest).get("best_val_mae")
        same = base in runs and same_split(runs[base].get("split_faces_digest"), digest, results)
        return runs[base]["val_mae"] if same else None
    reference = {n: v for n in runs if (v := reference_of(n)) is not None}
    tuned = sorted({reference[n] for n in reference if bases[n] == "simplecnn_tuned"})
    unjudged = [f"`{n}` (`{bases[n]}`)" for n in runs if n not in reference]
    runs = {n: r for n, r in runs.items() if n in reference}
    tuned_text = (f"{tuned[0]:.3f}" if len(tuned) == 1 else
                  f"on each run's split: {' or '.join(f'{t:.3f}' for t in tuned)}" if tuned else "no run on their split")
    lines = ["", "### Levers at 40 epochs and longer", "",
             "One change to a recipe, judged on validation against the best validation MAE of that recipe without "
             f"it (same seed and split): `simplecnn_tuned` (40 epochs, {tuned_text}) or the run named in the table. "
             f"A lever counts where it wins by more than the run-to-run noise ({MAE_NOISE}).", ""]
    lines += code_block([f"python benchmark.py --ablations {','.join(runs)}"])
    lines += ["", "| experiment (one change) | changed run | val MAE | vs changed run | without flip-TTA | "
              "best epoch | train min |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {n}: {r['change']} | {bases[n]} | {r['val_mae']:.3f} | {r['val_mae'] - reference[n]:+.3f} | "
              f"{r['val_mae_no_tta']:.3f} | {r['best_epoch']}/{r['epochs']} | {r['train_minutes']:.1f} |"
              for n, r in runs.items()]
    delta = {n: r["val_mae"] - reference[n] for n, r in runs.items()}
    reruns = [n for n, r in runs.items() if r["change"].startswith("nothing:")]  # noise checks, not levers
    levers = {n: d for n, d in delta.items() if n not in reruns}

    def listing(names):
        return ", ".join(f"`{n}` ({delta[n]:+.3f})" for n in sorted(names, key=delta.get)) or "none"
    lines += ["", f"Better beyond the noise: {listing(n for n, d in levers.items() if d < -MAE_NOISE)}; within it: "
                  f"{listing(n for n, d in levers.items() if abs(d) <= MAE_NOISE)}; worse: "
                  f"{listing(n for n, d in levers.items() if d > MAE_NOISE)}."]
    if reruns:
        lines += ["", f"The same recipe again with another seed: {listing(reruns)}. A lever is only as sure as its "
                      "margin over this spread."]
    if unjudged:
        lines += ["", f"Recorded but not judged, their changed run has no record on their split: "
                      f"{', '.join(unjudged)}."]
    for name, bf16 in runs.items():  # each bf16 run against a float32 run of the same recipe (recipe_of)
        if not recorded_args(bf16).amp:
            continue
        f32 = next((m for m in runs.values() if not recorded_args(m).amp and recipe_of(m) == recipe_of(bf16)), None)
        if f32 is None:
            continue
        change = bf16["val_mae"] - f32["val_mae"]
        lines += ["", f"bf16 autocast (`--amp`, `{name}`) against the same {bf16['epochs']} epochs in float32: "
                      f"val MAE {f32['val_mae']:.3f} -> "
                      f"{bf16['val_mae']:.3f} ({change:+.3f}, {'within' if abs(change) <= MAE_NOISE else 'beyond'} "
                      f"the noise), {f32['train_minutes']:.1f} -> {bf16['train_minutes']:.1f} min of epochs "
                      f"({f32['train_minutes'] / bf16['train_minutes']:.1f}x as fast; the two runs were timed "
                      "separately, and this VM's timing drifts by 20-30 %: the probes time both steps back to back)."]
    return lines + ["", *details("The train.py command of each run", [c for n, r in runs.items()
                                                                      for c in (f"# {n}", r["command"])])]


def bias_section(sources):
    """Whom the models fail (error per group) and how sure they are (interval coverage)."""
    results = sources["results"]
    measured = [(p, n, r) for p, models in results.get("protocols", {}).items() for n, r in models.items()
                if "interval" in r]
    if not measured:
        return []
    lines = ["## Whom the model fails, and how sure it is", "",
             "Per model, on the test split: the age interval at 90 % (split-conformal: the absolute validation "
             "errors, pooled per 10-year band of predicted age, give each band's half width; the test split is "
             "not used to fit anything), the error per group (`mean error` is signed, predicted − true: "
             "positive means estimated too old), and a post-hoc isotonic map from predicted to true age, judged "
             "on validation: kept only if it lowers the worst decade's MAE (decades with at least "
             f"{WORST_DECADE_MIN_FACES} faces) without raising the overall MAE by more than the run-to-run noise "
             f"({MAE_NOISE}). `train.py` applies this rule to every run it trains (`--age-map auto`).", ""]
    lines += code_block(sorted({r.get("calibrate_command", "python benchmark.py --calibrate") for _, _, r in measured}))
    lines += ["", f"| model | coverage (target 0.90 ± 0.02) | mean width (years) | lowest decade coverage (decades of "
                  f"{WORST_DECADE_MIN_FACES}+ faces) |",
              "|---|---:|---:|---|"]
    missing = [f"{p}/{n}" for p, models in results.get("protocols", {}).items() for n, r in models.items()
               if "interval" not in r]
    for p, n, r in measured:
        iv = r["interval"]
        judged = {k: v for k, v in iv["coverage_per_decade"].items() if v["n"] >= WORST_DECADE_MIN_FACES}
        low = min((judged or iv["coverage_per_decade"]).items(), key=lambda kv: kv[1]["coverage"])
        lines.append(f"| {p}/{n} | {iv['coverage']:.3f} | {iv['mean_width']:.1f} | {low[0]}: {low[1]['coverage']:.2f} "
                     f"(n = {low[1]['n']}) |")
    lines += interval_methods_table(measured)
    if missing:
        lines += ["", f"No interval or group figures for {', '.join(missing)}: trained before `train.py` measured "
                      "them, and their run folders are gone; `python benchmark.py --protocols P --models NAME` "
                      "retrains one and records them."]
    for p, n, r in measured:
        lines += ["", f"**{p}/{n}**, test MAE and signed mean error per group:", "",
                  "| group | MAE | mean error | n |", "|---|---:|---:|---:|"]
        for column, table in r.get("groups", {}).items():
            lines += [f"| {column} {label} | {v['mae']:.2f} | {v['mean_error']:+.2f} | {v['n']:,} |"
                      for label, v in table.items()]
        iso = r.get("isotonic")
        if iso and "val_mae_before" in iso:
            lines += ["", f"Isotonic calibration, judged on validation (2-fold cross-fitted): MAE "
                          f"{iso['val_mae_before']:.3f} → {iso['val_mae_after']:.3f}, worst decade "
                          f"{iso['val_worst_decade_before'][0]} {iso['val_worst_decade_before'][1]:.2f} → "
                          f"{iso['val_worst_decade_after'][0]} {iso['val_worst_decade_after'][1]:.2f}: "
                          + (("meets the rule (train.py keeps such a map in the runs it trains; this run kept its "
                              "own, so its figures above are the mapped ages)" if (r.get("age_map") or {}).get("keep")
                              else "meets the rule (train.py keeps such a map in the runs it trains; this run's "
                              "figures above are its network's own ages)") if iso["keep"] else "fails the rule")
                          + f". On test, read once: MAE {iso['test_mae_before']:.3f} → {iso['test_mae_after']:.3f}, worst "
                          f"decade {iso['test_worst_decade_before'][0]} {iso['test_worst_decade_before'][1]:.2f} → "
                          f"{iso['test_worst_decade_after'][0]} {iso['test_worst_decade_after'][1]:.2f}."]
    runs = results.get("ablations", {})
    if "balanced" in runs and "val_worst_decade" in runs.get("base_rerun", {}) and \
            runs["balanced"].get("split_faces_digest") == runs["base_rerun"].get("split_faces_digest"):
        base, bal = runs["base_rerun"], runs["balanced"]  # both trained by the same code
        failures = worst_decade_rule_failures(base["val_mae"], bal["val_mae"], base["val_worst_decade"][1],
                                              bal["val_worst_decade"][1])
        lines += ["", f"Age-balanced sampling (`--balance`; the `balanced` ablation against `base_rerun`, the base "
                      f"trained by the same code; validation split, {bal['epochs']} epochs): val MAE "
                      f"{base['val_mae']:.3f} → {bal['val_mae']:.3f}, worst decade {base['val_worst_decade'][0]} "
                      f"{base['val_worst_decade'][1]:.2f} → {bal['val_worst_decade'][0]} {bal['val_worst_decade'][1]:.2f}: "
                      + (f"not kept ({'; '.join(failures)})." if failures else "kept (it meets the rule).")]
    return lines


def interval_methods_table(measured) -> list:
    """benchmark.py --calibrate's interval_experiment: residual bands vs the predicted spread."""
    rows = [(p, n, r["interval_methods"]) for p, n, r in measured if "interval_methods" in r]
    if not rows:
        return []
    lines = ["", "Bands of predicted age (above) or each face's predicted spread? The label-distribution head "
                 "predicts a spread (the standard deviation of its age distribution); the alternative scales each "
                 "interval by it (split-conformal on |error| / spread, spread at least "
                 f"{SPREAD_FLOOR:g} year). Both are cross-fitted on validation's two halves, which decides; test "
                 "is read once, for information. Decade range: lowest and highest coverage of decades with at "
                 f"least {WORST_DECADE_MIN_FACES} faces. Both methods are scored on the network's own ages, before any "
                 "age map: for a run that keeps a map its bands row differs from the table above, which scores "
                 "the mapped ages the export reports.", "",
             "| model | method | val coverage | val width | val decade range | test coverage | test decade range |",
             "|---|---|---:|---:|---|---:|---|"]
    for p, n, m in rows:
        for method in ("bands", "spread"):
            v, t = m[method]["val_crossfit"], m[method]["test"]
            lines.append(f"| {p}/{n} | {method} | {v['coverage']:.3f} | {v['mean_width']:.1f} | "
                         f"{v['decade_coverage_min']:.2f}–{v['decade_coverage_max']:.2f} | {t['coverage']:.3f} | "
                         f"{t['decade_coverage_min']:.2f}–{t['decade_coverage_max']:.2f} |")
    corr = ", ".join(f"{p}/{n} {m['val_corr_abs_error_spread']:.2f}" for p, n, m in rows)
    return lines + ["", f"Correlation of the absolute error with the predicted spread on validation: {corr}."]


def reached(ok):
    return "reached" if ok else "not reached"


def architecture_figures(runs, chosen, key="latency_b1_ms") -> list:
    """`key` (a speed) of every run with the chosen one's weights count and input size, chosen first."""
    def shape(m):
        return m.get("params"), recorded_args(m).image_size
    return [runs[chosen][key]] + [m[key] for n, m in runs.items() if n != chosen and shape(m) == shape(runs[chosen])]


def speed_verdict(runs, chosen, key, inside_target, unit) -> str:
    """A speed target judged on every run of the chosen one's architecture (same weights count and input size):
    the same network measured on other days differs by more than the margin to a target, so one measurement
    inside it does not settle it."""
    same = architecture_figures(runs, chosen, key)
    inside = sum(inside_target(v) for v in same)
    if inside in (0, len(same)):
        return reached(inside > 0)
    digits = 2 if unit == "ms" else 0
    return (f"not settled: {inside} of {len(same)} measurements of this architecture inside it "
            f"({min(same):,.{digits}f}–{max(same):,.{digits}f} {unit})")


def latency_verdict(runs, chosen) -> str:
    return speed_verdict(runs, chosen, "latency_b1_ms", lambda ms: ms <= TARGETS["jit_b1_ms"], "ms")


def latency_per_face(runs, chosen) -> str:
    """The chosen run's jit batch-1 latency, as the range over its architecture's runs where there are more."""
    same = architecture_figures(runs, chosen)
    if len(same) == 1:
        return f"{same[0]:.2f} ms per forward pass"
    return f"{min(same):.2f}–{max(same):.2f} ms per forward pass ({len(same)} runs of this network, each timed once)"


def speed_table(results):
    speed, s = results.get("speed"), latest_runs(results.get("protocols", {}), "S")  # speed needs no split
    chosen = chosen_on_validation(s)
    lines = ["| what | measured | target |", "|---|---|---|"]
    if speed:
        lines += [f"| loader, preprocessing every item every epoch | {speed['loader_uncached_images_per_s']:,.0f} "
                  "images/s | |",
                  f"| loader, reading the preprocessing cache | {speed['loader_cached_images_per_s']:,.0f} images/s "
                  f"({speed['loader_cache_speedup']:,.0f}×) | ≥ {TARGETS['cache_speedup']}× — "
                  f"{reached(speed['loader_cache_speedup'] >= TARGETS['cache_speedup'])} |"]
    if chosen:
        r = s[chosen]

        def others(key, spec):  # the other runs' figures after the chosen one's, where there are others
            rest = ", ".join(f"{n} {format(m[key], spec)}" for n, m in s.items() if n != chosen)
            return f"; {rest}" if rest else ""
        lines += [f"| training through `train.py`, median epoch | {r['train_images_per_s']:.0f} images/s (`{chosen}`)"
                  f"{others('train_images_per_s', '.0f')} | ≥ {TARGETS['train_images_per_s']} images/s — "
                  f"{reached(r['train_images_per_s'] >= TARGETS['train_images_per_s'])} |",
                  f"| `model.jit` batch-1 latency | {r['latency_b1_ms']:.2f} ms (`{chosen}`)"
                  f"{others('latency_b1_ms', '.2f')} | ≤ {TARGETS['jit_b1_ms']:g} ms — {latency_verdict(s, chosen)} |",
                  f"| `model.jit` batch-64 throughput | {r['images_per_s_b64']:,.0f} images/s (`{chosen}`)"
                  f"{others('images_per_s_b64', ',.0f')} | ≥ {TARGETS['jit_b64_images_per_s']:,} — "
                  + speed_verdict(s, chosen, "images_per_s_b64", lambda v: v >= TARGETS["jit_b64_images_per_s"],
                                  "images/s") + " |"]
    tta = exported_views(s[chosen]) if chosen else None
    if tta and forward_passes(tta) > 1:  # the latencies above are one forward pass each
        lines.append(f"| forward passes per face under the S choice's test-time views ({views_text(tta)}) | "
                     f"{forward_passes(tta)} | |")
    onnx = results.get("probes", {}).get("onnx_b1_ms")
    if onnx:
        size = str(recorded_args(s[chosen]).image_size) if chosen else None
        verdict = (f" — {reached(onnx[size] <= TARGETS['onnx_b1_ms'])} at {size} px, the S choice's input"
                   if size in onnx else "")
        lines.append("| ONNX Runtime batch-1 latency, 1 thread (a random SimpleCNN per input size: "
                     "`python benchmark.py --probes`) | " + ", ".join(f"{k} px {v:.2f} ms" for k, v in onnx.items())
                     + f" | ≤ {TARGETS['onnx_b1_ms']:g} ms{verdict} |")
    return lines if len(lines) > 2 else []


def probe_lines(probes):
    train_ips, inference = probes["train_images_per_s"], probes["inference"]
    lines = ["| probe | images/s |", "|---|---|"]
    lines += [f"| {PROBE_LABELS.get(k, k)} | {v:,.0f} |" for k, v in train_ips.items()]
    if "augment_images_per_s" in probes:
        lines.append(f"| whole-batch augmentation alone (`affine_grid`/`grid_sample`) | {probes['augment_images_per_s']:,.0f} |")
    lines += ["", "| `model.jit` variant (random SimpleCNN, 128 px) | batch-1 ms | batch-64 images/s |", "|---|---|---|"]
    lines += [f"| {PROBE_LABELS.get(k, k)} | {v['b1_ms']:.2f} | {v['b64_images_per_s']:,.0f} |" for k, v in inference.items()]
    gain = [train_ips[f"batch64_{m}_keep_freed"] / train_ips[f"batch64_{m}_glibc_default"] - 1
            for m in ("contiguous", "channels_last") if f"batch64_{m}_keep_freed" in train_ips]
    order = [train_ips.get(f"batch64_channels_last_keep_freed_{k}") for k in ("relu_then_pool", "pool_then_relu")]
    lines += ["", "- **glibc kept from returning freed memory to the OS** (`functions.keep_freed_memory`, called by "
              "`train.py`, `inference.py` and `hyperparameter_tunning.py`): each training step and batch-64 forward "
              "pass no longer pays page faults on fresh zeroed pages"
              + (f": {' to '.join(dict.fromkeys(f'{g:+.0%}' for g in sorted(gain)))} images/s at batch 64" if gain else "")
              + ". The process keeps its peak memory until it exits; a no-op on other C libraries."]
    precision = [train_ips.get(f"batch64_channels_last_keep_freed_{k}") for k in ("float32", "bf16_autocast")]
    if all(precision):
        lines.append(f"- **bf16 autocast** (`train.py --amp`, on a CPU with AVX-512 BF16 or AMX): "
                     f"{precision[1] / precision[0]:.1f}x the float32 step's images/s, back to back; the long "
                     "ablation `tuned_60_epochs_amp` checks that a run learns as well.")
    if all(order):
        lines.append(f"- **MaxPool before ReLU** in `SimpleCNN` (the same outputs and gradients, a test checks it): "
                     f"{order[1] / order[0] - 1:+.0%} back to back, "
                     f"{'within' if abs(order[1] / order[0] - 1) <= PROBE_NOISE else 'beyond'} the run-to-run noise "
                     f"of about ±{PROBE_NOISE:.0%}.")
    lines.append("- `optimize_for_inference` is applied when `model.jit` is loaded, because an optimised module does "
                 "not survive `torch.jit.save`/`load` in this torch.")
    return lines


def speed_section(sources):
    results = sources["results"]
    table_lines, probes = speed_table(results), results.get("probes")
    if not table_lines and not probes:
        return []
    lines = ["## Speed", "", "Loader figures from `python benchmark.py --protocols S` (192 training images), training "
             "and `model.jit` figures from the Protocol S rows of Models on UTKFace.", "", *table_lines]
    if probes:
        lines += ["", f"The probes behind the speed choices: a stand-alone training step with random weights and "
                  f"data, augmentation included, {probes['threads']} threads; repeated runs of one probe vary by "
                  f"about ±{PROBE_NOISE:.0%}.", "", *code_block(["python benchmark.py --probes"]), "", *probe_lines(probes)]
    return lines


def cross_commands(results) -> list:
    """The commands that measured the FG-NET rows as they are kept, each row once: a protocol's models, those with
    a Haar box row with --cross-compare, and each crop-checked model by itself (--crop-check checks the last model
    named). An earlier split's rows ("P (earlier split, to D)/NAME") are not reproduced: their split is gone."""
    fgnet = results.get("cross", {}).get("FGNET", {})
    rows = [(k.rsplit("/", 1)[0], *k.rsplit("/", 1)[1].split(" (", 1)) for k in fgnet if "/" in k]
    commands = []
    for protocol in dict.fromkeys(p for p, *_ in rows if p in PROTOCOLS):
        argv = ["python", "benchmark.py", "--cross", CROSS_DIR, "--protocols", protocol, "--models"]
        plain = [n for p, n, *variant in rows if p == protocol and not variant]
        haar = {n for p, n, *variant in rows if p == protocol and variant == ["Haar box crop)"]}
        checked = {c["model"].split("/", 1)[1]: c["images"] for c in results.get("crop_consistency", [])
                   if "mae_through_pipeline" in c and c["model"] in {f"{protocol}/{n}" for n in plain}}
        for group, extra in (([n for n in plain if n not in haar and n not in checked], []),
                             ([n for n in plain if n in haar and n not in checked], ["--cross-compare"])):
            commands += [shlex.join(argv + [",".join(group), *extra])] if group else []
        commands += [shlex.join(argv + [n, *(["--cross-compare"] if n in haar else []), "--crop-check", str(images)])
                     for n, images in checked.items()]
    return commands


def cross_reading(results, shipped):
    fgnet = results.get("cross", {}).get("FGNET", {})
    lines = []
    for key, r in fgnet.items():
        box = fgnet.get(f"{key} (Haar box crop)")
        if box:
            lines.append(f"- `{key}`: {box['mae']:.2f} with a Haar box and a square crop → {r['mae']:.2f} with the "
                         f"model's own crop; at least one face box in {r['faces_found']:.1%} of the photos instead of "
                         f"{box['faces_found']:.1%}.")
    if shipped in fgnet:
        r, zoomed = shipped_figures(results, shipped)[1], results.get("shipped_zooms")
        how = "" if r is fgnet[shipped] else (f" with its test-time zooms {zoomed['zooms']} ({fgnet[shipped]['mae']:.2f} "
                                              f"without{rules_note(fgnet[shipped], r)})")
        worst = sorted(r["mae_per_decade"].items(), key=lambda kv: -kv[1])[:2]
        older = sum(bool(rules_note(row, r)) for row in fgnet.values())
        if older:
            lines.append(f"- {older} of the table's {len(fgnet)} rows were measured under other rules of `inference.py` "
                         f"than the shipped model's figure below (a minimum face of {r.get('min_face', 0)} px, a dark "
                         f"floor of {r.get('dark_floor', 0):g}); each row's record in bench/results.json names its own "
                         "(none: before 2026-12-04, when faces of any size were estimated and dim faces were not "
                         "brightened).")
        lines.append(f"- FG-NET target (MAE ≤ {TARGETS['fgnet_mae']:.1f}): "
                     f"{reached(r['mae'] <= TARGETS['fgnet_mae'])}; the shipped model (`{shipped}`) has "
                     f"{r['mae']:.2f}{how}, worst in " + " and ".join(f"{k} ({v:.1f})" for k, v in worst) +
                     ". FG-NET differs from UTKFace in more than the crop: scanned prints, grain, colour casts, gray "
                     "photos and a child-heavy age range.")
        if "mean_error_per_decade" in r:
            signed = r["mean_error_per_decade"]
            largest = max(signed, key=lambda k: abs(signed[k]))
            lines.append("- Its signed error per decade (predicted − true; positive: estimated too old): "
                         + ", ".join(f"{k} {v:+.1f}" for k, v in signed.items())
                         + f"; the largest bias is {signed[largest]:+.1f} years, in {largest}.")
    for c in results.get("crop_consistency", []):
        if "gap_same_light" in c:
            light = c["gap"] - c["gap_same_light"]
            larger = "detection and alignment" if c["gap_same_light"] >= light else "light"
            lines.append(f"- What a real photo's crop costs (`{c['model']}`): UTKFace test faces found again in scenes "
                         f"are predicted {c['gap_same_light']:+.2f} years worse than the files at the original "
                         f"brightness (detection and alignment), {c['gap']:+.2f} with the scenes' random brightness "
                         f"(light adds {light:+.2f}); {larger} costs more.")
    return lines + ["- The largest face of a photo is taken as the labelled person; FG-NET has a few photos where "
                    "it is not."]


def cross_section(sources):
    results = sources["results"]
    tables = cross_table(results)
    if not tables:
        return []
    return ["## Real photos: FG-NET and the face crop", "",
            "The Protocol F models on FG-NET (1,002 scanned photos of 82 people, read in place) through "
            "`inference.py`'s own pipeline (detect, align, preprocess, predict; a photo without a face is counted, "
            "not guessed), once with the model's own crop and once with a Haar box and a square crop; and Protocol "
            "F test faces pasted into the scenes of Face detection, compared with the files themselves.", "",
            *code_block(cross_commands(results)), "", tables, "", *cross_reading(results, sources["shipped"]),
            *cross_filter_lines(results)]


def cross_filter_lines(results) -> list:
    """--cross-filters' table: FG-NET with each face filtered before the model's own preprocessing."""
    runs = results.get("cross_filters", {}).get("FGNET", {})
    if not runs:
        return []
    lines = ["", "### What moves the estimate on a scanned photo", "",
             "The same FG-NET faces, each filtered after alignment and before the model's own preprocessing "
             "(`benchmark.chip_filters`). A diagnosis of which property of a scanned print pushes the estimate up or down; "
             "none of these filters is part of the pipeline, and no model is chosen on these figures.", ""]
    lines += code_block([f"python benchmark.py --cross ../shared/data/FGNET --protocols F --models "
                         f"{','.join(k.split('/', 1)[1] for k in runs)} --cross-filters"])
    for key, figures in runs.items():
        decades = sorted({d for f in figures.values() for d in f["mean_error_per_decade"]}, key=lambda d: int(d.split("-")[0]))
        decades = [d for d in decades if int(d.split("-")[0]) < 50]  # FG-NET has few faces above 50
        lines += ["", f"`{key}` ({next(iter(figures.values()))['n']} faces):", "",
                  f"| face filtered first | FG-NET MAE | signed error {', '.join(decades)} (+: too old) |",
                  "|---|---|---|"]
        lines += [f"| {name} | {f['mae']:.2f} | "
                  f"{', '.join(format(f['mean_error_per_decade'].get(d, float('nan')), '+.1f') for d in decades)} |"
                  for name, f in figures.items()]
        as_is = figures.get("as is")
        if as_is:  # the direction each filter moves the estimate: mean signed error over the listed decades
            def shift(f):
                return np.mean([f["mean_error_per_decade"][d] - as_is["mean_error_per_decade"][d] for d in decades
                                if d in f["mean_error_per_decade"] and d in as_is["mean_error_per_decade"]])
            moves = sorted(((shift(f), n) for n, f in figures.items() if n != "as is"), key=lambda m: m[0])
            lines += ["", "Mean shift of the signed error per decade against the face as is: " +
                      ", ".join(f"{n} {m:+.1f}" for m, n in moves) + " years. A filter that lowers the MAE by "
                      "lowering every estimate corrects the bias toward older ages, not the model."]
    return lines


def detection_section(sources):
    import bench_detection
    import faces
    detection = sources["detection"]
    if not detection:
        return []
    sc = detection["scenes"]
    lines = ["## Face detection", "",
             f"Scenes: UTKFace chips pasted into {sc['canvas'][0]}×{sc['canvas'][1]} random backgrounds at "
             f"{sc['face_fraction_of_height'][0]:.0%}–{sc['face_fraction_of_height'][1]:.0%} of the height, tilted up "
             f"to ±{sc['max_tilt_degrees']:g}°, the scene darker or brighter (gain {sc['gain'][0]}–{sc['gain'][1]}); a "
             "face is found when a box is centred on it and of its size, every other box is false. Faceless: other random "
             "backgrounds of the same kind, without a face, at normal brightness. Sideways: the same scenes turned a "
             "quarter, one way and the other in turn (a photo saved sideways without an EXIF tag). FG-NET: its full "
             "scanned photos, counted as found where at least one box is (not checked against the face's "
             "position).", "",
             *code_block([bench_detection.command(detection)]), "", bench_detection.detector_table(detection), "",
             "- **`auto`** (the default) is a cascade: dlib's HOG detector and, in a second thread meanwhile, Haar "
             "proposals for faces under HOG's ~80 px window, each checked by HOG on an enlarged patch; only where "
             "nothing was found (no box that the size filters and the caller's keep), passes at a lower threshold on a "
             "contrast-equalised copy, cheapest first, each only if the ones before found "
             "nothing: HOG on the photo, Haar down to 20 px, HOG on a padded copy, HOG on copies turned by ±25°; then HOG at its own threshold on copies turned by ±90° "
             f"(sideways photos without an EXIF tag), also where those passes' best box scores under "
             f"{faces.WEAK_FALLBACK_SCORE:g} (a weak box elsewhere hid a sideways face), the stronger kept. "
             "The faceless column shows what that costs in invented boxes.",
             "- `hog` alone misses small, dark and tilted faces; `haar` alone finds small faces but also false boxes "
             "and misses tilted ones; `mmod` (dlib's CNN) finds the most but costs seconds per photo on a CPU."]
    e2e = detection.get("end_to_end")
    if e2e:
        lines.append(f"- **End to end** (`{e2e.get('detector', 'auto')}`, detect → landmarks → chip → preprocess → `{e2e['model']}`, ONNX "
                     f"Runtime) on the {e2e['n']} scenes: median {e2e['ms_per_photo_median']:.1f} ms per photo, mean "
                     f"{e2e['ms_per_photo_mean']:.1f}, 90th percentile {e2e['ms_per_photo_p90']:.1f}; target "
                     f"{TARGETS['end_to_end_ms']} ms: median "
                     f"{reached(e2e['ms_per_photo_median'] <= TARGETS['end_to_end_ms'])}, mean "
                     f"{reached(e2e['ms_per_photo_mean'] <= TARGETS['end_to_end_ms'])} (the fallback passes run where "
                     "the first pass finds nothing)." + zoom_cost_text(e2e))
    lines += size_light_lines(detection) + dark_floor_lines(sources["results"])
    crops = bench_detection.crop_table(detection)
    if crops:
        lines += ["", "## Which crop to use", "", "UTKFace files re-chipped from a border-padded copy and compared "
                  "with the file (same command):", "", crops, "",
                  "UTKFace-trained models use `utkface`, UTKFace's own recipe. The 68-point landmark model was trained "
                  "on iBUG 300-W, whose terms exclude commercial use (and UTKFace itself is for non-commercial research "
                  "only). Commercial users training on their own licensed photos run `eda.py --align --align-crop "
                  "utkface5`: dlib's 5-point model (CC0 training data) with a template fitted on UTKFace's chips "
                  "(`python bench_detection.py --fit-chip5 300` prints it); it is less exact per face."]
    return lines


def size_light_lines(detection) -> list:
    """RESULTS.md's words for bench_detection.py --size-light: the age error by face size and brightness, and the
    --min-face default it sets."""
    import bench_detection
    import inference
    r = detection.get("size_light")
    if not r:
        return []
    return ["", "## How small and how dark a face can be", "",
            f"{r['n']} UTKFace files, each pasted upright into random scenes at each size (at their own brightness) "
            f"and at {r['light_side']} px with the scene darker or brighter, through `inference.py`'s pipeline with "
            "no `--min-face`; the age error of the faces found, against the files given directly"
            + (" (the last column: the same faces without the dark floor, `--dark-floor 0`)" if r.get("dark_floor")
               else "") + ":", "",
            *code_block([f"python bench_detection.py --size-light {r['n']} --model {r['model']}"
                         + (f" --seed {r['seed']}" if r.get("seed", 0) else "")]), "",
            bench_detection.size_light_table(r and {"size_light": r}), "",
            f"`inference.py` drops (and counts) faces whose box is under {inference.DEFAULT_MIN_FACE} px by default "
            "(`--min-face`; 0 keeps them; not with `--whole-image`, whose input is a crop): smaller boxes' error is far "
            "above the large faces', and the interval, calibrated on full-size faces, would not say so. In a dim "
            "photo the face is found, but the model never saw a face that dark (training varied brightness by ±20%). "
            + (f"`inference.py` brightens a face whose exposure (the 95th percentile of its luma) is under "
               f"{r['dark_floor']:g} to it, by at most ×{MAX_LIFT:g} (`--dark-floor`)"
               + (f", a floor at percentile {DARK_FLOOR_PERCENTILE:g} of UTKFace's faces "
                  f"({r['luma_percentiles'][str(DARK_FLOOR_PERCENTILE)]:.1f})"
                  if str(DARK_FLOOR_PERCENTILE) in (r.get("luma_percentiles") or {}) else "")
               + ", so that the faces the model learnt from pass unchanged; the bright end of a face rather than "
               "its mean, so that a dark-skinned face in good light is not taken for a dim photo. " if r.get("dark_floor")
               else "")
            + "Over-exposure (×1.8) is not undone."]


def mobile_section(sources):
    mobile = sources["mobile"]
    if not mobile:
        return []
    lat = mobile["latency"]
    argv = ["python", "export_mobile.py", "--checkpoint", mobile["checkpoint"]] + (["--quantize"] if mobile.get("int8") else [])
    lines = ["## Mobile exports", "", *code_block([shlex.join(argv)]), "",
             f"Batch {lat['batch']}, {lat['image_size']} px, {lat['threads']} thread(s), median of {lat['runs']} runs:", "",
             "| file | format | size | latency (median) | p90 |", "|---|---|---|---|---|"]
    lines += [f"| `{r['file']}` | {r['format']} | {r['size_bytes'] / 1024:,.0f} KB | {r['latency_ms_median']:.2f} ms | "
              f"{r['latency_ms_p90']:.2f} ms |" for r in lat["rows"]]
    q = mobile.get("int8")
    if q:
        lines += ["", f"int8 costs {q['val_mae_int8'] - q['val_mae_float']:+.3f} years of validation MAE "
                  f"({q['val_mae_float']:.3f} → {q['val_mae_int8']:.3f}, n = {q['val_n']:,}; largest per-image "
                  f"difference {q['max_abs_diff_vs_float']:.2f} years; {q['calibration_images']} calibration images). "
                  "Both figures are one view per face (no flip averaging): they set int8 against float, not against "
                  "the validation MAE of the tables above." + mobile_provenance(mobile)]
    return lines


def mobile_provenance(mobile) -> str:
    """A record older than export_mobile's weights digest cannot tell whether the run it names was trained again
    since (RESULTS.md is made from the records alone, never from the runs under WORK)."""
    if "weights" in mobile:
        return f" Weights `{mobile['weights'][:12]}` (the digest in each export's metadata)."
    return (" This record keeps no weights digest: the run it names may have been trained again since, and the "
            "command would then measure other weights.")


def search_section(sources):
    search = sources["search"]
    best, sweep, grid = search["best"], search["lr_sweep"], search["grid"]
    if not best or not sweep:
        return []
    argv = ["python", "hyperparameter_tunning.py", "--splits", "bench/work/S/splits", "--model", best["model"],
            "--out-dir", "bench/work/S/search", "--lrs", ",".join(r["lr"] for r in sweep),
            "--weight-decays", ",".join(dict.fromkeys(r["weight_decay"] for r in grid)),
            "--epochs-per-trial", str(best["trial_epochs"]), "--subset-fraction", str(best["subset_fraction"]),
            "--top-lrs", str(len({r["lr"] for r in grid}))]
    # a search from before skip_final was recorded: a final that never ran is told by its empty result
    argv += ["--skip-final"] if best.get("skip_final", best.get("final") is None) else []
    overfit = best["overfit_check"]
    argv += ["--skip-overfit"] if overfit is None else []
    argv += ["--head", best["head"], "--loss", best["loss"], *SEARCH_RECIPE]
    lines = ["## Hyper-parameter search", "",
             f"On Protocol S, sized for a 2-core CPU ({best['subset_fraction']:.0%} of the training split, "
             f"{best['trial_epochs']} epochs per trial); selection on validation only.", "",
             *code_block([shlex.join(argv)]), "",
             "| trial | lr | weight decay | val MAE | val CS@5 | train MAE | seconds |", "|---|---|---|---|---|---|---|"]
    for step, rows in (("lr sweep", sweep), ("weight-decay grid", grid)):
        lines += [f"| {step}{' (the sweep trial)' if r.get('source') == 'lr_sweep' else ''} | {r['lr']} | {r['weight_decay']} | {float(r['val_mae']):.3f} | {float(r['val_cs5']):.1%} | "
                  f"{float(r['train_mae']):.3f} | {r['seconds']} |" for r in rows]
    lines += ["", "- Overfit check: skipped (`--skip-overfit`)." if overfit is None else
              f"- Overfit check: {'passed' if overfit['passed'] else 'failed'}, training MAE "
              f"{overfit['final_mae']:.2f} after {overfit['steps']} steps.",
              f"- Chosen ({best['selected_by']}): lr {best['lr']:g}, weight decay {best['weight_decay']:g} "
              f"(val MAE {best['val_mae']:.3f}); the CSVs and `best_params.json` are copied to `bench/`.", ""]
    return lines + figures("search")


SECTIONS = (data_section, models_section, shipped_section, experiments_section, bias_section, speed_section, cross_section,
            detection_section, mobile_section, search_section)


def results_markdown(sources) -> str:
    """RESULTS.md: every table and write-up, from load_sources()."""
    results = sources["results"]
    parts = [section(sources) for section in SECTIONS]
    titles = [p[0][3:] for p in parts if p]
    head = ["# Results", "",
            "Every figure of this project on real faces. Generated by `python benchmark.py --table` from "
            "`bench/results.json`, `bench/detection.json` and the search and export records in `bench/`: do not "
            "edit by hand. Each table names the command that produced it."
            + (f" Machine: {results['machine']}; latest full run {results['date']}." if "machine" in results else ""),
            "", " · ".join(f"[{t}](#{anchor(t)})" for t in titles)]
    return "\n".join(head + [line for p in parts if p for line in ["", *p]]) + "\n"


def anchor(title):
    """GitHub's anchor of a heading."""
    import re
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def zoom_cost_share(cost) -> float:
    """bench_detection.py --zoom-cost: the zooms' paired extra time as a share of the time without them."""
    return cost["paired_difference_median_ms"] / cost["ms_per_photo_median_without"]


def zoom_cost_text(e2e) -> str:
    """RESULTS.md's words for bench_detection.py --zoom-cost, where it ran after the end-to-end figures above."""
    cost = e2e.get("zoom_cost")
    if not cost:
        return ""
    zooms = e2e.get("tta_zoom", [])  # records older than this key were measured without zooms
    measured = f"with the zooms {', '.join(f'{z:g}' for z in zooms)}" if zooms else "without test-time zooms"
    return (f" Those figures were measured {measured}. `python bench_detection.py --zoom-cost --model "
            f"{cost['model']}` timed the chain with the model's zooms ({', '.join(f'{z:g}' for z in cost['zooms'])}) "
            f"and without them, alternating, on the same {cost['n']} scenes on {cost['date']}: median "
            f"{cost['ms_per_photo_median_with']:.1f} against {cost['ms_per_photo_median_without']:.1f} ms per photo, "
            f"a paired difference of {cost['paired_difference_median_ms']:.1f} ms ({zoom_cost_share(cost):+.0%}). "
            "This machine's speed changes from day to day, so the two sets of figures differ in more than the zooms: "
            "compare the pair with each other.")


def headline_block(sources) -> str:
    """The README's "Results at a glance": a few headline figures, between README_START and README_END."""
    results, detection, shipped = sources["results"], sources["detection"], sources["shipped"]
    protocols = results.get("protocols", {})
    rows = []
    if shipped:
        p = shipped.split("/")[0]
        r, fg = shipped_figures(results, shipped)
        if r:
            rows.append(f"| the shipped model (`models/`, `{shipped}`) | UTKFace test MAE **{r['test_mae']:.2f}** years, "
                        f"CS@5 {r['test_cs5']:.1%} (n = {r['test_images']:,}, ages "
                        f"{results['data'][p]['age']['min']}–{results['data'][p]['age']['max']}) |")
        if fg:
            rows.append(f"| the same on FG-NET (another data set, through `inference.py`) | MAE {fg['mae']:.2f}, a face box "
                        f"in {fg['faces_found']:.1%} of {fg['photos']:,} photos |")
        if r and "interval" in r:
            rows.append(f"| its age interval at {r['interval']['level']:.0%} (calibrated on validation) | covers "
                        f"{r['interval']['coverage']:.1%} of test ages, {r['interval']['mean_width']:.1f} years wide "
                        "on average |")
    s_best = chosen_on_validation(protocols.get("S", {}))
    if s_best:
        r = protocols["S"][s_best]
        teachers = teachers_minutes(protocols["S"], r)
        extra = ([f"{teachers:.0f} min for its teachers"] if teachers else []) + (
            ["GPU-trained teachers: `bench/gpu_teachers.py`"] if "gpu_teachers" in (recorded_args(r).teacher or "") else [])
        digest = r.get("split_faces_digest")  # a re-run on another split has other test faces: not set beside it
        again = [x["test_mae"] for x in results.get("reruns", {}).get(f"S/{s_best}", []) if "test_mae" in x
                 and x.get("split_faces_digest") == digest]
        rows.append(f"| best on ages 20–50 (Protocol S, `{s_best}`, chosen on validation) | test MAE "
                    f"{r['test_mae']:.2f}" + (f" ({', '.join(f'{t:.2f}' for t in again)} when trained again)"
                                             if again else "")
                    + f"; `model.jit` {latency_per_face(protocols['S'], s_best)}, "
                    f"{r['train_minutes']:.0f} min of training on a CPU"
                    + (f" (plus {', and '.join(extra)})" if extra else "") + " |")
    if detection:
        auto, e2e = detection["detectors"].get("auto"), detection.get("end_to_end")
        if auto:
            rows.append(f"| face detection (`auto`) | {auto['scenes']['detection_rate']:.1%} of faces found in "
                        f"test scenes, {auto['faceless']['false_boxes_per_image']:.3f} false boxes per faceless scene |")
        if e2e:
            cost = e2e.get("zoom_cost")
            rows.append(f"| photo → age, end to end | median {e2e['ms_per_photo_median']:.0f} ms per 640×480 photo "
                        "on a CPU" + ("" if not cost or e2e.get("tta_zoom") else
                                      f" (without test-time zooms; they add {zoom_cost_share(cost):.0%}, RESULTS.md)")
                        + " |")
    lines = [README_START, "<!-- generated by `python benchmark.py --table` from bench/; do not edit -->"]
    if rows:
        lines += ["| | |", "|---|---|", *rows]
    return "\n".join(lines + [README_END])


def replace_marked_block(text, block) -> str:
    """text with everything from README_START to README_END (both included) replaced by block, which
    starts and ends with the markers itself."""
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise DataError(f"no {README_START} ... {README_END} block to rewrite")
    return text[:start] + block + text[end + len(README_END):]


def write_tables(args):
    """--table: print the main tables, write RESULTS.md and the README's results block (atomically)."""
    sources = load_sources(args)
    results = sources["results"]
    for text in (table(results), ablation_table(results), cross_table(results)):
        print(text, end="\n\n")
    markdown = results_markdown(sources)
    atomic_write(args.results_md, lambda f: f.write(markdown.encode()))
    print(f"wrote {args.results_md}")
    readme = Path(args.readme)
    if readme.is_file():
        old = readme.read_text()
        new = replace_marked_block(old, headline_block(sources))
        if new != old:
            atomic_write(readme, lambda f: f.write(new.encode()))
        print(f"rewrote the results block of {readme}" if new != old else f"{readme}'s results block is current")
    refresh_model_card(results, Path(args.results_md).parent)
    return markdown


def refresh_model_card(results, root: Path):
    """models/README.md written again from results.json and the shipped export's own metadata, nothing
    measured, so that the card follows model_card's wording without shipping the model again; left alone where
    root ships no model of a run results.json records (the export's metadata is read, never run)."""
    import faces
    card_path, onnx_path = root / SHIPPED.parent / "README.md", root / SHIPPED.with_suffix(".onnx")
    zooms = results.get("shipped_zooms")
    shipped = zooms["run"] if zooms else shipped_run(card_path)
    if shipped is None or not card_path.is_file() or not onnx_path.is_file():
        return
    protocol, name = shipped.split("/")
    entry = results.get("protocols", {}).get(protocol, {}).get(name)
    cross = results.get("cross", {}).get("FGNET", {}).get(shipped)
    metadata = onnx_metadata(onnx_path)
    if entry is None or cross is None or not metadata or protocol not in results.get("data", {}):
        print(f"{card_path} left as it is: results.json no longer records all of {shipped}")
        return
    if not_the_records(entry, metadata.get("weights")):
        print(f"{card_path} left as it is: {shipped} was trained again after it was shipped (other weights); "
              f"ship it again (benchmark.py --ship {shipped}) or ship another run")
        return
    card = model_card(protocol, name, entry, cross, results["data"][protocol], metadata,
                      faces.describe_crop(metadata["crop"]), zooms, teachers_retrained(results["protocols"][protocol], entry))
    changed = card != card_path.read_text()
    if changed:
        atomic_write(card_path, lambda f: f.write(card.encode()))
    print(f"rewrote {card_path}" if changed else f"{card_path} is current")


def selection(args):
    """The checked --protocols and --models lists (and the UTKFace folder, which every mode below needs)."""
    if not Path(args.data_dir).is_dir():
        raise DataError(f"UTKFace folder not found: {args.data_dir} (pass --data-dir)")
    protocols = ["S"] if args.quick else [p.strip() for p in args.protocols.split(",") if p.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for name in models:
        if name not in MODELS:
            raise DataError(f"unknown benchmark model {name!r}; choose from {', '.join(MODELS)}")
    for p in protocols:
        if p not in PROTOCOLS:
            raise DataError(f"unknown protocol {p!r}; choose S or F")
    return protocols, models


def results_path(args):
    return Path(args.out) if not args.quick else Path(args.out).with_name("results_quick.json")


def run_probes(args):
    """--probes"""
    results = load_results(args.out)
    results["probes"] = speed_probes()
    save_results(args.out, results)
    print(json.dumps(results["probes"], indent=1))


def run_cross(args, protocols, models):
    """--cross DIR [--crop-check N]"""
    results = load_results(args.out)
    check_cross(args, Path(args.work_dir), results, Path(args.out))
    if args.crop_check:
        check_crops(args, Path(args.work_dir), protocols[-1], models[-1], results, Path(args.out))


def run_ablations(args):
    """--ablations NAMES"""
    out_path, work = results_path(args), Path(args.work_dir)
    results = load_results(out_path)
    names = [a.strip() for a in args.ablations.split(",") if a.strip()]
    for name in names:
        if name not in ABLATIONS and name not in LONG_ABLATIONS:
            raise DataError(f"unknown ablation {name!r}; choose from {', '.join([*ABLATIONS, *LONG_ABLATIONS])}")
    splits = work / "S" / "splits"
    if not (splits / "train.csv").is_file():
        raise DataError(f"no Protocol S splits in {splits}; run `python benchmark.py --protocols S` first")
    digest = train.split_faces_digest(splits)
    for name in names:
        missing = missing_reference(results, name, names, digest)
        if missing:
            raise DataError(f"--ablations {name}: {missing}")
    for name in names:
        family = "ablations" if name in ABLATIONS else "long_ablations"
        print(f"== ablation {name}: {(ABLATIONS | LONG_ABLATIONS)[name][0]}", flush=True)
        results.setdefault(family, {})[name] = run_ablation(name, splits, work, args.quick)
        print(json.dumps(results[family][name]), flush=True)
        save_results(out_path, results)
    print(ablation_table(results))


def missing_reference(results, name, names, digest) -> str | None:
    """What an ablation would be judged against and lacks on the split under WORK (faces digest `digest`), with
    the command that trains it; None where its reference is there or is trained first in the same call (names)."""
    if name in ABLATIONS:
        reference, record = "base", results.get("ablations", {}).get("base")
    else:
        reference = LONG_ABLATION_BASES.get(name, "simplecnn_tuned")
        record = (results.get("protocols", {}).get("S", {}) if reference == "simplecnn_tuned"
                  else results.get("long_ablations", {})).get(reference)
    if name == "base" or reference in names[:names.index(name)] or (
            record is not None and same_split(record.get("split_faces_digest"), digest, results)):
        return None
    train_it = ("python benchmark.py --protocols S --models simplecnn_tuned" if reference == "simplecnn_tuned"
                else f"python benchmark.py --ablations {reference}")
    return (f"it is judged against {reference}, which has no run on the Protocol S split under WORK "
            f"(it is not recorded, or was trained on an earlier split); train it first: {train_it}")


def zoom_predictions(estimator, dataset, label) -> dict:
    """{zoom set ("none" for the face alone): ages} of a split's faces under each of ZOOM_CANDIDATES, through
    inference.py's own averaging (the export's flip setting stays); each set's MAE is printed. The estimator
    is left with its zooms as they were."""
    from custom_dataset import parse_zooms
    own, true, predictions = estimator.tta_zoom, dataset.ages.numpy(), {}
    try:
        for zooms in ZOOM_CANDIDATES:
            estimator.tta_zoom = parse_zooms(zooms)
            predictions[zooms or "none"] = pred = estimator.predict_inputs(np.asarray(dataset.images))
            print(f"{label}, zooms {zooms or 'none'}: MAE {np.mean(np.abs(pred - true)):.3f}", flush=True)
    finally:
        estimator.tta_zoom = own
    return predictions


def dark_floor_check(splits, results, out_path, model=None) -> dict:
    """--dark-floor-check: the shipped export (or `model`) on the test split's faces, given directly, once with
    inference.py's dark floor and once without: MAE overall, per race, and of the faces the floor brightens. The
    floor is judged by its exposure (the bright end of a face) so that a dark-skinned face in good light passes
    unchanged; this measures whether it does."""
    from custom_dataset import load_rgb
    from inference import AgeEstimator
    model = Path(model or SHIPPED.with_suffix(".onnx"))
    records = read_split(Path(splits) / "test.csv")
    estimator = AgeEstimator(model, whole_image=True, threads=torch.get_num_threads())
    floor = estimator.dark_floor
    if not floor:
        raise DataError(f"{model} turns the dark floor off (its metadata's dark_floor is 0): nothing to check")
    chips = [load_rgb(r["path"]) for r in records]
    true = np.array([r["age"] for r in records], dtype=np.float64)
    errors = {}
    for key, value in (("with", floor), ("without", 0.0)):
        estimator.dark_floor = value
        errors[key] = np.abs(np.concatenate([estimator.predict_inputs(estimator.model_inputs(chips[i:i + 256]))
                                             for i in range(0, len(chips), 256)]) - true)
    # the very faces the export's own test figure was measured on, or the check compares nothing it knows
    recorded = estimator.metadata.get("test_mae")
    if isinstance(recorded, (int, float)) and abs(float(errors["without"].mean()) - recorded) > 0.002:
        raise DataError(f"{model}: test MAE {errors['without'].mean():.3f} on {splits}, but {recorded:.3f} when it was "
                        "made: these are not its splits (re-run its eda.py command)")
    changed = np.array([exposure_luma(c) < floor for c in chips])  # lift_dark's own test, not the lifting again
    races = np.array([r.get("race") or "not recorded" for r in records])
    pair = lambda mask: {k: round(float(errors[k][mask].mean()), 3) if mask.any() else None for k in errors}
    record = {"model": str(model), "dark_floor": floor, "n": len(records), "mae": pair(np.ones(len(records), bool)),
              "brightened": int(changed.sum()), "mae_brightened": pair(changed),
              "mae_per_race": {race: pair(races == race) for race in sorted(set(races))},
              "command": "python benchmark.py --dark-floor-check"}
    results["dark_floor_check"] = record
    save_results(out_path, results)
    print(json.dumps(record))
    return record


def dark_floor_lines(results) -> list:
    """RESULTS.md's words for --dark-floor-check ([] where it has not run)."""
    r = results.get("dark_floor_check")
    if not r:
        return []
    fmt = lambda pair: f"{pair['with']:.3f} with the floor, {pair['without']:.3f} without"
    races = "; ".join(f"{race}: {fmt(pair)}" for race, pair in r["mae_per_race"].items())
    return ["", f"`inference.py`'s dark floor ({r['dark_floor']:g}) on Protocol F's test faces, given directly to "
                f"`{r['model']}` (`{r['command']}`): "
                f"MAE {fmt(r['mae'])}; it brightens {r['brightened']} of the {r['n']:,} faces"
                + (f" ({fmt(r['mae_brightened'])})" if r["brightened"] else "") + f". Per race: {races}."]


def ship_zooms(args, work, results, out_path):
    """--ship-zooms: the shipped model's test-time zooms chosen after training, on Protocol F's validation split
    (the set of ZOOM_CANDIDATES with the lowest MAE; the face alone is one of them), its age interval refitted on
    the validation predictions with those zooms; then its test split and FG-NET measured once with them. The
    exports in models/ get the zooms (and the new interval and figures) in their metadata, results.json a
    "shipped_zooms" record, and the model card is written again."""
    import faces
    from custom_dataset import load_split_dataset, parse_zooms
    from functions import fit_interval, group_metrics, interval_metrics, regression_metrics
    from inference import AgeEstimator
    shipped = shipped_run(SHIPPED.parent / "README.md")
    if shipped is None:
        raise DataError(f"no model card in {SHIPPED.parent}; ship a model first (benchmark.py --ship F/NAME)")
    protocol, name = shipped.split("/")
    entry = results.get("protocols", {}).get(protocol, {}).get(name)
    if entry is None or shipped not in results.get("cross", {}).get("FGNET", {}):
        raise DataError(f"{args.out} has no results or no FG-NET figure for the shipped {shipped}; pass the --out "
                        "it was shipped from")
    splits = work / protocol / "splits"
    if not (splits / "test.csv").is_file():
        raise DataError(f"no Protocol {protocol} splits in {splits}; run `python benchmark.py --protocols {protocol}` "
                        "(or its eda.py command) first")
    onnx_path = SHIPPED.with_suffix(".onnx")
    estimator = AgeEstimator(onnx_path, whole_image=True, threads=torch.get_num_threads())
    metadata = dict(estimator.metadata)
    if not_the_records(entry, metadata.get("weights")):  # the card would mix two models' figures
        raise DataError(f"{shipped} was trained again after it was shipped (other weights than {onnx_path}); ship it "
                        f"again (benchmark.py --ship {shipped}) first")
    val, test = (load_split_dataset(splits / f"{split}.csv", estimator.cfg, splits.parent / "cache", progress=False)
                 for split in ("val", "test"))
    true = val.ages.numpy()
    if not isinstance(metadata.get("val_mae"), (int, float)):
        raise DataError(f"{onnx_path} does not record its validation MAE; ship it again with benchmark.py --ship")
    if metadata.get("age_map"):  # fitted on these very faces: zooms and interval would be judged in-sample
        raise DataError(f"{onnx_path} carries an age map fitted on the validation split, so zooms chosen there would be "
                        "judged in-sample; train it with train.py --choose-zooms instead")
    val_pred = zoom_predictions(estimator, val, f"{protocol} val")
    chosen, exact = lowest_mae_zoom_set(val_pred, true)
    val_mae = {z: round(mae, 3) for z, mae in exact.items()}
    # the export's recorded figure, with its own views (zooms an earlier --ship-zooms gave it included), must come
    # out again: the same weights on the split they were validated on
    own_key = ",".join(f"{z:g}" for z in estimator.tta_zoom) or "none"
    own_pred = val_pred.get(own_key)
    if own_pred is None:  # zooms outside the candidates: one more pass
        own_pred = estimator.predict_inputs(np.asarray(val.images))
    own = float(np.mean(np.abs(own_pred - true)))
    recorded = metadata.get("val_mae_views", metadata["val_mae"])  # older exports: no map, the same figure
    if abs(own - recorded) > 0.002:
        raise DataError(f"{onnx_path}: validation MAE {own:.3f} on {splits}, but {recorded:.3f} when it "
                        "was made: these are not its splits (re-run its eda.py command)")
    zooms = parse_zooms("" if chosen == "none" else chosen)
    level = entry["interval"]["level"] if "interval" in entry else INTERVAL_LEVEL
    interval = fit_interval(val_pred[chosen], true)
    estimator.tta_zoom = zooms
    test_pred, test_true = estimator.predict_inputs(np.asarray(test.images)), test.ages.numpy()
    figures = regression_metrics(test_pred, test_true)
    fgnet = cross_dataset(onnx_path, args.cross or "../shared/data/FGNET", zooms=zooms)
    metadata.update(tta_zoom=list(zooms), interval=interval, test_mae=figures["mae"], val_mae=exact[chosen],
                    val_mae_views=exact[chosen])
    record = {"run": shipped, "zooms": chosen, "val_mae": val_mae,
              "test": {"mae": round(figures["mae"], 3), "cs5": round(figures["cs5"], 4), "n": figures["n"],
                       "mae_per_decade": {k: round(v["mae"], 2) for k, v in figures["mae_per_bin"].items()},
                       "mean_error_per_decade": {k: round(v["mean_error"], 2)
                                                 for k, v in group_metrics(test_pred, test_true)["decade"].items()}},
              "interval": {k: round(v, 3) for k, v in interval_metrics(test_pred, test_true, interval, level).items()
                           if k != "coverage_per_decade"},
              "fgnet": fgnet, "command": "python benchmark.py --ship-zooms"}
    for suffix in (".onnx", ".jit"):
        rewrite_export_metadata(SHIPPED.with_suffix(suffix), metadata)
    results["shipped_zooms"] = record
    save_results(out_path, results)
    card = model_card(protocol, name, entry, results["cross"]["FGNET"][shipped],
                      results["data"][protocol], metadata, faces.describe_crop(metadata["crop"]), record,
                      teachers_retrained(results["protocols"][protocol], entry))
    atomic_write(SHIPPED.parent / "README.md", lambda f: f.write(card.encode()))
    print(f"{shipped}: zooms {chosen} (validation MAE {val_mae[chosen]:.3f}, the face alone {val_mae['none']:.3f}); "
          f"test MAE {record['test']['mae']:.2f}, FG-NET {fgnet['mae']:.2f} -> {onnx_path}, "
          f"{SHIPPED.with_suffix('.jit')}, {SHIPPED.parent / 'README.md'}")
    return record


def run_zoom_probe(args, protocols):
    """--zoom-probe MODEL.onnx"""
    from custom_dataset import load_split_dataset, parse_zooms
    from inference import AgeEstimator
    out_path, work, protocol = results_path(args), Path(args.work_dir), protocols[-1]
    splits = work / protocol / "splits"
    if not (splits / "val.csv").is_file():
        raise DataError(f"no Protocol {protocol} splits in {splits}; run `python benchmark.py --protocols {protocol}` "
                        "(or its eda.py command) first")
    results = load_results(out_path)
    estimator = AgeEstimator(args.zoom_probe, whole_image=True, threads=torch.get_num_threads())
    val = load_split_dataset(splits / "val.csv", estimator.cfg, splits.parent / "cache", progress=False)
    true = val.ages.numpy()
    _, exact = lowest_mae_zoom_set(zoom_predictions(estimator, val, f"{protocol} val"), true)
    figures = {zooms: round(mae, 3) for zooms, mae in exact.items()}
    results.setdefault("zoom_probe", {})[f"{protocol}:{args.zoom_probe}"] = {
        "val_mae": figures, "tta_flip": bool(estimator.metadata.get("tta_flip")), "images": len(true),
        "command": f"python benchmark.py --zoom-probe {args.zoom_probe} --protocols {protocol}"}
    save_results(out_path, results)


def not_the_records(entry, digest) -> bool:
    """Whether weights of this digest are not those a results entry records (False for a record from before
    weights were recorded: nothing to compare)."""
    return entry.get("weights") not in (None, digest)


def other_weights(entry, run_dir) -> str | None:
    """Why RUN/best.pt is not the run its results entry records (trained again since, or stopped after
    train.py finished but before benchmark.py recorded it), judged by weights where the entry records them;
    None where it is, or where the entry is from before weights were recorded."""
    if "weights" not in entry:
        return None
    from checkpoints import weights_digest
    if not_the_records(entry, weights_digest(load_checkpoint(Path(run_dir) / "best.pt")["model_state"])):
        return f"{Path(run_dir) / 'best.pt'} holds other weights than its record in results.json (trained again since?)"
    return None


def why_not_here(results, work, protocol, name, split_digest) -> str | None:
    """Why WORK/P/NAME is not the recorded run of P's split that --calibrate and --refresh-exports may rewrite
    and record: no best.pt, no record of it, or a record of another split than the one under WORK/P (whose
    split_faces_digest is split_digest); None where it is."""
    entry = results.get("protocols", {}).get(protocol, {}).get(name)
    if not (work / protocol / name / "best.pt").is_file():
        return f"no best.pt under {work / protocol / name}"
    if entry is None:
        return f"no record of it on Protocol {protocol}'s split"
    if why := unfinished(work / protocol / name) or other_weights(entry, work / protocol / name):
        return why
    recorded = entry.get("split_faces_digest")
    if recorded is not None and recorded != split_digest:
        return f"its record is of another split than {work / protocol / 'splits'}"
    return None


def run_calibrate(args, protocols, models):
    """--calibrate"""
    out_path, work = results_path(args), Path(args.work_dir)
    results = load_results(out_path)
    for protocol in protocols:
        split_digest = train.split_faces_digest(work / protocol / "splits")
        for name in models:
            if why := why_not_here(results, work, protocol, name, split_digest):  # it rewrites best.pt: never
                print(f"--calibrate skipped {protocol}/{name}: {why}")  # another split's, nor a run still training
                continue
            figures = calibrate_run(protocol, name, work)
            results["protocols"][protocol][name].update(figures)
            print(protocol, name, json.dumps({k: figures[k] for k in ("interval", "isotonic")}), flush=True)
            save_results(out_path, results)


def run_refresh(args, protocols, models):
    """--refresh-exports"""
    out_path, work = results_path(args), Path(args.work_dir)
    results = load_results(out_path)
    skipped = []
    for protocol in protocols:
        split_digest = train.split_faces_digest(work / protocol / "splits")
        for name in models:  # a run not trained here is named and passed over, not the end of the refresh
            why = why_not_here(results, work, protocol, name, split_digest)
            if why:
                skipped.append(f"{protocol}/{name}")
                print(f"skipped {protocol}/{name}: {why} (train it with python benchmark.py --protocols {protocol} "
                      f"--models {name})", flush=True)
                continue
            print(protocol, name, json.dumps(refresh_exports(protocol, name, work, results)))
            save_results(out_path, results)
    if skipped:
        print(f"refreshed all but {len(skipped)}: {', '.join(skipped)}")
    if args.crop_check:
        check_crops(args, work, protocols[-1], models[-1], results, out_path)
    print(table(results))


def eda_argv(data_dir, work, protocol):
    """eda.py's arguments for a protocol's split (seed 42, the protocol's age range)."""
    return ["--data-dir", str(Path(data_dir)), "--out-dir", str(Path(work) / protocol), "--seed", "42", "--no-progress",
            *PROTOCOLS[protocol]]


def goes_on(run_dir, args) -> bool:
    """Whether run_dir holds this very run killed before its end (a last.pt of the same settings and split, no
    metrics.json): a benchmark stopped by a reboot then goes on from its last epoch (train_minutes sums every
    epoch's time). A finished run, or one of other settings (a --quick one), is trained again from epoch 1."""
    last = Path(run_dir) / "last.pt"
    if not last.is_file() or (Path(run_dir) / "metrics.json").is_file():
        return False
    from checkpoints import load_checkpoint
    try:
        saved = load_checkpoint(last)
    except Exception as exc:  # a last.pt that does not load is trained over, as before
        print(f"note: {last} does not load ({type(exc).__name__}); training from epoch 1")
        return False
    if train.changed_settings(saved.get("config", {}), args) or saved.get("split_digest") != \
            train.split_digest(args.splits) or train.precision_changed(saved, args) or \
            train.teachers_changed(run_dir, args.teacher, saved):
        print(f"note: {last} is of other settings, split, precision or teachers; training from epoch 1")
        return False
    print(f"{run_dir} holds this run, stopped at epoch {saved['epoch']}: it goes on from there")
    return True


def split_faces(splits) -> dict:
    """{face key (eda.py's content hash): split name} of a split folder's three CSVs."""
    return {train.face_key(row): name for name in ("train", "val", "test")
            for row in train.split_csv_rows(Path(splits) / f"{name}.csv")}


def run_data_check(args, protocols):
    """--data-check: each protocol's split made again by today's eda.py and set beside the split under
    WORK/P/splits (the one its recorded runs were trained and tested on): results["data_check"][P]."""
    import tempfile
    out_path, work = results_path(args), Path(args.work_dir)
    results = load_results(out_path)
    for protocol in protocols:
        used = work / protocol / "splits"
        if not (used / "test.csv").is_file():
            raise DataError(f"no Protocol {protocol} split in {used} to compare with; run `python benchmark.py "
                            f"--protocols {protocol}` first")
        recorded = results.get("data", {}).get(protocol, {}).get("split_faces_digest")
        earlier = results.get("data_check", {}).get(protocol, {})
        if recorded is not None and train.split_faces_digest(used) != recorded or \
                recorded is None and earlier.get("same_split") is False:  # a --rerun's eda.py may have rewritten it
            raise DataError(f"{used} is not known to be the split the recorded Protocol {protocol} runs used (another "
                            "eda.py run rewrote it); there is nothing to compare today's split with")
        with tempfile.TemporaryDirectory(prefix=f".data_check_{protocol}_", dir=work) as tmp:
            report = eda.main(eda.get_args_parser().parse_args(eda_argv(args.data_dir, tmp, protocol)))
            today = split_faces(Path(tmp) / protocol / "splits")
        before = split_faces(used)
        common = today.keys() & before.keys()
        results.setdefault("data_check", {})[protocol] = {
            "date": datetime.date.today().isoformat(), "used": report["used"], "splits": report["splits"],
            "duplicates": report["duplicates"], "used_before": len(before),
            "same_split": today == before, "faces_only_before": len(before.keys() - today.keys()),
            "faces_only_today": len(today.keys() - before.keys()),
            "faces_in_another_split": sum(today[h] != before[h] for h in common),
            "split_faces_digest": train.split_faces_digest(used),  # the split it was set beside
            "command": f"python benchmark.py --data-check --protocols {protocol}"}
        print(f"{protocol}: " + json.dumps(results["data_check"][protocol]))
        save_results(out_path, results)


def data_check_lines(results) -> list:
    """Where today's eda.py makes another split than the recorded runs used, and by how much."""
    lines = []
    for protocol, c in results.get("data_check", {}).items():
        recorded = results.get("data", {}).get(protocol, {})
        if None not in (recorded.get("split_faces_digest"), c.get("split_faces_digest")) and \
                recorded["split_faces_digest"] != c["split_faces_digest"]:
            continue  # a check of a split the recorded runs no longer use
        if c["same_split"]:
            lines.append(f"- Protocol {protocol}: today's `eda.py` makes the very split its runs used (checked "
                         f"{c['date']}, `{c['command']}`).")
            continue
        s = c["splits"]
        text = (f"- Protocol {protocol}: today's `eda.py` makes {c['used']:,} images ({s['train']:,} / {s['val']:,} / "
                f"{s['test']:,}) against the {c['used_before']:,} its recorded runs were trained and tested on "
                f"({c['faces_only_before']:,} faces only there, {c['faces_only_today']:,} only today, "
                f"{c['faces_in_another_split']:,} of the rest in another split; checked {c['date']}, `{c['command']}`).")
        groups_then = recorded.get("duplicates", {}).get("conflict_groups_dropped")
        groups_now = c["duplicates"]["conflict_groups_dropped"]
        if groups_then is not None and groups_now - groups_then == c["used_before"] - c["used"] > 0:
            text += (f" The difference is the conflicting-duplicates rule: an image whose byte-identical copy "
                     f"carries an age outside the protocol's range is now dropped ({groups_then} → {groups_now} "
                     f"groups); before, the age filter hid one of the two labels.")
        lines.append(text + f" Figures of Protocol {protocol} on this page are from the split the runs used.")
    return lines


EARLIER_SPLIT = re.compile(r"^(?P<protocol>\S+) \(earlier split, to (?P<date>\d{4}-\d\d-\d\d)(?:, #(?P<n>\d+))?\)$")


def earlier_split_label(protocol, date, n=1) -> str:
    """The key a protocol's runs of an earlier split are kept under; n counts the splits retired that day."""
    return f"{protocol} (earlier split, to {date}" + (f", #{n})" if n > 1 else ")")


def protocol_of(key) -> str:
    """The protocol of a results key: itself, or the protocol of an earlier-split label."""
    match = EARLIER_SPLIT.match(key)
    return match["protocol"] if match else key


def retire_earlier_split(results, protocol, digest, date) -> str | None:
    """Where eda.py has made another split of a protocol than its recorded runs used, those runs and every record
    made on that split (data, --data-check, re-runs, zoom probes, FG-NET figures) move under a label of their own
    ("S (earlier split, to DATE)"), so the protocol's own key holds runs of one split: no table sets test figures
    of other faces side by side as one protocol, and no validation choice or target verdict spans two splits.
    Returns the label, or None (the same split, nothing recorded, or a split that is not known)."""
    models = results.get("protocols", {}).get(protocol)
    data = results.get("data", {}).get(protocol, {})
    check = results.get("data_check", {}).get(protocol, {})
    before = data.get("split_faces_digest") or check.get("split_faces_digest")
    # runs recorded before splits had digests: --data-check said whether today's eda.py makes their split
    other = before != digest if before is not None else check.get("same_split") is False
    if not models or not other:
        return None
    n = 1
    while earlier_split_label(protocol, date, n) in results["protocols"]:
        n += 1
    label = earlier_split_label(protocol, date, n)
    results["protocols"] = renamed_key(results["protocols"], protocol, label, keep_old=True)
    if protocol in results.get("data", {}):  # run_protocol writes today's record in the place kept
        results["data"] = renamed_key(results["data"], protocol, label, keep_old=True)
    if check and check.get("split_faces_digest") == data.get("split_faces_digest"):  # the check of that split
        results["data_check"] = renamed_key(results["data_check"], protocol, label)
    relabel(results.get("reruns", {}), f"{protocol}/", label)
    relabel(results.get("zoom_probe", {}), f"{protocol}:", label)
    for section in ("cross", "cross_filters"):  # one table per data set, keyed "P/NAME"
        for figures in results.get(section, {}).values():
            relabel(figures, f"{protocol}/", label)
    for check in results.get("crop_consistency", []):  # measured on that split's test faces
        if check.get("model", "").startswith(f"{protocol}/"):
            check["model"] = label + check["model"][len(protocol):]
    shipped = results.get("shipped_zooms")
    if shipped and shipped.get("run", "").startswith(f"{protocol}/"):  # its plain figures moved with the run
        shipped["run"] = label + shipped["run"][len(protocol):]
    return label


def relabel(records, prefix, label):
    """Records keyed "P/..." or "P:..." (prefix) moved, in place, to the same key under label."""
    for key in [k for k in records if k.startswith(prefix)]:
        records[label + key[len(prefix) - 1:]] = records.pop(key)


def renamed_key(mapping, old, new, keep_old=False) -> dict:
    """mapping with key old renamed new in its place; keep_old: old stays just before it, emptied (the
    protocol's rows on today's split come first)."""
    out = {}
    for k, v in mapping.items():
        if k == old and keep_old:
            out[old] = {}
        out[new if k == old else k] = v
    return out


def earlier_splits(protocols, protocol) -> list:
    """The keys of a protocol's earlier splits (retire_earlier_split), oldest first."""
    keys = [(m["date"], int(m["n"] or 1), k) for k in protocols if (m := EARLIER_SPLIT.match(k)) and
            m["protocol"] == protocol]
    return [k for *_, k in sorted(keys)]


def first_split(protocols, protocol, name) -> str:
    """The key of the first split of a protocol that holds run `name` (its earlier splits, oldest first, then
    its own key; that key where none does): the ablations record no split, and were all trained on Protocol S's
    first one, beside the finals they led to."""
    return next((k for k in [*earlier_splits(protocols, protocol), protocol] if name in protocols.get(k, {})),
                protocol)


def latest_runs(protocols, protocol) -> dict:
    """A protocol's runs on its own split, or, while it has none yet, on its latest earlier split."""
    earlier = earlier_splits(protocols, protocol)
    return protocols.get(protocol) or (protocols[earlier[-1]] if earlier else {})


def run_protocol(args, protocol, models, results, out_path):
    """One protocol of the full benchmark: split by eda.py, loader speed (S), train each model."""
    work = Path(args.work_dir)
    report = eda.main(eda.get_args_parser().parse_args(eda_argv(args.data_dir, work, protocol)))
    splits = work / protocol / "splits"
    label = retire_earlier_split(results, protocol, train.split_faces_digest(splits), datetime.date.today().isoformat())
    if label:
        print(f"note: today's eda.py made another Protocol {protocol} split than its recorded runs used; they are "
              f"kept as \"{label}\" in {out_path}, and Protocol {protocol} starts afresh on today's split")
    results["protocols"].setdefault(protocol, {})
    results.setdefault("data", {})[protocol] = {k: report[k] for k in ("used", "splits", "duplicates", "age")}
    results["data"][protocol]["test_mae_of_train_median"] = median_baseline(splits)
    results["data"][protocol]["split_faces_digest"] = train.split_faces_digest(splits)  # --data-check compares it
    if protocol == "S" and not args.no_speed:
        results["speed"] = loader_speed(splits, work / protocol / "cache")
        print("loader:", json.dumps(results["speed"]))
        save_results(out_path, results)
    for name in models:
        print(f"== protocol {protocol}, {name}")
        forget_figures_of(results, f"{protocol}/{name}")
        entry = run_model(protocol, name, model_args(name), splits, work, args.epochs, args.quick)
        if "command" in entry and teacher_names(entry):  # the minutes of the teachers that taught it, before any is retrained
            entry["teachers_minutes"] = round(teachers_minutes(results["protocols"][protocol], entry), 2)
        results["protocols"][protocol][name] = entry
        save_results(out_path, results)  # before the print: a closed pipe (| tee) never costs hours of training
        print(json.dumps(results["protocols"][protocol][name], indent=1))
    if args.crop_check:
        check_crops(args, work, protocol, models[-1], results, out_path)


# what a re-run keeps of run_model's figures: enough to set it beside the recorded run
RERUN_KEYS = ("best_val_mae", "best_epoch", "test_mae", "test_cs5", "train_minutes", "train_images_per_s",
              "split_faces_digest",
              "teacher_val_mae", "command")


def run_rerun(args, protocols, models):
    """--rerun: recorded finals trained again, by today's code on today's machine, from a fresh split (eda.py,
    seed 42), into WORK/P/rerun/NAME, with the teachers now under WORK/P. The figures go to
    results["reruns"]["P/NAME"], a list beside the recorded run, which stays as it was."""
    out_path = results_path(args)
    results = load_results(out_path)
    work = Path(args.work_dir)
    for protocol in protocols:
        for name in models:
            if name not in results.get("protocols", {}).get(protocol, {}):
                raise DataError(f"--rerun: {protocol}/{name} has no recorded result to compare with; train it first "
                                f"(python benchmark.py --protocols {protocol} --models {name})")
            eda.main(eda.get_args_parser().parse_args(eda_argv(args.data_dir, work, protocol)))
            run_dir = work / protocol / "rerun" / name
            print(f"== re-run of protocol {protocol}, {name}")
            figures = run_model(protocol, name, model_args(name), work / protocol / "splits", work,
                                run_dir=run_dir)
            record = {"date": datetime.date.today().isoformat(),
                      "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                      **{k: figures[k] for k in RERUN_KEYS if k in figures}}
            results.setdefault("reruns", {}).setdefault(f"{protocol}/{name}", []).append(record)
            save_results(out_path, results)
            print(json.dumps(record, indent=1))


def split_digests(results, protocol, recorded, rerun) -> tuple:
    """The faces digests of the splits a recorded run and its re-run used, for rerun_lines to compare; None where
    not known. Runs recorded before runs kept a digest, while their protocol's data record keeps none either,
    are spoken for by --data-check: the split it compared (the one under WORK then, which they used), and where
    it found today's eda.py to make another split, a re-run from that day on (the check's day counts) is not
    on theirs."""
    data = results.get("data", {}).get(protocol, {})
    # where the data record keeps a digest, a check names the split it compared, and that may be an older one
    check = {} if data.get("split_faces_digest") else results.get("data_check", {}).get(protocol, {})
    digest = recorded.get("split_faces_digest") or check.get("split_faces_digest")
    if digest is None and check.get("same_split") is False and rerun.get("date", "") >= check.get("date", "9999"):
        digest = "the recorded runs' split"  # not that day's eda.py's split
    return digest, rerun.get("split_faces_digest")


def rerun_lines(results) -> list:
    """Each re-run of a final beside the run as recorded: how far the same command lands on another day."""
    lines = []
    for key, reruns in results.get("reruns", {}).items():
        protocol, name = key.split("/", 1)
        recorded = results.get("protocols", {}).get(protocol, {}).get(name)
        if recorded is None:
            continue
        for r in reruns:
            teachers = (f"its teachers' validation {recorded['teacher_val_mae']:.3f} → {r['teacher_val_mae']:.3f}, "
                        if r.get("teacher_val_mae") is not None and recorded.get("teacher_val_mae") is not None
                        else "")
            test = f", test {recorded['test_mae']:.2f} → **{r['test_mae']:.2f}**" if "test_mae" in r else ""
            # the split is made again by the day's eda.py: "the same" only where it is known to be
            digests = split_digests(results, protocol, recorded, r)
            if digests[0] == digests[1]:  # both known and equal, or both older records (the split of those days)
                split, reading = "the same split", ("The same command does not give the same weights on another "
                                                    "day, so a difference of this size between two finals is not "
                                                    "evidence.")
            elif None in digests:
                split, reading = ("a split made again by that day's eda.py", "It is not known to be the recorded "
                                  "split, so the two test figures may be of different faces.")
            else:
                split, reading = ("another split (that day's eda.py made a different one)",
                                  "Different test faces: the two test figures are not comparable.")
            lines.append(f"- **Re-run** `{name}`, Protocol {protocol}, on {r['date']} (`python benchmark.py --rerun "
                         f"--protocols {protocol_of(protocol)} --models {name}`; the same recipe and seed, {split}, "
                         f"today's code and machine): {teachers}validation {recorded['best_val_mae']:.3f} → "
                         f"{r['best_val_mae']:.3f} (best epoch {recorded['best_epoch']} → {r['best_epoch']}){test}. "
                         + reading)
    return lines


def run_benchmark(args, protocols, models):
    """The default mode: split, train and measure every listed model of every listed protocol."""
    out_path = results_path(args)
    results = load_results(out_path)
    results.update({"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                               f"torch {torch.__version__}", "date": datetime.date.today().isoformat()})
    for protocol in protocols:
        run_protocol(args, protocol, models, results, out_path)
    print(table(results))
    print(f"wrote {out_path}")


def main(args):
    if args.quick:  # its 2-epoch runs must never stand in WORK/P/NAME, where students and --cross take runs from
        if args.cross or args.ship or args.ship_zooms or args.dark_floor_check:
            raise DataError("--quick trains smoke runs; --cross, --ship, --ship-zooms and --dark-floor-check read "
                            "finished runs: leave --quick out")
        args.work_dir = str(Path(args.work_dir) / "quick")
    if args.table:
        return write_tables(args)
    if args.probes:
        return run_probes(args)
    protocols, models = selection(args)
    if args.ship_zooms:
        return ship_zooms(args, Path(args.work_dir), load_results(args.out), Path(args.out))
    if args.dark_floor_check:
        return dark_floor_check(Path(args.work_dir) / "F" / "splits", load_results(args.out), Path(args.out))
    if args.cross:
        return run_cross(args, protocols, models)
    if args.ship:
        return ship(args, Path(args.work_dir), load_results(args.out))
    if args.ablations:
        return run_ablations(args)
    if args.refresh_exports:
        return run_refresh(args, protocols, models)
    if args.calibrate:
        return run_calibrate(args, protocols, models)
    if args.zoom_probe:
        return run_zoom_probe(args, protocols)
    if args.rerun:
        return run_rerun(args, protocols, models)
    if args.data_check:
        return run_data_check(args, protocols)
    return run_benchmark(args, protocols, models)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
