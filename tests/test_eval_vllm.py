"""`pepo eval` vLLM backend against a FAKE `vllm` module (no vLLM, no GPU here).

What is checked: the request each prompt becomes (chat-template text, images, SamplingParams with the
per-prompt seed), sample order, chunking not changing samples, resume after an interruption, the CLI's
backend selection and what it records. vLLM's real generation is not exercised.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import types

import pytest
import torch

from pepo.cli import main
from pepo.eval.cli import select_backend
from pepo.eval.generation import encode_prompts
from pepo.eval.runner import EvalSettings, evaluate_rows, prompt_seed, read_samples
from pepo.eval.tasks import TASKS, make_scorer
from pepo.eval.vllm_backend import MISSING_VLLM, VLLMGenerator, VLLMUnavailable, build_request
from tests.conftest import make_rl_rows

_real_find_spec = importlib.util.find_spec


class Interrupt(Exception):
    pass


def _fake_text(prompt: str, seed: int, k: int) -> str:
    d = int.from_bytes(hashlib.sha256(f"{prompt}|{seed}|{k}".encode()).digest()[:4], "little")
    return f"<think>sample {k}</think><answer>{d % 4}</answer>"


class FakeVLLM:
    """State of one fake ``vllm`` module: every LLM built, every generate call, an optional failure."""

    def __init__(self) -> None:
        self.llms: list = []
        self.calls: list[tuple[list[dict], list]] = []
        self.fail_on_call: int | None = None  # raise Interrupt on this generate call (1-based)

    def module(self) -> types.ModuleType:
        state = self

        class SamplingParams:
            def __init__(self, n=1, temperature=1.0, top_p=1.0, max_tokens=16, seed=None, **kw):
                self.n, self.temperature, self.top_p = n, temperature, top_p
                self.max_tokens, self.seed = max_tokens, seed
                self.extra = kw

        class LLM:
            def __init__(self, **kwargs):
                self.kwargs = kwargs
                state.llms.append(self)

            def generate(self, prompts, sampling_params=None, use_tqdm=True):
                state.calls.append((list(prompts), list(sampling_params)))
                if state.fail_on_call == len(state.calls):
                    raise Interrupt
                results = []
                for prompt, params in zip(prompts, sampling_params):
                    outs = [types.SimpleNamespace(index=k, text=_fake_text(prompt["prompt"], params.seed, k))
                            for k in range(params.n)]
                    results.append(types.SimpleNamespace(prompt=prompt["prompt"], outputs=outs[::-1]))  # unordered
                return results

        mod = types.ModuleType("vllm")
        mod.LLM, mod.SamplingParams, mod.__version__ = LLM, SamplingParams, "0.0.fake"
        return mod


@pytest.fixture()
def fake_vllm(monkeypatch):
    fake = FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake.module())
    return fake


@pytest.fixture()
def no_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "vllm" else _real_find_spec(name, *a))


@pytest.fixture()
def ckpt(tiny_vlm, tmp_path):
    model, processor = tiny_vlm
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def _rows(n, images_per_prompt=1):
    return [dict(r) for r in make_rl_rows(n, images_per_prompt=images_per_prompt)]


def test_requests_match_chat_template_images_and_seeds(fake_vllm, tiny_vlm, ckpt):
    _, processor = tiny_vlm
    settings = EvalSettings(num_samples=3, temperature=0.7, top_p=0.9, max_new_tokens=5, seed=11)
    gen = VLLMGenerator(str(ckpt), processor, settings, max_images_per_prompt=2, gpu_memory_utilization=0.5,
                        tensor_parallel_size=2)
    llm = fake_vllm.llms[0]
    assert llm.kwargs == {"model": str(ckpt), "limit_mm_per_prompt": {"image": 2}, "seed": 11,
                          "gpu_memory_utilization": 0.5, "tensor_parallel_size": 2}
    one, two = _rows(2), _rows(2, images_per_prompt=2)
    for k, r in enumerate(two):
        r["id"] = f"m{k}"
    rows = one + two
    out = gen(rows)
    (requests, params), = fake_vllm.calls
    for row, req, p in zip(rows, requests, params):
        text = processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        assert req["prompt"] == text
        # the same token ids as the transformers backend feeds model.generate
        ours = processor(text=[req["prompt"]], images=[row["images"]], return_tensors="pt")["input_ids"]
        assert torch.equal(ours, encode_prompts(processor, [row["prompt"]], [row["images"]])["input_ids"])
        images = req["multi_modal_data"]["image"]
        if len(row["images"]) == 1:
            assert images is row["images"][0]
        else:
            assert isinstance(images, list) and all(a is b for a, b in zip(images, row["images"]))
        assert (p.n, p.temperature, p.top_p, p.max_tokens) == (3, 0.7, 0.9, 5)
        assert p.seed == prompt_seed(11, str(row["id"])) and p.extra == {}
    # sample order follows CompletionOutput.index, not the order vLLM lists them in
    assert out[0] == [_fake_text(requests[0]["prompt"], params[0].seed, k) for k in range(3)]
    assert len(out) == 4 and all(len(o) == 3 for o in out)


def test_build_request_single_image_not_in_list(tiny_vlm):
    _, processor = tiny_vlm
    row = _rows(1)[0]
    row["images"] = row["images"][0]
    assert build_request(processor, row)["multi_modal_data"] == {"image": row["images"]}


def test_chunk_size_does_not_change_samples(fake_vllm, tiny_vlm, ckpt, tmp_path):
    _, processor = tiny_vlm
    rows, score = _rows(7), make_scorer(TASKS["synthetic"])
    settings = EvalSettings(num_samples=4, max_new_tokens=8, seed=3)
    gen = VLLMGenerator(str(ckpt), processor, settings)
    a = evaluate_rows(None, None, rows, score, tmp_path / "c1", settings, show_progress=False, generate=gen,
                      chunk_size=1)
    assert len(fake_vllm.calls) == 7
    b = evaluate_rows(None, None, rows, score, tmp_path / "c3", settings, show_progress=False, generate=gen,
                      chunk_size=3)
    assert [len(c[0]) for c in fake_vllm.calls[7:]] == [3, 3, 1]
    assert a == b
    assert (tmp_path / "c1" / "samples.jsonl").read_text() == (tmp_path / "c3" / "samples.jsonl").read_text()
    assert 0 < sum(r["score"] for v in a.values() for r in v) < 28  # the fake answers are sometimes right


def test_interrupted_vllm_run_resumes_without_losing_or_duplicating(fake_vllm, tiny_vlm, ckpt, tmp_path):
    _, processor = tiny_vlm
    rows, score = _rows(7), make_scorer(TASKS["synthetic"])
    settings = EvalSettings(num_samples=3, max_new_tokens=8, seed=5)
    gen = VLLMGenerator(str(ckpt), processor, settings)
    kw = dict(show_progress=False, generate=gen, chunk_size=3)
    full = evaluate_rows(None, None, rows, score, tmp_path / "full", settings, **kw)
    path = tmp_path / "cut" / "samples.jsonl"

    fake_vllm.calls.clear()
    fake_vllm.fail_on_call = 2  # vLLM dies during the second chunk
    with pytest.raises(Interrupt):
        evaluate_rows(None, None, rows, score, tmp_path / "cut", settings, **kw)
    assert len(path.read_text().splitlines()) == 9  # the first chunk: 3 complete prompts

    fake_vllm.calls.clear()
    fake_vllm.fail_on_call = None

    def stop(done):  # killed after the first prompt of a chunk is written
        if done == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        evaluate_rows(None, None, rows, score, tmp_path / "cut", settings, after_prompt=stop, **kw)
    assert [len(c[0]) for c in fake_vllm.calls] == [3]  # the second chunk (prompts 3-5), as before
    assert len(path.read_text().splitlines()) == 12
    with path.open("a") as f:  # a kill mid-write: a torn line
        f.write('{"id": "5", "sam')
    assert set(read_samples(path, 3)) == {"0", "1", "2", "3"}

    fake_vllm.calls.clear()
    resumed = evaluate_rows(None, None, rows, score, tmp_path / "cut", settings, **kw)
    # chunks are fixed slices of the rows: the partly written chunk 3-5 is asked for whole, then 6
    assert [len(c[0]) for c in fake_vllm.calls] == [3, 1]
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 21 and len({(r["id"], r["sample"]) for r in lines}) == 21
    assert resumed == full


def test_cli_vllm_backend_end_to_end(fake_vllm, ckpt, tmp_path, monkeypatch, capsys):
    import pepo.models.loading

    def no_transformers_model(*a, **k):
        raise AssertionError("the vllm backend must not load the model with transformers")

    monkeypatch.setattr(pepo.models.loading, "load_model_and_processor", no_transformers_model)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    out = tmp_path / "runs" / "v" / "synthetic"
    argv = ["eval", "--model", str(ckpt), "--task", "synthetic", "--limit", "5", "--num_samples", "2",
            "--output_dir", str(out), "--vllm_chunk", "2", "--gpu_memory_utilization", "0.6",
            "--tensor_parallel_size", "1", "--seed", "9"]  # --backend auto: vllm + "cuda"
    assert main(argv) == 0
    llm = fake_vllm.llms[0]
    assert llm.kwargs["gpu_memory_utilization"] == 0.6 and llm.kwargs["seed"] == 9
    assert [len(c[0]) for c in fake_vllm.calls] == [2, 2, 1]
    assert all(p.max_tokens == TASKS["synthetic"].max_new_tokens and p.n == 2 for c in fake_vllm.calls for p in c[1])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "vllm" and summary["backend_version"] == "0.0.fake" and summary["prompts"] == 5
    assert "backend vllm" in (out / "summary.md").read_text()
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 10 and all(s["output"].startswith("<think>sample") for s in samples)
    before = (out / "samples.jsonl").read_text()
    assert main(argv) == 0  # rerun resumes: nothing generated
    assert len(fake_vllm.calls) == 3 and (out / "samples.jsonl").read_text() == before
    capsys.readouterr()
    # the folder keeps its backend: transformers samples would differ for the same seeds
    assert main(argv + ["--backend", "transformers"]) == 2
    assert "drawn with the vllm backend" in capsys.readouterr().err


def test_auto_backend_selection(fake_vllm, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_backend("auto") == "transformers"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "vllm" else _real_find_spec(name, *a))
    assert select_backend("auto") == "vllm"
    assert select_backend("transformers") == "transformers"
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "vllm" else _real_find_spec(name, *a))
    assert select_backend("auto") == "transformers"  # a GPU but no vLLM


def test_backend_vllm_without_vllm_exits_2(no_vllm, ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["eval", "--model", str(ckpt), "--task", "synthetic", "--limit", "1", "--backend", "vllm",
                 "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "install vllm on a CUDA machine or use --backend transformers" in err
    assert not out.exists()
    with pytest.raises(VLLMUnavailable, match="use --backend transformers"):
        VLLMGenerator(str(ckpt), None, EvalSettings())
    assert "--backend transformers" in MISSING_VLLM


def test_help_documents_backends(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--backend {auto,transformers,vllm}" in text and "fake vllm" in text
    assert "different but equally distributed samples" in text


def test_checkpoint_repetition_penalty_is_passed(fake_vllm, tiny_vlm, ckpt):
    _, processor = tiny_vlm
    config = json.loads((ckpt / "generation_config.json").read_text())
    (ckpt / "generation_config.json").write_text(json.dumps({**config, "repetition_penalty": 1.05}))
    gen = VLLMGenerator(str(ckpt), processor, EvalSettings(num_samples=2))
    gen(_rows(1))
    assert fake_vllm.calls[0][1][0].extra == {"repetition_penalty": 1.05}  # as transformers.generate applies it
