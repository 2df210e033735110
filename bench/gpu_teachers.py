"""Distillation teachers trained on a lent GPU machine for students trained on the CPU (issue #15 allows a
GPU-trained teacher, reported as such).

The GPU machine cannot see ../shared/data, and a call carries at most 64 MiB, so the faces of a benchmark's
splits travel re-encoded (128 px WebP at quality 85, 2.1 KB a face: its mean error on 500 UTKFace chips, 2.1/255, is
below that of the JPEG at quality 75 whose training matched the originals'). Their split CSVs keep
eda.py's content hashes of the original files, so the teacher tables written there are keyed by the faces the
CPU student reads here (train.py --teacher checks the splits' face digest), and name each re-encoded file's
original in a "source" column: the cache then does not compare the re-encoded bytes with the hash.

    # here: pack the faces of bench/work/{S,F}/splits (benchmark.py wrote them) into the ignored folder .gpu
    python bench/gpu_teachers.py pack
    # there (device tool, carry .gpu): train ResNet teachers per protocol, write their tables to $OUT
    python bench/gpu_teachers.py train --out $OUT --minutes 6.5
    # here: copy the tables to bench/work/<P>/gpu_teachers/; a student takes one as --teacher FILE.npz

Measured on an H200 (2026-12-04, 6 minutes, the four teachers at once, torch 2.11, bf16): Protocol S at 2,200-3,100
img/s (3.8 s per ResNet-18 epoch), Protocol F's photo_scan augmentation at 1,200-1,300 img/s (14-16 s per epoch:
its per-image resampling loop and its noise, drawn on the CPU). S: ResNet-18 best val MAE 4.226 (epoch 37 of 74 run; it overfits after), ResNet-34 4.181
(epoch 48 of 52 run), their mean 4.125, against 4.163 for the CPU teacher simplecnn_tuned_60ep_amp's table. F
stopped at epoch 19-21 of 70 (val 5.39 / 5.62), high on its cosine schedule: too few for a teacher. The runs stay
on the machine (a ResNet's last.pt is over what a call returns), so F needs --epochs that fit one call (about 20)
or a faster degradation, not a second call.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from custom_dataset import content_hash, load_rgb  # noqa: E402  (the repository's root, not bench/)

ROOT = Path(__file__).resolve().parent.parent
PACK = ROOT / ".gpu"
FACES_THERE = Path("/tmp/gpu_faces")
SIZE, QUALITY = 128, 85
# per protocol: (run name, train.py arguments) of each teacher; the tuned recipe (distribution head, MSE on the
# expected age, lr 1e-3, batch 64, cosine) with ResNets from scratch in bf16, F with its photo_scan augmentation
TEACHERS = {
    "S": [("resnet18", ["--model", "resnet18", "--epochs", "80"]),
          ("resnet34", ["--model", "resnet34", "--epochs", "80", "--seed", "2"])],
    "F": [("resnet18", ["--model", "resnet18", "--epochs", "70", "--augment", "photo_scan"]),
          ("resnet34", ["--model", "resnet34", "--epochs", "70", "--augment", "photo_scan", "--seed", "2"])],
}
SPLITS = ("train", "val", "test")


def pack(args):
    import cv2
    PACK.mkdir(exist_ok=True)
    faces = {}
    for protocol in TEACHERS:
        src = ROOT / "bench" / "work" / protocol / "splits"
        dst = PACK / protocol / "splits"
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / "crop.json", dst / "crop.json")
        for split in SPLITS:
            with open(src / f"{split}.csv", newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            with open(dst / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, ["path", "age", "hash", "source"], extrasaction="ignore")
                writer.writeheader()
                for row in rows:
                    if not row.get("hash"):
                        raise SystemExit(f"{src / split}.csv has a row without eda.py's content hash; rerun eda.py")
                    faces[row["hash"]] = row["path"]
                    writer.writerow({**row, "path": str(FACES_THERE / f"{row['hash']}.webp"),
                                     "source": Path(row["path"]).name})
    blobs, names = [], sorted(faces)
    for digest in names:  # one array of bytes: a tar's 512-byte headers would add a third to 2 KB files
        data = Path(faces[digest]).read_bytes()
        if content_hash(data) != digest:  # the GPU side cannot check (its files are re-encoded): check here
            raise SystemExit(f"{faces[digest]} changed since eda.py split it; rerun benchmark.py (it re-splits)")
        image = cv2.cvtColor(load_rgb(io.BytesIO(data)), cv2.COLOR_RGB2BGR)  # decoded as training decodes it
        image = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        blobs.append(cv2.imencode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, QUALITY])[1].ravel())
    ends = np.cumsum([len(b) for b in blobs])
    np.savez(PACK / "faces.npz", names=np.asarray(names), ends=ends, data=np.concatenate(blobs))
    size = sum(f.stat().st_size for f in PACK.rglob("*") if f.is_file()) / 2 ** 20
    print(f"packed {len(faces)} faces into {PACK} ({size:.1f} MiB; a device call carries 64 MiB with the code)")


def splits_of(protocol, smoke=False) -> Path:
    """The protocol's packed splits; with --smoke their first 100 rows each (a check of this script)."""
    if not smoke:
        return PACK / protocol / "splits"
    small = Path("/tmp/gpu_smoke") / protocol / "splits"
    small.mkdir(parents=True, exist_ok=True)
    shutil.copy(PACK / protocol / "splits" / "crop.json", small / "crop.json")
    for split in SPLITS:
        lines = (PACK / protocol / "splits" / f"{split}.csv").read_text().splitlines(keepends=True)
        (small / f"{split}.csv").write_text("".join(lines[:101]))
    return small


def train(args):
    out = Path(args.out)
    for stale in (Path("/tmp/gpu_runs"), Path("/tmp/gpu_tables")):  # a warm machine's earlier call
        shutil.rmtree(stale, ignore_errors=True)
    FACES_THERE.mkdir(exist_ok=True)
    with np.load(PACK / "faces.npz") as f:
        names, ends, data = f["names"], f["ends"], f["data"]
    for name, start, end in zip(names, np.concatenate([[0], ends[:-1]]), ends):
        (FACES_THERE / f"{name}.webp").write_bytes(data[start:end].tobytes())
    start = time.time()
    cores = len(os.sched_getaffinity(0))
    workers = max(1, cores // sum(len(t) for t in TEACHERS.values()))
    jobs = []
    for protocol, teachers in TEACHERS.items():
        for name, extra in teachers:
            run = Path("/tmp/gpu_runs") / protocol / name
            cmd = [sys.executable, "train.py", "--splits", str(splits_of(protocol, args.smoke)), "--cache-dir",
                   f"/tmp/gpu_cache/{protocol}_{name}", "--out-dir", str(run), "--amp", "--no-export",
                   "--no-progress", "--no-tensorboard", "--workers", str(workers), "--threads", str(workers),
                   "--overwrite", *extra]
            if args.smoke:  # a check of this script on the CPU: minutes, not a teacher
                cmd += ["--epochs", "1", "--no-test", "--device", "cpu", "--threads", "1"]
            log = open(out / f"{protocol}_{name}.log", "w")
            print(" ".join(cmd), file=log, flush=True)
            jobs.append((protocol, name, run, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)))
    deadline = start + args.minutes * 60
    try:
        while any(p.poll() is None for *_, p in jobs) and time.time() < deadline:
            time.sleep(5)
    finally:  # also when this script is stopped: no trainer outlives it, holding the GPU and its run folder
        for protocol, name, run, p in jobs:
            if p.poll() is None:
                p.terminate()  # its best.pt so far still teaches; the log says at which epoch it stopped
                print(f"{protocol}/{name}: stopped at the deadline", flush=True)
            p.wait()
    print(f"training took {time.time() - start:.0f} s", flush=True)
    import train as train_script
    for protocol, teachers in TEACHERS.items():
        sources = [str(Path("/tmp/gpu_runs") / protocol / name / "best.pt") for name, _ in teachers]
        sources = [s for s in sources if Path(s).is_file()]
        if not sources:
            print(f"{protocol}: no teacher finished an epoch")
            continue
        for chosen, tag in [(sources, "ensemble")] + [([s], Path(s).parent.name) for s in sources]:
            targs = train_script.get_args_parser().parse_args(
                ["--splits", str(splits_of(protocol, args.smoke)), "--teacher", ",".join(chosen), "--no-progress",
                 "--out-dir", "/tmp/gpu_tables",
                 "--workers", str(cores)])
            try:  # one table's failure (a teacher stopped before its first epoch) keeps the others
                train_script.write_teacher_table(targs, Path(f"/tmp/gpu_cache/{protocol}_{teachers[0][0]}"),
                                                 out / f"{protocol}_{tag}.npz")
            except Exception as exc:
                print(f"{protocol} {tag}: no table ({type(exc).__name__}: {exc})", flush=True)
    with tarfile.open(out / "runs.tar", "w") as tar:  # the logs, curves and metrics (the device returns 8 files)
        for log in sorted(out.glob("*.log")):
            tar.add(log, log.name)
            log.unlink()
        for run in sorted(Path("/tmp/gpu_runs").glob("*/*")):
            for name in ("history.json", "metrics.json", "config.json"):
                if (run / name).is_file():
                    tar.add(run / name, f"{run.parent.name}_{run.name}_{name}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    sub.add_parser("pack", help="re-encode the splits' faces into .gpu (run here)")
    t = sub.add_parser("train", help="train the teachers and write their tables (run on the GPU machine)")
    t.add_argument("--out", required=True, help="folder for the tables and logs ($OUT)")
    t.add_argument("--minutes", type=float, default=6.5, help="training stops here; the best epoch so far teaches")
    t.add_argument("--smoke", action="store_true", help="one epoch on 100 faces, on the CPU: checks the script")
    args = parser.parse_args()
    pack(args) if args.step == "pack" else train(args)
