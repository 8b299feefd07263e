"""Property: any YAML mapping gives either a valid config or exit 2 with one readable line, never a crash."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgkit.cli import main
from pgkit.config import ExperimentConfig

# Real field names at every level, so generated files reach deep validators, plus arbitrary keys.
SECTIONS = {name: list(field.annotation.model_fields) if hasattr(field.annotation, "model_fields") else []
            for name, field in ExperimentConfig.model_fields.items()}
SECTIONS["algorithm"] = ["name", "learning_rate", "num_steps", "num_minibatches", "clip_range", "gamma",
                         "update_epochs", "target_kl", "group_size", "baseline", "max_grad_norm"]
ALGORITHMS = ["ppo", "a2c", "trpo", "reinforce", "vmpo", "grpo", "sac", ""]
ENVS = ["CartPole-v1", "Pendulum-v1", "InvertedPendulum-v5", "NoSuchEnv-v0", "math:pi", ""]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(ALGORITHMS + ENVS + ["normal", "categorical", "tanh", "auto", "sync"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                            max_size=3), max_leaves=6)


@st.composite
def configs(draw) -> dict:
    data: dict = {}
    for section in draw(st.lists(st.sampled_from([*SECTIONS, "bogus"]), max_size=5, unique=True)):
        fields = SECTIONS.get(section, [])
        body = draw(
            st.dictionaries(
                st.sampled_from(fields) if fields and draw(st.booleans()) else st.text(min_size=1, max_size=8),
                values,
                max_size=4,
            )
            | values
        )
        data[section] = body
    if draw(st.booleans()):  # often a nearly valid file, so the cross-field checks run too
        data.setdefault("algorithm", {})
        if isinstance(data["algorithm"], dict):
            data["algorithm"]["name"] = draw(st.sampled_from(ALGORITHMS))
        data["env"] = {"id": draw(st.sampled_from(ENVS))} | (data["env"] if isinstance(data.get("env"), dict) else {})
    return data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=configs())
@pytest.mark.slow
def test_random_mappings_validate_or_exit_2_with_one_line(data, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        code = main(["validate", "--config", str(path)])
    out, err = capsys.readouterr()
    if code == 0:
        assert out.startswith("ok: ") and err == ""
    else:
        assert code == 2, (data, err)
        assert err.startswith("config error: ") and err.count("\n") == 1, (data, err)
        assert "Traceback" not in err


@pytest.mark.parametrize("text", ["\x00\x01", "a: b: c", "{", "[1, 2", "? ? ?", "key: !!python/object:os.system x"])
def test_hostile_yaml_text_exits_2(tmp_path, capsys, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert main(["validate", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error: ") and err.count("\n") == 1
