"""Shared fixtures: the repo on sys.path, a small generated data set, and ways to run eda.py."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # plain `pytest` (not `python -m pytest`) leaves the repo root off
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """A small folder-per-age set: ages 20-29, 6 images of 64 px each (read-only for tests)."""
    import demo_data
    root = tmp_path_factory.mktemp("demo") / "data"
    demo_data.generate_dataset(root, min_age=20, max_age=29, per_age=6, size=64, seed=0)
    return root


@pytest.fixture(scope="session")
def run_eda():
    """eda.main in this process: run_eda(data_dir, out_dir, *extra_args) -> the report dict."""
    import eda

    def run(data_dir, out_dir, *extra):
        args = eda.get_args_parser().parse_args(
            ["--data-dir", str(data_dir), "--out-dir", str(out_dir), "--no-progress", *map(str, extra)])
        return eda.main(args)
    return run


@pytest.fixture(scope="session")
def eda_cli():
    """`python eda.py ARGS` as a user runs it: eda_cli(*args) -> CompletedProcess (text)."""
    def run(*args, timeout=120):
        return subprocess.run([sys.executable, "eda.py", *map(str, args)], cwd=REPO, capture_output=True,
                              text=True, timeout=timeout)
    return run


SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def utkface_chips():
    """Eight real UTKFace files (read in place from ../shared/data; skipped in a clone without it)."""
    folder = SHARED_DATA / "UTKFace"
    if not folder.is_dir():
        pytest.skip(f"real faces not available: {folder} is absent (CI and the dev machines have it)")
    from custom_dataset import load_rgb
    # adults and a child, frontal enough for HOG; fixed names so the test is the same everywhere
    names = sorted(p.name for p in folder.iterdir())[::2900][:8]
    return [load_rgb(folder / n) for n in names]


def paste(chip, side, tilt=0.0, canvas=(480, 640), at=(0.5, 0.5), seed=0):
    """A chip resized to `side`, turned by `tilt` degrees (round mask, no square edges) and pasted
    into a textured grey canvas with its centre at `at` (fractions of width, height).
    Returns (scene, (centre x, centre y, side))."""
    import cv2
    import numpy as np
    height, width = canvas
    rng = np.random.default_rng(seed)
    scene = np.clip(rng.normal(110, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    face = cv2.resize(chip, (side, side), interpolation=cv2.INTER_AREA)
    m = cv2.getRotationMatrix2D((side / 2, side / 2), tilt, 1.0)
    face = cv2.warpAffine(face, m, (side, side), borderMode=cv2.BORDER_REPLICATE)
    mask = np.zeros((side, side), np.uint8)
    cv2.circle(mask, (side // 2, side // 2), side // 2, 1, -1)
    x, y = int(at[0] * width - side / 2), int(at[1] * height - side / 2)
    region = scene[y:y + side, x:x + side]
    region[mask > 0] = face[mask > 0]
    return scene, (x + side / 2, y + side / 2, side)


@pytest.fixture(scope="session")
def paste_face():
    return paste
