"""Usage mistakes end in one line on stderr and exit code 2, whichever script is called."""
import subprocess
import sys

import pytest

from conftest import REPO, assert_one_line_error, run_script


@pytest.mark.slow
@pytest.mark.parametrize("script, argv, words", [
    ("train.py", ["--batch-size", "x"], ["--batch-size", "see train.py --help"]),
    ("eda.py", ["--data-dir"], ["--data-dir", "see eda.py --help"]),
    ("inference.py", ["--image", "a.jpg", "--detector", "yolo"], ["invalid choice", "see inference.py --help"]),
    ("inference.py", [], ["one of the arguments"]),
    ("bench_detection.py", ["--limit", "many"], ["--limit"]),
    # a flag's mistake is said first, also on a clone without ../shared/data
    ("bench_detection.py", ["--mmod-limit", "0", "--data-dir", "no_such_folder"], ["--mmod-limit must be at least 1"]),
    ("bench_detection.py", ["--limit", "0", "--data-dir", "no_such_folder"], ["--limit and --mmod-limit must be at least 1"]),
    ("hyperparameter_tunning.py", ["--nope"], ["the following arguments are required"]),
    ("train.py", ["--splits", "s", "--out-dir", "o", "--nope"], ["unrecognized arguments: --nope"]),
])
def test_usage_errors_are_one_line(script, argv, words):
    assert_one_line_error(run_script(script, *argv), *words)


@pytest.mark.parametrize("script, hidden, package", [
    ("inference.py", "cv2", "opencv-python-headless"), ("eda.py", "numpy", "numpy"),
    ("bench_detection.py", "cv2", "opencv-python-headless"), ("export_mobile.py", "numpy", "numpy"),
])
def test_a_missing_requirement_is_one_line_naming_the_package(script, hidden, package):
    """Each script imports cli before any third-party package, so even an import at its top is one line."""
    code = (f"import sys, runpy; sys.modules[{hidden!r}] = None; sys.argv = [{script!r}, '--help']; "
            f"runpy.run_path({script!r}, run_name='__main__')")
    assert_one_line_error(run_script("-c", code), f"the package {package} is missing", "pip install -r requirements.txt")


def test_a_users_own_program_keeps_its_own_import_errors(tmp_path):
    """The hook is the scripts' alone: a program that imports inference sees its own ImportError as Python shows it."""
    program = tmp_path / "mine.py"
    program.write_text(f"import sys\nsys.path.insert(0, {str(REPO)!r})\nimport inference\nimport not_a_package_here\n")
    proc = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ModuleNotFoundError" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("flag, value, rule", [
    ("--batch-size", "0", "--batch-size must be at least 1"),
    ("--epochs", "0", "--epochs must be at least 1"),
    ("--lr", "nan", "--lr must be a positive number"),
    ("--image-size", "8", "--image-size must be between 16 and 1024"),
])
def test_impossible_training_settings_are_named(demo_dir, run_eda, tmp_path, flag, value, rule):
    run_eda(demo_dir, tmp_path / "out")
    proc = run_script("train.py", "--splits", tmp_path / "out" / "splits", "--out-dir", tmp_path / "run", flag, value,
                "--threads", "1", "--no-progress")
    assert_one_line_error(proc, rule)


@pytest.mark.slow
def test_too_few_images_for_a_split_is_one_clear_line(demo_dir, tmp_path):
    import shutil
    small = tmp_path / "small"
    for path in sorted(demo_dir.rglob("*.jpg"))[:5]:
        (small / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, small / path.parent.name / path.name)
    proc = run_script("eda.py", "--data-dir", small, "--out-dir", tmp_path / "out", "--no-progress")
    assert_one_line_error(proc, "only 5 usable unique images", "needs at least 10")
    assert not (tmp_path / "out").exists()  # not even an empty folder (or its lock) is left


@pytest.mark.slow
def test_a_second_run_into_a_busy_folder_stops_and_a_dead_runs_lock_is_taken_over(demo_dir, run_eda, tmp_path):
    run_eda(demo_dir, tmp_path / "out")
    run = tmp_path / "run"
    run.mkdir()
    train = ["train.py", "--splits", tmp_path / "out" / "splits", "--out-dir", run, "--epochs", "1",
             "--image-size", "32", "--threads", "1", "--no-progress", "--no-tensorboard", "--no-export"]
    busy = subprocess.Popen(["sleep", "60"])
    try:
        (run / ".lock").write_text(f"{busy.pid}\n")
        assert_one_line_error(run_script(*train), f"in use by another train.py (PID {busy.pid})")
        assert not (run / "last.pt").exists()
        # eda.py too: two splits written into one OUT would mix, the one's labels.csv beside the other's splits
        (tmp_path / "out" / ".lock").write_text(f"{busy.pid}\n")
        before = (tmp_path / "out" / "splits" / "train.csv").read_bytes()
        assert_one_line_error(run_script("eda.py", "--data-dir", demo_dir, "--out-dir", tmp_path / "out", "--seed", "7",
                                         "--no-progress"), f"in use by another eda.py (PID {busy.pid})")
        assert (tmp_path / "out" / "splits" / "train.csv").read_bytes() == before
        (tmp_path / "out" / ".lock").unlink()
    finally:
        busy.kill()
        busy.wait()
    proc = run_script(*train)  # the holder is gone now: its lock is stale
    assert proc.returncode == 0, proc.stderr
    assert "taking it over" in proc.stdout and (run / "last.pt").is_file() and not (run / ".lock").exists()


@pytest.mark.slow
def test_training_output_inside_the_data_set_is_refused(demo_dir, run_eda, tmp_path):
    run_eda(demo_dir, tmp_path / "out")
    for inside in (demo_dir / "25" / "run", demo_dir / "runs"):
        proc = run_script("train.py", "--splits", tmp_path / "out" / "splits", "--out-dir", inside, "--threads", "1")
        assert_one_line_error(proc, "holds the data set's images")
        assert not inside.exists()
    cache = demo_dir / "25" / "cache"  # a cache is an output too: hundreds of MB among the images
    for script, extra in (("train.py", []), ("hyperparameter_tunning.py", ["--model", "simplecnn"])):
        proc = run_script(script, "--splits", tmp_path / "out" / "splits", "--out-dir", tmp_path / "run",
                          "--cache-dir", cache, "--threads", "1", *extra)
        assert_one_line_error(proc, "--cache-dir", "holds the data set's images")
        assert not cache.exists()


@pytest.mark.slow
def test_an_eda_run_that_fails_while_writing_leaves_the_previous_split_whole(demo_dir, run_eda, tmp_path, monkeypatch):
    import eda
    out = tmp_path / "out"
    run_eda(demo_dir, out, "--seed", "1")
    before = {p.name: p.read_bytes() for p in (out / "splits").iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(eda, "write_split_crop", disk_full)  # after the three CSVs of the new split
    with pytest.raises(OSError):
        run_eda(demo_dir, out, "--seed", "2")
    assert {p.name: p.read_bytes() for p in (out / "splits").iterdir()} == before
    assert not list(out.glob(".splits*"))
    monkeypatch.undo()
    run_eda(demo_dir, out, "--seed", "2")
    assert (out / "splits" / "val.csv").read_bytes() != before["val.csv"]


@pytest.mark.slow
def test_a_huge_csv_field_is_one_line(demo_dir, tmp_path):
    image = next(demo_dir.rglob("*.jpg"))
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "labels.csv").write_text(f"path,age\n{image},30\n{image},\"{'x' * 200_000}\"\n")
    proc = run_script("eda.py", "--data-dir", tmp_path / "csv" / "labels.csv", "--out-dir", tmp_path / "out")
    assert_one_line_error(proc, "is not a readable CSV", "field larger than field limit")


@pytest.mark.slow
def test_file_names_that_are_not_utf8_are_skipped_and_counted(demo_dir, run_eda, tmp_path):
    import os
    import shutil
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    odd = os.path.join(os.fsencode(data / "25"), b"caf\xe9.jpg")  # Latin-1 bytes, not UTF-8
    shutil.copy(next((data / "25").iterdir()), odd)
    report = run_eda(data, tmp_path / "out")
    assert report["skipped"].get("name_not_utf8") == 1
    assert (tmp_path / "out" / "splits" / "train.csv").read_text(encoding="utf-8")


@pytest.mark.slow
def test_a_diverging_run_says_which_checkpoint_is_kept(demo_dir, run_eda, tmp_path):
    run_eda(demo_dir, tmp_path / "out")
    run = tmp_path / "run"
    proc = run_script("train.py", "--splits", tmp_path / "out" / "splits", "--out-dir", run, "--epochs", "2",
                "--image-size", "32", "--lr", "1e9", "--threads", "1", "--no-progress", "--no-tensorboard")
    assert_one_line_error(proc, "at epoch 1", "lower --lr", "no checkpoint was kept")
    assert not (run / "last.pt").exists() and not (run / "best.pt").exists()


def test_a_full_disk_during_a_cache_build_leaves_nothing_and_says_so(demo_dir, tmp_path, monkeypatch):
    import errno
    import numpy as np
    import custom_dataset
    from custom_dataset import DataError, PreprocessConfig, build_cache
    paths = [str(p) for p in sorted(demo_dir.rglob("*.jpg"))[:20]]
    cfg = PreprocessConfig(image_size=32, denoise=False, deblur=False)
    real_save = np.save

    def full(f, array):
        real_save(f, array[:2])  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(custom_dataset.np, "save", full)
    with pytest.raises(DataError, match=r"no space left on the device holding .* needs about 0 MB"):
        build_cache(paths, cfg, tmp_path / "cache", workers=1, progress=False)
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.undo()
    images, ok, _ = build_cache(paths, cfg, tmp_path / "cache", workers=1, progress=False)
    images = np.array(images)  # off the memory map: the file is cut short next
    del ok
    array = next((tmp_path / "cache").glob("*.npy"))
    array.write_bytes(array.read_bytes()[:5000])  # truncated later (a crash, a copy cut short)
    again, ok2, _ = build_cache(paths, cfg, tmp_path / "cache", workers=1, progress=False)
    assert np.array_equal(np.asarray(again), images) and ok2.all()


def test_temporary_files_of_a_killed_build_are_removed(demo_dir, tmp_path):
    from custom_dataset import PreprocessConfig, build_cache
    cache = tmp_path / "cache"
    cache.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (cache / f".train_x.npy.{dead.pid}.tmp").write_bytes(b"partial")
    build_cache([str(next(demo_dir.rglob("*.jpg")))], PreprocessConfig(image_size=32, denoise=False, deblur=False),
                cache, workers=1, progress=False)
    assert not list(cache.glob(".*.tmp"))


def test_a_huge_file_is_rejected_by_its_size_without_being_read(tmp_path, monkeypatch):
    from pathlib import Path
    import custom_dataset
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as f:
        f.truncate(custom_dataset.MAX_FILE_BYTES + 1)  # sparse: nothing is written to the disk
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"{self} was read"))
    assert custom_dataset.check_image(huge)["reason"] == "too_large"


SCRIPTS = ["train", "inference", "eda", "hyperparameter_tunning", "export_mobile", "benchmark", "bench_detection",
           "demo_data"]


def test_help_and_onnx_inference_never_import_torch():
    # torch costs 1-2 s to import: --help of every script, and inference with an ONNX model, must not pay it
    probe = f"""
import sys, numpy as np
for name in {SCRIPTS!r}:
    module = __import__(name)
    try:
        module.get_args_parser().parse_args(["--help"])
    except SystemExit:
        pass
from inference import AgeEstimator
faces = AgeEstimator("models/age_simplecnn_utkface.onnx", whole_image=True).predict(np.full((96, 96, 3), 128, np.uint8))
assert len(faces) == 1 and 0 < faces[0]["age"] < 120, faces
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""
    proc = run_script("-c", probe)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_a_console_that_cannot_show_a_name_gets_it_escaped_not_an_error(tmp_path):
    """A Windows log file (cp1252) or an ASCII console: the outputs were written, then printing their folder's
    name failed the run with a codec error."""
    import os
    out = tmp_path / "数据"
    proc = subprocess.run([sys.executable, "demo_data.py", "--out-dir", str(out), "--min-age", "20", "--max-age", "20",
                           "--per-age", "1", "--size", "32"], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert proc.returncode == 0, proc.stderr
    assert "\\u6570\\u636e" in proc.stdout and (out / "20").is_dir()


def test_a_negative_seed_is_one_line_before_the_scan(demo_dir, tmp_path):
    assert_one_line_error(run_script("eda.py", "--data-dir", demo_dir, "--out-dir", tmp_path / "o", "--seed", "-1"),
                          "--seed must be 0 or more")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("failure, words", [
    ("opencv", ["OpenCV failed", "--debug"]),  # cv2.error is no RuntimeError: it was a C++ traceback
    ("memory", ["out of memory"]),
    ("other", None),  # a bug stays a traceback: it must be seen
])
def test_opencv_and_memory_failures_are_one_line(failure, words, monkeypatch, capsys):
    import cv2
    import numpy as np

    import cli

    def main(args):
        if failure == "opencv":
            cv2.resize(np.zeros((0, 0, 3), np.uint8), (10, 10))
        raise MemoryError() if failure == "memory" else KeyError("a bug")
    monkeypatch.setattr(sys, "argv", ["x.py"])
    if words is None:
        with pytest.raises(KeyError):
            cli.run_cli(main, cli.ArgumentParser())
        return
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(main, cli.ArgumentParser())
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("error: ") and "\n" not in err, err
    assert all(word in err for word in words), err


def test_a_closed_stdout_ends_a_script_quietly_as_unix_tools_do():
    # `script | head -1`: a print after the reader left raises BrokenPipeError; no "error: Broken pipe", exit 141
    code = ("import time, cli\n"
            "def main(args):\n"
            "    time.sleep(0.5)\n"
            "    raise BrokenPipeError(32, 'Broken pipe')\n"
            "cli.run_cli(main, cli.ArgumentParser())\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader leaves
    assert proc.wait(timeout=60) == 141 and proc.stderr.read() == b""
    # another pipe broke while stdout's reader is still there (a socket, a child's pipe): an error, said
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Broken pipe" in proc.stderr
