"""Model, metrics, checkpoints, resume after SIGKILL, NaN handling, exports and train.py errors."""
import json
import math
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import custom_dataset
import checkpoints
import functions
import train
from conftest import REPO, assert_one_line_error, run_script
from model import ExportedAgeModel, SimpleCNN, build_model, count_parameters

FAST = ["--image-size", "64", "--no-denoise", "--no-progress", "--threads", "1", "--batch-size", "32"]
SLOW_FIXTURES = {"full_run"}  # trains for 3 epochs: the tests that use it are marked slow (conftest)


def train_args(splits, out_dir, *extra):
    return train.get_args_parser().parse_args(["--splits", str(splits), "--out-dir", str(out_dir), *FAST, *extra])


# ---------------------------------------------------------------------------------------------- model

def test_simplecnn_matches_the_seed_architecture():
    net = SimpleCNN()
    shapes, x = [], torch.zeros(2, 3, 128, 128)
    for layer in net.features:
        x = layer(x)
        if isinstance(layer, torch.nn.MaxPool2d):
            shapes.append(tuple(x.shape[1:]))
    assert shapes == [(16, 64, 64), (32, 32, 32), (64, 16, 16), (128, 8, 8)]
    assert net(torch.zeros(2, 3, 128, 128)).shape == (2, 1)
    convs = sum(cin * cout * 9 + cout for cin, cout in [(3, 16), (16, 32), (32, 64), (64, 128)])
    assert count_parameters(net) == convs + (8192 * 64 + 64) + (64 + 1)
    assert count_parameters(net) < 1_000_000


def test_simplecnn_gap_pools_globally_and_stays_under_a_million_weights():
    model = build_model("simplecnn_gap", head="distribution", min_age=1, max_age=116)
    convs = sum(cin * cout * 9 + cout for cin, cout in [(3, 16), (16, 32), (32, 64), (64, 128), (128, 256)])
    assert count_parameters(model) == convs + 256 * 116 + 116  # no hidden fully connected layer
    for size in (96, 128):  # global pooling: any input size, same outputs
        assert model(torch.zeros(2, 3, size, size)).shape == (2, 116)


def test_simplecnn_deep_adds_one_conv_on_the_last_map_and_keeps_simplecnn_names():
    plain = build_model("simplecnn", head="distribution", min_age=1, max_age=116, image_size=144)
    deep = build_model("simplecnn_deep", head="distribution", min_age=1, max_age=116, image_size=144)
    assert count_parameters(deep) - count_parameters(plain) == 128 * 128 * 9 + 128
    assert count_parameters(deep) < 1_000_000  # the largest shipped input (144 px, all ages) still fits
    x = torch.zeros(2, 3, 144, 144)
    assert deep.backbone.features(x).shape == plain.backbone.features(x).shape == (2, 128, 9, 9)
    # a SimpleCNN checkpoint's names are a subset: the fifth conv is appended, nothing renamed
    missing, unexpected = deep.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and missing == ["backbone.features.12.weight", "backbone.features.12.bias"]


@pytest.mark.parametrize("batch_norm", [False, True])
def test_pool_then_relu_gives_the_seeds_relu_then_pool_outputs_and_gradients(batch_norm):
    torch.manual_seed(0)
    net = SimpleCNN(batch_norm=batch_norm).eval()
    seed_net = SimpleCNN(batch_norm=batch_norm, pool_before_relu=False).eval()
    seed_net.load_state_dict(net.state_dict())  # same parameter names in both orders
    # really reordered, so the comparison means something
    assert isinstance(net.features[1 + batch_norm], torch.nn.MaxPool2d)
    assert isinstance(seed_net.features[1 + batch_norm], torch.nn.ReLU)
    x = torch.randn(3, 3, 128, 128)
    outputs, grads = [], []
    for model in (net, seed_net):
        out = model(x)
        out.sum().backward()
        outputs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_keep_freed_memory_is_accepted_by_glibc():
    import platform
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt tuning is glibc-only; elsewhere it is a no-op")
    assert functions.keep_freed_memory() is True


def test_distribution_head_predicts_expected_age():
    model = build_model("simplecnn", head="distribution", min_age=20, max_age=50)
    logits = torch.full((2, 31), -1e4)
    logits[0, 5] = 0.0                   # all mass on age 25
    logits[1, 10] = logits[1, 12] = 0.0  # half on 30, half on 32
    assert torch.allclose(model.ages_from_outputs(logits), torch.tensor([25.0, 31.0]))


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg99")


def test_resnet_pretrained_offline_says_what_to_do(monkeypatch, tmp_path):
    torchvision = pytest.importorskip("torchvision")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache: forces a download attempt
    def no_network(*a, **k):
        raise OSError("network unreachable")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(RuntimeError, match="--weights FILE"):
        build_model("resnet18", pretrained=True)
    # with a network, the downloaded (or cached) file is read as data, its hash checked
    import torchvision.models._api as weights_api
    asked = {}

    def cached_weights(url, *a, **k):
        asked.update(k, url=url)
        return torchvision.models.resnet18(weights=None).state_dict()
    monkeypatch.setattr(weights_api, "load_state_dict_from_url", cached_weights)
    build_model("resnet18", pretrained=True)
    assert asked["weights_only"] is True and asked["check_hash"] is True and "resnet18" in asked["url"]
    # a local ImageNet-format file is accepted instead, its 1000-class head replaced
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, tmp_path / "r18.pth")
    model = build_model("resnet18", weights_file=tmp_path / "r18.pth")
    assert torch.equal(model.backbone.conv1.weight, state["conv1.weight"])
    assert model.backbone.fc.out_features == 1
    # a file that is no weights dict: one line naming --weights, not an UnpicklingError or AttributeError
    (tmp_path / "text.pth").write_text("not weights")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    for bad, words in (("text.pth", "is not a torch weights file"), ("tensor.pth", "holds a Tensor")):
        with pytest.raises(RuntimeError, match=f"--weights .*{bad}.*{words}"):
            build_model("resnet18", weights_file=tmp_path / bad)


# ---------------------------------------------------------------------------------------------- metrics

def test_regression_metrics_golden_values():
    m = functions.regression_metrics([20, 25, 40, 31], [22, 25, 30, 36])
    assert m["mae"] == pytest.approx((2 + 0 + 10 + 5) / 4)
    assert m["rmse"] == pytest.approx(math.sqrt((4 + 0 + 100 + 25) / 4))
    assert m["cs5"] == pytest.approx(3 / 4)  # |error| <= 5 counts
    assert m["mae_per_bin"] == {"20-29": {"mae": 1.0, "n": 2}, "30-39": {"mae": 7.5, "n": 2}}


def test_augmentation_off_is_the_identity_and_training_augmentation_is_seeded():
    # (that evaluation never augments: test_tta.py, predict_loader against a direct forward pass)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    off = custom_dataset.augment_batch(x, custom_dataset.AugmentConfig.off())
    assert torch.equal(off, x)
    cfg = custom_dataset.AugmentConfig()
    a = custom_dataset.augment_batch(x, cfg, torch.Generator().manual_seed(3))
    b = custom_dataset.augment_batch(x, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, x)


@pytest.mark.parametrize("preset", sorted(train.AUGMENTATIONS))
def test_augmentation_runs_where_the_batch_lies(preset):
    # train_one_epoch augments on the model's device (a GPU machine's CPU cores were its bottleneck); the "meta"
    # device stands in for a GPU: any CPU tensor mixed into its batch raises, as on CUDA
    import dataclasses
    cfg = dataclasses.replace(train.AUGMENTATIONS[preset], erase=0.5, degrade=0.5, grain=0.5, grayscale=0.5)
    out = custom_dataset.augment_batch(torch.zeros(6, 3, 16, 16, device="meta"), cfg, torch.Generator().manual_seed(0))
    assert out.device.type == "meta" and out.shape == (6, 3, 16, 16)


def test_scan_degradation_blurs_and_grains_only_the_drawn_share():
    torch.manual_seed(0)
    board = ((torch.arange(64).view(1, -1) + torch.arange(64).view(-1, 1)) % 2 * 200.0 + 20).expand(3, 64, 64)
    x = board.expand(200, 3, 64, 64).contiguous()
    only = custom_dataset.AugmentConfig(False, 0.0, 0.0, 0.0, 0.0, 0.0, degrade=0.3)
    out = custom_dataset.augment_batch(x, only, torch.Generator().manual_seed(1))
    changed = (out - x).abs().flatten(1).amax(1) > 0
    assert 0.15 < changed.float().mean() < 0.45  # about 30 % drawn
    # a one-pixel checkerboard does not survive resampling: neighbours move towards the mean
    detail = lambda t: (t[..., 1:] - t[..., :-1]).abs().mean(dim=(1, 2, 3))
    assert (detail(out[changed]) < 0.5 * detail(x[:1])).all()
    assert torch.equal(out[~changed], x[~changed]) and out.min() >= 0 and out.max() <= 255
    # 0 draws nothing: the presets without it keep their random stream
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    custom_dataset.augment_batch(x[:4], custom_dataset.AugmentConfig(), g1)
    custom_dataset.augment_batch(x[:4], custom_dataset.AugmentConfig(degrade=0.0), g2)
    assert torch.equal(g1.get_state(), g2.get_state())


# ---------------------------------------------------------------------------------------------- checkpoints

def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoints.save_checkpoint(path, {"model_state": {"w": torch.ones(2)}, "epoch": 1})

    def crash_midway(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt
    monkeypatch.setattr(checkpoints.torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_checkpoint(path, {"model_state": {"w": torch.zeros(2)}, "epoch": 2})
    monkeypatch.undo()
    assert checkpoints.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_load_checkpoint_rejects_other_files(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(custom_dataset.DataError, match="not a readable checkpoint"):
        checkpoints.load_checkpoint(bad)
    # a later format's checkpoint: refused with advice, as export metadata is, not read as this format
    newer = {"version": checkpoints.FORMAT_VERSION + 1, "model_state": {}}
    checkpoints.save_checkpoint(tmp_path / "newer.pt", newer)
    with pytest.raises(custom_dataset.DataError, match="checkpoint format 2, newer than this code reads"):
        checkpoints.load_checkpoint(tmp_path / "newer.pt")
    checkpoints.save_checkpoint(tmp_path / "old.pt", {"model_state": {}})  # from before versions: format 1
    assert checkpoints.load_checkpoint(tmp_path / "old.pt") == {"model_state": {}}


# ---------------------------------------------------------------------------------------------- training runs

@pytest.fixture(scope="session")
def full_run(splits, tmp_path_factory):
    out = tmp_path_factory.mktemp("run_full")
    summary = train.main(train_args(splits, out, "--epochs", "3"))
    return out, summary


def test_training_writes_every_output(full_run, splits):
    out, summary = full_run
    for name in ("best.pt", "last.pt", "learning_curves.png", "metrics.json", "pred_vs_true.png",
                 "model.jit", "model.onnx", "history.json"):
        assert (out / name).stat().st_size > 0, name
    assert list(out.glob("events.out.tfevents.*"))  # TensorBoard names the run after its folder
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"mae", "rmse", "cs5", "mae_per_bin", "n", "baseline", "beats_baseline"} <= set(metrics)
    test_ages = [float(r["age"]) for r in custom_dataset.read_split(splits / "test.csv")]
    assert metrics["n"] == len(test_ages)
    median = float(np.median([float(r["age"]) for r in custom_dataset.read_split(splits / "train.csv")]))
    assert metrics["baseline"]["age"] == median
    assert metrics["baseline"]["mae"] == pytest.approx(np.mean(np.abs(np.array(test_ages) - median)))
    assert metrics["beats_baseline"] == (metrics["mae"] < metrics["baseline"]["mae"])
    assert set(metrics["groups"]) == {"decade"}  # the demo faces have no gender/race columns
    assert metrics["interval"]["level"] == 0.9 and 0 <= metrics["interval"]["coverage"] <= 1
    assert sum(d["n"] for d in metrics["interval"]["coverage_per_decade"].values()) == metrics["n"]
    assert sum(g["n"] for g in metrics["groups"]["decade"].values()) == metrics["n"]
    assert (out / "groups.png").stat().st_size > 0
    # --age-map auto: these tiny splits hold too few validation faces to judge a map, and it says so
    judged = metrics["age_map"]
    assert judged["keep"] is False and judged["n"] < 100 and "too few validation faces" in judged["reason"]
    assert ("age_map" in checkpoints.load_checkpoint(out / "best.pt")) == judged["keep"]
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["image_size"] == 64 and config["torch"] == torch.__version__
    assert config["splits"]["train.csv"] == str((splits / "train.csv").resolve())
    assert set(config["split_sha256"]) == {"train.csv", "val.csv", "test.csv"}
    ckpt = checkpoints.load_checkpoint(out / "best.pt")
    assert ckpt["model_name"] == "simplecnn" and ckpt["config"]["image_size"] == 64
    assert ckpt["preprocess"]["denoise"] is False and len(ckpt["preprocess"]["mean"]) == 3
    history = json.loads((out / "history.json").read_text())
    assert ckpt["best_val_mae"] == pytest.approx(min(h["val_mae"] for h in history))
    # each epoch's lr is its first step's: a warm-up epoch starts low, the last cosine epoch is not at 0
    last = checkpoints.load_checkpoint(out / "last.pt")
    args, steps = train_args(splits, out, "--epochs", "3"), last["scheduler_state"]["last_epoch"] // 3
    factor = train.lr_lambda(3 * steps, int(args.warmup_epochs * steps), args.schedule)
    assert [h["lr"] for h in history] == pytest.approx([args.lr * factor(e * steps) for e in range(3)])
    assert history[0]["lr"] < history[1]["lr"] and history[-1]["lr"] > 0


def test_closing_lines_warn_when_the_median_baseline_wins(tmp_path):
    args = train.get_args_parser().parse_args(["--splits", "S", "--out-dir", str(tmp_path)])
    best = {"epoch": 1, "best_val_mae": 7.7}
    summary = {"baseline": {"age": 30.0, "val_mae": 7.4}, "test": {"mae": 7.65, "baseline": {"mae": 7.52}}}
    lines = train.closing_lines(args, tmp_path, best, summary)
    assert "test MAE 7.52; this model 7.65" in lines[0]
    assert any(line.startswith("warning: the model does not beat the median baseline") for line in lines)
    assert lines[-1] == f"next: python inference.py --model {tmp_path / 'model.onnx'} --image PHOTO.jpg"
    summary["test"]["mae"] = 5.0
    assert not any(line.startswith("warning") for line in train.closing_lines(args, tmp_path, best, summary))
    del summary["test"]  # --no-test: the validation split is compared instead
    assert "val MAE 7.40; this model 7.70" in train.closing_lines(args, tmp_path, best, summary)[0]


def test_exports_match_eager_model_and_carry_preprocessing(full_run, splits):
    import onnxruntime as ort
    out, _ = full_run
    ckpt = checkpoints.load_checkpoint(out / "best.pt")
    cfg = custom_dataset.PreprocessConfig.from_dict(ckpt["preprocess"])
    model, _ = checkpoints.model_from_checkpoint(ckpt)
    wrapper = ExportedAgeModel(model.eval(), cfg.mean, cfg.std)
    val = custom_dataset.load_split_dataset(splits / "val.csv", cfg)
    x = val.batch(range(5))[0].float()
    module, metadata = checkpoints.load_torchscript(out / "model.jit")
    assert metadata["preprocess"] == cfg.to_dict()
    assert metadata["preprocess_version"] == ckpt["preprocess_version"] == custom_dataset.PREPROCESS_VERSION
    # the interval calibration was fitted on the validation split: one sorted error per val face
    assert metadata["interval"] == ckpt["interval"]
    assert metadata["age_map"] == ckpt.get("age_map")
    assert sum(len(band["errors"]) for band in ckpt["interval"]["bands"]) == len(val)
    with torch.no_grad():
        eager = wrapper(x).numpy()
        assert np.abs(module(x).numpy() - eager).max() <= 1e-4
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(onnx_out - eager).max() <= 1e-4


def test_the_export_carries_the_dark_floor_of_its_own_training_faces(full_run, splits):
    """train.py measures the exposure floor of the faces it trains on (the 1st percentile of their exposure_luma,
    as inference.DEFAULT_DARK_FLOOR is UTKFace's) and the export carries it: inference.py brightens a face up to
    this model's floor, not UTKFace's."""
    import inference
    from custom_dataset import DARK_FLOOR_PERCENTILE, exposure_luma, load_rgb, preprocess_rgb
    out, _ = full_run
    ckpt = checkpoints.load_checkpoint(out / "best.pt")
    cfg = custom_dataset.PreprocessConfig.from_dict(ckpt["preprocess"])
    faces = np.stack([preprocess_rgb(load_rgb(r["path"]), cfg) for r in custom_dataset.read_split(splits / "train.csv")])
    expected = round(float(np.percentile([exposure_luma(f) for f in faces], DARK_FLOOR_PERCENTILE)), 1)
    assert ckpt["dark_floor"] == custom_dataset.dark_floor_of(faces, batch=7) == expected
    assert checkpoints.read_export(out / "model.onnx")[1]["dark_floor"] == expected
    assert abs(expected - inference.DEFAULT_DARK_FLOOR) > 5  # the generated faces are not UTKFace's: a test of this
    assert inference.AgeEstimator(out / "model.onnx", whole_image=True).dark_floor == expected


def best_of(full_run, splits):
    """(checkpoint, preprocessing, model, validation set) of full_run's best epoch."""
    ckpt = checkpoints.load_checkpoint(full_run[0] / "best.pt")
    cfg = custom_dataset.PreprocessConfig.from_dict(ckpt["preprocess"])
    return ckpt, cfg, checkpoints.model_from_checkpoint(ckpt)[0], custom_dataset.load_split_dataset(splits / "val.csv", cfg)


def test_exports_that_fail_the_parity_check_never_replace_the_last_good_pair(full_run, splits, tmp_path,
                                                                              monkeypatch):
    ckpt, cfg, model, val = best_of(full_run, splits)
    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.jit", "model.onnx"):
        (run / name).write_bytes(b"the last good export")
    (run / ".model.999999999.tmp.onnx").write_bytes(b"a killed export's")

    def differs(*args, **kwargs):
        raise RuntimeError("export differs from the eager model by more than 0.0001: {'onnx': 0.5}")
    monkeypatch.setattr(checkpoints, "check_export_parity", differs)
    with pytest.raises(RuntimeError, match="export differs"):
        checkpoints.export_best(model, cfg, ckpt, run, val)
    assert sorted(p.name for p in run.iterdir()) == ["model.jit", "model.onnx"]
    assert all((run / name).read_bytes() == b"the last good export" for name in ("model.jit", "model.onnx"))
    monkeypatch.undo()
    checkpoints.export_best(model, cfg, ckpt, run, val)
    assert sorted(p.name for p in run.iterdir()) == ["model.jit", "model.onnx"]
    assert checkpoints.read_export(run / "model.onnx")[1]["weights"] == checkpoints.weights_digest(ckpt["model_state"])


def test_an_export_from_a_one_image_validation_split_takes_any_batch(full_run, splits, tmp_path):
    """The export's example batch is the first 8 validation faces. torch.export specialises a dimension of size 1
    (export_mobile repeats its example for that); the ONNX exporter keeps the batch dynamic from one face, as this
    checks: an ONNX taking one face at a time would fail every flip-averaged (batch-2) prediction."""
    import onnxruntime
    ckpt, cfg, model, val = best_of(full_run, splits)
    run = tmp_path / "run"
    run.mkdir()
    checkpoints.export_best(model, cfg, ckpt, run, val.subset(np.array([0])))
    session = onnxruntime.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    three = val.batch(range(3))[0].float().numpy()
    assert session.run(None, {session.get_inputs()[0].name: three})[0].reshape(-1).shape == (3,)


def test_preprocessing_cache_is_reused_and_invalidated(splits, tmp_path):
    cfg = custom_dataset.PreprocessConfig(image_size=32, denoise=False)
    paths = [r["path"] for r in custom_dataset.read_split(splits / "val.csv")][:6]
    images, ok, _ = custom_dataset.build_cache(paths, cfg, tmp_path, workers=1, progress=False)
    assert ok.all() and images.shape == (6, 32, 32, 3)
    assert np.array_equal(images[2], custom_dataset.preprocess_file(paths[2], cfg))
    files_before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in tmp_path.iterdir()}

    def no_preprocessing(job):
        raise AssertionError(f"{job[0]} preprocessed again")
    with pytest.MonkeyPatch.context() as patch:  # same key: read, not rebuilt (nor even rewritten)
        patch.setattr(custom_dataset, "_preprocess_or_none", no_preprocessing)
        again, ok_again, _ = custom_dataset.build_cache(paths, cfg, tmp_path, workers=1, progress=False)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in tmp_path.iterdir()} == files_before
    assert ok_again.all() and np.array_equal(again, images)
    custom_dataset.build_cache(paths, custom_dataset.PreprocessConfig(image_size=32, denoise=False, deblur=False),
                               tmp_path, workers=1, progress=False)
    assert len(list(tmp_path.glob("*.npy"))) == 2  # other settings: another key, another array


def test_a_cache_of_changed_files_is_rebuilt_and_the_old_one_removed(splits, tmp_path, capsys):
    import os
    import shutil
    cfg = custom_dataset.PreprocessConfig(image_size=32, denoise=False)
    (tmp_path / "images").mkdir()
    paths = [shutil.copy(r["path"], tmp_path / "images") for r in custom_dataset.read_split(splits / "val.csv")[:6]]
    cache = tmp_path / "cache"
    custom_dataset.build_cache(paths, cfg, cache, workers=1, progress=False, name="val")
    custom_dataset.build_cache(paths[:5], cfg, cache, workers=1, progress=False, name="val")  # another file list
    before = {p.name for p in cache.glob("*.npy")}
    assert len(before) == 2 and "changed" not in capsys.readouterr().out
    os.utime(paths[0], ns=(0, 0))  # the files changed: same list, same settings, a new key
    custom_dataset.build_cache(paths, cfg, cache, workers=1, progress=False, name="val")
    assert "changed since they were cached" in capsys.readouterr().out
    after = {p.name for p in cache.glob("*.npy")}
    assert len(after) == 2 and len(after & before) == 1  # the 6-file cache replaced, the 5-file one kept
    assert len(list(cache.glob("*.json"))) == 2


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted_run(full_run, splits, tmp_path):
    reference = json.loads((full_run[0] / "history.json").read_text())
    out = tmp_path / "killed"
    cmd = ["train.py", "--splits", str(splits), "--out-dir", str(out), *FAST, "--epochs", "3", "--no-export",
           "--no-test"]
    proc = subprocess.Popen([sys.executable, *cmd], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "last.pt").exists():
            break
        time.sleep(0.05)
    time.sleep(0.05)  # inside epoch 2 (an epoch takes about 0.25 s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = checkpoints.load_checkpoint(out / "last.pt")["epoch"]
    assert 1 <= killed_at < 3  # killed part-way: a finished run "resumed" would only be compared with itself
    done = run_script(*cmd, "--resume")
    assert done.returncode == 0, done.stderr
    assert f"at epoch {killed_at} " in done.stdout and done.stdout.count("resumed from") == 1
    assert checkpoints.load_checkpoint(out / "last.pt")["epoch"] == 3
    resumed = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in resumed] == [1, 2, 3]
    for a, b in zip(reference, resumed):
        assert b["val_mae"] == pytest.approx(a["val_mae"], abs=1e-4)
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-4)
    # two sessions, each epoch on the clock with its validation and each session's set-up on its first epoch
    assert len({h["session"] for h in resumed}) == 2 and resumed[0]["session"] != resumed[killed_at]["session"]
    assert [("setup_seconds" in h) for h in resumed] == [k in (0, killed_at) for k in range(3)]
    assert all(h["wall_seconds"] >= h["epoch_seconds"] for h in resumed)


@pytest.mark.slow
def test_kill_during_checkpoint_save_keeps_previous_checkpoint(splits, tmp_path):
    out = tmp_path / "killed_saving"
    script = f"""
import os, signal, sys
sys.argv = ["train.py", "--splits", {str(splits)!r}, "--out-dir", {str(out)!r}, *{FAST!r}, "--epochs", "3",
            "--no-export", "--no-test", "--no-tensorboard"]
import checkpoints, cli, train
real_save, calls = checkpoints.torch.save, []
def dying_save(obj, f):
    calls.append(1)
    if len(calls) == 3:  # epoch 2: best.pt is saved first, last.pt second; die inside a write
        f.write(b"partial")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    real_save(obj, f)
checkpoints.torch.save = dying_save
cli.run_cli(train.main, train.get_args_parser())
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert checkpoints.load_checkpoint(out / "last.pt")["epoch"] == 1
    assert checkpoints.load_checkpoint(out / "best.pt")["epoch"] == 1
    done = run_script("train.py", "--splits", str(splits), "--out-dir", str(out), *FAST, "--epochs", "3",
                      "--no-export", "--no-test", "--no-tensorboard", "--resume")
    assert done.returncode == 0, done.stderr
    assert checkpoints.load_checkpoint(out / "last.pt")["epoch"] == 3
    assert not list(out.glob(".*.tmp"))  # the dead write's temporary file is cleared on restart


def test_nan_loss_stops_with_epoch_and_batch_and_keeps_checkpoint(splits, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    real_loss = functions.age_loss
    state = {"epoch": 0}
    real_train = functions.train_one_epoch

    def tracking_train(*a, **k):
        state["epoch"] = k["epoch"]
        return real_train(*a, **k)

    def poisoned_loss(model, outputs, target, kind="l1", **options):
        loss, pred = real_loss(model, outputs, target, kind, **options)
        return (loss * float("nan"), pred) if state["epoch"] == 2 else (loss, pred)
    monkeypatch.setattr(functions, "age_loss", poisoned_loss)
    monkeypatch.setattr(train, "train_one_epoch", tracking_train)
    with pytest.raises(functions.NonFiniteLossError, match="epoch 2, batch 0.*keeps epoch 1, the last good one"):
        train.main(train_args(splits, out, "--epochs", "3", "--no-export", "--no-tensorboard"))
    assert checkpoints.load_checkpoint(out / "last.pt")["epoch"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing_splits", "wrong_columns", "unknown_model", "bad_resume_file",
                                  "missing_teacher", "missing_weights"])
def test_train_cli_errors_are_one_line_exit_2(case, splits, tmp_path):
    args = ["train.py", "--splits", str(splits), "--out-dir", str(tmp_path / "run"), *FAST, "--epochs", "1"]
    words = {"missing_splits": ["splits folder not found"], "unknown_model": ["unknown model 'vgg99'"],
             "missing_teacher": ["--teacher", "gone.pt not found"],
             "missing_weights": ["--weights", "gone.pth not found"]}.get(case, [])
    if case == "missing_splits":
        args[2] = str(tmp_path / "nowhere")
    elif case == "missing_teacher":
        args += ["--teacher", str(tmp_path / "gone.pt")]
    elif case == "missing_weights":
        args += ["--model", "resnet18", "--weights", str(tmp_path / "gone.pth")]
    elif case == "wrong_columns":
        bad = tmp_path / "bad_splits"
        bad.mkdir()
        for name in ("train", "val", "test"):
            (bad / f"{name}.csv").write_text("file,label\nx.jpg,3\n")
        args[2] = str(bad)
    elif case == "unknown_model":
        args += ["--model", "vgg99"]
    else:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "last.pt").write_text("garbage")
        args += ["--resume"]
    assert_one_line_error(run_script(*args), *words)


@pytest.mark.slow
def test_resume_of_a_finished_run_completes_its_outputs(splits, tmp_path):
    """Killed after the last epoch's last.pt but before history.json: --resume writes it."""
    out = tmp_path / "finished"
    cmd = ["train.py", "--splits", str(splits), "--out-dir", str(out), *FAST, "--epochs", "1", "--no-export"]
    assert run_script(*cmd).returncode == 0
    (out / "history.json").unlink()
    (out / "metrics.json").unlink()
    measured = checkpoints.load_checkpoint(out / "best.pt")["dark_floor"]
    for name in ("best.pt", "last.pt"):  # as a run saved before train.py measured its faces' dark floor
        old = checkpoints.load_checkpoint(out / name)
        del old["dark_floor"]
        checkpoints.save_checkpoint(out / name, old)
    done = run_script(*cmd, "--resume", "--data-description", "my own faces")
    assert done.returncode == 0, done.stderr
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1]
    assert json.loads((out / "metrics.json").read_text())["best_epoch"] == 1
    # a description given to the session that exports is the one the exports carry
    best = checkpoints.load_checkpoint(out / "best.pt")
    metadata = checkpoints.export_metadata(checkpoints.model_from_checkpoint(best)[1], best)
    assert metadata["data"] == "my own faces"
    assert metadata["dark_floor"] == measured  # measured again for the best epoch saved without it


@pytest.mark.slow
def test_resume_refuses_changed_settings_and_a_changed_split(splits, tmp_path):
    import shutil
    own = tmp_path / "splits"
    shutil.copytree(splits, own)
    out = tmp_path / "run"
    cmd = ["train.py", "--splits", str(own), "--out-dir", str(out), *FAST, "--epochs", "2", "--no-export", "--no-test"]
    run_in_process = lambda argv: train.main(train.get_args_parser().parse_args(argv[1:]))  # no start-up per run
    run_in_process(cmd)
    changed = run_script(*cmd, "--resume", "--lr", "0.05", "--augment", "none", "--no-tta-flip", "--threads", "1")
    assert changed.returncode == 2
    line = changed.stderr.strip()
    assert "--augment was 'default', now 'none'" in line and "--lr was 0.001, now 0.05" in line
    assert "--tta-flip was True, now False" in line and "--threads" not in line and len(line.splitlines()) == 1
    run_in_process([a if a != str(own) else str(own) + "/" for a in cmd] + ["--resume"])  # the same folder
    # bf16 where --amp pays: last.pt says float32, and a resumed run in bf16 would equal no uninterrupted one
    last = checkpoints.load_checkpoint(out / "last.pt")
    assert last["bf16"] is False
    checkpoints.save_checkpoint(out / "last.pt", {**last, "epoch": 1})  # killed before its end (a finished run
    # only rewrites its outputs, in whatever precision)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "amp_in_effect", lambda args, device: True)
        with pytest.raises(custom_dataset.DataError, match="trained in float32 and this run would go on in bf16"):
            run_in_process(cmd + ["--resume", "--amp"])
    rows = (own / "val.csv").read_text().splitlines()
    (own / "val.csv").write_text("\n".join(rows[:-1]) + "\n")  # eda.py re-run: another split
    with pytest.raises(custom_dataset.DataError, match="changed since"):
        run_in_process(cmd + ["--resume"])


@pytest.mark.slow
def test_a_kept_age_map_is_what_the_test_figures_and_the_exports_report(splits, tmp_path, monkeypatch):
    # a map that answers 33 for every age stands in for a kept isotonic map (real ones need more faces)
    constant = {"method": "test map", "x": [0.0, 200.0], "y": [33.0, 33.0]}
    real = train.calibrate_ages
    monkeypatch.setattr(train, "calibrate_ages", lambda pred, true, age_map: (constant, *real(pred, true, "off")[1:]))
    train.main(train_args(splits, tmp_path, "--epochs", "1", "--no-tensorboard"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    test_ages = np.array([float(r["age"]) for r in custom_dataset.read_split(splits / "test.csv")])
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(33.0 - test_ages)), abs=1e-4)
    _, metadata = checkpoints.read_export(tmp_path / "model.onnx")
    assert metadata["age_map"] == constant == checkpoints.load_checkpoint(tmp_path / "best.pt")["age_map"]


def test_weight_average_golden_values():
    net = torch.nn.Linear(2, 1)
    ema = train.weight_average(net, 0.9, None)
    ema.update_parameters(net)  # the first update copies the weights
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight += 1.0
    ema.update_parameters(net)
    # bias-corrected: the second update moves it by 0.1 / (1 - 0.9^2) = 10/19 of the way
    assert torch.allclose(ema.module.weight, start + 10 / 19)
    assert train.weight_average(net, 0.0, None) is None


@pytest.mark.slow
def test_an_ema_run_keeps_the_averaged_weights_and_resumes_exactly(splits, tmp_path, monkeypatch):
    args = ["--epochs", "2", "--ema", "0.9", "--no-tensorboard", "--no-test", "--age-map", "off"]
    train.main(train_args(splits, tmp_path / "straight", *args))
    straight = checkpoints.load_checkpoint(tmp_path / "straight" / "last.pt")
    # the averaged weights are the ones evaluated, kept and exported; the trained ones are kept for --resume
    assert not torch.equal(straight["model_state"]["backbone.regressor.5.weight"],
                           straight["training_state"]["backbone.regressor.5.weight"])
    best = checkpoints.load_checkpoint(tmp_path / "straight" / "best.pt")
    forward, _ = checkpoints.read_export(tmp_path / "straight" / "model.onnx")
    model, cfg = checkpoints.model_from_checkpoint(best)
    val = custom_dataset.load_split_dataset(splits / "val.csv", cfg)
    x = val.batch(range(4))[0].float()
    with torch.no_grad():
        eager = ExportedAgeModel(model, cfg.mean, cfg.std)(x).numpy()
    assert np.abs(forward(x.numpy()) - eager).max() < 1e-3

    save_epoch = train.save_epoch

    def stop_after_epoch_1(out, state, improved, history):
        save_epoch(out, state, improved, history)
        if state["epoch"] == 1:
            raise KeyboardInterrupt
    monkeypatch.setattr(train, "save_epoch", stop_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train.main(train_args(splits, tmp_path / "resumed", *args))
    monkeypatch.setattr(train, "save_epoch", save_epoch)
    train.main(train_args(splits, tmp_path / "resumed", *args, "--resume"))
    resumed = checkpoints.load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert resumed["ema_averaged"] == straight["ema_averaged"] > 1
    for state in ("model_state", "training_state"):  # the average, and the weights being trained
        for key, value in straight[state].items():
            assert torch.allclose(resumed[state][key].float(), value.float(), atol=1e-5), (state, key)


@pytest.mark.slow
@pytest.mark.parametrize("native_bf16", [True, False])
def test_amp_autocasts_the_training_step_only_where_bf16_is_native(splits, tmp_path, monkeypatch, capsys,
                                                                   native_bf16):
    import model as models
    monkeypatch.setattr(models, "bf16_autocast_pays", lambda device_type: native_bf16)
    dtypes = []  # the dtype of the first layer's output in each autocast forward

    def record(module, inputs, output):
        dtypes.append(output.dtype)
    original = models.AutocastModel.forward

    def forward(self, x):
        hook = self.model.backbone.features[0].register_forward_hook(record)
        try:
            return original(self, x)
        finally:
            hook.remove()
    monkeypatch.setattr(models.AutocastModel, "forward", forward)
    train.main(train_args(splits, tmp_path, "--epochs", "1", "--amp", "--no-export", "--no-tensorboard"))
    said = capsys.readouterr().out
    assert ("--amp ignored" in said) is not native_bf16
    assert (dtypes and set(dtypes) == {torch.bfloat16}) if native_bf16 else not dtypes
    # the checkpoint stays float32 either way: evaluation and exports never see bf16
    ckpt = checkpoints.load_checkpoint(tmp_path / "best.pt")
    assert all(v.dtype == torch.float32 for v in ckpt["model_state"].values() if v.is_floating_point())


def test_a_lock_being_written_counts_as_held_and_a_run_never_removes_another_runs_lock(tmp_path):
    import os
    (tmp_path / ".lock").write_text("")  # created by another run an instant ago, its PID not yet in it
    with pytest.raises(custom_dataset.DataError, match="in use by another"):
        with functions.folder_lock(tmp_path, "train.py"):
            pass
    (tmp_path / ".lock").unlink()
    with functions.folder_lock(tmp_path, "train.py"):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
        (tmp_path / ".lock").write_text("999999999\n")  # taken over meanwhile (ours thought gone)
    assert (tmp_path / ".lock").read_text() == "999999999\n"  # left to its owner


def test_a_lock_taken_over_from_a_dead_run_is_held_against_a_second_taker(tmp_path):
    """Two runs that both read a dead run's PID: the first takes the lock over, and the second, which read the
    same dead PID an instant before, must not take it again (it once removed the first one's fresh lock)."""
    pytest.importorskip("fcntl", reason="the flock this relies on; Windows has none")
    (tmp_path / ".lock").write_text("999999999\n")
    with functions.folder_lock(tmp_path, "train.py"):
        (tmp_path / ".lock").write_text("999999999\n")  # what the second taker reads: the dead PID still
        with pytest.raises(custom_dataset.DataError, match="in use by another train.py"):
            with functions.folder_lock(tmp_path, "train.py"):
                pass
    with functions.folder_lock(tmp_path, "train.py"):  # released: free again
        pass


def test_a_file_system_without_flock_keeps_the_pid_rule_instead_of_stopping_every_run(tmp_path, monkeypatch):
    import errno
    import os
    import types

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")  # NFS without lockd
    monkeypatch.setattr(functions, "fcntl", types.SimpleNamespace(flock=no_locks, LOCK_EX=2, LOCK_NB=4))
    with functions.folder_lock(tmp_path, "train.py"):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    assert not (tmp_path / ".lock").exists()
    (tmp_path / ".lock").write_text("999999999\n")  # a dead run's: taken over by the PID rule
    with functions.folder_lock(tmp_path, "train.py"):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())


def test_a_last_training_batch_of_one_image_is_left_out_and_the_schedule_counts_it_so():
    import argparse
    images = [(torch.zeros(3, 4, 4), torch.tensor(30.0)) for _ in range(66)]
    ctx = argparse.Namespace(active=False)
    for n, batches in ((65, [64]), (66, [64, 2]), (64, [64])):
        args = argparse.Namespace(seed=0, balance=False, batch_size=64)
        loader, steps = train.make_train_loader(args, images[:n], ctx, False)
        assert [len(b[0]) for b in loader(1)] == batches and steps == len(batches)


def test_split_checks_read_a_spreadsheets_csv_as_training_does(tmp_path):
    data = tmp_path / "data"
    for age in ("20", "21"):
        (data / age).mkdir(parents=True)
    splits = tmp_path / "splits"
    splits.mkdir()
    rows = f"Path,Age\n{data / '20' / 'img001.jpg'},20\n{data / '21' / 'img001.jpg'},21\n"
    (splits / "train.csv").write_text("\ufeff" + rows, encoding="utf-8")  # Excel: a byte-order mark, Path/Age
    assert train.data_folders(splits) >= {data.resolve() / "20", data.resolve() / "21"}
    with pytest.raises(custom_dataset.DataError, match="holds the data set's images"):
        train.refuse_output_in_data(data / "20" / "run", splits)
    keys = train.split_hashes(splits / "train.csv")  # no hash column: one face per file, not per name
    assert len(set(keys.values())) == 2
    other = tmp_path / "other_set"  # another labelled data set than the split's: its next eda.py run reads it
    for age in ("30", "31"):
        (other / age).mkdir(parents=True)
        (other / age / "face.jpg").write_bytes(b"a photo")
    with pytest.raises(custom_dataset.DataError, match="labelled face data set"):
        train.refuse_output_in_data(other / "30" / "run", splits, "--cache-dir")
    for k, output in ((1, "last.pt"), (2, "best_params.json")):  # earlier runs and searches named by number
        (tmp_path / "runs" / str(k)).mkdir(parents=True)
        (tmp_path / "runs" / str(k) / output).write_bytes(b"")
        (tmp_path / "runs" / str(k) / "curves.png").write_bytes(b"a figure")
    train.refuse_output_in_data(tmp_path / "runs" / "3", splits)
    (tmp_path / "project" / "images").mkdir(parents=True)  # a labels CSV's folder: it reads only what it lists
    (tmp_path / "project" / "labels.csv").write_text("path,age\nimages/a.jpg,30\n")
    train.refuse_output_in_data(tmp_path / "project" / "runs" / "r1", splits)


def test_a_best_pt_ahead_of_last_pt_is_the_figure_a_resumed_run_must_beat(tmp_path):
    # killed between the two saves of epoch 4: best.pt holds epoch 4 (val 4.0), last.pt epoch 3
    checkpoints.save_checkpoint(tmp_path / "best.pt", {"model_state": {}, "epoch": 4, "best_val_mae": 4.0})
    assert train.orphan_best_val(tmp_path / "best.pt", start_epoch=4) == 4.0
    # best.pt of an epoch last.pt holds: last.pt's own best figure stands
    assert train.orphan_best_val(tmp_path / "best.pt", start_epoch=5) == float("inf")
    assert train.orphan_best_val(tmp_path / "none.pt", start_epoch=4) == float("inf")
    assert train.orphan_best_val(tmp_path / "best.pt", start_epoch=1) == float("inf")  # a fresh run


def test_a_resumed_run_keeps_the_best_pt_its_killed_session_wrote_before_last_pt(splits, tmp_path, monkeypatch):
    out, scripted, session = tmp_path / "run", [5.0, 3.0], {"resumed": False}  # val MAE of epochs 1 and 2
    real_evaluate, real_save = train.evaluate_sharded, train.save_epoch

    def scripted_evaluate(*args, **kwargs):
        metrics = real_evaluate(*args, **kwargs)
        return {**metrics, "mae": scripted.pop(0)} if scripted else metrics

    class Killed(Exception):
        pass

    def killed_between_the_saves(out_dir, checkpoint, improved, history):
        if checkpoint["epoch"] == 2 and not session["resumed"]:
            train.save_checkpoint(out_dir / "best.pt", checkpoint)  # best.pt written, last.pt still epoch 1
            raise Killed
        real_save(out_dir, checkpoint, improved, history)
    monkeypatch.setattr(train, "evaluate_sharded", scripted_evaluate)
    monkeypatch.setattr(train, "save_epoch", killed_between_the_saves)
    flags = ["--epochs", "2", "--no-export", "--no-test", "--no-tensorboard"]
    with pytest.raises(Killed):
        train.main(train_args(splits, out, *flags))
    session["resumed"], scripted[:] = True, [4.0]  # the re-run of epoch 2 lands worse than its first run
    train.main(train_args(splits, out, *flags, "--resume"))
    best = checkpoints.load_checkpoint(out / "best.pt")
    assert best["epoch"] == 2 and best["best_val_mae"] == 3.0  # not replaced by the worse re-run (4.0 < 5.0)
    assert checkpoints.load_checkpoint(out / "last.pt")["best_val_mae"] == 3.0


def test_a_missing_split_file_is_named_before_training(tmp_path):
    (splits := tmp_path / "splits").mkdir()
    for name in ("train.csv", "val.csv"):
        (splits / name).write_text("path,age\n")
    with pytest.raises(custom_dataset.DataError, match=r"test\.csv not found .*or pass --no-test"):
        train.check_settings(train_args(splits, tmp_path / "run"))
    train.check_settings(train_args(splits, tmp_path / "run", "--no-test"))  # a trial needs no test split
    (splits / "val.csv").unlink()
    with pytest.raises(custom_dataset.DataError, match=r"val\.csv not found"):
        train.check_settings(train_args(splits, tmp_path / "run", "--no-test"))


def test_a_split_replaced_while_training_is_not_tested(splits, tmp_path, monkeypatch):
    own = tmp_path / "splits"
    shutil.copytree(splits, own)
    real = train.save_epoch

    def eda_meanwhile(out, checkpoint, improved, history):  # eda.py run again into the same folder
        real(out, checkpoint, improved, history)
        rows = (own / "test.csv").read_text().splitlines()
        (own / "test.csv").write_text("\n".join(rows[:-1]) + "\n")
    monkeypatch.setattr(train, "save_epoch", eda_meanwhile)
    with pytest.raises(custom_dataset.DataError, match="changed while this run trained"):
        train.main(train_args(own, tmp_path / "run", "--epochs", "1", "--no-export"))
    assert (tmp_path / "run" / "best.pt").is_file() and not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_a_second_run_into_a_runs_folder_is_refused_unless_it_resumes_or_overwrites(splits, tmp_path, capsys):
    """Started afresh there, it replaced the earlier best.pt after one epoch and left the earlier exports and
    TensorBoard curves beside its own; --overwrite removes them first."""
    out = tmp_path / "run"
    train.main(train_args(splits, out, "--epochs", "1", "--no-test"))
    assert (out / "best.pt").is_file() and (out / "model.onnx").is_file() and list(out.glob("events.out.tfevents.*"))
    before = (out / "best.pt").read_bytes()
    with pytest.raises(custom_dataset.DataError, match="holds an earlier run .*--resume.*--overwrite"):
        train.main(train_args(splits, out, "--epochs", "1", "--seed", "7"))
    assert (out / "best.pt").read_bytes() == before
    with pytest.raises(custom_dataset.DataError, match="--overwrite must be left out with --resume"):
        train.main(train_args(splits, out, "--epochs", "1", "--resume", "--overwrite"))
    capsys.readouterr()
    (out / "model.pte").write_bytes(b"export_mobile.py's phone model of the earlier weights")
    train.main(train_args(splits, out, "--epochs", "1", "--seed", "7", "--overwrite", "--no-export",
                          "--no-tensorboard", "--no-test"))
    assert "--overwrite: removed the earlier run's" in capsys.readouterr().out
    assert not (out / "model.onnx").exists() and not list(out.glob("events.out.tfevents.*"))  # none left stale
    assert not (out / "model.pte").exists()
    assert checkpoints.load_checkpoint(out / "best.pt")["config"]["seed"] == 7


def test_a_runs_split_is_found_from_any_folder(splits, tmp_path, monkeypatch):
    # train.py keeps --splits as typed (relative); export_mobile.py run elsewhere lost the split's data description
    out = tmp_path / "run"
    monkeypatch.chdir(splits.parent)
    train.main(train_args(splits.name, out, "--epochs", "1", "--no-test", "--no-export"))
    best = checkpoints.load_checkpoint(out / "best.pt")
    assert best["config"]["splits"] == splits.name
    described = checkpoints.metadata_for(best, custom_dataset.PreprocessConfig(), out / "best.pt")["data"]
    monkeypatch.chdir(tmp_path)
    assert checkpoints.run_splits(best, out / "best.pt").resolve() == splits.resolve()
    assert described and checkpoints.metadata_for(best, custom_dataset.PreprocessConfig(), out / "best.pt")["data"] \
        == described
