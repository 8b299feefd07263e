"""The algorithms' configs, apart from their modules: pydantic only, so validating a config (``pgkit validate``,
``pgkit schema``, ``pgkit list``) imports neither Lightning nor tensordict. Each algorithm module re-exports its
config next to its loss and its LightningModule."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from pgkit.algorithms.common import AlgorithmConfigBase

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]

class PPOConfig(AlgorithmConfigBase):
    """PPO hyperparameters. The defaults are CleanRL's ``ppo_continuous_action.py`` (MuJoCo) with one exception:
    the value loss is not clipped (CleanRL's default is ``clip_vloss=True``; SB3's is no clipping, and Andrychowicz
    et al. 2021, "What matters in on-policy RL", found value clipping to hurt). Turn it on with either reference's
    name and meaning: ``clip_vloss: true`` (CleanRL) or ``clip_range_vf`` (SB3)."""

    name: Literal["ppo"] = "ppo"
    """Algorithm selector."""
    update_epochs: int = Field(10, ge=1, le=1000)
    """Passes over each rollout."""
    num_minibatches: int = Field(32, ge=1)
    """Minibatches per pass; must divide ``num_steps * env.num_envs``."""
    clip_range: float = Field(0.2, gt=0, le=10)
    """Ratio clipping epsilon of the surrogate objective."""
    clip_range_vf: float | None = Field(None, gt=0)
    """SB3's value clipping: the value loss is taken on the prediction clipped to within this distance of the
    rollout's value, ``(V_old + clip(V - V_old, -c, c) - target)^2``, alone. Null disables it."""
    clip_vloss: bool = False
    """CleanRL's value clipping: the value loss is ``max((V - target)^2, (Vc - target)^2)`` with the prediction
    clipped by ``clip_range`` (CleanRL's ``clip_coef``). Off by default here; on in CleanRL."""
    ent_coef: float = Field(0.0, ge=0)
    """Weight of the entropy bonus."""
    vf_coef: float = Field(0.5, ge=0)
    """Weight of the value loss."""
    normalize_advantage: bool = True
    """Normalise advantages to zero mean and unit std within each minibatch."""
    target_kl: float | None = Field(None, gt=0)
    """Stop the iteration's updates early once a minibatch's approx-KL exceeds 1.5 x this (as SB3); null disables."""
    adam_eps: float = Field(1e-5, gt=0)
    """Adam epsilon."""

    def check_experiment(self, experiment) -> None:
        if self.clip_vloss and self.clip_range_vf is not None:
            raise ValueError(
                "algorithm.clip_range_vf: choose one value clipping, CleanRL's clip_vloss (max of the clipped and "
                f"unclipped errors, radius clip_range) or SB3's clip_range_vf (got both, {self.clip_range_vf})"
            )

    def value_clipping(self) -> tuple[float | None, Literal["max", "clipped"]]:
        """``(radius, mode)`` for :func:`ppo_loss`."""
        if self.clip_vloss:
            return self.clip_range, "max"
        return self.clip_range_vf, "clipped"

class A2CConfig(AlgorithmConfigBase):
    """A2C hyperparameters; the defaults are SB3's: one RMSprop step per 5-step rollout, n-step returns."""

    name: Literal["a2c"] = "a2c"
    """Algorithm selector."""
    learning_rate: float = Field(7e-4, gt=0, le=10)
    """RMSprop learning rate."""
    anneal_lr: bool = False
    """Anneal the learning rate linearly to 0 (SB3's default is a constant rate)."""
    num_steps: int = Field(5, ge=1, le=1_000_000)
    """Environment steps per sub-env per update."""
    gae_lambda: float = Field(1.0, ge=0, le=1)
    """1.0 gives n-step returns (through the same GAE op); lower values give GAE."""
    ent_coef: float = Field(0.0, ge=0)
    """Weight of the entropy bonus."""
    vf_coef: float = Field(0.5, ge=0)
    """Weight of the value loss."""
    normalize_advantage: bool = False
    """Normalise advantages over the batch."""
    rms_prop_alpha: float = Field(0.99, gt=0, lt=1)
    """RMSprop smoothing constant."""
    rms_prop_eps: float = Field(1e-5, gt=0)
    """RMSprop epsilon."""

class TRPOConfig(AlgorithmConfigBase):
    """TRPO hyperparameters; the defaults are sb3-contrib's, but ``target_kl`` bounds the joint KL (see there)."""

    name: Literal["trpo"] = "trpo"
    """Algorithm selector."""
    learning_rate: float = Field(1e-3, gt=0, le=10)
    """Adam learning rate of the critic (the policy step size comes from the KL bound)."""
    anneal_lr: bool = False
    """Anneal the critic's learning rate linearly to 0."""
    max_grad_norm: float | None = Field(None, gt=0)
    """Clip the critic's gradient norm; null (sb3-contrib's choice) disables it."""
    target_kl: float = Field(0.01, gt=0)
    """``delta``, the trust region's bound on ``mean_s KL(pi_old(.|s) || pi(.|s))`` of the joint action
    distribution: a diagonal Gaussian's per-dimension KLs are summed (the paper's, OpenAI baselines' and Spinning
    Up's KL). sb3-contrib averages them over the D action dims as well, so its ``target_kl`` corresponds to
    ``D * target_kl`` here: sb3-contrib's 0.01 on HalfCheetah (D = 6) is 0.06 here."""
    cg_max_steps: int = Field(15, ge=1, le=1000)
    """Conjugate-gradient iterations."""
    cg_damping: float = Field(0.1, ge=0)
    """Damping added to the Fisher matrix of the joint KL, ``F + damping * I``. sb3-contrib's Fisher is that of the
    per-dimension mean, D times smaller, so the same damping weighs D times more there."""
    line_search_shrinking_factor: float = Field(0.8, gt=0, lt=1)
    """Backtracking factor of the line search."""
    line_search_max_iter: int = Field(10, ge=1, le=100)
    """Line-search tries before the step is rejected."""
    n_critic_updates: int = Field(10, ge=1, le=1000)
    """Epochs of critic regression per rollout."""
    critic_batch_size: int = Field(128, ge=1)
    """Minibatch size of the critic regression."""
    normalize_advantage: bool = True
    """Normalise advantages over the batch before the policy step."""

    def check_experiment(self, experiment) -> None:
        if experiment.policy.shared_trunk:
            raise ValueError(
                "policy.shared_trunk: TRPO trains the critic separately, so actor and critic cannot share a trunk "
                "(got True)"
            )

class ReinforceConfig(AlgorithmConfigBase):
    """REINFORCE hyperparameters."""

    name: Literal["reinforce"] = "reinforce"
    """Algorithm selector."""
    supports_vtrace: ClassVar[bool] = False
    learning_rate: float = Field(1e-3, gt=0, le=10)
    """Adam learning rate of the policy (and of the value function when trained jointly)."""
    anneal_lr: bool = False
    """Anneal the learning rates linearly to 0."""
    num_steps: int = Field(1000, ge=1, le=1_000_000)
    """Steps per sub-env per batch. Episodes that have not ended by the end of the batch are handled by
    ``partial_episodes``; the env keeps running, so their remainder counts in the next batch."""
    gae_lambda: float = Field(1.0, ge=1.0, le=1.0)
    """Fixed at 1: REINFORCE uses Monte-Carlo returns."""
    baseline: Literal["none", "mean", "value"] = "value"
    """Subtracted from the returns: nothing, the batch mean, or a learned state-value function."""
    value_training: Literal["separate", "joint"] = "separate"
    """With ``baseline: value``: fit the critic with its own optimizer after the policy step, or add
    ``vf_coef * MSE`` to the policy's loss and take one step on both."""
    value_learning_rate: float = Field(1e-3, gt=0, le=10)
    """Adam learning rate of the separately trained critic."""
    value_epochs: int = Field(5, ge=1, le=1000)
    """Epochs of minibatch regression of the separately trained critic per batch."""
    value_batch_size: int = Field(256, ge=1)
    """Minibatch size of that regression."""
    vf_coef: float = Field(0.5, ge=0)
    """Weight of the value loss when trained jointly."""
    ent_coef: float = Field(0.0, ge=0)
    """Weight of the entropy bonus."""
    normalize_returns: bool = True
    """Scale the policy-gradient weights (returns minus baseline) to zero mean and unit std over the batch."""
    batch: Literal["steps", "episodes"] = "steps"
    """``steps``: each batch is ``num_steps`` steps per sub-env, unfinished episodes handled by
    ``partial_episodes``. ``episodes``: each batch restarts every sub-env and keeps exactly one complete episode
    from each (the rollout stops once all have ended; ``num_steps`` caps an episode's length, and an episode that
    does not end within it is dropped)."""
    partial_episodes: Literal["drop", "bootstrap"] = "drop"
    """Steps of episodes unfinished at the end of the batch: ``drop`` leaves them out of the loss (pure Monte
    Carlo); ``bootstrap`` completes their return with the learned value (needs ``baseline: value``)."""

    def check_experiment(self, experiment) -> None:
        if self.partial_episodes == "bootstrap" and self.baseline != "value":
            raise ValueError(
                f"algorithm.partial_episodes: 'bootstrap' needs baseline: value (got baseline {self.baseline!r})"
            )
        if self.baseline == "value" and self.value_training == "separate" and experiment.policy.shared_trunk:
            raise ValueError(
                "policy.shared_trunk: a separately trained critic cannot share the actor's trunk; use "
                "algorithm.value_training: joint (got True)"
            )

class VMPOConfig(AlgorithmConfigBase):
    """V-MPO hyperparameters; the dual defaults are the paper's."""

    name: Literal["vmpo"] = "vmpo"
    """Algorithm selector."""
    update_epochs: int = Field(10, ge=1, le=1000)
    """Passes over each rollout."""
    num_minibatches: int = Field(32, ge=1)
    """Minibatches per pass; the top half of advantages is taken within each minibatch."""
    target_update_iterations: int = Field(1, ge=1)
    """Copy the online network into the target (acting) network at the end of every this many iterations (a
    rollout and its updates). 1: each rollout is collected by the latest policy. Counted in iterations rather than
    gradient updates so that a skipped non-finite minibatch cannot shift the schedule (the paper's distributed
    learner refreshes every 100 learner steps, about a few of pgkit's iterations)."""
    epsilon_temperature: float = Field(0.01, gt=0)
    """``eps_eta``: bound of the temperature dual."""
    epsilon_mean: float = Field(0.01, gt=0)
    """``eps_mu``: KL bound on the Gaussian mean."""
    epsilon_std: float = Field(5e-5, gt=0)
    """``eps_Sigma``: KL bound on the Gaussian covariance."""
    epsilon_categorical: float = Field(0.01, gt=0)
    """KL bound for categorical policies."""
    initial_temperature: float = Field(1.0, gt=0)
    """``eta_0``."""
    initial_alpha: float | None = Field(None, gt=0)
    """``alpha_0``; null gives 1 for Gaussian policies and 5 for categorical ones."""
    dual_learning_rate: float = Field(1e-2, gt=0)
    """Adam learning rate of the temperature and the KL multipliers. Fixed: ``anneal_lr`` anneals the network's
    rate only, as in the paper, rlax and acme, so the KL constraints keep adapting to the end of training."""
    vf_coef: float = Field(0.5, ge=0)
    """Weight of the value loss."""
    adam_eps: float = Field(1e-5, gt=0)
    """Adam epsilon."""

class GroupPolicyOptions(BaseModel):
    """GRPO's options shared by gymnasium episodes and text completions (TRL ``GRPOConfig`` names where TRL has
    the option)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    num_iterations: int = Field(1, ge=1, le=1000)
    """Passes over each batch of episodes (TRL's ``num_iterations``, the paper's mu)."""
    baseline: Literal["mean", "median", "min"] = "mean"
    """What each score is measured against within its group."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Divide advantages by the group's std, the batch's, or not at all (Dr. GRPO), plus 1e-4 (as TRL)."""
    epsilon: float = Field(0.2, gt=0, lt=1)
    """Lower clip of the ratio, ``1 - epsilon`` (and the upper one unless ``epsilon_high``)."""
    epsilon_high: float | None = Field(None, gt=0)
    """Upper clip ``1 + epsilon_high`` (DAPO's clip-higher); null means ``epsilon``."""
    beta: float = Field(0.0, ge=0)
    """Weight of the k3 KL penalty to the reference policy (the initial weight when ``adaptive_beta``)."""
    adaptive_beta: bool = False
    """Adapt ``beta`` after each iteration: x1.5 when KL > 1.5 ``kl_target``, /1.5 when KL < 0.5 ``kl_target``."""
    kl_target: float = Field(0.01, gt=0)
    """Target KL for ``adaptive_beta``."""
    beta_min: float = Field(0.001, ge=0)
    """Lower bound of an adaptive ``beta``."""
    beta_max: float = Field(0.1, gt=0)
    """Upper bound of an adaptive ``beta``."""
    loss_type: LossType = "grpo"
    """How per-step losses are averaged: ``grpo``, ``bnpo``, ``dr_grpo`` or ``dapo`` (see TRL)."""
    importance_sampling_level: Literal["token", "sequence"] = "token"
    """``token``: a ratio per step; ``sequence``: one length-normalised ratio per episode (GSPO)."""
    sync_ref_model: bool = False
    """TRL's ``sync_ref_model`` (TR-DPO): every ``ref_model_sync_steps`` optimizer steps, move the reference of the
    KL term towards the policy, ``ref <- alpha * policy + (1 - alpha) * ref``. False (TRL's default): the reference
    stays the initial policy. ``ref_model_mixup_alpha: 1`` makes each sync a hard copy (a periodic reference); a
    small alpha with a small period makes it an exponential moving average."""
    ref_model_mixup_alpha: float = Field(0.6, gt=0, le=1)
    """TRL's ``ref_model_mixup_alpha``: the policy's weight in each sync (TRL's default 0.6)."""
    ref_model_sync_steps: int = Field(512, ge=1)
    """TRL's ``ref_model_sync_steps``: optimizer steps between syncs (TRL's default 512). Counts the steps taken,
    so a skipped non-finite minibatch does not count."""
    ent_coef: float = Field(0.0, ge=0)
    """Weight of the entropy bonus (not in TRL; the ruvllm presets use one)."""


    def check_beta(self) -> None:
        """Raise ``ValueError`` for an adaptive beta that starts outside its bounds."""
        if self.adaptive_beta and not self.beta_min <= self.beta <= self.beta_max:
            raise ValueError(
                f"algorithm.beta: an adaptive beta must start within [beta_min, beta_max] = "
                f"[{self.beta_min}, {self.beta_max}] (got {self.beta})"
            )

class GRPOConfig(AlgorithmConfigBase, GroupPolicyOptions):
    """GRPO / GSPO hyperparameters (TRL ``GRPOConfig`` names where TRL has the option)."""

    name: Literal["grpo"] = "grpo"
    """Algorithm selector."""
    supports_vtrace: ClassVar[bool] = False
    learning_rate: float = Field(1e-3, gt=0, le=10)
    """Adam learning rate of the policy."""
    anneal_lr: bool = False
    num_steps: int = Field(500, ge=1, le=1_000_000)
    """Longest episode: one not ended after this many steps is cut there and scored as it stands."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    group_size: int = Field(8, ge=2, le=4096)
    """Episodes per group (TRL's ``num_generations``); ``env.num_envs`` must be a multiple of it."""
    num_minibatches: int = Field(1, ge=1)
    """Minibatches of whole episodes per pass; must divide ``env.num_envs``."""
    reward: Literal["absolute", "relative", "pareto"] = "absolute"
    """Episode score: ``absolute`` its return; ``relative`` its normalised rank in the group (0 worst, 1 best);
    ``pareto`` its Pareto rank in the group over ``objectives``."""
    objectives: list[str] = Field(default_factory=list)
    """For ``reward: pareto``: keys of the env's step ``info``, each summed over the episode and maximised."""
    def check_experiment(self, experiment) -> None:
        env = experiment.env
        if env.num_envs % self.group_size:
            raise ValueError(
                f"env.num_envs: must be a multiple of algorithm.group_size = {self.group_size}, so every sub-env "
                f"belongs to one group (got {env.num_envs})"
            )
        if env.num_envs % self.num_minibatches:
            raise ValueError(
                f"algorithm.num_minibatches: must divide env.num_envs = {env.num_envs}, the episodes per batch "
                f"(got {self.num_minibatches})"
            )
        if env.normalize_reward:
            raise ValueError(
                "env.normalize_reward: GRPO scores whole episodes, and scaled rewards would change their returns; "
                "set it to false (use algorithm.scale_rewards to scale advantages) (got True)"
            )
        if self.reward == "pareto" and not self.objectives:
            raise ValueError("algorithm.objectives: reward 'pareto' needs at least one info key (got [])")
        if self.bptt_horizon is not None:
            raise ValueError("algorithm.bptt_horizon: GRPO replays each episode whole from its reset; remove it "
                             f"(got {self.bptt_horizon})")
        self.check_beta()
