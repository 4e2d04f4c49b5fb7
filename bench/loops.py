"""The train stage's training loop against a raw one, on equal terms, in images/s.

Both get the same model, optimizer, batch size and uint8 images, and both normalise each
batch, use the device's layout and, on CUDA, bf16 autocast. The raw loop is what a person
writes by hand with every tensor already on the device; the stage's loop is
`engine.train_one_epoch`, with the images on the device or streamed from CPU memory.

Imports only torch, torchvision and the engine, so it runs where only those are installed.
"""

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.batches import ImageBatches, normalization_tensors
from pipeline.devices import autocast, memory_format, place_model
from pipeline.engine import LoopOptions, train_one_epoch
from pipeline.models import build_model


def synthetic_images(n: int, size: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n random uint8 images (N, 3, size, size) and targets, on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, classes, (n,), generator=generator)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - started


def raw_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, data: ImageBatches, batch_size: int, seed: int
) -> None:
    """The hand-written loop: device-side indices, normalise, layout, autocast, step."""
    device = data.device
    images, targets = data.images.to(device), data.targets.to(device)
    mean, std = normalization_tensors(data.mean, data.std, device)
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed)).to(device)
    model.train()
    for index in order.split(batch_size):
        x = ((images[index].float() - mean) / std).contiguous(memory_format=memory_format(device))
        with autocast(device):
            loss = F.cross_entropy(model(x), targets[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def stage_vs_raw(
    arch: str, size: int, batch_size: int, n_images: int, device: torch.device, repeats: int = 3
) -> dict[str, float]:
    """Images/s of the stage's loop (images on the device, and streamed from the CPU when the
    device is a GPU) and of the raw loop, their ratios, and peak GPU memory of each."""
    classes = 10
    images, targets = synthetic_images(n_images, size, classes)
    built = build_model(arch, None, [str(k) for k in range(classes)], size)
    model = place_model(built.model, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rows = torch.arange(n_images)
    on_device = ImageBatches(images.to(device), rows, targets, device, built.spec.mean, built.spec.std)
    variants: dict[str, Callable[[int], object]] = {
        "raw": lambda epoch: raw_epoch(model, optimizer, on_device, batch_size, epoch),
        "stage": lambda epoch: train_one_epoch(model, on_device, optimizer, LoopOptions(batch_size=batch_size), epoch),
    }  # fmt: skip
    if device.type == "cuda":
        streamed = ImageBatches(images, rows, targets, device, built.spec.mean, built.spec.std)  # CPU memory
        variants["stage_streamed"] = lambda epoch: train_one_epoch(
            model, streamed, optimizer, LoopOptions(batch_size=batch_size), epoch
        )
    for run in variants.values():  # warm-up: cuDNN's choices, the allocator's pools
        timed(lambda run=run: run(0), device)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    peak: dict[str, float] = {}
    for repeat in range(repeats):  # alternate, so drift in load hits every variant alike
        for name, run in variants.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds[name].append(timed(lambda run=run, repeat=repeat: run(repeat + 1), device))
            if device.type == "cuda":
                peak[name] = max(peak.get(name, 0.0), torch.cuda.max_memory_allocated(device) / 2**30)
    result: dict[str, float] = {}
    for name in variants:
        result[f"{name}_images_per_s"] = n_images / statistics.median(seconds[name])
        if name in peak:
            result[f"{name}_peak_gib"] = peak[name]
    for name in variants:
        if name != "raw":
            result[f"{name}_over_raw"] = result[f"{name}_images_per_s"] / result["raw_images_per_s"]
    return result
