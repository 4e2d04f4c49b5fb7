"""Stage select-best: keep the checkpoint with the best validation score.

Chooses on validation only (select.metric, select.mode); test numbers are reported,
never used to choose. NaN counts as worst; a tie goes to the earlier epoch.

Reads:  params select.*; eval/scores.csv; eval/predictions/; checkpoints/
Writes: models/best.pt        (model weights and metadata, no optimizer state)
        best/metrics.json     (what `dvc metrics show` reads)
        best/confusion.csv    (the chosen checkpoint's test predictions, for the confusion plot)
"""

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.checkpoints import checkpoint_name, load_checkpoint, save_checkpoint
from pipeline.cli import UserError, run_stage
from pipeline.config import Mode, load_params
from pipeline.files import write_csv, write_json

log = logging.getLogger("pipeline.select_best")

CHECKPOINT_DIR = Path("checkpoints")
EVAL_DIR = Path("eval")
BEST_MODEL = Path("models/best.pt")
BEST_DIR = Path("best")
REPORTED = ("val_loss", "val_accuracy", "val_f1", "test_loss", "test_accuracy", "test_f1")


def pick_best(scores: pd.DataFrame, metric: str, mode: Mode) -> pd.Series:
    """The row with the best `metric`; NaN is worst, and a tie goes to the earliest epoch."""
    values = scores[metric].astype(float)
    usable = np.isfinite(values)
    if not usable.any():
        raise UserError(f"every checkpoint has {metric} = NaN or infinite; there is no best one to keep")
    best_value = values[usable].min() if mode is Mode.min else values[usable].max()
    tied = scores[usable & (values == best_value)]
    return tied.sort_values("epoch").iloc[0]


def main() -> None:
    params = load_params().select
    scores = pd.read_csv(EVAL_DIR / "scores.csv")
    best = pick_best(scores, params.metric, params.mode)
    epoch = int(best["epoch"])

    checkpoint = load_checkpoint(CHECKPOINT_DIR / checkpoint_name(epoch))
    del checkpoint["optimizer_state_dict"]  # best.pt is for using the model, not for resuming
    save_checkpoint(checkpoint, BEST_MODEL)

    metrics = {
        "epoch": epoch,
        **{name: float(best[name]) for name in REPORTED},
        "trainable_params": checkpoint["trainable_params"],
        "total_params": checkpoint["total_params"],
    }
    write_json(metrics, BEST_DIR / "metrics.json")
    predictions = pd.read_csv(EVAL_DIR / "predictions" / f"{checkpoint_name(epoch).removesuffix('.pt')}.csv")
    write_csv(predictions[["actual", "predicted"]], BEST_DIR / "confusion.csv")
    log.info(
        "best: epoch %d of %d by %s (%s): val loss %.4f, test accuracy %.3f -> %s",
        epoch, len(scores), params.metric, params.mode.value, best["val_loss"], best["test_accuracy"], BEST_MODEL,
    )  # fmt: skip


if __name__ == "__main__":
    run_stage(main)
