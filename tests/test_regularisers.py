"""The training regularisers of #15: C-Mixup (train.py --mixup), random erasing (--erase) and the width of the
label's Gaussian (--label-sigma): golden values of the pure functions, and a training run that uses them."""
import math

import pytest
import torch

import checkpoints
import custom_dataset
import functions
import train
from model import build_model
from test_distill import train_args


def test_mixed_targets_blend_each_row_with_its_partner_golden_values():
    ages = torch.tensor([10.0, 20.0, 30.0])
    mix = (torch.tensor([1, 0, 2]), torch.tensor([0.25, 1.0, 0.5]))
    assert functions.blend_with_partners(ages, mix).tolist() == [17.5, 20.0, 30.0]
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    assert functions.blend_with_partners(rows, mix).tolist() == [[0.25, 0.75], [0.0, 1.0], [0.5, 0.5]]
    assert functions.blend_with_partners(ages, None) is ages


def test_mixup_partners_are_of_a_similar_age_and_repeat_with_the_seed():
    ages = torch.tensor([20.0, 20.5, 21.0, 60.0, 60.5, 61.0] * 4)
    partner, weight = functions.mixup_partners(ages, 0.2, torch.Generator().manual_seed(3))
    # 40 years apart is 8 bandwidths: exp(-32), never drawn
    assert ((ages[partner] - ages).abs() < 2).all()
    assert ((weight >= 0) & (weight <= 1)).all() and weight.shape == ages.shape
    # Beta(0.2, 0.2) puts most weights near 0 or 1: a blend is mostly one face
    assert ((weight < 0.1) | (weight > 0.9)).float().mean() > 0.5
    again = functions.mixup_partners(ages, 0.2, torch.Generator().manual_seed(3))
    assert torch.equal(partner, again[0]) and torch.equal(weight, again[1])
    other = functions.mixup_partners(ages, 0.2, torch.Generator().manual_seed(4))
    assert not torch.equal(weight, other[1])


def test_a_mixed_batchs_loss_is_the_loss_against_blended_targets():
    torch.manual_seed(0)
    model = build_model("simplecnn", head="distribution", min_age=20, max_age=30)
    outputs, labels = torch.randn(4, 11), torch.tensor([20.0, 22.0, 27.0, 30.0])
    plain, _ = functions.age_loss(model, outputs, labels, "mse")
    itself = (torch.arange(4), torch.tensor([0.1, 0.5, 0.7, 0.9]))  # a face blended with itself is that face
    unmixed = (torch.tensor([1, 0, 3, 2]), torch.ones(4))
    assert torch.allclose(functions.age_loss(model, outputs, labels, "mse", mix=itself)[0], plain)
    assert torch.allclose(functions.age_loss(model, outputs, labels, "mse", mix=unmixed)[0], plain)
    mix = (torch.tensor([1, 0, 3, 2]), torch.tensor([0.5, 0.25, 1.0, 0.0]))
    loss, pred = functions.age_loss(model, outputs, labels, "mse", sigma=3.0, mix=mix)
    blended_age = torch.tensor([21.0, 20.5, 27.0, 27.0])
    soft = functions.gaussian_targets(labels, model.age_grid, 3.0)
    blended_soft = torch.stack([(soft[0] + soft[1]) / 2, 0.25 * soft[1] + 0.75 * soft[0], soft[2], soft[2]])
    q = torch.log_softmax(outputs, 1)
    expected = ((pred - blended_age) ** 2).mean() + (blended_soft * (blended_soft.clamp_min(1e-30).log() - q)).sum(1).mean()
    assert torch.allclose(loss, expected, atol=1e-5)


def test_a_wider_label_gaussian_spreads_the_target():
    grid = torch.arange(0.0, 41.0)
    narrow, wide = (functions.gaussian_targets(torch.tensor([20.0]), grid, s)[0] for s in (2.0, 3.0))
    spread = lambda p: float((p * (grid - 20) ** 2).sum().sqrt())
    assert spread(narrow) == pytest.approx(2.0, abs=1e-3) and spread(wide) == pytest.approx(3.0, abs=1e-3)


def erased(x, share, seed=0):
    return custom_dataset.erase_rectangles(x, share, torch.Generator().manual_seed(seed))


def test_random_erasing_turns_one_rectangle_of_the_chosen_share_of_images_to_noise():
    x = torch.full((200, 3, 40, 40), 128.0)
    out = erased(x, 0.5)
    changed = (out != x).any(1)  # N x H x W
    hit = changed.flatten(1).any(1)
    assert 0.35 < hit.float().mean() < 0.65
    low, high = custom_dataset.ERASE_AREA
    for mask in changed[hit]:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        # noise can equal 128 at a pixel by chance, so the changed pixels fill their box nearly, not always
        assert mask.sum() >= 0.95 * box
        assert low * 0.7 <= box / (40 * 40) <= high * 1.05
    assert torch.equal(out, erased(x, 0.5)) and not torch.equal(out, erased(x, 0.5, seed=1))
    assert torch.equal(erased(x, 0.0), x) and out.min() >= 0 and out.max() <= 255


def test_the_erase_setting_adds_to_the_preset_and_off_draws_nothing():
    args = train.get_args_parser().parse_args(["--splits", "s", "--out-dir", "o", "--augment", "photo", "--erase", "0.3"])
    config = train.augmentation(args)
    assert config.erase == 0.3 and config.grayscale == train.AUGMENTATIONS["photo"].grayscale
    x = torch.rand(8, 3, 24, 24) * 255
    plain = custom_dataset.augment_batch(x, train.AUGMENTATIONS["default"], torch.Generator().manual_seed(0))
    args = train.get_args_parser().parse_args(["--splits", "s", "--out-dir", "o"])
    same = custom_dataset.augment_batch(x, train.augmentation(args), torch.Generator().manual_seed(0))
    assert torch.equal(plain, same)


@pytest.mark.parametrize("flag, value", [("--label-sigma", "0"), ("--erase", "1.5"), ("--mixup", "-1"),
                                         ("--label-sigma", "nan")])
def test_an_impossible_regulariser_setting_is_named(flag, value):
    args = train.get_args_parser().parse_args(["--splits", "s", "--out-dir", "o", flag, value])
    with pytest.raises(custom_dataset.DataError, match=flag):
        train.check_numbers(args)


@pytest.mark.parametrize("flags, words", [(["--model", "resnet18", "--dropout", "0.3"], "--dropout must be 0 with a ResNet"),
                                          (["--model", "simplecnn", "--pretrained"], "--pretrained must be left out")])
def test_a_setting_the_model_has_no_use_for_is_named(flags, words):
    args = train.get_args_parser().parse_args(["--splits", "s", "--out-dir", "o", *flags])
    with pytest.raises(custom_dataset.DataError, match=words):
        train.check_numbers(args)
    train.check_numbers(train.get_args_parser().parse_args(["--splits", "s", "--out-dir", "o", "--model",
                                                            "simplecnn" if "--dropout" in flags else "resnet18",
                                                            *flags[2:]]))  # the other family takes it
    # a run started before the refusal, which recorded the setting, resumes without it
    saved = vars(train.get_args_parser().parse_args(["--splits", "s", "--out-dir", "o", *flags]))
    assert train.changed_settings(saved, train.get_args_parser().parse_args(["--splits", "s", "--out-dir", "o",
                                                                             *flags[:2]])) == []


@pytest.mark.slow
def test_a_run_with_every_regulariser_trains_repeatably_and_records_them(splits, tmp_path):
    extra = ("--epochs", "1", "--mixup", "0.2", "--erase", "0.5", "--label-sigma", "3")
    for name in ("a", "b"):
        train.main(train_args(splits, tmp_path / name, *extra))
    train.main(train_args(splits, tmp_path / "plain", "--epochs", "1"))
    weights = {n: checkpoints.load_checkpoint(tmp_path / n / "last.pt") for n in ("a", "b", "plain")}
    assert all(torch.equal(weights["a"]["model_state"][k], weights["b"]["model_state"][k]) for k in weights["a"]["model_state"])
    assert not all(torch.equal(weights["a"]["model_state"][k], weights["plain"]["model_state"][k])
                   for k in weights["a"]["model_state"])
    config = weights["a"]["config"]
    assert (config["mixup"], config["erase"], config["label_sigma"]) == (0.2, 0.5, 3.0)
    assert math.isfinite(weights["a"]["best_val_mae"])
