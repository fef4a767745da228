"""Tiny real-architecture VLMs (pepo.models.tiny) and the shared loader (pepo.models.loading). CPU, offline."""

from __future__ import annotations

import json
import types

import pytest
import torch
from PIL import Image

from pepo.models.loading import image_token_id, load_model_and_processor, without_video_processor
from pepo.models.tiny import (
    QWEN_SPECIAL_TOKENS,
    REASONING_TOKENS,
    SUPPORTED_FAMILIES,
    TinyVLMSpec,
    build_tiny_model,
    build_tiny_qwen2_5_vl,
    count_parameters,
    save_tiny,
    train_tiny_tokenizer,
)

QUESTION = "how many red shapes ?"
PROMPT = [{"role": "user", "content": [{"type": "text", "text": QUESTION}, {"type": "image"}]}]
SPEC = TinyVLMSpec()


@pytest.fixture(scope="module")
def tokenizer():
    return train_tiny_tokenizer([QUESTION, "<think>three</think><answer>3</answer>", "count the blue circles ."])


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return build_tiny_qwen2_5_vl(tokenizer, SPEC, seed=0)


@pytest.fixture(scope="module")
def batch(tiny):
    _, processor = tiny
    text = processor.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    image = Image.new("RGB", (SPEC.image_size, SPEC.image_size), "red")
    return processor(text=[text], images=[image], return_tensors="pt")


# ----------------------------------------------------------------------------------------------- tokenizer


def test_special_and_reasoning_tokens_are_single_ids(tokenizer):
    for tok in QWEN_SPECIAL_TOKENS + REASONING_TOKENS:
        ids = tokenizer.encode(tok, add_special_tokens=False)
        assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == tok, tok
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.padding_side == "left"
    # special tokens are dropped by skip_special_tokens, the reasoning tags are kept
    ids = tokenizer.encode("<|im_start|><think>a</think><answer>3</answer><|im_end|>", add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<think>a</think><answer>3</answer>"


def test_round_trip(tokenizer):
    for text in (QUESTION, "Ünïcode ✓ and  two spaces\n", "<answer>42</answer> ?"):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text


def test_chat_template(tokenizer):
    two_images = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}, {"type": "image"}]},
        {"role": "assistant", "content": "<answer>3</answer>"},
    ]
    text = tokenizer.apply_chat_template(two_images, tokenize=False)
    assert text.count("<|image_pad|>") == 2
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 2
    assert text.startswith("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("<|im_start|>assistant\n<answer>3</answer><|im_end|>\n")
    prompt = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    assert prompt.count("<|image_pad|>") == 1
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")


# ------------------------------------------------------------------------------------- processor + model


def test_processor_expands_image_tokens(tiny, batch):
    model, processor = tiny
    assert SPEC.image_tokens == 16
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 16
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8]]
    patch_dim = 3 * SPEC.temporal_patch_size * SPEC.patch_size**2
    assert tuple(batch["pixel_values"].shape) == (64, patch_dim)
    # any square image is resized to image_size x image_size -> same token count (300 and 30 are sizes
    # that min_pixels == max_pixels == 112**2 would get wrong through smart_resize's float rounding)
    text = processor.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    for side in (30, 111, 113, 224, 300):
        other = processor(text=[text], images=[Image.new("RGB", (side, side), "blue")], return_tensors="pt")
        assert other["image_grid_thw"].tolist() == [[1, 8, 8]], side
        assert int((other["input_ids"] == model.config.image_token_id).sum()) == 16


def test_forward_hidden_states_and_size(tiny, batch):
    model, _ = tiny
    n = count_parameters(model)
    assert 300_000 <= n <= 1_000_000, n
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    assert out.logits.shape == (1, batch["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert len(out.hidden_states) == SPEC.num_layers + 1
    assert torch.isfinite(out.logits).all()
    gen = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert batch["input_ids"].shape[1] < gen.shape[1] <= batch["input_ids"].shape[1] + 3


def test_seeded_init(tokenizer, tiny):
    model, _ = tiny
    same, _ = build_tiny_qwen2_5_vl(tokenizer, SPEC, seed=0)
    other, _ = build_tiny_qwen2_5_vl(tokenizer, SPEC, seed=1)
    sd, sd_same, sd_other = model.state_dict(), same.state_dict(), other.state_dict()
    assert all(torch.equal(sd[k], sd_same[k]) for k in sd)
    assert not all(torch.equal(sd[k], sd_other[k]) for k in sd)


def test_config_token_ids_match_tokenizer(tokenizer, tiny):
    model, _ = tiny
    cfg = model.config
    assert cfg.text_config.vocab_size == len(tokenizer)
    assert cfg.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert cfg.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert cfg.vision_end_token_id == tokenizer.convert_tokens_to_ids("<|vision_end|>")


def test_save_load_round_trip(tmp_path, tiny, batch):
    model, processor = tiny
    save_tiny(model, processor, tmp_path / "tiny")
    saved = json.loads((tmp_path / "tiny" / "processor_config.json").read_text())
    assert saved["processor_class"] == "Qwen2_5_VLProcessor"  # a stock checkpoint, loadable by AutoProcessor

    model2, processor2 = load_model_and_processor(str(tmp_path / "tiny"))
    assert type(model2) is type(model)
    assert isinstance(processor2, type(processor).__mro__[1])  # Qwen2_5_VLProcessor (image-only if no torchvision)
    assert processor2.tokenizer.padding_side == "left"
    text = processor2.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    batch2 = processor2(text=[text], images=[Image.new("RGB", (112, 112), "red")], return_tensors="pt")
    assert torch.equal(batch2["input_ids"], batch["input_ids"])
    assert torch.equal(batch2["pixel_values"], batch["pixel_values"])
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, model2(**batch2).logits)


def test_load_errors(tmp_path):
    missing = str(tmp_path / "does-not-exist")
    with pytest.raises(OSError, match="does-not-exist"):
        load_model_and_processor(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OSError, match="empty"):
        load_model_and_processor(str(empty))
    with pytest.raises(ValueError, match="torch_dtype"):
        load_model_and_processor(str(empty), torch_dtype="float99")


def test_without_video_processor_is_noop_for_image_only_classes():
    from transformers import Qwen2_5_VLProcessor

    cls = without_video_processor(Qwen2_5_VLProcessor)
    assert cls is without_video_processor(Qwen2_5_VLProcessor)  # cached
    assert "video_processor" not in cls.get_attributes()
    assert without_video_processor(cls) is cls


def test_image_only_processor_pickles(tiny, batch):
    import pickle

    _, processor = tiny
    clone = pickle.loads(pickle.dumps(processor))
    assert type(clone) is type(processor)
    text = clone.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    again = clone(text=[text], images=[Image.new("RGB", (112, 112), "red")], return_tensors="pt")
    assert torch.equal(again["input_ids"], batch["input_ids"])


def test_image_only_processor_rejects_videos(tiny):
    _, processor = tiny
    if hasattr(processor, "video_processor"):
        pytest.skip("stock processor with a video processor (torchvision installed)")
    frames = [Image.new("RGB", (112, 112))] * 2
    with pytest.raises(NotImplementedError, match="torchvision"):
        processor(text=["<|vision_start|><|video_pad|><|vision_end|>"], videos=[frames])


# ----------------------------------------------------------------------------------------- image_token_id


def test_image_token_id(tokenizer, tiny):
    model, processor = tiny
    expected = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert image_token_id(model, processor) == expected
    assert image_token_id(model.config, processor) == expected
    assert image_token_id(types.SimpleNamespace(), processor) == expected  # from processor.image_token
    assert image_token_id(types.SimpleNamespace(), processor, image_token="<|image_pad|>") == expected
    with pytest.raises(ValueError, match="image_token"):
        image_token_id(model, processor, image_token="<answer>x")


def test_image_token_id_missing_raises(tiny):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model, _ = tiny
    bare = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate("abc")}, merges=[]))
    bare.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    text_only = PreTrainedTokenizerFast(tokenizer_object=bare)
    text_only.add_special_tokens({"pad_token": "<pad>"})
    for cfg in (model.config, types.SimpleNamespace()):
        with pytest.raises(ValueError, match="image_token") as err:
            image_token_id(cfg, text_only)
        assert "image_token_id" in str(err.value)


# ------------------------------------------------------------------------------------------- other families


def test_qwen2_vl_family(tokenizer, batch):
    model, processor = build_tiny_model("qwen2_vl", tokenizer, SPEC, seed=0)
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert 300_000 <= count_parameters(model) <= 1_000_000
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    assert len(out.hidden_states) == SPEC.num_layers + 1
    assert image_token_id(model, processor) == model.config.image_token_id


def test_unsupported_family_lists_supported(tokenizer):
    with pytest.raises(NotImplementedError) as err:
        build_tiny_model("paligemma", tokenizer)
    for family in SUPPORTED_FAMILIES:
        assert family in str(err.value)
    assert set(SUPPORTED_FAMILIES) >= {"qwen2_5_vl", "qwen2_vl"}
