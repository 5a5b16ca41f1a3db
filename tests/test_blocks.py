"""The world model's fast inference paths compute the same numbers as the paths they replace:
per-row conditioning (worldmodel/blocks.py), the warp's
upsampling and the occupancy one-hot / argmax (worldmodel/warp.py, data.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

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
