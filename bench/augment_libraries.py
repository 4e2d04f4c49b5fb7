"""TrivialAugmentWide per image with torchvision.transforms.v2 (what pipeline.augment runs)
against kornia's TrivialAugment, per image and per batch, on the CPU.

    pip install kornia==0.9.0    # not a dependency of the pipeline; only this bench needs it
    python -m bench.augment_libraries [--size 224] [--batch 64] [--repeats 5]

kornia's policies choose their op once per call, for the whole batch (its TrivialAugment's
get_forward_sequence samples one index), so a batch call is not the per-image recipe: it
is timed for reference. Medians of `repeats`, each library in turn.
"""

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torchvision.transforms import v2


def median_ms(run: Callable[[], object], repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    from kornia.augmentation.auto import TrivialAugment

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    pixels = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8)
    floats = pixels.float() / 255  # kornia works on [0, 1] floats
    torchvision_policy, kornia_policy = v2.TrivialAugmentWide(), TrivialAugment()
    cases = {
        "v2, per image (the pipeline)": lambda: torch.stack([torchvision_policy(image) for image in pixels]),
        "kornia, per image": lambda: torch.cat([kornia_policy(image[None]) for image in floats]),
        "kornia, per batch (one op for all)": lambda: kornia_policy(floats),
    }
    print(f"{args.batch} images of {args.size} px, {torch.get_num_threads()} torch threads")
    for name, run in cases.items():
        print(f"  {name:36s} {median_ms(run, args.repeats):8.1f} ms")


if __name__ == "__main__":
    main()
