"""Test driver: ``pepo demo`` with rollouts that are identical however the global batch is sharded.

Run as ``python tests/sharded_runner.py OUT ARGS...`` (one process) or under ``torch.distributed.run`` /
``accelerate launch`` (several). ``ARGS`` are ``pepo.cli.main``'s. What it changes, all in this process only:

* **Completions come from a table, not from sampling.** Sampling draws from each process's RNG, so a 2-process
  run and a 1-process run of the same global batch sample different completions. Here row ``i`` of a generation
  call gets ``CONTENT`` tokens drawn from a ``torch.Generator`` seeded by a hash of its prompt ids, its image bytes
  and its generation index ``j = i % num_generations`` (TRL's sampler puts a prompt's ``G`` rollouts next to each
  other and every process holds whole groups, so ``j`` does not depend on the sharding), then EOS. Rows with
  ``j < G / 2`` start with the marker word ``yes``; the reward ``table_marker`` is 1 for those, else 0, so every
  group has reward variance (dynamic sampling keeps every group: see ``tests/test_sharded_training.py`` for why).
  All completions have the same length, so every shard holds the same number of loss tokens.
* **Perception mask seeds** (PAPO / VPPO's corrupted image) are drawn per row from the same kind of hash instead
  of (seed, step, call, *process*): otherwise the masks depend on which process holds a row.
* **Records**: every process saves its trainable parameters before and after ``train`` (gathered to full tensors
  under FSDP / ZeRO-3), the loss each micro-step returned and, per generation call, the row keys (prompt hash,
  j) it generated, to ``OUT/rank{r}_*.pt`` / ``OUT/rank{r}_record.json``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

import torch

CONTENT = 5  # completion tokens before EOS: max_completion_length must be >= CONTENT + 1
MARKER = "yes"


def _digest(*parts: Any) -> int:
    """A 62-bit integer hash of token-id lists, PIL images (mode, size, pixels) and ints; stable across processes."""
    h = hashlib.sha256()

    def feed(x: Any) -> None:
        if x is None:
            h.update(b"N")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for y in x:
                feed(y)
            h.update(b"]")
        elif hasattr(x, "tobytes") and hasattr(x, "mode"):  # PIL image
            h.update(f"{x.mode}{x.size}".encode())
            h.update(x.tobytes())
        elif isinstance(x, torch.Tensor):
            h.update(x.detach().cpu().numpy().tobytes())
        else:
            h.update(repr(x).encode())

    for p in parts:
        feed(p)
    return int.from_bytes(h.digest()[:8], "little") >> 2


def _row_images(images: Any, i: int) -> Any:
    return None if images is None else images[i]


def install(out: str) -> None:
    """Patch PEPOTrainer (this process only) as the module docstring says."""
    from pepo import rewards
    from pepo.perception_trainer import PerceptionMixin
    from pepo.trainer import PEPOTrainer

    def table_marker(completions, **kwargs):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [1.0 if t.strip().startswith(MARKER) else 0.0 for t in texts]

    rewards.REWARDS["table_marker"] = table_marker
    record: dict[str, Any] = {"calls": [], "losses": []}

    def table_generate(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        tok = getattr(self.processing_class, "tokenizer", self.processing_class)
        digits = sorted({t for d in "0123456789" for t in tok.encode(d, add_special_tokens=False)})
        marker = tok.encode(MARKER, add_special_tokens=False)
        eos = self.eos_token_ids[0]
        completions, keys = [], []
        for i, ids in enumerate(prompt_ids):
            j = i % num_generations
            key = _digest(list(ids), _row_images(images, i))
            gen = torch.Generator().manual_seed((key * 31 + j) % 2**62)
            body = marker if j < num_generations // 2 else []
            fill = torch.randint(0, len(digits), (CONTENT - len(body),), generator=gen).tolist()
            completions.append(body + [digits[k] for k in fill] + [eos])
            keys.append([key, j])
        record["calls"].append({"step": self.state.global_step, "rows": keys})
        return completions, None

    PEPOTrainer._generate_single_turn = table_generate

    perception_generate = PerceptionMixin._generate_and_score_completions

    def content_seeds(self, inputs):
        result = perception_generate(self, inputs)
        if "perception_seed" in result:
            per_prompt = self.args.perception_mask_scope == "prompt"
            seeds = []
            for i, x in enumerate(inputs):
                ids = result["prompt_ids"][i][result["prompt_mask"][i].bool()].tolist()
                comp = [] if per_prompt else result["completion_ids"][i].tolist()
                seeds.append(_digest(ids, x.get("image"), x.get("images"), comp))
            result["perception_seed"] = torch.tensor(seeds, device=result["perception_seed"].device)
        return result

    PerceptionMixin._generate_and_score_completions = content_seeds

    train, training_step = PEPOTrainer.train, PEPOTrainer.training_step

    def recorded_step(self, *args, **kwargs):
        loss = training_step(self, *args, **kwargs)
        record["losses"].append([self.state.global_step, float(loss)])
        return loss

    def full_params(self) -> dict[str, torch.Tensor]:
        """Trainable parameters as full tensors on every process (gathered under FSDP2 / ZeRO-3)."""
        model = self.accelerator.unwrap_model(self.model_wrapped)
        params = {}
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if hasattr(p, "ds_id"):  # ZeRO-3 partition
                import deepspeed

                with deepspeed.zero.GatheredParameters([p]):
                    params[name] = p.detach().clone().cpu()
            elif hasattr(p, "full_tensor"):  # FSDP2 DTensor
                params[name] = p.full_tensor().detach().clone().cpu()
            else:
                params[name] = p.detach().clone().cpu()
        return params

    def recorded_train(self, *args, **kwargs):
        rank = self.accelerator.process_index
        torch.save(full_params(self), f"{out}/rank{rank}_before.pt")
        result = train(self, *args, **kwargs)
        torch.save(full_params(self), f"{out}/rank{rank}_after.pt")
        with open(f"{out}/rank{rank}_record.json", "w") as f:
            json.dump({**record, "world_size": self.accelerator.num_processes,
                       "distributed_type": str(self.accelerator.distributed_type)}, f)
        return result

    PEPOTrainer.training_step = recorded_step
    PEPOTrainer.train = recorded_train


if __name__ == "__main__":
    install(sys.argv[1])
    from pepo.cli import main

    sys.exit(main(sys.argv[2:]))
