"""Shared fixtures: a throw-away copy of the project, with tiny params, to run stages in."""

import os
from pathlib import Path

import pytest

from testing.project import make_project

# pytest-xdist (`-n auto` in pyproject.toml) runs a worker per core. One torch thread per
# worker, and in the stages it starts, instead of each worker's torch taking every core:
# here, about 8 minutes for the suite instead of 10.7 (and 12.2 without workers).
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# The end-to-end tests that take a minute or more. They start first, so that the workers
# are not left waiting on one of them at the end.
LONGEST_FIRST = (
    "test_pipeline.py", "test_resume.py", "test_claims.py", "test_runs.py", "test_learning.py", "test_verify.py",
    "test_config.py", "test_recipes.py", "test_feature_cache.py", "test_faults.py", "test_text_labels.py",
    "test_check_params.py",
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
