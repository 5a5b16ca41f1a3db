"""Fine-tuning a world model on in-memory episodes (the DIAMOND-style loop's world-model update)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch


def finetune_world_model(
    init: Any,
    episodes: Sequence[Mapping[str, torch.Tensor]],
    out: str | Path,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 3e-4,
    weight_decay: float = 0.01,
    grad_clip: float = 1.0,
    ema_decay: float = 0.99,
    noise: Mapping[str, float] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Fine-tune a world model (instance, checkpoint path, or None for the default) on in-memory episodes.

    One step is ``train-wm``'s step restricted to the state modalities (both U-Net branches absent):
    windows of K+1 rows drawn by ``batch_indices``, noise by ``draw_noise``, ``WorldModel.loss``,
    gradient clipping, AdamW, EMA. The normalisation statistics of ``init`` are kept. Saves the
    EMA weights to ``out`` (``save_pretrained``) and returns ``out``.
    """
    from tqdm.auto import tqdm

    from . import data as D
    from .dream_env import load_world_model
    from .train import EMA, NonFiniteLossError, batch_indices, draw_noise

    model = load_world_model(init, "cpu")
    model.train()
    K = model.config.context
    ds = D.EpisodeWindows(list(episodes), K + 1)
    if len(ds) == 0:
        raise ValueError(f"no window of {K + 1} steps in {len(episodes)} episodes; collect more steps")
    tcfg = {"p_clean": 0.1, "p_sigma_max": 0.15, **(noise or {}), "p_skip_frames": 1.0, "p_skip_occupancy": 1.0}
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99))
    ema = EMA(model, ema_decay)
    B = int(batch_size)
    for step in tqdm(range(int(steps)), desc="world model", disable=not progress, dynamic_ncols=True):
        batch = D.collate([ds[i] for i in batch_indices(step, len(ds), B, seed)])
        nz, sigma, branches = draw_noise(model.config, tcfg, step, list(range(B)), seed)
        losses = model.loss(batch, nz, sigma, branches)
        total = losses["total"]
        if not bool(torch.isfinite(total)):
            raise NonFiniteLossError(
                f"world-model fine-tuning: non-finite loss at step {step}: { {k: float(v) for k, v in losses.items()} }"
            )
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        ema.update(model, step)
    model.load_state_dict(ema.shadow)
    return model.eval().save_pretrained(out)
