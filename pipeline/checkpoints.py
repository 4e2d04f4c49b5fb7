"""Checkpoints: saved atomically, loaded safely, checked for damage.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads
with `torch.load(weights_only=True)`, which refuses pickled code. It carries a SHA-256
of its own contents, so a truncated or bit-flipped file is caught on load, not used.
"""

import copy
import hashlib
import logging
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from pipeline.cli import UserError, error_line
from pipeline.files import atomic_write

log = logging.getLogger(__name__)

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


def save_checkpoint(checkpoint: dict[str, Any], path: Path) -> str:
    """Atomically save a pipeline checkpoint, stamped with its format and checksum; the checksum."""
    # One device-to-host copy of each tensor, shared by the checksum and the save.
    checkpoint = {**on_cpu(checkpoint), "format": FORMAT}
    checkpoint["checksum"] = content_digest(checkpoint)
    with atomic_write(path) as file:
        torch.save(checkpoint, file)
    return checkpoint["checksum"]


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


def load_weights_file(path: Path, lazy: bool = False) -> Any:
    """torch.load with weights_only=True (a .safetensors file: safetensors, whose format holds
    tensors only), turning every failure into a one-line CheckpointError.

    `lazy` reads no tensor's bytes, only the file's structure, names and shapes, in a
    fraction of a second however large the file: a torch file's tensors are memory-mapped
    (torch.load's mmap; a file in torch's legacy, pre-zip format is read whole), and a
    safetensors file's are meta tensors of the shapes its header states.
    """
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        return _safetensors_header(path) if lazy else _load_safetensors(path)
    zipped = check_torch_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=lazy and zipped)
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


def _safetensors_header(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors as meta tensors of their shapes: its header alone is read."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as file:
            names = list(file.keys())  # a list: safe_open objects are not iterable
            return {key: torch.empty(file.get_slice(key).get_shape(), device="meta") for key in names}
    except Exception as error:  # SafetensorError for damage, and others for a file of another format
        raise CheckpointError(f"{path} is not a readable safetensors file: {error_line(error)}") from None


def check_torch_file(path: Path) -> bool:
    """Raise a CheckpointError that says what `path` is, when it is no torch.save file at all
    (an image, a torch.export program...), rather than let torch.load call it damaged or unsafe.
    Whether it is in torch.save's zip format (False: the legacy format, a bare pickle)."""
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
        return True
    if start[0] != 0x80:  # torch.save's legacy format starts with a pickle protocol mark
        raise CheckpointError(f"{path} is not a PyTorch file (a checkpoint or state_dict saved with torch.save)")
    return False


# The entries that other training code saves a model's state_dict under, tried in this order:
# Lightning and many scripts (state_dict), torchvision's references and timm's (model), the
# PyTorch tutorials' (model_state_dict).
STATE_DICT_ENTRIES = ("state_dict", "model", "model_state_dict")
# What wrappers put before every key: DistributedDataParallel and DataParallel (module.),
# torch.compile (_orig_mod.).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def weights_state(loaded: Any, path: Path, arch: str) -> dict[str, torch.Tensor]:
    """The state_dict in a loaded weights file: a pipeline checkpoint's (of `arch`), a plain
    state_dict, or one under a STATE_DICT_ENTRIES entry of a dict, with the WRAPPER_PREFIXES
    taken off its keys."""
    if is_checkpoint(loaded):
        if loaded.get("arch") != arch:
            raise UserError(f"{path} holds a {loaded.get('arch')} checkpoint, but model.arch is {arch}")
        return check_tensors(loaded["model_state_dict"], path)
    entry = next((key for key in STATE_DICT_ENTRIES if _is_state_dict(_entry(loaded, key))), None)
    state = loaded if entry is None else loaded[entry]
    if not _is_state_dict(state):
        raise CheckpointError(
            f"{path} is neither a state_dict, nor a checkpoint of this pipeline, nor a dict that holds a "
            f"state_dict under {' or '.join(repr(key) for key in STATE_DICT_ENTRIES)}"
        )
    check_tensors(state, path)
    removed = ""
    for _ in WRAPPER_PREFIXES:  # each may wrap the other: module._orig_mod.conv1.weight
        for prefix in WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state, removed = {key.removeprefix(prefix): value for key, value in state.items()}, removed + prefix
    if entry or removed:
        where = f"the state_dict under '{entry}'" if entry else "the state_dict"
        log.info("%s: %s%s", path, where, f", its keys without the prefix '{removed}'" if removed else "")
    return dict(state)


def check_tensors(state: dict[Any, torch.Tensor], path: Path) -> dict[Any, torch.Tensor]:
    """`state`, once each of its entries could be a model's weight: named by text, of real
    numbers, with values in the file; else a CheckpointError naming the first that is not.
    Checked here, before any model is built: each of these loads (or fails) much later."""
    save = "save the model's state_dict after loading its weights (torch.save(model.state_dict(), path))"
    for key, tensor in state.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path} holds a tensor under {key!r}, not under a weight's name: {save}")
        if tensor.is_complex():
            raise CheckpointError(f"{path}: {key} holds complex numbers ({tensor.dtype}), not a weight's: {save}")
        # Read lazily, a safetensors file's header gives meta tensors; its file holds the values.
        if tensor.is_meta and path.suffix != ".safetensors":
            raise CheckpointError(f"{path}: {key} has no values (a tensor on the meta device): {save}")
    return state


def _entry(loaded: Any, key: str) -> Any:
    return loaded.get(key) if isinstance(loaded, dict) else None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


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
