"""export_mobile.py: ExecuTorch .pte and torch.export .pt2 exports, parity with eager, int8, latency table."""
import json
import subprocess
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import export_mobile
import checkpoints
import cli
import train
from conftest import REPO, make_splits

FAST = ["--image-size", "64", "--no-denoise", "--no-progress", "--threads", "1", "--batch-size", "32",
        "--no-tensorboard"]
pytestmark = pytest.mark.slow  # every test uses run_dir, a trained model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A one-epoch SimpleCNN run (best.pt, model.jit, model.onnx) on generated faces."""
    root = tmp_path_factory.mktemp("mobile")
    splits = make_splits(root, min_age=20, max_age=40, per_age=4, size=64, seed=3)
    train.main(train.get_args_parser().parse_args(["--splits", str(splits), "--out-dir", str(root / "run"), *FAST,
                                                   "--epochs", "1"]))
    return root / "run"


def need_executorch():
    """Skip without executorch, unless requirements.txt lists it: then a missing install is a failure."""
    if re.search(r"^executorch\b", (REPO / "requirements.txt").read_text(), re.M):
        import executorch  # noqa: F401
    else:
        pytest.importorskip("executorch")


def cli_args(*args):
    return export_mobile.get_args_parser().parse_args([str(a) for a in args])


@pytest.fixture(scope="module")
def exported(run_dir):
    """`export_mobile.py --checkpoint RUN/best.pt --quantize` (short timing loop), run in this process."""
    result = export_mobile.main(cli_args("--checkpoint", run_dir / "best.pt", "--quantize", "--runs", "20",
                                         "--warmup", "3"))
    return result


@pytest.fixture(scope="module")
def eager(run_dir):
    checkpoint = checkpoints.load_checkpoint(run_dir / "best.pt")
    wrapper, cfg, size = export_mobile.rebuild(checkpoint)
    val = export_mobile.load_val(checkpoint, cfg, cli_args("--checkpoint", "x"))
    return wrapper, val.batch(range(min(8, len(val))))[0].float()


def jit_metadata(run_dir):
    return checkpoints.load_torchscript(run_dir / "model.jit")[1]


def test_pte_matches_eager_and_carries_the_metadata(run_dir, exported, eager):
    need_executorch()
    wrapper, images = eager
    pte = run_dir / "model.pte"
    assert exported["exports"]["model.pte"]["max_abs_diff"] <= 1e-4
    assert export_mobile.check_mobile_parity(wrapper, pte, images) <= 1e-4  # real faces, batch 8, 1 and 32
    run, metadata = export_mobile.load_executorch(pte)
    assert metadata == json.loads((run_dir / "model.pte.json").read_text())
    assert metadata["export"]["dynamic_batch"] == [1, export_mobile.PTE_MAX_BATCH]
    assert {k: v for k, v in metadata.items() if k != "export"} == jit_metadata(run_dir)
    with pytest.raises(ValueError, match="at most 32"):
        run(images[:1].repeat(33, 1, 1, 1))


def test_int8_pte_is_smaller_and_close_to_float(run_dir, exported):
    need_executorch()
    int8 = exported["int8"]
    assert (run_dir / "model_int8.pte").stat().st_size < (run_dir / "model.pte").stat().st_size / 2
    assert int8["val_n"] > 0 and int8["calibration_images"] == min(64, int8["val_n"])
    assert abs(int8["val_mae_int8"] - int8["val_mae_float"]) < 1.0
    _, metadata = export_mobile.load_executorch(run_dir / "model_int8.pte")
    assert metadata["export"]["dtype"] == "int8"
    # the float model's figures are not stated as the int8 model's (its own val MAE: mobile_exports.json)
    assert metadata["test_mae"] is None and metadata["val_mae"] is None and metadata["val_mae_views"] is None
    assert json.loads((run_dir / "model_int8.pte.json").read_text())["test_mae"] is None


def test_table_lists_size_and_latency_of_the_exports_this_run_wrote(run_dir, exported):
    report = json.loads((run_dir / "mobile_exports.json").read_text())
    table = report["latency"]
    assert table["threads"] == 1 and table["batch"] == 1 and table["runs"] == 20
    # model.jit (train.py's) is a program this run did not write: never loaded; ONNX runs no code
    present = [name for name in export_mobile.BENCH_FILES if (run_dir / name).is_file() and name != "model.jit"]
    assert "model.onnx" in present and len(present) >= 2
    assert [row["file"] for row in table["rows"]] == present
    for row in table["rows"]:
        assert row["size_bytes"] == (run_dir / row["file"]).stat().st_size
        assert 0 < row["latency_ms_median"] <= row["latency_ms_p90"], row
        assert row["stale"] is False
    # train.py's model.onnx records the weights it was exported from: the checkpoint's (stale otherwise)
    mine = checkpoints.weights_digest(checkpoints.load_checkpoint(run_dir / "best.pt")["model_state"])
    assert export_mobile.recorded_weights(run_dir / "model.onnx") == mine


def test_files_planted_in_the_output_folder_are_never_loaded(run_dir, tmp_path, monkeypatch):
    import shutil
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(run_dir / "model.onnx", out / "model.onnx")
    for planted in ("model.jit", "model_int8.pte"):
        (out / planted).write_bytes(b"planted: loading this would run someone else's code")
    gone = subprocess.Popen(["true"])
    gone.wait()
    orphan = out / f".model.pte.x1y2.{gone.pid}.tmp"  # left by an export that was killed
    orphan.write_bytes(b"partial")
    loaded = []
    real_runner = export_mobile._runner
    monkeypatch.setattr(export_mobile, "_runner", lambda path, threads: (loaded.append(Path(path).name),
                                                                        real_runner(path, threads))[1])
    export_mobile.main(cli_args("--checkpoint", run_dir / "best.pt", "--out-dir", out, "--runs", "3",
                                "--warmup", "1"))
    written = "model.pte" if (out / "model.pte").exists() else "model.pt2"
    assert sorted(loaded) == sorted(["model.onnx", written])
    assert not orphan.exists()


def test_pt2_matches_eager_with_metadata_inside(run_dir, eager, tmp_path):
    wrapper, images = eager
    metadata = {"model_name": "simplecnn", "note": "ünïcode"}
    path = export_mobile.export_pt2(wrapper, images, tmp_path / "model.pt2", metadata)
    assert export_mobile.check_mobile_parity(wrapper, path, images) <= 1e-4
    module, loaded = export_mobile.load_pt2(path)
    assert loaded["note"] == "ünïcode" and loaded["export"]["dynamic_batch"] == [1, export_mobile.MAX_BATCH]
    with torch.no_grad():
        assert module(images[:3]).shape == (3,)


@pytest.mark.parametrize("cause", ["not_installed", "lowering_fails"])
def test_falls_back_to_pt2_and_says_why_in_one_line(run_dir, tmp_path, monkeypatch, capsys, cause):
    def broken(*args, **kwargs):
        raise NotImplementedError("no XNNPACK kernel for this op\nsecond line")
    if cause == "lowering_fails":
        monkeypatch.setattr(export_mobile, "_lower_to_pte", broken)
    else:
        monkeypatch.setattr(export_mobile, "executorch_missing", lambda: "executorch is not importable (test)")
    export_mobile.main(cli_args("--checkpoint", run_dir / "best.pt", "--out-dir", tmp_path, "--no-bench"))
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].endswith("writing model.pt2 (torch.export) instead"), lines
    assert ("no XNNPACK kernel for this op" if cause == "lowering_fails" else "not importable") in lines[0]
    assert (tmp_path / "model.pt2").is_file() and not (tmp_path / "model.pte").exists()


def test_a_checkpoint_without_its_config_still_exports(run_dir, tmp_path):
    checkpoint = checkpoints.load_checkpoint(run_dir / "best.pt")
    for key in ("config", "crop", "best_val_mae"):
        checkpoint.pop(key, None)
    checkpoints.save_checkpoint(tmp_path / "bare.pt", checkpoint)
    export_mobile.main(cli_args("--checkpoint", tmp_path / "bare.pt", "--out-dir", tmp_path, "--no-bench",
                                "--format", "pt2"))
    _, metadata = export_mobile.load_pt2(tmp_path / "model.pt2")
    assert metadata["crop"] == {"kind": "box", "margin": 0.0} and metadata["tta_flip"] is False


@pytest.mark.parametrize("case", ["missing", "wrong_file", "no_val_split", "another_split"])
def test_bad_input_is_one_line_and_exit_2(run_dir, tmp_path, monkeypatch, capsys, case):
    if case == "another_split":  # eda.py run again since: other validation faces, perhaps this model's training ones
        other = tmp_path / "other_splits"
        shutil.copytree(checkpoints.load_checkpoint(run_dir / "best.pt")["config"]["splits"], other)
        rows = (other / "val.csv").read_text().splitlines()
        (other / "val.csv").write_text("\n".join(rows[:-1]) + "\n")
    args = {"missing": ["--checkpoint", tmp_path / "nope.pt"],
            "wrong_file": ["--checkpoint", run_dir / "model.onnx"],
            "no_val_split": ["--checkpoint", run_dir / "best.pt", "--quantize", "--splits", tmp_path],
            "another_split": ["--checkpoint", run_dir / "best.pt", "--quantize", "--splits",
                              tmp_path / "other_splits"]}[case]
    monkeypatch.setattr(sys, "argv", ["export_mobile.py", *map(str, args), "--out-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(export_mobile.main, export_mobile.get_args_parser())
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert case != "another_split" or "is not the split" in err, err
    assert not list(tmp_path.glob("model*"))


def test_a_failed_check_keeps_the_previous_export_and_a_killed_runs_staging_goes(run_dir, tmp_path, monkeypatch):
    export_mobile.main(cli_args("--checkpoint", run_dir / "best.pt", "--out-dir", tmp_path, "--no-bench",
                                "--format", "pt2"))
    before = (tmp_path / "model.pt2").read_bytes()
    # the same checkpoint exports to the same bytes: the file's identity shows that it was not written again
    identity = (tmp_path / "model.pt2").stat().st_ino, (tmp_path / "model.pt2").stat().st_mtime_ns
    gone = subprocess.Popen(["true"])
    gone.wait()
    left = tmp_path / f".staging.{gone.pid}"  # what a run killed before its check left
    left.mkdir()
    (left / "model.pt2").write_bytes(b"unchecked")

    def off_by_a_year(wrapper, path, example, tolerance=1e-4):
        raise RuntimeError(f"{path} differs from the eager model by 1.00e+00 (> {tolerance})")
    monkeypatch.setattr(export_mobile, "check_mobile_parity", off_by_a_year)
    with pytest.raises(RuntimeError, match="differs from the eager model"):
        export_mobile.main(cli_args("--checkpoint", run_dir / "best.pt", "--out-dir", tmp_path, "--no-bench",
                                    "--format", "pt2"))
    assert (tmp_path / "model.pt2").read_bytes() == before  # the checked export of the run before stays
    assert ((tmp_path / "model.pt2").stat().st_ino, (tmp_path / "model.pt2").stat().st_mtime_ns) == identity
    assert not list(tmp_path.glob(".staging.*"))


def test_counts_are_checked_as_usage_errors_and_no_export_goes_among_the_images(run_dir, tmp_path):
    for flag in ("--runs", "--threads", "--calibration-images"):
        proc = subprocess.run([sys.executable, str(REPO / "export_mobile.py"), "--checkpoint", str(run_dir / "best.pt"),
                               flag, "0"], capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 2 and flag in proc.stderr and "at least 1" in proc.stderr, proc.stderr
    splits = checkpoints.load_checkpoint(run_dir / "best.pt")["config"]["splits"]
    among = Path(splits).parent.parent / "data" / "30" / "mobile"  # make_splits' faces: root/data/<age>
    with pytest.raises(cli.DataError, match="holds"):
        export_mobile.main(cli_args("--checkpoint", run_dir / "best.pt", "--out-dir", among, "--no-bench"))
    assert not among.exists()


def test_exports_of_other_weights_go_and_this_checkpoints_stay_whatever_their_dates(run_dir, tmp_path, capsys):
    import os
    import time
    mine = checkpoints.weights_digest(checkpoints.load_checkpoint(run_dir / "best.pt")["model_state"])
    recorded = {"model.pte": "other weights", "model_int8.pte": mine, "mobile_exports.json": "other weights"}
    for name, weights in recorded.items():
        sidecar = tmp_path / (name if name.endswith(".json") else name + ".json")
        sidecar.write_text(json.dumps({"weights": weights}))
        if not name.endswith(".json"):
            (tmp_path / name).write_bytes(b"an export")
    for path in tmp_path.iterdir():  # dates say nothing: a copied checkpoint is newer than its exports
        os.utime(path, (time.time() + 3600,) * 2)
    (tmp_path / "model.onnx").write_bytes(b"onnx")  # train.py's, never this script's to remove
    export_mobile.main(cli_args("--checkpoint", run_dir / "best.pt", "--out-dir", tmp_path, "--no-bench",
                                "--format", "pt2"))
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["model.onnx", "model.pt2", "model_int8.pte", "model_int8.pte.json"], left
    out = capsys.readouterr().out
    assert "removed model.pte, mobile_exports.json" in out and "note:" not in out
    assert export_mobile.recorded_weights(tmp_path / "model.pt2") == mine  # read from the archive, nothing run
    (tmp_path / "model.pte").write_bytes(b"an export from before weights were recorded")
    export_mobile.main(cli_args("--checkpoint", run_dir / "best.pt", "--out-dir", tmp_path, "--no-bench",
                                "--format", "pt2"))
    assert (tmp_path / "model.pte").is_file() and "note: model.pte" in capsys.readouterr().out


def test_int8_calibration_images_are_spread_over_the_split(run_dir, monkeypatch, tmp_path):
    need_executorch()
    checkpoint = checkpoints.load_checkpoint(run_dir / "best.pt")
    wrapper, cfg, size = export_mobile.rebuild(checkpoint)
    val = export_mobile.load_val(checkpoint, cfg, cli_args("--checkpoint", "x"))
    images, n = val.batch(range(len(val)))[0], len(val)
    seen = []

    def calibrate_and_stop(wrapper, example, calibration, *args):
        seen.append(calibration)
        raise RuntimeError("stop here")
    monkeypatch.setattr(export_mobile, "quantize_executorch", calibrate_and_stop)
    export_mobile.quantize_step(wrapper, images[:1], val, tmp_path, {}, 3)
    assert list(tmp_path.iterdir()) == []  # nothing left of the failed int8 export, not even its staging folder
    # the split is sorted by path (by age, for UTKFace names): the first, middle and last faces, not the first 3
    assert n > 3 and torch.equal(seen[0], images[[0, int(np.round((n - 1) / 2)), n - 1]])


def test_onnx_metadata_is_read_without_running_the_file_and_none_where_absent(tmp_path):
    import onnx
    from conftest import constant_model
    path = constant_model(tmp_path / "m" / "model.onnx", age=33.0)
    assert checkpoints.onnx_metadata(path)["model_name"] == "constant"
    assert export_mobile.recorded_weights(path) is None  # a metadata without "weights": an export older than it
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(path))
    assert checkpoints.onnx_metadata(path) is None
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    assert export_mobile.recorded_weights(tmp_path / "junk.onnx") is None


def test_an_export_of_the_runs_tested_weights_carries_their_test_mae(run_dir):
    from custom_dataset import PreprocessConfig
    test_mae = json.loads((run_dir / "metrics.json").read_text())["mae"]
    mapped = checkpoints.load_checkpoint(run_dir / "best.pt").get("age_map")
    # one epoch: last.pt holds the tested weights; without a map kept it is what was tested
    for name, expected in (("best.pt", test_mae), ("last.pt", None if mapped else test_mae)):
        checkpoint = checkpoints.load_checkpoint(run_dir / name)
        cfg = PreprocessConfig.from_dict(checkpoint["preprocess"])
        assert checkpoints.metadata_for(checkpoint, cfg, run_dir / name)["test_mae"] == expected


def test_exports_in_a_folder_of_non_ascii_name_are_read_through_a_file_object(run_dir, eager, tmp_path, monkeypatch):
    """Given a file name, torch's C++ reads it in Windows' local code page: a .jit or .pt2 under C:\\Users\\Jürgen
    was 'not a TorchScript model'. Names are refused here as they fail there."""
    folder = tmp_path / "Jürgen"
    folder.mkdir()
    shutil.copy(run_dir / "model.jit", folder / "model.jit")
    wrapper, images = eager
    export_mobile.export_pt2(wrapper, images, folder / "model.pt2", {"model_name": "simplecnn"})

    def by_name_fails(load):
        def load_as_on_windows(f, *args, **kwargs):
            if isinstance(f, (str, Path)) and not str(f).isascii():
                raise RuntimeError("open file failed because of errno 2 on fopen")
            return load(f, *args, **kwargs)
        return load_as_on_windows
    monkeypatch.setattr(torch.jit, "load", by_name_fails(torch.jit.load))
    monkeypatch.setattr(torch.export, "load", by_name_fails(torch.export.load))
    module, metadata = checkpoints.load_torchscript(folder / "model.jit")
    assert metadata["model_name"] == "simplecnn"
    checkpoints.rewrite_export_metadata(folder / "model.jit", {**metadata, "val_mae": 1.5})
    assert checkpoints.load_torchscript(folder / "model.jit")[1]["val_mae"] == 1.5
    assert export_mobile.load_pt2(folder / "model.pt2")[1]["model_name"] == "simplecnn"


def test_the_exports_say_what_their_graph_outputs_and_what_an_app_adds(run_dir):
    """val_mae is of the views and the age map averaged and applied after the graph; nothing in the file said so."""
    metadata = checkpoints.load_torchscript(run_dir / "model.jit")[1]
    assert "one view each" in metadata["output"] and "age_map" in metadata["output"]
