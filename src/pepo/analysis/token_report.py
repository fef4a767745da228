"""``pepo analyze tokens``: sample responses, score every token, and write every token-level figure.

One pass over the data, a batch of prompts at a time: sample responses, reward them, compute each
token's similarity / entropy / weight / shift (:mod:`pepo.analysis.tokens`), append the records to
``records.jsonl`` and hand them to the streaming writers (heatmap pages, similarity distributions,
word statistics, hidden-state shift). Only one batch's activations and the writers' small running
summaries are ever in memory, so 1,000 responses cost the same memory as 10.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from pepo.analysis.distributions import SimilarityDistributions
from pepo.analysis.heatmap import HeatmapWriter, render_heatmap_png
from pepo.analysis.records import check_record, safe_stem
from pepo.analysis.shift import ShiftAnalysis
from pepo.analysis.tokens import TokenAnalysisSettings, generate_completion_ids, score_completions
from pepo.analysis.words import WordStats
from pepo.data.loading import question_text

__all__ = ["analyze_tokens"]


def analyze_tokens(
    model: torch.nn.Module,
    processor: Any,
    rows: Sequence[dict],
    score: Callable[[list[str], dict], tuple[list[float], list[str]]],
    out_dir: Path,
    settings: TokenAnalysisSettings,
    meta: dict,
    image_token: int,
    heatmap_pngs: int = 4,
    top_k: int = 10,
    show_progress: bool = True,
) -> dict:
    """Analyse ``len(rows) * settings.num_samples`` sampled responses; write the figures and ``index.md``.

    Args:
        rows: dicts with ``id``, ``prompt``, ``images``, ``answer`` and what ``score`` needs.
        score: ``score(completions, row) -> (rewards, extracted answers)`` (e.g. ``pepo.eval.tasks.make_scorer``).
        out_dir: results folder (created).
        meta: what produced the records (model, task, ...); stored in ``meta.json`` and figure titles.
        image_token: the image placeholder token id.
        heatmap_pngs: how many responses also get a PNG heatmap (the first ones, one per colouring).
        top_k: K of the top-K / bottom-K similarity statistics.

    Returns:
        A summary dict: number of responses, mean reward, and each figure's key numbers.
    """
    if len(rows) == 0:
        raise ValueError("no rows to analyse")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    meta = {**meta, **asdict(settings)}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2))
    distributions = SimilarityDistributions(k=top_k)
    words = WordStats(ignore=getattr(processor.tokenizer, "all_special_tokens", ()))
    shift = ShiftAnalysis(mode=settings.shift) if settings.shift != "none" else None
    tokenizer = processor.tokenizer
    n_total = len(rows) * settings.num_samples
    bar = tqdm(total=n_total, desc="analysing", unit="response", disable=not show_progress)
    rewards: list[float] = []
    pngs: list[Path] = []
    with HeatmapWriter(out_dir, meta) as heatmaps, (out_dir / "records.jsonl").open("w") as records_file:
        for start, batch in _batches(rows, settings.batch_size):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(settings.seed * 1_000_003 + start)
                ids = generate_completion_ids(model, processor, [r["prompt"] for r in batch],
                                              [r["images"] for r in batch], settings)
            expanded = [r for r in batch for _ in range(settings.num_samples)]
            # every completion has >= 1 token (max_new_tokens >= 1; the end-of-sequence token counts)
            scored = score_completions(model, processor, [r["prompt"] for r in expanded],
                                       [r["images"] for r in expanded], ids, settings, image_token)
            for j, row in enumerate(batch):
                idxs = [j * settings.num_samples + k for k in range(settings.num_samples)]
                texts = [tokenizer.decode(ids[i], skip_special_tokens=True) for i in idxs]
                row_rewards, _ = score(texts, row)
                image = row["images"][0] if isinstance(row["images"], (list, tuple)) else row["images"]
                image_path = Path("images") / f"{safe_stem(str(row['id']))}.png"
                image.convert("RGB").save(out_dir / image_path)
                for k, i in enumerate(idxs):
                    token_values = scored[i]
                    record = {
                        "id": str(row["id"]), "sample": k, "question": question_text(row["prompt"]),
                        "answer": str(row.get("answer", "")), "image": str(image_path),
                        "tokens": [tokenizer.decode([t], skip_special_tokens=False) for t in ids[i]],
                        "token_ids": list(ids[i]),
                        "similarity": token_values["similarity"], "entropy": token_values["entropy"],
                        "weight": token_values["weight"],
                        "shift": token_values["layer_shift"].mean(dim=0).tolist()
                        if token_values["layer_shift"] is not None else None,
                        "reward": float(row_rewards[k]), "correct": bool(row_rewards[k] >= 0.5),
                    }
                    record["response"] = "".join(record["tokens"])
                    check_record(record)
                    records_file.write(json.dumps(record) + "\n")
                    page = heatmaps.add(record, image)
                    if len(pngs) < heatmap_pngs:
                        mode = ("weight", "similarity", "entropy")[len(pngs) % 3]
                        pngs.append(render_heatmap_png(record, page.with_name(page.stem + f"_{mode}.png"),
                                                       mode=mode, image=image, meta=meta))
                    distributions.add(record)
                    words.add(record)
                    if shift is not None:
                        shift.add(record["similarity"], token_values["layer_shift"])
                    rewards.append(record["reward"])
                    bar.update(1)
            records_file.flush()
    bar.close()
    summary: dict[str, Any] = {
        "responses": len(rewards), "mean_reward": sum(rewards) / len(rewards),
        "correct": sum(r >= 0.5 for r in rewards),
        "similarity_distributions": distributions.write(out_dir, meta),
        "words": words.write(out_dir, meta),
        "hidden_state_shift": shift.write(out_dir, meta) if shift is not None else None,
        "heatmap_pngs": [str(p.relative_to(out_dir)) for p in pngs],
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    _write_index(out_dir, meta, summary)
    return summary


def _batches(rows: Sequence[dict], size: int):
    """``(start, [row dicts])`` per batch; a ``datasets.Dataset`` is read (and its images decoded) a batch at a time."""
    for start in range(0, len(rows), size):
        stop = min(start + size, len(rows))
        if hasattr(rows, "select"):
            yield start, [dict(r) for r in rows.select(range(start, stop))]
        else:
            yield start, [dict(r) for r in rows[start:stop]]


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _write_index(out_dir: Path, meta: dict, summary: dict) -> None:
    """``index.md``: what was analysed and every file produced, with its key numbers."""
    lines = [
        f"# Token-level analysis: {meta.get('model', '?')} on {meta.get('task', '?')}",
        "",
        f"{summary['responses']} responses ({meta.get('num_samples')} per prompt, temperature "
        f"{meta.get('temperature')}), mean reward {summary['mean_reward']:.3f}, {summary['correct']} correct. "
        f"Similarity: {meta.get('score_type')} between each response token's hidden state and the image tokens' "
        f"mean, averaged over all hidden states; entropy in nats; PEPO weight with alpha = {meta.get('gate_alpha')}, "
        f"tau = {meta.get('gate_temperature')} (mean 1 per response).",
        "",
        "| file | what it shows |",
        "|---|---|",
        "| `records.jsonl` | one line per response: tokens, similarity, entropy, weight, shift, reward "
        "(schema: `pepo.analysis.records`) |",
        "| `heatmaps/index.html` | one page per response: tokens coloured by similarity / entropy / weight "
        "(switchable), hover for values |",
    ]
    for png in summary["heatmap_pngs"]:
        lines.append(f"| `{png}` | static heatmap of one response (for docs and terminals) |")
    dist = summary["similarity_distributions"] or {}
    stats = dist.get("statistics", dist)
    glob = stats.get("global_mean", {}) if isinstance(stats, dict) else {}
    lines.append(
        "| `similarity_distributions.png` / `.json` | Figure 2: similarity of correct vs incorrect responses "
        f"(global mean, top-K, bottom-K); global mean AUC {_fmt(glob.get('auc'))}, KS D {_fmt(glob.get('ks_D'))} |"
    )
    shift = summary["hidden_state_shift"]
    if shift is not None:
        lines.append(
            f"| `hidden_state_shift.png` / `.json` | Figure 3 left: hidden-state shift with the image {shift['mode']}"
            f"{'ed' if shift['mode'] == 'blank' else 'd'}; high-similarity tokens {_fmt(shift['mean_shift_high'], 4)} "
            f"vs low {_fmt(shift['mean_shift_low'], 4)} (ratio {_fmt(shift['ratio_high_to_low'], 2)}) |"
        )
    lines += [
        "| `words.md` / `words.json` | Figure 3 middle/right as ranked tables: top words by mean similarity "
        "and by mean entropy |",
        "| `wordcloud_similarity.png` | perception words (size = mean visual similarity) |",
        "| `wordcloud_entropy.png` | exploration words (size = mean entropy) |",
        "| `summary.json` | the numbers above |",
        "| `meta.json` | model, task and settings |",
    ]
    (out_dir / "index.md").write_text("\n".join(lines) + "\n")
