"""The instruction encoder and the vision-language-action policy."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def encoder():
    from dreamgym.policies.text_encoder import shared_encoder

    return shared_encoder()


def test_encoder_loads_offline_and_ranks_paraphrases(encoder):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    e = encoder.encode(["walk to the red box", "go to the red box", "Okay, bye for now.", "push the blue ball onto the mat"])
    assert e.shape == (4, 384)
    assert torch.allclose(e.norm(dim=-1), torch.ones(4), atol=1e-4)
    sim = e @ e.T
    # a paraphrase is closer than an unrelated utterance or a different task
    assert sim[0, 1] > 0.6 > sim[0, 2] + 0.3
    assert sim[0, 1] > sim[0, 3] + 0.3


def test_encoder_caches_per_sentence(encoder):
    a = encoder.encode("shove the green box onto the mat")
    n = len(encoder._cache)
    b = encoder.encode(["shove the green box onto the mat"] * 3)
    assert len(encoder._cache) == n
    assert torch.equal(b[1], a[0])
