"""Stage pretrain: train the backbone from scratch on the source classes.

The demo's stand-in for ImageNet weights: the model learns digits 0-4 here, and the
train stage transfers it to the unseen digits 5-9 (Yosinski et al., 2014). With your
own data and internet, set model.weights: DEFAULT and delete this stage.

Reads:  params model.arch, model.image_size, pretrain.*, device; images under pretrain.data_dir
Writes: models/pretrained.pt (a pipeline checkpoint without optimizer state)
"""

import logging
from pathlib import Path

import torch

from pipeline.checkpoints import save_checkpoint
from pipeline.cli import run_stage
from pipeline.config import load_params
from pipeline.data import decoded_images, duplicate_groups, stratified_split, usable_images
from pipeline.engine import images_on, place_model, resolve_device, split_batches, train_and_score
from pipeline.models import build_model
from pipeline.optim import make_optimizer

log = logging.getLogger("pipeline.pretrain")

OUT_FILE = Path("models/pretrained.pt")


def main() -> None:
    params = load_params()
    config = params.pretrain
    device = resolve_device(params.device)
    classes, manifest, _ = usable_images(Path(config.data_dir))
    fractions = {"val": config.val_fraction}
    # Copies of an image stay in one split, as in prepare (see data.duplicate_groups).
    manifest["split"] = stratified_split(manifest["label"].tolist(), fractions, config.seed, duplicate_groups(manifest))

    torch.manual_seed(config.seed)
    built = build_model(params.model.arch, None, classes, params.model.image_size)
    model, spec = place_model(built.model, device), built.spec
    images = images_on(decoded_images(manifest, params.model.image_size), device)
    train_data = split_batches(images, manifest, classes, "train", spec.mean, spec.std, device)
    val_data = split_batches(images, manifest, classes, "val", spec.mean, spec.std, device)
    optimizer = make_optimizer(config, model, spec.head)

    for epoch in range(1, config.epochs + 1):
        loss, val = train_and_score(
            model, train_data, val_data, optimizer, num_classes=len(classes), seed=config.seed, epoch=epoch,
            batch_size=config.batch_size,
        )  # fmt: skip
        log.info(
            "pretrain epoch %d/%d: loss %.4f, val loss %.4f, val accuracy %.3f",
            epoch, config.epochs, loss, val["loss"], val["accuracy"],
        )  # fmt: skip

    checkpoint = {
        **spec.to_dict(),
        "epoch": config.epochs,
        "model_state_dict": model.state_dict(),
        "loss": loss,
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
    }
    save_checkpoint(checkpoint, OUT_FILE)
    log.info("wrote %s (%d source classes: %s)", OUT_FILE, len(classes), ", ".join(classes))


if __name__ == "__main__":
    run_stage(main)
