"""MLflow tracking: stores that cannot work are bad input, reported before any training; a real server records a
run; and a server that goes away in the middle of a run does not stop it: training goes on without stalling or
tracebacks, checkpoints go on, and every metric reaches the server once it is back (during the run, or later with
`pgkit sync`)."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from paths import ROOT

import pgkit.tracking
from pgkit.checkpoints import load_checkpoint
from pgkit.cli import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[int]:
    """A real `mlflow server` on a free port (sqlite backend, local artifacts), shared by this module's tests; its
    port."""
    folder = tmp_path_factory.mktemp("server")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--artifacts-destination", str(folder / "a")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=folder)
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        assert proc.poll() is None and time.time() < deadline, "mlflow server did not start"
        time.sleep(0.3)
    yield port
    proc.terminate()
    proc.wait(timeout=30)


def _fit(tmp_path, uri: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pgkit", "fit", "--config", str(ROOT / "configs" / "ppo-cartpole.yaml"),
           "--set", f"logger.tracking_uri={uri}", "--set", f"trainer.output_dir={tmp_path / 'run'}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)


@pytest.mark.slow
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


@pytest.mark.slow
def test_sqlite_store_in_a_missing_directory_exits_2(tmp_path):
    proc = _fit(tmp_path, f"sqlite:///{tmp_path / 'nope' / 'mlflow.db'}")
    assert proc.returncode == 2
    assert "logger.tracking_uri: directory" in proc.stderr and "does not exist" in proc.stderr


@pytest.mark.slow
def test_training_against_a_real_mlflow_server(tmp_path, mlflow_server):
    """`mlflow server` on a free port with a temp sqlite backend and artifact root; a tiny run logs to it and is read
    back with MlflowClient: params, metrics, the config YAML and the checkpoint."""
    uri = f"http://127.0.0.1:{mlflow_server}"
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
    assert yaml.safe_load(Path(local).read_text())["trainer"]["total_timesteps"] == 1024


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


@pytest.mark.slow
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


# ----------------------------------------------------------------------------------------------- server outages
# The outage is a TCP proxy in front of the module's server that stops accepting and drops its connections (to the
# client, exactly a server that went away), which spares restarting the server (10 s).
class Proxy:
    """Forwards 127.0.0.1:port to a backend port while up; while down, refuses connections and drops open ones."""

    def __init__(self, backend: int) -> None:
        self.backend, self.port = backend, free_port()
        self.listener: socket.socket | None = None
        self.connections: list[socket.socket] = []
        self.lock = threading.Lock()
        self.up()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self.lock:
            listener, self.listener = self.listener, None
            for conn in self.connections:
                conn.close()
            self.connections.clear()
        listener.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.backend))
            with self.lock:
                if self.listener is not listener:
                    client.close()
                    server.close()
                    return
                self.connections += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        return
                    (b if src is a else a).sendall(data)
        except (OSError, ValueError):
            return
        finally:
            a.close()
            b.close()


def _config(uri: str, iterations: int) -> dict:
    return {"algorithm": {"name": "ppo", "num_steps": 32, "num_minibatches": 2, "update_epochs": 1},
            "env": {"id": "CartPole-v1", "num_envs": 2},
            "trainer": {"total_timesteps": 64 * iterations, "output_dir": "run"},
            "eval": {"every_n_iterations": 4, "episodes": 2},
            "logger": {"tracking_uri": uri, "experiment_name": f"outage-{time.time_ns()}"}}


def _after_first_checkpoint(action) -> threading.Thread:
    def watch() -> None:
        while not Path("run/checkpoints/last.ckpt").exists():
            time.sleep(0.01)
        action()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _logged_steps(client: MlflowClient, run_id: str, key: str = "train/policy_loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_metrics_reach_the_server_once_it_is_back(mlflow_server, capsys, monkeypatch):
    # Before: training stalled 8 minutes with no message, then exited 1 with 240 lines of tracebacks.
    monkeypatch.setattr(pgkit.tracking, "RETRY_SECONDS", 0.3)
    proxy = Proxy(mlflow_server)
    uri = f"http://127.0.0.1:{proxy.port}"

    def outage() -> None:  # from the first checkpoint to the tenth iteration's (the run has 40)
        proxy.down()
        while load_checkpoint("run/checkpoints/last.ckpt").env_steps < 64 * 10:
            time.sleep(0.01)
        proxy.up()

    watcher = _after_first_checkpoint(outage)
    Path("c.yaml").write_text(yaml.safe_dump(_config(uri, 40)))
    start = time.monotonic()
    code = main(["fit", "--config", "c.yaml"])
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    watcher.join()
    assert code == 0, err[-3000:]
    assert "Traceback" not in err
    assert err.count("does not answer") == 1 and "answers again; the queued writes were sent" in err, err[-3000:]
    assert elapsed < 120
    assert not Path("run/mlflow-pending").exists()  # everything was sent
    client = MlflowClient(f"http://127.0.0.1:{mlflow_server}")
    run_id = load_checkpoint("run/checkpoints/last.ckpt").mlflow_run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert _logged_steps(client, run_id) == [64 * i for i in range(1, 41)]  # no iteration lost
    assert len(client.get_metric_history(run_id, "eval/mean_return")) == 10


@pytest.mark.slow
def test_a_server_that_never_comes_back_keeps_everything_for_pgkit_sync(mlflow_server, capsys, monkeypatch):
    monkeypatch.setattr(pgkit.tracking, "RETRY_SECONDS", 0.3)
    proxy = Proxy(mlflow_server)
    uri = f"http://127.0.0.1:{proxy.port}"
    watcher = _after_first_checkpoint(proxy.down)
    Path("c.yaml").write_text(yaml.safe_dump(_config(uri, 12)))
    code = main(["fit", "--config", "c.yaml"])
    out, err = capsys.readouterr()
    watcher.join()
    assert code == 0, err[-3000:]  # the run finishes as a complete one, checkpoints and all
    assert "Traceback" not in err
    assert load_checkpoint("run/checkpoints/last.ckpt").env_steps == 64 * 12
    (said,) = [line for line in err.splitlines() if "did not come back" in line]  # said once
    assert "train/policy_loss" in said and "send them with `pgkit sync run`" in said
    queued = Path("run/mlflow-pending/ops.jsonl").read_text()
    # A queue someone else wrote (here: another call than pgkit queues, under a signature that is not ours) is not
    # sent: a queue file from elsewhere could otherwise call any client method or upload any file.
    header, _, body = queued.partition("\n")
    Path("run/mlflow-pending/ops.jsonl").write_text(
        header + "\n" + json.dumps({"op": "delete_run", "uri": uri, "run_id": "x"}) + "\n" + body)
    proxy.up()
    code = main(["sync", "run"])
    assert code == 2 and "was not written by you" in capsys.readouterr().err
    Path("run/mlflow-pending/ops.jsonl").write_text(queued)
    code = main(["sync", "run"])
    out, err = capsys.readouterr()
    assert code == 0 and "pgkit sync: sent " in out, err
    assert not Path("run/mlflow-pending").exists()
    client = MlflowClient(f"http://127.0.0.1:{mlflow_server}")
    run_id = load_checkpoint("run/checkpoints/last.ckpt").mlflow_run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    assert _logged_steps(client, run_id) == [64 * i for i in range(1, 13)]
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "policy"} <= names  # the queued artifacts too (the policy model, the config)
