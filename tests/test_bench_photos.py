"""bench/photos.py: every part runs in its tiny form and reports each figure as a positive number."""

import json
import sys
from pathlib import Path

from bench.photos import figures
from testing.project import REPO, run


def test_smoke_run_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "photos.json"
    run([sys.executable, "-m", "bench.photos", "--smoke", "--json", str(out)], REPO)
    report = json.loads(out.read_text())
    numbers = figures({part: report[part] for part in ("decode", "train", "rss")})
    expected = [
        *(
            f"decode.{size}.{figure}"
            for size in ("large", "small")
            for figure in (
                "inspect_file_per_s", "load_image_per_s", "hash_check_per_s", "plain_per_s", "decode_jpeg_per_s",
                "inspect_over_plain", "load_image_over_plain", "decode_jpeg_over_plain",
            )
        ),
        "train.1_epochs.pipeline_s", "train.1_epochs.plain_s", "train.1_epochs.plain_over_pipeline",
        "rss.stage_peak_rss_bytes", "rss.stage_max_anon_bytes", "rss.stage_max_file_bytes",
        "rss.tree_max_pss_bytes", "rss.cache_bytes",
    ]  # fmt: skip
    assert not [name for name in expected if name not in numbers]
    assert {name: value for name, value in numbers.items() if not value > 0} == {}
