"""Reproduce every accuracy and speed figure of the README with one command.

    python benchmark.py                       # Protocols S and F, every model in MODELS (hours on a CPU)
    python benchmark.py --protocols S --models simplecnn_dldl
    python benchmark.py --quick               # smoke version: minutes
    python benchmark.py --table               # print the README table from bench/results.json

Data: UTKFace (../shared/data/UTKFace by default), byte-identical duplicates merged, conflicting-age
groups dropped, stratified 80:10:10 with seed 42 (all by eda.py). Protocol S: ages 20-50 (the seed
data set's range); Protocol F: all ages. Each model is trained by train.py (selection on validation,
test split read once, by the best epoch). Figures are merged into bench/results.json, so one protocol
or one model can be rerun without losing the others. Run it with nothing else on the machine: two
torch processes on two cores slow each other several-fold.
"""
import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import eda
import train
from custom_dataset import DataError, PreprocessConfig, build_cache, read_split, CustomDataset, make_loader
from export_mobile import time_runs
from functions import ArgumentParser, atomic_write, keep_freed_memory, load_torchscript, model_from_checkpoint, run_cli

PROTOCOLS = {"S": ["--min-age", "20", "--max-age", "50"], "F": []}
# name -> train.py arguments (beyond splits/out-dir). The first is the seed's recipe as the seed ran it.
MODELS = {
    "simplecnn_seed": ["--model", "simplecnn", "--head", "regression", "--loss", "l1", "--epochs", "20", "--lr", "1e-3",
                       "--schedule", "constant", "--warmup-epochs", "0", "--augment", "light", "--no-tta-flip",
                       "--denoise", "--deblur"],
    "simplecnn": ["--model", "simplecnn", "--head", "regression", "--loss", "l1", "--epochs", "20", "--lr", "1e-3",
                  "--augment", "default", "--tta-flip", "--denoise", "--deblur"],
    "simplecnn_dldl": ["--model", "simplecnn", "--head", "distribution", "--loss", "l1", "--epochs", "20",
                       "--lr", "1e-3", "--augment", "default", "--tta-flip", "--denoise", "--deblur"],
    "simplecnn_bn_dldl": ["--model", "simplecnn_bn", "--head", "distribution", "--loss", "l1", "--epochs", "20",
                          "--lr", "1e-3", "--augment", "default", "--tta-flip", "--denoise", "--deblur"],
    # the base of the ablation table plus each lever that beat it by more than the seed-to-seed noise
    # (README, "Experiments"), trained 40 epochs; 96 px is the same recipe at the smaller input size
    "simplecnn_tuned": ["--model", "simplecnn", "--head", "distribution", "--loss", "mse", "--epochs", "40",
                        "--lr", "1e-3", "--augment", "default", "--tta-flip", "--no-denoise", "--no-deblur"],
    "simplecnn_tuned_96px": ["--model", "simplecnn", "--head", "distribution", "--loss", "mse", "--epochs", "40",
                             "--lr", "1e-3", "--augment", "default", "--tta-flip", "--no-denoise", "--no-deblur",
                             "--image-size", "96"],
    # simplecnn_tuned plus 20 % gray training images (--augment photo), for scanned and old photos
    "simplecnn_photo": ["--model", "simplecnn", "--head", "distribution", "--loss", "mse", "--epochs", "40",
                        "--lr", "1e-3", "--augment", "photo", "--tta-flip", "--no-denoise", "--no-deblur"],
    "resnet18_dldl": ["--model", "resnet18", "--head", "distribution", "--epochs", "15", "--lr", "1e-3",
                      "--augment", "default", "--tta-flip", "--image-size", "112"],
}

# One-lever-at-a-time experiments on Protocol S, judged on validation only (the test split is not read):
# each run is ABLATION_BASE with one change. 10 epochs keeps the set affordable on 2 cores (~7 min a
# run); it favours levers that pay off early, which the README says next to the table.
ABLATION_BASE = ["--model", "simplecnn", "--head", "distribution", "--loss", "l1", "--epochs", "10",
                 "--lr", "1e-3", "--batch-size", "64", "--augment", "default", "--tta-flip", "--denoise", "--deblur"]
ABLATIONS = {  # name -> (what changes, train.py arguments that override the base)
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


def get_args_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data/UTKFace", help="UTKFace folder (read only)")
    p.add_argument("--work-dir", default="bench/work", help="splits, caches and runs")
    p.add_argument("--out", default="bench/results.json", help="results file (merged, not overwritten)")
    p.add_argument("--protocols", default="S,F", help="comma-separated: S (ages 20-50), F (all ages)")
    p.add_argument("--models", default="simplecnn_seed,simplecnn_dldl", help=f"comma-separated from {', '.join(MODELS)}")
    p.add_argument("--epochs", type=int, default=None, help="override every model's epoch count")
    p.add_argument("--quick", action="store_true", help="smoke run: Protocol S, 2 epochs on 10 %% of train")
    p.add_argument("--no-speed", action="store_true", help="skip the loader speed measurement")
    p.add_argument("--crop-check", type=int, default=0,
                   help="also compare test MAE of UTKFace's files directly vs found again in N photo-like scenes")
    p.add_argument("--table", action="store_true", help="only print the README table from --out")
    p.add_argument("--probes", action="store_true",
                   help="only run the speed probes behind the README's speed choices (about 2 minutes)")
    p.add_argument("--refresh-exports", action="store_true",
                   help="re-export the listed models' existing runs and re-measure model.jit (no training)")
    p.add_argument("--cross", metavar="DIR", default=None,
                   help="only test the listed protocols' models on another labelled data set (e.g. "
                        "../shared/data/FGNET) through inference.py's pipeline -> results['cross']['FGNET']")
    p.add_argument("--cross-compare", action="store_true",
                   help="with --cross: also run each model with the old Haar box crop, for comparison")
    p.add_argument("--ship", metavar="PROTOCOL/NAME", default=None,
                   help="only copy that run's exports to models/ and write the model card (needs --cross first)")
    p.add_argument("--ablations", default=None,
                   help=f"comma-separated one-lever experiments on Protocol S, validation only: {', '.join(ABLATIONS)}")
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
            "mae_direct": mae["direct"], "mae_through_pipeline": mae["scene"],
            "mae_through_pipeline_same_light": mae["scene_same_light"], "gap": mae["scene"] - mae["direct"],
            "gap_same_light": mae["scene_same_light"] - mae["direct"]}


def cross_dataset(run_dir, data_dir, detector=None, crop=None):
    """The model on another data set's photos through inference.py's own pipeline (AgeEstimator):
    the largest face of each photo is taken as the labelled person; photos without a face are
    counted (faces_found), not guessed. crop/detector override the model's for comparisons."""
    import faces
    import inference
    from custom_dataset import discover_labels, load_rgb
    estimator = inference.AgeEstimator(run_dir / "model.onnx", detector or faces.DEFAULT_DETECTOR)
    if crop is not None:
        estimator.crop = faces.check_crop(crop)
        estimator.pipeline = faces.FacePipeline(estimator.crop, estimator.pipeline.detector)
    records, _, _ = discover_labels(data_dir)
    errors, ages_true, seconds = [], [], []
    for rec in records:
        rgb = load_rgb(rec["path"])
        start = time.perf_counter()
        found, _, ages = estimator.estimate(rgb)
        seconds.append(time.perf_counter() - start)
        if found:
            errors.append(float(ages[0] - rec["age"]))
            ages_true.append(rec["age"])
    errors, ages_true = np.abs(np.array(errors)), np.array(ages_true)
    decades = {f"{d}-{d + 9}": round(float(errors[(ages_true // 10) * 10 == d].mean()), 2)
               for d in range(0, int(ages_true.max()) + 1, 10) if ((ages_true // 10) * 10 == d).any()}
    return {"mae": round(float(errors.mean()), 3), "cs5": round(float((errors <= 5).mean()), 4), "n": len(errors),
            "photos": len(records), "faces_found": round(len(errors) / len(records), 4),
            "mae_per_decade": decades, "crop": estimator.crop, "detector": estimator.pipeline.detector,
            "ms_per_photo_median": round(1000 * statistics.median(seconds), 1)}


def run_model(protocol, name, train_args, splits, work, epochs=None, quick=False):
    run_dir = work / protocol / name
    argv = ["--splits", str(splits), "--out-dir", str(run_dir), *train_args, "--no-progress"]
    if epochs is not None:
        argv += ["--epochs", str(epochs)]
    if quick:
        argv += ["--epochs", "2", "--subset-fraction", "0.1"]
    args = train.get_args_parser().parse_args(argv)
    start = time.perf_counter()
    summary = train.main(args)
    wall = time.perf_counter() - start
    test = summary["test"]
    history = json.loads((run_dir / "history.json").read_text())
    latency, b64 = jit_speed(run_dir / "model.jit", args.image_size)
    return {
        "test_mae": round(test["mae"], 3), "test_rmse": round(test["rmse"], 3), "test_cs5": round(test["cs5"], 4),
        "test_mae_per_decade": {k: round(v["mae"], 2) for k, v in test["mae_per_bin"].items()},
        "test_images": test["n"], "best_val_mae": round(summary["best_val_mae"], 3), "best_epoch": test["best_epoch"],
        "epochs": args.epochs, "params": summary["params"],
        "train_images_per_s": round(float(np.median([h["train_images_per_s"] for h in history])), 1),
        "train_minutes": round(sum(h["epoch_seconds"] for h in history) / 60, 2),
        "wall_minutes_incl_eval_export": round(wall / 60, 2),
        "model_jit_bytes": (run_dir / "model.jit").stat().st_size,
        "model_onnx_bytes": (run_dir / "model.onnx").stat().st_size,
        "latency_b1_ms": round(latency, 3), "images_per_s_b64": round(b64, 1),
        **{k: v for k, v in gray_val_mae(run_dir).items() if k == "val_mae_gray"},
        "command": "python train.py " + shlex.join(argv),
    }


def refresh_exports(protocol, name, work, results):
    """Re-export an existing run's best.pt with the current exporter and re-measure its model.jit."""
    run_dir = work / protocol / name
    best = train.load_checkpoint(run_dir / "best.pt")
    model, cfg = model_from_checkpoint(best)
    val = train.load_split_dataset(Path(best["config"]["splits"]) / "val.csv", cfg,
                                   Path(best["config"]["splits"]).parent / "cache", progress=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    train.export_best(model, cfg, best, run_dir, val, metrics)
    latency, b64 = jit_speed(run_dir / "model.jit", cfg.image_size)
    entry = results["protocols"][protocol][name]
    entry.update({"latency_b1_ms": round(latency, 3), "images_per_s_b64": round(b64, 1),
                  "model_jit_bytes": (run_dir / "model.jit").stat().st_size,
                  "model_onnx_bytes": (run_dir / "model.onnx").stat().st_size,
                  "val_mae_gray": gray_val_mae(run_dir)["val_mae_gray"]})
    return entry


def speed_probes(image_size=128, threads=2):
    """The measurements behind the speed choices (random weights and data: speed does not depend on them).

    Training step images/s for memory format, batch size and allocator setting (glibc default vs
    functions.keep_freed_memory), whole-batch augmentation images/s, and TorchScript batch-1/batch-64
    speed as traced, frozen, and optimised for inference.
    """
    import torch.nn.functional as F
    from custom_dataset import AugmentConfig, augment_batch, normalize
    from functions import ExportedAgeModel
    from model import AgeModel, SimpleCNN, build_model
    torch.set_num_threads(threads)
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)

    def train_speed(batch, channels_last, steps=12, seed_order=False):
        torch.manual_seed(0)
        if seed_order:  # the seed's Conv, ReLU, MaxPool instead of model.py's Conv, MaxPool, ReLU
            model = AgeModel(SimpleCNN(image_size=image_size, pool_before_relu=False), "regression", 0, 100)
        else:
            model = build_model("simplecnn", image_size=image_size)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
        images = (torch.rand(batch, 3, image_size, image_size) * 255).to(torch.uint8)
        ages = torch.rand(batch) * 30 + 20
        generator = torch.Generator().manual_seed(0)

        def step(_):
            with torch.enable_grad():  # time_runs times under no_grad
                x = normalize(augment_batch(images.float(), AugmentConfig(), generator), mean, std)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                loss = F.l1_loss(model.predict(x), ages)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        times = time_runs(step, None, runs=steps, warmup=3)
        return round(batch * steps / sum(times), 1)

    wrapper = ExportedAgeModel(build_model("simplecnn", image_size=image_size).eval(), mean.tolist(), std.tolist())
    x1 = torch.rand(1, 3, image_size, image_size) * 255
    x64 = torch.rand(64, 3, image_size, image_size) * 255
    with torch.no_grad():
        traced = torch.jit.trace(wrapper.eval(), x1)
    variants = {"eager": wrapper, "traced": traced, "frozen": torch.jit.freeze(traced),
                "optimize_for_inference": torch.jit.optimize_for_inference(torch.jit.freeze(traced))}

    def inference_speed(name):
        b1 = time_runs(variants[name], x1, runs=200, warmup=20)
        b64 = time_runs(variants[name], x64, runs=15, warmup=3)
        probes["inference"][name] = {"b1_ms": round(1000 * statistics.median(b1), 3),
                                     "b64_images_per_s": round(64 * 15 / sum(b64), 1)}
        print("probe", name, probes["inference"][name], flush=True)

    probes = {"threads": threads, "train_images_per_s": {}, "inference": {}}
    # glibc's default allocator first: keep_freed_memory() cannot be undone inside a process
    inference_speed("optimize_for_inference")
    probes["inference"]["optimize_for_inference_glibc_default"] = probes["inference"].pop("optimize_for_inference")
    grid = [(64, False, False), (64, True, False), (32, True, False),
            (64, False, True), (64, True, True), (32, True, True), (16, True, True), (8, True, True)]
    for batch, channels_last, keep in grid:
        if keep:
            keep_freed_memory()
        key = (f"batch{batch}_{'channels_last' if channels_last else 'contiguous'}_"
               f"{'keep_freed' if keep else 'glibc_default'}")
        probes["train_images_per_s"][key] = train_speed(batch, channels_last, steps=max(12, 512 // batch))
        print("probe", key, probes["train_images_per_s"][key], flush=True)
    # the layer order, measured back to back (repeated runs of one probe vary by ~10 %)
    for key, seed_order in (("batch64_channels_last_keep_freed_relu_then_pool", True),
                            ("batch64_channels_last_keep_freed_pool_then_relu", False)):
        probes["train_images_per_s"][key] = train_speed(64, True, steps=16, seed_order=seed_order)
        print("probe", key, probes["train_images_per_s"][key], flush=True)
    generator = torch.Generator().manual_seed(0)
    times = time_runs(lambda b: augment_batch(b, AugmentConfig(), generator), x64, runs=10, warmup=2)
    probes["augment_images_per_s"] = round(64 * 10 / sum(times), 1)
    for name in variants:  # all with the allocator as train.py and inference.py set it
        inference_speed(name)
    return probes


def median_baseline(splits):
    """Test MAE of always predicting the training split's median age: the floor any model must beat."""
    train_ages = np.array([r["age"] for r in read_split(Path(splits) / "train.csv")], dtype=float)
    test_ages = np.array([r["age"] for r in read_split(Path(splits) / "test.csv")], dtype=float)
    return round(float(np.abs(test_ages - np.median(train_ages)).mean()), 3)


def gray_val_mae(run_dir):
    """Validation MAE of a run's best epoch on gray copies of the validation faces: how the model
    copes with scanned and old photos, judged without touching any test set."""
    from custom_dataset import GRAY_WEIGHTS, CustomDataset, load_split_dataset
    from functions import evaluate
    best = train.load_checkpoint(run_dir / "best.pt")
    model, cfg = model_from_checkpoint(best)
    model = model.to(memory_format=torch.channels_last)
    splits = Path(best["config"]["splits"])
    val = load_split_dataset(splits / "val.csv", cfg, splits.parent / "cache", progress=False)
    luma = np.tensordot(val.images.astype(np.float32), np.array(GRAY_WEIGHTS, np.float32), axes=([3], [0]))
    gray = np.repeat(np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None], 3, axis=3)
    records = [{"path": p, "age": float(a)} for p, a in zip(val.paths, val.ages)]
    loader = make_loader(CustomDataset(records, cfg, images=gray), 256, shuffle=False)
    figures = evaluate(model, loader, torch.tensor(cfg.mean), torch.tensor(cfg.std),
                       tta_flip=best["config"].get("tta_flip", False))
    return {"val_mae": round(best["metrics"]["val"]["mae"], 3), "val_mae_gray": round(figures["mae"], 3)}


def run_ablation(name, splits, work, quick=False):
    """Train ABLATION_BASE with one change; validation MAE of the best epoch, with and without flip-TTA."""
    from custom_dataset import load_split_dataset
    from functions import evaluate
    change, extra = ABLATIONS[name]
    run_dir = work / "S" / "ablations" / name
    argv = ["--splits", str(splits), "--out-dir", str(run_dir), *ABLATION_BASE, *extra,
            "--no-test", "--no-export", "--no-tensorboard", "--no-progress"]
    if quick:
        argv += ["--epochs", "2", "--subset-fraction", "0.1"]
    args = train.get_args_parser().parse_args(argv)
    train.main(args)
    best = train.load_checkpoint(run_dir / "best.pt")
    model, cfg = model_from_checkpoint(best)
    model = model.to(memory_format=torch.channels_last)
    val = load_split_dataset(Path(splits) / "val.csv", cfg, Path(splits).parent / "cache", progress=False)
    loader = make_loader(val, 256, shuffle=False)
    # the checkpoint holds the validation MAE as trained (with or without flip-TTA); only the other
    # setting is evaluated here
    as_trained = best["metrics"]["val"]["mae"]
    other = evaluate(model, loader, torch.tensor(cfg.mean), torch.tensor(cfg.std),
                     tta_flip=not args.tta_flip)["mae"]
    flip, plain = (as_trained, other) if args.tta_flip else (other, as_trained)
    history = json.loads((run_dir / "history.json").read_text())
    return {"change": change, "val_mae": round(as_trained, 3),
            "val_mae_flip_tta": round(flip, 3), "val_mae_no_tta": round(plain, 3),
            "best_epoch": best["epoch"], "epochs": args.epochs,
            "train_images_per_s": round(float(np.median([h["train_images_per_s"] for h in history])), 1),
            "train_minutes": round(sum(h["epoch_seconds"] for h in history) / 60, 2),
            "command": "python train.py " + shlex.join(argv)}


def ablation_table(results) -> str:
    runs = results.get("ablations", {})
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


def check_crops(args, work, protocol, name, results, out_path):
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
            variants = {f"{protocol}/{name}": {}}
            if args.cross_compare:
                variants[f"{protocol}/{name} (Haar box crop)"] = {"detector": "haar", "crop": faces.BOX_CROP}
            for key, override in variants.items():
                figures = cross_dataset(run_dir, args.cross, **override)
                results.setdefault("cross", {}).setdefault("FGNET", {})[key] = figures
                print(f"FG-NET, {key}: MAE {figures['mae']:.2f}, CS@5 {figures['cs5']:.1%}, faces found in "
                      f"{figures['faces_found']:.1%} of {figures['photos']} photos", flush=True)
                save_results(out_path, results)


SHIPPED = Path("models") / "age_simplecnn_utkface"


def ship(args, work, results):
    """--ship PROTOCOL/NAME: copy that run's exports to models/ and write the model card from
    bench/results.json (no figure typed by hand)."""
    import faces
    protocol, name = args.ship.split("/")
    run_dir = work / protocol / name
    entry = results["protocols"][protocol][name]
    cross = results.get("cross", {}).get("FGNET", {}).get(f"{protocol}/{name}")
    if cross is None:
        raise DataError(f"no FG-NET figure for {args.ship} in {args.out}; run benchmark.py --cross first")
    import onnx
    props = {p.key: p.value for p in onnx.load(str(run_dir / "model.onnx")).metadata_props}
    metadata = json.loads(props["metadata.json"])
    for suffix in (".onnx", ".jit"):
        target = SHIPPED.with_suffix(suffix)
        data = (run_dir / f"model{suffix}").read_bytes()
        atomic_write(target, lambda f: f.write(data))
    data = results["data"][protocol]
    decades = ", ".join(f"{k}: {v}" for k, v in entry["test_mae_per_decade"].items())
    fg_decades = ", ".join(f"{k}: {v}" for k, v in cross["mae_per_decade"].items())
    card = f"""# Shipped model: `{SHIPPED.name}.onnx` (and `.jit`)

Written by `python benchmark.py --ship {args.ship}` from `bench/results.json`; do not edit by hand.

- **What**: SimpleCNN ({entry['params']:,} parameters, label-distribution head over ages
  {metadata['min_age']}-{metadata['max_age']}), input {metadata['preprocess']['image_size']} px, flip test-time averaging.
  `inference.py` uses it when no `--model` is given. `model.onnx` runs in ONNX Runtime (no Python code
  inside); the `.jit` (TorchScript) is a program: load it only from this repository.
- **Face crop** (inside the metadata, applied by `inference.py`): {faces.describe_crop(metadata['crop'])}
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
  Predicting the training median instead: MAE {data['test_mae_of_train_median']:.2f}.
- **FG-NET** (another data set: 1,002 scanned photos of 82 people, ages 0-69, through `inference.py`'s
  own pipeline, largest face per photo): MAE {cross['mae']:.2f}, CS@5 {cross['cs5']:.1%}, a face found in
  {cross['faces_found']:.1%} of the photos (n = {cross['n']}). Per decade: {fg_decades}.
- **Trained by** (on a 2-core CPU; {entry['train_minutes']:.1f} min of epochs as recorded, see the
  README's Benchmarks for what else ran on the machine):

      python eda.py --data-dir ../shared/data/UTKFace --out-dir bench/work/F --seed 42
      {entry['command']}

  (both run by `python benchmark.py --protocols F --models {name} --no-speed`).
"""
    card_path = SHIPPED.parent / "README.md"
    atomic_write(card_path, lambda f: f.write(card.encode()))
    print(f"shipped {run_dir} -> {SHIPPED}.onnx, {SHIPPED}.jit, {card_path}")


def load_results(path):
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else {"protocols": {}}


def save_results(path, results):
    text = json.dumps(results, indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


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
    """FG-NET through inference.py's pipeline, and the crop-consistency checks, as README tables."""
    rows = results.get("cross", {}).get("FGNET", {})
    lines = ["| model | detector, crop | FG-NET MAE | CS@5 | photos with a face | per decade (0-9, 10-19, ...) |",
             "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        crop = "UTKFace chip (68 landmarks)" if r["crop"].get("landmarks") == 68 else (
            "square around the box" if r["crop"]["kind"] == "box" else "5-landmark chip")
        decades = ", ".join(f"{v:.1f}" for v in r["mae_per_decade"].values())
        lines.append(f"| {name} | {r['detector']}, {crop} | {r['mae']:.2f} | {r['cs5']:.1%} | "
                     f"{r['faces_found']:.1%} of {r['photos']} | {decades} |")
    checks = [c for c in results.get("crop_consistency", []) if "mae_through_pipeline" in c]
    if checks:
        lines += ["", "| model | UTKFace test faces | MAE as files | found in scenes | gap | scenes at the original "
                  "brightness | gap |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {c['model']} | {c['found']} of {c['images']} found in both | {c['mae_direct']:.2f} | "
                  f"{c['mae_through_pipeline']:.2f} | {c['gap']:+.2f} | {c['mae_through_pipeline_same_light']:.2f} | "
                  f"{c['gap_same_light']:+.2f} |" for c in checks if "gap_same_light" in c]
    return "\n".join(lines) if rows or checks else ""


def main(args):
    if args.table:
        print(table(load_results(args.out)))
        print()
        print(ablation_table(load_results(args.out)))
        print()
        print(cross_table(load_results(args.out)))
        return
    if args.probes:
        results = load_results(args.out)
        results["probes"] = speed_probes()
        save_results(args.out, results)
        print(json.dumps(results["probes"], indent=1))
        return
    data_dir, work = Path(args.data_dir), Path(args.work_dir)
    if not data_dir.is_dir():
        raise DataError(f"UTKFace folder not found: {data_dir} (pass --data-dir)")
    protocols = ["S"] if args.quick else [p.strip() for p in args.protocols.split(",") if p.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for name in models:
        if name not in MODELS:
            raise DataError(f"unknown benchmark model {name!r}; choose from {', '.join(MODELS)}")
    for p in protocols:
        if p not in PROTOCOLS:
            raise DataError(f"unknown protocol {p!r}; choose S or F")
    if args.cross:
        results = load_results(args.out)
        check_cross(args, work, results, Path(args.out))
        if args.crop_check:
            check_crops(args, work, protocols[-1], models[-1], results, Path(args.out))
        return
    if args.ship:
        ship(args, work, load_results(args.out))
        return
    out_path = Path(args.out) if not args.quick else Path(args.out).with_name("results_quick.json")
    results = load_results(out_path)
    if args.ablations:
        names = [a.strip() for a in args.ablations.split(",") if a.strip()]
        for name in names:
            if name not in ABLATIONS:
                raise DataError(f"unknown ablation {name!r}; choose from {', '.join(ABLATIONS)}")
        splits = work / "S" / "splits"
        if not (splits / "train.csv").is_file():
            raise DataError(f"no Protocol S splits in {splits}; run `python benchmark.py --protocols S` first")
        for name in names:
            print(f"== ablation {name}: {ABLATIONS[name][0]}", flush=True)
            results.setdefault("ablations", {})[name] = run_ablation(name, splits, work, args.quick)
            print(json.dumps(results["ablations"][name]), flush=True)
            save_results(out_path, results)
        print(ablation_table(results))
        return
    if args.refresh_exports:
        for protocol in protocols:
            for name in models:
                print(protocol, name, json.dumps(refresh_exports(protocol, name, work, results)))
                save_results(out_path, results)
        if args.crop_check:
            check_crops(args, work, protocols[-1], models[-1], results, out_path)
        print(table(results))
        return
    results.update({"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                               f"torch {torch.__version__}", "date": datetime.date.today().isoformat()})
    for protocol in protocols:
        eda_args = eda.get_args_parser().parse_args(["--data-dir", str(data_dir), "--out-dir", str(work / protocol),
                                                     "--seed", "42", "--no-progress", *PROTOCOLS[protocol]])
        report = eda.main(eda_args)
        splits = work / protocol / "splits"
        results["protocols"].setdefault(protocol, {})
        results.setdefault("data", {})[protocol] = {k: report[k] for k in ("used", "splits", "duplicates", "age")}
        results["data"][protocol]["test_mae_of_train_median"] = median_baseline(splits)
        if protocol == "S" and not args.no_speed:
            results["speed"] = loader_speed(splits, work / protocol / "cache")
            print("loader:", json.dumps(results["speed"]))
            save_results(out_path, results)
        for name in models:
            print(f"== protocol {protocol}, {name}")
            results["protocols"][protocol][name] = run_model(protocol, name, MODELS[name], splits, work,
                                                             args.epochs, args.quick)
            print(json.dumps(results["protocols"][protocol][name], indent=1))
            save_results(out_path, results)
        if args.crop_check:
            check_crops(args, work, protocol, models[-1], results, out_path)
    print(table(results))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
