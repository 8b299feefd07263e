"""The ``sweep`` section of a config: what ``pgkit sweep`` searches, how, and where the study lives.

.. code-block:: yaml

    sweep:
      metric: eval/mean_return
      direction: maximize
      trials: 50
      sampler: tpe
      pruner: median
      storage: sqlite:///optuna.db
      params:
        algorithm.learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true}
        algorithm.num_minibatches: {choices: [1, 2, 4]}

``pgkit fit`` ignores the section; ``pgkit sweep`` trains one run per trial with the sampled values set on the rest
of the config (:mod:`pgkit.sweeps.space`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

_MODEL = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Range(BaseModel):
    """A number between ``low`` and ``high`` (both included): an integer when both bounds are integers (and
    ``step``, if given), a float otherwise."""

    model_config = _MODEL

    low: int | float
    """Smallest value."""
    high: int | float
    """Largest value."""
    log: bool = False
    """Sample uniformly in the logarithm (bounds must be positive), as for learning rates."""
    step: int | float | None = Field(None, gt=0)
    """Only values ``low + k * step``; needed by the ``grid`` sampler for a range."""

    @model_validator(mode="after")
    def _bounds(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low must be below high (got low {self.low}, high {self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: needs low > 0 (got low {self.low})")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined (Optuna samples one or the other)")
        return self

    @property
    def is_int(self) -> bool:
        """Whether the range holds integers."""
        return all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high)) and (
            self.step is None or float(self.step).is_integer())

    def grid(self) -> list[int | float]:
        """Every value of a range with a ``step`` (for the ``grid`` sampler)."""
        if self.step is None:
            raise ValueError("the grid sampler needs a step (or choices) for every range")
        count = int((self.high - self.low) / self.step + 1e-9) + 1
        values = [self.low + k * self.step for k in range(count)]
        return [int(v) for v in values] if self.is_int else [round(v, 12) for v in values]


class Choices(BaseModel):
    """One of a list of values. Lists and mappings may be choices too (``[[64, 64], [256, 256]]`` for layer
    widths): Optuna records them as their JSON text."""

    model_config = _MODEL

    choices: list[Any] = Field(min_length=1, max_length=10_000)
    """The values to choose from."""


def _kind(value: Any) -> str:
    return "choices" if isinstance(value, dict | Choices) and ("choices" in value if isinstance(value, dict)
                                                                 else True) else "range"


#: A parameter's search space: a :class:`Range` or :class:`Choices` (told apart by the ``choices`` key).
Space = Annotated[Annotated[Range, Tag("range")] | Annotated[Choices, Tag("choices")], Discriminator(_kind)]


class SweepConfig(BaseModel):
    """An Optuna study over this config: ``pgkit sweep --config FILE`` (docs/sweeps.md)."""

    model_config = _MODEL

    metric: str = Field("eval/mean_return", min_length=1)
    """The metric a trial is scored on, as the run logs it: its value at the last iteration that logged it. Pruners
    see it each time it is logged (with ``eval/...``, at each evaluation), at the run's env-step count."""
    direction: Literal["maximize", "minimize"] = "maximize"
    """Whether a higher or a lower ``metric`` is better."""
    trials: int = Field(20, ge=1, le=100_000)
    """Trials the study runs in all, over every worker and machine (``--trials`` overrides it)."""
    sampler: Literal["tpe", "random", "grid", "cmaes"] = "tpe"
    """Optuna's sampler: ``tpe`` (TPESampler), ``random``, ``grid`` (every combination of ``choices`` and stepped
    ranges, at most ``trials`` of them) or ``cmaes`` (CmaEsSampler; choices are sampled at random beside it)."""
    pruner: Literal["median", "hyperband", "none"] = "median"
    """Stop unpromising trials early: ``median`` (MedianPruner: below the median of the finished trials at the same
    env step, once 5 trials have finished and past ``prune_warmup``), ``hyperband`` (HyperbandPruner over the run's
    env steps, from a ninth of the run to all of it, in three brackets) or ``none``."""
    prune_warmup: float = Field(0.1, ge=0.0, lt=1.0)
    """The fraction of ``trainer.total_timesteps`` in which the median pruner stops no trial (Optuna's
    ``n_warmup_steps``). RL Zoo's setting with its 5 evaluations per trial prunes from the first one, as 0.1 does
    with 5 evaluations."""
    storage: str = Field("sqlite:///optuna.db", min_length=1)
    """Where the study lives: ``sqlite:///path.db`` (one machine; relative paths are taken from the working
    directory) or ``postgresql://user:password@host:port/db`` (machines that share one study; ``pip install -e
    ".[postgres]"``)."""
    study: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.-]+$")
    """The study's name in ``storage``; null takes ``trainer.name`` (or ``<algorithm>-<env id>`` without one). The
    same name and storage resume or join the study."""
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    """The sampler's seed; null takes ``trainer.seed``. Every trial trains with ``trainer.seed`` unless ``params``
    searches it."""
    stale_after_s: float = Field(120.0, ge=10.0, le=86_400.0)
    """A trial whose process stopped sending heartbeats (SIGKILL, a lost machine) this long ago is marked failed and
    queued again, continuing from its last checkpoint."""
    params: dict[str, Space] = Field(min_length=1, max_length=1_000)
    """Dotted config paths and their search spaces: ``{low, high[, log][, step]}`` or ``{choices: [...]}``."""

    @model_validator(mode="after")
    def _grid(self) -> SweepConfig:
        if self.sampler == "grid" and self.grid_size() > 100_000:
            raise ValueError(f"the grid has {self.grid_size()} points, more than 100000; use the tpe or random "
                             "sampler for a space that large")
        if self.sampler == "grid":
            for path, space in self.params.items():
                if isinstance(space, Range) and space.step is None:
                    raise ValueError(f"the grid sampler needs a step (or choices) for every range; params.{path} "
                                     "has none")
        return self

    def grid_size(self) -> int:
        """How many combinations a ``grid`` sweep has (ranges without a step count as one point here; the grid
        sampler refuses them)."""
        size = 1
        for space in self.params.values():
            if isinstance(space, Choices):
                size *= len(space.choices)
            elif space.step is not None:
                size *= int((space.high - space.low) / space.step + 1e-9) + 1
        return size
