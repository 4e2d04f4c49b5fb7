"""How a training run optimises: the class weights of its loss, the optimizer, the
learning-rate schedule and the moving average of the weights."""

import math

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from pipeline.config import ClassWeights, Optimizer, OptimParams, Schedule
from pipeline.freezing import loose_parameters, stage_names, stage_parameters


def class_weights(
    kind: ClassWeights, targets: torch.Tensor, num_classes: int, device: torch.device
) -> torch.Tensor | None:
    """`balanced`: each class weighs n / (classes * its count) in the training loss, as in scikit-learn."""
    if kind is ClassWeights.none:
        return None
    counts = torch.bincount(targets, minlength=num_classes).float()
    return (len(targets) / (num_classes * counts.clamp(min=1))).to(device)


def make_optimizer(
    params: OptimParams,
    model: nn.Module,
    head: str,
    trunk_lr_scale: float = 1.0,
    trains_later: frozenset[str] = frozenset(),
    *,
    decay_norms_and_biases: bool = True,
    layer_decay: float = 1.0,
) -> torch.optim.Optimizer:
    """An optimizer over the parameters that train at some point of the run: the head at `lr`,
    the rest at `lr * trunk_lr_scale`.

    Parameters frozen now but in `trains_later` (gradual unfreezing) get no gradients, so
    they carry no optimizer state until they are unfrozen; frozen for good, they are left out.

    Without `decay_norms_and_biases`, one-dimensional parameters (the weights and biases of
    norm layers, and every bias) get no weight decay, as in timm and the torchvision
    references: decay pulls them towards 0, which they have no reason to be near. With a
    `layer_decay` below 1 (layer-wise learning-rate decay, as timm's for ViT), the trunk's
    stages (`freezing.stage_names`, the ones `freeze: first:N` counts: timm's own groups for a
    timm model) learn ever more slowly towards the input: stage i of n at
    lr * trunk_lr_scale * layer_decay ** (n - i), the head at lr. The head's parameters and
    the trunk's form groups apart, one per (rate, decay) pair, the head's first.
    """
    depth = _stage_depths(model, head) if layer_decay != 1 else {}
    groups: dict[tuple[bool, float, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        in_head = name.startswith(f"{head}.")
        if not (in_head or param.requires_grad or name in trains_later):
            continue
        lr = params.lr if in_head else params.lr * trunk_lr_scale * layer_decay ** depth.get(name, 1)
        decay = params.weight_decay if decay_norms_and_biases or param.ndim > 1 else 0.0
        groups.setdefault((not in_head, lr, decay), []).append(param)
    # The head's groups first (False sorts first): group 0's rate is `lr`, the one epoch records show.
    ordered = sorted(groups.items(), key=lambda item: item[0][0])
    settings = [{"params": group, "lr": lr, "weight_decay": decay} for (_, lr, decay), group in ordered]
    if params.optimizer is Optimizer.adamw:
        return torch.optim.AdamW(settings, lr=params.lr, weight_decay=params.weight_decay)
    return torch.optim.SGD(settings, lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay)


def _stage_depths(model: nn.Module, head: str) -> dict[str, int]:
    """How many stages each trunk parameter lies below the head (1: the last stage); the
    parameters outside any stage (ViT's class token) count with the first."""
    stages = stage_names(model, head)
    depths = {name: len(stages) for name in loose_parameters(model, stages)}
    for index, stage in enumerate(stages):
        for name in stage_parameters(model, stage):
            depths[name] = len(stages) - index
    return depths


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


def weights_average(model: nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of `model`'s weights, and of its buffers (BatchNorm's
    running statistics), updated after each optimizer step, as the torchvision references'
    --model-ema does; None when `decay` is 0. Frozen weights stay exactly as they are, and
    integer buffers are the model's, as in timm's ModelEmaV3."""
    if not decay:
        return None
    average = get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        if averaged[0].is_floating_point():  # AveragedModel groups the tensors by dtype
            average(averaged, current, updates)
        else:  # counters (BatchNorm's num_batches_tracked): torch's average would round them down
            for mine, theirs in zip(averaged, current, strict=True):
                mine.copy_(theirs)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)
