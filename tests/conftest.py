"""Shared fixtures: a throw-away copy of the project, with tiny params, to run stages in."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent

# pytest-xdist (`-n auto` in pyproject.toml) runs a worker per core. One torch thread per
# worker, and in the stages it starts, instead of each worker's torch taking every core:
# here, about 8 minutes for the suite instead of 10.7 (and 12.2 without workers).
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# Small enough that a full `dvc repro` takes seconds on two CPU cores.
TINY_PARAMS = {
    "model.image_size": 16,
    "pretrain.epochs": 1,
    "train.epochs": 2,
    "train.batch_size": 128,
    "pretrain.batch_size": 128,
}


def set_params(project: Path, **overrides: object) -> None:
    """Edit the project's params.yaml; keys are dotted (train.lr=0.1 -> `train.lr`)."""
    path = project / "params.yaml"
    params = OmegaConf.load(path)
    for key, value in overrides.items():
        OmegaConf.update(params, key, value, force_add=False)
    OmegaConf.save(params, path)


def run(args: list[str], cwd: Path, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run a command the way a user would, in `cwd`, capturing its output."""
    # DVC runs stage commands as `python -m ...`: make that this interpreter.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PATH": path}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def stage(name: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run one stage's entry point: python -m pipeline.<name>."""
    return run([sys.executable, "-m", f"pipeline.{name}"], cwd, check=check)


def make_project(root: Path) -> Path:
    """Copy the repo's files (tracked, and new ones not ignored) into a fresh git repo at
    `root`, with TINY_PARAMS applied."""
    listing = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]
    files = subprocess.run(listing, cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in files.splitlines():
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    # Locked results belong to the real repo's default params, not to this copy's.
    (root / "dvc.lock").unlink(missing_ok=True)
    set_params(root, **TINY_PARAMS)
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.name", "test"], root)
    run(["git", "config", "user.email", "test@example.com"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "copy"], root)
    return root


# The end-to-end tests that take a minute or more. They start first, so that the workers
# are not left waiting on one of them at the end.
LONGEST_FIRST = (
    "test_pipeline.py", "test_resume.py", "test_claims.py", "test_learning.py", "test_config.py",
    "test_feature_cache.py", "test_recipes.py",
)  # fmt: skip


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    """`python -m pytest -p no:xdist` runs the suite in one process: pyproject.toml's addopts
    still pass xdist's -n and --dist, so accept (and ignore) them when xdist is switched off."""
    if not pluginmanager.has_plugin("xdist"):
        group = parser.getgroup("xdist (switched off)")
        # _addoption, as xdist itself registers -n: pytest reserves lower-case short options.
        group._addoption("-n", "--numprocesses", dest="numprocesses", default=None, help="ignored: xdist is off")
        group.addoption("--dist", dest="dist", default="no", help="ignored: xdist is off")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        return LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file is kept


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A throw-away copy of the project, with tiny params, to run stages and dvc in."""
    return make_project(tmp_path / "project")
