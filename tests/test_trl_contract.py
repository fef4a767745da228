"""PEPOTrainer wraps four private TRL methods. If TRL changes them, these tests say so first."""

from __future__ import annotations

import inspect

import trl
from packaging.version import Version
from trl import GRPOTrainer

import pepo.trainer


def test_trl_version_is_in_the_tested_range():
    assert Version("1.16") <= Version(trl.__version__) < Version("1.17"), (
        f"PEPOTrainer is tested against TRL 1.16.x, found {trl.__version__}: rerun tests/test_trainer.py and "
        "update the pin in pyproject.toml."
    )


def test_compute_loss_signature_and_token_level_advantages():
    assert list(inspect.signature(GRPOTrainer._compute_loss).parameters) == ["self", "model", "inputs"]
    source = inspect.getsource(GRPOTrainer._compute_loss)
    # PEPO hands TRL (B, T) advantages; TRL must keep them as they are (it only unsqueezes 1-D ones) ...
    assert "if advantages.dim() == 1:" in source
    # ... read them from `inputs` after the policy forward, which is where PEPO writes them ...
    forward = source.index("self._get_per_token_logps_and_entropies(")
    assert forward < source.index('advantages = inputs["advantages"]')
    # ... and compute the policy forward with entropies (the exploration signal).
    assert "compute_entropy=True" in source[forward : forward + 400]


def test_logps_and_entropies_signature():
    params = list(inspect.signature(GRPOTrainer._get_per_token_logps_and_entropies).parameters)
    assert params[:7] == [
        "self", "model", "input_ids", "attention_mask", "logits_to_keep", "batch_size", "compute_entropy"
    ]
    source = inspect.getsource(GRPOTrainer._get_per_token_logps_and_entropies)
    assert "fused_lm_head=True" in source  # entropies at the sampling temperature, per completion token


def test_pepo_overrides_only_these_private_methods():
    from pepo.perception_trainer import PerceptionMixin

    def own(cls: type) -> set[str]:
        return {name for name, value in vars(cls).items()
                if callable(value) and name.startswith("_") and not name.startswith("__") and hasattr(GRPOTrainer, name)}

    # method weighting and dynamic sampling; resume (pepo.resume): checkpoint save/load and the epoch sampler
    assert own(pepo.trainer.PEPOTrainer) == {
        "_compute_loss", "_get_per_token_logps_and_entropies", "_generate_and_score_completions", "_calculate_rewards",
        "_get_train_sampler", "_load_from_checkpoint", "_save_checkpoint"}
    # methods with a masked forward (PAPO / VPPO): mask seeds at generation; their loss terms are the registry's hooks
    assert own(PerceptionMixin) == {"_generate_and_score_completions"}


def test_trainer_state_that_resume_saves_and_restores():
    """PEPOTrainer's resume state names TRL / Trainer attributes; fail loudly if they are renamed."""
    import transformers

    loop = inspect.getsource(transformers.Trainer._inner_training_loop)
    assert "self._tr_loss = torch.tensor(0.0" in loop and "self._globalstep_last_logged = self.state.global_step" in loop
    prepare = inspect.getsource(GRPOTrainer._prepare_inputs)
    assert "self._step % generate_every == 0 or self._buffered_inputs is None" in prepare
    assert "self._buffered_inputs[self._step % self.args.steps_per_generation]" in prepare


def test_generation_output_contract_for_dynamic_sampling():
    """Dynamic sampling reads each completion's rewards from ``_calculate_rewards`` (gathered over processes), sums
    them the way TRL does, takes this process's slice the way TRL does, and re-derives num_items_in_batch like TRL."""
    assert list(inspect.signature(GRPOTrainer._generate_and_score_completions).parameters) == ["self", "inputs"]
    assert list(inspect.signature(GRPOTrainer._calculate_rewards).parameters) == [
        "self", "inputs", "prompts", "completions", "completion_ids_list"
    ]
    assert "rewards_per_func = gather(rewards_per_func)" in inspect.getsource(GRPOTrainer._calculate_rewards)
    source = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    assert source.count("self._calculate_rewards(") == 1  # one call per generation round
    assert "rewards_per_func = self._calculate_rewards(inputs, prompts, completions, completion_ids_list)" in source
    # pepo.dynamic_sampling.total_rewards is this sum, with unscorable rows NaN ...
    assert "rewards = (rewards_per_func * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)" in source
    assert "rewards[unscorable_mask] = torch.nan" in source
    # ... and PEPOTrainer._local_rewards takes this slice of it.
    assert "self.accelerator.process_index * len(prompts)," in source
    assert "num_items_in_batch = self.accelerator.gather(loss_mask.sum()).sum()" in source
    assert '"advantages": advantages,' in source
