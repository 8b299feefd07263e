"""The actor-critic module every algorithm trains.

Each path is ``encoder -> recurrent core -> MLP trunk -> head``:

- actor: observation encoder, optional core, ``actor_hidden`` MLP, the distribution head;
- critic: its own encoder (or the actor's, ``policy.encoder.share``), its own core (or the actor's,
  ``policy.recurrent.shared``), ``critic_hidden`` MLP and the value head. With ``policy.shared_trunk`` the critic
  reads the actor's trunk, so everything before it is shared too.

A plain vector observation needs no encoder (``encoder is None``), and a feedforward policy no core (``core is
None``); then this is exactly the MLP actor-critic of CleanRL and SB3.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pgkit.distributions import ActionDistribution
from pgkit.networks.recurrent import RecurrentCore, Sequences


class ActorCritic(nn.Module):
    """Policy and value function over processed observations, optionally recurrent.

    Training calls :meth:`forward`, :meth:`distribution` or :meth:`value` on rows of a batch; a recurrent network
    then needs the rows' :class:`Sequences`. Acting calls :meth:`step` with each env's state. The value head is
    initialised with gain 1 (orthogonal) and the policy head with a small gain, as in CleanRL and SB3; with
    ``ortho_init=False`` it keeps PyTorch's default init.
    """

    def __init__(
        self,
        actor_trunk: nn.Module,
        head: nn.Module,
        critic_trunk: nn.Module | None,
        value_in: int,
        encoder: nn.Module | None = None,
        critic_encoder: nn.Module | None = None,
        core: RecurrentCore | None = None,
        critic_core: RecurrentCore | None = None,
        ortho_init: bool = True,
    ):
        super().__init__()
        self.encoder, self.critic_encoder = encoder, critic_encoder
        self.core, self.critic_core = core, critic_core
        self.actor_trunk = actor_trunk
        self.head = head
        self.critic_trunk = critic_trunk
        self.value_head = nn.Linear(value_in, 1)
        if ortho_init:
            nn.init.orthogonal_(self.value_head.weight, 1.0)
            nn.init.zeros_(self.value_head.bias)

    # ------------------------------------------------------------------------------------------------- structure
    @property
    def shared(self) -> bool:
        """Whether actor and critic share one trunk (and so everything before it)."""
        return self.critic_trunk is None

    @property
    def recurrent(self) -> bool:
        """Whether the network has a recurrent core (and so a state per env)."""
        return self.core is not None

    @property
    def state_size(self) -> int:
        """Width of one env's flat recurrent state: the actor core's columns, then the critic core's."""
        return sum(c.state_size for c in (self.core, self.critic_core) if c is not None)

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> Tensor:
        """The state of a new episode: zeros ``[batch, state_size]`` (``[batch, 0]`` when feedforward)."""
        return torch.zeros(batch, self.state_size, device=device)

    def _split(self, state: Tensor) -> tuple[Tensor, Tensor]:
        width = self.core.state_size if self.core is not None else 0
        return state[:, :width], state[:, width:]

    # -------------------------------------------------------------------------------------------------- training
    def _features(self, obs, critic: bool) -> Tensor:
        if critic and self.critic_encoder is not None:
            return self.critic_encoder(obs)
        return obs if self.encoder is None else self.encoder(obs)

    def _core(self, features: Tensor, sequences: Sequences | None, critic: bool) -> Tensor:
        core = self.critic_core if critic and self.critic_core is not None else self.core
        if core is None:
            return features
        if sequences is None:
            raise ValueError("a recurrent policy needs the rows' Sequences to replay them")
        actor_state, critic_state = self._split(sequences.initial_state)
        return core.replay(features, sequences, critic_state if core is self.critic_core else actor_state)

    def _actor_latent(self, obs, sequences: Sequences | None) -> Tensor:
        return self.actor_trunk(self._core(self._features(obs, False), sequences, False))

    def _critic_latent(self, obs, sequences: Sequences | None) -> Tensor:
        if self.critic_trunk is None:
            return self._actor_latent(obs, sequences)
        return self.critic_trunk(self._core(self._features(obs, True), sequences, True))

    def distribution(self, obs, sequences: Sequences | None = None) -> ActionDistribution:
        """The action distribution at each row of ``obs``."""
        return self.head(self._actor_latent(obs, sequences))

    def value(self, obs, sequences: Sequences | None = None) -> Tensor:
        """State value at each row of ``obs``, shape ``[B]``."""
        return self.value_head(self._critic_latent(obs, sequences)).squeeze(-1)

    def forward(self, obs, sequences: Sequences | None = None) -> tuple[ActionDistribution, Tensor]:
        """Distribution and value at each row, computing shared parts once."""
        features = self._features(obs, False)
        core_out = self._core(features, sequences, False)
        latent = self.actor_trunk(core_out)
        if self.critic_trunk is None:
            critic_latent = latent
        else:
            critic_features = features if self.critic_encoder is None else self.critic_encoder(obs)
            if self.critic_core is not None:
                critic_in = self._core(critic_features, sequences, True)
            else:  # the actor's core (shared, and then so is the encoder), or none
                critic_in = core_out if self.core is not None else critic_features
            critic_latent = self.critic_trunk(critic_in)
        return self.head(latent), self.value_head(critic_latent).squeeze(-1)

    # ---------------------------------------------------------------------------------------------------- acting
    def step(self, obs, state: Tensor) -> tuple[ActionDistribution, Tensor, Tensor]:
        """One acting step for a batch of envs: distribution, value and each env's next state."""
        if self.core is None:
            dist, value = self.forward(obs)
            return dist, value, state
        actor_state, critic_state = self._split(state)
        features = self._features(obs, False)
        core_out, next_actor = self.core.step(features, actor_state)
        latent = self.actor_trunk(core_out)
        if self.critic_trunk is None:
            critic_latent, next_critic = latent, critic_state
        else:
            if self.critic_core is None:  # the actor's core is shared, and then so is the encoder
                critic_out, next_critic = core_out, critic_state
            else:
                critic_features = features if self.critic_encoder is None else self.critic_encoder(obs)
                critic_out, next_critic = self.critic_core.step(critic_features, critic_state)
            critic_latent = self.critic_trunk(critic_out)
        next_state = torch.cat([next_actor, next_critic], dim=-1)
        return self.head(latent), self.value_head(critic_latent).squeeze(-1), next_state

    # ------------------------------------------------------------------------------------------------ parameters
    def actor_parameters(self) -> list[nn.Parameter]:
        """Parameters that shape the policy (encoder, core, trunk and head)."""
        parts = (self.encoder, self.core, self.actor_trunk, self.head)
        return [p for part in parts if part is not None for p in part.parameters()]

    def critic_parameters(self) -> list[nn.Parameter]:
        """Parameters that only shape the value function."""
        parts = (self.critic_encoder, self.critic_core, self.critic_trunk, self.value_head)
        return [p for part in parts if part is not None for p in part.parameters()]


__all__ = ["ActorCritic"]
