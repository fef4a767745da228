"""avg@N / majority@N / pass@N evaluation with per-sample results that survive interruption.

Each prompt's N samples are generated together with a seed derived from (run seed, prompt id), so
a prompt's samples do not depend on batching, on which prompts ran before it, or on a restart.
They are appended to ``samples.jsonl`` as N lines written in one call; on restart, complete prompts
are kept, a prompt with fewer than N lines (or a torn last line) is dropped and regenerated, so no
sample is lost or duplicated.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from pepo.eval.generation import generate_completions

__all__ = ["EvalSettings", "prompt_seed", "read_samples", "evaluate_rows", "summarize"]


@dataclass
class EvalSettings:
    """How samples are drawn (the paper: N = 8, temperature 1.0, top-p 1.0)."""

    num_samples: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 1024
    seed: int = 0


def prompt_seed(seed: int, prompt_id: str) -> int:
    """A 63-bit seed from the run seed and the prompt id (stable across runs and machines)."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def read_samples(path: Path, num_samples: int) -> dict[str, list[dict]]:
    """Complete prompts already in ``path`` (id -> its N sample records); rewrites the file without partial ones."""
    if not path.is_file():
        return {}
    by_id: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a torn last line from a killed run
            continue
        by_id.setdefault(record["id"], []).append(record)
    complete = {
        k: sorted(v, key=lambda r: r["sample"])
        for k, v in by_id.items()
        if sorted(r["sample"] for r in v) == list(range(num_samples))
    }
    path.write_text("".join(json.dumps(r) + "\n" for v in complete.values() for r in v))
    return complete


def evaluate_rows(
    model: torch.nn.Module,
    processor: Any,
    rows: Sequence[dict],
    score: Callable[[list[str], dict], tuple[list[float], list[str]]],
    out_dir: Path,
    settings: EvalSettings,
    show_progress: bool = True,
    after_prompt: Callable[[int], None] | None = None,
) -> dict[str, list[dict]]:
    """Sample every row ``settings.num_samples`` times and score it; resumes from ``out_dir/samples.jsonl``.

    Args:
        rows: dicts with ``id``, ``prompt``, ``images`` and the columns ``score`` needs.
        score: ``score(completions, row) -> (scores in [0, 1], extracted answers)``.
        after_prompt: called with the number of prompts done (tests use it to interrupt a run).

    Returns:
        id -> its N sample records (``id``, ``sample``, ``output``, ``extracted``, ``score``).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "samples.jsonl"
    done = read_samples(path, settings.num_samples)
    todo = [row for row in rows if str(row["id"]) not in done]
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc="evaluating", unit="prompt",
               disable=not show_progress)
    for i, row in enumerate(todo):
        pid = str(row["id"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(prompt_seed(settings.seed, pid))
            outputs = generate_completions(
                model, processor, [row["prompt"]], [row["images"]], settings.max_new_tokens, batch_size=1,
                do_sample=settings.temperature > 0, temperature=settings.temperature, top_p=settings.top_p,
                num_return_sequences=settings.num_samples, show_progress=False,
            )[0]
        scores, extracted = score(outputs, row)
        records = [{"id": pid, "sample": k, "output": o, "extracted": e, "score": float(s)}
                   for k, (o, e, s) in enumerate(zip(outputs, extracted, scores))]
        with path.open("a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))  # one write per prompt
        done[pid] = records
        bar.update(1)
        if after_prompt is not None:
            after_prompt(i + 1)
    bar.close()
    return done


def summarize(samples: dict[str, list[dict]]) -> dict[str, float]:
    """avg@N (mean score), maj@N (score of the most frequent extracted answer), pass@N (any correct), in %.

    Majority ties go to the answer that appeared first among the samples.
    """
    if not samples:
        raise ValueError("no samples to summarise")
    avg, maj, passed = [], [], []
    for records in samples.values():
        scores = [r["score"] for r in records]
        avg.append(sum(scores) / len(scores))
        counts = Counter(r["extracted"] for r in records)
        top = max(counts.values())
        winner = next(r for r in records if counts[r["extracted"]] == top)
        maj.append(winner["score"])
        passed.append(float(max(scores) > 0))
    n = len(samples)
    return {"avg": 100 * sum(avg) / n, "maj": 100 * sum(maj) / n, "pass": 100 * sum(passed) / n, "prompts": n}
