"""Real vLLM tests (marker ``vllm``): run in the virtualenv that ``scripts/vllm_env.sh`` builds.

    scripts/vllm_env.sh && .venv-vllm/bin/python -m pytest -m vllm tests/vllm_engine -p no:cacheprovider

CPU-only settings live here, not in pepo: the engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``,
as TRL's colocate mode runs it; a spawned engine core would re-import the test module), with a 1 GiB KV cache.
Engines start slowly on 2 cores (15-40 s), so each module builds at most one (module-scoped fixtures).
Outside that virtualenv (no vllm) these modules are not collected.
"""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

import pytest

if importlib.util.find_spec("vllm") is None:
    collect_ignore_glob = ["test_*.py"]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/vllm_engine/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.vllm)


@pytest.fixture(scope="session")
def vllm_tiny_dir(tmp_path_factory, tiny_tokenizer):
    """A float32 tiny Qwen2.5-VL with head_dim 32 (vLLM-CPU's minimum), saved as pepo saves models."""
    from pepo.models.tiny import VLLM_TINY_SPEC, build_tiny_qwen2_5_vl, save_tiny

    model, processor = build_tiny_qwen2_5_vl(tiny_tokenizer, VLLM_TINY_SPEC, seed=0)
    return save_tiny(model, processor, tmp_path_factory.mktemp("vllm-tiny") / "model")


def _live_weight_linear() -> None:
    """vLLM-CPU repacks each linear weight for oneDNN/SGL kernels after loading and drops the original
    parameter, so TRL's weight push (``model.load_weights``) fails (``'Parameter' object has no attribute
    'weight_loader'``) and a new weight would never reach the packed copy anyway. Colocate training needs the
    live weight: linear layers here compute ``F.linear`` on their own parameter (what vLLM-CPU itself falls back
    to). CPU-only, test-side; GPU vLLM has no such repacking."""
    import torch

    from vllm.model_executor.layers import utils

    def dispatch(layer, remove_weight):
        layer.cpu_linear = lambda x, weight, bias: torch.nn.functional.linear(x, weight, bias)

    utils.dispatch_cpu_unquantized_gemm = dispatch


if importlib.util.find_spec("vllm") is not None:
    _live_weight_linear()
