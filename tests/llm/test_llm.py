"""Language models: the tiny built-in model, rollouts (left padding, EOS, masks, old log-probs of the sampling
policy, multi-turn tool use), reward functions and computers, the text algorithms' targets, and GRPO's loss against
TRL's own on identical batches."""

from __future__ import annotations

import types
from collections import defaultdict

import pytest
import torch

pytest.importorskip("transformers")

from pgkit.llm.envs import CalculatorEnv, SingleTurnEnv, evaluate_arithmetic
from pgkit.llm.model import load_model, position_ids, tiny_tokenizer, token_log_probs
from pgkit.llm.rewards import compute_scores, exact_number
from pgkit.llm.rollout import TextRollout
from pgkit.llm.updates import sequence_advantages, text_loss, token_targets
from pgkit.ops import leave_one_out_advantages


@pytest.fixture(scope="module")
def tiny():
    tokenizer = tiny_tokenizer()
    return tokenizer, load_model("builtin:tiny", None, torch.float32, tokenizer, seed=3)


def test_tiny_tokenizer_round_trips_and_pads_left(tiny):
    tokenizer, model = tiny
    text = "What is 2 + 3?\n<calc>2+3</calc>"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    batch = tokenizer(["ab", "hello"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, :3].tolist() == [tokenizer.pad_token_id] * 3  # left padding
    assert position_ids(batch["attention_mask"])[0].tolist() == [0, 0, 0, 0, 1]
    assert 50_000 < sum(p.numel() for p in model.parameters()) < 200_000


def test_old_log_probs_are_those_of_the_sampling_policy(tiny):
    """Log-probs from one forward pass over the finished, left-padded sequences equal those ``generate`` sampled
    from (temperature applied; padding positions made invisible)."""
    tokenizer, model = tiny
    batch = tokenizer(["ab", "hello", "x"], padding=True, return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(**batch, do_sample=True, max_new_tokens=7, temperature=0.7, top_k=0, top_p=1.0,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         output_scores=True, return_dict_in_generate=True)
    new = out.sequences[:, batch["input_ids"].shape[1] :]
    sampled = torch.stack(out.scores, 1).log_softmax(-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
    attention = torch.cat([batch["attention_mask"], torch.ones_like(new)], dim=1)
    with torch.no_grad():
        recomputed = token_log_probs(model, out.sequences, attention, new.shape[1], temperature=0.7)["log_prob"]
        at_one = token_log_probs(model, out.sequences, attention, new.shape[1], temperature=1.0)["log_prob"]
    torch.testing.assert_close(recomputed, sampled, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(at_one, sampled, atol=1e-3)  # the temperature is part of the sampling policy


def test_rollout_cuts_at_eos_and_masks_only_generated_tokens(tiny):
    tokenizer, model = tiny
    rollout = TextRollout(tokenizer, SingleTurnEnv, max_turns=1, max_new_tokens=12, top_p=1.0)
    records = [{"prompt": p} for p in ("abc", "z", "hello world", "q")] * 16
    torch.manual_seed(1)
    episodes = rollout.collect(model, records, temperature=1.5)
    ids = episodes.input_ids[:, -episodes.keep :]
    eos = tokenizer.eos_token_id
    ended = 0
    for row in range(len(records)):
        generated = ids[row][episodes.mask[row].bool()].tolist()
        assert 1 <= len(generated) <= 12
        if eos in generated:  # the end-of-sequence token is the last one trained on, nothing after it
            assert generated.index(eos) == len(generated) - 1
            ended += 1
        assert episodes.completions[row] == tokenizer.decode(generated, skip_special_tokens=True)
    assert ended > 0  # at temperature 1.5 some completions end early (the check above ran)
    assert episodes.attention_mask[:, 0].sum() < len(records)  # padding is on the left
    assert episodes.last_generated().tolist() == (episodes.mask.shape[1] - 1 - episodes.mask.flip(1).argmax(1)).tolist()


class ScriptedModel(torch.nn.Module):
    """Stands in for a causal LM in ``generate``: each call appends the next scripted text of each row."""

    def __init__(self, tokenizer, scripts: list[list[str]]) -> None:
        super().__init__()
        self.tokenizer, self.scripts, self.calls = tokenizer, scripts, 0
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.rows_seen: list[list[int]] = []

    def generate(self, input_ids, attention_mask, generation_config, tokenizer=None):
        turn, self.calls = self.calls, self.calls + 1
        rows = [i for i, script in enumerate(self.scripts) if len(script) > turn]
        self.rows_seen.append(rows)
        new = [self.tokenizer(self.scripts[i][turn], add_special_tokens=False)["input_ids"] for i in rows]
        width = max(len(n) for n in new) + 2  # generate pads finished rows to the longest
        out = torch.full((len(rows), width), self.tokenizer.pad_token_id)
        for r, n in enumerate(new):
            out[r, : len(n)] = torch.tensor(n)
        return torch.cat([input_ids, out], dim=1)


def test_multi_turn_tool_use_appends_results_unmasked(tiny):
    tokenizer, _ = tiny
    eos = tokenizer.eos_token
    scripts = [["Let me see <calc>12*7</calc>", "<answer>84</answer>" + eos],  # calls the tool, then answers
               ["<answer>85</answer>" + eos],  # answers at once (wrong)
               ["<calc>1/0</calc>", "<calc>2+2</calc>", "<calc>3+3</calc>"]]  # runs out of turns
    model = ScriptedModel(tokenizer, scripts)
    rollout = TextRollout(tokenizer, CalculatorEnv, max_turns=3, max_new_tokens=40, top_p=1.0)
    records = [{"prompt": "What is 12*7?", "answer": 84}, {"prompt": "What is 12*7?", "answer": 84},
               {"prompt": "What is 2+2?", "answer": 4}]
    episodes = rollout.collect(model, records, temperature=1.0)
    assert model.rows_seen == [[0, 1, 2], [0, 2], [2]]  # finished episodes stop generating
    assert episodes.completions[0] == "Let me see <calc>12*7</calc><result>84</result>\n<answer>84</answer>"
    assert episodes.completions[2].count("<result>") == 2 and "<result>error</result>" in episodes.completions[2]
    ids = episodes.input_ids[0, -episodes.keep :]
    trained = tokenizer.decode(ids[episodes.mask[0].bool()])
    assert trained == "Let me see <calc>12*7</calc><answer>84</answer>" + eos  # the tool's result is not trained on
    assert exact_number(episodes.completions, [84, 84, 4]) == [1.0, 0.0, 0.0]


def test_calculator_evaluates_arithmetic_only():
    assert evaluate_arithmetic("(3 + 4) * -2 / 7") == -2.0
    for bad in ("__import__('os')", "2 ** 10", "x + 1", "1/0"):
        with pytest.raises(ValueError):
            evaluate_arithmetic(bad)
    env = CalculatorEnv()
    assert "<calc>" in env.reset({"prompt": "hi"})
    assert env.step("<calc>2*(3+4)</calc>") == "<result>14</result>\n" and not env.is_terminal()
    assert env.step("no tool call") is None and env.is_terminal()


def test_reward_computers():
    values = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [2.0, 2.0]], dtype=torch.float64)
    weights = torch.tensor([1.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(compute_scores(values, weights, "absolute", 2), torch.tensor([1.0, 2.0, 1.5, 6.0],
                                                                                           dtype=torch.float64))
    assert compute_scores(values, weights, "relative", 2).tolist() == [0.0, 1.0, 0.0, 1.0]
    # Pareto within each pair: (1, 0) and (0, 1) do not dominate each other; (2, 2) dominates (0.5, 0.5).
    assert compute_scores(values, weights, "pareto", 2).tolist() == [1.0, 1.0, 0.0, 1.0]


def test_rloo_and_grpo_advantages_by_hand():
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 0.0, 4.0])
    # RLOO: each minus the mean of the other three of its group.
    expected = [1 - 11 / 3, 2 - 10 / 3, 3 - 3, 6 - 2, 0 - 4 / 3, 0 - 4 / 3, 0 - 4 / 3, 4 - 0]
    torch.testing.assert_close(leave_one_out_advantages(scores.view(2, 4)).reshape(-1), torch.tensor(expected))
    rloo = types.SimpleNamespace(name="rloo", normalize_advantage=False)
    torch.testing.assert_close(sequence_advantages(rloo, scores, 4), torch.tensor(expected))
    grpo = types.SimpleNamespace(name="grpo", baseline="mean", scale_rewards="group")
    group = torch.tensor([1.0, 2.0, 3.0, 6.0])
    torch.testing.assert_close(sequence_advantages(grpo, scores, 4)[:4], (group - 3.0) / (group.std() + 1e-4))


def test_ppo_token_targets_by_hand():
    """Score at the last generated token, per-token KL penalty, GAE over tokens with gamma 1, nothing past the end,
    an observation token between turns bootstraps like any state."""
    algo = types.SimpleNamespace(kl_coef=0.5, gamma=1.0, gae_lambda=1.0)
    mask = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0]])  # prompt, turn 1, observation, turn 2, padding
    old = torch.tensor([[0.0, -1.0, 0.0, -2.0, 0.0]])
    ref = torch.tensor([[0.0, -1.5, 0.0, -1.0, 0.0]])
    value = torch.tensor([[9.0, 1.0, 2.0, 3.0, 9.0]])
    last = torch.tensor([3])
    _, returns = token_targets(algo, torch.tensor([10.0]), old, ref, value, mask, last)
    # KL per token: 0.5 at token 1 and -1 at token 3, so rewards -0.25 at token 1 and 10 + 0.5 at token 3; the
    # returns with lambda 1 are the reward-to-go from each token.
    torch.testing.assert_close(returns[0, 1:4], torch.tensor([10.25, 10.5, 10.5]))
    assert returns[0, 4] == 0.0


# --------------------------------------------------------------------------------------------- against TRL
def _trl_loss(loss_type, level, beta, log_prob, old, ref, advantage, mask, epsilon, epsilon_high):
    from trl.trainer.grpo_trainer import GRPOTrainer

    accelerator = types.SimpleNamespace(num_processes=1, gather=lambda x: x, reduce=lambda x, reduction: x,
                                        gather_for_metrics=lambda x: x, sync_gradients=True)
    trainer = types.SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (log_prob, torch.zeros_like(log_prob), None),
        top_entropy_quantile=1.0, aux_loss_enabled=False, off_policy_mask_threshold=None,
        importance_sampling_level=level, beta=beta, loss_type=loss_type, epsilon_low=epsilon,
        epsilon_high=epsilon_high, use_vllm=False, model=types.SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, max_completion_length=log_prob.shape[1], accelerator=accelerator,
        args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        _entropy_bonus_enabled=False, _metrics={"train": defaultdict(list)},
    )
    inputs = {"prompt_ids": torch.zeros(log_prob.shape[0], 0, dtype=torch.long),
              "prompt_mask": torch.zeros(log_prob.shape[0], 0, dtype=torch.long),
              "completion_ids": torch.zeros_like(log_prob, dtype=torch.long), "completion_mask": mask,
              "advantages": advantage, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum()}
    return GRPOTrainer._compute_loss(trainer, None, inputs)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_equals_trl(loss_type, level, beta):
    pytest.importorskip("trl")
    g = torch.Generator().manual_seed(hash((loss_type, level, beta)) % 2**31)
    batch, length = 6, 9
    old = -torch.rand(batch, length, generator=g, dtype=torch.float64) * 3
    log_prob = old + 0.3 * torch.randn(batch, length, generator=g, dtype=torch.float64)
    ref = old + 0.2 * torch.randn(batch, length, generator=g, dtype=torch.float64)
    lengths = torch.tensor([9, 3, 7, 1, 5, 9])
    mask = (torch.arange(length) < lengths.unsqueeze(1)).to(torch.float64)
    advantage = torch.randn(batch, generator=g, dtype=torch.float64)
    expected = _trl_loss(loss_type, level, beta, log_prob, old, ref, advantage, mask, 0.2, 0.28)
    algo = types.SimpleNamespace(name="grpo", epsilon=0.2, epsilon_high=0.28, ent_coef=0.0, loss_type=loss_type,
                                 importance_sampling_level=level)
    ours = text_loss(algo, {"log_prob": log_prob, "old_log_prob": old, "ref_log_prob": ref, "mask": mask,
                            "entropy": torch.zeros_like(log_prob), "advantage": advantage}, beta, length,
                     float(mask.sum()))
    torch.testing.assert_close(ours["loss"], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["ppo", "rloo"])
def test_text_losses_log_the_gymnasium_names(name):
    # The same term logs under one name in both worlds: train/policy_loss, train/value_loss, train/entropy.
    rows, length = 3, 4
    log_prob = -torch.rand(rows, length, dtype=torch.float64)
    mask = torch.ones(rows, length, dtype=torch.float64)
    algo = types.SimpleNamespace(name=name, ent_coef=0.01, vf_coef=0.5, clip_range=0.2, cliprange_value=0.2)
    batch = {"log_prob": log_prob, "old_log_prob": log_prob.detach(), "mask": mask, "entropy": torch.ones_like(mask),
             "advantage": torch.randn(rows) if name == "rloo" else torch.randn(rows, length, dtype=torch.float64),
             "value": torch.zeros_like(mask), "old_value": torch.zeros_like(mask), "return": torch.ones_like(mask)}
    terms = text_loss(algo, batch, 0.0, length, float(mask.sum()))
    gymnasium_ppo = {"loss", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"}  # PPOModule's
    assert set(terms) == (gymnasium_ppo if name == "ppo" else {"loss", "policy_loss", "entropy"})
    assert float(terms["entropy"]) == pytest.approx(1.0)
    if name == "ppo":
        assert float(terms["value_loss"]) == pytest.approx(0.5)  # 0.5 mean((0 - 1)^2)
