"""``env.backend: split``: two halves of the sub-envs stepping at once behave as one SyncVectorEnv of them all."""

from __future__ import annotations

import numpy as np
import pytest
from paths import ROOT

from pgkit.environments.make import make_vec_env


def _run(backend: str, env_id: str, num_envs: int, steps: int, max_episode_steps: int | None = None,
         dtype_of_space: bool = True):
    envs = make_vec_env(env_id, num_envs, backend, max_episode_steps=max_episode_steps)
    rng = np.random.default_rng(0)
    try:
        obs, _ = envs.reset(seed=[10 + i for i in range(num_envs)])
        trace = [obs]
        episodes = []
        finals = []
        for _ in range(steps):
            discrete = hasattr(envs.single_action_space, "n")
            action = rng.integers(0, 2, num_envs) if discrete else rng.uniform(-1, 1, (num_envs, 1))
            if dtype_of_space:  # as pgkit's rollout passes them: shared memory; otherwise through the pipe
                action = action.astype(envs.single_action_space.dtype)
            obs, reward, terminated, truncated, info = envs.step(action)
            trace += [obs, reward, terminated, truncated]
            if "episode" in info:
                done = np.flatnonzero(info["_episode"])
                episodes += [(int(i), float(info["episode"]["r"][i]), int(info["episode"]["l"][i])) for i in done]
            if "final_obs" in info:
                finals += [(int(i), np.asarray(info["final_obs"][i])) for i in np.flatnonzero(info["_final_obs"])]
        return trace, episodes, finals
    finally:
        envs.close()


@pytest.mark.parametrize("env_id,num_envs,limit,dtype_of_space", [
    ("CartPole-v1", 5, None, True), ("Pendulum-v1", 4, 7, True), ("Pendulum-v1", 3, 7, False),
    ("Blackjack-v1", 4, None, True),  # Tuple observations: through the pipe
])
def test_split_equals_sync_step_for_step(env_id, num_envs, limit, dtype_of_space):
    sync = _run("sync", env_id, num_envs, 120, limit, dtype_of_space)
    split = _run("split", env_id, num_envs, 120, limit, dtype_of_space)
    assert len(sync[0]) == len(split[0])
    for a, b in zip(sync[0], split[0], strict=True):
        for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,), strict=True):
            np.testing.assert_array_equal(x, y)
    assert sync[1] == split[1] and len(sync[1]) > num_envs  # the same episodes ended, in the same envs
    assert [i for i, _ in sync[2]] == [i for i, _ in split[2]] and sync[2]  # final observations at the same steps
    for (_, a), (_, b) in zip(sync[2], split[2], strict=True):
        np.testing.assert_array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object))


def test_split_worker_errors_reach_the_caller():
    from pgkit.environments.split import SplitVectorEnv

    def broken():
        raise RuntimeError("cannot build this env")

    with pytest.raises(RuntimeError, match="cannot build this env"):
        SplitVectorEnv([lambda: __import__("gymnasium").make("CartPole-v1"), broken])


def test_split_needs_two_envs_and_the_old_key_still_reads(tmp_path, capsys):
    from pgkit.cli import main
    from pgkit.config_loading import load_config

    config = tmp_path / "c.yaml"
    config.write_text("algorithm: {name: ppo}\nenv: {id: CartPole-v1, num_envs: 1, backend: split}\n")
    assert main(["validate", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert "env.backend" in err and "num_envs" in err and len(err.splitlines()) == 1
    # the key's name before env.backend
    config.write_text("algorithm: {name: ppo}\nenv: {id: CartPole-v1, num_envs: 4, vectorization: split}\n")
    assert load_config(config, []).env.backend == "split"


class _Counter(__import__("gymnasium").Env):
    """Ends after ``length`` steps and says where it ended with an array-valued info entry."""

    def __init__(self, length: int, fail_seed: int | None = None) -> None:
        import gymnasium as gym

        self.length, self.fail_seed, self.t = length, fail_seed, 0
        self.observation_space = gym.spaces.Box(-100.0, 100.0, (1,))
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None and seed == self.fail_seed:
            raise ValueError("this seed is refused")
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        ended = self.t >= self.length
        info = {"pos": np.array([self.t, 2 * self.t])} if ended else {}
        return np.full(1, self.t, np.float32), 1.0, ended, False, info


def _counters(lengths, fail_seed=None):
    import functools

    return [functools.partial(_Counter, n, fail_seed) for n in lengths]


def test_array_valued_infos_from_one_half_only_join_as_sync_builds_them():
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    from pgkit.environments.split import SplitVectorEnv

    sync = SyncVectorEnv(_counters([2, 5, 5, 7]), autoreset_mode=AutoresetMode.SAME_STEP)
    split = SplitVectorEnv(_counters([2, 5, 5, 7]), autoreset_mode=AutoresetMode.SAME_STEP)
    try:
        for envs in (sync, split):
            envs.reset(seed=0)
        for _ in range(8):  # env 0 (this process's half) ends alone at step 2, env 3 (the worker's) alone at 7
            a, b = sync.step(np.zeros(4, np.int64)), split.step(np.zeros(4, np.int64))
            for x, y in zip(a[:4], b[:4], strict=True):
                np.testing.assert_array_equal(x, y)
            assert a[4].keys() == b[4].keys()
            for key in a[4]:
                if key == "final_info":
                    for k in a[4][key]:
                        np.testing.assert_array_equal(a[4][key][k], b[4][key][k])
                elif key != "final_obs":
                    np.testing.assert_array_equal(a[4][key], b[4][key])
    finally:
        sync.close()
        split.close()


def test_an_error_in_this_process_half_leaves_the_worker_in_step():
    from pgkit.environments.split import SplitVectorEnv

    split = SplitVectorEnv(_counters([3, 3, 3, 3], fail_seed=13))
    try:
        with pytest.raises(ValueError, match="refused"):
            split.reset(seed=[13, 1, 2, 3])  # env 0 (here) refuses; the worker's half resets fine
        obs, _ = split.reset(seed=[0, 1, 2, 3])  # the worker's stale reply is not read as this one's
        assert obs.shape == (4, 1)
        obs, *_ = split.step(np.ones(4, np.int64))
        np.testing.assert_array_equal(obs[:, 0], [1, 1, 1, 1])
        with pytest.raises(ValueError, match="reset_mask"):
            split.reset(options={"reset_mask": np.array([True, False, False, False])})
    finally:
        split.close()


@pytest.mark.parametrize("config,overrides", [
    # truncations every 40 steps: bootstrap values of the real final observations
    ("ppo.yaml", ["env.id=Pendulum-v1", "env.max_episode_steps=40", "algorithm.num_steps=48",
                  "algorithm.update_epochs=1", "algorithm.num_minibatches=2"]),
    # episode batches: the rollout stops early
    ("reinforce-cartpole.yaml", ["algorithm.batch=episodes", "algorithm.num_steps=200",
                                 "trainer.total_timesteps=4000"]),
    # groups of episodes, scored from the infos each step hands observe_step
    ("grpo.yaml", ["algorithm.group_size=2", "algorithm.num_steps=200", "trainer.total_timesteps=4000"]),
    # a recurrent policy: its state is reset at episode starts
    ("ppo-lstm.yaml", ["env.id=CartPole-v1", "algorithm.num_steps=32", "algorithm.bptt_horizon=8",
                       "policy.recurrent.hidden_size=8", "algorithm.update_epochs=1",
                       "algorithm.num_minibatches=2"]),
])
def test_training_with_split_gives_syncs_numbers(tmp_path, config, overrides):
    """Whole runs with the split backend train sync's numbers: the weights, normalisers and episodes, bit for
    bit, through truncations, early-stopping episode batches, group scoring and recurrent states."""
    import torch

    from pgkit.config_loading import load_config
    from pgkit.training import fit

    root = ROOT
    results = {}
    for backend in ("sync", "split"):
        cfg = load_config(root / "configs" / config, [
            "env.num_envs=4", f"env.backend={backend}", "trainer.total_timesteps=1600", *overrides,
            "logger.enabled=false",
            "eval.every_n_iterations=0", f"trainer.output_dir={tmp_path / backend}"])
        result = fit(cfg)
        state = torch.load(result.last_checkpoint, weights_only=False)["state_dict"]
        results[backend] = (state, result.episode_returns, result.env_steps)
    (sync, sync_returns, sync_steps), (split, split_returns, split_steps) = results["sync"], results["split"]
    assert sync_steps == split_steps and sync_returns == split_returns and len(sync_returns) > 4
    assert sync.keys() == split.keys()
    for key in sync:
        torch.testing.assert_close(split[key], sync[key], rtol=0, atol=0, msg=key)
