"""bench/gpu_check.py: every part of the one-shot GPU check runs, in its tiny CPU form."""

import json
from pathlib import Path

from bench import gpu_check


def test_every_part_runs_in_smoke_mode_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    # The end-to-end part runs every stage (about a minute here): tests/test_pipeline.py covers it.
    parts = [name for name in gpu_check.PARTS if name != "pipeline"]
    report = gpu_check.main(["--smoke", "--device", "cpu", "--json", str(out), "--only", ",".join(parts)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report, default=str))
    errors = {name: report[name]["error"] for name in parts if "error" in report[name]}
    assert not errors, errors
    assert report["syncs"] == {"skipped": "CUDA only (torch.cuda.set_sync_debug_mode)"}
    assert report["loop"]["stage_over_raw"] > 0
    assert report["features"]["vit_b_16"]["bytes_per_image"] == 768 * 4  # float32 class token, no more
    assert report["compile"]["graphs"] == 1
    assert report["determinism"]["deterministic"] is True
    assert report["ddp"]["ddp_over_plain"] > 0
