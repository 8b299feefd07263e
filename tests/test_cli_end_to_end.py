"""The CLI as a user runs it: fit writes an MLflow run and checkpoints, eval reproduces, resume continues."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

BATCH = 4 * 64  # env.num_envs * algorithm.num_steps
CONFIG = {
    "algorithm": {"name": "ppo", "num_steps": 64, "num_minibatches": 2, "update_epochs": 2, "learning_rate": 1e-3},
    "env": {"id": "CartPole-v1", "num_envs": 4, "normalize_obs": True},
    "trainer": {"total_timesteps": 2 * BATCH, "seed": 7, "output_dir": "run"},
    "logger": {"tracking_uri": "sqlite:///mlflow.db", "experiment_name": "e2e"},
    "eval": {"every_n_iterations": 1, "episodes": 3},
}
METRICS = [
    "rollout/episode_return",
    "rollout/episode_length",
    "time/sps",
    "train/policy_loss",
    "train/value_loss",
    "train/entropy",
    "train/approx_kl",
    "train/clip_fraction",
    "train/explained_variance",
    "train/learning_rate",
    "eval/mean_return",
]


def pgkit(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pgkit", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One fit, then a resume to twice the budget; both in one directory (module-scoped: it costs ~20 s)."""
    work = tmp_path_factory.mktemp("e2e")
    (work / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    cwd = os.getcwd()
    os.chdir(work)
    try:
        first = pgkit("fit", "--config", "c.yaml")
        first_ckpt = torch.load("run/checkpoints/last.ckpt", weights_only=True)
        first_eval = MlflowClient("sqlite:///mlflow.db").get_metric_history(
            first_ckpt["pgkit"]["mlflow_run_id"], "eval/mean_return"
        )
        evaluated = json.loads(
            pgkit(
                "eval", "--checkpoint", "run/checkpoints/last.ckpt", "--episodes", "3", "--deterministic", "--json"
            ).stdout
        )
        pgkit(
            "fit",
            "--config",
            "c.yaml",
            "--set",
            f"trainer.total_timesteps={4 * BATCH}",
            "--resume",
            "run/checkpoints/last.ckpt",
        )
        final_ckpt = torch.load("run/checkpoints/last.ckpt", weights_only=True)
    finally:
        os.chdir(cwd)
    return {
        "work": work,
        "first": first,
        "first_ckpt": first_ckpt,
        "first_eval": first_eval,
        "evaluated": evaluated,
        "final_ckpt": final_ckpt,
    }


@pytest.mark.slow
def test_fit_writes_mlflow_run_with_metrics_params_artifacts(trained):
    client = MlflowClient(f"sqlite:///{trained['work'] / 'mlflow.db'}")
    run_id = trained["first_ckpt"]["pgkit"]["mlflow_run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert set(METRICS) <= set(run.data.metrics)
    assert run.data.params["algorithm.name"] == "ppo" and run.data.params["env.id"] == "CartPole-v1"
    assert run.data.params["trainer.seed"] == "7"
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "learning_curve.png", "policy"} <= artifacts and "checkpoints" not in artifacts
    # The checkpoint once, inside the policy model.
    assert [a.path for a in client.list_artifacts(run_id, "policy/artifacts")] == ["policy/artifacts/last.ckpt"]
    config_path = client.download_artifacts(run_id, "config.yaml", str(trained["work"]))
    assert yaml.safe_load(Path(config_path).read_text())["algorithm"]["learning_rate"] == 1e-3
    # Metrics are keyed by environment steps, once per iteration.
    steps = [m.step for m in client.get_metric_history(run_id, "time/sps")]
    assert steps == [BATCH, 2 * BATCH, 3 * BATCH, 4 * BATCH]


def test_checkpoint_holds_config_and_normalizer(trained):
    ckpt = trained["first_ckpt"]
    assert ckpt["hyper_parameters"]["config"]["env"]["id"] == "CartPole-v1"
    assert int(ckpt["state_dict"]["env_steps"]) == 2 * BATCH
    assert float(ckpt["state_dict"]["obs_normalizer.rms.count"]) == pytest.approx(2 * BATCH, abs=1e-3)
    assert (trained["work"] / "run/checkpoints/best.ckpt").exists()


def test_eval_reproduces_training_evaluation(trained):
    # Same checkpoint, same seeds, deterministic actions, frozen normaliser: the same return as logged in training.
    assert trained["evaluated"]["episodes"] == 3
    assert trained["evaluated"]["mean_return"] == pytest.approx(trained["first_eval"][-1].value, abs=1e-9)


def test_resume_continues_steps_schedule_normalizer_and_mlflow_run(trained):
    first, final = trained["first_ckpt"], trained["final_ckpt"]
    assert final["pgkit"]["mlflow_run_id"] == first["pgkit"]["mlflow_run_id"]
    assert int(final["state_dict"]["env_steps"]) == 4 * BATCH
    assert float(final["state_dict"]["obs_normalizer.rms.count"]) == pytest.approx(4 * BATCH, abs=1e-3)
    client = MlflowClient(f"sqlite:///{trained['work'] / 'mlflow.db'}")
    lrs = {m.step: m.value for m in client.get_metric_history(first["pgkit"]["mlflow_run_id"], "train/learning_rate")}
    # First run: 2 iterations annealed over 2. Resumed: iterations 3 and 4 of 4 continue the schedule.
    assert lrs == pytest.approx({BATCH: 1e-3, 2 * BATCH: 5e-4, 3 * BATCH: 5e-4, 4 * BATCH: 2.5e-4})


@pytest.mark.slow
def test_eval_records_videos(trained, tmp_path):
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pgkit",
            "eval",
            "--checkpoint",
            str(trained["work"] / "run/checkpoints/last.ckpt"),
            "--episodes",
            "2",
            "--video",
            str(tmp_path / "videos"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    videos = sorted((tmp_path / "videos").glob("*.mp4"))
    assert len(videos) == 2 and all(v.stat().st_size > 1000 for v in videos)


@pytest.mark.slow
def test_resume_with_incompatible_config_is_bad_input(trained):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pgkit",
            "fit",
            "--config",
            "c.yaml",
            "--set",
            "env.num_envs=2",
            "--set",
            "algorithm.num_minibatches=1",
            "--resume",
            "run/checkpoints/last.ckpt",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=trained["work"],
    )
    assert proc.returncode == 2
    assert "does not fit this config" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
@pytest.mark.slow
def test_eval_rejects_missing_truncated_and_foreign_checkpoints(trained, tmp_path, content):
    path = tmp_path / "bad.ckpt"
    if content is not None:
        path.write_bytes(content)
    proc = subprocess.run(
        [sys.executable, "-m", "pgkit", "eval", "--checkpoint", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "checkpoint error:" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_eval_rejects_a_truncated_real_checkpoint(trained, tmp_path):
    data = (trained["work"] / "run/checkpoints/last.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    proc = subprocess.run(
        [sys.executable, "-m", "pgkit", "eval", "--checkpoint", str(tmp_path / "cut.ckpt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "not a readable checkpoint" in proc.stderr
