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


def reference_loss(trainer: PEPOTrainer, model, inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The micro-batch loss written out from PEPO's definition, without PEPOTrainer's plumbing.

    One plain forward with ``output_hidden_states=True``; weights from pepo.weights' public functions on
    those hidden states and the entropies of the logits that produced each completion token; then, per
    token, schedule s = 1 - p + p * w times TRL's clipped surrogate -min(r A, clip(r) A), plus the KL
    beta * (exp(ref - logp) - (ref - logp) - 1) (times r with TRL's default use_bias_correction_kl) that no
    token weight touches, aggregated as TRL's loss type does.

    Returns the loss (differentiable in the model's parameters) and the tensors it was built from.
    """
    from pepo.weights import (exploration_only_weights, pepo_token_weights, perception_only_weights,
                              rows_without_image, token_entropy, visual_similarity)

    args = trainer.args
    completion_ids = inputs["completion_ids"]
    ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
    C = completion_ids.shape[1]
    out = model(input_ids=ids, attention_mask=torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1),
                pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"],
                mm_token_type_ids=inputs.get("mm_token_type_ids"), output_hidden_states=True)
    logits = out.logits[:, -C - 1 : -1].float() / args.temperature  # position t-1 produced completion token t
    logps = torch.log_softmax(logits, dim=-1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    mask = inputs["completion_mask"].bool()
    progress = trainer.state.global_step / trainer.state.max_steps
    with torch.no_grad():
        entropy = token_entropy(logits)
        vision = ids == trainer.image_token_id
        scores = visual_similarity(out.hidden_states, vision, C, args.vision_score_type)
        no_image = rows_without_image(vision)
        weighting = args.token_weighting
        if weighting == "pepo":
            w = pepo_token_weights(scores, entropy, mask, args.gate_alpha, args.gate_temperature, no_image_rows=no_image)
        elif weighting == "perception_only":
            w = perception_only_weights(scores, mask, args.gate_temperature, no_image_rows=no_image)
        elif weighting == "exploration_only":
            w = exploration_only_weights(entropy, mask, args.gate_temperature)
        else:
            w = torch.ones_like(entropy)
        schedule = 1 - progress + progress * w if weighting else torch.ones_like(entropy)
    advantages = inputs["advantages"].unsqueeze(1)
    old = inputs.get("old_per_token_logps")
    old = logps.detach() if old is None else old
    ratio = torch.exp(logps - old)
    upper = args.epsilon_high if args.epsilon_high is not None else args.epsilon
    clipped = torch.clamp(ratio, 1 - args.epsilon, 1 + upper)
    surrogate = -torch.min(ratio * advantages, clipped * advantages)
    per_token = schedule * surrogate
    if args.top_entropy_quantile < 1.0:  # High-Entropy RL: only the top quantile of tokens by entropy trains
        threshold = torch.quantile(entropy[mask], 1 - args.top_entropy_quantile)
        per_token = per_token * ((entropy >= threshold) & mask)
    if args.beta:  # TRL's k3 estimator, times the importance ratio when use_bias_correction_kl (TRL's default)
        delta = inputs["ref_per_token_logps"] - logps
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + args.beta * (kl * ratio if args.use_bias_correction_kl else kl)
    maskf = mask.float()
    accumulation = trainer.current_gradient_accumulation_steps
    if args.loss_type == "grpo":
        loss = ((per_token * maskf).sum(1) / maskf.sum(1).clamp(min=1)).mean() / accumulation
    elif args.loss_type == "bnpo":
        loss = (per_token * maskf).sum() / maskf.sum().clamp(min=1) / accumulation
    elif args.loss_type == "dr_grpo":
        loss = (per_token * maskf).sum() / (per_token.shape[0] * args.max_completion_length) / accumulation
    elif args.loss_type == "dapo":
        loss = (per_token * maskf).sum() / (inputs["num_items_in_batch"].clamp(min=1) * accumulation
                                            / args.steps_per_generation)
    else:
        raise NotImplementedError(args.loss_type)
    return loss, {"schedule": schedule, "surrogate": surrogate, "ratio": ratio, "clipped": clipped, "mask": mask,
                  "logps": logps.detach(),
                  "scores": scores, "vision": vision, "hidden_states": out.hidden_states}


def _grads(loss: torch.Tensor, params: list[torch.Tensor], retain: bool) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=retain)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def check_every_loss(trainer: PEPOTrainer) -> list[dict[str, float]]:
    """Make every ``_compute_loss`` call of ``trainer`` check its loss and its gradient against
    :func:`reference_loss` on the same micro-batch and the same weights (before the optimizer step).

    On-policy the loss value is ~0 whatever the token weights (advantages sum to 0 per group and the
    weights to n per response), so the gradient is what tells them apart. Returns a list with one
    record per call: the loss, its reference, the largest gradient difference and the gradient scale.
    """
    original = trainer._compute_loss
    records: list[dict[str, float]] = []

    def checked(model, inputs):
        assert inputs["advantages"].dim() == 1, "the buffered generation batch was modified (weights applied to it)"
        params = [p for p in model.parameters() if p.requires_grad]
        expected, _ = reference_loss(trainer, model, inputs)
        expected_grads = _grads(expected, params, retain=False)
        loss = original(model, inputs)
        grads = _grads(loss, params, retain=True)
        scale = max(g.abs().max().item() for g in expected_grads)
        diff = max((g - e).abs().max().item() for g, e in zip(grads, expected_grads))
        records.append({"loss": loss.item(), "expected": expected.item(), "grad_diff": diff, "grad_scale": scale})
        torch.testing.assert_close(loss.detach(), expected.detach(), atol=1e-6, rtol=1e-4)
        assert diff <= 1e-4 * scale, f"gradient differs from the reference by {diff:.3g} (scale {scale:.3g})"
        return loss

    trainer._compute_loss = checked
    return records


def assert_trains(trainer: PEPOTrainer) -> None:
    """Train; every micro-batch's loss and gradient equal the independently computed ones; the weights moved."""
    records = check_every_loss(trainer)
    before = snapshot(trainer.model)
    trainer.train()
    after = snapshot(trainer.model)
    assert len(records) == trainer.args.max_steps * trainer.args.gradient_accumulation_steps, records
    assert all(r["grad_scale"] > 0 for r in records), "a zero gradient tests nothing"
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
        # 4 steps: each generation batch trains twice, the second batch first at p = 0.5 (at p = 0 the schedule is 1,
        # so weights applied twice to the reused batch would go unseen)
        {"num_iterations": 2, "max_steps": 4},
        {"beta": 0.04, "num_iterations": 2, "max_steps": 4, "loss_type": "dapo", "gradient_checkpointing": True},
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
    # The scores pool the tokens of both images: equal to the similarity over both, not over the first alone.
    inputs = _prepared_batch(trainer, progress=0.5)
    trainer.compute_loss(trainer.model, inputs)
    with torch.no_grad():
        _, parts = reference_loss(trainer, trainer.model, inputs)
    vision = parts["vision"]
    starts = vision & ~torch.nn.functional.pad(vision[:, :-1], (1, 0))  # first token of each image's run
    run = torch.cumsum(starts.long(), dim=1)
    assert run.amax(dim=1).tolist() == [2] * vision.shape[0]  # two separate images in every prompt
    first_only = vision & (run == 1)
    assert 0 < first_only.sum() < vision.sum()
    from pepo.weights import visual_similarity

    C = inputs["completion_ids"].shape[1]
    captured = trainer.last_token_stats["scores"]
    torch.testing.assert_close(captured, visual_similarity(parts["hidden_states"], vision, C), atol=1e-5, rtol=1e-5)
    first = visual_similarity(parts["hidden_states"], first_only, C)
    assert (captured - first).abs().max() > 1e-3


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


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo"])
def test_loss_is_schedule_times_clipped_surrogate_plus_unweighted_kl(tiny_vlm, tmp_path, loss_type):
    """Off-policy (ratios outside the clip range both ways), beta > 0: the loss TRL computes with PEPO's (B, T)
    advantages equals  aggregate(s_t * -min(r A, clip(r) A) + beta * KL_t)  with the KL not weighted."""
    trainer = make_trainer(tiny_vlm, tmp_path, gate_alpha=0.5, gate_temperature=0.5, loss_type=loss_type, beta=0.1)
    inputs = _prepared_batch(trainer, progress=0.6)
    with torch.no_grad():
        _, on_policy = reference_loss(trainer, trainer.model, inputs)
    logps = on_policy["logps"]
    shift = torch.tensor([0.5, -0.5, 0.05, -0.3])  # ratios e^-0.5 = 0.61, e^0.5 = 1.65, 0.95, 1.35
    shift = shift.repeat(logps.numel() // 4 + 1)[: logps.numel()].view_as(logps)
    inputs["old_per_token_logps"] = logps + shift  # r = exp(logp - old) = exp(-shift)
    # A KL that is large where the schedule is above 1, so that weighting it too would show in the loss.
    inputs["ref_per_token_logps"] = logps + 0.8 * (on_policy["schedule"] > 1).float()

    params = [p for p in trainer.model.parameters() if p.requires_grad]
    loss = trainer.compute_loss(trainer.model, inputs)
    grads = _grads(loss, params, retain=False)
    expected, parts = reference_loss(trainer, trainer.model, inputs)
    expected_grads = _grads(expected, params, retain=True)
    torch.testing.assert_close(loss.detach(), expected.detach(), atol=1e-6, rtol=1e-5)
    scale = max(g.abs().max().item() for g in expected_grads)
    assert max((g - e).abs().max().item() for g, e in zip(grads, expected_grads)) <= 1e-4 * scale

    # The premises hold: clipping is active on both sides, the KL term is not zero, the schedule is not flat.
    mask, ratio, clipped = parts["mask"], parts["ratio"].detach(), parts["clipped"].detach()
    advantages = inputs["advantages"].unsqueeze(1).expand_as(ratio)
    active = (ratio != clipped) & mask & (clipped * advantages < ratio * advantages)
    assert active[ratio > 1].any() and active[ratio < 1].any()
    assert parts["schedule"][mask].std() > 0.05
    # ... and the alternatives are told apart from the loss itself: weights on the KL too, weights left out,
    # no clipping.
    maskf = mask.float()
    denominator = {"grpo": None, "bnpo": maskf.sum(), "dapo": inputs["num_items_in_batch"]}[loss_type]

    def aggregate(per_token):
        if denominator is None:
            return ((per_token * maskf).sum(1) / maskf.sum(1)).mean()
        return (per_token * maskf).sum() / denominator

    with torch.no_grad():
        kl_part = expected.detach() - aggregate(parts["schedule"] * parts["surrogate"])
        assert kl_part.abs() > 1e-4
        delta = inputs["ref_per_token_logps"] - logps
        kl = 0.1 * (torch.exp(delta) - delta - 1) * ratio
        torch.testing.assert_close(kl_part, aggregate(kl), atol=1e-6, rtol=1e-5)  # the KL term is unweighted
        unclipped = -ratio * advantages
        for wrong in (aggregate(parts["schedule"] * (parts["surrogate"] + kl)),  # schedule on the KL as well
                      aggregate(parts["surrogate"] + kl),  # no token weights
                      aggregate(parts["schedule"] * unclipped + kl)):  # no clipping
            assert (wrong - loss.detach()).abs() > 1e-4


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
