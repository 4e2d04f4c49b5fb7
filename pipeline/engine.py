"""The training loop shared by the weights (pretraining) and train stages, and what
evaluate shares with them: one training epoch, batched prediction, and the scores (loss,
accuracy, macro-F1).

Inputs come as batches (pipeline.batches): a batch is an index, a copy and a
normalisation, so no file is opened inside an epoch. On a GPU, an epoch makes no host sync
but the one at its end: the epoch's order and its augmentation draws are put on the device
once, and the per-batch losses are checked after the last batch.
"""

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.augment import Augment, apply_augmentation, draw_augmentation
from pipeline.batches import Batches, ImageBatches, batch_indices, iterate
from pipeline.cli import UserError, progress
from pipeline.devices import autocast, place_model, to_device
from pipeline.distributed import SINGLE, Ranks, all_sum, shard, unshard
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
    hflip: bool = False  # crops and flips: see `augment.draw_augmentation`
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
    # Dropout draws from the global RNG: tie it to this epoch's seed, and rank, too (see epoch_generator).
    torch.manual_seed(generator.initial_seed() + loop.ranks.rank)
    centre = data.centre_fraction if isinstance(data, ImageBatches) else 1.0
    plan = epoch_order(len(data), generator, loop.hflip, loop.min_scale, loop.max_aspect, centre).shard(loop.ranks)
    losses = train_steps(model, data, optimizer, plan, loop, f"epoch {epoch}")
    sizes = torch.tensor([len(b) for b in plan.order.split(loop.micro_batch)], dtype=torch.float32)
    return epoch_loss(losses, sizes, epoch, loop.ranks)


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
    loop: LoopOptions,
    epoch: int,
    num_classes: int,
) -> tuple[float, dict[str, float]]:
    """One training epoch, then the scores on `val_data`: (training loss, val scores)."""
    loss = train_one_epoch(model, train_data, optimizer, loop, epoch)
    return loss, score(predict(model, val_data, loop.batch_size, loop.ranks), val_data.targets, num_classes)


def train_steps(
    model: nn.Module,
    data: Batches,
    optimizer: torch.optim.Optimizer,
    plan: EpochOrder,
    loop: LoopOptions,
    desc: str,
) -> torch.Tensor:
    """The optimizer steps of one epoch, in `plan`'s order; the per-batch losses, left on the device.

    Nothing here waits for the device: the order and the augmentation draws travel to it
    once, before the first step, and the losses are read after the last. Each optimizer step
    adds up the gradients of `loop.accumulate` batches, each weighted by its share of their
    items, so the step is the one a batch of all of them would take. With `clip_grad_norm`,
    before each step the gradients (of every rank, once averaged) are scaled down to that
    total norm when above it.
    """
    batch_size, accumulate = loop.micro_batch, loop.accumulate
    # `is None`, not `or`: a compiled module has no truth value.
    stepped = model if loop.step_model is None else loop.step_model
    criterion = loop.criterion or F.cross_entropy
    batches = list(to_device(plan.order, data.index_device).split(batch_size))
    steps = [batches[start : start + accumulate] for start in range(0, len(batches), accumulate)]
    shares = [len(batch) / sum(len(b) for b in step) for step in steps for batch in step]
    per_batch = [None] * len(batches)
    if plan.transforms is not None:
        per_batch = to_device(plan.transforms, data.device).split(batch_size)
    place_model(stepped, data.device)
    losses = torch.zeros(len(batches), device=data.device)
    # Augmented batches come whole, to be cropped at random; the others as the centre crop.
    loaded = iterate(data, batches, whole=plan.transforms is not None)
    size = data.crop if isinstance(data, ImageBatches) else None
    for step, ((images, targets), theta) in enumerate(
        zip(progress(loaded, desc, len(batches)), per_batch, strict=True)
    ):
        if theta is not None:
            images = apply_augmentation(images, theta, size)
        if loop.augment is not None:
            images, targets = loop.augment(images, targets)
        if loop.step_model is not None and images.shape[0] > 1:
            torch._dynamo.mark_dynamic(images, 0)  # one compiled graph for every batch size
        first, last = step % accumulate == 0, step % accumulate == accumulate - 1 or step == len(batches) - 1
        # Under DistributedDataParallel, gradients are averaged over the processes at the last batch only.
        with stepped.no_sync() if not last and hasattr(stepped, "no_sync") else nullcontext():
            with autocast(data.device):
                loss = criterion(stepped(images), targets)
            if first:
                optimizer.zero_grad(set_to_none=True)
            (loss if accumulate == 1 else loss * shares[step]).backward()
        if last:
            if loop.clip_grad_norm:
                params = [param for group in optimizer.param_groups for param in group["params"]]
                torch.nn.utils.clip_grad_norm_(params, loop.clip_grad_norm)
            optimizer.step()
            if loop.after_step is not None:
                loop.after_step()
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
