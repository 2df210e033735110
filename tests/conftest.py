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
