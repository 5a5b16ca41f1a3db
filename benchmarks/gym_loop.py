"""``dreamgym bench gym``: the loop on Gymnasium envs nobody here wrote, beside SB3's PPO and SAC.

For each env of ``envs`` and each seed of ``seeds``, every arm gets the same ``budget`` of real
env steps and is trained in this run (or taken from a stage stored under the same key: code,
config and inputs hash to it, and ``reused`` says so):

- ``loop``: ``dreamgym diamond env=<id>`` (``policies.gym_diamond``): ``budget // collect_steps``
  iterations of collection, a world-model update and PPO in the dream;
- ``ppo`` and ``sac``: ``train-policy source_env=<id> env=real``, SB3's defaults, ``budget`` steps.

Every trained policy is scored (its mean action) on the same ``eval_episodes`` held-out episodes
of the env (``policies.gym_eval``: reset seeds >= 2**31, never drawn by collection). Per arm: the
mean over seeds of the per-seed mean return, its 95 % t interval over seeds, and every seed's
score with its own interval over episodes. The loop is compared with each baseline seed by seed
(the same seed index: paired). Targets (per env): loop >= PPO; and loop >= SAC on at least two
of the three state envs. One JSON per env (``gym_<env>.json``), rewritten after every stage.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .runner import BenchRun


def _learner(cfg: DictConfig, algo: str, dreamed_worlds: int | None = None) -> dict[str, Any]:
    hp = OmegaConf.to_container(cfg[algo], resolve=True)
    assert isinstance(hp, dict)
    hp.pop("num_envs", None)
    if algo == "ppo" and dreamed_worlds:  # a rollout holds n_steps transitions, as in the single-env baseline
        hp["n_steps"] = max(1, int(hp["n_steps"]) // int(dreamed_worlds))
    return hp


def _kwargs(cfg: DictConfig, env: str) -> dict[str, Any]:
    from dreamgym.policies.weights import plain_kwargs

    kw = cfg.get("env_kwargs")
    return {} if kw is None else plain_kwargs(kw[list(cfg.envs).index(env)])


def _score(cfg: DictConfig, policy: Path, env: str) -> dict[str, Any]:
    from dreamgym.policies.gym_eval import evaluate_gym_policy

    r = evaluate_gym_policy(policy, env, _kwargs(cfg, env), episodes=int(cfg.eval_episodes), seed=int(cfg.eval_seed))
    return {k: r[k] for k in ("episodes", "mean_return", "return_ci95", "returns", "mean_length", "wall_s")}


def _baseline(cfg: DictConfig, env: str, algo: str, seed: int):
    def measure(folder: Path) -> dict[str, Any]:
        from dreamgym.policies.train import train_policy

        tic = time.time()
        policy = train_policy(
            {
                "source_env": env,
                "env_kwargs": _kwargs(cfg, env) or None,
                "env": "real",
                "algo": algo,
                "out": str(folder / "policy"),
                "steps": int(cfg.budget),
                "num_envs": int(cfg[algo].num_envs),
                "seed": seed,
                "checkpoint_every": max(10000, int(cfg.budget) // 10),
                "num_threads": int(cfg.threads),
                "progress": bool(cfg.progress),
                algo: _learner(cfg, algo),
            }
        )
        return {"real_steps": int(cfg.budget), "train_wall_s": time.time() - tic, "score": _score(cfg, policy, env)}

    return measure


def _loop(cfg: DictConfig, env: str, seed: int):
    def measure(folder: Path) -> dict[str, Any]:
        from dreamgym.configs import compose
        from dreamgym.policies.gym_diamond import gym_diamond

        d = compose("diamond", [])
        over = {
            "env": env,
            "env_kwargs": _kwargs(cfg, env) or None,
            "budget": int(cfg.budget),
            "out": str(folder / "loop"),
            "seed": seed,
            "algo": "ppo",
            "eval_episodes": 0,
            "num_threads": int(cfg.threads),
            "progress": bool(cfg.progress),
            "ppo": _learner(cfg, "ppo", int(cfg.loop.num_envs)),
            **OmegaConf.to_container(cfg.loop, resolve=True),
        }
        for k, v in over.items():
            OmegaConf.update(d, k, v, merge=False)
        tic = time.time()
        s = gym_diamond(d)
        keep = ("real_steps_used", "iterations", "dream_steps")
        return {**{k: s[k] for k in keep}, "train_wall_s": time.time() - tic, "score": _score(cfg, Path(s["policy"]), env)}

    return measure


def _t95(x: list[float]) -> list[float]:
    from dreamgym.policies.evaluate import t_interval

    return list(t_interval(x))


def summarise(arms: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    """Per arm: mean over seeds and its 95 % t interval; the loop against each baseline, seed by seed."""
    per: dict[str, list[float]] = {}
    out: dict[str, Any] = {"arms": {}}
    for name, r in arms.items():
        arm, _, s = name.rpartition("_s")
        per.setdefault(arm, []).append(float(r["score"]["mean_return"]))
    for arm, xs in per.items():
        out["arms"][arm] = {"seeds": len(xs), "mean_return": float(np.mean(xs)), "ci95": _t95(xs), "per_seed": xs}
    loop = {int(n.rpartition("_s")[2]): float(r["score"]["mean_return"]) for n, r in arms.items() if n.startswith("loop_s")}
    for base in ("ppo", "sac"):
        other = {int(n.rpartition("_s")[2]): float(r["score"]["mean_return"]) for n, r in arms.items() if n.startswith(f"{base}_s")}
        both = sorted(set(loop) & set(other))
        if both:
            d = [loop[s] - other[s] for s in both]
            out[f"loop_minus_{base}"] = {"seeds": both, "mean": float(np.mean(d)), "ci95": _t95(d), "per_seed": d}
            out[f"loop_at_least_{base}"] = bool(np.mean([loop[s] for s in both]) >= np.mean([other[s] for s in both]))
    out["complete"] = all(len(per.get(a, [])) == len(seeds) for a in ("loop", "ppo", "sac"))
    return out


def bench_env(cfg: DictConfig, env: str) -> Path:
    """Every arm and seed of one env; the env's JSON, rewritten after each stage."""
    name = env.replace("/", "_")  # dreamgym/Pixels-v0 -> dreamgym_Pixels-v0
    config = OmegaConf.to_container(cfg, resolve=True) | {"env": env}
    run = BenchRun(f"gym_{name}", config, cache_dir=Path(cfg.run_dir) / name, reuse=bool(cfg.reuse))
    out = f"{cfg.out}_{name}.json" if cfg.out else None
    seeds = [int(s) for s in cfg.seeds]
    for arm in cfg.arms:
        if arm not in ("loop", "ppo", "sac"):
            raise ValueError(f"bench gym: arm {arm!r} is not one of loop, ppo, sac")
        for seed in seeds:
            stage = {"env": env, "env_kwargs": _kwargs(cfg, env), "arm": arm, "seed": seed, "budget": int(cfg.budget)}
            stage["eval"] = [int(cfg.eval_episodes), int(cfg.eval_seed)]
            if arm == "loop":
                stage |= {"loop": OmegaConf.to_container(cfg.loop, resolve=True), "ppo": _learner(cfg, "ppo", int(cfg.loop.num_envs))}
                measure = _loop(cfg, env, seed)
            else:
                stage |= {arm: _learner(cfg, arm), "num_envs": int(cfg[arm].num_envs)}
                measure = _baseline(cfg, env, arm, seed)
            r = run.cached(f"{arm}_s{seed}", measure, config=stage)
            print(f"bench gym: {env} {arm} seed {seed}: return {r['score']['mean_return']:.1f}", flush=True)
            run.summary = summarise(run.arms, seeds)
            run.write(out)
    return run.write(out)


def run(cfg: DictConfig) -> int:
    """Entry point of ``dreamgym bench gym``."""
    torch.set_num_threads(int(cfg.threads))
    for env in cfg.envs:
        bench_env(cfg, str(env))
    return 0
