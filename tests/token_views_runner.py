"""A tiny PEPO run with token views every step, for `pepo watch` tests: python tests/token_views_runner.py OUT STEPS.

Sleeps a little after each step so a test can look at the folder while it trains.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import TrainerCallback  # noqa: E402

from pepo.callbacks import JsonlMetricsCallback  # noqa: E402
from pepo.data.synthetic import text_corpus  # noqa: E402
from pepo.models.tiny import build_tiny_qwen2_5_vl, train_tiny_tokenizer  # noqa: E402
from tests.conftest import make_rl_rows  # noqa: E402
from tests.test_trainer import make_config, varied_reward  # noqa: E402


class Slow(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(float(sys.argv[3]) if len(sys.argv) > 3 else 1.0)


if __name__ == "__main__":
    import torch

    from pepo.trainer import PEPOTrainer

    torch.set_num_threads(1)
    out, steps = Path(sys.argv[1]), int(sys.argv[2])
    tokenizer = train_tiny_tokenizer(text_corpus() + ["<answer>3</answer>", "<answer>yes</answer>"])
    model, processor = build_tiny_qwen2_5_vl(tokenizer, seed=0)
    args = make_config(out, output_dir=str(out), max_steps=steps, log_token_views_every=1)
    trainer = PEPOTrainer(model=model, reward_funcs=varied_reward, args=args, train_dataset=make_rl_rows(8),
                          processing_class=processor, callbacks=[JsonlMetricsCallback(out / "metrics.jsonl"), Slow()])
    trainer.train()
