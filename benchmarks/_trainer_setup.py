"""Shared set-up for the step benchmarks: a PEPOTrainer on the demo's data, at the demo's size or 3B-sized.

``--size tiny`` is the demo's 0.4M-parameter Qwen2.5-VL (CPU, minutes). ``--size 3b`` builds a
Qwen2.5-VL with the shapes of Qwen2.5-VL-3B-Instruct (text: 36 layers, width 2048, 16 query / 2
key-value heads, MLP 11008, vocabulary 151,936, tied embeddings; vision: 32 blocks of width 1280)
with random weights from the config, which is all a timing needs; the images are resized to
``--image_size`` pixels (448 -> 256 image tokens) and completions run to ``--completion_length``
tokens (random weights rarely stop early). ``--layers`` / ``--vision_depth`` shrink either tower
(tests use them to run the 3B path on a CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from typing import Callable

import torch

#: Qwen2.5-VL-3B-Instruct's shapes (config.json of the hub checkpoint)
QWEN2_5_VL_3B = dict(
    hidden_size=2048, num_layers=36, num_heads=16, num_kv_heads=2, intermediate_size=11008,
    mrope_section=(16, 24, 24), rope_theta=1_000_000.0, max_position_embeddings=32768,
    vision_depth=32, vision_hidden=1280, vision_heads=16, vision_intermediate=3420, window_size=112,
    initializer_range=0.02,
)
QWEN2_5_VL_3B_VOCAB = 151_936


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every step benchmark shares (model size, device, dtype, batch shape)."""
    parser.add_argument("--size", choices=["tiny", "3b"], default="tiny", help="the demo's model or a 3B-sized one")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="default: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, eager, flash_attention_2)")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--generations", type=int, default=8, help="samples per prompt")
    parser.add_argument("--completion_length", type=int, default=None, help="default: 6 (tiny), 256 (3b)")
    parser.add_argument("--image_size", type=int, default=448, help="3b only: image side in pixels (448 = 256 tokens)")
    parser.add_argument("--layers", type=int, default=None, help="override the number of text layers")
    parser.add_argument("--vision_depth", type=int, default=None, help="override the number of vision blocks")
    parser.add_argument("--gradient_checkpointing", action="store_true")


def model_settings(args: argparse.Namespace) -> dict:
    """Keyword arguments of :func:`step_trainer` from parsed :func:`add_model_arguments` options."""
    return dict(size=args.size, device=args.device, dtype=args.dtype, attn=args.attn, prompts=args.prompts,
                generations=args.generations, completion_length=args.completion_length,
                image_size=args.image_size, layers=args.layers, vision_depth=args.vision_depth,
                gradient_checkpointing=args.gradient_checkpointing)


def describe(settings: dict, trainer) -> str:
    """One line naming the model, device, dtype and batch shape, for the benchmark's printout."""
    params = sum(p.numel() for p in trainer.model.parameters())
    device = settings.get("device", "cpu")
    name = torch.cuda.get_device_name() if device.startswith("cuda") and torch.cuda.is_available() else "CPU"
    dtype = next(trainer.model.parameters()).dtype
    return (f"{settings.get('size', 'tiny')} Qwen2.5-VL ({params / 1e6:.1f}M parameters), {name}, {dtype}, "
            f"attention {trainer.model.config._attn_implementation}, {settings.get('prompts', 8)} prompts x "
            f"{settings.get('generations', 8)} samples, completions <= {trainer.args.max_completion_length} tokens, "
            f"torch {torch.__version__}")


def step_trainer(method: str, tmp: str, size: str = "tiny", device: str = "cpu", dtype: str | None = None,
                 attn: str = "sdpa", prompts: int = 8, generations: int = 8, completion_length: int | None = None,
                 image_size: int = 448, layers: int | None = None, vision_depth: int | None = None,
                 gradient_checkpointing: bool = False, **config) -> tuple[object, Callable[[], None]]:
    """A PEPOTrainer and ``step()`` = generate ``prompts`` x ``generations`` completions + loss + backward.

    Every call of ``step`` reuses the same prompts and reseeds sampling, so every method sees the
    same work. ``config`` goes to :class:`pepo.trainer.PEPOConfig`.
    """
    from pepo.data.synthetic import make_split, synthetic_accuracy_reward, text_corpus
    from pepo.models.tiny import TinyVLMSpec, build_tiny_qwen2_5_vl, train_tiny_tokenizer
    from pepo.sft import answer_completion
    from pepo.trainer import PEPOConfig, PEPOTrainer

    cuda = device.startswith("cuda")
    dtype = dtype or ("bfloat16" if cuda else "float32")
    spec = TinyVLMSpec(**QWEN2_5_VL_3B, image_size=image_size) if size == "3b" else TinyVLMSpec()
    if layers is not None:
        spec = dataclasses.replace(spec, num_layers=layers)
    if vision_depth is not None:
        spec = dataclasses.replace(spec, vision_depth=vision_depth)
    rows = make_split(prompts * 8, seed=0).map(lambda r: {"images": [r["image"]]}, remove_columns=["image"])
    tokenizer = train_tiny_tokenizer(text_corpus() + [answer_completion("3")])
    with torch.device(device):  # build the weights where they will live (a 3B model in fp32 on CPU is 15 GB)
        model, processor = build_tiny_qwen2_5_vl(tokenizer, spec)
    if size == "3b":
        # the real vocabulary, so the LM head and the entropy over logits cost what they cost at 3B;
        # ids beyond the tokenizer's decode to nothing
        model.resize_token_embeddings(QWEN2_5_VL_3B_VOCAB, mean_resizing=False)
    model = model.to(getattr(torch, dtype))
    model.set_attn_implementation(attn)
    trainer = PEPOTrainer(
        model=model, reward_funcs=synthetic_accuracy_reward, train_dataset=rows, processing_class=processor,
        args=PEPOConfig(output_dir=tmp, method=method, per_device_train_batch_size=prompts * generations,
                        num_generations=generations, max_steps=1000,
                        max_completion_length=completion_length or (256 if size == "3b" else 6),
                        report_to="none", bf16=dtype == "bfloat16", use_cpu=not cuda, save_strategy="no",
                        disable_tqdm=True, logging_steps=1000, gradient_checkpointing=gradient_checkpointing,
                        **config),
    )
    batch = next(iter(trainer.get_train_dataloader()))  # the same prompts each step: fresh completions
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1

    def step() -> None:
        trainer._buffered_inputs = None
        torch.manual_seed(0)  # identical sampling for every method
        inputs = trainer._prepare_inputs(batch)
        trainer.compute_loss(trainer.model, inputs).backward()
        if cuda:
            torch.cuda.synchronize()

    return trainer, step


def use_method(trainer, capture, method: str, **settings) -> None:
    """Switch one trainer between methods in place, so that GRPO and PEPO run on the very same weights.

    ``method="grpo"`` also drops the capture hooks and the token statistics (PEPO's code path off);
    ``capture`` is the trainer's original ``_capture``; ``settings`` are other PEPOConfig fields.
    """
    trainer.args.method = method
    trainer.args.log_token_stats = method != "grpo"
    for key, value in settings.items():
        setattr(trainer.args, key, value)
    trainer._capture = capture if method != "grpo" else None


def scratch_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="pepo-bench-")
