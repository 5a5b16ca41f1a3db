"""The world model: save/load, bad checkpoints, configs and their checks, the format upgrade,
training, imagine/rollout, conditioning, resume, NaN guard, and the shipped model's reference dream.

Everything but the reference dream runs on a tiny config and synthetic episodes (no simulator), so
the default run is fast; the two-process (gloo) equivalence test is marked slow.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dreamgym.worldmodel import data as D
from dreamgym.worldmodel.config import ArchitectureConfig, SamplerConfig
from dreamgym.worldmodel.model import WorldModel
from dreamgym.worldmodel.train import NonFiniteLossError, latest_checkpoint, load_episodes, save_episodes, train

torch.set_num_threads(1)  # the machine is shared: one thread avoids oversubscription stalls

TINY = dict(
    resolution=16,
    data_resolution=32,
    context=2,
    frame_channels=[8, 16],
    occupancy_channels=[8, 16],
    dim=32,
    depth=1,
    heads=2,
    grid_tokens=2,
    reward_hidden=32,
    # the plain network: each test switches on the branch it exercises
    ego_warp=False,
    ego_render=False,
    state_prior=0,
    props_dynamics=0,
    occupancy_warp=False,
    partner_actions=False,
)
# a diffusion sample by default, no props decoding rules
TINY_SAMPLER = dict(init_noise=1.0, props_rest_threshold=0.0, props_contact_radius=0.0)
TINY_OVERRIDES = [
    "worldmodel.resolution=16",
    "worldmodel.context=2",
    "worldmodel.frame_channels=[8,16]",
    "worldmodel.occupancy_channels=[8,16]",
    "worldmodel.dim=32",
    "worldmodel.depth=1",
    "worldmodel.heads=2",
    "worldmodel.grid_tokens=2",
    "worldmodel.reward_hidden=32",
    "worldmodel.state_prior=32",
    "worldmodel.props_dynamics=16",
    "props_rollout_steps=3",
    "props_rollout_horizon=2",
    "props_rollout_batch=4",
    "worldmodel.occupancy_warp=true",
    "prior_rollout=2",
]


def _quat(shape, g):
    q = torch.randn(*shape, 4, generator=g) * 0.1
    q[..., 0] += 1.0
    return q / q.norm(dim=-1, keepdim=True)


def synthetic_episodes(n: int = 3, T: int = 10, res: int = 32, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Episodes with the dataset's keys, dtypes and shapes, moving smoothly (not physics)."""
    g = torch.Generator().manual_seed(seed)
    eps = []
    for _ in range(n):
        a = torch.rand(T, 6, generator=g) * 2 - 1
        m = torch.zeros(T, 227)
        m[:, 0:3] = torch.cumsum(torch.randn(T, 3, generator=g) * 0.05, 0)
        m[:, 3:7] = _quat((T,), g)
        m[:, 7:73] = torch.randn(T, 66, generator=g) * 0.3
        m[:, 73:161] = _quat((T, 22), g).reshape(T, 88)
        m[:, 161:227] = torch.randn(T, 66, generator=g) * 0.1
        p = m.clone()
        p[:, 0:3] += 1.5
        base = torch.randint(0, 255, (1, 3, res, res), generator=g, dtype=torch.uint8)
        rgb = (base.float() + torch.arange(T).view(T, 1, 1, 1) * 3).clamp(0, 255).to(torch.uint8)
        occ = torch.zeros(T, 8, 32, 32, dtype=torch.uint8)
        occ[:, 0, :4] = 1
        occ[:, :2, 15:17, 15:17] = 4
        eps.append(
            {
                "ego_rgb": rgb,
                "ego_depth": torch.rand(T, 1, res, res, generator=g) * 5,
                "motion": m,
                "partner_motion": p,
                "occupancy": occ,
                "props": torch.randn(T, 4, 3, generator=g),
                "actions": a,
                "partner_actions": torch.rand(T, 6, generator=g) * 2 - 1,
                "rewards": torch.randn(T, generator=g) * 0.1,
                "terminations": torch.zeros(T, dtype=torch.bool),
                "instruction": torch.full((T,), 3, dtype=torch.long),
            }
        )
    return eps


def tiny_model(seed: int = 0, sampler: dict | None = None, **kw) -> WorldModel:
    torch.manual_seed(seed)
    m = WorldModel(ArchitectureConfig(**(TINY | kw)), SamplerConfig(**(TINY_SAMPLER | (sampler or {}))))
    m.norm.fit([D.collate([D.EpisodeWindows(synthetic_episodes(), 3)[i] for i in range(8)])], m.config.resolution, True)
    return m


def context_of(eps, K=2, B=3):
    ws = D.collate([D.EpisodeWindows(eps, K + 1)[i] for i in range(B)])
    ctx = {k: ws[k][:, :K] for k in ("ego_rgb", "ego_depth", "motion", "partner_motion", "props", "occupancy")}
    return ctx, ws


# ----------------------------------------------------------------------------- data transforms
def test_motion_delta_round_trip():
    eps = synthetic_episodes(1)
    m = eps[0]["motion"]
    d = D.motion_delta(m[:-1], m[1:])
    back = D.apply_motion_delta(m[:-1], d)
    assert torch.allclose(back[:, 0:3], m[1:, 0:3], atol=1e-5)
    assert torch.allclose(back[:, 7:73], m[1:, 7:73], atol=1e-5)
    # quaternions: same rotation (up to sign)
    dot = (back[:, 3:7] * m[1:, 3:7]).sum(-1).abs()
    assert torch.allclose(dot, torch.ones_like(dot), atol=1e-5)


def test_occupancy_round_trip():
    occ = torch.randint(0, 5, (2, 8, 32, 32), dtype=torch.uint8)
    x = D.occupancy_to_model(occ)
    assert x.shape == (2, 40, 32, 32) and x.min() == -1 and x.max() == 1
    assert torch.equal(D.occupancy_from_model(x), occ)


# ----------------------------------------------------------------------------- persistence
def test_save_load_round_trip(tmp_path):
    m = tiny_model().eval()
    m.save_pretrained(tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors", "sampler.json"]
    m2 = WorldModel.from_pretrained(tmp_path / "ck")
    assert m2.config == m.config and m2.sampler == m.sampler
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    ctx, ws = context_of(synthetic_episodes())
    a = ws["actions"][:, :2]
    o1 = m.imagine(ctx, a, generator=torch.Generator().manual_seed(1))
    o2 = WorldModel.from_pretrained(tmp_path / "ck" / "model.safetensors").imagine(ctx, a, generator=torch.Generator().manual_seed(1))
    for k in o1:
        assert torch.equal(o1[k], o2[k]), k


def test_bad_checkpoints_name_file_and_problem(tmp_path):
    m = tiny_model()
    d = m.save_pretrained(tmp_path / "ck")
    w = d / "model.safetensors"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        WorldModel.from_pretrained(tmp_path / "nowhere")
    # truncated
    bad = tmp_path / "trunc"
    bad.mkdir()
    (bad / "config.json").write_text((d / "config.json").read_text())
    (bad / "model.safetensors").write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"trunc.*model\.safetensors.*truncated"):
        WorldModel.from_pretrained(bad)
    # not a safetensors file
    (bad / "model.safetensors").write_bytes(b"PK\x03\x04 this is a zip, not safetensors" * 10)
    with pytest.raises(ValueError, match="not a safetensors file"):
        WorldModel.from_pretrained(bad)
    # config / weights mismatch: names the weights file, the config, a tensor and both shapes
    cfg = json.loads((d / "config.json").read_text())
    cfg["dim"] = 48
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "model.safetensors").write_bytes(w.read_bytes())
    with pytest.raises(
        ValueError,
        match=r"model\.safetensors does not match the config .*config\.json: tensor '.*' has shape \(.*32.*\) in the file but \(.*48.*\)",
    ):
        WorldModel.from_pretrained(bad)
    cfg = json.loads((d / "config.json").read_text())
    cfg["colour"] = 1
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config\.json: unknown architecture config fields \['colour'\]"):
        WorldModel.from_pretrained(bad)


# ----------------------------------------------------------------------------- training / inference
def test_a_few_steps_lower_the_loss():
    m = tiny_model().train()
    ws = D.collate([D.EpisodeWindows(synthetic_episodes(), 3)[i] for i in range(6)])
    g = torch.Generator().manual_seed(0)
    c = m.config
    noise = {
        "ego": torch.randn(6, 4, 16, 16, generator=g),
        "motion": torch.randn(6, 227, generator=g),
        "partner_motion": torch.randn(6, 227, generator=g),
        "props": torch.randn(6, 4, 3, generator=g),
        "occupancy": torch.randn(6, 40, 32, 32, generator=g),
    }
    sigma = {k: torch.full((6,), 0.5) for k in noise}
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    losses = []
    for _ in range(15):
        out = m.loss(ws, noise, sigma, ["ego", "occupancy"])
        opt.zero_grad()
        out["total"].backward()
        opt.step()
        losses.append(float(out["total"].detach()))
    assert c.context == 2
    assert losses[-1] < 0.5 * losses[0], losses


def test_imagine_shapes_dtypes_and_skipping_frames(monkeypatch):
    m = tiny_model().eval()
    ctx, ws = context_of(synthetic_episodes())
    a = ws["actions"][:, :2]
    out = m.imagine(ctx, a, num_steps=2)
    want = {
        "ego_rgb": ((3, 3, 32, 32), torch.uint8),
        "ego_depth": ((3, 1, 32, 32), torch.float32),
        "motion": ((3, 227), torch.float32),
        "partner_motion": ((3, 227), torch.float32),
        "props": ((3, 4, 3), torch.float32),
        "occupancy": ((3, 8, 32, 32), torch.uint8),
        "reward": ((3,), torch.float32),
        "terminated": ((3,), torch.bool),
    }
    assert set(out) == set(want)
    for k, (shape, dt) in want.items():
        assert tuple(out[k].shape) == shape and out[k].dtype == dt, k
    assert int(out["occupancy"].max()) <= 4
    q = out["motion"][:, 3:7]
    assert torch.allclose(q.norm(dim=-1), torch.ones(3), atol=1e-5)

    # without frames the frame U-Net never runs and the context needs no frames
    def boom(*a, **k):
        raise AssertionError("frame branch ran")

    monkeypatch.setattr(m.branches["ego"], "encode", boom)
    state_ctx = {k: v for k, v in ctx.items() if k not in ("ego_rgb", "ego_depth")}
    out = m.imagine(state_ctx, a, modalities=["motion", "partner_motion", "props", "occupancy"])
    assert "ego_rgb" not in out and tuple(out["occupancy"].shape) == (3, 8, 32, 32)
    roll = m.rollout(state_ctx, torch.zeros(3, 4, 6), past_actions=a[:, :1], modalities=["motion", "partner_motion", "props"])
    assert tuple(roll["motion"].shape) == (3, 4, 227) and tuple(roll["props"].shape) == (3, 4, 4, 3)
    assert tuple(roll["reward"].shape) == (3, 4)
    with pytest.raises(ValueError, match=r"actions has shape \(3, 5\), expected \(3, 2, 6\)"):
        m.imagine(state_ctx, torch.zeros(3, 5), modalities=["motion"])
    with pytest.raises(KeyError, match="ego_rgb"):
        m.imagine(state_ctx, a)


def test_clean_motion_condition_changes_the_frames():
    m = tiny_model().eval()
    ctx, ws = context_of(synthetic_episodes())
    a = ws["actions"][:, :2]
    nxt = ws["motion"][:, 2]
    other = nxt.clone()
    other[:, 0:3] += 0.5  # the body moved elsewhere
    other[:, 7:73] += 0.2
    o1 = m.imagine(ctx, a, modalities=["ego_rgb", "ego_depth"], given={"motion": nxt}, generator=torch.Generator().manual_seed(0))
    o2 = m.imagine(ctx, a, modalities=["ego_rgb", "ego_depth"], given={"motion": other}, generator=torch.Generator().manual_seed(0))
    o3 = m.imagine(ctx, a, modalities=["ego_rgb", "ego_depth"], given={"motion": nxt}, generator=torch.Generator().manual_seed(0))
    assert torch.equal(o1["ego_rgb"], o3["ego_rgb"])  # deterministic given the generator
    assert not torch.equal(o1["ego_depth"], o2["ego_depth"])  # the clean motion reaches the frames
    assert torch.allclose(o1["motion"], nxt, atol=1e-4)  # a given modality comes back as given
    # and the other way: given frames change the motion prediction
    f1 = m.imagine(
        ctx,
        a,
        modalities=["motion"],
        given={"ego_rgb": ws["ego_rgb"][:, 2], "ego_depth": ws["ego_depth"][:, 2]},
        generator=torch.Generator().manual_seed(0),
    )
    f2 = m.imagine(
        ctx,
        a,
        modalities=["motion"],
        given={"ego_rgb": 255 - ws["ego_rgb"][:, 2], "ego_depth": ws["ego_depth"][:, 2] * 0.5},
        generator=torch.Generator().manual_seed(0),
    )
    assert not torch.allclose(f1["motion"], f2["motion"])


def test_zero_initial_noise_gives_the_same_prediction_for_any_seed():
    m = tiny_model().eval()
    ctx, ws = context_of(synthetic_episodes())
    a = ws["actions"][:, :2]
    o1 = m.imagine(ctx, a, init_noise=0.0, generator=torch.Generator().manual_seed(0))
    o2 = m.imagine(ctx, a, init_noise=0.0, generator=torch.Generator().manual_seed(1))
    o3 = m.imagine(ctx, a, generator=torch.Generator().manual_seed(1))
    assert torch.equal(o1["motion"], o2["motion"]) and torch.equal(o1["ego_rgb"], o2["ego_rgb"])
    assert not torch.equal(o1["motion"], o3["motion"])


def test_actions_change_the_prediction():
    m = tiny_model().eval()
    ctx, ws = context_of(synthetic_episodes())
    a = ws["actions"][:, :2]
    b = a.clone()
    b[:, -1] = -b[:, -1]
    o1 = m.imagine(ctx, a, modalities=["motion"], generator=torch.Generator().manual_seed(0))
    o2 = m.imagine(ctx, b, modalities=["motion"], generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(o1["motion"], o2["motion"])


def test_partner_commands_condition_the_partner_and_are_optional():
    m = tiny_model(state_prior=16, partner_actions=True).eval()
    ctx, ws = context_of(synthetic_episodes())
    a, pa = ws["actions"][:, :2], ws["partner_actions"][:, :2]
    kw = dict(modalities=["motion", "partner_motion"], init_noise=0.0)
    o1 = m.imagine(ctx, a, partner_actions=pa, **kw)
    o2 = m.imagine(ctx, a, partner_actions=-pa, **kw)
    assert not torch.allclose(o1["partner_motion"], o2["partner_motion"])
    o3 = m.imagine(ctx, a, **kw)  # unknown: the model guesses the partner
    assert torch.isfinite(o3["partner_motion"]).all()
    with pytest.raises(ValueError, match="partner_actions has shape"):
        m.imagine(ctx, a, partner_actions=pa[:, :1], **kw)
    with pytest.raises(ValueError, match="not trained with the partner's commands"):
        tiny_model().eval().imagine(ctx, a, partner_actions=pa, **kw)
    out = m.rollout(
        ctx,
        ws["actions"][:, 1:3],
        past_actions=ws["actions"][:, :1],
        partner_actions=ws["partner_actions"][:, :3],
        modalities=["partner_motion"],
    )
    assert out["partner_motion"].shape == (3, 2, 227)


def test_state_prior_is_learned_and_clean_conditions_pass_through():
    m = tiny_model(state_prior=16)
    eps = synthetic_episodes()
    ds = D.EpisodeWindows(eps, 3)
    w = D.collate([ds[i] for i in range(6)])
    B = 6
    noise = {k: torch.randn(B, *s) for k, s in (("motion", (227,)), ("partner_motion", (227,)), ("props", (4, 3)))}
    sigma = {k: torch.full((B,), 1.0) for k in noise}
    losses = m.loss(w, noise, sigma, branches=())
    assert "prior_motion" in losses and "prior_partner_motion" in losses and float(losses["prior_motion"].detach()) > 0
    losses["total"].backward()
    assert m.prior[0].weight.grad is not None and float(m.prior[0].weight.grad.abs().sum()) > 0
    # a clean modality (sigma = 0) is returned exactly, the prior's shift notwithstanding
    with torch.no_grad():
        obs = {k: D.with_props(w)[k][:, :2] for k in ("motion", "partner_motion", "props")}
        ctx = m.encode_context(obs, w["actions"][:, :2], branches=())
        x = {k: torch.randn(B, *s) for k, s in (("motion", (227,)), ("partner_motion", (227,)), ("props", (4, 3)))}
        den = m.denoise(ctx, x, {"motion": torch.zeros(B), "partner_motion": torch.ones(B), "props": torch.ones(B)})
    assert torch.allclose(den["motion"], x["motion"], atol=1e-6)


def test_props_dynamics_network_moves_the_props_and_learns_from_its_own_dreams(tmp_path):
    with pytest.raises(ValueError, match=r"props_dynamics = 16 is invalid \(expected 0, or a state_prior \(got 0\)"):
        ArchitectureConfig(**(TINY | dict(props_dynamics=16)))
    m = tiny_model(state_prior=16, props_dynamics=16, sampler=dict(init_noise=0.0))
    eps = synthetic_episodes(T=10)
    wins = [D.collate([D.EpisodeWindows(eps, 3)[i] for i in range(8)])]
    m.fit_props_features(wins)
    f = D.props_features(
        *(wins[0][k][:, i] for k, i in (("motion", 1), ("motion", 2), ("partner_motion", 2))),
        D.with_props(wins[0])["props"][:, 0],
        D.with_props(wins[0])["props"][:, 1],
    )
    assert f.shape == (8, D.N_PROPS, D.PROPS_FEATS)
    assert torch.allclose(m.props_feat_mean, f.flatten(0, 1).mean(0), atol=1e-5) and bool((m.props_feat_std > 0).all())
    # the loss trains the network (its targets are the recorded displacements in 2 mm units)
    w = D.collate([D.EpisodeWindows(eps, 3)[i] for i in range(6)])
    noise = {k: torch.randn(6, *s) for k, s in (("motion", (227,)), ("partner_motion", (227,)), ("props", (4, 3)))}
    losses = m.loss(w, noise, {k: torch.full((6,), 1.0) for k in noise}, branches=())
    assert float(losses["props_dynamics"].detach()) > 0
    losses["total"].backward()
    assert float(m.props_net[0].weight.grad.abs().sum()) > 0
    # a dream's props are the network's, fed the dreamed bodies and the last two props
    m.eval()
    ctx, ws = context_of(eps)
    a = ws["actions"][:, :2]
    with torch.no_grad():
        out = m.imagine(ctx, a, modalities=["motion", "partner_motion", "props"])
        want = m.props_step(ctx["motion"][:, 1], out["motion"], out["partner_motion"], ctx["props"][:, 0], ctx["props"][:, 1])
    assert torch.allclose(out["props"], want, atol=1e-5)
    # given props pass through untouched
    given = ctx["props"][:, 1] + 0.5
    assert torch.allclose(m.imagine(ctx, a, modalities=["props"], given={"props": given})["props"], given, atol=1e-5)
    # the prior's own dreams also dream the props: the target stays the recorded step
    w6 = D.collate([D.EpisodeWindows(eps, 6)[i] for i in range(3)])
    r = m.prior_rollout(w6, 3)
    assert torch.equal(r["props"][:, 2], w6["props"][:, 5].float()) and torch.equal(r["props_recorded_last"], w6["props"][:, 4].float())
    assert not torch.equal(r["props"][:, :2], w6["props"][:, 3:5].float())
    # a resting prop that no joint reaches stays at rest; a moving or a touched one does not
    m.sampler.props_rest_threshold, m.sampler.props_contact_radius = 5e-4, 0.75
    body = ctx["motion"][:, 1]
    joint0 = D.joints_world(body)[:, 0]
    last = torch.stack([joint0 + 0.3, joint0 + 50.0, joint0 + 50.0, joint0 + 50.0], 1)
    prev = last.clone()
    prev[:, 2] -= 0.01  # prop 2 slid 1 cm last step
    nxt = last + 0.02
    kept = m.props_passive(nxt, body, body, prev, last)
    assert torch.equal(kept[:, 0], nxt[:, 0]) and torch.equal(kept[:, 2], nxt[:, 2])
    assert torch.equal(kept[:, 1], last[:, 1]) and torch.equal(kept[:, 3], last[:, 3])
    # the feature statistics are saved with the weights
    m.save_pretrained(tmp_path / "ck")
    back = WorldModel.from_pretrained(tmp_path / "ck")
    assert torch.equal(back.props_feat_std, m.props_feat_std) and back.config.props_dynamics == 16


def test_prior_rollout_dreams_what_a_one_step_dream_does():
    """The prior trains on its own dreams exactly as the one-step, zero-noise dream runs it."""
    m = tiny_model(state_prior=16, sampler=dict(init_noise=0.0)).eval()
    eps = synthetic_episodes(T=10)
    w = D.collate([D.EpisodeWindows(eps, 6)[i] for i in range(3)])  # K = 2, 3 dreamed steps, a target
    out = m.prior_rollout(w, 3)
    assert out["motion"].shape == (3, 3, 227) and out["actions"].shape == (3, 3, 6)
    assert torch.equal(out["motion"][:, 2], w["motion"][:, 5])  # the target is the recorded step
    assert torch.equal(out["motion_recorded_last"], w["motion"][:, 4])
    # the dreamed context: three one-step imagine calls (bodies only) with the recorded props
    mot, par = w["motion"][:, :2], w["partner_motion"][:, :2]
    with torch.no_grad():
        for j in range(3):
            ctx = {"motion": mot, "partner_motion": par, "props": w["props"][:, j : j + 2]}
            nxt = m.imagine(ctx, w["actions"][:, j : j + 2], num_steps=1, modalities=["motion", "partner_motion", "props"])
            mot = torch.cat([mot[:, 1:], nxt["motion"][:, None]], 1)
            par = torch.cat([par[:, 1:], nxt["partner_motion"][:, None]], 1)
    assert torch.allclose(out["motion"][:, :2], mot, atol=1e-5)
    assert torch.allclose(out["partner_motion"][:, :2], par, atol=1e-5)
    # the loss takes the root's unseen change (horizontal move, turn) from the recorded steps
    B = 3
    noise = {k: torch.randn(B, *sh) for k, sh in (("motion", (227,)), ("partner_motion", (227,)), ("props", (4, 3)))}
    sigma = {k: torch.full((B,), 1.0) for k in noise}
    losses = m.loss(D.collate([D.EpisodeWindows(eps, 3)[i] for i in range(B)]), noise, sigma, (), prior_window=out)
    assert torch.isfinite(losses["prior_motion"]) and float(losses["prior_motion"]) > 0
    with pytest.raises(ValueError, match="cannot hold"):
        m.prior_rollout(w, 4)


def test_window_batches_gather_what_collate_stacks():
    eps = synthetic_episodes()
    ds = D.EpisodeWindows([{k: ep[k] for k in ("motion", "actions", "partner_actions", "props")} for ep in eps], 3)
    idx = [0, 5, 7, 3, 3, len(ds) - 1]
    a, b = ds.batch(idx), D.collate([ds[i] for i in idx])
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_the_regression_baseline_never_sees_its_target(monkeypatch):
    m = tiny_model(deterministic=True)
    ds = D.EpisodeWindows(synthetic_episodes(), 3)
    w = D.collate([ds[i] for i in range(4)])
    seen = {}
    real = m.denoise

    def spy(ctx, x, sigma):
        seen.update({k: v.clone() for k, v in x.items()})
        return real(ctx, x, sigma)

    monkeypatch.setattr(m, "denoise", spy)
    noise = {k: torch.randn(4, *s) for k, s in (("motion", (227,)), ("partner_motion", (227,)), ("props", (4, 3)))}
    sigma = {"motion": torch.tensor([1.0, 0.0, 1.0, 1.0]), "partner_motion": torch.ones(4), "props": torch.ones(4)}
    m.loss(w, noise, sigma, branches=())
    assert torch.count_nonzero(seen["motion"][[0, 2, 3]]) == 0 and torch.count_nonzero(seen["partner_motion"]) == 0
    assert torch.count_nonzero(seen["motion"][1]) > 0, "a clean modality is still a condition"


# ----------------------------------------------------------------------------- train-wm
def _cfg(data: Path, out: Path, *extra: str):
    from dreamgym.configs import compose

    return compose(
        "train_wm",
        [
            f"data={data}",
            f"out={out}",
            "batch_size=4",
            "num_threads=1",
            "progress=false",
            "stats_windows=16",
            "log_every=1",
            "eval_every=0",
            "ckpt_every=2",
            "warmup_steps=1",
            *TINY_OVERRIDES,
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def episodes_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("wmdata") / "episodes.safetensors"
    return save_episodes(synthetic_episodes(n=3, T=10), p)


def _log(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def test_resume_after_stop_equals_uninterrupted(tmp_path, episodes_file):
    a, b = tmp_path / "a", tmp_path / "b"
    train(_cfg(episodes_file, a, "steps=5"))
    train(_cfg(episodes_file, b, "steps=5", "stop_after=3"))  # "killed" after step 3; checkpoint at 2
    assert latest_checkpoint(b).name == "step_00000002"
    train(_cfg(episodes_file, b, "steps=5"))
    la, lb = _log(a), _log(b)
    assert [r["step"] for r in lb] == [1, 2, 3, 4, 5]
    assert la == lb
    wa = WorldModel.from_pretrained(a / "final").state_dict()
    wb = WorldModel.from_pretrained(b / "final").state_dict()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert (a / "tb").is_dir() and any((a / "tb").iterdir())


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path, episodes_file, monkeypatch):
    real = WorldModel.loss
    calls = {"n": 0}

    def loss(self, *args, **kw):
        out = real(self, *args, **kw)
        calls["n"] += 1
        if calls["n"] == 4:  # step index 3
            out["motion"] = out["motion"] * float("nan")
            out["total"] = out["total"] + out["motion"]
        return out

    monkeypatch.setattr(WorldModel, "loss", loss)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss nan at step 3.*'motion': nan.*step_00000002"):
        train(_cfg(episodes_file, out, "steps=6"))
    assert latest_checkpoint(out).name == "step_00000002"
    WorldModel.from_pretrained(latest_checkpoint(out))  # loadable
    assert not (out / "final").exists()


def test_data_without_a_needed_modality_is_refused(tmp_path):
    eps = synthetic_episodes()
    for e in eps:
        del e["occupancy"]
    p = save_episodes(eps, tmp_path / "no_occ.safetensors")
    with pytest.raises(
        ValueError, match=r"no_occ\.safetensors: the data lack \[.occupancy.\].*worldmodel\.modalities=\[ego,motion,partner_motion,props\]"
    ):
        train(_cfg(p, tmp_path / "run", "steps=1"))
    assert load_episodes(p, "heldout") == []


@pytest.mark.slow
def test_two_processes_train_the_same_model_as_one(tmp_path, episodes_file):
    """Two CPU processes (gloo) with half the global batch each == one process with all of it."""
    common = [
        f"data={episodes_file}",
        "batch_size=4",
        "num_threads=1",
        "progress=false",
        "stats_windows=16",
        "eval_every=0",
        "ckpt_every=3",
        "steps=3",
        "warmup_steps=1",
        *TINY_OVERRIDES,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = tmp_path / "one"
    two = tmp_path / "two"
    subprocess.run([sys.executable, "-m", "dreamgym.app.cli", "train-wm", f"out={one}", *common], check=True, env=env, timeout=300)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29531",
            "-m",
            "dreamgym.app.cli",
            "train-wm",
            f"out={two}",
            *common,
        ],
        check=True,
        env=env,
        timeout=300,
    )
    # the logged losses are those of the global batch: equal step by step (steps 2 and 3 also
    # depend on the updated weights)
    l1, l2 = _log(one), _log(two)
    assert len(l1) == len(l2) == 3
    for r1, r2 in zip(l1, l2):
        for k in ("total", "motion", "partner_motion", "props", "reward", "terminated"):
            assert r1[k] == pytest.approx(r2[k], rel=1e-4, abs=1e-6), (r1["step"], k)
    w1 = WorldModel.from_pretrained(one / "final_raw").state_dict()
    w2 = WorldModel.from_pretrained(two / "final_raw").state_dict()
    diffs = torch.cat([(w1[k] - w2[k]).abs().flatten() for k in w1 if w1[k].is_floating_point()])
    # gradients agree to float rounding; Adam can magnify rounding where a gradient is ~0, so a
    # few weights differ by up to ~lr, but the bulk are equal
    assert float((diffs > 1e-5).float().mean()) < 0.01
    assert float(diffs.max()) < 3e-3


def test_init_fine_tunes_from_a_pretrained_model(tmp_path, episodes_file):
    base = tmp_path / "base"
    train(_cfg(episodes_file, base, "steps=2"))
    pre = WorldModel.from_pretrained(base / "final")
    # the architecture comes from init= even when worldmodel.* says otherwise (here: its depth)
    tuned = tmp_path / "tuned"
    # (no props rollout stage: it has its own learning rate)
    train(_cfg(episodes_file, tuned, "steps=1", "lr=1e-9", "props_rollout_steps=0", f"init={base / 'final'}", "worldmodel.depth=2"))
    post = WorldModel.from_pretrained(tuned / "final")
    assert post.config == pre.config
    sd_pre, sd_post = pre.state_dict(), post.state_dict()
    for k in sd_pre:  # norm statistics kept, weights barely moved (lr ~ 0)
        assert torch.allclose(sd_pre[k].float(), sd_post[k].float(), atol=1e-4), k
    # a pretrained model for other frame sizes than the data is refused, naming both
    other = tmp_path / "other"
    m = tiny_model(data_resolution=64)
    m.save_pretrained(other)
    with pytest.raises(ValueError, match=r"64x64.*32x32"):
        train(_cfg(episodes_file, tmp_path / "bad", "steps=1", f"init={other}"))


def test_warping_model_predicts_frames_from_the_warped_base(monkeypatch):
    """An ``ego_warp`` model: its loss trains, imagine dreams the bodies first and the frames
    given them (relative to the last frame warped to the dreamed head pose), and all three
    conditionings still work."""
    m = tiny_model(ego_warp=True)
    with pytest.raises(ValueError, match=r"ego_warp = True is invalid \(expected false, or ego frames with depth"):
        ArchitectureConfig(**(TINY | {"ego_warp": True, "ego_depth": False}))
    eps = synthetic_episodes()
    ws = D.collate([D.EpisodeWindows(eps, 3)[i] for i in range(4)])
    g = torch.Generator().manual_seed(0)
    noise = {
        "ego": torch.randn(4, 4, 16, 16, generator=g),
        "motion": torch.randn(4, 227, generator=g),
        "partner_motion": torch.randn(4, 227, generator=g),
        "props": torch.randn(4, 4, 3, generator=g),
    }
    sigma = {k: torch.full((4,), 0.5) for k in noise}
    sigma["motion"] = torch.tensor([0.0, 0.0, 0.5, 0.5])  # the first two: warped bases
    seen = {}
    real_base = m.frame_base

    def spy(ctx, next_motion=None, warp=None, *rest):
        real_base(ctx, next_motion, warp, *rest)
        seen["valid"] = ctx["ego_base_valid"].flatten(1).amax(1)

    monkeypatch.setattr(m, "frame_base", spy)
    out = m.loss(ws, noise, sigma, ["ego"])
    assert torch.isfinite(out["total"]) and float(out["ego"].detach()) > 0
    assert seen["valid"].tolist()[2:] == [0.0, 0.0]  # never warp by a motion being denoised
    monkeypatch.undo()

    m.eval()
    ctx, ws = context_of(eps)
    a = ws["actions"][:, :2]
    both = m.imagine(ctx, a, init_noise=0.0)
    state = m.imagine(ctx, a, modalities=["motion", "partner_motion", "props"], init_noise=0.0)
    for k in ("motion", "partner_motion", "props", "reward"):
        assert torch.allclose(both[k], state[k], atol=1e-5), k  # the frames follow the dreamed bodies
    states = {k: both[k] for k in ("motion", "partner_motion", "props")}
    given = m.imagine(ctx, a, modalities=["ego_rgb", "ego_depth", "occupancy"], given=states, init_noise=0.0)
    assert torch.equal(given["ego_rgb"], both["ego_rgb"])
    moved = both["motion"].clone()
    moved[:, 3:7] = torch.tensor([0.92388, 0.0, 0.0, 0.38268])  # turned by 45 degrees
    turned = m.imagine(ctx, a, modalities=["ego_rgb", "ego_depth", "occupancy"], given=states | {"motion": moved}, init_noise=0.0)
    assert not torch.equal(turned["ego_depth"], given["ego_depth"])
    f1 = m.imagine(ctx, a, modalities=["motion"], given={"ego_rgb": ws["ego_rgb"][:, 2], "ego_depth": ws["ego_depth"][:, 2]})
    f2 = m.imagine(ctx, a, modalities=["motion"], given={"ego_rgb": 255 - ws["ego_rgb"][:, 2], "ego_depth": ws["ego_depth"][:, 2] * 0.5})
    assert not torch.allclose(f1["motion"], f2["motion"])
    roll = m.rollout(ctx, torch.zeros(3, 3, 6), past_actions=a[:, :1])
    assert tuple(roll["ego_rgb"].shape) == (3, 3, 3, 32, 32)
    # scene memory: the rollout's real frame; remembering the last frame itself changes nothing,
    # remembering another view changes the dreamed frames
    mem = m.scene_memory(ctx)
    assert set(mem) == {"memory_rgb", "memory_depth", "memory_motion"} and torch.equal(mem["memory_rgb"], ctx["ego_rgb"][:, -1])
    same = m.imagine(ctx | mem, a, init_noise=0.0)
    assert torch.equal(same["ego_rgb"], both["ego_rgb"])
    other = {"memory_rgb": 255 - ctx["ego_rgb"][:, -1], "memory_depth": ctx["ego_depth"][:, -1], "memory_motion": ctx["motion"][:, -1]}
    assert not torch.equal(m.imagine(ctx | other, a, init_noise=0.0)["ego_rgb"], both["ego_rgb"])
    assert m.scene_memory({k: v for k, v in ctx.items() if k != "ego_rgb"}) == {}


def test_props_at_rest_stay_at_rest():
    m = tiny_model().eval()
    ctx, ws = context_of(synthetic_episodes())
    a = ws["actions"][:, :2]
    free = m.imagine(ctx, a, modalities=["props"], init_noise=0.0)
    assert not torch.equal(free["props"], ctx["props"][:, -1])
    m.sampler.props_rest_threshold = 1e6  # every predicted displacement counts as drift
    held = m.imagine(ctx, a, modalities=["props"], init_noise=0.0)
    assert torch.equal(held["props"], ctx["props"][:, -1])
    m.sampler.props_rest_threshold = 1e-9  # nothing is dropped
    assert torch.equal(m.imagine(ctx, a, modalities=["props"], init_noise=0.0)["props"], free["props"])


def test_warp_occupancy_carries_the_scenery_into_the_next_heading_frame():
    from dreamgym.envs.occupancy import AGENT, STATIC

    def body(x, y, yaw):
        m = torch.zeros(1, 227)
        m[0, 0:3] = torch.tensor([x, y, 0.9])
        m[0, 3] = math.cos(yaw / 2)
        m[0, 6] = math.sin(yaw / 2)
        m[0, 73:161] = torch.tensor([1.0, 0, 0, 0]).repeat(22)
        return m  # every joint at the pelvis

    occ = torch.zeros(1, 8, 32, 32, dtype=torch.uint8)
    occ[0, :4, 20, 16] = STATIC  # a pillar 1.1 m ahead
    occ[0, 3, 16, 16] = AGENT  # the old body, which must not be carried along
    far = body(100.0, 100.0, 0.0)
    # one voxel forward: the pillar comes one voxel closer, the front row is new ground
    g, v = D.warp_occupancy(occ, body(0, 0, 0), body(0.25, 0, 0), far)
    assert g[0, :4, 19, 16].eq(STATIC).all() and int((g == STATIC).sum()) == 4
    assert g[0, 3, 16, 16] == AGENT and int((g == AGENT).sum()) == 1
    assert not v[0, 0, 31].any() and v[0, 0, :31].all()
    # a half turn about the pelvis mirrors the grid through its centre
    g, v = D.warp_occupancy(occ, body(0, 0, 0), body(0, 0, math.pi), far)
    assert g[0, :4, 11, 15].eq(STATIC).all() and int((g == STATIC).sum()) == 4 and bool(v.all())


def test_an_occupancy_warp_model_measures_the_next_grid_from_the_carried_one():
    m = tiny_model(occupancy_warp=True).eval()
    ctx, ws = context_of(synthetic_episodes())
    a = ws["actions"][:, :2]
    with torch.no_grad():
        out = m.imagine(ctx, a, modalities=["occupancy"], init_noise=0.0)
        assert out["occupancy"].shape == (3, 8, 32, 32) and out["occupancy"].dtype == torch.uint8
        # given both next bodies, the base is the last grid carried to them (valid where covered)
        enc = m.encode_context(ctx, a, ("occupancy",))
        assert float(enc["occupancy_base_valid"].sum()) == 0  # no next bodies yet: the last grid
        m.occupancy_base(enc, ws["motion"][:, 2], ws["partner_motion"][:, 2])
        grid, valid = D.warp_occupancy(ctx["occupancy"][:, 1], ctx["motion"][:, 1], ws["motion"][:, 2], ws["partner_motion"][:, 2])
        assert torch.equal(enc["occupancy_base_model"], D.occupancy_to_model(grid))
        assert torch.equal(enc["occupancy_base_valid"], valid.float())
        # a scene memory (the rollout's real grid) is carried instead where it covers
        mem = m.scene_memory(ctx)
        assert set(mem) >= {"memory_occupancy", "memory_motion"} and torch.equal(mem["memory_occupancy"], ctx["occupancy"][:, 1])
        other = {"memory_occupancy": torch.ones_like(ctx["occupancy"][:, 1]), "memory_motion": ctx["motion"][:, 1]}
        enc2 = m.encode_context(ctx | other, a, ("occupancy",))
        m.occupancy_base(enc2, ws["motion"][:, 2], ws["partner_motion"][:, 2])
        mgrid, mvalid = D.warp_occupancy(other["memory_occupancy"], ctx["motion"][:, 1], ws["motion"][:, 2], ws["partner_motion"][:, 2])
        assert torch.equal(enc2["occupancy_base_model"], D.occupancy_to_model(torch.where(mvalid, mgrid, grid)))
        # and the dream's grid is decoded from it
        given = {"motion": ws["motion"][:, 2], "partner_motion": ws["partner_motion"][:, 2]}
        x0 = {"occupancy": torch.zeros(3, m.config.n_occ_channels, 32, 32)}
        dec = m._decode(enc, {**m._given_to_model(given, enc), "props": torch.zeros(3, 4, 3), **x0})
        assert torch.equal(dec["occupancy"], grid)


# ----------------------------------------------------------------------------- configs
def test_config_defaults_are_the_shipped_model_and_the_yaml_files():
    from omegaconf import OmegaConf

    from dreamgym.configs import compose
    from dreamgym.worldmodel.model import DEFAULT_CHECKPOINT

    shipped = json.loads((DEFAULT_CHECKPOINT / "config.json").read_text())
    assert shipped.pop("format_version") == 4 and ArchitectureConfig.from_dict(shipped) == ArchitectureConfig()
    sampler = json.loads((DEFAULT_CHECKPOINT / "sampler.json").read_text())
    assert sampler.pop("format_version") == 4 and SamplerConfig.from_dict(sampler) == SamplerConfig()
    configs = Path(__file__).resolve().parent.parent / "configs"
    wm = OmegaConf.to_container(OmegaConf.load(configs / "worldmodel" / "default.yaml"))
    assert ArchitectureConfig.from_dict(wm) == ArchitectureConfig()
    assert SamplerConfig.from_dict(OmegaConf.to_container(OmegaConf.load(configs / "sampler" / "default.yaml"))) == SamplerConfig()
    # train-wm's worldmodel group: the default and its deterministic twin
    from dreamgym.worldmodel.train import model_config_from

    assert model_config_from(compose("train_wm", []), 32) == ArchitectureConfig()
    det = model_config_from(compose("train_wm", ["worldmodel=deterministic"]), 32)
    assert det.deterministic and dataclasses.replace(det, deterministic=False) == ArchitectureConfig()


@pytest.mark.parametrize(
    "cls, values, message",
    [
        (ArchitectureConfig, {"context": "abc"}, r"context = 'abc' is invalid \(expected an integer >= 1\)"),
        (ArchitectureConfig, {"context": 0}, r"context = 0 is invalid \(expected an integer >= 1\)"),
        (ArchitectureConfig, {"context": True}, r"context = True is invalid \(expected an integer"),
        (ArchitectureConfig, {"heads": 5}, r"heads = 5 is invalid \(expected a divisor of dim \(96\)\)"),
        (ArchitectureConfig, {"dim": 95, "heads": 5}, r"dim = 95 is invalid \(expected an even number >= 2\)"),
        (ArchitectureConfig, {"sigma_data": 0}, r"sigma_data = 0.0 is invalid \(expected a number > 0\)"),
        (ArchitectureConfig, {"sigma_max": float("nan")}, r"sigma_max = nan is invalid \(expected a number > 0\)"),
        (
            ArchitectureConfig,
            {"frame_channels": [16, 30]},
            r"frame_channels = \[16, 30\] is invalid \(expected .*multiples of groups \(8\)",
        ),
        (
            ArchitectureConfig,
            {"frame_channels": [8, 8, 8, 8, 8, 8, 8]},
            r"frame_channels = .* is invalid \(expected at most as many levels",
        ),
        (ArchitectureConfig, {"occupancy_channels": [0, 8]}, r"occupancy_channels = \[0, 8\] is invalid \(expected a non-empty list"),
        (ArchitectureConfig, {"modalities": ["ego", "smell"]}, r"modalities = \['ego', 'smell'\] is invalid"),
        (ArchitectureConfig, {"modalities": ["ego", "motion"]}, r"modalities = .* is invalid \(expected a list that includes the state"),
        (ArchitectureConfig, {"occupancy_shape": [8, 32]}, r"occupancy_shape = \[8, 32\] is invalid \(expected three sizes"),
        (ArchitectureConfig, {"state_prior": -1}, r"state_prior = -1 is invalid \(expected an integer >= 0\)"),
        (SamplerConfig, {"num_steps": 0}, r"num_steps = 0 is invalid \(expected an integer >= 1\)"),
        (SamplerConfig, {"init_noise": -0.5}, r"init_noise = -0.5 is invalid \(expected a number >= 0.0\)"),
        (SamplerConfig, {"sigma_min": 0.0}, r"sigma_min = 0.0 is invalid \(expected a number > 0\)"),
        (SamplerConfig, {"props_contact_radius": "far"}, r"props_contact_radius = 'far' is invalid \(expected a number >= 0.0\)"),
    ],
)
def test_bad_config_values_are_refused_naming_key_value_and_what_is_allowed(cls, values, message):
    with pytest.raises(ValueError, match=f"^{cls.__name__}: {message}") as e:
        cls(**values)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=f"^some.json: {message}"):
        cls.from_dict(values, source="some.json")


def test_training_and_noise_configs_are_checked():
    from dreamgym.worldmodel.config import NoiseConfig, TrainingConfig

    for values, message in (
        ({"steps": -5}, r"steps = -5 is invalid \(expected an integer >= 1\)"),
        ({"batch_size": 0}, r"batch_size = 0 is invalid \(expected an integer >= 1\)"),
        ({"lr": 0.0}, r"lr = 0.0 is invalid \(expected a number > 0\)"),
        ({"ema_decay": 1.0}, r"ema_decay = 1.0 is invalid \(expected a number in \[0, 1\)\)"),
        ({"noise": {"p_clean": 1.5}}, r"noise.p_clean = 1.5 is invalid \(expected a number in \[0, 1\]\)"),
        ({"noise": {"p_clean": 0.6, "p_sigma_max": 0.6}}, r"noise.p_sigma_max = 0.6 is invalid \(expected at most 1 - p_clean \(0.4\)\)"),
    ):
        with pytest.raises(ValueError, match=f"^train_wm: {message}"):
            TrainingConfig.from_dict(values, source="train_wm")
    with pytest.raises(ValueError, match=r"^train_wm: unknown noise config fields \['p_loud'\]"):
        TrainingConfig.from_dict({"noise": {"p_loud": 0.1}}, source="train_wm")
    t = TrainingConfig.from_dict({"steps": 10, "noise": {"p_clean": 0.2}})
    assert t.steps == 10 and t.noise == NoiseConfig(p_clean=0.2) and TrainingConfig().noise == NoiseConfig()


def test_unknown_keys_are_named_and_sampler_keys_pointed_to_their_file():
    with pytest.raises(ValueError, match=r"^x: unknown architecture config fields \['colour'\]; allowed: resolution, "):
        ArchitectureConfig.from_dict({"colour": 1}, source="x")
    with pytest.raises(ValueError, match=r"unknown architecture config fields \['init_noise'\] \(\['init_noise'\] belong to the sampler"):
        ArchitectureConfig.from_dict({"init_noise": 0.0}, source="x")
    with pytest.raises(ValueError, match=r"^x: unknown sampler config fields \['heun'\]"):
        SamplerConfig.from_dict({"heun": True}, source="x")


def test_a_sampler_must_fit_the_architecture():
    with pytest.raises(
        ValueError, match=r"^SamplerConfig: sigma_min = 30.0 is invalid \(expected a number below the architecture's sigma_max \(20.0\)\)"
    ):
        WorldModel(ArchitectureConfig(**TINY), SamplerConfig(sigma_min=30.0))
    with pytest.raises(TypeError, match="needs an ArchitectureConfig"):
        WorldModel(SamplerConfig())


def test_a_loaded_checkpoint_is_checked_like_a_built_config(tmp_path):
    d = tiny_model().save_pretrained(tmp_path / "ck")
    good = json.loads((d / "config.json").read_text())
    for change, message in (
        ({"sigma_max": -5, "sigma_data": 0}, r"config\.json: sigma_data = 0.0 is invalid \(expected a number > 0\)"),
        ({"sigma_max": -5}, r"config\.json: sigma_max = -5.0 is invalid \(expected a number > 0\)"),
        ({"context": "abc"}, r"config\.json: context = 'abc' is invalid \(expected an integer >= 1\)"),
        ({"heads": 5}, r"config\.json: heads = 5 is invalid \(expected a divisor of dim \(32\)\)"),
        ({"format_version": 99}, r"config\.json: format_version 99 is newer than this dreamgym reads \(up to 4\)"),
        ({"format_version": "2"}, r"config\.json: format_version = '2' is invalid \(expected an integer from 1 to 4\)"),
    ):
        (d / "config.json").write_text(json.dumps(good | change))
        with pytest.raises(ValueError, match=message) as e:
            WorldModel.from_pretrained(d)
        assert str(d) in str(e.value) and "\n" not in str(e.value)
    (d / "config.json").write_text(json.dumps(good))
    sampler = json.loads((d / "sampler.json").read_text())
    for change, message in (
        ({"num_steps": 0}, r"sampler\.json: num_steps = 0 is invalid \(expected an integer >= 1\)"),
        ({"sigma_min": 25.0}, r"sampler\.json: sigma_min = 25.0 is invalid \(expected a number below the architecture's sigma_max"),
        ({"format_version": 5}, r"sampler\.json: format_version 5 is newer than this dreamgym reads"),
        ({"heun": True}, r"sampler\.json: unknown sampler config fields \['heun'\]"),
    ):
        (d / "sampler.json").write_text(json.dumps(sampler | change))
        with pytest.raises(ValueError, match=message):
            WorldModel.from_pretrained(d)
    # a checkpoint without sampler.json dreams with the default sampler
    (d / "sampler.json").unlink()
    assert WorldModel.from_pretrained(d).sampler == SamplerConfig()


# ----------------------------------------------------------------------------- format 1 -> 2
def test_upgrade_splits_the_format_1_config_into_architecture_and_sampler():
    from dreamgym.worldmodel.config import FORMAT1_DEFAULTS, SAMPLER_BEFORE_4, SAMPLER_BEFORE_PRECISION, upgrade

    old = json.loads((Path(__file__).parent / "data" / "wm_default_config_format1.json").read_text())
    assert old["format_version"] == 1
    arch, sampler = upgrade(old, "old/config.json")
    # the format-1 default: today's architecture without the later options, its sampler as it sampled
    assert ArchitectureConfig.from_dict(arch) == ArchitectureConfig(ego_render=False)
    assert SamplerConfig.from_dict(sampler) == SamplerConfig(
        num_steps=1, init_noise=0.0, sigma_min=0.002, **SAMPLER_BEFORE_4, **SAMPLER_BEFORE_PRECISION
    )
    # a file written before an option existed has the architecture from before it
    bare = {k: old[k] for k in ("format_version", "resolution", "data_resolution", "context", "frame_channels", "dim")}
    arch, sampler = upgrade(bare, "older/config.json")
    a, s = ArchitectureConfig.from_dict(arch), SamplerConfig.from_dict(sampler)
    assert (a.action_tokens, a.ego_warp, a.state_prior, a.props_dynamics, a.occupancy_warp, a.partner_actions) == (
        False,
        False,
        0,
        0,
        False,
        False,
    )
    assert (a.context, a.dim, a.depth, a.occupancy_channels) == (2, 96, FORMAT1_DEFAULTS["depth"], FORMAT1_DEFAULTS["occupancy_channels"])
    assert s == SamplerConfig(
        num_steps=1,
        init_noise=1.0,
        sigma_min=0.002,
        props_rest_threshold=0.0,
        props_contact_radius=0.0,
        **SAMPLER_BEFORE_4,
        **SAMPLER_BEFORE_PRECISION,
    )
    with pytest.raises(ValueError, match=r"^old/config\.json: learn_success = True is invalid \(expected false"):
        upgrade(old | {"learn_success": True}, "old/config.json")
    with pytest.raises(ValueError, match=r"^old/config\.json: unknown world-model config fields \['colour'\] \(format 1\)"):
        upgrade(old | {"colour": 1}, "old/config.json")


def test_a_format_1_checkpoint_loads_as_it_was_saved(tmp_path):
    """A checkpoint saved with one format-1 config.json (no sampler.json) loads to the same model."""
    from dreamgym.worldmodel.config import FORMAT1_DEFAULTS, SAMPLER_BEFORE_4, SAMPLER_BEFORE_PRECISION

    # a format-1 model sampled every modality in one schedule, the agent included, in float32
    m = tiny_model(state_prior=16, sampler=dict(num_steps=1, init_noise=0.5, **SAMPLER_BEFORE_4, **SAMPLER_BEFORE_PRECISION)).eval()
    d = m.save_pretrained(tmp_path / "ck")
    (d / "sampler.json").unlink()
    old = {"format_version": 1, **m.config.to_dict(), **m.sampler.to_dict(), "learn_success": False, "root_loss_weight": 10.0}
    for k in ("num_steps", *SAMPLER_BEFORE_4, *SAMPLER_BEFORE_PRECISION):  # format 1 had no sampler steps, nor the later fields
        del old[k]
    assert set(old) <= set(FORMAT1_DEFAULTS) | {"format_version"}
    (d / "config.json").write_text(json.dumps(old))
    back = WorldModel.from_pretrained(d)
    assert back.config == m.config and back.sampler == m.sampler
    ctx, ws = context_of(synthetic_episodes())
    o1 = m.imagine(ctx, ws["actions"][:, :2], generator=torch.Generator().manual_seed(2))
    o2 = back.imagine(ctx, ws["actions"][:, :2], generator=torch.Generator().manual_seed(2))
    assert all(torch.equal(o1[k], o2[k]) for k in o1)


# ----------------------------------------------------------------------------- sampler, loss weights, noise
def test_the_sampler_gives_imagine_its_defaults_and_arguments_override_them():
    m = tiny_model(sampler=dict(init_noise=0.0)).eval()
    ctx, ws = context_of(synthetic_episodes())
    a = ws["actions"][:, :2]
    mean = m.imagine(ctx, a, modalities=["motion"], generator=torch.Generator().manual_seed(0))
    assert torch.equal(mean["motion"], m.imagine(ctx, a, modalities=["motion"], generator=torch.Generator().manual_seed(9))["motion"])
    drawn = m.imagine(ctx, a, modalities=["motion"], init_noise=1.0, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(drawn["motion"], mean["motion"])
    noisy = SamplerConfig(init_noise=1.0, num_steps=2)
    via = m.imagine(ctx, a, modalities=["motion"], sampler=noisy, generator=torch.Generator().manual_seed(0))
    explicit = m.imagine(ctx, a, modalities=["motion"], num_steps=2, init_noise=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(via["motion"], explicit["motion"])
    m.sampler = noisy
    assert torch.equal(m.imagine(ctx, a, modalities=["motion"], generator=torch.Generator().manual_seed(0))["motion"], via["motion"])
    roll = m.rollout(ctx, ws["actions"][:, 1:3], past_actions=a[:, :1], modalities=["motion"], generator=torch.Generator().manual_seed(0))
    assert torch.equal(roll["motion"][:, 0], via["motion"])
    with pytest.raises(ValueError, match=r"num_steps = 0 is invalid \(expected an integer >= 1\)"):
        m.imagine(ctx, a, num_steps=0)
    assert m.edm.sigma_min == noisy.sigma_min and m.edm.sigma_max == m.config.sigma_max


def test_the_loss_weights_come_from_the_training_config():
    from dreamgym.worldmodel.config import TrainingConfig

    m = tiny_model(state_prior=16)
    w = D.collate([D.EpisodeWindows(synthetic_episodes(), 3)[i] for i in range(4)])
    g = torch.Generator().manual_seed(0)
    noise = {k: torch.randn(4, *s, generator=g) for k, s in (("motion", (227,)), ("partner_motion", (227,)), ("props", (4, 3)))}
    sigma = {k: torch.full((4,), 0.7) for k in noise}
    with torch.no_grad():
        default = m.loss(w, noise, sigma, ())
        same = m.loss(w, noise, sigma, (), training=TrainingConfig(root_loss_weight=10.0))
        flat = m(w, noise, sigma, (), None, TrainingConfig(root_loss_weight=1.0))
    assert all(torch.equal(default[k], same[k]) for k in default)
    assert not torch.equal(default["motion"], flat["motion"]) and not torch.equal(default["prior_motion"], flat["prior_motion"])
    assert torch.equal(default["partner_motion"], flat["partner_motion"])


def test_draw_noise_reads_a_training_config_a_noise_config_or_a_mapping():
    from dreamgym.worldmodel.config import NoiseConfig, TrainingConfig
    from dreamgym.worldmodel.noise import draw_noise
    from dreamgym.worldmodel.train import draw_noise as draw_noise_from_train

    assert draw_noise_from_train is draw_noise
    arch = ArchitectureConfig(**(TINY | dict(ego_warp=True, partner_actions=True)))
    draws = [draw_noise(arch, how, 3, [0, 2, 5], 1) for how in (TrainingConfig(), NoiseConfig(), {"p_clean": 0.1})]
    for nz, sig, br in draws[1:]:
        assert (
            br == draws[0][2]
            and all(torch.equal(nz[k], draws[0][0][k]) for k in nz)
            and all(torch.equal(sig[k], draws[0][1][k]) for k in sig)
        )
    nz, sig, br = draw_noise(arch, NoiseConfig(p_clean=1.0, p_sigma_max=0.0, p_skip_frames=0.0, p_skip_occupancy=1.0), 0, [0, 1], 0)
    assert br == ["ego"] and nz["partner_known"].dtype == torch.bool
    assert all(float(sig[m].max()) == 0.0 for m in ("partner_motion", "props"))  # all clean but what must be learned
    assert bool((sig["ego"] > 0).all())
    with pytest.raises(ValueError, match=r"unknown noise config fields \['p_loud'\]"):
        draw_noise(arch, {"p_loud": 0.5}, 0, [0], 0)


# ----------------------------------------------------------------------------- the shipped model
def test_the_shipped_model_dreams_its_reference():
    """The shipped default's dream on two held-out windows equals the one recorded with these
    weights (tests/data/wm_default_reference.safetensors, written by make_wm_default_reference.py:
    inputs and outputs, each call with its own fixed generator), with the network in float32: the
    shipped bfloat16 is checked against float32 in test_precision.py, and bfloat16 kernels round
    differently from one CPU to another."""
    import importlib.util

    from safetensors.torch import load_file

    from dreamgym.worldmodel.model import load_default

    here = Path(__file__).parent / "data"
    spec = importlib.util.spec_from_file_location("make_wm_default_reference", here / "make_wm_default_reference.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    ref = load_file(str(here / "wm_default_reference.safetensors"))
    inp = {k.split(".", 1)[1]: v for k, v in ref.items() if k.startswith("input.")}
    m = load_default()
    assert m.sampler == SamplerConfig() and m.config == ArchitectureConfig()
    m.sampler = dataclasses.replace(m.sampler, precision="float32")
    got = maker.reference_outputs(m, inp)
    want = {k: v for k, v in ref.items() if not k.startswith("input.")}
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        if v.is_floating_point():
            assert torch.allclose(got[k], v, rtol=0, atol=1e-5), (k, float((got[k] - v).abs().max()))
        else:
            assert torch.equal(got[k], v), k
