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
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dreamgym.envs.motion import MOTION_DIM

from . import data as D
from . import edm
from .blocks import GridTokens, TokenTransformer, UNetBranch, fourier_embedding
from .warp import camera_feature_index, warp_frame

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
# The embedded default checkpoint, shipped with the package (see default/TRAINING.md).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "default"
OBS_KEYS = ("ego_rgb", "ego_depth", "motion", "partner_motion", "props", "occupancy")
# Scene memory of an ``ego_warp`` dream (see ``WorldModel.scene_memory``): a real frame, its depth
# and the motion it was seen from, carried unchanged through a rollout's contexts.
MEMORY_KEYS = ("memory_rgb", "memory_depth", "memory_motion")
# ... and of an ``occupancy_warp`` model: the rollout's real occupancy grid and the motion it was seen from
OCC_MEMORY_KEYS = ("memory_occupancy", "memory_motion")


@dataclass
class WorldModelConfig:
    """Everything that defines a world model's architecture (JSON-serialisable)."""

    resolution: int = 32  # ego frames are denoised at resolution x resolution
    data_resolution: int = 64  # the dataset's ego frames (imagine() returns this size)
    context: int = 4  # K context steps
    action_dim: int = 6
    modalities: list[str] = field(default_factory=lambda: list(D.MODALITIES))
    ego_depth: bool = True  # depth as a 4th frame channel
    occupancy_shape: list[int] = field(default_factory=lambda: [8, 32, 32])  # (Z, X, Y)
    occupancy_voxel: float = 0.25  # metres per voxel of the data's grid (``occupancy_warp`` moves the grid by it)
    frame_channels: list[int] = field(default_factory=lambda: [32, 64, 96])
    occupancy_channels: list[int] = field(default_factory=lambda: [32, 64, 96])
    layers_per_block: int = 1
    groups: int = 8
    dim: int = 128  # transformer width, and the embedding width of the U-Nets
    depth: int = 4
    heads: int = 4
    grid_tokens: int = 4  # each U-Net's bottleneck is pooled to grid_tokens^2 tokens
    n_instructions: int = 26
    reward_hidden: int = 256
    learn_success: bool = False
    # The actions also enter the agent's body tokens directly (a linear path from the command to
    # the root and joint changes), not only through the shared conditioning vector: without it a
    # small model learns to extrapolate the context's motion and ignores turn commands.
    action_tokens: bool = True
    # Weight of the agent's root change (position + orientation: 7 of the 227 motion numbers) in
    # the motion loss, relative to the other numbers (the weights are renormalised to mean 1).
    root_loss_weight: float = 10.0
    # Weight of the numbers that place the head camera (the spine/neck/head rotations and the head
    # position) in the motion loss: a frame warped to a badly predicted head pose is off by pixels.
    camera_loss_weight: float = 1.0
    # Frames are predicted relative to the last frame *warped to the next head pose* (``warp``:
    # depth-based reprojection) instead of relative to the last frame, whenever the next motion is
    # known -- given, or dreamed first in a state-only pass (``imagine`` then runs two passes).
    # The view's change under the agent's own motion then comes from geometry, and the network
    # learns the rest. Needs ``ego_depth``.
    ego_warp: bool = False
    # Props at rest stay at rest: a predicted prop displacement shorter than this (metres per
    # step) is dropped at decoding. Props sit still on almost every step (in reach data more than
    # 99 % move less than 2 mm) and a regression's small drift on a resting prop compounds over
    # a long dream. An inference-time option (0: off); it changes no weights.
    props_rest_threshold: float = 0.0
    # A deterministic prior for the bodies' next change: an MLP over the whole flattened context
    # (both bodies, props, actions) regresses the conditional mean of the normalised motion and
    # partner-motion changes, and the diffusion denoises the residual around it (its input and
    # output are shifted by the prior; the prior is also an input of the body tokens). The token
    # transformer alone underfits fine pose detail -- the head's turn under a head command, which
    # places the camera -- where a flat MLP fits it easily. Width of its hidden layers; 0: none.
    state_prior: int = 0
    # A learned per-prop dynamics network (an MLP shared by the props; hidden width, 0: none): it
    # predicts each prop's next displacement from the prop's last displacement and height, its
    # place relative to the agent, and the next joints of both bodies relative to it -- a contact
    # model. With it the props of a dream are its output rather than the diffusion's. It trains on
    # the state prior's batches (needs ``state_prior`` and ``context`` >= 2), on the prior's own
    # dreamed next bodies (what it is fed when dreaming), also from contexts whose props it dreamed
    # itself (``prior_rollout``; the target is then the recorded step's displacement, so a slide it
    # imagined is braked), with a Huber loss on displacements in units of 2 mm: the millimetre
    # settling of a prop is learned as well as a kick.
    props_dynamics: int = 0
    # Props are passive: a prop at rest (its last displacement under ``props_rest_threshold``) with
    # no joint of either body within this many metres of its centre stays at rest (decoding, props
    # network models; an inference-time option, 0: off). It stops slides the network imagines far
    # from any body.
    props_contact_radius: float = 0.0
    # The occupancy grid is egocentric, so its next step is predicted relative to the last grid
    # *carried into the next heading frame* (``D.warp_occupancy``: the scenery resampled under the
    # agent's move and turn, both bodies drawn afresh from their next motions) whenever the next
    # bodies are known -- given, or dreamed first in a state-only pass. The occupancy branch reads
    # that base and its validity; the network learns what the geometry cannot explain.
    occupancy_warp: bool = False
    # The partner's controller commands (6 floats per step, like the agent's actions) are a
    # condition: the partner is scripted, and its script is known wherever the model dreams (a
    # dream env runs it; a recording replays it, ``envs.partner.replay_actions``). Without them
    # the partner's next move is a guess, and its mean drifts. When a caller has none, the model
    # runs without (trained so: ``noise.p_drop_partner_actions``).
    partner_actions: bool = False
    deterministic: bool = False  # MSE regression of the same network (a baseline): no noise, one step
    # Scale of the sampler's initial noise (imagine's default). 1: a diffusion sample. 0 with one
    # step: D(0; sigma_max), the network's estimate of the conditional mean -- the lowest expected
    # error per step, and what a reward-maximising RL user usually wants.
    init_noise: float = 1.0
    sigma_data: float = 1.0
    p_mean: float = -0.4
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 20.0
    rho: float = 7.0

    def __post_init__(self) -> None:
        bad = [m for m in self.modalities if m not in D.MODALITIES]
        if bad:
            raise ValueError(f"unknown modalities {bad}; choose from {list(D.MODALITIES)}")
        missing = [m for m in D.STATE_MODALITIES if m not in self.modalities]
        if missing:
            raise ValueError(f"modalities must include the state modalities {list(D.STATE_MODALITIES)}; missing {missing}")
        self.modalities = [m for m in D.MODALITIES if m in self.modalities]
        self.occupancy_shape = [int(x) for x in self.occupancy_shape]
        self.frame_channels = [int(x) for x in self.frame_channels]
        self.occupancy_channels = [int(x) for x in self.occupancy_channels]
        if self.context < 1:
            raise ValueError(f"context must be at least 1, got {self.context}")
        if self.ego_warp and not (self.ego_depth and "ego" in self.modalities):
            raise ValueError("ego_warp needs ego frames with depth (modalities with 'ego' and ego_depth: true)")
        if self.occupancy_warp and "occupancy" not in self.modalities:
            raise ValueError("occupancy_warp needs the occupancy modality")
        if self.props_dynamics and not (self.state_prior and self.context >= 2):
            raise ValueError(f"props_dynamics needs a state_prior (got {self.state_prior}) and context >= 2 (got {self.context})")

    @property
    def edm(self) -> edm.EDMParams:
        return edm.EDMParams(self.sigma_data, self.p_mean, self.p_std, self.sigma_min, self.sigma_max, self.rho)

    @property
    def n_frame_channels(self) -> int:
        return 4 if self.ego_depth else 3

    @property
    def n_occ_channels(self) -> int:
        return self.occupancy_shape[0] * D.N_OCC_CLASSES

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> WorldModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names - {"format_version"})
        if unknown:
            raise ValueError(f"{source}: unknown world-model config fields {unknown}")
        d = dict(d)
        # checkpoints written before these options existed have the older architecture
        d.setdefault("action_tokens", False)
        d.setdefault("root_loss_weight", 1.0)
        d.setdefault("ego_warp", False)
        d.setdefault("camera_loss_weight", 1.0)
        d.setdefault("props_rest_threshold", 0.0)
        d.setdefault("state_prior", 0)
        d.setdefault("partner_actions", False)
        d.setdefault("props_dynamics", 0)
        d.setdefault("props_contact_radius", 0.0)
        d.setdefault("occupancy_warp", False)
        return cls(**{k: v for k, v in d.items() if k in names})


class WorldModel(nn.Module):
    """Joint diffusion world model over ego frames, body motion, props and occupancy.

    Use ``imagine`` for one step, ``rollout`` for several (autoregressive), ``save_pretrained`` /
    ``from_pretrained`` to store and load (safetensors + JSON; nothing is unpickled).
    Training (``dreamgym.worldmodel.train``) calls ``loss``.
    """

    def __init__(self, config: WorldModelConfig):
        super().__init__()
        self.config = c = config
        K, d = c.context, c.dim
        self.norm = D.Normalizer(c.n_frame_channels)
        # conditioning
        self.action_mlp = nn.Sequential(nn.Linear(c.action_dim * (K + 1), d), nn.SiLU(), nn.Linear(d, d))
        self.instruction = nn.Embedding(c.n_instructions + 1, d)  # the last index: unknown
        self.sigma_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.modality_emb = nn.Parameter(torch.randn(len(D.MODALITIES), d) * 0.02)
        self.sigma_mix = nn.Linear(len(D.MODALITIES) * d, d)
        n_pa = c.action_dim * (K + 1) + 1  # partner commands (the current one twice) and a known flag
        if c.partner_actions:
            self.partner_action_mlp = nn.Sequential(nn.Linear(n_pa, d), nn.SiLU(), nn.Linear(d, d))
            self.pact_root = nn.Linear(n_pa, d)
            self.pact_joint = nn.Linear(n_pa, d)
        if c.state_prior:
            n_in = K * (2 * MOTION_DIM + 3 * D.N_PROPS) + c.action_dim * (K + 1) + (n_pa if c.partner_actions else 0)
            h = int(c.state_prior)
            self.prior = nn.Sequential(nn.Linear(n_in, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 2 * MOTION_DIM))
        if c.props_dynamics:
            h = int(c.props_dynamics)
            self.props_net = nn.Sequential(nn.Linear(D.PROPS_FEATS, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 3))
            # the features' statistics (``fit_props_features``; saved with the weights)
            self.register_buffer("props_feat_mean", torch.zeros(D.PROPS_FEATS))
            self.register_buffer("props_feat_std", torch.ones(D.PROPS_FEATS))
        # body / props tokens: in = noisy change (F) [+ the prior's change (F)] + K context values (K*F)
        n_body = K + 1 + (1 if c.state_prior else 0)
        self.in_root = nn.ModuleDict({m: nn.Linear(D.ROOT_FEATS * n_body, d) for m in ("motion", "partner_motion")})
        self.in_joint = nn.ModuleDict({m: nn.Linear(D.JOINT_FEATS * n_body, d) for m in ("motion", "partner_motion")})
        self.in_props = nn.Linear(3 * (K + 1), d)
        if c.action_tokens:
            self.act_root = nn.Linear(c.action_dim * (K + 1), d)
            self.act_joint = nn.Linear(c.action_dim * (K + 1), d)
        self.out_root = nn.ModuleDict({m: nn.Linear(d, D.ROOT_FEATS) for m in ("motion", "partner_motion")})
        self.out_joint = nn.ModuleDict({m: nn.Linear(d, D.JOINT_FEATS) for m in ("motion", "partner_motion")})
        self.out_props = nn.Linear(d, 3)
        self.n_state_tokens = 2 * (1 + 22) + D.N_PROPS
        self.state_pos = nn.Parameter(torch.randn(self.n_state_tokens, d) * 0.02)
        n_grid = c.grid_tokens**2
        self.transformer = TokenTransformer(d, c.depth, c.heads)
        # U-Net branches
        self.branches = nn.ModuleDict()
        self.grid = nn.ModuleDict()
        self.absent = nn.ParameterDict()
        self.up_emb = nn.ModuleDict()
        for m, ch, n_in in (("ego", c.frame_channels, c.n_frame_channels), ("occupancy", c.occupancy_channels, c.n_occ_channels)):
            if m not in c.modalities:
                continue
            # the warped base (frame / grid) and its validity
            extra = n_in + 1 if ((m == "ego" and c.ego_warp) or (m == "occupancy" and c.occupancy_warp)) else 0
            self.branches[m] = UNetBranch(n_in * (K + 1) + extra, n_in, ch, d, c.layers_per_block, c.groups)
            self.grid[m] = GridTokens(ch[-1], d, c.grid_tokens)
            self.absent[m] = nn.Parameter(torch.randn(n_grid, d) * 0.02)
            self.up_emb[m] = nn.Linear(d, d)
        # reward / termination (/ success) head: context + action + (predicted) next state
        n_state = 2 * MOTION_DIM + 3 * D.N_PROPS
        self.reward_head = nn.Sequential(
            nn.Linear(2 * n_state + d, c.reward_hidden),
            nn.SiLU(),
            nn.Linear(c.reward_hidden, c.reward_hidden),
            nn.SiLU(),
            nn.Linear(c.reward_hidden, 3 if c.learn_success else 2),
        )

    # ------------------------------------------------------------------ inputs
    @property
    def device(self) -> torch.device:
        return self.state_pos.device

    def encode_context(
        self,
        context: Mapping[str, torch.Tensor],
        actions: torch.Tensor,
        branches: Sequence[str] = ("ego", "occupancy"),
        partner_actions: torch.Tensor | None = None,
        partner_known: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Normalised model inputs from K context steps in env dtypes (B, K, ...) and actions (B, K, 6).

        Only the U-Net branches listed in ``branches`` read their context (frames may be absent).
        ``partner_actions`` (B, K, 6): the partner's commands after each context step (models with
        ``partner_actions``; None: unknown); ``partner_known`` (B,) bool marks the rows that have them.
        """
        c, K, nm = self.config, self.config.context, self.norm
        dev = self.device
        m = context["motion"].to(dev, torch.float32)
        p = context["partner_motion"].to(dev, torch.float32)
        props = context["props"].to(dev, torch.float32)
        B = m.shape[0]
        last = m[:, K - 1]
        out: dict[str, torch.Tensor] = {
            "motion_last": last,
            "partner_last": p[:, K - 1],
            "props_last": props[:, K - 1],
            "props_prev": props[:, max(K - 2, 0)],
            "motion_ctx": (D.motion_context(m, last) - nm.motion_ctx_mean) / nm.motion_ctx_std,
            "partner_ctx": (D.partner_context(p, last) - nm.partner_ctx_mean) / nm.partner_ctx_std,
            "props_ctx": (D.props_context(props, last) - nm.props_ctx_mean) / nm.props_ctx_std,
            "actions": actions.to(dev, torch.float32).clamp(-1, 1),
        }
        instr = context.get("instruction")
        if instr is None:
            instr = torch.full((B,), c.n_instructions, dtype=torch.long, device=dev)
        else:
            instr = instr.to(dev).long()
            if instr.dim() == 2:
                instr = instr[:, -1]
            instr = torch.where((instr < 0) | (instr >= c.n_instructions), c.n_instructions, instr)
        out["instruction"] = instr
        if c.partner_actions:
            if partner_actions is None:
                pa = torch.zeros(B, K, c.action_dim, device=dev)
                known = torch.zeros(B, device=dev, dtype=torch.bool)
            else:
                pa = partner_actions.to(dev, torch.float32).clamp(-1, 1)
                known = torch.ones(B, device=dev, dtype=torch.bool) if partner_known is None else partner_known.to(dev).bool()
                pa = pa * known[:, None, None]
            out["partner_feats"] = torch.cat([pa[:, -1], pa.flatten(1), known[:, None].float()], 1)
        if c.state_prior:
            feats = [
                out["motion_ctx"].flatten(1),
                out["partner_ctx"].flatten(1),
                out["props_ctx"].flatten(1),
                out["actions"][:, -1],
                out["actions"].flatten(1),
            ]
            if c.partner_actions:
                feats.append(out["partner_feats"])
            pr = self.prior(torch.cat(feats, 1))
            out["prior_motion"], out["prior_partner_motion"] = pr[:, :MOTION_DIM], pr[:, MOTION_DIM:]
        if "ego" in branches and "ego" in c.modalities:
            rgb = context["ego_rgb"].to(dev)
            depth = context["ego_depth"].to(dev) if c.ego_depth else None
            fr = D.frames_to_model(rgb, depth, c.resolution)  # (B, K, C, r, r)
            out["ego_ctx"] = fr.flatten(1, 2)
            out["ego_last_model"] = fr[:, K - 1]
            out["ego_rgb_last"] = rgb[:, K - 1]
            if depth is not None:
                out["ego_depth_last"] = depth[:, K - 1].float()
            if c.ego_warp:
                if all(k in context for k in MEMORY_KEYS):
                    out |= {k: context[k].to(dev) for k in MEMORY_KEYS}
                self.frame_base(out)
        if "occupancy" in branches and "occupancy" in c.modalities:
            oc = D.occupancy_to_model(context["occupancy"].to(dev))  # (B, K, Z*5, X, Y)
            out["occupancy_ctx"] = oc.flatten(1, 2)
            out["occupancy_last_model"] = oc[:, K - 1]
            out["occupancy_last"] = context["occupancy"][:, K - 1].to(dev)
            if c.occupancy_warp:
                if all(k in context for k in OCC_MEMORY_KEYS):
                    out |= {k: context[k].to(dev) for k in OCC_MEMORY_KEYS}
                self.occupancy_base(out)
        return out

    def frame_base(self, ctx: dict[str, torch.Tensor], next_motion: torch.Tensor | None = None, warp: torch.Tensor | None = None) -> None:
        """Set the frame the next frame's change is measured from (``ego_warp`` models), in ``ctx``.

        Where ``warp`` (B,) is true (default: all, when ``next_motion`` (B, 227) is given) it is
        the last frame reprojected to the head pose of ``next_motion``; elsewhere the last frame
        itself. ``ego_base_valid`` marks the pixels the reprojection filled (0 everywhere for an
        unwarped base), and is an input of the frame branch with the base itself.

        With a scene memory in ``ctx`` (``MEMORY_KEYS``: a real frame of this rollout), the
        pixels that the memory frame reprojected to the next pose covers come from it instead:
        one reprojection of a real frame rather than a chain of reprojections of dreamed ones,
        which blur and drift step after step.
        """
        rgb, depth = ctx["ego_rgb_last"].float(), ctx["ego_depth_last"]
        B = rgb.shape[0]
        valid = torch.zeros(B, 1, *rgb.shape[-2:], device=rgb.device)
        if next_motion is not None:
            w = torch.ones(B, dtype=torch.bool, device=rgb.device) if warp is None else warp.to(rgb.device).bool()
            if bool(w.any()):
                nm = next_motion.to(rgb.device, torch.float32)
                wr, wd, wv = warp_frame(rgb, depth, ctx["motion_last"], nm)
                if "memory_rgb" in ctx:
                    mr, md, mv = warp_frame(ctx["memory_rgb"].float(), ctx["memory_depth"].float(), ctx["memory_motion"].float(), nm)
                    wr, wd, wv = torch.where(mv, mr, wr), torch.where(mv, md, wd), wv | mv
                sel = w.view(B, 1, 1, 1)
                rgb, depth = torch.where(sel, wr, rgb), torch.where(sel, wd, depth)
                valid = (wv & sel).float()
        ctx["ego_base_rgb"], ctx["ego_base_depth"] = rgb, depth
        if next_motion is None and "ego_last_model" in ctx:  # unwarped: the last frame, already converted
            ctx["ego_base_model"] = ctx["ego_last_model"]
        else:
            ctx["ego_base_model"] = D.frames_to_model(rgb, depth, self.config.resolution)
        r = self.config.resolution
        ctx["ego_base_valid"] = valid if valid.shape[-1] == r else F.interpolate(valid, size=(r, r), mode="area")

    def occupancy_base(
        self,
        ctx: dict[str, torch.Tensor],
        next_motion: torch.Tensor | None = None,
        next_partner: torch.Tensor | None = None,
        warp: torch.Tensor | None = None,
    ) -> None:
        """Set the grid the next occupancy's change is measured from (``occupancy_warp`` models), in
        ``ctx``: where ``warp`` (B,) is true (default: all, when the next bodies (B, 227) are given)
        the last grid carried into the next heading frame with both bodies redrawn
        (``D.warp_occupancy``), elsewhere the last grid; ``occupancy_base_valid`` (B, 1, X, Y)
        marks the columns the carried grid covers (0 for an unwarped base).

        With a scene memory in ``ctx`` (``OCC_MEMORY_KEYS``: a real grid of this rollout), the
        columns that grid carried to the next bodies covers come from it instead: one resampling
        of a real grid rather than a chain of resamplings of dreamed ones."""
        last = ctx["occupancy_last"]
        B = last.shape[0]
        base_model, valid = ctx["occupancy_last_model"], torch.zeros(B, 1, *last.shape[-2:], device=last.device)
        if next_motion is not None and next_partner is not None:
            w = torch.ones(B, dtype=torch.bool, device=last.device) if warp is None else warp.to(last.device).bool()
            if bool(w.any()):
                nm, npart = next_motion.to(last.device, torch.float32), next_partner.to(last.device, torch.float32)
                grid, gv = D.warp_occupancy(last, ctx["motion_last"], nm, npart, self.config.occupancy_voxel)
                if "memory_occupancy" in ctx:
                    mg, mv = D.warp_occupancy(ctx["memory_occupancy"], ctx["memory_motion"].float(), nm, npart, self.config.occupancy_voxel)
                    grid, gv = torch.where(mv, mg, grid), gv | mv
                sel = w.view(B, 1, 1, 1)
                base_model = torch.where(sel, D.occupancy_to_model(grid), base_model)
                valid = (gv & sel).float()
        ctx["occupancy_base_model"], ctx["occupancy_base_valid"] = base_model, valid

    def targets(self, window: Mapping[str, torch.Tensor], ctx: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The normalised next-step changes x0 of each modality from a (B, K+1, ...) window."""
        c, K, nm = self.config, self.config.context, self.norm
        dev = self.device
        x0 = {}
        if "motion" in window:
            nxt_m = window["motion"][:, K].to(dev, torch.float32)
            x0["motion"] = (D.motion_delta(ctx["motion_last"], nxt_m) - nm.motion_delta_mean) / nm.motion_delta_std
        if "partner_motion" in window:
            nxt_p = window["partner_motion"][:, K].to(dev, torch.float32)
            x0["partner_motion"] = (D.motion_delta(ctx["partner_last"], nxt_p) - nm.partner_delta_mean) / nm.partner_delta_std
        if "props" in window:
            nxt_props = window["props"][:, K].to(dev, torch.float32)
            x0["props"] = D.props_delta(ctx["props_last"], nxt_props, ctx["motion_last"]) / nm.props_delta_std
        if "ego_ctx" in ctx and "ego_rgb" in window:
            fr = D.frames_to_model(
                window["ego_rgb"][:, K].to(dev), window["ego_depth"][:, K].to(dev) if c.ego_depth else None, c.resolution
            )
            base = ctx.get("ego_base_model", ctx["ego_last_model"])
            x0["ego"] = (fr - base) / nm.frame_delta_std.view(1, -1, 1, 1)
        if "occupancy_ctx" in ctx and "occupancy" in window:
            oc = D.occupancy_to_model(window["occupancy"][:, K].to(dev))
            x0["occupancy"] = (oc - ctx.get("occupancy_base_model", ctx["occupancy_last_model"])) / 2.0 / nm.occupancy_delta_std
        return x0

    # ------------------------------------------------------------------ the denoiser
    def _action_embedding(self, ctx: Mapping[str, torch.Tensor]) -> torch.Tensor:
        a = ctx["actions"]
        # the action being applied now appears twice (alone and in the history): it matters most
        feats = torch.cat([a[:, -1], a.flatten(1)], dim=1)
        emb = self.action_mlp(feats) + self.instruction(ctx["instruction"])
        if self.config.partner_actions:
            emb = emb + self.partner_action_mlp(ctx["partner_feats"])
        return emb

    def denoise(
        self, ctx: Mapping[str, torch.Tensor], x: Mapping[str, torch.Tensor], sigma: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """D(x; sigma) for every modality in ``x`` (normalised changes); sigma (B,) per modality, 0 = clean.

        The U-Net branches whose modality is not in ``x`` are absent (not run).
        """
        c = self.config
        p = c.edm
        B = ctx["motion_ctx"].shape[0]
        pre = {m: edm.precondition(sigma[m], p.sigma_data) for m in x}
        zero = torch.zeros(B, device=self.device)
        sig_emb = []
        for i, m in enumerate(D.MODALITIES):
            cn = pre[m][3] if m in pre else torch.full_like(zero, edm.CLEAN_LOG_SIGMA / 4)
            sig_emb.append(self.sigma_mlp(fourier_embedding(cn, c.dim)) + self.modality_emb[i])
        g = self._action_embedding(ctx) + self.sigma_mix(torch.cat(sig_emb, dim=1))  # (B, d)
        mod_cond = {m: g + sig_emb[i] for i, m in enumerate(D.MODALITIES)}

        # the bodies are denoised around the prior: x - prior in, prior + D(residual) out
        mu = {m: ctx[f"prior_{m}"].detach() for m in ("motion", "partner_motion") if m in x and f"prior_{m}" in ctx}
        x = {m: (v - mu[m] if m in mu else v) for m, v in x.items()}

        def scaled(m: str) -> torch.Tensor:
            return x[m] * edm.expand(pre[m][2], x[m])

        # state tokens
        toks, conds = [], []
        for m, ctx_key in (("motion", "motion_ctx"), ("partner_motion", "partner_ctx")):
            r_in, j_in = D.motion_tokens(scaled(m))  # (B, 7), (B, 22, 10)
            r_ctx, j_ctx = D.motion_tokens(ctx[ctx_key])  # (B, K, 7), (B, K, 22, 10)
            if c.state_prior:
                r_mu, j_mu = D.motion_tokens(mu[m] if m in mu else ctx[f"prior_{m}"].detach())
                r_in, j_in = torch.cat([r_in, r_mu], -1), torch.cat([j_in, j_mu], -1)
            root = self.in_root[m](torch.cat([r_in, r_ctx.flatten(1)], -1))[:, None]
            joints = self.in_joint[m](torch.cat([j_in, j_ctx.transpose(1, 2).flatten(2)], -1))
            if m == "motion" and c.action_tokens:
                a = ctx["actions"]
                acts = torch.cat([a[:, -1], a.flatten(1)], dim=1)
                root = root + self.act_root(acts)[:, None]
                joints = joints + self.act_joint(acts)[:, None]
            if m == "partner_motion" and c.partner_actions:
                root = root + self.pact_root(ctx["partner_feats"])[:, None]
                joints = joints + self.pact_joint(ctx["partner_feats"])[:, None]
            toks += [root, joints]
            conds.append(mod_cond[m][:, None].expand(B, 23, -1))
        pr = self.in_props(torch.cat([scaled("props"), ctx["props_ctx"].transpose(1, 2).flatten(2)], -1))
        toks.append(pr)
        conds.append(mod_cond["props"][:, None].expand(B, D.N_PROPS, -1))
        state = torch.cat(toks, 1) + self.state_pos
        # U-Net encoders
        enc = {}
        n_grid = c.grid_tokens**2
        grid_toks = []
        for m in self.branches:
            if m in x:
                inp = torch.cat([scaled(m), ctx[f"{m}_ctx"]], 1)
                if m == "ego" and c.ego_warp:
                    inp = torch.cat([inp, ctx["ego_base_model"], ctx["ego_base_valid"]], 1)
                if m == "occupancy" and c.occupancy_warp:
                    inp = torch.cat([inp, ctx["occupancy_base_model"], ctx["occupancy_base_valid"]], 1)
                h, skips = self.branches[m].encode(inp, mod_cond[m])
                enc[m] = (h, skips)
                grid_toks.append(self.grid[m].tokens(h))
            else:
                grid_toks.append(self.absent[m][None].expand(B, -1, -1))
            conds.append(mod_cond[m][:, None].expand(B, n_grid, -1))
        tokens = torch.cat([g[:, None], state, *grid_toks], 1)
        cond = torch.cat([g[:, None], *conds], 1)
        out = self.transformer(tokens, cond)
        s0 = 1
        st = out[:, s0 : s0 + self.n_state_tokens]
        Fout: dict[str, torch.Tensor] = {}
        i = 0
        for m in ("motion", "partner_motion"):
            root, joints = st[:, i], st[:, i + 1 : i + 23]
            Fout[m] = D.motion_from_tokens(self.out_root[m](root), self.out_joint[m](joints))
            i += 23
        Fout["props"] = self.out_props(st[:, i : i + D.N_PROPS])
        body = st.mean(1)
        gi = s0 + self.n_state_tokens
        for m in self.branches:
            if m in enc:
                h, skips = enc[m]
                h = h + self.grid[m].grid(out[:, gi : gi + n_grid], h.shape[-2:])
                Fout[m] = self.branches[m].decode(h, skips, mod_cond[m] + self.up_emb[m](body))
            gi += n_grid
        res = {}
        for m in x:
            c_skip, c_out, _, _ = pre[m]
            res[m] = edm.expand(c_skip, x[m]) * x[m] + edm.expand(c_out, x[m]) * Fout[m]
            if m in mu:
                res[m] = res[m] + mu[m]
        return res

    def reward_outputs(self, ctx: Mapping[str, torch.Tensor], x0: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Reward head (B, 2 or 3): normalised reward, termination logit (, success logit)."""
        K = self.config.context
        a = self._action_embedding(ctx)
        now = torch.cat([ctx["motion_ctx"][:, K - 1], ctx["partner_ctx"][:, K - 1], ctx["props_ctx"][:, K - 1].flatten(1)], 1)
        nxt = torch.cat([x0["motion"], x0["partner_motion"], x0["props"].flatten(1)], 1)
        return self.reward_head(torch.cat([a, now, nxt], 1))

    # ------------------------------------------------------------------ props dynamics
    def props_step(
        self,
        agent_last: torch.Tensor,
        agent_next: torch.Tensor,
        partner_next: torch.Tensor,
        props_prev: torch.Tensor,
        props_last: torch.Tensor,
    ) -> torch.Tensor:
        """The props network's next props (B, 4, 3) (world frame) from the agent's last motion and
        both bodies' next motion (B, 227) and the props at the last two steps (B, 4, 3)."""
        d = self._props_net(D.props_features(agent_last, agent_next, partner_next, props_prev, props_last)) / D.PROP_STEP_SCALE
        return props_last + D.from_heading(d, D.yaw_of_quat(agent_last[:, D.ROOT_QUAT]))

    def _props_net(self, feats: torch.Tensor) -> torch.Tensor:
        """The props network on (B, 4, PROPS_FEATS) features: displacements in 2 mm units, heading frame."""
        return self.props_net((feats - self.props_feat_mean) / self.props_feat_std)

    def props_passive(
        self, nxt: torch.Tensor, agent_next: torch.Tensor, partner_next: torch.Tensor, props_prev: torch.Tensor, props_last: torch.Tensor
    ) -> torch.Tensor:
        """Keep at rest the props (B, 4, 3) that were at rest and that no joint of either next body
        comes within ``props_contact_radius`` of."""
        c = self.config
        joints = torch.cat([D.joints_world(agent_next), D.joints_world(partner_next)], 1)  # (B, 44, 3)
        reach = (joints[:, None] - props_last[:, :, None]).norm(dim=-1).amin(-1) < c.props_contact_radius  # (B, 4)
        resting = (props_last - props_prev).norm(dim=-1) < c.props_rest_threshold
        return torch.where((resting & ~reach)[..., None], props_last, nxt)

    @torch.no_grad()
    def fit_props_features(self, windows, floor: float = 1e-3) -> None:
        """The props network's feature statistics from (B, K+1, ...) training windows."""
        if not self.config.props_dynamics:
            raise ValueError("fit_props_features: this model has no props_dynamics network")
        feats = []
        for w in windows:
            w = D.with_props(w)
            K = w["motion"].shape[1] - 1
            m, p, pr = w["motion"].float(), w["partner_motion"].float(), w["props"].float()
            feats.append(D.props_features(m[:, K - 1], m[:, K], p[:, K], pr[:, K - 2], pr[:, K - 1]).flatten(0, 1))
        if not feats:
            raise ValueError("fit_props_features got no windows")
        f = torch.cat(feats)
        self.props_feat_mean.copy_(f.mean(0))
        self.props_feat_std.copy_(f.std(0).clamp_min(floor))

    def _next_bodies(
        self, ctx: Mapping[str, torch.Tensor], motion: torch.Tensor, partner: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised body changes -> next motion vectors (agent, partner)."""
        nm = self.norm
        return (
            D.apply_motion_delta(ctx["motion_last"], motion * nm.motion_delta_std + nm.motion_delta_mean),
            D.apply_motion_delta(ctx["partner_last"], partner * nm.partner_delta_std + nm.partner_delta_mean),
        )

    def props_loss(self, window: Mapping[str, torch.Tensor], ctx: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Huber loss of the props network on a state-only (B, K+1, ...) window whose context was
        encoded (``ctx``, with the state prior's outputs): it is fed the prior's next bodies (what
        it gets when dreaming) and learns the recorded step's displacement (``props_recorded_last``
        marks a context whose props were dreamed)."""
        K = self.config.context
        props = window["props"].to(self.device, torch.float32)
        agent_next, partner_next = self._next_bodies(ctx, ctx["prior_motion"].detach(), ctx["prior_partner_motion"].detach())
        f = D.props_features(ctx["motion_last"], agent_next, partner_next, props[:, K - 2], props[:, K - 1])
        pred = self._props_net(f)
        rec_last = window.get("props_recorded_last")
        rec_last = props[:, K - 1] if rec_last is None else rec_last.to(self.device, torch.float32)
        target = D.to_heading(props[:, K] - rec_last, D.yaw_of_quat(ctx["motion_last"][:, D.ROOT_QUAT])) * D.PROP_STEP_SCALE
        return F.smooth_l1_loss(pred, target)

    # ------------------------------------------------------------------ the prior on its own dreams
    @torch.no_grad()
    def prior_rollout(self, window: Mapping[str, torch.Tensor], steps: int) -> dict[str, torch.Tensor]:
        """Dream the bodies ``steps`` steps with the state prior alone, from a window's first K steps.

        ``window``: state-only (P, K+1+steps or more, ...) windows (motion, partner motion, props or
        qpos, actions, partner actions, optional ``partner_known`` (P,)). The bodies advance by the
        prior's regression (what a one-step, zero-noise dream does) under the recorded actions,
        with the recorded props. Returns a (P, K+1, ...) window starting at step ``steps``: its K
        context steps hold the dreamed bodies, step K the recorded ones, and
        ``motion_recorded_last`` / ``partner_motion_recorded_last`` (P, 227) the recorded bodies
        at the last context step (``loss`` takes the root's unobservable change from them).
        """
        c, K = self.config, self.config.context
        if not c.state_prior:
            raise ValueError("prior_rollout needs a model with a state_prior")
        w = D.with_props(window)
        T = w["motion"].shape[1]
        if T < K + 1 + steps:
            raise ValueError(f"prior_rollout: windows of {T} steps cannot hold K={K} context steps, {steps} dreamed and a target")
        dev = self.device
        m = w["motion"][:, :K].to(dev, torch.float32)
        p = w["partner_motion"][:, :K].to(dev, torch.float32)
        pr = w["props"][:, :K].to(dev, torch.float32)
        for j in range(steps):
            obs = {"motion": m, "partner_motion": p, "props": pr if c.props_dynamics else w["props"][:, j : j + K]}
            pa = w["partner_actions"][:, j : j + K] if c.partner_actions else None
            ctx = self.encode_context(obs, w["actions"][:, j : j + K], (), partner_actions=pa, partner_known=w.get("partner_known"))
            nxt_m, nxt_p = self._next_bodies(ctx, ctx["prior_motion"], ctx["prior_partner_motion"])
            if c.props_dynamics:  # the props are dreamed too, by the props network given the dreamed bodies
                nxt_pr = self.props_step(ctx["motion_last"], nxt_m, nxt_p, pr[:, K - 2], pr[:, K - 1])
                pr = torch.cat([pr[:, 1:], nxt_pr[:, None]], 1)
            m = torch.cat([m[:, 1:], nxt_m[:, None]], 1)
            p = torch.cat([p[:, 1:], nxt_p[:, None]], 1)
        out = {k: v[:, steps : steps + K + 1] for k, v in w.items() if v.dim() >= 2 and v.shape[1] == T}
        out["motion"] = torch.cat([m, w["motion"][:, steps + K : steps + K + 1].to(dev, torch.float32)], 1)
        out["partner_motion"] = torch.cat([p, w["partner_motion"][:, steps + K : steps + K + 1].to(dev, torch.float32)], 1)
        if c.props_dynamics:
            out["props"] = torch.cat([pr, w["props"][:, steps + K : steps + K + 1].to(dev, torch.float32)], 1)
            out["props_recorded_last"] = w["props"][:, steps + K - 1].to(dev, torch.float32)
        out["motion_recorded_last"] = w["motion"][:, steps + K - 1].to(dev, torch.float32)
        out["partner_motion_recorded_last"] = w["partner_motion"][:, steps + K - 1].to(dev, torch.float32)
        if "partner_known" in w:
            out["partner_known"] = w["partner_known"]
        return out

    # ------------------------------------------------------------------ training
    def loss(
        self,
        window: Mapping[str, torch.Tensor],
        noise: Mapping[str, torch.Tensor],
        sigma: Mapping[str, torch.Tensor],
        branches: Sequence[str],
        prior_window: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-modality denoising losses (EDM-weighted, i.e. MSE on the network output F) and the
        reward/termination losses, for a (B, K+1, ...) window.

        ``noise`` holds unit Gaussians shaped like each modality's target, ``sigma`` (B,) per
        modality (0 = given clean: no loss for that sample); ``branches`` lists the U-Net
        branches to run (the others are absent). Returns a dict with ``total`` and one entry per term.

        ``prior_window``: a (larger) batch of state-only windows (motion, partner motion, props or
        qpos, actions, partner actions and an optional ``partner_known`` (P,) bool) on which the
        ``state_prior`` MLP is regressed instead of on ``window``: the MLP is cheap, and it needs
        far more samples than the denoiser's batch gives it.
        """
        c, K, nm = self.config, self.config.context, self.norm
        w = D.with_props(window)
        obs = {k: w[k][:, :K] for k in OBS_KEYS if k in w}
        if "instruction" in w:
            obs["instruction"] = w["instruction"]
        pa, known = None, None
        if c.partner_actions:
            if "partner_actions" not in w:
                raise KeyError("this model conditions on the partner's commands, but the training window has no 'partner_actions'")
            pa = w["partner_actions"][:, :K]
            known = noise.get("partner_known")  # (B,) from the trainer: some rows train without them
        ctx = self.encode_context(obs, w["actions"][:, :K], branches, partner_actions=pa, partner_known=known)
        if c.ego_warp and "ego_ctx" in ctx:
            # warp where the next motion is a clean condition (as at inference); elsewhere the
            # base is the last frame, so that the base never leaks a motion being denoised
            self.frame_base(ctx, w["motion"][:, K].to(self.device, torch.float32), sigma["motion"].to(self.device) == 0)
        if c.occupancy_warp and "occupancy_ctx" in ctx:
            # carried to the next bodies where both are clean conditions (as at inference)
            clean = (sigma["motion"].to(self.device) == 0) & (sigma["partner_motion"].to(self.device) == 0)
            self.occupancy_base(ctx, w["motion"][:, K], w["partner_motion"][:, K], clean)
        x0 = self.targets(w, ctx)
        xin, sig = {}, {}
        for m in x0:
            s = sigma[m]
            sig[m] = s
            if c.deterministic:
                # a regression: the modalities it predicts get a zero input at sigma_max (as in
                # ``imagine``), the target never enters; clean ones are conditions
                live = s > 0
                sig[m] = torch.where(live, torch.full_like(s, c.sigma_max), s)
                xin[m] = torch.where(edm.expand(live, x0[m]), torch.zeros_like(x0[m]), x0[m])
            else:
                xin[m] = x0[m] + edm.expand(s, x0[m]) * noise[m]
        den = self.denoise(ctx, xin, sig)
        out: dict[str, torch.Tensor] = {}
        total = x0["motion"].new_zeros(())
        for m in x0:
            s = sig[m]
            c_skip, c_out, _, _ = edm.precondition(s, c.sigma_data)
            live = s > 0
            # EDM's weighted loss lambda(sigma) * |D - x0|^2 equals |F - F_target|^2
            err = (den[m] - x0[m]) / edm.expand(c_out.clamp_min(1e-8), x0[m])
            if m == "motion" and (c.root_loss_weight != 1.0 or c.camera_loss_weight != 1.0):
                wt = torch.ones(err.shape[1], device=err.device)
                wt[camera_feature_index()] = c.camera_loss_weight
                wt[: D.ROOT_FEATS] = c.root_loss_weight
                per = (err.pow(2) * (wt / wt.mean())).mean(1)
            else:
                per = err.pow(2).flatten(1).mean(1)
            # a mean over the whole batch (clean samples count as 0), so that the mean of
            # per-process losses is the loss of the global batch (data-parallel equivalence)
            lm = (per * live).sum() / per.shape[0]
            out[m] = lm
            total = total + lm
        if c.state_prior:
            # the prior regresses the conditional mean of the bodies' changes (plain MSE, the
            # motion's numbers weighted as in its denoising loss)
            pctx, px0 = ctx, x0
            if prior_window is not None:
                pw = D.with_props(prior_window)
                pobs = {k: pw[k][:, :K] for k in ("motion", "partner_motion", "props")}
                ppa = pw["partner_actions"][:, :K] if c.partner_actions else None
                pctx = self.encode_context(pobs, pw["actions"][:, :K], (), partner_actions=ppa, partner_known=pw.get("partner_known"))
                px0 = self.targets({k: pw[k] for k in ("motion", "partner_motion", "props")}, pctx)
                # a context the prior dreamed itself (``prior_rollout``): the target is the recorded
                # next state, so visible drift (height, pose, velocities) is undone; the root's
                # horizontal move and turn stay the recorded step's own, since the context cannot
                # show how far the dreamed root has wandered
                for m, mean, std in (
                    ("motion", nm.motion_delta_mean, nm.motion_delta_std),
                    ("partner_motion", nm.partner_delta_mean, nm.partner_delta_std),
                ):
                    rec = pw.get(f"{m}_recorded_last")
                    if rec is not None:
                        true = (D.motion_delta(rec.to(self.device, torch.float32), pw[m][:, K].to(self.device, torch.float32)) - mean) / std
                        hidden = D.unobservable_root_index()
                        px0[m] = px0[m].clone()
                        px0[m][:, hidden] = true[:, hidden]
            for m in ("motion", "partner_motion"):
                e2 = (pctx[f"prior_{m}"] - px0[m]).pow(2)
                if m == "motion" and (c.root_loss_weight != 1.0 or c.camera_loss_weight != 1.0):
                    wt = torch.ones(e2.shape[1], device=e2.device)
                    wt[camera_feature_index()] = c.camera_loss_weight
                    wt[: D.ROOT_FEATS] = c.root_loss_weight
                    e2 = e2 * (wt / wt.mean())
                out[f"prior_{m}"] = e2.mean()
                total = total + out[f"prior_{m}"]
        if c.props_dynamics:
            out["props_dynamics"] = self.props_loss(D.with_props(prior_window) if prior_window is not None else w, pctx)
            total = total + out["props_dynamics"]
        r = self.reward_outputs(ctx, x0)
        rew = (w["rewards"][:, K - 1].to(r) - self.norm.reward_mean) / self.norm.reward_std
        out["reward"] = F.mse_loss(r[:, 0], rew)
        out["terminated"] = F.binary_cross_entropy_with_logits(r[:, 1], w["terminations"][:, K - 1].to(r).float())
        total = total + out["reward"] + out["terminated"]
        if c.learn_success and "successes" in w:
            out["success"] = F.binary_cross_entropy_with_logits(r[:, 2], w["successes"][:, K - 1].to(r).float())
            total = total + out["success"]
        out["total"] = total
        return out

    def forward(self, window, noise, sigma, branches, prior_window=None):  # noqa: D102 -- training entry (DDP calls forward)
        return self.loss(window, noise, sigma, branches, prior_window)

    # ------------------------------------------------------------------ inference
    def _check_context(self, context: Mapping[str, torch.Tensor], actions: torch.Tensor, branches: Sequence[str]) -> None:
        c, K = self.config, self.config.context
        need = ["motion", "partner_motion", "props"]
        if "ego" in branches:
            need += ["ego_rgb"] + (["ego_depth"] if c.ego_depth else [])
        if "occupancy" in branches:
            need.append("occupancy")
        missing = [k for k in need if k not in context]
        if missing:
            raise KeyError(f"context is missing {missing} (needed for the requested modalities); it has {sorted(context)}")
        B = context["motion"].shape[0]
        want = {
            "motion": (B, K, MOTION_DIM),
            "partner_motion": (B, K, MOTION_DIM),
            "props": (B, K, D.N_PROPS, 3),
            "ego_rgb": (B, K, 3, c.data_resolution, c.data_resolution),
            "ego_depth": (B, K, 1, c.data_resolution, c.data_resolution),
            "occupancy": (B, K, *c.occupancy_shape),
        }
        for k in need:
            if tuple(context[k].shape) != want[k]:
                raise ValueError(f"context[{k!r}] has shape {tuple(context[k].shape)}, expected {want[k]} (B, K={K}, ...)")
        if tuple(actions.shape) != (B, K, c.action_dim):
            raise ValueError(
                f"actions has shape {tuple(actions.shape)}, expected {(B, K, c.action_dim)} (the action after each context step)"
            )
        if not bool(torch.isfinite(actions).all()):
            raise ValueError("actions contain NaN or infinite values")

    @torch.no_grad()
    def imagine(
        self,
        context: Mapping[str, torch.Tensor],
        actions: torch.Tensor,
        num_steps: int = 1,
        modalities: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
        given: Mapping[str, torch.Tensor] | None = None,
        heun: bool = False,
        init_noise: float | None = None,
        partner_actions: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The next step from the last K observations and the actions.

        Args:
            context: (B, K, ...) observations in env dtypes: ``motion``, ``partner_motion``,
                ``props`` (B, K, 4, 3), ``ego_rgb`` (uint8) and ``ego_depth`` (when frames are
                generated), ``occupancy`` (uint8, when generated); optional ``instruction`` (B,).
            actions: (B, K, 6), the action taken after each context step (the last one is the
                action being applied now).
            num_steps: denoising steps (1-3 for RL, more for viewing).
            modalities: observation keys to generate (default: all the model has). Leaving out
                ``ego_rgb`` skips the frame branch entirely (much cheaper); likewise ``occupancy``.
                Motion, partner motion and props are always computed (they are cheap).
            generator: for the initial noise.
            given: next-step values of modalities to condition on (clean, sigma = 0), e.g.
                ``{"motion": (B, 227)}`` for motion -> video, or ``{"ego_rgb": ..., "ego_depth": ...}``
                for video -> motion.
            heun: use Heun's second-order correction (2 network calls per step but the last).
            init_noise: scale of the initial noise (default: ``config.init_noise``); 0 with
                ``num_steps=1`` gives the conditional-mean estimate instead of a sample (for a
                ``state_prior`` model, the bodies' estimate is then the prior's regression).
            partner_actions: (B, K, 6), the partner's commands after each context step, for a
                model with ``config.partner_actions`` (``envs.partner.partner_action`` of its
                script; a dream env passes them). None: unknown (the model guesses the partner).

        An ``ego_warp`` model generating frames without a given motion runs two passes: the
        state modalities first (frames and occupancy absent), then frames and occupancy given
        them; the step's states and reward are the first pass's.

        Returns:
            The next step in env dtypes: ``ego_rgb`` (B, 3, H, W) uint8, ``ego_depth`` (B, 1, H, W),
            ``motion``/``partner_motion`` (B, 227), ``props`` (B, 4, 3), ``occupancy`` (B, Z, X, Y)
            uint8 (those generated or given), ``reward`` (B,), ``terminated`` (B,) bool, and
            ``success`` (B,) bool when the head learned it.
        """
        c = self.config
        given = dict(given or {})
        keys = self.output_keys() if modalities is None else list(modalities)
        gen_mods = {D.modality_of_key(k) for k in keys} | set(D.STATE_MODALITIES)
        given_mods = {D.modality_of_key(k) for k in given}
        for m in gen_mods | given_mods:
            if m not in c.modalities:
                raise ValueError(f"this model does not have modality {m!r}; it has {c.modalities}")
        gen_mods -= given_mods
        branches = [m for m in ("ego", "occupancy") if m in gen_mods | given_mods]
        self._check_context(context, actions, branches)
        if partner_actions is not None:
            if not c.partner_actions:
                raise ValueError(
                    "partner_actions given, but this model was not trained with the partner's commands (config.partner_actions is false)"
                )
            if tuple(partner_actions.shape) != tuple(actions.shape):
                raise ValueError(f"partner_actions has shape {tuple(partner_actions.shape)}, expected {tuple(actions.shape)} like actions")
            if not bool(torch.isfinite(partner_actions).all()):
                raise ValueError("partner_actions contain NaN or infinite values")
        first = None
        if ((c.ego_warp and "ego" in gen_mods) or (c.occupancy_warp and "occupancy" in gen_mods)) and "motion" not in given_mods:
            # two passes: the bodies and props first (state only, cheap), then the frames (and
            # occupancy) given them, relative to the last frame warped to the dreamed head pose
            state_given = {k: v for k, v in given.items() if D.modality_of_key(k) in D.STATE_MODALITIES}
            first = self.imagine(
                context, actions, num_steps, list(D.STATE_MODALITIES), generator, state_given, heun, init_noise, partner_actions
            )
            given |= {k: first[k] for k in D.STATE_MODALITIES}
            gen_mods -= set(D.STATE_MODALITIES)
        ctx = self.encode_context(context, actions, branches, partner_actions=partner_actions)
        if c.ego_warp and "ego" in branches and "motion" in given:
            self.frame_base(ctx, given["motion"])
        if c.occupancy_warp and "occupancy" in branches and "motion" in given and "partner_motion" in given:
            self.occupancy_base(ctx, given["motion"], given["partner_motion"])
        clean = self._given_to_model(given, ctx) if given else {}
        B = ctx["motion_ctx"].shape[0]
        shapes = self._target_shapes(B)
        p = c.edm
        zeros = torch.zeros(B, device=self.device)

        def denoise(x: dict[str, torch.Tensor], sig: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            xx = dict(x) | clean
            ss = dict(sig) | {m: zeros for m in clean}
            return {m: v for m, v in self.denoise(ctx, xx, ss).items() if m in x}

        gen_order = [m for m in D.MODALITIES if m in gen_mods]
        if c.deterministic:
            x0 = denoise(
                {m: torch.zeros(shapes[m], device=self.device) for m in gen_order},
                {m: torch.full_like(zeros, p.sigma_max) for m in gen_order},
            )
        else:
            scale = c.init_noise if init_noise is None else float(init_noise)
            noise = {m: torch.randn(shapes[m], generator=generator, device=self.device) * scale for m in gen_order}
            x0 = edm.sample(denoise, noise, num_steps, p, heun=heun)
            if c.state_prior and num_steps == 1 and scale == 0.0:
                # the one-step conditional-mean estimate of the bodies is the prior's regression:
                # trained on far more samples than the denoiser at sigma_max, and steadier over
                # long dreams (held-out 64-step agent MPJPE 85 vs 125 mm with the denoiser's)
                x0 |= {m: ctx[f"prior_{m}"] for m in ("motion", "partner_motion") if m in x0}
        x0 = x0 | clean
        if c.props_dynamics and "props" not in clean:
            # the props move by the props network, given the bodies just dreamed (or given)
            agent_next, partner_next = self._next_bodies(ctx, x0["motion"], x0["partner_motion"])
            nxt = self.props_step(ctx["motion_last"], agent_next, partner_next, ctx["props_prev"], ctx["props_last"])
            if c.props_contact_radius > 0:
                nxt = self.props_passive(nxt, agent_next, partner_next, ctx["props_prev"], ctx["props_last"])
            x0["props"] = D.props_delta(ctx["props_last"], nxt, ctx["motion_last"]) / self.norm.props_delta_std
        out = self._decode(ctx, x0)
        r = self.reward_outputs(ctx, x0)
        out["reward"] = r[:, 0] * self.norm.reward_std + self.norm.reward_mean
        out["terminated"] = r[:, 1] > 0
        if c.learn_success:
            out["success"] = r[:, 2] > 0
        if first is not None:  # the step's reward is the state pass's (the same states)
            out |= {k: first[k] for k in ("reward", "terminated", "success") if k in first}
        want = set(keys) | set(given)
        return {k: v for k, v in out.items() if k in want or k in ("reward", "terminated", "success")}

    @torch.no_grad()
    def rollout(
        self,
        context: Mapping[str, torch.Tensor],
        actions_future: torch.Tensor,
        past_actions: torch.Tensor | None = None,
        num_steps: int = 1,
        modalities: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
        heun: bool = False,
        init_noise: float | None = None,
        partner_actions: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Dream H steps autoregressively, shifting the context window after each.

        Args:
            context: the last K observations (B, K, ...), as for ``imagine``.
            actions_future: (B, H, 6); ``actions_future[:, 0]`` is applied to the last context step.
            past_actions: (B, K-1, 6), the actions taken after context steps 0..K-2 (default:
                ``context["actions"]`` if present; it may also be (B, K, 6), whose last row is ignored).
            partner_actions: (B, K-1+H, 6), the partner's commands after each context step but the
                last and each dreamed step (models with ``config.partner_actions``; None: unknown).
        Returns:
            (B, H, ...) per key, as ``imagine`` returns per step.
        """
        K = self.config.context
        B, H = actions_future.shape[:2]
        if past_actions is None:
            past_actions = context.get("actions")
            if past_actions is None:
                if K > 1:
                    raise ValueError(f"rollout needs past_actions (B, {K - 1}, 6): the actions taken after the first K-1 context steps")
                past_actions = actions_future.new_zeros(B, 0, actions_future.shape[-1])
        past_actions = past_actions[:, : K - 1].to(actions_future)
        if tuple(past_actions.shape[:2]) != (B, K - 1):
            raise ValueError(f"past_actions has shape {tuple(past_actions.shape)}, expected {(B, K - 1, actions_future.shape[-1])}")
        keys = self.output_keys() if modalities is None else list(modalities)
        obs_keys = [k for k in OBS_KEYS if k in context]
        ctx = {k: context[k] for k in obs_keys}
        if "instruction" in context:
            ctx["instruction"] = context["instruction"]
        ctx |= {k: context[k] for k in MEMORY_KEYS + OCC_MEMORY_KEYS if k in context} or self.scene_memory(context)
        if partner_actions is not None and tuple(partner_actions.shape[:2]) != (B, K - 1 + H):
            raise ValueError(f"partner_actions has shape {tuple(partner_actions.shape)}, expected {(B, K - 1 + H, 6)} (B, K-1+H, 6)")
        frames = []
        acts = past_actions
        for h in range(H):
            acts = torch.cat([acts, actions_future[:, h : h + 1]], 1)[:, -K:]
            pa = None if partner_actions is None else partner_actions[:, h : h + K].to(acts)
            step = self.imagine(
                ctx, acts, num_steps=num_steps, modalities=keys, generator=generator, heun=heun, init_noise=init_noise, partner_actions=pa
            )
            frames.append(step)
            for k in obs_keys:
                if k in step:
                    ctx[k] = torch.cat([ctx[k][:, 1:].to(step[k].device), step[k][:, None].to(ctx[k].dtype)], 1)
        return {k: torch.stack([f[k] for f in frames], 1) for k in frames[0]}

    def scene_memory(self, context: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The scene memory entries for a rollout that starts from ``context``: its last (real)
        frame, depth and motion (``MEMORY_KEYS``, ``ego_warp`` models) and its last occupancy grid
        (``OCC_MEMORY_KEYS``, ``occupancy_warp`` models). Add them to the context passed to every
        ``imagine`` call of the rollout (``rollout`` does); empty when the model warps nothing
        the context holds."""
        c, mem = self.config, {}
        if "motion" not in context:
            return mem
        if c.ego_warp and all(k in context for k in ("ego_rgb", "ego_depth")):
            mem |= {"memory_rgb": context["ego_rgb"][:, -1], "memory_depth": context["ego_depth"][:, -1]}
        if c.occupancy_warp and "occupancy" in context:
            mem["memory_occupancy"] = context["occupancy"][:, -1]
        if mem:
            mem["memory_motion"] = context["motion"][:, -1]
        return mem

    def output_keys(self) -> list[str]:
        """The observation keys this model generates."""
        keys = []
        for m in self.config.modalities:
            if m == "ego":
                keys += ["ego_rgb"] + (["ego_depth"] if self.config.ego_depth else [])
            else:
                keys.append(m)
        return keys

    def _target_shapes(self, B: int) -> dict[str, tuple[int, ...]]:
        c = self.config
        return {
            "ego": (B, c.n_frame_channels, c.resolution, c.resolution),
            "motion": (B, MOTION_DIM),
            "partner_motion": (B, MOTION_DIM),
            "props": (B, D.N_PROPS, 3),
            "occupancy": (B, c.n_occ_channels, *c.occupancy_shape[1:]),
        }

    def _given_to_model(self, given: Mapping[str, torch.Tensor], ctx: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Next-step observations given as conditions -> normalised changes (as ``targets``)."""
        K = self.config.context
        if "ego_depth" in given and "ego_rgb" not in given:
            raise KeyError("given ego frames need 'ego_rgb' (and 'ego_depth' when the model has depth)")
        if "ego_rgb" in given and self.config.ego_depth and "ego_depth" not in given:
            raise KeyError("this model has depth: given ego frames need 'ego_depth' beside 'ego_rgb'")
        # a (B, K+1, ...) window whose index K is the given value (``targets`` reads only index K)
        win = {k: v.to(self.device)[:, None].expand(-1, K + 1, *v.shape[1:]) for k, v in given.items()}
        return self.targets(win, ctx)

    def _decode(self, ctx: Mapping[str, torch.Tensor], x0: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        nm = self.norm
        out = {
            "motion": D.apply_motion_delta(ctx["motion_last"], x0["motion"] * nm.motion_delta_std + nm.motion_delta_mean),
            "partner_motion": D.apply_motion_delta(
                ctx["partner_last"], x0["partner_motion"] * nm.partner_delta_std + nm.partner_delta_mean
            ),
            "props": D.apply_props_delta(ctx["props_last"], x0["props"] * nm.props_delta_std, ctx["motion_last"]),
        }
        if self.config.props_rest_threshold > 0:
            moved = (out["props"] - ctx["props_last"]).norm(dim=-1, keepdim=True) >= self.config.props_rest_threshold
            out["props"] = torch.where(moved, out["props"], ctx["props_last"])
        if "ego" in x0:
            change = x0["ego"] * nm.frame_delta_std.view(1, -1, 1, 1)
            rgb, depth = D.frames_from_model(
                ctx.get("ego_base_rgb", ctx["ego_rgb_last"]), ctx.get("ego_base_depth", ctx.get("ego_depth_last")), change
            )
            out["ego_rgb"] = rgb
            if depth is not None:
                out["ego_depth"] = depth
        if "occupancy" in x0:
            out["occupancy"] = D.occupancy_from_model(
                ctx.get("occupancy_base_model", ctx["occupancy_last_model"]) + 2.0 * x0["occupancy"] * nm.occupancy_delta_std
            )
        return out

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path, state_dict: Mapping[str, torch.Tensor] | None = None) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``directory`` (created)."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        sd = state_dict if state_dict is not None else self.state_dict()
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in sd.items()},
            str(d / WEIGHTS_NAME),
            metadata={"format": "pt", "dreamgym": "worldmodel"},
        )
        (d / CONFIG_NAME).write_text(json.dumps({"format_version": FORMAT_VERSION, **self.config.to_dict()}, indent=2) + "\n")
        return d

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> WorldModel:
        """Load a model saved by ``save_pretrained``: a directory, or its ``model.safetensors``
        (``config.json`` beside it). Raises with the file and the problem when a file is missing,
        not safetensors, truncated, or does not match the config."""
        p = Path(path)
        if p.is_dir():
            weights, config = p / WEIGHTS_NAME, p / CONFIG_NAME
        else:
            weights, config = p, p.parent / CONFIG_NAME
        for f in (weights, config):
            if not f.exists():
                raise FileNotFoundError(f"world-model checkpoint file not found: {f}")
        try:
            cfg_dict = json.loads(config.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{config}: not a valid JSON world-model config ({e})") from None
        if not isinstance(cfg_dict, dict):
            raise ValueError(f"{config}: expected a JSON object, got {type(cfg_dict).__name__}")
        cfg = WorldModelConfig.from_dict(cfg_dict, source=str(config))
        sd = load_safetensors(weights)
        model = cls(cfg)
        check_state_dict(model, sd, weights, config)
        model.load_state_dict(sd)
        return model.to(device).eval()


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a clear ``ValueError`` naming the file if it is not one or is cut short."""
    from safetensors.torch import load_file

    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise ValueError(f"{path}: not a safetensors file (only {size} bytes)")
    n = int.from_bytes(head, "little")
    if n <= 0 or n > 100_000_000 or 8 + n > size:
        raise ValueError(f"{path}: not a safetensors file, or truncated (header length {n} does not fit in its {size} bytes)")
    with open(path, "rb") as f:
        f.seek(8)
        header = f.read(n)
    try:
        meta = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path}: not a safetensors file (its header is not JSON)") from None
    end = max((v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise ValueError(f"{path}: truncated: the header describes {8 + n + end} bytes but the file has {size}")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error type
        raise ValueError(f"{path}: could not read safetensors data ({e})") from None


def check_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], weights: Path, config: Path) -> None:
    """Raise naming the file and the first mismatched tensors when ``sd`` does not fit ``model``."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shape = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        parts = []
        if shape:
            k, got, want = shape[0]
            parts.append(
                f"tensor {k!r} has shape {got} in the file but {want} for the config"
                + (f" (and {len(shape) - 1} more)" if len(shape) > 1 else "")
            )
        if missing:
            parts.append(f"missing tensors {missing[:3]}" + (f" (+{len(missing) - 3})" if len(missing) > 3 else ""))
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:3]}" + (f" (+{len(unexpected) - 3})" if len(unexpected) > 3 else ""))
        raise ValueError(f"{weights} does not match the config {config}: " + "; ".join(parts))


def load_default(device: str | torch.device = "cpu") -> WorldModel:
    """The embedded default world model (``worldmodel/default``), trained as its TRAINING.md says."""
    return WorldModel.from_pretrained(DEFAULT_CHECKPOINT, device=device)
