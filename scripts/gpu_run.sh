#!/usr/bin/env bash
# On the GPU machine: install the carried wheels (.whl/, made by scripts/gpu_wheels.sh), check that
# every requirement of theirs is met by what the machine has, then run benchmarks/gpu_suite.py.
#
#   bash scripts/gpu_run.sh OUT_DIR [extra gpu_suite options]     # e.g. bash scripts/gpu_run.sh "$OUT"
#
# Everything lands in OUT_DIR: gpu_suite/ (results.json, summary.md), gpu_suite.log, environment.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:?usage: bash scripts/gpu_run.sh OUT_DIR [gpu_suite options]}"
shift
mkdir -p "$OUT_DIR"
PY=python3

if ls .whl/*.whl > /dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" | tee "$OUT_DIR/gpu_suite.log"; exit 1; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

# Which requirement of the carried wheels the machine does not meet (a warning, not a stop: pins such as
# datasets' fsspec<=2026.9.0 are often stricter than what imports).
$PY - > "$OUT_DIR/environment.txt" 2>&1 <<'EOF'
import importlib.metadata as md, pathlib, platform
from packaging.requirements import Requirement
print("python", platform.python_version())
carried = sorted({p.name.split("-")[0] for p in pathlib.Path(".whl").glob("*.whl")})
for name in ["torch", "transformers", "accelerate", "peft", "huggingface_hub", "numpy", "pyarrow", "fsspec"] + carried:
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} MISSING")
for name in carried:
    for text in md.requires(name) or []:
        req = Requirement(text)
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            have = md.version(req.name)
        except md.PackageNotFoundError:
            print(f"UNMET {name}: {text} (not installed)")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            print(f"UNMET {name}: {text} (have {have})")
EOF
cat "$OUT_DIR/environment.txt"
nvidia-smi >> "$OUT_DIR/environment.txt" 2>&1 || true

$PY -c "import trl, datasets, math_verify, pepo.trainer" || { echo "imports failed" | tee -a "$OUT_DIR/gpu_suite.log"; exit 1; }
$PY -m benchmarks.gpu_suite --out "$OUT_DIR/gpu_suite" "$@" 2>&1 | tee "$OUT_DIR/gpu_suite.log"
exit "${PIPESTATUS[0]}"
