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
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamgym.envs.motion import ROOT_POS, yaw_of_quat
from dreamgym.rollouts.episodes import props_from_qpos

from . import metrics as M
from .baselines import BASELINE_MODALITIES, MODALITIES, HoldLastBaseline

# Metric names per modality, in report order. Units are in the names (see ``metrics``).
MODALITY_METRICS: dict[str, tuple[str, ...]] = {
    "ego_rgb": ("psnr_db", "ssim"),
    "ego_depth": ("depth_abs_err_m",),
    "motion": ("mpjpe_mm", "root_trans_err_m", "root_rot_err_rad"),
    "partner_motion": ("partner_mpjpe_mm", "partner_root_trans_err_m"),
    "props": ("props_err_m",),
    "occupancy": ("occ_iou", "occ_miou"),
    "reward": ("reward_abs_err",),
}
HIGHER_IS_BETTER = {"psnr_db", "ssim", "occ_iou", "occ_miou"}
ENV_OBS_KEYS = ("ego_rgb", "ego_depth", "motion", "partner_motion", "occupancy")


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


# ---------------------------------------------------------------------------------------- rollouts
@dataclass(frozen=True)
class Start:
    episode: int  # index into the episode list
    t0: int  # row of the last context observation
    length: int  # how many future steps the episode has after t0 (capped at the largest horizon)


def plan_starts(
    episodes: Sequence[Episode], context: int, max_horizon: int, stride: int, per_episode: int, max_starts: int | None, seed: int = 0
) -> list[Start]:
    """Evaluation starts ``t0`` (the last context row): rows ``K-1, K-1+stride, ...`` of every
    episode that have at least one future step. When there are more than ``max_starts``, a seeded
    random choice, taking first the starts whose episode lasts the full ``max_horizon`` (so that
    the horizons are compared on the same starts as far as possible), at most ``per_episode`` per
    episode. Sorted longest rollout first (batches then hold rollouts of similar lengths)."""
    cands = [
        Start(i, t, min(max_horizon, ep.length - 1 - t))
        for i, ep in enumerate(episodes)
        for t in range(context - 1, ep.length - 1, max(1, stride))
    ]
    order = np.random.default_rng(seed).permutation(len(cands))
    cands = sorted((cands[j] for j in order), key=lambda s: s.length < max_horizon)
    taken, per = [], {}
    for s in cands:
        if per.get(s.episode, 0) >= max(1, per_episode):
            continue
        if max_starts is not None and len(taken) >= int(max_starts):
            break
        taken.append(s)
        per[s.episode] = per.get(s.episode, 0) + 1
    return sorted(taken, key=lambda s: (-s.length, s.episode, s.t0))


def _to_tensor(x: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def _batch(episodes: Sequence[Episode], starts: Sequence[Start], K: int, H: int, keys: Sequence[str], device):
    """Context (B, K, ...), actions (B, K+H-1, 6), real future (B, H, ...) (with ``reward`` when the
    episodes have rewards) and validity (B, H)."""
    ctx, fut, acts, pacts, valid = {k: [] for k in keys}, {k: [] for k in keys}, [], [], []
    for s in starts:
        ep = episodes[s.episode]
        lo = s.t0 - K + 1
        idx = np.clip(np.arange(s.t0 + 1, s.t0 + 1 + H), 0, ep.length - 1)
        for k in keys:
            ctx[k].append(ep.obs[k][lo : s.t0 + 1])
            fut[k].append(ep.obs[k][idx])
        for rows, src in ((acts, ep.actions), (pacts, ep.partner_actions)):
            if src is None:
                continue
            a = np.zeros((K + H - 1, src.shape[1]), np.float32)
            seg = src[lo : min(ep.length, lo + K + H - 1)]
            a[: len(seg)] = seg
            rows.append(a)
        valid.append(np.arange(1, H + 1) <= s.length)
    stack = lambda rows: _to_tensor(np.stack(rows), device)  # noqa: E731
    context = {k: stack(v) for k, v in ctx.items()}
    if len(pacts) == len(starts):
        context["partner_actions"] = stack(pacts)  # (B, K+H-1, 6), aligned with the actions
    instr = [episodes[s.episode].instruction for s in starts]
    if all(i is not None for i in instr):
        context["instruction"] = torch.tensor(instr, dtype=torch.long, device=device)
    future = {k: stack(v) for k, v in fut.items()}
    if all(episodes[s.episode].rewards is not None for s in starts):
        # the reward of the transition into row t0 + h is that of action t0 + h - 1
        future["reward"] = stack(
            [episodes[s.episode].rewards[np.clip(np.arange(s.t0, s.t0 + H), 0, episodes[s.episode].length - 1)] for s in starts]
        )
    return context, stack(acts), future, stack(valid)


def imagine_rollout(
    model: Any,
    context: dict[str, torch.Tensor],
    actions: torch.Tensor,
    horizon: int,
    modalities: Sequence[str],
    num_steps: int,
    generator: torch.Generator | None,
    on_step: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
) -> None:
    """Autoregressive rollout with ``model.imagine``: ``context`` (B, K, ...) per modality,
    ``actions`` (B, K+horizon-1, 6) where row ``j`` is the action after context row ``j`` (rows
    K.. are the future actions). ``context["partner_actions"]`` (B, K+horizon-1, 6), when present,
    holds the partner's commands aligned with ``actions``; a model conditioned on them
    (``config.partner_actions``) gets them. Calls ``on_step(h, prediction)`` for h = 1..horizon."""
    K = context[modalities[0]].shape[1]
    ctx = dict(context)
    pacts = ctx.pop("partner_actions", None)
    if not getattr(getattr(model, "config", None), "partner_actions", False):
        pacts = None
    memory = getattr(model, "scene_memory", None)  # a warping world model keeps the real frame
    if memory is not None:
        ctx |= memory(ctx)
    for h in range(1, horizon + 1):
        extra = {} if pacts is None else {"partner_actions": pacts[:, h - 1 : h - 1 + K]}
        pred = model.imagine(
            ctx, actions[:, h - 1 : h - 1 + K], num_steps=num_steps, modalities=list(modalities), generator=generator, **extra
        )
        missing = [m for m in modalities if m not in pred]
        if missing:
            raise RuntimeError(f"{type(model).__name__}.imagine returned no {missing} (asked for {list(modalities)})")
        for m in modalities:
            want = context[m]
            p = pred[m]
            if p.shape != want.shape[:1] + want.shape[2:] or p.dtype != want.dtype:
                raise RuntimeError(
                    f"{type(model).__name__}.imagine returned {m} {tuple(p.shape)} {p.dtype}, expected "
                    f"{(want.shape[0], *want.shape[2:])} {want.dtype}"
                )
            ctx[m] = torch.cat((ctx[m][:, 1:], p[:, None]), 1)
        if on_step is not None:
            on_step(h, pred)


class _Accumulator:
    """Sums of per-sample metrics (and occupancy counts) per horizon."""

    def __init__(self, horizons: Sequence[int]):
        self.horizons = list(horizons)
        self.sums: dict[str, np.ndarray] = {}
        self.n = np.zeros(len(horizons), np.int64)
        self.occ: list[dict[str, torch.Tensor] | None] = [None] * len(horizons)

    def add(self, h: int, pred: dict[str, torch.Tensor], real: dict[str, torch.Tensor], mask: torch.Tensor) -> None:
        if h not in self.horizons or not bool(mask.any()):
            return
        j = self.horizons.index(h)
        self.n[j] += int(mask.sum())
        p = {k: v[mask] for k, v in pred.items() if k in real}
        r = {k: real[k][mask] for k in p}
        vals = per_sample_metrics(p, r)
        for name, v in vals.items():
            self.sums.setdefault(name, np.zeros(len(self.horizons)))[j] += float(v.double().sum())
        if "occupancy" in p:
            c = M.occupancy_counts(p["occupancy"], r["occupancy"])
            c = {k: v.sum(0) for k, v in c.items()}
            self.occ[j] = c if self.occ[j] is None else {k: self.occ[j][k] + c[k] for k in c}

    def result(self) -> dict[str, list[float | None]]:
        out: dict[str, list] = {}
        for name, s in self.sums.items():
            out[name] = [_finite(s[j] / self.n[j]) if self.n[j] else None for j in range(len(self.horizons))]
        if any(c is not None for c in self.occ):
            ious = [M.iou_from_counts(c) if c is not None else {"occ_iou": None, "occ_miou": None} for c in self.occ]
            out["occ_iou"] = [_finite(x["occ_iou"]) for x in ious]
            out["occ_miou"] = [_finite(x["occ_miou"]) for x in ious]
        ordered = {m: out[m] for mod in MODALITY_METRICS.values() for m in mod if m in out}
        ordered["num_samples"] = [int(x) for x in self.n]
        return ordered


def _finite(x) -> float | None:
    """JSON has no NaN: undefined values are written as null."""
    return None if x is None or not math.isfinite(float(x)) else float(x)


def per_sample_metrics(pred: dict[str, torch.Tensor], real: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """(N,) values of every per-sample metric whose modality is in both dicts (occupancy apart)."""
    out = {}
    if "ego_rgb" in pred:
        out["psnr_db"] = M.psnr(pred["ego_rgb"], real["ego_rgb"])
        out["ssim"] = M.ssim(pred["ego_rgb"], real["ego_rgb"])
    if "ego_depth" in pred:
        out["depth_abs_err_m"] = M.depth_abs_error(pred["ego_depth"], real["ego_depth"])
    if "motion" in pred:
        out["mpjpe_mm"] = M.mpjpe_mm(pred["motion"], real["motion"])
        out["root_trans_err_m"] = M.root_translation_error(pred["motion"], real["motion"])
        out["root_rot_err_rad"] = M.root_rotation_error(pred["motion"], real["motion"])
    if "partner_motion" in pred:
        out["partner_mpjpe_mm"] = M.mpjpe_mm(pred["partner_motion"], real["partner_motion"])
        out["partner_root_trans_err_m"] = M.root_translation_error(pred["partner_motion"], real["partner_motion"])
    if "props" in pred:
        out["props_err_m"] = M.props_error(pred["props"], real["props"])
    if "reward" in pred:
        out["reward_abs_err"] = (pred["reward"].float() - real["reward"].float()).abs()
    return out


@dataclass
class ReplayResult:
    metrics: dict[str, list]  # metric -> per horizon (plus num_samples)
    kept: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # start index -> predictions (H, ...)


def evaluate_replay(
    model: Any,
    episodes: Sequence[Episode],
    starts: Sequence[Start],
    context: int,
    horizons: Sequence[int],
    modalities: Sequence[str],
    num_steps: int = 1,
    batch_size: int = 16,
    seed: int = 0,
    device: str | torch.device = "cpu",
    keep: Iterable[int] = (),
    desc: str = "replay",
) -> ReplayResult:
    """Roll ``model`` out from every start with the recorded actions and score it at ``horizons``.

    ``keep``: indices into ``starts`` whose predictions are returned (for videos)."""
    horizons = sorted(int(h) for h in horizons)
    H = max(horizons)
    acc = _Accumulator(horizons)
    keep = set(keep)
    kept: dict[int, dict[str, list]] = {}
    gen = torch.Generator(device=device).manual_seed(int(seed))
    from tqdm.auto import tqdm

    total = sum(min(H, max(s.length for s in starts[i : i + batch_size])) for i in range(0, len(starts), batch_size))
    bar = tqdm(total=total, desc=desc, unit="step", leave=False)
    with torch.no_grad():
        for i in range(0, len(starts), batch_size):
            chunk = list(starts[i : i + batch_size])
            steps = max(s.length for s in chunk)
            ctx, acts, fut, valid = _batch(episodes, chunk, context, steps, modalities, device)
            rows = [j for j in range(len(chunk)) if i + j in keep]

            def on_step(h: int, pred: dict[str, torch.Tensor]) -> None:
                acc.add(h, pred, {k: v[:, h - 1] for k, v in fut.items()}, valid[:, h - 1])
                for j in rows:
                    for k in modalities:
                        kept.setdefault(i + j, {}).setdefault(k, []).append(pred[k][j].cpu().numpy())
                bar.update(1)

            imagine_rollout(model, ctx, acts, steps, modalities, num_steps, gen, on_step)
    bar.close()
    return ReplayResult(acc.result(), {s: {k: np.stack(v) for k, v in d.items()} for s, d in kept.items()})


def split_baseline(result: dict[str, list]) -> dict[str, dict[str, list]]:
    """The hold-last baseline's metrics under the names of the baselines they stand for."""
    out = {}
    for name, mods in BASELINE_MODALITIES.items():
        names = [m for mod in mods for m in MODALITY_METRICS[mod] if m in result]
        if names:
            out[name] = {m: result[m] for m in names} | {"num_samples": result["num_samples"]}
    return out


# ---------------------------------------------------------------------------------------- counterfactuals
def action_sequences(spec: dict[str, Any], horizon: int, seed: int = 0) -> tuple[list[str], torch.Tensor]:
    """Names and actions (S, horizon, 6) of the counterfactual sequences: a name maps to a constant
    6-float action, or to ``random`` (uniform in [-1, 1] every step, seeded)."""
    gen = torch.Generator().manual_seed(int(seed))
    names, seqs = [], []
    for name, a in spec.items():
        if isinstance(a, str):
            if a != "random":
                raise ValueError(f"counterfactual sequence {name!r} must be 6 numbers or 'random', got {a!r}")
            seqs.append(torch.rand(horizon, 6, generator=gen) * 2 - 1)
        else:
            a = torch.as_tensor(list(a), dtype=torch.float32)
            if a.shape != (6,):
                raise ValueError(f"counterfactual sequence {name!r} must be 6 numbers, got {list(a.tolist())}")
            seqs.append(a.expand(horizon, 6).clone())
        names.append(str(name))
    return names, torch.stack(seqs)


@dataclass
class SimBranches:
    """The simulator's counterfactual branches: N contexts x S action sequences, row = n * S + s."""

    context: dict[str, torch.Tensor]  # (N*S, K, ...) real observations up to t0 (props included), instruction (N*S,)
    context_actions: torch.Tensor  # (N*S, K-1, 6) recorded actions after rows t0-K+1 .. t0-1
    actions: torch.Tensor  # (N*S, Hc, 6) the branch's actions (applied after t0, t0+1, ...)
    root: torch.Tensor  # (N*S, Hc+1, 7) root position and quaternion at t0 .. t0+Hc (world)
    alive: torch.Tensor  # (N*S,) bool: no episode end within the Hc steps
    replay_dev_m: float  # largest root position difference between replay and recording at t0
    episodes: list[int]  # the N episode indices
    partner_actions: torch.Tensor | None = None  # (N*S, K-1+Hc, 6) the partner's commands, aligned with context_actions + actions


def simulate_branches(
    episodes: Sequence[Episode],
    chosen: Sequence[int],
    t0: int,
    context: int,
    sequences: torch.Tensor,
    resolution: tuple[int, int],
    modalities: Sequence[str],
) -> SimBranches:
    """Restart ``EgoRoomVecEnv`` in each chosen episode's room, replay its recorded actions up to
    row ``t0``, then apply each of the S ``sequences`` (S, Hc, 6) for Hc steps (one world each)."""
    from dreamgym.envs.vec_env import EgoRoomVecEnv

    S, Hc = sequences.shape[:2]
    K = context
    tasks = {episodes[i].task for i in chosen}
    if len(tasks) != 1:
        raise ValueError(f"counterfactual contexts must share one task, got {sorted(tasks)}")
    obs_keys = sorted({m for m in modalities if m in ENV_OBS_KEYS} | {"motion", "instruction"})
    N = len(chosen)
    env = EgoRoomVecEnv(num_envs=N * S, task=tasks.pop(), resolution=resolution, seed=0, obs_keys=obs_keys, return_tensors=True)
    obs, _ = env.reset_tensors(room_seeds=[episodes[i].room_seed for i in chosen for _ in range(S)])
    rec = lambda t: torch.as_tensor(np.stack([episodes[i].actions[t] for i in chosen])).repeat_interleave(S, 0)  # noqa: E731
    ctx_rows: list[dict[str, torch.Tensor]] = []

    def grab(o):
        row = {k: o[k].clone() for k in modalities if k in o}
        if "props" in modalities:
            row["props"] = props_from_qpos(env.sim_state()["qpos"])
        return row

    if t0 - K + 1 <= 0:
        ctx_rows.append(grab(obs))
    pacts: list[torch.Tensor] = []
    for t in range(t0):
        obs, _, term, trunc, _ = env.step_tensors(rec(t))
        if t >= t0 - K + 1:
            pacts.append(env.core.partner_action.cpu().clone())
        if bool((term | trunc).any()):
            raise RuntimeError(f"an episode ended while replaying its recorded actions at step {t + 1} (t0={t0})")
        if t + 1 >= t0 - K + 1:
            ctx_rows.append(grab(obs))
    real = torch.as_tensor(np.stack([episodes[i].obs["motion"][t0, ROOT_POS] for i in chosen])).repeat_interleave(S, 0)
    dev = float((obs["motion"][:, ROOT_POS].cpu() - real).norm(dim=-1).max())
    instruction = obs["instruction"].clone()
    root = [obs["motion"][:, :7].clone()]
    alive = torch.ones(N * S, dtype=torch.bool)
    acts = sequences.repeat(N, 1, 1)
    for h in range(Hc):
        obs, _, term, trunc, info = env.step_tensors(acts[:, h])
        pacts.append(env.core.partner_action.cpu().clone())
        done = (term | trunc).cpu()
        m = obs["motion"]
        if bool(done.any()):
            m = torch.where(done[:, None], info["final_obs"]["motion"], m)
        root.append(m[:, :7].clone())
        alive = alive & ~(done & torch.as_tensor(h < Hc - 1))  # ending on the last step is fine
    env.close()
    ctxa = np.stack([episodes[i].actions[t0 - K + 1 : t0] for i in chosen]) if K > 1 else np.zeros((N, 0, 6), np.float32)
    context_obs = {k: torch.stack([r[k] for r in ctx_rows], 1) for k in ctx_rows[0]}
    context_obs["instruction"] = instruction
    return SimBranches(
        context=context_obs,
        context_actions=torch.as_tensor(ctxa).repeat_interleave(S, 0),
        actions=acts,
        root=torch.stack(root, 1).cpu(),
        alive=alive,
        replay_dev_m=dev,
        episodes=list(chosen),
        partner_actions=torch.stack(pacts, 1),
    )


def _displacement(root: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Root displacement (B, 2) in the heading frame at the first step, and heading change (B,),
    from a root trajectory (B, T, 7) (position, quaternion): last step vs first."""
    p0, p1 = root[:, 0, :3], root[:, -1, :3]
    y0, y1 = yaw_of_quat(root[:, 0, 3:7]), yaw_of_quat(root[:, -1, 3:7])
    d = p1[:, :2] - p0[:, :2]
    c, s = torch.cos(y0), torch.sin(y0)
    local = torch.stack((c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]), -1)
    dyaw = torch.remainder(y1 - y0 + math.pi, 2 * math.pi) - math.pi
    return local, dyaw


def _corr(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Pearson correlation of two flat samples; None when either has no spread (undefined)."""
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    na, nb = a.norm(), b.norm()
    if a.numel() < 2 or na < 1e-9 or nb < 1e-9:
        return None
    return _finite(float((a * b).sum() / (na * nb)))


def counterfactual_scores(
    sim: SimBranches, model: Any, names: Sequence[str], modalities: Sequence[str], num_steps: int, seed: int, device
) -> dict[str, Any]:
    """Dream the same branches with ``model`` and compare displacements with the simulator's."""
    S = len(names)
    N = len(sim.episodes)
    Hc = sim.actions.shape[1]
    ctx = {k: v.to(device) for k, v in sim.context.items() if k in modalities or k == "instruction"}
    acts = torch.cat((sim.context_actions, sim.actions), 1).to(device)
    if sim.partner_actions is not None:
        ctx["partner_actions"] = sim.partner_actions.to(device)
    roots = [ctx["motion"][:, -1, :7].cpu()]
    gen = torch.Generator(device=device).manual_seed(int(seed))
    with torch.no_grad():
        imagine_rollout(model, ctx, acts, Hc, modalities, num_steps, gen, lambda h, p: roots.append(p["motion"][:, :7].float().cpu()))
    dream_root = torch.stack(roots, 1)
    ds, ys = _displacement(sim.root)
    dd, yd = _displacement(dream_root)
    alive = sim.alive
    grid = lambda x: x.view(N, S, *x.shape[1:])  # noqa: E731
    ok = grid(alive)
    per_seq = {}
    for s, name in enumerate(names):
        m = ok[:, s]
        n = int(m.sum())
        if n == 0:
            per_seq[name] = {"n": 0}
            continue
        sd, dd_, sy, dy = grid(ds)[m, s], grid(dd)[m, s], grid(ys)[m, s], grid(yd)[m, s]
        per_seq[name] = {
            "n": n,
            "sim_disp_m": [float(x) for x in sd.mean(0)],
            "dream_disp_m": [float(x) for x in dd_.mean(0)],
            "disp_err_m": float((dd_ - sd).norm(dim=-1).mean()),
            "sim_dyaw_rad": float(sy.mean()),
            "dream_dyaw_rad": float(dy.mean()),
            "dyaw_err_rad": float((dy - sy).abs().mean()),
        }
    # Within a context: deviations from that context's mean over its (alive) sequences.
    full = ok.all(1)  # contexts where every branch lasted

    def centred(x: torch.Tensor) -> torch.Tensor:
        g = grid(x)[full]
        return g - g.mean(1, keepdim=True)

    return {
        "per_sequence": per_seq,
        "disp_err_m": float((dd - ds).norm(dim=-1)[alive].mean()) if bool(alive.any()) else None,
        "dyaw_err_rad": float((yd - ys).abs()[alive].mean()) if bool(alive.any()) else None,
        "disp_corr": _corr(ds[alive], dd[alive]),
        "dyaw_corr": _corr(ys[alive], yd[alive]),
        "disp_corr_within_context": _corr(centred(ds), centred(dd)) if bool(full.any()) else None,
        "dyaw_corr_within_context": _corr(centred(ys), centred(yd)) if bool(full.any()) else None,
        "sim_spread_m": float(centred(ds).norm(dim=-1).mean()) if bool(full.any()) else None,
        "dream_spread_m": float(centred(dd).norm(dim=-1).mean()) if bool(full.any()) else None,
        "_points": {
            "sim_disp": ds.tolist(),
            "dream_disp": dd.tolist(),
            "sim_dyaw": ys.tolist(),
            "dream_dyaw": yd.tolist(),
            "alive": alive.tolist(),
        },
    }


def choose_counterfactual_episodes(episodes: Sequence[Episode], t0: int, num: int) -> list[int]:
    """Episodes recorded from their reset that last beyond ``t0``, all of the most common task."""
    ok = [i for i, e in enumerate(episodes) if e.first_step == 0 and e.length > t0 + 1 and e.room_seed >= 0]
    if not ok:
        return []
    tasks = [episodes[i].task for i in ok]
    task = max(set(tasks), key=tasks.count)
    return [i for i in ok if episodes[i].task == task][:num]


# ---------------------------------------------------------------------------------------- output
def write_plots(out: Path, horizons: Sequence[int], model: dict, baselines: dict, counterfactual: dict | None) -> list[Path]:
    """One PNG per metric (model and baselines over horizons) and a counterfactual scatter plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    names = [m for m in model if m != "num_samples"]
    for metric in names:
        fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=110)
        series = [("model", model[metric])] + [(b, v[metric]) for b, v in baselines.items() if metric in v]
        for label, ys in series:
            pts = [(h, y) for h, y in zip(horizons, ys) if y is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=label, lw=2 if label == "model" else 1.2)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(horizons), [str(h) for h in horizons])
        ax.set_xlabel("horizon (steps at 20 Hz)")
        ax.set_ylabel(metric)
        ax.set_title(metric + (" (higher is better)" if metric in HIGHER_IS_BETTER else " (lower is better)"), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out / f"{metric}.png"
        fig.savefig(p)
        plt.close(fig)
        written.append(p)
    if counterfactual and "model" in counterfactual and "_points" in counterfactual["model"]:
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.5), dpi=110)
        seqs = counterfactual["sequences"]
        for who, res in [("model", counterfactual["model"])] + [(k, v) for k, v in counterfactual.get("baselines", {}).items()]:
            if "_points" not in res:
                continue
            pts = res["_points"]
            sd, dd = np.array(pts["sim_disp"]), np.array(pts["dream_disp"])
            sy, dy = np.array(pts["sim_dyaw"]), np.array(pts["dream_dyaw"])
            alive = np.array(pts["alive"], bool)
            seq = np.tile(np.arange(len(seqs)), len(alive) // len(seqs))
            if who != "model":
                continue
            for s, name in enumerate(seqs):
                m = alive & (seq == s)
                axes[0].scatter(sd[m, 0], dd[m, 0], s=12, label=name)
                axes[1].scatter(sd[m, 1], dd[m, 1], s=12, label=name)
                axes[2].scatter(sy[m], dy[m], s=12, label=name)
        for ax, t in zip(axes, ("forward displacement (m)", "leftward displacement (m)", "heading change (rad)")):
            lim = [min(ax.get_xlim()[0], ax.get_ylim()[0]), max(ax.get_xlim()[1], ax.get_ylim()[1])]
            ax.plot(lim, lim, "k--", lw=0.8)
            ax.set_xlabel("simulator")
            ax.set_ylabel("dream")
            ax.set_title(t, fontsize=9)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"counterfactual: same context, different actions, after {counterfactual['horizon']} steps", fontsize=10)
        fig.tight_layout()
        p = out / "counterfactual.png"
        fig.savefig(p)
        plt.close(fig)
        written.append(p)
    return written


def occupancy_image(occ: np.ndarray) -> np.ndarray:
    """Top view (X, Y, 3) uint8 of an occupancy grid (Z, X, Y): each column shows its highest class,
    agent facing up (the colours of ``dreamgym collect``'s videos)."""
    from dreamgym.rollouts.video import occupancy_image as top_view

    return top_view(occ, occ.shape[-1])


def _label(img: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.fromarray(img)
    ImageDraw.Draw(im).text((3, 1), text, fill=(255, 255, 0))
    return np.asarray(im)


def video_frames(real: dict[str, np.ndarray], dream: dict[str, np.ndarray], scale: int = 4) -> np.ndarray:
    """(T, H, W, 3) uint8 frames: real on the left, dream on the right; each side is the ego frame
    (if any) above the occupancy top view (if any). ``real``, ``dream``: (T, ...) per key."""

    def side(d: dict[str, np.ndarray], t: int) -> np.ndarray:
        parts = []
        if "ego_rgb" in d:
            parts.append(np.repeat(np.repeat(d["ego_rgb"][t].transpose(1, 2, 0), scale, 0), scale, 1))
        if "occupancy" in d:
            w = parts[0].shape[1] if parts else 32 * scale
            o = occupancy_image(d["occupancy"][t])
            f = max(1, w // o.shape[1])
            o = np.repeat(np.repeat(o, f, 0), f, 1)
            pad = np.full((o.shape[0], w, 3), 255, np.uint8)
            pad[:, : o.shape[1]] = o[:, :w]
            parts.append(pad)
        return np.concatenate(parts, 0)

    T = next(iter(real.values())).shape[0]
    frames = []
    for t in range(T):
        left, right = _label(side(real, t), "real"), _label(side(dream, t), "dream")
        gap = np.zeros((left.shape[0], 4, 3), np.uint8)
        frames.append(np.concatenate((left, gap, right), 1))
    return np.stack(frames)


def write_videos(out: Path, episodes: Sequence[Episode], starts: Sequence[Start], kept: dict, context: int, fps: int = 10) -> list[Path]:
    """Side-by-side mp4s (real | dream) of the kept starts: the context (real on both sides), then
    the rollout."""
    import imageio.v2 as imageio

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, pred in kept.items():
        s = starts[i]
        ep = episodes[s.episode]
        keys = [k for k in ("ego_rgb", "occupancy") if k in pred]
        if not keys:
            continue
        L = s.length
        ctx = {k: ep.obs[k][s.t0 - context + 1 : s.t0 + 1] for k in keys}
        real = {k: np.concatenate((ctx[k], ep.obs[k][s.t0 + 1 : s.t0 + 1 + L])) for k in keys}
        dream = {k: np.concatenate((ctx[k], pred[k][:L])) for k in keys}
        frames = video_frames(real, dream)
        p = out / f"{ep.name or f'episode{s.episode}'}_t{s.t0}.mp4"
        with imageio.get_writer(p, fps=fps, codec="libx264", quality=8, macro_block_size=1) as w:
            for f in frames:
                w.append_data(f)
        written.append(p)
    return written


def _strip_points(cf: dict) -> dict:
    """The counterfactual section without the raw points (they go to counterfactual_points.json)."""
    if not isinstance(cf, dict):
        return cf
    return {k: _strip_points(v) for k, v in cf.items() if k != "_points"}


def format_table(horizons: Sequence[int], model: dict, baselines: dict) -> str:
    """A plain-text table: one row per metric, model then the baselines that report it."""
    head = f"{'metric':<26}{'who':<20}" + "".join(f"{'h=' + str(h):>11}" for h in horizons)
    lines = [head, "-" * len(head)]
    fmt = lambda v: f"{v:>11.4g}" if v is not None else f"{'-':>11}"  # noqa: E731
    for metric in model:
        if metric == "num_samples":
            continue
        lines.append(f"{metric:<26}{'model':<20}" + "".join(fmt(v) for v in model[metric]))
        for b, vals in baselines.items():
            if metric in vals:
                lines.append(f"{'':<26}{b:<20}" + "".join(fmt(v) for v in vals[metric]))
    lines.append(f"{'num_samples':<26}{'':<20}" + "".join(f"{n:>11d}" for n in model["num_samples"]))
    return "\n".join(lines)


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

    cf_out: dict[str, Any] = {}
    if counterfactual and "motion" in mods:
        cf = dict(counterfactual)
        Hc = int(cf.get("horizon", 16))
        t0 = int(cf["start"]) if cf.get("start") is not None else K
        t0 = max(t0, K - 1)
        chosen = choose_counterfactual_episodes(episodes, t0, int(cf.get("num_contexts", 8)))
        if chosen:
            names, seqs = action_sequences(dict(cf["sequences"]), Hc, seed)
            print(f"counterfactual: {len(chosen)} contexts x {len(names)} action sequences, {Hc} steps from t0={t0}", flush=True)
            sim = simulate_branches(
                episodes, chosen, t0, K, seqs, spec.resolution or episodes[0].obs.get("ego_rgb", np.zeros((1, 3, 64, 64))).shape[-2:], mods
            )
            cf_out = {
                "horizon": Hc,
                "start": t0,
                "num_contexts": len(chosen),
                "sequences": names,
                "replay_max_root_dev_m": sim.replay_dev_m,
            }
            cf_out["model"] = counterfactual_scores(sim, model, names, mods, num_steps, seed, device)
            cf_out["baselines"] = {"hold_pose": counterfactual_scores(sim, HoldLastBaseline(), names, mods, num_steps, seed, device)}
            if mse_model is not None:
                cf_out["baselines"]["deterministic_mse"] = counterfactual_scores(sim, mse_model, names, mods, num_steps, seed, device)
        else:
            notes.append(f"counterfactual skipped: no episode recorded from its reset lasts beyond step {t0 + 1}")
    elif counterfactual:
        notes.append("counterfactual skipped: the model does not predict motion")

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
