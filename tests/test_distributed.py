"""Several processes (pipeline/distributed.py), on the CPU with gloo.

Most runs freeze the backbone, BatchNorm layers included, and run it on every step (no
feature cache), with a policy and random erasing drawn per image: DistributedDataParallel's
gradient all-reduce then runs through a model with frozen BatchNorm, and 2 processes with 64
items each see exactly the items, crops and per-image draws that 1 process with the global
batch of 128 sees, so the two must agree up to float rounding. One run trains every layer
(`freeze: none`), for what that changes.
"""

import csv
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DistributedSampler

from pipeline import distributed
from pipeline.checkpoints import load_checkpoint, save_checkpoint
from pipeline.cli import UserError, progress
from pipeline.config import load_params
from pipeline.distributed import EXIT_LOST_CONTACT, Ranks, cpu_threads, first_cause, shard, sync_batchnorm
from pipeline.engine import EpochOrder, LoopOptions, epoch_generator, rank_seed, split_loss, split_steps
from testing.project import copy_project, run, set_checked_params, set_params, stage
from tests.conftest import Reproduced, once_per_run, prepare_with
from tests.helpers import assert_resumed, epochs_trained, kill_env, processes_in

# resnet18's random features are enough for its head to learn the digits at 16 px, policy and
# erasing included (val loss 1.37 after the 2 epochs, where a uniform guess scores log 5 =
# 1.61): the comparisons below are of a run that learns.
DDP_PARAMS = {
    "model.arch": "resnet18",
    "model.weights": None,
    "freeze": "all_but_head",
    "train.cache_features": False,
    "train.lr": 0.1,
    "train.augment.policy": "trivialaugment",
    "train.augment.erasing": 0.3,
}
NO_RECIPES = {"train.augment.policy": "none", "train.augment.erasing": 0.0}
LAST = Path("checkpoints/epoch_002.pt")  # the tiny params train 2 epochs
PYTHON = sys.executable


@pytest.fixture(scope="session")
def ddp_once(tmp_path_factory: pytest.TempPathFactory, prepared_once: Path) -> Path:
    """The prepared project with DDP_PARAMS and their weights, once per run."""

    def build(root: Path) -> dict:
        return prepare_with(copy_project(prepared_once, root / "project"), DDP_PARAMS, "a frozen backbone")

    return Path(once_per_run(tmp_path_factory, "ddp", build)["path"])


@pytest.fixture
def ddp(ddp_once: Path, tmp_path: Path) -> Path:
    return copy_project(ddp_once, tmp_path / "project")


@pytest.fixture(scope="session")
def one_process(tmp_path_factory: pytest.TempPathFactory, ddp_once: Path) -> dict:
    """`dvc repro train` in a copy of `ddp_once`: a finished run of one process, once per run."""

    def build(root: Path) -> dict:
        project = copy_project(ddp_once, root / "project")
        result = run([PYTHON, "-m", "dvc", "repro", "train"], project)
        return {"path": str(project), "output": result.stdout + result.stderr}

    return once_per_run(tmp_path_factory, "one_process", build)


@pytest.fixture(scope="session")
def two_processes(tmp_path_factory: pytest.TempPathFactory, one_process: dict) -> dict:
    """`dvc exp run -S train.processes=2 train` in a copy of `one_process`, once per run
    (up to the train stage: the tests that use it read checkpoints and curves alone)."""

    def build(root: Path) -> dict:
        project = copy_project(Path(one_process["path"]), root / "project")
        result = run([PYTHON, "-m", "dvc", "exp", "run", "-S", "train.processes=2", "train"], project)
        return {"path": str(project), "output": result.stdout + result.stderr}

    return once_per_run(tmp_path_factory, "two_processes", build)


@pytest.fixture(scope="session")
def batchnorm_trains(tmp_path_factory: pytest.TempPathFactory, ddp_once: Path) -> Path:
    """`dvc exp run` of every layer (BatchNorm included) on 2 processes, and evaluate after
    it (`evaluate`, the target: the tests read its scores, not select-best's), in a copy of
    `ddp_once`, once per run. Training flips images (train.augment.hflip); validation, as
    evaluate without evaluate.tta, must not."""

    def build(root: Path) -> dict:
        project = copy_project(ddp_once, root / "project")
        overrides = ["-S", "freeze=none", "-S", "train.processes=2", "-S", "train.augment.hflip=true"]
        run([PYTHON, "-m", "dvc", "exp", "run", *overrides, "evaluate"], project)
        return {"path": str(project)}

    return Path(once_per_run(tmp_path_factory, "batchnorm_trains", build)["path"])


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model_state_dict"]


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("pipeline: error:")]


def test_dvc_exp_run_with_two_processes_after_one_process_trains_and_matches_it(
    two_processes: dict, one_process: dict
) -> None:
    """The process count is part of a run's identity: the finished 1-process run is not
    taken for the 2-process one. The two agree up to float rounding, per-image policy and
    erasing draws included, since those come from each visit's key, not from the process."""
    project, output = Path(two_processes["path"]), two_processes["output"]
    assert "starting 2 training processes" in output
    assert epochs_trained(output) == [1, 2]  # trained, not republished; rank 0 alone logs
    two = load_checkpoint(project / LAST)
    assert (two["world_size"], two["global_batch"]) == (2, 128)
    assert two["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)  # the cores shared out, recorded
    assert sorted(p.name for p in (project / "checkpoints").iterdir()) == ["epoch_001.pt", "epoch_002.pt"]
    rows = (project / "dvclive/train/plots/metrics/train/loss.tsv").read_text().splitlines()
    assert len(rows) == 1 + 2  # a header and one row per epoch: one writer

    one = load_checkpoint(Path(one_process["path"]) / LAST)
    assert one["world_size"] == 1
    for key in ("loss", "val_loss", "val_accuracy"):
        assert two[key] == pytest.approx(one[key], rel=1e-6), key
    changed = 0
    first = weights(Path(one_process["path"]) / "checkpoints/epoch_001.pt")
    for name, tensor in one["model_state_dict"].items():
        torch.testing.assert_close(two["model_state_dict"][name], tensor, atol=1e-6, rtol=1e-6)
        changed += not torch.equal(tensor, first[name])
    assert changed > 0  # the comparison is of weights that trained
    assert one["val_loss"] < math.log(5) - 0.1  # and of a run that learns


def test_a_killed_run_goes_on_under_another_process_count_and_says_what_changed(
    two_processes: dict, tmp_path: Path
) -> None:
    """A run that 2 processes left after epoch 1 goes on in 1 process that accumulates 2
    batches of 64 (the same global batches): the new settings take over its folder, the log
    names what changed, and it ends where 2 processes ended, up to float rounding."""
    project = copy_project(Path(two_processes["path"]), tmp_path / "project")
    (folder,) = [
        p for p in (project / ".cache/runs").iterdir() if '"train.processes": 2' in (p / "run.json").read_text()
    ]
    for later in ("epoch_002.pt", "finished"):  # as if killed after epoch 1
        (folder / later).unlink()
    set_checked_params(project, **{"train.processes": 1, "train.accumulate_steps": 2})
    log = stage("train", project).stderr
    assert f"continuing the run stopped after epoch 1 in .cache/runs/{folder.name}" in log
    assert "train.processes 2 -> 1, train.accumulate_steps 1 -> 2" in log
    assert_resumed(log, after=1, epochs=2)
    assert not folder.exists()
    last = load_checkpoint(project / LAST)
    assert (last["world_size"], last["accumulate_steps"]) == (1, 2)
    two = load_checkpoint(Path(two_processes["path"]) / LAST)
    assert last["threads"] == two["threads"]  # a resumed run keeps its CPU threads
    for name, tensor in last["model_state_dict"].items():
        torch.testing.assert_close(tensor, two["model_state_dict"][name], atol=1e-6, rtol=1e-6)


def test_a_rank_killed_mid_epoch_stops_the_job_and_the_rerun_resumes_bit_identically(
    two_processes: dict, ddp: Path, tmp_path: Path
) -> None:
    set_checked_params(ddp, **{"train.processes": 2})
    # Rank 1's 7th optimizer step SIGKILLs it: the 2nd of epoch 2 (538 images, 64 per rank: 5 steps an epoch).
    env = kill_env(tmp_path / "site", "step", 7, rank=1)
    killed = run([PYTHON, "-m", "pipeline.train"], ddp, check=False, env=env, timeout=300)
    assert killed.returncode == 2, killed.stderr
    assert "Traceback" not in killed.stderr and "terminated" not in killed.stderr  # rank 0 was stopped: no cause
    (error,) = error_lines(killed.stderr)  # one line, the real cause
    assert "training process rank 1 " in error and "failed with signal SIGKILL" in error, killed.stderr
    # ...and what the user can count on: rerunning resumes after epoch 1 (as below).
    assert error.endswith("; every checkpoint written so far is complete, and rerunning resumes after the last one")
    assert epochs_trained(killed.stderr) == [1]

    resumed = stage("train", ddp)
    assert_resumed(resumed.stderr, after=1, epochs=2)
    uninterrupted = weights(Path(two_processes["path"]) / LAST)
    for name, tensor in weights(ddp / LAST).items():
        assert torch.equal(tensor, uninterrupted[name]), name


def test_a_nan_loss_in_one_rank_stops_every_rank(ddp: Path, tmp_path: Path) -> None:
    """Each rank checks the epoch's losses of all: the rank whose loss went NaN and the one
    whose did not both stop at the end of that epoch, and neither waits for the other. The
    NaN comes in rank 1's last batch of the epoch, so no NaN gradient reaches rank 0's
    weights (an earlier one would, through the all-reduce, and rank 0 would see NaN itself).
    The head trains on features that each rank computed for its shard of the images."""
    set_checked_params(ddp, **{"train.processes": 2, "train.cache_features": True, **NO_RECIPES})
    env = kill_env(tmp_path / "site", "nan", 5, rank=1)  # 269 images and 64 a step per rank: 5 batches
    result = run([PYTHON, "-m", "pipeline.train"], ddp, check=False, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "features computed once" in result.stderr
    assert "training loss became nan in epoch 1, batch 5 of 5" in result.stderr  # rank 1's own line
    assert "training loss became non-finite in epoch 1 in another training process" in result.stderr  # rank 0
    assert epochs_trained(result.stderr) == []
    assert not (ddp / "checkpoints").exists() or not list((ddp / "checkpoints").iterdir())


def test_early_stopping_stops_every_rank_after_the_same_epoch(ddp: Path) -> None:
    """docs/distributed.md: every process computes the same val scores and decides early
    stopping alike. A head-only run of 3 epochs on 2 processes whose val accuracy cannot move
    (lr 1e-9; patience 1, min_delta 0.01) stops after epoch 2 on both: the stage ends at once,
    with epochs 1 and 2 kept, where a rank that trained on would wait for the other in vain
    (wait_minutes 0.2: 12 s) and fail the stage."""
    recipe = {"train.processes": 2, "train.cache_features": True, "train.epochs": 3, "train.lr": 1e-9,
              "train.early_stopping.patience": 1, "train.early_stopping.min_delta": 0.01,
              "select.metric": "val_accuracy", "select.mode": "max", "wait_minutes": 0.2, **NO_RECIPES}  # fmt: skip
    set_checked_params(ddp, freeze="all_but_head", **recipe)
    result = run([PYTHON, "-m", "pipeline.train"], ddp, check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "early stopping after epoch 2: val_accuracy has not improved" in result.stderr
    assert epochs_trained(result.stderr) == [1, 2]
    assert sorted(path.name for path in (ddp / "checkpoints").iterdir()) == ["epoch_001.pt", "epoch_002.pt"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_machines_rendezvous_with_torchrun(ddp: Path) -> None:
    """docs/distributed.md's multi-node command, with two "machines" of one process each on
    this one, sharing the project folder as the machines would share storage. Each process
    also accumulates 2 batches of 32 per step, and the head trains on the feature cache, each
    process running the backbone over half of the images: the same training as 1 process
    with the global batch of 128 on its own features, up to float rounding."""
    set_checked_params(
        ddp, **{"train.processes": 2, "train.accumulate_steps": 2, "train.cache_features": True, **NO_RECIPES}
    )
    torchrun = [
        PYTHON, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
        "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--rdzv-id=test",
        "-m", "pipeline.train",
    ]  # fmt: skip
    nodes = [
        subprocess.Popen(torchrun, cwd=ddp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert sorted(epochs_trained(output) for output in outputs) == [[], [1, 2]]  # one rank 0
    assert "features computed once" in "".join(outputs)
    two = load_checkpoint(ddp / LAST)
    assert (two["world_size"], two["global_batch"], two["accumulate_steps"]) == (2, 128, 2)

    set_checked_params(ddp, **{"train.processes": 1, "train.accumulate_steps": 1})
    assert epochs_trained(stage("train", ddp).stderr) == [1, 2]
    for name, tensor in weights(ddp / LAST).items():
        torch.testing.assert_close(tensor, two["model_state_dict"][name], atol=1e-6, rtol=1e-5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_killing_the_process_group_of_dvc_repro_leaves_no_rank_running(ddp: Path, tmp_path: Path) -> None:
    """torchrun starts each rank in a session of its own: `kill -9 -- -PGID` of a `dvc repro`
    (a terminal's kill of the job) reaches dvc and the launcher only. The ranks must die with
    the launcher, and write nothing after it."""
    set_params(ddp, **{"train.processes": 2})
    env = {**kill_env(tmp_path / "site", "orphan", 2, rank=1), "PYTHONUNBUFFERED": "1"}  # rank 1's 2nd step
    with open(tmp_path / "log", "w") as log:
        command = [PYTHON, "-m", "dvc", "repro", "train"]
        dvc = subprocess.Popen(command, cwd=ddp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        assert dvc.wait(timeout=300) == -signal.SIGKILL, (tmp_path / "log").read_text()
    deadline = time.monotonic() + 10  # the ranks' death signal takes a moment; gone for good once gone
    while processes_in(ddp) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_in(ddp) == [], (tmp_path / "log").read_text()
    assert "starting 2 training processes" in (tmp_path / "log").read_text()
    # Killed in epoch 1: no checkpoint, in the run folder or the stage's output.
    assert list(ddp.glob(".cache/runs/*/epoch_*.pt")) == [] and list(ddp.glob("checkpoints/*")) == []


def test_a_wait_that_runs_out_names_what_it_waited_for(ddp: Path, tmp_path: Path) -> None:
    """Rank 0 decodes the images while the others wait, up to wait_minutes: one line from
    the rank that gave up, naming what it waited for and the param, and no other error."""
    set_checked_params(ddp, **{"train.processes": 2, "wait_minutes": 0.05})  # 3 s
    env = kill_env(tmp_path / "site", "slow", 30, rank=0)  # rank 0's decoding takes 30 s more
    result = run([PYTHON, "-m", "pipeline.train"], ddp, check=False, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert error_lines(result.stderr) == [
        "pipeline: error: process rank 1 gave up waiting for rank 0 to decode the images into the cache after "
        "wait_minutes = 0.05: raise wait_minutes in params.yaml if that takes longer here"
    ], result.stderr


def test_validation_with_batchnorm_training_is_that_of_the_saved_weights(batchnorm_trains: Path) -> None:
    """Each rank's BatchNorm statistics are those of its own share of the batches; rank 0's
    are saved. The val scores recorded in each checkpoint (which the curves show and early
    stopping reads) are evaluate's for that checkpoint, to float rounding."""
    with open(batchnorm_trains / "eval/scores.csv") as file:
        scores = {int(row["epoch"]): row for row in csv.DictReader(file)}
    assert sorted(scores) == [1, 2]
    for epoch, row in scores.items():
        checkpoint = load_checkpoint(batchnorm_trains / f"checkpoints/epoch_{epoch:03d}.pt")
        assert checkpoint["world_size"] == 2 and checkpoint["freeze"] == "none"
        for key in ("val_loss", "val_accuracy", "val_f1"):
            assert checkpoint[key] == pytest.approx(float(row[key]), rel=1e-6, abs=1e-7), (epoch, key)


def test_evaluate_on_two_processes_gives_the_scores_of_one(batchnorm_trains: Path, tmp_path: Path) -> None:
    """A third checkpoint, the second's weights saved as epoch 3, makes the ranks' shares
    come back out of epoch order (rank 0 scores 1 and 3, rank 1 scores 2): the table must
    still be one process's, in epoch order, with epoch 3's scores those of epoch 2."""
    project = copy_project(batchnorm_trains, tmp_path / "project")
    for output in ("eval/scores.csv", "eval/predictions"):
        subprocess.run(["rm", "-rf", str(project / output)], check=True)
    save_checkpoint({**load_checkpoint(project / LAST), "epoch": 3}, project / "checkpoints/epoch_003.pt")
    set_checked_params(project, **{"evaluate.processes": 2})
    result = stage("evaluate", project)
    assert "starting 2 evaluation processes" in result.stderr
    one = (batchnorm_trains / "eval/scores.csv").read_text().splitlines(keepends=True)
    assert [line.split(",")[0] for line in one] == ["epoch", "1", "2"]
    assert (project / "eval/scores.csv").read_text() == "".join([*one, "3" + one[2][1:]])
    epoch_2 = (batchnorm_trains / "eval/predictions/epoch_002.csv").read_bytes()
    assert (project / "eval/predictions/epoch_003.csv").read_bytes() == epoch_2
    (project / "eval/predictions/epoch_003.csv").unlink()
    names = sorted(p.name for p in (batchnorm_trains / "eval/predictions").iterdir())
    assert sorted(p.name for p in (project / "eval/predictions").iterdir()) == names
    for name in names:
        assert (project / "eval/predictions" / name).read_bytes() == (
            batchnorm_trains / "eval/predictions" / name
        ).read_bytes()

    # Damage in rank 1's share (epoch 2) stops the stage as damage in rank 0's does: one line
    # naming the file, and no table that would leave its epoch out.
    (project / "eval/scores.csv").unlink()
    damaged = project / LAST
    damaged.write_bytes(damaged.read_bytes()[:1000])
    result = stage("evaluate", project, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    (error,) = error_lines(result.stderr)
    assert "1 of 3 checkpoints cannot be used" in error and "epoch_002.pt" in error
    assert not (project / "eval/scores.csv").exists()


def test_a_stage_run_by_hand_in_a_shell_with_a_master_address_is_one_process(reproduced: Reproduced) -> None:
    """A cluster shell often exports MASTER_ADDR (and MASTER_PORT): without torchrun's RANK,
    WORLD_SIZE and LOCAL_RANK, a stage is still one plain process, and scores as one."""
    project = reproduced.path
    scores = (project / "eval/scores.csv").read_text()
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    result = run([PYTHON, "-m", "pipeline.evaluate"], project, check=False, env=env)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert (project / "eval/scores.csv").read_text() == scores


def test_a_plain_launch_under_an_operators_variables_is_refused(project: Path) -> None:
    """A PyTorchJob's pod that runs the stage without torchrun: RANK and WORLD_SIZE are set,
    LOCAL_RANK is not. Each pod would train alone and write the same checkpoints."""
    env = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    result = run([PYTHON, "-m", "pipeline.train"], project, check=False, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    (error,) = error_lines(result.stderr)
    assert "WORLD_SIZE = 2 is set, but not LOCAL_RANK" in error and "torchrun" in error


def test_a_launch_with_another_process_count_than_train_processes_is_refused(project: Path) -> None:
    """The params must say how the run trains: a torchrun world of 1 under train.processes 2."""
    set_checked_params(project, **{"train.processes": 2})
    env = {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    result = run([PYTHON, "-m", "pipeline.train"], project, check=False, env=env)
    assert result.returncode == 2, result.stderr
    assert error_lines(result.stderr) == [
        "pipeline: error: train.processes = 2, but torchrun started 1 training processes (WORLD_SIZE): set "
        "train.processes to 1, the processes of every machine together, so that the run's params say how it was trained"
    ]


def test_the_launcher_names_the_rank_that_failed_not_those_it_stopped() -> None:
    """torchrun lists the ranks that had ended when it looked, in the same second: the one
    killed, and those stopped because of it (SIGTERM from torchrun, or lost contact)."""

    def failure(exitcode: int, timestamp: int = 100) -> SimpleNamespace:
        return SimpleNamespace(exitcode=exitcode, timestamp=timestamp)

    killed = failure(-signal.SIGKILL)
    assert first_cause({0: failure(-signal.SIGTERM), 1: killed}) == (1, killed)
    assert first_cause({0: failure(EXIT_LOST_CONTACT), 1: killed}) == (1, killed)
    assert first_cause({0: failure(143), 1: failure(1)})[0] == 1
    assert first_cause({0: failure(1, timestamp=99), 1: failure(2)})[0] == 0  # the earlier
    # In the same second, a rank killed by a signal (the OOM killer's SIGKILL) before one
    # that exited with an error, whichever rank number is lower.
    assert first_cause({0: failure(1), 1: killed}) == (1, killed)
    assert first_cause({0: killed, 1: failure(1)}) == (0, killed)
    assert first_cause({0: failure(-signal.SIGTERM)})[0] == 0  # nothing else to name


def test_one_progress_bar_among_several_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal:
        def isatty(self) -> bool:
            return True

        def write(self, text: str) -> None:
            pass

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stderr", Terminal())
    for rank, shown in (("0", True), ("1", False)):
        monkeypatch.setenv("RANK", rank)
        assert bool(progress(range(3), "training").disable) is not shown, rank  # tqdm leaves None when shown


def test_no_two_epochs_or_ranks_of_a_run_share_a_seed() -> None:
    """The global RNG's seed per (epoch, rank); rank 0 keeps the epoch's own, as one process has it."""
    for seed in (0, 1, 12345):
        seeds = {rank_seed(epoch_generator(seed, epoch), rank) for epoch in range(1, 200) for rank in range(16)}
        assert len(seeds) == 199 * 16
        assert rank_seed(epoch_generator(seed, 3), 0) == epoch_generator(seed, 3).initial_seed()


@pytest.mark.parametrize(
    ("items", "world", "accumulate", "weighted", "smoothing", "mixed"),
    [
        (7, 3, 1, False, 0.0, False),
        (7, 3, 1, True, 0.1, False),
        (11, 2, 2, True, 0.0, False),
        (9, 1, 3, True, 0.2, False),
        (7, 3, 1, True, 0.0, True),
    ],
)
def test_the_parts_of_a_step_add_up_to_one_process_step(
    items: int, world: int, accumulate: int, weighted: bool, smoothing: float, mixed: bool
) -> None:
    """However a global batch is split (processes, accumulated batches, an uneven last step
    with `shard`'s padding), with class weights, label smoothing or mixed (soft) targets, the
    gradients of its parts, each rank's summed and then averaged over the ranks as
    DistributedDataParallel does, are those of torch's own cross-entropy over the whole batch;
    and the epoch's loss is one process's mean of its batches' means."""
    generator = torch.Generator().manual_seed(0)
    features, labels = torch.randn(items, 4, generator=generator), torch.randint(0, 3, (items,), generator=generator)
    weights = torch.tensor([0.5, 2.0, 1.25]) if weighted else None
    model = torch.nn.Linear(4, 3)
    batch = world * accumulate * 2  # the global batch
    loop = LoopOptions(batch_size=batch, ranks=Ranks(0, world), accumulate=accumulate, class_weights=weights)
    order = torch.randperm(items, generator=generator)
    targets = labels
    if mixed:  # MixUp's class probabilities: 0.7 of each item's label, 0.3 of the next one's in its global batch
        one_hot, targets = torch.nn.functional.one_hot(labels, 3).float(), torch.zeros(items, 3)
        for start in range(0, items, batch):
            rows = order[start : start + batch]
            targets[rows] = 0.7 * one_hot[rows] + 0.3 * one_hot[rows.roll(1)]

    def criterion(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """By hand: the items' weighted losses over their total weight (a mixed item weighs its
        classes' weights by the mixing ratios; without class weights every item weighs 1)."""
        losses = torch.nn.functional.cross_entropy(
            logits, targets, weight=weights, label_smoothing=smoothing, reduction="none"
        )
        if reduction == "none":
            return losses
        each = (
            torch.ones(len(targets)) if weights is None else (targets * weights).sum(1) if mixed else weights[targets]
        )
        return losses.sum() / each.sum()

    whole = split_steps(EpochOrder(order, None), labels, loop)
    expected_loss, kept, counted = 0.0, 0.0, 0.0
    for step, start in enumerate(range(0, items, batch)):
        model.zero_grad()
        rows = order[start : start + batch]
        loss = criterion(model(features[rows]), targets[rows])
        loss.backward()
        expected = [p.grad.clone() for p in model.parameters()]
        expected_loss += loss.item() * len(rows) / items
        averaged = [torch.zeros_like(p) for p in model.parameters()]
        for rank in range(world):
            plan = whole.shard(Ranks(rank, world))
            model.zero_grad()
            micro = batch // (world * accumulate)
            for index in range(step * accumulate, (step + 1) * accumulate):
                part = slice(index * micro, (index + 1) * micro)
                visits = plan.order[part]
                if not len(visits):  # the last step may have fewer accumulated batches
                    break
                split = (plan.real[part], plan.step_items[part], plan.step_weight[part])
                part_loss, part_kept = split_loss(criterion, model(features[visits]), targets[visits], split, world)
                part_loss.backward()
                kept, counted = kept + part_kept.item(), counted + split[0].sum().item()
            averaged = [total + p.grad / world for total, p in zip(averaged, model.parameters(), strict=True)]
        for got, want in zip(averaged, expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert counted == items  # the padding counted for nothing
    assert kept / counted == pytest.approx(expected_loss, rel=1e-5)


@pytest.mark.parametrize(("items", "world"), [(538, 2), (7, 3), (2, 4)])
def test_shards_cover_every_item_and_each_global_batch_is_one_process_batch(items: int, world: int) -> None:
    order = torch.randperm(items, generator=torch.Generator().manual_seed(0))
    shards = [shard(order, Ranks(rank, world)) for rank in range(world)]
    assert len({len(part) for part in shards}) == 1  # the same count for every rank
    padding = -items % world
    assert sorted(torch.cat(shards).tolist()) == sorted(order.tolist() + order[:padding].tolist())
    # Each rank's part, item for item, is what torch's DistributedSampler gives it.
    for rank, part in enumerate(shards):
        sampler = DistributedSampler(range(items), num_replicas=world, rank=rank, shuffle=False)
        assert part.tolist() == order[list(sampler)].tolist()
    # Step k of every rank, together, is the k-th global batch of one process (of the padded order).
    per_rank, padded = 2, torch.cat([order, order[:padding]])
    for k, start in enumerate(range(0, len(padded), per_rank * world)):
        together = torch.cat([part[k * per_rank : (k + 1) * per_rank] for part in shards])
        assert sorted(together.tolist()) == sorted(padded[start : start + per_rank * world].tolist())


def test_the_global_batch_must_split_evenly(project: Path) -> None:
    path = project / "params.yaml"
    params = OmegaConf.load(path)
    OmegaConf.update(params, "train.processes", 3)
    OmegaConf.save(params, path)
    expected = r"train.batch_size = 128 .* a multiple of train.processes x train.accumulate_steps \(3\)"
    with pytest.raises(UserError, match=expected):
        load_params(path)


def test_the_cores_are_shared_out_among_the_processes_of_a_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/distributed.md: train.threads 0 gives each of several processes its share of the
    cores this process may use (by hand, on 16: 8 each for 2, 5 for 3), one process torch's
    own choice, and a count named is taken as it is. (On a 2-core machine the 2-process run
    above cannot tell a share from torchrun's 1.)"""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert [cpu_threads(0, processes) for processes in (2, 3, 16, 40)] == [8, 5, 1, 1]
    assert cpu_threads(0, 1) == torch.get_num_threads()
    # 1 too is a count, not torch's choice nor a share: on 16 cores, 1 process is torch's 16 and 2 share 8 each.
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    assert [cpu_threads(3, 2), cpu_threads(1, 1), cpu_threads(1, 2)] == [3, 1, 1]


def test_sync_batchnorm_converts_on_gpus_and_says_so_on_the_cpu() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    with pytest.raises(UserError, match=r"train\.sync_batchnorm needs CUDA"):
        sync_batchnorm(model, torch.device("cpu"))
    if torch.cuda.is_available():
        synced = sync_batchnorm(model, torch.device("cuda"))
        assert isinstance(synced[1], torch.nn.SyncBatchNorm)
        assert synced.state_dict().keys() == model.state_dict().keys()


def as_torchrun_sets_them(monkeypatch: pytest.MonkeyPatch, **variables: object) -> None:
    """torchrun's environment variables for a process it would start, set by hand."""
    for name, value in variables.items():
        monkeypatch.setenv(name, str(value))


@pytest.mark.parametrize(("local_rank", "refused"), [(1, False), (2, True)])
def test_a_rank_beyond_the_machines_gpus_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, local_rank: int, refused: bool
) -> None:
    """On the second of two machines, each with 2 GPUs (faked: this one may have none), local
    ranks 0 and 1 each take their own, by their local rank (ranks 4 and 5 of the job); local
    rank 2 would have none, and stops with a line that says what to lower, before it touches
    CUDA. Checked without starting any process (torchrun's variables set by hand)."""
    as_torchrun_sets_them(
        monkeypatch, RANK=4 + local_rank, WORLD_SIZE=8, LOCAL_RANK=local_rank, MASTER_ADDR="127.0.0.1"
    )
    monkeypatch.setattr(distributed, "tie_to_launcher", lambda: None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)

    class TookAGpu(Exception):
        pass

    def set_device(device: torch.device) -> None:
        raise TookAGpu(device)

    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    with pytest.raises(UserError if refused else TookAGpu) as raised:
        distributed.start(torch.device("cuda"), wait_minutes=0.01)
    if refused:
        assert str(raised.value) == (
            "process 2 on this machine has no GPU of its own (2 here): lower train.processes or evaluate.processes"
        )
    else:
        assert raised.value.args[0] == torch.device("cuda", 1)


def test_the_processes_of_a_machine_are_its_own_not_the_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the second of two machines running 2 processes each (torchrun's variables set by
    hand): 2 processes here, of 4 in all; the cores are shared out among this machine's."""
    as_torchrun_sets_them(monkeypatch, RANK=2, WORLD_SIZE=4, LOCAL_RANK=0, LOCAL_WORLD_SIZE=2, MASTER_ADDR="10.0.0.1")
    assert distributed.local_processes() == 2


def test_a_shell_with_a_master_address_alone_is_no_partial_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster shell's MASTER_ADDR and MASTER_PORT alone: a plain process, refused nothing;
    RANK and WORLD_SIZE 2 without LOCAL_RANK (an operator's pod): refused, naming what is missing."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    distributed.refuse_partial_launch()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="WORLD_SIZE = 2 is set, but not LOCAL_RANK"):
        distributed.refuse_partial_launch()
