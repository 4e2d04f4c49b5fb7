"""The metrics a model is scored by, named once.

`engine.score` measures METRICS on a split (tests/test_metrics.py checks that it returns
exactly these, in this order). Every other list of them derives from METRICS: the epoch
records in checkpoints (`runs.RECORD_KEYS`), the dvclive curves, the columns of
eval/scores.csv, the choices of select.metric and the numbers of best/metrics.json. So a
new metric is its formula in `engine.score` and its name here.
"""

METRICS = ("loss", "accuracy", "f1")


def columns(split: str) -> tuple[str, ...]:
    """The split's metrics as records and tables name them: val_loss, val_accuracy..."""
    return tuple(f"{split}_{name}" for name in METRICS)


def as_columns(split: str, scores: dict[str, float]) -> dict[str, float]:
    """`engine.score`'s result on `split` under those names."""
    return dict(zip(columns(split), (scores[name] for name in METRICS), strict=True))


# select.metric: validation only, so that test numbers are never used to choose.
SELECTABLE = columns("val")
# best/metrics.json
REPORTED = (*columns("val"), *columns("test"))
