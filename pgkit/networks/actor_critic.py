"""The actor-critic module every algorithm trains."""

from __future__ import annotations

from torch import Tensor, nn

from pgkit.distributions import ActionDistribution


class ActorCritic(nn.Module):
    """Policy and value function over (normalised) flat observations.

    With ``shared`` the actor trunk also feeds the value head; otherwise the critic has its own trunk. The
    value head is initialised with gain 1 and the policy head with a small gain, as in CleanRL and SB3.
    """

    def __init__(self, actor_trunk: nn.Module, head: nn.Module, critic_trunk: nn.Module | None, value_in: int):
        super().__init__()
        self.actor_trunk = actor_trunk
        self.head = head
        self.critic_trunk = critic_trunk
        self.value_head = nn.Linear(value_in, 1)
        nn.init.orthogonal_(self.value_head.weight, 1.0)
        nn.init.zeros_(self.value_head.bias)

    @property
    def shared(self) -> bool:
        """Whether actor and critic share one trunk."""
        return self.critic_trunk is None

    def distribution(self, obs: Tensor) -> ActionDistribution:
        """The action distribution at ``obs``."""
        return self.head(self.actor_trunk(obs))

    def value(self, obs: Tensor) -> Tensor:
        """State value at ``obs``, shape ``[B]``."""
        trunk = self.actor_trunk if self.critic_trunk is None else self.critic_trunk
        return self.value_head(trunk(obs)).squeeze(-1)

    def forward(self, obs: Tensor) -> tuple[ActionDistribution, Tensor]:
        """Distribution and value at ``obs``, computing a shared trunk once."""
        latent = self.actor_trunk(obs)
        critic_latent = latent if self.critic_trunk is None else self.critic_trunk(obs)
        return self.head(latent), self.value_head(critic_latent).squeeze(-1)

    def actor_parameters(self) -> list[nn.Parameter]:
        """Parameters that shape the policy (trunk and head)."""
        return [*self.actor_trunk.parameters(), *self.head.parameters()]

    def critic_parameters(self) -> list[nn.Parameter]:
        """Parameters that only shape the value function."""
        trunk = [] if self.critic_trunk is None else list(self.critic_trunk.parameters())
        return [*trunk, *self.value_head.parameters()]


__all__ = ["ActorCritic"]
