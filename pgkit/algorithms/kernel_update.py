"""``trainer.kernels``: acting and PPO's minibatch step through the compiled loops of
:mod:`pgkit.algorithms.mlp_kernels`.

The kernels cover the policies most MuJoCo and classic-control runs use: separate MLP trunks for the actor and the
critic (tanh or ReLU) on a vector observation, on one CPU process without ``torch.compile``. Acting takes a diagonal
Gaussian of state-independent log-std; PPO's update takes that or one categorical. :func:`unsupported` names what
rules a run out; ``auto`` then keeps the torch path, which handles everything.

The kernels read the parameters, and write their ``.grad``, in place through numpy views of the same memory, so the
optimizer, checkpoints and the learning-rate schedule see exactly what the torch path gives them, up to float
rounding. Acting draws its noise with ``torch.randn``, as the torch path does, so a seed gives the same stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from pgkit.distributions.heads import CategoricalHead, GaussianHead
from pgkit.environments.actions import ActionAdapter
from pgkit.errors import ConfigError
from pgkit.networks.actor_critic import ActorCritic
from pgkit.networks.fused import mlp_layers

if TYPE_CHECKING:
    from pgkit.algorithms.configs import PPOConfig
    from pgkit.run_config import TrainerConfig

_ACTIVATIONS = {nn.Tanh: False, nn.ReLU: True}  # activation -> the kernels' ``relu`` flag

Rule = Callable[[Any], str | None]
"""A field's value -> why the kernels cannot run it, or None."""


def _only(*values: Any, why: str) -> Rule:
    return lambda value: None if value in values else why


def _not(value: Any, why: str) -> Rule:
    return lambda given: why if given == value else None


#: Every field of the sections a run with kernels reads, and what the kernels do with it: ``None`` when any value
#: runs on the kernel path as on the torch path (each comment says why), else a :data:`Rule` refusing the values the
#: kernels do not implement. :func:`unsupported_config` walks this table, and
#: ``tests/algorithms/test_kernel_fields.py`` fails for a field of these configs that is missing here, so an option
#: added later is never silently ignored by the kernels: it must be declared supported (and implemented) or refused.
FIELDS: dict[str, dict[str, Rule | None]] = {
    "algorithm": {  # PPOConfig: the update kernel is PPO's; the acting kernel reads no algorithm field
        "name": None,  # the update kernel is taken by PPO only (PPOModule); other algorithms act through it only
        "learning_rate": None, "anneal_lr": None, "adam_eps": None,  # torch's optimizer API steps the gradients
        "num_steps": None, "gamma": None, "gae_lambda": None, "advantage": None,  # targets: before the update
        "vtrace_rho_clip": None, "vtrace_c_clip": None,
        "bptt_horizon": None,  # recurrent policies only, which the structural check refuses
        "update_epochs": None, "num_minibatches": None,  # the minibatch loop is the base's, around the kernel
        "clip_range": None, "clip_range_vf": None, "clip_vloss": None,  # kernel settings (KernelUpdate)
        "ent_coef": None, "vf_coef": None, "normalize_advantage": None, "max_grad_norm": None,
        "target_kl": None,  # PPOModule.kernel_step stops on the kernel's approx_kl, as compute_loss does
    },
    "policy": {
        "distribution": _only("auto", "normal", "categorical",
                              why="they take policy.distribution: normal or categorical"),
        "actor_hidden": lambda v: None if len(v) else "the actor needs at least one hidden layer",
        "critic_hidden": lambda v: None if len(v) else "the critic needs at least one hidden layer",
        "activation": _only("tanh", "relu", why="policy.activation must be tanh or relu"),
        "shared_trunk": _not(True, "they need separate actor and critic trunks (policy.shared_trunk: false)"),
        "ortho_init": None, "log_std_init": None,  # initial values only
        "log_std": _only("state_independent", why="a Gaussian head needs policy.log_std: state_independent"),
        "encoder": None,  # its settings only matter where an encoder is built, which the structural check refuses
        "recurrent": lambda v: None if v is None else "they need a feedforward policy (no policy.recurrent)",
    },
    # Sub-sections: built only where the structural check (:func:`unsupported`) refuses the kernels anyway.
    "policy.encoder": dict.fromkeys(("images", "cnn_channels", "cnn_kernels", "cnn_strides", "cnn_features",
                                     "share")),
    "policy.recurrent": dict.fromkeys(("kind", "hidden_size", "num_layers", "shared")),
    "env": {  # the kernels see processed observations and raw actions; the env side is the same for both paths
        "id": None, "num_envs": None, "backend": None, "kwargs": None, "max_episode_steps": None,
        "normalize_obs": None, "obs_clip": None, "normalize_reward": None, "reward_clip": None,
        "action_bounds": None,  # clip, rescale and none are kernel settings (ActingKernel)
    },
    "trainer": {
        "accelerator": _only("cpu", "auto", why="they run on the CPU (trainer.accelerator: cpu)"),
        "devices": _only(1, why="they run in one process (trainer.devices and trainer.num_nodes: 1)"),
        "num_nodes": _only(1, why="they run in one process (trainer.devices and trainer.num_nodes: 1)"),
        "strategy": None,  # one process: Lightning's strategy does not enter the step
        "compile": _not(True, "trainer.compile compiles the torch path instead"),
        "kernels": None,  # the switch itself
        "cuda_graphs": None,  # CUDA only, where the kernels do not run
        "skip_nonfinite_batches": None,  # PPOModule.kernel_step skips on the kernel's loss and gradient norm
        "total_timesteps": None, "stop_at_return": None, "seed": None, "name": None, "output_dir": None,
        "start_timeout": None, "torch_threads": None,  # the run around the step
    },
}


def unsupported_config(cfg: Any) -> str | None:
    """Why the kernels cannot run ``cfg`` (any section's field, from :data:`FIELDS`), or None. Only PPO reads the
    algorithm section's rules (its update kernel); other algorithms use the acting kernel alone."""
    sections = ("policy", "env", "trainer") + (("algorithm",) if cfg.algorithm.name == "ppo" else ())
    # (The sub-sections' fields are all None: their rule is their parent's.)
    for section in sections:
        values = getattr(cfg, section)
        for field, rule in FIELDS[section].items():
            if rule is None:
                continue
            value = getattr(values, field)
            reason = rule(value)
            if reason is not None:
                return reason
    return None


def _linears(trunk: nn.Module | None) -> tuple[list[nn.Linear], bool] | str:
    """The linear layers of an MLP trunk and whether its activation is ReLU, or why the kernels cannot run it."""
    layers = mlp_layers(trunk)
    if not layers:
        return "the actor and the critic must be MLPs with at least one hidden layer"
    linears, activations = [linear for linear, _ in layers], {type(act) for _, act in layers}
    if any(linear.bias is None for linear in linears):
        return "the actor and the critic must be MLPs of linear layers with biases"
    if len(activations) != 1 or next(iter(activations)) not in _ACTIVATIONS:
        return "policy.activation must be tanh or relu"
    return linears, _ACTIVATIONS[next(iter(activations))]


def unsupported(policy: ActorCritic, trainer: TrainerConfig) -> str | None:
    """Why the kernels cannot run the built ``policy`` (its modules, whatever the config says), or None; the
    config's fields are :func:`unsupported_config`'s."""
    # Lightning's "auto" takes an accelerator when there is one (CUDA, Apple's MPS): the kernels need the CPU.
    if trainer.accelerator == "auto" and (torch.cuda.is_available() or torch.backends.mps.is_available()):
        return "they run on the CPU (trainer.accelerator: cpu)"
    if policy.encoder is not None or policy.critic_encoder is not None:
        return "they need a flat vector observation (no encoder)"
    if policy.recurrent:
        return "they need a feedforward policy (no policy.recurrent)"
    if policy.shared:
        return "they need separate actor and critic trunks (policy.shared_trunk: false)"
    for trunk in (_linears(policy.actor_trunk), _linears(policy.critic_trunk)):
        if isinstance(trunk, str):
            return trunk
    head = policy.head
    if isinstance(head, GaussianHead) and (head.squash or head.state_dependent):
        return "a Gaussian head must be policy.distribution: normal with policy.log_std: state_independent"
    if isinstance(head, CategoricalHead) and len(head.nvec) != 1:
        return "a categorical head must act in a Discrete space"
    if not isinstance(head, GaussianHead | CategoricalHead):
        return f"the head {type(head).__name__} has no kernel"
    if any(layer.bias is None for layer in (*head.linears(), policy.value_head)):
        return "the heads must be linear layers with biases"
    if any(p.dtype != torch.float32 for p in policy.parameters()):
        return "the parameters must be float32"
    return None


def wanted(policy: ActorCritic, cfg: Any, acting: bool = False) -> bool:
    """Whether to use a kernel under ``trainer.kernels``: ``torch`` never, ``auto`` when the run qualifies (every
    field of ``cfg`` by :data:`FIELDS`, and the built ``policy``), ``numba`` always (raising :class:`ConfigError`
    naming what rules the run out). With ``acting``, the acting kernel, which exists for Gaussian heads only: a
    categorical policy acts through torch (sampling is not its cost)."""
    trainer = cfg.trainer
    if trainer.kernels == "torch":
        return False
    reason = unsupported_config(cfg) or unsupported(policy, trainer)
    if reason is not None and trainer.kernels == "numba":
        raise ConfigError(f"config error: trainer.kernels: numba cannot run this policy: {reason} (got 'numba'; "
                          "auto falls back to torch)")
    return reason is None and (not acting or isinstance(policy.head, GaussianHead))


def _parameters(policy: ActorCritic) -> tuple[Any, ...]:
    """The trunks' weights and biases and the two heads' (and the log-std: None for a categorical head), in the
    argument order of :mod:`pgkit.algorithms.mlp_kernels`."""
    actor, _ = _linears(policy.actor_trunk)
    critic, _ = _linears(policy.critic_trunk)
    gaussian = isinstance(policy.head, GaussianHead)
    head: nn.Linear = policy.head.mean if gaussian else policy.head.logits
    return (
        tuple(layer.weight for layer in actor), tuple(layer.bias for layer in actor), head.weight, head.bias,
        policy.head.log_std_param if gaussian else None,
        tuple(layer.weight for layer in critic), tuple(layer.bias for layer in critic),
        policy.value_head.weight, policy.value_head.bias,
    )


def _numpy(t: Tensor | None) -> np.ndarray:
    return np.zeros(0, np.float32) if t is None else t.detach().numpy()


def _views(parameters: tuple[Any, ...], grad: bool = False) -> tuple[Any, ...]:
    """Numpy views of :func:`_parameters` (of their gradients with ``grad``), in the same structure."""
    def view(p: Tensor | None) -> np.ndarray:
        return _numpy(p if p is None or not grad else p.grad)

    return tuple(tuple(view(p) for p in part) if isinstance(part, tuple) else view(part) for part in parameters)


class ActingKernel:
    """``norm_obs -> (raw, log_prob, value, env_action)`` for a Gaussian MLP policy, by
    :func:`pgkit.algorithms.mlp_kernels.act_mlp_normal`; take one per rollout (it views the current weights)."""

    def __init__(self, policy: ActorCritic, adapter: ActionAdapter) -> None:
        from pgkit.algorithms import mlp_kernels

        self.kernel = mlp_kernels.act_mlp_normal
        self.layers = _views(_parameters(policy))
        self.relu = _linears(policy.actor_trunk)[1]
        mode = {"clip": mlp_kernels.BOUNDS_CLIP, "rescale": mlp_kernels.BOUNDS_RESCALE, "none": mlp_kernels.BOUNDS_NONE}
        self.bounds = (mode[adapter.mode], _numpy(adapter.low), _numpy(adapter.high))
        self.width = policy.head.mean.out_features

    def __call__(self, norm_obs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(raw, log_prob, value, env_action)`` for each row of the processed observations ``norm_obs``."""
        noise = torch.randn(norm_obs.shape[0], self.width)  # as Normal.sample_with_log_prob draws it
        obs = norm_obs.to(torch.float32).contiguous().numpy()
        out = self.kernel(obs, noise.numpy(), *self.layers, self.relu, *self.bounds)
        return tuple(torch.from_numpy(a) for a in out)


class KernelUpdate:
    """PPO's minibatch loss, gradients and clipping for one eligible :class:`ActorCritic` (see :func:`unsupported`).

    Call :meth:`prepare` once per iteration (it gives every parameter a ``.grad`` and takes numpy views of them),
    then the object once per minibatch: it returns the minibatch's terms as one row (:attr:`terms` order, the
    gradient norm last when clipping) with the gradients written and clipped, ready for ``optimizer.step()``.
    """

    def __init__(self, policy: ActorCritic, algo: PPOConfig) -> None:
        from pgkit.algorithms import mlp_kernels

        self.policy = policy
        self.kernel = mlp_kernels.ppo_mlp_step
        radius, mode = algo.value_clipping()
        settings = {  # ppo_mlp_step's keyword settings, in its argument order
            "head": mlp_kernels.NORMAL if isinstance(policy.head, GaussianHead) else mlp_kernels.CATEGORICAL,
            "relu": _linears(policy.actor_trunk)[1],
            "clip_range": float(algo.clip_range),
            "vf_coef": float(algo.vf_coef),
            "ent_coef": float(algo.ent_coef),
            "value_clip": -1.0 if radius is None else float(radius),
            "value_clip_mode": mlp_kernels.VALUE_CLIP_MAX if mode == "max" else mlp_kernels.VALUE_CLIP_CLIPPED,
            "normalize_advantage": bool(algo.normalize_advantage),
            "max_grad_norm": float(algo.max_grad_norm or 0.0),
        }
        self.settings = tuple(settings.values())
        #: The names of the row's entries: PPO's ``compute_loss`` terms, then ``grad_norm`` when clipping.
        self.all_terms = mlp_kernels.TERMS
        self.terms = self.all_terms if algo.max_grad_norm is not None else self.all_terms[:-1]
        #: Each of :attr:`terms`' position in the row.
        self.index = {name: i for i, name in enumerate(self.terms)}
        self.arguments: tuple[Any, ...] = ()
        self._out = np.empty(len(self.all_terms))  # the kernel's terms; the returned row is a float32 copy

    def prepare(self) -> None:
        """Give every parameter a gradient buffer and view the parameters and gradients as numpy arrays."""
        for p in self.policy.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        parameters = _parameters(self.policy)
        self.arguments = (*_views(parameters), *_views(parameters, grad=True))

    def __call__(
        self, obs: Tensor, action: Tensor, old_log_prob: Tensor, advantage: Tensor, old_value: Tensor, ret: Tensor
    ) -> Tensor:
        """The minibatch's terms (:attr:`terms`) as one float32 row; the gradients are in the parameters' ``.grad``."""
        rows = obs.shape[0]
        arrays = [t.detach().reshape(rows, -1).to(torch.float32).contiguous().numpy() for t in (obs, action)]
        arrays += [t.detach().to(torch.float32).contiguous().numpy() for t in (old_log_prob, advantage, old_value, ret)]
        self.kernel(*arrays, *self.arguments, *self.settings, self._out)
        return torch.from_numpy(self._out[: len(self.terms)]).float()


__all__ = ["FIELDS", "ActingKernel", "KernelUpdate", "unsupported", "unsupported_config", "wanted"]
