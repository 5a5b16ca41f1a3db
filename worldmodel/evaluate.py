"""``dreamgym eval-wm``: a world model against the simulator's ground truth, per task, beside strong baselines.

    dreamgym eval-wm checkpoint=<ckpt> data=<dir or [dir, ...]> out=<dir> [mse_checkpoint=<ckpt>]

**Replay.** Held-out episodes (rooms never seen in training) are split by their task and
replayed: at each start ``t0`` the model gets the real context (observations ``t0-K+1 .. t0``)
and the episode's real actions (and the partner's recorded commands), and rolls out
autoregressively. The prediction for step ``t0 + h`` is compared with the recorded observation
at ``t0 + h`` for the horizons ``h`` (1, 4, 16, 64 steps at 20 Hz): the recorded future *is* the
simulator from the same start state under the same actions. Starts are drawn uniformly from every
valid (episode, row) of a task (``eval_tasks``; ``starts_per_task``, seeded); a horizon is scored
on the starts whose episode lasts that long, and its n is reported. Frames are dreamed and
scored up to ``frame_horizon`` and the grid up to ``grid_horizon`` (the bodies and props to the
last horizon); a rollout leaves its batch when its episode ends.

**Arms**, all through the same replay code and the same starts:

- the model with its shipped sampler (``model.sampler``: ``sampler``) and as the conditional
  mean (one step, no initial noise: ``mean``); one rollout when the two are the same;
- ``copy_last_frame``, ``hold_pose``, ``static_occupancy``: nothing changes;
- ``constant_velocity``: both bodies at the velocity of the last two context steps;
- ``reproject_only`` and ``analytic_grid``: the last real frame reprojected, and the real grid
  carried, under the model's own dreamed motion, no network for them (``baselines``);
- ``deterministic_mse``: the MSE-trained twin of the network (``mse_checkpoint``).

**Figures** (``eval_summary``, ``eval_stats``): each metric's value per horizon with a 95 %
bootstrap interval over starts; for each model arm, metric and horizon the strongest baseline
(the best of all baselines reporting it) and a paired bootstrap test, ``won`` only when the
model is better with 95 % confidence. Metrics: frame PSNR (dB), SSIM, depth error (m); the
video-object metrics when ``video_metrics`` is importable (``eval_video``: visibility F-score per
object and of the task's target object, image-position error, frame Fréchet distance); agent
MPJPE (mm), root translation (m) and rotation (rad) errors, the same for the partner; prop
error (m); occupancy IoU and mIoU pooled over starts (OccWorld) and IoU per start; reward error.
Per task also: over ``push.horizon``-step windows where the simulator moved a prop more than
``push.threshold_m``, the dreamed / simulated displacement (ratio of means) and their
correlation; and best-of-``best_of`` error and spread of the sampler (``eval_generative``).

**Counterfactual controllability** (``counterfactual``): from the same context, several action
sequences run in the simulator (restarted in the episode's room and brought to the context's
state by replaying the recorded actions) and in the dream (bodies only); the error of the
dream's root displacement and heading change, and their correlation with the simulator's.

Writes ``metrics.json`` (``horizons``, ``tasks: {task: {model, baselines, comparison, push,
generative, ...}}``, ``counterfactual``, ``notes``), ``run_info.json`` (what was evaluated, n,
timing), ``tables.md`` (one table per task, EVAL.md-ready), ``plots_<task>.png``,
``counterfactual.png``, real | dream videos ``videos/<task>/*.mp4`` and every per-start value
``per_start/<task>.npz`` (``<arm>/<value>`` arrays (starts, horizons, ...), NaN where not scored,
beside each start's ``episode``, ``t0``, ``length`` and ``target``), for analyses after the run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .baselines import BASELINE_MODALITIES, ConstantVelocityBaseline, GeometricBaseline, HoldLastBaseline, state_pass_first
from .counterfactual import (
    SimBranches,
    action_sequences,
    choose_counterfactual_episodes,
    counterfactual_scores,
    run_counterfactual,
    simulate_branches,
)
from .eval_episodes import Episode, ModelSpec, check_compatible, load_episodes, model_spec, props_from_qpos, simulate_episodes
from .eval_generative import GENERATIVE_METRICS, best_of_n, choose_subset
from .eval_replay import ENV_OBS_KEYS, FRAME_KEYS, HIGHER_IS_BETTER, MODALITY_METRICS, StartRecord, evaluate_replay
from .eval_report import format_table, markdown_tables, write_per_start, write_plots, write_videos
from .eval_stats import interval, mean_of
from .eval_summary import ArmMetrics, compare, push_displacement, summarise
from .eval_tasks import OBJECT_NAMES, Start, sample_starts, split_by_task, target_object, task_seed
from .eval_video import load_video_scorer
from .sampling import network_dtype

__all__ = [
    "ENV_OBS_KEYS",
    "HIGHER_IS_BETTER",
    "MODALITY_METRICS",
    "EvalSettings",
    "Episode",
    "ModelSpec",
    "SimBranches",
    "Start",
    "action_sequences",
    "check_compatible",
    "choose_counterfactual_episodes",
    "counterfactual_scores",
    "evaluate",
    "load_episodes",
    "model_spec",
    "props_from_qpos",
    "run",
    "sample_starts",
    "simulate_branches",
    "simulate_episodes",
]
STATE_KEYS = ("motion", "partner_motion", "props")


@dataclasses.dataclass
class EvalSettings:
    """How much eval-wm does (the keys of ``configs/eval_wm.yaml`` of the same names)."""

    horizons: Sequence[int] = (1, 4, 16, 64)
    frame_horizon: int | None = 16  # the last step whose frames are dreamed and scored (None: every step)
    grid_horizon: int | None = 16  # the same for the occupancy grid
    starts_per_task: int | None = 128
    batch_size: int = 128
    best_of: int = 8
    best_of_starts: int = 8
    best_of_batch: int = 8
    resamples: int = 1000
    frechet_resamples: int = 50
    probe: str | None = None
    push_horizon: int = 16
    push_threshold_m: float = 0.05
    num_videos: int = 2
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        self.horizons = sorted(int(h) for h in self.horizons)
        if not self.horizons or self.horizons[0] < 1:
            raise ValueError(f"horizons must be positive step counts, got {list(self.horizons)}")
        for name in ("frame_horizon", "grid_horizon"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0 (0: none; null: every step), got {getattr(self, name)}")

    @property
    def stop_after(self) -> dict[str, int | None]:
        """The last step each of frames and grid is dreamed (None: every step)."""
        return {"ego_rgb": self.frame_horizon, "ego_depth": self.frame_horizon, "occupancy": self.grid_horizon}

    @property
    def frame_horizons(self) -> list[int]:
        """The horizons whose frames are scored."""
        return [h for h in self.horizons if self.frame_horizon is None or h <= self.frame_horizon]

    def stats(self) -> dict[str, int]:
        return {"resamples": self.resamples, "frechet_resamples": self.frechet_resamples, "seed": self.seed}


@dataclasses.dataclass
class Arm:
    """One rollout through the replay: ``reports`` maps each name it is reported under to the
    modalities reported there (None: all)."""

    name: str
    model: Any
    kwargs: dict[str, Any]
    modalities: list[str]
    reports: dict[str, tuple[str, ...] | None]
    is_model: bool = False
    follows: str | None = None  # a rider: rolled out in the pass of this arm, following its dreamed state


FLOAT32_ARM = "sampler_float32"  # the shipped sampler with its network in float32


def _network_dtype(model: Any) -> str:
    """The number format ``model``'s sampler runs its network in on the model's device ("float32"
    for a model-like object without a sampler)."""
    s = getattr(model, "sampler", None)
    if s is None or not hasattr(s, "precision"):
        return "float32"
    return network_dtype(s, getattr(model, "device", "cpu"))


def _sampler_is_mean(model: Any) -> bool:
    s = getattr(model, "sampler", None)
    return s is None or (int(s.num_steps) == 1 and float(s.init_noise) == 0.0)


def build_arms(model: Any, mse_model: Any | None, mods: list[str], episodes: Sequence[Episode]) -> list[Arm]:
    """The model arms (sampler, mean) and every baseline arm that has something to report."""
    has = set(episodes[0].obs)
    if getattr(model, "sampler", None) is None:  # a model-like object without a sampler: one rollout
        arms = [Arm("sampler", model, {}, mods, {"sampler": None, "mean": None}, True)]
    elif _sampler_is_mean(model):
        arms = [Arm("sampler", model, {}, mods, {"sampler": None, "mean": None}, True)]
    else:
        arms = [
            Arm("sampler", model, {}, mods, {"sampler": None}, True),
            Arm("mean", model, {"num_steps": 1, "init_noise": 0.0}, mods, {"mean": None}, True),
        ]
    if _network_dtype(model) != "float32":
        # the shipped sampler's network runs in a reduced precision here: the same sampler in
        # float32 beside it (``precision`` section: what the faster number format costs)
        full = dataclasses.replace(model.sampler, precision="float32")
        arms.insert(1, Arm(FLOAT32_ARM, model, {"sampler": full}, mods, {FLOAT32_ARM: None}, True))
    arms.append(
        Arm(
            "hold_last",
            HoldLastBaseline(),
            {},
            mods,
            {k: BASELINE_MODALITIES[k] for k in ("copy_last_frame", "hold_pose", "static_occupancy")},
        )
    )
    arms.append(
        Arm("constant_velocity", ConstantVelocityBaseline(), {}, mods, {"constant_velocity": BASELINE_MODALITIES["constant_velocity"]})
    )
    geo = [m for m in mods if m in (*STATE_KEYS, "occupancy")]
    if "ego_rgb" in mods and "ego_depth" in has:
        geo += list(FRAME_KEYS)
    if "motion" in mods and any(m in geo for m in ("ego_rgb", "occupancy")):
        reports = {k: BASELINE_MODALITIES[k] for k in ("reproject_only", "analytic_grid")}
        geo = [m for m in ENV_OBS_KEYS + ("props",) if m in geo]
        # the conditional-mean arm dreams exactly the state this baseline needs when the model
        # dreams its state in a pass of its own: follow it there rather than dream it again
        mean = "mean" if any(a.name == "mean" for a in arms) else "sampler"
        follows = mean if state_pass_first(model, mods) and set(geo) <= set(mods) else None
        arms.append(Arm("geometric", GeometricBaseline(model), {}, geo, reports, follows=follows))
    if mse_model is not None:
        arms.append(Arm("deterministic_mse", mse_model, {}, mods, {"deterministic_mse": None}))
    for a in arms:  # a report keeps only the modalities the arm dreams
        a.reports = {r: v for r, v in a.reports.items() if v is None or set(v) & set(a.modalities)}
    return [a for a in arms if a.reports]


# ---------------------------------------------------------------------------------------- per task
def _starts_for(episodes: Sequence[Episode], idx: list[int], K: int, task: str, st: EvalSettings) -> tuple[list[Start], np.ndarray]:
    starts = sample_starts(episodes, idx, K, max(st.horizons), st.starts_per_task, task_seed(st.seed, task))
    targets = {}
    for s in starts:
        if s.episode not in targets:
            t = target_object(episodes[s.episode])
            targets[s.episode] = -1 if t is None else t
    return starts, np.array([targets[s.episode] for s in starts], np.int64)


def _generative(model, episodes, starts, K, mods, st: EvalSettings, mean_rec: StartRecord, notes: list[str], task: str) -> dict | None:
    s = getattr(model, "sampler", None)
    if st.best_of < 2 or st.best_of_starts < 1:
        return None
    if s is None or float(s.init_noise) == 0.0:
        notes.append(
            f"{task}: best-of-{st.best_of} skipped: the sampler starts from no noise (init_noise 0), so its samples are all the same"
        )
        return None
    sub = choose_subset(len(starts), st.best_of_starts, st.seed)
    rec = best_of_n(
        model,
        episodes,
        [starts[i] for i in sub],
        K,
        st.horizons,
        mods,
        st.best_of,
        {},
        st.stop_after,
        st.best_of_batch,
        st.seed,
        st.device,
    )
    out: dict[str, Any] = {"best_of": st.best_of, "num_starts": len(sub)}
    beside = {"mean_psnr_db": "psnr_db", "mean_partner_mpjpe_mm": "partner_mpjpe_mm"}
    values = {m: rec.values[m] for m in GENERATIVE_METRICS if m in rec.values}
    values |= {k: mean_rec.values[v][sub] for k, v in beside.items() if v in mean_rec.values}
    for name, x in values.items():
        per_h = [
            interval(mean_of(x[np.isfinite(x[:, j]), j]), int(np.isfinite(x[:, j]).sum()), st.resamples, st.seed + j)
            for j in range(len(st.horizons))
        ]
        out[name] = {"value": [r["value"] for r in per_h], "ci": [r["ci"] for r in per_h], "n": [r["n"] for r in per_h]}
    return out


def _push(records: dict, arms: list[Arm], episodes, starts, st: EvalSettings, notes: list[str], task: str) -> dict:
    if st.push_horizon not in st.horizons:
        notes.append(f"{task}: push displacement skipped: push.horizon {st.push_horizon} is not among horizons {st.horizons}")
        return {}
    j = st.horizons.index(st.push_horizon)
    start_props = np.stack([episodes[s.episode].obs["props"][s.t0] for s in starts]).astype(np.float64)
    real = np.stack([episodes[s.episode].obs["props"][min(s.t0 + st.push_horizon, episodes[s.episode].length - 1)] for s in starts]).astype(
        np.float64
    )
    real[[s.length < st.push_horizon for s in starts]] = np.nan
    out = {}
    for a in arms:
        for name, keep in a.reports.items():
            if keep is None or "props" in keep:
                r = push_displacement(records[a.name], start_props, real, j, st.push_threshold_m, st.stats())
                if r is not None:
                    out[name] = r
    return out


def evaluate_task(
    task: str,
    idx: list[int],
    episodes: Sequence[Episode],
    arms: list[Arm],
    K: int,
    mods: list[str],
    st: EvalSettings,
    video,
    notes: list[str],
) -> tuple[dict[str, Any], list[Start], dict[str, StartRecord], np.ndarray]:
    """One task's section of ``metrics.json``, its starts, every arm's per-start record (``real``:
    the real frames', when the video-object metrics run) and each start's target object."""
    starts, targets = _starts_for(episodes, idx, K, task, st)
    keep = _video_starts(starts, st.num_videos)
    real = video.real_frames(episodes, starts, st.horizons, st.batch_size, st.frame_horizon) if video is not None else None
    records: dict[str, StartRecord] = {}
    seconds: dict[str, float] = {}
    for a in arms:
        if a.follows is not None:
            continue
        riders = {r.name: r.model for r in arms if r.follows == a.name}
        print(f"eval-wm {task}: {', '.join([a.name, *riders])} ({len(starts)} starts)", flush=True)
        t0 = time.perf_counter()
        out = evaluate_replay(
            a.model,
            episodes,
            starts,
            K,
            st.horizons,
            a.modalities,
            batch_size=st.batch_size,
            seed=st.seed,
            device=st.device,
            keep=keep if a.name == "sampler" else (),
            desc=f"{task} {a.name}",
            imagine_kwargs=a.kwargs,
            stop_after=st.stop_after,
            video=video if "ego_rgb" in a.modalities else None,
            progress=st.progress,
            riders=riders,
        )
        records[a.name] = out["model"]
        records |= {name: out[name] for name in riders}
        seconds[a.name + "".join(f"+{r}" for r in riders)] = time.perf_counter() - t0
    frechet = video.frechet if video is not None else None
    metrics = {r: ArmMetrics(records[a.name], targets, real, frechet, keep_mods) for a in arms for r, keep_mods in a.reports.items()}
    summaries = {name: summarise(m, st.stats()) for name, m in metrics.items()}
    model_names = [r for a in arms if a.is_model for r in a.reports]
    base_names = [r for a in arms if not a.is_model for r in a.reports]
    n = [int(sum(s.length >= h for s in starts)) for h in st.horizons]
    section: dict[str, Any] = {
        "num_episodes": len(idx),
        "num_starts": len(starts),
        "num_samples": n,
        "sampler_is_mean": "mean" in arms[0].reports,
        "target_object": sorted({OBJECT_NAMES[t] for t in targets if t >= 0}),
        "model": {m: summaries[m] for m in model_names},
        "baselines": {b: summaries[b] for b in base_names},
        "comparison": {m: compare(metrics[m], {b: metrics[b] for b in base_names}, summaries, st.stats()) for m in model_names},
    }
    if FLOAT32_ARM in metrics:  # the shipped (reduced-precision) sampler against the same sampler in float32
        section["precision"] = {
            "sampler": _network_dtype(arms[0].model),
            "setting": arms[0].model.sampler.precision,
            "against": FLOAT32_ARM,
            "tests": compare(metrics["sampler"], {FLOAT32_ARM: metrics[FLOAT32_ARM]}, summaries, st.stats()),
        }
    if real is not None:
        section["real_frames"] = summarise(ArmMetrics(real, targets), st.stats())
    if "props" in mods:
        section["push"] = _push(records, arms, episodes, starts, st, notes, task)
    t0 = time.perf_counter()
    gen = _generative(arms[0].model, episodes, starts, K, mods, st, records["mean" if "mean" in records else "sampler"], notes, task)
    if gen is not None:
        section["generative"] = gen
        seconds["best_of"] = time.perf_counter() - t0
    section["seconds"] = seconds
    return section, starts, records | ({"real": real} if real is not None else {}), targets


def _video_starts(starts: Sequence[Start], num: int) -> list[int]:
    """The longest rollouts, one per episode."""
    keep, seen = [], set()
    for j, s in enumerate(starts):
        if len(keep) < num and s.episode not in seen:
            keep.append(j)
            seen.add(s.episode)
    return keep


# ---------------------------------------------------------------------------------------- driver
def _modalities(model, spec: ModelSpec, episodes, modalities, checkpoint: str, data: str) -> list[str]:
    mods = [m for m in (modalities if modalities is not None else spec.modalities) if m in spec.modalities and m in episodes[0].obs]
    if modalities is not None and set(modalities) - set(mods):
        raise ValueError(
            f"modalities {sorted(set(modalities) - set(mods))} are not both predicted by checkpoint {checkpoint} and held by dataset {data}"
        )
    return mods


def _check_mse(mse_model, spec: ModelSpec, mods: list[str], checkpoint: str, notes: list[str]) -> None:
    if mse_model is None:
        notes.append("no deterministic (MSE-trained) checkpoint given (mse_checkpoint=...): baseline deterministic_mse not evaluated")
        return
    if getattr(getattr(mse_model, "config", None), "deterministic", True) is False:
        notes.append(
            "the mse_checkpoint's config has deterministic=false: it is not the MSE-trained baseline (train it with worldmodel=deterministic)"
        )
    mse_spec = model_spec(mse_model)
    if mse_spec.context != spec.context or set(mods) - set(mse_spec.modalities):
        raise ValueError(
            f"the MSE model (context {mse_spec.context}, {list(mse_spec.modalities)}) does not match checkpoint {checkpoint} (context {spec.context}, {mods})"
        )


def evaluate(
    model: Any,
    episodes: Sequence[Episode],
    out: str | Path,
    mse_model: Any | None = None,
    modalities: Sequence[str] | None = None,
    counterfactual: dict | None = None,
    checkpoint: str = "<model>",
    data: str | Sequence[str] = "<episodes>",
    **settings: Any,
) -> dict[str, Any]:
    """Evaluate ``model`` (and the baselines) on ``episodes``, task by task, and write everything into ``out``.

    ``settings``: the fields of ``EvalSettings``. Returns the ``metrics.json`` content.
    ``counterfactual``: None to skip, else a dict with ``num_contexts``, ``start`` (row t0; None:
    the context length), ``horizon`` and ``sequences`` (name -> 6 numbers or ``random``)."""
    t_start = time.perf_counter()
    st = EvalSettings(**settings)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data_name = data if isinstance(data, str) else ", ".join(map(str, data))
    spec = model_spec(model)
    check_compatible(spec, episodes, checkpoint, data_name)
    mods = _modalities(model, spec, episodes, modalities, checkpoint, data_name)
    notes: list[str] = []
    _check_mse(mse_model, spec, mods, checkpoint, notes)
    K = spec.context
    video, why = load_video_scorer(st.probe, episodes) if "ego_rgb" in mods else (None, None)
    if why:
        notes.append(why)
    arms = build_arms(model, mse_model, mods, episodes)
    tasks = split_by_task(episodes)
    print(
        f"eval-wm: {len(episodes)} episodes in tasks {list(tasks)}, context {K}, horizons {st.horizons}, modalities {mods}, arms {[a.name for a in arms]}",
        flush=True,
    )
    sections, timing, videos = {}, {}, []
    for task, idx in tasks.items():
        if not any(episodes[i].length >= K + 1 for i in idx):
            notes.append(f"{task}: no start (every episode is shorter than the context {K} + 1)")
            continue
        t0 = time.perf_counter()
        sections[task], starts, records, targets = evaluate_task(task, idx, episodes, arms, K, mods, st, video, notes)
        videos += write_videos(out / "videos" / task, episodes, starts, records["sampler"].kept, K)
        write_per_start(out / "per_start" / f"{task}.npz", episodes, starts, targets, records)
        timing[task] = time.perf_counter() - t0
    if not sections:
        raise ValueError(f"no evaluation start in dataset {data_name}: every episode is shorter than context {K} + 1")
    state_mods = [m for m in mods if m in STATE_KEYS]
    cf_out = run_counterfactual(counterfactual, episodes, model, mse_model, spec, state_mods, None, st.seed, st.device, notes)
    result = {
        "horizons": st.horizons,
        "frame_horizon": st.frame_horizon,
        "grid_horizon": st.grid_horizon,
        "tasks": sections,
        "network_precision": _network_dtype(model),  # what the sampler's network ran in (``precision`` resolved)
        "counterfactual": _strip_points(cf_out),
        "notes": notes,
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    if cf_out:
        (out / "counterfactual_points.json").write_text(
            json.dumps({k: v.get("_points") for k, v in [("model", cf_out["model"])] + list(cf_out["baselines"].items())})
        )
    (out / "tables.md").write_text(markdown_tables(result))
    plots = write_plots(out, result, cf_out or None)
    data_dirs = [data] if isinstance(data, str) else [str(d) for d in data]
    info = {
        "checkpoint": checkpoint,
        "data": data_dirs[0] if data_dirs else None,  # the viewer opens one dataset: the first
        "datasets": data_dirs,
        "mse_checkpoint": getattr(mse_model, "_eval_source", None),
        "episodes": len(episodes),
        "tasks": {
            t: {
                "episodes": s["num_episodes"],
                "starts": s["num_starts"],
                "num_samples_per_horizon": dict(zip(map(str, st.horizons), s["num_samples"])),
                "seconds": timing[t],
            }
            for t, s in sections.items()
        },
        "context": K,
        "modalities": mods,
        "arms": {a.name: list(a.reports) for a in arms},
        "settings": {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in dataclasses.asdict(st).items()},
        "seconds": time.perf_counter() - t_start,
        "plots": [p.name for p in plots],
        "videos": [str(p.relative_to(out)) for p in videos],
        "notes": notes,
    }
    (out / "run_info.json").write_text(json.dumps(info, indent=2))
    print(format_table(result), flush=True)
    for n in notes:
        print("note:", n, flush=True)
    return result


def _strip_points(cf: dict) -> dict:
    """The counterfactual section without the raw points (they go to counterfactual_points.json)."""
    if not isinstance(cf, dict):
        return cf
    return {k: _strip_points(v) for k, v in cf.items() if k != "_points"}


def _load_model(path: str, device: str):
    from .model import WorldModel

    m = WorldModel.from_pretrained(path, device=device)
    m.eval()
    m._eval_source = path
    return m


def run(cfg) -> int:
    """``dreamgym eval-wm``: see the module docstring and ``configs/eval_wm.yaml``."""
    from omegaconf import OmegaConf

    torch.set_num_threads(int(cfg.threads))
    if cfg.checkpoint is None or cfg.data is None:
        raise SystemExit("dreamgym eval-wm: give checkpoint=<dir or .safetensors> and data=<held-out dataset dir, or a list>")
    data = OmegaConf.to_container(cfg.data, resolve=True) if OmegaConf.is_config(cfg.data) else cfg.data
    data = str(data) if isinstance(data, (str, Path)) else [str(d) for d in data]
    try:
        from .load import checkpoint_kind

        vector = checkpoint_kind(str(cfg.checkpoint)) == "vector"
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"dreamgym eval-wm: {e}") from None
    if vector:  # a Gymnasium env's world model: worldmodel.eval_gym
        from .eval_gym import run_gym

        return run_gym(cfg, str(cfg.checkpoint), data)
    try:
        model = _load_model(str(cfg.checkpoint), cfg.device)
        mse = _load_model(str(cfg.mse_checkpoint), cfg.device) if cfg.get("mse_checkpoint") else None
        episodes = load_episodes(data, split=cfg.split, max_episodes=int(cfg.max_episodes) if cfg.get("max_episodes") else None)
        name = data if isinstance(data, str) else ", ".join(data)
        check_compatible(model_spec(model), episodes, str(cfg.checkpoint), name)
        if mse is not None:
            check_compatible(model_spec(mse), episodes, str(cfg.mse_checkpoint), name)
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise SystemExit(f"dreamgym eval-wm: {e}") from None
    cf = OmegaConf.to_container(cfg.counterfactual, resolve=True) if cfg.counterfactual.enabled else None
    evaluate(
        model,
        episodes,
        cfg.out,
        mse_model=mse,
        modalities=list(cfg.modalities) if cfg.modalities is not None else None,
        counterfactual=cf,
        checkpoint=str(cfg.checkpoint),
        data=data,
        horizons=list(cfg.horizons),
        frame_horizon=cfg.frame_horizon,
        grid_horizon=cfg.grid_horizon,
        starts_per_task=cfg.starts_per_task,
        batch_size=int(cfg.batch_size),
        best_of=int(cfg.best_of),
        best_of_starts=int(cfg.best_of_starts),
        best_of_batch=int(cfg.best_of_batch),
        resamples=int(cfg.resamples),
        frechet_resamples=int(cfg.frechet_resamples),
        probe=cfg.probe,
        push_horizon=int(cfg.push.horizon),
        push_threshold_m=float(cfg.push.threshold_m),
        num_videos=int(cfg.num_videos),
        seed=int(cfg.seed),
        device=cfg.device,
        progress=bool(cfg.progress),
    )
    return 0
