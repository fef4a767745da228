"""What the prompt-length check costs per row: ``python -m benchmarks.prompt_length_cost``.

The check (:mod:`pepo.data.prompt_length`) runs the processor once per row with its image, as training does.
This times it with Qwen2.5-VL's image-processor settings (patch 14, merge 2, min_pixels 3136, max_pixels
12845056: the real checkpoint's) on the tiny tokenizer, for a few image sizes, and prints a Markdown table:
image size, image tokens, milliseconds per row (median of ``--repeats`` passes over ``--rows`` rows) as the check
counts it (from the image sizes, no pixel work) and through the full processor (resize + normalise: what the
check costs per row for the families counted from pixels).
"""

from __future__ import annotations

import argparse
import statistics
import time

from PIL import Image


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import torch
    import transformers

    from pepo.data.prompt_length import check_prompt_lengths, measure_prompt
    from pepo.models.loading import image_token_id
    from pepo.models.tiny import build_tiny_qwen2_5_vl, train_tiny_tokenizer

    model, processor = build_tiny_qwen2_5_vl(train_tiny_tokenizer())
    processor.image_processor.size = {"shortest_edge": 3136, "longest_edge": 12845056}  # Qwen2.5-VL's defaults
    token = image_token_id(model, processor)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads\n")
    print("| image (px) | image tokens | ms per row (check) | ms per row (full processor) |\n|---|---|---|---|")
    for w, h in ((448, 448), (1024, 768), (2048, 1536)):
        prompt = [{"role": "user", "content": [{"type": "text", "text": "how many red shapes ?"}, {"type": "image"}]}]
        rows = [{"id": str(i), "prompt": prompt, "images": [Image.new("RGB", (w, h), (i, 40, 90))]}
                for i in range(args.rows)]
        times, full = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for row in rows:
                measure_prompt(processor, row["prompt"], row["images"], token, from_pixels=True)
            full.append((time.perf_counter() - start) / len(rows) * 1000)
            start = time.perf_counter()
            report = check_prompt_lengths(processor, rows, token, context=10**7, context_name="context",
                                          completion_length=0)
            times.append((time.perf_counter() - start) / len(rows) * 1000)
        print(f"| {w}x{h} | {report.longest_image_tokens} | {statistics.median(times):.1f} | "
              f"{statistics.median(full):.1f} |")


if __name__ == "__main__":
    main()
