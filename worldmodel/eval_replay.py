"""eval-wm's replay: evaluation starts, autoregressive rollouts from real contexts, per-horizon metrics."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import metrics as M
from .baselines import BASELINE_MODALITIES

if TYPE_CHECKING:
    from .evaluate import Episode

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
