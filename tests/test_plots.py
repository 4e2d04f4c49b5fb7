"""`dvc plots show`: the curves with the chosen epoch marked and the confusion matrix, and a
check that the HTML really renders, in headless Chromium.

DVC's page loads Vega from a CDN, which this project's machines cannot reach; the render
check serves the same Vega versions from npm (whose registry they can reach) instead.
Without Chromium (Debian's `chromium`) or npm, the render check is skipped.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from testing.project import make_project, run, set_params

CHROMIUM = shutil.which("chromium")
NPM = shutil.which("npm")
# The scripts dvc-render 1.0 puts in the page, and where npm puts the same files.
VEGA = {
    "https://cdn.jsdelivr.net/npm/vega@5.20.2": "vega/build/vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5.2.0": "vega-lite/build/vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6.18.2": "vega-embed/build/vega-embed.min.js",
}


def dvc(project: Path, *args: str) -> str:
    return run([sys.executable, "-m", "dvc", *args], project).stdout


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = make_project(tmp_path_factory.mktemp("plots") / "project")
    set_params(project, **{"model.arch": "shufflenet_v2_x0_5", "train.epochs": 3})
    dvc(project, "repro")
    return project


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


@pytest.mark.skipif(not (CHROMIUM and NPM), reason="needs Debian's chromium and npm")
def test_plots_html_renders_in_headless_chromium(reproduced: Path, tmp_path: Path) -> None:
    installed = subprocess.run(
        [NPM, "install", "--prefix", str(tmp_path / "vega"), "--no-audit", "--no-fund", "--legacy-peer-deps",
         "vega@5.20.2", "vega-lite@5.2.0", "vega-embed@6.18.2"],
        capture_output=True, text=True,
    )  # fmt: skip
    if installed.returncode != 0:
        pytest.skip(f"npm could not install Vega (no registry?): {installed.stderr.strip()[-300:]}")
    dvc(reproduced, "plots", "show", "-o", str(tmp_path / "plots"))
    page = (tmp_path / "plots" / "index.html").read_text()
    assert all(url in page for url in VEGA), "dvc-render changed its Vega scripts; update VEGA"
    for url, file in VEGA.items():
        page = page.replace(url, (tmp_path / "vega" / "node_modules" / file).as_uri())
    local = tmp_path / "plots" / "local.html"
    local.write_text(page)
    plots = len(re.findall(r"vegaEmbed\(", page))
    assert plots == 4  # loss, accuracy, learning rate, confusion matrix

    chromium = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}", "--allow-file-access-from-files", "--virtual-time-budget=10000",
    ]  # fmt: skip
    dom = subprocess.run([*chromium, "--dump-dom", local.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<canvas") == plots  # Vega drew every chart
    screenshot = tmp_path / "plots.png"
    subprocess.run(
        [*chromium, "--window-size=1200,1600", f"--screenshot={screenshot}", local.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert screenshot.stat().st_size > 20_000  # a blank page is a few kB
