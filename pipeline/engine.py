"""The inner loops shared by pretrain, train and evaluate: batches, augmentation, one
training epoch, batched prediction, and the scores (loss, accuracy, macro-F1).

Inputs are the decoded uint8 images from `data.decoded_images`, so a batch is an index,
a copy and a normalisation: no file is opened inside an epoch.
"""

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.cli import UserError, progress
from pipeline.config import Optimizer, OptimParams, Schedule
from pipeline.models import set_train_mode


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite; the message names the epoch and batch."""


@dataclass
class Batches:
    """One split, ready to batch onto `device`: rows of the decoded uint8 images (normalised
    per batch), or a frozen backbone's features (used as they are, see `head_inputs`)."""

    inputs: torch.Tensor  # uint8 (N_all, 3, H, W) images, or float (N, ...) features
    rows: torch.Tensor  # int64 (N,): this split's rows of `inputs`
    targets: torch.Tensor  # int64 (N,)
    device: torch.device
    mean: list[float] | None = None  # None: `inputs` are features, not images
    std: list[float] | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self.inputs[self.rows[index].to(self.inputs.device)]
        if inputs.device != self.device:
            if self.device.type == "cuda":
                inputs = inputs.pin_memory()  # lets the copy below overlap with compute
            inputs = inputs.to(self.device, non_blocking=True)
        targets = self.targets[index].to(self.device, non_blocking=True)
        if self.mean is None or self.std is None:
            return inputs, targets
        images = normalize(inputs, self.mean, self.std)
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets

    def with_features(self, features: torch.Tensor) -> "Batches":
        return Batches(features, torch.arange(len(features)), self.targets, self.device)


def images_on(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """The decoded images as a tensor: on the GPU when they fit in a quarter of its free
    memory, so batches never cross the PCIe bus; else (and on the CPU) the memory map."""
    tensor = torch.from_numpy(images)
    if device.type == "cuda" and tensor.nbytes < torch.cuda.mem_get_info(device)[0] // 4:
        return tensor.to(device)
    return tensor


def split_batches(
    images: torch.Tensor,
    manifest: pd.DataFrame,
    classes: list[str],
    split: str,
    normalization: dict[str, list[float]],
    device: torch.device,
) -> Batches:
    """The `split` rows of `manifest` as Batches; `normalization` holds the model's mean and std."""
    in_split = manifest["split"].to_numpy() == split
    class_index = {name: i for i, name in enumerate(classes)}
    targets = torch.tensor([class_index[label] for label in manifest["label"][in_split]], dtype=torch.int64)
    rows = torch.from_numpy(in_split.nonzero()[0])
    return Batches(images, rows, targets, device, normalization["mean"], normalization["std"])


@torch.no_grad()
def head_inputs(model: nn.Module, head: str, data: Batches, batch_size: int) -> torch.Tensor | None:
    """What the (frozen) network feeds its head, for every item of `data`, in order.

    None when the head's output is not the model's output (SqueezeNet pools after its
    1x1-conv head): then the head cannot be trained on these features alone.
    """
    model.eval()
    captured: dict[str, torch.Tensor] = {}

    def capture(_: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        captured["input"], captured["output"] = inputs[0], output

    handle = model.get_submodule(head).register_forward_hook(capture)
    try:
        features = []
        for index in batch_indices(len(data), batch_size):
            images, _ = data.load(index)
            with autocast(data.device):
                output = model(images)
            if output is not captured["output"]:
                return None
            features.append(captured["input"])
    finally:
        handle.remove()
    return torch.cat(features)


def head_feature_batches(
    model: nn.Module, head: str, splits: dict[str, Batches], batch_size: int
) -> dict[str, Batches]:
    """Each split as its `head_inputs` features; empty when the head cannot be trained on them."""
    features = {name: head_inputs(model, head, data, batch_size) for name, data in splits.items()}
    if any(f is None for f in features.values()):
        return {}
    return {name: splits[name].with_features(f) for name, f in features.items() if f is not None}


def make_optimizer(
    params: OptimParams,
    model: nn.Module,
    head: str,
    trunk_lr_scale: float = 1.0,
    trains_later: frozenset[str] = frozenset(),
) -> torch.optim.Optimizer:
    """An optimizer over the parameters that train at some point of the run: the head at `lr`
    (group 0), the rest at `lr * trunk_lr_scale` (group 1).

    Parameters frozen now but in `trains_later` (gradual unfreezing) get no gradients, so
    they carry no optimizer state until they are unfrozen; frozen for good, they are left out.
    """
    head_params, trunk_params = [], []
    for name, param in model.named_parameters():
        if name.startswith(f"{head}."):
            head_params.append(param)
        elif param.requires_grad or name in trains_later:
            trunk_params.append(param)
    groups = [{"params": head_params, "lr": params.lr}]
    if trunk_params:
        groups.append({"params": trunk_params, "lr": params.lr * trunk_lr_scale})
    if params.optimizer is Optimizer.adamw:
        return torch.optim.AdamW(groups, lr=params.lr, weight_decay=params.weight_decay)
    return torch.optim.SGD(groups, lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay)


def lr_factor(epoch: int, epochs: int, schedule: Schedule, warmup_epochs: int, step_every: int, gamma: float) -> float:
    """The multiplier of the base learning rates in `epoch` (1-based): a linear warm-up, then
    constant, step (times `gamma` every `step_every` epochs) or cosine decay to near zero."""
    if epoch <= warmup_epochs:
        return epoch / (warmup_epochs + 1)
    after, length = epoch - warmup_epochs - 1, max(1, epochs - warmup_epochs)
    if schedule is Schedule.step:
        return gamma ** (after // step_every)
    if schedule is Schedule.cosine:
        return 0.5 * (1 + math.cos(math.pi * after / length))
    return 1.0


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present, else the CPU; anything else must be a torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device = {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device = {name!r}, but CUDA is not available here; use auto or cpu")
    return device


def autocast(device: torch.device):
    """bf16 autocast on CUDA; the CPU path stays in float32 so its results do not change."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The RNG for one epoch's shuffle and augmentation.

    Seeding per epoch, rather than carrying one stream along, makes epoch k's data order
    a function of (seed, k) alone, so a run resumed at epoch k is identical to one that
    never stopped.
    """
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


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
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """One pass over `data` in a seeded random order; returns the mean training loss.

    `criterion` defaults to plain cross-entropy (looked up at call time, so tests can patch it).
    """
    criterion = criterion or F.cross_entropy
    set_train_mode(model, frozen)
    # Dropout draws from the global RNG: tie it to this epoch's seed too (see epoch_generator).
    torch.manual_seed(generator.initial_seed())
    batches = batch_indices(len(data), batch_size, generator)
    losses = torch.zeros(len(batches), device=data.device)
    sizes = torch.tensor([len(b) for b in batches], dtype=torch.float32)
    for step, index in enumerate(progress(batches, f"epoch {epoch}")):
        images, targets = data.load(index)
        images = augment(images, hflip, min_scale, generator)
        with autocast(data.device):
            loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[step] = loss.detach()
    # One host sync per epoch: the per-batch losses are checked here, not inside the loop.
    losses = losses.float().cpu()
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        raise NonFiniteLoss(
            f"training loss became {losses[bad[0, 0]].item()} in epoch {epoch}, batch {bad[0, 0].item() + 1} "
            f"of {len(batches)}; lower the learning rate. Checkpoints of earlier epochs are kept"
        )
    return float((losses * sizes).sum() / sizes.sum())


@torch.no_grad()
def predict(model: nn.Module, data: Batches, batch_size: int) -> torch.Tensor:
    """Logits for every item of `data`, in order, as float32 on the CPU."""
    model.eval()
    outputs = []
    for index in batch_indices(len(data), batch_size):
        images, _ = data.load(index)
        with autocast(data.device):
            outputs.append(model(images).float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0, 0)


def score(logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Mean cross-entropy, accuracy and macro-F1 (over classes present in targets or predictions)."""
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


def augment(images: torch.Tensor, hflip: bool, min_scale: float, generator: torch.Generator) -> torch.Tensor:
    """Random zoom-crop and horizontal flip of a float batch, in one batched resampling.

    The random draws come from `generator` on the CPU, so a seed gives the same
    augmentation on every device.
    """
    if not hflip and min_scale >= 1:
        return images
    n = images.shape[0]
    scale = torch.empty(n).uniform_(min_scale, 1.0, generator=generator).sqrt()
    shift_x = (torch.rand(n, generator=generator) * 2 - 1) * (1 - scale)
    shift_y = (torch.rand(n, generator=generator) * 2 - 1) * (1 - scale)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if hflip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = scale * flip, shift_x
    theta[:, 1, 1], theta[:, 1, 2] = scale, shift_y
    grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def normalize(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 (N, 3, H, W) on any device -> normalised float32."""
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1) * 255
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1) * 255
    return (images.float() - mean_t) / std_t


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Index batches over n items, shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(batch_size))
