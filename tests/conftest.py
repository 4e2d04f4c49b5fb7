"""Shared fixtures: a throw-away copy of the project, with tiny params, to run stages in, and
one that has been through the quick start's first `dvc repro`."""

import dataclasses
import fcntl
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from testing.project import allow_warm_python, copy_project, make_project, run, set_params
from tests.helpers import param_recorder_env

# pytest-xdist (`-n auto` in pyproject.toml) runs a worker per core. One torch thread per
# worker, and in the stages it starts, instead of each worker's torch taking every core:
# here, about 8 minutes for the suite instead of 10.7 (and 12.2 without workers).
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
allow_warm_python()  # the project's commands start from a warm interpreter: see testing/warm.py

# The end-to-end tests that take a minute or more. They start first, so that the workers
# are not left waiting on one of them at the end.
LONGEST_FIRST = (
    "test_pipeline.py", "test_resume.py", "test_distributed.py", "test_claims.py", "test_runs.py",
    "test_learning.py", "test_verify.py", "test_config.py", "test_recipes.py", "test_feature_cache.py",
    "test_faults.py", "test_text_labels.py", "test_check_params.py",
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


def once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], dict]) -> dict:
    """`build(folder)` once for the whole test run, however many pytest-xdist workers ask for
    it: the first to ask builds while any other waits. Returns what `build` returned (JSON).
    For projects that take a minute of stage processes to set up and that tests then copy."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent / name  # the workers' common folder
    shared.mkdir(exist_ok=True)
    with open(shared / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = shared / "record.json"
        if not record.exists():  # or a worker's build failed: this one tries again
            record.write_text(json.dumps(build(shared)))
        return json.loads(record.read_text())


def fresh_project(root: Path) -> dict:
    return {"path": str(make_project(root / "project"))}


@pytest.fixture
def project(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """A throw-away copy of the project, with tiny params, to run stages and dvc in: a copy
    of one made once per run (making one commits every file of the repo to a new git repo,
    seconds that dozens of tests would each spend)."""
    made = Path(once_per_run(tmp_path_factory, "fresh", fresh_project)["path"])
    return copy_project(made, tmp_path / "project")


SMALL_MODEL = {"model.arch": "shufflenet_v2_x0_5"}  # for tests of files and flow, not of models


def prepare_with(project: Path, params: dict[str, object], message: str) -> dict:
    """Set `params` in `project`, run its `weights` and `prepare` stages by `dvc repro`, and
    commit: a record for once_per_run."""
    set_params(project, **params)
    run([sys.executable, "-m", "dvc", "repro", "weights", "prepare"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", message], project)
    return {"path": str(project)}


def prepare_project(root: Path) -> dict:
    """A fresh project with a small model, its `weights` and `prepare` stages run and committed."""
    return prepare_with(make_project(root / "project"), SMALL_MODEL, "prepared")


@pytest.fixture(scope="session", autouse=True)
def temporary_files_in_the_run(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The processes the tests start (stages, torchrun and its ranks) keep their temporary
    files in this run's folder, which pytest deletes a few runs later: each torchrun leaves a
    torchelastic_* folder behind, and the suite would leave dozens in /tmp."""
    os.environ["TMPDIR"] = str(tmp_path_factory.mktemp("tmp"))


@pytest.fixture(scope="session")
def prepared_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`prepare_project`, once per run; tests copy it (`prepared`)."""
    return Path(once_per_run(tmp_path_factory, "prepared", prepare_project)["path"])


@pytest.fixture
def prepared(prepared_once: Path, tmp_path: Path) -> Path:
    """A copy of `prepared_once` for one test to change."""
    return copy_project(prepared_once, tmp_path / "project")


@dataclasses.dataclass(frozen=True)
class Reproduced:
    """A project after the README's quick start up to its commit: `dvc repro`, then
    `git add dvc.lock && git commit`. What the commands printed, for tests to check."""

    path: Path
    first_repro: str  # the output of `dvc repro` in the fresh project
    status_after_repro: list[str]  # `git status --porcelain` just after it
    second_repro: str  # the output of `dvc repro` run again at once
    params_read: Path  # what params each stage read in the first: pipeline.<stage>.json


def reproduce(root: Path) -> dict:
    project = make_project(root / "project")
    set_params(project, **SMALL_MODEL)
    run(["git", "commit", "-qam", "a small model"], project)
    dvc = [sys.executable, "-m", "dvc", "repro"]
    recorder = param_recorder_env(root / "recorder")
    first = run(dvc, project, env=recorder).stdout
    status = run(["git", "status", "--porcelain"], project).stdout.splitlines()
    second = run(dvc, project).stdout
    run(["git", "add", "dvc.lock"], project)
    run(["git", "commit", "-qm", "baseline run"], project)
    return {
        "path": str(project),
        "first_repro": first,
        "status_after_repro": status,
        "second_repro": second,
        "params_read": recorder["RECORD_PARAMS"],
    }


@pytest.fixture(scope="session")
def reproduced_once(tmp_path_factory: pytest.TempPathFactory) -> Reproduced:
    """`reproduce`, once per run (a minute of stage processes); tests copy it (`reproduced`)."""
    fields = once_per_run(tmp_path_factory, "reproduced", reproduce)
    return Reproduced(**{**fields, "path": Path(fields["path"]), "params_read": Path(fields["params_read"])})


@pytest.fixture
def reproduced(reproduced_once: Reproduced, tmp_path: Path) -> Reproduced:
    """A copy of `reproduced_once` for one test to change."""
    return dataclasses.replace(reproduced_once, path=copy_project(reproduced_once.path, tmp_path / "project"))
