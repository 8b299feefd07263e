"""PPO on a CUDA GPU: eager against ``torch.compile`` against ``torch.compile`` with CUDA graphs.

Run (on a machine with a CUDA GPU): ``python benchmarks/gpu_compile.py``

For 1 and 64 HalfCheetah-v5 sub-envs (``configs/ppo.yaml``; 64 envs use 32-step rollouts, so the batch stays 2048),
it trains each mode and prints the steady-state SPS (iterations after the first, which pays for compiling) and the
compile warm-up. Then it times the update step alone: 10 epochs of 32 minibatches of 64 on a random 2048-step
batch (forward, loss, backward, clipping, fused Adam), per mode. Ratios are against eager on the same GPU; the
reference point is LeanRL's 2.7x for PPO with compile and CUDA graphs on an H100.

``--device cpu`` runs the same code on CPU (compiling there needs a C++ compiler), e.g. to check the script.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import lightning as L
import torch

ROOT = Path(__file__).resolve().parent.parent
MODES = {"eager": ["trainer.compile=false"], "compile": ["trainer.compile=true", "trainer.cuda_graphs=false"],
         "compile+graphs": ["trainer.compile=true", "trainer.cuda_graphs=true"]}


class IterationClock(L.Callback):
    """Env steps and time at the end of every iteration."""

    def __init__(self) -> None:
        self.marks: list[tuple[int, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self.marks.append((int(pl_module.env_steps), time.perf_counter()))


def overrides_for(device: str, num_envs: int, iterations: int) -> list[str]:
    num_steps = 2048 // num_envs
    return [
        f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
        f"env.num_envs={num_envs}",
        f"algorithm.num_steps={num_steps}",
        f"trainer.total_timesteps={iterations * num_steps * num_envs}",
        "logger.enabled=false",
        "eval.every_n_iterations=0",
        "checkpoint.save_best=false",
        "checkpoint.every_n_iterations=1000",
    ]


def training_sps(device: str, num_envs: int, mode: str, iterations: int) -> tuple[float, float]:
    """(steady-state SPS, seconds of the first iteration) of PPO training in ``mode``."""
    import pgkit.training as training
    from pgkit.config_loading import load_config

    clock = IterationClock()
    original = L.Trainer.__init__

    def with_clock(self, *args, **kwargs):
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), clock]
        original(self, *args, **kwargs)

    torch._dynamo.reset()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            ROOT / "configs" / "ppo.yaml", [*overrides_for(device, num_envs, iterations), *MODES[mode],
                                            f"trainer.output_dir={tmp}"]
        )
        L.Trainer.__init__ = with_clock
        try:
            start = time.perf_counter()
            training.fit(cfg)
        finally:
            L.Trainer.__init__ = original
    (s0, t0), (s1, t1) = clock.marks[0], clock.marks[-1]
    return (s1 - s0) / (t1 - t0), t0 - start


def update_ms(device: str, mode: str, repeats: int) -> float:
    """Milliseconds for one iteration's update (320 minibatches of 64) on a random batch, module built from
    ``configs/ppo.yaml`` with ``mode``'s compile settings."""
    from pgkit.config_loading import load_config

    torch._dynamo.reset()
    cfg = load_config(ROOT / "configs" / "ppo.yaml", [*overrides_for(device, 1, 1), *MODES[mode]])
    module = cfg.init().to(device)
    module.setup_compile()  # no-op in eager mode (trainer.compile=false)
    params = list(module.policy.parameters())
    optimizer = torch.optim.Adam(params, lr=3e-4, eps=1e-5, fused=True)
    n, obs_dim, act_dim = 2048, module.observation_space.shape[0], module.action_space.shape[0]
    g = torch.Generator(device=device).manual_seed(0)
    batch = {
        "obs": torch.randn(n, obs_dim, device=device, generator=g),
        "action": torch.randn(n, act_dim, device=device, generator=g),
        "log_prob": torch.randn(n, device=device, generator=g) - 5,
        "advantage": torch.randn(n, device=device, generator=g),
        "value": torch.randn(n, device=device, generator=g),
        "return": torch.randn(n, device=device, generator=g),
    }

    def one_update() -> None:
        for idx in torch.randperm(n, device=device).view(32, 64).repeat(10, 1):
            module.mark_step()
            terms = module.loss_terms(*(batch[k][idx] for k in ("obs", "action", "log_prob", "advantage",
                                                                  "value", "return")))
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, 0.5)
            optimizer.step()

    one_update()  # warm-up (and compilation)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        one_update()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--iterations", type=int, default=6, help="PPO iterations per training measurement")
    parser.add_argument("--envs", default="1,64", help="sub-env counts to measure")
    parser.add_argument("--modes", default=",".join(MODES), help="subset of: " + ", ".join(MODES))
    parser.add_argument("--update-repeats", type=int, default=5)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here; run on a GPU machine (or pass --device cpu to check the script)")
    modes = [m.strip() for m in args.modes.split(",")]
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"# PPO HalfCheetah-v5 on {name}, torch {torch.__version__}")
    for num_envs in (int(e) for e in args.envs.split(",")):
        results = {mode: training_sps(args.device, num_envs, mode, args.iterations) for mode in modes}
        base = results.get("eager", next(iter(results.values())))[0]
        for mode, (sps, first) in results.items():
            print(f"training, {num_envs:>2} envs, {mode:<15} {sps:9.0f} SPS  ({sps / base:.2f}x eager; "
                  f"first iteration {first:.1f} s)")
    times = {mode: update_ms(args.device, mode, args.update_repeats) for mode in modes}
    base = times.get("eager", next(iter(times.values())))
    for mode, ms in times.items():
        print(f"update step alone,  {mode:<15} {ms:9.1f} ms per 320 minibatches  ({base / ms:.2f}x eager)")


if __name__ == "__main__":
    main()
