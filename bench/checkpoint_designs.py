"""What a training loop pays for an epoch's checkpoint, for three ways of writing it.

    python -m bench.checkpoint_designs [--images N] [--epochs E] [--runs R] [--json FILE]

The train stage's own loop (resnet18 with 10 classes, 32 px, batch 64, SGD with momentum)
over N random images held in memory, so the epoch is the demo's compute without its data
path; the checkpoint is the demo's (weights and momentum, 90 MB). Each design is measured
as R pairs of runs of E epochs, alternating: a run without checkpoints, then a run with one
after every epoch and the wait for the last write at its end (a stage waits for it too).
The loop's cost per epoch is the median of the pairs' differences over E, as a share of
the median run without checkpoints over E.

1. `inline`: the pipeline's own `save_checkpoint` (checksum, torch.save, fsync, atomic
   rename, folder fsync), on the training thread, as the train stage does it.
2. `fsync_behind`: the checksum and torch.save on the training thread, into a temporary
   file; its fsync, the rename and the folder's fsync on a thread while the next epoch trains.
3. `thread`: the tensors copied on the training thread, then the whole `save_checkpoint` on
   a thread while the next epoch trains.

Each background write is waited for before the next one starts, as a writer that keeps
epochs in order would. The difference the thread makes depends on idle cores: where
training keeps every core busy, the thread's work slows the epoch by about as much as it
takes off the loop.
"""

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.loops import synthetic_images
from bench.report import finish, markdown_table
from pipeline.batches import ImageBatches
from pipeline.checkpoints import FORMAT, content_digest, save_checkpoint
from pipeline.engine import LoopOptions, train_one_epoch
from pipeline.files import fsync_folder
from pipeline.models import build_model

DEMO_TRAIN_IMAGES = 538  # the demo's train split: 60% of its 896 target images
SIZE, BATCH = 32, 64


class Trainer:
    """The train stage's own loop (engine.train_one_epoch) on the demo's model, size and
    batch, over random images held in memory, and its checkpoint."""

    def __init__(self, images: int) -> None:
        torch.manual_seed(0)
        classes = [str(k) for k in range(10)]
        pixels, targets = synthetic_images(images, SIZE, len(classes))
        built = build_model("resnet18", None, classes, SIZE)
        self.model = built.model
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        cpu = torch.device("cpu")
        self.data = ImageBatches(pixels, torch.arange(images), targets, cpu, built.spec.mean, built.spec.std)
        self.epochs = 0

    def epoch(self) -> None:
        self.epochs += 1  # each epoch its own seeded order, as in a run
        train_one_epoch(self.model, self.data, self.optimizer, LoopOptions(batch_size=BATCH), self.epochs)

    def checkpoint(self, epoch: int) -> dict:
        state = {"model_state_dict": self.model.state_dict(), "optimizer_state_dict": self.optimizer.state_dict()}
        return {"epoch": epoch, **state, "loss": 0.0}


class Background:
    """One write at a time on a thread; `wait` for the one in flight."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None

    def start(self, work: Callable[[], None]) -> None:
        self.wait()
        self.thread = threading.Thread(target=work)
        self.thread.start()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None


def designs(background: Background) -> dict[str, Callable[[dict, Path], None]]:
    def inline(checkpoint: dict, path: Path) -> None:
        save_checkpoint(checkpoint, path)

    def fsync_behind(checkpoint: dict, path: Path) -> None:
        checkpoint = {**checkpoint, "format": FORMAT}
        checkpoint["checksum"] = content_digest(checkpoint)
        temporary = path.with_name(f".{path.name}.tmp")
        file = open(temporary, "wb")  # noqa: SIM115 (closed by the thread)
        torch.save(checkpoint, file)
        file.flush()

        def durable() -> None:
            os.fsync(file.fileno())
            file.close()
            os.replace(temporary, path)
            fsync_folder(path.parent)

        background.start(durable)

    def thread(checkpoint: dict, path: Path) -> None:
        snapshot = clone(checkpoint)  # the tensors are on the CPU already
        background.start(lambda: save_checkpoint(snapshot, path))

    return {"inline": inline, "fsync_behind": fsync_behind, "thread": thread}


def clone(obj: object) -> object:
    """`obj` with every tensor copied, so the next optimizer steps do not reach the copy."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {key: clone(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(clone(item) for item in obj)
    return obj


def measure(
    trainer: Trainer,
    write: Callable[[dict, Path], None],
    wait: Callable[[], None],
    folder: Path,
    runs: int,
    epochs: int,
) -> dict:
    """`runs` pairs, alternating: `epochs` epochs alone, then `epochs` epochs each followed by
    its checkpoint, and the wait for the last write (a stage ends with it)."""
    alone, saving = [], []
    for _ in range(runs):
        started = time.perf_counter()
        for _ in range(epochs):
            trainer.epoch()
        alone.append(time.perf_counter() - started)
        started = time.perf_counter()
        for number in range(1, epochs + 1):
            trainer.epoch()
            write(trainer.checkpoint(number), folder / f"epoch_{number:03d}.pt")
        wait()
        saving.append(time.perf_counter() - started)
    epoch = statistics.median(alone) / epochs
    cost = statistics.median(saving[i] - alone[i] for i in range(runs)) / epochs
    return {"epoch_s": epoch, "loop_pays_s": cost, "share_of_epoch": cost / epoch}


def main() -> None:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=DEMO_TRAIN_IMAGES)
    parser.add_argument("--epochs", type=int, default=8, help="epochs per run (the demo's 8)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each kind, alternating")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    trainer = Trainer(args.images)
    for _ in range(2):  # warm-up: allocator, kernels
        trainer.epoch()
    report: dict = {"threads": torch.get_num_threads(), "cores": os.cpu_count(), "images": args.images}
    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-designs.") as scratch:
        background = Background()
        for name, write in designs(background).items():
            folder = Path(scratch) / name
            folder.mkdir()
            report[name] = measure(trainer, write, background.wait, folder, args.runs, args.epochs)
            shutil.rmtree(folder)
    finish(report, started, render, args.json)


def render(report: dict) -> str:
    rows = [("design", "loop pays (s)", "share of the epoch", "epoch alone (s)")]
    for name in ("inline", "fsync_behind", "thread"):
        figures = report[name]
        rows.append(
            (name, f"{figures['loop_pays_s']:.3f}", f"{figures['share_of_epoch']:.3f}", f"{figures['epoch_s']:.3f}")
        )
    header = f"{report['images']} images, torch on {report['threads']} threads of {report['cores']} cores"
    return header + "\n" + markdown_table(rows)


if __name__ == "__main__":
    main()
