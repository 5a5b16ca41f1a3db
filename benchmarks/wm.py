"""``dreamgym bench wm``: world-model speed, beside the simulator it stands in for.

    dreamgym bench wm out=bench_wm.json [checkpoint=<ckpt>]

Measures, in one run:

- **training**: samples/s of one optimisation step as ``train-wm`` takes it (noise drawn by
  ``worldmodel.train.draw_noise`` with ``configs/train_wm.yaml``'s settings, so some steps skip
  the frame branch as in training; ``WorldModel.loss``, backward, gradient clipping, AdamW) on
  a batch of ``train_batch_size`` windows, data loading excluded; the JSON says what was timed.
- **dreaming**: transitions/s of ``WorldModel.imagine`` at each batch size B and number of
  denoising steps, with every modality (``frames``), with frames skipped (``state_only``: body
  motion, props, occupancy) and with frames and occupancy skipped (``body_only``). A call on B
  worlds counts as B transitions.
- **baseline**: ``EgoRoomVecEnv`` steps/s at the same B (ego frames rendered, and state-only
  observations, which skip rendering; the simulator has no cheaper mode for ``body_only``), so
  the JSON has ``ratio_vs_sim`` = dream / sim.

The inputs are real windows recorded from the simulator (random actions), tiled to each B. The
model is ``checkpoint``'s, or the embedded default (``configs/worldmodel/default.yaml``) with
random weights (speed does not depend on the weights).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

STATE_KEYS = ["motion", "partner_motion", "props", "occupancy"]  # frames skipped
BODY_KEYS = ["motion", "partner_motion", "props"]  # frames and occupancy skipped
SIM_STATE_OBS = ["motion", "partner_motion", "occupancy", "task_obs", "instruction"]


def _timed(fn: Callable[[], Any], min_seconds: float, min_calls: int, warmup: int) -> tuple[int, float]:
    for _ in range(warmup):
        fn()
    n, t0 = 0, time.perf_counter()
    while n < min_calls or time.perf_counter() - t0 < min_seconds:
        fn()
        n += 1
    return n, time.perf_counter() - t0


# ------------------------------------------------------------------------------ inputs
def record_windows(env, steps: int, seed: int) -> dict[str, torch.Tensor]:
    """(B, steps, ...) observations, props, actions, rewards and terminations from ``env`` (random
    actions), plus instruction (B,): the training-window / context format."""
    from dreamgym.worldmodel.evaluate import props_from_qpos

    gen = torch.Generator().manual_seed(seed)
    obs, _ = env.reset_tensors(seed=seed)
    rows: dict[str, list] = {}
    for _ in range(steps):
        a = torch.rand(env.num_envs, 6, generator=gen) * 2 - 1
        for k, v in obs.items():
            rows.setdefault(k, []).append(v.clone())
        rows.setdefault("props", []).append(props_from_qpos(env.sim_state()["qpos"]))
        obs, r, term, _, _ = env.step_tensors(a)
        rows.setdefault("actions", []).append(a)
        rows.setdefault("partner_actions", []).append(env.core.partner_action.clone())
        rows.setdefault("rewards", []).append(r.float())
        rows.setdefault("terminations", []).append(term)
    out = {k: torch.stack(v, 1).cpu() for k, v in rows.items() if k not in ("instruction", "task_obs")}
    out["instruction"] = rows["instruction"][0].cpu()
    return out


def tile(batch: dict[str, torch.Tensor], B: int) -> dict[str, torch.Tensor]:
    """Repeat the rows of a batch to B rows."""
    n = next(iter(batch.values())).shape[0]
    idx = torch.arange(B) % n
    return {k: v[idx] for k, v in batch.items()}


# ------------------------------------------------------------------------------ measurements
def default_train_step(model: torch.nn.Module, train_cfg: Mapping[str, Any] | None = None) -> tuple[Callable[[dict], None], str]:
    """One optimisation step on a window batch (B, K+1, ...), as ``train-wm`` takes it: noise and
    sigmas drawn by ``worldmodel.train.draw_noise`` with the training config's ``noise`` settings
    (some steps skip the frame branch, as in training), ``WorldModel.loss``, backward, gradient
    clipping, AdamW. Without ``worldmodel.train``, EDM training sigmas for every modality.
    Returns the step function and a description of what it does."""
    from dreamgym.worldmodel import edm
    from dreamgym.worldmodel.config import NoiseConfig

    tc = dict(train_cfg or {})
    noise_cfg = dict(tc.get("noise") or {"p_clean": 0.1, "p_sigma_max": 0.15, "p_skip_frames": 0.5, "p_skip_occupancy": 0.1})
    opt = torch.optim.AdamW(model.parameters(), lr=float(tc.get("lr", 1e-3)), weight_decay=float(tc.get("weight_decay", 0.01)))
    gen = torch.Generator().manual_seed(0)
    try:
        from dreamgym.worldmodel.train import draw_noise
    except ImportError:
        draw_noise = None
    counter = [0]

    def draws(B: int):
        if draw_noise is not None:
            return draw_noise(model.config, noise_cfg, counter[0], list(range(B)), 0)
        c = model.config
        shapes = model._target_shapes(B)
        noise = {m: torch.randn(shapes[m], generator=gen) for m in c.modalities}
        sigma = {m: edm.sample_training_sigma(B, NoiseConfig(), generator=gen) for m in c.modalities}
        return noise, sigma, [m for m in ("ego", "occupancy") if m in c.modalities]

    PB = int(tc.get("prior_batch") or 0) if getattr(model.config, "state_prior", 0) else 0

    def step(batch: dict) -> None:
        model.train()
        noise, sigma, branches = draws(batch["motion"].shape[0])
        counter[0] += 1
        # the state prior's own batch of state-only windows, as train-wm draws it
        prior = (
            tile({k: batch[k] for k in ("motion", "partner_motion", "props", "actions", "partner_actions") if k in batch}, PB)
            if PB
            else None
        )
        loss = model.loss(batch, noise, sigma, branches, prior)["total"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(tc.get("grad_clip", 1.0)))
        opt.step()
        opt.zero_grad(set_to_none=True)

    how = (
        ("worldmodel.train.draw_noise (noise " + json.dumps(noise_cfg) + ")") if draw_noise is not None else "EDM sigmas for every modality"
    )
    how += f", state-prior batch {PB}" if PB else ""
    return step, f"WorldModel.loss with {how} + backward + grad clip + AdamW step"


def sampling_rate(
    model,
    ctx: dict[str, torch.Tensor],
    actions: torch.Tensor,
    num_steps: int,
    modalities: Sequence[str] | None,
    min_seconds: float,
    min_calls: int,
    warmup: int,
) -> float:
    """Transitions/s of ``model.imagine`` on a (B, K, ...) context."""
    gen = torch.Generator().manual_seed(0)
    B = actions.shape[0]

    def call():
        with torch.no_grad():
            model.imagine(ctx, actions, num_steps=num_steps, modalities=modalities, generator=gen)

    n, dt = _timed(call, min_seconds, min_calls, warmup)
    return n * B / dt


def sim_rate(
    B: int, task: str, resolution: int, obs_keys: Sequence[str] | None, min_seconds: float, warmup: int, seed: int, record: int = 0
) -> tuple[float, dict | None]:
    """EgoRoomVecEnv steps/s at B worlds (random actions); optionally also records ``record`` steps."""
    from dreamgym.envs.vec_env import EgoRoomVecEnv

    env = EgoRoomVecEnv(num_envs=B, task=task, resolution=resolution, seed=seed, obs_keys=obs_keys, return_tensors=True)
    windows = record_windows(env, record, seed) if record else None
    env.reset_tensors(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    n, dt = _timed(lambda: env.step_tensors(torch.rand(B, 6, generator=gen) * 2 - 1), min_seconds, 3, warmup)
    env.close()
    return n * B / dt, windows


# ------------------------------------------------------------------------------ driver
def bench(
    model: torch.nn.Module,
    batch_sizes: Sequence[int] = (1, 16, 64),
    num_steps: Sequence[int] = (1, 3),
    train_batch_size: int = 16,
    task: str = "reach",
    seconds: float = 3.0,
    min_calls: int = 2,
    warmup: int = 1,
    sim_baseline: bool = True,
    seed: int = 0,
    train_step: Callable[[dict], None] | None = None,
    train_loss_name: str | None = None,
    train_cfg: Mapping[str, Any] | None = None,
    windows: dict[str, torch.Tensor] | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every measurement; returns the JSON-ready result (see the module docstring)."""
    from dreamgym.worldmodel.evaluate import model_spec

    spec = model_spec(model)
    K = spec.context
    res = spec.resolution[0] if spec.resolution else 64
    full = list(spec.modalities)
    state = [m for m in STATE_KEYS if m in full]
    sim: dict[str, dict[str, float]] = {}
    if sim_baseline:
        for B in batch_sizes:
            progress(f"simulator B={B} ...")
            r_full, w = sim_rate(
                B, task, res, None, seconds, warmup, seed, record=K + 1 if windows is None and B == max(batch_sizes) else 0
            )
            r_state, _ = sim_rate(B, task, res, SIM_STATE_OBS, seconds, warmup, seed)
            sim[str(B)] = {"frames": r_full, "state_only": r_state}
            windows = windows if windows is not None else w
            progress(f"  {r_full:.1f} steps/s with ego frames, {r_state:.1f} state-only")
    if windows is None:
        from dreamgym.envs.vec_env import EgoRoomVecEnv

        env = EgoRoomVecEnv(num_envs=min(4, max(batch_sizes)), task=task, resolution=res, seed=seed, return_tensors=True)
        windows = record_windows(env, K + 1, seed)
        env.close()

    # training
    train: dict[str, Any] = {}
    if train_step is None and callable(getattr(model, "loss", None)):
        train_step, train_loss_name = default_train_step(model, train_cfg)
    if train_step is not None:
        batch = tile(windows, train_batch_size)
        progress(f"training step, batch {train_batch_size} ...")
        n, dt = _timed(lambda: train_step(batch), seconds, min_calls, warmup)
        train = {
            "batch_size": train_batch_size,
            "samples_per_s": n * train_batch_size / dt,
            "seconds_per_step": dt / n,
            "loss": train_loss_name or "given train_step",
        }
        progress(f"  {train['samples_per_s']:.1f} samples/s")
    if hasattr(model, "eval"):
        model.eval()

    # dreaming
    sampling = []
    for B in batch_sizes:
        w = tile(windows, B)
        ctx_all = {k: w[k][:, :K] for k in full if k in w}
        ctx_all["instruction"] = w["instruction"]
        actions = w["actions"][:, :K]
        sets = {"frames": full, "state_only": state, "body_only": [m for m in BODY_KEYS if m in full]}
        for mods_name, mods in sets.items():
            if not mods or (mods_name != "frames" and mods == full) or (mods_name == "body_only" and mods == state):
                continue
            ctx = {k: v for k, v in ctx_all.items() if k in mods or k == "instruction"}
            for steps in num_steps:
                progress(f"dream B={B} steps={steps} {mods_name} ...")
                rate = sampling_rate(model, ctx, actions, int(steps), mods, seconds, min_calls, warmup)
                row = {"batch_size": B, "num_steps": int(steps), "modalities": mods_name, "transitions_per_s": rate}
                if str(B) in sim:
                    s = sim[str(B)]["frames" if mods_name == "frames" else "state_only"]
                    row |= {"sim_steps_per_s": s, "ratio_vs_sim": rate / s}
                sampling.append(row)
                progress(f"  {rate:.1f} transitions/s" + (f" ({row['ratio_vs_sim']:.2f}x the simulator)" if "ratio_vs_sim" in row else ""))
    n_params = sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else 0
    cfg = getattr(model, "config", None)
    return {
        "model": {
            "parameters": n_params,
            "context": K,
            "resolution": res,
            "modalities": full,
            "config": cfg.to_dict() if hasattr(cfg, "to_dict") else None,
        },
        "train": train,
        "sampling": sampling,
        "sim_steps_per_s": sim,
        "task": task,
        "threads": torch.get_num_threads(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }


def run(cfg) -> int:
    """``dreamgym bench wm``: see the module docstring and ``configs/bench/wm.yaml``."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(int(cfg.seed))
    from omegaconf import OmegaConf

    from dreamgym.configs import compose
    from dreamgym.worldmodel.model import WorldModel, WorldModelConfig

    # The training run's settings (noise mix, optimiser) and the embedded default model config.
    try:
        train_cfg = OmegaConf.to_container(compose("train_wm", []), resolve=True)
    except Exception as e:  # noqa: BLE001 -- any failure to compose: fall back to built-in defaults, said below
        print(f"bench wm: configs/train_wm.yaml not usable ({e}); using WorldModelConfig() and default noise settings", flush=True)
        train_cfg = None
    if cfg.checkpoint:
        model = WorldModel.from_pretrained(str(cfg.checkpoint), device=cfg.device)
        source = str(cfg.checkpoint)
    elif train_cfg is not None:
        d = dict(train_cfg["worldmodel"], data_resolution=int(cfg.resolution))
        model = WorldModel(WorldModelConfig.from_dict(d, source="configs/worldmodel")).to(cfg.device)
        source = "configs/worldmodel/default.yaml, random weights"
    else:
        model = WorldModel(WorldModelConfig(data_resolution=int(cfg.resolution))).to(cfg.device)
        source = "WorldModelConfig() defaults, random weights"
    print(f"bench wm: {source}", flush=True)
    result = bench(
        model,
        batch_sizes=[int(b) for b in cfg.batch_sizes],
        num_steps=[int(s) for s in cfg.num_steps],
        train_batch_size=int(cfg.train_batch_size),
        task=cfg.task,
        seconds=float(cfg.measure_seconds),
        min_calls=int(cfg.min_calls),
        warmup=int(cfg.warmup_calls),
        sim_baseline=bool(cfg.sim_baseline),
        seed=int(cfg.seed),
        train_cfg=train_cfg,
        progress=lambda s: print(s, flush=True),
    )
    result["model"]["source"] = source
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    print(format_summary(result), flush=True)
    print(f"wrote {out}", flush=True)
    return 0


def format_summary(r: dict) -> str:
    """A short table of the result."""
    lines = []
    if r["train"]:
        lines.append(f"training: {r['train']['samples_per_s']:.1f} samples/s (batch {r['train']['batch_size']}; {r['train']['loss']})")
    lines.append(f"{'B':>4} {'steps':>5} {'modalities':>11} {'dream/s':>10} {'sim/s':>10} {'ratio':>7}")
    for row in r["sampling"]:
        sim = f"{row['sim_steps_per_s']:>10.1f}" if "sim_steps_per_s" in row else f"{'-':>10}"
        ratio = f"{row['ratio_vs_sim']:>7.2f}" if "ratio_vs_sim" in row else f"{'-':>7}"
        lines.append(
            f"{row['batch_size']:>4} {row['num_steps']:>5} {row['modalities']:>11} {row['transitions_per_s']:>10.1f} {sim} {ratio}"
        )
    return "\n".join(lines)
