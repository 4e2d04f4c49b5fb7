"""Stage evaluate: score every checkpoint on the validation and the test split.

Reads:  params device, evaluate.*; checkpoints/; data/prepared/; the images
Writes: eval/scores.csv         (one row per epoch and weights: its training loss; loss, accuracy and
                                 macro-F1 on val and test)
        eval/predictions/epoch_NNN.csv  (each checkpoint's test predictions; epoch_NNN_ema.csv
                                         for its weights' moving average)

A checkpoint that holds a moving average of the weights (train.ema_decay) gives two rows,
`weights` = raw (as trained) and ema; select-best may choose either. With
evaluate.tta: hflip, each image's logits are averaged with its mirror image's.
"""

import logging

import pandas as pd
import torch

from pipeline.batches import ImageBatches, images_on, split_batches
from pipeline.checked import confirm_unchanged, load_checked_params
from pipeline.checkpoints import WEIGHTS, load_each, predictions_name
from pipeline.cli import UserError, progress, run_stage
from pipeline.config import EvaluateParams, TestTimeAugmentation
from pipeline.data.cache import decoded_images
from pipeline.data.split import read_manifest
from pipeline.devices import place_model, resolve_device
from pipeline.engine import predict, score
from pipeline.files import write_csv
from pipeline.metrics import as_columns
from pipeline.models import ModelSpec, model_from_checkpoint
from pipeline.paths import CHECKPOINT_DIR, PREDICTIONS_DIR, PREPARED_DIR, SCORES_FILE

log = logging.getLogger("pipeline.evaluate")


def batch_size_on(device: torch.device, params: EvaluateParams) -> int:
    return params.cuda_batch_size if device.type == "cuda" else params.batch_size


def main() -> None:
    params = load_checked_params()
    device = resolve_device(params.device)
    batch_size = batch_size_on(device, params.evaluate)
    manifest, classes = read_manifest(PREPARED_DIR)
    paths = sorted(CHECKPOINT_DIR.glob("epoch_*.pt"))
    if not paths:
        raise UserError(f"no checkpoints in {CHECKPOINT_DIR}/: run the train stage first")

    tta = params.evaluate.tta
    flip = tta is TestTimeAugmentation.hflip
    model, rows = None, []
    # Every checkpoint is checked; damaged ones stop the stage at the end, all of them named.
    for path, checkpoint in progress(load_each(paths), "evaluating checkpoints", total=len(paths)):
        spec = ModelSpec.from_checkpoint(checkpoint)
        if spec.classes != classes:
            raise UserError(f"{path} was trained on classes {spec.classes}, but the manifest has {classes}")
        if model is None:  # every checkpoint of a run shares its architecture and preprocessing
            model = place_model(model_from_checkpoint(checkpoint), device)
            images = images_on(decoded_images(manifest, spec.sizing), device)
            splits = {split: split_batches(images, manifest, split, spec, device) for split in ("val", "test")}
        epoch = checkpoint["epoch"]
        for weights in (name for name, key in WEIGHTS.items() if key in checkpoint):
            model.load_state_dict(checkpoint[WEIGHTS[weights]])
            scores, predictions = score_splits(model, splits, manifest, classes, batch_size, flip)
            rows.append(
                {"epoch": epoch, "weights": weights, "tta": tta.value, "train_loss": checkpoint["loss"], **scores}
            )
            write_csv(predictions, PREDICTIONS_DIR / predictions_name(epoch, weights))

    scores = pd.DataFrame(rows)
    write_csv(scores, SCORES_FILE)
    log.info("scored %d checkpoints:\n%s", len(paths), scores.to_string(index=False, float_format="%.4f"))
    confirm_unchanged()


def score_splits(
    model: torch.nn.Module,
    splits: dict[str, ImageBatches],
    manifest: pd.DataFrame,
    classes: list[str],
    batch_size: int,
    flip: bool,
) -> tuple[dict[str, float], pd.DataFrame]:
    """The model's scores on each split (val_loss, test_accuracy...), and its test predictions."""
    logits = {split: predict(model, data, batch_size, flip=flip) for split, data in splits.items()}
    scores: dict[str, float] = {}
    for split, data in splits.items():
        scores |= as_columns(split, score(logits[split], data.targets, len(classes)))
    test_rows = manifest[manifest["split"] == "test"]
    confidence, predicted = logits["test"].softmax(dim=1).max(dim=1)
    predictions = pd.DataFrame(
        {
            "path": test_rows["path"].to_numpy(),
            "actual": test_rows["label"].to_numpy(),
            "predicted": [classes[i] for i in predicted.tolist()],
            "confidence": confidence.numpy().round(6),
        }
    )
    return scores, predictions


if __name__ == "__main__":
    run_stage(main)
