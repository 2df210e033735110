"""How well does inference.py's Haar face detector work on real faces, and which crop margin
reproduces UTKFace's framing?

    python bench_detection.py --data-dir ../shared/data/UTKFace --limit 300 --out bench/detection.json

On a seeded sample of UTKFace's aligned 200 x 200 crops (read only) it measures
  (a) the detection rate on the crops as they are, with inference.detect_faces and, for comparison,
      with the bare cascade (no border padding, no NMS);
  (b) the detection rate when each face is pasted at a random size (25-60 % of the canvas height)
      and position into a 640 x 480 canvas of random noise and gradients; a face counts as found only
      if a returned box overlaps the pasted square with IoU >= 0.3 (other boxes are false positives);
  (c) the median ratio crop side / detected box side on the aligned crops, from which the crop
      margin that reproduces UTKFace's framing follows: margin = (ratio - 1) / 2.
"""
import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from custom_dataset import DataError, UTKFACE_NAME, load_rgb
from functions import run_cli, same_or_inside
import inference

CANVAS_W, CANVAS_H = 640, 480
FACE_FRACTION = (0.25, 0.60)  # pasted face side as a share of the canvas height
MATCH_IOU = 0.3


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parent.parent / "shared" / "data" / "UTKFace"),
                   help="UTKFace aligned crops (read only; default ../shared/data/UTKFace)")
    p.add_argument("--limit", type=int, default=1000, help="images in the seeded sample")
    p.add_argument("--seed", type=int, default=0, help="sample, canvas and placement seed")
    p.add_argument("--out", default="bench/detection.json", help="JSON with the figures")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


def random_canvas(rng, width=CANVAS_W, height=CANVAS_H) -> np.ndarray:
    """Random background: a colour gradient plus smooth blobs plus pixel noise (uint8 RGB)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xx / width + np.sin(angle) * yy / height)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    cells = rng.integers(3, 9)
    blobs = cv2.resize(rng.uniform(-60, 60, (cells, cells, 3)).astype(np.float32), (width, height),
                       interpolation=cv2.INTER_CUBIC)
    img = img + blobs + rng.normal(0, rng.uniform(3, 25), (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def paste_face(rgb, rng, canvas):
    """Paste a resized face at a random place; returns (canvas copy, true box (x, y, w, h))."""
    height, width = canvas.shape[:2]
    side = int(round(rng.uniform(*FACE_FRACTION) * height))
    x = int(rng.integers(0, width - side + 1))
    y = int(rng.integers(0, height - side + 1))
    out = canvas.copy()
    interp = cv2.INTER_AREA if side < min(rgb.shape[:2]) else cv2.INTER_LINEAR
    out[y:y + side, x:x + side] = cv2.resize(rgb, (side, side), interpolation=interp)
    return out, (x, y, side, side)


def bare_cascade(rgb, detector):
    """The cascade as most tutorials call it: no padding, no NMS (baseline for (a))."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    found = detector.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=inference.MIN_NEIGHBORS, minSize=(24, 24))
    return [tuple(int(v) for v in b) for b in found]


def main(args):
    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        raise DataError(f"UTKFace folder not found: {data_dir} (pass --data-dir)")
    out = Path(args.out)
    if same_or_inside(out, data_dir):
        raise DataError(f"--out {out} is inside the data folder, which is read only; write elsewhere")
    if args.limit < 1:
        raise DataError(f"--limit must be at least 1, got {args.limit}")
    files = sorted(p for p in data_dir.iterdir() if p.is_file() and UTKFACE_NAME.match(p.name))
    if not files:
        raise DataError(f"no UTKFace images (AGE_GENDER_RACE_DATE.jpg.chip.jpg) in {data_dir}")
    rng = np.random.default_rng(args.seed)
    sample = [files[i] for i in sorted(rng.choice(len(files), size=min(args.limit, len(files)), replace=False))]
    detector = inference.load_detector()

    n = unreadable = 0
    aligned_hit = aligned_hit_iou = bare_hit = pasted_hit = false_pos = 0
    ratios, bare_ratios, pasted_ious = [], [], []
    seconds = {"aligned": 0.0, "pasted": 0.0}
    start = time.perf_counter()
    for path in sample:
        try:
            rgb = load_rgb(path)
        except Exception:
            unreadable += 1
            continue
        n += 1
        height, width = rgb.shape[:2]
        # (a) + (c): the aligned crop as it is
        t0 = time.perf_counter()
        boxes = inference.detect_faces(rgb, detector, clip=False)
        seconds["aligned"] += time.perf_counter() - t0
        if boxes:
            aligned_hit += 1
            aligned_hit_iou += max(inference.iou(b, (0, 0, width, height)) for b in boxes) >= MATCH_IOU
            ratios.append(width / boxes[0][2])  # largest box = the face
        bare = bare_cascade(rgb, detector)
        if bare:
            bare_hit += 1
            bare_ratios.append(width / max(b[2] for b in bare))
        # (b): pasted into a bigger random canvas
        canvas, truth = paste_face(rgb, rng, random_canvas(rng))
        t0 = time.perf_counter()
        boxes = inference.detect_faces(canvas, detector)
        seconds["pasted"] += time.perf_counter() - t0
        overlaps = [inference.iou(b, truth) for b in boxes]
        best = max(overlaps, default=0.0)
        pasted_ious.append(best)
        pasted_hit += best >= MATCH_IOU
        false_pos += sum(o < MATCH_IOU for o in overlaps)
    if n == 0:
        raise DataError(f"none of the {len(sample)} sampled images in {data_dir} could be read")

    ratio = float(np.median(ratios)) if ratios else float("nan")
    bare_ratio = float(np.median(bare_ratios)) if bare_ratios else float("nan")
    result = {
        "data_dir": str(data_dir), "images": n, "unreadable": unreadable, "seed": args.seed,
        "detector": {"cascade": inference.CASCADE_FILE, "scale_factor": inference.SCALE_FACTOR,
                     "min_neighbors": inference.MIN_NEIGHBORS, "min_face_fraction": inference.MIN_FACE_FRACTION,
                     "pad_fraction": inference.PAD_FRACTION, "nms_iou": inference.NMS_IOU,
                     "max_detect_side": inference.MAX_DETECT_SIDE},
        "aligned": {"detection_rate": aligned_hit / n, "detection_rate_iou_0.3_with_crop": aligned_hit_iou / n,
                    "bare_cascade_detection_rate": bare_hit / n,
                    "ms_per_image": 1000 * seconds["aligned"] / n},
        "pasted": {"canvas": [CANVAS_W, CANVAS_H], "face_fraction_of_height": list(FACE_FRACTION),
                   "match_iou": MATCH_IOU, "detection_rate": pasted_hit / n,
                   "median_best_iou": float(np.median(pasted_ious)),
                   "false_positives_per_image": false_pos / n, "ms_per_image": 1000 * seconds["pasted"] / n},
        "framing": {"median_crop_over_box": ratio,
                    "quartiles_crop_over_box": [float(v) for v in np.percentile(ratios, [25, 75])] if ratios else None,
                    "recommended_crop_margin": (ratio - 1) / 2,
                    "bare_cascade_median_crop_over_box": bare_ratio,
                    "note": "margin = (ratio - 1) / 2; the bare cascade only finds the faces smaller than the "
                            "crop, so its ratio is biased upwards"},
        "seconds": time.perf_counter() - start,
    }
    print(f"{n} UTKFace images ({unreadable} unreadable) from {data_dir}, {result['seconds']:.0f} s")
    print(f"(a) aligned 200x200 crops: detection rate {result['aligned']['detection_rate']:.1%} "
          f"(box IoU >= 0.3 with the crop: {result['aligned']['detection_rate_iou_0.3_with_crop']:.1%}); "
          f"bare cascade without padding: {result['aligned']['bare_cascade_detection_rate']:.1%}")
    print(f"(b) pasted into {CANVAS_W}x{CANVAS_H} canvases at {FACE_FRACTION[0]:.0%}-{FACE_FRACTION[1]:.0%} of the height: "
          f"detection rate (IoU >= {MATCH_IOU}) {result['pasted']['detection_rate']:.1%}, median IoU "
          f"{result['pasted']['median_best_iou']:.2f}, {result['pasted']['false_positives_per_image']:.2f} false "
          f"positives per image, {result['pasted']['ms_per_image']:.0f} ms per image")
    print(f"(c) crop side / box side: median {ratio:.3f} -> crop margin {(ratio - 1) / 2:.3f} "
          f"(bare cascade, biased: {bare_ratio:.3f} -> {(bare_ratio - 1) / 2:.3f})")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out}")
    return result


if __name__ == "__main__":
    run_cli(main, get_args_parser())
