"""Scripted social scenes and the scripted responder they are judged against.

``SocialSceneTask`` is a task (usable by ``EgoRoomVecEnv`` and ``DreamVecEnv`` like any other)
whose set-up draws a conversation: the partner performs a random sequence of behaviours -- wave,
approach, point, turn away, with idle gaps -- and whose expert is the *responder*, the reference
social behaviour the avatar is trained and scored against:

==============  ===================================================================
partner         responder (privileged state)
==============  ===================================================================
idle            turn to face the partner; walk to conversational distance if far
wave            face the partner and wave back (right arm raised, forearm waving)
approach        face the partner and stand (the partner stops at conversational distance)
point           turn the body and head toward the pointed-at point
turn_away       stop: stand still, arm down, head straight
==============  ===================================================================

Scenes never terminate early (no success state); they truncate at ``max_steps``.
``segment_correct`` judges a response from simulator state only.
"""

from __future__ import annotations

import numpy as np
import torch

from dreamgym.envs import partner as P
from dreamgym.envs.motion import JOINT_ROT, yaw_of_quat
from dreamgym.envs.partner import _wrap, face, steer
from dreamgym.envs.tasks import SocialTask, WorldState, _hand_above_head, _in_frame

RESPONSES = (P.WAVE, P.APPROACH, P.POINT, P.TURN_AWAY)
IDEAL, FAR = 1.3, 2.2
NECK, HEAD = 12, 15


class SocialSceneTask(SocialTask):
    """A scripted conversation with a responder expert (see the module docstring)."""

    name = "social_scene"
    max_steps = 240
    SEGMENT = (50, 70)

    def __init__(self, behaviours: list[int] | None = None, segment: int | None = None):
        self.fixed = behaviours
        self.fixed_segment = segment

    def setup(self, spec, rng):
        spec, _, instr, _, _ = super().setup(spec, rng)
        if self.fixed is not None:
            seq = list(self.fixed)
        else:
            seq = [int(b) for b in rng.choice(RESPONSES, size=3, replace=True)]
        script = [P.script_entry(P.IDLE, int(rng.integers(15, 30)))]
        # Where the partner points: a prop, at least 1.5 m from the partner.
        d = np.linalg.norm(spec.prop_pos - spec.partner_pos[None], axis=-1)
        far = np.nonzero(d > 1.5)[0]
        point_at = spec.prop_pos[int(far[rng.integers(len(far))]) if len(far) else int(np.argmax(d))]
        for b in seq:
            dur = self.fixed_segment or int(rng.integers(*self.SEGMENT))
            script.append(P.script_entry(b, dur, point_at if b == P.POINT else (0.0, 0.0)))
            if len(script) < P.SCRIPT_LEN - 1:
                script.append(P.script_entry(P.IDLE, int(rng.integers(10, 20))))
        return spec, -1, instr, (float(point_at[0]), float(point_at[1])), script[: P.SCRIPT_LEN]

    def success(self, state, params):
        return torch.zeros_like(state.step, dtype=torch.bool)

    def expert(self, state: WorldState, params) -> torch.Tensor:
        return responder_action(state, params.goal)


def responder_action(state: WorldState, point_at: torch.Tensor) -> torch.Tensor:
    """The reference response (B, 6) to the partner's current behaviour; ``point_at`` (B, 2)."""
    beh = state.partner_behaviour
    rel = _in_frame(state, state.partner_pos[:, :2])
    bearing = torch.atan2(rel[:, 1], rel[:, 0])
    dist = torch.linalg.norm(rel, dim=-1)
    to_p = state.partner_pos[:, :2] - state.agent_pos[:, :2]
    act = torch.zeros(state.agent_pos.shape[0], 6, device=state.agent_pos.device)
    # Default (idle, approach, wave): face the partner, look at them, close in if far.
    walk = steer(state.agent_pos, state.agent_yaw, state.partner_pos[:, :2], stop=IDEAL)
    act[:, 0] = torch.where((beh == P.IDLE) & (dist > FAR), walk[:, 0], 0.0)
    act[:, 2] = face(state.agent_yaw, torch.atan2(to_p[:, 1], to_p[:, 0]))
    act[:, 3] = torch.clamp(bearing, -1.0, 1.0)
    act[:, 5] = torch.where(beh == P.WAVE, 1.0, 0.0)
    # Point: body and head toward the target.
    rel_t = _in_frame(state, point_at)
    t_bearing = torch.atan2(rel_t[:, 1], rel_t[:, 0])
    to_t = point_at - state.agent_pos[:, :2]
    is_point = beh == P.POINT
    act[:, 2] = torch.where(is_point, face(state.agent_yaw, torch.atan2(to_t[:, 1], to_t[:, 0])), act[:, 2])
    act[:, 3] = torch.where(is_point, torch.clamp(t_bearing, -1.0, 1.0), act[:, 3])
    # Turn away: stop everything.
    act = torch.where((beh == P.TURN_AWAY)[:, None], torch.zeros_like(act), act)
    return act


def gaze_yaw(motion: torch.Tensor) -> torch.Tensor:
    """World heading of the head (B,): root yaw + neck and head local yaw (spine twist ignored)."""
    rot = motion[:, JOINT_ROT].view(-1, 22, 4)
    return yaw_of_quat(rot[:, 0]) + yaw_of_quat(rot[:, NECK]) + yaw_of_quat(rot[:, HEAD])


def response_checks(state: WorldState, motion: torch.Tensor, point_at: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-step judgements (B,) bool from simulator state, one per response kind."""
    rel = _in_frame(state, state.partner_pos[:, :2])
    dist = torch.linalg.norm(rel, dim=-1)
    facing = torch.atan2(rel[:, 1], rel[:, 0]).abs() < 0.5
    to_t = point_at - state.agent_pos[:, :2]
    look = _wrap(gaze_yaw(motion) - torch.atan2(to_t[:, 1], to_t[:, 0])).abs() < 0.5
    speed = torch.linalg.norm(state.agent_vel[:, :2], dim=-1)
    return {
        "wave": _hand_above_head(state) > 0.0,
        "approach": facing & (dist >= 0.8) & (dist <= 2.0),
        "point": look,
        "turn_away": (speed < 0.15) & (_hand_above_head(state) < -0.3),
    }


BEHAVIOUR_KEY = {P.WAVE: "wave", P.APPROACH: "approach", P.POINT: "point", P.TURN_AWAY: "turn_away"}


def segment_correct(behaviour: np.ndarray, checks: dict[str, np.ndarray], tail: int = 20, need: float = 0.5) -> dict[str, list]:
    """Correctness of every response segment.

    ``behaviour`` (T, B) partner behaviour per step, ``checks`` name -> (T, B) bool. A segment (a run
    of one responded-to behaviour) is correct when its check holds on at least ``need`` of its
    last ``tail`` steps (a response may take a moment to start). Returns name -> list of 0/1.
    """
    out = {k: [] for k in BEHAVIOUR_KEY.values()}
    T, B = behaviour.shape
    for w in range(B):
        t = 0
        while t < T:
            b = int(behaviour[t, w])
            e = t
            while e < T and behaviour[e, w] == b:
                e += 1
            if b in BEHAVIOUR_KEY and e - t >= tail:
                key = BEHAVIOUR_KEY[b]
                out[key].append(int(checks[key][e - tail : e, w].mean() >= need))
            t = e
    return out
