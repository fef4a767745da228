"""Capture PEPO's perception scores from a forward pass that is already running.

PEPO needs, for every completion token, the similarity of its hidden state to the image tokens'
hidden states, averaged over all hidden states the model would return with
``output_hidden_states=True`` (the embedding output, then every decoder layer, the last one after
the final norm). Asking the model for ``output_hidden_states`` keeps an (L+1, B, S, D) stack
alive until the loss is computed; instead we register hooks on the text decoder and reduce each
layer to a (B, C) score the moment it appears, so the only extra memory is one (B, C) float32
accumulator and the reduction's small temporary buffers.

Hidden state ``i`` of transformers' convention is the *input* of decoder layer ``i`` for
``i < L`` and the output of the final norm for ``i = L``. Forward pre-hooks on each decoder layer
plus a forward hook on the final norm therefore see exactly the same L+1 tensors (a test checks
this against ``output_hidden_states=True``).

Hooks are registered on entry to :meth:`VisualScoreCapture.record` and removed on exit, so they
never fire during generation, reference-model passes, or the recomputation that gradient
checkpointing performs during backward.

No host syncs in the hooks: ``record()`` reads where the image tokens lie once
(:func:`pepo.weights.image_span`, one device-to-host read per ``record()``, whatever the number of
layers or forwards), and each layer's reduction is then pure device work (no ``nonzero``, no
``.item()``, no branch on a device value), so the GPU queue never drains inside a forward.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from pepo.weights import ImageSpan, image_span, layer_similarity

__all__ = ["find_text_decoder", "hidden_state_hooks", "VisualScoreCapture"]

_VISION_NAME_HINTS = ("vision", "visual", "image_tower", "vit")


def find_text_decoder(model: nn.Module) -> tuple[nn.ModuleList, nn.Module]:
    """Locate the language model's decoder layers and its final norm inside any VLM wrapper.

    Works through PEFT, DDP and DeepSpeed wrappers because it walks ``named_modules``. The text
    decoder is the module that owns ``embed_tokens``, a ``layers`` ModuleList and a ``norm``;
    vision towers are excluded by name. When several match, the one with most layers wins.

    Returns:
        ``(layers, norm)``: the ``nn.ModuleList`` of decoder layers and the final-norm module.

    Raises:
        ValueError: if no such module exists (the model is not a supported decoder-only VLM).
    """
    best: tuple[nn.ModuleList, nn.Module] | None = None
    for name, module in model.named_modules():
        if any(hint in name.lower() for hint in _VISION_NAME_HINTS):
            continue
        layers = getattr(module, "layers", None)
        norm = getattr(module, "norm", None)
        if (
            isinstance(layers, nn.ModuleList)
            and len(layers) > 0
            and isinstance(norm, nn.Module)
            and hasattr(module, "embed_tokens")
        ):
            if best is None or len(layers) > len(best[0]):
                best = (layers, norm)
    if best is None:
        raise ValueError(
            f"Could not find the text decoder of {type(model).__name__}: expected a sub-module with "
            "`embed_tokens`, a `layers` ModuleList and a final `norm` (transformers' decoder layout). "
            "PEPO's hidden-state capture supports transformers' decoder-only VLMs; for other models "
            "compute scores with `pepo.weights.visual_similarity` from `output_hidden_states`."
        )
    return best


@contextmanager
def hidden_state_hooks(
    layers: nn.ModuleList, norm: nn.Module, on_state: Callable[[int, torch.Tensor], None]
) -> Iterator[None]:
    """Call ``on_state(i, hidden)`` with each of the L+1 hidden states of every forward while active.

    ``i`` follows transformers' ``output_hidden_states`` convention: ``i < L`` is the input of
    decoder layer ``i`` (a forward pre-hook), ``i = L`` the output of the final norm. ``hidden`` is
    (B, S, D), in the order the forward produces them. The hooks are removed on exit.
    """
    last = len(layers)

    def pre_hook(index: int):
        def hook(module, args, kwargs):
            on_state(index, args[0] if args else kwargs["hidden_states"])

        return hook

    handles = [layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    handles.append(norm.register_forward_hook(lambda module, args, output: on_state(last, output)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class VisualScoreCapture:
    """Reduce per-layer hidden states to per-token visual-similarity scores during a forward.

    Usage::

        capture = VisualScoreCapture(model, score_type="cosine")
        with capture.record(vision_mask, completion_length):
            model(**inputs)            # any number of forwards over consecutive row chunks
        scores = capture.scores        # (B, C) float32, mean over the selected hidden states

    Args:
        model: the policy (possibly wrapped by PEFT/DDP/DeepSpeed).
        score_type: ``cosine`` | ``dot`` | ``l2`` | ``l1`` (see :func:`pepo.weights.layer_similarity`).
        layers: optional indices into the L+1 hidden states (negative allowed); default all.
    """

    def __init__(self, model: nn.Module, score_type: str = "cosine", layers: Sequence[int] | None = None):
        self.decoder_layers, self.final_norm = find_text_decoder(model)
        self.score_type = score_type
        n_states = len(self.decoder_layers) + 1
        if layers is None:
            self.selected = set(range(n_states))
        else:
            bad = [i for i in layers if not -n_states <= i < n_states]
            if bad:
                raise ValueError(
                    f"vision_layers {bad} out of range: the model returns {n_states} hidden states "
                    f"(embedding output + {n_states - 1} layers); use indices in [-{n_states}, {n_states - 1}]."
                )
            self.selected = {i % n_states for i in layers}
        self.num_hidden_states = n_states
        self.scores: torch.Tensor | None = None
        self.seconds = 0.0  # host time spent inside the reductions, for the overhead metric
        self._vision_mask: torch.Tensor | None = None
        self._span: ImageSpan | None = None  # read once per record(): the layers' reductions need no sync
        self._completion_length = 0
        self._row = 0  # first row of the forward in progress (TRL may chunk the batch)
        self._rows_in_forward = 0
        self._grad = False

    @contextmanager
    def record(
        self, vision_mask: torch.Tensor, completion_length: int, with_grad: bool = False
    ) -> Iterator["VisualScoreCapture"]:
        """Arm the hooks for forwards over ``vision_mask``'s rows, in order.

        Args:
            vision_mask: (B, S) bool, True at image-token positions of the full batch.
            completion_length: C, the number of trailing positions to score.
            with_grad: keep the reduction in the autograd graph. Only for verifying that detached
                weights give the same on-policy gradient; training always uses ``False``.
        """
        self.scores = torch.zeros(
            vision_mask.shape[0], completion_length, dtype=torch.float32, device=vision_mask.device
        )
        self.seconds = 0.0
        self._vision_mask = vision_mask
        self._span = image_span(vision_mask)  # the one host sync of this record(), not one per layer
        self._completion_length = completion_length
        self._row = 0
        self._rows_in_forward = 0
        self._grad = with_grad
        try:
            with hidden_state_hooks(self.decoder_layers, self.final_norm, self._on_state):
                yield self
        finally:
            self._vision_mask = None
            self._span = None
        if self._row != vision_mask.shape[0]:
            raise RuntimeError(
                f"PEPO captured hidden states for {self._row} rows but the batch has {vision_mask.shape[0]}: "
                "the forward did not run through the text decoder as expected."
            )
        self.scores = self.scores / len(self.selected)

    def _on_state(self, index: int, hidden: torch.Tensor) -> None:
        if index == 0:  # a forward starts: it covers the next hidden.shape[0] rows of the batch
            self._rows_in_forward = hidden.shape[0]
        if index in self.selected:
            self._accumulate(hidden)
        if index == self.num_hidden_states - 1:
            self._row += self._rows_in_forward
            self._rows_in_forward = 0

    def layer_scores(self, hidden: torch.Tensor, rows: slice) -> torch.Tensor:
        """(b, C) float32 scores of one hidden state (b, S, D) for batch rows ``rows``; inside ``record()`` only.

        What each hook computes: device work only, no host sync (the image span was read by
        ``record()``), so it compiles with ``torch.compile(fullgraph=True)``.
        """
        return layer_similarity(hidden, self._vision_mask[rows], self._completion_length, self.score_type,
                                span=self._span)

    def _accumulate(self, hidden: torch.Tensor) -> None:
        start = time.perf_counter()
        rows = slice(self._row, self._row + hidden.shape[0])
        with torch.set_grad_enabled(self._grad and torch.is_grad_enabled()):
            layer_scores = self.layer_scores(hidden if self._grad else hidden.detach(), rows)
        if self._grad:
            # out-of-place so that autograd can see every layer's contribution
            update = torch.zeros_like(self.scores)
            update[rows] = layer_scores
            self.scores = self.scores + update
        else:
            self.scores[rows] += layer_scores
        self.seconds += time.perf_counter() - start
