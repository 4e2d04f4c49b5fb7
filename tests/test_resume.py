"""Kill the train stage with SIGKILL at several points, re-run it, and get the uninterrupted result.

The kills come from inside the real stage process (tests/kill_wrapper.py patches one
function to SIGKILL itself at a chosen call), so each lands exactly where intended:
mid-epoch, mid-checkpoint-write, or between epochs. One more test kills `dvc repro`
with its train stage, at an exact optimizer step, the way `kill -9` on its process group
would. Each resumed run must log where it resumed and train only the remaining epochs.
"""

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pipeline.checkpoints import load_checkpoint, save_checkpoint
from pipeline.runs import RunFolder
from pipeline.train import run_threads
from testing.compare import assert_same_run
from testing.project import copy_project, run, set_checked_params, stage
from tests.helpers import assert_resumed, commit_numbered_epochs, epochs_trained, kill_env, restore_targets

WRAPPER = [sys.executable, "-m", "tests.kill_wrapper"]
EPOCHS = 3


STATES = ("model_state_dict", "ema_state_dict")


def train_killed_at(project: Path, point: str, call: int) -> subprocess.CompletedProcess:
    result = run([*WRAPPER, point, str(call)], project, check=False)
    assert result.returncode == -signal.SIGKILL, result.stderr
    return result


def final_state(project: Path) -> list[dict]:
    """Every checkpoint in checkpoints/, loaded, in epoch order."""
    paths = sorted((project / "checkpoints").glob("epoch_*.pt"))
    assert [p.name for p in paths] == [f"epoch_{e:03d}.pt" for e in range(1, EPOCHS + 1)]
    return [load_checkpoint(path) for path in paths]


@pytest.fixture(scope="module")
def reference(prepared_once: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """A project with prepare and weights done, and an uninterrupted train run's checkpoints."""
    project = copy_project(prepared_once, tmp_path_factory.mktemp("reference") / "project")
    set_checked_params(project, **{"train.epochs": EPOCHS})
    stage("train", project)
    (folder,) = (project / ".cache" / "runs").iterdir()
    assert (folder / "finished").is_file(), "a finished run keeps its folder, marked finished"
    return project, final_state(project)


@pytest.fixture
def trained(reference: tuple[Path, list[dict]], tmp_path: Path) -> tuple[Path, list[dict]]:
    """A fresh copy of the reference project, decoded-image cache included, for one test to kill runs in.
    Without the reference run's (finished) folder: a rerun would only republish its epochs."""
    project = tmp_path / "project"
    copy_project(reference[0], project)
    shutil.rmtree(project / ".cache" / "runs")
    return project, reference[1]


# (what the wrapper patches, which call of it kills the process)
KILL_POINTS = {
    "mid-epoch": ("step", 8),  # 5 steps per epoch: the 3rd step of epoch 2
    "mid-checkpoint-write": ("save", 2),  # epoch 2's file half written
    "between-epochs": ("publish", 1),  # right after epoch 1's checkpoint is in place
}


@pytest.mark.parametrize("where", KILL_POINTS)
def test_resume_after_sigkill_gives_the_uninterrupted_result(
    reference: tuple[Path, list[dict]], trained: tuple[Path, list[dict]], where: str
) -> None:
    project, expected = trained
    train_killed_at(project, *KILL_POINTS[where])
    if where == "mid-checkpoint-write":  # the kill left a half-written file in the run folder...
        assert list((project / ".cache" / "runs").rglob(".*.tmp"))
    resumed = stage("train", project)
    assert_resumed(resumed.stderr, after=1, epochs=EPOCHS)
    assert_same_run(final_state(project), expected)
    assert not list((project / ".cache" / "runs").rglob(".*.tmp"))  # ...which the resumed run removes
    # The dvclive curves hold every epoch, the ones before the kill replayed from the checkpoints.
    assert curves(project) == curves(reference[0])


# Every training recipe that keeps state from step to step or draws at random: the weights'
# moving average, clipping, layer-wise rates, (the default) no decay on norms and biases,
# the augmentation policies, erasing and mixing; on a partly frozen model. A rate schedule
# too: under the default constant one a resumed run that lost its place in the schedule
# would still train at the right rate (cosine over 3 epochs: 1, 0.75, 0.25).
RECIPES = {
    "freeze": "first:2",
    "train.schedule": "cosine",
    "train.ema_decay": 0.9,
    "train.clip_grad_norm": 0.5,
    "train.layer_decay": 0.8,
    "train.augment.hflip": True,
    "train.augment.min_scale": 0.5,  # random resized crops, cut from the training copies on threads
    "train.augment.policy": "trivialaugment",
    "train.augment.erasing": 0.25,
    "train.augment.mixup_alpha": 0.2,
    "train.augment.cutmix_alpha": 1.0,
}


# The other policies, each in a run of its own (their draws are tested per image in test_augment.py).
OTHER_POLICIES = {
    "randaugment": {"train.augment.policy": "randaugment", "train.augment.randaugment_ops": 3,
                    "train.augment.randaugment_magnitude": 15, "train.ema_decay": 0.9},
    "autoaugment": {"train.augment.policy": "autoaugment", "train.ema_decay": 0.9},
}  # fmt: skip


@pytest.mark.parametrize("recipe", [RECIPES, *OTHER_POLICIES.values()], ids=["every-recipe", *OTHER_POLICIES])
def test_resume_after_sigkill_with_every_training_recipe_gives_the_uninterrupted_result(
    prepared_once: Path, tmp_path: Path, recipe: dict
) -> None:
    project = copy_project(prepared_once, tmp_path / "project")
    set_checked_params(project, **{"train.epochs": EPOCHS, "freeze": "first:2", **recipe})
    stage("train", project)
    expected = final_state(project)
    assert all(checkpoint["ema_updates"] == 5 * checkpoint["epoch"] for checkpoint in expected)  # 5 steps an epoch
    start = load_checkpoint(project / "models/start.pt")["model_state_dict"]
    for checkpoint in expected:  # the frozen stages, in the weights and in their average, are the start's
        frozen = [k for k in start if k.split(".")[0] in checkpoint["frozen_modules"]]
        assert frozen and all(torch.equal(checkpoint[part][k], start[k]) for k in frozen for part in STATES)
    shutil.rmtree(project / ".cache" / "runs")
    train_killed_at(project, *KILL_POINTS["mid-epoch"])
    assert_resumed(stage("train", project).stderr, after=1, epochs=EPOCHS)
    assert_same_run(final_state(project), expected)


def curves(project: Path) -> dict[str, list[list[str]]]:
    """dvclive's per-epoch curves, as rows of (step, value); timings left out."""
    folder = project / "dvclive" / "train" / "plots" / "metrics"
    tables = {}
    for path in sorted(folder.rglob("*.tsv")):
        if path.stem != "epoch_seconds":
            header, *rows = (line.split("\t") for line in path.read_text().splitlines())
            keep = [i for i, column in enumerate(header) if column != "timestamp"]
            tables[path.relative_to(folder).as_posix()] = [[row[i] for i in keep] for row in rows]
    assert {"train/loss.tsv", "val/loss.tsv", "val/accuracy.tsv", "lr.tsv"} <= set(tables)
    return tables


def test_damaged_checkpoint_falls_back_to_the_last_good_one(trained: tuple[Path, list[dict]]) -> None:
    project, expected = trained
    train_killed_at(project, "publish", 2)  # epochs 1 and 2 done
    (run_dir,) = (project / ".cache" / "runs").iterdir()
    damaged = run_dir / "epoch_002.pt"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))

    resumed = stage("train", project)
    assert f"{damaged.relative_to(project)} is damaged" in resumed.stderr
    assert_resumed(resumed.stderr, after=1, epochs=EPOCHS)
    assert_same_run(final_state(project), expected)


def test_other_params_or_weights_never_resume_another_run(trained: tuple[Path, list[dict]]) -> None:
    project, expected = trained
    train_killed_at(project, "publish", 1)
    set_checked_params(project, **{"train.lr": 0.02})
    other = stage("train", project)
    assert "resuming" not in other.stderr
    assert epochs_trained(other.stderr) == list(range(1, EPOCHS + 1))
    assert [c["lr"] for c in final_state(project)] == [0.02] * EPOCHS

    # The killed run's params with other starting weights: not its run either.
    set_checked_params(project, **{"train.lr": 0.01})
    start = project / "models" / "start.pt"
    kept = start.read_bytes()
    weights = load_checkpoint(start)
    name = next(name for name, tensor in weights["model_state_dict"].items() if tensor.is_floating_point())
    weights["model_state_dict"][name] = weights["model_state_dict"][name] + 0.01
    save_checkpoint(weights, start)
    other = stage("train", project)
    assert "resuming" not in other.stderr
    assert epochs_trained(other.stderr) == list(range(1, EPOCHS + 1))

    # Its params and weights under other code (a comment added to a module of pipeline/,
    # all of which DVC tracks for the stage): not its run either.
    start.write_bytes(kept)
    engine = project / "pipeline" / "engine.py"
    code = engine.read_text()
    engine.write_text(code + "# another version of the pipeline\n")
    other = stage("train", project)
    assert "resuming" not in other.stderr
    assert epochs_trained(other.stderr) == list(range(1, EPOCHS + 1))
    engine.write_text(code)

    # Back to the killed run's params, weights and code: it resumes.
    resumed = stage("train", project)
    assert_resumed(resumed.stderr, after=1, epochs=EPOCHS)
    assert_same_run(final_state(project), expected)

    # Nor is that run, finished now, taken (republished) for one under another select.metric,
    # which early stopping watches, or on another split of the same images (prepare.seed).
    set_checked_params(project, **{"select.metric": "val_accuracy", "select.mode": "max"})
    other = stage("train", project)
    assert epochs_trained(other.stderr) == list(range(1, EPOCHS + 1))
    set_checked_params(project, **{"select.metric": "val_loss", "select.mode": "min", "prepare.seed": 1})
    manifest = (project / "data/prepared/manifest.csv").read_bytes()
    cached = sorted(path.name for path in (project / ".cache/images").iterdir())
    stage("prepare", project)
    assert (project / "data/prepared/manifest.csv").read_bytes() != manifest
    other = stage("train", project)
    assert epochs_trained(other.stderr) == list(range(1, EPOCHS + 1))
    # Another split of the same images shares their decoded cache: nothing decoded into a new file.
    assert sorted(path.name for path in (project / ".cache/images").iterdir()) == cached
    assert "decoded" not in other.stderr


def test_nan_loss_stops_with_the_epoch_and_batch_and_keeps_earlier_checkpoints(
    trained: tuple[Path, list[dict]],
) -> None:
    project, expected = trained
    result = run([*WRAPPER, "nan", "8"], project, check=False)  # epoch 2, batch 2
    assert result.returncode == 2
    assert "epoch 2, batch 2" in result.stderr
    assert "Traceback" not in result.stderr
    kept = sorted((project / "checkpoints").glob("*.pt"))
    assert [p.name for p in kept] == ["epoch_001.pt"]
    assert_same_run([load_checkpoint(kept[0])], expected[:1])


def test_dvc_repro_killed_from_outside_resumes_on_the_next_repro(
    trained: tuple[Path, list[dict]], tmp_path: Path
) -> None:
    project, expected = trained
    dvc = [sys.executable, "-m", "dvc", "repro"]
    # At the 3rd optimizer step of epoch 2 (5 steps per epoch), the train stage SIGKILLs its
    # process group: dvc repro and the stage die together, at an exact point.
    env = kill_env(tmp_path / "site", "step", 8, group=True)
    killed = subprocess.run(dvc, cwd=project, env=env, start_new_session=True, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert epochs_trained(killed.stdout + killed.stderr) == [1]

    output = run([*dvc, "train"], project)  # up to train: what resumes
    assert "Running stage 'train'" in output.stdout
    assert_resumed(output.stdout + output.stderr, after=1, epochs=EPOCHS)
    # The same as the reference project's uninterrupted run of the same params.
    assert_same_run(final_state(project), expected)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_evaluate_refuses_a_damaged_checkpoint_and_names_it(trained: tuple[Path, list[dict]], damage: str) -> None:
    """Two checkpoints damaged, one each way: one error line names every damaged file."""
    project, _ = trained
    for epoch, how in ((2, damage), (1, "flip" if damage == "truncate" else "truncate")):
        path = project / "checkpoints" / f"epoch_00{epoch}.pt"
        data = bytearray(path.read_bytes())
        if how == "truncate":
            data = data[: len(data) // 3]
        else:
            data[len(data) // 2] ^= 0xFF
        path.unlink()  # a hard link to the run's files: replace, don't edit in place
        path.write_bytes(bytes(data))

    result = stage("evaluate", project, check=False)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    assert f"2 of {len(list((project / 'checkpoints').glob('*.pt')))} checkpoints cannot be used" in errors[0]
    assert "checkpoints/epoch_001.pt is damaged" in errors[0] and "checkpoints/epoch_002.pt is damaged" in errors[0]
    assert "Traceback" not in result.stderr
    assert not (project / "eval" / "scores.csv").exists()


@contextlib.contextmanager
def decoys_beside(killed: Path) -> Iterator[list[str]]:
    """Run folders beside a killed run's, newest first: a copy of it that a live trainer holds
    (its lock taken for the block), three folders of other runs, the killed run, then an
    older copy of it under other settings. A run that takes over the killed one must pass
    over the held copy and the older one, and take it before removing folders beyond the
    newest three."""
    runs = killed.parent
    for name, threads in (("held", 7), ("older", 5)):
        shutil.copytree(killed, runs / name, ignore=shutil.ignore_patterns(".lock"))
        record = json.loads((runs / name / "run.json").read_text())
        record["settings"]["train.threads"] = threads
        (runs / name / "run.json").write_text(json.dumps(record))
    for name in ("other1", "other2", "other3"):
        (runs / name).mkdir()
    names = ["held", "other1", "other2", "other3", killed.name, "older"]
    with open(runs / "held" / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a live trainer holds it
        now = time.time()
        for age, name in enumerate(names):  # after the lock file, whose creation touches its folder
            os.utime(runs / name, (now - 100 * (age + 1), now - 100 * (age + 1)))
        yield names


def test_a_resumed_run_keeps_its_cpu_threads_unless_train_threads_names_a_count(
    trained: tuple[Path, list[dict]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/params.md: each checkpoint records the thread count, and a resumed run keeps it
    unless train.threads names one, since the count changes the float rounding. Killed under
    more threads than the machine has cores (never torch's own choice), resumed under
    train.threads 0: epoch 2 runs on as many."""
    project, _ = trained
    count = (os.cpu_count() or 1) + 1
    set_checked_params(project, **{"train.threads": count})
    train_killed_at(project, "publish", 1)
    runs = project / ".cache/runs"
    (killed,) = [path for path in runs.iterdir() if not (path / "finished").exists()]
    set_checked_params(project, **{"train.threads": 0})
    with decoys_beside(killed) as names:
        resumed = stage("train", project)
    assert_resumed(resumed.stderr, after=1, epochs=EPOCHS)
    # Taken over from the killed run's folder, the newest free one of its lineage, before old
    # folders went (it was the fifth newest); a live trainer's folder is left as it is.
    line = f"continuing the run stopped after epoch 1 in .cache/runs/{killed.name} with train.threads {count} -> 0"
    assert line in resumed.stderr and resumed.stderr.count("continuing the run stopped") == 1  # that one alone
    assert (runs / names[0] / "epoch_001.pt").is_file()
    assert f"keeping {count} CPU threads per process, as the run had so far" in resumed.stderr
    assert [checkpoint["threads"] for checkpoint in final_state(project)] == [count] * EPOCHS
    # A count named on resuming wins: the kept 3 only stands in for train.threads 0.
    assert run_threads(2, [{"threads": 3}]) == 2 and run_threads(0, [{"threads": 3}]) == 3
    assert run_threads(0, [{"threads": 3}, {"threads": 5}]) == 5  # the last epoch's
    # Kept when fewer than torch's own choice too: a run of 1 thread resumed where torch takes 4.
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert run_threads(0, [{"threads": 1}]) == 1


# How ext4 listed one run folder's checkpoints (by a hash of the name): not their epochs' order.
EXT4_ORDER = ["epoch_001.pt", "epoch_004.pt", "epoch_002.pt", "epoch_003.pt", "epoch_005.pt"]


def killed_after_epoch_5(
    tmp_path: Path,
) -> tuple[RunFolder, torch.nn.Linear, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """A run folder holding epochs 1 to 5 (`commit_numbered_epochs`), and the model, optimizer
    and scheduler to restore into."""
    folder = RunFolder("run", "lineage", root=tmp_path / "runs", output=tmp_path / "checkpoints")
    folder.path.mkdir(parents=True)
    folder.output.mkdir()
    commit_numbered_epochs(folder, 5)
    return folder, *restore_targets()


def assert_resumed_after_epoch_2(folder: RunFolder, model: torch.nn.Linear, history: list[dict]) -> None:
    """Epochs 1 and 2 restored, from epoch 2's weights, and every later checkpoint gone."""
    assert [record["epoch"] for record in history] == [1, 2]
    assert torch.equal(model.weight, torch.full((2, 2), 2.0))
    assert sorted(path.name for path in folder.path.glob("epoch_*.pt")) == ["epoch_001.pt", "epoch_002.pt"]


def test_a_run_killed_after_epoch_5_resumes_whatever_order_its_folder_lists_the_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder lists its files in its file system's order (ext4: by name hash; tmpfs, btrfs:
    others). The run folder that train resumes from, listing the checkpoints in EXT4_ORDER,
    still resumes after epoch 5 from epoch 5's weights and keeps all five: none is taken
    for one that does not continue the run."""
    folder, model, optimizer, scheduler = killed_after_epoch_5(tmp_path)
    listed = Path.glob

    def in_ext4_order(self: Path, pattern: str) -> Iterator[Path]:
        found = list(listed(self, pattern))
        return iter(sorted(found, key=lambda path: EXT4_ORDER.index(path.name) if path.name in EXT4_ORDER else -1))

    monkeypatch.setattr(Path, "glob", in_ext4_order)
    assert [path.name for path in folder.path.glob("epoch_*.pt")] == EXT4_ORDER  # the listing the run gets
    history = folder.restore(model, optimizer, scheduler)
    assert [record["epoch"] for record in history] == [1, 2, 3, 4, 5]
    assert torch.equal(model.weight, torch.full((2, 2), 5.0))
    assert sorted(path.name for path in folder.path.iterdir() if path.suffix == ".pt") == sorted(EXT4_ORDER)


def test_a_run_folder_missing_a_middle_checkpoint_resumes_after_the_epoch_before_the_gap(tmp_path: Path) -> None:
    """docs/design.md: a rerun verifies each checkpoint and continues after the last good
    epoch. With epoch 3's file gone (deleted by hand, or a disk that lost it), epochs 4 and
    5 no longer continue the run: it resumes after epoch 2, from epoch 2's weights, and their
    files go, so that epochs 3 to 5 are trained again and every epoch reaches checkpoints/."""
    folder, model, optimizer, scheduler = killed_after_epoch_5(tmp_path)
    (folder.path / "epoch_003.pt").unlink()
    history = folder.restore(model, optimizer, scheduler)
    assert_resumed_after_epoch_2(folder, model, history)


def test_a_checkpoint_of_another_run_in_the_folder_is_not_resumed_from(tmp_path: Path) -> None:
    """An epoch_003.pt of another lineage (copied in by hand), whole and numbered as the run's
    own would be, does not continue the run: it resumes after epoch 2 and the file goes."""
    folder, model, optimizer, scheduler = killed_after_epoch_5(tmp_path)
    for later in ("epoch_004.pt", "epoch_005.pt"):
        (folder.path / later).unlink()
    foreign = load_checkpoint(folder.path / "epoch_003.pt") | {"lineage": "another"}
    weights = foreign["model_state_dict"]
    foreign["model_state_dict"] = {key: torch.full_like(value, 9.0) for key, value in weights.items()}
    save_checkpoint(foreign, folder.path / "epoch_003.pt")
    history = folder.restore(model, optimizer, scheduler)
    assert_resumed_after_epoch_2(folder, model, history)
