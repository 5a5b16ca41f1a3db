"""``EgoRoomEnv``: one world on C MuJoCo -- the reference backend, a ``gymnasium.Env``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering unless the user chose otherwise

import gymnasium as gym
import mujoco
import numpy as np
import torch

from . import scene
from .core import EgoRoomCore, SimFrame, validate_action
from .occupancy import GridSpec
from .spaces import DEFAULT_RESOLUTION, MAX_DEPTH, action_space, check_obs_keys, check_resolution, observation_space


class EgoRoomEnv(gym.Env):
    """An embodied agent in a procedurally generated room, seen through its own eyes.

    A humanoid with the 22 SMPL-X body joints walks a seeded room (walls, furniture, four coloured
    props it can push, a goal mat) next to a scripted partner. The physics is MuJoCo's; a built-in
    controller turns the 6-float action into a full-body gait.

    **Action space** ``Box(-1, 1, (6,))``: forward speed, lateral speed, yaw rate, head yaw, head
    pitch, right-arm level (see ``dreamgym.envs.controller``). Out-of-range values are clipped;
    a wrong shape or a NaN/infinite value raises ``ValueError``.

    **Observation space** ``Dict``:
      - ``ego_rgb`` (3, H, W) uint8 -- the head camera (90 deg vertical field of view);
      - ``ego_depth`` (1, H, W) float32 -- planar depth in metres, clipped at 10 m;
      - ``motion`` (227,) float32 -- the agent's body motion (layout in ``dreamgym.envs.motion``);
      - ``occupancy`` (Z, X, Y) uint8 -- semantic voxels around the agent (``dreamgym.envs.occupancy``);
      - ``partner_motion`` (227,) float32 -- the partner's body motion;
      - ``instruction`` Discrete -- index into ``dreamgym.envs.tasks.INSTRUCTIONS`` (text in ``info``);
      - ``task_obs`` (8,) float32 -- task vector from state (``dreamgym.envs.tasks``).
      ``obs_keys`` selects a subset (state-only observations skip rendering). H = W = 32 by
      default (``resolution``): the frames the shipped world model dreams, so that with default
      arguments ``dreamgym/Dream-v0`` has exactly this space.

    **Reward, termination**: from the task (``reach``, ``push``, ``social``, ``avoid``; see
    ``dreamgym.envs.tasks``). Episodes end on success or a task failure (terminated) or after the
    task's ``max_steps`` (truncated). ``info`` holds ``success``, ``instruction_text``,
    ``partner_behaviour``, ``utterance``, ``room_seed`` and ``objects`` (the props' xy positions,
    (4, 2): what the partner can point at).

    **Seeding**: ``reset(seed=s)`` builds room ``s``; without a seed the next room is drawn from
    the env's generator. ``options={"room_seed": s}`` picks a room without reseeding.

    **Rendering**: ``render_mode="rgb_array"`` returns an overhead view of the whole room.

    **Version history**: v0 -- first release. Since: the default ``resolution`` is 32 (it was
    64), the shipped world model's, so the default spaces equal ``dreamgym/Dream-v0``'s.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": int(round(1 / scene.CONTROL_DT))}

    def __init__(
        self,
        task: str = "reach",
        seed: int | None = None,
        resolution: int | Sequence[int] = DEFAULT_RESOLUTION,
        render_mode: str | None = None,
        render_resolution: int = 256,
        obs_keys: Sequence[str] | None = None,
        occupancy_size: Sequence[int] = (32, 32, 8),
        occupancy_voxel: float = 0.25,
    ):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unknown render_mode {render_mode!r}; valid: {self.metadata['render_modes']} or None")
        self.resolution = check_resolution(resolution)
        self.obs_keys = check_obs_keys(obs_keys)
        self.grid = GridSpec(tuple(int(x) for x in occupancy_size), float(occupancy_voxel))
        self.core = EgoRoomCore(task, 1, "cpu", self.grid)
        self.core.observe_occupancy = "occupancy" in self.obs_keys  # the grid costs more than a state-only step's physics
        self.model = self.core.mjm
        self.data = mujoco.MjData(self.model)
        self.render_mode = render_mode
        self.render_resolution = int(render_resolution)
        self.observation_space = observation_space(self.resolution, self.grid, self.obs_keys)
        self.action_space = action_space()
        self._renderer: mujoco.Renderer | None = None
        self._overhead: mujoco.Renderer | None = None
        self._seed_rng = np.random.default_rng(seed)
        self._init_seed = seed
        self._ray_dirs = self._camera_rays()

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        if seed is not None:
            self._seed_rng = np.random.default_rng(seed)
            room_seed = int(seed)
        elif "room_seed" in options:
            room_seed = int(options["room_seed"])
        elif self._init_seed is not None and not hasattr(self, "_first_reset_done"):
            room_seed = int(self._init_seed)
        else:
            room_seed = int(self._seed_rng.integers(2**31 - 1))
        self._first_reset_done = True
        [(fields, qpos)] = self.core.start_episodes([0], [room_seed])
        m = self.model
        m.geom_pos[:] = fields.pos
        m.geom_size[:] = fields.size
        m.geom_rgba[:] = fields.rgba
        m.geom_aabb[:] = fields.aabb
        m.geom_rbound[:] = fields.rbound
        mujoco.mj_resetData(m, self.data)
        self.data.qpos[:] = qpos
        mujoco.mj_forward(m, self.data)
        obs = self._observe()
        info = self.core.infos()[0]
        info["success"] = False
        return obs, info

    def step(self, action):
        a = validate_action(action, 1, "cpu", batched=False)
        self.data.ctrl[:] = self.core.controls(a)[0].numpy()
        mujoco.mj_step(self.model, self.data, nstep=scene.FRAME_SKIP)
        obs = self._observe()
        r, term, trunc, succ = self.core.outcome()
        info = self.core.infos()[0]
        info["success"] = bool(succ[0])
        return obs, float(r[0]), bool(term[0]), bool(trunc[0]), info

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        if self._overhead is None:
            self._overhead = mujoco.Renderer(self.model, self.render_resolution, self.render_resolution)
        self._overhead.update_scene(self.data, camera=self.core.idx.overhead_camera)
        return self._overhead.render().copy()

    def close(self):
        for r in (self._renderer, self._overhead):
            if r is not None:
                r.close()
        self._renderer = self._overhead = None

    # ------------------------------------------------------------------ helpers
    def sim_state(self) -> dict[str, np.ndarray]:
        """A copy of the physics state: ``qpos`` (nq,) and ``qvel`` (nv,)."""
        return {"qpos": self.data.qpos.copy(), "qvel": self.data.qvel.copy()}

    def set_sim_state(self, qpos: np.ndarray, qvel: np.ndarray | None = None) -> dict[str, Any]:
        """Put the current room's world in the state ``qpos`` (and ``qvel``) and observe it.

        Used to redraw recorded steps (e.g. their overhead view); the room is the one of the
        last ``reset``. The motion velocities of the returned observation are zero.
        """
        qpos = np.asarray(qpos, dtype=np.float64)
        if qpos.shape != (self.model.nq,):
            raise ValueError(f"qpos has shape {qpos.shape}, expected ({self.model.nq},)")
        self.data.qpos[:] = qpos
        self.data.qvel[:] = 0.0 if qvel is None else np.asarray(qvel, dtype=np.float64)
        mujoco.mj_forward(self.model, self.data)
        self.core.fresh[:] = True
        return self._observe()

    def expert_action(self) -> np.ndarray:
        """The task's scripted expert action for the current state, (6,) float32."""
        return self.core.expert_action()[0].numpy().astype(np.float32)

    def _frame(self) -> SimFrame:
        d = self.data
        t = lambda a: torch.from_numpy(np.array(a))[None]  # noqa: E731
        return SimFrame(xpos=t(d.xpos), xquat=t(d.xquat), geom_xpos=t(d.geom_xpos), geom_xmat=t(d.geom_xmat))

    def _observe(self) -> dict[str, Any]:
        parts = self.core.observe(self._frame())
        obs: dict[str, Any] = {}
        for k in self.obs_keys:
            if k == "ego_rgb":
                obs[k] = self._ego_rgb()
            elif k == "ego_depth":
                obs[k] = self._ego_depth()
            elif k == "instruction":
                obs[k] = int(parts[k][0])
            else:
                obs[k] = parts[k][0].numpy()
        return obs

    def _ego_rgb(self) -> np.ndarray:
        h, w = self.resolution
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, h, w)
        self._renderer.update_scene(self.data, camera=self.core.idx.ego_camera)
        return np.ascontiguousarray(self._renderer.render().transpose(2, 0, 1))

    def _camera_rays(self) -> np.ndarray:
        """Per-pixel ray directions in the camera frame with unit forward component, (H*W, 3)."""
        h, w = self.resolution
        t = np.tan(np.deg2rad(self.model.cam_fovy[self.core.idx.ego_camera]) / 2)
        u = ((np.arange(w) + 0.5) / w * 2 - 1) * t * (w / h)
        v = (1 - (np.arange(h) + 0.5) / h * 2) * t
        uu, vv = np.meshgrid(u, v)
        return np.stack((uu.ravel(), vv.ravel(), -np.ones(h * w)), -1)

    def _ego_depth(self) -> np.ndarray:
        """Planar depth by casting one ray per pixel (visible geom groups 0-2, as rendered)."""
        h, w = self.resolution
        cam = self.core.idx.ego_camera
        d = self.data
        dirs = self._ray_dirs @ d.cam_xmat[cam].reshape(3, 3).T
        norm = np.linalg.norm(dirs, axis=1, keepdims=True)
        dist = np.zeros(h * w)
        geomid = np.zeros(h * w, np.int32)
        group = np.array([1, 1, 1, 0, 0, 0], np.uint8)
        mujoco.mj_multiRay(
            self.model, d, d.cam_xpos[cam].copy(), (dirs / norm).ravel(), group, True, -1, geomid, dist, None, h * w, MAX_DEPTH * 2
        )
        depth = np.where(dist < 0, MAX_DEPTH, dist / norm[:, 0])
        return np.clip(depth, 0.0, MAX_DEPTH).astype(np.float32).reshape(1, h, w)
