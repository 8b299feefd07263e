"""The compiled kernels (`trainer.kernels`) run a configuration only when every field of its algorithm, policy, env
and trainer sections is declared supported by them (`kernel_update.FIELDS`): a field added later to any of these
configs fails here until it is declared supported (and implemented) or refused, so the default kernel path can
never silently ignore an option the torch path honours."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from pgkit.algorithms.configs import PPOConfig
from pgkit.algorithms.kernel_update import FIELDS, unsupported_config
from pgkit.config import EnvConfig, PolicyConfig
from pgkit.config_loading import load_config
from pgkit.errors import ConfigError
from pgkit.run_config import TrainerConfig

SECTIONS: dict[str, type[BaseModel]] = {
    "algorithm": PPOConfig, "policy": PolicyConfig, "env": EnvConfig, "trainer": TrainerConfig,
}


def _walk(prefix: str, model: type[BaseModel]) -> dict[str, set[str]]:
    """``{section: fields}`` for a model and the models nested in it (``policy.encoder``, ``policy.recurrent``)."""
    found = {prefix: set(model.model_fields)}
    for name, field in model.model_fields.items():
        for candidate in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                found.update(_walk(f"{prefix}.{name}", candidate))
    return found


def test_every_field_of_every_section_is_declared():
    walked: dict[str, set[str]] = {}
    for section, model in SECTIONS.items():
        walked.update(_walk(section, model))
    assert set(FIELDS) == set(walked)
    for section, fields in walked.items():
        missing = fields - set(FIELDS[section])
        assert not missing, f"declare {section}.{sorted(missing)} in kernel_update.FIELDS (supported or refused)"
        assert not set(FIELDS[section]) - fields, f"{section}: FIELDS names fields that no longer exist"


@pytest.mark.parametrize(("override", "reason"), [
    ("policy.distribution=tanh_normal", "normal or categorical"),
    ("policy.actor_hidden=[]", "at least one hidden layer"),
    ("policy.activation=elu", "tanh or relu"),
    ("policy.shared_trunk=true", "separate actor and critic trunks"),
    ("policy.log_std=state_dependent", "state_independent"),
    ("trainer.compile=true", "trainer.compile"),
    ("trainer.accelerator=gpu", "on the CPU"),
])
def test_each_refusing_rule_refuses_numba_and_auto_falls_back(override, reason):
    cfg = load_config(None, ["algorithm.name=ppo", "env.id=Pendulum-v1", override], base={})
    assert reason in unsupported_config(cfg)
    with pytest.raises(ConfigError, match="trainer.kernels: numba cannot run this policy: .*" + reason[:10]):
        load_config(None, ["algorithm.name=ppo", "env.id=Pendulum-v1", override, "trainer.kernels=numba"], base={})


def test_a_supported_configuration_has_no_reason():
    cfg = load_config(None, ["algorithm.name=ppo", "env.id=Pendulum-v1", "algorithm.target_kl=0.02",
                             "algorithm.clip_range_vf=0.2", "env.action_bounds=rescale"], base={})
    assert unsupported_config(cfg) is None
