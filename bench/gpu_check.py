"""A one-shot check of the GPU path: run it once on a machine with a GPU (under 10 minutes).

    python -m bench.gpu_check                        # writes gpu_check.json
    python -m bench.gpu_check --json out.json
    python -m bench.gpu_check --smoke --device cpu   # a tiny version of every part (what the tests run)

Parts, each recorded in the JSON report (a part that fails records its error, and the
others still run):
  pipeline     the demo end to end with `device: auto` (needs omegaconf and dvclive;
               skipped with the reason where they are not installed)
  syncs        host syncs in one epoch, from torch.cuda.set_sync_debug_mode("warn")
  loop         the train stage's loop against a raw one (bench/loops.py), resnet50 at 224 px,
               bf16, channels_last, batch 256, images on the device and streamed from CPU memory
  features     the frozen-backbone feature cache of resnet50 and vit_b_16: dtype, device,
               bytes per image, peak memory
  compile      how many graphs torch.compile builds for training epochs with a ragged last
               batch, and evaluation in between
  determinism  two epochs from the same start, with deterministic algorithms, bit-identical?
  ddp          one epoch under DistributedDataParallel with one process against without it,
               resnet50 at 224 px, batch 256 (what train.processes costs per device)

Goals on an H100/H200-class GPU: loop stage_over_raw >= 0.8 and stage_streamed_over_raw >= 0.7;
ddp ddp_over_plain >= 0.95.
Imports only torch, torchvision, numpy, pandas, tqdm and this project's engine and models.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

from bench.loops import stage_vs_raw, synthetic_images
from pipeline.batches import ImageBatches
from pipeline.devices import place_model, resolve_device, set_determinism
from pipeline.engine import LoopOptions, compile_for_training, predict, train_one_epoch
from pipeline.features import head_inputs
from pipeline.models import build_model

REPO = Path(__file__).resolve().parent.parent
STAGES = ("prepare", "weights", "train", "evaluate", "select_best")


def pipeline_end_to_end(device: torch.device, smoke: bool) -> dict[str, object]:
    """Every stage on a copy of the demo, in order, as dvc repro would run them."""
    missing = [name for name in ("omegaconf", "dvclive") if not _importable(name)]
    if missing:
        return {"skipped": f"not installed here: {', '.join(missing)}"}
    workdir = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        from testing.project import copy_repo_files  # needs omegaconf, checked above

        project = workdir / "project"
        copy_repo_files(project)  # new files too: a checkout's index can lag behind its tree
        params = (project / "params.yaml").read_text()
        if smoke:  # tiny settings, as the tests use
            params = params.replace("epochs: 6", "epochs: 1").replace("epochs: 8", "epochs: 2")
            params = params.replace("image_size: 32", "image_size: 16")
        params = params.replace("device: auto", f"device: {device}")
        (project / "params.yaml").write_text(params)
        seconds = {}
        for stage in STAGES:
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", f"pipeline.{stage}"], cwd=project, check=True, capture_output=True, text=True
            )
            seconds[stage] = time.perf_counter() - started
        metrics = json.loads((project / "best/metrics.json").read_text())
        return {"seconds": seconds, "metrics": metrics}
    except subprocess.CalledProcessError as error:
        return {"error": f"{' '.join(error.cmd)} exited {error.returncode}", "stderr": error.stderr[-4000:]}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def sync_audit(device: torch.device, smoke: bool) -> dict[str, object]:
    """Host syncs in one training epoch, images on the device; the goal is one, at the end."""
    if device.type != "cuda":
        return {"skipped": "CUDA only (torch.cuda.set_sync_debug_mode)"}
    n, size = (64, 32) if smoke else (1024, 224)
    data, model = _batches_and_model("resnet18", n, size, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train_one_epoch(model, data, optimizer, LoopOptions(batch_size=64), 0)
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_one_epoch(model, data, optimizer, LoopOptions(batch_size=64), 1)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    # Where each sync came from: the warning is raised at the Python line that called the op.
    # (Turning the mode on also warns, once, that it is a prototype: that one is no sync.)
    syncs = [
        f"{w.filename}:{w.lineno}: {str(w.message).splitlines()[0]}"
        for w in caught
        if "called a synchronizing CUDA operation" in str(w.message)
    ]
    return {"steps": -(-n // 64), "syncs": len(syncs), "messages": syncs[:10]}


def _batches_and_model(arch: str, n: int, size: int, device: torch.device) -> tuple[ImageBatches, torch.nn.Module]:
    images, targets = synthetic_images(n, size, 10)
    built = build_model(arch, None, [str(k) for k in range(10)], size)
    model = place_model(built.model, device)
    data = ImageBatches(images.to(device), torch.arange(n), targets, device, built.spec.mean, built.spec.std)
    return data, model


def loop(device: torch.device, smoke: bool) -> dict[str, object]:
    if smoke:
        return stage_vs_raw("resnet18", 16, 8, 32, device, repeats=1)
    return stage_vs_raw("resnet50", 224, 256, 256 * 12, device)


def feature_cache(device: torch.device, smoke: bool) -> dict[str, object]:
    """What the frozen-backbone features cost: the cache's dtype, device and size per image."""
    report: dict[str, object] = {}
    archs = {"resnet18": 32, "vit_b_16": 32} if smoke else {"resnet50": 224, "vit_b_16": 224}
    n = 16 if smoke else 2048
    for arch, size in archs.items():
        data, model = _batches_and_model(arch, n, size, device)
        head = build_model(arch, None, ["a", "b"], size).spec.head
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        started = time.perf_counter()
        features = head_inputs(model, head, data, 256)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
        if features is None:
            raise RuntimeError(f"{arch}'s head output is not the model's output")
        report[arch] = {
            "dtype": str(features.dtype),
            "device": str(features.device),
            "bytes_per_image": features.element_size() * features[0].numel(),
            "images_per_s": n / seconds,
        }
        if device.type == "cuda":
            report[arch]["peak_gib_over_start"] = (torch.cuda.max_memory_allocated(device) - before) / 2**30
    return report


def compile_count(device: torch.device, smoke: bool) -> dict[str, object]:
    """Graphs compiled over two epochs with a ragged last batch, with evaluation after each."""
    from torch._dynamo.testing import CompileCounterWithBackend

    n, size = (20, 16) if smoke else (70 * 32 + 17, 64)
    data, model = _batches_and_model("resnet18", n, size, device)
    counter = CompileCounterWithBackend("eager" if smoke else "inductor")
    step_model = compile_for_training(model, backend=counter)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    started = time.perf_counter()
    for epoch in (1, 2):
        train_one_epoch(
            model, data, optimizer, LoopOptions(batch_size=8 if smoke else 32, step_model=step_model), epoch
        )
        predict(model, data, 64)
    return {"graphs": counter.frame_count, "seconds": time.perf_counter() - started}


def determinism(device: torch.device, smoke: bool) -> dict[str, object]:
    """Two runs of the same epoch from the same weights: bit-identical with deterministic
    algorithms on (what train.deterministic turns on), and without."""
    n, size = (16, 16) if smoke else (512, 64)
    results = {}
    for deterministic in (True, False):
        set_determinism(deterministic)
        states = []
        for _ in range(2):
            torch.manual_seed(0)
            data, model = _batches_and_model("resnet18", n, size, device)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            train_one_epoch(model, data, optimizer, LoopOptions(batch_size=32), 1)
            states.append({k: v.cpu() for k, v in model.state_dict().items()})
        results["deterministic" if deterministic else "default"] = all(
            torch.equal(states[0][k], states[1][k]) for k in states[0]
        )
    set_determinism(False)
    return results


def ddp_overhead(device: torch.device, smoke: bool) -> dict[str, object]:
    """One epoch of the train stage's loop under DistributedDataParallel with one process,
    against the same epoch without it: what the wrapper costs on one device."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    arch, n, size, batch = ("resnet18", 64, 32, 32) if smoke else ("resnet50", 256 * 12, 224, 256)
    cuda = device.type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        seconds = {}
        for name in ("plain", "ddp"):
            torch.manual_seed(0)
            data, model = _batches_and_model(arch, n, size, device)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            ids = [device.index] if cuda else None
            wrapped = DistributedDataParallel(model, device_ids=ids) if name == "ddp" else None
            for epoch in (0, 1):  # the first warms up (cuDNN autotuning, allocator)
                if cuda:
                    torch.cuda.synchronize(device)
                started = time.perf_counter()
                train_one_epoch(model, data, optimizer, LoopOptions(batch_size=batch, step_model=wrapped), epoch)
                if cuda:
                    torch.cuda.synchronize(device)
                seconds[name] = time.perf_counter() - started
    finally:
        dist.destroy_process_group()
    return {
        "arch": arch, "images": n, "image_size": size, "batch_size": batch, "plain_s": seconds["plain"],
        "ddp_s": seconds["ddp"], "ddp_over_plain": seconds["plain"] / seconds["ddp"],
    }  # fmt: skip


PARTS: dict[str, Callable[[torch.device, bool], dict[str, object]]] = {
    "pipeline": pipeline_end_to_end,
    "syncs": sync_audit,
    "loop": loop,
    "features": feature_cache,
    "compile": compile_count,
    "determinism": determinism,
    "ddp": ddp_overhead,
}


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script, measures nothing")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    args = parser.parse_args(argv)
    # Before any CUDA work: the determinism part needs cuBLAS started with this setting.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    device = resolve_device(args.device)
    report: dict[str, object] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "smoke": args.smoke,
    }
    for name in args.only.split(","):
        started = time.perf_counter()
        try:
            report[name] = PARTS[name](device, args.smoke)
        except Exception as error:  # one broken part must not lose the others' figures
            report[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-4000:]}
        print(f"{name} ({time.perf_counter() - started:.0f}s): {json.dumps(report[name], default=str)}", flush=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")  # after each part: a kill keeps some
    return report


if __name__ == "__main__":
    main()
