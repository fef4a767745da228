"""How many torch threads should the CPU demo use? Times the demo's two hot loops side by side.

Runs the supervised warm-start step (batch 32) and one PEPO training step (8 prompts x 8 samples)
of the embedded tiny Qwen2.5-VL, alternating thread counts in one process so that machine noise
hits both equally, optionally with a busy-loop process occupying another core.

    python -m benchmarks.cpu_threads [--repeats 5] [--busy]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

import torch


def _spin(stop):
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--busy", action="store_true", help="keep one other core busy while timing")
    args = parser.parse_args()

    from benchmarks._trainer_setup import scratch_dir, step_trainer
    from pepo.eval.generation import encode_prompts
    from pepo.sft import answer_completion, completion_loss

    with scratch_dir() as tmp:
        trainer, rl_step = step_trainer("pepo", tmp)
        model, processor = trainer.model, trainer.processing_class
        rows = trainer.train_dataset
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        batch = encode_prompts(processor, rows["prompt"][:32], rows["images"][:32],
                               [answer_completion(a) + processor.tokenizer.eos_token for a in rows["answer"][:32]])

        def sft_step():
            loss = completion_loss(model, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        stop = mp.Event()
        spinner = mp.Process(target=_spin, args=(stop,)) if args.busy else None
        if spinner:
            spinner.start()
        times: dict[tuple[str, int], list[float]] = {}
        try:
            for _ in range(args.repeats):
                for threads in (1, 2):
                    torch.set_num_threads(threads)
                    for name, step in (("warm-start step", sft_step), ("PEPO step", rl_step)):
                        step()  # warm-up at this thread count
                        start = time.perf_counter()
                        step()
                        times.setdefault((name, threads), []).append(time.perf_counter() - start)
        finally:
            stop.set()
            if spinner:
                spinner.join()
    print(f"other core busy: {args.busy}; median of {args.repeats} (seconds per step)")
    for name in ("warm-start step", "PEPO step"):
        one, two = statistics.median(times[(name, 1)]), statistics.median(times[(name, 2)])
        print(f"  {name:<16} 1 thread {one:.3f}  2 threads {two:.3f}  ratio 2/1 = {two / one:.2f}")


if __name__ == "__main__":
    main()
