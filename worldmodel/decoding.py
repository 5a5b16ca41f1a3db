"""Decoding a dreamed step: normalised changes -> observations in env dtypes, reward and termination.

The decoding rules that change no weights come from the ``SamplerConfig``: a predicted prop
displacement under ``props_rest_threshold`` is dropped, and (props network models) a resting prop
that no joint of either body comes within ``props_contact_radius`` of stays at rest.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from . import data as D
from .config import SamplerConfig


class DecodingMixin:
    """``_decode_step``, ``_decode`` and ``props_passive``, for ``WorldModel``."""

    def _decode_step(self, ctx: Mapping[str, torch.Tensor], x0: dict[str, torch.Tensor], move_props: bool, s: SamplerConfig) -> dict:
        """The step's observations, reward and termination from its changes ``x0``; with
        ``move_props`` a props network model moves the props given the bodies just dreamed (or given)."""
        if self.config.props_dynamics and move_props:
            agent_next, partner_next = self._next_bodies(ctx, x0["motion"], x0["partner_motion"])
            nxt = self.props_step(ctx["motion_last"], agent_next, partner_next, ctx["props_prev"], ctx["props_last"])
            if s.props_contact_radius > 0:
                nxt = self.props_passive(nxt, agent_next, partner_next, ctx["props_prev"], ctx["props_last"], s)
            x0["props"] = D.props_delta(ctx["props_last"], nxt, ctx["motion_last"]) / self.norm.props_delta_std
        out = self._decode(ctx, x0, s)
        r = self.reward_outputs(ctx, x0)
        out["reward"] = r[:, 0] * self.norm.reward_std + self.norm.reward_mean
        out["terminated"] = r[:, 1] > 0
        return out

    def _decode(
        self, ctx: Mapping[str, torch.Tensor], x0: Mapping[str, torch.Tensor], sampler: SamplerConfig | None = None
    ) -> dict[str, torch.Tensor]:
        """Normalised changes -> next observations (env dtypes), under ``sampler``'s rules (default: the model's)."""
        s = self.sampler if sampler is None else sampler
        nm = self.norm
        out = {
            "motion": D.apply_motion_delta(ctx["motion_last"], x0["motion"] * nm.motion_delta_std + nm.motion_delta_mean),
            "partner_motion": D.apply_motion_delta(
                ctx["partner_last"], x0["partner_motion"] * nm.partner_delta_std + nm.partner_delta_mean
            ),
            "props": D.apply_props_delta(ctx["props_last"], x0["props"] * nm.props_delta_std, ctx["motion_last"]),
        }
        if s.props_rest_threshold > 0:
            moved = (out["props"] - ctx["props_last"]).norm(dim=-1, keepdim=True) >= s.props_rest_threshold
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

    def props_passive(
        self,
        nxt: torch.Tensor,
        agent_next: torch.Tensor,
        partner_next: torch.Tensor,
        props_prev: torch.Tensor,
        props_last: torch.Tensor,
        sampler: SamplerConfig | None = None,
    ) -> torch.Tensor:
        """Keep at rest the props (B, 4, 3) that were at rest (moved under ``props_rest_threshold``)
        and that no joint of either next body comes within ``props_contact_radius`` of (the
        ``sampler``'s, default the model's)."""
        s = self.sampler if sampler is None else sampler
        joints = torch.cat([D.joints_world(agent_next), D.joints_world(partner_next)], 1)  # (B, 44, 3)
        reach = (joints[:, None] - props_last[:, :, None]).norm(dim=-1).amin(-1) < s.props_contact_radius  # (B, 4)
        resting = (props_last - props_prev).norm(dim=-1) < s.props_rest_threshold
        return torch.where((resting & ~reach)[..., None], props_last, nxt)
