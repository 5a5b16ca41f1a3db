"""Policy networks: the features extractors of the SB3 policies (state MLP input, optional small CNN; pixels).

``ObsExtractor`` standardises each state key with fixed statistics measured once before training
(``measure_obs_stats``), so the 227-float ``motion`` vector and the 8-float ``task_obs`` arrive at
the MLP on one scale. The statistics are buffers of the network (``mean_<key>``/``std_<key>``), so they
are saved in ``policy.safetensors`` with the weights (no separate normalisation file to carry around). Image keys (``ego_rgb``, ``ego_depth``)
go through a small CNN; ``instruction`` is one-hot encoded (SB3's preprocessing).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

CLIP = 10.0  # standardised inputs are clipped to +-CLIP (a dream can drift far off the data)
MAX_DEPTH = 10.0


class _SmallCNN(nn.Module):
    """(B, C, H, W) -> (B, out): three strided convolutions and a linear layer."""

    def __init__(self, channels: int, height: int, width: int, out: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, 16, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            n = self.net(torch.zeros(1, channels, height, width)).shape[1]
        self.fc = nn.Sequential(nn.Linear(n, out), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.net(x))


class PixelExtractor(BaseFeaturesExtractor):
    """Features of one image observation (a Gymnasium env's pixels) by ``_SmallCNN``.

    SB3's own ``NatureCNN`` needs images of at least 36x36; this one takes any size from 8x8 up, so
    ``dreamgym/Pixels-v0`` at 24x24 gets a convolutional policy. SB3 hands it the image channels
    first and scaled to [0, 1] (its ``VecTransposeImage`` and ``normalize_images``).
    """

    def __init__(self, observation_space: spaces.Box, features_dim: int = 128):
        if len(observation_space.shape) != 3:
            raise ValueError(f"PixelExtractor: an image space (C, H, W) is needed, got shape {observation_space.shape}")
        c, h, w = observation_space.shape
        super().__init__(observation_space, features_dim=int(features_dim))
        self.cnn = _SmallCNN(int(c), int(h), int(w), out=int(features_dim))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.cnn(obs.float())


class ObsExtractor(BaseFeaturesExtractor):
    """Concatenates standardised state keys, one-hot discrete keys and CNN features of image keys.

    Args:
        observation_space: the Dict space of the env.
        stats: ``{key: (mean list, std list)}`` for flat Box keys (missing keys pass unscaled).
    """

    def __init__(self, observation_space: spaces.Dict, stats: Mapping[str, tuple[list[float], list[float]]] | None = None):
        stats = dict(stats or {})
        dims = 0
        cnns = {}
        for k, sp in observation_space.spaces.items():
            if isinstance(sp, spaces.Discrete):
                dims += int(sp.n)
            elif isinstance(sp, spaces.Box) and len(sp.shape) == 3:
                cnns[k] = _SmallCNN(sp.shape[0], sp.shape[1], sp.shape[2])
                dims += 128
            elif isinstance(sp, spaces.Box):
                dims += int(np.prod(sp.shape))
            else:
                raise TypeError(f"observation key {k!r}: unsupported space {sp}")
        super().__init__(observation_space, features_dim=dims)
        self.cnns = nn.ModuleDict(cnns)
        self.keys = list(observation_space.spaces)
        for k in self.keys:
            sp = observation_space.spaces[k]
            if isinstance(sp, spaces.Box) and len(sp.shape) < 3:
                n = int(np.prod(sp.shape))
                mean, std = stats.get(k, ([0.0] * n, [1.0] * n))
                if len(mean) != n or len(std) != n:
                    raise ValueError(f"stats for {k!r} have {len(mean)}/{len(std)} entries, expected {n}")
                self.register_buffer(f"mean_{k}", torch.tensor(mean, dtype=torch.float32))
                self.register_buffer(f"std_{k}", torch.tensor(std, dtype=torch.float32).clamp_min(1e-3))

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for k in self.keys:
            x = obs[k]
            if k in self.cnns:
                x = x.float()
                x = x / 255.0 if k == "ego_rgb" else x / MAX_DEPTH
                parts.append(self.cnns[k](x))
            elif hasattr(self, f"mean_{k}"):
                z = (x.float().flatten(1) - getattr(self, f"mean_{k}")) / getattr(self, f"std_{k}")
                parts.append(z.clamp(-CLIP, CLIP))
            else:
                parts.append(x.float().flatten(1))
        return torch.cat(parts, dim=1)


@torch.no_grad()
def measure_obs_stats(env: Any, steps: int = 20, seed: int = 0) -> dict[str, tuple[list[float], list[float]]]:
    """Mean and std of each flat Box observation key over ``steps`` random-action steps of ``env``.

    ``env`` is a batched env with ``reset_tensors``/``step_tensors`` (real or dream); the numbers
    become part of the policy (see ``ObsExtractor``).
    """
    space = env.single_observation_space
    keys = [k for k, sp in space.spaces.items() if isinstance(sp, spaces.Box) and len(sp.shape) < 3]
    g = torch.Generator().manual_seed(int(seed))
    obs, _ = env.reset_tensors(seed=seed)
    rows: dict[str, list[torch.Tensor]] = {k: [obs[k].float().flatten(1).cpu()] for k in keys}
    for _ in range(int(steps)):
        a = torch.rand(env.num_envs, 6, generator=g) * 2 - 1
        obs, *_ = env.step_tensors(a.to(getattr(env, "device", "cpu")))
        for k in keys:
            rows[k].append(obs[k].float().flatten(1).cpu())
    out = {}
    for k in keys:
        x = torch.cat(rows[k])
        x = x[torch.isfinite(x).all(1)]
        out[k] = (x.mean(0).tolist(), x.std(0).clamp_min(1e-3).tolist())
    return out
