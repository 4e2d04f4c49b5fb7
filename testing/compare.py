"""Comparing training runs checkpoint by checkpoint, bit for bit."""

import torch

# What each checkpoint records about its epoch, timing aside.
METRICS = ("epoch", "loss", "val_loss", "val_accuracy", "val_f1", "lr")


def assert_same_run(got: list[dict], expected: list[dict]) -> None:
    for mine, theirs in zip(got, expected, strict=True):
        assert {k: mine[k] for k in METRICS} == {k: theirs[k] for k in METRICS}
        # The weights' moving average (train.ema_decay) too, when the run keeps one.
        assert ("ema_state_dict" in mine) == ("ema_state_dict" in theirs)
        for part in ("model_state_dict", "optimizer_state_dict", "ema_state_dict", "ema_updates"):
            if part in theirs:
                assert_tensors_equal(mine[part], theirs[part], f"epoch {mine['epoch']} {part}")


def assert_tensors_equal(a: object, b: object, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_tensors_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_tensors_equal(x, y, f"{where}[{index}]")
    else:
        assert a == b, where
