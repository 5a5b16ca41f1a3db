"""Scoring a policy in any Gymnasium env (``eval-policy source_env=<id>``).

``evaluate_gym_policy(policy, env_id)`` runs ``episodes`` whole episodes of ``gym.make(env_id,
**env_kwargs)``, ``max_worlds`` at a time, and reports the mean return and length with 95 % t
intervals. Episode ``i`` of evaluation seed ``s`` resets with ``2**31 + s * 100000 + i``:
seeds at 2**31 and above (``evaluate.heldout_rooms``), which ``collect env=<id>`` never draws (its reset seeds are below 2**31),
so a score is always on starts no world model or policy was trained from.

``policy`` is a ``train-policy source_env=<id>`` run (its folder or ``policy.safetensors``; nothing
is unpickled) or ``random`` (uniform samples of the action space, seeded), the floor beside it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .evaluate import heldout_rooms, t_interval

# the room's held-out scheme, applied to reset seeds: 2**31 + seed * 100000 + i
heldout_seeds = heldout_rooms


class _Network:
    """A saved SB3 policy network as ``act(obs) -> actions`` on numpy batches."""

    def __init__(self, path: str | Path, env_id: str, device: str):
        from .run_record import check_finished
        from .sb3_format import load_sb3_network, policy_files

        self.network, cfg = load_sb3_network(path, device)
        check_finished(policy_files(path)[0].parent, cfg)
        if cfg.get("source_env") != env_id:
            raise ValueError(f"policy={path} was trained on {cfg.get('source_env') or 'the room'}, not on source_env={env_id}")
        self.algo = str(cfg["algo"])

    def act(self, obs: Any, deterministic: bool) -> np.ndarray:
        a, _ = self.network.predict(obs, deterministic=deterministic)
        return a


def _stack(rows: list[Any]) -> Any:
    if isinstance(rows[0], Mapping):
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    return np.stack(rows)


class _Random:
    def __init__(self, space: Any, seed: int):
        self.space = space
        self.space.seed(int(seed))

    def act(self, obs: Any, deterministic: bool) -> np.ndarray:
        n = len(next(iter(obs.values()))) if isinstance(obs, Mapping) else len(obs)
        return np.stack([self.space.sample() for _ in range(n)])


def evaluate_gym_policy(
    policy: str | Path,
    env_id: str,
    env_kwargs: Mapping[str, Any] | None = None,
    episodes: int = 64,
    seed: int = 0,
    max_worlds: int = 16,
    deterministic: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Mean return (95 % t interval) and length of ``episodes`` held-out episodes (see the module docstring)."""
    from dreamgym.rollouts.gym_collect import make_env

    kwargs = dict(env_kwargs or {})
    seeds = heldout_seeds(int(episodes), int(seed))
    B = max(1, min(int(max_worlds), len(seeds)))
    envs = [make_env(env_id, kwargs) for _ in range(B)]
    actor: Any = _Random(envs[0].action_space, seed) if str(policy) == "random" else _Network(policy, env_id, device)
    t0 = time.time()
    returns: list[float] = []
    lengths: list[int] = []
    try:
        for lo in range(0, len(seeds), B):
            chunk = seeds[lo : lo + B]
            obs = [envs[w].reset(seed=s)[0] for w, s in enumerate(chunk)]
            ret, length = [0.0] * len(chunk), [0] * len(chunk)
            live = list(range(len(chunk)))
            while live:
                a = actor.act(_stack([obs[w] for w in live]), deterministic)
                still = []
                for k, w in enumerate(live):  # only unfinished episodes step: an ended env is never stepped again
                    obs[w], r, term, trunc, _ = envs[w].step(a[k])
                    ret[w] += float(r)
                    length[w] += 1
                    if not (term or trunc):
                        still.append(w)
                live = still
            returns += ret
            lengths += length
    finally:
        for e in envs:
            e.close()
    return {
        "source_env": env_id,
        "episodes": len(returns),
        "mean_return": float(np.mean(returns)),
        "return_ci95": list(t_interval(returns)),
        "returns": returns,
        "mean_length": float(np.mean(lengths)),
        "deterministic": bool(deterministic),
        "wall_s": time.time() - t0,
    }
