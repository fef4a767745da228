"""``PEPOConfig`` / ``PEPOTrainer``: PEPO on top of TRL's ``GRPOConfig`` / ``GRPOTrainer``.

How PEPO enters TRL's loss, touching as little of TRL as possible:

* TRL's ``_compute_loss`` runs one training forward through
  ``_get_per_token_logps_and_entropies``. We wrap that method: while it runs,
  :class:`pepo.hooks.VisualScoreCapture` reduces every hidden state to a (B, C) visual-similarity
  score as it appears (no second forward, no hidden-state stack, no C x V matrix). TRL already
  returns the entropy of the distribution that produced each completion token.
* From the scores and entropies we build detached token weights w (B, C) and the schedule
  s = 1 - p + p * w with p = global_step / max_steps, and hand TRL a token-level advantage
  A_i * s_t. TRL's ``_compute_loss`` accepts (B, T) advantages for exactly this purpose. Because
  s >= 0, ``-min(r * A * s, clip(r) * A * s) = s * -min(r * A, clip(r) * A)``: the weights multiply
  the clipped surrogate only, and the KL term (added separately by TRL) stays unweighted. This holds
  for every loss type whose surrogate is linear in A (grpo, bnpo, dr_grpo, dapo).

* DAPO dynamic sampling wraps ``_generate_and_score_completions``: it drops groups whose rewards
  are all equal and generates fresh prompts until the batch is full (:mod:`pepo.dynamic_sampling`).
  It reads the rewards by wrapping ``_calculate_rewards``, which only records its result.
* Resume (:mod:`pepo.resume`): ``_save_checkpoint`` also saves what TRL keeps between optimizer steps
  (buffered generation batch, micro-step counter, metrics not yet logged, dynamic sampling's prompt
  stream) and then a completion marker; ``train`` restores it, and a first Ctrl-C saves a checkpoint
  at the end of the current step and stops. The train sampler is TRL's, made epoch-addressable.

``tests/test_trl_contract.py`` fails loudly if TRL changes the four methods we rely on.
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from accelerate import skip_first_batches
from accelerate.utils import is_peft_model
from transformers import PreTrainedModel, TrainerCallback
from transformers.trainer_callback import TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import RepeatSampler


from pepo.dynamic_sampling import FILTERS, concat_batches, filter_reward_columns, informative_groups, select_rows, total_rewards
from pepo.hooks import VisualScoreCapture
from pepo.methods import LossContext, Method, builtin_methods, get_method
from pepo.methods.clip_cov import ClipCovArguments
from pepo.methods.vgpo import VGPOArguments
from pepo.perception_trainer import PerceptionArguments, PerceptionMixin
from pepo.faults import fault_point
from pepo.callbacks_token_views import TokenViewArguments, TokenViewsCallback
from pepo.token_view_capture import TokenViewMixin
from pepo.resume import (
    MARKER,
    ResumeError,
    check_compatible,
    checkpoint_global_step,
    load_process_state,
    model_fingerprint,
    process_state_path,
    remove_marker,
    resolve_resume_checkpoint,
    rotate_checkpoints,
    save_process_state,
    write_marker,
)
from pepo.token_stats import PendingTokenStats, micro_batch_stats
from pepo.weights import PROTOTYPE_SCORE_TYPES, SCORE_TYPES, rows_without_image
from pepo.vllm_colocate import VLLMEngineArguments, colocate_engine_options

__all__ = ["METHODS", "PRESETS", "PEPOConfig", "PEPOTrainer"]

#: built-in method name -> one-line description (``pepo train --help``, the README's table); the registry is
#: :mod:`pepo.methods`, which also resolves user methods (``--method my_module:MyMethod``).
METHODS: dict[str, str] = {name: m.description for name, m in builtin_methods().items()}
#: built-in method -> the values its preset gives fields that were left unset (None). An explicit value always wins.
PRESETS: dict[str, dict[str, Any]] = {name: dict(m.preset) for name, m in builtin_methods().items() if m.preset}
#: what an unset preset-governed field becomes when the method has no preset for it (TRL's own defaults;
#: epsilon_high None is TRL's "same as epsilon")
_UNSET_DEFAULTS: dict[str, Any] = {
    **{f.name: f.default for f in fields(GRPOConfig) if f.name in ("loss_type", "mask_truncated_completions")},
    "dynamic_sampling": False,
    "dynamic_sampling_filter": "total",
}
_SCORE_TYPES = SCORE_TYPES + PROTOTYPE_SCORE_TYPES  # what pepo.weights.layer_similarity computes


@dataclass
class PEPOConfig(GRPOConfig, PerceptionArguments, TokenViewArguments, VGPOArguments, ClipCovArguments,
                 VLLMEngineArguments):
    """GRPOConfig plus PEPO's options. Every GRPOConfig field keeps its TRL meaning.

    Defaults follow the paper's public release at commit 2b1e788 (alpha 0.05, tau 1.8, cosine,
    all hidden states); recipes name their own values and say where each comes from.
    """

    method: str = field(
        default="pepo",
        metadata={"help": "Method (pepo.methods registry): " + "; ".join(f"`{k}` {v}" for k, v in METHODS.items())
                  + ". Your own: `module:Class` or `path/to/file.py:Class` (a pepo.methods.Method subclass)."},
    )
    gate_alpha: float = field(
        default=0.05,
        metadata={"help": "Gate strength alpha in g_t = 1 + alpha * tanh(centred joint score). 0 disables the gate."},
    )
    gate_temperature: float = field(
        default=1.8, metadata={"help": "Softmax temperature tau of the token weights (> 0); larger is flatter."}
    )
    vision_score_type: str = field(
        default="cosine",
        metadata={"help": "Hidden-state similarity to image tokens: cosine (default), dot, l2 (negative L2), l1, "
                  "cosine_to_mean (cosine to the mean image vector; method vgpo sets it)."},
    )
    vision_layers: list[int] | None = field(
        default=None,
        metadata={
            "help": "Indices of the hidden states to average (0 = embedding output, -1 = final norm output). "
            "Default: all L+1, as in the paper."
        },
    )
    image_token: str | None = field(
        default=None,
        metadata={
            "help": "Image placeholder token (e.g. `<|image_pad|>`, `<IMG_CONTEXT>`). Default: read from the "
            "model config / processor."
        },
    )
    high_entropy_quantile: float = field(
        default=0.2,
        metadata={"help": "For method `high_entropy`: fraction of highest-entropy tokens that train (paper: 0.2)."},
    )
    log_token_stats: bool = field(
        default=True,
        metadata={
            "help": "Also compute and log visual similarity / entropy for methods that do not use them "
            "(grpo, high_entropy), so training dynamics can be compared across methods."
        },
    )
    # Fields a method preset may fill are None ("not set") by default, so that an explicit value (from Python,
    # a recipe or the command line) is never overwritten; __post_init__ resolves None to the preset or TRL default.
    loss_type: str | None = field(
        default=None,
        metadata={
            "help": "TRL's loss formulation: grpo, bnpo, dr_grpo, dapo (and TRL's others). Unset: the method's "
            "preset (grpo for pepo_g, dapo for dapo/pepo_d), else TRL's default dapo."
        },
    )
    mask_truncated_completions: bool | None = field(
        default=None,
        metadata={
            "help": "Overlong filtering: truncated completions are left out of the loss (TRL). Unset: true for "
            "methods dapo and pepo_d (not in the PAPO_D / VPPO scripts), else false."
        },
    )
    dynamic_sampling: bool | None = field(
        default=None,
        metadata={
            "help": "DAPO dynamic sampling: drop groups whose rewards are all equal and generate more prompts until "
            "the batch is full. Unset: the method's preset (true for dapo, pepo_d, papo_d, vppo), else false."
        },
    )
    dynamic_sampling_filter: str | None = field(
        default=None,
        metadata={
            "help": "Which reward dynamic sampling compares within a group: `total` (the weighted sum of every reward "
            "function, DAPO), `accuracy` (every reward function except format ones, i.e. whose name lacks "
            "'format': the public PAPO_D / VPPO scripts' filter_key=accuracy) or one reward function's name. "
            "Unset: the method's preset (accuracy for papo_d and vppo), else total."
        },
    )
    max_dynamic_sampling_rounds: int = field(
        default=3,
        metadata={
            "help": "Cap on generation rounds per batch with dynamic_sampling (DAPO's max_num_gen_batches). A batch "
            "still short after the cap is filled with zero-advantage groups, counted in dynamic_sampling/filled_groups."
        },
    )
    detach_weights: bool = field(
        default=True,
        metadata={
            "help": "Stop gradients through the token weights. Keep True: on-policy the gradient is identical "
            "(tested), off-policy it is the intended one, and it saves memory. False exists for verification."
        },
    )

    def __post_init__(self):
        method = get_method(self.method)  # ValueError naming the known methods
        if self.vision_score_type not in _SCORE_TYPES:
            raise ValueError(
                f"vision_score_type={self.vision_score_type!r} is not known; choose one of {list(_SCORE_TYPES)}."
            )
        if self.gate_temperature <= 0:
            raise ValueError(f"gate_temperature must be > 0, got {self.gate_temperature}.")
        if self.gate_alpha < 0:
            raise ValueError(f"gate_alpha must be >= 0, got {self.gate_alpha}.")
        if not 0 < self.high_entropy_quantile <= 1:
            raise ValueError(f"high_entropy_quantile must be in (0, 1], got {self.high_entropy_quantile}.")
        self._resolve_preset(method)
        if method.needs_masked_forward:
            self.check_perception()  # pepo.perception_trainer
        method.configure(self)
        self.check_vllm_engine()  # pepo.vllm_colocate: vllm_dtype / vllm_enforce_eager
        if self.max_dynamic_sampling_rounds < 1:
            raise ValueError(f"max_dynamic_sampling_rounds must be >= 1, got {self.max_dynamic_sampling_rounds}.")
        if self.dynamic_sampling_filter in (None, "") or not isinstance(self.dynamic_sampling_filter, str):
            raise ValueError(f"dynamic_sampling_filter must be one of {list(FILTERS)} or a reward function's name, "
                             f"got {self.dynamic_sampling_filter!r}.")
        super().__post_init__()
        if self.dynamic_sampling:
            if self.multi_objective_aggregation != "sum_then_normalize":
                raise ValueError(
                    "dynamic_sampling needs multi_objective_aggregation='sum_then_normalize': it drops groups whose "
                    "summed rewards are equal, which only then have zero advantages."
                )
            local = self.per_device_train_batch_size * self.steps_per_generation
            if local % self.num_generations:
                raise ValueError(
                    f"dynamic_sampling needs whole groups on each process: per_device_train_batch_size * "
                    f"steps_per_generation = {local} is not a multiple of num_generations = {self.num_generations}."
                )

    def _resolve_preset(self, method: Method) -> None:
        """Fill the preset-governed fields left unset (None): the method's preset first, then TRL's default."""
        for name, value in method.preset.items():
            if not hasattr(self, name):
                raise ValueError(f"method {method.name!r}: its preset sets {name!r}, which is not a PEPOConfig field.")
            if getattr(self, name) is None:
                setattr(self, name, value)
        for name, value in _UNSET_DEFAULTS.items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    @property
    def token_weighting(self) -> str | None:
        """The token weighting the method applies: ``pepo``, ``perception_only``, ``exploration_only`` or None."""
        return get_method(self.method).weighting


@contextmanager
def _zero3_gathered(model: Any):
    """Gather DeepSpeed ZeRO-3 partitioned parameters (``zero.Init``: each is an empty (0,) tensor locally) for
    the duration; a no-op otherwise. Collective: every process must enter it (each builds its trainer)."""
    params = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


@contextmanager
def _reference_is_snapshot_of(model: Any, args: Any, peft_config: Any):
    """Make TRL's KL reference model equal to the weights passed in, not to the checkpoint on disk.

    TRL rebuilds the reference by reloading ``model.config._name_or_path``. For a model object that
    was changed in memory (a warm start, a model built in code) that path is wrong or missing, so we
    save the object to a temporary directory for the duration of ``GRPOTrainer.__init__``. Under DeepSpeed
    ZeRO-3 with ``zero3_init_flag`` the parameters are partitioned (empty locally) and ``save_pretrained`` would
    write empty tensors (measured: the reference then fails to load with size mismatches), so they are gathered
    first.
    """
    needs_snapshot = (
        isinstance(model, PreTrainedModel)
        and getattr(args, "beta", 0.0) != 0.0
        and peft_config is None
        and not is_peft_model(model)
    )
    if not needs_snapshot:
        yield
        return
    original = model.config._name_or_path
    with tempfile.TemporaryDirectory(prefix="pepo-ref-") as tmp:
        with _zero3_gathered(model):
            model.save_pretrained(tmp)
        model.config._name_or_path = tmp
        try:
            yield
        finally:
            model.config._name_or_path = original


class _EpochRepeatSampler(RepeatSampler):
    """TRL's ``RepeatSampler`` whose order depends only on (seed, epoch), so a resumed run replays it.

    TRL draws epoch e's permutation as the (e+1)-th ``randperm`` of a generator seeded once. A resumed
    run builds a new sampler and skips into epoch e, so it would replay epoch 0's order. Here
    ``set_epoch(e)`` (which the Trainer calls before every epoch) rewinds the generator to exactly that
    draw when it is not already there: the same orders as TRL's in an uninterrupted run.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._epoch = 0
        self._drawn = 0  # permutations drawn from the generator so far

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    def __iter__(self):
        if self.shuffle and self.seed is not None and self._drawn != self._epoch:
            self.generator.manual_seed(self.seed)
            for _ in range(self._epoch):
                torch.randperm(self.num_samples, generator=self.generator)
            self._drawn = self._epoch
        self._drawn += 1
        return super().__iter__()


class _ResumeAndInterrupt(TrainerCallback):
    """Restores pepo's resume state when training begins; turns a Ctrl-C into save-and-stop at step end."""

    def __init__(self, trainer: "PEPOTrainer"):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer._resume_from is not None:
            self.trainer._restore_resume_state(self.trainer._resume_from)

    def on_step_end(self, args, state, control, **kwargs):
        trainer = self.trainer
        requested = trainer._interrupt_requested
        if trainer.accelerator.num_processes > 1:  # every process must stop at the same step
            flag = torch.tensor(float(requested), device=trainer.accelerator.device)
            requested = trainer.accelerator.reduce(flag, reduction="sum").item() > 0
        if requested:
            control.should_save = True
            control.should_training_stop = True
            trainer.interrupted = True
        return control


class PEPOTrainer(TokenViewMixin, PerceptionMixin, GRPOTrainer):
    """GRPOTrainer whose policy loss is reweighted token by token with PEPO.

    Takes the same arguments as ``trl.GRPOTrainer``; ``args`` must be a :class:`PEPOConfig`.
    With ``method="grpo"`` it is TRL's GRPO (plus PEPO's diagnostic metrics when
    ``log_token_stats``).
    """

    def __init__(self, model: Any, *args: Any, **kwargs: Any):
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        from pepo.models.special_tokens import ban_multimodal_tokens_in_args  # never sample an image/video token

        ban_multimodal_tokens_in_args(training_args, model, kwargs.get("processing_class", args[4] if len(args) > 4 else None))
        with _reference_is_snapshot_of(model, training_args, kwargs.get("peft_config")), \
                colocate_engine_options(training_args):  # vllm_dtype / vllm_enforce_eager reach TRL's vllm.LLM
            super().__init__(model, *args, **kwargs)
        if not isinstance(self.args, PEPOConfig):
            raise TypeError(f"PEPOTrainer needs `args` to be a PEPOConfig, got {type(self.args).__name__}.")
        from pepo.models.loading import image_token_id  # transformers-dependent, kept out of pepo.weights

        self.image_token_id = image_token_id(self.model, self.processing_class, image_token=self.args.image_token)
        from pepo.vllm_colocate import install_colocate_guards  # vLLM prompt ids = the trainer's; fresh encoder cache

        install_colocate_guards(self)
        needs_scores = self.method.needs_visual_scores or self.args.log_token_stats
        self._capture = (
            VisualScoreCapture(self.model, self.args.vision_score_type, self.args.vision_layers)
            if needs_scores
            else None
        )
        # Rewards dynamic sampling compares (the method's script: total or accuracy only); fails here, not mid-run.
        self._filter_columns = (filter_reward_columns(self.reward_func_names, self.args.dynamic_sampling_filter)
                                if self.args.dynamic_sampling else None)
        self._pepo_inputs: dict[str, Any] | None = None
        self._pepo_step: dict[str, Any] | None = None  # the method and its masked log-probs, inside _compute_loss
        self._extra_prompts: Any = None  # iterator over fresh prompts for dynamic sampling
        self._extra_prompts_epoch = 0
        self._last_rewards_per_func: torch.Tensor | None = None  # (N_all, F), the last generation round's
        self._extra_prompts_used = 0  # batches taken from the current `_extra_prompts` (saved for resume)
        self._extra_prompts_peeked: Any = None  # a batch fetched ahead by `_reopen_extra_prompts`
        self.last_token_stats: dict[str, torch.Tensor] | None = None  # last micro-batch, for inspection
        self._token_stats = PendingTokenStats()  # device-side until the logging step: no sync per micro-batch
        self._resume_from: str | None = None
        self._interrupt_requested = False
        self.interrupted = False  # set when a Ctrl-C stopped `train` after saving a checkpoint
        self.add_callback(_ResumeAndInterrupt(self))
        if self.args.log_token_views_every:  # pepo.callbacks_token_views: token-level views every N steps
            self.add_callback(TokenViewsCallback(self))

    # --- resume and interruption ----------------------------------------------------------------

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        """``Trainer.train`` with exact resume and Ctrl-C handling (see :mod:`pepo.resume`).

        ``resume_from_checkpoint``: a checkpoint folder, or ``True`` / ``"auto"`` for the newest
        *complete* checkpoint of ``output_dir`` (transformers' own choice ignores completeness).
        After a Ctrl-C, ``self.interrupted`` is True and ``self.state.global_step`` names the
        checkpoint just saved.
        """
        resume = None
        if resume_from_checkpoint not in (None, False):
            resume = resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
            if resume is None:
                raise ResumeError(f"no complete checkpoint to resume from in {self.args.output_dir}.")
            check_compatible(resume, self._resume_fingerprint())  # before any file of it is loaded
        self._resume_from = None if resume is None else str(resume)
        self.interrupted = False
        if resume is not None and 0 < self.args.max_steps <= checkpoint_global_step(resume):
            # Training had finished (a kill after the last checkpoint): transformers' loop would train one step
            # more before it checks max_steps. Load the weights and the state, train nothing.
            self._load_from_checkpoint(self._resume_from)
            self.state = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json"))
            return TrainOutput(self.state.global_step, 0.0, {})
        with self._ctrl_c_saves_a_checkpoint():
            return super().train(self._resume_from, *args, **kwargs)

    #: a repeat of the stop signal this soon after the first is the launcher passing it on, not a second request:
    #: torchrun forwards the SIGINT / SIGTERM it gets to every worker, which the terminal (or scheduler) has
    #: already signalled; it then waits its shutdown timeout (30 s) before SIGKILL
    _REPEAT_GRACE_S = 3.0

    @contextmanager
    def _ctrl_c_saves_a_checkpoint(self):
        """First SIGINT or SIGTERM: finish the step, save, stop. A second one (after
        ``_REPEAT_GRACE_S``) interrupts at once through the handler that was there before."""
        self._interrupt_requested = False
        if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
            yield
            return
        first: dict[str, float] = {}

        def request_stop(signum, frame):
            now = time.monotonic()
            if "at" in first and now - first["at"] > self._REPEAT_GRACE_S:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
                handler = previous[signum]
                if callable(handler):
                    return handler(signum, frame)
                signal.raise_signal(signum)  # SIG_DFL: die of it, as without pepo
                return
            if "at" in first:
                return
            first["at"] = now
            self._interrupt_requested = True
            if self.args.process_index == 0:
                name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
                print(f"\n{name}: finishing this step, then saving a checkpoint and stopping "
                      "(Ctrl-C again to stop without saving).", file=sys.stderr, flush=True)

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    #: attributes saved with every checkpoint and restored on resume, as they are (plain values, tuples, lists);
    #: a mixin adds its own by defining ``_resume_attributes`` (collected over the class hierarchy)
    _resume_attributes: tuple[str, ...] = ()

    def _resume_attribute_names(self) -> list[str]:
        names: list[str] = []
        for cls in type(self).__mro__:
            for name in cls.__dict__.get("_resume_attributes", ()):
                if name not in names:
                    names.append(name)
        return names

    def _resume_fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must share with the run resuming it (recorded in its marker, compared on resume)."""
        args = self.args
        return {"method": args.method, "per_device_train_batch_size": args.per_device_train_batch_size,
                "gradient_accumulation_steps": args.gradient_accumulation_steps,
                "num_generations": self.num_generations, "steps_per_generation": args.steps_per_generation,
                "processes": args.world_size, "model": model_fingerprint(self.model)}

    def _resume_state(self) -> dict[str, Any]:
        """What this process must get back to continue exactly: see :mod:`pepo.resume`."""
        return {
            "global_step": self.state.global_step,
            "trl_step": self._step,
            # At a generation boundary TRL regenerates on the next step: the buffer is not needed (nor saved).
            "buffered_inputs": None if self._step % (self.args.steps_per_generation * self.num_iterations) == 0
            else self._buffered_inputs,
            "train_metrics": {key: list(values) for key, values in self._metrics["train"].items()},
            "tr_loss": self._tr_loss.detach().clone(),
            "globalstep_last_logged": self._globalstep_last_logged,
            "extra_prompts_epoch": self._extra_prompts_epoch,
            "extra_prompts_used": None if self._extra_prompts is None else self._extra_prompts_used,
            "attributes": {name: getattr(self, name) for name in self._resume_attribute_names()},
        }

    def _restore_resume_state(self, checkpoint: str) -> None:
        saved_by = len(json.loads((Path(checkpoint) / MARKER).read_text())["files"])
        if saved_by != self.args.world_size:
            raise ResumeError(f"{checkpoint} was saved by {saved_by} process(es) and this run has {self.args.world_size}: "
                             "resume with the number of processes it was saved with.")
        device = self.accelerator.device
        # torch.load cannot map to "cpu:0" (the device of a CPU process under torchrun): name plain "cpu"
        state = load_process_state(checkpoint, self.args.process_index,
                                   device="cpu" if device.type == "cpu" else device)
        if state["global_step"] != self.state.global_step:
            raise ResumeError(f"{process_state_path(checkpoint, self.args.process_index)} is from step "
                             f"{state['global_step']} but trainer_state.json from step {self.state.global_step}.")
        self._step = state["trl_step"]
        self._buffered_inputs = state["buffered_inputs"]
        self._metrics["train"].clear()
        self._metrics["train"].update({key: list(values) for key, values in state["train_metrics"].items()})
        self._tr_loss.copy_(state["tr_loss"])
        self._globalstep_last_logged = state["globalstep_last_logged"]
        self._extra_prompts_epoch = state["extra_prompts_epoch"]
        self._extra_prompts = None
        for name, value in state.get("attributes", {}).items():
            setattr(self, name, value)
        if state["extra_prompts_used"] is not None:
            self._reopen_extra_prompts(state["extra_prompts_used"])

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        target = self.model if model is None else model
        if (self.is_deepspeed_enabled or self.is_fsdp_enabled or is_peft_model(target)
                or not isinstance(target, PreTrainedModel)):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        # transformers 5.x saves checkpoints in the hub's key format (save_pretrained reverts the model's weight
        # conversion) but its resume loads them with load_state_dict(strict=False): for a model with a conversion
        # mapping (Qwen2.5-VL and most VLMs) no key matches and *nothing* is loaded, with only a log message
        # (huggingface/transformers#43701). Load through from_pretrained, which converts, and require every key.
        dtype = next(target.parameters()).dtype
        loaded = type(target).from_pretrained(resume_from_checkpoint, dtype=dtype)
        target.load_state_dict(loaded.state_dict(), strict=True)
        del loaded

    def _save_checkpoint(self, model, trial):
        run_dir = self._get_output_dir(trial=trial)
        folder = Path(run_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            remove_marker(folder)  # rewriting an existing folder: incomplete until the marker is back
        # Older checkpoints are deleted only once this one is complete (transformers rotates before that).
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        folder.mkdir(parents=True, exist_ok=True)
        self._flush_token_stats()  # the saved metrics include every micro-batch so far
        fault_point("checkpoint_state", str(process_state_path(folder, self.args.process_index)))
        save_process_state(folder, self.args.process_index, self._resume_state())
        self.accelerator.wait_for_everyone()  # every process's files are there before the marker
        if self.args.should_save:
            files = [process_state_path(folder, i).name for i in range(self.args.world_size)]
            fault_point("checkpoint_marker", str(folder / MARKER))
            write_marker(folder, self.state.global_step, files, config=self._resume_fingerprint())
            rotate_checkpoints(run_dir, limit, keep=[self.state.best_model_checkpoint])

    def _get_train_sampler(self, dataset=None):
        sampler = super()._get_train_sampler(dataset)
        if type(sampler) is not RepeatSampler:
            return sampler
        return _EpochRepeatSampler(
            data_source=sampler.data_source, mini_repeat_count=sampler.mini_repeat_count,
            batch_size=sampler.batch_size, repeat_count=sampler.repeat_count, shuffle=sampler.shuffle,
            seed=sampler.seed,
        )

    @property
    def progress(self) -> float:
        """PEPO's schedule p = global_step / max_steps, in [0, 1]."""
        if self.state.max_steps <= 0:
            return 0.0
        return min(1.0, max(0.0, self.state.global_step / self.state.max_steps))

    @property
    def method(self) -> Method:
        """The registered method ``args.method`` names (looked up on every use: tests switch it in place)."""
        return get_method(self.args.method)

    def _compute_loss(self, model, inputs):
        method = self.method
        # The buffered generation batch is reused across `num_iterations`; never mutate it.
        inputs = dict(inputs)
        masked, masked_seconds = None, None
        if method.needs_masked_forward:
            masked, masked_seconds = self._masked_logps_for_loss(model, method, inputs)
        self._pepo_inputs = inputs
        self._pepo_step = {"method": method, "masked": masked, "masked_seconds": masked_seconds, "extra": None}
        try:
            loss = super()._compute_loss(model, inputs)
            extra = self._pepo_step["extra"]
        finally:
            self._pepo_inputs = None
            self._pepo_step = None
        return loss if extra is None else loss + extra

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        inputs, self._pepo_inputs = self._pepo_inputs, None  # only the policy forward inside _compute_loss
        if inputs is None:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        method = self._pepo_step["method"]
        if method.needs_visual_scores and self._capture is None:  # e.g. switched in place from a method without
            self._capture = VisualScoreCapture(self.model, self.args.vision_score_type, self.args.vision_layers)
        vision_mask = input_ids == self.image_token_id
        with_grad = not self.args.detach_weights
        if self._capture is not None:
            with self._capture.record(vision_mask, logits_to_keep, with_grad=with_grad):
                logps, entropies, aux = super()._get_per_token_logps_and_entropies(
                    model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
                )
            scores, hook_seconds = self._capture.scores, self._capture.seconds
        else:
            logps, entropies, aux = super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
            scores, hook_seconds = None, 0.0
        self._apply_token_weights(inputs, vision_mask, logps, scores, entropies, hook_seconds)
        return logps, entropies, aux

    def _loss_context(self, method: Method, inputs, vision_mask, logps, scores, entropies) -> LossContext:
        training = self.model.training
        mask = inputs["completion_mask"].bool()
        if "tool_mask" in inputs:
            mask = mask & inputs["tool_mask"].bool()
        if entropies is not None and self.args.detach_weights:
            entropies = entropies.detach()
        accumulation = self.current_gradient_accumulation_steps if training else 1.0
        # TRL's `dapo` normaliser: num_items_in_batch spans the generation batch and every process.
        items = inputs.get("num_items_in_batch")
        normalizer = (mask.sum() if items is None else items).float().clamp(min=1.0) / self.accelerator.num_processes
        if training:
            normalizer = normalizer * accumulation / self.args.steps_per_generation
        return LossContext(
            args=self.args, training=training, progress=self.progress, mask=mask, advantages=inputs["advantages"],
            logps=logps, entropies=entropies, scores=scores, no_image=rows_without_image(vision_mask),
            masked_logps=self._pepo_step["masked"], old_logps=inputs.get("old_per_token_logps"),
            rollout={k: inputs[k] for k in method.rollout_keys},
            accumulation=accumulation, token_normalizer=normalizer,
        )

    def _apply_token_weights(self, inputs, vision_mask, logps, scores, entropies, hook_seconds: float) -> None:
        """Token-level advantages A_i * scale_i * weight_it * mask_it and the extra loss, from the method's hooks."""
        start = time.perf_counter()
        method = self._pepo_step["method"]
        ctx = self._loss_context(method, inputs, vision_mask, logps, scores, entropies)
        weights = method.token_weights(ctx)
        scale = method.advantage_scale(ctx)
        token_mask = method.token_mask(ctx)
        if weights is not None or scale is not None or token_mask is not None:
            advantages = inputs["advantages"]
            if advantages.dim() == 1:
                advantages = advantages.unsqueeze(1)
            if weights is not None:
                advantages = advantages * weights.multiplier
            if scale is not None:
                advantages = advantages * scale.unsqueeze(1).to(advantages.dtype)
            if token_mask is not None:
                advantages = advantages * token_mask.to(advantages.dtype)
            inputs["advantages"] = advantages
        self._pepo_step["extra"] = method.extra_loss(ctx)
        metrics = dict(method.metrics(ctx))
        if self._pepo_step["masked_seconds"] is not None:  # masked forward of this micro-batch (current policy)
            metrics[f"{method.metric_prefix}/masked_forward_ms"] = self._pepo_step["masked_seconds"] * 1000.0
        self._log_method_metrics(metrics)
        if self._token_view is not None:  # a token-view step (pepo.token_view_capture): what the method shows
            for name, tensor in method.token_views(ctx).items():
                self._record_token_view(name, tensor)
        seconds = hook_seconds + time.perf_counter() - start
        self._log_token_stats(ctx.mask, scores, ctx.entropies, None if weights is None else weights.weights,
                              None if weights is None else weights.fallback, seconds)

    @torch.no_grad()
    def _log_token_stats(self, mask, scores, entropies, weights, fallback, seconds: float) -> None:
        """Log PEPO's metrics for this micro-batch: host numbers now, device ones at the logging step (no sync)."""
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["pepo/progress"].append(self.progress)
        self._metrics[mode]["pepo/overhead_ms"].append(seconds * 1000.0)
        # Detached, on the training device: reading them is the inspector's cost, not the training step's.
        self.last_token_stats = {
            name: None if t is None else t.detach()
            for name, t in (("scores", scores), ("entropies", entropies), ("weights", weights), ("mask", mask))
        }
        if self._token_stats.add(mode, micro_batch_stats(mask, scores, entropies, weights, fallback)):
            self._flush_token_stats()

    def _flush_token_stats(self) -> None:
        """Reduce the pending micro-batches' statistics into ``_metrics``; every rank calls it at the same point."""
        acc = self.accelerator
        gather = (lambda t: t) if acc.num_processes == 1 else (  # padding reads sizes back: only when needed
            lambda t: acc.gather(acc.pad_across_processes(t, dim=1, pad_index=float("nan"))))
        self._token_stats.flush(self._metrics, lambda t: acc.reduce(t, reduction="sum"), gather)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        self._flush_token_stats()  # the one reduction (and host read) of PEPO's statistics per logging step
        super().log(logs, start_time)

    # --- DAPO dynamic sampling -------------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # Record the rewards (gathered over processes) so dynamic sampling decides from them, not from advantages.
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards_per_func = rewards_per_func
        return rewards_per_func

    def _local_rewards(self, num_local: int) -> torch.Tensor:
        """(num_local,) total rewards of this process's completions in the last generation round."""
        if self._last_rewards_per_func is None:
            raise RuntimeError("dynamic sampling: TRL did not call _calculate_rewards during generation.")
        start = self.accelerator.process_index * num_local  # TRL's own process slice
        columns = self._filter_columns if self._filter_columns is not None else list(range(len(self.reward_weights)))
        rewards = total_rewards(self._last_rewards_per_func[:, columns], self.reward_weights[columns])
        self._last_rewards_per_func = None
        return rewards[start : start + num_local]

    def _generate_and_score_completions(self, inputs):
        out = self._generate_with_dynamic_sampling(inputs)
        return self._add_rollout_columns(self.method, out)  # masked forward of PAPO / VPPO (pepo.perception_trainer)

    def _generate_with_dynamic_sampling(self, inputs):
        if not (self.args.dynamic_sampling and self.model.training):
            return super()._generate_and_score_completions(inputs)
        group = self.num_generations
        needed = len(inputs) // group
        batches, kept, spare = [], [], []
        offset, rounds, dropped = 0, 0, 0
        prompts = inputs
        while True:
            out = super()._generate_and_score_completions(prompts)
            rounds += 1
            informative = informative_groups(self._local_rewards(len(prompts)), group).tolist()
            for g, ok in enumerate(informative):
                (kept if ok else spare).append(range(offset + g * group, offset + (g + 1) * group))
            dropped += informative.count(False)
            offset += len(out["advantages"])
            batches.append(out)
            # Every process must run the same number of rounds: generation and reward gathering are collective.
            short = torch.tensor(float(len(kept) < needed), device=self.accelerator.device)
            if self.accelerator.reduce(short, reduction="sum").item() == 0 or rounds >= self.args.max_dynamic_sampling_rounds:
                break
            prompts = self._next_prompts()
        chosen = kept[:needed]
        filled = needed - len(chosen)
        chosen += spare[:filled]
        merged = concat_batches(batches, self.processing_class.tokenizer.pad_token_id
                                if hasattr(self.processing_class, "tokenizer") else self.processing_class.pad_token_id)
        result = select_rows(merged, [row for rows in chosen for row in rows])
        if filled:
            # Equal rewards: the true advantage is 0; TRL's is float rounding noise (up to ~1e-3) that would train.
            result["advantages"] = result["advantages"].clone()
            result["advantages"][(needed - filled) * group :] = 0.0
        loss_mask = result["completion_mask"] if "tool_mask" not in result else result["completion_mask"] * result["tool_mask"]
        result["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        totals = self.accelerator.reduce(
            torch.tensor([float(dropped), float(filled), float(rounds)], device=self.accelerator.device), reduction="sum"
        )
        metrics = self._metrics["train"]
        metrics["dynamic_sampling/dropped_groups"].append(totals[0].item())
        metrics["dynamic_sampling/filled_groups"].append(totals[1].item())
        metrics["dynamic_sampling/rounds"].append(totals[2].item() / self.accelerator.num_processes)
        return result

    def _open_extra_prompts(self, skip: int = 0) -> None:
        """Start epoch ``_extra_prompts_epoch`` of the extra-prompt stream, ``skip`` batches in."""
        seed = self.args.seed + 7919 * self._extra_prompts_epoch  # a different order than the main sampler

        def sampler(dataset):
            return RepeatSampler(
                data_source=dataset, mini_repeat_count=self.num_generations,
                batch_size=self.args.generation_batch_size // self.num_generations,
                repeat_count=1, shuffle=True, seed=seed,
            )

        loader = self._get_dataloader(
            dataset=self.train_dataset, description="Dynamic sampling",
            batch_size=self._train_batch_size * self.args.steps_per_generation,
            sampler_fn=sampler, is_training=True,
        )
        if skip:
            loader = skip_first_batches(loader, skip)  # skips indices, loads no rows
        self._extra_prompts = iter(loader)
        self._extra_prompts_used = skip
        self._extra_prompts_peeked = None

    def _reopen_extra_prompts(self, used: int) -> None:
        """Reopen the extra-prompt stream where a checkpoint left it (on resume, before the RNG is restored).

        A DataLoader iterator draws its base seed from the global RNG at its first ``next``. The
        interrupted run drew it before the checkpoint (it is in the saved RNG state), so the resumed run
        must draw it now, before the Trainer restores the RNG, not in the middle of a later step: the
        first batch is fetched here and handed out by the next ``_next_prompts``.
        """
        self._open_extra_prompts(skip=used)
        try:
            self._extra_prompts_peeked = next(self._extra_prompts)
        except StopIteration:  # the stream was used up; the next call starts the next epoch, as it would have
            self._extra_prompts = None

    def _next_prompts(self) -> list[dict[str, Any]]:
        """A fresh generation batch of prompts (new prompts, not the repeats TRL's sampler yields)."""
        while True:
            if self._extra_prompts is None:
                self._extra_prompts_epoch += 1
                self._open_extra_prompts()
            try:
                batch, self._extra_prompts_peeked = self._extra_prompts_peeked, None
                if batch is None:
                    batch = next(self._extra_prompts)
            except StopIteration:
                self._extra_prompts = None
                continue
            self._extra_prompts_used += 1
            return batch
