"""Finding the images: an ImageFolder tree's class folders and image files, and for
everything else found there, why it is left out (`Skipped`)."""

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from pipeline.cli import UserError

IMAGE_EXTENSIONS = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp"})


# What a file that is neither a regular file nor a folder is, by its type bits (`stat.S_IFMT`).
SPECIAL_KINDS = {
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}

# Linux names are bytes: one not valid UTF-8 (a zip made on Windows, Latin-1 `clé`) comes to
# Python with surrogates in it, which no UTF-8 file such as the manifest can hold.
NOT_UTF8 = "path not valid UTF-8 (a zip made on Windows can write such names): rename the file or its folder in UTF-8"


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


def find_images(root: Path) -> tuple[list[str], list[tuple[Path, str]], list[Skipped]]:
    """Scan an ImageFolder tree: (class names, [(file, class)], everything else and why).

    Every sub-folder of `root` (or link to one) is a class; files may sit in nested
    folders below it. Everything else that is not hidden is reported with a reason: a file
    in `root` itself, belonging to no class; a file without an image extension; a broken
    link, a link loop (`x -> x`), a link to a folder below a class folder (not followed),
    anything that is not a regular file. Hidden files and folders (.name) are ignored, not
    reported; extensions match in any case.
    """
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist")
    classes: list[str] = []
    files: list[tuple[Path, str]] = []
    skipped: list[Skipped] = []
    for entry in sorted(p for p in root.iterdir() if not p.name.startswith(".")):
        if entry.is_dir():
            classes.append(entry.name)
            images, reasons = scan_folder(entry)
            skipped += reasons
            for path in images:
                if is_utf8(path.as_posix()):
                    files.append((path, entry.name))
                else:
                    skipped.append(Skipped(path.as_posix(), NOT_UTF8))
        else:
            why = not_a_file(entry) or "not inside a class folder: a file must lie in a folder named after its class"
            skipped.append(Skipped(entry.as_posix(), why))
    return classes, files, skipped


def scan_folder(folder: Path) -> tuple[list[Path], list[Skipped]]:
    """Every entry below `folder`, sorted as paths sort: (image files, everything else and why).

    Links to files count as their target; links to folders are not followed. Hidden files
    and folders are ignored; extensions match in any case.
    """
    images: list[Path] = []
    skipped: list[Skipped] = []

    def visit(directory: Path) -> None:
        try:
            names = sorted(name for name in os.listdir(directory) if not name.startswith("."))
        except OSError as error:
            skipped.append(Skipped(directory.as_posix(), f"folder cannot be read: {type(error).__name__}: {error}"))
            return
        for name in names:
            path = directory / name
            if path.is_dir() and not path.is_symlink():
                visit(path)
            elif why := not_a_file(path):
                skipped.append(Skipped(path.as_posix(), why))
            elif is_image_name(path):
                images.append(path)
            else:
                skipped.append(Skipped(path.as_posix(), f"not an image file extension ({path.suffix or 'none'})"))

    visit(folder)
    return images, skipped


def not_a_file(path: Path) -> str | None:
    """Why `path` cannot be read as a file (a broken link, a link loop, a folder...), or None."""
    try:
        mode = path.stat().st_mode
    except OSError as error:
        if not path.is_symlink():
            return f"cannot be read: {type(error).__name__}: {error}"
        target = os.readlink(path)
        if error.errno == errno.ELOOP:
            # DVC, hashing a dependency folder, stops with this errno before any stage runs.
            return f"a link loop (-> {target}) that never reaches a file; under DVC it fails `dvc repro` (Errno 40)"
        return f"a broken link: its target {target} does not exist"
    if stat.S_ISDIR(mode):
        return f"a link to a folder (-> {os.readlink(path)}); links to folders inside a class folder are not followed"
    if not stat.S_ISREG(mode):
        return f"not a regular file: {SPECIAL_KINDS.get(stat.S_IFMT(mode), 'a special file')}"
    return None


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # the surrogates that stand for bytes not valid in UTF-8
        return False
    return True


def readable(name: str) -> str:
    """`name` as text that UTF-8 can hold: the bytes of a name not valid UTF-8 written as escapes (`cl\\xe9`)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")
