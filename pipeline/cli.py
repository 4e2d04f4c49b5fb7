"""How a stage starts and fails: logging set-up and one-line errors for user mistakes."""

import logging
import sys
from collections.abc import Callable, Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

log = logging.getLogger("pipeline")


class UserError(Exception):
    """A mistake the user can fix (params, data, files). Shown as one line, no traceback."""


def error_line(error: BaseException, with_type: bool = False) -> str:
    """An exception as one line for a message: its first line, after its type's name when
    `with_type` or when it has no message."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    return f"{type(error).__name__}: {lines[0]}" if with_type else lines[0]


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(): user errors become `error: ...` on stderr and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    try:
        main()
    except UserError as error:
        log.error("error: %s", error)
        sys.exit(2)
    except KeyboardInterrupt:
        log.error("interrupted")
        sys.exit(130)


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    """A tqdm bar on a terminal; silent when output goes to a file or CI log."""
    return tqdm(items, desc=desc, total=total, leave=False, disable=None)
