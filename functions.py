"""Plain step functions shared by every stage: seeding, losses, one training epoch, evaluation,
plots, distributed helpers and the folder lock (cli.py holds the command-line rules)."""
import contextlib
import errno
import math
import os
import random
import time
from pathlib import Path

try:
    import fcntl  # flock; Windows has none
except ImportError:
    fcntl = None

import numpy as np

from cli import lazy_import
from custom_dataset import (AugmentConfig, DataError, atomic_write, augment_batch, normalize, parse_zooms,
                            process_alive, zoom_batch)

torch = lazy_import("torch")  # imported on first use: scripts answer --help without it

AGE_BIN_WIDTH = 10  # per-age-bin MAE is reported per decade: 20-29, 30-39, ...


class NonFiniteLossError(RuntimeError):
    """Training diverged; the message names the epoch and batch."""


# ----------------------------------------------------------------------------------------------
# Command line

@contextlib.contextmanager
def folder_lock(folder, what="train.py"):
    """Hold FOLDER/.lock (holding this PID) while the block runs, so that a second run into the same
    folder stops with one line instead of mixing its outputs in. A lock whose process is gone (killed)
    is taken over with a note. Where the system has flock (not Windows) the file is flock'ed too: two runs
    that both find a dead run's lock cannot both take it over."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / ".lock"
    held = _take_lock(lock, folder, what)
    try:
        yield
    finally:
        try:
            if lock.read_text().strip() == str(os.getpid()):  # never another run's lock
                lock.unlink()
        except OSError:
            pass
        if held is not None:
            os.close(held)  # the flock goes with it, after the file: a run that opened it meanwhile tries again


# flock's answers on a file system that has no locks (NFS without lockd, Lustre without -o flock, some FUSE mounts)
NO_FLOCK = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL}


def _take_lock(lock: Path, folder, what):
    """Create or take over the lock; the open descriptor holding its flock (None without flock)."""
    busy = f"{folder} is in use by another {what}"
    use_flock = fcntl is not None
    for _ in range(3):
        try:
            fd, created = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644), True
        except FileExistsError:
            try:
                fd, created = os.open(lock, os.O_RDWR), False
            except FileNotFoundError:  # released meanwhile: try again
                continue
        try:
            # an empty lock seconds old is one another run has created and not yet locked and written its PID
            # into; asked before our flock, which would otherwise keep its creator out
            if not created and not _lock_text(fd) and time.time() - os.fstat(fd).st_mtime < 5:
                raise DataError(f"{busy} (PID ?); wait for it or choose another --out-dir")
            if use_flock:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise DataError(f"{busy} (PID {_lock_pid(fd) or '?'}); wait for it or choose another "
                                    "--out-dir") from None
                except OSError as exc:
                    if exc.errno not in NO_FLOCK:
                        raise
                    use_flock = False  # the PID in the file alone, as on Windows
                else:
                    if os.fstat(fd).st_ino != _inode(lock):  # released and removed between our open and flock
                        os.close(fd)
                        continue
            if not created:
                pid = _lock_pid(fd)
                if pid and pid != os.getpid() and process_alive(pid):
                    raise DataError(f"{busy} (PID {pid}); wait for it or choose another --out-dir")
                print(f"note: {lock} was left by a process that is gone (PID {pid or '?'}); taking it over")
                if not use_flock:  # no flock to hold it by: made anew, so that a second taker's O_EXCL fails
                    os.close(fd)
                    lock.unlink(missing_ok=True)
                    continue
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode())
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        if not use_flock:
            os.close(fd)
            return None
        return fd
    raise DataError(f"{busy}; wait for it or choose another --out-dir")  # taken over by others in between


def _lock_text(fd) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 64).decode("utf-8", "replace").strip()


def _lock_pid(fd) -> int:
    text = _lock_text(fd)
    return int(text) if text.isdigit() else 0


def _inode(path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def same_or_inside(path, folder) -> bool:
    """Whether path is folder or below it: by name, and where they exist by identity (device, inode), as a
    case-insensitive disk (an SD card, macOS, Windows) names one folder two ways: Photos/x inside photos."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    if path == folder or folder in path.parents:
        return True
    try:
        target = folder.stat()
    except OSError:
        return False
    if not target.st_ino:  # some network and FUSE mounts report no inode: every folder would match
        return False
    for above in [path, *path.parents]:
        try:
            found = above.stat()
        except OSError:  # not made yet: its parent may be the folder
            continue
        if (found.st_dev, found.st_ino) == (target.st_dev, target.st_ino):
            return True
    return False


def same_file(a, b) -> bool:
    """Whether two names are one file: the same resolved path, or, where both exist, the same file on disk
    (IMG_1.JPG and img_1.jpg on a case-insensitive disk)."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def set_seed(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_threads(threads: int | None = None):
    """Use every core for torch's own ops; the loader works in-process, so nothing competes."""
    torch.set_num_threads(threads or os.cpu_count() or 1)
    keep_freed_memory()


def keep_freed_memory():
    """Ask glibc to keep freed blocks instead of returning them to the OS.

    A training step allocates and frees tens of MB of activations; by default glibc maps each large
    block fresh and unmaps it on free, so every step pays page faults on zeroed pages. Measured on
    the 2-core machine (`benchmark.py --probes`): +30-55 % training images/s and +60 % batch-64
    inference. The process keeps its peak memory until exit. No-op where the C library is not glibc.
    """
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 1 << 30) and mallopt(m_trim_threshold, 1 << 30))


# ----------------------------------------------------------------------------------------------
# Losses and metrics

HUBER_DELTA = 5.0  # years: errors below it are squared, above it linear


def point_loss(pred, target, kind: str = "l1"):
    """The loss between predicted and true ages named by train.py --loss."""
    if kind == "l1":
        return torch.nn.functional.l1_loss(pred, target)
    if kind == "mse":
        return torch.nn.functional.mse_loss(pred, target)
    if kind == "huber":
        return torch.nn.functional.huber_loss(pred, target, delta=HUBER_DELTA)
    raise ValueError(f"unknown loss {kind!r}; choose l1, mse or huber")


LABEL_SIGMA = 2.0  # years: the spread of the Gaussian a distribution head learns around each true age


def gaussian_targets(ages, grid, sigma: float = LABEL_SIGMA):
    """Each age as a Gaussian over the integer ages of grid (rows sum to 1)."""
    soft = torch.exp(-0.5 * ((grid.view(1, -1) - ages.view(-1, 1)) / sigma) ** 2)
    return soft / soft.sum(1, keepdim=True).clamp_min(1e-12)


def age_loss(model, outputs, target, kind: str = "l1", sigma: float = LABEL_SIGMA, teacher=None,
             teacher_weight: float = 0.5, mix=None):
    """Loss on predicted ages; the distribution head adds KL to a Gaussian around the true age.

    teacher (train.py --teacher): (the teacher's expected ages, its age distributions on the model's
    age grid) for the images as the model saw them (train_one_epoch blends a table's targets with the
    images). Distillation blends every target: teacher_weight of the point loss is towards the
    teacher's age, and the KL target is the same blend of the teacher's distribution and the label's
    Gaussian, so the student learns the teacher's view of a face plus the label.

    mix (train.py --mixup): (partner index, weight per image) of a batch whose images were blended with
    their partners (blend_with_partners); the label's targets are then the same blend of the two
    images' targets."""
    pred = model.ages_from_outputs(outputs)
    loss = point_loss(pred, blend_with_partners(target, mix), kind)
    if teacher is not None:
        loss = (1 - teacher_weight) * loss + teacher_weight * point_loss(pred, teacher[0], kind)
    if model.head == "distribution":
        soft = blend_with_partners(gaussian_targets(target, model.age_grid, sigma), mix)
        if teacher is not None:
            soft = (1 - teacher_weight) * soft + teacher_weight * teacher[1]
        loss = loss + torch.nn.functional.kl_div(torch.log_softmax(outputs, 1), soft, reduction="batchmean")
    return loss, pred


MIXUP_BANDWIDTH = 5.0  # years: C-Mixup's kernel width; partners are mostly within about twice this


def mixup_partners(ages, alpha: float, generator=None, bandwidth: float = MIXUP_BANDWIDTH):
    """C-Mixup (Yao et al., NeurIPS 2022) for one batch: each image's partner is drawn with probability
    exp(-(age difference)^2 / 2 bandwidth^2) (itself included), so a blend of two faces is labelled with an
    age both faces are near; its weight is drawn from Beta(alpha, alpha). Returns (partner index, weight)."""
    ages = ages.float().cpu()
    kernel = torch.exp(-0.5 * ((ages.view(-1, 1) - ages.view(1, -1)) / bandwidth) ** 2)
    partner = torch.multinomial(kernel, 1, generator=generator).squeeze(1)
    # Beta from two Gammas would bypass the generator; numpy's, seeded from it, keeps runs repeatable
    rng = np.random.default_rng(int(torch.randint(2 ** 31, (1,), generator=generator)))
    weight = torch.from_numpy(rng.beta(alpha, alpha, len(ages))).float()
    return partner, weight


def blend_with_partners(t, mix):
    """Rows of t (images, ages, distributions) blended per mixup_partners: weight x t + (1 - weight) x t[partner]."""
    if mix is None:
        return t
    partner, weight = (m.to(t.device) for m in mix)
    weight = weight.to(t.dtype).view(-1, *([1] * (t.dim() - 1)))
    return weight * t + (1 - weight) * t[partner]


def age_bin(age: float) -> str:
    low = int(age // AGE_BIN_WIDTH) * AGE_BIN_WIDTH
    return f"{low}-{low + AGE_BIN_WIDTH - 1}"


def regression_metrics(pred, true) -> dict:
    """MAE, RMSE, CS@5 (share of |error| <= 5 years) and MAE per decade of true age."""
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    err = np.abs(pred - true)
    per_bin = {b: {"mae": v["mae"], "n": v["n"]} for b, v in group_metrics(pred, true)["decade"].items()}
    return {"mae": float(err.mean()), "rmse": float(np.sqrt((err ** 2).mean())),
            "cs5": float((err <= 5).mean()), "mae_per_bin": per_bin, "n": int(len(err))}


def group_metrics(pred, true, groups: dict | None = None) -> dict:
    """Per group: {"mae", "mean_error" (signed, predicted - true: > 0 means too old), "n"}, for
    each labelled column of groups (e.g. {"gender": ["female", ...]}; a blank label is "unknown")
    and per decade of true age."""
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    err = pred - true
    columns = {name: [label or "unknown" for label in labels] for name, labels in (groups or {}).items()}
    columns["decade"] = [age_bin(a) for a in true]
    result = {}
    for name, labels in columns.items():
        labels = np.asarray(labels)
        order = sorted(set(labels), key=lambda s: (s == "unknown", int(s.split("-")[0]) if name == "decade" else s))
        result[name] = {str(label): {"mae": float(np.abs(err[labels == label]).mean()),
                                "mean_error": float(err[labels == label].mean()), "n": int((labels == label).sum())}
                        for label in order}
    return result


# ----------------------------------------------------------------------------------------------
# Age intervals: split-conformal calibration on the validation split

INTERVAL_BAND = 10      # years: validation errors are pooled per band of *predicted* age, because the
                        # error grows with age (a 70-year-old is harder than a 25-year-old)
INTERVAL_MIN_FACES = 50  # a band with fewer validation faces is merged into its neighbour
INTERVAL_LEVEL = 0.9  # the default coverage of the age interval (train.py, inference.py, benchmark.py)


def fit_interval(pred, true, band=INTERVAL_BAND, min_faces=INTERVAL_MIN_FACES) -> dict:
    """Conformal calibration from validation predictions: per band of predicted age, the sorted
    absolute errors (rounded up to 0.01 year, which only widens intervals). Any level is read from
    it later (interval_half_width), so one calibration serves every --interval-level."""
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if len(pred) == 0:
        raise ValueError("fit_interval: no validation predictions")
    starts = np.floor(pred / band) * band
    groups = []  # [band start, indices]
    for start in np.unique(starts):
        members = np.flatnonzero(starts == start)
        if groups and len(groups[-1][1]) < min_faces:
            groups[-1][1] = np.concatenate([groups[-1][1], members])
        else:
            groups.append([float(start), members])
    if len(groups) > 1 and len(groups[-1][1]) < min_faces:  # a thin last band joins the one before
        thin = groups.pop()
        groups[-1][1] = np.concatenate([groups[-1][1], thin[1]])
    bands = [{"from": None if i == 0 else start,
              "errors": [float(e) for e in np.sort(np.ceil(np.abs(pred[idx] - true[idx]) * 100) / 100)]}
             for i, (start, idx) in enumerate(groups)]
    return {"method": f"split-conformal on the validation split, |error| per {band}-year band of predicted age",
            "bands": bands}


def interval_half_width(errors, level: float) -> float:
    """The conformal quantile: the ceil((n + 1) * level)-th smallest of n calibration errors, which
    covers a new face with probability >= level; infinite when n is too small for the level."""
    if not 0 < level < 1:
        raise ValueError(f"interval level must be between 0 and 1, got {level}")
    rank = math.ceil((len(errors) + 1) * level)
    return float(errors[rank - 1]) if rank <= len(errors) else float("inf")


def interval_bands(calibration: dict, level: float):
    """(band starts, half widths) of a calibration at one level: what predict_interval looks up."""
    starts = np.array([-np.inf if b["from"] is None else b["from"] for b in calibration["bands"]])
    return starts, np.array([interval_half_width(b["errors"], level) for b in calibration["bands"]])


def predict_interval(pred, calibration: dict, level: float, bands=None):
    """(low, high) arrays: pred -/+ the half width of each prediction's band; low never below 0.
    bands: interval_bands(calibration, level), when the caller keeps them for many predictions."""
    pred = np.asarray(pred, dtype=np.float64)
    starts, widths = bands if bands is not None else interval_bands(calibration, level)
    half = widths[np.searchsorted(starts, pred, side="right") - 1]
    return np.maximum(pred - half, 0.0), pred + half


def interval_metrics(pred, true, calibration: dict, level: float) -> dict:
    """Coverage (share of true ages inside their interval), mean width, and coverage per decade."""
    return {"level": level, **coverage_of(true, *predict_interval(pred, calibration, level))}


def coverage_of(true, low, high) -> dict:
    """Coverage, mean width and coverage per decade of true age of given intervals."""
    true = np.asarray(true, dtype=np.float64)
    inside = (true >= low) & (true <= high)
    decades = np.array([age_bin(a) for a in true])
    per_decade = {d: {"coverage": float(inside[decades == d].mean()), "n": int((decades == d).sum())}
                  for d in sorted(set(decades), key=lambda s: int(s.split("-")[0]))}
    return {"coverage": float(inside.mean()), "mean_width": float(np.mean(np.asarray(high) - low)),
            "coverage_per_decade": per_decade}


SPREAD_FLOOR = 1.0  # years: a distribution head's spread below this is taken as this (no zero-width interval)


def fit_spread_interval(pred, true, spread, floor=SPREAD_FLOOR) -> dict:
    """The alternative the interval experiment weighs (benchmark.py --calibrate): split-conformal on
    |error| / predicted spread, so each face's interval scales with its own predicted spread."""
    scale = np.maximum(np.asarray(spread, dtype=np.float64), floor)
    scores = np.abs(np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)) / scale
    return {"method": "split-conformal on |error| / predicted spread", "floor": floor,
            "scores": [float(v) for v in np.sort(np.ceil(scores * 1e4) / 1e4)]}


def predict_spread_interval(pred, spread, calibration: dict, level: float):
    """(low, high): pred -/+ the conformal quantile of the scores times each face's spread."""
    pred = np.asarray(pred, dtype=np.float64)
    half = interval_half_width(calibration["scores"], level) * np.maximum(np.asarray(spread, np.float64),
                                                                           calibration["floor"])
    return np.maximum(pred - half, 0.0), pred + half


# ----------------------------------------------------------------------------------------------
# Age map: a post-hoc monotone correction of the pull toward the middle ages, fitted on validation

MAE_NOISE = 0.05          # years: run-to-run noise of a validation MAE, the margin of the keep rule
WORST_DECADE_MIN_FACES = 20  # a decade with fewer faces is too small to judge an MAE on
AGE_MAP_MIN_FACES = 100      # fewer validation faces: no map is fitted (each cross-fitting half is too thin)


def worst_decade(pred, true, min_faces=WORST_DECADE_MIN_FACES):
    """(decade, MAE) of the decade of true age with the largest MAE, among decades with at least
    min_faces faces (all decades when none has that many)."""
    return worst_of_table(group_metrics(pred, true)["decade"], min_faces)


def worst_of_table(table: dict, min_faces=WORST_DECADE_MIN_FACES):
    """worst_decade of a per-decade table {decade: {"mae", "n"}} (e.g. a checkpoint's mae_per_bin)."""
    judged = {k: v for k, v in table.items() if v["n"] >= min_faces} or table
    name = max(judged, key=lambda k: judged[k]["mae"])
    return name, judged[name]["mae"]


def worst_decade_rule_failures(mae_before, mae_after, worst_before, worst_after, noise=MAE_NOISE) -> list:
    """The conditions of the age-extremes experiments' keep rule that fail, in words (empty: it is met):
    the worst decade's MAE must go down and the overall MAE must not rise by more than the noise."""
    return [why for why, failed in ((f"the overall MAE rises by more than {noise:g}", mae_after > mae_before + noise),
                                    ("the worst decade does not improve", not worst_after < worst_before)) if failed]


def lowers_worst_decade(mae_before, mae_after, worst_before, worst_after, noise=MAE_NOISE) -> bool:
    return not worst_decade_rule_failures(mae_before, mae_after, worst_before, worst_after, noise)


def fit_age_map(pred, true) -> dict:
    """Isotonic regression from predicted to true age, as knots for np.interp (flat beyond the ends).
    Knots are rounded to 1e-4 years for the metadata; two that rounding makes equal keep the first, so
    x stays strictly increasing (what checkpoints.age_map_is_usable demands of an export)."""
    from sklearn.isotonic import IsotonicRegression
    iso = IsotonicRegression(out_of_bounds="clip").fit(np.asarray(pred, np.float64), np.asarray(true, np.float64))
    x, first = np.unique(np.round(iso.X_thresholds_.astype(np.float64), 4), return_index=True)
    return {"method": "isotonic regression from predicted to true age on the validation split",
            "x": [float(v) for v in x],
            "y": [round(float(v), 4) for v in iso.y_thresholds_[first]]}


def apply_age_map(pred, age_map: dict | None) -> np.ndarray:
    """Ages through the map (unchanged without one): what evaluation and inference report."""
    pred = np.asarray(pred, dtype=np.float64)
    return pred if not age_map else np.interp(pred, age_map["x"], age_map["y"])


def judge_age_map(pred, true, noise=MAE_NOISE, seed=0) -> dict:
    """Is an age map worth keeping? Judged on validation alone by 2-fold cross-fitting (each half
    mapped by a map fitted on the other half), with lowers_worst_decade. "crossed" (the cross-fitted
    ages) is what the interval is calibrated on when the map is kept: residuals of a map fitted on
    the same faces would be too small."""
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if len(pred) < AGE_MAP_MIN_FACES:
        return {"keep": False, "n": len(pred),
                "reason": f"too few validation faces to judge a map ({len(pred)} < {AGE_MAP_MIN_FACES})"}
    halves = np.array_split(np.random.default_rng(seed).permutation(len(pred)), 2)
    crossed = np.empty(len(pred))
    for part, other in ((halves[0], halves[1]), (halves[1], halves[0])):
        crossed[part] = apply_age_map(pred[part], fit_age_map(pred[other], true[other]))
    mae_before, mae_after = float(np.mean(np.abs(pred - true))), float(np.mean(np.abs(crossed - true)))
    worst_before, worst_after = worst_decade(pred, true), worst_decade(crossed, true)
    keep = lowers_worst_decade(mae_before, mae_after, worst_before[1], worst_after[1], noise)
    return {"val_mae_before": mae_before, "val_mae_after": mae_after, "val_worst_decade_before": list(worst_before),
            "val_worst_decade_after": list(worst_after), "noise": noise, "worst_decade_min_faces": WORST_DECADE_MIN_FACES,
            "keep": keep, "crossed": crossed}


def calibrate_ages(pred, true, age_map="auto"):
    """What a model carries from its validation predictions: (age map or None, interval calibration,
    the map's judgement or None with age_map "off"). The interval is fitted around the ages the model
    reports, i.e. after the map, on the cross-fitted ages (residuals of faces the map was not fitted on)."""
    judgement = judge_age_map(pred, true) if age_map == "auto" else None
    kept = fit_age_map(pred, true) if judgement and judgement["keep"] else None
    interval = fit_interval(judgement["crossed"] if kept else pred, true)
    if judgement:
        judgement = {k: v for k, v in judgement.items() if k != "crossed"}
    return kept, interval, judgement


# ----------------------------------------------------------------------------------------------
# Steps

def _prepare(images, mean, std, device):
    x = normalize(images.to(device, non_blocking=True), mean, std)
    return x.contiguous(memory_format=torch.channels_last)  # +30-40 % training speed on CPU, measured


def train_one_epoch(model, loader, optimizer, *, mean, std, loss_kind="l1", scheduler=None,
                    augment: AugmentConfig | None = None, generator=None, device="cpu", epoch=0, progress=True,
                    ema=None, teacher_weight: float = 0.5, label_sigma: float = LABEL_SIGMA, mixup: float = 0.0,
                    online_teacher=None):
    """One pass over the loader. Returns {"loss", "mae", "images", "seconds", "images_per_s"}.
    ema (a torch.optim.swa_utils.AveragedModel), if given, is updated after every optimiser step.
    Batches of (images, ages, teacher ages, teacher distributions) train towards the teacher too
    (age_loss; "mae" stays the error against the labels). online_teacher (train.py --teacher-online):
    instead, a function of the batch the model is about to see (0-255, augmented and blended) that
    returns the teacher's (ages, distributions) for exactly those images. label_sigma: the spread of the
    label's Gaussian (age_loss). mixup > 0: every batch is blended by C-Mixup with Beta(mixup, mixup)
    weights (mixup_partners), after augmentation; "mae" is then against the blended labels.

    The scheduler, if given, steps per batch (warm-up and cosine are defined in steps). The model
    is expected in channels_last memory format, as the batches are.
    """
    from tqdm import tqdm
    model.train()
    total_loss = total_abs = 0.0
    seen = 0
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch} train", leave=False, disable=not progress)
    for batch_index, (images, ages, *teacher) in enumerate(bar):
        images = images.to(device, non_blocking=True).float()  # augmented where the model runs (augment_batch)
        if augment is not None:
            images = augment_batch(images, augment, generator)
        mix = mixup_partners(ages, mixup, generator) if mixup > 0 else None
        images = blend_with_partners(images, mix)
        x = _prepare(images, mean, std, device)
        y = ages.to(device, non_blocking=True)
        if online_teacher is not None:
            teacher = online_teacher(images)
        else:  # a table's targets are of the unblended faces: blended like the images
            teacher = tuple(blend_with_partners(t.to(device, non_blocking=True), mix) for t in teacher) or None
        outputs = model(x)
        loss, pred = age_loss(model, outputs, y, loss_kind, sigma=label_sigma, teacher=teacher,
                              teacher_weight=teacher_weight, mix=mix)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"loss became {loss.item()} at epoch {epoch}, batch {batch_index}; "
                                     "lower --lr or check the labels")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
        if scheduler is not None:
            scheduler.step()
        n = len(ages)
        total_loss += loss.item() * n
        total_abs += (pred.detach() - blend_with_partners(y, mix)).abs().sum().item()
        seen += n
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", mae=f"{total_abs / seen:.2f}")
    seconds = time.perf_counter() - start
    return {"loss": total_loss / max(seen, 1), "mae": total_abs / max(seen, 1), "images": seen,
            "seconds": seconds, "images_per_s": seen / max(seconds, 1e-9)}


def _ages_and_spread(model, x, spread):
    if not spread:
        return model.predict(x), None
    return model.ages_and_spread(model(x))  # the wrapper's forward (autocast, DDP), AgeModel's rule


def tta_views(images, mean, std, device, tta_flip=False, tta_zoom=()):
    """The normalised inputs one prediction averages over: the 0-255 batch itself, each centred zoom of it
    (custom_dataset.zoom_batch, as inference.py makes them) and, with the flip, each of those mirrored."""
    sources = [images.float()] + [torch.from_numpy(zoom_batch(images.numpy(), z)) for z in tta_zoom]
    for source in sources:
        x = _prepare(source, mean, std, device)
        yield x
        if tta_flip:
            yield x.flip(-1)


# test-time zoom sets compared on validation by train.py --choose-zooms and benchmark.py --zoom-probe / --ship-zooms
# ("" is the face alone; each zoom is the share of the side kept around the centre, as --tta-zoom takes it)
ZOOM_CANDIDATES = ("", "0.975", "0.95", "0.9", "0.95,0.9")


def lowest_mae_zoom_set(predictions: dict, true) -> tuple:
    """The zoom set to keep: (its name, {set: MAE}) from {set: predicted ages} of one split ("none", the face alone,
    one of them). The lowest MAE wins; a tie goes to the set listed first, so put the cheaper set first."""
    true = np.asarray(true, dtype=np.float64)
    figures = {name: float(np.mean(np.abs(np.asarray(pred, dtype=np.float64) - true)))
               for name, pred in predictions.items()}
    if not figures:
        raise ValueError("no zoom set to choose from")
    return min(figures, key=figures.get), figures


def test_time_views(config) -> dict:
    """A run's test-time averaging (train.py --tta-flip, --tta-zoom; its args, a checkpoint's config or an export's
    metadata) as the keywords of predict_loader, predict_distributions and evaluate."""
    return {"tta_flip": bool(config.get("tta_flip", False)), "tta_zoom": parse_zooms(config.get("tta_zoom"))}


def predict_loader(model, loader, mean, std, *, device="cpu", tta_flip=False, tta_zoom=(), progress=False,
                   spread=False):
    """Predicted and true ages of a loader, each the mean over its test-time views (tta_views: the image,
    its zooms, their mirror images); with spread, also the predicted distribution's standard deviation
    (None for a regression head; over several views, that of their distributions' even mixture)."""
    from tqdm import tqdm
    model.eval()
    preds, trues, spreads = [], [], []
    with torch.no_grad():
        for images, ages in tqdm(loader, desc="evaluate", leave=False, disable=not progress):
            outputs = [_ages_and_spread(model, x, spread) for x in tta_views(images, mean, std, device, tta_flip,
                                                                               tta_zoom)]
            pred = sum(p for p, _ in outputs) / len(outputs)
            sd = outputs[0][1]
            if sd is not None and len(outputs) > 1:  # a mixture's variance: mean variance + spread of the means
                sd = (sum(s ** 2 + (p - pred) ** 2 for p, s in outputs) / len(outputs)).sqrt()
            preds.append(pred.float().cpu())
            trues.append(ages.float())
            spreads.append(sd)
    pred, true = torch.cat(preds).numpy(), torch.cat(trues).numpy()
    if not spread:
        return pred, true
    return pred, true, None if spreads[0] is None else torch.cat(spreads).float().cpu().numpy()


def predict_distributions(model, loader, mean, std, *, ages=None, device="cpu", tta_flip=False, tta_zoom=()):
    """(age distribution of each image, float32 N x K, and its integer ages, K): a distribution head's
    softmax (over several test-time views, their mean), a regression head's age as a Gaussian of LABEL_SIGMA
    over the integer ages `ages` (what a distillation student learns from)."""
    if model.head == "distribution":
        grid = model.age_grid
    elif ages is None:
        raise ValueError("a regression head needs the ages to spread its predictions over")
    else:
        grid = torch.as_tensor(ages, dtype=torch.float32, device=device)
    model.eval()
    rows = []
    with torch.no_grad():
        for images, _ in loader:
            views = list(tta_views(images, mean, std, device, tta_flip, tta_zoom))
            if model.head == "distribution":
                probs = sum(torch.softmax(model(v).float(), 1) for v in views) / len(views)
            else:
                probs = sum(gaussian_targets(model.predict(v).float(), grid) for v in views) / len(views)
            rows.append(probs.cpu())
    return torch.cat(rows).numpy().astype(np.float32), grid.cpu().numpy().round().astype(np.int32)


def evaluate(model, loader, mean, std, *, loss_kind="l1", device="cpu", tta_flip=False, tta_zoom=(), progress=False):
    """Metrics of a loader (see regression_metrics) plus "loss", "pred" and "true" arrays."""
    pred, true = predict_loader(model, loader, mean, std, device=device, tta_flip=tta_flip, tta_zoom=tta_zoom,
                                progress=progress)
    return metrics_of_predictions(pred, true, loss_kind)


def public(metrics: dict) -> dict:
    """Metrics without the per-image arrays, ready for JSON."""
    return {k: v for k, v in metrics.items() if k not in ("pred", "true")}


# ----------------------------------------------------------------------------------------------
# The training RNG state (checkpoints.py holds what a checkpoint contains)

def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()),
                                                   *np_state[2:]], "torch": torch.get_rng_state()}


def set_rng_state(state: dict):
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])


def time_runs(fn, x, runs: int, warmup: int) -> list:
    """Seconds per call, after warm-up."""
    with torch.no_grad():
        for _ in range(warmup):
            fn(x)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
    return times


# ----------------------------------------------------------------------------------------------
# Plots

def pyplot():
    """matplotlib without a display (the one place that picks the Agg backend)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_learning_curves(history: list, path):
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    # not one quantity: training minimises the point loss plus, for the distribution head, the KL to the label's
    # (and a teacher's) distribution, on augmented faces; validation scores the point loss alone
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train objective (augmented)")
    ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="val point loss")
    ax1.set(xlabel="epoch", ylabel="loss", title="Loss (compare the MAE panel across splits)")
    ax1.legend()
    ax2.plot(epochs, [h["train_mae"] for h in history], "o-", label="train MAE (augmented)")
    ax2.plot(epochs, [h["val_mae"] for h in history], "o-", label="val MAE")
    ax2.set(xlabel="epoch", ylabel="years", title="Mean absolute error")
    ax2.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def plot_pred_vs_true(pred, true, path, title="Test set"):
    plt = pyplot()
    pred, true = np.asarray(pred), np.asarray(true)
    metrics = regression_metrics(pred, true)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax1.scatter(true, pred, s=6, alpha=0.4)
    low, high = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    ax1.plot([low, high], [low, high], "k--", linewidth=1)
    ax1.set(xlabel="true age", ylabel="predicted age",
            title=f"{title}: MAE {metrics['mae']:.2f}, CS@5 {metrics['cs5']:.1%} (n={metrics['n']})")
    bins = list(metrics["mae_per_bin"])
    ax2.bar(bins, [metrics["mae_per_bin"][b]["mae"] for b in bins], color="#dd8452")
    for i, b in enumerate(bins):
        ax2.text(i, metrics["mae_per_bin"][b]["mae"], f"n={metrics['mae_per_bin'][b]['n']}", ha="center",
                 va="bottom", fontsize=8)
    ax2.set(xlabel="true age bin", ylabel="MAE (years)", title="Error per age bin")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def plot_groups(groups: dict, path, title="Test set"):
    """MAE and signed mean error per group (one row per grouping), each bar labelled with its n."""
    plt = pyplot()
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 2.6 * len(groups)), squeeze=False)
    for row, (name, table) in enumerate(groups.items()):
        labels = list(table)
        for col, (key, what) in enumerate((("mae", "MAE (years)"), ("mean_error", "predicted - true (years)"))):
            ax = axes[row][col]
            values = [table[label][key] for label in labels]
            bars = ax.bar(range(len(labels)), values, color="tab:blue" if key == "mae" else "tab:orange")
            ax.set_xticks(range(len(labels)), labels, rotation=30 if name == "decade" else 0, fontsize=8)
            ax.set(ylabel=what, title=f"{name}: {what.split(' (')[0]}")
            if key == "mean_error":
                ax.axhline(0, color="black", linewidth=0.8)
            for bar, label in zip(bars, labels):
                ax.annotate(f"n={table[label]['n']}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom" if bar.get_height() >= 0 else "top", fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def face_grid_figure(images, true, pred, cols=8):
    """Matplotlib figure of uint8 NCHW faces titled with true and predicted age (for TensorBoard)."""
    plt = pyplot()
    n = len(images)
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.5, rows * 1.7))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, img, t, p in zip(np.ravel(axes), images, true, pred):
        ax.imshow(img.permute(1, 2, 0).numpy())
        ax.set_title(f"true {t:.0f} / pred {p:.1f}", fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# Several processes (torchrun / DistributedDataParallel): this rank's place, sharded evaluation,
# epoch metrics summed over ranks, and the wrappers the training step sees

class Distributed:
    """This process's place in a torchrun launch. A plain process is rank 0 of 1 and every method
    is a no-op, so the single-process path runs exactly as before."""

    def __init__(self, rank=0, local_rank=0, world_size=1, local_world_size=1, device=None, backend=None):
        self.rank, self.local_rank = rank, local_rank
        self.world_size, self.local_world_size = world_size, local_world_size
        self.device, self.backend = device, backend
        self.active = backend is not None  # a process group was started (by init_process_group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if not self.active:
            return
        import torch.distributed as dist
        if self.backend == "nccl" and self.device is not None and self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def gather(self, value) -> list:
        """Every rank's value (any picklable object), in rank order, on every rank."""
        if not self.active:
            return [value]
        import torch.distributed as dist
        parts = [None] * self.world_size
        dist.all_gather_object(parts, value)
        return parts

    def all_same(self, value, what: str):
        """value if every rank has the same one, else a DataError naming what differs."""
        parts = self.gather(value)
        if any(p != parts[0] for p in parts):
            raise DataError(f"{what} differs between ranks: {parts}")
        return value

    def in_turn(self, fn):
        """fn() on rank 0 first (it builds what is missing, e.g. the preprocessing cache), then on the
        first rank of every other node (its disk may not be shared), then on the rest, which only read;
        barriers in between, so nothing is built twice on one disk."""
        result = None
        for turn in (self.rank == 0, self.rank != 0 and self.local_rank == 0, self.local_rank != 0):
            if turn:
                result = fn()
            self.barrier()
        return result

    def close(self):
        if self.active:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()
            self.active = False


def shard_indices(n: int, rank: int, world_size: int) -> list:
    """Every world_size-th index from rank: each item in exactly one shard, no padding duplicates."""
    return list(range(rank, n, world_size))


def metrics_of_predictions(pred, true, loss_kind="l1") -> dict:
    """What evaluate returns, from arrays of predicted and true ages."""
    pred, true = np.asarray(pred, dtype=np.float32), np.asarray(true, dtype=np.float32)
    metrics = regression_metrics(pred, true)
    p, t = torch.from_numpy(pred), torch.from_numpy(true)
    metrics["loss"] = point_loss(p, t, loss_kind).item()
    metrics["pred"], metrics["true"] = pred, true
    return metrics


def evaluate_sharded(model, dataset, mean, std, *, batch_size=256, loss_kind="l1", device="cpu", tta_flip=False,
                     tta_zoom=(), dist_ctx: Distributed | None = None, pin_memory=False):
    """evaluate() over a whole data set, split across the ranks of dist_ctx: each rank predicts
    shard_indices(...), the predictions are gathered back into data-set order, and every rank gets the
    metrics of the full set (the same figures as one process evaluating everything)."""
    from custom_dataset import make_loader
    if dist_ctx is None or not dist_ctx.active or dist_ctx.world_size == 1:
        return evaluate(model, make_loader(dataset, batch_size, shuffle=False, pin_memory=pin_memory), mean, std,
                        loss_kind=loss_kind, device=device, tta_flip=tta_flip, tta_zoom=tta_zoom)
    indices = shard_indices(len(dataset), dist_ctx.rank, dist_ctx.world_size)
    if indices:
        loader = make_loader(dataset, batch_size, shuffle=False, sampler=indices, pin_memory=pin_memory)
        pred, true = predict_loader(model, loader, mean, std, device=device, tta_flip=tta_flip, tta_zoom=tta_zoom)
    else:  # fewer images than ranks
        pred, true = np.zeros(0, np.float32), np.zeros(0, np.float32)
    pred_all, true_all = np.zeros(len(dataset), np.float32), np.zeros(len(dataset), np.float32)
    for rank, (p, t) in enumerate(dist_ctx.gather((pred, true))):
        pred_all[rank::dist_ctx.world_size], true_all[rank::dist_ctx.world_size] = p, t
    return metrics_of_predictions(pred_all, true_all, loss_kind)


def reduce_train_metrics(metrics: dict, dist_ctx: Distributed | None = None) -> dict:
    """train_one_epoch's metrics over all ranks: image-weighted loss and MAE, images summed (and per
    rank in "images_per_rank"), seconds of the slowest rank."""
    keys = ("loss", "mae", "images", "seconds")
    parts = dist_ctx.gather({k: metrics[k] for k in keys}) if dist_ctx is not None else [metrics]
    images = sum(p["images"] for p in parts)
    seconds = max(p["seconds"] for p in parts)
    return {"loss": sum(p["loss"] * p["images"] for p in parts) / max(images, 1),
            "mae": sum(p["mae"] * p["images"] for p in parts) / max(images, 1), "images": images,
            "seconds": seconds, "images_per_s": images / max(seconds, 1e-9),
            "images_per_rank": [p["images"] for p in parts]}


def broadcast_buffers(model, src: int = 0):
    """Copy rank src's buffers (BatchNorm running statistics) to every rank. DDP syncs them at the start
    of each forward only, so after an epoch each rank's statistics come from its own last batch; this
    makes every rank evaluate exactly the weights rank 0 saves."""
    import torch.distributed as dist
    for buf in model.buffers():
        dist.broadcast(buf, src)


def forwarding_ddp(model, **kwargs):
    """DistributedDataParallel(model) that still answers model.head, model.ages_from_outputs etc., so
    train_one_epoch and age_loss take it unchanged."""
    from torch.nn.parallel import DistributedDataParallel
    from model import Forwarding

    class ForwardingDDP(Forwarding, DistributedDataParallel):
        _inner_name = "module"
    return ForwardingDDP(model, **kwargs)
