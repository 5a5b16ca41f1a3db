"""``dreamgym bench gym_verdict``: does the dream of a Gymnasium env rank policies as the env does?

A ladder of policies of different quality is scored twice, both sides measured in the run:

- ``real``: in the env itself, ``episodes`` held-out episodes per policy (``policies.gym_eval``:
  reset seeds >= 2**31, the policy's mean action);
- ``dream``: in ``VectorDreamVecEnv`` on the world model (its own sampler), ``episodes`` dreamed
  episodes per policy from live starts (the env reset, then K - 1 random steps: the dream env's
  ``starts="live"``, the same start seeds for every policy), the mean action again, until the
  dream terminates or the env's time limit.

The ladder: ``loop=<a diamond env=<id> run>`` gives every iteration's policy and takes the last
iteration's world model, the natural question after a loop (do its own policies rank alike in
its dream and in the env?); ``policies=`` adds train-policy runs, ``random=true`` the uniform
random policy as the lowest rung; ``env=`` and ``checkpoint=`` name the env and model without a
loop. Reported: each policy's mean return in both (95 % t intervals), the dream's bias (dream
minus real), and over the policies the Spearman rank correlation of mean returns with a 95 %
bootstrap interval (every policy's episodes resampled with replacement, independently on each
side), Pearson beside it. The room's ``bench verdict`` sets a target of 0.9 for Spearman; for
reference, WorldGym reports Pearson 0.78 between world-model and real success.

    dreamgym bench gym_verdict loop=runs/hopper_loop [episodes=32] [out=FILE.json]
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .runner import BenchRun


def ladder(cfg: DictConfig) -> tuple[str, dict[str, Any], str, dict[str, str]]:
    """(env id, env kwargs, world-model checkpoint, {name: policy}) from the config."""
    from dreamgym.policies.weights import plain_kwargs

    env, kwargs, ckpt = cfg.get("env"), plain_kwargs(cfg.get("env_kwargs")), cfg.get("checkpoint")
    policies: dict[str, str] = {}
    if cfg.get("loop") is not None:
        loop = Path(str(cfg.loop))
        log = loop / "log.jsonl"
        if not log.exists():
            raise ValueError(f"loop={loop}: no log.jsonl; give the out= folder of a `dreamgym diamond env=<id>` run")
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        if not rows:
            raise ValueError(f"loop={loop}: its log.jsonl has no finished iteration yet")
        lc = OmegaConf.load(loop / "config.yaml")
        if lc.get("env") is None:
            raise ValueError(f"loop={loop} is a loop in the room; bench gym_verdict reads loops of a Gymnasium env (diamond env=<id>)")
        if env is not None and env != lc.env:
            raise ValueError(f"env={env}, but loop={loop} ran on {lc.env}")
        env, kwargs = str(lc.env), plain_kwargs(lc.get("env_kwargs"))
        ckpt = ckpt or rows[-1]["world_model"]
        policies |= {f"iter_{int(r['iteration']):02d}": str(r["policy"]) for r in rows}
    for p in cfg.get("policies") or []:
        policies[Path(str(p)).name] = str(p)
    if bool(cfg.random):
        policies["random"] = "random"
    if env is None or ckpt is None:
        raise ValueError("give loop=<a diamond env=<id> run>, or env=<id> and checkpoint=<its world model> with policies=[...]")
    if len(policies) < 3:
        raise ValueError(f"{len(policies)} policies cannot be ranked meaningfully; give at least 3 (loop=, policies=, random=true)")
    return str(env), kwargs, str(ckpt), policies


def dream_returns(policy: str, env: str, kwargs: dict, checkpoint: str, episodes: int, seed: int, worlds: int, device: str) -> dict:
    """``episodes`` dreamed returns and lengths of ``policy``'s mean action (see the module docstring)."""
    import gymnasium as gym

    from dreamgym.policies.gym_eval import _Network, _Random
    from dreamgym.worldmodel.vector_dream import VectorDreamVecEnv

    B = max(1, min(int(worlds), int(episodes)))
    vec = VectorDreamVecEnv(checkpoint=checkpoint, num_envs=B, source_env=env, env_kwargs=kwargs, device=device, autoreset=False)
    space = gym.make(env, **kwargs).action_space
    actor: Any = _Random(space, seed) if policy == "random" else _Network(policy, env, device)
    returns: list[float] = []
    lengths: list[int] = []
    tic = time.time()
    try:
        for lo in range(0, int(episodes), B):
            obs, _ = vec.reset(seed=int(seed) * 100_003 + lo)  # the same starts for every policy
            ret, length, live = np.zeros(B), np.zeros(B, np.int64), np.ones(B, bool)
            while live.any():
                obs, r, term, trunc, _ = vec.step(actor.act(obs, True))
                ret += np.where(live, r, 0.0)
                length += live
                live &= ~(term | trunc)
            n = min(B, int(episodes) - lo)
            returns += ret[:n].tolist()
            lengths += length[:n].tolist()
    finally:
        vec.close()
    return {
        "episodes": len(returns),
        "mean_return": float(np.mean(returns)),
        "returns": returns,
        "mean_length": float(np.mean(lengths)),
        "wall_s": time.time() - tic,
    }


def correlations(real: list[list[float]], dream: list[list[float]], resamples: int, seed: int) -> dict[str, Any]:
    """Spearman and Pearson of the policies' mean returns, Spearman's bootstrap interval over episodes."""
    from scipy import stats

    mr, md = np.array([np.mean(x) for x in real]), np.array([np.mean(x) for x in dream])
    rng = np.random.default_rng(seed)
    boot, ties = [], 0
    for _ in range(int(resamples)):
        a = [np.mean(rng.choice(x, len(x))) for x in real]
        b = [np.mean(rng.choice(x, len(x))) for x in dream]
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            ties += 1
            continue
        boot.append(float(stats.spearmanr(a, b).statistic))
    lo, hi = np.percentile(boot, [2.5, 97.5]).tolist() if boot else [None, None]
    sp = stats.spearmanr(mr, md)
    return {
        "policies": len(mr),
        "spearman": float(sp.statistic),
        "spearman_ci95": [lo, hi],
        "spearman_p": float(sp.pvalue),
        "pearson": float(stats.pearsonr(mr, md).statistic),
        "bootstrap": {"resamples": int(resamples), "left_out_all_equal": ties},
    }


def run(cfg: DictConfig) -> int:
    """Entry point of ``dreamgym bench gym_verdict``."""
    from dreamgym.policies.evaluate import t_interval
    from dreamgym.policies.gym_eval import evaluate_gym_policy

    torch.set_num_threads(int(cfg.threads))
    try:
        env, kwargs, ckpt, policies = ladder(cfg)
    except ValueError as e:
        raise SystemExit(f"dreamgym bench gym_verdict: {e}") from None
    name = env.replace("/", "_")
    run_ = BenchRun(f"gym_verdict_{name}", OmegaConf.to_container(cfg, resolve=True) | {"env": env, "checkpoint": ckpt, "ladder": policies})
    real, dream = [], []
    for pname, pol in policies.items():
        tic = time.time()
        r = evaluate_gym_policy(
            pol, env, kwargs, episodes=int(cfg.episodes), seed=int(cfg.seed), max_worlds=int(cfg.worlds), device=str(cfg.device)
        )
        d = dream_returns(pol, env, kwargs, ckpt, int(cfg.episodes), int(cfg.seed), int(cfg.worlds), str(cfg.device))
        real.append(r["returns"])
        dream.append(d["returns"])
        run_.add(pname, {
            "policy": pol,
            "real": {"mean_return": r["mean_return"], "ci95": r["return_ci95"], "mean_length": r["mean_length"], "returns": r["returns"]},
            "dream": {"mean_return": d["mean_return"], "ci95": list(t_interval(d["returns"])), "mean_length": d["mean_length"], "returns": d["returns"]},
            "dream_minus_real": d["mean_return"] - r["mean_return"],
            "wall_s": time.time() - tic,
        })  # fmt: skip
        print(f"bench gym_verdict: {pname}: real {r['mean_return']:.1f}, dream {d['mean_return']:.1f}", flush=True)
    run_.summary = correlations(real, dream, int(cfg.bootstrap), int(cfg.seed))
    out = run_.write(cfg.out)
    s = run_.summary
    print(
        f"bench gym_verdict: {env}, {s['policies']} policies: Spearman {s['spearman']:.2f} {s['spearman_ci95']}, Pearson {s['pearson']:.2f}; wrote {out}"
    )
    return 0
