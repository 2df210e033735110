"""Distillation (train.py --teacher): the blended loss, the teacher's table, and the checks that keep a
teacher from another split out."""
import numpy as np
import pytest
import torch

import checkpoints
import custom_dataset
import functions
import train
from conftest import assert_one_line_error, run_script
from model import build_model

FAST = ["--image-size", "64", "--no-denoise", "--no-progress", "--threads", "1", "--batch-size", "32",
        "--no-tensorboard", "--no-export", "--no-test", "--age-map", "off"]


def train_args(splits, out_dir, *extra):
    return train.get_args_parser().parse_args(["--splits", str(splits), "--out-dir", str(out_dir), *FAST, *extra])


# ---------------------------------------------------------------------------------------------- loss

def draw(head, seed=0):
    torch.manual_seed(seed)
    model = build_model("simplecnn", head=head, min_age=20, max_age=30)
    outputs = torch.randn(5, 11 if head == "distribution" else 1) * (1 if head == "distribution" else 10) + (
        0 if head == "distribution" else 25)
    labels = torch.tensor([20.0, 22.0, 25.0, 28.0, 30.0])
    teacher_probs = torch.softmax(torch.randn(5, 11), 1)
    return model, outputs, labels, (teacher_probs @ model.age_grid if head == "distribution" else
                                    torch.tensor([21.0, 24.0, 25.0, 26.0, 29.0]), teacher_probs)


def test_a_teacher_at_weight_zero_or_agreeing_with_the_labels_changes_nothing():
    model, outputs, labels, teacher = draw("distribution")
    plain, _ = functions.age_loss(model, outputs, labels, "mse")
    zero, _ = functions.age_loss(model, outputs, labels, "mse", teacher=teacher, teacher_weight=0.0)
    agreeing = (labels, functions.gaussian_targets(labels, model.age_grid))
    same, _ = functions.age_loss(model, outputs, labels, "mse", teacher=agreeing, teacher_weight=0.7)
    assert torch.allclose(zero, plain) and torch.allclose(same, plain)
    other, _ = functions.age_loss(model, outputs, labels, "mse", teacher=teacher, teacher_weight=0.7)
    assert not torch.allclose(other, plain)


def test_the_teacher_only_loss_is_its_point_loss_plus_kl_to_its_distribution():
    model, outputs, labels, (t_ages, t_probs) = draw("distribution")
    loss, pred = functions.age_loss(model, outputs, labels, "mse", teacher=(t_ages, t_probs), teacher_weight=1.0)
    q = torch.softmax(outputs, 1)
    expected = ((pred - t_ages) ** 2).mean() + (t_probs * (t_probs.log() - q.log())).sum(1).mean()
    assert torch.allclose(loss, expected, atol=1e-5)


def test_a_regression_student_blends_the_two_ages():
    model, outputs, labels, (t_ages, _) = draw("regression")
    loss, pred = functions.age_loss(model, outputs, labels, "l1", teacher=(t_ages, None), teacher_weight=0.25)
    expected = 0.75 * (pred - labels).abs().mean() + 0.25 * (pred - t_ages).abs().mean()
    assert torch.allclose(loss, expected)


def test_predicted_distributions_have_the_models_ages_as_their_means(splits):
    torch.manual_seed(0)
    val = custom_dataset.load_split_dataset(splits / "val.csv", custom_dataset.PreprocessConfig(image_size=64))
    mean, std = torch.zeros(3), torch.full((3,), 255.0)
    loader = custom_dataset.make_loader(val, 16, shuffle=False)
    model = build_model("simplecnn", head="distribution", min_age=20, max_age=50, image_size=64)
    probs, grid = functions.predict_distributions(model, loader, mean, std, tta_flip=True)
    ages, _ = functions.predict_loader(model, loader, mean, std, tta_flip=True)
    assert probs.shape == (len(val), 31) and list(grid) == list(range(20, 51))
    assert np.allclose(probs.sum(1), 1, atol=1e-5) and np.allclose(probs @ grid, ages, atol=1e-3)
    regression = build_model("simplecnn", head="regression", min_age=20, max_age=50, image_size=64)
    regression.init_output_bias(33.0)
    probs, grid = functions.predict_distributions(regression, loader, mean, std, ages=range(20, 51))
    ages, _ = functions.predict_loader(regression, loader, mean, std)
    assert np.allclose(probs @ grid, ages, atol=0.05)  # a Gaussian of 2 years, far from the grid's ends


# ---------------------------------------------------------------------------------------------- train.py

@pytest.fixture(scope="module")
def teacher(splits, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    train.main(train_args(splits, out, "--epochs", "1"))
    return out / "best.pt"


def student_weights(out):
    return checkpoints.load_checkpoint(out / "last.pt")["model_state"]


def same_weights(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_student_learns_from_the_teacher_and_its_table_replays_exactly(splits, teacher, tmp_path):
    train.main(train_args(splits, tmp_path / "student", "--epochs", "1", "--teacher", str(teacher)))
    table = np.load(tmp_path / "student" / "teacher.npz", allow_pickle=False)
    train_rows = custom_dataset.read_split(splits / "train.csv")
    assert len(table["hash"]) == len(train_rows) and np.allclose(table["probs"].sum(1), 1, atol=1e-5)
    # with one teacher, the table's validation MAE is the teacher's own (flip-averaged, as it was validated)
    assert float(table["val_mae"]) == pytest.approx(checkpoints.load_checkpoint(teacher)["best_val_mae"], abs=1e-3)
    # the table is the teacher's own prediction of each face
    model, cfg = checkpoints.model_from_checkpoint(checkpoints.load_checkpoint(teacher))
    data = custom_dataset.load_split_dataset(splits / "train.csv", cfg, splits.parent / "cache", progress=False)
    probs, _ = functions.predict_distributions(model, custom_dataset.make_loader(data, 64, False),
                                               torch.tensor(cfg.mean), torch.tensor(cfg.std), tta_flip=True)
    hashes = train.split_hashes(splits / "train.csv")
    row = list(table["hash"]).index(hashes[data.paths[0]])
    assert np.allclose(table["probs"][row], probs[0], atol=1e-5)
    # the table gives the same training as the checkpoint; weight 0 gives the student without a teacher
    train.main(train_args(splits, tmp_path / "replay", "--epochs", "1",
                          "--teacher", str(tmp_path / "student" / "teacher.npz")))
    assert same_weights(student_weights(tmp_path / "student"), student_weights(tmp_path / "replay"))
    train.main(train_args(splits, tmp_path / "plain", "--epochs", "1"))
    train.main(train_args(splits, tmp_path / "weight0", "--epochs", "1", "--teacher", str(teacher),
                          "--teacher-weight", "0"))
    assert same_weights(student_weights(tmp_path / "plain"), student_weights(tmp_path / "weight0"))
    assert not same_weights(student_weights(tmp_path / "plain"), student_weights(tmp_path / "student"))


@pytest.mark.slow
def test_a_later_session_reads_the_runs_table_while_the_teachers_are_the_same(splits, teacher, tmp_path, monkeypatch):
    data = custom_dataset.load_split_dataset(splits / "train.csv", custom_dataset.PreprocessConfig(image_size=64),
                                             splits.parent / "cache", progress=False)
    args = train_args(splits, tmp_path, "--teacher", str(teacher))
    predicted, real_predict = [], train.predict_teachers
    monkeypatch.setattr(train, "predict_teachers", lambda *a: predicted.append(1) or real_predict(*a))
    first = train.teacher_targets(args, data, splits.parent / "cache", 20, 50, tmp_path)
    again = train.teacher_targets(args, data, splits.parent / "cache", 20, 50, tmp_path)
    assert len(predicted) == 1 and all(torch.equal(a, b) for a, b in zip(first, again))
    copy = tmp_path / "copy.pt"  # other bytes, the same weights (a --calibrate re-save): read, as resume judges
    checkpoint = checkpoints.load_checkpoint(teacher)
    checkpoint["note"] = "re-saved"
    checkpoints.save_checkpoint(copy, checkpoint)
    train.teacher_targets(train_args(splits, tmp_path, "--teacher", str(copy)), data, splits.parent / "cache", 20, 50,
                          tmp_path)
    assert len(predicted) == 1
    first_weight = next(iter(checkpoint["model_state"]))
    checkpoint["model_state"][first_weight] = checkpoint["model_state"][first_weight] + 1  # a teacher trained on
    checkpoints.save_checkpoint(copy, checkpoint)
    train.teacher_targets(train_args(splits, tmp_path, "--teacher", str(copy)), data, splits.parent / "cache", 20, 50,
                          tmp_path)
    assert len(predicted) == 2


@pytest.mark.slow
@pytest.mark.parametrize("case", ["other_split", "table_of_other_split", "table_missing_faces", "not_a_table"])
def test_a_teacher_that_does_not_fit_the_split_is_a_one_line_error(case, splits, teacher, tmp_path):
    if case == "other_split":
        checkpoint = checkpoints.load_checkpoint(teacher)
        checkpoint["split_faces"] = "another split"
        source = tmp_path / "best.pt"
        checkpoints.save_checkpoint(source, checkpoint)
        words = ["other splits", "validation or test"]
    elif case == "not_a_table":
        source = tmp_path / "teacher.npz"
        source.write_text("not numpy")
        words = ["not a readable .npz"]
    else:
        probs = np.full((3, 31), 1 / 31, np.float32)
        hashes = list(train.split_hashes(splits / "train.csv").values())[:3]
        digest = "another split" if case == "table_of_other_split" else train.split_faces_digest(splits)
        source = tmp_path / "teacher.npz"
        np.savez(source, hash=np.asarray(hashes), age_grid=np.arange(20, 51), probs=probs,
                 split_faces=np.asarray(digest))
        words = ["other splits"] if case == "table_of_other_split" else ["no prediction for"]
    proc = run_script("train.py", "--splits", splits, "--out-dir", tmp_path / "run", *FAST, "--epochs", "1",
                      "--teacher", source)
    assert_one_line_error(proc, *words)


# ---------------------------------------------------------------------------------------------- --teacher-online

def test_an_online_teacher_predicts_the_very_batch_on_the_students_ages(splits, teacher):
    checkpoint = checkpoints.load_checkpoint(teacher)
    model, cfg = checkpoints.model_from_checkpoint(checkpoint)
    data = custom_dataset.load_split_dataset(splits / "train.csv", cfg, splits.parent / "cache", progress=False)
    images, _ = data.batch(list(range(8)))
    images = images.float()
    lo, hi = checkpoint["min_age"], checkpoint["max_age"]
    online = train.OnlineTeachers([str(teacher)], train_args(splits, "unused"), lo, hi, torch.device("cpu"), False)
    ages, probs = online(images)
    # one view, the batch as given: the teacher's own prediction of these faces without its flip averaging
    own, grid = functions.predict_distributions(model, [(images, torch.zeros(8))], torch.tensor(cfg.mean),
                                                torch.tensor(cfg.std), tta_flip=False)
    assert np.allclose(probs.numpy(), own, atol=1e-5) and np.allclose(ages.numpy(), own @ grid, atol=1e-3)
    # a student with fewer ages: the teacher's probability beyond them lands on the nearest end
    narrow = train.OnlineTeachers([str(teacher)], train_args(splits, "unused"), lo + 5, hi - 5,
                                  torch.device("cpu"), False)
    _, few = narrow(images)
    assert few.shape == (8, hi - lo - 9) and torch.allclose(few.sum(1), torch.ones(8), atol=1e-5)
    assert np.allclose(few[:, 0].numpy(), own[:, :6].sum(1), atol=1e-5)
    assert np.allclose(few[:, 1:-1].numpy(), own[:, 6:-6], atol=1e-5)
    # a student at another input size: the teacher gets the batch resized to its own
    bigger = torch.nn.functional.interpolate(images, size=(96, 96), mode="bilinear", align_corners=False)
    _, resized = online(bigger)
    assert resized.shape == probs.shape and (resized - probs).abs().sum(1).mean() < 0.5


def test_the_online_teacher_sees_the_augmented_and_mixed_batch_and_sets_the_targets(splits):
    torch.manual_seed(0)
    model = build_model("simplecnn", head="distribution", min_age=20, max_age=50, image_size=32)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    ages = torch.tensor([20.0, 25.0, 30.0, 35.0, 40.0, 45.0])
    seen = []

    def constant_teacher(batch):
        seen.append(batch.clone())
        return torch.full((len(batch),), 33.0), functions.gaussian_targets(torch.full((len(batch),), 33.0),
                                                                            model.age_grid)
    augment = custom_dataset.AugmentConfig()
    epoch = functions.train_one_epoch(model, [(images, ages)], torch.optim.SGD(model.parameters(), lr=0.0),
                              mean=torch.zeros(3), std=torch.full((3,), 255.0), loss_kind="mse", augment=augment,
                              generator=torch.Generator().manual_seed(5), progress=False, mixup=0.2,
                              teacher_weight=1.0, online_teacher=constant_teacher)
    generator = torch.Generator().manual_seed(5)
    expected = custom_dataset.augment_batch(images.float(), augment, generator)
    expected = functions.blend_with_partners(expected, functions.mixup_partners(ages, 0.2, generator))
    assert len(seen) == 1 and torch.equal(seen[0], expected)
    # teacher_weight 1: the loss is towards the teacher's 33 years alone, whatever the labels
    outputs = model(functions._prepare(expected, torch.zeros(3), torch.full((3,), 255.0), "cpu"))
    towards_teacher, _ = functions.age_loss(model, outputs, ages, "mse", teacher=constant_teacher(expected),
                                            teacher_weight=1.0)
    other_labels, _ = functions.age_loss(model, outputs, ages + 7, "mse", teacher=constant_teacher(expected),
                                         teacher_weight=1.0)
    assert torch.allclose(towards_teacher, other_labels)
    # and that is the loss the epoch trained on (lr 0, no dropout: the same outputs), not the labels' loss
    labels_only, _ = functions.age_loss(model, outputs, ages, "mse")
    assert epoch["loss"] == pytest.approx(towards_teacher.item(), rel=1e-4)
    assert abs(labels_only.item() - towards_teacher.item()) > 1e-2 * towards_teacher.item()


def test_a_regression_teachers_gaussian_keeps_its_age_as_the_mean_at_the_ends_of_its_range():
    grid = train.teacher_age_grid({"min_age": 20, "max_age": 50, "head": "regression"})
    assert list(train.teacher_age_grid({"min_age": 20, "max_age": 50, "head": "distribution"})) == list(range(20, 51))
    at_the_ends = torch.tensor([20.0, 50.0])
    widened = functions.gaussian_targets(at_the_ends, torch.as_tensor(grid, dtype=torch.float32))
    cut = functions.gaussian_targets(at_the_ends, torch.arange(20.0, 51.0))
    assert torch.allclose(widened @ torch.as_tensor(grid, dtype=torch.float32), at_the_ends, atol=0.01)
    assert (cut @ torch.arange(20.0, 51.0) - at_the_ends).abs().min() > 1  # the range alone pulls them inwards


def test_an_online_regression_teacher_gives_its_own_ages(splits, teacher, tmp_path):
    checkpoint = checkpoints.load_checkpoint(teacher)
    regression = build_model("simplecnn", head="regression", min_age=checkpoint["min_age"],
                             max_age=checkpoint["max_age"], image_size=64)
    regression.init_output_bias(33.0)
    checkpoint.update(head="regression", model_state=regression.state_dict())
    checkpoints.save_checkpoint(tmp_path / "regression.pt", checkpoint)
    model, cfg = checkpoints.model_from_checkpoint(checkpoint)
    data = custom_dataset.load_split_dataset(splits / "train.csv", cfg, splits.parent / "cache", progress=False)
    images = data.batch(list(range(8)))[0].float()
    ages, probs = train.OnlineTeachers([str(tmp_path / "regression.pt")], train_args(splits, "unused"), 20, 50,
                                       torch.device("cpu"), False)(images)
    with torch.no_grad():
        own = model.eval().predict(functions._prepare(images, torch.tensor(cfg.mean), torch.tensor(cfg.std), "cpu"))
    assert probs.shape == (8, 31) and torch.allclose(probs.sum(1), torch.ones(8), atol=1e-5)
    assert torch.allclose(ages, own, atol=0.01)


@pytest.mark.parametrize("extra, words", [([], ["--teacher-online", "--teacher checkpoints"]),
                                          (["--teacher", "t.npz"], ["--teacher-online", "teacher.npz"])])
def test_an_online_teacher_needs_checkpoints(extra, words):
    args = train_args("s", "o", "--teacher-online", *extra)
    with pytest.raises(custom_dataset.DataError) as error:
        train.check_numbers(args)
    assert all(w in str(error.value) for w in words)


def test_an_online_teacher_with_other_preprocessing_is_refused(splits, teacher):
    args = train_args(splits, "unused", "--denoise")
    with pytest.raises(custom_dataset.DataError, match="preprocesses faces otherwise"):
        train.OnlineTeachers([str(teacher)], args, 20, 50, torch.device("cpu"), False)


@pytest.mark.slow
def test_an_online_student_trains_otherwise_than_the_table_student(splits, teacher, tmp_path):
    train.main(train_args(splits, tmp_path / "table", "--epochs", "1", "--teacher", str(teacher)))
    train.main(train_args(splits, tmp_path / "online", "--epochs", "1", "--teacher", str(teacher), "--teacher-online"))
    config = checkpoints.load_checkpoint(tmp_path / "online" / "last.pt")["config"]
    assert config["teacher_online"] is True and (tmp_path / "online" / "teacher.npz").is_file()
    assert not same_weights(student_weights(tmp_path / "table"), student_weights(tmp_path / "online"))


def test_a_resumed_student_refuses_teachers_retrained_since_it_began(tmp_path):
    teacher = tmp_path / "best.pt"
    teacher.write_bytes(b"teacher weights, first training")
    out = tmp_path / "run"
    out.mkdir()
    np.savez(out / "teacher.npz", teachers_digest=np.asarray(train.teachers_digest(str(teacher))))
    assert not train.teachers_changed(out, str(teacher))
    teacher.write_bytes(b"teacher weights, trained again")
    assert train.teachers_changed(out, str(teacher))
    assert not train.teachers_changed(tmp_path / "elsewhere", str(teacher))  # no table kept: nothing to compare
    args = train.get_args_parser().parse_args(["--splits", str(tmp_path), "--out-dir", str(out), "--teacher",
                                               str(teacher), "--epochs", "5", "--resume"])
    checkpoint = {"config": vars(args).copy(), "epoch": 2, "split_digest": "d", "model_state": {}}
    torch.save(checkpoint, out / "last.pt")
    with pytest.raises(custom_dataset.DataError, match="teacher"):
        train.restore(args, out / "last.pt", functions.Distributed(), "d")


@pytest.mark.slow
def test_a_resumed_student_of_one_table_refuses_the_table_rewritten_since(splits, teacher, tmp_path, monkeypatch):
    """Only a run of several tables kept their digest: one table rewritten between sessions was learnt from
    silently. Every checkpoint now keeps it."""
    train.main(train_args(splits, tmp_path / "first", "--epochs", "1", "--teacher", str(teacher)))
    table = tmp_path / "table.npz"
    table.write_bytes((tmp_path / "first" / "teacher.npz").read_bytes())
    save_epoch = train.save_epoch

    def killed_after_epoch_1(out, state, improved, history):
        save_epoch(out, state, improved, history)
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "save_epoch", killed_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train.main(train_args(splits, tmp_path / "student", "--epochs", "2", "--teacher", str(table)))
    monkeypatch.setattr(train, "save_epoch", save_epoch)
    assert not train.teachers_changed(tmp_path / "student", str(table))
    kept = dict(np.load(table, allow_pickle=False))
    kept["probs"] = np.roll(kept["probs"], 1, axis=1)  # another teacher's view of the same faces
    np.savez(table, **kept)
    assert train.teachers_changed(tmp_path / "student", str(table))
    resumed = train_args(splits, tmp_path / "student", "--epochs", "2", "--teacher", str(table), "--resume")
    with pytest.raises(custom_dataset.DataError, match="tables were rewritten"):
        train.main(resumed)


def test_subset_fraction_and_simplecnn_weights_are_refused_before_overwrite_removes_the_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "best.pt").write_bytes(b"an earlier run's weights")
    for extra in (["--subset-fraction", "0"], ["--subset-fraction", "nan"], ["--weights", str(tmp_path / "w.pth")]):
        args = train.get_args_parser().parse_args(["--splits", str(tmp_path), "--out-dir", str(out), "--overwrite",
                                                   *extra])
        with pytest.raises(custom_dataset.DataError, match=extra[0]):
            train.main(args)
        assert (out / "best.pt").read_bytes() == b"an earlier run's weights"


def test_a_teacher_resaved_with_the_same_weights_is_the_same_teacher(tmp_path):
    # benchmark.py --calibrate re-saves a teacher's best.pt (an interval added): its bytes change, its weights not
    model = build_model("simplecnn", "distribution", 20, 40, 32)
    teacher = tmp_path / "best.pt"
    torch.save({"model_state": model.state_dict()}, teacher)
    out = tmp_path / "run"
    out.mkdir()
    np.savez(out / "teacher.npz", teachers_digest=np.asarray(train.teachers_digest(str(teacher))),
             teachers_weights=np.asarray(train.teachers_weights(str(teacher))))
    torch.save({"model_state": model.state_dict(), "interval": {"level": 0.9}}, teacher)
    assert not train.teachers_changed(out, str(teacher))
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # retrained: other weights
    torch.save({"model_state": model.state_dict()}, teacher)
    assert train.teachers_changed(out, str(teacher))


def test_several_teacher_tables_teach_their_mean(tmp_path):
    def table(name, probs, grid):
        np.savez(tmp_path / name, hash=np.asarray(["a", "b"]), age_grid=np.asarray(grid, np.int32),
                 probs=np.asarray(probs, np.float32), split_faces=np.asarray("faces"))
        return str(tmp_path / name)
    gpu = table("gpu.npz", [[1, 0, 0], [0, 1, 0]], [20, 21, 22])
    cpu = table("cpu.npz", [[0, 1], [0, 1]], [21, 22])  # another grid: moved onto the union 20..22
    mean = train.read_teacher_tables(f"{gpu},{cpu}", "faces")
    assert mean["age_grid"].tolist() == [20, 21, 22]
    assert mean["probs"].tolist() == [[0.5, 0, 0.5], [0, 0.5, 0.5]]
    assert train.read_teacher_tables(gpu, "faces")["probs"].tolist() == [[1, 0, 0], [0, 1, 0]]
    with pytest.raises(custom_dataset.DataError, match="not both"):
        train.teacher_is_table(f"{gpu},{tmp_path / 'best.pt'}")
    with pytest.raises(custom_dataset.DataError, match="other splits"):
        train.read_teacher_tables(f"{gpu},{cpu}", "other faces")


def test_a_resumed_student_of_several_tables_refuses_a_table_rewritten_since(tmp_path):
    tables = []
    for name in ("gpu.npz", "cpu.npz"):
        np.savez(tmp_path / name, hash=np.asarray(["a"]), age_grid=np.asarray([20], np.int32),
                 probs=np.ones((1, 1), np.float32), split_faces=np.asarray("faces"))
        tables.append(str(tmp_path / name))
    teacher = ",".join(tables)
    out = tmp_path / "run"
    out.mkdir()
    np.savez(out / "teacher.npz", teachers_digest=np.asarray(train.teachers_digest(teacher)))
    assert not train.teachers_changed(out, teacher)
    np.savez(tmp_path / "cpu.npz", hash=np.asarray(["a"]), age_grid=np.asarray([21], np.int32),
             probs=np.ones((1, 1), np.float32), split_faces=np.asarray("faces"))
    assert train.teachers_changed(out, teacher)


@pytest.mark.slow
def test_a_face_readable_again_on_resume_is_predicted_by_the_teachers_and_said(splits, teacher, tmp_path, monkeypatch,
                                                                               capsys):
    """A training image missing when a student's table was predicted and back on --resume: the kept table had no
    row for it, so every resume stopped ("has no prediction for 1 of N training faces"); and the resumed run read
    other images than its first session without a word."""
    import shutil
    from pathlib import Path
    photo = Path(train.split_csv_rows(splits / "train.csv")[0]["path"])
    photo = photo if photo.is_absolute() else splits / photo
    aside = tmp_path / ("aside" + photo.suffix)
    run = ["--epochs", "2", "--teacher", str(teacher), "--cache-dir", str(tmp_path / "cache")]
    save_epoch = train.save_epoch

    def killed_after_epoch_1(out, state, improved, history):
        save_epoch(out, state, improved, history)
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "save_epoch", killed_after_epoch_1)
    shutil.move(photo, aside)
    try:
        with pytest.raises(KeyboardInterrupt):
            train.main(train_args(splits, tmp_path / "student", *run))
    finally:
        shutil.move(aside, photo)
    monkeypatch.setattr(train, "save_epoch", save_epoch)
    first = np.load(tmp_path / "student" / "teacher.npz")["hash"].size
    capsys.readouterr()
    train.main(train_args(splits, tmp_path / "student", *run, "--resume"))
    assert "are not those" in capsys.readouterr().err
    assert np.load(tmp_path / "student" / "teacher.npz")["hash"].size == first + 1
