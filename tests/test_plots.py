"""`dvc plots show`: the curves with the chosen epoch marked and the confusion matrix, and a
check that the HTML page it writes renders in headless Chromium with no network.

DVC's own page loads Vega from a CDN; this project's page template (plots.html_template in
.dvc/config) has Vega inlined instead, so the page is one file that needs no network.
Without Chromium (Debian's `chromium`), the render check is skipped.
"""

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dvc_render.vega import VegaRenderer
from PIL import Image

from pipeline.checkpoints import load_checkpoint
from testing.project import copy_project, run
from tests.conftest import Reproduced
from tests.helpers import located

CHROMIUM = shutil.which("chromium")


def dvc(project: Path, *args: str) -> str:
    return run([sys.executable, "-m", "dvc", *args], project).stdout


@pytest.fixture(scope="module")
def reproduced(reproduced_once: Reproduced, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the reproduced project, shared by this module's tests: they only read it
    (and write dvc_plots/)."""
    return copy_project(reproduced_once.path, tmp_path_factory.mktemp("plots") / "project")


def test_plots_mark_the_chosen_epoch_and_name_the_classes(reproduced: Path) -> None:
    plots = json.loads(dvc(reproduced, "plots", "show", "--json"))["data"]
    chosen = json.loads((reproduced / "best" / "metrics.json").read_text())["epoch"]

    loss = next(spec for name, spec in plots.items() if name.startswith("Loss per epoch"))[0]["content"]
    rows = loss["data"]["values"]
    assert {row["field"] for row in rows} == {"train_loss", "val_loss", "test_loss"}
    assert {int(row["epoch"]) for row in rows if row["selected"] == "1"} == {chosen}
    scores = pd.read_csv(reproduced / "eval" / "scores.csv")
    val = {int(row["epoch"]): float(row["dvc_inferred_y_value"]) for row in rows if row["field"] == "val_loss"}
    assert val == pytest.approx(dict(zip(scores["epoch"], scores["val_loss"], strict=True)))

    confusion = next(spec for name, spec in plots.items() if name.startswith("Confusion"))[0]["content"]
    cells = confusion["data"]["values"]
    assert {row["actual"] for row in cells} == {"5", "6", "7", "8", "9"}


def test_every_plot_dvc_yaml_declares_shows_the_run_s_own_numbers(reproduced: Path) -> None:
    """The rest of the plots page, from `dvc plots show --json` (what the page draws, checked
    without a browser): accuracy with the chosen epoch marked, each epoch's learning rate as
    its checkpoint recorded it, a confusion cell per test image of the chosen checkpoint, the
    per-class table's rows, and the picture of the mistakes."""
    plots = json.loads(dvc(reproduced, "plots", "show", "--json"))["data"]
    chosen = json.loads((reproduced / "best" / "metrics.json").read_text())

    def values(title: str) -> list[dict]:
        return next(spec for name, spec in plots.items() if name.startswith(title))[0]["content"]["data"]["values"]

    accuracy = values("Accuracy per epoch")
    assert {row["field"] for row in accuracy} == {"val_accuracy", "test_accuracy"}
    assert {int(row["epoch"]) for row in accuracy if row["selected"] == "1"} == {chosen["epoch"]}
    scores = pd.read_csv(reproduced / "eval" / "scores.csv")
    shown_test = [row for row in accuracy if row["field"] == "test_accuracy"]
    test = {int(row["epoch"]): float(row["dvc_inferred_y_value"]) for row in shown_test}
    assert test == pytest.approx(dict(zip(scores["epoch"], scores["test_accuracy"], strict=True)))

    # Each epoch's rate at that epoch (x is dvclive's step, labelled epoch), as its checkpoint recorded it.
    checkpoints = [load_checkpoint(path) for path in sorted((reproduced / "checkpoints").glob("epoch_*.pt"))]
    shown = values("Learning rate per epoch")
    assert [int(row["step"]) for row in shown] == [checkpoint["epoch"] for checkpoint in checkpoints] == [1, 2]
    assert [float(row["lr"]) for row in shown] == pytest.approx([checkpoint["lr"] for checkpoint in checkpoints])
    # dvclive's other curves: each epoch's training loss and validation scores, as its checkpoint has them,
    # and the validation accuracy and F1 as evaluate scored each checkpoint apart (eval/scores.csv).
    metrics = reproduced / "dvclive/train/plots/metrics"
    curves = [("train/loss.tsv", "loss"), *((f"val/{name}.tsv", f"val_{name}") for name in ("loss", "accuracy", "f1"))]
    for curve, key in curves:
        table = pd.read_csv(metrics / curve, sep="\t")
        assert list(table["step"]) == [checkpoint["epoch"] for checkpoint in checkpoints], curve
        logged = list(table[Path(curve).stem])
        assert logged == pytest.approx([checkpoint[key] for checkpoint in checkpoints]), curve
        if key in ("val_accuracy", "val_f1"):
            by_epoch = dict(zip(scores["epoch"], scores[key], strict=True))
            assert logged == pytest.approx([by_epoch[step] for step in table["step"]], abs=1e-6), curve

    name = f"epoch_{chosen['epoch']:03d}{'' if chosen['weights'] == 'raw' else '_' + chosen['weights']}.csv"
    predictions = pd.read_csv(reproduced / "eval" / "predictions" / name, dtype=str)
    cells = pd.DataFrame(values("Confusion matrix"))[["actual", "predicted"]]
    pairs = sorted(zip(predictions["actual"], predictions["predicted"], strict=True))
    assert sorted(zip(cells["actual"], cells["predicted"], strict=True)) == pairs

    table = pd.read_csv(reproduced / "best" / "classes.csv", dtype=str, keep_default_na=False)
    shown = pd.DataFrame(values("Per-class scores"))[list(table.columns)]
    pd.testing.assert_frame_equal(shown.reset_index(drop=True), table)

    (image,) = plots["best/mistakes.png"]
    assert Path(image["url"]).read_bytes() == (reproduced / "best" / "mistakes.png").read_bytes()


def test_select_best_tells_which_classes_and_images_the_chosen_checkpoint_gets_wrong(reproduced: Path) -> None:
    """best/classes.csv and best/mistakes.csv against the chosen checkpoint's test predictions,
    counted here with pandas; best/mistakes.png pictures the 16 most confident mistakes."""
    chosen = json.loads((reproduced / "best" / "metrics.json").read_text())
    name = f"epoch_{chosen['epoch']:03d}{'' if chosen['weights'] == 'raw' else '_' + chosen['weights']}.csv"
    predictions = pd.read_csv(reproduced / "eval" / "predictions" / name, dtype=str)
    table = pd.read_csv(reproduced / "best" / "classes.csv", dtype={"class": str}).set_index("class")
    counts = pd.crosstab(predictions["actual"], predictions["predicted"])
    for label, row in table.iterrows():
        hits = counts.at[label, label] if label in counts.columns else 0
        assert row["support"] == counts.loc[label].sum()
        assert row["recall"] == pytest.approx(hits / counts.loc[label].sum(), abs=1e-4)
        called = counts[label].sum() if label in counts.columns else 0
        assert row["precision"] == pytest.approx(hits / called if called else 0.0, abs=1e-4)
    assert table["f1"].is_monotonic_increasing
    assert table["f1"].mean() == pytest.approx(chosen["test_f1"], abs=1e-3)

    wrong = predictions[predictions["actual"] != predictions["predicted"]]
    listed = pd.read_csv(reproduced / "best" / "mistakes.csv", dtype={"actual": str, "predicted": str})
    assert sorted(listed["path"]) == sorted(wrong["path"])
    assert listed["probability"].is_monotonic_decreasing
    # Each mistake's row is its row of evaluate's predictions, in the documented columns: the
    # true and predicted class, and the probability as evaluate wrote it (6 decimals, not rounded).
    assert list(listed.columns) == ["path", "actual", "predicted", "probability"]
    evaluated = wrong.set_index("path").loc[listed["path"]]
    assert listed["actual"].tolist() == evaluated["actual"].tolist()
    assert listed["predicted"].tolist() == evaluated["predicted"].tolist()
    assert listed["probability"].tolist() == evaluated["confidence"].astype(float).tolist()
    tiles = min(len(wrong), 16)
    with Image.open(reproduced / "best" / "mistakes.png") as picture:
        assert picture.width >= 4 * 2 * 128 and picture.height >= -(-tiles // 4) * 128  # rows of 4 pairs of panels


def test_the_page_inlines_the_vega_major_versions_dvc_render_loads(reproduced: Path) -> None:
    dvc(reproduced, "plots", "show")  # plain, as in the README: the template comes from .dvc/config
    page = (reproduced / "dvc_plots" / "index.html").read_text()
    assert re.findall(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page) == []  # nothing from the network
    assert re.findall(r"<script[^>]*\ssrc\s*=", page) == []  # nor from a file beside it: one self-contained page
    inlined = dict(re.findall(r"<script>/\* (vega(?:-lite|-embed)?) (\d+)\.[\d.]+ \*/", page))
    pinned = dict(re.findall(r"npm/(vega(?:-lite|-embed)?)@(\d+)\.", VegaRenderer.SCRIPTS))
    assert inlined == pinned == {"vega": "5", "vega-lite": "5", "vega-embed": "6"}


@pytest.mark.skipif(not CHROMIUM, reason="needs Debian's chromium")
def test_plots_html_renders_offline_in_headless_chromium(reproduced: Path, tmp_path: Path) -> None:
    """Every chart is drawn; the per-class table holds best/classes.csv's rows in its order; the
    learning rate's axis labels its value; the picture of the mistakes is on the page as it is."""
    dvc(reproduced, "plots", "show")
    page = tmp_path / "elsewhere" / "plots"  # wherever `-o` puts it, or a copy of the folder
    shutil.copytree(reproduced / "dvc_plots", page)
    html = (page / "index.html").read_text()
    plots = len(re.findall(r"vegaEmbed\(", html))
    assert plots == 5  # loss, accuracy, learning rate, confusion matrix, per-class table
    images = re.findall(r'<img src="([^"]+)"', html.partition("<body>")[2])  # not Vega's own code in <head>
    assert images == ["static/workspace_best_mistakes.png"]

    chromium = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=10000",
        "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",  # no network at all
    ]  # fmt: skip
    dom = subprocess.run(
        [*chromium, "--dump-dom", (page / "index.html").as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    charts = chart_sections(dom)
    assert dom.count("<canvas") == 3  # loss, accuracy and confusion on a canvas; the others as SVG, text and all
    drawn = [name for name, section in charts.items() if re.search(r'<(canvas|svg)\b[^>]*class="marks"', section)]
    assert len(drawn) == plots, f"Vega drew only {drawn}"

    table = svg_texts(charts["Per-class_scores_of_the_chosen_checkpoint__test_split___weakest_first"])
    classes = pd.read_csv(reproduced / "best" / "classes.csv", dtype={"class": str})
    assert [text for text in table if text in set(classes["class"])][: len(classes)] == classes["class"].tolist()
    assert [float(text) for text in table if re.fullmatch(r"\d\.\d\d", text)][:3] == pytest.approx(
        classes[["f1", "precision", "recall"]].iloc[0].tolist(), abs=0.005
    )  # the weakest class's F1, precision and recall, first
    lr_axis = svg_texts(charts["Learning_rate_per_epoch"])
    assert "0.01" in lr_axis  # the constant rate's value, not a lone 0

    shot = tmp_path / "plots.png"
    run([sys.executable, "-m", "tools.screenshot", "--out", str(shot)], reproduced)
    gallery = np.asarray(Image.open(reproduced / "best" / "mistakes.png").convert("RGB"))
    row, column = np.argwhere(np.ptp(gallery.astype(int), axis=-1) > 50)[0]  # a heat map's corner: colourful
    with Image.open(shot) as picture:
        # Without --width, the window is the documented 1200 px (`[--width 1200]` in its usage line),
        # and no --scale shrinks it: a narrower default still shows the gallery's corner.
        assert picture.width == 1200
        located(np.asarray(picture.convert("RGB")), gallery[row : row + 48, column : column + 48])


# A stand-in for Chromium: draws a known picture, a block of random pixels on white, at the
# window size it is given, where --screenshot says.
FAKE_CHROMIUM = """
import sys
import numpy as np
from PIL import Image
flags = dict(arg.split("=", 1) for arg in sys.argv[1:] if arg.startswith("--") and "=" in arg)
width, height = map(int, flags["--window-size"].split(","))
pixels = np.full((height, width, 3), 255, dtype=np.uint8)
pixels[40:300, 10 : width - 50] = np.random.default_rng(0).integers(0, 256, (260, width - 60, 3))
pixels[2000:2010, 10:50] = 0  # a page's last line, further down than a short window would reach
Image.fromarray(pixels).save(flags["--screenshot"])
"""


def test_the_screenshot_is_cut_below_the_page_then_shrunk_and_quantized(reproduced: Path, tmp_path: Path) -> None:
    """tools.screenshot's own steps, with the README's --scale and --colours 256, on a known
    picture (Chromium stood in for): cut 15 rows below the last drawn one, shrunk with Lanczos
    to round(0.5 x the sides), kept to 256 colours by Pillow's octree quantizer, by hand;
    written where --out says, its folder made."""
    chromium = tmp_path / "chromium"
    chromium.write_text(f"#!{sys.executable}\n{FAKE_CHROMIUM}")
    chromium.chmod(0o755)
    shot = tmp_path / "docs" / "shot.png"  # in a folder not made yet
    options = ["--width", "400", "--scale", "0.5", "--colours", "256", "--chromium", str(chromium)]
    run([sys.executable, "-m", "tools.screenshot", "--out", str(shot), *options], reproduced)

    pixels = np.full((2009 + 16, 400, 3), 255, dtype=np.uint8)  # the last drawn row, 2009, and 15 below it
    pixels[40:300, 10:350] = np.random.default_rng(0).integers(0, 256, (260, 340, 3))
    pixels[2000:2010, 10:50] = 0
    expected = Image.fromarray(pixels).resize((200, 1012), Image.Resampling.LANCZOS)  # 2025 / 2, rounded to even
    expected = expected.quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    with Image.open(shot) as written:
        assert written.mode == "P" and written.size == (200, 1012)
        assert np.array_equal(np.asarray(written.convert("RGB")), np.asarray(expected.convert("RGB")))


def chart_sections(dom: str) -> dict[str, str]:
    """Each chart's part of the rendered page, by its div's id."""
    parts = re.split(r'<div id="([^"]+)"', dom)[1:]
    return dict(zip(parts[::2], parts[1::2], strict=True))


def svg_texts(section: str) -> list[str]:
    """The text of each SVG <text> element, in the page's order."""
    return [html.unescape(text) for text in re.findall(r"<text[^>]*>([^<]*)</text>", section)]
