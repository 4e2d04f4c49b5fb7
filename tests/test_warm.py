"""The warm interpreter (testing/warm.py), which runs most of the suite's stage and tool
commands, does what `python -m` does: the same exit code, output and files as a fresh
process, which is what a user's command is; and the `python` stand-in that DVC's stages
start through (testing/stand_in.py) acts as that process would, signals included. Every
test that runs a command warm rests on these."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testing import project as project_module
from testing.project import run, set_params
from tests.conftest import Reproduced
from tests.helpers import processes_in


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
    before = files_in(project)
    warm = project_module._warm_python().run(predict[2], predict[3:], project, project_module._command_env(None))
    assert warm is not None  # else it did not run warm
    fresh = cold(predict, project)
    assert (warm.returncode, warm.stdout, warm.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert warm.stdout.count('"path"') == len(list((project / "data/digits/target/5").iterdir()))
    assert files_in(project) == before  # the README: tools.predict writes no file

    # A refusal: the same one line and exit code 2.
    set_params(project, **{"train.lr": -1.0})
    check = [sys.executable, "-m", "pipeline.check_params"]
    warm, fresh = run(check, project, check=False), cold(check, project)
    assert (warm.returncode, warm.stdout, warm.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert warm.returncode == 2 and "train.lr = -1.0" in warm.stderr, warm.stderr


# A module of a project's own (tools.*, which the warm interpreter runs): it says which process
# runs it, then does what its argument says. Its wait sleeps in slices because Python runs a
# signal's handler between bytecodes: a signal that lands after "to stderr" but before one long
# sleep's system call would wait for the sleep's end, in any Python process.
PROBE = """\
import os
import random
import sys
import time

import numpy

print(os.getpid(), os.getppid(), os.getpgrp(), os.getcwd(), os.environ.get("PROBE"), flush=True)
print(numpy.random.randint(2**31), random.getrandbits(31), flush=True)
print("to stderr", file=sys.stderr, flush=True)
if sys.argv[1] == "wait":
    for _ in range(600):  # in slices: see above
        time.sleep(0.1)
sys.exit(int(sys.argv[1]))
"""


@pytest.fixture
def probe_project(tmp_path: Path) -> Path:
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "__init__.py").write_text("")
    (tmp_path / "tools" / "probe.py").write_text(PROBE)
    return tmp_path


def stand_in(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    """`python *args` as DVC starts a stage: `python` looked up on the tests' PATH."""
    full_env = project_module._command_env(env)
    return subprocess.Popen(
        ["python", *args], cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_the_stand_in_runs_a_stage_warm_as_its_own_process_would(probe_project: Path) -> None:
    process = stand_in(["-m", "tools.probe", "3"], probe_project, PROBE="passed")
    out, err = process.communicate(timeout=60)
    pid, parent, group, cwd, variable, *draws = out.split()
    assert process.returncode == 3 and err == "to stderr\n"
    assert (cwd, variable) == (str(probe_project), "passed")
    # Not the stand-in's process: a child of the warm interpreter, in a process group of its own.
    assert int(pid) != process.pid and int(parent) != process.pid and int(group) == int(pid)

    # numpy's and Python's generators are seeded from the OS in each fresh process: as in another run.
    again = stand_in(["-m", "tools.probe", "0"], probe_project).communicate(timeout=60)[0].split()
    assert again[0] != pid and all(a != b for a, b in zip(again[5:], draws, strict=True))

    # An environment that starts Python otherwise: the stand-in becomes the real interpreter.
    process = stand_in(["-m", "tools.probe", "0"], probe_project, PYTHONHASHSEED="7")
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0 and int(out.split()[0]) == process.pid


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_a_signal_to_the_stand_in_ends_the_stage_as_it_ends_a_real_one(probe_project: Path, number: int) -> None:
    """The same exit status and stderr as the real interpreter's (which the stand-in becomes
    under another hash seed), and a killed stand-in takes its child with it."""
    ended = {}
    for how, env in {"warm": {}, "real": {"PYTHONHASHSEED": "7"}}.items():
        process = stand_in(["-m", "tools.probe", "wait"], probe_project, **env)
        pid = int(process.stdout.readline().split()[0])
        assert (pid != process.pid) == (how == "warm")
        process.stderr.readline()  # "to stderr": it is waiting now
        process.send_signal(number)
        ended[how] = (process.wait(timeout=30), process.stderr.read().splitlines()[-1:])
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists()
    assert ended["warm"] == ended["real"]
    assert ended["warm"][0] == -number


def test_a_warm_command_past_its_timeout_is_killed_as_subprocess_run_kills_one(probe_project: Path) -> None:
    waits = [sys.executable, "-m", "tools.probe", "wait"]
    with pytest.raises(subprocess.TimeoutExpired):
        run(waits, probe_project, timeout=3)
    deadline = time.monotonic() + 10
    while processes_in(probe_project) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_in(probe_project) == []
