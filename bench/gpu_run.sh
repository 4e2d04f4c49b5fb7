#!/usr/bin/env bash
# Every GPU measurement of this project in one run, bounded in time (BUDGET, below):
#
#   bash bench/gpu_run.sh [OUT] [WHEELS] [ANCHOR]
#
#   OUT      where the results go (default gpu_results); at most these six files:
#              log.txt            all output, step by step, with times
#              gpu_check.json     python -m bench.gpu_check (every part)
#              tolerances.jsonl   how close each comparison of the CUDA-relevant tests came
#                                 (bench/tolerance_probe.py)
#              demo_metrics.json  the demo's best/metrics.json after a 2-epoch `dvc repro`
#                                 with `device: auto`
#              gpu_anchor.json    ANCHOR's own report, when it writes one to $OUT
#   WHEELS   a folder of wheels to install first (for a machine without network that lacks
#            omegaconf, dvc or dvclive); empty or absent: install nothing
#   ANCHOR   a raw-PyTorch reference script to time on the same card after the rest
#
# BUDGET (seconds, default 420) bounds the whole run: each step gets what is left of it, so
# the run ends, with every file written, before a caller's time limit of BUDGET + 30 s.
# SMOKE=1 runs the same steps in a tiny CPU form (gpu_check --smoke --device cpu), which
# checks the script, not the GPU.
set -u
out=$(realpath -m "${1:-gpu_results}")
wheels=${2:-}
anchor=${3:-}
budget=${BUDGET:-420}
deadline=$((SECONDS + budget))
mkdir -p "$out"
exec > >(tee -a "$out/log.txt") 2>&1
export PYTHONUNBUFFERED=1
repo=$(pwd)

# step NAME CAP COMMAND...: run with the smaller of CAP and the time left, and say how it ended.
step() {
  local name=$1 cap=$2
  shift 2
  local left=$((deadline - SECONDS - 5))
  local limit=$((cap < left ? cap : left))
  if [ "$limit" -lt 10 ]; then
    echo "== $(date +%T) $name: skipped, ${left}s left of the budget"
    return
  fi
  echo "== $(date +%T) $name (at most ${limit}s)"
  local started=$SECONDS
  timeout --kill-after=5 "$limit" "$@"
  echo "== $(date +%T) $name: exit $? after $((SECONDS - started))s"
}

echo "== $(date +%T) environment"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || echo "no nvidia-smi"
if [ -n "$wheels" ] && ls "$wheels"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheels"/*.whl \
    || echo "wheel install failed"
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
fi
# dvc.yaml's stages call `python`; some images have only python3.
if ! command -v python >/dev/null; then
  mkdir -p /tmp/python-shim && ln -sf "$(command -v python3)" /tmp/python-shim/python
  export PATH=/tmp/python-shim:$PATH
fi
python - <<'EOF'
import importlib, os, platform
import torch
print("python", platform.python_version(), "| cpus", os.cpu_count())
print("torch", torch.__version__, "| cuda", torch.version.cuda, "| cudnn", torch.backends.cudnn.version(),
      "| device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for name in ("torchvision", "timm", "numpy", "pandas", "PIL", "omegaconf", "dvc", "dvclive", "simplejpeg", "pytest", "xdist"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as error:
        print(name, "MISSING:", type(error).__name__, error)
EOF
# gpu_check's pipeline part and dvc need a git checkout; a copied tree may have none.
if command -v git >/dev/null && ! git rev-parse --git-dir >/dev/null 2>&1; then
  git init -q && git add -A . && git rm -rq --cached --ignore-unmatch .whl .devcheck \
    && git -c user.name=check -c user.email=check@localhost commit -qm snapshot
fi

if [ "${SMOKE:-0}" = 1 ]; then check_args=(--smoke --device cpu); device=cpu; else check_args=(); device=auto; fi
step gpu_check 270 python -m bench.gpu_check --json "$out/gpu_check.json" "${check_args[@]}"

# The CUDA-relevant tests, recording their tolerances' headroom, beside a 2-epoch demo run.
tests() {
  TOLERANCE_PROBE="$out/tolerances.jsonl" python -m pytest -q -n 8 -p bench.tolerance_probe -p no:cacheprovider \
    tests/test_gpu_path.py tests/test_feature_cache.py tests/test_predict.py tests/test_gpu_check.py
}
demo() {
  local project
  project=$(mktemp -d)
  if command -v git >/dev/null; then
    git ls-files -z -co --exclude-standard | grep -zvE '^\.(whl|devcheck)/' | tar --null -T - -cf - | tar -xf - -C "$project"
    cd "$project" && git init -q && git add -A && git -c user.name=check -c user.email=check@localhost commit -qm demo \
      || return 1
  else  # no git here: a plain copy, and DVC told so
    tar --exclude=./.git --exclude=./.whl --exclude=./.devcheck -cf - . | tar -xf - -C "$project"
    cd "$project" && python -m dvc config core.no_scm true || return 1
  fi
  sed -i "s/^device: .*/device: $device/; /^train:/,/^[a-z]/ s/^  epochs: .*/  epochs: 2/" params.yaml
  grep -E "^device:|^  epochs:" params.yaml
  python -m dvc repro && python -m dvc metrics show && cp best/metrics.json "$out/demo_metrics.json"
}
export out repo device
step tests 150 bash -c "$(declare -f tests); tests" 2>&1 | sed -u "s/^/[tests] /" &
tests_pid=$!
step demo 180 bash -c "$(declare -f demo); demo" 2>&1 | sed -u "s/^/[demo] /" &
wait "$tests_pid" "$!"  # not a bare wait: that would also wait for the tee above, which never ends

if [ -n "$anchor" ] && [ "${SMOKE:-0}" != 1 ]; then
  step anchor 400 env OUT="$out" python "$anchor"
fi
echo "== $(date +%T) done, $((deadline - SECONDS))s of the budget left"
