"""Estimate the age of every face in an image, a folder of images, or a video.

    python inference.py --model RUN/model.jit --image photo.jpg --output photo_age.jpg [--no-detect]
    python inference.py --model RUN/model.jit --input-dir photos/ --output-dir annotated/
    python inference.py --model RUN/model.jit --video clip.mp4 --output clip_age.mp4

Every face is found with OpenCV's Haar cascade, cropped with the margin stored in the model's
metadata, preprocessed with custom_dataset.preprocess_rgb (the very function training used) and
predicted in one batched forward pass. Where no face is found the whole image is used and the
output says so. Video faces are tracked across frames by box overlap and their age is smoothed
over time, so that the number shown does not jitter from frame to frame.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

from custom_dataset import IMAGE_EXTENSIONS, DataError, PreprocessConfig, load_rgb, preprocess_rgb
from functions import configure_threads, load_torchscript, run_cli

SUPPORTED_FORMAT_VERSION = 1
CASCADE_FILE = "haarcascade_frontalface_default.xml"

# Detector settings, measured with bench_detection.py on UTKFace (see bench/detection.json).
SCALE_FACTOR = 1.1        # step between detection scales; 1.05 finds ~1 % more faces at twice the cost
MIN_NEIGHBORS = 4         # overlapping raw hits needed for a face; lower finds more faces and more ghosts
MIN_FACE_FRACTION = 0.04  # smallest face side as a share of the shorter image side (never below 24 px)
PAD_FRACTION = 0.15       # replicated border added on every side before detection: the cascade window
                          # needs context around a face, and without it faces that fill the frame (as in
                          # UTKFace's aligned crops) are missed about a third of the time
MAX_DETECT_SIDE = 1280    # larger images are shrunk for detection only (speed); boxes are scaled back
NMS_IOU = 0.3             # overlapping boxes above this IoU are one face
NMS_CONTAINED = 0.7       # a box lying this much inside a bigger, stronger one is a part of that face

# Video: tracks and smoothing
TRACK_IOU = 0.3           # a detection continues a track when their boxes overlap at least this much
SMOOTH_ALPHA = 0.3        # exponential moving average weight of the newest frame: shown = 0.3 new + 0.7
                          # previous, i.e. the displayed age follows a change with a time constant of about
                          # three frames while frame-to-frame noise is damped to ~40 % of its size
MAX_MISSED = 10           # a track survives this many frames without a matching detection
BATCH_CROPS = 64          # folder mode: crops of several images predicted in one forward pass


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model.jit written by train.py (preprocessing metadata inside)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="one image to annotate")
    src.add_argument("--input-dir", help="folder of images to annotate (not recursive)")
    src.add_argument("--video", help="video to annotate frame by frame")
    p.add_argument("--output", help="annotated image or video (default: INPUT name + _age beside the input)")
    p.add_argument("--output-dir", help="--input-dir mode: folder for annotated images and predictions.csv")
    p.add_argument("--no-detect", action="store_true", help="skip face detection: the whole image is the face")
    p.add_argument("--margin", type=float, default=None,
                   help="crop margin per side as a fraction of the face box (default: the model's crop_margin)")
    p.add_argument("--batch-size", type=int, default=BATCH_CROPS, help="--input-dir: crops per forward pass")
    p.add_argument("--alpha", type=float, default=SMOOTH_ALPHA, help="--video: weight of the newest age (EMA)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


# ----------------------------------------------------------------------------------------------
# Model

def load_model(path):
    """(module, metadata, cfg) from a model.jit written by train.py; DataError with advice otherwise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
        module, metadata = load_torchscript(path)
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
    return module, metadata, cfg


def predict_crops(module, metadata, cfg, crops) -> np.ndarray:
    """Ages (float64, one per crop) of HxWx3 uint8 RGB crops, all in one forward pass.

    Each crop goes through custom_dataset.preprocess_rgb; with metadata["tta_flip"] the prediction
    is averaged with that of the horizontally mirrored batch, as in training's evaluation.
    """
    if len(crops) == 0:
        return np.zeros(0, dtype=np.float64)
    batch = np.stack([preprocess_rgb(np.ascontiguousarray(c), cfg) for c in crops])
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().contiguous()
    with torch.no_grad():
        ages = module(x)
        if metadata.get("tta_flip"):
            ages = 0.5 * (ages + module(x.flip(-1)))
    return ages.reshape(-1).double().numpy()


# ----------------------------------------------------------------------------------------------
# Detection and cropping

def load_detector():
    path = os.path.join(cv2.data.haarcascades, CASCADE_FILE)
    detector = cv2.CascadeClassifier(path)
    if detector.empty():
        raise DataError(f"cannot load the Haar cascade {path}; reinstall opencv-python-headless")
    return detector


def iou(a, b) -> float:
    """Intersection over union of two (x, y, w, h) boxes; 0 when either is empty."""
    ax, ay, aw, ah = (float(v) for v in a)
    bx, by, bw, bh = (float(v) for v in b)
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def _inside_fraction(small, big) -> float:
    """Share of `small`'s area that lies inside `big`."""
    sx, sy, sw, sh = small
    bx, by, bw, bh = big
    iw = max(0.0, min(sx + sw, bx + bw) - max(sx, bx))
    ih = max(0.0, min(sy + sh, by + bh) - max(sy, by))
    return iw * ih / max(sw * sh, 1e-9)


def non_max_suppression(boxes, scores, iou_threshold=NMS_IOU, contained=NMS_CONTAINED):
    """Indices of the boxes kept, strongest first.

    A box lying mostly (> contained of its area) inside a bigger box is a part of that face (an eye or
    mouth hit) and is dropped whatever its score; of the rest, a box overlapping a stronger kept box by
    IoU > iou_threshold is the same face and is dropped.
    """
    boxes = [tuple(float(v) for v in b) for b in boxes]
    whole = [i for i, b in enumerate(boxes)
             if not any(j != i and o[2] * o[3] > b[2] * b[3] and _inside_fraction(b, o) > contained
                        for j, o in enumerate(boxes))]
    keep = []
    for i in sorted(whole, key=lambda i: (-scores[i], -boxes[i][2] * boxes[i][3], i)):
        if all(iou(boxes[i], boxes[k]) <= iou_threshold for k in keep):
            keep.append(i)
    return keep


def detect_faces(rgb, detector, scale_factor=SCALE_FACTOR, min_neighbors=MIN_NEIGHBORS,
                 min_face_fraction=MIN_FACE_FRACTION, pad_fraction=PAD_FRACTION, clip=True):
    """Faces in an HxWx3 RGB (or HxW gray) uint8 image as a list of (x, y, w, h), largest first.

    Detection runs on a grayscale copy, shrunk to MAX_DETECT_SIDE for big photos and padded with a
    replicated border (pad_fraction of the longer side) so that faces filling the frame still fit the
    detector's window. Overlapping boxes are merged by non-maximum suppression. With clip the boxes
    are clipped to the image; without, they may reach into the padding (used by bench_detection.py).
    """
    gray = rgb if rgb.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    height, width = gray.shape
    scale = min(1.0, MAX_DETECT_SIDE / max(height, width))
    if scale < 1.0:
        gray = cv2.resize(gray, (max(1, round(width * scale)), max(1, round(height * scale))),
                          interpolation=cv2.INTER_AREA)
    pad = int(round(pad_fraction * max(gray.shape)))
    if pad:
        gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    min_side = max(24, int(round(min_face_fraction * min(height, width) * scale)))
    found, _, weights = detector.detectMultiScale3(
        gray, scaleFactor=scale_factor, minNeighbors=min_neighbors, minSize=(min_side, min_side),
        outputRejectLevels=True)
    if len(found) == 0:
        return []
    raw = [((x - pad) / scale, (y - pad) / scale, w / scale, h / scale) for x, y, w, h in found]
    keep = non_max_suppression(raw, [float(s) for s in np.ravel(weights)])
    boxes = []
    for i in keep:
        x, y, w, h = raw[i]
        if clip:
            x0, y0 = max(0.0, x), max(0.0, y)
            x1, y1 = min(float(width), x + w), min(float(height), y + h)
            x, y, w, h = x0, y0, x1 - x0, y1 - y0
            if w < 2 or h < 2:
                continue
        boxes.append((int(round(x)), int(round(y)), int(round(w)), int(round(h))))
    boxes.sort(key=lambda b: -b[2] * b[3])
    return boxes


def crop_box(box, margin, image_shape):
    """The (x, y, w, h) region crop_face takes: a square of side max(w, h) * (1 + 2 * margin) around
    the box centre, moved inside the image where it sticks out (keeping scale and squareness) and
    clipped only where it is bigger than the image."""
    height, width = image_shape[:2]
    x, y, w, h = box
    side = max(w, h) * (1.0 + 2.0 * float(margin))
    cx, cy = x + w / 2.0, y + h / 2.0
    sw, sh = min(side, width), min(side, height)
    x0 = min(max(cx - sw / 2.0, 0.0), width - sw)
    y0 = min(max(cy - sh / 2.0, 0.0), height - sh)
    x0, y0 = int(round(x0)), int(round(y0))
    sw, sh = max(1, int(round(sw))), max(1, int(round(sh)))
    return x0, y0, min(sw, width - x0), min(sh, height - y0)


def crop_face(rgb, box, margin):
    """HxWx3 crop of the face box grown by `margin` of its size on every side (see crop_box)."""
    if margin < -0.45:
        raise ValueError(f"crop margin {margin} would shrink the face box to nothing")
    x, y, w, h = crop_box(box, margin, rgb.shape)
    return np.ascontiguousarray(rgb[y:y + h, x:x + w])


# ----------------------------------------------------------------------------------------------
# Drawing

def annotate(rgb, boxes, ages, labels=None):
    """Copy of rgb with a box and "Age: N" drawn for each face (the original is left untouched)."""
    out = np.ascontiguousarray(rgb).copy()
    height, width = out.shape[:2]
    side = min(height, width)
    thickness = max(1, round(side / 300))
    font_scale = max(0.35, side / 900)
    colour = (40, 220, 40)
    for i, (box, age) in enumerate(zip(boxes, ages)):
        x, y, w, h = (int(v) for v in box)
        cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), colour, thickness)
        text = labels[i] if labels is not None else f"Age: {int(round(float(age)))}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        ty = y - 4 if y - th - base - 4 >= 0 else min(y + h + th + 4, height - base - 1)
        if ty < th:  # no room above or below: inside the box, at its top
            ty = y + th + 4
        tx = min(max(x, 0), max(0, width - tw - 2))
        cv2.rectangle(out, (tx, ty - th - 3), (tx + tw + 2, ty + base), colour, -1)
        cv2.putText(out, text, (tx + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), thickness,
                    cv2.LINE_AA)
    return out


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
        return load_rgb(path)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read {path} as an image ({type(exc).__name__}); pass a JPEG/PNG/... file") from None


def _prepare_output(path, inputs, kind="image"):
    """Check an output path: not one of the inputs, a writable format, parent folder created."""
    path = Path(path)
    for source in inputs:
        if source is not None and path.resolve() == Path(source).resolve():
            raise DataError(f"--output {path} is the input file; choose another name (the input is never overwritten)")
    if path.is_dir():
        raise DataError(f"--output {path} is a folder; give a file name such as {path / ('annotated' + ('.jpg' if kind == 'image' else '.mp4'))}")
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
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        tmp.write_bytes(data.tobytes())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot write {path} ({exc.strerror or exc}); check the output folder") from None


def _default_output(source, suffix=None):
    source = Path(source)
    return source.with_name(f"{source.stem}_age{suffix or source.suffix or '.jpg'}")


def faces_of(rgb, detector, margin, no_detect=False):
    """(boxes, crops, detected) of one image; the whole image is one face when none is detected."""
    height, width = rgb.shape[:2]
    boxes = [] if no_detect else detect_faces(rgb, detector)
    if not boxes:
        return [(0, 0, width, height)], [rgb], False
    return boxes, [crop_face(rgb, b, margin) for b in boxes], True


def _fmt_box(box):
    return ",".join(str(int(v)) for v in box)


# ----------------------------------------------------------------------------------------------
# Modes

def run_image(args, module, metadata, cfg, margin, detector):
    rgb = _read_image(args.image)
    output = _prepare_output(args.output or _default_output(args.image), [args.image])
    boxes, crops, detected = faces_of(rgb, detector, margin, args.no_detect)
    ages = predict_crops(module, metadata, cfg, crops)  # every face of the image in one pass
    _write_image(output, annotate(rgb, boxes, ages))  # drawn after cropping: no box enters a crop
    name = Path(args.image).name
    if args.no_detect:
        print(f"{name}: --no-detect, using the whole image")
    elif not detected:
        print(f"{name}: no face found, using the whole image")
    for box, age in zip(boxes, ages):
        print(f"{name}, box {_fmt_box(box)}, age {age:.1f}")
    print(f"annotated image -> {output}")
    return {"output": str(output), "boxes": boxes, "ages": ages.tolist(), "detected": detected}


def _list_images(folder):
    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    return [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS], [p for p in files
                                                                         if p.suffix.lower() not in IMAGE_EXTENSIONS]


def run_folder(args, module, metadata, cfg, margin, detector):
    in_dir = Path(args.input_dir)
    if not in_dir.is_dir():
        raise DataError(f"input folder not found: {in_dir} (pass --input-dir with an existing folder)")
    if not args.output_dir:
        raise DataError("--input-dir needs --output-dir (where annotated images and predictions.csv go)")
    out_dir = Path(args.output_dir)
    if out_dir.resolve() == in_dir.resolve():
        raise DataError("--output-dir is the input folder; choose another folder (inputs are never overwritten)")
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--output-dir {out_dir} is a file; choose a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the output folder {out_dir} ({exc.strerror or exc})") from None
    if args.batch_size < 1:
        raise DataError(f"--batch-size must be at least 1, got {args.batch_size}")
    images, others = _list_images(in_dir)
    if not images:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {in_dir}")

    start = time.perf_counter()
    rows, pending, skipped = [], [], []
    counts = {"images": 0, "faces": 0, "whole_image": 0}

    def flush():
        crops = [c for item in pending for c in item["crops"]]
        ages = predict_crops(module, metadata, cfg, crops)  # crops of several images in one pass
        i = 0
        for item in pending:
            n = len(item["boxes"])
            item_ages = ages[i:i + n]
            i += n
            _write_image(out_dir / item["path"].name, annotate(item["rgb"], item["boxes"], item_ages))
            for k, (box, age) in enumerate(zip(item["boxes"], item_ages)):
                rows.append({"file": item["path"].name, "face_index": k, "x": box[0], "y": box[1], "w": box[2],
                             "h": box[3], "age": f"{age:.2f}", "detected": "true" if item["detected"] else "false"})
                print(f"{item['path'].name}, box {_fmt_box(box)}, age {age:.1f}"
                      + ("" if item["detected"] else " (no face found, whole image)"))
            counts["images"] += 1
            counts["faces"] += n if item["detected"] else 0
            counts["whole_image"] += 0 if item["detected"] else 1
        pending.clear()

    pending_crops = pending_pixels = 0
    for path in images:
        try:
            rgb = load_rgb(path)
            if min(rgb.shape[:2]) < 2:
                raise ValueError("image too small")
        except Exception as exc:
            skipped.append(path.name)
            print(f"warning: skipping {path.name}: not a readable image ({type(exc).__name__})", file=sys.stderr)
            continue
        boxes, crops, detected = faces_of(rgb, detector, margin, args.no_detect)
        pending.append({"path": path, "rgb": rgb, "boxes": boxes, "crops": crops, "detected": detected})
        pending_crops += len(crops)
        pending_pixels += rgb.size
        if pending_crops >= args.batch_size or pending_pixels > 300_000_000:  # bound memory for big photos
            flush()
            pending_crops = pending_pixels = 0
    if pending:
        flush()
    csv_path = out_dir / "predictions.csv"
    tmp = csv_path.with_name(".predictions.csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "face_index", "x", "y", "w", "h", "age", "detected"])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, csv_path)
    seconds = time.perf_counter() - start
    if skipped:
        print(f"warning: skipped {len(skipped)} unreadable file(s): {', '.join(skipped[:5])}"
              + (" ..." if len(skipped) > 5 else ""), file=sys.stderr)
    if others:
        print(f"ignored {len(others)} file(s) without an image extension")
    print(f"{counts['images']} images, {counts['faces']} detected faces, {counts['whole_image']} images without a "
          f"detected face (whole image used), {len(skipped)} skipped; {counts['images'] / max(seconds, 1e-9):.1f} "
          f"images/s -> {csv_path}")
    return {**counts, "skipped": len(skipped), "csv": str(csv_path), "seconds": seconds}


def run_video(args, module, metadata, cfg, margin, detector):
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
            if args.no_detect:
                boxes = [(0, 0, width, height)]
                crops = [rgb]
            else:
                boxes = detect_faces(rgb, detector)  # no whole-frame fallback: an empty frame stays empty
                crops = [crop_face(rgb, b, margin) for b in boxes]
            ages = predict_crops(module, metadata, cfg, crops)
            _, shown = tracker.update(boxes, ages)
            writer.write(cv2.cvtColor(annotate(rgb, boxes, shown), cv2.COLOR_RGB2BGR))
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


def main(args):
    configure_threads(args.threads)
    if args.output_dir and not args.input_dir:
        raise DataError("--output-dir goes with --input-dir; use --output with --image or --video")
    if args.output and args.input_dir:
        raise DataError("--input-dir writes into --output-dir; --output is for --image and --video")
    module, metadata, cfg = load_model(args.model)
    margin = float(metadata.get("crop_margin", 0.0)) if args.margin is None else args.margin
    if not -0.45 <= margin <= 2.0:
        raise DataError(f"crop margin {margin} is outside -0.45..2; pass --margin with a sensible value")
    detector = None if args.no_detect else load_detector()
    if args.image:
        return run_image(args, module, metadata, cfg, margin, detector)
    if args.input_dir:
        return run_folder(args, module, metadata, cfg, margin, detector)
    return run_video(args, module, metadata, cfg, margin, detector)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
