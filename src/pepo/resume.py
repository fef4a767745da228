"""Resuming a killed or interrupted run exactly where its newest complete checkpoint left it.

transformers' ``Trainer.train(resume_from_checkpoint=...)`` restores the weights, optimizer,
scheduler, ``TrainerState`` (global step, log history) and the RNG states (after skipping the
batches already trained). It does not restore what TRL's ``GRPOTrainer`` and pepo keep between
optimizer steps; :class:`pepo.trainer.PEPOTrainer` saves that in ``pepo_state_<rank>.pt`` inside
each checkpoint (see ``PEPOTrainer._resume_state``):

* TRL's buffered generation batch (``_buffered_inputs``) and its micro-step counter ``_step``: with
  ``steps_per_generation * num_iterations`` larger than ``gradient_accumulation_steps`` one generation
  serves several optimizer steps, and a checkpoint can fall inside that block. Without them a resumed
  run regenerates from the updated policy and leaves the uninterrupted trajectory.
* what was accumulated since the last log (TRL's ``_metrics``, the Trainer's running loss), so the
  first line logged after a resume averages the same steps as without the interruption;
* DAPO dynamic sampling's position in its stream of extra prompts.

**Which checkpoint is complete.** transformers writes straight into ``checkpoint-N`` (no temporary
folder) and its ``get_last_checkpoint`` takes the highest N whatever state that folder is in, so a
process killed while saving leaves a folder that looks newest. pepo writes :data:`MARKER` last,
atomically (temporary file + ``os.replace``), after every file of every process; a folder without a
valid marker is never resumed from. Re-saving into an existing folder removes its marker first.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = [
    "MARKER",
    "AUTO",
    "checkpoint_step",
    "checkpoint_global_step",
    "is_complete_checkpoint",
    "find_resumable_checkpoint",
    "resolve_resume_checkpoint",
    "write_marker",
    "remove_marker",
    "process_state_path",
    "save_process_state",
    "load_process_state",
    "resume_command",
]

#: written last into a checkpoint folder; its presence (with matching contents) makes the folder complete
MARKER = "pepo_checkpoint_complete.json"
#: ``--resume_from_checkpoint auto``: the newest complete checkpoint of the output folder, if any
AUTO = "auto"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_TRAINER_STATE = "trainer_state.json"


def checkpoint_step(path: str | Path) -> int | None:
    """The N of a ``checkpoint-N`` folder name, or None for any other name."""
    match = _CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_complete_checkpoint(path: str | Path) -> bool:
    """True iff ``path`` holds a checkpoint whose save finished on every process.

    Complete means: :data:`MARKER` parses and names this folder's step, ``trainer_state.json`` parses
    with the same global step, and every per-process state file the marker lists exists.
    """
    path = Path(path)
    marker = _read_json(path / MARKER)
    state = _read_json(path / _TRAINER_STATE)
    if not isinstance(marker, dict) or not isinstance(state, dict):
        return False
    step = marker.get("global_step")
    if step != state.get("global_step") or (checkpoint_step(path) not in (None, step)):
        return False
    return all((path / name).is_file() for name in marker.get("files", []))


def checkpoint_global_step(path: str | Path) -> int:
    """The global step a complete checkpoint was saved at (from its marker; any folder name)."""
    marker = _read_json(Path(path) / MARKER)
    if not isinstance(marker, dict) or not isinstance(marker.get("global_step"), int):
        raise ValueError(f"{path}: {MARKER} is missing or unreadable; not a complete checkpoint.")
    return marker["global_step"]


def find_resumable_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete ``checkpoint-N`` folder of ``output_dir`` with the largest N, or None."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    candidates = sorted(
        (checkpoint_step(p), p) for p in output_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None
    )
    for _, path in reversed(candidates):
        if is_complete_checkpoint(path):
            return path
    return None


def resolve_resume_checkpoint(value: str | bool | None, output_dir: str | Path) -> Path | None:
    """Turn ``--resume_from_checkpoint`` into a checkpoint folder (None: start fresh).

    ``auto`` / ``true`` / True pick the newest complete checkpoint of ``output_dir`` (None if there is
    none); a path must name a complete checkpoint, else ``ValueError`` says what is missing.
    """
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("", "none", "false")):
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() in (AUTO, "true", "latest")):
        return find_resumable_checkpoint(output_dir)
    path = Path(value)
    if not path.is_dir():
        raise ValueError(f"--resume_from_checkpoint {value}: no such folder (use `auto` for the newest checkpoint "
                         f"of {output_dir}).")
    if not is_complete_checkpoint(path):
        newest = find_resumable_checkpoint(path.parent)
        hint = f" The newest complete one next to it is {newest}." if newest else ""
        raise ValueError(
            f"--resume_from_checkpoint {value}: not a complete pepo checkpoint ({MARKER} missing or not matching "
            f"{_TRAINER_STATE}; the process was probably killed while saving it).{hint}"
        )
    return path


def write_marker(folder: str | Path, global_step: int, files: Sequence[str]) -> None:
    """Write :data:`MARKER` atomically: the folder counts as complete from this instant on."""
    folder = Path(folder)
    tmp = folder / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"global_step": global_step, "files": list(files)}))
    os.replace(tmp, folder / MARKER)


def remove_marker(folder: str | Path) -> None:
    """Mark ``folder`` incomplete (before files in it are rewritten)."""
    (Path(folder) / MARKER).unlink(missing_ok=True)


def process_state_path(folder: str | Path, process_index: int) -> Path:
    return Path(folder) / f"pepo_state_{process_index}.pt"


def save_process_state(folder: str | Path, process_index: int, state: dict[str, Any]) -> Path:
    """Save one process's trainer state (tensors, lists, numbers) atomically; returns the file."""
    path = process_state_path(folder, process_index)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_process_state(folder: str | Path, process_index: int, device: Any = "cpu") -> dict[str, Any]:
    """Load what :func:`save_process_state` wrote (``weights_only``: plain containers and tensors only)."""
    path = process_state_path(folder, process_index)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: checkpoint {folder} was written by another number of processes or without pepo's "
            "trainer. Resume with the same number of processes it was saved with."
        )
    return torch.load(path, map_location=device, weights_only=True)


def resume_command(command: str, argv: Sequence[str]) -> str:
    """The shell line that resumes ``pepo <command> <argv>``: same options + ``--resume_from_checkpoint auto``."""
    args, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        if token == "--resume_from_checkpoint":
            skip = True
            continue
        if token.startswith("--resume_from_checkpoint="):
            continue
        args.append(token)
    return shlex.join(["pepo", command, *args, "--resume_from_checkpoint", AUTO])
