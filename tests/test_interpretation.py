"""select-best's per-class table and its list and picture of the mistakes
(pipeline.interpretation, pipeline.gallery), against hand counts and hand-drawn pixels."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from pipeline.cli import UserError
from pipeline.engine import score
from pipeline.gallery import GAP, PANEL, TEXT, Tile, draw_gallery, font, heat_colours, label, overlay, panel
from pipeline.interpretation import mistakes, model_inputs, per_class_scores, write_interpretation
from pipeline.models import Built, ModelSpec, build_model
from tests.helpers import assert_title_line, located

CLASSES = ["a", "b", "c"]
# (actual, predicted, how many): a is mostly right, b mostly taken for a, c never recognised.
COUNTS = [("a", "a", 3), ("a", "b", 1), ("b", "b", 1), ("b", "a", 2), ("c", "b", 2)]


def predictions(counts: list[tuple[str, str, int]]) -> pd.DataFrame:
    rows = [(actual, predicted) for actual, predicted, n in counts for _ in range(n)]
    return pd.DataFrame(rows, columns=["actual", "predicted"])


def test_per_class_scores_match_a_hand_count_weakest_first() -> None:
    # COUNTS, and one b more taken for c: b's mistakes go two ways, so "confused" (how often
    # it was taken for a, the class it is most confused with) is not all of its mistakes (3).
    table = per_class_scores(predictions([*COUNTS, ("b", "c", 1)]), CLASSES)
    # By hand: a is predicted 5 times (3 right), b 4 times (1 right), c once (wrongly).
    expected = pd.DataFrame(
        {
            "class": ["c", "b", "a"],
            "f1": [0.0, 2 * 1 / (4 + 4), 2 * 3 / (4 + 5)],
            "precision": [0 / 1, 1 / 4, 3 / 5],
            "recall": [0 / 2, 1 / 4, 3 / 4],
            "support": [2, 4, 4],
            "confused_with": ["b", "a", "b"],
            "confused": [2, 2, 1],
        }
    )
    pd.testing.assert_frame_equal(table.reset_index(drop=True), expected.round(4), check_dtype=False)
    # Counts are whole numbers, so best/classes.csv writes 2, not 2.0.
    assert table["support"].dtype.kind == table["confused"].dtype.kind == "i"


def test_the_table_s_mean_f1_is_the_reported_macro_f1() -> None:
    table = per_class_scores(predictions(COUNTS), CLASSES)
    index = {name: i for i, name in enumerate(CLASSES)}
    frame = predictions(COUNTS)
    targets = torch.tensor([index[name] for name in frame["actual"]])
    logits = torch.nn.functional.one_hot(torch.tensor([index[name] for name in frame["predicted"]]), 3).float()
    assert table["f1"].mean() == pytest.approx(score(logits, targets, 3)["f1"], abs=1e-4)


def test_ties_in_f1_go_to_the_lower_recall_first_then_the_name() -> None:
    # q: recall 1/2, precision 1 (F1 2/3); p: recall 1, precision 1/2 (F1 2/3); z and w: perfect.
    # q, the lower recall, comes first though p comes first by name.
    counts = [("q", "q", 1), ("q", "p", 1), ("p", "p", 1), ("w", "w", 1), ("z", "z", 1)]
    table = per_class_scores(predictions(counts), ["z", "p", "q", "w"])
    assert table["class"].tolist() == ["q", "p", "w", "z"]
    assert table["confused_with"].tolist() == ["p", "", "", ""]
    # q, w and z are each predicted once, rightly: precision 1 (p: 1 of 2). F1 is counted from
    # hits, support and calls, so a wrong precision would not show in it.
    assert table.set_index("class")["precision"].to_dict() == {"q": 1.0, "p": 0.5, "w": 1.0, "z": 1.0}


def test_mistakes_most_confident_first_ties_by_path() -> None:
    frame = pd.DataFrame(
        {
            "path": ["p/3", "p/1", "p/2", "p/0", "p/4"],
            "actual": ["a", "a", "b", "b", "c"],
            "predicted": ["b", "b", "b", "a", "a"],
            # As read back: text. p/1's and p/4's differ in the third decimal, as evaluate's
            # 6 decimals do, so that two decimals (the picture's "p = 0.90") would tie them.
            "confidence": ["0.6", "0.896", "0.99", "0.6", "0.904"],
        }
    )
    wrong = mistakes(frame)
    assert list(wrong.columns) == ["path", "actual", "predicted", "probability"]  # best/mistakes.csv's, in order
    assert wrong["path"].tolist() == ["p/4", "p/1", "p/0", "p/3"]  # p/2 was right
    assert wrong["probability"].tolist() == [0.904, 0.896, 0.6, 0.6]  # evaluate's, as it wrote them
    assert wrong["actual"].tolist() == ["c", "a", "b", "a"] and wrong["predicted"].tolist() == ["a", "b", "a", "b"]


def test_small_inputs_are_shown_pixel_for_pixel() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    shown = np.asarray(panel(pixels))
    factor = PANEL // 32
    assert (shown == pixels.transpose(1, 2, 0).repeat(factor, axis=0).repeat(factor, axis=1)).all()


def test_heat_is_jet_coloured_and_laid_over_the_image_where_it_is() -> None:
    # jet by hand: dark blue, blue at 1/8, cyan at 3/8, yellow at 5/8, red at 7/8, dark red
    anchors = np.array([0.0, 0.125, 0.375, 0.5, 0.625, 0.875, 1.0])
    expected = [[0, 0, 128], [0, 0, 255], [0, 255, 255], [128, 255, 128], [255, 255, 0], [255, 0, 0], [128, 0, 0]]
    assert heat_colours(anchors).tolist() == expected
    grey = panel(np.full((3, 32, 32), 100, np.uint8))
    heat = np.zeros((32, 32))
    heat[20:28, 4:12] = 1.0  # hot low on the left
    shown = np.asarray(overlay(grey, heat)).astype(int)
    hot, cold = shown[24 * 4, 8 * 4], shown[4 * 4, 24 * 4]
    assert (hot[0] > hot[2]) and (cold[2] > cold[0])  # red where it is hot, blue where it is not
    assert np.abs(hot - [(100 + 128) / 2, 100 / 2, 100 / 2]).max() <= 1  # half the image, half jet's dark red
    # Enlarged smoothly, as Pillow's bilinear resize enlarges it: random heat at the demo's 32 px,
    # so that nearest-neighbour's 4 x 4 blocks would stand out everywhere, not only at edges.
    heat = np.random.default_rng(2).random((32, 32))
    smooth = np.asarray(Image.fromarray(heat.astype(np.float32), "F").resize((PANEL, PANEL), Image.Resampling.BILINEAR))
    jet = np.array([[0, 0, 127.5], [0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0], [127.5, 0, 0]])
    colours = np.stack([np.interp(smooth, anchors[[0, 1, 2, 4, 5, 6]], channel) for channel in jet.T], axis=-1)
    grey = Image.new("RGB", (PANEL, PANEL), (100, 100, 100))
    assert np.abs(np.asarray(overlay(grey, heat)) - (100 + colours) / 2).max() <= 1.5


def test_the_gallery_puts_each_image_and_its_heat_side_by_side_in_rows_of_four() -> None:
    rng = np.random.default_rng(1)
    tiles = [
        Tile(rng.integers(0, 256, (3, 16, 16), dtype=np.uint8), rng.random((16, 16)), "cat", "dog", 0.9)
        for _ in range(5)
    ]
    picture = np.asarray(draw_gallery(tiles, ["title"]))
    wide_enough = 4 * 2 * PANEL
    assert picture.shape[1] >= wide_enough and picture.shape[1] < wide_enough + 100
    # Two rows, no more, by hand: the title line between gaps, then each row's images, their two
    # lines of text and a gap.
    line = TEXT + 4
    assert picture.shape[0] == GAP + line + GAP + 2 * (PANEL + 2 * line + GAP)
    # The fifth tile starts a second row: its image appears below the first's, at the same x.
    first, fifth = (np.asarray(panel(tile.pixels)) for tile in (tiles[0], tiles[4]))
    found = [located(picture, image) for image in (first, fifth)]
    assert found[0][1] == found[1][1] and found[1][0] > found[0][0] + PANEL
    # By hand, GAP pixels apart: the image, its heat beside it, then the next tile's image.
    second = located(picture, np.asarray(panel(tiles[1].pixels)))
    assert second == (found[0][0], found[0][1] + 2 * PANEL + 2 * GAP)
    # Fewer mistakes than a row: as many columns as tiles (a short title), no blank ones.
    two = draw_gallery(tiles[:2], ["title"])
    assert two.width == GAP + 2 * (2 * PANEL + GAP + GAP)


def test_a_long_class_name_is_cut_so_that_its_line_fits_its_tile() -> None:
    """A class name too long for a tile is cut with an ellipsis so that the whole line, the
    probability after the name included, fits the tile's width (an image and its heat map);
    one that fits is drawn whole."""
    face, width = font(), 2 * PANEL + GAP
    line = label("predicted: ", "a_class_name_much_longer_than_any_tile_is_wide", "  p = 0.93", width, face)
    assert line.startswith("predicted: a_class") and line.endswith("…  p = 0.93")
    assert face.getlength(line) <= width

    # In the picture: a true class wider than one image (128 px) but not than the tile, and a
    # predicted one that fits the tile alone but not with its probability after it.
    actual, predicted = "common_kingfisher", "eurasian_oystercatcher"
    assert PANEL < face.getlength(f"true: {actual}") <= width
    assert face.getlength(f"predicted: {predicted}") <= width < face.getlength(f"predicted: {predicted}  p = 0.93")
    rng = np.random.default_rng(3)
    tiles = [Tile(rng.integers(0, 256, (3, 32, 32), dtype=np.uint8), rng.random((32, 32)), actual, predicted, 0.93)] * 2
    picture = np.asarray(draw_gallery(tiles, ["title"]))
    # By hand, the longest start of the name whose line fits, with the ellipsis and probability.
    kept = max(n for n in range(len(predicted)) if face.getlength(f"predicted: {predicted[:n]}…  p = 0.93") <= width)
    line_height = TEXT + 4
    top = GAP + line_height + GAP + PANEL + 2  # under the first tile's images, below one title line
    for k, (text, colour) in enumerate(
        [(f"true: {actual}", (0, 110, 0)), (f"predicted: {predicted[:kept]}…  p = 0.93", (190, 0, 0))]
    ):
        strip = Image.new("RGB", (width + GAP, line_height), (255, 255, 255))  # the tile, and the gap after it
        ImageDraw.Draw(strip).text((0, 0), text, fill=colour, font=face)
        rows = slice(top + k * line_height, top + (k + 1) * line_height)
        assert (picture[rows, GAP : GAP + width + GAP] == np.asarray(strip)).all(), text


def test_no_mistakes_is_a_picture_that_says_so() -> None:
    picture = draw_gallery([], ["No mistakes on the test split (12 images)."])
    pixels = np.asarray(picture)
    assert picture.width > 200 and (pixels < 128).any()  # the line of text, in a picture of its own


@pytest.mark.skipif(sys.platform != "linux", reason="Pillow looks for fonts under the XDG folders on Linux only")
def test_no_mistakes_without_dejavu_sans_is_said_in_pillow_s_own_font_at_the_gallery_s_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a machine without DejaVu Sans (slim images) the picture is still drawn, its text in
    Pillow's own font at the gallery's TEXT size, not at that font's 10 px default."""
    monkeypatch.chdir(tmp_path)
    for folder in ("XDG_DATA_HOME", "XDG_DATA_DIRS"):  # where Pillow looks for a font by name on Linux
        monkeypatch.setenv(folder, str(tmp_path))
    with pytest.raises(OSError):
        ImageFont.truetype("DejaVuSans.ttf", TEXT)  # as on such a machine
    title = "No mistakes on the test split (12 images)."
    picture = np.asarray(draw_gallery([], [title]))
    face = ImageFont.load_default(TEXT)
    assert picture.shape[1] == int(2 * GAP + face.getlength(title))  # the title is wider than a tile
    strip = Image.new("RGB", (picture.shape[1] - GAP, TEXT + 4), (255, 255, 255))
    ImageDraw.Draw(strip).text((0, 0), title, fill=(0, 0, 0), font=face)
    assert (picture[GAP : GAP + TEXT + 4, GAP:] == np.asarray(strip)).all()


def test_an_image_gone_since_prepare_is_an_error_naming_it(tmp_path: Path) -> None:
    spec = ModelSpec("resnet18", "fc", ["a", "b"], 32, [0.5] * 3, [0.25] * 3)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    for path in (tmp_path / "gone.png", tmp_path / "broken.png"):
        with pytest.raises(UserError, match=f"{path} could not be read for best/mistakes.png.*rerun prepare"):
            model_inputs([str(path)], spec)


def untrained_checkpoint(arch: str, classes: list[str], size: int, epoch: int) -> tuple[Built, dict]:
    """A model of random weights (seed 0) and the checkpoint of it that select-best would read."""
    torch.manual_seed(0)
    built = build_model(arch, None, classes, size)
    return built, {**built.spec.to_dict(), "model_state_dict": built.model.state_dict(), "epoch": epoch}


def test_class_names_with_line_breaks_are_drawn_escaped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Linux allows a line break (or another character that is not printable) in a class
    folder's name; select-best's picture of the mistakes still draws, naming the class with
    the break written as Python writes it (`b\\nc`), and mistakes.csv keeps the name as it is."""
    monkeypatch.chdir(tmp_path)
    classes = ["a", "b\nc", "d\u2029e"]
    _, checkpoint = untrained_checkpoint("resnet18", classes, 32, epoch=1)
    rows = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        rows.append((str(path), classes[i], classes[(i + 1) % 3], "0.9"))
    write_interpretation(checkpoint, pd.DataFrame(rows, columns=["path", "actual", "predicted", "confidence"]))
    with Image.open("best/mistakes.png") as picture:
        assert picture.format == "PNG"  # written whole, not cut short by the failing label
    listed = pd.read_csv("best/mistakes.csv", dtype=str, keep_default_na=False)
    assert sorted(listed["actual"]) == sorted(classes)
    assert label("true: ", "b\nc", "", 10_000, font()) == "true: b\\nc"
    assert label("", "d\u2029e", "", 10_000, font()) == "d\\u2029e"


@pytest.mark.parametrize(
    ("wrong", "title"),
    [
        (16, "All 16 mistakes on the 19 test images, the most confident first (resnet18, epoch 2, raw weights)."),
        (0, "No mistakes on the test split (3 images)."),
    ],
)
def test_the_title_says_all_mistakes_when_all_are_shown_and_counts_the_test_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wrong: int, title: str
) -> None:
    """write_interpretation, as select-best runs it: exactly as many mistakes as the picture
    shows (16) are all of them; without any, the title counts the test images (3 right).

    At the demo's 32 px, resnet18's layer4 is 1 x 1, so its heat maps come from layer3, 2 x 2
    (docs/design.md): beside each image, Grad-CAM at layer3 by hand (torch's autograd on the
    layer's output), not the one colour of a 1 x 1 map. The picture test below runs at 64 px,
    where layer4 would be the layer at any larger size too."""
    monkeypatch.chdir(tmp_path)
    classes = ["ant", "bee"]
    built, checkpoint = untrained_checkpoint("resnet18", classes, 32, epoch=2)
    rows, pixels = [], []
    for i in range(wrong + 3):
        path = tmp_path / f"{i:02d}.png"
        pixels.append(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8))
        Image.fromarray(pixels[-1]).save(path)
        predicted = classes[(i + 1) % 2] if i < wrong else classes[i % 2]
        rows.append((str(path), classes[i % 2], predicted, f"{0.95 - 0.01 * i:.2f}"))
    write_interpretation(checkpoint, pd.DataFrame(rows, columns=["path", "actual", "predicted", "confidence"]))
    picture = np.asarray(Image.open("best/mistakes.png").convert("RGB"))
    assert_title_line(picture, 0, title)
    if not wrong:
        return

    model = built.model.eval()
    maps: list[torch.Tensor] = []
    model.layer3.register_forward_hook(lambda module, args, output: maps.append(output))
    mean, std = torch.tensor(checkpoint["mean"]).view(3, 1, 1), torch.tensor(checkpoint["std"]).view(3, 1, 1)
    inputs = torch.stack([(torch.from_numpy(image).permute(2, 0, 1) / 255 - mean) / std for image in pixels[:wrong]])
    logits = model(inputs)
    assert maps[0].shape[-2:] == (2, 2)
    predicted = torch.tensor([classes.index(row[2]) for row in rows[:wrong]])
    (gradients,) = torch.autograd.grad(logits[torch.arange(wrong), predicted].sum(), maps[0])
    cam = F.relu((gradients.mean(dim=(2, 3), keepdim=True) * maps[0]).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=(32, 32), mode="bilinear", align_corners=False)[:, 0].detach()
    cam = (cam / cam.amax(dim=(1, 2), keepdim=True).clamp(min=1e-12)).numpy()
    assert (cam.std(axis=(1, 2)) > 0.1).sum() >= wrong // 2  # heat that varies over most images
    for image, heat in zip(pixels[:wrong], cam, strict=True):
        enlarged = image.repeat(4, axis=0).repeat(4, axis=1)  # 32 px shown pixel for pixel at 128
        row, column = located(picture, enlarged)
        shown = picture[row : row + PANEL, column + PANEL + GAP : column + 2 * PANEL + GAP].astype(int)
        assert np.abs(shown - np.asarray(overlay(Image.fromarray(enlarged), heat))).max() <= 2


def test_the_picture_shows_the_most_confident_mistakes_each_under_its_predicted_class_s_heat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """write_interpretation, as select-best runs it, on 17 mistakes of a random resnet18 at 64 px:
    the 16 most confident are drawn in reading order, most confident first, the 17th left out;
    beside each image, CAM by hand for its predicted class (Grad-CAM equals CAM for a network
    that ends in global pooling and one linear layer: tests/test_heatmaps.py), not for its true
    one; under it, its true class in green, then the predicted one in red."""
    monkeypatch.chdir(tmp_path)
    classes = ["ant", "bee", "cow"]
    built, checkpoint = untrained_checkpoint("resnet18", classes, 64, epoch=3)  # no resize margin: 64 px in
    # As select-best's best.pt holds a winning moving average: the title names those weights
    # (the test above, a checkpoint that names none, raw ones).
    checkpoint["weights"] = "ema"
    rng = np.random.default_rng(0)
    pixels, rows = [], []
    shown = 16  # docs/design.md: "its 16 most confident test mistakes"
    for i in range(shown + 1):  # image i is the i-th most confident mistake
        coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
        pixels.append(np.array(coarse.resize((64, 64), Image.Resampling.BICUBIC)))
        path = tmp_path / f"{i:02d}.png"
        Image.fromarray(pixels[-1]).save(path)
        rows.append((str(path), classes[i % 3], classes[(i + 1) % 3], f"{0.95 - 0.03 * i:.2f}"))
    hits = [(rows[0][0], label, label, "0.99") for label in classes]  # three test images it gets right
    frame = pd.DataFrame(rows + hits, columns=["path", "actual", "predicted", "confidence"])
    frame = frame.sample(frac=1, random_state=0)

    write_interpretation(checkpoint, frame)

    picture = np.asarray(Image.open("best/mistakes.png").convert("RGB"))
    # The title counts the mistakes, those shown, and the test images: 16 of 17 of 20; its second
    # line says what the two pictures of a tile are (the tiles start below it).
    face, line = font(), TEXT + 4
    title = "The 16 most confident of 17 mistakes on the 20 test images, the most confident first (resnet18, epoch 3, "
    title += "ema weights)."
    assert_title_line(picture, 0, title)
    assert_title_line(picture, 1, "Left: the model's input before normalisation. Right: Grad-CAM for the predicted")
    enlarged = [image.repeat(2, axis=0).repeat(2, axis=1) for image in pixels]  # 64 px shown pixel for pixel at 128
    corners = [located(picture, image) for image in enlarged[:shown]]
    assert sorted(corners) == corners  # rows of tiles, each left to right: most confident first
    with pytest.raises(AssertionError):
        located(picture, enlarged[shown])  # the least confident is only listed in mistakes.csv

    model = built.model.eval()
    maps: list[torch.Tensor] = []
    model.layer4.register_forward_hook(lambda module, args, output: maps.append(output))  # 2 x 2 at 64 px
    mean, std = torch.tensor(checkpoint["mean"]).view(3, 1, 1), torch.tensor(checkpoint["std"]).view(3, 1, 1)
    inputs = torch.stack([(torch.from_numpy(image).permute(2, 0, 1) / 255 - mean) / std for image in pixels])
    with torch.no_grad():
        model(inputs[:shown])

    def cam(i: int, label: str) -> np.ndarray:
        heat = F.relu(torch.einsum("k,khw->hw", model.fc.weight[classes.index(label)], maps[0][i]))
        heat = F.interpolate(heat[None, None], size=(64, 64), mode="bilinear", align_corners=False)[0, 0]
        return (heat / heat.max()).detach().numpy()

    for i, (row, column) in enumerate(corners):
        _, actual, predicted, probability = rows[i]
        shown = picture[row : row + PANEL, column + PANEL + GAP : column + 2 * PANEL + GAP].astype(int)
        right, wrong = (np.asarray(overlay(Image.fromarray(enlarged[i]), cam(i, name))) for name in (predicted, actual))
        assert np.abs(shown - right).max() <= 2, i
        assert np.abs(shown - wrong).max() > 20, i  # the true class's heat is another picture
        for k, (text, colour) in enumerate(
            [(f"true: {actual}", (0, 110, 0)), (f"predicted: {predicted}  p = {probability}", (190, 0, 0))]
        ):
            strip = Image.new("RGB", (2 * PANEL, line), (255, 255, 255))
            ImageDraw.Draw(strip).text((0, 0), text, fill=colour, font=face)
            top = row + PANEL + 2 + k * line
            assert (picture[top : top + line, column : column + 2 * PANEL] == np.asarray(strip)).all(), (i, text)


def test_a_model_without_a_layer_for_grad_cam_gets_the_picture_without_heat_maps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/design.md: timm's PiT pools its tokens to coarser grids inside its stages, so it
    has neither a square map nor patch tokens to weigh: write_interpretation, as select-best
    runs it, still draws every mistake, with no heat beside it, and says why. The images are
    grey, so any of Grad-CAM's jet colours in the picture would show as blue."""
    monkeypatch.chdir(tmp_path)
    classes = ["ant", "bee"]
    built, checkpoint = untrained_checkpoint("timm/pit_ti_224", classes, 224, epoch=1)
    rows = []
    for i in range(3):
        grey = np.random.default_rng(i).integers(0, 256, (224, 224), dtype=np.uint8)
        Image.fromarray(grey).convert("RGB").save(tmp_path / f"{i}.png")
        rows.append((str(tmp_path / f"{i}.png"), classes[i % 2], classes[(i + 1) % 2], f"{0.9 - 0.1 * i:.2f}"))
    frame = pd.DataFrame(rows, columns=["path", "actual", "predicted", "confidence"])

    with caplog.at_level("INFO"):
        write_interpretation(checkpoint, frame)

    assert "No heat maps: timm/pit_ti_224 has no square feature map or patch tokens for Grad-CAM." in caplog.text
    picture = np.asarray(Image.open("best/mistakes.png").convert("RGB")).astype(int)
    # The picture says so itself, under the title, where the heat maps' layer is named otherwise.
    why = "Left: the model's input before normalisation. No heat maps: timm/pit_ti_224 has no square feature map"
    assert_title_line(picture, 1, why)
    for pixels in model_inputs(frame["path"].tolist(), built.spec):
        # every mistake is drawn, its 224 px shrunk to 128 as Pillow's Lanczos filter shrinks it
        shrunk = Image.fromarray(pixels.transpose(1, 2, 0)).resize((PANEL, PANEL), Image.Resampling.LANCZOS)
        located(picture, np.asarray(shrunk))
    red, green, blue = picture[..., 0], picture[..., 1], picture[..., 2]
    assert not ((blue > red + 40) & (blue > green + 40)).any()  # and no heat over any of them
