"""Recurrent policies: packed-sequence replay equals stepping, the rollout resets states at episode starts and stores
them at chunk starts, training replays exactly what acted, minibatches are whole chunks, evaluation carries state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgkit.config_loading import load_config
from pgkit.evaluation import evaluate
from pgkit.networks.recurrent import RecurrentCore, Sequences

QUIET = ["logger.enabled=false", "eval.every_n_iterations=0"]


@pytest.mark.parametrize(("kind", "layers"), [("lstm", 1), ("lstm", 2), ("gru", 1), ("gru", 3)])
def test_replay_of_packed_sequences_equals_stepping(kind, layers):
    torch.manual_seed(0)
    core = RecurrentCore(kind, 3, 5, layers)
    rows = 40
    starts = torch.zeros(rows, dtype=torch.bool)
    starts[[0, 3, 10, 11, 25, 39]] = True  # sequences of 3, 7, 1, 14, 14 and 1 rows
    state = torch.randn(rows, core.state_size)
    x = torch.randn(rows, 3, requires_grad=True)
    sequences = Sequences(starts, state)
    replayed = core.replay(x, sequences, sequences.initial_state)
    stepped, s = [], None
    for r in range(rows):
        if starts[r]:
            s = state[r : r + 1]
        out, s = core.step(x[r : r + 1], s)
        stepped.append(out)
    stepped = torch.cat(stepped)
    torch.testing.assert_close(replayed, stepped)
    weight = torch.randn_like(stepped)
    grads = [torch.autograd.grad((y * weight).sum(), [x, *core.parameters()]) for y in (replayed, stepped)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def _module(*overrides: str):
    base = ["env.id=CartPole-v1", "env.num_envs=3", "algorithm.num_steps=24", "algorithm.num_minibatches=3",
            "trainer.total_timesteps=72", "policy.recurrent={hidden_size: 8}"]
    return load_config(None, [*QUIET, *base, *overrides], base={"algorithm": {"name": "ppo"}}).init()


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["algorithm.bptt_horizon=6"],
        ["policy.recurrent={kind: gru, hidden_size: 8, num_layers: 2}"],
        ["policy.recurrent={hidden_size: 8, shared: true}"],
        ["policy.shared_trunk=true"],
    ],
)
def test_training_replays_exactly_what_acted(overrides):
    """Every row's log-prob and value recomputed from the stored chunk states equal those of the rollout, through
    episode ends inside chunks (CartPole ends an episode every ~20 steps under a random policy)."""
    module = _module(*overrides)
    module.setup("fit")
    inside = 0
    try:
        for _ in range(3):
            module.collect_rollout()
            module.make_rows()
            batch = module.minibatch(torch.arange(module.num_units))
            assert (batch["episode_start"] & ~batch["sequence_start"]).sum() == 0  # episode starts cut sequences
            with torch.no_grad():
                dist, value = module.policy(batch["obs"], module.sequences(batch))
                torch.testing.assert_close(dist.log_prob(batch["action"]), batch["log_prob"])
                torch.testing.assert_close(value, batch["value"])
                # Without the resets at episode starts the replay would not match: the check can fail.
                chunk_only = batch["sequence_start"] & ~batch["episode_start"]
                chunk_only[:: module.rows_per_unit] = True
                if (batch["episode_start"] & ~chunk_only).any():  # some episode starts inside a chunk
                    inside += 1
                    stale = Sequences(chunk_only, batch["state"])
                    assert not torch.allclose(module.policy(batch["obs"], stale)[1], batch["value"])
        assert inside
    finally:
        module.teardown("fit")


def test_states_are_stored_at_chunk_starts_and_reset_at_episode_starts():
    # Episodes of exactly 4 steps; chunks of 2: every other chunk starts an episode (state 0), the others not.
    module = _module("env.id=envs_for_tests:TerminatingCounterEnv", "env.kwargs={}", "algorithm.num_steps=8",
                     "algorithm.bptt_horizon=2", "env.max_episode_steps=4", "algorithm.num_minibatches=1")
    module.setup("fit")
    try:
        module.collect_rollout()
        states = module.collector.sequence_states  # [4 chunks, 3 envs, S]
        starts = module.buffer["episode_start"]
        assert starts[:, 0].tolist() == [True, False, False, True, False, False, True, False]
        assert torch.all(states[0] == 0) and torch.all(states[3] == 0)  # t = 0 and t = 6 start episodes
        assert torch.all(states[1].abs().sum(-1) > 0) and torch.all(states[2].abs().sum(-1) > 0)
    finally:
        module.teardown("fit")


def test_minibatches_are_whole_chunks():
    module = _module("algorithm.bptt_horizon=8")
    module.setup("fit")
    try:
        module.collect_rollout()
        module.make_rows()
        assert module.num_units == 9 and module.rows_per_unit == 8  # 3 envs x 24 steps in chunks of 8
        batch = module.minibatch(torch.tensor([4, 0]))
        obs = module.buffer["obs"]
        # Unit 4 is chunk 1 (steps 8..15) of env 1; unit 0 is chunk 0 of env 0; each in time order.
        torch.testing.assert_close(batch["obs"][:8], obs[8:16, 1])
        torch.testing.assert_close(batch["obs"][8:], obs[0:8, 0])
        torch.testing.assert_close(batch["state"][0], module.collector.sequence_states[1, 1])
        assert batch["sequence_start"][[0, 8]].all()
    finally:
        module.teardown("fit")


def test_acting_carries_and_resets_state():
    module = _module()
    obs = np.array([[0.1, -0.2, 0.05, 0.3], [-0.1, 0.2, 0.0, -0.3]], np.float32)
    _, state = module.act(obs, True)
    assert state.shape == (2, module.policy.state_size) and state.abs().sum() > 0
    _, carried = module.act(obs, True, state)
    _, fresh = module.act(obs, True, state, episode_start=np.array([True, False]))
    torch.testing.assert_close(fresh[0], module.act(obs[:1], True)[1][0])  # reset: as from a new episode
    torch.testing.assert_close(fresh[1], carried[1])
    assert not torch.allclose(carried[0], fresh[0])
    result = evaluate(module, "CartPole-v1", 3, True, seed=5)
    assert result.returns == evaluate(module, "CartPole-v1", 3, True, seed=5).returns
