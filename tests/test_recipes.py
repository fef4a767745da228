"""Every shipped recipe resolves and validates (--dry_run) against a tiny stand-in model and local data of its format."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from datasets import Dataset, Features, Image as ImageFeature, Sequence, Value

from pepo.cli import main

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*/*/*.yaml"))


def _generator():
    spec = importlib.util.spec_from_file_location("recipes_generate", ROOT / "recipes" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_files_match_the_generator_table():
    generated = _generator().recipes()
    assert sorted(generated) == RECIPES, "run `python recipes/generate.py` after editing its table"
    import yaml

    for path, (_, values) in generated.items():
        assert yaml.safe_load(path.read_text()) == values, f"{path} differs from recipes/generate.py"


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory, request):
    """A saved tiny Qwen2.5-VL and a local dataset folder in hiyouga/geometry3k's schema."""
    from pepo.data.synthetic import make_split
    from pepo.models.tiny import build_tiny_qwen2_5_vl

    tmp = tmp_path_factory.mktemp("stand_ins")
    tokenizer = request.getfixturevalue("tiny_tokenizer")
    model, processor = build_tiny_qwen2_5_vl(tokenizer)
    model.save_pretrained(tmp / "model")
    processor.save_pretrained(tmp / "model")
    features = Features({"images": Sequence(ImageFeature()), "problem": Value("string"), "answer": Value("string")})
    data = tmp / "geometry3k"
    data.mkdir()
    for split, seed in (("train", 0), ("validation", 1), ("test", 2)):
        rows = make_split(6, seed=seed)
        Dataset.from_dict({
            "images": [[r["image"]] for r in rows],
            "problem": [f"<image>Find x. {r['prompt'][0]['content'][0]['text']}" for r in rows],
            "answer": [r["answer"] for r in rows],
        }, features=features).to_parquet(data / f"{split}.parquet")
    _write_format_stand_ins(tmp, make_split)
    return tmp


#: recipe folder (task) -> stand-in dataset folder of its format
STAND_IN_OF_TASK = {
    "geometry3k": "geometry3k", "refcoco": "grounding", "fgvc_aircraft": "classification",
    "flower102": "classification", "puzzlevqa": "multiple_choice", "virl39k": "generic",
}
CLASSES = ("Boeing 737-200", "Airbus A320")


def _write_format_stand_ins(tmp: Path, make_split) -> None:
    """Local data in the grounding, classification (image folder) and multiple-choice recipes' schemas."""
    grounding, puzzles, generic = tmp / "grounding", tmp / "multiple_choice", tmp / "generic"
    grounding.mkdir()
    puzzles.mkdir()
    generic.mkdir()
    for split, seed in (("train", 0), ("test", 2)):
        rows = make_split(6, seed=seed)
        Dataset.from_dict({
            "image": [r["image"] for r in rows],
            "question": [f"the shape number {i}" for i in range(6)],
            "bbox": [[1.0, 2.0, r["image"].size[0] - 3.0, r["image"].size[1] - 4.0] for r in rows],
        }, features=Features({"image": ImageFeature(), "question": Value("string"),
                              "bbox": Sequence(Value("float64"))})).to_parquet(grounding / f"{split}.parquet")
        Dataset.from_dict({
            "image": [r["image"] for r in rows],
            "question": [r["prompt"][0]["content"][0]["text"] for r in rows],
            "options": [[r["answer"], "many", "none"] for r in rows],
            "answer": [r["answer"] for r in rows],
        }, features=Features({"image": ImageFeature(), "question": Value("string"),
                              "options": Sequence(Value("string")), "answer": Value("string")}),
        ).to_parquet(puzzles / f"{split}.parquet")
        Dataset.from_dict({
            "image": [r["image"] for r in rows],
            "question": [r["prompt"][0]["content"][0]["text"] for r in rows],
            "answer": [r["answer"] for r in rows],
        }, features=Features({"image": ImageFeature(), "question": Value("string"), "answer": Value("string")}),
        ).to_parquet(generic / f"{split}.parquet")
    # root/<split>/<class>/*.png: 4 train images per class (the largest k_shot), 3 test images per class
    for split, per_class, seed in (("train", 4, 3), ("test", 3, 4)):
        rows = make_split(per_class * len(CLASSES), seed=seed)
        for c, name in enumerate(CLASSES):
            folder = tmp / "classification" / split / name
            folder.mkdir(parents=True)
            for k in range(per_class):
                rows[c * per_class + k]["image"].save(folder / f"{k}.png")


@pytest.mark.parametrize("recipe", RECIPES, ids=[str(p.relative_to(ROOT / "recipes")) for p in RECIPES])
def test_recipe_dry_run(recipe, stand_ins, tmp_path, capsys):
    import yaml

    task = recipe.parent.parent.name
    assert task in STAND_IN_OF_TASK, f"add a stand-in dataset for recipe folder {task!r}"
    values = yaml.safe_load(recipe.read_text())
    n_train = len(CLASSES) * values["k_shot"] if values.get("dataset_format") == "classification" else 6
    code = main([
        "train", "--config", str(recipe), "--model_name_or_path", str(stand_ins / "model"),
        "--dataset", str(stand_ins / STAND_IN_OF_TASK[task]), "--bf16", "false", "--dry_run", "true",
        "--output_dir", str(tmp_path / "out"), "--report_to", "none",
    ])
    out = capsys.readouterr()
    assert code == 0, out.err
    tested = ", 6 test rows" if values.get("test_split") != "none" else ""
    assert f"dry run OK: {n_train} train rows{tested};" in out.out
    assert "8 samples" in out.out


def test_dry_run_reports_a_dataset_of_the_wrong_schema(stand_ins, tmp_path, capsys):
    code = main([
        "train", "--config", str(ROOT / "recipes" / "geometry3k" / "qwen2_5_vl_3b" / "grpo.yaml"),
        "--model_name_or_path", str(stand_ins / "model"),
        "--dataset", str(stand_ins / "geometry3k"), "--question_column", "question", "--bf16", "false",
        "--dry_run", "true", "--output_dir", str(tmp_path / "out"),
    ])
    assert code == 2
    assert "column(s) ['question'] not found" in capsys.readouterr().err


def test_instruction_is_appended_and_image_markers_removed(stand_ins):
    from argparse import Namespace

    from pepo.data.loading import load_rl_data

    args = Namespace(dataset=str(stand_ins / "geometry3k"), dataset_config=None, train_split="train",
                     test_split="none", image_column="images", question_column="problem", answer_column="answer",
                     image_root=None, num_test=0, skip_invalid_rows=False, prompt_instruction="Think first.")
    data, _ = load_rl_data(args)
    assert list(data) == ["train"]
    text = data["train"][0]["prompt"][0]["content"][0]["text"]
    assert text.startswith("Find x. ") and text.endswith("\n\nThink first.") and "<image>" not in text


@pytest.mark.parametrize("name, kind, stage", [("zero2", "DEEPSPEED", 2), ("zero3", "DEEPSPEED", 3), ("fsdp", "FSDP", None)])
def test_accelerate_configs_load_with_accelerate(name, kind, stage):
    """The shipped launch configs parse with accelerate's own loader (unknown keys would raise there)."""
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(ROOT / "recipes" / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type.name == kind and config.num_processes == 8
    assert config.mixed_precision == "bf16"
    if stage is not None:
        assert config.deepspeed_config["zero_stage"] == stage
    else:
        assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


@pytest.mark.parametrize("task, stand_in, split", [
    ("geometry3k", "geometry3k", "test"), ("refcoco", "grounding", "test"), ("lisa_grounding", "grounding", "test"),
    ("fgvc_aircraft", "classification", "test"), ("flower102", "classification", "test"),
    ("puzzlevqa", "multiple_choice", "test"), ("algopuzzlevqa", "multiple_choice", "test"),
])
def test_eval_task_scores_its_own_ground_truth(stand_ins, task, stand_in, split):
    """Each eval task's chain (schema -> adapter -> prompt -> scorer): the true answer scores 1, a wrong one 0."""
    from pepo.eval.tasks import TASKS, load_task_rows, make_scorer

    spec = TASKS[task]
    rows = load_task_rows(spec, str(stand_ins / stand_in), split)
    assert len(rows) >= 2
    score = make_scorer(spec)
    for row in rows:
        row = dict(row)
        right, _ = score([f"<think>look</think><answer>{row['answer']}</answer>"], row)
        wrong_answer = "[0, 0, 1, 1]" if spec.dataset_format == "grounding" else "Z9 none"
        wrong, _ = score([f"<think>look</think><answer>{wrong_answer}</answer>"], row)
        assert (right, wrong) == ([1.0], [0.0]), (task, row["answer"])


# --- what each recipe resolves to -----------------------------------------------------------------------------

#: recipe method -> (loss_type, upper clip epsilon, overlong filtering, dynamic sampling, token weighting, header says)
_G = "Resolved: loss grpo, clip 0.2 / 0.2, no overlong filtering, no dynamic sampling."
_D = "Resolved: loss dapo, clip 0.2 / 0.28, overlong filtering, dynamic sampling on the total reward."
RESOLVED_METHOD = {
    "grpo": ("grpo", 0.2, False, False, None, _G),
    "pepo_g": ("grpo", 0.2, False, False, "pepo", _G),
    "high_entropy": ("grpo", 0.2, False, False, None, _G),
    "perception_only": ("grpo", 0.2, False, False, "perception_only", _G),
    "exploration_only": ("grpo", 0.2, False, False, "exploration_only", _G),
    "dapo": ("dapo", 0.28, True, True, None, _D),
    "pepo_d": ("dapo", 0.28, True, True, "pepo", _D),
    # the public scripts run EasyR1's loss: token mean over the micro-batch (bnpo), clip 0.2 / 0.3, dual clip 3
    "papo_g": ("bnpo", 0.3, False, False, None,
               "Resolved: loss bnpo, clip 0.2 / 0.3, dual clip 3 (delta), no overlong filtering, no dynamic sampling."),
    "papo_d": ("bnpo", 0.28, False, True, None, "Resolved: loss bnpo, clip 0.2 / 0.28, dual clip 3 (delta), no overlong "
               "filtering, dynamic sampling on the accuracy reward."),
    "vppo": ("dapo", 0.28, False, True, None, "Resolved: loss dapo, clip 0.2 / 0.28, dual clip 3 (delta), no overlong "
             "filtering, dynamic sampling on the accuracy reward."),
    "pepo_d_release": ("bnpo", 0.2, True, True, "pepo",
                       "loss bnpo, dynamic sampling, overlong filtering, no clip-higher (epsilon_high = epsilon = 0.2)"),
}
#: method -> (dual clip delta, dynamic sampling filter) where they are not TRL's / DAPO's (None, total)
RESOLVED_CLIP_FILTER = {"papo_g": (3.0, "total"), "papo_d": (3.0, "accuracy"), "vppo": (3.0, "accuracy")}
#: method -> (beta, what the header says about it) where the method's public scripts set their own KL
RESOLVED_BETA = {"papo_g": (0.01, "KL to the reference 0.01"), "papo_d": (0.0, "no KL to the reference"),
                 "vppo": (0.0, "no KL to the reference")}
#: task -> (beta, gate_alpha, learning rate), as each task's header states them
RESOLVED_TASK = {
    "geometry3k": (0.001, 0.05, 1e-6), "refcoco": (0.001, 0.05, 1e-6), "fgvc_aircraft": (0.001, 0.02, 1e-6),
    "flower102": (0.001, 0.02, 1e-6), "puzzlevqa": (0.001, 0.1, 1e-6), "virl39k": (0.01, 0.1, 1e-6),
}


def _header(recipe: Path) -> str:
    lines = [line[1:].strip() for line in recipe.read_text().splitlines() if line.startswith("#")]
    return " ".join(lines)


@pytest.mark.parametrize("recipe", RECIPES, ids=[str(p.relative_to(ROOT / "recipes")) for p in RECIPES])
def test_recipe_resolves_to_what_its_header_says(recipe, tmp_path):
    import re

    from pepo.config import parse_train_args

    script, args = parse_train_args(["--config", str(recipe), "--output_dir", str(tmp_path), "--bf16", "false",
                                     "--report_to", "none"])
    stem, task = recipe.stem, recipe.parent.parent.name
    variant = re.fullmatch(r"(.+?)(?:_(\dshot)|_alpha([\d.]+)|_(l1|l2|dot))?", stem)
    method = stem if stem in RESOLVED_METHOD else variant.group(1)
    loss, clip_high, overlong, dynamic, weighting, says = RESOLVED_METHOD[method]
    header = _header(recipe)
    assert says in header
    upper = args.epsilon_high if args.epsilon_high is not None else args.epsilon
    assert (args.loss_type, upper, args.mask_truncated_completions, args.dynamic_sampling) == (
        loss, clip_high, overlong, dynamic)
    assert args.epsilon == 0.2 and args.token_weighting == weighting
    assert (args.delta, args.dynamic_sampling_filter) == RESOLVED_CLIP_FILTER.get(method, (None, "total"))
    assert args.top_entropy_quantile == (0.2 if method == "high_entropy" else 1.0)
    beta, alpha, lr = RESOLVED_TASK[task]
    beta_says = f"beta {beta:g}"
    if method in RESOLVED_BETA:
        beta, beta_says = RESOLVED_BETA[method]
    if variant.group(3):  # gate-strength ablation
        alpha = float(variant.group(3))
        assert f"This variant: gate_alpha {alpha:g}" in header
    assert beta_says in header and f"gate_alpha {alpha:g}" in header
    assert (args.beta, args.gate_alpha, args.learning_rate) == (beta, alpha, lr)
    assert args.vision_score_type == (variant.group(4) or "cosine")
    assert args.gate_temperature == 1.8 and args.num_generations == 8 and args.temperature == 1.0
    if variant.group(2):
        assert script.k_shot == int(variant.group(2)[0]) and f"This variant: k_shot {script.k_shot}" in header
    # 8 prompts x 8 samples per optimizer step on 8 GPUs: 2 completions x 4 accumulation steps per GPU
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * 8 == 64
