"""Write the paper's recipes (task x backbone x method) from one table, so they cannot drift apart.

    python recipes/generate.py        # rewrites recipes/<task>/<backbone>/<method>.yaml

Sources for every number: ../shared/reference-release.md (the public release, commit 2b1e788) and
the paper's appendix as summarised in ../shared/seeds/. Where they disagree, the recipe follows the
release for Geometry3K (the only task it ships) and the paper's appendix text for the others, and the
YAML says so in a comment.
"""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).parent

THINK_ANSWER = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer. "
    "The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE put in "
    "<answer> </answer> tags."
)

BACKBONES = {
    "qwen2_5_vl_3b": {"model_name_or_path": "Qwen/Qwen2.5-VL-3B-Instruct"},
    # transformers-native InternVL3 checkpoint (image token <IMG_CONTEXT>, read from its config)
    "internvl3_2b": {"model_name_or_path": "OpenGVLab/InternVL3-2B-hf"},
}

# Settings shared by every task (paper appendix: AdamW, bf16, full fine-tuning, gradient checkpointing,
# 8 responses, T = 1.0, top-p = 1.0, ZeRO-2 on 8 GPUs). The release's 8-GPU layout: 2 completions per
# device x 4 accumulation steps x 8 GPUs = 64 completions = 8 prompts x 8 samples per optimizer step.
COMMON = {
    "num_generations": 8,
    "temperature": 1.0,
    "top_p": 1.0,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 4,
    "num_train_epochs": 1,
    "bf16": True,
    "gradient_checkpointing": True,
    "lr_scheduler_type": "constant",
    "warmup_steps": 0,
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 50,
    "report_to": "tensorboard",
    "warm_start": False,
    "vision_score_type": "cosine",
    "gate_temperature": 1.8,
    "seed": 42,
}

TASKS = {
    "geometry3k": {
        "comment": "Paper Table 1 (Geometry3K val/test, MathVista, MathVerse, LogicVista). Release recipe: lr 1e-6, "
        "completion 1024, beta 0.001, gate_alpha 0.05 and gate_temperature 1.8 (commit 2b1e788; earlier "
        "commits and the paper's appendix text used alpha 0.10 (Qwen) / 0.18 (InternVL) and tau 1.0-1.5). The release "
        "also sampled with top_k 50 (ms-swift default) although the paper says top-p 1.0 only; we follow the paper.",
        "fields": {
            "dataset": "hiyouga/geometry3k", "train_split": "train", "test_split": "validation",
            "image_column": "images", "question_column": "problem", "answer_column": "answer",
            "prompt_instruction": THINK_ANSWER, "reward_funcs": ["format", "accuracy"],
            "learning_rate": 1.0e-6, "max_completion_length": 1024, "beta": 0.001, "gate_alpha": 0.05,
        },
    },
}

METHODS = {
    "grpo": {"method": "grpo", "loss_type": "grpo"},
    "pepo_g": {"method": "pepo_g"},
    "dapo": {"method": "dapo"},
    "pepo_d": {"method": "pepo_d"},
    "high_entropy": {"method": "high_entropy", "loss_type": "grpo", "high_entropy_quantile": 0.2},
    "perception_only": {"method": "perception_only", "loss_type": "grpo"},
    "exploration_only": {"method": "exploration_only", "loss_type": "grpo"},
}

#: paper ablations on Geometry3K with Qwen2.5-VL-3B: gate strength (appendix Table 3), score type (Table 4)
ABLATIONS = {
    **{f"pepo_g_alpha{a:g}": {"method": "pepo_g", "gate_alpha": a} for a in (0.02, 0.10, 0.15)},
    **{f"pepo_g_{s}": {"method": "pepo_g", "vision_score_type": s} for s in ("l1", "l2", "dot")},
}


def recipes() -> dict[Path, tuple[str, dict]]:
    """Every recipe: path -> (header comment, flat option mapping)."""
    out = {}
    for task, spec in TASKS.items():
        for backbone, model in BACKBONES.items():
            methods = dict(METHODS)
            if task == "geometry3k" and backbone == "qwen2_5_vl_3b":
                methods.update(ABLATIONS)
            for name, method in methods.items():
                values = {**model, **spec["fields"], **COMMON, **method,
                          "output_dir": f"runs/{task}/{backbone}/{name}"}
                header = f"{task} x {backbone} x {name}. {spec['comment']}"
                if method["method"] in ("dapo", "pepo_d"):
                    header += (" DAPO preset here: loss dapo, clip-higher 0.28, overlong filtering, dynamic sampling; "
                               "the release's PEPO_D used loss bnpo without clip-higher (set loss_type: bnpo, "
                               "epsilon_high: 0.2 to match it).")
                out[ROOT / task / backbone / f"{name}.yaml"] = (header, values)
    return out


def _wrap(text: str, width: int = 98) -> str:
    words, lines, line = text.split(), [], "#"
    for word in words:
        if len(line) + 1 + len(word) > width:
            lines.append(line)
            line = "#"
        line += " " + word
    return "\n".join(lines + [line])


def main() -> None:
    for path, (header, values) in recipes().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        body = yaml.safe_dump(values, sort_keys=False, width=1000)
        path.write_text(f"{_wrap('Generated by recipes/generate.py; edit the table there. ' + header)}\n{body}")
    print(f"wrote {len(recipes())} recipes")


if __name__ == "__main__":
    main()
