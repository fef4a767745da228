"""Keep, on view steps only, what the trainer computed for one micro-batch (for ``--log_token_views_every``).

:class:`TokenViewMixin` sits in :class:`pepo.trainer.PEPOTrainer`'s bases. It is disarmed
(``_token_view is None``) on every step except those :class:`pepo.callbacks_token_views.TokenViewsCallback`
arms; then, for the step's first micro-batch only, it keeps references (detached, on the training
device) to what the step already computed:

* from the micro-batch: prompt / completion ids, the completion mask, the sequence advantages TRL
  handed in and the token-level advantages the loss finally used (after PEPO's schedule or VPPO's
  selection and scaling), the total reward of each row, its image;
* from PEPO's statistics (``trainer.last_token_stats``): visual similarity, entropy and weight;
* whatever a method declares through ``trainer._record_token_view(name, tensor)`` (VPPO's dependency
  and selection, PAPO's per-token KL);
* the patch similarity map: during the *same* policy forward, a second set of
  :func:`pepo.hooks.hidden_state_hooks` computes, for the K rows the view will show only, each
  completion token's similarity to every image token, averaged over the hidden states PEPO uses:
  (K, C, V) floats, once per view step. No extra forward.

On other steps the cost is one ``is None`` check per method call, plus attaching each row's total
reward and image reference to the generation batch (a (B,) tensor and a list of references).
"""

from __future__ import annotations

from typing import Any

import torch

from pepo.hooks import hidden_state_hooks

__all__ = ["TokenViewMixin", "choose_rows", "patch_similarity"]

#: generation-batch keys added for the views; TRL shuffles and splits them with every other row key
REWARD_KEY, IMAGES_KEY = "pepo_view_reward", "pepo_view_images"


def choose_rows(rewards: torch.Tensor | list[float], k: int) -> list[int]:
    """Indices of ``k`` rows spread over the reward range: always the lowest and the highest reward.

    Rows are sorted by reward (ties by index) and ``k`` evenly spaced ranks are taken, so a view
    shows both failures and successes. Returns fewer rows when there are fewer; sorted by reward.
    """
    values = [float(v) for v in (rewards.tolist() if isinstance(rewards, torch.Tensor) else rewards)]
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    if k <= 0 or not order:
        return []
    if len(order) <= k:
        return order
    if k == 1:
        return [order[-1]]
    ranks = sorted({round(j * (len(order) - 1) / (k - 1)) for j in range(k)})
    return [order[r] for r in ranks]


def patch_similarity(hidden: torch.Tensor, vision_mask: torch.Tensor, completion_length: int,
                     score_type: str) -> torch.Tensor:
    """(B, C, V_max) float32 similarity of every completion token to every image token of its row.

    ``hidden`` (B, S, D), ``vision_mask`` (B, S). The same similarity as
    :func:`pepo.weights.layer_similarity` before its mean over image tokens (cosine, dot, negative
    L2 / L1 distance); image positions are taken in order and rows with fewer images padded with NaN.
    """
    counts = vision_mask.sum(dim=1)
    v_max = int(counts.max().item()) if hidden.shape[0] else 0
    tokens = hidden[:, -completion_length:].float()
    out = tokens.new_full((hidden.shape[0], completion_length, max(v_max, 1)), float("nan"))
    for b in range(hidden.shape[0]):
        images = hidden[b, vision_mask[b]].float()  # (V_b, D)
        if images.shape[0] == 0:
            continue
        if score_type == "cosine":
            sim = torch.nn.functional.normalize(tokens[b], dim=-1) @ torch.nn.functional.normalize(images, dim=-1).T
        elif score_type == "dot":
            sim = tokens[b] @ images.T
        else:
            sim = -torch.cdist(tokens[b], images, p=2.0 if score_type == "l2" else 1.0,
                               compute_mode="donot_use_mm_for_euclid_dist")
        out[b, :, : images.shape[0]] = sim
    return out


class TokenViewMixin:
    """Collects one micro-batch's token-level quantities on armed steps; see the module docstring."""

    #: None: disarmed. A dict: armed for the current optimizer step (filled by the first micro-batch).
    _token_view: dict[str, Any] | None = None
    #: rows the view shows per process (set by the callback)
    token_view_rows: int = 4
    _patch_rows: list[int] | None = None  # armed for the next policy forward only

    def _record_token_view(self, name: str, tensor: torch.Tensor | None) -> None:
        """Keep ``tensor`` (detached, on its device) under ``name`` on a view step's first micro-batch."""
        view = self._token_view
        if view is None or view.get("_complete") or tensor is None:
            return
        view[name] = tensor.detach()

    # --- rewards and images travel with every row (cheap, so they are there on any step) ------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        # TRL's own aggregation of the gathered (N_all, F) rewards; this process's slice comes first in order
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        total = (rewards_per_func * weights).nansum(dim=1)
        start = self.accelerator.process_index * len(prompts)
        self._view_rewards = total[start : start + len(prompts)].detach()
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        rewards = getattr(self, "_view_rewards", None)
        rows = out["prompt_ids"].shape[0]
        if rewards is not None and rewards.shape[0] == rows:
            out[REWARD_KEY] = rewards.to(out["prompt_ids"].device)
        if inputs and isinstance(inputs[0], dict) and len(inputs) == rows:
            out[IMAGES_KEY] = [(x.get("images") or ([x["image"]] if x.get("image") is not None else []))
                               for x in inputs]
        self._view_rewards = None
        return out

    def get_high_entropy_mask(self, entropies, mask, threshold):
        # TRL's High-Entropy RL token mask (method high_entropy): the view shows the one TRL applied
        selected = super().get_high_entropy_mask(entropies, mask, threshold)
        self._record_token_view("high_entropy_mask", selected)
        return selected

    # --- the view step's first micro-batch ----------------------------------------------------------

    def _compute_loss(self, model, inputs):
        view = self._token_view
        if view is None or view.get("_complete"):
            return super()._compute_loss(model, inputs)
        # the dict the loss reads and the methods rewrite (PEPOTrainer passes its own copy)
        sequence_advantages = inputs["advantages"]
        rewards = inputs.get(REWARD_KEY)
        self._patch_rows = choose_rows(rewards if rewards is not None else sequence_advantages, self.token_view_rows)
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            self._patch_rows = None
        for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", REWARD_KEY):
            self._record_token_view(name, inputs.get(name))
        self._record_token_view("sequence_advantages", sequence_advantages)
        self._record_token_view("final_advantages", inputs["advantages"])
        for name, tensor in (getattr(self, "last_token_stats", None) or {}).items():
            self._record_token_view(name, tensor)
        view["images"] = inputs.get(IMAGES_KEY)
        view["progress"] = float(self.progress)
        view["_complete"] = True
        return loss

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        rows, self._patch_rows = self._patch_rows, None  # the first forward in _compute_loss is the policy's
        if not rows:
            return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                              *args, **kwargs)
        vision_mask = input_ids == self.image_token_id
        capture = getattr(self, "_capture", None)
        layers, norm = (capture.decoder_layers, capture.final_norm) if capture is not None else _decoder(model)
        selected = capture.selected if capture is not None else set(range(len(layers) + 1))
        wanted = torch.tensor(rows, device=input_ids.device)
        total = None
        position = {"row": 0, "rows": 0}

        def on_state(index: int, hidden: torch.Tensor) -> None:
            nonlocal total
            if index == 0:
                position["rows"] = hidden.shape[0]
            if index in selected:
                lo, hi = position["row"], position["row"] + hidden.shape[0]
                take = [r - lo for r in rows if lo <= r < hi]
                if take:
                    idx = torch.tensor(take, device=hidden.device)
                    with torch.no_grad():
                        sim = patch_similarity(hidden.detach()[idx], vision_mask[lo:hi][idx], logits_to_keep,
                                               self.args.vision_score_type)
                    if total is None:
                        total = {}
                    for j, r in enumerate(take):
                        total[r + lo] = sim[j] if r + lo not in total else total[r + lo] + sim[j]
            if index == len(layers):
                position["row"] += position["rows"]

        with hidden_state_hooks(layers, norm, on_state):
            out = super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                             *args, **kwargs)
        if total:
            self._record_token_view("patch_rows", wanted)
            v_max = max(t.shape[-1] for t in total.values())
            stacked = torch.full((len(rows), logits_to_keep, v_max), float("nan"), device=input_ids.device)
            for j, r in enumerate(rows):
                if r in total:
                    stacked[j, :, : total[r].shape[-1]] = total[r] / len(selected)
            self._record_token_view("patch_similarity", stacked)
        return out


def _decoder(model):
    from pepo.hooks import find_text_decoder

    return find_text_decoder(model)
