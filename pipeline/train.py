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
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from dvclive import Live
from torch import nn

from pipeline.checkpoints import CheckpointError, checkpoint_name, load_checkpoint, save_checkpoint
from pipeline.cli import run_stage
from pipeline.config import Params, load_params
from pipeline.data import decoded_images, read_manifest
from pipeline.engine import (
    epoch_generator,
    head_inputs,
    images_on,
    make_optimizer,
    predict,
    resolve_device,
    score,
    split_batches,
    train_one_epoch,
)
from pipeline.models import build_model, count_parameters, freeze, is_weights_file, parse_freeze

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
    device = resolve_device(params.device)
    manifest, classes = read_manifest(PREPARED_DIR)

    torch.manual_seed(config.seed)
    built = build_model(params.model.arch, params.model.weights, classes, params.model.image_size)
    model = built.model
    frozen = freeze(model, spec, built.head)
    trainable, total = count_parameters(model)
    log.info(
        "%s with %d classes, freeze %s: %s of %s parameters trainable",
        built.arch, len(classes), params.freeze, f"{trainable:,}", f"{total:,}",
    )  # fmt: skip
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(config, model)

    images = images_on(decoded_images(manifest, params.model.image_size), device)
    normalization = {"mean": built.mean, "std": built.std}
    train_data = split_batches(images, manifest, classes, "train", normalization, device)
    val_data = split_batches(images, manifest, classes, "val", normalization, device)

    # What each epoch runs: the whole model or, when the backbone is frozen and nothing is
    # random before the head, the head alone on the backbone's outputs, computed once.
    net, net_frozen = model, frozen
    augmenting = config.augment.hflip or config.augment.min_scale < 1
    if spec.kind == "all_but_head" and config.cache_features and not augmenting:
        train_features = head_inputs(model, built.head, train_data, config.batch_size)
        val_features = head_inputs(model, built.head, val_data, config.batch_size)
        if train_features is not None and val_features is not None:
            net, net_frozen = model.get_submodule(built.head), []
            train_data, val_data = train_data.with_features(train_features), val_data.with_features(val_features)
            log.info("frozen backbone: features computed once; each epoch trains only the head on them")
    if config.compile:
        net.compile()

    fingerprint = run_fingerprint(params, device)
    run_dir = RUNS_DIR / fingerprint
    history = resume(run_dir, fingerprint, model, optimizer)
    live = Live(str(LIVE_DIR), dvcyaml=False, save_dvc_exp=False)
    for record in history:
        log_epoch(live, record)

    for epoch in range(len(history) + 1, config.epochs + 1):
        started = time.perf_counter()
        loss = train_one_epoch(
            net, train_data, optimizer, frozen=net_frozen, batch_size=config.batch_size,
            generator=epoch_generator(config.seed, epoch), epoch=epoch,
            hflip=config.augment.hflip, min_scale=config.augment.min_scale,
        )  # fmt: skip
        val = score(predict(net, val_data, config.batch_size), val_data.targets, len(classes))
        record = {
            "epoch": epoch,
            "loss": loss,
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "val_f1": val["f1"],
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
        }
        checkpoint = {
            **built.metadata(),
            **record,
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
            "freeze": params.freeze,
            "frozen_modules": frozen,
            "trainable_params": trainable,
            "total_params": total,
            "fingerprint": fingerprint,
        }
        path = run_dir / checkpoint_name(epoch)
        save_checkpoint(checkpoint, path)
        publish(path)
        log_epoch(live, record)
        log.info(
            "epoch %d/%d: loss %.4f, val loss %.4f, val accuracy %.3f, lr %.2g, %.1fs",
            epoch, config.epochs, loss, val["loss"], val["accuracy"], record["lr"], record["seconds"],
        )  # fmt: skip

    live.end()
    # Finished: the checkpoints live on in checkpoints/ (and DVC's cache), not here.
    shutil.rmtree(run_dir, ignore_errors=True)


def run_fingerprint(params: Params, device: torch.device) -> str:
    """A hash of everything that shapes a training run: params, data, weights and code."""
    digest = hashlib.sha256()
    shaping = {
        "freeze": params.freeze,
        "device": device.type,
        "model": dataclasses.asdict(params.model),
        "train": dataclasses.asdict(params.train),
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


def resume(run_dir: Path, fingerprint: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
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
