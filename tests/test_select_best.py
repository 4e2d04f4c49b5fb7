"""select-best: chooses on validation only; NaN is worst; a tie goes to the earlier epoch;
a moving average of the weights competes with them."""

import json
import math

import pandas as pd
import pytest
import torch

from pipeline.cli import UserError
from pipeline.config import Mode
from pipeline.select_best import pick_best
from testing.project import set_params, stage
from tests.conftest import Reproduced

NAN = math.nan


def scores(val_loss: list[float], test_loss: list[float] | None = None) -> pd.DataFrame:
    epochs = range(1, len(val_loss) + 1)
    test = test_loss if test_loss is not None else [1.0] * len(val_loss)
    return pd.DataFrame({
        "epoch": list(epochs), "weights": "raw", "val_loss": val_loss, "val_accuracy": val_loss, "test_loss": test,
    })  # fmt: skip


@pytest.mark.parametrize(
    ("val_loss", "mode", "expected_epoch"),
    [
        ([0.9, 0.5, 0.7], Mode.min, 2),
        ([0.9, 0.5, 0.7], Mode.max, 1),
        ([NAN, 0.8, 0.6], Mode.min, 3),  # NaN is never best when minimising...
        ([0.2, NAN, 0.1], Mode.max, 1),  # ...nor when maximising
        ([0.4, math.inf, 0.5], Mode.max, 3),  # inf is a diverged run, not a great score
        ([0.5, 0.3, 0.3, 0.4], Mode.min, 2),  # a tie goes to the earlier epoch
    ],
)
def test_pick_best(val_loss: list[float], mode: Mode, expected_epoch: int) -> None:
    metric = "val_loss" if mode is Mode.min else "val_accuracy"
    assert pick_best(scores(val_loss), metric, mode)["epoch"] == expected_epoch


def test_test_scores_never_decide() -> None:
    # Epoch 2 is best on validation; epoch 1 would be best on test.
    chosen = pick_best(scores([0.6, 0.5], test_loss=[0.1, 0.9]), "val_loss", Mode.min)
    assert chosen["epoch"] == 2


def test_every_checkpoint_nan_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="every checkpoint has val_loss = NaN"):
        pick_best(scores([NAN, NAN]), "val_loss", Mode.min)


@pytest.mark.parametrize(("ema_loss", "expected"), [([0.7, 0.4], (2, "ema")), ([0.7, 0.5], (2, "raw"))])
def test_the_weights_moving_average_wins_when_better_and_the_raw_weights_on_a_tie(
    ema_loss: list[float], expected: tuple[int, str]
) -> None:
    table = pd.concat([scores([0.6, 0.5]), scores(ema_loss).assign(weights="ema")]).sort_values("epoch")
    chosen = pick_best(table, "val_loss", Mode.min)
    assert (chosen["epoch"], chosen["weights"]) == expected


# --- through the stage's entry point ----------------------------------------------------------


@pytest.mark.parametrize(("metric", "mode"), [("val_loss", "min"), ("val_accuracy", "max"), ("val_f1", "max")])
def test_the_stage_keeps_the_checkpoint_validation_prefers_when_test_disagrees(
    reproduced: Reproduced, metric: str, mode: str
) -> None:
    """`python -m pipeline.select_best` on an evaluate table where every validation score
    prefers epoch 1 and every test score epoch 2: the stage must keep epoch 1's weights and
    report epoch 1's row. The table is evaluate's, with its score columns set by hand."""
    project = reproduced.path
    table = pd.read_csv(project / "eval/scores.csv")
    assert list(table["epoch"]) == [1, 2] and set(table["weights"]) == {"raw"}
    better, worse = {"loss": 0.2, "accuracy": 0.9, "f1": 0.8}, {"loss": 0.7, "accuracy": 0.4, "f1": 0.3}
    for name in better:
        table[f"val_{name}"] = [better[name], worse[name]]
        table[f"test_{name}"] = [worse[name] + 0.01, better[name] + 0.01]
    table.to_csv(project / "eval/scores.csv", index=False)
    set_params(project, **{"select.metric": metric, "select.mode": mode})

    stage("select_best", project)

    metrics = json.loads((project / "best/metrics.json").read_text())
    assert metrics["epoch"] == 1
    for name in better:  # epoch 1's row, by hand
        assert metrics[f"val_{name}"] == pytest.approx(better[name])
        assert metrics[f"test_{name}"] == pytest.approx(worse[name] + 0.01)
    chosen = torch.load(project / "checkpoints/epoch_001.pt", weights_only=True)["model_state_dict"]
    kept = torch.load(project / "models/best.pt", weights_only=True)["model_state_dict"]
    assert kept.keys() == chosen.keys() and all(torch.equal(kept[key], chosen[key]) for key in chosen)
    epochs = pd.read_csv(project / "best/epochs.csv")
    assert list(epochs["selected"]) == [1, 0]
    confusion = pd.read_csv(project / "best/confusion.csv")
    assert confusion.equals(pd.read_csv(project / "eval/predictions/epoch_001.csv")[["actual", "predicted"]])
