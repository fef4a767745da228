"""PAPO and VPPO (pepo.masking, pepo.perception, pepo.perception_trainer) against literal references.

* the masks equal a pixel-by-pixel loop over the blocks, on raw images and on every pixel layout;
* the masked-image log-probabilities of the trainer equal a float64 forward of the model on images
  masked by that loop, and PAPO's / VPPO's per-token quantities equal a float64 loop restatement of
  their formulas;
* with its extra coefficients at zero PAPO's gradient equals GRPO's / DAPO's exactly, and so does
  VPPO's with every token selected and the scaling minimum at 1;
* with masking probability 0 the masked pixels are the original ones and every KL estimate is 0;
* PEPO runs one forward per micro-batch, PAPO and VPPO two.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from PIL import Image

from pepo.masking import block_grid, block_mask_image, block_mask_pixel_values
from pepo.perception import low_var_kl, papo_terms, vppo_advantage_scale, vppo_token_mask
from pepo.trainer import PEPOTrainer
from tests.conftest import make_rl_rows
from tests.test_trainer import _loss_and_grads, _max_diff, _prepared_batch, make_config, make_trainer

# --- literal references ------------------------------------------------------------------------


def loop_block_mask(width: int, height: int, block: int, probability: float, generator) -> list[list[bool]]:
    """[y][x] masked? One draw per block, row-major, blocks tiled from the top-left corner."""
    rows, cols = math.ceil(height / block), math.ceil(width / block)
    draws = torch.rand(rows, cols, generator=generator).tolist()
    return [[draws[y // block][x // block] < probability for x in range(width)] for y in range(height)]


def loop_mask_image(image: Image.Image, block: int, probability: float, generator) -> Image.Image:
    out = image.convert("RGB").copy()
    mask = loop_block_mask(out.width, out.height, block, probability, generator)
    for y in range(out.height):
        for x in range(out.width):
            if mask[y][x]:
                out.putpixel((x, y), (0, 0, 0))
    return out


def loop_low_var_kl(logp: float, logp_masked: float) -> float:
    d = min(20.0, max(-20.0, logp_masked - logp))
    return min(10.0, max(-10.0, math.exp(d) - d - 1.0))


def loop_vppo(dependency: list[list[float]], mask: list[list[bool]], fraction: float, scale_min: float):
    """Per response: selected token positions and the advantage scale (python floats, float64)."""
    selected, means = [], []
    for dep, valid in zip(dependency, mask):
        positions = [t for t, v in enumerate(valid) if v]
        k = math.ceil(Fraction(str(fraction)) * len(positions))
        ranked = sorted(positions, key=lambda t: (-dep[t], t))
        selected.append(set(ranked[:k]))
        means.append(sum(dep[t] for t in positions) / len(positions) if positions else None)
    present = [m for m in means if m is not None]
    lo, hi = min(present), max(present)
    if hi - lo <= 1e-8:
        return selected, [1.0] * len(means)
    s_hat = [None if m is None else (m - lo) / (hi - lo) for m in means]
    average = sum(s for s in s_hat if s is not None) / len(present)
    return selected, [1.0 if s is None else scale_min + s * (1 - scale_min) / average for s in s_hat]


def _untruncated(trainer):
    """The DAPO preset masks truncated completions; with 6-token completions that can be all of them."""
    trainer.mask_truncated_completions = False
    return trainer


def _images():
    from tests.conftest import make_rl_rows

    return [row[0] for row in make_rl_rows(2)["images"]]


# --- masks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size,block,p", [((30, 17), 14, 0.5), ((112, 112), 14, 0.6), ((9, 9), 4, 0.3)])
def test_block_mask_image_equals_pixel_loop(size, block, p):
    image = Image.new("RGB", size, (200, 120, 40))
    got = block_mask_image(image, block, p, torch.Generator().manual_seed(3))
    expected = loop_mask_image(image, block, p, torch.Generator().manual_seed(3))
    assert list(got.getdata()) == list(expected.getdata())
    assert got.size == image.size and image.getpixel((0, 0)) == (200, 120, 40)  # input untouched
    full = block_grid(size[1], size[0], block, 1.0, torch.Generator().manual_seed(0))
    none = block_grid(size[1], size[0], block, 0.0, torch.Generator().manual_seed(0))
    assert full.all() and not none.any()


def _qwen_image_processor():
    from transformers import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 64)


def test_qwen_patch_masking_blackens_exactly_the_drawn_patches():
    """Flattened Qwen patches: block 14 = patch 14, so every patch row is the original's or a black image's,
    in the processor's merge-window order."""
    processor = _qwen_image_processor()
    image = _images()[0].resize((90, 62))
    original = processor(images=[image], return_tensors="pt")
    t, h, w = original["image_grid_thw"][0].tolist()
    black = processor(images=[Image.new("RGB", image.size, (0, 0, 0))], return_tensors="pt")["pixel_values"]
    masked = block_mask_pixel_values([original["pixel_values"]], [torch.Generator().manual_seed(5)], processor, 14,
                                     0.5, "black", [original["image_grid_thw"]])[0]
    drawn = loop_block_mask(w * 14, h * 14, 14, 0.5, torch.Generator().manual_seed(5))
    m = processor.merge_size
    index = 0
    for hb in range(h // m):
        for wb in range(w // m):
            for hm in range(m):
                for wm in range(m):
                    y, x = (hb * m + hm) * 14, (wb * m + wm) * 14
                    source = black if drawn[y][x] else original["pixel_values"]
                    torch.testing.assert_close(masked[index], source[index], atol=1e-6, rtol=0)
                    index += 1
    assert 0 < sum(drawn[y * 14][x * 14] for y in range(h) for x in range(w)) < h * w  # both kinds were checked


def test_chw_pixel_masking_equals_loop_and_skips_padding_images():
    from transformers import Gemma3ImageProcessor

    processor = Gemma3ImageProcessor(size={"height": 28, "width": 28})
    image = _images()[1]
    pixels = processor(images=[image], return_tensors="pt")["pixel_values"]  # (1, 3, 28, 28)
    black = processor(images=[Image.new("RGB", image.size, (0, 0, 0))], return_tensors="pt")["pixel_values"]
    padded = torch.cat([pixels, torch.zeros_like(pixels)])[None]  # one row, (1, 2 images, 3, 28, 28), 2nd = padding
    got = block_mask_pixel_values(padded, [torch.Generator().manual_seed(1)], processor, 8, 0.5)
    drawn = loop_block_mask(28, 28, 8, 0.5, torch.Generator().manual_seed(1))
    for y in range(28):
        for x in range(28):
            expected = black[0, :, y, x] if drawn[y][x] else pixels[0, :, y, x]
            torch.testing.assert_close(got[0, 0, :, y, x], expected, atol=1e-6, rtol=0)
    assert torch.equal(got[0, 1], torch.zeros_like(got[0, 1]))


# --- per-token quantities vs float64 loops --------------------------------------------------------


def _policy_logps(trainer, inputs) -> torch.Tensor:
    """The policy's float32 log-probabilities with the real image, through TRL's forward helper (as training)."""
    from trl import GRPOTrainer

    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    with torch.no_grad():
        logps, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(
            trainer, trainer.model, ids, torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1),
            inputs["completion_ids"].shape[1], pixel_values=inputs["pixel_values"],
            image_grid_thw=inputs["image_grid_thw"], num_images=inputs["num_images"],
            mm_token_type_ids=inputs.get("mm_token_type_ids"))
    return logps


def _reference_logps(trainer, inputs, pixel_values) -> torch.Tensor:
    """float64 log-probabilities of the sampled completion tokens from a plain model forward."""
    prompt, completion = inputs["prompt_ids"], inputs["completion_ids"]
    ids = torch.cat([prompt, completion], 1)
    kwargs = {"image_grid_thw": inputs["image_grid_thw"]}
    if inputs.get("mm_token_type_ids") is not None:
        kwargs["mm_token_type_ids"] = inputs["mm_token_type_ids"]
    with torch.no_grad():
        logits = trainer.model(input_ids=ids, attention_mask=torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1),
                               pixel_values=pixel_values, **kwargs).logits.double()
    logits = logits[:, prompt.shape[1] - 1 : -1]
    return torch.log_softmax(logits, -1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)


def test_papo_quantities_equal_float64_loop(tiny_vlm, tmp_path):
    # two accumulation steps, so that the terms' scaling for accumulation is checked too
    trainer = make_trainer(tiny_vlm, tmp_path, method="papo_g", gradient_accumulation_steps=2)
    inputs = _prepared_batch(trainer, progress=0.0)
    seeds = inputs["perception_seed"].tolist()
    # PAPO: one mask per prompt: rows share a seed exactly when they share prompt and image
    prompts = [(tuple(ids), tuple(im.tobytes() for im in images))
               for ids, images in zip(inputs["prompt_ids"].tolist(), inputs["perception_images"])]
    assert len(set(zip(seeds, prompts))) == len(set(seeds)) == len(set(prompts)) < len(seeds)
    masked_images = [[loop_mask_image(im, 14, 0.6, g) for im in images] for images, g in
                     zip(inputs["perception_images"], [torch.Generator().manual_seed(s) for s in seeds])]
    processed = trainer.processing_class.image_processor(images=masked_images, return_tensors="pt")["pixel_values"]
    ref_masked = _reference_logps(trainer, inputs, processed)
    ref_plain = _reference_logps(trainer, inputs, inputs["pixel_values"])
    masked = trainer._masked_logps(trainer.model, inputs)
    torch.testing.assert_close(masked.double(), ref_masked, atol=2e-5, rtol=0)

    mask = inputs["completion_mask"].bool()
    extra, stats = papo_terms(ref_plain.float(), masked, mask, 0.02, 0.05, 0.07)
    kls, ents, ments = [], [], []
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if mask[b, t]:
                kls.append(loop_low_var_kl(ref_plain[b, t].item(), ref_masked[b, t].item()))
                ents.append(-ref_plain[b, t].item())
                ments.append(-ref_masked[b, t].item())
    kl, ent, ment = (sum(v) / len(v) for v in (kls, ents, ments))
    assert kl > 1e-3, "the masked image must change the distribution for this test to mean anything"
    assert stats["kl"].item() == pytest.approx(kl, abs=1e-4)
    assert extra.item() == pytest.approx(-0.02 * kl + 0.05 * ent + 0.07 * ment, abs=1e-4)

    # The loss TRL returns is GRPO's plus exactly these terms (scaled for accumulation).
    loss_papo = trainer.compute_loss(trainer.model, inputs)
    trainer.args.method = "grpo"
    loss_grpo = trainer.compute_loss(trainer.model, inputs)
    assert trainer.current_gradient_accumulation_steps == 2
    expected = (-0.02 * kl + 0.05 * ent + 0.05 * ment) / 2
    assert (loss_papo - loss_grpo).item() == pytest.approx(expected, abs=1e-4)


def test_vppo_advantages_equal_float64_loop(tiny_vlm, tmp_path):
    trainer = _untruncated(make_trainer(tiny_vlm, tmp_path, method="vppo", vppo_entropy_coef=0.0))
    inputs = _prepared_batch(trainer, progress=0.0)
    seeds = inputs["perception_seed"].tolist()
    assert len(set(seeds)) == len(seeds)  # VPPO: a new mask per rollout
    masked = trainer._masked_logps(trainer.model, inputs).double()
    plain = _reference_logps(trainer, inputs, inputs["pixel_values"])
    mask = inputs["completion_mask"].bool()
    dependency = [[min(10.0, max(0.0, loop_low_var_kl(plain[b, t].item(), masked[b, t].item())))
                   for t in range(mask.shape[1])] for b in range(mask.shape[0])]
    selected, scales = loop_vppo(dependency, mask.tolist(), 0.4, 0.9)
    assert len(set(round(s, 6) for s in scales)) > 2 and any(len(s) < mask[b].sum() for b, s in enumerate(selected))
    got_sel = vppo_token_mask(torch.tensor(dependency), mask, 0.4)
    got_scale = vppo_advantage_scale(torch.tensor(dependency), mask, 0.9)
    assert [set(torch.nonzero(r).flatten().tolist()) for r in got_sel] == selected
    torch.testing.assert_close(got_scale.double(), torch.tensor(scales, dtype=torch.float64), atol=1e-6, rtol=0)

    # The trainer's loss is DAPO's with these token-level advantages (here from the trainer's own float32
    # dependency, so that the top-k cut cannot flip on a float64-vs-float32 near-tie).
    _, grads_vppo = _loss_and_grads(trainer, inputs)
    dep32 = low_var_kl(_policy_logps(trainer, inputs), masked.float()).clamp(0, 10)
    sel32, scale32 = loop_vppo(dep32.tolist(), mask.tolist(), 0.4, 0.9)
    token_adv = torch.zeros(mask.shape)
    for b in range(mask.shape[0]):
        for t in sel32[b]:
            token_adv[b, t] = inputs["advantages"][b].item() * scale32[b]
    trainer.args.method = "dapo"
    _, grads_dapo = _loss_and_grads(trainer, {**inputs, "advantages": token_adv})
    scale = max(g.abs().max().item() for g in grads_dapo)
    assert scale > 0 and _max_diff(grads_vppo, grads_dapo) <= 1e-4 * scale


# --- reductions to the base methods ---------------------------------------------------------------


@pytest.mark.parametrize("method,base,extra", [
    ("papo_g", "grpo", {"beta": 0.01}),
    ("papo_d", "dapo", {}),
    ("vppo", "dapo", {"vppo_top_fraction": 1.0, "vppo_scale_min": 1.0, "vppo_entropy_coef": 0.0}),
])
def test_gradient_equals_base_method_with_coefficients_off(tiny_vlm, tmp_path, method, base, extra):
    off = {"papo_kl_coef": 0.0, "papo_entropy_coef": 0.0, "papo_masked_entropy_coef": 0.0} if "papo" in method else {}
    trainer = _untruncated(make_trainer(tiny_vlm, tmp_path, method=method, **off, **extra))
    inputs = _prepared_batch(trainer, progress=0.0)
    loss_method, grads_method = _loss_and_grads(trainer, inputs)
    trainer.args.method = base
    loss_base, grads_base = _loss_and_grads(trainer, inputs)
    assert max(g.abs().max().item() for g in grads_base) > 0
    assert torch.equal(loss_method, loss_base) and _max_diff(grads_method, grads_base) == 0.0
    # ... and the method's own terms do change the gradient (the check above can fail)
    trainer.args.method = method
    for name, value in {"papo_kl_coef": 0.5, "vppo_top_fraction": 0.4}.items():
        setattr(trainer.args, name, value)
    _, grads_on = _loss_and_grads(trainer, inputs)
    assert _max_diff(grads_on, grads_base) > 1e-6


@pytest.mark.parametrize("method", ["papo_g", "vppo"])
def test_no_masking_gives_zero_kl(tiny_vlm, tmp_path, method):
    trainer = make_trainer(tiny_vlm, tmp_path, method=method, perception_mask_probability=0.0)
    inputs = _prepared_batch(trainer, progress=0.0)
    assert torch.equal(trainer._masked_pixel_values(inputs), inputs["pixel_values"])
    masked = trainer._masked_logps(trainer.model, inputs)
    assert torch.equal(low_var_kl(_policy_logps(trainer, inputs), masked), torch.zeros_like(masked))


@pytest.mark.parametrize("method,forwards,masked", [("pepo", 1, 0), ("grpo", 1, 0), ("papo_g", 1, 1), ("papo_d", 1, 1),
                                                    ("vppo", 1, 2)])
def test_forwards_per_micro_batch_and_per_generation_batch(tiny_vlm, tmp_path, method, forwards, masked):
    """One policy forward per micro-batch for every method; PAPO's masked forward (VPPO's: masked and real image)
    runs once per generation batch, before the loss, never inside it."""
    from trl import GRPOTrainer

    trainer = make_trainer(tiny_vlm, tmp_path, method=method, per_device_train_batch_size=4,
                           gradient_accumulation_steps=2)
    helper_calls = []
    original = GRPOTrainer._get_per_token_logps_and_entropies

    def counting(self, *args, **kwargs):
        helper_calls.append(kwargs.get("pixel_values") is not None)
        return original(self, *args, **kwargs)

    GRPOTrainer._get_per_token_logps_and_entropies = counting
    try:
        inputs = _prepared_batch(trainer, progress=0.5)  # generation batch of 8 rows, 2 micro-batches of 4
    finally:
        GRPOTrainer._get_per_token_logps_and_entropies = original
    # TRL's own forwards at generation: none on-policy (ga 2 = steps_per_generation 2); ours: one per 4 rows
    assert len(helper_calls) == 2 * masked
    calls = []
    handle = trainer.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        trainer.compute_loss(trainer.model, inputs)
    finally:
        handle.remove()
    assert len(calls) == forwards
    if method == "papo_g":  # the paper's objective: the masked branch recomputed, with gradient, every micro-batch
        trainer.args.papo_masked_grad = True
        calls.clear()
        handle = trainer.model.register_forward_pre_hook(lambda *_: calls.append(1))
        try:
            trainer.compute_loss(trainer.model, inputs)
        finally:
            handle.remove()
        assert len(calls) == 2


def test_method_defaults_and_presets(tmp_path):
    from tests.test_trainer import make_config

    # the preset fills loss_type only when it is unset; an explicit value wins (as for every preset)
    assert make_config(tmp_path, method="papo_g", loss_type="grpo").loss_type == "grpo"
    papo_g = make_config(tmp_path, method="papo_g")
    # EasyR1's loss, which the public scripts keep: token mean over the micro-batch, clip 0.2 / 0.3, dual clip 3
    assert (papo_g.loss_type, papo_g.epsilon, papo_g.epsilon_high, papo_g.delta, papo_g.papo_kl_coef,
            papo_g.papo_entropy_coef, papo_g.perception_mask_probability, papo_g.perception_mask_stage,
            papo_g.perception_mask_scope, papo_g.perception_masked_policy) == (
        "bnpo", 0.2, 0.3, 3.0, 0.02, 0.05, 0.6, "image", "prompt", "rollout")
    papo_d = make_config(tmp_path, method="papo_d")
    assert (papo_d.loss_type, papo_d.dynamic_sampling, papo_d.dynamic_sampling_filter,
            papo_d.mask_truncated_completions, papo_d.epsilon_high, papo_d.delta, papo_d.papo_kl_coef,
            papo_d.papo_masked_entropy_coef) == ("bnpo", True, "accuracy", False, 0.28, 3.0, 0.01, 0.03)
    vppo = make_config(tmp_path, method="vppo", perception_mask_block_size=28)
    assert (vppo.loss_type, vppo.dynamic_sampling, vppo.dynamic_sampling_filter, vppo.mask_truncated_completions,
            vppo.epsilon, vppo.epsilon_high, vppo.delta, vppo.beta, vppo.perception_mask_stage,
            vppo.perception_mask_probability, vppo.perception_mask_scope, vppo.perception_mask_block_size) == (
        "dapo", True, "accuracy", False, 0.2, 0.28, 3.0, 0.0, "pixels", 0.5, "rollout", 28)
    assert make_config(tmp_path, method="papo_g", papo_masked_grad=True).perception_masked_policy == "current"
    with pytest.raises(ValueError, match="papo_masked_grad needs perception_masked_policy=current"):
        make_config(tmp_path, method="papo_g", papo_masked_grad=True, perception_masked_policy="rollout")
    with pytest.raises(ValueError, match="perception_masked_policy"):
        make_config(tmp_path, method="vppo", perception_masked_policy="current")
    assert make_config(tmp_path, method="vppo", perception_mask_probability=0.0).perception_mask_probability == 0.0
    for bad in ({"perception_mask_stage": "after"}, {"perception_mask_probability": 1.5},
                {"vppo_top_fraction": 0.0}, {"perception_mask_scope": "batch"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            make_config(tmp_path, method="vppo", **bad)


# --- every supported family ------------------------------------------------------------------------

from pepo.models.tiny import SUPPORTED_FAMILIES, TinyVLMSpec, build_tiny_model  # noqa: E402
from tests.test_families import _needs, tokenizers  # noqa: E402,F401  (fixture)

FAMILY_PARAMS = [pytest.param(f, marks=_needs(f), id=f) for f in SUPPORTED_FAMILIES]


@pytest.mark.parametrize("method", ["papo_g", "papo_d", "vppo"])
@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_family_trains_with_perception_method(family, method, tokenizers, tmp_path):  # noqa: F811
    from tests.test_trainer import snapshot

    model, processor = build_tiny_model(family, tokenizers(family), TinyVLMSpec(), seed=0)
    trainer = _untruncated(make_trainer((model, processor), tmp_path, method=method))
    before = snapshot(trainer.model)
    trainer.train()
    after = snapshot(trainer.model)
    assert [n for n in before if not torch.equal(before[n], after[n])], "no parameter changed"
    prefix = "vppo" if method == "vppo" else "papo"
    records = [r for r in trainer.state.log_history if f"{prefix}/masked_forward_ms" in r]
    assert len(records) == 2
    key = "vppo/dependency_mean" if method == "vppo" else "papo/kl_prcp"
    assert all(math.isfinite(r[key]) and r[key] >= 0 for r in records)
    assert any(r[key] > 0 for r in records), "masking never changed the policy's distribution"

    # This family's masked pixels: the original ones without masking, different ones with it.
    inputs = _prepared_batch(trainer, progress=0.0)
    trainer.args.perception_mask_probability = 0.0
    assert torch.equal(trainer._masked_pixel_values(inputs), inputs["pixel_values"])
    trainer.args.perception_mask_probability = 1.0
    masked = trainer._masked_pixel_values(inputs)
    assert masked.shape == inputs["pixel_values"].shape and not torch.equal(masked, inputs["pixel_values"])


@pytest.mark.parametrize("backbone", ["qwen2_5_vl_3b", "internvl3_2b"])
def test_perception_recipes_resolve_to_the_public_scripts_settings(backbone):
    from pathlib import Path

    from pepo.config import parse_train_args

    root = Path(__file__).resolve().parent.parent / "recipes"
    resolved = {m: parse_train_args(["--config", str(root / "geometry3k" / backbone / f"{m}.yaml")])[1]
                for m in ("papo_g", "papo_d", "vppo")}
    g, d, v = resolved["papo_g"], resolved["papo_d"], resolved["vppo"]
    assert (g.loss_type, g.epsilon_high, g.delta, g.beta, g.papo_kl_coef, g.papo_entropy_coef,
            g.perception_mask_probability, g.perception_mask_stage, g.perception_mask_scope) == (
        "bnpo", 0.3, 3.0, 0.01, 0.02, 0.05, 0.6, "image", "prompt")
    assert (d.loss_type, d.delta, d.beta, d.dynamic_sampling, d.dynamic_sampling_filter, d.mask_truncated_completions,
            d.papo_kl_coef, d.papo_masked_entropy_coef) == ("bnpo", 3.0, 0.0, True, "accuracy", False, 0.01, 0.03)
    assert (v.loss_type, v.beta, v.dynamic_sampling, v.dynamic_sampling_filter, v.mask_truncated_completions,
            v.epsilon, v.epsilon_high, v.delta, v.perception_mask_stage, v.perception_mask_probability,
            v.vppo_top_fraction, v.vppo_scale_min, v.vppo_entropy_coef) == (
        "dapo", 0.0, True, "accuracy", False, 0.2, 0.28, 3.0, "pixels", 0.5, 0.4, 0.9, 0.06)
    virl = parse_train_args(["--config", str(root / "virl39k" / "qwen2_5_vl_3b" / "papo_g.yaml")])[1]
    assert (virl.method, virl.beta, virl.papo_kl_coef) == ("papo_g", 0.01, 0.02)


# --- whole training runs against independent references ----------------------------------------------


def _row_key(batch, b: int) -> tuple:
    return tuple(batch["prompt_ids"][b].tolist()), tuple(batch["completion_ids"][b].tolist())


def _plain_logps(model, inputs, temperature: float) -> torch.Tensor:
    """(B, C) float32 log-probs of the completion tokens from a plain forward, with gradient."""
    prompt, completion = inputs["prompt_ids"], inputs["completion_ids"]
    kwargs = {"image_grid_thw": inputs["image_grid_thw"]}
    if inputs.get("mm_token_type_ids") is not None:
        kwargs["mm_token_type_ids"] = inputs["mm_token_type_ids"]
    logits = model(input_ids=torch.cat([prompt, completion], 1), pixel_values=inputs["pixel_values"],
                   attention_mask=torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1), **kwargs).logits
    logits = logits[:, prompt.shape[1] - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)


def _easyr1_surrogate(logp, old, adv, low, high, dual):
    """EasyR1's (PAPO's / VPPO's code base) clipped surrogate with dual clip, per token."""
    ratio = torch.exp(logp - old)
    loss1, loss2 = -adv * ratio, -adv * torch.clamp(ratio, 1 - low, 1 + high)
    clipped = torch.max(loss1, loss2)
    return torch.where(adv < 0, torch.min(clipped, -adv * dual), clipped)


def _vppo_loop(deps, masks, micro_rows, batch_rows, fraction, scale_min):
    """float64 loop: per micro-batch row, the selected positions and the advantage scale (min-max over the
    generation batch ``batch_rows``, mean over the micro-batch, as VPPO's public code over its update batch)."""
    def mean_dep(r):
        n = sum(masks[r])
        return sum(d for d, m in zip(deps[r], masks[r]) if m) / n if n else None

    means = {r: mean_dep(r) for r in batch_rows}
    present = [m for m in means.values() if m is not None]
    lo, hi = min(present), max(present)
    active = len(present) > 1 and hi - lo > 1e-6
    s_hat = {r: min(1.0, max(0.0, (means[r] - lo) / (hi - lo))) for r in micro_rows if active and means[r] is not None}
    mu = sum(s_hat.values()) / len(s_hat) if s_hat else 0.0
    selected, scales = [], []
    for r in micro_rows:
        positions = [t for t, m in enumerate(masks[r]) if m]
        k = math.ceil(Fraction(str(fraction)) * len(positions))
        selected.append(set(sorted(positions, key=lambda t: (-deps[r][t], t))[:k]))
        scales.append(scale_min + s_hat[r] * (1 - scale_min) / (mu + 1e-8) if r in s_hat else 1.0)
    return selected, scales


def _check_against_rollout_references(trainer) -> list[dict]:
    """Every generation batch: record, per row, float64 log-probs of the *rollout* policy with the real and the
    masked image from plain forwards. Every micro-batch (every iteration): the trainer's loss and gradient equal
    the public code's formulas on those records, written out here."""
    args = trainer.args
    rollouts: dict[tuple, dict] = {}
    records: list[dict] = []
    generate, compute = trainer._generate_and_score_completions, trainer._compute_loss

    def recorded(inputs):
        out = generate(inputs)
        real = _reference_logps(trainer, out, out["pixel_values"])
        masked = _reference_logps(trainer, out, trainer._masked_pixel_values(out))
        keys = [_row_key(out, b) for b in range(len(out["advantages"]))]
        for b, key in enumerate(keys):
            rollouts[key] = {"adv": out["advantages"][b].item(), "real": real[b], "masked": masked[b], "batch": keys,
                             "column": out["vppo_dependency"][b].tolist() if "vppo_dependency" in out else None,
                             "mask": out["completion_mask"][b].bool().tolist()}
        return out

    def checked(model, inputs):
        keys = [_row_key(inputs, b) for b in range(len(inputs["advantages"]))]
        rows = [rollouts[k] for k in keys]
        mask = inputs["completion_mask"].bool()
        maskf = mask.float()
        params = [p for p in model.parameters() if p.requires_grad]
        logp = _plain_logps(model, inputs, args.temperature)
        advantages = torch.tensor([r["adv"] for r in rows]).unsqueeze(1).expand_as(logp).clone()
        real, masked = torch.stack([r["real"] for r in rows]), torch.stack([r["masked"] for r in rows])
        ga = trainer.current_gradient_accumulation_steps
        if args.method == "vppo":
            dependency = torch.tensor([[min(10.0, max(0.0, loop_low_var_kl(a, b))) for a, b in zip(x.tolist(), y.tolist())]
                                       for x, y in zip(real, masked)], dtype=torch.float64)
            column = torch.tensor([r["column"] for r in rows], dtype=torch.float64)
            torch.testing.assert_close(column * maskf, dependency * maskf, atol=2e-5, rtol=0)
            # selection from the trainer's float32 column: a float64 near-tie must not flip the top-k cut
            batch = {k: rollouts[k] for k in rows[0]["batch"]}
            deps = {k: r["column"] for k, r in batch.items()}
            masks = {k: r["mask"] for k, r in batch.items()}
            selected, scales = _vppo_loop(deps, masks, keys, list(batch), args.vppo_top_fraction, args.vppo_scale_min)
            select = torch.zeros_like(maskf)
            for b, positions in enumerate(selected):
                select[b, list(positions)] = 1.0
            advantages = advantages * torch.tensor(scales).unsqueeze(1) * select
            normalizer = inputs["num_items_in_batch"] * ga / args.steps_per_generation
            per_token = _easyr1_surrogate(logp, inputs["old_per_token_logps"], advantages, args.epsilon,
                                          args.epsilon_high, 3.0)
            expected = ((per_token * maskf).sum() + args.vppo_entropy_coef * (-logp * maskf).sum()) / normalizer
            records.append({"dependency": (dependency * maskf).sum().item() / maskf.sum().item(),
                            "scales": scales})
        else:  # PAPO: token mean over the micro-batch, extra terms against the rollout policy's masked log-probs
            per_token = _easyr1_surrogate(logp, inputs["old_per_token_logps"], advantages, args.epsilon,
                                          args.epsilon_high, 3.0)
            d = (masked.float() - logp).clamp(-20, 20)
            kl = (((torch.exp(d) - d - 1).clamp(-10, 10)) * maskf).sum() / maskf.sum()
            extra = (-args.papo_kl_coef * kl + args.papo_entropy_coef * (-logp * maskf).sum() / maskf.sum()
                     + args.papo_masked_entropy_coef * (-masked.float() * maskf).sum() / maskf.sum())
            expected = ((per_token * maskf).sum() / maskf.sum() + extra) / ga
            records.append({"kl": kl.item()})
        expected_grads = torch.autograd.grad(expected, params, allow_unused=True)
        loss = compute(model, inputs)
        grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
        pairs = [(g, e) for g, e in zip(grads, expected_grads) if e is not None]
        scale = max(e.abs().max().item() for _, e in pairs)
        assert scale > 0
        torch.testing.assert_close(loss.detach(), expected.detach(), atol=1e-6, rtol=1e-4)
        diff = max(((torch.zeros_like(e) if g is None else g) - e).abs().max().item() for g, e in pairs)
        assert diff <= 1e-4 * scale, f"gradient differs by {diff:.3g} (scale {scale:.3g})"
        return loss

    trainer._generate_and_score_completions = recorded
    trainer._compute_loss = checked
    return records


@pytest.mark.parametrize("method", ["vppo", "papo_g"])
def test_off_policy_training_equals_the_public_code_on_rollout_references(tiny_vlm, tmp_path, method):
    """Two iterations over each generation batch (the second after an update), two micro-batches per generation
    batch: every micro-batch's loss and gradient equal the public code's formulas with the masked (and, for VPPO,
    real-image) log-probs of the rollout policy, VPPO's scale normalised over the generation batch, its entropy
    penalty by token share, and EasyR1's dual clip."""
    extra = {"dynamic_sampling": False} if method == "vppo" else {}
    trainer = make_trainer(tiny_vlm, tmp_path, method=method, num_iterations=2, per_device_train_batch_size=4,
                           gradient_accumulation_steps=2, **extra)
    records = _check_against_rollout_references(trainer)
    trainer.train()
    assert len(records) == 4  # 2 optimizer steps x 2 micro-batches, the second step on the reused batch
    if method == "vppo":
        assert all(r["dependency"] > 0 for r in records)
        # the scales use the generation batch's min / max: a micro-batch's own scales need not reach 0.9
        assert any(min(r["scales"]) > 0.9 + 1e-6 for r in records)
    else:
        assert all(r["kl"] > 1e-4 for r in records)


def test_vppo_dependency_is_zero_without_masking_off_policy(tiny_vlm, tmp_path):
    """Masking off: the masked and the real side are the same policy on the same image, so every dependency is
    exactly 0, also in the second iteration over a generation batch (after an update)."""
    trainer = make_trainer(tiny_vlm, tmp_path, method="vppo", perception_mask_probability=0.0, num_iterations=2,
                           max_steps=2, mask_truncated_completions=False)
    trainer.train()
    logged = [r["vppo/dependency_mean"] for r in trainer.state.log_history if "vppo/dependency_mean" in r]
    assert len(logged) == 2 and logged == [0.0, 0.0]


def test_delta_is_easyr1_dual_clip(tiny_vlm, tmp_path):
    """TRL's `delta` = 3 equals EasyR1's dual clip 3 (value and gradient) when delta >= 1 + epsilon_high: ratios pushed
    past 3 on negative advantages are clipped the same way."""
    trainer = make_trainer(tiny_vlm, tmp_path, method="dapo", delta=3.0, dynamic_sampling=False,
                           mask_truncated_completions=False)
    inputs = _prepared_batch(trainer, progress=0.0)
    mask = inputs["completion_mask"].float()
    with torch.no_grad():
        logp = _plain_logps(trainer.model, inputs, 1.0)
    shift = torch.tensor([1.5, -0.5, 0.05, -1.5, 0.3])  # ratios e^-1.5, e^0.5, 0.95, e^1.5 = 4.5, 0.74
    shift = shift.repeat(logp.numel() // 5 + 1)[: logp.numel()].view_as(logp)
    inputs["old_per_token_logps"] = logp + shift
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    loss = trainer.compute_loss(trainer.model, inputs)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    current = _plain_logps(trainer.model, inputs, 1.0)
    adv = inputs["advantages"].unsqueeze(1).expand_as(current)
    per_token = _easyr1_surrogate(current, inputs["old_per_token_logps"], adv, 0.2, 0.28, 3.0)
    expected = (per_token * mask).sum() / inputs["num_items_in_batch"]
    expected_grads = torch.autograd.grad(expected, params, allow_unused=True)
    torch.testing.assert_close(loss.detach(), expected.detach(), atol=1e-6, rtol=1e-5)
    pairs = [(g, e) for g, e in zip(grads, expected_grads) if e is not None]
    scale = max(e.abs().max().item() for _, e in pairs)
    assert max((g - e).abs().max().item() for g, e in pairs) <= 1e-4 * scale
    # the dual clip was active (negative advantage, ratio > 3), so without it the loss differs
    assert ((adv < 0) & (torch.exp(-shift) > 3) & mask.bool()).any()
    without = _easyr1_surrogate(current, inputs["old_per_token_logps"], adv, 0.2, 0.28, float("inf"))
    assert ((without * mask).sum() / inputs["num_items_in_batch"] - expected).abs() > 1e-4


def test_dynamic_sampling_filter_follows_the_scripts(tiny_vlm, tmp_path):
    """PAPO_D / VPPO filter on accuracy (format rewards left out), DAPO on the total reward."""
    from pepo.dynamic_sampling import filter_reward_columns

    names = ["format_reward", "accuracy_reward"]
    assert filter_reward_columns(names, "total") == [0, 1]
    assert filter_reward_columns(names, "accuracy") == [1]
    assert filter_reward_columns(names, "format_reward") == [0]
    with pytest.raises(ValueError, match="dynamic_sampling_filter='iou'.*format_reward"):
        filter_reward_columns(names, "iou")

    def format_reward(completions, **_):
        return [float(i % 2) for i in range(len(completions))]  # mixed within every group

    def accuracy_reward(completions, **_):
        return [1.0] * len(completions)  # every group all-correct

    model, processor = tiny_vlm
    for method, kept in (("vppo", False), ("dapo", True)):
        trainer = PEPOTrainer(model=model, reward_funcs=[format_reward, accuracy_reward],
                              args=make_config(tmp_path, method=method, max_dynamic_sampling_rounds=1),
                              train_dataset=make_rl_rows(8), processing_class=processor)
        trainer.model.train()
        trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        metrics = trainer._metrics["train"]
        # an all-correct group with mixed formats: dropped on accuracy (as the scripts do), kept on the total
        assert (metrics["dynamic_sampling/dropped_groups"][-1] == 0) == kept, method


def test_papo_masked_grad_differentiates_the_masked_branch(tiny_vlm, tmp_path):
    trainer = make_trainer(tiny_vlm, tmp_path, method="papo_g")
    inputs = _prepared_batch(trainer, progress=0.0)
    loss_code, grads_code = _loss_and_grads(trainer, inputs)
    trainer.args.papo_masked_grad = True
    loss_paper, grads_paper = _loss_and_grads(trainer, inputs)
    torch.testing.assert_close(loss_paper, loss_code)  # same value ...
    assert _max_diff(grads_paper, grads_code) > 1e-6  # ... but the masked branch now has a gradient
    # Only the masked branch differs: with the perception and masked-entropy terms off, the gradients agree.
    trainer.args.papo_kl_coef = trainer.args.papo_masked_entropy_coef = 0.0
    _, off_paper = _loss_and_grads(trainer, inputs)
    trainer.args.papo_masked_grad = False
    _, off_code = _loss_and_grads(trainer, inputs)
    assert _max_diff(off_paper, off_code) <= 1e-7


def test_mask_seeds_and_raw_images_follow_their_rows_through_dynamic_sampling():
    from pepo.dynamic_sampling import concat_batches, select_rows

    def batch(offset: int, width: int) -> dict:
        rows = 2
        return {
            "prompt_ids": torch.arange(rows * width).view(rows, width) + 100 * offset,
            "prompt_mask": torch.ones(rows, width, dtype=torch.long),
            "completion_ids": torch.full((rows, 3), offset), "completion_mask": torch.ones(rows, 3, dtype=torch.long),
            "advantages": torch.tensor([1.0, -1.0]) * (offset + 1), "num_items_in_batch": torch.tensor(6),
            "perception_seed": torch.tensor([10, 11]) + 10 * offset,
            "perception_images": [[f"img{offset}-{r}"] for r in range(rows)],
        }

    merged = concat_batches([batch(0, 4), batch(1, 5)], pad_token_id=0)
    picked = select_rows(merged, [3, 0])
    assert picked["perception_seed"].tolist() == [21, 10]
    assert picked["perception_images"] == [["img1-1"], ["img0-0"]]
    assert picked["advantages"].tolist() == [-2.0, 1.0]
