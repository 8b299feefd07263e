"""Config validation and the CLI's exit-2 contract: one line naming the field and the value, no traceback."""

import json
import subprocess
import sys

import pytest
import yaml
from paths import CONFIGS

from pgkit.cli import main
from pgkit.config_loading import load_config

BASE = {"algorithm": {"name": "ppo"}, "env": {"id": "CartPole-v1"}}


def write(tmp_path, data, name="c.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["algorithm.clip_range=-0.2"],
            "config error: algorithm.clip_range: Input should be greater than 0 (got -0.2)",
        ),
        (
            ["algorithm.learning_rate=0"],
            "config error: algorithm.learning_rate: Input should be greater than 0 (got 0)",
        ),
        (
            ["algorithm.clip_rnge=0.1"],
            "config error: algorithm.clip_rnge: unknown key; did you mean 'clip_range'? (got 0.1)",
        ),
        (["algorithm.name=foo"], "config error: algorithm.name: unknown algorithm 'foo'; expected one of: ppo"),
        (["env.num_envs=four"], "config error: env.num_envs: Input should be a valid integer"),
        (["env.num_envs=0"], "config error: env.num_envs: Input should be greater than or equal to 1 (got 0)"),
        (["env.foo=1"], "config error: env.foo: unknown key"),
        (["bogus=1"], "config error: bogus: unknown key"),
        (["policy.hiden=[8]"], "config error: policy.hiden: unknown key"),
        (["trainer.sed=3"], "config error: trainer.sed: unknown key; did you mean 'seed'?"),
        (["logger.uri=x"], "config error: logger.uri: unknown key"),
        (["checkpoint.every=2"], "config error: checkpoint.every: unknown key"),
        (["eval.episode=3"], "config error: eval.episode: unknown key; did you mean 'episodes'?"),
        (["algorithm.learning_rate=-1e-3"], "config error: algorithm.learning_rate: Input should be greater than 0"),
        (["algorithm.gamma=1.5"], "config error: algorithm.gamma: Input should be less than or equal to 1"),
        (["trainer.devices=0"], "config error: trainer.devices: Input should be greater than or equal to 1"),
        (
            ["trainer.strategy=horovod"],
            "config error: trainer.strategy: Input should be 'auto', 'ddp', 'ddp_spawn' or 'fsdp'",
        ),
        (["algorithm.num_steps=1e99"], "config error: algorithm.num_steps: Input should be a valid integer"),
        (
            ["policy.activation=sigmoid"],
            "config error: policy.activation: Input should be 'tanh', 'relu', 'swish' or 'elu'",
        ),
        (
            ["policy.actor_hidden=[64, -1]"],
            "config error: policy.actor_hidden.1: Input should be greater than 0 (got -1)",
        ),
        (["algorithm.num_minibatches=7"], "config error: algorithm.num_minibatches: must divide the batch size"),
        (["trainer.total_timesteps=10"], "config error: trainer.total_timesteps: must be at least one iteration"),
        (["trainer.seed=99999999999999999999999"], "config error: trainer.seed: Input should be less than or equal to"),
        (["policy.distribution=normal"], "config error: policy.distribution: 'normal' cannot act in Discrete"),
        (["env.id=CartPol-v1"], "config error: env.id: unknown environment; did you mean CartPole-v1"),
        (["env.id=nosuchmodule:Env"], "config error: env.id: cannot import module 'nosuchmodule'"),
        (["env.id.x=1"], "config error: env.id.x: env.id is a value, not a section"),
        (["noequals"], "config error: --set 'noequals': expected KEY=VALUE"),
        (["env=3"], "config error: env: expected a mapping (got 3)"),
        (["trainer.kernels=numba", "policy.shared_trunk=true"],
         "config error: trainer.kernels: numba cannot run this policy: they need separate actor and critic trunks"),
    ],
)
def test_bad_overrides_exit_2_with_one_line(tmp_path, capsys, overrides, expected):
    argv = ["validate", "--config", write(tmp_path, BASE)]
    for o in overrides:
        argv += ["--set", o]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.startswith(expected), err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("algorithm: [unclosed", "invalid YAML at line 1"),
        ("", "file is empty"),
        ("- a\n- b\n", "expected a mapping at the top level (got list)"),
        ("env:\n  id: CartPole-v1\n", "algorithm: required field is missing"),
    ],
)
def test_bad_files_exit_2(tmp_path, capsys, content, expected):
    code, _, err = run_cli(capsys, "validate", "--config", write(tmp_path, content))
    assert code == 2 and expected in err and err.count("\n") == 1


def _alias_bomb() -> str:
    """1 KB of YAML whose aliases expand to 9**10 strings (the "billion laughs")."""
    lines = ["algorithm: {name: ppo}", "env:", "  id: CartPole-v1", "  kwargs:",
             '    a: &a ["x","x","x","x","x","x","x","x","x"]']
    for previous, name in zip("abcdefghi", "bcdefghij", strict=True):
        lines.append(f"    {name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (_alias_bomb(), "expands to more than 100000 values"),
        ("algorithm: {name: ppo}\nenv: {kwargs: {a: &a [*a]}}\n", "nested more than 64 levels deep"),
        ("algorithm: {name: ppo}\nenv: {kwargs: {a: " + "[" * 100_000 + "]" * 100_000 + "}}\n",
         "nested too deeply to parse"),
    ],
)
def test_oversized_yaml_is_bad_input_in_seconds(tmp_path, capsys, content, expected):
    # Before: a 1 KB alias bomb in env.kwargs took 77 s and 5 GB of memory, wrote 2 GB to stderr, then a traceback.
    import time

    start = time.monotonic()
    code, _, err = run_cli(capsys, "validate", "--config", write(tmp_path, content))
    assert code == 2 and expected in err and err.count("\n") == 1, err[:500]
    assert time.monotonic() - start < 10


def test_an_alias_bomb_in_an_override_is_bad_input(tmp_path, capsys):
    entries = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]" for previous, name in zip("abcdefghi", "bcdefghij",
                                                                                          strict=True)]
    code, _, err = run_cli(capsys, "validate", "--config", write(tmp_path, "algorithm: {name: ppo}\n"), "--set",
                           "env.kwargs={" + ", ".join(entries) + "}")
    assert code == 2 and err.startswith("config error: --set env.kwargs: expands to more than 100000 values"), err


def test_missing_file_and_directory(tmp_path, capsys):
    code, _, err = run_cli(capsys, "validate", "--config", str(tmp_path / "nope.yaml"))
    assert code == 2 and "file not found" in err
    code, _, err = run_cli(capsys, "validate", "--config", str(tmp_path))
    assert code == 2 and "is a directory" in err


def test_valid_config_and_overrides_apply(tmp_path, capsys):
    path = write(tmp_path, BASE)
    cfg = load_config(path, ["algorithm.learning_rate=1e-4", "env.num_envs=4", "policy.actor_hidden=[32, 32]"])
    assert cfg.algorithm.learning_rate == pytest.approx(1e-4)
    assert cfg.env.num_envs == 4 and cfg.policy.actor_hidden == (32, 32)
    assert cfg.trainer.output_dir == "runs/ppo-CartPole-v1-s1"
    code, out, _ = run_cli(capsys, "validate", "--config", path, "--set", "trainer.seed=3")
    assert code == 0 and out.startswith("ok: ppo on CartPole-v1") and "runs/ppo-CartPole-v1-s3" in out


def test_required_dotted_keys_exist():
    cfg = load_config(None, [], base=BASE)
    for key in [
        "algorithm.name",
        "algorithm.learning_rate",
        "env.id",
        "env.num_envs",
        "trainer.total_timesteps",
        "trainer.seed",
        "trainer.output_dir",
        "logger.tracking_uri",
        "logger.experiment_name",
    ]:
        obj = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        assert obj is not None, key
    assert cfg.logger.tracking_uri == "sqlite:///mlflow.db"


def test_schema_has_field_docs(capsys):
    code, out, _ = run_cli(capsys, "schema")
    schema = json.loads(out)
    assert code == 0
    env = schema["$defs"]["EnvConfig"]["properties"]
    assert "gymnasium id" in env["id"]["description"]
    assert "clip" in schema["$defs"]["PPOConfig"]["properties"]["clip_range"]["description"].lower()


def test_list_shows_algorithms_distributions_envs(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0 and "ppo" in out and "tanh_normal" in out and "HalfCheetah-v5" in out


@pytest.mark.slow
def test_real_process_exit_code_and_no_traceback(tmp_path):
    path = write(tmp_path, BASE)
    proc = subprocess.run(
        [sys.executable, "-m", "pgkit", "fit", "--config", path, "--set", "algorithm.clip_range=-1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines()[-1]
        == "config error: algorithm.clip_range: Input should be greater than 0 (got -1)"
    )
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("algorithm", "key", "hint"),
    [
        ("grpo", "reference", "replaced by TRL's sync_ref_model, ref_model_mixup_alpha and ref_model_sync_steps"),
        ("vmpo", "target_update_period", "replaced by target_update_iterations"),
    ],
)
def test_options_renamed_by_the_reference_fixes_say_what_replaced_them(tmp_path, capsys, algorithm, key, hint):
    path = tmp_path / "c.yaml"
    path.write_text(f"algorithm: {{name: {algorithm}, {key}: 10}}\nenv: {{id: CartPole-v1}}\n")
    code, _, err = run_cli(capsys, "validate", "--config", str(path))
    assert code == 2 and err.startswith(f"config error: algorithm.{key}: unknown key; {hint}"), err
    assert len(err.strip().splitlines()) == 1


def test_validate_checks_several_files_and_reports_each(tmp_path, capsys):
    good = write(tmp_path, BASE, "good.yaml")
    bad = write(tmp_path, {**BASE, "trainer": {"sed": 3}}, "bad.yaml")
    code, out, err = run_cli(capsys, "validate", good, bad, good)
    assert code == 2
    assert out.count(f"ok: {good}: ppo on CartPole-v1") == 2
    assert err.strip() == f"{bad}: config error: trainer.sed: unknown key; did you mean 'seed'? (got 3)"


@pytest.mark.slow
def test_validating_a_config_imports_neither_lightning_nor_tensordict():
    # `pgkit validate`, `schema` and `list` answer in about 2 s because the configs stand apart from the modules.

    configs = CONFIGS
    code = (
        "import sys\n"
        "from pgkit.config_loading import load_config\n"
        "from pgkit.cli import main\n"
        f"cfg = load_config({str(configs / 'ppo-lstm.yaml')!r})\n"
        "assert main(['schema']) == 0 and main(['list']) == 0\n"
        "print(sorted(m for m in ('lightning', 'tensordict', 'pgkit.algorithms.base') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
