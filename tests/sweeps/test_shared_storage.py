"""Machines that share one PostgreSQL server (a real one, started here): two `pgkit sweep` processes finish one
study's trials together, none twice and none lost; two `pgkit bench --storage` processes claim each run of a suite
once, and a third writes the report from the stored results."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from paths import CONFIGS
from postgres_server import bindir, postgres_server

from pgkit.sweeps import study as studies

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bindir() is None, reason="PostgreSQL's server binaries are not installed")]

CONFIG = {
    "algorithm": {"name": "ppo", "num_steps": 64, "num_minibatches": 2, "update_epochs": 2},
    "env": {"id": "CartPole-v1", "num_envs": 4},
    "trainer": {"total_timesteps": 2048, "name": "cp"},
    "eval": {"every_n_iterations": 2, "episodes": 2},
    "sweep": {"trials": 5, "params": {"algorithm.learning_rate": {"low": 1.0e-4, "high": 3.0e-3, "log": True}}},
}


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as url:
        yield url


def _pgkit(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-m", "pgkit", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_two_machines_finish_one_study_together(tmp_path, postgres):
    machines = [tmp_path / "a", tmp_path / "b"]  # each with its own folder and MLflow store, as machines have
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "sweep": {**CONFIG["sweep"], "storage": postgres}}))
    for m in machines:
        m.mkdir()
    procs = [_pgkit(["sweep", "--config", str(config)], m) for m in machines]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs

    study = optuna.load_study(study_name="cp", storage=postgres)
    done = studies.counted(study.trials)
    assert [t.state for t in done] == [TrialState.COMPLETE] * 5
    numbers = sorted(studies.identity(t) for t in done)
    assert numbers == sorted(set(numbers))  # none run twice
    # Every trial ran on exactly one machine, in a folder named by its number.
    folders = sorted(int(p.name.removeprefix("trial-")) for m in machines for p in (m / "runs" / "cp-sweep").glob(
        "trial-*"))
    assert folders == numbers
    assert len({t.params["algorithm.learning_rate"] for t in done}) == 5  # and sampled different values
    for m in machines:
        assert (m / "runs" / "cp-sweep" / "best.yaml").exists()


def test_two_machines_share_a_suite_and_a_third_reports_it(tmp_path, postgres):
    suite = tmp_path / "suite.yaml"
    config = CONFIGS / "ppo-cartpole.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "tiny", "total_timesteps": 1024, "seeds": 3, "eval_episodes": 2, "envs": ["CartPole-v1"],
        "algorithms": {"ppo": {"config": str(config), "overrides": {"eval.every_n_iterations": 0}}},
    }))
    machines = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    for m in machines:
        m.mkdir()
    procs = [_pgkit(["bench", "--suite", str(suite), "--storage", postgres, "--workers", "1"], m)
             for m in machines[:2]]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs

    study = optuna.load_study(study_name="bench-tiny", storage=postgres)
    runs = [t for t in study.trials if "pgkit.cell" in t.user_attrs]
    cells = [t.user_attrs["pgkit.cell"] for t in runs]
    assert sorted(cells) == ["ppo-CartPole-v1-s1", "ppo-CartPole-v1-s2", "ppo-CartPole-v1-s3"]  # each claimed once
    assert all(t.state == TrialState.COMPLETE for t in runs)
    # Two machines asking at the same instant for the last queued run: the one that finds none gets an empty trial,
    # marked surplus and failed before anything runs.
    assert all(t.user_attrs.get(studies.SURPLUS) and t.state == TrialState.FAIL for t in study.trials
               if t not in runs)
    ran = sorted(p.parent.name for m in machines[:2] for p in (m / "bench" / "tiny" / "runs").glob("*/result.json"))
    assert ran == sorted(cells)  # each run trained on exactly one machine

    report = _pgkit(["bench", "--suite", str(suite), "--storage", postgres, "--report"], machines[2])
    out = report.communicate(timeout=120)[0]
    assert report.returncode == 0, out
    with open(machines[2] / "bench" / "tiny" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["seed"]) for r in rows) == [1, 2, 3]
    stored = {t.user_attrs["pgkit.record"]["seed"]: t.user_attrs["pgkit.record"]["eval_return"] for t in study.trials}
    assert {int(r["seed"]): float(r["eval_return"]) for r in rows} == pytest.approx(stored)
