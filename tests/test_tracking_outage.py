"""The tracking server goes away in the middle of a run: training goes on without stalling or tracebacks,
checkpoints go on, and every metric reaches the server once it is back (during the run, or later with
`pgkit sync`).

One real `mlflow server` serves the module; the outage is a TCP proxy in front of it that stops accepting and drops
its connections (to the client, exactly a server that went away), which spares restarting the server (10 s)."""

from __future__ import annotations

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
from mlflow import MlflowClient

import pgkit.tracking
from pgkit.checkpoints import load_checkpoint
from pgkit.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proxy:
    """Forwards 127.0.0.1:port to a backend port while up; while down, refuses connections and drops open ones."""

    def __init__(self, backend: int) -> None:
        self.backend, self.port = backend, _free_port()
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


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[int]:
    folder = tmp_path_factory.mktemp("server")
    port = _free_port()
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


def test_metrics_reach_the_server_once_it_is_back(server, capsys, monkeypatch):
    # Before: training stalled 8 minutes with no message, then exited 1 with 240 lines of tracebacks.
    monkeypatch.setattr(pgkit.tracking, "RETRY_SECONDS", 0.3)
    proxy = Proxy(server)
    uri = f"http://127.0.0.1:{proxy.port}"

    def outage() -> None:
        proxy.down()
        time.sleep(2.0)
        proxy.up()

    watcher = _after_first_checkpoint(outage)
    import yaml

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
    client = MlflowClient(f"http://127.0.0.1:{server}")
    run_id = load_checkpoint("run/checkpoints/last.ckpt").mlflow_run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert _logged_steps(client, run_id) == [64 * i for i in range(1, 41)]  # no iteration lost
    assert len(client.get_metric_history(run_id, "eval/mean_return")) == 10


def test_a_server_that_never_comes_back_keeps_everything_for_pgkit_sync(server, capsys, monkeypatch):
    monkeypatch.setattr(pgkit.tracking, "RETRY_SECONDS", 0.3)
    proxy = Proxy(server)
    uri = f"http://127.0.0.1:{proxy.port}"
    watcher = _after_first_checkpoint(proxy.down)
    import yaml

    Path("c.yaml").write_text(yaml.safe_dump(_config(uri, 12)))
    code = main(["fit", "--config", "c.yaml"])
    out, err = capsys.readouterr()
    watcher.join()
    assert code == 0, err[-3000:]  # the run finishes as a complete one, checkpoints and all
    assert "Traceback" not in err
    assert load_checkpoint("run/checkpoints/last.ckpt").env_steps == 64 * 12
    (said,) = [line for line in err.splitlines() if "did not come back" in line]  # said once
    assert "train/policy_loss" in said and "send them with `pgkit sync run`" in said
    assert Path("run/mlflow-pending/ops.jsonl").exists()
    proxy.up()
    code = main(["sync", "run"])
    out, err = capsys.readouterr()
    assert code == 0 and "pgkit sync: sent " in out, err
    assert not Path("run/mlflow-pending").exists()
    client = MlflowClient(f"http://127.0.0.1:{server}")
    run_id = load_checkpoint("run/checkpoints/last.ckpt").mlflow_run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    assert _logged_steps(client, run_id) == [64 * i for i in range(1, 13)]
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "policy"} <= names  # the queued artifacts too (the policy model, the config)
