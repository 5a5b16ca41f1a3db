"""``dreamgym bench wm``: world-model speed, beside the simulator it stands in for.

    dreamgym bench wm [out=FILE.json] [checkpoint=<ckpt>]

Measures, in one run:

- **training**: samples/s of one optimisation step as ``train-wm`` takes it (noise drawn by
  ``worldmodel.train.draw_noise`` with ``configs/train_wm.yaml``'s settings, so some steps skip
  the frame branch as in training; ``WorldModel.loss``, backward, gradient clipping, AdamW) on
  a batch of ``train_batch_size`` windows, data loading excluded; the JSON says what was timed.
- **dreaming**: transitions/s of ``WorldModel.imagine`` at each batch size B and number of
  denoising steps, with every modality (``frames``), with frames skipped (``state_only``: body
  motion, props, occupancy) and with frames and occupancy skipped (``body_only``). A call on B
  worlds counts as B transitions. Each arm keeps the model's own initial noise and records its
  ``sampler``; the model's own step count is timed too when ``num_steps`` leaves it out, and its
  arms say ``own_sampler`` (``summary.sampler``: the model's sampler).
- **baseline**: ``EgoRoomVecEnv`` steps/s at the same B (ego frames rendered, and state-only
  observations, which skip rendering; the simulator has no cheaper mode for ``body_only``), so
  ``summary.dream_over_sim`` has dream / sim for each dreaming arm (medians).

The inputs are real windows recorded from the simulator (random actions), tiled to each B. The
model is ``checkpoint``'s, or the embedded default (``configs/worldmodel/default.yaml``) with
random weights (speed does not depend on the weights).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from dreamgym.benchmarks.runner import BenchRun, Timing, start, timed
from dreamgym.worldmodel.evaluate import model_spec

STATE_KEYS = ["motion", "partner_motion", "props", "occupancy"]  # frames skipped
BODY_KEYS = ["motion", "partner_motion", "props"]  # frames and occupancy skipped
SIM_STATE_OBS = ["motion", "partner_motion", "occupancy", "task_obs", "instruction"]


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
    model, ctx: dict[str, torch.Tensor], actions: torch.Tensor, num_steps: int | None, modalities: Sequence[str] | None, timing: Timing
) -> dict[str, Any]:
    """Transitions/s of ``model.imagine`` on a (B, K, ...) context (a call on B worlds counts B)."""
    gen = torch.Generator().manual_seed(0)

    def call():
        with torch.no_grad():
            model.imagine(ctx, actions, num_steps=num_steps, modalities=modalities, generator=gen)

    return timed(call, timing, per_call=actions.shape[0], unit="transitions_per_s")


def sim_rate(
    B: int, task: str, resolution: int, obs_keys: Sequence[str] | None, timing: Timing, seed: int, record: int = 0
) -> tuple[dict[str, Any], dict | None]:
    """EgoRoomVecEnv steps/s at B worlds (random actions); optionally also records ``record`` steps."""
    from dreamgym.envs.vec_env import EgoRoomVecEnv

    env = EgoRoomVecEnv(num_envs=B, task=task, resolution=resolution, seed=seed, obs_keys=obs_keys, return_tensors=True)
    windows = record_windows(env, record, seed) if record else None
    env.reset_tensors(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    try:
        return timed(lambda: env.step_tensors(torch.rand(B, 6, generator=gen) * 2 - 1), timing, per_call=B, unit="steps_per_s"), windows
    finally:
        env.close()


# ------------------------------------------------------------------------------ stages
def measure_sim(run: BenchRun, batch_sizes: Sequence[int], task: str, res: int, K: int, timing: Timing, seed: int, windows, progress):
    """Arms ``sim_frames_B<B>`` and ``sim_state_only_B<B>``; returns the windows recorded on the way
    (K + 1 steps at the largest B) unless ``windows`` were given."""
    for B in batch_sizes:
        progress(f"simulator B={B} ...")
        want = K + 1 if windows is None and B == max(batch_sizes) else 0
        full, w = sim_rate(B, task, res, None, timing, seed, record=want)
        state, _ = sim_rate(B, task, res, SIM_STATE_OBS, timing, seed)
        run.add(f"sim_frames_B{B}", full | {"batch_size": B, "observations": "all (ego frames rendered)"})
        run.add(f"sim_state_only_B{B}", state | {"batch_size": B, "observations": SIM_STATE_OBS})
        windows = windows if windows is not None else w
        progress(f"  {full['median']:.1f} steps/s with ego frames, {state['median']:.1f} state-only")
    return windows


def measure_train(run: BenchRun, train_step, train_loss_name: str | None, windows, train_batch_size: int, timing: Timing, progress) -> None:
    """Arm ``train``: samples/s of one optimisation step on ``train_batch_size`` tiled windows."""
    batch = tile(windows, train_batch_size)
    progress(f"training step, batch {train_batch_size} ...")
    r = timed(lambda: train_step(batch), timing, per_call=train_batch_size, unit="samples_per_s")
    run.add("train", r | {"batch_size": train_batch_size, "seconds_per_step": train_batch_size / r["median"], "loss": train_loss_name})
    progress(f"  {r['median']:.1f} samples/s")


def own_sampler(model) -> Any:
    """The model's own ``SamplerConfig`` (None for a model without ``sampler_for``)."""
    return getattr(model, "sampler", None) if callable(getattr(model, "sampler_for", None)) else None


def measure_dream(run: BenchRun, model, windows, K: int, batch_sizes: Sequence[int], num_steps: Sequence[int], timing: Timing, progress):
    """Arms ``dream_<modalities>_B<B>_steps<n>`` and their ratios to the simulator in ``run.summary``."""
    full = list(model_spec(model).modalities)
    state = [m for m in STATE_KEYS if m in full]
    sets = {"frames": full, "state_only": state, "body_only": [m for m in BODY_KEYS if m in full]}
    ratios = run.summary.setdefault("dream_over_sim", {})
    own = own_sampler(model)  # one of the arms
    sweep = [int(s) for s in num_steps] + ([int(own.num_steps)] if own is not None and int(own.num_steps) not in num_steps else [])
    for B in batch_sizes:
        w = tile(windows, B)
        ctx_all = {k: w[k][:, :K] for k in full if k in w} | {"instruction": w["instruction"]}
        actions = w["actions"][:, :K]
        for mods_name, mods in sets.items():
            if not mods or (mods_name != "frames" and mods == full) or (mods_name == "body_only" and mods == state):
                continue
            ctx = {k: v for k, v in ctx_all.items() if k in mods or k == "instruction"}
            for steps in sweep:
                progress(f"dream B={B} steps={steps} {mods_name} ...")
                name = f"{mods_name}_B{B}_steps{steps}"
                is_own = own is not None and steps == int(own.num_steps)
                # the model's own step count runs its whole sampler (num_steps given would set every pass's)
                call_steps = None if is_own else steps
                r = sampling_rate(model, ctx, actions, call_steps, mods, timing) | {
                    "batch_size": B,
                    "num_steps": steps,
                    "modalities": mods_name,
                }
                if own is not None:
                    r |= {"sampler": model.sampler_for(None, call_steps).to_dict(), "own_sampler": is_own}
                run.add(f"dream_{name}", r)
                sim = run.arms.get(f"sim_{'frames' if mods_name == 'frames' else 'state_only'}_B{B}")
                if sim is not None:
                    ratios[name] = r["median"] / sim["median"]
                progress(f"  {r['median']:.1f} transitions/s" + (f" ({ratios[name]:.2f}x the simulator)" if name in ratios else ""))


def model_info(model) -> dict[str, Any]:
    """Parameters, context, resolution, modalities and config of the timed model."""
    spec = model_spec(model)
    cfg = getattr(model, "config", None)
    return {
        "parameters": sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else 0,
        "context": spec.context,
        "resolution": spec.resolution[0] if spec.resolution else 64,
        "modalities": list(spec.modalities),
        "config": cfg.to_dict() if hasattr(cfg, "to_dict") else None,
    }


# ------------------------------------------------------------------------------ driver
def bench(
    model: torch.nn.Module,
    batch_sizes: Sequence[int] = (1, 16, 64),
    num_steps: Sequence[int] = (1, 3),
    train_batch_size: int = 16,
    task: str = "reach",
    timing: Timing | None = None,
    sim_baseline: bool = True,
    seed: int = 0,
    train_step: Callable[[dict], None] | None = None,
    train_loss_name: str | None = None,
    train_cfg: Mapping[str, Any] | None = None,
    windows: dict[str, torch.Tensor] | None = None,
    progress: Callable[[str], None] = print,
    run: BenchRun | None = None,
) -> dict[str, Any]:
    """Every measurement (see the module docstring) as arms of ``run``; returns its JSON-ready result."""
    timing = timing or Timing()
    run = run or BenchRun("wm", {"batch_sizes": list(batch_sizes), "num_steps": list(num_steps), "train_batch_size": train_batch_size})
    info = model_info(model)
    K, res = info["context"], info["resolution"]
    if sim_baseline:
        windows = measure_sim(run, batch_sizes, task, res, K, timing, seed, windows, progress)
    if windows is None:
        from dreamgym.envs.vec_env import EgoRoomVecEnv

        env = EgoRoomVecEnv(num_envs=min(4, max(batch_sizes)), task=task, resolution=res, seed=seed, return_tensors=True)
        windows = record_windows(env, K + 1, seed)
        env.close()
    if train_step is None and callable(getattr(model, "loss", None)):
        train_step, train_loss_name = default_train_step(model, train_cfg)
    if train_step is not None:
        measure_train(run, train_step, train_loss_name or "given train_step", windows, train_batch_size, timing, progress)
    if hasattr(model, "eval"):
        model.eval()
    measure_dream(run, model, windows, K, batch_sizes, num_steps, timing, progress)
    own = own_sampler(model)
    run.summary |= {"model": info, "task": task, "sampler": own.to_dict() if own is not None else None}
    return run.result()


def load_bench_model(cfg) -> tuple[torch.nn.Module, str, dict | None]:
    """The model to time (``checkpoint``'s, else the embedded default's architecture with random
    weights), where it came from, and ``configs/train_wm.yaml`` (noise mix, optimiser) or None."""
    from omegaconf import OmegaConf

    from dreamgym.configs import compose
    from dreamgym.worldmodel.model import WorldModel, WorldModelConfig

    try:
        train_cfg = OmegaConf.to_container(compose("train_wm", []), resolve=True)
    except Exception as e:  # noqa: BLE001 -- any failure to compose: fall back to built-in defaults, said below
        print(f"bench wm: configs/train_wm.yaml not usable ({e}); using WorldModelConfig() and default noise settings", flush=True)
        train_cfg = None
    if cfg.checkpoint:
        return WorldModel.from_pretrained(str(cfg.checkpoint), device=cfg.device), str(cfg.checkpoint), train_cfg
    if train_cfg is not None:
        d = dict(train_cfg["worldmodel"], data_resolution=int(cfg.resolution))
        model = WorldModel(WorldModelConfig.from_dict(d, source="configs/worldmodel")).to(cfg.device)
        return model, "configs/worldmodel/default.yaml, random weights", train_cfg
    model = WorldModel(WorldModelConfig(data_resolution=int(cfg.resolution))).to(cfg.device)
    return model, "WorldModelConfig() defaults, random weights", None


def run(cfg) -> int:
    """``dreamgym bench wm``: see the module docstring and ``configs/bench/wm.yaml``."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(int(cfg.seed))
    bench_run = start("wm", cfg)
    model, source, train_cfg = load_bench_model(cfg)
    print(f"bench wm: {source}", flush=True)
    bench_run.summary["source"] = source
    result = bench(
        model,
        batch_sizes=[int(b) for b in cfg.batch_sizes],
        num_steps=[int(s) for s in cfg.num_steps],
        train_batch_size=int(cfg.train_batch_size),
        task=cfg.task,
        timing=Timing.from_cfg(cfg),
        sim_baseline=bool(cfg.sim_baseline),
        seed=int(cfg.seed),
        train_cfg=train_cfg,
        progress=lambda s: print(s, flush=True),
        run=bench_run,
    )
    bench_run.write(cfg.out)
    print(format_summary(result), flush=True)
    return 0


def format_summary(r: dict) -> str:
    """A short table of a ``bench wm`` result (medians)."""
    arms, ratios = r["arms"], r["summary"].get("dream_over_sim", {})
    lines = []
    if "train" in arms:
        t = arms["train"]
        lines.append(f"training: {t['median']:.1f} samples/s (spread {t['spread']:.2f}; batch {t['batch_size']}; {t['loss']})")
    lines.append(f"{'B':>4} {'steps':>5} {'modalities':>11} {'dream/s':>10} {'sim/s':>10} {'ratio':>7}")
    for name, row in arms.items():
        if not name.startswith("dream_"):
            continue
        sim = arms.get(f"sim_{'frames' if row['modalities'] == 'frames' else 'state_only'}_B{row['batch_size']}")
        sim_s = f"{sim['median']:>10.1f}" if sim else f"{'-':>10}"
        ratio = ratios.get(name[len("dream_") :])
        ratio_s = f"{ratio:>7.2f}" if ratio is not None else f"{'-':>7}"
        steps = f"{row['num_steps']}{'*' if row.get('own_sampler') else ''}"
        lines.append(f"{row['batch_size']:>4} {steps:>5} {row['modalities']:>11} {row['median']:>10.1f} {sim_s} {ratio_s}")
    if any(row.get("own_sampler") for row in arms.values()):
        lines.append("* the model's own sampler (its sampler.json)")
    return "\n".join(lines)
