"""A world model's three configs, split as diffusers splits a model from its scheduler.

- ``ArchitectureConfig``: what the weights were trained as (shapes, branches, EDM's sigma_data and
  sigma_max). Changing a field means retraining. Saved as ``config.json`` beside the weights.
- ``SamplerConfig``: how a dream is sampled and decoded (steps, initial noise, the schedule's
  sigma_min and rho, the props' decoding rules). Changeable without retraining; saved as
  ``sampler.json`` beside the weights.
- ``TrainingConfig``: how ``train-wm`` (and every caller of the one trainer) trains: optimiser,
  batches, the noise levels drawn, loss weights.

Every default is the shipped model's value (``worldmodel/default``), so ``ArchitectureConfig()``
builds the shipped architecture and ``TrainingConfig()`` repeats its training run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Version of the on-disk layout of config.json / sampler.json. A checkpoint of an older version is
# upgraded on load (``upgrade``); a newer one is refused.
FORMAT_VERSION = 2


@dataclass
class ArchitectureConfig:
    """Everything that defines a world model's weights (JSON-serialisable)."""

    resolution: int = 32  # ego frames are denoised at resolution x resolution
    data_resolution: int = 32  # the dataset's ego frames (imagine() returns this size)
    context: int = 2  # K context steps
    action_dim: int = 6
    modalities: list[str] = field(default_factory=lambda: ["ego", "motion", "partner_motion", "props", "occupancy"])
    ego_depth: bool = True  # depth as a 4th frame channel
    occupancy_shape: list[int] = field(default_factory=lambda: [8, 32, 32])  # (Z, X, Y)
    occupancy_voxel: float = 0.25  # metres per voxel of the data's grid
    frame_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    occupancy_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    layers_per_block: int = 1
    groups: int = 8
    dim: int = 96  # transformer width, and the embedding width of the U-Nets
    depth: int = 3
    heads: int = 4
    grid_tokens: int = 4  # each U-Net's bottleneck is pooled to grid_tokens^2 tokens
    n_instructions: int = 26
    reward_hidden: int = 256
    action_tokens: bool = True  # the actions also enter the agent's body tokens directly
    ego_warp: bool = True  # frames predicted relative to the last frame warped to the next head pose
    state_prior: int = 512  # hidden width of the MLP that regresses the bodies' next change (0: none)
    props_dynamics: int = 256  # hidden width of the per-prop contact network (0: none)
    occupancy_warp: bool = True  # occupancy predicted relative to the last grid carried to the next bodies
    partner_actions: bool = True  # the partner's scripted commands are a condition
    deterministic: bool = False  # true: the MSE-regression twin of the same network (no noise, one step)
    sigma_data: float = 1.0  # EDM preconditioning
    sigma_max: float = 20.0  # the highest noise level trained (the one-step sampler denoises from it)


@dataclass
class SamplerConfig:
    """How a dream is sampled and decoded; changes no weights."""

    num_steps: int = 1  # denoising steps per dreamed step (1: the RL setting)
    # Scale of the initial noise. 1: a diffusion sample. 0 with one step: D(0; sigma_max), the
    # network's estimate of the conditional mean.
    init_noise: float = 0.0
    sigma_min: float = 0.002  # the schedule's lowest noise level (Karras et al.'s rho schedule)
    rho: float = 7.0
    # A predicted prop displacement under this (metres per step) is dropped (0: off).
    props_rest_threshold: float = 0.0002
    # A resting prop with no joint of either body within this many metres stays at rest (0: off).
    props_contact_radius: float = 0.5


@dataclass
class NoiseConfig:
    """The noise levels a training sample is given, per modality."""

    p_mean: float = -0.4  # log-normal training sigma (EDM's P_mean, P_std)
    p_std: float = 1.2
    p_clean: float = 0.1  # a modality is given clean (sigma = 0: a condition)
    p_sigma_max: float = 0.5  # sigma = sigma_max: the one-step sampling regime
    p_skip_frames: float = 0.5  # the frame branch is absent this step (state-only dreaming)
    p_skip_occupancy: float = 0.1
    p_warp: float = 0.7  # warping models: a sample gets its next motion clean
    p_drop_partner_actions: float = 0.2  # partner_actions models: a sample trains without them


@dataclass
class TrainingConfig:
    """One world-model training run (``train-wm``, the DIAMOND-style loop, the demo, benchmarks)."""

    steps: int = 2000
    batch_size: int = 16  # global, split across processes
    prior_batch: int = 512  # state-only windows per step for the state prior's regression (0: the main batch)
    prior_rollout: int = 8  # the prior also learns from 1..prior_rollout steps it dreamed itself (0: never)
    lr: float = 1.0e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    root_loss_weight: float = 10.0  # weight of the agent's root change in the motion loss
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    stats_windows: int = 2000  # training windows used for the normalisation statistics
    seed: int = 0
