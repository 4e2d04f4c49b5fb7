"""bench/gpu_check.py, a smoke test: every part of the one-shot GPU check runs in its tiny CPU
form and writes its report. Speeds on a CPU say nothing about a GPU, so only figures with a
known right answer (sizes, counts, flags) are checked for their value."""

import json
from pathlib import Path

from bench import gpu_check


def test_smoke_every_part_runs_and_the_figures_with_known_answers_are_right(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    # The end-to-end part runs every stage (about a minute here): tests/test_pipeline.py covers it.
    parts = [name for name in gpu_check.PARTS if name != "pipeline"]
    report = gpu_check.main(["--smoke", "--device", "cpu", "--json", str(out), "--only", ",".join(parts)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report, default=str))
    errors = {name: report[name]["error"] for name in parts if "error" in report[name]}
    assert not errors, errors
    assert report["syncs"] == {"skipped": "CUDA only (torch.cuda.set_sync_debug_mode)"}
    assert set(report["loop"]) == {"raw_images_per_s", "stage_images_per_s", "stage_over_raw"}
    assert report["loop"]["stage_over_raw"] > 0  # a rate: no right answer on a CPU
    # What the head reads, in float32 on the CPU: resnet18's 512 pooled features, ViT's 768-wide class token.
    features = report["features"]
    assert (features["resnet18"]["bytes_per_image"], features["vit_b_16"]["bytes_per_image"]) == (512 * 4, 768 * 4)
    assert {part["dtype"] for part in features.values()} == {"torch.float32"}
    assert report["compile"]["graphs"] == 1
    assert report["determinism"] == {"deterministic": True, "default": True}
    assert (report["ddp"]["images"], report["ddp"]["batch_size"], report["ddp"]["arch"]) == (64, 32, "resnet18")
