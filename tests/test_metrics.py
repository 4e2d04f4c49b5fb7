"""pipeline.metrics names what engine.score measures, and everything named after it follows."""

import pytest
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


def test_macro_f1_averages_the_classes_in_the_targets_or_the_predictions() -> None:
    """Macro-F1 (val_f1, test_f1, select.metric: val_f1) is the mean F1 over the classes that occur
    in the split's targets or its predictions: a class predicted but absent from the split counts,
    with F1 0; a class absent from both (a small split may lack one) does not."""
    targets = torch.tensor([0, 0, 1, 1])
    # Predicted 0, 1, 1, 2: class 2 is predicted once but has no image, class 3 has neither.
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 2]), 4).float()
    # By hand, F1 = 2 TP / (support + predicted): class 0: 2 * 1 / (2 + 1); class 1: 2 * 1 / (2 + 2); class 2: 0.
    expected = (2 / 3 + 1 / 2 + 0) / 3
    assert score(logits, targets, 4)["f1"] == pytest.approx(expected)
