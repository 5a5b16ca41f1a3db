"""The world model's fast inference paths compute the same numbers as the paths they replace:
per-row conditioning, attention through ``scaled_dot_product_attention`` and the last block computing
only the tokens a caller reads (worldmodel/blocks.py), the denoiser's body-only outputs
(worldmodel/network.py), the warp's
upsampling and the occupancy one-hot / argmax (worldmodel/warp.py, data.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dreamgym.envs.motion import MOTION_DIM
from dreamgym.worldmodel.blocks import TokenTransformer, segment_index

LENGTHS = (1, 23, 23, 4, 16, 16)


@pytest.fixture(scope="module")
def transformer():
    torch.manual_seed(0)
    tf = TokenTransformer(32, depth=2, heads=4).eval()
    for blk in tf.blocks:  # adaLN's modulation starts at zero: give it weights, so that it matters
        torch.nn.init.normal_(blk.mod.weight, std=0.1)
    return tf


def test_segment_index_repeats_each_row_for_its_run():
    idx = segment_index((1, 3, 2), torch.device("cpu"))
    assert idx.tolist() == [0, 1, 1, 1, 2, 2]
    assert segment_index((1, 3, 2), torch.device("cpu")) is idx  # made once


def test_per_row_conditioning_is_the_per_token_conditioning_exactly(transformer):
    B, T = 5, sum(LENGTHS)
    rows = torch.randn(B, len(LENGTHS), 32)
    index = segment_index(LENGTHS, torch.device("cpu"))
    x = torch.randn(B, T, 32)
    with torch.no_grad():
        per_token = transformer(x, rows[:, index].contiguous())
        per_row = transformer(x, rows, index)
    assert torch.equal(per_row, per_token)


def test_attention_is_multihead_attention_to_rounding_in_training_and_inference(transformer):
    B, T = 3, sum(LENGTHS)
    blk = transformer.blocks[0]
    h = torch.randn(B, T, 32, requires_grad=True)
    want = blk.attn(h, h, h, need_weights=False)[0]
    got = blk._attention(h, None)
    assert torch.allclose(got, want, rtol=0, atol=1e-5)
    (g_want,) = torch.autograd.grad(want.square().sum(), h)
    (g_got,) = torch.autograd.grad(got.square().sum(), h)
    assert torch.allclose(g_got, g_want, rtol=0, atol=1e-4)


def test_the_last_block_computes_the_kept_tokens_as_the_full_stack_does(transformer):
    B, T = 4, sum(LENGTHS)
    rows = torch.randn(B, len(LENGTHS), 32)
    index = segment_index(LENGTHS, torch.device("cpu"))
    x = torch.randn(B, T, 32)
    keep = torch.tensor([24, 25, 30, 46, 47])
    with torch.no_grad():
        full = transformer(x, rows, index)
        kept = transformer(x, rows, index, keep)
        kept_per_token = transformer(x, rows[:, index].contiguous(), None, keep)
    assert kept.shape == (B, len(keep), 32)
    assert torch.allclose(kept, full[:, keep], rtol=0, atol=1e-5)
    assert torch.allclose(kept_per_token, full[:, keep], rtol=0, atol=1e-5)


def test_the_denoiser_asked_for_the_partner_only_returns_its_full_estimate():
    """A state step of the shipped sampler reads only the partner's estimate: asking for it alone
    (the last block computing its tokens only, no other heads) gives the same numbers."""
    from safetensors.torch import load_file

    from dreamgym.worldmodel.model import load_default

    ref = load_file(str(Path(__file__).parent / "data" / "wm_default_reference.safetensors"))
    inp = {k.split(".", 1)[1]: v for k, v in ref.items() if k.startswith("input.")}
    m = load_default()
    ctx = m.encode_context(
        {k: inp[k] for k in ("motion", "partner_motion", "props", "instruction")},
        inp["actions"][:, :2],
        [],
        partner_actions=inp["partner_actions"][:, :2],
    )
    B = inp["actions"].shape[0]
    g = torch.Generator().manual_seed(0)
    x = {k: torch.randn(B, *s, generator=g) for k, s in (("motion", (MOTION_DIM,)), ("partner_motion", (MOTION_DIM,)), ("props", (4, 3)))}
    sig = {k: torch.full((B,), 0.5) for k in x}
    with torch.no_grad():
        full = m.denoise(ctx, x, sig)
        part = m.denoise(ctx, x, sig, outputs=["partner_motion"])
        none = m.denoise(ctx, x, sig, outputs=[])
    assert sorted(part) == ["partner_motion"] and none == {}
    assert torch.allclose(part["partner_motion"], full["partner_motion"], rtol=0, atol=1e-5)


def test_nearest_upsampling_of_the_warp_is_interpolate_exactly():
    from dreamgym.worldmodel.warp import _nearest_upsample

    x = torch.randn(2, 4, 5, 7)
    for factor in (2, 3):
        assert torch.equal(_nearest_upsample(x, factor), F.interpolate(x, scale_factor=factor, mode="nearest"))


def test_occupancy_encoding_is_one_hot_and_decoding_is_argmax_exactly():
    from dreamgym.worldmodel import data as D

    g = torch.Generator().manual_seed(0)
    occ = torch.randint(0, D.N_OCC_CLASSES, (3, 2, 4, 6, 5), generator=g, dtype=torch.uint8)
    one_hot = F.one_hot(occ.long(), D.N_OCC_CLASSES).float() * 2.0 - 1.0  # (..., Z, X, Y, 5)
    assert torch.equal(D.occupancy_to_model(occ), one_hot.movedim(-1, -3).reshape(3, 2, 4 * D.N_OCC_CLASSES, 6, 5))
    scores = torch.randn(3, 4 * D.N_OCC_CLASSES, 6, 5, generator=g).round()  # many ties
    scores[torch.rand(scores.shape, generator=g) < 0.1] = float("nan")
    argmax = scores.view(3, 4, D.N_OCC_CLASSES, 6, 5).argmax(2).to(torch.uint8)
    assert torch.equal(D.occupancy_from_model(scores), argmax)
