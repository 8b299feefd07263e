"""Reading a config file, applying ``--set`` overrides, and turning every failure into one readable line.

Every problem becomes a :class:`ConfigError` whose message names the dotted field, the problem and the given
value, e.g. ``config error: algorithm.clip_range: Input should be greater than 0 (got -0.2)``. The CLI prints it
and exits with code 2.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pgkit.config import ALGORITHMS, ExperimentConfig, validation_context
from pgkit.environments.actions import check_action_space
from pgkit.errors import ConfigError

#: The most values a config may expand to, aliases followed: a config has a few hundred. A YAML "alias bomb" of 1 KB
#: expands to billions, which pydantic, MLflow's params and error messages would each try to spell out.
MAX_VALUES = 100_000
#: The deepest nesting a config may have.
MAX_DEPTH = 64


def check_size(data: Any, source: str) -> None:
    """Raise :class:`ConfigError` when ``data``, with its YAML aliases expanded, holds more than :data:`MAX_VALUES`
    values or nests deeper than :data:`MAX_DEPTH` (a recursive alias nests forever). Shared parts are counted once
    per use but walked once, so the check itself is quick whatever the expansion."""
    memo: dict[int, tuple[int, int]] = {}  # a shared node's (expanded values, height), walked once

    def walk(node: Any, depth: int) -> tuple[int, int]:
        if not isinstance(node, dict | list):
            return 1, 0
        if id(node) in memo:
            total, height = memo[id(node)]
        else:
            if depth > MAX_DEPTH:
                raise ConfigError(f"config error: {source}: nested more than {MAX_DEPTH} levels deep (a recursive "
                                  "YAML alias?)")
            children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
            total, height = 1, 0
            for child in children:
                child_total, child_height = walk(child, depth + 1)
                total, height = total + child_total, max(height, child_height + 1)
                if total > MAX_VALUES:
                    raise ConfigError(f"config error: {source}: expands to more than {MAX_VALUES} values (YAML "
                                      "aliases repeated inside each other?)")
            memo[id(node)] = total, height
        if depth + height > MAX_DEPTH:  # a shared part reused deeper down still counts at its full depth
            raise ConfigError(f"config error: {source}: nested more than {MAX_DEPTH} levels deep (a recursive YAML "
                              "alias?)")
        return total, height

    walk(data, 0)


def _safe_load(text: str, source: str) -> Any:
    """``yaml.safe_load`` with nesting that overflows the parser reported as bad input, and the expansion capped."""
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"config error: {source}: nested too deeply to parse") from None
    check_size(data, source)
    return data


def read_yaml_file(path: str | Path) -> dict[str, Any]:
    """Parse a YAML mapping from ``path``, reporting missing, unreadable, empty, malformed and oversized files."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config error: {path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config error: {path}: is a directory, not a config file") from None
    except (PermissionError, UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"config error: {path}: cannot read file ({exc.__class__.__name__}: {exc})") from None
    try:
        data = _safe_load(text, str(path))
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config error: {path}: invalid YAML{where}: {problem}") from None
    if data is None:
        raise ConfigError(f"config error: {path}: file is empty (expected a mapping with at least `algorithm`)")
    if not isinstance(data, dict):
        raise ConfigError(f"config error: {path}: expected a mapping at the top level (got {type(data).__name__})")
    return data


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``KEY=VALUE`` (dotted key, YAML value) to ``data`` in place."""
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"config error: --set {assignment!r}: expected KEY=VALUE with a dotted key")
    try:
        value = _safe_load(raw, f"--set {key}") if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"config error: {key}: value is not valid YAML (got {raw!r})") from None
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            parent = ".".join(parts[: i + 1])
            raise ConfigError(f"config error: {key}: {parent} is a value, not a section (got {child!r})")
        node = child
    node[parts[-1]] = value


Schema = tuple[type[BaseModel], dict[str, type[BaseModel]]]
"""The root model of a config and its algorithm configs by name."""


def schema_of(data: Any) -> Schema:
    """A config with a ``model`` section trains a language model; any other, a gymnasium env."""
    if isinstance(data, dict) and "model" in data:
        from pgkit.llm.config import TEXT_ALGORITHMS, LanguageExperimentConfig

        return LanguageExperimentConfig, TEXT_ALGORITHMS
    return ExperimentConfig, {name: config for name, (config, _) in ALGORITHMS.items()}


def _model_at(loc: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """The config model holding the field at ``loc`` (for suggesting key names)."""
    model: type[BaseModel] | None = root
    for part in loc[:-1]:
        if model is None:
            return None
        if model is root and part == "algorithm":
            return None  # resolved by the caller through the algorithm configs
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None) if field else None
        if annotation is not None and not isinstance(annotation, type):  # X | None
            members = [a for a in getattr(annotation, "__args__", ()) if isinstance(a, type)]
            annotation = next((a for a in members if issubclass(a, BaseModel)), None)
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return model


def _clean_loc(loc: tuple[Any, ...], algorithms: dict[str, type[BaseModel]]) -> tuple[Any, ...]:
    # Pydantic puts the discriminator's tag in the location of union members: algorithm.ppo.clip_range.
    if len(loc) >= 2 and loc[0] == "algorithm" and loc[1] in algorithms:
        return (loc[0], *loc[2:])
    # ... and the kind of a sweep parameter's space: sweep.params.<path>.range.low.
    if len(loc) >= 4 and loc[:2] == ("sweep", "params") and loc[3] in ("range", "choices"):
        return (*loc[:3], *loc[4:])
    return loc


#: Algorithm options renamed when their meaning changed: the old key's error says what replaced it.
RENAMED: dict[tuple[str, str], str] = {
    ("grpo", "reference"): "TRL's sync_ref_model, ref_model_mixup_alpha and ref_model_sync_steps (frozen by "
    "default; alpha 1 gives a periodic copy)",
    ("vmpo", "target_update_period"): "target_update_iterations (counted in iterations, not gradient updates)",
}


def _suggest(loc: tuple[Any, ...], algo_name: str | None, schema: Schema) -> str:
    root, algorithms = schema
    if len(loc) == 2 and loc[0] == "algorithm" and (algo_name, loc[1]) in RENAMED:
        return f"; replaced by {RENAMED[algo_name, loc[1]]}"
    if len(loc) >= 2 and loc[0] == "algorithm" and algo_name in algorithms:
        model: type[BaseModel] | None = algorithms[algo_name] if len(loc) == 2 else None
    else:
        model = _model_at(loc, root)
    if model is None:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(model.model_fields)}"


def _key(part: Any) -> str:
    """A path component as written in the file, quoted when it is not a plain printable name."""
    text = str(part)
    return text if text.isprintable() and text.strip() == text and "." not in text and text else repr(text)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_validation_error(exc: ValidationError, data: dict[str, Any]) -> str:
    """One line for the first error (with a count of the others)."""
    schema = schema_of(data)
    errors = exc.errors(include_url=False)
    err = errors[0]
    loc = _clean_loc(tuple(err["loc"]), schema[1])
    field = ".".join(_key(p) for p in loc)
    kind, value = err["type"], err.get("input")
    algo = data.get("algorithm")
    algo_name = algo.get("name") if isinstance(algo, dict) else None
    names = ", ".join(schema[1])
    if kind == "union_tag_invalid":
        message = f"algorithm.name: unknown algorithm {_short(algo_name)}; expected one of: {names}"
    elif kind == "union_tag_not_found":
        message = f"algorithm.name: missing; expected one of: {names}"
    elif kind == "model_attributes_type" or kind == "model_type":
        message = f"{field or '<top level>'}: expected a mapping (got {_short(value)})"
    elif kind == "extra_forbidden":
        message = f"{field}: unknown key{_suggest(loc, algo_name, schema)} (got {_short(value)})"
    elif kind == "missing":
        message = f"{field}: required field is missing"
    elif not loc:
        # Cross-field checks raise messages that already name their field and value.
        message = err["msg"].removeprefix("Value error, ")
    else:
        msg = err["msg"].removeprefix("Value error, ")
        message = f"{field}: {msg} (got {_short(value)})"
    more = len(errors) - 1
    suffix = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
    return f"config error: {message}{suffix}"


def parse_config(data: dict[str, Any], import_code: bool = True) -> Any:
    """Validate a config mapping, raising :class:`ConfigError` with one readable line on failure: an
    :class:`ExperimentConfig`, or a :class:`~pgkit.llm.config.LanguageExperimentConfig` when it has a ``model``.

    Without ``import_code`` (a checkpoint from elsewhere, read as data: :mod:`pgkit.trust`) the config is checked
    field by field only: nothing it names is imported and no env is made."""
    root, _ = schema_of(data)
    try:
        cfg = root.model_validate(data, context=validation_context(import_code))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, data)) from None
    if not import_code:
        return cfg
    if root is not ExperimentConfig:
        from pgkit.llm.validation import check_language_config

        check_language_config(cfg)
        return cfg
    check_spaces(cfg)
    return cfg


def check_spaces(cfg: ExperimentConfig, spaces: tuple[Any, Any] | None = None) -> None:
    """Checks that need the environment's spaces: the env can be built (unless ``spaces``, a checkpoint's, are
    given), and the policy and its distribution can act in it."""
    env = None
    if spaces is None:
        try:
            env = cfg.env.make_probe()
        except Exception as exc:  # an env's constructor may raise anything; report it as bad input
            raise ConfigError(
                f"config error: env: cannot create {cfg.env.id!r} with kwargs {cfg.env.kwargs}: "
                f"{exc.__class__.__name__}: {exc}"
            ) from None
        spaces = env.observation_space, env.action_space
    observation_space, action_space = spaces
    try:
        try:
            cfg.policy.check_observation_space(observation_space)
        except ValueError as exc:
            raise ConfigError(f"config error: {exc}") from None
        try:
            cfg.policy.resolve_distribution(action_space)
        except ValueError as exc:
            raise ConfigError(f"config error: policy.distribution: {exc} (got {cfg.policy.distribution!r})") from None
        try:
            check_action_space(action_space)
        except ValueError as exc:
            raise ConfigError(f"config error: env.id: {exc} (got {cfg.env.id!r})") from None
        bounded = getattr(action_space, "is_bounded", lambda: True)()
        if cfg.env.action_bounds == "rescale" and not bounded:
            raise ConfigError("config error: env.action_bounds: 'rescale' needs finite action bounds (got 'rescale')")
        if cfg.trainer.kernels == "numba" and env is not None:  # raises ConfigError naming what rules it out
            from pgkit.algorithms.kernel_update import wanted

            wanted(cfg.policy.init(observation_space, action_space), cfg)
    finally:
        if env is not None:
            env.close()


def load_config(
    path: str | Path | None, overrides: list[str] | None = None, base: dict | None = None
) -> ExperimentConfig:
    """Read ``path`` (or start from ``base``), apply ``KEY=VALUE`` overrides in order, and validate."""
    data = read_yaml_file(path) if path is not None else copy.deepcopy(base or {})
    for assignment in overrides or []:
        apply_override(data, assignment)
    return parse_config(data)
