"""A pytest plugin that records how close every tolerance comparison actually came.

    TOLERANCE_PROBE=probe.jsonl python -m pytest -p bench.tolerance_probe tests/test_predict.py

Each `torch.testing.assert_close` and `pytest.approx` comparison appends one JSON line to the
file named by TOLERANCE_PROBE: the test, the greatest absolute and relative difference seen,
and the tolerance it was checked against. The comparison itself is left to the originals,
so the tests pass or fail exactly as without the plugin. Use it to size a tolerance from
measured headroom (on a GPU, say) rather than from a guess.
"""

import json
import os
from typing import Any

import pytest
import torch

_assert_close = torch.testing.assert_close
_approx = pytest.approx
_current_test = ""


def _record(entry: dict[str, Any]) -> None:
    path = os.environ.get("TOLERANCE_PROBE")
    if path:
        with open(path, "a") as file:  # one short line per write: safe from several xdist workers
            file.write(json.dumps({"test": _current_test, **entry}, default=str) + "\n")


def _differences(actual: Any, expected: Any) -> tuple[float, float]:
    actual_tensor = torch.as_tensor(actual).detach().cpu().double()
    expected_tensor = torch.as_tensor(expected).detach().cpu().double()
    if actual_tensor.numel() == 0:
        return 0.0, 0.0
    absolute = (actual_tensor - expected_tensor).abs()
    relative = absolute / expected_tensor.abs().clamp_min(torch.finfo(torch.float64).tiny)
    return absolute.max().item(), relative.max().item()


def recording_assert_close(actual: Any, expected: Any, *args: Any, **kwargs: Any) -> None:
    try:
        max_abs, max_rel = _differences(actual, expected)
        _record({"kind": "assert_close", "max_abs": max_abs, "max_rel": max_rel, "rtol": kwargs.get("rtol"),
                 "atol": kwargs.get("atol"), "msg": kwargs.get("msg")})  # fmt: skip
    except (TypeError, RuntimeError, ValueError):  # shapes or types the originals will judge
        pass
    _assert_close(actual, expected, *args, **kwargs)


class _RecordingApprox:
    """Compares like `pytest.approx` and records the difference of each scalar comparison."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, expected: Any, *args: Any, **kwargs: Any) -> None:
        self.expected, self.kwargs = expected, kwargs
        self.inner = _approx(expected, *args, **kwargs)

    def __eq__(self, actual: object) -> bool:
        if isinstance(actual, int | float) and isinstance(self.expected, int | float):
            difference = abs(float(actual) - float(self.expected))
            _record({"kind": "approx", "max_abs": difference, "max_rel": difference / max(abs(self.expected), 1e-300),
                     "rtol": self.kwargs.get("rel"), "atol": self.kwargs.get("abs")})  # fmt: skip
        return self.inner == actual

    def __repr__(self) -> str:
        return repr(self.inner)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    global _current_test
    _current_test = item.nodeid
    torch.testing.assert_close = recording_assert_close
    pytest.approx = _RecordingApprox
    try:
        return (yield)
    finally:
        torch.testing.assert_close = _assert_close
        pytest.approx = _approx
