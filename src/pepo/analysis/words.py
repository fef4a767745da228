"""Which words are perception and which exploration tokens (the paper's Figure 3, middle/right).

:class:`WordStats` consumes records (``pepo.analysis.records``) one at a time and keeps, per
normalised word, only a count and the sums of the per-token visual similarity (cosine), entropy
(nats) and PEPO weight. Words are counted per *token*: a word the tokenizer splits into pieces
contributes each piece separately, which is what the per-token weights act on. The words with the
highest mean similarity are the perception words (numbers, colours, object names), those with the
highest mean entropy the exploration words ("wait", "so", "but").

Word clouds are drawn without the ``wordcloud`` package: :func:`layout_cloud` places the words'
boxes greedily along an Archimedean spiral from the canvas centre (deterministic, no randomness)
and :func:`render_cloud` draws them with PIL.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pepo.analysis.records import check_record

__all__ = [
    "RANK_BY",
    "PlacedWord",
    "WordStats",
    "font_sizes",
    "layout_cloud",
    "normalize_word",
    "render_cloud",
]

#: ``by`` values of :meth:`WordStats.table` -> (per-token field, unit)
RANK_BY = {"similarity": "cosine", "entropy": "nats", "weight": "PEPO weight, mean 1 per response"}

#: markers tokenizers put in decoded pieces: byte-level BPE space/newline/tab (GPT-2, Qwen) and
#: SentencePiece's word boundary
_BPE_MARKERS = "\u0120\u010a\u0109\u2581"
_TAG = re.compile(r"</?\|?[A-Za-z_][\w|-]*/?>")


def _is_word_char(ch: str) -> bool:
    # letters, digits and marks are word material; punctuation (P*), symbols (S*), separators and
    # control characters are not (so "," "\n" "$" "**" and U+FFFD from split UTF-8 bytes drop out)
    return unicodedata.category(ch)[0] in "LNM"


def normalize_word(token: str) -> str | None:
    """The lowercase word a decoded token stands for, or ``None`` if it is not a word.

    Strips whitespace, BPE markers (``'Ġ'``, ``'Ċ'``, ``'ĉ'``, ``'▁'``) and punctuation/symbols at
    both ends (``" wait,"`` -> ``"wait"``, ``"(3"`` -> ``"3"``; inner ones stay: ``"3.5"``). Digits
    are kept: numbers are perception words. Tokens with no letter or digit give ``None``, and so do
    markup tags such as ``<answer>`` or ``</think>`` (response format, not words).
    """
    text = token.translate({ord(c): " " for c in _BPE_MARKERS}).strip()
    if _TAG.fullmatch(text):
        return None
    start, end = 0, len(text)
    while start < end and not _is_word_char(text[start]):
        start += 1
    while end > start and not _is_word_char(text[end - 1]):
        end -= 1
    word = text[start:end].lower()
    return word or None


class WordStats:
    """Streaming per-word counters: count and sums of similarity, entropy and weight.

    Memory is one 4-number entry per distinct word, whatever the number of records.

    Args:
        min_count: a word enters the tables once seen this many times.
        ignore: token strings never counted (e.g. the tokenizer's special tokens such as
            ``<|im_end|>``: they are format, not words).
    """

    def __init__(self, min_count: int = 3, ignore: Iterable[str] = ()) -> None:
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        self.min_count = min_count
        self.ignore = frozenset(ignore)
        self.stats: dict[str, list[float]] = {}  # word -> [count, sum sim, sum entropy, sum weight]
        self.n_responses = 0
        self.n_tokens = 0
        self.n_word_tokens = 0

    def add(self, record: dict) -> None:
        """Count every token of one record (fields checked) under its :func:`normalize_word`."""
        check_record(record)
        self.n_responses += 1
        self.n_tokens += len(record["tokens"])
        for token, sim, ent, wt in zip(record["tokens"], record["similarity"], record["entropy"], record["weight"]):
            word = None if token in self.ignore else normalize_word(token)
            if word is None:
                continue
            entry = self.stats.setdefault(word, [0, 0.0, 0.0, 0.0])
            entry[0] += 1
            entry[1] += float(sim)
            entry[2] += float(ent)
            entry[3] += float(wt)
            self.n_word_tokens += 1

    def table(self, by: str, top: int = 30) -> list[dict]:
        """The ``top`` words with count >= ``min_count``, by descending mean ``by``.

        ``by`` is ``"similarity"`` (cosine), ``"entropy"`` (nats) or ``"weight"``. Rows:
        ``rank`` (1-based), ``word``, ``count``, ``mean_similarity``, ``mean_entropy``,
        ``mean_weight``. Ties are broken by higher count, then alphabetically, so the order is
        deterministic.
        """
        if by not in RANK_BY:
            raise ValueError(f"by must be one of {', '.join(map(repr, RANK_BY))}; got {by!r}")
        if top < 0:
            raise ValueError(f"top must be >= 0, got {top}")
        rows = [
            {"word": w, "count": int(c), "mean_similarity": s / c, "mean_entropy": e / c, "mean_weight": x / c}
            for w, (c, s, e, x) in self.stats.items() if c >= self.min_count
        ]
        rows.sort(key=lambda r: (-r[f"mean_{by}"], -r["count"], r["word"]))
        return [{"rank": i + 1, **row} for i, row in enumerate(rows[:top])]

    def n_qualifying(self) -> int:
        """Number of distinct words seen at least ``min_count`` times."""
        return sum(1 for c, *_ in self.stats.values() if c >= self.min_count)

    def write(self, out_dir: str | Path, meta: dict, top: int = 30, cloud_words: int = 60) -> dict:
        """Write ``words.json``, ``words.md``, ``wordcloud_similarity.png`` and
        ``wordcloud_entropy.png`` into ``out_dir``; return the JSON dict.

        Tables hold the ``top`` words; each cloud shows up to ``cloud_words`` words sized by their
        mean similarity / entropy. ``meta`` (the analysis ``meta.json``) names model and task.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model, task = meta.get("model", "?"), meta.get("task", "?")
        tables = {by: self.table(by, top) for by in ("similarity", "entropy")}
        payload = {
            "model": meta.get("model"), "task": meta.get("task"), "min_count": self.min_count,
            "n_responses": self.n_responses, "n_tokens": self.n_tokens, "n_word_tokens": self.n_word_tokens,
            "n_words": len(self.stats), "n_words_qualifying": self.n_qualifying(),
            "similarity": tables["similarity"], "entropy": tables["entropy"],
        }
        (out_dir / "words.json").write_text(json.dumps(payload, indent=1, ensure_ascii=False))
        (out_dir / "words.md").write_text(self._markdown(tables, model, task))

        for by, label, unit in (("similarity", "Perception words", "mean visual similarity (cosine)"),
                                ("entropy", "Exploration words", "mean token entropy (nats)")):
            rows = self.table(by, cloud_words)
            render_cloud(
                [(r["word"], r[f"mean_{by}"]) for r in rows], out_dir / f"wordcloud_{by}.png",
                title=f"{label}: {model} on {task}",
                subtitle=f"font size: {unit}, scaled between the shown words' min and max; "
                         f"words seen >= {self.min_count} times",
                empty_message=f"no word occurs at least {self.min_count} times",
            )
        return payload

    def _markdown(self, tables: dict[str, list[dict]], model: str, task: str) -> str:
        lines = [
            f"# Perception and exploration words: {model} on {task}", "",
            f"{self.n_responses} responses, {self.n_tokens} tokens ({self.n_word_tokens} word tokens, "
            f"{len(self.stats)} distinct words, {self.n_qualifying()} seen at least {self.min_count} times). "
            "Means are over the word's token occurrences; visual similarity is the cosine between the "
            "token's hidden state and the image tokens' (unitless, in [-1, 1]), entropy is in nats, "
            "the PEPO weight has mean 1 per response.", "",
        ]
        header = ("| rank | word | count | mean visual similarity (cosine) | mean entropy (nats) | "
                  "mean PEPO weight |\n|---:|---|---:|---:|---:|---:|")
        for by, heading in (("similarity", "Perception words (highest mean visual similarity)"),
                            ("entropy", "Exploration words (highest mean entropy)")):
            lines += [f"## {heading}", ""]
            if tables[by]:
                lines.append(header)
                for r in tables[by]:
                    word = r["word"].replace("|", "\\|")
                    lines.append(f"| {r['rank']} | {word} | {r['count']} | {r['mean_similarity']:.4f} | "
                                 f"{r['mean_entropy']:.4f} | {r['mean_weight']:.4f} |")
            else:
                lines.append(f"_No word occurs at least {self.min_count} times._")
            lines.append("")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# word clouds


@dataclass(frozen=True)
class PlacedWord:
    """A word placed on the cloud canvas: font size (px) and ink box ``[x0, x1) x [y0, y1)`` (px)."""

    word: str
    size: int
    box: tuple[int, int, int, int]


@lru_cache(maxsize=256)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # DejaVu Sans ships with matplotlib (a dependency) and covers more scripts than Pillow's
    # built-in font; Pillow >= 10.1's scalable default is the fallback, its bitmap font the last resort
    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except Exception:  # noqa: BLE001 - any font problem falls through to the next option
        pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no size argument
        return ImageFont.load_default()


def _text_box(word: str, size: int) -> tuple[int, int, int, int]:
    return tuple(int(v) for v in _font(size).getbbox(word))  # (left, top, right, bottom) from the anchor


def font_sizes(scores: Sequence[float], min_size: int = 14, max_size: int = 64) -> list[int]:
    """Font sizes (px) linear in ``scores`` between ``min_size`` (lowest) and ``max_size`` (highest).

    All-equal scores (or a single word) get the midpoint size.
    """
    if not scores:
        return []
    lo, hi = min(scores), max(scores)
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return [round((min_size + max_size) / 2)] * len(scores)
    return [round(min_size + (max_size - min_size) * (s - lo) / (hi - lo)) for s in scores]


def _spiral(width: int, height: int, step: float = 3.0) -> np.ndarray:
    """(N, 2) centre points of an Archimedean spiral r = a t from the canvas centre, about ``step``
    px apart along the curve, squashed to the canvas' aspect ratio, out to where it covers it."""
    a = 1.5  # px of radius per radian: turns 2 pi a ~ 9.4 px apart
    r_max = math.hypot(width, height) / 2
    # arc length of r = a t is ~ a t^2 / 2, so equally spaced arc lengths give t = sqrt(2 s / a)
    n = int(a * (r_max / a) ** 2 / 2 / step) + 2
    t = np.sqrt(2.0 * step * np.arange(n) / a)
    r = a * t
    aspect = height / width
    return np.stack([width / 2 + r * np.cos(t), height / 2 + aspect * r * np.sin(t)], axis=1)


def layout_cloud(words: Sequence[tuple[str, int]], width: int, height: int, pad: int = 2,
                 min_size: int = 8) -> list[PlacedWord]:
    """Place ``(word, font size px)`` pairs, largest first in the given order, on a width x height canvas.

    Each word's ink box is tried at successive points of an Archimedean spiral from the centre; the
    first position whose box (grown by ``pad`` px) overlaps no placed box and stays on the canvas
    wins. A word that fits nowhere is retried at 80% of its size down to ``min_size`` and dropped
    after that. Deterministic. Returns the placed words; their boxes are pairwise disjoint.
    """
    centres = _spiral(width, height)
    placed: list[PlacedWord] = []
    boxes = np.zeros((0, 4), dtype=np.int64)  # placed boxes grown by pad
    for word, size in words:
        size = int(size)
        while size >= min_size:
            left, top, right, bottom = _text_box(word, size)
            w, h = max(1, right - left), max(1, bottom - top)
            x0 = np.round(centres[:, 0] - w / 2).astype(np.int64)
            y0 = np.round(centres[:, 1] - h / 2).astype(np.int64)
            ok = (x0 >= 0) & (y0 >= 0) & (x0 + w <= width) & (y0 + h <= height)
            for bx0, by0, bx1, by1 in boxes:  # vectorised over all spiral positions
                ok &= ~((x0 < bx1) & (bx0 < x0 + w) & (y0 < by1) & (by0 < y0 + h))
            hit = np.flatnonzero(ok)
            if hit.size:
                i = hit[0]
                box = (int(x0[i]), int(y0[i]), int(x0[i]) + w, int(y0[i]) + h)
                placed.append(PlacedWord(word, size, box))
                grown = [box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad]
                boxes = np.vstack([boxes, np.array([grown], dtype=np.int64)])
                break
            size = int(size * 0.8)
    return placed


def _fit_font(text: str, size: int, max_width: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    while size > 8 and _text_box(text, size)[2] > max_width:
        size -= 1
    return _font(size)


def render_cloud(words: Sequence[tuple[str, float]], path: str | Path, title: str, subtitle: str = "",
                 width: int = 1000, height: int = 620, empty_message: str = "no words to show",
                 min_size: int = 14, max_size: int = 64) -> list[PlacedWord]:
    """Draw a word cloud PNG of ``(word, score)`` pairs (highest score first) and return the layout.

    Font size is linear in the score (:func:`font_sizes`); colour follows rank (dark = high). The
    title band on top names the figure; with no words the canvas states ``empty_message``.
    """
    band = 64  # title band (px)
    image = Image.new("RGB", (width, height + band), "white")
    draw = ImageDraw.Draw(image)
    draw.text((12, 8), title, fill="black", font=_fit_font(title, 22, width - 24))
    if subtitle:
        draw.text((12, 38), subtitle, fill=(90, 90, 90), font=_fit_font(subtitle, 14, width - 24))
    draw.line([(0, band - 2), (width, band - 2)], fill=(200, 200, 200))
    placed: list[PlacedWord] = []
    if words:
        # few words would leave the canvas nearly empty: enlarge them (layout_cloud shrinks misfits)
        scale = min(3.0, max(1.0, math.sqrt(40 / len(words))))
        sizes = font_sizes([s for _, s in words], round(min_size * scale), round(max_size * scale))
        placed = layout_cloud([(w, z) for (w, _), z in zip(words, sizes)], width, height)
        import matplotlib

        cmap = matplotlib.colormaps["viridis"]
        for i, p in enumerate(placed):
            # rank 0 darkest; stop at 0.85 so the last words stay readable on white
            r, g, b, _ = cmap(0.85 * i / max(1, len(placed) - 1))
            left, top, _, _ = _text_box(p.word, p.size)
            draw.text((p.box[0] - left, p.box[1] + band - top), p.word, font=_font(p.size),
                      fill=(int(r * 255), int(g * 255), int(b * 255)))
        if len(placed) < len(words):
            note = f"{len(placed)} of {len(words)} words fit"
            draw.text((width - 12 - _text_box(note, 12)[2], height + band - 20), note, fill=(120, 120, 120),
                      font=_font(12))
    else:
        font = _fit_font(empty_message, 28, width - 40)
        left, top, right, bottom = _text_box(empty_message, font.size if hasattr(font, "size") else 28)
        draw.text(((width - (right - left)) / 2 - left, band + (height - (bottom - top)) / 2 - top),
                  empty_message, fill=(120, 120, 120), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return placed
