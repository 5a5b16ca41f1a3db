"""Building blocks of the world model: the U-Net branches (ego frames, BEV occupancy) and the
transformer over body/prop tokens.

The U-Nets are assembled from ``diffusers`` blocks (``get_down_block``/``get_up_block`` and
``UNetMidBlock2D``, as ``UNet2DModel`` does) but split into an encoder half and a decoder half,
because the branches exchange features between the two: ``diffusers``' ``UNet2DModel.forward``
runs down, mid and up in one call with one embedding and offers no point to inject features.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block, get_up_block
from torch import nn


def fourier_embedding(x: torch.Tensor, dim: int, max_period: float = 100.0) -> torch.Tensor:
    """Sinusoidal embedding (B, dim) of scalars (B,) (here c_noise = ln(sigma)/4, in about [-3, 1])."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    args = x.float()[:, None] * freqs[None] * 100.0
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class UNetBranch(nn.Module):
    """A small U-Net whose encoder and decoder can be run separately.

    ``encode(x, emb)`` returns the bottleneck (B, C_mid, r/2^(L-1), r/2^(L-1)) and the skips;
    ``decode(h, skips, emb)`` returns (B, out_channels, r, r). ``emb`` (B, emb_dim) conditions every
    ResNet block (noise level, action, and -- in the decoder -- the other branches' features).
    """

    def __init__(self, in_channels: int, out_channels: int, channels: list[int], emb_dim: int, layers_per_block: int = 1, groups: int = 8):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        out_ch = channels[0]
        for i, ch in enumerate(channels):
            in_ch, out_ch = out_ch, ch
            self.down.append(
                get_down_block(
                    "DownBlock2D",
                    num_layers=layers_per_block,
                    in_channels=in_ch,
                    out_channels=out_ch,
                    temb_channels=emb_dim,
                    add_downsample=i < len(channels) - 1,
                    resnet_eps=1e-5,
                    resnet_act_fn="silu",
                    resnet_groups=groups,
                    attention_head_dim=out_ch,
                    downsample_padding=1,
                )
            )
        self.mid = UNetMidBlock2D(
            in_channels=channels[-1],
            temb_channels=emb_dim,
            resnet_eps=1e-5,
            resnet_act_fn="silu",
            resnet_groups=groups,
            add_attention=False,
        )
        self.up = nn.ModuleList()
        rev = list(reversed(channels))
        out_ch = rev[0]
        for i in range(len(rev)):
            prev, out_ch = out_ch, rev[i]
            in_ch = rev[min(i + 1, len(rev) - 1)]
            self.up.append(
                get_up_block(
                    "UpBlock2D",
                    num_layers=layers_per_block + 1,
                    in_channels=in_ch,
                    out_channels=out_ch,
                    prev_output_channel=prev,
                    temb_channels=emb_dim,
                    add_upsample=i < len(rev) - 1,
                    resnet_eps=1e-5,
                    resnet_act_fn="silu",
                    resnet_groups=groups,
                    attention_head_dim=out_ch,
                )
            )
        self.norm_out = nn.GroupNorm(groups, channels[0])
        self.conv_out = nn.Conv2d(channels[0], out_channels, 3, padding=1)
        self.mid_channels = channels[-1]
        self.downsampling = 2 ** (len(channels) - 1)

    def encode(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        h = self.conv_in(x)
        skips: tuple[torch.Tensor, ...] = (h,)
        for blk in self.down:
            h, res = blk(hidden_states=h, temb=emb)
            skips += res
        return self.mid(h, emb), skips

    def decode(self, h: torch.Tensor, skips: tuple[torch.Tensor, ...], emb: torch.Tensor) -> torch.Tensor:
        for blk in self.up:
            res = skips[-len(blk.resnets) :]
            skips = skips[: -len(blk.resnets)]
            h = blk(h, res, emb)
        return self.conv_out(F.silu(self.norm_out(h)))


class AdaLNBlock(nn.Module):
    """Pre-norm transformer block whose norms are modulated by the per-token conditioning (DiT's adaLN).

    ``cond`` (B, T, d) is added per token, so every token of every block sees the action and its
    modality's noise level. Tokens often share their conditioning (all tokens of a modality): then
    ``cond`` may be the (B, G, d) distinct rows and ``cond_index`` (T,) long the row of each token,
    which computes the modulation once per row instead of once per token (the same numbers).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))
        self.mod = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def _attention(self, h: torch.Tensor, q_index: torch.Tensor | None) -> torch.Tensor:
        """Self-attention of ``h`` (B, T, d) with ``attn``'s weights, through ``scaled_dot_product_attention``
        (on CPU about a third faster than ``nn.MultiheadAttention``'s own path, the same numbers to
        float rounding); with ``q_index`` only those tokens' outputs (B, T', d), every token a key."""
        a = self.attn
        B, T, d = h.shape
        nh = a.num_heads
        w, b = a.in_proj_weight, a.in_proj_bias
        kv = F.linear(h, w[d:], b[d:]).view(B, T, 2, nh, d // nh).permute(2, 0, 3, 1, 4)
        hq = h if q_index is None else h.index_select(1, q_index)
        q = F.linear(hq, w[:d], b[:d]).view(B, hq.shape[1], nh, d // nh).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, kv[0], kv[1])
        return a.out_proj(o.transpose(1, 2).reshape(B, hq.shape[1], d))

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, cond_index: torch.Tensor | None = None, q_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x`` (B, T, d) -> (B, T, d); with ``q_index`` (T',) long only those tokens' outputs (B, T', d)
        (every token still attended to: the same numbers as the full block's rows)."""
        # the modulation per row, then gathered per token: ``1 + scale`` costs a row, not a token,
        # and each gathered factor is contiguous (the same numbers as gathering first)
        s1, b1, g1, s2, b2, g2 = self.mod(F.silu(cond)).chunk(6, dim=-1)
        s1, g1, s2, g2 = 1 + s1, 1 + g1, 1 + s2, 1 + g2

        def per_token(v: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
            return v if index is None else v.index_select(1, index)

        h = self.norm1(x) * per_token(s1, cond_index) + per_token(b1, cond_index)
        att = self._attention(h, q_index)
        idx = cond_index
        if q_index is not None:
            x = x.index_select(1, q_index)
            idx = q_index if cond_index is None else cond_index.index_select(0, q_index)
        x = x + per_token(g1, idx) * att
        h = self.norm2(x) * per_token(s2, idx) + per_token(b2, idx)
        return x + per_token(g2, idx) * self.mlp(h)


class TokenTransformer(nn.Module):
    """A stack of ``AdaLNBlock``s over (B, T, d) tokens with per-token conditioning (B, T, d)."""

    def __init__(self, dim: int, depth: int, heads: int):
        super().__init__()
        self.blocks = nn.ModuleList([AdaLNBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, cond_index: torch.Tensor | None = None, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x`` (B, T, d); ``cond`` (B, T, d), or (B, G, d) rows with ``cond_index`` (T,) (see ``AdaLNBlock``).
        With ``keep`` (T',) long only those tokens' outputs (B, T', d): the last block computes no
        others (a caller that reads a few tokens saves most of that block)."""
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            x = blk(x, cond, cond_index, keep if i == last else None)
        return self.norm(x)


@functools.cache
def segment_index(lengths: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """(sum(lengths),) long: segment i's row index ``i``, repeated ``lengths[i]`` times -- the
    ``cond_index`` of tokens that come in runs sharing their conditioning (made once per device)."""
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).to(device)


class GridTokens(nn.Module):
    """U-Net bottleneck (B, C, h, w) <-> a few tokens (B, n*n, d) for the transformer."""

    def __init__(self, channels: int, dim: int, side: int):
        super().__init__()
        self.side = side
        self.to_tok = nn.Linear(channels, dim)
        self.from_tok = nn.Linear(dim, channels)
        self.pos = nn.Parameter(torch.randn(side * side, dim) * 0.02)

    def tokens(self, h: torch.Tensor) -> torch.Tensor:
        p = F.adaptive_avg_pool2d(h, self.side)  # (B, C, n, n)
        return self.to_tok(p.flatten(2).transpose(1, 2)) + self.pos

    def grid(self, tok: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        B = tok.shape[0]
        g = self.from_tok(tok).transpose(1, 2).reshape(B, -1, self.side, self.side)
        return F.interpolate(g, size=size, mode="nearest")
