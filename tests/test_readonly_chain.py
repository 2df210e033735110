"""The whole chain (EDA, training, export, inference) on a read-only data folder changes nothing in it."""
import pytest

import demo_data
from conftest import run_script, set_writable, snapshot

pytestmark = pytest.mark.slow  # trains a model and runs three scripts


def run(*args):
    proc = run_script(*args, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_whole_chain_on_read_only_data(tmp_path):
    data = tmp_path / "data"
    demo_data.generate_dataset(data, min_age=20, max_age=35, per_age=4, size=64, seed=3)
    out = tmp_path / "out"
    set_writable(data, False)
    try:
        before = snapshot(data)
        run("eda.py", "--data-dir", data, "--out-dir", out, "--no-progress")
        run("train.py", "--splits", out / "splits", "--out-dir", out / "run", "--epochs", "1", "--image-size", "64",
            "--no-denoise", "--threads", "1", "--no-progress")
        proc = run("inference.py", "--model", out / "run" / "model.onnx", "--input-dir", data / "25",
                   "--output-dir", out / "annotated", "--whole-image", "--threads", "1")
        assert (out / "annotated" / "predictions.csv").is_file(), proc.stdout
        assert snapshot(data) == before  # nothing created, modified or removed under the data folder
    finally:
        set_writable(data, True)
