"""MLflow tracking stores that cannot work are bad input, reported before any training."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fit(tmp_path, uri: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pgkit", "fit", "--config", str(ROOT / "configs" / "ppo-cartpole.yaml"),
           "--set", f"logger.tracking_uri={uri}", "--set", f"trainer.output_dir={tmp_path / 'run'}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_unreachable_server_exits_2_in_seconds_before_training(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.perf_counter()
    proc = _fit(tmp_path, uri)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert err.startswith(f"config error: logger.tracking_uri: no MLflow tracking server answers at {uri}")
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert elapsed < 30  # interpreter start and imports included; MLflow's own retries would take minutes
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


def test_sqlite_store_in_a_missing_directory_exits_2(tmp_path):
    proc = _fit(tmp_path, f"sqlite:///{tmp_path / 'nope' / 'mlflow.db'}")
    assert proc.returncode == 2
    assert "logger.tracking_uri: directory" in proc.stderr and "does not exist" in proc.stderr


def test_training_against_a_real_mlflow_server(tmp_path):
    """`mlflow server` on a free port with a temp sqlite backend and artifact root; a tiny run logs to it and is read
    back with MlflowClient: params, metrics, the config YAML and the checkpoint."""
    from mlflow import MlflowClient

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
    )
    try:
        import urllib.request

        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, "mlflow server exited"
            assert time.time() < deadline, "mlflow server did not start in 90 s"
            time.sleep(0.5)
        cmd = [sys.executable, "-m", "pgkit", "fit", "--config", str(ROOT / "configs" / "ppo-cartpole.yaml"),
               "--set", f"logger.tracking_uri={uri}", "--set", "logger.experiment_name=served",
               "--set", "trainer.total_timesteps=1024", "--set", "eval.every_n_iterations=2",
               "--set", f"trainer.output_dir={tmp_path / 'run'}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]

        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("served")
        (run,) = client.search_runs([experiment.experiment_id])
        assert run.info.status == "FINISHED"
        assert run.data.params["algorithm.name"] == "ppo" and run.data.params["env.id"] == "CartPole-v1"
        assert run.data.tags["pgkit.algorithm"] == "ppo"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/policy_loss")]
        assert steps == [256 * i for i in range(1, 5)]  # 4 iterations of 32 steps x 8 envs, keyed by env steps
        assert len(client.get_metric_history(run.info.run_id, "eval/mean_return")) == 2
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        # One copy of the checkpoint: inside the policy model (before, a second one under checkpoints/).
        assert {"config.yaml", "policy"} <= names and "checkpoints" not in names
        assert [a.path for a in client.list_artifacts(run.info.run_id, "policy/artifacts")] == [
            "policy/artifacts/last.ckpt"]
        local = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
        import yaml

        assert yaml.safe_load(Path(local).read_text())["trainer"]["total_timesteps"] == 1024
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_policy_is_an_mlflow_pyfunc_model_and_can_be_registered(tmp_path):
    import mlflow
    import numpy as np

    import pgkit

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    result = pgkit.fit({"algorithm": {"name": "ppo", "num_steps": 64, "num_minibatches": 2},
                        "env": {"id": "Pendulum-v1", "num_envs": 2},
                        "trainer": {"total_timesteps": 128, "output_dir": str(tmp_path / "run")},
                        "logger": {"tracking_uri": uri, "register_model": "pendulum-policy"},
                        "eval": {"every_n_iterations": 0}})
    # Through the run's store explicitly: an earlier in-process CLI run may have set MLflow's global tracking URI.
    local = mlflow.artifacts.download_artifacts(run_id=result.mlflow_run_id, artifact_path="policy",
                                                tracking_uri=uri, dst_path=str(tmp_path / "dl"))
    model = mlflow.pyfunc.load_model(local)
    obs = np.random.default_rng(0).uniform(-1, 1, (5, 3)).astype(np.float32)
    actions = model.predict(obs)
    expected, _ = pgkit.load(result.last_checkpoint).predict(obs, deterministic=True)
    np.testing.assert_allclose(actions, expected, rtol=1e-6)
    assert actions.shape == (5, 1) and np.all(np.abs(actions) <= 2.0)  # Pendulum's bounds are inside the model
    versions = mlflow.MlflowClient(uri).search_model_versions("name='pendulum-policy'")
    assert [v.run_id for v in versions] == [result.mlflow_run_id]


def test_register_model_without_log_model_exits_2(tmp_path, capsys):
    from pgkit.cli import main

    (tmp_path / "c.yaml").write_text("algorithm: {name: ppo}\nenv: {id: CartPole-v1}\n"
                                     "logger: {log_model: false, register_model: x}\n")
    assert main(["validate", "--config", str(tmp_path / "c.yaml")]) == 2
    assert capsys.readouterr().err.startswith("config error: logger.register_model: needs logger.log_model: true")


def test_a_policy_pyfunc_cannot_serve_is_skipped_and_the_run_still_succeeds(tmp_path, capsys):
    from mlflow import MlflowClient

    from pgkit.cli import main

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    (tmp_path / "c.yaml").write_text(
        "algorithm: {name: ppo, num_steps: 32, num_minibatches: 2}\nenv: {id: CartPole-v1, num_envs: 2}\n"
        "policy: {recurrent: {kind: gru, hidden_size: 8}}\n"
        f"trainer: {{total_timesteps: 64, output_dir: '{tmp_path / 'run'}'}}\nlogger: {{tracking_uri: '{uri}'}}\n"
        "eval: {every_n_iterations: 0}\n")
    assert main(["fit", "--config", str(tmp_path / "c.yaml")]) == 0
    err = capsys.readouterr().err
    assert "the policy was not logged as an MLflow model: ValueError: a recurrent policy needs its state" in err
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("pgkit").experiment_id])
    assert run.info.status == "FINISHED"
    names = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "policy" not in names and "checkpoints" in names  # the checkpoint alone, once


def test_log_model_false_logs_no_checkpoint(tmp_path):
    # Before: MLflow got the checkpoint even with logger.log_model: false (and a second copy inside the model).
    from mlflow import MlflowClient

    import pgkit

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    result = pgkit.fit({"algorithm": {"name": "ppo", "num_steps": 32, "num_minibatches": 2},
                        "env": {"id": "CartPole-v1", "num_envs": 2},
                        "trainer": {"total_timesteps": 64, "output_dir": str(tmp_path / "run")},
                        "logger": {"tracking_uri": uri, "log_model": False}, "eval": {"every_n_iterations": 0}})
    names = [a.path for a in MlflowClient(uri).list_artifacts(result.mlflow_run_id)]
    assert "config.yaml" in names and "checkpoints" not in names and "policy" not in names


def test_system_metrics_are_logged_when_asked(tmp_path):
    from mlflow import MlflowClient

    import pgkit

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    result = pgkit.fit({"algorithm": {"name": "ppo", "num_steps": 256, "num_minibatches": 2},
                        "env": {"id": "CartPole-v1", "num_envs": 2},
                        "trainer": {"total_timesteps": 8192, "output_dir": str(tmp_path / "run")},
                        "logger": {"tracking_uri": uri, "system_metrics": True, "system_metrics_interval": 1,
                                   "log_model": False},
                        "eval": {"every_n_iterations": 0}})
    client = MlflowClient(uri)
    history = client.get_metric_history(result.mlflow_run_id, "system/cpu_utilization_percentage")
    assert history and all(0 <= m.value <= 100 * 64 for m in history)
    assert "system/system_memory_usage_megabytes" in client.get_run(result.mlflow_run_id).data.metrics
