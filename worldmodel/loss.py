"""The world model's training loss (``WorldModel.loss``; the trainer calls it through ``forward``).

Per modality an EDM-weighted denoising loss (MSE on the network output F), for a ``state_prior``
model the prior's regression loss (on its own, larger batch of state-only windows), for a
``props_dynamics`` model the props network's Huber loss, and the reward / termination losses.
The loss weights come from a ``TrainingConfig``; the architecture decides which terms exist.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from . import data as D
from . import edm
from .config import TrainingConfig
from .network import OBS_KEYS


def motion_weights(n: int, root_loss_weight: float, device: torch.device) -> torch.Tensor | None:
    """Per-number weights (n,) of the motion loss, mean 1: the root's change weighs
    ``root_loss_weight`` times the rest (None: all equal)."""
    if root_loss_weight == 1.0:
        return None
    wt = torch.ones(n, device=device)
    wt[: D.ROOT_FEATS] = root_loss_weight
    return wt / wt.mean()


class LossMixin:
    """``loss`` and its parts, for ``WorldModel`` (which supplies the network)."""

    def loss(
        self,
        window: Mapping[str, torch.Tensor],
        noise: Mapping[str, torch.Tensor],
        sigma: Mapping[str, torch.Tensor],
        branches: Sequence[str],
        prior_window: Mapping[str, torch.Tensor] | None = None,
        training: TrainingConfig | None = None,
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

        ``training``: the loss weights (default ``TrainingConfig()``, the shipped run's).
        """
        c, K = self.config, self.config.context
        training = TrainingConfig() if training is None else training
        w = D.with_props(window)
        ctx = self._training_context(w, noise, sigma, branches)
        x0 = self.targets(w, ctx)
        out = self._denoising_losses(ctx, x0, noise, sigma, training)
        if c.state_prior:
            pctx = self._prior_context(prior_window) if prior_window is not None else ctx
            px0 = self._prior_targets(prior_window, pctx) if prior_window is not None else x0
            out |= self._prior_losses(pctx, px0, training)
            if c.props_dynamics:
                out["props_dynamics"] = self.props_loss(D.with_props(prior_window) if prior_window is not None else w, pctx)
        r = self.reward_outputs(ctx, x0)
        rew = (w["rewards"][:, K - 1].to(r) - self.norm.reward_mean) / self.norm.reward_std
        out["reward"] = F.mse_loss(r[:, 0], rew)
        out["terminated"] = F.binary_cross_entropy_with_logits(r[:, 1], w["terminations"][:, K - 1].to(r).float())
        total = x0["motion"].new_zeros(())
        for v in out.values():
            total = total + v
        out["total"] = total
        return out

    def forward(self, window, noise, sigma, branches, prior_window=None, training=None):  # noqa: D102 -- training entry (DDP calls forward)
        return self.loss(window, noise, sigma, branches, prior_window, training)

    def _training_context(
        self, w: Mapping[str, torch.Tensor], noise: Mapping[str, torch.Tensor], sigma: Mapping[str, torch.Tensor], branches: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """The encoded context of a training window, with the warped bases where the next bodies are clean."""
        c, K = self.config, self.config.context
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
            moved = sigma["motion"].to(self.device) == 0
            both = moved & (sigma["partner_motion"].to(self.device) == 0)  # the render draws both bodies
            self.frame_base(ctx, w["motion"][:, K].to(self.device, torch.float32), moved, w["partner_motion"][:, K], both)
        if c.occupancy_warp and "occupancy_ctx" in ctx:
            # carried to the next bodies where both are clean conditions (as at inference)
            clean = (sigma["motion"].to(self.device) == 0) & (sigma["partner_motion"].to(self.device) == 0)
            self.occupancy_base(ctx, w["motion"][:, K], w["partner_motion"][:, K], clean)
        return ctx

    def _denoising_losses(
        self,
        ctx: Mapping[str, torch.Tensor],
        x0: Mapping[str, torch.Tensor],
        noise: Mapping[str, torch.Tensor],
        sigma: Mapping[str, torch.Tensor],
        training: TrainingConfig,
    ) -> dict[str, torch.Tensor]:
        """The EDM-weighted denoising loss of each modality of ``x0``."""
        c = self.config
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
        for m in x0:
            s = sig[m]
            c_skip, c_out, _, _ = edm.precondition(s, c.sigma_data)
            live = s > 0
            # EDM's weighted loss lambda(sigma) * |D - x0|^2 equals |F - F_target|^2
            err = (den[m] - x0[m]) / edm.expand(c_out.clamp_min(1e-8), x0[m])
            wt = motion_weights(err.shape[1], training.root_loss_weight, err.device) if m == "motion" else None
            per = (err.pow(2) * wt).mean(1) if wt is not None else err.pow(2).flatten(1).mean(1)
            # a mean over the whole batch (clean samples count as 0), so that the mean of
            # per-process losses is the loss of the global batch (data-parallel equivalence)
            out[m] = (per * live).sum() / per.shape[0]
        return out

    def _prior_context(self, prior_window: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The encoded (state-only) context of the prior's own batch."""
        c, K = self.config, self.config.context
        pw = D.with_props(prior_window)
        pobs = {k: pw[k][:, :K] for k in ("motion", "partner_motion", "props")}
        ppa = pw["partner_actions"][:, :K] if c.partner_actions else None
        return self.encode_context(pobs, pw["actions"][:, :K], (), partner_actions=ppa, partner_known=pw.get("partner_known"))

    def _prior_targets(self, prior_window: Mapping[str, torch.Tensor], pctx: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The prior's regression targets on its own batch.

        A context the prior dreamed itself (``prior_rollout``): the target is the recorded next
        state, so visible drift (height, pose, velocities) is undone; the root's horizontal move
        and turn stay the recorded step's own, since the context cannot show how far the dreamed
        root has wandered.
        """
        K, nm = self.config.context, self.norm
        pw = D.with_props(prior_window)
        px0 = self.targets({k: pw[k] for k in ("motion", "partner_motion", "props")}, pctx)
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
        return px0

    def _prior_losses(
        self, pctx: Mapping[str, torch.Tensor], px0: Mapping[str, torch.Tensor], training: TrainingConfig
    ) -> dict[str, torch.Tensor]:
        """The prior regresses the conditional mean of the bodies' changes (plain MSE, the motion's
        numbers weighted as in its denoising loss)."""
        out = {}
        for m in ("motion", "partner_motion"):
            e2 = (pctx[f"prior_{m}"] - px0[m]).pow(2)
            wt = motion_weights(e2.shape[1], training.root_loss_weight, e2.device) if m == "motion" else None
            out[f"prior_{m}"] = (e2 * wt).mean() if wt is not None else e2.mean()
        return out

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
