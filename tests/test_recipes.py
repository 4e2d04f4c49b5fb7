"""Fine-tuning recipes: LR schedules with warm-up, a lower trunk LR, gradual unfreezing,
early stopping, label smoothing and class weights."""

import itertools
import json
import math
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from pipeline.checkpoints import load_checkpoint
from pipeline.config import ClassWeights, EarlyStoppingParams, Mode, Optimizer, OptimParams, Schedule
from pipeline.data.cache import decoded_images
from pipeline.data.split import read_manifest
from pipeline.freezing import freeze, parse_freeze
from pipeline.models import ModelSpec, build_model
from pipeline.optim import class_weights, lr_factor, make_optimizer, training_loss, weights_average
from pipeline.runs import early_stop
from testing.compare import assert_same_run, assert_tensors_equal
from testing.project import run, run_script, set_checked_params, stage
from tests.helpers import epochs_trained, torchvision_logits


def torch_schedule(scheduler: type, epochs: int, **kwargs: object) -> list[float]:
    """The learning-rate factor per epoch of a torch.optim.lr_scheduler, stepped once per epoch."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = scheduler(optimizer, **kwargs)
    factors = []
    for _ in range(epochs):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return factors


@pytest.mark.parametrize(
    ("schedule", "warmup", "expected"),
    [
        (Schedule.constant, 0, [1, 1, 1, 1, 1, 1]),
        (Schedule.constant, 2, [1 / 3, 2 / 3, 1, 1, 1, 1]),
        (Schedule.step, 0, torch_schedule(torch.optim.lr_scheduler.StepLR, 6, step_size=2, gamma=0.5)),
        (Schedule.step, 1, [0.5, 1, 1, 0.5, 0.5, 0.25]),
        # torch's own schedules as the reference for cosine decay to 0 over the epochs after warm-up
        (Schedule.cosine, 0, torch_schedule(torch.optim.lr_scheduler.CosineAnnealingLR, 6, T_max=6)),
        (Schedule.cosine, 2, [1 / 3, 2 / 3, *torch_schedule(torch.optim.lr_scheduler.CosineAnnealingLR, 4, T_max=4)]),
    ],
)
def test_lr_factor(schedule: Schedule, warmup: int, expected: list[float]) -> None:
    got = [lr_factor(e, 6, schedule, warmup, step_every=2, gamma=0.5) for e in range(1, 7)]
    assert got == pytest.approx(expected)


def test_trunk_learns_at_a_scaled_rate_and_later_unfrozen_params_are_in_the_optimizer() -> None:
    built = build_model("resnet18", None, ["a", "b"], 16)
    model, head = built.model, built.spec.head
    freeze(model, parse_freeze("first:4"), head)
    later = frozenset(name for name, p in model.named_parameters() if p.requires_grad)
    freeze(model, parse_freeze("all_but_head"), head)
    params = OptimParams(epochs=1, batch_size=2, optimizer=Optimizer.sgd, lr=0.1, momentum=0.9, weight_decay=0, seed=0)
    optimizer = make_optimizer(params, model, head, trunk_lr_scale=0.1, trains_later=later)

    head_group, trunk_group = optimizer.param_groups
    assert head_group["lr"] == 0.1 and trunk_group["lr"] == pytest.approx(0.01)
    assert {id(p) for p in head_group["params"]} == {id(p) for p in model.fc.parameters()}
    # layer3 and layer4 (trainable after first:4 unfreezes them) are there; layer1 never trains.
    in_trunk = {id(p) for p in trunk_group["params"]}
    assert all(id(p) in in_trunk for p in model.layer4.parameters())
    assert not any(id(p) in in_trunk for p in model.layer1.parameters())


def test_layers_beside_a_nested_head_learn_at_the_trunk_s_rate() -> None:
    """docs/params.md: what sits beside the head (MobileNetV3's classifier.0, a Linear before
    its head classifier.3) learns at lr x trunk_lr_scale; the head alone at lr."""
    with torch.device("meta"):
        built = build_model("mobilenet_v3_small", None, ["a", "b"], 32)
    model, head = built.model, built.spec.head
    assert head == "classifier.3"
    params = OptimParams(epochs=1, batch_size=2, optimizer=Optimizer.sgd, lr=0.1, momentum=0.9, weight_decay=0, seed=0)
    optimizer = make_optimizer(params, model, head, trunk_lr_scale=0.1)
    rate = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    for name, param in model.named_parameters():
        assert rate[id(param)] == pytest.approx(0.1 if name.startswith("classifier.3.") else 0.01), name


@pytest.mark.parametrize("kind", list(Optimizer))
def test_norms_and_biases_get_no_weight_decay_unless_asked_and_frozen_parts_stay_put(kind: Optimizer) -> None:
    """One step with zero gradients but the head weight's: weight decay alone moves the other
    parameters, SGD's (no momentum) and AdamW's decoupled decay both by a factor 1 - lr x decay,
    by hand here (Adam's, added to the gradient, would move them by about lr: its first step is
    the gradient's sign). The head weight's gradient of 0.25 then moves it by lr x 0.25 with
    SGD, by lr with AdamW."""
    built = build_model("resnet18", None, ["a", "b"], 16)
    model, head = built.model, built.spec.head
    freeze(model, parse_freeze("first:4"), head)  # conv1, bn1, layer1, layer2
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(0.5, 1.0)  # non-zero everywhere (BatchNorm's biases start at 0), so decay shows
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    lr, decay, gradient = 0.1, 0.5, 0.25
    params = OptimParams(epochs=1, batch_size=2, optimizer=kind, lr=lr, momentum=0, weight_decay=decay, seed=0)
    for decay_norms_and_biases in (False, True):
        optimizer = make_optimizer(params, model, head, decay_norms_and_biases=decay_norms_and_biases)
        for name, p in model.named_parameters():
            p.grad = torch.full_like(p, gradient if name == "fc.weight" else 0.0) if p.requires_grad else None
        optimizer.step()
        moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
        trains = {name for name, p in model.named_parameters() if p.requires_grad}
        decayed = trains if decay_norms_and_biases else {name for name in trains if before[name].ndim > 1}
        assert moved == decayed
        assert "fc.weight" in moved and "layer4.1.bn2.weight" in trains
        step = {"fc.weight": lr * (gradient if kind is Optimizer.sgd else 1.0)}
        for name in decayed:
            expected = before[name] * (1 - lr * decay) - step.get(name, 0.0)
            torch.testing.assert_close(model.get_parameter(name).detach(), expected, msg=name)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(before[name])


@pytest.mark.parametrize("arch", ["swin_t", "maxvit_t"])
def test_swin_and_maxvit_position_tables_get_no_weight_decay(arch: str) -> None:
    """docs/fine-tuning.md: weight decay leaves alone norm layers, biases and Swin's and
    MaxViT's relative position tables, as timm's Swin and MaxViT name theirs (no_weight_decay:
    every relative_position_bias_table). The sets by hand, from the parameters' names and
    shapes, on the meta device."""
    with torch.device("meta"):
        model = torchvision.models.get_model(arch)
    head = "head" if arch == "swin_t" else "classifier"
    params = OptimParams(
        epochs=1, batch_size=2, optimizer=Optimizer.adamw, lr=0.1, momentum=0, weight_decay=0.05, seed=0
    )
    optimizer = make_optimizer(params, model, head, decay_norms_and_biases=False)
    decayed = {id(p) for group in optimizer.param_groups if group["weight_decay"] > 0 for p in group["params"]}
    names = {name for name, p in model.named_parameters() if id(p) in decayed}
    tables = {name for name, _ in model.named_parameters() if name.endswith("relative_position_bias_table")}
    assert tables and not tables & names
    assert names == {name for name, p in model.named_parameters() if p.ndim > 1 and name not in tables}


# torchvision ViT's parameters as timm's ViT names them: outside the blocks, and inside each.
TIMM_VIT_NAMES = {
    "class_token": "cls_token",
    "encoder.pos_embedding": "pos_embed",
    "conv_proj.weight": "patch_embed.proj.weight",
    "conv_proj.bias": "patch_embed.proj.bias",
    "encoder.ln.weight": "norm.weight",
    "encoder.ln.bias": "norm.bias",
    "heads.head.weight": "head.weight",
    "heads.head.bias": "head.bias",
}
TIMM_VIT_BLOCK_NAMES = {
    "ln_1": "norm1",
    "self_attention.in_proj_": "attn.qkv.",
    "self_attention.out_proj": "attn.proj",
    "ln_2": "norm2",
    "mlp.0": "mlp.fc1",
    "mlp.3": "mlp.fc2",
}


def timm_vit_name(name: str) -> str:
    if name in TIMM_VIT_NAMES:
        return TIMM_VIT_NAMES[name]
    block, _, rest = name.removeprefix("encoder.layers.encoder_layer_").partition(".")
    ours, theirs = next((o, t) for o, t in TIMM_VIT_BLOCK_NAMES.items() if rest.startswith(o))
    return f"blocks.{block}.{theirs}{rest.removeprefix(ours)}"


@pytest.mark.parametrize("layer_decay", [1.0, 0.65])
def test_torchvision_vit_is_grouped_as_timm_groups_its_vit(layer_decay: float) -> None:
    """vit_b_16's parameter groups are timm's param_groups_layer_decay / param_groups_weight_decay
    for timm's ViT-B/16, parameter by parameter: class token and position embedding undecayed,
    with the patch embedding in the first layer; the final norm with the last block (0.65, not
    0.4225 below the head)."""
    import timm
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    with torch.device("meta"):  # only the structure matters
        built = build_model("vit_b_16", None, ["a", "b"], 224)
        reference = timm.create_model("vit_base_patch16_224", num_classes=2)
    model, head = built.model, built.spec.head
    params = OptimParams(
        epochs=1, batch_size=2, optimizer=Optimizer.adamw, lr=1.0, momentum=0, weight_decay=0.05, seed=0
    )
    optimizer = make_optimizer(params, model, head, decay_norms_and_biases=False, layer_decay=layer_decay)
    ours = {id(p): (group["lr"], group["weight_decay"]) for group in optimizer.param_groups for p in group["params"]}
    kept = reference.no_weight_decay()
    if layer_decay == 1:
        groups = param_groups_weight_decay(reference, 0.05, no_weight_decay_list=kept)
    else:
        groups = param_groups_layer_decay(reference, 0.05, no_weight_decay_list=kept, layer_decay=layer_decay)
    theirs = {id(p): (group.get("lr_scale", 1.0), group["weight_decay"]) for group in groups for p in group["params"]}
    timm_params = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        rate, decay = theirs[id(timm_params[timm_vit_name(name)])]
        assert ours[id(param)] == (pytest.approx(rate, rel=1e-12), decay), name
    if layer_decay != 1:
        assert ours[id(model.get_parameter("encoder.layers.encoder_layer_11.mlp.0.weight"))][0] == pytest.approx(0.65)
        assert ours[id(model.get_parameter("conv_proj.weight"))][0] == pytest.approx(0.65**13)


def records(values: list[float], metric: str) -> list[dict]:
    """Epochs whose `metric` takes `values`; the other metric stays flat, so reading it instead
    would stop a run that improves."""
    return [{"epoch": i + 1, "val_loss": 0.5, "val_accuracy": 0.5, metric: v} for i, v in enumerate(values)]


@pytest.mark.parametrize(
    ("values", "mode", "patience", "min_delta", "stops"),
    [
        ([0.9, 0.8, 0.7], Mode.min, 2, 0.0, False),  # still improving
        ([0.9, 0.8, 0.85, 0.82], Mode.min, 2, 0.0, True),  # two epochs since the best
        ([0.9, 0.8, 0.85], Mode.min, 2, 0.0, False),  # only one
        ([0.9, 0.895, 0.89], Mode.min, 2, 0.01, True),  # improvements below min_delta do not count
        ([0.5, 0.6, 0.7], Mode.max, 1, 0.0, False),
        # Rises below min_delta do not count either: min_delta is in the metric's own units,
        # whichever way it improves (0.008 over the best, then 0.009: half the min_delta would count them).
        ([0.5, 0.508, 0.509], Mode.max, 2, 0.01, True),
        ([0.5, math.nan, 0.4], Mode.max, 2, 0.0, True),  # NaN is never an improvement
        # ... not even the first epoch's: two epochs without a score use up a patience of 2, as
        # Keras's EarlyStopping counts them (NaN < inf is false, so its wait grows each epoch)
        ([math.nan, math.nan], Mode.min, 2, 0.0, True),
        ([math.nan], Mode.min, 2, 0.0, False),
        ([0.9, 0.9, 0.9], Mode.min, 0, 0.0, False),  # patience 0: off
        ([0.9, 0.95], Mode.min, 1, 0.0, True),  # patience 1: on, one epoch without improvement stops
        # An equal value is no improvement (Keras's EarlyStopping compares with np.less / np.greater).
        ([0.9, 0.9, 0.9], Mode.min, 2, 0.0, True),
        ([0.5, 0.5, 0.5], Mode.max, 2, 0.0, True),
        ([0.5, 0.4, 0.5], Mode.max, 2, 0.0, True),
    ],
)
def test_early_stop(values: list[float], mode: Mode, patience: int, min_delta: float, stops: bool) -> None:
    metric = "val_loss" if mode is Mode.min else "val_accuracy"
    reason = early_stop(
        records(values, metric), metric, mode, EarlyStoppingParams(patience=patience, min_delta=min_delta)
    )
    assert (reason is not None) == stops


def test_balanced_class_weights() -> None:
    targets = torch.tensor([0, 0, 0, 1])  # 3:1
    weights = class_weights(ClassWeights.balanced, targets, 2, torch.device("cpu"))
    assert weights.tolist() == pytest.approx([4 / (2 * 3), 4 / (2 * 1)])


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_class_weighted_loss_of_mixed_labels_is_divided_by_their_weight(smoothing: float) -> None:
    """With class weights, MixUp/CutMix labels (class probabilities) give the loss torch gives
    class indices: one-hot probabilities exactly that, so the loss keeps its scale when mixing
    switches on; mixed ones the weighted sum over the batch's weight, computed by hand here."""
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    weight = torch.tensor([0.5, 1.0, 4.0])  # mean batch weight far from 1, so a division by 4 shows
    targets = torch.tensor([2, 0, 2, 1])
    one_hot = F.one_hot(targets, 3).float()
    expected = F.cross_entropy(logits, targets, weight=weight, label_smoothing=smoothing)
    torch.testing.assert_close(training_loss(logits, one_hot, weight, smoothing), expected)
    torch.testing.assert_close(training_loss(logits, targets, weight, smoothing), expected)

    mixed = 0.7 * one_hot + 0.3 * one_hot.roll(1, 0)  # as MixUp mixes each image with the one before
    smoothed = mixed * (1 - smoothing) + smoothing / 3
    by_hand = -(weight * smoothed * logits.log_softmax(dim=1)).sum() / (mixed * weight).sum()
    torch.testing.assert_close(training_loss(logits, mixed, weight, smoothing), by_hand)
    # Each item's weighted loss (reduction "none", which split_loss divides by a step's weight).
    items = -(weight * smoothed * logits.log_softmax(dim=1)).sum(dim=1)
    torch.testing.assert_close(training_loss(logits, mixed, weight, smoothing, reduction="none"), items)
    # Without class weights it is torch's loss of the probabilities, their mean over the batch.
    torch.testing.assert_close(
        training_loss(logits, mixed, None, smoothing), F.cross_entropy(logits, mixed, label_smoothing=smoothing)
    )


# Runs the train stage as `python -m` does, recording each call of the training loss in the
# first epoch (the model's outputs, the targets, mixed where MixUp mixes them, and the loss), in seen.pt.
RECORD_THE_LOSS = """\
import dataclasses, runpy, torch
import pipeline.engine as engine
seen, train_and_score = [], engine.train_and_score
def recorded_loop(model, train_data, val_data, optimizer, loop, epoch, classes):
    def criterion(outputs, targets, **kwargs):
        loss = loop.criterion(outputs, targets, **kwargs)
        if epoch == 1:
            seen.append((outputs.detach().clone(), targets.clone(), loss.detach().clone(), kwargs))
            torch.save(seen, "seen.pt")
        return loss
    recorded = dataclasses.replace(loop, criterion=criterion)
    return train_and_score(model, train_data, val_data, optimizer, recorded, epoch, classes)
engine.train_and_score = recorded_loop
runpy.run_module("pipeline.train", run_name="__main__")
"""


@pytest.mark.parametrize("accumulate", [1, 2])
def test_mixed_labels_weigh_by_their_classes_weights_in_the_train_stage(prepared: Path, accumulate: int) -> None:
    """MixUp with train.class_weights: balanced, through the train stage, batches of 64 (with
    2 accumulated batches of 32 per step, each mixed within itself): each step's loss is the
    class-weighted cross-entropy of its mixed targets over their weights' total (docs/params.md;
    torch's mean over probabilities would divide by the batch size instead), and the epoch's
    the steps' mean weighed by their sizes, by hand from the logits and targets the loss was
    given and the weights counted here from the manifest. One class thinned to a third makes
    the weights differ; the batches, not the whole split (whose balanced weights total its
    size), make a step's weight total differ from its size."""
    project = prepared
    recipe = {"train.epochs": 1, "train.accumulate_steps": accumulate, "train.class_weights": "balanced",
              "train.augment.mixup_alpha": 1.0}  # fmt: skip
    set_checked_params(project, freeze="all_but_head", **recipe)
    path = project / "data/prepared/manifest.csv"
    manifest = pd.read_csv(path, dtype=str, keep_default_na=False)
    first = manifest.index[(manifest["split"] == "train") & (manifest["label"] == manifest["label"].min())]
    manifest.drop(first[first % 3 != 0]).to_csv(path, index=False)
    manifest, classes = read_manifest(project / "data/prepared")
    run_script(RECORD_THE_LOSS, [], project)
    seen = torch.load(project / "seen.pt", weights_only=True)
    train = [classes.index(label) for label in manifest["label"][manifest["split"] == "train"]]
    assert sum(len(targets) for _, targets, *_ in seen) == len(train)
    assert all(kwargs == ({"reduction": "none"} if accumulate > 1 else {}) for *_, kwargs in seen)
    counts = torch.bincount(torch.tensor(train), minlength=len(classes)).double()
    weight = counts.sum() / (len(classes) * counts)
    assert weight.max() / weight.min() > 2, weight
    steps = [seen[k : k + accumulate] for k in range(0, len(seen), accumulate)]
    by_hand, torch_mean = [], []
    for step in steps:
        outputs, targets, losses = (torch.cat([torch.atleast_1d(part[k]) for part in step]).double() for k in range(3))
        assert (targets.amax(dim=1) < 0.999).double().mean() > 0.6  # mixed (a fifth with their own class)
        weighed = targets * weight
        by_hand.append((-(weighed * outputs.log_softmax(dim=1)).sum() / weighed.sum(), len(targets)))
        torch_mean.append((F.cross_entropy(outputs, targets, weight=weight), len(targets)))
        # The loss the step was given: its mean, or each item's weighted loss for split_loss to divide.
        given = losses.sum() / (weighed.sum() if accumulate > 1 else 1)
        assert given.item() == pytest.approx(by_hand[-1][0].item(), rel=1e-5)
        assert abs(torch_mean[-1][0].item() / by_hand[-1][0].item() - 1) > 5e-4  # measured: 1.2e-3 to 5e-2

    def epoch_mean(losses: list[tuple[torch.Tensor, int]]) -> float:
        return sum(loss.item() * size for loss, size in losses) / sum(size for _, size in losses)

    assert load_checkpoint(project / "checkpoints/epoch_001.pt")["loss"] == pytest.approx(epoch_mean(by_hand), rel=1e-5)
    # In the epoch's mean the steps' differences nearly cancel (their weights total the split's
    # size): 1.2e-4 apart (measured), still 12 times the tolerance above.
    assert abs(epoch_mean(torch_mean) / epoch_mean(by_hand) - 1) > 5e-5


@pytest.mark.parametrize("warmup", [True, False])
def test_the_weights_average_is_timms_model_ema_and_a_hand_computed_average(warmup: bool) -> None:
    """train.ema_decay 0.9, with and without warm-up, over 40 updates: the average of every
    floating tensor (BatchNorm's running mean too) is timm's ModelEmaV3's (use_warmup, updated
    at steps 1, 2, ...); after the first three, a hand computation's. The warm-up's decays
    0, 1 - 2 ** -2/3 = 0.37, 1 - 3 ** -2/3 = 0.52 are far from 0.9, and from 1 - 0.9."""
    from timm.utils import ModelEmaV3

    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    ours = weights_average(model, 0.9, warmup)
    theirs = ModelEmaV3(model, decay=0.9, use_warmup=warmup)
    generator = torch.Generator().manual_seed(0)
    seen = []
    for step in range(1, 41):
        with torch.no_grad():
            for tensor in [*model.parameters(), model[1].running_mean]:
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
        model[1].num_batches_tracked += 1
        seen.append(model[0].weight.detach().clone())
        ours.update_parameters(model)
        theirs.update(model, step=step)
        if step == 3:
            decays = [1 - 2 ** (-2 / 3), 1 - 3 ** (-2 / 3)] if warmup else [0.9, 0.9]
            by_hand = (seen[0] * decays[0] + seen[1] * (1 - decays[0])) * decays[1] + seen[2] * (1 - decays[1])
            torch.testing.assert_close(ours.module[0].weight, by_hand)
    for (name, mine), their in zip(ours.module.state_dict().items(), theirs.module.state_dict().values(), strict=True):
        torch.testing.assert_close(mine, their, msg=name)
    assert ours.module[1].num_batches_tracked.item() == 40  # the model's count, not an average


def test_the_default_recipe_trains_unweighted_and_stops_early_only_when_val_loss_stops_falling(
    prepared: Path,
) -> None:
    """The defaults select.metric val_loss, select.mode min and train.class_weights none, with
    patience 1: each of the 3 epochs lowers the validation loss (asserted below, the test's
    premise: a head trained by AdamW on the frozen trunk), so early stopping, reading val_loss
    as lower-is-better, never stops the run; one that read it as higher-is-better would stop
    after epoch 2. class_weights none reaches the loop as no weights at all: the plain mean of
    the batch's losses."""
    project = prepared
    recipe = {
        "train.epochs": 3, "train.early_stopping.patience": 1, "freeze": "all_but_head",
        "train.optimizer": "adamw", "train.lr": 0.01, "train.cache_features": False,  # the loop sees images
    }  # fmt: skip
    set_checked_params(project, **recipe)
    log = run_script(RECORD_THE_LOOP, ["pipeline.train"], project).stderr
    assert json.loads((project / "seen.json").read_text())["loop"]["class_weights"] is None
    val_losses = [load_checkpoint(path)["val_loss"] for path in sorted((project / "checkpoints").glob("*.pt"))]
    assert len(val_losses) == 3 and val_losses == sorted(val_losses, reverse=True), (val_losses, log)
    assert "early stopping" not in log


def test_early_stopping_keeps_every_finished_epoch(prepared: Path) -> None:
    project = prepared
    # A frozen backbone and a vanishing lr: the watched metric (select.metric, here validation
    # accuracy, which rises) moves by far less than min_delta, so patience 1 stops after epoch 2,
    # naming that metric: a stage that watched val_loss would name it instead.
    set_checked_params(
        project,
        freeze="all_but_head",
        **{
            "train.epochs": 4,
            "train.lr": 1e-9,
            "train.early_stopping.patience": 1,
            "train.early_stopping.min_delta": 0.01,
            "select.metric": "val_accuracy",
            "select.mode": "max",
        },
    )
    result = stage("train", project)
    assert "early stopping after epoch 2: val_accuracy has not improved" in result.stderr
    assert sorted(p.name for p in (project / "checkpoints").glob("*.pt")) == ["epoch_001.pt", "epoch_002.pt"]
    # Frozen for the whole run (no unfreezing), the trunk is none of the optimizer's: it holds
    # the head's weight and bias alone (docs/fine-tuning.md).
    checkpoints = [load_checkpoint(project / f"checkpoints/epoch_{epoch:03d}.pt") for epoch in (1, 2)]
    groups = checkpoints[0]["optimizer_state_dict"]["param_groups"]
    assert sum(len(group["params"]) for group in groups) == len(list(nn.Linear(2, 2).parameters()))
    # The log: what trains, counted on torchvision's own model, and each epoch's numbers as its checkpoint holds them.
    whole = torchvision.models.shufflenet_v2_x0_5(num_classes=5)
    trains, total = whole.fc.weight.numel() + whole.fc.bias.numel(), sum(p.numel() for p in whole.parameters())
    assert (
        f"shufflenet_v2_x0_5, 5 classes, freeze all_but_head: {trains:,} of {total:,} parameters train" in result.stderr
    )
    for epoch, checkpoint in enumerate(checkpoints, start=1):
        numbers = f"loss {checkpoint['loss']:.4f}, val loss {checkpoint['val_loss']:.4f}"
        assert f"epoch {epoch}/4: {numbers}, val accuracy {checkpoint['val_accuracy']:.3f}" in result.stderr
    # Killed after its last epoch's checkpoint, before the run was marked finished: the rerun
    # decides from the kept epochs that the run has stopped, and trains no epoch more.
    (run_folder,) = (project / ".cache/runs").iterdir()
    (run_folder / "finished").unlink()
    rerun = stage("train", project).stderr
    assert "early stopping after epoch 2" in rerun and epochs_trained(rerun) == []
    assert sorted(p.name for p in (project / "checkpoints").glob("*.pt")) == ["epoch_001.pt", "epoch_002.pt"]
    # Its output goes to a pipe, as in a CI log: the pipeline's own lines, no progress bar (tqdm
    # draws with carriage returns) and no library's debug chatter.
    assert "\r" not in result.stderr and "it/s" not in result.stderr
    assert [line for line in result.stderr.splitlines() if not line.startswith("pipeline.")] == []


def test_gradual_unfreezing_survives_a_resume(prepared: Path) -> None:
    project = prepared
    """Head alone for 1 epoch (on cached features), then layer3+layer4 at a lower LR; killed in epoch 3."""
    set_checked_params(
        project,
        freeze="all_but_head",
        **{
            "train.epochs": 3,
            "train.unfreeze_after": 1,
            "train.unfreeze_to": "first:3",
            "train.trunk_lr_scale": 0.1,
            "train.schedule": "cosine",
            "train.warmup_epochs": 1,
            "train.label_smoothing": 0.1,
            "train.class_weights": "balanced",
        },
    )
    stage("train", project)
    expected = [load_checkpoint(p) for p in sorted((project / "checkpoints").glob("*.pt"))]
    assert [c["freeze"] for c in expected] == ["all_but_head", "first:3", "first:3"]
    assert expected[0]["trainable_params"] < expected[1]["trainable_params"] < expected[1]["total_params"]
    trunk_lr = [c["optimizer_state_dict"]["param_groups"][-1]["lr"] for c in expected]  # the head's groups come first
    head_lr = [c["optimizer_state_dict"]["param_groups"][0]["lr"] for c in expected]
    assert trunk_lr == pytest.approx([h * 0.1 for h in head_lr])
    # What trains, by the weights themselves: the trunk is start.pt's to the bit after the
    # head-only epoch, and part of it has moved after the first unfrozen one.
    start = load_checkpoint(project / "models/start.pt")["model_state_dict"]
    trunks = [{key: c["model_state_dict"][key] for key in start} for c in expected[:2]]
    assert all(torch.equal(trunks[0][key], start[key]) for key in start)
    assert any(not torch.equal(trunks[1][key], trunks[0][key]) for key in start if start[key].is_floating_point())

    shutil.rmtree(project / ".cache/runs")  # the finished run's folder: train again, from scratch
    killed = run([sys.executable, "-m", "tests.kill_wrapper", "step", "13"], project, check=False)  # in epoch 3
    assert killed.returncode == -9, killed.stderr
    resumed = stage("train", project)
    assert "resuming after epoch 2" in resumed.stderr
    assert_same_run([load_checkpoint(p) for p in sorted((project / "checkpoints").glob("*.pt"))], expected)


def test_the_weights_moving_average_is_kept_scored_beside_them_and_may_be_chosen(prepared: Path) -> None:
    """train.ema_decay: every checkpoint carries the average, whose frozen part is the start's
    to the bit; evaluate scores both (with evaluate.tta: hflip here) and select-best keeps the
    winner, which tools.predict then uses with the same test-time augmentation."""
    project = prepared
    # resnet18 from random weights: the small model pretrained for one epoch predicts nearly
    # the same for every image, so mirror images would change nothing.
    recipe = {"model.arch": "resnet18", "model.weights": None, "train.ema_decay": 0.5, "evaluate.tta": "hflip"}
    set_checked_params(project, freeze="first:3", **recipe)
    logs = {name: stage(name, project).stderr for name in ("weights", "train", "evaluate", "select_best")}
    assert "scored 2 checkpoints:" in logs["evaluate"]  # checkpoints, not the table's 4 rows
    # evaluate.processes 1 and train.processes 1 (params.yaml's): each stage in its own process, no launcher
    assert all("processes (torchrun" not in log for log in logs.values())

    start = load_checkpoint(project / "models/start.pt")["model_state_dict"]
    checkpoints = [load_checkpoint(p) for p in sorted((project / "checkpoints").glob("*.pt"))]
    for checkpoint in checkpoints:
        raw, ema = checkpoint["model_state_dict"], checkpoint["ema_state_dict"]
        frozen = [k for k in raw if k.split(".")[0] in checkpoint["frozen_modules"]]
        assert frozen and all(torch.equal(ema[k], raw[k]) and torch.equal(ema[k], start[k]) for k in frozen)
        trained = [k for k in raw if k not in frozen and raw[k].is_floating_point()]
        assert sum(not torch.equal(ema[k], raw[k]) for k in trained) > 0.9 * len(trained)  # the average lags

    scores = pd.read_csv(project / "eval/scores.csv")
    assert list(zip(scores["epoch"], scores["weights"], strict=True)) == [
        (1, "raw"),
        (1, "ema"),
        (2, "raw"),
        (2, "ema"),
    ]
    assert set(scores["tta"]) == {"hflip"}
    # Each row's val and test losses are its own weights' with the mirror images, by torchvision
    # (val chooses the best, so it must be flipped too): equal to 1e-7 on the CPU (measured),
    # while the other weights or no flip are 7e-3 or more off. On CUDA evaluate runs in bf16,
    # which keeps 8 significant bits: a relative 2**-8 (3.9e-3).
    tolerance = 2**-8 if torch.cuda.is_available() else 1e-5
    manifest = pd.read_csv(project / "data/prepared/manifest.csv", dtype=str, keep_default_na=False)
    for row, split in itertools.product(scores.itertuples(), ("val", "test")):
        rows = manifest[manifest["split"] == split]
        checkpoint = checkpoints[row.epoch - 1]
        key = "ema_state_dict" if row.weights == "ema" else "model_state_dict"
        logits = torchvision_logits(checkpoint, list(rows["path"]), project, key, flip=True)
        targets = torch.tensor([checkpoint["classes"].index(label) for label in rows["label"]])
        loss = F.cross_entropy(logits, targets).item()
        assert getattr(row, f"{split}_loss") == pytest.approx(loss, rel=tolerance), (split, row)
    best_row = scores.loc[scores["val_loss"].idxmin()]
    metrics = json.loads((project / "best/metrics.json").read_text())
    assert (metrics["epoch"], metrics["weights"], metrics["tta"]) == (best_row["epoch"], best_row["weights"], "hflip")
    best = load_checkpoint(project / "models/best.pt")
    chosen = checkpoints[metrics["epoch"] - 1]["ema_state_dict" if metrics["weights"] == "ema" else "model_state_dict"]
    assert_tensors_equal(best["model_state_dict"], chosen, "best.pt")
    assert "ema_state_dict" not in best and best["tta"] == "hflip"

    # tools.predict takes the test-time augmentation from best.pt: its probabilities are evaluate's.
    name = f"epoch_{metrics['epoch']:03d}" + ("_ema" if metrics["weights"] == "ema" else "")
    # The least confident images: the mirror images' logits show there, not under a saturated softmax.
    evaluated = pd.read_csv(project / f"eval/predictions/{name}.csv", keep_default_na=False).nsmallest(5, "confidence")
    predicted = run(
        [sys.executable, "-m", "tools.predict", *evaluated["path"], "--format", "json", "--top-k", "1"], project
    )
    top = [obj["top"][0] for obj in json.loads(predicted.stdout)]
    assert [t["class"] for t in top] == list(evaluated["predicted"].astype(str))
    assert [t["probability"] for t in top] == pytest.approx(list(evaluated["confidence"]), abs=1e-5)

    # An epoch's checkpoint does not record evaluate.tta (train writes it first): predict takes
    # it from evaluate's table, so its probabilities are still that epoch's row's.
    evaluated = pd.read_csv(project / "eval/predictions/epoch_001.csv", keep_default_na=False)
    evaluated = evaluated.nsmallest(5, "confidence")
    model = ["--model", "checkpoints/epoch_001.pt", "--format", "json", "--top-k", "1"]
    predicted = run([sys.executable, "-m", "tools.predict", *evaluated["path"], *model], project)
    assert "evaluate used hflip (eval/scores.csv)" in predicted.stderr
    top = [obj["top"][0] for obj in json.loads(predicted.stdout)]
    assert [t["probability"] for t in top] == pytest.approx(list(evaluated["confidence"]), abs=1e-5)
    # --tta none overrides it: torchvision's probabilities without the mirror images.
    predicted = run([sys.executable, "-m", "tools.predict", *evaluated["path"], *model, "--tta", "none"], project)
    plain = torchvision_logits(checkpoints[0], list(evaluated["path"]), project).softmax(dim=1).amax(dim=1)
    top = [obj["top"][0] for obj in json.loads(predicted.stdout)]
    assert [t["probability"] for t in top] == pytest.approx(plain.tolist(), abs=1e-5)
    assert (plain - torch.tensor(evaluated["confidence"].to_numpy())).abs().max() > 1e-3  # the flip shows


@pytest.mark.parametrize(
    ("ema_decay", "warmup", "freeze"),
    [(0.999, True, "none"), (0.7, False, "all_but_head"), (0.45, True, "all_but_head")],
)
def test_the_trained_average_warms_up_as_the_recipe_says(
    prepared: Path, ema_decay: float, warmup: bool, freeze: str
) -> None:
    """The documented fine-tuning EMA (train.ema_decay 0.999, warm-up on), through the train
    stage, one optimizer step per epoch: each checkpoint's average is the hand-computed one of
    the checkpoints' raw weights and BatchNorm statistics (decays 0, 0.37, 0.52). Without the
    warm-up, 0.999 would leave it at the first step's weights. With `train.ema_warmup: false`
    and 0.7 (above both warm-up decays, and not 0.5, where the average and the weights could
    swap places unseen) each step after the first copy decays by 0.7; that case trains the
    head alone, on the frozen backbone's cached features, whose average is still the whole
    model's. With 0.45 and the warm-up, the warm-up's 0.52 is capped at 0.45 in the last step."""
    project = prepared
    # Two accumulated batches per step: the average follows the optimizer's steps, not the batches.
    recipe = {"train.epochs": 3, "train.batch_size": 1024, "train.accumulate_steps": 2, "train.ema_decay": ema_decay}
    set_checked_params(project, freeze=freeze, **recipe, **{"train.ema_warmup": warmup})
    stage("train", project)
    checkpoints = [load_checkpoint(p) for p in sorted((project / "checkpoints").glob("*.pt"))]
    raw = [checkpoint["model_state_dict"] for checkpoint in checkpoints]
    assert checkpoints[0]["ema_state_dict"].keys() == raw[0].keys()
    assert [checkpoint["ema_updates"] for checkpoint in checkpoints] == [1, 2, 3]
    for name, tensor in raw[0].items():
        if not tensor.is_floating_point():  # BatchNorm's batch counters: the model's, copied at each step
            assert all(torch.equal(c["ema_state_dict"][name], r[name]) for c, r in zip(checkpoints, raw, strict=True))
            continue
        average = raw[0][name]
        for k in (1, 2):
            decay = min(1 - (k + 1) ** (-2 / 3), ema_decay) if warmup else ema_decay
            average = decay * average + (1 - decay) * raw[k][name]
            torch.testing.assert_close(checkpoints[k]["ema_state_dict"][name], average, msg=name)
    if freeze != "none":
        return

    # docs/results.md: with the average on, the raw weights train as without it (the control:
    # the same run with ema_decay 0), step for step, optimizer state and losses alike.
    shutil.rmtree(project / "checkpoints")
    set_checked_params(project, **{**recipe, "train.ema_decay": 0.0})
    stage("train", project)
    plain = [load_checkpoint(p) for p in sorted((project / "checkpoints").glob("*.pt"))]
    assert "ema_state_dict" not in plain[0]
    assert_same_run(plain, [{k: v for k, v in c.items() if not k.startswith("ema_")} for c in checkpoints])


def test_the_train_stage_takes_the_steps_torch_takes_with_the_recipes_loss(
    prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The train stage's wiring of its params into the loss, the optimizer and the schedule,
    checked against torch's own functions: shufflenet's head alone trains for 2 epochs of one
    optimizer step each (the batch holds the whole train split), then everything for a third.

    The frozen backbone, unchanged in the checkpoints, gives the head's inputs; from them,
    F.cross_entropy with scikit-learn's balanced weights counted here from the manifest's
    train rows and label smoothing 0.1 gives the loss and its gradient; clipped as
    clip_grad_norm_ clips, plus weight decay on the weight alone (the bias is undecayed), and
    torch's SGD momentum, it gives epoch 2's step from epoch 1's weights. The rates are hand
    computed: a warm-up epoch (1/2), then the step schedule (x 0.3 each epoch after it), and
    in the groups of the trunk, which trains from epoch 3, x 0.1 (trunk_lr_scale) x
    0.5 ** depth (layer_decay). Every factor is far from 1, and the rates of the three epochs
    all differ, so a factor dropped, an epoch off by one, or a split, weight or rate taken for
    another, shows."""
    project = prepared
    lr, decay, momentum, clip, smoothing = 0.05, 0.3, 0.9, 0.05, 0.1
    set_checked_params(
        project,
        freeze="all_but_head",
        **{
            "train.epochs": 3,
            "train.batch_size": 1024,
            "train.lr": lr,
            "train.momentum": momentum,
            "train.weight_decay": decay,
            "train.schedule": "step",
            "train.warmup_epochs": 1,
            "train.step_every": 1,
            "train.step_gamma": 0.3,
            "train.clip_grad_norm": clip,
            "train.label_smoothing": smoothing,
            "train.class_weights": "balanced",
            "train.unfreeze_after": 2,
            "train.unfreeze_to": "none",
            "train.trunk_lr_scale": 0.1,
            "train.layer_decay": 0.5,
        },
    )
    stage("train", project)
    checkpoints = [load_checkpoint(p) for p in sorted((project / "checkpoints").glob("*.pt"))]
    rates = [lr / 2, lr, lr * 0.3]
    assert [c["lr"] for c in checkpoints] == pytest.approx(rates, rel=1e-12)
    # shufflenet_v2_x0_5's stages (`python -m pipeline.models`): conv1, stage2, stage3, stage4,
    # conv5, so depths 5 to 1 below the head; each has decayed weights and undecayed norms.
    # A checkpoint's optimizer holds the rates of the epoch after it, which a resumed run starts with.
    groups = checkpoints[0]["optimizer_state_dict"]["param_groups"]
    trunk = [rates[1] * 0.1 * 0.5**depth for depth in range(1, 6)]
    expected = sorted((rate, d) for rate in [rates[1], *trunk] for d in (decay, 0.0))
    got = sorted((g["lr"], g["weight_decay"]) for g in groups)
    assert [x for pair in got for x in pair] == pytest.approx([x for pair in expected for x in pair], rel=1e-12)
    assert {g["momentum"] for g in groups} == {momentum}

    # The head's inputs: the frozen backbone (bit-identical in every head-only checkpoint) in
    # inference mode, on the inputs the stage decoded, normalised here.
    monkeypatch.chdir(project)
    manifest, classes = read_manifest(Path("data/prepared"))
    spec = ModelSpec.from_checkpoint(checkpoints[0])
    pixels = torch.from_numpy(decoded_images(manifest, spec.sizing).copy()).float() / 255
    inputs = (pixels - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    backbone = torchvision.models.shufflenet_v2_x0_5(num_classes=len(classes)).eval()
    backbone.load_state_dict(checkpoints[0]["model_state_dict"])
    features = {}
    backbone.fc.register_forward_hook(lambda module, args, output: features.update(x=args[0]))
    with torch.no_grad():
        backbone(inputs)
    targets = torch.tensor([classes.index(label) for label in manifest["label"]])
    train = torch.from_numpy(manifest["split"].to_numpy() == "train")
    val = torch.from_numpy(manifest["split"].to_numpy() == "val")
    counts = torch.bincount(targets[train], minlength=len(classes)).double()
    weight = (counts.sum() / (len(classes) * counts)).float()

    def loss_and_gradient(head: dict[str, torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
        w, b = head["fc.weight"].clone().requires_grad_(), head["fc.bias"].clone().requires_grad_()
        logits = features["x"][train] @ w.T + b
        loss = F.cross_entropy(logits, targets[train], weight=weight, label_smoothing=smoothing)
        loss.backward()
        return loss.item(), [w.grad, b.grad]

    def momentum_buffers(checkpoint: dict) -> list[torch.Tensor]:
        """The head's weight's, then its bias's: the only state while the trunk is frozen."""
        state = checkpoint["optimizer_state_dict"]["state"].values()
        return sorted((s["momentum_buffer"] for s in state), key=lambda t: -t.ndim)

    first, second = (c["model_state_dict"] for c in checkpoints[:2])
    loss, gradients = loss_and_gradient(first)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in gradients]))
    assert norm > 2 * clip  # clipping acts
    clipped = [g * (clip / (norm + 1e-6)) for g in gradients]
    buffers = [
        momentum * kept + g + d * w
        for kept, g, d, w in zip(
            momentum_buffers(checkpoints[0]), clipped, (decay, 0.0), (first["fc.weight"], first["fc.bias"]), strict=True
        )
    ]
    for got, want in zip(momentum_buffers(checkpoints[1]), buffers, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    for name, buffer in zip(("fc.weight", "fc.bias"), buffers, strict=True):
        torch.testing.assert_close(second[name], first[name] - rates[1] * buffer, rtol=1e-4, atol=1e-6)
    assert checkpoints[1]["loss"] == pytest.approx(loss, rel=1e-5)  # the loss before epoch 2's step
    # Validation scores the weights after the step, with plain cross-entropy: no weights, no smoothing.
    val_logits = features["x"][val] @ second["fc.weight"].T + second["fc.bias"]
    assert checkpoints[1]["val_loss"] == pytest.approx(F.cross_entropy(val_logits, targets[val]).item(), rel=1e-5)


@pytest.mark.parametrize(
    ("schedule", "epochs", "rates"),
    [
        # warm-up 1 (epoch 1 at 1/2), then x 0.3 every 2 epochs: warm-up and step apart, so
        # one taken for the other shows
        ("step", 5, [1 / 2, 1, 1, 0.3, 0.3]),
        # warm-up 1, then cosine over the 3 epochs after it, as CosineAnnealingLR(T_max=3) steps
        ("cosine", 4, [1 / 2, 1, 0.5 * (1 + math.cos(math.pi / 3)), 0.5 * (1 + math.cos(2 * math.pi / 3))]),
    ],
)
def test_each_epoch_trains_at_the_rate_its_schedule_gives(
    prepared: Path, schedule: str, epochs: int, rates: list[float]
) -> None:
    """train.schedule with train.warmup_epochs 1 through the train stage: each checkpoint's
    rate, by hand (docs/params.md: a linear warm-up, then step or cosine decay)."""
    recipe = {"train.epochs": epochs, "train.batch_size": 1024, "train.lr": 0.1, "train.schedule": schedule,
              "train.warmup_epochs": 1, "train.step_every": 2, "train.step_gamma": 0.3}  # fmt: skip
    set_checked_params(prepared, freeze="all_but_head", **recipe)
    stage("train", prepared)
    checkpoints = [load_checkpoint(p) for p in sorted((prepared / "checkpoints").glob("*.pt"))]
    assert [c["lr"] for c in checkpoints] == pytest.approx([0.1 * rate for rate in rates], rel=1e-12)


def test_the_train_stage_builds_its_model_with_the_drop_path_rate_set(prepared: Path) -> None:
    """train.drop_path 0.3 on timm's test_efficientnet (a tiny model; its own rate: 0), through
    the train stage: the checkpoint's model is built with drop_path_rate 0.3, and the rebuilt
    model's drop-path layers have the rates timm's own constructor spreads over them."""
    import timm
    from timm.layers import DropPath

    project = prepared
    recipe = {"model.arch": "timm/test_efficientnet", "model.weights": None, "train.epochs": 1, "train.drop_path": 0.3}
    set_checked_params(project, **recipe)
    stage("weights", project)
    stage("train", project)
    checkpoint = load_checkpoint(project / "checkpoints/epoch_001.pt")
    assert checkpoint["model_kwargs"]["drop_path_rate"] == 0.3

    def rates(model: nn.Module) -> list[float]:
        return [module.drop_prob for module in model.modules() if isinstance(module, DropPath)]

    with torch.device("meta"):
        ours = ModelSpec.from_checkpoint(checkpoint).untrained_model()
        theirs = timm.create_model("test_efficientnet", drop_path_rate=0.3)
    assert rates(ours) == pytest.approx(rates(theirs)) and max(rates(theirs)) > 0.2


def test_decaying_norms_and_biases_too_reaches_the_train_stage_s_optimizer(prepared: Path) -> None:
    """train.decay_norms_and_biases: true (docs/results.md's setting, as the references' plain
    --weight-decay does): the stage's optimizer decays every trained tensor, resnet18's
    one-dimensional ones (BatchNorm's and the biases, counted on torchvision's own) included.
    With train.trunk_lr_scale 0.1, the trunk learns at a tenth of the head's rate, and the epoch
    records (and plots) train.lr, the head's (docs/params.md), not the trunk's."""
    project = prepared
    recipe = {"model.arch": "resnet18", "model.weights": None, "train.epochs": 1, "train.weight_decay": 0.01,
              "train.lr": 0.02, "train.trunk_lr_scale": 0.1, "train.decay_norms_and_biases": True}  # fmt: skip
    set_checked_params(project, freeze="none", **recipe)
    for name in ("weights", "train"):
        stage(name, project)
    checkpoint = load_checkpoint(project / "checkpoints/epoch_001.pt")
    assert checkpoint["lr"] == pytest.approx(0.02, rel=1e-12)  # the constant schedule's only epoch, at train.lr
    groups = checkpoint["optimizer_state_dict"]["param_groups"]
    assert sorted(group["lr"] for group in groups) == pytest.approx([0.002, 0.02], rel=1e-12)
    reference = torchvision.models.resnet18(num_classes=5)
    assert sum(len(group["params"]) for group in groups) == len(list(reference.parameters()))
    undecayed = sum(len(group["params"]) for group in groups if group["weight_decay"] == 0)
    assert sum(1 for tensor in reference.parameters() if tensor.ndim <= 1) > 0 and undecayed == 0
    assert {group["weight_decay"] for group in groups} == {0.01}


# Runs a stage as `python -m` does, recording what its first call of the training loop is
# given (engine.train_and_score) and what the augmentation is built with, in seen.json.
RECORD_THE_LOOP = """\
import hashlib, json, runpy, sys
import pipeline.augment as augment
import pipeline.engine as engine
seen = {}
build, train_and_score, epoch_order = augment.batch_augmentation, engine.train_and_score, engine.epoch_order
def recorded_order(*args, **kwargs):
    order = epoch_order(*args, **kwargs)
    seen.setdefault("orders", []).append(hashlib.sha1(order.order.cpu().numpy().tobytes()).hexdigest())  # each epoch's
    if "boxes" not in seen and order.draws is not None and order.draws.boxes is not None:
        seen["boxes"] = order.draws.boxes.tolist()  # the first epoch's crops: top, left, height, width
    with open("seen.json", "w") as file:
        json.dump(seen, file)
    return order
def recorded_build(params, num_classes, mean, std, device):
    seen["augment"] = {"mean": list(mean), "std": list(std), "classes": num_classes}
    return build(params, num_classes, mean, std, device)
def recorded_loop(model, train_data, val_data, optimizer, loop, epoch, classes):
    if "loop" not in seen:
        weights = loop.class_weights
        seen["loop"] = {
            "batch_size": loop.batch_size, "seed": loop.seed, "hflip": loop.hflip, "min_scale": loop.min_scale,
            "max_aspect": loop.max_aspect, "accumulate": loop.accumulate, "clip_grad_norm": loop.clip_grad_norm,
            "class_weights": None if weights is None else weights.tolist(), "augmented": loop.augment is not None,
            "train_targets": sorted(train_data.targets.tolist()), "val_targets": sorted(val_data.targets.tolist()),
            "head": model.fc.weight.detach().flatten().tolist() if hasattr(model, "fc") else None,
            "optimizer": type(optimizer).__name__,
            "rates_and_decays": sorted({(g["lr"], g["weight_decay"]) for g in optimizer.param_groups}),
            "val_images": sorted(val_data.images[val_data.rows].flatten(1).sum(1).tolist()),  # rows: the split's
            "pixels": {name: [hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in data.images[data.rows]]
                       for name, data in (("train", train_data), ("val", val_data)) if hasattr(data, "images")},
            "normalised_with": [list(train_data.mean), list(train_data.std)],
        }
        with open("seen.json", "w") as file:
            json.dump(seen, file)
    return train_and_score(model, train_data, val_data, optimizer, loop, epoch, classes)
augment.batch_augmentation, engine.train_and_score, engine.epoch_order = recorded_build, recorded_loop, recorded_order
runpy.run_module(sys.argv[1], run_name="__main__")
"""


def test_every_training_param_reaches_the_train_stage_s_loop(prepared: Path) -> None:
    """`python -m pipeline.train` hands the loop what params.yaml says, none left at its
    default (the loop's own handling of each is tested against torchvision elsewhere): the
    seed, flips, crop scale and aspect, accumulation, clipping, the train split's images (not
    val's) with class weights by hand from its counts, and the policy with the weights' own
    mean and std (those best.pt records), the crops normalised with them too. Each value
    differs from the loop's default. train.sync_batchnorm, with no effect on one process,
    must not stop it."""
    project = prepared
    recipe = {
        "train.epochs": 1, "train.seed": 7, "train.augment.hflip": True, "train.augment.min_scale": 0.5,
        "train.augment.max_aspect": 2.0, "train.augment.policy": "trivialaugment", "train.accumulate_steps": 2,
        "train.clip_grad_norm": 1.5, "train.class_weights": "balanced", "train.sync_batchnorm": True,
    }  # fmt: skip
    set_checked_params(project, **recipe)
    run_script(RECORD_THE_LOOP, ["pipeline.train"], project)
    seen = json.loads((project / "seen.json").read_text())
    manifest, classes = read_manifest(project / "data/prepared")
    labels = {split: [classes.index(label) for label in rows["label"]] for split, rows in manifest.groupby("split")}
    loop = seen["loop"]
    head = loop.pop("head")
    loop.pop("val_images")
    loop.pop("pixels")
    normalised_with = loop.pop("normalised_with")
    # The loop's crops as train.augment sets them, their aspect drawn log-uniformly from [1/2, 2]
    # (rounded to the digits' few pixels; a fifth beyond 1.45 here): the loop's default, 1,
    # would draw squares alone.
    boxes = torch.tensor(seen["boxes"], dtype=torch.float64)
    aspect = (boxes[:, 3] / boxes[:, 2]).log().abs()
    assert len(boxes) == len(labels["train"]) and (aspect <= math.log(2) + 0.15).all()
    assert (aspect > math.log(1.45)).double().mean() > 0.1
    assert (loop.pop("optimizer"), loop.pop("rates_and_decays")) == ("SGD", [[0.01, 0.0], [0.01, 0.0001]])
    assert loop.pop("train_targets") == sorted(labels["train"]) and loop.pop("val_targets") == sorted(labels["val"])
    counts = [labels["train"].count(k) for k in range(len(classes))]
    balanced = [len(labels["train"]) / (len(classes) * count) for count in counts]
    assert loop.pop("class_weights") == pytest.approx(balanced)
    assert loop == {
        "batch_size": 128, "seed": 7, "hflip": True, "min_scale": 0.5, "max_aspect": 2.0, "accumulate": 2,
        "clip_grad_norm": 1.5, "augmented": True,
    }  # fmt: skip
    start = load_checkpoint(project / "models/start.pt")
    assert seen["augment"] == {"mean": start["mean"], "std": start["std"], "classes": len(classes)}
    assert start["mean"] != start["std"]
    assert normalised_with == [start["mean"], start["std"]]  # the training crops too
    # The new head as torchvision's model and nn.Linear draw it from train.seed: the model
    # built from the seed (its trunk then replaced by start.pt's), then the head.
    torch.manual_seed(7)
    reference = torchvision.models.get_model(start["arch"])
    assert torch.equal(nn.Linear(reference.fc.in_features, len(classes)).weight.flatten(), torch.tensor(head))


def test_pretraining_takes_its_own_params_and_random_weights_draw_from_pretrain_seed(prepared: Path) -> None:
    """docs/params.md: the weights stage pretrains with pretrain.* (its seed, split, batch and
    optimizer), each set apart here from its train.* and prepare.* namesake, which play no
    part; pretrain.seed also draws the weights of `model.weights: null`, as torchvision does.
    Byte copies of 12 source images (weights.py: copies stay in one split, as in prepare)
    each land in their original's split."""
    project = prepared
    source = project / "data/digits/source"
    for folder in sorted(source.iterdir())[:3]:
        for path in sorted(folder.iterdir())[:4]:
            (folder / f"copy_{path.name}").write_bytes(path.read_bytes())
    recipe = {
        "pretrain.seed": 3, "train.seed": 5, "prepare.seed": 1, "pretrain.val_fraction": 0.3,
        "pretrain.batch_size": 96, "pretrain.optimizer": "adamw", "pretrain.lr": 0.003, "pretrain.weight_decay": 0.002,
        "pretrain.epochs": 2,
    }  # fmt: skip
    set_checked_params(project, **recipe)
    log = run_script(RECORD_THE_LOOP, ["pipeline.weights"], project).stderr
    # Epochs counted from 1, as train's (each seeds its own draws); the numbers start.pt records.
    kept = load_checkpoint(project / "models/start.pt")
    numbers = f"loss {kept['loss']:.4f}, val loss {kept['val_loss']:.4f}, val accuracy {kept['val_accuracy']:.3f}"
    assert "pretrain epoch 1/2: loss " in log and f"pretrain epoch 2/2: {numbers}" in log
    assert kept["epoch"] == 2 and kept["loss"] != kept["val_loss"]
    assert kept["source"] == "pretrained on data/digits/source"  # pretrain.data_dir, not prepare's
    recorded = json.loads((project / "seen.json").read_text())
    seen = recorded["loop"]
    assert (seen["seed"], seen["batch_size"], seen["optimizer"]) == (3, 96, "AdamW")
    assert seen["rates_and_decays"] == [[0.003, 0.002]]  # every parameter decayed (docs/params.md)
    # pretrain.* has no clipping, accumulation, class weights, flips, crops or policy: the loop
    # runs with each off, as train does at its defaults (clipping by default would be silent).
    plain = {"clip_grad_norm": 0.0, "accumulate": 1, "class_weights": None, "hflip": False, "min_scale": 1.0,
             "max_aspect": 1.0, "augmented": False}  # fmt: skip
    assert {key: seen[key] for key in plain} == plain
    # Each of the 2 epochs shuffles anew (seeded by pretrain.seed and its epoch), none repeats another's order.
    assert len(recorded["orders"]) == 2 and len(set(recorded["orders"])) == 2
    # The source digits' classes hold 177 to 183 images: 0.3 of each in val, by hand (copies
    # of one image stay together, so a class may miss its share by a few).
    counts = [len(list(folder.iterdir())) for folder in sorted((project / "data/digits/source").iterdir())]
    val = seen["val_targets"]
    assert all(abs(val.count(k) - round(0.3 * n)) <= 3 for k, n in enumerate(counts)), val
    assert len(seen["train_targets"]) + len(val) == sum(counts)
    pixels = seen["pixels"]
    assert len(pixels["train"]) + len(pixels["val"]) - len({*pixels["train"], *pixels["val"]}) >= 12  # the copies
    assert not set(pixels["train"]) & set(pixels["val"])
    # Pretraining's model as torchvision's draws it from pretrain.seed, with a head for the source classes.
    arch = kept["arch"]
    torch.manual_seed(3)
    reference = torchvision.models.get_model(arch)
    head = nn.Linear(reference.fc.in_features, len(counts)).weight
    assert torch.equal(torch.tensor(seen["head"]), head.detach().flatten())
    # Another prepare.seed leaves pretraining's split as it was.
    set_checked_params(project, **{"prepare.seed": 2})
    run_script(RECORD_THE_LOOP, ["pipeline.weights"], project)
    assert json.loads((project / "seen.json").read_text())["loop"]["val_images"] == seen["val_images"]

    set_checked_params(project, **{"model.weights": None})
    stage("weights", project)
    torch.manual_seed(3)
    reference = torchvision.models.get_model(arch).state_dict()  # torchvision's own draw
    start = load_checkpoint(project / "models/start.pt")
    imagenet = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()  # random weights: ImageNet's statistics
    assert (start["mean"], start["std"]) == (list(imagenet.mean), list(imagenet.std))
    start = start["model_state_dict"]
    assert start.keys() == {key for key in reference if not key.startswith("fc.")}, arch  # no head
    assert all(torch.equal(start[key], reference[key]) for key in start)
