"""Stage evaluate: score every checkpoint on the validation and the test split.

Reads:  params device, evaluate.*; checkpoints/; data/prepared/; the images
Writes: eval/scores.csv         (one row per epoch and weights: its training loss; loss, accuracy and
                                 macro-F1 on val and test)
        eval/predictions/epoch_NNN.csv  (each checkpoint's test predictions; epoch_NNN_ema.csv
                                         for its weights' moving average)

A checkpoint that holds a moving average of the weights (train.ema_decay) gives two rows,
`weights` = raw (as trained) and ema; select-best may choose either. With
evaluate.tta: hflip, each image's logits are averaged with its mirror image's. With
evaluate.processes above 1, that many processes (torchrun, as for training) each score
their share of the checkpoints (`score_shards`).
"""

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from pipeline import distributed
from pipeline.batches import ImageBatches, images_on, split_batches
from pipeline.checked import confirm_unchanged, load_checked_params
from pipeline.checkpoints import WEIGHTS, load_each, predictions_name, unusable
from pipeline.cli import UserError, progress, run_stage
from pipeline.config import EvaluateParams, TestTimeAugmentation
from pipeline.data.cache import decoded_images
from pipeline.data.split import read_manifest
from pipeline.devices import place_model, resolve_device
from pipeline.distributed import Ranks
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
    processes = params.evaluate.processes
    if processes > 1 and not distributed.launched():
        threads = distributed.cpu_threads(0, processes)
        distributed.launch(processes, "pipeline.evaluate", threads, "evaluation")  # each runs this main, as a rank
        confirm_unchanged()
        return
    ranks, device = distributed.start(resolve_device(params.device), params.wait_minutes)
    torch.set_num_threads(distributed.cpu_threads(0, distributed.local_processes()))
    manifest, classes = read_manifest(PREPARED_DIR)
    paths = sorted(CHECKPOINT_DIR.glob("epoch_*.pt"))
    if not paths:
        raise UserError(f"no checkpoints in {CHECKPOINT_DIR}/: run the train stage first")

    rows, damaged = score_shards(paths, ranks, manifest, classes, device, params.evaluate)
    distributed.stop(ranks)
    if not ranks.main:
        return
    if damaged:  # every checkpoint is checked; damaged ones stop the stage at the end, all of them named
        raise unusable(damaged, len(paths))
    scores = pd.DataFrame(rows)
    write_csv(scores, SCORES_FILE)
    log.info("scored %d checkpoints:\n%s", len(paths), scores.to_string(index=False, float_format="%.4f"))
    confirm_unchanged()


def score_shards(
    paths: list[Path],
    ranks: Ranks,
    manifest: pd.DataFrame,
    classes: list[str],
    device: torch.device,
    params: EvaluateParams,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every checkpoint's rows of scores, in epoch order, and the errors of the damaged ones,
    on every rank. Each rank scores whole checkpoints (every `world`-th, from its rank on) and
    writes their predictions, so its scores are those one process gives, batch for batch."""
    damaged: list[str] = []
    rows = score_checkpoints(paths[ranks.rank :: ranks.world], manifest, classes, device, params, damaged)
    gathered = distributed.gather((rows, damaged), ranks)
    rows = sorted((row for part, _ in gathered for row in part), key=lambda row: row["epoch"])  # stable: raw, ema
    return rows, sorted(error for _, errors in gathered for error in errors)


def score_checkpoints(
    paths: list[Path],
    manifest: pd.DataFrame,
    classes: list[str],
    device: torch.device,
    params: EvaluateParams,
    damaged: list[str],
) -> list[dict[str, Any]]:
    """The rows of scores of the checkpoints at `paths` (each weights of each), writing their
    test predictions; the errors of those that are damaged go into `damaged`."""
    batch_size = batch_size_on(device, params)
    tta = params.tta
    flip = tta is TestTimeAugmentation.hflip
    model, rows = None, []
    for path, checkpoint in progress(load_each(paths, damaged), "evaluating checkpoints", total=len(paths)):
        spec = ModelSpec.from_checkpoint(checkpoint)
        if spec.classes != classes:
            raise UserError(f"{path} was trained on classes {spec.classes}, but the manifest has {classes}")
        if model is None:  # every checkpoint of a run shares its architecture and preprocessing
            model = place_model(model_from_checkpoint(checkpoint), device)
            # The decoded images are prepare's; were they missing, each process would decode them
            # (atomically written, so only the time is lost).
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
    return rows


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
