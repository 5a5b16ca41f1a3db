"""eval-wm's generative check: several samples of the same dream, where the future is uncertain.

From each of a subset of starts, the model's sampler dreams ``best_of`` rollouts (different
noise, same context and actions). Per start and horizon:

- ``best_psnr_db``: the best sample's frame PSNR; ``sample_psnr_db``: the mean over samples
  (the error of one sample); ``frame_spread``: the per-pixel standard deviation across the samples
  (0..255, mean over pixels and channels): 0 for a sampler that ignores its noise;
- ``best_partner_mpjpe_mm``, ``sample_partner_mpjpe_mm`` and ``partner_spread_mm`` (the mean
  pairwise MPJPE between samples): the same for the partner's pose.

A sampler that differs where the future is uncertain and stays sharp has a best-of error well
under its single-sample error and under the conditional mean's, with a spread above 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import metrics as M
from .eval_replay import StartRecord, _batch, imagine_rollout

if TYPE_CHECKING:
    from .eval_episodes import Episode
    from .eval_tasks import Start

GENERATIVE_METRICS = (
    "best_psnr_db",
    "sample_psnr_db",
    "frame_spread",
    "best_partner_mpjpe_mm",
    "sample_partner_mpjpe_mm",
    "partner_spread_mm",
)


def pairwise_mpjpe_mm(motion: torch.Tensor) -> torch.Tensor:
    """(B,) mean MPJPE (mm) over the pairs of the N samples (B, N, 227) of each row."""
    B, N = motion.shape[:2]
    i, j = torch.triu_indices(N, N, 1)
    return M.mpjpe_mm(motion[:, i].reshape(-1, motion.shape[-1]), motion[:, j].reshape(-1, motion.shape[-1])).view(B, -1).mean(1)


def sample_values(pred: dict[str, torch.Tensor], real: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """The per-start values of one step from ``n`` samples per start: ``pred`` (B*n, ...) holds
    start b's samples in rows b*n .. b*n+n-1, ``real`` (B, ...)."""
    out = {}
    if "ego_rgb" in pred:
        rgb = pred["ego_rgb"]
        B = rgb.shape[0] // n
        psnr = M.psnr(rgb, real["ego_rgb"].repeat_interleave(n, 0)).view(B, n)
        out["best_psnr_db"], out["sample_psnr_db"] = psnr.max(1).values, psnr.mean(1)
        out["frame_spread"] = rgb.float().view(B, n, *rgb.shape[1:]).std(1, unbiased=False).flatten(1).mean(1)
    if "partner_motion" in pred:
        pm = pred["partner_motion"]
        B = pm.shape[0] // n
        err = M.mpjpe_mm(pm, real["partner_motion"].repeat_interleave(n, 0)).view(B, n)
        out["best_partner_mpjpe_mm"], out["sample_partner_mpjpe_mm"] = err.min(1).values, err.mean(1)
        out["partner_spread_mm"] = pairwise_mpjpe_mm(pm.view(B, n, -1)) if n > 1 else torch.zeros(B)
    return out


def best_of_n(
    model: Any,
    episodes: Sequence[Episode],
    starts: Sequence[Start],
    context: int,
    horizons: Sequence[int],
    modalities: Sequence[str],
    n: int,
    imagine_kwargs: dict[str, Any],
    stop_after: dict[str, int | None] | None,
    batch_size: int = 4,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> StartRecord:
    """``n`` sampled rollouts from each of ``starts`` (``batch_size`` starts, so ``batch_size * n``
    rollouts, at a time); the per-start ``GENERATIVE_METRICS`` at ``horizons``."""
    horizons = sorted(int(h) for h in horizons)
    H = max(horizons)
    rec = StartRecord(horizons, len(starts))
    gen = torch.Generator(device=device).manual_seed(int(seed))
    with torch.no_grad():
        for i in range(0, len(starts), batch_size):
            chunk = list(starts[i : i + batch_size])
            steps = min(H, max(s.length for s in chunk))
            ctx, acts, fut, valid = _batch(episodes, chunk, context, steps, modalities, device)
            ctx = {k: v.repeat_interleave(n, 0) for k, v in ctx.items()}
            rows = np.arange(i, i + len(chunk))

            def on_step(h: int, pred: dict[str, torch.Tensor]) -> None:
                if h not in horizons:
                    return
                b = next(iter(pred.values())).shape[0] // n  # the starts still rolling out
                m = valid[:b, h - 1].cpu().numpy().astype(bool)
                if not m.any():
                    return
                for name, v in sample_values(pred, {k: fut[k][:b, h - 1] for k in fut}, n).items():
                    rec.put(name, rows[:b][m], horizons.index(h), v[torch.as_tensor(m)])

            fh = (stop_after or {}).get("ego_rgb")
            # the grid is not scored here: dreamed as in the arms while frames are, not after
            stop = dict(stop_after or {}) | {"occupancy": min(x for x in (fh, (stop_after or {}).get("occupancy"), H) if x is not None)}
            active = [sum(s.length >= h for s in chunk) * n for h in range(1, steps + 1)]
            imagine_rollout(model, ctx, acts.repeat_interleave(n, 0), steps, modalities, None, gen, on_step, imagine_kwargs, stop, active)
    return rec


def choose_subset(num_starts: int, k: int, seed: int) -> np.ndarray:
    """``k`` of ``num_starts`` start indices (seeded, sorted); all when fewer."""
    if k >= num_starts:
        return np.arange(num_starts)
    return np.sort(np.random.default_rng([int(seed), 8]).choice(num_starts, size=int(k), replace=False))
