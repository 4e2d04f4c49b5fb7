"""Smoke tests of bench/photos.py and bench/fidelity.py: their parts run in their tiny form
and report each figure, and the cache size is the one its format gives.

The `train` part (three stage processes and a DataLoader loop, about 20 s even when tiny)
is left to `python -m bench.photos --smoke` by hand, to keep the suite's time."""

import json
import sys
from pathlib import Path

from bench.photos import figures
from pipeline.data.copies import INDEX_COLUMNS
from testing.project import REPO, run


def test_smoke_run_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "photos.json"
    run([sys.executable, "-m", "bench.photos", "--smoke", "--only", "decode,rss", "--json", str(out)], REPO)
    report = json.loads(out.read_text())
    numbers = figures({part: report[part] for part in ("decode", "rss")})
    expected = [
        *(
            f"decode.{size}.{figure}"
            for size in ("large", "small")
            for figure in (
                "inspect_file_per_s", "load_image_per_s", "hash_check_per_s", "plain_per_s", "decode_jpeg_per_s",
                "inspect_over_plain", "load_image_over_plain", "decode_jpeg_over_plain",
            )
        ),
        "rss.stage_peak_rss_bytes", "rss.stage_max_anon_bytes", "rss.stage_max_file_bytes",
        "rss.tree_max_pss_bytes", "rss.cache_bytes",
    ]  # fmt: skip
    assert not [name for name in expected if name not in numbers]
    assert {name: value for name, value in numbers.items() if not value > 0} == {}
    # A size with a known answer: prepare's cache holds each image's model input, uint8 (3, S, S),
    # in one .npy, and the training copies' index, an int64 row of INDEX_COLUMNS per image, in
    # another; a .npy header is 128 bytes for arrays like these.
    images, side = report["rss"]["images"], report["rss"]["image_size"]
    inputs, index = images * 3 * side * side, images * len(INDEX_COLUMNS) * 8
    assert report["rss"]["cache_bytes"] == (128 + inputs) + (128 + index)


def test_fidelity_smoke_run_reports_its_figures(tmp_path: Path) -> None:
    """bench/fidelity.py's eval and crops parts, tiny (its export part is the export tests')."""
    out = tmp_path / "fidelity.json"
    run([sys.executable, "-m", "bench.fidelity", "--smoke", "--only", "eval,crops", "--json", str(out)], REPO)
    report = json.loads(out.read_text())
    assert len(report["eval"]) == 6 and len(report["crops"]) == 3  # two weights x three photos; three photos
    for measured in report["eval"].values():
        assert measured["now"]["max"] <= 8 and measured["now"]["mean"] <= 1  # small photos decode whole
    for measured in report["crops"].values():
        assert measured["quarter_or_more_worst"] <= 2 and measured["copy_bytes"] > 0
        assert measured["crops_per_s_one_core"] > 0
