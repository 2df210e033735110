"""Train an age regressor on the splits written by eda.py, test the best epoch once, export it.

    python train.py --splits OUT/splits --model simplecnn --epochs 20 --out-dir RUN [--resume]
    torchrun --nproc_per_node 4 train.py ...   (DistributedDataParallel: one process per GPU, or per CPU share)

Writes into RUN: config.json (every setting, versions, git commit, split hashes), best.pt and last.pt
(atomic, self-describing), TensorBoard events (tensorboard --logdir RUN), learning_curves.png,
history.json, metrics.json, pred_vs_true.png and groups.png (test split, best epoch, with the median baseline),
model.jit and model.onnx.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import sys
import time
from pathlib import Path

from cli import MODEL_NAMES, ArgumentParser, lazy_import, run_cli  # first: cli._missing_package_hook
import numpy as np

from custom_dataset import (MAX_DENOISE_STRENGTH, AugmentConfig, DataError, PreprocessConfig, channel_stats,
                            labelled_folder_above, load_split_dataset, make_loader, parse_zooms, unreadable_split,
                            dark_floor_of)
from checkpoints import (export_best, load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint,
                         weights_digest)
from functions import (INTERVAL_LEVEL, LABEL_SIGMA, NonFiniteLossError, atomic_write, folder_lock, same_or_inside,
                       Distributed,
                       gaussian_targets,
                       apply_age_map, broadcast_buffers, calibrate_ages, configure_threads, evaluate, evaluate_sharded,
                       face_grid_figure, forwarding_ddp, group_metrics, interval_metrics, metrics_of_predictions,
                       plot_groups, plot_learning_curves, plot_pred_vs_true, predict_distributions, predict_loader,
                       public, reduce_train_metrics, set_rng_state, set_seed, test_time_views, train_one_epoch,
                       lowest_mae_zoom_set, ZOOM_CANDIDATES)
from faces import read_split_crop

# imported on first use, so that --help answers without torch (model.py imports it as it loads)
torch = lazy_import("torch")
models = lazy_import("model")

AUGMENTATIONS = {
    "none": AugmentConfig.off(),
    "light": AugmentConfig(flip=True, max_rotate=0.0, max_shift=0.0, max_scale=0.0, brightness=0.0, contrast=0.0),
    "default": AugmentConfig(),
    "strong": AugmentConfig(flip=True, max_rotate=15.0, max_shift=0.08, max_scale=0.15, brightness=0.3, contrast=0.3),
    # default plus 20 % gray images: real photos include scans and old prints (FG-NET: most of them)
    "photo": AugmentConfig(grayscale=0.2),
    # default plus 30 % of images lowered in resolution and grained, as old scans are (FG-NET's young faces
    # are estimated 5-9 years too old)
    "scan": AugmentConfig(degrade=0.3),
    # both: photos that are gray, scanned, or both
    "photo_scan": AugmentConfig(grayscale=0.2, degrade=0.3),
    # photo_scan plus 30 % of images with film grain: luminance blobs of 1-3 px, which the models without it
    # read as wrinkles, i.e. as age
    "photo_scan_grain": AugmentConfig(grayscale=0.2, degrade=0.3, grain=0.3),
}


def augmentation(args) -> AugmentConfig:
    """The --augment preset with --erase on top."""
    return dataclasses.replace(AUGMENTATIONS[args.augment], erase=args.erase)


def zoom_list(text: str) -> str:
    """--tta-zoom's type: the zooms checked and written back as one string, which configs, resume checks
    and recipe_argv carry as they carry any other setting."""
    try:
        return ",".join(f"{z:g}" for z in parse_zooms(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_recipe_args(parser):
    """The settings a model learns from, besides the per-run epochs, lr, weight decay and seed: the
    one definition used by train.py, hyperparameter_tunning.py (passed to every trial) and benchmark.py.
    Every other option says where and how fast a run goes."""
    g = parser.add_argument_group("recipe: input and augmentation")
    g.add_argument("--image-size", type=int, default=128, help="network input side in pixels")
    # denoise/deblur off by default: on UTKFace turning them off lowered validation MAE by 0.10 years
    # (RESULTS.md, ablations); --denoise --deblur give the seed's preprocessing back
    g.add_argument("--denoise", action=argparse.BooleanOptionalAction, default=False,
                   help="non-local-means denoising (the seed's)")
    g.add_argument("--denoise-strength", type=float, default=5.0, help="non-local-means h")
    g.add_argument("--deblur", action=argparse.BooleanOptionalAction, default=False,
                   help="unsharp mask after resizing (the seed's)")
    g.add_argument("--augment", choices=tuple(AUGMENTATIONS), default="default",
                   help="training-only augmentation strength (never applied to val/test)")
    g.add_argument("--erase", type=float, default=0.0,
                   help="share of training images with one random rectangle turned to noise (random erasing), "
                        "on top of --augment; 0 = off")
    g.add_argument("--mixup", type=float, default=0.0,
                   help="C-Mixup: blend each training image with one of a similar age, weights from "
                        "Beta(MIXUP, MIXUP) (e.g. 0.2); 0 = off")
    g.add_argument("--balance", action="store_true",
                   help="age-balanced sampling: each epoch draws as many images as the split has, with every "
                        "decade of age equally likely (rare ages repeat, common ones are subsampled)")
    g = parser.add_argument_group("recipe: model and loss")
    g.add_argument("--model", default="simplecnn", help=f"one of {', '.join(MODEL_NAMES)}")
    g.add_argument("--head", choices=("regression", "distribution"), default="distribution",
                   help="one output, or softmax over ages with expected value (label distribution)")
    g.add_argument("--pretrained", action="store_true", help="ResNets only: start from torchvision ImageNet weights")
    g.add_argument("--weights", default=None, help="ResNet: local ImageNet weights file (offline --pretrained)")
    g.add_argument("--dropout", type=float, default=0.0,
                   help="SimpleCNNs only: dropout before the fully connected layers (0: the model's own, i.e. none, or "
                        "0.3 for simplecnn_bn)")
    g.add_argument("--batch-size", type=int, default=64,
                   help="images per step per process: under torchrun the global batch is --batch-size x "
                        "processes (the learning rate is not rescaled; raise --lr yourself if wanted)")
    g.add_argument("--loss", choices=("l1", "mse", "huber"), default="mse", help="loss on the predicted age")
    g.add_argument("--schedule", choices=("constant", "cosine"), default="cosine",
                   help="learning rate after warm-up: constant, or cosine decay to zero")
    g.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up length")
    g.add_argument("--ema", type=float, default=0.0,
                   help="decay of an exponential moving average of the weights, updated every step (e.g. 0.999), "
                        "bias-corrected so that the first steps' weights do not dominate a short run; validation, "
                        "test and exports then use the averaged weights; 0 = off")
    g.add_argument("--label-sigma", type=float, default=LABEL_SIGMA,
                   help="distribution head: years of spread of the Gaussian it learns around each true age")
    g.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=True,
                   help="average each prediction with its mirror image (validation, test, exports)")
    g.add_argument("--tta-zoom", type=zoom_list, default=None,
                   help="test-time zooms also averaged: comma-separated shares of the side kept around the centre "
                        "and resized back, e.g. 0.95,0.9 (each is flipped too with --tta-flip; validation, test, "
                        "exports; at most 4); none: the image alone")
    g.add_argument("--teacher", default=None,
                   help="distillation: comma-separated best.pt of runs on the same splits (averaged: an ensemble), "
                        "or teacher.npz tables such runs wrote (several: their mean); the student also learns their "
                        "age distributions")
    g.add_argument("--teacher-weight", type=float, default=0.5,
                   help="share of every training target that is the teacher's (the rest is the label's)")
    g.add_argument("--teacher-online", action="store_true",
                   help="--teacher checkpoints predict every training batch as the student sees it (augmented, "
                        "mixed), one view, instead of once on the clean faces: consistent teaching; costs one "
                        "forward pass per teacher per batch")
    return parser


def add_cache_workers_arg(group):
    """--cache-workers, shared with the tuner (its trials build and read the same cache)."""
    group.add_argument("--cache-workers", "--workers", dest="workers", type=int, default=2,
                       help="processes that build the preprocessing cache")


def get_args_parser():
    p = ArgumentParser(description=__doc__)
    g = p.add_argument_group("data")
    g.add_argument("--splits", required=True, help="folder with train.csv, val.csv, test.csv from eda.py")
    g.add_argument("--cache-dir", default=None, help="preprocessing cache (default: SPLITS/../cache)")
    g.add_argument("--data-description", default=None,
                   help="one line on the training data, stored in every export and printed by inference.py "
                        "(default: made from eda.py's data_report.json; given with --resume, it describes the "
                        "exports made then)")
    g.add_argument("--subset-fraction", type=float, default=1.0,
                   help="train on a seeded random share of the training split (quick searches)")
    add_recipe_args(p)
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=20, help="passes over the training split")
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW decoupled weight decay")
    g.add_argument("--seed", type=int, default=42, help="seeds weights, shuffling and augmentation")
    g = p.add_argument_group("run")
    g.add_argument("--out-dir", required=True, help="run folder: checkpoints, logs, figures, exports")
    g.add_argument("--resume", action="store_true", help="continue from OUT/last.pt (with --teacher checkpoints, "
                   "OUT/teacher.npz is read back while their weights are unchanged)")
    g.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out-dir that holds an earlier run, removing its checkpoints, exports, "
                        "metrics, figures and TensorBoard logs first (without it or --resume such a folder is refused)")
    g.add_argument("--device", default="auto",
                   help="auto, cpu or cuda (under torchrun, auto and cuda mean cuda:LOCAL_RANK)")
    g.add_argument("--amp", action="store_true",
                   help="bf16 autocast for the training forward pass, on CUDA or on a CPU with native bf16 "
                        "(AVX-512 BF16 or AMX: faster training, RESULTS.md measures it); ignored, with a note, on other CPUs. "
                        "Weights, evaluation, checkpoints and exports stay float32")
    g.add_argument("--dist-backend", default="auto",
                   help="torchrun only: process-group backend, auto = nccl on CUDA, gloo on CPU")
    g.add_argument("--dist-timeout", type=float, default=60.0,
                   help="torchrun only: minutes a rank waits at a barrier (e.g. while rank 0 builds the cache)")
    g.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (default: all cores, divided among a node's torchrun processes)")
    add_cache_workers_arg(g)
    g.add_argument("--interval-level", type=float, default=INTERVAL_LEVEL,
                   help="coverage of the age interval reported on the test split (the calibration on the "
                        "validation split travels in best.pt and every export; inference picks its own level)")
    g.add_argument("--age-map", choices=("auto", "off"), default="auto",
                   help="auto: fit an isotonic map from predicted to true age on the validation split and keep it "
                        "(in best.pt and every export) only if it lowers the worst decade's MAE without raising "
                        "the overall MAE by more than 0.05, judged by 2-fold cross-fitting on validation")
    g.add_argument("--choose-zooms", action="store_true",
                   help="after training, the test-time zoom set with the lowest validation MAE at the best epoch "
                        "(functions.ZOOM_CANDIDATES, the image alone included) is kept for the test split and the "
                        "exports: --tta-zoom's gain without its cost in every epoch's validation; with --resume, "
                        "also for a run that has finished")
    g.add_argument("--no-test", action="store_true", help="skip the test split (used by the search)")
    g.add_argument("--no-export", action="store_true", help="skip model.jit / model.onnx")
    g.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard events into RUN")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


def preprocess_config(args) -> PreprocessConfig:
    return PreprocessConfig(image_size=args.image_size, denoise=args.denoise,
                            denoise_strength=args.denoise_strength, deblur=args.deblur)


def check_numbers(args):
    """One line naming the first setting that cannot work (instead of a ZeroDivisionError later)."""
    rules = [("--batch-size", args.batch_size >= 1, "at least 1"), ("--epochs", args.epochs >= 1, "at least 1"),
             ("--seed", args.seed >= 0, "0 or more"),  # numpy refuses a negative seed, but only later
             ("--lr", math.isfinite(args.lr) and args.lr > 0, "a positive number"),
             ("--weight-decay", math.isfinite(args.weight_decay) and args.weight_decay >= 0, "0 or more"),
             ("--image-size", 16 <= args.image_size <= 1024, "between 16 and 1024"),
             ("--warmup-epochs", 0 <= args.warmup_epochs <= args.epochs, "between 0 and --epochs"),
             ("--interval-level", 0 < args.interval_level < 1, "between 0 and 1 (e.g. 0.9)"),
             ("--ema", 0 <= args.ema < 1, "0 (off) or a decay below 1 (e.g. 0.999)"),
             ("--teacher-weight", 0 <= args.teacher_weight <= 1, "between 0 (labels only) and 1 (teacher only)"),
             ("--denoise-strength", not args.denoise or 0 < args.denoise_strength <= MAX_DENOISE_STRENGTH,
              f"a number in (0, {MAX_DENOISE_STRENGTH}]"),
             ("--overwrite", not (args.overwrite and args.resume), "left out with --resume (which continues the run)"),
             ("--label-sigma", math.isfinite(args.label_sigma) and args.label_sigma > 0, "a positive number of years"),
             ("--choose-zooms", not (args.choose_zooms and args.tta_zoom), "not given with --tta-zoom (it chooses them)"),
             ("--erase", 0 <= args.erase <= 1, "a share between 0 and 1"),
             ("--dropout", 0 <= args.dropout < 1, "a share between 0 and 1 (0: the model's own)"),
             ("--dropout", args.dropout == 0 or args.model.startswith("simplecnn"),
              "0 with a ResNet, which has no dropout layer"),
             ("--pretrained", not args.pretrained or not args.model.startswith("simplecnn"),
              "left out with a SimpleCNN: ImageNet weights exist for the ResNets only"),
             ("--mixup", math.isfinite(args.mixup) and args.mixup >= 0, "0 (off) or a Beta parameter (e.g. 0.2)"),
             ("--subset-fraction", math.isfinite(args.subset_fraction) and 0 < args.subset_fraction <= 1,
              "in (0, 1]"),
             ("--weights", not args.weights or not args.model.startswith("simplecnn"),
              "left out with a SimpleCNN: it takes torchvision's ResNet weights only"),
             ("--teacher-online", not args.teacher_online or bool(args.teacher) and not teacher_is_table(args.teacher),
              "used with --teacher checkpoints (best.pt), which it runs on every batch; a teacher.npz holds clean "
              "faces only")]
    for flag, ok, rule in rules:
        if not ok:
            raise DataError(f"{flag} must be {rule}, got {getattr(args, flag[2:].replace('-', '_'))} "
                            "(see train.py --help)")


def eval_batch(args) -> int:
    """Images per forward pass when predicting without gradients: 4x the training batch (no activations
    are kept), at most 256; a --batch-size lowered to fit memory lowers it too."""
    return max(1, min(256, 4 * args.batch_size))


def lr_lambda(total_steps: int, warmup_steps: int, schedule: str):
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """auto -> cuda if torch sees one, else cpu. Under torchrun (local_rank given) cuda means cuda:LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DataError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    if name == "cuda" and local_rank is not None:
        if local_rank >= torch.cuda.device_count():
            raise DataError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices on this "
                            "node; lower torchrun --nproc_per_node")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def setup_distributed(args) -> Distributed:
    """Under torchrun (WORLD_SIZE > 1 in the environment): this rank's device and the process group.
    Without it: rank 0 of 1, no group, nothing else changes."""
    env = os.environ
    if int(env.get("WORLD_SIZE", "1")) <= 1 or "RANK" not in env:
        return Distributed(device=resolve_device(args.device))
    import torch.distributed as dist
    rank, local_rank, world = int(env["RANK"]), int(env.get("LOCAL_RANK", "0")), int(env["WORLD_SIZE"])
    local_world = int(env.get("LOCAL_WORLD_SIZE", "1"))
    device = resolve_device(args.device, local_rank)
    backend = args.dist_backend if args.dist_backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=args.dist_timeout))
    return Distributed(rank, local_rank, world, local_world, device, backend)


def main(args):
    """Train in this process, or as one rank of a torchrun launch. Only rank 0 prints, writes and
    exports; the process group is closed on every exit, errors included."""
    check_settings(args)  # before torch loads (setup_distributed): a typo is answered at once, not in 3 s
    refuse_earlier_run(args)
    refuse_output_in_data(args.out_dir, args.splits)
    refuse_output_in_data(cache_folder(args), args.splits, CACHE_FLAG)
    dist_ctx = setup_distributed(args)
    try:
        if not dist_ctx.active:
            with folder_lock(args.out_dir):
                return train_run(args, dist_ctx)
        args = argparse.Namespace(**vars(args))
        if args.threads is None:  # torch's default (all cores) in every process would oversubscribe the node
            args.threads = max(1, (os.cpu_count() or 1) // dist_ctx.local_world_size)
        if dist_ctx.is_main:
            with folder_lock(args.out_dir):
                return train_run(args, dist_ctx)
        args.no_progress = True
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            return train_run(args, dist_ctx)
    finally:
        dist_ctx.close()


def recipe_defaults() -> dict:
    """Every recipe setting (add_recipe_args) with its default."""
    return vars(add_recipe_args(argparse.ArgumentParser()).parse_args([]))


def recipe_keys() -> tuple:
    return tuple(recipe_defaults())


def recipe_argv(args) -> list:
    """train.py arguments that reproduce args' recipe (add_recipe_args) exactly."""
    argv = []
    for action in add_recipe_args(argparse.ArgumentParser())._actions:
        value = getattr(args, action.dest, None)
        flag = action.option_strings[0]
        if action.dest == "help":
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(flag if value else "--no-" + flag[2:])
        elif action.nargs == 0:  # store_true
            argv += [flag] if value else []
        elif value is not None:
            argv += [flag, repr(value) if isinstance(value, float) else str(value)]
    return argv


# What a resumed run must share with the checkpoint: the recipe and the run's learning settings.
# Everything else (device, threads, logging, what to do at the end) may change between sessions.
RESUME_CHECKED = ("splits", "subset_fraction", "epochs", "lr", "weight_decay", "seed")


def ineffective_as_default(key, value, config: dict):
    """A setting the model had no use for (--dropout of a ResNet, --pretrained of a SimpleCNN), which runs
    started before check_numbers refused it recorded, read as its default: such a run resumes without it."""
    simple = str(config.get("model", "")).startswith("simplecnn")
    if (key == "dropout" and not simple) or (key == "pretrained" and simple):
        return get_args_parser().get_default(key)
    return value


def changed_settings(saved: dict, args) -> list:
    """(name, saved value, new value) of every training setting that differs from a checkpoint's."""
    changed = []
    for key in sorted(RESUME_CHECKED + recipe_keys()):
        if key not in saved or not hasattr(args, key):  # older checkpoints lack newer settings
            continue
        old, new = ineffective_as_default(key, saved[key], saved), getattr(args, key)
        same = Path(old).resolve() == Path(new).resolve() if key == "splits" else old == new
        if not same:
            changed.append((key, old, new))
    return changed


def split_digest(splits) -> str:
    """Content hash of the three split CSVs: a resumed run must see the split it started with."""
    import hashlib
    digest = hashlib.sha256()
    for name in ("train.csv", "val.csv", "test.csv"):
        path = Path(splits) / name
        digest.update(path.read_bytes() if path.is_file() else b"-")
    return digest.hexdigest()


def split_faces_digest(splits) -> str:
    """Which faces (by content hash) are in train, val and test: unlike split_digest, the same on a
    machine where the data set lies elsewhere, so a teacher trained there can be checked here."""
    import hashlib
    digest = hashlib.sha256()
    for name in ("train.csv", "val.csv", "test.csv"):
        path, keys = Path(splits) / name, ["-"]
        if path.is_file():  # a missing or broken split is reported by load_data, with advice
            keys = sorted(face_key(row) for row in split_csv_rows(path))
        digest.update(("\n".join([name, *keys]) + "\n").encode())
    return digest.hexdigest()


def data_folders(splits) -> set:
    """The folders holding the split's images, and for a folder-per-age layout their parent."""
    parents = set()
    for name in ("train.csv", "val.csv", "test.csv"):
        path = Path(splits) / name
        if path.is_file():
            parents.update(Path(row["path"]).resolve().parent for row in split_csv_rows(path) if row.get("path"))
    grand = {p.parent for p in parents}
    return parents | (grand if len(grand) == 1 and len(parents) > 1 else set())


def refuse_output_in_data(out_dir, splits, what="--out-dir"):
    """Outputs inside the data set would be read as faces by the next eda.py run (the data set is only read),
    and so would they inside any other labelled face data set."""
    for folder in data_folders(splits):
        if same_or_inside(out_dir, folder):
            raise DataError(f"{what} {out_dir} is inside {folder}, which holds the data set's images; "
                            "choose a folder outside the data set")
    # a path,age CSV's folder is left out: eda.py reads only the faces such a CSV lists
    if (labelled := labelled_folder_above(out_dir, csv_sets=False)) is not None:
        raise DataError(f"{what} {out_dir} is inside {labelled}, which holds a labelled face data set: eda.py "
                        "there would read its figures as faces; choose a folder outside it")


SPLITS_NOT_FOUND = "splits folder not found: {splits} (eda.py writes OUT/splits)"
CACHE_FLAG = "--cache-dir (default: SPLITS/../cache)"  # the default is checked too: a split inside the data set


def cache_folder(args) -> Path:
    """The preprocessing cache: --cache-dir, or beside the splits folder."""
    return Path(args.cache_dir) if args.cache_dir else Path(args.splits).parent / "cache"


def load_data(args, cfg, log=print):
    splits = Path(args.splits)
    if not splits.is_dir():
        raise DataError(SPLITS_NOT_FOUND.format(splits=splits))
    cache_dir = cache_folder(args)
    progress = not args.no_progress
    train = load_split_dataset(splits / "train.csv", cfg, cache_dir, args.workers, progress, log)
    if args.subset_fraction < 1:
        keep = np.random.default_rng(args.seed).permutation(len(train))[:max(1, round(len(train) * args.subset_fraction))]
        train = train.subset(np.sort(keep))
    val = load_split_dataset(splits / "val.csv", cfg, cache_dir, args.workers, progress, log)
    return train, val, cache_dir


# ----------------------------------------------------------------------------------------------
# Distillation (--teacher): the teacher's age distribution of every training face, read or predicted once

class WithTeacher:
    """A training set whose batches carry the teacher's expected age and age distribution of each face
    (functions.train_one_epoch blends them into the targets). Validation never sees the teacher."""

    def __init__(self, dataset, teacher_ages, teacher_probs):
        self.dataset, self.ages = dataset, dataset.ages
        self.teacher_ages, self.teacher_probs = teacher_ages, teacher_probs

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.__getitems__([i])

    def __getitems__(self, indices):
        images, ages = self.dataset.batch(indices)
        index = torch.as_tensor(indices, dtype=torch.long)
        return images, ages, self.teacher_ages[index], self.teacher_probs[index]


def face_key(row) -> str:
    """A split row's face identity: eda.py's content hash, the path as the CSV writes it where it lacks one
    (unique within the split, unlike the name alone: 20/img001.jpg, 21/img001.jpg; portable where the CSV's
    paths are relative)."""
    return row.get("hash") or (row.get("path") or "")


def split_csv_rows(path) -> list:
    """A split CSV's rows with the header read as read_split reads it (a spreadsheet's byte-order mark,
    Path/AGE in any case): every check of the split sees the rows training sees."""
    import csv
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        try:
            return [{k.strip().lower(): (v or "") for k, v in row.items() if k} for row in csv.DictReader(f)]
        except csv.Error as exc:  # read_split's words, as training says them
            raise unreadable_split(path, exc) from None


def split_hashes(split_csv) -> dict:
    """path -> face_key of every row of a split CSV."""
    return {row["path"]: face_key(row) for row in split_csv_rows(split_csv) if row.get("path")}


def teacher_targets(args, train_set, cache_dir, min_age, max_age, out=None, keep=True):
    """(teacher's expected age, its distribution on min_age..max_age) per face of train_set, as tensors.
    Checkpoints are predicted here (flip-averaged as each was validated) and the table is written to
    OUT/teacher.npz (if keep), which later students take as --teacher without the teachers' forward passes,
    and which a later session of this run reads instead of predicting again, while the checkpoints' bytes
    are the same."""
    faces = split_faces_digest(args.splits)
    kept = None if teacher_is_table(args.teacher) or out is None else \
        kept_teacher_table(out / "teacher.npz", args.teacher, faces)
    # a kept table lacking faces (unreadable when it was predicted, readable now) is predicted again: the same
    # teachers give the faces it has the same figures
    rows = None if kept is None else teacher_rows(kept, args.splits, train_set)
    if teacher_is_table(args.teacher):
        table = read_teacher_tables(args.teacher, faces)
        if out is not None and keep and len(teacher_sources(args.teacher)) > 1:  # the run keeps what it learnt from
            table["teachers_digest"] = np.asarray(teachers_digest(args.teacher))  # --resume: the same tables?
            atomic_write(out / "teacher.npz", lambda f: np.savez(f, **table))
    elif rows is not None and None not in rows:
        table = kept  # a --resume session learns from the very targets the run began with
        print(f"teachers: their table {out / 'teacher.npz'} was predicted from these checkpoints; read, not "
              f"predicted again (val MAE {float(table['val_mae']):.3f})")
    else:
        table = write_teacher_table(args, cache_dir, out / "teacher.npz" if out is not None and keep else None)
    if table is not kept:
        rows = teacher_rows(table, args.splits, train_set)
    missing = sum(r is None for r in rows)
    if missing:
        raise DataError(f"--teacher {args.teacher} has no prediction for {missing} of {len(rows)} training faces; "
                        "give checkpoints trained on these splits, or the teacher.npz their student wrote")
    rows = np.asarray(rows)
    probs = table["probs"][rows] @ onto_student_ages(table["age_grid"], min_age, max_age)
    ages = table["probs"][rows] @ table["age_grid"].astype(np.float32)
    return torch.from_numpy(ages.astype(np.float32)), torch.from_numpy(probs.astype(np.float32))


def images_used(train_set, val_set) -> str:
    """Digest of the training (after --subset-fraction) and validation images a run reads: a split's files
    unreadable in one session and readable in the next (or deleted) change them, though not the split."""
    import hashlib
    return hashlib.sha1("\n".join([*map(str, train_set.paths), "", *map(str, val_set.paths)]).encode()).hexdigest()


def teacher_rows(table, splits, train_set) -> list:
    """The row of a teacher table for each face of train_set (None where the table has none)."""
    row_of = {h: i for i, h in enumerate(table["hash"].tolist())}
    hashes = split_hashes(Path(splits) / "train.csv")
    return [row_of.get(hashes.get(path)) for path in train_set.paths]


def teacher_age_grid(checkpoint) -> np.ndarray:
    """The integer ages a teacher's distribution is given on: its head's own, or for a regression head, its
    age range widened by 3 label sigmas each side, so that the Gaussian spread around a predicted age keeps
    that age as its mean, also at the ends of the range (cut at the range, it was pulled inwards by over a
    year). What falls outside the student's ages goes to its nearest end (onto_student_ages)."""
    low, high = checkpoint["min_age"], checkpoint["max_age"]
    if checkpoint.get("head", "regression") != "distribution":
        pad = math.ceil(3 * LABEL_SIGMA)
        low, high = low - pad, high + pad
    return np.arange(low, high + 1)


def onto_student_ages(teacher_ages, min_age, max_age) -> np.ndarray:
    """0/1 matrix (teacher's ages x min_age..max_age) that moves a teacher's distribution onto the student's
    ages: a probability outside them goes to the nearest end (a table's and an online teacher's alike)."""
    columns = np.clip(np.asarray(teacher_ages, dtype=np.int64) - min_age, 0, max_age - min_age)
    matrix = np.zeros((len(columns), max_age - min_age + 1), np.float32)
    matrix[np.arange(len(columns)), columns] = 1.0
    return matrix


class OnlineTeachers:
    """--teacher-online: the teachers' mean age distribution of the very batch the student is about to
    see (0-255, augmented and mixed), mapped onto the student's ages as teacher_targets maps a table.
    Each teacher gets the batch at its own input size and normalisation, one view (the student's), in the
    training step's precision (bf16 under --amp)."""

    def __init__(self, sources, args, min_age, max_age, device, use_amp):
        import torch
        self.device, self.use_amp, self.teachers = device, use_amp, []
        student = preprocess_config(args).cache_settings()
        student.pop("image_size")
        for source in sources:
            checkpoint = load_checkpoint(source)
            model, cfg = model_from_checkpoint(checkpoint)
            theirs = cfg.cache_settings()
            size = theirs.pop("image_size")
            if theirs != student:  # a teacher whose faces were denoised or sharpened would see other pixels
                raise DataError(f"--teacher-online: {source} preprocesses faces otherwise ({theirs}) than this run "
                                f"({student}); train the teacher with this run's preprocessing, or drop --teacher-online")
            grid = teacher_age_grid(checkpoint)
            to_student = torch.from_numpy(onto_student_ages(grid, min_age, max_age))
            grid = torch.from_numpy(grid.astype(np.float32))
            model = model.to(device, memory_format=torch.channels_last).eval().requires_grad_(False)
            self.teachers.append((model, size, torch.tensor(cfg.mean, device=device),
                                  torch.tensor(cfg.std, device=device), grid.to(device), to_student.to(device)))

    def __call__(self, images):
        import torch
        from functions import _prepare
        ages, probs, images = 0.0, 0.0, images.to(self.device, non_blocking=True)
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            for model, size, mean, std, grid, to_student in self.teachers:
                x = images if images.shape[-1] == size else torch.nn.functional.interpolate(
                    images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                outputs = model(_prepare(x, mean, std, self.device)).float()
                # a regression teacher's age as the Gaussian a table holds for it (predict_distributions)
                p = torch.softmax(outputs, 1) if model.head == "distribution" else gaussian_targets(
                    model.ages_from_outputs(outputs), grid)
                ages, probs = ages + p @ grid, probs + p @ to_student
        return ages / len(self.teachers), probs / len(self.teachers)


def teacher_sources(teacher: str) -> list:
    """--teacher's comma-separated files."""
    return [s.strip() for s in teacher.split(",") if s.strip()]


def teacher_is_table(teacher: str) -> bool:
    """--teacher names teacher.npz tables (True) or checkpoints (False); a mix is refused."""
    sources = teacher_sources(teacher)
    tables = sum(s.lower().endswith(".npz") for s in sources)
    if tables and tables != len(sources):
        raise DataError("--teacher takes teacher.npz tables, or checkpoints (best.pt), not both")
    return bool(tables)


def read_teacher_tables(teacher: str, faces_digest: str) -> dict:
    """--teacher's tables, one or the mean of several (each a teacher's or an ensemble's distribution, weighted
    alike): a table trained elsewhere (bench/gpu_teachers.py) beside one predicted here."""
    tables = [read_teacher_file(source, faces_digest) for source in teacher_sources(teacher)]
    if len(tables) == 1:
        return tables[0]
    hashes, grid, probs = mean_distribution([({h: i for i, h in enumerate(t["hash"].tolist())}, t["age_grid"],
                                               t["probs"]) for t in tables])
    return {"hash": hashes, "age_grid": grid, "probs": probs, "split_faces": np.asarray(faces_digest)}


def teachers_digest(teacher: str) -> str:
    """Hash of the bytes of --teacher's checkpoints: the table predicted from them is known by it."""
    import hashlib
    digest = hashlib.sha1()
    for source in teacher_sources(teacher):
        digest.update(Path(source).read_bytes())
    return digest.hexdigest()


def kept_teacher_table(path: Path, teacher: str, faces_digest: str) -> dict | None:
    """The run's own teacher.npz when it was predicted from these very checkpoints for these splits, else
    None (predicted again: the teachers' faces run through them take minutes)."""
    try:
        table = read_teacher_file(path, faces_digest)
    except DataError:
        return None
    return table if predicted_from(table, teacher) else None


def predicted_from(kept, teacher) -> bool:
    """Whether a teacher.npz's record (its teachers_weights, or teachers_digest in tables from before it) names
    --teacher's checkpoints: judged by weights where recorded, so a --calibrate re-save is no other teacher, and by
    their test-time views where recorded (a table from before them: by weights alone, so its run still resumes)."""
    if "teachers_weights" in kept:
        return all(str(kept[key]) == value for key, value in teachers_record(teacher).items() if key in kept)
    return str(kept.get("teachers_digest", "")) == teachers_digest(teacher)


def teachers_changed(out_dir, teacher, last=None) -> bool:
    """Whether --teacher's checkpoints are not those OUT/teacher.npz was predicted from (a teacher retrained
    since the run began): resumed, its later epochs would learn from another teacher than its first."""
    if not teacher:
        return False
    if teacher_is_table(teacher):  # every checkpoint keeps the digest of the tables it learnt from
        try:  # last: OUT/last.pt as the caller loaded it already
            kept = (last if last is not None else load_checkpoint(Path(out_dir) / "last.pt")).get("teachers_digest")
        except DataError:  # no last.pt yet, or an unreadable one: restore says so
            kept = None
        if kept is not None:
            return kept != teachers_digest(teacher)
    if not (Path(out_dir) / "teacher.npz").is_file():
        return False
    if teacher_is_table(teacher) and len(teacher_sources(teacher)) == 1:
        return False  # a run from before checkpoints kept the digest: nothing of its one table to compare
    try:
        with np.load(Path(out_dir) / "teacher.npz", allow_pickle=False) as f:
            kept = {k: str(f[k]) for k in ("teachers_weights", "teachers_views", "teachers_digest") if k in f.files}
    except (OSError, ValueError):
        return False  # an unreadable table is predicted again (teacher_targets), as before
    return bool(kept) and not predicted_from(kept, teacher)  # a table recording neither: nothing to compare


def teachers_weights(teacher: str) -> str:
    """Digest of the weights of --teacher's checkpoints (checkpoints.weights_digest of each, in order)."""
    return teachers_record(teacher)["teachers_weights"]


def teachers_record(teacher: str) -> dict:
    """What a table of --teacher's checkpoints is predicted from: their weights, and the test-time views
    predict_teachers averages, which --choose-zooms on a resumed teacher rewrites without touching its weights."""
    weights, views = [], []
    for source in teacher_sources(teacher):  # each loaded once: a ResNet's checkpoint takes a while
        checkpoint = load_checkpoint(source)
        weights.append(weights_digest(checkpoint["model_state"]))
        views.append(test_time_views(checkpoint.get("config") or {}))
    return {"teachers_weights": ",".join(weights), "teachers_views": json.dumps(views)}


def write_teacher_table(args, cache_dir, path=None) -> dict:
    """The table of --teacher's checkpoints (predict_teachers), written atomically to path if given."""
    table = predict_teachers(teacher_sources(args.teacher), args, cache_dir, split_faces_digest(args.splits))
    table["teachers_digest"] = np.asarray(teachers_digest(args.teacher))
    table.update({key: np.asarray(value) for key, value in teachers_record(args.teacher).items()})
    if path is not None:
        atomic_write(path, lambda f: np.savez(f, **table))
    return table


def predict_teachers(sources, args, cache_dir, faces_digest) -> dict:
    """The teachers' mean age distribution of every training face, keyed by content hash, and the
    validation MAE of that mean (the ensemble's own figure, printed and kept in the table)."""
    tables = {"train": [], "val": []}
    hashes = {split: split_hashes(Path(args.splits) / f"{split}.csv") for split in tables}  # read once
    val_ages = {}
    device = resolve_device(args.device)  # a GPU's minutes instead of the CPU's for a large teacher
    for source in sources:
        checkpoint = load_checkpoint(source)
        if checkpoint.get("split_faces", faces_digest) != faces_digest or (
                "split_faces" not in checkpoint and checkpoint.get("split_digest") != split_digest(args.splits)):
            raise DataError(f"--teacher {source} was trained on other splits than {args.splits}: its weights may "
                            "have seen this run's validation or test faces; train the teacher on these splits")
        model, cfg = model_from_checkpoint(checkpoint)
        model = model.to(device, memory_format=torch.channels_last)
        for split, table in tables.items():
            csv_path = Path(args.splits) / f"{split}.csv"
            data = load_split_dataset(csv_path, cfg, cache_dir, args.workers, not args.no_progress, print)
            probs, grid = predict_distributions(
                model, make_loader(data, eval_batch(args), shuffle=False), torch.tensor(cfg.mean, device=device),
                torch.tensor(cfg.std, device=device),
                ages=teacher_age_grid(checkpoint), device=device,
                **test_time_views(checkpoint["config"]))
            table.append(({hashes[split][p]: i for i, p in enumerate(data.paths)}, grid, probs))
            if split == "val":
                val_ages.update({hashes[split][p]: float(a) for p, a in zip(data.paths, data.ages)})
        print(f"teacher {source}: {checkpoint['model_name']}, best val MAE {checkpoint['best_val_mae']:.3f}")
    train_hashes, grid, probs = mean_distribution(tables["train"])
    val_hashes, val_grid, val_probs = mean_distribution(tables["val"])
    val_mae = float(np.mean(np.abs(val_probs @ val_grid - np.array([val_ages[h] for h in val_hashes]))))
    print(f"teacher{'s (mean of their distributions)' if len(sources) > 1 else ''}: val MAE {val_mae:.3f}")
    return {"hash": train_hashes, "age_grid": grid, "probs": probs, "split_faces": np.asarray(faces_digest),
            "sources": np.asarray([str(s) for s in sources]), "val_mae": np.asarray(val_mae)}


def mean_distribution(tables):
    """(hashes, integer ages, mean distribution) over the faces every teacher predicted."""
    common = sorted(set.intersection(*(set(rows) for rows, _, _ in tables)))
    grid = np.arange(min(g.min() for _, g, _ in tables), max(g.max() for _, g, _ in tables) + 1, dtype=np.int32)
    probs = np.zeros((len(common), len(grid)), np.float32)
    for rows, g, p in tables:
        probs[:, g - grid[0]] += p[[rows[h] for h in common]] / len(tables)
    return np.asarray(common), grid, probs


def read_teacher_file(path, faces_digest) -> dict:
    """A teacher.npz (arrays hash, age_grid, probs, split_faces), refused when it is of other splits."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--teacher file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:  # plain arrays only: never code
            table = {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"--teacher {path} is not a readable .npz ({type(exc).__name__}); pass a teacher.npz "
                        "written by train.py --teacher") from None
    needed = {"hash", "age_grid", "probs", "split_faces"} - set(table)
    if needed:
        raise DataError(f"--teacher {path} lacks {', '.join(sorted(needed))}; pass a teacher.npz written by train.py")
    if str(table["split_faces"]) != faces_digest:
        raise DataError(f"--teacher {path} was predicted for other splits than --splits: its teacher may have "
                        "seen this run's validation or test faces")
    if table["probs"].shape != (len(table["hash"]), len(table["age_grid"])):
        raise DataError(f"--teacher {path}: probs is {table['probs'].shape}, expected (faces, ages) = "
                        f"({len(table['hash'])}, {len(table['age_grid'])})")
    return table


def epoch_seeds(seed: int, epoch: int, rank: int = 0) -> dict:
    """Every random stream of one epoch, re-seeded per epoch so that a resumed run repeats an
    uninterrupted one. "shuffle" orders the batches (the same on every rank: DistributedSampler
    splits one permutation); rank r > 0 of a torchrun launch offsets "torch" (dropout, weights drawn
    later) and "augment", so ranks draw different augmentations."""
    offset = epoch + 100_003 * rank
    return {"shuffle": seed * 1000 + epoch, "torch": seed * 1000 + offset, "augment": seed * 7919 + offset}


def check_settings(args):
    """The settings that cannot work and the input files that are not there, named in one line; needs
    neither torch nor the data's images."""
    if args.model not in MODEL_NAMES:
        raise DataError(f"unknown model {args.model!r}; choose one of {', '.join(MODEL_NAMES)}")
    check_numbers(args)
    if not Path(args.splits).is_dir():
        raise DataError(SPLITS_NOT_FOUND.format(splits=args.splits))
    for name in ("train.csv", "val.csv") + (() if args.no_test else ("test.csv",)):  # now, not after the training
        if not (Path(args.splits) / name).is_file():
            raise DataError(f"{Path(args.splits) / name} not found (eda.py writes train.csv, val.csv and test.csv into "
                            f"OUT/splits{'' if name != 'test.csv' else '; or pass --no-test'})")
    if args.teacher is not None and not teacher_sources(args.teacher):  # " " or ",": a teacher of no file
        raise DataError(f"--teacher {args.teacher!r} names no file; pass comma-separated best.pt or teacher.npz "
                        "files, or leave --teacher out")
    for source in teacher_sources(args.teacher or ""):
        if not Path(source).is_file():
            raise DataError(f"--teacher {source} not found; pass the best.pt of a finished run on these splits, "
                            "or the teacher.npz such a run wrote")
    if args.weights and not Path(args.weights).is_file():
        raise DataError(f"--weights {args.weights} not found; pass a torchvision ImageNet weights file (.pth) that "
                        "is on this machine, or leave --weights out")


# what a run writes into its folder, besides the lock and teacher.npz (kept: it is checked against its teachers)
RUN_FILES = ("best.pt", "last.pt", "history.json", "config.json", "metrics.json", "learning_curves.png",
             "pred_vs_true.png", "groups.png", "model.onnx", "model.jit",
             # export_mobile.py's, with their sidecars: the earlier weights' phone models must not outlive them
             "model.pte", "model.pte.json", "model.pt2", "model_int8.pte", "model_int8.pte.json", "mobile_exports.json")


def precision_changed(checkpoint: dict, args) -> bool:
    """Whether a checkpoint's steps ran in another precision (bf16 or float32) than this run's would: a
    benchmark or a search then trains afresh where train.py --resume would refuse."""
    if "bf16" not in checkpoint or checkpoint.get("epoch", 0) >= args.epochs:
        return False
    return checkpoint["bf16"] != bool(args.amp and models.bf16_autocast_pays(resolve_device(args.device).type))


def refuse_earlier_run(args):
    """A second run into a run's folder, unless it goes on (--resume) or replaces it (--overwrite): its best.pt
    would be replaced after one epoch, and its exports, metrics and TensorBoard curves left beside the new run's."""
    if args.resume or args.overwrite:
        return
    out = Path(args.out_dir)
    found = [name for name in ("last.pt", "best.pt") if (out / name).exists()]
    if found:
        raise DataError(f"--out-dir {out} holds an earlier run ({', '.join(found)}); pass --resume to continue it, "
                        "--overwrite to start afresh in its place, or another --out-dir")


def open_run_folder(args, dist_ctx) -> Path:
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if dist_ctx.is_main:
        for stale in out.glob(".*.tmp"):  # left by a process killed while writing; never a valid file
            stale.unlink()
        if args.overwrite:  # under the folder's lock: no other run is writing these
            gone = [p for p in [*(out / name for name in RUN_FILES), *out.glob("events.out.tfevents.*")]
                    if p.is_file()]
            for path in gone:
                path.unlink()
            if gone:
                print(f"--overwrite: removed the earlier run's {len(gone)} files from {out}")
    return out


def amp_in_effect(args, device) -> bool:
    """Whether the training step runs under bf16 autocast: --amp, where it pays (models.bf16_autocast_pays);
    elsewhere a note, and the run is float32."""
    if not args.amp:
        return False
    if models.bf16_autocast_pays(device.type):
        return True
    print("--amp ignored: this CPU has no native bf16 (AVX-512 BF16 or AMX), where bf16 would be slower; "
          "this run is float32")
    return False


def restore(args, resume_from: Path, dist_ctx, digest: str):
    """The checkpoint to resume from (None: start at epoch 1), refused with advice when it was
    trained with other settings or on another split."""
    # every rank loads last.pt itself; they must all see it (multi-node: --out-dir on a shared disk)
    if not dist_ctx.all_same(args.resume and resume_from.exists(), f"--resume: whether {resume_from} exists"):
        if args.resume:
            print(f"--resume: no {resume_from} yet, starting from epoch 1")
        return None
    checkpoint = load_checkpoint(resume_from)
    changed = changed_settings(checkpoint["config"], args)
    if changed:
        raise DataError(f"--resume: {resume_from} was trained with other settings ("
                        + "; ".join(f"--{k.replace('_', '-')} was {old!r}, now {new!r}" for k, old, new in changed)
                        + "); use the same arguments or a new --out-dir")
    if checkpoint.get("split_digest", digest) != digest:
        raise DataError(f"--resume: the split in {args.splits} changed since {resume_from} was written (eda.py "
                        "re-run?); resuming would mix two splits: start a new --out-dir")
    if checkpoint.get("epoch", 0) < args.epochs and teachers_changed(args.out_dir, args.teacher, checkpoint):
        what = ("--teacher tables were rewritten" if teacher_is_table(args.teacher) else
                "--teacher checkpoints changed (its teacher.npz was predicted from others)")
        raise DataError(f"--resume: the {what} since {resume_from}'s run began; its later epochs would learn from "
                        "another teacher: pass --overwrite to start afresh")
    if checkpoint.get("world_size", 1) != dist_ctx.world_size:
        print(f"warning: --resume: {resume_from} was written by {checkpoint.get('world_size', 1)} processes, now "
              f"{dist_ctx.world_size}; the global batch and schedule differ from the interrupted run")
    return checkpoint


def build_model_for(args, checkpoint, train_ages, device):
    """(model in channels_last, (min_age, max_age)); a resumed run keeps the checkpoint's age range."""
    ages = (checkpoint["min_age"], checkpoint["max_age"]) if checkpoint else (int(train_ages.min()), int(train_ages.max()))
    model = models.build_model(args.model, args.head, *ages, args.image_size, args.pretrained, args.weights, args.dropout)
    if checkpoint is None and args.head == "regression":
        model.init_output_bias(float(train_ages.mean()))
    return model.to(device).to(memory_format=torch.channels_last), ages


def make_train_loader(args, train_set, dist_ctx, pin_memory):
    """(loader of an epoch, steps per epoch). Under torchrun each rank reads a disjoint 1/world share
    of one permutation (padded by at most world-1 repeats). A last batch of one image is left out of the
    epoch: BatchNorm cannot train on one image (a ResNet's 1 x 1 map at 32 px stops the run)."""
    if not dist_ctx.active:
        weights = balanced_weights(train_set.ages) if args.balance else None

        def loader(epoch):
            seed = epoch_seeds(args.seed, epoch)["shuffle"]
            sampler = None if weights is None else torch.utils.data.WeightedRandomSampler(
                weights, len(weights), replacement=True, generator=torch.Generator().manual_seed(seed))
            return make_loader(train_set, args.batch_size, shuffle=True, pin_memory=pin_memory, seed=seed,
                               sampler=sampler, drop_last=lonely)
        lonely = len(train_set) % args.batch_size == 1 and len(train_set) > 1
        return loader, len(train_set) // args.batch_size if lonely else math.ceil(len(train_set) / args.batch_size)
    if args.balance:
        raise DataError("--balance is not available under torchrun yet; train in one process or drop --balance")
    from torch.utils.data.distributed import DistributedSampler
    # the sampler permutes with seed + epoch, i.e. epoch_seeds()["shuffle"]
    sampler = DistributedSampler(train_set, dist_ctx.world_size, dist_ctx.rank, shuffle=True, seed=args.seed * 1000)

    lonely = len(sampler) % args.batch_size == 1 and len(sampler) > 1

    def loader(epoch):
        sampler.set_epoch(epoch)
        return make_loader(train_set, args.batch_size, shuffle=True, sampler=sampler, pin_memory=pin_memory,
                           drop_last=lonely)
    return loader, len(sampler) // args.batch_size if lonely else math.ceil(len(sampler) / args.batch_size)


def balanced_weights(ages, width: int = 10) -> torch.Tensor:
    """Sampling weight per image: 1 / (images in its decade of age), so each decade is drawn equally."""
    decades = torch.div(torch.as_tensor(ages, dtype=torch.float64), width, rounding_mode="floor")
    _, index, counts = torch.unique(decades, return_inverse=True, return_counts=True)
    return 1.0 / counts[index].double()


def train_run(args, dist_ctx: Distributed):
    start_time = time.perf_counter()
    session = int(time.time())  # marks this process's epochs in history: a run resumed on another day adds up
    out, device = open_run_folder(args, dist_ctx), dist_ctx.device
    use_amp = amp_in_effect(args, device)
    configure_threads(args.threads)
    set_seed(args.seed)
    digest = split_digest(args.splits)  # read once: every checkpoint records the split this run started with
    faces_digest = split_faces_digest(args.splits)  # the same, portable: what a distillation student checks
    tables_digest = teachers_digest(args.teacher) if args.teacher and teacher_is_table(args.teacher) else None
    checkpoint = restore(args, out / "last.pt", dist_ctx, digest)
    # no record before it was kept; a finished run only rewrites its outputs
    if checkpoint is not None and checkpoint.get("bf16", use_amp) != use_amp and checkpoint["epoch"] < args.epochs:
        was, now = (("bf16 (--amp)", "float32") if checkpoint["bf16"] else ("float32", "bf16 (--amp)"))
        raise DataError(f"--resume: {out / 'last.pt'} was trained in {was} and this run would go on in {now}, which "
                        f"an uninterrupted run never does; resume with{'' if checkpoint['bf16'] else 'out'} --amp")
    crop = checkpoint.get("crop") if checkpoint else read_split_crop(args.splits)  # how the faces were cut
    # rank 0 builds the cache while the others wait; then they read it
    train_set, val_set, cache_dir = dist_ctx.in_turn(lambda: load_data(args, preprocess_config(args)))
    used = images_used(train_set, val_set)
    if checkpoint is not None and dist_ctx.is_main and checkpoint.get("images_used", used) != used:
        print(f"warning: --resume: the images readable in {args.splits} are not those {out / 'last.pt'} began with "
              f"(now {len(train_set)} training, {len(val_set)} validation; files unreadable then or now): the "
              "subset, the shuffle and the validation figures differ from the interrupted run's", file=sys.stderr)
    cfg = PreprocessConfig.from_dict(checkpoint["preprocess"]) if checkpoint else preprocess_config(args)
    if checkpoint is None:
        cfg.mean, cfg.std = channel_stats(train_set.images)
    # inference.py brightens a face darker than this before the model sees it: the floor of this model's own faces
    # (a checkpoint from before it was kept: measured on the same images now, and given to its best.pt by finish);
    # rank 0 alone, which alone saves and exports
    dark_floor = ((checkpoint or {}).get("dark_floor") or dark_floor_of(train_set.images)) if dist_ctx.is_main else None
    mean, std = torch.tensor(cfg.mean, device=device), torch.tensor(cfg.std, device=device)
    model, (min_age, max_age) = build_model_for(args, checkpoint, train_set.ages, device)
    # rank 0 predicts the table (or finds it kept from these teachers) and keeps it as RUN/teacher.npz; the
    # other ranks read it, or predict the same where RUN is not on their disk. An online run keeps it too: it
    # checks the teachers' split and records their validation MAE, though its batches never carry it. A finished
    # run resumed (--choose-zooms, the exports) trains no epoch: its teachers, retrained since, are not asked
    # (their files must still be there: check_settings), and its teacher.npz still says what it learnt from
    teaching = args.teacher and not (checkpoint is not None and checkpoint.get("epoch", 0) >= args.epochs)
    if teaching:
        targets = dist_ctx.in_turn(lambda: teacher_targets(args, train_set, cache_dir, min_age, max_age, out,
                                                           keep=dist_ctx.is_main))
    print(describe_run(args, model, train_set, val_set, dist_ctx))
    if dist_ctx.is_main:
        write_config(args, out, dist_ctx)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    pin = device.type == "cuda"  # page-locked batches; _prepare copies with non_blocking=True
    train_loader, steps_per_epoch = make_train_loader(
        args, WithTeacher(train_set, *targets) if teaching and not args.teacher_online else train_set,
        dist_ctx, pin)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(args.epochs * steps_per_epoch, int(args.warmup_epochs * steps_per_epoch), args.schedule))
    history, best_val, start_epoch = resume_state(checkpoint, model, optimizer, scheduler, out / "last.pt")
    best_val = min(best_val, orphan_best_val(out / "best.pt", start_epoch))
    ema = weight_average(model, args.ema, checkpoint)
    evaluated = ema.module if ema else model  # the weights validation judges and checkpoints keep
    net = models.AutocastModel(model, device.type) if use_amp else model  # what the training step runs
    online_teacher = (OnlineTeachers(teacher_sources(args.teacher), args, min_age, max_age, device, use_amp)
                      if teaching and args.teacher_online else None)
    if dist_ctx.active:  # after loading the checkpoint: DDP starts every rank from rank 0's weights
        net = forwarding_ddp(net, device_ids=[device.index] if device.type == "cuda" else None)
    logger = EpochLogger(args, out, start_epoch, val_set, dist_ctx.is_main)
    # every rank predicts a disjoint shard of val; the gathered predictions give the one-process figures
    validate = lambda: evaluate_sharded(evaluated, val_set, mean, std, batch_size=eval_batch(args),
                                        loss_kind=args.loss, device=device, **test_time_views(vars(args)),
                                        dist_ctx=dist_ctx, pin_memory=pin)
    setup_seconds = time.perf_counter() - start_time  # caches, teachers' table: paid again by every session
    for epoch in range(start_epoch, args.epochs + 1):
        epoch_start = time.perf_counter()
        seeds = epoch_seeds(args.seed, epoch, dist_ctx.rank)
        torch.manual_seed(seeds["torch"])
        epoch_lr = optimizer.param_groups[0]["lr"]  # the epoch's first step's: after it, the schedule has moved on
        with explain_divergence(out, epoch):
            train_metrics = train_one_epoch(
                net, train_loader(epoch), optimizer, mean=mean, std=std, loss_kind=args.loss, scheduler=scheduler,
                augment=augmentation(args), generator=torch.Generator().manual_seed(seeds["augment"]),
                device=device, epoch=epoch, progress=not args.no_progress, ema=ema, teacher_weight=args.teacher_weight,
                label_sigma=args.label_sigma, mixup=args.mixup, online_teacher=online_teacher)
        if dist_ctx.active:
            broadcast_buffers(model)  # BatchNorm statistics of rank 0, the ones it saves
            if ema is not None:  # its buffers average each rank's own statistics: rank 0's are the ones saved
                broadcast_buffers(ema.module)
        train_metrics = reduce_train_metrics(train_metrics, dist_ctx)  # summed over ranks
        val_metrics = validate()
        if not math.isfinite(val_metrics["mae"]):  # diverged: this epoch's weights are saved nowhere
            raise NonFiniteLossError(f"validation MAE became {val_metrics['mae']} at epoch {epoch}; lower --lr "
                                     f"({kept_note(out, epoch)})")
        history.append(history_row(epoch, train_metrics, val_metrics, epoch_lr))
        # the clock of the epoch with its validation, and of this session's set-up on its first epoch
        history[-1].update(wall_seconds=round(time.perf_counter() - epoch_start, 2), session=session,
                           **({"setup_seconds": round(setup_seconds, 2)} if epoch == start_epoch else {}))
        improved, best_val = val_metrics["mae"] < best_val, min(best_val, val_metrics["mae"])
        logger.epoch(history[-1], val_metrics["pred"], improved)
        if dist_ctx.is_main:  # rank 0 alone writes; the others wait at the barrier
            state = make_checkpoint(args, model, optimizer, scheduler, min_age=min_age, max_age=max_age, cfg=cfg,
                                    crop=crop, split_digest=digest, split_faces=faces_digest, epoch=epoch,
                                    metrics={"train": train_metrics, "val": public(val_metrics)},
                                    history=history, best_val_mae=best_val, world_size=dist_ctx.world_size,
                                    ema=ema)
            state["bf16"] = use_amp  # what the steps ran in (--amp where it pays): a resumed run must run the same
            state["images_used"] = used  # --resume: the same images read?
            state["dark_floor"] = dark_floor
            if tables_digest is not None:  # --resume: the same tables' bytes (teachers_changed)
                state["teachers_digest"] = tables_digest
            save_epoch(out, state, improved, history)
        dist_ctx.barrier()
    summary = {"run": str(out), "best_val_mae": best_val, "epochs": args.epochs,
               "train_seconds": round(time.perf_counter() - start_time, 1),
               "train_images_per_s": float(np.mean([h["train_images_per_s"] for h in history])) if history else None,
               "params": models.count_parameters(model)}
    if not args.no_test and split_digest(args.splits) != digest:  # every rank: none waits for a rank 0 that stopped
        raise DataError(f"the split under {args.splits} changed while this run trained (eda.py run again?); "
                        f"its test.csv may hold faces this model trained on, so it is not read. {out / 'best.pt'} "
                        "is kept; train again on the new split")
    if dist_ctx.is_main:  # rank 0 alone tests and exports the best epoch; the others wait at the barrier
        finish(args, out, model, cfg, cache_dir, history, train_set, val_set, summary, logger, dark_floor)
    logger.close()
    dist_ctx.barrier()
    return summary


def resume_state(checkpoint, model, optimizer, scheduler, path):
    """(history, best validation MAE, first epoch to run), with the weights, optimiser, schedule and
    random state of the checkpoint restored."""
    if checkpoint is None:
        return [], float("inf"), 1
    model.load_state_dict(checkpoint.get("training_state", checkpoint["model_state"]))
    optimizer.load_state_dict(checkpoint["optimizer_state"])
    scheduler.load_state_dict(checkpoint["scheduler_state"])
    set_rng_state(checkpoint["rng_state"])
    print(f"resumed from {path} at epoch {checkpoint['epoch']} (best val MAE {checkpoint['best_val_mae']:.3f})")
    return checkpoint["history"], checkpoint["best_val_mae"], checkpoint["epoch"] + 1


def corrected_ema(decay):
    """AveragedModel's update for --ema: the exponential average of the weights of every step so far, bias-corrected
    (as Adam corrects its moments): update n + 1 moves it by (1 - decay) / (1 - decay^(n + 1)). Without the
    correction the first step's weights keep a share decay^n of the average: 78 % after a 250-step tuner trial
    at 0.999, whose validation then judged a model hardly trained; 0.1 % after a 40-epoch run's 7,000 steps,
    where the two differ by no more."""
    @torch.no_grad()
    def update(averaged, current, updates):
        # one read of the count per step (on a GPU, one sync)
        share = (1 - decay) / (1 - decay ** (float(updates) + 1))
        floats = [(mean, now) for mean, now in zip(averaged, current) if mean.is_floating_point()]
        if floats:
            torch._foreach_lerp_([m for m, _ in floats], [n for _, n in floats], share)
        for mean, now in zip(averaged, current):
            if not mean.is_floating_point():  # an integer buffer (BatchNorm's batch count) is no average
                mean.copy_(now)
    return update


def weight_average(model, decay, checkpoint):
    """--ema: an AveragedModel of model's weights (and buffers), restored from a resumed checkpoint;
    None when off."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel
    ema = AveragedModel(model, multi_avg_fn=corrected_ema(decay), use_buffers=True)
    if checkpoint is not None and "ema_averaged" in checkpoint:  # the average is model_state (make_checkpoint)
        ema.module.load_state_dict(checkpoint["model_state"])
        ema.n_averaged.fill_(checkpoint["ema_averaged"])
    return ema


@contextlib.contextmanager
def explain_divergence(out, epoch):
    """A diverged epoch's error names the checkpoint that keeps the last good weights."""
    try:
        yield
    except NonFiniteLossError as exc:
        raise NonFiniteLossError(f"{exc} ({kept_note(out, epoch)})") from None


def describe_run(args, model, train_set, val_set, dist_ctx) -> str:
    text = (f"model {args.model} ({args.head} head): {models.count_parameters(model):,} parameters; train {len(train_set)}, "
            f"val {len(val_set)} images; device {dist_ctx.device}, {torch.get_num_threads()} threads")
    if dist_ctx.active:
        text += (f"; {dist_ctx.world_size} processes ({dist_ctx.backend}), global batch "
                 f"{args.batch_size * dist_ctx.world_size}")
    if args.teacher:
        text += (f"; distilled from {args.teacher} (teacher's share of the targets {args.teacher_weight}"
                 + (", predicted on every augmented batch" if args.teacher_online else "") + ")")
    return text


def history_row(epoch, train_metrics, val_metrics, lr) -> dict:
    return {"epoch": epoch, "train_loss": train_metrics["loss"], "train_mae": train_metrics["mae"],
            "val_loss": val_metrics["loss"], "val_mae": val_metrics["mae"], "val_cs5": val_metrics["cs5"],
            "lr": lr, "train_images_per_s": train_metrics["images_per_s"], "epoch_seconds": train_metrics["seconds"],
            "train_images": train_metrics["images"], "train_images_per_rank": train_metrics["images_per_rank"]}


class EpochLogger:
    """The per-epoch line on stdout and, on rank 0, TensorBoard: events go straight into the run
    folder, so TensorBoard names the run after it (tensorboard --logdir OUT lists every run of OUT)."""
    SCALARS = {"loss/train": "train_loss", "loss/val": "val_loss", "mae/train": "train_mae", "mae/val": "val_mae",
               "cs5/val": "val_cs5", "lr": "lr", "speed/train_images_per_s": "train_images_per_s"}

    def __init__(self, args, out, start_epoch, val_set, is_main):
        self.epochs, self.writer = args.epochs, None
        if not args.no_tensorboard and is_main:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(out), purge_step=start_epoch)
        self.preview = val_set.batch(range(min(16, len(val_set))))

    def epoch(self, row, val_pred, improved):
        print(f"epoch {row['epoch']:3d}/{self.epochs}  train loss {row['train_loss']:.3f} MAE {row['train_mae']:.2f}  "
              f"val MAE {row['val_mae']:.2f} CS@5 {row['val_cs5']:.1%}  lr {row['lr']:.2e}  "
              f"{row['train_images_per_s']:.0f} img/s{'  * best' if improved else ''}")
        if self.writer is None:
            return
        for tag, key in self.SCALARS.items():
            self.writer.add_scalar(tag, row[key], row["epoch"])
        faces = face_grid_figure(self.preview[0], self.preview[1], val_pred[:16])
        self.writer.add_figure("val_faces", faces, row["epoch"])
        self.writer.flush()

    def hparams(self, args, metrics: dict):
        """The run's settings and final figures in TensorBoard's HParams view, in this run's events."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams
        settings = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                    for k, v in vars(args).items() if k in RESUME_CHECKED + recipe_keys()}
        for summary in hparams(settings, metrics):
            self.writer.file_writer.add_summary(summary, self.finish_step)
        self.scalars(metrics)
        self.writer.flush()

    @property
    def finish_step(self) -> int:
        """The step of what is logged at the finish: after the last epoch, so that a finished run resumed
        (--choose-zooms) starts its writer at this step (purge_step) and its new scores replace the old."""
        return self.epochs + 1

    def scalars(self, values: dict):
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, self.finish_step)

    def close(self):
        if self.writer is not None:
            self.writer.close()


def orphan_best_val(best_path: Path, start_epoch: int) -> float:
    """The validation MAE of a best.pt written for an epoch that last.pt does not hold yet (a kill between
    the two saves; save_epoch writes best.pt first), else inf. The resumed run must beat it: a re-run of
    that epoch is not always bit-identical (other threads, a GPU), and a worse epoch would replace it."""
    if start_epoch == 1 or not best_path.exists():
        return float("inf")
    best = load_checkpoint(best_path)
    return best["best_val_mae"] if best.get("epoch", 0) >= start_epoch else float("inf")


def save_epoch(out, checkpoint, improved, history):
    if improved:
        save_checkpoint(out / "best.pt", checkpoint)
    save_checkpoint(out / "last.pt", checkpoint)
    write_history(history, out)


def finish(args, out, model, cfg, cache_dir, history, train_set, val_set, summary, logger, dark_floor=None):
    """Test and export the best epoch; say how it compares with predicting the training median,
    where the figures are and what to run next."""
    if history:  # a run killed after its last last.pt is completed by --resume here
        write_history(history, out)
    best = load_checkpoint(out / "best.pt")
    if args.data_description:  # given now (a --resume session), it describes the exports made now
        best["config"]["data_description"] = args.data_description
    if best.get("dark_floor") is None and dark_floor is not None:  # a best epoch saved before train.py measured it
        best["dark_floor"] = dark_floor
    model.load_state_dict(best["model_state"])
    if args.choose_zooms and not (args.no_test and args.no_export):  # a search trial compares epochs only
        summary["zooms"] = choose_zooms(model, cfg, val_set, best, eval_batch(args))
    summary["age_map"] = calibrate(args, model, cfg, val_set, best)
    save_checkpoint(out / "best.pt", best)
    median = float(np.median(np.asarray(train_set.ages, dtype=np.float64)))
    summary["baseline"] = {"rule": "predict the training median for every face", "age": median,
                           "val_mae": float(np.mean(np.abs(np.asarray(val_set.ages, dtype=np.float64) - median)))}
    figures = {"val/mae": best["best_val_mae"]}
    if not args.no_test:
        summary["test"] = test_best(args, model, cfg, cache_dir, best, out, median, summary["age_map"])
        figures.update({"test/mae": summary["test"]["mae"], "test/cs5": summary["test"]["cs5"]})
        logger.scalars({f"test_groups/{name}/{label}/{key}": value[key]
                        for name, table in summary["test"]["groups"].items() for label, value in table.items()
                        for key in ("mae", "mean_error")})
    if not args.no_export:
        summary["exports"] = export_best(model, cfg, best, out, val_set, summary.get("test"))
    logger.hparams(args, figures)
    for line in closing_lines(args, out, best, summary):
        print(line)


def choose_zooms(model, cfg, val_set, best, batch_size=256) -> dict:
    """--choose-zooms: the set of ZOOM_CANDIDATES with the lowest validation MAE for the best epoch's weights (the
    run's flip setting kept) goes into best's config, which the calibration, the test split and the exports read.
    Returns (and keeps in best) {"val_mae": {set: MAE}, "chosen": set} ("none": the image alone)."""
    device = next(model.parameters()).device
    mean, std = torch.tensor(cfg.mean, device=device), torch.tensor(cfg.std, device=device)
    loader, predictions = make_loader(val_set, batch_size, shuffle=False), {}
    for zooms in ZOOM_CANDIDATES:
        predictions[zooms or "none"], true = predict_loader(model, loader, mean, std, device=device,
                                                            **test_time_views({**best["config"], "tta_zoom": zooms}))
    chosen, figures = lowest_mae_zoom_set(predictions, true)
    best["config"]["tta_zoom"] = "" if chosen == "none" else chosen
    best["zoom_choice"] = {"val_mae": figures, "chosen": chosen}
    print("test-time zooms (judged on val): " + ", ".join(f"{z} {mae:.3f}" for z, mae in figures.items())
          + f"; kept: {chosen}")
    return best["zoom_choice"]


def calibrate(args, model, cfg, val_set, best) -> dict | None:
    """functions.calibrate_ages on the validation split (never the test split), into best: the age
    map where --age-map auto keeps one, and the interval calibration. Returns the map's judgement."""
    device = next(model.parameters()).device
    mean, std = torch.tensor(cfg.mean, device=device), torch.tensor(cfg.std, device=device)
    pred, true = predict_loader(model, make_loader(val_set, eval_batch(args), shuffle=False), mean, std, device=device,
                                **test_time_views(best["config"]))
    age_map, best["interval"], judgement = calibrate_ages(pred, true, args.age_map)
    best.pop("age_map", None)  # a --resume of a finished run decides again
    if age_map:
        best["age_map"] = age_map
    # the exports' validation figure: through the views they average and the map they apply (best_val_mae, which
    # chose the epoch, is the image alone plus the run's flip, without a map). A kept map was fitted on these
    # faces, so its honest figure is the cross-fitted one; the in-sample one only checks that a split is this
    # model's (benchmark.py --ship-zooms)
    best["export_val_mae_views"] = float(np.mean(np.abs(apply_age_map(pred, age_map) - true)))
    best["export_val_mae"] = judgement["val_mae_after"] if age_map and judgement else best["export_val_mae_views"]
    if judgement and "reason" in judgement:
        print(f"age map: none ({judgement['reason']})")
    elif judgement:
        print(f"age map (isotonic, judged on val): MAE {judgement['val_mae_before']:.3f} -> "
              f"{judgement['val_mae_after']:.3f}, worst decade {judgement['val_worst_decade_before'][0]} "
              f"{judgement['val_worst_decade_before'][1]:.2f} -> {judgement['val_worst_decade_after'][0]} "
              f"{judgement['val_worst_decade_after'][1]:.2f}: "
              + ("kept" if judgement["keep"] else "not kept"))
    return judgement


def closing_lines(args, out, best, summary) -> list:
    if args.no_test and args.no_export:  # a search trial: the search prints its own summary
        return []
    baseline = summary["baseline"]
    split, mae, base = ("test", summary["test"]["mae"], summary["test"]["baseline"]["mae"]) if "test" in summary \
        else ("val", best["best_val_mae"], baseline["val_mae"])
    lines = [f"baseline: predicting the training median ({baseline['age']:g}) for every face gives {split} MAE "
             f"{base:.2f}; this model {mae:.2f}"]
    if not mae < base:
        lines.append(f"warning: the model does not beat the median baseline on the {split} split (best epoch "
                     f"{best['epoch']}): it has learnt nothing usable; check the labels, lower --lr or train longer")
    figures = [out / name for name in ("learning_curves.png", "pred_vs_true.png", "groups.png") if (out / name).exists()]
    lines.append("figures: " + ", ".join(map(str, figures)) + f"; settings: {out / 'config.json'}")
    if not args.no_tensorboard:
        lines.append(f"TensorBoard: tensorboard --logdir {out}")
    if not args.no_export:
        lines.append(f"next: python inference.py --model {out / 'model.onnx'} --image PHOTO.jpg")
    return lines


def test_best(args, model, cfg, cache_dir, best, out, median, age_map_judgement):
    """The test split is read here, once, for the best epoch only."""
    test_set = load_split_dataset(Path(args.splits) / "test.csv", cfg, cache_dir, args.workers, not args.no_progress)
    device = next(model.parameters()).device
    mean, std = torch.tensor(cfg.mean, device=device), torch.tensor(cfg.std, device=device)
    views = test_time_views(best["config"])  # the run's, or those --choose-zooms kept
    metrics = evaluate(model, make_loader(test_set, eval_batch(args), shuffle=False), mean, std, loss_kind=args.loss,
                       device=device, **views)
    if best.get("age_map"):  # the ages the exports report
        metrics = metrics_of_predictions(apply_age_map(metrics["pred"], best["age_map"]), metrics["true"], args.loss)
    plot_pred_vs_true(metrics["pred"], metrics["true"], out / "pred_vs_true.png",
                      title=f"{args.model}, test, best epoch {best['epoch']}")
    baseline_mae = float(np.mean(np.abs(metrics["true"] - median)))
    groups = group_metrics(metrics["pred"], metrics["true"], test_set.groups)
    interval = interval_metrics(metrics["pred"], metrics["true"], best["interval"], args.interval_level)
    plot_groups(groups, out / "groups.png", title=f"{args.model}, test, best epoch {best['epoch']}: error per group")
    result = {**public(metrics), "groups": groups, "interval": interval, "age_map": age_map_judgement,
              "best_epoch": best["epoch"], "weights": weights_digest(best["model_state"]),
              "age_map_applied": best.get("age_map"),  # export_mobile tells the checkpoint these figures are of
              "model": args.model, "head": args.head,
              "tta_flip": views["tta_flip"], "tta_zoom": list(views["tta_zoom"]), "zoom_choice": best.get("zoom_choice"),
              "baseline": {"rule": "predict the training median for every face", "age": median, "mae": baseline_mae},
              "beats_baseline": bool(metrics["mae"] < baseline_mae)}
    text = json.dumps(result, indent=2) + "\n"
    atomic_write(out / "metrics.json", lambda f: f.write(text.encode()))
    print(f"test (best epoch {best['epoch']}): MAE {metrics['mae']:.2f}  RMSE {metrics['rmse']:.2f}  "
          f"CS@5 {metrics['cs5']:.1%}  n={metrics['n']}  -> {out / 'metrics.json'}")
    print(f"age interval at {interval['level']:.0%} (calibrated on val): test coverage {interval['coverage']:.1%}, "
          f"mean width {interval['mean_width']:.1f} years")
    return result


def kept_note(out, epoch) -> str:
    if epoch > 1 and (out / "last.pt").exists():
        return f"{out / 'last.pt'} keeps epoch {epoch - 1}, the last good one"
    return "no epoch finished with finite figures, so no checkpoint was kept"


def write_history(history, out):
    text = json.dumps(history, indent=1)
    atomic_write(out / "history.json", lambda f: f.write(text.encode()))
    plot_learning_curves(history, out / "learning_curves.png")


def git_commit() -> str | None:
    """The checkout's commit (with "+changes" when files differ from it), or None outside git."""
    import subprocess
    repo = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def write_config(args, out, dist_ctx):
    """RUN/config.json: every setting and what else decides the result, readable by people."""
    import hashlib
    import platform
    splits = Path(args.splits).resolve()
    config = {"settings": vars(args), "splits": {name: str(splits / name) for name in ("train.csv", "val.csv", "test.csv")},
              "split_sha256": {name: hashlib.sha256((splits / name).read_bytes()).hexdigest()
                               for name in ("train.csv", "val.csv", "test.csv") if (splits / name).is_file()},
              "split_digest": split_digest(splits), "crop": read_split_crop(splits),
              "argv": sys.argv,
              "git_commit": git_commit(), "python": platform.python_version(), "torch": torch.__version__,
              "device": str(dist_ctx.device), "processes": dist_ctx.world_size,
              "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    text = json.dumps(config, indent=2, default=str) + "\n"
    atomic_write(out / "config.json", lambda f: f.write(text.encode()))


if __name__ == "__main__":
    run_cli(main, get_args_parser())
