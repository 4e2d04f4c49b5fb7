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
import traceback
from pathlib import Path

RESULTS = Path("export_survey.jsonl")
BIG_LAST = [
    "vit_b_16", "vit_b_32", "convnext_large", "efficientnet_v2_l", "swin_v2_b", "regnet_y_32gf",
    "vit_l_32", "vit_l_16", "regnet_y_128gf", "vit_h_14",
]  # fmt: skip


def reason(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"


def check(fn, x2, x3, x1, eager):
    """Compare fn's output with eager's on batches of 2 (the example), 3 and 1."""
    import torch

    out = {}
    for name, x in (("b2", x2), ("b3", x3), ("b1", x1)):
        try:
            with torch.no_grad():
                got = fn(x)
            want = eager[name]
            diff = (got - want).abs().max().item()
            try:
                torch.testing.assert_close(got, want)
                out[name] = f"equal(maxdiff={diff:.1e})"
            except AssertionError:
                ok_loose = torch.allclose(got, want, rtol=1e-4, atol=1e-4)
                out[name] = f"DIFF(maxdiff={diff:.1e},loose_ok={ok_loose})"
        except Exception as e:
            out[name] = f"ERROR {reason(e)}"
    return out


def one(arch: str) -> dict:
    import torch

    from pipeline.models import build_model

    torch.manual_seed(0)
    size = 299 if arch == "inception_v3" else 224
    t = time.perf_counter()
    model = build_model(arch, None, ["a", "b", "c"], size).model.eval()
    result = {"arch": arch, "build_s": round(time.perf_counter() - t, 1),
              "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)}  # fmt: skip
    g = torch.Generator().manual_seed(1)
    x2, x3, x1 = (torch.randn(n, 3, size, size, generator=g) for n in (2, 3, 1))
    with torch.no_grad():
        eager = {"b2": model(x2), "b3": model(x3), "b1": model(x1)}

    # (a) torch.export with a dynamic batch dimension, saved and loaded back as a .pt2
    try:
        t = time.perf_counter()
        batch = torch.export.Dim("batch", min=1)
        with torch.no_grad():
            program = torch.export.export(model, (x2,), dynamic_shapes=({0: batch},))
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        seconds = time.perf_counter() - t
        buffer.seek(0)
        loaded = torch.export.load(buffer).module()
        result["export"] = {"ok": True, "s": round(seconds, 1), "bytes_MB": round(buffer.getbuffer().nbytes / 1e6, 1),
                            **check(loaded, x2, x3, x1, eager)}  # fmt: skip
    except Exception as e:
        result["export"] = {"ok": False, "error": reason(e),
                            "tb": traceback.format_exc()[-1500:]}  # fmt: skip

    # (b) torch.jit.trace
    try:
        t = time.perf_counter()
        with torch.no_grad():
            traced = torch.jit.trace(model, (x2,), check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        seconds = time.perf_counter() - t
        buffer.seek(0)
        loaded = torch.jit.load(buffer)
        result["trace"] = {"ok": True, "s": round(seconds, 1), **check(loaded, x2, x3, x1, eager)}
    except Exception as e:
        result["trace"] = {"ok": False, "error": reason(e)}

    # (c) torch.jit.script
    try:
        t = time.perf_counter()
        scripted = torch.jit.script(model)
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)
        seconds = time.perf_counter() - t
        buffer.seek(0)
        loaded = torch.jit.load(buffer)
        result["script"] = {"ok": True, "s": round(seconds, 1), **check(loaded, x2, x3, x1, eager)}
    except Exception as e:
        result["script"] = {"ok": False, "error": reason(e)}
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
