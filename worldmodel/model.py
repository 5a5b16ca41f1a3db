"""The world model: one network that denoises the next step of every modality jointly.

``WorldModel`` predicts, from the last K observations and the actions, the next ego frame (RGB,
and depth when configured), the agent's and the partner's body motion, the props' positions and
the occupancy grid, plus reward and termination from a learned head.

Architecture (one denoiser call, EgoTwin-style bidirectional exchange):

1. Conditioning: the K actions (the last one emphasised) and the instruction make a global
   embedding ``g``; each modality's noise level sigma has its own embedding. ``g`` plus the
   modality's sigma embedding condition every ResNet block of the U-Nets and every token of
   every transformer block (adaLN), so the action reaches everything.
2. Ego-frame U-Net encoder (noisy next-frame change + K context frames) -> bottleneck; the same
   for the occupancy BEV U-Net (height x class channels).
3. A transformer over tokens: agent root + 22 joints, partner root + 22 joints, 4 props (each
   token holds its noisy change and its K context values), pooled bottleneck tokens of both U-Nets
   (video/occupancy -> motion), and a global token.
4. The U-Net decoders get their bottleneck plus the transformer's output for their tokens and an
   embedding of the pooled body tokens (motion -> video/occupancy), and predict the change.

Each modality has its own sigma; sigma = 0 means the modality is given clean, as a condition.
The frame and occupancy branches can also be *absent* (not run at all; learned placeholder
tokens instead), which is how ``imagine(modalities=[...])`` skips frames cheaply.
All targets are changes from the last context step in a normalised space (see ``data``).

With ``ego_warp`` the frame change is measured from the last frame *reprojected to the next head
pose* (``warp``: depth-based forward warping) whenever the next motion is a clean condition:
``imagine`` then dreams the bodies and props first (frames absent) and the frames given them, so
the view's geometric change under the agent's own motion comes from geometry and the U-Net (which
also reads the warped base and its validity mask) learns what warping cannot explain.

With ``state_prior`` an MLP over the whole flattened context regresses the conditional mean of
the two bodies' next change, and the diffusion denoises the residual around it (the prior is
also an input of every body token). With train-wm's ``prior_rollout`` the prior also learns from
contexts it dreamed itself (``WorldModel.prior_rollout``), so that in a long dream it pulls a
drifting body back instead of carrying the drift. With ``partner_actions`` the partner's
controller commands are a condition like the agent's actions: the partner is scripted, and the
script is known where the model dreams (``envs.partner.replay_actions`` recovers it from a
recording).

The code is split by role: ``network`` (the layers and the denoiser call), ``loss`` (training),
``sampling`` (``imagine``, ``rollout``, ``prior_rollout``), ``decoding`` (changes -> observations,
the props' decoding rules), ``checkpoint`` (files on disk); ``config`` holds the architecture,
sampler and training configs. ``WorldModel`` joins them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import edm
from .checkpoint import (
    CONFIG_NAME,
    SAMPLER_NAME,
    WEIGHTS_NAME,
    check_state_dict,
    checkpoint_files,
    load_safetensors,
    read_configs,
    write_pretrained,
)
from .config import FORMAT_VERSION, ArchitectureConfig, SamplerConfig, check_sampler
from .decoding import DecodingMixin
from .loss import LossMixin
from .network import MEMORY_KEYS, OBS_KEYS, OCC_MEMORY_KEYS, WorldModelNetwork
from .sampling import SamplingMixin

__all__ = [
    "CONFIG_NAME",
    "DEFAULT_CHECKPOINT",
    "FORMAT_VERSION",
    "MEMORY_KEYS",
    "OBS_KEYS",
    "OCC_MEMORY_KEYS",
    "SAMPLER_NAME",
    "WEIGHTS_NAME",
    "ArchitectureConfig",
    "SamplerConfig",
    "WorldModel",
    "WorldModelConfig",
    "check_state_dict",
    "load_default",
    "load_safetensors",
]

# The embedded default checkpoint, shipped with the package (see default/TRAINING.md).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "default"
# The architecture config under its earlier name (kept importable for one release).
WorldModelConfig = ArchitectureConfig


class WorldModel(SamplingMixin, LossMixin, DecodingMixin, WorldModelNetwork):
    """Joint diffusion world model over ego frames, body motion, props and occupancy.

    ``WorldModel(arch, sampler)``: ``config`` is the ``ArchitectureConfig`` (the weights),
    ``sampler`` the ``SamplerConfig`` (how ``imagine`` / ``rollout`` dream by default; default
    ``SamplerConfig()``, the shipped one). Use ``imagine`` for one step, ``rollout`` for several
    (autoregressive), ``save_pretrained`` / ``from_pretrained`` to store and load (safetensors +
    JSON; nothing is unpickled). Training (``dreamgym.worldmodel.train``) calls ``loss``.
    """

    def __init__(self, arch: ArchitectureConfig, sampler: SamplerConfig | None = None):
        if not isinstance(arch, ArchitectureConfig):
            raise TypeError(f"WorldModel needs an ArchitectureConfig, got {type(arch).__name__}")
        sampler = SamplerConfig() if sampler is None else sampler
        check_sampler(arch, sampler)
        super().__init__(arch)
        self.sampler = sampler

    @property
    def edm(self) -> edm.EDMParams:
        """EDM's sampling parameters: sigma_data and sigma_max of the architecture, the sampler's schedule."""
        return self.edm_for(self.sampler)

    def edm_for(self, sampler: SamplerConfig) -> edm.EDMParams:
        """``edm`` with another sampler's schedule."""
        c = self.config
        return edm.EDMParams(sigma_data=c.sigma_data, sigma_min=sampler.sigma_min, sigma_max=c.sigma_max, rho=sampler.rho)

    # ------------------------------------------------------------------ the trainer's hooks
    # ``worldmodel.trainer`` trains any model with these (``vector.VectorWorldModel`` has its own).
    def check_training_windows(self, item, noise, source: str) -> None:
        """Raise naming ``source`` when a training window lacks what this model trains on."""
        from .windows import check_windows

        check_windows(item, self.config, noise, source)

    def training_noise(self, training, step: int, positions: list[int], seed: int):
        """This step's unit noise, sigmas and branches (``noise.draw_noise``)."""
        from .noise import draw_noise

        return draw_noise(self.config, training, step, positions, seed)

    @property
    def statistics_fitted(self) -> bool:
        return bool(self.norm.fitted)

    def fit_statistics(self, chunks) -> None:
        """Normalisation statistics (and the props features) from ``chunks()``, batches of windows."""
        c = self.config
        self.norm.fit(chunks(), c.resolution, c.ego_depth, warp=c.ego_warp)
        if c.props_dynamics:
            self.fit_props_features(chunks())

    def heldout_metrics(self, batch, num_steps: int, seed: int):
        """One-step held-out metrics beside the trivial baselines, and a frame grid (``trainer.heldout_metrics``)."""
        from .trainer import heldout_metrics

        return heldout_metrics(self, batch, num_steps, seed)

    @staticmethod
    def read_configs(config: Path) -> tuple[ArchitectureConfig, SamplerConfig]:
        """The checked architecture and sampler of a checkpoint's ``config.json``."""
        return read_configs(config)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write ``model.safetensors``, ``config.json`` and ``sampler.json`` into ``directory`` (created)."""
        return write_pretrained(directory, self.state_dict() if state_dict is None else state_dict, self.config, self.sampler)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> WorldModel:
        """Load a model saved by ``save_pretrained``: a directory, or its ``model.safetensors``
        (``config.json`` and ``sampler.json`` beside it). Raises with the file and the problem when a
        file is missing, not safetensors, truncated, of a newer format, holds a value that is not
        allowed, or does not match the config."""
        weights, config = checkpoint_files(path)
        arch, sampler = read_configs(config)
        sd = load_safetensors(weights)
        model = cls(arch, sampler)
        check_state_dict(model, sd, weights, config)
        model.load_state_dict(sd)
        return model.to(device).eval()


def load_default(device: str | torch.device = "cpu") -> WorldModel:
    """The embedded default world model (``worldmodel/default``), trained as its TRAINING.md says."""
    return WorldModel.from_pretrained(DEFAULT_CHECKPOINT, device=device)
