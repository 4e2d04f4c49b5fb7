"""Verify: find damaged checkpoints and damaged objects in DVC's cache, and remove them.

    python -m tools.verify [--repair]

Run from the project's root. With `cache.type = hardlink,copy` a workspace output and its
cache object are one file, so damage done in place (a truncation, bit rot) reaches the
cache too, and `dvc status` and `dvc repro` then treat the damaged bytes as up to date.
This tool checks, without trusting DVC's records:

- every checkpoint in the workspace (checkpoints/epoch_*.pt, models/*.pt) against the
  SHA-256 stored in it (pipeline.checkpoints.load_checkpoint);
- every object in DVC's cache (<cache>/files/md5/XX/YYYY...) against its name, which is
  the md5 of its bytes (for a directory's `.dir` object, of its JSON listing).

It prints one line per damaged file or object, naming the workspace files that are hard
links to a damaged object, and exits 1; with nothing damaged it prints one summary line
and exits 0.

With --repair it deletes each damaged cache object, the workspace files linked to it and
each damaged checkpoint, so that DVC sees them as missing rather than present, then says
what restores them: `dvc pull` when a DVC remote is configured, else `dvc repro`, which
retrains what is missing (with the object gone the run-cache cannot restore the stage, so
it runs). It then exits 0, or 1 if something could not be deleted. Not a DVC stage: it
writes nothing but those deletions.
"""

import argparse
import hashlib
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.checkpoints import CheckpointError, is_checkpoint, load_weights_file, verify_checkpoint
from pipeline.cli import UserError, error_line, run_stage
from pipeline.params_text import yaml_problem

log = logging.getLogger("tools.verify")

CHECKPOINT_PATTERNS = ("checkpoints/epoch_*.pt", "models/*.pt")
CONFIG_FILE = Path(".dvc/config")
OBJECT_NAME = re.compile(r"[0-9a-f]{30}(\.dir)?")  # after the two-character folder name


@dataclass
class Damage:
    path: Path  # the damaged file: a workspace checkpoint or a cache object
    reason: str
    linked: tuple[Path, ...] = ()  # workspace files that are the same file (hard links)

    def line(self, root: Path) -> str:
        also = f" (also the workspace file {', '.join(shown(p, root) for p in self.linked)})" if self.linked else ""
        return f"damaged: {shown(self.path, root)}: {self.reason}{also}"


def shown(path: Path, root: Path) -> str:
    """`path` relative to the project root where it is inside it."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def checkpoint_files(root: Path) -> list[Path]:
    return sorted({path for pattern in CHECKPOINT_PATTERNS for path in root.glob(pattern) if path.is_file()})


def check_checkpoints(root: Path) -> tuple[int, list[Damage], list[Path]]:
    """(number checked, the damaged ones, files that are not this pipeline's checkpoints)."""
    damaged, foreign = [], []
    files = checkpoint_files(root)
    for path in files:
        try:
            loaded = load_weights_file(path)
            if not is_checkpoint(loaded) and path.parent.name == "models":
                foreign.append(path)  # e.g. weights given as model.weights: nothing to check them against
                continue
            verify_checkpoint(loaded, path)
        except CheckpointError as error:
            # "<path> is damaged (truncated or corrupt): ..." -> "truncated or corrupt: ..."
            reason = re.sub(r"^is damaged:? ?", "", str(error).removeprefix(str(path)).strip())
            reason = re.sub(r"^\(truncated or corrupt\)", "truncated or corrupt", reason)
            damaged.append(Damage(path, reason))
    return len(files) - len(foreign), damaged, foreign


def cache_objects(cache: Path) -> Iterable[tuple[Path, str]]:
    """Each object under <cache>/files/md5 with the md5 its name claims (`.dir` left off)."""
    objects = cache / "files" / "md5"
    for folder in sorted(objects.glob("??")):
        for path in sorted(folder.iterdir()):
            if path.is_file() and OBJECT_NAME.fullmatch(path.name):
                yield path, folder.name + path.name.removesuffix(".dir")


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_cache(cache: Path, links: dict[tuple[int, int], list[Path]] | None = None) -> tuple[int, list[Damage]]:
    """(number of objects checked, the damaged ones). `links` maps (device, inode) to the
    workspace files that are that inode, to name them alongside a damaged object."""
    checked, damaged = 0, []
    for path, expected in cache_objects(cache):
        checked += 1
        actual = file_md5(path)
        if actual != expected:
            stat = path.stat()
            linked = tuple((links or {}).get((stat.st_dev, stat.st_ino), ()))
            damaged.append(Damage(path, f"its contents have md5 {actual}, not the {expected} it is named by", linked))
    return checked, damaged


# Folders that hold no .dvc file of the project's: git's and DVC's own, the run cache, and
# the README's virtual environment (tens of thousands of files).
NOT_SEARCHED = {".git", ".dvc", ".cache", ".venv"}


def output_paths(root: Path) -> list[Path]:
    """The workspace paths of everything DVC tracks (files and directories): the outputs in
    dvc.lock, and the data each .dvc file tracks (`dvc add data/raw` writes data/raw.dvc)."""
    paths = []
    lockfile = root / "dvc.lock"
    if lockfile.is_file():
        paths += tracked_paths(lockfile, root, stage_outs)
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in NOT_SEARCHED]
        for name in files:
            if name.endswith(".dvc"):
                paths += tracked_paths(Path(folder) / name, root, added_outs)
    return paths


def stage_outs(lock: Any) -> list[dict]:
    return [out for stage in (lock.get("stages") or {}).values() for out in stage.get("outs") or []]


def added_outs(tracked: Any) -> list[dict]:
    """A .dvc file's outs; none for a file that holds no mapping (another program's)."""
    return (tracked.get("outs") or []) if isinstance(tracked, dict) else []


def tracked_paths(path: Path, root: Path, outs: Callable[[Any], list[dict]]) -> list[Path]:
    """The workspace paths of the `outs` entries of the DVC file `path`, which `outs` picks
    from its YAML; a UserError naming the file when it is not what DVC writes (a merge's
    conflict markers, damage), as verify cannot tell which files are linked to the cache."""
    fix = "restore it (git checkout, or finish the merge) and run this again"
    try:
        return [path.parent / out["path"] for out in outs(yaml.safe_load(path.read_text(encoding="utf-8")) or {})]
    except UnicodeDecodeError as error:
        raise UserError(f"{shown(path, root)} is not UTF-8 text: {error.reason} at byte {error.start}; {fix}") from None
    except yaml.YAMLError as error:
        raise UserError(f"{shown(path, root)} is not valid YAML: {yaml_problem(error)}; {fix}") from None
    except (AttributeError, TypeError, KeyError):  # a list, or a string, where DVC writes a mapping
        raise UserError(
            f"{shown(path, root)} is not laid out as DVC writes it (outs, each with a path); {fix}"
        ) from None


def workspace_links(root: Path) -> dict[tuple[int, int], list[Path]]:
    """(device, inode) -> the files DVC tracks in the workspace, to find which are a cache object."""
    links: dict[tuple[int, int], list[Path]] = {}
    for out in output_paths(root):
        files = [out] if out.is_file() else sorted(p for p in out.rglob("*") if p.is_file()) if out.is_dir() else []
        for path in files:
            stat = path.stat()
            links.setdefault((stat.st_dev, stat.st_ino), []).append(path)
    return links


def dvc_cache_and_remotes(root: Path) -> tuple[Path, list[str]]:
    """DVC's local cache folder (the one holding files/md5) and the names of the remotes configured."""
    from dvc.config import ConfigError
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        repo = Repo(os.fspath(root))
    except NotDvcRepoError:
        raise UserError(f"{root} is not a DVC project: run this from the project's root") from None
    except ConfigError as error:  # "config file error: Invalid line ... at line 2."
        reason = error_line(error).removeprefix("config file error: ").rstrip(".")
        raise UserError(f"{CONFIG_FILE} cannot be read: {reason}; fix it and run this again") from None
    try:
        # repo.cache.local.path is <cache>/files/md5
        return Path(repo.cache.local.path).parent.parent, sorted(repo.config.get("remote", {}))
    finally:
        repo.close()


def remove(path: Path, root: Path) -> bool:
    try:
        path.unlink(missing_ok=True)
    except OSError as error:
        print(f"could not delete {shown(path, root)}: {error.strerror}")
        return False
    print(f"deleted {shown(path, root)}")
    return True


def repair(damages: list[Damage], root: Path) -> bool:
    """Delete every damaged file and the workspace files linked to it; True if all went."""
    paths = dict.fromkeys(p for damage in damages for p in (damage.path, *damage.linked))
    return all([remove(path, root) for path in paths])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repair", action="store_true", help="delete what is damaged, then say how to restore it (dvc pull or repro)"
    )
    args = parser.parse_args(argv)
    root = Path.cwd()
    cache, remotes = dvc_cache_and_remotes(root)
    links = workspace_links(root)  # first: a DVC file it cannot read stops the tool before any line

    n_checkpoints, damaged_checkpoints, foreign = check_checkpoints(root)
    for path in foreign:
        print(f"not checked: {shown(path, root)} is not a checkpoint of this pipeline (no checksum in it)")
    n_objects, damaged_objects = check_cache(cache, links)
    damages = damaged_checkpoints + damaged_objects
    for damage in damages:
        print(damage.line(root))
    if not damages:
        print(f"checked {n_checkpoints} checkpoints and {n_objects} cache objects: all intact")
        return
    summary = f"checked {n_checkpoints} checkpoints and {n_objects} cache objects: "
    summary += f"{len(damaged_checkpoints)} damaged checkpoints, {len(damaged_objects)} damaged cache objects"
    print(summary)
    if not args.repair:
        print("run `python -m tools.verify --repair` to delete them, then restore them as it says")
        sys.exit(1)
    if not repair(damages, root):
        sys.exit(1)
    if remotes:
        names = ", ".join(remotes)
        print(f"now run `dvc pull`: it fetches them from the remote ({names}); then `dvc repro` for what it lacks")
    else:
        print("now run `dvc repro`: it retrains the stages whose outputs are gone")


if __name__ == "__main__":
    run_stage(main)
