"""Token views of a training step: records from what the trainer kept, files in the run folder, the page.

A *view* is one JSON record per view step (``token_views/step_N.jsonl``, one line), built by
:func:`build_rollouts` from the tensors :class:`pepo.token_view_capture.TokenViewMixin` kept for one
micro-batch, so nothing is recomputed to look at it. Record keys:

* ``step``, ``method``, ``progress`` (PEPO's schedule p), ``quantities`` (names present, in order);
* ``rollouts``: a list, sorted by reward, each with ``rank`` (process), ``row`` (micro-batch row),
  ``prompt``, ``reward``, ``advantage`` (TRL's sequence advantage), ``tokens`` (each completion token
  decoded to text), ``values`` (quantity -> one number per token, None where undefined),
  ``colors`` (quantity -> ``#rrggbb`` per token, from :func:`pepo.analysis.heatmap.token_colors`),
  ``top_tokens`` (indices of the most-weighted tokens), ``patch`` (``rows``, ``cols``, ``values``:
  the mean similarity of those tokens to every image token, or None) and ``image`` (PNG data URI of
  the image with the patch map over it, or None).

Per-token quantities (whichever the step computed): ``similarity`` (PEPO's visual similarity),
``entropy`` (nats), ``gate`` (PEPO's ``1 + alpha * tanh(centred)``), ``weight`` (w, mean 1),
``schedule`` (``1 - p + p * w``, what multiplies the advantage), ``final_advantage`` (the advantage
the loss used for the token), ``vppo_dependency``, ``vppo_selected``, ``papo_kl``,
``high_entropy_mask``.

:func:`write_step` writes the JSONL line, a ``step_N.js`` twin and rewrites ``index.html`` (all
atomically), so the page works from ``file://`` (browsers refuse ``fetch`` of local files; script
tags are allowed) and a refresh shows the steps written since.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from pepo.analysis.heatmap import _esc, _interp, _SEQUENTIAL, token_colors

__all__ = ["QUANTITY_INFO", "build_rollouts", "gate_values", "patch_overlay", "pick_rollouts", "read_views",
           "render_page", "render_step_page", "write_step", "write_index"]

#: quantity -> (label, unit, heatmap colour mode used for it)
QUANTITY_INFO: dict[str, tuple[str, str, str]] = {
    "weight": ("PEPO weight w", "mean 1 over the response", "weight"),
    "schedule": ("scheduled weight 1 - p + p w", "multiplies the advantage", "weight"),
    "final_advantage": ("advantage used by the loss", "per token", "similarity"),
    "similarity": ("visual similarity", "score type of the run (cosine: unitless)", "similarity"),
    "entropy": ("entropy", "nats", "entropy"),
    "gate": ("PEPO gate 1 + alpha tanh(centred)", "unitless, around 1", "weight"),
    "vppo_dependency": ("VPPO visual dependency", "KL to the masked-image policy", "entropy"),
    "vppo_selected": ("VPPO selected", "1 = trains", "similarity"),
    "papo_kl": ("PAPO per-token KL", "to the masked-image policy", "entropy"),
    "high_entropy_mask": ("High-Entropy mask", "1 = trains", "similarity"),
}
_TOP_TOKENS = 3  # tokens whose patch rows are averaged into the patch map


def gate_values(scores: torch.Tensor, entropies: torch.Tensor, mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """(B, C) PEPO gate ``1 + alpha * tanh(v + h - mean(v + h))``, as in :func:`pepo.weights.pepo_token_weights`.

    Uses pepo.weights' own min-max helpers, so it is the gate the weights were computed with (rows
    that fell back to uniform weights had no gate; their values are still shown).
    """
    from pepo.weights import _masked_minmax, _sanitize

    active = mask.bool()
    mixed = _masked_minmax(_sanitize(scores, active), active) + _masked_minmax(_sanitize(entropies, active), active)
    n = active.sum(dim=-1, keepdim=True).clamp_min(1).to(torch.float32)
    centred = mixed - mixed.sum(dim=-1, keepdim=True) / n
    return 1.0 + alpha * torch.tanh(centred)


def _grid(n: int, image: Image.Image | None) -> tuple[int, int]:
    """(rows, cols) with rows * cols == n and cols / rows closest to the image's aspect ratio."""
    aspect = image.width / image.height if image is not None and image.height else 1.0
    best = (1, n)
    for rows in range(1, n + 1):
        if n % rows == 0 and abs(math.log((n // rows) / rows / aspect)) < abs(math.log(best[1] / best[0] / aspect)):
            best = (rows, n // rows)
    return best


def patch_overlay(image: Image.Image | None, values: Sequence[float], rows: int, cols: int,
                  size: int = 224) -> Image.Image:
    """The image (or grey) with the patch map drawn over it: min-max scaled, blues, 55% opacity.

    ``values``: ``rows * cols`` similarities in row-major order. Returns an RGB image whose longer
    side is ``size`` pixels.
    """
    finite = [v for v in values if v is not None and math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
    heat = Image.new("RGB", (cols, rows))
    stops = _SEQUENTIAL["similarity"][:1] + ((0x3D, 0x8D, 0xC4), (0x08, 0x30, 0x6B))
    for i, v in enumerate(values):
        t = 0.0 if v is None or not math.isfinite(v) or hi == lo else (v - lo) / (hi - lo)
        heat.putpixel((i % cols, i // cols), tuple(int(_interp(stops, t)[k : k + 2], 16) for k in (1, 3, 5)))
    base = (image.convert("RGB") if image is not None else Image.new("RGB", (cols * 16, rows * 16), (128,) * 3))
    scale = size / max(base.size)
    shape = (max(1, round(base.width * scale)), max(1, round(base.height * scale)))
    base = base.resize(shape, Image.LANCZOS)
    return Image.blend(base, heat.resize(shape, Image.NEAREST), 0.55)


def _data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _as_float_list(row: torch.Tensor, keep: torch.Tensor) -> list[float | None]:
    values = row[keep].double().tolist()
    return [v if math.isfinite(v) else None for v in values]


def build_rollouts(view: dict[str, Any], tokenizer: Any, rank: int = 0, gate_alpha: float | None = None,
                   rows: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """One rollout dict per chosen row of a kept micro-batch (see the module docstring for the keys).

    Args:
        view: what :class:`pepo.token_view_capture.TokenViewMixin` kept (tensors (B, C) / (B,)).
        tokenizer: decodes token ids (a tokenizer or a processor with ``.tokenizer``).
        rank: this process's index, recorded with every rollout.
        gate_alpha: PEPO's alpha, to show the gate when similarity and entropy exist (None: no gate).
        rows: micro-batch rows to show; default the rows the patch capture covered.
    """
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    if "completion_ids" not in view:
        return []
    ids = view["completion_ids"].cpu()
    mask = (view.get("mask") if view.get("mask") is not None else view["completion_mask"]).bool().cpu()
    if rows is None:
        rows = view["patch_rows"].tolist() if "patch_rows" in view else list(range(min(4, ids.shape[0])))
    per_token: dict[str, torch.Tensor] = {}
    for name, key in (("similarity", "scores"), ("entropy", "entropies"), ("weight", "weights"),
                      ("vppo_dependency", "vppo_dependency"), ("vppo_selected", "vppo_selected"),
                      ("papo_kl", "papo_kl"), ("high_entropy_mask", "high_entropy_mask")):
        if view.get(key) is not None:
            per_token[name] = view[key].float().cpu()
    if gate_alpha is not None and "similarity" in per_token and "entropy" in per_token and "weight" in per_token:
        per_token["gate"] = gate_values(per_token["similarity"], per_token["entropy"], mask, gate_alpha)
    if "weight" in per_token:
        p = float(view.get("progress", 0.0))
        per_token["schedule"] = 1.0 - p + p * per_token["weight"]
    final = view.get("final_advantages")
    if final is not None:
        final = final.float().cpu()
        per_token["final_advantage"] = (final.unsqueeze(1) if final.dim() == 1 else final).expand_as(mask).clone()
    order = [q for q in QUANTITY_INFO if q in per_token]
    seq_adv = view["sequence_advantages"].float().cpu()
    rewards = view.get("pepo_view_reward")
    images = view.get("images") or []
    patch = view.get("patch_similarity")
    patch_rows = view["patch_rows"].tolist() if "patch_rows" in view else []
    prompt_ids, prompt_mask = view.get("prompt_ids"), view.get("prompt_mask")
    out = []
    for r in rows:
        keep = mask[r]
        token_ids = ids[r][keep].tolist()
        values = {q: _as_float_list(per_token[q][r], keep) for q in order}
        rollout: dict[str, Any] = {
            "rank": rank, "row": int(r),
            "prompt": tok.decode(prompt_ids[r][prompt_mask[r].bool()].tolist(), skip_special_tokens=True)
            if prompt_ids is not None else "",
            "reward": None if rewards is None else float(rewards[r]),
            "advantage": float(seq_adv[r] if seq_adv.dim() == 1 else seq_adv[r][0]),
            "token_ids": token_ids,
            "tokens": [tok.decode([t]) for t in token_ids],
            "values": values,
            "colors": {q: token_colors(values[q], QUANTITY_INFO[q][2]) for q in order},
        }
        rank_by = values.get("weight") or values.get("vppo_dependency") or values.get("entropy") or []
        top = sorted(range(len(rank_by)), key=lambda i: -(rank_by[i] if rank_by[i] is not None else -math.inf))
        rollout["top_tokens"] = top[:_TOP_TOKENS]
        image = images[r][0] if r < len(images) and images[r] else None
        rollout["patch"], rollout["image"] = None, None
        if patch is not None and r in patch_rows and rollout["top_tokens"]:
            sim = patch[patch_rows.index(r)].float().cpu()[keep]  # (C_valid, V)
            chosen = sim[rollout["top_tokens"]].mean(dim=0)
            chosen = chosen[torch.isfinite(chosen)]
            if chosen.numel():
                h, w = _grid(chosen.numel(), image if isinstance(image, Image.Image) else None)
                rollout["patch"] = {"rows": h, "cols": w, "values": [float(v) for v in chosen.tolist()]}
        if isinstance(image, Image.Image):
            p = rollout["patch"]
            shown = patch_overlay(image, p["values"], p["rows"], p["cols"]) if p else image.convert("RGB")
            rollout["image"] = _data_uri(shown)
        out.append(rollout)
    return out


def pick_rollouts(rollouts: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """``k`` rollouts spread over the reward range (lowest and highest included), sorted by reward."""
    from pepo.token_view_capture import choose_rows

    rewards = [r["reward"] if r["reward"] is not None else r["advantage"] for r in rollouts]
    return [rollouts[i] for i in choose_rows(rewards, k)]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_step(folder: str | Path, record: dict[str, Any]) -> Path:
    """Write ``step_N.jsonl`` (one line) and ``step_N.js``, then rewrite ``index.html``; returns the JSONL path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, separators=(",", ":"))
    path = folder / f"step_{record['step']}.jsonl"
    _write_atomic(path, line + "\n")
    # JSON inside a <script> file: escape "</" so no string can close the tag
    _write_atomic(folder / f"step_{record['step']}.js", "pepoView(" + line.replace("</", "<\\/") + ");\n")
    write_index(folder)
    return path


def read_views(folder: str | Path) -> list[dict[str, Any]]:
    """Every complete ``step_N.jsonl`` record of a folder, by step (a half-written file is skipped)."""
    out = []
    for path in Path(folder).glob("step_*.jsonl"):
        try:
            out.append(json.loads(path.read_text()))
        except ValueError:
            continue
    return sorted(out, key=lambda r: r["step"])


def _steps(folder: Path) -> list[int]:
    steps = []
    for path in folder.glob("step_*.js"):
        try:
            steps.append(int(path.stem.split("_", 1)[1]))
        except ValueError:
            continue
    return sorted(steps)


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body { font-family: system-ui, Helvetica, Arial, sans-serif; margin: 1em; color: #111; }
h1 { font-size: 1.2em; margin: 0 0 .3em; } .sub { color: #555; font-size: .9em; }
.bar { display: flex; gap: 1.5em; align-items: center; flex-wrap: wrap; margin: .6em 0; }
#rollouts { display: flex; gap: 1em; align-items: flex-start; overflow-x: auto; }
.rollout { flex: 0 0 300px; border: 1px solid #ccc; border-radius: 6px; padding: .5em; }
.rollout img { width: 100%; image-rendering: pixelated; border: 1px solid #ddd; }
.meta { font-size: .85em; margin: .3em 0; } .prompt { font-size: .8em; color: #444; max-height: 6em; overflow: auto; }
.tokens { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 14px; line-height: 1.9;
          white-space: pre-wrap; word-break: break-word; }
.tok { border-radius: 2px; box-shadow: inset -1px 0 0 rgba(255,255,255,.9); }
.tok:hover { outline: 1px solid #333; } .top { text-decoration: underline 2px; }
</style></head>
<body>
<h1>Token views: __TITLE__</h1>
<div class="sub">Written by the training run (pepo <code>--log_token_views_every</code>); refresh to see new steps.
Underlined: the most-weighted tokens, whose similarity to each image patch is drawn over the image.</div>
<div class="bar">
 <label>step <input type="range" id="step" min="0" max="0" value="0"> <b id="step-label"></b></label>
 <label>colour by <select id="quantity"></select></label>
 <span id="legend" class="sub"></span>
</div>
<div id="rollouts"></div>
<script>
const VIEWS = [];
function pepoView(record) { VIEWS.push(record); }
const INFO = __INFO__;
</script>
__SCRIPTS__
<script>
VIEWS.sort((a, b) => a.step - b.step);
const slider = document.getElementById("step"), select = document.getElementById("quantity");
function num(v) { return v === null || v === undefined ? "n/a" : Number(v).toFixed(3); }
function show() {
  const view = VIEWS[Number(slider.value)];
  if (!view) { document.getElementById("step-label").textContent = "no views yet"; return; }
  document.getElementById("step-label").textContent = view.step + " (" + (Number(slider.value) + 1) + " of " +
    VIEWS.length + "), method " + view.method + ", p = " + num(view.progress);
  const names = view.quantities;
  if (select.options.length !== names.length || Array.from(select.options).some((o, i) => o.value !== names[i])) {
    const keep = select.value;
    select.innerHTML = "";
    for (const q of names) { const o = document.createElement("option"); o.value = q; o.textContent = INFO[q][0]; select.appendChild(o); }
    select.value = names.includes(keep) ? keep : names[0];
  }
  const q = select.value;
  document.getElementById("legend").textContent = q ? INFO[q][0] + " (" + INFO[q][1] + ")" : "";
  const box = document.getElementById("rollouts");
  box.innerHTML = "";
  for (const r of view.rollouts) {
    const div = document.createElement("div"); div.className = "rollout";
    if (r.image) { const img = document.createElement("img"); img.src = r.image; img.alt = "image with patch map"; div.appendChild(img); }
    const meta = document.createElement("div"); meta.className = "meta";
    meta.textContent = "reward " + num(r.reward) + ", advantage " + num(r.advantage) + " (rank " + r.rank + ", row " + r.row + ")";
    div.appendChild(meta);
    const prompt = document.createElement("div"); prompt.className = "prompt"; prompt.textContent = r.prompt; div.appendChild(prompt);
    const toks = document.createElement("div"); toks.className = "tokens";
    r.tokens.forEach((t, i) => {
      const s = document.createElement("span"); s.className = "tok" + (r.top_tokens.includes(i) ? " top" : "");
      s.textContent = t;
      if (q) s.style.backgroundColor = r.colors[q][i];
      s.title = "#" + i + " " + JSON.stringify(t) + "\\n" + names.map(n => n + " " + num(r.values[n][i])).join("\\n");
      toks.appendChild(s);
    });
    div.appendChild(toks);
    box.appendChild(div);
  }
  document.body.dataset.step = view.step; document.body.dataset.quantity = q;
}
slider.max = Math.max(0, VIEWS.length - 1);
const wanted = Number((location.hash.match(/step=(\\d+)/) || [])[1]);
const at = VIEWS.findIndex(v => v.step === wanted);
slider.value = at >= 0 ? at : VIEWS.length - 1;
const qWanted = (location.hash.match(/q=(\\w+)/) || [])[1];
show();
if (qWanted && Array.from(select.options).some(o => o.value === qWanted)) { select.value = qWanted; show(); }
slider.addEventListener("input", show); select.addEventListener("change", show);
</script>
</body></html>
"""


def render_page(title: str, scripts: str) -> str:
    """The page's HTML around ``scripts`` (``<script>`` tags that call ``pepoView(record)``)."""
    return (_PAGE.replace("__TITLE__", _esc(title))
            .replace("__INFO__", json.dumps({k: [v[0], v[1]] for k, v in QUANTITY_INFO.items()}))
            .replace("__SCRIPTS__", scripts))


def render_step_page(record: dict[str, Any], title: str = "") -> str:
    """A self-contained page for one record (the record inlined), e.g. for ``wandb.Html``."""
    line = json.dumps(record, separators=(",", ":")).replace("</", "<\\/")
    return render_page(title or f"step {record['step']}", f"<script>pepoView({line});</script>")


def write_index(folder: str | Path, title: str | None = None) -> Path:
    """(Re)write ``index.html``: loads every ``step_N.js`` of the folder; open it from ``file://``."""
    folder = Path(folder)
    title = title or folder.resolve().parent.name
    scripts = "\n".join(f'<script src="step_{s}.js"></script>' for s in _steps(folder))
    page = render_page(title, scripts)
    path = folder / "index.html"
    _write_atomic(path, page)
    return path
