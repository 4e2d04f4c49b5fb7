"""Benchmark on photo-like JPEGs: the pipeline's decoding, prepare-and-train and memory
against the plain PyTorch way, side by side in one run.

    python -m bench.photos                       # every part, with the default sizes
    python -m bench.photos --json photos.json    # and the figures as JSON
    python -m bench.photos --only decode,train   # some parts
    python -m bench.photos --smoke               # tiny sizes: checks the script, not the speed

It generates its own photos (smooth random colour fields plus blurred noise, JPEG quality
90, four class folders) in a temporary folder, and deletes them at the end. Parts:

  decode  images/s on one core, for large (4000x3000) and small (500x375) JPEGs: the
          decode and resize to the cache (data.decode.load_image) and the prepare stage's
          whole work per file (data.inspection.inspect_file: that, plus sha1, perceptual
          hash, check and training copy), against the load_image this project had before
          it decoded once (`earlier`, kept below, at the same 256 px) and the plain way
          (Image.open, convert("RGB"), torchvision Resize(256) and CenterCrop(224), to a
          uint8 array); also torchvision.io.decode_jpeg (deprecated since torchvision 0.29, so
          only compared) with a tensor resize.
          Goals, load_image over earlier: >= 4 on the large JPEGs (it decodes them with
          the margin that keeps the model's inputs within a step or two of the whole
          decode's: bench/fidelity.py), >= 1.5 on the small.
  train   wall-clock seconds of `python -m pipeline.prepare`, `pipeline.weights` and
          `pipeline.train` in a throw-away project against the PyTorch transfer-learning
          tutorial's loop (ImageFolder, Resize, CenterCrop, ToTensor, Normalize, a
          DataLoader with a worker per core, batch 64), both resnet18 with random weights
          and only its head training, for each --epochs count. Goals, plain over pipeline:
          >= 1 at 1 epoch, >= 3 at 5.
  rss     peak memory of `python -m pipeline.prepare` and its decoding workers over
          --rss-images small JPEGs at --image-size pixels. Goal: under 2 GB.
"""

import argparse
import io
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import PIL
import simplejpeg
from PIL import Image, features

from bench.report import finish, markdown_table
from pipeline.data.decode import Sizing, decode, load_image
from pipeline.data.inspection import HASH_DECODE_SIZE, image_hash, inspect_file
from testing.photos import photo
from testing.project import REPO, make_project, run, set_checked_params, stage

PARTS = ("decode", "train", "rss")
CLASSES = 4
QUALITY = 90
GOALS = {
    "decode_large_load_image_over_earlier": 4.0,
    "decode_small_load_image_over_earlier": 1.5,
    "train_1_epochs_plain_over_pipeline": 1.0,
    "train_5_epochs_plain_over_pipeline": 3.0,
    "rss_peak_bytes_below": 2e9,
}
SMOKE = {
    "large": "320x240",
    "large_count": 2,
    "small": "160x120",
    "small_count": 8,
    "train_images": 24,
    "epochs": "1",
    "image_size": 32,
    "rss_images": 210,  # over 200: prepare then decodes in a pool of two workers
    "repeats": 1,
}


# --- photos -------------------------------------------------------------------------------------


def write_photos(root: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """`count` distinct JPEGs in an ImageFolder tree at `root`, spread over CLASSES folders."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = root / f"class_{i % CLASSES}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        photo(rng, *size).save(path, "JPEG", quality=QUALITY)
        paths.append(path)
    return paths


def copy_photos(sources: list[Path], root: Path, count: int) -> None:
    """`count` files in an ImageFolder tree at `root`: copies of `sources` in their own
    class, each with a JPEG comment of its own, so every file has a different sha1."""
    contents = [(path.parent.name, path.read_bytes()) for path in sources]
    for i in range(count):
        label, content = contents[i % len(contents)]
        comment = f"copy {i}".encode()
        segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment  # COM, right after SOI
        path = root / label / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content[:2] + segment + content[2:])


def parse_size(text: str) -> tuple[int, int]:
    width, height = text.lower().split("x")
    return int(width), int(height)


# --- 1. decoding, one core ----------------------------------------------------------------------


def plain_decoder(resize: int, crop: int) -> Callable[[Path], np.ndarray]:
    """The plain way: the whole file decoded, then torchvision's Resize and CenterCrop."""
    from torchvision import transforms

    transform = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop)])

    def plain(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(transform(image.convert("RGB")), dtype=np.uint8).transpose(2, 0, 1).copy()

    return plain


def earlier_load_image(path: Path, size: int) -> np.ndarray:
    """The baseline of the decode goals: data.decode.load_image as it was at commit 3387214,
    verbatim but for its 16-bit and alpha branches (these photos take neither). It decoded
    the whole file, then resized the shorter side to `size` and cropped the centre square."""
    from PIL import ImageOps

    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        image = image.convert("RGB")
        scale = size / min(image.size)
        width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
        image = image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=None)
        left, top = (width - size) // 2, (height - size) // 2
        image = image.crop((left, top, left + size, top + size))
        return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def tensor_decoder(resize: int, crop: int) -> Callable[[Path], np.ndarray]:
    """torchvision.io.decode_jpeg, then Resize and CenterCrop on the uint8 tensor."""
    import torchvision.io
    import torchvision.transforms.v2.functional as TF

    def tensors(path: Path) -> np.ndarray:
        image = torchvision.io.decode_jpeg(torchvision.io.read_file(str(path)), mode=torchvision.io.ImageReadMode.RGB)
        image = TF.resize(image, [resize], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        return TF.center_crop(image, [crop]).contiguous().numpy()

    return tensors


def images_per_second(paths: list[Path], ways: dict[str, Callable[[Path], object]], repeats: int) -> dict[str, float]:
    """Each way over all `paths`, the ways taking turns `repeats` times: images/s of the median turn."""
    for way in ways.values():
        way(paths[0])  # warm-up: imports, lazy initialisation
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeats):
        for name, way in ways.items():
            started = time.perf_counter()
            for path in paths:
                way(path)
            times[name].append(time.perf_counter() - started)
    return {name: len(paths) / statistics.median(seconds) for name, seconds in times.items()}


def decode_part(work: Path, args: argparse.Namespace) -> dict[str, object]:
    import torch

    sizing = Sizing(256, 224)
    ways = {
        "inspect_file": lambda path: inspect_file(str(path), sizing),
        "load_image": lambda path: load_image(path, sizing),
        # The part of inspect_file that load_image leaves out: the check and perceptual hash.
        "hash_check": lambda path: image_hash(decode(io.BytesIO(path.read_bytes()), HASH_DECODE_SIZE).pixels),
        "earlier": lambda path: earlier_load_image(path, sizing.resize),
        "plain": plain_decoder(sizing.resize, sizing.crop),
        "decode_jpeg": tensor_decoder(sizing.resize, sizing.crop),
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per core: torch's tensor resize would otherwise use every core
    results: dict[str, object] = {}
    try:
        for name, size, count in (("large", args.large, args.large_count), ("small", args.small, args.small_count)):
            paths = write_photos(work / f"decode_{name}", count, parse_size(size), seed=1)
            for path in paths:
                path.read_bytes()  # in the page cache for every way alike
            rates = images_per_second(paths, ways, args.repeats)
            results[name] = {
                "width": parse_size(size)[0],
                "height": parse_size(size)[1],
                "images": count,
                "mean_file_bytes": statistics.mean(path.stat().st_size for path in paths),
                **{f"{way}_per_s": rate for way, rate in rates.items()},
                "load_image_over_earlier": rates["load_image"] / rates["earlier"],
                "inspect_over_earlier": rates["inspect_file"] / rates["earlier"],
                "inspect_over_plain": rates["inspect_file"] / rates["plain"],
                "load_image_over_plain": rates["load_image"] / rates["plain"],
                "decode_jpeg_over_plain": rates["decode_jpeg"] / rates["plain"],
            }
            print(f"decode {name}: {json.dumps(results[name])}", flush=True)
    finally:
        torch.set_num_threads(threads)
    return results


# --- 2. prepare and train against the tutorial's loop -------------------------------------------


def plain_loop(data: Path, epochs: int, image_size: int, batch_size: int = 64, seed: int = 0) -> dict[str, object]:
    """The PyTorch transfer-learning tutorial's "ConvNet as fixed feature extractor" on
    `data`: ImageFolder, Resize, CenterCrop, ToTensor, Normalize, a DataLoader with a
    worker per core; resnet18 (random weights) with a new head, the backbone frozen and
    in eval mode, run on every batch; a random split in prepare's fractions (60/20/20, test
    unused); the best weights saved when val accuracy improves."""
    import torch
    import torchvision
    from torch import nn
    from torchvision import transforms

    torch.manual_seed(seed)
    transform = transforms.Compose(
        [
            transforms.Resize(round(image_size * 256 / 224)),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    dataset = torchvision.datasets.ImageFolder(str(data), transform)
    splits = torch.utils.data.random_split(dataset, [0.6, 0.2, 0.2], torch.Generator().manual_seed(seed))
    loaders = {
        phase: torch.utils.data.DataLoader(
            split, batch_size=batch_size, shuffle=phase == "train", num_workers=os.cpu_count() or 1
        )
        for phase, split in zip(("train", "val"), splits, strict=False)
    }
    model = torchvision.models.resnet18(weights=None)
    for parameter in model.parameters():
        parameter.requires_grad = False
    model.fc = nn.Linear(model.fc.in_features, len(dataset.classes))
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.fc.parameters(), lr=0.001, momentum=0.9)
    best, seconds = -1.0, []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(epochs):
            started = time.perf_counter()
            for phase, loader in loaders.items():
                model.eval()  # the frozen backbone's batch norm keeps its statistics
                model.fc.train(phase == "train")
                correct = 0
                for inputs, labels in loader:
                    optimizer.zero_grad()
                    with torch.set_grad_enabled(phase == "train"):
                        outputs = model(inputs)
                        loss = criterion(outputs, labels)
                        if phase == "train":
                            loss.backward()
                            optimizer.step()
                    correct += int((outputs.argmax(1) == labels).sum())
                if phase == "val" and correct / len(loader.dataset) > best:
                    best = correct / len(loader.dataset)
                    torch.save(model.state_dict(), Path(folder) / "best.pt")
            seconds.append(time.perf_counter() - started)
    return {"epoch_s": seconds, "val_accuracy": best}


def fresh(project: Path) -> None:
    """Forget every output and cache of earlier runs in `project`."""
    for name in (".cache", "checkpoints", "data/prepared", "dvclive", "models/start.pt"):
        path = project / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def pipeline_seconds(project: Path, data: Path, epochs: int, image_size: int) -> dict[str, float]:
    """Wall-clock seconds of the prepare, weights and train stages, each as its own process,
    and, from the train stage's log, its one pass of the frozen backbone over the images."""
    fresh(project)
    set_checked_params(
        project,
        freeze="all_but_head",
        **{
            "prepare.data_dir": str(data),
            "model.weights": None,
            "model.image_size": image_size,
            "train.epochs": epochs,
            "train.batch_size": 64,
        },
    )
    seconds = {}
    for name in ("prepare", "weights", "train"):
        started = time.perf_counter()
        log = stage(name, project).stderr
        seconds[f"{name}_s"] = time.perf_counter() - started
    found = re.search(r"features computed once in ([0-9.]+)s", log)
    if found:
        seconds["train_feature_pass_s"] = float(found.group(1))
    return seconds


def plain_seconds(photos: Path, epochs: int, image_size: int) -> tuple[float, list[float]]:
    """Wall-clock seconds of the plain loop in its own process, and of each of its epochs."""
    command = [sys.executable, "-m", "bench.photos", "--plain-loop", str(photos), "--epochs", str(epochs)]
    started = time.perf_counter()
    output = run([*command, "--image-size", str(image_size)], REPO).stdout
    return time.perf_counter() - started, json.loads(output.strip().splitlines()[-1])["epoch_s"]


def train_part(project: Path, photos: Path, args: argparse.Namespace) -> dict[str, object]:
    """The stages, run afresh for each epoch count, against the plain loop run for the most
    epochs: its time for fewer is its time outside epochs plus those epochs (each epoch
    starts its own DataLoader workers, so a shorter run does exactly that). With repeats,
    the runs take turns and each figure is the median."""
    counts = [int(n) for n in args.epochs.split(",")]
    results: dict[str, object] = {"images": args.train_images, "image_size": args.image_size, "batch_size": 64}
    pipeline: dict[int, list[dict[str, float]]] = {epochs: [] for epochs in counts}
    plain: dict[int, list[float]] = {epochs: [] for epochs in counts}
    for _ in range(args.train_repeats):
        for epochs in counts:
            pipeline[epochs].append(pipeline_seconds(project, photos, epochs, args.image_size))
        wall, epoch_s = plain_seconds(photos, max(counts), args.image_size)
        for epochs in counts:
            plain[epochs].append(wall - sum(epoch_s) + sum(epoch_s[:epochs]))
        results.setdefault("plain_epoch_s", []).append(epoch_s)
    for epochs in counts:
        runs = pipeline[epochs]
        totals = [run["prepare_s"] + run["weights_s"] + run["train_s"] for run in runs]
        figure = {
            "pipeline_s": statistics.median(totals),
            **{f"pipeline_{name}": statistics.median(run[name] for run in runs) for name in runs[0]},
            "plain_s": statistics.median(plain[epochs]),
        }
        figure["plain_over_pipeline"] = figure["plain_s"] / figure["pipeline_s"]
        if args.train_repeats > 1:
            figure["pipeline_runs_s"], figure["plain_runs_s"] = totals, plain[epochs]
        results[f"{epochs}_epochs"] = figure
        print(f"train {epochs} epochs: {json.dumps(figure)}", flush=True)
    return results


# --- 3. peak memory of prepare --------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Every descendant of `pid`, from /proc."""
    found = []
    try:
        listed = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in map(int, listed):
        found += [child, *children(child)]
    return found


def memory(pid: int) -> dict[str, int] | None:
    """Bytes of VmHWM (peak RSS so far), VmRSS, RssAnon and RssFile of `pid`, and its Pss; None once it is gone."""
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                fields[key] = int(value.split()[0]) * 1024
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                fields["Pss"] = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return fields if "VmHWM" in fields else None


def watch(command: list[str], cwd: Path, interval: float = 0.05) -> dict[str, object]:
    """Run `command`, sampling the memory of it and its descendants until it exits.

    VmHWM (peak RSS) is the kernel's own high-water mark of each process; RssAnon, RssFile
    and the sums are the largest seen in the samples.
    """
    started = time.perf_counter()
    stage_peak: dict[str, int] = {}
    worker_peak: dict[str, int] = {}
    workers: set[int] = set()
    tree_pss = tree_rss = 0
    with tempfile.TemporaryFile() as log:  # not a pipe: a full one would stall the stage
        process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=log)
        while True:
            pid, status = os.waitpid(process.pid, os.WNOHANG)
            if pid:
                break
            samples = {process.pid: memory(process.pid)}
            for child in children(process.pid):
                samples[child] = memory(child)
                workers.add(child)
            for owner, fields in samples.items():
                if fields:
                    peak = stage_peak if owner == process.pid else worker_peak
                    for key, value in fields.items():
                        peak[key] = max(peak.get(key, 0), value)
            tree_pss = max(tree_pss, sum(fields.get("Pss", 0) for fields in samples.values() if fields))
            tree_rss = max(tree_rss, sum(fields["VmRSS"] for fields in samples.values() if fields))
            time.sleep(interval)
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped: Popen must not wait again
        log.seek(0)
        stderr = log.read().decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}\n{stderr}")
    result: dict[str, object] = {
        "seconds": time.perf_counter() - started,
        "stage_peak_rss_bytes": stage_peak["VmHWM"],
        "stage_max_anon_bytes": stage_peak["RssAnon"],
        "stage_max_file_bytes": stage_peak["RssFile"],
        "tree_max_rss_sum_bytes": tree_rss,
        "tree_max_pss_bytes": tree_pss,
        "workers": len(workers),
    }
    if workers:
        result.update(
            {
                "worker_peak_rss_bytes": worker_peak["VmHWM"],
                "worker_max_anon_bytes": worker_peak["RssAnon"],
                "worker_max_file_bytes": worker_peak["RssFile"],
            }
        )
    return result


def rss_part(work: Path, project: Path, sources: list[Path], args: argparse.Namespace) -> dict[str, object]:
    data = work / "rss_photos"
    copy_photos(sources, data, args.rss_images)
    fresh(project)
    set_checked_params(
        project, **{"prepare.data_dir": str(data), "model.weights": None, "model.image_size": args.image_size}
    )
    result = watch([sys.executable, "-m", "pipeline.prepare"], project)
    cache = sum(path.stat().st_size for path in (project / ".cache/images").glob("*.npy"))
    shutil.rmtree(data)
    fresh(project)
    result = {"images": args.rss_images, "image_size": args.image_size, "cache_bytes": cache, **result}
    print(f"rss: {json.dumps(result)}", flush=True)
    return result


# --- the run ------------------------------------------------------------------------------------


def machine() -> dict[str, object]:
    import torch
    import torchvision

    cpu = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "pipeline"], cwd=REPO, capture_output=True, text=True)
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "commit": commit + (" (pipeline/ modified)" if dirty.stdout.strip() else ""),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "libjpeg_turbo": features.version("libjpeg_turbo") or "no",  # Pillow's
        "simplejpeg": simplejpeg.__version__,  # the pipeline's JPEG decoder, its own libjpeg-turbo
    }


def figures(report: object, prefix: str = "") -> dict[str, float]:
    """Every number in `report`, by its dotted key."""
    if isinstance(report, dict):
        found = {}
        for key, value in report.items():
            found.update(figures(value, f"{prefix}{key}."))
        return found
    if isinstance(report, int | float) and not isinstance(report, bool):
        return {prefix.rstrip("."): float(report)}
    return {}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and counts: checks the script, not the speed")
    parser.add_argument("--large", default="4000x3000", help="size of the large JPEGs (default 4000x3000)")
    parser.add_argument("--large-count", type=int, default=24, help="large JPEGs to decode (default 24)")
    parser.add_argument("--small", default="500x375", help="size of the small JPEGs, in every part (default 500x375)")
    parser.add_argument("--small-count", type=int, default=300, help="small JPEGs to decode (default 300)")
    parser.add_argument("--train-images", type=int, default=2000, help="photos to prepare and train on (default 2000)")
    parser.add_argument("--epochs", default="1,5", help="epoch counts to time, comma-separated (default 1,5)")
    parser.add_argument("--image-size", type=int, default=224, help="the model's input size (default 224)")
    parser.add_argument("--rss-images", type=int, default=20000, help="JPEGs for the memory part (default 20000)")
    parser.add_argument("--repeats", type=int, default=3, help="turns of each decoding way (default 3)")
    parser.add_argument("--train-repeats", type=int, default=1, help="turns of each train-part run (default 1)")
    parser.add_argument(
        "--plain-loop", type=Path, metavar="DIR", help="only run the plain loop on DIR (the train part runs it so)"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    if args.plain_loop:
        result = plain_loop(args.plain_loop, int(args.epochs), args.image_size)
        print(json.dumps(result))
        return result
    chosen = args.only.split(",")
    started = time.perf_counter()
    report: dict[str, object] = {"machine": machine(), "goals": GOALS, "load_average_before": os.getloadavg()[0]}
    work = Path(tempfile.mkdtemp(prefix="bench-photos-"))
    part_seconds: dict[str, float] = {}

    @contextmanager
    def clock(name: str) -> Iterator[None]:
        part_started = time.perf_counter()
        yield
        part_seconds[name] = time.perf_counter() - part_started

    try:
        if "decode" in chosen:
            with clock("decode"):
                report["decode"] = decode_part(work, args)
        if "train" in chosen or "rss" in chosen:
            with clock("setup"):
                project = make_project(work / "project")
                sources = write_photos(work / "photos", args.train_images, parse_size(args.small))
        if "train" in chosen:
            with clock("train"):
                report["train"] = train_part(project, work / "photos", args)
        if "rss" in chosen:
            with clock("rss"):
                report["rss"] = rss_part(work, project, sources, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["part_seconds"] = part_seconds
    return finish(report, started, render, args.json)


def render(report: dict) -> str:
    """The headline figures with their goals, as a Markdown table."""
    rows = [("figure", "measured", "goal")]
    for name, decoded in report.get("decode", {}).items():
        goal = GOALS[f"decode_{name}_load_image_over_earlier"]
        size = f"{decoded['width']}x{decoded['height']}"
        rows.append(
            (
                f"decode {size}, images/s per core: load_image / earlier",
                f"{decoded['load_image_over_earlier']:.2f} ({decoded['load_image_per_s']:.1f} vs "
                f"{decoded['earlier_per_s']:.1f})",
                f">= {goal}",
            )
        )
        rows.append(
            (
                f"decode {size}: inspect_file / earlier; inspect_file / plain; load_image / plain",
                f"{decoded['inspect_over_earlier']:.2f} ({decoded['inspect_file_per_s']:.1f}); "
                f"{decoded['inspect_over_plain']:.2f} ({decoded['plain_per_s']:.1f}); "
                f"{decoded['load_image_over_plain']:.2f}",
                "-",
            )
        )
        rows.append(
            (
                f"decode {size}: decode_jpeg / plain; hash check alone",
                f"{decoded['decode_jpeg_over_plain']:.2f} ({decoded['decode_jpeg_per_s']:.1f}); "
                f"{decoded['hash_check_per_s']:.1f}/s",
                "-",
            )
        )
    train = report.get("train", {})
    for key, timing in train.items():
        if isinstance(timing, dict):
            epochs = int(key.split("_")[0])
            goal = GOALS.get(f"train_{epochs}_epochs_plain_over_pipeline")
            rows.append(
                (
                    f"{train['images']} photos, {epochs} epoch(s): plain s / pipeline s",
                    f"{timing['plain_over_pipeline']:.2f} ({timing['plain_s']:.1f} vs {timing['pipeline_s']:.1f})",
                    f">= {goal}" if goal else "-",
                )
            )
    if "rss" in report:
        rss = report["rss"]
        rows.append(
            (
                f"prepare, {rss['images']} images at {rss['image_size']}px: peak RSS, stage (anon + file)",
                f"{rss['stage_peak_rss_bytes'] / 1e9:.2f} GB ({rss['stage_max_anon_bytes'] / 1e9:.2f} + "
                f"{rss['stage_max_file_bytes'] / 1e9:.2f})",
                "< 2 GB",
            )
        )
        if "worker_peak_rss_bytes" in rss:
            rows.append(
                (
                    "prepare: peak RSS of a worker (anon + file)",
                    f"{rss['worker_peak_rss_bytes'] / 1e9:.2f} GB ({rss['worker_max_anon_bytes'] / 1e9:.2f} + "
                    f"{rss['worker_max_file_bytes'] / 1e9:.2f})",
                    "< 2 GB",
                )
            )
    head = report["machine"]
    return f"{head['cpu']}, {head['cores']} cores, {report['seconds']:.0f}s in all\n" + markdown_table(rows)


if __name__ == "__main__":
    main()
