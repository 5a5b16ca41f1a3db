"""Reprojecting ego frames to a new head pose (worldmodel.warp), against the simulator's camera."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamgym.envs.ego_room_env import EgoRoomEnv
from dreamgym.worldmodel.metrics import psnr
from dreamgym.worldmodel.warp import ego_camera_pose, warp_frame


@pytest.fixture(scope="module")
def turning_episode():
    """Observations of the agent walking forward while turning left, plus MuJoCo's camera poses."""
    env = EgoRoomEnv(task="reach", resolution=32)
    obs, _ = env.reset(seed=3)
    cam = env.core.idx.ego_camera
    steps = [obs]
    poses = [(env.data.cam_xpos[cam].copy(), env.data.cam_xmat[cam].reshape(3, 3).copy())]
    for _ in range(12):
        obs, *_ = env.step(np.array([0.6, 0.0, 0.8, 0.0, 0.0, 0.0], np.float32))
        steps.append(obs)
        poses.append((env.data.cam_xpos[cam].copy(), env.data.cam_xmat[cam].reshape(3, 3).copy()))
    env.close()
    return steps, poses


def _t(steps, key):
    return torch.stack([torch.as_tensor(o[key]) for o in steps])


def test_camera_pose_from_motion_matches_the_simulator(turning_episode):
    steps, poses = turning_episode
    pos, rot = ego_camera_pose(_t(steps, "motion"))
    assert np.abs(pos.numpy() - np.stack([p for p, _ in poses])).max() < 1e-4
    assert np.abs(rot.numpy() - np.stack([r for _, r in poses])).max() < 1e-4


def test_warp_to_the_same_pose_is_the_identity(turning_episode):
    steps, _ = turning_episode
    rgb, depth, m = _t(steps, "ego_rgb"), _t(steps, "ego_depth"), _t(steps, "motion")
    wr, wd, valid = warp_frame(rgb, depth, m, m)
    assert bool(valid.all())
    assert torch.equal(wr.round().to(torch.uint8), rgb)
    assert torch.allclose(wd, depth, atol=1e-3)


def test_warp_to_the_next_pose_beats_copying_the_frame(turning_episode):
    steps, _ = turning_episode
    rgb, depth, m = _t(steps, "ego_rgb"), _t(steps, "ego_depth"), _t(steps, "motion")
    for h in (1, 4):
        wr, wd, valid = warp_frame(rgb[:-h], depth[:-h], m[:-h], m[h:])
        real = rgb[h:].float()
        warped, copied = psnr(wr.round(), real).mean(), psnr(rgb[:-h].float(), real).mean()
        assert warped > copied + 1.0, (h, float(warped), float(copied))
        assert (wd - depth[h:]).abs().mean() < (depth[:-h] - depth[h:]).abs().mean()
        assert 0.3 < float(valid.float().mean()) < 1.0  # turning reveals what the old view did not see


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="motion"):
        warp_frame(torch.zeros(2, 3, 8, 8), torch.ones(2, 1, 8, 8), torch.zeros(2, 227), torch.zeros(3, 227))
