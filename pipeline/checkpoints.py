"""Checkpoints: saved atomically, loaded safely, checked for damage.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads
with `torch.load(weights_only=True)`, which refuses pickled code. It carries a SHA-256
of its own contents, so a truncated or bit-flipped file is caught on load, not used.
"""

import copy
import hashlib
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from pipeline.cli import UserError, error_line
from pipeline.files import atomic_write

FORMAT = "tl-pipeline-checkpoint/1"


class CheckpointError(UserError):
    """A checkpoint or weights file that is missing, damaged or unsafe."""


def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:03d}.pt"


# The weights an epoch's checkpoint holds, by the name evaluate's scores give them: as
# trained (raw), and their moving average when train.ema_decay kept one (ema).
WEIGHTS = {"raw": "model_state_dict", "ema": "ema_state_dict"}


def predictions_name(epoch: int, weights: str) -> str:
    """The file in eval/predictions/ of one checkpoint's test predictions, with `weights`."""
    stem = checkpoint_name(epoch).removesuffix(".pt")
    return f"{stem}.csv" if weights == "raw" else f"{stem}_{weights}.csv"


def save_checkpoint(checkpoint: dict[str, Any], path: Path) -> None:
    """Atomically save a pipeline checkpoint, stamped with its format and checksum."""
    # One device-to-host copy of each tensor, shared by the checksum and the save.
    checkpoint = {**on_cpu(checkpoint), "format": FORMAT}
    checkpoint["checksum"] = content_digest(checkpoint)
    with atomic_write(path) as file:
        torch.save(checkpoint, file)


def on_cpu(obj: Any) -> Any:
    """`obj` with every tensor in it copied to the CPU (tensors already there are kept)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        copied = copy.copy(obj)  # the same type and attributes (a state_dict's _metadata)
        for key, value in obj.items():
            copied[key] = on_cpu(value)
        return copied
    if isinstance(obj, list | tuple):
        return type(obj)(on_cpu(item) for item in obj)
    return obj


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a pipeline checkpoint, verifying it is safe, complete and undamaged."""
    return verify_checkpoint(load_weights_file(path), path)


def load_each(paths: list[Path], damaged: list[str] | None = None) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(path, checkpoint) for each path that loads, one at a time, so memory holds one. After
    the last, a CheckpointError naming every file that was damaged, if any was; with
    `damaged`, their errors are added to it instead, for the caller to report."""
    errors: list[str] = [] if damaged is None else damaged
    for path in paths:
        try:
            checkpoint = load_checkpoint(path)
        except CheckpointError as error:
            errors.append(str(error))
            continue
        yield path, checkpoint
    if errors and damaged is None:
        raise unusable(errors, len(paths))


def unusable(errors: list[str], total: int) -> CheckpointError:
    """The one error for every damaged checkpoint among `total`."""
    return CheckpointError(f"{len(errors)} of {total} checkpoints cannot be used: {'; '.join(errors)}")


def verify_checkpoint(loaded: Any, path: Path) -> dict[str, Any]:
    """Check what `load_weights_file(path)` returned: a pipeline checkpoint whose checksum matches."""
    if not is_checkpoint(loaded):
        raise CheckpointError(f"{path} is not a checkpoint of this pipeline (no '{FORMAT}' format tag)")
    checkpoint = dict(loaded)
    stored = checkpoint.pop("checksum", None)
    if stored != content_digest(checkpoint):
        raise CheckpointError(f"{path} is damaged: its contents do not match the checksum stored in it")
    return checkpoint


def load_weights_file(path: Path) -> Any:
    """torch.load with weights_only=True (a .safetensors file: safetensors, whose format holds
    tensors only), turning every failure into a one-line CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    check_torch_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower():
            raise CheckpointError(
                f"{path} was refused: it holds pickled Python objects, not just tensors, and loading it could run "
                "code. Re-save it as a plain state_dict (torch.save(model.state_dict(), path))"
            ) from None
        raise CheckpointError(f"{path} is damaged (truncated or corrupt): {error}") from None
    except Exception as error:  # torch raises RuntimeError, EOFError, UnicodeDecodeError... for damage
        raise CheckpointError(f"{path} is damaged (truncated or corrupt): {error_line(error)}") from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file  # installed with timm; only .safetensors files need it

    try:
        return load_file(path, device="cpu")
    except Exception as error:  # SafetensorError for damage, and others for a file of another format
        raise CheckpointError(f"{path} is not a readable safetensors file: {error_line(error)}") from None


def check_torch_file(path: Path) -> None:
    """Raise a CheckpointError that says what `path` is, when it is no torch.save file at all
    (an image, a torch.export program...), rather than let torch.load call it damaged or unsafe."""
    with open(path, "rb") as file:
        start = file.read(4)
    if not start:
        raise CheckpointError(f"{path} is damaged: it is empty (0 bytes)")
    if start == b"PK\x03\x04":  # torch.save's zip format, but torch.export's too
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as error:
            raise CheckpointError(f"{path} is damaged (truncated or corrupt): {error}") from None
        if any(name.endswith("/archive_format") for name in names):
            raise CheckpointError(
                f"{path} is a torch.export program (.pt2), not a checkpoint: use models/best.pt here, "
                "and torch.export.load for the .pt2 (docs/export.md)"
            )
        if not any(name.endswith("/data.pkl") for name in names):
            raise CheckpointError(f"{path} is a zip archive, but not one that torch.save wrote")
    elif start[0] != 0x80:  # torch.save's legacy format starts with a pickle protocol mark
        raise CheckpointError(f"{path} is not a PyTorch file (a checkpoint or state_dict saved with torch.save)")


def is_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def content_digest(obj: Any) -> str:
    """SHA-256 over every key, number, string and tensor byte, in a stable order."""
    digest = hashlib.sha256()
    _feed(digest, obj)
    return digest.hexdigest()


def _feed(digest: "hashlib._Hash", obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        tensor = obj.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        digest.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            _feed(digest, key)
            _feed(digest, obj[key])
    elif isinstance(obj, list | tuple):
        digest.update(f"L{len(obj)}".encode())
        for item in obj:
            _feed(digest, item)
    else:
        digest.update(f"{type(obj).__name__}:{obj!r};".encode())
