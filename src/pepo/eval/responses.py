"""``pepo eval --responses FILE.jsonl``: score outputs generated elsewhere with the task's own scorer.

A responses file has one JSON object per line: ``{"id": ..., "output": "..."}``, optionally ``"sample": k``
(0-based) for several samples of one item (a line without ``sample`` is sample 0). ``id`` is matched, as a
string, to the ``id`` of the task's rows: the item's id as the dataset loading yields it (a column named
``id``, else the 0-based row index of the split). Lines whose id names no row (unknown), lines repeating an
(id, sample) pair (duplicates: the first one is scored) and rows without any line are counted and listed
in the summary; nothing else about the file is guessed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["ResponsesError", "Responses", "read_responses", "score_responses", "report_markdown"]


class ResponsesError(ValueError):
    """A malformed responses file; the message names the file, the line and the field."""


@dataclass
class Responses:
    """A parsed responses file: id -> {sample index -> output}, in file order, plus the duplicate lines."""

    path: Path
    outputs: dict[str, dict[int, str]] = field(default_factory=dict)
    duplicates: list[dict] = field(default_factory=list)  # {"id", "sample", "line"} of each repeated pair
    lines: int = 0


def read_responses(path: str | Path) -> Responses:
    """Parse ``path`` (module doc). Raises :class:`ResponsesError` on the first malformed line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ResponsesError(f"responses file {path}: cannot be read ({err.strerror or err}).") from None
    except UnicodeDecodeError as err:
        raise ResponsesError(f"responses file {path}: not UTF-8 text ({err.reason} at byte {err.start}).") from None
    responses = Responses(path)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ResponsesError(f"{where}: not valid JSON ({err.msg} at column {err.colno}).") from None
        if not isinstance(record, dict):
            raise ResponsesError(f"{where}: expected an object {{\"id\": ..., \"output\": ...}}, got "
                                 f"{type(record).__name__}.")
        if "id" not in record or not isinstance(record["id"], (str, int)) or isinstance(record["id"], bool):
            raise ResponsesError(f"{where}, field 'id': missing or not a string/integer (the item's id, or its "
                                 "0-based row index for files without ids).")
        if not isinstance(record.get("output"), str):
            raise ResponsesError(f"{where}, field 'output': missing or not a string (the model's response text).")
        sample = record.get("sample", 0)
        if not isinstance(sample, int) or isinstance(sample, bool) or sample < 0:
            raise ResponsesError(f"{where}, field 'sample': must be an integer >= 0, got {sample!r}.")
        item = str(record["id"])
        responses.lines += 1
        samples = responses.outputs.setdefault(item, {})
        if sample in samples:
            responses.duplicates.append({"id": item, "sample": sample, "line": number})
            continue
        samples[sample] = record["output"]
    if not responses.lines:
        raise ResponsesError(f"responses file {path}: no responses (expected JSON lines "
                             "{\"id\": ..., \"output\": ...}).")
    return responses


def score_responses(
    rows: Sequence[dict],
    responses: Responses,
    score: Callable[[list[str], dict], tuple[list[float], list[str]]],
    out_dir: Path,
) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """Score each row's responses with ``score`` and write ``out_dir/samples.jsonl`` (replacing it; nothing is
    written when no row has a response).

    Returns:
        ``(samples, report)``: id -> its sample records (``id``, ``sample``, ``output``, ``extracted``,
        ``score``; samples in index order), and the matching report: ``lines``, ``scored_items``,
        ``unknown_ids`` / ``duplicate_ids`` / ``items_without_response`` (lists) with their counts.
    """
    row_ids = [str(row["id"]) for row in rows]
    known = set(row_ids)
    samples: dict[str, list[dict]] = {}
    lines = []
    for row, pid in zip(rows, row_ids):
        given = responses.outputs.get(pid)
        if not given:
            continue
        indices = sorted(given)
        outputs = [given[k] for k in indices]
        scores, extracted = score(outputs, row)
        records = [{"id": pid, "sample": k, "output": o, "extracted": e, "score": float(s)}
                   for k, o, e, s in zip(indices, outputs, extracted, scores)]
        samples[pid] = records
        lines += [json.dumps(r) + "\n" for r in records]
    if samples:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / "samples.jsonl.tmp"
        tmp.write_text("".join(lines))
        tmp.replace(out_dir / "samples.jsonl")
    unknown = [i for i in responses.outputs if i not in known]
    duplicate_ids = list(dict.fromkeys(d["id"] for d in responses.duplicates))
    missing = [i for i in row_ids if i not in responses.outputs]
    counts = [len(v) for v in samples.values()]
    report = {
        "responses_file": str(responses.path), "lines": responses.lines, "scored_items": len(samples),
        "samples_per_item": {"min": min(counts, default=0), "max": max(counts, default=0)},
        "unknown_ids_count": len(unknown), "unknown_ids": unknown,
        "duplicate_lines_count": len(responses.duplicates), "duplicate_ids": duplicate_ids,
        "items_without_response_count": len(missing), "items_without_response": missing,
    }
    return samples, report


def report_markdown(report: dict[str, Any], shown: int = 20) -> str:
    """The matching report as summary.md lines: counts, and the first ``shown`` ids of each list."""

    def listed(ids: list[str]) -> str:
        head = ", ".join(ids[:shown])
        return f": {head}" + (f", ... ({len(ids) - shown} more; all in summary.json)" if len(ids) > shown else "") \
            if ids else ""

    per_item = report["samples_per_item"]
    spread = str(per_item["max"]) if per_item["min"] == per_item["max"] else f"{per_item['min']}-{per_item['max']}"
    return (f"Responses: {report['responses_file']} ({report['lines']} lines; {report['scored_items']} items scored, "
            f"{spread} samples each).\n\n"
            f"- unknown ids: {report['unknown_ids_count']}{listed(report['unknown_ids'])}\n"
            f"- duplicate (id, sample) lines: {report['duplicate_lines_count']}{listed(report['duplicate_ids'])}\n"
            f"- items without a response: {report['items_without_response_count']}"
            f"{listed(report['items_without_response'])}\n")
