"""The dreamed 3-D state drawn into the head camera (``worldmodel.render``) and the frame branch
that reads it (``ego_render``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dreamgym.worldmodel import render as R

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def real_obs(vec_env_factory):
    """Real observations of 4 rooms after a few steps of walking (32 px frames)."""
    env = vec_env_factory(num_envs=4, task="reach", resolution=32, seed=3, return_tensors=True)
    obs, _ = env.reset(seed=3)
    act = torch.zeros(4, 6)
    act[:, 0], act[:, 2] = 0.6, torch.tensor([0.8, -0.8, 0.0, 0.4])
    for _ in range(6):
        obs, *_ = env.step(act)
    return {k: v.clone() for k, v in obs.items()}


def test_an_empty_grid_renders_floor_below_the_horizon_and_nothing_solid(real_obs):
    m = real_obs["motion"]
    empty = torch.zeros_like(real_obs["occupancy"])
    cls, depth, pts = R.render_grid(empty, m, 32, 32, 0.25)
    assert set(cls.unique().tolist()) <= {R.BEYOND, R.SKY, R.FLOOR}
    floor = cls == R.FLOOR
    assert floor[:, -1].all()  # the bottom row of a level head camera sees the floor
    # floor depth is exact: its hit points lie on z = 0
    z = pts[..., 2].view(4, 32, 32)
    assert torch.allclose(z[floor], torch.zeros_like(z[floor]), atol=1e-4)


def test_the_real_grid_renders_the_real_depth_and_classes(real_obs):
    m, grid, depth = real_obs["motion"], real_obs["occupancy"], real_obs["ego_depth"].float()
    cls, rdepth, _ = R.render_grid(grid, m, 32, 32, 0.25)
    seen, _, _ = R.classify_pixels(depth, m, grid, 0.25)
    solid = (depth[:, 0] < 9.9) & (cls != R.BEYOND)
    err = (rdepth[:, 0] - depth[:, 0]).abs()[solid]
    assert solid.float().mean() > 0.3  # the upper part of the view is above the walls
    assert float(err.median()) < 0.15, float(err.median())  # voxels of 0.25 m, samples every 0.2 m
    agree = (cls.view(4, -1) == seen)[solid.view(4, -1)].float().mean()
    assert float(agree) > 0.8, float(agree)


def test_a_frame_painted_from_its_own_memory_has_its_colours(real_obs):
    m, grid = real_obs["motion"], real_obs["occupancy"]
    rgb, depth = real_obs["ego_rgb"], real_obs["ego_depth"].float()
    cls, _, pts = R.render_grid(grid, m, 32, 32, 0.25)
    mem = R.colour_memory(rgb, depth, m, grid, 0.25)
    col, known = R.paint(cls, pts, mem, 0.25)
    assert col.shape == (4, 3, 32, 32) and known.shape == (4, 1, 32, 32)
    assert known.float().mean() > 0.8
    err = (col - rgb.float()).abs().mean(1, keepdim=True)[known]
    assert float(err.median()) < 12.0, float(err.median())  # of 255


def test_bodies_fall_back_to_the_scene_colours_when_the_memory_never_saw_them(real_obs):
    m, grid = real_obs["motion"], real_obs["occupancy"]
    mem = R.colour_memory(real_obs["ego_rgb"], real_obs["ego_depth"].float(), m, grid, 0.25)
    mem["class_n"][:, R.R_PARTNER] = 0
    cls = torch.full((4, 2, 2), R.R_PARTNER)
    col, known = R.paint(cls, torch.zeros(4, 4, 3), mem, 0.25)
    assert known.all()
    want = torch.tensor(R.BODY_RGB[R.R_PARTNER]) * 255
    assert torch.allclose(col[:, :, 0, 0], want.expand(4, 3))


def test_a_grown_model_keeps_every_weight_and_reads_the_render_through_zeros():
    from dreamgym.worldmodel.model import WorldModel, WorldModelConfig
    from dreamgym.worldmodel.train import _grown_with_render

    tiny = dict(resolution=16, data_resolution=32, frame_channels=[8, 16], occupancy_channels=[8, 16], dim=32, depth=1, heads=2)
    tiny |= dict(grid_tokens=2, reward_hidden=32, state_prior=32, props_dynamics=16, ego_render=False)
    torch.manual_seed(0)
    pre = WorldModel(WorldModelConfig(**tiny))
    grown = _grown_with_render(pre)
    assert grown.config == dataclasses.replace(pre.config, ego_render=True)
    a, b = pre.state_dict(), grown.state_dict()
    for k, v in a.items():
        if b[k].shape == v.shape:
            assert torch.equal(b[k], v), k
        else:
            n = v.shape[1]
            assert b[k].shape[1] == n + R.N_RENDER + 2, k
            assert torch.equal(b[k][:, :n], v) and not b[k][:, n:].any(), k


def test_a_rendering_model_dreams_frames_from_a_filled_base(real_obs):
    from dreamgym.worldmodel.model import WorldModel, WorldModelConfig

    tiny = dict(resolution=16, data_resolution=32, frame_channels=[8, 16], occupancy_channels=[8, 16], dim=32, depth=1, heads=2)
    tiny |= dict(grid_tokens=2, reward_hidden=32, state_prior=32, props_dynamics=16, partner_actions=False, ego_render=True)
    torch.manual_seed(0)
    wm = WorldModel(WorldModelConfig(**tiny)).eval()
    assert wm.config.ego_render
    keys = ("ego_rgb", "ego_depth", "motion", "partner_motion", "occupancy")
    ctx = {k: torch.stack([real_obs[k], real_obs[k]], 1) for k in keys}
    ctx["props"] = torch.zeros(4, 2, 4, 3)
    out = wm.imagine(ctx, torch.zeros(4, 2, 6), init_noise=0.0)
    assert out["ego_rgb"].shape == (4, 3, 32, 32) and out["ego_rgb"].dtype == torch.uint8
    # frames without the grid cannot be drawn from it: refused by name
    with pytest.raises(KeyError, match="occupancy"):
        wm.imagine({k: v for k, v in ctx.items() if k != "occupancy"}, torch.zeros(4, 2, 6), modalities=["ego_rgb", "ego_depth"])
