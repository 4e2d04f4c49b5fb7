"""The training loop shared by the weights (pretraining) and train stages, and what
evaluate shares with them: one training epoch, batched prediction, and the scores (loss,
accuracy, macro-F1).

Inputs come as batches (pipeline.batches): a batch is an index, a copy and a
normalisation, so no file is opened inside an epoch. On a GPU, an epoch makes no host sync
but the one at its end: the epoch's order and its augmentation draws are put on the device
once, and the per-batch losses are checked after the last batch.
"""

import dataclasses
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.augment import Augment, draw_augmentation
from pipeline.batches import Batches, CropBatches, Draws, batch_indices, iterate
from pipeline.cli import UserError, progress
from pipeline.devices import autocast, place_model, to_device
from pipeline.distributed import SINGLE, Ranks, all_sum, pad, shard, share_buffers, unshard
from pipeline.freezing import set_train_mode


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite; the message names the epoch and batch."""


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The RNG for one epoch's shuffle and augmentation.

    Seeding per epoch, rather than carrying one stream along, makes epoch k's data order
    a function of (seed, k) alone, so a run resumed at epoch k is identical to one that
    never stopped.
    """
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def rank_seed(generator: torch.Generator, rank: int) -> int:
    """The seed of torch's global RNG (dropout, mixing) for `rank` in the epoch of `generator`.

    Rank 0 keeps the epoch's own seed; rank r adds r * 2**48, so no (epoch, rank) pair of a
    run shares another's stream (a plain `+ rank` made rank r's epoch e rank 0's epoch e + r).
    """
    return (generator.initial_seed() + (rank << 48)) % 2**64


def compile_for_training(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """`model` compiled for the training steps; prediction keeps running the plain module.

    One graph per run: `train_steps` marks the batch dimension dynamic, so the smaller
    last batch needs no second compile, and evaluation (no autograd) needs none at all.
    A last batch of one image is the exception (torch specialises size 1).
    """
    return torch.compile(model, backend=backend)


@dataclass(frozen=True)
class LoopOptions:
    """How one phase of training runs its epochs: everything the loop needs besides the model,
    the data and the optimizer. Built once per phase (pipeline.train) or per pretraining run
    (pipeline.weights)."""

    batch_size: int  # the global batch: with several `ranks` each steps on its share of it
    seed: int = 0  # with the epoch, seeds its order and augmentation (see `epoch_generator`)
    frozen: tuple[str, ...] = ()  # modules that stay in inference mode (set_train_mode)
    hflip: bool = False  # crops (of batches.CropBatches) and flips: see `augment.draw_augmentation`
    min_scale: float = 1.0
    max_aspect: float = 1.0
    # The training loss; None: plain cross-entropy, looked up at call time (tests patch it).
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    # What runs the steps when given: the model compiled, or wrapped in DistributedDataParallel,
    # or both (a compiled step model also marks the batch dimension dynamic).
    step_model: nn.Module | None = None
    ranks: Ranks = SINGLE
    accumulate: int = 1  # batches whose gradients add up to one optimizer step
    clip_grad_norm: float = 0.0  # > 0: the gradients' total norm is clipped to this before each step
    after_step: Callable[[], None] | None = None  # runs after each optimizer step (the weights' moving average)
    augment: Augment | None = None  # each batch after its crops and flips (pipeline.augment)
    class_weights: torch.Tensor | None = None  # the criterion's, which weigh each step's mean (`split_loss`)

    @property
    def micro_batch(self) -> int:
        """The batch each process runs at a time: its share of the global batch, split again
        into the batches whose gradients one step adds up."""
        return self.batch_size // (self.ranks.world * self.accumulate)


def train_one_epoch(
    model: nn.Module, data: Batches, optimizer: torch.optim.Optimizer, loop: LoopOptions, epoch: int
) -> float:
    """One pass over `data` in the order `epoch_generator(loop.seed, epoch)` draws; returns the
    mean training loss (of every process)."""
    set_train_mode(model, list(loop.frozen))
    generator = epoch_generator(loop.seed, epoch)
    # Dropout and mixing draw from the global RNG: tie it to this epoch's seed and the rank too.
    torch.manual_seed(rank_seed(generator, loop.ranks.rank))
    wholes = data.whole_sizes if isinstance(data, CropBatches) else None  # crops are drawn over whole images
    keys = loop.augment is not None
    order = epoch_order(len(data), generator, loop.hflip, loop.min_scale, loop.max_aspect, wholes, keys)
    if loop.ranks.active or loop.accumulate > 1:
        order = split_steps(order, data.targets, loop)
    plan = order.shard(loop.ranks)
    losses = train_steps(model, data, optimizer, plan, loop, f"epoch {epoch}")
    if plan.real is None:
        sizes = torch.tensor([len(b) for b in plan.order.split(loop.micro_batch)], dtype=torch.float32)
        return epoch_loss(losses, sizes, epoch, loop.ranks)
    sizes = torch.stack([real.sum() for real in plan.real.split(loop.micro_batch)])
    return epoch_loss(losses, sizes, epoch, loop.ranks, summed=True)


@dataclass
class EpochOrder:
    """The order in which an epoch visits the items, and each visit's augmentation.

    Drawn on the CPU from the epoch's generator, so it is the same on every device and
    after a resume. Processes that share an epoch each take their part of it (`shard`).
    """

    order: torch.Tensor  # int64 (N,): item indices
    draws: Draws | None  # each visit's crop and flip; None: no augmentation
    keys: torch.Tensor | None = None  # int64 (N,): each visit's seed for the recipes (pipeline.augment)
    # With several processes or accumulated batches (`split_steps`), per visit: 1.0 for an item,
    # 0.0 for `shard`'s padding; its optimizer step's items, and their class weights' total.
    real: torch.Tensor | None = None
    step_items: torch.Tensor | None = None
    step_weight: torch.Tensor | None = None

    def shard(self, ranks: Ranks) -> "EpochOrder":
        """This rank's visits (distributed.shard), each with the draws it has in the whole order."""
        return self._each(lambda rows: shard(rows, ranks))

    def _each(self, change: Callable[[torch.Tensor], torch.Tensor]) -> "EpochOrder":
        """`change` applied to each per-visit tensor, the draws' included."""
        parts = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return EpochOrder(
            **{
                name: None if rows is None else rows.apply(change) if isinstance(rows, Draws) else change(rows)
                for name, rows in parts.items()
            }
        )


def split_steps(plan: EpochOrder, targets: torch.Tensor, loop: LoopOptions) -> EpochOrder:
    """`plan` padded as `shard` pads it for `loop.ranks`, with what divides each optimizer
    step's loss among the processes and accumulated batches that share it (`split_loss`):
    which visits are padding, and each step's items and their class weights' total."""
    padded = plan._each(lambda rows: pad(rows, loop.ranks.world))
    visits = len(padded.order)
    real = (torch.arange(visits) < len(plan.order)).float()
    weight = real if loop.class_weights is None else real * loop.class_weights.float().cpu()[targets[padded.order]]
    step = torch.arange(visits) // loop.batch_size  # the global batches, in the padded order
    steps = -(-visits // loop.batch_size)
    items = torch.zeros(steps).index_add_(0, step, real)
    totals = torch.zeros(steps).index_add_(0, step, weight)
    return dataclasses.replace(padded, real=real, step_items=items[step], step_weight=totals[step])


def epoch_order(
    n: int,
    generator: torch.Generator,
    hflip: bool,
    min_scale: float,
    max_aspect: float = 1.0,
    sizes: torch.Tensor | None = None,
    keys: bool = False,
) -> EpochOrder:
    """The epoch's order and each visit's augmentation, crop boxes drawn over the whole image
    of the item visited (`sizes`: each item's width and height); with `keys` a seed per visit
    for the recipes, drawn last so that turning them on changes none of the others."""
    order = torch.randperm(n, generator=generator)
    visited = None if sizes is None else sizes[order]
    draws = draw_augmentation(n, hflip, min_scale, generator, max_aspect, visited)
    return EpochOrder(order, draws, torch.randint(2**62, (n,), generator=generator) if keys else None)


def train_and_score(
    model: nn.Module,
    train_data: Batches,
    val_data: Batches,
    optimizer: torch.optim.Optimizer,
    loop: LoopOptions,
    epoch: int,
    num_classes: int,
) -> tuple[float, dict[str, float]]:
    """One training epoch, then the scores on `val_data` of the weights rank 0 saves: (training
    loss, val scores)."""
    loss = train_one_epoch(model, train_data, optimizer, loop, epoch)
    share_buffers(model, loop.ranks)
    return loss, score(predict(model, val_data, loop.batch_size, loop.ranks), val_data.targets, num_classes)


def train_steps(
    model: nn.Module,
    data: Batches,
    optimizer: torch.optim.Optimizer,
    plan: EpochOrder,
    loop: LoopOptions,
    desc: str,
) -> torch.Tensor:
    """The optimizer steps of one epoch, in `plan`'s order; the per-batch losses (with
    `split_steps`, each batch's part of the epoch's summed loss), left on the device.

    Nothing here waits for the device: the order and the augmentation draws travel to it
    once, before the first step, and the losses are read after the last. Each optimizer step
    adds up the gradients of `loop.accumulate` batches; with several processes or accumulated
    batches each one's loss is its part of the step's (`split_loss`), so the step is the one
    a batch of all of them would take. With `clip_grad_norm`, before each step the gradients
    (of every rank, once averaged) are scaled down to that total norm when above it.
    """
    batch_size, accumulate = loop.micro_batch, loop.accumulate
    # `is None`, not `or`: a compiled module has no truth value.
    stepped = model if loop.step_model is None else loop.step_model
    criterion = loop.criterion or F.cross_entropy
    batches = list(to_device(plan.order, data.index_device).split(batch_size))
    draws, keys, parts = batch_draws(plan, data, batch_size, len(batches))
    place_model(stepped, data.device)
    losses = torch.zeros(len(batches), device=data.device)
    loaded = progress(iterate(data, batches, draws), desc, len(batches))
    for step, ((images, targets), key, part) in enumerate(zip(loaded, keys, parts, strict=True)):
        if loop.augment is not None:
            images, targets = loop.augment(images, targets, key)
        if loop.step_model is not None and images.shape[0] > 1:
            torch._dynamo.mark_dynamic(images, 0)  # one compiled graph for every batch size
        first, last = step % accumulate == 0, step % accumulate == accumulate - 1 or step == len(batches) - 1
        # Under DistributedDataParallel, gradients are averaged over the processes at the last batch only.
        with stepped.no_sync() if not last and hasattr(stepped, "no_sync") else nullcontext():
            with autocast(data.device):
                outputs = stepped(images)
                if part is None:
                    loss = kept = criterion(outputs, targets)
                else:
                    loss, kept = split_loss(criterion, outputs, targets, part, loop.ranks.world)
            if first:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if last:
            if loop.clip_grad_norm:
                params = [param for group in optimizer.param_groups for param in group["params"]]
                torch.nn.utils.clip_grad_norm_(params, loop.clip_grad_norm)
            optimizer.step()
            if loop.after_step is not None:
                loop.after_step()
        losses[step] = kept.detach()
    return losses


def batch_draws(plan: EpochOrder, data: Batches, batch_size: int, count: int) -> tuple[list, list, list]:
    """Per batch of `plan`: its crops and flips (where `data` uses them), its recipe keys (on
    the CPU, where v2 draws) and its part of the loss split (on the device); lists of None
    for what is off. Moved where they are used at once, as the order is."""

    def per_batch(rows: torch.Tensor | None, where: torch.device) -> list:
        return [None] * count if rows is None else list(to_device(rows, where).split(batch_size))

    draws = None if plan.draws is None else plan.draws.apply(lambda rows: to_device(rows, data.draws_device))
    split = (plan.real, plan.step_items, plan.step_weight)
    parts = [None] * count if plan.real is None else list(zip(*(per_batch(r, data.device) for r in split), strict=True))
    keys = per_batch(plan.keys, torch.device("cpu"))
    return ([None] * count if draws is None else draws.split(batch_size)), keys, parts


def split_loss(
    criterion: Callable[..., torch.Tensor],
    outputs: torch.Tensor,
    targets: torch.Tensor,
    part: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    world: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's part of its optimizer step's loss, to backpropagate, and of the epoch's.

    One process's step takes the mean over the global batch: the sum of the items' losses
    over the sum of their weights, as `optim.training_loss` weighs them (each item's class
    weight, one each without class weights; mixed targets weigh their classes' weights by the
    mixing ratios, and as MixUp/CutMix mix the items of a batch among themselves, a batch's
    mixed weights add up to its items' own). So each part sums
    its items' losses, padding left out, and divides by its whole step's total, times the
    processes, whose gradients DDP averages: the parts of a step add up to one process's
    step however the global batch is split, an uneven last one included. The second value
    is the part's sum scaled to the step's mean, for the epoch's mean (`epoch_loss`).
    """
    real, items, weight = part
    total = weight[0]
    summed = (criterion(outputs, targets, reduction="none") * real).sum()
    return summed * world / total, summed * items[0] / total


def epoch_loss(
    losses: torch.Tensor, sizes: torch.Tensor, epoch: int, ranks: Ranks = SINGLE, summed: bool = False
) -> float:
    """The size-weighted mean of the per-batch losses (of every rank; `summed`: each already
    times its batch's size), after checking that each is finite: every rank raises if any
    rank's loss is not, so none waits for the others.

    This is the epoch's one host sync.
    """
    losses = losses.float().cpu()
    bad = (~torch.isfinite(losses)).nonzero()
    sums = losses if summed else losses * sizes
    totals = all_sum(torch.stack([sums.sum(), sizes.sum(), torch.tensor(float(len(bad)))]), ranks)
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
    confusion = confusion_matrix(targets, predictions, num_classes)
    true_positive = confusion.diag().float()
    support, predicted = confusion.sum(dim=1).float(), confusion.sum(dim=0).float()
    present = (support + predicted) > 0
    f1 = 2 * true_positive / (support + predicted).clamp(min=1)
    return {
        "loss": F.cross_entropy(logits, targets).item(),
        "accuracy": (predictions == targets).float().mean().item(),
        "f1": f1[present].mean().item(),
    }


def confusion_matrix(targets: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 (num_classes, num_classes): [i, j] counts the items of class i predicted as j."""
    return torch.bincount(targets * num_classes + predictions, minlength=num_classes**2).view(num_classes, num_classes)
