"""Reward functions as TRL users write them: None means "not applicable", numbers of any numpy dtype, bare
``module:function`` entries, NaN named with its function and prompt, and a timeout for a function that hangs."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("transformers")

from paths import ROOT

from pgkit.cli import main
from pgkit.errors import ConfigError, TrainingError
from pgkit.llm.config import RewardConfig
from pgkit.llm.rewards import RewardFunctions, compute_scores

PROMPTS = ["What is 1 + 1?", "What is 2 + 2?", "Say a", "Say b"]
COMPLETIONS = ["2", "5", "a", "c"]


def rewards(*entries, timeout: float | None = None) -> RewardFunctions:
    return RewardFunctions(RewardConfig(functions=list(entries), timeout_s=timeout).functions, timeout)


def call(functions: RewardFunctions, check: bool = False) -> torch.Tensor:
    return functions(PROMPTS, COMPLETIONS, {}, 0, 0.0, check=check)


def test_none_is_not_applicable_and_the_weighted_sum_skips_it():
    functions = rewards("llm_rewards:sometimes_none", {"function": "llm_rewards:numpy_float32", "weight": 2.0})
    values = call(functions)
    assert math.isnan(values[0, 0]) and values[1, 0] == 1.0
    # Completion 1: only numpy_float32 applies (2 x 0.25); completion 2: both (1 + 2 x 0.25).
    assert functions.weighted(values).tolist() == [0.5, 1.5, 0.5, 1.5]
    # Relative and Pareto scores take the same values: a value that does not apply is the worst in its objective.
    assert compute_scores(values, functions.weights, "relative", 2).tolist() == [0.0, 1.0, 0.0, 1.0]
    assert compute_scores(values, functions.weights, "pareto", 2).tolist() == [0.0, 1.0, 0.0, 1.0]


def test_a_completion_no_function_applies_to_scores_zero():
    functions = rewards("llm_rewards:never_applies")
    assert functions.weighted(call(functions)).tolist() == [0.0, 0.0, 0.0, 0.0]


def test_numbers_of_any_numpy_dtype_are_numbers():
    values = call(rewards("llm_rewards:numpy_scalars"))
    assert values[:, 0].tolist() == [0.5, 1.0, 2.0, 3.0]


def test_functions_that_use_signals_or_return_generators_work_under_the_default_timeout():
    # TRL's math_verify rewards set their own SIGALRM: they need the main thread, where pgkit calls them.
    values = call(rewards("llm_rewards:uses_sigalrm", "llm_rewards:a_generator", timeout=300.0))
    assert values.tolist() == [[1.0, 0.5]] * 4


def test_nan_names_the_function_and_the_prompt():
    with pytest.raises(TrainingError, match=r"reward function llm_rewards:nan_for_the_second returned nan for "
                                            r"completion 2 of prompt 'What is 2 \+ 2\?'"):
        call(rewards("llm_rewards:nan_for_the_second"))


def test_a_function_that_hangs_is_stopped_by_the_timeout():
    start = time.monotonic()
    with pytest.raises(TrainingError, match=r"reward function llm_rewards:hangs did not return within "
                                            r"reward.timeout_s=0.5 s"):
        call(rewards("llm_rewards:hangs", timeout=0.5))
    assert time.monotonic() - start < 5
    with pytest.raises(ConfigError, match=r"config error: reward\.functions: reward function llm_rewards:hangs"):
        call(rewards("llm_rewards:hangs", timeout=0.5), check=True)


@pytest.mark.slow
def test_bare_entries_and_none_in_a_real_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load((ROOT / "configs" / "llm-grpo.yaml").read_text())
    config["reward"] = {"functions": ["llm_rewards:sometimes_none", "llm_rewards:never_applies",
                                      "llm_rewards:numpy_float32"]}
    config["trainer"] = {"total_timesteps": 128, "output_dir": "run"}
    config["logger"] = {"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}"}
    Path("c.yaml").write_text(yaml.safe_dump(config))
    code = main(["fit", "--config", "c.yaml"])
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("pgkit").experiment_id])
    assert run.data.metrics["train/reward/numpy_float32"] == pytest.approx(0.25)
    assert run.data.metrics["train/reward/sometimes_none"] == 1.0  # the mean over the completions it applies to
    assert "train/reward/never_applies" not in run.data.metrics  # it applied to nothing
    assert run.data.metrics["train/reward_not_applicable"] == 0.0  # numpy_float32 applied to every completion
    assert run.data.metrics["train/reward_mean"] == pytest.approx(0.25 + 0.5)  # 0.25, plus 1 for every other
    config["reward"] = {"functions": ["llm_rewards:sometimes_none", "llm_rewards:never_applies"]}
    config["trainer"]["output_dir"] = "run2"
    Path("c.yaml").write_text(yaml.safe_dump(config))
    code = main(["fit", "--config", "c.yaml"])
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    assert err.count("no reward function applies to a completion of prompt") == 1  # reported, once
    (run,) = [r for r in client.search_runs([client.get_experiment_by_name("pgkit").experiment_id])
              if r.info.run_id != run.info.run_id]
    assert run.data.metrics["train/reward_not_applicable"] == 0.5


def test_a_nan_found_before_training_is_bad_input_naming_the_function(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load((ROOT / "configs" / "llm-grpo.yaml").read_text())
    config["reward"] = {"functions": ["llm_rewards:nan_for_the_second"]}
    config["trainer"] = {"total_timesteps": 128, "output_dir": "run"}
    config["logger"] = {"enabled": False}
    Path("c.yaml").write_text(yaml.safe_dump(config))
    code = main(["fit", "--config", "c.yaml"])
    err = capsys.readouterr().err
    # The probe before training calls it on two records with empty completions: the NaN is found there, exit 2.
    assert code == 2 and "reward function llm_rewards:nan_for_the_second returned nan for completion 2" in err, err
    assert "Traceback" not in err
