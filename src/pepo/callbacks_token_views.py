"""``--log_token_views_every N``: every N steps, token-level views of K rollouts while the run trains.

:class:`TokenViewsCallback` arms :class:`pepo.token_view_capture.TokenViewMixin` at the start of
every N-th optimizer step and, at its end, turns what the step kept for its first micro-batch into
one record (:mod:`pepo.analysis.token_views`): ``<output_dir>/token_views/step_N.jsonl`` (+ the
``index.html`` page), a TensorBoard text panel and patch-map images when ``report_to`` names
tensorboard, and a ``wandb.Html`` page, ``wandb.Image`` s and a ``wandb.Table`` with one row per
token when it names wandb.

Multi-process: every rank builds its own rollouts (possibly none) and joins one ``gather_object``
(a collective that accepts empty lists, so a rank without rows cannot hang the others); only the
main process picks the K rollouts and writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

__all__ = ["TokenViewArguments", "TokenViewsCallback", "tensorboard_markdown"]


@dataclass
class TokenViewArguments:
    """Run options of the token views (mixed into :class:`pepo.trainer.PEPOConfig`)."""

    log_token_views_every: int = field(
        default=0,
        metadata={"help": "Every N optimizer steps, record what the method saw and did for each completion token "
                  "of K rollouts (text, reward, advantage, visual similarity, entropy, gate, weight, or the "
                  "method's own quantities, and the image's patch similarity map) into "
                  "<output_dir>/token_views/ (step_N.jsonl + index.html), TensorBoard and wandb when report_to "
                  "names them. 0 = off. Read from what the step computed: no extra forward."},
    )
    token_views_rollouts: int = field(
        default=4, metadata={"help": "K, rollouts per token view, spread from the lowest to the highest reward."})


def tensorboard_markdown(record: dict[str, Any], max_tokens: int = 64) -> str:
    """The record as Markdown for TensorBoard's text panel: one table per rollout, a row per token."""
    lines = [f"**step {record['step']}**, method `{record['method']}`, p = {record['progress']:.3f}", ""]
    names = record["quantities"]
    for i, r in enumerate(record["rollouts"]):
        reward = "n/a" if r["reward"] is None else f"{r['reward']:.3f}"
        lines += [f"rollout {i}: reward {reward}, advantage {r['advantage']:.3f}", "",
                  "| # | token | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for t, text in enumerate(r["tokens"][:max_tokens]):
            cells = ["" if r["values"][n][t] is None else f"{r['values'][n][t]:.3f}" for n in names]
            shown = text.replace("|", "\\|").replace("\n", "\\n") or " "
            mark = "**" if t in r["top_tokens"] else ""
            lines.append(f"| {t} | {mark}`{shown}`{mark} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


class TokenViewsCallback(TrainerCallback):
    """Arm the trainer on view steps and write the views; see the module docstring."""

    def __init__(self, trainer: Any, every: int | None = None, rollouts: int | None = None,
                 folder: str | Path | None = None):
        self.trainer = trainer
        self.every = int(every if every is not None else trainer.args.log_token_views_every)
        self.rollouts = int(rollouts if rollouts is not None else getattr(trainer.args, "token_views_rollouts", 4))
        if self.every < 1:
            raise ValueError(f"log_token_views_every must be >= 1 to log views, got {self.every}.")
        if self.rollouts < 1:
            raise ValueError(f"token_views_rollouts must be >= 1, got {self.rollouts}.")
        self.folder = Path(folder) if folder is not None else Path(trainer.args.output_dir) / "token_views"
        self.written: list[Path] = []

    def _write_status(self, state, **values: Any) -> None:
        """``token_views/status.json``: who writes this folder (pid, host), so ``pepo watch`` can tell a live
        run from a killed one, and whether training ended."""
        if not state.is_world_process_zero:
            return
        import json
        import os
        import socket
        import time

        self.folder.mkdir(parents=True, exist_ok=True)
        status = {"pid": os.getpid(), "host": socket.gethostname(), "every": self.every, "time": time.time(),
                  "step": state.global_step, **values}
        tmp = self.folder / f".status.json.tmp{os.getpid()}"
        tmp.write_text(json.dumps(status))
        os.replace(tmp, self.folder / "status.json")

    def on_train_begin(self, args, state, control, **kwargs):
        self._write_status(state, ended=False)

    def on_train_end(self, args, state, control, **kwargs):
        self._write_status(state, ended=True)

    def on_step_begin(self, args, state, control, **kwargs):
        if (state.global_step + 1) % self.every == 0:  # global_step is the step about to run, minus one
            self.trainer.token_view_rows = self.rollouts
            self.trainer._token_view = {}

    def on_step_end(self, args, state, control, **kwargs):
        trainer = self.trainer
        view, trainer._token_view = trainer._token_view, None
        if view is None:
            return
        from pepo.analysis.token_views import build_rollouts, pick_rollouts

        alpha = trainer.args.gate_alpha if trainer.args.token_weighting == "pepo" else None
        rollouts = build_rollouts(view, trainer.processing_class, rank=args.process_index, gate_alpha=alpha)
        if args.world_size > 1:
            from accelerate.utils import gather_object

            rollouts = gather_object(rollouts)  # every rank joins, with or without rows
        if not state.is_world_process_zero:
            return
        chosen = pick_rollouts(rollouts, self.rollouts)
        names = [q for q in _ordered(chosen)]
        record = {"step": state.global_step, "method": trainer.args.method, "progress": view.get("progress", 0.0),
                  "quantities": names, "rollouts": chosen}
        from pepo.analysis.token_views import write_step

        self.written.append(write_step(self.folder, record))
        report_to = args.report_to if isinstance(args.report_to, list) else [args.report_to]
        if "tensorboard" in report_to or "all" in report_to:
            self._to_tensorboard(record)
        if "wandb" in report_to or "all" in report_to:
            self._to_wandb(record)

    def _to_tensorboard(self, record: dict[str, Any]) -> None:
        from transformers.integrations import TensorBoardCallback

        for cb in self.trainer.callback_handler.callbacks:
            writer = getattr(cb, "tb_writer", None) if isinstance(cb, TensorBoardCallback) else None
            if writer is None:
                continue
            step = record["step"]
            writer.add_text("token_views", tensorboard_markdown(record), step)
            for i, image in enumerate(_images(record)):
                writer.add_image(f"token_views/patch_map_{i}", image, step, dataformats="HWC")
            writer.flush()

    def _to_wandb(self, record: dict[str, Any]) -> None:
        import wandb

        if wandb.run is None:
            return
        from pepo.analysis.token_views import render_step_page

        names = record["quantities"]
        table = wandb.Table(columns=["step", "rollout", "reward", "advantage", "position", "token", *names])
        for i, r in enumerate(record["rollouts"]):
            for t, text in enumerate(r["tokens"]):
                table.add_data(record["step"], i, r["reward"], r["advantage"], t, text,
                               *[r["values"][n][t] for n in names])
        logs: dict[str, Any] = {"token_views/page": wandb.Html(render_step_page(record)), "token_views/tokens": table,
                                "train/global_step": record["step"]}
        images = _images(record)
        if images:
            logs["token_views/patch_maps"] = [wandb.Image(im) for im in images]
        wandb.run.log(logs)


def _ordered(rollouts: list[dict[str, Any]]) -> list[str]:
    from pepo.analysis.token_views import QUANTITY_INFO

    present = {q for r in rollouts for q in r["values"]}
    return [q for q in QUANTITY_INFO if q in present]


def _images(record: dict[str, Any]) -> list[Any]:
    """(H, W, 3) uint8 arrays of the rollouts' images with their patch maps."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    out = []
    for r in record["rollouts"]:
        if r.get("image"):
            data = base64.b64decode(r["image"].split(",", 1)[1])
            out.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    return out
