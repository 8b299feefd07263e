"""``pgkit bench``: the suite machinery end to end on the smoke suite, and the report arithmetic by hand."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from mlflow import MlflowClient
from paths import ROOT

from pgkit.bench import SuiteConfig, last_mean, time_to_score
from pgkit.bench_report import LAST_EPISODES, aggregate, curve_on_grid, results_markdown, write_reports
from pgkit.bench_stats import Interval, iqm_interval
from pgkit.cli import main

SMOKE = ROOT / "configs" / "suites" / "smoke.yaml"


def _record(algo: str, env: str, seed: int, final: float, **extra) -> dict:
    base = {
        "algorithm": algo,
        "env": env,
        "seed": seed,
        "final_return": final,
        "eval_return": final + 10,
        "eval_std": 1.0,
        "env_steps": 1000,
        "wall_s": 10.0,
        "sps": 100.0,
        "curve_steps": [250, 500, 1000],
        "curve_returns": [1.0, 2.0, final],
    }
    return base | extra


def _suite(**extra) -> SuiteConfig:
    data = {
        "name": "t",
        "total_timesteps": 1000,
        "algorithms": {"ppo": {"config": "../ppo.yaml"}, "trpo": {"config": "../trpo.yaml"}},
        "envs": ["A-v0", "B-v0"],
        "reference": [{"source": "PPO, someone, 3 seeds", "algorithm": "ppo", "returns": {"A-v0": 1443}}],
    }
    return SuiteConfig.model_validate(data | extra)


def test_last_mean_and_curve_follow_the_final_return_statistic():
    returns = list(range(1, 151))  # 150 episodes
    assert last_mean(returns) == pytest.approx(np.mean(range(51, 151)))  # the last 100
    assert np.isnan(last_mean([]))
    steps = [10 * (i + 1) for i in range(150)]
    curve = curve_on_grid(steps, returns, np.array([5, 10, 55, 1500]))
    assert np.isnan(curve[0])  # no episode finished yet
    assert curve[1] == 1.0
    assert curve[2] == pytest.approx(np.mean([1, 2, 3, 4, 5]))
    assert curve[3] == pytest.approx(last_mean(returns))
    assert LAST_EPISODES == 100


def test_time_to_score_is_the_first_full_window_reaching_the_threshold():
    returns = [0, 0, 10, 10, 10, 0, 30]
    seconds = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    # Windows of 2: 0, 5, 10, 10, 5, 15 (ending at episodes 1..6): 10 first reached by episodes 2 and 3, at 4 s.
    assert time_to_score(returns, seconds, 10, n=2) == 4.0
    # Windows of 3: 3.3, 6.7, 10, 6.7, 13.3: 7 first reached at episode 4 (5 s); 12 at episode 6 (7 s).
    assert time_to_score(returns, seconds, 7, n=3) == 5.0
    assert time_to_score(returns, seconds, 12, n=3) == 7.0
    assert time_to_score(returns, seconds, 16, n=3) is None
    # A high early return does not count before a full window exists.
    assert time_to_score([100, 0, 0], [1.0, 2.0, 3.0], 60, n=2) is None  # windows 50, 0; the lone 100 is not one
    assert time_to_score([1.0], [1.0], 0, n=100) is None
    with pytest.raises(ValueError, match="returns against"):
        time_to_score([1.0, 2.0], [1.0], 0, n=1)


def test_aggregate_and_markdown_report_mean_std_over_seeds_beside_references():
    records = [
        _record("ppo", "A-v0", 1, 1000.0),
        _record("ppo", "A-v0", 2, 2000.0),
        _record("ppo", "A-v0", 3, 1500.0),
        _record("ppo", "B-v0", 1, 300.0),
    ]
    cells = aggregate(records, "final_return")
    assert cells[("ppo", "A-v0")].mean == pytest.approx(1500.0)
    assert cells[("ppo", "A-v0")].std == pytest.approx(np.std([1000, 2000, 1500]))  # 408.2
    assert cells[("ppo", "A-v0")].n == 3
    md = results_markdown(_suite(), records)
    assert "1,000 env steps per run" in md
    assert "| pgkit ppo (1/3 seeds) | 1500 ± 408 | 300 ± 0 |" in md
    assert "| PPO, someone, 3 seeds | 1443 | — |" in md
    assert "trpo" not in md.split("## Deterministic")[0]  # no runs, no row
    assert "| pgkit ppo (1/3 seeds) | 1510 ± 408 | 310 ± 0 |" in md  # eval table


@pytest.mark.slow
def test_iqm_with_bootstrap_interval_from_three_seeds(tmp_path):
    # IQM of 4 seeds trims one from each end: mean(1500, 2000) = 1750, whatever the outlier at 9000.
    records = [_record("ppo", "A-v0", s, f) for s, f in enumerate([1000.0, 2000.0, 1500.0, 9000.0], 1)]
    records += [_record("trpo", "A-v0", s, 10.0 * s) for s in (1, 2)]  # 2 seeds: no IQM
    interval = iqm_interval([r["final_return"] for r in records[:4]])
    assert interval.iqm == pytest.approx(1750.0)
    assert 1000.0 <= interval.low < 1750.0 < interval.high <= 9000.0
    assert iqm_interval([5.0, 5.0, 5.0]) == Interval(5.0, 5.0, 5.0, 3)
    md = results_markdown(_suite(), records)
    section = md.split("interquartile mean")[1].split("## Deterministic")[0]
    assert f"| pgkit ppo | {interval} |" in section  # only env A has runs
    assert "| pgkit trpo | — (2 seeds) |" in section
    write_reports(_suite(), records, tmp_path)
    assert (tmp_path / "iqm-A-v0.png").stat().st_size > 10_000
    # fewer than 3 seeds everywhere: mean ± std only, no IQM section or curve
    few = records[:2]
    assert "interquartile" not in results_markdown(_suite(), few)
    (tmp_path / "few").mkdir()
    write_reports(_suite(), few, tmp_path / "few")
    assert not (tmp_path / "few" / "iqm-A-v0.png").exists()


def test_write_reports_csv_and_one_curve_per_env(tmp_path):
    records = [_record("ppo", "A-v0", s, 100.0 * s) for s in (1, 2)] + [_record("trpo", "A-v0", 1, 50.0)]
    write_reports(_suite(), records, tmp_path)
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [(r["algorithm"], r["seed"], float(r["final_return"])) for r in rows] == [
        ("ppo", "1", 100.0),
        ("ppo", "2", 200.0),
        ("trpo", "1", 50.0),
    ]
    assert (tmp_path / "curve-A-v0.png").stat().st_size > 10_000
    assert not (tmp_path / "curve-B-v0.png").exists()  # no runs on B


def test_suite_errors_exit_2_naming_the_field(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntotal_timesteps: -5\nalgorithms: {ppo: {config: ../ppo.yaml}}\nenvs: [CartPole-v1]\n")
    assert main(["bench", "--suite", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "total_timesteps" in err and "Traceback" not in err and len(err.splitlines()) == 1

    assert main(["bench", "--suite", str(SMOKE), "--algorithms", "ppo,sac", "--output", str(tmp_path)]) == 2
    assert "--algorithms: sac not in the suite" in capsys.readouterr().err

    typo = tmp_path / "typo.yaml"
    typo.write_text(
        "name: x\ntotal_timesteps: 1000\nalgorithms: {ppo: {config: "
        + json.dumps(str(ROOT / "configs" / "ppo.yaml"))
        + ", overrides: {algorithm.clip_range: -1}}}\nenvs: [CartPole-v1]\n"
    )
    assert main(["bench", "--suite", str(typo), "--output", str(tmp_path)]) == 2
    assert "algorithm.clip_range" in capsys.readouterr().err


@pytest.mark.slow
def test_smoke_suite_end_to_end_then_skips_finished_runs(tmp_path, capsys):
    out, db = tmp_path / "out", tmp_path / "mlflow.db"
    argv = ["bench", "--suite", str(SMOKE), "--output", str(out), "--tracking-uri", f"sqlite:///{db}", "--workers", "2"]
    assert main(argv) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 8  # ppo, a2c x CartPole, InvertedPendulum x seeds 1, 2
    for row in rows:
        run_dir = out / "runs" / f"{row['algorithm']}-{row['env']}-s{row['seed']}"
        record = json.loads((run_dir / "result.json").read_text())
        assert int(row["env_steps"]) == (4096 if row["algorithm"] == "ppo" else 4080)  # whole iterations
        assert float(row["final_return"]) == pytest.approx(last_mean(record["curve_returns"]))
        assert float(row["sps"]) == pytest.approx(int(row["env_steps"]) / float(row["wall_s"]))
        assert 1.0 <= float(row["eval_return"]) <= 1000.0
    md = (out / "results.md").read_text()
    assert "| pgkit ppo (2 seeds) |" in md and "| pgkit a2c (2 seeds) |" in md
    assert (out / "curve-CartPole-v1.png").exists() and (out / "curve-InvertedPendulum-v5.png").exists()

    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("bench-smoke").experiment_id])
    assert len(runs) == 8
    assert {r.info.status for r in runs} == {"FINISHED"}
    tagged = {(r.data.tags["pgkit.algorithm"], r.data.tags["pgkit.env"], r.data.tags["pgkit.seed"]) for r in runs}
    assert len(tagged) == 8 and ("ppo", "InvertedPendulum-v5", "2") in tagged
    assert {r.data.tags["pgkit.suite"] for r in runs} == {"smoke"}

    # An interrupted suite: one run never finished. Only that one runs again.
    capsys.readouterr()
    victim = out / "runs" / "a2c-CartPole-v1-s2" / "result.json"
    victim.unlink()
    kept = (out / "runs" / "ppo-CartPole-v1-s1" / "result.json").stat().st_mtime_ns
    assert main(argv) == 0
    assert "8 runs (7 already finished)" in capsys.readouterr().out
    assert victim.exists()
    assert (out / "runs" / "ppo-CartPole-v1-s1" / "result.json").stat().st_mtime_ns == kept
    assert len(list(csv.DictReader((out / "results.csv").open()))) == 8

    # --report rewrites the reports from every finished run, whatever the selection, and trains nothing.
    capsys.readouterr()
    (out / "results.md").unlink()
    assert main([*argv, "--report", "--algorithms", "a2c"]) == 0
    assert "writing the reports" in capsys.readouterr().out
    assert "| pgkit ppo (2 seeds) |" in (out / "results.md").read_text()
    assert (out / "runs" / "ppo-CartPole-v1-s1" / "result.json").stat().st_mtime_ns == kept
