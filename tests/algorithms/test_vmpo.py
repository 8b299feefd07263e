"""V-MPO's pieces against the properties that public ports get wrong."""

import pytest
import torch
import yaml

from pgkit.algorithms.vmpo import decoupled_gaussian_kl, kl_penalty, policy_and_temperature_loss, top_half
from pgkit.cli import main
from pgkit.distributions import Categorical, Normal


def test_kl_terms_zero_for_identical_policies_and_positive_otherwise():
    mean, log_std = torch.randn(8, 3), torch.randn(8, 3) * 0.3
    same = decoupled_gaussian_kl(Normal(mean, log_std), Normal(mean.clone(), log_std.clone()))
    assert all(torch.equal(k, torch.zeros(8)) for k in same)
    kl_mean, kl_std = decoupled_gaussian_kl(Normal(mean, log_std), Normal(mean + 0.5, log_std - 0.2))
    assert (kl_mean > 0).all() and (kl_std > 0).all()
    logits = torch.randn(8, 4)
    assert torch.allclose(Categorical(logits).kl(Categorical(logits.clone())), torch.zeros(8), atol=1e-7)
    assert (Categorical(logits).kl(Categorical(logits + torch.randn(8, 4))) > 0).all()


def test_decoupled_kls_by_hand():
    # Target N(0, 1); online N(1, 2). KL_mu = KL(N(0,1)||N(1,1)) = 1/2. KL_S = KL(N(0,1)||N(0,2)) = log 2 + 1/8 - 1/2.
    target = Normal(torch.zeros(1, 1), torch.zeros(1, 1))
    online = Normal(torch.ones(1, 1), torch.full((1, 1), torch.log(torch.tensor(2.0)).item()))
    kl_mean, kl_std = decoupled_gaussian_kl(target, online)
    assert kl_mean.item() == pytest.approx(0.5)
    # Dividing (not multiplying) by the covariance: the std term is log(sigma/sigma_t) + sigma_t^2 / (2 sigma^2) - 1/2.
    assert kl_std.item() == pytest.approx(torch.log(torch.tensor(2.0)).item() + 1 / 8 - 0.5)


def test_psi_sums_to_one_over_the_top_half():
    advantage = torch.randn(101)
    out = policy_and_temperature_loss(torch.randn(101), advantage, torch.tensor(0.7), 0.01)
    assert out["psi"].shape == (51,)
    assert out["psi"].sum().item() == pytest.approx(1.0)
    selected = top_half(advantage)
    rest = torch.ones(101, dtype=torch.bool)
    rest[selected] = False
    assert advantage[selected].min() >= advantage[rest].max()


def test_psi_has_no_gradient_to_temperature_through_the_policy_loss():
    temperature = torch.tensor(1.0, requires_grad=True)
    out = policy_and_temperature_loss(torch.randn(10, requires_grad=True), torch.randn(10), temperature, 0.01)
    (grad,) = torch.autograd.grad(out["loss_policy"], temperature, allow_unused=True)
    assert grad is None


@pytest.mark.parametrize("start", [100.0, 0.01])
def test_temperature_loss_falls_from_far_off(start):
    torch.manual_seed(0)
    advantage = torch.randn(256) * 3
    raw = torch.tensor(float(start)).log().requires_grad_()  # optimise log(eta) for a well-scaled test
    opt = torch.optim.Adam([raw], lr=0.05)
    losses = []
    for _ in range(200):
        loss = policy_and_temperature_loss(torch.zeros(256), advantage, raw.exp(), 0.01)["loss_temperature"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1e-3
    assert 0.05 < raw.exp().item() < 50  # moved from the extreme towards the optimum


def test_temperature_loss_is_stable_for_large_advantages():
    out = policy_and_temperature_loss(torch.zeros(4), torch.tensor([1e4, 2e4, 3e4, 4e4]), torch.tensor(1.0), 0.01)
    assert torch.isfinite(out["loss_temperature"]) and torch.isfinite(out["psi"]).all()


@pytest.mark.parametrize(("kl", "rises"), [(0.1, True), (0.001, False)])
def test_alpha_rises_when_kl_exceeds_epsilon(kl, rises):
    raw = torch.tensor(0.0, requires_grad=True)
    alpha = torch.nn.functional.softplus(raw)
    loss = kl_penalty(torch.full((16,), kl), alpha, epsilon=0.01)["loss_alpha"]
    loss.backward()
    with torch.no_grad():
        new_alpha = torch.nn.functional.softplus(raw - 0.1 * raw.grad)
    assert (new_alpha > alpha.detach()) == rises


def _fit_vmpo(tmp_path, monkeypatch, iterations: int, trainer: dict | None = None, **algorithm) -> dict:
    config = {
        "algorithm": {"name": "vmpo", "num_steps": 16, "update_epochs": 2, "num_minibatches": 2, **algorithm},
        "env": {"id": "CartPole-v1"},
        "trainer": {"total_timesteps": 16 * iterations, "output_dir": "out", **(trainer or {})},
        "logger": {"enabled": False},
        "eval": {"every_n_iterations": 0},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", "c.yaml"]) == 0
    return torch.load("out/checkpoints/last.ckpt", weights_only=True)


def _target_synced(ckpt: dict) -> bool:
    state = ckpt["state_dict"]
    keys = [k.removeprefix("policy.") for k in state if k.startswith("policy.")]
    return all(torch.equal(state[f"policy.{k}"], state[f"target.{k}"]) for k in keys)


@pytest.mark.parametrize(("every", "synced"), [(1, True), (3, True), (2, False)])
def test_target_network_refreshes_on_iteration_boundaries(tmp_path, monkeypatch, every, synced):
    # 3 iterations: refreshed after each, or after the third (synced); every 2 ends one iteration behind.
    assert _target_synced(_fit_vmpo(tmp_path, monkeypatch, 3, target_update_iterations=every)) == synced


def test_skipped_batch_does_not_shift_the_target_refresh(tmp_path, monkeypatch):
    # The first minibatch's loss is non-finite and skipped; the refresh still happens at the iteration's end
    # (counting optimizer steps, as before, would have missed it).
    from pgkit.algorithms.vmpo import VMPO

    original, calls = VMPO.compute_loss, []

    def poisoned(self, batch):
        out = original(self, batch)
        calls.append(1)
        if len(calls) == 1:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(VMPO, "compute_loss", poisoned)
    assert _target_synced(_fit_vmpo(tmp_path, monkeypatch, 1, trainer={"skip_nonfinite_batches": True}))
    assert len(calls) == 4


def test_duals_keep_their_learning_rate_while_the_network_anneals(tmp_path, monkeypatch):
    ckpt = _fit_vmpo(tmp_path, monkeypatch, 4, learning_rate=1e-3, dual_learning_rate=0.02, anneal_lr=True)
    network, duals = ckpt["optimizer_states"][0]["param_groups"]
    assert network["lr"] == pytest.approx(1e-3 * (1 - 3 / 4))  # annealed at the start of the 4th iteration
    assert duals["lr"] == pytest.approx(0.02)


def test_categorical_alpha_starts_at_5_and_gaussian_at_1():
    from pgkit.config_loading import load_config

    disc = load_config(None, [], base={"algorithm": {"name": "vmpo"}, "env": {"id": "CartPole-v1"}}).init()
    cont = load_config(None, [], base={"algorithm": {"name": "vmpo"}, "env": {"id": "Pendulum-v1"}}).init()
    assert disc.duals()[1].tolist() == pytest.approx([5.0])
    assert cont.duals()[1].tolist() == pytest.approx([1.0, 1.0])
