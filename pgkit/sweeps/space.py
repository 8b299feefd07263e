"""A sweep's search space against its config: every dotted path checked to be a field, every bound and choice
checked to validate, and each trial's values sampled through Optuna and set on the config."""

from __future__ import annotations

import copy
import json
import re
import types
import typing
from typing import Any

from pydantic import BaseModel

from pgkit.errors import ConfigError
from pgkit.sweeps.config import Choices, Range, SweepConfig

#: Choices Optuna can record as they are; anything else (lists, mappings) goes through its JSON text.
_PRIMITIVE = (type(None), bool, int, float, str)


def sweep_of(cfg: Any) -> SweepConfig:
    """The config's ``sweep`` section, or a :class:`ConfigError` saying it needs one."""
    if cfg.sweep is None:
        raise ConfigError("config error: sweep: missing; `pgkit sweep` needs a sweep section with at least `params` "
                          "(see docs/sweeps.md)")
    return cfg.sweep


def study_name(cfg: Any) -> str:
    """``sweep.study``, else ``trainer.name``, else ``<algorithm>-<env id>``."""
    if cfg.sweep is not None and cfg.sweep.study:
        return cfg.sweep.study
    if cfg.trainer.name:
        return cfg.trainer.name
    env_id = getattr(cfg.env, "id", None) or "text"
    return f"{cfg.algorithm.name}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', str(env_id))}"


def base_data(cfg: Any) -> dict[str, Any]:
    """The config every trial starts from: the whole validated config, without its sweep section and its output
    folder (each trial gets its own)."""
    data = cfg.model_dump(mode="json")
    data.pop("sweep", None)
    data["trainer"].pop("output_dir", None)
    return data


def _model_field(model: type[BaseModel], name: str) -> Any:
    field = model.model_fields.get(name)
    return None if field is None else field.annotation


def _section(annotation: Any) -> type[BaseModel] | type[dict] | None:
    """The model (or ``dict``) a field's annotation nests, if any."""
    members = typing.get_args(annotation) if isinstance(annotation, types.UnionType) or \
        typing.get_origin(annotation) is typing.Union else (annotation,)
    for member in members:
        origin = typing.get_origin(member) or member
        if isinstance(origin, type) and issubclass(origin, BaseModel):
            return origin
        if origin is dict:
            return dict
    return None


def check_path(cfg: Any, path: str) -> None:
    """Raise :class:`ConfigError` unless ``path`` names a field of ``cfg`` (or a key inside a mapping field such as
    ``env.kwargs``)."""
    parts = path.split(".")
    node: Any = type(cfg)
    for i, part in enumerate(parts):
        where = ".".join(parts[: i + 1])
        if node is dict:
            return  # a key of a free-form mapping (env.kwargs.<name>)
        if i == 0 and part == "sweep":
            raise ConfigError(f"config error: sweep.params.{path}: the sweep cannot search its own settings")
        if part == "algorithm" and i == 0:
            node = type(cfg.algorithm)  # the selected algorithm's own options
            if len(parts) == 1:
                break
            continue
        if node is None or not isinstance(node, type) or not issubclass(node, BaseModel):
            raise ConfigError(f"config error: sweep.params.{path}: {'.'.join(parts[:i])} is a value, not a section")
        annotation = _model_field(node, part)
        if annotation is None:
            raise ConfigError(f"config error: sweep.params.{path}: {where} is not a field of the config (valid keys "
                              f"there: {', '.join(node.model_fields)})")
        node = _section(annotation) if i < len(parts) - 1 else annotation


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set the dotted ``path`` of ``data`` to ``value``, making sections on the way."""
    node = data
    parts = path.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def with_values(data: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` with each dotted path of ``values`` set."""
    out = copy.deepcopy(data)
    for path, value in values.items():
        set_path(out, path, value)
    return out


def _probe_values(space: Range | Choices) -> list[Any]:
    if isinstance(space, Choices):
        return list(space.choices)
    return [space.low, space.high]


def check_space(cfg: Any) -> None:
    """Every parameter's path is a field, and each bound and choice, set alone on the config, validates: bad input
    fails here, as one line naming the parameter, before any trial runs."""
    from pgkit.config_loading import parse_config

    sweep = sweep_of(cfg)
    if sweep.metric.startswith("eval/") and not cfg.eval.every_n_iterations:
        raise ConfigError(f"config error: sweep.metric: {sweep.metric} is logged by evaluations, and "
                          f"eval.every_n_iterations is 0 (got {sweep.metric!r})")
    base = base_data(cfg)
    for path, space in sweep.params.items():
        check_path(cfg, path)
        for value in _probe_values(space):
            try:
                parse_config(with_values(base, {path: value}))
            except ConfigError as exc:
                problem = str(exc).removeprefix("config error: ")
                raise ConfigError(f"config error: sweep.params.{path}: the value {value!r} does not make a valid "
                                  f"config: {problem}") from None


def encode_choice(value: Any) -> Any:
    """A choice as Optuna records it: primitives as they are, anything else as JSON text."""
    return value if isinstance(value, _PRIMITIVE) else json.dumps(value, sort_keys=True)


def suggest(trial: Any, sweep: SweepConfig) -> dict[str, Any]:
    """Ask ``trial`` for each parameter (fixed values of an enqueued trial come back as they were) and return the
    config values, choices decoded."""
    values: dict[str, Any] = {}
    for path, space in sweep.params.items():
        if isinstance(space, Choices):
            encoded = [encode_choice(c) for c in space.choices]
            picked = trial.suggest_categorical(path, encoded)
            values[path] = space.choices[encoded.index(picked)]
        elif space.is_int:
            values[path] = trial.suggest_int(path, int(space.low), int(space.high), step=int(space.step or 1),
                                             log=space.log)
        else:
            values[path] = trial.suggest_float(path, float(space.low), float(space.high), step=space.step,
                                               log=space.log)
    return values


def grid_space(sweep: SweepConfig) -> dict[str, list[Any]]:
    """The ``grid`` sampler's search space, in Optuna's recorded values."""
    return {path: [encode_choice(c) for c in space.choices] if isinstance(space, Choices) else space.grid()
            for path, space in sweep.params.items()}
