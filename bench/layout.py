"""Images/s on the CPU with the default memory layout and with channels_last, for a forward
pass (no grad) and for a training step, per model and image size; for a forward pass also
the frozen feature pass's network (features.folded_for_cpu: BatchNorm folded, channels_last).

    python -m bench.layout                                   # the default cases
    python -m bench.layout --case resnet18:224:forward --seconds 8

The pipeline keeps the default layout on the CPU (devices.memory_format) for training and
prediction, and folds only for the frozen feature pass; this measures what each changes.
"""

import argparse
import time

import torch
import torch.nn.functional as F
from torchvision.models import get_model

from pipeline.backbones import family_of
from pipeline.features import folded_for_cpu

CASES = [
    "resnet18:224:forward", "efficientnet_b0:224:forward", "mobilenet_v3_small:224:forward",
    "resnet18:32:train", "shufflenet_v2_x0_5:32:train", "mobilenet_v3_small:64:train",
]  # fmt: skip


def images_per_second(arch: str, size: int, kind: str, layout: str, seconds: float) -> float:
    """`layout`: "default", "channels_last" or "folded" (a forward pass only)."""
    torch.manual_seed(0)
    model = get_model(arch, num_classes=10)
    memory_format = torch.contiguous_format if layout == "default" else torch.channels_last
    if layout == "folded":  # as features.head_inputs runs it: the folded convolutions and inputs channels-last
        folded = folded_for_cpu(model.eval(), family_of(arch).find_head(model))
        model = model if folded is None else folded
        memory_format = torch.contiguous_format if folded is None else memory_format
    else:
        model = model.to(memory_format=memory_format)
    images = torch.randn(64, 3, size, size).to(memory_format=memory_format)
    targets = torch.randint(0, 10, (64,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> None:
        if kind == "forward":
            with torch.no_grad():
                model.eval()(images)
            return
        optimizer.zero_grad()
        F.cross_entropy(model.train()(images), targets).backward()
        optimizer.step()

    for _ in range(2):
        step()  # warm-up: oneDNN picks its kernels
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        step()
        done += len(images)
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", help="ARCH:SIZE:forward|train (default: a few)")
    parser.add_argument("--seconds", type=float, default=6.0, help="time per measurement (default 6)")
    args = parser.parse_args()
    print(f"batch 64, {torch.get_num_threads()} threads")
    for case in args.case or CASES:
        arch, size, kind = case.split(":")
        layouts = ["default", "channels_last"] + (["folded"] if kind == "forward" else [])
        rates = {layout: images_per_second(arch, int(size), kind, layout, args.seconds) for layout in layouts}
        print(f"{case:32s}", "  ".join(f"{k} {v:7.1f} ({v / rates['default']:.2f}x)" for k, v in rates.items()))


if __name__ == "__main__":
    main()
