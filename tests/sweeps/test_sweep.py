"""`pgkit sweep`: the search space checked before any trial, trials as nested pgkit runs, failed and pruned trials
that never stop the sweep, Ctrl-C and a killed worker resumed from the trials' checkpoints, and the budget exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from pgkit.cli import main
from pgkit.config_loading import load_config
from pgkit.sweeps import study as studies

CONFIG = {
    "algorithm": {"name": "ppo", "num_steps": 64, "num_minibatches": 2, "update_epochs": 2},
    "env": {"id": "CartPole-v1", "num_envs": 4},
    "trainer": {"total_timesteps": 2048, "name": "cp"},
    "eval": {"every_n_iterations": 2, "episodes": 2},
    "sweep": {
        "trials": 3,
        "storage": "sqlite:///optuna.db",
        "params": {
            "algorithm.learning_rate": {"low": 1.0e-4, "high": 3.0e-3, "log": True},
            "policy.actor_hidden": {"choices": [[16], [32, 32]]},
        },
    },
}


def write(path: Path, **changes) -> Path:
    data = json.loads(json.dumps(CONFIG))
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path.write_text(yaml.safe_dump(data))
    return path


def load_study(name: str = "cp", url: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url or f"sqlite:///{Path('optuna.db').resolve()}")


def counted(study: optuna.Study) -> list:
    return studies.counted(study.get_trials(deepcopy=False))


def runs(db: str = "mlflow.db") -> list:
    client = MlflowClient(f"sqlite:///{Path(db).resolve()}")
    experiment = client.get_experiment_by_name("pgkit")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


@pytest.mark.parametrize(("changes", "extra", "expected"), [
    ({"sweep__params": {"algorithm.learnin_rate": {"low": 0.1, "high": 0.2}}}, [],
     "sweep.params.algorithm.learnin_rate: algorithm.learnin_rate is not a field of the config"),
    ({"sweep__params": {"env.id.x": {"choices": [1]}}}, [], "sweep.params.env.id.x: env.id is a value"),
    ({"sweep__params": {"algorithm.num_minibatches": {"choices": [2, 3]}}}, [],
     "sweep.params.algorithm.num_minibatches: the value 3 does not make a valid config: algorithm.num_minibatches"),
    ({"sweep__params": {"algorithm.clip_range": {"low": -0.1, "high": 0.3}}}, [],
     "sweep.params.algorithm.clip_range: the value -0.1 does not make a valid config"),
    ({"sweep__metric": "eval/mean_return", "eval__every_n_iterations": 0}, [],
     "sweep.metric: eval/mean_return is logged by evaluations, and eval.every_n_iterations is 0"),
    ({"sweep__sampler": "grid"}, [], "the grid sampler needs a step (or choices) for every range"),
    ({"sweep__params": {"trainer.seed": {"low": 5, "high": 1}}}, [], "sweep.params.'trainer.seed': low must be below"),
    ({}, ["--trials", "0"], "--trials: must be at least 1"),
    ({"sweep__params": {"sweep.trials": {"choices": [1]}}}, [], "the sweep cannot search its own settings"),
])
def test_bad_search_spaces_exit_2_with_one_line_before_any_trial(tmp_path, capsys, changes, extra, expected):
    config = write(tmp_path / "c.yaml", **changes)
    assert main(["sweep", "--config", str(config), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_validate_checks_the_search_space(tmp_path, capsys):
    config = write(tmp_path / "c.yaml", sweep__params={"algorithm.learnin_rate": {"low": 0.1, "high": 0.2}})
    assert main(["validate", "--config", str(config)]) == 2
    assert "sweep.params.algorithm.learnin_rate: algorithm.learnin_rate is not a field" in capsys.readouterr().err
    assert main(["validate", "--config", str(write(tmp_path / "d.yaml"))]) == 0


def test_no_sweep_section_is_a_config_error(tmp_path, capsys):
    data = dict(CONFIG)
    data.pop("sweep")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    assert main(["sweep", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "sweep: missing" in capsys.readouterr().err


@pytest.mark.slow
def test_trials_are_nested_runs_and_the_best_config_trains(tmp_path, capsys):
    config = write(tmp_path / "c.yaml")
    assert main(["sweep", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    study = load_study()
    trials = counted(study)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert len(study.trials) == 3

    # Each trial is a pgkit run in its own folder, an MLflow run nested under the sweep's, with its values.
    sweep_dir = tmp_path / "runs" / "cp-sweep"
    assert sorted(p.name for p in sweep_dir.glob("trial-*")) == ["trial-0000", "trial-0001", "trial-0002"]
    all_runs = runs()
    parent = next(r for r in all_runs if r.info.run_name == "sweep-cp")
    children = {int(r.data.tags["pgkit.sweep.trial"]): r for r in all_runs if r is not parent}
    assert sorted(children) == [0, 1, 2]
    for t in trials:
        child = children[t.number]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert float(child.data.params["algorithm.learning_rate"]) == pytest.approx(t.params["algorithm.learning_rate"])
        # The trial's value is the metric the run logged last.
        assert child.data.metrics["eval/mean_return"] == pytest.approx(t.value)
        assert f"| {t.number} | {t.params['algorithm.learning_rate']:.4g} |" in out

    best = max(trials, key=lambda t: t.value)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["sweep/best_value"] == pytest.approx(best.value)
    client = MlflowClient(f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}")
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")} >= {
        "sweep/summary.md", "sweep/trials.json", "sweep/best.yaml", "sweep/optimization_history.png"}

    # best.yaml is the best trial's whole config, runnable as it is (in the default folder).
    cfg = load_config(sweep_dir / "best.yaml")
    assert cfg.algorithm.learning_rate == pytest.approx(best.params["algorithm.learning_rate"])
    assert list(cfg.policy.actor_hidden) == json.loads(best.params["policy.actor_hidden"])
    assert cfg.sweep is None and cfg.trainer.output_dir == "runs/cp-CartPole-v1-s1"

    # The same command again finds the study done; more trials extend it by exactly that many.
    assert main(["sweep", "--config", str(config)]) == 0
    assert len(load_study().trials) == 3
    assert main(["sweep", "--config", str(config), "--trials", "4"]) == 0
    assert [t.state for t in counted(load_study())] == [TrialState.COMPLETE] * 4


@pytest.mark.slow
def test_a_refused_trial_and_a_never_logged_metric(tmp_path, capsys):
    # A grid whose combination (num_steps 100, num_minibatches 128) is refused: that trial fails, the others run.
    config = write(tmp_path / "c.yaml", sweep__sampler="grid", sweep__trials=10, trainer__total_timesteps=1600,
                   sweep__params={"algorithm.num_steps": {"choices": [128, 100]},
                                  "algorithm.num_minibatches": {"choices": [4, 128]}})
    assert main(["sweep", "--config", str(config)]) == 0
    trials = counted(load_study())
    assert len(trials) == 4  # the grid's size, not trials: 10
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.params for t in failed] == [{"algorithm.num_steps": 100, "algorithm.num_minibatches": 128}]
    assert "algorithm.num_minibatches: must divide the batch size" in failed[0].user_attrs["pgkit.error"]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3

    # A metric no run logs stops the sweep as bad input after the first trial, naming what the run logs.
    capsys.readouterr()
    config = write(tmp_path / "d.yaml", sweep__metric="eval/mean_retrun", sweep__study="other")
    assert main(["sweep", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "sweep.metric: the run never logged 'eval/mean_retrun'; it logs:" in err and "eval/mean_return" in err
    assert len(load_study("other").trials) == 1


@pytest.mark.slow
def test_the_pruner_stops_a_run_at_an_evaluation(tmp_path):
    from pgkit.sweeps.run import prepare, work

    config = write(tmp_path / "c.yaml", sweep__trials=1, sweep__pruner="none", trainer__total_timesteps=4096)
    prepared = prepare(str(config), [], None, print, main=True)
    prepared.study.pruner = optuna.pruners.ThresholdPruner(lower=1e9)  # every reported value is too low
    work(prepared)
    trial = load_study().trials[0]
    assert trial.state == TrialState.PRUNED
    steps = sorted(trial.intermediate_values)
    assert steps == [512]  # the first evaluation (iteration 2 of 256 steps), then the run stopped
    assert load_study().trials[0].intermediate_values[512] == trial.intermediate_values[512]


def test_the_budget_counts_retries_once_and_marks_a_surplus_trial():
    study = optuna.create_study()
    first = study.ask()
    first.suggest_float("x", 0.0, 1.0)  # it chose its values, so a retry can take them
    study.tell(first, state=TrialState.FAIL)
    studies.retry(study, study.trials[0])  # stopped, queued again: the retry stands in for it
    studies.retry(study, study.trials[0])  # a second stop of the same trial queues nothing more
    second = study.ask()  # takes the queued retry
    assert second.user_attrs[studies.RETRY_OF] == 0 and studies.identity(second) == 0
    assert second.suggest_float("x", 0.0, 1.0) == study.trials[0].params["x"]
    assert not studies.is_surplus(study, second, budget=1)
    extra = study.ask()  # made in a race, past a budget of 1
    assert studies.is_surplus(study, extra, budget=1)
    assert not studies.is_surplus(study, extra, budget=2)
    assert [t.number for t in studies.counted(study.trials)] == [1, 2]


def _sweep_process(config: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-m", "pgkit", "sweep", "--config", str(config), *extra],
                            cwd=config.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _wait_for(paths: list[Path], proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.2)


@pytest.mark.slow
def test_ctrl_c_stops_every_worker_and_the_same_command_continues_the_trials(tmp_path, capsys):
    config = write(tmp_path / "c.yaml", trainer__total_timesteps=16384, sweep__trials=3)
    proc = _sweep_process(config, "--workers", "2")
    folders = [tmp_path / "runs" / "cp-sweep" / f"trial-000{i}" / "checkpoints" / "last.ckpt" for i in (0, 1)]
    _wait_for(folders, proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "stopped by SIGINT; it continues from its checkpoint" in out
    trials = load_study().trials
    assert sorted(t.state.name for t in trials) == ["FAIL", "FAIL", "WAITING", "WAITING"]

    capsys.readouterr()
    assert main(["sweep", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.count("(continuing ") == 2
    final = counted(load_study())
    assert [t.state for t in final] == [TrialState.COMPLETE] * 3
    # The stopped trials keep their numbers (folders and MLflow runs); the third is the study's next number.
    assert sorted(studies.identity(t) for t in final) == [0, 1, 4]
    assert len({r.data.tags["pgkit.sweep.trial"] for r in runs() if "pgkit.sweep.trial" in r.data.tags}) == 3


@pytest.mark.slow
def test_a_killed_worker_s_trial_runs_again_from_its_checkpoint(tmp_path, capsys):
    config = write(tmp_path / "c.yaml", trainer__total_timesteps=16384, sweep__trials=2, sweep__stale_after_s=10)
    proc = _sweep_process(config)
    _wait_for([tmp_path / "runs" / "cp-sweep" / "trial-0000" / "checkpoints" / "last.ckpt"], proc)
    proc.kill()
    proc.wait()
    assert load_study().trials[0].state == TrialState.RUNNING  # as a lost machine leaves it
    assert main(["sweep", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "trial 0 (retry " in out and "(continuing " in out
    final = counted(load_study())
    assert [t.state for t in final] == [TrialState.COMPLETE] * 2
    assert sorted(studies.identity(t) for t in final) in ([0, 1], [0, 2])  # a retry keeps trial 0's number


@pytest.mark.parametrize(("sampler", "pruner"), [("random", "hyperband"), ("cmaes", "median")])
@pytest.mark.slow
def test_every_sampler_and_pruner_runs_trials(tmp_path, sampler, pruner):
    config = write(tmp_path / "c.yaml", sweep__sampler=sampler, sweep__pruner=pruner, sweep__trials=2,
                   logger__enabled=False, trainer__total_timesteps=1024,
                   sweep__params={"algorithm.learning_rate": {"low": 1.0e-4, "high": 3.0e-3, "log": True},
                                  "algorithm.clip_range": {"low": 0.1, "high": 0.3}})
    assert main(["sweep", "--config", str(config)]) == 0
    trials = counted(load_study())
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, [t.user_attrs for t in trials]
    assert len({t.params["algorithm.clip_range"] for t in trials}) == 2
