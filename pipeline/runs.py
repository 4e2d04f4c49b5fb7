"""Resumable training runs: every epoch's checkpoint is kept where DVC does not delete it.

DVC deletes a stage's outputs before it re-runs it, so each checkpoint is first written
under .cache/runs/<fingerprint>/ and hard-linked into checkpoints/. The fingerprint hashes
everything that shapes the run (params, data, weights and the code: every file under
pipeline/, the same files as dvc.yaml's `- pipeline` dep), so a run resumes only its own
epochs. A finished run deletes its folder; DVC's cache then holds the checkpoints, and its
run-cache restores a finished run.
"""

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.checkpoints import CheckpointError, checkpoint_name, load_checkpoint, save_checkpoint

log = logging.getLogger("pipeline.runs")

RUNS_DIR = Path(".cache/runs")
CHECKPOINT_DIR = Path("checkpoints")
CODE_DIR = Path(__file__).parent
# What each checkpoint records about its epoch: the history a resumed run starts from.
RECORD_KEYS = ("epoch", "loss", "val_loss", "val_accuracy", "val_f1", "lr", "seconds")


def code_files() -> list[Path]:
    """The code that counts: every file under pipeline/ but bytecode (which .dvcignore hides
    from DVC too), as paths relative to the project root."""
    root = CODE_DIR.parent
    files = (path for path in CODE_DIR.rglob("*") if path.is_file() and "__pycache__" not in path.parts)
    return sorted(path.relative_to(root) for path in files)


def fingerprint(shaping: dict[str, Any], inputs: list[Path]) -> str:
    """A hash of the params that shape a run, the files it reads and the code that runs it."""
    digest = hashlib.sha256()
    digest.update(json.dumps(shaping, sort_keys=True, default=str).encode())
    code = [(path, CODE_DIR.parent / path) for path in code_files()]
    for name, file in [*((path, path) for path in inputs), *code]:
        digest.update(name.as_posix().encode())
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()[:16]


def publish(path: Path, output: Path) -> None:
    """Put a finished checkpoint into the stage output folder, as a hard link where possible."""
    target = output / path.name
    target.unlink(missing_ok=True)
    try:
        os.link(path, target)
    except OSError:  # file systems without hard links
        shutil.copy2(path, target)


@dataclass
class RunFolder:
    """The folder that keeps one run's checkpoints until the run finishes."""

    fingerprint: str
    root: Path = RUNS_DIR
    output: Path = CHECKPOINT_DIR  # the stage output that receives each finished checkpoint

    @property
    def path(self) -> Path:
        return self.root / self.fingerprint

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> list[dict[str, Any]]:
        """Load the last good checkpoint that a killed attempt of this run left, if any, into
        the model, optimizer and scheduler; returns the finished epochs' records.

        Damaged checkpoints, and any after them, are reported and deleted from this folder;
        the run continues from the last good one.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        for leftover in self.path.glob(".*.tmp"):  # a write that a kill cut short
            leftover.unlink()
        history: list[dict[str, Any]] = []
        last: dict[str, Any] | None = None
        paths = self.checkpoints()
        for index, path in enumerate(paths):
            try:
                checkpoint = load_checkpoint(path)
                if checkpoint["epoch"] != index + 1 or checkpoint["fingerprint"] != self.fingerprint:
                    raise CheckpointError(f"{path} does not continue this run")
            except CheckpointError as error:
                log.warning("%s; resuming from the last good checkpoint before it", error)
                for later in paths[index:]:
                    later.unlink()
                break
            history.append({key: checkpoint[key] for key in RECORD_KEYS})
            last = checkpoint
        if last is not None:
            model.load_state_dict(last["model_state_dict"])
            optimizer.load_state_dict(last["optimizer_state_dict"])
            scheduler.load_state_dict(last["scheduler_state_dict"])
            log.info("resuming after epoch %d from %s", last["epoch"], self.path)
        return history

    def publish_all(self) -> None:
        """Make the stage output hold exactly this run's checkpoints so far (files left by a
        run by hand go)."""
        shutil.rmtree(self.output, ignore_errors=True)
        self.output.mkdir(parents=True)
        for path in self.checkpoints():
            publish(path, self.output)

    def commit_epoch(self, checkpoint: dict[str, Any]) -> None:
        """Save an epoch's checkpoint here, then publish it."""
        path = self.path / checkpoint_name(checkpoint["epoch"])
        save_checkpoint(checkpoint, path)
        publish(path, self.output)

    def finish(self) -> None:
        """The run is complete: its checkpoints live on in the output (and DVC's cache), not here."""
        shutil.rmtree(self.path, ignore_errors=True)

    def checkpoints(self) -> list[Path]:
        return sorted(self.path.glob("epoch_*.pt"))
