"""The typed schema of params.yaml, and the loader every stage starts with.

params.yaml holds every default; the dataclasses below hold only types (MISSING), so
each default is written once. omegaconf checks keys and types; `validate` checks ranges.
"""

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from enum import Enum
from operator import attrgetter
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from pipeline.cli import UserError, error_line
from pipeline.metrics import SELECTABLE
from pipeline.params_text import (
    as_written,
    read_yaml,
    refuse_numbers_read_apart,
    refuse_text_dvc_reads_otherwise,
    take_text_as_written,
)
from pipeline.paths import PARAMS_FILE

# model.weights: the weights stage trains the backbone on pretrain.data_dir first (the demo).
PRETRAIN_WEIGHTS = "pretrain"
# The params dvc.yaml interpolates (`${prepare.data_dir}`): DVC reads these itself, as YAML 1.2.
DVC_INTERPOLATED = ("prepare.data_dir", "pretrain.data_dir")
# The largest whole-number param: C's int, which torch and tqdm take counts in; beyond it
# threads, batch sizes and epoch counts overflow there, far into a run.
LARGEST_WHOLE = 2**31 - 1
SEEDS = ("prepare.seed", "pretrain.seed", "train.seed")


class Optimizer(Enum):
    sgd = "sgd"
    adamw = "adamw"


class Mode(Enum):
    min = "min"
    max = "max"


class Schedule(Enum):
    constant = "constant"
    step = "step"
    cosine = "cosine"


class ClassWeights(Enum):
    none = "none"
    balanced = "balanced"


class AugmentPolicy(Enum):
    none = "none"
    trivialaugment = "trivialaugment"  # TrivialAugmentWide
    randaugment = "randaugment"
    autoaugment = "autoaugment"  # the ImageNet policy


class TestTimeAugmentation(Enum):
    none = "none"
    hflip = "hflip"  # the mean of the logits of each image and its mirror image


@dataclass
class PrepareParams:
    data_dir: str = MISSING
    val_fraction: float = MISSING
    test_fraction: float = MISSING
    seed: int = MISSING


@dataclass
class ModelParams:
    arch: str = MISSING  # a torchvision classification model (resnet18), or timm/NAME for a timm one
    # pretrain (PRETRAIN_WEIGHTS), a torchvision weights name (DEFAULT, IMAGENET1K_V1, ...) or,
    # for timm/NAME, a timm pretrained tag (DEFAULT, a1_in1k, ...), a .pt/.pth/.safetensors
    # path under models/weights/, or null.
    weights: str | None = MISSING
    image_size: int = MISSING


@dataclass
class OptimParams:
    epochs: int = MISSING
    batch_size: int = MISSING
    optimizer: Optimizer = MISSING
    lr: float = MISSING
    momentum: float = MISSING
    weight_decay: float = MISSING
    seed: int = MISSING


@dataclass
class PretrainParams(OptimParams):
    data_dir: str = MISSING
    val_fraction: float = MISSING


def off_at(value: object) -> Any:
    """A train.augment option that is off at `value` (how `augment.augments` knows whether
    training augments at all)."""
    return field(default=MISSING, metadata={"off": value})


def shapes(*options: str) -> Any:
    """A train.augment param that turns nothing on by itself: it shapes what `options` do."""
    return field(default=MISSING, metadata={"shapes": options})


@dataclass
class AugmentParams:
    # Each param says which value turns it off, or which options it shapes, so that
    # `augment.augments` checks every option: one that says neither stops training there.
    hflip: bool = off_at(False)
    # RandomResizedCrop: each crop keeps [min_scale, 1] of the image's area, with an aspect
    # ratio in [1 / max_aspect, max_aspect].
    min_scale: float = off_at(1.0)
    max_aspect: float = shapes("min_scale")
    policy: AugmentPolicy = off_at(AugmentPolicy.none)  # one op (or several) per image, drawn per image
    randaugment_ops: int = shapes("policy")
    randaugment_magnitude: int = shapes("policy")
    erasing: float = off_at(0.0)  # RandomErasing's probability per image
    mixup_alpha: float = off_at(0.0)  # MixUp's Beta(alpha, alpha)
    cutmix_alpha: float = off_at(0.0)  # CutMix's
    mix_switch: float = shapes("mixup_alpha", "cutmix_alpha")  # with both on: the probability of CutMix for a batch


@dataclass
class EarlyStoppingParams:
    patience: int = MISSING  # epochs without improvement of select.metric; 0 turns it off
    min_delta: float = MISSING


@dataclass
class TrainParams(OptimParams):
    schedule: Schedule = MISSING
    warmup_epochs: int = MISSING
    step_every: int = MISSING
    step_gamma: float = MISSING
    trunk_lr_scale: float = MISSING  # the pretrained trunk learns at lr * this; the new head at lr
    layer_decay: float = MISSING  # layer-wise lr decay: each trunk stage below the last at this times the next's lr
    decay_norms_and_biases: bool = MISSING  # false: no weight decay on norm layers and biases
    clip_grad_norm: float = MISSING  # clip the gradients' total norm to this before each step; 0 = off
    ema_decay: float = MISSING  # keep an exponential moving average of the weights too; 0 = off
    ema_warmup: bool = MISSING  # the average's decay warms up over the first updates (timm's ModelEmaV3)
    drop_path: float | None = MISSING  # stochastic depth rate of models that have it; None: the model's own
    unfreeze_after: int = MISSING  # gradual unfreezing: after this many epochs, `unfreeze_to` applies
    unfreeze_to: str = MISSING
    label_smoothing: float = MISSING
    class_weights: ClassWeights = MISSING
    early_stopping: EarlyStoppingParams = field(default_factory=EarlyStoppingParams)
    augment: AugmentParams = field(default_factory=AugmentParams)
    # With freeze: all_but_head and no augmentation, run the frozen backbone once per split
    # and train the head on its outputs.
    cache_features: bool = MISSING
    compile: bool = MISSING  # torch.compile the model for training
    deterministic: bool = MISSING  # deterministic CUDA kernels: bit-identical resume on a GPU
    processes: int = MISSING  # training processes, on every machine together (pipeline.distributed)
    accumulate_steps: int = MISSING  # batches whose gradients add up to one optimizer step
    sync_batchnorm: bool = MISSING  # with several processes on GPUs: batch statistics over all of them
    threads: int = MISSING  # CPU threads per training process; 0: the cores shared among the processes


@dataclass
class EvaluateParams:
    batch_size: int = MISSING  # on the CPU
    cuda_batch_size: int = MISSING  # on a GPU, where inference in bf16 takes far larger batches
    tta: TestTimeAugmentation = MISSING
    processes: int = MISSING  # evaluation processes on this machine, each scoring its share of the checkpoints


@dataclass
class SelectParams:
    metric: str = MISSING
    mode: Mode = MISSING


@dataclass
class Params:
    freeze: str = MISSING
    device: str = MISSING
    wait_minutes: float = MISSING  # how long a process of several waits for the others before it gives up
    prepare: PrepareParams = field(default_factory=PrepareParams)
    pretrain: PretrainParams = field(default_factory=PretrainParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    select: SelectParams = field(default_factory=SelectParams)


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read params.yaml into the typed schema; raise UserError naming the bad key, and its
    value as written (pipeline.params_text: text params are taken as written)."""
    if not path.is_file():
        raise UserError(f"{path} not found: run the stage from the project root")
    loaded, written = read_yaml(path)
    try:
        # omegaconf reports a group given as a single value (`train: 0.1`) without its key.
        _check_groups(path, Params, loaded)
        take_text_as_written(Params, loaded, written)
        refuse_numbers_read_apart(path, Params, written)
        refuse_text_dvc_reads_otherwise(path, DVC_INTERPOLATED, written)
        merged = OmegaConf.merge(OmegaConf.structured(Params), loaded)
        params = OmegaConf.to_object(merged)
    except ConfigKeyError as error:
        raise UserError(_unknown_key_message(path, error)) from None
    except MissingMandatoryValue as error:
        raise UserError(f"{path}: {error.full_key} is missing; every param needs a value") from None
    except OmegaConfBaseException as error:
        node = written.get(str(error.full_key))
        typed = f" = {node.value}" if node is not None else ""
        raise UserError(f"{path}: {error.full_key}{typed}: {error_line(error)}") from None
    try:
        validate(params)
    except ParamError as error:
        raise UserError(
            f"{path}: {error.key} = {as_written(written, error.key, error.value)} is not allowed; "
            f"it must be {error.allowed}"
        ) from None
    return params


def _check_groups(path: Path, schema: type, node: object, key: str = "") -> None:
    """Raise UserError naming a group of params (train, train.augment...) that is not a mapping."""
    if not isinstance(node, DictConfig):
        keys = ", ".join(f.name for f in dataclasses.fields(schema))
        what = f"{path}: {key} = {node!r} is not allowed" if key else f"{path} does not hold a mapping"
        raise UserError(f"{what}; it must be a group of keys: {keys}")
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(f.type) and f.name in node:
            _check_groups(path, f.type, node[f.name], f"{key}.{f.name}" if key else f.name)


def _unknown_key_message(path: Path, error: ConfigKeyError) -> str:
    allowed = [f.name for f in dataclasses.fields(error.object_type)] if error.object_type else []
    message = f"{path}: unknown key '{error.full_key}'"
    if allowed:
        message += f"; allowed here: {', '.join(allowed)}"
        close = difflib.get_close_matches(str(error.key), allowed, n=1)
        if close:
            message += f" (did you mean '{close[0]}'?)"
    return message


def validate(params: Params) -> None:
    """Range checks that types alone cannot express, group by group; the first failure raises."""
    _validate_finite(params)
    for key in SEEDS:  # numpy and torch refuse a negative seed, as the stage starts
        seed = attrgetter(key)(params)
        _require(seed >= 0, key, seed, "an integer >= 0")
    for group in ("pretrain", "train"):
        _validate_optim(group, getattr(params, group))
    _validate_fractions(params.prepare, params.pretrain)
    _require(params.model.image_size >= 1, "model.image_size", params.model.image_size, "an integer >= 1")
    _validate_train(params.train)
    _validate_augment(params.train.augment)
    for key in ("batch_size", "cuda_batch_size", "processes"):
        value = getattr(params.evaluate, key)
        _require(value >= 1, f"evaluate.{key}", value, "an integer >= 1")
    _require(params.wait_minutes > 0, "wait_minutes", params.wait_minutes, "a number of minutes > 0")
    metric, mode = params.select.metric, params.select.mode
    _require(metric in SELECTABLE, "select.metric", metric, f"one of {', '.join(SELECTABLE)}")
    # Any other mode would keep the worst checkpoint, and early stopping would wait for it.
    best = Mode.min if metric.endswith("_loss") else Mode.max
    _require(mode is best, "select.mode", mode.value, f"{best.value} with select.metric {metric}")


def _validate_finite(obj: object, prefix: str = "") -> None:
    """Every number param finite for what runs it. A float: YAML reads .inf and .nan, and an lr
    of inf passes `> 0`. A whole number: at most LARGEST_WHOLE; the lower bounds are each param's own."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _validate_finite(value, f"{prefix}{f.name}.")
        elif isinstance(value, float):
            _require(math.isfinite(value), f"{prefix}{f.name}", value, "a finite number")
        elif isinstance(value, int) and not isinstance(value, bool):
            _require(value <= LARGEST_WHOLE, f"{prefix}{f.name}", value, f"an integer <= {LARGEST_WHOLE} (2**31 - 1)")


def _validate_optim(group: str, optim: OptimParams) -> None:
    _require(optim.epochs >= 1, f"{group}.epochs", optim.epochs, "an integer >= 1")
    _require(optim.batch_size >= 1, f"{group}.batch_size", optim.batch_size, "an integer >= 1")
    _require(optim.lr > 0, f"{group}.lr", optim.lr, "a number > 0")
    _require(optim.momentum >= 0, f"{group}.momentum", optim.momentum, "a number >= 0")
    _require(optim.weight_decay >= 0, f"{group}.weight_decay", optim.weight_decay, "a number >= 0")


def _validate_fractions(prepare: PrepareParams, pretrain: PretrainParams) -> None:
    fraction = "a fraction between 0 and 1 (exclusive)"
    for key in ("val_fraction", "test_fraction"):
        value = getattr(prepare, key)
        _require(0 < value < 1, f"prepare.{key}", value, fraction)
    held_out = prepare.val_fraction + prepare.test_fraction
    _require(
        held_out < 1,
        "prepare.val_fraction + prepare.test_fraction",
        held_out,
        "less than 1, so that some images are left for training",
    )
    _require(0 < pretrain.val_fraction < 1, "pretrain.val_fraction", pretrain.val_fraction, fraction)


def _validate_train(train: TrainParams) -> None:
    """train's own params; its optimizer's and its augmentation's are checked apart."""
    _require(train.warmup_epochs >= 0, "train.warmup_epochs", train.warmup_epochs, "an integer >= 0")
    _require(train.step_every >= 1, "train.step_every", train.step_every, "an integer >= 1")
    _require(train.step_gamma > 0, "train.step_gamma", train.step_gamma, "a number > 0")
    _require(train.trunk_lr_scale >= 0, "train.trunk_lr_scale", train.trunk_lr_scale, "a number >= 0")
    _require(0 < train.layer_decay <= 1, "train.layer_decay", train.layer_decay, "a number in (0, 1]; 1 = off")
    _require(train.clip_grad_norm >= 0, "train.clip_grad_norm", train.clip_grad_norm, "a number >= 0; 0 = off")
    _require(0 <= train.ema_decay < 1, "train.ema_decay", train.ema_decay, "a number in [0, 1); 0 = off")
    drop_path = train.drop_path
    _require(drop_path is None or 0 <= drop_path < 1, "train.drop_path", drop_path, "a number in [0, 1), or null")
    _require(train.unfreeze_after >= 0, "train.unfreeze_after", train.unfreeze_after, "an integer >= 0; 0 = never")
    _require(train.processes >= 1, "train.processes", train.processes, "an integer >= 1")
    _require(train.accumulate_steps >= 1, "train.accumulate_steps", train.accumulate_steps, "an integer >= 1")
    _require(train.threads >= 0, "train.threads", train.threads, "an integer >= 0; 0 = the cores shared out")
    parts = train.processes * train.accumulate_steps
    evenly = f"a multiple of train.processes x train.accumulate_steps ({parts}): it is the global batch, split evenly"
    _require(train.batch_size % parts == 0, "train.batch_size", train.batch_size, evenly)
    smoothing = train.label_smoothing
    _require(0 <= smoothing < 1, "train.label_smoothing", smoothing, "a number in [0, 1)")
    patience = train.early_stopping.patience
    _require(patience >= 0, "train.early_stopping.patience", patience, "an integer >= 0; 0 = off")
    delta = train.early_stopping.min_delta
    _require(delta >= 0, "train.early_stopping.min_delta", delta, "a number >= 0")


def _validate_augment(augment: AugmentParams) -> None:
    scale, aspect = augment.min_scale, augment.max_aspect
    _require(0 < scale <= 1, "train.augment.min_scale", scale, "a number in (0, 1]; 1 turns random crops off")
    _require(aspect >= 1, "train.augment.max_aspect", aspect, "a number >= 1; 1 keeps crops square")
    ops, magnitude = augment.randaugment_ops, augment.randaugment_magnitude
    _require(ops >= 1, "train.augment.randaugment_ops", ops, "an integer >= 1")
    _require(0 <= magnitude <= 30, "train.augment.randaugment_magnitude", magnitude, "an integer in [0, 30]")
    for key in ("erasing", "mix_switch"):
        value = getattr(augment, key)
        _require(0 <= value <= 1, f"train.augment.{key}", value, "a probability in [0, 1]")
    for key in ("mixup_alpha", "cutmix_alpha"):
        value = getattr(augment, key)
        _require(value >= 0, f"train.augment.{key}", value, "a number >= 0; 0 = off")


class ParamError(UserError):
    """A value out of its range: `key = value` is not allowed, it must be `allowed`."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        super().__init__(f"params.yaml: {key} = {value!r} is not allowed; it must be {allowed}")
        self.key, self.value, self.allowed = key, value, allowed


def _require(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise ParamError(key, value, allowed)
