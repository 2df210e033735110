"""Train an age regressor on the splits written by eda.py, test the best epoch once, export it.

    python train.py --splits OUT/splits --model simplecnn --epochs 20 --out-dir RUN [--resume]
    torchrun --nproc_per_node 4 train.py ...   (DistributedDataParallel: one process per GPU, or per CPU share)

Writes into RUN: best.pt, last.pt (atomic, self-describing), tb/ (TensorBoard), learning_curves.png,
history.json, metrics.json and pred_vs_true.png (test split, best epoch), model.jit and model.onnx.
"""
import argparse
import contextlib
import datetime
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from custom_dataset import (AugmentConfig, DataError, PreprocessConfig, channel_stats, load_split_dataset,
                            make_loader)
from functions import (ArgumentParser, AutocastModel, NonFiniteLossError, atomic_write, folder_lock, same_or_inside, Distributed, ExportedAgeModel, broadcast_buffers,
                       check_export_parity, configure_threads, evaluate, evaluate_sharded, export_onnx, export_torchscript,
                       face_grid_figure, forwarding_ddp, load_checkpoint, plot_learning_curves, plot_pred_vs_true,
                       public, reduce_train_metrics, rng_state, run_cli, save_checkpoint, set_rng_state, set_seed,
                       train_one_epoch)
from faces import BOX_CROP, read_split_crop
from model import MODEL_NAMES, build_model, count_parameters

CHECKPOINT_VERSION = 1


def get_args_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--splits", required=True, help="folder with train.csv, val.csv, test.csv from eda.py")
    g.add_argument("--cache-dir", default=None, help="preprocessing cache (default: SPLITS/../cache)")
    g.add_argument("--image-size", type=int, default=128, help="network input side in pixels")
    # denoise/deblur off by default: on UTKFace turning them off lowered validation MAE by 0.10 years
    # (README, Experiments); --denoise --deblur give the seed's preprocessing back
    g.add_argument("--denoise", action=argparse.BooleanOptionalAction, default=False,
                   help="non-local-means denoising (the seed's; off by default)")
    g.add_argument("--denoise-strength", type=float, default=5.0, help="non-local-means h")
    g.add_argument("--deblur", action=argparse.BooleanOptionalAction, default=False,
                   help="unsharp mask after resizing (the seed's; off by default)")
    g.add_argument("--subset-fraction", type=float, default=1.0,
                   help="train on a seeded random share of the training split (quick searches)")
    g.add_argument("--augment", choices=tuple(AUGMENTATIONS), default="default",
                   help="training-only augmentation strength (never applied to val/test)")
    g = p.add_argument_group("model and optimisation")
    g.add_argument("--model", default="simplecnn", help=f"one of {', '.join(MODEL_NAMES)}")
    g.add_argument("--head", choices=("regression", "distribution"), default="distribution",
                   help="one output, or softmax over ages with expected value (label distribution)")
    g.add_argument("--pretrained", action="store_true", help="ResNet: start from torchvision ImageNet weights")
    g.add_argument("--weights", default=None, help="ResNet: local ImageNet weights file (offline --pretrained)")
    g.add_argument("--dropout", type=float, default=0.0, help="dropout before the fully connected layers")
    g.add_argument("--epochs", type=int, default=20, help="passes over the training split")
    g.add_argument("--batch-size", type=int, default=64,
                   help="images per step per process: under torchrun the global batch is --batch-size x "
                        "processes (the learning rate is not rescaled; raise --lr yourself if wanted)")
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW decoupled weight decay")
    g.add_argument("--loss", choices=("l1", "mse", "huber"), default="mse", help="loss on the predicted age")
    g.add_argument("--schedule", choices=("constant", "cosine"), default="cosine",
                   help="learning rate after warm-up: constant, or cosine decay to zero")
    g.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up length")
    g.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=True,
                   help="average each prediction with its mirror image (validation, test, exports)")
    g = p.add_argument_group("run")
    g.add_argument("--out-dir", required=True, help="run folder: checkpoints, logs, figures, exports")
    g.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    g.add_argument("--seed", type=int, default=42, help="seeds weights, shuffling and augmentation")
    g.add_argument("--device", default="auto",
                   help="auto, cpu or cuda (under torchrun, auto and cuda mean cuda:LOCAL_RANK)")
    g.add_argument("--amp", action="store_true",
                   help="bf16 autocast for the training forward pass on CUDA; ignored, with a note, on CPU "
                        "(evaluation, checkpoints and exports stay float32)")
    g.add_argument("--dist-backend", default="auto",
                   help="torchrun only: process-group backend, auto = nccl on CUDA, gloo on CPU")
    g.add_argument("--dist-timeout", type=float, default=60.0,
                   help="torchrun only: minutes a rank waits at a barrier (e.g. while rank 0 builds the cache)")
    g.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (default: all cores, divided among a node's torchrun processes)")
    g.add_argument("--workers", type=int, default=2, help="processes that build the cache")
    g.add_argument("--no-test", action="store_true", help="skip the test split (used by the search)")
    g.add_argument("--no-export", action="store_true", help="skip model.jit / model.onnx")
    g.add_argument("--no-tensorboard", action="store_true", help="do not write RUN/tb")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


AUGMENTATIONS = {
    "none": AugmentConfig.off(),
    "light": AugmentConfig(flip=True, max_rotate=0.0, max_shift=0.0, max_scale=0.0, brightness=0.0, contrast=0.0),
    "default": AugmentConfig(),
    "strong": AugmentConfig(flip=True, max_rotate=15.0, max_shift=0.08, max_scale=0.15, brightness=0.3, contrast=0.3),
    # default plus 20 % gray images: real photos include scans and old prints (FG-NET: most of them)
    "photo": AugmentConfig(grayscale=0.2),
}


def preprocess_config(args) -> PreprocessConfig:
    return PreprocessConfig(image_size=args.image_size, denoise=args.denoise,
                            denoise_strength=args.denoise_strength, deblur=args.deblur)


def check_numbers(args):
    """One line naming the first setting that cannot work (instead of a ZeroDivisionError later)."""
    rules = [("--batch-size", args.batch_size >= 1, "at least 1"), ("--epochs", args.epochs >= 1, "at least 1"),
             ("--lr", math.isfinite(args.lr) and args.lr > 0, "a positive number"),
             ("--weight-decay", math.isfinite(args.weight_decay) and args.weight_decay >= 0, "0 or more"),
             ("--image-size", 16 <= args.image_size <= 1024, "between 16 and 1024"),
             ("--warmup-epochs", 0 <= args.warmup_epochs <= args.epochs, "between 0 and --epochs")]
    for flag, ok, rule in rules:
        if not ok:
            raise DataError(f"{flag} must be {rule}, got {getattr(args, flag[2:].replace('-', '_'))}")


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
    refuse_output_in_data(args.out_dir, args.splits)
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


# Settings that may differ when a run is resumed: where and how fast it runs, not what it learns.
RESUME_FREE = {"resume", "threads", "workers", "no_progress", "no_tensorboard", "debug", "device", "cache_dir",
               "dist_backend", "dist_timeout", "amp", "no_test", "no_export", "out_dir"}


def changed_settings(saved: dict, args) -> list:
    """(name, saved value, new value) of every training setting that differs from a checkpoint's."""
    changed = []
    for key, new in sorted(vars(args).items()):
        if key in RESUME_FREE or key not in saved:  # older checkpoints lack newer settings
            continue
        old = saved[key]
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


def data_folders(splits) -> set:
    """The folders holding the split's images, and for a folder-per-age layout their parent."""
    import csv
    parents = set()
    for name in ("train.csv", "val.csv", "test.csv"):
        path = Path(splits) / name
        if path.is_file():
            with open(path, newline="", encoding="utf-8", errors="replace") as f:
                parents.update(Path(row["path"]).resolve().parent for row in csv.DictReader(f) if row.get("path"))
    grand = {p.parent for p in parents}
    return parents | (grand if len(grand) == 1 and len(parents) > 1 else set())


def refuse_output_in_data(out_dir, splits):
    """Outputs inside the data set would be read as faces by the next eda.py run."""
    for folder in data_folders(splits):
        if same_or_inside(out_dir, folder):
            raise DataError(f"--out-dir {out_dir} is inside {folder}, which holds the data set's images; "
                            "choose a folder outside the data set")


def load_data(args, cfg, log=print):
    splits = Path(args.splits)
    if not splits.is_dir():
        raise DataError(f"splits folder not found: {splits} (eda.py writes OUT/splits)")
    cache_dir = Path(args.cache_dir) if args.cache_dir else splits.parent / "cache"
    progress = not args.no_progress
    train = load_split_dataset(splits / "train.csv", cfg, cache_dir, args.workers, progress, log)
    if not 0 < args.subset_fraction <= 1:
        raise DataError(f"--subset-fraction must be in (0, 1], got {args.subset_fraction}")
    if args.subset_fraction < 1:
        keep = np.random.default_rng(args.seed).permutation(len(train))[:max(1, round(len(train) * args.subset_fraction))]
        train = train.subset(np.sort(keep))
    val = load_split_dataset(splits / "val.csv", cfg, cache_dir, args.workers, progress, log)
    return train, val, cache_dir


def train_run(args, dist_ctx: Distributed):
    start_time = time.perf_counter()
    configure_threads(args.threads)
    set_seed(args.seed)
    device = dist_ctx.device
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if dist_ctx.is_main:
        for stale in out.glob(".*.tmp"):  # left by a process killed while writing; never a valid file
            stale.unlink()
    if args.amp and device.type != "cuda":
        print("--amp ignored: bf16 autocast is used on CUDA only, this run is float32 on the CPU")
    progress = not args.no_progress
    if args.model not in MODEL_NAMES:
        raise DataError(f"unknown model {args.model!r}; choose one of {', '.join(MODEL_NAMES)}")
    check_numbers(args)

    resume_from = out / "last.pt"
    checkpoint = None
    # every rank loads last.pt itself; they must all see it (multi-node: --out-dir on a shared disk)
    if dist_ctx.all_same(args.resume and resume_from.exists(), f"--resume: whether {resume_from} exists"):
        checkpoint = load_checkpoint(resume_from)
        changed = changed_settings(checkpoint["config"], args)
        if changed:
            raise DataError(f"--resume: {resume_from} was trained with other settings ("
                            + "; ".join(f"--{k.replace('_', '-')} was {old!r}, now {new!r}" for k, old, new in changed)
                            + "); use the same arguments or a new --out-dir")
        if checkpoint.get("split_digest", split_digest(args.splits)) != split_digest(args.splits):
            raise DataError(f"--resume: the split in {args.splits} changed since {resume_from} was written (eda.py "
                            "re-run?); resuming would mix two splits: start a new --out-dir")
        if checkpoint.get("world_size", 1) != dist_ctx.world_size:
            print(f"warning: --resume: {resume_from} was written by {checkpoint.get('world_size', 1)} processes, now "
                  f"{dist_ctx.world_size}; the global batch and schedule differ from the interrupted run")
    elif args.resume:
        print(f"--resume: no {resume_from} yet, starting from epoch 1")

    cfg = preprocess_config(args)
    crop = checkpoint.get("crop") if checkpoint else read_split_crop(args.splits)  # how the faces were cut
    digest = split_digest(args.splits)
    # rank 0 builds the cache while the others wait; then they read it
    train_set, val_set, cache_dir = dist_ctx.in_turn(lambda: load_data(args, cfg))
    if checkpoint is not None:
        cfg = PreprocessConfig.from_dict(checkpoint["preprocess"])
    else:
        cfg.mean, cfg.std = channel_stats(train_set.images)
    ages = train_set.ages
    min_age, max_age = (checkpoint["min_age"], checkpoint["max_age"]) if checkpoint else (int(ages.min()), int(ages.max()))
    model = build_model(args.model, args.head, min_age, max_age, args.image_size, args.pretrained,
                        args.weights, args.dropout).to(device)
    if checkpoint is None and args.head == "regression":
        model.init_output_bias(float(ages.mean()))
    channels_last = True  # measured +30-40 % training speed on CPU for these convnets
    model = model.to(memory_format=torch.channels_last)
    print(f"model {args.model} ({args.head} head): {count_parameters(model):,} parameters; "
          f"train {len(train_set)}, val {len(val_set)} images; device {device}, {torch.get_num_threads()} threads"
          + (f"; {dist_ctx.world_size} processes ({dist_ctx.backend}), global batch "
             f"{args.batch_size * dist_ctx.world_size}" if dist_ctx.active else ""))

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    pin = device.type == "cuda"  # page-locked batches; _prepare copies with non_blocking=True
    if dist_ctx.active:
        from torch.utils.data.distributed import DistributedSampler
        # each rank a disjoint 1/world share (padded by at most world-1 repeats), permuted per epoch with the
        # same seed * 1000 + epoch as one process, so a resumed run repeats an uninterrupted one
        sampler = DistributedSampler(train_set, dist_ctx.world_size, dist_ctx.rank, shuffle=True, seed=args.seed * 1000)

        def train_loader(epoch):
            sampler.set_epoch(epoch)
            return make_loader(train_set, args.batch_size, shuffle=True, sampler=sampler, pin_memory=pin)
        steps_per_epoch = math.ceil(len(sampler) / args.batch_size)
    else:
        train_loader = lambda epoch: make_loader(train_set, args.batch_size, shuffle=True, seed=args.seed * 1000 + epoch,
                                                 pin_memory=pin)
        steps_per_epoch = math.ceil(len(train_set) / args.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(args.epochs * steps_per_epoch, int(args.warmup_epochs * steps_per_epoch), args.schedule))
    # every rank predicts a disjoint shard of val; the gathered predictions give the one-process figures
    validate = lambda: evaluate_sharded(model, val_set, 256, mean, std, args.loss, device, args.tta_flip,
                                        channels_last, dist_ctx, pin)
    mean = torch.tensor(cfg.mean, device=device)
    std = torch.tensor(cfg.std, device=device)

    history, best_val, start_epoch = [], float("inf"), 1
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model_state"])
        optimizer.load_state_dict(checkpoint["optimizer_state"])
        scheduler.load_state_dict(checkpoint["scheduler_state"])
        set_rng_state(checkpoint["rng_state"])
        history, best_val = checkpoint["history"], checkpoint["best_val_mae"]
        start_epoch = checkpoint["epoch"] + 1
        print(f"resumed from {resume_from} at epoch {checkpoint['epoch']} (best val MAE {best_val:.3f})")

    net = AutocastModel(model) if args.amp and device.type == "cuda" else model  # what the training step runs
    if dist_ctx.active:  # after loading the checkpoint: DDP starts every rank from rank 0's weights
        net = forwarding_ddp(net, device_ids=[device.index] if device.type == "cuda" else None)

    writer = None
    if not args.no_tensorboard and dist_ctx.is_main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out / "tb"), purge_step=start_epoch)
    preview = val_set.batch(range(min(16, len(val_set))))

    def make_checkpoint(epoch, metrics):
        return {"version": CHECKPOINT_VERSION, "model_name": args.model, "head": args.head, "min_age": min_age,
                "max_age": max_age, "config": vars(args), "preprocess": cfg.to_dict(), "crop": crop,
                "split_digest": digest,
                "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
                "scheduler_state": scheduler.state_dict(), "rng_state": rng_state(), "epoch": epoch,
                "metrics": metrics, "history": history, "best_val_mae": best_val, "world_size": dist_ctx.world_size}

    augment = AUGMENTATIONS[args.augment]
    for epoch in range(start_epoch, args.epochs + 1):
        # every source of randomness is re-seeded per epoch, so a resumed run repeats an uninterrupted one
        # (rank r > 0 of a torchrun launch offsets its seeds, so ranks draw different augmentations)
        torch.manual_seed(args.seed * 1000 + epoch + 100_003 * dist_ctx.rank)
        generator = torch.Generator().manual_seed(args.seed * 7919 + epoch + 100_003 * dist_ctx.rank)
        try:
            train_metrics = train_one_epoch(net, train_loader(epoch), optimizer, mean, std, args.loss, scheduler,
                                            augment, generator, device, epoch, channels_last, progress)
        except NonFiniteLossError as exc:
            raise NonFiniteLossError(f"{exc} ({kept_note(out, epoch)})") from None
        if dist_ctx.active:
            broadcast_buffers(model)  # BatchNorm statistics of rank 0, the ones it saves
        train_metrics = reduce_train_metrics(train_metrics, dist_ctx)  # summed over ranks
        val_metrics = validate()
        if not math.isfinite(val_metrics["mae"]):  # diverged: this epoch's weights are saved nowhere
            raise NonFiniteLossError(f"validation MAE became {val_metrics['mae']} at epoch {epoch}; lower --lr "
                                     f"({kept_note(out, epoch)})")
        lr = optimizer.param_groups[0]["lr"]
        row = {"epoch": epoch, "train_loss": train_metrics["loss"], "train_mae": train_metrics["mae"],
               "val_loss": val_metrics["loss"], "val_mae": val_metrics["mae"], "val_cs5": val_metrics["cs5"],
               "lr": lr, "train_images_per_s": train_metrics["images_per_s"], "epoch_seconds": train_metrics["seconds"],
               "train_images": train_metrics["images"], "train_images_per_rank": train_metrics["images_per_rank"]}
        history.append(row)
        improved = val_metrics["mae"] < best_val
        best_val = min(best_val, val_metrics["mae"])
        print(f"epoch {epoch:3d}/{args.epochs}  train loss {row['train_loss']:.3f} MAE {row['train_mae']:.2f}  "
              f"val MAE {row['val_mae']:.2f} CS@5 {row['val_cs5']:.1%}  lr {lr:.2e}  "
              f"{row['train_images_per_s']:.0f} img/s{'  * best' if improved else ''}")
        if writer is not None:
            writer.add_scalar("loss/train", row["train_loss"], epoch)
            writer.add_scalar("loss/val", row["val_loss"], epoch)
            writer.add_scalar("mae/train", row["train_mae"], epoch)
            writer.add_scalar("mae/val", row["val_mae"], epoch)
            writer.add_scalar("cs5/val", row["val_cs5"], epoch)
            writer.add_scalar("lr", lr, epoch)
            writer.add_scalar("speed/train_images_per_s", row["train_images_per_s"], epoch)
            writer.add_figure("val_faces", face_grid_figure(preview[0], preview[1], val_metrics["pred"][:16]), epoch)
            writer.flush()
        if dist_ctx.is_main:  # rank 0 alone writes; the others wait at the barrier
            checkpoint = make_checkpoint(epoch, {"train": train_metrics, "val": public(val_metrics)})
            if improved:
                save_checkpoint(out / "best.pt", checkpoint)
            save_checkpoint(out / "last.pt", checkpoint)
            write_history(history, out)
        dist_ctx.barrier()
    if writer is not None:
        writer.close()
    if dist_ctx.is_main and history:  # a run killed after its last last.pt is completed by --resume here
        write_history(history, out)

    summary = {"run": str(out), "best_val_mae": best_val, "epochs": args.epochs,
               "train_seconds": round(time.perf_counter() - start_time, 1),
               "train_images_per_s": float(np.mean([h["train_images_per_s"] for h in history])) if history else None,
               "params": count_parameters(model)}
    if dist_ctx.is_main:  # rank 0 alone tests and exports the best epoch; the others wait at the barrier
        best = load_checkpoint(out / "best.pt")
        model.load_state_dict(best["model_state"])
        if not args.no_test:
            summary["test"] = test_best(args, model, cfg, cache_dir, best, out, device, mean, std, channels_last)
        if not args.no_export:
            summary["exports"] = export_best(model, cfg, best, out, val_set, summary.get("test"))
    dist_ctx.barrier()
    return summary


def kept_note(out, epoch) -> str:
    if epoch > 1 and (out / "last.pt").exists():
        return f"{out / 'last.pt'} keeps epoch {epoch - 1}, the last good one"
    return "no epoch finished with finite figures, so no checkpoint was kept"


def write_history(history, out):
    text = json.dumps(history, indent=1)
    atomic_write(out / "history.json", lambda f: f.write(text.encode()))
    plot_learning_curves(history, out / "learning_curves.png")


def test_best(args, model, cfg, cache_dir, best, out, device, mean, std, channels_last):
    """The test split is read here, once, for the best epoch only."""
    test_set = load_split_dataset(Path(args.splits) / "test.csv", cfg, cache_dir, args.workers, not args.no_progress)
    metrics = evaluate(model, make_loader(test_set, 256, shuffle=False), mean, std, args.loss, device,
                       args.tta_flip, channels_last)
    plot_pred_vs_true(metrics["pred"], metrics["true"], out / "pred_vs_true.png",
                      title=f"{args.model}, test, best epoch {best['epoch']}")
    result = {**public(metrics), "best_epoch": best["epoch"], "model": args.model, "head": args.head,
              "tta_flip": args.tta_flip}
    text = json.dumps(result, indent=2) + "\n"
    atomic_write(out / "metrics.json", lambda f: f.write(text.encode()))
    print(f"test (best epoch {best['epoch']}): MAE {metrics['mae']:.2f}  RMSE {metrics['rmse']:.2f}  "
          f"CS@5 {metrics['cs5']:.1%}  n={metrics['n']}  -> {out / 'metrics.json'}")
    return result


def export_metadata(cfg, best, test_metrics=None) -> dict:
    """What every export carries so that inference rebuilds the input from the file alone. Checkpoints
    written before crop recipes existed get their split's recipe (or, without a split, the square crop)."""
    config = best.get("config") or {}
    crop = best.get("crop") or (read_split_crop(config["splits"]) if config.get("splits") else dict(BOX_CROP))
    return {"format_version": CHECKPOINT_VERSION, "model_name": best["model_name"], "head": best["head"],
            "min_age": best["min_age"], "max_age": best["max_age"], "preprocess": cfg.to_dict(),
            "crop": crop, "tta_flip": config.get("tta_flip", False),
            "input": "float32 N x 3 x S x S RGB 0-255 after custom_dataset.preprocess_rgb",
            "val_mae": best.get("best_val_mae"), "test_mae": (test_metrics or {}).get("mae")}


def export_best(model, cfg, best, out, val_set, test_metrics=None):
    """model.jit and model.onnx of the best epoch, each checked against the eager model."""
    import copy
    eager = copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format).eval()
    wrapper = ExportedAgeModel(eager, cfg.mean, cfg.std).eval()
    n = min(8, len(val_set))
    example = val_set.batch(range(n))[0].float()
    metadata = export_metadata(cfg, best, test_metrics)
    jit_path = export_torchscript(wrapper, example, out / "model.jit", metadata)
    onnx_path = export_onnx(wrapper, example, out / "model.onnx", metadata)
    diffs = check_export_parity(wrapper, jit_path, onnx_path, example)
    print(f"exported {jit_path} and {onnx_path} (max |export - eager|: "
          + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()) + ")")
    return {"torchscript": str(jit_path), "onnx": str(onnx_path), "max_abs_diff": diffs}


if __name__ == "__main__":
    run_cli(main, get_args_parser())
