"""How a training run optimises: its loss and class weights, the optimizer, the
learning-rate schedule and the moving average of the weights."""

import fnmatch
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from pipeline.backbones import layer_ids, no_weight_decay
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


def training_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy with class `weight`s and label smoothing, over class indices or, after
    MixUp/CutMix, class probabilities.

    torch divides the weighted sum by the batch's total weight for class indices, but by the
    batch size for probabilities, so with class weights the loss's scale would jump when mixing
    switches on. Here probabilities are divided by their total weight too (each image weighs
    its targets' weighted sum, the mixing ratios' share of each class's weight): for one-hot
    probabilities this is torch's loss for the indices. With `reduction="none"`, each item's
    weighted loss, for `engine.split_loss` to divide by its step's total weight.
    """
    if reduction == "none" or weight is None or not targets.is_floating_point():
        return F.cross_entropy(logits, targets, weight=weight, label_smoothing=label_smoothing, reduction=reduction)
    total = F.cross_entropy(logits, targets, weight=weight, label_smoothing=label_smoothing, reduction="sum")
    return total / (targets * weight).sum()


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

    Without `decay_norms_and_biases`, weight decay skips what timm's param_groups_weight_decay
    skips: one-dimensional parameters (the weights and biases of norm layers), every bias, and
    what the model's family names (`no_weight_decay`: ViT's class token and position embedding).
    Decay pulls them towards 0, which they have no reason to be near. With a `layer_decay`
    below 1 (layer-wise learning-rate decay, as timm's for ViT), the trunk learns ever more
    slowly towards the input: a parameter `layer_depths` layers below the head's at
    lr * trunk_lr_scale * layer_decay ** depth, the head at lr. The head's parameters and the
    trunk's form groups apart, one per (rate, decay) pair, the head's first.
    """
    depth = layer_depths(model, head) if layer_decay != 1 else {}
    undecayed = set() if decay_norms_and_biases else undecayed_names(model)
    groups: dict[tuple[bool, float, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        in_head = name.startswith(f"{head}.")
        if not (in_head or param.requires_grad or name in trains_later):
            continue
        lr = params.lr if in_head else params.lr * trunk_lr_scale * layer_decay ** depth.get(name, 0)
        decay = 0.0 if name in undecayed else params.weight_decay
        groups.setdefault((not in_head, lr, decay), []).append(param)
    # The head's groups first (False sorts first): group 0's rate is `lr`, the one epoch records show.
    ordered = sorted(groups.items(), key=lambda item: item[0][0])
    settings = [{"params": group, "lr": lr, "weight_decay": decay} for (_, lr, decay), group in ordered]
    if params.optimizer is Optimizer.adamw:
        return torch.optim.AdamW(settings, lr=params.lr, weight_decay=params.weight_decay)
    return torch.optim.SGD(settings, lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay)


def undecayed_names(model: nn.Module) -> set[str]:
    """The parameters that timm's param_groups_weight_decay leaves undecayed: one-dimensional
    ones, biases, and those matching the model's own list (`backbones.no_weight_decay`, fnmatch
    patterns as timm matches them)."""
    patterns = no_weight_decay(model)
    return {
        name
        for name, param in model.named_parameters()
        if param.ndim <= 1 or name.endswith(".bias") or any(fnmatch.fnmatch(name, p) for p in patterns)
    }


def layer_depths(model: nn.Module, head: str) -> dict[str, int]:
    """How many layers each trunk parameter lies below the head's layer, as timm's
    param_groups_layer_decay counts: the family's own layers where it numbers them (timm's
    models, `backbones.layer_ids`), else the stages that `freeze: first:N` counts (parameters
    held beside them, `freezing.loose_parameters`, with the first). Parameters in none, like
    MobileNetV3's classifier.0 beside its head, are at depth 0, as timm puts the parameters
    its matchers miss (ConvNeXt's head.norm) in the head's layer."""
    ids = layer_ids(model)
    if not ids:
        stages = stage_names(model, head)
        ids = {name: 0 for name in loose_parameters(model, stages)}
        for index, stage in enumerate(stages):
            ids.update(dict.fromkeys(stage_parameters(model, stage), index))
        ids.update({name: len(stages) for name, _ in model.named_parameters() if name not in ids})
    top = max(ids.values())
    return {name: top - layer for name, layer in ids.items()}


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


def weights_average(model: nn.Module, decay: float, warmup: bool = False) -> AveragedModel | None:
    """An exponential moving average of `model`'s weights, and of its buffers (BatchNorm's
    running statistics), updated after each optimizer step, as the torchvision references'
    --model-ema does; None when `decay` is 0. Frozen weights stay exactly as they are, and
    integer buffers are the model's, as in timm's ModelEmaV3.

    With `warmup`, the k-th update decays by `ema_decay_at(decay, k - 1)` (timm's ModelEmaV3
    warm-up), not by `decay` from the start: an average that starts at the pretrained
    weights and decays by 0.999 per step stays near them for thousands of steps, longer than
    a whole fine-tune. Chosen over the references' `adjust` (a per-run decay from the
    epochs, batch and world size, held at the weights during lr warm-up) because it depends
    on the update count alone, which every checkpoint records, so a resumed run continues it
    exactly.
    """
    if not decay:
        return None
    constant = get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        # AveragedModel groups the tensors by dtype. Counters (BatchNorm's num_batches_tracked) are
        # the model's: torch's average would round them down.
        if not averaged[0].is_floating_point():
            for mine, theirs in zip(averaged, current, strict=True):
                mine.copy_(theirs)
        elif warmup:  # the weight as tensors on the device, not a Scalar (which would read it): no host sync
            torch._foreach_lerp_(averaged, current, [1 - ema_decay_at(decay, updates)] * len(averaged))
        else:
            constant(averaged, current, updates)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


# timm's ModelEmaV3 warm-up: decay 1 - (1 + step / gamma) ** -power, with its defaults gamma 1, power 2/3.
EMA_WARMUP_POWER = 2 / 3


def ema_decay_at(decay: float, updates: torch.Tensor) -> torch.Tensor:
    """The decay of an update of the average with warm-up, after `updates` earlier ones (the first
    copies the weights): min(decay, 1 - (1 + updates) ** -2/3), as timm's ModelEmaV3 with
    use_warmup at step updates + 1. It passes 0.9 after 31 updates, 0.99 after 999."""
    return (1 - (1 + updates.double()) ** -EMA_WARMUP_POWER).clamp(max=decay).float()
