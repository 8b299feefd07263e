"""An inference-only forward of an :class:`ActorCritic` with actor and critic stacked into block matrices.

During a rollout the policy runs once per environment step on a handful of rows, where the cost is the number of
calls, not the arithmetic: the module path makes about a dozen module calls and ops (two trunks, the head, the value
head), ~100 us on one CPU thread. Stacking the layers of both trunks (concatenated first layer, block-diagonal
after, one output layer for the head and the value) does the same arithmetic in one ``addmm`` and one activation per
layer, ~15 us. The zero blocks add exact zeros, so the outputs equal the module's up to float summation order.

The weights are copied, so the rollout takes a fresh :func:`fuse` of its acting network each time (a few ops).
Nothing here is differentiable or trained: the update always runs the modules.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from pgkit.distributions import ActionDistribution

FusedForward = Callable[[Tensor], tuple[ActionDistribution, Tensor]]


def mlp_layers(trunk: nn.Module | None) -> list[tuple[nn.Linear, nn.Module]] | None:
    """``[(linear, activation), ...]`` of an :func:`pgkit.networks.mlp`, or None for any other module."""
    if not isinstance(trunk, nn.Sequential) or len(trunk) % 2:
        return None
    pairs = [(trunk[i], trunk[i + 1]) for i in range(0, len(trunk), 2)]
    if not all(isinstance(linear, nn.Linear) for linear, _ in pairs):
        return None
    return pairs


@torch.no_grad()
def fuse(actor_critic: nn.Module) -> FusedForward | None:
    """A function ``obs -> (distribution, value)`` equal to ``actor_critic(obs)``, with the current weights stacked;
    None when the trunks cannot be stacked (different depths or activations, not plain MLPs, an encoder or a
    recurrent core)."""
    if actor_critic.encoder is not None or actor_critic.critic_encoder is not None or actor_critic.recurrent:
        return None  # only plain MLPs on vector observations are stacked
    head = actor_critic.head
    head_linears: list[nn.Linear] = head.linears()
    value_head: nn.Linear = actor_critic.value_head
    actor = mlp_layers(actor_critic.actor_trunk)
    critic = actor if actor_critic.critic_trunk is None else mlp_layers(actor_critic.critic_trunk)
    if actor is None or critic is None or len(actor) != len(critic):
        return None
    if any(type(a) is not type(c) for (_, a), (_, c) in zip(actor, critic, strict=True)):
        return None
    shared = actor_critic.critic_trunk is None or not actor
    hidden: list[tuple[Tensor, Tensor, nn.Module]] = []
    for depth, ((la, act), (lc, _)) in enumerate(zip(actor, critic, strict=True)):
        if shared:
            weight, bias = la.weight, la.bias
        elif depth == 0:  # both trunks read the observation
            weight, bias = torch.cat([la.weight, lc.weight]), torch.cat([la.bias, lc.bias])
        else:  # each trunk reads its own half of the previous layer
            weight, bias = torch.block_diag(la.weight, lc.weight), torch.cat([la.bias, lc.bias])
        hidden.append((weight.t().contiguous(), bias.clone(), act))
    head_weight = torch.cat([layer.weight for layer in head_linears])
    if shared:
        out_weight = torch.cat([head_weight, value_head.weight])
    else:
        out_weight = torch.block_diag(head_weight, value_head.weight)
    out_weight = out_weight.t().contiguous()
    out_bias = torch.cat([*(layer.bias for layer in head_linears), value_head.bias])
    sizes = [layer.out_features for layer in head_linears] + [1]

    def forward(obs: Tensor) -> tuple[ActionDistribution, Tensor]:
        h = obs
        for weight, bias, activation in hidden:
            h = activation.forward(torch.addmm(bias, h, weight))
        *head_out, value = torch.addmm(out_bias, h, out_weight).split(sizes, dim=-1)
        return head.from_outputs(head_out), value.squeeze(-1)

    return forward


__all__ = ["FusedForward", "fuse", "mlp_layers"]
