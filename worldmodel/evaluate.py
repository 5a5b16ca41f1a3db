"""``dreamgym eval-wm``: a world model against the simulator's ground truth, beside trivial baselines.

    dreamgym eval-wm checkpoint=<ckpt> data=<held-out dir> out=<dir> [mse_checkpoint=<ckpt>]

**Replay.** Held-out episodes (rooms never seen in training) are replayed: at each evaluation
start ``t0`` the model gets the real context (observations ``t0-K+1 .. t0``) and the episode's
real actions, and rolls out autoregressively (each prediction is appended to the context, the
oldest step dropped). The prediction for step ``t0 + h`` is compared with the recorded
observation at ``t0 + h`` for the horizons ``h`` in ``horizons`` (1, 4, 16, 64 steps at 20 Hz):
the recorded future *is* the simulator from the same start state with the same actions. A start
counts at horizon ``h`` only if its episode lasts that long; ``num_samples`` says how many did.

**Metrics** (``metrics``): ego-frame PSNR (dB) and SSIM, depth error (m) if depth is predicted,
motion MPJPE (mm, joints in the root frame), root translation error (m) and rotation error (rad),
the same for the partner, prop position error (m), occupancy IoU and mIoU (OccWorld's protocol).

**Baselines**, through the same code and starts: copy last frame, hold pose, static occupancy
(``baselines.HoldLastBaseline``), and the deterministic (MSE-trained) version of the same network
when ``mse_checkpoint`` is given.

**Counterfactual controllability.** From the same context, several action sequences (forward,
backward, turn left/right, stand, random) are run in the simulator -- ``EgoRoomVecEnv`` restarted
in the episode's room and brought to the context's state by replaying the episode's recorded
actions from its reset (which also restores the controller's gait phase and the partner's
script) -- and in the dream. Per sequence: the error of the dream's root displacement and heading
change after ``counterfactual.horizon`` steps; overall: the correlation between the sim's and the
dream's displacements, pooled and within a context (deviations from the context's mean over
sequences: a model that ignores its actions scores ~0 there, or null when it predicts no spread).

Writes ``metrics.json`` (keys ``horizons``, ``model``, ``baselines``, ``counterfactual``),
``run_info.json`` (what was evaluated, how many samples, timing), one PNG per metric (model vs
baselines over horizons), ``counterfactual.png`` and side-by-side videos ``videos/*.mp4``
(left real, right dream: ego frame over the occupancy seen from above).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamgym.rollouts.episodes import props_from_qpos

from .baselines import MODALITIES, HoldLastBaseline
from .counterfactual import (
    SimBranches,
    action_sequences,
    choose_counterfactual_episodes,
    counterfactual_scores,
    run_counterfactual,
    simulate_branches,
)
from .eval_replay import ENV_OBS_KEYS, HIGHER_IS_BETTER, MODALITY_METRICS, Start, evaluate_replay, plan_starts, split_baseline
from .eval_report import _strip_points, format_table, write_plots, write_videos

__all__ = [
    "ENV_OBS_KEYS",
    "HIGHER_IS_BETTER",
    "MODALITY_METRICS",
    "Episode",
    "SimBranches",
    "Start",
    "action_sequences",
    "check_compatible",
    "choose_counterfactual_episodes",
    "counterfactual_scores",
    "evaluate",
    "load_episodes",
    "model_spec",
    "plan_starts",
    "props_from_qpos",
    "simulate_branches",
    "simulate_episodes",
    "run",
]


# ---------------------------------------------------------------------------------------- episodes
@dataclass
class Episode:
    """One recorded episode: observations and actions with a leading time axis T.

    ``obs`` holds env-dtype arrays (T, ...) per key, including ``props`` (T, 4, 3) (prop positions,
    world, m). ``actions[t]`` is the action taken after observation t (the last row is unused).
    ``first_step`` is the env step of row 0 since the episode's reset (0: recorded from its reset,
    which the counterfactual replay needs).
    """

    obs: dict[str, np.ndarray]
    actions: np.ndarray
    room_seed: int
    task: str
    qpos: np.ndarray | None = None
    first_step: int = 0
    name: str = ""
    instruction: int | None = None
    rewards: np.ndarray | None = None  # (T,): reward of action t (the last row unused)
    partner_actions: np.ndarray | None = None  # (T, 6): the partner's command after observation t

    @classmethod
    def from_tensors(cls, d: dict[str, Any], room_seed: int = -1, task: str = "", first_step: int = 0, name: str = "") -> Episode:
        """From a dict of (T, ...) tensors or arrays with the observation keys, ``props`` (or
        ``qpos``), ``actions`` and optionally ``instruction`` (T,) -- the in-memory episode format
        of ``worldmodel.data``."""
        arr = {k: (v.cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in d.items()}
        obs = {k: arr[k] for k in MODALITIES if k in arr}
        if "props" not in obs and "qpos" in arr:
            obs["props"] = props_from_qpos(arr["qpos"])
        instr = arr.get("instruction")
        instr = int(np.asarray(instr).reshape(-1)[0]) if instr is not None else None
        rew = arr["rewards"].astype(np.float32) if "rewards" in arr else None
        pa = arr["partner_actions"].astype(np.float32) if "partner_actions" in arr else None
        return cls(obs, arr["actions"].astype(np.float32), int(room_seed), task, arr.get("qpos"), first_step, name, instr, rew, pa)

    @property
    def length(self) -> int:
        return int(self.actions.shape[0])


def simulate_episodes(
    task: str,
    room_seeds: Sequence[int],
    steps: int,
    resolution: int = 64,
    policy: str = "expert",
    seed: int = 0,
    obs_keys: Sequence[str] = (*ENV_OBS_KEYS, "instruction"),
    noise: float = 0.3,
) -> list[Episode]:
    """Run ``EgoRoomVecEnv`` in ``room_seeds`` (one world each) for up to ``steps`` steps and record
    each world's first episode (until it ends or ``steps``): a small ground-truth set for tests
    and for checking the evaluation without a dataset. ``policy``: ``expert``, ``noisy`` (expert
    plus Gaussian noise of std ``noise``) or ``random``."""
    from dreamgym.envs.vec_env import EgoRoomVecEnv

    B = len(room_seeds)
    env = EgoRoomVecEnv(num_envs=B, task=task, resolution=resolution, seed=seed, obs_keys=list(obs_keys), return_tensors=True)
    obs, _ = env.reset_tensors(room_seeds=list(room_seeds))
    gen = torch.Generator().manual_seed(seed)
    rows = {k: [v.clone()] for k, v in obs.items()}
    qpos = [env.sim_state()["qpos"]]
    acts, pacts, rews, alive_rows = [], [], [], [torch.ones(B, dtype=torch.bool)]
    alive = torch.ones(B, dtype=torch.bool)
    for _ in range(steps):
        if policy == "random":
            a = torch.rand(B, 6, generator=gen) * 2 - 1
        else:
            a = env.expert_actions().cpu()
            if policy == "noisy":
                a = (a + noise * torch.randn(B, 6, generator=gen)).clamp(-1, 1)
            elif policy != "expert":
                raise ValueError(f"policy must be expert, noisy or random, got {policy!r}")
        obs, r, term, trunc, info = env.step_tensors(a)
        pacts.append(env.core.partner_action.cpu().clone())
        done = (term | trunc).cpu()
        o, q = obs, env.sim_state()["qpos"]
        rews.append(r.float().cpu())
        if bool(done.any()):
            o = {k: torch.where(_bcast(done, v), info["final_obs"][k], v) for k, v in obs.items()}
            q = torch.where(done[:, None], info["final_state"]["qpos"], q)
        acts.append(a)
        for k, v in o.items():
            rows[k].append(v.clone())
        qpos.append(q.clone())
        alive_rows.append(alive.clone())
        alive = alive & ~done
        if not bool(alive.any()):
            break
    env.close()
    acts.append(torch.zeros(B, 6))
    pacts.append(torch.zeros(B, 6))
    rews.append(torch.zeros(B))
    valid = torch.stack(alive_rows, 1)  # (B, T): row t belongs to the first episode
    out = []
    for i in range(B):
        T = int(valid[i].sum())
        ep_obs = {k: torch.stack(v, 1)[i, :T].cpu().numpy() for k, v in rows.items() if k in ENV_OBS_KEYS}
        q = torch.stack(qpos, 1)[i, :T].cpu().numpy()
        ep_obs["props"] = props_from_qpos(q)
        a = torch.stack(acts, 1)[i, :T].cpu().numpy().astype(np.float32)
        a[T - 1] = 0.0
        rew = torch.stack(rews, 1)[i, :T].numpy().astype(np.float32)
        rew[T - 1] = 0.0
        instr = int(rows["instruction"][0][i]) if "instruction" in rows else None
        pa = torch.stack(pacts, 1)[i, :T].numpy().astype(np.float32)
        pa[T - 1] = 0.0
        out.append(Episode(ep_obs, a, int(room_seeds[i]), task, q, 0, f"{task}_room{room_seeds[i]}", instr, rew, pa))
    return out


def _bcast(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1))).to(like.device)


def load_episodes(
    path: str | Path | Sequence[str | Path], split: str = "heldout", keys: Sequence[str] | None = None, max_episodes: int | None = None
) -> list[Episode]:
    """Whole episodes of a dataset written by ``dreamgym collect`` (``rollouts``), from the rooms
    of ``split`` (``heldout``: seeds never seen in training), read by ``rollouts.episodes`` (with
    ``props`` and the partner's commands).

    Each episode runs from its reset: rows 0..T hold observations 0..T (T is the final one),
    ``actions`` row t the action after observation t (row T is zero, unused)."""
    from dreamgym.rollouts.episodes import EpisodeReader, index_dataset

    index = index_dataset(path, split=split, max_episodes=max_episodes)
    if keys is None:
        keys = sorted(set.intersection(*(set(m.data["env"]["obs_keys"]) for m in index.manifests)))
    obs_keys = [k for k in keys if k in MODALITIES]
    replay = all(r.task for r in index.episodes) and {"motion", "partner_motion"} <= set(obs_keys)
    reader = EpisodeReader(index.episodes, [*obs_keys, "qpos", "props", *(["partner_actions"] if replay else [])])
    out = []
    for i, e in enumerate(index.episodes):
        rows = reader.episode(i)
        a = reader.attrs(i)
        obs = {k: rows[k] for k in (*obs_keys, "props")}
        task = str(a.get("task", "") or e.task)
        name = f"{a.get('task', 'episode')}_room{e.room_seed}_{Path(e.shard).stem}_{e.group}"
        instruction = e.instruction if e.instruction >= 0 else None
        pacts = rows.get("partner_actions")
        out.append(Episode(obs, rows["actions"], e.room_seed, task, rows["qpos"], 0, name, instruction, rows["rewards"], pacts))
    reader.close()
    if not out:
        where = path if isinstance(path, (str, Path)) else ", ".join(map(str, path))
        raise ValueError(f"dataset {where} has no {split} episodes (room seeds are split by a hash; collect more rooms)")
    return out


# ---------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class ModelSpec:
    """What the evaluation needs to know of a world model."""

    context: int
    resolution: tuple[int, int] | None
    modalities: tuple[str, ...]


def model_spec(model: Any) -> ModelSpec:
    """Context length, the resolution of the frames it returns, and the observation keys it
    predicts, from ``model.config`` (and ``model.output_keys()`` when it has one)."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise TypeError(f"{type(model).__name__} has no .config; expected a WorldModel")
    get = (lambda n: cfg.get(n)) if isinstance(cfg, dict) else (lambda n: getattr(cfg, n, None))
    K = get("context")
    if K is None:
        raise TypeError(f"{type(model).__name__}.config has no context length ('context')")
    # ``resolution`` may be the internal (denoising) size; ``data_resolution`` is what it returns.
    res = get("data_resolution") if get("data_resolution") is not None else get("resolution")
    if res is not None:
        res = (int(res), int(res)) if isinstance(res, (int, np.integer)) else tuple(int(x) for x in res)
    if callable(getattr(model, "output_keys", None)):
        mods = tuple(model.output_keys())
    elif get("modalities") is not None:
        mods = tuple(get("modalities"))
    else:
        mods = MODALITIES
    unknown = [m for m in mods if m not in MODALITIES]
    if unknown:
        raise TypeError(f"{type(model).__name__} predicts unknown observation keys {unknown}; known: {list(MODALITIES)}")
    return ModelSpec(int(K), res, tuple(m for m in MODALITIES if m in mods))


def check_compatible(spec: ModelSpec, episodes: Sequence[Episode], checkpoint: str, data: str) -> None:
    """Raise ``ValueError`` naming both the checkpoint and the data when they do not fit."""
    if not episodes:
        raise ValueError(f"dataset {data} holds no held-out episodes")
    have = set(episodes[0].obs)
    missing = [m for m in spec.modalities if m not in have]
    if missing:
        raise ValueError(
            f"checkpoint {checkpoint} models {list(spec.modalities)} but dataset {data} lacks {missing} "
            f"(it holds {sorted(have)}); collect the data with those observation keys"
        )
    for m in ("ego_rgb", "ego_depth"):
        if m in spec.modalities and spec.resolution is not None:
            got = tuple(episodes[0].obs[m].shape[-2:])
            if got != spec.resolution:
                raise ValueError(
                    f"checkpoint {checkpoint} expects {m} at {spec.resolution[0]}x{spec.resolution[1]} "
                    f"but dataset {data} holds {got[0]}x{got[1]}; evaluate on data collected at resolution={spec.resolution[0]}"
                )
    longest = max(e.length for e in episodes)
    if longest < spec.context + 1:
        raise ValueError(
            f"checkpoint {checkpoint} needs a context of {spec.context} steps plus one to predict, "
            f"but the longest episode in dataset {data} has {longest} steps"
        )


# ---------------------------------------------------------------------------------------- driver
def evaluate(
    model: Any,
    episodes: Sequence[Episode],
    out: str | Path,
    horizons: Sequence[int] = (1, 4, 16, 64),
    mse_model: Any | None = None,
    modalities: Sequence[str] | None = None,
    num_steps: int = 1,
    batch_size: int = 16,
    stride: int = 16,
    starts_per_episode: int = 4,
    max_starts: int | None = 32,
    num_videos: int = 3,
    counterfactual: dict | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    checkpoint: str = "<model>",
    data: str = "<episodes>",
) -> dict[str, Any]:
    """Evaluate ``model`` (and the baselines) on ``episodes`` and write everything into ``out``.

    Returns the ``metrics.json`` content. ``counterfactual``: None to skip, else a dict with
    ``num_contexts``, ``start`` (row t0; None: the context length, so the model sees K real steps
    after the reset), ``horizon`` and ``sequences`` (name -> 6 numbers or ``random``)."""
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = model_spec(model)
    check_compatible(spec, episodes, checkpoint, data)
    mods = [m for m in (modalities if modalities is not None else spec.modalities) if m in spec.modalities and m in episodes[0].obs]
    if modalities is not None and set(modalities) - set(mods):
        raise ValueError(
            f"modalities {sorted(set(modalities) - set(mods))} are not both predicted by checkpoint {checkpoint} and held by dataset {data}"
        )
    notes = []
    if mse_model is not None:
        if getattr(getattr(mse_model, "config", None), "deterministic", True) is False:
            notes.append(
                "the mse_checkpoint's config has deterministic=false: it is not the MSE-trained baseline (train it with worldmodel=deterministic)"
            )
        mse_spec = model_spec(mse_model)
        if mse_spec.context != spec.context or set(mods) - set(mse_spec.modalities):
            raise ValueError(
                f"the MSE model (context {mse_spec.context}, {list(mse_spec.modalities)}) does not match checkpoint {checkpoint} (context {spec.context}, {mods})"
            )
    K = spec.context
    horizons = sorted(int(h) for h in horizons)
    starts = plan_starts(episodes, K, max(horizons), stride, starts_per_episode, max_starts, seed)
    if not starts:
        raise ValueError(f"no evaluation start in dataset {data}: every episode is shorter than context {K} + 1")
    # Videos: the longest rollouts, one per episode.
    keep, seen = [], set()
    for j, s in enumerate(starts):
        if len(keep) < num_videos and s.episode not in seen:
            keep.append(j)
            seen.add(s.episode)
    common = dict(context=K, horizons=horizons, modalities=mods, num_steps=num_steps, batch_size=batch_size, seed=seed, device=device)
    print(f"eval-wm: {len(episodes)} episodes, {len(starts)} starts, context {K}, horizons {horizons}, modalities {mods}", flush=True)
    res = evaluate_replay(model, episodes, starts, keep=keep, desc="model", **common)
    hold = evaluate_replay(HoldLastBaseline(), episodes, starts, desc="hold-last", **common)
    baselines = split_baseline(hold.metrics)
    if mse_model is not None:
        baselines["deterministic_mse"] = evaluate_replay(mse_model, episodes, starts, desc="mse", **common).metrics
    else:
        notes.append("no deterministic (MSE-trained) checkpoint given (mse_checkpoint=...): baseline deterministic_mse not evaluated")

    cf_out = run_counterfactual(counterfactual, episodes, model, mse_model, spec, mods, num_steps, seed, device, notes)

    result = {"horizons": horizons, "model": res.metrics, "baselines": baselines, "counterfactual": _strip_points(cf_out)}
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    if cf_out:
        (out / "counterfactual_points.json").write_text(
            json.dumps({k: v.get("_points") for k, v in [("model", cf_out["model"])] + list(cf_out["baselines"].items())})
        )
    plots = write_plots(out, horizons, res.metrics, baselines, cf_out or None)
    videos = write_videos(out / "videos", episodes, starts, res.kept, K)
    info = {
        "checkpoint": checkpoint,
        "data": data,
        "mse_checkpoint": getattr(mse_model, "_eval_source", None),
        "episodes": len(episodes),
        "starts": len(starts),
        "num_samples_per_horizon": dict(zip(map(str, horizons), res.metrics["num_samples"])),
        "context": K,
        "modalities": mods,
        "num_steps": num_steps,
        "seed": seed,
        "seconds": time.perf_counter() - t_start,
        "plots": [p.name for p in plots],
        "videos": [str(p.relative_to(out)) for p in videos],
        "notes": notes,
    }
    (out / "run_info.json").write_text(json.dumps(info, indent=2))
    print(format_table(horizons, res.metrics, baselines), flush=True)
    for n in notes:
        print("note:", n, flush=True)
    return result


def _load_model(path: str, device: str):
    from .model import WorldModel

    m = WorldModel.from_pretrained(path, device=device)
    m.eval()
    m._eval_source = path
    return m


def run(cfg) -> int:
    """``dreamgym eval-wm``: see the module docstring and ``configs/eval_wm.yaml``."""
    torch.set_num_threads(int(cfg.threads))
    if cfg.checkpoint is None or cfg.data is None:
        raise SystemExit("dreamgym eval-wm: give checkpoint=<dir or .safetensors> and data=<held-out dataset dir>")
    try:
        model = _load_model(str(cfg.checkpoint), cfg.device)
        mse = _load_model(str(cfg.mse_checkpoint), cfg.device) if cfg.get("mse_checkpoint") else None
        episodes = load_episodes(cfg.data, split=cfg.split, max_episodes=int(cfg.max_episodes) if cfg.get("max_episodes") else None)
        check_compatible(model_spec(model), episodes, str(cfg.checkpoint), str(cfg.data))
        if mse is not None:
            check_compatible(model_spec(mse), episodes, str(cfg.mse_checkpoint), str(cfg.data))
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise SystemExit(f"dreamgym eval-wm: {e}") from None
    cf = None
    if cfg.counterfactual.enabled:
        from omegaconf import OmegaConf

        cf = OmegaConf.to_container(cfg.counterfactual, resolve=True)
    evaluate(
        model,
        episodes,
        cfg.out,
        horizons=list(cfg.horizons),
        mse_model=mse,
        modalities=list(cfg.modalities) if cfg.modalities is not None else None,
        num_steps=int(cfg.num_steps),
        batch_size=int(cfg.batch_size),
        stride=int(cfg.stride),
        starts_per_episode=int(cfg.starts_per_episode),
        max_starts=cfg.max_starts,
        num_videos=int(cfg.num_videos),
        counterfactual=cf,
        seed=int(cfg.seed),
        device=cfg.device,
        checkpoint=str(cfg.checkpoint),
        data=str(cfg.data),
    )
    return 0
