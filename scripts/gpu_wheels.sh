#!/usr/bin/env bash
# Prepare, on a machine that reaches PyPI, the wheels that the GPU machine lacks, in .whl/ (git-ignored).
#
# The GPU machine (docs/performance.md, "Running on a GPU") has Python 3.12, torch 2.11, transformers
# 5.17, accelerate 1.15, peft, huggingface_hub, numpy, pandas, pyarrow, pillow, pyyaml, tqdm, sympy,
# matplotlib, psutil, jinja2, fsspec, xxhash, requests, httpx, aiohttp, pytest, but no TRL, datasets
# or math-verify and none of their own missing dependencies. It reaches no package index, so these
# travel with the run. All are pure-Python (py3 / py312 "none-any") wheels, pinned to the versions
# the CPU suite runs with here; each one's Requires-Dist is either below or on that machine's list.
#
#   bash scripts/gpu_wheels.sh              # fills .whl/ (about 2 MB), then lists what each wheel requires
#   bash scripts/gpu_wheels.sh --pyarrow    # also pyarrow 26.0.1 for cp312 (binary, ~45 MB), in case
#                                           # the machine's pyarrow is older than datasets' >= 24 (unknown)
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
  trl==1.16.0                      # PEPOTrainer's base
  datasets==5.2.0                  # TRL's and pepo's data (needs dill, multiprocess below)
  dill==0.4.1
  multiprocess==0.70.19
  math-verify==0.9.0               # the math reward's verifier (imported by pepo.rewards)
  latex2sympy2_extended==1.11.0    # math-verify's LaTeX parser
  antlr4-python3-runtime==4.13.2   # latex2sympy2_extended's parser runtime
)
if [[ "${1:-}" == "--pyarrow" ]]; then
  WHEELS+=(pyarrow==26.0.1)
fi

PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"

echo "wheels in .whl/ ($(du -sh .whl | cut -f1)):"
for whl in .whl/*.whl; do
  echo "  $(basename "$whl")"
  unzip -p "$whl" '*.dist-info/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' | sed 's/^/      /' || true
done
