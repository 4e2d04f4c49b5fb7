"""Several training processes on the CPU (gloo), on synthetic tensors: what they gain, and
what the gradient all-reduce costs.

    python -m bench.distributed                        # resnet18 and resnet50 at 64 px
    python -m bench.distributed --arch resnet18 --image-size 112 --seconds 10

For each model, with the same global batch (64):
  - images/s of 2 processes with 1 thread each (DistributedDataParallel over gloo) against
    1 process with 2 threads, the same training step otherwise;
  - the all-reduce's share of a step in the 2-process run: 1 - (step time under DDP's
    `no_sync()`, which skips the all-reduce) / (step time with it).
"""

import argparse
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torchvision.models import get_model

GLOBAL_BATCH = 64


def step_seconds(model: torch.nn.Module, batch: int, size: int, seconds: float, no_sync: bool = False) -> float:
    """The mean time of a training step, over about `seconds` (after two warm-up steps)."""
    torch.manual_seed(0)
    images, targets = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> None:
        optimizer.zero_grad()
        if no_sync:
            with model.no_sync():
                F.cross_entropy(model(images), targets).backward()
        else:
            F.cross_entropy(model(images), targets).backward()
        optimizer.step()

    for _ in range(2):
        step()
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        steps += 1
    # Every rank must take the same number of steps: agree on the smallest count, then time it.
    if dist.is_initialized():
        count = torch.tensor(steps)
        dist.all_reduce(count, op=dist.ReduceOp.MIN)
        steps = int(count)
        dist.barrier()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps


def rank_main(rank: int, world: int, port: int, arch: str, size: int, seconds: float, queue: mp.Queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = DistributedDataParallel(get_model(arch, num_classes=10))
    with_sync = step_seconds(model, GLOBAL_BATCH // world, size, seconds)
    without = step_seconds(model, GLOBAL_BATCH // world, size, seconds, no_sync=True)
    if rank == 0:
        queue.put((with_sync, without))
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", action="append", help="torchvision model (default: resnet18 and resnet50)")
    parser.add_argument("--image-size", type=int, default=64, help="input size in pixels (default 64)")
    parser.add_argument("--seconds", type=float, default=6.0, help="time per measurement (default 6)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, global batch {GLOBAL_BATCH}, {args.image_size} px")
    for arch in args.arch or ["resnet18", "resnet50"]:
        torch.set_num_threads(2)
        one = step_seconds(get_model(arch, num_classes=10), GLOBAL_BATCH, args.image_size, args.seconds)
        queue = mp.get_context("spawn").Queue()
        mp.spawn(rank_main, (2, free_port(), arch, args.image_size, args.seconds, queue), nprocs=2)
        two, two_no_sync = queue.get()
        print(
            f"{arch}: 1 process x 2 threads {GLOBAL_BATCH / one:6.1f} images/s; 2 processes x 1 thread "
            f"{GLOBAL_BATCH / two:6.1f} images/s (ratio {one / two:.2f}); all-reduce share of a step "
            f"{1 - two_no_sync / two:.3f}"
        )


if __name__ == "__main__":
    main()
