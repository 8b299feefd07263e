"""Never lose a run: a second run never writes over the first's files, a resume is checked against its config before
any MLflow run is touched, unwritable folders and foreign checkpoint files fail as bad input with one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from paths import CONFIGS

from pgkit.checkpoints import load_checkpoint
from pgkit.cli import main

CONFIG = {
    "algorithm": {"name": "ppo", "num_steps": 32, "num_minibatches": 2, "update_epochs": 1},
    "env": {"id": "CartPole-v1", "num_envs": 2},
    "trainer": {"total_timesteps": 64},
    "eval": {"every_n_iterations": 1, "episodes": 2},
}


def write(name: str, data: dict) -> str:
    # An absolute store: MLflow caches stores by URI, so a relative sqlite URI would point every test at the first
    # test's file.
    data = {**data, "logger": {"tracking_uri": f"sqlite:///{Path.cwd() / 'm.db'}"}}
    Path(name).write_text(yaml.safe_dump(data))
    return name


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def runs_in_mlflow() -> list:
    client = MlflowClient(f"sqlite:///{Path.cwd() / 'm.db'}")
    experiment = client.get_experiment_by_name("pgkit")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def test_a_second_run_of_the_same_config_takes_a_versioned_folder(capsys):
    config = write("c.yaml", CONFIG)
    assert run(capsys, "fit", "--config", config)[0] == 0
    first = Path("runs/ppo-CartPole-v1-s1/checkpoints")
    before = {p.name: p.read_bytes() for p in first.glob("*.ckpt")}
    assert set(before) == {"last.ckpt", "best.ckpt"}
    code, out, _ = run(capsys, "fit", "--config", config)
    assert code == 0 and "runs/ppo-CartPole-v1-s1-v2/checkpoints/last.ckpt" in out
    assert {p.name: p.read_bytes() for p in first.glob("*.ckpt")} == before  # untouched
    assert run(capsys, "fit", "--config", config)[0] == 0
    assert Path("runs/ppo-CartPole-v1-s1-v3/checkpoints/last.ckpt").exists()
    names = sorted(r.info.run_name for r in runs_in_mlflow())  # each MLflow run is named after its folder
    assert names == ["ppo-CartPole-v1-s1", "ppo-CartPole-v1-s1-v2", "ppo-CartPole-v1-s1-v3"]


def test_an_explicit_folder_with_an_earlier_run_is_refused_with_the_resume_command(capsys):
    config = write("c.yaml", {**CONFIG, "trainer": {**CONFIG["trainer"], "output_dir": "mine"}})
    assert run(capsys, "fit", "--config", config)[0] == 0
    last = Path("mine/checkpoints/last.ckpt").read_bytes()
    count = len(runs_in_mlflow())
    code, _, err = run(capsys, "fit", "--config", config)
    assert code == 2
    assert err.strip() == (
        "config error: trainer.output_dir: 'mine' holds the checkpoints of an earlier run; continue it with "
        "--resume mine/checkpoints/last.ckpt, or choose another trainer.output_dir (got 'mine')"
    )
    assert Path("mine/checkpoints/last.ckpt").read_bytes() == last and len(runs_in_mlflow()) == count


@pytest.mark.slow
def test_a_resumed_run_continues_in_its_own_versioned_folder(capsys):
    config = write("c.yaml", CONFIG)
    assert run(capsys, "fit", "--config", config)[0] == 0
    assert run(capsys, "fit", "--config", config)[0] == 0
    first = Path("runs/ppo-CartPole-v1-s1/checkpoints/last.ckpt").read_bytes()
    more = write("more.yaml", {**CONFIG, "trainer": {"total_timesteps": 128}})
    resume = "runs/ppo-CartPole-v1-s1-v2/checkpoints/last.ckpt"
    code, out, err = run(capsys, "fit", "--config", more, "--resume", resume)
    assert code == 0, err
    assert "runs/ppo-CartPole-v1-s1-v2/checkpoints/last.ckpt" in out
    assert Path("runs/ppo-CartPole-v1-s1/checkpoints/last.ckpt").read_bytes() == first


def test_presets_sharing_an_algorithm_and_env_have_their_own_folders(capsys):
    root = CONFIGS
    folders = {}
    for preset in ["ppo", "ppo-fast", "grpo", "grpo-stable", "grpo-exploration", "gspo"]:
        code, out, _ = run(capsys, "validate", "--config", str(root / f"{preset}.yaml"))
        assert code == 0
        folders[preset] = out.rsplit("output in ", 1)[1].strip()
    assert len(set(folders.values())) == len(folders), folders


@pytest.mark.slow
def test_a_mismatched_resume_exits_2_before_touching_any_mlflow_run(capsys):
    a2c = write("a2c.yaml", {**CONFIG, "algorithm": {"name": "a2c", "num_steps": 32}})
    assert run(capsys, "fit", "--config", a2c)[0] == 0
    (before,) = runs_in_mlflow()
    assert before.info.status == "FINISHED"
    ppo = write("ppo.yaml", CONFIG)
    code, _, err = run(capsys, "fit", "--config", ppo, "--resume", "runs/a2c-CartPole-v1-s1/checkpoints/last.ckpt")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("checkpoint error: runs/a2c-CartPole-v1-s1/checkpoints/last.ckpt: was trained with "
                          "algorithm.name 'a2c', but this config has 'ppo'"), err
    (after,) = runs_in_mlflow()
    assert after.info.status == "FINISHED" and after.info.run_id == before.info.run_id
    other_env = write("pendulum.yaml", {**CONFIG, "algorithm": {"name": "a2c"}, "env": {"id": "Acrobot-v1"}})
    resume = "runs/a2c-CartPole-v1-s1/checkpoints/last.ckpt"
    code, _, err = run(capsys, "fit", "--config", other_env, "--resume", resume)
    assert code == 2 and "was trained with env.id 'CartPole-v1', but this config has 'Acrobot-v1'" in err


def test_an_unwritable_output_folder_fails_before_training(capsys):
    Path("afile").write_text("not a folder")
    config = write("c.yaml", {**CONFIG, "trainer": {**CONFIG["trainer"], "output_dir": "afile/run"}})
    code, _, err = run(capsys, "fit", "--config", config)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("config error: trainer.output_dir: cannot write checkpoints into 'afile/run'"), err
    assert runs_in_mlflow() == []


@pytest.mark.parametrize("command", ["eval", "fit"])
def test_a_text_file_as_checkpoint_exits_2_with_one_line(capsys, command):
    Path("notes.ckpt").write_text("hello, this is not a checkpoint\n")
    argv = ["eval", "--checkpoint", "notes.ckpt"] if command == "eval" else ["fit", "--resume", "notes.ckpt"]
    code, _, err = run(capsys, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("checkpoint error: notes.ckpt: not a readable checkpoint"), err


@pytest.mark.slow
def test_an_env_that_cannot_be_pickled_does_not_stop_the_run(capsys):
    env = {"id": "envs_for_tests:UnpicklableEnv", "num_envs": 2, "normalize_obs": False}
    config = write("c.yaml", {**CONFIG, "env": env, "trainer": {"total_timesteps": 128, "output_dir": "run"},
                              "checkpoint": {"every_n_iterations": 1}})
    code, _, err = run(capsys, "fit", "--config", config)
    assert code == 0, err
    assert err.count("cannot be saved") == 1, err  # said once, not at every checkpoint
    assert load_checkpoint("run/checkpoints/last.ckpt").env_states == {}
    more = write("more.yaml", {**CONFIG, "env": env, "trainer": {"total_timesteps": 192, "output_dir": "run"}})
    code, _, err = run(capsys, "fit", "--config", more, "--resume", "run/checkpoints/last.ckpt")
    assert code == 0, err
    assert "resuming with freshly reset envs" in err


@pytest.mark.slow
def test_ctrl_c_during_eval_prints_the_finished_episodes_and_exits_130(tmp_path, capsys):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    marker = tmp_path / "stepping"
    env = {"id": "envs_for_tests:MarkerEnv", "kwargs": {"marker": str(marker)}, "num_envs": 2}
    config = write("c.yaml", {**CONFIG, "env": env, "trainer": {"total_timesteps": 64, "output_dir": "run"},
                              "eval": {"every_n_iterations": 0}})
    assert run(capsys, "fit", "--config", config)[0] == 0
    marker.unlink()
    proc = subprocess.Popen([sys.executable, "-m", "pgkit", "eval", "--checkpoint", "run/checkpoints/last.ckpt",
                             "--episodes", "100000000", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "TQDM_DISABLE": "1"},
                            # As in a terminal: SIGINT at its default, even if something in this test process
                            # ignores it (an ignored disposition would be inherited through exec).
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # let some episodes finish
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.startswith("pgkit: interrupted after "), err
    result = json.loads(out)
    assert result["requested"] == 100000000 and result["episodes"] == len(result["returns"]) > 0
    assert set(result["lengths"]) == {5} and result["mean_return"] == 5.0


@pytest.mark.slow
def test_mujoco_video_on_a_headless_machine_picks_egl(capsys):
    import os
    import subprocess
    import sys

    config = write("c.yaml", {**CONFIG, "env": {"id": "InvertedPendulum-v5", "num_envs": 2},
                              "trainer": {"total_timesteps": 64, "output_dir": "run"},
                              "eval": {"every_n_iterations": 0}})
    assert run(capsys, "fit", "--config", config)[0] == 0
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MUJOCO_GL",
                                                            "PYOPENGL_PLATFORM")}
    proc = subprocess.run([sys.executable, "-m", "pgkit", "eval", "--checkpoint", "run/checkpoints/last.ckpt",
                           "--episodes", "1", "--video", "videos"], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    videos = list(Path("videos").glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000


def test_a_checkpoint_from_elsewhere_resumes_into_a_fresh_folder(capsys):
    import shutil

    config = write("c.yaml", CONFIG)
    assert run(capsys, "fit", "--config", config)[0] == 0
    shutil.copy("runs/ppo-CartPole-v1-s1/checkpoints/last.ckpt", "copy.ckpt")
    first = Path("runs/ppo-CartPole-v1-s1/checkpoints/last.ckpt").read_bytes()
    more = write("more.yaml", {**CONFIG, "trainer": {"total_timesteps": 128}})
    code, out, err = run(capsys, "fit", "--config", more, "--resume", "copy.ckpt")
    assert code == 0, err
    assert "runs/ppo-CartPole-v1-s1-v2/checkpoints/last.ckpt" in out
    assert Path("runs/ppo-CartPole-v1-s1/checkpoints/last.ckpt").read_bytes() == first


@pytest.mark.parametrize(
    ("env", "devices", "rank"),
    [
        ({"SLURM_PROCID": "3"}, 1, 0),  # srun -n 4 of independent single-process runs: each its own rank 0
        ({"OMPI_COMM_WORLD_RANK": "2"}, 1, 0),
        ({"RANK": "1"}, 2, 1),  # torchrun
        ({"LOCAL_RANK": "1", "NODE_RANK": "1"}, 2, 3),  # Lightning's own launcher, second node
        ({"SLURM_PROCID": "2"}, 4, 2),
        ({}, 2, 0),
    ],
)
def test_process_rank_reads_the_launcher(monkeypatch, env, devices, rank):
    from pgkit.training import process_rank

    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert process_rank(devices) == rank


def test_ctrl_c_in_a_training_evaluation_stays_a_keyboard_interrupt():
    # Training's second Ctrl-C must reach the CLI as an interruption; only `pgkit eval` asks for partial results.
    from pgkit.evaluation import EvalInterrupted, evaluate

    class Interrupting:
        def act(self, obs, deterministic, state=None, episode_start=None):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(Interrupting(), "CartPole-v1", 2, True, 0)
    with pytest.raises(EvalInterrupted):
        evaluate(Interrupting(), "CartPole-v1", 2, True, 0, partial_on_interrupt=True)
