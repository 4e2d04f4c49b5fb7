"""Stage evaluate: score every checkpoint on the validation and the test split.

Reads:  params device, evaluate.batch_size or evaluate.cuda_batch_size; checkpoints/; data/prepared/; the images
Writes: eval/scores.csv         (one row per epoch: its training loss; loss, accuracy and macro-F1 on val and test)
        eval/predictions/epoch_NNN.csv  (each checkpoint's test predictions)
"""

import logging
from pathlib import Path

import pandas as pd
import torch

from pipeline.checkpoints import load_each
from pipeline.cli import UserError, progress, run_stage
from pipeline.config import EvaluateParams, load_params
from pipeline.data import decoded_images, read_manifest
from pipeline.engine import images_on, place_model, predict, resolve_device, score, split_batches
from pipeline.files import write_csv
from pipeline.models import ModelSpec, model_from_checkpoint

log = logging.getLogger("pipeline.evaluate")

PREPARED_DIR = Path("data/prepared")
CHECKPOINT_DIR = Path("checkpoints")
EVAL_DIR = Path("eval")
PREDICTIONS_DIR = EVAL_DIR / "predictions"


def batch_size_on(device: torch.device, params: EvaluateParams) -> int:
    return params.cuda_batch_size if device.type == "cuda" else params.batch_size


def main() -> None:
    params = load_params()
    device = resolve_device(params.device)
    batch_size = batch_size_on(device, params.evaluate)
    manifest, classes = read_manifest(PREPARED_DIR)
    paths = sorted(CHECKPOINT_DIR.glob("epoch_*.pt"))
    if not paths:
        raise UserError(f"no checkpoints in {CHECKPOINT_DIR}/: run the train stage first")

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
        else:
            model.load_state_dict(checkpoint["model_state_dict"])

        row = {"epoch": checkpoint["epoch"], "train_loss": checkpoint["loss"]}
        logits = {split: predict(model, data, batch_size) for split, data in splits.items()}
        for split, data in splits.items():
            row |= {f"{split}_{name}": v for name, v in score(logits[split], data.targets, len(classes)).items()}
        rows.append(row)

        test_rows = manifest[manifest["split"] == "test"]
        confidence, predicted = logits["test"].softmax(dim=1).max(dim=1)
        predictions = pd.DataFrame({
            "path": test_rows["path"].to_numpy(),
            "actual": test_rows["label"].to_numpy(),
            "predicted": [classes[i] for i in predicted.tolist()],
            "confidence": confidence.numpy().round(6),
        })  # fmt: skip
        write_csv(predictions, PREDICTIONS_DIR / path.with_suffix(".csv").name)

    scores = pd.DataFrame(rows)
    write_csv(scores, EVAL_DIR / "scores.csv")
    log.info("scored %d checkpoints:\n%s", len(scores), scores.to_string(index=False, float_format="%.4f"))


if __name__ == "__main__":
    run_stage(main)
