"""The decoded-image cache: every image of a manifest at one sizing, decoded at most once,
as two things each stage that reads them memory-maps: the model's inputs (one uint8 array
file) and the training copies that random resized crops are cut from (data.copies)."""

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import PIL

from pipeline.cli import UserError
from pipeline.data.copies import CopyWriter, TrainingCopies
from pipeline.data.decode import Sizing
from pipeline.data.inspection import Inspected, inspect_all
from pipeline.files import atomic_path, project_cache

# The package's name, not the module's: stage logs show `pipeline.data: ...` for all of it.
log = logging.getLogger("pipeline.data")


def code_version() -> str:
    """What makes the cached pixels besides the files and the sizing: this package's code (the
    decode, the copies) and Pillow, whose resampling gives them. Part of every cache file's
    name, so no stage reads pixels that other code made; hashed rather than a version number
    that someone must remember to bump."""
    digest = hashlib.sha256(PIL.__version__.encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def cache_folder() -> Path:
    """Where decoded images are kept: the project's, shared by all its experiments (files.project_cache)."""
    return project_cache("images")


def _cache_path(manifest: pd.DataFrame, sizing: Sizing, cache_dir: Path) -> Path:
    """The decoded array of `manifest`'s rows at `sizing`: named by the files' contents (sha1),
    the sizing and the code that decodes them (`code_version`), so it is rebuilt when, and
    only when, one changes. The training copies lie beside it (`_copy_paths`)."""
    key = [code_version(), sizing.to_dict(), manifest["path"].tolist(), manifest["sha1"].tolist()]
    return cache_dir / f"{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:20]}.npy"


def _copy_paths(array: Path) -> tuple[Path, Path]:
    """The training copies of the images in the decoded array `array`: (their bytes, their index).
    The index is written last, so a blob without one is unfinished."""
    return array.with_suffix(".train.bin"), array.with_suffix(".train.npy")


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


@dataclass
class Scratch:
    """What a decoding pass writes to as it goes, in temporary files of the cache folder: the
    model's inputs (rows, 3, C, C), by row, and the training copies."""

    pixels: ArrayFile
    copies: CopyWriter

    def write(self, row: int, inspected: Inspected) -> None:
        self.pixels[row] = inspected.pixels
        self.copies.append(row, inspected.copy)


@contextmanager
def scratch(cache_dir: Path, rows: int, sizing: Sizing | None) -> Iterator[Scratch | None]:
    """A Scratch for `rows` images, its files deleted on exit unless `store_decoded` has moved
    them into place; None without a sizing."""
    if sizing is None:
        yield None
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for suffix in (".npy", ".bin"):
        fd, name = tempfile.mkstemp(dir=cache_dir, prefix=".decoding.", suffix=suffix)
        os.close(fd)
        names.append(Path(name))
    try:
        with ExitStack() as stack:
            pixels = ArrayFile(names[0], (rows, 3, sizing.crop, sizing.crop))
            stack.callback(pixels.close)
            copies = CopyWriter(names[1])
            stack.callback(copies.close)
            yield Scratch(pixels, copies)
    finally:
        for name in names:
            name.unlink(missing_ok=True)


def store_decoded(found: pd.DataFrame, sizing: Sizing, cache_dir: Path, written: Scratch) -> Path:
    """Keep `found`'s rows (its `row` column indexes `written`) as its decoded array and
    training copies."""
    path = _cache_path(found, sizing, cache_dir)
    pixels, rows = written.pixels, found["row"].tolist()
    if not path.exists():
        with atomic_path(path) as tmp:
            if rows == list(range(pixels.shape[0])):
                os.replace(pixels.path, tmp)  # every file was kept: no copy
            else:
                array = np.load(pixels.path, mmap_mode="r")
                kept = ArrayFile(tmp, (len(found), *pixels.shape[1:]))
                for index, row in enumerate(rows):
                    kept[index] = array[row]
                kept.close()
    blob, index = _copy_paths(path)
    if not index.exists():
        written.copies.file.flush()
        with atomic_path(blob) as tmp:
            os.replace(written.copies.path, tmp)  # the copies of files left out stay in it, unused
        with atomic_path(index) as tmp, open(tmp, "wb") as file:
            np.save(file, written.copies.index(rows))
    return path


def _decoded(manifest: pd.DataFrame, sizing: Sizing, cache_dir: Path | None) -> Path:
    """The decoded array of `manifest` at `sizing` (see `_cache_path`), with its training
    copies: prepare's pass over the files normally left them there; otherwise they are
    decoded now, on every core."""
    cache_dir = cache_dir or cache_folder()
    path = _cache_path(manifest, sizing, cache_dir)
    if path.exists() and _copy_paths(path)[1].exists():
        return path
    paths = manifest["path"].tolist()
    with scratch(cache_dir, len(paths), sizing) as written:
        for index, result in enumerate(inspect_all(paths, sizing, f"decoding images at {sizing.resize}px")):
            if result.problem:
                raise UserError(f"{paths[index]} {result.problem}; it decoded when prepare ran: rerun prepare")
            written.write(index, result)
        store_decoded(manifest.assign(row=range(len(paths))), sizing, cache_dir, written)
    log.info("decoded %d images at %dpx into %s", len(paths), sizing.resize, path)
    return path


def decoded_images(manifest: pd.DataFrame, sizing: Sizing, cache_dir: Path | None = None) -> np.ndarray:
    """All images of `manifest` as the model's inputs: one uint8 array (N, 3, C, C), C =
    sizing.crop, decoded at most once (see `_decoded`)."""
    # Copy-on-write mapping: writable for torch.from_numpy (no warning), never written back.
    return np.load(_decoded(manifest, sizing, cache_dir), mmap_mode="c")


def training_copies(manifest: pd.DataFrame, sizing: Sizing, cache_dir: Path | None = None) -> TrainingCopies:
    """The training copies of every image of `manifest` (data.copies), made in the same pass
    as `decoded_images`."""
    return TrainingCopies(*_copy_paths(_decoded(manifest, sizing, cache_dir)))
