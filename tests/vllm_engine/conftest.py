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
