"""Training on several processes (pipeline/distributed.py), on the CPU with gloo.

The runs freeze the backbone, BatchNorm layers included, and run it on every step (no
feature cache): DistributedDataParallel's gradient all-reduce then runs through a model with
frozen BatchNorm, and 2 processes with 64 items each see exactly the items that 1 process
with the global batch of 128 sees, so the two must agree up to float rounding.
"""

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from pipeline.checkpoints import load_checkpoint
from pipeline.cli import UserError
from pipeline.config import load_params
from pipeline.distributed import Ranks, shard, sync_batchnorm
from testing.project import copy_project, run, set_checked_params, stage
from tests.conftest import once_per_run, prepare_with
from tests.helpers import assert_resumed, epochs_trained, kill_env

# resnet18's random features are enough for its head to learn the digits at 16 px (val
# accuracy 0.59 after the 2 epochs): the comparisons below are of a run that learns.
DDP_PARAMS = {
    "model.arch": "resnet18",
    "model.weights": None,
    "freeze": "all_but_head",
    "train.cache_features": False,
    "train.lr": 0.1,
}
LAST = Path("checkpoints/epoch_002.pt")  # the tiny params train 2 epochs


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
def two_processes(tmp_path_factory: pytest.TempPathFactory, ddp_once: Path) -> dict:
    """`dvc exp run -S train.processes=2` in a copy of `ddp_once`, once per run."""

    def build(root: Path) -> dict:
        project = copy_project(ddp_once, root / "project")
        result = run([sys.executable, "-m", "dvc", "exp", "run", "-S", "train.processes=2"], project)
        return {"path": str(project), "output": result.stdout + result.stderr}

    return once_per_run(tmp_path_factory, "two_processes", build)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model_state_dict"]


def test_dvc_exp_run_with_two_processes_matches_one_process(two_processes: dict, ddp: Path) -> None:
    project, output = Path(two_processes["path"]), two_processes["output"]
    assert "starting 2 training processes" in output
    assert epochs_trained(output) == [1, 2]  # rank 0 alone logs
    two = load_checkpoint(project / LAST)
    assert (two["world_size"], two["global_batch"]) == (2, 128)
    assert sorted(p.name for p in (project / "checkpoints").iterdir()) == ["epoch_001.pt", "epoch_002.pt"]
    rows = (project / "dvclive/train/plots/metrics/train/loss.tsv").read_text().splitlines()
    assert len(rows) == 1 + 2  # a header and one row per epoch: one writer

    stage("train", ddp)
    one = load_checkpoint(ddp / LAST)
    assert one["world_size"] == 1
    for key in ("loss", "val_loss", "val_accuracy"):
        assert two[key] == pytest.approx(one[key], rel=1e-5), key
    changed = 0
    for name, tensor in one["model_state_dict"].items():
        torch.testing.assert_close(two["model_state_dict"][name], tensor, atol=1e-5, rtol=1e-4)
        changed += not torch.equal(tensor, weights(ddp / "checkpoints/epoch_001.pt")[name])
    assert changed > 0  # the comparison is of weights that trained
    assert one["val_accuracy"] > 0.4  # and of a run that learns (chance: 0.2)


def test_a_run_resumes_under_another_process_count(two_processes: dict, tmp_path: Path) -> None:
    """The global batches are the same for any split of them, so the run's fingerprint
    leaves the split out: a run that 2 processes left after epoch 1 goes on in 1 process
    that accumulates 2 batches of 64, and ends where 2 processes ended, up to float rounding."""
    project = copy_project(Path(two_processes["path"]), tmp_path / "project")
    (folder,) = (project / ".cache/runs").iterdir()
    for later in ("epoch_002.pt", "finished"):  # as if killed after epoch 1
        (folder / later).unlink()
    set_checked_params(project, **{"train.processes": 1, "train.accumulate_steps": 2})
    result = stage("train", project)
    assert_resumed(result.stderr, after=1, epochs=2)
    assert load_checkpoint(project / LAST)["world_size"] == 1
    two = weights(Path(two_processes["path"]) / LAST)
    for name, tensor in weights(project / LAST).items():
        torch.testing.assert_close(tensor, two[name], atol=1e-5, rtol=1e-4)


def test_a_rank_killed_mid_epoch_stops_the_job_and_the_rerun_resumes_bit_identically(
    two_processes: dict, ddp: Path, tmp_path: Path
) -> None:
    set_checked_params(ddp, **{"train.processes": 2})
    # Rank 1's 7th optimizer step SIGKILLs it: the 2nd of epoch 2 (538 images, 64 per rank: 5 steps an epoch).
    env = kill_env(tmp_path / "site", "step", 7, rank=1)
    killed = run([sys.executable, "-m", "pipeline.train"], ddp, check=False, env=env, timeout=300)
    assert killed.returncode == 2, killed.stderr
    assert "Traceback" not in killed.stderr
    errors = [line for line in killed.stderr.splitlines() if line.startswith("pipeline: error:")]
    assert "training process rank 1 " in errors[-1] and "failed with signal SIGKILL" in errors[-1], killed.stderr
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
    weights (an earlier one would, through the all-reduce, and rank 0 would see NaN itself)."""
    set_checked_params(ddp, **{"train.processes": 2})
    env = kill_env(tmp_path / "site", "nan", 5, rank=1)  # 269 images and 64 a step per rank: 5 batches
    result = run([sys.executable, "-m", "pipeline.train"], ddp, check=False, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "training loss became nan in epoch 1, batch 5 of 5" in result.stderr  # rank 1's own line
    assert "training loss became non-finite in epoch 1 in another training process" in result.stderr  # rank 0
    assert epochs_trained(result.stderr) == []
    assert not (ddp / "checkpoints").exists() or not list((ddp / "checkpoints").iterdir())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_machines_rendezvous_with_torchrun(two_processes: dict, ddp: Path) -> None:
    """docs/distributed.md's multi-node command, with two "machines" of one process each on
    this one, sharing the project folder as the machines would share storage. Each process
    also accumulates 2 batches of 32 per step (the same global batches of 128 again), and
    the head trains on the feature cache, each process running the backbone over half of
    the images: the same training as the backbone run on every step, up to float rounding."""
    set_checked_params(ddp, **{"train.accumulate_steps": 2, "train.cache_features": True})
    torchrun = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
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
    last = load_checkpoint(ddp / LAST)
    assert (last["world_size"], last["global_batch"], last["accumulate_steps"]) == (2, 128, 2)
    two = weights(Path(two_processes["path"]) / LAST)
    for name, tensor in weights(ddp / LAST).items():
        torch.testing.assert_close(tensor, two[name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(("items", "world"), [(538, 2), (7, 3), (2, 4)])
def test_shards_cover_every_item_and_each_global_batch_is_one_process_batch(items: int, world: int) -> None:
    order = torch.randperm(items, generator=torch.Generator().manual_seed(0))
    shards = [shard(order, Ranks(rank, world)) for rank in range(world)]
    assert len({len(part) for part in shards}) == 1  # the same count for every rank
    padding = -items % world
    assert sorted(torch.cat(shards).tolist()) == sorted(order.tolist() + order[:padding].tolist())
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


def test_sync_batchnorm_converts_on_gpus_and_says_so_on_the_cpu() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    with pytest.raises(UserError, match=r"train\.sync_batchnorm needs CUDA"):
        sync_batchnorm(model, torch.device("cpu"))
    if torch.cuda.is_available():
        synced = sync_batchnorm(model, torch.device("cuda"))
        assert isinstance(synced[1], torch.nn.SyncBatchNorm)
        assert synced.state_dict().keys() == model.state_dict().keys()
