"""The cost of each training recipe per optimizer step, as a share of the step, on this machine.

    python -m bench.recipes                           # resnet18 at 64 and 224 px, batch 64
    python -m bench.recipes --size 224 --steps 3

For each size: the median time of a plain training step (forward, backward, SGD step) on
normalised images, of each augmentation recipe on the same batch (pipeline.augment, as
train runs it), and of one update of the weights' moving average (optim.weights_average).
A recipe's share is its time / (the plain step + its time): what it adds to each step.
"""

import argparse
import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision.models import get_model

from bench.run import median_time
from pipeline.augment import batch_augmentation
from pipeline.config import AugmentParams, AugmentPolicy
from pipeline.optim import weights_average

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
OFF = AugmentParams(
    hflip=False, min_scale=1.0, max_aspect=1.0, policy=AugmentPolicy.none, randaugment_ops=2,
    randaugment_magnitude=9, erasing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0, mix_switch=0.5,
)  # fmt: skip
RECIPES = {
    "trivialaugment": {"policy": AugmentPolicy.trivialaugment},
    "randaugment": {"policy": AugmentPolicy.randaugment},
    "autoaugment": {"policy": AugmentPolicy.autoaugment},
    "erasing 0.25": {"erasing": 0.25},
    "mixup + cutmix": {"mixup_alpha": 0.2, "cutmix_alpha": 1.0},
}


def median_seconds(run: Callable[[], object], steps: int) -> float:
    run()  # warm-up: oneDNN picks its kernels
    return median_time(run, steps)


def measure(arch: str, size: int, batch: int, steps: int) -> None:
    torch.manual_seed(0)
    model = get_model(arch, num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    mean, std = torch.tensor(MEAN).view(1, -1, 1, 1), torch.tensor(STD).view(1, -1, 1, 1)
    images, targets = (pixels.float() / 255 - mean) / std, torch.randint(0, 10, (batch,))

    def step() -> None:
        optimizer.zero_grad()
        F.cross_entropy(model.train()(images), targets).backward()
        optimizer.step()

    keys = torch.arange(batch)  # each image's seed for its draws, as an epoch's order gives them
    plain = median_seconds(step, steps)
    print(f"{arch} at {size} px, batch {batch}: plain step {plain * 1000:.0f} ms")
    for name, changes in RECIPES.items():
        augment = batch_augmentation(dataclasses.replace(OFF, **changes), 10, MEAN, STD, torch.device("cpu"))
        cost = median_seconds(lambda augment=augment: augment(images, targets, keys), steps)
        print(f"  {name:16s} {cost * 1000:7.1f} ms   share {cost / (plain + cost):.3f}")
    ema = weights_average(model, 0.999, warmup=True)  # as the train stage runs it by default
    cost = median_seconds(lambda: ema.update_parameters(model), steps)
    print(f"  {'ema update':16s} {cost * 1000:7.1f} ms   share {cost / (plain + cost):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, action="append", help="image size (default: 64 and 224)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed repeats of each (default 5; the median counts)")
    args = parser.parse_args()
    print(f"{torch.get_num_threads()} torch threads")
    for size in args.size or [64, 224]:
        measure(args.arch, size, args.batch, args.steps)


if __name__ == "__main__":
    main()
