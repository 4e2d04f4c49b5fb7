"""Several processes: torchrun starts them, torch.distributed connects them.

With `train.processes` (or `evaluate.processes`) above 1, the stage starts N copies of itself
on this machine through torchrun's own Python API (`torch.distributed.run`, standalone
rendezvous) and waits for them. Across machines, the user runs `torchrun` on each
(docs/distributed.md); either way each copy is a rank, found from the variables torchrun sets.

- NCCL on CUDA, one GPU per process (the local rank's); gloo on the CPU.
- Each epoch's seeded order is split as `DistributedSampler` splits it (`shard`), and
  `train.batch_size` is the global batch: each rank steps on batch_size / world items.
  DistributedDataParallel averages the gradients, so a step sees the same items as one
  process would.
- Rank 0 alone writes checkpoints, curves and logs.
- A rank dies with the process that started it (`tie_to_launcher`): torchrun starts each in
  a session of its own, out of reach of a kill of the launcher's process group.
"""

import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.cli import EXIT_TERMINATED, Terminated, UserError

log = logging.getLogger("pipeline.distributed")

T = TypeVar("T")

# The launcher's pid, for its ranks to check that it is still there once they are tied to it.
LAUNCHER_PID = "PIPELINE_LAUNCHER_PID"
# The exit code of a rank that stopped because another one went away: a consequence, which
# the launcher does not report as the cause (see `launch`).
EXIT_LOST_CONTACT = 3


@dataclass(frozen=True)
class Ranks:
    """Which process this is among those that train together."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    wait_minutes: float = 10.0  # how long a collective waits for the others (param wait_minutes)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Ranks()


RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")


def launched() -> bool:
    """Whether torchrun (or a launcher that sets the same variables) started this process as a rank."""
    return all(name in os.environ for name in RANK_VARIABLES)


def refuse_partial_launch() -> None:
    """A UserError when only some of torchrun's variables are set, WORLD_SIZE above 1: a
    launcher that is not torchrun (a PyTorchJob's pod running the train stage itself) would
    otherwise make every process train alone and write the same checkpoints."""
    missing = [name for name in RANK_VARIABLES if name not in os.environ]
    if missing and len(missing) < len(RANK_VARIABLES) and os.environ.get("WORLD_SIZE", "1") != "1":
        raise UserError(
            f"WORLD_SIZE = {os.environ['WORLD_SIZE']} is set, but not {', '.join(missing)}: this process was "
            "started as one of several by something other than torchrun (a PyTorchJob without torchrun?); "
            "start it with `torchrun ... -m pipeline.train` on each machine (docs/distributed.md)"
        )


def launch(processes: int, module: str, threads: int, what: str = "training") -> None:
    """Run `python -m module` as `processes` ranks on this machine, as `torchrun --standalone
    --nproc-per-node=N -m module` does, with `threads` CPU threads each, and wait for them. A
    failed rank: a UserError naming it (one that explained itself, exit code 2, ends this too)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={processes}", "-m", module])
    # Inherited by the ranks. torchrun would set OMP_NUM_THREADS to 1 (with a banner) unless set.
    os.environ[LAUNCHER_PID] = str(os.getpid())
    os.environ["OMP_NUM_THREADS"] = str(threads)
    log.info("starting %d %s processes (torchrun --standalone --nproc-per-node=%d)", processes, what, processes)
    try:
        run(args)
    except SignalException as error:
        # torchrun's own handler stopped the ranks; end as run_stage ends a single process.
        raise KeyboardInterrupt if error.sigval == signal.SIGINT else Terminated from None
    except ChildFailedError as error:
        rank, failure = first_cause(error.failures)
        if failure.exitcode == 2:  # a UserError, which the rank's own line explained
            raise SystemExit(2) from None
        how = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
        after = {"training": "; every checkpoint written so far is complete, and rerunning resumes after the last one"}
        raise UserError(
            f"{what} process rank {rank} (pid {failure.pid}) failed with {how}, and the others were stopped"
            + after.get(what, "")
        ) from None


def first_cause(failures: dict[int, Any]) -> tuple[int, Any]:
    """The failure that caused the others (torchrun's ProcessFailure by rank): the earliest
    of those that did not stop only because another rank went away or torchrun stopped them
    (SIGTERM, or run_stage's exit code for it), signals before exit codes in the same second."""
    consequences = (EXIT_LOST_CONTACT, -signal.SIGTERM, EXIT_TERMINATED)
    causes = {rank: f for rank, f in failures.items() if f.exitcode not in consequences} or failures
    rank = min(causes, key=lambda r: (causes[r].timestamp, causes[r].exitcode >= 0, r))  # signals first
    return rank, causes[rank]


def tie_to_launcher() -> None:
    """Make the kernel SIGKILL this rank when the process that started it dies (Linux's
    PR_SET_PDEATHSIG).

    torchrun's agent starts each rank in a session of its own (start_new_session), so a kill of
    the launcher's process group (a terminal's kill of a job, `kill -9 -- -PGID` of a `dvc
    repro`) reaches the launcher alone; without this the ranks would train on unwatched,
    holding the devices and the run's lock, and write checkpoints that the next run
    publishes. SIGKILL, not SIGTERM: with the launcher gone nobody reads what a rank would
    say, and every file is written atomically. A launcher that died before this call is
    caught by the pid it left (LAUNCHER_PID; the user's own torchrun leaves none).
    """
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    launcher = os.environ.get(LAUNCHER_PID)
    if launcher is not None and os.getppid() != int(launcher):
        os._exit(EXIT_LOST_CONTACT)  # reparented: the launcher is already gone


def start(device: torch.device, wait_minutes: float) -> tuple[Ranks, torch.device]:
    """Join the other ranks when torchrun started this process: (this rank, its device). A
    rank waits `wait_minutes` in a collective for the others before it gives up."""
    if not launched():
        return SINGLE, device
    tie_to_launcher()
    rank, world, local_rank = (int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    ranks = Ranks(rank, world, local_rank, wait_minutes)
    if device.type == "cuda":
        if ranks.local_rank >= torch.cuda.device_count():
            raise UserError(
                f"process {ranks.local_rank} on this machine has no GPU of its own "
                f"({torch.cuda.device_count()} here): lower train.processes or evaluate.processes"
            )
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = timedelta(minutes=wait_minutes)
    dist.init_process_group(backend, timeout=timeout, device_id=device if device.type == "cuda" else None)
    if not ranks.main:
        logging.getLogger("pipeline").setLevel(logging.WARNING)  # rank 0 tells the story
    return ranks, device


def lost_contact(error: BaseException, ranks: Ranks) -> BaseException | None:
    """What to raise for a collective that failed because another rank went away: a
    SystemExit(EXIT_LOST_CONTACT) after a warning, since the cause is the other rank's (its
    own error, or the launcher's line, names it); None for anything else."""
    transports = ("gloo", "NCCL", "Connection reset", "Connection closed", "Broken pipe", "pair closure")
    if not ranks.active or not isinstance(error, RuntimeError) or not any(t in str(error) for t in transports):
        return None
    log.warning("rank %d stopped: another process went away (%s)", ranks.rank, str(error).splitlines()[0])
    return SystemExit(EXIT_LOST_CONTACT)


def stop(ranks: Ranks) -> None:
    if ranks.active and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ranks: Ranks, waits_for: str = "the other processes") -> None:
    """Wait until every rank is here; a UserError naming what it waited for, and the param
    that sets how long, when the process group's timeout runs out first."""
    if not ranks.active:
        return
    try:
        dist.barrier()
    except RuntimeError as error:
        if "timed out" not in str(error).lower() and "timeout" not in str(error).lower():
            raise lost_contact(error, ranks) or error from None
        raise UserError(
            f"process rank {ranks.rank} gave up waiting for {waits_for} after wait_minutes = {ranks.wait_minutes}: "
            "raise wait_minutes in params.yaml if that takes longer here"
        ) from None


def main_first(ranks: Ranks, make: Callable[[], T], what: str) -> T:
    """`make()` on rank 0, then on the others: what rank 0 writes on the way (the decoded
    cache, a cleaned run folder), the others then only read. `what` names rank 0's work
    for the message of a wait that runs out (`barrier`)."""
    if ranks.main:
        result = make()
        barrier(ranks, f"rank 0 to {what}")
        return result
    barrier(ranks, f"rank 0 to {what}")
    return make()


def share_buffers(model: nn.Module, ranks: Ranks) -> None:
    """Give every rank rank 0's buffers (BatchNorm's running statistics), as
    DistributedDataParallel does before each training step. After an epoch each rank holds
    the statistics of its own share of the last batches, and rank 0's are the ones its
    checkpoint saves: scoring with them makes validation that of the saved weights."""
    if not ranks.active:
        return
    for buffer in model.buffers():
        moved = buffer.to(_collective_device())
        dist.broadcast(moved, src=0)
        if moved is not buffer:
            buffer.copy_(moved)


def gather(value: T, ranks: Ranks) -> list[T]:
    """Every rank's `value` (any picklable object), in rank order, on every rank."""
    if not ranks.active:
        return [value]
    gathered: list[Any] = [None] * ranks.world
    dist.all_gather_object(gathered, value)
    return gathered


def cpu_threads(requested: int, local_processes: int) -> int:
    """The torch threads of each of `local_processes` processes on this machine: `requested`
    when above 0; else the cores this process may use, divided among them. One process keeps
    torch's own choice (its physical cores, or OMP_NUM_THREADS), so its results stay what they
    were; several would each get OMP_NUM_THREADS=1 from torchrun and leave cores idle."""
    if requested > 0:
        return requested
    if local_processes == 1:
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // local_processes)


def local_processes() -> int:
    """How many ranks torchrun started on this machine (1 when not launched)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if launched() else 1


def check_sync_batchnorm(device: torch.device) -> None:
    """torch runs SyncBatchNorm only on GPUs: check_params refuses it elsewhere, before any work."""
    if device.type != "cuda":
        raise UserError(
            f"train.sync_batchnorm needs CUDA, and device is {device}: torch's SyncBatchNorm runs only on GPUs"
        )


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` with its BatchNorm layers as SyncBatchNorm: batch statistics over every rank's
    share of the batch, not one rank's (the same state_dict keys)."""
    check_sync_batchnorm(device)
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap(net: nn.Module, device: torch.device) -> nn.Module:
    """`net` as DistributedDataParallel: its trainable parameters' gradients are averaged over
    the ranks in each backward pass. It records which parameters train, so each freeze phase
    wraps anew."""
    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def shard(items: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """This rank's part of `items` (an epoch's order, or rows aligned with it), as
    DistributedSampler takes it: padded with its first rows to a multiple of the world size,
    then every world-th row from the rank's own. All ranks get the same count."""
    if not ranks.active:
        return items
    return pad(items, ranks.world)[ranks.rank :: ranks.world]


def pad(items: torch.Tensor, world: int) -> torch.Tensor:
    """`items` padded with its first rows to a multiple of `world` rows, as `shard` pads them."""
    padding = -len(items) % world
    return torch.cat([items, items[:padding]]) if padding else items


def unshard(local: torch.Tensor, total: int, ranks: Ranks) -> torch.Tensor:
    """Every rank's `local` rows (this rank's `shard` of `total` rows), back in the order of
    the whole, on every rank, on `local`'s device."""
    if not ranks.active:
        return local
    moved = local.to(_collective_device()).contiguous()
    gathered = [torch.empty_like(moved) for _ in range(ranks.world)]
    dist.all_gather(gathered, moved)
    # Row j of rank r is row j * world + r of the padded whole.
    return torch.stack(gathered, dim=1).flatten(0, 1)[:total].to(local.device)


def all_sum(values: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """`values` summed over the ranks, on every rank, on `values`' device."""
    if not ranks.active:
        return values
    moved = values.to(_collective_device()).contiguous()
    dist.all_reduce(moved)
    return moved.to(values.device)


def _collective_device() -> torch.device:
    """Where the backend takes tensors: NCCL the current GPU, gloo the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
