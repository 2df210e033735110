"""train.py under torchrun: two CPU processes (gloo) on a tiny generated set.

One 2-process run (simplecnn_bn with --ema, so BatchNorm statistics, the live ones and the averaged ones, must
be kept in step across ranks) is shared by
the checks: one set of outputs, both shards trained, and the reported validation MAE equal to what one
process computes for the saved weights. A second launch is stopped after epoch 1 and resumed.
"""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import custom_dataset
import checkpoints
import functions
from conftest import REPO
from model import AutocastModel, bf16_autocast_pays, build_model

FAST = ["--image-size", "64", "--no-denoise", "--no-progress", "--threads", "1", "--batch-size", "16",
        "--model", "simplecnn_bn", "--dist-backend", "gloo", "--lr", "0.01"]
# --lr 0.01 makes the model depend on its BatchNorm statistics enough that ranks evaluating with their own
# (unsynchronised) statistics would move the reported val MAE by ~2e-2, far above the 1e-4 checked below
EPOCHS = "3"
# the run is bf16 and keeps an average of its weights: the EMA's BatchNorm buffers must be rank 0's too
EXTRA = ["--amp", "--ema", "0.9"]
SLOW_FIXTURES = {"ddp_run"}  # a 2-process training run: the tests that use it are marked slow (conftest)


def torchrun_cmd(splits, out, cache, *extra):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py",
            "--splits", str(splits), "--out-dir", str(out), "--cache-dir", str(cache), *FAST, "--epochs", EPOCHS,
            *extra]


def run_env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def ddp_splits(splits):
    """The training tests' split (conftest): the runs here pass a --cache-dir of their own."""
    return splits


@pytest.fixture(scope="module")
def ddp_run(ddp_splits, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp_run")
    out, cache = root / "run", root / "cache"
    proc = subprocess.run(torchrun_cmd(ddp_splits, out, cache, *EXTRA), cwd=REPO, capture_output=True, text=True,
                          timeout=150, env=run_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, cache, proc


def test_shards_cover_every_index_once():
    for n in (0, 1, 7, 16):
        shards = [functions.shard_indices(n, r, 3) for r in range(3)]
        assert sorted(i for s in shards for i in s) == list(range(n))


def test_autocast_wrapper_keeps_the_model_interface():
    model = build_model("simplecnn", image_size=32, min_age=20, max_age=50)
    wrapped = AutocastModel(model, device_type="cpu")  # bf16 on CPU only to test the wrapper here
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([20.0, 30.0, 40.0, 50.0])
    outputs = wrapped(x)
    assert outputs.dtype == torch.float32 and wrapped.head == "regression"
    loss, _ = functions.age_loss(wrapped, outputs, y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert list(wrapped.state_dict()) == ["model." + k for k in model.state_dict()]


def test_two_process_run_writes_one_set_of_outputs(ddp_run, ddp_splits):
    out, cache, proc = ddp_run
    for name in ("best.pt", "last.pt", "learning_curves.png", "metrics.json", "pred_vs_true.png",
                 "model.jit", "model.onnx", "history.json"):
        assert (out / name).stat().st_size > 0, name
    assert len(list(out.glob("events.out.tfevents.*"))) == 1  # rank 0's writer only
    assert not list(out.glob(".*.tmp"))
    assert proc.stdout.count("epoch   1/3") == 1 and proc.stdout.count("exported ") == 1  # only rank 0 speaks
    assert "2 processes (gloo), global batch 32" in proc.stdout
    # a CPU without native bf16 trains in float32 and says so once; one with it trains under autocast
    assert proc.stdout.count("--amp ignored") == (0 if bf16_autocast_pays("cpu") else 1)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == len(custom_dataset.read_split(ddp_splits / "test.csv"))
    for split in ("train", "val", "test"):  # built once, by rank 0
        assert len(list(cache.glob(f"{split}_*.npy"))) == 1, split
    assert not list(cache.glob("*.tmp"))
    # the checkpoint is the bare model's: it loads without DDP
    ckpt = checkpoints.load_checkpoint(out / "last.pt")
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 3
    assert not any(k.startswith("module.") for k in ckpt["model_state"])
    model, _ = checkpoints.model_from_checkpoint(ckpt)
    assert ckpt["model_name"] == "simplecnn_bn"
    assert all(torch.equal(v, ckpt["model_state"][k]) for k, v in model.state_dict().items())


def test_two_process_training_uses_both_shards(ddp_run, ddp_splits):
    out, _, _ = ddp_run
    n_train = len(custom_dataset.read_split(ddp_splits / "train.csv"))
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    per_rank = math.ceil(n_train / 2)  # DistributedSampler pads the odd one out with one repeat
    for h in history:
        assert h["train_images_per_rank"] == [per_rank, per_rank]
        assert h["train_images"] == 2 * per_rank and h["train_images"] - n_train in (0, 1)


def test_each_rank_reads_its_own_share_of_one_permutation():
    """What the run above cannot see from its counts: rank 1 reads other images than rank 0, and the
    two shares together cover every training image (one repeat pads an odd count)."""
    import argparse
    import train

    class Numbered(torch.utils.data.Dataset):  # image i is filled with i, so a batch names its images
        def __len__(self):
            return 37

        def __getitem__(self, i):
            return torch.full((3, 2, 2), i, dtype=torch.uint8), torch.tensor(float(i))
    args = argparse.Namespace(balance=False, seed=0, batch_size=8)
    seen = {}
    for rank in (0, 1):
        loader, steps = train.make_train_loader(args, Numbered(), argparse.Namespace(active=True, world_size=2,
                                                                                   rank=rank), False)
        seen[rank] = [int(age) for _, ages in loader(1) for age in ages]
        assert len(seen[rank]) == 19 and steps == 3
    assert set(seen[0]) | set(seen[1]) == set(range(37)) and len(set(seen[0]) & set(seen[1])) <= 1
    again = train.make_train_loader(args, Numbered(), argparse.Namespace(active=True, world_size=2, rank=0), False)[0]
    assert [int(a) for _, ages in again(2) for a in ages] != seen[0]  # another epoch, another permutation


@pytest.mark.parametrize("which", ["best.pt", "last.pt"])
def test_reported_val_mae_equals_single_process_evaluate(ddp_run, ddp_splits, which):
    out, cache, _ = ddp_run
    ckpt = checkpoints.load_checkpoint(out / which)
    cfg = custom_dataset.PreprocessConfig.from_dict(ckpt["preprocess"])
    model, _ = checkpoints.model_from_checkpoint(ckpt)
    model = model.to(memory_format=torch.channels_last)
    val = custom_dataset.load_split_dataset(ddp_splits / "val.csv", cfg, cache, workers=1, progress=False)
    mine = functions.evaluate(model, custom_dataset.make_loader(val, 256, shuffle=False), torch.tensor(cfg.mean),
                              torch.tensor(cfg.std), loss_kind=ckpt["config"]["loss"], tta_flip=ckpt["config"]["tta_flip"])
    history = json.loads((out / "history.json").read_text())
    reported = next(h for h in history if h["epoch"] == ckpt["epoch"])
    assert mine["n"] == len(val)
    assert reported["val_mae"] == pytest.approx(mine["mae"], abs=1e-4)
    assert ckpt["metrics"]["val"]["mae"] == pytest.approx(mine["mae"], abs=1e-4)
    assert reported["val_cs5"] == pytest.approx(mine["cs5"], abs=1e-9)


@pytest.mark.slow
def test_resume_under_torchrun_repeats_the_uninterrupted_run(ddp_run, ddp_splits, tmp_path):
    reference = json.loads((ddp_run[0] / "history.json").read_text())
    out = tmp_path / "stopped"
    cmd = torchrun_cmd(ddp_splits, out, ddp_run[1], *EXTRA, "--no-test", "--no-export", "--no-tensorboard")  # as ddp_run
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=run_env())
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (out / "last.pt").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # torchrun stops both workers (they run in sessions of their own)
    proc.wait(timeout=60)
    stopped_at = checkpoints.load_checkpoint(out / "last.pt")["epoch"]
    assert 1 <= stopped_at < int(EPOCHS)  # stopped part-way
    done = subprocess.run([*cmd, "--resume"], cwd=REPO, capture_output=True, text=True, timeout=150, env=run_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"at epoch {stopped_at} " in done.stdout and done.stdout.count("resumed from") == 1
    resumed = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in resumed] == [1, 2, 3]
    for a, b in zip(reference, resumed):
        assert b["val_mae"] == pytest.approx(a["val_mae"], abs=1e-4)
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-4)
