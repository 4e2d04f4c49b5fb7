"""The warm interpreter (testing/warm.py), which runs most of the suite's stage and tool
commands, does what `python -m` does: the same exit code, output and files as a fresh
process, which is what a user's command is. Every test that runs a command warm rests on it."""

import subprocess
import sys
from pathlib import Path

from testing import project as project_module
from testing.project import run, set_params
from tests.conftest import Reproduced


def cold(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`args` as a fresh process, as a user (or DVC) starts it."""
    return subprocess.run(args, cwd=cwd, env=project_module._command_env(None), capture_output=True, text=True)


def files_in(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` but Python's bytecode: its size and time of change."""
    return {
        path.relative_to(folder).as_posix(): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_a_warm_command_gives_what_a_fresh_python_gives(reproduced: Reproduced) -> None:
    project = reproduced.path
    predict = [sys.executable, "-m", "tools.predict", "data/digits/target/5", "--format", "json", "--tta", "hflip"]
    assert project_module._runs_warm(predict, project_module._command_env(None))  # else both would be cold
    before = files_in(project)
    warm, fresh = run(predict, project), cold(predict, project)
    assert (warm.returncode, warm.stdout, warm.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert warm.stdout.count('"path"') == len(list((project / "data/digits/target/5").iterdir()))
    assert files_in(project) == before  # the README: tools.predict writes no file

    # A refusal: the same one line and exit code 2.
    set_params(project, **{"train.lr": -1.0})
    check = [sys.executable, "-m", "pipeline.check_params"]
    warm, fresh = run(check, project, check=False), cold(check, project)
    assert (warm.returncode, warm.stdout, warm.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert warm.returncode == 2 and "train.lr = -1.0" in warm.stderr, warm.stderr
