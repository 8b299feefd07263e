"""Language models through the CLI, as a user runs them: the shipped config learns, every text algorithm raises the
reward, fit/eval/resume, MLflow keys and sample tables, LoRA, a local model directory, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("transformers")

from paths import ROOT

from pgkit.cli import main

BASE = yaml.safe_load((ROOT / "configs" / "llm-grpo.yaml").read_text())


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, overrides: dict) -> str:
    """The shipped config with ``overrides`` merged section by section (an ``algorithm`` replaces the section)."""
    config = {key: dict(value) if isinstance(value, dict) else value for key, value in BASE.items()}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict) and key != "algorithm":
            config[key].update(value)
        else:
            config[key] = value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def first_and_last_rewards(db: Path) -> tuple[float, float, dict]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("pgkit").experiment_id])
    history = sorted(client.get_metric_history(run.info.run_id, "train/reward_mean"), key=lambda m: m.step)
    return history[0].value, history[-1].value, run.data.metrics


@pytest.mark.learning
@pytest.mark.parametrize(
    ("algorithm", "steps"),
    [
        ({"name": "grpo", "learning_rate": 3e-3}, 3200),
        ({"name": "rloo", "learning_rate": 3e-3}, 3200),
        ({"name": "ppo", "learning_rate": 3e-3, "update_epochs": 2, "kl_coef": 0.01, "vf_coef": 0.1}, 3200),
    ],
)
@pytest.mark.slow
def test_each_text_algorithm_raises_the_reward(tmp_path, capsys, algorithm, steps):
    """``builtin:tiny`` starts at about 1% "a" in its completions; each algorithm must bring it above 60%."""
    path = write(tmp_path, {"algorithm": algorithm, "trainer": {"total_timesteps": steps, "output_dir": "run"},
                            "logger": {"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}"}})
    code, _out, err = cli(capsys, "fit", "--config", path)
    assert code == 0, err[-2000:]
    first, last, metrics = first_and_last_rewards(tmp_path / "m.db")
    assert first < 0.1 and last > 0.6, (first, last)
    assert metrics["eval/mean_return"] > 0.6  # greedy completions of held-out prompts


@pytest.mark.slow
def test_fit_logs_rewards_lengths_kl_and_samples_then_eval_and_resume(tmp_path, capsys):
    db = tmp_path / "m.db"
    path = write(tmp_path, {
        "algorithm": {"name": "grpo", "learning_rate": 3e-3, "beta": 0.04},
        "reward": {"functions": [{"function": "pgkit.llm.rewards:character_fraction"},
                                 {"function": "llm_rewards:record_call", "weight": 0.0}]},
        "trainer": {"total_timesteps": 256, "output_dir": "run"}, "logger": {"tracking_uri": f"sqlite:///{db}"},
        "samples_every_n_iterations": 2, "eval": {"every_n_iterations": 2},
    })
    import llm_rewards

    llm_rewards.CALLS.clear()
    code, out, err = cli(capsys, "fit", "--config", path)
    assert code == 0, err[-2000:]
    # Columns, the env steps and the progress (the fraction of the budget done) reach reward functions.
    training = [c for c in llm_rewards.CALLS if len(c["completions"]) == 64]
    assert [(c["env_steps"], c["progress"]) for c in training[:4]] == [(0, 0.0), (64, 0.25), (128, 0.5), (192, 0.75)]
    assert training[0]["character"] == ["a"] * 64
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("pgkit").experiment_id])
    for key in ("train/reward_mean", "train/reward_std", "train/reward/character_fraction", "train/reward/record_call",
                "train/kl", "train/ref_kl", "train/completion_length_mean", "time/tokens_per_second",
                "eval/mean_return"):
        assert key in run.data.metrics, key
    tables = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert tables == ["samples/iteration-00002.json", "samples/iteration-00004.json"]
    table = json.loads(Path(client.download_artifacts(run.info.run_id, tables[0], str(tmp_path))).read_text())
    assert table["columns"] == ["prompt", "completion", "reward", "character_fraction", "record_call"]
    code, out, err = cli(capsys, "eval", "--checkpoint", "run/checkpoints/last.ckpt", "--episodes", "6", "--json",
                         "--deterministic")
    assert code == 0, err
    evaluated = json.loads(out)
    assert evaluated["episodes"] == 6 and len(evaluated["returns"]) == 6
    code, out, err = cli(capsys, "fit", "--config", path, "--set", "trainer.total_timesteps=512", "--resume",
                         "run/checkpoints/last.ckpt")
    assert code == 0, err[-2000:]
    assert int(torch.load("run/checkpoints/last.ckpt", weights_only=True)["state_dict"]["env_steps"]) == 512
    (resumed,) = client.search_runs([client.get_experiment_by_name("pgkit").experiment_id])
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "train/reward_mean")]
    assert steps == [64 * i for i in range(1, 9)]  # one run, continued after the resume


@pytest.mark.slow
def test_lora_trains_only_the_adapters_and_checkpoints_only_them(tmp_path, capsys):
    path = write(tmp_path, {"model": {"path": "builtin:tiny", "lora": {"r": 4, "alpha": 8}},
                            "algorithm": {"name": "grpo", "learning_rate": 1e-2, "beta": 0.04},
                            "trainer": {"total_timesteps": 128, "output_dir": "run"}, "logger": {"enabled": False}})
    from pgkit.config_loading import load_config

    module = load_config(path).init()
    trainable = {name for name, p in module.policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    before = {name: p.detach().clone() for name, p in module.policy.named_parameters()}
    assert cli(capsys, "fit", "--config", path)[0] == 0
    ckpt = torch.load("run/checkpoints/last.ckpt", weights_only=True)
    state = ckpt["state_dict"]
    # Before: the checkpoint held the whole frozen model twice (policy and reference), 1.6 GB for SmolLM2-135M.
    assert {k for k in state if k.startswith("policy.")} == {f"policy.{name}" for name in trainable}
    assert all("lora_" in k for k in state if k.startswith("reference."))
    assert {"env_steps", "beta"} <= set(state)
    assert ckpt["pgkit"]["base_model"] == "builtin:tiny" and ckpt["pgkit"]["partial_state"] is True
    changed = {name for name in trainable if not torch.equal(state[f"policy.{name}"], before[name])}
    assert changed  # the adapters trained
    # The frozen base comes back from model.path: eval and resume work from the adapters alone.
    code, _, err = cli(capsys, "eval", "--checkpoint", "run/checkpoints/last.ckpt", "--episodes", "4")
    assert code == 0, err[-2000:]
    more = write(tmp_path, {"model": {"path": "builtin:tiny", "lora": {"r": 4, "alpha": 8}},
                            "algorithm": {"name": "grpo", "learning_rate": 1e-2, "beta": 0.04},
                            "trainer": {"total_timesteps": 256, "output_dir": "run"}, "logger": {"enabled": False}})
    code, _, err = cli(capsys, "fit", "--config", more, "--resume", "run/checkpoints/last.ckpt")
    assert code == 0, err[-2000:]
    resumed = torch.load("run/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert int(resumed["env_steps"]) == 256
    assert not any(torch.equal(resumed[k], state[k]) for k in state if "lora_B" in k and k.startswith("policy."))


@pytest.mark.parametrize("sync", [True, False])
def test_text_reference_syncs_as_trl_or_stays_frozen(tmp_path, capsys, sync):
    algorithm = {"name": "grpo", "learning_rate": 1e-2, "beta": 0.04, "sync_ref_model": sync,
                 "ref_model_mixup_alpha": 1.0, "ref_model_sync_steps": 1}
    path = write(tmp_path, {"algorithm": algorithm, "trainer": {"total_timesteps": 128, "output_dir": "run"},
                            "logger": {"enabled": False}})
    assert cli(capsys, "fit", "--config", path)[0] == 0
    state = torch.load("run/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    pairs = [(state[k], state["reference." + k.removeprefix("policy.")]) for k in state if k.startswith("policy.")]
    assert pairs and all(torch.equal(p, r) for p, r in pairs) == sync


def test_a_local_hugging_face_directory(tmp_path, capsys):
    from pgkit.llm.model import load_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    load_model("builtin:tiny", None, torch.float32, tokenizer, seed=5).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    path = write(tmp_path, {"model": {"path": str(tmp_path / "model")}, "logger": {"enabled": False},
                            "trainer": {"total_timesteps": 128, "output_dir": "run"}})
    code, _out, err = cli(capsys, "fit", "--config", path)
    assert code == 0, err[-2000:]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"model": {"path": "/no/such/model"}}, "config error: model.path: '/no/such/model' does not exist"),
        ({"reward": {"functions": [{"function": "no_such_module:f"}]}},
         "config error: reward.functions: cannot import 'no_such_module'"),
        ({"reward": {"functions": [{"function": "llm_rewards:wrong_length"}]}},
         "config error: reward.functions: reward function llm_rewards:wrong_length returned 3 values for 2"),
        ({"reward": {"functions": [{"function": "llm_rewards:not_numbers"}]}},
         "config error: reward.functions: reward function llm_rewards:not_numbers returned a non-number ('high')"),
        ({"generation": {"group_size": 1}, "algorithm": {"name": "grpo"}},
         "config error: generation.group_size: grpo measures each completion"),
        ({"algorithm": {"name": "rloo"}, "generation": {"group_size": 1}},
         "config error: generation.group_size: rloo measures each completion"),
        ({"prompts": {"task": "repeat_character", "task_kwargs": {"length": 300}}},
         "config error: prompts: record 1 has 300 tokens, and with generation.max_new_tokens x env.max_turns = 16"),
        ({"prompts": {"task": None, "file": "bad.jsonl"}}, "config error: prompts.file: bad.jsonl line 2 is not JSON"),
        # Before: both gave a traceback and exit 1.
        ({"prompts": {"task": None, "file": "latin1.jsonl"}},
         "config error: prompts.file: latin1.jsonl line 2 is not UTF-8 text (byte 16: b'\\xe9')"),
        ({"prompts": {"task": None, "file": "deep.jsonl"}}, "config error: prompts.file: deep.jsonl line 1 nests too "
                                                           "deeply"),
        ({"trainer": {"strategy": "fsdp", "devices": 2}},
         "config error: trainer.strategy: 'fsdp' shards parameters over CUDA devices; set trainer.accelerator: gpu "
         "(got accelerator 'cpu')"),
        ({"trainer": {"kernels": "numba"}},
         "config error: trainer.kernels: the numba kernels run small MLP policies on gymnasium envs"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, overrides, expected):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "fine"}\n{"prompt": \n')
    (tmp_path / "latin1.jsonl").write_bytes('{"prompt": "fine"}\n{"prompt": "caf\u00e9"}\n'.encode("latin-1"))
    (tmp_path / "deep.jsonl").write_text('{"prompt": "x", "a": ' + "[" * 200_000 + "]" * 200_000 + "}\n")
    path = write(tmp_path, overrides)
    code, _out, err = cli(capsys, "fit", "--config", path)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(expected), err
    assert not Path("runs").exists()


def test_a_reward_function_that_raises_mid_run_exits_1_and_keeps_the_checkpoint(tmp_path, capsys):
    path = write(tmp_path, {"reward": {"functions": [{"function": "llm_rewards:raises_later"}]},
                            "trainer": {"total_timesteps": 640, "output_dir": "run"}, "logger": {"enabled": False},
                            "checkpoint": {"every_n_iterations": 1}})
    code, _out, err = cli(capsys, "fit", "--config", path)
    assert code == 1 and "Traceback" not in err
    assert "reward function llm_rewards:raises_later raised RuntimeError: the grader went away" in err
    # It raised scoring iteration 3 (at 128 completions): the checkpoint of iteration 2 stays.
    assert int(torch.load("run/checkpoints/last.ckpt", weights_only=True)["state_dict"]["env_steps"]) == 128


@pytest.mark.slow
def test_two_ddp_processes_train_one_language_model(tmp_path):
    """Lightning DDP on CPU (gloo): each rank samples its own prompts, gradients are averaged, rank 0 logs."""
    import subprocess
    import sys

    path = write(tmp_path, {"trainer": {"total_timesteps": 256, "output_dir": "out", "devices": 2, "strategy": "ddp"},
                            "logger": {"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}"}})
    proc = subprocess.run([sys.executable, "-m", "pgkit", "fit", "--config", path], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done: 256 env steps") == 1  # 2 ranks x 64 completions x 2 iterations, rank 0 reports
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("pgkit").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/reward_mean")] == [128, 256]


@pytest.mark.slow
def test_bfloat16_and_a_compiled_update(tmp_path, capsys, monkeypatch):
    """``model.dtype: bfloat16`` trains; with ``trainer.compile`` the update's forward goes through
    ``torch.compile`` (the eager backend here: no C++ build on CPU) and gives the eager update's numbers."""
    path = write(tmp_path, {"model": {"path": "builtin:tiny", "dtype": "bfloat16"}, "logger": {"enabled": False},
                            "trainer": {"total_timesteps": 128, "output_dir": "run"}})
    assert cli(capsys, "fit", "--config", path)[0] == 0
    state = torch.load("run/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert state["policy.lm_head.weight"].dtype == torch.bfloat16

    from pgkit.config_loading import load_config
    from pgkit.training import fit

    def train(compile_: bool, directory: str) -> float:
        cfg = load_config(write(tmp_path, {"trainer": {"total_timesteps": 128, "output_dir": directory,
                                                       "compile": compile_}, "logger": {"enabled": False}}))
        fit(cfg)
        return torch.load(f"{directory}/checkpoints/last.ckpt", weights_only=True)["state_dict"]

    real_compile, compiled = torch.compile, []

    def eager_backend(fn, **kw):
        compiled.append(fn)
        return real_compile(fn, **(kw | {"backend": "eager"}))

    monkeypatch.setattr(torch, "compile", eager_backend)
    eager = train(False, "eager")
    traced = train(True, "traced")
    assert len(compiled) == 1
    for key in ("policy.lm_head.weight", "policy.model.layers.0.self_attn.q_proj.weight"):
        torch.testing.assert_close(traced[key], eager[key], rtol=1e-4, atol=1e-6)
