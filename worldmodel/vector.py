"""A world model for any Gymnasium env with vector observations, trained by the one trainer.

``dreamgym train-wm data=<a collect env=<id> dataset> out=RUN`` builds this model from the
dataset's spaces (``VectorArchitecture.from_manifest``) and trains it with
``worldmodel.trainer.train_world_model``, the loop the room's model trains with (the same
checkpoints, exact resume, EMA, NaN guard and Accelerate).

What it predicts, from the last K observations (every stored key, flattened into one vector and
normalised) and the K actions (one-hot for Discrete, normalised for a Box):

- the next observation, as a diffusion model (EDM preconditioning, Karras et al. 2022) over its
  change from the last one: a residual MLP whose blocks are modulated by the context's and the
  noise level's embedding. Sampled with ``num_steps`` Euler steps from noise, so dreams of an
  uncertain future differ (``init_noise`` 0 gives one deterministic dream);
- reward and termination, from learned heads that read the context and the next observation
  (the recorded one in training, the dreamed one when dreaming), because a foreign env has no task
  object to compute them from. Truncation is the env's time limit (``max_episode_steps``), not learned.

Rows follow the dataset's layout (``rollouts/DATASET.md``): observation t, the action applied at t,
and the reward and termination of that step, so a window of K + 1 rows is K steps of context and
the step to predict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import edm
from .vector_config import FORMAT_VERSION, KIND, VectorArchitecture, VectorSampler
from .vector_frames import FRAME_SIGMA_DATA, FrameDenoiser, FrameEncoder, frame_psnr, to_uint8, to_unit

CONFIG_NAME, SAMPLER_NAME, WEIGHTS_NAME = "config.json", "sampler.json", "model.safetensors"
STD_FLOOR = 1e-4  # statistics of a number that never changes


class _Block(nn.Module):
    """Pre-norm residual MLP block, scaled and shifted by the condition (adaLN)."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.mod = nn.Linear(width, 2 * width)
        self.fc1, self.fc2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.mod(cond).chunk(2, -1)
        return h + self.fc2(F.silu(self.fc1(self.norm(h) * (1 + scale) + shift)))


def _fourier(c_noise: torch.Tensor, n: int = 16) -> torch.Tensor:
    freqs = torch.arange(1, n + 1, device=c_noise.device, dtype=c_noise.dtype) * math.pi
    x = c_noise[:, None] * freqs
    return torch.cat([x.sin(), x.cos()], -1)


class VectorWorldModel(nn.Module):
    """Next observation, reward and termination of a Gymnasium env with vector observations.

    ``VectorWorldModel(arch, sampler)``; ``imagine`` dreams one step of B worlds, ``rollout`` several;
    ``save_pretrained`` / ``from_pretrained`` store and load it (safetensors + JSON). The trainer
    calls ``forward`` (the losses) and the hooks below it (``check_training_windows``,
    ``training_noise``, ``fit_statistics``, ``heldout_metrics``).
    """

    def __init__(self, arch: VectorArchitecture, sampler: VectorSampler | None = None):
        super().__init__()
        if not isinstance(arch, VectorArchitecture):
            raise TypeError(f"VectorWorldModel needs a VectorArchitecture, got {type(arch).__name__}")
        self.config, self.sampler = arch, sampler or VectorSampler()
        self.parts = arch.observation_parts()
        images = arch.image_parts()
        self.image = images[0] if images else None  # the one image key, dreamed by the U-Net branch
        D, A, K, W = arch.obs_size(), arch.action_size(), arch.context, arch.width
        self.obs_dim, self.act_dim = D, A
        for name, n in (("obs", D), ("delta", D), ("act", A), ("rew", 1)):
            self.register_buffer(f"{name}_mean", torch.zeros(n))
            self.register_buffer(f"{name}_std", torch.ones(n))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.context_net = nn.Sequential(nn.Linear(K * (D + A), W), nn.SiLU(), nn.Linear(W, W))
        self.sigma_net = nn.Sequential(nn.Linear(32, W), nn.SiLU(), nn.Linear(W, W))
        if D > 0:
            self.x_in = nn.Linear(D, W)
            self.blocks = nn.ModuleList(_Block(W) for _ in range(arch.depth))
            self.out_norm = nn.LayerNorm(W)
            self.x_out = nn.Linear(W, D)
            nn.init.zeros_(self.x_out.weight)
            nn.init.zeros_(self.x_out.bias)
        E = 0
        if self.image is not None:
            C, fc = self.image.shape[2], arch.frame_channels
            self.frame_net = FrameDenoiser(C, K, W, fc)
            self.frame_enc, self.next_enc = FrameEncoder(C, W, fc), FrameEncoder(C, W, fc)
            E = W
        self.head = nn.Sequential(nn.Linear(W + D + E, W), nn.SiLU(), nn.Linear(W, W), nn.SiLU(), nn.Linear(W, 2))
        low = np.concatenate([p.low for p in self.parts] + [np.zeros(0)]).astype(np.float64)
        high = np.concatenate([p.high for p in self.parts] + [np.zeros(0)]).astype(np.float64)
        self.register_buffer("obs_low", torch.tensor(np.where(np.isfinite(low), low, -np.inf), dtype=torch.float32), persistent=False)
        self.register_buffer("obs_high", torch.tensor(np.where(np.isfinite(high), high, np.inf), dtype=torch.float32), persistent=False)

    # ------------------------------------------------------------------ rows <-> flat tensors
    def flatten_obs(self, obs: Mapping[str, torch.Tensor], lead: int) -> torch.Tensor:
        """The stored keys of ``obs`` ((*lead dims*, *shape)) as one float vector per row."""
        missing = [p.key for p in self.parts if p.key not in obs]
        if missing:
            raise KeyError(f"observation keys {missing} missing; the model reads {[p.key for p in self.parts]}")
        out = [obs[p.key].reshape(*obs[p.key].shape[:lead], p.size).float() for p in self.parts]
        if not out:  # an env observed through an image only
            ref = obs[self.image.key] if self.image is not None else obs["actions"]
            return torch.zeros(*ref.shape[:lead], 0, device=ref.device)
        return torch.cat(out, -1)

    def split_obs(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """A flat vector (B, D) back into the stored keys, in their shapes and dtypes."""
        out = {}
        for p in self.parts:
            v = flat[..., p.start : p.start + p.size].reshape(*flat.shape[:-1], *p.shape)
            dtype = getattr(torch, p.dtype)
            out[p.key] = v.round().to(dtype) if not dtype.is_floating_point else v.to(dtype)
        return out

    def encode_actions(self, actions: torch.Tensor, lead: int) -> torch.Tensor:
        """(*lead dims*, ...) actions as the network's (*lead dims*, A) inputs, unnormalised."""
        if self.config.discrete_actions():
            start = int(self.config.action_space.get("start", 0))
            return F.one_hot((actions.long() - start).clamp(0, self.act_dim - 1), self.act_dim).float()
        return actions.reshape(*actions.shape[:lead], self.act_dim).float()

    def _context(self, obs_ctx: torch.Tensor, act_ctx: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K, D) observations, (B, K, A) encoded actions and, with an image key, the context
        frames (B, K, C, H, W) in [-1, 1] -> the context embedding (B, W)."""
        o = (obs_ctx - self.obs_mean) / self.obs_std
        a = (act_ctx - self.act_mean) / self.act_std
        h = self.context_net(torch.cat([o, a], -1).flatten(1))
        return h if frames is None else h + self.frame_enc(frames[:, -1])

    # ------------------------------------------------------------------ the network
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """EDM's D(x; sigma): the clean normalised change estimated from a noisy one (B, D)."""
        c_skip, c_out, c_in, c_noise = edm.precondition(sigma, self.config.sigma_data)
        cond = ctx + self.sigma_net(_fourier(c_noise))
        h = self.x_in(x * c_in[:, None])
        for block in self.blocks:
            h = block(h, cond)
        return c_skip[:, None] * x + c_out[:, None] * self.x_out(self.out_norm(h))

    def denoise_frame(self, x: torch.Tensor, sigma: torch.Tensor, frames: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """D(x; sigma) of the next frame (B, C, H, W) in [-1, 1], given the context frames (B, K, C, H, W)."""
        c_skip, c_out, c_in, c_noise = edm.precondition(sigma, FRAME_SIGMA_DATA)
        cond = ctx + self.sigma_net(_fourier(c_noise))
        r = (slice(None), None, None, None)
        return c_skip[r] * x + c_out[r] * self.frame_net(x * c_in[r], frames.flatten(1, 2), cond)

    def heads(self, ctx: torch.Tensor, next_obs: torch.Tensor, next_frame: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(reward, termination logit), each (B,), of the step into ``next_obs`` (B, D) and, with
        an image key, ``next_frame`` (B, C, H, W) in [-1, 1]."""
        x = [ctx, (next_obs - self.obs_mean) / self.obs_std] + ([self.next_enc(next_frame)] if next_frame is not None else [])
        out = self.head(torch.cat(x, -1))
        return out[:, 0] * self.rew_std[0] + self.rew_mean[0], out[:, 1]

    def _window(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        obs = self.flatten_obs(batch, 2)
        return obs, self.encode_actions(batch["actions"], 2)

    def _frames(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """The image key of (B, T, H, W, C) rows as (B, T, C, H, W) in [-1, 1] (None without one)."""
        return None if self.image is None else to_unit(batch[self.image.key])

    def forward(self, batch, noise, sigma, branches=(), prior_window=None, training=None) -> dict[str, torch.Tensor]:
        """The losses of a batch of (B, K + 1) windows: EDM-weighted denoising of the next
        observation's normalised change, reward MSE (normalised) and termination BCE."""
        K = self.config.context
        obs, act = self._window(batch)
        frames = self._frames(batch)
        ctx = self._context(obs[:, :K], act[:, :K], None if frames is None else frames[:, :K])
        losses: dict[str, torch.Tensor] = {}
        if self.obs_dim:
            y = ((obs[:, K] - obs[:, K - 1]) - self.delta_mean) / self.delta_std
            s, n = sigma["obs"].to(y), noise["obs"].to(y)
            sd = self.config.sigma_data
            weight = (s**2 + sd**2) / (s * sd) ** 2
            denoised = self.denoise(y + s[:, None] * n, s, ctx)
            losses["obs"] = (weight[:, None] * (denoised - y) ** 2).mean()
        if frames is not None:
            f = frames[:, K]
            s, n = sigma["frame"].to(f), noise["frame"].to(f)
            sd = FRAME_SIGMA_DATA
            weight = (s**2 + sd**2) / (s * sd) ** 2
            denoised = self.denoise_frame(f + s[:, None, None, None] * n, s, frames[:, :K], ctx)
            losses["frame"] = (weight[:, None, None, None] * (denoised - f) ** 2).mean()
        reward, logit = self.heads(ctx, obs[:, K], None if frames is None else frames[:, K])
        losses["reward"] = (((reward - batch["rewards"][:, K - 1].float()) / self.rew_std[0]) ** 2).mean()
        losses["terminated"] = F.binary_cross_entropy_with_logits(logit, batch["terminations"][:, K - 1].float())
        losses["total"] = sum(losses.values())
        return losses

    # ------------------------------------------------------------------ dreaming
    @torch.no_grad()
    def imagine(
        self,
        context: Mapping[str, torch.Tensor],
        actions: torch.Tensor,
        *,
        num_steps: int | None = None,
        init_noise: float | None = None,
        generator: torch.Generator | None = None,
        **_: Any,
    ) -> dict[str, torch.Tensor]:
        """The next step of B worlds from K context rows: ``context`` key -> (B, K, *shape),
        ``actions`` (B, K, ...), the last row the action applied now. Returns every stored key
        (B, *shape) in its dtype, ``reward`` (B,) and ``terminated`` (B,) bool."""
        K, s = self.config.context, self.sampler
        obs = self.flatten_obs(context, 2)
        act = self.encode_actions(actions, 2)
        if obs.shape[1] != K or act.shape[1] != K:
            raise ValueError(f"imagine needs {K} context rows of observations and actions, got {obs.shape[1]} and {act.shape[1]}")
        frames = self._frames(context)
        ctx = self._context(obs, act, frames)
        scale = s.init_noise if init_noise is None else float(init_noise)
        B, dev = obs.shape[0], obs.device
        z: dict[str, torch.Tensor] = {}
        if self.obs_dim:
            z["obs"] = torch.randn(B, self.obs_dim, generator=generator, device=dev) * scale
        if frames is not None:
            z["frame"] = torch.randn(B, *frames.shape[2:], generator=generator, device=dev) * scale

        def denoise(x: dict[str, torch.Tensor], sig: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            out = {"obs": self.denoise(x["obs"], sig["obs"], ctx)} if "obs" in x else {}
            if "frame" in x:
                out["frame"] = self.denoise_frame(x["frame"], sig["frame"], frames, ctx)
            return out

        params = edm.EDMParams(sigma_data=self.config.sigma_data, sigma_min=s.sigma_min, sigma_max=self.config.sigma_max, rho=s.rho)
        drawn = edm.sample(denoise, z, int(num_steps or s.num_steps), params)
        nxt = obs[:, -1]
        if self.obs_dim:
            nxt = obs[:, -1] + drawn["obs"] * self.delta_std + self.delta_mean
            nxt = torch.maximum(torch.minimum(nxt, self.obs_high), self.obs_low)
        frame = drawn["frame"].clamp(-1, 1) if frames is not None else None
        reward, logit = self.heads(ctx, nxt, frame)
        out = self.split_obs(nxt)
        if frame is not None:
            out[self.image.key] = to_uint8(frame)
        out["reward"] = reward
        out["terminated"] = torch.sigmoid(logit) > s.termination_threshold
        return out

    def output_keys(self) -> list[str]:
        """Every stored key, in the observation space's order."""
        return [k for k in self.config.obs_keys if k in {p.key for p in self.all_parts}]

    @property
    def all_parts(self) -> list[Any]:
        """The vector parts and the image part (the keys a dream env keeps rows of)."""
        return [*self.parts, *([self.image] if self.image is not None else [])]

    # ------------------------------------------------------------------ the trainer's hooks
    def check_training_windows(self, item: Mapping[str, torch.Tensor], noise: Any, source: str) -> None:
        """Raise naming ``source`` when a window lacks a key the model reads or has the wrong shape."""
        need = [p.key for p in self.all_parts] + ["actions", "rewards", "terminations"]
        missing = [k for k in need if k not in item]
        if missing:
            raise ValueError(f"{source}: the windows lack {missing}; this model of {self.config.env_id} reads {need}")
        for p in self.all_parts:
            if tuple(item[p.key].shape[1:]) != p.shape:
                raise ValueError(f"{source}: observation {p.key!r} is {tuple(item[p.key].shape[1:])} per row, the model's {p.shape}")

    def training_noise(self, training: Any, step: int, positions: list[int], seed: int):
        """Unit noise and a sigma per sample (log-normal, sometimes sigma_max: the few-step regime),
        each a pure function of (seed, step, the sample's place in the global batch)."""
        nz = training.noise
        keys = (["obs"] if self.obs_dim else []) + (["frame"] if self.image is not None else [])
        shapes = {"obs": (self.obs_dim,), "frame": () if self.image is None else (self.image.shape[2], *self.image.shape[:2])}
        noise: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
        sigma: dict[str, list[float]] = {k: [] for k in keys}
        for pos in positions:
            g = torch.Generator().manual_seed(seed * 1_000_033 + step * 9_973 + pos * 31 + 11)
            for k in keys:
                s = float(edm.sample_training_sigma(1, nz, g)[0])
                if float(torch.rand(1, generator=g)[0]) < nz.p_sigma_max:
                    s = self.config.sigma_max
                sigma[k].append(s)
                noise[k].append(torch.randn(*shapes[k], generator=g))
        return (
            {k: torch.stack(v) for k, v in noise.items()},
            {k: torch.tensor(v, dtype=torch.float32) for k, v in sigma.items()},
            [],
        )

    @property
    def statistics_fitted(self) -> bool:
        return bool(self.fitted)

    @torch.no_grad()
    def fit_statistics(self, chunks) -> None:
        """Means and spreads of observations, changes, actions and rewards over ``chunks()``, batches of windows."""
        K = self.config.context
        cols: dict[str, list[torch.Tensor]] = {"obs": [], "delta": [], "act": [], "rew": []}
        for b in chunks():
            obs, act = self._window(b)
            cols["obs"].append(obs[:, :K].reshape(obs.shape[0] * K, self.obs_dim))
            cols["delta"].append(obs[:, K] - obs[:, K - 1])
            cols["act"].append(act[:, :K].reshape(act.shape[0] * K, self.act_dim))
            cols["rew"].append(b["rewards"][:, K - 1].float().reshape(-1, 1))
        for name, parts in cols.items():
            x = torch.cat(parts).double()
            if x.shape[-1] == 0:  # no vector observation (an image-only env): nothing to fit
                continue
            mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(STD_FLOOR)
            if name == "act" and self.config.discrete_actions():
                mean, std = torch.zeros_like(mean), torch.ones_like(std)
            getattr(self, f"{name}_mean").copy_(mean.float())
            getattr(self, f"{name}_std").copy_(std.float())
        self.fitted.fill_(True)

    @torch.no_grad()
    def heldout_metrics(self, batch: Mapping[str, torch.Tensor], num_steps: int, seed: int) -> tuple[dict[str, float], None]:
        """One-step errors on held-out windows beside copying the last observation and, for K >= 2,
        extrapolating its last change (constant velocity); reward and termination errors."""
        K = self.config.context
        obs, _ = self._window(batch)
        ctx = {p.key: batch[p.key][:, :K] for p in self.all_parts}
        was = self.training
        self.eval()
        pred = self.imagine(ctx, batch["actions"][:, :K], num_steps=num_steps, generator=torch.Generator().manual_seed(seed))
        self.train(was)
        truth = obs[:, K]
        scale = self.obs_std

        def err(x: torch.Tensor) -> float:
            return float((((x - truth) / scale) ** 2).mean().sqrt())

        out: dict[str, float] = {}
        if self.obs_dim:
            out |= {"obs_rmse/model": err(self.flatten_obs(pred, 1)), "obs_rmse/copy_last": err(obs[:, K - 1])}
            if K >= 2:
                out["obs_rmse/constant_velocity"] = err(2 * obs[:, K - 1] - obs[:, K - 2])
        if self.image is not None:
            real = batch[self.image.key]
            out["frame_psnr/model"] = frame_psnr(pred[self.image.key], real[:, K])
            out["frame_psnr/copy_last"] = frame_psnr(real[:, K - 1], real[:, K])
        out["reward_mae"] = float((pred["reward"] - batch["rewards"][:, K - 1]).abs().mean())
        out["termination_accuracy"] = float((pred["terminated"] == batch["terminations"][:, K - 1].bool()).float().mean())
        return out, None

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path, state_dict: Mapping[str, torch.Tensor] | None = None) -> Path:
        """Write ``model.safetensors``, ``config.json`` and ``sampler.json`` into ``directory`` (created)."""
        import json

        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        sd = self.state_dict() if state_dict is None else state_dict
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in sd.items()},
            str(d / WEIGHTS_NAME),
            metadata={"format": "pt", "dreamgym": "worldmodel-vector"},
        )
        for name, cfg in ((CONFIG_NAME, self.config), (SAMPLER_NAME, self.sampler)):
            (d / name).write_text(json.dumps({"format_version": FORMAT_VERSION, **cfg.to_dict()}, indent=2) + "\n")
        return d

    @staticmethod
    def read_configs(config: Path) -> tuple[VectorArchitecture, VectorSampler]:
        """The checked architecture and sampler of the checkpoint whose ``config.json`` is ``config``."""
        import json

        def read(path: Path) -> dict[str, Any]:
            try:
                d = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{path}: not a readable JSON world-model config ({e})") from None
            if not isinstance(d, dict) or d.get("kind") != KIND:
                raise ValueError(f"{path}: not a {KIND} world model's config")
            if int(d.get("format_version", 0)) > FORMAT_VERSION:
                raise ValueError(f"{path} has format_version {d['format_version']}; this dreamgym reads up to {FORMAT_VERSION}, upgrade it")
            return d

        sampler_file = config.parent / SAMPLER_NAME
        sampler = VectorSampler.from_dict(read(sampler_file), str(sampler_file)) if sampler_file.exists() else VectorSampler()
        return VectorArchitecture.from_dict(read(config), str(config)), sampler

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> VectorWorldModel:
        """Load a model saved by ``save_pretrained`` (a directory, or its ``model.safetensors``)."""
        from .checkpoint import check_state_dict, checkpoint_files, load_safetensors

        weights, config = checkpoint_files(path)
        arch, sampler = cls.read_configs(config)
        model = cls(arch, sampler)
        sd = load_safetensors(weights)
        check_state_dict(model, sd, weights, config)
        model.load_state_dict(sd)
        return model.to(device).eval()
