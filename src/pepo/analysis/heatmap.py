"""Token heatmaps: every response token coloured by its visual similarity, entropy or PEPO weight.

Two outputs, both built from one :mod:`pepo.analysis.records` record at a time:

* :class:`HeatmapWriter` streams one self-contained HTML page per response into
  ``<out_dir>/heatmaps/`` (image embedded as a data URI, no external resources, so the folder can be
  opened from ``file://`` or zipped and mailed) and an ``index.html`` table linking them. The page
  switches its colouring between the three quantities with a few lines of inline JS; the initial
  colouring comes from the URL hash (``page.html#entropy``) so a headless browser can load each one.
* :func:`render_heatmap_png` draws the same colouring as a static PNG for docs and terminals.

The colour scale exists twice, in :func:`token_colors` and in the page's JS, with the same
arithmetic step by step (same doubles, same rounding), so tests can compare the browser's colours
with Python's exactly.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import textwrap
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from PIL import Image  # noqa: E402

from pepo.analysis.records import check_record, safe_stem  # noqa: E402

__all__ = ["MODES", "HeatmapRow", "HeatmapWriter", "render_heatmap_png", "token_colors"]

#: colouring modes, in the order the page offers them
MODES = ("similarity", "entropy", "weight")

#: human-readable name, unit and one-line explanation per mode (shown on the page and the PNG)
MODE_INFO: dict[str, dict[str, str]] = {
    "similarity": {
        "label": "visual similarity",
        "unit": "cosine, unitless",
        "help": "cosine between the token's hidden state and the mean image-token hidden state, averaged "
                "over hidden states (in [-1, 1]); colour runs min → max over this response",
    },
    "entropy": {
        "label": "entropy",
        "unit": "nats",
        "help": "entropy of the next-token distribution the token was sampled from; colour runs min → max "
                "over this response",
    },
    "weight": {
        "label": "PEPO weight",
        "unit": "mean 1 over the response",
        "help": "PEPO token weight w_t (mean 1 over the response); diverging colour centred at 1: white = 1, "
                "green = up-weighted (> 1), purple = down-weighted (< 1)",
    },
}

# Colour stops as (r, g, b) bytes. Light enough at the dark end that black token text stays readable
# (contrast >= 4.5 against black).
_SEQUENTIAL = {
    "similarity": ((0xF7, 0xFB, 0xFF), (0x9E, 0xCA, 0xE1), (0x3D, 0x8D, 0xC4)),  # blues
    "entropy": ((0xFF, 0xF5, 0xEB), (0xFD, 0xAE, 0x6B), (0xF1, 0x69, 0x13)),  # oranges
}
_WEIGHT_LOW = (0x99, 0x70, 0xAB)  # purple: down-weighted
_WEIGHT_NEUTRAL = (0xFF, 0xFF, 0xFF)  # weight exactly 1
_WEIGHT_HIGH = (0x5A, 0xAE, 0x61)  # green: up-weighted
#: colour of a token whose value is missing / not finite (excluded from the min-max)
MISSING_COLOR = "#d9d9d9"


def _hex(rgb: Sequence[int]) -> str:
    return "#" + "".join(f"{c:02x}" for c in rgb)


def _interp(stops: Sequence[Sequence[int]], t: float) -> str:
    """Piecewise-linear colour at ``t`` in [0, 1] (clamped). Mirrored op for op by ``interp`` in the JS."""
    t = min(1.0, max(0.0, t))
    pos = t * (len(stops) - 1)
    i = min(math.floor(pos), len(stops) - 2)
    f = pos - i
    a, b = stops[i], stops[i + 1]
    # floor(x + 0.5), not round(): Python rounds halves to even, JS's Math.round does not
    return _hex([math.floor(a[k] + (b[k] - a[k]) * f + 0.5) for k in range(3)])


def _is_finite(v: Any) -> bool:
    return v is not None and math.isfinite(float(v))


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown heatmap mode {mode!r}; valid modes: {', '.join(MODES)}")


def _bounds(values: Sequence[float | None], mode: str) -> tuple[float, float] | None:
    """The colour scale's (low end, high end) for these values, or None when no value is finite.

    Min-max for similarity / entropy; ``(1 - span, 1 + span)`` for the weight, the symmetric range
    around 1 that covers every weight."""
    _check_mode(mode)
    finite = [float(v) for v in values if _is_finite(v)]
    if not finite:
        return None
    lo, hi = min(finite), max(finite)
    if mode == "weight":
        span = max(hi - 1.0, 1.0 - lo)
        return 1.0 - span, 1.0 + span
    return lo, hi


def token_colors(values: Sequence[float | None], mode: str) -> list[str]:
    """``#rrggbb`` background colour per token, normalised over this response.

    Args:
        values: one value per token (similarity: cosine; entropy: nats; weight: unitless, mean 1).
            ``None`` / NaN / inf get :data:`MISSING_COLOR` and do not count towards the min-max.
        mode: ``"similarity"`` or ``"entropy"`` (sequential scale, min -> low colour, max -> high
            colour; constant values -> low colour) or ``"weight"`` (diverging scale centred at 1:
            1 -> white, the weight furthest from 1 -> full purple (< 1) or green (> 1)).

    Raises:
        ValueError: ``mode`` is not one of :data:`MODES`.
    """
    _check_mode(mode)
    finite = [float(v) for v in values if _is_finite(v)]
    if not finite:
        return [MISSING_COLOR] * len(values)
    lo, hi = min(finite), max(finite)
    out = []
    if mode == "weight":
        span = max(hi - 1.0, 1.0 - lo)
        for v in values:
            if not _is_finite(v):
                out.append(MISSING_COLOR)
            elif span <= 0:  # every weight is exactly 1
                out.append(_hex(_WEIGHT_NEUTRAL))
            else:
                t = (float(v) - 1.0) / span
                out.append(_interp((_WEIGHT_NEUTRAL, _WEIGHT_LOW), -t) if t < 0
                           else _interp((_WEIGHT_NEUTRAL, _WEIGHT_HIGH), t))
        return out
    stops = _SEQUENTIAL[mode]
    for v in values:
        if not _is_finite(v):
            out.append(MISSING_COLOR)
        elif hi == lo:  # constant: nothing to contrast, and no division by zero
            out.append(_hex(stops[0]))
        else:
            out.append(_interp(stops, (float(v) - lo) / (hi - lo)))
    return out


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------

def _num(v: Any) -> str:
    """A value for a data attribute: the shortest repr that round-trips, so JS parses the same double."""
    return "nan" if v is None else repr(float(v))


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.3f}"


def _esc(text: Any) -> str:
    # a literal CR would be normalised to LF by the HTML parser; a character reference survives
    return html.escape(str(text), quote=True).replace("\r", "&#13;")


def _title(meta: dict | None) -> str:
    meta = meta or {}
    parts = [str(meta[k]) for k in ("model", "task") if meta.get(k)]
    return " on ".join(parts) if parts else "unknown model / task"


def _mean(values: Sequence[Any]) -> float | None:
    finite = [float(v) for v in values if _is_finite(v)]
    return sum(finite) / len(finite) if finite else None


def _max(values: Sequence[Any]) -> float | None:
    finite = [float(v) for v in values if _is_finite(v)]
    return max(finite) if finite else None


def _image_data_uri(image: Image.Image, max_side: int) -> str:
    """Base64 PNG data URI of ``image``, downscaled (never upscaled) so its longer side <= ``max_side``."""
    img = image.copy()
    img.thumbnail((max_side, max_side), Image.LANCZOS)
    has_alpha = "A" in img.getbands() or "transparency" in img.info
    img = img.convert("RGBA" if has_alpha else "RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _scales_json() -> str:
    return json.dumps({
        "sequential": {k: [list(s) for s in v] for k, v in _SEQUENTIAL.items()},
        "low": list(_WEIGHT_LOW), "neutral": list(_WEIGHT_NEUTRAL), "high": list(_WEIGHT_HIGH),
        "missing": MISSING_COLOR,
        "units": {m: MODE_INFO[m]["unit"] for m in MODES},
    })


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1.2em auto;
       max-width: 1000px; padding: 0 1em; color: #111; line-height: 1.4; }
h1 { font-size: 1.25em; margin-bottom: 0.2em; }
.sub { color: #555; font-size: 0.9em; }
.top { display: flex; gap: 1.2em; align-items: flex-start; flex-wrap: wrap; margin: 1em 0; }
.top img { max-width: 100%; min-width: 224px; image-rendering: pixelated; border: 1px solid #ccc; }
.qa { flex: 1; min-width: 300px; }
.qa pre { white-space: pre-wrap; font-family: inherit; margin: 0.2em 0 0.8em; background: #f6f6f6;
          padding: 0.4em 0.6em; border-radius: 4px; }
.ok { color: #1a7f37; font-weight: 600; } .bad { color: #b3261e; font-weight: 600; }
.modes { margin: 0.8em 0 0.4em; } .modes label { margin-right: 1.2em; cursor: pointer; }
.legend { display: flex; align-items: center; gap: 0.6em; font-size: 0.85em; margin: 0.3em 0 0.8em; }
#legend-bar { width: 260px; height: 14px; border: 1px solid #999; }
.help { font-size: 0.85em; color: #444; margin: 0.2em 0; }
.help b { color: #111; }
#response { white-space: pre-wrap; font-family: ui-monospace, Menlo, Consolas, "DejaVu Sans Mono", monospace;
            font-size: 14px; line-height: 1.8; border: 1px solid #ddd; padding: 0.6em; border-radius: 4px;
            word-break: break-word; }
.tok { border-radius: 2px; box-shadow: inset -1px 0 0 rgba(255,255,255,0.9); }
.tok:hover { outline: 1px solid #333; }
.missing { color: #888; }
"""

# Colouring. interp() and colors() mirror _interp() and token_colors() in heatmap.py operation for
# operation (same doubles, floor(x + 0.5) rounding) so the browser's colours equal Python's exactly.
_JS = """
const SCALES = __SCALES__;
function hex(rgb) { return "#" + rgb.map(c => c.toString(16).padStart(2, "0")).join(""); }
function interp(stops, t) {
  t = Math.min(1, Math.max(0, t));
  const pos = t * (stops.length - 1);
  const i = Math.min(Math.floor(pos), stops.length - 2);
  const f = pos - i;
  const a = stops[i], b = stops[i + 1];
  return hex([0, 1, 2].map(k => Math.floor(a[k] + (b[k] - a[k]) * f + 0.5)));
}
function bounds(values) {
  let lo = null, hi = null;
  for (const v of values) {
    if (!Number.isFinite(v)) continue;
    if (lo === null || v < lo) lo = v;
    if (hi === null || v > hi) hi = v;
  }
  return [lo, hi];
}
function colors(values, mode) {
  const [lo, hi] = bounds(values);
  if (lo === null) return values.map(() => SCALES.missing);
  if (mode === "weight") {
    const span = Math.max(hi - 1, 1 - lo);
    return values.map(v => {
      if (!Number.isFinite(v)) return SCALES.missing;
      if (span <= 0) return hex(SCALES.neutral);
      const t = (v - 1) / span;
      return t < 0 ? interp([SCALES.neutral, SCALES.low], -t) : interp([SCALES.neutral, SCALES.high], t);
    });
  }
  const stops = SCALES.sequential[mode];
  return values.map(v => {
    if (!Number.isFinite(v)) return SCALES.missing;
    if (hi === lo) return hex(stops[0]);
    return interp(stops, (v - lo) / (hi - lo));
  });
}
function fmt(v) { return v === null ? "n/a" : v.toFixed(3); }
function setMode(name) {
  if (!(name in SCALES.units)) name = "similarity";
  const toks = Array.from(document.querySelectorAll("#response .tok"));
  const values = toks.map(el => parseFloat(el.dataset[name]));
  const cols = colors(values, name);
  toks.forEach((el, i) => { el.style.backgroundColor = cols[i]; });
  const [lo, hi] = bounds(values);
  const bar = document.getElementById("legend-bar");
  let left = lo, right = hi;
  if (name === "weight") {
    bar.style.background = "linear-gradient(to right, " + hex(SCALES.low) + ", " + hex(SCALES.neutral) +
      ", " + hex(SCALES.high) + ")";
    if (lo !== null) { const span = Math.max(hi - 1, 1 - lo); left = 1 - span; right = 1 + span; }
  } else {
    bar.style.background = "linear-gradient(to right, " + SCALES.sequential[name].map(hex).join(", ") + ")";
  }
  document.getElementById("legend-lo").textContent = fmt(left);
  document.getElementById("legend-hi").textContent = fmt(right);
  document.getElementById("legend-text").textContent = "(" + SCALES.units[name] + "; this response: min " +
    fmt(lo) + ", max " + fmt(hi) + (name === "weight" ? "; white = 1)" : ")");
  const radio = document.getElementById("mode-" + name);
  if (radio) radio.checked = true;
  document.body.dataset.mode = name;
}
function modeFromHash() { return (location.hash || "#similarity").slice(1); }
document.querySelectorAll("input[name=mode]").forEach(el => el.addEventListener("change", () => {
  setMode(el.value);
  try { history.replaceState(null, "", "#" + el.value); } catch (e) { /* some file:// setups refuse */ }
}));
window.addEventListener("hashchange", () => setMode(modeFromHash()));
setMode(modeFromHash());
"""


def _token_spans(record: dict) -> str:
    shift = record.get("shift")
    spans = []
    for i, tok in enumerate(record["tokens"]):
        sim, ent, w = record["similarity"][i], record["entropy"][i], record["weight"][i]
        tip = f"#{i} {tok!r}\nsimilarity {_fmt(sim)}\nentropy {_fmt(ent)} nats\nweight {_fmt(w)}"
        attrs = (f'class="tok" data-i="{i}" data-similarity="{_num(sim)}" data-entropy="{_num(ent)}" '
                 f'data-weight="{_num(w)}"')
        if shift is not None:
            tip += f"\nshift {_fmt(shift[i])}"
            attrs += f' data-shift="{_num(shift[i])}"'
        spans.append(f'<span {attrs} title="{_esc(tip)}">{_esc(tok)}</span>')
    return "".join(spans)


def render_heatmap_html(record: dict, meta: dict | None = None, image: Image.Image | None = None,
                        image_max_side: int = 512, index_href: str | None = "index.html") -> str:
    """The self-contained HTML page for one response (see :class:`HeatmapWriter`)."""
    check_record(record)
    title = _title(meta)
    reward = float(record["reward"])
    correct = bool(record.get("correct", reward >= 0.5))
    if image is not None:
        img_html = f'<img src="{_image_data_uri(image, image_max_side)}" alt="prompt image">'
    else:
        img_html = f'<p class="missing">(image not available: {_esc(record.get("image"))})</p>'
    helps = "".join(f'<p class="help"><b>{MODE_INFO[m]["label"]}</b> ({MODE_INFO[m]["unit"]}): '
                    f'{_esc(MODE_INFO[m]["help"])}.</p>' for m in MODES)
    if record.get("shift") is not None:
        helps += ('<p class="help"><b>shift</b> (hover only; in [0, 2]): 1 - cosine between the token\'s hidden '
                  'states with and without the image, averaged over hidden states.</p>')
    radios = "".join(f'<label><input type="radio" name="mode" id="mode-{m}" value="{m}"'
                     f'{" checked" if m == "similarity" else ""}> {MODE_INFO[m]["label"]}</label>' for m in MODES)
    n = len(record["tokens"])
    stats = (f"{n} tokens · mean similarity {_fmt(_mean(record['similarity']))} · mean entropy "
             f"{_fmt(_mean(record['entropy']))} nats · max weight {_fmt(_max(record['weight']))}")
    back = f'<a href="{index_href}">← all responses</a> · ' if index_href else ""
    response = _token_spans(record) if n else '<span class="missing">(empty response)</span>'
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)} · {_esc(record["id"])} #{_esc(record["sample"])}</title>
<style>{_CSS}</style></head>
<body>
<h1>PEPO token heatmap · {_esc(title)}</h1>
<div class="sub">{back}prompt <b>{_esc(record["id"])}</b>, sample {_esc(record["sample"])} · {stats}</div>
<div class="top">{img_html}
<div class="qa"><b>Question</b><pre id="question">{_esc(record["question"])}</pre>
<b>Ground-truth answer</b><pre id="answer">{_esc(record["answer"])}</pre>
<b>Reward</b> <span id="reward">{reward:.3f}</span>
<span class="{"ok" if correct else "bad"}" id="correct">{"correct" if correct else "incorrect"}</span></div>
</div>
<div class="modes">Colour by: {radios}</div>
<div class="legend"><span id="legend-lo"></span><div id="legend-bar"></div><span id="legend-hi"></span>
<span id="legend-text"></span></div>
<div id="response">{response}</div>
{helps}
<script>{_JS.replace("__SCALES__", _scales_json())}</script>
</body></html>
"""


@dataclass(frozen=True, slots=True)
class HeatmapRow:
    """What the index keeps per response: scalars only, never the record's token lists."""

    file: str
    id: str
    sample: int
    reward: float
    correct: bool
    n_tokens: int
    mean_similarity: float | None
    mean_entropy: float | None
    max_weight: float | None


_INDEX_JS = """
function sortBy(col) {
  const body = document.querySelector("#rows tbody");
  const th = document.querySelectorAll("#rows th")[col];
  const asc = th.dataset.dir !== "asc";
  document.querySelectorAll("#rows th").forEach(h => delete h.dataset.dir);
  th.dataset.dir = asc ? "asc" : "desc";
  const key = tr => { const v = tr.children[col].dataset.v; const x = parseFloat(v);
                      return Number.isNaN(x) ? v : x; };
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = key(a), y = key(b);
    const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    return asc ? c : -c;
  });
  rows.forEach(r => body.appendChild(r));
}
document.querySelectorAll("#rows th").forEach((th, i) => th.addEventListener("click", () => sortBy(i)));
"""


class HeatmapWriter:
    """Streams one HTML heatmap page per response and, on :meth:`close`, an ``index.html`` linking them.

    Only a :class:`HeatmapRow` of scalars is kept per response, so memory does not grow with the
    responses' length. Usable as a context manager (the index is written on exit, also after an error,
    so the pages written so far stay reachable).
    """

    def __init__(self, out_dir: Path, meta: dict, image_max_side: int = 512) -> None:
        self.out_dir = Path(out_dir)
        self.dir = self.out_dir / "heatmaps"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.meta = dict(meta or {})
        self.image_max_side = int(image_max_side)
        self.rows: list[HeatmapRow] = []
        self._closed = False

    def __enter__(self) -> HeatmapWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _load_image(self, record: dict) -> Image.Image | None:
        rel = record.get("image")
        path = self.out_dir / rel if rel else None
        if path is None or not path.is_file():
            return None  # the page says the image is missing; the tokens are still worth a look
        with Image.open(path) as im:
            im.load()
            return im.copy()

    def add(self, record: dict, image: Image.Image | None = None) -> Path:
        """Write the page for one response; returns its path.

        Args:
            record: a :mod:`pepo.analysis.records` record (checked with ``check_record``).
            image: the prompt image; when None it is read from ``out_dir / record["image"]``.

        Raises:
            ValueError: a per-token field does not have one value per token (the message names it).
            RuntimeError: the writer is already closed.
        """
        if self._closed:
            raise RuntimeError("HeatmapWriter.add after close()")
        check_record(record)
        if image is None:
            image = self._load_image(record)
        name = f"{len(self.rows):04d}_{safe_stem(str(record['id']))}_{int(record['sample'])}.html"
        path = self.dir / name
        path.write_text(render_heatmap_html(record, self.meta, image, self.image_max_side), encoding="utf-8")
        reward = float(record["reward"])
        self.rows.append(HeatmapRow(
            file=name, id=str(record["id"]), sample=int(record["sample"]), reward=reward,
            correct=bool(record.get("correct", reward >= 0.5)), n_tokens=len(record["tokens"]),
            mean_similarity=_mean(record["similarity"]), mean_entropy=_mean(record["entropy"]),
            max_weight=_max(record["weight"])))
        return path

    def close(self) -> Path:
        """Write ``heatmaps/index.html`` (one sortable row per page) and return its path. Idempotent."""
        self._closed = True
        title = _title(self.meta)
        n = len(self.rows)
        n_correct = sum(r.correct for r in self.rows)
        mean_reward = sum(r.reward for r in self.rows) / n if n else None

        def cell(value: Any, text: str | None = None) -> str:
            shown = _esc(value if text is None else text)
            return f'<td data-v="{_esc("" if value is None else value)}">{shown}</td>'

        body = []
        for r in self.rows:
            body.append(
                "<tr>" + f'<td data-v="{_esc(r.file)}"><a href="{_esc(r.file)}">{_esc(r.file)}</a></td>'
                + cell(r.id) + cell(r.sample) + cell(r.reward, f"{r.reward:.3f}")
                + cell(int(r.correct), "✔ correct" if r.correct else "✘ incorrect") + cell(r.n_tokens)
                + cell(r.mean_similarity, _fmt(r.mean_similarity)) + cell(r.mean_entropy, _fmt(r.mean_entropy))
                + cell(r.max_weight, _fmt(r.max_weight)) + "</tr>")
        headers = ["page", "id", "sample", "reward", "correct", "tokens", "mean similarity (cos)",
                   "mean entropy (nats)", "max weight"]
        summary = (f"{n} responses · {n_correct} correct · mean reward {_fmt(mean_reward)}" if n
                   else "no responses")
        page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Token heatmaps · {_esc(title)}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1.2em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #f3f3f3; cursor: pointer; user-select: none; }}
th[data-dir=asc]::after {{ content: " ▲"; }} th[data-dir=desc]::after {{ content: " ▼"; }}
tr:nth-child(even) td {{ background: #fafafa; }}
</style></head>
<body>
<h1>Token heatmaps · {_esc(title)}</h1>
<p>{summary}. Each page colours every response token by visual similarity (cosine), entropy (nats) or PEPO
weight (mean 1 over the response); click a column header to sort.</p>
<table id="rows"><thead><tr>{"".join(f"<th>{h}</th>" for h in headers)}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
<script>{_INDEX_JS}</script>
</body></html>
"""
        index = self.dir / "index.html"
        index.write_text(page, encoding="utf-8")
        return index


# --------------------------------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------------------------------

_MONO_ADVANCE = 0.6021  # DejaVu Sans Mono advance width, in em (1233 / 2048)


def _cells(ch: str) -> int:
    """Monospace cells a character takes: 2 for wide East-Asian, 0 for combining marks."""
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _layout_tokens(tokens: Sequence[str], cols: int) -> tuple[list[tuple[int, int, int, int, str]], int]:
    """Wrap tokens into a ``cols``-wide monospace grid.

    Returns ([(token index, row, col, cells, text), ...] boxes, number of rows). A token wraps to the
    next row when it does not fit but would on an empty row; longer tokens are split. A newline shows as
    ``↵`` then starts a new row; tabs become 4 spaces; other control characters are dropped."""
    boxes: list[tuple[int, int, int, int, str]] = []
    row = col = 0
    for i, tok in enumerate(tokens):
        tok = tok.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
        pieces = tok.split("\n")
        for j, piece in enumerate(pieces):
            piece = "".join(c for c in piece if unicodedata.category(c) not in ("Cc", "Cf"))
            last = j == len(pieces) - 1
            if not last:
                piece += "↵"
            if not piece and not (last and j == 0):
                continue
            if not piece:
                piece = " "  # an empty token still gets a (one-cell) box
            width = sum(_cells(c) for c in piece)
            if col > 0 and col + width > cols and width <= cols:
                row, col = row + 1, 0
            chunk, chunk_w = "", 0
            for c in piece:  # split pieces longer than what is left of the row
                w = _cells(c)
                if col + chunk_w + w > cols and (chunk_w or col):
                    if chunk:
                        boxes.append((i, row, col, chunk_w, chunk))
                    row, col, chunk, chunk_w = row + 1, 0, "", 0
                chunk += c
                chunk_w += w
            if chunk:
                boxes.append((i, row, col, max(chunk_w, 1), chunk))
                col += max(chunk_w, 1)
            if not last:
                row, col = row + 1, 0
    return boxes, max((b[1] for b in boxes), default=0) + 1


def render_heatmap_png(record: dict, path: Path, mode: str = "weight", image: Image.Image | None = None,
                       meta: dict | None = None, max_tokens: int = 400, cols: int = 96,
                       fontsize: float = 10.0, dpi: int = 150) -> Path:
    """Draw one response's tokens as wrapped boxes coloured with :func:`token_colors`, as a PNG.

    Layout, top to bottom: title (model / task, prompt id, sample, reward), image thumbnail beside the
    question / answer, the tokens (monospace, ``cols`` characters a row, at most ``max_tokens`` drawn
    with a "... (N more tokens)" note), and a colour bar in the mode's unit.

    Args:
        record: a :mod:`pepo.analysis.records` record.
        path: where to write the PNG (parent folders are created).
        mode: one of :data:`MODES`.
        image: the prompt image (a PIL image); None draws no thumbnail.
        meta: the analysis ``meta.json`` dict (``model`` and ``task`` are used when present).

    Returns:
        ``path``.
    """
    _check_mode(mode)
    check_record(record)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = MODE_INFO[mode]
    tokens = list(record["tokens"])
    values = list(record[mode])
    colors = token_colors(values, mode)  # normalised over the whole response, not just the drawn part
    shown = min(len(tokens), max_tokens)
    boxes, n_rows = _layout_tokens(tokens[:shown], cols)

    # all sizes in inches; the figure height follows the content
    pad = 0.35
    cell_w = _MONO_ADVANCE * fontsize / 72
    line_h = 1.6 * fontsize / 72
    text_w = cols * cell_w
    fig_w = text_w + 2 * pad
    small = max(9.0, fontsize - 0.5)
    thumb = None
    if image is not None:
        thumb = image.copy()
        thumb.thumbnail((400, 400), Image.LANCZOS)
        thumb = thumb.convert("RGBA" if "A" in thumb.getbands() else "RGB")
        side = 1.9
        scale = side / max(thumb.size)
        thumb_w, thumb_h = thumb.size[0] * scale, thumb.size[1] * scale
    else:
        thumb_w = thumb_h = 0.0
    qa_left = pad + (thumb_w + 0.25 if thumb is not None else 0.0)
    wrap_chars = max(20, int((fig_w - qa_left - pad) / (0.55 * small / 72)))

    def wrapped(label: str, text: str, max_lines: int) -> list[str]:
        lines = textwrap.wrap(f"{label}: {text}", wrap_chars, replace_whitespace=True) or [f"{label}:"]
        return lines if len(lines) <= max_lines else lines[: max_lines - 1] + [lines[max_lines - 1][:-1] + "…"]

    reward = float(record["reward"])
    correct = bool(record.get("correct", reward >= 0.5))
    qa_lines = (wrapped("Question", str(record["question"]), 10) + wrapped("Answer", str(record["answer"]), 3)
                + [f"Reward: {reward:.3f} ({'correct' if correct else 'incorrect'})",
                   f"Colour: {info['label']} ({info['unit']})"])
    qa_h = len(qa_lines) * 1.45 * small / 72
    title_h = 0.55
    head_h = max(thumb_h, qa_h) + 0.25
    tokens_h = n_rows * line_h
    note_h = 0.3 if shown < len(tokens) else 0.0
    bar_h, bar_label_h = 0.16, 0.55
    fig_h = pad + title_h + head_h + tokens_h + note_h + 0.15 + bar_h + bar_label_h

    def rect(left: float, top: float, width: float, height: float) -> list[float]:
        """Inches from the top-left corner -> figure fractions for add_axes."""
        return [left / fig_w, 1 - (top + height) / fig_h, width / fig_w, height / fig_h]

    fig = plt.figure(figsize=(fig_w, fig_h), dpi=dpi)
    try:
        y = pad * 0.6
        fig.text(pad / fig_w, 1 - y / fig_h, f"PEPO token heatmap · {_title(meta)}", fontsize=12,
                 fontweight="bold", va="top", parse_math=False)
        fig.text(pad / fig_w, 1 - (y + 0.24) / fig_h,
                 f"prompt {record['id']} · sample {record['sample']} · reward {reward:.3f} · {len(tokens)} tokens "
                 f"· coloured by {info['label']}", fontsize=small, va="top", color="#333", parse_math=False)
        y += title_h
        if thumb is not None:
            ax = fig.add_axes(rect(pad, y, thumb_w, thumb_h))
            ax.imshow(thumb)
            ax.set_axis_off()
        fig.text(qa_left / fig_w, 1 - y / fig_h, "\n".join(qa_lines), fontsize=small, va="top",
                 linespacing=1.45, parse_math=False)
        y += head_h

        ax = fig.add_axes(rect(pad, y, text_w, max(tokens_h, line_h)))
        ax.set_xlim(0, cols)
        ax.set_ylim(max(n_rows, 1), 0)
        ax.set_axis_off()
        # one polygon per box; a small gap on the right and top/bottom keeps neighbouring tokens apart
        polys = [[(c, r + 0.08), (c + w - 0.12, r + 0.08), (c + w - 0.12, r + 0.92), (c, r + 0.92)]
                 for _, r, c, w, _ in boxes]
        ax.add_collection(PolyCollection(polys, facecolors=[colors[i] for i, *_ in boxes], edgecolors="none",
                                         antialiased=False))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Glyph missing from font" for exotic characters
            for _, r, c, _, text in boxes:
                ax.text(c, r + 0.5, text, fontsize=fontsize, family="DejaVu Sans Mono", ha="left",
                        va="center", parse_math=False)
        y += tokens_h
        if note_h:
            fig.text(pad / fig_w, 1 - (y + 0.05) / fig_h, f"... ({len(tokens) - shown} more tokens)",
                     fontsize=small, style="italic", color="#555", va="top", parse_math=False)
            y += note_h
        y += 0.15

        bar_w = min(4.5, text_w)
        cax = fig.add_axes(rect(pad, y, bar_w, bar_h))
        bounds = _bounds(values, mode)
        if bounds is None:
            lo, hi = 0.0, 1.0
            strip = [MISSING_COLOR] * 256
        else:
            lo, hi = bounds
            if hi == lo:  # constant values: one colour, centred on the value
                strip = token_colors([lo], mode) * 256
                lo, hi = lo - 0.5, hi + 0.5
            else:
                steps = [lo + (hi - lo) * k / 255 for k in range(256)]
                strip = token_colors(steps, mode)
        rgb = [[tuple(int(c[k:k + 2], 16) for k in (1, 3, 5)) for c in strip]]
        cax.imshow(rgb, aspect="auto", extent=(lo, hi, 0, 1), interpolation="nearest")
        cax.set_yticks([])
        cax.tick_params(labelsize=small)
        if mode == "weight" and bounds is not None:
            cax.set_xticks([lo, 1.0, hi])
        stats = ""
        finite = [float(v) for v in values if _is_finite(v)]
        if finite:
            stats = f"; this response: min {min(finite):.3f}, max {max(finite):.3f}"
        cax.set_xlabel(f"{info['label']} ({info['unit']}{stats})", fontsize=small, loc="left")
        fig.savefig(path, dpi=dpi, facecolor="white")
    finally:
        plt.close(fig)
    return path
