"""Test hook: kill this process (SIGKILL) or fail a write at a named point, chosen by ``PEPO_FAULT``.

The fault-injection suite (``python -m tests.faults``) sets ``PEPO_FAULT=<point>:<count>[:<kind>]`` in a
child process; the ``count``-th time the code passes ``<point>`` the fault fires:

* kind ``kill`` (default): ``os.kill(os.getpid(), SIGKILL)``, a real kill with no clean-up, no ``finally``,
  no flush (what the OOM killer or a node failure does);
* kind ``enospc`` / ``eacces``: raise ``OSError(ENOSPC / EACCES)`` as a full disk or a read-only folder would.

:func:`fault_write` writes half of its text (flushed to the OS) before a ``kill``, so the file is torn in the
middle of a record. Without ``PEPO_FAULT`` every call is one ``is None`` test: nothing on the hot path.
The points pepo's own code passes are listed in :data:`POINTS`; ``tests/fault_runner.py`` adds points in
transformers / TRL / accelerate (generation, backward, between a checkpoint's files) by wrapping their methods.
"""

from __future__ import annotations

import errno
import os
import signal
from typing import IO

__all__ = ["ENV", "POINTS", "fault_point", "fault_write"]

ENV = "PEPO_FAULT"
#: the points in pepo's code, where each is passed
POINTS = {
    "checkpoint_state": "PEPOTrainer._save_checkpoint: transformers' files written, before pepo_state_<rank>.pt",
    "checkpoint_marker": "PEPOTrainer._save_checkpoint: every file written, before the completion marker",
    "rotation": "pepo.resume.rotate_checkpoints: between removing an old checkpoint's marker and its files",
    "warm_start": "run.py: the run folder's warm_start/ written, before pre_rl.json",
    "pre_rl": "run.py: inside the write of pre_rl.json's temporary file",
    "final_model": "run.py: after training, before the final model is saved to checkpoint/",
    "results": "run.py: inside the write of results.json's temporary file",
    "plots": "run.py: results.json written, before the plots",
    "metrics": "callbacks.JsonlMetricsCallback: in the middle of a metrics.jsonl line",
    "eval_samples": "eval.runner.evaluate_rows: in the middle of one prompt's samples.jsonl lines",
    "eval_rewrite": "eval.runner.read_samples: inside the rewrite of samples.jsonl on a rerun",
}
_KINDS = ("kill", "enospc", "eacces")


def _parse(value: str | None) -> tuple[str, int, str] | None:
    if not value:
        return None
    parts = value.split(":")
    if len(parts) not in (2, 3) or not parts[1].isdigit() or int(parts[1]) < 1 or \
            (len(parts) == 3 and parts[2] not in _KINDS):
        raise ValueError(f"{ENV}={value!r}: expected <point>:<count>[:{'|'.join(_KINDS)}] with count >= 1")
    return parts[0], int(parts[1]), parts[2] if len(parts) == 3 else "kill"


_ARMED = _parse(os.environ.get(ENV))
_hits = 0


def _fires(name: str) -> str | None:
    """The fault kind if this pass of ``name`` is the armed one, else None."""
    global _hits
    if _ARMED is None or _ARMED[0] != name:
        return None
    _hits += 1
    return _ARMED[2] if _hits == _ARMED[1] else None


def _fire(kind: str, name: str, filename: str | None) -> None:
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    code = errno.ENOSPC if kind == "enospc" else errno.EACCES
    raise OSError(code, os.strerror(code) + f" ({ENV} {name})", filename)


def fault_point(name: str, filename: str | None = None) -> None:
    """Fire the armed fault if this is its ``count``-th pass of ``name``; ``filename``: the file an OSError names."""
    if _ARMED is None:
        return
    kind = _fires(name)
    if kind is not None:
        _fire(kind, name, filename)


def fault_write(f: IO[str], text: str, name: str) -> None:
    """``f.write(text)``; when the armed fault fires here, half of ``text`` reaches the file first (torn write)."""
    kind = None if _ARMED is None else _fires(name)
    if kind is None:
        f.write(text)
        return
    if kind == "kill":
        f.write(text[: len(text) // 2])
        f.flush()
    _fire(kind, name, getattr(f, "name", None))
