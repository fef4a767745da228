"""No sampled completion may contain an image/video token: pepo bans them for transformers and vLLM sampling."""

from __future__ import annotations

import pytest
import torch

from pepo.models.special_tokens import ban_multimodal_tokens, multimodal_token_ids
from pepo.models.tiny import QWEN_SPECIAL_TOKENS
from pepo.trainer import PEPOTrainer
from tests.conftest import make_rl_rows
from tests.test_trainer import make_config, varied_reward

QWEN_MM = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def test_qwen_multimodal_tokens_are_exactly_the_vision_tokens(tiny_vlm):
    model, processor = tiny_vlm
    ids = multimodal_token_ids(model, processor)
    assert ids == sorted(QWEN_SPECIAL_TOKENS.index(t) for t in QWEN_MM) == [3, 4, 5, 6]
    assert processor.tokenizer.eos_token_id not in ids and processor.tokenizer.pad_token_id not in ids


@pytest.mark.parametrize("family", ["internvl", "gemma3", "idefics3"])
def test_other_families_ban_their_image_tokens(family):
    from pepo.models.tiny import build_tiny_model, train_tiny_tokenizer

    model, processor = build_tiny_model(family, train_tiny_tokenizer(family=family))
    tok = processor.tokenizer
    names = {tok.convert_ids_to_tokens(i) for i in multimodal_token_ids(model, processor)}
    image = tok.convert_ids_to_tokens(model.config.image_token_id if hasattr(model.config, "image_token_id")
                                      else model.config.image_token_index)
    assert image in names, (family, names)
    assert tok.eos_token not in names


def test_ban_kwargs_union_with_the_users():
    assert ban_multimodal_tokens({"suppress_tokens": [9], "top_k": 3}, [5, 6], use_vllm=False) == {
        "suppress_tokens": [5, 6, 9], "top_k": 3}
    assert ban_multimodal_tokens({"logit_bias": {9: 2.0}}, [5, 6], use_vllm=True) == {
        "logit_bias": {9: 2.0, 5: -100.0, 6: -100.0}}
    assert ban_multimodal_tokens(None, [], use_vllm=True) == {}


def test_training_never_samples_an_image_token_even_when_the_model_prefers_it(tiny_vlm, tmp_path):
    """The model is pushed to emit <|image_pad|> / <|video_pad|> / <|vision_start|> (+30 on their logits, i.e.
    nearly always chosen): without the ban the second step's training forward would see completions with image
    tokens and no features for them. With it, every completion is free of them and training runs."""
    model, processor = tiny_vlm
    pushed = [3, 5, 6]
    model.lm_head.register_forward_hook(lambda m, i, out: out.index_add(
        -1, torch.tensor(pushed), torch.full((*out.shape[:-1], len(pushed)), 30.0, dtype=out.dtype)))
    trainer = PEPOTrainer(model=model, reward_funcs=varied_reward, args=make_config(tmp_path, method="grpo"),
                          train_dataset=make_rl_rows(8), processing_class=processor)
    assert trainer.generation_config.suppress_tokens == [3, 4, 5, 6]
    seen = []
    generate = trainer._generate_and_score_completions

    def recording(inputs):
        out = generate(inputs)
        seen.append(out["completion_ids"])
        return out

    trainer._generate_and_score_completions = recording
    trainer.train()
    ids = torch.cat([c.flatten() for c in seen])
    assert ids.numel() > 0 and not torch.isin(ids, torch.tensor([3, 4, 5, 6])).any()
