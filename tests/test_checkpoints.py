"""Checkpoints: exact round trips, atomic writes, damage detection, and refusal of pickled code."""

import os
import pickle
import stat
import struct
import sys
import tempfile
import zipfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from pipeline.checkpoints import (
    FORMAT,
    CheckpointError,
    atomic_write,
    load_checkpoint,
    load_weights_file,
    save_checkpoint,
)
from testing.project import REPO, run, set_params, stage

FORCE_SAFE_LOAD = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_identical(actual: Any, expected: Any, where: str = "checkpoint") -> None:
    """Equal values of equal types; tensors bit for bit (dtype, shape and every byte)."""
    assert type(actual) is type(expected), where
    if isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, where
        assert tensor_bytes(actual) == tensor_bytes(expected), where
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), where
        for key in expected:
            assert_identical(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_identical(a, e, f"{where}[{index}]")
    else:
        assert actual == expected, where


def sample_checkpoint() -> dict[str, Any]:
    """What train saves, in miniature: model and optimizer state (int keys), numbers, strings, lists."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 6, 6))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    optimizer.step()
    return {
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "odd_tensors": {
            "nan_and_inf": torch.tensor([float("nan"), float("inf"), -0.0, 1e-45]),
            "half": torch.randn(5).half(),
            "bfloat16": torch.randn(5).bfloat16(),
            "int64": torch.arange(-3, 3),
            "bool": torch.tensor([True, False]),
            "empty": torch.empty(0, 3),
            "scalar": torch.tensor(3.5),
            "strided_view": torch.arange(12.0).reshape(3, 4).t(),
        },
        "epoch": 3,
        "loss": 0.1 + 0.2,
        "seconds": 1e-300,
        "arch": "resnet18",
        "classes": ["5", "6", "ü ✓"],
        "mean": [0.485, 0.456, 0.406],
        "nested": {"a": {"b": [1, 2.5, "x", None, True, (1, 2)]}},
        "frozen_modules": [],
    }


def tensor_bytes_offset(path: Path) -> tuple[int, int]:
    """(offset, size) in the file of the largest tensor's raw bytes (torch.save stores them uncompressed)."""
    data = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        tensors = [i for i in archive.infolist() if "/data/" in i.filename and not i.filename.endswith(".pkl")]
        entry = max(tensors, key=lambda i: i.file_size)
    assert entry.compress_type == zipfile.ZIP_STORED
    name_length, extra_length = struct.unpack("<HH", data[entry.header_offset + 26 : entry.header_offset + 30])
    return entry.header_offset + 30 + name_length + extra_length, entry.file_size


# --- round trip -----------------------------------------------------------------------


def test_checkpoint_round_trip_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "epoch_001.pt"
    checkpoint = sample_checkpoint()
    save_checkpoint(checkpoint, path)

    loaded = load_checkpoint(path)
    assert loaded.pop("format") == FORMAT
    assert "checksum" not in loaded
    assert_identical(loaded, checkpoint)
    assert [p.name for p in tmp_path.iterdir()] == ["epoch_001.pt"]  # no temp file left behind


# --- atomic writes --------------------------------------------------------------------


@pytest.mark.parametrize("interruption", [RuntimeError, KeyboardInterrupt])
def test_atomic_write_interrupted_keeps_the_old_file(tmp_path: Path, interruption: type[BaseException]) -> None:
    path = tmp_path / "scores.csv"
    path.write_text("old contents\n")
    with pytest.raises(interruption), atomic_write(path, "w") as file:
        file.write("new contents, cut short")
        file.flush()
        raise interruption
    assert path.read_text() == "old contents\n"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]  # the temp file is gone too


def test_atomic_write_interrupted_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "new" / "scores.csv"
    with pytest.raises(RuntimeError), atomic_write(path, "w") as file:
        file.write("new contents, cut short")
        raise RuntimeError
    assert list(path.parent.iterdir()) == []


def test_atomic_write_replaces_the_file_on_success(tmp_path: Path) -> None:
    path = tmp_path / "out" / "model.bin"
    path.parent.mkdir()
    path.write_bytes(b"old")
    with atomic_write(path) as file:
        file.write(b"new bytes")
        assert path.read_bytes() == b"old"  # nobody sees a half-written file
    assert path.read_bytes() == b"new bytes"
    assert [p.name for p in path.parent.iterdir()] == ["model.bin"]


# --- damage ---------------------------------------------------------------------------


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def flip_tensor_byte(path: Path) -> None:
    offset, size = tensor_bytes_offset(path)
    data = bytearray(path.read_bytes())
    data[offset + size // 2] ^= 0x10
    path.write_bytes(bytes(data))


def resave(path: Path, edit: Callable[[dict], None]) -> None:
    """Load the file without checks, `edit` it, and save it again with its old checksum: a file
    that torch loads as well-formed, but whose contents are not what was saved."""
    loaded = torch.load(path, weights_only=True)
    edit(loaded)
    torch.save(loaded, path)


def retype(path: Path) -> None:  # the same tensor bytes, read as another dtype
    resave(path, lambda c: c.update(weights=c["weights"].view(torch.int32)))


def reshape(path: Path) -> None:  # the same tensor bytes, in another shape
    resave(path, lambda c: c.update(weights=c["weights"].view(32, 128)))


def renumber(path: Path) -> None:  # a number changed, the tensors untouched
    resave(path, lambda c: c.update(epoch=3))


def rename(path: Path) -> None:  # an entry under another name (a flipped bit in a key), its value untouched
    resave(path, lambda c: c.update(weighs=c.pop("weights")))


def relabel(path: Path) -> None:  # a class name in a list changed, its length kept: predict would name it wrongly
    resave(path, lambda c: c.update(classes=["cat", "cot"]))


@pytest.mark.parametrize("damage", [truncate, empty, flip_tensor_byte, retype, reshape, renumber, rename, relabel])
def test_damaged_checkpoint_is_detected(tmp_path: Path, damage: Callable[[Path], None]) -> None:
    path = tmp_path / "epoch_002.pt"
    save_checkpoint({"weights": torch.randn(64, 64), "epoch": 2, "classes": ["cat", "dog"]}, path)
    damage(path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert str(path) in message and "damaged" in message, message
    assert "\n" not in message


def test_the_flipped_byte_really_lands_in_tensor_data(tmp_path: Path) -> None:
    """Guards the damage test above: without the checksum, the flip would load as a silently wrong weight."""
    path = tmp_path / "epoch_002.pt"
    weights = torch.randn(64, 64)
    save_checkpoint({"weights": weights, "epoch": 2}, path)
    flip_tensor_byte(path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 2
    assert (loaded["weights"] != weights).sum() == 1


# --- pickled code is refused ----------------------------------------------------------


class Evil:
    """Unpickling this opens (creates) the marker file: stands for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


@pytest.fixture(params=["torch.save", "pickle.dump"])
def evil_file(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path]:
    """(a malicious weights file, the marker it creates when loaded unsafely)."""
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    if request.param == "torch.save":
        torch.save(Evil(marker), path)
    else:
        with path.open("wb") as file:
            pickle.dump(Evil(marker), file)
    assert not marker.exists()
    return path, marker


def test_evil_file_runs_code_when_unpickled(evil_file: tuple[Path, Path]) -> None:
    """The control for the refusal tests: this file really does run code under a plain unpickler."""
    path, marker = evil_file
    if path.read_bytes().startswith(b"PK"):
        with zipfile.ZipFile(path) as archive:
            payload = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    else:
        payload = path.read_bytes()
    pickle.loads(payload).close()
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize(
    "loader",
    [load_checkpoint, load_weights_file, partial(load_weights_file, lazy=True)],
    ids=["checkpoint", "full", "lazy"],
)
def test_pickled_code_is_refused_not_run(
    evil_file: tuple[Path, Path], loader: Callable[[Path], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the process-wide safety net that `import pipeline` sets: the loader itself must refuse.
    monkeypatch.delenv(FORCE_SAFE_LOAD, raising=False)
    path, marker = evil_file
    with pytest.raises(CheckpointError) as caught:
        loader(path)
    message = str(caught.value)
    assert f"{path} was refused" in message and "could run code" in message, message
    assert not marker.exists()


IMPORT_THEN_LOAD = """
import sys, torch
if sys.argv[1] == "import pipeline":
    import pipeline
torch.load(sys.argv[2], weights_only=False)
"""


@pytest.mark.parametrize("import_pipeline", [False, True], ids=["without-pipeline", "after-import-pipeline"])
def test_importing_pipeline_makes_every_torch_load_safe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, import_pipeline: bool
) -> None:
    """Even torch.load(weights_only=False), as torch.hub calls it, refuses pickled code once pipeline is imported.

    Without the import the same load runs the code: the control that shows the file is live.
    """
    monkeypatch.delenv(FORCE_SAFE_LOAD, raising=False)  # this pytest process imported pipeline already
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save(Evil(marker), path)
    args = [sys.executable, "-c", IMPORT_THEN_LOAD, "import pipeline" if import_pipeline else "-", str(path)]
    result = run(args, REPO, check=False)
    if import_pipeline:
        assert result.returncode != 0
        assert "Weights only load failed" in result.stderr, result.stderr
        assert not marker.exists()
    else:
        assert result.returncode == 0, result.stderr
        assert marker.exists()


def test_a_users_opposite_switch_leaves_loads_safe_and_working(tmp_path: Path) -> None:
    """A shell that exports TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (torch's opposite switch; with
    both set torch refuses every load): after `import pipeline`, tensors still load, and
    pickled code is still refused."""
    plain, marker, evil = tmp_path / "plain.pt", tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2)}, plain)
    torch.save(Evil(marker), evil)
    code = "import sys, torch\nimport pipeline\nprint(torch.load(sys.argv[1], weights_only=False)['w'].sum().item())"
    env = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    assert run([sys.executable, "-c", code, str(plain)], REPO, env=env).stdout.strip() == "2.0"
    refused = run([sys.executable, "-c", IMPORT_THEN_LOAD, "import pipeline", str(evil)], REPO, check=False, env=env)
    assert refused.returncode != 0 and "Weights only load failed" in refused.stderr, refused.stderr
    assert not marker.exists()


def test_check_params_refuses_an_evil_weights_file(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # check_params reads the file's structure, before any stage: the first to read it must refuse it.
    monkeypatch.delenv(FORCE_SAFE_LOAD, raising=False)  # as in a user's shell
    marker = project.parent / "pwned"
    torch.save(Evil(marker), project / "models" / "weights" / "evil.pt")
    set_params(project, **{"model.weights": "models/weights/evil.pt"})

    result = stage("check_params", project, check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    assert "models/weights/evil.pt was refused" in errors[0]
    assert not marker.exists()
    assert not (project / "checks" / "params.ok").exists()


def resnet18_state(convert: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """The default arch's weights, each float tensor converted: a file that fits it, as saved."""
    state = torchvision.models.resnet18().state_dict()
    return {key: convert(value) if value.is_floating_point() else value for key, value in state.items()}


SAVE_STATE = "save the model's state_dict after loading its weights (torch.save(model.state_dict(), path))"


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({1: torch.zeros(1)}, f"models/weights/x.pt holds a tensor under 1, not under a weight's name: {SAVE_STATE}"),
        (
            resnet18_state(lambda tensor: tensor.to(torch.complex64)),
            f"models/weights/x.pt: conv1.weight holds complex numbers (torch.complex64), not a weight's: {SAVE_STATE}",
        ),
        (
            resnet18_state(lambda tensor: tensor.to("meta")),
            f"models/weights/x.pt: conv1.weight has no values (a tensor on the meta device): {SAVE_STATE}",
        ),
    ],
)
def test_check_params_refuses_tensors_no_model_can_load(project: Path, weights: dict, message: str) -> None:
    """Refused before the weights stage, which would fail on them, or load complex numbers' real parts."""
    torch.save(weights, project / "models/weights/x.pt")
    set_params(project, **{"model.weights": "models/weights/x.pt"})
    result = stage("check_params", project, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"pipeline: error: {message}", result.stderr


# --- files that are no checkpoint at all ---------------------------------------------------


def test_an_image_is_called_what_it_is_not_unsafe_or_damaged(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    Image.new("RGB", (4, 4)).save(path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(caught.value) == f"{path} is not a PyTorch file (a checkpoint or state_dict saved with torch.save)"


def test_a_torch_export_program_is_named_as_one(tmp_path: Path) -> None:
    path = tmp_path / "best.pt2"
    program = torch.export.export(torch.nn.Linear(2, 2), (torch.zeros(2, 2),))
    torch.export.save(program, str(path))
    with pytest.raises(CheckpointError, match=r"is a torch\.export program \(\.pt2\), not a checkpoint"):
        load_checkpoint(path)


def test_atomic_write_keeps_its_temporary_file_beside_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rename that makes a write atomic cannot cross filesystems (EXDEV), and TMPDIR is often
    a tmpfs while the project is on a disk: the temporary file must be in the target's folder,
    whatever TMPDIR says. Its name is hidden and ends in .tmp, as the run folder's clean-up of
    writes cut short looks for (runs.py)."""
    elsewhere = tmp_path / "tmpdir"
    elsewhere.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))  # what TMPDIR sets
    path = tmp_path / "models" / "epoch_001.pt"
    with atomic_write(path) as file:
        written = Path(file.name)
        file.write(b"weights")
    assert written.parent == path.parent and written.name.startswith(".epoch_001.pt.") and written.suffix == ".tmp"
    assert path.read_bytes() == b"weights" and list(elsewhere.iterdir()) == []


def test_atomic_write_syncs_the_folder_after_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without it, a power loss can undo the rename though the file's bytes were synced."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(source: object, target: object) -> None:
        events.append("rename")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with atomic_write(tmp_path / "scores.csv", "w") as file:
        file.write("epoch\n1\n")
    assert events == ["fsync file", "rename", "fsync folder"]
