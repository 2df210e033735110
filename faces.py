"""Faces in a photo, cut out exactly as the model's training faces were cut.

    photo -> detect (boxes) -> landmarks -> aligned chip (the training data's own crop) -> preprocess_rgb -> model

The crop is part of the model: a network learns the framing of its training faces (where the eyes
sit, how much forehead and background it sees), and a different crop at inference costs years of
error. UTKFace's "aligned & cropped" files are dlib face chips: dlib's frontal (HOG) detector, the
68-point shape predictor, `get_face_chip(size=200, padding=0.2)`. `UTKFACE_CROP` reproduces that
chip from any photo; it travels in checkpoints and exports under metadata["crop"], so inference.py
and eda.py --align rebuild it from the model file or the split alone.

Detectors (all ship their weights inside pip packages; nothing is downloaded at run time):
    auto    the default cascade: HOG on the photo and, in a second thread meanwhile, Haar proposals;
            those HOG missed (small faces) each checked by HOG on an enlarged patch (in a photo shrunk
            for detection, over 1024 px, smaller proposals too, so that a close-up face hides no group);
            only where nothing was found at all (no box the size and caller's filters keep), passes on a
            contrast-equalised copy, cheapest first, each only if the ones before found nothing: HOG at a lower threshold on the photo (dark, low-contrast
            faces: the commonest miss; in a shrunk photo with the small proposals too, as in the first
            pass), smaller Haar proposals (checked by HOG at its own threshold),
            HOG at the lower threshold on a border-padded copy (faces filling the frame), on copies
            turned by +-25 degrees (tilted heads) and, where those find nothing or only boxes scoring under
            WEAK_FALLBACK_SCORE, by +-90 degrees at HOG's own threshold (a photo saved sideways without an
            EXIF tag; a stronger face found so wins over one weak box); a face found on a turned copy is
            cut (landmarks, or the box crop) from the full-resolution photo turned likewise
    hog     dlib's HOG frontal detector alone (faces above ~80 px)
    hog_up  the same on the photo upsampled twice (faces above ~40 px, 4x the cost)
    haar    OpenCV's Haar cascade (fast, finds small faces, also hands and fabric)
    mmod    dlib's CNN detector (finds the most, seconds per photo on a CPU)
Every detector sees a photo over DETECT_MAX_SIDE shrunk to it, and the face sizes above are in that copy's
pixels: in a 4032 px phone photo, hog needs a face of ~315 px; auto's small-face pass reaches ~80 px there.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import threading
from pathlib import Path

import cv2
import numpy as np

from custom_dataset import DataError, atomic_write, write_image

# ----------------------------------------------------------------------------------------------
# Crop recipes (what travels in metadata["crop"])

# UTKFace's own chip: dlib.get_face_chip on the 68 landmarks of dlib's HOG box, 200 px, padding 0.2.
UTKFACE_CROP = {"kind": "chip", "landmarks": 68, "size": 200, "padding": 0.2}
# For commercial use (the 68-point model's training data, iBUG 300-W, excludes it): dlib's 5-point
# model (eye corners, nose base) with each point mapped onto where it sits on average in UTKFace's own
# chips, so the chip frames a face like UTKFace's. Fitted by `python bench_detection.py --fit-chip5`
# on 300 UTKFace files, 295 with a face (x, y in the 200 px chip).
UTKFACE_CROP5 = {"kind": "chip", "landmarks": 5, "size": 200,
                 "template": [[152.35, 60.03], [121.48, 61.66], [44.45, 59.92], [75.08, 61.73], [97.73, 117.81]]}
# Models exported before the chip existed: a square around the detector's box grown by `margin`.
BOX_CROP = {"kind": "box", "margin": 0.0}
CROPS = {"utkface": UTKFACE_CROP, "utkface5": UTKFACE_CROP5, "box": BOX_CROP}
CROP_FILE = "crop.json"  # beside a split's CSVs: how its faces were cut (written by eda.py)

DETECTORS = ("auto", "hog", "hog_up", "haar", "mmod")
DEFAULT_DETECTOR = "auto"

# Detection settings. The figures behind them: bench_detection.py (RESULTS.md, "Face detection").
DETECT_MAX_SIDE = 1024     # photos are shrunk to this for detection (speed); landmarks use full resolution
HAAR_SCALE_FACTOR = 1.1    # step between Haar scales
HAAR_MIN_NEIGHBORS = 3     # Haar only proposes: HOG confirms, so recall matters more than precision here
HAAR_MIN_FACE = 40         # smallest face Haar proposes in the first pass (detection pixels): it runs on the
                           # photo shrunk so that this is its 24 px window, a quarter of the full-size cost
HAAR_MAX_FACE = 110        # ... and the largest: bigger faces are HOG's
HAAR_SMALLEST = 20         # the small-face pass (nothing found at all, or a photo shrunk for detection) looks down
                           # to this size
VERIFY_FACE_SIDE = 120     # a Haar proposal's patch is scaled so the face is this big for HOG to check it
PAD_FRACTION = 0.25        # fallback: replicated border (share of the longer side) for faces filling the frame
ROTATIONS = (-25.0, 25.0)  # fallback: tilted copies for heads leaning further than HOG's ~15 degrees
QUARTER_TURNS = (90.0, -90.0)  # then, where those find nothing or only weak boxes: a photo saved sideways
HOG_THRESHOLD = 0.0        # HOG's own decision threshold; raising it trades faces for fewer false boxes
FALLBACK_THRESHOLD = -0.3  # lower threshold for the fallback passes, which run only where nothing usable was found
QUARTER_TURN_THRESHOLD = HOG_THRESHOLD  # the quarter turns at HOG's own: at the lower one they invented 0.03 boxes
                           # per faceless scene (bench_detection.py), and a sideways face is rarely also dim
WEAK_FALLBACK_SCORE = 0.2  # the quarter turns run also where the fallback's best box scores under this
MMOD_UPSAMPLE = 0          # mmod's smallest face is ~40 px; upsampling once costs 4x (seconds more)
NMS_IOU = 0.3              # boxes overlapping more than this are one face
MIN_FACE_PIXELS = 12       # boxes smaller than this on the original photo are dropped: no age in 12 pixels
MIN_SHARE_INSIDE = 0.25    # boxes with less of their area inside the photo are dropped: found in a pass's padding
CHIP_VERSION = 9  # raise it with any change to decoding, detection or cutting: eda.py --align then cuts anew
                  # (5: float grey images decoded by their range, d477431; 6: small faces in dim large photos;
                  # 7: turned faces' landmarks on the full-resolution photo, sideways photos; 8: colour profiles;
                  # 9: sideways faces under a weak upright box)


@dataclasses.dataclass
class Face:
    """One face found in a photo: its box (x, y, w, h in photo pixels), the detector's score, which
    detector stage found it, its landmarks (N x 2, photo pixels) and the model's input crop (RGB)."""
    box: tuple
    score: float
    source: str
    landmarks: np.ndarray | None = None
    chip: np.ndarray | None = None
    rect: tuple | None = None  # the detector's box as it came, which may reach past the photo's edge: the
    # landmarks are found in it (UTKFace's chips were made that way); `box` is it clipped to the photo
    angle: float = 0.0  # degrees the photo was turned by (counter-clockwise) for the pass that found the face:
    # its landmarks are fitted on the full-resolution photo turned the same way, as the landmark model expects


def check_crop(crop) -> dict:
    """The crop recipe as a dict, validated; DataError naming what is wrong otherwise."""
    if not isinstance(crop, dict) or crop.get("kind") not in ("chip", "box"):
        raise DataError(f"unknown crop recipe {crop!r}; expected kind 'chip' or 'box'")
    if crop["kind"] == "box":
        margin = crop.get("margin", 0.0)
        if not isinstance(margin, (int, float)) or not -0.45 <= margin <= 2.0:
            raise DataError(f"crop margin {margin!r} is outside -0.45..2")
        return {"kind": "box", "margin": float(margin)}
    size, landmarks = crop.get("size"), crop.get("landmarks")
    if not isinstance(size, int) or isinstance(size, bool) or not 16 <= size <= 1024:
        raise DataError(f"crop size {size!r} must be a whole number of pixels in 16..1024")
    # the detector eda.py --align cut the training chips with (the landmarks start from its box): inference's default
    detector = crop.get("detector")
    if detector is not None and detector not in DETECTORS:
        raise DataError(f"crop detector {detector!r}: use one of {', '.join(DETECTORS)}")
    cut_by = {} if detector is None else {"detector": detector}
    if landmarks == 68:
        padding = crop.get("padding")
        if not isinstance(padding, (int, float)) or not 0 <= padding <= 2:
            raise DataError(f"crop padding {padding!r} must be a number in 0..2")
        return {"kind": "chip", "landmarks": 68, "size": size, "padding": float(padding), **cut_by}
    if landmarks == 5:
        try:
            template = np.asarray(crop.get("template", []), dtype=np.float64)
        except (ValueError, TypeError, OverflowError):  # ragged, text, or a 400-digit number in a file from elsewhere
            template = np.zeros(0)
        if template.shape != (5, 2) or not np.isfinite(template).all():
            raise DataError("a 5-point crop needs a template of 5 (x, y) points")
        return {"kind": "chip", "landmarks": 5, "size": size, "template": template.round(2).tolist(), **cut_by}
    raise DataError(f"crop landmarks {landmarks!r}: use 68 or 5")


def read_split_crop(splits_dir) -> dict:
    """The crop recipe eda.py recorded beside a split. Splits written before recipes existed used the
    images as they were, which inference reproduces with a square around the detector's box."""
    path = Path(splits_dir) / CROP_FILE
    if not path.is_file():
        return dict(BOX_CROP)
    try:
        return check_crop(json.loads(path.read_text())["crop"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path} is unreadable ({exc}); rerun eda.py") from None


def write_split_crop(splits_dir, crop, note: str):
    text = json.dumps({"crop": check_crop(crop), "note": note}, indent=2) + "\n"
    atomic_write(Path(splits_dir) / CROP_FILE, lambda f: f.write(text.encode()))


def describe_crop(crop) -> str:
    if crop["kind"] == "box":
        return f"square around the detector box, margin {crop['margin']:g}"
    extra = f", padding {crop['padding']:g}" if crop["landmarks"] == 68 else ", UTKFace-fitted template"
    cut_by = f" (training chips cut after the {crop['detector']} detector)" if crop.get("detector") else ""
    return f"aligned {crop['size']} px chip from {crop['landmarks']} landmarks{extra}{cut_by}"


# ----------------------------------------------------------------------------------------------
# Model files (dlib-bin and face-recognition-models, both pip packages)

def _dlib():
    try:
        import dlib
    except ImportError:
        raise DataError("dlib is not installed; run: pip install dlib-bin==20.0.1.post1 "
                        "(or `make setup`, which installs requirements.txt)") from None
    return dlib


def model_file(name: str) -> str:
    """Path of a dlib model file shipped by the face-recognition-models package (never downloaded).

    The package's own __init__ needs pkg_resources (setuptools), so its folder is located without
    importing it."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the landmark/detector file {name} comes with face-recognition-models; run: "
                        "pip install face-recognition-models==0.3.0")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    if not path.is_file():
        raise DataError(f"{path} is missing; reinstall it: pip install --force-reinstall face-recognition-models==0.3.0")
    return str(path)


_CACHE = {}
_CACHE_LOCK = threading.Lock()
_PER_THREAD = threading.local()


def _load(key, make):
    """Each model file is read once per process (the 68-point model is 100 MB); the shape predictors are
    shared by every thread (their prediction only reads the model)."""
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = make()
        return _CACHE[key]


def _per_thread(key, make):
    """One object per thread: dlib's detectors keep the image they scan inside themselves and release the
    GIL, and OpenCV's CLAHE and cascade keep state too, so two threads sharing one crash the process."""
    cache = _PER_THREAD.__dict__
    if key not in cache:
        cache[key] = make()
    return cache[key]


def hog_detector():
    return _per_thread("hog", lambda: _dlib().get_frontal_face_detector())


def mmod_detector():
    return _per_thread("mmod", lambda: _dlib().cnn_face_detection_model_v1(model_file("mmod_human_face_detector.dat")))


def shape_predictor(points: int):
    name = {68: "shape_predictor_68_face_landmarks.dat", 5: "shape_predictor_5_face_landmarks.dat"}[points]
    return _load(f"sp{points}", lambda: _dlib().shape_predictor(model_file(name)))


def haar_detector():
    def make():
        path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise DataError(f"cannot load the Haar cascade {path}; reinstall opencv-python-headless==4.14.0.94")
        return cascade
    return _per_thread("haar", make)


# ----------------------------------------------------------------------------------------------
# Boxes

def three_channels(image) -> np.ndarray:
    """An H x W gray array as H x W x 3 (the detectors, the landmarks and the chip take RGB)."""
    image = np.asarray(image)
    return np.ascontiguousarray(np.repeat(image[..., None], 3, axis=2)) if image.ndim == 2 else image


def clip_box(box, width, height) -> tuple:
    """(x, y, w, h) cut to the photo [0, width] x [0, height] (an empty box stays at the edge)."""
    x, y, w, h = box
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    return (x0, y0, x1 - x0, y1 - y0)


def _area(box) -> float:
    return box[2] * box[3]


def iou(a, b) -> float:
    """Intersection over union of two (x, y, w, h) boxes; 0 when either is empty."""
    ax, ay, aw, ah = (float(v) for v in a)
    bx, by, bw, bh = (float(v) for v in b)
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def non_max_suppression(boxes, scores, iou_threshold=NMS_IOU) -> list[int]:
    """Indices of the boxes kept, strongest first: a box overlapping a stronger kept one by more than
    iou_threshold, or lying mostly (70 %) inside it, is the same face."""
    keep = []
    for i in sorted(range(len(boxes)), key=lambda i: (-scores[i], i)):
        if not any(same_face(boxes[i], boxes[k], iou_threshold) for k in keep):
            keep.append(i)
    return keep


def same_face(a, b, iou_threshold=NMS_IOU) -> bool:
    """Two boxes of one face: overlapping by more than iou_threshold, or one lying mostly inside the other."""
    return iou(a, b) > iou_threshold or _inside(a, b) > 0.7 or _inside(b, a) > 0.7


def _inside(small, big) -> float:
    """Share of small's area that lies inside big."""
    sx, sy, sw, sh = small
    bx, by, bw, bh = big
    iw = max(0.0, min(sx + sw, bx + bw) - max(sx, bx))
    ih = max(0.0, min(sy + sh, by + bh) - max(sy, by))
    return iw * ih / max(sw * sh, 1e-9)


def _rect_to_box(r) -> tuple:
    return (float(r.left()), float(r.top()), float(r.right() - r.left() + 1), float(r.bottom() - r.top() + 1))


def _box_to_rect(box):
    x, y, w, h = box
    return _dlib().rectangle(int(round(x)), int(round(y)), int(round(x + w - 1)), int(round(y + h - 1)))


def _scaled(box, s, dx=0.0, dy=0.0) -> tuple:
    """Box (x, y, w, h) in coordinates shifted by (dx, dy) and then divided by s."""
    x, y, w, h = box
    return ((x - dx) / s, (y - dy) / s, w / s, h / s)


# ----------------------------------------------------------------------------------------------
# Detectors. Each takes a uint8 gray (or RGB) detection image and returns [(box, score)].

def hog_faces(image, upsample: int = 0, threshold: float = HOG_THRESHOLD):
    rects, scores, _ = hog_detector().run(image, upsample, threshold)
    return [(_rect_to_box(r), float(s)) for r, s in zip(rects, scores)]


def haar_faces(gray, min_neighbors: int = HAAR_MIN_NEIGHBORS, min_face: int = 24, max_face: int = 0):
    found, _, weights = haar_detector().detectMultiScale3(
        gray, scaleFactor=HAAR_SCALE_FACTOR, minNeighbors=min_neighbors, minSize=(min_face, min_face),
        maxSize=(max_face, max_face), outputRejectLevels=True)
    # OpenCV's parallel scan returns them in a varying order; the cascade keeps the first that HOG confirms
    return sorted(((tuple(float(v) for v in b), float(s)) for b, s in zip(found, np.ravel(weights))),
                  key=lambda item: (-item[1], item[0]))


def mmod_faces(rgb, upsample: int = MMOD_UPSAMPLE):
    image = rgb if rgb.ndim == 3 else cv2.cvtColor(rgb, cv2.COLOR_GRAY2RGB)
    return [(_rect_to_box(d.rect), float(d.confidence)) for d in mmod_detector()(image, upsample)]


def verify_with_hog(gray, box):
    """HOG's box for a Haar proposal, or None: HOG runs on the patch around the proposal (twice its
    size), scaled so the face is VERIFY_FACE_SIDE px, well inside HOG's range."""
    x, y, w, h = box
    side = 2.0 * max(w, h)
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    x1, y1 = int(min(gray.shape[1], cx + side / 2)), int(min(gray.shape[0], cy + side / 2))
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None
    s = VERIFY_FACE_SIDE / max(w, h)
    patch = cv2.resize(gray[y0:y1, x0:x1], (max(1, round((x1 - x0) * s)), max(1, round((y1 - y0) * s))),
                       interpolation=cv2.INTER_LINEAR if s > 1 else cv2.INTER_AREA)
    found = [(_scaled(b, s), sc) for b, sc in hog_faces(patch)]
    found = [((bx + x0, by + y0, bw, bh), sc) for (bx, by, bw, bh), sc in found]
    best = max(found, key=lambda f: iou(f[0], box), default=None)
    return best if best is not None and iou(best[0], box) >= 0.3 else None


def _haar_thread():
    """One worker thread per process that runs the cascade's Haar passes, so Haar (OpenCV) works while
    HOG (dlib) runs in the caller's thread: both release the GIL, and on two cores the first pass costs
    about the larger of the two instead of their sum. Shared by every caller thread (their Haar passes
    queue there); keyed by process, since a forked child has no thread behind a pool."""
    from concurrent.futures import ThreadPoolExecutor
    return _load(("haar_thread", os.getpid()), lambda: ThreadPoolExecutor(1, thread_name_prefix="haar"))


def _clahe():
    return _per_thread("clahe", lambda: cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)))


def _rotation(shape, degrees):
    """Affine matrix rotating an image of `shape` about its centre into a canvas that holds all of it."""
    h, w = shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(math.ceil(h * sin + w * cos)), int(math.ceil(h * cos + w * sin))
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    return m, (nw, nh)


# ----------------------------------------------------------------------------------------------
# The pipeline

class FacePipeline:
    """detect -> landmarks -> chip, for one crop recipe and one detector.

    `faces(rgb)` returns every face of an HxWx3 uint8 RGB photo, largest first, each with the crop
    the model expects (`Face.chip`)."""

    def __init__(self, crop=None, detector: str = DEFAULT_DETECTOR, min_face: int = MIN_FACE_PIXELS):
        self.crop = check_crop(UTKFACE_CROP if crop is None else crop)
        if detector not in DETECTORS:
            raise DataError(f"unknown detector {detector!r}; choose one of {', '.join(DETECTORS)}")
        self.detector = detector
        self.min_face = min_face
        self.points = self.crop.get("landmarks")
        # load every file now, so a missing package is reported before any photo is read
        if self.points:
            shape_predictor(self.points)
        {"haar": haar_detector, "mmod": mmod_detector}.get(detector, hog_detector)()
        if detector == "auto":
            haar_detector()

    # -- detection --------------------------------------------------------------------------
    def detect(self, rgb) -> list[Face]:
        """Face boxes in photo pixels (with the angle of the turned copy a fallback pass found them on),
        strongest first."""
        return self.detect_filtered(rgb)[0]

    def detect_filtered(self, rgb, reject=None, too_small=None) -> tuple[list[Face], list[tuple[Face, str]]]:
        """(faces, [(face, reason)]): detect's faces, with reject(face) -> reason or None (a caller's size or
        score filter) applied before duplicate boxes are removed, so that a box the caller would drop never
        suppresses a face it overlaps. Rejected faces are reported once each, and not where they are part
        of a kept face. too_small(face) -> bool: the caller's size filter alone; a box it drops is no face to the
        cascade, whose next pass runs (a box dropped for its score is a face found all the same: the next passes,
        at lower thresholds, would find it weaker still, at 20 times the cost)."""
        rgb = three_channels(rgb)
        height, width = rgb.shape[:2]
        scale = min(1.0, DETECT_MAX_SIDE / max(height, width))
        small = rgb if scale == 1.0 else cv2.resize(
            rgb, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
        gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        def fits(box) -> bool:  # big enough, and mostly inside the photo (photo pixels): the one size rule
            return min(box[2:]) >= self.min_face and _inside(box, (0, 0, width, height)) >= MIN_SHARE_INSIDE

        if self.detector == "hog":
            found = [(b, s, "hog") for b, s in hog_faces(gray)]
        elif self.detector == "hog_up":
            found = [(b, s, "hog_up") for b, s in hog_faces(gray, upsample=1)]
        elif self.detector == "haar":
            found = [(b, s, "haar") for b, s in haar_faces(gray, min_neighbors=4, min_face=24)]
        elif self.detector == "mmod":
            found = [(b, s, "mmod") for b, s in mmod_faces(small)]
        else:
            def usable(item) -> bool:  # a box (detection pixels) that the size filters below keep
                box = _scaled(item[0], scale)
                return fits(box) and not (too_small and too_small(Face(clip_box(box, width, height), *item[1:3])))
            found = self._cascade(gray, shrunk=scale < 1.0, usable=usable)
        faces = []
        for item in found:
            box, score, source = item[:3]
            faces.append(Face(_scaled(box, scale), score, source, angle=item[3] if len(item) > 3 else 0.0))
        # too small (or mostly beyond the photo's edge) first: a box of no use must not suppress a usable one
        faces = [f for f in faces if fits(f.box)]
        # judged on the box as it is reported (inside the photo), as the caller's filters say
        reasons = [reject(dataclasses.replace(f, box=clip_box(f.box, width, height))) if reject else None
                   for f in faces]
        rejected = [(f, r) for f, r in zip(faces, reasons) if r]
        faces = [f for f, r in zip(faces, reasons) if not r]
        faces = [faces[i] for i in non_max_suppression([f.box for f in faces], [f.score for f in faces])]
        rejected = [rejected[i] for i in non_max_suppression([f.box for f, _ in rejected], [f.score for f, _ in rejected])]
        rejected = [(f, r) for f, r in rejected if not any(same_face(f.box, k.box) for k in faces)]
        for face in faces + [f for f, _ in rejected]:  # reported inside the photo (HOG's box may reach past an
            face.rect, face.box = face.box, clip_box(face.box, width, height)  # edge); cut from the raw one
        return faces, rejected

    def _cascade(self, gray, shrunk=False, usable=lambda item: True):
        """Boxes (detection pixels) of the cascade's passes: the next pass runs where the ones before found no box
        that `usable` (detect_filtered's size filters: its own, the caller's too_small, the share inside the photo)
        keeps, so that a box dropped later never stands for a face (a 20 px box under inference.py's 32 px minimum)."""
        # faces under HOG's ~80 px window: Haar proposes on a shrunk copy (in its thread, while HOG runs
        # here), HOG checks each proposal
        shrink = min(1.0, 24 / HAAR_MIN_FACE)
        small = cv2.resize(gray, (max(1, round(gray.shape[1] * shrink)), max(1, round(gray.shape[0] * shrink))),
                           interpolation=cv2.INTER_AREA)
        haar = _haar_thread().submit(haar_faces, small, min_face=24, max_face=round(HAAR_MAX_FACE * shrink))
        found = [(b, s, "hog") for b, s in hog_faces(gray)]
        proposals = [_scaled(b, shrink) for b, _ in haar.result()]
        self._add_checked(gray, proposals, found, "haar+hog", usable)
        if found and shrunk:
            # a large photo (a group, a crowd) shrunk for detection: its other faces may now be under the first
            # pass's 40 px, and one close-up face must not hide them (it did: 1 face of 6 in a 6000 px photo)
            small_faces = _haar_thread().submit(haar_faces, gray, min_face=HAAR_SMALLEST, max_face=HAAR_MIN_FACE)
            self._add_checked(gray, [b for b, _ in small_faces.result()], found, "haar+hog", usable)
        if any(map(usable, found)):
            return found
        dropped = found  # unusable boxes of every pass, returned too: the caller reports them as its drops
        # nothing found: dark or washed-out faces (more contrast), tiny faces, faces filling the frame (a
        # border helps), tilted heads (rotated copies); the HOG passes at a lower threshold, while the small
        # faces' Haar proposals are checked by HOG at its own threshold (Haar proposes hands and fabric too)
        gray = _clahe().apply(gray)
        pad = int(round(PAD_FRACTION * max(gray.shape)))
        padded = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        found = self._fallback(gray, padded, pad, shrunk, usable, dropped)
        # a photo saved sideways: every upright pass misses its face, but one of the low-threshold passes often
        # draws a weak box elsewhere or across the turned face, which stopped the quarter turns (4 % of sideways
        # scenes, bench_detection.py); so they also run under a weak box, and win where they find a stronger one.
        # There on the copy without the border, at 40 % of the cost: they found the same faces (a weak box is far
        # more often an upright face's than a sideways one's, and those photos pay for the check)
        kept = [f for f in found if usable(f)]
        if kept and max(f[1] for f in kept) >= WEAK_FALLBACK_SCORE:
            return found + dropped
        image, border = (gray, 0) if kept else (padded, pad)
        turned = [f for degrees in QUARTER_TURNS for f in self._rotated(image, degrees, border, QUARTER_TURN_THRESHOLD)]
        turned_kept = [f for f in turned if usable(f)]
        dropped += [f for f in turned if not usable(f)]  # a sideways face too small to keep: reported as dropped
        if not turned_kept or kept and max(f[1] for f in turned_kept) <= max(f[1] for f in kept):
            return found + dropped
        # one weak box is the one a sideways face's is preferred to; several (a dim group) stay beside it
        return (turned_kept + [f for f in found if not usable(f)] if len(kept) <= 1 else found + turned_kept) + dropped

    def _fallback(self, gray, padded, pad, shrunk, usable, dropped):
        """The upright passes after the first found nothing, cheapest first, on the contrast-equalised photo
        (`gray`) and its bordered copy (`padded`, `pad` px a side); the first that finds a usable box ends them.
        The unusable boxes of a pass whose list is not returned go into `dropped`."""
        # most faces the first pass missed are dim or low in contrast, and one HOG pass finds them: cheaper
        # than the small-face and border passes below, so it goes first
        found = [(b, s, "hog_contrast") for b, s in hog_faces(gray, 0, FALLBACK_THRESHOLD)]
        if found and shrunk:  # a dim group photo: as in the first pass, one close-up face must not hide the rest
            small_faces = _haar_thread().submit(haar_faces, gray, min_face=HAAR_SMALLEST, max_face=HAAR_MIN_FACE)
            self._add_checked(gray, [b for b, _ in small_faces.result()], found, "haar+hog", usable)
        if any(map(usable, found)):
            return found
        # waited for at once, but in Haar's thread all the same: the classifier is never used by two threads
        small_faces = _haar_thread().submit(haar_faces, gray, min_face=HAAR_SMALLEST, max_face=HAAR_MAX_FACE)
        self._add_checked(gray, [b for b, _ in small_faces.result()], found, "haar+hog", usable)
        if any(map(usable, found)):
            return found
        dropped += found
        found = [(_scaled(b, 1.0, pad, pad), s, "hog_contrast_padded")
                 for b, s in hog_faces(padded, 0, FALLBACK_THRESHOLD)]
        if any(map(usable, found)):
            return found
        for degrees in ROTATIONS:
            found += self._rotated(padded, degrees, pad)
        return found

    @staticmethod
    def _add_checked(gray, proposals, found, source, usable):
        """Append to found each Haar proposal that HOG confirms and that is not a face found already (a box the
        caller drops is none: HOG on the enlarged patch may score the face otherwise)."""
        for box in proposals:
            if any(iou(box, f[0]) > 0.2 or _inside(f[0], box) > 0.5 for f in found if usable(f)):
                continue
            checked = verify_with_hog(gray, box)
            if checked is not None and not any(iou(checked[0], f[0]) > NMS_IOU for f in found):
                found.append((checked[0], checked[1], source))

    @staticmethod
    def _rotated(padded, degrees, pad, threshold=FALLBACK_THRESHOLD):
        """HOG on a copy turned by `degrees`: (box, score, source, degrees) of each face, the box keeping its
        size around the turned-back centre (the face, not its upright hull). The angle goes with the face, so
        that cut() fits its landmarks on the photo turned likewise: an upright box around a tilted face is not
        what the landmark model was trained on."""
        m, size = _rotation(padded.shape, degrees)
        turned = cv2.warpAffine(padded, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        back = cv2.invertAffineTransform(m)
        found = []
        for box, score in hog_faces(turned, 0, threshold):
            cx, cy = np.array([box[0] + box[2] / 2, box[1] + box[3] / 2]) @ back[:, :2].T + back[:, 2] - pad
            found.append(((cx - box[2] / 2, cy - box[3] / 2, box[2], box[3]), score, f"hog_rotated{degrees:+.0f}",
                          degrees))
        return found

    # -- landmarks and chips ----------------------------------------------------------------
    def faces(self, rgb) -> list[Face]:
        """Every face in the photo with its chip, largest first."""
        rgb = three_channels(rgb)
        faces = self.detect(rgb)
        for face in faces:
            self.cut(rgb, face)
        faces.sort(key=lambda f: -_area(f.box))  # the box inside the photo, as inference.py ranks them: the
        # largest face eda.py --align labels is the one inference takes for the main face
        return faces

    def cut(self, rgb, face: Face) -> Face:
        """Fill face.landmarks (if not yet there) and face.chip, following the crop recipe."""
        rect = face.rect if face.rect is not None else face.box
        if self.crop["kind"] == "box":
            if face.angle:  # the square cut from the photo turned as the pass that found the face turned it
                patch, box_in_patch, _ = turned_patch(rgb, rect, face.angle, 1.0 + max(self.crop["margin"], 0.0))
                face.chip = crop_face(patch, box_in_patch, self.crop["margin"])
            else:
                face.chip = crop_face(rgb, rect, self.crop["margin"])
            return face
        if face.landmarks is None:
            face.landmarks = landmarks_in(rgb, rect, self.points, face.angle)
        face.chip = chip_from_landmarks(rgb, face.landmarks, self.crop)
        return face


def turned_patch(rgb, rect, angle: float, reach: float = 1.0):
    """(patch, box, back): a square patch of the photo around box `rect` (x, y, w, h, photo pixels) reaching
    `reach` times the box's longer side from its centre, turned by `angle` degrees (counter-clockwise) about that
    centre, with a replicated border where it passes the photo's edge (as the padded detection copy had); the box
    in the patch's pixels; and the affine map from the patch back to the photo."""
    x, y, w, h = rect
    cx, cy = x + w / 2, y + h / 2
    half = int(math.ceil(reach * max(w, h)))
    x0, y0 = int(math.floor(cx)) - half, int(math.floor(cy)) - half
    patch = cv2.copyMakeBorder(rgb[max(y0, 0):max(y0 + 2 * half, 0), max(x0, 0):max(x0 + 2 * half, 0)],
                               max(-y0, 0), max(y0 + 2 * half - rgb.shape[0], 0),
                               max(-x0, 0), max(x0 + 2 * half - rgb.shape[1], 0), cv2.BORDER_REPLICATE)
    m = cv2.getRotationMatrix2D((cx - x0, cy - y0), angle, 1.0)  # about the face's centre, which stays put
    turned = cv2.warpAffine(patch, m, (2 * half, 2 * half), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    back = cv2.invertAffineTransform(m)
    back[:, 2] += (x0, y0)
    return np.ascontiguousarray(turned), (cx - x0 - w / 2, cy - y0 - h / 2, w, h), back


def landmarks_in(rgb, rect, points: int, angle: float = 0.0) -> np.ndarray:
    """points x 2 landmarks (photo pixels) of the face in box `rect` (x, y, w, h, photo pixels), fitted on the
    full-resolution photo. A face found on a turned copy (angle, degrees counter-clockwise) is fitted on a
    patch around it turned by the same angle, where it stands upright in its box (the landmark model looks a
    little past its box: the patch reaches a box's side from the centre), and the points are turned back."""
    image, box, back = (rgb, rect, None) if not angle else turned_patch(rgb, rect, angle)
    shape = shape_predictor(points)(image, _box_to_rect(box))
    marks = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
    return marks if back is None else marks @ back[:, :2].T + back[:, 2]


def chip_from_landmarks(rgb, landmarks, crop) -> np.ndarray:
    """The aligned chip (size x size x 3 uint8) for the given landmarks: dlib's own face chip for
    68 points (UTKFace's exact recipe), the fitted template's similarity transform for 5."""
    dlib = _dlib()
    size = crop["size"]
    points = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in landmarks])
    if crop["landmarks"] == 68:
        left, top = np.floor(landmarks.min(axis=0)).astype(int)
        right, bottom = np.ceil(landmarks.max(axis=0)).astype(int)
        shape = dlib.full_object_detection(dlib.rectangle(int(left), int(top), int(right), int(bottom)), points)
        details = dlib.get_face_chip_details(shape, size=size, padding=crop["padding"])
    else:
        template = dlib.dpoints([dlib.dpoint(float(x), float(y)) for x, y in crop["template"]])
        image_points = dlib.dpoints([dlib.dpoint(float(x), float(y)) for x, y in landmarks])
        details = dlib.chip_details(template, image_points, dlib.chip_dims(size, size))
    return np.ascontiguousarray(dlib.extract_image_chip(np.ascontiguousarray(rgb), details))


# ----------------------------------------------------------------------------------------------
# The square crop of models exported before the chip (crop kind "box")

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
# Data sets of un-aligned photos (eda.py --align)

def chip_dataset(records, chips_dir, crop, detector: str = DEFAULT_DETECTOR, progress: bool = True):
    """Cut every record's face once, as inference will: (records pointing at the chips, stats).

    Chips are PNG files under chips_dir/<recipe key>/<content hash>.png, so a re-run (or another split
    of the same photos) reuses them; a photo without a face leaves a .none marker and is dropped
    (counted as "no_face"). With several faces the largest is taken as the labelled person."""
    import hashlib
    from custom_dataset import decoder_versions, load_rgb
    dlib = _dlib()
    pipeline = FacePipeline(crop, detector)
    # a chip (or a "no face" marker) is the work of this code and these libraries: another version cuts anew
    code = {"version": CHIP_VERSION, "dlib": dlib.__version__, **decoder_versions()}
    key = hashlib.sha256(json.dumps([pipeline.crop, detector, code], sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(chips_dir) / key
    folder.mkdir(parents=True, exist_ok=True)
    stats = {"chipped": 0, "no_face": 0, "several_faces_largest_used": 0, "from_cache": 0, "unreadable_file": 0,
             "align_failed": 0}
    kept = []
    items = records
    if progress:
        from tqdm import tqdm
        items = tqdm(records, desc="aligning faces", unit="img")
    for rec in items:
        chip_path, none_path = folder / f"{rec['hash']}.png", folder / f"{rec['hash']}.none"
        several_path = folder / f"{rec['hash']}.several"  # kept so that a cached run reports the same counts
        if chip_path.is_file() or none_path.is_file():
            stats["from_cache"] += 1
        else:
            try:
                rgb = load_rgb(rec["path"])
            except OSError:  # perhaps a passing fault: nothing is cached, so the next run tries it again
                stats["unreadable_file"] += 1
                continue
            try:
                found = pipeline.faces(rgb)
            except (MemoryError, RuntimeError, ValueError, cv2.error):  # this photo's alone (a huge one, dlib's or
                stats["align_failed"] += 1                              # OpenCV's error): not cached, tried again
                continue
            if not found:
                none_path.touch()
            else:
                if len(found) > 1:
                    several_path.touch()
                write_image(chip_path, found[0].chip)
        if chip_path.is_file():
            stats["chipped"] += 1
            stats["several_faces_largest_used"] += several_path.is_file()
            kept.append({**rec, "source": rec["path"], "path": str(chip_path.resolve())})
        else:
            stats["no_face"] += 1
    return kept, {**stats, "folder": str(folder), "crop": pipeline.crop, "detector": detector}
