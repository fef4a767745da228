"""PEPOTrainer wraps three private TRL methods. If TRL changes them, these tests say so first."""

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
    own = {
        name for name, value in vars(pepo.trainer.PEPOTrainer).items()
        if callable(value) and name.startswith("_") and not name.startswith("__") and hasattr(GRPOTrainer, name)
    }
    assert own == {"_compute_loss", "_get_per_token_logps_and_entropies", "_generate_and_score_completions",
                   # resume (pepo.resume): state saved with, weights loaded from, and data order of a checkpoint
                   "_save_checkpoint", "_load_from_checkpoint", "_get_train_sampler"}


def test_trainer_state_that_resume_saves_and_restores():
    """PEPOTrainer's resume state names TRL / Trainer attributes; fail loudly if they are renamed."""
    import transformers

    loop = inspect.getsource(transformers.Trainer._inner_training_loop)
    assert "self._tr_loss = torch.tensor(0.0" in loop and "self._globalstep_last_logged = self.state.global_step" in loop
    prepare = inspect.getsource(GRPOTrainer._prepare_inputs)
    assert "self._step % generate_every == 0 or self._buffered_inputs is None" in prepare
    assert "self._buffered_inputs[self._step % self.args.steps_per_generation]" in prepare


def test_generation_output_contract_for_dynamic_sampling():
    """Dynamic sampling reads advantages from TRL's output and re-derives num_items_in_batch like TRL does."""
    assert list(inspect.signature(GRPOTrainer._generate_and_score_completions).parameters) == ["self", "inputs"]
    source = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    assert "num_items_in_batch = self.accelerator.gather(loss_mask.sum()).sum()" in source
    assert '"advantages": advantages,' in source
    assert "advantages = rewards - mean_grouped_rewards" in source  # zero advantages <=> equal rewards in a group
