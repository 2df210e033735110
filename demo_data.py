"""Synthetic, age-labelled face-like images for the demo and the tests.

Real age data sets (UTKFace, IMDB-WIKI, ...) may not be redistributed with
the project, and CI cannot download them, so `make demo` and the test suite
train on cartoon faces drawn here instead. They are not photographs and a
model trained on them says nothing about real faces; what they give is a
data set with the same layout as a real one (``OUT/<age>/<age>_<index>.jpg``)
and a real, learnable age signal:

* age cues that change smoothly and monotonically with age: forehead
  wrinkles, crow's feet, nasolabial folds, under-eye bags, grey hair,
  hairline recession, skin blotches and spots, a squarer and sagging jaw,
  smaller eyes and thinner lips;
* each cue is driven by its own jittered "apparent age", so no single cue
  tells the exact age and a model has to combine them;
* nuisance variation independent of age: pose, yaw, position, scale,
  skin tone, hair colour and style, background, lighting, noise and blur,
  so that no fixed pixel gives the age away.

Everything is deterministic: image (seed, age, index) is drawn from its own
random generator, so it is byte-identical whatever else is generated.

    python demo_data.py --out-dir outputs/demo/data --min-age 20 --max-age 50 --per-age 20
"""

import contextlib
import json
import os
import re
from pathlib import Path

from cli import ArgumentParser, run_cli  # first: cli._missing_package_hook
import cv2
import numpy as np

from custom_dataset import DataError, atomic_write, write_image

JPEG_QUALITY = 92

# Points are handed to OpenCV in fixed point with this many fractional bits,
# so that small features are placed with sub-pixel accuracy.
_SHIFT = 4
_ONE = 1 << _SHIFT

# Skin and hair palettes (RGB). Several tones so that colour says nothing
# about age.
SKIN_TONES = np.array([
    (255, 224, 196), (241, 194, 160), (224, 172, 128), (198, 144, 100),
    (170, 118, 80), (141, 92, 58), (110, 70, 45), (80, 52, 35),
], dtype=np.float64)
HAIR_COLOURS = np.array([
    (28, 24, 22), (45, 32, 25), (75, 50, 32), (110, 75, 45),
    (150, 110, 65), (200, 165, 110), (145, 70, 40),
], dtype=np.float64)


# ---------------------------------------------------------------- age cues

def _smoothstep(x, lo, hi):
    """0 below lo, 1 above hi, a smooth monotonic S-curve in between."""
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return float(t * t * (3.0 - 2.0 * t))


def age_cues(age, rng):
    """Strength (0..1) of each visible ageing cue for a person of `age`.

    Each cue reads its own noisy copy of the age (people age unevenly), so
    the cues agree on average but any single one is off by several years.
    """
    def apparent():
        return age + rng.normal(0.0, 4.0)

    return {
        "wrinkles": _smoothstep(apparent(), 12, 72),
        "grey": _smoothstep(apparent(), 25, 72),
        # Some people keep their hairline: scale recession per person.
        "recession": _smoothstep(apparent(), 18, 75) * rng.uniform(0.3, 1.3),
        "skin": _smoothstep(apparent(), 12, 72),
        "jaw": _smoothstep(apparent(), 12, 75),
        "eyes": _smoothstep(apparent(), 12, 75),
        "lips": _smoothstep(apparent(), 12, 75),
    }


# ---------------------------------------------------------------- geometry
# Faces are described in a face frame: x to the right, y down, the face
# ellipse centred on the origin with half-height 1. One affine matrix per
# image (scale, yaw squash, roll, shift) maps it to pixels, so pose is
# applied to every primitive the same way.

def _arc(cx, cy, ax, ay, t0=0.0, t1=2 * np.pi, n=24):
    t = np.linspace(t0, t1, n)
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], axis=1)


def _bezier(p0, p1, p2, n=12):
    """Quadratic Bezier curve through p0 and p2, pulled towards p1."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2 = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


def face_outline(half_width, jaw, n=64):
    """Closed face contour; `jaw` 0..1 squares the lower face and adds jowls."""
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    x, y = half_width * c, s.copy()
    lower = s > 0
    # A superellipse exponent above 2 gives a squarer jaw line.
    p = 2.0 / (2.0 + 1.2 * jaw)
    x[lower] = half_width * np.sign(c[lower]) * np.abs(c[lower]) ** p
    y[lower] = np.abs(s[lower]) ** p
    # Sagging cheeks: widen the face just above the jaw line.
    x *= 1.0 + 0.07 * jaw * np.exp(-((y - 0.55) / 0.22) ** 2)
    return np.stack([x, y], axis=1)


def pose_matrix(size, rng):
    """Random 2x3 affine from face frame to pixels: the nuisance pose."""
    fill = rng.uniform(0.55, 0.80)       # face height / frame height
    scale = fill * size / 2.0
    roll = np.deg2rad(rng.uniform(-15.0, 15.0))
    yaw_squash = rng.uniform(0.85, 1.0)  # a head turned a little looks narrower
    centre = size * np.array([0.5, 0.53]) + rng.uniform(-0.05, 0.05, 2) * size
    cr, sr = np.cos(roll), np.sin(roll)
    linear = scale * np.array([[cr, -sr], [sr, cr]]) @ np.diag([yaw_squash, 1.0])
    return np.hstack([linear, centre[:, None]])


def _px(points, matrix):
    """Face-frame points -> fixed-point pixel coordinates for OpenCV."""
    pts = np.asarray(points, dtype=np.float64) @ matrix[:, :2].T + matrix[:, 2]
    return np.round(pts * _ONE).astype(np.int32)


# ---------------------------------------------------------------- painting

def _colour(rgb):
    return tuple(min(255.0, max(0.0, float(v))) for v in np.atleast_1d(rgb))


def _fill(img, matrix, points, rgb):
    cv2.fillPoly(img, [_px(points, matrix)], _colour(rgb), cv2.LINE_AA, _SHIFT)


def _line(img, matrix, points, rgb, width, closed=False):
    cv2.polylines(img, [_px(points, matrix)], closed, _colour(rgb),
                  max(1, int(round(width))), cv2.LINE_AA, _SHIFT)


def _low_freq_noise(rng, size, cells, channels=1):
    """Smooth random field in about [-1, 1]: blotches, lighting, backdrops."""
    grid = rng.normal(0.0, 1.0, (cells, cells, channels)).astype(np.float32)
    field = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    return field.reshape(size, size, channels)


def draw_background(rng, size):
    # Muted colours, like walls and rooms rather than a colour chart.
    base = rng.uniform(20, 235) + rng.uniform(-45, 45, 3)
    img = np.empty((size, size, 3), np.float32)
    img[:] = base
    img += 25.0 * _low_freq_noise(rng, size, 4, 3)
    img = np.clip(img, 0, 255).astype(np.uint8)
    # A few blurred blocks stand in for furniture, windows and walls.
    for _ in range(rng.integers(0, 4)):
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(size // 8, size // 2, 2)
        cv2.rectangle(img, (int(x0), int(y0)), (int(x0 + w), int(y0 + h)),
                      _colour(rng.uniform(0, 255, 3)), -1)
    return cv2.GaussianBlur(img, (0, 0), size / 40.0)


def _hair_shape(hairline_y, recession):
    """Polygon of the hair cap: outer skull arc, back along the hairline."""
    outer = _arc(0.0, -0.05, 0.88, 1.10, np.pi * 0.97, np.pi * 2.03, 32)
    xs = np.linspace(0.84, -0.84, 25)
    side_y = outer[0, 1]
    # Flat-topped hairline that falls to the temples, with an "M" recession.
    top = (1.0 - (xs / 0.84) ** 2) ** 0.35
    y = side_y + (hairline_y - side_y) * top
    y -= 0.22 * recession * np.exp(-((np.abs(xs) - 0.45) / 0.14) ** 2)
    return np.vstack([outer, np.stack([xs, y], axis=1)])


def draw_hair(img, matrix, rng, hair_rgb, grey, hairline_y, recession,
              strand_width):
    """Hair cap with strands; `grey` 0..1 turns a share of strands grey."""
    size = img.shape[0]
    grey_rgb = np.full(3, rng.uniform(165, 225))
    base = hair_rgb + 0.6 * grey * (grey_rgb - hair_rgb)
    layer = np.empty_like(img)
    layer[:] = np.clip(base, 0, 255).astype(np.uint8)
    n = int(0.9 * size)
    starts = np.stack([rng.uniform(-0.9, 0.9, n), rng.uniform(-1.2, -0.1, n)], axis=1)
    # Strands sweep outwards and down from the parting.
    angles = rng.normal(0.3 * np.pi * np.sign(starts[:, 0]), 0.4)
    ends = starts + 0.25 * np.stack([np.sin(angles), -0.5 * np.cos(angles)], axis=1)
    strands = _px(np.stack([starts, ends], axis=1).reshape(-1, 2), matrix).reshape(n, 2, 2)
    # One polylines call per shade keeps this fast; grey strands go last.
    shade = rng.integers(0, 3, n)
    is_grey = rng.uniform(size=n) < 1.2 * grey
    groups = [(hair_rgb * f, (shade == k) & ~is_grey) for k, f in enumerate((0.65, 1.0, 1.3))]
    groups.append((grey_rgb, is_grey))
    for rgb, chosen in groups:
        if chosen.any():
            cv2.polylines(layer, list(strands[chosen]), False, _colour(rgb),
                          max(1, int(round(strand_width))), cv2.LINE_AA, _SHIFT)
    mask = np.zeros(img.shape[:2], np.uint8)
    _fill(mask, matrix, _hair_shape(hairline_y, recession), 255)
    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    return (img * (1 - alpha) + layer * alpha).astype(np.uint8)


def texture_skin(img, face_mask, rng, skin_rgb, amount, matrix):
    """Blotchy, uneven skin and age spots, both growing with `amount`."""
    size = img.shape[0]
    blotch = _low_freq_noise(rng, size, max(4, size // 10))
    grain = rng.normal(0.0, 1.0, (size, size, 1)).astype(np.float32)
    strength = 0.02 + 0.14 * amount
    gain = 1.0 + strength * (0.8 * blotch + 0.4 * grain)
    alpha = (face_mask.astype(np.float32) / 255.0)[..., None]
    out = img * (1 - alpha) + np.clip(img * gain, 0, 255) * alpha
    out = out.astype(np.uint8)
    for _ in range(rng.poisson(1 + 30 * amount)):
        centre = [rng.uniform(-0.6, 0.6), rng.uniform(-0.55, 0.85)]
        radius = rng.uniform(0.01, 0.025) * (1 + amount)
        spot_rgb = skin_rgb * rng.uniform(0.6, 0.85) * np.array([1.0, 0.93, 0.85])
        _fill(out, matrix, _arc(*centre, radius, radius, n=10), spot_rgb)
    return out


def draw_wrinkles(img, matrix, rng, skin_rgb, amount, eye, hairline_y, width):
    """Forehead lines, crow's feet, under-eye bags and nasolabial folds."""
    ex, ey, eax, eay = eye
    # Relative darkening, so creases show on every skin tone.
    crease = skin_rgb * (0.85 - 0.5 * amount * rng.uniform(0.7, 1.2))
    # Forehead lines: more, longer and darker with age, kept below the hair.
    n_lines = int(amount * 6 + rng.uniform())
    half_len = 0.15 + 0.35 * amount
    for k in range(n_lines):
        y = -0.34 - 0.07 * k + rng.normal(0, 0.01)
        if y < hairline_y + 0.05:
            break
        xs = np.linspace(-half_len, half_len, 12) + rng.normal(0, 0.03)
        ys = y + 0.015 * np.sin(xs * rng.uniform(6, 10)) + 0.04 * (xs / 0.5) ** 2
        _line(img, matrix, np.stack([xs, ys], axis=1), crease, width)
    for side in (-1, 1):
        corner = np.array([side * (ex + eax + 0.02), ey])
        # Crow's feet fan out from the outer eye corner.
        for k in range(int(amount * 5 + rng.uniform())):
            angle = np.deg2rad(-35 + 17 * k + rng.normal(0, 5))
            length = 0.05 + 0.10 * amount
            tip = corner + length * np.array([side * np.cos(angle), np.sin(angle)])
            _line(img, matrix, [corner, tip], crease, width)
        bag = _arc(side * ex, ey + eay + 0.035, eax * 0.8, 0.03,
                   np.pi * 0.15, np.pi * 0.85, 10)
        _line(img, matrix, bag, skin_rgb + amount * (crease - skin_rgb), width)
        fold = _bezier((side * 0.12, 0.30), (side * 0.26, 0.40), (side * 0.27, 0.60))
        fold_rgb = skin_rgb + (0.2 + 0.6 * amount) * (crease - skin_rgb)
        _line(img, matrix, fold, fold_rgb, width * (1 + 0.6 * amount))


def draw_features(img, matrix, rng, skin_rgb, brow_rgb, eye, lip_scale, width):
    """Eyebrows, eyes, nose and mouth."""
    ex, ey, eax, eay = eye
    iris_rgb = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))] * rng.uniform(0.7, 1.2)
    gaze = rng.uniform(-0.3, 0.3) * eax
    brow_lift = rng.uniform(-0.02, 0.03)
    for side in (-1, 1):
        brow = _bezier((side * (ex - 0.14), ey - 0.11 - brow_lift),
                       (side * ex, ey - 0.19 - brow_lift),
                       (side * (ex + 0.15), ey - 0.12))
        _line(img, matrix, brow, brow_rgb, 2.2 * width)
        _fill(img, matrix, _arc(side * ex, ey, eax, eay), (238, 236, 230))
        iris_r = 0.95 * eay
        _fill(img, matrix, _arc(side * ex + gaze, ey, iris_r, iris_r, n=16), iris_rgb)
        _fill(img, matrix, _arc(side * ex + gaze, ey, iris_r * 0.45, iris_r * 0.45, n=12),
              (15, 12, 10))
        lid = _arc(side * ex, ey, eax, eay, np.pi, 2 * np.pi, 12)
        _line(img, matrix, lid, skin_rgb * 0.35, 1.3 * width)
    shade = skin_rgb * 0.72
    _line(img, matrix, _bezier((0.03, ey + 0.05), (0.07, 0.15), (0.06, 0.27)),
          skin_rgb * 0.86, width)
    for side in (-1, 1):
        _fill(img, matrix, _arc(side * 0.055, 0.31, 0.035, 0.018, n=10), shade * 0.8)
    _line(img, matrix, _arc(0.0, 0.26, 0.07, 0.05, np.pi * 0.1, np.pi * 0.9, 10),
          shade, width)
    # Mouth: lips thin with age; a random smile or frown is nuisance.
    mouth_y = rng.uniform(0.54, 0.60)
    half_w = rng.uniform(0.19, 0.25)
    lip_h = 0.055 * lip_scale
    lip_rgb = skin_rgb * np.array([0.85, 0.55, 0.55]) + np.array([40, 0, 0])
    curve = rng.uniform(-0.03, 0.04)
    upper = _bezier((-half_w, mouth_y), (0, mouth_y - lip_h * 1.6 - curve), (half_w, mouth_y))
    lower = _bezier((half_w, mouth_y), (0, mouth_y + lip_h * 2.0 + curve), (-half_w, mouth_y))
    _fill(img, matrix, np.vstack([upper, lower]), lip_rgb)
    seam = _bezier((-half_w, mouth_y), (0, mouth_y + 2 * curve), (half_w, mouth_y))
    _line(img, matrix, seam, lip_rgb * 0.5, width)


def finish_photo(img, rng):
    """Camera nuisance: lighting gradient, exposure, sensor noise, blur."""
    size = img.shape[0]
    out = img.astype(np.float32)
    direction = rng.uniform(0, 2 * np.pi)
    coords = (np.arange(size, dtype=np.float32) - size / 2) / size
    ramp = (np.cos(direction) * coords[None, :] + np.sin(direction) * coords[:, None])
    out *= (rng.uniform(0.8, 1.15) * (1.0 + rng.uniform(0.0, 0.5) * ramp))[..., None]
    out += rng.normal(0.0, rng.uniform(1.0, 4.0), out.shape).astype(np.float32)
    out = np.clip(out, 0, 255).astype(np.uint8)
    if rng.uniform() < 0.3:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 1.1))
    return out


def draw_face(age, rng, size=128):
    """Draw one synthetic face of the given age: size x size x 3 uint8 RGB.

    Pure apart from `rng`, which is the only source of randomness.
    """
    cues = age_cues(age, rng)
    matrix = pose_matrix(size, rng)
    scale = np.hypot(*matrix[:, 0])             # pixels per face-frame unit
    width = max(1.0, scale / 55.0)              # 1 px lines at size 128

    skin_rgb = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.9, 1.08, 3)
    hair_rgb = (HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))] * rng.uniform(0.85, 1.15)
                * rng.uniform(0.95, 1.05, 3))
    half_width = rng.uniform(0.70, 0.80)
    eye_scale = (1.0 - 0.2 * cues["eyes"]) * rng.uniform(0.9, 1.1)
    eye = (rng.uniform(0.28, 0.33), rng.uniform(-0.12, -0.04),
           0.13 * eye_scale, 0.06 * eye_scale)
    hairline_y = -0.62 - 0.30 * cues["recession"] + rng.normal(0, 0.03)

    img = draw_background(rng, size)
    if rng.uniform() < 0.4:
        # Long hair falls behind the head and shoulders, and greys with the rest.
        back = np.array([[-0.95, -0.3], [0.95, -0.3], [1.05, 1.4], [-1.05, 1.4]])
        _fill(img, matrix, np.vstack([_arc(0, -0.3, 0.95, 0.85, np.pi, 2 * np.pi), back[2:]]),
              (hair_rgb + 0.5 * cues["grey"] * (200 - hair_rgb)) * 0.85)
    clothes = _arc(0.0, 2.05, 1.6, 0.85, n=40)
    _fill(img, matrix, clothes, rng.uniform(10, 240, 3))
    _fill(img, matrix, [[-0.33, 0.4], [0.33, 0.4], [0.38, 1.5], [-0.38, 1.5]], skin_rgb * 0.85)
    for side in (-1, 1):
        _fill(img, matrix, _arc(side * half_width * 0.98, 0.02, 0.09, 0.17), skin_rgb * 0.9)

    outline = face_outline(half_width, cues["jaw"])
    face_mask = np.zeros((size, size), np.uint8)
    _fill(face_mask, matrix, outline, 255)
    _fill(img, matrix, outline, skin_rgb)
    img = texture_skin(img, face_mask, rng, skin_rgb, cues["skin"], matrix)
    draw_wrinkles(img, matrix, rng, skin_rgb, cues["wrinkles"], eye, hairline_y, width)
    img = draw_hair(img, matrix, rng, hair_rgb, cues["grey"], hairline_y,
                    cues["recession"], width)
    brow_rgb = hair_rgb + 0.6 * cues["grey"] * (190 - hair_rgb)
    draw_features(img, matrix, rng, skin_rgb, brow_rgb, eye,
                  1.0 - 0.45 * cues["lips"], width)
    return finish_photo(img, rng)


# ---------------------------------------------------------------- data set

def image_rng(seed, age, index):
    """Generator for one image, independent of which other images exist."""
    return np.random.default_rng(np.random.SeedSequence([seed, age, index]))


def generate_dataset(out_dir, min_age=20, max_age=50, per_age=20, size=128, seed=0):
    """Write OUT/<age>/<age>_<index>.jpg for every age; return the count.

    Existing files with the same names are overwritten; others are left alone.
    """
    if min_age < 0 or max_age < min_age:
        raise ValueError(f"need 0 <= min_age <= max_age, got {min_age}..{max_age}")
    if per_age < 1:
        raise ValueError(f"per_age must be at least 1, got {per_age}")
    if size < 32:
        raise ValueError(f"size must be at least 32, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    count = 0
    for age in range(min_age, max_age + 1):
        age_dir = os.path.join(out_dir, str(age))
        os.makedirs(age_dir, exist_ok=True)
        for index in range(per_age):
            rgb = draw_face(age, image_rng(seed, age, index), size)
            path = os.path.join(age_dir, f"{age}_{index:04d}.jpg")
            write_image(path, rgb, (cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY))
            count += 1
    return count


MANIFEST = "demo_data.json"  # the files the last run wrote: a smaller next run removes the rest, nothing else
DEMO_NAME = re.compile(r"(\d+)/\1_\d{4}\.jpg")
FILE_MANAGER_FILES = {".DS_Store", "Thumbs.db", "desktop.ini"}


def planned_files(min_age, max_age, per_age) -> list[str]:
    """The relative paths generate_dataset writes."""
    return [f"{age}/{age}_{index:04d}.jpg" for age in range(min_age, max_age + 1) for index in range(per_age)]


def write_manifest(out, files, settings):
    text = json.dumps({**settings, "files": sorted(files)}, indent=1) + "\n"
    atomic_write(Path(out) / MANIFEST, lambda f: f.write(text.encode()))


def earlier_files(out) -> set:
    """The files an earlier run wrote into OUT (its manifest); DataError where OUT holds files of another kind
    (a real data set, the repository): the drawn faces would be mixed into them."""
    out = Path(out)
    if not out.is_dir() or not any(out.iterdir()):
        return set()
    try:
        files = set(json.loads((out / MANIFEST).read_text())["files"])
        # only names this script writes: an edited manifest cannot point the clean-up anywhere else
        return {name for name in files if isinstance(name, str) and DEMO_NAME.fullmatch(name)}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    # names alone cannot tell our faces from a data set named the same way (25/25_0000.jpg): without the
    # manifest only a folder with nothing but a file manager's files is taken
    if all(p.name in FILE_MANAGER_FILES for p in out.rglob("*") if p.is_file()):
        return set()
    raise DataError(f"--out-dir {out} already holds files that demo_data.py did not write (a data set, or faces of "
                    "a version without demo_data.json); choose a new or empty folder (`make clean` empties make demo's outputs/)")


def get_args_parser():
    parser = ArgumentParser(
        description="Write a synthetic age-labelled face data set (OUT/<age>/<age>_<i>.jpg).")
    parser.add_argument("--out-dir", required=True,
                        help="folder to write the images into (OUT/<age>/<age>_<index>.jpg; created if missing)")
    parser.add_argument("--min-age", type=int, default=20, help="youngest age drawn, in years (0 or more)")
    parser.add_argument("--max-age", type=int, default=50, help="oldest age drawn, in years (at least --min-age)")
    parser.add_argument("--per-age", type=int, default=20, help="images per age (at least 1)")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (at least 32)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed: the same seed, age and index always give the same image")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def main(args, parser=None):
    parser = parser or get_args_parser()
    if args.min_age < 0 or args.max_age < args.min_age:
        parser.error(f"need 0 <= --min-age <= --max-age, got {args.min_age}..{args.max_age}")
    if args.per_age < 1:
        parser.error(f"--per-age must be at least 1, got {args.per_age}")
    if args.size < 32:
        parser.error(f"--size must be at least 32, got {args.size}")
    if args.seed < 0:
        parser.error(f"--seed must be non-negative, got {args.seed}")
    # one run's faces alone: an earlier run's with another range or count would be read as more faces
    earlier = earlier_files(args.out_dir)
    planned = planned_files(args.min_age, args.max_age, args.per_age)
    settings = {k: getattr(args, k) for k in ("min_age", "max_age", "per_age", "size", "seed")}
    os.makedirs(args.out_dir, exist_ok=True)
    write_manifest(args.out_dir, earlier | set(planned), settings)  # a kill midway leaves every file listed
    count = generate_dataset(args.out_dir, args.min_age, args.max_age, args.per_age,
                             args.size, args.seed)
    for name in sorted(earlier - set(planned)):
        path = Path(args.out_dir) / name
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # an age folder left empty
            path.parent.rmdir()
    write_manifest(args.out_dir, planned, settings)
    print(f"wrote {count} images of ages {args.min_age}-{args.max_age} "
          f"({args.size}x{args.size}, seed {args.seed}) to {args.out_dir}")
    return count


if __name__ == "__main__":
    run_cli(main, get_args_parser())
