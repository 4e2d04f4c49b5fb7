"""Survey: which export path works for the torchvision classification models?

    python -m bench.export_survey                # every model, one subprocess each; about 50 min on 2 cores
    python -m bench.export_survey --one ARCH     # one model, one JSON line

Each model is built as the pipeline builds it (random weights, a new 3-class head, 224 px,
299 for inception_v3), in eval mode, then exported with (a) torch.export and a dynamic
batch dimension, (b) torch.jit.trace, (c) torch.jit.script. Each is saved, loaded back and
compared with the eager model on batches of 2 (the example), 3 and 1. Rows are appended
to export_survey.jsonl (a rerun skips models already there); a summary is printed at the
end. This is where the README's "80/80" for torch.export comes from.
"""

import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipeline.cli import error_line

RESULTS = Path("export_survey.jsonl")
BIG_LAST = [
    "vit_b_16", "vit_b_32", "convnext_large", "efficientnet_v2_l", "swin_v2_b", "regnet_y_32gf",
    "vit_l_32", "vit_l_16", "regnet_y_128gf", "vit_h_14",
]  # fmt: skip


def reason(error: Exception) -> str:
    return error_line(error, with_type=True)[:300]


def check(fn: Callable[[torch.Tensor], torch.Tensor], inputs: dict[str, torch.Tensor],
          eager: dict[str, torch.Tensor]) -> dict[str, str]:  # fmt: skip
    """Compare fn's output with the eager model's on each batch."""
    out = {}
    for name, x in inputs.items():
        try:
            with torch.no_grad():
                got = fn(x)
            diff = (got - eager[name]).abs().max().item()
            try:
                torch.testing.assert_close(got, eager[name])
                out[name] = f"equal(maxdiff={diff:.1e})"
            except AssertionError:
                ok_loose = torch.allclose(got, eager[name], rtol=1e-4, atol=1e-4)
                out[name] = f"DIFF(maxdiff={diff:.1e},loose_ok={ok_loose})"
        except Exception as e:
            out[name] = f"ERROR {reason(e)}"
    return out


def attempt(capture: Callable[[], Any], save: Callable[[Any, io.BytesIO], None],
            load: Callable[[io.BytesIO], Any], inputs: dict[str, torch.Tensor],
            eager: dict[str, torch.Tensor]) -> dict[str, Any]:  # fmt: skip
    """Capture the model one way, save it to memory, load it back and compare it with eager."""
    try:
        started = time.perf_counter()
        with torch.no_grad():
            captured = capture()
        buffer = io.BytesIO()
        save(captured, buffer)
        seconds = time.perf_counter() - started
        megabytes = buffer.getbuffer().nbytes / 1e6
        buffer.seek(0)
        loaded = load(buffer)
        return {"ok": True, "s": round(seconds, 1), "bytes_MB": round(megabytes, 1), **check(loaded, inputs, eager)}
    except Exception as e:
        return {"ok": False, "error": reason(e)}


def one(arch: str) -> dict[str, Any]:
    from pipeline.models import build_model

    torch.manual_seed(0)
    size = 299 if arch == "inception_v3" else 224
    t = time.perf_counter()
    model = build_model(arch, None, ["a", "b", "c"], size).model.eval()
    result = {"arch": arch, "build_s": round(time.perf_counter() - t, 1),
              "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)}  # fmt: skip
    g = torch.Generator().manual_seed(1)
    inputs = {f"b{n}": torch.randn(n, 3, size, size, generator=g) for n in (2, 3, 1)}  # b2 is the example
    with torch.no_grad():
        eager = {name: model(x) for name, x in inputs.items()}

    example = (inputs["b2"],)
    dynamic_batch = ({0: torch.export.Dim("batch", min=1)},)
    methods = {
        "export": (lambda: torch.export.export(model, example, dynamic_shapes=dynamic_batch),
                   torch.export.save, lambda buffer: torch.export.load(buffer).module()),
        "trace": (lambda: torch.jit.trace(model, example, check_trace=False), torch.jit.save, torch.jit.load),
        "script": (lambda: torch.jit.script(model), torch.jit.save, torch.jit.load),
    }  # fmt: skip
    for name, (capture, save, load) in methods.items():
        result[name] = attempt(capture, save, load, inputs, eager)
    return result


def main() -> None:
    import torchvision
    from torchvision.models import list_models

    archs = list_models(module=torchvision.models)
    done = {json.loads(line)["arch"] for line in RESULTS.read_text().splitlines()} if RESULTS.exists() else set()
    order = [a for a in archs if a not in BIG_LAST] + [a for a in BIG_LAST if a in archs]
    for arch in order:
        if arch in done:
            continue
        t = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-m", "bench.export_survey", "--one", arch], capture_output=True,
                                  text=True, timeout=900)  # fmt: skip
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            crash = {"arch": arch, "crash": proc.stderr[-1000:], "rc": proc.returncode}
            row = json.loads(lines[-1]) if lines else crash
        except subprocess.TimeoutExpired:
            row = {"arch": arch, "crash": "timeout 900 s"}
        row["total_s"] = round(time.perf_counter() - t, 1)
        with RESULTS.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(arch, row["total_s"], flush=True)
    summarize()


def summarize() -> None:
    """Per method: how many models exported with outputs equal to the eager model's on every batch."""
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines()]
    for method in ("export", "trace", "script"):
        works = [
            r["arch"] for r in rows
            if r.get(method, {}).get("ok") and all(str(r[method][b]).startswith("equal") for b in ("b2", "b3", "b1"))
        ]  # fmt: skip
        failed = sorted({r["arch"] for r in rows} - set(works))
        print(f"{method}: {len(works)}/{len(rows)} equal on batches 2, 3, 1; not: {', '.join(failed) or 'none'}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        import warnings

        warnings.filterwarnings("ignore")
        print(json.dumps(one(sys.argv[2])))
    else:
        main()
