"""GRPO/GSPO: losses against hand-computed values, reward computers, shared start states, and learning."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from paths import CONFIGS

from pgkit.algorithms.grpo import adapt_beta, aggregate, grpo_loss
from pgkit.config_loading import load_config
from pgkit.errors import ConfigError
from pgkit.evaluation import restore_agent
from pgkit.ops import pareto_scores, relative_scores
from pgkit.training import fit

QUIET = ["logger.enabled=false", "eval.every_n_iterations=0"]
MASK = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])  # episode 0 lasts 3 steps, episode 1 lasts 2


def loss_terms(**overrides):
    args = dict(
        log_prob=torch.zeros(3, 2),
        old_log_prob=torch.zeros(3, 2),
        ref_log_prob=torch.zeros(3, 2),
        advantage=torch.tensor([1.0, -2.0]),
        mask=MASK,
        entropy=torch.zeros(3, 2),
        epsilon=0.2,
        epsilon_high=0.2,
        beta=0.0,
        ent_coef=0.0,
        loss_type="grpo",
        importance_sampling_level="token",
        max_length=4,
        steps_per_minibatch=2.5,
    )
    args.update(overrides)
    return grpo_loss(**args)


@pytest.mark.parametrize(
    ("loss_type", "expected"),
    [
        # Per-step losses -A: episode 0 has [-1, -1, -1], episode 1 has [2, 2]; their sum is 1 over 5 steps.
        ("grpo", (-1.0 + 2.0) / 2),  # mean of the episode means
        ("bnpo", 1.0 / 5),  # mean over the minibatch's steps
        ("dr_grpo", 1.0 / (2 * 4)),  # over episodes x max_length
        ("dapo", 1.0 / 2.5),  # over the batch's steps per minibatch
    ],
)
def test_loss_types(loss_type, expected):
    assert loss_terms(loss_type=loss_type)["loss"].item() == pytest.approx(expected)


def test_aggregate_ignores_masked_steps():
    per_step = torch.tensor([[1.0, 3.0], [1.0, 3.0], [100.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    assert aggregate(per_step, mask, "bnpo", 3, 2.0).item() == pytest.approx(2.0)


def test_token_ratio_clipping_kl_and_entropy():
    log_prob = torch.full((3, 2), 0.5)  # ratio e^0.5 = 1.6487 everywhere
    terms = loss_terms(
        log_prob=log_prob,
        ref_log_prob=log_prob - 0.3,
        beta=0.1,
        ent_coef=0.01,
        entropy=torch.full((3, 2), 2.0),
        loss_type="bnpo",
        epsilon_high=0.28,
    )
    # A = +1: min(1.6487, 1.28) = 1.28 (clipped); A = -2: min(-3.2974, -2.5600) = -3.2974 (not clipped).
    k3 = math.exp(-0.3) + 0.3 - 1
    per_step = torch.tensor([[-1.28, 2 * math.exp(0.5)]] * 3) + 0.1 * k3 - 0.01 * 2.0
    expected = (per_step * MASK).sum() / 5
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms["kl"].item() == pytest.approx(k3, rel=1e-6)
    assert terms["clip_fraction"].item() == pytest.approx(3 / 5)  # the A > 0 episode's 3 steps are clipped


def test_gspo_sequence_ratio():
    # Episode 0: log-ratios 0.1, 0.3, 0.2 -> mean 0.2; episode 1: 0.4, -0.2 and a masked 5.0 -> mean 0.1.
    log_prob = torch.tensor([[0.1, 0.4], [0.3, -0.2], [0.2, 5.0]], requires_grad=True)
    terms = loss_terms(
        log_prob=log_prob,
        advantage=torch.tensor([1.0, 1.0]),
        importance_sampling_level="sequence",
        epsilon=3e-4,
        epsilon_high=4e-4,
        loss_type="bnpo",
    )
    # Both ratios (e^0.2, e^0.1) exceed 1 + 4e-4 with A > 0: every step's objective is clipped to 1.0004.
    assert terms["loss"].item() == pytest.approx(-1.0004)
    assert terms["clip_fraction"].item() == 1.0
    terms["loss"].backward()
    assert log_prob.grad.abs().sum().item() == 0.0  # clipped: no gradient
    # Unclipped (wide epsilon): the loss is -mean_t exp(mean log-ratio of the step's episode).
    log_prob = log_prob.detach().requires_grad_()
    terms = loss_terms(log_prob=log_prob, advantage=torch.tensor([1.0, 1.0]), importance_sampling_level="sequence",
                       epsilon=0.9, epsilon_high=10.0, loss_type="bnpo")
    assert terms["loss"].item() == pytest.approx(-(3 * math.exp(0.2) + 2 * math.exp(0.1)) / 5, rel=1e-6)
    terms["loss"].backward()
    # d/d logp[t, 0] = -(3 e^0.2 / 3) / 5 for each of episode 0's steps; the masked step gets nothing.
    assert log_prob.grad[0, 0].item() == pytest.approx(-math.exp(0.2) / 5, rel=1e-6)
    assert log_prob.grad[2, 1].item() == 0.0


def test_reward_computers():
    torch.testing.assert_close(relative_scores(torch.tensor([[3.0, 1.0, 2.0, 2.0]])), torch.tensor([[1, 0, 0.5, 0.5]]))
    objectives = torch.tensor([[[1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    torch.testing.assert_close(pareto_scores(objectives), torch.tensor([[1.0, 0.0, 2 / 3, 2 / 3]]))


def test_adaptive_beta():
    assert adapt_beta(0.02, 0.05, 0.01, 0.001, 0.1) == pytest.approx(0.03)
    assert adapt_beta(0.02, 0.001, 0.01, 0.001, 0.1) == pytest.approx(0.02 / 1.5)
    assert adapt_beta(0.02, 0.01, 0.01, 0.001, 0.1) == 0.02
    assert adapt_beta(0.09, 1.0, 0.01, 0.001, 0.1) == 0.1
    assert adapt_beta(0.0012, 0.0, 0.01, 0.001, 0.1) == 0.001


def test_a_group_shares_its_start_state():
    cfg = load_config(None, [*QUIET, "env.id=CartPole-v1", "env.num_envs=12", "env.normalize_reward=false",
                             "algorithm.group_size=4"], base={"algorithm": {"name": "grpo"}})
    module = cfg.init()
    module.setup("fit")
    try:
        module.begin_rollout()
        obs = torch.as_tensor(module.reset_observations).view(3, 4, -1)
        assert (obs == obs[:, :1]).all()  # identical within each group
        assert not torch.equal(obs[0, 0], obs[1, 0]) and not torch.equal(obs[1, 0], obs[2, 0])
        assert module.group_seeds() == module.group_seeds()  # a pure function of seed, rank and iteration
    finally:
        module.teardown("fit")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["env.num_envs=10", "algorithm.group_size=4"], "env.num_envs: must be a multiple of algorithm.group_size"),
        (["env.normalize_reward=true"], "env.normalize_reward"),
        (["algorithm.reward=pareto"], "algorithm.objectives"),
        (["algorithm.num_minibatches=3"], "algorithm.num_minibatches"),
    ],
)
def test_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "grpo.yaml", overrides)


def test_pareto_reads_the_info_and_a_missing_key_is_a_config_error(tmp_path):
    common = [*QUIET, "trainer.total_timesteps=640", "algorithm.reward=pareto"]
    result = fit(load_config(CONFIGS / "grpo-tool-use.yaml", [*common, "algorithm.objectives=[quality, speed]"]))
    assert result.env_steps == 640
    cfg = load_config(CONFIGS / "grpo-tool-use.yaml", [*common, "algorithm.objectives=[nope]",
                                                       f"trainer.output_dir={tmp_path / 'bad'}"])
    with pytest.raises(ConfigError, match="info has no key 'nope' in this rollout"):
        fit(cfg)


def test_reference_sync_is_trls_mixup_every_n_optimizer_steps():
    # TRL's SyncRefModelCallback: after optimizer steps N, 2N, ...: ref <- alpha * policy + (1 - alpha) * ref.
    from pgkit.algorithms.grpo import GRPOConfig, ReferenceSync

    assert not GRPOConfig().sync_ref_model  # TRL's defaults: frozen, alpha 0.6, every 512 steps
    assert (GRPOConfig().ref_model_mixup_alpha, GRPOConfig().ref_model_sync_steps) == (0.6, 512)
    sync = ReferenceSync(GRPOConfig(sync_ref_model=True, ref_model_mixup_alpha=0.25, ref_model_sync_steps=2))
    policy, reference = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    policy.weight.data.fill_(1.0)
    reference.weight.data.fill_(0.0)
    for step in [1, 2, 2, 3, 4]:  # step 2 seen twice: a skipped minibatch after it must not mix again
        sync.after_step(step, reference, policy)
    assert reference.weight.item() == pytest.approx(1 - 0.75**2)  # mixed at steps 2 and 4 only


def test_reference_updates():
    common = [*QUIET, "trainer.total_timesteps=1280", "algorithm.beta=0.05", "algorithm.adaptive_beta=false"]
    synced = fit(load_config(CONFIGS / "grpo-tool-use.yaml", [*common, "algorithm.sync_ref_model=true",
                                                              "algorithm.ref_model_mixup_alpha=1.0",
                                                              "algorithm.ref_model_sync_steps=1"]))
    module, _, _ = restore_agent(synced.last_checkpoint)
    for ref, cur in zip(module.reference.parameters(), module.policy.parameters(), strict=True):
        torch.testing.assert_close(ref, cur)
    frozen = fit(load_config(CONFIGS / "grpo-tool-use.yaml", [*common, "algorithm.sync_ref_model=false",
                                                              "trainer.output_dir=runs/frozen"]))
    module, _, _ = restore_agent(frozen.last_checkpoint)
    pairs = zip(module.reference.parameters(), module.policy.parameters(), strict=True)
    assert any(not torch.equal(ref, cur) for ref, cur in pairs)  # the policy moved; the reference did not follow


@pytest.mark.learning
@pytest.mark.slow
def test_grpo_learns_tool_selection():
    result = fit(load_config(CONFIGS / "grpo-tool-use.yaml", QUIET))
    module, _, _ = restore_agent(result.last_checkpoint)
    env = gym.make("pgkit/ToolSelection-v0")
    optimal = []
    for i in range(500):
        obs, _ = env.reset(seed=50_000 + i)
        actions, _ = module.act(obs[None], deterministic=True)
        _, _, _, _, info = env.step(actions[0])
        optimal.append(info["optimal"])
    assert np.mean(optimal) > 0.9, f"optimal tool chosen in {np.mean(optimal):.0%} of 500 tasks"
