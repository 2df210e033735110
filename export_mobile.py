"""Mobile exports beyond TorchScript: ExecuTorch (.pte, XNNPACK) or a torch.export program (.pt2).

    python export_mobile.py --checkpoint RUN/best.pt [--out-dir RUN] [--quantize] [--threads 1]

Rebuilds the model from the checkpoint alone (train.py's best.pt), wraps it like model.jit/model.onnx
(model.ExportedAgeModel: float32 N x 3 x S x S RGB 0-255 after custom_dataset.preprocess_rgb in,
ages (N,) out, normalisation inside) and writes into the run folder:

- model.pte: torch.export (dynamic batch 1-32) lowered to ExecuTorch with the XNNPACK delegate. The
  preprocessing metadata is embedded as the constant method "metadata_json" (a uint8 tensor of UTF-8
  JSON; read it with load_executorch) and also written beside it as model.pte.json for apps that want
  it without the runtime. Falls back to model.pt2 (torch.export.save, metadata in extra_files
  "metadata.json", dynamic batch 1-4096) when executorch is not installed or the lowering fails;
  the reason is printed in one line.
- model_int8.pte with --quantize: int8 static post-training quantization (PT2E, XNNPACKQuantizer,
  per-channel weights) calibrated on --calibration-images validation images spread evenly over the split;
  its val MAE is printed next to the float model's.
- mobile_exports.json: size and CPU batch-1 latency (median and p90 of --runs runs after warm-up, with
  --threads threads for torch, onnxruntime and the ExecuTorch threadpool alike) of the files this run
  wrote, and of the folder's model.onnx (train.py's, for comparison), also printed as a table.

Every float export is written into a staging folder, compared with the eager model there (max |export -
eager| <= 1e-4) and only then moved over the previous one, so a failed check or a kill keeps the old file.
Once the new export stands, this script's files in the folder that record other weights than the checkpoint's
(the other format, an int8 file, their report: exports of weights since replaced) are removed, and named.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import warnings
from pathlib import Path

from cli import ArgumentParser, lazy_import, run_cli  # first: cli._missing_package_hook
import numpy as np

from custom_dataset import DataError, labelled_folder_above, load_split_dataset, remove_orphans
from checkpoints import (load_checkpoint, load_torchscript, metadata_for, model_from_checkpoint, onnx_metadata,
                         run_splits)
from functions import atomic_write, time_runs

torch = lazy_import("torch")  # imported on first use: --help answers without it

PARITY_TOLERANCE = 1e-4
METADATA_METHOD = "metadata_json"  # ExecuTorch constant method holding the metadata JSON as uint8
MAX_BATCH = 4096  # .pt2: same bound as the ONNX export
# .pte: ExecuTorch plans its memory for the largest allowed shape at load time (measured on the 64 px
# SimpleCNN: a 235 MB arena for batch 4096, 1.8 MB for 32), so a phone-sized bound.
PTE_MAX_BATCH = 32
BENCH_FILES = ("model.jit", "model.onnx", "model.pte", "model.pt2", "model_int8.pte")
FORMATS = {".jit": "TorchScript", ".onnx": "ONNX (onnxruntime)", ".pte": "ExecuTorch XNNPACK",
           ".pt2": "torch.export .pt2"}


def get_args_parser():
    p = ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", required=True, help="best.pt (or last.pt) written by train.py")
    p.add_argument("--out-dir", default=None, help="where to write the exports (default: the checkpoint's folder)")
    p.add_argument("--format", choices=("auto", "pte", "pt2"), default="auto",
                   help="auto: model.pte, or model.pt2 if ExecuTorch is unavailable; pte: fail instead; pt2: only .pt2")
    p.add_argument("--quantize", action="store_true", help="also write model_int8.pte (int8 PTQ, needs the val split)")
    p.add_argument("--calibration-images", type=at_least(1), default=64,
                   help="validation images used to calibrate int8, spread evenly over the split")
    p.add_argument("--splits", default=None, help="folder with val.csv (default: the checkpoint's config)")
    p.add_argument("--cache-dir", default=None,
                   help="preprocessing cache (default: the checkpoint's, or SPLITS/../cache)")
    p.add_argument("--threads", type=at_least(1), default=1, help="CPU threads for every runtime in the latency table")
    p.add_argument("--runs", type=at_least(1), default=200, help="timed batch-1 runs per model (median and p90 reported)")
    p.add_argument("--warmup", type=at_least(0), default=20, help="untimed runs before timing")
    p.add_argument("--no-bench", action="store_true", help="skip the latency table")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


# ----------------------------------------------------------------------------------------------
# Export

def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def executorch_missing() -> str | None:
    """None when the executorch package and its XNNPACK partitioner import, else the reason."""
    try:
        import executorch.exir  # noqa: F401
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install that fails while importing
        return f"executorch is not importable ({type(exc).__name__}: {exc})"
    return None


def _export_program(wrapper, example, max_batch: int):
    """torch.export of the wrapper with a dynamic batch dimension 1..max_batch (the example needs
    batch >= 2: torch.export specialises a size-1 dimension)."""
    if example.shape[0] < 2:
        example = example.repeat(2, 1, 1, 1)
    example = example[:max_batch]
    if not isinstance(wrapper, torch.fx.GraphModule):  # a PT2E-converted graph refuses .eval()
        wrapper = wrapper.eval()
    with torch.no_grad():
        return torch.export.export(wrapper, (example,),
                                   dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=max_batch)},))


def at_least(low: int):
    """argparse type: an integer >= low (a usage error naming the flag otherwise, before anything loads)."""
    def parse(text):
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


def staging_folder(out: Path) -> Path:
    """out/.staging.<PID>/: exports are written and checked here before they replace the old files; a killed
    run's folder is removed by the next."""
    if out.is_dir():
        remove_orphans(out, ".staging.*")
    folder = out / f".staging.{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def publish(staged: Path, out: Path) -> Path:
    """Move a checked export (and its .json sidecar) from the staging folder over the old one. The old sidecar
    goes first and the new one comes last, so a kill at any moment never pairs a model with another's
    sidecar (the metadata is inside the model too)."""
    sidecar = staged.with_name(staged.name + ".json")
    (out / sidecar.name).unlink(missing_ok=True)
    os.replace(staged, out / staged.name)
    if sidecar.exists():
        os.replace(sidecar, out / sidecar.name)
    return out / staged.name


# what this script writes into a folder; another checkpoint's are removed once a new export stands
MOBILE_OUTPUTS = ("model.pte", "model.pt2", "model_int8.pte", "mobile_exports.json")


def recorded_weights(path: Path) -> str | None:
    """The weights digest (checkpoints.weights_digest) an output of this script records: a .pte's in its .json
    sidecar, a .pt2's in its archive's metadata (read as a zip entry: nothing of it runs), the report's in
    itself. None where it records none (an export older than the digest) or cannot be read."""
    import zipfile
    try:
        if path.suffix == ".onnx":  # train.py's export
            data = onnx_metadata(path)
        elif path.suffix == ".pt2":
            with zipfile.ZipFile(path) as archive:
                entry = next(n for n in archive.namelist() if n.endswith("extra/metadata.json"))
                data = json.loads(archive.read(entry))
        else:
            data = json.loads((path if path.suffix == ".json" else path.with_name(path.name + ".json")).read_text())
        return data.get("weights") if isinstance(data, dict) else None
    except Exception:  # unreadable, not an export of ours (onnx raises its own DecodeError): records nothing
        return None


def remove_superseded(out: Path, written: set, weights: str) -> list:
    """This script's outputs in out that this run did not write and that record other weights than the
    checkpoint's (another format, an int8 file or their report, of weights since replaced), which an app or
    inference.py would otherwise take for this checkpoint's: removed and named. Outputs recording no
    weights are named only. Returns the names removed."""
    removed, unknown = [], []
    for name in MOBILE_OUTPUTS:
        path = out / name
        if name in written or not path.is_file():
            continue
        recorded = recorded_weights(path)
        if recorded is None:
            unknown.append(name)
        elif recorded != weights:
            path.unlink()
            path.with_name(name + ".json").unlink(missing_ok=True)  # a .pte's sidecar
            removed.append(name)
    if removed:
        print(f"removed {', '.join(removed)} from {out}: exported from other weights than this checkpoint's")
    if unknown:
        print(f"note: {', '.join(unknown)} in {out} do not record their weights (older exports): remove them if "
              "they are not this checkpoint's")
    return removed


def _metadata_tensor(metadata: dict) -> torch.Tensor:
    return torch.frombuffer(bytearray(json.dumps(metadata).encode("utf-8")), dtype=torch.uint8).clone()


def _lower_to_pte(program, metadata: dict) -> bytes:
    """ExportedProgram -> .pte bytes, XNNPACK-delegated, metadata as a constant method."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    # to_edge and to_executorch re-run the fake convolution, whose CPU backend choice (NNPACK / oneDNN "batch >= 16"
    # heuristics) would narrow the batch range to one side of 16 ([2, 15] or [16, max]); the backend
    # choice is irrelevant to XNNPACK, so both are switched off while lowering.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # oneDNN's TF32 notice when its flags are set
        with torch.backends.nnpack.flags(enabled=False), torch.backends.mkldnn.flags(enabled=False):
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                               constant_methods={METADATA_METHOD: _metadata_tensor(metadata)})
            return edge.to_executorch().buffer


def _write_pte(buffer: bytes, path, metadata: dict):
    path = Path(path)
    atomic_write(path, lambda f: f.write(buffer))
    sidecar = json.dumps(metadata, indent=1) + "\n"
    atomic_write(path.with_name(path.name + ".json"), lambda f: f.write(sidecar.encode("utf-8")))
    return path


def export_executorch(wrapper, example, path, metadata: dict):
    """ExecuTorch program with the XNNPACK delegate, dynamic batch 1..PTE_MAX_BATCH. The metadata is inside
    (constant method "metadata_json") and beside it as PATH.json. Returns path."""
    metadata = {**metadata, "export": {"format": "executorch", "backend": "xnnpack", "dtype": "float32",
                                       "dynamic_batch": [1, PTE_MAX_BATCH]}}
    return _write_pte(_lower_to_pte(_export_program(wrapper, example, PTE_MAX_BATCH), metadata), path, metadata)


def export_pt2(wrapper, example, path, metadata: dict):
    """torch.export program (dynamic batch) saved with torch.export.save, metadata in extra_files."""
    metadata = {**metadata, "export": {"format": "torch.export", "dtype": "float32", "dynamic_batch": [1, MAX_BATCH]}}
    program = _export_program(wrapper, example, MAX_BATCH)
    extra = {"metadata.json": json.dumps(metadata)}
    atomic_write(path, lambda f: torch.export.save(program, f, extra_files=extra))
    return Path(path)


def _calibration_batches(images: torch.Tensor, batch_size: int = 16):  # eager PyTorch, any size
    return [images[i:i + batch_size].float() for i in range(0, len(images), batch_size)]


def quantize_executorch(wrapper, example, calibration_images, path, metadata: dict):
    """int8 static PTQ (PT2E flow, XNNPACKQuantizer, symmetric per-channel weights) calibrated on
    calibration_images (uint8 or 0-255 float N x 3 x S x S), lowered to XNNPACK. ImportError when the
    quantizer is unavailable."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(_export_program(wrapper, example, PTE_MAX_BATCH).module(), quantizer)
    with torch.no_grad():
        for batch in _calibration_batches(calibration_images):
            prepared(batch)
    converted = convert_pt2e(prepared)
    # the float model's figures are not the int8 model's: its own validation MAE is measured after this (quantize_step,
    # mobile_exports.json), its test MAE never; an app must not show the float model's as its own
    metadata = {**metadata, "val_mae": None, "val_mae_views": None, "test_mae": None,
                "export": {"format": "executorch", "backend": "xnnpack", "dtype": "int8",
                           "quantization": "static PTQ, per-channel symmetric weights, PT2E",
                           "calibration_images": int(len(calibration_images)),
                           "interval_measured_on": "the float32 model",
                           "dynamic_batch": [1, PTE_MAX_BATCH]}}
    return _write_pte(_lower_to_pte(_export_program(converted, example, PTE_MAX_BATCH), metadata), path, metadata)


# ----------------------------------------------------------------------------------------------
# Loading and parity

def load_executorch(path):
    """(callable batch -> ages tensor, metadata) from a .pte written by export_executorch."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"model file not found: {path}")
    try:
        from executorch.runtime import Runtime
    except ImportError as exc:
        raise DataError(f"cannot run {path}: executorch is not installed ({exc})") from None
    try:
        program = Runtime.get().load_program(path)
        method = program.load_method("forward")
        metadata = None
        if METADATA_METHOD in program.method_names:
            blob = program.load_method(METADATA_METHOD).execute([])[0]
            metadata = json.loads(blob.numpy().tobytes().decode("utf-8"))
    except Exception as exc:
        raise DataError(f"{path} is not an ExecuTorch program ({type(exc).__name__}); "
                        "write one with export_mobile.py") from None
    largest = ((metadata or {}).get("export") or {}).get("dynamic_batch", [1, None])[1]

    def run(x):
        if largest is not None and x.shape[0] > largest:  # the runtime's own message is a bare error code
            raise ValueError(f"{path.name} takes batches of at most {largest} images, got {x.shape[0]}; split it")
        return method.execute([x.float().contiguous()])[0]
    return run, metadata


def load_pt2(path):
    """(module, metadata) from a .pt2 written by export_pt2."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"model file not found: {path}")
    extra = {"metadata.json": ""}
    try:
        with open(path, "rb") as f:  # a file object: torch's C++ reads a name in Windows' local code page
            program = torch.export.load(f, extra_files=extra)
    except Exception as exc:
        raise DataError(f"{path} is not a torch.export program ({type(exc).__name__}); "
                        "write one with export_mobile.py") from None
    return program.module(), (json.loads(extra["metadata.json"]) if extra["metadata.json"] else None)


def load_mobile(path):
    """(callable, metadata) of a .pte or .pt2."""
    return load_executorch(path) if Path(path).suffix == ".pte" else load_pt2(path)


def check_mobile_parity(wrapper, path, example, tolerance=PARITY_TOLERANCE) -> float:
    """Max |eager - export| over the example batch, its first image alone and the example tiled to the
    largest batch the file declares (at most PTE_MAX_BATCH), so the dynamic batch range is exercised
    at both ends; RuntimeError above tolerance."""
    run, metadata = load_mobile(path)
    largest = min(PTE_MAX_BATCH, ((metadata or {}).get("export") or {}).get("dynamic_batch", [1, 1])[1])
    tiled = example.repeat(-(-largest // len(example)), 1, 1, 1)[:largest]
    diff = 0.0
    with torch.no_grad():
        for x in (example, example[:1], tiled):
            eager = wrapper.eval()(x)
            out = run(x)
            if tuple(out.shape) != tuple(eager.shape):
                raise RuntimeError(f"{path} returned shape {tuple(out.shape)} for input {tuple(x.shape)}, "
                                   f"the eager model {tuple(eager.shape)}")
            diff = max(diff, float((out - eager).abs().max()))
    if not diff <= tolerance:
        raise RuntimeError(f"{path} differs from the eager model by {diff:.2e} (> {tolerance})")
    return diff


def predict_batches(run, images: torch.Tensor, batch_size: int = PTE_MAX_BATCH) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([run(images[i:i + batch_size].float()).reshape(-1)
                          for i in range(0, len(images), batch_size)]).numpy()


# ----------------------------------------------------------------------------------------------
# Latency table

def _set_executorch_threads(threads: int) -> int | None:
    """Resize ExecuTorch's CPU threadpool (XNNPACK runs on it); returns the previous size, or None
    when the runtime is not there."""
    try:
        from executorch.extension.pybindings import portable_lib
        previous = portable_lib._threadpool_get_thread_count()
        if previous != threads:
            portable_lib._unsafe_reset_threadpool(threads)
        return previous
    except Exception:
        return None


def _runner(path, threads: int):
    """A batch-1 callable for one export file, loaded with `threads` CPU threads."""
    suffix = path.suffix
    if suffix == ".jit":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module, _ = load_torchscript(path)
        return lambda x: module(x)
    if suffix == ".onnx":
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x.numpy()})[0]
    run, _ = load_mobile(path)
    return run


def benchmark_folder(folder, image_size: int, threads: int = 1, runs: int = 200, warmup: int = 20,
                     weights: str | None = None, only=None) -> dict:
    """Size and batch-1 latency of the exports in folder (BENCH_FILES order), limited to the names in
    `only`: loading a .pt2 or .jit runs code, so a file this run did not write is never loaded (ONNX
    runs no Python). A file recording other weights than `weights` (the checkpoint's digest) is marked stale."""
    folder = Path(folder)
    x = torch.rand(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)) * 255
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    has_pte = any((folder / name).is_file() and (only is None or name in only)
                  for name in BENCH_FILES if name.endswith(".pte"))
    previous_et = _set_executorch_threads(threads) if has_pte else None
    rows = []
    try:
        for name in BENCH_FILES:
            path = folder / name
            if not path.is_file() or (only is not None and name not in only):
                continue
            row = {"file": name, "format": FORMATS[path.suffix] + (" int8" if "int8" in name else ""),
                   "size_bytes": path.stat().st_size,
                   "stale": weights is not None and recorded_weights(path) not in (None, weights)}
            try:
                times = time_runs(_runner(path, threads), x, runs, warmup)
                row["latency_ms_median"] = 1000 * statistics.median(times)
                row["latency_ms_p90"] = 1000 * float(np.percentile(times, 90))
            except Exception as exc:  # one unreadable file must not hide the others
                row["latency_ms_median"] = row["latency_ms_p90"] = None
                row["error"] = _one_line(exc)
            rows.append(row)
    finally:
        torch.set_num_threads(previous)
        if previous_et is not None:
            _set_executorch_threads(previous_et)
    return {"batch": 1, "image_size": image_size, "threads": threads, "runs": runs, "warmup": warmup,
            "statistic": "median and p90 of per-call wall time (ms)", "rows": rows}


def format_table(table: dict) -> str:
    lines = [f"CPU batch-1 latency, {table['threads']} thread(s), {table['image_size']}px, "
             f"median/p90 of {table['runs']} runs after {table['warmup']} warm-up",
             f"{'file':<16} {'format':<24} {'size':>10} {'median ms':>10} {'p90 ms':>8}"]
    for row in table["rows"]:
        median = "-" if row["latency_ms_median"] is None else f"{row['latency_ms_median']:.3f}"
        p90 = "-" if row["latency_ms_p90"] is None else f"{row['latency_ms_p90']:.3f}"
        note = "  (records other weights than the checkpoint)" if row["stale"] else ""
        note += f"  ({row['error']})" if row.get("error") else ""
        lines.append(f"{row['file']:<16} {row['format']:<24} {row['size_bytes'] / 1024:>7.0f} KB "
                     f"{median:>10} {p90:>8}{note}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Command line

def rebuild(checkpoint: dict):
    """(wrapper, PreprocessConfig, image_size) from the checkpoint alone."""
    model, cfg = model_from_checkpoint(checkpoint)
    model = model.to(memory_format=torch.contiguous_format)
    from model import ExportedAgeModel
    return ExportedAgeModel(model, cfg.mean, cfg.std).eval(), cfg, cfg.image_size


def load_val(checkpoint: dict, cfg, args, run_split=None):
    config = checkpoint.get("config") or {}
    splits = Path(args.splits or run_split or config.get("splits") or "")
    if not (splits / "val.csv").is_file():
        raise DataError(f"--quantize needs the validation split: {splits / 'val.csv'} not found; pass --splits")
    from train import split_faces_digest
    if checkpoint.get("split_faces") and split_faces_digest(splits) != checkpoint["split_faces"]:
        # another split's validation faces may be this model's training faces: its MAE there says nothing
        raise DataError(f"--quantize: {splits} is not the split {checkpoint.get('model_name', 'the model')} was "
                        "trained on (eda.py made another since?); pass that split with --splits")
    cache_dir = Path(args.cache_dir or config.get("cache_dir") or splits.parent / "cache")
    from train import refuse_output_in_data
    refuse_output_in_data(cache_dir, splits, "--cache-dir (or the run's)")  # the cache may be written: never there
    return load_split_dataset(splits / "val.csv", cfg, cache_dir, workers=1, progress=False)


def main(args):
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torchao's import-time notice
    checkpoint_path = Path(args.checkpoint)
    checkpoint = load_checkpoint(checkpoint_path)
    missing = [k for k in ("model_name", "head", "min_age", "max_age") if k not in checkpoint]
    if missing:
        raise DataError(f"{checkpoint_path} lacks {', '.join(missing)}; pass a best.pt written by train.py")
    out = Path(args.out_dir) if args.out_dir else checkpoint_path.parent
    splits = run_splits(checkpoint, checkpoint_path)
    if splits and Path(splits).is_dir():  # exports among the images would come back as faces
        from train import refuse_output_in_data
        refuse_output_in_data(out, splits)
    refuse = labelled_folder_above(out) if args.out_dir else None  # the run's own folder is train.py's choice
    if refuse is not None:
        raise DataError(f"--out-dir {out} is inside {refuse}, which holds a labelled face data set; write outside it")
    if out.is_dir():
        remove_orphans(out)  # partial files of an export that was killed
    wrapper, cfg, image_size = rebuild(checkpoint)
    metadata = metadata_for(checkpoint, cfg, checkpoint_path)
    val_set = load_val(checkpoint, cfg, args, splits) if args.quantize else None  # fail before any export
    example = torch.rand(4, 3, image_size, image_size, generator=torch.Generator().manual_seed(1)) * 255
    result = {"checkpoint": str(checkpoint_path), "weights": metadata["weights"], "exports": {}}

    import shutil
    staging = staging_folder(out)
    try:
        staged = None
        if args.format in ("auto", "pte"):
            reason = executorch_missing()
            if reason is None:
                try:
                    staged = export_executorch(wrapper, example, staging / "model.pte", metadata)
                except Exception as exc:
                    reason = f"ExecuTorch lowering failed ({_one_line(exc)})"
            if staged is None:
                if args.format == "pte":
                    raise RuntimeError(f"cannot write model.pte: {reason}")
                print(f"{reason}; writing model.pt2 (torch.export) instead")
        if staged is None:
            staged = export_pt2(wrapper, example, staging / "model.pt2", metadata)
        diff = check_mobile_parity(wrapper, staged, example)  # fails here: the old export stays as it was
        written = publish(staged, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result["exports"][written.name] = {"max_abs_diff": diff}
    print(f"exported {written} ({written.stat().st_size / 1024:.0f} KB, max |export - eager| {diff:.1e})")

    if args.quantize:
        result["int8"] = quantize_step(wrapper, example, val_set, out, metadata, args.calibration_images)
    int8 = result.get("int8", {}).get("file")
    ours = {written.name, written.name + ".json"} | ({int8, int8 + ".json"} if int8 else set())
    remove_superseded(out, ours | ({"mobile_exports.json"} if not args.no_bench else set()), metadata["weights"])

    if not args.no_bench:
        mine = {name for name in ours if not name.endswith(".json")} | {"model.onnx"}
        table = benchmark_folder(out, image_size, args.threads, args.runs, args.warmup,
                                 weights=metadata["weights"], only=mine)
        result["latency"] = table
        print(format_table(table))
        text = json.dumps(result, indent=1) + "\n"
        atomic_write(out / "mobile_exports.json", lambda f: f.write(text.encode("utf-8")))
        print(f"-> {out / 'mobile_exports.json'}")
    return result


def quantize_step(wrapper, example, val_set, out, metadata, calibration_images: int):
    """model_int8.pte and the val MAE of float vs int8, or a one-line skip when no quantizer."""
    try:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer  # noqa: F401
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e  # noqa: F401
    except Exception as exc:
        print(f"--quantize skipped: the XNNPACK PT2E quantizer is not available here ({type(exc).__name__}: {exc})")
        return {"skipped": str(exc)}
    images, ages = val_set.batch(range(len(val_set)))
    # spread over the split, which eda.py writes sorted by path: its first faces are often all of one age
    calibration = images[np.unique(np.linspace(0, len(images) - 1, max(1, calibration_images)).round().astype(int))]
    import shutil
    staging = staging_folder(out)  # as the float export: the model and its sidecar replace the old pair together
    try:
        try:
            staged = quantize_executorch(wrapper, example, calibration, staging / "model_int8.pte", metadata)
        except Exception as exc:  # the float export stands; the table still gets written
            reason = _one_line(exc)
            print(f"--quantize failed, model_int8.pte not written ({reason})")
            return {"skipped": reason}
        run, _ = load_executorch(staged)
        int8_pred = predict_batches(run, images)
        path = publish(staged, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    float_pred = predict_batches(wrapper, images)
    true = ages.numpy()
    float_mae = float(np.abs(float_pred - true).mean())
    int8_mae = float(np.abs(int8_pred - true).mean())
    gap = float(np.abs(int8_pred - float_pred).max())
    print(f"exported {path} ({path.stat().st_size / 1024:.0f} KB); val MAE of the graph alone (one view per face, "
          f"no age map: not the metadata's val_mae) (n={len(true)}): float {float_mae:.3f}, "
          f"int8 {int8_mae:.3f} ({int8_mae - float_mae:+.3f}); max |int8 - float| {gap:.3f} years; "
          f"calibrated on {len(calibration)} val images")
    return {"file": path.name, "val_n": int(len(true)), "val_mae_float": float_mae, "val_mae_int8": int8_mae,
            "max_abs_diff_vs_float": gap, "calibration_images": int(len(calibration))}


if __name__ == "__main__":
    run_cli(main, get_args_parser())
