"""The partner: a second body of the same skeleton, driven by scripted social behaviours.

A script is a short per-world sequence of (behaviour, duration in steps, target point) drawn by the
task at reset. The partner runs the same controller as the agent, so its motion has the same
statistics; ``partner_action`` turns the current behaviour into that controller's 6-float action.
After its last entry a script stays in its last behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IDLE, WALK_TO, WAVE, POINT, APPROACH, TURN_AWAY = range(6)
BEHAVIOURS: tuple[str, ...] = ("idle", "walk_to", "wave", "point", "approach", "turn_away")
UTTERANCES: tuple[str, ...] = (
    "",
    "Excuse me, coming through.",
    "Hi there!",
    "Look over there.",
    "Hey, can I talk to you?",
    "Okay, bye for now.",
)
SCRIPT_LEN = 8
APPROACH_STOP = 1.4  # metres from the agent where an approach ends


def script_entry(behaviour: int, duration: int, target=(0.0, 0.0)) -> tuple[int, int, tuple[float, float]]:
    if not 0 <= behaviour < len(BEHAVIOURS):
        raise ValueError(f"behaviour must be one of {list(range(len(BEHAVIOURS)))} ({BEHAVIOURS}), got {behaviour}")
    return int(behaviour), int(max(1, duration)), (float(target[0]), float(target[1]))


def pack_scripts(scripts: list[list[tuple[int, int, tuple[float, float]]]]) -> dict[str, np.ndarray]:
    """Pad per-world entry lists to ``SCRIPT_LEN`` (repeating the last entry) as arrays."""
    n = len(scripts)
    beh = np.zeros((n, SCRIPT_LEN), np.int64)
    dur = np.ones((n, SCRIPT_LEN), np.int64)
    tgt = np.zeros((n, SCRIPT_LEN, 2), np.float32)
    for i, entries in enumerate(scripts):
        if not entries or len(entries) > SCRIPT_LEN:
            raise ValueError(f"a partner script has 1..{SCRIPT_LEN} entries, got {len(entries)}")
        entries = list(entries) + [entries[-1]] * (SCRIPT_LEN - len(entries))
        for k, (b, d, t) in enumerate(entries):
            beh[i, k], dur[i, k], tgt[i, k] = b, d, t
    return {"behaviour": beh, "duration": dur, "target": tgt}


@dataclass
class PartnerScripts:
    """Batched scripts and their progress: (B, SCRIPT_LEN) entries, (B,) cursor and timer."""

    behaviour: torch.Tensor
    duration: torch.Tensor
    target: torch.Tensor
    cursor: torch.Tensor
    timer: torch.Tensor

    @classmethod
    def empty(cls, n: int, device) -> PartnerScripts:
        z = lambda *s, dt=torch.long: torch.zeros(*s, dtype=dt, device=device)  # noqa: E731
        return cls(
            z(n, SCRIPT_LEN), torch.ones(n, SCRIPT_LEN, dtype=torch.long, device=device), z(n, SCRIPT_LEN, 2, dt=torch.float32), z(n), z(n)
        )

    def load(self, worlds: torch.Tensor, packed: dict[str, np.ndarray]) -> None:
        dev = self.behaviour.device
        self.behaviour[worlds] = torch.as_tensor(packed["behaviour"], device=dev)
        self.duration[worlds] = torch.as_tensor(packed["duration"], device=dev)
        self.target[worlds] = torch.as_tensor(packed["target"], device=dev)
        self.cursor[worlds] = 0
        self.timer[worlds] = 0

    def current(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Current behaviour (B,) and target point (B, 2)."""
        rows = torch.arange(self.cursor.shape[0], device=self.cursor.device)
        return self.behaviour[rows, self.cursor], self.target[rows, self.cursor]

    def advance(self) -> None:
        rows = torch.arange(self.cursor.shape[0], device=self.cursor.device)
        self.timer += 1
        done = self.timer >= self.duration[rows, self.cursor]
        self.cursor = torch.where(done, torch.clamp(self.cursor + 1, max=SCRIPT_LEN - 1), self.cursor)
        self.timer = torch.where(done, torch.zeros_like(self.timer), self.timer)


def _wrap(a: torch.Tensor) -> torch.Tensor:
    return torch.remainder(a + torch.pi, 2 * torch.pi) - torch.pi


def steer(pos: torch.Tensor, yaw: torch.Tensor, goal: torch.Tensor, stop: float | torch.Tensor, speed: float = 1.0) -> torch.Tensor:
    """Action (B, 6) that turns toward ``goal`` (B, 2) and walks there, stopping ``stop`` short.

    Shared by the partner and by the scripted experts.
    """
    d = goal - pos[:, :2]
    dist = torch.linalg.norm(d, dim=-1)
    err = _wrap(torch.atan2(d[:, 1], d[:, 0]) - yaw)
    act = torch.zeros(pos.shape[0], 6, device=pos.device)
    act[:, 2] = torch.clamp(2.5 * err, -1.0, 1.0)
    remaining = torch.clamp(dist - stop, min=0.0)
    aligned = torch.clamp(1.0 - err.abs() / 0.8, min=0.0)
    act[:, 0] = torch.clamp(1.5 * remaining, 0.0, 1.0) * aligned * speed
    return act


def face(yaw: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Yaw-rate action (B,) that turns a body of heading ``yaw`` toward angle ``direction``."""
    return torch.clamp(2.5 * _wrap(direction - yaw), -1.0, 1.0)


def partner_action(scripts: PartnerScripts, pos: torch.Tensor, yaw: torch.Tensor, agent_pos: torch.Tensor) -> torch.Tensor:
    """The partner's controller action (B, 6) for its current behaviour."""
    beh, target = scripts.current()
    to_agent = agent_pos[:, :2] - pos[:, :2]
    agent_dir = torch.atan2(to_agent[:, 1], to_agent[:, 0])
    goal = torch.where((beh == APPROACH)[:, None], agent_pos[:, :2], target)
    stop = torch.where(beh == APPROACH, APPROACH_STOP, 0.15)
    act = steer(pos, yaw, goal, stop, speed=0.6)
    moving = (beh == WALK_TO) | (beh == APPROACH)
    act = act * moving[:, None]
    to_target = target - pos[:, :2]
    target_dir = torch.atan2(to_target[:, 1], to_target[:, 0])
    act[:, 2] = torch.where(beh == WAVE, face(yaw, agent_dir), act[:, 2])
    act[:, 2] = torch.where(beh == POINT, face(yaw, target_dir), act[:, 2])
    act[:, 2] = torch.where(beh == TURN_AWAY, face(yaw, agent_dir + torch.pi), act[:, 2])
    act[:, 5] = torch.where(beh == WAVE, 1.0, torch.where(beh == POINT, 0.5, 0.0))
    # Look at the agent while greeting or being approached, at the target while pointing.
    head = torch.where(beh == POINT, _wrap(target_dir - yaw), _wrap(agent_dir - yaw))
    act[:, 3] = torch.where((beh == WAVE) | (beh == POINT) | (beh == IDLE), torch.clamp(head, -1.0, 1.0), 0.0)
    return act


# ----------------------------------------------------------------------------- replay
# A room's script is a function of its seed and task (``Task.setup``), and the partner's action a
# function of the script's progress (the episode's step) and of the two bodies' current states.
# So the partner's commands can be recovered exactly from a recording of an episode's motions:
# a world model conditions on them, as on the agent's own actions. Datasets get them through
# ``rollouts.episodes.partner_commands`` (whole episodes at once).
def room_script(task, room_seed: int) -> dict[str, np.ndarray]:
    """The packed script (one row, see ``pack_scripts``) of the room ``room_seed`` under ``task``
    (a task name or ``Task``), as ``EgoRoomCore`` draws it at reset."""
    from . import scene
    from .core import _rng_for
    from .tasks import make_task

    t = make_task(task) if isinstance(task, str) else task
    spec = scene.generate_room(int(room_seed))
    script = t.setup(spec, _rng_for(int(room_seed), t))[-1]
    return pack_scripts([script])


def scripts_at(packed: dict[str, np.ndarray], steps, device="cpu") -> PartnerScripts:
    """Scripts positioned after ``steps`` (N,) control steps from the episode's reset: row ``i`` is
    the one-row ``packed`` script advanced ``steps[i]`` times (what ``advance`` would give)."""
    steps = torch.as_tensor(np.asarray(steps), dtype=torch.long, device=device).reshape(-1)
    n = steps.shape[0]
    beh = torch.as_tensor(packed["behaviour"], device=device).reshape(1, SCRIPT_LEN).expand(n, -1)
    dur = torch.as_tensor(packed["duration"], device=device).reshape(1, SCRIPT_LEN).expand(n, -1)
    tgt = torch.as_tensor(packed["target"], device=device).reshape(1, SCRIPT_LEN, 2).expand(n, -1, -1)
    if bool((steps < 0).any()):
        raise ValueError(f"steps must be >= 0, got {int(steps.min())}")
    ends = dur.cumsum(1)  # the step at which each entry is left
    cursor = (steps[:, None] >= ends).sum(1).clamp(max=SCRIPT_LEN - 1)
    start = torch.where(cursor > 0, ends.gather(1, (cursor - 1).clamp(min=0)[:, None])[:, 0], torch.zeros_like(cursor))
    timer = steps - start
    last = steps[:, None] >= ends  # past the final entry the timer wraps, as ``advance`` resets it
    timer = torch.where(last[:, -1], torch.remainder(steps - ends[:, -2], dur[:, -1]), timer) if SCRIPT_LEN > 1 else timer
    return PartnerScripts(beh.clone(), dur.clone(), tgt.clone(), cursor, timer)


def replay_actions(packed: dict[str, np.ndarray], steps, agent_motion: torch.Tensor, partner_motion: torch.Tensor) -> torch.Tensor:
    """The partner's controller actions (N, 6) at episode steps ``steps`` (N,), given the agent's
    and the partner's motion vectors (N, 227) observed at those steps (``envs.motion`` layout)."""
    from .motion import ROOT_POS, ROOT_QUAT, yaw_of_quat

    a, p = torch.as_tensor(agent_motion).float(), torch.as_tensor(partner_motion).float()
    if a.shape != p.shape or a.dim() != 2 or a.shape[1] != 227:
        raise ValueError(f"agent and partner motion must both be (N, 227), got {tuple(a.shape)} and {tuple(p.shape)}")
    s = scripts_at(packed, steps, a.device)
    if s.cursor.shape[0] != a.shape[0]:
        raise ValueError(f"{s.cursor.shape[0]} steps but {a.shape[0]} motion rows")
    return partner_action(s, p[:, ROOT_POS], yaw_of_quat(p[:, ROOT_QUAT]), a[:, ROOT_POS])
