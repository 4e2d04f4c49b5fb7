"""The inner loops shared by the weights (pretraining), train and evaluate stages: devices, batches, augmentation,
one training epoch, batched prediction, and the scores (loss, accuracy, macro-F1).

Inputs are the decoded uint8 images from `data.decoded_images`, so a batch is an index,
a copy and a normalisation: no file is opened inside an epoch.

On a GPU, an epoch makes no host sync but the one at its end: the epoch's order, its
augmentation draws, the targets, mean and std are put on the device once, and per-batch
losses are checked after the last batch. Images that fit stay on the GPU; larger sets
stream from the memory map through pinned buffers, gathered one batch ahead.
"""

import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.fx.experimental.optimization as fx_optimization
import torch.nn.functional as F
from torch import nn

from pipeline.cli import UserError, progress
from pipeline.data import centre_offset
from pipeline.distributed import SINGLE, Ranks, all_sum, shard, unshard
from pipeline.freezing import set_train_mode
from pipeline.models import ModelSpec


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite; the message names the epoch and batch."""


# --- devices and layouts ----------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present, else the CPU; anything else must be a torch device.
    The result is canonical (`cuda` becomes `cuda:<current index>`), see `canonical_device`."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device = {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device = {name!r}, but CUDA is not available here; use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device = {name!r}, but there are {torch.cuda.device_count()} CUDA device(s) here")
    return canonical_device(device)


def canonical_device(device: torch.device) -> torch.device:
    """`cuda` as `cuda:<current index>`, the way tensors report it.

    torch.device("cuda") and torch.device("cuda:0") differ, although tensors moved to the first
    name report the second: compare devices only in this form.
    """
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA (what cuDNN's fast bf16 kernels want); the CPU keeps the default
    layout, so its results stay what they were."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move `model` to `device` in the layout that `Batches.load` gives its inputs there.

    Every stage moves its model with this, so model and inputs always share a layout
    (a mismatch makes each convolution convert, and changes the numbers).
    """
    return model.to(device).to(memory_format=memory_format(device))


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`: as it is when already there; CPU -> CUDA from pinned memory,
    without blocking the host."""
    if canonical_device(tensor.device) == canonical_device(device):
        return tensor
    if tensor.device.type == "cpu" and device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def set_determinism(enabled: bool) -> None:
    """Deterministic kernels on CUDA (param train.deterministic), so that a resumed GPU run
    repeats an uninterrupted one bit for bit, at some cost in speed. The CPU path is
    deterministic either way. Call it before the first CUDA operation: cuBLAS reads its
    workspace setting when it starts."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = False  # its choice of kernel can differ between runs


def autocast(device: torch.device):
    """bf16 autocast on CUDA; the CPU path stays in float32 so its results do not change."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


# What each training batch goes through after its crops and flips (pipeline.augment):
# (normalised images, class indices) -> (images, targets).
Augment = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

# RandomResizedCrop's tries at a crop that fits, before it takes the whole image (torchvision's).
CROP_ATTEMPTS = 10


# --- batches ----------------------------------------------------------------------------------


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


# --- frozen-backbone features -----------------------------------------------------------------


def folded_for_cpu(model: nn.Module, head: str) -> nn.Module | None:
    """For the frozen feature pass on the CPU: eval-mode `model` with each BatchNorm folded
    into the convolution before it (torch.fx), those convolutions in channels-last layout,
    and `head` kept whole (its forward hook must still fire). Its inputs go channels-last too.

    On a 2-core x86 VM at 224 px (`python -m bench.layout`), the forward pass ran 1.7
    times as fast for resnet18, 2.3 for efficientnet_b0 and 2.3 for mobilenet_v3_small,
    with outputs within float32 rounding (1e-6) of the plain model's. `model` stays as it
    is, since training steps use it in the default layout (see `memory_format`): the
    folded network shares its other modules and holds new copies of the folded
    convolutions only. None when there is nothing to fold (no BatchNorm after a
    convolution, as in ViT) or torch.fx cannot trace the network: the pass then runs
    `model` itself.
    """

    class KeepHead(torch.fx.Tracer):
        def is_leaf_module(self, module: nn.Module, name: str) -> bool:
            return name == head or super().is_leaf_module(module, name)

    try:
        traced = torch.fx.GraphModule(model, KeepHead().trace(model))  # its own containers, model's leaves
        folded = fx_optimization.fuse(traced, inplace=True, no_trace=True)  # new convolutions, in its containers
    except Exception:  # control flow on values, or modules that fx cannot trace
        return None
    own = {id(module) for module in model.modules()}
    convolutions = [m for m in folded.modules() if isinstance(m, nn.Conv2d) and id(m) not in own]
    for convolution in convolutions:
        convolution.to(memory_format=torch.channels_last)
    return folded if convolutions else None


@torch.no_grad()  # not inference_mode: the head trains on these tensors afterwards
def head_inputs(
    network: nn.Module,
    head: str,
    data: ImageBatches,
    batch_size: int,
    ranks: Ranks = SINGLE,
    channels_last: bool = False,
) -> torch.Tensor | None:
    """What eval-mode `network` (on `data`'s device) feeds its head, for every item of
    `data`, in order; its inputs `channels_last` for a `folded_for_cpu` network. With several
    `ranks`, each computes its shard and every rank gets the whole.

    None when the head's output is not the network's output (SqueezeNet pools after its
    1x1-conv head): then the head cannot be trained on these features alone.
    """
    captured: dict[str, torch.Tensor] = {}
    head_module = network.get_submodule(head)

    def capture(_: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        # A copy of just what the head reads: ViT's is x[:, 0], a view that would keep the
        # whole (B, 197, 768) encoder output alive until the end. Under autocast a Linear head
        # casts its input to the autocast dtype itself, so storing that dtype changes no result
        # and halves the cache where the backbone ends in float32 (ViT's final LayerNorm).
        features = inputs[0]
        device_type = features.device.type
        if isinstance(head_module, nn.Linear) and torch.is_autocast_enabled(device_type):
            features = features.to(torch.get_autocast_dtype(device_type))
        captured["input"] = features.clone(memory_format=torch.contiguous_format)
        captured["output"] = output

    handle = head_module.register_forward_hook(capture)
    try:
        features = []
        for images, _ in iterate(data, batch_indices(len(data), batch_size, device=data.index_device, ranks=ranks)):
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(data.device):
                output = network(images)
            if output is not captured["output"]:
                return None
            features.append(captured.pop("input"))
            captured.clear()
    finally:
        handle.remove()
    return unshard(torch.cat(features), len(data), ranks)


def head_feature_batches(
    model: nn.Module, head: str, splits: dict[str, ImageBatches], batch_size: int, ranks: Ranks = SINGLE
) -> dict[str, FeatureBatches] | None:
    """Each split as the (frozen) model's `head_inputs` features, from one pass of the
    model in eval mode, folded on the CPU (`folded_for_cpu`); None when the head cannot be
    trained on them."""
    device = next(iter(splits.values())).device
    model.eval()
    place_model(model, device)
    folded = folded_for_cpu(model, head) if device.type == "cpu" else None
    network = model if folded is None else folded
    features = {}
    for name, data in splits.items():
        inputs = head_inputs(network, head, data, batch_size, ranks, channels_last=folded is not None)
        if inputs is None:
            return None
        features[name] = FeatureBatches(inputs, data.targets, data.device)
    return features


# --- training and prediction ------------------------------------------------------------------


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The RNG for one epoch's shuffle and augmentation.

    Seeding per epoch, rather than carrying one stream along, makes epoch k's data order
    a function of (seed, k) alone, so a run resumed at epoch k is identical to one that
    never stopped.
    """
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def compile_for_training(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """`model` compiled for the training steps; prediction keeps running the plain module.

    One graph per run: `train_steps` marks the batch dimension dynamic, so the smaller
    last batch needs no second compile, and evaluation (no autograd) needs none at all.
    A last batch of one image is the exception (torch specialises size 1).
    """
    return torch.compile(model, backend=backend)


def train_one_epoch(
    model: nn.Module,
    data: Batches,
    optimizer: torch.optim.Optimizer,
    *,
    frozen: list[str],
    batch_size: int,
    generator: torch.Generator,
    epoch: int,
    hflip: bool = False,
    min_scale: float = 1.0,
    max_aspect: float = 1.0,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    step_model: nn.Module | None = None,
    ranks: Ranks = SINGLE,
    accumulate: int = 1,
    clip_grad_norm: float = 0.0,
    after_step: Callable[[], None] | None = None,
    augment: Augment | None = None,
) -> float:
    """One pass over `data` in a seeded random order; returns the mean training loss.

    `step_model` runs the steps when given (`model` compiled, or wrapped in
    DistributedDataParallel, or both). `criterion` defaults to plain
    cross-entropy (looked up at call time, so tests can patch it). `batch_size` is the
    global batch: with several `ranks`, this rank steps on its share of each one; with
    `accumulate`, in that many batches whose gradients add up to one step. `clip_grad_norm`,
    `after_step` and `augment`: see `train_steps`.
    """
    set_train_mode(model, frozen)
    # Dropout draws from the global RNG: tie it to this epoch's seed, and rank, too (see epoch_generator).
    torch.manual_seed(generator.initial_seed() + ranks.rank)
    centre = data.centre_fraction if isinstance(data, ImageBatches) else 1.0
    plan = epoch_order(len(data), generator, hflip, min_scale, max_aspect, centre).shard(ranks)
    batch_size //= ranks.world * accumulate
    # `is None`, not `or`: a compiled module has no truth value.
    runs_steps = model if step_model is None else step_model
    losses = train_steps(
        runs_steps, data, optimizer, plan.order, plan.transforms, batch_size, criterion or F.cross_entropy,
        f"epoch {epoch}", dynamic_batch=step_model is not None, accumulate=accumulate, clip_grad_norm=clip_grad_norm,
        after_step=after_step, augment=augment,
    )  # fmt: skip
    sizes = torch.tensor([len(b) for b in plan.order.split(batch_size)], dtype=torch.float32)
    return epoch_loss(losses, sizes, epoch, ranks)


@dataclass
class EpochOrder:
    """The order in which an epoch visits the items, and each visit's augmentation.

    Drawn on the CPU from the epoch's generator, so it is the same on every device and
    after a resume. Processes that share an epoch each take their part of it (`shard`).
    """

    order: torch.Tensor  # int64 (N,): item indices
    transforms: torch.Tensor | None  # (N, 2, 3) affine matrices, one per visit; None: no augmentation

    def shard(self, ranks: Ranks) -> "EpochOrder":
        """This rank's visits (distributed.shard), each with the draw it has in the whole order."""
        transforms = None if self.transforms is None else shard(self.transforms, ranks)
        return EpochOrder(shard(self.order, ranks), transforms)


def epoch_order(
    n: int, generator: torch.Generator, hflip: bool, min_scale: float, max_aspect: float = 1.0, centre: float = 1.0
) -> EpochOrder:
    order = torch.randperm(n, generator=generator)
    return EpochOrder(order, draw_augmentation(n, hflip, min_scale, generator, max_aspect, centre))


def train_and_score(
    model: nn.Module,
    train_data: Batches,
    val_data: Batches,
    optimizer: torch.optim.Optimizer,
    *,
    num_classes: int,
    seed: int,
    epoch: int,
    batch_size: int,
    frozen: list[str] | None = None,
    ranks: Ranks = SINGLE,
    **options: Any,
) -> tuple[float, dict[str, float]]:
    """One seeded training epoch, then the scores on `val_data`: (training loss, val scores).
    The `options` (augmentation, criterion, step_model) go to `train_one_epoch`."""
    loss = train_one_epoch(
        model, train_data, optimizer, frozen=frozen or [], batch_size=batch_size,
        generator=epoch_generator(seed, epoch), epoch=epoch, ranks=ranks, **options,
    )  # fmt: skip
    return loss, score(predict(model, val_data, batch_size, ranks), val_data.targets, num_classes)


def train_steps(
    model: nn.Module,
    data: Batches,
    optimizer: torch.optim.Optimizer,
    order: torch.Tensor,
    transforms: torch.Tensor | None,
    batch_size: int,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    desc: str,
    dynamic_batch: bool = False,
    accumulate: int = 1,
    clip_grad_norm: float = 0.0,
    after_step: Callable[[], None] | None = None,
    augment: Augment | None = None,
) -> torch.Tensor:
    """The optimizer steps of one epoch, in `order`; the per-batch losses, left on the device.

    Nothing here waits for the device: the order and the augmentation draws travel to it
    once, before the first step, and the losses are read after the last. `dynamic_batch`:
    `model` is compiled (see `compile_for_training`). `accumulate`: each optimizer step
    adds up the gradients of that many batches, each weighted by its share of their items,
    so the step is the one a batch of all of them would take. `clip_grad_norm` > 0: before
    each step, the gradients (of every rank, once averaged) are scaled down to that total norm
    when above it. `after_step` runs after each optimizer step (the weights' moving average).
    `augment` takes each batch after its crops and flips (pipeline.augment).
    """
    batches = list(to_device(order, data.index_device).split(batch_size))
    steps = [batches[start : start + accumulate] for start in range(0, len(batches), accumulate)]
    shares = [len(batch) / sum(len(b) for b in step) for step in steps for batch in step]
    per_batch = [None] * len(batches) if transforms is None else to_device(transforms, data.device).split(batch_size)
    place_model(model, data.device)
    losses = torch.zeros(len(batches), device=data.device)
    # Augmented batches come whole, to be cropped at random; the others as the centre crop.
    loaded = iterate(data, batches, whole=transforms is not None)
    size = data.crop if isinstance(data, ImageBatches) else None
    for step, ((images, targets), theta) in enumerate(
        zip(progress(loaded, desc, len(batches)), per_batch, strict=True)
    ):
        if theta is not None:
            images = apply_augmentation(images, theta, size)
        if augment is not None:
            images, targets = augment(images, targets)
        if dynamic_batch and images.shape[0] > 1:
            torch._dynamo.mark_dynamic(images, 0)  # one compiled graph for every batch size
        first, last = step % accumulate == 0, step % accumulate == accumulate - 1 or step == len(batches) - 1
        # Under DistributedDataParallel, gradients are averaged over the processes at the last batch only.
        with model.no_sync() if not last and hasattr(model, "no_sync") else nullcontext():
            with autocast(data.device):
                loss = criterion(model(images), targets)
            if first:
                optimizer.zero_grad(set_to_none=True)
            (loss if accumulate == 1 else loss * shares[step]).backward()
        if last:
            if clip_grad_norm:
                stepped = [param for group in optimizer.param_groups for param in group["params"]]
                torch.nn.utils.clip_grad_norm_(stepped, clip_grad_norm)
            optimizer.step()
            if after_step is not None:
                after_step()
        losses[step] = loss.detach()
    return losses


def epoch_loss(losses: torch.Tensor, sizes: torch.Tensor, epoch: int, ranks: Ranks = SINGLE) -> float:
    """The size-weighted mean of the per-batch losses (of every rank), after checking that
    each is finite: every rank raises if any rank's loss is not, so none waits for the others.

    This is the epoch's one host sync.
    """
    losses = losses.float().cpu()
    bad = (~torch.isfinite(losses)).nonzero()
    totals = all_sum(torch.stack([(losses * sizes).sum(), sizes.sum(), torch.tensor(float(len(bad)))]), ranks)
    if len(bad):
        raise NonFiniteLoss(
            f"training loss became {losses[bad[0, 0]].item()} in epoch {epoch}, batch {bad[0, 0].item() + 1} "
            f"of {len(losses)}; lower the learning rate. Checkpoints of earlier epochs are kept"
        )
    if totals[2] > 0:
        raise NonFiniteLoss(
            f"training loss became non-finite in epoch {epoch} in another training process; lower the learning "
            "rate. Checkpoints of earlier epochs are kept"
        )
    return float(totals[0] / totals[1])


def predict(
    model: nn.Module, data: Batches, batch_size: int, ranks: Ranks = SINGLE, flip: bool = False
) -> torch.Tensor:
    """Logits for every item of `data`, in order, as float32 on the CPU (see `batch_logits`). With
    several `ranks`, each predicts its shard and every rank gets the whole."""
    model.eval()
    place_model(model, data.device)  # outside inference mode, which would make the weights inference tensors
    outputs = []
    with torch.inference_mode():
        for images, _ in iterate(data, batch_indices(len(data), batch_size, device=data.index_device, ranks=ranks)):
            outputs.append(batch_logits(model, images, flip))
        logits = torch.cat(outputs).float().cpu() if outputs else torch.empty(0, 0)
    return unshard(logits, len(data), ranks)


def batch_logits(model: nn.Module, images: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """The model's outputs for a batch of normalised images; with `flip` (test-time
    augmentation, param evaluate.tta: hflip), the mean of those and of the mirror images'."""
    with autocast(images.device):
        outputs = model(images)
        if flip:
            outputs = (outputs + model(images.flip(-1))) / 2
    return outputs


def score(logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Mean cross-entropy, accuracy and macro-F1 (over classes present in targets or predictions)."""
    # Not torchmetrics: a new dependency for ten lines whose macro average (here: classes absent from
    # both targets and predictions left out) would have to be shown to match first.
    predictions = logits.argmax(dim=1)
    confusion = torch.bincount(targets * num_classes + predictions, minlength=num_classes**2).view(
        num_classes, num_classes
    )
    true_positive = confusion.diag().float()
    support, predicted = confusion.sum(dim=1).float(), confusion.sum(dim=0).float()
    present = (support + predicted) > 0
    f1 = 2 * true_positive / (support + predicted).clamp(min=1)
    return {
        "loss": F.cross_entropy(logits, targets).item(),
        "accuracy": (predictions == targets).float().mean().item(),
        "f1": f1[present].mean().item(),
    }


# --- augmentation -----------------------------------------------------------------------------


def draw_augmentation(
    n: int, hflip: bool, min_scale: float, generator: torch.Generator, max_aspect: float = 1.0, centre: float = 1.0
) -> torch.Tensor | None:
    """Random resized crops and horizontal flips for n images, as (n, 2, 3) affine matrices
    over each whole stored image; `apply_augmentation` samples the crops.

    A crop follows torchvision's RandomResizedCrop: [min_scale, 1] of the image's area, an
    aspect ratio log-uniform in [1 / max_aspect, max_aspect], CROP_ATTEMPTS tries, and the
    whole image when none fits. With min_scale 1 it is the centre crop that evaluation
    sees (`centre`: its share of the side), flipped or not. Drawn on the CPU from
    `generator`, so a seed gives the same augmentation on every device; None when both
    are off.
    """
    if not hflip and min_scale >= 1:
        return None
    if min_scale < 1:
        tries = (n, CROP_ATTEMPTS)
        area = torch.empty(tries).uniform_(min_scale, 1.0, generator=generator)
        aspect = torch.empty(tries).uniform_(-math.log(max_aspect), math.log(max_aspect), generator=generator).exp()
        width, height = (area * aspect).sqrt(), (area / aspect).sqrt()
        fits = (width <= 1) & (height <= 1)
        first = fits.int().argmax(dim=1, keepdim=True)  # the first try that fits

        def chosen(side: torch.Tensor) -> torch.Tensor:
            return torch.where(fits.any(dim=1), side.gather(1, first)[:, 0], 1.0)

        width, height = chosen(width), chosen(height)
        left = torch.rand(n, generator=generator) * (1 - width)
        top = torch.rand(n, generator=generator) * (1 - height)
    else:
        width = height = torch.full((n,), centre)
        left = top = (1 - width) / 2
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if hflip else torch.ones(n)
    # affine_grid's coordinates run from -1 to 1 across the image: a crop [left, left + width]
    # of [0, 1] is centred at 2 * left + width - 1 and spans width on each side of it.
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = width * flip, 2 * left + width - 1
    theta[:, 1, 1], theta[:, 1, 2] = height, 2 * top + height - 1
    return theta


def apply_augmentation(images: torch.Tensor, theta: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Resample a float batch through its affine matrices into `size` x `size` images (by
    default, the batch's own size), keeping the batch's memory layout (grid_sample returns
    the default one)."""
    layout = torch.channels_last if images.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    n, channels, height, width = images.shape
    shape = [n, channels, size or height, size or width]
    grid = F.affine_grid(theta.to(images.dtype), shape, align_corners=False)
    resampled = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return resampled.contiguous(memory_format=layout)


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
