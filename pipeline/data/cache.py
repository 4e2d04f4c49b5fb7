"""The decoded-image cache: every image of a manifest at one sizing, as one uint8 array
file, decoded at most once and memory-mapped by each stage that reads it."""

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.cli import UserError
from pipeline.data.decode import Sizing
from pipeline.data.inspection import inspect_all
from pipeline.files import atomic_path, project_cache

# The package's name, not the module's: stage logs show `pipeline.data: ...` for all of it.
log = logging.getLogger("pipeline.data")

# Bump when `load_image` (decode.py) changes what it returns, so cached pixel arrays are rebuilt.
PREPROCESSING_VERSION = 5


def cache_folder() -> Path:
    """Where decoded images are kept: the project's, shared by all its experiments (files.project_cache)."""
    return project_cache("images")


def _cache_path(manifest: pd.DataFrame, sizing: Sizing, cache_dir: Path) -> Path:
    """The decoded array of `manifest`'s rows at `sizing`: named by the files' contents (sha1),
    the sizing and PREPROCESSING_VERSION, so it is rebuilt when, and only when, one changes."""
    key = [PREPROCESSING_VERSION, sizing.to_dict(), manifest["path"].tolist(), manifest["sha1"].tolist()]
    return cache_dir / f"{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:20]}.npy"


class ArrayFile:
    """A uint8 .npy file of `shape`, written an image at a time with plain writes.

    Written pages go to the page cache, not to this process: through a writable memory map
    each of them would count in its resident memory, the whole array by the end.
    """

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        created = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)  # the header only
        self.path, self.shape, self.offset = path, shape, created.offset
        del created
        self.row_bytes = int(np.prod(shape[1:]))
        self.descriptor = os.open(path, os.O_WRONLY)

    def __setitem__(self, index: int, pixels: np.ndarray) -> None:
        os.pwrite(
            self.descriptor, np.ascontiguousarray(pixels, dtype=np.uint8).data, self.offset + index * self.row_bytes
        )

    def close(self) -> None:
        os.close(self.descriptor)


@contextmanager
def scratch_array(cache_dir: Path, rows: int, sizing: Sizing | None) -> Iterator[ArrayFile | None]:
    """An ArrayFile (rows, 3, R, R) in a temporary file in `cache_dir`, deleted on exit
    unless `store_decoded` has moved it into place; None without a sizing."""
    if sizing is None:
        yield None
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=cache_dir, prefix=".decoding.", suffix=".npy")
    os.close(fd)
    array = None
    try:
        array = ArrayFile(Path(name), (rows, 3, sizing.resize, sizing.resize))
        yield array
    finally:
        if array is not None:
            array.close()
        Path(name).unlink(missing_ok=True)


def store_decoded(found: pd.DataFrame, sizing: Sizing, cache_dir: Path, pixels: ArrayFile) -> Path:
    """Keep `found`'s rows (its `row` column indexes `pixels`) as its decoded array."""
    path = _cache_path(found, sizing, cache_dir)
    if not path.exists():
        with atomic_path(path) as tmp:
            if found["row"].tolist() == list(range(pixels.shape[0])):
                os.replace(pixels.path, tmp)  # every file was kept: no copy
            else:
                written = np.load(pixels.path, mmap_mode="r")
                kept = ArrayFile(tmp, (len(found), *pixels.shape[1:]))
                for index, row in enumerate(found["row"]):
                    kept[index] = written[row]
                kept.close()
    return path


def decoded_images(manifest: pd.DataFrame, sizing: Sizing, cache_dir: Path | None = None) -> np.ndarray:
    """All images of `manifest` as one uint8 array (N, 3, R, R), R = sizing.resize, decoded at most once.

    The array is memory-mapped from the cache (see `_cache_path`): prepare's pass over the
    files normally left it there; otherwise it is decoded now, on every core.
    """
    cache_dir = cache_dir or cache_folder()
    path = _cache_path(manifest, sizing, cache_dir)
    if not path.exists():
        paths = manifest["path"].tolist()
        with scratch_array(cache_dir, len(paths), sizing) as pixels:
            for index, result in enumerate(inspect_all(paths, sizing, f"decoding images at {sizing.resize}px")):
                if result.problem:
                    raise UserError(f"{paths[index]} {result.problem}; it decoded when prepare ran: rerun prepare")
                pixels[index] = result.pixels
            store_decoded(manifest.assign(row=range(len(paths))), sizing, cache_dir, pixels)
        log.info("decoded %d images at %dpx into %s", len(paths), sizing.resize, path)
    # Copy-on-write mapping: writable for torch.from_numpy (no warning), never written back.
    return np.load(path, mmap_mode="c")
