"""The image branch of the vector world model: a Gymnasium env's frames, dreamed by a small U-Net.

An env whose observation is an image (a (H, W, C) uint8 Box, or one such key of a Dict; C is 3 for
RGB, more for stacked frames) gets, beside the vector branch (``worldmodel.vector``):

- ``FrameDenoiser``: a U-Net over the next frame (scaled to [-1, 1]) with the K context frames
  stacked on its channels, as DIAMOND's denoiser is (Alonso et al. 2024), with every residual
  block scaled and shifted by the condition (the context's embedding: actions, vectors, the last
  frame's encoding; and the noise level's). EDM preconditioning with sigma_data 0.5; sampled with
  the model's few Euler steps like the vectors, so an uncertain future is drawn, not averaged.
- ``FrameEncoder``: a strided CNN from a frame to one vector, read by the context embedding (the
  last context frame) and by the reward and termination heads (the next frame).

Frames are (B, C, H, W) float in [-1, 1] inside the network and (B, H, W, C) uint8 outside.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FRAME_SIGMA_DATA = 0.5


def to_unit(frames: torch.Tensor) -> torch.Tensor:
    """(..., H, W, C) uint8 -> (..., C, H, W) float in [-1, 1]."""
    x = frames.float().div(127.5).sub(1.0)
    return x.movedim(-1, -3)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """(..., C, H, W) in [-1, 1] -> (..., H, W, C) uint8."""
    return x.movedim(-3, -1).add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def _groups(c: int) -> int:
    return next(g for g in (8, 4, 2, 1) if c % g == 0)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, cond: int):
        super().__init__()
        self.n1, self.n2 = nn.GroupNorm(_groups(c_in), c_in), nn.GroupNorm(_groups(c_out), c_out)
        self.c1, self.c2 = nn.Conv2d(c_in, c_out, 3, padding=1), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.mod = nn.Linear(cond, 2 * c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.c2.weight)
        nn.init.zeros_(self.c2.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.silu(self.n1(x)))
        scale, shift = self.mod(cond)[:, :, None, None].chunk(2, 1)
        h = self.c2(F.silu(self.n2(h) * (1 + scale) + shift))
        return self.skip(x) + h


class FrameDenoiser(nn.Module):
    """U-Net D(x; sigma | context frames, condition) over one frame (see the module docstring)."""

    def __init__(self, channels: int, context: int, cond: int, base: int = 32):
        super().__init__()
        widths = (base, 2 * base, 2 * base)
        self.inp = nn.Conv2d(channels * (context + 1), widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        c = widths[0]
        for w in widths:
            self.down.append(_ResBlock(c, w, cond))
            c = w
        self.mid = _ResBlock(c, c, cond)
        self.up = nn.ModuleList()
        for w in reversed(widths):
            self.up.append(_ResBlock(c + w, w, cond))
            c = w
        self.out_norm = nn.GroupNorm(_groups(c), c)
        self.out = nn.Conv2d(c, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, context_frames: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, H, W) scaled by c_in, ``context_frames`` (B, K*C, H, W), ``cond`` (B, cond)."""
        h = self.inp(torch.cat([x, context_frames], 1))
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, cond)
            skips.append(h)
            if i < len(self.down) - 1:
                h = F.avg_pool2d(h, 2)
        h = self.mid(h, cond)
        for block in self.up:
            s = skips.pop()
            if h.shape[-2:] != s.shape[-2:]:
                h = F.interpolate(h, size=s.shape[-2:], mode="nearest")
            h = block(torch.cat([h, s], 1), cond)
        return self.out(F.silu(self.out_norm(h)))


class FrameEncoder(nn.Module):
    """(B, C, H, W) in [-1, 1] -> (B, out) by strided convolutions and a global average."""

    def __init__(self, channels: int, out: int, base: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, base, 4, 2, 1),
            nn.SiLU(),
            nn.Conv2d(base, 2 * base, 4, 2, 1),
            nn.SiLU(),
            nn.Conv2d(2 * base, 2 * base, 3, 1, 1),
            nn.SiLU(),
        )
        self.fc = nn.Linear(2 * base, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.net(x).mean((-2, -1)))


def frame_psnr(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """PSNR (dB) of uint8 frames (B, H, W, C), over the batch."""
    mse = (pred.float() - truth.float()).pow(2).mean().clamp_min(1e-10)
    return float(10 * torch.log10(255.0**2 / mse))
