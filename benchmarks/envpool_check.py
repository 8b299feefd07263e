"""envpool's MuJoCo tasks against gymnasium's v5 tasks: static facts, step-for-step dynamics, autoreset, versions.

Run: ``pip install envpool && python benchmarks/envpool_check.py`` (a few seconds, one process, one thread).

For HalfCheetah-v5, Hopper-v5 and Walker2d-v5 (envpool registers them under the same ids) it prints a markdown report:

1. Static facts of each side (spaces, ``dt``/frame_skip, episode limit, reward weights, healthy ranges, reset noise,
   model XML) and the ones that differ; the empirical reset-noise distribution from repeated resets.
2. Dynamics: gymnasium's state is copied from envpool's observation (``qpos = [0, obs[:nq-1]]``, ``qvel = obs[nq-1:]``;
   the excluded x position is translation-invariant, which is checked on gymnasium alone), then both get the same
   fixed-seed random actions. Reported: one trajectory from reset, and a one-step check re-synced before every step
   over many states, next to a gymnasium-vs-gymnasium floor for the same state-copy method.
3. Autoreset: what envpool returns on the step that ends an episode and on the next one, against gymnasium's vector
   envs (``AutoresetMode``), and whether the time limit shows up as ``truncated``.
4. Versions: envpool, gymnasium, the mujoco python package, and the MuJoCo that envpool's extension was built with.

Needs envpool (``pip install envpool``); without it the script says so and exits 0. MuJoCo 4's python package prints
a deprecation warning (``settotalmass``) on stderr each time HalfCheetah's XML is loaded; the report is on stdout.
"""

from __future__ import annotations

import ctypes
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

try:
    import envpool
except ImportError:  # reported in main()
    envpool = None

TASKS = ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5")
TOL = 1e-6
TRAJ_STEPS = 200
RESYNC_STEPS = 1000
RESETS = 200
SEED = 0

# gymnasium attribute on env.unwrapped -> common name
GYM_ATTRS = {
    "_forward_reward_weight": "forward_reward_weight",
    "_ctrl_cost_weight": "ctrl_cost_weight",
    "_healthy_reward": "healthy_reward",
    "_terminate_when_unhealthy": "terminate_when_unhealthy",
    "_healthy_z_range": "healthy_z_range",
    "_healthy_angle_range": "healthy_angle_range",
    "_healthy_state_range": "healthy_state_range",
    "_reset_noise_scale": "reset_noise_scale",
    "_exclude_current_positions_from_observation": "exclude_current_positions_from_observation",
}
EP_SCALARS = (
    "forward_reward_weight", "ctrl_cost_weight", "healthy_reward", "terminate_when_unhealthy", "reset_noise_scale",
    "exclude_current_positions_from_observation",
)
EP_RANGES = {  # common name -> (min key, max key); a missing max means no upper bound
    "healthy_z_range": ("healthy_z_min", "healthy_z_max"),
    "healthy_angle_range": ("healthy_angle_min", "healthy_angle_max"),
    "healthy_state_range": ("healthy_state_min", "healthy_state_max"),
    "obs velocity clip": ("velocity_min", "velocity_max"),
}


def fmt(v: Any) -> str:
    if isinstance(v, bool | np.bool_):
        return str(bool(v))
    if isinstance(v, float | np.floating):
        return f"{float(v):.4g}"
    if isinstance(v, tuple | list):
        return "(" + ", ".join(fmt(x) for x in v) + ")"
    return str(v)


def box_summary(space: Any) -> str:
    low, high = np.asarray(space.low), np.asarray(space.high)
    lo = fmt(low.flat[0]) if np.all(low == low.flat[0]) else "mixed"
    hi = fmt(high.flat[0]) if np.all(high == high.flat[0]) else "mixed"
    return f"{space.shape} [{lo}, {hi}] {space.dtype}"


def make_ep(task: str, seed: int, **kwargs: Any) -> Any:
    return envpool.make_gymnasium(task, num_envs=1, batch_size=1, num_threads=1, seed=seed, **kwargs)


def ep_step(env: Any, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
    obs, rew, term, trunc, info = env.step(np.asarray(action, dtype=np.float64)[None])
    return obs[0], rew[0], bool(term[0]), bool(trunc[0]), info


def nominal_obs(genv: gym.Env) -> np.ndarray:
    u = genv.unwrapped
    return np.concatenate([u.init_qpos[1:], u.init_qvel])


def sync_from_obs(genv: gym.Env, obs: np.ndarray, x: float = 0.0) -> None:
    """Set gymnasium's qpos/qvel from an observation that excludes qpos[0]; qpos[0] := x."""
    u = genv.unwrapped
    nq = u.model.nq
    u.set_state(np.concatenate([[x], obs[: nq - 1]]), np.array(obs[nq - 1 :]))


def velocity_clipped(obs: np.ndarray, nq: int, clip: float | None) -> bool:
    return clip is not None and bool(np.any(np.abs(obs[nq - 1 :]) >= clip))


def gym_obs_velocity_clip(genv: gym.Env) -> float | None:
    """Measure gymnasium's velocity clipping: observe a state with |qvel| = 1000."""
    u = genv.unwrapped
    u.set_state(u.init_qpos.copy(), np.full(u.model.nv, 1000.0))
    vel = u._get_obs()[u.model.nq - 1 :]
    return None if np.all(vel == 1000.0) else float(np.max(np.abs(vel)))


# ---------------------------------------------------------------------------------------------------------- 1. static


def static_facts(task: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    genv = gym.make(task)
    genv.reset(seed=SEED)
    u = genv.unwrapped
    g: dict[str, Any] = {
        "observation space": box_summary(genv.observation_space),
        "action space": box_summary(genv.action_space),
        "frame_skip": u.frame_skip,
        "model timestep": u.model.opt.timestep,
        "dt": u.dt,
        "max_episode_steps": genv.spec.max_episode_steps,
        "reward_threshold": genv.spec.reward_threshold,
        "xml file": Path(u.fullpath).name,
    }
    for attr, name in GYM_ATTRS.items():
        if hasattr(u, attr):
            v = getattr(u, attr)
            g[name] = tuple(float(x) for x in v) if isinstance(v, tuple) else v
    g["obs velocity clip"] = "none" if (c := gym_obs_velocity_clip(genv)) is None else (-c, c)
    gym_xml = u.fullpath
    genv.close()

    spec = envpool.make_spec(task)
    cfg = dict(spec.config._asdict())
    # envpool 1.2.5 opens <stem>_envpool.xml when it exists (the plain file is the legacy one)
    asset_dir = Path(cfg["base_path"]) / "mujoco" / "assets_gym"
    ep_xml = asset_dir / cfg["xml_file"].replace(".xml", "_envpool.xml")
    if not ep_xml.exists():
        ep_xml = asset_dir / cfg["xml_file"]
    ep_model = mujoco.MjModel.from_xml_path(str(ep_xml))
    e: dict[str, Any] = {
        "observation space": box_summary(spec.observation_space),
        "action space": box_summary(spec.action_space),
        "frame_skip": cfg["frame_skip"],
        "model timestep": ep_model.opt.timestep,
        "dt": cfg["frame_skip"] * ep_model.opt.timestep,
        "max_episode_steps": cfg["max_episode_steps"],
        "reward_threshold": cfg.get("reward_threshold"),
        "xml file": cfg["xml_file"],
    }
    for name in EP_SCALARS:
        if name in cfg:
            e[name] = cfg[name]
    for name, (lo, hi) in EP_RANGES.items():
        if lo in cfg:
            e[name] = (float(cfg[lo]), float(cfg.get(hi, np.inf)))
    e.setdefault("obs velocity clip", "none")
    extra = {
        k: v for k, v in cfg.items()
        if k.startswith(("legacy_", "post_constraint", "frame_stack")) and k not in e
    }

    def canon(path: str | Path) -> str:
        return ET.canonicalize(from_file=str(path), with_comments=False, strip_text=True)

    xml_info = {"envpool xml": ep_xml.name, "same xml (canonical, no comments)": canon(ep_xml) == canon(gym_xml)}
    return g, e, {**extra, **xml_info}


def reset_noise(task: str, scale_g: float, scale_e: float) -> list[str]:
    genv = gym.make(task)
    nom = nominal_obs(genv)
    nq = genv.unwrapped.model.nq
    g_obs = np.array([genv.reset(seed=SEED + i)[0] for i in range(RESETS)])
    genv.close()
    ep = make_ep(task, SEED)
    e_obs = np.array([ep.reset()[0][0] for _ in range(RESETS)])
    ep.close()
    rows = []
    for side, obs, s in (("gymnasium", g_obs, scale_g), ("envpool", e_obs, scale_e)):
        d = (obs - nom) / s
        p, v = d[:, : nq - 1], d[:, nq - 1 :]
        rows.append(
            f"| {side} | {np.abs(p).max():.3f} | {p.std():.3f} | {np.abs(v).max():.3f} | {v.std():.3f} |"
        )
    return rows


# -------------------------------------------------------------------------------------------------------- 2. dynamics


def trajectory(task: str) -> dict[str, Any]:
    """One episode from envpool's reset state, same actions on both sides."""
    ep = make_ep(task, SEED)
    genv = gym.make(task)
    genv.reset(seed=SEED)
    u = genv.unwrapped
    obs_e = ep.reset()[0][0]
    sync_from_obs(genv, obs_e)
    copy_err = float(np.abs(u._get_obs() - obs_e).max())
    acts = np.random.default_rng(SEED).uniform(-1.0, 1.0, (TRAJ_STEPS, u.model.nu))
    fwd_w = u._forward_reward_weight
    obs_d, rew_d, rew_d32, xv_d, comp_d = [], [], [], [], {}
    flags_agree, steps, end = True, 0, "limit of the check"
    g_keys: set[str] = set()
    e_keys: set[str] = set()
    rew_dtypes = ("", "")
    for t in range(TRAJ_STEPS):
        o_e, r_e, te_e, tr_e, i_e = ep_step(ep, acts[t])
        o_g, r_g, te_g, tr_g, i_g = genv.step(acts[t])
        steps = t + 1
        rew_dtypes = (type(r_g).__name__, str(np.asarray(r_e).dtype))
        g_keys |= set(i_g)
        e_keys |= {k for k in i_e if k not in ("env_id", "players", "elapsed_step")}
        obs_d.append(float(np.abs(o_g - o_e).max()))
        rew_d.append(abs(float(r_g) - float(r_e)))
        rew_d32.append(abs(float(np.float32(r_g)) - float(r_e)))
        xv_d.append(abs(float(i_g["x_velocity"]) - float(i_e["x_velocity"][0])))
        # envpool names HalfCheetah's forward term reward_run; gymnasium v5 names it reward_forward
        for gk, ek in (("reward_forward", "reward_run"), ("reward_ctrl", "reward_ctrl")):
            if gk in i_g and ek in i_e:
                comp_d.setdefault(f"{gk} vs {ek}", []).append(abs(float(i_g[gk]) - float(i_e[ek][0])))
        if "reward_forward" in i_g:
            comp_d.setdefault("reward_forward vs forward_w*x_velocity(envpool)", []).append(
                abs(float(i_g["reward_forward"]) - fwd_w * float(i_e["x_velocity"][0]))
            )
        flags_agree &= (te_g, tr_g) == (te_e, tr_e)
        if te_g or tr_g or te_e or tr_e:
            end = f"gymnasium (term, trunc)=({te_g}, {tr_g}), envpool ({te_e}, {tr_e})"
            break
    ep.close()
    genv.close()
    chaos = gym_chaos(task, obs_e, acts)
    first = next((i + 1 for i, d in enumerate(obs_d) if d > TOL), None)
    first_r = next((i + 1 for i, d in enumerate(rew_d) if d > TOL), None)
    pre = steps if first is None else max(first - 1, 1)  # steps before the observations part
    return {
        "copy_err": copy_err, "steps": steps, "end": end, "obs_d": obs_d, "rew_d": rew_d, "rew_d32": rew_d32,
        "xv_d": max(xv_d), "flags_agree": flags_agree, "pre": pre, "rew_pre": max(rew_d[:pre]),
        "comp_d": {k: max(v[:pre]) for k, v in comp_d.items()},
        "first_obs": first, "first_rew": first_r, "g_keys": sorted(g_keys), "e_keys": sorted(e_keys),
        "rew_dtypes": rew_dtypes, "chaos": chaos,
    }


def resync(task: str, clip: float | None, full_state: bool) -> dict[str, Any]:
    """One-step checks: before every envpool step, copy envpool's state (from its observation) into gymnasium.

    ``full_state``: envpool is made with ``exclude_current_positions_from_observation=False`` and, where it has them,
    ``velocity_min/max=-inf/inf``, so its observation is the whole (qpos, qvel); compared against gymnasium's qpos/qvel.
    Otherwise the default observation is used and states with a clipped velocity are skipped.
    """
    genv = gym.make(task)
    genv.reset(seed=SEED + 1)
    u = genv.unwrapped
    nq = u.model.nq
    kwargs: dict[str, Any] = {}
    if full_state:
        kwargs["exclude_current_positions_from_observation"] = False
        if clip is not None:
            kwargs.update(velocity_min=-np.inf, velocity_max=np.inf)
    ep = make_ep(task, SEED + 1, **kwargs)
    acts = np.random.default_rng(SEED + 1).uniform(-1.0, 1.0, (RESYNC_STEPS, u.model.nu))
    obs_e = ep.reset()[0][0]
    done = False
    obs_d, rew_d, rew_d32 = [], [], []
    term_mismatch = skipped_clip = skipped_reset = terms = 0
    for t in range(RESYNC_STEPS):
        if done:  # envpool's autoreset step: the action is not applied
            obs_e, _, te, tr, _ = ep_step(ep, acts[t])
            done, skipped_reset = te or tr, skipped_reset + 1
            continue
        exact = full_state or not velocity_clipped(obs_e, nq, clip)
        if exact:
            if full_state:
                u.set_state(obs_e[:nq].copy(), obs_e[nq:].copy())
            else:
                sync_from_obs(genv, obs_e)
            o_g, r_g, te_g, _, _ = u.step(acts[t])  # unwrapped: no time limit, physics + termination only
            if full_state:
                o_g = np.concatenate([u.data.qpos, u.data.qvel])
        o_e, r_e, te_e, tr_e, _ = ep_step(ep, acts[t])
        if exact:
            obs_d.append(float(np.abs(o_g - o_e).max()))
            rew_d.append(abs(float(r_g) - float(r_e)))
            rew_d32.append(abs(float(np.float32(r_g)) - float(r_e)))
            term_mismatch += te_g != te_e
            terms += te_e
        else:
            skipped_clip += 1
        obs_e, done = o_e, te_e or tr_e
    ep.close()
    genv.close()
    return {"n": len(obs_d), "obs_d": np.array(obs_d), "rew_d": np.array(rew_d), "rew_d32": np.array(rew_d32),
            "term_mismatch": term_mismatch, "terms": terms, "skipped_clip": skipped_clip,
            "skipped_reset": skipped_reset}


def gym_chaos(task: str, obs: np.ndarray, acts: np.ndarray, eps: float = 1e-12) -> tuple[int | None, float, int]:
    """Gymnasium against itself from the same state with qvel perturbed by ``eps``: how fast 1e-12 grows."""
    a, b = gym.make(task), gym.make(task)
    a.reset(seed=SEED)
    b.reset(seed=SEED)
    sync_from_obs(a, obs)
    sync_from_obs(b, obs)
    ub = b.unwrapped
    ub.set_state(ub.data.qpos.copy(), ub.data.qvel + eps)
    diffs = []
    for act in acts:
        o_a, _, te_a, tr_a, _ = a.step(act)
        o_b, _, te_b, tr_b, _ = b.step(act)
        diffs.append(float(np.abs(o_a - o_b).max()))
        if te_a or tr_a or te_b or tr_b:
            break
    a.close()
    b.close()
    return next((i + 1 for i, d in enumerate(diffs) if d > TOL), None), max(diffs), len(diffs)


def gym_floor(task: str) -> dict[str, float]:
    """Same one-step check, gymnasium against gymnasium: B's state copied from A's true state.

    ``x=0``: B gets qpos[0] = 0 (tests that the excluded x position does not matter); ``true x``: B gets A's qpos[0]
    (what is left is B's solver warm start and any other data not in qpos/qvel).
    """
    a, b = gym.make(task), gym.make(task)
    a.reset(seed=SEED + 2)
    b.reset(seed=SEED + 3)
    ua, ub = a.unwrapped, b.unwrapped
    acts = np.random.default_rng(SEED + 2).uniform(-1.0, 1.0, (RESYNC_STEPS // 2, ua.model.nu))
    out = {"x=0 obs": 0.0, "x=0 reward": 0.0, "true x obs": 0.0, "true x reward": 0.0, "max |x|": 0.0}
    for act in acts:
        qpos, qvel = ua.data.qpos.copy(), ua.data.qvel.copy()
        out["max |x|"] = max(out["max |x|"], abs(qpos[0]))
        o_a, r_a, te_a, _, _ = ua.step(act)
        for label, x in (("x=0", 0.0), ("true x", qpos[0])):
            ub.set_state(np.concatenate([[x], qpos[1:]]), qvel)
            o_b, r_b, _, _, _ = ub.step(act)
            out[f"{label} obs"] = max(out[f"{label} obs"], float(np.abs(o_a - o_b).max()))
            out[f"{label} reward"] = max(out[f"{label} reward"], abs(float(r_a) - float(r_b)))
        if te_a:
            a.reset()
    a.close()
    b.close()
    return out


# ------------------------------------------------------------------------------------------------------- 3. autoreset


def probe_episode_end(step: Any, nominal: np.ndarray, noise: float, nu: int, seed: int) -> dict[str, Any]:
    """Random actions until the episode ends; then one more step. ``step(a) -> (obs, r, term, trunc, info)``."""
    rng = np.random.default_rng(seed)
    for t in range(1, 1001):  # noqa: B007 (t is the end step)
        obs, _, te, tr, info = step(rng.uniform(-1.0, 1.0, nu))
        if te or tr:
            break
    end_obs, end_keys = obs, sorted(info)
    nxt, r2, te2, tr2, info2 = step(rng.uniform(-1.0, 1.0, nu))
    return {
        "end step": t, "end (term, trunc)": (te, tr), "end obs is within reset noise": bool(
            np.abs(end_obs - nominal).max() <= noise * (1 + 1e-9)), "end info keys": end_keys,
        "next obs is within reset noise": bool(np.abs(nxt - nominal).max() <= noise * (1 + 1e-9)),
        "next (reward, term, trunc)": (float(r2), bool(te2), bool(tr2)), "next info keys": sorted(info2),
        "next info": info2,
    }


def autoreset(task: str) -> dict[str, Any]:
    genv = gym.make(task)
    nominal, nu = nominal_obs(genv), genv.action_space.shape[0]
    noise = genv.unwrapped._reset_noise_scale
    genv.close()
    res: dict[str, Any] = {}

    ep = make_ep(task, SEED)
    ep.reset()

    def ep_fn(a: np.ndarray) -> tuple[Any, ...]:
        o, r, te, tr, i = ep_step(ep, a)
        return o, r, te, tr, {k: v for k, v in i.items() if k != "players"}

    res["envpool"] = probe_episode_end(ep_fn, nominal, noise, nu, SEED)
    ep.close()
    # is the action on envpool's reset step ignored? same seed and history, other action on the step after the end
    nxt = []
    for scale in (1.0, -1.0):
        ep = make_ep(task, SEED)
        ep.reset()
        rng = np.random.default_rng(SEED)
        for _ in range(res["envpool"]["end step"]):
            ep_step(ep, rng.uniform(-1.0, 1.0, nu))
        nxt.append(ep_step(ep, np.full(nu, scale))[0])
        ep.close()
    res["envpool action ignored on reset step"] = bool(np.array_equal(nxt[0], nxt[1]))

    for mode in (gym.vector.AutoresetMode.NEXT_STEP, gym.vector.AutoresetMode.SAME_STEP):
        venv = gym.make_vec(task, num_envs=1, vectorization_mode="sync", vector_kwargs={"autoreset_mode": mode})
        venv.reset(seed=SEED)

        def g_fn(a: np.ndarray, venv: Any = venv) -> tuple[Any, ...]:
            o, r, te, tr, i = venv.step(a[None])
            return o[0], r[0], bool(te[0]), bool(tr[0]), i

        res[f"gymnasium vector {mode.name}"] = probe_episode_end(g_fn, nominal, noise, nu, SEED)
        venv.close()
    res["gymnasium default mode"] = gym.make_vec(task, num_envs=1, vectorization_mode="sync").metadata.get(
        "autoreset_mode")
    return res


def time_limit(task: str, limit: int) -> dict[str, list[tuple[bool, bool]]]:
    ep = make_ep(task, SEED, max_episode_steps=limit)
    ep.reset()
    genv = gym.make(task, max_episode_steps=limit)
    genv.reset(seed=SEED)
    nu = genv.action_space.shape[0]
    e_flags, g_flags, e_elapsed = [], [], []
    for _ in range(limit):
        _, _, te, tr, info = ep_step(ep, np.zeros(nu))
        e_flags.append((te, tr))
        e_elapsed.append(int(info["elapsed_step"][0]))
        _, _, te, tr, _ = genv.step(np.zeros(nu))
        g_flags.append((bool(te), bool(tr)))
    _, _, te, tr, info = ep_step(ep, np.zeros(nu))
    ep.close()
    genv.close()
    return {"envpool": e_flags, "gymnasium": g_flags, "envpool next": [(te, tr)],
            "envpool elapsed_step": [*e_elapsed, int(info["elapsed_step"][0])]}


# -------------------------------------------------------------------------------------------------------- 4. versions


def envpool_mujoco_version() -> str:
    so = Path(envpool.__file__).parent / "mujoco" / "mujoco_gym_envpool.so"
    try:
        fn = ctypes.CDLL(str(so)).mj_versionString
        fn.restype = ctypes.c_char_p
        return f"{fn().decode()} (mj_versionString exported by {so.name})"
    except (OSError, AttributeError) as exc:
        return f"unknown ({exc})"


# ------------------------------------------------------------------------------------------------------------ report


def main() -> int:
    if envpool is None:
        print("envpool is not installed (pip install envpool); nothing to check.")
        return 0
    t0 = time.perf_counter()
    print("# envpool vs gymnasium v5 MuJoCo tasks\n")
    print("## Versions\n")
    print(f"- envpool {envpool.__version__}, built against MuJoCo {envpool_mujoco_version()}")
    print(f"- gymnasium {gym.__version__}, mujoco (python) {mujoco.__version__} "
          f"(mj_versionString {mujoco.mj_versionString()}), numpy {np.__version__}, python {sys.version.split()[0]}")

    print("\n## 1. Static facts\n")
    scales: dict[str, tuple[float, float]] = {}
    for task in TASKS:
        g, e, extra = static_facts(task)
        same = [k for k in g if k in e and fmt(g[k]) == fmt(e[k])]
        print(f"### {task}\n")
        print(f"Agree ({len(same)}): " + ", ".join(f"{k}={fmt(g[k])}" for k in same) + "\n")
        print("| fact | gymnasium | envpool |\n|---|---|---|")
        for k in sorted(set(g) | set(e)):
            if k not in same:
                print(f"| {k} | {fmt(g.get(k, '-'))} | {fmt(e.get(k, '-'))} |")
        print("\nenvpool only: " + ", ".join(f"{k}={fmt(v)}" for k, v in extra.items()) + "\n")
        scales[task] = (g["reset_noise_scale"], e["reset_noise_scale"])

    print(f"### Reset noise ({RESETS} resets each; |obs - nominal| / reset_noise_scale; "
          "uniform(-s, s): max <= 1, std 0.577; normal(0, s): std 1)\n")
    for task in TASKS:
        print(f"{task}\n\n| side | qpos max | qpos std | qvel max | qvel std |\n|---|---|---|---|---|")
        print("\n".join(reset_noise(task, *scales[task])) + "\n")

    print(f"## 2. Dynamics (state copied from envpool's obs into gymnasium, qpos[0] := 0; tolerance {TOL:g})\n")
    print(f"### One trajectory from envpool's reset state, same random actions (at most {TRAJ_STEPS} steps)\n")
    print("Last two columns: gymnasium against itself from the same state with qvel + 1e-12 (first step > tol, max "
          "obs diff over the same steps), i.e. how fast a 1e-12 difference grows on its own.\n")
    print("| task | copy err | steps | obs diff step 1 | step 10 | max | first obs > tol | max reward diff "
          "| vs f32(gym r) | first reward > tol | max x_velocity diff | flags agree | end | gym+1e-12 first > tol "
          "| gym+1e-12 max |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    traj = {task: trajectory(task) for task in TASKS}
    for task, r in traj.items():
        s10 = f"{r['obs_d'][9]:.1e}" if r["steps"] >= 10 else "-"
        print(f"| {task} | {r['copy_err']:.1e} | {r['steps']} | {r['obs_d'][0]:.1e} | {s10} | {max(r['obs_d']):.1e} "
              f"| {r['first_obs']} | {max(r['rew_d']):.1e} | {max(r['rew_d32']):.1e} | {r['first_rew']} "
              f"| {r['xv_d']:.1e} | {r['flags_agree']} | {r['end']} | {r['chaos'][0]} | {r['chaos'][1]:.1e} |")
    print()
    for task, r in traj.items():
        comps = ", ".join(f"{k}: {v:.1e}" for k, v in r["comp_d"].items()) or "none in common"
        print(f"- {task}: reward types gymnasium {r['rew_dtypes'][0]}, envpool {r['rew_dtypes'][1]}; info keys "
              f"gymnasium {r['g_keys']}, envpool {r['e_keys']}; over the first {r['pre']} steps (before the "
              f"observations differ by > tol): max reward diff {r['rew_pre']:.1e}, max component diffs: {comps}")

    for full_state in (False, True):
        if full_state:
            print(f"\n### Same, full state: envpool made with exclude_current_positions_from_observation=False and "
                  f"velocity_min/max=-inf/inf, compared with gymnasium's (qpos, qvel) ({RESYNC_STEPS} envpool steps)\n")
        else:
            print(f"\n### One-step check re-synced before every step ({RESYNC_STEPS} envpool steps, random actions, "
                  "default observation, qpos[0] := 0)\n")
            print("States whose observed velocity hits the ±10 clip cannot be copied exactly and are skipped; so are "
                  "envpool's autoreset steps.\n")
        print("| task | states | obs diff median | p99 | max | states > tol | reward diff max | vs f32(gym r) "
              "| terminations (envpool) | term mismatches | skipped clip | skipped reset |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for task in TASKS:
            clip = None if task.startswith("HalfCheetah") else 10.0
            r = resync(task, clip, full_state)
            o = r["obs_d"]
            print(f"| {task} | {r['n']} | {np.median(o):.1e} | {np.quantile(o, 0.99):.1e} | {o.max():.1e} "
                  f"| {int((o > TOL).sum())} | {r['rew_d'].max():.1e} | {r['rew_d32'].max():.1e} | {r['terms']} "
                  f"| {r['term_mismatch']} | {r['skipped_clip']} | {r['skipped_reset']} |")

    print(f"\n### Floor of the method: gymnasium vs gymnasium, same one-step check ({RESYNC_STEPS // 2} states)\n")
    print("| task | max |x| visited | x := 0: obs diff | reward diff | true x: obs diff | reward diff |")
    print("|---|---|---|---|---|---|")
    for task in TASKS:
        f = gym_floor(task)
        print(f"| {task} | {f['max |x|']:.2f} | {f['x=0 obs']:.1e} | {f['x=0 reward']:.1e} | {f['true x obs']:.1e} "
              f"| {f['true x reward']:.1e} |")

    print("\n## 3. Autoreset and time limit (Hopper-v5, random actions until the episode ends, then one more step)\n")
    print("Each side starts from its own reset state, so the episodes (and end steps) differ. 'Within reset noise': "
          "every |obs - nominal| <= reset_noise_scale, i.e. the observation is a fresh reset state.\n")
    ar = autoreset("Hopper-v5")
    ep_env = make_ep("Hopper-v5", SEED)
    print(f"- envpool metadata autoreset_mode: {ep_env.metadata.get('autoreset_mode')}; gymnasium vector default: "
          f"{ar['gymnasium default mode']}")
    ep_env.close()
    print(f"- envpool: action on the step after the end ignored: {ar['envpool action ignored on reset step']}")
    print("\n| side | end step | end (term, trunc) | end obs within reset noise | end info keys "
          "| next obs within reset noise | next (reward, term, trunc) | next info keys |")
    print("|---|---|---|---|---|---|---|---|")
    for side in ("envpool", "gymnasium vector NEXT_STEP", "gymnasium vector SAME_STEP"):
        p = ar[side]
        print(f"| {side} | {p['end step']} | {fmt(p['end (term, trunc)'])} | {p['end obs is within reset noise']} "
              f"| {', '.join(p['end info keys'])} | {p['next obs is within reset noise']} "
              f"| {fmt(p['next (reward, term, trunc)'])} | {', '.join(p['next info keys'])} |")
    next_info = {k: v.tolist() for k, v in ar["envpool"]["next info"].items()}
    print(f"\nenvpool info on the step after the end: {next_info}")
    tl = time_limit("HalfCheetah-v5", 5)
    print("\nTime limit, HalfCheetah-v5 with max_episode_steps=5, zero actions, (terminated, truncated) per step:\n")
    print(f"- envpool: {fmt(tl['envpool'])}, then {fmt(tl['envpool next'])}; elapsed_step {tl['envpool elapsed_step']}")
    print(f"- gymnasium (TimeLimit): {fmt(tl['gymnasium'])}")
    print(f"\nTotal time: {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
