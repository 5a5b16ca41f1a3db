"""The denoiser network: its layers, the inputs it reads and the one call that denoises.

``WorldModelNetwork`` holds every weight of a world model (``WorldModel`` adds sampling, the loss,
decoding and checkpoints on top, in their own modules) and defines:

- ``encode_context``: normalised model inputs from K context steps and the actions (plus, for a
  ``state_prior`` model, the prior's regression of both bodies' next change);
- ``frame_base`` / ``occupancy_base``: the frame and grid the next change is measured from
  (``ego_warp`` / ``occupancy_warp``: the last one carried to the next bodies);
- ``targets``: the normalised next-step changes x0 of a training window;
- ``denoise``: D(x; sigma) for every modality at once (EDM preconditioning, one network call);
- ``reward_outputs``: the reward / termination head;
- the props network (``props_step``), for ``props_dynamics`` models.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dreamgym.envs.motion import MOTION_DIM

from . import data as D
from . import edm
from . import render as R
from .blocks import GridTokens, TokenTransformer, UNetBranch, fourier_embedding, segment_index
from .config import ArchitectureConfig
from .warp import warp_frame

_STATE_TOKENS = {"motion": (1, 24), "partner_motion": (24, 47), "props": (47, 47 + D.N_PROPS)}  # token rows after the global one


@functools.cache
def state_token_index(modalities: tuple[str, ...], device: torch.device) -> torch.Tensor:
    """(T',) long: the transformer rows of the body/prop ``modalities``' tokens (made once per device)."""
    return torch.cat([torch.arange(*_STATE_TOKENS[m]) for m in modalities]).to(device)


OBS_KEYS = ("ego_rgb", "ego_depth", "motion", "partner_motion", "props", "occupancy")
# Scene memory of an ``ego_warp`` dream (see ``WorldModel.scene_memory``): a real frame, its depth
# and the motion it was seen from, carried unchanged through a rollout's contexts.
MEMORY_KEYS = ("memory_rgb", "memory_depth", "memory_motion")
# ... and of an ``occupancy_warp`` model: the rollout's real occupancy grid and the motion it was seen from
OCC_MEMORY_KEYS = ("memory_occupancy", "memory_motion")


class WorldModelNetwork(nn.Module):
    """The layers of a world model of architecture ``config`` and the denoiser call over them."""

    def __init__(self, config: ArchitectureConfig):
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
            if m == "ego" and c.ego_render:
                extra += R.N_RENDER + 2  # the render's classes, its depth and where the memory painted it
            self.branches[m] = UNetBranch(n_in * (K + 1) + extra, n_in, ch, d, c.layers_per_block, c.groups)
            self.grid[m] = GridTokens(ch[-1], d, c.grid_tokens)
            self.absent[m] = nn.Parameter(torch.randn(n_grid, d) * 0.02)
            self.up_emb[m] = nn.Linear(d, d)
        # reward / termination head: context + action + (predicted) next state
        n_state = 2 * MOTION_DIM + 3 * D.N_PROPS
        self.reward_head = nn.Sequential(
            nn.Linear(2 * n_state + d, c.reward_hidden),
            nn.SiLU(),
            nn.Linear(c.reward_hidden, c.reward_hidden),
            nn.SiLU(),
            nn.Linear(c.reward_hidden, 2),
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
            if c.ego_render and "occupancy" in context:
                out["occupancy_last"] = context["occupancy"][:, K - 1].to(dev)
                if "memory_occupancy" in context:
                    out["memory_occupancy"] = context["memory_occupancy"].to(dev)
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

    def frame_base(
        self,
        ctx: dict[str, torch.Tensor],
        next_motion: torch.Tensor | None = None,
        warp: torch.Tensor | None = None,
        next_partner: torch.Tensor | None = None,
        render: torch.Tensor | None = None,
    ) -> None:
        """Set the frame the next frame's change is measured from (``ego_warp`` models), in ``ctx``.

        Where ``warp`` (B,) is true (default: all, when ``next_motion`` (B, 227) is given) it is
        the last frame reprojected to the head pose of ``next_motion``; elsewhere the last frame
        itself. ``ego_base_valid`` marks the pixels the reprojection filled (0 everywhere for an
        unwarped base), and is an input of the frame branch with the base itself.

        With a scene memory in ``ctx`` (``MEMORY_KEYS``: a real frame of this rollout), the
        pixels that the memory frame reprojected to the next pose covers come from it instead:
        one reprojection of a real frame rather than a chain of reprojections of dreamed ones,
        which blur and drift step after step.

        An ``ego_render`` model also draws the next grid into the next head pose (``render_base``)
        where ``render`` (B,) is true (default: where it warps, when ``next_partner`` is given):
        its painted colours and depth fill the pixels no reprojection reached.
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
        if self.config.ego_render:
            rw = None
            if next_motion is not None and next_partner is not None:
                every = torch.ones(B, dtype=torch.bool, device=rgb.device)
                rw = render if render is not None else (every if warp is None else warp)
                rw = rw.to(rgb.device).bool()
            rgb, depth = self.render_base(ctx, rgb, depth, valid > 0, next_motion, next_partner, rw)
        ctx["ego_base_rgb"], ctx["ego_base_depth"] = rgb, depth
        if next_motion is None and "ego_last_model" in ctx:  # unwarped: the last frame, already converted
            ctx["ego_base_model"] = ctx["ego_last_model"]
        else:
            ctx["ego_base_model"] = D.frames_to_model(rgb, depth, self.config.resolution)
        r = self.config.resolution
        ctx["ego_base_valid"] = valid if valid.shape[-1] == r else F.interpolate(valid, size=(r, r), mode="area")

    def carried_grid(self, ctx: dict[str, torch.Tensor], next_motion: torch.Tensor, next_partner: torch.Tensor):
        """The last grid (or, where it covers, the scene memory's) carried to the next bodies:
        (B, Z, X, Y) uint8 and its valid columns (B, 1, X, Y); computed once per context."""
        if "carried_grid" not in ctx:
            last = ctx["occupancy_last"]
            nm, npart = next_motion.to(last.device, torch.float32), next_partner.to(last.device, torch.float32)
            grid, gv = D.warp_occupancy(last, ctx["motion_last"], nm, npart, self.config.occupancy_voxel)
            if "memory_occupancy" in ctx:
                mg, mv = D.warp_occupancy(ctx["memory_occupancy"], ctx["memory_motion"].float(), nm, npart, self.config.occupancy_voxel)
                grid, gv = torch.where(mv, mg, grid), gv | mv
            ctx["carried_grid"], ctx["carried_valid"] = grid, gv
        return ctx["carried_grid"], ctx["carried_valid"]

    def render_base(
        self,
        ctx: dict[str, torch.Tensor],
        rgb: torch.Tensor,
        depth: torch.Tensor,
        reprojected: torch.Tensor,
        next_motion: torch.Tensor | None,
        next_partner: torch.Tensor | None,
        rows: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill the frame base's holes from the next grid drawn into the next head pose, and set
        ``ctx["ego_render"]`` (B, N_RENDER + 2, r, r): the render's one-hot classes, its depth
        (over ``MAX_DEPTH``) and where the colour memory painted it (zeros on the rows not
        rendered, ``rows`` false or None). The colours come from a real frame of the rollout: the
        scene memory's when the context has one, else the last context frame."""
        c, r = self.config, self.config.resolution
        B, _, H, W = rgb.shape
        feats = torch.zeros(B, R.N_RENDER + 2, H, W, device=rgb.device)
        if rows is not None and "occupancy_last" in ctx and bool(rows.any()):
            grid, _ = self.carried_grid(ctx, next_motion, next_partner)
            nm = next_motion.to(rgb.device, torch.float32)
            cls, rdepth, pts = R.render_grid(grid, nm, H, W, c.occupancy_voxel)
            if "memory_rgb" in ctx and "memory_occupancy" in ctx:
                src = (ctx["memory_rgb"], ctx["memory_depth"], ctx["memory_motion"], ctx["memory_occupancy"])
            else:
                src = (ctx["ego_rgb_last"], ctx["ego_depth_last"], ctx["motion_last"], ctx["occupancy_last"])
            mem = R.colour_memory(src[0], src[1].float(), src[2].float(), src[3], c.occupancy_voxel)
            col, known = R.paint(cls, pts, mem, c.occupancy_voxel)
            sel = rows.view(B, 1, 1, 1)
            fill = sel & known & ~reprojected
            rgb = torch.where(fill, col, rgb)
            depth = torch.where(fill, rdepth, depth)
            onehot = F.one_hot(cls, R.N_RENDER).permute(0, 3, 1, 2).float()
            feats = torch.where(sel, torch.cat([onehot, rdepth / R.SKY_DEPTH, known.float()], 1), feats)
        ctx["ego_render"] = feats if H == r else F.interpolate(feats, size=(r, r), mode="area")
        return rgb, depth

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
                grid, gv = self.carried_grid(ctx, next_motion, next_partner)
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

    def _state_tokens(
        self, ctx: Mapping[str, torch.Tensor], scaled: Callable[[str], torch.Tensor], mu: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """The body and prop tokens (B, 50, d): each body's root and 22 joints (its noisy input
        ``scaled(m)``, the prior's estimate, the context, the actions), then the four props."""
        c = self.config
        toks = []
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
        pr = self.in_props(torch.cat([scaled("props"), ctx["props_ctx"].transpose(1, 2).flatten(2)], -1))
        toks.append(pr)
        return torch.cat(toks, 1) + self.state_pos

    def denoise(
        self,
        ctx: Mapping[str, torch.Tensor],
        x: Mapping[str, torch.Tensor],
        sigma: Mapping[str, torch.Tensor],
        outputs: Collection[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """D(x; sigma) for every modality in ``x`` (normalised changes); sigma (B,) per modality, 0 = clean.

        The U-Net branches whose modality is not in ``x`` are absent (not run). ``outputs`` (default
        every modality of ``x``): the modalities whose estimates the caller reads, the only ones
        returned; when they are body or prop modalities only, the transformer's last block computes
        their tokens only (every token still attended to), and the other heads do not run.
        """
        c = self.config
        want = set(x) if outputs is None else set(outputs) & set(x)
        if not want:
            return {}
        B = ctx["motion_ctx"].shape[0]
        pre = {m: edm.precondition(sigma[m], c.sigma_data) for m in x}
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

        state = self._state_tokens(ctx, scaled, mu)
        # U-Net encoders
        enc = {}
        n_grid = c.grid_tokens**2
        grid_toks = []
        for m in self.branches:
            if m in x:
                inp = torch.cat([scaled(m), ctx[f"{m}_ctx"]], 1)
                if m == "ego" and c.ego_warp:
                    inp = torch.cat([inp, ctx["ego_base_model"], ctx["ego_base_valid"]], 1)
                if m == "ego" and c.ego_render:
                    inp = torch.cat([inp, ctx["ego_render"]], 1)
                if m == "occupancy" and c.occupancy_warp:
                    inp = torch.cat([inp, ctx["occupancy_base_model"], ctx["occupancy_base_valid"]], 1)
                h, skips = self.branches[m].encode(inp, mod_cond[m])
                enc[m] = (h, skips)
                grid_toks.append(self.grid[m].tokens(h))
            else:
                grid_toks.append(self.absent[m][None].expand(B, -1, -1))
        tokens = torch.cat([g[:, None], state, *grid_toks], 1)
        # one conditioning row per run of tokens that share it (global, each modality): the
        # transformer modulates once per row instead of once per token (the same numbers)
        rows = torch.stack([g, *(mod_cond[m] for m in ("motion", "partner_motion", "props", *self.branches))], 1)
        lengths = (1, 23, 23, D.N_PROPS, *(n_grid for _ in self.branches))
        keep = None
        if not want & set(self.branches):  # body/prop tokens only: the last block computes no others
            keep = state_token_index(tuple(sorted(want)), tokens.device)
        out = self.transformer(tokens, rows, segment_index(lengths, tokens.device), keep)
        if keep is not None:  # back to the full layout (the unread rows stay zero and are never used)
            out = out.new_zeros(B, tokens.shape[1], out.shape[-1]).index_copy(1, keep, out)
        s0 = 1
        st = out[:, s0 : s0 + self.n_state_tokens]
        Fout: dict[str, torch.Tensor] = {}
        i = 0
        for m in ("motion", "partner_motion"):
            if m in want:
                root, joints = st[:, i], st[:, i + 1 : i + 23]
                Fout[m] = D.motion_from_tokens(self.out_root[m](root), self.out_joint[m](joints))
            i += 23
        if "props" in want:
            Fout["props"] = self.out_props(st[:, i : i + D.N_PROPS])
        body = st.mean(1)
        gi = s0 + self.n_state_tokens
        for m in self.branches:
            if m in enc and m in want:
                h, skips = enc[m]
                h = h + self.grid[m].grid(out[:, gi : gi + n_grid], h.shape[-2:])
                Fout[m] = self.branches[m].decode(h, skips, mod_cond[m] + self.up_emb[m](body))
            gi += n_grid
        res = {}
        for m in (m for m in x if m in want):
            c_skip, c_out, _, _ = pre[m]
            res[m] = edm.expand(c_skip, x[m]) * x[m] + edm.expand(c_out, x[m]) * Fout[m]
            if m in mu:
                res[m] = res[m] + mu[m]
        return res

    def reward_outputs(self, ctx: Mapping[str, torch.Tensor], x0: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Reward head (B, 2): normalised reward, termination logit."""
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
