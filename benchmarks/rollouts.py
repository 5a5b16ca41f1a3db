"""``dreamgym bench collect`` and ``dreamgym bench loader``.

bench collect: in one run and on one ``EgoRoomVecEnv`` of B worlds, steps/s of the bare env
(arm ``env``) against steps/s of collection (arm ``collect``). Both drive the env through the same
rounds (same rooms, behaviours and actions: the bare run uses the collector's policy mix with the
same seed, so physics, rendering and auto-resets cost the same); collection adds recording every
step and the writer thread packing gzip shards, and its clock runs until each round's shards are
on disk. Round by round the two alternate (bare then collect, then collect then bare, ...) so
that the machine's changing load hits both alike; each round is one repeat of each arm.
``summary.collect_over_env`` is the ratio of the totals.

bench loader: windows/s of ``WindowDataset`` through a ``DataLoader`` with the configured workers
(arm ``loader``: the figure a training loop sees) and in one process (arm ``single_process``),
from disk and (``in_memory: true``) from a dataset held in memory.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dreamgym.benchmarks.runner import MIN_REPEATS, BenchRun, Timing, start, summarise, timed


def bare_round(env, policy: dict, noise: float, seed: int, r: int, L: int) -> None:
    """Round ``r`` of ``L`` steps driven exactly as ``collect`` drives it (same rooms, behaviours
    and actions for the same seed), recording and writing nothing."""
    from dreamgym.rollouts.collect import BehaviourMix, round_seed

    mix = BehaviourMix(policy, noise, seed, r, env.num_envs)
    env.reset_tensors(seed=round_seed(seed, r, env.num_envs))
    mix.draw(np.arange(env.num_envs))
    for _ in range(L):
        _, _, term, trunc, _ = env.step_tensors(mix.actions(env))
        done = (term | trunc).cpu().numpy()
        if done.any():
            mix.draw(np.nonzero(done)[0])


# ------------------------------------------------------------------------------ collect
def _collect_rounds(cfg: DictConfig, env, policy: dict, work: Path) -> dict[str, Any]:
    """Alternate bare and collected rounds; per-round rates, totals and what was stored."""
    from dreamgym.rollouts.collect import Collector, ShardWriter, env_spec
    from dreamgym.rollouts.dataset import Manifest

    B, seed, L, rounds = env.num_envs, int(cfg.seed), int(cfg.round_steps), int(cfg.rounds)
    settings = {
        "task": cfg.task,
        "num_envs": B,
        "seed": seed,
        "policy": policy,
        "noise": float(cfg.noise),
        "resolution": list(env.resolution),
        "round_steps": L,
        "obs_keys": list(env.obs_keys),
    }
    manifest = Manifest.new(work, env_spec(env, cfg.task), {**settings, "steps": rounds * L * B}, 0.1)
    manifest.save()
    shard = {"compression": cfg.compression, "compression_level": cfg.compression_level, "image_chunk_steps": int(cfg.image_chunk_steps)}
    writer = ShardWriter(work, manifest, int(cfg.shard_episodes), int(cfg.queue_episodes), shard)
    collector = Collector(env, settings, writer, capacity=L)
    times = {"env": 0.0, "collect": 0.0}
    rows = []
    for r in range(rounds):
        row: dict[str, Any] = {"round": r}
        for what in ("env", "collect") if r % 2 == 0 else ("collect", "env"):
            t0 = time.perf_counter()
            if what == "env":
                bare_round(env, policy, float(cfg.noise), seed, r, L)
            else:
                collector.run_round(r, L)
                writer.sync()  # its shards are on disk before the clock stops
            dt = time.perf_counter() - t0
            times[what] += dt
            row[f"{what}_steps_per_s"] = L * B / dt
        row["ratio"] = row["collect_steps_per_s"] / row["env_steps_per_s"]
        rows.append(row)
        print(f"round {r}: env {row['env_steps_per_s']:.1f} steps/s, collect {row['collect_steps_per_s']:.1f} (ratio {row['ratio']:.3f})")
    t0 = time.perf_counter()
    writer.close()  # the last shard's packing counts for collection
    times["collect"] += time.perf_counter() - t0
    return {
        "rows": rows,
        "times": times,
        "steps": rounds * L * B,
        "stored_bytes": sum(p.stat().st_size for p in work.glob("shard-*.h5")),
        "stored_steps": manifest.num_steps,
        "stored_episodes": manifest.num_episodes,
        "writer_busy_s": writer.busy_seconds,
    }


def run_collect(cfg: DictConfig) -> int:
    """Entry point of ``dreamgym bench collect`` (``configs/bench/collect.yaml``)."""
    from dreamgym.envs.vec_env import EgoRoomVecEnv
    from dreamgym.rollouts.collect import parse_policy

    if int(cfg.rounds) < MIN_REPEATS:
        raise SystemExit(f"dreamgym bench collect: rounds must be at least {MIN_REPEATS} (each round is a repeat), got {cfg.rounds}")
    torch.set_num_threads(int(cfg.threads))
    run = start("collect", cfg)
    policy = parse_policy(OmegaConf.to_container(cfg.policy) if OmegaConf.is_config(cfg.policy) else cfg.policy)
    B, seed = int(cfg.num_envs), int(cfg.seed)
    env = EgoRoomVecEnv(num_envs=B, task=cfg.task, resolution=int(cfg.resolution), seed=seed, return_tensors=True)
    env.reset_tensors(seed=seed)
    for _ in range(int(cfg.warmup_steps)):
        env.step_tensors(torch.zeros(B, 6))
    work = Path(tempfile.mkdtemp(prefix="bench_collect_", dir=cfg.get("work_dir")))
    try:
        m = _collect_rounds(cfg, env, policy, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        env.close()
    rows, times, steps = m["rows"], m["times"], m["steps"]
    for arm in ("env", "collect"):
        run.add(
            arm,
            summarise([r[f"{arm}_steps_per_s"] for r in rows], "steps_per_s")
            | {"total_steps_per_s": steps / times[arm], "seconds": times[arm], "steps": steps},
        )
    run.arms["collect"] |= {
        "writer_busy_fraction": m["writer_busy_s"] / times["collect"],
        "stored_steps": m["stored_steps"],
        "stored_episodes": m["stored_episodes"],
        "bytes_per_step": round(m["stored_bytes"] / max(1, m["stored_steps"])),
    }
    run.summary = {
        "collect_over_env": (steps / times["collect"]) / (steps / times["env"]),
        "median_round_ratio": float(np.median([r["ratio"] for r in rows])),
        "rounds": rows,
    }
    run.write(cfg.out)
    print(f"bench collect: collect_over_env {run.summary['collect_over_env']:.3f}", flush=True)
    return 0


# ------------------------------------------------------------------------------ loader
def _loader_dataset(cfg: DictConfig) -> Path:
    """The dataset to read: ``path=`` if given, else one collected (once) into ``dataset.out``."""
    from dreamgym.rollouts.collect import collect

    if cfg.get("path"):
        return Path(cfg.path)
    d = cfg.dataset
    root = Path(d.out)
    print(f"collecting the benchmark dataset into {root} (kept for the next run) ...", flush=True)
    collect(
        root,
        task=d.task,
        steps=int(d.steps),
        num_envs=int(d.num_envs),
        resolution=int(d.resolution),
        round_steps=int(d.round_steps),
        seed=int(d.seed),
        progress=True,
    )
    return root


def loader_rate(ds, batch_size: int, num_workers: int, timing: Timing) -> dict[str, Any]:
    """Windows/s a training loop receives from ``make_loader(ds)`` (shuffled, batched, workers)."""
    from dreamgym.rollouts.loader import make_loader

    state = {"loader": make_loader(ds, batch_size=batch_size, num_workers=num_workers, seed=0)}
    state["it"] = iter(state["loader"])

    def next_batch() -> int:
        batch = next(state["it"], None)
        if batch is None:  # an epoch ended: start the next one
            state["it"] = iter(state["loader"])
            batch = next(state["it"])
        return int(batch["actions"].shape[0])

    try:
        return timed(next_batch, timing, per_call=None, unit="windows_per_s") | {"batch_size": batch_size, "num_workers": num_workers}
    finally:
        state.clear()  # stops the loader's worker processes


def single_process_rate(ds, timing: Timing) -> dict[str, Any]:
    """Windows/s of ``ds[i]`` at random indices in this process."""
    rng = np.random.default_rng(0)
    r = timed(lambda: ds[int(rng.integers(len(ds)))], timing, per_call=1, unit="windows_per_s")
    return r | {"ms_per_window": 1000 / r["median"]}


def _measure_loader(run: BenchRun, cfg: DictConfig, ds, prefix: str) -> None:
    bs, nw = int(cfg.batch_size), int(cfg.num_workers)
    timing = Timing.from_cfg(cfg)
    single_timing = Timing(repeats=timing.repeats, warmup=timing.warmup, min_seconds=0.0, min_calls=int(cfg.single_process_windows))
    single = run.add(f"{prefix}single_process", single_process_rate(ds, single_timing))
    loader = run.add(f"{prefix}loader", loader_rate(ds, bs, nw, timing))
    print(f"  {loader['median']:.1f} windows/s with {nw} workers, {single['median']:.1f} windows/s in one process", flush=True)


def run_loader(cfg: DictConfig) -> int:
    """Entry point of ``dreamgym bench loader`` (``configs/bench/loader.yaml``)."""
    from dreamgym.rollouts.loader import WindowDataset

    torch.set_num_threads(int(cfg.threads))
    run = start("loader", cfg)
    root = _loader_dataset(cfg)
    K, H = int(cfg.context), int(cfg.horizon)
    t0 = time.perf_counter()
    ds = WindowDataset(root, context=K, horizon=H, split="train")
    open_seconds = time.perf_counter() - t0
    if len(ds) == 0:
        raise SystemExit(f"dreamgym bench loader: {root} has no train windows of {K + H} steps")
    window_bytes = sum(v.numel() * v.element_size() for v in ds[0].values())
    print(f"{len(ds)} windows of {K}+{H} steps from {len(ds.episodes)} episodes; reading from disk ...", flush=True)
    _measure_loader(run, cfg, ds, "")
    run.summary = {
        "dataset": str(root),
        "keys": list(ds.keys),
        "windows": len(ds),
        "episodes": len(ds.episodes),
        "window_bytes": int(window_bytes),
        "open_seconds": open_seconds,
        "loader_megabytes_per_s": run.arms["loader"]["median"] * window_bytes / 1e6,
    }
    if cfg.in_memory:
        t0 = time.perf_counter()
        mem = WindowDataset(root, context=K, horizon=H, split="train", in_memory=True)
        run.summary["in_memory_load_seconds"] = time.perf_counter() - t0
        print("in memory ...", flush=True)
        _measure_loader(run, cfg, mem, "in_memory_")
        run.summary["in_memory_over_disk_loader"] = run.arms["in_memory_loader"]["median"] / run.arms["loader"]["median"]
    run.write(cfg.out)
    return 0
