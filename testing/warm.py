"""`python -m MODULE ARGS` for the tests, without paying for Python's and torch's start-up
each time.

Most of a tiny stage run is the import of torch and torchvision (about 4 s of CPU on a
2-core VM, against about 1 s of work), and the suite runs some 60 stages and predictions
directly. So each pytest worker keeps one warm interpreter (`serve`, below) that has
imported the heavy libraries and the pipeline's shared modules, and nothing else: no
torch operation ever runs in it, so it holds no thread pool. For each command it forks a
child that does what `python -m` (or, for a test's own script, `python -c`) does from
there: it changes to the command's folder, takes its environment, runs the module (or the
script) as `__main__` with its arguments and exits with its status, stdout and stderr
going to files that the caller reads back.

The child imports the project's own packages afresh from the command's folder, as `python
-m` would: only the libraries are shared. Commands whose environment changes what Python
does at start-up (PYTHONPATH, a sitecustomize) are run as real processes by
testing.project.run; so are dvc's stages.
"""

import atexit
import json
import logging
import os
import runpy
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

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


class WarmPython:
    """One warm interpreter (see the module's docstring) and the commands it runs, one at a time."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env  # its own, from its start
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def run(
        self, module: str, args: list[str], cwd: Path, env: dict[str, str], code: str | None = None
    ) -> subprocess.CompletedProcess:
        """`python -m module *args` in `cwd` with exactly `env`, as a completed process; with
        `code`, `python -c code *args` instead (module unused)."""
        with self._lock, tempfile.TemporaryDirectory() as folder:
            out, err = Path(folder, "stdout"), Path(folder, "stderr")
            request = {"module": module, "code": code, "args": args, "cwd": str(cwd), "env": env}
            reply = self._ask(request | {"out": str(out), "err": str(err)})
            command = [sys.executable, *(["-m", module] if code is None else ["-c", code]), *args]
            return subprocess.CompletedProcess(command, reply["returncode"], out.read_text(), err.read_text())

    def _ask(self, request: dict) -> dict:
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "testing.warm"], cwd=REPO, env=self.env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            atexit.register(self._process.kill)
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the warm interpreter exited with {self._process.wait()}")
        return json.loads(line)


def serve() -> None:
    """Read one JSON request per line on stdin; fork a child for each; reply with its exit status."""
    for name in PRELOAD:
        __import__(name)
    # huggingface_hub reads HF_HOME and its other variables when imported: testing.project
    # runs commands that set them otherwise here only because each child imports it afresh.
    if "huggingface_hub" in sys.modules:
        raise RuntimeError("the warm interpreter must not import huggingface_hub: see START_UP_VARIABLES")
    replies = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os._exit(_child(request))
        _, status = os.waitpid(pid, 0)
        replies.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        replies.flush()


def _child(request: dict) -> int:
    """Do what `python -m` does, from this warm interpreter; the exit status."""
    try:
        stdin = os.open(os.devnull, os.O_RDONLY)
        os.dup2(stdin, 0)
        for fd, path in ((1, request["out"]), (2, request["err"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        code = request.get("code")
        sys.argv = [request["module"] if code is None else "-c", *request["args"]]
        sys.path[0] = request["cwd"]
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
        except BaseException:  # as the interpreter would: the traceback, then status 1
            traceback.print_exc()
            status = 1
        logging.shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
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
    serve()
