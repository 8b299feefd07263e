"""Many runs at once on one machine and one MLflow store: each run claims its own folder, a fresh sqlite store takes
several runs starting together, a live run's folder is refused, and a resume never writes over a newer run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from pgkit.checkpoints import load_checkpoint
from pgkit.cli import main

pytestmark = pytest.mark.slow  # day-to-day: pytest -m "not slow"

CONFIG = {
    "algorithm": {"name": "ppo", "num_steps": 32, "num_minibatches": 2, "update_epochs": 1},
    "env": {"id": "CartPole-v1", "num_envs": 2},
    "trainer": {"total_timesteps": 256},
    "eval": {"every_n_iterations": 2, "episodes": 2},
    "logger": {"tracking_uri": "sqlite:///fresh.db"},  # relative, and it does not exist yet
}


def start(config: str, *extra: str, cwd: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-m", "pgkit", "fit", "--config", config, *extra], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def runs(db: Path) -> list:
    client = MlflowClient(f"sqlite:///{db.resolve()}")  # absolute: MLflow caches stores by URI
    experiment = client.get_experiment_by_name("pgkit")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def test_runs_started_together_take_their_own_folders_and_a_fresh_store_records_them_all(capsys, monkeypatch):
    # Before: two `pgkit fit` of one config a second apart both wrote runs/<name>-v2 (one run's checkpoints lost,
    # both exit 0), and runs opening a sqlite store that did not exist yet died with `table ... already exists`.
    Path("c.yaml").write_text(yaml.safe_dump(CONFIG))
    procs = [start("c.yaml") for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-1500:] for _, err in results]
    folders = sorted(line.split("last checkpoint ")[1].split("/checkpoints")[0] for out, _ in results
                     for line in out.splitlines() if line.startswith("done:"))
    assert folders == ["runs/ppo-CartPole-v1-s1", "runs/ppo-CartPole-v1-s1-v2"]
    recorded = runs(Path("fresh.db"))
    assert len(recorded) == 2 and {r.info.status for r in recorded} == {"FINISHED"}
    ids = {load_checkpoint(Path(f) / "checkpoints" / "last.ckpt").mlflow_run_id for f in folders}
    assert ids == {r.info.run_id for r in recorded}  # each folder holds one whole run, logged to its own MLflow run
    for folder in folders:
        assert load_checkpoint(Path(folder) / "checkpoints" / "last.ckpt").env_steps == 256

    # Resuming from best.ckpt continues in a new folder and a new MLflow run; the run's newer last.ckpt stays.
    # Before: the resumed run wrote over the run's newer last.ckpt without a word.
    folder = Path("runs/ppo-CartPole-v1-s1/checkpoints")
    last = (folder / "last.ckpt").read_bytes()
    code = main(["fit", "--config", "c.yaml", "--set", "trainer.total_timesteps=384", "--resume",
                 str(folder / "best.ckpt")])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    assert "last checkpoint runs/ppo-CartPole-v1-s1-v3/checkpoints/last.ckpt" in out
    assert (folder / "last.ckpt").read_bytes() == last
    branch = load_checkpoint("runs/ppo-CartPole-v1-s1-v3/checkpoints/last.ckpt")
    assert branch.mlflow_run_id not in ids
    client = MlflowClient(f"sqlite:///{Path('fresh.db').resolve()}")
    tags = client.get_run(branch.mlflow_run_id).data.tags
    assert tags["pgkit.resumed_from"] == str((folder / "best.ckpt").resolve())

    # A resume from another working directory finds the run's store (stored as an absolute URI) and continues the
    # same MLflow run. Before: the relative sqlite:///fresh.db named a new store there: a traceback, and "no
    # checkpoint was written".
    v2 = Path("runs/ppo-CartPole-v1-s1-v2/checkpoints/last.ckpt").resolve()
    before = load_checkpoint(v2)
    assert before.config["logger"]["tracking_uri"] == f"sqlite:///{Path('fresh.db').resolve()}"
    elsewhere = Path("elsewhere")
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code = main(["fit", "--resume", str(v2), "--set", "trainer.total_timesteps=384"])
    assert code == 0, capsys.readouterr().err[-2000:]
    monkeypatch.chdir(elsewhere.parent)
    assert load_checkpoint(v2).env_steps == 384
    steps = [m.step for m in client.get_metric_history(before.mlflow_run_id, "train/policy_loss")]
    assert steps == [64 * i for i in range(1, 7)]  # the same run, continued, in the run's own store
    assert not (elsewhere / "fresh.db").exists() and not (elsewhere / "runs").exists()


def test_a_folder_a_live_run_holds_is_refused_with_exit_2():
    slow = {**CONFIG, "env": {"id": "envs_for_tests:SlowEnv", "num_envs": 1, "kwargs": {"delay": 0.05}},
            "trainer": {"total_timesteps": 100_000, "output_dir": "mine"}, "logger": {"enabled": False}}
    Path("slow.yaml").write_text(yaml.safe_dump(slow))
    first = start("slow.yaml")
    try:
        deadline = time.time() + 120
        while not Path("mine/.pgkit-run.lock").exists():
            assert first.poll() is None and time.time() < deadline, first.communicate()[1][-2000:]
            time.sleep(0.2)
        second = subprocess.run([sys.executable, "-m", "pgkit", "fit", "--config", "slow.yaml"], capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 2, second.stderr[-2000:]
        err = second.stderr.strip()
        assert len(err.splitlines()) == 1 and "'mine' is in use by a live run (pid " in err, err
    finally:
        first.kill()
        first.communicate()
    # Once the holder is gone (even by SIGKILL), the folder is free again: resumed or, empty, reused.
    free = subprocess.run([sys.executable, "-m", "pgkit", "validate", "--config", "slow.yaml"], capture_output=True,
                          text=True, timeout=120)
    assert free.returncode == 0
