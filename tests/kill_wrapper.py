"""Run the real train stage, but SIGKILL it (or poison its loss) at an exact point.

    python -m tests.kill_wrapper POINT N    (from the project root)

POINT is what gets patched and N is which call of it triggers:
    step     the N-th optimizer step                        (a kill mid-epoch)
    save     the N-th torch.save: half its bytes written    (a kill mid-checkpoint-write)
    publish  just after the N-th checkpoint is published    (a kill between epochs)
    nan      the N-th cross-entropy returns NaN              (a diverging run; no kill)
    inf      the N-th cross-entropy returns +inf             (the same, overflowing instead)
    term     the N-th optimizer step sends SIGTERM to itself (a scheduler stopping the job)
    int      the N-th optimizer step sends SIGINT to itself  (Ctrl-C)
    intsave  the N-th torch.save gets SIGINT between writes  (Ctrl-C mid-checkpoint-write)
    orphan   the N-th optimizer step of a training process SIGKILLs its launcher's whole process
             group, as `kill -9 -- -PGID` of the `dvc repro` would, and goes on (ranks are in
             sessions of their own, out of that group)
    slow     decoding the images (data.cache.decoded_images) first sleeps N seconds

tests/helpers.py's `kill_env` installs the same patches (but `publish`) through a
sitecustomize module instead, for the train stage that `dvc repro` starts.
"""

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import torch


def on_call(owner: Any, name: str, trigger: int, action: Callable[..., Any]) -> None:
    """Replace owner.name so that its `trigger`-th call runs `action(original, *args)` instead."""
    original = getattr(owner, name)
    calls = 0

    def patched(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == trigger:
            return action(original, *args, **kwargs)
        return original(*args, **kwargs)

    setattr(owner, name, patched)


def die(*_: Any, **__: Any) -> None:
    if os.environ.get("KILL_GROUP"):  # the whole process group, as `kill -9 -PGID` would: dvc too
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def kill_launcher_group(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)
    return original(*args, **kwargs)


def half_save(original: Callable[..., None], obj: Any, file: Any, *args: Any, **kwargs: Any) -> None:
    original(obj, file, *args, **kwargs)
    file.seek(0, os.SEEK_END)
    file.truncate(file.tell() // 2)
    file.flush()
    os.fsync(file.fileno())
    die()


class InterruptedWrites:
    """A file whose third write first sends SIGINT to the process: the signal lands while
    torch.save's zip writer is in the middle of a checkpoint."""

    def __init__(self, file: Any) -> None:
        self.file, self.writes = file, 0

    def write(self, data: bytes) -> int:
        self.writes += 1
        if self.writes == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def interrupted_save(original: Callable[..., None], obj: Any, file: Any, *args: Any, **kwargs: Any) -> None:
    original(obj, InterruptedWrites(file), *args, **kwargs)


def publish_then_die(original: Callable[..., None], *args: Any) -> None:
    original(*args)
    die()


def nan_loss(original: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
    return original(*args, **kwargs) * float("nan")


def inf_loss(original: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
    return original(*args, **kwargs) * float("inf")  # a cross-entropy is > 0: +inf, not NaN


def install(point: str, trigger: int) -> None:
    """Patch torch (or the pipeline) so that the `trigger`-th call at `point` (step, save, nan,
    inf...) strikes."""
    if point == "step":
        on_call(torch.optim.SGD, "step", trigger, lambda original, *a, **k: die())
    elif point == "save":
        on_call(torch, "save", trigger, half_save)
    elif point == "intsave":
        on_call(torch, "save", trigger, interrupted_save)
    elif point == "nan":
        on_call(torch.nn.functional, "cross_entropy", trigger, nan_loss)
    elif point == "inf":
        on_call(torch.nn.functional, "cross_entropy", trigger, inf_loss)
    elif point == "slow":
        import time

        import pipeline.data.cache as cache  # before the stage imports it, so that it gets the patched one

        on_call(cache, "decoded_images", 1, lambda original, *a, **k: (time.sleep(trigger), original(*a, **k))[1])
    elif point == "orphan":
        on_call(torch.optim.SGD, "step", trigger, kill_launcher_group)
    elif point in ("term", "int"):
        number = signal.SIGTERM if point == "term" else signal.SIGINT
        on_call(torch.optim.SGD, "step", trigger, lambda original, *a, **k: os.kill(os.getpid(), number))
    else:
        raise SystemExit(f"unknown point {point}")


if __name__ == "__main__":
    import pipeline.runs as runs
    import pipeline.train as train
    from pipeline.cli import run_stage

    point, trigger = sys.argv[1], int(sys.argv[2])
    if point == "publish":
        on_call(runs, "publish", trigger, publish_then_die)
    else:
        install(point, trigger)
    run_stage(train.main)
