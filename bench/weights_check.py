"""What check_params's look at a weights file costs, and how soon `dvc repro` stops on one
that does not fit the arch.

    python -m bench.weights_check                  # both parts
    python -m bench.weights_check --only header    # the check of a large file alone
    python -m bench.weights_check --images 20000 --repeats 3

header  a weights file of `--arch` (vit_l_16: 1.2 GB of float32), written as torch.save
        and as safetensors: seconds of models.check_model_params with it and without any
        file (the arch, size and freeze checks, the same either way), of reading the
        file's structure alone (load_weights_file lazy: keys and shapes, no tensor), and
        of loading it whole (weights_only). In one process, imports done, the median of
        `--repeats`.
repro   a throw-away project whose data folder holds `--images` small PNGs (copies of the
        demo's digits under new names) and whose model.weights is a file of another model:
        wall-clock seconds of `dvc repro` until it fails, and whether prepare had started.
"""

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torchvision.models import get_model

from pipeline.checkpoints import load_weights_file
from pipeline.models import check_model_params, skeleton_model
from testing.project import make_project, run, set_params


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def header(work: Path, arch: str, size: int, repeats: int) -> dict[str, float]:
    shapes = skeleton_model(arch).state_dict()
    state = {key: torch.zeros(value.shape, dtype=value.dtype) for key, value in shapes.items()}
    files = {"torch.save": work / "big.pt", "safetensors": work / "big.safetensors"}
    torch.save(state, files["torch.save"])
    save_file(state, files["safetensors"])
    del state
    check_model_params(arch, None, size, {})  # once first: the lazy imports of a first call
    # The checks of arch, size and freeze specs that run with any weights, on the meta skeleton.
    result = {"check_without_file_s": median_seconds(lambda: check_model_params(arch, None, size, {}), repeats)}
    for name, path in files.items():
        result[f"{name}_gb"] = path.stat().st_size / 1e9
        result[f"{name}_check_s"] = median_seconds(lambda p=path: check_model_params(arch, str(p), size, {}), repeats)
        result[f"{name}_structure_read_s"] = median_seconds(lambda p=path: load_weights_file(p, lazy=True), repeats)
        result[f"{name}_whole_load_s"] = median_seconds(lambda p=path: load_weights_file(p), repeats)
        path.unlink()
    return result


def repro(work: Path, images: int) -> dict[str, object]:
    project = make_project(work / "project")
    digits = sorted((project / "data/digits/target").rglob("*.png"))
    data = project / "data/many"
    for index in range(images):
        source = digits[index % len(digits)]
        target = data / source.parent.name / f"{index:06d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    # Another model's weights: model.arch is resnet18.
    torch.save(get_model("shufflenet_v2_x0_5").state_dict(), project / "models/weights/other.pt")
    set_params(project, **{"prepare.data_dir": "data/many", "model.weights": "models/weights/other.pt"})
    started = time.perf_counter()
    result = run([sys.executable, "-m", "dvc", "repro"], project, check=False)
    seconds = time.perf_counter() - started
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("pipeline: error:")]
    return {
        "images": images,
        "repro_s": seconds,
        "exit_code": result.returncode,
        "prepare_started": "Running stage 'prepare'" in output,
        "error": errors[0] if errors else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("header", "repro"), help="one part only")
    parser.add_argument("--arch", default="vit_l_16", help="the large model of the header part (default: vit_l_16)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=20000, help="images in the data folder of the repro part")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-weights-"))
    try:
        if args.only in (None, "header"):
            print("header:", header(work, args.arch, args.image_size, args.repeats), flush=True)
        if args.only in (None, "repro"):
            print("repro:", repro(work, args.images), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
