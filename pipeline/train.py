"""Stage train: fine-tune a pretrained backbone with a new head, one checkpoint per epoch.

Reads:  params freeze, device, model.*, train.*; data/prepared/{manifest.csv,classes.json};
        the images; models/start.pt (the starting weights and their preprocessing)
Writes: checkpoints/epoch_NNN.pt  (epoch, model and optimizer state, losses, val metrics,
                                   what is needed to rebuild the model, and with
                                   train.ema_decay the weights' moving average)
        dvclive/train/             (per-epoch curves for `dvc plots`)

A killed run resumes where it stopped (see pipeline/runs.py).
"""

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from dvclive import Live
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel

from pipeline import distributed
from pipeline.augment import Augment, augments, batch_augmentation
from pipeline.batches import Batches, crop_batches, images_on, split_batches
from pipeline.checked import confirm_unchanged, load_checked_params
from pipeline.cli import UserError, progress, run_stage
from pipeline.config import Params, TrainParams
from pipeline.data.cache import decoded_images, training_copies
from pipeline.data.split import read_manifest
from pipeline.devices import place_model, resolve_device, set_determinism
from pipeline.distributed import Ranks
from pipeline.engine import LoopOptions, compile_for_training, train_and_score
from pipeline.features import head_feature_batches, head_network
from pipeline.freezing import count_parameters, freeze, parse_freeze, trainable_names
from pipeline.metrics import METRICS, as_columns, columns
from pipeline.models import ModelSpec, build_model
from pipeline.optim import class_weights, lr_factor, make_optimizer, training_loss, weights_average
from pipeline.paths import CLASSES, LIVE_DIR, MANIFEST, PREPARED_DIR, START_FILE
from pipeline.runs import RunFolder, early_stop, fingerprint

log = logging.getLogger("pipeline.train")


def main() -> None:
    distributed.refuse_partial_launch()  # a launch error first: it needs no params
    params = load_checked_params()
    config = params.train
    if config.processes > 1 and not distributed.launched():
        threads = distributed.cpu_threads(config.threads, config.processes)
        distributed.launch(config.processes, "pipeline.train", threads)  # each process runs this main, as a rank
        confirm_unchanged()
        return
    run = set_up(params)
    live = Live(str(LIVE_DIR), dvcyaml=False, save_dvc_exp=False) if run.ranks.main else None
    for record in run.history:
        log_epoch(live, record)

    for epoch in progress(range(len(run.history) + 1, config.epochs + 1), "training"):
        stop = early_stop(run.history, params.select.metric, params.select.mode, config.early_stopping)
        if stop:
            log.info("%s", stop)
            break
        phase = run.phase(epoch)
        try:
            record = train_epoch(run, phase, epoch)
        except RuntimeError as error:
            raise distributed.lost_contact(error, run.ranks) or error from None
        if run.ranks.main:
            save_epoch(run, phase, record)
        run.history.append(record)
        log_epoch(live, record)
        log.info(
            "epoch %d/%d: loss %.4f, val loss %.4f, val accuracy %.3f, lr %.2g, %.1fs",
            epoch, config.epochs, record["loss"], record["val_loss"], record["val_accuracy"], record["lr"],
            record["seconds"],
        )  # fmt: skip

    if run.ranks.main:
        live.end()
        run.folder.finish()
    # No process leaves before rank 0 has written everything: when any machine's torchrun
    # returns, the outputs are complete (the recipes run `dvc commit` after it).
    distributed.barrier(run.ranks, "rank 0 to write the last checkpoint and curves")
    distributed.stop(run.ranks)
    confirm_unchanged()


@dataclass
class Phase:
    """The epochs trained under one freeze spec: all of them, or, with gradual unfreezing
    (`unfreeze_after`), those before and those after the switch to `unfreeze_to`."""

    freeze: str  # the spec, as params.yaml writes it
    frozen_modules: list[str]
    trainable_params: int
    total_params: int
    net: nn.Module  # what each step runs: the model, or its head alone on the backbone's outputs
    data: dict[str, Batches]
    loop: LoopOptions  # how the epochs run: `net`'s frozen modules, its step model (wrapped, compiled) and the rest


@dataclass
class Run:
    """What a training run needs from one epoch to the next."""

    params: Params
    model: nn.Module
    spec: ModelSpec
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    splits: dict[str, Batches]
    criterion: Any  # the training loss: cross-entropy with the run's weights and smoothing
    class_weights: torch.Tensor | None  # those weights (train.class_weights), or None
    folder: RunFolder
    history: list[dict[str, Any]]  # each finished epoch's record (runs.RECORD_KEYS)
    ranks: Ranks  # this process among those that train together (pipeline.distributed)
    device: torch.device
    ema: AveragedModel | None  # the weights' moving average (train.ema_decay), or None when off
    augment: Augment | None  # policies, erasing, mixing (pipeline.augment), or None when off
    phases: dict[str, Phase] = field(default_factory=dict)  # by freeze spec, made when first needed
    compiled: dict[nn.Module, nn.Module] = field(default_factory=dict)  # compiling twice would recompile

    def phase(self, epoch: int) -> Phase:
        config = self.params.train
        unfrozen = bool(config.unfreeze_after) and epoch > config.unfreeze_after
        key, spec = ("train.unfreeze_to", config.unfreeze_to) if unfrozen else ("freeze", self.params.freeze)
        if spec not in self.phases:
            self.phases[spec] = start_phase(self, spec, key)
        return self.phases[spec]


def lr_scheduler(optimizer: torch.optim.Optimizer, config: TrainParams) -> LambdaLR:
    """The learning rate's schedule over the epochs (`optim.lr_factor`)."""
    schedule = partial(
        lr_factor, epochs=config.epochs, schedule=config.schedule, warmup_epochs=config.warmup_epochs,
        step_every=config.step_every, gamma=config.step_gamma,
    )  # fmt: skip
    # LambdaLR over a closed form, not LinearLR/CosineAnnealingLR in a SequentialLR: those update
    # the rate recursively, so it drifts in the last bits from the formula the checkpoints record.
    return LambdaLR(optimizer, lambda index: schedule(index + 1))  # LambdaLR counts epochs from 0


def set_up(params: Params) -> Run:
    """Model, optimizer, schedule, data and loss of the run, restored to where a killed
    attempt of it stopped."""
    config = params.train
    set_determinism(config.deterministic)
    ranks, device = join(params)
    manifest, classes = read_manifest(PREPARED_DIR)
    if not START_FILE.is_file():
        raise UserError(f"{START_FILE} not found: run the weights stage first (dvc repro weights)")
    torch.manual_seed(config.seed)
    built = build_model(params.model.arch, str(START_FILE), classes, params.model.image_size, config.drop_path)
    model, spec = built.model, built.spec
    if config.sync_batchnorm and ranks.active:
        model = distributed.sync_batchnorm(model, device)
    # Parameters frozen now but unfrozen later get optimizer groups from the start.
    unfreeze_to = parse_freeze(config.unfreeze_to, "train.unfreeze_to")
    later = trainable_names(model, unfreeze_to, spec.head) if config.unfreeze_after else frozenset()
    freeze(model, parse_freeze(params.freeze), spec.head)
    place_model(model, device)
    ema = weights_average(model, config.ema_decay, config.ema_warmup)
    optimizer = make_optimizer(
        config, model, spec.head, config.trunk_lr_scale, later,
        decay_norms_and_biases=config.decay_norms_and_biases, layer_decay=config.layer_decay,
    )  # fmt: skip
    scheduler = lr_scheduler(optimizer, config)

    decode = partial(decoded_images, manifest, spec.sizing)
    images = images_on(distributed.main_first(ranks, decode, "decode the images into the cache"), device)
    splits = {split: split_batches(images, manifest, split, spec, device) for split in ("train", "val")}
    if config.augment.min_scale < 1:  # random resized crops, cut from the whole pictures (data.copies)
        copies = distributed.main_first(
            ranks, partial(training_copies, manifest, spec.sizing), "make the training copies"
        )
        splits["train"] = crop_batches(copies, manifest, "train", spec, device)
    weights = class_weights(config.class_weights, splits["train"].targets, len(classes), device)
    criterion = partial(training_loss, weight=weights, label_smoothing=config.label_smoothing)

    folder = run_folder(params, device)
    history = resume(folder, model, optimizer, scheduler, ema, ranks)
    torch.set_num_threads(run_threads(config.threads, history))
    augment = batch_augmentation(config.augment, len(classes), spec.mean, spec.std, device)
    return Run(
        params,
        model,
        spec,
        optimizer,
        scheduler,
        splits,
        criterion,
        weights,
        folder,
        history,
        ranks,
        device,
        ema,
        augment,
    )


def join(params: Params) -> tuple[Ranks, torch.device]:
    """This process among those that train together, and its device. The params must count
    them, so that the run's identity (its fingerprint, DVC's record) says how it trained."""
    ranks, device = distributed.start(resolve_device(params.device), params.wait_minutes)
    if ranks.world != params.train.processes:
        raise UserError(
            f"train.processes = {params.train.processes}, but torchrun started {ranks.world} training processes "
            f"(WORLD_SIZE): set train.processes to {ranks.world}, the processes of every machine together, "
            "so that the run's params say how it was trained"
        )
    return ranks, device


def resume(
    folder: RunFolder,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    ema: AveragedModel | None,
    ranks: Ranks,
) -> list[dict[str, Any]]:
    """Restore what a killed attempt of the run left (RunFolder.restore); the finished epochs'
    records. Rank 0 owns the folder (locks, cleans and publishes it); the others then read
    the same checkpoint."""
    restore = partial(folder.restore, model, optimizer, scheduler, ema, owner=ranks.main)
    history = distributed.main_first(ranks, restore, "restore the run's last checkpoint")
    if ranks.main:
        folder.publish_all()
    return history


def start_phase(run: Run, spec_text: str, key: str) -> Phase:
    """Freeze the model for `spec_text` and choose what its epochs run. With a frozen backbone
    and nothing random before the head, that is the head alone, on the backbone's outputs
    computed once."""
    config, head = run.params.train, run.spec.head
    spec = parse_freeze(spec_text, key)
    frozen = freeze(run.model, spec, head)
    trainable, total = count_parameters(run.model)
    log.info(
        "%s, %d classes, freeze %s: %s of %s parameters train",
        run.spec.arch, len(run.spec.classes), spec_text, f"{trainable:,}", f"{total:,}",
    )  # fmt: skip
    net, net_frozen, data = run.model, frozen, run.splits
    if spec.kind == "all_but_head" and config.cache_features and not augments(config.augment):
        started = time.perf_counter()
        features = head_feature_batches(run.model, head, run.splits, config.batch_size, run.ranks)
        if features is not None:
            log.info("frozen backbone: features computed once in %.2fs", time.perf_counter() - started)
            net, net_frozen, data = head_network(run.model, head), [], features
    step_model = distributed.wrap(net, run.device) if run.ranks.active else None
    if config.compile:
        stepped = net if step_model is None else step_model
        if stepped not in run.compiled:
            run.compiled[stepped] = compile_for_training(stepped)
        step_model = run.compiled[stepped]
    loop = LoopOptions(
        batch_size=config.batch_size,
        seed=config.seed,
        frozen=tuple(net_frozen),
        hflip=config.augment.hflip,
        min_scale=config.augment.min_scale,
        max_aspect=config.augment.max_aspect,
        criterion=run.criterion,
        step_model=step_model,
        ranks=run.ranks,
        accumulate=config.accumulate_steps,
        clip_grad_norm=config.clip_grad_norm,
        after_step=None if run.ema is None else partial(run.ema.update_parameters, run.model),
        augment=run.augment,
        class_weights=run.class_weights,
    )
    return Phase(spec_text, frozen, trainable, total, net, data, loop)


def train_epoch(run: Run, phase: Phase, epoch: int) -> dict[str, Any]:
    """Train one epoch, score it on val and step the schedule; the epoch's record."""
    started = time.perf_counter()
    loss, val = train_and_score(
        phase.net, phase.data["train"], phase.data["val"], run.optimizer, phase.loop, epoch, len(run.spec.classes)
    )
    record = {
        "epoch": epoch,
        "loss": loss,
        **as_columns("val", val),
        "lr": run.optimizer.param_groups[0]["lr"],
        "seconds": time.perf_counter() - started,
        "threads": torch.get_num_threads(),
    }
    run.scheduler.step()
    return record


def save_epoch(run: Run, phase: Phase, record: dict[str, Any]) -> None:
    """Write the epoch's checkpoint: what rebuilds the model, the record, and what resumes the run."""
    checkpoint = {
        **run.spec.to_dict(),
        **record,
        "model_state_dict": run.model.state_dict(),
        "optimizer_state_dict": run.optimizer.state_dict(),
        "scheduler_state_dict": run.scheduler.state_dict(),
        "freeze": phase.freeze,
        "frozen_modules": phase.frozen_modules,
        "trainable_params": phase.trainable_params,
        "total_params": phase.total_params,
        "fingerprint": run.folder.fingerprint,
        "lineage": run.folder.lineage,
        "world_size": run.ranks.world,
        "global_batch": run.params.train.batch_size,
        "accumulate_steps": run.params.train.accumulate_steps,
    }
    if run.ema is not None:  # evaluate scores these weights too; resuming continues the average
        checkpoint["ema_state_dict"] = run.ema.module.state_dict()
        checkpoint["ema_updates"] = int(run.ema.n_averaged)
    run.folder.commit_epoch(checkpoint)


def run_folder(params: Params, device: torch.device) -> RunFolder:
    """The run's folder, named by its fingerprint: everything that shapes the training run
    (see pipeline/runs.py), how its global batches are split over processes and accumulated
    batches and its CPU threads included, since they change the float rounding (and, where
    BatchNorm layers train, what each process normalises over)."""
    shaping = {
        "freeze": params.freeze,
        "device": device.type,
        "model": dataclasses.asdict(params.model),
        "train": dataclasses.asdict(params.train),
        "select": dataclasses.asdict(params.select),  # early stopping watches select.metric
    }
    inputs = [MANIFEST, CLASSES, START_FILE]
    # The lineage leaves them out: a killed run goes on under another split (RunFolder.adopt).
    split = {key: shaping["train"].pop(key) for key in ("processes", "accumulate_steps", "threads")}
    lineage = fingerprint(shaping, inputs)
    shaping["train"] |= split
    return RunFolder(fingerprint(shaping, inputs), lineage, {f"train.{key}": value for key, value in split.items()})


def run_threads(requested: int, history: list[dict[str, Any]]) -> int:
    """This process's CPU threads (distributed.cpu_threads); a resumed run keeps those its last
    epoch had unless train.threads names a number, since they change the float rounding."""
    threads = distributed.cpu_threads(requested, distributed.local_processes())
    kept = history[-1]["threads"] if history else threads
    if requested == 0 and kept != threads:
        log.info("keeping %d CPU threads per process, as the run had so far (train.threads sets others)", kept)
        return kept
    return threads


def log_epoch(live: Live | None, record: dict[str, Any]) -> None:
    if live is None:  # not rank 0
        return
    live.step = record["epoch"]
    live.log_metric("train/loss", record["loss"])
    for name, column in zip(METRICS, columns("val"), strict=True):
        live.log_metric(f"val/{name}", record[column])
    live.log_metric("lr", record["lr"])
    live.log_metric("epoch_seconds", record["seconds"])
    live.next_step()


if __name__ == "__main__":
    run_stage(main)
