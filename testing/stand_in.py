"""The `python` that the tests' DVC finds first on its PATH: it hands `python -m MODULE ARGS`
to the pytest worker's warm interpreter (testing/warm.py), which forks a child to run it, and
stands in for that child until it ends; anything else, or a command the warm interpreter
refuses, it runs as the real interpreter would, by becoming it.

The stand-in is the process DVC waits for, so it acts as the stage's process would: the
child works on the stand-in's own stdin, stdout and stderr (passed over the socket), in its
folder, environment and umask; every signal the stand-in can catch goes on to the child; its
exit status is the child's, a death by signal included; and a stand-in that dies (SIGKILL)
takes the child with it (the warm interpreter kills a child whose stand-in went away).

It imports only the standard library and starts with -I -S, so it costs a few milliseconds,
where a real `python -m pipeline.<stage>` pays some 3.5 s of CPU for torch's imports.
"""

import contextlib
import json
import os
import select
import signal
import socket
import sys

SOCKET_VARIABLE = "TESTS_WARM_SOCKET"  # the warm interpreter's address, set by testing.project
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def main() -> None:
    args = sys.argv[1:]
    address = os.environ.get(SOCKET_VARIABLE)
    if address and len(args) >= 2 and args[0] == "-m":
        returncode = ask(address, args[1], args[2:])
        if returncode is not None:
            end_like(returncode)
    os.execv(sys.executable, [sys.executable, *args])


def ask(address: str, module: str, args: list[str]) -> int | None:
    """The exit code of `python -m module *args` run by the warm interpreter at `address`;
    None if it refused (or is gone), for the real interpreter to run it."""
    # Each signal caught writes its number to the wakeup socket, and the forwarding reads it
    # there. Forwarding from the Python handlers instead loses a signal that lands just before
    # the blocking wait for the exit code: Python runs handlers between bytecodes, and a recv
    # that no signal interrupted never returns to them, so the stand-in and its child waited
    # for each other.
    signals_read, signals_write = socket.socketpair()
    signals_write.setblocking(False)
    signal.set_wakeup_fd(signals_write.fileno(), warn_on_full_buffer=False)
    for number in FORWARDED:
        signal.signal(number, lambda number, frame: None)
    request = {"module": module, "args": args, "cwd": os.getcwd(), "env": dict(os.environ)}
    started = start(address, request, [0, 1, 2])
    if started is None:
        signals_read.setblocking(False)
        with contextlib.suppress(BlockingIOError):  # as a real interpreter not yet started: killed by it
            end_like(-signals_read.recv(1)[0])
        return None
    connection, child = started
    while True:
        ready = select.select([connection, signals_read], [], [])[0]
        if signals_read in ready:
            for number in signals_read.recv(64):
                with contextlib.suppress(ProcessLookupError):  # it ended (and was reaped) just now
                    os.kill(child, number)
        if connection in ready:
            break
    ended = connection.recv(1 << 16)
    if not ended:
        print(f"testing/stand_in.py: the warm interpreter ended before pid {child}", file=sys.stderr)
        return 1
    return json.loads(ended)["returncode"]


def start(address: str, request: dict, fds: list[int]) -> tuple[socket.socket, int] | None:
    """Send `request` (and this process's umask) with the command's stdin, stdout and stderr
    `fds` to the warm interpreter at `address`: the connection, on which its exit code will
    come, and the child's pid; None if it refused (or is not there)."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        connection.connect(address)
    except OSError:
        connection.close()
        return None
    umask = os.umask(0)  # the only way to read it is to set it
    os.umask(umask)
    socket.send_fds(connection, [json.dumps(request | {"umask": umask}).encode()], fds)
    reply = json.loads(connection.recv(1 << 16) or b'{"refused": "the warm interpreter is gone"}')
    if "refused" in reply:
        connection.close()
        return None
    return connection, reply["pid"]


def end_like(returncode: int) -> None:
    """Exit as the child did: with its code, or killed by its signal."""
    if returncode < 0:
        signal.signal(-returncode, signal.SIG_DFL)
        os.kill(os.getpid(), -returncode)
    sys.exit(returncode)


if __name__ == "__main__":
    main()
