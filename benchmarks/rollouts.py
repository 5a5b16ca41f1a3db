"""``dreamgym bench collect`` and ``dreamgym bench loader``.

bench collect: in one run and on one ``EgoRoomVecEnv`` of B worlds, steps/s of the bare env
against steps/s of collection. Both drive the env through the same rounds (same rooms, behaviours
and actions: the bare run uses the collector's policy mix with the same seed, so physics,
rendering and auto-resets cost the same); collection adds recording every step and the writer
thread packing gzip shards, and its clock runs until each round's shards are on disk. Round by
round the two alternate (bare then collect, then collect then bare, ...) so that the machine's
changing load hits both alike. ``collect_over_env`` is the ratio of the totals.

bench loader: windows/s of ``WindowDataset`` through a ``DataLoader`` with the configured workers
(the figure a training loop sees), and the cost of a window in one process.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf


def _write_json(path: str | Path, result: dict[str, Any]) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    print(json.dumps(result, indent=2))


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
    }


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


def run_collect(cfg: DictConfig) -> int:
    from dreamgym.envs.vec_env import EgoRoomVecEnv
    from dreamgym.rollouts.collect import Collector, ShardWriter, env_spec, parse_policy
    from dreamgym.rollouts.dataset import Manifest

    policy = parse_policy(OmegaConf.to_container(cfg.policy) if OmegaConf.is_config(cfg.policy) else cfg.policy)
    B, res, seed, L = int(cfg.num_envs), int(cfg.resolution), int(cfg.seed), int(cfg.round_steps)
    env = EgoRoomVecEnv(num_envs=B, task=cfg.task, resolution=res, seed=seed, return_tensors=True)
    env.reset_tensors(seed=seed)
    for _ in range(int(cfg.warmup_steps)):
        env.step_tensors(torch.zeros(B, 6))
    work = Path(tempfile.mkdtemp(prefix="bench_collect_", dir=cfg.get("work_dir")))
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
    times = {"bare": 0.0, "collect": 0.0}
    rounds = []
    try:
        manifest = Manifest.new(work, env_spec(env, cfg.task), {**settings, "steps": int(cfg.rounds) * L * B}, 0.1)
        manifest.save()
        writer = ShardWriter(
            work,
            manifest,
            int(cfg.shard_episodes),
            int(cfg.queue_episodes),
            {"compression": cfg.compression, "compression_level": cfg.compression_level, "image_chunk_steps": int(cfg.image_chunk_steps)},
        )
        collector = Collector(env, settings, writer, capacity=L)
        for r in range(int(cfg.rounds)):
            row = {"round": r}
            for what in ("bare", "collect") if r % 2 == 0 else ("collect", "bare"):
                t0 = time.perf_counter()
                if what == "bare":
                    bare_round(env, policy, float(cfg.noise), seed, r, L)
                else:
                    collector.run_round(r, L)
                    writer.sync()  # its shards are on disk before the clock stops
                dt = time.perf_counter() - t0
                times[what] += dt
                row[f"{what}_steps_per_s"] = round(L * B / dt, 2)
            row["ratio"] = round(row["collect_steps_per_s"] / row["bare_steps_per_s"], 4)
            rounds.append(row)
            print(
                f"round {r}: bare {row['bare_steps_per_s']:.1f} steps/s, collect {row['collect_steps_per_s']:.1f} steps/s "
                f"(ratio {row['ratio']:.3f})",
                flush=True,
            )
        t0 = time.perf_counter()
        writer.close()
        times["collect"] += time.perf_counter() - t0
        stored_bytes = sum(p.stat().st_size for p in work.glob("shard-*.h5"))
        stored_steps, stored_episodes = manifest.num_steps, manifest.num_episodes
        writer_busy = writer.busy_seconds
    finally:
        shutil.rmtree(work, ignore_errors=True)
    steps = int(cfg.rounds) * L * B
    env_rate, col_rate = steps / times["bare"], steps / times["collect"]
    result = {
        "task": cfg.task,
        "num_envs": B,
        "resolution": res,
        "policy": policy,
        "compression": cfg.compression,
        "steps_measured": steps,
        "env_steps_per_s": round(env_rate, 2),
        "collect_steps_per_s": round(col_rate, 2),
        "collect_over_env": round(col_rate / env_rate, 4),
        "median_round_ratio": float(np.median([r["ratio"] for r in rounds])),
        "writer_busy_fraction": round(writer_busy / times["collect"], 4),
        "stored_steps": stored_steps,
        "stored_episodes": stored_episodes,
        "bytes_per_step": round(stored_bytes / max(1, stored_steps)),
        "rounds": rounds,
        "machine": _machine(),
    }
    _write_json(cfg.out, result)
    return 0


def _loader_dataset(cfg: DictConfig) -> Path:
    """The dataset to read: ``path=`` if given, else one collected (once) into ``data_dir``."""
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


def _loader_rate(ds, batch_size: int, num_workers: int, warmup: int, seconds: float) -> float:
    """Windows/s a training loop receives from ``make_loader(ds)`` (shuffled, batched, workers)."""
    from dreamgym.rollouts.loader import make_loader

    loader = make_loader(ds, batch_size=batch_size, num_workers=num_workers, seed=0)
    it = iter(loader)
    for _ in range(warmup):
        if next(it, None) is None:
            it = iter(loader)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        batch = next(it, None)
        if batch is None:
            it = iter(loader)
            continue
        n += batch["actions"].shape[0]
    rate = n / (time.perf_counter() - t0)
    del it, loader
    return rate


def _single_process_rate(ds, windows: int) -> float:
    idx = np.random.default_rng(0).integers(len(ds), size=windows)
    t0 = time.perf_counter()
    for i in idx:
        ds[int(i)]
    return len(idx) / (time.perf_counter() - t0)


def run_loader(cfg: DictConfig) -> int:
    from dreamgym.rollouts.loader import WindowDataset

    root = _loader_dataset(cfg)
    K, H = int(cfg.context), int(cfg.horizon)
    t0 = time.perf_counter()
    ds = WindowDataset(root, context=K, horizon=H, split="train")
    open_seconds = time.perf_counter() - t0
    if len(ds) == 0:
        raise SystemExit(f"dreamgym bench loader: {root} has no train windows of {K + H} steps")
    window_bytes = sum(v.numel() * v.element_size() for v in ds[0].values())
    bs, nw, warm, secs = int(cfg.batch_size), int(cfg.num_workers), int(cfg.warmup_batches), float(cfg.measure_seconds)
    print(f"{len(ds)} windows of {K}+{H} steps from {len(ds.episodes)} episodes; reading from disk ...", flush=True)
    single = _single_process_rate(ds, int(cfg.single_process_windows))
    rate = _loader_rate(ds, bs, nw, warm, secs)
    print(f"  {rate:.1f} windows/s with {nw} workers, {single:.1f} windows/s in one process", flush=True)
    result = {
        "dataset": str(root),
        "context": K,
        "horizon": H,
        "keys": list(ds.keys),
        "windows": len(ds),
        "episodes": len(ds.episodes),
        "batch_size": bs,
        "num_workers": nw,
        "windows_per_s": round(rate, 1),
        "megabytes_per_s": round(rate * window_bytes / 1e6, 1),
        "single_process_windows_per_s": round(single, 1),
        "single_process_ms_per_window": round(1000 / single, 3),
        "window_bytes": int(window_bytes),
        "open_seconds": round(open_seconds, 3),
    }
    if cfg.in_memory:
        t0 = time.perf_counter()
        mem = WindowDataset(root, context=K, horizon=H, split="train", in_memory=True)
        load = time.perf_counter() - t0
        print("in memory ...", flush=True)
        single_mem = _single_process_rate(mem, int(cfg.single_process_windows))
        rate_mem = _loader_rate(mem, bs, nw, warm, secs)
        print(f"  {rate_mem:.1f} windows/s with {nw} workers, {single_mem:.1f} windows/s in one process", flush=True)
        result.update(
            {
                "in_memory_windows_per_s": round(rate_mem, 1),
                "in_memory_single_process_windows_per_s": round(single_mem, 1),
                "in_memory_load_seconds": round(load, 2),
            }
        )
    result["machine"] = _machine()
    _write_json(cfg.out, result)
    return 0
