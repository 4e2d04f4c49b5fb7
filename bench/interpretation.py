"""What select-best's picture of the mistakes, its list and the per-class table cost: the time of
`pipeline.interpretation.write_interpretation` against the whole select_best stage's.

    python -m bench.interpretation                       # the demo, then 2,000 photos
    python -m bench.interpretation --only photos --repeats 5 --json interpretation.json

Two projects, each a throw-away copy of the repo run up to evaluate:
- `demo`: the default params (resnet18 at 32 px, the demo's pretraining, 8 epochs);
- `photos`: 2,000 photo-like JPEGs of 500x375 (bench.photos' generator, four classes), resnet18
  with random weights at 224 px, `freeze: all_but_head`, 1 epoch. The weights learn little
  in one epoch, so most test images are mistakes and the picture has all its 16 tiles.
Then, taking turns, `repeats` times: `python -m pipeline.select_best` as its own process, as
DVC runs it (start-up, loading and checking every checkpoint, the export and everything
else included), and `write_interpretation` alone, in this process, on the chosen checkpoint
and its test predictions (decoding the pictured images, the heat maps, the table, the PNG).
The figures are medians, and the share is the one's median over the other's.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from bench.photos import write_photos
from pipeline.checkpoints import load_checkpoint, predictions_name
from pipeline.files import read_csv
from pipeline.interpretation import write_interpretation
from pipeline.paths import BEST_METRICS, BEST_MODEL, PREDICTIONS_DIR
from testing.project import REPO, make_project, set_checked_params, stage

STAGES = ("prepare", "weights", "train", "evaluate")


@contextmanager
def inside(folder: Path):
    """The stages' paths are relative to the project: work from its root for a while."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def up_to_evaluate(project: Path, **params: object) -> None:
    """The stages up to evaluate, with the repo's own params.yaml (not the tests' tiny one) and `params`."""
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    set_checked_params(project, **params)
    for name in STAGES:
        stage(name, project)


def timed(project: Path, repeats: int) -> dict[str, object]:
    """select_best's seconds and write_interpretation's, taking turns; medians and their ratio."""
    stage_s, interpretation_s = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        stage("select_best", project)
        stage_s.append(time.perf_counter() - started)
        with inside(project):
            chosen = json.loads(BEST_METRICS.read_text())
            checkpoint = load_checkpoint(BEST_MODEL)
            predictions = read_csv(PREDICTIONS_DIR / predictions_name(chosen["epoch"], chosen["weights"]))
            started = time.perf_counter()
            write_interpretation(checkpoint, predictions)
            interpretation_s.append(time.perf_counter() - started)
    mistakes = int((predictions["actual"] != predictions["predicted"]).sum())
    figure = {
        "test_images": len(predictions),
        "mistakes": mistakes,
        "select_best_s": statistics.median(stage_s),
        "interpretation_s": statistics.median(interpretation_s),
        "select_best_runs_s": stage_s,
        "interpretation_runs_s": interpretation_s,
    }
    figure["share"] = figure["interpretation_s"] / figure["select_best_s"]
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.interpretation", description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="demo,photos", help="demo, photos or both (default)")
    parser.add_argument("--photos", type=int, default=2000, help="photos in the photos project (default: 2000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    report: dict[str, object] = {"torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench-interpretation.") as folder:
        work = Path(folder)
        if "demo" in args.only:
            project = make_project(work / "demo")
            up_to_evaluate(project)
            report["demo"] = timed(project, args.repeats)
            print("demo:", json.dumps(report["demo"]), flush=True)
        if "photos" in args.only:
            photos = work / "photos"
            write_photos(photos, args.photos, (500, 375))
            project = make_project(work / "photos-project")
            up_to_evaluate(
                project,
                freeze="all_but_head",
                **{"prepare.data_dir": str(photos), "model.weights": None, "model.image_size": 224, "train.epochs": 1},
            )
            report["photos"] = timed(project, args.repeats)
            print("photos:", json.dumps(report["photos"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
