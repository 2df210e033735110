"""Data layer: label discovery, image checks, the one preprocessing definition, datasets and the cache.

Everything that turns a file on disk into a tensor lives here, so that training, evaluation,
benchmarking and inference cannot drift apart:

    discover_labels()  folder per age | UTKFace names | CSV  ->  records (path, age; subject, gender,
                       race where the layout gives them) + skip counts
    scan_images()      decode every image once: size, content hash, or the reason it is unusable
    deduplicate()      byte-identical files: keep one if the ages agree, drop the group if not
    stratified_split() seeded 80:10:10 split stratified by age; with a subject, one person per split
    preprocess()       decode -> RGB -> resize -> denoise -> deblur  (uint8, cached per setting)
    normalize()        uint8 NCHW -> float, (x - mean) / std          (also inside every export)
    augment_batch()    training-only flips, shift/scale/rotation, brightness/contrast
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import functools
import hashlib
import io
import itertools
import json
import math
import os
import re
import tempfile
import time
import unicodedata
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps
from pi_heif import register_heif_opener

from cli import DataError, lazy_import  # DataError re-exported: one class for every one-line error

torch = lazy_import("torch")  # imported on first use: eda and ONNX inference never need it

# HEIC/HEIF (an iPhone's photos) through pi-heif's decoder (libheif applies the file's own rotation, and sets the
# EXIF Orientation it hands on to 1, so to_rgb turns nothing twice)
register_heif_opener()
# what Pillow decodes (a GIF: its first frame)
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".avif", ".heic",
                    ".heif"}
MIN_IMAGE_SIDE = 16  # smaller images carry no usable face at 128 px and are skipped as "too_small"
MAX_IMAGE_PIXELS = 100_000_000  # far above any photo; guards against decompression bombs
# Pillow's own guard (89 Mpx: a warning, twice that: an error) set to ours, so one rule and one message hold;
# load_rgb_shrunk alone lifts it, to read a baseline JPEG of any size at 1/2 to 1/8 of it
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
MAX_FILE_BYTES = 300_000_000    # a 100 Mpx photo is far smaller as a JPEG or PNG
UTKFACE_NAME = re.compile(r"^(\d+)_")  # age is the text before the first "_"; the rest is irregular
# the whole of UTKFace's own naming (age_gender_race_date): what marks a folder as a UTKFace-style data set for
# the output checks, where "1_beach.jpg" or a scan "001_0.png" must not
UTKFACE_FULL_NAME = re.compile(r"^(\d+)_[01]_[0-4]_\d")
MAX_LABEL_AGE = 120  # 0 is a valid newborn label; above 120 is a typo
ANNOTATED_SUFFIX = "_age"  # inference.py's annotated copies, <name>_age.<ext>: outputs, never data


def is_annotated_copy(path) -> bool:
    """An image inference.py wrote (NAME_age.jpg): read by no stage as a face or an input."""
    return Path(path).stem.endswith(ANNOTATED_SUFFIX)


# ----------------------------------------------------------------------------------------------
# Label discovery

def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS or path.name.lower().endswith(".jpg.chip.jpg")


def _parse_age(text: str) -> int | None:
    """A whole number of years: "25", or "25.0" as pandas writes a column with a gap ("25,0" where the decimal
    mark is a comma); "25.5", "nan": None."""
    match = re.fullmatch(r"(-?\d{1,6})(?:[.,]0*)?", text.strip())  # 5000 digits: no age (int() would raise)
    return int(match.group(1)) if match else None


def _csv_encoding(path: Path) -> str:
    """utf-8-sig (a spreadsheet's byte-order mark would otherwise hide the first column name), or cp1252 for a
    file that is not UTF-8: what Excel on Windows saves, whose accented paths would otherwise not be found."""
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES)
    try:
        data.decode("utf-8-sig")
        return "utf-8-sig"
    except UnicodeDecodeError:
        # UTF-8 with one stray byte (a note pasted from elsewhere) stays UTF-8, its other accents intact
        return "utf-8-sig" if re.search(rb"[\xc2-\xf4][\x80-\xbf]", data) else "cp1252"


def _csv_delimiter(f) -> str:
    """"," or, for a header without one, ";" (what Excel saves where the decimal mark is a comma) or a tab; read
    from the open file's first line, which is then read again by the caller (the file is rewound)."""
    first = f.readline(65536)
    f.seek(0)
    if "," in first:
        return ","
    return next((d for d in (";", "\t") if d in first), ",")


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="", encoding=_csv_encoding(path), errors="replace") as f:
        try:
            return [h.strip().lower() for h in next(csv.reader(f, delimiter=_csv_delimiter(f)), [])]
        except csv.Error as exc:  # e.g. a first field over csv's 128 KiB limit
            raise DataError(f"{path} is not a readable CSV (its first line: {exc}); check the file") from None


def _find_csv(data_dir: Path) -> Path | None:
    if data_dir.is_file():
        header = _csv_header(data_dir) if data_dir.suffix.lower() == ".csv" else []
        if "path" not in header or "age" not in header:
            raise DataError(f"{data_dir} is a file but not a CSV with path,age columns; pass the data folder "
                            "or such a CSV as --data-dir")
        return data_dir
    if data_dir.is_dir():
        found = _label_csvs(data_dir)
        if len(found) > 1:  # the first alone would hide the others' labels (train/val/test.csv: only test.csv)
            raise DataError(f"{data_dir} holds {len(found)} CSVs with path,age columns ({', '.join(p.name for p in found)}); "
                            "pass the one that labels the faces as --data-dir, or merge them into one")
        return found[0] if found else None
    return None


def _label_csvs(folder: Path) -> list[Path]:
    """The CSVs of a folder with path,age columns."""
    found = []
    try:  # labels.CSV (an Excel export) too: a CSV passed by name is taken whatever its suffix's case
        candidates = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".csv")
    except OSError:
        return found
    for candidate in candidates:
        try:
            header = _csv_header(candidate)
        except (DataError, OSError):  # another CSV (notes, exports), a folder or a broken link: not the labels
            continue
        if "path" in header and "age" in header:
            found.append(candidate)
    return found


# folders a file manager, a NAS or an archive tool adds beside photos, holding thumbnails or copies of them:
# read as faces they would put one photo in two splits (resized copies are no byte-identical duplicates)
SYSTEM_FOLDERS = {"@eaDir", "__MACOSX", "#recycle", "$RECYCLE.BIN", "System Volume Information", "Thumbs"}


def _system_folder(name) -> bool:
    return name.startswith(".") or name in SYSTEM_FOLDERS


def _count_files(folders) -> int:
    """The images under these folders (links not followed): what the report counts as left out (a .git or .dvc
    tree's objects are no faces)."""
    return sum(_is_image_name(Path(name)) for folder in folders for _, _, files in os.walk(folder) for name in files)


def _walk_files(root: Path, pruned: list | None = None):
    """Sorted recursive listing that survives symlink loops and unreadable folders; hidden folders (.name)
    and SYSTEM_FOLDERS are left out, and appended to `pruned` where given.

    Yields file paths, and the path of every folder link that points back at the folder holding
    it or at any folder above it (a symlink loop; also a link to the data root, which would
    relabel other age folders): such a link is yielded once, not followed, so the caller can
    count it.
    """
    seen_dirs = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        # a network or FUSE mount may give every folder inode 0: known by its real path there
        key = (st.st_ino, st.st_dev) if st.st_ino else os.path.realpath(dirpath)
        if key in seen_dirs:  # two links to the same folder: list it once
            dirnames[:] = []
            continue
        seen_dirs.add(key)
        real = os.path.realpath(dirpath)
        loops = []
        for name in dirnames:
            target = os.path.realpath(os.path.join(dirpath, name))
            if real == target or real.startswith(target.rstrip(os.sep) + os.sep):
                loops.append(name)
        system = [n for n in dirnames if _system_folder(n)]
        if pruned is not None:
            pruned.extend(Path(dirpath) / n for n in system)
        dirnames[:] = sorted(n for n in dirnames if n not in loops and n not in system)
        for name in sorted(filenames + loops):
            yield Path(dirpath) / name


def _utf8_name(path) -> bool:
    """False for a file name holding bytes that are not UTF-8 (Python keeps them as surrogates)."""
    try:
        str(path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _csv_rows(path, f):
    """csv.DictReader rows; a malformed CSV (e.g. a field over csv's 128 KiB limit) is one DataError."""
    reader = csv.DictReader(f, delimiter=_csv_delimiter(f))
    try:
        for row in reader:
            # a quote left open swallows every row after it into one field: said, not a file's rows lost in silence
            if any(isinstance(v, str) and ("\n" in v or "\r" in v) for v in row.values()):
                raise DataError(f"{path}: the row ending on line {reader.line_num} runs over several lines (a quote "
                                "left open?); fix the CSV")
            yield row
    except csv.Error as exc:
        raise DataError(f"{path} is not a readable CSV (line {reader.line_num}: {exc}); check the file") from None


def discover_labels(data_dir, min_age: int | None = None, max_age: int | None = None, outside_filter=None):
    """Find labelled images under data_dir.

    Returns (records, skipped, layout): records is a list of {"path": absolute path, "age": int}
    dicts, plus "subject" (text; a CSV with a SUBJECT_COLUMNS column, e.g. subject or person_id) and "gender",
    "race" (text, "" where unknown; UTKFace names, or a CSV with such columns) where the layout
    gives them; skipped a Counter of reasons; layout one of "folder_per_age", "utkface", "csv".
    Raises DataError when the folder matches none of the three layouts. outside_filter (a list): receives
    the records left out by min_age/max_age alone (eda.py checks them for copies of kept files).
    """
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise DataError(f"data folder not found: {data_dir} (pass --data-dir with an existing folder or CSV)")
    skipped: Counter = Counter()
    csv_path = _find_csv(data_dir)
    if csv_path is not None:
        listed = set()
        layout, records = "csv", _discover_csv(csv_path, skipped, listed)
        if data_dir.is_dir():  # the CSV labels the folder's faces: those it does not list are counted, not lost
            unlisted = sum(_is_image_name(p) and os.path.abspath(p) not in listed for p in _walk_files(data_dir))
            if unlisted:
                skipped["image_not_in_csv"] += unlisted
    else:
        folders = [p for p in sorted(data_dir.iterdir()) if p.is_dir()] if data_dir.is_dir() else []
        system = [p for p in folders if _system_folder(p.name)]  # .git, @eaDir beside the age folders
        if system:
            skipped["system_folder"] += _count_files(system)
        age_dirs = [p for p in folders if p not in system]
        flat_images = [p for p in sorted(data_dir.iterdir()) if p.is_file() and _is_image_name(p)]
        if any(_parse_age(p.name) is not None and 0 <= _parse_age(p.name) <= MAX_LABEL_AGE for p in age_dirs):
            layout, records = "folder_per_age", _discover_folder_per_age(age_dirs, flat_images, skipped)
        elif any(UTKFACE_NAME.match(p.name) for p in flat_images):
            layout, records = "utkface", _discover_utkface(flat_images, skipped)
            # the UTKFace layout is one flat folder: files below it are not read, but counted
            below = sum(_is_image_name(f) for d in age_dirs for f in _walk_files(d))
            if below:
                skipped["image_in_subfolder"] += below
        else:
            raise DataError(
                f"no labelled images found in {data_dir}: expected folders named by age (DIR/25/*.jpg), "
                "UTKFace names (25_0_1_2017.jpg.chip.jpg) or a CSV with path,age columns")
    return _filter_records(records, skipped, min_age, max_age, outside_filter), skipped, layout


# the first one present names the person (CSV layout)
SUBJECT_COLUMNS = ("subject", "person", "identity", "subject_id", "person_id", "identity_id", "celeb_id")
GROUP_COLUMNS = ("gender", "race")  # optional groups, kept as text, for per-group reports
UTKFACE_GENDERS = {"0": "male", "1": "female"}
UTKFACE_RACES = {"0": "White", "1": "Black", "2": "Asian", "3": "Indian", "4": "Others"}
# age_gender_race_date; a few names lack a field (age_gender_date): the fields are read in order up to
# the date number, so there race is blank. A space or a missing dot after the date does not matter; a
# code outside the README's (gender 0-1, race 0-4) leaves both blank.
UTKFACE_GROUPS = re.compile(r"^\d+_(?:([01])_)?(?:([0-4])_)?\d+(?![\d_])")


def subject_column(columns) -> str | None:
    """The column of a CSV header that names the person in each photo, or None."""
    columns = [c.strip().lower() for c in columns]
    return next((c for c in SUBJECT_COLUMNS if c in columns), None)


def source_subject_column(data_dir) -> str | None:
    """The CSV column (one of SUBJECT_COLUMNS) that discover_labels reads as "subject", or None."""
    data_dir = Path(data_dir)
    csv_path = _find_csv(data_dir) if data_dir.exists() else None
    return subject_column(_csv_header(csv_path)) if csv_path is not None else None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name over the file system's limit, a folder not to be entered
        return False


def _csv_row_file(csv_path: Path, rel: str) -> Path | None:
    """The file a CSV row names, or None: relative to the CSV's folder (the folder a linked CSV points into
    too), with Windows separators read as well."""
    if not rel:
        return None
    names = [rel] + ([rel.replace("\\", "/")] if "\\" in rel else [])  # written on Windows: imgs\a.jpg
    folders = [csv_path.parent] + ([csv_path.resolve().parent] if csv_path.is_symlink() else [])
    for name in names:
        for path in ([Path(name)] if os.path.isabs(name) else [folder / name for folder in folders]):
            if _is_file(path):
                return path
    return None


def _discover_csv(csv_path: Path, skipped: Counter, listed: set | None = None) -> list[dict]:
    """CSV layout: path,age columns (paths relative to the CSV), optional subject and group columns.
    listed: receives the absolute path of every file a row names, its age usable or not."""
    header = _csv_header(csv_path)
    subject = subject_column(header)
    groups = [c for c in GROUP_COLUMNS if c in header]
    records = []
    with open(csv_path, newline="", encoding=_csv_encoding(csv_path), errors="replace") as f:
        for row in _csv_rows(csv_path, f):
            row = {k.strip().lower(): (v or "") for k, v in row.items() if k}
            path = _csv_row_file(csv_path, row.get("path", "").strip())
            if path is not None and listed is not None:
                listed.add(os.path.abspath(path))
            age = _parse_age(row.get("age", ""))
            if age is None:
                skipped["bad_age_label"] += 1
                continue
            if path is None:
                skipped["missing_file"] += 1
                continue
            rec = {"path": str(path.absolute()), "age": age}
            if subject:
                rec["subject"] = row.get(subject, "").strip()
            rec.update({g: row.get(g, "").strip() for g in groups})
            records.append(rec)
    return records


def _discover_folder_per_age(age_dirs: list[Path], flat_images: list[Path], skipped: Counter) -> list[dict]:
    """Folder-per-age layout: DIR/25/*.jpg; loose images next to the age folders carry no label."""
    if flat_images:
        skipped["image_outside_age_folder"] += len(flat_images)
    records = []
    for folder in age_dirs:
        age = _parse_age(folder.name)
        pruned = []
        files = list(_walk_files(folder, pruned))
        if age is None:
            skipped["folder_not_an_age"] += len(files)
            continue
        if pruned:
            skipped["system_folder"] += _count_files(pruned)
        for path in files:
            if path.is_dir():
                skipped["symlink_loop"] += 1
            elif not path.is_file():
                skipped["not_a_file"] += 1
            elif not _is_image_name(path):
                skipped["not_an_image_name"] += 1
            elif is_annotated_copy(path):  # inference.py's annotated copy of a face: no new face
                skipped["annotated_copy"] += 1
            else:
                records.append({"path": str(path.absolute()), "age": age})
    # numbered batch folders of UTKFace files (1/, 2/ ...) are no ages: their names say otherwise
    named = [(r, m) for r in records if (m := UTKFACE_FULL_NAME.match(Path(r["path"]).name))]
    if len(named) > len(records) / 2 and sum(int(m.group(1)) != r["age"] for r, m in named) > len(named) / 2:
        r, _ = next((r, m) for r, m in named if int(m.group(1)) != r["age"])
        raise DataError(f"the files in the numbered folders carry UTKFace names with other ages (e.g. {r['path']}, "
                        f"in folder {r['age']}): folders are read as ages, so put the files in one folder (the "
                        "UTKFace layout) or list them in a CSV with path,age columns")
    return records


def utkface_groups(name: str) -> dict:
    """{"gender", "race"} as text from a UTKFace file name; "" for a field the name lacks."""
    m = UTKFACE_GROUPS.match(name)
    gender, race = (m.groups() if m else (None, None))
    return {"gender": UTKFACE_GENDERS.get(gender or "", ""), "race": UTKFACE_RACES.get(race or "", "")}


def _discover_utkface(flat_images: list[Path], skipped: Counter) -> list[dict]:
    """UTKFace layout: one flat folder, age_gender_race_date.jpg.chip.jpg."""
    records = []
    for path in flat_images:
        m = UTKFACE_NAME.match(path.name)
        if m is None:
            skipped["name_without_age"] += 1
        elif is_annotated_copy(path):  # 25_anna_age.jpg: inference.py's copy of 25_anna.jpg
            skipped["annotated_copy"] += 1
        else:
            records.append({"path": str(path.absolute()), "age": int(m.group(1)), **utkface_groups(path.name)})
    return records


def _filter_records(records, skipped: Counter, min_age, max_age, outside_filter=None) -> list[dict]:
    kept = []
    for rec in records:
        if not _utf8_name(rec["path"]):  # the CSVs are UTF-8: such a name cannot be written or read back
            skipped["name_not_utf8"] += 1
        elif not 0 <= rec["age"] <= MAX_LABEL_AGE:
            skipped["age_out_of_range"] += 1
        elif (min_age is not None and rec["age"] < min_age) or (max_age is not None and rec["age"] > max_age):
            skipped["outside_min_max_age"] += 1
            if outside_filter is not None:
                outside_filter.append(rec)
        else:
            kept.append(rec)
    return kept


# ----------------------------------------------------------------------------------------------
# Decoding: every image becomes 8-bit RGB the same way, whatever its mode or EXIF orientation

def float_gray_scale(arr) -> float:
    """The divisor that brings a float gray image onto 0-255: 1/255 where nearly all of it lies in 0-1 (a few
    pixels overshooting after a resampling, or an inf, do not make it 0-255), else 1."""
    finite = arr[np.isfinite(arr)]
    return 1 / 255 if finite.size == 0 or np.percentile(finite, 99.9) <= 1.05 else 1.0


def to_srgb(img: Image.Image) -> Image.Image:
    """An RGB, RGBA, CMYK or gray (L) image with an embedded colour profile converted to sRGB (RGB or RGBA), the space
    UTKFace's files (they carry no profile) and every screen assume: an iPhone's Display P3 photo, an Adobe RGB or
    a CMYK scan, a gray scan's "Gray Gamma 2.2" read as plain numbers would have off colours or tones. The image
    itself without a profile, with an sRGB one already, or with one LittleCMS cannot read."""
    icc = img.info.get("icc_profile")
    if not icc or img.mode not in ("RGB", "RGBA", "CMYK", "L"):
        return img
    if "transparency" in img.info:  # a tRNS colour would be lost with info: made an alpha channel first
        img = img.convert("RGBA")
    alpha = img.getchannel("A") if img.mode == "RGBA" else None
    colour = img.convert("RGB") if alpha is not None else img
    try:
        transform = _to_srgb_transform(bytes(icc), colour.mode)
    except (OSError, ValueError, ImageCms.PyCMSError):  # a damaged or unsupported profile: the pixels as stored
        return img
    if transform is None:
        return img
    rgb = transform.apply(colour)
    if alpha is not None:
        rgb.putalpha(alpha)
    return rgb


@functools.lru_cache(maxsize=16)
def _to_srgb_transform(icc: bytes, mode: str):
    """The LittleCMS transform from a profile to sRGB (None for an sRGB profile: nothing to do), built once per
    profile and mode (a CMYK profile's tables cost tens of ms); transforms are safe to share between threads."""
    source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    if "srgb" in ImageCms.getProfileDescription(source).lower():
        return None
    return ImageCms.buildTransform(source, ImageCms.createProfile("sRGB"), mode, "RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """The one decoding rule for files and PIL images alike: EXIF rotation applied, an embedded colour profile
    converted to sRGB, 16-bit and float gray scaled to 8 bits, transparent pixels black, RGB."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a damaged EXIF block (Pillow raises SyntaxError, among others): the pixels as stored
        pass
    img = to_srgb(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit grayscale: 0-65535 onto 0-255 (PIL would clip everything above 255), one fixed scale, so two
        # nearly equal images never come out far apart. Float gray: 0-1 or 0-255 (float_gray_scale)
        arr = np.asarray(img, dtype=np.float64)
        scale = float_gray_scale(arr) if img.mode == "F" else 257.0
        gray = np.clip(np.nan_to_num(arr / scale) + 0.5, 0, 255).astype(np.uint8)
        transparent = img.info.get("transparency")  # a tRNS gray value, lost with the mode: applied here
        if isinstance(transparent, (int, float)) and img.mode != "F":
            gray[arr == transparent] = 0
        img = Image.fromarray(gray, "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode in ("P", "L", "RGB") and "transparency" in img.info):
        # transparent pixels become black, the same rule for every file
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def load_rgb(path, max_side: int | None = None) -> np.ndarray:
    """Decode an image file to an HxWx3 uint8 RGB array (raises on unreadable files).

    max_side (for previews only): shrink so that the longer side is at most max_side; JPEGs are
    then decoded at reduced scale, which is much faster for very large photos.
    """
    return load_rgb_shrunk(path, max_side)[0]


def load_rgb_shrunk(path, max_side: int | None = None) -> tuple[np.ndarray, int]:
    """load_rgb's array and the factor a JPEG over MAX_IMAGE_PIXELS was decoded smaller by (1, 2, 4 or 8;
    1 for every other image, and for a preview made with max_side): pixel (x, y) of the array covers the
    file's pixels from (x, y) * factor on."""
    too_large = f"image too large: {path} (over {MAX_IMAGE_PIXELS // 1_000_000} million pixels)"
    try:
        with warnings.catch_warnings(), _pillow_guard_lifted():  # our own check below, one message for every size
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError:  # over 128 times our limit: no JPEG is that large
        raise DataError(too_large) from None
    shrink = 1
    with img:
        # a progressive JPEG keeps every coefficient of the whole image while it decodes, whatever the scale
        # (3 bytes a pixel and more): over twice the limit, as before, it is refused
        baseline = not img.info.get("progressive") and not img.info.get("progression")
        if img.width * img.height > MAX_IMAGE_PIXELS * (64 if baseline else 2) and img.format in ("JPEG", "MPO"):
            raise DataError(too_large)
        if img.width * img.height > MAX_IMAGE_PIXELS and img.format in ("JPEG", "MPO"):  # MPO: a camera's JPEG
            # a 108 or 200 Mpx phone photo: decoded at 1/2 (1/4, 1/8) of its size, which JPEG gives for free, not
            # refused; the bound on memory holds all the same (a data set's scan still skips it as too_large)
            shrink = 2
            while img.width * img.height / shrink ** 2 > MAX_IMAGE_PIXELS and shrink < 8:
                shrink *= 2
            # Pillow picks the scale as min(W // w, H // h) for a requested (w, h): W // shrink gives shrink, a
            # size rounded up would give 1 for an odd side
            img.draft("RGB", (max(1, img.width // shrink), max(1, img.height // shrink)))
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise DataError(too_large)
        if max_side is None:
            return np.asarray(to_rgb(img)), shrink
        if img.format == "JPEG":
            img.draft("RGB", (max_side, max_side))
        rgb = to_rgb(img)
        rgb.thumbnail((max_side, max_side))
        return np.asarray(rgb), 1


@contextlib.contextmanager
def _pillow_guard_lifted():
    """Pillow's size guard raised while one file is opened (its header read, nothing decoded): to 64 times ours,
    the most a JPEG read at 1/8 can be; every other caller keeps it as set."""
    kept, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS * 64
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = kept


def labelled_folder_above(path, csv_sets=True) -> Path | None:
    """The first folder at or above path that holds a labelled face data set: folders named by age holding
    photos, or images named as UTKFace names its files (inference.py's own annotated copies aside), whose files
    come back as training faces on the next eda.py run; with csv_sets, also a path,age CSV's folder (eda.py
    counts the images there it does not list). A folder of loosely numbered photos (1_beach.jpg) is none:
    eda.py would read it, but passes over the annotated copies (NAME_age.jpg) written there."""
    for folder in [Path(path).resolve(), *Path(path).resolve().parents]:
        try:
            entries = list(itertools.islice(folder.iterdir(), 500))
        except OSError:  # not there yet, or not readable
            continue
        ages = [p for p in entries if p.is_dir() and _parse_age(p.name) is not None
                and 0 <= _parse_age(p.name) <= MAX_LABEL_AGE and holds_photos(p)]
        if is_date_folder(folder, ages):
            ages = []
        # 20230805_101010.jpg (a phone's name) is no UTKFace face: its "age" is no age
        if len(ages) >= 2 or any(_is_image_name(p) and (m := UTKFACE_FULL_NAME.match(p.name))
                                 and int(m.group(1)) <= MAX_LABEL_AGE and not is_annotated_copy(p) for p in entries) \
                or csv_sets and labels_faces_inside(folder):
            return folder
    return None


# files this tool writes into its output folders (train.py, eda.py, the tuner, inference.py): a numbered
# folder holding one (runs/1, searches/2) is no age, whatever figures (PNG) it holds
TOOL_OUTPUT_NAMES = (".lock", "last.pt", "best.pt", "config.json", "metrics.json", "data_report.json",
                     "best_params.json", "lr_sweep.csv", "overfit.json", "predictions.csv", "predictions.json")


def holds_photos(folder) -> bool:
    """Whether a numbered folder is an age folder as eda.py reads one: images in it or in folders below (the
    first 200 files looked at), and none of this tool's outputs (an empty runs/3 left by a Ctrl-C is none)."""
    folder = Path(folder)
    if any((folder / name).exists() for name in TOOL_OUTPUT_NAMES):
        return False
    try:  # at any depth, as eda.py reads an age folder (DATA/25/person/session/*.jpg), a bounded look
        return any(_is_image_name(Path(f)) for f in itertools.islice(_walk_files(folder), 200))
    except OSError:
        return False


def is_date_folder(folder, numbered_folders) -> bool:
    """Whether numbered folders are months or days, not ages: Pictures/2024/03/17 as cameras and photo apps
    file photos. They are when the folder, or the one above it, is named by a year, and every number is a
    month or a day (1-31). What this lets through: a data set of ages 1-31 alone, filed under a year's name."""
    folder = Path(folder)
    named_by_year = any(re.fullmatch(r"(19|20)\d\d", f.name) for f in (folder, folder.parent))
    return named_by_year and all(1 <= _parse_age(p.name) <= 31 for p in numbered_folders)


def labels_faces_inside(folder) -> bool:
    """Whether a folder holds a path,age CSV that names files by relative path (the CSV layout: the folder is
    the data set, and a file written there is counted by the next eda.py run); eda.py's own labels.csv names
    the faces by absolute path, elsewhere, so its output folder is none."""
    try:
        return any(_names_files_by_relative_path(p) for p in _label_csvs(Path(folder)))
    except OSError:  # a folder not to be listed
        return False


def _names_files_by_relative_path(csv_path) -> bool:
    try:
        with open(csv_path, newline="", encoding=_csv_encoding(csv_path), errors="replace") as f:
            rows = itertools.islice(_csv_rows(csv_path, f), 20)
            paths = [r.get("path", "").strip() for r in ({k.strip().lower(): v or "" for k, v in row.items() if k}
                                                         for row in rows)]
    except (DataError, OSError, csv.Error):
        return True  # a labels CSV we cannot read through: err on the side of the data
    return any(p and not os.path.isabs(p) and not re.match(r"^[A-Za-z]:[\\/]", p) for p in paths)


def content_hash(data: bytes) -> str:
    """The identity of a file's bytes: duplicates, splits and teachers are matched by it."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def drop_conflicts_outside_filter(kept, outside, stats):
    """Kept records with a byte-identical copy of another age among `outside` (the records --min-age or
    --max-age left out): dropped, as deduplicate drops a group whose ages disagree, the counts going into
    its stats. Without this, the filter would hide one of the two labels and the other would pass."""
    ages_of = {}
    for rec in outside:
        try:
            if Path(rec["path"]).stat().st_size > MAX_FILE_BYTES:
                continue
            ages_of.setdefault(content_hash(Path(rec["path"]).read_bytes()), set()).add(rec["age"])
        except OSError:  # unreadable: no copy of anything
            continue
    conflicting = [r for r in kept if ages_of.get(r["hash"], {r["age"]}) != {r["age"]}]
    stats = dict(stats)
    stats["conflict_groups_dropped"] += len(conflicting)
    stats["conflict_files_dropped"] += len(conflicting)
    dropped = {r["path"] for r in conflicting}
    return [r for r in kept if r["path"] not in dropped], stats


def check_image(path) -> dict:
    """Read a file once: content hash, size, and the reason it is unusable (reason None = usable)."""
    result = {"path": str(path), "hash": None, "width": 0, "height": 0, "reason": None}
    try:
        if Path(path).stat().st_size > MAX_FILE_BYTES:  # never read a huge file whole just to reject it
            result["reason"] = "too_large"
            return result
        data = Path(path).read_bytes()
    except OSError:
        result["reason"] = "unreadable_file"
        return result
    if not data:
        result["reason"] = "empty_file"
        return result
    result["hash"] = content_hash(data)
    import io
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = (img.height, img.width) if _has_rotation(img) else img.size  # as loaded
                if width * height > MAX_IMAGE_PIXELS:
                    result["reason"] = "too_large"
                    return result
                if img.format == "JPEG":
                    img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))  # fast full pass
                img.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        result["reason"] = "too_large"
        return result
    except OSError as exc:
        result["reason"] = "truncated" if "truncated" in str(exc).lower() else "undecodable"
        return result
    except Exception:
        result["reason"] = "undecodable"
        return result
    result["width"], result["height"] = width, height
    if min(width, height) < MIN_IMAGE_SIDE:
        result["reason"] = "too_small"
    return result


EXIF_ORIENTATION, EXIF_IFD, EXIF_WIDTH, EXIF_HEIGHT = 0x0112, 0x8769, 0xA002, 0xA003  # tags (and the Exif IFD's)


def _has_rotation(img: Image.Image) -> bool:
    """Whether its EXIF Orientation turns it a quarter (5-8: width and height swap when shown)."""
    try:
        return img.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
    except Exception:
        return False


def worker_pool(workers: int):
    """A process pool that is safe to start from a process already running torch or OpenCV threads.

    "fork" copies the parent's thread locks mid-state and can hang the children (seen in pytest after
    torch ops); "spawn" starts clean interpreters, at about a second of start-up.
    """
    import multiprocessing as mp
    return mp.get_context("spawn").Pool(workers)


def scan_images(records, workers: int = 2, progress: bool = True):
    """check_image() for every record, in parallel processes, in input order."""
    from tqdm import tqdm
    paths = [r["path"] for r in records]
    if workers > 1 and len(paths) > 256:
        with worker_pool(workers) as pool:
            it = pool.imap(check_image, paths, chunksize=64)
            results = list(tqdm(it, total=len(paths), desc="checking images", disable=not progress))
    else:
        results = [check_image(p) for p in tqdm(paths, desc="checking images", disable=not progress)]
    return [{**rec, **res} for rec, res in zip(records, results)]


# ----------------------------------------------------------------------------------------------
# Duplicates and the split

def path_order(record) -> str:
    """The key records are sorted by before the seeded split: the path with its accents composed (NFC), so
    that a copy whose file names macOS or a zip stored decomposed (NFD) splits exactly as the original, and
    with "/" between folders, so that Windows ("\\" sorts after the digits, "/" before them: p1/ and p10/
    change places) splits as Linux and macOS do."""
    return unicodedata.normalize("NFC", record["path"].replace(os.sep, "/"))


def deduplicate(records):
    """Byte-identical files share a hash: keep one per group if the ages agree, drop the group if not.

    Returns (kept, stats) with stats = {"duplicate_files_removed", "conflict_groups_dropped",
    "conflict_files_dropped"}.
    """
    groups: dict[str, list] = {}
    for rec in records:
        groups.setdefault(rec["hash"], []).append(rec)
    kept, stats = [], Counter()
    for group in groups.values():
        if len({r["age"] for r in group}) > 1:
            stats["conflict_groups_dropped"] += 1
            stats["conflict_files_dropped"] += len(group)
            continue
        kept.append(min(group, key=path_order))  # deterministic representative
        stats["duplicate_files_removed"] += len(group) - 1
    kept.sort(key=path_order)
    return kept, {k: stats.get(k, 0) for k in
                  ("duplicate_files_removed", "conflict_groups_dropped", "conflict_files_dropped")}


def stratification_bins(ages, min_per_bin: int = 10) -> np.ndarray:
    """Map each age to a stratum; ages rarer than min_per_bin merge with their neighbours.

    Consecutive sorted ages are accumulated until the group holds min_per_bin images, so every
    stratum can give at least one image to each of the 10 % splits. A small remainder at the top
    joins the last group. Nothing is dropped.
    """
    ages = np.asarray(ages)
    values, counts = np.unique(ages, return_counts=True)
    bin_of_age, current, filled = {}, 0, 0
    for value, count in zip(values, counts):
        bin_of_age[value] = current
        filled += count
        if filled >= min_per_bin:
            current, filled = current + 1, 0
    if 0 < filled < min_per_bin and current > 0:  # leftover ages at the top join the previous bin
        for value in values[::-1]:
            if bin_of_age[value] == current:
                bin_of_age[value] = current - 1
            else:
                break
    return np.array([bin_of_age[a] for a in ages])


def stratified_split(records, seed: int = 42, fractions=(0.8, 0.1, 0.1), group_key: str | None = None):
    """Seeded split of records into (train, val, test), stratified by age.

    Within each stratum, val and test get round(n * fraction) images each and train the rest, so
    each split's share of a stratum is within one image of its target. With group_key (e.g.
    "subject") all records sharing that value stay in one split (group_split).
    """
    if not math.isclose(sum(fractions), 1.0):
        raise ValueError("split fractions must sum to 1")
    records = sorted(records, key=path_order)  # independent of discovery order
    if group_key is not None:
        return group_split(records, group_key, seed, fractions)
    bins = stratification_bins([r["age"] for r in records])
    rng = np.random.default_rng(seed)
    splits = ([], [], [])
    for b in np.unique(bins):
        members = [records[i] for i in np.flatnonzero(bins == b)]
        order = rng.permutation(len(members))
        n_val = int(round(len(members) * fractions[1]))
        n_test = int(round(len(members) * fractions[2]))
        n_train = len(members) - n_val - n_test
        for i, idx in enumerate(order):
            target = 0 if i < n_train else (1 if i < n_train + n_val else 2)
            splits[target].append(members[idx])
    return tuple(sorted(s, key=path_order) for s in splits)


def split_groups(records, group_key: str) -> dict:
    """{group: [record indices]}; a record with a blank group value is a group of its own."""
    groups: dict = {}
    for i, rec in enumerate(records):
        value = str(rec.get(group_key) or "").strip()
        groups.setdefault(unicodedata.normalize("NFC", value) or "\0" + path_order(rec), []).append(i)
    return groups


def group_split(records, group_key: str, seed: int = 42, fractions=(0.8, 0.1, 0.1)):
    """Seeded split that keeps every group (a person) in one split, stratified by age as far as the
    groups allow: groups are placed largest first (ties in seeded random order), each into the split
    where it best fills the missing share of that split's size and of each age stratum (squared
    shortfall relative to the target). Raises DataError with fewer than three groups.
    """
    records = sorted(records, key=path_order)
    groups = split_groups(records, group_key)
    if len(groups) < 3:
        raise DataError(f"only {len(groups)} distinct {group_key} value(s): a split that keeps each person in "
                        "one split needs at least 3 (one each for train, val and test)")
    bins = stratification_bins([r["age"] for r in records])
    keys = sorted(groups)
    perm = np.random.default_rng(seed).permutation(len(keys))
    order = sorted(perm, key=lambda g: -len(groups[keys[g]]))  # stable: equal sizes stay shuffled
    # columns: the age strata, then the size; targets are the split's share of each
    hist = [np.append(np.bincount(bins[groups[keys[g]]], minlength=bins.max() + 1), len(groups[keys[g]]))
            for g in range(len(keys))]
    total = np.sum(hist, axis=0).astype(float)
    target = np.outer(fractions, total)
    filled = np.zeros_like(target)
    members: list[list] = [[], [], []]
    for g in order:
        h = hist[g]
        gain = ((2 * (filled - target) + h) * h / np.maximum(target, 1e-9)).sum(axis=1)  # change in squared error
        gain += np.where(np.array(fractions) > 0, 0.0, np.inf)
        best = int(np.argmin(gain))
        filled[best] += h
        members[best].append(g)
    for s in range(3):  # a split the greedy left empty takes the smallest group of the fullest one
        if not members[s] and fractions[s] > 0:
            donor = max(range(3), key=lambda d: len(members[d]))
            g = min(members[donor], key=lambda g: (len(groups[keys[g]]), keys[g]))
            members[donor].remove(g)
            members[s].append(g)
    return tuple(sorted((records[i] for g in m for i in groups[keys[g]]), key=path_order)
                 for m in members)


def atomic_write(path, write):
    """write(file_object) into a temporary file beside path, fsync, then rename over path.

    Lives here, at the bottom of the import chain, so the data layer can use it; functions.py
    re-exports it as functions.atomic_write.
    """
    path = Path(path)
    tmp = _write_staged(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):  # a Ctrl-C during the rename may come after it: not to be hidden by ENOENT
            os.unlink(tmp)
        raise


def atomic_write_together(writes: dict):
    """{path: write(file_object)}: the files replaced as one set, as far as a file system allows: each written
    and synced under a temporary name beside its target first, then all renamed one after another (microseconds
    apart; written one after another, a kill in the seconds between kept a new file beside an old one). Where a
    write fails, no target is replaced; a rename failing part-way (a target locked or made a folder) is not undone."""
    staged = {}
    try:
        for path, write in writes.items():
            staged[Path(path)] = _write_staged(Path(path), write)
        for path, tmp in staged.items():
            os.replace(tmp, path)
    except BaseException:
        for tmp in staged.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise


def _write_staged(path: Path, write) -> str:
    """write(file_object) into a synced temporary file beside path; its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # the PID in the name lets remove_orphans() clear what a killed process left behind; the name is cut short so
    # that a legal name near the 255-byte limit still has a legal temporary name
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:40]}.", suffix=f".{os.getpid()}.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        share_like_a_new_file(tmp, 0o666)  # mkstemp's 0600 would hide outputs from other users
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return tmp


def write_image(path, rgb, params=()):
    """An RGB uint8 image encoded by path's suffix (.png, .jpg...; params: cv2.IMWRITE_* pairs) and
    written atomically. ValueError when OpenCV cannot encode that suffix."""
    import cv2
    path = Path(path)
    if not path.suffix or not cv2.haveImageWriter("x" + path.suffix):
        raise ValueError(f"cannot encode {path} (unsupported type {path.suffix!r}); use .jpg or .png")
    height, width = rgb.shape[:2]
    if path.suffix.lower() in (".jpg", ".jpeg", ".jpe") and max(width, height) > 65500:  # asked first: OpenCV
        # would log its own error on the way
        raise ValueError(f"cannot encode a {width}x{height} image as {path.suffix} ({path}): JPEG takes at most "
                         "65500 pixels a side; use .png")
    try:
        ok, data = cv2.imencode(path.suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), list(params))
    except cv2.error:
        ok = False
    if not ok:  # a type that has a writer, but not for this image
        raise ValueError(f"cannot encode a {width}x{height} image as {path.suffix} ({path}); try .png")
    atomic_write(path, lambda f: f.write(data.tobytes()))


def share_like_a_new_file(path, mode):
    """chmod path to mode minus the umask: what open()/mkdir() would have given it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def write_csv(path, rows, columns, line_end="\r\n"):
    """rows (dicts) as a UTF-8 CSV with these columns (other keys ignored), written atomically."""
    def write(f):
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore", lineterminator=line_end)
        writer.writeheader()
        writer.writerows(rows)
        text.flush()
        text.detach()  # leave the binary file open for atomic_write's fsync
    atomic_write(path, write)


SPLIT_TEXT_COLUMNS = ("subject", *GROUP_COLUMNS)  # kept (as text) when a split CSV has them


def read_split(path) -> list[dict]:
    """Read a split CSV (columns path, age at least) with a clear error for anything else.

    Rows are {"path", "age"}, plus "subject", "gender", "race" (text) where the CSV has those
    columns, and "hash" (the file's content hash, which the cache checks) except for aligned chips; any
    other column is ignored, so older CSVs and newer ones read the same way.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file not found: {path} (run eda.py first; it writes OUT/splits/*.csv)")
    try:
        return _read_split(path)
    except (csv.Error, UnicodeDecodeError) as exc:
        raise unreadable_split(path, exc) from None


def unreadable_split(path, exc) -> DataError:
    """The one words for a split CSV that csv cannot read (a stray quote, a field over csv's limit)."""
    return DataError(f"{path} is not a readable split CSV ({type(exc).__name__}: {exc}); rerun eda.py")


def _read_split(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip().lower() for c in (reader.fieldnames or [])]
        if "path" not in columns or "age" not in columns:
            raise DataError(f"{path} has columns {columns}; a split CSV needs path,age (as eda.py writes)")
        rows = []
        for row in reader:
            row = {k.strip().lower(): v for k, v in row.items() if k}
            age = _parse_age(row.get("age") or "")
            if age is None or not 0 <= age <= MAX_LABEL_AGE:  # a hand-edited split: eda.py never writes one
                raise DataError(f"{path}: age {str(row.get('age'))[:20]!r} is not a whole number of years in "
                                f"0..{MAX_LABEL_AGE} (row {len(rows) + 2})")
            extra = {c: (row.get(c) or "").strip() for c in SPLIT_TEXT_COLUMNS if c in columns}
            # the file's content hash when eda.py split it; an aligned chip's is its source photo's, not its own
            if "hash" in columns and "source" not in columns and (row.get("hash") or "").strip():
                extra["hash"] = row["hash"].strip()
            rows.append({"path": row["path"], "age": age, **extra})
    if not rows:
        raise DataError(f"{path} has no rows; rerun eda.py on a folder with images")
    return rows


# ----------------------------------------------------------------------------------------------
# Preprocessing: the single definition used by training, evaluation, export metadata and inference

MAX_DENOISE_STRENGTH = 100  # non-local means' h: at 100 a face is a smooth blur already


def plain_number(value, largest=1e6) -> bool:
    """A JSON number as this project writes one: int or float (not bool), finite, within +-largest. A file
    from elsewhere may hold Infinity or a 400-digit whole number (on which math.isfinite raises)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value) and abs(value) <= largest
    except OverflowError:
        return False


@dataclasses.dataclass
class PreprocessConfig:
    image_size: int = 128      # square side fed to the network
    denoise: bool = True       # OpenCV non-local means (the seed's cv2.fastNlMeansDenoisingColored)
    denoise_strength: float = 5.0  # h / hColor of non-local means; higher removes more noise and detail
    deblur: bool = True        # unsharp mask (the seed's sharpening step)
    deblur_amount: float = 0.5  # weight of the high-pass added back
    mean: tuple = (0.5, 0.5, 0.5)  # per-channel, on the 0-1 scale; replaced by training-split stats
    std: tuple = (0.25, 0.25, 0.25)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessConfig":
        """From a stored dict: a checkpoint's config, or a model file's metadata, which may come from anywhere.
        ValueError naming a setting of the wrong type or out of range ("false" as text would switch a filter
        on, a text strength would fail at the first photo)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in fields}
        for key in ("denoise", "deblur"):
            if key in d and not isinstance(d[key], bool):
                raise ValueError(f"{key} must be true or false, got {repr(d[key])[:40]}")
        for switch, key, low, high in (("denoise", "denoise_strength", 0, MAX_DENOISE_STRENGTH),
                                       ("deblur", "deblur_amount", 0, 10)):
            if key not in d or plain_number(d[key]) and low < d[key] <= high:
                continue
            if not d.get(switch, cls.__dataclass_fields__[switch].default):  # a filter that is off never used it
                del d[key]  # (train.py once stored any --denoise-strength with --no-denoise)
            else:
                raise ValueError(f"{key} must be a number in ({low}, {high}], got {repr(d[key])[:40]}")
        for key in ("mean", "std"):
            if key in d:
                values = d[key]
                if not isinstance(values, (list, tuple)) or len(values) != 3 or not all(map(plain_number, values)):
                    raise ValueError(f"{key} must be 3 numbers (one per colour channel), got {repr(values)[:60]}")
                d[key] = tuple(float(v) for v in values)
        if "std" in d and min(d["std"]) <= 0:
            raise ValueError(f"std must be positive, got {list(d['std'])}")
        return cls(**d)

    def cache_settings(self) -> dict:
        """The settings that change the cached uint8 pixels (not mean/std, applied later). The strength of a
        filter that is off changes nothing: it reads as its default, so the same pixels keep one cache."""
        d = self.to_dict()
        d.pop("mean"), d.pop("std")
        for switch, setting in (("denoise", "denoise_strength"), ("deblur", "deblur_amount")):
            if not d[switch]:
                d[setting] = PREPROCESS_DEFAULTS[setting]
        return d


PREPROCESS_DEFAULTS = PreprocessConfig().to_dict()


MAX_LIFT = 4.0  # lift_dark's largest gain: a quarter of the light, the darkest bench_detection.py --size-light measures
EXPOSURE_PERCENTILE = 95  # exposure_luma: the bright end of a face chip, not its mean


def exposure_luma(rgb: np.ndarray) -> float:
    """How much light an HxWx3 image got: the EXPOSURE_PERCENTILE-th percentile of its luma (GRAY_WEIGHTS, 0-255),
    on a grid of at most ~250,000 pixels (a whole photo costs no more than a chip). The bright end, not the mean: a
    dark-skinned face in good light still has bright pixels (eyes, skin highlights, background), a face in a dim
    photo has none; a mean could not tell the two apart (it brightened the darkest-skinned test faces)."""
    return float(exposure_lumas(rgb[None])[0])


def exposure_lumas(images) -> np.ndarray:
    """exposure_luma of each of N x H x W x 3 uint8 images of one size, in one pass."""
    step = max(1, math.ceil(math.sqrt(images.shape[1] * images.shape[2] / 250_000)))
    grid = np.asarray(images)[:, ::step, ::step]
    luma = grid.reshape(len(grid), -1, 3) @ np.asarray(GRAY_WEIGHTS, dtype=np.float32)
    return np.percentile(luma, EXPOSURE_PERCENTILE, axis=1)


DARK_FLOOR_PERCENTILE = 1  # a model's own dark floor (train.py): darker than 99 % of the faces it learnt from


def dark_floor_of(images, batch: int = 256) -> float:
    """The DARK_FLOOR_PERCENTILE-th percentile of the exposure_luma of N x H x W x 3 uint8 images (a split's cache,
    read a batch at a time): the dark floor of a model trained on them, which its export records as "dark_floor"."""
    levels = [exposure_lumas(images[i:i + batch]) for i in range(0, len(images), batch)]
    return round(float(np.percentile(np.concatenate(levels), DARK_FLOOR_PERCENTILE)), 1)


def lift_dark(rgb: np.ndarray, floor: float) -> np.ndarray:
    """HxWx3 uint8 RGB scaled up so that its exposure_luma is at least `floor` (one gain, at most MAX_LIFT); the
    image itself where it is that bright already or floor is 0. A face in a dim photo reaches the model far darker than
    any it learnt from (its error rose from 4.5 to 5.7 years at a quarter of the light, RESULTS.md), and one gain
    brings it back to the range it knows; pixels that would pass 255 stop there."""
    import cv2
    if floor <= 0:
        return rgb
    level = exposure_luma(rgb)
    if level >= floor:
        return rgb
    return cv2.convertScaleAbs(np.ascontiguousarray(rgb), alpha=min(floor / max(level, 1.0), MAX_LIFT))  # rounds, saturates


def preprocess_rgb(rgb: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """HxWx3 uint8 RGB (any size) -> image_size x image_size x 3 uint8, denoised and sharpened.

    Resize comes first (unlike the seed, which denoised at full size) so that the cost per image is
    the same for a 200 px crop and a 2000 px photo, and the denoiser sees noise at the scale the
    network sees it, for training crops and wild photos alike.
    """
    import cv2
    size = cfg.image_size
    interp = cv2.INTER_AREA if min(rgb.shape[:2]) >= size else cv2.INTER_LINEAR
    return filter_input(cv2.resize(np.ascontiguousarray(rgb), (size, size), interpolation=interp), cfg)


def filter_input(out: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """The second half of preprocess_rgb: denoise and sharpen an image already at the input size."""
    import cv2
    if cfg.denoise:
        h = float(cfg.denoise_strength)
        out = cv2.fastNlMeansDenoisingColored(out, None, h, h, 7, 21)
    if cfg.deblur:
        blurred = cv2.GaussianBlur(out, (0, 0), sigmaX=1.0)
        out = cv2.addWeighted(out, 1.0 + cfg.deblur_amount, blurred, -cfg.deblur_amount, 0)
    return out


def preprocess_file(path, cfg: PreprocessConfig) -> np.ndarray:
    return preprocess_rgb(load_rgb(path), cfg)


MAX_TTA_ZOOMS = 4  # each zoom is one more forward pass per face; a model file's metadata may not ask for thousands


def parse_zooms(text) -> tuple:
    """"0.95,0.9" -> (0.95, 0.9): train.py --tta-zoom, as configs and exports store it ("" or a list)."""
    if text is None:
        return ()
    if not isinstance(text, (str, list, tuple)):
        raise ValueError(f"test-time zooms are a list or comma-separated text, not {type(text).__name__}")
    items = text.split(",") if isinstance(text, str) else list(text)
    if len([item for item in items if not (isinstance(item, str) and not item.strip())]) > MAX_TTA_ZOOMS:
        raise ValueError(f"at most {MAX_TTA_ZOOMS} test-time zooms, got {len(items)}")
    zooms = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        try:
            if isinstance(item, bool):
                raise TypeError
            zoom = float(item)
        except (ValueError, TypeError, OverflowError):  # a model file's metadata: null, a list, 10**400
            raise ValueError(f"test-time zoom {repr(item)[:40]} is not a number; give fractions of the side such as "
                             "0.95,0.9") from None
        if not 0.5 <= zoom < 1.0:
            raise ValueError(f"test-time zoom {zoom:g} is outside [0.5, 1): it is the share of the side kept "
                             "around the centre (1 is the image itself, always included)")
        zooms.append(zoom)
    return tuple(zooms)


def zoom_batch(batch: np.ndarray, zoom: float) -> np.ndarray:
    """Test-time view: the centred square of `zoom` times the side of each N x 3 x S x S image (0-255),
    bilinearly resized back to S x S; float32. The one definition both evaluation (functions.py) and
    inference.py use, in numpy so that ONNX inference needs no torch."""
    import cv2
    batch = np.asarray(batch, dtype=np.float32)
    side = batch.shape[-1]
    crop = int(round(side * zoom))
    if not 0 < crop <= side:
        raise ValueError(f"zoom {zoom} leaves {crop} of {side} pixels; a test-time zoom lies in (0, 1]")
    top = (side - crop) // 2
    window = batch[:, :, top:top + crop, top:top + crop]
    out = np.empty_like(batch)
    for i, image in enumerate(window):
        out[i] = cv2.resize(np.ascontiguousarray(image.transpose(1, 2, 0)), (side, side),
                            interpolation=cv2.INTER_LINEAR).reshape(side, side, -1).transpose(2, 0, 1)
    return out


def normalize(batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 or 0-255 float NCHW -> normalised float. mean/std are (3,) on the 0-1 scale.

    Kept to plain tensor ops so the exported models run the very same code (TorchScript, ONNX).
    """
    x = batch.float() / 255.0
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def channel_stats(images: np.ndarray, chunk: int = 1024):
    """Per-channel mean and std (0-1 scale) of an N x H x W x 3 uint8 array, computed in chunks."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].reshape(-1, 3).astype(np.float64) / 255.0
        total += x.sum(0)
        total_sq += (x * x).sum(0)
        count += x.shape[0]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean ** 2, 1e-12))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


# ----------------------------------------------------------------------------------------------
# Augmentation: training only, on whole batches (cheap vectorised ops instead of per-image PIL work)

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, as OpenCV and PIL turn RGB gray
SCAN_SCALE = (0.35, 0.7)   # a scanned-looking image is resampled down to this share of its side and back ...
SCAN_GRAIN = 8.0           # ... plus Gaussian grain of sigma up to this (0-255 scale)
GRAIN_BLOB = (1.0, 3.0)    # film grain: luminance noise in blobs of this size (px at the input size) ...
GRAIN_SIGMA = 8.0          # ... and of standard deviation up to this (0-255 scale)
ERASE_AREA = (0.02, 0.25)  # random erasing: the rectangle's share of the image area ...
ERASE_ASPECT = (0.3, 3.3)  # ... and its height / width, drawn log-uniformly


@dataclasses.dataclass
class AugmentConfig:
    flip: bool = True          # horizontal flip with p = 0.5
    max_rotate: float = 10.0   # degrees
    max_shift: float = 0.05    # fraction of the image side
    max_scale: float = 0.10    # zoom in/out by up to this fraction
    brightness: float = 0.2    # multiplicative jitter of brightness
    contrast: float = 0.2      # multiplicative jitter of contrast around the image mean
    grayscale: float = 0.0     # share of images turned gray (scanned and old photos are); 0 draws nothing,
                               # so the presets without it keep their random streams and figures
    grain: float = 0.0         # share of images given film grain (GRAIN_BLOB, GRAIN_SIGMA), before any scan
                               # degradation, as a print is grained before it is scanned; 0 draws nothing
    degrade: float = 0.0       # share of images made to look scanned (SCAN_SCALE, SCAN_GRAIN); 0 draws nothing
    erase: float = 0.0         # share of images with one rectangle (ERASE_AREA, ERASE_ASPECT) turned to noise
                               # (random erasing, Zhong et al. 2020); 0 draws nothing

    @classmethod
    def off(cls) -> "AugmentConfig":
        return cls(False, 0.0, 0.0, 0.0, 0.0, 0.0)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random flips, rotation/shift/scale and brightness/contrast on a float NCHW batch (0-255). The draws come
    from the CPU generator wherever x lies, so a batch on a GPU is augmented there (a GPU machine's CPU
    cores, augmenting for it, were its bottleneck) with the very draws a CPU run makes."""
    n, device = x.shape[0], x.device

    def uniform(low, high):
        return torch.rand(n, generator=generator) * (high - low) + low

    if cfg.flip:
        flip = torch.rand(n, generator=generator) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1).to(device), x.flip(-1), x)
    if cfg.max_rotate or cfg.max_shift or cfg.max_scale:
        angle = uniform(-cfg.max_rotate, cfg.max_rotate) * math.pi / 180
        scale = uniform(1 - cfg.max_scale, 1 + cfg.max_scale)
        tx, ty = uniform(-cfg.max_shift, cfg.max_shift) * 2, uniform(-cfg.max_shift, cfg.max_shift) * 2
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        grid = torch.nn.functional.affine_grid(theta.to(device, x.dtype), list(x.shape), align_corners=False)
        x = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if cfg.brightness or cfg.contrast:
        b = uniform(1 - cfg.brightness, 1 + cfg.brightness).view(-1, 1, 1, 1).to(device)
        c = uniform(1 - cfg.contrast, 1 + cfg.contrast).view(-1, 1, 1, 1).to(device)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * c + mean) * b
        x = x.clamp(0, 255)
    if cfg.grayscale:
        gray = torch.rand(n, generator=generator) < cfg.grayscale
        luma = (x * torch.tensor(GRAY_WEIGHTS, dtype=x.dtype, device=device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = torch.where(gray.view(-1, 1, 1, 1).to(device), luma.expand_as(x), x)
    if cfg.grain:
        x = add_film_grain(x, cfg.grain, generator)
    if cfg.degrade:
        hit, factor, sigma = torch.rand(n, generator=generator) < cfg.degrade, uniform(*SCAN_SCALE), uniform(0.0, SCAN_GRAIN)
        grain = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(device)
        side, out = x.shape[-2:], x.clone()
        for i in hit.nonzero().flatten().tolist():  # each image its own resolution
            small_side = [max(8, round(v * float(factor[i]))) for v in side]
            small = torch.nn.functional.interpolate(x[i:i + 1], size=small_side, mode="bilinear", antialias=True)
            out[i] = torch.nn.functional.interpolate(small, size=list(side), mode="bilinear")[0] + grain[i] * sigma[i]
        x = out.clamp(0, 255)
    if cfg.erase:
        x = erase_rectangles(x, cfg.erase, generator)
    return x


def add_film_grain(x: torch.Tensor, share: float, generator=None) -> torch.Tensor:
    """A share of the images in a float NCHW batch (0-255) get luminance grain: noise drawn on a grid
    coarser by a blob size (GRAIN_BLOB) and resampled to the image, the same on the three channels.
    A model that never saw it reads such blobs as skin texture, i.e. as age (RESULTS.md, "grained copies":
    the validation MAE of models trained without it on grained copies of the validation faces)."""
    n, _, h, w = x.shape
    hit = torch.rand(n, generator=generator) < share
    blob = torch.empty(n).uniform_(*GRAIN_BLOB, generator=generator)
    sigma = torch.empty(n).uniform_(0.0, GRAIN_SIGMA, generator=generator)
    out = x.clone()
    for i in hit.nonzero().flatten().tolist():  # each image its own blob size
        coarse = torch.randn(1, 1, max(4, round(h / float(blob[i]))), max(4, round(w / float(blob[i]))),
                             generator=generator, dtype=x.dtype).to(x.device)
        grain = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0]
        out[i] = x[i] + grain / grain.std().clamp_min(1e-6) * sigma[i]
    return out.clamp(0, 255)


def erase_rectangles(x: torch.Tensor, share: float, generator=None) -> torch.Tensor:
    """A share of the images in a float NCHW batch (0-255) each get one rectangle of uniform noise:
    the model must judge age from the rest of the face (an occluding hand, glasses, hair)."""
    n, _, h, w = x.shape
    hit = torch.rand(n, generator=generator) < share
    area = torch.empty(n).uniform_(*ERASE_AREA, generator=generator) * h * w
    aspect = torch.exp(torch.empty(n).uniform_(math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1]),
                                               generator=generator))
    eh = (area * aspect).sqrt().clamp(1, h).floor()
    ew = (area / aspect).sqrt().clamp(1, w).floor()
    top = (torch.rand(n, generator=generator) * (h - eh + 1)).floor()
    left = (torch.rand(n, generator=generator) * (w - ew + 1)).floor()
    rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + eh).view(-1, 1, 1))
              & (cols >= left.view(-1, 1, 1)) & (cols < (left + ew).view(-1, 1, 1)) & hit.view(-1, 1, 1))
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype) * 255
    return torch.where(inside.unsqueeze(1).to(x.device), noise.to(x.device), x)


ALTERATIONS = {  # whole validation sets altered as some real photos are: how a model copes, on no test set
    "gray": dataclasses.replace(AugmentConfig.off(), grayscale=1.0),
    "scan": dataclasses.replace(AugmentConfig.off(), degrade=1.0),
    "grain": dataclasses.replace(AugmentConfig.off(), grain=1.0),
}


def altered_copies(images: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """uint8 N x S x S x 3 copies of images, every one made gray, scanned-looking or grained (ALTERATIONS) by the
    training augmentation's own code, with a fixed seed so a run's figure can be measured again."""
    chunk = 256  # fixed: the random draws depend on it
    generator, out = torch.Generator().manual_seed(seed), np.empty_like(images)
    for start in range(0, len(images), chunk):
        # a copy: images may be a read-only memory map (the cache), which torch.from_numpy warns about
        x = torch.tensor(images[start:start + chunk]).permute(0, 3, 1, 2).float()
        x = augment_batch(x, ALTERATIONS[kind], generator)
        out[start:start + chunk] = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


# ----------------------------------------------------------------------------------------------
# Cache: each image decoded and denoised once per setting

def _preprocess_or_none(args):
    path, cfg_dict, *expected_hash = args
    import cv2
    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would only contend
    cfg = PreprocessConfig.from_dict(cfg_dict)
    expected = expected_hash[0] if expected_hash else None

    def attempt():
        if not expected:
            return preprocess_file(path, cfg), None
        data = Path(path).read_bytes()  # hashed and decoded from one read
        if content_hash(data) != expected:
            # other pixels under the split's name (a re-export, a re-crop): the duplicate check never saw them
            return None, "changed_since_split"
        return preprocess_rgb(load_rgb(io.BytesIO(data)), cfg), None
    try:
        return attempt()
    except FileNotFoundError:
        return None, "missing_file"
    except Exception:
        pass
    # a file that cannot be read now (a network share's hiccup) is no undecodable file; one whose hiccup has
    # passed by now is tried once more (its bytes checked again), so a passing fault is not cached as broken
    if not _readable(path):
        return None, "unreadable_file"
    try:
        return attempt()
    except Exception:
        return None, "undecodable"


# Raise it with any change to to_rgb, preprocess_rgb or filter_input: the cached pixels of every split are then
# made again, so training never reads pixels that inference.py, which calls the new code, would not make; a model's
# export records the version it learnt from, and inference.py notes one made under another
PREPROCESS_VERSION = 4  # 4: colour profiles converted to sRGB (to_srgb)


def decoder_versions() -> dict:
    """The libraries that decode, resize and denoise an image file: a cached result made under other versions
    is made again."""
    import PIL
    import cv2
    import pi_heif
    return {"opencv": cv2.__version__, "pillow": PIL.__version__,
            "pi_heif": pi_heif.__version__, "libheif": pi_heif.libheif_version()}  # HEIC files are decoded by it


def cache_key(paths, cfg: PreprocessConfig) -> str:
    """Hash of the settings, the preprocessing code's version (and its libraries', decoder_versions), and of
    every file's path, size and modification time."""
    code = {"version": PREPROCESS_VERSION, **decoder_versions()}
    h = hashlib.sha256(json.dumps([cfg.cache_settings(), code], sort_keys=True).encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()[:20]


def build_cache(paths, cfg: PreprocessConfig, cache_dir, workers: int = 2, progress: bool = True, name: str = "",
                hashes=None):
    """Preprocess every path once and store one uint8 array, or reuse it if the key matches.

    Returns (images N x S x S x 3 uint8 memory-mapped, ok mask (N,) bool, skipped Counter).
    Files that vanished or broke since the split was made are masked out and counted; the caller
    warns and skips them. hashes: each file's content hash when it was split (None or "" where not
    known), so that a file whose bytes changed since is skipped too ("changed_since_split").
    """
    from tqdm import tqdm
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(paths, cfg)
    array_path = cache_dir / f"{name}{'_' if name else ''}{key}.npy"
    meta_path = array_path.with_suffix(".json")
    remove_orphans(cache_dir)
    size = cfg.image_size
    if array_path.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            images = np.load(array_path, mmap_mode="r")
            if meta.get("key") == key and meta.get("n") == len(paths) == len(meta["ok"]) \
                    and images.shape == (len(paths), size, size, 3):
                # a new split's hashes: the bytes may have changed under the same size and time (exiftool -P);
                # a cache from before the digest was kept is built once more, as it cannot tell
                resplit = bool(hashes) and meta.get("hashes") != hashes_digest(hashes)
                if not resplit and not any(_readable(paths[i]) for i in meta.get("retry", [])):
                    return images, np.array(meta["ok"], dtype=bool), Counter(meta["skipped"])
                print(f"note: files of {name or 'the images'} that " + ("changed since an earlier split are split "
                      "anew" if resplit else "could not be read before can be now") + "; preprocessing again")
        except (ValueError, OSError, KeyError, TypeError, EOFError):  # cut short (a full disk, a crash): rebuilt
            print(f"note: the cache {array_path.name} is damaged; rebuilding it")
    superseded = superseded_caches(cache_dir, name, cfg, paths, meta_path)
    if superseded:
        print(f"note: files of {name or 'the images'} (size or modification time), or the preprocessing code, "
              f"changed since they were cached; preprocessing them again, and the old cache goes once the new "
              f"one is written")
    images = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    skipped: Counter = Counter()
    retry: list = []  # indices of files that could not be read (not: did not decode)
    changed: list = []  # indices of files whose bytes are not the ones the split was made of
    jobs = [(p, cfg.to_dict(), h) for p, h in zip(paths, hashes or [None] * len(paths))]
    desc = f"preprocessing {name or 'images'} (once, cached)"
    if workers > 1 and len(paths) > 256:
        with worker_pool(workers) as pool:
            results = pool.imap(_preprocess_or_none, jobs, chunksize=16)
            for i, (img, reason) in enumerate(tqdm(results, total=len(jobs), desc=desc, disable=not progress)):
                _store(images, ok, skipped, i, img, reason, retry, changed)
    else:
        for i, job in enumerate(tqdm(jobs, desc=desc, disable=not progress)):
            _store(images, ok, skipped, i, *_preprocess_or_none(job), retry, changed)
    if retry:  # perhaps a passing fault: cached as skipped (every rank of a torchrun sees the same), tried again
        print(f"note: {len(retry)} files of {name or 'the images'} could not be read; they are skipped, and the "
              f"next run preprocesses again if they can be read by then")
    if changed:
        print(f"note: {len(changed)} files of {name or 'the images'} are not the files the split was made of (their "
              "content changed since eda.py); they are skipped until eda.py splits them again")
    # write then rename, so an interrupted build never leaves a cache that looks complete
    meta = json.dumps({"key": key, "n": len(paths), "ok": ok.tolist(), "skipped": dict(skipped), "retry": retry,
                       "hashes": hashes_digest(hashes), "settings": cfg.cache_settings(), "paths": paths_digest(paths)})
    tmp_array = cache_dir / f".{array_path.name}.{os.getpid()}.tmp"
    tmp_meta = cache_dir / f".{meta_path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp_array, "wb") as f:
            np.save(f, images)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename: a crash then leaves the old name or a whole file
        with open(tmp_meta, "w") as f:
            f.write(meta)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_array, array_path)
        os.replace(tmp_meta, meta_path)
    except OSError as exc:
        tmp_array.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DataError(f"no space left on the device holding {cache_dir} (the cache needs about "
                            f"{images.nbytes / 1e6:.0f} MB); free some space or pass --cache-dir on another disk") from None
        raise
    for stale in superseded:  # same split, same settings, older files: never read again
        for path in (stale, stale.with_suffix(".npy")):
            with contextlib.suppress(OSError):  # e.g. still mapped by another process on Windows
                path.unlink()
    return np.load(array_path, mmap_mode="r"), ok, skipped


def hashes_digest(hashes) -> str | None:
    """Hash of the split's content hashes of its files (None without them): a cache built for other bytes is
    not this split's, whatever the files' sizes and dates say."""
    return hashlib.sha256("\n".join(h or "" for h in hashes).encode()).hexdigest()[:20] if hashes else None


def paths_digest(paths) -> str:
    """Hash of the file list alone: the same split whatever the files' dates."""
    return hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest()[:20]


def superseded_caches(cache_dir, name, cfg: PreprocessConfig, paths, current_meta) -> list[Path]:
    """Metadata files of caches of the same files and settings whose key differs: the files changed
    since. Caches of other file lists (another split sharing --cache-dir) are never touched."""
    if not name:
        return []
    wanted = {"settings": json.loads(json.dumps(cfg.cache_settings())), "paths": paths_digest(paths)}
    stale = []
    for meta_path in Path(cache_dir).glob(f"{name}_*.json"):
        try:
            meta = json.loads(meta_path.read_text())
        except (ValueError, OSError):
            continue
        if meta_path != current_meta and all(meta.get(k) == v for k, v in wanted.items()):
            stale.append(meta_path)
    return stale


PROCESS_STARTED = time.time()  # about when this process started (this module is among its first imports)


def remove_orphans(folder, pattern: str = ".*.tmp"):
    """What a killed process left in folder: entries matching pattern (files, or staging folders) whose name
    carries the PID as its last all-digit dotted field (.x.npy.123.tmp, .clip_age.123.tmp.mp4, .staging.123),
    that process being gone. A live process's are kept. Files of this process's own PID last changed before it
    started are a killed run's (in a container every run is PID 1, and they stayed forever); a newer one may be
    another container's, writing into a shared folder."""
    import shutil
    for left in Path(folder).glob(pattern):
        pid = next((field for field in reversed(left.name.split(".")) if field.isdigit()), None)
        if pid is None:
            continue
        if int(pid) == os.getpid():
            try:
                gone = left.stat().st_mtime < PROCESS_STARTED
            except OSError:
                continue
        else:
            gone = not process_alive(int(pid))
        if gone:
            if left.is_dir():
                shutil.rmtree(left, ignore_errors=True)
            else:
                left.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) there sends Ctrl+C (CTRL_C_EVENT is 0) and checks nothing
        return _windows_process_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _windows_process_alive(pid: int) -> bool:
    import ctypes
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() == 5  # ERROR_ACCESS_DENIED: another user's process, alive
    try:
        code = ctypes.c_ulong()
        # a handle to a process that has exited still opens while someone holds it: its exit code tells
        return not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)) or code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def _readable(path) -> bool:
    try:
        Path(path).read_bytes()
        return True
    except OSError:
        return False


def _store(images, ok, skipped, i, img, reason, retry, changed):
    if img is None:
        skipped[reason] += 1
        if reason == "unreadable_file":
            retry.append(i)
        elif reason == "changed_since_split":
            changed.append(i)
    else:
        images[i] = img
        ok[i] = True


# ----------------------------------------------------------------------------------------------
# Dataset and loader

class CustomDataset:  # map-style: DataLoader needs only __len__ and __getitem__
    """Images and ages of one split as uint8 CHW tensors.

    With `images` (the cache) an item is a slice of one array; without it each item is decoded
    and preprocessed on the fly (the slow path, kept for the loader benchmark and tiny data).
    Augmentation and normalisation happen per batch in functions.py, not here, so that this class
    never decides whether it is training or evaluation.
    """

    def __init__(self, records, cfg: PreprocessConfig, images: np.ndarray | None = None):
        self.paths = [r["path"] for r in records]
        self.ages = torch.tensor([float(r["age"]) for r in records])
        # who is in the split (eda.py's gender/race columns, blank where unknown): for per-group metrics
        self.groups = {name: [r.get(name) or "" for r in records] for name in GROUP_COLUMNS
                       if any(r.get(name) for r in records)}
        self.cfg = cfg
        self.images = images

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        img = self.images[i] if self.images is not None else preprocess_file(self.paths[i], self.cfg)
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1), self.ages[i]

    def __getitems__(self, indices):
        # one fancy-indexing read per batch instead of a Python call per image
        if self.images is None:
            return [self[i] for i in indices]
        idx = np.asarray(indices)
        order = np.argsort(idx)  # sorted reads are faster on a memory map
        batch = np.empty((len(idx),) + self.images.shape[1:], dtype=np.uint8)
        batch[order] = self.images[idx[order]]
        return torch.from_numpy(batch).permute(0, 3, 1, 2), self.ages[idx]

    def subset(self, indices) -> "CustomDataset":
        indices = np.asarray(indices, dtype=np.int64)
        records = [{"path": self.paths[i], "age": self.ages[i].item(),
                    **{name: labels[i] for name, labels in self.groups.items()}} for i in indices]
        images = None if self.images is None else np.asarray(self.images[indices])
        return CustomDataset(records, self.cfg, images)

    def batch(self, indices):
        """(uint8 N x 3 x S x S, ages) for the given indices."""
        return collate(self.__getitems__(list(indices)))


def collate(batch):
    if isinstance(batch, tuple):  # already a batch from __getitems__
        return batch
    images, ages = zip(*batch)
    return torch.stack(images), torch.stack(ages)


def load_split_dataset(split_csv, cfg: PreprocessConfig, cache_dir=None, workers: int = 2,
                       progress: bool = True, log=print):
    """Split CSV -> CustomDataset backed by the cache; missing or broken files are skipped with a warning."""
    records = read_split(split_csv)
    name = Path(split_csv).stem
    if cache_dir is None:
        return CustomDataset(records, cfg)
    images, ok, skipped = build_cache([r["path"] for r in records], cfg, cache_dir, workers, progress, name,
                                      [r.get("hash") for r in records])
    if not ok.all():
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items()))
        log(f"warning: {name}: skipping {int((~ok).sum())} of {len(records)} images that can no longer be "
            f"read or changed since the split ({reasons}); rerun eda.py to refresh the splits")
        keep = np.flatnonzero(ok)
        records = [records[i] for i in keep]
        images = KeptRows(images, keep)
    if not records:
        raise DataError(f"no readable images left in {split_csv}; rerun eda.py")
    return CustomDataset(records, cfg, images)


class KeptRows:
    """The rows of a cache whose files were not skipped, read through their indices: the cache stays a memory
    map, where images[keep] would copy the whole split into memory (in every torchrun rank) for one file gone.
    Indexed, sliced, measured (len, shape) and turned into an array (np.asarray) as the cache is."""

    def __init__(self, images, rows):
        self.base, self.rows = images, np.asarray(rows, dtype=np.int64)
        self.shape, self.dtype = (len(self.rows),) + tuple(images.shape[1:]), images.dtype

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, key):
        return self.base[self.rows[key]]

    def __array__(self, dtype=None, copy=None):
        array = self.base[self.rows]
        return array if dtype is None else array.astype(dtype)


def make_loader(dataset, batch_size: int, shuffle: bool, seed: int = 0, sampler=None, pin_memory: bool = False,
                drop_last: bool = False):
    """Batches in the main process (the cache makes a batch one array slice; workers would only add start-up).

    pin_memory: page-locked batches, so CUDA copies with non_blocking=True overlap compute (CUDA only).
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        collate_fn=collate, generator=generator, drop_last=drop_last, pin_memory=pin_memory)
