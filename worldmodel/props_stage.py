"""The props network's rollout stage: the last part of a ``train-wm`` run of a ``props_dynamics`` model.

In the main steps the props network learns one step at a time (and from a few steps the state
prior dreamed). One step ahead it gets most of a push: with the recorded bodies it predicts 0.85
of the simulator's one-step displacement on held-out push episodes. Dreamed for 16 steps, the
errors compound: the prop falls behind the hand, the hand then overlaps it in a way no recording
shows, and the network stops pushing (0.46 of the simulator's displacement over 16 steps).

So after the main steps the props network alone trains on its own rollouts: from the recorded
props at a window's first two steps it dreams ``props_rollout_horizon`` steps under the recorded
bodies of both agents, and the Huber loss of every dreamed position against the recorded one
(in 2 cm units) is backpropagated through the whole rollout. Half of each batch of
``props_rollout_batch`` windows holds a prop the simulator moved more than ``MOVED_M``
horizontally (pushes are rare: most windows are of props at rest, which must stay put). Adam at
``props_rollout_lr`` with a cosine decay to 0 over ``props_rollout_steps`` steps, gradient
clipping at 1; the feature statistics stay those of the main steps. The stage starts from the
EMA weights of the props network (what ships) and its result replaces them and the raw weights.
Its batches are a pure function of (seed, step). A run killed during the stage redoes the stage
from its start when re-run (it takes minutes; the main steps are not repeated).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import data as D
from .config import TrainingConfig

MOVED_M = 0.02  # a window whose props moved more than this (m, horizontally) is a push window
STAGE_KEYS = ("motion", "partner_motion", "props")


def rollout_props(
    net: Callable[[torch.Tensor], torch.Tensor], motion: torch.Tensor, partner: torch.Tensor, props: torch.Tensor, horizon: int
) -> torch.Tensor:
    """Props dreamed by ``net`` (the props network on features, 2 mm units) for ``horizon`` steps
    from (B, 2 + horizon, ...) windows: the recorded props at steps 0 and 1, then the recorded
    bodies of every step. Returns the dreamed props of steps 2 .. horizon + 1, (B, horizon, 4, 3)."""
    prev, last = props[:, 0], props[:, 1]
    out = []
    for t in range(2, 2 + horizon):
        f = D.props_features(motion[:, t - 1], motion[:, t], partner[:, t], prev, last)
        d = net(f) / D.PROP_STEP_SCALE
        nxt = last + D.from_heading(d, D.yaw_of_quat(motion[:, t - 1, D.ROOT_QUAT]))
        prev, last = last, nxt
        out.append(nxt)
    return torch.stack(out, 1)


def _moved(ds: Any) -> np.ndarray:
    """Which windows of ``ds`` hold a prop that moved more than ``MOVED_M`` horizontally."""
    out = np.zeros(len(ds), dtype=bool)
    for i in range(len(ds)):
        p = ds[i]["props"]
        out[i] = bool((p[-1, :, :2] - p[1, :, :2]).norm(dim=-1).max() > MOVED_M)
    return out


def _batch(ds: Any, moved: np.ndarray, n: int, g: np.random.Generator) -> dict[str, torch.Tensor]:
    push, rest = np.flatnonzero(moved), np.flatnonzero(~moved)
    k = n // 2 if len(push) and len(rest) else (n if len(push) else 0)
    idx = np.concatenate([push[g.integers(0, len(push), k)] if k else [], rest[g.integers(0, len(rest), n - k)] if n - k else []])
    items = [ds[int(i)] for i in idx]
    return {key: torch.stack([it[key] for it in items]).float() for key in STAGE_KEYS}


@torch.no_grad()
def rollout_score(
    net: Callable[[torch.Tensor], torch.Tensor], ds: Any, horizon: int, device: Any, threshold: float = 0.05
) -> dict[str, Any]:
    """How far ``net``'s props rollouts under the recorded bodies carry the props the simulator
    moved more than ``threshold`` m over the whole window (windows of ``ds``, every 4th start):
    the ratio of mean dreamed to recorded displacement, their Pearson correlation and the count."""
    real, dream = [], []
    for lo in range(0, len(ds), 4 * 256):
        items = [ds[i] for i in range(lo, min(len(ds), lo + 4 * 256), 4)]
        b = {k: torch.stack([it[k] for it in items]).float().to(device) for k in STAGE_KEYS}
        out = rollout_props(net, b["motion"], b["partner_motion"], b["props"], horizon)
        real.append((b["props"][:, -1, :, :2] - b["props"][:, 1, :, :2]).norm(dim=-1).flatten().cpu())
        dream.append((out[:, -1, :, :2] - b["props"][:, 1, :, :2]).norm(dim=-1).flatten().cpu())
    r, d = (torch.cat(real), torch.cat(dream)) if real else (torch.zeros(0), torch.zeros(0))
    k = r > threshold
    n = int(k.sum())
    corr = float(np.corrcoef(r[k].numpy(), d[k].numpy())[0, 1]) if n > 2 else None
    return {"n_moved": n, "ratio": float(d[k].mean() / r[k].mean()) if n else None, "corr": corr}


def train_props_rollouts(
    model: Any,
    ema_shadow: dict[str, torch.Tensor],
    windows: Any,
    tc: TrainingConfig,
    log: Callable[[dict], None],
    heldout: Any = None,
) -> dict[str, Any]:
    """Run the stage on ``model`` (a ``props_dynamics`` ``WorldModel``) with windows from the
    source ``windows``; writes the trained props network into ``model`` and ``ema_shadow``.
    ``log`` gets one dict per logged step. Returns the stage's summary, with ``rollout_score``
    on the ``heldout`` source's windows before and after the stage where one is given."""
    H, S = int(tc.props_rollout_horizon), int(tc.props_rollout_steps)
    ds = windows.windows(2 + H, STAGE_KEYS)
    if len(ds) == 0:
        raise ValueError(f"{windows.name}: no episode holds {2 + H} steps for the props rollout stage (props_rollout_horizon={H})")
    held = heldout.windows(2 + H, STAGE_KEYS) if heldout is not None else None
    t0 = time.time()
    moved = _moved(ds)
    dev = model.device
    net = copy.deepcopy(model.props_net)
    net.load_state_dict({k.removeprefix("props_net."): v for k, v in ema_shadow.items() if k.startswith("props_net.")})
    net.to(dev).train()
    mean, std = model.props_feat_mean.to(dev), model.props_feat_std.to(dev)

    def fn(f: torch.Tensor) -> torch.Tensor:
        return net((f - mean) / std)

    before = rollout_score(fn, held, H, dev) if held is not None and len(held) else None
    opt = torch.optim.Adam(net.parameters(), lr=float(tc.props_rollout_lr))
    g = np.random.default_rng(int(tc.seed) * 9_973 + 17)
    losses = []
    for step in range(S):
        for group in opt.param_groups:
            group["lr"] = float(tc.props_rollout_lr) * 0.5 * (1.0 + math.cos(math.pi * step / S))
        b = {k: v.to(dev) for k, v in _batch(ds, moved, int(tc.props_rollout_batch), g).items()}
        dream = rollout_props(fn, b["motion"], b["partner_motion"], b["props"], H)
        err = (dream - b["props"][:, 2:]) * (D.PROP_STEP_SCALE / 10.0)  # 2 cm units
        loss = F.smooth_l1_loss(err, torch.zeros_like(err))
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"props rollout stage: the loss is {float(loss)} at stage step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 100 == 0 or step + 1 == S:
            log({"props_rollout_step": step + 1, "props_rollout_loss": float(np.mean(losses[-100:]))})
    net.eval()
    after = rollout_score(fn, held, H, dev) if before is not None else None
    trained = {f"props_net.{k}": v.detach() for k, v in net.state_dict().items()}
    model.load_state_dict(trained, strict=False)
    for k, v in trained.items():
        ema_shadow[k].copy_(v.to(ema_shadow[k].device, ema_shadow[k].dtype))
    return {
        "steps": S,
        "horizon": H,
        "windows": len(ds),
        "push_windows": int(moved.sum()),
        "final_loss": float(np.mean(losses[-100:])) if losses else None,
        "heldout_rollouts": {"before": before, "after": after} if before is not None else None,
        "seconds": round(time.time() - t0, 1),
    }
