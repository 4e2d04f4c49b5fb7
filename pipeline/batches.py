"""Batches of one split, on the training device: decoded uint8 images gathered by index and
normalised there (`ImageBatches`), or a frozen backbone's outputs (`FeatureBatches`).

Inputs are the decoded uint8 images from `data.cache.decoded_images`, so a batch is an index,
a copy and a normalisation: no file is opened inside an epoch. Images that fit stay on the
GPU; larger sets stream from the memory map through pinned buffers, gathered one batch
ahead (`streamed`).
"""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from pipeline.data.decode import centre_offset
from pipeline.devices import canonical_device, memory_format, to_device
from pipeline.distributed import SINGLE, Ranks, shard
from pipeline.models import ModelSpec


@dataclass
class ImageBatches:
    """One split of the decoded uint8 images, batched onto `device` and normalised there.

    `images` holds every split (N_all, 3, H, W): on the device when it fits there (see
    `images_on`), else the CPU memory map. `rows` picks this split's images.
    """

    images: torch.Tensor
    rows: torch.Tensor  # int64 (N,)
    targets: torch.Tensor  # int64 (N,), on the CPU: what the scores compare with
    device: torch.device
    mean: list[float]
    std: list[float]
    # The model's input size. Images stored larger (at the weights' resize size) give their
    # centre crop, or, for augmentation, the whole image (see `finish`); 0: their own size.
    crop: int = 0
    # Copies where the gather runs (beside `images`) and where the model runs, made once.
    _rows: torch.Tensor = field(init=False, repr=False)
    _targets: torch.Tensor = field(init=False, repr=False)
    _mean: torch.Tensor = field(init=False, repr=False)
    _std: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.device = canonical_device(self.device)
        self._rows = self.rows.to(self.images.device)
        self._targets = self.targets.to(self.images.device)
        self._mean, self._std = normalization_tensors(self.mean, self.std, self.device)
        self.crop = self.crop or self.images.shape[-1]

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def centre_fraction(self) -> float:
        """The centre crop's share of each stored image's side."""
        return self.crop / self.images.shape[-1]

    @property
    def index_device(self) -> torch.device:
        """Where batch indices must be: beside the images they gather."""
        return self.images.device

    @property
    def streams(self) -> bool:
        """True when each batch is gathered on the CPU and copied to another device."""
        return canonical_device(self.images.device) != self.device

    def gather(self, index: torch.Tensor, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The uint8 images and targets of `index` (on `index_device`), where the images are."""
        rows = self._rows[index]
        if out is None:
            return self.images[rows], self._targets[index]
        return torch.index_select(self.images, 0, rows, out=out[: len(rows)]), self._targets[index]

    def finish(
        self, pixels: torch.Tensor, targets: torch.Tensor, whole: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gathered uint8 images on the device -> normalised float images in the device's
        layout: their centre `crop` square, or with `whole` all of them (to augment)."""
        if not whole and pixels.shape[-1] != self.crop:
            start = centre_offset(pixels.shape[-1], self.crop)
            pixels = pixels[..., start : start + self.crop, start : start + self.crop]
        images = (pixels.float() - self._mean) / self._std
        return images.contiguous(memory_format=memory_format(self.device)), targets

    def load(self, index: torch.Tensor, whole: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, targets = self.gather(index)
        return self.finish(to_device(pixels, self.device), to_device(targets, self.device), whole)


@dataclass
class FeatureBatches:
    """One split as a frozen backbone's outputs (what its head takes in), on the device."""

    features: torch.Tensor  # (N, ...) float
    targets: torch.Tensor  # int64 (N,), on the CPU
    device: torch.device
    _targets: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.device = canonical_device(self.device)
        self._targets = self.targets.to(self.features.device)

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def index_device(self) -> torch.device:
        return self.features.device

    def load(self, index: torch.Tensor, whole: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[index], self._targets[index]


Batches = ImageBatches | FeatureBatches


def normalization_tensors(
    mean: list[float], std: list[float], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as (1, C, 1, 1) tensors on `device`, scaled to uint8 pixel values."""
    shape = (1, -1, 1, 1)
    return (
        torch.tensor(mean, device=device).view(shape) * 255,
        torch.tensor(std, device=device).view(shape) * 255,
    )


def normalize(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 (N, 3, H, W) on any device -> normalised float32."""
    mean_t, std_t = normalization_tensors(mean, std, images.device)
    return (images.float() - mean_t) / std_t


def images_on(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """The decoded images as a tensor: on the GPU when they fit in a quarter of its free
    memory, so batches never cross the PCIe bus; else (and on the CPU) the memory map."""
    tensor = torch.from_numpy(images)
    if device.type == "cuda" and tensor.nbytes < torch.cuda.mem_get_info(device)[0] // 4:
        return tensor.to(device)
    return tensor


def split_batches(
    images: torch.Tensor, manifest: pd.DataFrame, split: str, spec: ModelSpec, device: torch.device
) -> ImageBatches:
    """The `split` rows of `manifest` as batches for the model of `spec`: its classes as
    targets, the centre crop of its input size, its mean and std."""
    in_split = manifest["split"].to_numpy() == split
    class_index = {name: i for i, name in enumerate(spec.classes)}
    targets = torch.tensor([class_index[label] for label in manifest["label"][in_split]], dtype=torch.int64)
    rows = torch.from_numpy(in_split.nonzero()[0])
    return ImageBatches(images, rows, targets, device, list(spec.mean), list(spec.std), spec.image_size)


def batch_indices(
    n: int,
    batch_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
    ranks: Ranks = SINGLE,
) -> list[torch.Tensor]:
    """Index batches over n items, shuffled when a generator is given, on `device` (one copy);
    with several `ranks`, over this rank's shard of them (distributed.shard)."""
    order = shard(torch.randperm(n, generator=generator) if generator is not None else torch.arange(n), ranks)
    if device is not None:
        order = to_device(order, device)
    return list(order.split(batch_size))


def iterate(
    data: Batches, batches: list[torch.Tensor], whole: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`data.load` of each index batch, in order; streamed (see `streamed`) when the images
    are not on the device. `whole`: see ImageBatches.finish."""
    if isinstance(data, ImageBatches) and data.streams and batches:
        yield from streamed(data, batches, whole)
    else:
        yield from (data.load(index, whole) for index in batches)


def streamed(
    data: ImageBatches, batches: list[torch.Tensor], whole: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches gathered from CPU memory one step ahead, on a worker thread.

    The gather from the memory map is the slow part (index_select releases the GIL), so
    it runs while the device works on the previous batch. On CUDA, two pinned buffers take
    turns, the worker copies each to the GPU on a side stream, and an event per copy tells
    the compute stream when the batch is there and the worker when its buffer is free again.
    """
    on_cuda = data.device.type == "cuda"
    largest = max(len(index) for index in batches)
    buffers = [torch.empty((largest, *data.images.shape[1:]), dtype=data.images.dtype) for _ in range(2)]
    side = torch.cuda.Stream(data.device) if on_cuda else None
    if on_cuda:
        buffers = [buffer.pin_memory() for buffer in buffers]
    copied: list[torch.cuda.Event | None] = [None, None]  # the last copy out of each buffer

    def fetch(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.cuda.Event | None]:
        slot = step % 2
        if copied[slot] is not None:
            copied[slot].synchronize()  # the buffer's previous batch has reached the device
        pixels, targets = data.gather(batches[step], out=buffers[slot])
        if not on_cuda:
            return pixels.to(data.device, copy=True), targets.to(data.device), None
        with torch.cuda.stream(side):
            pixels = pixels.to(data.device, non_blocking=True)
            targets = targets.pin_memory().to(data.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(side)
        copied[slot] = done
        return pixels, targets, done

    with ThreadPoolExecutor(max_workers=1) as worker:
        pending = worker.submit(fetch, 0)
        for step in range(len(batches)):
            pixels, targets, done = pending.result()
            if step + 1 < len(batches):
                pending = worker.submit(fetch, step + 1)
            if done is not None:
                compute = torch.cuda.current_stream(data.device)
                compute.wait_event(done)
                # Made on the side stream, used on this one: keep the allocator from reusing them early.
                pixels.record_stream(compute)
                targets.record_stream(compute)
            yield data.finish(pixels, targets, whole)
