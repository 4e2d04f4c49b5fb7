"""Benchmark: how much the pipeline adds around the model, measured side by side in one run.

    python -m bench.run                      # every figure, as a table
    python -m bench.run --json bench.json    # and as JSON
    python -m bench.run --only loop,decode   # some figures

It works in a throw-away copy of the repo (as the tests do) on the bundled digits data,
on the CPU unless CUDA is present. The machines are noisy, so the headline figures are
ratios of two things timed in the same run, alternating, with medians of repeats.
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
from collections.abc import Callable
from pathlib import Path

import torch

from bench.loops import stage_vs_raw
from bench.report import markdown_table
from pipeline.checkpoints import content_digest, load_checkpoint, save_checkpoint
from pipeline.data.cache import decoded_images
from pipeline.data.decode import Sizing
from pipeline.data.split import read_manifest
from pipeline.devices import resolve_device
from testing.project import make_project, run, set_checked_params, set_params

ARCH, SIZE, BATCH = "resnet18", 32, 64
FIGURES = ("loop", "head_only", "decode", "checkpoint", "dvc", "scaling")


def median_time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def python(project: Path, *args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, *args], project)


def loop_overhead(project: Path) -> dict[str, float]:
    """The train stage's training loop vs a raw hand-written one, on equal terms (bench/loops.py).

    On the CPU: the demo's model, size and batch over as many images as its train split.
    On CUDA: the GPU reference, resnet50 at 224 px, batch 256, bf16 and channels_last.
    """
    device = resolve_device("auto")
    if device.type == "cuda":
        return stage_vs_raw("resnet50", 224, 256, 256 * 12, device)
    manifest, _ = read_manifest(project / "data/prepared")
    return stage_vs_raw(ARCH, SIZE, BATCH, int((manifest["split"] == "train").sum()), device, repeats=5)


def epoch_seconds(project: Path) -> list[float]:
    return [load_checkpoint(p)["seconds"] for p in sorted((project / "checkpoints").glob("*.pt"))]


def head_only(project: Path) -> dict[str, float]:
    """Epoch time of the real train stage with freeze all_but_head vs freeze none."""
    results = {}
    for name, overrides in {
        "none": {"freeze": "none"},
        "all_but_head_uncached": {"freeze": "all_but_head", "train.cache_features": False},
        "all_but_head_cached": {"freeze": "all_but_head", "train.cache_features": True},
    }.items():
        set_checked_params(project, **{"train.epochs": 4, **overrides})
        log = python(project, "-m", "pipeline.train").stderr
        # The first epoch warms caches up; the cached path's one-off feature pass is reported apart.
        results[f"{name}_epoch_s"] = statistics.median(epoch_seconds(project)[1:])
        found = re.search(r"features computed once in ([0-9.]+)s", log)
        if found:
            results[f"{name}_feature_pass_s"] = float(found.group(1))
    set_checked_params(project, freeze="none", **{"train.cache_features": True})
    results["ratio_uncached"] = results["all_but_head_uncached_epoch_s"] / results["none_epoch_s"]
    results["ratio_cached"] = results["all_but_head_cached_epoch_s"] / results["none_epoch_s"]
    return results


def decode(project: Path) -> dict[str, float]:
    """Decoding and resizing every image: once (cold), and what later epochs pay (warm)."""
    manifest, _ = read_manifest(project / "data/prepared")
    cache = Path(tempfile.mkdtemp())
    cold = median_time(lambda: decoded_images(manifest, Sizing(SIZE, SIZE), cache), 1)
    warm = median_time(lambda: decoded_images(manifest, Sizing(SIZE, SIZE), cache), 5)
    shutil.rmtree(cache)
    set_checked_params(project, **{"train.epochs": 3})
    python(project, "-m", "pipeline.train")
    epoch = statistics.median(epoch_seconds(project)[1:])
    return {
        "images": len(manifest),
        "cold_decode_s": cold,
        "warm_load_s": warm,
        "epoch_s": epoch,
        "share_of_epoch_after_first": warm / epoch,
    }


def checkpoint_cost(project: Path) -> dict[str, float]:
    """Saving one checkpoint (atomically, with its checksum) vs an epoch; bytes on disk."""
    path = sorted((project / "checkpoints").glob("*.pt"))[-1]
    checkpoint = load_checkpoint(path)
    target = Path(tempfile.mkdtemp()) / "epoch.pt"
    save = median_time(lambda: save_checkpoint(checkpoint, target), 3)
    checksum = median_time(lambda: content_digest(checkpoint), 3)  # the part of the save that is ours
    shutil.rmtree(target.parent)
    epoch = statistics.median(epoch_seconds(project)[1:])
    return {
        "checkpoint_bytes": path.stat().st_size,
        "save_s": save,
        "checksum_s": checksum,
        "epoch_s": epoch,
        "share_of_epoch": save / epoch,
    }


def disk_bytes(project: Path) -> dict[str, int]:
    """Bytes on disk of the outputs and of DVC's cache; a hard-linked file counts once, where first seen."""
    seen: set[int] = set()
    sizes = {}
    for name in ("data/prepared", "models", "checkpoints", "eval", "best", "dvclive", ".dvc/cache"):
        sizes[name] = 0
        for file in (project / name).rglob("*"):
            if file.is_file() and (stat := file.stat()).st_ino not in seen:
                seen.add(stat.st_ino)
                sizes[name] += stat.st_size
    return sizes


def dvc_costs(project: Path) -> dict[str, object]:
    """A default `dvc repro`: what it adds to disk; no-op and run-cache reruns."""
    dvc = ("-m", "dvc")
    set_params(project, **{"train.epochs": 8})  # the default
    shutil.rmtree(project / "checkpoints", ignore_errors=True)
    before = disk_bytes(project)
    python(project, *dvc, "repro")
    added = {name: size - before[name] for name, size in disk_bytes(project).items()}
    checkpoint_bytes = sum(p.stat().st_size for p in (project / "checkpoints").glob("*.pt"))
    noop = median_time(lambda: python(project, *dvc, "repro"), 3)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "bench baseline"], project)
    python(project, *dvc, "exp", "run", "-S", "train.lr=0.02")
    cached = median_time(lambda: python(project, *dvc, "exp", "run", "-S", "train.lr=0.01"), 1)
    return {
        "checkpoint_bytes": checkpoint_bytes,
        "run_adds_bytes": added,
        "run_adds_ratio": sum(added.values()) / checkpoint_bytes,
        "noop_repro_s": noop,
        "cached_rerun_s": cached,
    }


def scaling(project: Path) -> dict[str, float]:
    """Epoch time for 1x, 2x and 4x the demo data (copies under new names)."""
    target = project / "data/digits/target"
    results = {}
    for factor in (1, 2, 4):
        data = project / f"data/scaled_{factor}"
        for image in target.rglob("*.png"):
            for copy in range(factor):
                out = data / image.parent.name / f"{copy}_{image.name}"
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(image, out)
        set_checked_params(project, **{"prepare.data_dir": str(data.relative_to(project)), "train.epochs": 3})
        started = time.perf_counter()
        python(project, "-m", "pipeline.prepare")
        results[f"prepare_{factor}x_s"] = time.perf_counter() - started
        python(project, "-m", "pipeline.train")
        results[f"epoch_{factor}x_s"] = statistics.median(epoch_seconds(project)[1:])
    results["epoch_4x_over_1x"] = results["epoch_4x_s"] / results["epoch_1x_s"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--only", default=",".join(FIGURES), help=f"comma-separated subset of {', '.join(FIGURES)}")
    args = parser.parse_args()
    chosen = args.only.split(",")

    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    project = make_project(workdir / "project")
    # The demo's defaults, except the tiny test settings make_project applies.
    set_checked_params(project, **{"model.image_size": SIZE, "train.batch_size": BATCH, "model.weights": None})
    python(project, "-m", "pipeline.prepare")
    python(project, "-m", "pipeline.weights")  # random starting weights (model.weights: null)

    measure = {
        "loop": loop_overhead,
        "head_only": head_only,
        "decode": decode,
        "checkpoint": checkpoint_cost,
        "dvc": dvc_costs,
        "scaling": scaling,
    }
    device = resolve_device("auto")
    report: dict[str, object] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "arch": ARCH,
        "image_size": SIZE,
        "batch_size": BATCH,
    }
    for name in chosen:
        if name == "checkpoint" and not list((project / "checkpoints").glob("*.pt")):
            set_checked_params(project, **{"train.epochs": 3})
            python(project, "-m", "pipeline.train")
        if name == "dvc":
            # dvc repro runs the demo's pretraining, as by default.
            set_params(project, **{"model.weights": "pretrain"})
        report[name] = measure[name](project)
        print(f"{name}: {json.dumps(report[name], indent=None, default=float)}", flush=True)

    print()
    print(render(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(workdir, ignore_errors=True)


def render(report: dict) -> str:
    """The figures with their goals, as a Markdown table."""
    rows = [("figure", "measured", "goal")]
    if "loop" in report:
        loop = report["loop"]
        rows.append(
            (
                "1. loop overhead: stage / raw loop images/s",
                f"{loop['stage_over_raw']:.2f} ({loop['stage_images_per_s']:.0f} vs {loop['raw_images_per_s']:.0f})",
                ">= 0.90",
            )
        )
    if "head_only" in report:
        head = report["head_only"]
        rows.append(("2. all_but_head / none epoch time, uncached", f"{head['ratio_uncached']:.2f}", "<= 0.2"))
        rows.append(
            (
                "2. all_but_head / none epoch time, cached features",
                f"{head['ratio_cached']:.3f} (one-off feature pass {head['all_but_head_cached_feature_pass_s']:.2f}s)",
                "<= 0.05",
            )
        )
    if "decode" in report:
        decode = report["decode"]
        rows.append(
            (
                "3. decoding per epoch after the first, share of epoch",
                f"{decode['share_of_epoch_after_first']:.4f} (cold decode {decode['cold_decode_s']:.2f}s once)",
                "~0",
            )
        )
    if "checkpoint" in report:
        ckpt = report["checkpoint"]
        rows.append(
            (
                "4. checkpoint save, share of epoch",
                f"{ckpt['share_of_epoch']:.3f} ({ckpt['save_s']:.2f}s, checksum {ckpt['checksum_s']:.2f}s of it)",
                "<= 0.05",
            )
        )
    if "dvc" in report:
        dvc = report["dvc"]
        rows.append(("4. bytes a run adds / checkpoints' bytes", f"{dvc['run_adds_ratio']:.2f}", "<= 1.1"))
        rows.append(("5. no-op dvc repro", f"{dvc['noop_repro_s']:.2f}s", "< 2 s"))
        rows.append(("5. rerun of params already run (run-cache)", f"{dvc['cached_rerun_s']:.2f}s", "< 10 s"))
    if "scaling" in report:
        scale = report["scaling"]
        rows.append(
            (
                "6. epoch time at 1x / 2x / 4x data",
                f"{scale['epoch_1x_s']:.2f}s / {scale['epoch_2x_s']:.2f}s / {scale['epoch_4x_s']:.2f}s",
                "linear (4x = 4.0x)",
            )
        )
    head = f"device: {report['device']}, torch {report['torch']}, {ARCH} at {SIZE}px, batch {BATCH}"
    return f"{head}\n{markdown_table(rows)}"


if __name__ == "__main__":
    main()
