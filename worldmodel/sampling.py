"""Dreaming with a world model: ``imagine`` (one step), ``rollout`` (H steps) and ``prior_rollout``
(the state prior dreaming alone, which the trainer feeds back to the prior).

How a dream is sampled comes from the model's ``SamplerConfig`` (``WorldModel.sampler``): the
number of denoising steps, the initial noise and the schedule; ``imagine`` and ``rollout`` take
those as defaults, and explicit arguments (or a whole ``sampler=``) override them for one call.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence

import torch

from dreamgym.envs.motion import MOTION_DIM

from . import data as D
from . import edm
from .config import SamplerConfig, check_sampler
from .network import MEMORY_KEYS, OBS_KEYS, OCC_MEMORY_KEYS


def native_bfloat16(device: str | torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively: a CUDA GPU that supports it, or a
    CPU with AVX512-BF16 or AMX tiles. Elsewhere bfloat16 is emulated and slower than float32."""
    d = torch.device(device)
    if d.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if d.type == "cpu":
        checks = (getattr(torch.cpu, f, None) for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
        return any(bool(f()) for f in checks if f is not None)
    return False


def network_dtype(s: SamplerConfig, device: str | torch.device) -> str:
    """The number format the denoiser runs in under sampler ``s`` on ``device``: ``s.precision``,
    with "auto" resolved by ``native_bfloat16``."""
    if s.precision != "auto":
        return s.precision
    return "bfloat16" if native_bfloat16(device) else "float32"


def network_precision(s: SamplerConfig, device: str | torch.device) -> contextlib.AbstractContextManager:
    """The autocast context the denoiser runs in under sampler ``s`` on ``device``
    (``network_dtype``): none for float32, bfloat16 autocast on ``device``'s type otherwise."""
    dtype = network_dtype(s, device)
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=getattr(torch, dtype))


class SamplingMixin:
    """``imagine``, ``rollout``, ``prior_rollout`` and their checks, for ``WorldModel``."""

    def sampler_for(
        self, sampler: SamplerConfig | None = None, num_steps: int | None = None, init_noise: float | None = None
    ) -> SamplerConfig:
        """The sampler of one call: ``sampler`` (default: the model's), with ``num_steps`` and
        ``init_noise`` replaced where given (checked like any config). Given, they set every pass's
        (the frame pass's ``frame_*`` settings are cleared): ``num_steps=1, init_noise=0`` is the
        conditional mean throughout."""
        s = self.sampler if sampler is None else sampler
        if sampler is not None:
            check_sampler(self.config, s, "sampler")
        over = {k: v for k, v in (("num_steps", num_steps), ("init_noise", init_noise)) if v is not None}
        if not over:
            return s
        over |= {"frame_num_steps": None, "frame_init_noise": None}
        if all(getattr(s, k) == v for k, v in over.items()):
            return s
        return dataclasses.replace(s, **over)

    @staticmethod
    def frame_sampler(s: SamplerConfig) -> SamplerConfig:
        """The sampler of the frame and grid pass (given the dreamed state): ``s`` with its
        ``frame_num_steps`` / ``frame_init_noise`` where set."""
        over = {
            k: v for k, v in (("num_steps", s.frame_num_steps), ("init_noise", s.frame_init_noise)) if v is not None and getattr(s, k) != v
        }
        return dataclasses.replace(s, **over) if over else s

    def _check_context(self, context: Mapping[str, torch.Tensor], actions: torch.Tensor, branches: Sequence[str]) -> None:
        c, K = self.config, self.config.context
        need = ["motion", "partner_motion", "props"]
        if "ego" in branches:
            need += ["ego_rgb"] + (["ego_depth"] if c.ego_depth else [])
            if c.ego_render:  # the frames are drawn from the grid too
                need.append("occupancy")
        if "occupancy" in branches and "occupancy" not in need:
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

    def _check_partner_actions(self, partner_actions: torch.Tensor | None, actions: torch.Tensor) -> None:
        if partner_actions is None:
            return
        if not self.config.partner_actions:
            raise ValueError(
                "partner_actions given, but this model was not trained with the partner's commands (config.partner_actions is false)"
            )
        if tuple(partner_actions.shape) != tuple(actions.shape):
            raise ValueError(f"partner_actions has shape {tuple(partner_actions.shape)}, expected {tuple(actions.shape)} like actions")
        if not bool(torch.isfinite(partner_actions).all()):
            raise ValueError("partner_actions contain NaN or infinite values")

    @torch.no_grad()
    def imagine(
        self,
        context: Mapping[str, torch.Tensor],
        actions: torch.Tensor,
        num_steps: int | None = None,
        modalities: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
        given: Mapping[str, torch.Tensor] | None = None,
        init_noise: float | None = None,
        partner_actions: torch.Tensor | None = None,
        sampler: SamplerConfig | None = None,
    ) -> dict[str, torch.Tensor]:
        """The next step from the last K observations and the actions.

        Args:
            context: (B, K, ...) observations in env dtypes: ``motion``, ``partner_motion``,
                ``props`` (B, K, 4, 3), ``ego_rgb`` (uint8) and ``ego_depth`` (when frames are
                generated), ``occupancy`` (uint8, when generated); optional ``instruction`` (B,).
            actions: (B, K, 6), the action taken after each context step (the last one is the
                action being applied now).
            num_steps: denoising steps (default: ``sampler.num_steps``; 1-3 for RL, more for viewing).
            modalities: observation keys to generate (default: all the model has). Leaving out
                ``ego_rgb`` skips the frame branch entirely (much cheaper); likewise ``occupancy``.
                Motion, partner motion and props are always computed (they are cheap).
            generator: for the initial noise.
            given: next-step values of modalities to condition on (clean, sigma = 0), e.g.
                ``{"motion": (B, 227)}`` for motion -> video, or ``{"ego_rgb": ..., "ego_depth": ...}``
                for video -> motion.
            init_noise: scale of the initial noise (default: ``sampler.init_noise``); 0 with
                ``num_steps=1`` gives the conditional-mean estimate instead of a sample (for a
                ``state_prior`` model, the bodies' estimate is then the prior's regression).
            partner_actions: (B, K, 6), the partner's commands after each context step, for a
                model with ``config.partner_actions`` (``envs.partner.partner_action`` of its
                script; a dream env passes them). None: unknown (the model guesses the partner).
            sampler: the sampling and decoding settings of this call (default: ``self.sampler``).

        An ``ego_warp`` model generating frames without a given motion runs two passes: the
        state modalities first (frames and occupancy absent), then frames and occupancy given
        them; the step's states and reward are the first pass's.

        Returns:
            The next step in env dtypes: ``ego_rgb`` (B, 3, H, W) uint8, ``ego_depth`` (B, 1, H, W),
            ``motion``/``partner_motion`` (B, 227), ``props`` (B, 4, 3), ``occupancy`` (B, Z, X, Y)
            uint8 (those generated or given), ``reward`` (B,) and ``terminated`` (B,) bool.
        """
        s = self.sampler_for(sampler, num_steps, init_noise)
        keys = self.output_keys() if modalities is None else list(modalities)
        return self._imagine(context, actions, s, keys, generator, dict(given or {}), partner_actions)

    def _imagine(
        self,
        context: Mapping[str, torch.Tensor],
        actions: torch.Tensor,
        s: SamplerConfig,
        keys: list[str],
        generator: torch.Generator | None,
        given: dict[str, torch.Tensor],
        partner_actions: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        c = self.config
        gen_mods = {D.modality_of_key(k) for k in keys} | set(D.STATE_MODALITIES)
        given_mods = {D.modality_of_key(k) for k in given}
        for m in gen_mods | given_mods:
            if m not in c.modalities:
                raise ValueError(f"this model does not have modality {m!r}; it has {c.modalities}")
        gen_mods -= given_mods
        branches = [m for m in ("ego", "occupancy") if m in gen_mods | given_mods]
        self._check_context(context, actions, branches)
        self._check_partner_actions(partner_actions, actions)
        first = None
        if ((c.ego_warp and "ego" in gen_mods) or (c.occupancy_warp and "occupancy" in gen_mods)) and "motion" not in given_mods:
            # two passes: the bodies and props first (state only, cheap), then the frames (and
            # occupancy) given them, relative to the last frame warped to the dreamed head pose
            state_given = {k: v for k, v in given.items() if D.modality_of_key(k) in D.STATE_MODALITIES}
            first = self._imagine(context, actions, s, list(D.STATE_MODALITIES), generator, state_given, partner_actions)
            given |= {k: first[k] for k in D.STATE_MODALITIES}
            gen_mods -= set(D.STATE_MODALITIES)
        if not gen_mods & set(D.STATE_MODALITIES):  # the frame and grid pass, given the state
            s = self.frame_sampler(s)
        ctx = self.encode_context(context, actions, branches, partner_actions=partner_actions)
        if c.ego_warp and "ego" in branches and "motion" in given:
            self.frame_base(ctx, given["motion"], next_partner=given.get("partner_motion"))
        if c.occupancy_warp and "occupancy" in branches and "motion" in given and "partner_motion" in given:
            self.occupancy_base(ctx, given["motion"], given["partner_motion"])
        clean = self._given_to_model(given, ctx) if given else {}
        x0 = self._sample(ctx, clean, [m for m in D.MODALITIES if m in gen_mods], s, generator) | clean
        out = self._decode_step(ctx, x0, "props" not in clean, s)
        if first is not None:  # the step's reward is the state pass's (the same states)
            out |= {k: first[k] for k in ("reward", "terminated")}
        want = set(keys) | set(given)
        return {k: v for k, v in out.items() if k in want or k in ("reward", "terminated")}

    def _sample(
        self,
        ctx: Mapping[str, torch.Tensor],
        clean: Mapping[str, torch.Tensor],
        gen_order: list[str],
        s: SamplerConfig,
        generator: torch.Generator | None,
    ) -> dict[str, torch.Tensor]:
        """The normalised next-step changes x0 of the modalities ``gen_order``, given ``clean``."""
        c = self.config
        B = ctx["motion_ctx"].shape[0]
        shapes = self._target_shapes(B)
        zeros = torch.zeros(B, device=self.device)

        # a sampled state_prior model: the first step's estimate of the bodies (at sigma_max) is the
        # prior's regression, as in the one-step mean, and the later steps sample around it
        prior_first = [m for m in ("motion", "partner_motion") if c.state_prior and m in gen_order]
        calls = [0]

        # what the step keeps of the denoiser's output: not the props of a props network model
        # (``_decode_step`` moves them)
        discarded = {"props"} if c.props_dynamics else set()

        def denoise(x: dict[str, torch.Tensor], sig: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            first, calls[0] = calls[0] == 0, calls[0] + 1
            if first and set(x) <= set(prior_first) | discarded:
                # nothing of the first call would be kept: no network needed (a sampled state step)
                return {m: ctx[f"prior_{m}"] if m in prior_first else torch.zeros_like(v) for m, v in x.items()}
            xx = dict(x) | dict(clean)
            ss = dict(sig) | {m: zeros for m in clean}
            # the last call computes only what the step keeps (a discarded estimate is zero: never
            # read); earlier calls' estimates are all next inputs of the sampler
            last = c.deterministic or calls[0] == s.num_steps
            with network_precision(s, self.device):
                out = self.denoise(ctx, xx, ss, outputs=[m for m in x if not (last and m in discarded)])
            out = {m: out[m].float() if m in out else torch.zeros_like(v) for m, v in x.items()}
            if first:
                out |= {m: ctx[f"prior_{m}"] for m in prior_first}
            return out

        if c.deterministic:
            return denoise(
                {m: torch.zeros(shapes[m], device=self.device) for m in gen_order},
                {m: torch.full_like(zeros, c.sigma_max) for m in gen_order},
            )
        if not s.sample_agent and "motion" in gen_order and s.init_noise > 0:
            # the agent's body is its conditional mean, a condition of everything sampled
            if c.state_prior:
                agent = ctx["prior_motion"]
            else:
                agent = denoise(
                    {m: torch.zeros(shapes[m], device=self.device) for m in gen_order},
                    {m: torch.full_like(zeros, c.sigma_max) for m in gen_order},
                )["motion"]
            rest = [m for m in gen_order if m != "motion"]
            return self._sample(ctx, dict(clean) | {"motion": agent}, rest, s, generator) | {"motion": agent}
        if s.init_noise == 0.0:  # a noiseless start (the frame pass's): no draw (the frames' would cost as much as a small conv)
            noise = {m: torch.zeros(shapes[m], device=self.device) for m in gen_order}
        else:
            noise = {m: torch.randn(shapes[m], generator=generator, device=self.device) * s.init_noise for m in gen_order}
        mean_bodies = c.state_prior and s.num_steps == 1 and s.init_noise == 0.0
        # what the step keeps of the denoiser's output: not the bodies of a one-step mean (the
        # prior's, below), nor the props of a props network model (``_decode_step`` moves them)
        replaced = ({"motion", "partner_motion"} if mean_bodies else set()) | discarded
        if set(gen_order) <= replaced:  # nothing: the network need not run (a state step of the shipped model)
            x0 = {m: torch.zeros(shapes[m], device=self.device) for m in gen_order}
        else:
            x0 = edm.sample(denoise, noise, s.num_steps, self.edm_for(s))
        if mean_bodies:
            # the one-step conditional-mean estimate of the bodies is the prior's regression:
            # trained on far more samples than the denoiser at sigma_max, and steadier over
            # long dreams (held-out 64-step agent MPJPE 85 vs 125 mm with the denoiser's)
            x0 |= {m: ctx[f"prior_{m}"] for m in ("motion", "partner_motion") if m in x0}
        return x0

    @torch.no_grad()
    def rollout(
        self,
        context: Mapping[str, torch.Tensor],
        actions_future: torch.Tensor,
        past_actions: torch.Tensor | None = None,
        num_steps: int | None = None,
        modalities: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
        init_noise: float | None = None,
        partner_actions: torch.Tensor | None = None,
        sampler: SamplerConfig | None = None,
    ) -> dict[str, torch.Tensor]:
        """Dream H steps autoregressively, shifting the context window after each.

        Args:
            context: the last K observations (B, K, ...), as for ``imagine``.
            actions_future: (B, H, 6); ``actions_future[:, 0]`` is applied to the last context step.
            past_actions: (B, K-1, 6), the actions taken after context steps 0..K-2 (default:
                ``context["actions"]`` if present; it may also be (B, K, 6), whose last row is ignored).
            num_steps, init_noise, sampler: as for ``imagine`` (default: ``self.sampler``'s).
            partner_actions: (B, K-1+H, 6), the partner's commands after each context step but the
                last and each dreamed step (models with ``config.partner_actions``; None: unknown).
        Returns:
            (B, H, ...) per key, as ``imagine`` returns per step.
        """
        K = self.config.context
        s = self.sampler_for(sampler, num_steps, init_noise)
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
            step = self.imagine(ctx, acts, modalities=keys, generator=generator, partner_actions=pa, sampler=s)
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
