"""``pepo.resume.model_fingerprint`` ignores what the Trainer itself rewrites in a model's config.

Found on a colocate-vLLM run of a saved tiny checkpoint whose config has no eos/pad ids (tests/vllm_engine/
test_cli_colocate.py): ``Trainer.__init__`` sets ``use_cache`` and ``Trainer.train`` aligns bos/eos/pad ids with the
tokenizer's after the resume check but before any checkpoint is saved, so the resumed run's fingerprint never
matched its own checkpoints and `--resume_from_checkpoint auto` refused to continue ("saved with model ...").
"""

from __future__ import annotations

from pepo.resume import model_fingerprint


def test_fingerprint_ignores_trainer_rewritten_keys(tiny_tokenizer):
    from pepo.models.tiny import build_tiny_qwen2_5_vl

    model, processor = build_tiny_qwen2_5_vl(tiny_tokenizer, seed=0)
    model.config.eos_token_id = model.config.pad_token_id = model.config.bos_token_id = None
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = None
    before = model_fingerprint(model)
    model.config.use_cache = False  # what Trainer.__init__ does
    # what transformers' align_special_tokens does inside Trainer.train (5.17), after a resume's check
    tok = processor.tokenizer
    model.config.eos_token_id, model.config.pad_token_id = tok.eos_token_id, tok.pad_token_id
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = [tok.eos_token_id], tok.pad_token_id
    assert model_fingerprint(model) == before
    other, _ = build_tiny_qwen2_5_vl(tiny_tokenizer, seed=0)
    other.config.text_config.num_hidden_layers += 1  # the architecture still counts
    assert model_fingerprint(other) != before
