"""Faults from outside: a full disk, Ctrl-C, SIGTERM and a closed pipe each end a stage with
one line and the conventional exit code, never a traceback, and leave every file intact."""

import multiprocessing
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.data import inspection
from testing.project import run, run_script, stage
from tests.helpers import assert_resumed


@pytest.fixture
def project(prepared: Path) -> Path:
    """A copy of the prepared project (conftest.py) for each test."""
    return prepared


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 1 MB tmpfs: too small for any checkpoint. Needs root (CI runs as root)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_during_a_checkpoint_save_is_one_line(project: Path, tiny_disk: Path) -> None:
    (project / ".cache").mkdir(exist_ok=True)
    (project / ".cache/runs").symlink_to(tiny_disk)
    result = stage("train", project, check=False)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "writing a checkpoint failed (is the disk full?)" in errors[0], result.stderr
    assert "every file written so far is complete" in errors[0]
    assert not list(tiny_disk.rglob("epoch_*.pt"))  # no partial checkpoint under its final name


@pytest.mark.parametrize(
    ("message", "failed_write"),
    [
        # torch's zip writer says a write failed (a full disk) in one of two ways...
        ("[enforce fail at inline_container.cc:595] . unexpected pos 4096 vs 3968", True),
        ("PytorchStreamWriter failed writing file data/0: file write failed", True),
        # ...and any other RuntimeError is a bug, not the disk: its traceback shows
        ("mat1 and mat2 shapes cannot be multiplied (2x8 and 4x3)", False),
    ],
)
def test_a_failed_checkpoint_write_is_one_line_and_other_errors_are_not_taken_for_one(
    project: Path, message: str, failed_write: bool
) -> None:
    script = (
        "import runpy, torch\n"
        "def failed_write(*args, **kwargs):\n"
        f"    raise RuntimeError({message!r})\n"
        "torch.save = failed_write\n"
        "runpy.run_module('pipeline.train', run_name='__main__')\n"
    )
    result = run_script(script, [], project, check=False)
    assert result.returncode == 1, result.stderr
    disk = "error: writing a checkpoint failed (is the disk full?); every file written so far is complete"
    if failed_write:
        assert "Traceback" not in result.stderr and disk in result.stderr, result.stderr
    else:
        assert f"RuntimeError: {message}" in result.stderr and disk not in result.stderr, result.stderr


def test_a_closed_pipe_ends_predict_quietly(project: Path) -> None:
    # A script that writes more lines than `head` reads, through run_stage, as predict does.
    script = (
        "from pipeline.cli import run_stage\n"
        "def main():\n"
        "    for i in range(100000):\n"
        "        print('line', i)\n"
        "run_stage(main)\n"
    )
    result = subprocess.run(
        f'{sys.executable} -c "{script}" | head -n 2', shell=True, cwd=project, capture_output=True, text=True
    )
    assert result.stdout.splitlines() == ["line 0", "line 1"]
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("point", "call", "code", "line"),
    [
        # The first step of epoch 2: the tiny params' 538 training images make 5 batches of 128.
        ("term", 6, 143, "terminated (SIGTERM)"),
        ("int", 6, 130, "interrupted"),
        # Inside the write of epoch 2's checkpoint, where torch.save turns the interrupt into
        # a RuntimeError of its zip writer.
        ("intsave", 2, 130, "interrupted while writing a checkpoint"),
    ],
)
def test_sigterm_and_ctrl_c_stop_with_one_line_and_the_next_run_resumes(
    project: Path, point: str, call: int, code: int, line: str
) -> None:
    result = run([sys.executable, "-m", "tests.kill_wrapper", point, str(call)], project, check=False)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    errors = [entry for entry in result.stderr.splitlines() if "pipeline: " in entry and line in entry]
    assert len(errors) == 1 and "every file written so far is complete" in errors[0], result.stderr
    assert_resumed(stage("train", project).stderr, after=1, epochs=2)


def test_decode_workers_keep_the_default_sigterm_and_leave_ctrl_c_to_the_stage() -> None:
    """Pool's shutdown SIGTERMs its workers and waits for them: a worker that inherited the
    stage's handler instead could outlive it and hang the stage. Ctrl-C reaches every process
    of the terminal's group: each worker would print its own KeyboardInterrupt traceback
    beside the stage's one line, so workers ignore it."""
    # A handler for each, as run_stage installs.
    previous = {number: signal.signal(number, lambda *_: None) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        with multiprocessing.Pool(1, inspection._start_worker) as pool:
            assert pool.apply(signal.getsignal, (signal.SIGTERM,)) == signal.SIG_DFL
            assert pool.apply(signal.getsignal, (signal.SIGINT,)) == signal.SIG_IGN
    finally:
        for number, earlier in previous.items():
            signal.signal(number, earlier)
