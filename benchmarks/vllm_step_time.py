"""PEPO training step time with vLLM colocate rollouts vs transformers ``generate``, same model, data and options.

Two PEPOTrainers (method ``pepo_g`` by default) train the same checkpoint for ``--steps`` optimizer steps, one with
``use_vllm=True, vllm_mode="colocate"`` (float32, eager: pepo's ``vllm_dtype`` / ``vllm_enforce_eager``), one
without. Each step = generation + rewards + PEPO's forward/backward + optimizer step (+ the weight push to vLLM).
The first step is left out (warm-up); the median of the others is reported, side by side, with the ratio and the
trainer build time (with vLLM: the engine start). Run it in the virtualenv of ``scripts/vllm_env.sh``:

    .venv-vllm/bin/python -m benchmarks.vllm_step_time                       # tiny model (head_dim 32), CPU
    .venv-vllm/bin/python -m benchmarks.vllm_step_time --model DIR --prompts 8 --generations 8 \\
        --max_completion_length 256 --dtype bfloat16 --gpu_memory_utilization 0.3       # a real checkpoint (GPU)

On CPU the engine runs in this process and linear layers compute on their live weight (the workarounds of
``tests/vllm_engine/conftest.py``, imported here only on a machine without CUDA).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import zlib

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def varied_reward(completions, **_):
    """Rewards that differ within a group (the untrained tiny model never answers right): nonzero advantages."""
    return [float(zlib.crc32(str(c).encode()) % 5) for c in completions]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="checkpoint directory (default: a tiny Qwen2.5-VL built here)")
    parser.add_argument("--method", default="pepo_g")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--max_completion_length", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per trainer; the first is not timed")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--gpu_memory_utilization", type=float, default=0.3)
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        import tests.vllm_engine.conftest  # noqa: F401  (vLLM-CPU workarounds: live-weight linear layers)
        torch.set_num_threads(1)
    import trl
    import vllm
    from transformers import TrainerCallback

    from pepo.data.synthetic import text_corpus
    from pepo.models.loading import load_model_and_processor
    from pepo.models.tiny import VLLM_TINY_SPEC, build_tiny_qwen2_5_vl, save_tiny, train_tiny_tokenizer
    from pepo.trainer import PEPOConfig, PEPOTrainer
    from tests.conftest import make_rl_rows

    tmp = tempfile.TemporaryDirectory(prefix="pepo-bench-")
    path = args.model
    if path is None:
        tokenizer = train_tiny_tokenizer(text_corpus() + ["<answer>3</answer>"])
        path = str(save_tiny(*build_tiny_qwen2_5_vl(tokenizer, VLLM_TINY_SPEC), os.path.join(tmp.name, "m")))
    rows = make_rl_rows(args.prompts * args.steps)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_step_begin(self, *_, **__):
            self._t = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.seconds.append(time.perf_counter() - self._t)

    results = {}
    for name, use_vllm in (("vllm colocate", True), ("transformers", False)):
        model, processor = load_model_and_processor(path, torch_dtype=args.dtype)
        config = PEPOConfig(
            output_dir=os.path.join(tmp.name, name.replace(" ", "_")), method=args.method,
            per_device_train_batch_size=args.prompts * args.generations, num_generations=args.generations,
            max_completion_length=args.max_completion_length, max_steps=args.steps, learning_rate=1e-3,
            logging_steps=1, report_to="none", save_strategy="no", bf16=args.dtype == "bfloat16",
            use_cpu=not torch.cuda.is_available(), seed=0, mask_truncated_completions=False, use_vllm=use_vllm,
            vllm_mode="colocate", vllm_dtype=args.dtype, vllm_enforce_eager=True,
            vllm_gpu_memory_utilization=args.gpu_memory_utilization, vllm_max_model_length=1024)
        timer = StepTimer()
        start = time.perf_counter()
        trainer = PEPOTrainer(model=model, reward_funcs=varied_reward, args=config, train_dataset=rows,
                              processing_class=processor, callbacks=[timer])
        built = time.perf_counter() - start
        trainer.train()
        assert len(timer.seconds) == args.steps
        results[name] = (built, timer.seconds)
        if use_vllm:
            gaps = [h["sampling/sampling_logp_difference/mean"] for h in trainer.state.log_history
                    if "sampling/sampling_logp_difference/mean" in h]
        del trainer
    print(f"model {path if args.model else 'tiny Qwen2.5-VL (VLLM_TINY_SPEC)'}, dtype {args.dtype}, torch "
          f"{torch.__version__}, vLLM {vllm.__version__}, TRL {trl.__version__}, {torch.get_num_threads()} threads; "
          f"method {args.method}, {args.prompts} prompts x {args.generations} generations x "
          f"{args.max_completion_length} tokens per step, {args.steps} steps (first not timed)")
    print("| rollouts | trainer build s | step s (median of steps 2..) | every step s |\n|---|---|---|---|")
    for name, (built, seconds) in results.items():
        print(f"| {name} | {built:.1f} | {statistics.median(seconds[1:]):.2f} | "
              f"{', '.join(f'{s:.2f}' for s in seconds)} |")
    ratio = statistics.median(results["vllm colocate"][1][1:]) / statistics.median(results["transformers"][1][1:])
    print(f"step time ratio vLLM / transformers: {ratio:.2f}; vLLM rollout log-prob gap per step "
          f"(sampling/sampling_logp_difference/mean): {[round(g, 4) for g in gaps]}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
