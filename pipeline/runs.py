"""Resumable training runs: every epoch's checkpoint is kept where DVC does not delete it.

DVC deletes a stage's outputs before it re-runs it, so each checkpoint is first written
under .cache/runs/<fingerprint>/ and hard-linked into checkpoints/. The fingerprint hashes
everything that shapes the run (params, data, weights and the code: every file under
pipeline/, the same files as dvc.yaml's `- pipeline` dep; paths relative to the project,
so a moved project resumes too), so a run resumes only its own epochs, and a finished run
is published again only for the same params.

- A run's lineage is its fingerprint without the settings that split its work but keep its
  global batches (processes, accumulated batches, threads). A killed run goes on under other
  such settings: a run with none of its own epochs takes over the unfinished folder of its
  lineage, and the log says what changed (`RunFolder.adopt`).

- The folders live in the project's own .cache, also for queued and `--temp` experiments
  (see files.project_cache), so a killed experiment resumes wherever it is rerun.
- One trainer at a time: a run folder is locked while a trainer uses it.
- A finished run keeps its folder, marked finished: if the stage is killed after training
  but before DVC records its outputs, the rerun republishes every epoch instead of training.
- Only the newest KEEP_OTHER_RUNS folders of other runs are kept; each run start lists and
  removes the older ones (their checkpoints of finished runs live on in DVC's cache).
- Early stopping (`early_stop`) is decided from the finished epochs' records alone, so a
  resumed run stops where the uninterrupted one would have.
"""

import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from pipeline.checkpoints import CheckpointError, checkpoint_name, load_checkpoint, save_checkpoint
from pipeline.cli import UserError
from pipeline.config import EarlyStoppingParams, Mode
from pipeline.files import atomic_write, project_cache
from pipeline.metrics import columns
from pipeline.paths import CHECKPOINT_DIR

log = logging.getLogger("pipeline.runs")

RUNS_DIR = project_cache("runs")
KEEP_OTHER_RUNS = 3
FINISHED = "finished"  # the marker file of a run that trained all its epochs
LOCK = ".lock"
SETTINGS = "run.json"  # the run's lineage and the settings it leaves out
CODE_DIR = Path(__file__).parent
# What each checkpoint records about its epoch: the history a resumed run starts from.
# loss is the training loss; the val metrics are engine.score's.
RECORD_KEYS = ("epoch", "loss", *columns("val"), "lr", "seconds", "threads")


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
    """The folder that keeps one run's checkpoints, locked by the trainer that uses it."""

    fingerprint: str
    lineage: str = ""  # the fingerprint without `settings` (see the module's docstring)
    settings: dict[str, Any] = field(default_factory=dict)  # what the lineage leaves out: {param: value}
    root: Path = RUNS_DIR
    output: Path = CHECKPOINT_DIR  # the stage output that receives each finished checkpoint
    _lock: Any = None  # the open lock file, held until the process ends

    @property
    def path(self) -> Path:
        return self.root / self.fingerprint

    def acquire(self) -> None:
        """Lock the folder for this process, or raise a UserError naming the trainer that has it.

        An flock ends with its process, so a killed trainer never leaves a stale lock.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path / LOCK, "a+")  # noqa: SIM115 (held for the process's life)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            holder = self._lock.read().strip() or "another process"
            raise UserError(
                f"another trainer ({holder}) is training this run in {self.path}; wait for it to end, or stop it"
            ) from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"pid {os.getpid()}")
        self._lock.flush()
        with atomic_write(self.path / SETTINGS, "w") as file:
            json.dump({"lineage": self.lineage, "settings": self.settings}, file)

    def adopt(self) -> None:
        """Take over the newest unfinished run folder of this lineage that no trainer holds:
        its checkpoints move here, and the log names the settings that changed. A killed run
        thus goes on under another process count (the same global batches); a finished one
        is never taken, so it stays the result of its own settings alone."""
        for other in sorted(self.root.iterdir(), key=lambda path: path.stat().st_mtime, reverse=True):
            if other == self.path or not (other / SETTINGS).is_file() or (other / FINISHED).exists():
                continue
            recorded = json.loads((other / SETTINGS).read_text())
            checkpoints = sorted(other.glob("epoch_*.pt"))
            if recorded["lineage"] != self.lineage or not checkpoints:
                continue
            with _lock_or_none(other) as lock:
                if lock is None:  # a live trainer holds it
                    continue
                for path in checkpoints:  # in epoch order: a kill on the way leaves a run that resumes
                    os.replace(path, self.path / path.name)
                shutil.rmtree(other, ignore_errors=True)
            changed = ", ".join(
                f"{key} {recorded['settings'].get(key)} -> {value}"
                for key, value in self.settings.items()
                if recorded["settings"].get(key) != value
            )
            log.info(
                "continuing the run stopped after epoch %d in %s with %s: the global batches stay the same; "
                "docs/distributed.md says how far the result moves",
                len(checkpoints),
                other,
                changed,
            )
            return

    def restore(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        ema: AveragedModel | None = None,
        owner: bool = True,
    ) -> list[dict[str, Any]]:
        """Load the last good checkpoint that a killed attempt of this run left, if any, into
        the model, optimizer, scheduler and weights' moving average; returns the finished
        epochs' records.

        Damaged checkpoints, and any after them, are reported and deleted from this folder;
        the run continues from the last good one. Not the `owner` (a training process other
        than rank 0, after rank 0 restored): only read.
        """
        if owner:
            self.acquire()
            if not self.checkpoints():
                self.adopt()
            prune_other_runs(self.root, keep=self.fingerprint)
            for leftover in self.path.glob(".*.tmp"):  # a write that a kill cut short
                leftover.unlink()
        history: list[dict[str, Any]] = []
        last: dict[str, Any] | None = None
        paths = self.checkpoints()
        for index, path in enumerate(paths):
            try:
                checkpoint = load_checkpoint(path)
                if checkpoint["epoch"] != index + 1 or checkpoint.get("lineage") != self.lineage:
                    raise CheckpointError(f"{path} does not continue this run")
            except CheckpointError as error:
                log.warning("%s; resuming from the last good checkpoint before it", error)
                for later in paths[index:] if owner else []:
                    later.unlink()
                break
            history.append({key: checkpoint[key] for key in RECORD_KEYS})
            last = checkpoint
        if last is not None:
            model.load_state_dict(last["model_state_dict"])
            optimizer.load_state_dict(last["optimizer_state_dict"])
            scheduler.load_state_dict(last["scheduler_state_dict"])
            if ema is not None:
                ema.module.load_state_dict(last["ema_state_dict"])
                ema.n_averaged.fill_(last["ema_updates"])
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
        """Mark the run complete. The folder stays, so that a rerun before DVC has recorded the
        outputs republishes them; prune_other_runs removes it once newer runs pile up."""
        with atomic_write(self.path / FINISHED, "w") as file:
            file.write("all epochs trained\n")

    def checkpoints(self) -> list[Path]:
        return sorted(self.path.glob("epoch_*.pt"))


def early_stop(history: list[dict[str, Any]], metric: str, mode: Mode, config: EarlyStoppingParams) -> str | None:
    """Why training should stop now, or None: `metric` has not improved by more than
    min_delta for `patience` epochs. Derived from the history, so it survives a resume."""
    if config.patience <= 0 or not history:
        return None
    sign = 1 if mode is Mode.min else -1
    best_epoch, best = 0, math.inf
    for record in history:
        value = sign * record[metric]
        if math.isfinite(value) and value < best - config.min_delta:
            best_epoch, best = record["epoch"], value
    waited = history[-1]["epoch"] - best_epoch
    if waited < config.patience:
        return None
    return (
        f"early stopping after epoch {history[-1]['epoch']}: {metric} has not improved by more than "
        f"{config.min_delta} for {waited} epochs (best: epoch {best_epoch})"
    )


def prune_other_runs(root: Path, keep: str) -> None:
    """Report the run folders beside `keep`, and remove all but the newest KEEP_OTHER_RUNS.

    A folder that another live trainer holds is never removed.
    """
    others = sorted(
        (path for path in root.iterdir() if path.is_dir() and path.name != keep),
        key=lambda path: path.stat().st_mtime,
        reverse=True,
    )
    if not others:
        return
    sizes = {path: sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) for path in others}
    unfinished = sum(1 for path in others if not (path / FINISHED).exists())
    megabytes = sum(sizes.values()) / 1e6
    log.info("%d other run folder(s) in %s (%d unfinished, %.0f MB)", len(others), root, unfinished, megabytes)
    for path in others[KEEP_OTHER_RUNS:]:
        if _locked(path):
            continue
        state = "finished" if (path / FINISHED).exists() else "unfinished"
        shutil.rmtree(path, ignore_errors=True)
        log.info(
            "removed the %s run folder %s (%.0f MB); only the newest %d are kept",
            state,
            path,
            sizes[path] / 1e6,
            KEEP_OTHER_RUNS,
        )


def _locked(path: Path) -> bool:
    if not (path / LOCK).exists():
        return False
    with _lock_or_none(path) as lock:
        return lock is None


@contextmanager
def _lock_or_none(path: Path) -> Iterator[Any]:
    """The run folder's lock, held for the block; None when another process holds it."""
    with open(path / LOCK, "a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        try:
            yield file
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)
