"""PPO's minibatch step for a plain-MLP actor-critic as one compiled pass (numba): forward, loss, gradients, clipping.

Why by hand: at PPO's MuJoCo sizes (minibatches of 64 rows, two 64-64 tanh MLPs) a minibatch step through torch's
eager autograd costs about 1.3 ms on one CPU thread, and almost all of it is the fixed cost of ~100 small operator
calls (forward, the backward graph, clipping), not arithmetic: the arithmetic is about 2M multiply-adds. torch.compile
removes that overhead but costs about 36 s of compiling per process (docs/benchmarks.md), a quarter of a whole run.
No maintained library trains a small MLP on CPU without either cost, so this module writes the step out: the
forward of both trunks and heads, :func:`pgkit.algorithms.ppo.ppo_loss` with its terms, the gradient of the loss for
every parameter by the chain rule, and the global-norm clip of ``torch.nn.utils.clip_grad_norm_``. The optimizer
then steps on the gradients written here (:class:`pgkit.algorithms.adam.Adam`: torch's Adam, with its CPU step as one
compiled loop). :func:`act_mlp_normal` is the acting step of the same networks with a Gaussian head.

Everything is checked against autograd on the module path (``tests/algorithms/test_mlp_kernels.py``): the loss terms
and each gradient to float32 rounding, for both activations, both heads, each value-clipping mode and the entropy term.

Layouts follow torch's: a linear layer's weight is ``[out, in]`` and its bias ``[out]``; rows are minibatch rows.
Sums are reordered for vector instructions (fastmath ``reassoc``, which changes float32 results by rounding only);
no finite-math assumption is made, so NaN and inf spread as in torch and the caller's finiteness checks see them.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from pgkit.distributions.normal import _LOG_SQRT_2PI  # numba freezes module-level floats into the compiled code

#: Reassociate sums (so dot products vectorise) and fuse multiply-adds; NaN and inf keep IEEE semantics.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

#: The loss terms the kernels write, in order (the keys of PPO's ``compute_loss``, then the gradient norm).
TERMS = ("loss", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm")

#: ``head`` codes: a diagonal Gaussian with a state-independent log-std, or one categorical.
NORMAL, CATEGORICAL = 0, 1
#: ``value_clip_mode`` codes, as :func:`pgkit.algorithms.ppo.ppo_loss`'s modes.
VALUE_CLIP_MAX, VALUE_CLIP_CLIPPED = 0, 1


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _matmul_nt(a, b, out):  # pragma: no cover - compiled
    """``out[n, o] = sum_i a[n, i] * b[o, i]``: both operands read along contiguous rows (a vectorised dot)."""
    for n in range(a.shape[0]):
        for o in range(b.shape[0]):
            total = np.float32(0.0)
            for i in range(a.shape[1]):
                total += a[n, i] * b[o, i]
            out[n, o] = total


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _linear(x, weight, bias):  # pragma: no cover - compiled
    """``x @ weight.T + bias``."""
    out = np.empty((x.shape[0], weight.shape[0]), dtype=x.dtype)
    _matmul_nt(x, weight, out)
    for n in range(out.shape[0]):
        for o in range(out.shape[1]):
            out[n, o] += bias[o]
    return out


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _linear_grad(x, weight, dz, grad_weight, grad_bias, want_dx):  # pragma: no cover - compiled
    """Gradients of ``z = x @ weight.T + bias`` from ``dz = dL/dz``: written into ``grad_weight`` (``dz.T @ x``) and
    ``grad_bias`` (``dz`` summed over rows); returns ``dL/dx = dz @ weight`` when ``want_dx`` (else an empty array)."""
    dz_t = np.ascontiguousarray(dz.T)
    _matmul_nt(dz_t, np.ascontiguousarray(x.T), grad_weight)
    for o in range(dz_t.shape[0]):
        total = np.float32(0.0)
        for n in range(dz_t.shape[1]):
            total += dz_t[o, n]
        grad_bias[o] = total
    if not want_dx:
        return np.empty((0, 0), dtype=x.dtype)
    dx = np.empty_like(x)
    _matmul_nt(dz, np.ascontiguousarray(weight.T), dx)
    return dx


@njit(cache=True, nogil=True, fastmath=_FASTMATH, inline="always")
def _tanh(x):  # pragma: no cover - compiled
    """``tanh(x)`` as ``sign(x) (1 - e) / (1 + e)`` with ``e = exp(-2|x|)``: one float32 exp, which vectorises (libm's
    tanh does not, and costs 3x as much here). Within 2.5e-7 of ``torch.tanh``; NaN stays NaN, +-inf give +-1."""
    e = np.exp(np.float32(-2.0) * abs(x))
    t = (np.float32(1.0) - e) / (np.float32(1.0) + e)
    return t if x >= 0 else -t


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _trunk(x, weights, biases, relu):  # pragma: no cover - compiled
    """The activations ``[x, h1, ..., hL]`` of an MLP of ``Linear -> tanh`` (or ReLU) layers."""
    hs = [x]
    h = x
    for layer in range(len(weights)):
        h = _linear(h, weights[layer], biases[layer])
        flat = h.reshape(-1)
        if relu:
            for k in range(flat.size):
                flat[k] = max(flat[k], np.float32(0.0))
        else:
            for k in range(flat.size):
                flat[k] = _tanh(flat[k])
        hs.append(h)
    return hs


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _trunk_grad(hs, weights, d_out, grad_weights, grad_biases, relu):  # pragma: no cover - compiled
    """Back through :func:`_trunk` from ``d_out = dL/dhL``, writing each layer's gradients."""
    dh = d_out
    for layer in range(len(weights) - 1, -1, -1):
        h = hs[layer + 1]
        dz = np.empty_like(h)
        for n in range(h.shape[0]):
            for o in range(h.shape[1]):
                if relu:
                    dz[n, o] = dh[n, o] if h[n, o] > 0.0 else 0.0
                else:
                    dz[n, o] = dh[n, o] * (1.0 - h[n, o] * h[n, o])
        dh = _linear_grad(hs[layer], weights[layer], dz, grad_weights[layer], grad_biases[layer], layer > 0)


@njit(cache=True, nogil=True)
def _normalized(advantage):  # pragma: no cover - compiled
    """``(A - mean) / (std + 1e-8)`` with the unbiased std, as :func:`pgkit.ops.normalize` (in float64)."""
    count = advantage.size
    mean = 0.0
    for a in advantage:
        mean += a
    mean /= count
    var = 0.0
    for a in advantage:
        var += (a - mean) ** 2
    std = math.sqrt(var / (count - 1)) if count > 1 else math.nan
    out = np.empty(count)
    for n in range(count):
        out[n] = (advantage[n] - mean) / (std + 1e-8)
    return out


@njit(cache=True, nogil=True)
def _sum_squares(a):  # pragma: no cover - compiled
    total = 0.0
    for x in a.reshape(-1):
        total += float(x) * float(x)
    return total


@njit(cache=True, nogil=True)
def _scale(a, factor):  # pragma: no cover - compiled
    flat = a.reshape(-1)
    for k in range(flat.size):
        flat[k] *= factor


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def ppo_mlp_step(
    obs, action, old_log_prob, advantage, old_value, value_target,
    actor_w, actor_b, head_w, head_b, log_std, critic_w, critic_b, value_w, value_b,
    g_actor_w, g_actor_b, g_head_w, g_head_b, g_log_std, g_critic_w, g_critic_b, g_value_w, g_value_b,
    head, relu, clip_range, vf_coef, ent_coef, value_clip, value_clip_mode, normalize_advantage, max_grad_norm,
    terms,
):  # pragma: no cover - compiled
    """One PPO minibatch: the loss of :func:`pgkit.algorithms.ppo.ppo_loss` weighted as PPO weights it, and its
    gradient written into the ``g_*`` arrays (clipped to ``max_grad_norm`` when it is positive).

    The actor is ``actor_w/actor_b`` (the trunk's layers) then ``head_w/head_b``: the mean of a Gaussian with
    log-std ``log_std`` (``head == NORMAL``; ``action`` holds the raw samples) or the logits of a categorical
    (``head == CATEGORICAL``; ``action`` holds indices, ``log_std`` is unused). The critic is ``critic_w/critic_b``
    then ``value_w/value_b``. ``value_clip`` below 0 means no value clipping. ``terms`` receives :data:`TERMS`.
    """
    rows = obs.shape[0]
    h_actor = _trunk(obs, actor_w, actor_b, relu)
    h_critic = _trunk(obs, critic_w, critic_b, relu)
    out = _linear(h_actor[-1], head_w, head_b)
    value = _linear(h_critic[-1], value_w, value_b)
    adv = _normalized(advantage) if normalize_advantage else advantage.astype(np.float64)

    # Per row: log-prob and entropy of the action distribution (and what their gradients need).
    width = out.shape[1]
    log_prob = np.empty(rows)
    entropy = np.empty(rows)
    if head == NORMAL:
        inv_std = np.exp(-log_std.astype(np.float64))
        log_std_sum = 0.0
        for j in range(width):
            log_std_sum += log_std[j]
        z = np.empty((rows, width))
        for n in range(rows):
            total = 0.0
            for j in range(width):
                z[n, j] = (action[n, j] - out[n, j]) * inv_std[j]
                total += z[n, j] * z[n, j]
            log_prob[n] = -0.5 * total - log_std_sum - _LOG_SQRT_2PI * width
            entropy[n] = (0.5 + _LOG_SQRT_2PI) * width + log_std_sum
    else:
        log_p = np.empty((rows, width))
        for n in range(rows):
            top = -np.inf
            for k in range(width):
                top = max(top, out[n, k])
            total = 0.0
            for k in range(width):
                total += math.exp(out[n, k] - top)
            lse = top + math.log(total)
            ent = 0.0
            for k in range(width):
                log_p[n, k] = out[n, k] - lse
                ent -= math.exp(log_p[n, k]) * log_p[n, k]
            log_prob[n] = log_p[n, int(action[n, 0])]
            entropy[n] = ent

    # The loss terms and dL/d(log_prob), dL/d(value), row by row (each mean is over the minibatch's rows).
    d_log_prob = np.empty(rows)
    d_value = np.empty((rows, 1), dtype=value.dtype)
    policy_loss = value_loss = mean_entropy = approx_kl = clipped = 0.0
    low, high = 1.0 - clip_range, 1.0 + clip_range
    for n in range(rows):
        log_ratio = log_prob[n] - old_log_prob[n]
        ratio = math.exp(log_ratio)
        unclipped, bounded = adv[n] * ratio, adv[n] * min(max(ratio, low), high)
        policy_loss -= min(unclipped, bounded)
        # The surrogate's gradient flows through the unclipped term when it is the smaller (or they tie).
        d_log_prob[n] = -unclipped / rows if unclipped <= bounded else 0.0
        approx_kl += math.expm1(log_ratio) - log_ratio
        clipped += 1.0 if abs(ratio - 1.0) > clip_range else 0.0
        mean_entropy += entropy[n]

        v = float(value[n, 0])
        error = v - value_target[n]
        if value_clip < 0.0:
            value_loss += error * error
            d_error = 2.0 * error
        else:
            delta = v - old_value[n]
            inside = delta >= -value_clip and delta <= value_clip
            clipped_error = old_value[n] + min(max(delta, -value_clip), value_clip) - value_target[n]
            d_clipped = 2.0 * clipped_error if inside else 0.0
            if value_clip_mode == VALUE_CLIP_CLIPPED:
                value_loss += clipped_error * clipped_error
                d_error = d_clipped
            elif error * error > clipped_error * clipped_error:
                value_loss += error * error
                d_error = 2.0 * error
            elif error * error < clipped_error * clipped_error:
                value_loss += clipped_error * clipped_error
                d_error = d_clipped
            else:  # a tie: torch.max gives each side half the gradient
                value_loss += error * error
                d_error = error + 0.5 * d_clipped
        d_value[n, 0] = vf_coef * 0.5 * d_error / rows
    policy_loss /= rows
    value_loss = 0.5 * value_loss / rows
    mean_entropy /= rows
    d_entropy = -ent_coef / rows  # the loss has ent_coef * -mean(entropy)

    # dL/d(head outputs) (and dL/d(log_std) for the Gaussian).
    d_out = np.empty_like(out)
    if head == NORMAL:
        for j in range(width):
            total = 0.0
            for n in range(rows):
                total += d_log_prob[n] * (z[n, j] * z[n, j] - 1.0)
                d_out[n, j] = d_log_prob[n] * z[n, j] * inv_std[j]
            g_log_std[j] = total + d_entropy * rows
    else:
        for n in range(rows):
            taken = int(action[n, 0])
            for k in range(width):
                p = math.exp(log_p[n, k])
                grad = d_log_prob[n] * ((1.0 if k == taken else 0.0) - p)
                d_out[n, k] = grad - d_entropy * p * (log_p[n, k] + entropy[n])

    dh = _linear_grad(h_actor[-1], head_w, d_out, g_head_w, g_head_b, True)
    _trunk_grad(h_actor, actor_w, dh, g_actor_w, g_actor_b, relu)
    dh = _linear_grad(h_critic[-1], value_w, d_value, g_value_w, g_value_b, True)
    _trunk_grad(h_critic, critic_w, dh, g_critic_w, g_critic_b, relu)

    grads = [g_head_w, g_value_w]
    for layer in range(len(g_actor_w)):
        grads.append(g_actor_w[layer])
    for layer in range(len(g_critic_w)):
        grads.append(g_critic_w[layer])
    vectors = [g_head_b, g_log_std, g_value_b]
    for layer in range(len(g_actor_b)):
        vectors.append(g_actor_b[layer])
    for layer in range(len(g_critic_b)):
        vectors.append(g_critic_b[layer])
    total = 0.0
    for g in grads:
        total += _sum_squares(g)
    for g in vectors:
        total += _sum_squares(g)
    norm = math.sqrt(total)
    if max_grad_norm > 0.0:  # as torch.nn.utils.clip_grad_norm_: min(1, c / (norm + 1e-6)), NaN when the norm is
        factor = max_grad_norm / (norm + 1e-6)
        if factor >= 1.0:  # a NaN factor fails this and spreads into every gradient, as in torch
            factor = 1.0
        for g in grads:
            _scale(g, factor)
        for g in vectors:
            _scale(g, factor)

    terms[0] = policy_loss + vf_coef * value_loss - ent_coef * mean_entropy
    terms[1] = policy_loss
    terms[2] = value_loss
    terms[3] = mean_entropy
    terms[4] = approx_kl / rows
    terms[5] = clipped / rows
    terms[6] = norm


#: ``bounds`` codes of :func:`act_mlp_normal`, as :class:`pgkit.environments.actions.ActionAdapter`'s modes.
BOUNDS_CLIP, BOUNDS_RESCALE, BOUNDS_NONE = 0, 1, 2


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def act_mlp_normal(
    obs, noise, actor_w, actor_b, head_w, head_b, log_std, critic_w, critic_b, value_w, value_b, relu, bounds, low,
    high,
):  # pragma: no cover - compiled
    """One acting step of the Gaussian policy of :func:`ppo_mlp_step`'s layout for each row of ``obs``, from the
    standard-normal ``noise``: ``(raw, log_prob, value, env_action)`` with ``raw = mean + exp(log_std) noise``, its
    log-density ``sum(-noise^2 / 2 - log_std) - A log sqrt(2 pi)`` (as :meth:`pgkit.distributions.Normal.
    sample_with_log_prob`), and the env action by ``bounds`` (clip to ``[low, high]``, rescale from ``[-1, 1]``, or
    none)."""
    rows, width = noise.shape
    mean = _linear(_trunk(obs, actor_w, actor_b, relu)[-1], head_w, head_b)
    value = _linear(_trunk(obs, critic_w, critic_b, relu)[-1], value_w, value_b)[:, 0].copy()
    raw = np.empty_like(mean)
    env_action = np.empty_like(mean)
    log_prob = np.empty(rows, dtype=mean.dtype)
    log_std_sum = 0.0
    for j in range(width):
        log_std_sum += log_std[j]
    for n in range(rows):
        total = 0.0
        for j in range(width):
            z = noise[n, j]
            a = mean[n, j] + np.exp(log_std[j]) * z
            raw[n, j] = a
            total += z * z
            if bounds == BOUNDS_CLIP:
                env_action[n, j] = min(max(a, low[j]), high[j])
            elif bounds == BOUNDS_RESCALE:
                env_action[n, j] = low[j] + (min(max(a, -1.0), 1.0) + 1.0) * 0.5 * (high[j] - low[j])
            else:
                env_action[n, j] = a
        log_prob[n] = -0.5 * total - log_std_sum - _LOG_SQRT_2PI * width
    return raw, log_prob, value, env_action
