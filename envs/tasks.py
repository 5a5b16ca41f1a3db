"""Tasks: batched pure functions of simulator state, plus a scripted expert for each.

A task decides, at reset, the episode's parameters (target prop, goal point, instruction, the
partner's script) from the room; afterwards reward, termination, success and ``task_obs`` are pure
functions of ``WorldState`` (and of the previous state, for progress rewards). The real envs and
the dream env call the same functions, so a metric means the same on both sides.

``task_obs`` (8 floats) is laid out the same way for every task:
``[gx, gy, sx, sy, a, b, step_fraction, hand_above_head]`` where ``g`` is the task's primary
point and ``s`` a secondary point, both in the agent's heading frame (metres), ``a, b`` are two
task-specific numbers (see each task), ``step_fraction`` is step / max_steps and
``hand_above_head`` the right wrist's height above the head joint (metres).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields

import numpy as np
import torch

from . import partner as P
from . import scene
from .motion import rotate_to_heading
from .partner import _wrap, steer

TASK_OBS_DIM = 8
HEAD, RIGHT_WRIST = 15, 21


@dataclass
class WorldState:
    """What tasks see of B worlds at one step (MuJoCo frame, metres, radians)."""

    agent_pos: torch.Tensor  # (B, 3) pelvis
    agent_yaw: torch.Tensor  # (B,)
    agent_vel: torch.Tensor  # (B, 3) pelvis velocity
    agent_joints: torch.Tensor  # (B, 22, 3) world
    partner_pos: torch.Tensor  # (B, 3)
    partner_yaw: torch.Tensor  # (B,)
    partner_vel: torch.Tensor  # (B, 3)
    partner_joints: torch.Tensor  # (B, 22, 3)
    partner_behaviour: torch.Tensor  # (B,) long, partner.BEHAVIOURS index
    prop_pos: torch.Tensor  # (B, N_PROPS, 3)
    mat_pos: torch.Tensor  # (B, 2)
    room_half: torch.Tensor  # (B, 2)
    step: torch.Tensor  # (B,) long, steps since reset

    def index(self, mask: torch.Tensor) -> WorldState:
        return WorldState(**{f.name: getattr(self, f.name)[mask] for f in fields(self)})


@dataclass
class EpisodeParams:
    """Per-world episode parameters decided at reset: (B,) tensors."""

    target: torch.Tensor  # long: prop index (reach, push); unused otherwise
    instruction: torch.Tensor  # long: index into INSTRUCTIONS
    goal: torch.Tensor  # (B, 2) goal point (avoid); zeros otherwise


def _reach_phrase(name: str) -> str:
    return f"walk to the {name}"


def _push_phrase(name: str) -> str:
    return f"push the {name} onto the mat"


_OBJECTS = [f"{c} {s}" for c in scene.COLOUR_NAMES for s in ("box", "ball")]
SOCIAL_INSTRUCTION = "greet the person"
AVOID_INSTRUCTION = "cross the room without bumping into the person"
# One vocabulary for all tasks, so that the observation space does not depend on the task.
INSTRUCTIONS: tuple[str, ...] = tuple(
    [_reach_phrase(o) for o in _OBJECTS] + [_push_phrase(o) for o in _OBJECTS] + [SOCIAL_INSTRUCTION, AVOID_INSTRUCTION]
)
_INSTR_ID = {s: i for i, s in enumerate(INSTRUCTIONS)}


def _in_frame(state: WorldState, xy: torch.Tensor) -> torch.Tensor:
    rel = torch.cat((xy - state.agent_pos[:, :2], torch.zeros_like(xy[:, :1])), dim=-1)
    return rotate_to_heading(rel, state.agent_yaw)[:, :2]


def _hand_above_head(state: WorldState) -> torch.Tensor:
    return state.agent_joints[:, RIGHT_WRIST, 2] - state.agent_joints[:, HEAD, 2]


def _rows(state: WorldState) -> torch.Tensor:
    return torch.arange(state.agent_pos.shape[0], device=state.agent_pos.device)


class Task(ABC):
    """Base class. Subclasses define the episode set-up, reward, success and expert."""

    name: str = ""
    max_steps: int = 200
    success_bonus: float = 5.0
    step_cost: float = 0.005

    # -- set-up (numpy, one world at a time, at reset) --
    @abstractmethod
    def setup(self, spec: scene.RoomSpec, rng: np.random.Generator) -> tuple[scene.RoomSpec, int, int, tuple[float, float], list]:
        """Adjust the room for the task; return (spec, target, instruction, goal, partner script)."""

    # -- batched, torch --
    @abstractmethod
    def success(self, state: WorldState, params: EpisodeParams) -> torch.Tensor:
        """Whether each world has reached its goal, (B,) bool."""

    def failure(self, state: WorldState, params: EpisodeParams) -> torch.Tensor:
        """Terminal failures (e.g. a collision); none by default."""
        return torch.zeros_like(state.step, dtype=torch.bool)

    @abstractmethod
    def progress(self, prev: WorldState, state: WorldState, params: EpisodeParams) -> torch.Tensor:
        """Shaping term of the reward for the transition prev -> state, (B,)."""

    def reward(self, prev: WorldState, state: WorldState, params: EpisodeParams) -> torch.Tensor:
        """Shaped progress, a bonus on success, a small cost per step and a penalty on failure."""
        r = self.progress(prev, state, params) - self.step_cost
        r = r + self.success_bonus * self.success(state, params).float()
        return r - self.success_bonus * self.failure(state, params).float()

    def terminated(self, state: WorldState, params: EpisodeParams) -> torch.Tensor:
        return self.success(state, params) | self.failure(state, params)

    def task_obs(self, state: WorldState, params: EpisodeParams) -> torch.Tensor:
        g, s, ab = self._obs_parts(state, params)
        frac = (state.step.float() / self.max_steps)[:, None]
        return torch.cat((g, s, ab, frac, _hand_above_head(state)[:, None]), dim=-1).float()

    @abstractmethod
    def _obs_parts(self, state: WorldState, params: EpisodeParams):
        """The (g, s, ab) parts of ``task_obs``: three (B, 2) tensors."""

    @abstractmethod
    def expert(self, state: WorldState, params: EpisodeParams) -> torch.Tensor:
        """Scripted expert action (B, 6)."""


class ReachTask(Task):
    """ "walk to the <colour> <shape>": succeed within ``RADIUS`` m of the target prop (centre to pelvis).

    Reward: decrease of the distance to the target per step, +5 on success, -0.005 per step.
    ``task_obs``: g = target, s = 0, (a, b) = (distance, 0).
    """

    name = "reach"
    max_steps = 200
    RADIUS = 0.8

    def setup(self, spec, rng):
        target = int(rng.integers(scene.N_PROPS))
        instr = _INSTR_ID[_reach_phrase(spec.prop_name(target))]
        _partner_out_of_the_way(spec, rng, [spec.agent_pos, spec.prop_pos[target]])
        return spec, target, instr, (0.0, 0.0), _background_script(spec, rng)

    def _dist(self, state, params):
        t = state.prop_pos[_rows(state), params.target, :2]
        return torch.linalg.norm(t - state.agent_pos[:, :2], dim=-1)

    def success(self, state, params):
        return self._dist(state, params) < self.RADIUS

    def progress(self, prev, state, params):
        return self._dist(prev, params) - self._dist(state, params)

    def _obs_parts(self, state, params):
        t = state.prop_pos[_rows(state), params.target, :2]
        d = self._dist(state, params)[:, None]
        return _in_frame(state, t), torch.zeros_like(t), torch.cat((d, torch.zeros_like(d)), -1)

    def expert(self, state, params):
        t = state.prop_pos[_rows(state), params.target, :2]
        act = steer(state.agent_pos, state.agent_yaw, t, stop=self.RADIUS - 0.25)
        rel = _in_frame(state, t)
        act[:, 3] = torch.clamp(torch.atan2(rel[:, 1], rel[:, 0]), -1.0, 1.0)  # look at it
        return act


class PushTask(Task):
    """ "push the <colour> <shape> onto the mat": succeed when the prop's centre is over the mat.

    Reward: 2 x decrease of the prop-to-mat distance + 0.5 x decrease of the agent's distance to
    the prop, +5 on success, -0.005 per step. ``task_obs``: g = prop, s = mat centre,
    (a, b) = prop-to-mat distance, agent-to-prop distance.
    """

    name = "push"
    max_steps = 400

    def setup(self, spec, rng):
        target = int(rng.integers(scene.N_PROPS))
        instr = _INSTR_ID[_push_phrase(spec.prop_name(target))]
        _partner_out_of_the_way(spec, rng, [spec.agent_pos, spec.prop_pos[target], spec.mat_pos])
        return spec, target, instr, (0.0, 0.0), _background_script(spec, rng)

    def _prop(self, state, params):
        return state.prop_pos[_rows(state), params.target, :2]

    def _dists(self, state, params):
        p = self._prop(state, params)
        return torch.linalg.norm(state.mat_pos - p, dim=-1), torch.linalg.norm(p - state.agent_pos[:, :2], dim=-1)

    def success(self, state, params):
        off = (self._prop(state, params) - state.mat_pos).abs()
        return (off <= scene.MAT_HALF).all(dim=-1)

    def progress(self, prev, state, params):
        pm0, ap0 = self._dists(prev, params)
        pm1, ap1 = self._dists(state, params)
        return 2.0 * (pm0 - pm1) + 0.5 * (ap0 - ap1)

    def _obs_parts(self, state, params):
        pm, ap = self._dists(state, params)
        return _in_frame(state, self._prop(state, params)), _in_frame(state, state.mat_pos), torch.stack((pm, ap), -1)

    # The expert decides only from what a camera looking straight ahead (head pitched down) shows:
    # the bearings of the prop and of the mat, and how far away each is. A policy that sees only
    # the ego frame can therefore imitate it step by step.
    VISIBLE = 0.7  # rad: |bearing| under which a thing is in the 90-degree frame (head straight)
    ORBIT_RADIUS = 1.0  # metres kept from the prop while side-stepping round it
    ALIGNED = 0.12  # rad: the mat's bearing within this of the prop's starts the push
    PUSH_SPEED = 0.6  # forward command while pushing
    LATERAL_GAIN = 4.0  # side-step command per radian of misalignment
    HEAD_PITCH = 0.6  # look down: the prop and the mat are on the floor

    def expert(self, state, params):
        """Face the prop and side-step round it until the mat lines up behind it, then walk it there.

        Prop out of view: turn left in place. Prop in view, mat seen behind it: side-step toward
        the line (the prop's bearing moves toward the mat's by parallax), keeping ``ORBIT_RADIUS``
        from the prop. Mat not seen behind the prop: side-step left (the orbit sweeps the room
        round the prop until the mat appears behind it). Lined up: walk forward into the prop,
        side-stepping to keep the mat behind it.
        """
        a, yaw = state.agent_pos[:, :2], state.agent_yaw
        tp, tm = self._prop(state, params) - a, state.mat_pos - a
        bp = _wrap(torch.atan2(tp[:, 1], tp[:, 0]) - yaw)
        bm = _wrap(torch.atan2(tm[:, 1], tm[:, 0]) - yaw)
        dp, dm = torch.linalg.norm(tp, dim=-1), torch.linalg.norm(tm, dim=-1)
        prop_seen = bp.abs() < self.VISIBLE
        off = _wrap(bm - bp)  # > 0: the mat appears left of the prop
        mat_behind = (bm.abs() < self.VISIBLE) & (dm > 0.5) & (dm > dp + 0.2)
        toward_line = torch.clamp(-self.LATERAL_GAIN * off, -1.0, 1.0)
        act = torch.zeros(a.shape[0], 6, device=a.device)
        act[:, 2] = torch.clamp(2.5 * bp, -1.0, 1.0)
        act[:, 4] = self.HEAD_PITCH
        pushing = mat_behind & (off.abs() < self.ALIGNED)
        act[:, 0] = torch.where(pushing, torch.full_like(dp, self.PUSH_SPEED), torch.clamp(1.5 * (dp - self.ORBIT_RADIUS), -0.5, 0.6))
        act[:, 1] = torch.where(mat_behind, toward_line, torch.ones_like(off))
        search = torch.zeros_like(act)
        search[:, 2] = 1.0
        search[:, 4] = self.HEAD_PITCH
        return torch.where(prop_seen[:, None], act, search)


class SocialTask(Task):
    """ "greet the person": approach to conversational distance, face them, wave back when they wave.

    Success: while the partner waves, the agent stands 0.8-2.0 m away, faces the partner within
    0.5 rad and holds its right hand above its head. Reward: decrease of |distance - 1.3 m|, +5
    on success, -0.005 per step. ``task_obs``: g = partner, s = partner's facing direction
    (cos, sin, relative to the agent's heading), (a, b) = partner waving (0/1), distance.
    """

    name = "social"
    max_steps = 300
    NEAR, FAR, IDEAL = 0.8, 2.0, 1.3

    def setup(self, spec, rng):
        script = [P.script_entry(P.IDLE, int(rng.integers(10, 40)))]
        for _ in range(3):
            script += [P.script_entry(P.WAVE, 70), P.script_entry(P.IDLE, int(rng.integers(10, 30)))]
        return spec, -1, _INSTR_ID[SOCIAL_INSTRUCTION], (0.0, 0.0), script

    def _dist(self, state):
        return torch.linalg.norm(state.partner_pos[:, :2] - state.agent_pos[:, :2], dim=-1)

    def _bearing(self, state):
        rel = _in_frame(state, state.partner_pos[:, :2])
        return torch.atan2(rel[:, 1], rel[:, 0])

    def success(self, state, params):
        d = self._dist(state)
        return (
            (state.partner_behaviour == P.WAVE)
            & (d >= self.NEAR)
            & (d <= self.FAR)
            & (self._bearing(state).abs() < 0.5)
            & (_hand_above_head(state) > 0.0)
        )

    def progress(self, prev, state, params):
        return (self._dist(prev) - self.IDEAL).abs() - (self._dist(state) - self.IDEAL).abs()

    def _obs_parts(self, state, params):
        rel_yaw = _wrap(state.partner_yaw - state.agent_yaw)
        waving = (state.partner_behaviour == P.WAVE).float()
        return (
            _in_frame(state, state.partner_pos[:, :2]),
            torch.stack((torch.cos(rel_yaw), torch.sin(rel_yaw)), -1),
            torch.stack((waving, self._dist(state)), -1),
        )

    def expert(self, state, params):
        act = steer(state.agent_pos, state.agent_yaw, state.partner_pos[:, :2], stop=self.IDEAL)
        close = self._dist(state) < self.IDEAL + 0.3
        act[:, 2] = torch.where(close, torch.clamp(2.5 * self._bearing(state), -1, 1), act[:, 2])
        act[:, 3] = torch.clamp(self._bearing(state), -1.0, 1.0)
        waving = state.partner_behaviour == P.WAVE
        act[:, 5] = torch.where(close & waving, 1.0, 0.0)
        return act


class AvoidTask(Task):
    """ "cross the room without bumping into the person": reach the far side while the partner crosses.

    The agent starts near one wall facing the opposite one; the goal is 0.5 m wide on the far side;
    the partner walks back and forth across the agent's path. Bumping (pelvis distance below
    ``BUMP`` m) ends the episode as a failure (-5). Reward: decrease of the distance to the goal,
    +5 on success, -0.005 per step. ``task_obs``: g = goal, s = partner, (a, b) = partner
    velocity in the agent's frame.
    """

    name = "avoid"
    max_steps = 300
    BUMP = 0.6
    GOAL_RADIUS = 0.5

    def setup(self, spec, rng):
        hx, hy = spec.half_extent
        axis = int(rng.integers(2))  # cross along x (0) or y (1)
        sign = float(rng.choice([-1.0, 1.0]))
        h_along, h_across = (hx, hy) if axis == 0 else (hy, hx)
        lane = float(rng.uniform(-h_across + 1.4, h_across - 1.4))
        start_along, goal_along = -sign * (h_along - 1.3), sign * (h_along - 1.3)

        def xy(along, across):
            return np.array([along, across]) if axis == 0 else np.array([across, along])

        spec.agent_pos = xy(start_along, lane)
        spec.agent_yaw = float(np.arctan2(*(xy(sign, 0.0)[::-1])))
        cross_at = float(rng.uniform(-0.6, 0.6)) * (h_along - 1.3)
        p_from, p_to = xy(cross_at, -h_across + 1.2), xy(cross_at, h_across - 1.2)
        if rng.random() < 0.5:
            p_from, p_to = p_to, p_from
        spec.partner_pos = p_from
        spec.partner_yaw = float(np.arctan2(*(p_to - p_from)[::-1]))
        # Keep props off the bodies' start points.
        for k in range(scene.N_PROPS):
            for q in (spec.agent_pos, spec.partner_pos):
                if np.linalg.norm(spec.prop_pos[k] - q) < 0.9:
                    spec.prop_pos[k] = q + (spec.prop_pos[k] - q + 1e-3) / (np.linalg.norm(spec.prop_pos[k] - q) + 1e-3) * 0.9
        goal = xy(goal_along, lane)
        script = [P.script_entry(P.IDLE, int(rng.integers(0, 30)))]
        for k in range(3):
            script.append(P.script_entry(P.WALK_TO, 120, p_to if k % 2 == 0 else p_from))
        return spec, -1, _INSTR_ID[AVOID_INSTRUCTION], (float(goal[0]), float(goal[1])), script

    def _goal_dist(self, state, params):
        return torch.linalg.norm(params.goal - state.agent_pos[:, :2], dim=-1)

    def failure(self, state, params):
        return torch.linalg.norm(state.partner_pos[:, :2] - state.agent_pos[:, :2], dim=-1) < self.BUMP

    def success(self, state, params):
        return (self._goal_dist(state, params) < self.GOAL_RADIUS) & ~self.failure(state, params)

    def progress(self, prev, state, params):
        return self._goal_dist(prev, params) - self._goal_dist(state, params)

    def _obs_parts(self, state, params):
        vel = rotate_to_heading(state.partner_vel, state.agent_yaw)[:, :2]
        return _in_frame(state, params.goal), _in_frame(state, state.partner_pos[:, :2]), vel

    def expert(self, state, params):
        act = steer(state.agent_pos, state.agent_yaw, params.goal, stop=0.0)
        # Wait while the partner is close ahead or about to cross in front.
        rel = _in_frame(state, state.partner_pos[:, :2])
        vel = rotate_to_heading(state.partner_vel, state.agent_yaw)[:, :2]
        ahead = (rel[:, 0] > -0.2) & (rel[:, 0] < 2.2)
        in_lane = rel[:, 1].abs() < 1.3
        heading_in = (rel[:, 1] * vel[:, 1]) < 0  # moving toward the agent's lane
        wait = ahead & (in_lane | (heading_in & (rel[:, 1].abs() < 2.0)))
        act[:, 0] = torch.where(wait, torch.clamp(act[:, 0], max=0.0), act[:, 0])
        back = ahead & (rel[:, 0] < 1.0) & (rel[:, 1].abs() < 0.9)
        act[:, 0] = torch.where(back, -0.5, act[:, 0])
        return act


def _background_script(spec: scene.RoomSpec, rng: np.random.Generator) -> list:
    """A partner that goes about its business near where it stands: short walks and gestures."""
    hx, hy = spec.half_extent
    home = spec.partner_pos
    script = []
    for _ in range(P.SCRIPT_LEN):
        b = int(rng.choice([P.IDLE, P.WALK_TO, P.WAVE, P.POINT, P.TURN_AWAY, P.WALK_TO]))
        target = np.clip(home + rng.uniform(-0.8, 0.8, size=2), [-hx + 1.0, -hy + 1.0], [hx - 1.0, hy - 1.0])
        script.append(P.script_entry(b, int(rng.integers(20, 80)), target))
    return script


def _seg_dist(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    t = float(np.clip(np.dot(p - a, ab) / max(float(np.dot(ab, ab)), 1e-9), 0.0, 1.0))
    return float(np.linalg.norm(p - (a + t * ab)))


def _partner_out_of_the_way(spec: scene.RoomSpec, rng: np.random.Generator, path: list[np.ndarray]) -> None:
    """Move the partner's start to the free spot farthest from the agent's path (a polyline)."""
    hx, hy = spec.half_extent
    others = [*spec.prop_pos, spec.mat_pos]
    best, best_score = spec.partner_pos, -1.0
    for _ in range(64):
        c = rng.uniform([-hx + 1.1, -hy + 1.1], [hx - 1.1, hy - 1.1])
        if min(np.linalg.norm(c - o) for o in others) < 0.8:
            continue
        score = min(_seg_dist(c, path[i], path[i + 1]) for i in range(len(path) - 1))
        if score > best_score:
            best, best_score = c, score
    spec.partner_pos = best


TASKS: dict[str, type[Task]] = {t.name: t for t in (ReachTask, PushTask, SocialTask, AvoidTask)}


def make_task(name: str) -> Task:
    """The task called ``name``; an unknown name lists the valid ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {sorted(TASKS)}")
    return TASKS[name]()
