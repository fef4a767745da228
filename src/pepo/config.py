"""Command-line / YAML configuration: ``pepo train --config recipe.yaml --gate_alpha 0.1``.

Two dataclasses are parsed together, the way TRL scripts do: :class:`ScriptArguments` (model,
data, rewards, warm start) and :class:`pepo.trainer.PEPOConfig` (every ``GRPOConfig`` /
``TrainingArguments`` field plus PEPO's). A recipe is a flat YAML mapping of those field names;
flags on the command line override it. Unknown keys fail before anything is loaded, naming the key
and the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import yaml
from transformers import HfArgumentParser

from pepo.methods import get_method
from pepo.trainer import PEPOConfig

__all__ = ["ScriptArguments", "ConfigError", "load_yaml", "parse_train_args", "demo_recipe_path", "known_keys"]

EMBEDDED = "embedded"


class ConfigError(ValueError):
    """A configuration problem found before training starts."""


@dataclass
class ScriptArguments:
    """What to train on: model, data, rewards, and the supervised warm start."""

    model_name_or_path: str = field(
        default=EMBEDDED,
        metadata={
            "help": "Hub id (e.g. Qwen/Qwen2.5-VL-3B-Instruct) or local checkpoint directory. `embedded` builds the "
            "tiny Qwen2.5-VL of the offline demo in code (tokenizer trained in code, no download)."
        },
    )
    dataset: str = field(
        default="synthetic",
        metadata={
            "help": "`synthetic` (the embedded shape-counting task), a local file or folder in a format pepo reads "
            "(see --source_format), or a hub dataset id. A single file has no splits: it serves as any split."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    train_split: str = field(default="train", metadata={"help": "Split used for RL."})
    test_split: str | None = field(default="test", metadata={"help": "Held-out split scored before and after RL."})
    image_column: str = field(default="image", metadata={"help": "Column holding the image (or list of images)."})
    question_column: str = field(default="question", metadata={"help": "Column holding the question text."})
    answer_column: str = field(default="answer", metadata={"help": "Column holding the verifiable answer."})
    prompt_instruction: str | None = field(
        default=None,
        metadata={
            "help": "Text appended to every question (after a blank line), e.g. the think/answer format instruction "
            "of a recipe. `<image>` placeholders in questions are removed; images follow the text."
        },
    )
    image_root: str | None = field(
        default=None, metadata={"help": "Directory that relative image paths are resolved against (never escaped)."}
    )
    skip_invalid_rows: bool = field(
        default=False, metadata={"help": "Skip rows that fail validation (and report the count) instead of failing."}
    )
    source_format: str = field(
        default="auto",
        metadata={
            "help": "How the dataset's files are read (the published format): auto (detected and printed), table "
            "(image/question/answer columns: JSONL, JSON, Parquet, CSV, a folder of them or a hub id), "
            "geometry3k_release, intergps, logicvista, puzzlevqa, mathvista, mathverse, refcoco, fgvc_aircraft, "
            "flowers102, image_folder. See the README, 'Formats we read'."
        },
    )
    dataset_format: str = field(
        default="generic",
        metadata={
            "help": "The task adapter that turns rows into prompts: generic (question/image/answer), grounding "
            "(referring expression + box), classification (labelled images, optional k-shot), multiple_choice "
            "(question + options). See pepo.data.adapters."
        },
    )
    box_format: str = field(
        default="xyxy",
        metadata={"help": "grounding, tables: how the answer column writes boxes: xyxy ([x1, y1, x2, y2]) or xywh "
                  "(COCO [x, y, w, h]). The official RefCOCO files are read as COCO xywh whatever this says."},
    )
    class_names: str | None = field(
        default=None,
        metadata={"help": "classification: file of class names, label 0 (Flowers102: label 1) first: .txt one per "
                  "line, a JSON list, {\"classes\": [...]} or {\"1\": name, ...}. Flowers102 needs one."},
    )
    box_convention: str = field(
        default="absolute_resized",
        metadata={
            "help": "grounding: frame of the boxes the model is asked for and scored in: absolute_resized "
            "(Qwen2.5-VL: pixels of the image after smart_resize with min_pixels/max_pixels), absolute_original, "
            "relative_1000 (Qwen2-VL style 0-1000)."
        },
    )
    min_pixels: int = field(
        default=3136,
        metadata={"help": "grounding, absolute_resized: the processor's min_pixels (Qwen2.5-VL default 4*28*28)."},
    )
    max_pixels: int = field(
        default=12845056,
        metadata={"help": "grounding, absolute_resized: the processor's max_pixels (Qwen2.5-VL default 16384*28*28)."},
    )
    k_shot: int | None = field(
        default=None,
        metadata={"help": "classification: sample this many training images per class (deterministic in the seed)."},
    )
    classification_show_options: bool = field(
        default=False, metadata={"help": "classification: list every class name in the prompt."}
    )
    options_column: str = field(
        default="options", metadata={"help": "multiple_choice: column holding the list of option texts."}
    )
    num_train: int = field(default=4000, metadata={"help": "synthetic: number of training items."})
    num_test: int = field(default=600, metadata={"help": "synthetic / any: number of held-out items scored (<= split size)."})
    reward_funcs: list[str] = field(
        default_factory=lambda: ["synthetic_accuracy"],
        metadata={"help": "Reward functions by name (see `pepo.rewards.REWARDS`); rewards add up."},
    )
    warm_start: bool = field(
        default=True, metadata={"help": "Run the supervised warm start first (embedded model only by default)."}
    )
    warm_start_steps: int = field(default=500, metadata={"help": "Upper bound on warm-start steps."})
    warm_start_learning_rate: float = field(default=1.5e-3, metadata={"help": "Warm-start AdamW learning rate."})
    warm_start_target: float = field(
        default=0.40, metadata={"help": "Stop the warm start at this held-out accuracy (leave room for RL)."}
    )
    warm_start_min_accuracy: float = field(
        default=0.30, metadata={"help": "A warm start ending below this held-out accuracy is retried, then fails."}
    )
    warm_start_dir: str | None = field(
        default=None,
        metadata={
            "help": "Embedded model: reuse the warm-started model saved in this folder (made by an earlier run with "
            "the same seed and data options), or warm-start and save it there. Lets several RL runs share one "
            "warm start exactly."
        },
    )
    warm_start_retries: int = field(
        default=3, metadata={"help": "Re-initialise and retry a warm start that stays near chance (embedded model)."}
    )
    rl_seed: int | None = field(
        default=None,
        metadata={
            "help": "Seed of the RL stage alone (its sampling and data order); default: `seed`. The warm start and "
            "the data keep `seed`, so changing only this perturbs RL the way another CPU does (see README)."
        },
    )
    eval_max_new_tokens: int = field(default=8, metadata={"help": "Generation length when scoring the test split."})
    torch_threads: int = field(
        default=1,
        metadata={
            "help": "torch intra-op threads on CPU. 1 by default: for a tiny model, 2 threads are slower than 1 as "
            "soon as anything else uses the second core (measured; see docs)."
        },
    )
    torch_dtype: str = field(default="auto", metadata={"help": "Model dtype for real checkpoints: auto, bfloat16, float32."})
    attn_implementation: str | None = field(default=None, metadata={"help": "e.g. sdpa, flash_attention_2."})
    use_peft: bool = field(default=False, metadata={"help": "Train a LoRA adapter instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], metadata={"help": "LoRA target modules."}
    )
    dry_run: bool = field(
        default=False,
        metadata={
            "help": "Resolve and validate everything (options, batch arithmetic, every dataset row, reward names, the "
            "processor's image token) without loading model weights, then stop."
        },
    )

    def __post_init__(self) -> None:
        from pepo.data.adapters import check_box_convention, check_box_format, check_dataset_format
        from pepo.data.readers import check_source_format

        check_source_format(self.source_format)
        check_dataset_format(self.dataset_format)
        check_box_format(self.box_format)
        check_box_convention(self.box_convention)
        if self.k_shot is not None and self.k_shot < 1:
            raise ValueError(f"k_shot must be >= 1 (or unset), got {self.k_shot}.")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels} / {self.max_pixels}.")


def demo_recipe_path() -> Path:
    """Path of the embedded demo recipe shipped inside the package."""
    return Path(str(resources.files("pepo") / "demo.yaml"))


def known_keys() -> set[str]:
    """Every key a recipe or command line may set."""
    return {f.name for cls in (ScriptArguments, PEPOConfig) for f in dataclasses.fields(cls) if f.init}


#: options users bring from other trainers that TRL 1.16 removed, with what to do instead
_REMOVED = {
    "max_prompt_length": " TRL 1.16 removed it and pepo never truncates prompts (a cut image breaks the model's "
                         "image features): every prompt is checked, with its image tokens, against the context "
                         "before a run starts (pepo.data.prompt_length).",
}


def _suggest(key: str) -> str:
    if key.replace("-", "_") in _REMOVED:
        return _REMOVED[key.replace("-", "_")]
    close = difflib.get_close_matches(key, sorted(known_keys()), n=1)
    return f" Did you mean `{close[0]}`?" if close else " Run `pepo train --help` for the list."


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a flat recipe mapping and check every key exists."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist.")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of option: value, got {type(data).__name__}.")
    for key in data:
        if key not in known_keys():
            raise ConfigError(f"{path}: unknown config key `{key}`.{_suggest(key)}")
    return data


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def _flag_value(argv: Sequence[str], key: str) -> str | None:
    """The value given to ``--key`` on the command line (``--key v`` or ``--key=v``), or None."""
    value = None
    for i, token in enumerate(argv):
        for spelling in (key, key.replace("_", "-")):
            if token == f"--{spelling}" and i + 1 < len(argv):
                value = argv[i + 1]
            elif token.startswith(f"--{spelling}="):
                value = token.split("=", 1)[1]
    return value


def _let_method_preset_replace_base(values: dict[str, Any], base: dict[str, Any], chosen: dict[str, Any],
                                    argv: Sequence[str]) -> None:
    """Drop the base recipe's values for the fields the chosen method's preset governs.

    ``base`` (the demo recipe under ``pepo demo``) holds defaults for its own method, not the user's choices:
    ``pepo demo --method pepo_d`` must get the DAPO preset's loss, not the demo's ``loss_type: grpo``. Values from
    the config file or the command line are explicit and are never dropped (PEPOConfig honours them).
    """
    method = _flag_value(argv, "method") or chosen.get("method") or base.get("method")
    try:
        preset = get_method(str(method)).preset
    except ValueError:  # PEPOConfig reports the unknown method, with the list of known ones
        preset = {}
    for name in preset:
        if name in base and name not in chosen and _flag_value(argv, name) is None:
            values.pop(name, None)


def parse_train_args(argv: Sequence[str], base: dict[str, Any] | None = None) -> tuple[ScriptArguments, PEPOConfig]:
    """Parse ``[--config FILE] [--key value ...]`` into (ScriptArguments, PEPOConfig).

    Precedence: ``base`` (e.g. the demo recipe) < ``--config`` file < command-line flags.
    """
    argv = list(argv)
    values = dict(base or {})
    chosen: dict[str, Any] = {}  # what the config file and the command line set: the user's explicit choices
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError("--config needs a file path.")
        chosen.update(load_yaml(argv[i + 1]))
        del argv[i : i + 2]
    values.update(chosen)
    _let_method_preset_replace_base(values, base or {}, chosen, argv)
    explicit = set(values) | {a[2:].split("=", 1)[0] for a in argv if a.startswith("--")}
    if not _has_accelerator():
        # TRL's GRPOConfig defaults to bf16, which stops a CPU-only machine before it starts; and transformers
        # only forms a CPU (gloo) process group under torchrun when use_cpu is set.
        if "bf16" not in explicit:
            values["bf16"] = False
        if "use_cpu" not in explicit:
            values["use_cpu"] = True
    parser = HfArgumentParser((ScriptArguments, PEPOConfig))
    parser.set_defaults(**values)
    for token in argv:
        if token.startswith("--"):
            key = token[2:].split("=", 1)[0]
            if key not in known_keys() and key.replace("-", "_") not in known_keys():
                raise ConfigError(f"unknown option `--{key}`.{_suggest(key)}")
    try:
        script_args, pepo_args, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ValueError as err:  # raised by PEPOConfig.__post_init__ and TrainingArguments checks
        raise ConfigError(str(err)) from err
    if rest:
        raise ConfigError(f"unexpected arguments {rest}: options are `--key value`.")
    return script_args, pepo_args
