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
3. **Engine options**: TRL 1.16 builds the colocate ``vllm.LLM`` itself and exposes neither ``dtype`` nor
   ``enforce_eager`` (vLLM then uses the checkpoint's dtype, bfloat16 for a float32 checkpoint on CPU, and
   compiles the model first). :class:`VLLMEngineArguments` adds ``vllm_dtype`` / ``vllm_enforce_eager``;
   :func:`colocate_engine_options` passes them to TRL's ``LLM(...)`` call while the trainer is built.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

__all__ = ["collapse_image_runs", "reset_encoder_cache", "install_colocate_guards", "VLLMEngineArguments",
           "colocate_engine_options", "VLLM_DTYPES"]

#: what ``vllm.LLM(dtype=...)`` accepts (vLLM 0.31)
VLLM_DTYPES = ("auto", "float32", "float", "bfloat16", "float16", "half")


@dataclass
class VLLMEngineArguments:
    """Options of the colocated vLLM engine that TRL's ``GRPOConfig`` lacks (``use_vllm``, ``vllm_mode="colocate"``).

    TRL's own ``vllm_gpu_memory_utilization``, ``vllm_max_model_length``, ``vllm_tensor_parallel_size``,
    ``vllm_enable_sleep_mode`` and ``vllm_model_impl`` keep their TRL meaning and pass through unchanged.
    """

    vllm_dtype: str = field(
        default="auto",
        metadata={"help": "Colocate vLLM engine's dtype: auto (vLLM's choice from the checkpoint; bfloat16 for a "
                  "float32 checkpoint on CPU), float32, bfloat16, float16. Server mode: pass --dtype to "
                  "`trl vllm-serve` instead."},
    )
    vllm_enforce_eager: bool = field(
        default=False,
        metadata={"help": "Colocate vLLM engine without CUDA graphs / torch.compile (faster start, slower decode). "
                  "Server mode: pass --enforce_eager to `trl vllm-serve` instead."},
    )

    def check_vllm_engine(self) -> None:
        """Raise ValueError naming the field when an engine option is invalid or cannot apply."""
        if self.vllm_dtype not in VLLM_DTYPES:
            raise ValueError(f"vllm_dtype={self.vllm_dtype!r} is not known; choose one of {list(VLLM_DTYPES)}.")
        changed = [name for name, value in (("vllm_dtype", self.vllm_dtype != "auto"),
                                            ("vllm_enforce_eager", self.vllm_enforce_eager)) if value]
        if changed and getattr(self, "use_vllm", False) and getattr(self, "vllm_mode", "colocate") != "colocate":
            raise ValueError(f"{', '.join(changed)} set the colocate engine, but vllm_mode={self.vllm_mode!r}: "
                             "the server builds its own engine (`trl vllm-serve --dtype ... --enforce_eager ...`).")


@contextmanager
def colocate_engine_options(args: Any) -> Iterator[None]:
    """While TRL's ``GRPOTrainer.__init__`` runs, its ``vllm.LLM(...)`` call also gets ``dtype`` / ``enforce_eager``.

    TRL 1.16 calls the name ``LLM`` of ``trl.generation.vllm_generation`` (its ``VLLMGeneration._init_vllm``);
    that name is replaced for the duration and restored after, so nothing else sees the change. A TRL without
    that name fails loudly instead of silently dropping the options.
    """
    extra: dict[str, Any] = {}
    if getattr(args, "use_vllm", False) and getattr(args, "vllm_mode", None) == "colocate":
        if getattr(args, "vllm_dtype", "auto") != "auto":
            extra["dtype"] = args.vllm_dtype
        if getattr(args, "vllm_enforce_eager", False):
            extra["enforce_eager"] = True
    if not extra:
        yield
        return
    import importlib.util

    import trl.generation.vllm_generation as vg

    original = getattr(vg, "LLM", None)
    if original is None and importlib.util.find_spec("vllm") is None:
        yield  # TRL's own error follows: vLLM is not installed
        return
    if original is None:
        raise RuntimeError("this TRL builds its colocate engine without trl.generation.vllm_generation.LLM: "
                           f"pepo cannot pass {sorted(extra)} to it (tested with TRL 1.16)")

    def llm(*a: Any, **kwargs: Any) -> Any:
        return original(*a, **{**kwargs, **extra})

    vg.LLM = llm
    try:
        yield
    finally:
        vg.LLM = original


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
