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


def test_phrasing_splits_are_disjoint():
    from dreamgym.envs.tasks import INSTRUCTIONS
    from dreamgym.policies.vla import HELD_OUT_COMBOS, PARAPHRASE_TEMPLATES, TRAIN_TEMPLATES, is_held_out, parse_instruction

    for task in ("reach", "push"):
        assert not set(TRAIN_TEMPLATES[task]) & set(PARAPHRASE_TEMPLATES[task])
    held = [i for i in range(len(INSTRUCTIONS)) if is_held_out(i)]
    assert len(held) == len(HELD_OUT_COMBOS)
    assert all(parse_instruction(i) in HELD_OUT_COMBOS for i in held)


def test_vla_checkpoint_round_trip(tmp_path):
    from dreamgym.policies.vla import VLAConfig, VLAPolicy

    torch.manual_seed(0)
    p = VLAPolicy(VLAConfig(resolution=32))
    p.save_pretrained(tmp_path)
    q = VLAPolicy.from_pretrained(tmp_path)
    obs = {"ego_rgb": torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8), "motion": torch.randn(2, 227),
           "instruction": torch.tensor([0, 13])}
    a = p.eval().act(obs)
    assert a.shape == (2, 6) and a.abs().max() <= 1
    assert torch.allclose(a, q.act(obs))
    with pytest.raises(KeyError, match="ego_rgb"):
        p.act({"motion": obs["motion"], "instruction": obs["instruction"]})


SHIPPED = __import__("pathlib").Path(__file__).resolve().parent.parent / "policies" / "checkpoints" / "vla"


@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped VLA checkpoint")
def test_shipped_vla_beats_random_on_held_out_rooms():
    from dreamgym.envs import EgoRoomVecEnv
    from dreamgym.policies.vla import OBS_KEYS, VLAPolicy
    from dreamgym.policies.vla_bench import held_out_rooms

    policy = VLAPolicy.from_pretrained(SHIPPED / "final")
    n = 6
    seeds, _ = held_out_rooms("reach", 2 * n, False, 1_600_000_000, set())
    env = EgoRoomVecEnv(num_envs=2 * n, task="reach", resolution=32, obs_keys=OBS_KEYS, return_tensors=True)
    obs, _ = env.reset_tensors(room_seeds=seeds)
    rand = torch.arange(2 * n) >= n
    gen = torch.Generator().manual_seed(0)
    done = torch.zeros(2 * n, dtype=torch.bool)
    success = torch.zeros(2 * n, dtype=torch.bool)
    for _ in range(200):
        a = torch.where(rand[:, None], torch.rand(2 * n, 6, generator=gen) * 2 - 1, policy.act(obs))
        obs, _, term, trunc, info = env.step_tensors(a)
        ended = (term | trunc) & ~done
        success |= ended & torch.as_tensor(info["success"])
        done |= ended
        if done.all():
            break
    assert success[~rand].float().mean() > success[rand].float().mean()
