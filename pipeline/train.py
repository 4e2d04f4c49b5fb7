"""Stage train: fine-tune a pretrained backbone with a new head, one checkpoint per epoch.

Reads:  params freeze, device, model.*, train.*; data/prepared/{manifest.csv,classes.json};
        the images; the model.weights file, if it is one
Writes: checkpoints/epoch_NNN.pt  (epoch, model and optimizer state, losses, val metrics,
                                   and what is needed to rebuild the model)
        dvclive/train/             (per-epoch curves for `dvc plots`)

Resuming after a kill: DVC deletes a stage's outputs before it re-runs it, so each
checkpoint is first written under .cache/runs/<fingerprint>/ and hard-linked into
checkpoints/. The fingerprint hashes everything that shapes the run (params, data,
weights, code), so a run resumes only its own epochs. A finished run deletes its folder;
DVC's cache then holds the checkpoints, and its run-cache restores a finished run.
"""

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from dvclive import Live
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from pipeline.checkpoints import CheckpointError, checkpoint_name, load_checkpoint, save_checkpoint
from pipeline.cli import progress, run_stage
from pipeline.config import ClassWeights, EarlyStoppingParams, Mode, Params, load_params
from pipeline.data import decoded_images, read_manifest
from pipeline.engine import (
    Batches,
    compile_for_training,
    epoch_generator,
    head_feature_batches,
    images_on,
    place_model,
    predict,
    resolve_device,
    score,
    set_determinism,
    split_batches,
    train_one_epoch,
)
from pipeline.models import FreezeSpec, build_model, count_parameters, freeze, is_weights_file, parse_freeze
from pipeline.optim import lr_factor, make_optimizer

log = logging.getLogger("pipeline.train")

PREPARED_DIR = Path("data/prepared")
CHECKPOINT_DIR = Path("checkpoints")
RUNS_DIR = Path(".cache/runs")
LIVE_DIR = Path("dvclive/train")
# What each checkpoint records about its epoch; also what is logged for the curves.
RECORD_KEYS = ("epoch", "loss", "val_loss", "val_accuracy", "val_f1", "lr", "seconds")


def main() -> None:
    params = load_params()
    config = params.train
    spec = parse_freeze(params.freeze)
    # Gradual unfreezing: after `unfreeze_after` epochs, `unfreeze_to` replaces `freeze`.
    later = parse_freeze(config.unfreeze_to) if config.unfreeze_after else None
    set_determinism(config.deterministic)
    device = resolve_device(params.device)
    manifest, classes = read_manifest(PREPARED_DIR)

    torch.manual_seed(config.seed)
    built = build_model(params.model.arch, params.model.weights, classes, params.model.image_size)
    model, head = built.model, built.head
    trains_later = frozenset()
    if later is not None:
        freeze(model, later, head)  # also checks the spec's module names before any work
        trains_later = frozenset(name for name, p in model.named_parameters() if p.requires_grad)
    freeze(model, spec, head)
    place_model(model, device)
    optimizer = make_optimizer(config, model, head, config.trunk_lr_scale, trains_later)
    schedule = partial(
        lr_factor, epochs=config.epochs, schedule=config.schedule, warmup_epochs=config.warmup_epochs,
        step_every=config.step_every, gamma=config.step_gamma,
    )  # fmt: skip
    scheduler = LambdaLR(optimizer, lambda index: schedule(index + 1))  # LambdaLR counts epochs from 0

    images = images_on(decoded_images(manifest, params.model.image_size), device)
    splits = {
        split: split_batches(images, manifest, classes, split, built.mean, built.std, device)
        for split in ("train", "val")
    }
    criterion = partial(
        F.cross_entropy, weight=class_weights(config.class_weights, splits["train"].targets, len(classes), device),
        label_smoothing=config.label_smoothing,
    )  # fmt: skip
    features: dict[str, Batches | None] = {}  # the frozen backbone's outputs, computed once if used

    def what_to_train(active: FreezeSpec, frozen: list[str]) -> tuple[nn.Module, list[str], dict[str, Batches]]:
        """The module each epoch runs, its frozen parts, and its data. With a frozen backbone and
        nothing random before the head, that is the head alone on the backbone's outputs."""
        augmenting = config.augment.hflip or config.augment.min_scale < 1
        if active.kind == "all_but_head" and config.cache_features and not augmenting:
            if "features" not in features:
                started = time.perf_counter()
                features["features"] = head_feature_batches(model, head, splits, config.batch_size)
                log.info("frozen backbone: features computed once in %.2fs", time.perf_counter() - started)
            if features["features"] is not None:
                return model.get_submodule(head), [], features["features"]
        return model, frozen, splits

    fingerprint = run_fingerprint(params, device)
    run_dir = RUNS_DIR / fingerprint
    history = resume(run_dir, fingerprint, model, optimizer, scheduler)
    live = Live(str(LIVE_DIR), dvcyaml=False, save_dvc_exp=False)
    for record in history:
        log_epoch(live, record)

    first_epoch = len(history) + 1
    compiled: dict[nn.Module, nn.Module] = {}  # each module compiled once: compiling again would recompile
    for epoch in progress(range(first_epoch, config.epochs + 1), "training"):
        stop = early_stop(history, params.select.metric, params.select.mode, config.early_stopping)
        if stop:
            log.info("%s", stop)
            break
        unfrozen = later is not None and epoch > config.unfreeze_after
        active, active_name = (later, config.unfreeze_to) if unfrozen else (spec, params.freeze)
        frozen = freeze(model, active, head)
        trainable, total = count_parameters(model)
        net, net_frozen, data = what_to_train(active, frozen)
        if config.compile and net not in compiled:
            compiled[net] = compile_for_training(net)
        if epoch == first_epoch or (unfrozen and epoch == config.unfreeze_after + 1):
            log.info(
                "%s, %d classes, freeze %s: %s of %s parameters train",
                built.arch, len(classes), active_name, f"{trainable:,}", f"{total:,}",
            )  # fmt: skip

        started = time.perf_counter()
        loss = train_one_epoch(
            net, data["train"], optimizer, frozen=net_frozen, batch_size=config.batch_size,
            generator=epoch_generator(config.seed, epoch), epoch=epoch,
            hflip=config.augment.hflip, min_scale=config.augment.min_scale, criterion=criterion,
            step_model=compiled.get(net),
        )  # fmt: skip
        val = score(predict(net, data["val"], config.batch_size), data["val"].targets, len(classes))
        record = {
            "epoch": epoch,
            "loss": loss,
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "val_f1": val["f1"],
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
        }
        scheduler.step()
        checkpoint = {
            **built.metadata(),
            **record,
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
            "scheduler_state_dict": scheduler.state_dict(),
            "freeze": active_name,
            "frozen_modules": frozen,
            "trainable_params": trainable,
            "total_params": total,
            "fingerprint": fingerprint,
        }
        path = run_dir / checkpoint_name(epoch)
        save_checkpoint(checkpoint, path)
        publish(path)
        history.append(record)
        log_epoch(live, record)
        log.info(
            "epoch %d/%d: loss %.4f, val loss %.4f, val accuracy %.3f, lr %.2g, %.1fs",
            epoch, config.epochs, loss, val["loss"], val["accuracy"], record["lr"], record["seconds"],
        )  # fmt: skip

    live.end()
    # Finished: the checkpoints live on in checkpoints/ (and DVC's cache), not here.
    shutil.rmtree(run_dir, ignore_errors=True)


def class_weights(
    kind: ClassWeights, targets: torch.Tensor, num_classes: int, device: torch.device
) -> torch.Tensor | None:
    """`balanced`: each class weighs n / (classes * its count) in the training loss, as in scikit-learn."""
    if kind is ClassWeights.none:
        return None
    counts = torch.bincount(targets, minlength=num_classes).float()
    return (len(targets) / (num_classes * counts.clamp(min=1))).to(device)


def early_stop(history: list[dict[str, Any]], metric: str, mode: Mode, config: EarlyStoppingParams) -> str | None:
    """Why training should stop now, or None: `metric` has not improved by more than
    min_delta for `patience` epochs. Derived from the history, so it survives a resume."""
    if config.patience <= 0 or not history:
        return None
    sign = 1 if mode is Mode.min else -1
    best_epoch, best = 0, math.inf
    for record in history:
        value = sign * record[metric]
        if math.isfinite(value) and value < best - config.min_delta:
            best_epoch, best = record["epoch"], value
    waited = history[-1]["epoch"] - best_epoch
    if waited < config.patience:
        return None
    return (
        f"early stopping after epoch {history[-1]['epoch']}: {metric} has not improved by more than "
        f"{config.min_delta} for {waited} epochs (best: epoch {best_epoch})"
    )


def run_fingerprint(params: Params, device: torch.device) -> str:
    """A hash of everything that shapes a training run: params, data, weights and code."""
    digest = hashlib.sha256()
    shaping = {
        "freeze": params.freeze,
        "device": device.type,
        "model": dataclasses.asdict(params.model),
        "train": dataclasses.asdict(params.train),
        "select": dataclasses.asdict(params.select),  # early stopping watches select.metric
    }
    digest.update(json.dumps(shaping, sort_keys=True, default=str).encode())
    files = [PREPARED_DIR / "manifest.csv", PREPARED_DIR / "classes.json", *sorted(Path(__file__).parent.glob("*.py"))]
    weights = params.model.weights
    if weights is not None and is_weights_file(weights):
        files.append(Path(weights))
    for file in files:
        digest.update(file.as_posix().encode())
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()[:16]


def resume(
    run_dir: Path, fingerprint: str, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: LambdaLR
) -> list[dict[str, Any]]:
    """Restore the last good checkpoint of this run, if a killed attempt left any.

    Returns the finished epochs' records. Damaged checkpoints, and any after them, are
    reported and deleted; the run continues from the last good one.
    """
    shutil.rmtree(CHECKPOINT_DIR, ignore_errors=True)  # stale files from a run by hand
    CHECKPOINT_DIR.mkdir(parents=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    for leftover in run_dir.glob(".*.tmp"):  # a write that a kill cut short
        leftover.unlink()

    history: list[dict[str, Any]] = []
    last: dict[str, Any] | None = None
    paths = sorted(run_dir.glob("epoch_*.pt"))
    for index, path in enumerate(paths):
        try:
            checkpoint = load_checkpoint(path)
            if checkpoint["epoch"] != index + 1 or checkpoint["fingerprint"] != fingerprint:
                raise CheckpointError(f"{path} does not continue this run")
        except CheckpointError as error:
            log.warning("%s; resuming from the last good checkpoint before it", error)
            for later in paths[index:]:
                later.unlink()
            break
        history.append({key: checkpoint[key] for key in RECORD_KEYS})
        last = checkpoint
        publish(path)
    if last is not None:
        model.load_state_dict(last["model_state_dict"])
        optimizer.load_state_dict(last["optimizer_state_dict"])
        scheduler.load_state_dict(last["scheduler_state_dict"])
        log.info("resuming after epoch %d from %s", last["epoch"], run_dir)
    return history


def publish(path: Path) -> None:
    """Put a finished checkpoint into the stage output, as a hard link where possible."""
    target = CHECKPOINT_DIR / path.name
    target.unlink(missing_ok=True)
    try:
        os.link(path, target)
    except OSError:  # file systems without hard links
        shutil.copy2(path, target)


def log_epoch(live: Live, record: dict[str, Any]) -> None:
    live.step = record["epoch"]
    live.log_metric("train/loss", record["loss"])
    live.log_metric("val/loss", record["val_loss"])
    live.log_metric("val/accuracy", record["val_accuracy"])
    live.log_metric("val/f1", record["val_f1"])
    live.log_metric("lr", record["lr"])
    live.log_metric("epoch_seconds", record["seconds"])
    live.next_step()


if __name__ == "__main__":
    run_stage(main)
