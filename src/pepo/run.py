"""One training run, end to end: data -> model (+ warm start) -> score -> PEPO -> score -> run folder.

The run folder holds ``config.yaml`` (every resolved option), ``data.json`` (the dataset, the format it was read
as, splits, row counts, notes), ``metrics.jsonl`` (one line per
logging step), ``checkpoint/`` (model + processor, loadable by ``pepo.models.loading``),
``results.json`` (held-out accuracy before and after RL, per question type) and ``plots/``.

For resuming (``--resume_from_checkpoint auto|PATH``, :mod:`pepo.resume`) it also holds the
training checkpoints ``checkpoint-N/``, ``pre_rl.json`` (the held-out scores before RL and the
warm-start length, written once RL is about to start) and, for a model built in code,
``warm_start/`` (the model RL starts from). A resumed run reuses those instead of redoing the warm
start and the first scoring.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib.util
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from transformers import set_seed

from pepo.callbacks import JsonlMetricsCallback, truncate_metrics
from pepo.config import EMBEDDED, ConfigError, ScriptArguments
from pepo.data.loading import load_data, write_data_record
from pepo.environment import environment
from pepo.eval.generation import generate_completions
from pepo.faults import fault_point, fault_write
from pepo.resume import (
    ResumeError,
    checkpoint_global_step,
    checkpoint_step,
    find_resumable_checkpoint,
    resolve_resume_checkpoint,
)
from pepo.rewards import get_reward_funcs
from pepo.trainer import PEPOConfig, PEPOTrainer

__all__ = ["RunResult", "evaluate_accuracy", "build_model", "run_training", "missing_report_to", "save_warm_start",
           "load_warm_start"]

_WARM_START_HELD_OUT = 200
_PRE_RL = "pre_rl.json"
_WARM_START_DIR = "warm_start"
#: options about this invocation, not the experiment: left out of config.yaml (reused as a recipe)
_NOT_IN_CONFIG = ("resume_from_checkpoint",)


@dataclass
class RunResult:
    output_dir: Path
    before: dict[str, float]
    after: dict[str, float] | None
    warm_start_steps: int
    train_seconds: float
    #: a Ctrl-C stopped training after saving ``checkpoint``; no results were written
    interrupted: bool = False
    checkpoint: Path | None = None
    resumed_from: Path | None = None


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
    from pepo.trainer import _zero3_gathered

    # DeepSpeed ZeRO-3 (zero3_init_flag): the parameters are empty local partitions; generate needs them whole
    # (measured without this: "weight should have at least three dimensions" in the vision patch embedding).
    with _zero3_gathered(model):
        outs = generate_completions(
            model, processor, dataset["prompt"], dataset["images"], max_new_tokens, desc=desc,
            show_progress=show_progress,
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

    if script_args.warm_start and script_args.warm_start_dir:
        cached = load_warm_start(Path(script_args.warm_start_dir), _warm_start_key(script_args, seed))
        if cached is not None:
            log(f"warm start: reusing {script_args.warm_start_dir} ({cached[2]} steps)")
            return cached

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
            if script_args.warm_start_dir and training_args.process_index == 0:
                save_warm_start(Path(script_args.warm_start_dir), model, processor, result.steps,
                                _warm_start_key(script_args, seed))
            return model, processor, result.steps
    raise RuntimeError(
        f"the warm start stayed below {config.min_accuracy:.0%} held-out accuracy in {script_args.warm_start_retries} "
        "attempts; raise --warm_start_steps or --warm_start_learning_rate."
    )


def _warm_start_key(script_args: ScriptArguments, seed: int) -> dict[str, Any]:
    """Everything the embedded warm start depends on: a cached one is reused only when all of it matches."""
    keys = ("dataset", "num_train", "warm_start_steps", "warm_start_learning_rate", "warm_start_target",
            "warm_start_min_accuracy", "warm_start_retries", "reward_funcs")
    return {"seed": seed, **{k: getattr(script_args, k) for k in keys}}


def save_warm_start(folder: Path, model: Any, processor: Any, steps: int, key: dict[str, Any]) -> None:
    """Save a warm-started model so that later runs load it instead of training it again.

    Written to a temporary sibling and renamed into place, with ``warm_start.json`` last, so a process
    killed while saving never leaves a folder that looks complete.
    """
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    processor.save_pretrained(str(tmp))
    (tmp / "warm_start.json").write_text(json.dumps({"steps": steps, "key": key}, indent=2))
    # Rename, do not delete in place: a process killed while deleting the old folder must not leave a
    # folder with warm_start.json and half its weights.
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def load_warm_start(folder: Path, key: dict[str, Any]) -> tuple[Any, Any, int] | None:
    """``(model, processor, steps)`` from a folder written by :func:`save_warm_start`; ``None`` if there is none.

    Raises:
        ValueError: the folder holds a warm start made with other options (named), which would silently
            change the experiment.
    """
    meta_path = folder / "warm_start.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    stored = {k: meta["key"].get(k) for k in key}
    if json.loads(json.dumps(key)) != stored:
        diff = {k: (stored[k], v) for k, v in json.loads(json.dumps(key)).items() if stored[k] != v}
        raise ValueError(f"{folder} holds a warm start made with other options (saved, requested): {diff}; "
                         "use another --warm_start_dir or delete that folder.")
    from pepo.models.loading import load_model_and_processor

    model, processor = load_model_and_processor(str(folder), torch_dtype="float32")
    return model, processor, int(meta["steps"])


def _config_dict(script_args: ScriptArguments, training_args: PEPOConfig) -> dict[str, Any]:
    def plain(obj: Any) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if hasattr(value, "value"):  # enums
                value = value.value
            if f.name not in _NOT_IN_CONFIG and isinstance(value, (str, int, float, bool, type(None), list, dict)):
                out[f.name] = value
        return out

    return {**plain(script_args), **plain(training_args)}


def _write_json_atomic(path: Path, value: Any, fault: str | None = None) -> None:
    """Write ``value`` to ``path`` through a temporary file and a rename: never seen half written.

    ``fault``: the :mod:`pepo.faults` point passed inside the write of the temporary file (tests).
    """
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        fault_write(f, json.dumps(value, indent=2), fault or "")
    os.replace(tmp, path)


#: errors of a disk that is full or a folder that cannot be written: reported as one line with the way out
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def _disk_error(out: Path, err: OSError) -> ConfigError:
    try:
        newest = find_resumable_checkpoint(out)
    except ResumeError:
        newest = None
    where = f"it continues from {newest.name}, the newest complete checkpoint" if newest else \
        "no checkpoint was completed, so it starts from the beginning"
    return ConfigError(f"cannot write {err.filename or out}: {err.strerror}. Free space on that disk or make "
                       f"{out} writable, then rerun the same command with --resume_from_checkpoint auto ({where}).")


def _prepare_run_folder(out: Path, script_args: ScriptArguments, training_args: PEPOConfig, is_main: bool,
                        log: Callable[[str], None]) -> Path | None:
    """Decide between resuming and starting fresh; returns the checkpoint to resume from (None: fresh).

    A fresh start never mixes with an earlier run: it refuses a folder holding checkpoints of an
    unfinished run (they are what `--resume_from_checkpoint auto` continues) and clears the training
    state of a finished one.
    """
    requested = training_args.resume_from_checkpoint
    try:
        resume = resolve_resume_checkpoint(requested, out, log=log)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    config = _config_dict(script_args, training_args)
    if resume is not None:
        previous = yaml.safe_load((out / "config.yaml").read_text()) if (out / "config.yaml").is_file() else None
        if isinstance(previous, dict):
            changed = sorted(k for k in set(config) | set(previous) if config.get(k) != previous.get(k))
            if changed:
                log(f"warning: resuming with options that differ from {out / 'config.yaml'}: {', '.join(changed)}; "
                    "the run will not match an uninterrupted one.")
        log(f"resuming from {resume} (step {checkpoint_global_step(resume)})")
    else:
        if requested not in (None, "", "none"):
            log(f"no complete checkpoint in {out}; starting fresh")
        unfinished = find_resumable_checkpoint(out)
        if unfinished is not None and not (out / "results.json").is_file():
            raise ConfigError(
                f"{out} holds checkpoints of an unfinished run (newest complete: {unfinished.name}). Continue it with "
                f"--resume_from_checkpoint auto, or choose another --output_dir (or delete them) to start fresh."
            )
        if is_main and out.is_dir():
            stale = [p for p in out.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
            if stale:
                log(f"removing {len(stale)} checkpoint folder(s) of an earlier run in {out}")
            for path in stale + [out / _WARM_START_DIR]:
                shutil.rmtree(path, ignore_errors=True)
            for name in ("metrics.jsonl", _PRE_RL, "results.json"):
                (out / name).unlink(missing_ok=True)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
    return resume


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
    _check_prompts(data, config, processor, script_args, training_args, log)
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


def _check_prompts(data: Any, model_or_config: Any, processor: Any, script_args: ScriptArguments,
                   training_args: PEPOConfig, log: Callable[[str], None]) -> None:
    """Every prompt, with its image tokens, must fit the context (TRL never truncates; vLLM would refuse it
    mid-run): raises :class:`pepo.data.prompt_length.PromptTooLong` naming the row and the length needed."""
    from pepo.data.prompt_length import check_run_prompts
    from pepo.models.loading import image_token_id

    config = getattr(model_or_config, "config", model_or_config)
    token = image_token_id(config, processor, image_token=training_args.image_token)
    for line in check_run_prompts(data, processor, config, token, training_args, script_args.eval_max_new_tokens):
        log(line)


def run_training(
    script_args: ScriptArguments, training_args: PEPOConfig, log: Callable[[str], None] = print
) -> RunResult:
    """Run one experiment as configured; see the module docstring for what lands in the run folder.

    With ``training_args.resume_from_checkpoint`` (``auto`` or a checkpoint folder) it continues a
    killed or interrupted run; the result equals that of an uninterrupted run (see :mod:`pepo.resume`).

    Raises:
        ConfigError: besides bad options, a checkpoint that cannot be resumed from and a disk that is full
            or not writable, each as one line naming the file and the way out.
    """
    try:
        return _run_training(script_args, training_args, log)
    except OSError as err:
        if err.errno not in _DISK_ERRNOS:
            raise
        raise _disk_error(Path(training_args.output_dir), err) from err


def _run_training(script_args: ScriptArguments, training_args: PEPOConfig, log: Callable[[str], None]) -> RunResult:
    if not torch.cuda.is_available():
        torch.set_num_threads(script_args.torch_threads)
    seed = training_args.seed
    set_seed(seed)
    random.seed(seed)
    out = Path(training_args.output_dir)
    is_main = training_args.process_index == 0  # under torchrun / accelerate, one process writes the run folder
    logger_problem = missing_report_to(training_args.report_to)
    if logger_problem and not script_args.dry_run:
        raise ConfigError(logger_problem)
    if logger_problem:  # the dry run goes on validating the rest, then fails with this
        log(f"problem: {logger_problem}")
    if not script_args.dry_run and training_args.resume_from_checkpoint and (out / "results.json").is_file() and \
            str(training_args.resume_from_checkpoint).lower() in ("auto", "true", "latest"):
        done = json.loads((out / "results.json").read_text())
        log(f"{out} holds a finished run (results.json); nothing to resume.")
        if is_main and not (out / "plots").is_dir() and (out / "metrics.jsonl").is_file():
            _plot(out, script_args, training_args, seed)  # killed between results.json and the plots
        return RunResult(out, done.get("before_rl") or {}, done.get("after_rl"), done.get("warm_start_steps", 0),
                         done.get("seconds", 0.0))
    # Data first: a bad file stops the run before anything is written to the run folder.
    loaded = load_data(script_args, seed=seed, log=log if is_main else None)
    data, skipped = loaded.splits, loaded.skipped
    for split, n in skipped.items():
        if n:
            log(f"skipped {n} invalid rows in split {split!r} (--skip_invalid_rows)")
    reward_funcs = get_reward_funcs(script_args.reward_funcs)
    resume = None
    if script_args.dry_run:
        out.mkdir(parents=True, exist_ok=True)
        if is_main:
            (out / "config.yaml").write_text(yaml.safe_dump(_config_dict(script_args, training_args), sort_keys=True))
    else:
        resume = _prepare_run_folder(out, script_args, training_args, is_main, log)
    if is_main:
        write_data_record(out, loaded)

    if script_args.dry_run:
        _dry_run(script_args, training_args, data, log)
        if logger_problem:
            raise ConfigError(f"dry run found a problem: {logger_problem}")
        return RunResult(out, {}, None, 0, 0.0)

    # Everything needed from the resume point is read now: rotation may delete that folder during training.
    resume_step = None if resume is None else checkpoint_global_step(resume)
    start = time.perf_counter()
    test = data.get("test")
    pre_rl = json.loads((out / _PRE_RL).read_text()) if resume is not None and (out / _PRE_RL).is_file() else None
    if pre_rl is not None:
        # The warm-started model and its scores were persisted before RL began: reuse them, do not redo them.
        before, ws_steps = pre_rl["before_rl"], pre_rl["warm_start_steps"]
        if pre_rl["model"] == _WARM_START_DIR:
            from pepo.models.loading import load_model_and_processor

            model, processor = load_model_and_processor(str(out / _WARM_START_DIR))
            log(f"reusing the warm-started model in {out / _WARM_START_DIR} ({ws_steps} steps) and its scores")
        else:
            model, processor, _ = build_model(script_args, training_args, data, log)
        _check_prompts(data, model, processor, script_args, training_args, log)
    else:
        if resume is not None:
            log(f"{out / _PRE_RL} is missing: redoing the model set-up and the scoring before RL")
        model, processor, ws_steps = build_model(script_args, training_args, data, log)
        _check_prompts(data, model, processor, script_args, training_args, log)  # before scoring and training
        before = None
        if test is not None:
            before = evaluate_accuracy(model, processor, test, reward_funcs[0], script_args.eval_max_new_tokens,
                                       desc="scoring before RL")
            log(f"held-out accuracy before RL: {before['overall']:.3f} on {int(before['n'])} items")
        if is_main:
            built_in_code = script_args.model_name_or_path == EMBEDDED
            if built_in_code:  # its weights exist nowhere else; real checkpoints reload from model_name_or_path
                model.save_pretrained(str(out / _WARM_START_DIR))
                fault_point("warm_start", str(out / _WARM_START_DIR))
                processor.save_pretrained(str(out / _WARM_START_DIR))
            # pre_rl.json is written last: it is what makes warm_start/ count (a resume reuses both)
            _write_json_atomic(out / _PRE_RL, {"before_rl": before, "warm_start_steps": ws_steps,
                                               "model": _WARM_START_DIR if built_in_code else None}, fault="pre_rl")
        if training_args.use_vllm and script_args.model_name_or_path == EMBEDDED:
            # TRL builds vLLM from model.name_or_path, which a model built in code does not have ('' would
            # send vLLM to the hub): point it at the folder the main process just saved
            if training_args.world_size > 1:
                from accelerate import PartialState

                PartialState().wait_for_everyone()
            model.name_or_path = model.config.name_or_path = str(out / _WARM_START_DIR)
    from pepo.models.loading import image_token_id

    image_token_id(model, processor, image_token=training_args.image_token)  # fails early, naming the fix

    peft_config = None
    if script_args.use_peft:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=script_args.lora_r, lora_alpha=script_args.lora_alpha, target_modules=script_args.lora_target_modules
        )
    if script_args.rl_seed is not None:  # Trainer.__init__ re-seeds from args.seed: RL sampling + data order
        training_args.seed = script_args.rl_seed
    metrics_path = out / "metrics.jsonl"
    if resume is not None and is_main:
        truncate_metrics(metrics_path, resume_step, keep_summary=0 < training_args.max_steps <= resume_step)
    trainer = PEPOTrainer(
        model=model,
        peft_config=peft_config,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=data["train"],
        processing_class=processor,
        callbacks=[JsonlMetricsCallback(metrics_path)],
    )
    try:
        trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
    except ResumeError as err:  # a checkpoint of another configuration, a missing process file
        raise ConfigError(str(err)) from err
    if trainer.interrupted:
        checkpoint = out / f"checkpoint-{trainer.state.global_step}"
        return RunResult(out, before or {}, None, ws_steps, time.perf_counter() - start, interrupted=True,
                         checkpoint=checkpoint, resumed_from=resume)
    train_seconds = time.perf_counter() - start
    fault_point("final_model", str(out / "checkpoint"))
    if script_args.use_peft:  # save a standalone model, loadable like any checkpoint
        trainer.model = trainer.model.merge_and_unload()
    trainer.save_model(str(out / "checkpoint"))
    if is_main:
        processor.save_pretrained(str(out / "checkpoint"))
    after = None
    if test is not None:
        after = evaluate_accuracy(trainer.model, processor, test, reward_funcs[0], script_args.eval_max_new_tokens,
                                  desc="scoring after RL")
        log(f"held-out accuracy after RL:  {after['overall']:.3f} (before {before['overall']:.3f})")
    result = RunResult(out, before or {}, after, ws_steps, train_seconds, resumed_from=resume)
    if not is_main:
        return result
    _write_json_atomic(out / "results.json", {
        "before_rl": before, "after_rl": after, "warm_start_steps": ws_steps, "seconds": train_seconds,
        "method": training_args.method, "seed": seed,
        "rl_seed": training_args.seed, "environment": environment(),
        "resumed_from_step": resume_step}, fault="results")
    fault_point("plots", str(out / "plots"))
    _plot(out, script_args, training_args, seed)
    return result


def _plot(out: Path, script_args: ScriptArguments, training_args: PEPOConfig, seed: int) -> None:
    """The run's plots, drawn into a temporary folder renamed to ``plots/``: a folder there is complete."""
    from pepo.analysis.curves import plot_run

    tmp = out / ".plots.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    plot_run(out / "metrics.jsonl", tmp, title=f"{training_args.method}, {script_args.model_name_or_path}, "
             f"{script_args.dataset}, seed {seed}")
    shutil.rmtree(out / "plots", ignore_errors=True)
    os.replace(tmp, out / "plots")
