"""``env.backend: split``: two halves of the sub-envs stepping at once behave as one SyncVectorEnv of them all."""

from __future__ import annotations

import numpy as np
import pytest

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
