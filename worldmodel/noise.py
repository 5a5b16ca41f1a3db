"""The noise a training step gives each sample: per modality a sigma and unit noise, and the
U-Net branches that run (``draw_noise``; used by ``train-wm``, the fine-tuning loop and benchmarks).

Per modality and sample: sigma ~ log-normal (EDM's ``p_mean``, ``p_std``), sometimes sigma_max
(the one-step sampling regime), sometimes 0 (given clean: a condition, no loss); for a warping
model some samples get their next bodies clean (so that the frame / grid is measured from the
warped base); for a ``partner_actions`` model some samples go without the partner's commands.
Every draw is a pure function of (seed, step, the sample's position in the global batch), so N
processes with batch B/N train what one process with batch B does, and a resumed run repeats
what an uninterrupted one does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from . import data as D
from . import edm
from .config import ArchitectureConfig, NoiseConfig, TrainingConfig


def noise_config(how: TrainingConfig | NoiseConfig | Mapping[str, Any]) -> NoiseConfig:
    """The ``NoiseConfig`` of a training config, a noise config, or a mapping of noise settings
    (keys it lacks take ``NoiseConfig``'s defaults; unknown keys are refused by name)."""
    if isinstance(how, TrainingConfig):
        return how.noise
    if isinstance(how, NoiseConfig):
        return how
    if isinstance(how, Mapping):
        return NoiseConfig.from_dict(how, source="noise")
    raise TypeError(f"draw_noise needs a TrainingConfig, a NoiseConfig or a mapping of noise settings, got {type(how).__name__}")


def draw_noise(
    arch: ArchitectureConfig, training: TrainingConfig | NoiseConfig | Mapping[str, Any], step: int, positions: list[int], seed: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """Unit noise and sigmas (per modality, per sample) and the branches that run at ``step``.

    Sample j of the local batch is sample ``positions[j]`` of the global batch; its draws depend
    only on (seed, step, positions[j]). ``training``: the ``TrainingConfig`` (its ``noise``), a
    ``NoiseConfig``, or a mapping of noise settings.
    """
    c, nz = arch, noise_config(training)
    g = torch.Generator().manual_seed(seed * 7_919 + step * 104_729 + 1)
    u = torch.rand(2, generator=g)
    branches = []
    if "ego" in c.modalities and u[0] >= nz.p_skip_frames:
        branches.append("ego")
    if "occupancy" in c.modalities and u[1] >= nz.p_skip_occupancy:
        branches.append("occupancy")
    shapes = {
        "ego": (c.n_frame_channels, c.resolution, c.resolution),
        "motion": (227,),
        "partner_motion": (227,),
        "props": (D.N_PROPS, 3),
        "occupancy": (c.n_occ_channels, *c.occupancy_shape[1:]),
    }
    mods = [m for m in D.MODALITIES if m in D.STATE_MODALITIES or m in branches]
    noise = {m: [] for m in mods}
    sigma = {m: [] for m in mods}
    known: list[bool] = []
    for pos in positions:
        gs = torch.Generator().manual_seed(seed * 1_000_033 + step * 9_973 + pos * 31 + 7)
        for m in mods:
            s = float(edm.sample_training_sigma(1, nz, gs)[0])
            r = float(torch.rand(1, generator=gs)[0])
            if r < nz.p_clean:
                s = 0.0
            elif r < nz.p_clean + nz.p_sigma_max:
                s = c.sigma_max
            sigma[m].append(s)
            noise[m].append(torch.randn(shapes[m], generator=gs))
        if c.ego_warp and "ego" in mods and float(torch.rand(1, generator=gs)[0]) < nz.p_warp:
            # frames predicted given the next motion: relative to the last frame warped to it
            # (and, rendering the next grid, given the partner's next body as well, as at inference)
            sigma["motion"][-1] = 0.0
            if c.ego_render:
                sigma["partner_motion"][-1] = 0.0
        if c.occupancy_warp and "occupancy" in mods and float(torch.rand(1, generator=gs)[0]) < nz.p_warp:
            # occupancy predicted given both next bodies: relative to the last grid carried to them
            sigma["motion"][-1] = 0.0
            sigma["partner_motion"][-1] = 0.0
        if c.partner_actions:
            # some samples train without the partner's commands, so that the model also dreams
            # when a caller has none
            known.append(float(torch.rand(1, generator=gs)[0]) >= nz.p_drop_partner_actions)
        # every sample must have something to learn: if all were given clean, denoise motion
        # (frames, for a warping model given its motion)
        if all(sigma[m][-1] == 0.0 for m in mods):
            fix = "ego" if (c.ego_warp and "ego" in mods) else "motion"
            sigma[fix][-1] = float(edm.sample_training_sigma(1, nz, gs)[0])
    noise_out = {m: torch.stack(v) for m, v in noise.items()}
    if c.partner_actions:
        noise_out["partner_known"] = torch.tensor(known, dtype=torch.bool)
    return (
        noise_out,
        {m: torch.tensor(v, dtype=torch.float32) for m, v in sigma.items()},
        branches,
    )
