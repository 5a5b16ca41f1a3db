"""What the person is doing, and what the avatar says back.

The shipped social avatar answers with motion only; its words here are chosen by rule, and this
module is that rule, stated plainly:

1. ``recognise`` names the person's behaviour each step from the retargeted body (the same
   behaviours the scripted partner performs): ``wave`` when a wrist is above the head; ``point``
   when an arm is held out (wrist over 0.45 m from its shoulder, at shoulder height or above);
   ``turn_away`` when the person faces more than 120 degrees away from the avatar; ``approach``
   when they walk toward it faster than 0.3 m/s; otherwise ``idle``.
2. A behaviour that holds for ``HOLD`` steps and differs from the last one answered gets the reply
   of ``REPLIES`` (idle gets none).
3. Words the person says get an answer at once: a greeting, a goodbye, a question, or an
   acknowledgement (``reply_to_utterance``).
"""

from __future__ import annotations

import math
import re

import numpy as np

from dreamgym.envs import partner as P

REPLIES = {
    P.WAVE: "Hi! Nice to see you.",
    P.APPROACH: "Hello, what can I do for you?",
    P.POINT: "Oh, I see it over there.",
    P.TURN_AWAY: "Okay, see you later.",
}
HOLD = 6  # steps (0.3 s) a behaviour must last before the avatar answers it
HEAD, L_SHOULDER, R_SHOULDER, L_WRIST, R_WRIST = 15, 16, 17, 20, 21
_GREETING = re.compile(r"\b(hi|hello|hey|good (morning|afternoon|evening))\b", re.I)
_BYE = re.compile(r"\b(bye|goodbye|see you|later)\b", re.I)


def recognise(joints: np.ndarray, yaw: float, velocity: np.ndarray, agent_pos: np.ndarray) -> int:
    """The person's behaviour (an ``envs.partner`` index) from their joints (22, 3, world), heading,
    root velocity (2,) and the avatar's position (>= 2,)."""
    head_z = joints[HEAD, 2]
    if max(joints[L_WRIST, 2], joints[R_WRIST, 2]) > head_z:
        return P.WAVE
    for s, w in ((L_SHOULDER, L_WRIST), (R_SHOULDER, R_WRIST)):
        if np.linalg.norm(joints[w] - joints[s]) > 0.45 and joints[w, 2] >= joints[s, 2] - 0.1:
            return P.POINT
    to_agent = np.asarray(agent_pos[:2], float) - joints[0, :2]
    dist = float(np.linalg.norm(to_agent))
    off = abs((math.atan2(to_agent[1], to_agent[0]) - yaw + math.pi) % (2 * math.pi) - math.pi)
    if off > math.radians(120):
        return P.TURN_AWAY
    if dist > 1e-6 and float(np.dot(velocity, to_agent / dist)) > 0.3:
        return P.APPROACH
    return P.IDLE


def reply_to_utterance(text: str) -> str:
    """The avatar's answer to words the person said."""
    if _BYE.search(text):
        return "Goodbye!"
    if _GREETING.search(text):
        return "Hi there! Good to see you."
    if text.rstrip().endswith("?"):
        return "Good question. Let me think about it."
    return "I hear you."


class Replier:
    """Per-session state of rule 2: the behaviour held and the last one answered."""

    def __init__(self):
        self.current, self.held, self.answered = P.IDLE, 0, P.IDLE

    def step(self, behaviour: int) -> str | None:
        """The avatar's words this step (rule 2), or None."""
        self.held = self.held + 1 if behaviour == self.current else 1
        self.current = behaviour
        if self.held == HOLD:
            last, self.answered = self.answered, behaviour
            if behaviour != last and behaviour in REPLIES:
                return REPLIES[behaviour]
        return None
