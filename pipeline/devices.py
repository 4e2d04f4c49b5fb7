"""Where the work runs: the device from params (`device: auto`), the memory layout models and
inputs share there, moving tensors and models to it, bf16 autocast on CUDA, and
deterministic kernels."""

import os
from contextlib import nullcontext

import torch
from torch import nn

from pipeline.cli import UserError


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present, else the CPU; anything else must be a torch device.
    The result is canonical (`cuda` becomes `cuda:<current index>`), see `canonical_device`."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    # torch also names devices the pipeline never runs on (mps, meta, xpu, cpu:1): refuse them
    # here, not with a traceback once a stage has started.
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index is not None):
        raise UserError(f"device = {name!r} is not a device; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device = {name!r}, but CUDA is not available here; use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device = {name!r}, but there are {torch.cuda.device_count()} CUDA device(s) here")
    return canonical_device(device)


def canonical_device(device: torch.device) -> torch.device:
    """`cuda` as `cuda:<current index>`, the way tensors report it.

    torch.device("cuda") and torch.device("cuda:0") differ, although tensors moved to the first
    name report the second: compare devices only in this form.
    """
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA (what cuDNN's fast bf16 kernels want); the CPU keeps the default
    layout, so its results stay what they were."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move `model` to `device` in the layout that `Batches.load` gives its inputs there.

    Every stage moves its model with this, so model and inputs always share a layout
    (a mismatch makes each convolution convert, and changes the numbers).
    """
    return model.to(device).to(memory_format=memory_format(device))


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`: as it is when already there; CPU -> CUDA from pinned memory,
    without blocking the host."""
    if canonical_device(tensor.device) == canonical_device(device):
        return tensor
    if tensor.device.type == "cpu" and device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def set_determinism(enabled: bool) -> None:
    """Deterministic kernels on CUDA (param train.deterministic), so that a resumed GPU run
    repeats an uninterrupted one bit for bit, at some cost in speed. The CPU path is
    deterministic either way. Call it before the first CUDA operation: cuBLAS reads its
    workspace setting when it starts."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = False  # its choice of kernel can differ between runs


def autocast(device: torch.device):
    """bf16 autocast on CUDA; the CPU path stays in float32 so its results do not change."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()
