"""Networks built from their config: MLP trunks and the actor-critic."""

from pgkit.networks.actor_critic import ActorCritic
from pgkit.networks.mlp import Activation, mlp, output_width

__all__ = ["Activation", "ActorCritic", "mlp", "output_width"]
