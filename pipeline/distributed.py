"""Training on several processes: torchrun starts them, torch.distributed connects them.

With `train.processes: N` above 1, the train stage starts N copies of itself on this machine
through torchrun's own Python API (`torch.distributed.run`, standalone rendezvous) and waits
for them. Across machines, the user runs `torchrun` on each (docs/distributed.md); either
way each copy is a rank, found from the variables torchrun sets.

- NCCL on CUDA, one GPU per process (the local rank's); gloo on the CPU.
- Each epoch's seeded order is split as `DistributedSampler` splits it (`shard`), and
  `train.batch_size` is the global batch: each rank steps on batch_size / world items.
  DistributedDataParallel averages the gradients, so a step sees the same items as one
  process would.
- Rank 0 alone writes checkpoints, curves and logs.
"""

import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.cli import Terminated, UserError

log = logging.getLogger("pipeline.distributed")

T = TypeVar("T")

# How long a rank waits in a collective for the others before it fails. A rank that dies is
# noticed sooner: torchrun stops the others as soon as one process exits with an error.
TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class Ranks:
    """Which process this is among those that train together."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Ranks()


def launched() -> bool:
    """Whether torchrun (or a launcher that sets the same variables) started this process."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def launch(processes: int, module: str) -> None:
    """Run `python -m module` as `processes` ranks on this machine, as `torchrun --standalone
    --nproc-per-node=N -m module` does, and wait for them. A failed rank: a UserError naming it."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={processes}", "-m", module])
    log.info("starting %d training processes (torchrun --standalone --nproc-per-node=%d)", processes, processes)
    try:
        run(args)
    except SignalException as error:
        # torchrun's own handler stopped the ranks; end as run_stage ends a single process.
        raise KeyboardInterrupt if error.sigval == signal.SIGINT else Terminated from None
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        how = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
        raise UserError(
            f"training process rank {rank} (pid {failure.pid}) failed with {how}, and the others were stopped; "
            "every checkpoint written so far is complete, and rerunning resumes after the last one"
        ) from None


def start(device: torch.device) -> tuple[Ranks, torch.device]:
    """Join the other ranks when torchrun started this process: (this rank, its device)."""
    if not launched():
        return SINGLE, device
    ranks = Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    if device.type == "cuda":
        if ranks.local_rank >= torch.cuda.device_count():
            raise UserError(
                f"training process {ranks.local_rank} on this machine has no GPU of its own "
                f"({torch.cuda.device_count()} here): lower train.processes"
            )
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT, device_id=device if device.type == "cuda" else None)
    if not ranks.main:
        logging.getLogger("pipeline").setLevel(logging.WARNING)  # rank 0 tells the story
    return ranks, device


def lost_contact(error: BaseException, ranks: Ranks) -> UserError | None:
    """The one-line error for a collective that failed because another rank went away (its
    own error, or the launcher, names which); None for anything else."""
    transports = ("gloo", "NCCL", "Connection reset", "Connection closed", "Broken pipe")
    if not ranks.active or not isinstance(error, RuntimeError) or not any(t in str(error) for t in transports):
        return None
    return UserError(f"training process rank {ranks.rank} lost contact with another one ({str(error).splitlines()[0]})")


def stop(ranks: Ranks) -> None:
    if ranks.active and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ranks: Ranks) -> None:
    if ranks.active:
        dist.barrier()


def main_first(ranks: Ranks, make: Callable[[], T]) -> T:
    """`make()` on rank 0, then on the others: what rank 0 writes on the way (the decoded
    cache, a cleaned run folder), the others then only read."""
    if ranks.main:
        result = make()
        barrier(ranks)
        return result
    barrier(ranks)
    return make()


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` with its BatchNorm layers as SyncBatchNorm: batch statistics over every rank's
    share of the batch, not one rank's (the same state_dict keys). torch runs it only on GPUs."""
    if device.type != "cuda":
        raise UserError("train.sync_batchnorm needs CUDA: torch's SyncBatchNorm runs only on GPUs")
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
    padding = -len(items) % ranks.world
    padded = torch.cat([items, items[:padding]]) if padding else items
    return padded[ranks.rank :: ranks.world]


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
