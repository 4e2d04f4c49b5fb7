"""How far a run on several processes lands from the same run on one, setting by setting.

    python -m bench.distributed_agreement                     # every setting, 1 epoch
    python -m bench.distributed_agreement --only batchnorm --epochs 2

The train stage of the digits demo (resnet18 at 16 px from random weights, global batch
128, lr 0.1), in copies of one prepared project, each setting trained twice: on 1 process
and on N (gloo, `train.processes`). What differs between the two runs of a setting is how
its global batches are split, nothing else, so the differences below are what the split
costs. The `threads` settings are the yardsticks: 1 process with 1 CPU thread against 1
process with 2, float rounding alone (with frozen BatchNorm, and with BatchNorm training).

For each setting, after the last epoch: the relative difference (L2 norm of the difference
over the L2 norm) of the trained weights and of BatchNorm's running statistics where they
change, and the relative difference of the training loss and of the val loss.
"""

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from pipeline.checkpoints import load_checkpoint, load_weights_file
from pipeline.paths import START_FILE
from testing.project import copy_project, make_project, run, set_checked_params, set_params

FROZEN = {"freeze": "all_but_head", "train.cache_features": False}
# Every layer trains from random weights: at lr 0.1 (the head's) that diverges within the epoch.
BATCHNORM = {"freeze": "none", "train.lr": 0.01}
# name: (what it is, the params of both runs, the params of the second run only)
SETTINGS = {
    "threads": ("1 process, 1 CPU thread against 2 (the rounding yardstick)", FROZEN, {"train.threads": 1}),
    "threads_bn": (
        "BatchNorm training (freeze: none, lr 0.01), 1 process, 1 CPU thread against 2 (its yardstick)",
        BATCHNORM,
        {"train.threads": 1},
    ),
    "frozen": ("frozen BatchNorm (all_but_head), 2 processes", FROZEN, {"train.processes": 2}),
    "accumulate": (
        "frozen BatchNorm, 1 process x 2 accumulated batches against 2 processes",
        {**FROZEN, "train.processes": 2},
        {"train.processes": 1, "train.accumulate_steps": 2},
    ),
    "policy": (
        "frozen BatchNorm, TrivialAugment and erasing 0.5, 2 processes",
        {**FROZEN, "train.augment.policy": "trivialaugment", "train.augment.erasing": 0.5},
        {"train.processes": 2},
    ),
    "batchnorm": ("BatchNorm training (freeze: none, lr 0.01), 2 processes", BATCHNORM, {"train.processes": 2}),
    "uneven": (
        "frozen BatchNorm, 538 images on 3 processes (global batch 96): 2 padded items an epoch",
        {**FROZEN, "train.batch_size": 96},
        {"train.processes": 3},
    ),
    "class_weights": (
        "frozen BatchNorm, class_weights: balanced, 2 processes",
        {**FROZEN, "train.class_weights": "balanced"},
        {"train.processes": 2},
    ),
    "mixing": (
        "frozen BatchNorm, MixUp 0.2 and CutMix 1.0, 2 processes",
        {**FROZEN, "train.augment.mixup_alpha": 0.2, "train.augment.cutmix_alpha": 1.0},
        {"train.processes": 2},
    ),
}
BASE = {"model.arch": "resnet18", "model.weights": None, "train.lr": 0.1}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / a.double().norm()).item()


def differences(first: dict, second: dict, start: dict) -> dict[str, float]:
    """The relative differences of the two runs' last checkpoints, over the tensors that
    training changed (`start`: the backbone's starting state; the new head is not in it)."""
    weights, statistics = [], []
    for name, tensor in first["model_state_dict"].items():
        if not tensor.is_floating_point() or (name in start and torch.equal(tensor, start[name])):
            continue
        bucket = statistics if "running_" in name else weights
        bucket.append((tensor.flatten(), second["model_state_dict"][name].flatten()))

    def joined(pairs: list) -> float:
        return relative(torch.cat([a for a, _ in pairs]), torch.cat([b for _, b in pairs])) if pairs else math.nan

    return {
        "weights": joined(weights),
        "bn_stats": joined(statistics),
        "loss": abs(first["loss"] - second["loss"]) / abs(first["loss"]),
        "val_loss": abs(first["val_loss"] - second["val_loss"]) / abs(first["val_loss"]),
    }


def train(prepared: Path, folder: Path, params: dict) -> dict:
    """The last checkpoint of the train stage, run in a copy of `prepared` with `params`."""
    project = copy_project(prepared, folder)
    set_checked_params(project, **params)
    run([sys.executable, "-m", "pipeline.train"], project)
    return load_checkpoint(max(project.glob("checkpoints/epoch_*.pt")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=sorted(SETTINGS), help="a setting (default: all)")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        prepared = make_project(Path(scratch) / "prepared")
        set_params(prepared, **BASE, **{"train.epochs": args.epochs})
        run([sys.executable, "-m", "dvc", "repro", "weights", "prepare"], prepared)
        start = load_weights_file(prepared / START_FILE)["model_state_dict"]
        print(
            f"torch {torch.__version__}, {args.epochs} epoch(s); relative differences of the second run from the first"
        )
        print(f"{'setting':14s} {'weights':>9s} {'bn_stats':>9s} {'loss':>9s} {'val_loss':>9s}  what")
        for name in args.only or SETTINGS:
            what, both, second = SETTINGS[name]
            one = train(prepared, Path(scratch) / f"{name}-1", both)
            two = train(prepared, Path(scratch) / f"{name}-2", {**both, **second})
            found = differences(one, two, start)
            print(f"{name:14s} " + " ".join(f"{found[key]:9.1e}" for key in found) + f"  {what}", flush=True)
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
