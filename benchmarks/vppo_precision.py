"""VPPO's token selection under bf16: how many of the top-40% tokens by visual dependency stay the same when
the model runs in bf16 instead of float32 (same weights, same generation batch, same masks). TRL 1.16's fused
LM head already returns float32 log-probs; what bf16 changes is the network's own arithmetic.

    python -m benchmarks.vppo_precision [--rows 32] [--seed 0]

The model is the tests' tiny Qwen2.5-VL (random weights, bf16), so the numbers say how much bf16 rounding
moves a near-uniform policy's ranking, not what a trained 7B model does.
"""

from __future__ import annotations

import argparse
import tempfile

import torch


def _overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a & b).sum().item() / max(b.sum().item(), 1)


def measure(rows: int = 32, seed: int = 0) -> dict[str, float]:
    from pepo.data.synthetic import text_corpus
    from pepo.models.tiny import build_tiny_qwen2_5_vl, train_tiny_tokenizer
    from pepo.perception import vppo_token_mask
    from pepo.trainer import PEPOConfig, PEPOTrainer
    from tests.conftest import make_rl_rows
    from tests.test_trainer import varied_reward

    torch.manual_seed(seed)
    tokenizer = train_tiny_tokenizer(text_corpus() + ["<answer>3</answer>", "<answer>yes</answer>"])
    model, processor = build_tiny_qwen2_5_vl(tokenizer, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        args = PEPOConfig(output_dir=tmp, method="vppo", per_device_train_batch_size=8, num_generations=4,
                          max_completion_length=12, max_steps=1, report_to="none", save_strategy="no", bf16=False,
                          use_cpu=True, seed=seed, dynamic_sampling=False)
        trainer = PEPOTrainer(model=model, reward_funcs=varied_reward, args=args,
                              train_dataset=make_rl_rows(rows // 4 * 2), processing_class=processor)
        trainer.model.train()
        batch = trainer._generate_and_score_completions(next(iter(trainer.get_train_dataloader())))
        method = trainer.method
        mask = batch["completion_mask"].bool()

        def selection() -> torch.Tensor:
            cols = trainer._rollout_columns(trainer.model, method, batch)
            return vppo_token_mask(cols["vppo_dependency"], mask, 0.4)

        trainer.model.to(torch.bfloat16)
        bf16 = selection()
        trainer.model.to(torch.float32)  # the bf16-rounded weights, run in float32 throughout
        exact = selection()
    return {"tokens_selected": int(exact.sum()), "bf16_overlap": _overlap(bf16, exact)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args(argv)
    result = measure(a.rows, a.seed)
    print(f"torch {torch.__version__}, tiny Qwen2.5-VL (random weights, bf16), {result['tokens_selected']} "
          "selected tokens (top 40% per response)")
    print(f"top-40% selection overlap, bf16 run vs float32 run: {result['bf16_overlap']:.3f}")
    return result


if __name__ == "__main__":
    main()
