"""``EgoRoomVecEnv``: B worlds on MuJoCo Warp, batch-rendered, with a torch-tensor step API.

The B worlds are B different rooms of one model: the room's structure is fixed and each world's
layout, sizes and colours live in MuJoCo Warp's per-world model fields (``geom_pos``,
``geom_size``, ``geom_rgba``, ``geom_aabb``, ``geom_rbound``). Physics, rendering and every
observation are computed for all worlds at once; there is no per-world Python loop on the hot
path (Python runs per world only when an episode starts, to generate its room).

Three ways to drive it:
  - ``step_tensors(actions)`` / ``reset_tensors()``: torch tensors on the env's device
    (observations, rewards, dones), Isaac-Gym style;
  - the ``gymnasium.vector.VectorEnv`` API (``reset``/``step`` with numpy arrays);
  - ``SB3VecEnv(env)``: Stable-Baselines3's ``VecEnv`` (see ``dreamgym.envs.sb3``).

Episodes auto-reset per world in the same step ("same-step" autoreset): when world i ends, the
observation returned for it is the first of its next episode, and the last observation of the
finished episode is in ``infos["final_obs"]`` (rows valid where ``infos["_final_obs"]``), and its
per-episode infos (``objects``, ``room_seed``, ``instruction_text``, ...) in ``infos["final_info"]``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import mujoco
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from . import scene
from .core import EgoRoomCore, SimFrame, resolve_device, validate_action
from .layout import initial_qpos
from .occupancy import GridSpec
from .spaces import DEFAULT_RESOLUTION, IMAGE_KEYS, MAX_DEPTH, action_space, check_obs_keys, check_resolution, observation_space

_BATCHED_FIELDS = ("geom_pos", "geom_size", "geom_rgba", "geom_aabb", "geom_rbound")


def _warp_device(device: torch.device) -> str:
    return "cpu" if device.type == "cpu" else f"cuda:{device.index or 0}"


class EgoRoomVecEnv(VectorEnv):
    """B egocentric rooms stepped and rendered together on MuJoCo Warp (CPU or CUDA).

    Spaces, actions, rewards and tasks are those of ``EgoRoomEnv`` (see its docstring), batched.
    Out-of-range actions are clipped; a wrong shape or NaN/infinite action raises ``ValueError``.

    Args:
        num_envs: number of worlds B.
        task: ``reach``, ``push``, ``social`` or ``avoid``.
        resolution: ego camera resolution (int or (H, W); default 32, as ``EgoRoomEnv``).
        device: torch device of the tensors and of Warp (``"cpu"`` or ``"cuda"``).
        seed: seed of the first rooms (world i gets room ``seed + i``) and of later ones.
        obs_keys: subset of observation keys (state-only subsets skip rendering).
        return_tensors: make ``step``/``reset`` return torch tensors instead of numpy arrays.
        render_mode: ``"rgb_array"`` adds an overhead camera for ``render()``.
        cuda_graph: on CUDA, record the physics step and the ego render once as CUDA graphs and
            replay them (the same kernels, without the Python launch cost of each); if recording
            fails the env warns and launches them one by one. No effect on the CPU.
    """

    metadata = {"render_modes": ["rgb_array"], "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        num_envs: int = 16,
        task: str = "reach",
        resolution: int | Sequence[int] = DEFAULT_RESOLUTION,
        device: str | torch.device = "cpu",
        seed: int | None = None,
        obs_keys: Sequence[str] | None = None,
        return_tensors: bool = False,
        render_mode: str | None = None,
        render_resolution: int = 128,
        occupancy_size: Sequence[int] = (32, 32, 8),
        occupancy_voxel: float = 0.25,
        cuda_graph: bool = True,
    ):
        import mujoco_warp as mjw
        import warp as wp

        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unknown render_mode {render_mode!r}; valid: {self.metadata['render_modes']} or None")
        self._mjw, self._wp = mjw, wp
        self.num_envs = B = int(num_envs)
        self.device = resolve_device(device)
        self.resolution = check_resolution(resolution)
        self.obs_keys = check_obs_keys(obs_keys)
        self.return_tensors = bool(return_tensors)
        self.render_mode = render_mode
        self.grid = GridSpec(tuple(int(x) for x in occupancy_size), float(occupancy_voxel))
        self.core = EgoRoomCore(task, B, self.device, self.grid)
        self.core.observe_occupancy = "occupancy" in self.obs_keys  # the grid costs more than the physics
        self.single_observation_space = observation_space(self.resolution, self.grid, self.obs_keys)
        self.single_action_space = action_space()
        self.observation_space = batch_space(self.single_observation_space, B)
        self.action_space = batch_space(self.single_action_space, B)
        self._seed_rng = np.random.default_rng(seed)
        self._base_seed = seed

        mjm = self.core.mjm
        # Warp prints a line per kernel module it loads ("Module ... load on device 'cpu' took ...");
        # DREAMGYM_WARP_VERBOSE=1 keeps them.
        if os.environ.get("DREAMGYM_WARP_VERBOSE", "0") in ("", "0"):
            wp.config.log_level = wp.LOG_WARNING
        wp.init()
        if self.device.type == "cuda" and not wp.is_cuda_available():
            raise ValueError(
                f"device={str(device)!r}: torch sees a CUDA GPU but Warp {wp.config.version} does not; install a CUDA build of warp-lang"
            )
        self._wdev = _warp_device(self.device)
        self.cuda_graph = bool(cuda_graph) and self.device.type == "cuda"
        self._graphs: dict[str, Any] = {}
        with wp.ScopedDevice(self._wdev):
            self.m = mjw.put_model(mjm, batch_sizes={f: B for f in _BATCHED_FIELDS})
            mjd = mujoco.MjData(mjm)
            mjd.qpos[:] = initial_qpos(mjm, self.core.idx, scene.generate_room(0))  # a valid, contact-free start
            mujoco.mj_forward(mjm, mjd)
            self.d = mjw.put_data(mjm, mjd, nworld=B, nconmax=48, njmax=192)
            self._render_images = any(k in IMAGE_KEYS for k in self.obs_keys)
            self._make_renderer(render_mode, int(render_resolution))
        t = wp.to_torch
        self._qpos, self._qvel, self._ctrl = t(self.d.qpos), t(self.d.qvel), t(self.d.ctrl)
        self._warm = t(self.d.qacc_warmstart)
        self._fields = {f: t(getattr(self.m, f)) for f in _BATCHED_FIELDS}
        # MuJoCo Warp computes world-body (static) geom poses once, in put_data, from the shared
        # template; each world's walls, furniture and mat are therefore placed here directly.
        self._static_geoms = torch.as_tensor(np.nonzero(mjm.geom_bodyid == 0)[0], device=self.device)
        self._geom_xpos = t(self.d.geom_xpos)
        self._frame = SimFrame(
            xpos=t(self.d.xpos), xquat=t(self.d.xquat), geom_xpos=t(self.d.geom_xpos), geom_xmat=t(self.d.geom_xmat).reshape(B, -1, 9)
        )
        self._obs: dict[str, torch.Tensor] | None = None

    def _make_renderer(self, render_mode: str | None, render_resolution: int) -> None:
        """MuJoCo Warp's batch ray tracer for the ego camera (when images are observed) and the
        overhead camera (``render_mode="rgb_array"``), with the buffers its images land in."""
        mjw, wp, mjm, B = self._mjw, self._wp, self.core.mjm, self.num_envs
        self.rc = None
        cams, res = [], []
        if self._render_images:
            cams.append(self.core.idx.ego_camera)
            res.append((self.resolution[1], self.resolution[0]))
        if render_mode == "rgb_array":
            cams.append(self.core.idx.overhead_camera)
            res.append((render_resolution, render_resolution))
        if cams:
            order = np.argsort(cams)  # the context lists active cameras in model order
            self._cam_slot = {cams[i]: k for k, i in enumerate(order)}
            self.rc = mjw.create_render_context(
                mjm,
                nworld=B,
                cam_res=[res[i] for i in order],
                render_rgb=True,
                render_depth=[True for _ in order],
                cam_active=[cams[i] for i in order],
                # Flat-shaded scene: these terms change nothing visible here and cost ~10 %.
                enable_specular=False,
                enable_emission=False,
                enable_per_light_ambient=False,
                enable_vertex_normals=False,
            )
            h, w = self.resolution
            self._rgb_wp = wp.zeros((B, h, w), dtype=wp.vec3)
            self._depth_wp = wp.zeros((B, h, w), dtype=float)
            # torch views of the render buffers, made once (a view per step costs Python time)
            self._rgb_t = wp.to_torch(self._rgb_wp)  # (B, H, W, 3) in 0..1
            self._depth_t = wp.to_torch(self._depth_wp)  # (B, H, W): depth / MAX_DEPTH
            if render_mode == "rgb_array":
                self._over_wp = wp.zeros((B, render_resolution, render_resolution), dtype=wp.vec3)

    # ------------------------------------------------------------------ torch API
    def reset_tensors(
        self, seed: int | None = None, room_seeds: Sequence[int] | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Reset every world; returns torch observations and infos.

        World i gets room ``seed + i`` (or ``room_seeds[i]``); later episodes draw rooms from a
        generator seeded with ``seed``.
        """
        B = self.num_envs
        if seed is not None:
            self._seed_rng = np.random.default_rng(seed)
            self._base_seed = seed
        if room_seeds is None:
            if self._base_seed is not None and seed is not None or (self._base_seed is not None and self._obs is None):
                room_seeds = [int(self._base_seed) + i for i in range(B)]
            else:
                room_seeds = [int(s) for s in self._seed_rng.integers(2**31 - 1, size=B)]
        if len(room_seeds) != B:
            raise ValueError(f"room_seeds has {len(room_seeds)} entries, expected num_envs={B}")
        self._begin(np.arange(B), room_seeds)
        self._forward_kinematics()
        parts = self.core.observe(self._frame)
        self._obs = self._assemble(parts, self._images())
        success = torch.zeros(B, dtype=torch.bool, device=self.device)
        (success_host,), behaviour, objects = self.core.host_snapshot(success)
        return self._obs, self._infos(success, success_host, behaviour, objects)

    def step_tensors(self, actions) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Step all worlds with ``actions`` (B, 6); returns torch obs, reward, terminated, truncated, infos."""
        if self._obs is None:
            raise RuntimeError("step called before reset")
        a = validate_action(actions, self.num_envs, self.device, batched=True)
        ctrl = self.core.controls(a)
        self._ctrl.copy_(ctrl.to(self._ctrl.dtype))
        self._launch("physics", self._physics)
        parts = self.core.observe(self._frame)
        reward, term, trunc, success = self.core.outcome()
        done = term | trunc
        images = self._images()
        obs = self._assemble(parts, images)
        # the one read from the device per step: which worlds ended, and what infos report
        (done_host, success_host), behaviour, objects = self.core.host_snapshot(done, success)
        infos = self._infos(success, success_host, behaviour, objects)
        if done_host.any():
            w_np = np.nonzero(done_host)[0]
            worlds = torch.as_tensor(w_np, device=self.device)
            infos["final_obs"] = {k: v.clone() for k, v in obs.items()}
            infos["_final_obs"] = done.clone()
            infos["final_success"] = success.clone()
            infos["final_state"] = self.sim_state()
            self._begin(w_np, [int(s) for s in self._seed_rng.integers(2**31 - 1, size=len(w_np))])
            self._forward_kinematics()
            fresh = self.core.observe(self._frame, worlds)
            fresh_images = self._images() if self._render_images else {}
            new = self._assemble(fresh, fresh_images)
            for k in obs:
                obs[k][worlds] = new[k][worlds]
            new_info = self.core.batched_infos()
            keys = ("instruction_text", "room_seed", "partner_behaviour", "utterance", "objects")
            infos["final_info"] = {k: infos[k].copy() for k in keys}  # the ended episodes' own
            for k in keys:
                infos[k][w_np] = new_info[k][w_np]
        self._obs = obs
        return obs, reward, term, trunc, infos

    def sim_state(self) -> dict[str, torch.Tensor]:
        """A copy of the physics state: ``qpos`` (B, nq) and ``qvel`` (B, nv), float32.

        With the room seed, this is all it takes to redraw a world (e.g. its overhead view in
        C MuJoCo) or to restart it from this state.
        """
        return {"qpos": self._qpos.clone(), "qvel": self._qvel.clone()}

    def expert_actions(self) -> torch.Tensor:
        """The task's scripted expert actions (B, 6) for the current states."""
        return self.core.expert_action()

    def set_partner_pose(self, qpos: torch.Tensor, qvel: torch.Tensor) -> None:
        """Drive the partner kinematically from now on: its joints (B, 23) -- root x, y, z, yaw, then
        ``scene.LIMB_JOINT_NAMES`` -- are set to ``qpos`` with velocities ``qvel`` (B, 23), and its
        servos hold that pose through the next step, so its collider still meets props and the agent.
        Call it before each ``step_tensors``; the partner's script no longer moves it."""
        adr = self._partner_qpos_adr()
        q = torch.as_tensor(qpos, dtype=self._qpos.dtype, device=self._qpos.device).reshape(self.num_envs, len(adr))
        v = torch.as_tensor(qvel, dtype=self._qvel.dtype, device=self._qvel.device).reshape(self.num_envs, len(adr))
        self._qpos[:, adr] = q
        self._qvel[:, self._partner_dof_adr] = v
        ctrl = torch.cat((v[:, :2], q[:, 2:3], v[:, 3:4], q[:, 4:]), 1)  # root: x, y velocity, z position, yaw rate
        self.core.partner_ctrl = ctrl.to(self.device, torch.float32)

    def _partner_qpos_adr(self) -> torch.Tensor:
        if not hasattr(self, "_partner_adr"):
            mjm = self.core.mjm
            names = [f"p_{n}" for n in (*scene.ROOT_JOINTS, *scene.LIMB_JOINT_NAMES)]
            ids = [mujoco.mj_name2id(mjm, mujoco.mjtObj.mjOBJ_JOINT, n) for n in names]
            self._partner_adr = torch.as_tensor([mjm.jnt_qposadr[i] for i in ids], device=self._qpos.device)
            self._partner_dof_adr = torch.as_tensor([mjm.jnt_dofadr[i] for i in ids], device=self._qvel.device)
        return self._partner_adr

    # ------------------------------------------------------------------ gymnasium VectorEnv API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        options = options or {}
        obs, infos = self.reset_tensors(seed=seed, room_seeds=options.get("room_seeds"))
        return (obs if self.return_tensors else self._to_numpy(obs)), infos

    def step(self, actions):
        obs, r, term, trunc, infos = self.step_tensors(actions)
        if self.return_tensors:
            return obs, r, term, trunc, infos
        if "final_obs" in infos:
            infos["final_obs"] = self._to_numpy(infos["final_obs"])
            infos["final_state"] = self._to_numpy(infos["final_state"])
            infos["_final_obs"] = infos["_final_obs"].cpu().numpy()
            infos["final_success"] = infos["final_success"].cpu().numpy()
        return self._to_numpy(obs), r.cpu().numpy(), term.cpu().numpy(), trunc.cpu().numpy(), infos

    def render(self):
        """Overhead views of all worlds, (B, R, R, 3) uint8 (``render_mode="rgb_array"``)."""
        if self.render_mode != "rgb_array":
            return None
        self._render()
        self._mjw.get_rgb(self.rc, self._cam_slot[self.core.idx.overhead_camera], self._over_wp)
        return (self._wp.to_torch(self._over_wp).clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()

    def close(self, **kwargs):
        self.rc = None

    # ------------------------------------------------------------------ internals
    def _begin(self, worlds: np.ndarray, room_seeds: Sequence[int]) -> None:
        setups = self.core.start_episodes(worlds, room_seeds)
        dev = self._qpos.device
        wt = torch.as_tensor(np.asarray(worlds, dtype=np.int64), device=dev)
        if setups:
            # one host-to-device copy per field for all new rooms, not one per world
            stack = lambda name: torch.as_tensor(np.stack([getattr(f, name) for f, _ in setups]), dtype=torch.float32, device=dev)  # noqa: E731
            self._fields["geom_pos"][wt] = stack("pos")
            self._fields["geom_size"][wt] = stack("size")
            self._fields["geom_rgba"][wt] = stack("rgba")
            self._fields["geom_aabb"][wt] = stack("aabb").view(len(setups), -1, 2, 3)
            self._fields["geom_rbound"][wt] = stack("rbound")
            self._qpos[wt] = torch.as_tensor(np.stack([q for _, q in setups]), dtype=self._qpos.dtype, device=dev)
            static = self._static_geoms
            self._geom_xpos[wt[:, None], static[None, :]] = self._fields["geom_pos"][wt[:, None], static[None, :]]
        self._qvel[wt] = 0.0
        self._warm[wt] = 0.0
        self._ctrl[wt] = 0.0

    def _forward_kinematics(self) -> None:
        with self._wp.ScopedDevice(self._wdev):
            self._mjw.kinematics(self.m, self.d)
            self._mjw.camlight(self.m, self.d)

    def _physics(self) -> None:
        for _ in range(scene.FRAME_SKIP):
            self._mjw.step(self.m, self.d)

    def _render_kernels(self) -> None:
        self._mjw.refit_bvh(self.m, self.d, self.rc)
        self._mjw.render(self.m, self.d, self.rc)

    def _render(self) -> None:
        self._launch("render", self._render_kernels)

    def _launch(self, name: str, launches) -> None:
        """Run ``launches`` (Warp kernel launches only) on the env's device. With ``cuda_graph``
        the first call launches them directly (loading their kernels), the second records them as
        a CUDA graph and every call from then on replays it."""
        wp = self._wp
        with wp.ScopedDevice(self._wdev):
            if not self.cuda_graph or name not in self._graphs:
                launches()
                if self.cuda_graph:
                    self._graphs[name] = None  # kernels loaded: record on the next call
                return
            if self._graphs[name] is None:
                try:
                    with wp.ScopedCapture(force_module_load=False) as capture:
                        launches()
                    self._graphs[name] = capture.graph
                except Exception as e:  # an op that cannot be recorded: launch directly from now on
                    warnings.warn(f"EgoRoomVecEnv: recording the {name} step as a CUDA graph failed ({e}); launching kernels directly")
                    self.cuda_graph = False
                    self._graphs.clear()
                    launches()
                    return
            wp.capture_launch(self._graphs[name])

    def _images(self) -> dict[str, torch.Tensor]:
        if not self._render_images:
            return {}
        self._render()
        slot = self._cam_slot[self.core.idx.ego_camera]
        self._mjw.get_rgb(self.rc, slot, self._rgb_wp)
        self._mjw.get_depth(self.rc, slot, MAX_DEPTH, self._depth_wp)  # returns depth / MAX_DEPTH, clamped to [0, 1]
        rgb = self._rgb_t
        depth = self._depth_t * MAX_DEPTH
        depth = torch.where(depth <= 0, MAX_DEPTH, depth)  # 0 means the ray hit nothing
        return {
            "ego_rgb": (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 3, 1, 2).contiguous(),
            "ego_depth": depth[:, None].contiguous(),
        }

    def _assemble(self, parts: dict[str, torch.Tensor], images: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for k in self.obs_keys:
            out[k] = images[k] if k in IMAGE_KEYS else parts[k]
        return out

    def _infos(self, success: torch.Tensor, success_host: np.ndarray, behaviour: np.ndarray, objects: np.ndarray) -> dict[str, Any]:
        return {"success": success if self.return_tensors else success_host, **self.core.batched_infos(behaviour, objects)}

    @staticmethod
    def _to_numpy(obs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        return {k: v.cpu().numpy() for k, v in obs.items()}
