"""Run folders (pipeline/runs.py): a moved project, queued and --temp experiments and a rerun after DVC
lost the outputs all resume; a second trainer is refused; old folders are bounded."""

import errno
import fcntl
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pipeline.config import load_params
from pipeline.runs import RunFolder, fingerprint, publish
from pipeline.train import run_folder
from testing.project import run, stage
from tests.helpers import commit_numbered_epochs, epochs_trained, kill_env, restore_targets

EPOCHS = 2  # TINY_PARAMS


@pytest.fixture
def project(prepared: Path) -> Path:
    """A copy of the prepared project (conftest.py) for each test."""
    return prepared


def killed_after_epoch_one(project: Path) -> None:
    result = run([sys.executable, "-m", "tests.kill_wrapper", "publish", "1"], project, check=False)
    assert result.returncode == -signal.SIGKILL, result.stderr


def run_folders(project: Path) -> list[Path]:
    return sorted((project / ".cache/runs").iterdir())


def test_a_moved_project_resumes(project: Path, tmp_path: Path) -> None:
    killed_after_epoch_one(project)
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.move(project, moved)
    # Bytecode another Python left beside the code: not the code, so no other run.
    (moved / "pipeline/__pycache__").mkdir(exist_ok=True)
    (moved / "pipeline/__pycache__/engine.cpython-39.pyc").write_bytes(b"another Python's bytecode")
    log = stage("train", moved).stderr
    assert "resuming after epoch 1" in log
    assert epochs_trained(log) == [2]


def test_a_project_copied_to_another_file_system_fingerprints_its_runs_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another file system lists pipeline/'s files in another order (ext4 by a hash of the name
    with its own seed, tmpfs by creation, btrfs by inode): the same code is the same run there,
    which resumes. Here the order this one lists reversed, so it differs whatever it was."""
    shaping = {"train": {"lr": 0.01}}
    here = fingerprint(shaping, [])
    listed = Path.rglob

    def reversed_listing(self: Path, pattern: str) -> Iterator[Path]:
        return reversed(list(listed(self, pattern)))

    monkeypatch.setattr(Path, "rglob", reversed_listing)
    assert fingerprint(shaping, []) == here


def queue_when_done(project: Path, timeout: float = 300) -> str:
    """`dvc queue status` once it shows no queued or running experiment (docs/results.md: wait
    until it shows none)."""
    deadline = time.monotonic() + timeout
    while True:
        status = run([sys.executable, "-m", "dvc", "queue", "status"], project).stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(1)


def test_a_queued_experiment_killed_mid_train_resumes_in_a_temp_experiment(project: Path, tmp_path: Path) -> None:
    """docs/fine-tuning.md's commands: `dvc exp run --queue`, then `dvc queue start`, whose
    worker runs the experiment in the background; `dvc queue status` and `dvc queue logs`
    say how it went. Queued and `--temp` experiments run in throw-away copies of the project;
    the run folder is the project's, so what one of them trained survives it."""
    dvc = [sys.executable, "-m", "dvc"]
    # The queue's worker starts the train stage; its 6th optimizer step (the first of epoch
    # 2) SIGKILLs it.
    env = kill_env(tmp_path / "site", "step", 6)
    run([*dvc, "exp", "run", "--queue", "--name", "killed"], project, env=env)
    run([*dvc, "queue", "start"], project, env=env)
    status = queue_when_done(project)
    assert re.search(r"^\S+\s+killed\s.*\bFailed\b", status, re.MULTILINE), status
    log = run([*dvc, "queue", "logs", "killed"], project).stdout
    # DVC runs the command through a shell: it reports -9 when the shell exec'd python, 137 when
    # the shell outlived it (which one depends on the shell).
    assert re.search(r"failed to run: python -m pipeline.train, exited with (-9|137)\n", log), log
    assert epochs_trained(log) == [1]
    # The images prepare decoded in the workspace are the project's: not decoded again.
    assert "decoded" not in log

    result = run([*dvc, "exp", "run", "--temp", "train"], project)  # up to train: what resumes
    assert "resuming after epoch 1" in result.stdout + result.stderr
    assert epochs_trained(result.stdout + result.stderr) == [2]


def test_a_second_trainer_is_refused_and_told_who_has_the_run(project: Path) -> None:
    killed_after_epoch_one(project)
    (folder,) = run_folders(project)
    # The first trainer: this process takes the run's folder the way train takes it before its first epoch
    # (a lock taken by hand here would hide a trainer whose own lock lets a second one in).
    first = RunFolder(folder.name, **json.loads((folder / "run.json").read_text()), root=folder.parent)
    first.acquire()
    try:
        result = stage("train", project, check=False)
    finally:
        first._lock.close()  # as the first trainer's end releases its flock
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"another trainer (pid {os.getpid()}) is training this run in .cache/runs/{folder.name}" in result.stderr
    # The holder gone, the run resumes, and the lock names that trainer alone.
    assert "resuming after epoch 1" in stage("train", project).stderr
    holder = (folder / ".lock").read_text()
    assert re.fullmatch(r"pid \d+", holder) and holder != f"pid {os.getpid()}", holder


def test_a_finished_run_is_republished_not_retrained(project: Path) -> None:
    stage("train", project)
    (folder,) = run_folders(project)
    assert (folder / "finished").is_file()
    # A kill after training but before DVC recorded the outputs: DVC deletes them and reruns.
    # (A file that a run by hand left in checkpoints/ goes too: it holds this run's epochs alone.)
    shutil.rmtree(project / "checkpoints")
    (project / "checkpoints").mkdir()
    (project / "checkpoints" / f"epoch_{EPOCHS + 1:03d}.pt").write_bytes(b"a longer run's")
    log = stage("train", project).stderr
    assert f"resuming after epoch {EPOCHS}" in log
    assert epochs_trained(log) == []
    published = sorted((project / "checkpoints").iterdir())
    assert [path.name for path in published] == [f"epoch_{epoch:03d}.pt" for epoch in range(1, EPOCHS + 1)]
    # Hard links to the run folder's files (docs/design.md): the checkpoints take their disk space once.
    assert all(path.samefile(folder / path.name) for path in published)


def test_old_run_folders_are_reported_and_only_the_newest_kept(project: Path) -> None:
    runs = project / ".cache/runs"
    now = time.time()
    # Newest first, their names in no order of age: only the folders' times tell the newest.
    for age, name in enumerate(["old1", "old3", "old0", "old4", "old2"]):
        (runs / name).mkdir(parents=True)
        (runs / name / "epoch_001.pt").write_bytes(b"x" * 1_000_000)
        os.utime(runs / name, (now - 100 * (age + 1), now - 100 * (age + 1)))
    log = stage("train", project).stderr
    assert "5 other run folder(s) in .cache/runs (5 unfinished, 5 MB)" in log
    assert "removed the unfinished run folder .cache/runs/old4" in log
    assert "removed the unfinished run folder .cache/runs/old2" in log
    assert sorted(p.name for p in runs.iterdir() if p.name.startswith("old")) == ["old0", "old1", "old3"]


def test_a_run_folder_that_a_live_trainer_holds_is_never_removed(project: Path) -> None:
    runs = project / ".cache/runs"
    names = ["new2", "new1", "new0", "held"]  # newest first: "held" is the one beyond the newest 3
    for name in names:
        (runs / name).mkdir(parents=True)
    with open(runs / "held" / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a live trainer holds it
        now = time.time()
        for age, name in enumerate(names):  # after the lock file, whose creation touches its folder
            os.utime(runs / name, (now - 100 * (age + 1), now - 100 * (age + 1)))
        log = stage("train", project).stderr
    assert "4 other run folder(s)" in log
    assert "removed" not in log
    assert all((runs / name).is_dir() for name in names)


def test_a_run_on_another_device_is_another_run(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The device type shapes a run (bf16 autocast on CUDA, other kernels): a CPU run and a
    CUDA run of the same params never resume each other's epochs, nor take over each other's
    folders (their lineages differ too)."""
    monkeypatch.chdir(project)
    params = load_params(Path("params.yaml"))
    cpu, cuda = (run_folder(params, torch.device(kind)) for kind in ("cpu", "cuda"))
    assert cpu.fingerprint != cuda.fingerprint and cpu.lineage != cuda.lineage
    assert run_folder(params, torch.device("cpu")).fingerprint == cpu.fingerprint  # and the same device, the same run
    # Each process of a run on several GPUs has its own (cuda:0, cuda:1...): still the one run,
    # which a run killed on one GPU resumes on another.
    assert {run_folder(params, torch.device("cuda", index)).fingerprint for index in (0, 1)} == {cuda.fingerprint}


def test_a_checkpoint_is_copied_where_a_hard_link_cannot_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """checkpoints/ on another file system than .cache/runs (a link fails with EXDEV, as
    across mounts): the checkpoint is copied instead, the same bytes."""
    source, output = tmp_path / "run" / "epoch_001.pt", tmp_path / "checkpoints"
    source.parent.mkdir()
    output.mkdir()
    source.write_bytes(b"a checkpoint's bytes")

    def across_mounts(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", across_mounts)
    publish(source, output)
    assert (output / "epoch_001.pt").read_bytes() == source.read_bytes()


def left_by_a_trainer(root: Path, name: str, settings: dict[str, int], epochs: int, finished: bool) -> RunFolder:
    """The folder a trainer of lineage "lineage" under `settings` left after `epochs` epochs
    (`commit_numbered_epochs`), its process gone."""
    folder = RunFolder(name, "lineage", settings, root=root, output=root.parent / f"{name}_checkpoints")
    folder.acquire()
    folder.output.mkdir()
    commit_numbered_epochs(folder, epochs)
    if finished:
        folder.finish()
    folder._lock.close()  # as its process's end releases the flock
    return folder


def test_a_rerun_under_other_threads_takes_over_the_killed_run_not_a_finished_or_empty_one(tmp_path: Path) -> None:
    """docs/distributed.md: a run with no epochs of its own takes over the unfinished run folder of
    its params but the thread or process count, and a finished run is never taken over. Beside
    the killed run (one epoch, under 3 threads) lie two newer folders of the same lineage: a
    finished run (2 threads, both epochs) and a run killed before its first epoch (5 threads).
    The newest with epochs to go on from, the killed one, is taken; the finished one stays whole."""
    root = tmp_path / "runs"
    killed = left_by_a_trainer(root, "killed", {"train.threads": 3}, epochs=1, finished=False)
    done = left_by_a_trainer(root, "done", {"train.threads": 2}, epochs=2, finished=True)
    empty = left_by_a_trainer(root, "empty", {"train.threads": 5}, epochs=0, finished=False)
    now = time.time()
    for age, folder in enumerate((empty, done, killed)):  # newest first, so the newest would be taken
        os.utime(folder.path, (now - 100 * (age + 1), now - 100 * (age + 1)))

    rerun = RunFolder("rerun", "lineage", {"train.threads": 0}, root=root, output=tmp_path / "checkpoints")
    model, optimizer, scheduler = restore_targets()
    history = rerun.restore(model, optimizer, scheduler)

    assert [record["epoch"] for record in history] == [1]
    assert torch.equal(model.weight, torch.full((2, 2), 1.0))  # the killed run's epoch 1
    assert sorted(path.name for path in rerun.path.glob("epoch_*.pt")) == ["epoch_001.pt"]
    assert not killed.path.exists()
    assert sorted(path.name for path in done.path.glob("epoch_*.pt")) == ["epoch_001.pt", "epoch_002.pt"]
    assert (done.path / "finished").is_file()
