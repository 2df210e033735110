"""Tests of faces.py: the crop recipes, the detectors on real faces in scenes, the chip that
reproduces UTKFace's own crop, and the one-line errors for missing model files."""
import cv2
import numpy as np
import pytest

import faces
from conftest import small_face_beside_a_large_dim_one
from custom_dataset import DataError

cv2.setNumThreads(1)


# ----------------------------------------------------------------------------------------------
# Pure helpers: golden values

def test_iou_golden():
    assert faces.iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert faces.iou((0, 0, 10, 10), (5, 5, 10, 10)) == pytest.approx(25 / 175)
    assert faces.iou((0, 0, 10, 10), (10, 0, 10, 10)) == 0.0  # touching
    assert faces.iou((0, 0, 10, 10), (2, 2, 4, 4)) == pytest.approx(16 / 100)
    assert faces.iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_non_max_suppression_keeps_the_strongest_of_each_face():
    boxes = [(0, 0, 100, 100), (5, 5, 100, 100), (30, 30, 20, 20), (300, 0, 50, 50)]
    # 0 and 1 overlap (one face); 2 lies inside them (an eye hit); 3 is another face
    assert faces.non_max_suppression(boxes, [1.0, 2.0, 0.1, 0.5]) == [1, 3]
    assert faces.non_max_suppression(boxes, [3.0, 1.0, 0.1, 0.5]) == [0, 3]
    assert faces.non_max_suppression([], []) == []


def test_crop_box_square_with_margin():
    rgb = np.arange(300 * 400 * 3, dtype=np.uint32).reshape(300, 400, 3).astype(np.uint8)
    assert faces.crop_box((150, 100, 40, 40), 0.25, rgb.shape) == (140, 90, 60, 60)
    assert faces.crop_box((150, 100, 40, 30), 0.0, rgb.shape) == (150, 95, 40, 40)  # square on the centre
    assert faces.crop_box((0, 0, 40, 40), 0.25, rgb.shape) == (0, 0, 60, 60)  # moved inside, still square
    assert faces.crop_box((0, 0, 400, 300), 0.25, rgb.shape) == (0, 0, 400, 300)  # bigger than the image
    crop = faces.crop_face(rgb, (150, 100, 40, 40), 0.25)
    assert crop.shape == (60, 60, 3) and np.array_equal(crop, rgb[90:150, 140:200])


@pytest.mark.parametrize("crop, message", [
    ({"kind": "oval"}, "unknown crop recipe"),
    ({"kind": "chip", "landmarks": 68, "size": 200.5, "padding": 0.2}, "crop size"),
    ({"kind": "chip", "landmarks": 68, "size": 200, "padding": "x"}, "crop padding"),
    ({"kind": "chip", "landmarks": 5, "size": 200, "template": [[1, 2]]}, "template of 5"),
    ({"kind": "chip", "landmarks": 7, "size": 200}, "use 68 or 5"),
    ({"kind": "box", "margin": 9}, "crop margin"),
    ("abc", "unknown crop recipe"),
])
def test_bad_crop_recipes_are_refused(crop, message):
    with pytest.raises(DataError, match=message):
        faces.check_crop(crop)


def test_shipped_recipes_are_valid():
    for crop in faces.CROPS.values():
        assert faces.check_crop(crop)["kind"] == crop["kind"]
    assert faces.UTKFACE_CROP == {"kind": "chip", "landmarks": 68, "size": 200, "padding": 0.2}


def test_split_crop_round_trip_and_old_splits(tmp_path):
    assert faces.read_split_crop(tmp_path) == faces.BOX_CROP  # a split written before recipes existed
    faces.write_split_crop(tmp_path, faces.UTKFACE_CROP5, "test")
    assert faces.read_split_crop(tmp_path) == faces.check_crop(faces.UTKFACE_CROP5)
    (tmp_path / faces.CROP_FILE).write_text("{not json")
    with pytest.raises(DataError, match="rerun eda.py"):
        faces.read_split_crop(tmp_path)


def test_missing_landmark_package_names_the_package(monkeypatch):
    monkeypatch.setattr(faces.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install face-recognition-models==0.3.0"):
        faces.model_file("shape_predictor_68_face_landmarks.dat")


def test_unknown_detector_is_refused():
    with pytest.raises(DataError, match="unknown detector"):
        faces.FacePipeline(detector="yolo")


# ----------------------------------------------------------------------------------------------
# Real faces (../shared/data)

def rechip_differences(chips, crop):
    """Mean |re-made chip - file| (0-255) of each UTKFace file cut again from a border-padded copy
    (resized to the file's size where the crop is not a 200 px chip); files without a face are left out."""
    pipe = faces.FacePipeline(crop, detector="hog")
    diffs = []
    for chip in chips:
        found = pipe.faces(cv2.copyMakeBorder(chip, 60, 60, 60, 60, cv2.BORDER_REPLICATE))
        if found:
            again = cv2.resize(found[0].chip, chip.shape[1::-1], interpolation=cv2.INTER_AREA)
            diffs.append(np.abs(again.astype(float) - chip).mean())
    return diffs


def test_chip_reproduces_utkface_own_crop(utkface_chips):
    """Re-chipping a UTKFace file from a border-padded copy gives back the file (dlib chip recipe)."""
    diffs = rechip_differences(utkface_chips, faces.UTKFACE_CROP)
    assert len(diffs) >= 6
    assert np.median(diffs) < 6  # 0-255 scale; a crop shifted by a few pixels gives 15-30


def test_box_crop_does_not_reproduce_utkface(utkface_chips):
    """The check above can fail: the old square crop around the box is far from UTKFace's chip."""
    assert np.median(rechip_differences(utkface_chips, faces.BOX_CROP)) > 15


def test_five_point_crop_frames_the_face_like_utkface(utkface_chips):
    """The 5-landmark path (for commercial users) lands near UTKFace's chip: much closer than an
    unaligned square crop, if less exact than the 68-landmark chip."""
    diffs = rechip_differences(utkface_chips, faces.UTKFACE_CROP5)
    square = rechip_differences(utkface_chips, faces.BOX_CROP)
    assert len(diffs) >= 6 and np.median(diffs) < 16 and np.median(diffs) < 0.7 * np.median(square)


@pytest.mark.parametrize("side, tilt", [(110, 0.0), (300, 0.0), (220, 18.0), (90, -15.0)])
def test_auto_finds_a_real_face_in_a_scene_and_aligns_it(utkface_chips, paste_face, side, tilt):
    chip = utkface_chips[1]
    scene, (cx, cy, s) = paste_face(chip, side, tilt, at=(0.4, 0.55))
    found = faces.FacePipeline(detector="auto").faces(scene)
    assert len(found) == 1, [f.box for f in found]
    x, y, w, h = found[0].box
    assert abs(x + w / 2 - cx) < 0.25 * s and abs(y + h / 2 - cy) < 0.25 * s
    # the chip undoes the tilt and scale: it looks like the UTKFace file again
    aligned = found[0].chip.astype(float)
    assert np.abs(aligned - chip).mean() < np.abs(np.rot90(chip).astype(float) - chip).mean()
    assert np.abs(aligned - chip).mean() < 25


def test_no_face_in_noise_or_flat_images():
    rng = np.random.default_rng(0)
    pipe = faces.FacePipeline(detector="auto")
    assert pipe.faces(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)) == []
    assert pipe.faces(np.full((300, 300, 3), 128, np.uint8)) == []


def group_photo(chips):
    """A 6000 x 4000 px photo: six 170 px faces in a row and one 1500 px close-up; (photo, the six centres)."""
    rng = np.random.default_rng(0)
    photo = np.clip(rng.normal(110, 12, (4000, 6000, 3)), 0, 255).astype(np.uint8)

    def put(chip, side, cx, cy):
        face = cv2.resize(chip, (side, side), interpolation=cv2.INTER_AREA)
        disc = np.zeros((side, side), np.uint8)
        cv2.circle(disc, (side // 2, side // 2), side // 2, 1, -1)
        region = photo[cy - side // 2:cy - side // 2 + side, cx - side // 2:cx - side // 2 + side]
        region[disc > 0] = face[disc > 0]
    centres = [(400 + 800 * k, 600) for k in range(6)]
    for k, (cx, cy) in enumerate(centres):
        put(chips[k], 170, cx, cy)
    put(chips[7], 1500, 3000, 2400)
    return photo, centres


def test_a_close_up_face_does_not_hide_the_small_faces_of_a_large_group_photo(utkface_chips):
    """A 6000 px photo is shrunk to DETECT_MAX_SIDE for detection, which takes its 170 px faces under the first
    pass's smallest size; the small-face pass then ran only where nothing at all was found, so one close-up face
    hid the five others."""
    photo, centres = group_photo(utkface_chips)
    found = faces.FacePipeline(faces.UTKFACE_CROP, "auto").detect(photo)
    small = [f for f in found if f.box[2] < 300]
    assert any(f.box[2] > 1000 for f in found)
    hit = {min(range(6), key=lambda k: abs(f.box[0] + f.box[2] / 2 - centres[k][0])) for f in small}
    assert len(small) == len(hit) >= 5 and all(abs(f.box[1] + f.box[3] / 2 - 600) < 60 for f in small)


def test_in_a_dim_group_photo_the_contrast_pass_also_looks_for_the_small_faces(utkface_chips):
    """The contrast pass returned as soon as it found the close-up face: a dim or backlit group photo kept one
    face of seven."""
    photo, centres = group_photo(utkface_chips)
    dim = (photo * 0.2).astype(np.uint8)
    assert not faces.FacePipeline(faces.UTKFACE_CROP, "hog").detect(dim)  # the first pass finds nothing here
    found = faces.FacePipeline(faces.UTKFACE_CROP, "auto").detect(dim)
    small = [f for f in found if f.box[2] < 300]
    assert any(f.box[2] > 1000 for f in found) and len(small) >= 3
    assert all(min(abs(f.box[0] + f.box[2] / 2 - cx) for cx, _ in centres) < 60 for f in small)


def test_chip_dataset_counts_photos_without_a_face_and_reuses_its_cache(utkface_chips, paste_face, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    records = []
    for i, chip in enumerate(utkface_chips[:3]):
        scene, _ = paste_face(chip, 200, at=(0.5, 0.5), seed=i)
        path = photos / f"{i}.png"
        cv2.imwrite(str(path), cv2.cvtColor(scene, cv2.COLOR_RGB2BGR))
        records.append({"path": str(path), "age": 30, "hash": f"h{i}"})
    blank = photos / "blank.png"
    cv2.imwrite(str(blank), np.full((240, 320, 3), 90, np.uint8))
    records.append({"path": str(blank), "age": 40, "hash": "hblank"})
    kept, stats = faces.chip_dataset(records, tmp_path / "chips", faces.UTKFACE_CROP, progress=False)
    assert stats["no_face"] == 1 and stats["chipped"] == 3 and stats["from_cache"] == 0
    assert [r["source"] for r in kept] == [r["path"] for r in records[:3]]
    assert all(cv2.imread(r["path"]).shape == (200, 200, 3) for r in kept)
    again, stats2 = faces.chip_dataset(records, tmp_path / "chips", faces.UTKFACE_CROP, progress=False)
    assert stats2["from_cache"] == 4 and [r["path"] for r in again] == [r["path"] for r in kept]
    assert stats2["several_faces_largest_used"] == stats["several_faces_largest_used"] == 0


def test_chip_dataset_remembers_several_faces_and_retries_an_unreadable_photo(utkface_chips, paste_face, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    scene, _ = paste_face(utkface_chips[0], 170, at=(0.3, 0.5), seed=0)
    second, _ = paste_face(utkface_chips[1], 120, at=(0.78, 0.4), seed=1)
    scene[:, 400:] = second[:, 400:]  # two faces: the larger one is the labelled person
    cv2.imwrite(str(photos / "two.png"), cv2.cvtColor(scene, cv2.COLOR_RGB2BGR))
    records = [{"path": str(photos / "two.png"), "age": 30, "hash": "htwo"},
               {"path": str(photos / "gone_for_now.png"), "age": 40, "hash": "hgone"}]
    kept, stats = faces.chip_dataset(records, tmp_path / "chips", faces.UTKFACE_CROP, progress=False)
    assert (stats["chipped"], stats["several_faces_largest_used"], stats["unreadable_file"]) == (1, 1, 1)
    cv2.imwrite(str(photos / "gone_for_now.png"), cv2.cvtColor(scene, cv2.COLOR_RGB2BGR))  # readable again
    again, stats2 = faces.chip_dataset(records, tmp_path / "chips", faces.UTKFACE_CROP, progress=False)
    assert (stats2["from_cache"], stats2["chipped"], stats2["several_faces_largest_used"]) == (1, 2, 2)


@pytest.mark.parametrize("crop", [faces.UTKFACE_CROP, faces.BOX_CROP])
def test_rotated_pass_maps_boxes_back_and_the_landmarks_are_fitted_on_the_turned_photo(utkface_chips, paste_face, crop):
    """The fallback's turned copy: the box it finds is mapped back onto the photo and the face keeps the angle,
    so cut() fits its landmarks on the photo turned likewise and the chip is upright again; a model without
    landmarks gets the box alone."""
    chip = utkface_chips[1]
    scene, (cx, cy, s) = paste_face(chip, 240, tilt=50.0, at=(0.5, 0.5))
    pipe = faces.FacePipeline(crop, detector="auto")
    gray = cv2.cvtColor(scene, cv2.COLOR_RGB2GRAY)
    pad = 30
    padded = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    found = pipe._rotated(padded, -50.0, pad) + pipe._rotated(padded, 50.0, pad)
    assert len(found) == 1, found
    box, score, source, angle = found[0]
    assert (angle, source) == (-50.0, "hog_rotated-50")  # pasted turned counter-clockwise by 50
    assert abs(box[0] + box[2] / 2 - cx) < 0.15 * s and abs(box[1] + box[3] / 2 - cy) < 0.15 * s
    face = pipe.cut(scene, faces.Face(box, score, source, angle=angle))
    if crop["kind"] == "box":
        assert face.landmarks is None
    else:
        inner = slice(50, 150)
        assert np.abs(face.chip.astype(float)[inner, inner] - chip[inner, inner]).mean() < 12
        # fitted upright (a 68-point model given the tilted face in an upright box misplaces them)
        untilted = faces.landmarks_in(scene, box, 68)
        assert np.abs(untilted - face.landmarks).mean() > 3


def test_landmarks_of_a_turned_face_are_fitted_at_full_resolution_near_the_photo_edge(utkface_chips):
    """landmarks_in with an angle: the same points (turned back) as on the upright face, in a large photo and for
    a face whose patch reaches past the photo's edge (filled with a replicated border, not zeros)."""
    chip = utkface_chips[2]
    upright = np.full((1000, 1000, 3), 120, np.uint8)
    upright[300:700, 300:700] = cv2.resize(chip, (400, 400), interpolation=cv2.INTER_LINEAR)
    box = faces.FacePipeline(detector="hog").detect(upright)[0].rect
    truth = faces.landmarks_in(upright, box, 68)
    for degrees in (30.0, 90.0):
        m = cv2.getRotationMatrix2D((500, 500), -degrees, 1.0)  # the face turned clockwise; +degrees stands it up
        tilted = cv2.warpAffine(upright, m, (1000, 1000), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        moved = truth @ m[:, :2].T + m[:, 2]
        centre = np.array([box[0] + box[2] / 2, box[1] + box[3] / 2]) @ m[:, :2].T + m[:, 2]
        turned_box = (centre[0] - box[2] / 2, centre[1] - box[3] / 2, box[2], box[3])
        marks = faces.landmarks_in(tilted, turned_box, 68, degrees)
        assert np.abs(marks - moved).mean() < 0.02 * box[2], degrees
        # the same face at the photo's corner: the patch (a box's side each way from its centre) reaches past
        # two edges
        reach = int(0.6 * box[2])
        corner = tilted[int(centre[1]) - reach:, int(centre[0]) - reach:]
        shift = np.array([int(centre[0]) - reach, int(centre[1]) - reach])
        near = faces.landmarks_in(corner, (turned_box[0] - shift[0], turned_box[1] - shift[1], *box[2:]), 68, degrees)
        assert np.abs(near + shift - moved).mean() < 0.02 * box[2], degrees


def test_a_sideways_photo_without_an_exif_tag_is_found_and_chipped_upright(utkface_chips, paste_face):
    """A phone photo saved sideways without an Orientation tag (or a scan fed in sideways): the quarter turns
    run where nothing else found a face, and the chip comes out upright."""
    chip = utkface_chips[2]  # [1] turned clockwise gets a weak upright HOG box, which stops the fallback
    scene, _ = paste_face(chip, 240, at=(0.45, 0.5))
    pipe = faces.FacePipeline(faces.UTKFACE_CROP, detector="auto")
    for turns, source in ((1, "hog_rotated-90"), (3, "hog_rotated+90")):
        sideways = np.ascontiguousarray(np.rot90(scene, turns))
        assert not faces.FacePipeline(detector="hog").detect(sideways)
        found = pipe.faces(sideways)
        assert [f.source for f in found] == [source]
        inner = slice(50, 150)
        assert np.abs(found[0].chip.astype(float)[inner, inner] - chip[inner, inner]).mean() < 12
    # a model of the square box crop gets its square upright too
    boxed = faces.FacePipeline(faces.BOX_CROP, detector="auto").faces(np.ascontiguousarray(np.rot90(scene, 1)))
    assert [f.source for f in boxed] == ["hog_rotated-90"]
    (u, v, w, h), width = boxed[0].box, scene.shape[1]
    cx, cy = width - 1 - (v + h / 2), u + w / 2  # np.rot90 took (x, y) to (y, width - 1 - x)
    upright = faces.crop_face(scene, (cx - w / 2, cy - h / 2, w, h), 0.0).astype(float)
    assert upright.shape == boxed[0].chip.shape
    assert np.abs(boxed[0].chip - upright).mean() < 8
    assert np.abs(np.rot90(boxed[0].chip, 1) - upright).mean() > 20  # not sideways


def test_a_sideways_face_is_not_hidden_by_a_weak_box_of_the_upright_fallback(utkface_chips, paste_face,
                                                                            monkeypatch):
    """A sideways face that every upright pass misses, where a low-threshold fallback pass draws a weak box (the
    contrast pass, the bordered copy, a +-25 degree turn): the quarter turns run all the same, and their face wins.
    Without the rule (WEAK_FALLBACK_SCORE at minus infinity) the weak box is all that is found."""
    pipe = faces.FacePipeline(faces.UTKFACE_CROP, detector="auto")
    for chip, tilt, turns, weak_source in ((utkface_chips[1], 0, 1, "hog_contrast_padded"),
                                           (utkface_chips[1], 0, 3, "hog_contrast"),
                                           (utkface_chips[4], 10, 3, "hog_rotated+25")):
        scene, (cx, cy, side) = paste_face(chip, 160, tilt=tilt, at=(0.45, 0.5))
        sideways = np.ascontiguousarray(np.rot90(scene, turns))
        width, height = scene.shape[1], scene.shape[0]
        # np.rot90 takes (x, y) to (y, width - 1 - x) once, to (height - 1 - y, x) three times
        centre = np.array((cy, width - 1 - cx) if turns == 1 else (height - 1 - cy, cx))
        found = pipe.detect(sideways)
        assert [f.source for f in found] == ["hog_rotated-90" if turns == 1 else "hog_rotated+90"]
        (x, y, w, h), score = found[0].box, found[0].score
        assert np.abs(np.array((x + w / 2, y + h / 2)) - centre).max() < 0.25 * side
        with monkeypatch.context() as m:
            m.setattr(faces, "WEAK_FALLBACK_SCORE", -np.inf)
            blocked = pipe.detect(sideways)
        assert [f.source for f in blocked] == [weak_source] and blocked[0].score < min(score, faces.WEAK_FALLBACK_SCORE)
        # the same face upright keeps its upright box: the turns find nothing stronger there
        assert pipe.detect(scene)[0].source not in ("hog_rotated-90", "hog_rotated+90")


def test_a_box_the_caller_drops_does_not_stop_the_passes_that_find_the_face(utkface_chips):
    """A small face the first pass finds and a large dim one only the contrast pass finds: where the caller drops
    faces under 120 px (inference.py's --min-face), the small box must not end the cascade, as if a face had been
    found, leaving none at all; a box dropped for its score (--min-score) ends it."""
    scene = small_face_beside_a_large_dim_one(utkface_chips)
    pipe = faces.FacePipeline(detector="auto")
    assert [f.source for f in pipe.detect(scene)] == ["hog"]  # the small face alone: the fallback never ran
    small = lambda face: face.box[2] < 120
    kept, rejected = pipe.detect_filtered(scene, lambda face: "small" if small(face) else None, small)
    assert [f.source for f in kept] == ["hog_contrast"] and kept[0].box[2] > 150
    assert [r for _, r in rejected] == ["small"]
    # dropped for its score, the small box is a face all the same: no pass after it runs (each 20 times the cost)
    kept, rejected = pipe.detect_filtered(scene, lambda face: "score" if face.score < 5 else None)
    assert kept == [] and [(f.source, r) for f, r in rejected] == [("hog", "score")]
    assert [f.source for f in faces.FacePipeline(detector="auto", min_face=120).detect(scene)] == ["hog_contrast"]


def test_a_small_face_the_caller_drops_is_reported_whichever_pass_ends_the_cascade(utkface_chips, paste_face):
    """A 30 px face that only the fallback's small-face Haar pass finds, under a 40 px minimum: the passes after it go
    on (it is no usable face) and find nothing, and the face still comes back as dropped, so that inference.py says
    "1 dropped by --min-face" rather than "no face"."""
    scene, _ = paste_face(utkface_chips[2], 30, at=(0.5, 0.5))
    pipe = faces.FacePipeline(detector="auto")
    assert [f.source for f in pipe.detect(scene)] == ["haar+hog"]
    small = lambda face: min(face.box[2:]) < 40
    kept, rejected = pipe.detect_filtered(scene, lambda face: "small" if small(face) else None, small)
    assert kept == [] and [(f.source, r) for f, r in rejected] == [("haar+hog", "small")]


def test_a_stronger_sideways_face_replaces_one_weak_fallback_box_and_joins_several(monkeypatch):
    """The rule itself, on a blank photo (the first pass finds nothing) with the fallback's and the quarter turns'
    boxes given: one weak box gives way to the stronger turned face; several (a dim group) stay beside it; a strong
    fallback box runs no turn at all."""
    pipe = faces.FacePipeline(detector="auto")
    gray = np.full((240, 320), 100, np.uint8)
    weak = [((10, 10, 60, 60), 0.05, "hog_contrast"), ((150, 10, 60, 60), 0.1, "hog_contrast")]
    turned = ((100, 100, 80, 80), 0.9, "hog_rotated+90", 90.0)
    turns = []
    monkeypatch.setattr(faces.FacePipeline, "_rotated", staticmethod(
        lambda image, degrees, pad, threshold=0.0: turns.append(degrees) or ([turned] if degrees == 90 else [])))
    for fallback, expected in ((weak[:1], [turned]), (weak, weak + [turned]),
                               ([((10, 10, 60, 60), 0.5, "hog_contrast")], [((10, 10, 60, 60), 0.5, "hog_contrast")])):
        turns.clear()
        monkeypatch.setattr(faces.FacePipeline, "_fallback", lambda self, *args: list(fallback))
        assert pipe._cascade(gray) == expected
        assert turns == ([] if fallback[0][1] >= faces.WEAK_FALLBACK_SCORE else list(faces.QUARTER_TURNS))


def test_a_dim_face_the_first_pass_misses_is_found_by_one_contrast_pass_before_the_costly_ones(
        utkface_chips, paste_face, monkeypatch):
    """The fallback's order is its cost: a dim, low-contrast face (the commonest miss) is found by HOG on the
    contrast-equalised photo, without the full-size Haar search, the padded copy or the turned copies."""
    hog_only, pipe = faces.FacePipeline(detector="hog"), faces.FacePipeline(detector="auto")
    for chip in utkface_chips:
        for gain in (0.3, 0.22, 0.16, 0.12):
            scene, (cx, cy, s) = paste_face(chip, 180, at=(0.5, 0.5))
            scene = (scene * gain).astype(np.uint8)
            if not hog_only.detect(scene):
                break
        else:
            continue
        calls = []
        for name in ("haar_faces", "hog_faces"):
            monkeypatch.setattr(faces, name, lambda image, *a, _f=getattr(faces, name), _n=name, **k:
                                calls.append((_n, image.shape)) or _f(image, *a, **k))
        found = pipe.detect(scene)
        monkeypatch.undo()
        if not found:
            continue
        assert [f.source for f in found] == ["hog_contrast"]
        x, y, w, h = found[0].box
        assert abs(x + w / 2 - cx) < 0.25 * s and abs(y + h / 2 - cy) < 0.25 * s
        # Haar ran once (the first pass, on a shrunk copy), no HOG on a padded or turned copy, and the
        # last pass was HOG on the photo's own size
        assert len([n for n, _ in calls if n == "haar_faces"]) == 1
        assert all(shape[0] <= scene.shape[0] and shape[1] <= scene.shape[1] for _, shape in calls)
        assert calls[-1] == ("hog_faces", scene.shape[:2])
        return
    pytest.fail("no dimmed face that HOG alone misses and the cascade finds")


def test_the_cascades_haar_passes_run_in_one_worker_thread_while_hog_runs_in_the_callers(monkeypatch):
    """Haar (OpenCV) and HOG (dlib) both release the GIL: Haar's passes run in the one worker thread, HOG
    in the caller's, so on two cores the first pass costs about the larger of the two, not their sum."""
    import threading
    threads = []
    for name in ("haar_faces", "hog_faces"):
        monkeypatch.setattr(faces, name, lambda *a, _f=getattr(faces, name), _n=name, **k:
                            threads.append((_n, threading.current_thread())) or _f(*a, **k))
    faces.FacePipeline(detector="auto").detect(np.full((240, 320, 3), 90, np.uint8))  # faceless: every pass
    haar = {t for n, t in threads if n == "haar_faces"}
    assert len([n for n, _ in threads if n == "haar_faces"]) == 2 and len(haar) == 1
    assert haar.pop().name.startswith("haar") and {t for n, t in threads if n == "hog_faces"} == {threading.current_thread()}


@pytest.mark.slow
def test_threads_each_detecting_get_what_one_thread_gets_and_do_not_crash(utkface_chips, paste_face):
    import subprocess
    import sys
    from conftest import REPO, SHARED_DATA
    # in a process of its own: a detector shared by threads crashes the interpreter (heap corruption)
    code = f"""
import sys, numpy as np
sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]
from concurrent.futures import ThreadPoolExecutor
import faces
from conftest import paste
from custom_dataset import load_rgb
chips = [load_rgb(p) for p in {[str(p) for p in sorted((SHARED_DATA / 'UTKFace').iterdir())[::2900][:4]]!r}]
scenes = [paste(c, 120 + 20 * i, at=(0.45, 0.5), seed=i)[0] for i, c in enumerate(chips)]
alone = [[f.box for f in faces.FacePipeline().faces(s)] for s in scenes]
def work(k):
    pipe = faces.FacePipeline()
    return [[f.box for f in pipe.faces(s)] for s in scenes for _ in range(3)][::3]
with ThreadPoolExecutor(4) as pool:
    results = list(pool.map(work, range(4)))
assert all(r == alone for r in results), (alone, results)
print("same", sum(len(a) for a in alone))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and proc.stdout.startswith("same"), proc.stdout + proc.stderr[-2000:]


def test_a_box_past_the_photos_edge_is_reported_inside_it_and_cut_from_the_detectors_own(utkface_chips):
    chip = utkface_chips[0]
    cut_off = np.ascontiguousarray(chip[:, 40:])  # the face runs off the left edge
    found = faces.FacePipeline(detector="hog").faces(cut_off)
    assert found, "HOG finds the cut-off face"
    x, y, w, h = found[0].box
    height, width = cut_off.shape[:2]
    assert x >= 0 and y >= 0 and x + w <= width + 1e-9 and y + h <= height + 1e-9
    assert found[0].rect != found[0].box and found[0].rect[0] < 0  # the raw one reaches past the edge
    gray = faces.FacePipeline(detector="hog").faces(cv2.cvtColor(cut_off, cv2.COLOR_RGB2GRAY))  # 2-D input
    assert [f.box for f in gray] and gray[0].chip.shape == (200, 200, 3)


def test_haar_proposals_come_in_one_order():
    import demo_data
    rng = np.random.default_rng(0)
    gray = np.clip(rng.normal(120, 30, (240, 640)), 0, 255).astype(np.uint8)
    for k, age in enumerate((20, 45, 70)):  # cartoon faces: many proposals at min_neighbors 0
        face = cv2.cvtColor(demo_data.draw_face(age, np.random.default_rng(k), 160), cv2.COLOR_RGB2GRAY)
        gray[40:200, 40 + 200 * k:200 + 200 * k] = face
    found = faces.haar_faces(gray, min_neighbors=0)
    assert len(found) > 10  # enough for an unsorted order to show
    assert found == sorted(found, key=lambda item: (-item[1], item[0]))


def test_chips_are_cut_anew_by_another_version_of_the_code(monkeypatch, tmp_path):
    records = [{"path": str(tmp_path / "none.png"), "age": 30, "hash": "h"}]
    cv2.imwrite(records[0]["path"], np.full((120, 160, 3), 90, np.uint8))
    faces.chip_dataset(records, tmp_path / "chips", faces.UTKFACE_CROP, progress=False)
    monkeypatch.setattr(faces, "CHIP_VERSION", faces.CHIP_VERSION + 1)
    _, stats = faces.chip_dataset(records, tmp_path / "chips", faces.UTKFACE_CROP, progress=False)
    assert stats["from_cache"] == 0 and len(list((tmp_path / "chips").iterdir())) == 2
    import PIL  # the decoder too: another Pillow may decode the photo otherwise
    monkeypatch.setattr(PIL, "__version__", PIL.__version__ + ".other")
    _, stats = faces.chip_dataset(records, tmp_path / "chips", faces.UTKFACE_CROP, progress=False)
    assert stats["from_cache"] == 0 and len(list((tmp_path / "chips").iterdir())) == 3


def test_a_box_mostly_beyond_the_photos_edge_is_dropped_and_a_face_cut_by_the_edge_kept(monkeypatch):
    monkeypatch.setattr(faces, "hog_faces", lambda gray, *a, **k: [((-55, 10, 60, 60), 2.0), ((280, 100, 60, 60), 1.0)])
    found = faces.FacePipeline(faces.BOX_CROP, "hog").detect(np.full((240, 320, 3), 100, np.uint8))
    assert [tuple(f.box) for f in found] == [(280, 100, 40, 60)]  # two thirds inside: kept, clipped for reporting


def test_the_largest_face_is_ranked_by_its_part_inside_the_photo_as_inference_ranks_it(monkeypatch):
    """eda.py --align labels the largest face with the photo's age, and inference.py reports the largest
    first: both by the box inside the photo, not by a detector box reaching past the edge."""
    monkeypatch.setattr(faces, "hog_faces", lambda gray, *a, **k: [((-40, 10, 100, 100), 2.0), ((150, 50, 90, 90), 1.0)])
    found = faces.FacePipeline(faces.BOX_CROP, "hog").faces(np.full((240, 320, 3), 100, np.uint8))
    assert [tuple(f.box) for f in found] == [(150, 50, 90, 90), (0, 10, 60, 100)]


def test_a_box_too_small_to_keep_does_not_suppress_the_face_around_it(monkeypatch):
    """Too small is decided first: a strong 8 px box inside a face's box made non-max suppression drop the
    face, and then the size rule dropped the 8 px box: no face at all."""
    monkeypatch.setattr(faces, "hog_faces", lambda gray, *a, **k: [((100, 100, 8, 8), 2.0), ((80, 80, 60, 60), 1.0)])
    found = faces.FacePipeline(faces.BOX_CROP, "hog").detect(np.full((240, 320, 3), 100, np.uint8))
    assert [tuple(f.box) for f in found] == [(80, 80, 60, 60)]


def test_chip_dataset_skips_and_counts_a_photo_the_detector_fails_on(utkface_chips, paste_face, tmp_path,
                                                                    monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    records = []
    for i in range(2):
        scene, _ = paste_face(utkface_chips[i], 170, at=(0.4, 0.5), seed=i)
        cv2.imwrite(str(photos / f"{i}.png"), cv2.cvtColor(scene, cv2.COLOR_RGB2BGR))
        records.append({"path": str(photos / f"{i}.png"), "age": 30, "hash": f"h{i}"})
    real, calls = faces.FacePipeline.faces, []

    def fails_first(self, rgb, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("a 90-megapixel panorama")
        return real(self, rgb, *args, **kwargs)
    monkeypatch.setattr(faces.FacePipeline, "faces", fails_first)
    kept, stats = faces.chip_dataset(records, tmp_path / "chips", faces.UTKFACE_CROP, progress=False)
    assert (stats["align_failed"], stats["chipped"], len(kept)) == (1, 1, 1)
    monkeypatch.undo()  # not cached as faceless: the next run tries it again
    again, stats2 = faces.chip_dataset(records, tmp_path / "chips", faces.UTKFACE_CROP, progress=False)
    assert (stats2["align_failed"], stats2["chipped"], stats2["from_cache"]) == (0, 2, 1)
