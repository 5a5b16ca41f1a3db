"""``dreamgym bench verdict``: does the dream's verdict on a policy predict the simulator's?

For each task (default reach, push, social, avoid) a ladder of policies of clearly different
quality is scored twice, every arm measured in the run:

- ``<task>_sim``: in the real simulator, all policies in one batch on the same held-out rooms
  (``policies.evaluate.evaluate_policies``, rooms ``heldout_rooms(episodes, seed)``);
- ``<task>_dream``: in ``DreamVecEnv`` on the world model (``checkpoint``, default the shipped one,
  dreamed with its own sampler), all policies in one batch, each starting in the *same* held-out
  rooms as in the simulator (``SimulatorStarts(rooms=...)``): K-1 real steps of the context
  policy (``context_policy``, default the deterministic expert, so every policy's copy of a room
  has the same context), then every step dreamed. The dream's horizon is the episode length
  (the task's ``max_steps``, or ``max_steps.<task>`` if fewer) less those K-1 steps, so an episode
  is as long on both sides. Only what the policies read is dreamed (``required_obs_keys``:
  state only for the built-ins).

Policies act on what the env gives them: the scripted expert reads ``expert_actions()``, which the
dream env computes on the *dreamed* state, so a dream that does not follow the controls (or moves
the target) fails the expert there. The built-in policies act with their noise in both envs (an
evaluator's ``deterministic=True`` would switch an expert's noise off); trained checkpoints given
in ``extra_policies`` act deterministically, as ``eval-policy`` scores them.

The default ladder (``configs/bench/verdict.yaml``), seven rungs from best to worst: ``expert``;
``noisy_1`` .. ``noisy_4``, the expert with Gaussian noise on its actions in [-1, 1] (it slows
the walk, then turns it away); ``random_hold10`` (random actions held 0.5 s: the body walks and
turns); ``random`` (a fresh action every step: the gait mostly cancels out). One set of noise
levels does not spread every task: in a quick simulator run (16 held-out rooms per level) noise
0.3 to 2.0 all scored 1.00 on social, while on push 2.0 already scored 0 and 0.6 and 1.0 tied
at 0.50. So the levels are per task, placed on each task's success-versus-noise curve between the
expert's and random's success: reach 1.0, 2.0, 2.75, 3.5 (measured: 1.0 0.94, 2.0 0.75, 3.0 0.38,
4.0 0.19); push 0.3, 0.7, 1.2, 1.7 (0.3 0.62, 0.6 0.50, 1.4 0.25, 1.7 0.19, the expert 0.81);
social 2.5, 3.0, 3.5, 4.5 (2.0 1.00, 3.0 0.81, 4.0 0.44, 6.0 0.44); avoid 1.3, 1.6, 1.8, 2.0
(1.0 1.00, 1.3 0.94, 1.6 0.75, 2.0 0.19). The two random rungs never succeed on push and avoid
(and 6 % of the time on social), so they tie in success there and differ in return only.

Reported per task (``summary.tasks.<task>``): each policy's success rate (95 % Wilson interval)
and mean return (95 % t-interval) in both envs; the Spearman rank correlation between the dream's
and the simulator's scores over the policies, of success rate and of mean return, with a 95 %
percentile bootstrap interval (``bootstrap`` resamples: each policy's episodes are resampled with
replacement, independently in each env, and the correlation recomputed; resamples where one side
has all scores equal, so that no rank order exists, are left out and counted); Pearson beside it
for reference (WorldGym reports Pearson 0.78 between world-model and real success). The target,
``spearman_success >= target`` (0.9), is met or not per task (``target_met``); ``paired_rooms``
says whether every policy played the same rooms in both envs.

    dreamgym bench verdict [tasks=[reach]] [episodes=64] [checkpoint=DIR] [out=FILE.json]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dreamgym.benchmarks.runner import BenchRun, hash_path

WORLDGYM_PEARSON = 0.78  # WorldGym: Pearson between world-model and real success rates


# ------------------------------------------------------------------------------ rank statistics
def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, ties given their average rank."""
    from scipy.stats import rankdata

    return rankdata(x, method="average", axis=-1)


def _row_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (R, P); NaN where a row is constant."""
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(-1) / den
    return np.where(den > 1e-12, np.clip(r, -1.0, 1.0), np.nan)


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation of two score lists (None when either is constant: it is undefined)."""
    r = float(_row_pearson(np.asarray(x, dtype=np.float64)[None], np.asarray(y, dtype=np.float64)[None])[0])
    return None if math.isnan(r) else r


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation (Pearson of the average ranks, so ties count as ties); None when
    either list is constant."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"spearman needs two score lists of the same length >= 2, got {len(x)} and {len(y)}")
    return pearson(_ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, dtype=np.float64)))


def bootstrap_spearman(
    sim: Sequence[Sequence[float]],
    dream: Sequence[Sequence[float]],
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """A percentile bootstrap interval of the Spearman correlation between per-policy mean scores.

    ``sim[p]`` and ``dream[p]`` are policy p's per-episode scores in each env. Each resample draws
    every policy's episodes with replacement, independently in each env, and recomputes the rank
    correlation of the means. Returns ``ci95`` ([lo, hi], None when no resample is defined),
    ``resamples`` and ``undefined`` (resamples where one side's means were all equal).
    """
    if len(sim) != len(dream) or len(sim) < 2:
        raise ValueError(f"bootstrap_spearman needs the same policies (>= 2) on both sides, got {len(sim)} and {len(dream)}")
    if int(resamples) < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    rng = np.random.default_rng(seed)

    def means(side: Sequence[Sequence[float]]) -> np.ndarray:  # (R, P)
        cols = []
        for scores in side:
            a = np.asarray(scores, dtype=np.float64)
            if a.size == 0:
                raise ValueError("bootstrap_spearman: a policy has no episodes")
            cols.append(a[rng.integers(a.size, size=(int(resamples), a.size))].mean(1))
        return np.stack(cols, 1)

    r = _row_pearson(_ranks(means(sim)), _ranks(means(dream)))
    ok = r[np.isfinite(r)]
    tail = 100 * (1 - level) / 2
    ci = [float(np.percentile(ok, tail)), float(np.percentile(ok, 100 - tail))] if ok.size else None
    return {"ci95": ci, "resamples": int(resamples), "undefined": int(r.size - ok.size)}


# ------------------------------------------------------------------------------ policies
class Sampled:
    """A built-in policy that always acts with its own noise (``expert:noise=0.6`` is that noisy in
    both envs, whatever ``deterministic`` the evaluator passes)."""

    def __init__(self, policy: Any):
        self.policy = policy
        self.obs_keys = tuple(policy.obs_keys)

    def bind(self, env: Any) -> None:
        if hasattr(self.policy, "bind"):
            self.policy.bind(env)

    def reset(self, mask: torch.Tensor) -> None:
        if hasattr(self.policy, "reset"):
            self.policy.reset(mask)

    def act(self, obs: Mapping[str, torch.Tensor], deterministic: bool = True) -> torch.Tensor:
        return self.policy.act(obs, deterministic=False)


def is_builtin(spec: str) -> bool:
    """Whether ``spec`` names a built-in policy (``expert[:...]``, ``random[:...]``)."""
    return str(spec).split(":")[0] in ("expert", "random")


def load_arm_policies(specs: Mapping[str, str], task: str, seed: int) -> dict[str, Any]:
    """Fresh policies for one arm (the same seeds in every arm): built-ins wrapped in ``Sampled``."""
    from dreamgym.policies.base import load_policy

    out = {}
    for name, spec in specs.items():
        p = load_policy(str(spec), task=task, seed=seed)
        out[name] = Sampled(p) if is_builtin(str(spec)) else p
    return out


def wave_plan(episodes: int, n_policies: int, max_worlds: int) -> tuple[int, int]:
    """(episodes per policy per wave, waves), as ``evaluate_policies`` plans its batches."""
    per_wave = max(1, min(episodes, max_worlds // n_policies))
    waves = math.ceil(episodes / per_wave)
    return math.ceil(episodes / waves), waves


# ------------------------------------------------------------------------------ the two arms
def episode_steps(task: str, cfg: DictConfig) -> int:
    """Steps of an episode in both envs: the task's ``max_steps``, or ``cfg.max_steps[task]`` if fewer."""
    from dreamgym.envs.tasks import make_task

    own = make_task(task).max_steps
    cap = (cfg.get("max_steps") or {}).get(task)
    return own if cap is None else min(own, int(cap))


def sim_arm(task: str, specs: Mapping[str, str], cfg: DictConfig) -> dict[str, Any]:
    """Every policy in the simulator, one batch, the same held-out rooms."""
    from dreamgym.policies.evaluate import evaluate_policies

    tic = time.time()
    scores = evaluate_policies(
        load_arm_policies(specs, task, int(cfg.seed)),
        task=task,
        episodes=int(cfg.episodes),
        seed=int(cfg.seed),
        max_worlds=int(cfg.max_worlds),
        progress=bool(cfg.progress),
        per_episode=True,
        max_steps=episode_steps(task, cfg),
    )
    for s in scores.values():
        s.pop("wall_s", None)
    return {"policies": scores, "max_steps": episode_steps(task, cfg), "wall_s": time.time() - tic}


def dream_arm(task: str, specs: Mapping[str, str], cfg: DictConfig, model: Any) -> dict[str, Any]:
    """Every policy in the dream, one batch, each starting in the simulator arm's held-out rooms."""
    from dreamgym.policies.base import required_obs_keys
    from dreamgym.policies.evaluate import heldout_rooms, run_episodes, summarize
    from dreamgym.worldmodel.dream_env import DreamVecEnv
    from dreamgym.worldmodel.starts import SimulatorStarts

    tic = time.time()
    pols = load_arm_policies(specs, task, int(cfg.seed))
    per_wave, waves = wave_plan(int(cfg.episodes), len(pols), int(cfg.max_worlds))
    rooms = heldout_rooms(per_wave * waves, int(cfg.seed))
    keys = required_obs_keys(list(pols.values()))
    horizon = episode_steps(task, cfg) - (int(model.config.context) - 1)
    if horizon < 1:
        raise ValueError(f"max_steps.{task}={episode_steps(task, cfg)} leaves no dreamed step after the world model's K-1 context steps")
    acc: dict[str, dict[str, list]] = {name: {"returns": [], "successes": [], "lengths": [], "room_seeds": []} for name in pols}
    sampler, real_steps = None, 0
    for w in range(waves):
        wave_rooms = rooms[w * per_wave : (w + 1) * per_wave]
        starts = SimulatorStarts(str(cfg.context_policy), rooms=wave_rooms * len(pols), seed=int(cfg.seed))
        env = DreamVecEnv(
            model,
            num_envs=per_wave * len(pols),
            task=task,
            obs_keys=keys,
            horizon=horizon,
            num_denoising_steps=cfg.get("num_denoising_steps"),
            init_noise=cfg.get("init_noise"),
            seed=int(cfg.seed),
            return_tensors=True,
            starts=starts,
        )
        groups = {name: (p, torch.arange(i * per_wave, (i + 1) * per_wave)) for i, (name, p) in enumerate(pols.items())}
        res = run_episodes(env, groups, seed=int(cfg.seed), progress=bool(cfg.progress))
        sampler, real_steps = env.sampler_info, real_steps + env.real_steps
        env.close()
        for name in pols:
            for k in acc[name]:
                acc[name][k] += res[name][k]
    scores = {name: summarize(a["returns"], a["successes"], a["lengths"]) | a for name, a in acc.items()}
    return {
        "policies": scores,
        "observations": list(keys),
        "max_steps": episode_steps(task, cfg),
        "horizon": horizon,
        "context_policy": str(cfg.context_policy),
        "sampler": sampler,
        "start_real_steps": real_steps,
        "wall_s": time.time() - tic,
    }


# ------------------------------------------------------------------------------ the verdict
def _correlation(sim: Mapping[str, Any], dream: Mapping[str, Any], names: Sequence[str], key: str, cfg: DictConfig) -> dict[str, Any]:
    """Spearman (with its bootstrap interval) and Pearson between the two arms' per-policy ``key`` lists."""
    per_sim = [np.asarray(sim[n][key], dtype=np.float64) for n in names]
    per_dream = [np.asarray(dream[n][key], dtype=np.float64) for n in names]
    x, y = [float(a.mean()) for a in per_sim], [float(a.mean()) for a in per_dream]
    boot = bootstrap_spearman(per_sim, per_dream, int(cfg.bootstrap), seed=int(cfg.seed))
    return {"spearman": spearman(x, y), "spearman_ci95": boot["ci95"], "bootstrap_undefined": boot["undefined"], "pearson": pearson(x, y)}


def task_verdict(sim: Mapping[str, Any], dream: Mapping[str, Any], cfg: DictConfig) -> dict[str, Any]:
    """One task's figures: the per-policy table, the correlations, the target and the pairing."""
    names = list(sim)
    table = {}
    for n in names:
        s, d = sim[n], dream[n]
        table[n] = {
            "sim_success": s["success_rate"],
            "sim_success_ci95": s["success_ci95"],
            "dream_success": d["success_rate"],
            "dream_success_ci95": d["success_ci95"],
            "sim_return": s["mean_return"],
            "sim_return_ci95": s["return_ci95"],
            "dream_return": d["mean_return"],
            "dream_return_ci95": d["return_ci95"],
            "episodes": [s["episodes"], d["episodes"]],
        }
    succ = _correlation(sim, dream, names, "successes", cfg)
    ret = _correlation(sim, dream, names, "returns", cfg)
    target = float(cfg.target)
    return {
        "policies": table,
        "spearman_success": succ["spearman"],
        "spearman_success_ci95": succ["spearman_ci95"],
        "spearman_success_bootstrap_undefined": succ["bootstrap_undefined"],
        "pearson_success": succ["pearson"],
        "spearman_return": ret["spearman"],
        "spearman_return_ci95": ret["spearman_ci95"],
        "spearman_return_bootstrap_undefined": ret["bootstrap_undefined"],
        "pearson_return": ret["pearson"],
        "target": target,
        "target_met": succ["spearman"] is not None and succ["spearman"] >= target,
        "target_met_return": ret["spearman"] is not None and ret["spearman"] >= target,
        "paired_rooms": all(sim[n]["room_seeds"] == dream[n]["room_seeds"] for n in names),
    }


def policy_specs(cfg: DictConfig, task: str) -> dict[str, str]:
    """Task ``task``'s ladder (``policies``: a spec, or task -> spec) and the trained checkpoints
    (``extra_policies``), name -> spec, restricted to the names in ``only`` (None: all)."""
    specs = {}
    for name, spec in (cfg.policies or {}).items():
        if isinstance(spec, (str, Path)):
            specs[str(name)] = str(spec)
        elif task in spec:
            specs[str(name)] = str(spec[task])
        else:
            raise ValueError(f"policies.{name} gives no spec for task {task!r} (it has {sorted(spec)})")
    extra = {str(k): str(v) for k, v in (cfg.get("extra_policies") or {}).items()}
    both = sorted(set(specs) & set(extra))
    if both:
        raise ValueError(f"policy names {both} are in both policies and extra_policies; give each policy one name")
    specs |= extra
    only = cfg.get("only")
    if only is None:
        return specs
    unknown = sorted(set(only) - set(specs))
    if unknown:
        raise ValueError(f"only: {unknown} are not named in policies or extra_policies ({sorted(specs)})")
    return {n: s for n, s in specs.items() if n in set(only)}


def bench(cfg: DictConfig, run: BenchRun | None = None, on_task: Callable[[BenchRun], Any] | None = None) -> dict[str, Any]:
    """Both arms of every task (``configs/bench/verdict.yaml``); returns the JSON-ready result.

    ``on_task(run)`` is called after each task, with the summary of the tasks done so far (the
    entry point writes the JSON then, so a long run leaves its finished tasks behind)."""
    from dreamgym.worldmodel.dream_env import DEFAULT_CHECKPOINT, load_world_model

    run = run or BenchRun("verdict", cfg)
    ladders = {task: policy_specs(cfg, task) for task in list(cfg.tasks)}
    for task, specs in ladders.items():
        if len(specs) < 3:
            raise ValueError(f"a rank correlation needs at least 3 policies, got {len(specs)} for {task} ({sorted(specs)})")
    source = Path(cfg.checkpoint) if cfg.checkpoint is not None else DEFAULT_CHECKPOINT
    model = load_world_model(source)
    tasks: dict[str, Any] = {}
    for task, specs in ladders.items():
        sim = run.add(f"{task}_sim", sim_arm(task, specs, cfg))
        dream = run.add(f"{task}_dream", dream_arm(task, specs, cfg, model))
        tasks[task] = task_verdict(sim["policies"], dream["policies"], cfg)
        _print_task(task, tasks[task])
        run.summary = {
            "tasks": tasks,
            "complete": len(tasks) == len(ladders),
            "all_targets_met": all(t["target_met"] for t in tasks.values()),
            "target": f"spearman_success >= {float(cfg.target)} per task",
            "reference": f"WorldGym: Pearson {WORLDGYM_PEARSON} between world-model and real success",
            "policies": ladders,
            "episodes_per_policy": int(cfg.episodes),
            "world_model": {"source": str(source), "sha256": hash_path(source)},
            "sampler": next((run.arms[f"{t}_dream"]["sampler"] for t in tasks), None),
        }
        if on_task is not None:
            on_task(run)
    return run.result()


def _print_task(task: str, v: Mapping[str, Any]) -> None:
    f = lambda x: "-" if x is None else f"{x:+.2f}"  # noqa: E731
    rows = ", ".join(f"{n} {p['sim_success']:.2f}/{p['dream_success']:.2f}" for n, p in v["policies"].items())
    print(
        f"bench verdict ({task}): spearman success {f(v['spearman_success'])} {v['spearman_success_ci95']}, "
        f"return {f(v['spearman_return'])}; target met: {v['target_met']}; success sim/dream: {rows}",
        flush=True,
    )


def run(cfg: DictConfig) -> int:
    """Entry point of ``dreamgym bench verdict``."""
    torch.set_num_threads(int(cfg.threads))
    bench_run = BenchRun("verdict", OmegaConf.to_container(cfg, resolve=True))
    s = bench(cfg, bench_run, on_task=lambda r: r.write(cfg.out))["summary"]
    path = bench_run.write(cfg.out)
    print(f"bench verdict: all targets met: {s['all_targets_met']}; {path}", flush=True)
    return 0
