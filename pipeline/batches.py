"""Batches of one split, on the training device: the decoded model inputs gathered by index and
normalised there (`ImageBatches`), random resized crops cut from the training copies
(`CropBatches`), or a frozen backbone's outputs (`FeatureBatches`).

Inputs are the decoded uint8 images from `data.cache.decoded_images`, so a batch is an index,
a copy and a normalisation: no file is opened inside an epoch. Images that fit stay on the
GPU; larger sets stream from the memory map through pinned buffers, gathered one batch
ahead (`streamed`). Random resized crops are cut on the CPU from the training copies
(`data.cache.training_copies`), also a batch ahead.
"""

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from pipeline.data.copies import TrainingCopies
from pipeline.devices import canonical_device, memory_format, to_device
from pipeline.distributed import SINGLE, Ranks, shard
from pipeline.models import ModelSpec

CPU = torch.device("cpu")


@dataclass
class Draws:
    """Random augmentation of an epoch's visits (augment.draw_augmentation), a row per visit:
    a random resized crop's box in its whole image's pixels, a horizontal flip, or both."""

    boxes: torch.Tensor | None  # int64 (N, 4): top, left, height, width
    flips: torch.Tensor | None  # bool (N,): mirror the image

    def apply(self, function: Callable[[torch.Tensor], torch.Tensor]) -> "Draws":
        """`function` of each of the tensors."""
        return Draws(*(None if rows is None else function(rows) for rows in (self.boxes, self.flips)))

    def split(self, size: int) -> list["Draws"]:
        """The draws of successive batches of `size` visits."""
        count = len(self.boxes if self.boxes is not None else self.flips)
        return [self.apply(lambda rows, start=start: rows[start : start + size]) for start in range(0, count, size)]


@dataclass
class ImageBatches:
    """One split of the decoded model inputs, batched onto `device` and normalised there.

    `images` holds every split (N_all, 3, C, C): on the device when it fits there (see
    `images_on`), else the CPU memory map. `rows` picks this split's images.
    """

    images: torch.Tensor
    rows: torch.Tensor  # int64 (N,)
    targets: torch.Tensor  # int64 (N,), on the CPU: what the scores compare with
    device: torch.device
    mean: list[float]
    std: list[float]
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

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def index_device(self) -> torch.device:
        """Where batch indices must be: beside the images they gather."""
        return self.images.device

    @property
    def draws_device(self) -> torch.device:
        """Where a batch's `Draws` are used: flips, on the device (`finish`)."""
        return self.device

    @property
    def streams(self) -> bool:
        """True when each batch is gathered on the CPU and copied to another device."""
        return canonical_device(self.images.device) != self.device

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """The shape of one image as `gather` gives it."""
        return tuple(self.images.shape[1:])

    def gather(
        self, index: torch.Tensor, out: torch.Tensor | None = None, draws: Draws | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The uint8 images and targets of `index` (on `index_device`), where the images are."""
        rows = self._rows[index]
        if out is None:
            return self.images[rows], self._targets[index]
        return torch.index_select(self.images, 0, rows, out=out[: len(rows)]), self._targets[index]

    def finish(
        self, pixels: torch.Tensor, targets: torch.Tensor, draws: Draws | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gathered uint8 images on the device -> normalised float images in the device's
        layout, mirrored where `draws` flip them. Random resized crops need the whole
        pictures: `CropBatches` cuts them."""
        if draws is not None and draws.boxes is not None:
            raise ValueError("random resized crops are cut from the training copies: use CropBatches")
        if draws is not None and draws.flips is not None:
            pixels = torch.where(draws.flips.view(-1, 1, 1, 1), pixels.flip(-1), pixels)
        return normalized(pixels, self._mean, self._std, self.device), targets

    def load(self, index: torch.Tensor, draws: Draws | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, targets = self.gather(index)
        return self.finish(to_device(pixels, self.device), to_device(targets, self.device), draws)


@dataclass
class CropBatches:
    """One split as random resized crops of its training copies (data.copies), normalised on
    `device`: each visit's crop box (in its whole image's pixels) and flip come with the
    batch (`Draws`); the crops are cut on the CPU, on a thread per core (the JPEG decode and
    Pillow's resize let go of the GIL), a batch ahead (`streamed`)."""

    copies: TrainingCopies
    rows: torch.Tensor  # int64 (N,): this split's rows of `copies`
    targets: torch.Tensor  # int64 (N,), on the CPU
    device: torch.device
    mean: list[float]
    std: list[float]
    size: int  # the model's input, `size` pixels square
    interpolation: str  # the crop's resize filter: the weights' (data.decode.RESAMPLING)
    whole_sizes: torch.Tensor = field(init=False, repr=False)  # int64 (N, 2): each whole image's width, height
    _mean: torch.Tensor = field(init=False, repr=False)
    _std: torch.Tensor = field(init=False, repr=False)
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.device = canonical_device(self.device)
        self.whole_sizes = self.copies.whole_sizes(self.rows)
        self._mean, self._std = normalization_tensors(self.mean, self.std, self.device)

    def __len__(self) -> int:
        return len(self.targets)

    index_device = draws_device = CPU  # batch indices and draws serve the CPU that cuts the crops
    streams = True

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return (self.size, self.size, 3)  # channels last, as Pillow gives them

    def gather(
        self, index: torch.Tensor, out: torch.Tensor | None = None, draws: Draws | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The crops of `index`'s visits, cut as `draws` say: uint8 (B, S, S, 3), and their targets."""
        if draws is None or draws.boxes is None:
            raise ValueError("CropBatches cut random resized crops: each visit needs its box")
        out = torch.empty((len(index), *self.batch_shape), dtype=torch.uint8) if out is None else out[: len(index)]
        flips = [False] * len(index) if draws.flips is None else draws.flips.tolist()
        jobs = zip(self.rows[index].tolist(), draws.boxes.tolist(), flips, range(len(index)), strict=True)

        def cut(row: int, box: list[int], flip: bool, slot: int) -> None:
            out[slot] = torch.from_numpy(self.copies.crop(row, box, flip, self.size, self.interpolation))

        if self._pool is None:
            self._pool = ThreadPoolExecutor(len(os.sched_getaffinity(0)), thread_name_prefix="crops")
        list(self._pool.map(lambda job: cut(*job), jobs))
        return out, self.targets[index]

    def finish(
        self, pixels: torch.Tensor, targets: torch.Tensor, draws: Draws | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cut crops on the device -> normalised float images (N, 3, S, S) in the device's layout."""
        return normalized(pixels.permute(0, 3, 1, 2), self._mean, self._std, self.device), targets


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

    draws_device = CPU  # there are none: `load` refuses them

    def load(self, index: torch.Tensor, draws: Draws | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if draws is not None:
            raise ValueError("a frozen backbone's features cannot be augmented: their images can")
        return self.features[index], self._targets[index]


Batches = ImageBatches | CropBatches | FeatureBatches


def normalization_tensors(
    mean: list[float], std: list[float], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as (1, C, 1, 1) tensors on `device`, scaled to uint8 pixel values."""
    shape = (1, -1, 1, 1)
    return (
        torch.tensor(mean, device=device).view(shape) * 255,
        torch.tensor(std, device=device).view(shape) * 255,
    )


def normalized(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 pixels -> (pixels - mean) / std in float32, in `device`'s memory layout."""
    images = (pixels.float() - mean) / std
    return images.contiguous(memory_format=memory_format(device))


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
    targets, its mean and std."""
    rows, targets = split_rows(manifest, split, spec)
    return ImageBatches(images, rows, targets, device, list(spec.mean), list(spec.std))


def crop_batches(
    copies: TrainingCopies, manifest: pd.DataFrame, split: str, spec: ModelSpec, device: torch.device
) -> CropBatches:
    """The `split` rows of `manifest` as random resized crops of their training copies, for
    the model of `spec`: its input size and resize filter, its mean and std."""
    rows, targets = split_rows(manifest, split, spec)
    mean, std = list(spec.mean), list(spec.std)
    return CropBatches(copies, rows, targets, device, mean, std, spec.image_size, spec.interpolation)


def split_rows(manifest: pd.DataFrame, split: str, spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of `manifest` in `split`, and their class indices in the model of `spec`."""
    in_split = manifest["split"].to_numpy() == split
    class_index = {name: i for i, name in enumerate(spec.classes)}
    targets = torch.tensor([class_index[label] for label in manifest["label"][in_split]], dtype=torch.int64)
    return torch.from_numpy(in_split.nonzero()[0]), targets


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
    data: Batches, batches: list[torch.Tensor], draws: list[Draws] | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`data.load` of each index batch, in order, with its `draws`; streamed (see `streamed`)
    when the images are not on the device, or are cut from training copies."""
    draws = draws or [None] * len(batches)
    if isinstance(data, ImageBatches | CropBatches) and data.streams and batches:
        yield from streamed(data, batches, draws)
    else:
        yield from (data.load(index, draw) for index, draw in zip(batches, draws, strict=True))


def streamed(
    data: ImageBatches | CropBatches, batches: list[torch.Tensor], draws: list[Draws | None]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches gathered on the CPU one step ahead, on a worker thread.

    The gather (from the memory map, or cutting crops) is the slow part, and it lets go of
    the GIL, so it runs while the device works on the previous batch. On CUDA, two pinned
    buffers take turns, the worker copies each to the GPU on a side stream, and an event per
    copy tells the compute stream when the batch is there and the worker when its buffer is
    free again.
    """
    on_cuda = data.device.type == "cuda"
    largest = max(len(index) for index in batches)
    buffers = [torch.empty((largest, *data.batch_shape), dtype=torch.uint8) for _ in range(2)]
    side = torch.cuda.Stream(data.device) if on_cuda else None
    if on_cuda:
        buffers = [buffer.pin_memory() for buffer in buffers]
    copied: list[torch.cuda.Event | None] = [None, None]  # the last copy out of each buffer

    def fetch(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.cuda.Event | None]:
        slot = step % 2
        if copied[slot] is not None:
            copied[slot].synchronize()  # the buffer's previous batch has reached the device
        pixels, targets = data.gather(batches[step], out=buffers[slot], draws=draws[step])
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
            yield data.finish(pixels, targets, draws[step])
