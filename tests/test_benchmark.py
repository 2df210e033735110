"""benchmark.py's pure parts: the one-lever experiments and their README table (no UTKFace needed)."""
import benchmark
import train


PARSER = train.get_args_parser()


def parsed(extra):
    return vars(PARSER.parse_args(["--splits", "s", "--out-dir", "o", *benchmark.ABLATION_BASE, *extra]))


def test_every_ablation_changes_the_base_and_only_what_it_names():
    base = parsed([])
    assert base["head"] == "distribution" and base["epochs"] == 10 and base["tta_flip"] and base["denoise"]
    for name, (change, extra) in benchmark.ABLATIONS.items():
        changed = {k for k, v in parsed(extra).items() if base[k] != v}
        if name == "base":
            assert changed == set()
        else:
            # every train.py option the experiment passes is one that really differs from the base
            named = {PARSER._option_string_actions[arg].dest for arg in extra if arg.startswith("--")}
            assert changed == named, (name, changed, named)


def test_ablation_table_shows_the_difference_to_the_base():
    results = {"ablations": {
        "base": {"change": "the base", "val_mae": 4.9, "val_mae_no_tta": 4.95, "best_epoch": 10, "epochs": 10, "train_images_per_s": 344.4},
        "simplecnn_bn": {"change": "BatchNorm", "val_mae": 4.65, "val_mae_no_tta": 4.7, "best_epoch": 9, "epochs": 10,
                         "train_images_per_s": 300.0},
    }}
    lines = benchmark.ablation_table(results).splitlines()
    assert lines[2] == "| base: the base | 4.900 |  | 4.950 | 10/10 | 344 |"
    assert lines[3] == "| simplecnn_bn: BatchNorm | 4.650 | -0.250 | 4.700 | 9/10 | 300 |"
    assert benchmark.ablation_table({"protocols": {}}) == ""
