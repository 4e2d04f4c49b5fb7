"""Stage select-best: keep the checkpoint with the best validation score.

Chooses on validation only (select.metric, select.mode); test numbers are reported,
never used to choose. NaN counts as worst; a tie goes to the earlier epoch. With a moving
average of the weights (train.ema_decay), each epoch has two rows, raw and ema, and either
may win: best.pt then holds the winning weights, and metrics.json names them.

Reads:  params select.*; eval/scores.csv; eval/predictions/; checkpoints/
Writes: models/best.pt        (model weights and metadata, no optimizer state)
        models/best.pt2       (the same model as a torch.export program; see below)
        models/best_image.pt2 (the same with its preprocessing: decoded images in; pipeline/export.py)
        best/metrics.json     (what `dvc metrics show` reads)
        best/confusion.csv    (the chosen checkpoint's test predictions, for the confusion plot)
        best/epochs.csv       (eval/scores.csv with the chosen epoch marked, for the curves)
        best/classes.csv, best/mistakes.csv, best/mistakes.png
                              (per-class scores, and the test images it gets wrong: see
                               pipeline.interpretation)

models/best.pt2 runs with plain torch, without this project's code:

    model = torch.export.load("models/best.pt2").module()   # already in eval mode
    logits = model(x)

x is a float32 tensor (N, 3, S, S), any N >= 1, on the CPU, preprocessed as in evaluation:
resize the shorter side to `resize_size` with the `interpolation` filter, crop the centre
S x S (S = image_size), RGB, scale to [0, 1], then subtract `mean` and divide by `std` per
channel (torchvision's Resize, CenterCrop, ToTensor, Normalize). These and the class
names (output i is classes[i]) are stored in best.pt and, as JSON, in the .pt2:
`extra = {"metadata.json": ""}; torch.export.load(path, extra_files=extra)`.
`python -m tools.predict` does all of this for you.

The export is a convenience: a model that torch.export cannot capture still gets best.pt
and its metrics, with a warning, and best.pt2 then holds a line of text saying why.
"""

import logging
from typing import Any

import numpy as np
import pandas as pd

from pipeline.checked import confirm_unchanged, load_checked_params
from pipeline.checkpoints import WEIGHTS, checkpoint_name, load_each, predictions_name, save_checkpoint
from pipeline.cli import UserError, run_stage
from pipeline.config import Mode
from pipeline.export import write_exports
from pipeline.files import read_csv, write_csv, write_json
from pipeline.interpretation import write_interpretation
from pipeline.metrics import REPORTED
from pipeline.paths import (
    BEST_CONFUSION,
    BEST_EPOCHS,
    BEST_METRICS,
    BEST_MODEL,
    CHECKPOINT_DIR,
    PREDICTIONS_DIR,
    SCORES_FILE,
)

log = logging.getLogger("pipeline.select_best")


def pick_best(scores: pd.DataFrame, metric: str, mode: Mode) -> pd.Series:
    """The row with the best `metric`; NaN is worst, and a tie goes to the earliest epoch,
    and within it to the raw weights over their moving average."""
    values = scores[metric].astype(float)
    usable = np.isfinite(values)
    if not usable.any():
        raise UserError(f"every checkpoint has {metric} = NaN or infinite; there is no best one to keep")
    best_value = values[usable].min() if mode is Mode.min else values[usable].max()
    tied = scores[usable & (values == best_value)]
    return tied.assign(ema=tied["weights"] == "ema").sort_values(["epoch", "ema"]).iloc[0]


def main() -> None:
    params = load_checked_params().select
    if not SCORES_FILE.is_file():
        raise UserError(f"{SCORES_FILE} not found: run the evaluate stage first (dvc repro evaluate)")
    scores = read_csv(SCORES_FILE, text=("weights", "tta"))
    best = pick_best(scores, params.metric, params.mode)
    epoch, weights = int(best["epoch"]), best["weights"]

    # Every checkpoint is checked, not only the chosen one: damage anywhere stops the stage.
    paths = sorted(CHECKPOINT_DIR.glob("epoch_*.pt"))
    chosen = CHECKPOINT_DIR / checkpoint_name(epoch)
    if chosen not in paths:
        raise UserError(f"{chosen} not found, but {SCORES_FILE} chose it: run the evaluate stage again")
    checkpoint: dict[str, Any] = {}
    for path, loaded in load_each(paths):  # one in memory at a time, but the chosen one
        if path == chosen:
            checkpoint = loaded
    # best.pt holds the chosen weights alone, for using the model, not for resuming.
    checkpoint["model_state_dict"] = checkpoint[WEIGHTS[weights]]
    for key in ("optimizer_state_dict", "scheduler_state_dict", "ema_state_dict", "ema_updates"):
        checkpoint.pop(key, None)
    checkpoint |= {"weights": weights, "tta": best["tta"]}  # tools.predict averages as evaluate did
    checksum = save_checkpoint(checkpoint, BEST_MODEL)
    write_exports(checkpoint, checksum=checksum)  # copied from the export cache for a checkpoint exported before

    metrics = {
        "epoch": epoch,
        "weights": weights,
        "tta": best["tta"],
        **{name: float(best[name]) for name in REPORTED},
        "trainable_params": checkpoint["trainable_params"],
        "total_params": checkpoint["total_params"],
    }
    write_json(metrics, BEST_METRICS)
    predictions = read_csv(PREDICTIONS_DIR / predictions_name(epoch, weights))
    # A plain CSV for dvc.yaml's confusion plot, not dvclive's: select_best keeps no Live run.
    write_csv(predictions[["actual", "predicted"]], BEST_CONFUSION)
    write_interpretation(checkpoint, predictions)
    # evaluate's table of the raw weights, with the chosen epoch marked, for the per-epoch plots' red line
    raw = scores[scores["weights"] == "raw"]
    write_csv(raw.assign(selected=(raw["epoch"] == epoch).astype(int)), BEST_EPOCHS)
    log.info(
        "best: epoch %d of %d (%s weights) by %s (%s): val loss %.4f, test accuracy %.3f -> %s",
        epoch,
        len(raw),
        weights,
        params.metric,
        params.mode.value,
        best["val_loss"],
        best["test_accuracy"],
        BEST_MODEL,
    )
    confirm_unchanged()


if __name__ == "__main__":
    run_stage(main)
