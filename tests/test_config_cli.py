"""Configuration parsing, bad input caught before training, and the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from PIL import Image

from pepo.cli import main
from pepo.config import ConfigError, demo_recipe_path, load_yaml, parse_train_args
from pepo.data.loading import DataError, to_rl_rows


def test_demo_recipe_parses_with_yaml_and_cli_precedence(tmp_path):
    base = load_yaml(demo_recipe_path())
    recipe = tmp_path / "r.yaml"
    recipe.write_text("gate_alpha: 0.1\nmethod: perception_only\n")
    script, args = parse_train_args(["--config", str(recipe), "--gate_alpha", "0.2"], base=base)
    assert args.method == "perception_only"  # from the file
    assert args.gate_alpha == 0.2  # the flag beats the file
    assert args.num_generations == 8 and script.dataset == "synthetic"  # from the demo base
    assert args.bf16 is False  # no accelerator here: TRL's bf16 default is turned off


def _resolved(**kwargs):
    from pepo.trainer import PEPOConfig

    values = dict(output_dir="/tmp/pepo-config-test", use_cpu=True, bf16=False, per_device_train_batch_size=8,
                  num_generations=4, report_to="none")
    return PEPOConfig(**{**values, **kwargs})


def _method_fields(args):
    return args.loss_type, args.epsilon_high, args.mask_truncated_completions, args.dynamic_sampling


def test_presets_fill_only_fields_left_unset():
    assert _method_fields(_resolved(method="pepo_d")) == ("dapo", 0.28, True, True)
    assert _method_fields(_resolved(method="dapo")) == ("dapo", 0.28, True, True)
    assert _method_fields(_resolved(method="pepo_g")) == ("grpo", None, False, False)
    assert _method_fields(_resolved(method="pepo")) == ("dapo", None, False, False)  # TRL's default loss
    # explicit values win, each on its own
    assert _method_fields(_resolved(method="pepo_d", loss_type="bnpo")) == ("bnpo", 0.28, True, True)
    assert _method_fields(_resolved(method="pepo_d", epsilon_high=0.2)) == ("dapo", 0.2, True, True)
    assert _method_fields(_resolved(method="dapo", mask_truncated_completions=False, dynamic_sampling=False)) == (
        "dapo", 0.28, False, False)
    assert _resolved(method="pepo_g", loss_type="dr_grpo").loss_type == "dr_grpo"
    assert _resolved(method="pepo", dynamic_sampling=True, mask_truncated_completions=True).dynamic_sampling


def test_high_entropy_refuses_a_conflicting_top_entropy_quantile():
    assert _resolved(method="high_entropy", high_entropy_quantile=0.3).top_entropy_quantile == 0.3
    with pytest.raises(ValueError, match=r"high_entropy_quantile=0.2.*top_entropy_quantile=0.5"):
        _resolved(method="high_entropy", top_entropy_quantile=0.5)


def test_explicit_values_from_yaml_and_flags_beat_the_preset_but_the_demo_base_does_not(tmp_path):
    base = load_yaml(demo_recipe_path())
    assert base["loss_type"] == "grpo" and base["method"] == "pepo"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: pepo_d\nloss_type: bnpo\nepsilon_high: 0.2\n")
    _, args = parse_train_args(["--config", str(recipe)], base=base)
    assert _method_fields(args) == ("bnpo", 0.2, True, True)
    _, args = parse_train_args(["--method", "pepo_d", "--loss_type", "bnpo", "--dynamic_sampling", "false"], base=base)
    assert _method_fields(args) == ("bnpo", 0.28, True, False)
    _, args = parse_train_args(["--method=pepo_d", "--loss-type=bnpo"], base=base)
    assert args.loss_type == "bnpo"
    # the demo recipe's `loss_type: grpo` is a default for its own method: the pepo_d preset replaces it ...
    _, args = parse_train_args(["--method", "pepo_d"], base=base)
    assert _method_fields(args) == ("dapo", 0.28, True, True)
    # ... and stays for methods without a loss preset
    _, args = parse_train_args(["--method", "grpo"], base=base)
    assert _method_fields(args) == ("grpo", None, False, False)
    _, args = parse_train_args([], base=base)
    assert args.method == "pepo" and args.loss_type == "grpo"


def test_unknown_yaml_key_is_named_with_suggestion(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("gate_alpah: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key `gate_alpah`.*gate_alpha"):
        parse_train_args(["--config", str(recipe)])


def test_unknown_flag_and_method_are_named():
    with pytest.raises(ConfigError, match=r"--gate_temp.*gate_temperature"):
        parse_train_args(["--gate_temp", "1.0"])
    with pytest.raises(ConfigError, match=r"method='pepo_x'"):
        parse_train_args(["--method", "pepo_x"])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        parse_train_args(["--config", str(tmp_path / "nope.yaml")])


def _raw(rows):
    return Dataset.from_list(rows)


def test_row_without_image_or_answer_is_named(tmp_path):
    good = Image.new("RGB", (8, 8))
    img = tmp_path / "a.png"
    good.save(img)
    rows = [{"id": "a", "image": str(img), "question": "q?", "answer": "1"},
            {"id": "b", "image": None, "question": "q?", "answer": "2"}]
    with pytest.raises(DataError, match=r"row 1 \(id b\), field 'image'.*needs an image"):
        to_rl_rows(_raw(rows), "train")
    rows[1] = {"id": "b", "image": str(img), "question": "q?", "answer": " "}
    with pytest.raises(DataError, match=r"row 1 \(id b\), field 'answer': empty answer"):
        to_rl_rows(_raw(rows), "train")
    rows[1] = {"id": "a", "image": str(img), "question": "q?", "answer": "3"}
    with pytest.raises(DataError, match="duplicate id"):
        to_rl_rows(_raw(rows), "train")
    out, skipped = to_rl_rows(_raw(rows), "train", skip_invalid_rows=True)
    assert skipped == 1 and len(out) == 1 and out[0]["prompt"][0]["content"][0]["text"] == "q?"


def test_image_paths_cannot_escape_root_and_missing_files_are_named(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.png")
    rows = [{"id": "a", "image": "../secret.png", "question": "q?", "answer": "1"}]
    with pytest.raises(DataError, match="escapes image_root"):
        to_rl_rows(_raw(rows), "train", image_root=str(root))
    rows = [{"id": "a", "image": "missing.png", "question": "q?", "answer": "1"}]
    with pytest.raises(DataError, match="missing.png does not exist"):
        to_rl_rows(_raw(rows), "train", image_root=str(root))
    (root / "bad.png").write_bytes(b"not a png")
    rows = [{"id": "a", "image": "bad.png", "question": "q?", "answer": "1"}]
    with pytest.raises(DataError, match="could not be read"):
        to_rl_rows(_raw(rows), "train", image_root=str(root))


def test_missing_column_names_the_mapping_flags():
    with pytest.raises(DataError, match="--image_column"):
        to_rl_rows(_raw([{"picture": "x", "question": "q", "answer": "1"}]), "train")


def test_processor_without_image_token_fails_before_training(tiny_vlm):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    from pepo.models.loading import image_token_id

    model, _ = tiny_vlm
    bare = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, "<unk>")))
    with pytest.raises(ValueError, match="image_token"):
        image_token_id(model, bare)


def test_cli_help_and_errors(capsys, tmp_path):
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--gate_alpha" in text and "--method" in text and "--model_name_or_path" in text
    recipe = tmp_path / "r.yaml"
    recipe.write_text("gate_alpah: 0.1\n")
    assert main(["train", "--config", str(recipe)]) == 2
    assert "gate_alpah" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2


def test_pepo_entry_point_is_installed():
    out = subprocess.run([sys.executable, "-m", "pepo.cli", "--help"], capture_output=True, text=True, check=True)
    assert "pepo" in out.stdout


def test_tiny_end_to_end_run_writes_the_run_folder(tmp_path):
    """The demo pipeline at toy size: every artefact lands and the numbers in it are consistent."""
    out = tmp_path / "run"
    argv = [
        "--num_train", "120", "--num_test", "24", "--warm_start_steps", "4", "--warm_start_target", "0",
        "--warm_start_min_accuracy", "0", "--max_steps", "2", "--logging_steps", "1", "--output_dir", str(out),
        "--per_device_train_batch_size", "16",
    ]
    code = main(["demo", *argv])
    assert code == 0
    for name in ("config.yaml", "metrics.jsonl", "results.json", "checkpoint/config.json", "plots/reward.png",
                 "plots/visual_similarity.png", "plots/entropy.png", "plots/weight_percentiles.png"):
        assert (out / name).is_file(), name
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "pepo/progress" in m] == [1, 2]
    assert metrics[0]["pepo/progress"] == 0.0 and metrics[1]["pepo/progress"] == 0.5
    results = json.loads((out / "results.json").read_text())
    assert results["before_rl"]["n"] == 24 and results["after_rl"]["n"] == 24
    # The after-RL numbers are those of the saved checkpoint: re-scoring it on the same test rows gives them exactly.
    from pepo.data.loading import load_rl_data
    from pepo.models.loading import load_model_and_processor
    from pepo.rewards import get_reward_funcs
    from pepo.run import evaluate_accuracy

    script_args, _ = parse_train_args(argv, base=load_yaml(demo_recipe_path()))
    data, _ = load_rl_data(script_args, seed=0)
    model, processor = load_model_and_processor(str(out / "checkpoint"), torch_dtype="float32")
    rescored = evaluate_accuracy(model.eval(), processor, data["test"], get_reward_funcs(script_args.reward_funcs)[0],
                                 script_args.eval_max_new_tokens, show_progress=False)
    assert rescored == results["after_rl"]
    # overall is the item-weighted mean of the per-type accuracies, for both scorings
    from collections import Counter

    counts = Counter(data["test"]["question_type"])
    for key in ("before_rl", "after_rl"):
        by_type = sum(results[key][qt] * n for qt, n in counts.items()) / sum(counts.values())
        assert results[key]["overall"] == pytest.approx(by_type, abs=1e-12)
    config = load_yaml(out / "config.yaml")
    assert config["method"] == "pepo" and config["max_steps"] == 2
    from pepo.models.loading import load_model_and_processor

    model, processor = load_model_and_processor(str(out / "checkpoint"))
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")


def test_train_from_local_checkpoint_and_jsonl_dataset_with_lora(tmp_path, tiny_vlm, monkeypatch):
    """The real-checkpoint path: a saved model directory + a JSONL file with relative image paths."""
    from pepo.data.synthetic import make_split
    from pepo.models.loading import load_model_and_processor
    from pepo.rewards import REWARDS
    from tests.test_trainer import varied_reward

    # An untrained model never matches an answer: exact match would give zero advantages and no update.
    monkeypatch.setitem(REWARDS, "varied", varied_reward)
    model, processor = tiny_vlm
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    processor.save_pretrained(ckpt)
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    lines = []
    for i, row in enumerate(make_split(16, seed=3)):
        row["image"].save(images / f"{i}.png")
        question = row["prompt"][0]["content"][0]["text"]
        lines.append(json.dumps({"id": f"q{i}", "img": f"images/{i}.png", "problem": question, "solution": row["answer"]}))
    data = tmp_path / "data" / "train.jsonl"
    data.write_text("\n".join(lines))
    out = tmp_path / "run"
    code = main([
        "train", "--model_name_or_path", str(ckpt), "--dataset", str(data), "--image_root", str(data.parent),
        "--image_column", "img", "--question_column", "problem", "--answer_column", "solution",
        "--test_split", "none", "--reward_funcs", "varied", "--warm_start", "false", "--use_peft", "true",
        "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj", "--per_device_train_batch_size", "8",
        "--num_generations", "4", "--max_completion_length", "6", "--max_steps", "2", "--learning_rate", "0.05",
        "--report_to", "none", "--save_strategy", "no", "--output_dir", str(out), "--logging_steps", "1",
    ])
    assert code == 0
    trained, _ = load_model_and_processor(str(out / "checkpoint"))
    before = dict(model.named_parameters())
    changed = [n for n, p in trained.named_parameters() if "q_proj" in n and not torch.equal(p, before[n])]
    assert changed, "LoRA-merged q_proj weights should differ from the starting checkpoint"
    untouched = [n for n, p in trained.named_parameters() if "mlp" in n and not torch.equal(p, before[n])]
    assert not untouched, "only LoRA targets may change"


def test_max_prompt_length_is_refused_with_what_replaces_it(tmp_path):
    # TRL 1.16 has no max_prompt_length; a user coming from TRL 0.x / EasyR1 must learn that nothing is cut
    with pytest.raises(ConfigError, match=r"`--max_prompt_length`\. TRL 1\.16 removed it and pepo never truncates "
                                          r"prompts.*checked, with its image tokens, against the context"):
        parse_train_args(["--max_prompt_length", "512"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("max_prompt_length: 512\n")
    with pytest.raises(ConfigError, match=r"unknown config key `max_prompt_length`\. TRL 1\.16 removed it"):
        load_yaml(recipe)


def test_embedded_model_with_vllm_names_its_saved_folder(tmp_path, monkeypatch):
    # TRL builds vLLM from model.name_or_path: a model built in code has none ('' sends vLLM to the hub), so the
    # trainer must get the folder the warm-started model was saved to, holding exactly these weights.
    import pepo.run
    from transformers import AutoModelForImageTextToText

    seen = {}

    class Stop(Exception):
        pass

    def fake_trainer(model, args, **kwargs):
        seen["path"], seen["config_path"], seen["use_vllm"] = model.name_or_path, model.config.name_or_path, args.use_vllm
        seen["state"] = {k: v.clone() for k, v in model.state_dict().items()}
        raise Stop

    monkeypatch.setattr(pepo.run, "PEPOTrainer", fake_trainer)
    out = tmp_path / "run"
    with pytest.raises(Stop):
        main(["demo", "--num_train", "40", "--num_test", "4", "--warm_start_steps", "2", "--warm_start_target", "0",
              "--warm_start_min_accuracy", "0", "--max_steps", "1", "--output_dir", str(out),
              "--use_vllm", "true", "--vllm_mode", "colocate"])
    assert seen["use_vllm"] and seen["path"] == seen["config_path"] == str(out / "warm_start")
    saved = AutoModelForImageTextToText.from_pretrained(seen["path"]).state_dict()
    assert max((saved[k] - v).abs().max().item() for k, v in seen["state"].items() if k in saved) == 0.0


def test_num_test_zero_means_no_held_out_split():
    # an empty test split used to fail validation ("column 'images' missing") before anything ran
    from pepo.data.loading import load_data

    script_args, _ = parse_train_args(["--num_train", "12", "--num_test", "0"], base=load_yaml(demo_recipe_path()))
    loaded = load_data(script_args, log=None)
    assert list(loaded.splits) == ["train"] and len(loaded.splits["train"]) == 12
