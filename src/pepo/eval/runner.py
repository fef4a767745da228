"""avg@N / majority@N / pass@N evaluation with per-sample results that survive interruption.

Each prompt's N samples are drawn from seeds derived from (run seed, prompt id, sample index), so
a prompt's samples do not depend on which prompts ran before it or on a restart, and (up to
floating-point near-ties between batch shapes) not on the batch size either.
They are appended to ``samples.jsonl`` as N lines written in one call; on restart, complete prompts
are kept, a prompt with fewer than N lines (or a torn last line) is dropped and regenerated, so no
sample is lost or duplicated.

Generation is a callable ``generate(rows) -> completions[i][k]`` (the N completions of each row),
called on chunks of ``chunk_size`` prompts; each prompt of a chunk is written as soon as the chunk is
done. :func:`transformers_generate` (the default: a chunk is one batched ``generate``) and
:class:`pepo.eval.vllm_backend.VLLMGenerator` are the two backends.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from pepo.eval.generation import generate_completions
from pepo.faults import fault_write

__all__ = ["EvalSettings", "Generate", "prompt_seed", "read_samples", "transformers_generate", "evaluate_rows",
           "summarize"]

#: ``generate(rows) -> completions``: ``completions[i]`` holds the N sample texts of ``rows[i]``, seeded from
#: ``prompt_seed(settings.seed, rows[i]["id"])`` so they do not depend on the other rows of the call.
Generate = Callable[[Sequence[dict]], list[list[str]]]


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
    # Rewritten through a temporary file: a kill during the rewrite must not lose the complete prompts.
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        fault_write(f, "".join(json.dumps(r) + "\n" for v in complete.values() for r in v), "eval_rewrite")
    os.replace(tmp, path)
    return complete


def transformers_generate(model: torch.nn.Module, processor: Any, settings: EvalSettings) -> Generate:
    """The transformers backend: all rows of a call in one batched ``model.generate``.

    Sample k of a row is drawn with its own random stream seeded from
    ``sample_seed(prompt_seed(settings.seed, id), k)`` (:class:`pepo.eval.generation.SeededRowSampler`),
    so a row's samples do not depend on which rows share its batch.
    """

    def generate(rows: Sequence[dict]) -> list[list[str]]:
        return generate_completions(
            model, processor, [row["prompt"] for row in rows], [row["images"] for row in rows],
            settings.max_new_tokens, batch_size=max(1, len(rows)), do_sample=settings.temperature > 0,
            temperature=settings.temperature, top_p=settings.top_p, num_return_sequences=settings.num_samples,
            show_progress=False, seeds=[prompt_seed(settings.seed, str(row["id"])) for row in rows],
        )

    return generate


def evaluate_rows(
    model: torch.nn.Module | None,
    processor: Any,
    rows: Sequence[dict],
    score: Callable[[list[str], dict], tuple[list[float], list[str]]],
    out_dir: Path,
    settings: EvalSettings,
    show_progress: bool = True,
    after_prompt: Callable[[int], None] | None = None,
    *,
    generate: Generate | None = None,
    chunk_size: int = 1,
) -> dict[str, list[dict]]:
    """Sample every row ``settings.num_samples`` times and score it; resumes from ``out_dir/samples.jsonl``.

    Args:
        model, processor: the transformers model and processor; used only when ``generate`` is None
            (then ``generate = transformers_generate(model, processor, settings)``). Pass ``None, None``
            with another backend.
        rows: dicts with ``id``, ``prompt``, ``images`` and the columns ``score`` needs.
        score: ``score(completions, row) -> (scores in [0, 1], extracted answers)``.
        after_prompt: called with the number of prompts done in this call, after each prompt is written
            (tests use it to interrupt a run).
        generate: ``generate(rows) -> completions[i][k]`` (see :data:`Generate`); a backend.
        chunk_size: prompts per ``generate`` call (the batch); each prompt of a chunk is written (one
            write per prompt) once the chunk returns, so an interruption loses at most the chunk in
            flight. Chunks are fixed slices of ``rows``: a rerun regenerates a partly written chunk
            with the same prompts and seeds and writes only the prompts it lacks.

    Returns:
        id -> its N sample records (``id``, ``sample``, ``output``, ``extracted``, ``score``).
    """
    if generate is None:
        if model is None:
            raise ValueError("evaluate_rows needs a model (transformers backend) or a generate callable")
        generate = transformers_generate(model, processor, settings)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "samples.jsonl"
    done = read_samples(path, settings.num_samples)
    todo = [row for row in rows if str(row["id"]) not in done]
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc="evaluating", unit="prompt",
               disable=not show_progress)
    n_done = 0
    # Chunks are fixed slices of ``rows``, not of what is left to do: a resumed run regenerates a
    # partly written chunk whole (same batch, same numbers) and writes only its missing prompts.
    for start in range(0, len(rows), chunk_size):
        chunk = list(rows[start : start + chunk_size])
        if all(str(row["id"]) in done for row in chunk):
            continue
        completions = generate(chunk)
        if len(completions) != len(chunk) or any(len(c) != settings.num_samples for c in completions):
            raise RuntimeError(
                f"the generation backend returned {[len(c) for c in completions]} completions for {len(chunk)} "
                f"prompt(s); expected {settings.num_samples} each"
            )
        for row, outputs in zip(chunk, completions):
            pid = str(row["id"])
            if pid in done:
                continue
            scores, extracted = score(outputs, row)
            records = [{"id": pid, "sample": k, "output": o, "extracted": e, "score": float(s)}
                       for k, (o, e, s) in enumerate(zip(outputs, extracted, scores))]
            with path.open("a") as f:
                fault_write(f, "".join(json.dumps(r) + "\n" for r in records), "eval_samples")  # one write per prompt
            done[pid] = records
            bar.update(1)
            n_done += 1
            if after_prompt is not None:
                after_prompt(n_done)
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
