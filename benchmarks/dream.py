"""``dreamgym bench dream``: how fast a policy can step the dream env, beside the simulator.

    dreamgym bench dream [out=FILE.json] [checkpoint=<world model>]

In one run, at each batch size B (default 1, 16, 64), transitions/s of ``DreamVecEnv.step_tensors``
(the whole env step a policy sees: world model, task reward/termination/``task_obs`` on the
predicted state, bookkeeping) and of ``EgoRoomVecEnv.step_tensors`` with the same observations:

- ``state_only``: the observations of a state-based policy (``task_obs``, ``motion``,
  ``partner_motion``, ``instruction``); the dream generates body motion and props only, the
  simulator does not render;
- ``frames``: the same plus ``ego_rgb`` and ``ego_depth``; the dream generates frames, the
  simulator renders them.

Actions are uniform random. A step of B worlds counts as B transitions. Episode starts (which the
dream env draws from the simulator, K-1 real steps each) fall outside the timed window. The world
model is ``checkpoint``'s, the shipped default, or -- when neither exists -- the default
architecture (``configs/worldmodel/default.yaml``) with random weights: speed does not depend on
the weights. It dreams with its own sampler (``sampler.json``) unless ``num_denoising_steps`` or
``init_noise`` override it; ``summary.sampler`` (and each dream arm's ``sampler``) says which,
with the ``network_precision`` its ``precision`` resolved to on this machine ("auto": bfloat16
only where the CPU multiplies it natively). ``summary.dream_over_sim`` is the state-only ratio of
the medians at the largest B (64 by default).

The same sampler with its network in other number formats is timed beside it in the same run
(``precisions``; default: float32 when the own precision resolves to bfloat16), as arms
``dream_<obs>_B<B>_<precision>``, with their ratios in ``summary.dream_over_sim_by_precision``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from dreamgym.benchmarks.runner import BenchRun, Timing, hash_path, start, timed

STATE_OBS = ("task_obs", "motion", "partner_motion", "instruction")
FRAME_OBS = ("ego_rgb", "ego_depth")


def bench_model(checkpoint: Any, resolution: int) -> tuple[Any, str]:
    """The world model to time and where it came from."""
    from dreamgym.worldmodel.dream_env import DEFAULT_CHECKPOINT, load_world_model
    from dreamgym.worldmodel.model import WorldModel, WorldModelConfig

    if checkpoint is not None or DEFAULT_CHECKPOINT.exists():
        return load_world_model(checkpoint), str(checkpoint or DEFAULT_CHECKPOINT)
    from dreamgym.configs import __file__ as configs_init

    d = OmegaConf.to_container(OmegaConf.load(Path(configs_init).parent / "worldmodel" / "default.yaml"), resolve=True)
    assert isinstance(d, dict)
    torch.manual_seed(0)
    return WorldModel(
        WorldModelConfig.from_dict({**d, "data_resolution": int(resolution)})
    ).eval(), "configs/worldmodel/default.yaml (random weights)"


def dream_rate(
    model: Any,
    B: int,
    task: str,
    obs_keys: Sequence[str],
    num_steps: int | None,
    timing: Timing,
    seed: int,
    init_noise: float | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """``DreamVecEnv`` transitions/s at B worlds generating what ``obs_keys`` need, and the
    ``sampler`` it dreamed with (``num_steps``, ``init_noise`` and ``precision`` None: the model's own)."""
    from dreamgym.policies.train import dream_modalities
    from dreamgym.worldmodel.dream_env import DreamVecEnv

    own = model.sampler
    if precision is not None:  # the same sampler, its network in another number format
        model.sampler = dataclasses.replace(own, precision=precision)
    env = None
    try:
        env = DreamVecEnv(
            model,
            num_envs=B,
            task=task,
            modalities=dream_modalities(obs_keys),
            obs_keys=obs_keys,
            num_denoising_steps=num_steps,
            init_noise=init_noise,
            seed=seed,
            return_tensors=True,
        )
        env.reset_tensors(seed=seed)
        gen = torch.Generator().manual_seed(seed)
        r = timed(lambda: env.step_tensors(torch.rand(B, 6, generator=gen) * 2 - 1), timing, per_call=B, unit="transitions_per_s")
        return r | {"sampler": env.sampler_info}
    finally:
        model.sampler = own
        if env is not None:
            env.close()


def sim_rate(B: int, task: str, resolution: int, obs_keys: Sequence[str], timing: Timing, seed: int) -> dict[str, Any]:
    """``EgoRoomVecEnv`` transitions/s at B worlds with ``obs_keys``."""
    from dreamgym.envs.vec_env import EgoRoomVecEnv

    env = EgoRoomVecEnv(num_envs=B, task=task, resolution=resolution, obs_keys=obs_keys, seed=seed, return_tensors=True)
    env.reset_tensors(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    try:
        return timed(lambda: env.step_tensors(torch.rand(B, 6, generator=gen) * 2 - 1), timing, per_call=B, unit="transitions_per_s")
    finally:
        env.close()


def bench(
    checkpoint: Any = None,
    batch_sizes: Sequence[int] = (1, 16, 64),
    task: str = "reach",
    num_denoising_steps: int | None = None,
    frames: bool = True,
    timing: Timing | None = None,
    seed: int = 0,
    resolution: int = 32,
    progress: Callable[[str], None] = print,
    run: BenchRun | None = None,
    init_noise: float | None = None,
    precisions: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Arms ``sim_<obs>_B<B>``, ``dream_<obs>_B<B>`` and ``dream_<obs>_B<B>_<precision>`` (see the
    module docstring); returns the JSON-ready result. ``num_denoising_steps``, ``init_noise`` None:
    the world model's own sampler; ``precisions`` None: float32 beside a reduced own precision."""
    from dreamgym.worldmodel.sampling import network_dtype

    timing = timing or Timing()
    run = run or BenchRun("dream", {"checkpoint": checkpoint, "batch_sizes": list(batch_sizes), "task": task})
    model, source = bench_model(checkpoint, resolution)
    res = int(model.config.data_resolution)
    has_frames = "ego" in model.config.modalities
    sets = {"state_only": STATE_OBS} | ({"frames": STATE_OBS + FRAME_OBS} if frames and has_frames else {})
    ratio: dict[str, dict[str, float]] = {k: {} for k in sets}
    own = network_dtype(model.sampler, "cpu")
    extra = [p for p in dict.fromkeys(["float32"] if precisions is None else precisions) if p != own]
    by_precision: dict[str, dict[str, float]] = {p: {} for p in [own, *extra]}
    for B in batch_sizes:
        for name, keys in sets.items():
            progress(f"B={B} {name}: simulator ...")
            s = run.add(f"sim_{name}_B{B}", sim_rate(B, task, res, keys, timing, seed) | {"batch_size": B, "observations": list(keys)})
            progress(f"B={B} {name}: dream ...")
            d = run.add(
                f"dream_{name}_B{B}",
                dream_rate(model, B, task, keys, num_denoising_steps, timing, seed, init_noise)
                | {"batch_size": B, "observations": list(keys)},
            )
            ratio[name][str(B)] = d["median"] / s["median"]
            progress(f"  dream {d['median']:.1f} vs simulator {s['median']:.1f} transitions/s ({ratio[name][str(B)]:.2f}x, {own})")
            by_precision[own][name] = ratio[name][str(B)]
            for prec in extra:
                e = run.add(
                    f"dream_{name}_B{B}_{prec}",
                    dream_rate(model, B, task, keys, num_denoising_steps, timing, seed, init_noise, prec)
                    | {"batch_size": B, "observations": list(keys)},
                )
                by_precision[prec][name] = e["median"] / s["median"]
                progress(f"  dream in {prec} {e['median']:.1f} transitions/s ({by_precision[prec][name]:.2f}x)")
    top = str(max(batch_sizes))
    run.summary |= {
        "network_precision": own,
        "dream_over_sim_by_precision": by_precision,  # at the largest B, per number format of the network
        "dream_over_sim": ratio["state_only"][top],
        "dream_over_sim_frames": ratio["frames"][top] if "frames" in ratio else None,
        "ratio_batch_size": int(top),
        "dream_over_sim_by_batch": ratio,
        "task": task,
        "num_denoising_steps": num_denoising_steps,  # as asked (None: the model's own); what ran is `sampler`
        "init_noise": init_noise,
        "sampler": d["sampler"],
        "world_model": {
            "source": source,
            "sha256": hash_path(source) if Path(source).exists() else None,
            "parameters": sum(p.numel() for p in model.parameters()),
            "modalities": list(model.config.modalities),
            "resolution": res,
            "context": int(model.config.context),
        },
        "timed": "DreamVecEnv.step_tensors vs EgoRoomVecEnv.step_tensors, random actions, episode starts excluded",
    }
    return run.result()


def run(cfg: DictConfig) -> int:
    """Entry point of ``dreamgym bench dream``."""
    torch.set_num_threads(int(cfg.threads))
    bench_run = start("dream", cfg)
    r = bench(
        cfg.checkpoint,
        [int(b) for b in cfg.batch_sizes],
        cfg.task,
        cfg.num_denoising_steps,
        bool(cfg.frames),
        Timing.from_cfg(cfg),
        int(cfg.seed),
        int(cfg.resolution),
        run=bench_run,
        init_noise=cfg.get("init_noise"),
        precisions=None if cfg.get("precisions") is None else [str(p) for p in cfg.precisions],
    )
    path = bench_run.write(cfg.out)
    s = r["summary"]
    print(
        f"bench dream: dream/simulator at B={s['ratio_batch_size']}: {s['dream_over_sim']:.2f}x state-only"
        + (f", {s['dream_over_sim_frames']:.2f}x with frames" if s["dream_over_sim_frames"] is not None else "")
        + f"; {path}"
    )
    return 0
