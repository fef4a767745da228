"""PEPOTrainer on a tiny Qwen2.5-VL: training setups, gradient equivalences, metrics."""

from __future__ import annotations

import zlib

import pytest
import torch

from pepo.trainer import PEPOConfig, PEPOTrainer
from tests.conftest import make_rl_rows


def varied_reward(completions, **_):
    """Deterministic but varied rewards so that GRPO groups have non-zero advantages."""
    return [float(zlib.crc32(str(c).encode()) % 5) for c in completions]


def make_config(tmp_path, **overrides) -> PEPOConfig:
    values = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, num_generations=4, max_completion_length=6,
        max_steps=2, learning_rate=1e-2, logging_steps=1, report_to="none", save_strategy="no", bf16=False,
        use_cpu=True, seed=0, temperature=1.0, dataloader_num_workers=0,
    )
    values.update(overrides)
    return PEPOConfig(**values)


def make_trainer(tiny_vlm, tmp_path, rows=None, peft_config=None, **overrides) -> PEPOTrainer:
    model, processor = tiny_vlm
    return PEPOTrainer(
        model=model, reward_funcs=varied_reward, args=make_config(tmp_path, **overrides),
        train_dataset=rows if rows is not None else make_rl_rows(8), processing_class=processor,
        peft_config=peft_config,
    )


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_trains(trainer: PEPOTrainer) -> None:
    before = snapshot(trainer.model)
    trainer.train()
    after = snapshot(trainer.model)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert changed, "no trainable parameter changed after two optimizer steps"
    logged = {k for record in trainer.state.log_history for k in record}
    assert {"pepo/progress", "pepo/overhead_ms", "pepo/entropy_mean"} <= logged


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_pepo_trains_for_every_loss_type(tiny_vlm, tmp_path, loss_type):
    trainer = make_trainer(tiny_vlm, tmp_path, loss_type=loss_type)
    assert_trains(trainer)
    logged = {k for record in trainer.state.log_history for k in record}
    expected = {"pepo/vs_mean", "pepo/uniform_fallback_rows"} | {f"pepo/weight_p{p}" for p in range(0, 101, 20)}
    assert expected <= logged


@pytest.mark.parametrize("method", ["grpo", "perception_only", "exploration_only", "high_entropy"])
def test_baselines_and_ablations_train(tiny_vlm, tmp_path, method):
    assert_trains(make_trainer(tiny_vlm, tmp_path, method=method))


@pytest.mark.parametrize(
    "overrides",
    [
        {"gradient_checkpointing": True},
        {"beta": 0.04},
        {"num_iterations": 2},
        {"beta": 0.04, "num_iterations": 2, "loss_type": "dapo", "gradient_checkpointing": True},
    ],
    ids=["grad-ckpt", "kl", "num-iterations-2", "all-together"],
)
def test_pepo_training_setups(tiny_vlm, tmp_path, overrides):
    assert_trains(make_trainer(tiny_vlm, tmp_path, **overrides))


def test_pepo_with_lora_adapter(tiny_vlm, tmp_path):
    from peft import LoraConfig

    trainer = make_trainer(
        tiny_vlm, tmp_path, peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    assert_trains(trainer)


def test_pepo_with_two_images_per_prompt(tiny_vlm, tmp_path):
    rows = make_rl_rows(8, images_per_prompt=2)
    trainer = make_trainer(tiny_vlm, tmp_path, rows=rows)
    assert_trains(trainer)
    assert trainer.last_token_stats is not None


# --- gradient equivalences ------------------------------------------------------------------


def _prepared_batch(trainer: PEPOTrainer, progress: float):
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps  # set by train()
    trainer.state.max_steps = 10
    trainer.state.global_step = round(progress * 10)
    generation_batch = next(iter(trainer.get_train_dataloader()))
    inputs = trainer._prepare_inputs(generation_batch)
    assert inputs["advantages"].abs().sum() > 0, "the test needs non-zero advantages"
    return inputs


def _loss_and_grads(trainer: PEPOTrainer, inputs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    loss = trainer.compute_loss(trainer.model, inputs)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def test_detached_weights_give_the_in_graph_gradient_on_policy(tiny_vlm, tmp_path):
    trainer = make_trainer(tiny_vlm, tmp_path, gate_alpha=0.5, gate_temperature=0.5)
    inputs = _prepared_batch(trainer, progress=1.0)
    assert inputs.get("old_per_token_logps") is None  # on-policy: ratio 1 everywhere

    trainer.args.detach_weights = False
    loss_graph, grads_graph = _loss_and_grads(trainer, inputs)
    trainer.args.detach_weights = True
    loss_detached, grads_detached = _loss_and_grads(trainer, inputs)
    scale = max(g.abs().max().item() for g in grads_detached)
    assert scale > 0
    torch.testing.assert_close(loss_graph, loss_detached)
    assert _max_diff(grads_graph, grads_detached) <= 1e-5 * scale

    # Off-policy the weights' own gradient no longer cancels: the check above is able to fail.
    off = dict(inputs)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
            torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1), inputs["completion_ids"].shape[1],
            pixel_values=inputs.get("pixel_values"), image_grid_thw=inputs.get("image_grid_thw"),
            num_images=inputs.get("num_images"), mm_token_type_ids=inputs.get("mm_token_type_ids"),
        )
    off["old_per_token_logps"] = logps - 0.05 * torch.randn_like(logps, generator=torch.Generator().manual_seed(0))
    trainer.args.detach_weights = False
    _, grads_graph_off = _loss_and_grads(trainer, off)
    trainer.args.detach_weights = True
    _, grads_detached_off = _loss_and_grads(trainer, off)
    assert _max_diff(grads_graph_off, grads_detached_off) > 1e-4 * scale


def test_pepo_equals_grpo_at_progress_zero_and_differs_after(tiny_vlm, tmp_path):
    trainer = make_trainer(tiny_vlm, tmp_path, gate_alpha=0.5, gate_temperature=0.5)
    inputs = _prepared_batch(trainer, progress=0.0)

    def loss_grads(method: str, progress: float):
        trainer.args.method = method
        trainer.state.global_step = round(progress * trainer.state.max_steps)
        return _loss_and_grads(trainer, inputs)

    loss_grpo, grads_grpo = loss_grads("grpo", 0.0)
    loss_pepo0, grads_pepo0 = loss_grads("pepo", 0.0)
    torch.testing.assert_close(loss_pepo0, loss_grpo, atol=1e-7, rtol=1e-6)
    assert _max_diff(grads_pepo0, grads_grpo) <= 1e-7
    _, grads_pepo_half = loss_grads("pepo", 0.5)
    assert _max_diff(grads_pepo_half, grads_grpo) > 1e-6
    # GRPO is progress-independent.
    _, grads_grpo_half = loss_grads("grpo", 0.5)
    assert _max_diff(grads_grpo_half, grads_grpo) <= 1e-7


def test_token_advantage_is_sequence_advantage_times_scheduled_weight(tiny_vlm, tmp_path):
    """The loss TRL computes equals a hand-written PEPO loss from the logged weights."""
    trainer = make_trainer(tiny_vlm, tmp_path, gate_alpha=0.5, gate_temperature=0.5, loss_type="grpo")
    inputs = _prepared_batch(trainer, progress=0.6)
    loss = trainer.compute_loss(trainer.model, inputs)
    stats = trainer.last_token_stats
    mask = stats["mask"].float()
    scheduled = 1 - 0.6 + 0.6 * stats["weights"]
    # On-policy, ratio = 1: per-token loss = -A * s; grpo = mean over rows of the masked mean over tokens.
    advantages = inputs["advantages"].cpu().unsqueeze(1)
    expected = ((-advantages * scheduled * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    grad_accum = trainer.current_gradient_accumulation_steps
    torch.testing.assert_close(loss.detach().cpu() * grad_accum, expected, atol=1e-6, rtol=1e-5)
    # Weights average exactly 1 over each response's tokens.
    per_row = (stats["weights"] * mask).sum(1) / mask.sum(1).clamp(min=1)
    torch.testing.assert_close(per_row[mask.sum(1) > 0], torch.ones_like(per_row[mask.sum(1) > 0]))


def test_trainer_rejects_plain_grpo_config(tiny_vlm, tmp_path):
    from trl import GRPOConfig

    model, processor = tiny_vlm
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, bf16=False,
                      use_cpu=True, report_to="none")
    with pytest.raises(TypeError, match="PEPOConfig"):
        PEPOTrainer(model=model, reward_funcs=varied_reward, args=args, train_dataset=make_rl_rows(4),
                    processing_class=processor)


def test_config_rejects_unknown_method_and_bad_values(tmp_path):
    with pytest.raises(ValueError, match="method='pepox'.*grpo"):
        make_config(tmp_path, method="pepox")
    with pytest.raises(ValueError, match="vision_score_type"):
        make_config(tmp_path, vision_score_type="cos")
    with pytest.raises(ValueError, match="gate_temperature"):
        make_config(tmp_path, gate_temperature=0.0)
    with pytest.raises(ValueError, match="gate_alpha"):
        make_config(tmp_path, gate_alpha=-1.0)
    assert make_config(tmp_path, method="high_entropy", high_entropy_quantile=0.3).top_entropy_quantile == 0.3
