"""Files from elsewhere run no code (pgkit.trust): a checkpoint whose config names code is data unless this user
wrote it or passes --trust-code; predict, export and the MLflow model build from the spaces it carries; the signing
key is made atomically and a bad one is refused; crafted numbers are bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from paths import ROOT

import pgkit
from pgkit.cli import main
from pgkit.errors import UserError

CONFIG = {
    "algorithm": {"name": "ppo", "num_steps": 32, "num_minibatches": 2, "update_epochs": 1},
    "env": {"id": "envs_for_tests:CounterEnv", "num_envs": 2, "max_episode_steps": 10},
    "trainer": {"total_timesteps": 64, "output_dir": "run"},
    "eval": {"every_n_iterations": 0},
    "logger": {"enabled": False},
}


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A checkpoint of this user's, whose env is a module:Class entry point."""
    folder = tmp_path_factory.mktemp("trained")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        Path("c.yaml").write_text(yaml.safe_dump(CONFIG))
        assert main(["fit", "--config", "c.yaml"]) == 0
    finally:
        os.chdir(cwd)
    return folder / "run" / "checkpoints" / "last.ckpt"


def crafted(source: Path, target: Path, **changes) -> Path:
    """A copy of ``source`` whose config names other code: as a stranger would make it (the signature no longer
    matches)."""
    ckpt = torch.load(source, weights_only=True)
    config = ckpt["hyper_parameters"]["config"]
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        config.setdefault(section, {})[key] = value
    torch.save(ckpt, target)
    return target


def evil(source: Path) -> Path:
    # os.system(command=...) is what gym.make would call for env.id "os:system".
    return crafted(source, Path("evil.ckpt"), env__id="os:system", env__kwargs={"command": "touch PWNED"})


def test_own_checkpoints_naming_code_work_as_before(trained, capsys):
    code, out, err = cli(capsys, "eval", "--checkpoint", str(trained), "--episodes", "2")
    assert code == 0, err
    assert out.startswith("envs_for_tests:CounterEnv: ")


@pytest.mark.parametrize("command", [["eval", "--checkpoint", "evil.ckpt"], ["fit", "--resume", "evil.ckpt"]])
def test_a_stranger_s_checkpoint_that_names_code_is_refused(trained, capsys, command):
    # Before: the command ran `touch PWNED` as the user who evaluated or resumed the checkpoint.
    evil(trained)
    code, _, err = cli(capsys, *command)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "was not written by you" in err and "env.id: os:system" in err and "--trust-code" in err
    assert not Path("PWNED").exists()
    assert not Path("runs").exists()


def test_predict_export_and_the_mlflow_model_need_no_env_and_import_nothing(trained, capsys):
    evil(trained)
    agent = pgkit.load("evil.ckpt")
    action, _ = agent.predict(np.array([3.0], dtype=np.float32))
    assert action in (0, 1)
    code, _, err = cli(capsys, "export", "--checkpoint", "evil.ckpt", "--format", "torchscript", "--output", "p.pt")
    assert code == 0, err
    exported = torch.jit.load("p.pt")
    obs = np.arange(6, dtype=np.float32).reshape(6, 1)
    with torch.no_grad():
        assert exported(torch.from_numpy(obs)).numpy().tolist() == agent.predict(obs)[0].tolist()

    from pgkit.mlflow_model import PolicyModel

    class Context:
        def __init__(self) -> None:
            self.artifacts = {"checkpoint": "evil.ckpt"}

    model = PolicyModel()
    model.load_context(Context())
    assert model.predict(None, obs).tolist() == agent.predict(obs)[0].tolist()
    assert not Path("PWNED").exists()


def test_trust_code_runs_what_the_checkpoint_names(trained, capsys):
    crafted(trained, Path("other.ckpt"), env__kwargs={"terminate_at": 3})  # a stranger's, naming a real env
    code, _, err = cli(capsys, "eval", "--checkpoint", "other.ckpt", "--episodes", "2")
    assert code == 2 and "was not written by you" in err
    code, out, err = cli(capsys, "eval", "--checkpoint", "other.ckpt", "--episodes", "2", "--trust-code")
    assert code == 0, err
    assert out.startswith("envs_for_tests:CounterEnv: 3.00 ± 0.00")  # its kwargs were used


def test_a_checkpoint_signed_by_another_user_is_a_stranger_s(trained, capsys, monkeypatch):
    monkeypatch.setenv("PGKIT_HOME", str(Path("other-user").resolve()))
    code, _, err = cli(capsys, "eval", "--checkpoint", str(trained))
    assert code == 2 and "was not written by you" in err


def test_registered_ids_name_no_code_and_work_from_any_checkpoint(trained, capsys):
    crafted(trained, Path("cartpole.ckpt"), env__id="CartPole-v1", env__kwargs={})
    ckpt = torch.load("cartpole.ckpt", weights_only=True)
    # A CartPole policy would need 4 inputs; this one has 1, so the weights do not fit: bad input, one line.
    code, _, err = cli(capsys, "eval", "--checkpoint", "cartpole.ckpt")
    assert code == 2 and "does not fit" in err and "was not written by you" not in err, err
    assert ckpt["pgkit"]["spaces"]["observation"]["shape"] == [1]


def test_a_language_model_checkpoint_naming_rewards_tasks_or_envs_is_refused(tmp_path, capsys):
    pytest.importorskip("transformers")
    root = ROOT
    config = yaml.safe_load((root / "configs" / "llm-grpo.yaml").read_text())
    config["trainer"] = {"total_timesteps": 64, "output_dir": "llm"}
    config["logger"] = {"enabled": False}
    config["eval"] = {"every_n_iterations": 0}
    config["prompts"]["eval_prompts"] = 4
    Path("llm.yaml").write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", "llm.yaml"]) == 0
    capsys.readouterr()
    last = Path("llm/checkpoints/last.ckpt")
    assert cli(capsys, "eval", "--checkpoint", str(last), "--episodes", "2")[0] == 0  # built-ins: no flag needed
    for changes, named in [
        ({"reward__functions": [{"function": "llm_rewards:record_call"}]}, "reward.functions: llm_rewards:record_call"),
        ({"prompts__task": "os:listdir"}, "prompts.task: os:listdir"),
        ({"env__id": "subprocess:Popen"}, "env.id: subprocess:Popen"),
    ]:
        crafted(last, Path("llm-evil.ckpt"), **changes)
        code, _, err = cli(capsys, "eval", "--checkpoint", "llm-evil.ckpt", "--episodes", "2")
        assert code == 2 and named in err and "was not written by you" in err, err
    crafted(last, Path("llm-evil.ckpt"), reward__functions=[{"function": "llm_rewards:record_call"}])
    code, _, err = cli(capsys, "eval", "--checkpoint", "llm-evil.ckpt", "--episodes", "2", "--trust-code")
    assert code == 0, err


# ---------------------------------------------------------------------------------------------------- the key
def test_the_key_is_made_once_by_processes_starting_together(tmp_path):
    home = tmp_path / "home"
    script = ("import os, sys; from pgkit.trust import user_key; k = user_key(); "
              "sys.stdout.write(k.hex())")
    procs = [subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PGKIT_HOME": str(home)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    results = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    keys = {out for out, _ in results}
    assert len(keys) == 1 and len(bytes.fromhex(keys.pop())) == 32
    assert (home / "secret").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in home.iterdir()] == ["secret"]  # no temporary files left


@pytest.mark.parametrize("content", [b"", b"short"])
def test_an_empty_or_short_key_is_refused(trained, capsys, monkeypatch, content):
    # Before: an empty key file was accepted, and anything signed with the empty key (which anyone can compute)
    # counted as this user's.
    home = Path("home").resolve()
    home.mkdir()
    (home / "secret").write_bytes(content)
    monkeypatch.setenv("PGKIT_HOME", str(home))
    code, _, err = cli(capsys, "eval", "--checkpoint", str(trained))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"holds {len(content)} bytes, fewer than 32" in err


# ------------------------------------------------------------------------------------------- crafted numbers
def _tamper(source: Path, edit) -> Path:
    ckpt = torch.load(source, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, "tampered.ckpt")
    return Path("tampered.ckpt")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["state_dict"].__setitem__("env_steps", torch.tensor(-5)), "env_steps"),
        (lambda c: c["state_dict"].__setitem__("env_steps", torch.tensor([1.5, 2.0])), "env_steps"),
        (lambda c: c.__setitem__("epoch", 10**30), "epoch must be a non-negative integer"),
        (lambda c: c["state_dict"]["obs_normalizer.rms.var"].fill_(float("nan")), "NaN or infinite"),
        (lambda c: c["state_dict"]["obs_normalizer.rms.var"].fill_(-1.0), "negative values"),
        (lambda c: c["pgkit"]["spaces"]["observation"].__setitem__("shape", [10**9]), "more than"),
        (lambda c: c["pgkit"]["spaces"]["action"].__setitem__("type", "Text"), "unknown space type"),
        (lambda c: c["pgkit"].__setitem__("mlflow_run_id", "../../etc"), "not an MLflow run id"),
        (lambda c: c["hyper_parameters"]["config"]["policy"].__setitem__("actor_hidden", [10**9]),
         "policy.actor_hidden.0"),
        # Valid widths, but 8.6 billion weights: refused from the shapes alone, before anything is allocated.
        (lambda c: c["hyper_parameters"]["config"]["policy"].__setitem__("actor_hidden", [65536, 65536, 65536]),
         "does not fit this config"),
        (lambda c: c["pgkit"]["spaces"].__setitem__("action", {"type": "Discrete", "n": 2**40, "start": 0}),
         "categories"),
    ],
)
def test_crafted_numbers_are_bad_input_in_one_line(trained, capsys, edit, message):
    path = _tamper(trained, edit)
    export = ["export", "--checkpoint", str(path), "--format", "torchscript", "--output", "x.pt"]
    for command in (["eval", "--checkpoint", str(path), "--trust-code"], export):
        code, _, err = cli(capsys, *command)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert message in err, err
    with pytest.raises(UserError, match=message.split("(")[0][:20].replace(".", r"\.")):
        pgkit.load(path)


# ---------------------------------------------------------------------------------------------------- export
def test_export_never_writes_over_its_input_or_another_checkpoint(trained, capsys):
    import shutil

    shutil.copy(trained, "mine.ckpt")
    shutil.copy(trained, "other.ckpt")
    before = Path("mine.ckpt").read_bytes()
    os.symlink("mine.ckpt", "link.ckpt")
    for output in ("mine.ckpt", "link.ckpt", "other.ckpt", str(Path("mine.ckpt").resolve())):
        # Before: `--output` naming the checkpoint itself overwrote it, with exit 0.
        code, _, err = cli(capsys, "export", "--checkpoint", "mine.ckpt", "--format", "torchscript",
                           "--output", output)
        assert code == 2 and ("is the checkpoint being exported" in err or "is a checkpoint" in err), err
    assert Path("mine.ckpt").read_bytes() == before
    assert cli(capsys, "export", "--checkpoint", "mine.ckpt", "--format", "torchscript", "--output", "p.pt")[0] == 0
    assert cli(capsys, "export", "--checkpoint", "mine.ckpt", "--format", "torchscript", "--output", "p.pt")[0] == 0
