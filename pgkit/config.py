"""The experiment config: per-component pydantic models, each building its component with ``init``.

``ExperimentConfig`` is the whole YAML file. Every model forbids unknown keys, and every field's docstring is its
documentation (it is carried into ``pgkit schema``). Loading, overrides and error reporting live in
:mod:`pgkit.config_loading`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import gymnasium as gym
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pgkit.algorithms.configs import A2CConfig, GRPOConfig, PPOConfig, ReinforceConfig, TRPOConfig, VMPOConfig
from pgkit.distributions import DistributionName, LogStdMode, allowed_distributions, make_head
from pgkit.environments import check_env_id
from pgkit.environments.actions import ActionBounds
from pgkit.environments.make import Vectorization
from pgkit.environments.observations import ObservationLayout, describe_space
from pgkit.networks import Activation, ActorCritic, mlp, output_width
from pgkit.networks.encoders import ObservationEncoder, conv_output_size
from pgkit.networks.recurrent import RecurrentCore, RecurrentKind
from pgkit.run_config import CheckpointConfig, EvalConfig, LoggerConfig, TrainerConfig
from pgkit.sweeps.config import SweepConfig

_MODEL = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


#: A layer's width. Bounded, so that a config (a crafted checkpoint's too) cannot ask for a network that does not fit
#: in memory before its weights are even compared with the checkpoint's.
Width = Annotated[int, Field(gt=0, le=65536)]
#: A convolution's kernel size or stride.
KernelSize = Annotated[int, Field(gt=0, le=256)]


def validation_context(import_code: bool = True) -> dict[str, bool]:
    """The pydantic context of a validation: with ``import_code`` false (a checkpoint read as data, see
    :mod:`pgkit.trust`) the validators import nothing the config names (an env's ``module:Class``)."""
    return {"import_code": import_code}


def imports_code(info: ValidationInfo) -> bool:
    """Whether this validation may import code the config names (yes, unless the context says otherwise)."""
    return not (isinstance(info.context, dict) and info.context.get("import_code") is False)

#: Algorithm name -> (config class, "module:LightningModule class"). Adding an algorithm means adding a line here.
#: The module classes are imported when a run is built, so validating a config imports neither Lightning nor
#: tensordict.
ALGORITHMS: dict[str, tuple[type[BaseModel], str]] = {
    "ppo": (PPOConfig, "pgkit.algorithms.ppo:PPO"),
    "a2c": (A2CConfig, "pgkit.algorithms.a2c:A2C"),
    "trpo": (TRPOConfig, "pgkit.algorithms.trpo:TRPO"),
    "reinforce": (ReinforceConfig, "pgkit.algorithms.reinforce:Reinforce"),
    "vmpo": (VMPOConfig, "pgkit.algorithms.vmpo:VMPO"),
    "grpo": (GRPOConfig, "pgkit.algorithms.grpo:GRPO"),
}

AlgorithmConfig = Annotated[
    PPOConfig | A2CConfig | TRPOConfig | ReinforceConfig | VMPOConfig | GRPOConfig, Field(discriminator="name")
]


class EnvConfig(BaseModel):
    """The environment and its vectorisation, normalisation and action handling."""

    model_config = _MODEL

    id: str = "HalfCheetah-v5"
    """A registered gymnasium id (e.g. ``HalfCheetah-v5``) or a ``module:Class`` entry point."""
    num_envs: int = Field(1, ge=1, le=4096)
    """Parallel sub-environments per process."""
    backend: Vectorization = Field("sync", validation_alias=AliasChoices("backend", "vectorization"))
    """How the sub-envs step: ``sync`` all in this process; ``async`` each in its own process (gymnasium's
    ``AsyncVectorEnv``); ``split`` in two halves at the same time, one here and one in a worker process (uses two
    cores; needs ``num_envs`` of at least 2). ``env.vectorization``, its former name, is still read."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments passed to ``gymnasium.make``."""
    max_episode_steps: PositiveInt | None = None
    """Override the env's time limit; episodes cut by it are truncated and bootstrapped."""
    normalize_obs: bool = True
    """Normalise observations by their running mean and std (statistics frozen in evaluation)."""
    obs_clip: float = Field(10.0, gt=0)
    """Clip normalised observations to ``[-obs_clip, obs_clip]``."""
    normalize_reward: bool = True
    """Scale rewards by the running std of the discounted return."""
    reward_clip: float = Field(10.0, gt=0)
    """Clip scaled rewards to ``[-reward_clip, reward_clip]``."""
    action_bounds: ActionBounds = "clip"
    """How Box actions are kept in bounds: ``clip``, ``rescale`` (from [-1, 1]) or ``none``."""

    @field_validator("id")
    @classmethod
    def _known_env(cls, value: str, info: ValidationInfo) -> str:
        if imports_code(info):  # a checkpoint from elsewhere is read as data: nothing it names is imported
            check_env_id(value)
        return value

    def make_probe(self) -> gym.Env:
        """One environment, for reading the spaces."""
        from pgkit.environments import make_env

        return make_env(self.id, self.kwargs, self.max_episode_steps)


class EncoderConfig(BaseModel):
    """How observations become features: one encoder per array of the observation (per key of a Dict or entry of a
    Tuple), concatenated, as SB3's ``CombinedExtractor``. Box vectors pass through flat (normalised when
    ``env.normalize_obs``), MultiBinary too (never normalised), Discrete and MultiDiscrete observations become one-hot
    vectors, and images (``uint8`` Box of 3 dims) go through a CNN, scaled to [0, 1] and never normalised by
    running statistics."""

    model_config = _MODEL

    images: Literal["auto", "cnn", "flatten"] = "auto"
    """``auto``: a CNN for every image in the observation (a ``uint8`` Box of 3 dims, channel-last, or
    channel-first when the first dim is the smallest, as SB3); ``cnn``: the same, and an error if there is none;
    ``flatten``: images as flat vectors scaled to [0, 1]."""
    cnn_channels: tuple[Width, ...] = Field((32, 64, 64), min_length=1, max_length=32)
    """Output channels of each convolution (NatureCNN's by default)."""
    cnn_kernels: tuple[KernelSize, ...] = Field((8, 4, 3), min_length=1, max_length=32)
    """Square kernel size of each convolution."""
    cnn_strides: tuple[KernelSize, ...] = Field((4, 2, 1), min_length=1, max_length=32)
    """Stride of each convolution."""
    cnn_features: Width = 512
    """Width of the linear layer after the convolutions: the CNN's output features."""
    share: bool = True
    """The critic uses the actor's encoder (SB3's ``share_features_extractor``); false gives it its own CNN."""

    def check(self) -> None:
        """Raise ``ValueError("<dotted field>: <problem> (got <value>)")`` for inconsistent CNN sizes."""
        sizes = {len(self.cnn_channels), len(self.cnn_kernels), len(self.cnn_strides)}
        if len(sizes) != 1:
            raise ValueError(
                "policy.encoder.cnn_kernels: cnn_channels, cnn_kernels and cnn_strides need one entry per "
                f"convolution (got {len(self.cnn_channels)}, {len(self.cnn_kernels)} and {len(self.cnn_strides)})"
            )


class RecurrentConfig(BaseModel):
    """A recurrent core between the encoder and the MLP trunks: the policy carries a state per env, reset at
    episode starts, and trains on whole sequences with truncated BPTT (``algorithm.bptt_horizon``)."""

    model_config = _MODEL

    kind: RecurrentKind = "lstm"
    """``lstm`` or ``gru``."""
    hidden_size: Width = 128
    """Width of the core's state and output."""
    num_layers: int = Field(1, ge=1, le=16)
    """Stacked recurrent layers."""
    shared: bool = False
    """The critic reads the actor's core (SB3's ``shared_lstm``); false gives it its own (SB3's default
    ``enable_critic_lstm``)."""


class PolicyConfig(BaseModel):
    """Encoder, recurrent core, actor and critic networks, and the action distribution."""

    model_config = _MODEL

    distribution: Literal["auto"] | DistributionName = "auto"
    """``auto`` picks from the action space: ``normal`` for Box, ``categorical`` for Discrete,
    ``multi_categorical`` for MultiDiscrete. ``tanh_normal`` squashes a Gaussian into the Box bounds."""
    actor_hidden: tuple[Width, ...] = Field((64, 64), max_length=64)
    """Hidden layer sizes of the actor (of the shared trunk when ``shared_trunk``)."""
    critic_hidden: tuple[Width, ...] = Field((64, 64), max_length=64)
    """Hidden layer sizes of the critic (ignored when ``shared_trunk``)."""
    activation: Activation = "tanh"
    """Hidden activation: ``tanh``, ``relu``, ``swish`` or ``elu``."""
    shared_trunk: bool = False
    """Actor and critic share one trunk (and so the encoder and recurrent core before it)."""
    ortho_init: bool = True
    """Orthogonal init (CleanRL's and SB3's): gain sqrt(2) on hidden and CNN layers, 0.01 on the policy head, 1 on the
    value head, zero biases, recurrent weights orthogonal with gain 1. False: PyTorch's default init of every layer,
    heads included (SB3's ``ortho_init=False``)."""
    log_std: LogStdMode = "state_independent"
    """Gaussian log-std: a free parameter per action dim, or an output of the actor."""
    log_std_init: float = Field(0.0, ge=-20, le=2)
    """Initial log-std of Gaussian policies."""
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    """Observation encoders (CNN for images, one-hot for discrete observations, per key for Dict spaces)."""
    recurrent: RecurrentConfig | None = None
    """A recurrent core (LSTM or GRU); null for a feedforward policy."""

    def check(self) -> None:
        """Raise ``ValueError("<dotted field>: <problem> (got <value>)")`` for settings that contradict each other."""
        self.encoder.check()
        if self.recurrent is not None and self.recurrent.shared and not self.encoder.share:
            raise ValueError("policy.encoder.share: a shared recurrent core (policy.recurrent.shared) reads one "
                             "encoder's features; set policy.encoder.share: true (got False)")

    def resolve_distribution(self, action_space: gym.Space) -> DistributionName:
        """The distribution to use on ``action_space``; raises ``ValueError`` if the configured one cannot act."""
        allowed = allowed_distributions(action_space)
        if self.distribution == "auto":
            return allowed[0]
        if self.distribution not in allowed:
            raise ValueError(
                f"{self.distribution!r} cannot act in {type(action_space).__name__} action spaces "
                f"(allowed: {', '.join(allowed)})"
            )
        return self.distribution

    def check_observation_space(self, observation_space: gym.Space) -> None:
        """Raise ``ValueError("<dotted field>: <problem> (got <value>)")`` if the encoder cannot take this space."""
        try:
            layout = ObservationLayout.from_space(observation_space)
        except ValueError as exc:
            raise ValueError(f"env.id: {exc}") from None
        enc = self.encoder
        if enc.images == "cnn" and not layout.has_image:
            raise ValueError(
                f"policy.encoder.images: 'cnn' needs an image observation (a uint8 Box of 3 dims, channel-last); "
                f"{describe_space(observation_space)} has none (got 'cnn')"
            )
        if enc.images != "flatten":
            for leaf in layout.leaves:
                if leaf.kind == "image":
                    where = f" (key {leaf.key!r})" if layout.structured else ""
                    try:
                        conv_output_size(*leaf.image_size[:2], enc.cnn_kernels, enc.cnn_strides)
                    except ValueError as exc:
                        raise ValueError(
                            f"policy.encoder.cnn_kernels: {exc}{where}; use smaller cnn_kernels and "
                            f"cnn_strides (got kernels {list(enc.cnn_kernels)}, strides {list(enc.cnn_strides)})"
                        ) from None

    def init(self, observation_space: gym.Space, action_space: gym.Space) -> ActorCritic:
        """Build the actor-critic for these spaces."""
        layout = ObservationLayout.from_space(observation_space)
        enc = self.encoder

        def encoder() -> ObservationEncoder | None:
            if layout.plain_vector:
                return None  # a plain vector needs no encoder
            image = "flatten" if enc.images == "flatten" else "cnn"
            return ObservationEncoder(layout, image, enc.cnn_channels, enc.cnn_kernels, enc.cnn_strides,
                                      enc.cnn_features, self.ortho_init)

        actor_encoder = encoder()
        features = layout.leaves[0].shape[0] if actor_encoder is None else actor_encoder.out_dim
        # A parameter-free encoder (flat vectors, one-hot) computes the same for both: only a CNN is ever doubled.
        own = actor_encoder is not None and any(True for _ in actor_encoder.parameters())
        critic_encoder = encoder() if own and not (enc.share or self.shared_trunk) else None
        core = critic_core = None
        if self.recurrent is not None:
            rec = self.recurrent

            def make_core() -> RecurrentCore:
                return RecurrentCore(rec.kind, features, rec.hidden_size, rec.num_layers, self.ortho_init)

            core = make_core()
            critic_core = None if rec.shared or self.shared_trunk else make_core()
            features = rec.hidden_size
        actor = mlp(features, self.actor_hidden, self.activation, self.ortho_init)
        latent = output_width(features, self.actor_hidden)
        head = make_head(
            self.resolve_distribution(action_space),
            action_space,
            latent,
            self.log_std,
            self.log_std_init,
            gain=0.01 if self.ortho_init else None,
        )
        parts = dict(encoder=actor_encoder, critic_encoder=critic_encoder, core=core, critic_core=critic_core)
        if self.shared_trunk:
            return ActorCritic(actor, head, None, latent, **parts, ortho_init=self.ortho_init)
        critic = mlp(features, self.critic_hidden, self.activation, self.ortho_init)
        return ActorCritic(actor, head, critic, output_width(features, self.critic_hidden), **parts,
                           ortho_init=self.ortho_init)


class ExperimentConfig(BaseModel):
    """A whole pgkit experiment: one YAML file."""

    model_config = _MODEL

    algorithm: AlgorithmConfig
    """The algorithm and its hyperparameters, selected by ``name``."""
    env: EnvConfig = Field(default_factory=EnvConfig)
    """The environment."""
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    """Networks and action distribution."""
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    """Run length, seed and devices."""
    logger: LoggerConfig = Field(default_factory=LoggerConfig)
    """MLflow tracking."""
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    """Checkpointing."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Evaluation during training."""
    sweep: SweepConfig | None = None
    """The hyperparameter search of ``pgkit sweep`` (ignored by ``pgkit fit``)."""

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        algo, env = self.algorithm, self.env
        batch = algo.num_steps * env.num_envs
        num_minibatches = getattr(algo, "num_minibatches", 1)
        algo.check_common(self)
        if env.backend == "split" and env.num_envs < 2:
            raise ValueError(f"env.backend: 'split' steps two halves of the sub-envs; set env.num_envs to at least 2 "
                             f"(got {env.num_envs})")
        self.policy.check()
        self.trainer.check()
        self.logger.check()
        if batch % num_minibatches:
            raise ValueError(
                f"algorithm.num_minibatches: must divide the batch size num_steps * env.num_envs = {batch} "
                f"(got {num_minibatches})"
            )
        if self.trainer.total_timesteps < batch:
            raise ValueError(
                f"trainer.total_timesteps: must be at least one iteration, num_steps * env.num_envs = {batch} "
                f"(got {self.trainer.total_timesteps})"
            )
        algo.check_experiment(self)
        if self.trainer.output_dir is None:
            object.__setattr__(self.trainer, "output_dir", f"runs/{self.default_run_name}")
        return self

    @property
    def label(self) -> str:
        """``<algorithm> <env id>``, for progress bars."""
        return f"{self.algorithm.name} {self.env.id}"

    @property
    def default_run_name(self) -> str:
        """``<trainer.name or algorithm>-<env id>-s<seed>``, with characters unsafe in paths replaced."""
        env = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.env.id)
        return f"{self.trainer.name or self.algorithm.name}-{env}-s{self.trainer.seed}"

    @property
    def batch_size(self) -> int:
        """Transitions per iteration per process."""
        return self.algorithm.num_steps * self.env.num_envs

    @property
    def num_iterations(self) -> int:
        """Policy iterations (Lightning epochs): ``total_timesteps // (batch_size * devices * num_nodes)``."""
        world = self.trainer.devices * self.trainer.num_nodes
        return max(1, self.trainer.total_timesteps // (self.batch_size * world))

    def init(self, spaces: tuple[gym.Space, gym.Space] | None = None):
        """Build the algorithm's LightningModule for this config: for the env's own spaces (made once to read them),
        or for ``spaces`` (a checkpoint's: no env is made, and nothing the config names is imported)."""
        import importlib

        module_name, class_name = ALGORITHMS[self.algorithm.name][1].split(":")
        module_cls = getattr(importlib.import_module(module_name), class_name)
        return module_cls(self.model_dump(mode="json"), spaces)
