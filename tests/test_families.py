"""Tiny models of more VLM families (pepo.models.tiny): processors, hidden-state hooks and PEPO training.

Every family here is built offline (tokenizer trained in code, random weights) and must:

* expand each 112x112 image into its documented number of image tokens, with the chat template rendering
  the question text, then the image, then the generation prompt;
* give hook scores (:class:`pepo.hooks.VisualScoreCapture`) equal to ``pepo.weights.visual_similarity`` of
  ``output_hidden_states=True``: the hooks find the family's text decoder and its L+1 hidden states are
  (input of every decoder layer, output of the final norm);
* train for two PEPO steps through TRL's GRPOTrainer with every row's image tokens found.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from PIL import Image

from pepo.eval.generation import encode_prompts
from pepo.hooks import VisualScoreCapture, find_text_decoder
from pepo.models.loading import image_token_id, load_model_and_processor
from pepo.models.tiny import (
    SUPPORTED_FAMILIES,
    TinyVLMSpec,
    build_tiny_model,
    count_parameters,
    save_tiny,
    tokenizer_layout,
    train_tiny_tokenizer,
)
from pepo.trainer import PEPOTrainer
from pepo.weights import visual_similarity
from tests.conftest import make_rl_rows
from tests.test_trainer import make_config, snapshot, varied_reward

SPEC = TinyVLMSpec()
#: family -> (model class, image tokens per 112x112 image, per 300x300 image)
FAMILIES = {
    "internvl": ("InternVLForConditionalGeneration", 16, 16),
    "idefics3": ("Idefics3ForConditionalGeneration", 16, 16),
    "smolvlm": ("SmolVLMForConditionalGeneration", 16, 16),
    "gemma3": ("Gemma3ForConditionalGeneration", 16, 16),
    # anyres: 64 base-tile features + the grid's unpadded features + one newline per row. 112x112 -> 1x1 grid:
    # 64 + 64 + 8; 300x300 -> 2x2 grid (224x224): 64 + 256 + 16.
    "llava_onevision": ("LlavaOnevisionForConditionalGeneration", 136, 336),
}
QUESTION = "how many red shapes ?"
PROMPT = [{"role": "user", "content": [{"type": "text", "text": QUESTION}, {"type": "image"}]}]


def _needs(family: str):
    """SmolVLMProcessor refuses to start without `num2words` (a transformers requirement, not pepo's)."""
    if family == "smolvlm" and importlib.util.find_spec("num2words") is None:
        return pytest.mark.skip(reason="smolvlm needs `pip install num2words` (transformers' SmolVLMProcessor)")
    return ()


PARAMS = [pytest.param(f, marks=_needs(f), id=f) for f in FAMILIES]


@pytest.fixture(scope="module")
def tokenizers():
    from pepo.data.synthetic import text_corpus

    corpus = text_corpus() + ["<answer>3</answer>", "<answer>yes</answer>"]
    cache: dict[str, object] = {}

    def get(family: str):
        if family not in cache:
            cache[family] = train_tiny_tokenizer(corpus, family=family)
        return cache[family]

    return get


@pytest.fixture()
def tiny(request, tokenizers):
    family = request.param
    model, processor = build_tiny_model(family, tokenizers(family), SPEC, seed=0)
    return family, model, processor


def _rows_batch(processor, rows, completions):
    batch = encode_prompts(processor, rows["prompt"], rows["images"], completions)
    batch.pop("prompt_lengths")
    return batch


def test_all_families_are_supported():
    assert set(FAMILIES) | {"qwen2_5_vl", "qwen2_vl"} == set(SUPPORTED_FAMILIES)


@pytest.mark.parametrize("tiny", PARAMS, indirect=True)
def test_family_model_processor_and_template(tiny, tokenizers):
    family, model, processor = tiny
    cls_name, n_image_tokens, n_large = FAMILIES[family]
    assert type(model).__name__ == cls_name
    assert 250_000 <= count_parameters(model) <= 1_500_000, count_parameters(model)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # initializer_range of the spec reaches the text embeddings
    assert abs(model.get_input_embeddings().weight.std().item() - SPEC.initializer_range) < 0.01

    layout = tokenizer_layout(family)
    text = processor.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    no_prompt = processor.apply_chat_template(PROMPT, add_generation_prompt=False, tokenize=False)
    # question, then the image placeholder (the processor's text placeholder), then the generation prompt
    placeholder = processor.image_token
    assert text.count(placeholder) == 1 and text.index(QUESTION) < text.index(placeholder)
    assert text.startswith(no_prompt) and len(text) > len(no_prompt)

    image_id = image_token_id(model, processor)
    assert image_id == tokenizers(family).convert_tokens_to_ids(layout.image_token)
    for side, expected in ((300, n_large), (30, n_image_tokens), (112, n_image_tokens)):
        batch = processor(text=[text], images=[Image.new("RGB", (side, side), "red")], return_tensors="pt")
        assert int((batch["input_ids"] == image_id).sum()) == expected, side
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    assert len(out.hidden_states) == SPEC.num_layers + 1
    assert torch.isfinite(out.logits).all()
    gen = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert batch["input_ids"].shape[1] < gen.shape[1] <= batch["input_ids"].shape[1] + 3


@pytest.mark.parametrize("tiny", PARAMS, indirect=True)
def test_family_hook_scores_equal_output_hidden_states(tiny):
    family, model, processor = tiny
    rows = make_rl_rows(3)
    batch = _rows_batch(processor, rows, ["<answer>1</answer>", "<answer>22</answer> ok", "no"])
    vision_mask = batch["input_ids"] == image_token_id(model, processor)
    assert vision_mask.sum(1).tolist() == [FAMILIES[family][1]] * 3
    layers, _ = find_text_decoder(model)
    assert len(layers) == SPEC.num_layers
    completion_length = 6
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states
    for score_type in ("cosine", "dot", "l2"):
        reference = visual_similarity(hidden, vision_mask, completion_length, score_type)
        capture = VisualScoreCapture(model, score_type)
        with torch.no_grad(), capture.record(vision_mask, completion_length):
            model(**batch)
        assert capture.num_hidden_states == len(hidden)
        torch.testing.assert_close(capture.scores, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tiny", PARAMS, indirect=True)
def test_family_trains_with_pepo(tiny, tmp_path):
    family, model, processor = tiny
    trainer = PEPOTrainer(
        model=model, reward_funcs=varied_reward, args=make_config(tmp_path, save_strategy="steps", save_steps=2),
        train_dataset=make_rl_rows(8), processing_class=processor,
    )
    image_tokens_per_row: list[int] = []
    apply = trainer._apply_token_weights

    def spy(inputs, vision_mask, *args, **kwargs):
        image_tokens_per_row.extend(vision_mask.sum(1).tolist())
        return apply(inputs, vision_mask, *args, **kwargs)

    trainer._apply_token_weights = spy
    before = snapshot(trainer.model)
    trainer.train()
    after = snapshot(trainer.model)
    assert [n for n in before if not torch.equal(before[n], after[n])], "no parameter changed"
    # 2 steps x 8 rows, each with one image's tokens found in the training forward
    assert image_tokens_per_row == [FAMILIES[family][1]] * 16
    records = trainer.state.log_history
    logged = {k for record in records for k in record}
    assert {"pepo/vs_mean", "pepo/entropy_mean", "pepo/uniform_fallback_rows"} <= logged
    assert [r["pepo/uniform_fallback_rows"] for r in records if "pepo/uniform_fallback_rows" in r] == [0.0, 0.0]
    assert all(torch.isfinite(torch.tensor(r["pepo/vs_mean"])) for r in records if "pepo/vs_mean" in r)
    # the folders training writes carry the family's processor files: Trainer's checkpoint-N, and the final
    # model as run.py saves it (trainer.save_model, then processor.save_pretrained)
    check_processor_folder(family, tmp_path / "out" / "checkpoint-2", processor)
    trainer.save_model(str(tmp_path / "final"))
    processor.save_pretrained(str(tmp_path / "final"))
    check_processor_folder(family, tmp_path / "final", processor)


@pytest.mark.parametrize("tiny", PARAMS, indirect=True)
def test_family_save_load_round_trip(tiny, tmp_path):
    family, model, processor = tiny
    save_tiny(model, processor, tmp_path / family)
    model2, processor2 = load_model_and_processor(str(tmp_path / family))
    assert type(model2) is type(model)
    rows = make_rl_rows(2)
    batch, batch2 = (_rows_batch(p, rows, ["<answer>3</answer>", "x"]) for p in (processor, processor2))
    assert batch.keys() == batch2.keys()
    assert all(torch.equal(batch[k], batch2[k]) for k in batch)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, model2(**batch2).logits)


def test_family_tokenizer_mismatch_is_explained(tokenizers):
    with pytest.raises(ValueError, match="family='internvl'"):
        build_tiny_model("internvl", tokenizers("gemma3"))


def test_image_token_id_accepts_gemma3_placeholder_but_not_a_real_mismatch(tokenizers):
    import types

    tokenizer = tokenizers("gemma3")
    _, processor = build_tiny_model("gemma3", tokenizer, SPEC, seed=0)
    soft, eoi = (tokenizer.convert_tokens_to_ids(t) for t in ("<image_soft_token>", "<end_of_image>"))
    # the processor's text placeholder is <start_of_image>; the model replaces <image_soft_token>
    assert processor.image_token == "<start_of_image>" and tokenizer.image_token == "<image_soft_token>"
    assert image_token_id(types.SimpleNamespace(image_token_id=soft), processor) == soft
    with pytest.raises(ValueError, match="mismatch"):
        image_token_id(types.SimpleNamespace(image_token_id=eoi), processor)


#: family -> transformers' video-processor class for its processor (None: the processor declares none). Hub
#: checkpoints of these families carry it as video_preprocessor_config.json ("video_processor_type").
VIDEO_CLASSES = {
    "qwen2_5_vl": "Qwen2VLVideoProcessor", "qwen2_vl": "Qwen2VLVideoProcessor", "internvl": "InternVLVideoProcessor",
    "smolvlm": "SmolVLMVideoProcessor", "llava_onevision": "LlavaOnevisionVideoProcessor",
    "idefics3": None, "gemma3": None,
}
#: what every saved processor folder holds (transformers 5.x nests the image processor in processor_config.json)
PROCESSOR_FILES = {"processor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
#: video classes that transformers lets us import without torchvision (their module does not import it)
VIDEO_IMPORTABLE = {
    "SmolVLMVideoProcessor": "transformers.models.smolvlm.video_processing_smolvlm",
    "LlavaOnevisionVideoProcessor": "transformers.models.llava_onevision.video_processing_llava_onevision",
}


def check_processor_folder(family: str, folder, processor) -> None:
    """A folder pepo saved loads like a hub checkpoint of ``family``: the files, pepo's loader, the stock
    ``AutoProcessor`` (or, without torchvision, how far it gets), and the video config's settings."""
    import importlib
    import json

    from transformers import AutoProcessor

    from pepo.models.loading import load_processor, torchvision_available

    files = {p.name for p in folder.iterdir()}
    video_cls = VIDEO_CLASSES[family]
    assert PROCESSOR_FILES <= files, (family, sorted(files))
    assert ("video_preprocessor_config.json" in files) == (video_cls is not None), (family, sorted(files))
    loaded = load_processor(str(folder))
    assert type(loaded).__name__ == type(processor).__name__
    assert loaded.image_processor.to_dict() == processor.image_processor.to_dict()
    if video_cls is None:
        assert type(AutoProcessor.from_pretrained(str(folder))).__name__ == type(processor).__name__
        return
    config = json.loads((folder / "video_preprocessor_config.json").read_text())
    image = processor.image_processor
    assert config["video_processor_type"] == video_cls and config["processor_class"] == type(processor).__name__
    # frames are processed like the images: same size, resampling, rescaling and normalisation
    assert config["size"] == {k: v for k, v in dict(image.size).items() if v is not None}
    assert (config["resample"], config["rescale_factor"]) == (int(image.resample), image.rescale_factor)
    assert (config["image_mean"], config["image_std"]) == (list(image.image_mean), list(image.image_std))
    if torchvision_available():
        stock = AutoProcessor.from_pretrained(str(folder))
        assert type(stock.video_processor).__name__ == video_cls
        assert dict(stock.video_processor.size) == dict(image.size)
    else:
        # the stock loader finds the file and resolves the family's class; only torchvision is missing
        with pytest.raises(ImportError, match=f"{video_cls} requires the Torchvision"):
            AutoProcessor.from_pretrained(str(folder))
    if video_cls in VIDEO_IMPORTABLE:  # the stock class reads the file back into the same settings
        cls = getattr(importlib.import_module(VIDEO_IMPORTABLE[video_cls]), video_cls)
        video = cls.from_pretrained(str(folder))
        assert set(config) - {"processor_class"} <= set(cls().to_dict()), "a key the stock class does not save"
        assert {k: v for k, v in dict(video.size).items() if v is not None} == config["size"]
        assert (list(video.image_mean), list(video.image_std)) == (config["image_mean"], config["image_std"])
        assert (int(video.resample), video.rescale_factor) == (config["resample"], config["rescale_factor"])
        if "max_image_size" in config:
            assert video.max_image_size == dict(image.max_image_size)


@pytest.mark.parametrize("family", [pytest.param(f, marks=_needs(f), id=f) for f in SUPPORTED_FAMILIES])
def test_saved_folder_has_the_family_processor_files(family, tokenizers, tmp_path):
    model, processor = build_tiny_model(family, tokenizers(family), SPEC, seed=0)
    check_processor_folder(family, save_tiny(model, processor, tmp_path / "tiny"), processor)
    # any save of the processor (warm start, Trainer checkpoints, run.py's final checkpoint) writes the same files
    processor.save_pretrained(tmp_path / "plain")
    check_processor_folder(family, tmp_path / "plain", processor)


@pytest.mark.parametrize("tiny", PARAMS, indirect=True)
def test_family_prompt_length_counts_image_tokens(tiny):
    """pepo.data.prompt_length measures each family's prompt with its image tokens (the table's numbers)."""
    from pepo.data.prompt_length import PromptTooLong, check_prompt_lengths, measure_prompt

    family, model, processor = tiny
    token = image_token_id(model, processor)
    text = processor.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    measured = {}
    for side, expected in ((112, FAMILIES[family][1]), (300, FAMILIES[family][2])):
        image = Image.new("RGB", (side, side), "red")
        measured[side] = measure_prompt(processor, PROMPT, [image], token)
        assert measured[side][1] == expected, side
        assert measured[side][0] == processor(text=[text], images=[[image]], return_tensors="pt")["input_ids"].shape[1]
    rows = [{"id": "small", "prompt": PROMPT, "images": [Image.new("RGB", (112, 112))]},
            {"id": "large", "prompt": PROMPT, "images": [Image.new("RGB", (300, 300))]}]
    (small, _), (large, large_image) = measured[112], measured[300]
    check = dict(context=small + 1, context_name="vllm_max_model_length", completion_length=1)
    if large > small:  # anyres (LLaVA-OneVision): the larger image is more tokens and no longer fits
        with pytest.raises(PromptTooLong, match=f"row 1 \\(id 'large'\\): the prompt is {large} tokens with its "
                                                f"image \\({large_image} image tokens\\)"):
            check_prompt_lengths(processor, rows, token, **check)
    else:  # one tile whatever the size: both fit
        assert check_prompt_lengths(processor, rows, token, **check).longest == small
