"""`python -m MODULE ARGS` for the tests, without paying for Python's and torch's start-up
each time.

Most of a tiny stage run is the import of torch and torchvision (about 3.5 s of CPU on a
2-core VM, against about 1 s of work), and the suite runs hundreds of stages and
predictions. So each pytest worker keeps one warm interpreter (`serve`, below) that has
imported the heavy libraries and the pipeline's shared modules, and nothing else: no
torch operation ever runs in it, so it holds no thread pool. For each command it forks a
child that does what `python -m` (or, for a test's own script, `python -c`) does from
there: it takes the command's stdin, stdout and stderr (passed over a Unix socket),
folder, environment and umask, runs the module (or the script) as `__main__` with its
arguments and exits as the interpreter would, with its status or, on an uncaught
KeyboardInterrupt, by SIGINT.

Commands come from testing.project.run (a test's `python -m pipeline.train`), and from the
`python` stand-in (testing/stand_in.py) that the tests' DVC finds first on its PATH: the
stages of a `dvc repro` or `dvc exp run`. The child imports the project's own packages
afresh from the command's folder, as `python -m` would: only the libraries are shared.
Commands whose environment changes what Python does at start-up (START_UP_VARIABLES: a
PYTHONPATH with a sitecustomize, as the tests that kill a stage from inside use) are
refused, and run as real processes.
"""

import atexit
import contextlib
import json
import logging
import os
import runpy
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

from testing.stand_in import SOCKET_VARIABLE, start

REPO = Path(__file__).resolve().parent.parent
# What the entry modules import, so that the child has nothing heavy left to import. The
# child drops the project's own packages and imports them again from its folder.
OWN_PACKAGES = ("pipeline", "tools")
PRELOAD = (
    "torch",
    "torchvision",
    "pandas",
    "dvclive",
    "omegaconf",
    "pipeline.checkpoints",
    "pipeline.data.split",  # and every other module of pipeline.data, which it imports
    "pipeline.distributed",
    "pipeline.engine",
    "pipeline.models",
    "pipeline.optim",
    "pipeline.runs",
)
# What the warm interpreter runs: the project's entry modules, and the tests' train stage that
# kills (or signals) itself at a given point (tests/kill_wrapper.py).
WARM_MODULES = ("pipeline.", "tools.", "tests.kill_wrapper")
# Environment variables read when Python or a library the warm interpreter has imported
# starts (search path, hash seed, thread pools, devices): a command that sets them otherwise
# than the warm interpreter runs apart. Not huggingface_hub's (HF_HOME...): it reads them when
# imported, which only a command's own process does (`serve` checks that).
START_UP_VARIABLES = ("PYTHON", "OMP_", "MKL_", "CUDA_", "LD_")


class WarmPython:
    """One warm interpreter (see the module's docstring): started with `env`, it runs the
    commands that `run` hands it, and those of the `python` stand-in in `bin`
    (testing/stand_in.py) of any process given `variables`."""

    def __init__(self, env: dict[str, str]) -> None:
        # A Unix socket's path holds at most 107 bytes: under a deep TMPDIR, /tmp instead.
        deep = len(os.path.join(tempfile.gettempdir(), "warm-xxxxxxxx", "socket")) > 100
        self.folder = Path(tempfile.mkdtemp(prefix="warm-", dir="/tmp" if deep else None))
        self.address = str(self.folder / "socket")
        self.bin = self.folder / "bin"
        self.bin.mkdir()
        stand_in = self.bin / "python"
        stand_in.write_text(f"#!{sys.executable} -IS\n" + (REPO / "testing" / "stand_in.py").read_text())
        stand_in.chmod(0o755)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "testing.warm", self.address], cwd=REPO, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        atexit.register(self.close)
        if self._process.stdout.readline() != "listening\n":
            raise RuntimeError(f"the warm interpreter exited with {self._process.wait()}")

    def variables(self, path: str) -> dict[str, str]:
        """What a command's environment needs for its `python` to be the stand-in, given its PATH."""
        return {"PATH": f"{self.bin}{os.pathsep}{path}", SOCKET_VARIABLE: self.address}

    def run(
        self,
        module: str,
        args: list[str],
        cwd: Path,
        env: dict[str, str],
        code: str | None = None,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess | None:
        """`python -m module *args` in `cwd` with exactly `env`, as a completed process; with
        `code`, `python -c code *args` instead (module unused). None where `env` starts up
        otherwise than the warm interpreter (START_UP_VARIABLES): run it as a process of its own.
        After `timeout` seconds, as subprocess.run: the command is killed, TimeoutExpired raised."""
        command = [sys.executable, *(["-m", module] if code is None else ["-c", code]), *args]
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, open(os.devnull) as stdin:
            request = {"module": module, "code": code, "args": args, "cwd": str(cwd), "env": env}
            started = start(self.address, request, [stdin.fileno(), out.fileno(), err.fileno()])
            if started is None:
                return None
            with started[0] as connection:
                connection.settimeout(timeout)
                try:
                    ended = connection.recv(1 << 16)
                except TimeoutError:  # closing the connection kills the command (see `serve`)
                    raise subprocess.TimeoutExpired(command, timeout) from None
            if not ended:
                raise RuntimeError(f"the warm interpreter exited with {self._process.wait()}")
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(command, json.loads(ended)["returncode"], out.read(), err.read())

    def close(self) -> None:
        self._process.kill()
        self._process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def serve(address: str) -> None:
    """Listen at `address`; fork a child for each request (a JSON message with the command's
    stdin, stdout and stderr), reply with its pid, then with its exit code; end with stdin."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(address)
    listener.listen(64)
    print("listening", flush=True)
    for name in PRELOAD:
        __import__(name)
    # huggingface_hub reads HF_HOME and its other variables when imported: testing.project
    # runs commands that set them otherwise here only because each child imports it afresh.
    if "huggingface_hub" in sys.modules:
        raise RuntimeError("the warm interpreter must not import huggingface_hub: see START_UP_VARIABLES")
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "listener")
    selector.register(sys.stdin, selectors.EVENT_READ, "stdin")
    while True:
        for key, _ in selector.select():
            if key.data == "stdin":
                if not os.read(0, 1 << 16):
                    return
            elif key.data == "listener":
                selector.register(listener.accept()[0], selectors.EVENT_READ, "request")
            elif key.data == "request":
                _start(key.fileobj, selector)
            elif key.data[0] == "running":  # the requester went away (a stand-in killed): so does its child
                _, pid, connection = key.data
                if connection.fileno() != -1:  # else the child ended, and was reaped, just before
                    os.kill(pid, signal.SIGKILL)
                    selector.unregister(connection)
                    connection.close()
            else:
                _, pid, connection = key.data
                _reply_exit(pid, key.fileobj, connection, selector)


def _start(connection: socket.socket, selector: selectors.BaseSelector) -> None:
    """Fork a child for the request waiting on `connection`, or refuse it."""
    message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
    selector.unregister(connection)
    refusal = _refusal(json.loads(message)) if message else "no request"
    if refusal:
        for fd in fds:
            os.close(fd)
        with contextlib.suppress(OSError):  # the requester may be gone already
            connection.send(json.dumps({"refused": refusal}).encode())
        connection.close()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        for key in list(selector.get_map().values()):  # the listener, other requests' sockets, pidfds
            if key.data != "stdin":
                key.fileobj.close() if isinstance(key.fileobj, socket.socket) else os.close(key.fd)
        selector.close()
        connection.close()
        os._exit(_child(json.loads(message), fds))
    for fd in fds:
        os.close(fd)
    with contextlib.suppress(OSError):  # a requester gone already shows as the EOF below
        connection.send(json.dumps({"pid": pid}).encode())
    pidfd = os.pidfd_open(pid)
    selector.register(connection, selectors.EVENT_READ, ("running", pid, connection))
    selector.register(pidfd, selectors.EVENT_READ, ("ended", pid, connection))


def _refusal(request: dict) -> str | None:
    """Why the warm interpreter cannot run `request` as a fresh `python` would, if it cannot."""
    if request.get("code") is None and not request["module"].startswith(WARM_MODULES):
        return f"{request['module']} is none of {WARM_MODULES}"

    def start_up(variables: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in variables.items() if k.startswith(START_UP_VARIABLES)}

    if start_up(request["env"]) != start_up(dict(os.environ)):
        return "its environment starts Python or torch otherwise"
    return None


def _reply_exit(pid: int, pidfd: int, connection: socket.socket, selector: selectors.BaseSelector) -> None:
    """Reap the child `pid` and send its exit code to its requester, if still there."""
    _, status = os.waitpid(pid, 0)
    selector.unregister(pidfd)
    os.close(pidfd)
    if connection.fileno() != -1:
        selector.unregister(connection)
        with contextlib.suppress(OSError):  # it went away just now
            connection.send(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode())
        connection.close()


def _child(request: dict, fds: list[int]) -> int:
    """Do what `python -m` does, from this warm interpreter; the exit status."""
    try:
        for fd, passed in enumerate(fds):
            os.dup2(passed, fd)
            os.close(passed)
        os.setpgid(0, 0)  # signals to the worker's process group are not the command's
        os.umask(request["umask"])
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        code = request.get("code")
        options = ["-m", request["module"]] if code is None else ["-c", code]
        sys.argv = [options[1] if code is None else "-c", *request["args"]]
        sys.orig_argv = [sys.executable, *options, *request["args"]]
        sys.path[0] = request["cwd"]
        # A fresh interpreter seeds numpy's global generator from the OS (Python's `random`
        # reseeds itself in a forked child); without this every child would draw the same.
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        # The project's own code, imported afresh as `python -m` there would: its copy of the
        # files (what the run fingerprints hash), and pipeline/__init__.py's settings made
        # in this environment.
        for name in [name for name in sys.modules if name.split(".")[0] in OWN_PACKAGES]:
            del sys.modules[name]
        status = 0
        try:
            if code is None:
                runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            else:  # as `python -c` runs it: in a fresh __main__
                exec(compile(code, "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        except SystemExit as stop:
            status = _exit_status(stop.code)
        except KeyboardInterrupt:  # as the interpreter would: the traceback, then death by SIGINT
            traceback.print_exc()
            status = -signal.SIGINT
        except BaseException:  # as the interpreter would: the traceback, then status 1
            traceback.print_exc()
            status = 1
        logging.shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        if status < 0:
            signal.signal(-status, signal.SIG_DFL)
            os.kill(os.getpid(), -status)
        return status
    except BaseException:
        traceback.print_exc()
        return 1


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    serve(sys.argv[1])
