"""Stage weights: the starting weights of fine-tuning as one file, whatever their source.

model.weights names the source:
    pretrain                  the demo's stand-in for ImageNet weights: train the backbone
                              from scratch on the images under pretrain.data_dir (digits
                              0-4) with the pretrain.* params; train then transfers it to
                              the unseen digits 5-9 (Yosinski et al., 2014)
    DEFAULT, IMAGENET1K_V1... torchvision's weights for model.arch, from $TORCH_HOME
    DEFAULT, a1_in1k...       for a timm model (timm/NAME), timm's weights of that pretrained
                              tag, from the Hugging Face cache ($HF_HOME/hub)
    models/weights/NAME.pt    a state_dict (.pt, .pth or .safetensors), or a checkpoint of
                              this pipeline
    null                      random weights, drawn from pretrain.seed

Each is saved the same way, so dvc.lock records the exact bytes a run started from, and
train re-runs when, and only when, those bytes change.

Reads:  params device, model.*, pretrain.*; images under pretrain.data_dir (pretrain only);
        the weights file under models/weights/ (a file only)
Writes: models/start.pt (a pipeline checkpoint of the backbone without its head, and the
                         preprocessing its weights expect; train gives it a new head)
"""

import logging
from pathlib import Path
from typing import Any

import torch

from pipeline.batches import images_on, split_batches
from pipeline.checked import confirm_unchanged, load_checked_params
from pipeline.checkpoints import save_checkpoint
from pipeline.cli import run_stage
from pipeline.config import PRETRAIN_WEIGHTS, Params
from pipeline.data.cache import decoded_images
from pipeline.data.split import duplicate_groups, stratified_split, usable_images
from pipeline.devices import place_model, resolve_device
from pipeline.engine import LoopOptions, train_and_score
from pipeline.models import Built, backbone_state, build_model, model_sizing
from pipeline.optim import make_optimizer
from pipeline.paths import START_FILE

log = logging.getLogger("pipeline.weights")


def main() -> None:
    params = load_checked_params()
    model = params.model
    if model.weights == PRETRAIN_WEIGHTS:
        (built, scores), source = pretrain(params), f"pretrained on {params.pretrain.data_dir}"
    else:
        torch.manual_seed(params.pretrain.seed)  # what `null` draws from
        built = build_model(model.arch, model.weights, None, model.image_size)
        source, scores = "random, from pretrain.seed" if model.weights is None else model.weights, {}
    checkpoint = {
        **built.spec.to_dict(),
        "classes": [],  # no head: train gives the backbone one for its classes
        "model_state_dict": backbone_state(built.model, built.spec.head),
        "source": source,
        **scores,
    }
    save_checkpoint(checkpoint, START_FILE)
    sizing = built.spec.sizing
    log.info(
        "wrote %s: %s %s; inputs resized to %d, centre %d crop (%s)",
        START_FILE,
        model.arch,
        source,
        sizing.resize,
        sizing.crop,
        sizing.interpolation,
    )
    confirm_unchanged()


def pretrain(params: Params) -> tuple[Built, dict[str, Any]]:
    """The backbone trained from scratch on the classes under pretrain.data_dir, and its
    last epoch's scores."""
    config = params.pretrain
    device = resolve_device(params.device)
    # Decoded as build_model sizes inputs for weights trained here, in the pass that checks them.
    sizing = model_sizing(params.model.arch, None, params.model.image_size)
    classes, manifest, _ = usable_images(Path(config.data_dir), sizing)
    fractions = {"val": config.val_fraction}
    # Copies of an image stay in one split, as in prepare (see data.duplicate_groups).
    manifest["split"] = stratified_split(manifest["label"].tolist(), fractions, config.seed, duplicate_groups(manifest))

    torch.manual_seed(config.seed)
    built = build_model(params.model.arch, None, classes, params.model.image_size)
    model, spec = place_model(built.model, device), built.spec
    images = images_on(decoded_images(manifest, spec.sizing), device)
    train_data, val_data = (split_batches(images, manifest, split, spec, device) for split in ("train", "val"))
    optimizer = make_optimizer(config, model, spec.head)
    loop = LoopOptions(batch_size=config.batch_size, seed=config.seed)

    for epoch in range(1, config.epochs + 1):
        loss, val = train_and_score(model, train_data, val_data, optimizer, loop, epoch, len(classes))
        log.info(
            "pretrain epoch %d/%d: loss %.4f, val loss %.4f, val accuracy %.3f",
            epoch,
            config.epochs,
            loss,
            val["loss"],
            val["accuracy"],
        )
    log.info("pretrained on %d source classes: %s", len(classes), ", ".join(classes))
    return built, {"epoch": config.epochs, "loss": loss, "val_loss": val["loss"], "val_accuracy": val["accuracy"]}


if __name__ == "__main__":
    run_stage(main)
