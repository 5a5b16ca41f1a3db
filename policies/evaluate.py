"""``dreamgym eval-policy policy=<path|expert|random> env=real task=<name> episodes=N out=FILE.json``.

A policy is scored in the real simulator (``EgoRoomVecEnv``) on **held-out rooms**: room seeds from
``HELDOUT_ROOM_BASE`` = 2**31 on. Everything that trains draws its rooms below 2**31 - 1 (the
env's own auto-reset draws, ``DreamVecEnv`` starts, ``dreamgym collect`` rounds), so no policy or
world model has seen these rooms. Each world plays exactly one episode from its room; worlds that
finish early run on (the batch steps together) but only their first episode counts.

Several policies can be scored in one batch (``evaluate_policies``): each gets its own rows of the
same B-world env and the *same* rooms, so their difference is paired and the simulator is stepped
once for all of them.

Reported per policy: mean return with its 95 % t-interval, success rate with its 95 % Wilson
interval, mean episode length, number of episodes. ``env=dream`` scores the policy in a
``DreamVecEnv`` instead (the return the dream predicts; its starts are drawn by the dream env).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from .base import Policy, check_actions, load_policy, required_obs_keys
from .errors import CheckpointError, ConfigError

HELDOUT_ROOM_BASE = 2**31
ROOMS_PER_SEED = 100_000


def heldout_rooms(n: int, seed: int = 0) -> list[int]:
    """``n`` held-out room seeds for evaluation seed ``seed`` (never drawn by training or collection)."""
    if not 0 <= n <= ROOMS_PER_SEED:
        raise ValueError(f"at most {ROOMS_PER_SEED} held-out rooms per evaluation seed, asked for {n}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return [HELDOUT_ROOM_BASE + int(seed) * ROOMS_PER_SEED + i for i in range(n)]


# ----------------------------------------------------------------------------- statistics
def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate (valid at 0 and n successes)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends (rounding would miss them)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


def t_interval(x: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval of a mean (a point interval for constant data, +-inf for n < 2)."""
    from scipy import stats

    a = np.asarray(x, dtype=np.float64)
    n = len(a)
    if n == 0:
        return (float("nan"), float("nan"))
    m = float(a.mean())
    if n < 2:
        return (-math.inf, math.inf)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * a.std(ddof=1) / math.sqrt(n))
    return (m - half, m + half)


def summarize(returns: Sequence[float], successes: Sequence[bool], lengths: Sequence[int]) -> dict[str, Any]:
    """Mean return and success rate with their 95 % intervals (t and Wilson)."""
    n = len(returns)
    k = int(np.sum(successes))
    return {
        "episodes": n,
        "mean_return": float(np.mean(returns)) if n else float("nan"),
        "return_ci95": list(t_interval(returns)),
        "success_rate": k / n if n else float("nan"),
        "success_ci95": list(wilson_interval(k, n)),
        "mean_length": float(np.mean(lengths)) if n else float("nan"),
    }


# ----------------------------------------------------------------------------- rollouts
class RowView:
    """Rows ``rows`` of a batched env, as a policy bound to them sees it (``expert_actions`` sliced)."""

    def __init__(self, env: Any, rows: torch.Tensor):
        self._env, self._rows = env, rows
        self.num_envs = int(rows.numel())

    def expert_actions(self) -> torch.Tensor:
        return self._env.expert_actions()[self._rows.to(self._env.device)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)


def info_inputs(policy: Any, infos: Mapping[str, Any], rows: torch.Tensor) -> dict[str, Any]:
    """Keyword inputs a policy takes from the env's infos (``policy.info_inputs``: argument -> info key),
    for its rows: text as a list of strings, numbers as a tensor (e.g. the social avatar's
    ``utterances`` and ``objects``)."""
    kw = {}
    idx = rows.cpu().numpy()
    for arg, key in getattr(policy, "info_inputs", {}).items():
        if key in infos:
            v = np.asarray(infos[key])[idx]
            kw[arg] = list(v) if v.dtype == object else torch.as_tensor(v)
    return kw


@torch.no_grad()
def run_episodes(
    env: Any,
    groups: Mapping[str, tuple[Policy, torch.Tensor]],
    room_seeds: Sequence[int] | None = None,
    seed: int | None = None,
    deterministic: bool = True,
    progress: bool = False,
    max_steps: int | None = None,
) -> dict[str, dict[str, list]]:
    """Play one episode in every world of ``env``; policy ``name`` drives rows ``groups[name][1]``.

    Works with any batched env of the shared step API (``EgoRoomVecEnv`` with ``room_seeds``,
    ``DreamVecEnv`` with ``seed``). With ``max_steps``, an episode still running after that many
    steps is cut there (truncated: not a success). Returns per group the lists ``returns``,
    ``successes``, ``lengths`` and ``room_seeds`` (row order).
    """
    B = env.num_envs
    rows_all = torch.cat([r for _, r in groups.values()])
    if sorted(rows_all.tolist()) != list(range(B)):
        raise ValueError(f"the groups' rows must cover the {B} worlds exactly once, got {sorted(rows_all.tolist())}")
    if room_seeds is not None:
        obs, infos = env.reset_tensors(room_seeds=list(room_seeds))
    else:
        obs, infos = env.reset_tensors(seed=seed)
    rooms = np.asarray(infos["room_seed"]).copy()
    for policy, rows in groups.values():
        if hasattr(policy, "bind"):
            policy.bind(RowView(env, rows))
        if hasattr(policy, "reset"):
            policy.reset(torch.ones(len(rows), dtype=torch.bool))
    dev = env.device
    ret = torch.zeros(B, dtype=torch.float64)
    length = torch.zeros(B, dtype=torch.long)
    success = torch.zeros(B, dtype=torch.bool)
    finished = torch.zeros(B, dtype=torch.bool)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=B, desc="episodes", dynamic_ncols=True)
    steps = 0
    while not bool(finished.all()) and (max_steps is None or steps < max_steps):
        steps += 1
        actions = torch.zeros(B, 6, device=dev)
        for name, (policy, rows) in groups.items():
            sub = {k: v[rows.to(v.device)] for k, v in obs.items()}
            kw = info_inputs(policy, infos, rows)
            actions[rows.to(dev)] = check_actions(policy.act(sub, deterministic=deterministic, **kw), len(rows), name).to(dev)
        obs, r, term, trunc, infos = env.step_tensors(actions)
        live = ~finished
        ret += torch.where(live, r.detach().cpu().double(), torch.zeros_like(ret))
        length += live.long()
        done = (term | trunc).cpu()
        new = done & live
        if bool(new.any()):
            fs = infos["final_success"]
            fs = fs.cpu() if isinstance(fs, torch.Tensor) else torch.as_tensor(np.asarray(fs))
            success[new] = fs.bool()[new]
            finished |= new
            if bar is not None:
                bar.update(int(new.sum()))
        if bool(done.any()):
            for policy, rows in groups.values():
                if hasattr(policy, "reset"):
                    policy.reset(done[rows])
    if bar is not None:
        bar.close()
    out = {}
    for name, (_, rows) in groups.items():
        idx = rows.cpu()
        out[name] = {
            "returns": ret[idx].tolist(),
            "successes": success[idx].tolist(),
            "lengths": length[idx].tolist(),
            "room_seeds": [int(s) for s in rooms[idx.numpy()]],
        }
    return out


def evaluate_policies(
    policies: Mapping[str, Policy | str | Path],
    task: str = "reach",
    episodes: int = 64,
    seed: int = 0,
    max_worlds: int = 128,
    deterministic: bool = True,
    device: str | torch.device = "cpu",
    progress: bool = True,
    allow_pickle: bool = False,
    per_episode: bool = False,
    max_steps: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Score several policies in the real simulator on the same held-out rooms, in one batch.

    Each policy plays ``episodes`` episodes (rounded up to fill the last wave evenly) in rooms
    ``heldout_rooms(episodes, seed)``. Returns ``{name: summary}`` (see ``summarize``) with
    ``rooms`` and ``wall_s``, and with ``per_episode`` the lists ``returns``, ``successes``,
    ``lengths`` and ``room_seeds`` too. ``max_steps`` cuts episodes short (see ``run_episodes``).
    ``allow_pickle`` lets checkpoint paths be Stable-Baselines3 zips (see ``load_policy``: loading
    one runs whatever code it holds).
    """
    from dreamgym.envs.vec_env import EgoRoomVecEnv

    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    pols = {name: load_policy(p, task=task, device=device, seed=seed, allow_pickle=allow_pickle) for name, p in policies.items()}
    n_pol = len(pols)
    per_wave = max(1, min(episodes, max_worlds // n_pol))
    waves = math.ceil(episodes / per_wave)
    per_wave = math.ceil(episodes / waves)
    B = per_wave * n_pol
    keys = required_obs_keys(list(pols.values()))
    t0 = time.time()
    env = EgoRoomVecEnv(num_envs=B, task=task, device=device, obs_keys=keys, return_tensors=True, seed=HELDOUT_ROOM_BASE)
    rooms = heldout_rooms(per_wave * waves, seed)
    acc: dict[str, dict[str, list]] = {name: {"returns": [], "successes": [], "lengths": [], "room_seeds": []} for name in pols}
    for w in range(waves):
        wave_rooms = rooms[w * per_wave : (w + 1) * per_wave]
        groups = {name: (p, torch.arange(i * per_wave, (i + 1) * per_wave)) for i, (name, p) in enumerate(pols.items())}
        res = run_episodes(env, groups, room_seeds=wave_rooms * n_pol, deterministic=deterministic, progress=progress, max_steps=max_steps)
        for name in pols:
            for k in acc[name]:
                acc[name][k] += res[name][k]
    env.close()
    wall = time.time() - t0
    out = {}
    for name, a in acc.items():
        where = {"rooms": f"held-out room seeds {rooms[0]}..{rooms[-1]}", "wall_s": wall}
        out[name] = summarize(a["returns"], a["successes"], a["lengths"]) | where | (a if per_episode else {})
    return out


def evaluate_policy(policy: Policy | str | Path, task: str = "reach", episodes: int = 64, seed: int = 0, **kw) -> dict[str, Any]:
    """Score one policy in the real simulator on ``episodes`` held-out rooms (see ``evaluate_policies``)."""
    return evaluate_policies({"policy": policy}, task=task, episodes=episodes, seed=seed, **kw)["policy"]


def evaluate_in_dream(
    policy: Policy | str | Path,
    world_model: Any = None,
    task: str = "reach",
    episodes: int = 64,
    seed: int = 0,
    num_denoising_steps: int | None = None,
    horizon: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    allow_pickle: bool = False,
    init_noise: float | None = None,
    **dream_kwargs: Any,
) -> dict[str, Any]:
    """The return and success the dream predicts for ``policy`` (one episode per dreamed world),
    and the ``sampler`` it was dreamed with.

    The starts are the dream env's own (real contexts drawn by ``DreamVecEnv``);
    ``num_denoising_steps`` and ``init_noise`` None: the world model's own sampler.
    """
    from dreamgym.worldmodel.dream_env import DreamVecEnv

    pol = load_policy(policy, task=task, device=device, seed=seed, allow_pickle=allow_pickle)
    keys = required_obs_keys([pol])
    t0 = time.time()
    env = DreamVecEnv(
        world_model,
        num_envs=episodes,
        task=task,
        obs_keys=keys,
        num_denoising_steps=num_denoising_steps,
        init_noise=init_noise,
        horizon=horizon,
        device=device,
        seed=seed,
        return_tensors=True,
        **dream_kwargs,
    )
    res = run_episodes(env, {"policy": (pol, torch.arange(episodes))}, seed=seed, progress=progress)["policy"]
    env.close()
    return summarize(res["returns"], res["successes"], res["lengths"]) | {"sampler": env.sampler_info, "wall_s": time.time() - t0}


def check_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` naming the key, the value and what is allowed, before any work."""
    from dreamgym.configs import compose

    base = compose("eval_policy", [])
    unknown = sorted(k for k in cfg if k not in base)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown}; eval-policy reads {sorted(base)}")
    if cfg.env not in ("real", "dream"):
        raise ConfigError(f"env={cfg.env!r}: expected one of ['real', 'dream']")
    for key, low in (("episodes", 1), ("max_worlds", 1), ("seed", 0), ("num_threads", 1)):
        v = cfg.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ConfigError(f"{key}={v!r}: expected a whole number >= {low}")
    for key in ("allow_pickle", "deterministic", "progress"):
        if cfg.get(key) not in (True, False):
            raise ConfigError(f"{key}={cfg.get(key)!r}: expected true or false")
    from .train import check_device, check_sampler_keys

    check_sampler_keys(cfg)
    check_device(cfg.device)


def run(cfg: DictConfig) -> int:
    """Entry point of ``dreamgym eval-policy``."""
    spec = cfg.policy if cfg.policy is not None else cfg.get("path")
    if spec is None:
        raise SystemExit("dreamgym eval-policy: give policy=<train-policy run dir | checkpoint | expert | random>")
    try:
        check_config(cfg)
        torch.set_num_threads(int(cfg.num_threads))
        res = _evaluate(cfg, str(spec))
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"dreamgym eval-policy: {e}") from None
    task = cfg.task if cfg.get("source_env") is None else None
    out = {"policy": str(spec), "task": task, "env": cfg.env, "seed": int(cfg.seed), **res}
    text = json.dumps(out, indent=2)
    print(text)
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(text + "\n")
    return 0


def _evaluate(cfg: DictConfig, spec: str) -> dict[str, Any]:
    if cfg.get("source_env") is not None:
        if cfg.env != "real":
            raise ConfigError("source_env= scores in the env itself (env=real); a Gymnasium env's dream has no held-out judge")
        from .gym_eval import evaluate_gym_policy
        from .weights import plain_kwargs

        return evaluate_gym_policy(
            spec,
            str(cfg.source_env),
            plain_kwargs(cfg.env_kwargs),
            episodes=int(cfg.episodes),
            seed=int(cfg.seed),
            max_worlds=int(cfg.max_worlds),
            deterministic=bool(cfg.deterministic),
            device=str(cfg.device),
        )
    if cfg.env == "real":
        return evaluate_policy(
            spec,
            task=cfg.task,
            episodes=int(cfg.episodes),
            seed=int(cfg.seed),
            max_worlds=int(cfg.max_worlds),
            deterministic=bool(cfg.deterministic),
            device=cfg.device,
            progress=bool(cfg.progress),
            allow_pickle=bool(cfg.allow_pickle),
        )
    return evaluate_in_dream(
        spec,
        world_model=cfg.checkpoint,
        task=cfg.task,
        episodes=int(cfg.episodes),
        seed=int(cfg.seed),
        num_denoising_steps=cfg.num_denoising_steps,
        init_noise=cfg.get("init_noise"),
        device=cfg.device,
        progress=bool(cfg.progress),
        allow_pickle=bool(cfg.allow_pickle),
    )
