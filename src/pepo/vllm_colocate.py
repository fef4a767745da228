"""Guards for TRL's colocated vLLM rollouts (``use_vllm=True, vllm_mode="colocate"``), installed by PEPOTrainer.

1. **Prompt ids**: TRL hands vLLM the trainer's prompt token ids, in which the processor has already expanded
   each image into a run of image tokens (16 for a 112 px tiny-model image), plus the images. vLLM 0.31 expands
   the *first* image token of each run again, so it generates from a longer prompt than the one the trainer
   scores (measured: 16 image tokens -> 31, prompt 41 -> 56 tokens). The completions' log-probs then differ
   from the trainer's by whole nats (TRL's ``sampling/sampling_logp_difference/mean``: 1.3 at step 1 on the
   tiny model; the 0.52 the issue saw). Each run is collapsed to one image token before vLLM sees it, and the
   prompt ids vLLM reports back are checked against the trainer's: equal, or an error naming the row.
2. **Encoder cache**: TRL's weight sync resets vLLM's prefix cache but not its encoder cache, which keeps the
   vision tower's output per image (keyed by the image's hash) across requests; an image seen before the sync
   would be answered with embeddings of the old weights. After each sync the encoder cache is reset too.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["collapse_image_runs", "reset_encoder_cache", "install_colocate_guards"]


def reset_encoder_cache(llm: Any) -> None:
    """Drop vLLM's cached vision-encoder outputs (vLLM 0.31: ``LLM.llm_engine.reset_encoder_cache``).

    Raises:
        RuntimeError: this vLLM has no such call (stale vision embeddings could not be ruled out).
    """
    for owner in (llm, getattr(llm, "llm_engine", None)):
        reset = getattr(owner, "reset_encoder_cache", None)
        if callable(reset):
            reset()
            return
    raise RuntimeError("this vLLM has no reset_encoder_cache: after a weight sync it could reuse vision embeddings "
                       "computed with the old weights; use vLLM >= 0.11")


def collapse_image_runs(ids: Sequence[int], image_token_id: int) -> list[int]:
    """``ids`` with every run of consecutive ``image_token_id`` replaced by one (vLLM re-expands it per image)."""
    out: list[int] = []
    for t in ids:
        if t == image_token_id and out and out[-1] == image_token_id:
            continue
        out.append(int(t))
    return out


def install_colocate_guards(trainer: Any) -> bool:
    """Wrap ``trainer.vllm_generation``'s ``generate`` and ``sync_weights`` (colocate mode only); True if done."""
    generation = getattr(trainer, "vllm_generation", None)
    if generation is None or getattr(generation, "mode", None) != "colocate" or getattr(generation, "_pepo_guarded", False):
        return False
    image_token_id = trainer.image_token_id
    generate, sync = generation.generate, generation.sync_weights

    def guarded_generate(prompts, images, num_generations, profiler=None):
        if images is None:
            return generate(prompts, images, num_generations, profiler)
        collapsed = [collapse_image_runs(p, image_token_id) if im is not None else list(p)
                     for p, im in zip(prompts, images)]
        prompt_ids, completion_ids, logprobs, token_ids = generate(collapsed, images, num_generations, profiler)
        # vLLM's own expansion must give back the trainer's prompt, token for token.
        tp = getattr(generation, "tensor_parallel_size", 1)
        if tp == 1:
            for row, (ours, theirs) in enumerate(zip(prompts, prompt_ids)):
                if list(ours) != list(theirs):
                    raise RuntimeError(
                        f"vLLM expanded prompt {row} to {len(theirs)} tokens ({list(theirs).count(image_token_id)} "
                        f"image tokens) but the trainer's prompt has {len(ours)} ({list(ours).count(image_token_id)} "
                        "image tokens): vLLM and the trainer's processor resize or tile this row's images differently")
        return list(prompts), completion_ids, logprobs, token_ids

    def guarded_sync():
        sync()
        llm = getattr(generation, "llm", None)
        if llm is not None:
            reset_encoder_cache(llm)

    generation.generate, generation.sync_weights = guarded_generate, guarded_sync
    generation._pepo_guarded = True
    return True
