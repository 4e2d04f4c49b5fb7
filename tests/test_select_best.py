"""select-best: chooses on validation only; NaN is worst; a tie goes to the earlier epoch;
a moving average of the weights competes with them."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline.checkpoints import save_checkpoint
from pipeline.cli import UserError
from pipeline.config import Mode
from pipeline.metrics import REPORTED
from pipeline.models import build_model
from pipeline.select_best import pick_best
from testing.project import set_checked_params, stage
from tests.conftest import Reproduced
from tests.helpers import assert_title_line, torchvision_model_logits

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
        ([0.5, 0.3, 0.3, 0.4], Mode.min, 2),  # a tie goes to the earlier epoch...
        ([0.5, 0.7, 0.7, 0.4], Mode.max, 2),  # ...when maximising too
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
    """`python -m pipeline.select_best` on an evaluate table where the chosen validation score
    prefers epoch 1, and the other validation scores and every test score epoch 2: the stage
    must keep epoch 1's weights and report epoch 1's row. The table is evaluate's, with its
    score columns set by hand."""
    project = reproduced.path
    table = pd.read_csv(project / "eval/scores.csv")
    assert list(table["epoch"]) == [1, 2] and set(table["weights"]) == {"raw"}
    better, worse = {"loss": 0.2, "accuracy": 0.9, "f1": 0.8}, {"loss": 0.7, "accuracy": 0.4, "f1": 0.3}
    val = {
        name: [better[name], worse[name]] if f"val_{name}" == metric else [worse[name], better[name]] for name in better
    }
    for name in better:
        table[f"val_{name}"] = val[name]
        table[f"test_{name}"] = [worse[name] + 0.01, better[name] + 0.01]
    table.to_csv(project / "eval/scores.csv", index=False)
    set_checked_params(project, **{"select.metric": metric, "select.mode": mode})

    stage("select_best", project)

    metrics = json.loads((project / "best/metrics.json").read_text())
    assert metrics["epoch"] == 1
    # `dvc metrics show` prints the keys in the file's order: the choice, validation, test, the
    # parameter counts, as the README lists them.
    assert list(metrics) == [
        "epoch", "weights", "tta", "val_loss", "val_accuracy", "val_f1", "test_loss", "test_accuracy", "test_f1",
        "trainable_params", "total_params",
    ]  # fmt: skip
    for name in better:  # epoch 1's row, by hand
        assert metrics[f"val_{name}"] == pytest.approx(val[name][0])
        assert metrics[f"test_{name}"] == pytest.approx(worse[name] + 0.01)
    chosen = torch.load(project / "checkpoints/epoch_001.pt", weights_only=True)["model_state_dict"]
    kept = torch.load(project / "models/best.pt", weights_only=True)["model_state_dict"]
    assert kept.keys() == chosen.keys() and all(torch.equal(kept[key], chosen[key]) for key in chosen)
    # As text: the plots' template (.dvc/plots/epochs_with_choice.json) draws its red rule where
    # `datum.selected == 1`, which a column of True and False (equal to 1 and 0 in Python) never meets.
    epochs = pd.read_csv(project / "best/epochs.csv", dtype={"selected": str})
    assert list(epochs["selected"]) == ["1", "0"]
    confusion = pd.read_csv(project / "best/confusion.csv")
    assert confusion.equals(pd.read_csv(project / "eval/predictions/epoch_001.csv")[["actual", "predicted"]])


TEST_ACCURACY = {(1, "raw"): 0.6, (1, "ema"): 0.25, (2, "raw"): 0.7, (2, "ema"): 0.35}


@pytest.mark.parametrize("epoch_2_average", [0.5, 0.2])
def test_the_stage_keeps_a_winning_average_whole_and_on_a_tie_the_earlier_epoch(
    project: Path, epoch_2_average: float
) -> None:
    """`python -m pipeline.select_best` on two epochs of raw and averaged weights (train.ema_decay)
    scored by hand, where epoch 1's average ties epoch 2's raw weights on val_loss and the rest
    score worse: the earlier epoch wins, so best.pt must hold epoch 1's averaged weights and its
    test-time augmentation, metrics.json its parameter counts, the confusion table must be that
    average's predictions, and best/epochs.csv the raw weights' rows with epoch 1 marked. With
    epoch 2's average at 0.2 it wins instead (its row is the table's fourth, the raw weights'
    second)."""
    winner = (1, "ema") if epoch_2_average > 0.3 else (2, "ema")
    stage("check_params", project)  # default select: val_loss, min
    classes = ["a", "b"]
    built = build_model("resnet18", None, classes, 16)
    spec, start = built.spec.to_dict(), built.model.state_dict()
    states = {}  # four weights of one model, each of its float tensors shifted by its own amount
    for shift, key in enumerate([(1, "raw"), (1, "ema"), (2, "raw"), (2, "ema")], start=1):
        states[key] = {name: t + shift / 100 if t.is_floating_point() else t for name, t in start.items()}
    paths = ["images/a/0.png", "images/b/1.png"]  # the test images, of classes a and b
    for path, colour in zip(paths, [(200, 30, 30), (30, 30, 200)], strict=True):
        (project / path).parent.mkdir(parents=True)
        Image.new("RGB", (16, 16), colour).save(project / path)
    # Each file's own answers, to tell which one the confusion table was made from.
    answers = {(1, "raw"): ["a", "a"], (1, "ema"): ["b", "a"], (2, "raw"): ["a", "b"], (2, "ema"): ["b", "b"]}
    (project / "eval/predictions").mkdir(parents=True)
    rows = []
    for epoch in (1, 2):
        save_checkpoint(
            {**spec, "epoch": epoch, "model_state_dict": states[epoch, "raw"], "ema_state_dict": states[epoch, "ema"],
             "optimizer_state_dict": {}, "scheduler_state_dict": {"last_epoch": epoch}, "ema_updates": 4 * epoch,
             "trainable_params": 10 * epoch,
             "total_params": 100 + epoch},
            project / f"checkpoints/epoch_{epoch:03d}.pt",
        )  # fmt: skip
        for weights, loss in {"raw": 0.4 if epoch == 1 else 0.3, "ema": 0.3 if epoch == 1 else epoch_2_average}.items():
            scores = {name: 0.5 for name in REPORTED} | {
                "val_loss": loss,
                "test_accuracy": TEST_ACCURACY[epoch, weights],
            }
            rows.append({"epoch": epoch, "weights": weights, "tta": "hflip", **scores})
            name = f"epoch_{epoch:03d}{'' if weights == 'raw' else '_ema'}.csv"
            frame = {"path": paths, "actual": ["a", "b"], "predicted": answers[epoch, weights], "confidence": 0.7}
            pd.DataFrame(frame).to_csv(project / "eval/predictions" / name, index=False)
    pd.DataFrame(rows).to_csv(project / "eval/scores.csv", index=False)

    log = stage("select_best", project).stderr

    metrics = json.loads((project / "best/metrics.json").read_text())
    epoch = winner[0]
    # Epochs, not table rows; the chosen row's val loss and test accuracy (not its val accuracy, 0.5).
    val_loss = min(0.3, epoch_2_average)
    accuracy = TEST_ACCURACY[winner]  # the chosen row's, not the best of any row (the raw weights' 0.7)
    numbers = f"val loss {val_loss:.4f}, test accuracy {accuracy:.3f}"
    assert f"best: epoch {epoch} of 2 (ema weights) by val_loss (min): {numbers}" in log
    assert (metrics["epoch"], metrics["weights"], metrics["val_loss"]) == (*winner, val_loss)
    # The chosen checkpoint's parameter counts (each epoch's differ, as under gradual unfreezing), not the last one's.
    assert (metrics["trainable_params"], metrics["total_params"]) == (10 * epoch, 100 + epoch)
    best = torch.load(project / "models/best.pt", weights_only=True)
    assert all(torch.equal(best["model_state_dict"][key], value) for key, value in states[winner].items())
    # The weights for using the model, named, with none of the state that resumes a run (docs/design.md).
    assert (best["tta"], best["weights"]) == ("hflip", winner[1])
    assert not {"optimizer_state_dict", "scheduler_state_dict", "ema_state_dict", "ema_updates"} & best.keys()
    # The export is of those weights too: models/best.pt2 computes what torchvision's resnet18
    # holding them computes.
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exported = torch.export.load(project / "models/best.pt2").module()(images)
    expected = torchvision_model_logits({**spec, "model_state_dict": states[winner]}, images)
    torch.testing.assert_close(exported, expected, rtol=1e-5, atol=1e-5)
    assert pd.read_csv(project / "best/confusion.csv")["predicted"].tolist() == answers[winner]
    # The picture of the mistakes is the chosen weights' too: its title names them and counts their mistakes.
    wrong = sum(a != b for a, b in zip(["a", "b"], answers[winner], strict=True))
    title = f"All {wrong} mistakes on the 2 test images, the most confident first (resnet18, epoch {epoch}, ema"
    assert_title_line(np.asarray(Image.open(project / "best/mistakes.png").convert("RGB")), 0, title)
    epochs = pd.read_csv(project / "best/epochs.csv")
    assert list(zip(epochs["epoch"], epochs["weights"], epochs["selected"], strict=True)) == [
        (1, "raw", int(epoch == 1)),
        (2, "raw", int(epoch == 2)),
    ]
