"""What a checkpoint and an exported model contain, and how each is written and read back.

A checkpoint (RUN/best.pt, RUN/last.pt) is a dict of tensors and plain values, loaded with
weights_only=True: the model's name, head and age range, every train.py setting ("config"), the
preprocessing and crop recipe, the split's digest, weights, optimiser/scheduler/RNG state and history.
An export (model.onnx, model.jit, and export_mobile.py's .pte/.pt2) is ExportedAgeModel: float32
N x 3 x S x S RGB 0-255 after custom_dataset.preprocess_rgb in, ages (N,) out, normalisation inside,
with export_metadata() embedded, so inference rebuilds the input from the file alone.
"""
import copy
import json
import os
import warnings
from pathlib import Path

import numpy as np

from cli import lazy_import
from custom_dataset import PREPROCESS_VERSION, DataError, PreprocessConfig, parse_zooms, plain_number, remove_orphans
from faces import BOX_CROP, check_crop, read_split_crop
from functions import atomic_write, rng_state

torch = lazy_import("torch")  # imported on first use: inference of an ONNX model never needs it

FORMAT_VERSION = 1  # of checkpoints and export metadata; readers refuse newer files with advice


class ModelFailed(DataError):
    """The model, not the photo, failed (it refuses its input, returns no finite age): every photo would fail
    the same way, so a folder run stops instead of skipping each one."""


# ----------------------------------------------------------------------------------------------
# Checkpoints

def make_checkpoint(args, model, optimizer, scheduler, *, min_age, max_age, cfg, crop, split_digest, epoch,
                    metrics, history, best_val_mae, world_size, ema=None, split_faces=None) -> dict:
    """Everything a resumed run, an export or an evaluation needs, in one self-describing dict.
    model_state holds the weights that were evaluated (with train.py --ema the averaged ones); a run
    with --ema also keeps the weights being trained and the average's count, for --resume."""
    checkpoint = {"version": FORMAT_VERSION, "model_name": args.model, "head": args.head, "min_age": min_age,
                  "max_age": max_age, "config": vars(args), "preprocess": cfg.to_dict(), "crop": crop,
                  "preprocess_version": PREPROCESS_VERSION,  # which code made the pixels it learnt from
                  "split_digest": split_digest, "split_faces": split_faces,
                  "model_state": (ema.module if ema else model).state_dict(),
                  "optimizer_state": optimizer.state_dict(), "scheduler_state": scheduler.state_dict(),
                  "rng_state": rng_state(), "epoch": epoch, "metrics": metrics, "history": history,
                  "best_val_mae": best_val_mae, "world_size": world_size}
    if ema is not None:
        checkpoint.update(training_state=model.state_dict(), ema_averaged=int(ema.n_averaged))
    return checkpoint


def save_checkpoint(path, checkpoint: dict):
    atomic_write(path, lambda f: torch.save(checkpoint, f))


def load_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"{path} is not a readable checkpoint ({type(exc).__name__}); "
                        "pass a best.pt/last.pt written by train.py") from None
    if not isinstance(checkpoint, dict) or "model_state" not in checkpoint:
        raise DataError(f"{path} is not a checkpoint written by train.py (no model_state)")
    version = checkpoint.get("version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DataError(f"{path} has checkpoint format {version!r}, newer than this code reads ({FORMAT_VERSION}); "
                        "update this repository (git pull) to use it")
    return checkpoint


def model_from_checkpoint(checkpoint: dict):
    """(model in eval mode, PreprocessConfig) rebuilt from a checkpoint alone."""
    from model import build_model
    config = checkpoint.get("config") or {}
    cfg = PreprocessConfig.from_dict(checkpoint.get("preprocess") or {})
    image_size = int(config.get("image_size") or cfg.image_size)
    model = build_model(checkpoint["model_name"], checkpoint["head"], checkpoint["min_age"], checkpoint["max_age"],
                        image_size, dropout=config.get("dropout", 0.0))
    try:
        model.load_state_dict(checkpoint["model_state"])
    except RuntimeError as exc:
        raise DataError(f"the checkpoint's weights do not fit a {checkpoint['model_name']} "
                        f"({str(exc).splitlines()[0]})") from None
    return model.eval(), cfg


# ----------------------------------------------------------------------------------------------
# Exports: the preprocessing-aware model, TorchScript and ONNX, each checked against eager

def export_metadata(cfg, best, test_metrics=None) -> dict:
    """What every export carries so that inference rebuilds the input from the file alone. Checkpoints
    written before crop recipes existed get their split's recipe (or, without a split, the square crop)."""
    config = best.get("config") or {}
    # a split folder eda.py has made again since (another range or data set) describes another model's data
    own_split = config.get("splits") and split_is_the_runs(best, config["splits"])
    crop = best.get("crop") or (read_split_crop(config["splits"]) if own_split else dict(BOX_CROP))
    # this checkpoint's own epoch (last.pt's is not the best epoch's), where train.py measured no export figure
    own_val_mae = ((best.get("metrics") or {}).get("val") or {}).get("mae", best.get("best_val_mae"))
    return {"format_version": FORMAT_VERSION, "model_name": best["model_name"], "head": best["head"],
            "min_age": best["min_age"], "max_age": best["max_age"], "preprocess": cfg.to_dict(),
            # custom_dataset.PREPROCESS_VERSION of its training pixels (None before it was kept): inference.py notes
            # a model whose pixels another version of the code made
            "preprocess_version": best.get("preprocess_version"),
            "crop": crop, "tta_flip": config.get("tta_flip", False),
            "tta_zoom": list(parse_zooms(config.get("tta_zoom", ""))),  # inference.py averages these views too
            "data": describe_training_data(config) if own_split or config.get("data_description") else None,
            "input": "float32 N x 3 x S x S RGB 0-255 after custom_dataset.preprocess_rgb",
            # what an app must add to the graph to get the figures below (inference.AgeEstimator does)
            "output": "N ages in years, one view each: average the views tta_flip and tta_zoom name (mirror; centred "
                      "crops of those shares of the side, resized back), then np.interp(age, age_map x, y) where "
                      "age_map is given; val_mae and test_mae are of that whole. On photos inference.py also "
                      "brightens a face darker than dark_floor first (custom_dataset.lift_dark)",
            # the 1st percentile of the training faces' exposure (custom_dataset.dark_floor_of); None before train.py
            # measured it, and inference.py then takes UTKFace's (inference.DEFAULT_DARK_FLOOR)
            "dark_floor": best.get("dark_floor"),
            "weights": weights_digest(best["model_state"]),  # which weights: export_mobile tells its files apart by it
            "val_mae": best.get("export_val_mae", own_val_mae),
            # the same faces through the export as it is (map included: in-sample where one is kept)
            "val_mae_views": best.get("export_val_mae_views", best.get("export_val_mae", own_val_mae)),
            "test_mae": (test_metrics or {}).get("mae"),
            "interval": best.get("interval"),  # conformal calibration (functions.fit_interval); None before it existed
            # functions.fit_age_map, applied to the graph's output by inference.py (np.interp(age, x, y));
            # None where train.py --age-map did not keep one
            "age_map": best.get("age_map")}


def split_is_the_runs(checkpoint: dict, splits) -> bool:
    """Whether the split folder holds the faces the checkpoint was trained on; a checkpoint from before
    split_faces was kept is taken at its word."""
    if not checkpoint.get("split_faces"):
        return True
    from train import split_faces_digest  # here, not at the top: train.py imports this module
    try:
        return split_faces_digest(splits) == checkpoint["split_faces"]
    except (OSError, DataError):
        return False


def weights_digest(state_dict) -> str:
    """Hash of a model's weights (names, types, shapes, bytes): the same for every copy or re-save of one
    checkpoint, whatever its file's bytes or modification time."""
    import hashlib
    digest = hashlib.sha1()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def describe_training_data(config: dict) -> str | None:
    """One line on what the model learnt from: train.py --data-description, else eda.py's report
    beside the split ("23112 images, utkface layout, ages 1-116, from /data/UTKFace")."""
    if config.get("data_description"):
        return config["data_description"]
    report = Path(config.get("splits") or "") / ".." / "data_report.json"
    try:
        data = json.loads(report.read_text())
        return (f"{data['used']} images, {data['layout']} layout, ages {data['age']['min']:g}-{data['age']['max']:g}, "
                f"from {Path(data['data_dir']).resolve()}")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_splits(checkpoint: dict, checkpoint_path) -> Path | None:
    """The split folder a checkpoint was trained on: --splits as typed to train.py where it resolves from here,
    else the absolute path the run's config.json recorded (export_mobile.py run from another folder found no
    split: its data check, data description and an old checkpoint's crop recipe went missing)."""
    typed = (checkpoint.get("config") or {}).get("splits")
    if typed and Path(typed).is_dir():
        return Path(typed)
    try:
        recorded = json.loads((Path(checkpoint_path).parent / "config.json").read_text())["splits"]["train.csv"]
        return Path(recorded).parent
    except (OSError, ValueError, KeyError, TypeError):
        return Path(typed) if typed else None


def metadata_for(checkpoint: dict, cfg, checkpoint_path) -> dict:
    """export_metadata of a saved checkpoint; test MAE from RUN/metrics.json when it describes this
    checkpoint (test_figures_describe)."""
    splits = run_splits(checkpoint, checkpoint_path)
    if splits is not None:
        checkpoint = {**checkpoint, "config": {**(checkpoint.get("config") or {}), "splits": str(splits)}}
    test = None
    metrics = Path(checkpoint_path).parent / "metrics.json"
    if metrics.is_file():
        try:
            saved = json.loads(metrics.read_text())
            if isinstance(saved, dict) and test_figures_describe(saved, checkpoint):
                test = saved
        except (ValueError, OSError):
            pass
    return export_metadata(cfg, checkpoint, test)


def test_figures_describe(saved: dict, checkpoint: dict) -> bool:
    """Whether a run's metrics.json measured this checkpoint: the same weights through the same age map and
    test-time views. The last.pt of a run whose last epoch was its best has the weights but neither the map
    nor the zooms chosen after training. A metrics.json from before it kept a digest: by the epoch."""
    if "weights" not in saved:
        return saved.get("best_epoch") == checkpoint.get("epoch")
    config = checkpoint.get("config") or {}
    try:
        zooms = list(parse_zooms(config.get("tta_zoom", "")))
    except ValueError:
        return False
    return (saved["weights"] == weights_digest(checkpoint["model_state"])
            and saved.get("age_map_applied") == checkpoint.get("age_map")
            and saved.get("tta_zoom", []) == zooms and bool(saved.get("tta_flip")) == bool(config.get("tta_flip")))


def export_torchscript(wrapper, example, path, metadata: dict):
    """TorchScript (deprecated in this torch; kept because users ship it) with metadata inside."""
    wrapper = wrapper.eval()
    # torch announces the deprecation once per call (trace, freeze, save); the docstring says it once
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(wrapper, example)
        # frozen: weights become constants, which lets load_torchscript() optimise it for the CPU
        module = torch.jit.freeze(traced.eval())
        extra = {"metadata.json": json.dumps(metadata)}
        atomic_write(path, lambda f: torch.jit.save(module, f, _extra_files=extra))
    return path


def load_torchscript(path, optimize: bool = True, map_location="cpu"):
    """(module, metadata) from a model.jit written by export_torchscript.

    optimize: torch.jit.optimize_for_inference (conv folding, oneDNN layouts) after loading; measured
    2.5x faster batch-1 on this CPU. It is done at load time because an optimised module does not
    survive torch.jit.save/load in this torch.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"model file not found: {path} (train.py writes RUN/model.jit)")
    extra = {"metadata.json": ""}
    try:
        # frozen weights are constants: map_location is what places them on a device. A file object, not the
        # name: given a name, torch's C++ reads it in Windows' local code page (a folder named Jürgen fails)
        with open(path, "rb") as f:
            module = torch.jit.load(f, map_location=map_location, _extra_files=extra)
    except Exception as exc:
        raise DataError(f"{path} is not a TorchScript model ({type(exc).__name__}); pass the model.jit "
                        "written by train.py") from None
    if not extra["metadata.json"]:
        raise DataError(f"{path} has no preprocessing metadata; export it with train.py")
    module = module.eval()
    if optimize:
        module = torch.jit.optimize_for_inference(module)
    return module, parse_metadata(path, extra["metadata.json"])


def export_onnx(wrapper, example, path, metadata: dict):
    """ONNX through torch's dynamo exporter, batch dimension dynamic, metadata in the model props."""
    wrapper = wrapper.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(wrapper, (example,), dynamo=True, dynamic_shapes=({0: batch},), verbose=False)
    # the graph as a protobuf in memory (weights included: a SimpleCNN or ResNet is far under protobuf's 2 GB),
    # written once, atomically, beside its destination: no copy in the system's temporary folder
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = "metadata.json", json.dumps(metadata)
    atomic_write(path, lambda f: f.write(proto.SerializeToString()))
    return path


def onnx_metadata(path) -> dict | None:
    """The metadata an ONNX export records (its "metadata.json" prop) read as protobuf, nothing of it run;
    None where it records none. Raises what onnx raises for a file that is not ONNX."""
    import onnx
    entries = [p.value for p in onnx.load(str(path), load_external_data=False).metadata_props
               if p.key == "metadata.json"]
    return parse_metadata(path, entries[0]) if entries else None


def rewrite_export_metadata(path, metadata: dict):
    """An export (model.onnx or model.jit) written again with other metadata and the same weights, atomically:
    for settings chosen after export (benchmark.py --ship-zooms). The .jit is a program, so only a trusted
    file (this repository's own) may be passed."""
    path = Path(path)
    if is_onnx(path):
        import onnx
        proto = onnx.load(str(path))
        entries = [p for p in proto.metadata_props if p.key == "metadata.json"]
        if not entries:
            raise DataError(f"{path} has no preprocessing metadata; export it with train.py")
        entries[0].value = json.dumps(metadata)
        blob = proto.SerializeToString()
        atomic_write(path, lambda f: f.write(blob))
    else:
        with warnings.catch_warnings():  # torch's deprecation notice of TorchScript, said in export_torchscript
            warnings.simplefilter("ignore", FutureWarning)
            with open(path, "rb") as f:  # a file object: see load_torchscript
                module = torch.jit.load(f, map_location="cpu")
            atomic_write(path, lambda f: torch.jit.save(module, f, _extra_files={"metadata.json": json.dumps(metadata)}))
    return path


def check_export_parity(wrapper, jit_path, onnx_path, example, tolerance=1e-4) -> dict:
    """Max |eager - export| on a batch, each export run by the reader inference uses (read_export);
    raises if any export differs by more than tolerance."""
    with torch.no_grad():
        eager = wrapper.eval()(example).numpy()
    diffs = {}
    for name, path in (("torchscript", jit_path), ("onnx", onnx_path)):
        if path:
            forward, _ = read_export(path, trust_code=True)  # the files this process has just written
            diffs[name] = float(np.abs(np.asarray(forward(example.numpy())).reshape(eager.shape) - eager).max())
    bad = {k: v for k, v in diffs.items() if not v <= tolerance}
    if bad:
        raise RuntimeError(f"export differs from the eager model by more than {tolerance}: {bad}")
    return diffs


def export_best(model, cfg, best, out, val_set, test_metrics=None):
    """model.jit and model.onnx of the best epoch, each checked against the eager model."""
    from model import ExportedAgeModel
    eager = copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format).eval()
    wrapper = ExportedAgeModel(eager, cfg.mean, cfg.std).eval()
    example = val_set.batch(range(min(8, len(val_set))))[0].float()
    metadata = export_metadata(cfg, best, test_metrics)
    # written under temporary names and checked before they replace the last good pair: an export that
    # fails the check never reaches inference.py
    remove_orphans(out, ".model.*.tmp.*")  # a killed export's, and atomic_write's own beside them
    remove_orphans(out, "..model.*.tmp")
    staged = {name: out / f".model.{os.getpid()}.tmp{Path(name).suffix}" for name in ("model.jit", "model.onnx")}
    try:
        export_torchscript(wrapper, example, staged["model.jit"], metadata)
        export_onnx(wrapper, example, staged["model.onnx"], metadata)
        diffs = check_export_parity(wrapper, staged["model.jit"], staged["model.onnx"], example)
        for name, path in staged.items():  # two renames: a kill between them leaves a new jit beside the
            os.replace(path, out / name)     # old onnx, both checked exports (their metadata tells them apart)
    finally:
        for path in staged.values():
            path.unlink(missing_ok=True)
    jit_path, onnx_path = out / "model.jit", out / "model.onnx"
    print(f"exported {jit_path} and {onnx_path} (max |export - eager|: "
          + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()) + ")")
    return {"torchscript": str(jit_path), "onnx": str(onnx_path), "max_abs_diff": diffs}


# ----------------------------------------------------------------------------------------------
# Reading an export back (inference): the forward function and the checked metadata

DEVICES = ("cpu", "cuda")


SHIPPED_MODELS = Path(__file__).resolve().parent / "models"
SHIPPED_NAME = "age_simplecnn_utkface"  # models/NAME.onnx and .jit, with their card (benchmark.py --ship writes them)
# The one model.jit loaded without being vouched for: the file this repository ships, not whatever else is saved
# beside it (a downloaded model.jit put into models/ runs its code only with --trust-model)
SHIPPED_TORCHSCRIPT = SHIPPED_MODELS / f"{SHIPPED_NAME}.jit"


def is_onnx(path) -> bool:
    """Whether an export is ONNX (by its suffix, any case: AgeModel.ONNX from a Windows share is a model.onnx)."""
    return Path(path).suffix.lower() == ".onnx"


def read_export(path, threads=None, device="cpu", trust_code=False):
    """(forward, metadata) of a model.onnx or a model.jit, run on device ("cpu" or "cuda"). forward maps
    float32 N x 3 x S x S (numpy) to ages. A model.jit is a program (TorchScript runs code from the file): it
    is loaded where it is the shipped one (SHIPPED_TORCHSCRIPT) or where the caller vouches for it (trust_code,
    --trust-model)."""
    path = Path(path)
    if device not in DEVICES:
        raise DataError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if is_onnx(path):
        return onnx_forward(path, threads, device)
    if path.suffix.lower() == ".jit":  # a .JIT is a program all the same
        if not (trust_code or path.resolve() == SHIPPED_TORCHSCRIPT):
            raise DataError(f"{path} is TorchScript, which runs code from the file: pass the model.onnx beside it "
                            "(ONNX Runtime runs no Python), or --trust-model if you made it or trust its source")
        return torchscript_forward(path, threads, device)
    raise DataError(f"{path}: pass a model.onnx (or a model.jit you trust) written by train.py")


# how ONNX Runtime says an allocation failed: its arena ("Failed to allocate memory for requested buffer"), the C++
# allocator's std::bad_alloc ("bad allocation" on Windows), CUDA's "out of memory"
ONNX_OUT_OF_MEMORY = ("failed to allocate", "bad_alloc", "bad allocation", "out of memory")


def onnx_forward(path, threads=None, device="cpu"):
    """(forward, metadata) of a model.onnx: ONNX Runtime runs the graph, no Python code from the file."""
    import onnxruntime as ort
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise DataError("--device cuda: this ONNX Runtime has no CUDAExecutionProvider (install onnxruntime-gpu "
                            "for your CUDA version); use --device cpu")
        providers.insert(0, "CUDAExecutionProvider")
    if path.is_file() and not os.access(path, os.R_OK):  # ONNX Runtime would call it "not an ONNX model"
        raise DataError(f"cannot read {path}: permission denied; check its permissions")
    try:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # ONNX Runtime's threads otherwise spin on after each run and take a core from the face detection
        # of the next photo (bench_detection.py's end-to-end time shows it)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=providers)
        props = session.get_modelmeta().custom_metadata_map
    except Exception as exc:
        raise DataError(f"{path} is not an ONNX model ({type(exc).__name__}); pass the model.onnx written by train.py") from None
    if "metadata.json" not in props:
        raise DataError(f"{path} has no preprocessing metadata; export it with train.py")
    if device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        raise DataError("--device cuda: ONNX Runtime could not start CUDA (driver or CUDA libraries missing); "
                        "use --device cpu")
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)":
        raise DataError(f"{path} takes {', '.join(i.type for i in inputs) or 'no input'}, not one float32 image "
                        "batch; pass the model.onnx written by train.py")
    name = inputs[0].name

    def forward(x):
        try:
            return session.run(None, {name: x})[0]
        except Exception as exc:  # ONNX Runtime's own errors are no RuntimeError: one line, not a traceback
            detail = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
            if any(words in str(exc).lower() for words in ONNX_OUT_OF_MEMORY):
                # this photo's (a crowd: many faces x views), as in torchscript_forward: skipped, not the model's fault
                raise MemoryError(detail) from None
            raise ModelFailed(f"{path} failed on a batch of shape {tuple(x.shape)} ({detail}); a model.onnx written "
                              "by train.py runs on the input size its metadata gives") from None
    return forward, parse_metadata(path, props["metadata.json"])


def torchscript_forward(path, threads=None, device="cpu"):
    """(forward, metadata) of a trusted model.jit (TorchScript runs code from the file)."""
    torch.set_num_threads(threads or os.cpu_count() or 1)
    if device == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda: torch sees no CUDA GPU; use --device cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
        # optimize_for_inference makes CPU kernels; on CUDA the module is used as frozen
        module, metadata = load_torchscript(path, optimize=device == "cpu", map_location=device)

    def forward(x):
        try:
            with torch.no_grad():
                return module(torch.from_numpy(x).to(device)).cpu().numpy()
        except RuntimeError as exc:  # TorchScript's errors quote its code over many lines: the last one says what
            if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
                raise  # this photo's (many faces x views): skipped, as README says, not the model's fault
            lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
            raise ModelFailed(f"{path} failed on a batch of shape {tuple(x.shape)} ("
                              f"{lines[-1][:200] if lines else type(exc).__name__}); a model.jit written by train.py "
                              "runs on the input size its metadata gives") from None
    return forward, metadata


def age_map_is_usable(age_map) -> bool:
    """Knots as functions.fit_age_map writes them: finite, x increasing, y not decreasing."""
    x, y = (age_map.get("x"), age_map.get("y")) if isinstance(age_map, dict) else (None, None)
    if not isinstance(x, list) or not isinstance(y, list) or len(x) != len(y) or not x:
        return False
    if not all(map(plain_number, x + y)):
        return False
    return all(a < b for a, b in zip(x, x[1:])) and all(a <= b for a, b in zip(y, y[1:]))


def interval_is_usable(interval) -> bool:
    """A calibration as functions.fit_interval writes it: bands in increasing order, each with a
    sorted list of finite errors."""
    bands = interval.get("bands") if isinstance(interval, dict) else None
    if not isinstance(bands, list) or not bands or not isinstance(interval.get("method"), str):
        return False
    starts = [b.get("from") if isinstance(b, dict) else "bad" for b in bands]
    numbers = all(map(plain_number, starts[1:]))  # NaN would pass sorted() and pick the wrong band
    if starts[0] is not None or not numbers or starts[1:] != sorted(starts[1:]):
        return False
    for band in bands:
        errors = band.get("errors")
        if not isinstance(errors, list) or not errors or not all(map(plain_number, errors)):
            return False
        if errors != sorted(errors):
            return False
    return True


def shown(text, limit=200) -> str:
    """Text from a model file's metadata as it may reach a terminal: printable characters only (no escape
    sequence that clears the screen or fakes a line), at most `limit` of them."""
    text = "".join(c if c.isprintable() else "?" for c in str(text))
    return text if len(text) <= limit else text[:limit - 1] + "…"


def parse_metadata(path, text) -> dict:
    """The "metadata.json" a model file carries, as a dict; DataError naming the file where it is not JSON
    (or is nested deeper than the parser goes) or not an object."""
    try:
        metadata = json.loads(text)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise DataError(f"{path} has unreadable metadata ({type(exc).__name__}); re-export it with train.py") from None
    if not isinstance(metadata, dict):
        raise DataError(f"{path} has metadata that is no JSON object; re-export it with train.py")
    return metadata


def check_metadata(path, metadata):
    """(cfg, crop) from a model's metadata; DataError with advice where it is unusable."""
    if not isinstance(metadata, dict) or not isinstance(metadata.get("preprocess"), dict):
        raise DataError(f"{path} has no preprocessing settings in its metadata; re-export it with train.py")
    version = metadata.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DataError(f"{path} has metadata format {version!r}, newer than this code "
                        f"understands ({FORMAT_VERSION}); update the code")
    try:
        cfg = PreprocessConfig.from_dict(metadata["preprocess"])
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path} has unusable preprocessing metadata ({exc}); re-export it with train.py") from None
    size = cfg.image_size
    if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= 1024:
        raise DataError(f"{path} has an unusable image_size {size!r} in its metadata; re-export it with train.py")
    if not isinstance(metadata.get("tta_flip", False), bool):  # "no" as text would mirror every face
        raise DataError(f"{path} has an unusable tta_flip {shown(repr(metadata['tta_flip']), 40)} in its metadata (true or "
                        "false); re-export it with train.py")
    for key in ("min_age", "max_age"):
        if metadata.get(key) is not None and not plain_number(metadata[key]):
            raise DataError(f"{path} has an unusable {key} {shown(repr(metadata[key]), 40)} in its metadata; re-export it "
                            "with train.py")
    interval = metadata.get("interval")
    if interval is not None and not interval_is_usable(interval):
        raise DataError(f"{path} has an unusable age-interval calibration in its metadata; re-export it with train.py")
    if metadata.get("age_map") is not None and not age_map_is_usable(metadata["age_map"]):
        raise DataError(f"{path} has an unusable age map in its metadata; re-export it with train.py")
    # models exported before the chip carry only a margin around the detector's box
    crop = metadata.get("crop") or {**BOX_CROP, "margin": metadata.get("crop_margin", 0.0)}
    try:
        crop = check_crop(crop)
    except DataError as exc:
        raise DataError(f"{path}: {exc}; re-export it with train.py") from None
    return cfg, crop
