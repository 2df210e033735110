"""Search the learning rate and weight decay on the validation split, then train the winner once.

    python hyperparameter_tunning.py --splits OUT/splits --model simplecnn --out-dir RUN \\
        [--lrs 1e-4,3e-4,1e-3 (default: 5 log-spaced from 1e-4 to 3e-3)] [--weight-decays 0,1e-4,1e-3]
        [--epochs-per-trial 3] [--subset-fraction 0.5]

1. Overfit check: a few training images (--overfit-images) must be memorised, full batch, without
   augmentation, to an MAE below --overfit-threshold within --overfit-steps; if not, the pipeline or
   the model is broken and the search stops (exit code 2). RUN/overfit.json, RUN/overfit.png.
2. Learning-rate sweep at --sweep-weight-decay: one short train.py run per lr. RUN/lr_sweep.csv/.png.
3. Weight-decay grid: the --top-lrs best lrs x --weight-decays. RUN/grid_search.csv/.png.
4. Final run: the best (lr, weight decay) by validation MAE, --final-epochs, test metrics and exports,
   into RUN/final; RUN/best_params.json, with the final run's train.py command (final_command). --skip-final
   stops after the grid; final_command is then the command to train the chosen pair with.

Every trial is a train.py run in RUN/trials/<name> (no test split, no export, no TensorBoard) on the
shared preprocessing cache, logged to TensorBoard's HParams view (RUN/tb_hparams). A CSV row is
appended and flushed as each trial finishes; running the same command again skips trials already in
a CSV (and a trial cut short resumes from its last.pt, if that has the same settings and split); a trial's
key holds its recipe and the contents of train.csv, val.csv and the teachers (a teacher.npz's bytes, or the
checkpoints'), so a split made again is searched again. Selection reads
validation metrics only: no trial predicts or scores a test face (test.csv's bytes only go into each
trial's split fingerprint, and its folders into the check that no output lands among the images); only
the final run evaluates on it, once.
"""
import argparse
import csv
import hashlib
import json
import math
import os
import shlex
import time
from pathlib import Path

from cli import MODEL_NAMES, ArgumentParser, lazy_import, run_cli  # first: cli._missing_package_hook
import numpy as np

import train
from custom_dataset import DataError, channel_stats, load_split_dataset, write_csv
from checkpoints import load_checkpoint
from functions import (NonFiniteLossError, atomic_write, configure_threads, evaluate, folder_lock, pyplot, set_seed,
                       train_one_epoch)

torch = lazy_import("torch")  # imported on first use: --help answers without it
models = lazy_import("model")

DEFAULT_LRS = tuple(float(f"{v:.3g}") for v in np.logspace(math.log10(1e-4), math.log10(3e-3), 5))
DEFAULT_WEIGHT_DECAYS = (0.0, 1e-4, 1e-3)
COLUMNS = ("lr", "weight_decay", "epochs", "train_mae", "val_mae", "val_cs5", "seconds",
           "subset_fraction", "seed", "model", "settings", "status", "source", "trial")
# Recipe settings hashed into a row's "settings" even at their defaults (the ones searches hashed
# before the whole recipe was passed through): other recipe settings enter the hash only when they
# differ from train.py's default, so rows of earlier searches keep matching their trials.
ALWAYS_HASHED = ("head", "loss", "batch_size", "augment", "image_size", "denoise", "denoise_strength", "deblur")


def float_list(text: str) -> list:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return list(dict.fromkeys(values))  # drop repeats, keep order


def get_args_parser():
    p = ArgumentParser(description=__doc__)
    g = p.add_argument_group("data (passed to every trial)")
    g.add_argument("--splits", required=True, help="folder with train.csv and val.csv from eda.py "
                   "(test.csv is read by the final run only, and must exist unless --skip-final)")
    g.add_argument("--cache-dir", default=None, help="preprocessing cache shared by all trials (default: SPLITS/../cache)")
    train.add_recipe_args(p)  # the recipe of every trial and of the final run, as train.py defines it
    g = p.add_argument_group("search budget")
    g.add_argument("--lrs", type=float_list, default=list(DEFAULT_LRS),
                   help="learning rates of the sweep, comma-separated (default: 5 log-spaced from 1e-4 to 3e-3)")
    g.add_argument("--sweep-weight-decay", type=float, default=0.0, help="weight decay during the lr sweep")
    g.add_argument("--top-lrs", type=int, default=2, help="best lrs of the sweep that enter the weight-decay grid")
    g.add_argument("--weight-decays", type=float_list, default=list(DEFAULT_WEIGHT_DECAYS),
                   help="weight decays of the grid, comma-separated (default: 0,1e-4,1e-3)")
    g.add_argument("--epochs-per-trial", type=int, default=3, help="epochs of each sweep/grid trial")
    g.add_argument("--subset-fraction", type=float, default=0.5,
                   help="share of the training split each trial trains on (the final run uses all)")
    g.add_argument("--final-epochs", type=int, default=20, help="epochs of the final run")
    g.add_argument("--skip-final", action="store_true",
                   help="stop after the grid (no final run, no test split; best_params.json's final_command trains "
                        "the chosen pair)")
    g = p.add_argument_group("overfit check")
    g.add_argument("--overfit-images", type=int, default=64, help="training images to memorise")
    g.add_argument("--overfit-threshold", type=float, default=1.0, help="training MAE (years) to reach")
    g.add_argument("--overfit-steps", type=int, default=300, help="full-batch Adam steps allowed")
    g.add_argument("--overfit-lr", type=float, default=1e-3, help="Adam learning rate of the check")
    g.add_argument("--skip-overfit", action="store_true", help="do not run the overfit check")
    g = p.add_argument_group("run")
    g.add_argument("--out-dir", required=True, help="search folder: CSVs, plots, trials/, final/, best_params.json")
    g.add_argument("--seed", type=int, default=42, help="seed of every trial (weights, shuffling, subset)")
    g.add_argument("--device", default="auto", help="auto, cpu or cuda")
    g.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    train.add_cache_workers_arg(g)
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


# ----------------------------------------------------------------------------------------------
# 1. Overfit check

def overfit_check(model_name, dataset, n_images=64, threshold=1.0, max_steps=300, lr=1e-3, head="regression",
                  loss="l1", seed=42, device="cpu", log=print, build=None) -> dict:
    """Memorise n_images of dataset (full batch, Adam, no augmentation) until their MAE < threshold.

    The MAE is measured in eval mode on the same images after every step. The regression output's bias
    starts at the images' mean age, so the steps go to fitting faces rather than to reaching the age
    scale. Returns {"passed", "steps", "final_mae", "best_mae", "threshold", "images", "lr", "curve"}
    with curve a list of [step, MAE] (step 0 = before training); raises nothing when it fails. build: more
    keywords of model.build_model (pretrained, weights_file, dropout), so the check memorises the trials' model.
    """
    set_seed(seed)
    device = torch.device(device)
    n = min(int(n_images), len(dataset))
    if n < 1:
        raise DataError("overfit check: the dataset is empty")
    index = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:n])
    images, ages = dataset.batch(index)
    batch = [(images, ages)]
    mean, std = channel_stats(images.permute(0, 2, 3, 1).numpy())
    mean, std = torch.tensor(mean, device=device), torch.tensor(std, device=device)
    model = models.build_model(model_name, head, int(ages.min()), int(ages.max()), int(images.shape[-1]),
                               **(build or {})).to(device)
    model = model.to(memory_format=torch.channels_last)
    if head == "regression":
        model.init_output_bias(float(ages.mean()))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def mae():
        return evaluate(model, batch, mean, std, loss_kind=loss, device=device)["mae"]

    curve = [[0, mae()]]
    step = 0
    start = time.perf_counter()
    while curve[-1][1] >= threshold and step < max_steps:
        step += 1
        try:
            train_one_epoch(model, batch, optimizer, mean=mean, std=std, loss_kind=loss, device=device, epoch=step,
                            progress=False)
        except NonFiniteLossError as exc:
            log(f"overfit check: {exc}")
            curve.append([step, float("nan")])
            break
        curve.append([step, mae()])
        if step % 25 == 0:
            log(f"overfit check: step {step}/{max_steps}  MAE {curve[-1][1]:.3f}")
    final = curve[-1][1]
    finite = [m for _, m in curve if math.isfinite(m)]
    return {"passed": bool(final < threshold), "steps": step, "final_mae": final,
            "best_mae": min(finite) if finite else float("nan"), "threshold": threshold, "images": n, "lr": lr,
            "model": model_name, "head": head, "loss": loss, "seconds": round(time.perf_counter() - start, 1),
            "curve": curve}


def plot_overfit(result: dict, path):
    plt = pyplot()
    steps, maes = zip(*result["curve"])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, maes, "-", label="training MAE (eval mode)")
    ax.axhline(result["threshold"], color="k", linestyle="--", linewidth=1, label=f"threshold {result['threshold']:g}")
    ax.set_yscale("log")
    ax.set(xlabel="full-batch step", ylabel="MAE (years)",
           title=f"Overfit {result['images']} images: {'passed' if result['passed'] else 'FAILED'} "
                 f"(MAE {result['final_mae']:.2f} after {result['steps']} steps)")
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def run_overfit_check(args, out: Path, cache_dir: Path, device) -> dict:
    settings = {"model": args.model, "head": args.head, "loss": args.loss, "images": args.overfit_images,
                "threshold": args.overfit_threshold, "max_steps": args.overfit_steps, "lr": args.overfit_lr,
                "seed": args.seed, "preprocess": train.preprocess_config(args).cache_settings(),
                "splits": str(Path(args.splits).resolve()), "data": data_digest(args),
                "pretrained": args.pretrained, "weights": args.weights, "dropout": args.dropout}
    path = out / "overfit.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous.get("passed") and previous.get("settings") == settings:
            print(f"overfit check: passed before ({path}), not repeated")
            return previous
    train_set = load_split_dataset(Path(args.splits) / "train.csv", train.preprocess_config(args), cache_dir,
                                   args.workers, not args.no_progress)
    print(f"overfit check: {min(args.overfit_images, len(train_set))} training images, up to "
          f"{args.overfit_steps} steps, target MAE < {args.overfit_threshold:g}")
    result = overfit_check(args.model, train_set, args.overfit_images, args.overfit_threshold, args.overfit_steps,
                           args.overfit_lr, args.head, args.loss, args.seed, device,
                           build={"pretrained": args.pretrained, "weights_file": args.weights,
                                  "dropout": args.dropout})
    result["settings"] = settings
    write_json(path, result)
    plot_overfit(result, out / "overfit.png")
    if not result["passed"]:
        raise DataError(f"cannot overfit {result['images']} images (MAE {result['final_mae']:.2f} after "
                        f"{result['steps']} steps): the pipeline or model is broken (curve in {out / 'overfit.png'})")
    print(f"overfit check passed: MAE {result['final_mae']:.3f} after {result['steps']} steps "
          f"({result['seconds']} s)")
    return result


# ----------------------------------------------------------------------------------------------
# Trials: one train.py run each, one CSV row each

def data_digest(args) -> str:
    """Hash of what a trial learns from and is judged on: train.csv, val.csv and crop.json (not test.csv), and
    the teacher table's bytes. A split made again by eda.py, or new teachers, gives new trials, never the rows
    of the old ones; where the folder is written (relative or absolute) does not matter."""
    digest = hashlib.sha1()
    from_checkpoints = getattr(args, "teacher_sources_digest", None)
    for path in [Path(args.splits) / name for name in ("train.csv", "val.csv", "crop.json")] + (
            [Path(t) for t in train.teacher_sources(args.teacher)]
            if args.teacher and train.teacher_is_table(args.teacher) and not from_checkpoints else []):
        digest.update(path.name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"-") + b"\0")
    if from_checkpoints:
        digest.update(b"teachers\0" + from_checkpoints.encode())
    return digest.hexdigest()


def settings_hash(args) -> str:
    """Hash of the recipe settings that change a trial's result besides the key columns, and of its data."""
    settings = {k: getattr(args, k) for k, default in train.recipe_defaults().items()
                if k not in ("model", "teacher") and (k in ALWAYS_HASHED or getattr(args, k) != default)}
    settings["data"] = data_digest(args)  # the teacher's table among it, by content
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def trial_key(model, lr, weight_decay, epochs, subset_fraction, seed, settings) -> tuple:
    return (str(model), f"{float(lr):.6g}", f"{float(weight_decay):.6g}", int(epochs),
            f"{float(subset_fraction):.6g}", int(seed), str(settings))


def row_key(row: dict) -> tuple:
    return trial_key(row["model"], row["lr"], row["weight_decay"], row["epochs"], row["subset_fraction"],
                     row["seed"], row["settings"])


def trial_name(key: tuple) -> str:
    _, lr, wd, epochs, *_ = key
    digest = hashlib.sha1(repr(key).encode()).hexdigest()[:6]
    return f"lr{float(lr):.3g}_wd{float(wd):.3g}_e{epochs}_{digest}"


def read_rows(path: Path) -> list:
    """Rows of a search CSV with numbers parsed; a half-written last line is ignored."""
    if not path.exists() or path.stat().st_size == 0:
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise DataError(f"{path} has columns {reader.fieldnames}, not {list(COLUMNS)}; "
                            "it was written by another version of this script: use a new --out-dir")
        for row in reader:
            if not whole_row(row):
                continue
            try:
                for k in ("lr", "weight_decay", "train_mae", "val_mae", "val_cs5", "seconds", "subset_fraction"):
                    row[k] = float(row[k])
                row["epochs"], row["seed"] = int(row["epochs"]), int(row["seed"])
            except (TypeError, ValueError):
                continue
            rows.append(row)
    return rows


def whole_row(row: dict) -> bool:
    """False for a csv.DictReader row cut short (fields missing) or run into the next line (fields over)."""
    return None not in row and None not in row.values()


def append_row(path: Path, row: dict):
    """Add one row: the whole CSV (tens of rows) written again atomically, so that a kill leaves the old file
    or the new one, never a row cut short that reads as a finished trial."""
    rows = []
    if path.exists() and path.stat().st_size:
        read_rows(path)  # refuses a CSV with other columns
        with open(path, newline="", encoding="utf-8") as f:
            # a row cut short by a crash of an older version (read_rows skips it too) goes
            rows = [r for r in csv.DictReader(f) if whole_row(r)]
    write_csv(path, rows + [row], COLUMNS)


def trial_argv(args, lr, weight_decay, epochs, run_dir, cache_dir, final=False) -> list:
    """train.py command line of a trial (final=False) or of the final run."""
    argv = ["--splits", str(args.splits), "--cache-dir", str(cache_dir), "--out-dir", str(run_dir),
            *train.recipe_argv(args), "--seed", str(args.seed),
            "--epochs", str(epochs), "--lr", repr(float(lr)), "--weight-decay", repr(float(weight_decay)),
            "--device", args.device, "--cache-workers", str(args.workers)]
    if not final:
        argv += ["--subset-fraction", repr(args.subset_fraction), "--no-test", "--no-export", "--no-tensorboard"]
    flags = {"--no-progress": args.no_progress, "--debug": args.debug}
    argv += [flag for flag, on in flags.items() if on]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    return argv


def same_split_as_the_search(args, data):
    """Stops where the split (or teacher table) the search started on has been replaced, by an eda.py run into
    the same folder meanwhile: trials of two splits are never ranked together, nor the final trained on
    settings chosen on another split's validation faces."""
    if data_digest(args) != data:
        raise DataError(f"the split under {args.splits} changed while the search ran (eda.py run again?); trials "
                        "of two splits are not compared: run the search again")


class Search:
    """Runs trials, skipping those already in a CSV, and logs each new one to the HParams view."""

    def __init__(self, args, out: Path, cache_dir: Path):
        self.args, self.out, self.cache_dir = args, out, cache_dir
        self.settings, self.data = settings_hash(args), data_digest(args)
        self.csvs = {"lr_sweep": out / "lr_sweep.csv", "grid_search": out / "grid_search.csv"}
        self.trained = 0
        self._writer = None

    def key(self, lr, weight_decay):
        a = self.args
        return trial_key(a.model, lr, weight_decay, a.epochs_per_trial, a.subset_fraction, a.seed, self.settings)

    def find(self, key, own):
        """(stage, row) of a finished trial with this key, looking in every CSV of the search."""
        for stage in sorted(self.csvs, key=lambda s: s != own):  # the stage's own CSV first
            for row in read_rows(self.csvs[stage]):
                if row_key(row) == key:
                    return stage, row
        return None, None

    def run(self, stage: str, lr: float, weight_decay: float, label: str) -> dict:
        same_split_as_the_search(self.args, self.data)
        key = self.key(lr, weight_decay)
        found_in, row = self.find(key, stage)
        if found_in == stage:
            print(f"[{label}] lr {lr:.3g} wd {weight_decay:.3g}: done before (val MAE {row['val_mae']:.3f}), skipped")
            return row
        if row is not None:  # the same trial already ran in the other stage: reuse it, do not retrain
            row = {**row, "source": found_in}
            append_row(self.csvs[stage], row)
            print(f"[{label}] lr {lr:.3g} wd {weight_decay:.3g}: reused from {found_in}.csv "
                  f"(val MAE {row['val_mae']:.3f})")
            return row
        name = trial_name(key)
        run_dir = self.out / "trials" / name
        argv = trial_argv(self.args, lr, weight_decay, self.args.epochs_per_trial, run_dir, self.cache_dir)
        # a search cut short goes on where the trial was; a trial of other settings or another split starts afresh
        argv.append("--resume" if should_resume(run_dir, argv) else "--overwrite")
        place_teacher_table(self.args, self.out, run_dir)
        print(f"[{label}] lr {lr:.3g} wd {weight_decay:.3g}: training {self.args.epochs_per_trial} epoch(s) "
              f"-> {run_dir}")
        start = time.perf_counter()
        status = "ok"
        try:
            summary = train.main(train.get_args_parser().parse_args(argv))
        except NonFiniteLossError as exc:  # a diverging lr is a result of the search, not a failure of it
            print(f"[{label}] diverged: {exc}")
            status, summary = "diverged", {}
        self.trained += 1
        # a split replaced while this trial read it: its figures are not this search's, and are not kept
        same_split_as_the_search(self.args, self.data)
        best = {"train_mae": math.nan, "val_mae": math.nan, "val_cs5": math.nan}
        history_path = run_dir / "history.json"
        if status == "ok" and history_path.exists():
            history = json.loads(history_path.read_text())
            best = min(history, key=lambda h: h["val_mae"])
        model, lr_s, wd_s, epochs, subset, seed, settings = key
        row = {"lr": float(lr), "weight_decay": float(weight_decay), "epochs": epochs,
               "train_mae": round(best["train_mae"], 4), "val_mae": round(best["val_mae"], 4),
               "val_cs5": round(best["val_cs5"], 4),
               "seconds": round(summary.get("train_seconds", time.perf_counter() - start), 1),
               "subset_fraction": float(subset), "seed": seed, "model": model, "settings": settings,
               "status": status, "source": "trained", "trial": name}
        append_row(self.csvs[stage], row)
        self.log_hparams(row)
        if status == "ok":
            print(f"[{label}] lr {lr:.3g} wd {weight_decay:.3g}: val MAE {row['val_mae']:.3f}  "
                  f"CS@5 {row['val_cs5']:.1%}  train MAE {row['train_mae']:.3f}  ({row['seconds']} s)")
        return row

    def log_hparams(self, row):
        if not all(math.isfinite(row[k]) for k in ("val_mae", "val_cs5", "train_mae")):
            return  # the HParams view cannot show NaN metrics
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(str(self.out / "tb_hparams"))
        self._writer.add_hparams({"lr": row["lr"], "weight_decay": row["weight_decay"], "epochs": row["epochs"]},
                                 {"val_mae": row["val_mae"], "val_cs5": row["val_cs5"], "train_mae": row["train_mae"]},
                                 run_name=row["trial"])
        self._writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()


def finite(rows):
    return [r for r in rows if math.isfinite(r["val_mae"])]


def by_val(row):
    return row["val_mae"], row["lr"], row["weight_decay"]


# ----------------------------------------------------------------------------------------------
# Plots and files

def plot_lr_sweep(rows, path, weight_decay):
    plt = pyplot()
    rows = sorted(rows, key=lambda r: r["lr"])
    ok = finite(rows)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["lr"] for r in ok], [r["val_mae"] for r in ok], "o-", label="val MAE (best epoch)")
    ax.plot([r["lr"] for r in ok], [r["train_mae"] for r in ok], "s--", alpha=0.6, label="train MAE (augmented)")
    for r in rows:
        if not math.isfinite(r["val_mae"]):
            ax.axvline(r["lr"], color="r", linestyle=":", label="diverged")
    if ok:
        best = min(ok, key=by_val)
        ax.plot([best["lr"]], [best["val_mae"]], "*", color="k", markersize=14, label=f"best lr {best['lr']:.3g}")
    ax.set_xscale("log")
    epochs = rows[0]["epochs"] if rows else "?"
    ax.set(xlabel="learning rate", ylabel="MAE (years)",
           title=f"Learning-rate sweep ({epochs} epoch(s), weight decay {weight_decay:g})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def plot_grid(rows, lrs, weight_decays, path):
    plt = pyplot()
    table = np.full((len(lrs), len(weight_decays)), np.nan)
    for r in rows:
        for i, lr in enumerate(lrs):
            for j, wd in enumerate(weight_decays):
                if math.isclose(r["lr"], lr, rel_tol=1e-9) and math.isclose(r["weight_decay"], wd, rel_tol=1e-9, abs_tol=1e-15):
                    table[i, j] = r["val_mae"]
    fig, ax = plt.subplots(figsize=(1.8 * len(weight_decays) + 2.5, 1.1 * len(lrs) + 2))
    image = ax.imshow(np.ma.masked_invalid(table), cmap="viridis_r", aspect="auto")
    fig.colorbar(image, ax=ax, label="val MAE (years)")
    best = np.nanargmin(table) if np.isfinite(table).any() else None
    for i in range(len(lrs)):
        for j in range(len(weight_decays)):
            value = table[i, j]
            text = f"{value:.2f}" if math.isfinite(value) else "n/a"
            if best is not None and (i, j) == np.unravel_index(best, table.shape):
                text += "\nbest"
            ax.text(j, i, text, ha="center", va="center", fontweight="bold" if "best" in text else "normal",
                    bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none"})
    ax.set_xticks(range(len(weight_decays)), [f"{wd:g}" for wd in weight_decays])
    ax.set_yticks(range(len(lrs)), [f"{lr:.3g}" for lr in lrs])
    ax.set(xlabel="weight decay", ylabel="learning rate", title="Validation MAE per (lr, weight decay)")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def write_json(path, data):
    text = json.dumps(data, indent=2, default=str, allow_nan=True) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def should_resume(run_dir: Path, argv: list) -> bool:
    """Resume a trial or the final run (cut short by a kill) only when its last.pt was written with the same
    training settings, on the same split: a split made again by eda.py is searched again, and a run begun on
    the old one starts afresh (train.py --resume would refuse it)."""
    last = run_dir / "last.pt"
    if not last.exists():
        return False
    try:
        saved = load_checkpoint(last)
    except DataError:
        return False
    final = train.get_args_parser().parse_args(argv)
    return (not train.changed_settings(saved["config"], final) and not train.precision_changed(saved, final)
            and saved.get("split_digest") == train.split_digest(final.splits)
            and not train.teachers_changed(run_dir, final.teacher, saved))  # train.py --resume would refuse it


# ----------------------------------------------------------------------------------------------

def with_teacher_table(args, out: Path, cache_dir: Path):
    """--teacher checkpoints: their table is predicted once into OUT/teacher.npz and every trial (and the
    final run) reads that file, instead of each trial running the teachers again. With --teacher-online the
    trials run the checkpoints themselves, on every augmented batch; the table (which checks the teachers'
    split) is still predicted once, and placed in each run's folder (place_teacher_table), where train.py
    finds it made from these checkpoints and reads it."""
    if not args.teacher or train.teacher_is_table(args.teacher):
        return args
    if train.kept_teacher_table(out / "teacher.npz", args.teacher, train.split_faces_digest(args.splits)) is None:
        train.write_teacher_table(args, cache_dir, out / "teacher.npz")
    # the trials' key holds the checkpoints' bytes, not the table predicted from them again on every restart
    # (whose last digits may move with the device or threads)
    sources = train.teachers_digest(args.teacher)
    if args.teacher_online:
        return argparse.Namespace(**{**vars(args), "teacher_sources_digest": sources})
    return argparse.Namespace(**{**vars(args), "teacher": str(out / "teacher.npz"), "teacher_sources_digest": sources})


def place_teacher_table(args, out: Path, run_dir: Path):
    """--teacher-online: OUT/teacher.npz placed in a run's folder (unless there), for train.py to read: a hard
    link, so trials share its bytes (train.py only ever replaces the file, by rename, never writes into it); a
    copy where the file system has no hard links."""
    table = out / "teacher.npz"
    if args.teacher and args.teacher_online and table.is_file() and not (run_dir / "teacher.npz").exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            os.link(table, run_dir / "teacher.npz")
        except OSError:
            atomic_write(run_dir / "teacher.npz", lambda f: f.write(table.read_bytes()))


def check_args(args):
    if args.model not in MODEL_NAMES:
        raise DataError(f"unknown model {args.model!r}; choose one of {', '.join(MODEL_NAMES)}")
    if any(lr <= 0 or not math.isfinite(lr) for lr in args.lrs):
        raise DataError(f"--lrs must be positive, got {args.lrs}")
    if any(wd < 0 or not math.isfinite(wd) for wd in args.weight_decays + [args.sweep_weight_decay]):
        raise DataError("weight decays must be >= 0")
    for name in ("top_lrs", "epochs_per_trial", "final_epochs", "overfit_images", "batch_size"):
        if getattr(args, name) < 1:
            raise DataError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.overfit_steps < 0:
        raise DataError(f"--overfit-steps must be >= 0, got {args.overfit_steps}")
    if not 0 < args.subset_fraction <= 1:
        raise DataError(f"--subset-fraction must be in (0, 1], got {args.subset_fraction}")
    splits = Path(args.splits)
    for name in ("train.csv", "val.csv"):  # test.csv: the final run's alone; check_settings below names it
        if not (splits / name).is_file():
            raise DataError(f"{splits / name} not found (eda.py writes OUT/splits/train.csv and val.csv)")
    # what train.py would refuse only after the overfit check built the cache, named now, as the tuner's flags
    runs = [(epochs, lr, "a trial", f"--epochs-per-trial {args.epochs_per_trial}", False)
            for epochs in [args.epochs_per_trial] for lr in args.lrs]
    if not args.skip_final:  # the final run's own argv, without --no-test: a missing test.csv is named now
        runs.append((args.final_epochs, args.lrs[0], "the final run", f"--final-epochs {args.final_epochs}", True))
    for epochs, lr, which, flag, final in runs:
        trial = train.get_args_parser().parse_args(trial_argv(args, lr, 0.0, epochs, Path(args.out_dir), "cache",
                                                              final=final))
        try:
            train.check_settings(trial)
        except DataError as exc:
            text = str(exc).replace(" (see train.py --help)", " (see hyperparameter_tunning.py --help)").replace(
                "; or pass --no-test", "; or pass --skip-final")
            raise DataError(text + (f" (in {which}, {flag})" if "epochs" in text else "")) from None
    train.refuse_output_in_data(Path(args.out_dir), splits)
    train.refuse_output_in_data(train.cache_folder(args), splits, train.CACHE_FLAG)


def main(args):
    check_args(args)
    # a second search into OUT would interleave its rows with ours and both would write best_params.json
    with folder_lock(args.out_dir, "hyperparameter_tunning.py"):
        return search_and_train(args)


def search_and_train(args):
    configure_threads(args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = train.cache_folder(args)
    device = train.resolve_device(args.device)
    start = time.perf_counter()
    args = with_teacher_table(args, out, cache_dir)

    overfit = None if args.skip_overfit else run_overfit_check(args, out, cache_dir, device)

    search = Search(args, out, cache_dir)
    try:
        sweep = [search.run("lr_sweep", lr, args.sweep_weight_decay, f"lr sweep {i}/{len(args.lrs)}")
                 for i, lr in enumerate(args.lrs, 1)]
        plot_lr_sweep(sweep, out / "lr_sweep.png", args.sweep_weight_decay)
        ranked = sorted(finite(sweep), key=by_val)
        if not ranked:
            raise DataError(f"every lr of the sweep diverged ({', '.join(f'{lr:g}' for lr in args.lrs)}); "
                            "try smaller --lrs")
        top = [r["lr"] for r in ranked[:args.top_lrs]]
        print("lr sweep: best " + ", ".join(f"lr {r['lr']:.3g} (val MAE {r['val_mae']:.3f})"
                                            for r in ranked[:args.top_lrs]))
        cells = [(lr, wd) for lr in top for wd in args.weight_decays]
        grid = [search.run("grid_search", lr, wd, f"grid {i}/{len(cells)}") for i, (lr, wd) in enumerate(cells, 1)]
        plot_grid(grid, top, args.weight_decays, out / "grid_search.png")
    finally:
        search.close()

    candidates = finite(sweep + grid)
    chosen = min(candidates, key=by_val)
    print(f"search: {search.trained} trial(s) trained this time, {len(sweep) + len(grid)} rows; best lr "
          f"{chosen['lr']:.3g}, weight decay {chosen['weight_decay']:g} (val MAE {chosen['val_mae']:.3f}, "
          f"{chosen['trial']}) in {time.perf_counter() - start:.0f} s")

    best = {"lr": chosen["lr"], "weight_decay": chosen["weight_decay"], "val_mae": chosen["val_mae"],
            "val_cs5": chosen["val_cs5"], "train_mae": chosen["train_mae"], "trial": chosen["trial"],
            "selected_by": "lowest validation MAE of the sweep and grid trials",
            "trial_epochs": args.epochs_per_trial, "subset_fraction": args.subset_fraction, "seed": args.seed,
            "model": args.model, "head": args.head, "loss": args.loss, "batch_size": args.batch_size,
            "augment": args.augment, "image_size": args.image_size,
            "overfit_check": None if overfit is None else {k: overfit[k] for k in ("passed", "steps", "final_mae")},
            "trials_trained_this_run": search.trained, "final": None,
            "skip_final": bool(args.skip_final)}  # final stays null also while (or where) the final run fails
    run_dir = out / "final"
    argv = trial_argv(args, chosen["lr"], chosen["weight_decay"], args.final_epochs, run_dir, cache_dir, final=True)
    # the whole recipe the trials measured, also after --skip-final: the fields above alone leave out the
    # preprocessing, schedule, teachers ... that train.py's defaults would otherwise fill in
    best["final_command"] = "python train.py " + shlex.join(argv)
    if args.skip_final:
        print(f"--skip-final: train the chosen pair with: {best['final_command']}")
    else:
        argv.append("--resume" if should_resume(run_dir, argv) else "--overwrite")
        same_split_as_the_search(args, search.data)
        place_teacher_table(args, out, run_dir)
        # the chosen pair and its command are kept (final: null) should the final run fail, and no earlier
        # search's best_params.json is left describing another search
        write_json(out / "best_params.json", best)
        print(f"final run: {args.final_epochs} epochs on the full training split -> {run_dir}")
        best["final"] = train.main(train.get_args_parser().parse_args(argv))
    write_json(out / "best_params.json", best)
    print(f"wrote {out / 'best_params.json'}")
    return best


if __name__ == "__main__":
    run_cli(main, get_args_parser())
