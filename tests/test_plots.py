"""`dvc plots show`: the curves with the chosen epoch marked and the confusion matrix, and a
check that the HTML page it writes renders in headless Chromium with no network.

DVC's own page loads Vega from a CDN; this project's page template (plots.html_template in
.dvc/config) has Vega inlined instead, so the page is one file that needs no network.
Without Chromium (Debian's `chromium`), the render check is skipped.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from dvc_render.vega import VegaRenderer

from testing.project import copy_project, run
from tests.conftest import Reproduced

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
    dvc(reproduced, "plots", "show")
    page = tmp_path / "elsewhere" / "plots.html"  # wherever `-o` puts it, or a copy of it
    page.parent.mkdir()
    shutil.copy(reproduced / "dvc_plots" / "index.html", page)
    plots = len(re.findall(r"vegaEmbed\(", page.read_text()))
    assert plots == 4  # loss, accuracy, learning rate, confusion matrix

    chromium = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=10000",
        "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",  # no network at all
    ]  # fmt: skip
    dom = subprocess.run([*chromium, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<canvas") == plots  # Vega drew every chart
    screenshot = tmp_path / "plots.png"
    subprocess.run(
        [*chromium, "--window-size=1200,1600", f"--screenshot={screenshot}", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert screenshot.stat().st_size > 20_000  # a blank page is a few kB
