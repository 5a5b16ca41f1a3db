"""The logic both backends share: episodes, control, observations, task outcomes (batched, torch).

A backend (C MuJoCo for one world, MuJoCo Warp for B worlds) only steps physics, reads arrays and
renders. Everything else -- which room and task a new episode gets, the controller, the partner's
script, the motion vectors, occupancy, rewards -- happens here, once, so the two backends cannot
drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import mujoco
import numpy as np
import torch

from . import partner as P
from . import scene
from .controller import ACTION_DIM, GaitState, actuator_targets
from .layout import GeomFields, SceneIndex, initial_qpos, room_geom_fields
from .motion import MOTION_DIM, compute_motion, yaw_of_quat
from .occupancy import MOVABLE, STATIC, GridSpec, OccupancyGrid
from .tasks import INSTRUCTIONS, TASK_OBS_DIM, EpisodeParams, Task, WorldState, make_task


@dataclass
class SimFrame:
    """Arrays a backend reads after a step, as (B, ...) tensors on the core's device."""

    xpos: torch.Tensor  # (B, nbody, 3)
    xquat: torch.Tensor  # (B, nbody, 4)
    geom_xpos: torch.Tensor  # (B, ngeom, 3)
    geom_xmat: torch.Tensor  # (B, ngeom, 9)


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; a CUDA device on a machine without CUDA is refused.

    Raises ``ValueError`` in one line naming what was asked for and what this machine has, rather
    than the failure deep inside torch or Warp that the first tensor or kernel would give.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a device; use 'cpu' or 'cuda'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={str(device)!r} asks for CUDA, but torch sees no CUDA GPU here (torch {torch.__version__}); use device='cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise ValueError(f"device={str(device)!r} is not supported; use 'cpu' or 'cuda'")
    return dev


def validate_action(action, num_worlds: int, device, batched: bool) -> torch.Tensor:
    """Check an action's shape and values and clip it to [-1, 1]; returns it on ``device``.

    The check runs where the action already is (a numpy or CPU action is checked on the host,
    before it is copied), so that a CPU action never waits for a GPU.
    Raises ``ValueError`` naming the wrong shape, or the position of a NaN / infinite value.
    """
    t = torch.as_tensor(action, dtype=torch.float32)
    want = (num_worlds, ACTION_DIM) if batched else (ACTION_DIM,)
    if tuple(t.shape) != want:
        raise ValueError(f"action has shape {tuple(t.shape)}, expected {want}")
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        where = bad.nonzero()[0].tolist()
        raise ValueError(f"action contains a non-finite value {t[tuple(where)].item()} at index {tuple(where)}")
    t = torch.clamp(t.to(device), -1.0, 1.0)
    return t if batched else t[None]


def _rng_for(room_seed: int, task: Task) -> np.random.Generator:
    return np.random.default_rng([int(room_seed), sum(map(ord, task.name))])


class EgoRoomCore:
    """Per-world episode state and the shared computations for ``num_worlds`` worlds."""

    def __init__(self, task: str | Task, num_worlds: int, device: torch.device | str = "cpu", grid: GridSpec = GridSpec()):
        self.task = make_task(task) if isinstance(task, str) else task
        self.B = int(num_worlds)
        self.device = torch.device(device)
        self.mjm = mujoco.MjModel.from_xml_string(scene.build_mjcf())
        self.idx = SceneIndex.from_model(self.mjm)
        B, dev = self.B, self.device
        self.gait_agent = GaitState.zeros(B, dev)
        self.gait_partner = GaitState.zeros(B, dev)
        self.scripts = P.PartnerScripts.empty(B, dev)
        self.params = EpisodeParams(
            torch.zeros(B, dtype=torch.long, device=dev), torch.zeros(B, dtype=torch.long, device=dev), torch.zeros(B, 2, device=dev)
        )
        self.specs: list[scene.RoomSpec | None] = [None] * B
        # host copies of what ``infos`` reports and only an episode start changes: reading them
        # from the device every step would cost a GPU round trip per world
        self._room_seed_host = np.full(B, -1, dtype=np.int64)
        self._instruction_host = np.zeros(B, dtype=np.int64)
        self.steps = torch.zeros(B, dtype=torch.long, device=dev)
        self.partner_action = torch.zeros(B, ACTION_DIM, device=dev)  # the partner's command of the last step
        # (B, N_ACT_PER_BODY) actuator controls that replace the partner's script (a live person's
        # retargeted pose, ``EgoRoomVecEnv.set_partner_pose``); None: the script drives it
        self.partner_ctrl: torch.Tensor | None = None
        self.fresh = torch.ones(B, dtype=torch.bool, device=dev)
        self.mat_pos = torch.zeros(B, 2, device=dev)
        self.room_half = torch.zeros(B, 2, device=dev)
        # body indices as device tensors: indexing a GPU tensor with a numpy array copies it there first
        self._agent_bodies, self._partner_bodies, self._prop_bodies = (
            torch.as_tensor(i, device=dev) for i in (self.idx.agent_bodies, self.idx.partner_bodies, self.idx.prop_bodies)
        )
        self.box_geoms = torch.as_tensor(np.concatenate([self.idx.wall_geoms, self.idx.furniture_geoms, self.idx.prop_geoms]), device=dev)
        n_static = len(self.idx.wall_geoms) + len(self.idx.furniture_geoms)
        self.box_class = torch.tensor([STATIC] * n_static + [MOVABLE] * scene.N_PROPS, device=dev)
        self.box_is_ball = torch.tensor([False] * n_static + [s == "ball" for s in scene.PROP_SHAPES], device=dev)
        self._box_geoms_np = self.box_geoms.cpu().numpy()
        self.box_half = torch.as_tensor(self.mjm.geom_size[self._box_geoms_np], dtype=torch.float32, device=dev).repeat(B, 1, 1)
        self.occupancy = OccupancyGrid(grid, dev)
        self.observe_occupancy = True  # off: ``observe`` skips the grid (most of a state-only step's cost)
        self.grid = grid
        self.state: WorldState | None = None
        self.prev_state: WorldState | None = None
        self._prev_joints = torch.zeros(B, 2, 22, 3, device=dev)

    # ------------------------------------------------------------------ episodes
    def start_episodes(self, worlds: Sequence[int], room_seeds: Sequence[int]) -> list[tuple[GeomFields, np.ndarray]]:
        """Begin new episodes in ``worlds`` with the rooms of ``room_seeds``.

        Returns, per world, the geom fields and initial qpos the backend must write.
        """
        if len(worlds) != len(room_seeds):
            raise ValueError(f"{len(worlds)} worlds but {len(room_seeds)} room seeds")
        out, scripts, rows = [], [], []
        for w, seed in zip(worlds, room_seeds):
            spec = scene.generate_room(int(seed))
            spec, target, instr, goal, script = self.task.setup(spec, _rng_for(seed, self.task))
            self.specs[w] = spec
            self._room_seed_host[w] = spec.seed
            self._instruction_host[w] = instr
            fields = room_geom_fields(self.mjm, self.idx, spec)
            rows.append((target, instr, goal, spec.mat_pos, spec.half_extent, fields.size[self._box_geoms_np]))
            scripts.append(script)
            out.append((fields, initial_qpos(self.mjm, self.idx, spec)))
        wt = torch.as_tensor(np.asarray(worlds, dtype=np.int64), device=self.device)
        if rows:
            # one host-to-device copy per field for all new episodes, not one per world
            target, instr, goal, mat, half, box_half = (np.asarray(col) for col in zip(*rows))
            dev = self.device
            self.params.target[wt] = torch.as_tensor(target.astype(np.int64), device=dev)
            self.params.instruction[wt] = torch.as_tensor(instr.astype(np.int64), device=dev)
            self.params.goal[wt] = torch.as_tensor(goal, dtype=torch.float32, device=dev)
            self.mat_pos[wt] = torch.as_tensor(mat, dtype=torch.float32, device=dev)
            self.room_half[wt] = torch.as_tensor(half, dtype=torch.float32, device=dev)
            self.box_half[wt] = torch.as_tensor(box_half, dtype=torch.float32, device=dev)
        self.scripts.load(wt, P.pack_scripts(scripts))
        self.gait_agent.reset(wt)
        self.gait_partner.reset(wt)
        self.steps[wt] = 0
        self.fresh[wt] = True
        return out

    # ------------------------------------------------------------------ control
    def controls(self, action: torch.Tensor) -> torch.Tensor:
        """Actuator controls (B, nu) for the agent's ``action`` (B, 6) and the partner's script."""
        if self.state is None:
            raise RuntimeError("step() called before reset()")
        st = self.state
        ctrl = torch.zeros(self.B, self.mjm.nu, device=self.device)
        ctrl[:, self.idx.agent_act] = actuator_targets(action, st.agent_yaw, self.gait_agent)
        if self.partner_ctrl is None:
            pact = P.partner_action(self.scripts, st.partner_pos, st.partner_yaw, st.agent_pos)
            self.partner_action = pact  # the partner's command of this step (B, 6)
            ctrl[:, self.idx.partner_act] = actuator_targets(pact, st.partner_yaw, self.gait_partner)
        else:  # the partner is driven from outside (a person, live): it has no command of its own
            self.partner_action = torch.zeros_like(action)
            ctrl[:, self.idx.partner_act] = self.partner_ctrl
        self.scripts.advance()
        self.steps += 1
        return ctrl

    # ------------------------------------------------------------------ observation
    def observe(self, sim: SimFrame, worlds: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Update the state from ``sim`` (all worlds, or only the rows in ``worlds``) and return the
        state-based observation parts: motion, partner_motion, occupancy (if ``observe_occupancy``),
        task_obs, instruction."""
        aj = sim.xpos[:, self._agent_bodies]
        pj = sim.xpos[:, self._partner_bodies]
        aq = sim.xquat[:, self._agent_bodies]
        pq = sim.xquat[:, self._partner_bodies]
        fresh = self.fresh[:, None, None]
        prev_a = torch.where(fresh, aj, self._prev_joints[:, 0])
        prev_p = torch.where(fresh, pj, self._prev_joints[:, 1])
        dt = scene.CONTROL_DT
        motion = compute_motion(aj, aq, prev_a, dt)
        pmotion = compute_motion(pj, pq, prev_p, dt)
        state = WorldState(
            agent_pos=aj[:, 0].float(),
            agent_yaw=yaw_of_quat(aq[:, 0]).float(),
            agent_vel=((aj[:, 0] - prev_a[:, 0]) / dt).float(),
            agent_joints=aj.float(),
            partner_pos=pj[:, 0].float(),
            partner_yaw=yaw_of_quat(pq[:, 0]).float(),
            partner_vel=((pj[:, 0] - prev_p[:, 0]) / dt).float(),
            partner_joints=pj.float(),
            partner_behaviour=self.scripts.current()[0].clone(),
            prop_pos=sim.xpos[:, self._prop_bodies].float(),
            mat_pos=self.mat_pos.clone(),
            room_half=self.room_half.clone(),
            step=self.steps.clone(),
        )
        obs = {"motion": motion, "partner_motion": pmotion}
        if self.observe_occupancy:
            obs["occupancy"] = self.occupancy(
                state.agent_pos,
                state.agent_yaw,
                sim.geom_xpos[:, self.box_geoms].float(),
                sim.geom_xmat[:, self.box_geoms].reshape(self.B, -1, 3, 3).float(),
                self.box_half,
                self.box_is_ball,
                self.box_class,
                state.agent_joints,
                state.partner_joints,
            )
        obs["task_obs"] = self.task.task_obs(state, self.params)
        obs["instruction"] = self.params.instruction.clone()
        new_joints = torch.stack((aj, pj), 1).float()
        if worlds is None or self.state is None:
            self.prev_state = state if self.state is None else self.state
            self.state = state
            self._prev_joints = new_joints
            self.fresh[:] = False
        else:
            # Only the reset rows change: their previous state is their new state (zero progress).
            for name in state.__dataclass_fields__:
                getattr(self.state, name)[worlds] = getattr(state, name)[worlds]
                getattr(self.prev_state, name)[worlds] = getattr(state, name)[worlds]
            self._prev_joints[worlds] = new_joints[worlds]
            self.fresh[worlds] = False
        return obs

    def outcome(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reward, terminated, truncated and success (B,) for the last transition."""
        r = self.task.reward(self.prev_state, self.state, self.params)
        term = self.task.terminated(self.state, self.params)
        trunc = (self.state.step >= self.task.max_steps) & ~term
        return r.float(), term, trunc, self.task.success(self.state, self.params)

    def expert_action(self) -> torch.Tensor:
        """The task's scripted expert action (B, 6) for the current state."""
        return torch.clamp(self.task.expert(self.state, self.params), -1.0, 1.0)

    def host_snapshot(self, *flags: torch.Tensor) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """What the host needs after a step, read from the device in one transfer.

        Returns the (B,) bool ``flags`` (e.g. done, success) as numpy arrays, the partner's
        behaviour (B,) int64 and the props' xy positions (B, N_PROPS, 2) float32.
        """
        st = self.state
        B = self.B
        cols = [f.reshape(B, 1).float() for f in flags]
        cols += [st.partner_behaviour.reshape(B, 1).float(), st.prop_pos[..., :2].float().reshape(B, -1)]
        host = torch.cat(cols, 1).cpu().numpy()
        n = len(flags)
        out_flags = [host[:, i] > 0.5 for i in range(n)]
        behaviour = host[:, n].astype(np.int64)
        objects = np.ascontiguousarray(host[:, n + 1 :].reshape(B, -1, 2))
        return out_flags, behaviour, objects

    def batched_infos(self, behaviour: np.ndarray | None = None, objects: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Per-world information as (B,) arrays: instruction text, partner behaviour and utterance,
        room seed, and the scene's objects (the props' xy positions, (B, N_PROPS, 2) float32: what
        a person can point at). ``behaviour`` and ``objects`` are ``host_snapshot``'s, if read."""
        if behaviour is None or objects is None:
            _, behaviour, objects = self.host_snapshot()
        return {
            "instruction_text": _INSTRUCTION_TEXT[self._instruction_host],
            "partner_behaviour": _BEHAVIOUR_NAMES[behaviour],
            "utterance": _UTTERANCE_TEXT[behaviour],
            "room_seed": self._room_seed_host.copy(),
            "objects": objects,
        }

    def infos(self) -> list[dict]:
        """``batched_infos`` per world: a list of B dicts."""
        arrays = self.batched_infos()
        return [
            {
                "instruction_text": str(arrays["instruction_text"][i]),
                "partner_behaviour": str(arrays["partner_behaviour"][i]),
                "utterance": str(arrays["utterance"][i]),
                "room_seed": int(arrays["room_seed"][i]),
                "objects": arrays["objects"][i],
            }
            for i in range(self.B)
        ]


_INSTRUCTION_TEXT = np.array(INSTRUCTIONS, dtype=object)
_BEHAVIOUR_NAMES = np.array(P.BEHAVIOURS, dtype=object)
_UTTERANCE_TEXT = np.array(P.UTTERANCES, dtype=object)
MOTION_SHAPE = (MOTION_DIM,)
TASK_OBS_SHAPE = (TASK_OBS_DIM,)
NUM_INSTRUCTIONS = len(INSTRUCTIONS)
