"""``pgkit`` command line: fit, eval, bench, sweep, export, sync, validate, schema, list.

Exit codes: 0 success; 1 the run failed (its last checkpoint is kept); 2 bad input (config, override, checkpoint
path), reported as one line on stderr without a traceback.
"""

from __future__ import annotations

import argparse
import copy
import json
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path

from pgkit import startup
from pgkit.errors import Interrupted, Interruption, Terminated, TrainingError, UserError


def _config_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--config", "-c", required=required, help="YAML experiment config")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a dotted key, value parsed as YAML (repeatable), e.g. --set algorithm.learning_rate=1e-4",
    )


def _trust_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-code", action="store_true",
                   help="let a checkpoint that someone else wrote import and run the code its config names (env "
                        "entry points, reward functions); your own checkpoints need no flag")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for all subcommands."""
    parser = argparse.ArgumentParser(prog="pgkit", description="Policy-gradient training on PyTorch Lightning.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("fit", help="train from a config (or resume a checkpoint)")
    _config_args(p, required=False)
    p.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint (e.g. .../checkpoints/last.ckpt)")
    _trust_arg(p)

    p = sub.add_parser("eval", help="evaluate a checkpoint")
    p.add_argument("--checkpoint", required=True, metavar="CKPT")
    p.add_argument("--episodes", type=int, default=10, help="complete episodes to run (default 10)")
    p.add_argument("--deterministic", action="store_true", help="act with the distribution's mode")
    p.add_argument("--seed", type=int, default=None, help="reset seed (default: the evaluation seed of the run)")
    p.add_argument("--video", metavar="DIR", help="also record the episodes as videos in DIR")
    p.add_argument("--json", action="store_true", help="print JSON: mean_return, std_return, episodes")
    _trust_arg(p)

    p = sub.add_parser("bench", help="run a benchmark suite: every (algorithm, env, seed), then tables and curves")
    p.add_argument("--suite", required=True, metavar="FILE", help="suite YAML, e.g. configs/suites/mujoco-1m.yaml")
    p.add_argument("--algorithms", metavar="A,B", help="only these algorithms of the suite (comma-separated)")
    p.add_argument("--envs", metavar="E,F", help="only these envs of the suite (comma-separated)")
    p.add_argument("--seeds", type=int, metavar="N", help="seeds 1..N per (algorithm, env) (default: the suite's)")
    p.add_argument("--workers", type=int, metavar="N", help="parallel runs (default: the number of cores)")
    p.add_argument("--output", metavar="DIR", help="results directory (default bench/<suite name>)")
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (default: each config's)")
    p.add_argument("--report", action="store_true", help="only rewrite the reports from the finished runs")
    p.add_argument("--storage", metavar="URL", help="share the runs with other machines through this Optuna storage")

    p = sub.add_parser("sweep", help="tune hyperparameters: an Optuna study over the config's sweep section")
    _config_args(p, required=True)
    p.add_argument("--trials", type=int, metavar="N", help="trials in the study, all machines (default: sweep.trials)")
    p.add_argument("--workers", type=int, default=1, metavar="K", help="trials at once on this machine (default 1)")

    p = sub.add_parser("export", help="write a checkpoint's policy as a standalone ONNX or TorchScript file")
    p.add_argument("--checkpoint", required=True, metavar="CKPT")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    p.add_argument("--output", required=True, metavar="FILE")

    p = sub.add_parser("sync", help="send what a run kept locally while its MLflow server was away")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run's output folder (it holds mlflow-pending/)")
    p.add_argument("--tracking-uri", metavar="URI", help="send to this store instead of the run's own")

    p = sub.add_parser("validate", help="check one or more configs without training")
    _config_args(p, required=False)
    p.add_argument("files", nargs="*", metavar="FILE", help="more configs to check (each with the same --set)")

    p = sub.add_parser("schema", help="print the config's JSON schema")
    p.add_argument("--llm", action="store_true", help="the schema of a language-model config")
    sub.add_parser("list", help="list algorithms, distributions and environment ids")
    return parser


def _peer_failed(exc: BaseException) -> bool:
    """Whether a collective failed because another rank's process went away (gloo: "Connection closed by peer")."""
    text = str(exc)
    return type(exc).__name__ in ("DistBackendError", "DistNetworkError", "RuntimeError") and (
        "closed by peer" in text or "remote worker" in text or "Connection reset by peer" in text
    )


def _kept(cfg) -> str:
    """Where the last checkpoint is, said only if one was written."""
    last = Path(cfg.trainer.output_dir) / "checkpoints" / "last.ckpt"
    return f"last checkpoint kept in {last}" if last.exists() else "no checkpoint was written"


def cmd_fit(args: argparse.Namespace) -> int:
    from pgkit.checkpoints import load_checkpoint
    from pgkit.config_loading import load_config
    from pgkit.outputs import resolve_output_dir
    from pgkit.start_check import host_start_store, reporting_start_failures
    from pgkit.tracking import check_tracking_uri
    from pgkit.training import fit, process_rank, with_absolute_store
    from pgkit.trust import check_code_allowed

    if args.config is None and args.resume is None:
        raise UserError("pgkit fit: give --config FILE, or --resume CKPT to continue a run with its own config")
    host_start_store()  # Lightning's multi-node launcher: node 0 hosts the store the ranks meet in
    with reporting_start_failures():  # across processes, a rank failing here stops the others at once
        loaded = load_checkpoint(args.resume) if args.resume else None
        base = None
        if args.config is None:
            # The run's own config: it names code only this user's checkpoints (or --trust-code) may run; its
            # output folder is where the checkpoint is (or a new one), not necessarily where it was written.
            check_code_allowed(args.resume, loaded.config, loaded.own, args.trust_code, "resume")
            base = copy.deepcopy(loaded.config)
            if isinstance(base.get("trainer"), dict):
                base["trainer"].pop("output_dir", None)
        cfg = with_absolute_store(load_config(args.config, args.overrides, base=base))
        if cfg.logger.enabled:
            check_tracking_uri(cfg.logger.tracking_uri)  # before the output folder is made
        cfg = resolve_output_dir(cfg, args.resume, process_rank(cfg.trainer.devices, cfg.trainer.num_nodes) == 0)
    try:
        result = fit(cfg, resume=args.resume, loaded=loaded)
    except UserError:
        raise
    except Interrupted as exc:
        name = signal.Signals(exc.signum).name
        print(f"pgkit: stopped by {name}; {_kept(cfg)}; MLflow run marked KILLED", file=sys.stderr)
        return 128 + exc.signum
    except TrainingError as exc:
        print(f"pgkit: run failed: {exc}; {_kept(cfg)}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Terminated) as exc:
        signum = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
        print(f"pgkit: stopped by {signum.name}; {_kept(cfg)}", file=sys.stderr)
        return 128 + signum
    except Exception as exc:
        if _peer_failed(exc):  # another rank died: its own log says why; this one stops in one line
            print(f"pgkit: run failed: another rank stopped ({' '.join(str(exc).split())[:200]}); {_kept(cfg)}",
                  file=sys.stderr)
            return 1
        traceback.print_exc()
        print(f"pgkit: run failed; {_kept(cfg)}", file=sys.stderr)
        return 1
    if result.rank != 0:  # DDP: rank 0 reports
        return 0
    print(f"done: {result.env_steps} env steps; last checkpoint {result.last_checkpoint}")
    if result.best_checkpoint is not None:
        print(f"best checkpoint (by evaluation return): {result.best_checkpoint}")
    if result.mlflow_run_id is not None:
        where = f"{cfg.logger.tracking_uri} (experiment {cfg.logger.experiment_name!r})"
        print(f"MLflow run {result.mlflow_run_id} at {where}")
    return 0


def _report(label: str, result, json_output: bool, wanted: int) -> None:
    """An evaluation's summary line, or its JSON with per-episode returns and lengths."""
    if json_output:
        print(json.dumps({"mean_return": result.mean_return, "std_return": result.std_return,
                          "episodes": len(result.returns), "requested": wanted, "returns": result.returns,
                          "lengths": result.lengths}))
    else:
        print(f"{label}: {result.mean_return:.2f} ± {result.std_return:.2f} over {len(result.returns)} episodes")


def cmd_eval(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise UserError(f"eval error: --episodes: must be at least 1 (got {args.episodes})")
    if args.video:
        from pgkit.evaluation import headless_gl

        headless_gl()  # before anything imports MuJoCo
    from pgkit.evaluation import EvalInterrupted, evaluate, record_video, restore_agent

    agent, cfg, seed = restore_agent(args.checkpoint, args.seed, trust_code=args.trust_code)

    if hasattr(cfg, "model"):  # a language model: mean reward on the held-out prompts
        if args.video:
            raise UserError("eval error: --video: a language model has no frames to record")
        records = agent.eval_records[: args.episodes]
        if not records:
            raise UserError("eval error: the run held out no prompts (prompts.eval_prompts: 0)")
        temperature = None if args.deterministic else cfg.generation.temperature
        result, _ = agent.evaluate_prompts(records, 0.0 if args.deterministic else temperature, seed=seed)
        if args.json:
            print(json.dumps({"mean_return": result.mean_return, "std_return": result.std_return,
                              "episodes": len(result.returns), "returns": result.returns, "lengths": result.lengths}))
        else:
            print(f"{cfg.model.path}: mean reward {result.mean_return:.4f} ± {result.std_return:.4f} over "
                  f"{len(result.returns)} held-out prompts")
        return 0
    env = cfg.env
    try:
        result = evaluate(agent, env.id, args.episodes, args.deterministic, seed, env.kwargs, env.max_episode_steps,
                          partial_on_interrupt=True)
    except EvalInterrupted as stop:  # Ctrl-C: what finished so far, no traceback
        done = stop.result
        print(f"pgkit: interrupted after {len(done.returns)} of {args.episodes} episodes", file=sys.stderr)
        if done.returns:
            _report(cfg.env.id, done, args.json, args.episodes)
        return 130
    if args.video:
        record_video(agent, cfg, args.video, args.episodes, args.deterministic, seed)
    _report(cfg.env.id, result, args.json, args.episodes)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from pgkit.bench import run_suite
    from pgkit.bench_shared import run_suite_shared

    selection = (args.output, args.algorithms, args.envs, args.seeds, args.workers, args.tracking_uri)
    summary = (run_suite_shared(args.suite, args.storage, *selection, report_only=args.report) if args.storage
               else run_suite(args.suite, *selection, report_only=args.report))
    if summary.stopped:
        print(f"pgkit bench: stopped; its interrupted runs are queued again in {args.storage}", file=sys.stderr)
        return summary.stopped
    if summary.failed:
        print(f"pgkit bench: {len(summary.failed)} runs failed: {', '.join(summary.failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from pgkit.sweeps.run import run_sweep

    return run_sweep(args.config, args.overrides, args.trials, args.workers)


def cmd_export(args: argparse.Namespace) -> int:
    from pgkit.export import export_policy

    path = export_policy(args.checkpoint, args.format, args.output)
    print(f"exported the deterministic policy of {args.checkpoint} to {path} ({args.format})")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from pgkit.tracking import PENDING_DIR, sync_pending

    folder = Path(args.run_dir)
    if not (folder / PENDING_DIR).is_dir():
        print(f"pgkit sync: {folder} has nothing kept locally (no {PENDING_DIR}/)")
        return 0
    try:
        sent = sync_pending(folder, args.tracking_uri)
    except UserError:
        raise
    except Exception as exc:  # the store still does not answer: nothing is lost, the queue stays
        print(f"pgkit sync: the store does not take the writes yet ({' '.join(str(exc).split())[:200]}); they stay "
              f"in {folder / PENDING_DIR}", file=sys.stderr)
        return 1
    print(f"pgkit sync: sent {sent} writes from {folder / PENDING_DIR}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from pgkit.config_loading import load_config
    from pgkit.sweeps.space import check_space

    files = ([args.config] if args.config else []) + list(args.files)
    if not files:
        raise UserError("pgkit validate: give --config FILE (or several files)")
    failed = 0
    for path in files:
        prefix = f"{path}: " if len(files) > 1 else ""
        try:
            cfg = load_config(path, args.overrides)
            if cfg.sweep is not None:  # its paths and bounds too, as `pgkit sweep` checks them
                check_space(cfg)
        except UserError as exc:
            if len(files) == 1:
                raise
            print(prefix + " ".join(str(exc).splitlines()), file=sys.stderr)
            failed += 1
            continue
        text = hasattr(cfg, "model")
        target, unit = (cfg.model.path, "completions") if text else (cfg.env.id, "steps")
        print(
            f"ok: {prefix}{cfg.algorithm.name} on {target}, {cfg.num_iterations} iterations of {cfg.batch_size} "
            f"{unit}, output in {cfg.trainer.output_dir}"
        )
    return 2 if failed else 0


def cmd_schema(args: argparse.Namespace) -> int:
    if args.llm:
        from pgkit.llm.config import LanguageExperimentConfig as Root
    else:
        from pgkit.config import ExperimentConfig as Root

    print(json.dumps(Root.model_json_schema(), indent=2))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    import gymnasium as gym

    from pgkit.config import ALGORITHMS
    from pgkit.distributions.heads import ALLOWED

    print("algorithms:   " + ", ".join(ALGORITHMS))
    for space, names in ALLOWED.items():
        print(f"{space.__name__ + ':':<13} " + ", ".join(names) + f" (default {names[0]})")
    print("environments (those whose code imports here; others need extra packages):")
    for env_id in sorted(gym.registry):
        if _importable(gym.registry[env_id].entry_point):
            print(f"  {env_id}")
    return 0


_IMPORTABLE: dict[str, bool] = {}


def _importable(entry_point: object) -> bool:
    """Whether an env's entry point imports (its module and the packages it needs, e.g. mujoco or box2d)."""
    if not isinstance(entry_point, str):
        return callable(entry_point)
    module = entry_point.split(":")[0]
    if module not in _IMPORTABLE:
        import importlib

        try:
            importlib.import_module(module)
            _IMPORTABLE[module] = True
        except Exception:  # DependencyNotInstalled, ImportError, or anything a foreign module raises on import
            _IMPORTABLE[module] = False
    return _IMPORTABLE[module]


COMMANDS = {
    "fit": cmd_fit,
    "eval": cmd_eval,
    "bench": cmd_bench,
    "sweep": cmd_sweep,
    "export": cmd_export,
    "sync": cmd_sync,
    "validate": cmd_validate,
    "schema": cmd_schema,
    "list": cmd_list,
}


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def _interrupt(signum: int, frame: object) -> None:
    raise Interruption


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pgkit`` console script.

    Ctrl-C or SIGTERM at any moment ends it with 130 or 143 and one line, never a traceback: during training after
    the iteration and its checkpoint (:class:`~pgkit.callbacks.StopOnSignal`), before or after it at once."""
    args = build_parser().parse_args(argv)
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    in_main = threading.current_thread() is threading.main_thread()
    if startup.holding() and args.command in ("fit", "eval", "export", "bench", "sync", "sweep"):
        startup.preload()
    if in_main:
        signal.signal(signal.SIGTERM, _terminate)
        signal.signal(signal.SIGINT, _interrupt)
    try:
        if startup.PENDING:  # a signal came while Python was still importing pgkit
            raise Terminated if startup.PENDING[0] == signal.SIGTERM else Interruption
        return COMMANDS[args.command](args)
    except UserError as exc:
        # One line whatever the message quotes (an env's exception text, a key with a newline in it).
        print(" ".join(str(exc).splitlines()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pgkit: interrupted (SIGINT) during {args.command}", file=sys.stderr)
        return 128 + signal.SIGINT
    except Terminated:
        print(f"pgkit: stopped by SIGTERM during {args.command}", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if in_main:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
