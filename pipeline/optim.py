"""The optimizer and the learning-rate schedule of a training run."""

import math

import torch
from torch import nn

from pipeline.config import Optimizer, OptimParams, Schedule


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
