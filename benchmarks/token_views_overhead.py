"""Cost of ``--log_token_views_every``: steps with a token view against steps without, side by side.

One trainer at the demo's size (8 prompts x 8 samples, completions of 6 tokens, the demo's tiny
Qwen2.5-VL), the same prompts and sampling seed every step; view steps (armed capture, the patch
map in the same forward, records built, ``step_N.jsonl`` + page written) and plain steps alternate,
so machine noise hits both. Prints the median step time of each (wall clock, and CPU time of this
process, which a machine shared with other jobs inflates less), the extra time of one view step, and
what that costs a run that views every N-th step: ``extra / (N x plain step)``.

    python -m benchmarks.token_views_overhead [--steps 15] [--every 25]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from types import SimpleNamespace

import torch

from benchmarks._trainer_setup import add_model_arguments, describe, model_settings, scratch_dir, step_trainer


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--steps", type=int, default=15, help="steps of each kind (after one warm-up of each)")
    parser.add_argument("--every", type=int, default=25, help="the cadence to cost (the demo's: 25)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from pepo.callbacks_token_views import TokenViewsCallback

    with scratch_dir() as tmp:
        trainer, step = step_trainer("pepo", tmp, **model_settings(args))
        callback = TokenViewsCallback(trainer, every=1, rollouts=4)
        state = SimpleNamespace(global_step=0, is_world_process_zero=True)
        times = {"off": [], "on": []}
        cpu = {"off": [], "on": []}
        for i in range(args.steps + 1):
            for kind in ("off", "on"):
                start, start_cpu = time.perf_counter(), time.process_time()
                if kind == "on":
                    trainer._token_view = {}
                step()
                if kind == "on":
                    state.global_step += 1
                    callback.on_step_end(trainer.args, state, None)
                if i:  # the first of each kind is a warm-up
                    times[kind].append(time.perf_counter() - start)
                    cpu[kind].append(time.process_time() - start_cpu)
        print(describe(model_settings(args), trainer))
        print(f"machine: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
        for name, values in (("wall", times), ("cpu", cpu)):
            off, on = statistics.median(values["off"]), statistics.median(values["on"])
            extra = on - off
            print(f"{name}: plain step {off * 1000:.1f} ms, view step {on * 1000:.1f} ms (medians of {args.steps}); "
                  f"one view costs {extra * 1000:.1f} ms; views every {args.every} steps: "
                  f"{100 * extra / (args.every * off):.2f}% of training time")
        print(f"record: {callback.written[-1].stat().st_size / 1024:.1f} KiB per step")


if __name__ == "__main__":
    main()
