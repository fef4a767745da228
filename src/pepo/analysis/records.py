"""One analysed response: the record every ``pepo analyze`` figure is built from.

``pepo analyze tokens`` writes one record per sampled response to ``records.jsonl`` (one JSON object
per line) and streams the same dicts to the figure writers, so no writer needs the model or the
hidden states. Keys:

=============  ================================================================================
``id``         prompt id (str)
``sample``     index of the response among the prompt's samples (int)
``question``   the question text shown to the model (str)
``answer``     the ground-truth answer, as text (str)
``image``      path of the prompt's (first) image, relative to the analysis folder (str)
``response``   the decoded response (str); equals ``"".join(tokens)``
``tokens``     the response's tokens, each decoded to text (list[str], length C_i)
``token_ids``  the response's token ids (list[int], length C_i), so a record can be re-scored exactly
``similarity`` visual similarity per token: cosine between the token's hidden state and the mean
               image-token hidden state, averaged over all hidden states (list[float], unitless,
               in [-1, 1]); exactly ``pepo.weights.visual_similarity`` for this response
``entropy``    entropy of the distribution that produced each token (list[float], nats)
``weight``     PEPO token weight w_t (``pepo.weights.pepo_token_weights``; mean 1 over the response)
``shift``      hidden-state shift when the image is removed/blanked: 1 - cosine between the token's
               hidden states with and without the image, averaged over hidden states (list[float]
               in [0, 2]) or ``None`` when the shift was not computed
``reward``     the task's reward for the response (float)
``correct``    ``reward >= 0.5`` (bool)
=============  ================================================================================

The folder's ``meta.json`` holds what produced the records (model, task, score type, gate alpha and
temperature, number of responses).
"""

from __future__ import annotations

import re
from typing import TypedDict

__all__ = ["ResponseRecord", "TOKEN_FIELDS", "check_record", "safe_stem"]

#: per-token lists; each has one entry per response token
TOKEN_FIELDS = ("similarity", "entropy", "weight")


class ResponseRecord(TypedDict):
    id: str
    sample: int
    question: str
    answer: str
    image: str
    response: str
    tokens: list[str]
    token_ids: list[int]
    similarity: list[float]
    entropy: list[float]
    weight: list[float]
    shift: list[float] | None
    reward: float
    correct: bool


def check_record(record: dict) -> None:
    """Raise ``ValueError`` naming the field if a record's per-token lists do not match its tokens."""
    n = len(record["tokens"])
    for key in TOKEN_FIELDS + ("shift", "token_ids"):
        values = record.get(key)
        if key in ("shift", "token_ids") and values is None:
            continue
        if values is None or len(values) != n:
            got = "missing" if values is None else f"{len(values)} values"
            raise ValueError(f"record {record.get('id')!r} sample {record.get('sample')}: field {key!r} has {got} "
                             f"for {n} tokens")


def safe_stem(text: str, limit: int = 60) -> str:
    """``text`` (e.g. a prompt id) reduced to a file-name stem: letters, digits, ``._-``; at most ``limit`` chars."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:limit] or "x"
