"""Rollout throughput side by side: vLLM's ``LLM.generate`` vs transformers ``model.generate``, same model and prompts.

Both sample G completions of M new tokens for each of P prompts (one image each) from the same checkpoint, at
temperature 1 with image/video tokens banned (as PEPOTrainer does), and report completion tokens per second
(median of --repeats timed runs after one warm-up; engine start is timed separately). Run it in the
virtualenv of ``scripts/vllm_env.sh``:

    .venv-vllm/bin/python -m benchmarks.vllm_rollout_throughput                   # tiny model (head_dim 32), CPU
    .venv-vllm/bin/python -m benchmarks.vllm_rollout_throughput --model DIR --prompts 32 --generations 8 \\
        --max_new_tokens 256 --dtype bfloat16                                     # a real checkpoint (GPU)

On CPU the engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) in float32, eager, with the
linear-layer workaround of ``tests/vllm_engine/conftest.py`` not needed (no weight updates here).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="checkpoint directory (default: a tiny Qwen2.5-VL built here)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)

    import torch
    import vllm
    from transformers import LogitsProcessorList  # noqa: F401  (transformers must import beside vLLM)

    from pepo.data.synthetic import text_corpus
    from pepo.eval.generation import encode_prompts
    from pepo.eval.vllm_backend import build_request
    from pepo.models.loading import load_model_and_processor
    from pepo.models.special_tokens import ban_multimodal_tokens, multimodal_token_ids
    from pepo.models.tiny import VLLM_TINY_SPEC, build_tiny_qwen2_5_vl, save_tiny, train_tiny_tokenizer
    from tests.conftest import make_rl_rows

    tmp = tempfile.TemporaryDirectory(prefix="pepo-bench-")
    path = args.model
    if path is None:
        tokenizer = train_tiny_tokenizer(text_corpus() + ["<answer>3</answer>"])
        path = str(save_tiny(*build_tiny_qwen2_5_vl(tokenizer, VLLM_TINY_SPEC), os.path.join(tmp.name, "m")))
    model, processor = load_model_and_processor(path, torch_dtype=args.dtype)
    rows = [dict(r) for r in make_rl_rows(args.prompts)]
    banned = multimodal_token_ids(model, processor)
    P, G, M = args.prompts, args.generations, args.max_new_tokens

    start = time.perf_counter()
    llm = vllm.LLM(model=path, dtype=args.dtype, enforce_eager=True, max_model_len=2048, seed=0)
    engine_start = time.perf_counter() - start
    params = vllm.SamplingParams(**ban_multimodal_tokens(dict(n=G, temperature=1.0, max_tokens=M, ignore_eos=True,
                                                              seed=0), banned, use_vllm=True))
    requests = [build_request(processor, r) for r in rows]

    def run_vllm() -> int:
        outs = llm.generate(requests, params, use_tqdm=False)
        return sum(len(o.token_ids) for r in outs for o in r.outputs)

    batch = encode_prompts(processor, [r["prompt"] for r in rows], [r["images"] for r in rows])
    tok = processor.tokenizer

    @torch.no_grad()
    def run_hf() -> int:
        out = model.generate(**batch, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=M,
                             min_new_tokens=M, num_return_sequences=G, suppress_tokens=banned,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        return (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]

    results = {}
    for name, fn in (("vllm", run_vllm), ("transformers", run_hf)):
        fn()  # warm-up
        times, tokens = [], 0
        for _ in range(args.repeats):
            t = time.perf_counter()
            tokens = fn()
            times.append(time.perf_counter() - t)
        results[name] = (tokens, statistics.median(times))
    print(f"model {path if args.model else 'tiny Qwen2.5-VL (VLLM_TINY_SPEC)'}, dtype {args.dtype}, torch "
          f"{torch.__version__}, vLLM {vllm.__version__}, {torch.get_num_threads()} threads; "
          f"{P} prompts x {G} generations x {M} tokens")
    print(f"vLLM engine start: {engine_start:.1f} s")
    print("| backend | completion tokens | seconds (median) | tokens/s |\n|---|---|---|---|")
    for name, (tokens, seconds) in results.items():
        print(f"| {name} | {tokens} | {seconds:.2f} | {tokens / seconds:.0f} |")
    ratio = (results["vllm"][0] / results["vllm"][1]) / (results["transformers"][0] / results["transformers"][1])
    print(f"throughput ratio vLLM / transformers: {ratio:.2f}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
