"""pipeline.metrics names what engine.score measures, and everything named after it follows."""

import torch

from pipeline.engine import score
from pipeline.metrics import METRICS, REPORTED, SELECTABLE, as_columns
from pipeline.runs import RECORD_KEYS


def test_score_measures_exactly_the_metrics_named() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert tuple(score(logits, torch.tensor([0, 1, 1]), 2)) == METRICS


def test_the_names_derived_from_the_metrics() -> None:
    # What checkpoints, eval/scores.csv and best/metrics.json have always called them.
    assert {"epoch", "loss", "val_loss", "val_accuracy", "val_f1", "lr", "seconds"} <= set(RECORD_KEYS)
    assert SELECTABLE and all(name.startswith("val_") for name in SELECTABLE)  # never chosen on test
    assert {"val_loss", "val_accuracy", "val_f1", "test_loss", "test_accuracy", "test_f1"} <= set(REPORTED)
    assert as_columns("test", {"f1": 0.5, "loss": 1.0, "accuracy": 0.75}) == {
        "test_loss": 1.0,
        "test_accuracy": 0.75,
        "test_f1": 0.5,
    }
