"""The demo's fixed costs: the pipeline's `dvc repro` against the same fine-tune written the
plain PyTorch way (bench/reference.py), side by side in one run.

    python -m bench.demo [--json FILE]

In a throw-away copy of the repo with the demo's own params (8 epochs, resnet18 at 32 px,
the demo's pretraining), in this order:

1. `dvc repro prepare weights`: the checks, the split and the pretraining on source digits;
2. `dvc repro`: what is left, train, evaluate and select_best (each stage's share is
   timed from the moment DVC announces it to the next announcement, or the end);
3. `dvc repro -f -s select_best`: select_best again on the same checkpoint, whose exports
   now come from the export cache;
4. bench/reference.py on the same split from the same starting weights (models/start.pt);
5. bench/reference.py --pretrain: the reference with its own pretraining first;
6. each entry point's start-up: a new Python process that imports it, median of three.

Every time is the wall clock of a new process, start-up included, as a user waits for it.
Goals: (2) <= 1.5 x (4), and (1) + (2) <= 2.5 x (5).
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.report import finish, markdown_table
from testing.project import REPO, copy_repo_files, run

ENTRY_POINTS = ("pipeline.check_params", "pipeline.prepare", "pipeline.weights", "pipeline.train",
                "pipeline.evaluate", "pipeline.select_best", "tools.predict")  # fmt: skip
STAGE_LINE = re.compile(r"^Running stage '(\w+)'")


def timed(project: Path, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = run([sys.executable, *args], project)
    return time.perf_counter() - started, result


def timed_repro(project: Path, *args: str) -> tuple[float, dict[str, float]]:
    """`dvc repro ARGS`' seconds, and each stage's, from DVC's "Running stage" lines as they come."""
    started = time.perf_counter()
    # DVC runs stage commands as `python -m ...`: make that this interpreter (as testing.project.run does).
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PATH": path}
    command = [sys.executable, "-m", "dvc", "repro", *args]
    output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    process = subprocess.Popen(command, cwd=project, env=env, **output)
    marks: list[tuple[str, float]] = []
    lines = []
    for line in process.stdout or []:
        lines.append(line)
        if found := STAGE_LINE.match(line):
            marks.append((found[1], time.perf_counter()))
    if process.wait() != 0:
        raise AssertionError(f"{' '.join(command)} exited {process.returncode}\n{''.join(lines)}")
    ended = time.perf_counter()
    stages = {name: (marks[i + 1][1] if i + 1 < len(marks) else ended) - at for i, (name, at) in enumerate(marks)}
    return ended - started, stages


def start_up(project: Path) -> dict[str, float]:
    """Seconds to start a Python process that imports each entry point (and torch alone)."""
    imports = {"torch": "import torch", "torch+torchvision": "import torch, torchvision"}
    imports |= {name: f"import {name}" for name in ENTRY_POINTS}
    return {name: statistics.median(timed(project, "-c", code)[0] for _ in range(3)) for name, code in imports.items()}


def demo(project: Path) -> dict[str, object]:
    prepare_weights_s, _ = timed_repro(project, "prepare", "weights")
    rest_s, stages = timed_repro(project)
    pipeline_metrics = json.loads((project / "best/metrics.json").read_text())
    select_again_s, _ = timed_repro(project, "-f", "-s", "select_best")
    reference_s, result = timed(project, "-m", "bench.reference", "--project", ".")
    reference = json.loads(result.stdout.splitlines()[-1])
    reference_pretrain_s, result = timed(project, "-m", "bench.reference", "--project", ".", "--pretrain")
    reference_pretrained = json.loads(result.stdout.splitlines()[-1])
    return {
        "pipeline_prepare_weights_s": prepare_weights_s,
        "pipeline_train_evaluate_select_s": rest_s,
        "pipeline_stage_s": stages,
        "pipeline_select_best_again_s": select_again_s,
        "pipeline_test_accuracy": pipeline_metrics["test_accuracy"],
        "reference_s": reference_s,
        "reference_test_accuracy": reference["test_accuracy"],
        "reference_with_pretraining_s": reference_pretrain_s,
        "reference_with_pretraining_test_accuracy": reference_pretrained["test_accuracy"],
        "train_evaluate_select_over_reference": rest_s / reference_s,
        "whole_repro_over_reference_with_pretraining": (prepare_weights_s + rest_s) / reference_pretrain_s,
    }


ROWS = (  # (what, the report's key, the goal)
    ("dvc repro prepare weights (checks, split, pretraining), s", "pipeline_prepare_weights_s", ""),
    ("dvc repro: train, evaluate, select_best, s", "pipeline_train_evaluate_select_s", ""),
    ("dvc repro -f -s select_best again (exports from the cache), s", "pipeline_select_best_again_s", ""),
    ("reference script, s", "reference_s", ""),
    ("reference script with its pretraining, s", "reference_with_pretraining_s", ""),
    ("train, evaluate, select_best / reference", "train_evaluate_select_over_reference", "<= 1.5"),
    ("whole dvc repro / reference with its pretraining", "whole_repro_over_reference_with_pretraining", "<= 2.5"),
    ("test accuracy: pipeline", "pipeline_test_accuracy", ""),
    ("test accuracy: reference", "reference_test_accuracy", ""),
    ("test accuracy: reference with its pretraining", "reference_with_pretraining_test_accuracy", ""),
)


def table(report: dict) -> str:
    rows = [("figure", "value", "goal"), *((what, f"{report[key]:.3g}", goal) for what, key, goal in ROWS)]
    rows += [(f"... {name}'s share of dvc repro, s", f"{s:.3g}", "") for name, s in report["pipeline_stage_s"].items()]
    rows += [(f"start-up: import {name}, s", f"{s:.3g}", "") for name, s in report["start_up_s"].items()]
    return markdown_table(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    project = workdir / "project"
    copy_repo_files(project)  # the demo's own params.yaml, unlike the tests' tiny ones
    (project / "dvc.lock").unlink(missing_ok=True)
    run(["git", "init", "-q"], project)
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com", "commit", "-qm", "copy"], project)

    commit = run(["git", "rev-parse", "--short", "HEAD"], REPO).stdout.strip()
    report: dict[str, object] = {"commit": commit, "torch": torch.__version__, "cpus": os.cpu_count()}
    report["load_average_before"] = os.getloadavg()[0]
    started = time.perf_counter()
    report |= demo(project)
    report["start_up_s"] = start_up(project)
    print(json.dumps(report, indent=2))
    finish(report, started, table, args.json)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
