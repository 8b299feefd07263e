"""Nothing is lost whatever happens to the process: SIGKILL at random moments (training, checkpointing, starting,
resuming) always leaves a checkpoint that resumes exactly, and a full disk ends the run with one line, keeping the
last good checkpoint and leaving no temporary file."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pgkit.checkpoints import load_checkpoint

pytestmark = pytest.mark.slow  # day-to-day: pytest -m "not slow"

# Iterations of a few milliseconds, a checkpoint every one and an evaluation (best.ckpt) every third: a kill at a
# random moment often lands while a checkpoint or the MLflow store is being written.
CONFIG = {
    "algorithm": {"name": "ppo", "num_steps": 16, "num_minibatches": 1, "update_epochs": 1},
    "env": {"id": "CartPole-v1", "num_envs": 2},
    "policy": {"actor_hidden": [16], "critic_hidden": [16]},
    "trainer": {"total_timesteps": 32 * 150, "output_dir": "run"},
    "checkpoint": {"every_n_iterations": 1},
    "eval": {"every_n_iterations": 3, "episodes": 1},
    "logger": {"tracking_uri": "sqlite:///m.db", "log_model": False},
}

# Starting Python and importing torch, Lightning and MLflow takes seconds; a process that has imported them forks a
# fresh `pgkit fit` for each attempt instead, so twenty kills take a minute, not five. Each child is a whole pgkit
# process (its own folder claim, store connection, envs), killed with SIGKILL like any other.
_FORKER = """
import os, signal, sys
import lightning, mlflow, torch  # noqa: F401  (imported once, before forking)
from pgkit.cli import main
for line in sys.stdin:
    verb, _, rest = line.strip().partition(" ")
    if verb == "run":
        pid = os.fork()
        if pid == 0:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os._exit(main(rest.split()))
        answer = pid
    elif verb == "alive":
        answer = int(os.waitpid(int(rest), os.WNOHANG) == (0, 0))
    elif verb == "kill":
        os.kill(int(rest), signal.SIGKILL)
        answer = int(os.WIFSIGNALED(os.waitpid(int(rest), 0)[1]))
    else:  # wait
        answer = os.waitstatus_to_exitcode(os.waitpid(int(rest), 0)[1])
    print(answer, flush=True)
"""


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_sigkill_at_random_moments_always_leaves_a_run_that_resumes_exactly(tmp_path):
    """20 kills at random moments, each followed by a resume from whatever is on disk; the run then finishes with
    the very weights, normaliser statistics and env state an uninterrupted run ends with.

    Before: a kill between writing the env-state sidecar and last.ckpt paired the new env state with the old
    checkpoint, and the resumed run silently diverged."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for folder in (whole, killed):
        folder.mkdir()
        (folder / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    env = {**os.environ, "TQDM_DISABLE": "1"}
    reference = subprocess.Popen([sys.executable, "-m", "pgkit", "fit", "--config", "c.yaml"], cwd=whole, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    forker = subprocess.Popen([sys.executable, "-c", _FORKER], cwd=killed, env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)

    def ask(request: str) -> int:
        forker.stdin.write(request + "\n")
        forker.stdin.flush()
        return int(forker.stdout.readline())

    rng = random.Random(0)
    last = killed / "run" / "checkpoints" / "last.ckpt"
    kills = 0
    try:
        while kills < 20:
            resume = " --resume run/checkpoints/last.ckpt" if last.exists() else ""
            before = last.stat().st_mtime_ns if last.exists() else 0
            pid = ask(f"run fit --config c.yaml{resume}")
            # A moment of start-up (claiming the folder, opening the store, making envs) or, more often, of
            # training once a new checkpoint appeared.
            if rng.random() < 0.25:
                time.sleep(rng.uniform(0.0, 1.0))
            else:
                deadline = time.time() + 120
                while (last.stat().st_mtime_ns if last.exists() else 0) == before:
                    assert time.time() < deadline and ask(f"alive {pid}"), "the run ended before a checkpoint"
                    time.sleep(0.002)
                time.sleep(rng.uniform(0.0, 0.2))
            assert ask(f"kill {pid}"), "the run ended before the kill: make it longer"
            kills += 1
            if last.exists():  # whatever the kill interrupted, what is on disk is whole and carries its env state
                assert set(load_checkpoint(last).env_states) == {"0"}
        assert ask(f"wait {ask('run fit --config c.yaml --resume run/checkpoints/last.ckpt')}") == 0
    finally:
        forker.stdin.close()
        forker.wait(timeout=60)
    assert reference.wait(timeout=300) == 0, reference.communicate()[1][-2000:]
    assert load_checkpoint(last).env_steps == 32 * 150
    expected, got = _weights(whole / "run/checkpoints/last.ckpt"), _weights(last)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert not list((killed / "run" / "checkpoints").glob("*.tmp"))  # stale ones were cleared on resume


def _unshare_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_available(), reason="needs unshare -rm to mount a small tmpfs")
def test_a_full_disk_ends_the_run_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    """The run's folder is on a 2 MB tmpfs; once it has checkpoints, a file fills the rest of the disk."""
    config = {**CONFIG, "trainer": {"total_timesteps": 32 * 2000, "output_dir": "/mnt/run"},
              "logger": {"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}", "log_model": False}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    script = f"""
set -u
mount -t tmpfs -o size=2m tmpfs /mnt
cd {tmp_path}
TQDM_DISABLE=1 {sys.executable} -m pgkit fit --config c.yaml 2> fit.err &
pid=$!
while [ ! -e /mnt/run/checkpoints/last.ckpt ]; do sleep 0.05; done
sleep 0.5
head -c 10000000 /dev/zero > /mnt/fill 2>/dev/null
wait $pid; echo $? > fit.rc
ls -a /mnt/run/checkpoints > listing.txt
cp /mnt/run/checkpoints/last.ckpt kept.ckpt
rm /mnt/fill
TQDM_DISABLE=1 {sys.executable} -m pgkit fit --resume /mnt/run/checkpoints/last.ckpt --set trainer.total_timesteps=\\
$(( $({sys.executable} -c "from pgkit.checkpoints import load_checkpoint; \\
print(load_checkpoint('kept.ckpt').env_steps)") + 64 )) 2> resume.err; echo $? > resume.rc
cp /mnt/run/checkpoints/last.ckpt resumed.ckpt
"""
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ})
    assert done.returncode == 0, done.stderr[-2000:]
    err = (tmp_path / "fit.err").read_text()
    # Before: a traceback, .tmp files left behind, and the sidecar of the last good checkpoint deleted on resume.
    assert (tmp_path / "fit.rc").read_text().strip() == "1", err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    (line,) = [x for x in err.splitlines() if x.startswith("pgkit: run failed")]
    assert "cannot write checkpoint /mnt/run/checkpoints/" in line and "No space left on device" in line, line
    assert "the previous checkpoint is kept" in line and "last checkpoint kept in /mnt/run/checkpoints" in line
    listing = (tmp_path / "listing.txt").read_text().split()
    assert not [name for name in listing if name.endswith(".tmp")], listing
    kept = load_checkpoint(tmp_path / "kept.ckpt")
    assert kept.env_steps > 0 and set(kept.env_states) == {"0"}  # a whole checkpoint, its env state inside
    assert (tmp_path / "resume.rc").read_text().strip() == "0", (tmp_path / "resume.err").read_text()[-3000:]
    assert "freshly reset envs" not in (tmp_path / "resume.err").read_text()  # it resumed exactly
    assert load_checkpoint(tmp_path / "resumed.ckpt").env_steps == kept.env_steps + 64
