"""How a stage starts and fails: logging set-up and one-line errors for user mistakes."""

import errno
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

log = logging.getLogger("pipeline")


class UserError(Exception):
    """A mistake the user can fix (params, data, files). Shown as one line, no traceback."""


class Terminated(BaseException):
    """SIGTERM (what schedulers and Kubernetes send to stop a job), raised where the stage is."""


# Exit codes of the shell's convention, 128 + the signal's number.
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE, EXIT_TERMINATED = 130, 141, 143
SAFE_TO_RERUN = "every file written so far is complete (writes are atomic); rerunning resumes"


def error_line(error: BaseException, with_type: bool = False) -> str:
    """An exception as one line for a message: its first line, after its type's name when
    `with_type` or when it has no message."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    return f"{type(error).__name__}: {lines[0]}" if with_type else lines[0]


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main() (or a tool's), turning every way it can end into one line and an
    exit code: user errors 2, a full disk 1, Ctrl-C 130, SIGTERM 143, a closed pipe 141."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    interrupted = False

    def on_sigint(signum: int, frame: object) -> None:
        nonlocal interrupted
        interrupted = True
        raise KeyboardInterrupt

    def on_sigterm(signum: int, frame: object) -> None:
        raise Terminated

    signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        main()
    except UserError as error:
        log.error("error: %s", error)
        sys.exit(2)
    except KeyboardInterrupt:
        log.error("interrupted; %s", SAFE_TO_RERUN)
        sys.exit(EXIT_INTERRUPTED)
    except Terminated:
        # A rank that torchrun stops (because another failed, or because torchrun itself was
        # stopped) says nothing: the launcher's line gives the cause, and a "terminated" line
        # before it would point the wrong way.
        if "LOCAL_RANK" not in os.environ:
            log.error("terminated (SIGTERM); %s", SAFE_TO_RERUN)
        sys.exit(EXIT_TERMINATED)
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, and keep Python from failing
        # again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_BROKEN_PIPE)
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        log.error("error: no space left on the disk (%s); %s", error.filename or error, SAFE_TO_RERUN)
        sys.exit(1)
    except RuntimeError as error:
        # torch.save reports a failed write (disk full, or Ctrl-C inside it) as a RuntimeError
        # from its zip writer, "unexpected pos ...".
        if "unexpected pos" not in str(error) and "file write failed" not in str(error):
            raise
        if interrupted:
            log.error("interrupted while writing a checkpoint; %s", SAFE_TO_RERUN)
            sys.exit(EXIT_INTERRUPTED)
        log.error("error: writing a checkpoint failed (is the disk full?); %s", SAFE_TO_RERUN)
        sys.exit(1)
    finally:
        # A signal during interpreter shutdown (a launcher stopping its processes) must not
        # raise into atexit callbacks: from here on, the default actions.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterable[T]:
    """A tqdm bar (count, rate in `unit`s/s, time left) on a terminal; silent when output
    goes to a file or CI log, and in every process of several but the first (RANK, as
    torchrun sets it), which would draw over each other on the same terminal."""
    disable = None if os.environ.get("RANK", "0") == "0" else True
    return tqdm(items, desc=desc, total=total, leave=False, disable=disable, unit=unit)
