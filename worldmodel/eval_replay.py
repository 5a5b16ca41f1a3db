"""eval-wm's replay: autoregressive rollouts from real contexts, scored per start at each horizon.

``evaluate_replay`` rolls one *arm* (the model under a sampler, or a baseline) out from every
start under the recorded actions and keeps every per-start value (``StartRecord``): the
statistics (``eval_stats``) resample starts, so nothing is averaged here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import metrics as M
from .eval_tasks import Start

if TYPE_CHECKING:
    from .eval_episodes import Episode

# Metric names per modality, in report order. Units are in the names (see ``metrics``);
# ``occ_iou`` and ``occ_miou`` are pooled over starts (OccWorld), ``occ_iou_start`` is the mean of
# per-start IoUs.
MODALITY_METRICS: dict[str, tuple[str, ...]] = {
    "ego_rgb": ("psnr_db", "ssim"),
    "ego_depth": ("depth_abs_err_m",),
    "motion": ("mpjpe_mm", "root_trans_err_m", "root_rot_err_rad"),
    "partner_motion": ("partner_mpjpe_mm", "partner_root_trans_err_m"),
    "props": ("props_err_m",),
    "occupancy": ("occ_iou", "occ_iou_start", "occ_miou"),
    "reward": ("reward_abs_err",),
}
HIGHER_IS_BETTER = {"psnr_db", "ssim", "occ_iou", "occ_iou_start", "occ_miou"}
ENV_OBS_KEYS = ("ego_rgb", "ego_depth", "motion", "partner_motion", "occupancy")
FRAME_KEYS = ("ego_rgb", "ego_depth")
# per-start occupancy counts: occupied intersection and union, then per-class intersections and unions
N_CLASSES = len(M.CLASS_NAMES)

__all__ = [
    "ENV_OBS_KEYS",
    "FRAME_KEYS",
    "HIGHER_IS_BETTER",
    "MODALITY_METRICS",
    "Start",
    "StartRecord",
    "evaluate_replay",
    "imagine_rollout",
    "per_sample_metrics",
]


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


def step_modalities(modalities: Sequence[str], h: int, stop_after: Mapping[str, int | None] | None = None) -> list[str]:
    """The modalities dreamed at step ``h``: a key of ``stop_after`` only up to its step (None: always)."""
    stop = stop_after or {}
    return [m for m in modalities if stop.get(m) is None or h <= stop[m]]


def _take(x: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """The first ``n`` rows of every (B, ...) tensor."""
    return {k: v[:n] for k, v in x.items()}


def imagine_rollout(
    model: Any,
    context: dict[str, torch.Tensor],
    actions: torch.Tensor,
    horizon: int,
    modalities: Sequence[str],
    num_steps: int | None,
    generator: torch.Generator | None,
    on_step: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
    imagine_kwargs: dict[str, Any] | None = None,
    stop_after: Mapping[str, int | None] | None = None,
    active: Sequence[int] | None = None,
) -> None:
    """Autoregressive rollout with ``model.imagine``: ``context`` (B, K, ...) per modality,
    ``actions`` (B, K+horizon-1, 6) where row ``j`` is the action after context row ``j`` (rows
    K.. are the future actions). ``context["partner_actions"]`` (B, K+horizon-1, 6), when present,
    holds the partner's commands aligned with ``actions``; a model conditioned on them
    (``config.partner_actions``) gets them. ``num_steps`` (None: the model's sampler) and
    ``imagine_kwargs`` (e.g. ``init_noise``) go to every ``imagine`` call. ``stop_after``: the last
    step each key is dreamed (e.g. frames only up to h = 16; absent: every step). ``active``: how
    many leading rows are still needed at each step (non-increasing; the others are dropped).
    Calls ``on_step(h, prediction)`` for h = 1..horizon."""
    K = context[modalities[0]].shape[1]
    ctx = dict(context)
    pacts = ctx.pop("partner_actions", None)
    if not getattr(getattr(model, "config", None), "partner_actions", False):
        pacts = None
    memory = getattr(model, "scene_memory", None)  # a warping world model keeps the real frame
    if memory is not None:
        ctx |= memory(ctx)
    kwargs = dict(imagine_kwargs or {})
    if num_steps is not None:
        kwargs["num_steps"] = num_steps
    for h in range(1, horizon + 1):
        if active is not None and active[h - 1] < actions.shape[0]:
            n = int(active[h - 1])
            ctx, actions = _take(ctx, n), actions[:n]
            pacts = None if pacts is None else pacts[:n]
        mods = step_modalities(modalities, h, stop_after)
        extra = {} if pacts is None else {"partner_actions": pacts[:, h - 1 : h - 1 + K]}
        pred = model.imagine(ctx, actions[:, h - 1 : h - 1 + K], modalities=mods, generator=generator, **kwargs, **extra)
        missing = [m for m in mods if m not in pred]
        if missing:
            raise RuntimeError(f"{type(model).__name__}.imagine returned no {missing} (asked for {mods})")
        for m in mods:
            want = ctx[m]
            p = pred[m]
            if p.shape != want.shape[:1] + want.shape[2:] or p.dtype != want.dtype:
                raise RuntimeError(
                    f"{type(model).__name__}.imagine returned {m} {tuple(p.shape)} {p.dtype}, expected "
                    f"{(want.shape[0], *want.shape[2:])} {want.dtype}"
                )
            ctx[m] = torch.cat((ctx[m][:, 1:], p[:, None]), 1)
        if on_step is not None:
            on_step(h, {m: pred[m] for m in mods} | {k: pred[k] for k in ("reward",) if k in pred})


def per_sample_metrics(pred: dict[str, torch.Tensor], real: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """(N,) values of every per-sample metric whose modality is in both dicts, and the occupancy
    counts ``occ_counts`` (N, 2 + 2 C): occupied intersection, union, per-class intersections, unions."""
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
    if "occupancy" in pred:
        c = M.occupancy_counts(pred["occupancy"], real["occupancy"])
        out["occ_iou_start"] = c["occ_inter"].double().div(c["occ_union"].double()).float()
        out["occ_counts"] = torch.cat((c["occ_inter"][:, None], c["occ_union"][:, None], c["class_inter"], c["class_union"]), 1).float()
    if "reward" in pred and "reward" in real:
        out["reward_abs_err"] = (pred["reward"].float() - real["reward"].float()).abs()
    return out


@dataclass
class StartRecord:
    """One arm's per-start values: ``values[name]`` is (N starts, n horizons, ...) float, NaN where
    the start does not reach the horizon or the value is not computed there. Names: the
    per-sample metrics, ``occ_counts`` (N, nh, 2 + 2 C), ``props`` (N, nh, 4, 3) (the dreamed prop
    positions) and the video hook's values. ``kept``: start index -> predictions (H, ...) per key."""

    horizons: list[int]
    num_starts: int
    values: dict[str, np.ndarray] = field(default_factory=dict)
    kept: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)

    def put(self, name: str, rows: np.ndarray, j: int, v: torch.Tensor | np.ndarray) -> None:
        v = v.detach().double().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, np.float64)
        if name not in self.values:
            self.values[name] = np.full((self.num_starts, len(self.horizons), *v.shape[1:]), np.nan)
        self.values[name][rows, j] = v


def evaluate_replay(
    model: Any,
    episodes: Sequence[Episode],
    starts: Sequence[Start],
    context: int,
    horizons: Sequence[int],
    modalities: Sequence[str],
    num_steps: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    device: str | torch.device = "cpu",
    keep: Iterable[int] = (),
    desc: str = "replay",
    imagine_kwargs: dict[str, Any] | None = None,
    stop_after: Mapping[str, int | None] | None = None,
    video: Any | None = None,
    progress: bool = True,
    riders: Mapping[str, Any] | None = None,
) -> dict[str, StartRecord]:
    """Roll ``model`` out from every start with the recorded actions and keep its per-start values
    at ``horizons`` (see ``imagine_rollout`` for ``num_steps``, ``imagine_kwargs`` and
    ``stop_after``); a start's rollout stops at its last future step. ``video``: the video-object
    scorer (``eval_video.VideoScorer``) for dreamed frames, or None. ``keep``: indices into
    ``starts`` whose predictions are kept (for videos). ``riders``: name -> a baseline that follows
    the model's dreamed state (``GeometricBaseline.follow``), rolled out in the same pass.

    Returns the records: ``"model"``, then one per rider."""
    horizons = sorted(int(h) for h in horizons)
    H = max(horizons)
    riders = dict(riders or {})
    recs = {name: StartRecord(horizons, len(starts)) for name in ("model", *riders)}
    keep = set(keep)
    kept: dict[int, dict[str, list]] = {}
    gen = torch.Generator(device=device).manual_seed(int(seed))
    truth_keys = [k for k in ("ego_depth", "motion", "partner_motion") if k in episodes[0].obs and k not in modalities]
    fut_keys = [*modalities, *truth_keys, *(["props"] if "props" not in modalities and "props" in episodes[0].obs else [])]
    from tqdm.auto import tqdm

    total = sum(min(H, max(s.length for s in starts[i : i + batch_size])) for i in range(0, len(starts), batch_size))
    bar = tqdm(total=total, desc=desc, unit="step", leave=False, disable=not progress)
    with torch.no_grad():
        for i in range(0, len(starts), batch_size):
            chunk = sorted(starts[i : i + batch_size], key=lambda s: -s.length)
            if [s.length for s in chunk] != [s.length for s in starts[i : i + batch_size]]:
                raise ValueError("evaluate_replay needs the starts sorted longest rollout first (as sample_starts returns them)")
            steps = min(H, chunk[0].length)
            active = [sum(s.length >= h for s in chunk) for h in range(1, steps + 1)]
            ctx, acts, fut, valid = _batch(episodes, chunk, context, steps, fut_keys, device)
            rows = np.arange(i, i + len(chunk))
            shown = [j for j in range(len(chunk)) if i + j in keep]
            rctx = {name: dict(ctx) | r.scene_memory(ctx) for name, r in riders.items()}
            colours = video.colours([episodes[s.episode].room_seed for s in chunk]) if video is not None else None

            def on_step(h: int, pred: dict[str, torch.Tensor]) -> None:
                n = next(iter(pred.values())).shape[0]
                real = {k: v[:n, h - 1] for k, v in fut.items()} | ({} if colours is None else {"prop_colours": colours[:n]})
                scored = h in horizons
                if scored:
                    _score(recs["model"], horizons.index(h), rows[:n], pred, real, valid[:n, h - 1], video)
                for name, r in riders.items():
                    rc = _take(rctx[name], n)
                    rp = r.follow(rc, pred, list(pred))
                    for m in rp:
                        if m in rc and m not in ("reward", "terminated"):
                            rc[m] = torch.cat((rc[m][:, 1:], rp[m][:, None]), 1)
                    rctx[name] = rc
                    if scored:
                        _score(recs[name], horizons.index(h), rows[:n], rp, real, valid[:n, h - 1], video)
                for j in shown:
                    for k in modalities:
                        if k in pred and j < n:
                            kept.setdefault(i + j, {}).setdefault(k, []).append(pred[k][j].cpu().numpy())
                bar.update(1)

            imagine_rollout(model, ctx, acts, steps, modalities, num_steps, gen, on_step, imagine_kwargs, stop_after, active)
    bar.close()
    recs["model"].kept = {s: {k: np.stack(v) for k, v in d.items()} for s, d in kept.items()}
    return recs


def _score(
    rec: StartRecord, j: int, rows: np.ndarray, pred: dict[str, torch.Tensor], real: dict[str, torch.Tensor], mask: torch.Tensor, video: Any
) -> None:
    """Put the values of one predicted step (the batch's starts ``rows``; ``mask``: those that reach it)."""
    if not bool(mask.any()):
        return
    m = mask.cpu().numpy().astype(bool)
    p = {k: v[mask] for k, v in pred.items() if k in real}
    r = {k: v[mask] for k, v in real.items()}
    for name, v in per_sample_metrics(p, r).items():
        rec.put(name, rows[m], j, v)
    if "props" in p:
        rec.put("props", rows[m], j, p["props"].float())
    if video is not None and "ego_rgb" in p:
        for name, v in video.score(p["ego_rgb"], r).items():
            rec.put(name, rows[m], j, v)
