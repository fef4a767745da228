"""PEPO token weights: perception scores, token entropy and their gated fusion.

PEPO (Perception-Exploration Policy Optimization) reweights a GRPO policy loss token by token.
For each completion token t of a response:

* perception score ``VS_t``: similarity of the token's hidden state to the image tokens' hidden
  states, averaged over image tokens j and over hidden layers l:
  ``VS_t = mean_l mean_j sim(h_l[t], h_l[j])`` (``sim`` = cosine by default);
* exploration signal ``H_t``: entropy of the policy's next-token distribution (nats).

Both are min-max normalised over the response's valid tokens (``v``, ``h`` in [0, 1]) and fused by
a gate around 1::

    gate_t = 1 + alpha * tanh((v_t + h_t) - mean_valid(v + h))
    w_t    = n_valid * softmax_valid(VS_t * gate_t / tau)

so ``w >= 0`` and ``mean_valid(w) = 1``; the loss of token t is multiplied by
``1 - p + p * w_t`` where p in [0, 1] is the training progress (:func:`scheduled_weights`).

Everything here is plain PyTorch, computed in float32 whatever the input dtype, and keeps autograd
intact (no in-place writes into tensors that may require grad). Nothing here reads a device value
back to the host except :func:`image_span` (once per batch, not per layer): the per-layer scores
given a span, the entropies and the weights are sync-free, which ``tests/test_sync_free.py`` checks
by compiling them with ``torch.compile(fullgraph=True)`` (a host sync is a graph break there).
"""

from __future__ import annotations

import math
from typing import Iterable, NamedTuple, Sequence

import torch

__all__ = [
    "SCORE_TYPES",
    "PROTOTYPE_SCORE_TYPES",
    "ImageSpan",
    "image_span",
    "layer_similarity",
    "visual_similarity",
    "rows_without_image",
    "token_entropy",
    "fallback_rows",
    "pepo_token_weights",
    "perception_only_weights",
    "exploration_only_weights",
    "scheduled_weights",
]

SCORE_TYPES: tuple[str, ...] = ("cosine", "dot", "l2", "l1")
#: scores against the *mean* image vector (a prototype) rather than the mean over image tokens: ``cosine_to_mean``
#: is cos(h_t, mean_j h_j), VGPO's visual focus score (``pepo.methods.vgpo``). Kept apart from SCORE_TYPES,
#: whose members are all means of per-pair similarities.
PROTOTYPE_SCORE_TYPES: tuple[str, ...] = ("cosine_to_mean",)

# Sequence positions upcast to float32 at a time: bounds the temporary copy of a bf16 layer to
# (B, _CHUNK, D) float32 instead of (B, S, D).
_CHUNK = 1024
# Budget (elements) for one block of pairwise work in the l1/l2 scores and for one block of
# float32 logits in token_entropy.
_BLOCK_ELEMENTS = 1 << 24
# Floor of the min-max range: a response whose values are (numerically) constant normalises to 0
# instead of dividing by ~0.
_RANGE_EPS = 1e-6


# --------------------------------------------------------------------------------------------
# Perception scores
# --------------------------------------------------------------------------------------------


def _check_layer_inputs(hidden: torch.Tensor, vision_mask: torch.Tensor, completion_length: int, score_type: str):
    if score_type not in SCORE_TYPES + PROTOTYPE_SCORE_TYPES:
        raise ValueError(f"score_type must be one of {list(SCORE_TYPES)} or {list(PROTOTYPE_SCORE_TYPES)}, "
                         f"got {score_type!r}")
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        shape = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
        raise ValueError(f"hidden_states must be (B, S, D) tensors, got {shape}")
    if not hidden.is_floating_point():
        raise ValueError(f"hidden_states must be floating point, got {hidden.dtype}")
    if not isinstance(vision_mask, torch.Tensor) or tuple(vision_mask.shape) != tuple(hidden.shape[:2]):
        shape = tuple(vision_mask.shape) if isinstance(vision_mask, torch.Tensor) else type(vision_mask).__name__
        raise ValueError(
            f"vision_mask must have shape (B, S) = {tuple(hidden.shape[:2])} matching hidden_states, got {shape}"
        )
    seq_len = hidden.shape[1]
    if isinstance(completion_length, bool) or not isinstance(completion_length, int):
        raise ValueError(f"completion_length must be an int, got {type(completion_length).__name__}")
    if not 0 < completion_length <= seq_len:
        raise ValueError(f"completion_length must be in [1, S={seq_len}], got {completion_length}")


def rows_without_image(vision_mask: torch.Tensor) -> torch.Tensor:
    """Rows that contain no image token.

    Args:
        vision_mask: (B, S) bool (or 0/1), True at image-token positions.

    Returns:
        (B,) bool, True where the row has no image token (its perception scores are all 0 and
        :func:`pepo_token_weights` should fall back to uniform weights via ``no_image_rows``).
    """
    if not isinstance(vision_mask, torch.Tensor) or vision_mask.dim() != 2:
        raise ValueError("vision_mask must be a (B, S) tensor")
    return ~(vision_mask != 0).any(dim=-1)


class ImageSpan(NamedTuple):
    """Where a batch's image tokens lie, read once on the host so that the per-layer reductions need no sync.

    ``lo``/``hi``: the half-open range of sequence positions holding any row's image tokens (``0, 0``
    when there is none); ``max_count``: the most image tokens of any row (the l1/l2 scores gather
    that many per row).
    """

    lo: int
    hi: int
    max_count: int


def image_span(vision_mask: torch.Tensor) -> ImageSpan:
    """The :class:`ImageSpan` of a (B, S) image mask: ONE device-to-host read for all the layers that use it.

    Any span that covers the mask gives the same scores (up to summation order), so a span read on a
    whole batch serves every row chunk of it (the hooks read it once per ``record()``).

    Args:
        vision_mask: (B, S) bool (or 0/1), True at image-token positions.

    Returns:
        ``ImageSpan(lo, hi, max_count)`` of Python ints.
    """
    if not isinstance(vision_mask, torch.Tensor) or vision_mask.dim() != 2:
        raise ValueError("vision_mask must be a (B, S) tensor")
    batch, seq_len = vision_mask.shape
    if batch == 0 or seq_len == 0:
        return ImageSpan(0, 0, 0)
    mask = vision_mask != 0
    columns = mask.any(dim=0)
    positions = torch.arange(seq_len, device=mask.device)
    lo = torch.where(columns, positions, seq_len).amin()
    hi = torch.where(columns, positions + 1, 0).amax()
    count = mask.sum(dim=1).amax()
    lo, hi, count = (int(v) for v in torch.stack([lo, hi, count]).tolist())  # the one host sync
    return ImageSpan(0, 0, 0) if hi == 0 else ImageSpan(lo, hi, count)


def _image_mean(hidden: torch.Tensor, vision_mask: torch.Tensor, normalize: bool, span: ImageSpan) -> torch.Tensor:
    """(B, D) float32 mean over image positions of (optionally L2-normalised) hidden states."""
    batch, seq_len, dim = hidden.shape
    total = hidden.new_zeros((batch, dim), dtype=torch.float32)
    # Only the span that holds image tokens is read (in a VLM prompt, a small part of the sequence).
    lo, hi = span.lo, min(span.hi, seq_len)
    # A NaN/inf outside the image tokens must not leak into the mean (0 * NaN = NaN). Both forms below
    # keep it out without testing isfinite(...).all() on the host (a sync per layer). Which one runs
    # depends on autograd only, never on the data: without a graph, zero the other positions and sum
    # with one batched mat-vec; in the graph, mask the weighted terms instead, so that backward keeps
    # the chunk (for float32 a view of the layer) rather than a masked copy of it per layer.
    in_graph = torch.is_grad_enabled() and hidden.requires_grad
    for start in range(lo, hi, _CHUNK):
        stop = min(start + _CHUNK, hi)
        keep = vision_mask[:, start:stop]
        chunk = hidden[:, start:stop] if in_graph else torch.where(keep[..., None], hidden[:, start:stop], 0)
        chunk = chunk.float()
        norms = torch.linalg.vector_norm(chunk, dim=-1)  # (B, k); non-finite iff the vector is (or overflows)
        scale = 1.0 / norms.clamp_min(1e-12) if normalize else torch.ones_like(norms)
        if in_graph:
            total = total + torch.where(keep[..., None], chunk * scale[..., None], 0.0).sum(dim=1)
        else:  # the same numbers for finite inputs as an unmasked mat-vec: those positions have weight 0
            total = total + torch.bmm(torch.where(keep, scale, 0.0).unsqueeze(1), chunk).squeeze(1)
    counts = vision_mask.sum(dim=1, keepdim=True).clamp_min(1).to(torch.float32)
    return total / counts


def _completion_dot(hidden: torch.Tensor, completion_length: int, target: torch.Tensor, normalize: bool):
    """(B, C) float32 dot product of each completion token (optionally normalised) with target (B, D)."""
    seq_len = hidden.shape[1]
    first = seq_len - completion_length
    parts = []
    for start in range(first, seq_len, _CHUNK):
        chunk = hidden[:, start : min(start + _CHUNK, seq_len)].float()
        dots = torch.bmm(chunk, target.unsqueeze(2)).squeeze(2)  # (B, k), no normalised copy
        if normalize:  # F.normalize's x / max(||x||, eps), applied to the dot product instead of x
            dots = dots / torch.linalg.vector_norm(chunk, dim=-1).clamp_min(1e-12)
        parts.append(dots)
    return torch.cat(parts, dim=1)


def _completion_distance(
    hidden: torch.Tensor, vision_mask: torch.Tensor, completion_length: int, p: float, span: ImageSpan
):
    """(B, C) float32 mean over image tokens of the p-norm distance to each completion token."""
    batch, seq_len, dim = hidden.shape
    counts = vision_mask.sum(dim=1)
    max_images = min(span.max_count, seq_len) if batch else 0  # from the span: no .item() per layer
    if max_images == 0:
        return hidden.new_zeros((batch, completion_length), dtype=torch.float32)
    # Stable sort on "not image" brings every row's image positions to the front, in order; rows
    # with fewer images are padded with (zeroed) other positions and masked out below.
    order = torch.argsort((~vision_mask).to(torch.uint8), dim=1, stable=True)[:, :max_images]
    valid = torch.arange(max_images, device=hidden.device)[None, :] < counts[:, None]
    images = hidden.gather(1, order[:, :, None].expand(-1, -1, dim)).float()
    images = torch.where(valid[:, :, None], images, 0.0)
    denom = counts.clamp_min(1).to(torch.float32)[:, None]

    step = max(1, _BLOCK_ELEMENTS // max(1, batch * max_images * dim))
    first = seq_len - completion_length
    parts = []
    for start in range(first, seq_len, step):
        tokens = hidden[:, start : min(start + step, seq_len)].float()
        # the mm-based Euclidean shortcut loses precision (|a|^2 + |b|^2 - 2ab); use the direct one
        dist = torch.cdist(tokens, images, p=p, compute_mode="donot_use_mm_for_euclid_dist")
        parts.append(-torch.where(valid[:, None, :], dist, 0.0).sum(dim=-1) / denom)
    return torch.cat(parts, dim=1)


def layer_similarity(
    hidden: torch.Tensor,
    vision_mask: torch.Tensor,
    completion_length: int,
    score_type: str = "cosine",
    span: ImageSpan | None = None,
) -> torch.Tensor:
    """Perception score of ONE hidden layer: mean similarity of each completion token to the image tokens.

    ``score[b, t] = mean_{j : vision_mask[b, j]} sim(hidden[b, S - C + t], hidden[b, j])`` with
    ``sim`` = cosine (``"cosine"``, a zero vector has cosine 0), dot product (``"dot"``), negative
    Euclidean distance (``"l2"``) or negative Manhattan distance (``"l1"``). ``"cosine_to_mean"`` is
    instead ``cos(hidden[b, S - C + t], mean_j hidden[b, j])``, the cosine to the mean image vector
    (VGPO's visual prototype; equal to ``"cosine"`` only when all image vectors have the same norm).

    Cosine and dot never form the (C, V) similarity matrix: the mean over image tokens commutes with
    the inner product, so one (B, D) image mean per layer suffices. l1/l2 compute distances in
    blocks of completion tokens against the gathered image tokens. The input is upcast to float32
    ``_CHUNK`` positions at a time, never as a whole (B, S, D) float32 copy.

    Args:
        hidden: (B, S, D) hidden states, any float dtype.
        vision_mask: (B, S) bool (or 0/1), True at image-token positions; rows may differ.
        completion_length: C, the number of trailing positions scored (1 <= C <= S).
        score_type: one of :data:`SCORE_TYPES`.
        span: the mask's :func:`image_span` (or one read on a batch these rows belong to). Given,
            the function makes no host sync (it compiles with ``torch.compile(fullgraph=True)``);
            omitted, it is read here (one sync).

    Returns:
        (B, C) float32 scores (cosine: unitless in [-1, 1]; dot: squared hidden units; l1/l2:
        minus a distance in hidden units). Rows without image tokens are 0 (detect them with
        :func:`rows_without_image`); non-finite hidden states give non-finite scores. Differentiable.

    Raises:
        ValueError: bad shapes, ``completion_length`` out of range, or unknown ``score_type``.
    """
    _check_layer_inputs(hidden, vision_mask, completion_length, score_type)
    vision_mask = vision_mask.to(device=hidden.device) != 0
    if span is None:
        span = image_span(vision_mask)
    if score_type in ("cosine", "dot"):
        normalize = score_type == "cosine"
        image_mean = _image_mean(hidden, vision_mask, normalize, span)
        scores = _completion_dot(hidden, completion_length, image_mean, normalize)
    elif score_type == "cosine_to_mean":  # cos(h_t, m) with m the plain mean image vector, normalised once
        image_mean = _image_mean(hidden, vision_mask, False, span)
        image_mean = image_mean / torch.linalg.vector_norm(image_mean, dim=-1, keepdim=True).clamp_min(1e-12)
        scores = _completion_dot(hidden, completion_length, image_mean, True)
    else:
        p = 2.0 if score_type == "l2" else 1.0
        scores = _completion_distance(hidden, vision_mask, completion_length, p, span)
    has_image = vision_mask.any(dim=1, keepdim=True)
    # explicit zero: a non-finite completion token times an all-zero image mean would give NaN
    return torch.where(has_image, scores, 0.0)


def visual_similarity(
    hidden_states: Sequence[torch.Tensor],
    vision_mask: torch.Tensor,
    completion_length: int,
    score_type: str = "cosine",
    layers: Iterable[int] | None = None,
) -> torch.Tensor:
    """Perception scores averaged over hidden layers: the mean of :func:`layer_similarity` over layers.

    Args:
        hidden_states: sequence of (B, S, D) tensors, as transformers returns with
            ``output_hidden_states=True`` (embedding output, then every layer); any float dtype.
        vision_mask: (B, S) bool (or 0/1), True at image-token positions.
        completion_length: C, the number of trailing positions scored (1 <= C <= S).
        score_type: ``"cosine"`` (default), ``"dot"``, ``"l2"`` or ``"l1"``; see :func:`layer_similarity`.
        layers: optional indices into ``hidden_states`` (negative allowed; a repeated index counts
            twice); default all.

    Returns:
        (B, C) float32 scores; rows without image tokens are 0.

    Raises:
        ValueError: empty ``hidden_states`` or ``layers``, layers of different shapes, a shape
            mismatch with ``vision_mask``, ``completion_length`` out of range, unknown
            ``score_type``, or a ``layers`` index out of range.
    """
    states = list(hidden_states) if hidden_states is not None else []
    if not states:
        raise ValueError("hidden_states is empty: pass at least one (B, S, D) tensor")
    reference_shape = tuple(states[0].shape) if isinstance(states[0], torch.Tensor) else None
    for i, state in enumerate(states):
        if not isinstance(state, torch.Tensor) or tuple(state.shape) != reference_shape:
            shape = tuple(state.shape) if isinstance(state, torch.Tensor) else type(state).__name__
            raise ValueError(f"hidden_states[{i}] has shape {shape}, expected {reference_shape} like hidden_states[0]")
    n_states = len(states)
    if layers is None:
        indices = list(range(n_states))
    else:
        indices = list(layers)
        if not indices:
            raise ValueError("layers is empty: pass None to use every hidden state")
        bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int) or not -n_states <= i < n_states]
        if bad:
            raise ValueError(f"layers {bad} out of range: use ints in [-{n_states}, {n_states - 1}]")
    total = None
    span = image_span(vision_mask) if isinstance(vision_mask, torch.Tensor) and vision_mask.dim() == 2 else None
    for i in indices:
        score = layer_similarity(states[i], vision_mask, completion_length, score_type, span=span)
        total = score if total is None else total + score
    return total / len(indices)


# --------------------------------------------------------------------------------------------
# Entropy
# --------------------------------------------------------------------------------------------


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` over the last dimension, in nats.

    Computed in float32 from ``log_softmax`` (max-shifted, hence stable for logits of any
    magnitude), a block of rows at a time so the float32 copy of huge-vocabulary logits stays
    bounded. Logits of ``-inf`` (banned tokens) contribute 0.

    Args:
        logits: (..., V) tensor, typically (B, C, V); any float dtype.

    Returns:
        (...) float32 entropies in nats, in [0, log V].
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() < 1 or not logits.is_floating_point():
        raise ValueError("logits must be a floating-point tensor of shape (..., V)")
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    step = max(1, _BLOCK_ELEMENTS // max(1, vocab))
    parts = []
    for start in range(0, flat.shape[0], step):
        log_p = torch.log_softmax(flat[start : start + step].float(), dim=-1)
        p = log_p.exp()
        # p = 0 where log_p = -inf: define 0 * log 0 = 0 instead of NaN
        parts.append(-torch.where(p > 0, p * log_p, 0.0).sum(dim=-1))
    out = torch.cat(parts) if parts else flat.new_zeros((0,), dtype=torch.float32)
    return out.reshape(logits.shape[:-1])


# --------------------------------------------------------------------------------------------
# Token weights
# --------------------------------------------------------------------------------------------


def _as_bool_mask(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def _check_weight_inputs(named: dict[str, torch.Tensor], no_image_rows: torch.Tensor | None = None) -> None:
    shapes = {name: tuple(t.shape) if isinstance(t, torch.Tensor) else None for name, t in named.items()}
    first_name, first_shape = next(iter(shapes.items()))
    for name, shape in shapes.items():
        if shape is None or len(shape) != 2:
            raise ValueError(f"{name} must be a (B, C) tensor, got {shape}")
        if shape != first_shape:
            raise ValueError(f"{name} has shape {shape} but {first_name} has shape {first_shape}; they must match")
    if no_image_rows is not None and (
        not isinstance(no_image_rows, torch.Tensor) or tuple(no_image_rows.shape) != first_shape[:1]
    ):
        shape = tuple(no_image_rows.shape) if isinstance(no_image_rows, torch.Tensor) else None
        raise ValueError(f"no_image_rows must have shape (B,) = {first_shape[:1]}, got {shape}")


def _check_temperature(gate_temperature: float) -> None:
    if not (isinstance(gate_temperature, (int, float)) and math.isfinite(gate_temperature) and gate_temperature > 0):
        raise ValueError(f"gate_temperature must be a finite number > 0, got {gate_temperature!r}")


def fallback_rows(
    vision_scores: torch.Tensor,
    entropies: torch.Tensor,
    completion_mask: torch.Tensor,
    no_image_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rows that take uniform weights instead of PEPO weights.

    A row falls back when it has at least one valid token and either some valid token has a
    non-finite vision score or entropy, or the row is flagged in ``no_image_rows``. Rows with no
    valid token are never flagged (their weights are all 0 anyway).

    Args:
        vision_scores: (B, C) perception scores, any float dtype.
        entropies: (B, C) entropies, any float dtype (pass zeros to ignore them).
        completion_mask: (B, C) bool or 0/1, True on valid completion tokens.
        no_image_rows: optional (B,) bool, rows without image tokens (:func:`rows_without_image`).

    Returns:
        (B,) bool.
    """
    _check_weight_inputs(
        {"vision_scores": vision_scores, "entropies": entropies, "completion_mask": completion_mask}, no_image_rows
    )
    mask = _as_bool_mask(completion_mask)
    bad = (~torch.isfinite(vision_scores) | ~torch.isfinite(entropies)) & mask
    flagged = bad.any(dim=-1)
    if no_image_rows is not None:
        flagged = flagged | _as_bool_mask(no_image_rows).to(flagged.device)
    return flagged & mask.any(dim=-1)


def _sanitize(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """float32 copy with 0 outside ``keep`` so padding/fallback entries cannot produce inf/NaN (nor NaN grads)."""
    return torch.where(keep, values.float(), 0.0)


def _masked_minmax(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row min-max normalisation over masked entries to [0, 1]; 0 outside the mask.

    ``values`` must be finite (see :func:`_sanitize`). The range is floored at ``_RANGE_EPS`` so a
    constant row maps to 0.
    """
    low = torch.where(mask, values, math.inf).amin(dim=-1, keepdim=True)
    high = torch.where(mask, values, -math.inf).amax(dim=-1, keepdim=True)
    has_valid = mask.any(dim=-1, keepdim=True)
    low = torch.where(has_valid, low, 0.0)
    high = torch.where(has_valid, high, 0.0)
    return torch.where(mask, (values - low) / (high - low).clamp_min(_RANGE_EPS), 0.0)


def _masked_softmax_times_n(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``n_valid * softmax`` over masked entries per row; 0 outside the mask and on empty rows.

    ``logits`` must be finite (see :func:`_sanitize`).
    """
    peak = torch.where(mask, logits, -math.inf).amax(dim=-1, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, 0.0)
    # exp(-inf) = 0 with derivative 0: padding gets exactly 0 and no gradient
    exp = torch.where(mask, logits - peak, -math.inf).exp()
    n_valid = mask.sum(dim=-1, keepdim=True).to(torch.float32)
    total = exp.sum(dim=-1, keepdim=True)
    # the peak entry contributes exp(0) = 1, so total >= 1 whenever the row has a valid token
    total = torch.where(n_valid > 0, total, 1.0)
    return exp / total * n_valid


def _uniform_on(rows: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(rows[:, None], mask.to(torch.float32), weights)


def pepo_token_weights(
    vision_scores: torch.Tensor,
    entropies: torch.Tensor,
    completion_mask: torch.Tensor,
    gate_alpha: float = 0.05,
    gate_temperature: float = 1.8,
    no_image_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """PEPO's gated fusion of perception scores and entropies into per-token weights.

    Per row, over valid tokens: ``v``, ``h`` = min-max normalised scores and entropies (range
    floored at 1e-6), ``gate = 1 + alpha * tanh((v + h) - mean_valid(v + h))``,
    ``w = n_valid * softmax_valid(VS * gate / tau)``.

    Args:
        vision_scores: (B, C) perception scores VS (e.g. mean cosine), any float dtype.
        entropies: (B, C) token entropies in nats, any float dtype.
        completion_mask: (B, C) bool or 0/1, True on valid completion tokens.
        gate_alpha: gate strength alpha >= 0 (0 = no entropy influence).
        gate_temperature: softmax temperature tau > 0; larger is flatter.
        no_image_rows: optional (B,) bool of rows without image tokens; they get uniform weights.

    Returns:
        (B, C) float32 weights: >= 0, 0 on padding, mean exactly 1 over each row's valid tokens.
        Rows selected by :func:`fallback_rows` (non-finite inputs, no image) get 1.0 on valid
        tokens; rows without valid tokens are all 0. Never NaN/inf. Differentiable w.r.t. the
        scores and entropies of non-fallback rows.

    Raises:
        ValueError: negative ``gate_alpha``, non-positive ``gate_temperature`` or mismatched shapes.
    """
    if not (isinstance(gate_alpha, (int, float)) and math.isfinite(gate_alpha) and gate_alpha >= 0):
        raise ValueError(f"gate_alpha must be a finite number >= 0, got {gate_alpha!r}")
    _check_temperature(gate_temperature)
    uniform = fallback_rows(vision_scores, entropies, completion_mask, no_image_rows)
    mask = _as_bool_mask(completion_mask)
    active = mask & ~uniform[:, None]
    scores = _sanitize(vision_scores, active)
    mixed = _masked_minmax(scores, active) + _masked_minmax(_sanitize(entropies, active), active)
    n_valid = active.sum(dim=-1, keepdim=True).clamp_min(1).to(torch.float32)
    centred = mixed - mixed.sum(dim=-1, keepdim=True) / n_valid  # padding of mixed is 0
    gate = 1.0 + gate_alpha * torch.tanh(centred)
    weights = _masked_softmax_times_n(scores * gate / gate_temperature, active)
    return _uniform_on(uniform, weights, mask)


def perception_only_weights(
    vision_scores: torch.Tensor,
    completion_mask: torch.Tensor,
    gate_temperature: float,
    no_image_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ablation "perception only": ``n_valid * softmax_valid(VS / tau)``, entropy ignored.

    Identical to :func:`pepo_token_weights` with ``gate_alpha = 0`` (the gate is then 1), with the
    same fallback and edge-case guarantees.

    Args:
        vision_scores: (B, C) perception scores, any float dtype.
        completion_mask: (B, C) bool or 0/1, True on valid tokens.
        gate_temperature: softmax temperature tau > 0.
        no_image_rows: optional (B,) bool of rows without image tokens (uniform weights).

    Returns:
        (B, C) float32 weights, >= 0, 0 on padding, mean 1 over valid tokens.
    """
    return pepo_token_weights(
        vision_scores,
        torch.zeros_like(vision_scores, dtype=torch.float32),
        completion_mask,
        gate_alpha=0.0,
        gate_temperature=gate_temperature,
        no_image_rows=no_image_rows,
    )


def exploration_only_weights(
    entropies: torch.Tensor,
    completion_mask: torch.Tensor,
    gate_temperature: float,
) -> torch.Tensor:
    """Ablation "exploration only": ``n_valid * softmax_valid(h / tau)``, perception ignored.

    ``h`` is the entropy min-max normalised to [0, 1] over the row's valid tokens, so the largest
    to smallest weight ratio within a response is at most ``e^(1/tau)``: the same order of spread
    as the cosine-based PEPO weights (cosine scores lie in [-1, 1]). Rows with a non-finite valid
    entropy fall back to uniform weights (as :func:`fallback_rows` with zero vision scores).

    Args:
        entropies: (B, C) token entropies in nats, any float dtype.
        completion_mask: (B, C) bool or 0/1, True on valid tokens.
        gate_temperature: softmax temperature tau > 0.

    Returns:
        (B, C) float32 weights, >= 0, 0 on padding, mean 1 over valid tokens, never NaN/inf.
    """
    _check_temperature(gate_temperature)
    uniform = fallback_rows(torch.zeros_like(entropies, dtype=torch.float32), entropies, completion_mask)
    mask = _as_bool_mask(completion_mask)
    active = mask & ~uniform[:, None]
    normalised = _masked_minmax(_sanitize(entropies, active), active)
    weights = _masked_softmax_times_n(normalised / gate_temperature, active)
    return _uniform_on(uniform, weights, mask)


def scheduled_weights(weights: torch.Tensor, progress: float) -> torch.Tensor:
    """Blend uniform and PEPO weights with the training progress: ``1 - p + p * w``.

    Args:
        weights: (B, C) token weights (e.g. from :func:`pepo_token_weights`).
        progress: p in [0, 1], fraction of training done (0 = plain GRPO, 1 = full PEPO weights).

    Returns:
        (B, C) tensor of ``weights``' dtype. Padding is not special-cased (the loss masks it).

    Raises:
        ValueError: ``progress`` is not a finite number in [0, 1].
    """
    if isinstance(progress, bool) or not isinstance(progress, (int, float)) or not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be a float in [0, 1], got {progress!r}")
    return 1.0 - progress + progress * weights
