"""V-MPO (Song et al. 2019), following DeepMind's rlax ``mpo_ops.py`` and acme's ``losses/mpo.py``.

Per minibatch, with advantages A from the rollout:

- keep the top half of A; weights ``psi = softmax(A / eta)`` over it, with stop-gradient;
  ``L_pi = -sum(psi * log pi(a|s))``;
- temperature dual ``L_eta = eta * eps_eta + eta * log mean exp(A / eta)`` over the same half (log-sum-exp, so stable);
- trust region against a *target* policy network, which is also the one that acts: for Gaussians the mean and the
  covariance are constrained separately, ``KL_mu = KL(N(mu_t, S_t) || N(mu, S_t))`` and
  ``KL_S = KL(N(mu_t, S_t) || N(mu_t, S))``, each with a multiplier ``alpha``; categoricals use one KL and one alpha.
  ``L_alpha = alpha * (eps_alpha - sg KL) + sg(alpha) * KL``, so alpha grows while KL exceeds its bound;
- duals are ``softplus`` of free parameters, trained by the same optimizer as the policy;
- the critic regresses the value targets, ``0.5 * vf_coef * (V - G)^2``.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import Tensor, nn

from pgkit.algorithms.base import OnPolicyModule
from pgkit.algorithms.common import adam
from pgkit.algorithms.configs import VMPOConfig
from pgkit.distributions import ActionDistribution, Normal, TanhNormal
from pgkit.distributions.normal import gaussian_kl
from pgkit.networks import ActorCritic

_EPS = 1e-8  # added to softplus duals, as acme's _MPO_FLOAT_EPSILON


def top_half(advantage: Tensor) -> Tensor:
    """Indices of the ``ceil(B / 2)`` largest advantages."""
    k = math.ceil(advantage.shape[0] / 2)
    return torch.topk(advantage, k, sorted=False).indices


def policy_and_temperature_loss(
    log_prob: Tensor, advantage: Tensor, temperature: Tensor, epsilon_temperature: float
) -> dict[str, Tensor]:
    """V-MPO's E-step weights, weighted maximum-likelihood policy loss and temperature dual, on the top half."""
    selected = top_half(advantage)
    adv = advantage[selected].detach()
    psi = torch.softmax(adv / temperature.detach(), dim=0)
    log_mean_exp = torch.logsumexp(adv / temperature, dim=0) - math.log(adv.shape[0])
    return {
        "loss_policy": -(psi * log_prob[selected]).sum(),
        "loss_temperature": temperature * epsilon_temperature + temperature * log_mean_exp,
        "psi": psi,
    }


def kl_penalty(kl: Tensor, alpha: Tensor, epsilon: float) -> dict[str, Tensor]:
    """``sg(alpha) * mean KL`` for the policy and ``alpha * (epsilon - sg mean KL)`` for the multiplier."""
    mean_kl = kl.mean()
    return {"loss_kl": alpha.detach() * mean_kl, "loss_alpha": alpha * (epsilon - mean_kl.detach()), "kl": mean_kl}


def decoupled_gaussian_kl(target: Normal, online: Normal) -> tuple[Tensor, Tensor]:
    """``(KL_mu, KL_sigma)`` per row: the online mean with the target's std, and the online std with the target's
    mean, each against the target."""
    kl_mean = gaussian_kl(target.mean, target.log_std, online.mean, target.log_std)
    kl_std = gaussian_kl(target.mean, target.log_std, target.mean, online.log_std)
    return kl_mean, kl_std


def _inverse_softplus(x: float) -> float:
    return math.log(math.expm1(x))


class VMPO(OnPolicyModule):
    """V-MPO: the target network acts; the online network learns under the KL trust region."""

    def __init__(self, config: dict, spaces: tuple[Any, Any] | None = None) -> None:
        super().__init__(config, spaces)
        a: VMPOConfig = self.cfg.algorithm
        self.algo = a
        self.update_epochs, self.num_minibatches = a.update_epochs, a.num_minibatches
        self.target = copy.deepcopy(self.policy).requires_grad_(False)
        self.gaussian = self.cfg.policy.resolve_distribution(self.action_space) in ("normal", "tanh_normal")
        alpha0 = a.initial_alpha or (1.0 if self.gaussian else 5.0)
        self.temperature_param = nn.Parameter(torch.tensor(_inverse_softplus(a.initial_temperature)))
        n_alphas = 2 if self.gaussian else 1
        self.alpha_param = nn.Parameter(torch.full((n_alphas,), _inverse_softplus(alpha0)))

    @property
    def acting_policy(self) -> ActorCritic:
        return self.target

    def duals(self) -> tuple[Tensor, Tensor]:
        """``(eta, alphas)``, positive through softplus."""
        return F.softplus(self.temperature_param) + _EPS, F.softplus(self.alpha_param) + _EPS

    def configure_optimizers(self) -> torch.optim.Optimizer:
        a = self.algo
        return adam(
            [
                {"params": list(self.policy.parameters()), "lr": a.learning_rate},
                # "anneal": False keeps this group out of the LR annealing (Progress.anneal_learning_rates).
                {"params": [self.temperature_param, self.alpha_param], "lr": a.dual_learning_rate, "anneal": False},
            ],
            eps=a.adam_eps,
        )

    def kl_terms(self, target: ActionDistribution, online: ActionDistribution) -> list[tuple[str, Tensor, float]]:
        """``(name, per-row KL, epsilon)`` for each constrained quantity."""
        a = self.algo
        if self.gaussian:
            t = target.base if isinstance(target, TanhNormal) else target
            o = online.base if isinstance(online, TanhNormal) else online
            kl_mean, kl_std = decoupled_gaussian_kl(t, o)
            return [("kl_mean", kl_mean, a.epsilon_mean), ("kl_std", kl_std, a.epsilon_std)]
        return [("kl", target.kl(online), a.epsilon_categorical)]

    def compute_loss(self, batch: TensorDict) -> dict[str, Tensor | None]:
        a = self.algo
        obs, sequences = batch["obs"], self.sequences(batch)
        dist, value = self.policy(obs, sequences)
        with torch.no_grad():
            target_dist = self.target.distribution(obs, sequences)
        temperature, alphas = self.duals()
        terms = policy_and_temperature_loss(
            dist.log_prob(batch["action"]), batch["advantage"], temperature, a.epsilon_temperature
        )
        loss = terms["loss_policy"] + terms["loss_temperature"]
        out: dict[str, Tensor | None] = {
            "policy_loss": terms["loss_policy"],
            "temperature_loss": terms["loss_temperature"],
            "temperature": temperature.detach(),
        }
        for i, (name, kl, epsilon) in enumerate(self.kl_terms(target_dist, dist)):
            penalty = kl_penalty(kl, alphas[i], epsilon)
            loss = loss + penalty["loss_kl"] + penalty["loss_alpha"]
            out[name] = penalty["kl"].detach()
            out[f"alpha_{name}"] = alphas[i].detach()
        value_loss = 0.5 * (value - batch["return"]).pow(2).mean()
        out["value_loss"] = value_loss
        out["entropy"] = dist.entropy().mean().detach()
        out["loss"] = loss + a.vf_coef * value_loss
        return out

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Clip the network's gradient norm only: the duals' gradients are of another scale and must not throttle it.
        if gradient_clip_val:
            nn.utils.clip_grad_norm_(self.policy.parameters(), gradient_clip_val)

    def on_train_epoch_end(self) -> None:
        # Refresh before the base's end-of-iteration evaluation and checkpoint, so both see the refreshed target.
        if (self.current_epoch + 1) % self.algo.target_update_iterations == 0:
            self.target.load_state_dict(self.policy.state_dict())
        super().on_train_epoch_end()
