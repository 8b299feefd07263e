"""``env.backend: split``: two halves of the sub-envs stepping at once behave as one SyncVectorEnv of them all."""

from __future__ import annotations

import numpy as np
import pytest

from pgkit.environments.make import make_vec_env


def _run(backend: str, env_id: str, num_envs: int, steps: int, max_episode_steps: int | None = None):
    envs = make_vec_env(env_id, num_envs, backend, max_episode_steps=max_episode_steps)
    rng = np.random.default_rng(0)
    try:
        obs, _ = envs.reset(seed=[10 + i for i in range(num_envs)])
        trace = [obs]
        episodes = []
        finals = []
        for _ in range(steps):
            discrete = env_id.startswith("CartPole")
            action = rng.integers(0, 2, num_envs) if discrete else rng.uniform(-1, 1, (num_envs, 1))
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


@pytest.mark.parametrize("env_id,num_envs,limit", [("CartPole-v1", 5, None), ("Pendulum-v1", 4, 7)])
def test_split_equals_sync_step_for_step(env_id, num_envs, limit):
    sync = _run("sync", env_id, num_envs, 120, limit)
    split = _run("split", env_id, num_envs, 120, limit)
    assert len(sync[0]) == len(split[0])
    for a, b in zip(sync[0], split[0], strict=True):
        np.testing.assert_array_equal(a, b)
    assert sync[1] == split[1] and len(sync[1]) > num_envs  # the same episodes ended, in the same envs
    assert [i for i, _ in sync[2]] == [i for i, _ in split[2]] and sync[2]  # final observations at the same steps
    for (_, a), (_, b) in zip(sync[2], split[2], strict=True):
        np.testing.assert_array_equal(a, b)


def test_split_worker_errors_reach_the_caller():
    from pgkit.environments.split import SplitVectorEnv

    def broken():
        raise RuntimeError("cannot build this env")

    with pytest.raises(RuntimeError, match="cannot build this env"):
        SplitVectorEnv([lambda: __import__("gymnasium").make("CartPole-v1"), broken])
