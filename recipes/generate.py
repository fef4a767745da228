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

from pepo.methods import builtin_methods

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

#: what each method's recipes set beyond the method's registry preset (pepo.methods); every built-in method except
#: `pepo` (PEPO on whatever loss: the recipes name pepo_g / pepo_d) gets a recipe.
_RECIPE_FIELDS = {
    "grpo": {"loss_type": "grpo"},
    "high_entropy": {"loss_type": "grpo", "high_entropy_quantile": 0.2},
    "perception_only": {"loss_type": "grpo"},
    "exploration_only": {"loss_type": "grpo"},
}
#: vgpo / clip_cov: no task recipes yet (tests/test_recipes.py's resolved-settings table does not know them; run them
#: with `--method vgpo` / `--method clip_cov --epsilon 1.0` on a task recipe)
_NO_RECIPE = ("pepo", "vgpo", "clip_cov")
METHODS = {name: {"method": name, **_RECIPE_FIELDS.get(name, {})} for name, m in builtin_methods().items()
           if name not in _NO_RECIPE and not m.needs_masked_forward}

# Perception-aware baselines (the registry's methods with a masked forward), with the defaults of their public
# training scripts as read in issues 12 and 19 (PAPO: MikeWangWZHL/PAPO, VPPO: huaixuheqing/VPPO-RL). Rollout, batch and lr stay the task's, so a
# comparison with the PEPO recipes of the same task changes only the method.
_PAPO_MASK = {"perception_mask_stage": "image", "perception_mask_block_size": 14, "perception_mask_probability": 0.6,
              "perception_mask_scope": "prompt", "perception_mask_fill": "black"}
PERCEPTION_METHODS = {
    "papo_g": {"method": "papo_g", "beta": 0.01, "papo_kl_coef": 0.02,
               "papo_entropy_coef": 0.05, "papo_masked_entropy_coef": 0.05, **_PAPO_MASK},
    "papo_d": {"method": "papo_d", "beta": 0.0, "papo_kl_coef": 0.01, "papo_entropy_coef": 0.03,
               "papo_masked_entropy_coef": 0.03, **_PAPO_MASK},
    "vppo": {"method": "vppo", "beta": 0.0, "perception_mask_stage": "pixels", "perception_mask_block_size": 14,
             "perception_mask_probability": 0.5, "perception_mask_scope": "rollout", "perception_mask_fill": "black",
             "vppo_top_fraction": 0.4, "vppo_scale_min": 0.9, "vppo_entropy_coef": 0.06},
}
assert set(PERCEPTION_METHODS) == {n for n, m in builtin_methods().items() if m.needs_masked_forward}
PERCEPTION_NOTES = {
    "papo_g": "PAPO_G (public scripts): KL to the reference 0.01, implicit perception loss 0.02, 14-px black blocks with "
    "probability 0.6 on the raw image (one mask per prompt), masked log-probs once per rollout batch with the rollout policy, without gradient. ASSUMPTION: double "
    "entropy 0.05 / 0.05 is the public 7B PAPO_G setting; set papo_entropy_coef and papo_masked_entropy_coef to 0 "
    "for PAPO_G without it.",
    "papo_d": "PAPO_D (public scripts): clip-higher and online filtering on accuracy (no overlong filtering), no KL "
    "to the reference, implicit perception loss 0.01, double entropy 0.03 / 0.03, same masking as PAPO_G.",
    "vppo": "VPPO (public scripts): clip 0.2 / 0.28, online filtering on accuracy (no overlong filtering), no KL to the "
    "reference, 14-px black blocks with probability 0.5 after resizing (a new mask per rollout), dependency from the "
    "rollout policy with and without masking, top 40% tokens by visual dependency train, advantage scale min 0.9 "
    "(min-max over the generation batch), entropy penalty 0.06 weighted by token share.",
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
        "perception_methods": ["papo_g", "papo_d", "vppo"],
    },
    "refcoco": {
        "comment": "Paper Task 2 (visual grounding, RefCOCO; the paper reports IoU@0.5). Trained with the continuous "
        "`iou` reward rather than the 0/1 `iou50`: with 8 samples per prompt a graded reward still separates better "
        "and worse boxes when none (or all) reach IoU 0.5, so fewer groups have zero advantage; score IoU@0.5 at "
        "evaluation (`iou50`). beta 0.001 and gate_alpha 0.05 (appendix text and table agree). ASSUMPTION: lr 1e-6; "
        "the appendix gives Tasks 2/3 a shared value we could not recover. Data: a local folder (no hub id we are "
        "sure of) with train and test files (.jsonl or .parquet), one row per referring expression: `image` (path, "
        "relative to --image_root), `question` (the expression), `bbox` ([x1, y1, x2, y2] in ORIGINAL image pixels; "
        "convert COCO [x, y, w, h] first). Boxes are rescaled to the resized image Qwen2.5-VL sees "
        "(box_convention absolute_resized; keep min_pixels/max_pixels equal to the processor's).",
        "fields": {
            "dataset": "data/refcoco", "dataset_format": "grounding", "train_split": "train", "test_split": "test",
            "image_column": "image", "question_column": "question", "answer_column": "bbox",
            "box_convention": "absolute_resized", "prompt_instruction": THINK_ANSWER,
            "reward_funcs": ["format", "iou"],
            "learning_rate": 1.0e-6, "max_completion_length": 512, "beta": 0.001, "gate_alpha": 0.05,
        },
    },
    **{
        task: {
            "comment": f"Paper Task 3 (few-shot fine-grained classification, {title}): 4-shot by default, 1-/2-shot "
            "variants for pepo_g and grpo. gate_alpha 0.02. ASSUMPTION: lr 1e-6 and beta 0.001; the appendix "
            "gives Tasks 2/3 a shared lr we could not recover. Data: a local image folder (no hub id we are sure of) "
            f"{path}/<split>/<class name>/*.jpg with splits train and test; k-shot images per class are sampled "
            "from train deterministically from the seed. The prompt does not list the classes "
            "(classification_show_options false); the reward compares class names.",
            "fields": {
                "dataset": path, "dataset_format": "classification", "train_split": "train", "test_split": "test",
                "image_column": "image", "answer_column": "label", "k_shot": 4,
                "classification_show_options": False, "prompt_instruction": THINK_ANSWER,
                "reward_funcs": ["format", "choice"],
                "learning_rate": 1.0e-6, "max_completion_length": 512, "beta": 0.001, "gate_alpha": 0.02,
            },
            "variants": {f"{m}_{k}shot": {**METHODS[m], "k_shot": k} for m in ("pepo_g", "grpo") for k in (1, 2)},
        }
        for task, title, path in (
            ("fgvc_aircraft", "FGVC-Aircraft", "data/fgvc_aircraft"),
            ("flower102", "Oxford Flowers-102", "data/flower102"),
        )
    },
    "puzzlevqa": {
        "comment": "Paper Task 4 (abstract visual puzzles, PuzzleVQA / AlgoPuzzleVQA). gate_alpha 0.1 (appendix table "
        "and text agree); lr 1e-6 (the appendix shares Task 1's value, 1e-6 in the release); beta 0.001. Data: a "
        "local folder (no hub id we are sure of) with train and test files (.jsonl or .parquet): `image` (path "
        "relative to --image_root), `question`, `options` (list of option texts), `answer` (an option's text or "
        "letter). The answer is normalised to the option letter; a `choices` column keeps the texts for the "
        "reward.",
        "fields": {
            "dataset": "data/puzzlevqa", "dataset_format": "multiple_choice", "train_split": "train",
            "test_split": "test", "image_column": "image", "question_column": "question", "answer_column": "answer",
            "options_column": "options", "prompt_instruction": THINK_ANSWER, "reward_funcs": ["format", "choice"],
            "learning_rate": 1.0e-6, "max_completion_length": 512, "beta": 0.001, "gate_alpha": 0.1,
        },
    },
    "virl39k": {
        "comment": "Paper Task 5 (scaling: train on ViRL39K, evaluate on Geometry3K test, MathVista, We-Math, "
        "MathVerse, LogicVista, SuperClevr Counting, MMMU-Pro); the paper reports GRPO, PEPO_G and PAPO_G with "
        "Qwen2.5-VL. gate_alpha 0.1 (appendix text and table agree), lr 1e-6 (shared with "
        "Task 1), completion 1024, beta 0.01. Rollout with vLLM colocated on the training GPUs at 0.6 memory "
        "utilisation, as in the release's scripts (needs `pip install vllm`; drop the three vllm keys to sample "
        "with transformers). Data: a local folder with a train file (.jsonl or .parquet): `image` (path relative "
        "to --image_root, or a list of paths), `question`, `answer` (free-form or an option letter; the accuracy "
        "reward routes letters to the choice matcher).",
        "backbones": ["qwen2_5_vl_3b"],
        "methods": ["grpo", "pepo_g"],
        "perception_methods": ["papo_g"],
        "fields": {
            "dataset": "data/virl39k", "train_split": "train", "test_split": "none", "image_column": "image",
            "question_column": "question", "answer_column": "answer", "prompt_instruction": THINK_ANSWER,
            "reward_funcs": ["format", "accuracy"], "learning_rate": 1.0e-6, "max_completion_length": 1024,
            "beta": 0.01, "gate_alpha": 0.1, "use_vllm": True, "vllm_mode": "colocate",
            "vllm_gpu_memory_utilization": 0.6,
        },
    },
}


#: paper ablations on Geometry3K with Qwen2.5-VL-3B: gate strength (appendix Table 3), score type (Table 4)
ABLATIONS = {
    **{f"pepo_g_alpha{a:g}": {"method": "pepo_g", "gate_alpha": a} for a in (0.02, 0.10, 0.15)},
    **{f"pepo_g_{s}": {"method": "pepo_g", "vision_score_type": s} for s in ("l1", "l2", "dot")},
}

#: the release's own PEPO_D (commit 2b1e788, Qwen2.5-VL-3B on Geometry3K): loss bnpo, dynamic sampling, overlong
#: filtering, epsilon_high unset (= epsilon 0.2: no clip-higher). Explicit values win over the pepo_d preset.
RELEASE_PEPO_D = {
    "pepo_d_release": {"method": "pepo_d", "loss_type": "bnpo", "epsilon": 0.2, "epsilon_high": 0.2,
                       "mask_truncated_completions": True, "dynamic_sampling": True},
}


#: what an unset preset-governed field becomes without a preset (PEPOConfig: TRL's defaults, no dynamic sampling)
_UNSET = {"loss_type": "dapo", "epsilon_high": None, "delta": None, "mask_truncated_completions": False,
          "dynamic_sampling": False, "dynamic_sampling_filter": "total"}


def _resolved_note(method: dict) -> str:
    """The loss shape a recipe resolves to: its explicit values, then the method's registry preset, then defaults."""
    preset = builtin_methods()[method["method"]].preset
    r = {k: method.get(k, preset.get(k, default)) for k, default in _UNSET.items()}
    upper = r["epsilon_high"] if r["epsilon_high"] is not None else method.get("epsilon", 0.2)
    parts = [f"loss {r['loss_type']}", f"clip {method.get('epsilon', 0.2):g} / {upper:g}"]
    if r["delta"] is not None:
        parts.append(f"dual clip {r['delta']:g} (delta)")
    parts.append("overlong filtering" if r["mask_truncated_completions"] else "no overlong filtering")
    parts.append(f"dynamic sampling on the {r['dynamic_sampling_filter']} reward" if r["dynamic_sampling"]
                 else "no dynamic sampling")
    return " Resolved: " + ", ".join(parts) + "."


def _method_note(name: str, method: dict) -> str:
    """The header sentence that says what this recipe's method settings resolve to."""
    if name in RELEASE_PEPO_D:
        return (" Release-faithful PEPO_D (the release's own recipe): loss bnpo, dynamic sampling, overlong "
                "filtering, no clip-higher (epsilon_high = epsilon = 0.2); these explicit values override the "
                "pepo_d preset.")
    note = _resolved_note(method)
    if method["method"] in ("dapo", "pepo_d"):
        note += (" The release's PEPO_D used loss bnpo without clip-higher (recipe geometry3k/qwen2_5_vl_3b/"
                 "pepo_d_release.yaml; explicit loss_type / epsilon_high values override the preset).")
    changed = {k: v for k, v in method.items() if k in ("gate_alpha", "vision_score_type", "k_shot")}
    if changed:
        note += " This variant: " + ", ".join(f"{k} {v}" for k, v in changed.items()) + "."
    return note


def recipes() -> dict[Path, tuple[str, dict]]:
    """Every recipe: path -> (header comment, flat option mapping)."""
    out = {}
    for task, spec in TASKS.items():
        for backbone, model in BACKBONES.items():
            if backbone not in spec.get("backbones", BACKBONES):
                continue
            methods = {k: v for k, v in METHODS.items() if k in spec.get("methods", METHODS)}
            if task == "geometry3k" and backbone == "qwen2_5_vl_3b":
                methods.update(ABLATIONS)
                methods.update(RELEASE_PEPO_D)
            methods.update(spec.get("variants", {}))
            methods.update({m: PERCEPTION_METHODS[m] for m in spec.get("perception_methods", ())})
            for name, method in methods.items():
                values = {**model, **spec["fields"], **COMMON, **method,
                          "output_dir": f"runs/{task}/{backbone}/{name}"}
                header = f"{task} x {backbone} x {name}. {spec['comment']}{_method_note(name, method)}"
                if name in PERCEPTION_NOTES:
                    header += " " + PERCEPTION_NOTES[name]
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
