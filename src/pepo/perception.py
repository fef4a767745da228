"""PAPO's and VPPO's per-token quantities, in pure PyTorch (no TRL / transformers import).

Both methods compare the policy's log-probability of each sampled token with the image intact,
``logp`` (B, C), and with the image corrupted, ``logp_masked`` (B, C), through the low-variance KL
estimate of verl / EasyR1 (``low_var_kl``):

    d = clamp(logp_masked - logp, -20, 20),  r = exp(d) = pi_masked / pi,  k = clamp(r - d - 1, -10, 10)

k >= 0, and k = 0 exactly when the two log-probabilities agree (no masking).

* PAPO (Wang et al., ICLR 2026): the implicit perception loss is the token mean of k, *maximised*
  (subtracted from the loss with ``kl_coef``), plus "double entropy": token means of ``-logp`` and
  ``-logp_masked`` added with their coefficients (:func:`papo_terms`).
* VPPO (ICLR 2026): k (clamped to [0, 10], no gradient) is each token's visual dependency; per
  response only the top ceil(fraction x length) tokens keep their policy gradient
  (:func:`vppo_token_mask`), and each response's advantage is scaled by
  ``scale_min + s_hat * (1 - scale_min) / mean(s_hat)``, s_hat the response's mean dependency
  min-max normalised over the batch (:func:`vppo_advantage_scale`). The public code takes min and
  max over the whole update batch of the device and the mean over the micro-batch; the trainer
  does the same with :func:`vppo_normalised_scores` (once per generation batch) and
  :func:`vppo_scale_from_scores` (per micro-batch).

Shapes: B responses, C completion positions; ``mask`` (B, C) marks valid completion tokens.
"""

from __future__ import annotations

import torch

__all__ = ["low_var_kl", "masked_mean", "papo_terms", "vppo_token_mask", "vppo_advantage_scale",
           "vppo_normalised_scores", "vppo_scale_from_scores"]


def low_var_kl(logp: torch.Tensor, logp_masked: torch.Tensor) -> torch.Tensor:
    """(B, C) k3 estimate of KL(pi || pi_masked) per sampled token, clamped as verl / EasyR1 do.

    Gradients flow through whichever input carries them (``logp`` for PAPO's policy term).
    """
    d = (logp_masked - logp).clamp(-20.0, 20.0)
    return (torch.exp(d) - d - 1.0).clamp(-10.0, 10.0)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is true (0 when none is)."""
    maskf = mask.to(values.dtype)
    return (values * maskf).sum() / maskf.sum().clamp(min=1.0)


def papo_terms(logp: torch.Tensor, logp_masked: torch.Tensor, mask: torch.Tensor, kl_coef: float,
               entropy_coef: float, masked_entropy_coef: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PAPO's addition to the policy loss for one micro-batch.

    Returns:
        ``(extra, stats)``: ``extra = -kl_coef * mean(k) + entropy_coef * mean(-logp)
        + masked_entropy_coef * mean(-logp_masked)`` (scalar, means over valid tokens), and the three
        detached means ``kl``, ``entropy``, ``masked_entropy``.
    """
    kl = masked_mean(low_var_kl(logp, logp_masked), mask)
    entropy = masked_mean(-logp, mask)
    masked_entropy = masked_mean(-logp_masked, mask)
    extra = -kl_coef * kl + entropy_coef * entropy + masked_entropy_coef * masked_entropy
    return extra, {"kl": kl.detach(), "entropy": entropy.detach(), "masked_entropy": masked_entropy.detach()}


def vppo_token_mask(dependency: torch.Tensor, mask: torch.Tensor, fraction: float) -> torch.Tensor:
    """(B, C) bool: per response, its top ceil(fraction x n_valid) valid tokens by dependency.

    Ties go to the earlier position (stable sort). Padding is never selected.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    valid = mask.bool()
    scores = dependency.float().masked_fill(~valid, float("-inf"))
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    k = torch.ceil(valid.sum(1).float() * fraction - 1e-6).long().clamp(min=0)  # -1e-6: 0.4 * 5 is 2, not 2.0000001
    return (ranks < k.unsqueeze(1)) & valid


def vppo_advantage_scale(dependency: torch.Tensor, mask: torch.Tensor, scale_min: float,
                         eps: float = 1e-8) -> torch.Tensor:
    """(B,) per-response advantage scale ``scale_min + s_hat * (1 - scale_min) / mean(s_hat)``.

    ``s_hat`` is the response's mean dependency over its valid tokens, min-max normalised over the
    responses that have a valid token. When every response has the same mean (or none has a valid
    token) the scale is 1 (nothing to rank). Rows without valid tokens get 1.
    """
    valid = mask.bool()
    counts = valid.sum(1)
    has = counts > 0
    means = (dependency.float() * valid).sum(1) / counts.clamp(min=1)
    scale = torch.ones_like(means)
    if not has.any():
        return scale
    lo, hi = means[has].min(), means[has].max()
    if hi - lo <= eps:
        return scale
    s_hat = (means - lo) / (hi - lo)
    average = s_hat[has].mean()
    scale[has] = scale_min + s_hat[has] * (1.0 - scale_min) / average.clamp(min=eps)
    return scale


#: VPPO's public code leaves every scale at 1 unless max - min of the mean dependencies exceeds this
VPPO_RANGE_EPS = 1e-6


def vppo_normalised_scores(dependency: torch.Tensor, mask: torch.Tensor, eps: float = VPPO_RANGE_EPS) -> torch.Tensor:
    """(N,) float32 ``s_hat``: each response's mean dependency min-max normalised over the N responses.

    Min and max are taken over the responses with a valid token, as VPPO's public code does over
    its update batch. NaN marks "no scale" (the response keeps scale 1): a response without a valid
    token, and every response when fewer than two responses have a valid token or max - min <= ``eps``.
    """
    valid = mask.bool()
    counts = valid.sum(1)
    has = counts > 0
    means = (dependency.float() * valid).sum(1) / counts.clamp(min=1)
    nan = torch.full_like(means, float("nan"))
    present = means[has]
    if present.numel() < 2:
        return nan
    lo, hi = present.min(), present.max()
    if not hi - lo > eps:
        return nan
    return torch.where(has, ((means - lo) / (hi - lo)).clamp(0.0, 1.0), nan)


def vppo_scale_from_scores(scores: torch.Tensor, scale_min: float, eps: float = 1e-8) -> torch.Tensor:
    """(B,) advantage scale of a micro-batch: ``scale_min + s_hat * (1 - scale_min) / (mean(s_hat) + eps)``.

    ``scores`` are :func:`vppo_normalised_scores` of these B responses (NaN: scale 1); the mean is
    over this micro-batch's non-NaN scores, as in VPPO's public code.
    """
    scores = scores.float()
    has = ~torch.isnan(scores)
    average = torch.nanmean(scores)  # NaN only when every score is, and then every scale is 1 (no host sync)
    return torch.where(has, scale_min + torch.nan_to_num(scores) * (1.0 - scale_min) / (average + eps),
                       torch.ones_like(scores))
