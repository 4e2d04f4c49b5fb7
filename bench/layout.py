"""Images/s on the CPU with the default memory layout and with channels_last, for a forward
pass (no grad) and for a training step, per model and image size.

    python -m bench.layout                                   # the default cases
    python -m bench.layout --case resnet18:224:forward --seconds 8

The pipeline keeps the default layout on the CPU (engine.memory_format); this measures what
channels_last would change.
"""

import argparse
import time

import torch
import torch.nn.functional as F
from torchvision.models import get_model

CASES = ["resnet18:224:forward", "resnet18:32:train", "shufflenet_v2_x0_5:32:train", "mobilenet_v3_small:64:train"]


def images_per_second(arch: str, size: int, kind: str, layout: torch.memory_format, seconds: float) -> float:
    torch.manual_seed(0)
    model = get_model(arch, num_classes=10).to(memory_format=layout)
    images = torch.randn(64, 3, size, size).to(memory_format=layout)
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
        rates = [images_per_second(arch, int(size), kind, layout, args.seconds) for layout in
                 (torch.contiguous_format, torch.channels_last)]  # fmt: skip
        print(f"{case:32s} default {rates[0]:7.1f}  channels_last {rates[1]:7.1f}  ratio {rates[1] / rates[0]:.2f}")


if __name__ == "__main__":
    main()
