"""Writing files so that a kill at any moment leaves the old file or the new one, never a mix.

Every manifest, table, metrics file, checkpoint and cached array goes through here; every
CSV the project reads back goes through `read_csv`.
"""

import json
import os
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pandas as pd


def project_cache(name: str) -> Path:
    """A folder of the project's local cache (.cache/NAME), shared by all its experiments.

    Queued and `--temp` experiments run in a throw-away copy of the project; DVC then points
    DVC_ROOT at the project itself (and at the project root for every other run), so their
    decoded images and resumable runs land where the next experiment finds them.
    """
    return Path(os.environ.get("DVC_ROOT", ".")) / ".cache" / name


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path in `path`'s folder, renamed onto `path` if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as file:  # flush to disk before the rename makes it visible
            os.fsync(file.fileno())
        os.replace(tmp, path)
        fsync_folder(path.parent)  # the rename itself survives a power loss only once its folder is synced
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def atomic_write(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a file for writing through `atomic_path`; text is UTF-8 with \\n line ends on every OS."""
    text = {} if "b" in mode else {"encoding": "utf-8", "newline": "\n"}
    with atomic_path(path) as tmp, open(tmp, mode, **text) as file:
        yield file


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_write(path, "w") as file:
        frame.to_csv(file, index=False)


def read_csv(path: Path, text: Collection[str] | None = None) -> pd.DataFrame:
    """A table as `write_csv` wrote it: each cell in the `text` columns (by default, all) is the
    exact text written, so labels and paths such as NA, null, None, nan, 007 or 1e3 stay
    themselves; the other columns are numbers, an empty cell being NaN."""
    columns = pd.read_csv(path, nrows=0).columns
    strings = [c for c in columns if text is None or c in text]
    numbers = {c: [""] for c in columns if c not in strings}
    return pd.read_csv(path, dtype=dict.fromkeys(strings, str), keep_default_na=False, na_values=numbers)


def write_json(data: object, path: Path) -> None:
    with atomic_write(path, "w") as file:
        json.dump(data, file, indent=2)
        file.write("\n")
