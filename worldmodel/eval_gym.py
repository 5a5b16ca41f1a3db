"""``dreamgym eval-wm`` for a Gymnasium env's world model (``worldmodel.vector``), beside strong baselines.

    dreamgym eval-wm checkpoint=<train-wm run>/final data=<collect env=<id> dataset> out=<dir> [fit_data=...]

**Starts.** ``starts_per_task`` (row, episode) pairs drawn uniformly, without replacement, from
every row of the ``split`` episodes that has K rows of context (K = the model's context) and one
step after it, so long episodes are not favoured per episode and short ones are not left out.
From each start every arm dreams open loop under the recorded actions; horizon h is scored on the
starts whose episode still has h steps after the context (``n`` per horizon).

**Arms**, all run here on the same starts:

- ``sampler``: the model with its own sampler (``sampler.json``: what the dream env runs);
- ``mean``: its conditional mean (one denoising step from zero noise);
- ``copy_last``: the last real observation (and frame) held; reward the last real one;
- ``constant_velocity`` (K >= 2, vector observations): the last change of the observation repeated;
- ``linear``: least-squares linear dynamics fitted here on ``fit_data`` (default: the train
  split of ``data``): the normalised change of the observation from the K context rows and actions,
  and the reward from them and the next observation (ridge 1e-3), rolled out like the model;
- ``mlp``: the same two regressions by MLPs trained by MSE (``_MLP``): a deterministic dynamics
  model of the kind MBPO's and PETS's ensembles are made of, on the same windows.

The linear baseline predicts no termination; the MLP has a termination head.

**Metrics** per horizon (95 % bootstrap intervals over starts, ``eval_stats``): ``obs_nrmse``
(RMS over dimensions of the error divided by the training data's spread per dimension; 1 is an
error as large as the data's own variation), ``frame_psnr_db`` for an image key, ``reward_abs_error``
of step h, ``return_abs_error`` (the summed reward of steps 1..h against the real sum, what a
learner's value is built from) and ``termination_f1`` (pooled over starts: whether the episode
ended by step h). A cell is won only against the strongest baseline at that metric and horizon,
by a paired bootstrap test. ``best_of``: ``best_of`` samples of the sampler from each of
``best_of_starts`` of the starts (a seeded random subset): the best sample's and a typical
sample's ``obs_nrmse`` and the spread across samples (RMS over dimensions of their standard
deviation, in the same units).

Writes ``<out>/eval.json`` and ``<out>/EVAL.md``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .eval_stats import fscore_of, interval, mean_of, paired_test

BASELINES = ("copy_last", "constant_velocity", "linear", "mlp")
MODEL_ARMS = ("sampler", "mean")
LOWER_BETTER = {"obs_nrmse": True, "frame_psnr_db": False, "reward_abs_error": True, "return_abs_error": True, "termination_f1": False}
RIDGE = 1e-3
MLP_WIDTH = 256
MAX_FIT_WINDOWS = 200_000
CAP = 1e3  # an error beyond this (or not finite) is a diverged dream, counted at this value


def load_gym_episodes(dirs: str | Sequence[str], split: str, keys: Sequence[str], max_episodes: int | None = None) -> list[Any]:
    """The ``split`` episodes of ``collect env=<id>`` datasets as ``rollouts.dataset.Episode``s."""
    from dreamgym.rollouts.dataset import Manifest, is_gym, read_episode
    from dreamgym.rollouts.episodes import index_dataset

    dirs = [dirs] if isinstance(dirs, (str, Path)) else list(dirs)
    for d in dirs:
        if not is_gym(Manifest.load(d).data["env"]):
            raise ValueError(f"{d} holds the room's episodes; a Gymnasium env's world model is scored on `collect env=<id>` datasets")
    index = index_dataset(dirs, split, verify="sha256", max_episodes=max_episodes)
    return [read_episode(r.shard, r.group, keys) for r in index.episodes]


def draw_starts(lengths: Sequence[int], K: int, n: int | None, seed: int) -> np.ndarray:
    """(n, 2) (episode, row) pairs, uniform over every row with K context rows and a next step."""
    rows = [(e, s) for e, T in enumerate(lengths) for s in range(0, int(T) - K + 1)]
    if not rows:
        raise ValueError(f"no episode has the {K + 1} steps a start needs (K = {K} context rows and one step)")
    rows = np.asarray(rows, np.int64)
    if n is not None and n < len(rows):
        rows = rows[np.sort(np.random.default_rng(seed).choice(len(rows), n, replace=False))]
    return rows


def _fit_windows(model: Any, episodes: list[Any], max_windows: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Every (K + 1)-step window of ``episodes`` as the baselines' training rows: features (N, F)
    (``_features``), the normalised change (N, D), the next observation normalised (N, D), the
    reward (N,) and the termination flag (N,), float64; at most ``max_windows`` (a seeded subset)."""
    K = model.config.context
    X, Y, R, E = [], [], [], []
    for ep in episodes:
        obs, act = _flat_obs(model, ep), _flat_actions(model, ep)
        n = act.shape[0] - K + 1  # windows s = 0 .. T - K
        if n < 1:
            continue
        X.append(_features(model, torch.stack([obs[k : k + n] for k in range(K)], 1), torch.stack([act[k : k + n] for k in range(K)], 1)))
        Y.append(((obs[K : K + n] - obs[K - 1 : K - 1 + n]) - model.delta_mean) / model.delta_std)
        R.append(torch.as_tensor(np.asarray(ep.rewards[K - 1 : K - 1 + n], np.float64)))
        E.append(torch.as_tensor(np.asarray(ep.terminations[K - 1 : K - 1 + n], np.float64)))
    if not X:
        raise ValueError(f"fit_data has no window of {K + 1} steps to fit the baselines on")
    X, Y, R, E = torch.cat(X).double(), torch.cat(Y).double(), torch.cat(R), torch.cat(E)
    if len(X) > max_windows:
        keep = torch.from_numpy(np.random.default_rng(seed).choice(len(X), max_windows, replace=False))
        X, Y, R, E = X[keep], Y[keep], R[keep], E[keep]
    last = X[:, (K - 1) * model.obs_dim : K * model.obs_dim]  # normalised last observation
    nxt = last + (Y * model.delta_std.double() + model.delta_mean.double()) / model.obs_std.double()
    return X, Y, nxt, R, E


def _features(model: Any, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """(N, K, D) observations and (N, K, A) encoded actions -> normalised features (N, K (D + A) + 1)."""
    o = ((obs - model.obs_mean) / model.obs_std).flatten(1)
    a = ((act - model.act_mean) / model.act_std).flatten(1)
    return torch.cat([o, a, torch.ones(len(o), 1)], 1)


class _Baseline:
    """A fitted baseline rolled out like the model: ``step(obs (B, K, D), actions (B, K, A)) ->
    (next obs (B, D), reward (B,), terminated (B,) bool)``."""

    def __init__(self, model: Any):
        self.model = model

    def predict(self, x: torch.Tensor) -> torch.Tensor:  # normalised change from features
        raise NotImplementedError

    def reward(self, x: torch.Tensor, nxt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # reward, terminated
        raise NotImplementedError

    @torch.no_grad()
    def step(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.model
        x = _features(m, obs, act).double()
        nxt = obs[:, -1] + (self.predict(x).float() * m.delta_std + m.delta_mean)
        nxt = torch.maximum(torch.minimum(nxt, m.obs_high), m.obs_low)
        r, t = self.reward(x, ((nxt - m.obs_mean) / m.obs_std).double())
        return nxt, r.float(), t


class _Linear(_Baseline):
    """Least-squares linear dynamics and reward (ridge ``RIDGE``); it predicts no termination."""

    def __init__(self, model: Any, rows: tuple):
        super().__init__(model)
        X, Y, nxt, R, _ = rows
        self.W = _ridge(X, Y)
        self.V = _ridge(torch.cat([X, nxt], 1), R[:, None])

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W

    def reward(self, x: torch.Tensor, nxt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.cat([x, nxt], 1) @ self.V)[:, 0], torch.zeros(len(x), dtype=torch.bool)


class _MLP(_Baseline):
    """A deterministic regression network: what a user of an MLP dynamics model (MBPO's, PETS's
    members) would set beside a diffusion model. Two MLPs (``MLP_WIDTH``, two hidden SiLU layers):
    the change from the features, and the reward and the termination logit from them and the next
    observation, trained by MSE (and BCE for termination, which ends a step at probability 0.5) with Adam for ``steps`` steps of 256 windows (seeded; eval-wm's ``mlp_steps``)."""

    def __init__(self, model: Any, rows: tuple, seed: int, steps: int = 10_000):
        super().__init__(model)
        X, Y, nxt, R, E = (t.float() for t in rows)
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        F_, D = X.shape[1], Y.shape[1]
        self.rmean, self.rstd = R.mean(), R.std().clamp_min(1e-6)
        self.f = nn.Sequential(nn.Linear(F_, MLP_WIDTH), nn.SiLU(), nn.Linear(MLP_WIDTH, MLP_WIDTH), nn.SiLU(), nn.Linear(MLP_WIDTH, D))
        self.r = nn.Sequential(nn.Linear(F_ + D, MLP_WIDTH), nn.SiLU(), nn.Linear(MLP_WIDTH, MLP_WIDTH), nn.SiLU(), nn.Linear(MLP_WIDTH, 2))
        opt = torch.optim.Adam([*self.f.parameters(), *self.r.parameters()], lr=1e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
        Rn = (R - self.rmean) / self.rstd
        with torch.enable_grad():
            for _ in range(steps):
                i = torch.randint(0, len(X), (256,), generator=g)
                rt = self.r(torch.cat([X[i], nxt[i]], 1))
                loss = (self.f(X[i]) - Y[i]).pow(2).mean() + (rt[:, 0] - Rn[i]).pow(2).mean()
                loss = loss + F.binary_cross_entropy_with_logits(rt[:, 1], E[i])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        self.f.eval()
        self.r.eval()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x.float()).double()

    def reward(self, x: torch.Tensor, nxt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rt = self.r(torch.cat([x, nxt], 1).float())
        return (rt[:, 0] * self.rstd + self.rmean).double(), rt[:, 1] > 0


def _ridge(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    A = X.T @ X + RIDGE * len(X) * torch.eye(X.shape[1], dtype=X.dtype)
    return torch.linalg.solve(A, X.T @ Y)


def _flat_obs(model: Any, ep: Any) -> torch.Tensor:
    return model.flatten_obs({k: torch.from_numpy(np.asarray(ep.observations[k])) for k in ep.observations}, 1)


def _flat_actions(model: Any, ep: Any) -> torch.Tensor:
    return model.encode_actions(torch.from_numpy(np.asarray(ep.actions)), 1)


def _gather(ep_rows: list[np.ndarray], starts: np.ndarray, offset: int, H: int, limit: Sequence[int]) -> torch.Tensor:
    """(n, H, ...) rows ``s + offset + j`` of each start's episode (clamped to its last row)."""
    out = [torch.from_numpy(np.asarray(ep_rows[e][np.minimum(s + offset + np.arange(H), limit[e])])) for e, s in starts]
    return torch.stack(out)


def _rollout(
    model: Any, episodes: list[Any], starts: np.ndarray, H: int, arm: str, seed: int, baseline: _Baseline | None, batch: int
) -> dict:
    """Every arm's open-loop dream of H steps from each start: ``obs`` (n, H, D), ``frames``
    (n, H, h, w, c) uint8 or None, ``reward`` (n, H), ``terminated`` (n, H) bool."""
    K, img = model.config.context, (model.image.key if model.image is not None else None)
    keys = [p.key for p in model.all_parts]
    out: dict[str, list[torch.Tensor]] = {"obs": [], "frames": [], "reward": [], "terminated": []}
    gen = torch.Generator().manual_seed(seed)
    for i in range(0, len(starts), batch):
        st = starts[i : i + batch]
        T = [episodes[e].steps for e in range(len(episodes))]
        ctx = {k: _gather([ep.observations[k] for ep in episodes], st, 0, K, T) for k in keys}
        acts = _gather([ep.actions for ep in episodes], st, 0, K + H - 1, [t - 1 for t in T])
        flat_ctx = model.flatten_obs(ctx, 2)
        obs, frames, rew, term = [], [], [], []
        for j in range(H):
            a = acts[:, j : j + K]
            if arm in MODEL_ARMS:
                kw = {"num_steps": 1, "init_noise": 0.0} if arm == "mean" else {}
                p = model.imagine(ctx, a, generator=gen, **kw)
                nxt, r, t = model.flatten_obs(p, 1), p["reward"], p["terminated"]
                ctx = {k: torch.cat([ctx[k][:, 1:], p[k][:, None].to(ctx[k].dtype)], 1) for k in keys}
                f = p[img] if img else None
            else:
                assert baseline is not None
                nxt, r, t = baseline.step(flat_ctx, model.encode_actions(a, 2))
                f = None
            flat_ctx = torch.cat([flat_ctx[:, 1:], nxt[:, None]], 1)
            obs.append(nxt)
            rew.append(r.float())
            term.append(t.bool())
            if f is not None:
                frames.append(f)
        out["obs"].append(torch.stack(obs, 1))
        out["reward"].append(torch.stack(rew, 1))
        out["terminated"].append(torch.stack(term, 1))
        if frames:
            out["frames"].append(torch.stack(frames, 1))
    return {k: (torch.cat(v) if v else None) for k, v in out.items()}


def _held(model: Any, episodes: list[Any], starts: np.ndarray, H: int, arm: str) -> dict:
    """``copy_last`` / ``constant_velocity``: closed forms from the real context."""
    K = model.config.context
    n = len(starts)
    flat = [_flat_obs(model, ep) for ep in episodes]
    last = torch.stack([flat[e][s + K - 1] for e, s in starts])
    steps = torch.arange(1, H + 1, dtype=torch.float32)[None, :, None]
    if arm == "constant_velocity":
        prev = torch.stack([flat[e][s + K - 2] for e, s in starts])
        obs = torch.maximum(torch.minimum(last[:, None] + steps * (last - prev)[:, None], model.obs_high), model.obs_low)
    else:
        obs = last[:, None].expand(n, H, last.shape[-1])
    r0 = torch.tensor([float(episodes[e].rewards[s + K - 2]) if s + K >= 2 else float(model.rew_mean[0]) for e, s in starts])
    frames = None
    if model.image is not None and arm == "copy_last":  # a frame has no velocity here: copy_last holds it
        k = model.image.key
        frames = torch.stack([torch.from_numpy(np.asarray(episodes[e].observations[k][s + K - 1])) for e, s in starts])[:, None]
        frames = frames.expand(n, H, *frames.shape[2:])
    return {"obs": obs, "frames": frames, "reward": r0[:, None].expand(n, H), "terminated": torch.zeros(n, H, dtype=torch.bool)}


def _per_start(model: Any, episodes: list[Any], flat: list[torch.Tensor], starts: np.ndarray, pred: dict, h: int) -> dict[str, np.ndarray]:
    """Per start, every metric at horizon h (NaN where it is undefined).

    The state metrics (``obs_nrmse``, ``frame_psnr_db``, ``reward_abs_error``) need step h to exist:
    the episode has h steps after the context. The episode metrics (``return_abs_error``,
    ``termination_f1``) also count a start whose episode terminated before step h: the real return
    is summed up to its termination, the dreamed one up to the dream's own first termination (or
    step h). A start whose recording stops (truncated, cut) before step h without terminating has
    neither. A dream that left the finite numbers counts as an error of ``CAP``."""
    K, j = model.config.context, h - 1
    n = len(starts)
    out = {m: np.full(n, np.nan) for m in ("obs_nrmse", "frame_psnr_db", "reward_abs_error", "return_abs_error")}
    tp, fp, fn, ok = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n, bool)
    for i, (e, s) in enumerate(starts):
        ep = episodes[e]
        t0 = s + K - 1  # the row of the first dreamed step's action
        left = ep.steps - t0
        ends = np.flatnonzero(np.asarray(ep.terminations[t0 : t0 + min(h, left)]))
        real_end = int(ends[0]) if len(ends) else None  # the step index (0-based) of the real termination
        if real_end is None and left < h:
            continue
        dream_ends = np.flatnonzero(pred["terminated"][i, :h].numpy())
        dream_end = int(dream_ends[0]) if len(dream_ends) else None
        r = np.asarray(ep.rewards[t0 : t0 + (h if real_end is None else real_end + 1)], np.float64)
        pr = pred["reward"][i, : (h if dream_end is None else dream_end + 1)].double().numpy()
        out["return_abs_error"][i] = _capped(abs(pr.sum() - r.sum()))
        tp[i], fp[i], fn[i], ok[i] = (
            (real_end is not None) and (dream_end is not None),
            real_end is None and dream_end is not None,
            real_end is not None and dream_end is None,
            True,
        )
        if left < h:
            continue
        out["reward_abs_error"][i] = _capped(abs(float(pred["reward"][i, j]) - float(ep.rewards[t0 + j])))
        if model.obs_dim:
            real = flat[e][s + K + j]
            out["obs_nrmse"][i] = _capped(float((((pred["obs"][i, j] - real) / model.obs_std) ** 2).mean().sqrt()))
        if pred["frames"] is not None:
            real_f = torch.from_numpy(np.asarray(ep.observations[model.image.key][s + K + j])).float()
            mse = float((pred["frames"][i, j].float() - real_f).pow(2).mean())
            out["frame_psnr_db"][i] = 10 * np.log10(255.0**2 / max(mse, 1e-10))
    out["termination_f1"] = (tp, fp, fn, ok)
    return out


def _capped(x: float) -> float:
    return float(min(x, CAP)) if np.isfinite(x) else CAP


def _statistic(values: Any):
    if isinstance(values, tuple):  # pooled F-score counts over the valid starts
        tp, fp, fn, ok = values
        return fscore_of(tp[ok], fp[ok], fn[ok]), int(ok.sum())
    ok = np.isfinite(values)
    return mean_of(values[ok]), int(ok.sum())


def evaluate_gym(model: Any, episodes: list[Any], fit_episodes: list[Any], out: str | Path, *, horizons: Sequence[int] = (1, 4, 16, 64),
                 starts: int | None = 128, best_of: int = 8, best_of_starts: int = 32, resamples: int = 1000, batch_size: int = 128, mlp_steps: int = 10_000,
                 seed: int = 0, meta: dict | None = None, progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Score ``model`` on ``episodes`` beside the baselines (see the module docstring); writes and returns the result."""
    tic = time.time()
    K, H = model.config.context, max(int(h) for h in horizons)
    model.eval()
    st = draw_starts([ep.steps for ep in episodes], K, starts, seed)
    arms = list(MODEL_ARMS) + ["copy_last"] + (["constant_velocity"] if K >= 2 and model.obs_dim else [])
    fitted: dict[str, _Baseline] = {}
    rows = None
    if model.obs_dim:
        rows = _fit_windows(model, fit_episodes, MAX_FIT_WINDOWS, seed)
        fitted = {"linear": _Linear(model, rows), "mlp": _MLP(model, rows, seed, mlp_steps)}
        arms += list(fitted)
    flat = [_flat_obs(model, ep) for ep in episodes]
    preds = {}
    for arm in arms:
        if arm in ("copy_last", "constant_velocity"):
            preds[arm] = _held(model, episodes, st, H, arm)
        else:
            preds[arm] = _rollout(model, episodes, st, H, arm, seed, fitted.get(arm), batch_size)
        if progress:
            print(f"eval-wm: {arm} dreamed ({time.time() - tic:.0f} s)", flush=True)
    metrics = [
        m for m in LOWER_BETTER if not (m == "obs_nrmse" and not model.obs_dim) and not (m == "frame_psnr_db" and model.image is None)
    ]
    table: dict[str, dict[str, list]] = {m: {a: [] for a in arms} for m in metrics}
    strongest: dict[str, list] = {m: [] for m in metrics}
    won: dict[str, dict[str, list]] = {m: {a: [] for a in MODEL_ARMS} for m in metrics}
    for h in horizons:
        per = {a: _per_start(model, episodes, flat, st, preds[a], int(h)) for a in arms}
        for m in metrics:
            stats = {a: _statistic(per[a][m]) for a in arms}
            for a in arms:
                table[m][a].append(interval(stats[a][0], stats[a][1], resamples, seed + int(h)))
            bases = [(a, table[m][a][-1]["value"]) for a in arms if a in BASELINES and table[m][a][-1]["value"] is not None]
            if not bases:
                strongest[m].append(None)
                for a in MODEL_ARMS:
                    won[m][a].append(None)
                continue
            best = (min if LOWER_BETTER[m] else max)(bases, key=lambda t: t[1])
            strongest[m].append({"arm": best[0], "value": best[1]})
            for a in MODEL_ARMS:
                sm, sb = _statistic(per[a][m])[0], _statistic(per[best[0]][m])[0]
                n = stats[a][1]
                won[m][a].append(paired_test(sm, sb, n, not LOWER_BETTER[m], resamples, seed + int(h)) if n == stats[best[0]][1] else None)
    result = {
        "env_id": model.config.env_id,
        **(meta or {}),
        "context": K,
        "episodes": len(episodes),
        "starts": int(len(st)),
        "horizons": [int(h) for h in horizons],
        "sampler": model.sampler.to_dict(),
        "baseline_fit_windows": None if rows is None else len(rows[0]),
        "mlp_steps": int(mlp_steps),
        "metrics": table,
        "strongest_baseline": strongest,
        "paired": won,
        "best_of": _best_of(model, episodes, flat, _subset(st, int(best_of_starts), seed), horizons, best_of, seed, resamples)
        if model.obs_dim and best_of_starts
        else None,
        "wall_s": time.time() - tic,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    (out / "EVAL.md").write_text(markdown(result))
    return result


def _subset(starts: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` of the starts, drawn at random (seeded), not the first ``n`` in collection order."""
    if n >= len(starts):
        return starts
    return starts[np.sort(np.random.default_rng([seed, 1]).choice(len(starts), n, replace=False))]


def _best_of(
    model: Any,
    episodes: list[Any],
    flat: list[torch.Tensor],
    starts: np.ndarray,
    horizons: Sequence[int],
    N: int,
    seed: int,
    resamples: int,
) -> dict:
    """Best-of-N and typical-sample ``obs_nrmse`` and the spread across N samples, per horizon."""
    K, H = model.config.context, max(int(h) for h in horizons)
    reps = np.repeat(starts, N, axis=0)
    pred = _rollout(model, episodes, reps, H, "sampler", seed + 1, None, 256)["obs"].reshape(len(starts), N, H, -1)
    res: dict[str, list] = {"best_obs_nrmse": [], "sample_obs_nrmse": [], "spread": []}
    for h in horizons:
        j = int(h) - 1
        best, typ, spread = [], [], []
        for i, (e, s) in enumerate(starts):
            ep = episodes[e]
            if s + K - 1 + int(h) > ep.steps:
                continue
            real = flat[e][s + K + j]
            err = (((pred[i, :, j] - real) / model.obs_std) ** 2).mean(-1).sqrt()
            best.append(float(err.min()))
            typ.append(float(err.mean()))
            spread.append(float(((pred[i, :, j] / model.obs_std).std(0) ** 2).mean().sqrt()))
        for name, v in (("best_obs_nrmse", best), ("sample_obs_nrmse", typ), ("spread", spread)):
            res[name].append(interval(mean_of(np.asarray(v)), len(v), resamples, seed + int(h)))
    return {"samples": int(N), "starts": int(len(starts)), **res}


def _cell(c: dict | None) -> str:
    if not c or c.get("value") is None:
        return "–"
    lo, hi = c["ci"]
    ci = "" if lo is None else f" [{lo:.3g}, {hi:.3g}]"
    return f"{c['value']:.3g}{ci}"


def markdown(result: dict) -> str:
    """The result as tables: one row per arm and metric, one column per horizon."""
    hs = result["horizons"]
    lines = [
        f"# {result['env_id']}: the world model against the baselines (`dreamgym eval-wm`)",
        "",
        f"{result['starts']} starts drawn uniformly from {result['episodes']} episodes; K = {result['context']} context rows; "
        "values with 95 % bootstrap intervals; ✓: better than the strongest baseline by a paired bootstrap test at 95 %.",
        "",
        "| metric | arm | " + " | ".join(f"h = {h}" for h in hs) + " |",
        "|---|---|" + "---|" * len(hs),
    ]
    for m, arms in result["metrics"].items():
        arrow = "↓" if LOWER_BETTER[m] else "↑"
        for k, (a, cells) in enumerate(arms.items()):
            marks = []
            for j, c in enumerate(cells):
                w = result["paired"][m].get(a, [None] * len(hs))[j] if a in MODEL_ARMS else None
                marks.append(("**✓** " if w and w.get("won") else "") + _cell(c))
            lines.append(f"| {m + ' ' + arrow if k == 0 else ''} | {a} | " + " | ".join(marks) + " |")
    first = next(iter(result["metrics"]))
    for label, m in ((f"starts scored ({first}, reward)", first), ("starts scored (return, termination)", "return_abs_error")):
        lines.append(f"| {label} | | " + " | ".join(str(c["n"]) for c in result["metrics"][m]["sampler"]) + " |")
    bo = result.get("best_of")
    if bo:
        lines += ["", f"The sampler, {bo['samples']} samples from each of {bo['starts']} starts (obs_nrmse):", ""]
        lines += ["| | " + " | ".join(f"h = {h}" for h in hs) + " |", "|---|" + "---|" * len(hs)]
        for name in ("best_obs_nrmse", "sample_obs_nrmse", "spread"):
            lines.append(f"| {name} | " + " | ".join(_cell(c) for c in bo[name]) + " |")
    return "\n".join(lines) + "\n"


def run_gym(cfg: Any, checkpoint: str, data: Any) -> int:
    """``eval-wm`` on a vector world model: load, check, score, print the table."""
    from omegaconf import OmegaConf

    from .vector import VectorWorldModel

    try:
        from dreamgym.rollouts.dataset import Manifest

        model = VectorWorldModel.from_pretrained(checkpoint, device=cfg.device)
        fit = cfg.get("fit_data")
        fit = OmegaConf.to_container(fit, resolve=True) if OmegaConf.is_config(fit) else fit
        for d in ([data] if isinstance(data, str) else data) + ([] if fit is None else [fit] if isinstance(fit, str) else list(fit)):
            env = Manifest.load(d).data["env"]
            if env.get("env_id") != model.config.env_id:
                seen = env.get("env_id") or "the room"
                raise ValueError(f"{d} holds episodes of {seen}, but the world model dreams {model.config.env_id}")
        keys = [p.key for p in model.all_parts]
        episodes = load_gym_episodes(data, str(cfg.split), keys, cfg.get("max_episodes"))
        if not episodes:
            raise ValueError(f"data={data}: no episode in the {cfg.split} split (a dataset collected only for scoring: split=all)")
        fit_eps = load_gym_episodes(fit if fit is not None else data, "all" if fit is not None else "train", keys) if model.obs_dim else []
        if model.obs_dim and not fit_eps:
            raise ValueError(f"data={data} has no train split to fit the baselines on; give fit_data=<the world model's training data>")
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise SystemExit(f"dreamgym eval-wm: {e}") from None
    meta = {
        "checkpoint": checkpoint,
        "data": data,
        "split": str(cfg.split),
        "fit_data": fit if fit is not None else f"{data} (train split)",
    }
    result = evaluate_gym(
        model, episodes, fit_eps, cfg.out, horizons=list(cfg.horizons), starts=cfg.starts_per_task, best_of=int(cfg.best_of),
        best_of_starts=int(cfg.best_of_starts), resamples=int(cfg.resamples), batch_size=int(cfg.batch_size), mlp_steps=int(cfg.mlp_steps), seed=int(cfg.seed),
        meta=meta, progress=bool(cfg.progress),
    )  # fmt: skip
    print(markdown(result), flush=True)
    print(f"eval-wm: wrote {Path(cfg.out) / 'eval.json'} and EVAL.md ({result['wall_s']:.0f} s)", flush=True)
    return 0


__all__ = ["draw_starts", "evaluate_gym", "load_gym_episodes", "markdown", "run_gym"]
