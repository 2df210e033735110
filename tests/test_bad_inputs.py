"""A corpus of awkward inputs, generated here (no committed binaries), through eda.py and load_rgb.

The same files are laid out twice: as a folder-per-age tree and as a CSV with path,age. Every bad
item must be counted under its reason in data_report.json, every good one must be used and decode
to HxWx3 uint8.
"""

import csv
import io
import os
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from conftest import set_writable, snapshot
from custom_dataset import MIN_IMAGE_SIDE, load_rgb


def encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(seed, h=48, w=40, mode="RGB"):
    """Smooth random picture (JPEG-friendly), different for every seed."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
    return img.convert(mode) if mode != "RGB" else img


def gradient16(h=32, w=64):
    return np.tile(np.linspace(0, 65535, w).round().astype(np.uint16), (h, 1))


def exif6_stored():
    """Pixels as stored (wide: 40 x 64) of the EXIF-rotated JPEG."""
    return noise(7, h=40, w=64)


def build_files():
    """name -> (bytes, reason or None for a good image). Each good image has distinct bytes."""
    valid_jpeg = encode(noise(1), "JPEG", quality=90)
    rgba = noise(3).convert("RGBA")
    alpha = np.full((rgba.height, rgba.width), 255, np.uint8)
    alpha[:, : rgba.width // 2] = 0  # left half fully transparent
    rgba.putalpha(Image.fromarray(alpha))
    palette = noise(4).quantize(16)
    palette_t = noise(5).quantize(16)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    files = {
        "empty.jpg": (b"", "empty_file"),
        "truncated.jpg": (valid_jpeg[: len(valid_jpeg) // 2], "truncated"),
        "text.jpg": (b"this is a text file, not a JPEG\n" * 3, "undecodable"),
        "tiny.png": (encode(noise(2, 4, 4), "PNG"), "too_small"),
        "gray.jpg": (encode(noise(6, mode="L"), "JPEG", quality=90), None),
        "rgba.png": (encode(rgba, "PNG"), None),
        "palette.png": (encode(palette, "PNG"), None),
        "palette_transparent.png": (encode(palette_t, "PNG", transparency=0), None),
        "gray16.png": (encode(Image.fromarray(gradient16()), "PNG"), None),
        "exif6.jpg": (encode(exif6_stored(), "JPEG", quality=95, exif=exif.tobytes()), None),
        "large.jpg": (encode(Image.new("RGB", (8000, 8000), (150, 110, 90)), "JPEG", quality=10), None),
        "visage été 1.jpg": (encode(noise(8), "JPEG", quality=90), None),
        "with space.png": (encode(noise(9), "PNG"), None),
        "顔 2.jpg": (encode(noise(10), "JPEG", quality=90), None),
    }
    return files


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    files = build_files()
    good = {name: 30 + i for i, name in enumerate(n for n, (_, r) in files.items() if r is None)}

    # folder per age: good images under their age, bad ones under age 40
    tree = root / "tree"
    tree_good, tree_skipped = {}, Counter()
    for name, (data, reason) in files.items():
        folder = tree / str(good.get(name, 40))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        if reason:
            tree_skipped[reason] += 1
        else:
            tree_good[str(folder / name)] = good[name]
    (tree / "abc").mkdir()
    (tree / "abc" / "x.jpg").write_bytes(encode(noise(20), "JPEG"))
    (tree / "abc" / "y.jpg").write_bytes(encode(noise(21), "JPEG"))
    tree_skipped["folder_not_an_age"] += 2
    (tree / "130").mkdir()
    (tree / "130" / "old.jpg").write_bytes(encode(noise(22), "JPEG"))
    tree_skipped["age_out_of_range"] += 1
    (tree / "40" / "notes.txt").write_text("not an image")
    tree_skipped["not_an_image_name"] += 1
    (tree / "stray.jpg").write_bytes(encode(noise(23), "JPEG"))
    tree_skipped["image_outside_age_folder"] += 1
    os.symlink(tree / "40", tree / "40" / "loop")  # a folder linked to its parent
    (tree / "41" / "sub").mkdir(parents=True)
    os.symlink(tree, tree / "41" / "sub" / "up")  # ... and to the data root
    tree_skipped["symlink_loop"] += 2

    # CSV: the same files under files/, paths relative to the CSV
    table = root / "table"
    (table / "files").mkdir(parents=True)
    rows, csv_good, csv_skipped = [], {}, Counter()
    for name, (data, reason) in files.items():
        (table / "files" / name).write_bytes(data)
        rows.append((f"files/{name}", good.get(name, 40)))
        if reason:
            csv_skipped[reason] += 1
        else:
            csv_good[str(table / "files" / name)] = good[name]
    (table / "files" / "newborn.jpg").write_bytes(encode(noise(30), "JPEG"))
    rows.append(("files/newborn.jpg", 0))  # 0 is a valid age
    csv_good[str(table / "files" / "newborn.jpg")] = 0
    for age in (-1, 300):
        rows.append(("files/gray.jpg", age))
        csv_skipped["age_out_of_range"] += 1
    rows.append(("files/not_there.jpg", 33))
    csv_skipped["missing_file"] += 1
    rows.append(("files/gray.jpg", "thirty"))
    csv_skipped["bad_age_label"] += 1
    with open(table / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "age"])
        writer.writerows(rows)
    return {"files": files, "tree": (tree, tree_good, tree_skipped), "csv": (table, csv_good, csv_skipped)}


@pytest.fixture(scope="module", params=["tree", "csv"])
def layout_run(request, corpus, run_eda, tmp_path_factory):
    data, good, skipped = corpus[request.param]
    out = tmp_path_factory.mktemp("eda_" + request.param)
    report = run_eda(data, out, "--seed", 1)
    with open(out / "labels.csv", newline="", encoding="utf-8") as f:
        labels = {r["path"]: int(r["age"]) for r in csv.DictReader(f)}
    return report, labels, good, skipped


def test_every_bad_item_counted_by_reason(layout_run):
    report, _, _, skipped = layout_run
    assert report["skipped"] == dict(skipped)
    d = report["duplicates"]
    assert d == {"duplicate_files_removed": 0, "conflict_groups_dropped": 0, "conflict_files_dropped": 0}
    assert report["found"] == report["used"] + sum(report["skipped"].values())


def test_every_good_image_used(layout_run):
    report, labels, good, _ = layout_run
    assert labels == good
    assert report["used"] == len(good)
    assert sum(report["splits"].values()) == len(good)


@pytest.mark.slow
def test_load_rgb_gives_hxwx3_uint8_for_every_good_image(corpus):
    _, good, _ = corpus["csv"]
    for path in good:
        with Image.open(path) as img:
            w, h = img.size
            rotated = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
        rgb = load_rgb(path)
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, path
        assert rgb.shape[:2] == ((w, h) if rotated else (h, w)), path
        assert min(rgb.shape[:2]) >= MIN_IMAGE_SIDE


def corpus_path(corpus, name):
    return corpus["csv"][0] / "files" / name


def test_16_bit_gray_is_scaled_not_clipped(corpus):
    rgb = load_rgb(corpus_path(corpus, "gray16.png"))
    row = rgb[0, :, 0].astype(int)
    assert (rgb == rgb[..., :1]).all()  # still gray
    assert row[0] <= 2 and row[-1] >= 253  # the full range, not all white
    assert (np.diff(row) >= 0).all() and len(np.unique(row)) > rgb.shape[1] // 2
    expected = gradient16()[0] / 65535 * 255
    assert np.abs(row - expected).max() <= 1


@pytest.mark.parametrize("top", [255, 256, 4095])
def test_16_bit_gray_has_one_scale_whatever_its_brightest_pixel(tmp_path, top):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((20, 20), top, np.uint16)).save(path)
    assert load_rgb(path)[0, 0, 0] == round(top / 257)  # 1, 1, 16: nearly equal images stay nearly equal


def test_16_bit_gray_is_not_searched_for_a_float_scale(tmp_path, monkeypatch):
    import custom_dataset
    monkeypatch.setattr(custom_dataset, "float_gray_scale", lambda arr: pytest.fail("a 16-bit scale is fixed"))
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((20, 20), 2570, np.uint16)).save(path)
    assert load_rgb(path)[0, 0, 0] == 10


@pytest.mark.parametrize("stored, expected", [(0.8, 204), (100.4, 100), (1.0, 255), (300.0, 255)])
def test_float_gray_is_read_as_0_to_1_or_0_to_255_and_rounded(stored, expected):
    from custom_dataset import to_rgb
    rgb = np.asarray(to_rgb(Image.fromarray(np.full((8, 8), stored, np.float32), "F")))
    assert rgb.shape == (8, 8, 3) and (rgb == expected).all()  # 0.8 was black: cut to 0, not scaled


def test_a_few_float_pixels_above_1_leave_a_0_to_1_image_0_to_1():
    from custom_dataset import to_rgb
    pixels = np.full((40, 40), 0.8, np.float32)
    pixels[0, 0], pixels[0, 1] = 1.02, np.inf  # a resampling's overshoot, a stray inf
    rgb = np.asarray(to_rgb(Image.fromarray(pixels, "F")))
    assert rgb[5, 5, 0] == 204 and rgb[0, 0, 0] == 255 and rgb[0, 1, 0] == 255


def test_exif_orientation_is_applied(corpus):
    path = corpus_path(corpus, "exif6.jpg")
    with Image.open(path) as img:
        stored = np.asarray(img.convert("RGB"))  # the pixels as stored, orientation ignored
    rgb = load_rgb(path)
    assert rgb.shape == (stored.shape[1], stored.shape[0], 3)
    assert np.array_equal(rgb, np.rot90(stored, k=-1))  # 6 = turn 90 degrees clockwise


def test_transparency_and_palettes(corpus):
    rgba = load_rgb(corpus_path(corpus, "rgba.png"))
    w = rgba.shape[1]
    assert (rgba[:, : w // 2] == 0).all()  # transparent -> black, the documented rule
    assert rgba[:, w // 2:].mean() > 20
    with Image.open(corpus_path(corpus, "palette.png")) as img:
        expected = np.asarray(img.convert("RGB"))
    assert np.array_equal(load_rgb(corpus_path(corpus, "palette.png")), expected)
    path = corpus_path(corpus, "palette_transparent.png")
    with Image.open(path) as img:
        index = np.asarray(img)
    rgb = load_rgb(path)
    assert (index == 0).any() and (rgb[index == 0] == 0).all()
    gray = load_rgb(corpus_path(corpus, "gray.jpg"))
    assert (gray == gray[..., :1]).all()


@pytest.mark.slow
def test_read_only_data_folder(corpus, eda_cli, tmp_path):
    tree = corpus["tree"][0]
    set_writable(tree, False)
    try:
        probe = tree / "probe.tmp"
        try:
            probe.write_bytes(b"")  # succeeds only where chmod has no effect (root)
            probe.unlink()
        except PermissionError:
            pass
        before = snapshot(tree)
        proc = eda_cli("--data-dir", tree, "--out-dir", tmp_path / "out", "--no-progress")
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "out" / "data_report.json").is_file()
        assert snapshot(tree) == before  # nothing created or modified in the data folder
    finally:
        set_writable(tree, True)


def test_a_cache_file_cut_to_nothing_is_rebuilt_and_a_code_change_rebuilds_too(tmp_path, monkeypatch):
    import custom_dataset
    from custom_dataset import PreprocessConfig, build_cache
    path = tmp_path / "a.png"
    Image.fromarray(np.full((40, 40, 3), 120, np.uint8)).save(path)
    cfg = PreprocessConfig(image_size=32, denoise=False, deblur=False)
    build_cache([str(path)], cfg, tmp_path / "cache", workers=1, progress=False, name="train")
    (array,) = (tmp_path / "cache").glob("train_*.npy")
    array.write_bytes(b"")  # a crash right after the rename, before the data reached the disk
    images, ok, _ = build_cache([str(path)], cfg, tmp_path / "cache", workers=1, progress=False, name="train")
    assert ok.all() and images.shape == (1, 32, 32, 3) and images[0].mean() == pytest.approx(120, abs=1)
    monkeypatch.setattr(custom_dataset, "PREPROCESS_VERSION", custom_dataset.PREPROCESS_VERSION + 1)
    build_cache([str(path)], cfg, tmp_path / "cache", workers=1, progress=False, name="train")
    assert [p for p in (tmp_path / "cache").glob("train_*.npy")] != [array]  # made anew; the old one is gone
    assert len(list((tmp_path / "cache").glob("train_*.npy"))) == 1


@pytest.mark.slow
def test_one_size_limit_for_every_image_whatever_pillows_own(tmp_path, recwarn):
    """100 million pixels, the project's rule: Pillow's own guard (89 Mpx a warning, 179 Mpx an error) made a
    95 Mpx photo unusable and a 250 Mpx one "undecodable", with a raw warning on the way."""
    from custom_dataset import DataError, check_image, load_rgb
    sizes = {95: (10000, 9500), 150: (15000, 10000), 250: (25000, 10000)}
    for megapixels, size in sizes.items():  # 1-bit: a few MB decoded
        Image.new("1", size).save(tmp_path / f"{megapixels}.png")
    assert [check_image(tmp_path / f"{m}.png")["reason"] for m in sizes] == [None, "too_large", "too_large"]
    for megapixels in (150, 250):
        with pytest.raises(DataError, match="image too large"):
            load_rgb(tmp_path / f"{megapixels}.png")
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_a_file_that_cannot_be_read_for_now_is_not_cached_as_undecodable(tmp_path, monkeypatch, capsys):
    import pathlib
    from custom_dataset import PreprocessConfig, build_cache
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((40, 40, 3), 60 + 60 * i, np.uint8)).save(paths[-1])
    cfg = PreprocessConfig(image_size=32, denoise=False, deblur=False)
    real_open, real_read = Image.open, pathlib.Path.read_bytes
    def failing_open(fp, *a, **k):  # a network share's hiccup on the second file
        if str(fp) == str(paths[1]):
            raise OSError(5, "Input/output error")
        return real_open(fp, *a, **k)
    def failing_read(self):
        if str(self) == str(paths[1]):
            raise OSError(5, "Input/output error")
        return real_read(self)
    monkeypatch.setattr(Image, "open", failing_open)
    monkeypatch.setattr(pathlib.Path, "read_bytes", failing_read)
    images, ok, skipped = build_cache(list(map(str, paths)), cfg, tmp_path / "cache", workers=1, progress=False)
    assert ok.tolist() == [True, False] and skipped == {"unreadable_file": 1}
    assert "could not be read" in capsys.readouterr().out
    # cached as skipped (every torchrun rank reads the same mask), and reused while the file stays unreadable
    again, ok_again, _ = build_cache(list(map(str, paths)), cfg, tmp_path / "cache", workers=1, progress=False)
    assert ok_again.tolist() == [True, False] and "preprocessing again" not in capsys.readouterr().out
    monkeypatch.setattr(Image, "open", real_open)
    monkeypatch.setattr(pathlib.Path, "read_bytes", real_read)
    images, ok, skipped = build_cache(list(map(str, paths)), cfg, tmp_path / "cache", workers=1, progress=False)
    assert "preprocessing again" in capsys.readouterr().out  # readable now: made again, not "undecodable" for good
    assert ok.all() and not skipped and images[1].mean() == pytest.approx(120, abs=1)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    (text := tmp_path / "text.png").write_bytes(b"no image at all")  # a file that reads but does not decode
    _, ok, skipped = build_cache([str(text)], cfg, tmp_path / "cache2", workers=1, progress=False)
    assert skipped == {"undecodable": 1} and len(list((tmp_path / "cache2").glob("*.npy"))) == 1


def test_a_read_fault_that_passes_at_once_gives_the_image_not_an_undecodable_mark(tmp_path, monkeypatch):
    from custom_dataset import PreprocessConfig, build_cache
    path = tmp_path / "0.png"
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(path)
    real_open, faults = Image.open, [1]
    def open_failing_once(fp, *a, **k):  # one hiccup, gone by the next read
        if faults:
            faults.pop()
            raise OSError(5, "Input/output error")
        return real_open(fp, *a, **k)
    monkeypatch.setattr(Image, "open", open_failing_once)
    images, ok, skipped = build_cache([str(path)], PreprocessConfig(image_size=32, denoise=False, deblur=False),
                                      tmp_path / "cache", workers=1, progress=False)
    assert not faults and ok.tolist() == [True] and not skipped and images[0].mean() == pytest.approx(90, abs=1)


@pytest.mark.parametrize("mode, colour", [("L", 7), ("RGB", (7, 8, 9)), ("I;16", 7 * 257)])
def test_a_colour_marked_transparent_becomes_black_in_gray_and_rgb_pngs(tmp_path, mode, colour):
    depth = np.uint16 if mode == "I;16" else np.uint8
    pixels = np.full((20, 20) if mode != "RGB" else (20, 20, 3), 200 * (257 if mode == "I;16" else 1), depth)
    pixels[0, 0] = colour
    Image.fromarray(pixels, None if mode == "I;16" else mode).save(tmp_path / "t.png", transparency=colour)
    rgb = load_rgb(tmp_path / "t.png")
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[5, 5].tolist() == [200, 200, 200]
