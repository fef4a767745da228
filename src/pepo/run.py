"""One training run, end to end: data -> model (+ warm start) -> score -> PEPO -> score -> run folder.

The run folder holds ``config.yaml`` (every resolved option), ``data.json`` (the dataset, the format it was read
as, splits, row counts, notes), ``metrics.jsonl`` (one line per
logging step), ``checkpoint/`` (model + processor, loadable by ``pepo.models.loading``),
``results.json`` (held-out accuracy before and after RL, per question type) and ``plots/``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from transformers import set_seed

from pepo.callbacks import JsonlMetricsCallback
from pepo.config import EMBEDDED, ScriptArguments
from pepo.data.loading import load_data, write_data_record
from pepo.eval.generation import generate_completions
from pepo.rewards import get_reward_funcs
from pepo.trainer import PEPOConfig, PEPOTrainer

__all__ = ["RunResult", "evaluate_accuracy", "build_model", "run_training", "missing_report_to"]

_WARM_START_HELD_OUT = 200


@dataclass
class RunResult:
    output_dir: Path
    before: dict[str, float]
    after: dict[str, float] | None
    warm_start_steps: int
    train_seconds: float


def evaluate_accuracy(
    model: torch.nn.Module,
    processor: Any,
    dataset: Any,
    reward: Callable[..., list[float]],
    max_new_tokens: int,
    desc: str = "scoring",
    show_progress: bool = True,
) -> dict[str, float]:
    """Greedy-decode every row of ``dataset`` and score it with ``reward`` (1 = correct).

    Returns:
        ``{"overall": accuracy in [0, 1], "n": rows, <question_type>: accuracy, ...}``.
    """
    outs = generate_completions(
        model, processor, dataset["prompt"], dataset["images"], max_new_tokens, desc=desc, show_progress=show_progress
    )
    columns = {k: dataset[k] for k in dataset.column_names if k not in ("prompt", "images")}
    scores = reward(completions=[o[0] for o in outs], **columns)
    result = {"overall": sum(scores) / len(scores), "n": float(len(scores))}
    if "question_type" in columns:
        by_type: dict[str, list[float]] = {}
        for qt, s in zip(columns["question_type"], scores):
            by_type.setdefault(qt, []).append(s)
        result.update({qt: sum(v) / len(v) for qt, v in sorted(by_type.items())})
    return result


def build_model(
    script_args: ScriptArguments, training_args: PEPOConfig, data: Any, log: Callable[[str], None] = print
):
    """Load a real checkpoint, or build the embedded tiny Qwen2.5-VL and warm-start it.

    Returns:
        ``(model, processor, warm_start_steps)``.
    """
    seed = training_args.seed
    if script_args.model_name_or_path != EMBEDDED:
        from pepo.models.loading import load_model_and_processor

        try:
            model, processor = load_model_and_processor(
                script_args.model_name_or_path,
                torch_dtype=script_args.torch_dtype,
                trust_remote_code=training_args.trust_remote_code,
                attn_implementation=script_args.attn_implementation,
            )
        except OSError as err:  # offline hub, missing folder
            raise _model_error(script_args.model_name_or_path, err) from None
        return model, processor, 0

    from pepo.data.synthetic import text_corpus
    from pepo.models.tiny import build_tiny_qwen2_5_vl, train_tiny_tokenizer
    from pepo.sft import WarmStartConfig, answer_completion, warm_start

    answers = sorted(set(data["train"]["answer"]))
    tokenizer = train_tiny_tokenizer(text_corpus() + [answer_completion(a) for a in answers])
    reward = get_reward_funcs(script_args.reward_funcs)[0]
    held_out = data["train"].select(range(min(_WARM_START_HELD_OUT, len(data["train"]) // 5)))

    def score(completions: list[str], truth: list[str]) -> float:
        return sum(reward(completions=completions, answer=truth)) / max(1, len(truth))

    config = WarmStartConfig(
        max_steps=script_args.warm_start_steps,
        learning_rate=script_args.warm_start_learning_rate,
        target_accuracy=script_args.warm_start_target,
        min_accuracy=script_args.warm_start_min_accuracy,
    )
    for attempt in range(max(1, script_args.warm_start_retries)):
        model, processor = build_tiny_qwen2_5_vl(tokenizer, seed=seed + 1000 * attempt)
        if not script_args.warm_start:
            return model, processor, 0
        result = warm_start(model, processor, data["train"], held_out, score, config, seed=seed + attempt)
        log(f"warm start attempt {attempt + 1}: {result.steps} steps, held-out accuracy {result.accuracy:.3f}")
        if result.succeeded:
            return model, processor, result.steps
    raise RuntimeError(
        f"the warm start stayed below {config.min_accuracy:.0%} held-out accuracy in {script_args.warm_start_retries} "
        "attempts; raise --warm_start_steps or --warm_start_learning_rate."
    )


def _write_config(path: Path, script_args: ScriptArguments, training_args: PEPOConfig) -> None:
    def plain(obj: Any) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if hasattr(value, "value"):  # enums
                value = value.value
            if isinstance(value, (str, int, float, bool, type(None), list, dict)):
                out[f.name] = value
        return out

    path.write_text(yaml.safe_dump({**plain(script_args), **plain(training_args)}, sort_keys=True))


#: ``report_to`` integrations -> the package each needs
REPORT_TO_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow",
                      "comet_ml": "comet_ml", "clearml": "clearml", "swanlab": "swanlab"}


def missing_report_to(report_to: Any) -> str | None:
    """A one-line problem naming the install command when a ``report_to`` logger's package is missing
    (transformers would stop when the trainer starts, after the model is loaded); None when all are installed."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    for name in names:
        package = REPORT_TO_PACKAGES.get(name)
        if package is None:
            continue
        if name == "tensorboard":  # torch's SummaryWriter needs the tensorboard package (tensorboardX also works)
            found = importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")
        else:
            found = importlib.util.find_spec(package)
        if found is None:
            return f"report_to: {name} is not installed (pip install {package}); or pass --report_to none."
    return None


def _model_error(model: str, err: Exception) -> Exception:
    from pepo.config import ConfigError

    return ConfigError(
        f"model {model!r} could not be loaded ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
        f"Without network access, download it elsewhere (`huggingface-cli download {model} --local-dir DIR`) and "
        f"pass --model_name_or_path DIR."
    )


def _dry_run(script_args: ScriptArguments, training_args: PEPOConfig, data: Any, log: Callable[[str], None]) -> None:
    """Validate what a run needs without loading weights: processor, image token, data, rewards, batch arithmetic."""
    from pepo.models.loading import image_token_id, load_processor

    if script_args.model_name_or_path == EMBEDDED:
        from pepo.data.synthetic import text_corpus
        from pepo.models.tiny import build_tiny_qwen2_5_vl, train_tiny_tokenizer

        config, processor = build_tiny_qwen2_5_vl(train_tiny_tokenizer(text_corpus()))
    else:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(script_args.model_name_or_path,
                                                trust_remote_code=training_args.trust_remote_code)
            processor = load_processor(script_args.model_name_or_path,
                                       trust_remote_code=training_args.trust_remote_code)
        except (OSError, ValueError) as err:  # offline hub, missing folder, not a model
            raise _model_error(script_args.model_name_or_path, err) from None
    token = image_token_id(config, processor, image_token=training_args.image_token)
    # The processor must expand the image placeholder of every prompt (catches chat-template / format mismatches).
    for name, split in data.items():
        row = split[0]
        text = processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        ids = processor(text=[text], images=[row["images"]], return_tensors="pt")["input_ids"]
        if not (ids == token).any():
            raise ValueError(f"split {name!r} row 0: the processor produced no image token (id {token}) for the prompt.")
    if training_args.use_vllm and importlib.util.find_spec("vllm") is None:
        log("note: use_vllm is set but vLLM is not installed in this environment; training here would stop at "
            "start-up (pip install vllm, or drop use_vllm to sample with transformers).")
    global_batch = training_args.per_device_train_batch_size * training_args.world_size
    log(
        f"dry run OK: {len(data['train'])} train rows"
        + (f", {len(data['test'])} test rows" if "test" in data else "")
        + f"; image token id {token}; rewards {script_args.reward_funcs}; method {training_args.method} "
        f"(loss {training_args.loss_type}); {global_batch} completions per step = "
        f"{global_batch // training_args.num_generations} prompts x {training_args.num_generations} samples "
        f"x {training_args.gradient_accumulation_steps} accumulation steps"
    )


def run_training(
    script_args: ScriptArguments, training_args: PEPOConfig, log: Callable[[str], None] = print
) -> RunResult:
    """Run one experiment as configured; see the module docstring for what lands in the run folder."""
    if not torch.cuda.is_available():
        torch.set_num_threads(script_args.torch_threads)
    seed = training_args.seed
    set_seed(seed)
    random.seed(seed)
    out = Path(training_args.output_dir)
    is_main = training_args.process_index == 0  # under torchrun / accelerate, one process writes the run folder
    logger_problem = missing_report_to(training_args.report_to)
    if logger_problem and not script_args.dry_run:
        from pepo.config import ConfigError

        raise ConfigError(logger_problem)
    if logger_problem:  # the dry run goes on validating the rest, then fails with this
        log(f"problem: {logger_problem}")
    # Data first: a bad file stops the run before anything is written to the run folder.
    loaded = load_data(script_args, seed=seed, log=log if is_main else None)
    data, skipped = loaded.splits, loaded.skipped
    for split, n in skipped.items():
        if n:
            log(f"skipped {n} invalid rows in split {split!r} (--skip_invalid_rows)")
    reward_funcs = get_reward_funcs(script_args.reward_funcs)
    out.mkdir(parents=True, exist_ok=True)
    if is_main:
        _write_config(out / "config.yaml", script_args, training_args)
        write_data_record(out, loaded)

    if script_args.dry_run:
        _dry_run(script_args, training_args, data, log)
        if logger_problem:
            from pepo.config import ConfigError

            raise ConfigError(f"dry run found a problem: {logger_problem}")
        return RunResult(out, {}, None, 0, 0.0)

    start = time.perf_counter()
    model, processor, ws_steps = build_model(script_args, training_args, data, log)
    from pepo.models.loading import image_token_id

    image_token_id(model, processor, image_token=training_args.image_token)  # fails early, naming the fix
    test = data.get("test")
    before = after = None
    if test is not None:
        before = evaluate_accuracy(model, processor, test, reward_funcs[0], script_args.eval_max_new_tokens,
                                   desc="scoring before RL")
        log(f"held-out accuracy before RL: {before['overall']:.3f} on {int(before['n'])} items")

    peft_config = None
    if script_args.use_peft:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=script_args.lora_r, lora_alpha=script_args.lora_alpha, target_modules=script_args.lora_target_modules
        )
    trainer = PEPOTrainer(
        model=model,
        peft_config=peft_config,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=data["train"],
        processing_class=processor,
        callbacks=[JsonlMetricsCallback(out / "metrics.jsonl")],
    )
    trainer.train()
    train_seconds = time.perf_counter() - start
    if script_args.use_peft:  # save a standalone model, loadable like any checkpoint
        trainer.model = trainer.model.merge_and_unload()
    trainer.save_model(str(out / "checkpoint"))
    if is_main:
        processor.save_pretrained(str(out / "checkpoint"))
    if test is not None:
        after = evaluate_accuracy(trainer.model, processor, test, reward_funcs[0], script_args.eval_max_new_tokens,
                                  desc="scoring after RL")
        log(f"held-out accuracy after RL:  {after['overall']:.3f} (before {before['overall']:.3f})")
    result = RunResult(out, before or {}, after, ws_steps, train_seconds)
    if not is_main:
        return result
    (out / "results.json").write_text(json.dumps(
        {"before_rl": before, "after_rl": after, "warm_start_steps": ws_steps, "seconds": train_seconds,
         "method": training_args.method, "seed": seed}, indent=2))
    from pepo.analysis.curves import plot_run

    plot_run(out / "metrics.jsonl", out / "plots", title=f"{training_args.method}, {script_args.model_name_or_path}, "
             f"{script_args.dataset}, seed {seed}")
    return result
