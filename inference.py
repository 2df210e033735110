"""Estimate the age of every face in an image, a folder of images, a video or a camera.

    python inference.py --image photo.jpg                       # the shipped model (models/)
    python inference.py --model RUN/model.onnx --input-dir photos/ [--json] [--save-crops crops/]
    python inference.py --video clip.mp4 --output-dir annotated/   # or --video 0: camera 0 (Ctrl-C stops)
    python inference.py --input-dir photos/ --json - | jq '.faces[].age'   # JSON lines on stdout, rest on stderr

Where the outputs go (one rule for --image, --input-dir and --video):
  * everything goes into one output folder: --output-dir, else ./inference_outputs/<input name> in the
    CURRENT folder (photo.jpg -> ./inference_outputs/photo, photos/ -> ./inference_outputs/photos,
    --video 0 -> ./inference_outputs/camera0), never beside the input;
  * in it: <name>_age.<ext> per image (the annotated copy; .mp4 for a video), predictions.csv (images),
    predictions.json with --json; --output FILE (--image/--video) names the annotated file itself, and
    the CSV (images) and JSON go beside it: an explicit file is the user's choice of place (it may not be the input);
    two images of --input-dir with one stem (photo.jpg, photo.png) name their outputs by their whole name
    (then ~2, ~3 where that is taken too);
  * --output-dir and --save-crops are never the input's folder or inside it (for --image and --video that
    is the file's folder); the default folder may be (run from the photo's folder), as --input-dir never
    reads it; no output goes inside a labelled face data set: such a run stops with one line of advice
    before anything is written;
  * --input-dir never reads this tool's outputs: files named *_age.<image extension> are skipped (and
    counted), and a folder inside an inference_outputs folder is refused as input;
  * a re-run replaces its input's predictions; one of a folder stopped early (Ctrl-C, a closed stdout, a failing
    model, a full disk) keeps the earlier run's of the images it did not reach, as their annotated copies stay;
    a run without --json takes the replaced images out of an earlier predictions.json (it would disagree with
    the CSV).

Each face goes through faces.FacePipeline: detected (--detector; default the detector the model's training
chips were cut after, where eda.py --align recorded one, else the HOG/Haar cascade), its
landmarks found, and cut out exactly as the model's training faces were cut (the crop recipe is in the
model's metadata: UTKFace-trained models get UTKFace's own dlib chip). Faces whose box is under
DEFAULT_MIN_FACE px are dropped and counted (--min-face). A chip darker than the faces the model learnt from is
brightened to DEFAULT_DARK_FLOOR (--dark-floor; the one step training has no need of). The chip goes through
custom_dataset.preprocess_rgb, the very function training used, and all faces of an image are
predicted in one forward pass. A photo without a face says so; it is never guessed from the whole
photo unless --whole-image says the inputs are face crops already. A JPEG over 100 Mpx is read at 1/2 to 1/8
of its size (its annotated copy too; boxes are given in the file's full-size pixels, as every box is, in the
photo turned upright by its EXIF orientation); a progressive one over 200 Mpx,
and any other image over 100 Mpx, is refused. Video faces are tracked across
frames by box overlap and their age is smoothed, so the number does not jitter. An age at the edge of
the model's training ages or beyond is flagged (outside_training_range; "?" and orange on the image).
Models that carry an interval calibration (train.py writes one) give each age an interval at
--interval-level (age_low, age_high; drawn as "Age: 34 (29-40)"; in video it follows the smoothed age).

model.onnx (ONNX Runtime runs no Python code) is the format for models from elsewhere; model.jit is
TorchScript, a program: it is loaded only with --trust-model (or where it is the shipped models/ file).
"""
from __future__ import annotations

import contextlib
import csv
import errno
import glob
import heapq
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cli import ArgumentParser, ReaderGone, run_cli  # first: cli._missing_package_hook
import cv2
import numpy as np
from PIL import Image

import faces as face_pipeline
from checkpoints import (DEVICES, SHIPPED_MODELS, SHIPPED_NAME, ModelFailed, check_metadata, is_onnx, read_export,
                         shown)
from custom_dataset import (ANNOTATED_SUFFIX, EXIF_HEIGHT, EXIF_IFD, EXIF_ORIENTATION, EXIF_WIDTH, IMAGE_EXTENSIONS,
                            MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE, PREPROCESS_VERSION,
                            DataError, _has_rotation, _utf8_name, is_annotated_copy, labelled_folder_above,
                            lift_dark, load_rgb_shrunk, parse_zooms, plain_number, preprocess_rgb, remove_orphans,
                            to_rgb, write_csv, write_image, zoom_batch)
from faces import DETECTORS, FacePipeline, Face, describe_crop, iou
from functions import (INTERVAL_LEVEL, apply_age_map, atomic_write, interval_bands, keep_freed_memory, predict_interval,
                       same_file, same_or_inside)
DEFAULT_MODEL = SHIPPED_MODELS / f"{SHIPPED_NAME}.onnx"  # the shipped model (models/README.md)

# faces with a box under this many pixels (of the file) are dropped and counted, not estimated: the age error of
# 18-28 px boxes is 1.4-2.3 times that of large faces (bench_detection.py --size-light; RESULTS.md, "How small and
# how dark a face can be"); 0 keeps all
DEFAULT_MIN_FACE = 32
# a face less exposed than this (custom_dataset.exposure_luma: the 95th percentile of its luma, 0-255) is brightened
# to it before the model sees it (custom_dataset.lift_dark): less than 99% of UTKFace's faces (1st percentile of its
# files: 117.4, bench_detection.py --size-light), so nearly all the faces a UTKFace model learnt from pass unchanged;
# a model's metadata "dark_floor" (train.py measures its own faces' floor) overrides it, --dark-floor 0 turns it off
DEFAULT_DARK_FLOOR = 117.0


def is_luma(value) -> bool:
    """A dark floor inference.py can use: a plain number from 0 (off) to under 255."""
    return plain_number(value) and 0 <= value < 255


FORWARD_BATCH = 256  # images per forward call: every test-time view of many faces at once would fill memory

# Outputs (the rule is in the module docstring)
OUTPUT_ROOT = "inference_outputs"   # default output folder: ./inference_outputs/<input name>
CSV_FIELDS = ["file", "face_index", "x", "y", "w", "h", "score", "detector", "age", "age_low", "age_high",
              "outside_training_range", "face_found", "faces_dropped"]  # dropped: by --min-face / --min-score

# Out-of-range rule. A prediction is flagged outside_training_range when it lies within RANGE_MARGIN years
# of either end of the model's training ages (metadata min_age/max_age) or beyond them:
#     age <= min_age + 0.5  or  age >= max_age - 0.5
# Beyond: the model never saw such an age. At the ends: a "distribution" head cannot predict past its
# age grid, and any head is pulled towards the ages it learnt, so a prediction that rounds to an end age
# may stand for any age past that end. Models without a recorded range get None (unknown), not False.
RANGE_MARGIN = 0.5
RANGE_COLOUR = (255, 150, 0)        # orange box and label, and "?" after the age, for a flagged face
FACE_COLOUR = (40, 220, 40)

# Video: tracks and smoothing
TRACK_IOU = 0.3           # a detection continues a track when their boxes overlap at least this much
SMOOTH_ALPHA = 0.3        # exponential moving average weight of the newest frame: shown = 0.3 new + 0.7
                          # previous, i.e. the displayed age follows a change with a time constant of about
                          # three frames while frame-to-frame noise is damped to ~40 % of its size
MAX_MISSED = 10           # a track survives this many frames without a matching detection


def get_args_parser():
    p = ArgumentParser(description=__doc__)
    p.add_argument("--model", default=str(DEFAULT_MODEL),
                   help="model.onnx (or a model.jit with --trust-model) written by train.py (default: the shipped "
                        "%(default)s)")
    p.add_argument("--trust-model", action="store_true",
                   help="load a --model .jit: TorchScript runs code from the file, so only one you made or trust")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="one image to annotate")
    src.add_argument("--input-dir", help="folder of images to annotate (not recursive; skips *_age.* outputs)")
    src.add_argument("--video", help="video file to annotate frame by frame, or a camera number such as 0")
    p.add_argument("--output-dir", help=f"folder for every output (default: ./{OUTPUT_ROOT}/<input name> in the "
                   "current folder; never the input's folder or inside it)")
    p.add_argument("--output", help="--image/--video: the annotated file itself, an explicit override (default: "
                   f"OUTPUT_DIR/<input name>{ANNOTATED_SUFFIX}.<ext>); predictions.csv (--image) and predictions.json "
                   "(--json) go beside it")
    p.add_argument("--json", nargs="?", const=True, metavar="-",
                   help="also write predictions.json (one object per image) into the output folder; "
                        "'--json -' prints them as JSON lines on stdout instead, every message on stderr")
    p.add_argument("--min-face", type=int, default=None, metavar="PIXELS",
                   help="drop faces whose box is narrower or shorter than PIXELS (of the file, also where a JPEG "
                        "over 100 Mpx is read smaller), counted in the summary, before overlapping boxes are "
                        "merged (a dropped box never hides a face); the default is where the age error of smaller "
                        f"faces rises by half or more (RESULTS.md); 0 keeps every face (default: {DEFAULT_MIN_FACE}, none with "
                        "--whole-image)")
    p.add_argument("--min-score", type=float, default=None,
                   help="drop faces whose detector score is below this (scores are in the CSV; default: off)")
    p.add_argument("--detector", choices=DETECTORS, default=None,
                   help="face detector (RESULTS.md, 'Face detection', compares them); default: the one the model's "
                        f"training chips were cut with where eda.py --align recorded it, else "
                        f"{face_pipeline.DEFAULT_DETECTOR}")
    p.add_argument("--dark-floor", type=float, default=None, metavar="LUMA",
                   help="brighten a face whose exposure (95th percentile of its luma, 0-255) is under LUMA to it "
                        "before the model sees it: a face "
                        "in a dim photo is darker than any the model learnt from (RESULTS.md, 'How small and how dark "
                        "a face can be'); 0 = off (default: the model's metadata dark_floor, darker than 99%% of its "
                        f"training faces; for a model exported before train.py measured it {DEFAULT_DARK_FLOOR:g}, "
                        "UTKFace's)")
    p.add_argument("--interval-level", type=float, default=None,
                   help="coverage of the age interval (age_low, age_high) of models that carry a calibration "
                        f"(default: {INTERVAL_LEVEL:g})")
    p.add_argument("--whole-image", "--no-detect", dest="whole_image", action="store_true",
                   help="the inputs are face crops already: no detection, the whole image is the face")
    p.add_argument("--save-crops", metavar="DIR",
                   help="write each face's model input as DIR/<image stem>_<face index>.png (RGB, before normalisation; "
                        "an earlier run's files there are left as they are: a fresh DIR per run)")
    p.add_argument("--device", choices=DEVICES, default="cpu",
                   help="where the model runs: cuda needs onnxruntime-gpu (ONNX) or a CUDA torch (TorchScript)")
    p.add_argument("--alpha", type=float, default=SMOOTH_ALPHA, help="--video: weight of the newest age (EMA)")
    p.add_argument("--max-frames", type=int, default=0,
                   help="--video: stop after this many frames; 0 = the whole video, a camera runs until Ctrl-C")
    p.add_argument("--no-progress", action="store_true", help="--video: no progress bar on stderr")
    p.add_argument("--threads", type=int, default=None,
                   help="torch / ONNX Runtime threads (default: all cores); face detection (--detector auto) "
                        "runs HOG and Haar side by side in two threads of its own")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


# ----------------------------------------------------------------------------------------------
# Model

def training_range(metadata) -> tuple[float, float] | None:
    """(min_age, max_age) the model was trained on, from its metadata; None where not recorded."""
    low, high = metadata.get("min_age"), metadata.get("max_age")
    return (float(low), float(high)) if plain_number(low) and plain_number(high) and low <= high else None


def outside_training_range(age, age_range, margin=RANGE_MARGIN) -> bool | None:
    """The rule above RANGE_MARGIN: True within `margin` years of either end of the training ages or
    beyond them; None when the model does not record its range."""
    if age_range is None:
        return None
    return bool(age <= age_range[0] + margin or age >= age_range[1] - margin)


class AgeEstimator:
    """Load a model once, then estimate ages of faces in photos.

        from inference import AgeEstimator
        estimator = AgeEstimator("models/age_simplecnn_utkface.onnx")
        for face in estimator.predict("photo.jpg"):
            print(face["box"], face["age"], face["outside_training_range"])

    The model file carries its preprocessing and crop recipe; detection, alignment and
    preprocessing are the ones training used. min_face (pixels; None: DEFAULT_MIN_FACE with a detector, none
    with whole_image, whose input is a crop of any size; 0: none) and min_score drop small or doubtful
    detections before the model sees them; dark_floor (exposure_luma; None: the model's metadata "dark_floor", else
    DEFAULT_DARK_FLOOR; 0: off) brightens a dim face first; device is "cpu" or "cuda".
    """

    def __init__(self, model=DEFAULT_MODEL, detector=None, whole_image=False,
                 threads=None, *, min_face=None, min_score=None, device="cpu", interval_level=INTERVAL_LEVEL,
                 trust_code=False, dark_floor=None):
        path = Path(model)
        if not path.is_file():
            hint = " (the shipped model is made by models/README.md's command)" if path == DEFAULT_MODEL else ""
            raise DataError(f"model file not found: {path}{hint}; pass --model RUN/model.onnx written by train.py")
        if min_face is None:
            min_face = 0 if whole_image else DEFAULT_MIN_FACE
        if min_face < 0:
            raise DataError(f"--min-face must be 0 (off) or a number of pixels, got {min_face}")
        if min_score is not None and not np.isfinite(min_score):
            raise DataError(f"--min-score must be a finite number, got {min_score}")
        if not 0 < interval_level < 1:
            raise DataError(f"--interval-level must be between 0 and 1 (e.g. 0.9), got {interval_level}")
        if dark_floor is not None and not is_luma(dark_floor):
            raise DataError(f"--dark-floor must be a luma from 0 (off) to under 255, got {dark_floor!r}")
        self._forward, self.metadata = read_export(path, threads, device, trust_code)
        self.path, self.device = path, device
        self.cfg, self.crop = check_metadata(path, self.metadata)
        try:
            self.tta_zoom = parse_zooms(self.metadata.get("tta_zoom"))
        except ValueError as exc:
            raise DataError(f"{path}: its metadata's tta_zoom is unusable ({exc}); re-export the model with "
                            "train.py") from None
        self.age_range = training_range(self.metadata)
        self.interval, self.interval_level = self.metadata.get("interval"), interval_level
        # the half widths depend only on the calibration and the level: computed once, not per face
        self._interval_bands = None if self.interval is None else interval_bands(self.interval, interval_level)
        self.min_face, self.min_score = int(min_face), min_score
        recorded = self.metadata.get("dark_floor")
        if dark_floor is None and recorded is not None and not is_luma(recorded):
            raise DataError(f"{path}: its metadata's dark_floor ({recorded!r}) is no luma from 0 to under 255; "
                            "pass --dark-floor or re-export the model with train.py")
        self.dark_floor = float(dark_floor if dark_floor is not None else
                                DEFAULT_DARK_FLOOR if recorded is None else recorded)
        self.whole_image = whole_image
        cut_by = self.crop.get("detector")  # the detector the training chips were cut after (eda.py --align)
        self.detector_note = "" if whole_image or detector in (None, cut_by) or cut_by is None else (
            f"note: the model's training chips were cut after the {cut_by} detector's boxes, and its landmarks "
            f"start from them: --detector {detector} may cut these faces a little otherwise")
        self.pipeline = None if whole_image else FacePipeline(self.crop, detector or cut_by or
                                                              face_pipeline.DEFAULT_DETECTOR)
        made = self.metadata.get("preprocess_version")
        self.preprocess_note = "" if made in (None, PREPROCESS_VERSION) else (
            f"note: {path.name} learnt from pixels of preprocessing version {shown(repr(made), 20)}, and this code "
            f"makes version {PREPROCESS_VERSION} (custom_dataset.PREPROCESS_VERSION says what changed): a photo may "
            "reach it a little otherwise than its training faces did; train it again to match")

    def describe(self) -> str:
        """What is loaded, in two lines: model and face recipe; the training ages and data."""
        how = "whole image (--whole-image)" if self.whole_image else \
            f"{self.pipeline.detector} detector, {describe_crop(self.crop)}"
        ages = "training ages: not recorded in this model" if self.age_range is None else \
            f"training ages {self.age_range[0]:g}-{self.age_range[1]:g}"
        data = self.metadata.get("data")
        data = f"training data: {shown(data)}" if isinstance(data, str) and data.strip() else \
            "training data: not recorded in this model"
        interval = "no age interval (the model carries no calibration)" if self.interval is None else \
            f"age interval at {self.interval_level:.0%} ({shown(self.interval['method'])})"
        if self.metadata.get("age_map"):
            interval += f"; ages corrected by an {shown(self.metadata['age_map'].get('method', 'age map'))}"
        views = (1 + len(self.tta_zoom)) * (2 if self.metadata.get("tta_flip") else 1)
        averaged = "" if views == 1 else f", mean of {views} views per face (" + " and ".join(
            (["mirror"] if self.metadata.get("tta_flip") else [])
            + ([f"centred {', '.join(f'{z:.0%}' for z in self.tta_zoom)} crops"] if self.tta_zoom else [])) + ")"
        lift = f"; faces exposed under luma {self.dark_floor:g} brightened to it" if self.dark_floor else ""
        return (f"model {self.path.name}: {shown(self.metadata.get('model_name', '?'))}, {self.cfg.image_size} px"
                f"{averaged}, {self.device}; faces: {how}{lift}\n{ages}; {data}\n{interval}")

    def intervals(self, ages) -> list:
        """(low, high) per age at interval_level from the model's calibration; None without one."""
        if self.interval is None:
            return [None] * len(ages)
        low, high = predict_interval(ages, self.interval, self.interval_level, self._interval_bands)
        return list(zip(low.tolist(), high.tolist()))

    def model_inputs(self, chips) -> np.ndarray:
        """N x S x S x 3 uint8: each chip brightened where it is darker than dark_floor (lift_dark: darker than
        the faces the model learnt from), then through preprocess_rgb, as training preprocessed its faces."""
        return np.stack([preprocess_rgb(lift_dark(np.ascontiguousarray(c), self.dark_floor), self.cfg) for c in chips])

    def predict_inputs(self, inputs) -> np.ndarray:
        """Ages (float64) of N x S x S x 3 uint8 model inputs: the mean over the model's test-time views
        (its zooms, each mirrored too with its flip averaging: the views functions.tta_views makes in
        training), through the model's age map where it has one. The views of as many faces as fit in
        FORWARD_BATCH images (at least one face) go through one forward pass as a batch (cheaper than a
        pass per view); faces are taken a slice at a time so that a large set of faces holds neither
        every view's pixels nor every view's activations at once."""
        if len(inputs) == 0:
            return np.zeros(0, dtype=np.float64)
        n_views = (1 + len(self.tta_zoom)) * (2 if self.metadata.get("tta_flip") else 1)
        faces_per_call = max(1, FORWARD_BATCH // n_views)
        ages = np.concatenate([self._mean_over_views(inputs[i:i + faces_per_call])
                               for i in range(0, len(inputs), faces_per_call)])
        return apply_age_map(ages, self.metadata.get("age_map"))

    def _mean_over_views(self, inputs) -> np.ndarray:
        """Raw ages (float64) of a few N x S x S x 3 uint8 inputs: one forward pass over all their views."""
        x = np.ascontiguousarray(inputs.transpose(0, 3, 1, 2), dtype=np.float32)
        views = [x] + [zoom_batch(x, z) for z in self.tta_zoom]
        if self.metadata.get("tta_flip"):
            views = [v for view in views for v in (view, view[..., ::-1])]
        batch = np.ascontiguousarray(np.concatenate(views)) if len(views) > 1 else x
        out = np.asarray(self._forward(batch), dtype=np.float64)
        if out.size % len(batch) or out.size // len(batch) != 1:  # the model's fault: a folder run stops
            raise ModelFailed(f"{self.path} returns {out.size / len(batch):g} numbers per image, not one age; "
                              "pass a model exported by train.py")
        out = out.reshape(len(batch), 1)
        if not np.isfinite(out).all():  # no "Age: nan" drawn, no NaN in the JSON
            raise ModelFailed(f"{self.path} returned {out[~np.isfinite(out)][0]} as an age; the model is broken or "
                            "not one exported by train.py")
        return out[:, 0].reshape(len(views), len(x)).mean(axis=0)

    def drop_reason(self, face: Face, shrink=1) -> str | None:
        """"min_face" or "min_score" where a filter drops the face, else None. The detector applies it before
        it removes duplicate boxes (FacePipeline.detect_filtered), to the box as reported (inside the photo),
        in the file's pixels (shrink: the factor a huge JPEG was read smaller by)."""
        if self.min_face and min(face.box[2], face.box[3]) * shrink < self.min_face:
            return "min_face"
        if self.min_score is not None and face.score < self.min_score:
            return "min_score"
        return None

    def detect(self, rgb, shrink=1) -> tuple[list[Face], list[tuple[Face, str]]]:
        """(kept faces with their chips, largest first; [(dropped face, reason)]) of one RGB image (a file read
        at 1/shrink of its size). Dropped faces are never cut out nor shown to the model."""
        rgb = _array_rgb(rgb)  # a caller's gray, RGBA or mirrored (non-contiguous) frame: the chips must be RGB too
        if self.whole_image:
            height, width = rgb.shape[:2]
            face = Face((0, 0, width, height), 1.0, "whole_image", chip=rgb)
            reason = self.drop_reason(face, shrink)
            return ([], [(face, reason)]) if reason else ([face], [])
        found, dropped = self.pipeline.detect_filtered(rgb, lambda face: self.drop_reason(face, shrink),
                                                       lambda face: self.drop_reason(face, shrink) == "min_face")
        found.sort(key=lambda f: -f.box[2] * f.box[3])
        dropped.sort(key=lambda d: -d[0].box[2] * d[0].box[3])
        return [self.pipeline.cut(rgb, face) for face in found], dropped

    def find_faces(self, rgb) -> list[Face]:
        """Kept faces of one HxWx3 RGB image with their chips; the whole image is one face with --whole-image."""
        return self.detect(rgb)[0]

    def estimate(self, rgb):
        """(kept faces, model inputs, ages) of one RGB image; all its faces in one forward pass."""
        found = self.find_faces(rgb)
        inputs = self.model_inputs([f.chip for f in found]) if found else np.zeros((0,), np.uint8)
        return found, inputs, self.predict_inputs(inputs)

    def analyse(self, rgb, name="", shrink=1) -> ImageResult:
        """Everything about one RGB image, built once: used by predict, the CSV, the JSON and the drawing.
        shrink: the factor a huge JPEG was decoded smaller by (load_rgb_shrunk), for boxes in the file's pixels."""
        kept, dropped = self.detect(rgb, shrink)
        inputs = self.model_inputs([f.chip for f in kept]) if kept else np.zeros((0,), np.uint8)
        ages = self.predict_inputs(inputs)
        faces = [self.face_record(f, a, i) for f, a, i in zip(kept, ages, self.intervals(ages))]
        return ImageResult(file=name, faces=faces, inputs=inputs, shrink=shrink,
                           dropped=[{**_box_fields(f), "reason": r} for f, r in dropped])

    def face_record(self, face: Face, age, interval=None) -> dict:
        """One face's result: box (x, y, w, h, whole pixels), score, detector, age, age_low and age_high
        (where the model carries an interval calibration), outside_training_range."""
        record = {**_box_fields(face), "age": float(age),
                  "outside_training_range": outside_training_range(float(age), self.age_range)}
        if interval is not None:  # from intervals(): none is made up for a model without a calibration
            record["age_low"], record["age_high"] = interval
        return record

    def predict(self, images):
        """Faces and ages of one image or a list of them: file paths, PIL images or HxWx3 RGB arrays.
        Returns, per image, a list of {"box", "score", "detector", "age", "outside_training_range"}
        (one image: that list)."""
        single = not isinstance(images, (list, tuple))
        results = []
        for image in [images] if single else images:
            rgb, shrink = _rgb_and_shrink(image)
            results.append(self.analyse(rgb, shrink=shrink).file_faces())
        return results[0] if single else results


def _box_fields(face: Face) -> dict:
    return {"box": tuple(int(round(v)) for v in face.box), "score": float(face.score), "detector": face.source}


@dataclass
class ImageResult:
    """One image's (or video frame's) faces, built once by AgeEstimator.analyse and reused by the printed
    lines, predictions.csv, predictions.json and the drawing."""
    file: str
    faces: list = field(default_factory=list)     # face_record dicts, largest face first, boxes in rgb's pixels
    dropped: list = field(default_factory=list)   # {"box", "score", "detector", "reason"} of filtered faces
    inputs: np.ndarray | None = None              # the kept faces' model inputs (--save-crops)
    extra: dict = field(default_factory=dict)     # per-frame fields of a video: frame, time
    shrink: int = 1                               # a huge JPEG decoded at 1/shrink of its size (load_rgb_shrunk)

    def file_faces(self, faces=None) -> list[dict]:
        """faces (the kept ones by default) with their boxes in the file's pixels: what the CSV, the JSON, the
        printed lines and predict() report; the drawing is made on the decoded pixels."""
        return [{**f, "box": tuple(v * self.shrink for v in f["box"])}
                for f in (self.faces if faces is None else faces)]

    @property
    def face_found(self) -> bool:
        return bool(self.faces)

    def outside(self) -> int:
        return sum(bool(f["outside_training_range"]) for f in self.faces)

    def csv_rows(self) -> list[dict]:
        # faces_dropped on every row: "no face" and "faces, all too small or unsure" read apart
        if not self.faces:
            return [{**{k: "" for k in CSV_FIELDS}, "file": self.file, "face_found": "false",
                     "faces_dropped": len(self.dropped)}]
        return [{"file": self.file, "face_index": k, **dict(zip("xywh", f["box"])), "score": f"{f['score']:.3f}",
                 "detector": f["detector"], "age": f"{f['age']:.2f}",
                 **{k: f"{f[k]:.2f}" if k in f and np.isfinite(f[k]) else "" for k in ("age_low", "age_high")},
                 "outside_training_range": _csv_flag(f["outside_training_range"]), "face_found": "true",
                 "faces_dropped": len(self.dropped)}
                for k, f in enumerate(self.file_faces())]

    def to_json(self) -> dict:
        faces = [{**f, "box": list(f["box"]), "score": round(f["score"], 4), "age": round(f["age"], 2),
                  **{k: round(f[k], 2) if np.isfinite(f[k]) else None for k in ("age_low", "age_high") if k in f}}
                 for f in self.file_faces()]
        dropped = [{**f, "box": list(f["box"]), "score": round(f["score"], 4)} for f in self.file_faces(self.dropped)]
        return {"file": self.file, **self.extra, "face_found": self.face_found, "faces": faces, "dropped": dropped}

    def lines(self) -> list[str]:
        """What is printed for the image."""
        if not self.faces:
            why = f" ({len(self.dropped)} dropped by --min-face/--min-score)" if self.dropped else ""
            return [f"{self.file}: no face found{why} (nothing estimated; --whole-image if the photo is a face crop)"]
        return [f"{self.file}, face {k}, box {','.join(map(str, f['box']))}, {f['detector']} score {f['score']:.2f}, "
                f"age {f['age']:.1f}" + (_interval_text(f["age_low"], f["age_high"], "{:.1f}") if "age_low" in f else "")
                + (" (outside the training ages)" if f["outside_training_range"] else "")
                for k, f in enumerate(self.file_faces())]

    def draw(self, rgb, ages=None, intervals=None, flags=None) -> np.ndarray:
        """Annotated copy of rgb (ages, intervals, flags: what to show instead of the raw ones, e.g. smoothed)."""
        if not self.faces:  # faces the filters left out are said, as the printed line says them
            return annotate(rgb, [], [f"{len(self.dropped)} face(s) left out by --min-face/--min-score"
                                      if self.dropped else "no face found"])
        ages = [f["age"] for f in self.faces] if ages is None else ages
        if intervals is None:
            intervals = [(f["age_low"], f["age_high"]) if "age_low" in f else None for f in self.faces]
        flags = [f["outside_training_range"] for f in self.faces] if flags is None else flags
        return annotate(rgb, [f["box"] for f in self.faces], _labels(ages, flags, intervals), flags)


def _csv_flag(value) -> str:
    return "" if value is None else str(bool(value)).lower()


def as_rgb(image) -> np.ndarray:
    """HxWx3 uint8 RGB from a path, a PIL image or an array (gray and RGBA are converted), at least
    MIN_IMAGE_SIDE pixels a side as files must be."""
    return _rgb_and_shrink(image)[0]


def _rgb_and_shrink(image) -> tuple[np.ndarray, int]:
    """as_rgb's array and the factor a huge JPEG file was decoded smaller by (1 for everything else)."""
    if isinstance(image, (str, os.PathLike)):
        return _read_image(image)
    return big_enough(_array_rgb(image), "an image array"), 1


def without_stale_orientation(image):
    """A PIL image a caller turned by hand (Image.open(p).rotate(-90, expand=True)) keeps the file's EXIF
    Orientation, and to_rgb would turn it a second time. An image as decoded (its `format` set) is left as it is;
    a derived one whose shape matches the EXIF pixel size with width and height swapped, and not as stored, was
    turned already: a copy without the tag. An image still as stored (Image.open(p).convert("RGB")) keeps it."""
    if getattr(image, "format", None) or not _has_rotation(image):
        return image
    try:
        stored = image.getexif().get_ifd(EXIF_IFD)
        size = int(stored.get(EXIF_WIDTH, 0)), int(stored.get(EXIF_HEIGHT, 0))
    except Exception:  # a damaged EXIF block: to_rgb's own rule decides
        return image
    width, height = image.size
    if min(size) <= 0 or size[0] == size[1]:
        return image
    # the aspect ratio, not the size: the caller may also have shrunk it
    turned = abs(width / height - size[1] / size[0]) < 0.02 * size[1] / size[0]
    as_stored = abs(width / height - size[0] / size[1]) < 0.02 * size[0] / size[1]
    if not turned or as_stored:
        return image
    image = image.copy()
    tags = image.getexif()
    del tags[EXIF_ORIENTATION]
    image.info["exif"] = tags.tobytes()
    return image


def big_enough(rgb, name) -> np.ndarray:
    """rgb, or DataError where it is under MIN_IMAGE_SIDE a side: the rule training images meet too."""
    if min(rgb.shape[:2]) < MIN_IMAGE_SIDE:
        raise DataError(f"{name} is {rgb.shape[1]}x{rgb.shape[0]} pixels, too small to hold a face "
                        f"(at least {MIN_IMAGE_SIDE} px a side)")
    return rgb


def _array_rgb(image) -> np.ndarray:
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL: EXIF rotation, alpha, 16 bit as for files
        return np.asarray(to_rgb(without_stale_orientation(image)))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise DataError(f"images must be uint8 arrays, got {array.dtype}")
    if array.ndim == 2:
        return face_pipeline.three_channels(array)
    if array.ndim == 3 and array.shape[2] == 4:  # transparent pixels become black, as in files
        return np.asarray(to_rgb(Image.fromarray(np.ascontiguousarray(array), "RGBA")))
    if array.ndim == 3 and array.shape[2] == 3:
        return np.ascontiguousarray(array)
    raise DataError(f"an image array must be HxW or HxWx3 (RGB), got shape {array.shape}")


# ----------------------------------------------------------------------------------------------
# Drawing

def annotate(rgb, boxes, labels, flags=None):
    """Copy of rgb with each box and its label drawn, line and text sized by the box so that they
    read on a 300 px thumbnail and a 6000 px photo alike (the original is left untouched); boxes
    whose flag is true (outside the training ages) in orange. With no box, labels[0] (if any) is
    written across the top of the image."""
    out = np.ascontiguousarray(rgb).copy()
    height, width = out.shape[:2]
    if not boxes:
        if labels:
            side = min(height, width)
            _label(out, labels[0], 0, 0, max(0.4, side / 500), max(1, round(side / 250)), (230, 60, 60), inside=True)
        return out
    drawn = []
    for box, flag in zip(boxes, flags or [False] * len(boxes)):
        x, y, w, h = (int(round(v)) for v in box)
        thickness, colour = max(1, round(max(w, h) / 60)), RANGE_COLOUR if flag else FACE_COLOUR
        cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), colour, thickness)
        drawn.append((x, y, w, h, thickness, colour))
    placed = []  # the label bands drawn so far: in a group photo a wide label would cover its neighbour's
    for (x, y, w, h, thickness, colour), text in zip(drawn, labels):  # after every box: none covers a label
        placed.append(_label(out, text, x, y, max(0.35, max(w, h) / 170), thickness, colour, box_height=h,
                             avoid=placed))
    return out


def _label(out, text, x, y, font_scale, thickness, colour, box_height=0, inside=False, avoid=()):
    """Text on a filled band above the box (below it, or inside its top, where there is no room), moved up or
    down by band heights off the bands in avoid (x0, y0, x1, y1) where it can be; its band returned."""
    height, width = out.shape[:2]
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
    if tw > width - 4:  # never wider than the image; the strokes thinner with the letters, or their loops close
        ratio = (width - 4) / tw
        font_scale, thickness = font_scale * ratio, max(1, round(thickness * ratio))
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
    band = th + pad + base
    inside_image = [t for t in (ty + k * sign * band for k in range(1, 6) for sign in (-1, 1))
                    if t - th - pad >= 0 and t + base <= height]
    for candidate in [ty, *inside_image]:
        if not any(_overlap((tx, candidate - th - pad, tx + tw + 2 * pad, candidate + base), other) for other in avoid):
            ty = candidate
            break
    cv2.rectangle(out, (tx, ty - th - pad), (tx + tw + 2 * pad, ty + base), colour, -1)
    cv2.putText(out, text, (tx + pad, ty), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return tx, ty - th - pad, tx + tw + 2 * pad, ty + base


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]



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
# Where outputs go (the rule in the module docstring)

@dataclass
class Outputs:
    folder: Path             # predictions.csv / predictions.json (and, for --input-dir, the annotated copies)
    annotated: Path | None   # --image / --video: the annotated file
    what: str                # how the user named the folder, for messages


def is_camera(video) -> bool:
    """--video 0, 1, ...: a camera number (unless a file of that name exists)."""
    return video is not None and str(video).isdigit() and not Path(video).exists()


def input_name(args) -> str:
    if args.input_dir:
        return Path(args.input_dir).resolve().name or "input"
    if args.video and is_camera(args.video):
        return f"camera{int(args.video)}"
    return Path(args.image or args.video).stem


def input_folder(args) -> Path | None:
    """The folder no output may go into: --input-dir, or the folder of --image/--video (none for a camera)."""
    if args.input_dir:
        return Path(args.input_dir)
    if args.video and is_camera(args.video):
        return None
    return Path(args.image or args.video).resolve().parent


def _annotated_ext(suffix) -> str:
    suffix = suffix.lower()
    return suffix if suffix and cv2.haveImageWriter(f"x{suffix}") else ".jpg"


def annotated_name(path, stem=None) -> str:
    """photo.png -> photo_age.png: the name of an annotated copy (--input-dir skips such names)."""
    path = Path(path)
    return f"{stem or path.stem}{ANNOTATED_SUFFIX}{_annotated_ext(path.suffix)}"


def output_stems(paths) -> dict:
    """{path: the stem of its outputs}: its own stem, or its whole name where another input has the same stem
    (any case: photo.jpg and photo.png, a.JPG and a.jpg), and a number after it where even that is taken
    (a.jpg beside a.jpg.jpg), so that no output overwrites another's."""
    shared = Counter(Path(p).stem.lower() for p in paths)
    stems, taken = {}, set()
    for p in paths:
        stem = candidate = Path(p).name if shared[Path(p).stem.lower()] > 1 else Path(p).stem
        copy = 1
        while candidate.lower() in taken:
            copy += 1
            candidate = f"{stem}~{copy}"
        stems[p] = candidate
        taken.add(candidate.lower())
    return stems


def plan_outputs(args) -> Outputs:
    """Where this run writes, checked (never the input's folder, never a labelled data set) before
    anything is written."""
    folder = plan_folder(args)
    if args.output:
        annotated, what = Path(args.output), "--output"
        source = None if args.input_dir or is_camera(args.video) else Path(args.image or args.video)
        if source is not None and same_file(annotated, source):
            raise DataError(f"--output {annotated} is the input file; choose another name (the input is never overwritten)")
    else:
        what = "--output-dir" if args.output_dir else "the default output folder"
        name = f"{input_name(args)}{ANNOTATED_SUFFIX}"
        annotated = None if args.input_dir else folder / (name + (".mp4" if args.video else _annotated_ext(Path(args.image).suffix)))
    refuse_inside_data(folder, what)
    # an explicit --output FILE is the user's choice of place (the input itself excepted); the default folder
    # (./inference_outputs/NAME) may sit in the photos' folder: --input-dir reads no sub-folder and refuses it
    if args.output_dir:
        refuse_inside_input(folder, args, what)
    if args.video is None:
        earlier_predictions(folder, args)  # refused now, before anything is written
    else:
        refuse_other_inputs(folder, args)
    return Outputs(folder, annotated, what)


def plan_folder(args) -> Path:
    """The folder predictions.csv goes into (plan_outputs' choice)."""
    if args.output:
        return Path(args.output).parent
    return Path(args.output_dir) if args.output_dir else Path(OUTPUT_ROOT) / input_name(args)


RUN_MANIFEST = "predictions_source.json"  # beside predictions.csv: the inputs it describes
VIDEO_KINDS = ("video", "camera")  # inputs whose outputs are an annotated video and its frames' JSON, no CSV rows


def input_identity(args) -> dict:
    """What a run's predictions describe: --input-dir's folder, or one --image (--video file) by its file name
    (the rows' "file"), as an absolute path and relative to the output folder (a checkout moved whole still
    matches)."""
    if is_camera(args.video):  # no file: known by its number
        name = f"camera{int(args.video)}"
        return {"kind": "camera", "name": name, "path": name, "relative": name}
    path = Path(args.input_dir or args.image or args.video).resolve()
    folder = plan_folder(args).resolve()
    try:
        relative = os.path.relpath(path, folder)
    except ValueError:  # Windows: another drive
        relative = str(path)
    # an image by the name its rows carry (a symbolic link's own), a folder by its resolved name (input_name)
    name = path.name if args.input_dir else Path(args.image or args.video).name
    kind = "folder" if args.input_dir else "image" if args.image else "video"
    identity = {"kind": kind, "name": name, "path": str(path), "relative": relative}
    if kind == "image":  # the name of its annotated copy, which a later image's run must not take (--output's own)
        identity["annotated"] = Path(args.output).name if args.output else annotated_name(name)
    return identity


def same_input(a: dict, b: dict) -> bool:
    return isinstance(b, dict) and a["kind"] == b.get("kind") and a["name"].lower() == str(b.get("name")).lower() \
        and (a["path"] == b.get("path") or a["relative"] == b.get("relative"))


def earlier_predictions(folder, args) -> tuple[list, list]:
    """(rows of predictions.csv, inputs of RUN_MANIFEST) a run into folder keeps or replaces, after refusing
    what it must not replace: a folder run's CSV, or an image's rows, of another input (two photos of one name,
    cardA/IMG_1.jpg then cardB/IMG_1.jpg, share the default folder and their annotated copy's name)."""
    csv_path, me = Path(folder) / "predictions.csv", input_identity(args)
    others = refuse_other_inputs(folder, args)  # a video's outputs (no CSV) among them
    if not csv_path.exists():
        return [], others
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:  # a spreadsheet's re-save has a BOM
            reader = csv.DictReader(f)
            rows = list(reader)
        if "file" not in (reader.fieldnames or []):
            raise ValueError("no file column")
    except (OSError, ValueError, UnicodeDecodeError, csv.Error):
        raise DataError(f"{folder} holds a predictions.csv this tool did not write; pass another output folder "
                        "(or move that file away)") from None
    inputs = manifest_inputs(folder)
    if inputs is None:
        # written before RUN_MANIFEST (or without it): its rows are this input's own, or it is not replaced
        mine = {me["name"]} if me["kind"] == "image" else {p.name for p in Path(args.input_dir).iterdir()}
        if {r["file"] for r in rows} <= mine:
            return rows, []  # every row is this input's: replaced (Recorder.finish)
    what = "--output-dir" if not args.output else "--output's folder"
    videos = [i for i in inputs or [] if i.get("kind") in VIDEO_KINDS]  # no rows of theirs
    photos = [i for i in inputs or [] if i not in videos]
    if inputs is None or me["kind"] == "folder" and not (len(photos) == 1 and same_input(me, photos[0])):
        whose = "the predictions of " + ", ".join(str(i.get("path", "?")) for i in inputs) \
            if inputs else "predictions of other inputs"
        raise DataError(f"{what} {folder} holds {whose}, which this run would replace; pass another output folder "
                        "(or move that one away)")
    clash = [i for i in inputs if not same_input(me, i) and (
        i.get("kind") == "folder" or str(i.get("name")).lower() == me["name"].lower())]  # case-blind disks too
    if clash:
        raise DataError(f"{what} {folder} holds the predictions of {clash[0].get('path')}, which this run would "
                        "replace (the same file name); pass another output folder")
    # IMG_1.HEIC and IMG_1.JPG both write IMG_1_age.jpg: refused as a video of another's stem is (an entry from
    # before "annotated" was kept: the default name)
    if me["kind"] == "image" and not args.output:
        clash = [i for i in inputs if i.get("kind") == "image" and not same_input(me, i)
                 and str(i.get("annotated") or annotated_name(str(i.get("name")))).lower() == me["annotated"].lower()]
        if clash:
            raise DataError(f"{what} {folder} holds the annotated copy of {clash[0].get('path')} ({me['annotated']}), "
                            "which this run would replace; pass another output folder")
    if me["kind"] == "folder":
        # its own earlier run: replaced whole, unless this run stops early (Recorder.finish); a video's outputs
        # beside it stay named
        return rows, videos
    # one more image into a folder of images: the other images' rows stay, this image's are replaced
    # (Recorder.finish: _stays)
    return rows, [i for i in inputs if not same_input(me, i)]


def manifest_inputs(folder) -> list | None:
    """The inputs folder's RUN_MANIFEST names (its entries that are objects), or None where there is none to read."""
    try:
        inputs = json.loads((Path(folder) / RUN_MANIFEST).read_text())["inputs"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [i for i in inputs if isinstance(i, dict)] if isinstance(inputs, list) else None


def json_writers(inputs) -> list:
    """The inputs that wrote predictions.json ("json"; an entry of an earlier version may have: taken as one)."""
    return [i for i in inputs if i.get("json", True)]


def photos_wrote_json(folder) -> bool:
    """Whether folder's predictions.json is one that runs of this tool over photos wrote, as RUN_MANIFEST records."""
    writers = json_writers(manifest_inputs(folder) or [])
    return bool(writers) and all(i.get("kind") not in VIDEO_KINDS for i in writers) \
        and (Path(folder) / "predictions.json").is_file()


def refuse_other_inputs(folder, args) -> list:
    """The other inputs RUN_MANIFEST names (they stay named in it), after refusing a run that would replace what
    one of them wrote: a video's (or camera's) --json over another input's predictions.json, or its annotated
    copy over another video's of the same file name (cardA/clip.mp4 then cardB/clip.mp4 share the default
    folder); a photo's --json over a video's predictions.json. A photo and a video of one name (IMG_1.jpg,
    IMG_1.mp4) without --json replace nothing of each other's."""
    folder, me = Path(folder), input_identity(args)
    what = "--output-dir" if not args.output else "--output's folder"
    inputs = manifest_inputs(folder) or []
    others = [i for i in inputs if not same_input(me, i)]
    json_file = args.json is True and (folder / "predictions.json").exists()
    json_owners = json_writers(others)
    if me["kind"] in VIDEO_KINDS:  # its predictions.json holds its own frames alone
        if json_file and (json_owners or not inputs and (folder / "predictions.csv").exists()):
            whose = json_owners[0].get("path") if json_owners else "photos"
            raise DataError(f"{what} {folder} holds the predictions.json of {whose}, which this run's --json would "
                            "replace; pass another output folder")
        # the annotated copy is named by the stem: clip.mp4 and clip.MOV both write clip_age.mp4
        clash = [i for i in others if i.get("kind") == me["kind"]
                 and Path(str(i.get("name"))).stem.lower() == Path(me["name"]).stem.lower()]
        if clash and not args.output:
            raise DataError(f"{what} {folder} holds the annotated video of {clash[0].get('path')} (the same file "
                            "name), which this run would replace; pass another output folder")
    elif json_file and any(i.get("kind") in VIDEO_KINDS for i in json_owners):
        raise DataError(f"{what} {folder} holds a video's predictions.json, which this run's --json would replace; "
                        "pass another output folder")
    return others


def refuse_inside_input(path, args, what):
    folder = input_folder(args)
    if folder is None or not same_or_inside(path, folder):
        return
    kind = f"the input folder ({folder})" if args.input_dir else f"the folder of the input file ({folder})"
    where = f"is {kind} or inside it"
    advice = ("run from another folder or pass --output-dir outside it" if what == "the default output folder"
              else f"choose a {what} outside it")
    raise DataError(f"{what} {path} {where}: outputs never go among the inputs (a later --input-dir run "
                    f"would read them); {advice}")


def refuse_inside_data(path, what):
    folder = labelled_folder_above(path)
    if folder is not None:
        raise DataError(f"{what} {path} is inside {folder}, which holds a labelled face data set: outputs never go "
                        "into one (the next eda.py run would read or count files written there); write outside it")


def _crops_dir(args):
    """--save-crops checked (not among the inputs, not in a data set) and created; None without it."""
    if not args.save_crops:
        return None
    refuse_inside_input(args.save_crops, args, "--save-crops")
    return _prepare_dir(args.save_crops, "--save-crops")


# ----------------------------------------------------------------------------------------------
# Reading and writing files

IMAGE_NOT_FOUND = "image not found: {path} (pass --image with an existing file)"
VIDEO_NOT_FOUND = "video not found: {path} (pass --video with an existing file, or a camera number such as 0)"


def _read_image(path) -> tuple[np.ndarray, int]:
    """The photo's RGB array and the factor it was decoded smaller by (a JPEG over MAX_IMAGE_PIXELS), or a
    one-line DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(IMAGE_NOT_FOUND.format(path=path))
    try:
        rgb, shrink = load_rgb_shrunk(path)
    except DataError:
        raise
    except PermissionError:
        raise DataError(f"cannot read {path}: permission denied; check its permissions") from None
    except Exception as exc:
        raise DataError(f"cannot read {path} as an image ({type(exc).__name__}); pass a JPEG/PNG/... file") from None
    return big_enough(rgb, path), shrink


def _prepare_output(path, kind="image"):
    """The annotated file's path: a writable format, not a folder, its folder created."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"--output {path} is a folder; give a file name such as {path / ('annotated' + ('.jpg' if kind == 'image' else '.mp4'))}")
    if kind == "image" and not cv2.haveImageWriter(str(path.with_suffix(path.suffix or ".x"))):
        raise DataError(f"--output {path}: unknown image type {path.suffix!r}; use .jpg or .png")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the output folder {path.parent} ({exc.strerror or exc}); choose another --output") from None
    return path


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


class NameRefused(DataError):
    """An output the file system refuses by its name (too long, a character it does not take): that image's."""


class OutputFailed(DataError):
    """An output that cannot be written for a reason every later output shares (a full or read-only disk)."""


def _write_image(path, rgb):
    try:
        write_image(path, rgb)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    except OSError as exc:
        # a name too long, or one the file system does not take (a ':' on exFAT/FAT: EINVAL), is this image's
        # problem alone; anything else (no space, no permission) is every image's
        kind = NameRefused if exc.errno in (errno.ENAMETOOLONG, errno.EINVAL) else OutputFailed
        raise kind(f"cannot write {path} ({exc.strerror or exc}); check the output folder") from None


def _interval_text(low, high, number) -> str:
    """" (29-40)", or " (>29)" where the calibration has no upper bound at this level."""
    return f" ({number.format(low)}-{number.format(high)})" if np.isfinite(high) else f" (>{number.format(low)})"


def _labels(ages, flags=None, intervals=None):
    """"Age: 34", "Age: 34 (29-40)" with an interval, and a "?" after the age outside the training ages."""
    labels = []
    for a, flag, interval in zip(ages, flags or [False] * len(ages), intervals or [None] * len(ages)):
        text = f"Age: {int(round(float(a)))}" + ("?" if flag else "")
        if interval is not None:
            low, high = interval
            text += _interval_text(low, high, "{:.0f}")
        labels.append(text)
    return labels


def _save_crops(folder, stem, inputs):
    """Each face's model input (before normalisation) as folder/<stem>_<index>.png, RGB. Nothing is removed:
    another photo of the same name may have written the crops an earlier run left here."""
    for k, image in enumerate(inputs):
        _write_image(Path(folder) / f"{stem}_{k}.png", image)


def _list_images(folder):
    """(images, other files, names that are not UTF-8, earlier outputs of this tool) of a folder, sorted.
    Earlier outputs: images named *_age.<ext>, the annotated copies this tool writes; sub-folders
    (an output folder among them) are never read."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    odd = [p for p in files if not _utf8_name(p.name)]  # predictions.csv is UTF-8: they could not be listed
    files = [p for p in files if p not in odd]
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    earlier = [p for p in images if is_annotated_copy(p)]
    return ([p for p in images if p not in earlier], [p for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS],
            odd, earlier)


class Recorder:
    """The results of a run: predictions.csv and predictions.json (--json) written at the end, JSON
    lines printed as they come (--json -, on `stream`: the real stdout), and the summary counts."""

    def __init__(self, folder, json_mode, stream=None, csv_file=True, args=None):
        self.folder, self.json_mode, self.stream, self.csv_file = Path(folder), json_mode, stream, csv_file
        # the input (input_identity) named in RUN_MANIFEST; the earlier rows (other images' stay, a folder's own
        # only where its run stops early: finish) and the other inputs named there, which stay
        self.source = None if args is None else {**input_identity(args), "json": args.json is True}
        self.kept_rows, self.kept_inputs = ([], []) if args is None else earlier_predictions(folder, args) \
            if args.video is None else ([], refuse_other_inputs(folder, args))
        # asked before this run replaces RUN_MANIFEST, which names the writers of predictions.json
        self.earlier_json = csv_file and args is not None and photos_wrote_json(folder)
        self.earlier_files = 0  # a folder run stopped early: the files whose earlier predictions stayed (finish)
        self.rows, self.objects = [], []
        self.counts = {"images": 0, "faces": 0, "no_face": 0, "outside": 0, "min_face": 0, "min_score": 0}

    def add(self, result: ImageResult):
        counts = self.counts
        counts["images"] += 1
        counts["faces"] += len(result.faces)
        counts["no_face"] += not result.face_found
        counts["outside"] += result.outside()
        for face in result.dropped:
            counts[face["reason"]] += 1
        if self.csv_file:
            self.rows += result.csv_rows()
        if self.json_mode == "-":
            try:
                print(json.dumps(result.to_json()), file=self.stream, flush=True)
            except BrokenPipeError:
                raise ReaderGone() from None
        elif self.json_mode:
            self.objects.append(result.to_json())

    def finish(self, reached=None) -> dict:
        """Write predictions.csv / predictions.json (atomically); their paths by kind. reached: the files a folder
        run stopped early got to (annotated or skipped): the earlier run's rows and objects of the others stay, as
        their annotated copies do; without it a folder's earlier predictions are replaced whole."""
        written, source = {}, self.source
        earlier = self._earlier_objects()
        objects = self._together(earlier, self.objects, reached)
        if self.csv_file and self.json_mode is not True and len(objects) < len(earlier):
            # this run writes no predictions.json: the earlier one's objects of the files it replaces would give
            # other ages than the CSV beside them; taken out before the CSV is replaced, so that none is ever stale
            if objects:
                self._write_json(objects)
            else:
                (self.folder / "predictions.json").unlink(missing_ok=True)
            if objects and source["kind"] == "folder":  # what stays of it is this input's: named its writer
                source = {**source, "json": True}
        if self.csv_file:
            kept = [r for r in self.kept_rows if self._stays(r["file"], reached)]
            self.earlier_files = len({r["file"] for r in kept}) if source and source["kind"] == "folder" else 0
            write_csv(self.folder / "predictions.csv", self._together(kept, self.rows, reached), CSV_FIELDS,
                      line_end="\n")
            written["csv"] = str(self.folder / "predictions.csv")
            if source:  # after the CSV: a run stopped between the two is refused, never replaces another's
                text = json.dumps({"inputs": self.kept_inputs + [source]}, indent=1) + "\n"
                atomic_write(self.folder / RUN_MANIFEST, lambda f: f.write(text.encode("utf-8")))
        elif source:  # a video: its outputs named, so that another input's run never replaces them
            text = json.dumps({"inputs": self.kept_inputs + [source]}, indent=1) + "\n"
            atomic_write(self.folder / RUN_MANIFEST, lambda f: f.write(text.encode("utf-8")))
        if self.json_mode is True:
            self._write_json(objects)
            written["json"] = str(self.folder / "predictions.json")
        return written

    def _stays(self, file, reached) -> bool:
        """Whether the earlier rows and object of `file` stay beside this run's: another image's (one more image
        into a folder of images), or, of a folder run stopped early, a file it did not reach."""
        kind = self.source and self.source["kind"]
        if kind == "image":
            return str(file).lower() != self.source["name"].lower()
        return kind == "folder" and reached is not None and file not in reached

    def _together(self, earlier, new, reached) -> list:
        """The entries (rows or objects) of earlier that stay, then new's; a folder's merged in the order it is
        read (sorted, as _list_images lists it), so that a run stopped early reads as one run."""
        file = lambda entry: str(entry.get("file"))
        kept = [e for e in earlier if self._stays(file(e), reached)]
        if self.source and self.source["kind"] == "folder":
            return list(heapq.merge(kept, new, key=lambda entry: Path(file(entry))))
        return kept + new

    def _earlier_objects(self) -> list:
        """The objects of the predictions.json earlier runs over photos wrote here ([] where there is none)."""
        if not self.earlier_json:
            return []
        try:
            earlier = json.loads((self.folder / "predictions.json").read_text())
        except (OSError, ValueError):
            return []
        return [o for o in earlier if isinstance(o, dict)] if isinstance(earlier, list) else []

    def _write_json(self, objects):
        data = (json.dumps(objects, indent=1) + "\n").encode("utf-8")
        atomic_write(self.folder / "predictions.json", lambda f: f.write(data))

    def summary(self, estimator, unit="images") -> str:
        """"3 images, 4 faces (1 outside the training ages 20-40), 1 images without a face[, dropped ...]"."""
        counts = self.counts
        text = f"{counts['images']} {unit}, {counts['faces']} faces"
        if estimator.age_range:
            text += f" ({counts['outside']} outside the training ages {estimator.age_range[0]:g}-{estimator.age_range[1]:g})"
        text += f", {counts['no_face']} {unit} without a face"
        if estimator.min_face:
            text += f", {counts['min_face']} faces dropped by --min-face {estimator.min_face}"
        if estimator.min_score is not None:
            text += f", {counts['min_score']} faces dropped by --min-score {estimator.min_score:g}"
        return text


def process_image(estimator, path, rgb, output, crops_dir=None, stem=None, shrink=1) -> ImageResult:
    """Faces and ages of one photo: lines printed, annotated copy and crops written (crops named
    stem_<face>.png, the photo's stem by default), the result returned. shrink: see _read_image."""
    result = estimator.analyse(rgb, Path(path).name, shrink)
    _write_image(output, result.draw(rgb))  # drawn after cutting: no box in a chip
    if crops_dir and result.faces:
        _save_crops(crops_dir, stem or Path(path).stem, result.inputs)
    try:
        if shrink > 1:
            print(f"{Path(path).name}: over {MAX_IMAGE_PIXELS // 1_000_000} million pixels, read at 1/{shrink} of its "
                  f"size; its boxes are in the file's pixels, its annotated copy is 1/{shrink} of its size")
        for line in result.lines():
            print(line)
    except BrokenPipeError:  # `inference.py --input-dir photos | head`: the run stops, its predictions written
        raise ReaderGone(result) from None  # this photo's annotated copy is written: its row too
    return result


# ----------------------------------------------------------------------------------------------
# Modes

def run_image(args, estimator, json_stream=None):
    rgb, shrink = _read_image(args.image)
    outputs = plan_outputs(args)
    crops = _crops_dir(args)
    output = _prepare_output(outputs.annotated)
    recorder = Recorder(outputs.folder, args.json, json_stream, args=args)
    result = process_image(estimator, args.image, rgb, output, crops, shrink=shrink)
    recorder.add(result)
    written = recorder.finish()
    print(f"{recorder.summary(estimator)}; annotated image -> {output}")
    return {"output": str(output), "boxes": [f["box"] for f in result.file_faces()], "ages": [f["age"] for f in result.faces],
            "rows": result.csv_rows(), "result": result, **recorder.counts, **written}


def _check_input_dir(path):
    in_dir = Path(path)
    if not in_dir.is_dir():
        raise DataError(f"input folder not found: {in_dir} (pass --input-dir with an existing folder)")
    if OUTPUT_ROOT in in_dir.resolve().parts:
        raise DataError(f"--input-dir {in_dir} is inside an {OUTPUT_ROOT} folder, i.e. outputs of this tool; "
                        "pass the folder of the original photos")
    return in_dir


def _folder_images(in_dir):
    """The images of --input-dir to annotate, with a note on everything left out; (images, odd names)."""
    images, others, odd, earlier = _list_images(in_dir)
    if odd:
        print(f"warning: skipping {len(odd)} file(s) whose names are not UTF-8 (rename them to include them)",
              file=sys.stderr)
    if earlier:
        print(f"skipping {len(earlier)} file(s) named *{ANNOTATED_SUFFIX}.<ext>: annotated copies written by this tool "
              "(rename them to include them)")
    if others:
        kinds = sorted({p.suffix.lower() or "no extension" for p in others})
        print(f"ignored {len(others)} file(s) of other types ({', '.join(kinds[:6])}{', ...' if len(kinds) > 6 else ''}"
              f"; images: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    if not images:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {in_dir}")
    return images, odd


def _annotate_file(estimator, path, target, crops, recorder, stem) -> bool | str:
    """One image of --input-dir (its annotated copy: target): True, or (with a warning) False where it cannot be
    read, "output refused"
    where the file system refuses its outputs' names (too long, a character it does not take): one such image
    never costs the run its predictions.csv. A full or read-only disk stops the run (every image would fail)."""
    try:
        rgb, shrink = _read_image(path)
        recorder.add(process_image(estimator, path, rgb, target, crops, stem, shrink))
    except ReaderGone as gone:
        if gone.args:
            recorder.add(gone.args[0])
        raise
    except (OutputFailed, ModelFailed):
        raise
    except DataError as exc:
        print(f"warning: skipping {path.name}: {str(exc).split('; ')[0].replace(str(path), 'it')}", file=sys.stderr)
        return "output refused" if isinstance(exc, NameRefused) else False
    except (MemoryError, RuntimeError, ValueError, cv2.error) as exc:  # this photo's (a huge one, a detector's)
        print(f"warning: skipping {path.name}: {type(exc).__name__}: {str(exc).strip()[:200]}", file=sys.stderr)
        return False
    return True


FIRST_FAILURES_STOP = 10  # a folder run stops where the outputs of its first this many images were all refused


def _file_state(path):
    """(inode, modification time, size) of a file, None where there is none: an atomic rewrite changes it."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def run_folder(args, estimator, json_stream=None):
    in_dir = _check_input_dir(args.input_dir)
    outputs = plan_outputs(args)
    crops = _crops_dir(args)
    images, odd = _folder_images(in_dir)
    out_dir = _prepare_dir(outputs.folder, outputs.what)
    recorder = Recorder(out_dir, args.json, json_stream, args=args)
    start = time.perf_counter()
    stems = output_stems(images)
    skipped, current, redrawn = [], None, False
    try:
        refused = 0
        for path in images:
            # the photo in hand and its annotated copy's state before: a stop may come after a new copy is written
            target = out_dir / annotated_name(path, stems[path])
            current = path, target, _file_state(target)
            done = _annotate_file(estimator, path, target, crops, recorder, stems[path])
            if done is not True:
                # skipped after its new copy was written (its crops' names refused, say): no earlier row stays for it
                redrawn |= _file_state(target) != current[2]
                skipped.append(path.name)
                refused += done == "output refused"
                # a cause every file shares that looks like one file's (EINVAL from a mount refusing fsync):
                # stopped here, not after hours of images all skipped (unreadable inputs never stop a run)
                if refused == FIRST_FAILURES_STOP and not recorder.counts["images"]:
                    raise DataError(f"the outputs of the first {FIRST_FAILURES_STOP} images of {in_dir} were all "
                                    f"refused (warnings above); stopping: check {out_dir}")
            current = None
    except (KeyboardInterrupt, ReaderGone, OutputFailed, ModelFailed) as stop:  # hours of annotated images keep
        try:  # their predictions; a full disk may refuse the CSV too, and then its own error is not the one to tell
            # a run stopped before its first image leaves an earlier run's outputs as they were; one stopped later
            # keeps the earlier predictions of the files it did not reach (ReaderGone's photo is among the rows)
            reached = set(skipped) | {row["file"] for row in recorder.rows}
            if current is not None and _file_state(current[1]) != current[2]:
                reached.add(current[0].name)  # stopped after its new drawing: the earlier row's age would not match it
                redrawn = True
            where = (", ".join(recorder.finish(reached).values()) or "stdout") if recorder.counts["images"] or redrawn \
                else "nowhere (no image was done; the folder's earlier outputs are left as they were)"
            if recorder.earlier_files:
                where += f" (with the earlier run's predictions of the {recorder.earlier_files} image(s) not reached)"
        except OSError:
            if not isinstance(stop, OutputFailed):
                raise
            where = "nowhere (the disk refused them too)"
        why = {KeyboardInterrupt: "interrupted", ReaderGone: "stdout closed"}.get(type(stop), "stopped")
        print(f"{why} after {recorder.counts['images'] + len(skipped)} of {len(images)} images; the predictions -> "
              f"{where}", file=sys.stderr)
        raise
    seconds = time.perf_counter() - start
    if skipped:
        print(f"warning: skipped {len(skipped)} file(s) that could not be read or annotated: {', '.join(skipped[:5])}"
              + (" ..." if len(skipped) > 5 else ""), file=sys.stderr)
    counts = recorder.counts
    if images and not counts["images"]:  # an earlier run's predictions are replaced by none only where its
        if redrawn:  # annotated copies were
            recorder.finish()
        raise DataError(f"none of the {len(images)} images in {in_dir} could be annotated (warnings above)"
                        + ("" if redrawn else f"; {out_dir}'s earlier outputs are left as they were"))
    written = recorder.finish()
    print(f"{recorder.summary(estimator)}, {len(skipped) + len(odd)} skipped; "  # a closed stdout: cli.run_cli
          f"{counts['images'] / max(seconds, 1e-9):.1f} images/s -> {out_dir}")
    return {**counts, "skipped": len(skipped) + len(odd), "seconds": seconds, "output_dir": str(out_dir), **written}


def open_camera(index):
    """cv2.VideoCapture(index), or one line saying there is no such camera (OpenCV's own log silenced)."""
    message = (f"no camera {index} found; connect one (or check its permissions), pass another number, "
               "or pass a video file to --video")
    if sys.platform.startswith("linux") and not Path(f"/dev/video{index}").exists():
        raise DataError(message)
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        cap = cv2.VideoCapture(index)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if not cap.isOpened():
        cap.release()
        raise DataError(message)
    return cap


def open_video(video):
    """(capture, name, frame count, or 0 where unknown) of a video file or a camera number."""
    if is_camera(video):
        return open_camera(int(video)), f"camera{int(video)}", 0
    source = Path(video)
    if not source.is_file():
        raise DataError(VIDEO_NOT_FOUND.format(path=source))
    cap = cv2.VideoCapture(str(source))
    if not cap.isOpened():
        cap.release()
        raise DataError(f"cannot open {source} as a video; pass an .mp4/.avi file OpenCV can decode")
    return cap, source.name, max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0)


MAX_FPS = 1000.0  # above it a stream's rate is its time base (90000 in MPEG-TS; the mp4 writer refuses 65536 up)


def frame_rate(reported) -> float:
    """The rate the annotated video is written at: the stream's own, or 25 where it reports none or no
    believable one (said once)."""
    if reported and np.isfinite(reported) and 0 < reported <= MAX_FPS:
        return float(reported)
    if reported:
        print(f"note: the video reports {reported:g} frames/s, not a frame rate; writing at 25 frames/s",
              file=sys.stderr)
    return 25.0


class _VideoFile:
    """The annotated video, written under a temporary name and renamed into place when complete."""

    def __init__(self, output, fps, realtime=False):
        self.output, self.fps, self.writer = Path(output), fps, None
        # a camera's frames come as fast as each is annotated (a few a second), not at its reported rate: the
        # slots of the file (1 / fps each) up to a frame's time then repeat the frame before it, which was what the
        # camera showed until then, so that the video plays in real time
        self.realtime, self.written, self.last = realtime, 0, None
        suffix = self.output.suffix or ".mp4"  # OpenCV picks the container by it
        if self.output.parent.is_dir():  # a killed run's temporary video
            remove_orphans(self.output.parent, f".{glob.escape(self.output.stem)}.*.tmp{suffix}")
        self.tmp = self.output.with_name(f".{self.output.stem}.{os.getpid()}.tmp{suffix}")

    def write(self, rgb, seconds=0.0):
        """One frame, captured `seconds` from the start (where realtime: slot n of the file is shown at n / fps,
        and the slots before this frame's time show the frame before it)."""
        if self.writer is None:
            height, width = rgb.shape[:2]
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width, height))
            if not self.writer.isOpened():
                raise DataError(f"cannot write the video {self.output}; use an .mp4 name in a writable folder")
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if self.realtime and self.last is not None:
            while self.written < int(seconds * self.fps):
                self.writer.write(self.last)
                self.written += 1
        self.writer.write(bgr)
        self.written += 1
        self.last = bgr if self.realtime else None

    def close(self, keep, frames=0):  # frames: how many were written, for the message
        if self.writer is not None:
            self.writer.release()
        if keep and self.writer is not None:
            if not self.readable():
                self.tmp.unlink(missing_ok=True)
                raise OutputFailed(f"cannot write the video {self.output}: the {frames} frames written do not read "
                                   "back (a full disk?); check the output folder")
            os.replace(self.tmp, self.output)
        else:
            self.tmp.unlink(missing_ok=True)

    def readable(self) -> bool:
        """Whether the temporary video, once on disk (a crash then leaves the old video or a whole one), reads
        back with a frame: VideoWriter reports no error, and a full disk leaves an mp4 without its index."""
        try:
            with open(self.tmp, "rb+") as f:
                os.fsync(f.fileno())
        except OSError:
            return False
        cap = cv2.VideoCapture(str(self.tmp))
        try:
            return cap.isOpened() and cap.read()[0]
        finally:
            cap.release()


def _progress(total, args):
    """A tqdm bar on stderr for a video file of known length, unless --no-progress."""
    if args.no_progress or total <= 0:
        return None
    from tqdm import tqdm
    return tqdm(total=min(total, args.max_frames or total), unit="frame", file=sys.stderr, leave=False)


def frame_seconds(cap, index, fps, camera_start=None) -> float:
    """When a frame was shown, in seconds from the start: the decoder's timestamp of the frame just read,
    right for variable frame rates too (phones record them); index / fps where the stream gives none (0
    past the first frame); for a camera, the seconds since it opened (its reported rate is often not what
    it delivers)."""
    if camera_start is not None:
        return time.perf_counter() - camera_start
    msec = cap.get(cv2.CAP_PROP_POS_MSEC)
    if index > 0 and not (np.isfinite(msec) and msec > 0):
        return index / fps
    return max(float(msec), 0.0) / 1000 if np.isfinite(msec) else 0.0


def _annotate_frame(estimator, tracker, rgb, index, name, seconds, video) -> ImageResult:
    """One frame: faces found, ages smoothed per track, the frame written (unannotated without a face)."""
    result = estimator.analyse(rgb, name)
    result.extra = {"frame": index, "time": round(seconds, 3)}
    ids, shown = tracker.update([f["box"] for f in result.faces], [f["age"] for f in result.faces])
    for face, track, age in zip(result.faces, ids, shown):
        face["track"], face["age_smoothed"] = track, round(age, 2)
    # the interval follows the smoothed age: it is the calibrated interval of the age shown
    flags = [outside_training_range(age, estimator.age_range) for age in shown]
    video.write(result.draw(rgb, shown, estimator.intervals(shown), flags) if result.faces else rgb, seconds)
    return result


def _annotate_frames(cap, estimator, video, recorder, args, name, total):
    """Every frame of the capture (up to --max-frames; a camera until Ctrl-C) -> (frames, tracker)."""
    tracker, bar, frames = Tracker(alpha=args.alpha), _progress(total, args), 0
    camera_start = time.perf_counter() if is_camera(args.video) else None
    try:
        while not args.max_frames or frames < args.max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            seconds = frame_seconds(cap, frames, video.fps, camera_start)
            recorder.add(_annotate_frame(estimator, tracker, rgb, frames, name, seconds, video))
            frames += 1
            if bar is not None:
                bar.update()
    except KeyboardInterrupt:
        if not is_camera(args.video):  # a video file: interrupted, nothing kept
            raise
        print("camera stopped (Ctrl-C)", file=sys.stderr)
    finally:
        if bar is not None:
            bar.close()
    return frames, tracker


def run_video(args, estimator, json_stream=None):
    cap, name, total = open_video(args.video)
    try:
        outputs = plan_outputs(args)
        output = _prepare_output(outputs.annotated, kind="video")
        recorder = Recorder(outputs.folder, args.json, json_stream, csv_file=False, args=args)
        video = _VideoFile(output, frame_rate(cap.get(cv2.CAP_PROP_FPS)), realtime=is_camera(args.video))
        start = time.perf_counter()
        try:
            frames, tracker = _annotate_frames(cap, estimator, video, recorder, args, name, total or 0)
        except BaseException:
            video.close(keep=False)
            raise
        video.close(keep=frames > 0, frames=frames)
    finally:
        cap.release()
    if frames == 0:
        raise DataError(f"no frames could be read from {args.video}; is it a video OpenCV can decode?")
    written = recorder.finish()
    seconds = time.perf_counter() - start
    print(f"{recorder.summary(estimator, 'frames')}, {tracker.created} tracks, {frames / max(seconds, 1e-9):.1f} "
          f"frames/s (age smoothed per track, EMA alpha {args.alpha}) -> {output}")
    return {"frames": frames, "faces": recorder.counts["faces"], "tracks": tracker.created, "output": str(output),
            **written}


PATH_FLAGS = ("model", "image", "video", "output", "output_dir", "save_crops", "input_dir")


def check_flags(args):
    """Flag combinations and values, and that the input is there, before anything is loaded."""
    # an unset shell variable (--image "$PHOTO") is no path: the checks below take "" for a flag not given
    for flag in PATH_FLAGS:
        if getattr(args, flag, None) == "":
            raise DataError(f"--{flag.replace('_', '-')} is empty (an unset shell variable?); pass a path")
    if args.output and args.input_dir:
        raise DataError("--input-dir writes into --output-dir; --output is for --image and --video")
    if args.output and args.output_dir:
        raise DataError("give --output (the annotated file; the CSV/JSON go beside it) or --output-dir, not both")
    if args.json not in (None, True, "-"):
        raise DataError(f"--json takes no value (predictions.json in the output folder) or '-' (JSON lines on "
                        f"stdout), got {args.json!r}")
    if args.whole_image and args.min_score is not None:  # the whole image's score is a fixed 1.0
        raise DataError("--min-score filters the detector's faces; --whole-image uses no detector")
    if args.detector and args.whole_image:
        raise DataError(f"--detector {args.detector} chooses how faces are found; --whole-image finds none (the image "
                        "is the face): leave one out")
    if args.save_crops and args.video:
        raise DataError("--save-crops is for --image and --input-dir")
    if args.trust_model and is_onnx(args.model):
        raise DataError(f"--trust-model is for a model.jit (TorchScript runs code from the file); ONNX Runtime runs "
                        f"none from {args.model}: leave --trust-model out")
    # a flag that would do nothing is refused, not ignored
    video_only = {"--alpha": args.alpha != SMOOTH_ALPHA, "--max-frames": args.max_frames != 0,
                  "--no-progress": args.no_progress}
    if args.video is None and any(video_only.values()):
        raise DataError(f"{next(k for k, v in video_only.items() if v)} is for --video")
    if args.video is not None and not 0 < args.alpha <= 1:
        raise DataError(f"--alpha must be in (0, 1], got {args.alpha}")
    if args.video is not None and args.max_frames < 0:
        raise DataError(f"--max-frames must be 0 (all) or more, got {args.max_frames}")
    # OpenCV's bindings crash (a segfault, no message) on a path holding bytes that are not UTF-8
    for flag in PATH_FLAGS:
        value = getattr(args, flag, None)
        if value is not None and not _utf8_name(value):
            raise DataError(f"--{flag.replace('_', '-')} {value!r}: the path holds bytes that are not UTF-8, which "
                            "OpenCV cannot open; rename it (or its folder)")
    # a missing input is named at once, not after the model and the detector have loaded (seconds)
    if args.image and not Path(args.image).is_file():
        raise DataError(IMAGE_NOT_FOUND.format(path=args.image))
    if args.input_dir:
        _check_input_dir(args.input_dir)
    if args.video is not None and not is_camera(args.video) and not Path(args.video).is_file():
        raise DataError(VIDEO_NOT_FOUND.format(path=args.video))
    plan_outputs(args)  # outputs among the inputs or in a data set: refused now too (nothing is created here)
    if args.save_crops:
        refuse_inside_input(args.save_crops, args, "--save-crops")


def main(args):
    keep_freed_memory()  # threads are set where the model is read: ONNX Runtime's own, or torch's for .jit
    check_flags(args)
    json_stream = sys.stdout if args.json == "-" else None  # --json -: stdout is for the JSON lines alone
    with contextlib.redirect_stdout(sys.stderr) if json_stream else contextlib.nullcontext():
        level = INTERVAL_LEVEL if args.interval_level is None else args.interval_level
        estimator = AgeEstimator(args.model, args.detector, args.whole_image, args.threads, min_face=args.min_face,
                                 min_score=args.min_score, device=args.device, interval_level=level,
                                 trust_code=args.trust_model, dark_floor=args.dark_floor)
        if estimator.interval is None and args.interval_level is not None:  # known once the model is loaded
            raise DataError(f"--interval-level sets the coverage of the age interval, and {estimator.path.name} "
                            "carries no interval calibration (train.py writes one): leave --interval-level out")
        print(estimator.describe())
        for note in (estimator.detector_note, estimator.preprocess_note):
            if note:
                print(note, file=sys.stderr)
        mode = run_image if args.image else run_folder if args.input_dir else run_video
        return mode(args, estimator, json_stream)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
