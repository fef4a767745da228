"""Read a live vLLM engine's parameters and compare them with a transformers Qwen2.5-VL's (test helper)."""

from __future__ import annotations

from typing import Any, Mapping

import torch


def vllm_view(hf: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Qwen2.5-VL parameters (transformers names) under vLLM's names and fusions (qkv_proj = q|k|v, gate_up = gate|up)."""
    out = {}
    for key, p in hf.items():
        name = key.replace("model.visual.", "visual.").replace("model.language_model.", "language_model.model.")
        if ".q_proj." in key:
            out[name.replace(".q_proj.", ".qkv_proj.")] = torch.cat(
                [p, hf[key.replace(".q_proj.", ".k_proj.")], hf[key.replace(".q_proj.", ".v_proj.")]])
        elif ".gate_proj." in key:
            out[name.replace(".gate_proj.", ".gate_up_proj.")] = torch.cat([p, hf[key.replace(".gate_proj.", ".up_proj.")]])
        elif not any(f".{x}." in key for x in ("k_proj", "v_proj", "up_proj")):
            out[name] = p
    return out


def engine_model(llm: Any) -> torch.nn.Module:
    """The model inside an in-process ``vllm.LLM`` (vLLM 0.31 V1, ``VLLM_ENABLE_V1_MULTIPROCESSING=0``)."""
    return llm.llm_engine.model_executor.driver_worker.model_runner.model


def engine_gap(llm: Any, hf: Mapping[str, torch.Tensor]) -> float:
    """max |vLLM parameter - transformers parameter| over every parameter of the engine's model."""
    ours = vllm_view({n: p.detach() for n, p in hf.items()})
    worst, seen = 0.0, 0
    params = list(engine_model(llm).named_parameters())
    for name, p in params:
        ref = ours[name]
        rows = min(p.shape[0], ref.shape[0])  # vLLM pads the vocabulary
        worst = max(worst, (p.detach()[:rows].float() - ref[:rows].float()).abs().max().item())
        seen += 1
    assert seen == len(params) and seen > 20
    return worst
