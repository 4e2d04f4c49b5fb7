"""A throw-away copy of the project, and running its commands the way a user would.

Shared by tests/ and bench/; the pipeline itself never imports it.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from testing.warm import WARM_MODULES, WarmPython

REPO = Path(__file__).resolve().parent.parent
# Small enough that a full `dvc repro` takes seconds on two CPU cores.
TINY_PARAMS = {
    "model.image_size": 16,
    "pretrain.epochs": 1,
    "train.epochs": 2,
    "train.batch_size": 128,
    "pretrain.batch_size": 128,
    # Several batches with a short last one (the demo's val and test splits hold 179 images), so
    # that scores which depend on how evaluate batches the images show against the references.
    "evaluate.batch_size": 64,
    # Resume tests demand bit-identical checkpoints. The CPU gives them anyway; on CUDA they
    # need deterministic kernels (see docs/design.md, "On a GPU").
    "train.deterministic": torch.cuda.is_available(),
}


def set_params(project: Path, **overrides: object) -> None:
    """Edit the project's params.yaml; keys are dotted (train.lr=0.1 -> `train.lr`)."""
    path = project / "params.yaml"
    params = OmegaConf.load(path)
    for key, value in overrides.items():
        OmegaConf.update(params, key, value, force_add=False)
    OmegaConf.save(params, path)


def set_checked_params(project: Path, **overrides: object) -> None:
    """`set_params`, then check_params, as a user who edits params.yaml and runs a stage by
    hand must: every other stage refuses a params.yaml that check_params has not checked."""
    set_params(project, **overrides)
    stage("check_params", project)


def run(
    args: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None, **kwargs
) -> subprocess.CompletedProcess:
    """Run a command the way a user would, in `cwd`, capturing its output; `env` adds to
    (or replaces) this process's environment variables."""
    full_env = _command_env(env)
    result = None
    module = args[2] if args[:2] == [sys.executable, "-m"] and len(args) > 2 else ""
    if _warm_allowed and module.startswith(WARM_MODULES) and set(kwargs) <= {"timeout"}:
        result = _warm_python().run(module, args[3:], cwd, full_env, timeout=kwargs.get("timeout"))
    if result is None:
        result = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, **kwargs)
    return _checked(result, check)


def run_script(
    code: str, args: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -c code *args`, as `run` runs a command: for a test's script that patches a
    function and then runs a stage with runpy, as `python -m` would. In the warm interpreter
    where `run` would use it for a stage, so the script must not depend on what a fresh
    interpreter has not imported yet (torch, torchvision and the pipeline's libraries are)."""
    full_env = _command_env(env)
    result = _warm_python().run("", args, cwd, full_env, code=code) if _warm_allowed else None
    if result is None:
        result = subprocess.run(
            [sys.executable, "-c", code, *args], cwd=cwd, env=full_env, capture_output=True, text=True
        )
    return _checked(result, check)


def _command_env(env: dict[str, str] | None) -> dict[str, str]:
    """The environment of a command: `_plain_env`'s, where the tests allow it with the warm
    interpreter's stand-in as its `python` (testing/stand_in.py), for the stages DVC starts."""
    full_env = _plain_env(env)
    return full_env | _warm_python().variables(full_env["PATH"]) if _warm_allowed else full_env


def _plain_env(env: dict[str, str] | None = None) -> dict[str, str]:
    # DVC runs stage commands as `python -m ...`: make that this interpreter.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1", "PATH": path}


def _checked(result: subprocess.CompletedProcess, check: bool) -> subprocess.CompletedProcess:
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(result.args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


_warm: WarmPython | None = None
_warm_allowed = False


def allow_warm_python() -> None:
    """Let `run` start the project's modules, and DVC the stages, from a warm interpreter
    (testing/warm.py). The test suite does; benchmarks do not, since a user's stage pays for
    its own start-up."""
    global _warm_allowed
    _warm_allowed = True


def _warm_python() -> WarmPython:
    global _warm
    if _warm is None:
        _warm = WarmPython(_plain_env())
    return _warm


def stage(name: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run one stage's entry point: python -m pipeline.<name>."""
    return run([sys.executable, "-m", f"pipeline.{name}"], cwd, check=check)


def copy_repo_files(root: Path) -> None:
    """Copy the repo's files (tracked, and new ones not ignored) to `root`."""
    listing = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]
    files = subprocess.run(listing, cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in files.splitlines():
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)


def copy_project(source: Path, target: Path) -> Path:
    """A copy of a project at `target`, hard links kept: the workspace's DVC outputs stay
    links into its cache, as DVC made them (shutil.copytree would copy each link apart)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)
    return target


def make_project(root: Path) -> Path:
    """The repo's files (see copy_repo_files) in a fresh git repo at `root`, with TINY_PARAMS applied."""
    copy_repo_files(root)
    # As in a fresh clone, no dvc.lock: the repo commits none, and one in its working tree
    # (a local run's, which the quick start commits) belongs to other params than this copy's.
    (root / "dvc.lock").unlink(missing_ok=True)
    set_params(root, **TINY_PARAMS)
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.name", "test"], root)
    run(["git", "config", "user.email", "test@example.com"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "copy"], root)
    # Pack the ~2000 loose objects into one file: the tests copy projects hundreds of times,
    # and a packed one has half the files to copy (0.12 s instead of 0.24 s on a 2-core VM).
    run(["git", "gc", "-q"], root)
    return root
