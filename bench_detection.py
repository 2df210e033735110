"""Which face detector finds real faces, and does the chip reproduce UTKFace's crop?

    python bench_detection.py --limit 300 --fgnet-limit 1002 --out bench/detection.json
    python bench_detection.py --fit-chip5 300        # refit faces.UTKFACE_CROP5's template (prints it)
    python bench_detection.py --zoom-cost --model M  # only what M's test-time zooms add end to end (paired)
    python bench_detection.py --size-light 80 --model M  # only M's age error by face size and brightness

Measured per detector of faces.DETECTORS (data read in place, never written):
  (a) scenes: UTKFace chips pasted into 640 x 480 random backgrounds at 15-80 % of the height,
      turned by up to +-20 degrees, the whole scene made darker or brighter (gain 0.35-1.8). A face
      counts as found when a box's centre lies within a quarter of the chip's side from the chip's
      centre and the box is 40-140 % of the chip's side (HOG's box is about 0.93 of a UTKFace chip); every
      other box is a false box.
  (a') the same scenes turned a quarter (counter-clockwise and clockwise in turn): a photo saved sideways
      without an EXIF tag; found and false boxes as in (a).
  (b) FG-NET: the full scanned photos (one person each, a few with more): share of photos with at
      least one box (its position is not checked: FG-NET has no face boxes here), boxes per photo.
  (c) as many other random backgrounds of the same kind, without a face and at normal brightness (no
      gain): false boxes per image (what the fallback passes invent).
  (d) ms per photo: detection alone, and with --model the whole chain (detect, landmarks, chip,
      preprocess, predict) through inference.AgeEstimator on the 640 x 480 scenes, with the detector
      inference.py picks for the model.
  (e) crop fidelity: UTKFace files re-chipped from a border-padded copy with faces.UTKFACE_CROP and
      UTKFACE_CROP5; mean absolute difference to the file (0-255).
mmod costs seconds per photo, so --mmod-limit caps its sample: a seeded spread of the scenes, faceless
backgrounds and FG-NET photos (--fgnet-limit draws FG-NET's the same way), never the first by file name.
"""
import json
import shlex
import statistics
import time
from pathlib import Path

from cli import ArgumentParser, run_cli  # first: cli._missing_package_hook
import cv2
import numpy as np

import faces
from custom_dataset import DARK_FLOOR_PERCENTILE, DataError, UTKFACE_NAME, exposure_luma, load_rgb
from functions import atomic_write, same_or_inside
CANVAS_W, CANVAS_H = 640, 480
FACE_FRACTION = (0.15, 0.80)  # pasted chip side as a share of the canvas height
MAX_TILT = 20.0               # degrees
GAIN = (0.35, 1.8)            # scene brightness factor, log-uniform
SIZE_SIDES = (20, 24, 32, 40, 48, 64, 96, 160)  # --size-light: pasted chip sides (px), at the scenes' own brightness
LIGHT_GAINS = (0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 1.8)  # ... and scene gains, the chip at LIGHT_SIDE px
LIGHT_SIDE = 240
CHIP_PAD = 60                 # replicated border around a UTKFace file before re-chipping it


def get_args_parser():
    here = Path(__file__).resolve().parent
    p = ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", default=str(here.parent / "shared" / "data" / "UTKFace"),
                   help="UTKFace chips (read only; default: %(default)s)")
    p.add_argument("--fgnet-dir", default=str(here.parent / "shared" / "data" / "FGNET"),
                   help="FG-NET photos (read only; skipped if absent; default: %(default)s)")
    p.add_argument("--detectors", default=",".join(faces.DETECTORS), help="comma-separated (default: %(default)s)")
    p.add_argument("--limit", type=int, default=300, help="pasted scenes (default: %(default)s)")
    p.add_argument("--fgnet-limit", type=int, default=1002, help="FG-NET photos, a seeded spread of them (default: %(default)s)")
    p.add_argument("--mmod-limit", type=int, default=60, help="scenes, faceless backgrounds and photos for mmod, a seeded spread of each "
                   "(default: %(default)s)")
    p.add_argument("--chip-limit", type=int, default=150, help="UTKFace files re-chipped for (e) (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="sample and scene seed (default: %(default)s)")
    p.add_argument("--model", default=None,
                   help="also time the whole chain with this model.onnx (with the detector inference.py picks for "
                        "it: its training chips', else auto)")
    p.add_argument("--zoom-cost", action="store_true",
                   help="only time --model's whole chain with and without its test-time zooms on the scenes (paired) "
                        "and add the figures to --out's end_to_end record; the detectors are not run again")
    p.add_argument("--size-light", type=int, default=0, metavar="N",
                   help="only measure --model's age error on N UTKFace files pasted upright at each face size of "
                        "SIZE_SIDES and each brightness of LIGHT_GAINS (with no --min-face), and add the figures to "
                        "--out; the detectors are not run again")
    p.add_argument("--threads", type=int, default=2, help="threads for OpenCV and the model (default: %(default)s)")
    p.add_argument("--fit-chip5", type=int, default=0, metavar="N",
                   help="only fit the 5-point chip template on N UTKFace files and print it")
    p.add_argument("--out", default="bench/detection.json", help="JSON with the figures (default: %(default)s)")
    p.add_argument("--table", action="store_true", help="only print the detector and crop tables from --out")
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


def make_scene(chip, rng, gain=None, side=None, tilt=None):
    """(scene, (centre x, centre y, side)): the chip resized, turned and pasted into a random canvas,
    then the whole scene's brightness scaled (by `gain`, or a random one from GAIN); side (pixels) and tilt
    (degrees) are drawn where not given."""
    canvas = random_canvas(rng)
    side = int(round(rng.uniform(*FACE_FRACTION) * CANVAS_H)) if side is None else side
    tilt = rng.uniform(-MAX_TILT, MAX_TILT) if tilt is None else tilt
    face = cv2.resize(chip, (side, side), interpolation=cv2.INTER_AREA if side < chip.shape[0] else cv2.INTER_LINEAR)
    m = cv2.getRotationMatrix2D((side / 2, side / 2), tilt, 1.0)
    turned = cv2.warpAffine(face, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # the turned square's own corners are cut off by a round mask, so no straight chip edge is left to see
    mask = np.zeros((side, side), np.uint8)
    cv2.circle(mask, (side // 2, side // 2), side // 2, 1, -1)
    x = int(rng.integers(0, CANVAS_W - side + 1))
    y = int(rng.integers(0, CANVAS_H - side + 1))
    region = canvas[y:y + side, x:x + side]
    region[mask > 0] = turned[mask > 0]
    drawn = float(np.exp(rng.uniform(np.log(GAIN[0]), np.log(GAIN[1]))))
    gain = drawn if gain is None else gain
    scene = np.clip(canvas.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    return scene, (x + side / 2, y + side / 2, side)


def is_hit(box, truth) -> bool:
    cx, cy, side = truth
    bx, by, bw, bh = box
    near = max(abs(bx + bw / 2 - cx), abs(by + bh / 2 - cy)) <= 0.25 * side
    return near and 0.4 * side <= max(bw, bh) <= 1.4 * side


def utkface_files(data_dir):
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"UTKFace folder not found: {data_dir} (pass --data-dir)")
    files = sorted(p for p in data_dir.iterdir() if p.is_file() and UTKFACE_NAME.match(p.name))
    if not files:
        raise DataError(f"no UTKFace images (AGE_GENDER_RACE_DATE.jpg.chip.jpg) in {data_dir}")
    return files


def sample(files, n, rng):
    return [files[i] for i in sorted(rng.choice(len(files), size=min(n, len(files)), replace=False))]


def scenes_figures(pipe, scenes):
    hits = false_boxes = 0
    ms = []
    for scene, truth in scenes:
        t0 = time.perf_counter()
        found = pipe.detect(scene)
        ms.append(1000 * (time.perf_counter() - t0))
        matched = [is_hit(f.box, truth) for f in found]
        hits += any(matched)
        false_boxes += len(found) - (1 if any(matched) else 0)
    n = len(scenes)
    return {"n": n, "detection_rate": hits / n, "false_boxes_per_image": false_boxes / n,
            "ms_per_photo": statistics.median(ms)}


def sideways(scenes):
    """The scenes turned a quarter, counter-clockwise and clockwise in turn, their faces' centres with them: photos
    saved sideways without an EXIF tag (a scan fed in sideways, a phone's photo whose tag was stripped)."""
    turned = []
    for index, (scene, (cx, cy, side)) in enumerate(scenes):
        height, width = scene.shape[:2]
        if index % 2 == 0:  # np.rot90 once takes (x, y) to (y, width - 1 - x)
            turned.append((np.ascontiguousarray(np.rot90(scene, 1)), (cy, width - 1 - cx, side)))
        else:  # three times, to (height - 1 - y, x)
            turned.append((np.ascontiguousarray(np.rot90(scene, 3)), (height - 1 - cy, cx, side)))
    return turned


def faceless_figures(pipe, backgrounds):
    boxes = sum(len(pipe.detect(b)) for b in backgrounds)
    return {"n": len(backgrounds), "false_boxes_per_image": boxes / max(1, len(backgrounds))}


def end_to_end_ms(model, scenes, threads):
    """Median ms per 640 x 480 scene through inference.AgeEstimator: detect, align, preprocess, predict. The
    detector is the one inference.py chooses for the model (its chips' detector, else the default)."""
    import inference
    estimator = inference.AgeEstimator(model, None, threads=threads)
    estimator.estimate(scenes[0][0])  # warm-up: first-call allocations
    ms = []
    for scene, _ in scenes:
        t0 = time.perf_counter()
        estimator.estimate(scene)
        ms.append(1000 * (time.perf_counter() - t0))
    return {"model": str(model), "detector": estimator.pipeline.detector, "tta_zoom": list(estimator.tta_zoom),
            "min_face": estimator.min_face, "n": len(ms),
            "ms_per_photo_median": statistics.median(ms),
            "ms_per_photo_mean": float(np.mean(ms)), "ms_per_photo_p90": float(np.percentile(ms, 90))}


def zoom_cost_ms(model, scenes, threads) -> dict:
    """What the model's test-time zooms cost end to end: each scene through inference.AgeEstimator once with the
    export's zooms and once without, in alternating order (so that a machine slowing down or speeding up during
    the run touches both alike). Medians per photo and the median of the paired differences."""
    import datetime
    import inference
    estimator = inference.AgeEstimator(model, None, threads=threads)  # inference.py's choice for this model
    zooms = estimator.tta_zoom
    if not zooms:
        raise DataError(f"{model} has no test-time zooms in its metadata; there is nothing to cost")
    estimator.estimate(scenes[0][0])
    ms = {"with": [], "without": []}
    for i, (scene, _) in enumerate(scenes):
        for key in ("with", "without") if i % 2 else ("without", "with"):
            estimator.tta_zoom = zooms if key == "with" else ()
            t0 = time.perf_counter()
            estimator.estimate(scene)
            ms[key].append(1000 * (time.perf_counter() - t0))
    return {"model": str(model), "detector": estimator.pipeline.detector, "zooms": list(zooms), "n": len(scenes),
            "date": datetime.date.today().isoformat(),
            "ms_per_photo_median_with": statistics.median(ms["with"]),
            "ms_per_photo_median_without": statistics.median(ms["without"]),
            "paired_difference_median_ms": float(np.median(np.subtract(ms["with"], ms["without"])))}


def size_light_error(model, chips, rng, threads) -> dict:
    """The model's age error through inference.AgeEstimator (no --min-face) on the same faces (chip, true age)
    pasted upright into random scenes: by chip side at the original brightness, then by scene gain at
    LIGHT_SIDE px. Per condition: share found, MAE of those found, median box side; and the faces' own
    MAE (the files given directly) for scale. How small and how dark a face can be before its age is a guess."""
    import inference
    estimator = inference.AgeEstimator(model, None, threads=threads, min_face=0)
    direct = inference.AgeEstimator(model, None, whole_image=True, threads=threads, min_face=0)

    floor = estimator.dark_floor

    def judge(side, gain):
        errors, unlifted, boxes = [], [], []
        for chip, age in chips:
            scene, truth = make_scene(chip, rng, gain, side=side, tilt=0.0)
            found, _, ages = estimator.estimate(scene)
            hit = [(f, a) for f, a in zip(found, ages) if is_hit(f.box, truth)]
            if hit:
                errors.append(abs(float(hit[0][1]) - age))
                boxes.append(min(hit[0][0].box[2:]))
                estimator.dark_floor = 0.0  # the same face as the model sees it without the floor
                try:
                    unlifted.append(abs(float(estimator.predict_inputs(estimator.model_inputs([hit[0][0].chip]))[0])
                                        - age))
                finally:
                    estimator.dark_floor = floor
        return {"found": len(errors) / len(chips), "mae": float(np.mean(errors)) if errors else None,
                "mae_without_dark_floor": float(np.mean(unlifted)) if unlifted else None,
                "box_side_median": float(np.median(boxes)) if boxes else None}

    result = {"model": str(model), "n": len(chips), "light_side": LIGHT_SIDE, "dark_floor": floor,
              "mae_direct": float(np.mean([abs(float(direct.estimate(c)[2][0]) - a) for c, a in chips])),
              "by_side": {}, "by_gain": {}}
    for side in SIZE_SIDES:
        result["by_side"][str(side)] = r = judge(side, 1.0)
        print(f"chip side {side} px: found {r['found']:.0%}, MAE {r['mae'] or float('nan'):.2f}", flush=True)
    for gain in LIGHT_GAINS:
        result["by_gain"][str(gain)] = r = judge(LIGHT_SIDE, gain)
        print(f"gain {gain}: found {r['found']:.0%}, MAE {r['mae'] or float('nan'):.2f}", flush=True)
    return result


def size_light_table(result) -> str:
    """--size-light's figures as a Markdown table ("" when they were not measured)."""
    r = result.get("size_light")
    if not r:
        return ""
    cell = lambda x, key="mae": "-" if x.get(key) is None else f"{x[key]:.2f}"
    box = lambda x: "-" if x["box_side_median"] is None else f"{x['box_side_median']:.0f}"
    floor = r.get("dark_floor")
    lines = ["| pasted face | box side (median, px) | found | MAE |"
             + (" MAE with `--dark-floor 0` |" if floor else ""), "|---|---|---|---|" + ("---|" if floor else ""),
             f"| the files themselves (no detection) | - | - | {r['mae_direct']:.2f} |" + (" - |" if floor else "")]
    rows = [(f"{side} px", x) for side, x in r["by_side"].items()]
    rows += [(f"{r['light_side']} px, scene ×{gain}", x) for gain, x in r["by_gain"].items()]
    lines += [f"| {what} | {box(x)} | {x['found']:.0%} | {cell(x)} |" + (f" {cell(x, 'mae_without_dark_floor')} |"
                                                                         if floor else "") for what, x in rows]
    if r.get("luma_percentiles"):
        lines += ["", f"Exposure (`custom_dataset.exposure_luma`: the 95th percentile of luma, 0-255) of UTKFace's "
                  f"{r['luma_files']:,} files, percentiles: "
                  + ", ".join(f"{q}%: {v:.0f}" for q, v in r["luma_percentiles"].items())]
    return "\n".join(lines)


def add_size_light(args, files, rng, out):
    """--size-light N: size_light_error on N UTKFace files, into --out (whatever scenes its detectors saw)."""
    if not args.model:
        raise DataError("--size-light measures --model's age error; pass --model MODEL.onnx")
    result = read_result(out)
    cv2.setNumThreads(args.threads)
    chips = [(load_rgb(p), int(p.name.split("_")[0])) for p in sample(files, args.size_light, rng)]
    result["size_light"] = figures = size_light_error(args.model, chips, rng, args.threads)
    figures["seed"] = args.seed
    # how dark UTKFace's own faces are (as lift_dark measures a face), every file (seconds): where
    # inference.DEFAULT_DARK_FLOOR comes from
    luma = [exposure_luma(load_rgb(p)) for p in files]
    figures["luma_files"] = len(luma)
    figures["luma_percentiles"] = {str(q): float(np.percentile(luma, q)) for q in (DARK_FLOOR_PERCENTILE, 5, 50)}
    print("exposure of UTKFace's files, percentiles: " + ", ".join(
        f"{q}%: {v:.1f}" for q, v in figures["luma_percentiles"].items()))
    atomic_write(out, lambda f: f.write((json.dumps(result, indent=2) + "\n").encode()))
    print(f"-> {out}")
    return figures


def fgnet_figures(pipe, photos):
    found_any = boxes = 0
    ms = []
    for rgb in photos:
        t0 = time.perf_counter()
        found = pipe.detect(rgb)
        ms.append(1000 * (time.perf_counter() - t0))
        found_any += bool(found)
        boxes += len(found)
    n = len(photos)
    return {"n": n, "photos_with_a_face": found_any / n, "boxes_per_photo": boxes / n,
            "ms_per_photo": statistics.median(ms)}


def chip_fidelity(files, crop):
    """Mean absolute difference (0-255) between UTKFace files and their re-made chips."""
    pipe = faces.FacePipeline(crop=crop, detector="hog")
    diffs, missed = [], 0
    for path in files:
        rgb = load_rgb(path)
        padded = cv2.copyMakeBorder(rgb, CHIP_PAD, CHIP_PAD, CHIP_PAD, CHIP_PAD, cv2.BORDER_REPLICATE)
        found = pipe.faces(padded)
        if not found or found[0].chip.shape != rgb.shape:
            missed += 1
            continue
        diffs.append(float(np.abs(found[0].chip.astype(np.float64) - rgb).mean()))
    return {"n": len(diffs), "no_face": missed, "mean_abs_diff": float(np.mean(diffs)),
            "median_abs_diff": float(np.median(diffs)), "share_under_8": float(np.mean(np.array(diffs) < 8))}


def fit_chip5_template(files):
    """Mean position of dlib's 5 landmarks in UTKFace's own chips: the 5-point crop's template."""
    pipe = faces.FacePipeline(detector="hog")
    points = []
    for path in files:
        rgb = load_rgb(path)
        padded = cv2.copyMakeBorder(rgb, CHIP_PAD, CHIP_PAD, CHIP_PAD, CHIP_PAD, cv2.BORDER_REPLICATE)
        found = pipe.detect(padded)
        if found:
            shape = faces.shape_predictor(5)(padded, faces._box_to_rect(found[0].rect))
            points.append([[p.x - CHIP_PAD, p.y - CHIP_PAD] for p in shape.parts()])
    return np.round(np.mean(points, axis=0), 2).tolist(), len(points)


CROP_LICENCES = {"utkface": "68-point model trained on iBUG 300-W: non-commercial only",
                 "utkface5": "5-point model trained on dlib's CC0 data set: commercial use allowed"}


def detector_table(result) -> str:
    """The detector comparison as a Markdown table, from a result of main()."""
    lines = ["| detector | scenes: faces found | false boxes per scene | sideways scenes: faces found (false boxes) | "
             "faceless scenes: false boxes | FG-NET: photos with a face box | FG-NET: boxes per photo | "
             "ms per 640×480 scene (median) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in result["detectors"].items():
        fg, side = r.get("fgnet"), r.get("sideways")
        fg_cells = f"{fg['photos_with_a_face']:.1%} | {fg['boxes_per_photo']:.2f}" if fg else "- | -"
        side_cell = f"{side['detection_rate']:.1%} ({side['false_boxes_per_image']:.3f})" if side else "-"
        n = f" (n = {r['scenes']['n']})" if name == "mmod" else ""
        lines.append(f"| `{name}`{n} | {r['scenes']['detection_rate']:.1%} | {r['scenes']['false_boxes_per_image']:.3f} | "
                     f"{side_cell} | {r['faceless']['false_boxes_per_image']:.3f} | {fg_cells} | "
                     f"{r['scenes']['ms_per_photo']:.1f} |")
    return "\n".join(lines)


def crop_table(result) -> str:
    """The crop-fidelity comparison as a Markdown table ("" when it was not measured)."""
    crops = ["| crop (`faces.CROPS`) | what | re-made UTKFace chip vs the file (mean abs. difference, 0–255) | "
             "landmark model |", "|---|---|---|---|"]
    for name, r in result.get("chip_fidelity", {}).items():
        crops.append(f"| `{name}` | {faces.describe_crop(faces.CROPS[name])} | {r['mean_abs_diff']:.1f} "
                     f"(median {r['median_abs_diff']:.1f}, {r['share_under_8']:.0%} under 8; n = {r['n']}) | "
                     f"{CROP_LICENCES[name]} |")
    return "\n".join(crops) if len(crops) > 2 else ""


def tables(result) -> str:
    """The detector, crop and face size/brightness tables, from a result of main()."""
    return "\n\n".join(t for t in (detector_table(result), crop_table(result), size_light_table(result)) if t)


def command(result) -> str:
    """The bench_detection.py command line that wrote a result (flags at their default left out)."""
    defaults = get_args_parser().parse_args([])
    detectors = result["detectors"]
    values = {"--detectors": ",".join(detectors),
              "--limit": result["scenes"].get("limit") or max((d["scenes"]["n"] for d in detectors.values()),
                                                              default=defaults.limit),
              "--fgnet-limit": max((d["fgnet"]["n"] for d in detectors.values() if "fgnet" in d),
                                   default=defaults.fgnet_limit),
              "--mmod-limit": detectors["mmod"]["scenes"]["n"] if "mmod" in detectors else defaults.mmod_limit,
              "--chip-limit": next((r["n"] + r["no_face"] for r in result.get("chip_fidelity", {}).values()), 0),
              "--seed": result["scenes"].get("seed", defaults.seed),
              "--model": result.get("end_to_end", {}).get("model")}
    argv = ["python", "bench_detection.py"]
    for flag, value in values.items():  # limits always spelled out; the rest only where not the default
        if value is not None and (flag.endswith("-limit") or value != getattr(defaults, flag[2:].replace("-", "_"))):
            argv += [flag, str(value)]
    return shlex.join(argv)


def print_detector(name, entry):
    scenes, faceless, fg, side = entry["scenes"], entry["faceless"], entry.get("fgnet"), entry["sideways"]
    print(f"{name:7s} scenes: found {scenes['detection_rate']:.1%}, {scenes['false_boxes_per_image']:.3f} false "
          f"boxes/image, {scenes['ms_per_photo']:.1f} ms/photo (n={scenes['n']}); sideways: found "
          f"{side['detection_rate']:.1%}, {side['false_boxes_per_image']:.3f} false boxes/image; no face: "
          f"{faceless['false_boxes_per_image']:.3f} false boxes/image"
          + (f" | FG-NET: {fg['photos_with_a_face']:.1%} of photos with a face box, {fg['boxes_per_photo']:.2f} "
             f"boxes/photo, {fg['ms_per_photo']:.1f} ms/photo (n={fg['n']})" if fg else ""), flush=True)


def spread_subset(items, n, seed):
    """n of items drawn at random (seeded), in their order: the first n of a list sorted by file name are
    UTKFace's ages 10-19 and 100-116, FG-NET's first two people."""
    return sample(items, n, np.random.default_rng([seed, n]))  # its own generator: the scenes' stream is untouched


def compare_detectors(detectors, scenes, backgrounds, photos, mmod_limit, seed=0):
    """(a)-(c) for each detector: {name: figures}; mmod, seconds per photo, on a random mmod_limit of each."""
    out = {}
    for name in detectors:
        pipe = faces.FacePipeline(detector=name)
        cap = mmod_limit if name == "mmod" else len(scenes) + len(backgrounds) + len(photos)
        start = time.perf_counter()
        entry = {"scenes": scenes_figures(pipe, spread_subset(scenes, cap, seed)),
                 "sideways": scenes_figures(pipe, sideways(spread_subset(scenes, cap, seed))),
                 "faceless": faceless_figures(pipe, spread_subset(backgrounds, cap, seed))}
        if photos:
            entry["fgnet"] = fgnet_figures(pipe, spread_subset(photos, cap, seed))
        entry["seconds"] = round(time.perf_counter() - start, 1)
        out[name] = entry
        print_detector(name, entry)
    return out


def checked_detectors(args):
    if min(args.fgnet_limit, args.chip_limit) < 0:
        raise DataError("--fgnet-limit and --chip-limit must not be negative (0 leaves that part out)")
    detectors = [d.strip() for d in args.detectors.split(",") if d.strip()]
    if args.limit < 1 or ("mmod" in detectors and args.mmod_limit < 1):  # figures are rates over the scenes
        raise DataError(f"--limit and --mmod-limit must be at least 1, got {args.limit} and {args.mmod_limit} "
                        "(to leave mmod out, leave it out of --detectors)")
    unknown = [d for d in detectors if d not in faces.DETECTORS]
    if unknown:
        raise DataError(f"unknown detector(s) {', '.join(unknown)}; choose from {', '.join(faces.DETECTORS)}")
    return detectors


def main(args):
    if args.table:
        print(tables(read_result(Path(args.out))))
        return None
    data_dir, out, fgnet_dir = Path(args.data_dir), Path(args.out), Path(args.fgnet_dir)
    for folder in (data_dir, fgnet_dir):
        if same_or_inside(out, folder):
            raise DataError(f"--out {out} is inside the data folder {folder}, which is read only; write elsewhere")
    detectors = checked_detectors(args)  # a flag's mistake is said before the data folder is looked for
    files = utkface_files(data_dir)
    rng = np.random.default_rng(args.seed)
    if args.fit_chip5:
        template, n = fit_chip5_template(sample(files, args.fit_chip5, rng))
        print(f"5-point template from {n} UTKFace chips: {template}")
        return {"template": template, "n": n}
    if args.zoom_cost:
        return add_zoom_cost(args, files, rng, out)
    if args.size_light:
        return add_size_light(args, files, rng, out)
    cv2.setNumThreads(args.threads)
    scenes = [make_scene(load_rgb(p), rng) for p in sample(files, args.limit, rng)]
    backgrounds = [random_canvas(rng) for _ in range(args.limit)]
    fgnet = spread_subset(sorted(p for p in fgnet_dir.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")),
                          args.fgnet_limit, args.seed) if fgnet_dir.is_dir() else []
    photos = [load_rgb(p) for p in fgnet]
    result = {"scenes": {"canvas": [CANVAS_W, CANVAS_H], "face_fraction_of_height": list(FACE_FRACTION),
                         "max_tilt_degrees": MAX_TILT, "gain": list(GAIN), "seed": args.seed, "limit": args.limit,
                         "data_dir": str(data_dir.resolve()), "fgnet_limit": len(photos)},
              "fgnet_dir": str(fgnet_dir.resolve()) if photos else None,
              "detectors": compare_detectors(detectors, scenes, backgrounds, photos, args.mmod_limit, args.seed)}
    if args.model:
        result["end_to_end"] = e2e = end_to_end_ms(args.model, scenes, args.threads)
        print(f"end to end with {args.model}: median {e2e['ms_per_photo_median']:.1f} ms per 640x480 photo "
              f"(mean {e2e['ms_per_photo_mean']:.1f}, 90th percentile {e2e['ms_per_photo_p90']:.1f})")
    if args.chip_limit:
        chip_files = sample(files, args.chip_limit, rng)
        result["chip_fidelity"] = {name: chip_fidelity(chip_files, faces.CROPS[name]) for name in ("utkface", "utkface5")}
        for name, figures in result["chip_fidelity"].items():
            print(f"chip {name}: mean |chip - UTKFace file| {figures['mean_abs_diff']:.2f} "
                  f"(median {figures['median_abs_diff']:.2f}, {figures['share_under_8']:.0%} under 8; n={figures['n']})")
    result = with_earlier_figures(result, out)
    atomic_write(out, lambda f: f.write((json.dumps(result, indent=2) + "\n").encode()))
    print(f"-> {out}")
    return result


def read_result(path: Path) -> dict:
    """A detection.json written by this script, or one line saying what it is not."""
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} is not there; run bench_detection.py first") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not readable JSON ({type(exc).__name__}); pass bench_detection.py's --out") from None
    if not isinstance(result, dict) or not isinstance(result.get("detectors"), dict) or "scenes" not in result:
        raise DataError(f"{path} is no bench_detection.py result (no detectors and scenes); pass its --out "
                        "(bench/detection.json)")
    return result


def with_earlier_figures(result: dict, out: Path) -> dict:
    """result plus what the earlier --out holds and this run did not measure (a run without --model, or with
    --detectors hog alone, dropped the end-to-end time and the other detectors' rows): kept where that run
    used the same scenes (the chip check needs none); dropped, and said so, where not."""
    try:
        earlier = json.loads(out.read_text()) if out.is_file() else {}
    except (OSError, ValueError):
        return result
    # a file from before a setting was recorded is taken at its word for it (it was written with the limit, the
    # data folders and the FG-NET count of its day); one that records another value is other scenes
    was, now = earlier.get("scenes", {}), result["scenes"]
    at_its_word = lambda key: was.get(key, now.get(key)) == now.get(key)
    fgnet_keys = ("fgnet_limit",)
    same_scenes = {k: v for k, v in was.items() if k not in ("limit", "data_dir", *fgnet_keys)} == \
        {k: v for k, v in now.items() if k not in ("limit", "data_dir", *fgnet_keys)} and \
        at_its_word("limit") and at_its_word("data_dir")
    same_fgnet = at_its_word("fgnet_limit") and earlier.get("fgnet_dir") in (result.get("fgnet_dir"), None)
    rows = dict(result["detectors"])
    for name, row in earlier.get("detectors", {}).items():
        if name not in rows and same_scenes and same_fgnet:
            rows[name] = row
            print(f"kept detector {name}'s row from {out} (the same scenes and photos)")
    # in faces.DETECTORS' order, whichever run measured a row: the table and its command read the same each time
    order = [d for d in faces.DETECTORS if d in rows] + [d for d in rows if d not in faces.DETECTORS]
    merged = dict(result, detectors={name: rows[name] for name in order})
    # what each figure was measured on: the scenes (end to end, zoom cost), the UTKFace files (chips)
    depends = {"end_to_end": same_scenes, "zoom_cost": same_scenes, "chip_fidelity": at_its_word("data_dir"),
               "size_light": at_its_word("data_dir")}
    for key, same in depends.items():
        if key in earlier and key not in result:
            if same:
                merged[key] = earlier[key]
                print(f"kept {key} from {out}")
            else:
                print(f"note: {out}'s {key} was measured on other scenes or files; dropped (measure it again)")
    return merged


def add_zoom_cost(args, files, rng, out):
    """--zoom-cost: zoom_cost_ms on the same scenes as a full run (same --seed and --limit), into --out."""
    if not args.model:
        raise DataError("--zoom-cost times --model's zooms; pass --model MODEL.onnx")
    result = read_result(out)
    e2e, scenes_of_file = result.get("end_to_end") or {}, result.get("scenes") or {}
    if e2e.get("model") is None:
        raise DataError(f"--zoom-cost adds to the end-to-end figures of {out}, which has none; run "
                        "bench_detection.py with --model first")
    if Path(e2e["model"]).resolve() != Path(args.model).resolve():
        raise DataError(f"{out}'s end-to-end figures are of {e2e['model']}, not --model {args.model}: the zooms' cost "
                        "would be set beside another model's time; pass that model or measure this one first")
    if (scenes_of_file.get("seed", args.seed), scenes_of_file.get("limit", args.limit),
            scenes_of_file.get("data_dir", str(Path(args.data_dir).resolve()))) != \
            (args.seed, args.limit, str(Path(args.data_dir).resolve())):
        raise DataError(f"{out} was measured on --seed {scenes_of_file.get('seed')} --limit "
                        f"{scenes_of_file.get('limit')} --data-dir {scenes_of_file.get('data_dir', args.data_dir)}: "
                        "pass the same, so the zooms are timed on the same scenes")
    cv2.setNumThreads(args.threads)
    scenes = [make_scene(load_rgb(p), rng) for p in sample(files, args.limit, rng)]
    cost = zoom_cost_ms(args.model, scenes, args.threads)
    result.setdefault("end_to_end", {})["zoom_cost"] = cost
    print(f"end to end with {args.model}, zooms {cost['zooms']}: median {cost['ms_per_photo_median_with']:.1f} ms per "
          f"photo, without them {cost['ms_per_photo_median_without']:.1f} (paired difference, median: "
          f"{cost['paired_difference_median_ms']:.1f} ms)")
    atomic_write(out, lambda f: f.write((json.dumps(result, indent=2) + "\n").encode()))
    print(f"-> {out}")
    return cost


if __name__ == "__main__":
    run_cli(main, get_args_parser())
