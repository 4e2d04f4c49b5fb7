"""select-best's per-class table and its list and picture of the mistakes
(pipeline.interpretation, pipeline.gallery), against hand counts and hand-drawn pixels."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.cli import UserError
from pipeline.engine import score
from pipeline.gallery import PANEL, Tile, draw_gallery, heat_colours, overlay, panel
from pipeline.interpretation import mistakes, model_inputs, per_class_scores
from pipeline.models import ModelSpec
from tests.helpers import located

CLASSES = ["a", "b", "c"]
# (actual, predicted, how many): a is mostly right, b mostly taken for a, c never recognised.
COUNTS = [("a", "a", 3), ("a", "b", 1), ("b", "b", 1), ("b", "a", 2), ("c", "b", 2)]


def predictions(counts: list[tuple[str, str, int]]) -> pd.DataFrame:
    rows = [(actual, predicted) for actual, predicted, n in counts for _ in range(n)]
    return pd.DataFrame(rows, columns=["actual", "predicted"])


def test_per_class_scores_match_a_hand_count_weakest_first() -> None:
    table = per_class_scores(predictions(COUNTS), CLASSES)
    # By hand: a is predicted 5 times (3 right), b 4 times (1 right), c never.
    expected = pd.DataFrame(
        {
            "class": ["c", "b", "a"],
            "f1": [0.0, 2 * 1 / (3 + 4), 2 * 3 / (4 + 5)],
            "precision": [0.0, 1 / 4, 3 / 5],
            "recall": [0 / 2, 1 / 3, 3 / 4],
            "support": [2, 3, 4],
            "confused_with": ["b", "a", "b"],
            "confused": [2, 2, 1],
        }
    )
    pd.testing.assert_frame_equal(table.reset_index(drop=True), expected.round(4), check_dtype=False)


def test_the_table_s_mean_f1_is_the_reported_macro_f1() -> None:
    table = per_class_scores(predictions(COUNTS), CLASSES)
    index = {name: i for i, name in enumerate(CLASSES)}
    frame = predictions(COUNTS)
    targets = torch.tensor([index[name] for name in frame["actual"]])
    logits = torch.nn.functional.one_hot(torch.tensor([index[name] for name in frame["predicted"]]), 3).float()
    assert table["f1"].mean() == pytest.approx(score(logits, targets, 3)["f1"], abs=1e-4)


def test_ties_in_f1_go_to_the_lower_recall_first_then_the_name() -> None:
    # x: recall 1/2, precision 1 (F1 2/3); y: recall 1, precision 1/2 (F1 2/3); z and w: perfect.
    counts = [("x", "x", 1), ("x", "y", 1), ("y", "y", 1), ("w", "w", 1), ("z", "z", 1)]
    table = per_class_scores(predictions(counts), ["z", "y", "x", "w"])
    assert table["class"].tolist() == ["x", "y", "w", "z"]
    assert table["confused_with"].tolist() == ["y", "", "", ""]


def test_mistakes_most_confident_first_ties_by_path() -> None:
    frame = pd.DataFrame(
        {
            "path": ["p/3", "p/1", "p/2", "p/0", "p/4"],
            "actual": ["a", "a", "b", "b", "c"],
            "predicted": ["b", "b", "b", "a", "a"],
            "confidence": ["0.6", "0.9", "0.99", "0.6", "0.7"],  # as read back: text
        }
    )
    wrong = mistakes(frame)
    assert wrong["path"].tolist() == ["p/1", "p/4", "p/0", "p/3"]  # p/2 was right
    assert wrong["probability"].tolist() == [0.9, 0.7, 0.6, 0.6]


def test_small_inputs_are_shown_pixel_for_pixel() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    shown = np.asarray(panel(pixels))
    factor = PANEL // 32
    assert (shown == pixels.transpose(1, 2, 0).repeat(factor, axis=0).repeat(factor, axis=1)).all()


def test_heat_is_jet_coloured_and_laid_over_the_image_where_it_is() -> None:
    assert heat_colours(np.array([0.0, 0.5, 1.0])).tolist() == [[0, 0, 128], [128, 255, 128], [128, 0, 0]]
    grey = panel(np.full((3, 32, 32), 100, np.uint8))
    heat = np.zeros((32, 32))
    heat[20:28, 4:12] = 1.0  # hot low on the left
    shown = np.asarray(overlay(grey, heat)).astype(int)
    hot, cold = shown[24 * 4, 8 * 4], shown[4 * 4, 24 * 4]
    assert (hot[0] > hot[2]) and (cold[2] > cold[0])  # red where it is hot, blue where it is not
    assert np.abs(hot - [(100 + 128) / 2, 100 / 2, 100 / 2]).max() <= 1  # half the image, half jet's dark red


def test_the_gallery_puts_each_image_and_its_heat_side_by_side_in_rows_of_four() -> None:
    rng = np.random.default_rng(1)
    tiles = [
        Tile(rng.integers(0, 256, (3, 16, 16), dtype=np.uint8), rng.random((16, 16)), "cat", "dog", 0.9)
        for _ in range(5)
    ]
    picture = np.asarray(draw_gallery(tiles, ["title"]))
    wide_enough = 4 * 2 * PANEL
    assert picture.shape[1] >= wide_enough and picture.shape[1] < wide_enough + 100
    # The fifth tile starts a second row: its image appears below the first's, at the same x.
    first, fifth = (np.asarray(panel(tile.pixels)) for tile in (tiles[0], tiles[4]))
    found = [located(picture, image) for image in (first, fifth)]
    assert found[0][1] == found[1][1] and found[1][0] > found[0][0] + PANEL


def test_no_mistakes_is_a_picture_that_says_so() -> None:
    picture = draw_gallery([], ["No mistakes on the test split (12 images)."])
    pixels = np.asarray(picture)
    assert picture.width > 200 and (pixels < 128).any()  # the line of text, in a picture of its own


def test_an_image_gone_since_prepare_is_an_error_naming_it(tmp_path: Path) -> None:
    spec = ModelSpec("resnet18", "fc", ["a", "b"], 32, [0.5] * 3, [0.25] * 3)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    for path in (tmp_path / "gone.png", tmp_path / "broken.png"):
        with pytest.raises(UserError, match=f"{path} could not be read for best/mistakes.png.*rerun prepare"):
            model_inputs([str(path)], spec)
