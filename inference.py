"""Estimate the age of every face in an image, a folder of images, or a video.

    python inference.py --image photo.jpg --output photo_age.jpg          # the shipped model (models/)
    python inference.py --model RUN/model.onnx --input-dir photos/ --output-dir annotated/ [--save-crops crops/]
    python inference.py --model RUN/model.onnx --video clip.mp4 --output clip_age.mp4

Each face goes through faces.FacePipeline: detected (--detector, default the HOG/Haar cascade), its
landmarks found, and cut out exactly as the model's training faces were cut (the crop recipe is in the
model's metadata: UTKFace-trained models get UTKFace's own dlib chip). The chip goes through
custom_dataset.preprocess_rgb, the very function training used, and all faces of an image are
predicted in one forward pass. A photo without a face says so; it is never guessed from the whole
photo unless --whole-image says the inputs are face crops already. Video faces are tracked across
frames by box overlap and their age is smoothed, so the number does not jitter.

model.onnx (ONNX Runtime runs no Python code) is the format for models from elsewhere; model.jit is
TorchScript, a program: load it only from a source you trust.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

import faces as face_pipeline
from custom_dataset import (IMAGE_EXTENSIONS, MIN_IMAGE_SIDE, DataError, PreprocessConfig, _utf8_name,
                            labelled_folder_above, load_rgb, preprocess_rgb)
from faces import BOX_CROP, DETECTORS, FacePipeline, Face, check_crop, describe_crop, iou
from functions import ArgumentParser, atomic_write, configure_threads, run_cli, same_or_inside

SUPPORTED_FORMAT_VERSION = 1
REPO = Path(__file__).resolve().parent
DEFAULT_MODEL = REPO / "models" / "age_simplecnn_utkface.onnx"  # the shipped model (models/README.md)

# Video: tracks and smoothing
TRACK_IOU = 0.3           # a detection continues a track when their boxes overlap at least this much
SMOOTH_ALPHA = 0.3        # exponential moving average weight of the newest frame: shown = 0.3 new + 0.7
                          # previous, i.e. the displayed age follows a change with a time constant of about
                          # three frames while frame-to-frame noise is damped to ~40 % of its size
MAX_MISSED = 10           # a track survives this many frames without a matching detection
CSV_FIELDS = ["file", "face_index", "x", "y", "w", "h", "score", "detector", "age", "face_found"]


def get_args_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEFAULT_MODEL),
                   help="model.onnx (or a trusted model.jit) written by train.py (default: the shipped %(default)s)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="one image to annotate")
    src.add_argument("--input-dir", help="folder of images to annotate (not recursive)")
    src.add_argument("--video", help="video to annotate frame by frame")
    p.add_argument("--output", help="annotated image or video (default: INPUT name + _age beside the input)")
    p.add_argument("--output-dir", help="--input-dir mode: folder for annotated images and predictions.csv")
    p.add_argument("--detector", choices=DETECTORS, default=face_pipeline.DEFAULT_DETECTOR,
                   help="face detector (default: %(default)s; README, 'Face detection', compares them)")
    p.add_argument("--whole-image", "--no-detect", dest="whole_image", action="store_true",
                   help="the inputs are face crops already: no detection, the whole image is the face")
    p.add_argument("--save-crops", metavar="DIR",
                   help="write each face's model input as DIR/<image stem>_<face index>.png (RGB, before normalisation)")
    p.add_argument("--alpha", type=float, default=SMOOTH_ALPHA, help="--video: weight of the newest age (EMA)")
    p.add_argument("--threads", type=int, default=None, help="torch / ONNX Runtime threads (default: all cores)")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


# ----------------------------------------------------------------------------------------------
# Model

def _onnx_model(path, threads=None):
    """(forward, metadata) of a model.onnx: ONNX Runtime runs the graph, no Python code from the file."""
    import onnx
    import onnxruntime as ort
    try:
        proto = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in proto.metadata_props}
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise DataError(f"{path} is not an ONNX model ({type(exc).__name__}); pass the model.onnx written by train.py") from None
    if "metadata.json" not in props:
        raise DataError(f"{path} has no preprocessing metadata; export it with train.py")
    name = session.get_inputs()[0].name
    return (lambda x: session.run(None, {name: x})[0]), json.loads(props["metadata.json"])


def _torchscript_model(path):
    import torch
    from functions import load_torchscript
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
        module, metadata = load_torchscript(path)

    def forward(x):
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()
    return forward, metadata


def _check_metadata(path, metadata):
    """(cfg, crop) from a model's metadata; DataError with advice where it is unusable."""
    if not isinstance(metadata, dict) or not isinstance(metadata.get("preprocess"), dict):
        raise DataError(f"{path} has no preprocessing settings in its metadata; re-export it with train.py")
    version = metadata.get("format_version", 1)
    if not isinstance(version, int) or version > SUPPORTED_FORMAT_VERSION:
        raise DataError(f"{path} has metadata format {version!r}, newer than this inference.py "
                        f"understands ({SUPPORTED_FORMAT_VERSION}); update the code")
    try:
        cfg = PreprocessConfig.from_dict(metadata["preprocess"])
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path} has unusable preprocessing metadata ({exc}); re-export it with train.py") from None
    size = cfg.image_size
    if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= 1024:
        raise DataError(f"{path} has an unusable image_size {size!r} in its metadata; re-export it with train.py")
    # models exported before the chip carry only a margin around the detector's box
    crop = metadata.get("crop") or {**BOX_CROP, "margin": metadata.get("crop_margin", 0.0)}
    try:
        crop = check_crop(crop)
    except DataError as exc:
        raise DataError(f"{path}: {exc}; re-export it with train.py") from None
    return cfg, crop


class AgeEstimator:
    """Load a model once, then estimate ages of faces in photos.

        from inference import AgeEstimator
        estimator = AgeEstimator("models/age_simplecnn_utkface.onnx")
        for face in estimator.predict("photo.jpg"):
            print(face["box"], face["age"])

    The model file carries its preprocessing and crop recipe; detection, alignment and
    preprocessing are the ones training used.
    """

    def __init__(self, model=DEFAULT_MODEL, detector=face_pipeline.DEFAULT_DETECTOR, whole_image=False,
                 threads=None):
        path = Path(model)
        if not path.is_file():
            hint = " (the shipped model is made by models/README.md's command)" if path == DEFAULT_MODEL else ""
            raise DataError(f"model file not found: {path}{hint}; pass --model RUN/model.onnx written by train.py")
        if path.suffix == ".onnx":
            self._forward, self.metadata = _onnx_model(path, threads)
        elif path.suffix == ".jit":
            self._forward, self.metadata = _torchscript_model(path)
        else:
            raise DataError(f"{path}: pass a model.onnx (or a trusted model.jit) written by train.py")
        self.path = path
        self.cfg, self.crop = _check_metadata(path, self.metadata)
        self.whole_image = whole_image
        self.pipeline = None if whole_image else FacePipeline(self.crop, detector)

    def describe(self) -> str:
        how = "whole image (--whole-image)" if self.whole_image else \
            f"{self.pipeline.detector} detector, {describe_crop(self.crop)}"
        return f"model {self.path.name}: {self.metadata.get('model_name', '?')}, {self.cfg.image_size} px; faces: {how}"

    def model_inputs(self, chips) -> np.ndarray:
        """N x S x S x 3 uint8: each chip through preprocess_rgb, as training preprocessed its faces."""
        return np.stack([preprocess_rgb(np.ascontiguousarray(c), self.cfg) for c in chips])

    def predict_inputs(self, inputs) -> np.ndarray:
        """Ages (float64) of N x S x S x 3 uint8 model inputs, in one forward pass (plus its mirror
        image with the model's flip test-time averaging)."""
        if len(inputs) == 0:
            return np.zeros(0, dtype=np.float64)
        x = np.ascontiguousarray(inputs.transpose(0, 3, 1, 2), dtype=np.float32)
        ages = np.asarray(self._forward(x), dtype=np.float64).reshape(len(x), -1)
        if ages.shape[1] != 1:
            raise DataError(f"{self.path} returns {ages.shape[1]} numbers per image, not one age; "
                            "pass a model exported by train.py")
        if self.metadata.get("tta_flip"):
            mirrored = np.asarray(self._forward(np.ascontiguousarray(x[..., ::-1])), dtype=np.float64)
            ages = 0.5 * (ages + mirrored.reshape(ages.shape))
        return ages[:, 0]

    def find_faces(self, rgb) -> list[Face]:
        """Faces of one HxWx3 RGB image with their chips; the whole image is one face with --whole-image."""
        if self.whole_image:
            height, width = rgb.shape[:2]
            return [Face((0, 0, width, height), 1.0, "whole_image", chip=rgb)]
        return self.pipeline.faces(rgb)

    def estimate(self, rgb):
        """(faces, model inputs, ages) of one RGB image; all its faces in one forward pass."""
        found = self.find_faces(rgb)
        inputs = self.model_inputs([f.chip for f in found]) if found else np.zeros((0,), np.uint8)
        return found, inputs, self.predict_inputs(inputs)

    def predict(self, images):
        """Faces and ages of one image or a list of them: file paths, PIL images or HxWx3 RGB arrays.
        Returns, per image, a list of {"box", "score", "detector", "age"} (one image: that list)."""
        single = not isinstance(images, (list, tuple))
        results = []
        for image in [images] if single else images:
            found, _, ages = self.estimate(as_rgb(image))
            results.append([{"box": tuple(int(round(v)) for v in f.box), "score": float(f.score),
                             "detector": f.source, "age": float(a)} for f, a in zip(found, ages)])
        return results[0] if single else results


def as_rgb(image) -> np.ndarray:
    """HxWx3 uint8 RGB from a path, a PIL image or an array (gray and RGBA are converted)."""
    if isinstance(image, (str, os.PathLike)):
        return _read_image(image)
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise DataError(f"images must be uint8 arrays, got {array.dtype}")
    if array.ndim == 2:
        return np.ascontiguousarray(np.repeat(array[..., None], 3, axis=2))
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return np.ascontiguousarray(array[..., :3])
    raise DataError(f"an image array must be HxW or HxWx3 (RGB), got shape {array.shape}")


# ----------------------------------------------------------------------------------------------
# Drawing

def annotate(rgb, boxes, labels):
    """Copy of rgb with each box and its label drawn, line and text sized by the box so that they
    read on a 300 px thumbnail and a 6000 px photo alike (the original is left untouched).
    With no box, labels[0] (if any) is written across the top of the image."""
    out = np.ascontiguousarray(rgb).copy()
    height, width = out.shape[:2]
    colour = (40, 220, 40)
    if not boxes:
        if labels:
            side = min(height, width)
            _label(out, labels[0], 0, 0, max(0.4, side / 500), max(1, round(side / 250)), (230, 60, 60), inside=True)
        return out
    for box, text in zip(boxes, labels):
        x, y, w, h = (int(round(v)) for v in box)
        side = max(w, h)
        thickness = max(1, round(side / 60))
        cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), colour, thickness)
        _label(out, text, x, y, max(0.35, side / 170), thickness, colour, box_height=h)
    return out


def _label(out, text, x, y, font_scale, thickness, colour, box_height=0, inside=False):
    """Text on a filled band above the box (below it, or inside its top, where there is no room)."""
    height, width = out.shape[:2]
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
    if tw > width - 4:  # never wider than the image
        font_scale *= (width - 4) / tw
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
    pad = max(2, th // 4)
    if inside:
        ty = th + pad + 2
    elif y - th - base - pad >= 0:
        ty = y - base - pad
    elif y + box_height + th + pad + base < height:
        ty = y + box_height + th + pad
    else:
        ty = y + th + pad
    tx = min(max(x, 0), max(0, width - tw - 2 * pad))
    cv2.rectangle(out, (tx, ty - th - pad), (tx + tw + 2 * pad, ty + base), colour, -1)
    cv2.putText(out, text, (tx + pad, ty), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), thickness, cv2.LINE_AA)


# ----------------------------------------------------------------------------------------------
# Tracking (video)

def smooth(prev, new, alpha=SMOOTH_ALPHA):
    """Exponential moving average: alpha * new + (1 - alpha) * prev; the first value passes through."""
    if prev is None:
        return float(new)
    return float(alpha) * float(new) + (1.0 - float(alpha)) * float(prev)


def match_tracks(track_boxes, detections, threshold=TRACK_IOU):
    """Greedy IoU matching of track boxes to detected boxes.

    Pairs are taken in order of decreasing IoU (ties: lower track, then detection index first), each
    track and detection at most once, only pairs with IoU >= threshold.
    Returns (matches [(track_index, detection_index)], unmatched track indices, unmatched detection
    indices), the lists sorted.
    """
    pairs = []
    for t, tb in enumerate(track_boxes):
        for d, db in enumerate(detections):
            overlap = iou(tb, db)
            if overlap >= threshold:
                pairs.append((-overlap, t, d))
    pairs.sort()
    used_t, used_d, matches = set(), set(), []
    for _, t, d in pairs:
        if t not in used_t and d not in used_d:
            used_t.add(t)
            used_d.add(d)
            matches.append((t, d))
    matches.sort()
    return (matches, [t for t in range(len(track_boxes)) if t not in used_t],
            [d for d in range(len(detections)) if d not in used_d])


class Tracker:
    """Tracks faces across frames: IoU matching, EMA-smoothed age per track, tracks expire after
    MAX_MISSED frames without a detection."""

    def __init__(self, alpha=SMOOTH_ALPHA, threshold=TRACK_IOU, max_missed=MAX_MISSED):
        self.alpha, self.threshold, self.max_missed = alpha, threshold, max_missed
        self.tracks = []   # dicts: id, box, age, missed
        self.created = 0

    def update(self, boxes, ages):
        """Feed one frame's detections; returns the track ids and smoothed ages, one per box."""
        matches, lost, new = match_tracks([t["box"] for t in self.tracks], boxes, self.threshold)
        ids, shown = [None] * len(boxes), [None] * len(boxes)
        for t, d in matches:
            track = self.tracks[t]
            track.update(box=tuple(boxes[d]), age=smooth(track["age"], ages[d], self.alpha), missed=0)
            ids[d], shown[d] = track["id"], track["age"]
        for t in lost:
            self.tracks[t]["missed"] += 1
        for d in new:
            self.created += 1
            track = {"id": self.created, "box": tuple(boxes[d]), "age": smooth(None, ages[d]), "missed": 0}
            self.tracks.append(track)
            ids[d], shown[d] = track["id"], track["age"]
        self.tracks = [t for t in self.tracks if t["missed"] <= self.max_missed]
        return ids, shown


# ----------------------------------------------------------------------------------------------
# File helpers

def _read_image(path):
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path} (pass --image with an existing file)")
    try:
        rgb = load_rgb(path)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read {path} as an image ({type(exc).__name__}); pass a JPEG/PNG/... file") from None
    if min(rgb.shape[:2]) < MIN_IMAGE_SIDE:  # the same rule as for training images
        raise DataError(f"{path} is {rgb.shape[1]}x{rgb.shape[0]} pixels, too small to hold a face "
                        f"(at least {MIN_IMAGE_SIDE} px a side)")
    return rgb


def _prepare_output(path, inputs, kind="image"):
    """Check an output path: not one of the inputs, a writable format, parent folder created."""
    path = Path(path)
    for source in inputs:
        if source is not None and path.resolve() == Path(source).resolve():
            raise DataError(f"--output {path} is the input file; choose another name (the input is never overwritten)")
    if path.is_dir():
        raise DataError(f"--output {path} is a folder; give a file name such as {path / ('annotated' + ('.jpg' if kind == 'image' else '.mp4'))}")
    refuse_inside_data(path.parent, "--output")
    if kind == "image" and not cv2.haveImageWriter(str(path.with_suffix(path.suffix or ".x"))):
        raise DataError(f"--output {path}: unknown image type {path.suffix!r}; use .jpg or .png")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the output folder {path.parent} ({exc.strerror or exc}); choose another --output") from None
    return path


def _write_image(path, rgb):
    path = Path(path)
    ok, data = cv2.imencode(path.suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise DataError(f"cannot encode {path} (unsupported type {path.suffix!r}); use .jpg or .png")
    try:
        atomic_write(path, lambda f: f.write(data.tobytes()))
    except OSError as exc:
        raise DataError(f"cannot write {path} ({exc.strerror or exc}); check the output folder") from None


def _default_output(source, suffix=None):
    source = Path(source)
    return source.with_name(f"{source.stem}_age{suffix or source.suffix or '.jpg'}")


def _fmt_box(box):
    return ",".join(str(int(round(v))) for v in box)


def _labels(ages):
    return [f"Age: {int(round(float(a)))}" for a in ages]


def _save_crops(folder, stem, inputs):
    """Each face's model input (before normalisation) as folder/<stem>_<index>.png, RGB."""
    for k, image in enumerate(inputs):
        _write_image(Path(folder) / f"{stem}_{k}.png", image)


def annotate_one(estimator, path, rgb, output, crops_dir=None):
    """Faces and ages of one photo: annotated copy written, rows of predictions.csv returned."""
    found, inputs, ages = estimator.estimate(rgb)
    if found:
        image = annotate(rgb, [f.box for f in found], _labels(ages))  # drawn after cutting: no box in a chip
    else:
        image = annotate(rgb, [], ["no face found"])
    _write_image(output, image)
    if crops_dir and found:
        _save_crops(crops_dir, Path(path).stem, inputs)
    name = Path(path).name
    if not found:
        print(f"{name}: no face found (nothing estimated; --whole-image if the photo is a face crop)")
        return [{"file": name, "face_index": "", "x": "", "y": "", "w": "", "h": "", "score": "", "detector": "",
                 "age": "", "face_found": "false"}]
    rows = []
    for k, (face, age) in enumerate(zip(found, ages)):
        x, y, w, h = (int(round(v)) for v in face.box)
        print(f"{name}, face {k}, box {_fmt_box(face.box)}, {face.source} score {face.score:.2f}, age {age:.1f}")
        rows.append({"file": name, "face_index": k, "x": x, "y": y, "w": w, "h": h, "score": f"{face.score:.3f}",
                     "detector": face.source, "age": f"{age:.2f}", "face_found": "true"})
    return rows


def _prepare_dir(path, what):
    path = Path(path)
    refuse_inside_data(path, what)
    if path.exists() and not path.is_dir():
        raise DataError(f"{what} {path} is a file; choose a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the output folder {path} ({exc.strerror or exc}); choose another {what}") from None
    return path


def _write_csv(path, rows):
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(text.getvalue().encode("utf-8")))


# ----------------------------------------------------------------------------------------------
# Modes

def run_image(args, estimator):
    rgb = _read_image(args.image)
    output = _prepare_output(args.output or _default_output(args.image), [args.image])
    rows = annotate_one(estimator, args.image, rgb, output, args.save_crops)
    print(f"annotated image -> {output}")
    found = [r for r in rows if r["face_found"] == "true"]
    return {"output": str(output), "boxes": [(r["x"], r["y"], r["w"], r["h"]) for r in found],
            "ages": [float(r["age"]) for r in found], "rows": rows}


def _list_images(folder):
    """(images, other files, names that are not UTF-8) of a folder, sorted."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    odd = [p for p in files if not _utf8_name(p.name)]  # predictions.csv is UTF-8: they could not be listed
    files = [p for p in files if p not in odd]
    return ([p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS],
            [p for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS], odd)


def run_folder(args, estimator):
    in_dir = Path(args.input_dir)
    if not in_dir.is_dir():
        raise DataError(f"input folder not found: {in_dir} (pass --input-dir with an existing folder)")
    if not args.output_dir:
        raise DataError("--input-dir needs --output-dir (where annotated images and predictions.csv go)")
    out_dir = Path(args.output_dir)
    if same_or_inside(out_dir, in_dir):  # the next run (or eda.py) would take the annotated copies as photos
        raise DataError(f"--output-dir {out_dir} is the input folder or inside it; choose a folder outside {in_dir}")
    _prepare_dir(out_dir, "--output-dir")
    images, others, odd = _list_images(in_dir)
    if odd:
        print(f"warning: skipping {len(odd)} file(s) whose names are not UTF-8 (rename them to include them)",
              file=sys.stderr)
    if not images:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {in_dir}")
    start = time.perf_counter()
    rows, skipped = [], []
    for path in images:
        try:
            rgb = _read_image(path)
        except DataError as exc:
            skipped.append(path.name)
            print(f"warning: skipping {path.name}: {str(exc).split('; ')[0].replace(str(path), 'it')}", file=sys.stderr)
            continue
        rows += annotate_one(estimator, path, rgb, out_dir / path.name, args.save_crops)
    csv_path = out_dir / "predictions.csv"
    _write_csv(csv_path, rows)
    seconds = time.perf_counter() - start
    done = len(images) - len(skipped)
    faces = sum(r["face_found"] == "true" for r in rows)
    no_face = sum(r["face_found"] == "false" for r in rows)
    if skipped:
        print(f"warning: skipped {len(skipped)} unreadable file(s): {', '.join(skipped[:5])}"
              + (" ..." if len(skipped) > 5 else ""), file=sys.stderr)
    if others:
        print(f"ignored {len(others)} file(s) without an image extension")
    print(f"{done} images, {faces} faces, {no_face} images without a face, {len(skipped) + len(odd)} skipped; "
          f"{done / max(seconds, 1e-9):.1f} images/s -> {csv_path}")
    return {"images": done, "faces": faces, "no_face": no_face, "skipped": len(skipped) + len(odd), "csv": str(csv_path),
            "seconds": seconds}


def run_video(args, estimator):
    source = Path(args.video)
    if not source.is_file():
        raise DataError(f"video not found: {source} (pass --video with an existing file)")
    if not 0 < args.alpha <= 1:
        raise DataError(f"--alpha must be in (0, 1], got {args.alpha}")
    output = _prepare_output(args.output or _default_output(source, ".mp4"), [source], kind="video")
    cap = cv2.VideoCapture(str(source))
    if not cap.isOpened():
        raise DataError(f"cannot open {source} as a video; pass an .mp4/.avi file OpenCV can decode")
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and np.isfinite(fps) and fps > 0 else 25.0
    tmp = output.with_name(f".{output.stem}.tmp{output.suffix or '.mp4'}")
    writer = None
    tracker = Tracker(alpha=args.alpha)
    frames = faces = 0
    start = time.perf_counter()
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            height, width = rgb.shape[:2]
            if writer is None:
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
                if not writer.isOpened():
                    raise DataError(f"cannot write the video {output}; use an .mp4 name in a writable folder")
            found, _, ages = estimator.estimate(rgb)  # a frame without a face stays unannotated
            boxes = [f.box for f in found]
            _, shown = tracker.update(boxes, ages)
            writer.write(cv2.cvtColor(annotate(rgb, boxes, _labels(shown)), cv2.COLOR_RGB2BGR))
            frames += 1
            faces += len(boxes)
    except BaseException:
        if writer is not None:
            writer.release()
            writer = None
        tmp.unlink(missing_ok=True)
        raise
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    if frames == 0:
        tmp.unlink(missing_ok=True)
        raise DataError(f"no frames could be read from {source}; is it a video OpenCV can decode?")
    os.replace(tmp, output)
    seconds = time.perf_counter() - start
    print(f"{frames} frames, {faces} faces, {tracker.created} tracks, {frames / max(seconds, 1e-9):.1f} frames/s "
          f"(age smoothed per track, EMA alpha {args.alpha}) -> {output}")
    return {"frames": frames, "faces": faces, "tracks": tracker.created, "output": str(output)}


def refuse_inside_data(path, what):
    folder = labelled_folder_above(path)
    if folder is not None:
        raise DataError(f"{what} {path} is inside {folder}, which holds a labelled face data set: the next "
                        "eda.py run would take the annotated copies as faces; write outside it")


def main(args):
    configure_threads(args.threads)
    if args.output_dir and not args.input_dir:
        raise DataError("--output-dir goes with --input-dir; use --output with --image or --video")
    if args.output and args.input_dir:
        raise DataError("--input-dir writes into --output-dir; --output is for --image and --video")
    if args.save_crops:
        if args.video:
            raise DataError("--save-crops is for --image and --input-dir")
        _prepare_dir(args.save_crops, "--save-crops")
    estimator = AgeEstimator(args.model, args.detector, args.whole_image, args.threads)
    print(estimator.describe())
    if args.image:
        return run_image(args, estimator)
    if args.input_dir:
        return run_folder(args, estimator)
    return run_video(args, estimator)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
