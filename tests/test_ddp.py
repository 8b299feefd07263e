"""Lightning DDP on CPU with gloo: two processes, each with its own envs and rollout; averaged gradients, merged
normaliser statistics, rank-0 logging and checkpoints, metrics over both ranks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from paths import ROOT

from pgkit.checkpoints import load_checkpoint
from pgkit.environments import RunningMeanStd


@pytest.mark.slow
def test_two_cpu_processes_train_one_run(tmp_path):
    db = tmp_path / "mlflow.db"
    cmd = [sys.executable, "-m", "pgkit", "fit", "--config", str(ROOT / "configs" / "ppo.yaml"),
           "--set", "env.id=Pendulum-v1", "--set", "algorithm.num_steps=256", "--set", "algorithm.num_minibatches=4",
           "--set", "algorithm.update_epochs=2", "--set", "trainer.total_timesteps=2048",
           "--set", "trainer.devices=2", "--set", "trainer.strategy=ddp", "--set", "eval.every_n_iterations=2",
           "--set", "trainer.output_dir=out", "--set", f"logger.tracking_uri=sqlite:///{db}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Both ranks end with identical parameters and normaliser statistics (checked inside the run).
    assert "ddp: 2 ranks agree on parameters and normaliser statistics" in proc.stdout
    assert proc.stdout.count("done: 2048 env steps") == 1  # rank 0 reports

    client = MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("pgkit").experiment_id])  # one run, from rank 0
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/policy_loss")]
    assert steps == [512, 1024, 1536, 2048]  # 256 steps on each of 2 ranks per iteration
    sps = client.get_metric_history(run.info.run_id, "time/sps")
    assert all(m.value > 0 for m in sps)

    ckpt = load_checkpoint(tmp_path / "out/checkpoints/last.ckpt")
    assert ckpt.env_steps == 2048
    # The saved statistics count both ranks' observations: 2 ranks x 4 iterations x 256 steps.
    assert float(ckpt.state_dict["obs_normalizer.rms.count"]) == 2048 + 1e-4


def test_merge_ranks_equals_one_process_seeing_all_data():
    torch.manual_seed(0)
    start = torch.randn(100, 3, dtype=torch.float64) * 2 + 1
    parts = [torch.randn(n, 3, dtype=torch.float64) * s + m for n, s, m in ((30, 1.0, 0.0), (50, 3.0, 5.0))]
    reference = RunningMeanStd((3,))
    reference.update(start)
    for part in parts:
        reference.update(part)

    ranks = [RunningMeanStd((3,)) for _ in parts]
    for r in ranks:
        r.update(start)
    snapshots = [r.snapshot() for r in ranks]
    for r, part in zip(ranks, parts, strict=True):
        for chunk in part.split(7):  # many small updates, as in a rollout
            r.update(chunk)
    local = []
    for r, snap in zip(ranks, snapshots, strict=True):  # what each rank contributes to the gather
        captured = {}

        def gather(t, captured=captured):
            captured["t"] = t
            raise StopIteration

        try:
            r.merge_ranks(snap, gather)
        except StopIteration:
            local.append(captured["t"])
    stacked = torch.stack(local)
    for r, snap in zip(ranks, snapshots, strict=True):
        r.merge_ranks(snap, lambda t: stacked)
        torch.testing.assert_close(r.mean, reference.mean)
        torch.testing.assert_close(r.var, reference.var)
        torch.testing.assert_close(r.count, reference.count)


def _two_nodes(tmp_path: Path, config: str, port: int) -> list[tuple[int, float, str]]:
    """Start two torchrun "nodes" of one process each on loopback; ``(exit code, seconds, stderr)`` per node."""
    import os
    import time

    env = {**os.environ, "TQDM_DISABLE": "1"}
    start = time.monotonic()
    procs = [
        subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                          "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port),
                          "-m", "pgkit", "fit", "--config", config],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]
    results = []
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        results.append((proc.returncode, time.monotonic() - start, err))
    return results


def _node_config(tmp_path: Path, env_id: str) -> str:
    config = tmp_path / "c.yaml"
    config.write_text(
        "algorithm: {name: ppo, num_steps: 64, num_minibatches: 2, update_epochs: 1}\n"
        f"env: {{id: '{env_id}', num_envs: 2}}\n"
        "trainer: {total_timesteps: 512, num_nodes: 2, devices: 1, strategy: ddp, output_dir: out}\n"
        f"logger: {{tracking_uri: 'sqlite:///{tmp_path / 'fresh.db'}'}}\n"
        "eval: {every_n_iterations: 2, episodes: 2}\n"
    )
    return str(config)


@pytest.mark.slow
def test_two_torchrun_nodes_with_a_fresh_sqlite_store(tmp_path):
    # Before: both ranks created the new store's schema at once and rank 1 died ("duplicate column name: step").
    (code0, _, err0), (code1, _, err1) = _two_nodes(tmp_path, _node_config(tmp_path, "CartPole-v1"), 29541)
    assert code0 == 0 and code1 == 0, (err0[-2000:], err1[-2000:])
    client = MlflowClient(f"sqlite:///{tmp_path / 'fresh.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("pgkit").experiment_id])  # rank 0's only
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/policy_loss")]
    assert steps == [256, 512]  # 128 steps on each of 2 nodes per iteration


@pytest.mark.slow
def test_a_failing_rank_brings_the_other_node_down_in_seconds(tmp_path):
    config = _node_config(tmp_path, "envs_for_tests:RankCrashEnv")  # rank 1's env raises at its 21st step
    results = _two_nodes(tmp_path, config, 29542)
    (code0, t0, err0), (code1, t1, err1) = results
    assert code1 == 1 and "simulated crash on rank 1" in err1
    assert code0 == 1 and "pgkit: run failed: another rank stopped" in err0, err0[-2000:]
    assert abs(t0 - t1) < 30  # not the launcher's 30-minute timeout


@pytest.mark.slow
def test_a_rank_failing_its_checks_before_the_rendezvous_stops_the_other_node(tmp_path):
    # Before: rank 1 exited 2 before init_process_group and rank 0 waited there for the 30-minute group timeout.
    config = _node_config(tmp_path, "envs_for_tests:RankMissingEnv")  # rank 1 cannot make the env
    (code0, t0, err0), (code1, t1, err1) = _two_nodes(tmp_path, config, 29543)
    assert code1 != 0 and "simulated missing library on rank 1" in err1, err1[-2000:]  # torchrun itself exits 1
    assert code0 == 1, err0[-2000:]
    assert "rank 1 stopped before training" in err0 and "simulated missing library" in err0, err0[-2000:]
    (line,) = [x for x in err0.splitlines() if x.startswith("pgkit: ")]  # one line (torchrun adds its own report)
    assert line.startswith("pgkit: run failed: rank 1 stopped before training: ") and "no checkpoint" in line
    assert "Traceback" not in err0.split(line)[0]  # the worker's own output has none
    client = MlflowClient(f"sqlite:///{tmp_path / 'fresh.db'}")
    experiment = client.get_experiment_by_name("pgkit")
    assert experiment is None or not client.search_runs([experiment.experiment_id])  # no FAILED run left behind
    assert abs(t0 - t1) < 30
    assert not (tmp_path / "out" / "checkpoints" / "last.ckpt").exists()


def _lightning_nodes(tmp_path: Path, configs: list[str], port: int) -> list[tuple[int, float, str]]:
    """Two "nodes" started by hand, as Lightning's own launcher expects (``MASTER_ADDR``, ``MASTER_PORT``,
    ``NODE_RANK``), one process each; ``(exit code, seconds, stderr)`` per node."""
    import os
    import time

    start = time.monotonic()
    procs = [
        subprocess.Popen([sys.executable, "-m", "pgkit", "fit", "--config", config], cwd=tmp_path,
                         env={**os.environ, "TQDM_DISABLE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                              "NODE_RANK": str(rank)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank, config in enumerate(configs)
    ]
    results = []
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        results.append((proc.returncode, time.monotonic() - start, err))
    return results


@pytest.mark.slow
def test_lightning_s_launcher_across_nodes_trains_and_a_node_failing_its_config_stops_the_other(tmp_path):
    # Before: the node whose config check exited 2 left the other in init_process_group for 30 minutes.
    good = _node_config(tmp_path, "CartPole-v1")
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(good).read_text().replace("num_minibatches: 2", "num_minibatches: 2, clip_range: -1"))
    (code0, t0, err0), (code1, _, err1) = _lightning_nodes(tmp_path, [good, str(bad)], 29544)
    assert code1 == 2 and err1.strip() == "config error: algorithm.clip_range: Input should be greater than 0 (got -1)"
    assert code0 == 1, err0[-2000:]
    (line,) = [x for x in err0.splitlines() if x.startswith("pgkit: ")]
    assert line.startswith("pgkit: run failed: node 1 stopped before training: config error: algorithm.clip_range")
    assert t0 < 60
    # And with both configs good, the two nodes train one run together through the store node 0 hosts.
    (code0, _, err0), (code1, _, err1) = _lightning_nodes(tmp_path, [good, good], 29545)
    assert code0 == 0 and code1 == 0, (err0[-2000:], err1[-2000:])
    client = MlflowClient(f"sqlite:///{tmp_path / 'fresh.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("pgkit").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/policy_loss")] == [256, 512]
