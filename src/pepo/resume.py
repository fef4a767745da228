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
valid marker is never resumed from. Re-saving into an existing folder removes its marker first. The marker
records the size of every file of the folder and the options the checkpoint depends on (method, batch
arithmetic, processes, model): a file truncated or removed later, or a checkpoint of another configuration,
is named with the way out (:func:`checkpoint_problem`, :func:`check_compatible`) instead of being loaded.
Rotation (:func:`rotate_checkpoints`) runs only after the new marker exists and removes an old
checkpoint's marker before its files.

Everything a run needs from its resume point (step, path) is read once, before training: rotation may
delete that folder during the resumed run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from pepo.faults import fault_point

__all__ = [
    "MARKER",
    "AUTO",
    "ResumeError",
    "checkpoint_step",
    "checkpoint_problem",
    "check_compatible",
    "rotate_checkpoints",
    "model_fingerprint",
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


class ResumeError(ValueError):
    """A checkpoint cannot be resumed from; the message names the file and the way out (one line)."""


def checkpoint_step(path: str | Path) -> int | None:
    """The N of a ``checkpoint-N`` folder name, or None for any other name."""
    match = _CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _marker_problem(path: Path) -> tuple[str | None, bool]:
    """``(problem naming the file, or None; whether a marker was there)`` for a ``checkpoint-N`` folder."""
    marker_path = path / MARKER
    if not marker_path.exists():
        return f"{marker_path} is missing (the save was cut short)", False
    marker = _read_json(marker_path)
    if not isinstance(marker, dict) or not isinstance(marker.get("global_step"), int):
        return f"{marker_path} is unreadable", True
    step = marker["global_step"]
    state = _read_json(path / _TRAINER_STATE)
    if not isinstance(state, dict):
        return f"{path / _TRAINER_STATE} is missing or unreadable", True
    if step != state.get("global_step"):
        return (f"{marker_path} says step {step} but {path / _TRAINER_STATE} says step {state.get('global_step')}",
                True)
    if checkpoint_step(path) not in (None, step):
        return f"{marker_path} says step {step}, not the folder's {checkpoint_step(path)}", True
    files = marker.get("files", [])
    sizes = marker.get("sizes", {})
    for name in list(files) + [n for n in sizes if n not in files]:
        if not (path / name).is_file():
            return f"{path / name} is missing", True
    for name, size in sizes.items():
        actual = (path / name).stat().st_size
        if actual != size:
            return f"{path / name} is {actual} bytes, {size} when the checkpoint was saved (truncated or changed)", True
    return None, True


def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a complete checkpoint (naming the file), or None when it is.

    Complete means: :data:`MARKER` parses and names this folder's step, ``trainer_state.json`` parses
    with the same global step, every per-process state file the marker lists exists, and every file
    it recorded has the size it had when the checkpoint was saved.
    """
    return _marker_problem(Path(path))[0]


def is_complete_checkpoint(path: str | Path) -> bool:
    """True iff ``path`` holds a checkpoint whose save finished on every process and is intact since."""
    return checkpoint_problem(path) is None


def checkpoint_global_step(path: str | Path) -> int:
    """The global step a complete checkpoint was saved at (from its marker; any folder name)."""
    marker = _read_json(Path(path) / MARKER)
    if not isinstance(marker, dict) or not isinstance(marker.get("global_step"), int):
        raise ValueError(f"{path}: {MARKER} is missing or unreadable; not a complete checkpoint.")
    return marker["global_step"]


def _checkpoint_folders(output_dir: Path) -> list[tuple[int, Path]]:
    if not output_dir.is_dir():
        return []
    return sorted((checkpoint_step(p), p) for p in output_dir.iterdir()
                  if p.is_dir() and checkpoint_step(p) is not None)


def find_resumable_checkpoint(output_dir: str | Path, log: Callable[[str], None] | None = None) -> Path | None:
    """The complete ``checkpoint-N`` folder of ``output_dir`` with the largest N, or None.

    ``log``: told about every newer folder passed over and why (naming the file).

    Raises:
        ResumeError: some checkpoint has a marker (its save finished) but is damaged, and none is intact:
            resuming would silently restart from scratch.
    """
    damaged = []
    for _, path in reversed(_checkpoint_folders(Path(output_dir))):
        problem, had_marker = _marker_problem(path)
        if problem is None:
            if damaged and log is not None:
                log(f"falling back to {path.name}, the newest intact checkpoint (damaged: {'; '.join(damaged)})")
            return path
        if had_marker:
            damaged.append(f"{path.name}: {problem}")
        elif log is not None:
            log(f"skipping {path.name}: {problem}")
    if damaged:
        raise ResumeError(f"no intact checkpoint in {output_dir} ({'; '.join(damaged)}): restore the file, or start "
                          "fresh with another --output_dir (or delete the checkpoint folders)")
    return None


def resolve_resume_checkpoint(value: str | bool | None, output_dir: str | Path,
                              log: Callable[[str], None] | None = None) -> Path | None:
    """Turn ``--resume_from_checkpoint`` into a checkpoint folder (None: start fresh).

    ``auto`` / ``true`` / True pick the newest complete checkpoint of ``output_dir`` (None if there is
    none; ``log`` hears about damaged newer ones); a path must name a complete checkpoint, else
    :class:`ResumeError` names the file at fault and the newest complete checkpoint next to it.
    """
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("", "none", "false")):
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() in (AUTO, "true", "latest")):
        return find_resumable_checkpoint(output_dir, log)
    path = Path(value)
    if not path.is_dir():
        raise ResumeError(f"--resume_from_checkpoint {value}: no such folder (use `auto` for the newest checkpoint "
                          f"of {output_dir}).")
    problem = checkpoint_problem(path)
    if problem is not None:
        try:
            newest = find_resumable_checkpoint(path.parent)
        except ResumeError:
            newest = None
        hint = f"; resume from {newest}, the newest complete one next to it" if newest else ""
        raise ResumeError(f"--resume_from_checkpoint {value}: not a complete pepo checkpoint ({problem}){hint}.")
    return path


def check_compatible(path: str | Path, config: dict[str, Any]) -> None:
    """Raise :class:`ResumeError` when checkpoint ``path`` was saved with other ``config`` values than this run's.

    ``config``: what the marker records (see ``PEPOTrainer._resume_fingerprint``); keys the marker lacks
    (older checkpoints) are not compared.
    """
    marker = _read_json(Path(path) / MARKER) or {}
    saved = marker.get("config") or {}
    differ = [f"{k} {saved[k]!r} (this run: {config[k]!r})" for k in config if k in saved and saved[k] != config[k]]
    if differ:
        raise ResumeError(
            f"{Path(path) / MARKER}: {Path(path).name} was saved with {', '.join(differ)}: resume with the options "
            "(and number of processes) it was saved with, or start fresh with another --output_dir.")


def rotate_checkpoints(run_dir: str | Path, limit: int | None, keep: Sequence[str | Path | None] = ()) -> list[Path]:
    """Delete checkpoints older than the newest ``limit`` complete ones (``keep``: never); returns those deleted.

    Run only after the newest checkpoint's marker is written. Each old folder loses its marker first, so
    a process killed while deleting it leaves a folder that is never taken as complete.
    """
    if not limit or limit < 1:
        return []
    folders = _checkpoint_folders(Path(run_dir))
    complete = [(step, path) for step, path in folders if is_complete_checkpoint(path)]
    if not complete:
        return []
    kept = {path.resolve() for _, path in complete[-limit:]} | {Path(k).resolve() for k in keep if k}
    newest = complete[-1][0]
    deleted = []
    for step, path in folders:
        if step < newest and path.resolve() not in kept:
            remove_marker(path)
            fault_point("rotation", str(path))
            shutil.rmtree(path, ignore_errors=True)
            deleted.append(path)
    return deleted


#: config keys that do not describe the architecture (see :func:`model_fingerprint`)
_NOT_ARCHITECTURE = ("transformers_version", "dtype", "torch_dtype", "name_or_path", "architectures", "use_cache",
                     "bos_token_id", "eos_token_id", "pad_token_id")


def model_fingerprint(model: Any) -> str:
    """``<model class>/<16 hex digits>``: the architecture and sizes of ``model`` (its config without paths,
    versions, dtype, private keys or the keys the Trainer rewrites), so a checkpoint of another model is recognised
    before it is loaded.

    Left out besides: ``use_cache`` (``Trainer.__init__`` sets it from the arguments) and ``bos/eos/pad_token_id``
    (``Trainer.train`` aligns them with the tokenizer's, after a resume's check but before any save): a checkpoint
    folder whose config lacks the tokenizer's ids would otherwise never match its own checkpoints.
    """
    import hashlib

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))
                    if not str(k).startswith("_") and str(k) not in _NOT_ARCHITECTURE}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)

    config = getattr(model, "config", None)
    config = config.to_dict() if hasattr(config, "to_dict") else {}
    name = type(model).__name__
    digest = hashlib.sha256(json.dumps(plain(config), sort_keys=True).encode()).hexdigest()[:16]
    return f"{name}/{digest}"


def _file_sizes(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` (relative path -> bytes), leaving out the marker and temporary files."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MARKER and not p.name.endswith(".tmp")}


def write_marker(folder: str | Path, global_step: int, files: Sequence[str],
                 config: dict[str, Any] | None = None) -> None:
    """Write :data:`MARKER` atomically: the folder counts as complete from this instant on.

    ``files``: the per-process files that must exist; the marker also records the size of every file in
    the folder now, and ``config`` (what :func:`check_compatible` compares on resume).
    """
    folder = Path(folder)
    tmp = folder / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"global_step": global_step, "files": list(files), "sizes": _file_sizes(folder),
                               "config": config or {}}))
    os.replace(tmp, folder / MARKER)


def remove_marker(folder: str | Path) -> None:
    """Mark ``folder`` incomplete (before files in it are rewritten)."""
    (Path(folder) / MARKER).unlink(missing_ok=True)


def process_state_path(folder: str | Path, process_index: int) -> Path:
    return Path(folder) / f"pepo_state_{process_index}.pt"


#: key of the plain dict that stands for one PIL image inside a saved process state
_IMAGE_KEY = "__pepo_pil_image__"


def _encode_images(value: Any) -> Any:
    """``value`` with every PIL image replaced by a plain dict (mode, size, raw bytes, palette): lossless.

    TRL's buffered generation batch carries the rows' images (PAPO/VPPO's masked forward and the token
    views read them); ``torch.load(weights_only=True)`` refuses PIL objects, so they travel as tensors.
    """
    try:
        from PIL import Image
    except ImportError:  # no PIL, no PIL images to encode
        return value
    if isinstance(value, Image.Image):
        palette = value.getpalette()
        return {_IMAGE_KEY: True, "mode": value.mode, "size": list(value.size),
                "data": torch.frombuffer(bytearray(value.tobytes()), dtype=torch.uint8),
                "palette": palette, "palette_mode": value.palette.mode if palette is not None else None}
    if isinstance(value, dict):
        return {k: _encode_images(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_encode_images(v) for v in value)
    return value


def _decode_images(value: Any) -> Any:
    """Inverse of :func:`_encode_images`: the same pixels, mode, size and palette."""
    if isinstance(value, dict):
        if value.get(_IMAGE_KEY) is True:
            from PIL import Image

            image = Image.frombytes(value["mode"], tuple(value["size"]), value["data"].cpu().numpy().tobytes())
            if value["palette"] is not None:
                image.putpalette(value["palette"], rawmode=value["palette_mode"] or "RGB")
            return image
        return {k: _decode_images(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_decode_images(v) for v in value)
    return value


def save_process_state(folder: str | Path, process_index: int, state: dict[str, Any]) -> Path:
    """Save one process's trainer state (tensors, lists, numbers, PIL images) atomically; returns the file."""
    path = process_state_path(folder, process_index)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(_encode_images(state), tmp)
    os.replace(tmp, path)
    return path


def load_process_state(folder: str | Path, process_index: int, device: Any = "cpu") -> dict[str, Any]:
    """Load what :func:`save_process_state` wrote (``weights_only``: plain containers, tensors, images)."""
    path = process_state_path(folder, process_index)
    if not path.is_file():
        raise ResumeError(
            f"{path} is missing: checkpoint {folder} was written by another number of processes or without pepo's "
            "trainer. Resume with the same number of processes it was saved with."
        )
    return _decode_images(torch.load(path, map_location=device, weights_only=True))


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
